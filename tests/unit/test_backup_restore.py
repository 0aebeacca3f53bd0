"""Pure parts of restore and the S3 key layout."""
import pytest

from ansible_collections.keelson.stack.plugins.module_utils import backup_s3
from ansible_collections.keelson.stack.plugins.module_utils.backup_pg import (
    PgError, parse_row_counts, toc_entries, toc_sha256)
from ansible_collections.keelson.stack.plugins.module_utils.backup_restore import (
    RestoreError, check_manifest, compare_counts, resolve_backup_id, scratch_name)

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
