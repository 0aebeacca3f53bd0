# -*- coding: utf-8 -*-
# Copyright: keelson.stack developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Applies GFS retention to the committed backups of one database under an
exact prefix. Only objects a manifest lists are deleted; the manifest goes
first, so an interrupted prune leaves uncommitted leftovers, never a manifest
that points at missing data."""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.keelson.stack.plugins.module_utils import backup_s3
from ansible_collections.keelson.stack.plugins.module_utils.backup_dump import s3_from
from ansible_collections.keelson.stack.plugins.module_utils.backup_restore import RestoreError, check_manifest
from ansible_collections.keelson.stack.plugins.module_utils.backup_retention import select_retention


def run_prune(params, check_mode=False):
    database = params["database"]
    bucket = params["s3_bucket"]
    prefix = params["s3_prefix"]
    s3 = s3_from(params)
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

    return {
        "changed": bool(selection["delete"]),
        "keep": selection["keep"],
        "delete": selection["delete"],
        "reasons": selection["reasons"],
        "incomplete": incomplete,
        "deleted_keys": deleted_keys,
        "msg": "%s: keep %d, %s %d backups under s3://%s/%s (%d without manifest left alone)" % (
            database, len(selection["keep"]), "would delete" if check_mode else "deleted",
            len(selection["delete"]), bucket, backup_s3.database_prefix(prefix, database), len(incomplete)),
    }
