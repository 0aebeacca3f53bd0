# -*- coding: utf-8 -*-
# Copyright: keelson.stack developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One backup of one database: pg_dump (in an exported snapshot, so the row
counts taken in the same snapshot match the dump exactly) -> optional age ->
S3 multipart upload; globals; then the manifest, the commit marker."""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import json
import platform
import socket
import subprocess
import threading
import time

from ansible_collections.keelson.stack.plugins.module_utils import backup_s3
from ansible_collections.keelson.stack.plugins.module_utils.backup_local import (
    DatabaseLock, read_metric, write_metrics)
from ansible_collections.keelson.stack.plugins.module_utils.backup_pg import (
    ROW_COUNT_SQL, Connection, PgError, PsqlSession, choose_compression, parse_row_counts,
    tool_version, toc_entries, toc_sha256)
from ansible_collections.keelson.stack.plugins.module_utils.backup_retry import (
    BoundedS3, Deadline, Policy, RunStopped, S3Unavailable, default_deadline)
from ansible_collections.keelson.stack.plugins.module_utils.backup_stream import (
    Producer, ProducerStream, Tee, upload_stream)

MANIFEST_FORMAT = "keelson-pg-backup/1"


class BackupError(Exception):
    """The backup failed; the message is one line."""


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc)


def iso(when):
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def backup_id_for(when):
    return when.strftime("%Y%m%dT%H%M%SZ")


def connection_from(params, deadline=None):
    return Connection(host=params.get("pg_host"), port=params.get("pg_port") or 5432,
                      user=params.get("pg_user") or "postgres", password=params.get("pg_password"),
                      os_user=params.get("pg_os_user"), deadline=deadline)


def policy_from(params):
    return Policy(attempts=params.get("s3_attempts") or 5, max_delay=params.get("s3_retry_max_delay") or 20,
                  connect_timeout=params.get("s3_connect_timeout") or 10,
                  read_timeout=params.get("s3_read_timeout") or 60)


def s3_from(params, deadline=None):
    """The bounded S3 client of backup, restore, verify and prune: every call
    has the connect/read timeouts and the retry policy of `params`."""
    policy = policy_from(params)
    raw = backup_s3.client(params.get("s3_endpoint_url"), params.get("s3_access_key"),
                           params.get("s3_secret_key"), params.get("s3_region") or "us-east-1",
                           connect_timeout=policy.connect_timeout, read_timeout=policy.read_timeout)
    return BoundedS3(raw, policy, deadline)


def age_argv(recipients):
    argv = ["age"]
    for recipient in recipients:
        argv += ["-r", recipient]
    return argv


def _upload(s3, bucket, key, conn, argv, recipients, workers, deadline, tee_argv=None):
    """Streams one producer (plus age when there are recipients) to `key`."""
    kwargs = conn.popen_kwargs()
    producers = [Producer(argv[0], argv, env=kwargs["env"], user=kwargs.get("user"))]
    if recipients:
        producers.append(Producer("age", age_argv(recipients), stdin=subprocess.PIPE))
    tee = Tee(tee_argv, env=kwargs["env"], user=kwargs.get("user")) if tee_argv else None
    stream = ProducerStream(producers, tee=tee)
    try:
        parts = upload_stream(s3, bucket, key, stream, workers=workers, deadline=deadline)
    except Exception as exc:
        if tee is not None:
            tee.kill()
        upload = getattr(exc, "aborted_upload_id", None)
        what = "upload of %s%s" % (key, " (multipart upload %s aborted)" % upload if upload else "")
        if isinstance(exc, (S3Unavailable, RunStopped)):  # the cause first: it is what the operator must read
            raise BackupError("%s; %s" % (exc, what))
        if hasattr(exc, "response"):
            raise BackupError(backup_s3.describe_error(exc, what))
        raise BackupError("%s: %s" % (what, exc))
    info = {"key": key, "bytes": stream.bytes, "plain_bytes": stream.plain_bytes,
            "sha256": stream.sha256.hexdigest(), "parts": parts}
    return info, tee


class _Beside(object):
    """A call run in a thread beside the dump; result() waits for it, then returns its
    value or raises its error."""

    def __init__(self, name, func, *args):
        self._out = {}
        self._thread = threading.Thread(target=self._run, args=(func,) + args, name=name)
        self._thread.daemon = True
        self._thread.start()

    def _run(self, func, *args):
        try:
            self._out["value"] = func(*args)
        except BaseException as exc:  # handed to the caller by result()
            self._out["error"] = exc

    def result(self):
        self._thread.join()
        if "error" in self._out:
            raise self._out["error"]
        return self._out["value"]

    def succeeded(self):
        self._thread.join()
        return "value" in self._out


def _delete_quietly(s3, bucket, keys):
    for key in keys:
        try:  # a budget of its own: the run's deadline may be what ended it
            s3.call("delete_object", deadline=Deadline(), policy=s3.patient(), Bucket=bucket, Key=key)
        except Exception:  # best effort: an object without a manifest is never restored or pruned
            pass


def run_backup(params, check_mode=False, deadline=None):
    """One backup. `deadline`: the run's backup_retry.Deadline, without an end
    yet (set here, once the database's size is known) so that a SIGTERM
    handler can stop it from the start."""
    database = params["database"]
    bucket = params["s3_bucket"]
    recipients = params.get("age_recipients") or []
    started = utc_now()
    clock = time.monotonic()
    backup_id = backup_id_for(started)
    base = backup_s3.backup_dir(params["s3_prefix"], database, backup_id)
    suffix = ".age" if recipients else ""
    dump_key = base + "dump.pgc" + suffix
    globals_key = base + "globals.sql" + suffix
    manifest_key = base + backup_s3.MANIFEST_NAME
    deadline = deadline or Deadline()
    s3 = s3_from(params, deadline)

    with DatabaseLock(params["lock_dir"], database, "backup"), connection_from(params, deadline) as conn:
        backup_s3.check_bucket(s3, bucket)
        session = PsqlSession(conn, database, deadline)
        uploaded = []
        globals_upload = None
        try:
            server_version, size = session.query("SELECT current_setting('server_version'), "
                                                 "pg_database_size(current_database());")[0].split("|")
            seconds = params.get("deadline_seconds") or default_deadline(int(size))
            deadline.start(seconds)
            pg_dump_version = tool_version(conn, "pg_dump")
            method, compress_args = choose_compression(conn, database, params.get("compression") or "auto",
                                                       params.get("compression_level"), pg_dump_version)
            plan = {"changed": True, "backup_id": backup_id, "key": dump_key, "manifest_key": manifest_key,
                    "compression": method, "encrypted": bool(recipients), "deadline_seconds": seconds}
            if check_mode:
                session.close()
                plan["msg"] = "would back up %s to s3://%s/%s" % (database, bucket, dump_key)
                return plan

            if params.get("lock_wait_timeout"):  # the row counts take the same table locks as pg_dump
                session.query("SET lock_timeout = '%ds';" % params["lock_wait_timeout"])
            snapshot = session.query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;\n"
                                     "SELECT pg_catalog.pg_export_snapshot();")[-1]
            # Counted while pg_dump runs, in the snapshot pg_dump uses, by one backend:
            # a parallel count(*) would take the cores pg_dump's compression needs.
            session.query("SET max_parallel_workers_per_gather = 0;")
            session.send(ROW_COUNT_SQL)
            if params.get("globals", True):  # small: uploaded while the dump streams
                globals_upload = _Beside("backup-globals", _upload, s3, bucket, globals_key, conn,
                                         ["pg_dumpall", "--globals-only"], recipients, 1, deadline)
            dump_argv = ["pg_dump", "-Fc"] + compress_args + ["--snapshot=" + snapshot, "-d", database]
            if params.get("lock_wait_timeout"):
                dump_argv.insert(2, "--lock-wait-timeout=%ds" % params["lock_wait_timeout"])
            dump, tee = _upload(s3, bucket, dump_key, conn, dump_argv, recipients, params.get("upload_workers") or 1,
                                deadline, tee_argv=["pg_restore", "-l"])
            uploaded.append(dump_key)
            toc_rc, listing = tee.result()
            if toc_rc != 0 or not toc_entries(listing):
                raise BackupError("pg_restore -l could not read the table of contents of the dump")
            row_counts = parse_row_counts(session.result())
            session.close()

            objects = {"dump": dump}
            if globals_upload is not None:
                objects["globals"] = globals_upload.result()[0]

            finished = utc_now()
            manifest = {
                "format": MANIFEST_FORMAT,
                "id": backup_id,
                "database": database,
                "host": socket.gethostname(),
                "started_at": iso(started),
                "finished_at": iso(finished),
                "duration_seconds": round(time.monotonic() - clock, 3),
                "server_version": server_version,
                "tools": {"pg_dump": pg_dump_version,
                          "age": _age_version() if recipients else None,
                          "python": platform.python_version(),
                          "boto3": _boto3_version()},
                "compression": {"method": method, "pg_dump_args": compress_args},
                "encryption": {"method": "age", "recipients": list(recipients)} if recipients else {"method": "none"},
                "objects": objects,
                "toc_sha256": toc_sha256(listing),
                "toc_entries": len(toc_entries(listing)),
                "row_counts": row_counts,
            }
            body = json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8")
            try:
                s3.call("put_object", what="the manifest upload", Bucket=bucket, Key=manifest_key, Body=body,
                        ContentType="application/json")
            except (S3Unavailable, RunStopped):
                raise
            except Exception as exc:
                raise BackupError(backup_s3.describe_error(exc, "PutObject %s" % manifest_key))
        except BaseException:
            session.close(patience=5)
            if globals_upload is not None and globals_upload.succeeded():
                uploaded.append(globals_key)
            _delete_quietly(s3, bucket, uploaded)
            raise

    duration = time.monotonic() - clock
    return {
        "changed": True,
        "backup_id": backup_id,
        "key": dump_key,
        "manifest_key": manifest_key,
        "bytes": dump["bytes"],
        "plain_bytes": dump["plain_bytes"],
        "sha256": dump["sha256"],
        "parts": dump["parts"],
        "compression": method,
        "encrypted": bool(recipients),
        "tables": len(row_counts),
        "rows": sum(row_counts.values()),
        "duration_seconds": round(duration, 3),
        "deadline_seconds": seconds,
        "msg": "backup %s of %s ok: %d bytes in %.1fs, %d tables, %d rows, s3://%s/%s" % (
            backup_id, database, dump["bytes"], duration, len(row_counts), sum(row_counts.values()),
            bucket, manifest_key),
    }


def record_metrics(metrics_dir, database, ok, result=None, now=None):
    """Writes keelson_backup_* for node_exporter; a failure keeps the last success's figures."""
    stem = "keelson_backup_%s" % database
    path = "%s/%s.prom" % (metrics_dir, stem)
    now = time.time() if now is None else now
    last_success = now if ok else (read_metric(path, "keelson_backup_last_success_timestamp_seconds") or 0)
    size = result["bytes"] if ok else (read_metric(path, "keelson_backup_last_size_bytes") or 0)
    duration = result["duration_seconds"] if ok else (read_metric(path, "keelson_backup_last_duration_seconds") or 0)
    return write_metrics(metrics_dir, stem, {"database": database}, [
        ("keelson_backup_last_run_success", "1 if the last backup run succeeded, else 0.", 1 if ok else 0),
        ("keelson_backup_last_run_timestamp_seconds", "Time of the last backup run.", now),
        ("keelson_backup_last_success_timestamp_seconds", "Time of the last successful backup.", last_success),
        ("keelson_backup_last_size_bytes", "Stored size of the last successful backup.", size),
        ("keelson_backup_last_duration_seconds", "Duration of the last successful backup.", duration),
    ])


def _age_version():
    try:
        return subprocess.run(["age", "--version"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return None


def _boto3_version():
    import boto3
    return boto3.__version__


__all__ = ["BackupError", "PgError", "run_backup", "record_metrics"]
