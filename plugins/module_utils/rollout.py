# -*- coding: utf-8 -*-
# Copyright: keelson.stack contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Replacing one replica of a Compose service on the app host, gated and reversible.

Each replica is its own Compose service (``api-1``, ``api-2``, ...) with its own host
port, so each is one nginx backend. The load balancer steps (drain before, put back
after) run on the lb host; the playbook delegates ``nginx_upstream`` around each call
of ``replace_replica``, which does the app host's part:

1. note the running container's image (reference, ID, digest);
2. stop it gracefully (``docker compose stop -t GRACE``: the service's stop signal,
   SIGTERM by default, then SIGKILL after the grace period);
3. pin the target image for the replica in ``compose.rollout.yaml`` and recreate it
   with ``docker compose up -d --no-deps --force-recreate --pull never``;
4. gate it with the ``health_gate`` logic (Docker health and the replica's own port);
5. on a failed gate: stop the new container, pin the old image again, recreate and
   gate the old one, and report the failure with the gate's reason.

Images are pinned by registry digest (``repo@sha256:...``) when the engine knows one,
otherwise by image ID, so a moved tag cannot change what a restore brings back.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import json
import os
import time

from ansible_collections.keelson.stack.plugins.module_utils.probes import GateFailed, docker_health_probe, wait_for_probes
from ansible_collections.keelson.stack.plugins.module_utils.release import write_json_atomically

PIN_FILE = "compose.rollout.yaml"
JOB_FILE = "compose.job.yaml"
SURGE_FILE = "compose.surge.yaml"


@contextlib.contextmanager
def image_override(project_dir, service, reference, name):
    """While the block runs, the override file ``name`` in the project directory puts
    ``service`` on the image ``reference``. Yields the ``extra_files`` that make a
    Compose call read it."""
    path = os.path.join(project_dir, name)
    write_json_atomically(path, {"services": {service: {"image": reference}}}, mode=0o600)
    try:
        yield [name]
    finally:
        os.unlink(path)


class RolloutError(Exception):
    def __init__(self, message, step=None):
        super(RolloutError, self).__init__(message)
        self.step = step


def pinned_reference(image_attrs, reference):
    """``repo@sha256:...`` for ``reference``'s repository if the engine has that digest,
    else any registry digest, else the image ID."""
    digests = image_attrs.get("RepoDigests") or []
    repo = reference.split("@")[0]
    last = repo.rsplit("/", 1)[-1]
    if ":" in last:
        repo = repo[:len(repo) - len(last)] + last.split(":")[0]
    for digest in digests:
        if digest.split("@")[0] == repo:
            return digest
    return digests[0] if digests else image_attrs["Id"]


class ComposeProject:
    """The app host's side: ``docker compose`` for changes (so Compose labels, networks and
    settings stay Compose's), the Docker SDK for reading state."""

    def __init__(self, project_dir, project, compose_files, run, client):
        self.dir = project_dir
        self.project = project
        self.files = list(compose_files)
        self.run = run
        self.client = client

    @property
    def pin_path(self):
        return os.path.join(self.dir, PIN_FILE)

    def argv(self, *args, **kwargs):
        """``docker compose`` on the project, with the pin file and ``extra_files`` (names
        in the project directory) after the compose files."""
        argv = ["docker", "compose", "--project-directory", self.dir, "-p", self.project]
        for name in self.files + ([PIN_FILE] if os.path.exists(self.pin_path) else []) + kwargs.get("extra_files", []):
            argv += ["-f", os.path.join(self.dir, name)]
        return argv + list(args)

    def compose(self, *args, **kwargs):
        rc, out, err = self.run(self.argv(*args, **kwargs))
        if rc != 0:
            raise RolloutError("%s failed: %s" % (" ".join(["docker compose"] + list(args)), (err or out).strip()[-2000:]))
        return out

    def container(self, service):
        """The replica's newest container; never a job's one-off container of the same
        service (a killed run's migration, still running, is newer and on the new image)."""
        found = self.client.containers.list(all=True, filters={"label": [
            "com.docker.compose.project=%s" % self.project, "com.docker.compose.service=%s" % service,
            "com.docker.compose.oneoff=False"]})
        found.sort(key=lambda c: c.attrs.get("Created", ""), reverse=True)
        return found[0] if found else None

    def current(self, service):
        """{container, state, health, image, image_id, pinned} of the replica, or None."""
        container = self.container(service)
        if container is None:
            return None
        attrs = container.attrs
        image_id = attrs["Image"]
        reference = attrs["Config"]["Image"]
        try:
            pinned = pinned_reference(self.client.images.get(image_id).attrs, reference)
        except Exception:  # image removed since: the ID still identifies it in records
            pinned = image_id
        state = attrs.get("State", {})
        return {"container": container.name, "state": state.get("Status"),
                "health": (state.get("Health") or {}).get("Status"),
                "image": reference, "image_id": image_id, "pinned": pinned,
                "digest": pinned.split("@")[1] if "@" in pinned else image_id}

    def resolve(self, reference, pull):
        """(image_id, pinned) of ``reference``, pulling it if absent and allowed."""
        from docker.errors import ImageNotFound
        try:
            image = self.client.images.get(reference)
        except ImageNotFound:
            if not pull:
                raise RolloutError("image %s is not on this host and pull is off" % reference)
            image = self.client.images.pull(reference)
        return image.id, pinned_reference(image.attrs, reference)

    def read_pins(self):
        try:
            with open(self.pin_path) as handle:
                return (json.load(handle).get("services") or {})
        except (OSError, ValueError):
            return {}

    def pin(self, service, reference):
        """The pin file is JSON, which is YAML, so Compose reads it as an override file."""
        services = self.read_pins()
        services[service] = {"image": reference}
        write_json_atomically(self.pin_path, {"services": services})

    def stop(self, service, grace):
        self.compose("stop", "-t", str(int(grace)), service)

    def up(self, service):
        self.compose("up", "-d", "--no-deps", "--force-recreate", "--pull", "never", service)

    def run_once(self, service, reference, argv):
        """``docker compose run --rm`` of ``argv`` in ``service`` on the image ``reference``
        (an override file next to the others says so while it runs): the service's
        environment, secrets and networks, no published ports, no dependencies started.
        Returns (rc, stdout, stderr)."""
        with image_override(self.dir, service, reference, JOB_FILE) as extra_files:
            return self.run(self.argv("run", "--rm", "--no-deps", "-T", service, *argv, extra_files=extra_files))

    def running_jobs(self):
        """Names of the project's job containers (``docker compose run``) still running: one
        an interrupted run left behind outlives its controller."""
        return sorted(c.name for c in self.client.containers.list(filters={
            "label": ["com.docker.compose.project=%s" % self.project, "com.docker.compose.oneoff=True"],
            "status": "running"}))

    def logs(self, service, lines=20):
        try:
            return self.compose("logs", "--no-color", "--tail", str(lines), service).strip()
        except RolloutError as exc:
            return str(exc)


def default_probes(container, port, health_path, status, address="127.0.0.1"):
    """Docker's view of the container, and its health path when it publishes a port. A
    service without one (a worker) is gated on its Docker healthcheck, or, without a
    healthcheck, on running without a restart for the gate's stable period."""
    # a container created for this gate that has already restarted has crashed
    probes = [docker_health_probe(container, max_restarts=0)]
    if port:
        probes.append({"type": "http", "name": "http %s:%d%s" % (address, port, health_path),
                       "url": "http://%s:%d%s" % (address, port, health_path), "status": status, "timeout": 2})
    return probes


def replace_replica(project, service, port, target, gate, grace=30, pull=True, save=None,
                    clock=time.monotonic, gate_runner=None):
    """Replaces one replica (``port`` None: a service without published ports, such as a
    worker). ``target`` is the image reference to run, or None to restart on the running
    image. ``gate``: {consecutive, interval, timeout, health_path, status, extra_probes}.
    ``save(step)`` persists the step record after every change.

    Returns the step dict (outcome ``replaced`` or ``unchanged``). Raises RolloutError with
    the step (outcome ``restored`` or ``restore_failed``) when the new one fails its gate.
    """
    started = clock()
    save = save or (lambda step: None)
    old = project.current(service)
    if old is None:
        raise RolloutError("no container for service %s in project %s: deploy the stack first"
                           % (service, project.project))
    step = {"name": service, "port": port, "old_image": old["image"], "old_image_id": old["image_id"],
            "old_pinned": old["pinned"], "old_digest": old["digest"], "outcome": "replacing",
            "new_image": None, "new_image_id": None, "new_pinned": None, "new_digest": None,
            "stop_seconds": None, "boot_to_healthy_seconds": None, "gate": None, "restore_gate": None,
            "seconds": None, "reason": ""}
    new_id, new_pinned = project.resolve(target, pull) if target else (old["image_id"], old["pinned"])
    step.update(new_image=target or old["image"], new_image_id=new_id, new_pinned=new_pinned,
                new_digest=new_pinned.split("@")[1] if "@" in new_pinned else new_id)
    if target and new_id == old["image_id"] and old["state"] == "running" and old["health"] in (None, "healthy"):
        step.update(outcome="unchanged", seconds=round(clock() - started, 3))
        save(step)
        return step
    save(step)

    t0 = clock()
    project.stop(service, grace)
    step["stop_seconds"] = round(clock() - t0, 3)
    project.pin(service, new_pinned)
    t0 = clock()
    try:
        project.up(service)
        step["gate"] = _gate(project, service, port, gate, gate_runner)
        step["boot_to_healthy_seconds"] = round(clock() - t0, 3)
        step.update(outcome="replaced", seconds=round(clock() - started, 3))
        save(step)
        return step
    except (GateFailed, RolloutError, ValueError) as exc:
        failure = exc
    if isinstance(failure, GateFailed):
        step["gate"] = failure.result
    logs = project.logs(service)
    step["reason"] = "%s: new image %s failed: %s%s" % (
        service, step["new_image"], failure, ("\nlast log lines:\n" + logs) if logs else "")
    save(step)

    try:
        project.stop(service, grace)
        project.pin(service, old["pinned"])
        project.up(service)
        step["restore_gate"] = _gate(project, service, port, gate, gate_runner)
        step["outcome"] = "restored"
    except (GateFailed, RolloutError) as exc:
        step["restore_gate"] = getattr(exc, "result", None)
        step["outcome"] = "restore_failed"
        step["reason"] += "\nrestoring %s also failed: %s" % (old["pinned"], exc)
    step["seconds"] = round(clock() - started, 3)
    save(step)
    raise RolloutError(step["reason"], step)


def start_surge(project, surge, port, target, gate, grace=30, pull=True, save=None, gate_runner=None):
    """Starts a start_first service's surge replica (``surge``, its Compose service) on the
    image ``target`` (an override file says so while Compose creates it) and gates it like
    a replica. Returns the step {name, image, pinned, outcome: serving, boot_to_healthy_seconds,
    gate, reason}, passed to ``save`` as it changes; on a failed gate the surge is removed
    again (outcome ``failed``) and RolloutError says why."""
    started = time.monotonic()
    save = save or (lambda step: None)
    pinned = project.resolve(target, pull)[1]
    step = {"name": surge, "image": target, "pinned": pinned, "outcome": "starting", "gate": None,
            "boot_to_healthy_seconds": None, "reason": ""}
    save(step)
    try:
        with image_override(project.dir, surge, pinned, SURGE_FILE) as extra_files:
            project.compose("up", "-d", "--no-deps", "--force-recreate", "--pull", "never", surge,
                            extra_files=extra_files)
        step["gate"] = _gate(project, surge, port, gate, gate_runner)
    except (GateFailed, RolloutError) as exc:
        logs = project.logs(surge)
        remove_surge(project, surge, grace)
        tail = ("\nlast log lines:\n" + logs) if logs else ""
        step.update(outcome="failed", gate=getattr(exc, "result", None),
                    reason="%s: new image %s failed: %s%s" % (surge, target, exc, tail))
        save(step)
        raise RolloutError(step["reason"], step)
    step.update(outcome="serving", boot_to_healthy_seconds=round(time.monotonic() - started, 3))
    save(step)
    return step


def remove_surge(project, surge, grace):
    """Stops (the service's stop signal, then SIGKILL after ``grace`` seconds) and removes
    the surge replica's container. Returns whether there was one."""
    if project.container(surge) is None:
        return False
    project.stop(surge, grace)
    project.compose("rm", "--force", surge)
    return True


def _gate(project, service, port, gate, runner):
    current = project.current(service)
    probes = default_probes(current["container"], port, gate.get("health_path", "/health"),
                            gate.get("status") or [200], gate.get("health_address") or "127.0.0.1")
    probes += list(gate.get("extra_probes") or [])
    kwargs = {}
    if runner is not None:
        kwargs["runner"] = runner
    return wait_for_probes(probes, consecutive=gate.get("consecutive", 3), interval=gate.get("interval", 1),
                           timeout=gate.get("timeout", 60), stable_seconds=gate.get("stable_seconds", 0), **kwargs)


def wait_for_earlier_jobs(project, timeout, clock=time.monotonic, sleep=time.sleep):
    """Waits until no job container of the project runs (a migration must never run twice
    at once: an interrupted run's may still be applying). Returns the names waited for;
    raises RolloutError naming them if they still run after ``timeout`` seconds."""
    deadline = clock() + timeout
    seen = running = project.running_jobs()
    while running:
        if clock() >= deadline:
            raise RolloutError("job container(s) %s of an earlier run still running after %d s; "
                               "a job never runs beside another: let it end, or stop it "
                               "(docker stop %s), then run again" % (", ".join(running), timeout, " ".join(running)))
        sleep(2)
        running = project.running_jobs()
        seen = sorted(set(seen) | set(running))
    return seen


def run_job(project, name, service, target, argv, pull=True, clock=time.monotonic, wait=600):
    """Runs one of the release's jobs (a migration) in ``service`` on the image ``target``,
    pinned by digest first so that what ran is known, once no earlier run's job still runs
    (``wait``: how long to wait for one). Returns {name, service, image, pinned, seconds,
    output, waited_for}; raises RolloutError with one line saying why when it fails (its
    exit code and last output line), the job dict in ``step``."""
    waited_for = wait_for_earlier_jobs(project, wait, clock)
    started = clock()
    pinned = project.resolve(target, pull)[1]
    rc, out, err = project.run_once(service, pinned, argv)
    output = ((out or "") + (err or "")).strip()
    job = {"name": name, "service": service, "image": target, "pinned": pinned, "rc": rc,
           "seconds": round(clock() - started, 3), "output": output[-4000:], "waited_for": waited_for}
    if rc != 0:
        lines = [line.strip() for line in (err or out or "").splitlines() if line.strip()]
        raise RolloutError("job %s (in %s, image %s) failed with exit code %d: %s"
                           % (name, service, target, rc, lines[-1][-300:] if lines else "no output"), job)
    return job
