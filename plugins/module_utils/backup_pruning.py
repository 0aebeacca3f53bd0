# -*- coding: utf-8 -*-
# Copyright: keelson.stack developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Applies GFS retention to the committed backups of one database under an
exact prefix. Only objects a manifest lists are deleted; the manifest goes
first, so an interrupted prune leaves uncommitted leftovers, never a manifest
that points at missing data."""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime

from ansible_collections.keelson.stack.plugins.module_utils import backup_s3
from ansible_collections.keelson.stack.plugins.module_utils.backup_local import DatabaseLock, LockHeld
from ansible_collections.keelson.stack.plugins.module_utils.backup_dump import s3_from
from ansible_collections.keelson.stack.plugins.module_utils.backup_restore import RestoreError, check_manifest
from ansible_collections.keelson.stack.plugins.module_utils.backup_retention import select_retention


def prune_outcome(params, check_mode=False, deadline=None):
    """run_prune's result with `failed: false`, or `failed: true` and one line:
    the form both backup_prune and pg_backup's `prune` report (after a backup,
    a failed prune must not undo the backup's success)."""
    try:
        return dict(run_prune(params, check_mode, deadline), failed=False)
    except Exception as exc:  # every failure becomes one line
        return {"failed": True, "changed": False, "msg": "prune of %s failed: %s" % (
            params["database"], str(exc).replace("\n", " ") or type(exc).__name__)}


def run_prune(params, check_mode=False, deadline=None):
    database = params["database"]
    bucket = params["s3_bucket"]
    prefix = params["s3_prefix"]
    s3 = s3_from(params, deadline)
    committed, incomplete = backup_s3.list_backups(s3, bucket, prefix, database)
    selection = select_retention([{"id": i, "time": backup_s3.id_time(i)} for i in committed],
                                 daily=params["keep_daily"], weekly=params["keep_weekly"],
                                 monthly=params["keep_monthly"], last=params["keep_last"])
    if committed and committed[-1] not in selection["keep"]:
        raise RuntimeError("retention selected the newest backup for deletion")  # select_retention guarantees otherwise

    deleted_keys = []
    if not check_mode:
        for backup_id in selection["delete"]:
            manifest = backup_s3.read_manifest(s3, bucket, prefix, database, backup_id)
            try:
                check_manifest(manifest, prefix, database, backup_id)
            except RestoreError as exc:
                raise backup_s3.S3Error("refusing to prune %s: %s" % (backup_id, exc))
            keys = [manifest["_key"]] + [obj["key"] for obj in manifest["objects"].values()]
            for key in keys:
                try:
                    s3.delete_object(Bucket=bucket, Key=key)
                except Exception as exc:
                    raise backup_s3.S3Error(backup_s3.describe_error(exc, "DeleteObject %s" % key))
                deleted_keys.append(key)

    uploads = abandoned_uploads(s3, bucket, prefix, database, params, check_mode)
    return {
        "changed": bool(selection["delete"]) or bool(uploads["aborted"]),
        "aborted_uploads": uploads["aborted"],
        "open_uploads_kept": uploads["kept"],
        "keep": selection["keep"],
        "delete": selection["delete"],
        "reasons": selection["reasons"],
        "incomplete": incomplete,
        "deleted_keys": deleted_keys,
        "msg": "%s: keep %d, %s %d backups under s3://%s/%s (%d without manifest left alone)%s" % (
            database, len(selection["keep"]), "would delete" if check_mode else "deleted",
            len(selection["delete"]), bucket, backup_s3.database_prefix(prefix, database), len(incomplete),
            uploads["msg"]),
    }


def select_abandoned(uploads, now, max_age_seconds, live):
    """(abandoned, kept) among open multipart uploads [(key, id, initiated)]:
    abandoned when older than max_age_seconds and no live run owns the
    database. Pure, for unit tests."""
    abandoned, kept = [], []
    for key, upload_id, initiated in uploads:
        age = (now - initiated).total_seconds() if initiated is not None else None
        entry = {"key": key, "upload_id": upload_id, "age_seconds": None if age is None else int(age)}
        (abandoned if not live and age is not None and age >= max_age_seconds else kept).append(entry)
    return abandoned, kept


def abandoned_uploads(s3, bucket, prefix, database, params, check_mode=False, now=None):
    """Aborts the multipart uploads that runs killed before their own abort left
    under <prefix>/<database>/, once older than abort_uploads_after_hours. The
    database's backup lock tells a live run apart: while a run holds it, nothing
    is aborted (the age bound alone could catch a long run's upload)."""
    hours = params.get("abort_uploads_after_hours")
    if not hours:
        return {"aborted": [], "kept": [], "msg": ""}
    now = now or datetime.datetime.now(datetime.timezone.utc)
    found = backup_s3.list_open_uploads(s3, bucket, backup_s3.database_prefix(prefix, database))
    if not found:
        return {"aborted": [], "kept": [], "msg": ""}
    try:
        with DatabaseLock(params.get("lock_dir") or "/run/lock/keelson-backup", database, "backup"):
            abandoned, kept = select_abandoned(found, now, hours * 3600, live=False)
            if not check_mode:
                for upload in abandoned:
                    s3.call("abort_multipart_upload", what="the abort of upload %s" % upload["upload_id"],
                            Bucket=bucket, Key=upload["key"], UploadId=upload["upload_id"])
    except LockHeld:
        abandoned, kept = select_abandoned(found, now, hours * 3600, live=True)
    msg = "; %s %d abandoned multipart upload(s)%s" % (
        "would abort" if check_mode else "aborted", len(abandoned),
        ", %d open upload(s) kept (younger than %g h or owned by a live run)" % (len(kept), hours) if kept else "")
    return {"aborted": abandoned, "kept": kept, "msg": msg}
