"""compose_stack: the demo stack runs as declared, from the files the role wrote."""
import json
import time

import pytest

STACK = "/opt/keelson/stacks/demo"
ADDRESS = "172.30.77.205"
REPLICA_PORTS = {"api-1": 18001, "api-2": 18002}

HTTP = """
import json, sys, urllib.request
method, url, body = sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None
req = urllib.request.Request(url, method=method, data=body.encode() if body else None,
                             headers={"Content-Type": "application/json"})
try:
    with urllib.request.urlopen(req, timeout=10) as resp:
        print(json.dumps({"status": resp.status, "body": json.loads(resp.read())}))
except urllib.error.HTTPError as err:
    print(json.dumps({"status": err.code, "body": err.read().decode()}))
"""


def http(host, method, url, body=None):
    cmd = host.run("python3 -c %s %s %s %s", HTTP, method, url, body or "")
    assert cmd.rc == 0, cmd.stderr
    return json.loads(cmd.stdout)


def containers(host):
    out = host.check_output(
        "docker ps -a --filter label=com.docker.compose.project=demo --format '{{.Names}}|{{.Status}}'")
    return dict(line.split("|", 1) for line in out.splitlines())


def test_compose_file_is_rendered_with_one_service_per_replica(host):
    f = host.file(f"{STACK}/compose.yaml")
    assert (f.user, f.group, f.mode) == ("root", "root", 0o640)
    text = f.content_string
    assert "name: demo" in text
    assert f"{ADDRESS}:18001:8000/tcp" in text and f"{ADDRESS}:18002:8000/tcp" in text
    assert "${DEMO_DATABASE_URL:?" in text
    assert "Molecule-Pg-5b1e" not in text  # the secret lives in .env only
    assert host.run(f"docker compose --project-directory {STACK} config --quiet").rc == 0


def test_env_file_holds_the_secrets_for_root_only(host):
    f = host.file(f"{STACK}/.env")
    assert (f.user, f.group, f.mode) == ("root", "root", 0o600)
    assert "POSTGRES_PASSWORD='Molecule-Pg-5b1e'" in f.content_string.splitlines()


def test_every_container_is_healthy(host):
    state = containers(host)
    assert sorted(state) == sorted(["demo-api-1-1", "demo-api-2-1", "demo-worker-1",
                                    "demo-postgres-1", "demo-redis-1", "demo-rabbitmq-1"]), state
    assert all("(healthy)" in status for status in state.values()), state


def test_limits_are_applied(host):
    info = json.loads(host.check_output("docker inspect demo-api-1-1"))[0]["HostConfig"]
    assert info["NanoCpus"] == 500_000_000
    assert info["Memory"] == 128 * 1024 * 1024


@pytest.mark.parametrize("replica", sorted(REPLICA_PORTS))
def test_each_replica_answers_on_its_port(host, replica):
    port = REPLICA_PORTS[replica]
    assert http(host, "GET", f"http://{ADDRESS}:{port}/health") == {"status": 200, "body": {"status": "ok"}}
    version = http(host, "GET", f"http://{ADDRESS}:{port}/version")
    assert version["status"] == 200 and version["body"]["version"] == "1.0.0"
    ready = http(host, "GET", f"http://{ADDRESS}:{port}/ready")
    assert ready["body"] == {"ready": True, "checks": {"postgresql": "ok", "redis": "ok", "rabbitmq": "ok"}}


def test_the_replicas_are_distinct_containers(host):
    hosts = {http(host, "GET", f"http://{ADDRESS}:{p}/version")["body"]["host"] for p in REPLICA_PORTS.values()}
    assert len(hosts) == 2


def test_the_replicas_answer_on_the_service_name_inside_the_project(host):
    """Another service of the project (a frontend calling http://api:8000) reaches the
    replicas api-1 and api-2 by the service's name."""
    resolve = "import socket; print(' '.join(sorted({a[4][0] for a in socket.getaddrinfo('api', 8000)})))"
    answers = host.check_output("docker exec demo-worker-1 python3 -c %s", resolve).split()
    replicas = [host.check_output("docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' %s",
                                  "demo-%s-1" % name) for name in sorted(REPLICA_PORTS)]
    assert sorted(answers) == sorted(replicas), (answers, replicas)
    health = "import urllib.request; print(urllib.request.urlopen('http://api:8000/health', timeout=10).status)"
    assert host.check_output("docker exec demo-worker-1 python3 -c %s", health) == "200"


def test_write_read_and_the_worker_processes_the_event(host):
    created = http(host, "POST", f"http://{ADDRESS}:18001/items", json.dumps({"name": "molecule"}))
    assert created["status"] == 201, created
    item_id = created["body"]["id"]
    read = http(host, "GET", f"http://{ADDRESS}:18002/items/{item_id}")
    assert read["status"] == 200 and read["body"]["name"] == "molecule"
    deadline = time.monotonic() + 60
    event = http(host, "GET", f"http://{ADDRESS}:18002/events/{item_id}")
    while event["status"] == 404 and time.monotonic() < deadline:
        time.sleep(1)
        event = http(host, "GET", f"http://{ADDRESS}:18002/events/{item_id}")
    assert event["status"] == 200, event
    assert event["body"]["item_id"] == item_id


def test_one_release_record_for_the_one_release_that_ran(host):
    # The side effects tried a release the role left to the rollout engine and a broken
    # service: neither left a record.
    current = host.file(f"{STACK}/releases/current.json")
    assert current.is_symlink
    records = host.check_output(f"ls {STACK}/releases").split()
    record_id = current.linked_to.rsplit("/", 1)[1][:-len(".json")]
    assert sorted(records) == sorted([f"{record_id}.json", f"{record_id}.compose.yaml", "current.json"])
    record = json.loads(current.content_string)
    assert record["kind"] == "compose_stack" and record["project"] == "demo"
    assert record["previous"] is None and record["jobs"] == ["migrate"]
    assert record["replicas"] == ["postgres", "redis", "rabbitmq", "api-1", "api-2", "worker"]
    api = record["services"]["api"]
    assert api["image"] == "172.30.77.42:5000/demo-api:1.0.0"
    assert api["digest"].startswith("sha256:") and len(api["digest"]) == 71
    running = json.loads(host.check_output("docker inspect demo-api-1-1"))[0]["Image"]
    assert running == api["id"]
    assert host.file(f"{STACK}/releases/{record_id}.compose.yaml").content_string == \
        host.file(f"{STACK}/compose.yaml").content_string

