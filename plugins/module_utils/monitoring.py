# -*- coding: utf-8 -*-
# Copyright: keelson.stack contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which exporters each host runs, on which port: the one table the monitoring role (what runs),
the base role (what the firewall opens to the monitor hosts) and the prometheus role (what is
scraped) read."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.module_utils.parsing.convert_bool import boolean

# The exporters' usual ports (the Prometheus wiki's port allocations), fixed by the collection.
EXPORTER_PORTS = {
    "node": 9100,
    "postgres": 9187,
    "redis": 9121,
    "rabbitmq": 15692,
    "nginx": 9113,
    "edge": 9145,
    "docker": 9323,
    "containers": 9417,
}

# exporter, the collection group whose hosts run it (None: every host), the host's switch for the
# service it watches (None: always, when monitoring is on).
EXPORTERS = (
    ("node", None, None),
    ("postgres", "db", "postgresql_enabled"),
    ("redis", "db", "redis_enabled"),
    ("rabbitmq", "db", "rabbitmq_enabled"),
    ("nginx", "lb", None),
    ("edge", "lb", None),
    ("docker", "app", None),
    ("containers", "app", None),
)

# The collection's groups, each named by a keelson_*_group variable (group_vars/all/main.yml).
GROUPS = ("lb", "app", "db", "monitor")


def exporter_port(name):
    try:
        return EXPORTER_PORTS[name]
    except KeyError:
        raise ValueError("unknown exporter %r; known: %s" % (name, ", ".join(sorted(EXPORTER_PORTS))))


def _switch(hostvars, name, default=True):
    value = hostvars.get(name, default)
    return boolean(value, strict=False) if value is not None else default


def group_names(hostvars):
    """The inventory group name of each collection group, as this host's variables name them."""
    return dict((group, hostvars.get("keelson_%s_group" % group) or group) for group in GROUPS)


def host_groups(host, hostvars, groups):
    """The collection groups the host is in, in GROUPS order."""
    names = group_names(hostvars)
    return [group for group in GROUPS if host in (groups.get(names[group]) or [])]


def host_exporters(host, hostvars, groups):
    """The exporters a host runs, as [{"name", "port"}]; none when its monitoring_enabled is false."""
    if not _switch(hostvars, "monitoring_enabled"):
        return []
    member = host_groups(host, hostvars, groups)
    return [
        {"name": name, "port": EXPORTER_PORTS[name]}
        for name, group, switch in EXPORTERS
        if (group is None or group in member) and (switch is None or _switch(hostvars, switch))
    ]


def _address(address, port):
    address = str(address)
    return "[%s]:%d" % (address, port) if ":" in address else "%s:%d" % (address, port)


def scrape_targets(all_hostvars, groups):
    """Prometheus scrape jobs from the inventory: one job per exporter, each target labelled with
    its inventory host, the collection group it is scraped as and its environment."""
    jobs = []
    hosts = groups.get("all") or sorted(all_hostvars)
    for name, group, _switch_name in EXPORTERS:
        targets = []
        for host in hosts:
            hostvars = all_hostvars[host]
            if name not in [e["name"] for e in host_exporters(host, hostvars, groups)]:
                continue
            address = hostvars.get("keelson_private_address")
            if not address:
                raise ValueError("host %s has no keelson_private_address to scrape its %s exporter at" % (host, name))
            member = host_groups(host, hostvars, groups)
            label_group = group or (member[0] if member else "other")
            targets.append({
                "address": _address(address, EXPORTER_PORTS[name]),
                "labels": {
                    "host": host,
                    "group": label_group,
                    "environment": str(hostvars.get("keelson_environment") or ""),
                },
            })
        if targets:
            jobs.append({"job": name, "targets": targets})
    return jobs


def expected_backups(all_hostvars, groups):
    """The databases the inventory backs up, as [{"host", "database", "environment"}]: each db host's
    backup_databases, where its PostgreSQL and monitoring are on. Prometheus alerts when one of them
    has no backup metrics at all (its backup never ran, or its metrics file is gone)."""
    expected = []
    hosts = groups.get("all") or sorted(all_hostvars)
    for host in hosts:
        hostvars = all_hostvars[host]
        if "db" not in host_groups(host, hostvars, groups):
            continue
        if not (_switch(hostvars, "monitoring_enabled") and _switch(hostvars, "postgresql_enabled")):
            continue
        for database in hostvars.get("backup_databases") or []:
            expected.append({"host": host, "database": str(database),
                             "environment": str(hostvars.get("keelson_environment") or "")})
    return expected
