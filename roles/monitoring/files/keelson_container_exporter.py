# -*- coding: utf-8 -*-
# Copyright: keelson.stack contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""keelson-container-exporter: Prometheus metrics of the containers of Compose projects on
this host (the ``containers`` exporter of keelson.stack.monitoring, port 9417).

    python3 keelson_container_exporter.py --listen ADDRESS:PORT [--docker-socket PATH] [--timeout SECONDS]

Why this and not cAdvisor: cAdvisor is not packaged in Debian (the collection installs
Debian's packages only), and the alert rules need five numbers per container that the
Docker API already has. Each scrape asks the engine, so nothing is cached and a restart
of the exporter loses nothing: the counters (CPU seconds, restarts) are the engine's own.

Why the Docker API over its Unix socket with the standard library and not Debian's
python3-docker: the SDK on Debian 12 (5.0) cannot ask for one-shot stats, without which the
engine samples each container twice, a second apart; plain GETs on unversioned paths (the
engine's own API version) need no SDK. Engines from 25.0 (moby#46448) answer a one-shot stats
call at once: a scrape of eight containers takes about 30 ms on Debian 13's 26.1. Older
ones, such as Debian 12's docker.io 20.10, answer at their stats collector's next one-second
tick; the calls run in parallel, so a scrape takes up to a second there.

One scrape: the list of containers labelled ``com.docker.compose.project`` (stopped ones
included; one-off containers of ``docker compose run``, the stack's jobs, are left out), then
per container, in parallel, its inspect and, if it runs, its one-shot stats. A container
removed in between is skipped. If the engine cannot be reached the exporter keeps serving:
``keelson_container_docker_up`` is 0, ``keelson_container_scrape_errors_total`` grows and
the container series are absent until the engine answers again.

Labels of every container series: ``project``, ``service`` (the stack's service,
``keelson.stack.service``, else the Compose service), ``replica`` (the Compose service:
``api-1`` for replica 1 of a split service, the service's own name otherwise, as in the
collection's release records) and ``container`` (its name). Nothing else of a container is
read into a metric: not its environment, command or other labels, where secrets live.
"""

import argparse
import http.client
import json
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlencode

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
ONEOFF_LABEL = "com.docker.compose.oneoff"
STACK_SERVICE_LABEL = "keelson.stack.service"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# name: (type, help)
FAMILIES = {
    "keelson_container_up": (
        "gauge", "1 if the container is running, 0 if it exists but is created, restarting, paused, exited or dead."),
    "keelson_container_healthy": (
        "gauge", "1 if the running container's healthcheck passes, 0 while it starts or fails (with a healthcheck)."),
    "keelson_container_restarts_total": (
        "counter", "Restarts by the container's restart policy (Docker's RestartCount; a new container starts at 0)."),
    "keelson_container_cpu_seconds_total": (
        "counter", "CPU time the running container has used, in seconds."),
    "keelson_container_memory_bytes": (
        "gauge", "Memory the running container uses, less inactive page cache (as docker stats shows)."),
    "keelson_container_memory_limit_bytes": (
        "gauge", "Memory the running container may use: its limit, or the host's memory without one."),
    "keelson_container_docker_up": (
        "gauge", "1 if this scrape read the Docker engine's containers, 0 if not (then no container series)."),
    "keelson_container_scrape_errors_total": (
        "counter", "Failed calls to the Docker engine since the exporter started."),
    "keelson_container_scrape_duration_seconds": (
        "gauge", "How long this scrape took."),
}


# ---- pure functions: engine JSON in, metric text out ------------------------------------------

def container_labels(inspect):
    """The labels of a container's series, from its inspect document."""
    labels = (inspect.get("Config") or {}).get("Labels") or {}
    compose_service = labels.get(SERVICE_LABEL, "")
    return {
        "project": labels.get(PROJECT_LABEL, ""),
        "service": labels.get(STACK_SERVICE_LABEL) or compose_service,
        "replica": compose_service,
        "container": (inspect.get("Name") or "").lstrip("/"),
    }


def memory_usage(memory_stats):
    """Usage less inactive page cache, as the docker CLI computes it (cgroup v1, then v2)."""
    usage = memory_stats.get("usage")
    if usage is None:
        return None
    stats = memory_stats.get("stats") or {}
    inactive = stats.get("total_inactive_file")
    if inactive is not None and inactive < usage:
        return usage - inactive
    inactive = stats.get("inactive_file", 0)
    return usage - inactive if inactive < usage else usage


def container_samples(inspect, stats):
    """[(metric, labels, value)] of one container; ``stats`` is its one-shot stats or None."""
    labels = container_labels(inspect)
    state = inspect.get("State") or {}
    running = state.get("Status") == "running"
    samples = [
        ("keelson_container_up", labels, 1 if running else 0),
        ("keelson_container_restarts_total", labels, int(inspect.get("RestartCount") or 0)),
    ]
    health = (state.get("Health") or {}).get("Status")
    if running and health:
        samples.append(("keelson_container_healthy", labels, 1 if health == "healthy" else 0))
    if running and stats and not str(stats.get("read", "")).startswith("0001-"):
        total = ((stats.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage")
        if total is not None:
            samples.append(("keelson_container_cpu_seconds_total", labels, total / 1e9))
        memory = stats.get("memory_stats") or {}
        usage = memory_usage(memory)
        if usage is not None:
            samples.append(("keelson_container_memory_bytes", labels, usage))
        if memory.get("limit"):
            samples.append(("keelson_container_memory_limit_bytes", labels, memory["limit"]))
    return samples


def escape(value):
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def format_value(value):
    if isinstance(value, float) and value != int(value):
        return repr(value)
    return str(int(value))


def metrics_text(containers, docker_up, errors_total, duration):
    """The exposition text. ``containers``: [(inspect, stats or None)]."""
    by_family = dict((name, []) for name in FAMILIES)
    for inspect, stats in containers:
        for name, labels, value in container_samples(inspect, stats):
            by_family[name].append((labels, value))
    by_family["keelson_container_docker_up"].append(({}, 1 if docker_up else 0))
    by_family["keelson_container_scrape_errors_total"].append(({}, errors_total))
    by_family["keelson_container_scrape_duration_seconds"].append(({}, round(duration, 6)))
    lines = []
    for name, (kind, text) in FAMILIES.items():
        if not by_family[name]:
            continue
        lines.append("# HELP %s %s" % (name, text))
        lines.append("# TYPE %s %s" % (name, kind))
        for labels, value in sorted(by_family[name], key=lambda s: sorted(s[0].items())):
            pairs = ",".join('%s="%s"' % (k, escape(v)) for k, v in sorted(labels.items()))
            lines.append("%s%s %s" % (name, "{%s}" % pairs if pairs else "", format_value(value)))
    return "\n".join(lines) + "\n"


def is_oneoff(summary):
    return ((summary.get("Labels") or {}).get(ONEOFF_LABEL) or "").lower() == "true"


def parse_listen(value):
    """``ADDRESS:PORT`` or ``[IPV6]:PORT`` to (family, address, port)."""
    address, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not address:
        raise ValueError("--listen wants ADDRESS:PORT, not %r" % value)
    if address.startswith("[") and address.endswith("]"):
        return socket.AF_INET6, address[1:-1], int(port)
    return socket.AF_INET, address, int(port)


# ---- the engine, over its Unix socket ---------------------------------------------------------

class DockerError(Exception):
    pass


class NotFound(DockerError):
    pass


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("docker", timeout=timeout)
        self.socket_path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class Docker:
    def __init__(self, socket_path, timeout):
        self.socket_path = socket_path
        self.timeout = timeout

    def get(self, path, **params):
        conn = UnixHTTPConnection(self.socket_path, self.timeout)
        try:
            conn.request("GET", path + ("?" + urlencode(params) if params else ""))
            res = conn.getresponse()
            body = res.read()
        except (OSError, http.client.HTTPException) as exc:
            raise DockerError("GET %s: %s" % (path, exc))
        finally:
            conn.close()
        if res.status == 404:
            raise NotFound(path)
        if res.status != 200:
            raise DockerError("GET %s: HTTP %d %s" % (path, res.status, body[:200].decode("utf-8", "replace")))
        try:
            return json.loads(body.decode("utf-8"))
        except ValueError as exc:
            raise DockerError("GET %s: %s" % (path, exc))


class Exporter:
    def __init__(self, docker, workers=16, clock=time.monotonic, log=None):
        self.docker = docker
        self.clock = clock
        self.log = log or (lambda message: print(message, file=sys.stderr, flush=True))
        self.pool = ThreadPoolExecutor(max_workers=workers)
        self.lock = threading.Lock()
        self.errors_total = 0
        self.last_error = None

    def _count_error(self):
        with self.lock:
            self.errors_total += 1

    def _container(self, container_id):
        """(inspect, stats) of one container, or None when it is gone."""
        try:
            inspect = self.docker.get("/containers/%s/json" % container_id)
        except NotFound:
            return None
        stats = None
        if (inspect.get("State") or {}).get("Status") == "running":
            try:
                stats = self.docker.get("/containers/%s/stats" % container_id, stream="false", **{"one-shot": "true"})
            except NotFound:
                return None
            except DockerError:
                self._count_error()
        return inspect, stats

    def scrape(self):
        started = self.clock()
        containers, docker_up = [], True
        try:
            summaries = self.docker.get("/containers/json", all="true",
                                        filters=json.dumps({"label": [PROJECT_LABEL]}))
            ids = [s["Id"] for s in summaries if not is_oneoff(s)]
            for result in self.pool.map(self._container, ids):
                if result is not None:
                    containers.append(result)
        except (DockerError, KeyError, TypeError, ValueError, AttributeError) as exc:
            docker_up = False
            containers = []
            self._count_error()
            if self.last_error is None:
                self.log("the Docker engine cannot be reached: %s" % exc)
            self.last_error = exc
        if docker_up and self.last_error is not None:
            self.log("the Docker engine answers again")
            self.last_error = None
        with self.lock:
            errors_total = self.errors_total
        return metrics_text(containers, docker_up, errors_total, self.clock() - started)


def handler_for(exporter):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the name http.server calls)
            if self.path.split("?")[0] == "/metrics":
                body, status, kind = exporter.scrape().encode("utf-8"), 200, CONTENT_TYPE
            elif self.path == "/":
                body, status, kind = b"keelson-container-exporter: see /metrics\n", 200, "text/plain"
            else:
                body, status, kind = b"not found\n", 404, "text/plain"
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            """Every scrape would be a journal line."""
    return Handler


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--listen", required=True, help="ADDRESS:PORT, [IPV6]:PORT for IPv6")
    parser.add_argument("--docker-socket", default="/run/docker.sock")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds per call to the engine")
    args = parser.parse_args(argv)
    try:
        family, address, port = parse_listen(args.listen)
    except ValueError as exc:
        parser.error(str(exc))

    class Server(ThreadingHTTPServer):
        address_family = family
        daemon_threads = True
        request_queue_size = 64

    exporter = Exporter(Docker(args.docker_socket, args.timeout))
    server = Server((address, port), handler_for(exporter))
    print("listening on %s, reading %s" % (args.listen, args.docker_socket), file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
