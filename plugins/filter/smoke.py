# -*- coding: utf-8 -*-
# Copyright: keelson.stack contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: smoke_probes
short_description: The nginx role's smoke checks as keelson.stack.health_gate probes
version_added: 0.1.0
description:
  - Expands O(_input) (the nginx role's C(nginx_smoke_checks)) into one C(http) probe per check and site.
    A check without C(site) applies to every site of O(sites).
  - Each probe requests C(https://<the site's first server name><path>) and connects to O(connect_address),
    so the request goes through that edge by the site's public name (SNI, Host and certificate check).
  - Sites with C(certificate=internal) are verified against O(internal_ca_file); others against the system store.
  - Sites or locations with C(basic_auth) get an C(Authorization) header for O(basic_auth_user).
  - Fails naming C(nginx_smoke_checks[N]) for an unknown site or a path that does not start with C(/).
options:
  _input:
    description: The checks (C(site), C(path), C(method), C(body), C(status), C(body_contains)).
    type: list
    elements: dict
    required: true
  sites:
    description: The nginx role's C(nginx_sites).
    type: list
    elements: dict
    required: true
  connect_address:
    description: Address of the edge to send every request to.
    type: str
    default: 127.0.0.1
  internal_ca_file:
    description: CA bundle for sites whose certificate is the environment's internal CA.
    type: str
  basic_auth_user:
    description: C({name, password}) used for sites behind basic auth.
    type: dict
"""

EXAMPLES = r"""
- name: Smoke checks through the local edge
  keelson.stack.health_gate:
    probes: "{{ nginx_smoke_checks | keelson.stack.smoke_probes(nginx_sites, internal_ca_file='/etc/ca.crt') }}"
    consecutive: 1
"""

RETURN = r"""
_value:
  description: health_gate probes, in the order of the checks, then of the sites.
  type: list
  elements: dict
"""

import base64
import json

from ansible.errors import AnsibleFilterError


def _needs_auth(site):
    return bool(site.get("basic_auth")) or any(loc.get("basic_auth") for loc in site.get("locations") or [])


def smoke_probes(checks, sites, connect_address="127.0.0.1", internal_ca_file=None, basic_auth_user=None):
    by_name = dict((site["name"], site) for site in sites or [])
    errors, probes = [], []
    for index, check in enumerate(checks or []):
        label = "nginx_smoke_checks[%d]" % index
        path = check.get("path") or ""
        if not str(path).startswith("/"):
            errors.append("%s: path must start with '/' (got %r)" % (label, path))
            continue
        if check.get("site"):
            if check["site"] not in by_name:
                errors.append("%s: no site named %r in nginx_sites (sites: %s)"
                              % (label, check["site"], ", ".join(sorted(by_name)) or "none"))
                continue
            targets = [by_name[check["site"]]]
        else:
            targets = list(sites or [])
        for site in targets:
            url = "https://%s%s" % (site["server_names"][0], path)
            method = (check.get("method") or "GET").upper()
            probe = {"type": "http", "name": "%s %s" % (method, url), "url": url, "method": method,
                     "connect_address": connect_address, "status": [int(check.get("status") or 200)],
                     "headers": {}, "timeout": float(check.get("timeout") or 10)}
            body = check.get("body")
            if body is not None:
                if isinstance(body, (dict, list)):
                    body = json.dumps(body)
                    probe["headers"]["Content-Type"] = "application/json"
                probe["body"] = str(body)
            if check.get("body_contains"):
                probe["body_contains"] = check["body_contains"]
            if site.get("certificate", "internal") == "internal" and internal_ca_file:
                probe["ca_file"] = internal_ca_file
            if _needs_auth(site) and basic_auth_user and basic_auth_user.get("name"):
                token = "%s:%s" % (basic_auth_user["name"], basic_auth_user.get("password", ""))
                probe["headers"]["Authorization"] = "Basic " + base64.b64encode(token.encode("utf-8")).decode("ascii")
            probes.append(probe)
    if errors:
        raise AnsibleFilterError("smoke_probes: " + "; ".join(errors))
    return probes


class FilterModule(object):
    def filters(self):
        return {"smoke_probes": smoke_probes}
