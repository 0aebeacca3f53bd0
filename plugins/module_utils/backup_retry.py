# -*- coding: utf-8 -*-
# Copyright: keelson.stack developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Bounds for every S3 call of the backup paths: a retry with backoff for
transient errors, a deadline that ends a whole run, and a one-line cause.

botocore's own retries are switched off (see backup_s3.client) so that one
policy decides, a retry can be cut short by the run's deadline or by SIGTERM,
and the error names what stalled ("S3 did not answer for 60 s during part 12")
instead of a stack of botocore messages. Pure: the clock, the sleep and the
randomness are injected, so unit tests drive them with a fake clock.
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import random
import threading
import time

# Error codes S3 servers (AWS, Ceph RGW, MinIO) answer when trying again later can work.
TRANSIENT_CODES = frozenset([
    "SlowDown", "RequestTimeout", "RequestTimeoutException", "InternalError", "ServiceUnavailable",
    "Throttling", "ThrottlingException", "RequestThrottled", "TooManyRequests", "BadGateway", "GatewayTimeout",
])


class RunStopped(Exception):
    """The run's deadline passed or the run was told to stop; the message is one line."""


class S3Unavailable(Exception):
    """An S3 call kept failing with transient errors until the attempts ran out."""


class Policy(object):
    """How hard to try one S3 call: `attempts` in all, sleeping base_delay,
    2x, 4x ... capped at max_delay between them, each delay scaled by a random
    factor in [0.5, 1] so parallel part uploads do not retry in lockstep."""

    def __init__(self, attempts=5, base_delay=1.0, max_delay=20.0, connect_timeout=10, read_timeout=60,
                 rand=random.random):
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.rand = rand

    def delay(self, failed_attempts):
        """Seconds to sleep after `failed_attempts` (1, 2, ...) failures."""
        raw = min(self.max_delay, self.base_delay * (2 ** (failed_attempts - 1)))
        return raw * (0.5 + 0.5 * self.rand())

    def budget(self):
        """Longest time one call can take before it fails: every attempt waiting out
        the connect and read timeouts, plus the longest sleeps."""
        sleeps = sum(min(self.max_delay, self.base_delay * (2 ** (n - 1))) for n in range(1, self.attempts))
        return self.attempts * (self.connect_timeout + self.read_timeout) + sleeps


class Deadline(object):
    """The end of a run, and the one place that says it must stop (deadline
    passed, SIGTERM). Threads sleep on it, so stopping wakes them at once."""

    def __init__(self, seconds=None, clock=time.monotonic):
        self.clock = clock
        self.seconds = seconds
        self.end = None if not seconds else clock() + seconds
        self.reason = None
        self.children = []
        self._event = threading.Event()

    def start(self, seconds):
        """Sets the end `seconds` from now (a Deadline may be made before its length is known)."""
        self.seconds = seconds
        self.end = None if not seconds else self.clock() + seconds
        for child in self.children:
            child.start(seconds)

    def child(self):
        """A Deadline with the same end that also stops when this one does, and
        can be stopped on its own (one upload's parts, without the whole run)."""
        child = Deadline(clock=self.clock)
        child.seconds, child.end = self.seconds, self.end
        self.children.append(child)
        if self.reason is not None:
            child.stop(self.reason)
        return child

    def remaining(self):
        if self.end is None:
            return None
        return max(0.0, self.end - self.clock())

    def stop(self, reason):
        """Tells every retry and wait of the run to give up with `reason` (the first one wins)."""
        if self.reason is None:
            self.reason = reason
        self._event.set()
        for child in self.children:
            child.stop(reason)

    def stopped(self):
        """The reason to stop, or None. Turns a passed deadline into a stop."""
        if self.reason is None and self.end is not None and self.clock() >= self.end:
            self.stop("the deadline of %s passed" % seconds_text(self.seconds))
        return self.reason

    def check(self, during):
        reason = self.stopped()
        if reason:
            raise RunStopped("%s during %s" % (reason, during))

    def sleep(self, seconds=None):
        """Sleeps up to `seconds` (None: until stopped), less when the deadline
        comes first; True when it returns because the run must stop."""
        remaining = self.remaining()
        if remaining is not None:
            seconds = remaining if seconds is None else min(seconds, remaining)
        self._event.wait(None if seconds is None else max(0.0, seconds))
        return self.stopped() is not None


# The reason a guarded step gives its Deadline when it finishes first (see on_stop).
ENDED = "the step ended"


def on_stop(deadline, action):
    """Runs action() on a daemon thread once `deadline` passes or is stopped,
    unless the guarded step stopped it with ENDED first. A thread blocked in a
    read wakes only when what it reads goes away: the action takes it away
    (kills the producers, shuts the socket)."""
    def watch():
        deadline.sleep(None)
        if deadline.reason != ENDED:
            action()
    thread = threading.Thread(target=watch, name="backup-watchdog")
    thread.daemon = True
    thread.start()
    return thread


def seconds_text(value):
    return "%d s" % value if float(value).is_integer() else "%.1f s" % value


def _names(exc):
    return set(cls.__name__ for cls in type(exc).__mro__)


def classify(exc, policy):
    """(transient, cause): whether trying again can help, and what happened in
    words an operator reads at 3 a.m. Knows botocore's exceptions by name, so
    this module does not import botocore."""
    names = _names(exc)
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and "Error" in response:
        code = response["Error"].get("Code", "") or ""
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        message = response["Error"].get("Message", "") or ""
        cause = "S3 answered %s%s%s" % (status or "", " " + code if code else "", ": " + message if message else "")
        return (code in TRANSIENT_CODES or status >= 500 or status == 429), cause.strip()
    if names & {"ReadTimeoutError", "ReadTimeout", "timeout", "TimeoutError", "ResponseStreamingError"} \
            and "ConnectTimeoutError" not in names:
        if "ResponseStreamingError" in names and "timed out" not in str(exc):
            return True, "S3 broke off the transfer (%s)" % _first_line(exc)
        return True, "S3 did not answer for %s" % seconds_text(policy.read_timeout)
    if "ConnectTimeoutError" in names:
        return True, "could not connect to S3 within %s" % seconds_text(policy.connect_timeout)
    if names & {"EndpointConnectionError", "ConnectionRefusedError", "NewConnectionError"}:
        return True, "could not connect to S3 (%s)" % _first_line(exc)
    if names & {"ConnectionClosedError", "ConnectionResetError", "BrokenPipeError", "ProtocolError",
                "IncompleteRead", "HTTPClientError", "ConnectionError"}:
        if _timed_out(exc):  # botocore reports a send that timed out as a closed connection
            return True, "S3 stopped reading the request (sending timed out)"
        return True, "S3 closed the connection (%s)" % _first_line(exc)
    return False, _first_line(exc)


def _timed_out(exc, depth=0):
    """Whether a socket timeout is somewhere inside `exc` (botocore keeps the
    urllib3 error in kwargs["error"], urllib3 the socket error in args)."""
    if depth > 5 or exc is None:
        return False
    if isinstance(exc, TimeoutError) or "timed out" in str(exc).lower():
        return True
    wrapped = (getattr(exc, "kwargs", None) or {}).get("error")
    inner = list(getattr(exc, "args", ()) or ()) + [wrapped, exc.__cause__, exc.__context__]
    return any(_timed_out(e, depth + 1) for e in inner if isinstance(e, BaseException))


def _first_line(exc):
    text = str(exc)
    return text.splitlines()[0][:300] if text else type(exc).__name__


def call(fn, what, policy, deadline=None, clock=time.monotonic, sleep=None):
    """Runs fn() until it returns, retrying transient errors per `policy`.
    A non-transient error is re-raised as it is (callers describe it); a
    transient one that outlasts the attempts becomes S3Unavailable naming the
    cause and `what`; a stop (deadline, SIGTERM) becomes RunStopped."""
    deadline = deadline or Deadline(clock=clock)
    started = clock()
    failures = 0
    while True:
        deadline.check(what)
        try:
            return fn()
        except Exception as exc:
            transient, cause = classify(exc, policy)
            if not transient:
                raise
            failures += 1
            if failures >= policy.attempts:
                raise S3Unavailable("%s during %s (%d attempts in %s)" % (
                    cause, what, failures, seconds_text(round(clock() - started))))
            pause = policy.delay(failures)
            remaining = deadline.remaining()
            if remaining is not None and remaining <= pause:
                deadline.stop("the deadline of %s passed" % seconds_text(deadline.seconds))
                raise RunStopped("%s during %s (last error: %s)" % (deadline.reason, what, cause))
            stopped = sleep(pause) if sleep is not None else deadline.sleep(pause)
            if stopped or deadline.stopped():
                raise RunStopped("%s during %s (last error: %s)" % (deadline.reason, what, cause))


class BoundedS3(object):
    """An S3 client whose every method call goes through `call`:
    `s3.head_bucket(Bucket=b)` is retried and described as "HeadBucket b".
    `s3.call(name, what, **kwargs)` names the step explicitly ("part 12")."""

    def __init__(self, client, policy, deadline=None, clock=time.monotonic):
        self.client = client
        self.policy = policy
        self.deadline = deadline or Deadline(clock=clock)
        self.clock = clock

    def call(self, operation, what=None, deadline=None, policy=None, **kwargs):
        """One S3 operation, retried; `deadline` and `policy` override the client's
        (an abort gets a fresh deadline, since the run's may be what ended it, and
        a longer policy, since the stall that failed the run may still last)."""
        method = getattr(self.client, operation)
        if what is None:
            what = operation_name(operation)
            target = kwargs.get("Key") or kwargs.get("Prefix") or kwargs.get("Bucket")
            if target:
                what += " " + target
        return call(lambda: method(**kwargs), what, policy or self.policy, deadline or self.deadline, self.clock)

    def patient(self):
        """The policy for cleanup calls (abort, delete): at least 5 attempts and pauses up to 10 s."""
        p = self.policy
        return Policy(attempts=max(5, p.attempts), base_delay=p.base_delay, max_delay=max(10, p.max_delay),
                      connect_timeout=p.connect_timeout, read_timeout=p.read_timeout, rand=p.rand)

    def __getattr__(self, operation):
        if operation.startswith("_"):
            raise AttributeError(operation)

        def bound(**kwargs):
            return self.call(operation, **kwargs)
        return bound


def operation_name(operation):
    """'upload_part' -> 'UploadPart', 'list_objects_v2' -> 'ListObjectsV2'."""
    return "".join(word[:1].upper() + word[1:] for word in operation.split("_"))


def default_deadline(database_bytes, minimum=3600, seconds_per_gib=600):
    """The overall deadline of one database's backup when none is set: an hour,
    plus ten minutes per GiB of database (pg_database_size), which is 1.7 MiB/s:
    far slower than a healthy run, far faster than never."""
    return int(minimum + seconds_per_gib * (max(0, database_bytes) / float(1024 ** 3)))
