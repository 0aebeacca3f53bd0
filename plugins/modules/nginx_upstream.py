#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: keelson.stack contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: nginx_upstream
short_description: Mark one backend of an nginx upstream up or down (or weigh it), at runtime or by reload, and wait for the drain
version_added: "0.1.0"
description:
  - Edits the upstream include file the C(keelson.stack.nginx) role writes,
    C(/etc/nginx/keelson/upstreams/NAME.conf), whose lines read
    C(server HOST:PORT max_fails=N fail_timeout=Ns;) or, when drained, C(... down;).
    Only the line of O(backend) is rewritten; the file is replaced atomically and the
    previous version kept as C(NAME.conf.prev).
  - Validates with C(nginx -t) and restores the previous file if that fails.
  - "Runtime path: when the nginx role balances the upstream at runtime (C(nginx_upstream_runtime),
    the default), the change is then sent to the running nginx through the root-only control socket
    O(control_socket): no reload, no client connection closed. The drain waits until the Lua balancer
    counts no request in flight to the backend."
  - "Reload path (no control socket, or an upstream or backend the running nginx does not balance at
    runtime): nginx is reloaded and the module waits until it runs workers with the new configuration.
    RV(applied_via) says which path was taken and RV(runtime_unavailable) why the runtime path was not."
  - "Drain on the reload path (O(state=down)): open-source nginx has no per-backend count of in-flight
    requests. On reload, nginx starts new workers, which no longer send requests to the backend, and lets
    the previous workers finish their in-flight requests and exit. The module records the
    workers running before the reload and waits until none of them is left, bounded by
    O(drain_timeout). When that happens no request can be in flight to the backend."
  - Idempotent. If the file already holds O(state) but was written after the running workers
    started (an earlier run stopped between writing and reloading), nginx is reloaded and
    drained anyway and the task reports a change. On the runtime path, a file that already holds
    O(state) while the running nginx does not is applied again, and a drain that changes nothing
    still waits until no request is in flight to the backend (a rerun after a drain that timed out).
author:
  - keelson.stack developers (@keelson)
options:
  upstream:
    description: Name of the upstream. The file is O(upstreams_dir)/NAME.conf.
    type: str
    required: true
  backend:
    description: The backend as written in the file, C(HOST:PORT).
    type: str
    required: true
  state:
    description: C(down) takes the backend out of rotation and drains it, C(up) puts it back.
    type: str
    required: true
    choices: [up, down]
  weight:
    description:
      - Relative share of new requests for the backend (nginx's C(weight)), from 1 to 1000, for a weighted
        canary. Written to the file (C(weight=N); 1 is written as no parameter) and applied like O(state).
      - Omitted, the backend keeps the weight it has.
    type: int
  drain:
    description: With O(state=down), wait until no request is in flight to the backend.
    type: bool
    default: true
  drain_timeout:
    description: Seconds to wait for the drain. When it passes the task still succeeds with RV(drained=false) and a warning.
    type: float
    default: 60
  reload_timeout:
    description: Seconds to wait for nginx to start workers with the new configuration after the reload signal.
    type: float
    default: 15
  upstreams_dir:
    description: Directory of the upstream include files.
    type: path
    default: /etc/nginx/keelson/upstreams
  nginx_binary:
    description: The nginx executable used for C(-t) and C(-s reload).
    type: path
    default: /usr/sbin/nginx
  pid_file:
    description: PID file of the nginx master.
    type: path
    default: /run/nginx.pid
  control_socket:
    description: The nginx role's control socket for runtime backend state.
    type: path
    default: /run/keelson-nginx/control.sock
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: >-
      Reads the file and the running nginx's state (a read-only GET on the control socket), reports whether
      either would change, by which path (RV(applied_via)), and the diff; writes, reloads and sends nothing.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
    details: The diff is the include file before and after.
notes:
  - Run it on the load balancer host, for example with C(delegate_to) from an app host's play.
  - If nginx is not running, the file is updated and validated and the task warns; there is nothing to drain.
"""

EXAMPLES = r"""
- name: Drain replica 1 of app1 before stopping it
  keelson.stack.nginx_upstream:
    upstream: shop_api
    backend: 172.30.77.21:8001
    state: down
    drain_timeout: 60
  delegate_to: lb1

- name: Give a canary a tenth of the new requests (weights 1 and 9 on the others)
  keelson.stack.nginx_upstream:
    upstream: shop_api
    backend: 172.30.77.22:8001
    state: up
    weight: 1
  delegate_to: lb1

- name: Put it back once healthy
  keelson.stack.nginx_upstream:
    upstream: shop_api
    backend: 172.30.77.21:8001
    state: up
  delegate_to: lb1
"""

RETURN = r"""
backend:
  description: The backend acted on.
  returned: always
  type: str
  sample: 172.30.77.21:8001
state:
  description: The requested state.
  returned: always
  type: str
  sample: down
previous_state:
  description: The backend's state in the file before the task.
  returned: always
  type: str
  sample: up
file_changed:
  description: Whether the include file was (or, in check mode, would be) rewritten.
  returned: always
  type: bool
weight:
  description: The backend's weight in the file after the task.
  returned: always
  type: int
  sample: 1
applied_via:
  description: >-
    C(runtime) (control socket, no reload) or C(reload) when the running nginx was (or, in check mode, would be)
    changed; null when nothing was to apply.
  returned: always
  type: str
  sample: runtime
runtime_unavailable:
  description: Why the runtime path was not taken; null when it was.
  returned: always
  type: str
  sample: no control socket at /run/keelson-nginx/control.sock (nginx_upstream_runtime off, or nginx not running)
in_flight:
  description: On the runtime path with O(state=down), requests still in flight to the backend when the drain wait ended (0 when drained); null otherwise.
  returned: always
  type: int
reloaded:
  description: Whether nginx was reloaded.
  returned: always
  type: bool
drained:
  description: >-
    With O(state=down), whether the drain finished in time: no request in flight to the backend (runtime path) or
    every worker of the previous generation exited (reload path); null when there was no drain.
  returned: always
  type: bool
drain_seconds:
  description: Seconds the drain took (or waited, if it timed out); null when there was no drain.
  returned: always
  type: float
  sample: 0.41
old_workers_remaining:
  description: Workers of the previous generation still alive when the drain wait ended; null when there was no drain by reload.
  returned: always
  type: int
backup:
  description: Copy of the file before the change.
  returned: when the file changed
  type: str
  sample: /etc/nginx/keelson/upstreams/shop_api.conf.prev
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.keelson.stack.plugins.module_utils.nginx_upstream import (
    Control, ControlUnavailable, UpstreamError, set_upstream_backend)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            upstream=dict(type="str", required=True),
            backend=dict(type="str", required=True),
            state=dict(type="str", required=True, choices=["up", "down"]),
            weight=dict(type="int"),
            drain=dict(type="bool", default=True),
            drain_timeout=dict(type="float", default=60),
            reload_timeout=dict(type="float", default=15),
            upstreams_dir=dict(type="path", default="/etc/nginx/keelson/upstreams"),
            nginx_binary=dict(type="path", default="/usr/sbin/nginx"),
            pid_file=dict(type="path", default="/run/nginx.pid"),
            control_socket=dict(type="path", default="/run/keelson-nginx/control.sock"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if "/" in p["upstream"] or p["upstream"].startswith("."):
        module.fail_json(msg="upstream must be a plain name, got %r" % p["upstream"])
    path = os.path.join(p["upstreams_dir"], p["upstream"] + ".conf")
    if not os.path.isfile(path):
        module.fail_json(msg="%s does not exist: is upstream %s managed by the nginx role here?" % (path, p["upstream"]))

    def run(argv):
        return module.run_command(argv)

    try:
        result = set_upstream_backend(
            path, p["backend"], p["state"], run, check_mode=module.check_mode, drain=p["drain"],
            drain_timeout=p["drain_timeout"], reload_timeout=p["reload_timeout"],
            nginx=p["nginx_binary"], pid_file=p["pid_file"], weight=p["weight"], upstream=p["upstream"],
            control=Control(p["control_socket"]))
    except (UpstreamError, ControlUnavailable, OSError) as exc:
        module.fail_json(msg=str(exc))
    for warning in result.pop("warnings"):
        module.warn(warning)
    diff = result.pop("diff")
    if module._diff and result["file_changed"]:
        result["diff"] = diff
    module.exit_json(**result)


if __name__ == "__main__":
    main()
