"""The nginx role's runtime backend state on the lab's lb1 (the demo API upstream `api`):
keelson.stack.nginx_upstream drains and weighs a backend through the control socket without
a reload; a drain holds while a request is in flight; the state survives a reload, a restart
and a reboot of lb1 (it comes from the upstream file); the control socket is reachable from
nowhere but root on lb1, and malformed requests change nothing. Under the Lua balancer nginx
keeps what its own balancer did: retries to the next backend for idempotent requests only,
passive failure handling (max_fails / fail_timeout), keepalive connections to the backends.
Run after site.yml (make lab); leaves every backend up, weight 1, and app2's replicas running."""
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rollout_lab import (  # noqa: E402
    CONTROL_SOCKET as SOCKET, EDGE_ADDRESS, EDGE_NAME, INVENTORY, ROOT, down_backends, edge, epoch, finish_load,
    is_surge, nginx_processes, on, private_address, runtime_state, start_load, upstream_file)

UPSTREAM = "api"


def runtime():
    """The running nginx's state of the api upstream, read on lb1 as root."""
    return runtime_state(UPSTREAM)


def settable(state):
    return {addr: (b["state"], b["weight"]) for addr, b in state["backends"].items()}


def control(*curl_args):
    """(HTTP status, body) of a request to the control socket on lb1."""
    out = on("lb1", "curl", "-sS", "-o", "/tmp/keelson-control-body", "-w", "%{http_code}", "--unix-socket",
             SOCKET, *curl_args)
    return int(out), on("lb1", "cat", "/tmp/keelson-control-body")


def module(check=False, **args):
    """keelson.stack.nginx_upstream on lb1; returns its result."""
    argv = ["ansible", "-i", str(INVENTORY), "lb1", "-m", "keelson.stack.nginx_upstream",
            "-a", json.dumps(dict(upstream=UPSTREAM, **args))] + (["--check"] if check else [])
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
               ANSIBLE_STDOUT_CALLBACK="json")
    res = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    # profile_tasks (ansible.cfg) prints its timing lines around the JSON document
    doc, _ = json.JSONDecoder().raw_decode(res.stdout, res.stdout.find("{"))
    result = doc["plays"][0]["tasks"][0]["hosts"]["lb1"]
    assert not result.get("failed"), result
    return result


def reset_ssh_connection(host, tmp_path):
    """Ends Ansible's multiplexed SSH connection (ControlPersist) to a host rebooted behind
    its back: the master's TCP connection died with the old container's network."""
    play = tmp_path / "reset_connection.yml"
    play.write_text(json.dumps([{"hosts": host, "gather_facts": False,
                                 "tasks": [{"ansible.builtin.meta": "reset_connection"}]}]))
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
    subprocess.run(["ansible-playbook", "-i", str(INVENTORY), str(play)], cwd=ROOT, env=env,
                   capture_output=True, text=True, timeout=120, check=True)


def wait_for_nginx():
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if subprocess.run(["docker", "exec", "keelson-lab-lb1", "test", "-S", SOCKET]).returncode == 0:
            try:
                return runtime()
            except (AssertionError, ValueError):
                pass
        time.sleep(1)
    raise AssertionError("nginx on lb1 did not come back with its control socket")


@pytest.fixture
def backend():
    """app2's first replica; put back (up, weight 1) whatever the test did."""
    address = "%s:8001" % private_address("app2")
    yield address
    module(backend=address, state="up", weight=1)


def test_drain_and_put_back_at_runtime_under_load(backend):
    load = start_load(workers=4, baseline=2)
    drained = module(backend=backend, state="down")
    assert drained["applied_via"] == "runtime" and not drained["reloaded"], drained
    assert drained["drained"] and drained["in_flight"] == 0 and drained["runtime_unavailable"] is None
    assert runtime()["backends"][backend]["state"] == "down"
    assert "%s max_fails=3 fail_timeout=10s down;" % backend in upstream_file()
    load.mark("drained")
    time.sleep(3)
    load.mark("back")
    back = module(backend=backend, state="up")
    assert back["applied_via"] == "runtime" and back["changed"]
    again = module(backend=backend, state="up")
    assert not again["changed"] and again["applied_via"] is None
    finish_load(load)
    assert load.summary({"down": (load.marks["drained"], load.marks["back"])})["down"]["requests"] > 0
    # no request that started while the backend was down was sent to it (access log, 1 s resolution)
    sent = []
    for line in on("lb1", "cat", "/var/log/nginx/access.log").splitlines():
        entry = json.loads(line)
        started = epoch(entry["time"]) - entry["request_time"]
        if backend in entry["upstream_addr"] and load.marks["drained"] + 1 < started < load.marks["back"] - 1:
            sent.append(entry)
    assert sent == []


def test_check_mode_reports_the_runtime_path_and_changes_nothing(backend):
    before = runtime()
    res = module(backend=backend, state="down", check=True)
    assert res["changed"] and res["applied_via"] == "runtime"
    assert settable(runtime()) == settable(before)
    assert down_backends() == []


def test_runtime_state_survives_reload_restart_and_reboot(backend, tmp_path):
    weighed = module(backend=backend, state="up", weight=3)
    assert weighed["applied_via"] == "runtime" and weighed["weight"] == 3
    assert "%s weight=3 max_fails" % backend in upstream_file()
    expected = settable(runtime())
    assert expected[backend] == ("up", 3)

    before = nginx_processes()
    on("lb1", "systemctl", "reload", "nginx")
    deadline = time.monotonic() + 30
    while nginx_processes() == before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert nginx_processes() != before
    assert settable(runtime()) == expected, "a reload lost the runtime state"

    on("lb1", "systemctl", "restart", "nginx")
    assert settable(wait_for_nginx()) == expected, "a restart lost the runtime state"

    # a reboot of the lb host: /run is empty again, the state comes back from the file
    subprocess.run(["docker", "restart", "keelson-lab-lb1"], check=True, capture_output=True, timeout=180)
    subprocess.run(["docker", "exec", "keelson-lab-lb1", "systemctl", "is-system-running", "--wait"],
                   capture_output=True, timeout=180)
    reset_ssh_connection("lb1", tmp_path)
    assert settable(wait_for_nginx()) == expected, "a reboot lost the state"
    assert oct(int(on("lb1", "stat", "-c", "%a", os.path.dirname(SOCKET)), 8)) == "0o700"


def test_malformed_control_requests_change_nothing(backend):
    before = settable(runtime())
    url = "http://lb1/upstreams/" + UPSTREAM
    refused = [
        (control("-d", "backend=10.9.9.9:8001&state=down", url), 404, "not in upstream"),
        (control("-d", "backend=%s&weight=0" % backend, url), 400, "weight must be"),
        (control("-d", "backend=%s&weight=1001" % backend, url), 400, "weight must be"),
        (control("-d", "backend=%s&weight=2x" % backend, url), 400, "weight must be"),
        (control("-d", "backend=%s&state=drain" % backend, url), 400, "state must be"),
        (control("-d", "backend=%s&state=down&state=up" % backend, url), 400, "repeated"),
        (control("-d", "backend=%s&state=down&extra=1" % backend, url), 400, "unknown"),
        (control("-d", "state=down", url), 400, "backend="),
        (control("-d", "backend=%s&state=down&pad=%s" % (backend, "x" * 4096), url), 413, ""),
        (control("-d", "backend=%s&state=down" % backend, "http://lb1/upstreams/nosuch"), 404, "unknown upstream"),
        (control("-X", "DELETE", url), 405, ""),
    ]
    for (status, body), want_status, want_text in refused:
        assert status == want_status and want_text in body, (status, body)
    assert settable(runtime()) == before


@pytest.mark.parametrize("outsider", ["app1", "db1"])
def test_the_control_channel_is_unreachable_from_other_hosts(outsider, backend):
    """The control endpoint listens on a unix socket only: no TCP port of lb1 answers it,
    from app1 (the app tier) or db1 (outside it), and state stays as it was."""
    before = settable(runtime())
    listeners = {line.split()[3] for line in on("lb1", "ss", "-Hltnp").splitlines() if '"nginx"' in line}
    # the edge's metrics server (keelson.stack.monitoring) listens on the private address
    metrics = "%s:9145" % EDGE_ADDRESS
    assert listeners <= {"0.0.0.0:80", "0.0.0.0:443", "[::]:80", "[::]:443", "127.0.0.1:8080", metrics}, listeners
    for port, schemes in ((80, ("http", "https")), (443, ("http", "https")), (8080, ("http", "https")), (9145, ("http",))):
        for scheme in schemes:
            res = subprocess.run(
                ["docker", "exec", "keelson-lab-" + outsider, "python3", "-c",
                 "import ssl, sys, urllib.request, urllib.error\n"
                 "ctx = ssl._create_unverified_context()\n"
                 "req = urllib.request.Request(sys.argv[1], data=sys.argv[2].encode(), headers={'Host': sys.argv[3]})\n"
                 "try:\n"
                 "    r = urllib.request.urlopen(req, timeout=5, context=ctx); print(r.status, r.read()[:200])\n"
                 "except urllib.error.HTTPError as e: print(e.code)\n"
                 "except Exception as e: print('refused', type(e).__name__)\n",
                 "%s://%s:%d/upstreams/%s" % (scheme, EDGE_ADDRESS, port, UPSTREAM),
                 "backend=%s&state=down" % backend, EDGE_NAME],
                capture_output=True, text=True, timeout=60)
            assert '"backends"' not in res.stdout, res.stdout
    # on lb1 itself, only root gets through the socket's 0700 directory
    denied = subprocess.run(["docker", "exec", "-u", "nobody", "keelson-lab-lb1", "python3", "-c",
                             "import socket, sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])", SOCKET],
                            capture_output=True, text=True)
    assert denied.returncode != 0 and "PermissionError" in denied.stderr, denied.stderr
    assert settable(runtime()) == before


# --- a drain with a request in flight ---------------------------------------------------

def send(conn, method, path, body=None):
    """(status, body) of one request on ``conn``."""
    headers = {"Content-Type": "application/json"} if body is not None else {}
    conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
    response = conn.getresponse()
    return response.status, response.read()


def logged(tag):
    """nginx's access-log entries on lb1 of the requests whose URL holds ``tag``, in order."""
    out = on("lb1", "grep", "-F", tag, "/var/log/nginx/access.log", check=False)
    return [json.loads(line) for line in out.splitlines()]


def attempts(entry):
    """[(backend, status)] of each attempt nginx made for one request."""
    return list(zip(entry["upstream_addr"].split(", "), entry["upstream_status"].split(", ")))


@pytest.fixture
def put_back():
    """Backends a test drains or weighs (it appends them); each is put back up, weight 1."""
    touched = []
    yield touched
    for address in touched:
        module(backend=address, state="up", weight=1)


def test_a_drain_holds_until_the_request_in_flight_has_completed(put_back):
    """GET /slow (the demo API sleeps ms milliseconds) through the edge; the backend serving it
    is drained while it sleeps. A drain bounded below the request's time reports it in flight;
    the drain run again waits for it: it returns after the request completed, with 200."""
    tag = uuid.uuid4().hex
    done = {}

    def slow(index):
        status, _body = send(edge(), "GET", "/slow?ms=10000&t=%s-%d" % (tag, index))
        done[index] = (status, time.monotonic())

    clients = [threading.Thread(target=slow, args=(i,)) for i in range(2)]
    for client in clients:
        client.start()
    deadline = time.monotonic() + 5
    busy = []
    while not busy and time.monotonic() < deadline:
        busy = [addr for addr, b in runtime()["backends"].items() if b["in_flight"] > 0]
    assert busy, "the slow requests never showed as in flight"
    address = busy[0]
    put_back.append(address)

    bounded = module(backend=address, state="down", drain_timeout=1)
    assert bounded["applied_via"] == "runtime" and not bounded["reloaded"], bounded
    assert bounded["drained"] is False and bounded["in_flight"] >= 1, bounded
    assert any("still in flight to %s after 1s" % address in w for w in bounded.get("warnings", [])), bounded
    assert runtime()["backends"][address]["state"] == "down"

    waited = module(backend=address, state="down")
    returned = time.monotonic()
    for client in clients:
        client.join(30)
    # nothing left to change, but the drain still waited for the request in flight
    assert not waited["changed"] and waited["drained"] and waited["in_flight"] == 0, waited
    assert sorted(done) == [0, 1] and all(status == 200 for status, _end in done.values()), done
    served = [e for e in logged(tag) if e["upstream_addr"] == address]
    assert served and all(e["status"] == 200 for e in served), logged(tag)
    index = int(served[0]["request"].split("-")[-1].split()[0])
    assert done[index][1] <= returned, "the drain returned before the request in flight had completed"
    assert runtime()["backends"][address]["in_flight"] == 0


# --- nginx's upstream semantics under the Lua balancer -----------------------------------

REPLICAS = {8001: "demo-api-1-1", 8002: "demo-api-2-1"}
STAND_IN = "keelson-test-failing-backend"
# A backend that takes every request and answers 503 (proxy_next_upstream http_503), logging
# what it received; it runs from the demo's own image in the replica's place.
FAILING_BACKEND = r"""
import http.server
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b'{"error": "keelson test: unavailable"}\n'
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_POST = answer
    def log_message(self, fmt, *args):
        print("received", self.command, self.path, flush=True)
server = http.server.ThreadingHTTPServer(("", 8000), Handler)
print("listening", flush=True)
server.serve_forever()
"""


def wait_for(predicate, what, timeout):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.3)


@contextmanager
def replica_replaced(port, stand_in=None):
    """app2's replica on ``port`` stopped (its backend refuses connections) or, with
    ``stand_in`` (a Python program serving on 8000), replaced by it on the same published
    port. Afterwards the replica runs and is healthy again, its backend is up with weight 1
    and nginx's passive failure count for it has expired."""
    address = "%s:%d" % (private_address("app2"), port)
    container = REPLICAS[port]
    image = on("app2", "docker", "inspect", "-f", "{{.Config.Image}}", container).strip()
    try:
        on("app2", "docker", "stop", container)
        if stand_in:
            on("app2", "docker", "run", "-d", "--name", STAND_IN, "--network", "demo_default",
               "-p", "%s:8000" % address, "--entrypoint", "python3", image, "-c", stand_in)
            wait_for(lambda: "listening" in on("app2", "docker", "logs", STAND_IN), "the stand-in did not start", 30)
        yield address
    finally:
        on("app2", "docker", "rm", "-f", STAND_IN, check=False)
        on("app2", "docker", "start", container)
        module(backend=address, state="up", weight=1)
        wait_for(lambda: on("app2", "docker", "inspect", "-f", "{{.State.Health.Status}}", container).strip()
                 == "healthy", "%s on app2 is not healthy again" % container, 60)
        wait_for(lambda: runtime()["backends"][address] == dict(runtime()["backends"][address], failures=0,
                                                                skipped=False),
                 "nginx still counts failures of %s" % address, 30)


def weigh_first(address):
    """Weight 1000 against 1: nginx's smooth weighted round robin then sends the first
    attempt of each of the next few hundred requests of a worker to ``address``."""
    assert module(backend=address, state="up", weight=1000)["applied_via"] == "runtime"


def test_a_dead_backend_is_retried_on_the_next_then_skipped_for_fail_timeout():
    """api-2 on app2 stopped: each attempt on it is refused. A GET goes on to the next backend,
    and so does a POST (nothing was sent: nginx retries a POST only then); after max_fails (3)
    failures within fail_timeout nginx's passive health skips the backend."""
    with replica_replaced(8002) as dead:
        weigh_first(dead)
        tag = uuid.uuid4().hex
        conn = edge()
        statuses = [send(conn, "POST", "/items?t=%s-0" % tag, {"name": "keelson-retry-test"})[0],
                    send(conn, "GET", "/version?t=%s-1" % tag)[0], send(conn, "GET", "/version?t=%s-2" % tag)[0]]
        assert statuses == [201, 200, 200]
        tries = [attempts(e) for e in logged(tag)]
        assert [t[0] for t in tries] == [(dead, "502")] * 3, tries
        assert [t[1][1] for t in tries] == ["201", "200", "200"] and all(t[1][0] != dead for t in tries), tries
        assert runtime()["backends"][dead] == dict(runtime()["backends"][dead], state="up", skipped=True)
        # skipped for fail_timeout: no request tries it, though it weighs 1000
        skipped = uuid.uuid4().hex
        assert {send(conn, "GET", "/version?t=%s-%d" % (skipped, i))[0] for i in range(20)} == {200}
        entries = logged(skipped)
        assert len(entries) == 20 and all(len(attempts(e)) == 1 and dead not in e["upstream_addr"]
                                          for e in entries), entries


def test_a_backend_failing_after_the_request_was_sent_gets_a_get_retried_never_a_post():
    """api-1 on app2 replaced by a server answering 503 to whatever it received: the GET is
    retried on the next backend, the POST is not (it may have had an effect): its client gets
    the 503 and the backend saw it exactly once."""
    with replica_replaced(8001, FAILING_BACKEND) as failing:
        weigh_first(failing)
        tag = uuid.uuid4().hex
        conn = edge()
        assert send(conn, "GET", "/version?t=%s-0" % tag)[0] == 200
        assert send(conn, "POST", "/items?t=%s-1" % tag, {"name": "keelson-retry-test"})[0] == 503
        get, post = [attempts(e) for e in logged(tag)]
        assert get[0] == (failing, "503") and get[1][0] != failing and get[1][1] == "200", get
        assert post == [(failing, "503")], post
        received = [line for line in on("app2", "docker", "logs", STAND_IN).splitlines() if tag in line]
        assert received == ["received GET /version?t=%s-0" % tag, "received POST /items?t=%s-1" % tag]
        assert runtime()["backends"][failing]["failures"] == 2


def active_opens():
    """TCP connections lb1 has opened since it booted (its network namespace's ActiveOpens):
    nginx's connections to the backends are the only ones it opens."""
    header, values = [line.split() for line in on("lb1", "cat", "/proc/net/snmp").splitlines()
                      if line.startswith("Tcp:")]
    return int(values[header.index("ActiveOpens")])


def test_keepalive_connections_to_the_backends_are_reused_across_runtime_changes():
    """200 requests on one client connection (one nginx worker), through a weight change and
    back at runtime: nginx opens at most one connection per backend and worker, not one per
    request, and the requests reached every backend."""
    before = settable(runtime())
    address = "%s:8001" % private_address("app1")
    tag = uuid.uuid4().hex
    conn = edge()
    opened = active_opens()
    try:
        for i in range(200):
            if i in (50, 150):
                status, body = control("-d", "backend=%s&weight=%d" % (address, 2 if i == 50 else 1),
                                       "http://lb1/upstreams/" + UPSTREAM)
                assert status == 200, body
            assert send(conn, "GET", "/version?t=%s-%d" % (tag, i))[0] == 200
    finally:
        control("-d", "backend=%s&weight=1" % address, "http://lb1/upstreams/" + UPSTREAM)
    opened = active_opens() - opened
    entries = logged(tag)
    backends = {e["upstream_addr"] for e in entries}
    assert len(entries) == 200 and backends == set(b for b in before if not is_surge(b)), backends
    print("keepalive: %d connections opened for 200 requests" % opened)
    assert opened <= 2 * len(backends), "%d connections opened to the backends for 200 requests" % opened
    assert settable(runtime()) == before
