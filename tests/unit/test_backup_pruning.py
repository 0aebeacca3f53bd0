"""prune_outcome: the one form in which backup_prune and pg_backup's `prune` report a prune,
against a real (closed) loopback endpoint."""
import socket

from ansible_collections.keelson.stack.plugins.module_utils.backup_pruning import prune_outcome
from ansible_collections.keelson.stack.plugins.module_utils.backup_retry import Deadline

SECRET = "s3cr3t-never-printed"


def closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def params(**more):
    values = dict(database="app", s3_endpoint_url="http://127.0.0.1:%d" % closed_port(), s3_bucket="backups",
                  s3_prefix="staging/postgresql/db1", s3_access_key="AKIDEXAMPLE", s3_secret_key=SECRET,
                  s3_region="us-east-1", s3_connect_timeout=1, s3_read_timeout=1, s3_attempts=1,
                  s3_retry_max_delay=1, keep_daily=30, keep_weekly=12, keep_monthly=12, keep_last=0,
                  abort_uploads_after_hours=24, lock_dir="/nonexistent")
    values.update(more)
    return values


def test_an_unreachable_s3_is_one_failed_line_without_the_secret():
    result = prune_outcome(params())
    assert result["failed"] is True and result["changed"] is False
    assert result["msg"].startswith("prune of app failed: ")
    assert "ListObjectsV2 staging/postgresql/db1/app/" in result["msg"]
    assert "\n" not in result["msg"] and SECRET not in result["msg"]
    assert set(result) == {"failed", "changed", "msg"}


def test_a_stopped_run_stops_the_prune_before_any_call():
    deadline = Deadline()
    deadline.stop("the run was stopped by SIGTERM")
    result = prune_outcome(params(), deadline=deadline)
    assert result["failed"] is True
    assert "the run was stopped by SIGTERM" in result["msg"], result["msg"]
