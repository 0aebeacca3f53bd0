"""What the rollout integration tests and benchmark share: the lab's app hosts and
demo stack, playbook runs (extra vars in a 0600 file), and HTTPS load through lb1."""
import datetime
import http.client
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
INVENTORY = ROOT / "inventories" / "lab" / "hosts.yml"
GENERATED = ROOT / "inventories" / "lab" / "group_vars" / "all" / "lab_generated.yml"
sys.path.insert(0, str(ROOT / "tests"))
from loadgen import Load, summary_line  # noqa: E402

APP_HOSTS = ["app1", "app2"]
# what a deploy rolls on each app host, in order: the published replicas (the API's, then
# the frontend's), then the workers and the scheduler (placement: one) on the first
REPLICAS = ["api-1", "api-2", "web"]
PORTLESS = {"app1": ["worker-1", "worker-2", "scheduler"], "app2": ["worker-1", "worker-2"]}
UPSTREAMS = ("api", "web")
# the api's surge replica (start_first): nginx holds its server drained between rollouts
SURGE_PORTS = {8003}
PROJECT_DIR = "/opt/keelson/stacks/demo"
LOCK = "/opt/keelson/locks/lab.lock"
CA = ROOT / ".cache" / "pki" / "lab" / "ca.crt"
EDGE_NAME = "lb1.lab.keelson.test"
EDGE_ADDRESS = "172.30.77.11"
# Shorter than the defaults so the file runs in minutes; the logic is the same.
FAST = {
    "rollout_gate_interval": 0.5,
    "rollout_gate_stable_seconds": 4,
    "rollout_gate_timeout": 45,
    "rollout_monitor_seconds": 8,
    "rollout_monitor_interval": 0.5,
    "rollout_stop_grace_period": 15,
}


def registry():
    return yaml.safe_load(GENERATED.read_text())["keelson_registry"]


def on(host, *argv, check=True, timeout=120):
    # errors="replace": an access log holds whatever bytes clients sent in a request line
    res = subprocess.run(["docker", "exec", "keelson-lab-" + host, *argv], capture_output=True, text=True,
                         errors="replace", timeout=timeout)
    if check and res.returncode:
        raise AssertionError("%s: %s\n%s%s" % (host, " ".join(argv), res.stdout, res.stderr))
    return res.stdout


def versions():
    """{host: {replica or port-less service: DEMO_VERSION of the running container}}."""
    out = {}
    for host in APP_HOSTS:
        out[host] = {}
        for replica in REPLICAS + PORTLESS[host]:
            env = json.loads(on(host, "docker", "inspect", "-f", "{{json .Config.Env}}", "demo-%s-1" % replica))
            state = on(host, "docker", "inspect", "-f", "{{.State.Health.Status}}", "demo-%s-1" % replica).strip()
            version = [e.split("=", 1)[1] for e in env if e.startswith("DEMO_VERSION=")][0]
            out[host][replica] = version if state == "healthy" else "%s (%s)" % (version, state)
    return out


def demo_sql(sql):
    """Rows (lists of strings) of a query in the demo database on db1."""
    out = on("db1", "runuser", "-u", "postgres", "--", "psql", "-X", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1",
             "-d", "demo", "-c", sql)
    return [line.split("\t") for line in out.splitlines() if line]


def migration_runs(version):
    return int(demo_sql("SELECT count(*) FROM migration_runs WHERE version = '%s'" % version)[0][0])


def all_on(version):
    return {host: {replica: version for replica in REPLICAS + PORTLESS[host]} for host in APP_HOSTS}


def container_ids(host):
    """The ids of the project's service containers (not the jobs' one-off ones)."""
    return on(host, "docker", "ps", "-q", "--no-trunc", "--filter", "label=com.docker.compose.project=demo",
              "--filter", "label=com.docker.compose.oneoff=False").split()


def records(host):
    out = on(host, "sh", "-c", "cat %s/releases/*.json 2>/dev/null || true" % PROJECT_DIR)
    docs = [json.loads(d) for d in re.findall(r"^\{.*?^\}", out, re.M | re.S)] if out.strip() else []
    return sorted((d for d in docs if d.get("kind") == "rollout"), key=lambda d: d["started_at"])


def record_of(host, run_id):
    found = [r for r in records(host) if r["id"] == "%s-%s" % (run_id, host)]
    return found[0] if found else None


def upstream_file():
    return "".join(on("lb1", "cat", "/etc/nginx/keelson/upstreams/%s.conf" % name) for name in UPSTREAMS)


def run_id(output):
    found = re.findall(r"run (\d{8}T\d{6}Z-\w+)", output)
    assert found, output[-3000:]
    return found[0]


class Playbook:
    def __init__(self, name, extra, check=False, tags=None):
        fd, self.vars_file = tempfile.mkstemp(prefix="keelson-rollout-", suffix=".json")
        with os.fdopen(fd, "w") as handle:
            json.dump(dict(FAST, keelson_rollout_audit_log=str(AUDIT), **extra), handle)
        self.argv = ["ansible-playbook", "-i", str(INVENTORY), str(ROOT / "playbooks" / name),
                     "-e", "@" + self.vars_file] + (["--check"] if check else []) + (["--tags", tags] if tags else [])
        self.env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
                        ANSIBLE_FORCE_COLOR="0")

    def run(self, timeout=900):
        try:
            res = subprocess.run(self.argv, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout)
        finally:
            os.unlink(self.vars_file)
        res.output = res.stdout + res.stderr
        return res

    def start(self):
        # its own process group, so a test can kill -9 the controller and its workers
        return subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)


AUDIT = Path(tempfile.gettempdir()) / ("keelson-it-audit-%d.log" % os.getpid())


CONTROL_SOCKET = "/run/keelson-nginx/control.sock"


def runtime_state(upstream):
    """What nginx's balancer holds for `upstream` on lb1, from its control socket."""
    return json.loads(on("lb1", "curl", "-sS", "--unix-socket", CONTROL_SOCKET, "http://lb1/upstreams/" + upstream))


def edge(timeout=60):
    """A keep-alive HTTPS connection to the edge on lb1, by the site's name, the lab CA verified."""
    conn = http.client.HTTPSConnection(EDGE_NAME, 443, timeout=timeout,
                                       context=ssl.create_default_context(cafile=str(CA)))
    conn._create_connection = lambda _host_port, *args, **kwargs: socket.create_connection(
        (EDGE_ADDRESS, 443), *args, **kwargs)
    return conn


class ServingSampler:
    """Samples, on lb1, every `interval` seconds, which backends nginx's balancer has up in
    each upstream (one control-socket read per upstream, in one docker exec): the fewest
    up per upstream and app host, and when each backend went out and came back."""

    def __init__(self, interval=0.5):
        self.interval = interval
        self.samples = []  # (epoch, {upstream: {backend: state}})
        self._stop = threading.Event()
        self._crash = None
        self._thread = threading.Thread(target=self._run, name="serving-sampler", daemon=True)
        script = "; ".join("curl -sS --unix-socket %s http://lb1/upstreams/%s; echo" % (CONTROL_SOCKET, u)
                           for u in UPSTREAMS)
        self._argv = ["sh", "-c", script]

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join()
        if self._crash:
            raise RuntimeError("the serving sampler stopped") from self._crash
        return self

    def _run(self):
        try:
            while not self._stop.is_set():
                at = time.time()
                docs = [json.loads(line) for line in on("lb1", *self._argv).splitlines() if line.strip()]
                self.samples.append((at, dict((d["upstream"], dict((b, v["state"]) for b, v in d["backends"].items()))
                                              for d in docs)))
                self._stop.wait(max(0.0, self.interval - (time.time() - at)))
        except Exception as exc:  # noqa: BLE001 - reported by stop()
            self._crash = exc

    def min_serving(self):
        """{(upstream, app host): (fewest backends up in any sample, the host's replicas)}; a
        surge replica counts while it is up."""
        hosts = dict((private_address(h), h) for h in APP_HOSTS)
        out = {}
        for _at, states in self.samples:
            for upstream, backends in states.items():
                for host in sorted(set(hosts.values())):
                    mine = [(b, s) for b, s in backends.items() if hosts.get(b.rsplit(":", 1)[0]) == host]
                    if not mine:
                        continue
                    up = sum(1 for _b, s in mine if s == "up")
                    replicas = sum(1 for b, _s in mine if not is_surge(b))
                    fewest, _ = out.get((upstream, host), (up, replicas))
                    out[(upstream, host)] = (min(fewest, up), replicas)
        return out

    def out_spans(self):
        """[(upstream, backend, went out, came back)]: the sampled spans a replica's backend was
        not up (None for a span still open at the last sample)."""
        spans, since = [], {}
        for at, states in self.samples:
            for upstream, backends in states.items():
                for backend, state in [(b, s) for b, s in backends.items() if not is_surge(b)]:
                    key = (upstream, backend)
                    if state != "up" and key not in since:
                        since[key] = at
                    elif state == "up" and key in since:
                        spans.append((upstream, backend, since.pop(key), at))
        spans += [(u, b, t, None) for (u, b), t in since.items()]
        return sorted(spans, key=lambda s: s[2])


def nginx_processes():
    """nginx's master and workers on lb1 (PID, start time, title): every reload replaces
    all the workers, so an unchanged list means nginx did not reload."""
    return sorted(on("lb1", "ps", "-C", "nginx", "-o", "pid=,lstart=,args=").splitlines())


def start_load(workers=6, baseline=3, rate=10, resend=False):
    """Constant HTTPS load through nginx on lb1: GET, POST (writes to PostgreSQL), 10%
    slow requests and 10% to the frontend (which calls the API), `rate` requests/s per worker (the lab's nginx allows 100 r/s per
    client on /items, burst 200); `baseline` seconds of it before the mark "roll_start".
    By default a client that never resends: a request sent on a keep-alive connection
    nginx closed is an error. Notes nginx's processes, for finish_load."""
    assert CA.exists(), "the lab's internal CA is made by site.yml: %s" % CA
    generator = Load("https://%s" % EDGE_NAME, ca_file=str(CA), connect_to=EDGE_ADDRESS, workers=workers,
                     mix={"get": 60, "post": 20, "slow": 10, "web": 10}, slow_ms=400, rate=rate, resend=resend)
    generator.nginx_before = nginx_processes()
    generator.start()
    time.sleep(baseline)
    generator.mark("roll_start")
    return generator


def finish_load(load, reloads_allowed=False):
    """Stops the load; asserts 0 non-2xx, 0 socket errors and, unless reloads_allowed
    (a benchmark of the reload path), 0 resends and that nginx did not reload meanwhile."""
    end = load.mark("roll_end")
    time.sleep(2)
    load.stop()
    marks = load.marks
    stats = load.summary({"before": (marks["start"], marks["roll_start"]),
                          "during": (marks["roll_start"], end)})
    for name in ("before", "during"):
        print(summary_line(name, stats[name]))
    during = stats["during"]
    assert during["requests"] > 50, during
    assert during["non_2xx"] == 0 and during["socket_errors"] == 0, during
    if not reloads_allowed:
        assert during["stale_retries"] == 0 and during["stale_sends"] == 0, during
        assert nginx_processes() == load.nginx_before, "nginx reloaded during the rollout"
    return stats


def is_surge(backend):
    """Whether a backend (ADDRESS:PORT, or an upstream file's server line) is a surge replica's."""
    return any(re.search(r":%d\b" % port, backend) for port in SURGE_PORTS)


def down_backends():
    """The server lines nginx holds drained, but for the surge replicas' (drained at rest)."""
    return [line for line in upstream_file().splitlines() if " down" in line and not is_surge(line)]


def no_backend_down():
    assert down_backends() == [], upstream_file()
    for upstream in UPSTREAMS:
        surges = [b for b, v in runtime_state(upstream)["backends"].items() if is_surge(b) and v["state"] != "down"]
        assert surges == [], "surge replicas left in nginx: %s" % surges




def epoch(iso):
    """Seconds since the epoch of an ISO 8601 time (records say ...Z, nginx +00:00)."""
    return datetime.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def private_address(host):
    return yaml.safe_load(INVENTORY.read_text())["all"]["children"]["app"]["hosts"][host]["keelson_private_address"]


def requests_while_replaced(run, since):
    """nginx access-log entries on lb1 (JSON, time_iso8601 to the second) of requests that
    certainly started while a replica of this run was out of nginx (from its replacement's
    start to its gate passing, per the release record) and were still sent to it."""
    windows = []
    for host in APP_HOSTS:
        record = record_of(host, run) or {"replicas": []}
        address = private_address(host)
        for step in record["replicas"]:
            if not step.get("port"):
                continue  # a worker: no backend
            end = epoch(step["at"])
            windows.append(("%s:%d" % (address, step["port"]), end - step["seconds"], end))
    bad = []
    for line in on("lb1", "cat", "/var/log/nginx/access.log").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        logged = epoch(entry["time"])
        if logged < since:
            continue
        earliest, latest = logged - entry["request_time"], logged + 1 - entry["request_time"]
        for backend, start, end in windows:
            if backend in entry["upstream_addr"] and earliest > start + 1 and latest < end - 1:
                bad.append((backend, entry["time"], entry["request"], entry["upstream_addr"]))
    return bad
