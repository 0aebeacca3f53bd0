# -*- coding: utf-8 -*-
# Copyright: keelson.stack contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters over the exporters table; the logic is in module_utils/monitoring.py."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: exporter_port
short_description: The port of one of the collection's exporters
version_added: 0.1.0
description:
  - The ports are fixed by the collection. C(node) 9100 on every host; C(postgres) 9187, C(redis) 9121 and
    C(rabbitmq) 15692 on db hosts; C(nginx) 9113 and C(edge) 9145 on lb hosts; C(docker) 9323 and
    C(containers) 9417 on app hosts.
  - Companion filters in this file are C(host_exporters) and C(scrape_targets).
  - C(host_exporters) gives the exporters a host runs by its groups and the data services it has switched
    on, as a list of C({name, port}). The monitoring role installs them and the base role's firewall opens
    them to the monitor hosts.
  - C(scrape_targets) gives the Prometheus jobs of the inventory, each target labelled with C(host),
    C(group) and C(environment).
  - C(expected_backups) gives the databases the db hosts back up (their C(backup_databases)), as a list of
    C({host, database, environment}), for the alert on a database without backup metrics.
options:
  _input:
    description: The exporter's name.
    type: str
    required: true
"""

EXAMPLES = r"""
- name: Where node_exporter listens
  ansible.builtin.debug:
    msg: "{{ keelson_private_address }}:{{ 'node' | keelson.stack.exporter_port }}"

- name: The exporters this host runs
  ansible.builtin.debug:
    msg: "{{ inventory_hostname | keelson.stack.host_exporters(hostvars[inventory_hostname], groups) }}"

- name: What Prometheus scrapes
  ansible.builtin.debug:
    msg: "{{ hostvars | keelson.stack.scrape_targets(groups) }}"

- name: The databases whose backups Prometheus expects
  ansible.builtin.debug:
    msg: "{{ hostvars | keelson.stack.expected_backups(groups) }}"
"""

RETURN = r"""
_value:
  description: The port.
  type: int
"""

from ansible.errors import AnsibleFilterError

from ansible_collections.keelson.stack.plugins.module_utils import monitoring


def exporter_port(name):
    try:
        return monitoring.exporter_port(name)
    except ValueError as exc:
        raise AnsibleFilterError("exporter_port: %s" % exc)


def host_exporters(host, hostvars, groups):
    return monitoring.host_exporters(host, hostvars, groups)


def expected_backups(hostvars, groups):
    return monitoring.expected_backups(hostvars, groups)


def scrape_targets(hostvars, groups):
    try:
        return monitoring.scrape_targets(hostvars, groups)
    except ValueError as exc:
        raise AnsibleFilterError("scrape_targets: %s" % exc)


class FilterModule(object):
    def filters(self):
        return {"exporter_port": exporter_port, "host_exporters": host_exporters, "scrape_targets": scrape_targets,
                "expected_backups": expected_backups}
