# -*- coding: utf-8 -*-
# Copyright: keelson.stack contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: cron_field_errors
short_description: Cron fields that cron would not parse, one message per bad field
version_added: 0.1.0
description:
  - O(_input) maps a variable name to C([kind, value]) where kind is C(minute), C(hour), C(day), C(month) or
    C(weekday). Each value must be what Debian's cron accepts in that field of C(/etc/cron.d) -- C(*), numbers,
    ranges C(a-b), lists C(a,b) and steps C(*/n), C(a-b/n); weekday also C(mon)..C(sun) and C(7) for Sunday,
    month also C(jan)..C(dec). Returns one message naming the variable per bad value.
options:
  _input:
    description: "C({variable name: [kind, value]})."
    type: dict
    required: true
"""

EXAMPLES = r"""
- name: Show why a schedule would be refused
  ansible.builtin.debug:
    msg: "{{ {'backup_cron_backup_hour': ['hour', '*/6'], 'backup_cron_verify_weekday': ['weekday', 'sun']} | keelson.stack.cron_field_errors }}"
"""

RETURN = r"""
_value:
  description: Messages, in the order of O(_input).
  type: list
  elements: str
"""

import re

RANGES = {"minute": (0, 59), "hour": (0, 23), "day": (1, 31), "month": (1, 12), "weekday": (0, 7)}
NAMES = {
    "month": dict((n, i + 1) for i, n in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split())),
    "weekday": dict((n, i) for i, n in enumerate("sun mon tue wed thu fri sat".split())),
}
ITEM_RE = re.compile(r"^(\*|[0-9a-z]+(?:-[0-9a-z]+)?)(?:/([0-9]+))?$")


def _number(token, kind):
    low, high = RANGES[kind]
    if token.isdigit():
        value = int(token)
    elif token in NAMES.get(kind, {}):
        value = NAMES[kind][token]
    else:
        raise ValueError("%r is not a %s" % (token, kind))
    if not low <= value <= high:
        raise ValueError("%d is outside %d-%d" % (value, low, high))
    return value


def field_error(kind, value):
    """Why cron would refuse ``value`` in a ``kind`` field, or None."""
    text = str(value).strip().lower()
    if not text or any(c.isspace() for c in text):
        return "must be one cron field without spaces"
    for item in text.split(","):
        match = ITEM_RE.match(item)
        if not match:
            return "%r is not *, a number, a range or a step" % item
        base, step = match.groups()
        try:
            if base != "*":
                bounds = [_number(t, kind) for t in base.split("-")]
                if len(bounds) == 2 and bounds[0] > bounds[1]:
                    return "range %r runs backwards" % base
            if step is not None and int(step) < 1:
                return "step in %r must be at least 1" % item
        except ValueError as exc:
            return str(exc)
    return None


def cron_field_errors(fields):
    errors = []
    for name, (kind, value) in fields.items():
        if kind not in RANGES:
            raise ValueError("unknown cron field kind %r" % kind)
        problem = field_error(kind, value)
        if problem:
            errors.append("%s %r: %s" % (name, str(value), problem))
    return errors


class FilterModule(object):
    def filters(self):
        return {"cron_field_errors": cron_field_errors}
