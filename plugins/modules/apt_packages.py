#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: keelson.stack contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: apt_packages
short_description: Install Debian packages, asking dpkg first so a converged host costs one light call
version_added: "0.1.0"
description:
  - Asks C(dpkg-query) which of O(name) are installed. When all are, it reports no change and runs nothing else.
  - Otherwise it refreshes the package lists of a host that has none, then runs M(ansible.builtin.apt) with
    O(name), C(state=present), and the lists refreshed when older than O(cache_valid_time). Its result is apt's.
  - A name that is not a plain package name (a version, an architecture, a pattern) or a virtual package
    always goes to apt, as if it were missing.
  - The dpkg-query call and the lists refresh also run in check mode; they change no configuration.
author:
  - keelson.stack developers (@keelson)
options:
  name:
    description: The packages.
    type: list
    elements: str
    required: true
  install_recommends:
    description: Passed to M(ansible.builtin.apt); unset leaves apt's own default.
    type: bool
  cache_valid_time:
    description: When something is missing, the lists are refreshed first if they are older than this many seconds.
    type: int
    default: 3600
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: C(dpkg-query) and the refresh of missing lists run in check mode too; apt itself runs in check mode.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
notes:
  - On a converged host this is one C(dpkg-query) call (about 0.25 s with Ansible's module start-up) instead of
    M(ansible.builtin.apt), which opens apt's whole cache (about 0.75 s).
seealso:
  - module: ansible.builtin.apt
"""

EXAMPLES = r"""
- name: Install redis-server
  keelson.stack.apt_packages:
    name: [redis-server]

- name: Install the exporters, without their recommended timers
  keelson.stack.apt_packages:
    name: [prometheus-node-exporter, prometheus-postgres-exporter]
    install_recommends: false
"""

RETURN = r"""
missing:
  description: The names that dpkg did not report as installed (empty when nothing ran).
  returned: always
  type: list
  elements: str
  sample: [redis-server]
"""
