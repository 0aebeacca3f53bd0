# -*- coding: utf-8 -*-
# Copyright: keelson.stack developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Argument specs shared by pg_backup, pg_restore and backup_prune."""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

S3_ARGS = dict(
    s3_endpoint_url=dict(type="str"),
    s3_bucket=dict(type="str", required=True),
    s3_prefix=dict(type="str", required=True),
    s3_access_key=dict(type="str", required=True, no_log=True),
    s3_secret_key=dict(type="str", required=True, no_log=True),
    s3_region=dict(type="str", default="us-east-1"),
    s3_connect_timeout=dict(type="int", default=10),
    s3_read_timeout=dict(type="int", default=60),
    s3_attempts=dict(type="int", default=5),
    s3_retry_max_delay=dict(type="int", default=20),
)

PG_ARGS = dict(
    pg_host=dict(type="str"),
    pg_port=dict(type="int", default=5432),
    pg_user=dict(type="str", default="postgres"),
    pg_password=dict(type="str", no_log=True),
    pg_os_user=dict(type="str", default="postgres"),
)

RETENTION_ARGS = dict(
    keep_daily=dict(type="int", default=30),
    keep_weekly=dict(type="int", default=12),
    keep_monthly=dict(type="int", default=12),
    keep_last=dict(type="int", default=0),
    abort_uploads_after_hours=dict(type="float", default=24),
)


def spec(*groups, **extra):
    merged = {}
    for group in groups:
        merged.update(group)
    merged.update(extra)
    return merged
