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
"""
