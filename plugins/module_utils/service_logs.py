# -*- coding: utf-8 -*-
# Copyright: keelson.stack developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One service's logs from every app host as one timeline (playbooks/logs.yml):
`docker logs --timestamps` of each replica, merged by time, each line prefixed
by host and replica.

Docker's timestamps are RFC 3339 with trailing zeros of the fraction dropped
("...:05.1Z" is later than "...:05.05Z"), so lines are ordered by parsed time,
never as text.
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import calendar
import re
import time

from ansible_collections.keelson.stack.plugins.module_utils.compose_stack import StackError, named_service

STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d) ?")
# What `docker logs --since` takes: a duration (10m, 1h30m), a Unix time, or an RFC 3339 date or time.
SINCE = re.compile(r"^(?:(?:\d+(?:\.\d+)?(?:ns|us|ms|s|m|h))+|\d+(?:\.\d+)?|"
                   r"\d{4}-\d\d-\d\d(?:T\d\d:\d\d(?::\d\d(?:\.\d{1,9})?)?(?:Z|[+-]\d\d:\d\d)?)?)$")


def settings_errors(stack, service, since="", lines=1):
    """[] when playbooks/logs.yml can read `lines` of `service`'s logs since `since`, else the messages."""
    errors = []
    try:
        named_service(stack, service, "compose_stack_logs_service")
    except StackError as exc:
        errors.extend(exc.errors)
    if int(lines) < 1:
        errors.append("compose_stack_logs_lines: %s is not a number of lines (1 or more)" % lines)
    return errors + since_errors(since)


def since_errors(since):
    """[] when `docker logs --since` takes `since` (or it is empty), else one message."""
    if not since or SINCE.match(since):
        return []
    return ["compose_stack_logs_since: %r is not a duration (10m, 1h30m), a Unix time or an RFC 3339 time "
            "(2026-12-07T03:00:00Z)" % since]


def stamp_key(line):
    """(UTC seconds, nanoseconds) of a `docker logs --timestamps` line, or None."""
    match = STAMP.match(line)
    if not match:
        return None
    seconds = calendar.timegm(time.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S"))
    zone = match.group(3)
    if zone != "Z":
        offset = int(zone[1:3]) * 3600 + int(zone[4:6]) * 60
        seconds -= offset if zone[0] == "+" else -offset
    return seconds, int((match.group(2) or "0").ljust(9, "0"))


def sources_from(host, results):
    """One source per container from a host's `docker logs` loop results: its
    name ("app1/api-2" from the keelson.stack labels) and its lines (stdout and
    stderr, which `docker logs` splits by the container's stream)."""
    out = []
    for result in results or []:
        if result.get("skipped"):
            continue
        labels = (result.get("item") or {}).get("Labels") or {}
        name = labels.get("keelson.stack.service") or "?"
        if labels.get("keelson.stack.replica"):
            name = "%s-%s" % (name, labels["keelson.stack.replica"])
        lines = (result.get("stdout_lines") or []) + (result.get("stderr_lines") or [])
        out.append({"name": "%s/%s" % (host, name), "lines": lines})
    return out


def merged_hosts(hosts, last=None):
    """The merged timeline of every app host's `docker logs` loop. hosts: each
    host's hostvars, with the loop registered as compose_stack__logs."""
    sources = []
    for hostvars in hosts:
        sources.extend(sources_from(hostvars["inventory_hostname"],
                                    (hostvars.get("compose_stack__logs") or {}).get("results")))
    return merge(sources, int(last) if last else None)


def merge(sources, last=None):
    """Every source's lines in time order, each prefixed by its source's name; the
    last `last` of them when set. A line without a timestamp (a wrapped one) stays
    after the line before it; equal times keep their source's order."""
    keyed = []
    for index, source in enumerate(sources):
        key = (0, 0)
        for position, line in enumerate(source["lines"]):
            key = stamp_key(line) or key
            keyed.append((key, index, position, "%s %s" % (source["name"], line)))
    keyed.sort()
    lines = [entry[3] for entry in keyed]
    return lines[-last:] if last else lines
