# -*- coding: utf-8 -*-
# Copyright: keelson.stack developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: rollout_plan
short_description: The plan of a rolling deploy or restart, for --check
version_added: 0.1.0
description:
  - Batches of app hosts exactly as the play's C(serial) splits them (the first batch is the canary),
    per host the replicas in replacement order with the image digest (or reference) they run and the
    one they would run, and whether each changes.
  - Pure function, no I/O. The input comes from M(keelson.stack.compose_rollout) with C(action=status) on each host.
  - "Its companion C(rollout_settings_errors) serves the rollout role: every problem of the role's settings against
    the stack, one string each, as in C(services | keelson.stack.rollout_settings_errors(rollout_services, serial))."
  - Its companion C(rollout_monitor_probes) turns the hostvars of the app hosts rolled so far into the HTTP probes
    of the monitoring window (every replica's health path on its backend address); C(rollout_jobs) turns the
    hostvars of the app hosts into the release's jobs, each to run once (on the first host its service runs on,
    on that host's target image), and C(rollout_job_line) prints one.
  - "Its companion C(rollout_roll_steps) orders one host's roll: the changing replicas, each start_first service's
    surge started right before its first one and removed right after its last."
options:
  _input:
    description: "Per host, the replicas' current state: C({host: {replica: {image, digest}}})."
    type: dict
    required: true
  hosts:
    description: The app hosts in play order.
    type: list
    elements: str
    required: true
  replicas:
    description:
      - "The replicas, C([{service, port}]), in replacement order, the same on every host; or C({host: [{service, port}]})
        when placement makes them differ. C(port) is omitted for a service without published ports."
    type: raw
    required: true
  action:
    description: C(deploy) or C(restart).
    type: str
    required: true
  image:
    description: The image reference to deploy.
    type: str
  digest:
    description: The image's registry digest, if known; compared instead of references.
    type: str
  serial:
    description: The play's C(serial) (list of sizes or percentages).
    type: list
    elements: raw
    default: [1, "50%"]
  changes:
    description:
      - "Per host and replica, whether it changes: C({host: {replica: bool}}), for example from
        M(keelson.stack.compose_rollout) C(action=deploy) in check mode, which compares image IDs.
        Decides over the comparison of references and digests where given."
    type: dict
  targets:
    description: "Per host and replica, the image to run (a rollback's targets): C({host: {replica: reference}})."
    type: dict
"""

EXAMPLES = r"""
- name: Print the plan
  ansible.builtin.debug:
    msg: "{{ (current | keelson.stack.rollout_plan(groups['app'], replicas, 'deploy', image=new_image)).lines }}"
"""

RETURN = r"""
_value:
  description:
    - C(batches), C(canary), C(hosts) (per host C(replicas) with C(name), C(port), C(from), C(to), C(changes)),
      C(replicas_to_change), C(unchanged_hosts), and C(lines), the plan as text.
  type: dict
"""

from ansible.errors import AnsibleFilterError
from ansible_collections.keelson.stack.plugins.module_utils.compose_stack import rollout_jobs as _jobs
from ansible_collections.keelson.stack.plugins.module_utils.release import (
    plan_lines, roll_steps, rollout_plan as _plan, rollout_settings_errors)


def rollout_plan(current, hosts, replicas, action, image=None, digest=None, serial=(1, "50%"), changes=None,
                 targets=None):
    try:
        def names(items):
            return [{"name": r.get("name") or r["service"], "port": r.get("port")} for r in items]
        replicas = dict((h, names(r)) for h, r in replicas.items()) if isinstance(replicas, dict) else names(replicas)
        plan = _plan(hosts, replicas, current or {}, action, image, digest, serial, changes, targets)
    except (KeyError, ValueError) as exc:
        raise AnsibleFilterError("rollout_plan: %s" % exc)
    plan["lines"] = plan_lines(plan)
    return plan


def rollout_monitor_probes(hosts, health_path="/health"):
    """HTTP probes of every replica of the given app hosts (their hostvars, with
    keelson_rollout_replicas and keelson_rollout_address as the rollout playbook sets
    them), as M(keelson.stack.health_gate) takes them: the monitoring window. A replica's
    own health_path (its service's) wins over `health_path`."""
    probes = []
    for host in hosts:
        for replica in host["keelson_rollout_replicas"]:
            if not replica.get("port"):
                continue  # a worker: its gate was Docker's, it has no health path
            path = replica.get("health_path") or health_path
            probes.append({"type": "http", "name": "%s %s" % (host["inventory_hostname"], replica["service"]),
                           "url": "http://%s:%d%s" % (host["keelson_rollout_address"], replica["port"], path)})
    return probes


def rollout_jobs(hosts):
    """The release's jobs, each once, from the hostvars of the app hosts in play order
    (compose_stack_placed and keelson_rollout_targets, as the rollout playbook sets them):
    [{name, host, service, command, image}]."""
    try:
        return _jobs([{"host": h["inventory_hostname"], "stack": h["compose_stack_placed"],
                       "targets": h["keelson_rollout_targets"]} for h in hosts])
    except (KeyError, ValueError) as exc:
        raise AnsibleFilterError("rollout_jobs: %s" % exc)


def rollout_job_line(job):
    return "job %s once on %s: %s in %s, image %s" % (
        job["name"], job["host"], " ".join(job["command"]), job["service"], job["image"])


class FilterModule(object):
    def filters(self):
        return {"rollout_plan": rollout_plan, "rollout_monitor_probes": rollout_monitor_probes,
                "rollout_jobs": rollout_jobs, "rollout_job_line": rollout_job_line,
                "rollout_settings_errors": rollout_settings_errors, "rollout_roll_steps": roll_steps}
