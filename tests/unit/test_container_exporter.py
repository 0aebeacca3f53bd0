"""The container exporter (roles/monitoring/files/keelson_container_exporter.py), imported from
its path, fed with what real engines answered (files/container_exporter/: inspect and one-shot
stats captured with Env values replaced by a marker):

- lab_app1_docker26.json: the lab stack's replicas api-1 and web on app1 (Debian 13, docker.io 26.1,
  cgroup v1 as on this machine);
- debian13_docker26.json, debian12_docker20.json: containers labelled as a Compose project
  `kce` in the docker molecule instances: kce-ok (healthy, 64 MiB limit), kce-sick (unhealthy),
  kce-crash (exits 3 under restart=always: restarting on 20.10, running again on 26.1) and
  kce-stopped (exited)."""
import importlib.util
import json
import re
import socket
import socketserver
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FILES = Path(__file__).resolve().parent / "files" / "container_exporter"
SECRET = "keelson-test-secret-value"

_spec = importlib.util.spec_from_file_location(
    "keelson_container_exporter", ROOT / "roles/monitoring/files/keelson_container_exporter.py")
exporter = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(exporter)


def captured(name):
    return json.loads((FILES / name).read_text())["containers"]


def samples(doc):
    """{(metric, container): value} of one captured container."""
    return dict(((name, labels["container"]), value)
                for name, labels, value in exporter.container_samples(doc["inspect"], doc["stats"]))


def series(text):
    """{metric{labels}: value} of an exposition text."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def test_lab_replicas_say_which_replica_of_which_service():
    lab = captured("lab_app1_docker26.json")
    assert exporter.container_labels(lab["demo-api-1-1"]["inspect"]) == {
        "project": "demo", "service": "api", "replica": "api-1", "container": "demo-api-1-1"}
    # a service with one replica keeps its name as its Compose service
    assert exporter.container_labels(lab["demo-web-1"]["inspect"]) == {
        "project": "demo", "service": "web", "replica": "web", "container": "demo-web-1"}


def test_running_replica_reports_what_the_engine_measured():
    api = captured("lab_app1_docker26.json")["demo-api-1-1"]
    got = samples(api)
    memory = api["stats"]["memory_stats"]
    assert got[("keelson_container_up", "demo-api-1-1")] == 1
    assert got[("keelson_container_healthy", "demo-api-1-1")] == 1
    assert got[("keelson_container_restarts_total", "demo-api-1-1")] == 0
    assert got[("keelson_container_cpu_seconds_total", "demo-api-1-1")] == pytest.approx(
        api["stats"]["cpu_stats"]["cpu_usage"]["total_usage"] / 1e9)
    # cgroup v1: usage less total_inactive_file, as `docker stats` shows it
    assert got[("keelson_container_memory_bytes", "demo-api-1-1")] == (
        memory["usage"] - memory["stats"]["total_inactive_file"])
    # memory: 256m in inventories/lab/group_vars/app.yml
    assert got[("keelson_container_memory_limit_bytes", "demo-api-1-1")] == 256 * 1024 * 1024


@pytest.mark.parametrize("name, crash_up, crash_restarts", [
    ("debian12_docker20.json", 0, 8),   # caught while restarting (State.Running is true then)
    ("debian13_docker26.json", 1, 7),   # caught running between two exits
])
def test_states_of_real_containers(name, crash_up, crash_restarts):
    got = {}
    for doc in captured(name).values():
        got.update(samples(doc))
    assert got[("keelson_container_up", "kce-ok")] == 1
    assert got[("keelson_container_healthy", "kce-ok")] == 1
    assert got[("keelson_container_memory_limit_bytes", "kce-ok")] == 64 * 1024 * 1024
    assert got[("keelson_container_up", "kce-sick")] == 1
    assert got[("keelson_container_healthy", "kce-sick")] == 0
    assert got[("keelson_container_up", "kce-stopped")] == 0
    assert got[("keelson_container_restarts_total", "kce-stopped")] == 0
    assert got[("keelson_container_up", "kce-crash")] == crash_up
    assert got[("keelson_container_restarts_total", "kce-crash")] == crash_restarts
    # a container that does not run has no health, CPU or memory series (the engine's are zeros)
    for metric in ("healthy", "cpu_seconds_total", "memory_bytes", "memory_limit_bytes"):
        assert ("keelson_container_" + metric, "kce-stopped") not in got
    assert (("keelson_container_cpu_seconds_total", "kce-crash") in got) == bool(crash_up)
    # without keelson.stack labels the Compose service is both service and replica
    labels = exporter.container_labels(captured(name)["kce-ok"]["inspect"])
    assert labels == {"project": "kce", "service": "ok", "replica": "ok", "container": "kce-ok"}


def test_memory_as_docker_stats_computes_it():
    # cgroup v2 (what Debian 12 and 13 VMs run; the lab's engines sit on cgroup v1): inactive_file
    assert exporter.memory_usage({"usage": 100, "stats": {"inactive_file": 30, "active_file": 5}}) == 70
    # cgroup v1: total_inactive_file counts the container's child cgroups too
    assert exporter.memory_usage({"usage": 100, "stats": {"total_inactive_file": 40, "inactive_file": 30}}) == 60
    assert exporter.memory_usage({"usage": 100, "stats": {"inactive_file": 130}}) == 100
    assert exporter.memory_usage({"usage": 100}) == 100
    assert exporter.memory_usage({}) is None


def test_zero_stats_of_a_container_that_just_stopped_are_not_exported():
    doc = captured("debian13_docker26.json")["kce-ok"]
    empty = {"read": "0001-01-01T00:00:00Z", "cpu_stats": {"cpu_usage": {"total_usage": 0}}, "memory_stats": {}}
    names = [name for name, _labels, _value in exporter.container_samples(doc["inspect"], empty)]
    assert names == ["keelson_container_up", "keelson_container_restarts_total", "keelson_container_healthy"]


def every_container():
    return [(doc["inspect"], doc["stats"])
            for name in ("lab_app1_docker26.json", "debian13_docker26.json", "debian12_docker20.json")
            for doc in captured(name).values()]


def test_no_environment_value_or_other_label_reaches_the_text():
    text = exporter.metrics_text(every_container(), True, 0, 0.01)
    assert SECRET not in text
    assert "DEMO_DATABASE_URL" not in text and "config-hash" not in text and "working_dir" not in text
    assert set(re.findall(r'(\w+)="', text)) == {"project", "service", "replica", "container"}


SAMPLE_LINE = re.compile(r'^[a-z_]+(\{([a-z_]+="([^"\\]|\\.)*",?)*\})? -?[0-9.e+-]+$')


def test_text_is_prometheus_exposition_format():
    text = exporter.metrics_text(every_container(), True, 3, 0.0123)
    seen, current = [], None
    for line in text.splitlines():
        if line.startswith("# HELP "):
            current = line.split()[2]
            assert current not in seen, "family %s split" % current
            seen.append(current)
        elif line.startswith("# TYPE "):
            assert line.split()[2:] == [current, exporter.FAMILIES[current][0]]
        else:
            assert SAMPLE_LINE.match(line), line
            assert line.startswith(current + "{") or line.startswith(current + " "), line
    assert text.endswith("\n")
    got = series(text)
    assert got["keelson_container_docker_up"] == 1
    assert got["keelson_container_scrape_errors_total"] == 3
    assert got["keelson_container_scrape_duration_seconds"] == 0.0123
    assert got['keelson_container_up{container="demo-api-1-1",project="demo",replica="api-1",service="api"}'] == 1


def test_label_values_are_escaped():
    inspect = {"Name": "/odd", "State": {"Status": "exited"},
               "Config": {"Labels": {"com.docker.compose.project": 'a"b\\c\nd', "com.docker.compose.service": "s"}}}
    text = exporter.metrics_text([(inspect, None)], True, 0, 0)
    assert 'project="a\\"b\\\\c\\nd"' in text


def test_listen_addresses():
    assert exporter.parse_listen("10.0.0.5:9417") == (socket.AF_INET, "10.0.0.5", 9417)
    assert exporter.parse_listen("[fd00::5]:9417") == (socket.AF_INET6, "fd00::5", 9417)
    for bad in ("10.0.0.5", ":9417", "10.0.0.5:http"):
        with pytest.raises(ValueError):
            exporter.parse_listen(bad)


# ---- the exporter against a fake engine on a real Unix socket ---------------------------------

class FakeEngine(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Answers the three calls the exporter makes from captured containers. ``gone``: IDs that
    vanish between the list and the inspect; ``broken_stats``: IDs whose stats fail."""
    daemon_threads = True

    def __init__(self, path, containers, oneoff=()):
        self.containers = dict((doc["inspect"]["Id"], doc) for doc in containers)
        self.oneoff = set(oneoff)
        self.gone, self.broken_stats, self.calls = set(), set(), []
        super().__init__(str(path), EngineHandler)


class EngineHandler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        engine = self.server
        engine.calls.append(self.path)
        path = self.path.split("?")[0]
        status, body = 404, {"message": "no such container"}
        if path == "/containers/json":
            status, body = 200, [
                {"Id": cid, "Labels": dict(doc["inspect"]["Config"]["Labels"],
                                           **({"com.docker.compose.oneoff": "True"} if cid in engine.oneoff else {}))}
                for cid, doc in engine.containers.items()]
        else:
            cid, what = path.split("/")[2:4]
            doc = engine.containers.get(cid)
            if doc and cid not in engine.gone:
                if what == "json":
                    status, body = 200, doc["inspect"]
                elif cid in engine.broken_stats:
                    status, body = 500, {"message": "stats failed"}
                else:
                    status, body = 200, doc["stats"]
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def engine(tmp_path):
    docs = list(captured("debian13_docker26.json").values())
    started = []

    def start(oneoff=()):
        server = FakeEngine(tmp_path / "docker.sock", docs, oneoff)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        started.append(server)
        return server
    yield start, tmp_path / "docker.sock", dict((d["inspect"]["Name"].lstrip("/"), d["inspect"]["Id"]) for d in docs)
    for server in started:
        server.shutdown()
        server.server_close()


def make_exporter(sock):
    logged = []
    return exporter.Exporter(exporter.Docker(str(sock), 2), workers=4, log=logged.append), logged


def test_a_scrape_reads_every_compose_container_but_one_off_jobs(engine):
    start, sock, ids = engine
    fake = start(oneoff=[ids["kce-stopped"]])
    exp, _logged = make_exporter(sock)
    got = series(exp.scrape())
    ups = dict((re.search(r'container="([^"]+)"', k).group(1), v) for k, v in got.items()
               if k.startswith("keelson_container_up{"))
    assert ups == {"kce-ok": 1, "kce-sick": 1, "kce-crash": 1}
    assert got["keelson_container_docker_up"] == 1 and got["keelson_container_scrape_errors_total"] == 0
    stats_calls = [c for c in fake.calls if "/stats" in c]
    assert len(stats_calls) == 3 and all("one-shot=true" in c and "stream=false" in c for c in stats_calls)
    assert 'filters=%7B%22label%22%3A+%5B%22com.docker.compose.project%22%5D%7D' in fake.calls[0]
    assert "all=true" in fake.calls[0]


def test_vanished_container_is_skipped_and_failed_stats_are_counted(engine):
    start, sock, ids = engine
    fake = start()
    fake.gone.add(ids["kce-sick"])
    fake.broken_stats.add(ids["kce-ok"])
    exp, _logged = make_exporter(sock)
    text = exp.scrape()
    got = series(text)
    assert 'container="kce-sick"' not in text
    assert got['keelson_container_up{container="kce-ok",project="kce",replica="ok",service="ok"}'] == 1
    assert 'keelson_container_cpu_seconds_total{container="kce-ok"' not in text
    assert got["keelson_container_scrape_errors_total"] == 1 and got["keelson_container_docker_up"] == 1


def test_engine_down_keeps_the_exporter_serving_and_counting(engine):
    start, sock, _ids = engine
    exp, logged = make_exporter(sock)   # no engine listening yet: the socket does not exist
    for expected_errors in (1, 2):
        got = series(exp.scrape())
        assert got["keelson_container_docker_up"] == 0
        assert got["keelson_container_scrape_errors_total"] == expected_errors
        assert not [k for k in got if k.startswith("keelson_container_up")]
    assert len(logged) == 1 and "cannot be reached" in logged[0]
    start()
    got = series(exp.scrape())
    assert got["keelson_container_docker_up"] == 1
    assert got["keelson_container_scrape_errors_total"] == 2   # a counter: the past errors stay
    assert len([k for k in got if k.startswith("keelson_container_up")]) == 4
    assert logged[1] == "the Docker engine answers again"


def test_http_endpoint(engine):
    start, sock, _ids = engine
    start()
    exp, _logged = make_exporter(sock)
    server = exporter.ThreadingHTTPServer(("127.0.0.1", 0), exporter.handler_for(exp))
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        base = "http://127.0.0.1:%d" % server.server_address[1]
        with urllib.request.urlopen(base + "/metrics", timeout=10) as res:
            assert res.headers["Content-Type"] == exporter.CONTENT_TYPE
            assert "keelson_container_up{" in res.read().decode()
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(base + "/env", timeout=10)
        assert err.value.code == 404
    finally:
        server.shutdown()
        server.server_close()
