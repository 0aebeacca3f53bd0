"""A small HTTPS load generator for checking "zero errors under load".

Worker threads hold one keep-alive connection each and send a mix of item
reads, item creations and slow requests to the demo API (usually through
nginx) while a rolling deploy runs. Every request becomes a Sample; summary()
splits them into named time windows and counts non-2xx answers and socket
errors separately. Standard library only, so the lab and CI need nothing extra.

Servers such as nginx close idle keep-alive connections (on a reload, say), and
clients like curl and browsers retry a request that hit one; so does this one by
default: a request that fails on a reused connection before any byte of the
answer arrived is sent once more on a fresh connection and counted as a stale
keep-alive retry, and as a socket error only if that second attempt fails too.
With resend=False (--no-resend) it behaves like Python requests' defaults, Node's
agent or any careful client sending a POST: such a request is never sent again
and counts as a socket error (and as a stale send).
"""
import argparse
import collections
import functools
import http.client
import itertools
import json
import math
import random
import socket
import ssl
import sys
import threading
import time
from dataclasses import dataclass
from typing import Optional
from urllib.parse import urlsplit

DEFAULT_MIX = {"get": 70, "post": 20, "slow": 10}
# get, post and slow go to the API; web to the lab's frontend, which calls the API
KINDS = ("get", "post", "slow", "web")

# Pause after a failed request before reconnecting, so a worker facing a
# refused port records a handful of errors rather than spinning on the CPU.
ERROR_PAUSE = 0.05

# What a keep-alive connection the server has already closed looks like when
# the next request is sent on it (RemoteDisconnected is a ConnectionResetError).
# Over TLS, writing to it can also raise SSLEOFError (seen when a POST body
# follows its headers), and SSLZeroReturnError once the server sent close_notify.
STALE_ERRORS = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError,
                ssl.SSLEOFError, ssl.SSLZeroReturnError)


@dataclass(frozen=True)
class Sample:
    """One request. `kind` is get, post, slow, web, or version (a get sent before
    this Load created any item). `error` is set when the request raised, in
    which case `status` may still hold a status read before the failure.
    `stale_retry` is set when the request was first sent on a reused
    connection the server had closed, then sent again on a fresh one: status,
    error and upstream are the second attempt's, latency covers both."""
    kind: str
    path: str
    start: float
    end: float
    status: Optional[int]
    error: Optional[str]
    latency: float
    upstream: Optional[str]
    reused: bool  # (first) sent on a connection that had already served a request
    worker: int
    stale_retry: bool = False
    stale_send: bool = False  # (first) sent on a keep-alive connection the server had closed

    @property
    def ok(self):
        return self.error is None and self.status is not None and 200 <= self.status < 300


def percentile(values, p):
    """Nearest-rank percentile of `values` (any order); None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def summarize(samples, windows):
    """Statistics per window; windows maps name -> (t0, t1) and a sample
    belongs to a window when t0 <= sample.start < t1. None is an open bound."""
    out = {}
    for name, (t0, t1) in windows.items():
        lo = -math.inf if t0 is None else t0
        hi = math.inf if t1 is None else t1
        inside = [s for s in samples if lo <= s.start < hi]
        failed = [s for s in inside if s.error is not None]
        non_2xx = [s for s in inside if s.error is None and not s.ok]
        latencies = [s.latency * 1000 for s in inside]
        out[name] = {
            "requests": len(inside),
            "non_2xx": len(non_2xx),
            "socket_errors": len(failed),
            "stale_retries": sum(s.stale_retry for s in inside),
            "stale_sends": sum(s.stale_send for s in inside),
            "p50_ms": percentile(latencies, 50),
            "p99_ms": percentile(latencies, 99),
            "max_ms": max(latencies) if latencies else None,
            "statuses": dict(collections.Counter(s.status for s in non_2xx)),
            "errors": dict(collections.Counter(s.error.split(":")[0] for s in failed)),
            "upstreams": dict(collections.Counter(s.upstream for s in inside if s.upstream)),
        }
    return out


def summary_line(name, stats):
    """One line for logs, e.g. `during: 1234 requests, 0 non-2xx, ...`."""
    def ms(value):
        return "n/a" if value is None else "%.1f ms" % value

    line = "%s: %d requests, %d non-2xx, %d socket errors, p50 %s, p99 %s, max %s" % (
        name, stats["requests"], stats["non_2xx"], stats["socket_errors"],
        ms(stats["p50_ms"]), ms(stats["p99_ms"]), ms(stats["max_ms"]))
    if stats.get("stale_retries"):
        line += ", %d stale keep-alive retries" % stats["stale_retries"]
    if stats.get("stale_sends", 0) > stats.get("stale_retries", 0):
        line += ", %d sent on a closed keep-alive connection (not resent)" % (
            stats["stale_sends"] - stats.get("stale_retries", 0))
    details = ["%s x%d" % item for item in sorted(stats.get("statuses", {}).items())]
    details += ["%s x%d" % item for item in sorted(stats.get("errors", {}).items())]
    if details:
        line += " (" + ", ".join(details) + ")"
    return line


class _Progress:
    """Per connection: whether any byte of the current answer has arrived."""
    answered = False


class _Response(http.client.HTTPResponse):
    """Peeks before parsing, so that a failure can be told apart from a
    connection that gave no answer at all (which alone may be retried)."""

    def __init__(self, sock, *args, progress, **kwargs):
        super().__init__(sock, *args, **kwargs)
        self._progress = progress

    def begin(self):
        if self.headers is None and self.fp.peek(1):
            self._progress.answered = True
        super().begin()


def _connect_to(address, host_port, *args, **kwargs):
    return socket.create_connection((address, host_port[1]), *args, **kwargs)


class Load:
    """Background load against base_url; start(), mark(), stop(), summary()."""

    def __init__(self, base_url, ca_file=None, host_header=None, workers=8, mix=None,
                 slow_ms=300, timeout=15, rate=None, connect_to=None, resend=True):
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError("base_url must be http(s)://host[:port][/prefix]: %r" % base_url)
        mix = dict(DEFAULT_MIX if mix is None else mix)
        unknown = set(mix) - set(KINDS)
        if unknown or not any(weight > 0 for weight in mix.values()):
            raise ValueError("mix needs positive weights for %s: %r" % ("/".join(KINDS), mix))
        self.base_url = base_url
        self.host_header = host_header
        self.workers = workers
        self.mix = mix
        self.slow_ms = slow_ms
        self.timeout = timeout
        self.rate = rate
        self.resend = resend
        # like curl --connect-to: TCP to this address, TLS and Host still the URL's name
        self.connect_to = connect_to
        self.marks = {}
        self._scheme, self._host, self._port = url.scheme, url.hostname, url.port
        self._prefix = url.path.rstrip("/")
        # check_hostname stays on: the certificate must match the URL host,
        # whatever Host header is sent.
        self._ssl = ssl.create_default_context(cafile=ca_file) if url.scheme == "https" else None
        self._kinds = list(mix)
        self._weights = [mix[kind] for kind in self._kinds]
        self._lock = threading.Lock()
        self._samples = []
        self._ids = []
        self._names = itertools.count(1)
        self._stop = threading.Event()
        self._threads = []
        self._crashes = []

    def start(self):
        if self._threads:
            raise RuntimeError("Load already started")
        self._stop.clear()
        self.mark("start")
        for index in range(self.workers):
            thread = threading.Thread(target=self._worker, args=(index,),
                                      name="loadgen-%d" % index, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self):
        """Stops the workers after their in-flight request and joins them."""
        self._stop.set()
        for thread in self._threads:
            thread.join()
        self._threads = []
        self.mark("stop")
        if self._crashes:
            raise RuntimeError("a load worker crashed") from self._crashes[0]

    def mark(self, name):
        self.marks[name] = time.time()
        return self.marks[name]

    def results(self):
        with self._lock:
            return list(self._samples)

    def created_ids(self):
        with self._lock:
            return list(self._ids)

    def summary(self, windows=None):
        """See summarize(); the default window covers every sample."""
        return summarize(self.results(), windows or {"all": (None, None)})

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _connect(self):
        if self._scheme == "https":
            conn = http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout,
                                               context=self._ssl)
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
        if self.connect_to:
            conn._create_connection = functools.partial(_connect_to, self.connect_to)
        conn.progress = _Progress()
        conn.response_class = functools.partial(_Response, progress=conn.progress)
        return conn

    def _worker(self, index):
        rng = random.Random()
        conn = None
        next_at = time.monotonic()
        try:
            while not self._stop.is_set():
                if self.rate:
                    now = time.monotonic()
                    if next_at > now and self._stop.wait(next_at - now):
                        break
                    next_at = max(next_at, now) + 1 / self.rate
                if conn is None:
                    conn = self._connect()
                sample = self._request(conn, rng, index)
                with self._lock:
                    self._samples.append(sample)
                if sample.error is not None:
                    conn.close()
                    conn = None
                    self._stop.wait(ERROR_PAUSE)
        except BaseException as exc:  # a bug here, not a failed request
            self._crashes.append(exc)
        finally:
            if conn is not None:
                conn.close()

    def _pick_id(self, rng):
        with self._lock:
            return rng.choice(self._ids) if self._ids else None

    def _request(self, conn, rng, worker):
        kind = rng.choices(self._kinds, self._weights)[0]
        body = None
        if kind == "get":
            item = self._pick_id(rng)
            if item is None:
                kind, path = "version", "/version"
            else:
                path = "/items/%s" % item
        elif kind == "post":
            path = "/items"
            body = json.dumps({"name": "load-%d" % next(self._names)}).encode()
        elif kind == "web":
            path = "/web/"
        else:
            path = "/slow?ms=%d" % self.slow_ms

        headers = {"Content-Type": "application/json"} if body is not None else {}
        if self.host_header:
            headers["Host"] = self.host_header
        # http.client drops its socket when the server asked to close, and
        # reopens on the next request; sock tells whether this one is reused.
        reused = conn.sock is not None
        stale_retry = stale_send = False
        status = error = upstream = None
        data = b""
        start = time.time()
        began = time.perf_counter()
        try:
            try:
                response = self._send(conn, path, body, headers)
            except STALE_ERRORS:
                if not reused or conn.progress.answered:
                    raise
                stale_send = True
                if not self.resend:
                    raise
                # The server closed the idle connection and never saw the
                # request: send it again, once, on a fresh connection.
                conn.close()
                stale_retry = True
                response = self._send(conn, path, body, headers)
            status = response.status
            upstream = response.getheader("X-Upstream")
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            error = "%s: %s" % (type(exc).__name__, exc)
        latency = time.perf_counter() - began

        sample = Sample(kind=kind, path=path, start=start, end=start + latency, status=status,
                        error=error, latency=latency, upstream=upstream, reused=reused,
                        worker=worker, stale_retry=stale_retry, stale_send=stale_send)
        if kind == "post" and sample.ok:
            self._remember_id(data)
        return sample

    def _send(self, conn, path, body, headers):
        conn.progress.answered = False
        conn.request("POST" if body is not None else "GET", self._prefix + path,
                     body=body, headers=headers)
        return conn.getresponse()

    def _remember_id(self, data):
        try:
            doc = json.loads(data)
        except ValueError:
            return
        if isinstance(doc, dict) and doc.get("id") is not None:
            with self._lock:
                self._ids.append(doc["id"])


def _parse_mix(text):
    mix = {}
    for part in text.split(","):
        kind, _, weight = part.partition("=")
        mix[kind.strip()] = float(weight)
    return mix


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="e.g. https://127.0.0.1:8443")
    parser.add_argument("--ca", help="CA bundle to verify the server certificate")
    parser.add_argument("--host", help="Host header to send instead of the URL host")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--rate", type=float, help="requests/second per worker")
    parser.add_argument("--slow-ms", type=int, default=300)
    parser.add_argument("--timeout", type=float, default=15)
    parser.add_argument("--mix", type=_parse_mix, help="e.g. get=70,post=20,slow=10")
    parser.add_argument("--no-resend", action="store_true",
                        help="never resend a request sent on a keep-alive connection the server closed: an error")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)

    load = Load(args.url, ca_file=args.ca, host_header=args.host, workers=args.workers,
                mix=args.mix, slow_ms=args.slow_ms, timeout=args.timeout, rate=args.rate,
                resend=not args.no_resend)
    load.start()
    try:
        time.sleep(args.seconds)
    except KeyboardInterrupt:
        pass
    finally:
        load.stop()
    stats = load.summary()
    if args.json:
        print(json.dumps({"summary": stats, "marks": load.marks}, indent=2, sort_keys=True))
    else:
        print(summary_line("all", stats["all"]))
    failed = stats["all"]["non_2xx"] + stats["all"]["socket_errors"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
