#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: keelson.stack developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: pg_backup
short_description: Stream a pg_dump of one PostgreSQL database to S3, with a manifest as commit marker
version_added: 0.1.0
description:
  - Runs C(pg_dump -Fc) in an exported snapshot, optionally through C(age) encryption, straight into an
    S3 multipart upload. Nothing is written to local disk. Part sizes start at 8 MiB and double every 1000
    parts, so memory stays flat and very large dumps stay under the 10,000-part limit.
  - If C(pg_dump), C(pg_dumpall) or C(age) exits non-zero at any point, the multipart upload is aborted;
    no object appears under the final key and no upload stays open.
  - Also stores C(pg_dumpall --globals-only) (encrypted the same way).
  - Uploads last a JSON manifest (database, server and tool versions, start and end time, byte counts,
    sha256 of each stored object, compression, encryption, the sha256 of the C(pg_restore -l) table of
    contents, per-table row counts counted in the dump's snapshot). A backup without a manifest does not
    exist for M(keelson.stack.pg_restore) and M(keelson.stack.backup_prune).
  - "Objects are stored as C(<s3_prefix>/<database>/<backup id>/dump.pgc[.age]), C(globals.sql[.age]) and
    C(manifest.json); the backup id is the UTC start time, C(YYYYMMDDTHHMMSSZ)."
  - A lock file (C(flock), released when the process dies) prevents overlapping runs on one database; a
    second run fails at once naming the holder.
  - Every S3 call has connect and read timeouts and retries transient errors with a backoff, each part on its
    own; the whole run has a deadline. Whatever ends a run (an error, the deadline, SIGTERM, the controller
    going away) kills and reaps C(pg_dump), aborts the multipart upload and releases the lock; the message
    names the cause and the step, for example C(S3 did not answer for 60 s during part 12).
  - Passwords reach C(pg_dump) through a private C(PGPASSFILE) (mode 0600, removed afterwards), S3
    credentials stay inside the module process; neither is on a command line.
author:
  - keelson.stack developers (@keelson)
requirements:
  - python3-boto3 (boto3 1.26 or later) on the database host
  - PostgreSQL client tools matching the server (pg_dump, pg_dumpall, pg_restore, psql)
  - age, when O(age_recipients) is set
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details:
      - Connects to S3 and PostgreSQL, picks the compression and reports the keys it would write; uploads nothing.
      - With O(prune), reports what retention would delete and abort among the existing backups (the one not taken is not counted); deletes nothing.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
extends_documentation_fragment:
  - keelson.stack.backup_s3
  - keelson.stack.backup_retention
options:
  database:
    description: Name of the database to back up.
    type: str
    required: true
  pg_host:
    description: Server host or socket directory; the default local socket when omitted.
    type: str
  pg_port:
    description: Server port.
    type: int
    default: 5432
  pg_user:
    description: Database role used to dump; it must be able to read every table (and C(pg_authid) for globals).
    type: str
    default: postgres
  pg_password:
    description: Password of O(pg_user), passed through a temporary C(PGPASSFILE). Omit for peer authentication.
    type: str
  pg_os_user:
    description: Operating system user the client tools run as (peer authentication on the local socket).
    type: str
    default: postgres
  compression:
    description: C(pg_dump) compression; C(auto) is zstd where this pg_dump supports it (PostgreSQL 16+), gzip otherwise.
    type: str
    choices: [auto, zstd, gzip, lz4, none]
    default: auto
  compression_level:
    description: Compression level; the method's default when omitted.
    type: int
  age_recipients:
    description:
      - age public keys (C(age1...)) to encrypt the dump and globals for. The identity is not needed on this host.
      - No encryption when empty.
    type: list
    elements: str
    default: []
  globals:
    description: Also store C(pg_dumpall --globals-only) (roles and tablespaces).
    type: bool
    default: true
  lock_dir:
    description: Directory for the per-database lock files.
    type: path
    default: /run/lock/keelson-backup
  metrics_dir:
    description: node_exporter textfile collector directory for C(keelson_backup_*) metrics; none written when omitted.
    type: path
  upload_workers:
    description:
      - Parts uploaded in parallel (each holds one part in memory, so the uploader's memory grows with it).
    type: int
    default: 2
  deadline_seconds:
    description:
      - Longest time the whole backup of this database may take. When it passes, C(pg_dump) is stopped, the
        multipart upload aborted, the lock released, and the run fails naming the step it was in.
      - C(0) scales it with the database, one hour plus ten minutes per GiB of C(pg_database_size).
    type: int
    default: 0
  lock_wait_timeout:
    description:
      - Seconds C(pg_dump) waits for each table's shared lock (C(--lock-wait-timeout)) before the backup fails,
        for example behind a migration holding an exclusive lock. C(0) waits without bound (up to the deadline).
    type: int
    default: 300
  prune:
    description:
      - After a successful backup, apply the retention options (O(keep_daily) and the others) in the same run,
        as M(keelson.stack.backup_prune) does, and return its result as RV(prune). A failed prune does not fail
        the backup, which is committed by then; C(failed) in RV(prune) says so.
      - One run saves the second module's start-up, as pgBackRest expires after each backup.
      - The retention options are ignored when false.
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Back up the app database, encrypted for the ops key
  keelson.stack.pg_backup:
    database: app
    s3_endpoint_url: https://s3.example.net
    s3_bucket: backups
    s3_prefix: staging/postgresql/db1
    s3_access_key: "{{ vault_backup_s3_access_key }}"
    s3_secret_key: "{{ vault_backup_s3_secret_key }}"
    age_recipients:
      - age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p
    metrics_dir: /var/lib/prometheus/node-exporter
    prune: true
    keep_daily: 14
  register: backup
"""

RETURN = r"""
backup_id:
  description: Id of the backup (UTC start time).
  returned: always
  type: str
  sample: 20261122T021500Z
key:
  description: Key of the stored dump.
  returned: always
  type: str
  sample: staging/postgresql/db1/app/20261122T021500Z/dump.pgc.age
manifest_key:
  description: Key of the manifest.
  returned: always
  type: str
bytes:
  description: Stored size of the dump.
  returned: success
  type: int
plain_bytes:
  description: Size of the dump before encryption.
  returned: success
  type: int
sha256:
  description: sha256 of the stored dump.
  returned: success
  type: str
parts:
  description: Number of multipart upload parts.
  returned: success
  type: int
compression:
  description: Compression method used.
  returned: always
  type: str
  sample: zstd
encrypted:
  description: Whether the dump is age-encrypted.
  returned: always
  type: bool
tables:
  description: Number of tables counted.
  returned: success
  type: int
rows:
  description: Total rows over all tables, counted in the dump's snapshot.
  returned: success
  type: int
duration_seconds:
  description: Wall time of the backup.
  returned: success
  type: float
outcome:
  description: C(ok) or C(failed), also on failure, for playbooks that summarise several databases.
  returned: always
  type: str
deadline_seconds:
  description: The deadline the run had (O(deadline_seconds), or the one scaled with the database).
  returned: always
  type: int
metrics_file:
  description: Metrics file written.
  returned: when O(metrics_dir) is set
  type: str
prune:
  description:
    - The retention run after the backup, with the return values of M(keelson.stack.backup_prune) (C(keep),
      C(delete), C(deleted_keys), C(aborted_uploads), C(msg)...) and C(failed).
    - On a failed prune, only C(failed) (true), C(changed) and C(msg).
  returned: success, when O(prune) is true
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.keelson.stack.plugins.module_utils.backup_args import PG_ARGS, RETENTION_ARGS, S3_ARGS, spec
from ansible_collections.keelson.stack.plugins.module_utils.backup_local import LockHeld, stop_on_signals
from ansible_collections.keelson.stack.plugins.module_utils.backup_retry import Deadline

try:
    from ansible_collections.keelson.stack.plugins.module_utils.backup_dump import record_metrics, run_backup
    from ansible_collections.keelson.stack.plugins.module_utils.backup_pruning import prune_outcome
    IMPORT_ERROR = None
except ImportError as exc:  # boto3 is imported lazily; this guards the module_utils themselves
    IMPORT_ERROR = exc


def main():
    module = AnsibleModule(
        argument_spec=spec(
            S3_ARGS, PG_ARGS, RETENTION_ARGS,
            database=dict(type="str", required=True),
            compression=dict(type="str", default="auto", choices=["auto", "zstd", "gzip", "lz4", "none"]),
            compression_level=dict(type="int"),
            age_recipients=dict(type="list", elements="str", default=[]),
            globals=dict(type="bool", default=True),
            lock_dir=dict(type="path", default="/run/lock/keelson-backup"),
            metrics_dir=dict(type="path"),
            upload_workers=dict(type="int", default=2),
            deadline_seconds=dict(type="int", default=0),
            lock_wait_timeout=dict(type="int", default=300),
            prune=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    if IMPORT_ERROR is not None:
        module.fail_json(msg="cannot load pg_backup logic: %s" % IMPORT_ERROR, outcome="failed")
    params = module.params
    deadline = Deadline()
    stop_on_signals(deadline)
    try:
        result = run_backup(params, check_mode=module.check_mode, deadline=deadline)
    except LockHeld as exc:
        module.fail_json(msg=str(exc), outcome="failed", database=params["database"])
    except ImportError as exc:
        module.fail_json(msg="boto3 is required on this host: %s" % exc, outcome="failed", database=params["database"])
    except Exception as exc:  # every failure becomes one line; the metric records it
        msg = str(exc).replace("\n", " ") or type(exc).__name__
        if params["metrics_dir"] and not module.check_mode:
            record_metrics(params["metrics_dir"], params["database"], ok=False)
        module.fail_json(msg="backup of %s failed: %s" % (params["database"], msg), outcome="failed",
                         database=params["database"])
    result["outcome"] = "ok"
    result["database"] = params["database"]
    if params["metrics_dir"] and not module.check_mode:
        result["metrics_file"] = record_metrics(params["metrics_dir"], params["database"], ok=True, result=result)
    if params["prune"]:
        result["prune"] = prune_outcome(params, check_mode=module.check_mode, deadline=deadline)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
