# -*- coding: utf-8 -*-
# Copyright: keelson.stack developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # The retention options of backup_prune and pg_backup (module_utils.backup_args.RETENTION_ARGS).
    DOCUMENTATION = r"""
options:
  keep_daily:
    description: Daily buckets to keep.
    type: int
    default: 30
  keep_weekly:
    description: Weekly (ISO week) buckets to keep.
    type: int
    default: 12
  keep_monthly:
    description: Monthly buckets to keep.
    type: int
    default: 12
  keep_last:
    description:
      - Newest backups to keep whatever their calendar bucket, for backups taken several times a day
        (C(8) keeps two days of 6-hourly backups).
    type: int
    default: 0
  abort_uploads_after_hours:
    description: Age after which an open multipart upload is abandoned and aborted (fractions allowed); C(0) never aborts one.
    type: float
    default: 24
"""
