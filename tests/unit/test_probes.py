"""Probes against real servers on 127.0.0.1; the gate with an injected clock."""
import http.server
import socket
import ssl
import subprocess
import threading

import pytest
from fakeclock import Clock

from ansible_collections.keelson.stack.plugins.module_utils.probes import (
    GateFailed, Outcome, http_probe, run_probe, tcp_probe, wait_for_probes, watch_probes)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health":
            body, status = b'{"status": "ok", "version": "2"}', 200
        elif self.path == "/host":
            body, status = self.headers.get("Host", "").encode(), 200
        else:
            body, status = b"nope", 503
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        reply = b"%s %s %s" % (self.headers.get("Content-Type", "").encode(),
                               self.headers.get("X-Token", "").encode(), body)
        self.send_response(201)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


def serve(server):
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server


@pytest.fixture(scope="module")
def http_url():
    server = serve(http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler))
    yield "http://127.0.0.1:%d" % server.server_address[1]
    server.shutdown()


@pytest.fixture(scope="module")
def https_url(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:edge.example.test",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    serve(server)
    yield "https://127.0.0.1:%d" % server.server_address[1], str(cert)
    server.shutdown()


def test_http_status_and_body(http_url):
    assert http_probe({"url": http_url + "/health", "body_regex": '"status": "ok"'}).ok
    bad_body = http_probe({"url": http_url + "/health", "body_regex": "version.: .3"})
    assert not bad_body.ok and "body does not match" in bad_body.reason
    bad_status = http_probe({"url": http_url + "/other"})
    assert not bad_status.ok and "status 503, expected 200" in bad_status.reason
    assert http_probe({"url": http_url + "/other", "status": [200, 503]}).ok


def test_failure_reason_quotes_the_body(http_url):
    out = http_probe({"url": http_url + "/other"})
    assert out.reason == "status 503, expected 200: nope"
    out = http_probe({"url": http_url + "/health", "body_contains": '"version": "3"'})
    assert out.reason == """status 200, body does not contain '"version": "3"': {"status": "ok", "version": "2"}"""
    assert http_probe({"url": http_url + "/health", "body_contains": '"version": "2"'}).ok


def test_post_with_body_and_headers(http_url):
    probe = {"url": http_url + "/items", "method": "POST", "status": [201], "body": '{"name": "x"}',
             "headers": {"Content-Type": "application/json", "X-Token": "t0k"},
             "body_contains": 'application/json t0k {"name": "x"}'}
    assert http_probe(probe).ok, http_probe(probe).reason


def test_connect_address_keeps_the_url_host(http_url):
    port = http_url.rsplit(":", 1)[1]
    out = http_probe({"url": "http://edge.example.test:%s/host" % port, "connect_address": "127.0.0.1",
                      "body_regex": "^edge\\.example\\.test:%s$" % port})
    assert out.ok, out.reason


def test_https_connect_address_verifies_the_public_name(https_url):
    url, ca = https_url
    port = url.rsplit(":", 1)[1]
    named = "https://edge.example.test:%s/health" % port
    assert http_probe({"url": named, "connect_address": "127.0.0.1", "ca_file": ca}).ok
    wrong = http_probe({"url": "https://other.example.test:%s/health" % port, "connect_address": "127.0.0.1",
                        "ca_file": ca})
    assert not wrong.ok and "other.example.test" in wrong.reason


def test_http_host_header(http_url):
    assert http_probe({"url": http_url + "/host", "host_header": "api.example.test",
                       "body_regex": "^api\\.example\\.test$"}).ok


def test_https_ca_file_and_insecure(https_url):
    url, ca = https_url
    assert http_probe({"url": url + "/health", "ca_file": ca}).ok
    assert http_probe({"url": url + "/health", "insecure": True}).ok
    untrusted = http_probe({"url": url + "/health"})
    assert not untrusted.ok and "CERTIFICATE_VERIFY_FAILED" in untrusted.reason


def test_http_connection_refused():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    out = http_probe({"url": "http://127.0.0.1:%d/health" % port, "timeout": 1})
    assert not out.ok and "refused" in out.reason.lower()


def test_tcp_probe():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    assert tcp_probe({"host": "127.0.0.1", "port": port}).ok
    listener.close()
    out = run_probe({"type": "tcp", "host": "127.0.0.1", "port": port, "timeout": 1})
    assert not out.ok and "refused" in out.reason.lower()


def scripted(clock, scripts, cost=0.1):
    """A probe runner answering from per-probe scripts of True/False/'fatal'."""
    def runner(probe):
        clock.now += cost
        step = scripts[probe["name"]].pop(0)
        if step == "fatal":
            return Outcome(False, "exited", fatal=True)
        return Outcome(step, "" if step else "not yet")
    return runner


def test_gate_needs_consecutive_successes():
    clock = Clock()
    scripts = {"a": [False, True, False, True, True, True], "b": [True, True, True]}
    res = wait_for_probes([{"type": "tcp", "name": "a"}, {"type": "tcp", "name": "b"}], consecutive=3,
                          interval=1, timeout=30, runner=scripted(clock, scripts), clock=clock, sleep=clock.sleep)
    assert res["passed"]
    a, b = res["probes"]
    assert a["attempts"] == 6 and a["successes"] == 4 and a["last_failure"] == "not yet"
    assert b["attempts"] == 3, "a probe that has passed is not run again"
    assert a["first_success_seconds"] == pytest.approx(1.3)  # round 2: sleep 1 + 3 attempts x 0.1
    assert a["passed_seconds"] == pytest.approx(5.9)  # b stops after round 3
    assert res["total_seconds"] == pytest.approx(5.9)
    assert scripts["a"] == [] and scripts["b"] == []


def test_gate_fails_at_deadline_with_last_reason():
    clock = Clock()
    scripts = {"a": [True, False] * 20}
    with pytest.raises(GateFailed) as err:
        wait_for_probes([{"type": "http", "name": "a"}], consecutive=2, interval=2, timeout=10,
                        runner=scripted(clock, scripts), clock=clock, sleep=clock.sleep)
    res = err.value.result
    assert not res["passed"]
    assert err.value.reason == "deadline of 10s passed: a: not yet"
    assert res["probes"][0]["attempts"] == 5
    assert res["total_seconds"] <= 10


def test_gate_stops_at_fatal_outcome():
    clock = Clock()
    scripts = {"a": [False, "fatal"]}
    with pytest.raises(GateFailed) as err:
        wait_for_probes([{"type": "docker", "name": "a"}], consecutive=1, interval=1, timeout=60,
                        runner=scripted(clock, scripts), clock=clock, sleep=clock.sleep)
    assert err.value.reason == "a: exited"
    assert err.value.result["total_seconds"] == pytest.approx(1.2)


def test_gate_against_a_server_that_comes_up(http_url):
    """Real probes, injected time: the TCP target starts listening after two rounds."""
    clock = Clock()
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    port = holder.getsockname()[1]

    def sleep(seconds):
        clock.sleep(seconds)
        if len(clock.sleeps) == 2:
            holder.listen(1)

    probes = [{"type": "tcp", "host": "127.0.0.1", "port": port, "timeout": 1},
              {"type": "http", "url": http_url + "/health", "status": [200]}]
    res = wait_for_probes(probes, consecutive=2, interval=1, timeout=30, clock=clock, sleep=sleep)
    holder.close()
    tcp, http = res["probes"]
    assert tcp["attempts"] == 4 and "refused" in tcp["last_failure"].lower()
    assert http["attempts"] == 2 and http["last_failure"] is None


def test_gate_waits_for_a_stable_streak():
    """A probe that passes three times at once must keep passing for stable_seconds: the
    failure at round 5 (a process dying shortly after start) restarts its streak."""
    clock = Clock()
    scripts = {"a": [True, True, True, True, False] + [True] * 20}
    res = wait_for_probes([{"type": "http", "name": "a"}], consecutive=3, interval=1, timeout=60, stable_seconds=5,
                          runner=scripted(clock, scripts), clock=clock, sleep=clock.sleep)
    a = res["probes"][0]
    assert a["attempts"] == 11 and a["last_failure"] == "not yet"
    # attempts at t=0.1, 1.2, ...: the streak restarts at attempt 6 (t=5.6) and is 5 s long at attempt 11
    assert a["passed_seconds"] == pytest.approx(11.1)
    with pytest.raises(ValueError):
        wait_for_probes([{"type": "tcp", "name": "a"}], timeout=5, stable_seconds=5)


def test_watch_tolerates_isolated_failures_for_the_whole_window():
    clock = Clock()
    scripts = {"a": [True, False, True, True, False, True] + [True] * 30, "b": [True] * 36}
    res = watch_probes([{"type": "http", "name": "a"}, {"type": "http", "name": "b"}], duration=10, interval=1,
                       failure_threshold=2, runner=scripted(clock, scripts), clock=clock, sleep=clock.sleep)
    assert res["passed"] and res["rounds"] == 9
    a, b = res["probes"]
    assert a["attempts"] == 9 and a["failures"] == 2 and a["last_failure"] == "not yet"
    assert b["failures"] == 0 and b["last_failure"] is None


def test_watch_fails_on_consecutive_failures_inside_the_window():
    """A release that degrades after its gate passed: two failures in a row at rounds 6-7."""
    clock = Clock()
    scripts = {"a": [True] * 5 + [False, False] + [True] * 30}
    with pytest.raises(GateFailed) as failed:
        watch_probes([{"type": "http", "name": "a"}], duration=30, interval=1, failure_threshold=2,
                     runner=scripted(clock, scripts), clock=clock, sleep=clock.sleep)
    res = failed.value.result
    assert not res["passed"] and res["rounds"] == 7 and res["probes"][0]["failures"] == 2
    assert "a failed 2 time(s) in a row 6.7s into the monitoring window: not yet" == failed.value.reason


def test_watch_stops_at_once_on_a_fatal_outcome():
    clock = Clock()
    scripts = {"a": [True, "fatal"]}
    with pytest.raises(GateFailed) as failed:
        watch_probes([{"type": "docker", "name": "a"}], duration=30, interval=1, failure_threshold=3,
                     runner=scripted(clock, scripts), clock=clock, sleep=clock.sleep)
    assert failed.value.result["rounds"] == 2 and "exited" in failed.value.reason
