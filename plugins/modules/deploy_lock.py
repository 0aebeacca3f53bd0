#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: keelson.stack contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: deploy_lock
short_description: Take, renew, release or inspect an environment's deploy lock
version_added: "0.1.0"
description:
  - One lock per environment, a JSON file recording the holder (O(owner)), what it is doing
    (O(purpose)), when it was taken and when it expires.
  - A second O(state=present) by another owner fails at once naming the holder, or waits up to
    O(wait) seconds for the lock to be released or to expire.
  - An expired lock is stale (its holder died or was killed) and is taken over; the result says
    which lock was replaced.
  - O(state=present) by the holder renews the expiry. O(state=absent) by someone other than the
    holder fails unless O(force=true); releasing a lock that is not held changes nothing.
  - "Where: the file must be on a host every run reaches. The playbooks keep it on the first
    host of the app group (C(delegate_to) and C(run_once)), so operators on different control
    machines see the same lock."
  - Concurrent runs on the lock host are serialized with C(flock) on a C(.guard) file next to the lock.
author:
  - keelson.stack developers (@keelson)
options:
  path:
    description: The lock file. Its directory is created (mode 0755) if missing.
    type: path
    required: true
  state:
    description: C(present) takes or renews, C(absent) releases, C(query) only reads.
    type: str
    choices: [present, absent, query]
    default: present
  owner:
    description: Who holds the lock, for example C(user@controller run-id). Required unless O(state=query).
    type: str
  purpose:
    description: What the holder does, shown to anyone who finds the lock held.
    type: str
    default: ""
  ttl:
    description: Seconds until the lock expires unless renewed.
    type: int
    default: 1800
  wait:
    description: Seconds to wait for a held lock before failing. V(0) fails at once.
    type: int
    default: 0
  force:
    description: Release even if another owner holds the lock.
    type: bool
    default: false
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: Reports whether the lock could be taken or released, and fails if another owner holds it; writes nothing.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
"""

EXAMPLES = r"""
- name: Take the staging deploy lock for this run
  keelson.stack.deploy_lock:
    path: /opt/keelson/locks/staging.lock
    owner: "{{ lookup('ansible.builtin.env', 'USER') }}@{{ lookup('ansible.builtin.pipe', 'hostname') }} {{ keelson_run_id }}"
    purpose: deploy api 1.4.2
    ttl: 1800
  delegate_to: "{{ groups['app'][0] }}"
  run_once: true

- name: Release it
  keelson.stack.deploy_lock:
    path: /opt/keelson/locks/staging.lock
    owner: "{{ lookup('ansible.builtin.env', 'USER') }}@{{ lookup('ansible.builtin.pipe', 'hostname') }} {{ keelson_run_id }}"
    state: absent
  delegate_to: "{{ groups['app'][0] }}"
  run_once: true
"""

RETURN = r"""
lock:
  description: The lock as it is after the task (null when released or absent).
  returned: always
  type: dict
  sample: {"owner": "ana@ctl 20270115T080000", "purpose": "deploy api 1.4.2", "acquired_at": 1800000000.0,
           "renewed_at": 1800000000.0, "expires_at": 1800001800.0}
held:
  description: With O(state=query), whether a lock is held and not expired.
  returned: when state is query
  type: bool
taken_over:
  description: The stale lock that was replaced, if any.
  returned: when state is present
  type: dict
waited:
  description: Seconds spent waiting for the lock.
  returned: when state is present
  type: float
holder:
  description: The lock that blocked the task.
  returned: on failure because another owner holds the lock
  type: dict
"""

import os
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.keelson.stack.plugins.module_utils.deploy_lock import (
    LockHeld, acquire, read_lock, release, status)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            state=dict(type="str", choices=["present", "absent", "query"], default="present"),
            owner=dict(type="str"),
            purpose=dict(type="str", default=""),
            ttl=dict(type="int", default=1800),
            wait=dict(type="int", default=0),
            force=dict(type="bool", default=False),
        ),
        required_if=[("state", "present", ["owner"]), ("state", "absent", ["owner"])],
        supports_check_mode=True,
    )
    p = module.params
    path = p["path"]
    if p["state"] == "query":
        module.exit_json(**status(path, time.time()))

    current = read_lock(path)
    if module.check_mode:
        blocked = (current and current.get("owner") != p["owner"]
                   and (p["state"] == "absent" and not p["force"] or current.get("expires_at", 0) > time.time()))
        if blocked:
            module.fail_json(msg=str(LockHeld(current)), holder=current)
        changed = p["state"] == "present" or current is not None
        module.exit_json(changed=changed, lock=current)

    try:
        if p["state"] == "present":
            directory = os.path.dirname(path)
            if directory and not os.path.isdir(directory):
                os.makedirs(directory, 0o755)
            result = acquire(path, p["owner"], p["purpose"], p["ttl"], wait=p["wait"])
            if result["taken_over"]:
                module.warn("took over a stale lock: " + str(LockHeld(result["taken_over"])))
        else:
            result = release(path, p["owner"], force=p["force"])
    except LockHeld as exc:
        module.fail_json(msg=str(exc), holder=exc.holder)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
