# -*- coding: utf-8 -*-
# Copyright: keelson.stack contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: in_networks
short_description: Whether an address lies in any of a list of addresses and CIDRs
version_added: 0.1.0
description:
  - Standard library only (no netaddr). A bare address in the list is a one-address network; an
    IPv4-mapped IPv6 address (C(::ffff:192.0.2.7), as sshd may report it) is compared as IPv4.
  - The base role uses it to refuse firewall rules that would cut off the SSH session Ansible runs over.
options:
  _input:
    description: The address.
    type: str
    required: true
  networks:
    description: Addresses and CIDRs, IPv4 or IPv6.
    type: list
    elements: str
    required: true
"""

EXAMPLES = r"""
- name: Is the controller an admin?
  ansible.builtin.debug:
    msg: "{{ '192.0.2.7' | keelson.stack.in_networks(['192.0.2.0/24', '2001:db8::/32']) }}"
"""

RETURN = r"""
_value:
  description: True when the address is in at least one of the networks.
  type: bool
"""

import ipaddress

from ansible.errors import AnsibleFilterError


def _address(text):
    address = ipaddress.ip_address(str(text).strip().split("%", 1)[0])
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped or address


def in_networks(address, networks):
    try:
        host = _address(address)
        parsed = [ipaddress.ip_network(str(n).strip(), strict=False) for n in networks]
    except (TypeError, ValueError) as exc:
        raise AnsibleFilterError("in_networks: %s" % exc)
    return any(host.version == net.version and host in net for net in parsed)


class FilterModule(object):
    def filters(self):
        return {"in_networks": in_networks}
