# -*- coding: utf-8 -*-
# Copyright: keelson.stack developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # The S3 options of pg_backup, pg_restore and backup_prune (module_utils.backup_args.S3_ARGS).
    DOCUMENTATION = r"""
options:
  s3_endpoint_url:
    description: S3 endpoint URL (for example a Ceph RGW or MinIO); AWS when omitted.
    type: str
  s3_bucket:
    description: Bucket holding the backups.
    type: str
    required: true
  s3_prefix:
    description:
      - Key prefix; each database's backups live under C(<s3_prefix>/<database>/).
      - Matched exactly (C(prefix/) never matches C(prefix-other/)); trailing slashes do not matter.
    type: str
    required: true
  s3_access_key:
    description: S3 access key id.
    type: str
    required: true
  s3_secret_key:
    description: S3 secret key.
    type: str
    required: true
  s3_region:
    description: S3 region name.
    type: str
    default: us-east-1
  s3_connect_timeout:
    description: Seconds to wait for a TCP connection to S3 before the attempt counts as failed.
    type: int
    default: 10
  s3_read_timeout:
    description:
      - Seconds S3 may stay silent (no byte sent or received) before the attempt counts as failed.
      - Short enough to notice a stalled server, long enough for a slow one to answer a part.
    type: int
    default: 60
  s3_attempts:
    description:
      - Attempts per S3 call (each part upload on its own; the dump stream is never restarted) for transient
        errors (timeouts, connection resets, 5xx, C(SlowDown)). Errors such as C(AccessDenied) are not retried.
    type: int
    default: 5
  s3_retry_max_delay:
    description: Longest pause between two attempts; pauses double from 1 s up to it, with jitter.
    type: int
    default: 20
"""
