"""The backup role rejects bad bounds at argument validation, before any task runs
(validation reports every bad option at once, so one run checks several)."""
from argspec import assert_rejected

VALID = {"keelson_environment": "argspec", "backup_databases": ["app"], "backup_s3_bucket": "b"}
S3_BOUNDS = ["backup_s3_connect_timeout", "backup_s3_read_timeout", "backup_s3_attempts", "backup_s3_retry_max_delay"]
RUN_BOUNDS = ["backup_deadline_seconds", "backup_lock_wait_timeout", "backup_abort_uploads_after_hours",
              "backup_restore_deadline_seconds"]


def test_s3_bounds_must_be_integers():
    assert_rejected("backup", dict(VALID, **{name: "a minute" for name in S3_BOUNDS}), *S3_BOUNDS)


def test_run_bounds_must_be_integers():
    assert_rejected("backup", dict(VALID, **{name: "forever" for name in RUN_BOUNDS}), *RUN_BOUNDS,
                    entry_point="backup")



def test_restore_bound_must_be_an_integer():
    assert_rejected("backup", dict(VALID, backup_restore_database="app", backup_restore_deadline_seconds="1 h"),
                    "backup_restore_deadline_seconds", entry_point="restore")


def test_cron_timeout_must_be_an_integer():
    assert_rejected("backup", {"backup_cron_timeout_seconds": "4 hours"}, "backup_cron_timeout_seconds",
                    entry_point="schedule")
