# -*- coding: utf-8 -*-
# Copyright: keelson.stack contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which of a role's Debian packages are missing, read from dpkg's database.

The apt_packages action asks dpkg-query first (about 0.25 s on a converged host)
and runs ansible.builtin.apt (about 0.75 s, it opens apt's whole cache) only for
a host that lacks something. A name dpkg cannot answer for on its own (a version,
an architecture, a pattern, a virtual package) always counts as missing, so apt
decides for it as before.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

# "ii \tnginx": want, status and error flag, then the package name
QUERY_FORMAT = "${db:Status-Abbrev}\t${Package}\n"
_PLAIN_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")


def query_argv(names):
    """dpkg-query for the plain names (the others are missing whatever dpkg says)."""
    return ["dpkg-query", "--show", "--showformat=" + QUERY_FORMAT, "--"] + [n for n in names if _PLAIN_NAME.match(n)]


def installed_names(output):
    """Names dpkg reports as installed and configured (held or marked for removal included)."""
    installed = set()
    for line in output.splitlines():
        status, name = (line.split("\t", 1) + [""])[:2]
        if len(status) >= 2 and status[1] == "i" and not status[2:].strip():
            installed.add(name.strip())
    return installed


def missing_packages(output, names):
    """The names, in their order, that are not plain names installed according to dpkg-query's output."""
    installed = installed_names(output)
    return [n for n in names if not (_PLAIN_NAME.match(n) and n in installed)]
