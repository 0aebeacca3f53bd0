# -*- coding: utf-8 -*-
# Copyright: keelson.stack developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Streaming a producer pipeline (pg_dump, optionally through age) into an S3
multipart upload, with nothing written to local disk.

Two traps shape this code: boto3 completes a truncated object when the producer
dies, and short pipe reads make boto3 buffer whole streams. So we drive the
multipart upload ourselves, read full parts, check every producer's exit status
at end of stream, and abort the upload on any failure.
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import fcntl
import hashlib
import subprocess
import tempfile
import threading

from ansible_collections.keelson.stack.plugins.module_utils.backup_local import kill_and_reap
from ansible_collections.keelson.stack.plugins.module_utils.backup_retry import (
    ENDED, BoundedS3, Deadline, Policy, on_stop)

MIB = 1024 * 1024
BASE_PART_SIZE = 8 * MIB
MAX_PART_SIZE = 5 * 1024 * MIB
PARTS_PER_TIER = 1000
READ_CHUNK = 1 * MIB
PIPE_BYTES = 1 * MIB  # Linux's default pipe-max-size: a producer's pipe fills 16 times less often than at 64 KiB
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class StreamFailed(Exception):
    """A producer exited non-zero or a stream could not be completed."""


def part_size(part_number, base=BASE_PART_SIZE):
    """Part sizes double every 1000 parts: 8 MiB parts up to 8 GiB, and 10,000
    parts reach about 8 TiB, so memory stays flat for ordinary dumps while huge
    ones stay under the S3 limit of 10,000 parts."""
    tier = (part_number - 1) // PARTS_PER_TIER
    return min(base * (2 ** tier), MAX_PART_SIZE)


def _stderr_tail(handle, limit=400):
    handle.seek(0)
    text = handle.read().decode("utf-8", "replace")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(lines)[-limit:]


class Producer(object):
    """One subprocess whose exit status must be zero for the stream to count."""

    def __init__(self, name, argv, stdin=None, env=None, user=None):
        self.name = name
        self.stderr = tempfile.TemporaryFile()
        kwargs = {}
        if user is not None:
            kwargs["user"] = user
        self.proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=self.stderr,
                                     env=env, cwd="/", close_fds=True, **kwargs)
        try:
            fcntl.fcntl(self.proc.stdout.fileno(), F_SETPIPE_SZ, PIPE_BYTES)
        except OSError:  # a lower pipe-max-size: the default pipe works, only with more wake-ups
            pass

    def failure(self):
        """None when the process exited 0, else a one-line reason. Waits for exit."""
        rc = self.proc.wait()
        if rc == 0:
            return None
        detail = _stderr_tail(self.stderr)
        if rc < 0:
            return "%s killed by signal %d%s" % (self.name, -rc, (": " + detail) if detail else "")
        return "%s exited %d%s" % (self.name, rc, (": " + detail) if detail else "")

    def kill(self):
        kill_and_reap(self.proc)


class Tee(object):
    """Feeds the beginning of a stream to a side process (pg_restore -l reads
    the table of contents, then exits); stops quietly once the process is done."""

    def __init__(self, argv, env=None, user=None):
        self.output = tempfile.TemporaryFile()
        kwargs = {}
        if user is not None:
            kwargs["user"] = user
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=self.output,
                                     stderr=subprocess.DEVNULL, env=env, cwd="/", close_fds=True, **kwargs)
        self.open = True

    def feed(self, data):
        if not self.open:
            return
        try:
            self.proc.stdin.write(data)
        except (BrokenPipeError, OSError):
            self.close()

    def close(self):
        if self.open:
            self.open = False
            try:
                self.proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass

    def kill(self):
        self.close()
        kill_and_reap(self.proc)

    def result(self):
        self.close()
        rc = self.proc.wait()
        self.output.seek(0)
        return rc, self.output.read().decode("utf-8", "replace")


class ProducerStream(object):
    """Reads the output of a producer chain in full parts.

    producers: the chain in order (the last one's stdout is read); when there is
    more than one, a pump thread copies producers[0]'s stdout into producers[1]'s
    stdin and feeds the plaintext to `tee`. With one producer, the tee is fed here.
    At end of stream every exit status is checked and StreamFailed raised.
    """

    def __init__(self, producers, tee=None):
        self.producers = producers
        self.tee = tee
        self.sha256 = hashlib.sha256()
        self.bytes = 0
        self.plain_bytes = 0
        self.pump_error = None
        self.pump = None
        self.source = producers[-1].proc.stdout
        if len(producers) == 2:
            self.pump = threading.Thread(target=self._pump, name="backup-pump")
            self.pump.daemon = True
            self.pump.start()
        elif len(producers) != 1:
            raise ValueError("one or two producers are supported")

    def _pump(self):
        src = self.producers[0].proc.stdout
        dst = self.producers[1].proc.stdin
        try:
            while True:
                chunk = src.read(READ_CHUNK)
                if not chunk:
                    break
                self.plain_bytes += len(chunk)
                if self.tee is not None:
                    self.tee.feed(chunk)
                dst.write(chunk)
        except Exception as exc:  # reported at end of stream, after the exit statuses
            self.pump_error = "stream copy failed: %s" % exc
            self.producers[0].kill()
        finally:
            try:
                dst.close()
            except (BrokenPipeError, OSError):
                pass

    def read_part(self, size):
        """Exactly `size` bytes, fewer only at end of stream. At end of stream
        raises StreamFailed unless every producer exited 0."""
        data = bytearray(size)  # read in place: a part is copied once, from the pipe (botocore takes a bytearray)
        view = memoryview(data)
        got = 0
        while got < size:
            n = self.source.readinto(view[got:got + READ_CHUNK])
            if not n:
                self._check_end()
                break
            got += n
        view.release()
        del data[got:]
        self.bytes += len(data)
        self.sha256.update(data)
        if self.pump is None:
            self.plain_bytes += len(data)
            if self.tee is not None:
                self.tee.feed(data)
        return data

    def _check_end(self):
        if self.pump is not None:
            self.pump.join()
        reasons = [p.failure() for p in self.producers]
        reasons = [r for r in reasons if r]
        if self.pump_error and not reasons:
            reasons.append(self.pump_error)
        if reasons:
            raise StreamFailed("; ".join(reasons))

    def kill(self):
        """Stops the chain for good: every process killed and reaped, the pump ended."""
        for producer in self.producers:
            producer.kill()
        if self.tee is not None:
            self.tee.kill()
        if self.pump is not None:
            self.pump.join(timeout=10)


class _Parts(object):
    """Part uploads on daemon threads, at most `workers` at a time. Daemon
    threads, not a ThreadPoolExecutor: a pool joins its workers when the run
    fails or exits, so one part stuck in a read would hold up the abort, the
    lock release and the process exit behind it."""

    def __init__(self, workers, stop):
        self.workers = workers
        self.slots = threading.BoundedSemaphore(workers)
        self.stop = stop
        self.etags = {}
        self.error = None
        self._lock = threading.Lock()

    def _run(self, upload, number, data):
        try:
            self.etags[number] = upload(number, data)
        except BaseException as exc:  # re-raised in the main thread by check()
            with self._lock:
                if self.error is None:
                    self.error = exc
            self.stop.stop("another part failed")
        finally:
            self.slots.release()

    def check(self, during):
        if self.error is not None:
            raise self.error
        self.stop.check(during)

    def _acquire(self, during):
        while not self.slots.acquire(timeout=0.5):
            self.check(during)
        try:
            self.check(during)
        except BaseException:
            self.slots.release()
            raise

    def submit(self, upload, number, data):
        self._acquire("part %d" % number)
        thread = threading.Thread(target=self._run, args=(upload, number, data), name="backup-part-%d" % number)
        thread.daemon = True
        thread.start()

    def wait_all(self, during):
        for dummy in range(self.workers):
            self._acquire(during)
        for dummy in range(self.workers):
            self.slots.release()
        self.check(during)


def upload_stream(client, bucket, key, stream, workers=1, content_type="application/octet-stream",
                  base_part_size=BASE_PART_SIZE, deadline=None):
    """Multipart-uploads a ProducerStream under `key`. Each part is retried on
    its own (the stream cannot rewind, so it is never restarted). Any failure (a
    producer exiting non-zero, S3 failing past the retry budget, the deadline,
    SIGTERM) stops the producers, reaps them and aborts the multipart upload, so
    no object appears under `key` and no upload stays open. Returns the part count.

    client: a backup_retry.BoundedS3 (a plain boto3 client gets the default policy).
    deadline: a backup_retry.Deadline; stopping it (the deadline passing, a
    SIGTERM handler) kills the producers, which unblocks a read of their pipe."""
    s3 = client if isinstance(client, BoundedS3) else BoundedS3(client, Policy())
    run = deadline or s3.deadline
    # Stopped when this upload fails, so retries of parts still in flight give up at once.
    stop = run.child()
    upload_id = s3.call("create_multipart_upload", what="the start of the upload of %s" % key,
                        Bucket=bucket, Key=key, ContentType=content_type)["UploadId"]
    parts = _Parts(workers, stop)
    number = 1
    # The main thread may be blocked reading the producers' pipe, which only their end wakes.
    on_stop(stop, stream.kill)

    def upload(part_number, data):
        return s3.call("upload_part", what="part %d" % part_number, deadline=stop, Bucket=bucket, Key=key,
                       UploadId=upload_id, PartNumber=part_number, Body=data)["ETag"]

    try:
        while True:
            size = part_size(number, base_part_size)
            try:
                data = stream.read_part(size)
            except StreamFailed:
                parts.check("part %d" % number)  # a stop killed the producers: name the stop, not the kill
                raise
            if not data and number > 1:
                break
            last = len(data) < size
            if number > 10000:
                raise StreamFailed("stream exceeds 10,000 parts")
            parts.submit(upload, number, data)
            del data
            number += 1
            if last:  # a short part means end of stream, exit statuses already checked
                break
        parts.wait_all("part %d" % (number - 1))
        ordered = [{"PartNumber": n, "ETag": parts.etags[n]} for n in sorted(parts.etags)]
        s3.call("complete_multipart_upload", what="the completion of %s" % key, deadline=stop, Bucket=bucket,
                Key=key, UploadId=upload_id, MultipartUpload={"Parts": ordered})
    except BaseException as exc:
        stop.stop("the upload failed")
        stream.kill()
        try:
            # Its own budget: the run's deadline may be what ended it.
            s3.call("abort_multipart_upload", what="the abort of upload %s" % upload_id, deadline=Deadline(),
                    policy=s3.patient(), Bucket=bucket, Key=key, UploadId=upload_id)
        except Exception:  # the original error matters more; a leftover upload is reported by its id
            pass
        try:
            exc.aborted_upload_id = upload_id  # lets callers name the upload they aborted
            exc.part_number = number
        except AttributeError:
            pass
        raise
    finally:
        stop.stop(ENDED)
    return len(parts.etags)
