# -*- coding: utf-8 -*-
# Copyright: keelson.stack contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: nginx_edge_errors
short_description: What the nginx role would render wrongly from its edge settings
version_added: 0.1.0
description:
  - Returns one message per problem, each naming the variable (C(nginx_sites[0].locations[1].headers[0].name)), so
    the role can refuse every bad value at once, before any host changes. An empty list means the settings are sound.
  - Header names must be HTTP tokens (no space, newline or colon); header values must not contain a newline.
  - A location serves either a C(root) or an upstream (its own or the site's), and sets at most one of C(expires)
    and C(cache_control) (both would send two C(Cache-Control) headers).
  - A TLS override that is set must not be empty (O(ssl_ciphers), O(ssl_protocols), O(ssl_ecdh_curve));
    whether nginx accepts its value is for C(nginx -t) to say.
options:
  _input:
    description: The nginx role's C(nginx_sites).
    type: list
    elements: dict
    required: true
  ssl_ciphers:
    description: C(nginx_ssl_ciphers) (V(null) for the profile's).
    type: str
  ssl_protocols:
    description: C(nginx_ssl_protocols) (V(null) for the profile's).
    type: list
    elements: str
  ssl_ecdh_curve:
    description: C(nginx_ssl_ecdh_curve).
    type: str
  gzip_comp_level:
    description: C(nginx_gzip_comp_level), 1 to 9.
    type: int
  maintenance_retry_after:
    description: C(nginx_maintenance_retry_after), 1 to 86400 seconds.
    type: int
"""

EXAMPLES = r"""
- name: Refuse bad edge settings
  ansible.builtin.assert:
    that: __errors | length == 0
    fail_msg: "{{ __errors | join('; ') }}"
  vars:
    __errors: "{{ nginx_sites | keelson.stack.nginx_edge_errors(ssl_ciphers=nginx_ssl_ciphers) }}"
"""

RETURN = r"""
_value:
  description: Problems, one message each, in the order of the settings.
  type: list
  elements: str
"""

import re

# RFC 9110 token: what a field name may be.
TLS_PROTOCOLS = ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def _header_errors(headers, where):
    errors = []
    for index, header in enumerate(headers or []):
        label = "%s.headers[%d]" % (where, index)
        name = str(header.get("name") or "")
        if not HEADER_NAME_RE.match(name):
            errors.append("%s.name %r is not a header name (letters, digits and !#$%%&'*+.^_`|~- only; "
                          "no space, newline or colon)" % (label, name))
        value = str(header.get("value") if header.get("value") is not None else "")
        if "\n" in value or "\r" in value:
            errors.append("%s.value of %r contains a newline" % (label, name))
    return errors


def nginx_edge_errors(sites, ssl_ciphers=None, ssl_protocols=None, ssl_ecdh_curve="X25519", gzip_comp_level=5,
                      maintenance_retry_after=300):
    errors = []
    for s_index, site in enumerate(sites or []):
        where = "nginx_sites[%d]" % s_index
        errors += _header_errors(site.get("headers"), where)
        for l_index, loc in enumerate(site.get("locations") or []):
            lwhere = "%s.locations[%d]" % (where, l_index)
            errors += _header_errors(loc.get("headers"), lwhere)
            if "\n" in str(loc.get("cache_control") or "") or "\r" in str(loc.get("cache_control") or ""):
                errors.append("%s.cache_control contains a newline" % lwhere)
            if loc.get("root") and loc.get("upstream"):
                errors.append("%s (%s): set root (static files) or upstream, not both" % (lwhere, loc.get("path")))
            if not loc.get("root") and not loc.get("upstream") and not site.get("upstream"):
                errors.append("%s (%s): needs root, upstream, or an upstream on the site" % (lwhere, loc.get("path")))
            if loc.get("expires") and loc.get("cache_control"):
                errors.append("%s (%s): set expires or cache_control, not both (each sends Cache-Control)"
                              % (lwhere, loc.get("path")))
    if ssl_ciphers is not None and not str(ssl_ciphers).strip():
        errors.append("nginx_ssl_ciphers is empty: leave it null for the TLS profile's list, or list ciphers")
    if ssl_protocols is not None and len(ssl_protocols) == 0:
        errors.append("nginx_ssl_protocols is empty: leave it null for the TLS profile's, or list protocols")
    unknown = [p for p in ssl_protocols or [] if p not in TLS_PROTOCOLS]
    if unknown:
        errors.append("nginx_ssl_protocols: %s not one of %s" % (", ".join(unknown), ", ".join(TLS_PROTOCOLS)))
    if ssl_ecdh_curve is None or not str(ssl_ecdh_curve).strip():
        errors.append("nginx_ssl_ecdh_curve is empty")
    if gzip_comp_level is not None and not 1 <= int(gzip_comp_level) <= 9:
        errors.append("nginx_gzip_comp_level %s is not between 1 and 9" % gzip_comp_level)
    if maintenance_retry_after is not None and not 1 <= int(maintenance_retry_after) <= 86400:
        errors.append("nginx_maintenance_retry_after %s is not between 1 and 86400 seconds" % maintenance_retry_after)
    return errors


class FilterModule(object):
    def filters(self):
        return {"nginx_edge_errors": nginx_edge_errors}
