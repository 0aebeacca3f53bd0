"""The load generator against a real TLS demo-API stand-in on 127.0.0.1."""
import http.server
import json
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import loadgen  # noqa: E402  (tests/loadgen.py is not in a package)
from loadgen import Load, Sample, percentile, summarize, summary_line  # noqa: E402


class ApiHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as nginx speaks to clients
    disable_nagle_algorithm = True  # headers and body go out in separate writes

    def setup(self):
        super().setup()
        with self.server.lock:
            self.server.connections += 1

    def do_GET(self):
        self.answer("GET")

    def do_POST(self):
        self.answer("POST")

    def answer(self, method):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        server = self.server
        with server.lock:
            server.requests.append((method, self.path))
            server.hosts.add(self.headers.get("Host"))
            close = server.mode == "close" or server.close_next > 0
            server.close_next = max(0, server.close_next - 1)
            reset = not close and server.reset_next > 0
            server.reset_next -= reset
            hang_up = not (close or reset) and (server.mode == "hangup" or server.hang_up_next > 0)
            server.hang_up_next = max(0, server.hang_up_next - hang_up)
            mode = server.mode
        if close:  # no response at all: the client sees the connection drop
            self.close_connection = True
            return
        if reset:  # the status line, then a TCP reset (no FIN)
            self.wfile.write(b"HTTP/1.1 200 OK\r\n")
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            # Closed for real (a RST, by SO_LINGER 0) when finish() closes
            # rfile, before socketserver's shutdown(SHUT_WR) could send a FIN.
            self.connection.close()
            self.close_connection = True
            return
        if hang_up:
            # Answer with keep-alive (no "Connection: close"), then close the
            # connection anyway, as nginx does with idle ones on a reload: the
            # client's next request on it meets a dead connection.
            self.close_connection = True
        if mode == "502":
            return self.reply(502, {"error": "bad gateway"})

        path, _, query = self.path.partition("?")
        if method == "POST" and path == "/items":
            with server.lock:
                server.created.append(len(server.created) + 1)
                item = server.created[-1]
            return self.reply(201, {"id": item, "name": json.loads(body)["name"]})
        if method == "GET" and path.startswith("/items/"):
            with server.lock:
                known = int(path.rsplit("/", 1)[1]) in server.created
            return self.reply(200 if known else 404, {"id": path.rsplit("/", 1)[1]})
        if method == "GET" and path == "/slow":
            time.sleep(int(query.partition("=")[2]) / 1000)
            return self.reply(200, {"slept": True})
        if method == "GET" and path == "/version":
            return self.reply(200, {"version": "1"}, upstream=None)
        return self.reply(404, {"error": "no route"})

    def reply(self, status, doc, upstream="api-1"):
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if upstream:
            self.send_header("X-Upstream", upstream)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class Api(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, tls):
        super().__init__(("127.0.0.1", 0), ApiHandler)
        if tls is not None:  # None: plain HTTP
            self.socket = tls.wrap_socket(self.socket, server_side=True)
        self.scheme = "http" if tls is None else "https"
        self.lock = threading.Lock()
        self.mode = "ok"  # "ok", "502", "close" or "hangup" (every connection)
        self.close_next = 0  # drop this many requests, then answer again
        self.reset_next = 0  # reset this many connections after a status line
        self.hang_up_next = 0  # close this many connections after answering
        self.requests, self.created, self.hosts = [], [], set()
        self.connections = 0

    @property
    def url(self):
        return "%s://127.0.0.1:%d" % (self.scheme, self.server_address[1])


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it."""
    tmp = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp)

    openssl("req", "-x509", *ec, "-days", "1", "-subj", "/CN=loadgen test CA",
            "-keyout", "ca.key", "-out", "ca.pem")
    openssl("req", "-new", *ec, "-subj", "/CN=localhost", "-keyout", "server.key",
            "-out", "server.csr")
    (tmp / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:edge.keelson.invalid\n"
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-set_serial", "2", "-days", "1", "-extfile", "server.ext", "-out", "server.pem")
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(str(tmp / "server.pem"), str(tmp / "server.key"))
    return tls, str(tmp / "ca.pem")


def serve(tls):
    server = Api(tls)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def api(pki):
    yield from serve(pki[0])


@pytest.fixture
def plain_api():
    """Plain HTTP, for a reset mid-answer: over TLS, ssl reports it as an EOF."""
    yield from serve(None)


@pytest.fixture
def ca(pki):
    return pki[1]


def wait_for(predicate, timeout=5):
    """Polls; the timeout only keeps a broken test from hanging."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in %ss" % timeout
        time.sleep(0.01)


def all_workers_ran(load):
    """Under CPU pressure one worker can finish a test's quota alone."""
    return len({s.worker for s in load.results()}) == load.workers


def ok_after_error(load, count):
    """A request failed, then at least ``count`` requests succeeded from it on."""
    samples = load.results()
    failed = [i for i, s in enumerate(samples) if s.error]
    return failed and sum(s.ok for s in samples[failed[0]:]) >= count


def sample(start, latency=0.01, status=200, error=None, stale_retry=False):
    return Sample(kind="get", path="/version", start=start, end=start + latency,
                  status=status, error=error, latency=latency, upstream=None,
                  reused=stale_retry, worker=0, stale_retry=stale_retry)


def test_percentile_nearest_rank():
    assert percentile([], 50) is None
    assert percentile([7], 99) == 7
    values = list(range(10, 0, -1))  # 10..1, unsorted on purpose
    assert percentile(values, 50) == 5
    assert percentile(values, 99) == 10
    assert percentile(values, 0) == 1
    hundred = list(range(1, 101))
    assert (percentile(hundred, 50), percentile(hundred, 99), percentile(hundred, 100)) == (50, 99, 100)


def test_summarize_splits_by_start_time():
    samples = [sample(0.5), sample(1.0, latency=0.2), sample(1.5, status=502),
               sample(1.9, error="ConnectionResetError: boom"), sample(2.0), sample(3.0),
               sample(1.2, stale_retry=True),
               sample(1.3, stale_retry=True, error="RemoteDisconnected: x")]
    stats = summarize(samples, {"before": (None, 1.0), "during": (1.0, 2.0),
                                "after": (2.0, None), "empty": (10, 20)})
    assert [stats[name]["requests"] for name in ("before", "during", "after")] == [1, 5, 2]
    during = stats["during"]
    assert (during["non_2xx"], during["socket_errors"], during["stale_retries"]) == (1, 2, 2)
    assert during["statuses"] == {502: 1}
    assert during["errors"] == {"ConnectionResetError": 1, "RemoteDisconnected": 1}
    assert during["p50_ms"] == pytest.approx(10)
    assert during["max_ms"] == pytest.approx(200)
    assert stats["after"]["non_2xx"] == stats["after"]["socket_errors"] == 0
    assert stats["after"]["stale_retries"] == 0

    empty = stats["empty"]
    assert empty["requests"] == 0
    assert empty["p50_ms"] is empty["p99_ms"] is empty["max_ms"] is None
    assert summary_line("empty", empty) == (
        "empty: 0 requests, 0 non-2xx, 0 socket errors, p50 n/a, p99 n/a, max n/a")
    line = summary_line("during", during)
    assert line.startswith("during: 5 requests, 1 non-2xx, 2 socket errors, p50 10.0 ms, ")
    assert ", 2 stale keep-alive retries (" in line
    assert "502 x1" in line and "ConnectionResetError x1" in line
    assert "stale" not in summary_line("after", stats["after"])


def test_mix_is_validated():
    with pytest.raises(ValueError):
        Load("https://127.0.0.1", mix={"delete": 1})
    with pytest.raises(ValueError):
        Load("https://127.0.0.1", mix={"get": 0})
    with pytest.raises(ValueError):
        Load("ftp://127.0.0.1")


def test_counts_requests_and_reuses_created_ids(api, ca):
    load = Load(api.url, ca_file=ca, workers=2, slow_ms=5)
    with load:
        wait_for(lambda: len(load.results()) >= 60 and all_workers_ran(load)
                 and any(s.kind == "get" for s in load.results()))
    samples = load.results()

    assert len(samples) == len(api.requests)
    assert all(s.ok for s in samples)
    assert {s.kind for s in samples} <= {"get", "post", "slow", "version"}
    gets = [s for s in samples if s.kind == "get"]
    assert all(int(s.path.rsplit("/", 1)[1]) in api.created for s in gets)
    assert sorted(load.created_ids()) == api.created
    assert len(api.created) == sum(s.kind == "post" for s in samples)
    # One persistent connection per worker, reused for everything after the first request.
    assert api.connections == 2
    assert sum(not s.reused for s in samples) == 2
    assert {s.upstream for s in samples if s.kind != "version"} == {"api-1"}
    assert all(s.upstream is None for s in samples if s.kind == "version")

    stats = load.summary()["all"]
    assert (stats["requests"], stats["non_2xx"], stats["socket_errors"]) == (len(samples), 0, 0)


def test_host_header_override(api, ca):
    with Load(api.url, ca_file=ca, host_header="app.example", workers=1, mix={"get": 1}) as load:
        wait_for(lambda: len(load.results()) >= 3)
    assert api.hosts == {"app.example"}
    assert all(s.kind == "version" and s.ok for s in load.results())


def test_connect_to_keeps_the_url_name_for_tls_and_host(api, ca):
    """Like curl --connect-to: the name only the certificate knows, the address given."""
    url = api.url.replace("127.0.0.1", "edge.keelson.invalid")
    with Load(url, ca_file=ca, connect_to="127.0.0.1", workers=1, mix={"get": 1}) as load:
        wait_for(lambda: len(load.results()) >= 3)
    assert all(s.ok for s in load.results())
    assert {h.split(":")[0] for h in api.hosts} == {"edge.keelson.invalid"}


def test_non_2xx_counted_apart_from_socket_errors(api, ca):
    api.mode = "502"
    with Load(api.url, ca_file=ca, workers=2, slow_ms=5) as load:
        wait_for(lambda: len(load.results()) >= 20 and all_workers_ran(load))
    stats = load.summary()["all"]
    assert stats["requests"] == stats["non_2xx"] == len(api.requests)
    assert stats["socket_errors"] == 0
    assert stats["statuses"] == {502: stats["requests"]}
    assert load.created_ids() == []  # a failed POST gives no id to read back
    assert api.connections == 2  # a 502 does not cost the connection


def test_abrupt_close_on_a_fresh_connection_is_a_socket_error(api, ca):
    api.close_next = 1  # the very first request, on a brand-new connection
    load = Load(api.url, ca_file=ca, workers=1, slow_ms=5)
    with load:
        wait_for(lambda: sum(s.ok for s in load.results()) >= 5)
    samples = load.results()
    stats = load.summary()["all"]
    assert (stats["socket_errors"], stats["non_2xx"], stats["stale_retries"]) == (1, 0, 0)
    first = samples[0]
    assert first.error and first.status is None
    assert not first.reused and not first.stale_retry  # nothing stale to retry
    assert not samples[1].reused and samples[1].ok  # the worker reconnects
    assert all(s.ok for s in samples[1:])
    assert len(api.requests) == len(samples)
    assert api.connections == 2


def test_abrupt_close_is_a_socket_error_when_the_retry_fails_too(api, ca):
    load = Load(api.url, ca_file=ca, workers=1, slow_ms=5)

    with load:
        wait_for(lambda: len(load.results()) >= 5)
        # The reused connection drops the request, and so does the fresh one
        # it is retried on: a dead backend is not hidden by the retry.
        api.close_next = 2
        wait_for(lambda: ok_after_error(load, 5))
    samples = load.results()
    stats = load.summary()["all"]
    assert (stats["socket_errors"], stats["non_2xx"], stats["stale_retries"]) == (1, 0, 1)
    index = next(i for i, s in enumerate(samples) if s.error)
    failed = samples[index]
    assert failed.status is None and failed.reused and failed.stale_retry
    assert not samples[index + 1].reused and samples[index + 1].ok
    assert not any(s.stale_retry for s in samples[index + 1:])
    # A dropped request cannot be told from a stale connection: it was sent twice.
    assert api.requests[index] == api.requests[index + 1]
    assert len(api.requests) == len(samples) + 1
    assert api.connections == 3  # first, retry, reconnect after the error


def test_reset_after_the_status_line_is_not_retried(plain_api):
    api = plain_api
    load = Load(api.url, workers=1, slow_ms=5)

    with load:
        wait_for(lambda: len(load.results()) >= 5)
        api.reset_next = 1
        wait_for(lambda: ok_after_error(load, 3))
    samples = load.results()
    stats = load.summary()["all"]
    assert (stats["socket_errors"], stats["non_2xx"], stats["stale_retries"]) == (1, 0, 0)
    failed = next(s for s in samples if s.error)
    assert failed.error.startswith("ConnectionResetError")
    assert failed.reused and not failed.stale_retry  # part of an answer came: not stale
    assert len(api.requests) == len(samples)
    assert api.connections == 2


def test_idle_close_of_a_keep_alive_connection_is_retried(api, ca):
    load = Load(api.url, ca_file=ca, workers=1, slow_ms=5)

    def ok_after_retry():
        samples = load.results()
        retried = [i for i, s in enumerate(samples) if s.stale_retry]
        return retried and len(samples) - retried[0] >= 5

    with load:
        wait_for(lambda: len(load.results()) >= 5)
        api.hang_up_next = 1  # like an nginx reload closing the idle connection
        wait_for(ok_after_retry)
    samples = load.results()
    stats = load.summary()["all"]
    assert (stats["socket_errors"], stats["non_2xx"], stats["stale_retries"]) == (0, 0, 1)
    assert all(s.ok for s in samples)
    index = next(i for i, s in enumerate(samples) if s.stale_retry)
    assert samples[index].reused
    assert samples[index + 1].reused and not samples[index + 1].stale_retry
    assert len(api.requests) == len(samples)  # the stale attempt never reached the server
    assert api.connections == 2
    assert summary_line("all", stats).startswith(
        "all: %d requests, 0 non-2xx, 0 socket errors, " % len(samples))
    assert ", 1 stale keep-alive retries" in summary_line("all", stats)


def test_never_resend_counts_a_request_on_a_closed_keep_alive_connection_as_an_error(api, ca):
    """resend=False: what Python requests' defaults or Node's agent do; nothing is sent twice."""
    load = Load(api.url, ca_file=ca, workers=1, slow_ms=5, resend=False)

    with load:
        wait_for(lambda: len(load.results()) >= 5)
        api.hang_up_next = 1  # like an nginx reload closing the idle connection
        wait_for(lambda: ok_after_error(load, 3))
    samples = load.results()
    stats = load.summary()["all"]
    assert (stats["socket_errors"], stats["stale_retries"], stats["stale_sends"]) == (1, 0, 1)
    failed = next(s for s in samples if s.error)
    assert failed.reused and failed.stale_send and not failed.stale_retry and failed.status is None
    assert len(api.requests) == len(samples) - 1  # the failed request never reached the server
    assert ", 1 sent on a closed keep-alive connection (not resent)" in summary_line("all", stats)


def test_every_method_is_retried_on_a_closed_keep_alive_connection(api, ca):
    api.mode = "hangup"  # every connection is closed after its first answer
    load = Load(api.url, ca_file=ca, workers=2, slow_ms=5)

    def retried(kind):
        return any(s.kind == kind and s.stale_retry for s in load.results())

    with load:
        wait_for(lambda: len(load.results()) >= 20 and all_workers_ran(load)
                 and retried("post") and retried("get") and retried("slow"))
    samples = load.results()
    stats = load.summary()["all"]
    assert all(s.ok for s in samples)
    assert (stats["socket_errors"], stats["non_2xx"]) == (0, 0)
    # Only each worker's very first request went out on a fresh connection.
    assert sum(not s.reused for s in samples) == 2
    assert all(s.stale_retry for s in samples if s.reused)
    assert stats["stale_retries"] == len(samples) - 2
    assert len(api.requests) == api.connections == len(samples)
    assert sorted(load.created_ids()) == api.created  # no POST was applied twice


def test_connection_failures_are_socket_errors(api):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    with Load("https://127.0.0.1:%d" % closed_port, workers=1) as refused:
        wait_for(lambda: len(refused.results()) >= 2)
    # Without ca_file the system store is used, which does not know the test CA.
    with Load(api.url, workers=1) as untrusted:
        wait_for(lambda: len(untrusted.results()) >= 2)

    assert all("ConnectionRefusedError" in s.error for s in refused.results())
    assert all("SSLCertVerificationError" in s.error for s in untrusted.results())
    for load in (refused, untrusted):
        stats = load.summary()["all"]
        assert stats["socket_errors"] == stats["requests"] and stats["non_2xx"] == 0
    assert api.requests == []


def test_marks_split_a_real_run(api, ca):
    load = Load(api.url, ca_file=ca, workers=2, slow_ms=5)
    with load:
        wait_for(lambda: len(load.results()) >= 10)
        mid = load.mark("mid")
        wait_for(lambda: sum(s.start >= mid for s in load.results()) >= 10)
    marks, samples = load.marks, load.results()
    stats = load.summary({"before": (marks["start"], mid), "after": (mid, marks["stop"])})

    assert marks["start"] <= mid <= marks["stop"]
    assert stats["before"]["requests"] == sum(s.start < mid for s in samples) >= 1
    assert stats["after"]["requests"] >= 10
    assert stats["before"]["requests"] + stats["after"]["requests"] == len(samples)


def test_rate_limits_each_worker(api, ca):
    load = Load(api.url, ca_file=ca, workers=1, mix={"get": 1}, rate=4)
    with load:
        wait_for(lambda: len(load.results()) >= 1)
        time.sleep(0.3)
    # Unthrottled this would be hundreds; at 4/s it is the first one or two.
    assert 1 <= len(load.results()) <= 3


def test_cli_prints_json_summary(api, ca, capsys):
    code = loadgen.main(["--url", api.url, "--ca", ca, "--seconds", "0.3", "--workers", "2",
                         "--slow-ms", "5", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["summary"]["all"]["requests"] == len(api.requests) > 0
    assert set(out["marks"]) == {"start", "stop"}
