#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: keelson.stack contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: health_gate
short_description: Wait until health probes pass several times in a row before a deadline
version_added: "0.1.0"
description:
  - Runs HTTP(S), TCP and Docker container health probes from the target host, round after round,
    until every probe has passed O(consecutive) times in a row.
  - A probe that has reached its count (and O(stable_seconds)) is not run again. A failure resets that probe's count.
  - Fails at the deadline (O(timeout)) with the last failure reason of each probe still pending.
    Fails at once when a Docker probe sees the container stopped or Docker has marked it C(unhealthy),
    because waiting cannot help then.
  - The module only reads; it never changes the target.
author:
  - keelson.stack developers (@keelson)
options:
  probes:
    description: The probes. Each must pass.
    type: list
    elements: dict
    required: true
    suboptions:
      type:
        description: C(http) sends a request, C(tcp) opens a connection, C(docker) reads the container state from the Docker engine.
        type: str
        required: true
        choices: [http, tcp, docker]
      name:
        description: Label used in results and messages. Defaults to the type and target.
        type: str
      url:
        description: URL for C(http) probes (C(http://) or C(https://)).
        type: str
      method:
        description: HTTP method.
        type: str
        default: GET
      status:
        description: HTTP status codes that count as success.
        type: list
        elements: int
        default: [200]
      body_regex:
        description: A Python regular expression the response body (first 64 KiB) must match.
        type: str
      body_contains:
        description: A string the response body (first 64 KiB) must contain.
        type: str
      body:
        description: Request body (set a C(Content-Type) in O(probes[].headers)).
        type: str
      headers:
        description: Extra request headers. When they carry credentials, set C(no_log) on the task.
        type: dict
      connect_address:
        description:
          - Open the connection to this address instead of the URL's host, like curl's C(--resolve).
          - The C(Host) header, TLS SNI and the certificate's name check still use the URL's host,
            so a site can be probed by its public name through one particular edge.
        type: str
      host_header:
        description: Value of the C(Host) header, for probing a virtual host through an address.
        type: str
      ca_file:
        description: PEM bundle of CAs trusted for C(https) URLs. Defaults to the system store.
        type: path
      insecure:
        description: Skip TLS certificate and host name verification.
        type: bool
        default: false
      host:
        description: Host for C(tcp) probes.
        type: str
      port:
        description: Port for C(tcp) probes.
        type: int
      container:
        description: Container name or ID for C(docker) probes.
        type: str
      require_healthcheck:
        description:
          - For C(docker) probes, whether a container without a healthcheck fails.
          - When false, C(running) counts as success.
        type: bool
        default: true
      timeout:
        description: Seconds one attempt may take.
        type: float
        default: 2
  consecutive:
    description: Passes in a row each probe needs.
    type: int
    default: 3
  interval:
    description: Seconds between rounds.
    type: float
    default: 1
  stable_seconds:
    description:
      - Each probe's run of passes must also span at least this many seconds, so that a service that
        answers and then dies a few seconds after start does not pass.
      - Must be shorter than O(timeout).
    type: float
    default: 0
  timeout:
    description: Seconds from the start until the gate fails.
    type: float
    default: 60
  watch_seconds:
    description:
      - After the gate has passed, keep running every probe each O(interval) for this many seconds (a monitoring
        window). The task fails as soon as a probe fails O(watch_failure_threshold) times in a row, or at once when a
        container has exited or is unhealthy. V(0) ends the task when the gate passes.
    type: float
    default: 0
  watch_failure_threshold:
    description: Failures in a row of one probe that fail the monitoring window.
    type: int
    default: 2
requirements:
  - Docker SDK for Python on the target, for C(docker) probes only.
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: The probes only read, so they run in check mode too.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
notes:
  - Probes run from the target host. Delegate the task to probe from another host, for example through the load balancer.
"""

EXAMPLES = r"""
- name: Wait for the new replica to answer on its own port and through nginx
  keelson.stack.health_gate:
    probes:
      - type: docker
        container: shop-api-1-1
      - type: http
        url: http://127.0.0.1:8001/health
        body_regex: '"status": *"ok"'
      - type: http
        url: https://172.30.77.11/health
        host_header: shop.lab.test
        ca_file: /etc/ssl/certs/keelson-lab-ca.pem
        status: [200]
      - type: tcp
        host: 127.0.0.1
        port: 8001
    consecutive: 3
    interval: 1
    timeout: 60

- name: Keep watching every replica updated so far for 30 s after a batch
  keelson.stack.health_gate:
    probes:
      - {type: http, url: "http://10.0.0.21:8001/health"}
      - {type: http, url: "http://10.0.0.21:8002/health"}
    consecutive: 1
    timeout: 30
    watch_seconds: 30
    watch_failure_threshold: 2
"""

RETURN = r"""
passed:
  description: Whether every probe passed.
  returned: always
  type: bool
  sample: true
total_seconds:
  description: Seconds from the start to the end of the gate.
  returned: always
  type: float
  sample: 4.12
reason:
  description: Why the gate failed; empty when it passed. An HTTP failure quotes the first 200 characters of the body.
  returned: always
  type: str
  sample: "deadline of 60s passed: http http://127.0.0.1:8001/health: status 503, expected 200: db down"
watch:
  description: With O(watch_seconds), the monitoring window (C(passed), C(reason), C(total_seconds), C(rounds), and per probe
    C(name), C(attempts), C(failures), C(last_failure)).
  returned: when watch_seconds is above 0 and the gate passed
  type: dict
probes:
  description: One entry per probe, in the order given.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The probe label.
      type: str
    attempts:
      description: Attempts made.
      type: int
    successes:
      description: Attempts that passed.
      type: int
    first_success_seconds:
      description: Seconds from the start to the first pass, null if none.
      type: float
    passed_seconds:
      description: Seconds from the start until the probe had passed O(consecutive) times in a row, null if never.
      type: float
    last_failure:
      description: Reason of the most recent failed attempt, null if none failed.
      type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.keelson.stack.plugins.module_utils.probes import GateFailed, wait_for_probes, watch_probes

PROBE_OPTIONS = dict(
    type=dict(type="str", required=True, choices=["http", "tcp", "docker"]),
    name=dict(type="str"),
    url=dict(type="str"),
    method=dict(type="str", default="GET"),
    status=dict(type="list", elements="int", default=[200]),
    body_regex=dict(type="str"),
    body_contains=dict(type="str"),
    body=dict(type="str"),
    headers=dict(type="dict"),
    connect_address=dict(type="str"),
    host_header=dict(type="str"),
    ca_file=dict(type="path"),
    insecure=dict(type="bool", default=False),
    host=dict(type="str"),
    port=dict(type="int"),
    container=dict(type="str"),
    require_healthcheck=dict(type="bool", default=True),
    timeout=dict(type="float", default=2),
)

REQUIRED_BY_TYPE = {"http": ("url",), "tcp": ("host", "port"), "docker": ("container",)}


def main():
    module = AnsibleModule(
        argument_spec=dict(
            probes=dict(type="list", elements="dict", required=True, options=PROBE_OPTIONS),
            consecutive=dict(type="int", default=3),
            interval=dict(type="float", default=1),
            stable_seconds=dict(type="float", default=0),
            timeout=dict(type="float", default=60),
            watch_seconds=dict(type="float", default=0),
            watch_failure_threshold=dict(type="int", default=2),
        ),
        supports_check_mode=True,
    )
    probes = module.params["probes"]
    for probe in probes:
        missing = [key for key in REQUIRED_BY_TYPE[probe["type"]] if probe.get(key) in (None, "")]
        if missing:
            module.fail_json(msg="%s probe needs %s" % (probe["type"], ", ".join(missing)))
    try:
        result = wait_for_probes(probes, consecutive=module.params["consecutive"],
                                 interval=module.params["interval"], timeout=module.params["timeout"],
                                 stable_seconds=module.params["stable_seconds"])
        if module.params["watch_seconds"] > 0:
            try:
                result["watch"] = watch_probes(probes, module.params["watch_seconds"], module.params["interval"],
                                               module.params["watch_failure_threshold"])
            except GateFailed as exc:
                module.fail_json(msg=exc.reason, changed=False, watch=exc.result, **result)
    except ValueError as exc:
        module.fail_json(msg=str(exc))
    except GateFailed as exc:
        module.fail_json(msg=exc.reason, changed=False, **exc.result)
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
