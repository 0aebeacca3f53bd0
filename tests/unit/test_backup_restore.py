"""Pure parts of restore, the S3 key layout, and client tools run under a deadline."""
import os
import socket
import threading
import time

import pytest

from ansible_collections.keelson.stack.plugins.module_utils import backup_s3
from ansible_collections.keelson.stack.plugins.module_utils.backup_pg import (
    Connection, PgError, parse_row_counts, toc_entries, toc_sha256)
from ansible_collections.keelson.stack.plugins.module_utils.backup_restore import (
    RestoreError, check_manifest, compare_counts, download_verified, resolve_backup_id, restore_deadline,
    scratch_name)
from ansible_collections.keelson.stack.plugins.module_utils.backup_retry import (
    BoundedS3, Deadline, Policy, RunStopped)

IDS = ["20261101T021500Z", "20261102T021500Z", "20261103T021500Z"]

LISTING_A = """;
; Archive created at 2026-11-22 21:23:55 UTC
;     dbname: demo
;
219; 1259 16396 TABLE public pgbench_accounts postgres
3436; 0 16396 TABLE DATA public pgbench_accounts postgres
"""


def test_resolve_latest_id_and_time():
    assert resolve_backup_id(IDS, "latest") == IDS[-1]
    assert resolve_backup_id(IDS, None) == IDS[-1]
    assert resolve_backup_id(IDS, "20261102T021500Z") == IDS[1]
    assert resolve_backup_id(IDS, "2026-11-02T23:00:00Z") == IDS[1]
    assert resolve_backup_id(IDS, "2026-11-03T03:15:00+01:00") == IDS[2]
    assert resolve_backup_id(IDS, "2026-11-03T03:14:59+01:00") == IDS[1]
    for bad in ("20261104T021500Z", "2026-10-01T00:00:00Z", "tuesday"):
        with pytest.raises(RestoreError):
            resolve_backup_id(IDS, bad)
    with pytest.raises(RestoreError, match="no committed backup"):
        resolve_backup_id([], "latest")


def test_scratch_name_fits_postgres_limit():
    assert scratch_name("app", IDS[0]) == "app_restore_20261101t021500z"
    assert len(scratch_name("x" * 80, IDS[0])) == 63


def manifest(**objects):
    return {"format": "keelson-pg-backup/1", "database": "app", "id": IDS[0], "_key": "k",
            "objects": objects or {"dump": {"key": "p/app/%s/dump.pgc" % IDS[0]}}}


def test_manifest_objects_must_stay_in_their_backup_directory():
    check_manifest(manifest(), "p", "app", IDS[0])
    for key in ("p/app/%s/../x" % IDS[0] and "p/app/%s/sub/dump.pgc" % IDS[0],
                "p/app/20261102T021500Z/dump.pgc", "p-other/app/%s/dump.pgc" % IDS[0], "other"):
        with pytest.raises(RestoreError, match="outside"):
            check_manifest(manifest(dump={"key": key}), "p", "app", IDS[0])
    with pytest.raises(RestoreError, match="describes"):
        check_manifest(manifest(), "p", "app", IDS[1])
    with pytest.raises(RestoreError, match="no dump"):
        check_manifest(manifest(globals={"key": "p/app/%s/globals.sql" % IDS[0]}), "p", "app", IDS[0])


def test_prefix_layout_is_exact():
    assert backup_s3.normalize_prefix("/a/b//") == "a/b/"
    assert backup_s3.normalize_prefix("") == ""
    assert backup_s3.database_prefix("prefix", "app") == "prefix/app/"
    assert not "prefix-other/app/x".startswith(backup_s3.database_prefix("prefix", "app"))
    with pytest.raises(ValueError):
        backup_s3.database_prefix("p", "a/b")
    assert backup_s3.id_time(IDS[0]) == "2026-11-01T02:15:00Z"


def test_compare_counts():
    assert compare_counts({"a": 1, "b": 2}, {"a": 1, "b": 2, "c": 5}) == []
    assert compare_counts({"a": 1, "b": 2}, {"a": 0}) == ["a has 0 rows, manifest 1", "b missing"]


def test_toc_hash_ignores_header_comments():
    other_header = LISTING_A.replace("21:23:55", "23:59:59").replace("dbname: demo", "dbname: other")
    assert toc_entries(LISTING_A) == ["219; 1259 16396 TABLE public pgbench_accounts postgres",
                                      "3436; 0 16396 TABLE DATA public pgbench_accounts postgres"]
    assert toc_sha256(LISTING_A) == toc_sha256(other_header)
    assert toc_sha256(LISTING_A) != toc_sha256(LISTING_A.replace("accounts postgres\n", "accounts app\n", 1))
    with pytest.raises(PgError):
        toc_sha256(";\n; nothing\n")


def test_row_counts_parse_quoted_identifiers():
    assert parse_row_counts(['["public.t", 3]', '["\\"Odd\\".\\"na.me\\"", 0]']) == {"public.t": 3, '"Odd"."na.me"': 0}



def test_restore_deadline_scales_with_the_uncompressed_dump():
    gib = 1024 ** 3
    assert restore_deadline(manifest(dump={"key": "k", "bytes": gib // 10, "plain_bytes": 3 * gib})) == 3600 + 3 * 1200
    assert restore_deadline(manifest(dump={"key": "k", "bytes": 0})) == 3600


def gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_tool_past_its_deadline_is_stopped_with_its_children_and_named(tmp_path):
    # a shell that forks a child and waits for it, as pg_restore -j waits for its workers
    pidfile = tmp_path / "child"
    conn = Connection(os_user=None, deadline=Deadline(0.5))
    with pytest.raises(RunStopped, match=r"^the deadline of 0\.5 s passed during sh$"):
        conn.run(["sh", "-c", "sleep 300 & echo $! > %s; wait" % pidfile])
    child = int(pidfile.read_text())
    for _ in range(100):  # SIGKILL is delivered at once, but the reaper of an orphan may take a moment
        if gone(child):
            break
        time.sleep(0.05)
    assert gone(child)


def test_a_tool_stopped_by_sigterm_names_the_stop():
    deadline = Deadline()
    threading.Timer(0.3, deadline.stop, ["the run was stopped by SIGTERM"]).start()
    with pytest.raises(RunStopped, match="^the run was stopped by SIGTERM during sleep$"):
        Connection(os_user=None, deadline=deadline).run(["sleep", "300"])


def test_a_tool_gets_its_input_and_its_failure_is_one_line():
    conn = Connection(os_user=None, deadline=Deadline(60))
    assert conn.run(["cat"], input_text="a\nb\n") == "a\nb\n"
    with pytest.raises(PgError, match="^sh failed: no such table$"):
        conn.run(["sh", "-c", "echo 'no such table' >&2; exit 3"])


@pytest.fixture
def stalling_s3():
    """A loopback HTTP server that answers a GET with 4 MiB announced, sends
    1 MiB and a bit, and then nothing until the test ends: a stalled S3 server."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    done = threading.Event()

    def serve():
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4194304\r\nContent-Type: application/octet-stream\r\n"
                     b"ETag: \"x\"\r\n\r\n" + b"k" * (1024 * 1024 + 1000))
        done.wait(120)
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    yield "http://127.0.0.1:%d" % listener.getsockname()[1]
    done.set()
    listener.close()


def test_a_download_blocked_in_a_read_ends_at_the_deadline_not_the_read_timeout(stalling_s3, tmp_path):
    # read timeout 60 s, deadline 1 s: only a guard that cuts the blocked read names the deadline
    # with the byte the download reached; the read timeout would be reported as "S3 did not answer for 60 s"
    policy = Policy(attempts=1, read_timeout=60)
    client = backup_s3.client(stalling_s3, "key", "secret", read_timeout=policy.read_timeout)
    s3 = BoundedS3(client, policy, Deadline(1))
    obj = {"key": "p/app/%s/dump.pgc" % IDS[0], "bytes": 4194304, "sha256": "0" * 64}
    with pytest.raises(RestoreError, match=r"^the deadline of 1 s passed during the download of p/app/%s/dump\.pgc "
                                           r"at byte 1048576; no database was touched$" % IDS[0]):
        download_verified(s3, "bucket", obj, str(tmp_path / "dump.pgc"))
