#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: keelson.stack contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: compose_rollout
short_description: Replace one replica of a Compose service behind nginx, gated, with automatic restore
version_added: "0.1.0"
description:
  - Works on one app host, on a Compose project under C(/opt/keelson/stacks/PROJECT) whose service
    has one Compose service per replica (C(api-1), C(api-2), ...), each publishing its own host port,
    so that each replica is one nginx backend.
  - "O(action=deploy) and O(action=restart) act on one replica (O(replica)): note the running image,
    stop the container gracefully (C(docker compose stop -t) O(stop_grace_period): the service's stop
    signal, SIGTERM by default, then SIGKILL), pin the image in C(compose.rollout.yaml) next to the
    compose file, recreate the replica, and gate it: Docker health and C(http://)O(health_address)C(:PORT)O(health_path)
    must pass O(gate_consecutive) times in a row, over at least O(gate_stable_seconds), within O(gate_timeout) (the C(health_gate) logic).
    O(action=restart) recreates on the running image."
  - On a failed gate the new container is stopped, the previous image (pinned by digest or image ID)
    is recreated and gated, and the task fails with the gate's reason and the container's last log
    lines. RV(serving) says whether the replica is healthy again, so the playbook knows it may be put
    back into nginx.
  - The module does not talk to nginx. The playbook drains the replica's backend with
    M(keelson.stack.nginx_upstream) delegated to the lb host before this task and marks it up after it
    (also after a restore). This keeps each host's work on that host and the lb step visible in the play.
  - Replicas are replaced stop-first, one at a time, so the service loses one replica of capacity
    while one is replaced (maxUnavailable 1), and other replicas keep serving. A start_first service's surge
    replica (O(action=start_surge)) serves meanwhile, so that its host keeps its capacity.
  - A replica without O(replicas[].port) is a service that publishes no port (a worker, a scheduler). It is
    replaced the same way, stopped with its own grace period so that in-flight jobs finish, and gated on
    Docker alone.
  - Each replica step is written to the release record C(releases/RECORD_ID.json) as it happens, so
    an interrupted run leaves a record saying where it stopped. O(action=finish) closes the record
    with an outcome and appends one line to C(audit.log).
  - O(action=start_surge) starts a start_first service's surge replica (O(replica), its Compose service C(NAME-surge), on
    its spare port) on O(image), pinned by digest, and gates it as a replica; a failed gate removes it again and
    fails. O(action=remove_surge) stops it with its grace period and removes it (nothing to do when it is not there).
    The playbook puts the surge into nginx after the start and drains it before the removal, so that new serves
    before old stops.
  - O(action=status) reports what runs now (image, image ID, digest, health) per replica, for plans.
  - O(action=job) runs one of the release's jobs (a migration) once, C(docker compose run --rm) of O(command) in the
    Compose service O(replica) on O(image), pinned by digest, without publishing ports or starting dependencies. The
    playbooks run each job on one app host, before any replica of the new release takes traffic. A job container of
    the project that is still running (an interrupted run's migration outlives its controller) is waited for, up to
    10 minutes, so that two jobs never run at once; the job fails naming it after that.
author:
  - keelson.stack developers (@keelson)
options:
  project_dir:
    description: The Compose project directory.
    type: path
    required: true
  project:
    description: The Compose project name. Defaults to the directory's name.
    type: str
  compose_files:
    description: Compose files in O(project_dir), before C(compose.rollout.yaml) which is added when present.
    type: list
    elements: str
    default: [compose.yaml]
  action:
    description: What to do.
    type: str
    choices: [status, deploy, restart, finish, job, start_surge, remove_surge]
    default: status
  replicas:
    description: Every replica the run replaces on this host, in replacement order.
    type: list
    elements: dict
    required: true
    suboptions:
      service:
        description: The replica's Compose service name.
        type: str
        required: true
      port:
        description:
          - The replica's published host port (its nginx backend port), probed at O(health_path) by the gate.
          - Omitted for a service without published ports (a worker, a scheduler), gated on Docker alone - its
            healthcheck, or running without a restart for O(gate_stable_seconds).
        type: int
      stop_grace_period:
        description: Seconds between the stop signal and SIGKILL for this replica, instead of O(stop_grace_period).
        type: int
      health_path:
        description: Path the gate probes on this replica's port, instead of O(health_path).
        type: str
      upstream:
        description:
          - The nginx upstream the replica's backend is a server of (the caller drains it there). The module does not
            use it; O(action=status) returns it with the replica.
        type: str
  replica:
    description:
      - The replica (a O(replicas[].service)) to replace. Required for O(action=deploy) and O(action=restart).
      - With O(action=start_surge) and O(action=remove_surge), the surge replica (a O(replicas[].service)).
      - With O(action=job), the Compose service the job runs in.
    type: str
  job:
    description: With O(action=job), the job's name (for messages and the result).
    type: str
  command:
    description: With O(action=job), the job's command, as a list of arguments.
    type: list
    elements: str
  image:
    description: The image reference to deploy (tag or digest). Required for O(action=deploy), O(action=job) and O(action=start_surge).
    type: str
  pull:
    description: Pull O(image) if the host does not have it.
    type: bool
    default: true
  stop_grace_period:
    description: Seconds between the stop signal and SIGKILL.
    type: int
    default: 30
  health_address:
    description:
      - Address the replica's published port is probed on, from the app host. The port's bind address when it is
        published on one address only (the compose_stack role binds to the host's private address).
    type: str
    default: 127.0.0.1
  health_path:
    description: Path probed on C(http://HEALTH_ADDRESS:PORT) of the replica.
    type: str
    default: /health
  health_status:
    description: HTTP statuses that count as healthy.
    type: list
    elements: int
    default: [200]
  extra_probes:
    description: More probes in M(keelson.stack.health_gate) format, all run from this host.
    type: list
    elements: dict
    default: []
  gate_consecutive:
    description: Passes in a row each probe needs.
    type: int
    default: 3
  gate_interval:
    description: Seconds between probe rounds.
    type: float
    default: 1
  gate_stable_seconds:
    description:
      - Each probe's run of passes must span at least this many seconds, so that a release that starts,
        answers and exits a few seconds later is caught by the gate rather than after it.
    type: float
    default: 10
  gate_timeout:
    description: Seconds the new container has to pass the gate.
    type: float
    default: 60
  record_id:
    description:
      - The release record's ID (file name without C(.json)); one per run and host. Required for O(action=deploy),
        O(action=restart) and O(action=finish).
      - With O(action=start_surge) and O(action=remove_surge), the record the surge's step is written to (under
        C(surges), apart from the replicas), when given.
    type: str
  service:
    description: The service name the replicas belong to, for the record.
    type: str
    default: ""
  rollback_to:
    description:
      - With O(action=status), the record (ID) whose release RV(rollback_target) names, instead of the release before
        the one that runs - what it left running when it succeeded, what ran before it otherwise. Its absence from the
        records makes RV(rollback_target) null.
    type: str
  who:
    description: Who runs the rollout, for the record and the audit log.
    type: str
    default: ""
  rollout:
    description: The kind of run recorded when the record is created (C(deploy), C(restart), C(rollback)). Defaults to O(action).
    type: str
  outcome:
    description: With O(action=finish), the run's outcome.
    type: str
    choices: [succeeded, failed, rolled_back]
  reason:
    description: With O(action=finish), why it failed or was rolled back.
    type: str
    default: ""
requirements:
  - Docker Engine with the Compose v2 plugin (C(docker compose)) and the Docker SDK for Python on the app host.
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: O(action=status) runs normally. O(action=deploy) and O(action=restart) report whether the replica would be
      replaced (C(changed)) without stopping, pulling or writing anything; O(action=finish) reports a change and writes nothing;
      O(action=job), O(action=start_surge) and O(action=remove_surge) report a change and run nothing.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
notes:
  - The playbooks C(keelson.stack) ships (C(deploy.yml), C(rolling_restart.yml), C(rollback.yml)) wrap this module with
    the deploy lock, the nginx steps, canary batches and the rollback of hosts already updated.
  - Other runs of C(docker compose up) on the project should include C(compose.rollout.yaml) when it exists, or they
    reset the replicas to the images in C(compose.yaml).
"""

EXAMPLES = r"""
- name: Replace api-1 with the new image (after nginx_upstream drained it on the lb)
  keelson.stack.compose_rollout:
    project_dir: /opt/keelson/stacks/shop
    service: api
    replicas:
      - {service: api-1, port: 8001}
      - {service: api-2, port: 8002}
    action: deploy
    replica: api-1
    image: 172.30.77.42:5000/demo-api:1.1.0
    stop_grace_period: 30
    gate_timeout: 60
    record_id: "{{ keelson_run_id }}-{{ inventory_hostname }}"
    who: "{{ keelson_run_owner }}"

- name: Close the record
  keelson.stack.compose_rollout:
    project_dir: /opt/keelson/stacks/shop
    replicas: [{service: api-1, port: 8001}, {service: api-2, port: 8002}]
    action: finish
    outcome: succeeded
    record_id: "{{ keelson_run_id }}-{{ inventory_hostname }}"
"""

RETURN = r"""
replicas:
  description: With O(action=status), the running state per replica.
  returned: when action is status
  type: list
  elements: dict
  sample: [{"service": "api-1", "port": 8001, "container": "shop-api-1-1", "state": "running", "health": "healthy",
            "image": "172.30.77.42:5000/demo-api:1.0.0", "image_id": "sha256:4f...", "pinned": "172.30.77.42:5000/demo-api@sha256:9c...",
            "digest": "sha256:9c..."}]
last_good:
  description:
    - With O(action=status), the newest succeeded rollout record (of O(service) when given, never O(record_id)) and
      the image each replica ran when it ended, pinned by digest where known; null when there is none.
      The input of C(rollback.yml).
  returned: when action is status
  type: dict
  sample: {"record": "20270115T080000Z-app1", "finished_at": "2027-01-15T08:03:10Z",
           "images": {"api-1": "172.30.77.42:5000/demo-api@sha256:9c...", "api-2": "172.30.77.42:5000/demo-api@sha256:9c..."}}
releases:
  description:
    - With O(action=status), the host's rollout records, newest first (20 at most) - C(release) (the run's ID, the
      same on every host), C(action), C(outcome), C(started_at), C(finished_at), C(who), C(reason) and C(images) (what
      the run left running per replica).
  returned: when action is status
  type: list
  elements: dict
lines:
  description: With O(action=status), RV(releases) as one line each.
  returned: when action is status
  type: list
  elements: str
interrupted:
  description:
    - With O(action=status), the IDs of release records still C(in_progress) (other than O(record_id)) - runs that
      died before closing them, when read under the deploy lock. The rollout playbooks close them as C(failed).
  returned: when action is status
  type: list
  elements: str
rollback_target:
  description:
    - With O(action=status), what C(rollback.yml) returns to, from the deploy records - right after a deploy, the images
      it replaced; after a rollback, one release further back; on a host a killed run left half-rolled, what ran before
      that run. C(record), C(finished_at), C(images) per replica, C(side) (C(before) or C(after) that record); null when
      the records know no other release.
  returned: when action is status
  type: dict
step:
  description: With O(action=deploy) or O(action=restart), what happened to the replica.
  returned: when action is deploy or restart
  type: dict
  contains:
    outcome:
      description: C(replaced), C(unchanged), C(restored) (new failed, old serving again) or C(restore_failed).
      type: str
    old_image:
      description: Image reference the replica ran before.
      type: str
    old_pinned:
      description: The old image pinned by digest (or image ID).
      type: str
    new_image:
      description: Image reference requested.
      type: str
    new_pinned:
      description: The new image pinned by digest (or image ID).
      type: str
    stop_seconds:
      description: Seconds the graceful stop took.
      type: float
    boot_to_healthy_seconds:
      description: Seconds from recreating the replica to its gate passing.
      type: float
    gate:
      description: The gate result for the new container (per probe attempts and timings, see M(keelson.stack.health_gate)).
      type: dict
    restore_gate:
      description: The gate result for the restored old container.
      type: dict
    reason:
      description: Why the new container failed, with its last log lines.
      type: str
job:
  description: With O(action=job), the job that ran (C(name), C(service), C(image), C(pinned), C(rc), C(seconds), C(output)),
    and C(waited_for), the earlier runs' job containers it waited for.
  returned: when action is job
  type: dict
surge:
  description: With O(action=start_surge), the surge replica's step, also when it failed (C(name), C(image), C(pinned),
    C(outcome) - C(serving) or C(failed) - C(boot_to_healthy_seconds), C(gate), C(reason)).
  returned: when action is start_surge
  type: dict
serving:
  description: With O(action=deploy) or O(action=restart), whether the replica ends healthy (new, unchanged or restored) and may be put back into nginx.
  returned: when action is deploy or restart
  type: bool
record:
  description: Path of the release record.
  returned: unless action is status
  type: str
  sample: /opt/keelson/stacks/shop/releases/20270115T080000Z-app1.json
"""

import os
import socket

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.keelson.stack.plugins.module_utils.release import (
    append_audit, finish_record, interrupted_records, last_good_release, load_record, load_records, new_record,
    record_path, release_history, release_lines, rollback_target, save_replica_step, save_surge_step, utc_iso)
from ansible_collections.keelson.stack.plugins.module_utils.rollout import (
    ComposeProject, RolloutError, remove_surge, replace_replica, run_job, start_surge)

try:
    import docker
    HAS_DOCKER = True
except ImportError:
    HAS_DOCKER = False


def main():
    module = AnsibleModule(
        argument_spec=dict(
            project_dir=dict(type="path", required=True),
            project=dict(type="str"),
            compose_files=dict(type="list", elements="str", default=["compose.yaml"]),
            action=dict(type="str", choices=["status", "deploy", "restart", "finish", "job", "start_surge", "remove_surge"],
                        default="status"),
            replicas=dict(type="list", elements="dict", required=True, options=dict(
                service=dict(type="str", required=True), port=dict(type="int"),
                stop_grace_period=dict(type="int"), health_path=dict(type="str"), upstream=dict(type="str"))),
            replica=dict(type="str"),
            job=dict(type="str"),
            command=dict(type="list", elements="str"),
            image=dict(type="str"),
            pull=dict(type="bool", default=True),
            stop_grace_period=dict(type="int", default=30),
            health_address=dict(type="str", default="127.0.0.1"),
            health_path=dict(type="str", default="/health"),
            health_status=dict(type="list", elements="int", default=[200]),
            extra_probes=dict(type="list", elements="dict", default=[]),
            gate_consecutive=dict(type="int", default=3),
            gate_interval=dict(type="float", default=1),
            gate_stable_seconds=dict(type="float", default=10),
            gate_timeout=dict(type="float", default=60),
            record_id=dict(type="str"),
            service=dict(type="str", default=""),
            rollback_to=dict(type="str"),
            who=dict(type="str", default=""),
            rollout=dict(type="str"),
            outcome=dict(type="str", choices=["succeeded", "failed", "rolled_back"]),
            reason=dict(type="str", default=""),
        ),
        required_if=[
            ("action", "deploy", ["replica", "image", "record_id"]),
            ("action", "restart", ["replica", "record_id"]),
            ("action", "finish", ["outcome", "record_id"]),
            ("action", "job", ["replica", "image", "job", "command"]),
            ("action", "start_surge", ["replica", "image"]),
            ("action", "remove_surge", ["replica"]),
        ],
        supports_check_mode=True,
    )
    p = module.params
    project_name = p["project"] or os.path.basename(p["project_dir"].rstrip("/"))
    releases = os.path.join(p["project_dir"], "releases")
    record_file = record_path(releases, p["record_id"]) if p["record_id"] else None

    if p["action"] == "finish":
        record = load_record(releases, p["record_id"])
        if module.check_mode:  # in check mode no step wrote the record
            module.exit_json(changed=True, record=record_file)
        if record is None:
            module.fail_json(msg="no release record %s" % record_file)
        finish_record(releases, record, p["outcome"], p["reason"])
        append_audit(os.path.join(p["project_dir"], "audit.log"), {
            "at": record["finished_at"], "action": record["action"], "outcome": p["outcome"],
            "who": record["who"], "project": project_name, "service": record["service"], "host": record["host"],
            "record": record["id"], "reason": p["reason"],
            "images": dict((s["name"], s.get("new_pinned") if s.get("outcome") in ("replaced", "unchanged")
                            else s.get("old_pinned")) for s in record["replicas"])})
        module.exit_json(changed=True, record=record_file)

    if not HAS_DOCKER:
        module.fail_json(msg=missing_required_lib("docker"))
    ports = dict((r["service"], r["port"]) for r in p["replicas"])
    graces = dict((r["service"], r["stop_grace_period"]) for r in p["replicas"] if r["stop_grace_period"] is not None)
    health_paths = dict((r["service"], r["health_path"]) for r in p["replicas"] if r["health_path"])
    compose = ComposeProject(p["project_dir"], project_name, p["compose_files"], module.run_command,
                             docker.from_env())

    if p["action"] == "status":
        states = []
        for replica in p["replicas"]:
            state = compose.current(replica["service"]) or {}
            state.update(replica)
            states.append(state)
        records = load_records(releases)
        running = dict((s["service"], s.get("pinned") or s.get("image")) for s in states if s.get("image"))
        history = release_history(records)
        module.exit_json(changed=False, replicas=states,
                         last_good=last_good_release(records, p["service"] or None, p["record_id"]),
                         interrupted=interrupted_records(records, p["record_id"]),
                         rollback_target=rollback_target(records, running, p["service"] or None, p["rollback_to"]),
                         releases=history, lines=release_lines(history))

    if p["action"] == "job":
        if module.check_mode:
            module.exit_json(changed=True, job={"name": p["job"], "service": p["replica"], "image": p["image"]})
        try:
            job = run_job(compose, p["job"], p["replica"], p["image"], p["command"], pull=p["pull"])
        except RolloutError as exc:
            module.fail_json(msg=str(exc), job=exc.step, changed=True)
        if job["waited_for"]:
            module.warn("job %s waited for %s, left running by an earlier run, to end"
                        % (p["job"], ", ".join(job["waited_for"])))
        module.exit_json(changed=True, job=job)

    if p["replica"] not in ports:
        module.fail_json(msg="replica %s is not one of %s" % (p["replica"], ", ".join(ports)))
    gate = {"consecutive": p["gate_consecutive"], "interval": p["gate_interval"], "timeout": p["gate_timeout"],
            "stable_seconds": p["gate_stable_seconds"],
            "health_path": health_paths.get(p["replica"], p["health_path"]), "health_address": p["health_address"],
            "status": p["health_status"], "extra_probes": p["extra_probes"]}
    grace = graces.get(p["replica"], p["stop_grace_period"])

    if p["action"] in ("start_surge", "remove_surge"):
        if module.check_mode:
            module.exit_json(changed=True)
        record = None
        if p["record_id"]:
            if not os.path.isdir(releases):
                os.makedirs(releases, 0o755)
            record = load_record(releases, p["record_id"]) or new_record(
                p["record_id"], project_name, p["service"], socket.gethostname(), p["rollout"] or "deploy", p["who"])

        def save_surge(step):
            if record is not None:
                save_surge_step(releases, record, dict(step, at=utc_iso()))

        try:
            if p["action"] == "start_surge":
                surge = start_surge(compose, p["replica"], ports[p["replica"]], p["image"], gate, grace=grace,
                                    pull=p["pull"], save=save_surge)
                module.exit_json(changed=True, surge=surge, record=record_file)
            removed = remove_surge(compose, p["replica"], grace)
            surges = [s for s in (record or {}).get("surges") or [] if s["name"] == p["replica"]]
            if removed and surges:
                save_surge(dict(surges[0], outcome="removed" if surges[0]["outcome"] == "serving" else surges[0]["outcome"]))
            module.exit_json(changed=removed, record=record_file)
        except RolloutError as exc:
            module.fail_json(msg=str(exc), surge=exc.step, changed=True, record=record_file)

    target = p["image"] if p["action"] == "deploy" else None
    if module.check_mode:
        current = compose.current(p["replica"])
        changes = True
        if target and current:
            try:
                changes = compose.resolve(target, pull=False)[0] != current["image_id"]
            except RolloutError:
                changes = True  # not pulled yet, so certainly a different image
        module.exit_json(changed=changes, serving=True, record=record_file,
                         step={"name": p["replica"], "outcome": "would_replace" if changes else "unchanged",
                               "old_image": current and current["image"], "new_image": target or (current and current["image"])})

    if not os.path.isdir(releases):
        os.makedirs(releases, 0o755)
    record = load_record(releases, p["record_id"]) or new_record(
        p["record_id"], project_name, p["service"], socket.gethostname(), p["rollout"] or p["action"], p["who"])

    def save(step):
        save_replica_step(releases, record, dict(step, at=utc_iso()))

    try:
        step = replace_replica(compose, p["replica"], ports[p["replica"]], target, gate,
                               grace=grace, pull=p["pull"], save=save)
    except RolloutError as exc:
        step = exc.step or {}
        module.fail_json(msg=str(exc), step=step, serving=step.get("outcome") == "restored",
                         changed=bool(step), record=record_file)
    module.exit_json(changed=step["outcome"] != "unchanged", step=step, serving=True, record=record_file)


if __name__ == "__main__":
    main()
