# -*- coding: utf-8 -*-
# Copyright: keelson.stack contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Release records, the audit log and the rollout plan.

A rollout record is one JSON file per run and host in
``/opt/keelson/stacks/<project>/releases/<record id>.json`` with ``"kind": "rollout"``;
every replica step updates it, so a run killed half way leaves a record that says so
(``outcome: in_progress``). ``audit.log`` next to ``releases/`` gets one JSON line per
finished action. ``rollout_plan`` is the pure function behind ``--check``.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import re
import tempfile
import time

RECORD_KIND = "rollout"
OUTCOMES = ("in_progress", "succeeded", "failed", "rolled_back")
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def utc_iso(epoch=None):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if epoch is None else epoch))


def record_path(releases_dir, record_id):
    if not _SAFE_ID.match(record_id):
        raise ValueError("record id %r: letters, digits, '.', '_' and '-' only" % record_id)
    return os.path.join(releases_dir, record_id + ".json")


def new_record(record_id, project, service, host, action, who, now=None):
    return {
        "kind": RECORD_KIND,
        "id": record_id,
        "project": project,
        "service": service,
        "host": host,
        "action": action,
        "who": who,
        "started_at": utc_iso(now),
        "finished_at": None,
        "outcome": "in_progress",
        "reason": "",
        "replicas": [],
        "surges": [],
    }


def write_json_atomically(path, data, mode=0o644):
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp.", dir=directory)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.rename(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_record(releases_dir, record_id):
    try:
        with open(record_path(releases_dir, record_id)) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def save_replica_step(releases_dir, record, step):
    """Replaces (by replica name) or appends a replica step, then writes the record."""
    record["replicas"] = [r for r in record["replicas"] if r.get("name") != step["name"]] + [step]
    write_json_atomically(record_path(releases_dir, record["id"]), record)
    return record


def save_surge_step(releases_dir, record, step):
    """Replaces (by surge name) or appends a surge replica's step, then writes the record.
    Surges are not replicas: what runs and what a rollback returns to come from ``replicas``."""
    record["surges"] = [s for s in record.get("surges") or [] if s.get("name") != step["name"]] + [step]
    write_json_atomically(record_path(releases_dir, record["id"]), record)
    return record


def finish_record(releases_dir, record, outcome, reason="", now=None):
    if outcome not in OUTCOMES:
        raise ValueError("outcome must be one of %s" % ", ".join(OUTCOMES))
    record["outcome"] = outcome
    record["reason"] = reason
    record["finished_at"] = utc_iso(now)
    write_json_atomically(record_path(releases_dir, record["id"]), record)
    return record


def load_records(releases_dir):
    """Rollout records, oldest first (by start time, then id). Other files are skipped:
    the compose_stack role keeps its own records in the same directory."""
    records = []
    try:
        names = sorted(os.listdir(releases_dir))
    except OSError:
        return records
    for name in names:
        if not name.endswith(".json") or name.startswith("."):
            continue
        try:
            with open(os.path.join(releases_dir, name)) as handle:
                data = json.load(handle)
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("kind") == RECORD_KIND:
            records.append(data)
    records.sort(key=lambda r: (r.get("started_at") or "", r.get("id") or ""))
    return records


def running_images(record):
    """{replica: image reference pinned by digest when known} after a finished record."""
    images = {}
    for step in record.get("replicas", []):
        side = "new" if step.get("outcome") == "replaced" else "old"
        ref = step.get(side + "_pinned") or step.get(side + "_image")
        if ref:
            images[step["name"]] = ref
    return images


def last_good_release(records, service=None, exclude_id=None):
    """The newest succeeded record (optionally of one service, and not ``exclude_id``) with
    the images it left running per replica; None if there is none. A succeeded restart
    re-records the images it found, so it counts as good too."""
    for record in reversed(records):
        if record.get("outcome") != "succeeded" or record.get("id") == exclude_id:
            continue
        if service and record.get("service") != service:
            continue
        images = running_images(record)
        if images:
            return {"record": record["id"], "finished_at": record.get("finished_at"), "images": images}
    return None


def _images_before(record):
    return dict((s["name"], s.get("old_pinned") or s.get("old_image")) for s in record.get("replicas", [])
                if s.get("old_pinned") or s.get("old_image"))


def interrupted_records(records, exclude_id=None):
    """IDs of records still ``in_progress``: runs that died before closing them (read
    under the deploy lock, so no live run is writing one), oldest first."""
    return [r["id"] for r in records if r.get("outcome") == "in_progress" and r.get("id") != exclude_id]


def rollback_target(records, running, service=None, record_id=None):
    """What a rollback returns to. The deploy records, oldest first, give the history
    of releases: what each deploy replaced ("before") and, if it succeeded, what it left
    running ("after"). The target is the newest release older than the newest one that
    matches ``running`` ({replica: pinned reference}) and differs from it: right after a
    deploy, what it replaced; after a rollback, one further back; on a host a killed run
    left half-rolled, what ran before that run. With ``record_id``, that record's
    "after" (or "before" if it did not succeed). Returns {record, finished_at, images,
    side} or None. Restarts and rollbacks do not make releases."""
    releases = []
    for record in records:
        if record.get("action") != "deploy" or (service and record.get("service") != service):
            continue
        sides = [("before", _images_before(record))]
        if record.get("outcome") == "succeeded":
            sides.append(("after", running_images(record)))
        releases.extend((record, side, images) for side, images in sides if images)

    def matches(images):
        return all(running.get(name) == ref for name, ref in images.items())

    def target(record, side, images):
        return {"record": record["id"], "finished_at": record.get("finished_at"), "images": images, "side": side}

    if record_id:
        chosen = [r for r in releases if r[0]["id"] == record_id]
        return target(*chosen[-1]) if chosen else None
    now = max([i for i, release in enumerate(releases) if matches(release[2])] or [len(releases)])
    for record, side, images in reversed(releases[:now]):
        if not matches(images):
            return target(record, side, images)
    return None


def run_of(record_id):
    """The run (the release's id across hosts, as deploy.yml prints it) of a host's record:
    ``20270115T080000Z-deploy`` of ``20270115T080000Z-deploy-app1``."""
    match = re.match(r"^(\d{8}T\d{6}Z-[a-z]+)-", record_id or "")
    return match.group(1) if match else record_id


def release_history(records, limit=20):
    """A host's rollout records, newest first (at most ``limit``), as releases.yml lists
    them: [{release, action, outcome, started_at, finished_at, who, reason, images}],
    ``images`` being what the run left running per replica (pinned by digest)."""
    out = []
    for record in list(reversed(records))[:limit]:
        out.append({"release": run_of(record.get("id")), "action": record.get("action"),
                    "outcome": record.get("outcome"), "started_at": record.get("started_at"),
                    "finished_at": record.get("finished_at"), "who": record.get("who"),
                    "reason": record.get("reason") or "", "images": running_images(record)})
    return out


def release_lines(history):
    """One line per release of release_history: id, action, outcome, when, who, the
    images it left (each distinct image with its replicas) and why it failed."""
    lines = []
    for entry in history:
        by_image = {}
        for replica, ref in sorted(entry["images"].items()):
            by_image.setdefault(ref, []).append(replica)
        images = "; ".join("%s: %s" % (ref, ", ".join(names)) for ref, names in sorted(by_image.items()))
        line = "%s %s %s at %s by %s" % (entry["release"], entry["action"], entry["outcome"],
                                         entry["finished_at"] or entry["started_at"], entry["who"] or "?")
        line += (" -> " + images) if images else ""
        line += (" (%s)" % entry["reason"]) if entry["reason"] else ""
        lines.append(line)
    return lines


def append_audit(path, entry):
    """One JSON line per action, appended with O_APPEND so concurrent writers do not interleave."""
    line = json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode("utf-8"))
    finally:
        os.close(fd)


# --- the plan ------------------------------------------------------------------

def _batch_size_ok(size):
    if isinstance(size, bool):
        return False
    if isinstance(size, int):
        return size > 0
    text = str(size)
    return bool(re.match(r"^[1-9][0-9]*%?$", text))


def rollout_settings_errors(services, rolled, serial):
    """Every problem of the rollout role's settings against the stack definition, one
    string each (empty when they hold): ``rolled`` (rollout_services) names services of
    the stack, at least one, and every batch of ``serial`` holds at least one host
    (Ansible reads 0 as "all remaining hosts", which would skip the canary)."""
    names = [s.get("name") for s in services or []]
    errors = []
    if isinstance(rolled, str):
        errors.append("rollout_services: %r is a string, and it must be a list: -e '{\"rollout_services\": [\"%s\"]}'"
                      % (rolled, '", "'.join(part.strip() for part in rolled.split(",") if part.strip())))
    elif not isinstance(rolled, (list, tuple)) or not rolled:
        errors.append("rollout_services: %r names no service (services: %s)" % (rolled, ", ".join(names) or "none"))
    else:
        unknown = [name for name in rolled if name not in names]
        if unknown:
            errors.append("rollout_services: %s %s of compose_stack_services (%s)"
                          % (", ".join(map(str, unknown)), "is not a service" if len(unknown) == 1 else "are not services",
                             ", ".join(names) or "none"))
    if not isinstance(serial, (list, tuple)) or not serial:
        errors.append("rollout_serial: %r is not a non-empty list of batch sizes such as [1, \"50%%\"]" % (serial,))
    else:
        bad = [size for size in serial if not _batch_size_ok(size)]
        if bad:
            errors.append("rollout_serial: every batch size must be a number of hosts or a percentage above 0, "
                          "not %s" % ", ".join(repr(size) for size in bad))
    return errors


def serial_batches(hosts, serial):
    """Splits ``hosts`` exactly as Ansible's ``serial`` does (playbook_executor): a list of
    sizes (ints or "N%" of all hosts, at least 1), the last one repeating; a size of 0 or
    less takes every remaining host."""
    sizes = list(serial) if isinstance(serial, (list, tuple)) else [serial]
    sizes = sizes or [-1]
    batches, rest, i = [], list(hosts), 0
    while rest:
        size = sizes[min(i, len(sizes) - 1)]
        if isinstance(size, str) and size.endswith("%"):
            size = int(int(size[:-1]) / 100.0 * len(hosts)) or 1
        size = int(size)
        if size <= 0:
            batches.append(rest)
            break
        batches.append(rest[:size])
        rest = rest[size:]
        i += 1
    return batches


def replica_changes(current, target_image, target_digest=None):
    """Whether a replica running ``current`` ({image, digest, pinned}) needs ``target_image``.
    Digests decide when both are known; otherwise the reference does."""
    if not current or not current.get("image"):
        return True
    if target_digest and current.get("digest"):
        return current["digest"] != target_digest
    return current["image"] != target_image


def rollout_plan(hosts, replicas, current, action, target_image=None, target_digest=None, serial=(1, "50%"),
                 changes=None, targets=None):
    """The rollout as data: batches of hosts (canary first), per host the replicas in the
    order they are replaced and whether each changes.

    ``replicas``: [{name, port}] in replacement order, the same on every host, or
    {host: [{name, port}]} when placement makes them differ (port None: no backend);
    ``current``: {host: {replica: {image, digest}}}; ``action``: deploy or restart.
    ``changes`` ({host: {replica: bool}}, e.g. from compose_rollout in check mode, which
    compares image IDs) decides over the reference/digest comparison where it has an
    answer; ``targets`` ({host: {replica: reference}}, a rollback's per-host images)
    replaces the single target image.
    """
    if action not in ("deploy", "restart"):
        raise ValueError("action must be deploy or restart")
    if action == "deploy" and not (target_image or targets):
        raise ValueError("a deploy needs the target image")
    changes = changes or {}
    targets = targets or {}
    per_host = {}
    for host in hosts:
        steps = []
        for replica in (replicas.get(host) or []) if isinstance(replicas, dict) else replicas:
            if targets and action == "deploy" and replica["name"] not in (targets.get(host) or {}):
                continue  # not part of this run (a one-off image for one service, a rollback)
            now = (current.get(host) or {}).get(replica["name"]) or {}
            to = (targets.get(host) or {}).get(replica["name"]) or target_digest or target_image
            if action == "restart":
                change, to = True, now.get("digest") or now.get("image")
            elif replica["name"] in (changes.get(host) or {}):
                change = bool(changes[host][replica["name"]])
            else:
                change = replica_changes(now, to, target_digest if not targets else None)
            steps.append({"name": replica["name"], "port": replica.get("port"),
                          "from": now.get("digest") or now.get("image"), "to": to, "changes": change})
        per_host[host] = {"replicas": steps, "changes": sum(1 for s in steps if s["changes"])}
    # every host is in a batch, as the playbook's serial puts it there; hosts without
    # changes pass through their batch untouched
    batches = serial_batches(hosts, serial)
    return {
        "action": action,
        "target": target_digest or target_image,
        "batches": batches,
        "canary": batches[0] if batches else [],
        "hosts": per_host,
        "replicas_to_change": sum(h["changes"] for h in per_host.values()),
        "unchanged_hosts": [h for h in hosts if not per_host[h]["changes"]],
    }


def roll_steps(replicas, surges):
    """The order of one host's roll: ``replicas`` (the units that change, in replacement
    order) as ``{"replica": unit}``, each start_first service's surge (of ``surges``)
    started right before its first changing replica and removed right after its last,
    as ``{"surge": surge, "state": "started" | "removed"}``. So a surge serves only while
    its own service's replicas are replaced, one service's surge at a time."""
    surge_of = dict((surge["upstream"], surge) for surge in surges or [])
    last = dict((unit.get("upstream"), index) for index, unit in enumerate(replicas))
    steps, started = [], set()
    for index, unit in enumerate(replicas):
        surge = surge_of.get(unit.get("upstream"))
        if surge and unit["upstream"] not in started:
            started.add(unit["upstream"])
            steps.append({"surge": surge, "state": "started"})
        steps.append({"replica": unit})
        if surge and last[unit["upstream"]] == index:
            steps.append({"surge": surge, "state": "removed"})
    return steps


def plan_lines(plan):
    """The plan as text lines for --check output."""
    target = plan["target"] or ("the running images" if plan["action"] == "restart" else "per-host images")
    head = "%s to %s: %d replica(s) in %d batch(es)"
    lines = [head % (plan["action"], target, plan["replicas_to_change"], len(plan["batches"]))]
    for number, batch in enumerate(plan["batches"], 1):
        lines.append("batch %d%s: %s" % (number, " (canary)" if number == 1 else "", ", ".join(batch)))
        for host in batch:
            for step in plan["hosts"][host]["replicas"]:
                if step["changes"]:
                    port = ":%s" % step["port"] if step["port"] else ""
                    lines.append("  %s %s%s %s -> %s" % (host, step["name"], port, step["from"], step["to"]))
    if plan["unchanged_hosts"]:
        lines.append("already on target: " + ", ".join(plan["unchanged_hosts"]))
    return lines
