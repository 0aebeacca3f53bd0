"""Upstream include files in the nginx role's format; the /proc reading against real processes;
the control socket client against a real unix-socket HTTP server answering as the Lua control
endpoint does. The reload and drain against a real nginx are in molecule/rollout_modules, the
runtime path against the lab's nginx in tests/integration/test_nginx_runtime.py."""
import http.server
import json
import os
import socketserver
import subprocess
import sys
import threading
import time
import urllib.parse

import pytest
from nginx_files import render_upstream

from ansible_collections.keelson.stack.plugins.filter.nginx_upstream import nginx_runtime_upstreams
from ansible_collections.keelson.stack.plugins.module_utils.nginx_upstream import (
    Control, ControlUnavailable, UpstreamError, newest_worker_start, parse_backends, parse_servers,
    set_backend_state, set_upstream_backend, wait_for_drain, workers, write_atomically)

FILE = (
    "server 172.30.77.21:8001 max_fails=3 fail_timeout=10s;\n"
    "server 172.30.77.21:8002 max_fails=3 fail_timeout=10s;\n"
    "server 172.30.77.22:8001 max_fails=3 fail_timeout=10s down;\n"
)


def test_parse():
    assert parse_backends(FILE) == {"172.30.77.21:8001": "up", "172.30.77.21:8002": "up",
                                    "172.30.77.22:8001": "down"}


def test_down_rewrites_only_that_line():
    after = set_backend_state(FILE, "172.30.77.21:8002", "down")
    assert after.splitlines() == [
        "server 172.30.77.21:8001 max_fails=3 fail_timeout=10s;",
        "server 172.30.77.21:8002 max_fails=3 fail_timeout=10s down;",
        "server 172.30.77.22:8001 max_fails=3 fail_timeout=10s down;",
    ]
    assert set_backend_state(after, "172.30.77.21:8002", "down") == after
    assert set_backend_state(after, "172.30.77.21:8002", "up") == FILE


def test_up_and_prefix_addresses_are_distinct():
    text = "server 10.0.0.1:80 max_fails=1 fail_timeout=5s down;\nserver 10.0.0.1:8080 max_fails=1 fail_timeout=5s down;\n"
    after = set_backend_state(text, "10.0.0.1:80", "up")
    assert parse_backends(after) == {"10.0.0.1:80": "up", "10.0.0.1:8080": "down"}


def test_unknown_backend_names_the_known_ones():
    with pytest.raises(UpstreamError, match=r"172.30.77.23:8001 is not in .*\(has 172.30.77.21:8001, "):
        set_backend_state(FILE, "172.30.77.23:8001", "down")


def test_a_file_the_role_renders_is_rewritten_line_by_line_and_read_back_by_the_role():
    """What nginx_upstream writes, the role's next converge reads as the live state and renders
    the same again (a converge keeps a drained or weighed backend as it is)."""
    servers = [{"host": "172.30.77.21", "port": 8001}, {"host": "172.30.77.22", "port": 8001}]
    rendered = render_upstream(servers, max_fails=2, fail_timeout=30)
    assert rendered == ("server 172.30.77.21:8001 max_fails=2 fail_timeout=30s;\n"
                        "server 172.30.77.22:8001 max_fails=2 fail_timeout=30s;\n")
    after = set_backend_state(set_backend_state(rendered, "172.30.77.22:8001", "down"), "172.30.77.21:8001", "up",
                              weight=4)
    assert after == ("server 172.30.77.21:8001 weight=4 max_fails=2 fail_timeout=30s;\n"
                     "server 172.30.77.22:8001 max_fails=2 fail_timeout=30s down;\n")
    assert render_upstream(servers, live=parse_servers(after), max_fails=2, fail_timeout=30) == after


def test_comments_and_crlf_endings_are_kept_byte_for_byte():
    text = ("# api (canary first)\r\n"
            "server 10.0.0.1:80 max_fails=3 fail_timeout=10s; # canary\r\n"
            "  server 10.0.0.2:80 max_fails=3 fail_timeout=10s;\r\n")
    after = set_backend_state(text, "10.0.0.1:80", "down", weight=2)
    assert after == ("# api (canary first)\r\n"
                     "server 10.0.0.1:80 weight=2 max_fails=3 fail_timeout=10s down; # canary\r\n"
                     "  server 10.0.0.2:80 max_fails=3 fail_timeout=10s;\r\n")
    assert parse_servers(after) == {"10.0.0.1:80": {"state": "down", "weight": 2},
                                    "10.0.0.2:80": {"state": "up", "weight": 1}}
    assert set_backend_state(after, "10.0.0.1:80", "up", weight=1) == text


def test_write_atomically_keeps_mode_and_backup(tmp_path):
    path = tmp_path / "shop_api.conf"
    path.write_text(FILE)
    os.chmod(path, 0o640)
    write_atomically(str(path), "x\n", str(path) + ".prev")
    assert path.read_text() == "x\n"
    assert (tmp_path / "shop_api.conf.prev").read_text() == FILE
    assert oct(path.stat().st_mode & 0o777) == "0o640"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shop_api.conf", "shop_api.conf.prev"]




def test_workers_of_a_real_process_tree(tmp_path):
    """A real parent whose children are named like nginx workers by `exec -a`."""
    script = tmp_path / "master.sh"
    script.write_text("#!/bin/bash\n"
                      "(exec -a 'nginx: worker process' sleep 30) &\n"
                      "(exec -a 'nginx: worker process is shutting down' sleep 30) &\n"
                      "(exec -a 'nginx: cache manager process' sleep 30) &\n"
                      "wait\n")
    before = time.time()
    master = subprocess.Popen(["bash", str(script)])
    try:
        deadline = time.monotonic() + 10
        found = {}
        while len(found) < 2 and time.monotonic() < deadline:
            found = workers(master.pid)
        # the sleep argument follows the title; nginx itself rewrites its argv to the bare title
        assert sorted(found.values()) == ["nginx: worker process 30", "nginx: worker process is shutting down 30"]
        # start times are clock ticks (10 ms): precise enough to order a file write and a reload
        started = newest_worker_start(found)
        assert before - 0.02 <= started <= time.time()
        # none of the recorded workers exits: the drain reports them at its (injected) deadline
        now = [0.0]

        def sleep(seconds):
            now[0] += seconds
        drained, seconds, remaining = wait_for_drain(master.pid, found, 5, clock=lambda: now[0], sleep=sleep)
        assert (drained, remaining) == (False, 2) and seconds >= 5
        for pid, _ticks in found:
            os.kill(pid, 15)
        drained, seconds, remaining = wait_for_drain(master.pid, found, 10)
        assert drained and remaining == 0
    finally:
        master.kill()
        master.wait()


def test_set_upstream_backend_validates_and_restores(tmp_path):
    """`nginx -t` stand-in: a real program that fails, so the file must be restored; nginx not
    running (no pid file) means no reload."""
    path = tmp_path / "shop_api.conf"
    path.write_text(FILE)
    calls = []

    def run(argv):
        calls.append(argv)
        proc = subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write('emerg: bad'); sys.exit(1)"],
                              capture_output=True, text=True)
        return proc.returncode, proc.stdout, proc.stderr

    with pytest.raises(UpstreamError, match="nginx -t failed.*emerg: bad"):
        set_upstream_backend(str(path), "172.30.77.21:8001", "down", run, pid_file=str(tmp_path / "none.pid"))
    assert path.read_text() == FILE
    assert calls == [["nginx", "-t"]]


def test_set_upstream_backend_check_mode_and_idempotence(tmp_path):
    path = tmp_path / "shop_api.conf"
    path.write_text(FILE)

    def run(argv):
        return 0, "", ""

    res = set_upstream_backend(str(path), "172.30.77.21:8001", "down", run, check_mode=True,
                               pid_file=str(tmp_path / "none.pid"))
    assert res["changed"] and res["file_changed"] and path.read_text() == FILE
    assert "8001 max_fails=3 fail_timeout=10s down;" in res["diff"]["after"]
    res = set_upstream_backend(str(path), "172.30.77.21:8001", "down", run, pid_file=str(tmp_path / "none.pid"))
    assert res["file_changed"] and not res["reloaded"] and res["warnings"]
    assert parse_backends(path.read_text())["172.30.77.21:8001"] == "down"
    res = set_upstream_backend(str(path), "172.30.77.21:8001", "down", run, pid_file=str(tmp_path / "none.pid"))
    assert not res["changed"] and res["previous_state"] == "down"


def test_weights_are_parsed_and_written_in_place():
    text = FILE.replace("21:8002 max_fails", "21:8002 weight=5 max_fails")
    assert parse_servers(text)["172.30.77.21:8002"] == {"state": "up", "weight": 5}
    assert parse_servers(text)["172.30.77.22:8001"] == {"state": "down", "weight": 1}
    after = set_backend_state(text, "172.30.77.21:8001", "up", weight=9)
    assert after.splitlines()[0] == "server 172.30.77.21:8001 weight=9 max_fails=3 fail_timeout=10s;"
    # weight 1 is nginx's default: written as no parameter, so the role's file and this agree
    assert set_backend_state(after, "172.30.77.21:8001", "up", weight=1).splitlines()[0] == FILE.splitlines()[0]
    # no weight given: the backend keeps its own
    assert "weight=5 max_fails=3 fail_timeout=10s down;" in set_backend_state(text, "172.30.77.21:8002", "down")


@pytest.mark.parametrize("weight", [0, -1, 1001, True, "3", 2.5])
def test_bad_weights_are_refused(weight):
    with pytest.raises(UpstreamError, match="weight must be an integer from 1 to 1000"):
        set_backend_state(FILE, "172.30.77.21:8001", "up", weight=weight)


def test_runtime_upstreams_are_the_ipv4_only_ones():
    upstreams = [{"name": "api", "servers": [{"host": "10.0.0.21", "port": 8001}]},
                 {"name": "named", "servers": [{"host": "app1.internal", "port": 8001}]},
                 {"name": "empty", "servers": []}]
    assert nginx_runtime_upstreams(upstreams) == ["api"]


class FakeNginxControl(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Answers GET/POST /upstreams/NAME as roles/nginx/files/keelson_upstreams.lua does,
    and records every POST; ``in_flight`` counts down one per GET (requests finishing)."""
    daemon_threads = True

    def __init__(self, path, backends):
        self.backends = backends
        self.posts = []
        super().__init__(path, ControlHandler)


class ControlHandler(http.server.BaseHTTPRequestHandler):
    def address_string(self):
        return "unix"

    def log_message(self, *args):
        pass

    def answer(self, status, doc):
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path != "/upstreams/api":
            return self.answer(404, {"error": "unknown upstream"})
        for backend in self.server.backends.values():
            backend["in_flight"] = max(0, backend["in_flight"] - 1)
        self.answer(200, {"upstream": "api", "backends": self.server.backends})

    def do_POST(self):
        fields = dict(urllib.parse.parse_qsl(self.rfile.read(int(self.headers["Content-Length"])).decode()))
        self.server.posts.append(fields)
        backend = self.server.backends.get(fields["backend"])
        if backend is None:
            return self.answer(404, {"error": "backend %s is not in upstream api" % fields["backend"]})
        backend["state"] = fields["state"]
        backend["weight"] = int(fields.get("weight", backend["weight"]))
        self.answer(200, {"upstream": "api", "backends": self.server.backends})


@pytest.fixture
def control(tmp_path):
    path = str(tmp_path / "control.sock")
    backends = {address: {"state": state, "weight": 1, "in_flight": 0, "failures": 0, "skipped": False}
                for address, state in parse_backends(FILE).items()}
    server = FakeNginxControl(path, backends)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, Control(path)
    server.shutdown()
    server.server_close()


def test_runtime_path_writes_the_file_then_tells_nginx_and_waits_for_in_flight(tmp_path, control):
    server, client = control
    path = tmp_path / "api.conf"
    path.write_text(FILE)
    calls = []

    def run(argv):
        calls.append(argv)
        return 0, "", ""

    server.backends["172.30.77.21:8001"]["in_flight"] = 3
    res = set_upstream_backend(str(path), "172.30.77.21:8001", "down", run, control=client, upstream="api",
                               pid_file=str(tmp_path / "none.pid"), sleep=lambda s: None)
    assert res["applied_via"] == "runtime" and not res["reloaded"] and res["changed"]
    assert res["drained"] and res["in_flight"] == 0 and res["old_workers_remaining"] is None
    assert calls == [["nginx", "-t"]]  # validated, never reloaded
    assert parse_backends(path.read_text())["172.30.77.21:8001"] == "down"
    assert server.posts == [{"backend": "172.30.77.21:8001", "state": "down"}]
    # again: file and nginx agree, nothing is sent
    res = set_upstream_backend(str(path), "172.30.77.21:8001", "down", run, control=client, upstream="api")
    assert not res["changed"] and res["applied_via"] is None and len(server.posts) == 1


def test_a_drain_that_changes_nothing_still_waits_for_the_requests_in_flight(tmp_path, control):
    """A rerun after a drain that timed out: file and nginx already say down, but requests are
    still in flight. Nothing is written or sent, and the task waits as a drain does."""
    server, client = control
    path = tmp_path / "api.conf"
    path.write_text(set_backend_state(FILE, "172.30.77.21:8002", "down"))
    server.backends["172.30.77.21:8002"].update(state="down", in_flight=2)
    check = set_upstream_backend(str(path), "172.30.77.21:8002", "down", None, check_mode=True, control=client,
                                 upstream="api")
    assert not check["changed"] and check["drained"] is None and server.backends["172.30.77.21:8002"]["in_flight"] == 1
    res = set_upstream_backend(str(path), "172.30.77.21:8002", "down", None, control=client, upstream="api",
                               sleep=lambda s: None)
    assert not res["changed"] and res["applied_via"] is None and res["backup"] is None
    assert res["drained"] and res["in_flight"] == 0 and server.posts == []
    # drain: false asks for no wait
    server.backends["172.30.77.21:8002"]["in_flight"] = 5
    res = set_upstream_backend(str(path), "172.30.77.21:8002", "down", None, control=client, upstream="api",
                               drain=False)
    assert res["drained"] is None and server.backends["172.30.77.21:8002"]["in_flight"] == 4


def test_runtime_path_repairs_a_file_that_nginx_was_never_told(tmp_path, control):
    """A run killed between writing the file and telling nginx: the file already says down."""
    server, client = control
    path = tmp_path / "api.conf"
    path.write_text(set_backend_state(FILE, "172.30.77.21:8002", "down"))
    check = set_upstream_backend(str(path), "172.30.77.21:8002", "down", None, check_mode=True, control=client,
                                 upstream="api")
    assert check["changed"] and not check["file_changed"] and check["applied_via"] == "runtime"
    assert server.posts == []
    res = set_upstream_backend(str(path), "172.30.77.21:8002", "down", None, control=client, upstream="api")
    assert res["changed"] and not res["file_changed"] and res["backup"] is None
    assert server.backends["172.30.77.21:8002"]["state"] == "down"


def test_runtime_path_sets_a_weight(tmp_path, control):
    server, client = control
    path = tmp_path / "api.conf"
    path.write_text(FILE)
    res = set_upstream_backend(str(path), "172.30.77.22:8001", "up", lambda argv: (0, "", ""), weight=4,
                               control=client, upstream="api")
    assert res["applied_via"] == "runtime" and res["weight"] == 4 and res["drained"] is None
    assert server.posts == [{"backend": "172.30.77.22:8001", "state": "up", "weight": "4"}]
    assert "server 172.30.77.22:8001 weight=4 max_fails=3 fail_timeout=10s;" in path.read_text()


def test_a_backend_the_running_nginx_does_not_know_falls_back_to_the_reload(tmp_path, control):
    server, client = control
    del server.backends["172.30.77.22:8001"]
    path = tmp_path / "api.conf"
    path.write_text(FILE)
    res = set_upstream_backend(str(path), "172.30.77.22:8001", "up", lambda argv: (0, "", ""), control=client,
                               upstream="api", pid_file=str(tmp_path / "none.pid"))
    assert res["runtime_unavailable"] == "the running nginx does not know backend 172.30.77.22:8001 of api yet"
    assert res["applied_via"] is None and res["warnings"]  # reload path, and nginx is not running here
    assert server.posts == []


def test_control_unavailable_says_why(tmp_path, control):
    server, client = control
    with pytest.raises(ControlUnavailable, match="no control socket at"):
        Control(str(tmp_path / "absent.sock")).status("api")
    with pytest.raises(ControlUnavailable, match="without runtime state"):
        client.status("other")
    with pytest.raises(UpstreamError, match="refused 10.9.9.9:1 down: 404 backend 10.9.9.9:1 is not in"):
        client.set("api", "10.9.9.9:1", "down")
