"""The nginx role's runtime backend state on the lab's lb1 (the demo API upstream `api`):
keelson.stack.nginx_upstream drains and weighs a backend through the control socket without
a reload; the state survives a reload, a restart and a reboot of lb1 (it comes from the
upstream file); the control socket is reachable from nowhere but root on lb1, and malformed
requests change nothing. Run after site.yml (make lab); leaves every backend up, weight 1."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rollout_lab import (  # noqa: E402
    EDGE_ADDRESS, EDGE_NAME, INVENTORY, ROOT, epoch, finish_load, nginx_processes, on, private_address, start_load,
    upstream_file)

SOCKET = "/run/keelson-nginx/control.sock"
UPSTREAM = "api"


def runtime():
    """The running nginx's state of the api upstream, read on lb1 as root."""
    return json.loads(on("lb1", "curl", "-sS", "--unix-socket", SOCKET, "http://lb1/upstreams/" + UPSTREAM))


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
    assert " down;" not in upstream_file()


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
    assert listeners <= {"0.0.0.0:80", "0.0.0.0:443", "[::]:80", "[::]:443", "127.0.0.1:8080"}, listeners
    for port in (80, 443, 8080):
        for scheme in ("http", "https"):
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
