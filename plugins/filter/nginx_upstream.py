# -*- coding: utf-8 -*-
# Copyright: keelson.stack contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters over the nginx role's upstream files; the parsing is module_utils/nginx_upstream.py's."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: nginx_upstream_servers
short_description: The backends of an nginx upstream include file and their state
version_added: 0.1.0
description:
  - Parses the C(server HOST:PORT [weight=N] max_fails=N fail_timeout=Ns [down];) lines the nginx role
    writes and M(keelson.stack.nginx_upstream) rewrites, as that module reads them.
  - The nginx role uses it to keep the state and weight of backends already in the file when it writes
    the file again. The companion filter C(nginx_runtime_upstreams) returns the names of the upstreams in
    an C(nginx_upstreams) list whose backends are all IPv4 addresses (what the runtime balancer takes).
options:
  _input:
    description: The text of the include file.
    type: str
    required: true
"""

EXAMPLES = r"""
- name: Show the state of the api upstream's backends
  ansible.builtin.debug:
    msg: "{{ lookup('ansible.builtin.file', 'api.conf') | keelson.stack.nginx_upstream_servers }}"
"""

RETURN = r"""
_value:
  description: "{HOST:PORT: {state: up|down, weight: N}}"
  type: dict
"""

import re

from ansible_collections.keelson.stack.plugins.module_utils.nginx_upstream import parse_servers

IPV4 = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")


def nginx_upstream_servers(text):
    return parse_servers(text or "")


def nginx_runtime_upstreams(upstreams):
    return [u["name"] for u in upstreams
            if u.get("servers") and all(IPV4.match(str(s["host"])) for s in u["servers"])]


class FilterModule(object):
    def filters(self):
        return {"nginx_upstream_servers": nginx_upstream_servers,
                "nginx_runtime_upstreams": nginx_runtime_upstreams}
