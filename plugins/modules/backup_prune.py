#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: keelson.stack developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: backup_prune
short_description: Apply grandfather-father-son retention to pg_backup backups in S3
version_added: 0.1.0
description:
  - Lists exactly C(<s3_prefix>/<database>/) (never a neighbouring prefix such as C(<s3_prefix>-other/)) and
    considers only backups that have a manifest. Backups without one (running or failed) are reported and
    left alone.
  - Keeps the newest backup of each of the newest O(keep_daily) days, O(keep_weekly) ISO weeks and
    O(keep_monthly) months (UTC calendar buckets), the newest O(keep_last) backups whatever their day,
    and always the newest backup.
  - Deletes only the objects a manifest lists, manifest first, and only keys inside that backup's own
    directory.
  - The selection is the pure function behind the C(keelson.stack.gfs_retention) filter.
  - Aborts the multipart uploads under C(<s3_prefix>/<database>/) older than O(abort_uploads_after_hours) that
    a killed run left open (a run aborts its own upload on any failure it lives through), and reports them.
    While a backup of the database runs (it holds the lock in O(lock_dir)), none is aborted. Run it on the
    database host, where that lock lives.
author:
  - keelson.stack developers (@keelson)
requirements:
  - boto3 1.26 or later
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: Reports what would be kept and deleted; deletes nothing.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
extends_documentation_fragment:
  - keelson.stack.backup_s3
  - keelson.stack.backup_retention
options:
  database:
    description: Database whose backups are pruned.
    type: str
    required: true
  lock_dir:
    description: Directory of the backup lock files (the same as M(keelson.stack.pg_backup)'s).
    type: path
    default: /run/lock/keelson-backup
"""

EXAMPLES = r"""
- name: Keep 30 daily, 12 weekly and 12 monthly backups of app
  keelson.stack.backup_prune:
    database: app
    keep_daily: 30
    keep_weekly: 12
    keep_monthly: 12
    s3_bucket: backups
    s3_prefix: staging/postgresql/db1
    s3_access_key: "{{ vault_backup_s3_access_key }}"
    s3_secret_key: "{{ vault_backup_s3_secret_key }}"
"""

RETURN = r"""
keep:
  description: Backup ids kept, newest first.
  returned: always
  type: list
  elements: str
delete:
  description: Backup ids deleted (or, in check mode, that would be), newest first.
  returned: always
  type: list
  elements: str
reasons:
  description: >-
    For each kept backup, why (C(newest), C(last 2), C(daily 2026-11-22), C(weekly 2026-W47), C(monthly 2026-11)).
  returned: always
  type: dict
incomplete:
  description: Backup ids without a manifest, left alone.
  returned: always
  type: list
  elements: str
deleted_keys:
  description: Object keys deleted.
  returned: always
  type: list
  elements: str
aborted_uploads:
  description: Abandoned multipart uploads aborted (or, in check mode, that would be), with key, upload id and age.
  returned: always
  type: list
  elements: dict
open_uploads_kept:
  description: Open multipart uploads left alone (younger than O(abort_uploads_after_hours), or a live run's).
  returned: always
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.keelson.stack.plugins.module_utils.backup_args import RETENTION_ARGS, S3_ARGS, spec

try:
    from ansible_collections.keelson.stack.plugins.module_utils.backup_pruning import prune_outcome
    IMPORT_ERROR = None
except ImportError as exc:
    IMPORT_ERROR = exc


def main():
    module = AnsibleModule(
        argument_spec=spec(
            S3_ARGS, RETENTION_ARGS,
            database=dict(type="str", required=True),
            lock_dir=dict(type="path", default="/run/lock/keelson-backup"),
        ),
        supports_check_mode=True,
    )
    if IMPORT_ERROR is not None:
        module.fail_json(msg="cannot load backup_prune logic: %s" % IMPORT_ERROR)
    result = prune_outcome(module.params, check_mode=module.check_mode)
    if result["failed"]:
        module.fail_json(**result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
