"""The retry policy, the deadline and the cause line of bounded S3 calls,
driven by a fake clock (nothing here sleeps for real)."""
import datetime

import pytest
from fakeclock import Clock as FakeClock

from ansible_collections.keelson.stack.plugins.module_utils.backup_pruning import select_abandoned
from ansible_collections.keelson.stack.plugins.module_utils.backup_retry import (
    BoundedS3, Deadline, Policy, RunStopped, S3Unavailable, call, classify, default_deadline, operation_name)


class ReadTimeoutError(Exception):
    """Named like botocore's: classify() goes by class names."""


class ConnectTimeoutError(Exception):
    pass


class ConnectionClosedError(Exception):
    """botocore's, wrapping urllib3's ProtocolError("Connection aborted.", TimeoutError) in kwargs."""

    def __init__(self, error):
        Exception.__init__(self, "Connection was closed before we received a valid response from endpoint URL")
        self.kwargs = {"error": error}


class ClientError(Exception):
    def __init__(self, code, status):
        Exception.__init__(self, code)
        self.response = {"Error": {"Code": code, "Message": "try later"},
                         "ResponseMetadata": {"HTTPStatusCode": status}}


def failing(errors, result="ok", clock=None, cost=0):
    """A call that raises each of `errors` in turn (each taking `cost` fake seconds), then returns."""
    errors = list(errors)

    def fn():
        if clock is not None:
            clock.now += cost
        if errors:
            raise errors.pop(0)
        return result
    return fn


POLICY = dict(attempts=5, base_delay=1, max_delay=20, connect_timeout=10, read_timeout=60, rand=lambda: 1.0)


def test_backoff_doubles_up_to_the_cap_with_jitter_between_half_and_full():
    policy = Policy(**POLICY)
    assert [policy.delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 20, 20]
    low = Policy(**dict(POLICY, rand=lambda: 0.0))
    assert [low.delay(n) for n in (1, 3, 7)] == [0.5, 2, 10]
    # every attempt waiting out both timeouts, plus the pauses 1+2+4+8
    assert policy.budget() == 5 * 70 + 15


def test_transient_errors_are_retried_until_the_call_succeeds():
    clock = FakeClock()
    fn = failing([ReadTimeoutError("read timed out"), ClientError("SlowDown", 503),
                  ConnectionResetError(104, "reset")])
    assert call(fn, "part 3", Policy(**POLICY), clock=clock, sleep=clock.sleep) == "ok"
    assert clock.sleeps == [1, 2, 4]


def test_a_stall_that_outlasts_the_attempts_names_the_cause_and_the_step():
    clock = FakeClock()
    fn = failing([ReadTimeoutError("read timed out")] * 5, clock=clock, cost=60)
    with pytest.raises(S3Unavailable) as err:
        call(fn, "part 12", Policy(**POLICY), clock=clock, sleep=clock.sleep)
    assert str(err.value) == "S3 did not answer for 60 s during part 12 (5 attempts in 315 s)"
    assert clock.sleeps == [1, 2, 4, 8]


def test_errors_that_retrying_cannot_fix_are_raised_at_once():
    clock = FakeClock()
    denied = ClientError("AccessDenied", 403)
    with pytest.raises(ClientError):
        call(failing([denied]), "HeadBucket b", Policy(**POLICY), clock=clock, sleep=clock.sleep)
    assert clock.sleeps == []
    with pytest.raises(ValueError):
        call(failing([ValueError("a bug")]), "x", Policy(**POLICY), clock=clock, sleep=clock.sleep)


@pytest.mark.parametrize("exc, transient, cause", [
    (ReadTimeoutError("Read timeout on endpoint URL"), True, "S3 did not answer for 60 s"),
    (TimeoutError("timed out"), True, "S3 did not answer for 60 s"),
    (ConnectTimeoutError("Connect timeout"), True, "could not connect to S3 within 10 s"),
    (ConnectionResetError(104, "Connection reset by peer"), True, "S3 closed the connection ([Errno 104] Connection reset by peer)"),
    (ConnectionClosedError(Exception("Connection aborted.", TimeoutError("timed out"))), True,
     "S3 stopped reading the request (sending timed out)"),
    (ConnectionClosedError(Exception("Connection aborted.", ConnectionResetError(104, "reset"))), True,
     "S3 closed the connection (Connection was closed before we received a valid response from endpoint URL)"),
    (ClientError("SlowDown", 503), True, "S3 answered 503 SlowDown: try later"),
    (ClientError("InternalError", 500), True, "S3 answered 500 InternalError: try later"),
    (ClientError("WeirdGatewayThing", 502), True, "S3 answered 502 WeirdGatewayThing: try later"),
    (ClientError("RequestTimeout", 400), True, "S3 answered 400 RequestTimeout: try later"),
    (ClientError("NoSuchUpload", 404), False, "S3 answered 404 NoSuchUpload: try later"),
])
def test_classify(exc, transient, cause):
    assert classify(exc, Policy(**POLICY)) == (transient, cause)


def test_the_deadline_ends_retries_and_names_the_step():
    clock = FakeClock()
    deadline = Deadline(100, clock=clock)
    fn = failing([ReadTimeoutError("x")] * 10, clock=clock, cost=60)
    with pytest.raises(RunStopped) as err:
        call(fn, "part 7", Policy(**dict(POLICY, attempts=10)), deadline, clock=clock, sleep=clock.sleep)
    # 60 s, pause 1, 60 s: past 100 s, so no third attempt
    assert str(err.value) == "the deadline of 100 s passed during part 7 (last error: S3 did not answer for 60 s)"
    assert clock.now - 100 == 121


def test_a_stopped_run_makes_no_further_attempt():
    clock = FakeClock()
    deadline = Deadline(clock=clock)
    deadline.stop("the run was stopped by SIGTERM")
    with pytest.raises(RunStopped, match="^the run was stopped by SIGTERM during the manifest upload$"):
        call(failing([]), "the manifest upload", Policy(**POLICY), deadline, clock=clock, sleep=clock.sleep)


def test_a_child_stops_with_its_parent_but_not_the_other_way_round():
    clock = FakeClock()
    run = Deadline(clock=clock)
    run.start(50)
    one, two = run.child(), run.child()
    assert one.remaining() == 50
    one.stop("another part failed")
    assert one.stopped() == "another part failed" and run.stopped() is None and two.stopped() is None
    run.stop("the run was stopped by SIGTERM")
    assert two.stopped() == "the run was stopped by SIGTERM"
    assert one.stopped() == "another part failed"  # the first reason wins
    late = run.child()
    assert late.stopped() == "the run was stopped by SIGTERM"
    fresh = Deadline(clock=clock)
    clock.now += 10
    assert fresh.remaining() is None and not fresh.stopped()
    timed = Deadline(5, clock=clock)
    clock.now += 5
    assert timed.stopped() == "the deadline of 5 s passed"


def test_bounded_client_names_the_operation_and_retries():
    class Client(object):
        def __init__(self):
            self.calls = 0

        def head_bucket(self, Bucket):
            self.calls += 1
            if self.calls < 3:
                raise ReadTimeoutError("x")
            return {"ok": Bucket}

        def upload_part(self, **kwargs):
            raise ReadTimeoutError("x")

    clock = FakeClock()
    client = Client()
    s3 = BoundedS3(client, Policy(**dict(POLICY, base_delay=0)), Deadline(clock=clock), clock=clock)
    assert s3.head_bucket(Bucket="b") == {"ok": "b"} and client.calls == 3
    with pytest.raises(S3Unavailable, match="^S3 did not answer for 60 s during part 12 "):
        s3.call("upload_part", what="part 12", PartNumber=12)
    with pytest.raises(S3Unavailable, match="during UploadPart k "):
        s3.upload_part(Key="k")
    assert operation_name("list_objects_v2") == "ListObjectsV2"


def test_default_deadline_scales_with_the_database():
    assert default_deadline(0) == 3600
    assert default_deadline(10 * 1024 ** 3) == 3600 + 6000
    assert default_deadline(2 * 1024 ** 4) > 24 * 3600  # a 2 TiB database gets more than a day


def test_abandoned_uploads_are_old_ones_of_no_live_run():
    now = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.timezone.utc)
    uploads = [("p/app/20261130T021500Z/dump.pgc", "old", now - datetime.timedelta(hours=30)),
               ("p/app/20261201T110000Z/dump.pgc", "young", now - datetime.timedelta(hours=1)),
               ("p/app/x/dump.pgc", "undated", None)]
    abandoned, kept = select_abandoned(uploads, now, 24 * 3600, live=False)
    assert [u["upload_id"] for u in abandoned] == ["old"] and abandoned[0]["age_seconds"] == 30 * 3600
    assert [u["upload_id"] for u in kept] == ["young", "undated"]
    abandoned, kept = select_abandoned(uploads, now, 24 * 3600, live=True)
    assert abandoned == [] and len(kept) == 3
