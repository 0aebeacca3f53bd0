# -*- coding: utf-8 -*-
# Copyright: keelson.stack contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A deploy lock with an expiry: one JSON file per environment.

Every read-check-write happens under ``flock`` on a sidecar ``.guard`` file, so two
runs on the same host cannot both take the lock. The lock file itself says who holds
it, since when, until when and for what. A lock whose ``expires_at`` has passed is
stale and the next acquire takes it over (a controller killed with -9 never
releases). The holder renews by acquiring again with the same ``owner``.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import fcntl
import json
import os
import tempfile
import time


class LockHeld(Exception):
    def __init__(self, holder):
        super(LockHeld, self).__init__(describe(holder))
        self.holder = holder


def describe(holder):
    return "deploy lock held by %s since %s for %r (expires %s)" % (
        holder.get("owner"), _iso(holder.get("acquired_at")), holder.get("purpose"), _iso(holder.get("expires_at")))


def _iso(epoch):
    if epoch is None:
        return "?"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


class _Guard:
    def __init__(self, path):
        self.path = path + ".guard"

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def read_lock(path):
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def _write(path, data):
    fd, tmp = tempfile.mkstemp(prefix=".lock.", dir=os.path.dirname(path))
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(tmp, 0o644)
    os.rename(tmp, path)


def try_acquire(path, owner, purpose, ttl, now):
    """One attempt. Returns (changed, lock, taken_over) or raises LockHeld."""
    with _Guard(path):
        current = read_lock(path)
        taken_over = None
        if current and current.get("owner") != owner:
            if current.get("expires_at", 0) > now:
                raise LockHeld(current)
            taken_over = current
        lock = {
            "owner": owner,
            "purpose": purpose,
            "acquired_at": current["acquired_at"] if current and current.get("owner") == owner else now,
            "renewed_at": now,
            "expires_at": now + ttl,
        }
        _write(path, lock)
        return True, lock, taken_over


def acquire(path, owner, purpose, ttl, wait=0.0, interval=2.0, clock=time.time, sleep=time.sleep):
    """Takes or renews the lock, waiting up to ``wait`` seconds for a holder to release it.
    Returns a dict: changed, lock, taken_over (the stale lock replaced, or None), waited."""
    start = clock()
    while True:
        try:
            changed, lock, taken_over = try_acquire(path, owner, purpose, ttl, clock())
            return {"changed": changed, "lock": lock, "taken_over": taken_over, "waited": round(clock() - start, 3)}
        except LockHeld:
            if clock() - start + interval > wait:
                raise
            sleep(interval)


def release(path, owner, force=False):
    """Removes the lock if ``owner`` holds it (or ``force``). Releasing a lock that is not
    there is not an error. Raises LockHeld if someone else holds it."""
    with _Guard(path):
        current = read_lock(path)
        if current is None:
            if os.path.exists(path):
                os.unlink(path)  # unreadable leftover
                return {"changed": True, "lock": None}
            return {"changed": False, "lock": None}
        if current.get("owner") != owner and not force:
            raise LockHeld(current)
        os.unlink(path)
        return {"changed": True, "lock": current}


def status(path, now):
    current = read_lock(path)
    return {"changed": False, "lock": current,
            "held": bool(current) and current.get("expires_at", 0) > now}
