"""The producer stream with real subprocesses: full parts, exit statuses checked
at end of stream, the tee, and the part-size schedule."""
import hashlib
import subprocess

import pytest

from ansible_collections.keelson.stack.plugins.module_utils.backup_stream import (
    MAX_PART_SIZE, MIB, Producer, ProducerStream, StreamFailed, Tee, part_size)


def test_part_size_keeps_large_streams_under_10000_parts():
    assert part_size(1) == 8 * MIB
    assert part_size(1000) == 8 * MIB
    assert part_size(1001) == 16 * MIB
    total = sum(part_size(n) for n in range(1, 10001))
    assert total > 5 * 1024 ** 4  # more than 5 TiB fits in 10,000 parts
    assert max(part_size(n) for n in range(1, 10001)) <= MAX_PART_SIZE
    assert all(part_size(n) >= 5 * MIB for n in range(1, 10001))


def read_all(stream, size):
    parts = []
    while True:
        data = stream.read_part(size)
        parts.append(data)
        if len(data) < size:
            return parts


def test_full_parts_from_a_slow_trickling_producer():
    # 7 writes with pauses: a pipe read returns short; read_part must not.
    script = "for i in 1 2 3 4 5 6 7; do head -c 300000 /dev/zero; sleep 0.05; done"
    stream = ProducerStream([Producer("sh", ["sh", "-c", script])])
    parts = read_all(stream, 1000000)
    assert [len(p) for p in parts] == [1000000, 1000000, 100000]
    assert stream.bytes == 2100000
    assert stream.sha256.hexdigest() == hashlib.sha256(b"\0" * 2100000).hexdigest()


def test_producer_failing_after_output_raises_at_end_of_stream():
    stream = ProducerStream([Producer("pg_dump", ["sh", "-c", "head -c 2500000 /dev/zero; echo boom >&2; exit 3"])])
    assert len(stream.read_part(1000000)) == 1000000
    assert len(stream.read_part(1000000)) == 1000000
    with pytest.raises(StreamFailed, match="pg_dump exited 3: boom"):
        stream.read_part(1000000)


def test_killed_producer_is_reported():
    producer = Producer("pg_dump", ["sh", "-c", "head -c 100000 /dev/zero; exec sleep 60"])
    stream = ProducerStream([producer])
    assert len(stream.read_part(50000)) == 50000
    producer.proc.kill()
    with pytest.raises(StreamFailed, match="pg_dump killed by signal 9"):
        read_all(stream, 1000000)


def test_exactly_part_sized_stream_still_checks_the_exit_status():
    stream = ProducerStream([Producer("p", ["sh", "-c", "head -c 1000 /dev/zero; exit 1"])])
    assert len(stream.read_part(1000)) == 1000
    with pytest.raises(StreamFailed):
        stream.read_part(1000)


def test_two_stage_chain_through_a_pump_with_a_tee():
    # gzip stands in for age: the stored bytes are the filter's output, the tee sees the plaintext.
    plain = b"".join(b"line %d\n" % i for i in range(200000))
    src = Producer("src", ["sh", "-c", "seq 0 199999 | sed 's/^/line /'"])
    tee = Tee(["sh", "-c", "head -c 20 && exec cat >/dev/null"])
    stream = ProducerStream([src, Producer("gzip", ["gzip", "-c"], stdin=subprocess.PIPE)], tee=tee)
    stored = b"".join(read_all(stream, 64 * 1024))
    assert subprocess.run(["gunzip", "-c"], input=stored, capture_output=True).stdout == plain
    assert stream.plain_bytes == len(plain)
    assert stream.bytes == len(stored)
    rc, out = tee.result()
    assert rc == 0 and out == plain[:20].decode()


def test_failing_filter_in_a_chain_is_reported():
    src = Producer("pg_dump", ["sh", "-c", "head -c 3000000 /dev/zero"])
    enc = Producer("age", ["sh", "-c", "head -c 1000; echo 'age: no identity' >&2; exit 1"], stdin=subprocess.PIPE)
    stream = ProducerStream([src, enc])
    with pytest.raises(StreamFailed, match="age exited 1: age: no identity"):
        read_all(stream, 1000000)


def test_tee_that_exits_early_does_not_break_the_stream():
    tee = Tee(["true"])
    stream = ProducerStream([Producer("p", ["sh", "-c", "head -c 5000000 /dev/zero"])], tee=tee)
    assert sum(len(p) for p in read_all(stream, 1000000)) == 5000000
    assert tee.result()[0] == 0


class ReadTimeoutError(Exception):
    """Named like botocore's (classify goes by class names)."""


class FakeS3(object):
    """Records calls; upload_part of the numbers in `stall` times out every time,
    of the numbers in `flaky` once."""

    def __init__(self, stall=(), flaky=()):
        self.stall, self.flaky = set(stall), set(flaky)
        self.calls, self.parts, self.aborted, self.completed = [], {}, [], None

    def create_multipart_upload(self, **kw):
        return {"UploadId": "u1"}

    def upload_part(self, PartNumber, Body, **kw):
        self.calls.append(PartNumber)
        if PartNumber in self.stall:
            raise ReadTimeoutError("Read timeout on endpoint URL")
        if PartNumber in self.flaky:
            self.flaky.discard(PartNumber)
            raise ConnectionResetError(104, "Connection reset by peer")
        self.parts[PartNumber] = len(Body)
        return {"ETag": "e%d" % PartNumber}

    def complete_multipart_upload(self, MultipartUpload, **kw):
        self.completed = MultipartUpload["Parts"]

    def abort_multipart_upload(self, UploadId, **kw):
        self.aborted.append(UploadId)


def bounded(fake, attempts=3, deadline=None):
    from ansible_collections.keelson.stack.plugins.module_utils.backup_retry import BoundedS3, Policy
    return BoundedS3(fake, Policy(attempts=attempts, base_delay=0.01, max_delay=0.01, read_timeout=5), deadline)


def assert_reaped(stream):
    for producer in stream.producers:
        assert producer.proc.returncode is not None, "%s was not reaped" % producer.name


def test_each_part_is_retried_on_its_own():
    from ansible_collections.keelson.stack.plugins.module_utils.backup_stream import upload_stream
    fake = FakeS3(flaky=[2, 3])
    stream = ProducerStream([Producer("p", ["sh", "-c", "head -c 5000000 /dev/zero"])])
    assert upload_stream(bounded(fake), "b", "k", stream, workers=2, base_part_size=1000000) == 5
    assert sorted(fake.calls) == [1, 2, 2, 3, 3, 4, 5]
    assert [p["PartNumber"] for p in fake.completed] == [1, 2, 3, 4, 5] and fake.aborted == []
    assert stream.bytes == 5000000


def test_stalled_part_aborts_the_upload_names_the_part_and_reaps_the_producer():
    from ansible_collections.keelson.stack.plugins.module_utils.backup_retry import S3Unavailable
    from ansible_collections.keelson.stack.plugins.module_utils.backup_stream import upload_stream
    fake = FakeS3(stall=[3])
    # a producer with far more to say than gets uploaded: it is killed, not waited out
    stream = ProducerStream([Producer("pg_dump", ["sh", "-c", "exec cat /dev/zero"])])
    with pytest.raises(S3Unavailable) as err:
        upload_stream(bounded(fake), "b", "k", stream, workers=2, base_part_size=1000000)
    assert str(err.value).startswith("S3 did not answer for 5 s during part 3 (3 attempts in ")
    assert err.value.aborted_upload_id == "u1" and fake.aborted == ["u1"] and fake.completed is None
    assert_reaped(stream)


def test_a_stop_unblocks_a_read_of_a_silent_producer():
    # pg_dump stuck behind a lock writes nothing: the main thread sits in read();
    # stopping the run (deadline, SIGTERM) kills the producer, which ends the read.
    import threading
    from ansible_collections.keelson.stack.plugins.module_utils.backup_retry import Deadline, RunStopped
    from ansible_collections.keelson.stack.plugins.module_utils.backup_stream import upload_stream
    fake = FakeS3()
    deadline = Deadline()
    stream = ProducerStream([Producer("pg_dump", ["sh", "-c", "head -c 1500000 /dev/zero; exec sleep 600"])])
    timer = threading.Timer(0.5, deadline.stop, args=("the run was stopped by SIGTERM",))
    timer.start()
    try:
        with pytest.raises(RunStopped, match="^the run was stopped by SIGTERM during part 2$"):
            upload_stream(bounded(fake, deadline=deadline), "b", "k", stream, workers=2, base_part_size=1000000)
    finally:
        timer.cancel()
    assert fake.aborted == ["u1"]
    assert_reaped(stream)


def test_killing_a_chain_reaps_every_process_and_the_tee():
    tee = Tee(["sh", "-c", "exec cat >/dev/null"])
    src = Producer("src", ["sh", "-c", "exec cat /dev/urandom"])
    stream = ProducerStream([src, Producer("gzip", ["gzip", "-c"], stdin=subprocess.PIPE)], tee=tee)
    stream.read_part(1000)
    stream.kill()
    assert_reaped(stream)
    assert tee.proc.returncode is not None
    assert not stream.pump.is_alive()
