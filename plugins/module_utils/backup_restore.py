# -*- coding: utf-8 -*-
# Copyright: keelson.stack developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Verified restore: manifest -> download to a private file while hashing
(and decrypting) -> sha256 and table-of-contents checks before any database is
touched -> pg_restore -j N -> row counts compared with the manifest."""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time

from ansible_collections.keelson.stack.plugins.module_utils import backup_s3
from ansible_collections.keelson.stack.plugins.module_utils.backup_dump import (
    MANIFEST_FORMAT, connection_from, s3_from)
from ansible_collections.keelson.stack.plugins.module_utils.backup_local import (
    DatabaseLock, read_metric, write_metrics)
from ansible_collections.keelson.stack.plugins.module_utils.backup_pg import (
    ROW_COUNT_SQL, PgError, database_exists, one_line, parse_row_counts, quote_ident, toc_sha256)
from ansible_collections.keelson.stack.plugins.module_utils.backup_retention import parse_time
from ansible_collections.keelson.stack.plugins.module_utils.backup_retry import (
    ENDED, Deadline, RunStopped, S3Unavailable, call, default_deadline, on_stop)

CHUNK = 1024 * 1024


class RestoreError(Exception):
    """The restore failed or was refused; the message is one line."""


class ChecksumError(RestoreError):
    """A downloaded object does not match its manifest."""


def resolve_backup_id(ids, selector):
    """'latest', an exact backup id, or a time (ISO 8601): the newest backup
    started at or before it."""
    if not ids:
        raise RestoreError("no committed backup (no manifest) found")
    selector = (selector or "latest").strip()
    if selector == "latest":
        return ids[-1]
    if backup_s3.BACKUP_ID_RE.match(selector):
        if selector not in ids:
            raise RestoreError("backup %s has no manifest (committed backups: %s ... %s)" % (selector, ids[0], ids[-1]))
        return selector
    try:
        limit = parse_time(selector)
    except ValueError:
        raise RestoreError("backup selector %r is neither 'latest', a backup id nor an ISO time with a zone" % selector)
    earlier = [i for i in ids if parse_time(backup_s3.id_time(i)) <= limit]
    if not earlier:
        raise RestoreError("no committed backup at or before %s" % selector)
    return earlier[-1]


def scratch_name(database, backup_id):
    suffix = "_restore_" + backup_id.lower()
    return database[:63 - len(suffix)] + suffix


def check_manifest(manifest, prefix, database, backup_id):
    if manifest.get("format") != MANIFEST_FORMAT:
        raise RestoreError("manifest %s has unknown format %r" % (manifest.get("_key"), manifest.get("format")))
    if manifest.get("database") != database or manifest.get("id") != backup_id:
        raise RestoreError("manifest %s describes %s/%s, not %s/%s" % (
            manifest.get("_key"), manifest.get("database"), manifest.get("id"), database, backup_id))
    base = backup_s3.backup_dir(prefix, database, backup_id)
    for name, obj in manifest.get("objects", {}).items():
        if not obj.get("key", "").startswith(base) or "/" in obj["key"][len(base):]:
            raise RestoreError("manifest lists %s object %r outside %s" % (name, obj.get("key"), base))
    if "dump" not in manifest.get("objects", {}):
        raise RestoreError("manifest %s lists no dump" % manifest.get("_key"))


def download_verified(s3, bucket, obj, dest, identity_file=None):
    """Streams an object to `dest` (through `age -d` when an identity is given),
    hashing the stored bytes. A transfer that stalls or breaks is resumed from
    the byte it reached (a ranged GET), each attempt bounded by the client's
    timeouts and retry policy. Raises ChecksumError on a size or sha256 mismatch."""
    digest = hashlib.sha256()
    state = {"size": 0, "sink": None}
    age = None
    age_err = tempfile.TemporaryFile()
    key = obj["key"]

    def transfer():
        kwargs = {"Bucket": bucket, "Key": key}
        if state["size"]:
            kwargs["Range"] = "bytes=%d-" % state["size"]
        body = s3.client.get_object(**kwargs)["Body"]
        # A read blocked on a stalled server would otherwise outlast the deadline by up to the read timeout.
        guard = s3.deadline.child()
        on_stop(guard, lambda: shut_socket(body))
        try:
            for chunk in iter(lambda: body.read(CHUNK), b""):
                s3.deadline.check("the download of %s" % key)
                digest.update(chunk)
                state["size"] += len(chunk)
                if state["sink"] is not None:
                    try:
                        state["sink"].write(chunk)
                    except (BrokenPipeError, OSError):
                        state["sink"] = None  # age gave up (reported below); keep hashing to name the real cause
        except Exception:
            raise_if_cut(guard)
            raise
        finally:
            guard.stop(ENDED)
            body.close()
        raise_if_cut(guard)  # a cut read may also end as a short end of file

    def raise_if_cut(guard):
        if guard.reason not in (None, ENDED):
            raise RunStopped("%s during the download of %s at byte %d" % (guard.reason, key, state["size"]))

    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        if identity_file:
            age = subprocess.Popen(["age", "-d", "-i", identity_file], stdin=subprocess.PIPE, stdout=out,
                                   stderr=age_err, cwd="/")
        state["sink"] = age.stdin if age else out
        try:
            call(transfer, "the download of %s" % key, s3.policy, s3.deadline)
        except (S3Unavailable, RunStopped) as exc:
            raise RestoreError("%s; no database was touched" % exc)
        except Exception as exc:
            raise RestoreError("%s; no database was touched" % backup_s3.describe_error(exc, "download of %s" % key))
        finally:
            if age:
                try:
                    age.stdin.close()
                except (BrokenPipeError, OSError):
                    pass
                try:
                    age.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    age.kill()
                    age.wait()
    size = state["size"]
    actual = digest.hexdigest()
    if size != obj["bytes"] or actual != obj["sha256"]:
        raise ChecksumError(
            "checksum mismatch for s3://%s/%s: manifest says %d bytes sha256 %s, downloaded %d bytes sha256 %s; "
            "no database was touched" % (bucket, key, obj["bytes"], obj["sha256"], size, actual))
    if age and age.returncode != 0:
        age_err.seek(0)
        raise RestoreError("age -d failed for %s: %s" % (key, one_line(age_err.read().decode("utf-8", "replace"))))
    return {"bytes": size, "sha256": actual}


def shut_socket(body):
    """Shuts the socket under a botocore StreamingBody: a read blocked on it
    returns at once (closing the file alone does not wake a blocked recv)."""
    raw = getattr(body, "_raw_stream", None)
    sock = getattr(getattr(raw, "_connection", None), "sock", None)
    if sock is None:  # the connection already handed back: the socket behind http.client's file
        fp = getattr(getattr(raw, "_fp", None), "fp", None)
        sock = getattr(getattr(fp, "raw", None), "_sock", None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def compare_counts(expected, actual):
    """Tables whose counts differ or that are missing; tables only in `actual` are not errors."""
    problems = []
    for table in sorted(expected):
        if table not in actual:
            problems.append("%s missing" % table)
        elif actual[table] != expected[table]:
            problems.append("%s has %d rows, manifest %d" % (table, actual[table], expected[table]))
    return problems


def restore_deadline(manifest):
    """The overall deadline of a restore when none is set: an hour, plus twenty
    minutes per GiB of the uncompressed dump (pg_restore also builds the indexes)."""
    dump = manifest["objects"]["dump"]
    return default_deadline(dump.get("plain_bytes") or dump["bytes"], seconds_per_gib=1200)


def run_restore(params, check_mode=False, deadline=None):
    """One verified restore. `deadline`: the run's backup_retry.Deadline, started
    here once the manifest tells the dump's size; it bounds the download (between
    reads; a stalled read ends at the S3 read timeout), pg_restore and the counts."""
    database = params["database"]
    bucket = params["s3_bucket"]
    prefix = params["s3_prefix"]
    deadline = deadline or Deadline()
    s3 = s3_from(params, deadline)
    committed, _incomplete = backup_s3.list_backups(s3, bucket, prefix, database)
    backup_id = resolve_backup_id(committed, params.get("backup"))
    manifest = backup_s3.read_manifest(s3, bucket, prefix, database, backup_id)
    check_manifest(manifest, prefix, database, backup_id)
    encrypted = manifest.get("encryption", {}).get("method") == "age"
    if encrypted and not params.get("age_identity"):
        raise RestoreError("backup %s is encrypted with age; age_identity is required" % backup_id)
    target = params.get("target") or scratch_name(database, backup_id)
    clock = time.monotonic()
    seconds = params.get("deadline_seconds") or restore_deadline(manifest)
    deadline.start(seconds)

    with connection_from(params, deadline) as conn:
        exists = database_exists(conn, target)
        if exists and params.get("confirm_overwrite") != target:
            raise RestoreError("target database %s exists; an in-place restore (pg_restore --clean --if-exists) "
                               "needs confirm_overwrite=%s" % (target, target))
        result = {"changed": True, "backup_id": backup_id, "target": target, "in_place": exists,
                  "manifest_key": manifest["_key"], "encrypted": encrypted, "deadline_seconds": seconds}
        if check_mode:
            result["msg"] = "would restore %s backup %s into %s%s" % (
                database, backup_id, target, " (in place)" if exists else " (new database)")
            return result

        with DatabaseLock(params["lock_dir"], "restore-" + database, "restore"):
            work = tempfile.mkdtemp(prefix="keelson-restore-", dir=params.get("work_dir") or "/var/tmp")
            try:
                result.update(_restore_in(work, s3, bucket, manifest, conn, target, exists, encrypted, params))
            finally:
                shutil.rmtree(work, ignore_errors=True)
    result["duration_seconds"] = round(time.monotonic() - clock, 3)
    result["msg"] = "restored %s backup %s into %s: %d tables, %d rows match the manifest in %.1fs" % (
        database, backup_id, target, result["tables"], result["rows"], result["duration_seconds"])
    return result


def _restore_in(work, s3, bucket, manifest, conn, target, exists, encrypted, params):
    dump = manifest["objects"]["dump"]
    need = dump["bytes"]
    free = shutil.disk_usage(work).free
    if free < need * 1.1:
        raise RestoreError("not enough space in %s: %d bytes free, the dump needs %d" % (work, free, need))
    identity = None
    if encrypted:
        identity = os.path.join(work, "identity")
        fd = os.open(identity, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(params["age_identity"].strip() + "\n")
    dump_file = os.path.join(work, "dump.pgc")
    download_verified(s3, bucket, dump, dump_file, identity)
    globals_file = None
    if params.get("restore_globals"):
        if "globals" not in manifest["objects"]:
            raise RestoreError("backup %s has no globals" % manifest["id"])
        globals_file = os.path.join(work, "globals.sql")
        download_verified(s3, bucket, manifest["objects"]["globals"], globals_file, identity)
    if identity:
        os.unlink(identity)
    if conn.os_user:
        entry = pwd.getpwnam(conn.os_user)
        for path in [work, dump_file] + ([globals_file] if globals_file else []):
            os.chown(path, entry.pw_uid, entry.pw_gid)

    toc = toc_sha256(conn.run(["pg_restore", "-l", dump_file]))
    if toc != manifest["toc_sha256"]:
        raise ChecksumError("table of contents of backup %s does not match its manifest; no database was touched"
                            % manifest["id"])

    # From here on a database is touched.
    warnings = []
    if globals_file:
        out = subprocess.run(["psql", "-X", "-q", "-d", "postgres", "-f", globals_file], capture_output=True,
                             text=True, check=False, **conn.popen_kwargs())
        warnings += ["globals: " + line for line in out.stderr.splitlines() if "ERROR" in line]
    created = False
    if not exists:
        conn.psql("postgres", "CREATE DATABASE %s TEMPLATE template0;" % quote_ident(target))
        created = True
    argv = ["pg_restore", "-j", str(params.get("jobs") or 2), "--exit-on-error", "-d", target]
    if exists:
        argv += ["--clean", "--if-exists"]
    if params.get("no_owner"):
        argv += ["--no-owner", "--no-privileges"]
    try:
        conn.run(argv + [dump_file])
        counts = parse_row_counts(conn.psql(target, ROW_COUNT_SQL))
    except (PgError, RunStopped) as exc:
        raise RestoreError("%s; %s" % (exc, _after_failure(conn, target, created)))
    problems = compare_counts(manifest["row_counts"], counts)
    if problems:
        kept = "kept for inspection"
        if created and params.get("drop_after"):
            _drop(conn, target)
            kept = "dropped"
        raise RestoreError("row counts in %s differ from backup %s: %s; %s %s" % (
            target, manifest["id"], "; ".join(problems[:10]), target, kept))
    extra = sorted(set(counts) - set(manifest["row_counts"]))
    if extra:
        warnings.append("tables not in the backup: %s" % ", ".join(extra[:10]))
    dropped = False
    if created and params.get("drop_after"):
        _drop(conn, target)
        dropped = True
    return {"tables": len(manifest["row_counts"]), "rows": sum(manifest["row_counts"].values()),
            "row_counts": counts, "dropped": dropped, "warnings": warnings, "jobs": params.get("jobs") or 2}


def _after_failure(conn, target, created):
    """What a pg_restore that failed or was stopped leaves, in words: a database it
    created is dropped (half a restore is no use, and it would block a rerun)."""
    if created:
        conn.deadline = None  # the drop must run even when the deadline is what ended the restore
        _drop(conn, target)
        return "the new database %s was dropped" % target
    return "%s was restored in place only partly; restore it again" % target


def _drop(conn, target):
    conn.psql("postgres", "DROP DATABASE IF EXISTS %s WITH (FORCE);" % quote_ident(target))


def record_verify_metrics(metrics_dir, database, ok, result=None, now=None):
    stem = "keelson_backup_verify_%s" % database
    path = "%s/%s.prom" % (metrics_dir, stem)
    now = time.time() if now is None else now
    last_success = now if ok else (read_metric(path, "keelson_backup_verify_last_success_timestamp_seconds") or 0)
    return write_metrics(metrics_dir, stem, {"database": database}, [
        ("keelson_backup_verify_last_run_success", "1 if the last test restore matched its manifest, else 0.", 1 if ok else 0),
        ("keelson_backup_verify_last_run_timestamp_seconds", "Time of the last test restore.", now),
        ("keelson_backup_verify_last_success_timestamp_seconds", "Time of the last successful test restore.", last_success),
        ("keelson_backup_verify_last_duration_seconds", "Duration of the last test restore.",
         result["duration_seconds"] if ok else 0),
    ])
