#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: keelson.stack developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: pg_restore
short_description: Restore a PostgreSQL backup made by pg_backup, verified against its manifest
version_added: 0.1.0
description:
  - Picks a committed backup (one with a manifest) of O(database) under O(s3_prefix), downloads the dump to
    a private file while hashing it (and decrypting it with age when it is encrypted), and refuses to go on
    if the size, the sha256 or the C(pg_restore -l) table of contents differ from the manifest. No database
    is touched before these checks pass.
  - Restores with C(pg_restore -j) into a new database (by default a scratch database named
    C(<database>_restore_<backup id>)) and compares every table's row count with the manifest; any
    difference fails the task.
  - Restoring into an existing database (in place, C(pg_restore --clean --if-exists)) needs
    O(confirm_overwrite) set to the target's name.
  - Optionally restores the globals (roles, tablespaces) first; errors such as existing roles are reported
    as warnings.
author:
  - keelson.stack developers (@keelson)
requirements:
  - python3-boto3 (boto3 1.26 or later) on the database host
  - PostgreSQL client tools matching the server
  - age, for encrypted backups
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: Resolves the backup and target and reports what would be restored; downloads and restores nothing.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
extends_documentation_fragment:
  - keelson.stack.backup_s3
options:
  database:
    description: Name of the backed-up database (selects C(<s3_prefix>/<database>/)).
    type: str
    required: true
  backup:
    description: C(latest), a backup id (C(YYYYMMDDTHHMMSSZ)), or an ISO 8601 time with a zone (the newest backup started at or before it).
    type: str
    default: latest
  target:
    description: Database to restore into; a new scratch database named after the backup when omitted.
    type: str
  confirm_overwrite:
    description: Must equal O(target) when the target database exists; otherwise the restore is refused.
    type: str
  jobs:
    description: Parallel jobs for C(pg_restore -j).
    type: int
    default: 2
  no_owner:
    description: Restore without ownership and privileges (for servers lacking the original roles).
    type: bool
    default: false
  restore_globals:
    description: Also restore the globals dump (roles, tablespaces) before the database.
    type: bool
    default: false
  drop_after:
    description:
      - Drop the database after a successful check, and after a failed one, when this run created it (test restores).
      - A database this run created is dropped whenever C(pg_restore) fails or is stopped, whatever this option.
    type: bool
    default: false
  deadline_seconds:
    description:
      - Longest time the restore may take, counted from the manifest's reading. When it passes (or on SIGTERM),
        the step it is in (download, C(pg_restore), the row counts) is stopped, a database this run created is
        dropped, the work directory removed, and the run fails naming the step.
      - The deadline is checked between reads of the download; a read that stalls ends at O(s3_read_timeout).
      - C(0) scales it with the dump, one hour plus twenty minutes per GiB of uncompressed dump.
    type: int
    default: 0
  age_identity:
    description: Contents of the age identity file for encrypted backups; written to a private 0600 file and removed.
    type: str
  work_dir:
    description: Directory for the downloaded dump (a private subdirectory is created and removed).
    type: path
    default: /var/tmp
  lock_dir:
    description: Directory for the per-target lock files.
    type: path
    default: /run/lock/keelson-backup
  metrics_dir:
    description: node_exporter textfile directory for C(keelson_backup_verify_*) metrics (written when set).
    type: path
  pg_host:
    description: Server host or socket directory; the default local socket when omitted.
    type: str
  pg_port:
    description: Server port.
    type: int
    default: 5432
  pg_user:
    description: Database role used to restore (creates databases).
    type: str
    default: postgres
  pg_password:
    description: Password of O(pg_user), passed through a temporary C(PGPASSFILE). Omit for peer authentication.
    type: str
  pg_os_user:
    description: Operating system user the client tools run as.
    type: str
    default: postgres
"""

EXAMPLES = r"""
- name: Restore the latest backup of app into a scratch database
  keelson.stack.pg_restore:
    database: app
    s3_bucket: backups
    s3_prefix: staging/postgresql/db1
    s3_access_key: "{{ vault_backup_s3_access_key }}"
    s3_secret_key: "{{ vault_backup_s3_secret_key }}"
    age_identity: "{{ vault_backup_age_identity }}"

- name: Put last night's backup back in place
  keelson.stack.pg_restore:
    database: app
    backup: "2026-11-22T03:00:00Z"
    target: app
    confirm_overwrite: app
    s3_bucket: backups
    s3_prefix: staging/postgresql/db1
    s3_access_key: "{{ vault_backup_s3_access_key }}"
    s3_secret_key: "{{ vault_backup_s3_secret_key }}"
"""

RETURN = r"""
backup_id:
  description: The backup restored.
  returned: always
  type: str
target:
  description: Database restored into.
  returned: always
  type: str
in_place:
  description: Whether the target existed (restore with C(--clean --if-exists)).
  returned: always
  type: bool
tables:
  description: Tables whose row counts were checked.
  returned: success
  type: int
rows:
  description: Total rows checked.
  returned: success
  type: int
row_counts:
  description: Row count per table in the restored database.
  returned: success
  type: dict
dropped:
  description: Whether the restored database was dropped afterwards.
  returned: success
  type: bool
deadline_seconds:
  description: The deadline the restore had (O(deadline_seconds), or the one scaled with the dump).
  returned: success
  type: int
duration_seconds:
  description: Wall time of the restore.
  returned: success
  type: float
outcome:
  description: C(ok) or C(failed).
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.keelson.stack.plugins.module_utils.backup_args import PG_ARGS, S3_ARGS, spec
from ansible_collections.keelson.stack.plugins.module_utils.backup_local import stop_on_signals
from ansible_collections.keelson.stack.plugins.module_utils.backup_retry import Deadline

try:
    from ansible_collections.keelson.stack.plugins.module_utils.backup_restore import record_verify_metrics, run_restore
    IMPORT_ERROR = None
except ImportError as exc:
    IMPORT_ERROR = exc


def main():
    module = AnsibleModule(
        argument_spec=spec(
            S3_ARGS, PG_ARGS,
            database=dict(type="str", required=True),
            backup=dict(type="str", default="latest"),
            target=dict(type="str"),
            confirm_overwrite=dict(type="str"),
            jobs=dict(type="int", default=2),
            no_owner=dict(type="bool", default=False),
            restore_globals=dict(type="bool", default=False),
            drop_after=dict(type="bool", default=False),
            age_identity=dict(type="str", no_log=True),
            work_dir=dict(type="path", default="/var/tmp"),
            lock_dir=dict(type="path", default="/run/lock/keelson-backup"),
            metrics_dir=dict(type="path"),
            deadline_seconds=dict(type="int", default=0),
        ),
        supports_check_mode=True,
    )
    if IMPORT_ERROR is not None:
        module.fail_json(msg="cannot load pg_restore logic: %s" % IMPORT_ERROR, outcome="failed")
    params = module.params
    deadline = Deadline()
    stop_on_signals(deadline)
    try:
        result = run_restore(params, check_mode=module.check_mode, deadline=deadline)
    except Exception as exc:  # every failure becomes one line
        if params["metrics_dir"] and not module.check_mode:
            record_verify_metrics(params["metrics_dir"], params["database"], ok=False)
        module.fail_json(msg="restore of %s failed: %s" % (params["database"], str(exc).replace("\n", " ")),
                         outcome="failed", database=params["database"])
    result["outcome"] = "ok"
    result["database"] = params["database"]
    if params["metrics_dir"] and not module.check_mode:
        result["metrics_file"] = record_verify_metrics(params["metrics_dir"], params["database"], ok=True, result=result)
    for warning in result.pop("warnings", []):
        module.warn(warning)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
