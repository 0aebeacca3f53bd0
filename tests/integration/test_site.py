"""site.yml end to end on the lab, after `make lab` converged it once.

Runs site.yml again with --diff -v (the second run must change nothing, and no
configured secret may appear in its output), then checks from the lab what an
operator would: HTTPS through lb1 serves the API from both app hosts, a write
through the edge lands in PostgreSQL on db1, and its event reaches the worker
through RabbitMQ."""
import json
import os
import re
import subprocess
import time

import pytest
import yaml

from conftest import GENERATED, ROOT, recap

EDGE = "https://lb1.lab.keelson.test"
CA = "/etc/nginx/keelson/tls/internal-ca.crt"


@pytest.fixture(scope="module")
def second_run():
    res = subprocess.run(["ansible-playbook", "site.yml", "-i", "inventories/lab", "--diff", "-v"],
                         cwd=ROOT, capture_output=True, text=True, timeout=1800)
    return res


def test_second_run_succeeds_and_changes_nothing(second_run):
    assert second_run.returncode == 0, second_run.stdout[-5000:] + second_run.stderr[-2000:]
    hosts = recap(second_run.stdout)
    assert set(hosts) >= {"lb1", "app1", "app2", "db1", "mon1"}, hosts
    changed = {h: r["changed"] for h, r in hosts.items() if r["changed"]}
    assert not changed, "second run changed something: %s\n%s" % (
        changed, "\n".join(l for l in second_run.stdout.splitlines() if l.startswith("changed:")))
    assert "smoke OK" in second_run.stdout


# Printed by code outside this collection, whatever the inventory says: community.rabbitmq's
# rabbitmq_user imports ansible-core's deprecated collections.count (and ansible-core then
# says how to silence deprecations). Listed exactly, so anything else still fails.
UPSTREAM_NOISE = (
    "[DEPRECATION WARNING]: The `ansible.module_utils.common.collections.count` function is deprecated.",
    "[WARNING]: Deprecation warnings can be disabled by setting `deprecation_warnings=False` in ansible.cfg.",
)


def test_second_run_prints_no_warning_or_deprecation(second_run):
    """A new user's first screen is clean: no inventory parse warnings, no deprecated options."""
    noisy = [line for line in (second_run.stdout + second_run.stderr).splitlines()
             if re.search(r"^\s*\[?(WARNING|DEPRECATION)\b", line)
             and not line.strip().startswith(UPSTREAM_NOISE)]
    assert not noisy, "\n".join(noisy)


def test_no_secret_in_verbose_diff_output(second_run):
    secrets = {k: v for k, v in yaml.safe_load(GENERATED.read_text()).items()
               if re.search(r"password|secret|cookie", k)}
    assert len(secrets) >= 6
    leaked = [k for k, v in secrets.items() if str(v) in second_run.stdout + second_run.stderr]
    assert not leaked, "secrets in site.yml --diff -v output: %s" % leaked


def edge(path, method="GET", body=None):
    """A request through lb1's nginx by its public name, made on lb1 (the lab's
    DNS knows that name; the controller does not), validating the internal CA."""
    cmd = ["curl", "-sS", "--fail-with-body", "--cacert", CA, "-X", method, f"{EDGE}{path}",
           "-H", "Content-Type: application/json", "-w", "\n%{http_code}"]
    if body is not None:
        cmd += ["--data", json.dumps(body)]
    res = subprocess.run(["docker", "exec", "keelson-lab-lb1", *cmd], capture_output=True, text=True, timeout=60)
    text, _, status = res.stdout.rpartition("\n")
    return int(status or 0), text


def test_https_edge_serves_both_app_hosts():
    seen = set()
    for _ in range(40):
        status, text = edge("/version")
        assert status == 200, text
        seen.add(json.loads(text)["host"])
        if len(seen) >= 4:
            break
    # each replica container reports its own hostname: two replicas on each of two hosts
    assert len(seen) >= 2, seen


def test_write_through_edge_lands_in_postgresql_and_reaches_worker():
    name = f"site-test-{time.time_ns()}"
    status, text = edge("/items", "POST", {"name": name})
    assert status == 201, text
    item = json.loads(text)
    rows = subprocess.run(
        ["docker", "exec", "-u", "postgres", "keelson-lab-db1", "psql", "-d", "demo", "-tAc",
         f"SELECT name FROM items WHERE id = {int(item['id'])}"],
        capture_output=True, text=True, timeout=60)
    assert rows.stdout.strip() == name, rows.stdout + rows.stderr
    for _ in range(60):
        status, text = edge(f"/events/{item['id']}")
        if status == 200:
            break
        time.sleep(0.5)
    assert status == 200, f"the worker never processed item {item['id']}: {text}"


def test_security_headers_and_redirect():
    res = subprocess.run(["docker", "exec", "keelson-lab-lb1", "curl", "-sS", "-D", "-", "-o", "/dev/null",
                          "--cacert", CA, f"{EDGE}/health"], capture_output=True, text=True, timeout=60)
    headers = res.stdout.lower()
    assert "strict-transport-security: max-age=63072000" in headers
    assert "x-frame-options: deny" in headers
    assert "x-content-type-options: nosniff" in headers
    assert "\nserver: nginx\n" in headers  # no version: server_tokens off
    redirect = subprocess.run(["docker", "exec", "keelson-lab-lb1", "curl", "-sS", "-o", "/dev/null", "-w",
                               "%{http_code} %{redirect_url}", "http://lb1.lab.keelson.test/health"],
                              capture_output=True, text=True, timeout=60)
    assert redirect.stdout.startswith("301 https://lb1.lab.keelson.test/health"), redirect.stdout


def test_tls_edge_is_mozilla_intermediate_compliant(tmp_path):
    """lb1 runs Debian 13's nginx (the nginx molecule scenario covers Debian 12's): sslyze,
    trusting only the internal CA, finds the edge compliant with Mozilla's intermediate
    profile. `make integration` and `make test` install sslyze (`make sslyze`)."""
    sslyze = os.environ.get("KEELSON_SSLYZE", str(ROOT / ".cache" / "sslyze-venv" / "bin" / "sslyze"))
    assert os.path.exists(sslyze), "sslyze not installed at %s (run `make sslyze`)" % sslyze
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text(subprocess.run(["docker", "exec", "keelson-lab-lb1", "cat", CA], capture_output=True,
                                      text=True, check=True).stdout)
    address = yaml.safe_load((ROOT / "inventories" / "lab" / "hosts.yml").read_text()) \
        ["all"]["children"]["lb"]["hosts"]["lb1"]["ansible_host"]
    out = tmp_path / "scan.json"
    res = subprocess.run([sslyze, "--mozilla_config=intermediate", "--resum", "--certinfo_ca_file=%s" % ca_file,
                          "--json_out=%s" % out, "lb1.lab.keelson.test:443{%s}" % address],
                         capture_output=True, text=True, timeout=900)
    print(res.stdout)
    scan = json.loads(out.read_text())["server_scan_results"]
    assert len(scan) == 1 and scan[0]["connectivity_status"] == "COMPLETED", scan
    assert scan[0]["scan_status"] == "COMPLETED"
    deployments = scan[0]["scan_result"]["certificate_info"]["result"]["certificate_deployments"]
    assert deployments[0]["verified_certificate_chain"], "chain not verified against the internal CA"
    assert res.returncode == 0, res.stdout + res.stderr
    assert "lb1.lab.keelson.test:443: OK - Compliant." in res.stdout


def on_host(host, *argv):
    res = subprocess.run(["docker", "exec", "keelson-lab-%s" % host, *argv], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_the_scheduler_runs_once_on_the_first_app_host():
    """`placement: one`: app1 runs the scheduler; app2's compose.yaml does not even declare it;
    every tick in PostgreSQL comes from app1."""
    compose = {h: yaml.safe_load(on_host(h, "cat", "/opt/keelson/stacks/demo/compose.yaml"))["services"]
               for h in ("app1", "app2")}
    assert "scheduler" in compose["app1"] and "scheduler" not in compose["app2"], compose
    assert {"api-1", "api-2", "web", "worker-1", "worker-2"} <= set(compose["app2"])
    running = {h: on_host(h, "docker", "ps", "-q", "--filter", "label=com.docker.compose.service=scheduler").split()
               for h in ("app1", "app2")}
    assert len(running["app1"]) == 1 and running["app2"] == [], running

    def ticks():
        res = subprocess.run(["docker", "exec", "-u", "postgres", "keelson-lab-db1", "psql", "-d", "demo", "-tAc",
                              "SELECT node, count(*) FROM scheduler_ticks GROUP BY node ORDER BY node"],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        return dict(line.split("|") for line in res.stdout.split())
    for _ in range(30):
        if ticks():
            break
        time.sleep(1)
    assert list(ticks()) == ["app1"], ticks()


def test_rabbitmq_makes_durable_queues_quorum_queues():
    """db1 runs Debian 13's RabbitMQ 4.0, where the role sets default_queue_type (the rabbitmq
    molecule scenario runs 3.10, which has no such setting): the demo worker's durable queue,
    declared without x-queue-type, is a quorum queue."""
    queues = on_host("db1", "rabbitmqctl", "-q", "list_queues", "-p", "demo", "name", "type")
    assert re.search(r"^demo\.items\s+quorum$", queues, re.M), queues


def test_redis_8_refuses_unauthenticated_clients():
    """db1 runs Debian 13's Redis 8, whose default user the role disables (the redis molecule
    scenario runs Debian 12's 7.0, where the default user gets a password): a PING without
    credentials gets NOAUTH."""
    assert on_host("db1", "redis-server", "--version").startswith("Redis server v=8.")
    ping = subprocess.run(["docker", "exec", "keelson-lab-db1", "redis-cli", "-h", "127.0.0.1", "PING"],
                          capture_output=True, text=True, timeout=60)
    assert (ping.stdout + ping.stderr).startswith("NOAUTH"), ping
