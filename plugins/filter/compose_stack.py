# -*- coding: utf-8 -*-
# Copyright: keelson.stack contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters over compose_stack definitions; the logic is in module_utils/compose_stack.py."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: compose_stack_validate
short_description: Checks a compose_stack definition's cross-field rules
description:
  - Fails listing every problem (port collisions between services and replicas, unknown
    services in depends_on or jobs, undeclared volumes, networks and secrets, tag and digest
    both or neither set, ...). Returns the stack unchanged when it is valid.
  - Companion filters in this file are C(compose_stack_compose) (the Compose document),
    C(compose_stack_backends) (published backends of one host) and C(compose_stack_upstreams)
    (the nginx role's C(nginx_upstreams) from every app host's backends), C(compose_stack_rollout_pins)
    (which pins of C(compose.rollout.yaml) still match compose.yaml's images) C(compose_stack_rollout_units)
    (what a rollout replaces on the host, one unit per replica, every published service's replicas, then every
    service without published ports, as M(keelson.stack.compose_rollout) takes them),
    C(compose_stack_rollout_surges) (the surge replicas of the start_first services, which a rollout starts
    before it replaces their replicas), C(compose_stack_rollout_targets) (the image each of those units goes
    to), C(compose_stack_for_host)
    (the services placed on the host it is rendered for, and their jobs), C(compose_stack_host_jobs) (the jobs of
    those services, with the Compose service each runs in) and C(compose_stack_jobs_once) (each job once, on the
    first app host that asks for it), C(compose_stack_exec_target) (the app host and Compose service
    playbooks/exec.yml runs a command in), C(compose_stack_logs_errors) (what is wrong with
    playbooks/logs.yml's settings) and C(compose_stack_merged_logs) (the logs of one service's replicas on
    every app host as one timeline, each line prefixed by host and replica), and C(compose_stack_errors)
    (the same checks as this filter and the secrets' names, returned as a list of messages instead of failing).
options:
  _input:
    description: The stack, as the compose_stack role assembles it.
    type: dict
    required: true
"""

from ansible.errors import AnsibleFilterError

from ansible_collections.keelson.stack.plugins.module_utils import compose_stack as cs
from ansible_collections.keelson.stack.plugins.module_utils import service_logs


def compose_stack_validate(stack):
    try:
        return cs.validate(stack)
    except cs.StackError as exc:
        raise AnsibleFilterError(str(exc))


def compose_stack_compose(stack, bind_address="", secrets=None):
    """Validates the stack (and the secrets' names and values, reporting names only),
    then renders it."""
    try:
        cs.validate(stack)
        cs.env_file(secrets or {})
    except cs.StackError as exc:
        raise AnsibleFilterError(str(exc))
    return cs.compose(stack, bind_address)


def compose_stack_errors(stack, secrets=None):
    """[] for a valid stack and secrets, else one message per problem (secret names, never values)."""
    return cs.problems(stack, secrets)


def compose_stack_backends(stack, host):
    return cs.backends(stack, host)


def compose_stack_upstreams(backends_per_host, services=None, keepalive=32, max_fails=1, fail_timeout=10):
    return cs.upstreams(backends_per_host, services, keepalive, max_fails, fail_timeout)


def compose_stack_image_ref(service):
    return cs.image_ref(service)


def compose_stack_release_images(stack, images, missing_ok=False):
    try:
        return cs.release_images(stack, images, missing_ok)
    except cs.StackError as exc:
        raise AnsibleFilterError(str(exc))


def compose_stack_fingerprint(compose_text, services):
    return cs.release_fingerprint(compose_text, services)


def compose_stack_rollout_pending(stack, services, previous):
    return cs.rollout_pending(stack, services, previous)


def compose_stack_rollout_units(stack, backends, services=None):
    return cs.rollout_units(stack, backends, services)


def compose_stack_rollout_surges(stack, backends, services=None):
    return cs.rollout_surges(stack, backends, services)


def compose_stack_rollout_targets(stack, backends, services=None, image=None):
    try:
        return cs.rollout_targets(stack, backends, services, image)
    except ValueError as exc:
        raise AnsibleFilterError(str(exc))


def compose_stack_for_host(stack):
    return cs.for_host(stack)


def compose_stack_rollout_pins(pins, stack, services_now, services_before, pin_ids):
    return cs.rollout_pins_to_keep(pins, stack, services_now, services_before, pin_ids)


def compose_stack_host_jobs(stack):
    try:
        return cs.host_jobs(stack)
    except cs.StackError as exc:
        raise AnsibleFilterError(str(exc))


def compose_stack_jobs_once(hosts):
    """Each job once, from the app hosts' hostvars in play order (their
    compose_stack__jobs_due, as the role sets it): [{name, host, service, command}]."""
    return cs.jobs_once([{"host": h["inventory_hostname"], "jobs": h.get("compose_stack__jobs_due") or []}
                         for h in hosts])


def compose_stack_wait_probes(containers):
    return cs.wait_probes(containers)


def compose_stack_health_report(containers):
    return cs.health_report(containers)


def compose_stack_env_file(secrets):
    try:
        return cs.env_file(secrets)
    except cs.StackError as exc:
        raise AnsibleFilterError(str(exc))


def compose_stack_exec_target(stack, service, host=""):
    try:
        return cs.exec_target(stack, service, host)
    except cs.StackError as exc:
        raise AnsibleFilterError("; ".join(exc.errors))


def compose_stack_logs_errors(stack, service, since="", lines=1):
    """[] when playbooks/logs.yml can read `lines` of `service`'s logs since `since`, else the messages."""
    return service_logs.settings_errors(stack, service, since, lines)


def compose_stack_merged_logs(hosts, last=None):
    """hosts: each app host's hostvars, with its `docker logs` loop registered as compose_stack__logs."""
    return service_logs.merged_hosts(hosts, last)


class FilterModule(object):
    def filters(self):
        return {
            "compose_stack_validate": compose_stack_validate,
            "compose_stack_compose": compose_stack_compose,
            "compose_stack_errors": compose_stack_errors,
            "compose_stack_backends": compose_stack_backends,
            "compose_stack_upstreams": compose_stack_upstreams,
            "compose_stack_env_file": compose_stack_env_file,
            "compose_stack_image_ref": compose_stack_image_ref,
            "compose_stack_release_images": compose_stack_release_images,
            "compose_stack_fingerprint": compose_stack_fingerprint,
            "compose_stack_rollout_pending": compose_stack_rollout_pending,
            "compose_stack_host_jobs": compose_stack_host_jobs,
            "compose_stack_jobs_once": compose_stack_jobs_once,
            "compose_stack_wait_probes": compose_stack_wait_probes,
            "compose_stack_health_report": compose_stack_health_report,
            "compose_stack_rollout_pins": compose_stack_rollout_pins,
            "compose_stack_rollout_units": compose_stack_rollout_units,
            "compose_stack_rollout_surges": compose_stack_rollout_surges,
            "compose_stack_rollout_targets": compose_stack_rollout_targets,
            "compose_stack_for_host": compose_stack_for_host,
            "compose_stack_exec_target": compose_stack_exec_target,
            "compose_stack_logs_errors": compose_stack_logs_errors,
            "compose_stack_merged_logs": compose_stack_merged_logs,
        }
