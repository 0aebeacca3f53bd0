# -*- coding: utf-8 -*-
# Copyright: keelson.stack contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Health probes and the gate that waits for them.

A probe is a plain dict (the module's ``probes`` option). ``run_probe`` runs it once
and returns an ``Outcome``. ``wait_for_probes`` runs probes until each one has
passed ``consecutive`` times in a row or the deadline passes; its clock, sleep and
probe runner are parameters so the gate logic is testable without wall-clock time.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re
import socket
import ssl
import time

try:
    import http.client as http_client
    from urllib.request import Request, build_opener, HTTPHandler, HTTPSHandler, HTTPErrorProcessor
    from urllib.error import URLError
except ImportError:  # pragma: no cover - Python 2 is not supported, keeps sanity's py2 import test quiet
    http_client = Request = build_opener = HTTPHandler = HTTPSHandler = HTTPErrorProcessor = URLError = None

# How much of a failing response's body a reason quotes.
BODY_EXCERPT = 200


class Outcome:
    """One probe attempt; ``reason`` leaves out the target, which the probe's name carries. ``fatal`` means waiting longer cannot help (container exited
    or Docker already declared it unhealthy), so the gate fails at once."""

    __slots__ = ("ok", "reason", "fatal")

    def __init__(self, ok, reason="", fatal=False):
        self.ok = ok
        self.reason = reason
        self.fatal = fatal

    def __repr__(self):
        return "Outcome(ok=%r, reason=%r, fatal=%r)" % (self.ok, self.reason, self.fatal)


def probe_name(probe):
    if probe.get("name"):
        return probe["name"]
    kind = probe["type"]
    if kind == "http":
        return "http %s" % probe["url"]
    if kind == "tcp":
        return "tcp %s:%s" % (probe["host"], probe["port"])
    return "docker %s" % probe["container"]


class _NoRaise(HTTPErrorProcessor or object):
    """Returns 4xx/5xx responses instead of raising, so status checks see them."""

    def http_response(self, request, response):
        return response

    https_response = http_response


def _connecting_to(base, address):
    """``base`` (an http.client connection class) that opens its TCP connection to
    ``address`` instead of the URL's host, like curl's --resolve: the Host header,
    TLS SNI and certificate name check still use the URL's host name."""

    class Connection(base):
        def __init__(self, host, **kwargs):
            base.__init__(self, host, **kwargs)
            self._create_connection = lambda addr, *args, **kw: socket.create_connection(
                (address, addr[1]), *args, **kw)

    return Connection


class _ConnectToHTTP(HTTPHandler or object):
    def __init__(self, address):
        super(_ConnectToHTTP, self).__init__()
        self._address = address

    def http_open(self, req):
        return self.do_open(_connecting_to(http_client.HTTPConnection, self._address), req)


class _ConnectToHTTPS(HTTPSHandler or object):
    def __init__(self, address, context):
        super(_ConnectToHTTPS, self).__init__(context=context)
        self._address = address

    def https_open(self, req):
        return self.do_open(_connecting_to(http_client.HTTPSConnection, self._address), req, context=self._context)


def _excerpt(body):
    text = body[:BODY_EXCERPT].replace("\n", " ").strip()
    return (": " + text + ("..." if len(body) > BODY_EXCERPT else "")) if text else ": (empty body)"


def http_probe(probe):
    """One request. ``connect_address`` sends it to that address while naming the
    URL's host (SNI, Host, certificate check). A failure reason quotes the first
    bytes of the body, which is usually the application's own explanation."""
    url = probe["url"]
    timeout = float(probe.get("timeout", 2))
    expected = [int(s) for s in (probe.get("status") or [200])]
    headers = {"User-Agent": "keelson-health-gate", "Connection": "close"}
    headers.update(probe.get("headers") or {})
    if probe.get("host_header"):
        headers["Host"] = probe["host_header"]
    data = probe.get("body")
    data = data.encode("utf-8") if data is not None else None
    address = probe.get("connect_address")
    handlers = [_NoRaise()]
    context = None
    if url.lower().startswith("https:"):
        if probe.get("insecure"):
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        else:
            context = ssl.create_default_context(cafile=probe.get("ca_file"))
        handlers.append(_ConnectToHTTPS(address, context) if address else HTTPSHandler(context=context))
    elif address:
        handlers.append(_ConnectToHTTP(address))
    opener = build_opener(*handlers)
    try:
        request = Request(url, data=data, headers=headers, method=probe.get("method", "GET"))
        with opener.open(request, timeout=timeout) as resp:
            status = resp.status
            body = resp.read(int(probe.get("max_body", 65536))).decode("utf-8", "replace")
    except (URLError, OSError, ssl.SSLError, ValueError, http_client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        return Outcome(False, str(reason))
    if status not in expected:
        wanted = "/".join(str(s) for s in expected)
        return Outcome(False, "status %d, expected %s%s" % (status, wanted, _excerpt(body)))
    pattern = probe.get("body_regex")
    if pattern and not re.search(pattern, body):
        return Outcome(False, "status %d, body does not match %r%s" % (status, pattern, _excerpt(body)))
    needle = probe.get("body_contains")
    if needle and needle not in body:
        return Outcome(False, "status %d, body does not contain %r%s" % (status, needle, _excerpt(body)))
    return Outcome(True)


def tcp_probe(probe):
    host, port = probe["host"], int(probe["port"])
    try:
        with socket.create_connection((host, port), timeout=float(probe.get("timeout", 2))):
            return Outcome(True)
    except OSError as exc:
        return Outcome(False, str(exc))


def docker_probe(probe, client=None):
    """Docker's own view of the container: running, and healthy when it has a healthcheck.
    ``unhealthy``, a stopped container and one its restart policy is restarting are fatal:
    Docker already retried, or the process died. With ``max_restarts`` (the rollout gate
    sets 0 for a container it has just created), more restarts than that are fatal too."""
    import docker  # the Docker SDK; imported here so HTTP/TCP probes work without it
    from docker.errors import DockerException, NotFound

    name = probe["container"]
    try:
        client = client or docker.from_env(timeout=int(probe.get("timeout", 5)))
        container = client.containers.get(name)
    except NotFound:
        return Outcome(False, "container not found")
    except DockerException as exc:
        return Outcome(False, str(exc))
    state = container.attrs.get("State", {})
    if state.get("Status") != "running":
        return Outcome(False, "container %s (exit code %s)" % (state.get("Status"), state.get("ExitCode")),
                       fatal=state.get("Status") in ("exited", "dead", "restarting"))
    restarts = container.attrs.get("RestartCount") or 0
    if probe.get("max_restarts") is not None and restarts > probe["max_restarts"]:
        return Outcome(False, "container restarted %d time(s) since it was created: its process exited" % restarts,
                       fatal=True)
    health = state.get("Health")
    if health is None:
        if probe.get("require_healthcheck", True):
            return Outcome(False, "container has no healthcheck", fatal=True)
        return Outcome(True)
    if health.get("Status") == "healthy":
        return Outcome(True)
    log = health.get("Log") or []
    last = (log[-1].get("Output") or "").strip()[-300:] if log else ""
    return Outcome(False, "health %s%s" % (health.get("Status"), (": " + last) if last else ""),
                   fatal=health.get("Status") == "unhealthy")


def docker_health_probe(container, max_restarts=None):
    """The docker probe of ``container``: running, and healthy where it has a healthcheck
    (one without, or with it disabled, passes once it runs); with ``max_restarts``, more
    restarts than that fail it."""
    probe = {"type": "docker", "name": "docker health of %s" % container, "container": container,
             "require_healthcheck": False, "timeout": 5}
    if max_restarts is not None:
        probe["max_restarts"] = max_restarts
    return probe


def run_probe(probe):
    kind = probe["type"]
    if kind == "http":
        return http_probe(probe)
    if kind == "tcp":
        return tcp_probe(probe)
    if kind == "docker":
        return docker_probe(probe)
    raise ValueError("unknown probe type %r" % kind)


class GateFailed(Exception):
    def __init__(self, reason, result):
        super(GateFailed, self).__init__(reason)
        self.reason = reason
        self.result = result


def wait_for_probes(probes, consecutive=3, interval=1.0, timeout=60.0, stable_seconds=0.0,
                    runner=run_probe, clock=time.monotonic, sleep=time.sleep):
    """Runs every probe each round until each has passed ``consecutive`` times in a
    row, over a streak lasting at least ``stable_seconds`` (so a process that dies a few
    seconds after start is caught); a probe that has passed is not run again. Returns the
    result dict; raises GateFailed (carrying the same dict) at the deadline or on a fatal
    outcome.

    The result: ``passed``, ``total_seconds``, ``reason`` and per probe ``name``,
    ``attempts``, ``successes``, ``first_success_seconds``, ``passed_seconds``,
    ``last_failure``.
    """
    if consecutive < 1:
        raise ValueError("consecutive must be at least 1")
    if stable_seconds >= timeout:
        raise ValueError("stable_seconds must be shorter than the timeout")
    start = clock()
    deadline = start + timeout
    states = [{"name": probe_name(p), "attempts": 0, "successes": 0, "streak": 0, "streak_start": None,
               "first_success_seconds": None, "passed_seconds": None, "last_failure": None}
              for p in probes]

    def result(passed, reason):
        return {
            "passed": passed,
            "reason": reason,
            "total_seconds": round(clock() - start, 3),
            "probes": [dict((k, v) for k, v in s.items() if not k.startswith("streak")) for s in states],
        }

    while True:
        for probe, state in zip(probes, states):
            if state["passed_seconds"] is not None:
                continue
            outcome = runner(probe)
            now = clock() - start
            state["attempts"] += 1
            if outcome.ok:
                state["successes"] += 1
                state["streak"] += 1
                if state["streak"] == 1:
                    state["streak_start"] = now
                if state["first_success_seconds"] is None:
                    state["first_success_seconds"] = round(now, 3)
                if state["streak"] >= consecutive and now - state["streak_start"] >= stable_seconds:
                    state["passed_seconds"] = round(now, 3)
            else:
                state["streak"] = 0
                state["last_failure"] = outcome.reason
                if outcome.fatal:
                    reason = "%s: %s" % (state["name"], outcome.reason)
                    raise GateFailed(reason, result(False, reason))
        if all(s["passed_seconds"] is not None for s in states):
            return result(True, "")
        if clock() + interval > deadline:
            pending = [s for s in states if s["passed_seconds"] is None]
            reason = "; ".join(
                "%s: %s" % (s["name"], s["last_failure"] or "passed %d of %d in a row" % (s["streak"], consecutive))
                for s in pending)
            reason = "deadline of %gs passed: %s" % (timeout, reason)
            raise GateFailed(reason, result(False, reason))
        sleep(interval)


def watch_probes(probes, duration, interval=1.0, failure_threshold=2,
                 runner=run_probe, clock=time.monotonic, sleep=time.sleep):
    """Keeps running every probe each round for ``duration`` seconds (a monitoring
    window after a gate has passed). Raises GateFailed as soon as a probe fails
    ``failure_threshold`` times in a row, or at once on a fatal outcome; otherwise
    returns the result: ``passed``, ``reason``, ``total_seconds``, ``rounds`` and per
    probe ``name``, ``attempts``, ``failures``, ``last_failure``."""
    if failure_threshold < 1:
        raise ValueError("failure_threshold must be at least 1")
    start = clock()
    states = [{"name": probe_name(p), "attempts": 0, "failures": 0, "run": 0, "last_failure": None}
              for p in probes]
    rounds = 0

    def result(passed, reason):
        return {"passed": passed, "reason": reason, "total_seconds": round(clock() - start, 3), "rounds": rounds,
                "probes": [dict((k, v) for k, v in s.items() if k != "run") for s in states]}

    while True:
        rounds += 1
        for probe, state in zip(probes, states):
            outcome = runner(probe)
            state["attempts"] += 1
            if outcome.ok:
                state["run"] = 0
                continue
            state["failures"] += 1
            state["run"] += 1
            state["last_failure"] = outcome.reason
            if outcome.fatal or state["run"] >= failure_threshold:
                reason = "%s failed %d time(s) in a row %.1fs into the monitoring window: %s" % (
                    state["name"], state["run"], clock() - start, outcome.reason)
                raise GateFailed(reason, result(False, reason))
        if clock() - start + interval > duration:
            return result(True, "")
        sleep(interval)
