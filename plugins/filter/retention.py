# -*- coding: utf-8 -*-
# Copyright: keelson.stack developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: gfs_retention
short_description: Grandfather-father-son selection of backups to keep
version_added: 0.1.0
description:
  - Splits a list of backups into the ones to keep and the ones to delete, keeping the newest
    backup of each of the newest O(daily) days, O(weekly) ISO weeks and O(monthly) months (UTC
    calendar buckets) that hold a backup, and the newest O(last) backups whatever their buckets.
  - The newest backup is always kept.
  - Pure function, no I/O; the same code as M(keelson.stack.backup_prune) uses.
options:
  _input:
    description: Backups, each a dict with C(id) and C(time) (ISO 8601 with a time zone).
    type: list
    elements: dict
    required: true
  daily:
    description: Number of daily buckets to keep.
    type: int
    default: 0
  weekly:
    description: Number of weekly buckets to keep.
    type: int
    default: 0
  monthly:
    description: Number of monthly buckets to keep.
    type: int
    default: 0
  last:
    description: Number of newest backups to keep whatever their buckets.
    type: int
    default: 0
"""

EXAMPLES = r"""
- name: Show which backups a 7/4/12 policy keeps
  ansible.builtin.debug:
    msg: "{{ backups | keelson.stack.gfs_retention(daily=7, weekly=4, monthly=12) }}"
"""

RETURN = r"""
_value:
  description: C(keep) and C(delete) (ids, newest first) and C(reasons) (id to list of buckets).
  type: dict
"""

from ansible.errors import AnsibleFilterError

from ansible_collections.keelson.stack.plugins.module_utils.backup_retention import select_retention


def gfs_retention(backups, daily=0, weekly=0, monthly=0, last=0):
    try:
        return select_retention(backups, daily=daily, weekly=weekly, monthly=monthly, last=last)
    except (KeyError, TypeError, ValueError) as exc:
        raise AnsibleFilterError("gfs_retention: %s" % exc)


class FilterModule(object):
    def filters(self):
        return {"gfs_retention": gfs_retention}
