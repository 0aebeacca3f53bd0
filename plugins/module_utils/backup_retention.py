# -*- coding: utf-8 -*-
# Copyright: keelson.stack developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Grandfather-father-son retention: which backups to keep, as a pure function.

Buckets are calendar buckets in UTC: a day, an ISO week, a month. For each kind
the newest backup of each of the newest N buckets that hold a backup is kept.
`last` keeps the newest N backups whatever their buckets (for backups taken
several times a day). The newest backup is always kept, whatever the policy says.
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime

KINDS = ("daily", "weekly", "monthly")


def parse_time(value):
    """An aware UTC datetime from a datetime or an ISO 8601 string ('Z' allowed)."""
    if isinstance(value, datetime.datetime):
        when = value
    else:
        text = str(value).strip()
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        when = datetime.datetime.fromisoformat(text)
    if when.tzinfo is None:
        raise ValueError("backup time %r has no time zone" % (value,))
    return when.astimezone(datetime.timezone.utc)


def bucket_of(kind, when):
    """The calendar bucket of an aware datetime: a day, an ISO week or a month."""
    day = when.astimezone(datetime.timezone.utc).date()
    if kind == "daily":
        return day.isoformat()
    if kind == "weekly":
        year, week, _weekday = day.isocalendar()[:3]
        return "%04d-W%02d" % (year, week)
    if kind == "monthly":
        return "%04d-%02d" % (day.year, day.month)
    raise ValueError("unknown retention kind %r" % (kind,))


def select_retention(backups, daily=0, weekly=0, monthly=0, last=0):
    """Splits backups into keep and delete.

    backups: iterable of dicts with 'id' and 'time' (datetime or ISO string).
    Returns {'keep': [ids newest first], 'delete': [ids newest first],
    'reasons': {id: ['newest', 'last 2', 'daily 2026-11-22', ...]}}.
    """
    counts = {"last": last, "daily": daily, "weekly": weekly, "monthly": monthly}
    for kind, count in counts.items():
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ValueError("keep_%s must be a non-negative integer, got %r" % (kind, count))

    items = []
    seen_ids = set()
    for backup in backups:
        backup_id = str(backup["id"])
        if backup_id in seen_ids:
            raise ValueError("backup id %s appears twice" % backup_id)
        seen_ids.add(backup_id)
        items.append((parse_time(backup["time"]), backup_id))
    # Newest first; the id breaks ties so the order never depends on input order.
    items.sort(reverse=True)

    reasons = {}
    if items:
        reasons[items[0][1]] = ["newest"]
    for rank, (_when, backup_id) in enumerate(items[:last], start=1):
        reasons.setdefault(backup_id, []).append("last %d" % rank)
    for kind in KINDS:
        filled = []
        for when, backup_id in items:
            bucket = bucket_of(kind, when)
            if bucket in filled:
                continue
            if len(filled) == counts[kind]:
                break
            filled.append(bucket)
            reasons.setdefault(backup_id, []).append("%s %s" % (kind, bucket))

    keep = [backup_id for _when, backup_id in items if backup_id in reasons]
    delete = [backup_id for _when, backup_id in items if backup_id not in reasons]
    return {"keep": keep, "delete": delete, "reasons": reasons}
