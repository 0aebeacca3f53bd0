"""Image pinning with `docker image inspect` output of the lab's demo images, and the surge
replica's steps against a recording stand-in for Compose. The replica replacement itself
runs against a real Docker and nginx in molecule/rollout_modules (converge: deploy;
side_effect: three broken releases restored), the surge in tests/integration/test_rollout.py."""
import json
import os

import pytest

from ansible_collections.keelson.stack.plugins.module_utils.probes import Outcome
from ansible_collections.keelson.stack.plugins.module_utils.release import load_record, new_record, save_surge_step
from ansible_collections.keelson.stack.plugins.module_utils.rollout import (
    RolloutError, default_probes, pinned_reference, remove_surge, start_surge)

# `docker image inspect` of 172.30.77.42:5000/demo-api:1.1.0 pulled into a lab host
PULLED = {
    "Id": "sha256:04de5605423d448826e41940b82ac72266db2306f918574cc8a4b8a63e1a9cdf",
    "RepoTags": ["172.30.77.42:5000/demo-api:1.1.0"],
    "RepoDigests": ["172.30.77.42:5000/demo-api@sha256:369d8ba08001427587280537af164d7f82c0690171d8cd1148760d45b4ea9fdc"],
}


@pytest.mark.parametrize("reference", [
    "172.30.77.42:5000/demo-api:1.1.0",
    "172.30.77.42:5000/demo-api",
    "172.30.77.42:5000/demo-api@sha256:369d8ba08001427587280537af164d7f82c0690171d8cd1148760d45b4ea9fdc",
])
def test_pulled_image_pins_by_registry_digest(reference):
    assert pinned_reference(PULLED, reference) == PULLED["RepoDigests"][0]


def test_digest_of_another_repository_is_the_fallback():
    attrs = dict(PULLED, RepoDigests=["registry.example.test/other@sha256:" + "1" * 64] + PULLED["RepoDigests"])
    assert pinned_reference(attrs, "172.30.77.42:5000/demo-api:1.1.0") == PULLED["RepoDigests"][0]
    assert pinned_reference(attrs, "demo-api:1.1.0") == "registry.example.test/other@sha256:" + "1" * 64


def test_default_probes():
    probes = default_probes("demo-api-1-1", 8001, "/health", [200])
    assert [p["type"] for p in probes] == ["docker", "http"]
    assert probes[1]["url"] == "http://127.0.0.1:8001/health"


def test_a_service_without_ports_is_gated_on_docker_alone():
    probes = default_probes("demo-worker-1", None, "/health", [200])
    assert [p["type"] for p in probes] == ["docker"]
    # no healthcheck: running without a restart, over the gate's stable period
    assert probes[0]["require_healthcheck"] is False and probes[0]["max_restarts"] == 0


class SurgeProject:
    """ComposeProject's surface that start_surge and remove_surge use, recording the
    Compose commands (and the image the override file gives the surge while `up` runs)."""

    def __init__(self, directory):
        self.dir = str(directory)
        self.calls = []
        self.running = False

    def resolve(self, reference, pull):
        return "sha256:" + "1" * 64, "reg/demo-api@sha256:" + "2" * 64

    def compose(self, *args, **kwargs):
        if args[0] == "up":
            with open(os.path.join(self.dir, kwargs["extra_files"][0])) as handle:
                self.calls.append(("up", json.load(handle)["services"][args[-1]]["image"]))
            self.running = True
        else:
            self.calls.append(args)
            self.running = False

    def current(self, service):
        return {"container": "demo-%s-1" % service}

    def container(self, service):
        return "demo-%s-1" % service if self.running else None

    def stop(self, service, grace):
        self.calls.append(("stop", service, grace))

    def logs(self, service):
        return "boom"


def passing(probe):
    return Outcome(True)


def failing(probe):
    return Outcome(False, "connection refused")


def test_a_surge_starts_on_the_pinned_image_and_passes_its_gate(tmp_path):
    project = SurgeProject(tmp_path / "demo")
    os.mkdir(project.dir)
    releases = str(tmp_path / "releases")
    os.mkdir(releases)
    record = new_record("run-app1", "demo", "", "app1", "deploy", "ops")
    saved = []

    def save(step):
        saved.append(step["outcome"])
        save_surge_step(releases, record, step)

    gate = {"consecutive": 1, "interval": 0, "timeout": 5}
    surge = start_surge(project, "api-surge", 8003, "reg/demo-api:1.1.0", gate, save=save, gate_runner=passing)
    assert project.calls == [("up", "reg/demo-api@sha256:" + "2" * 64)]
    assert surge["name"] == "api-surge" and surge["gate"]["passed"] and surge["outcome"] == "serving"
    # the run's record holds the surge apart from the replicas it replaces
    assert saved == ["starting", "serving"]
    on_disk = load_record(releases, "run-app1")
    assert on_disk["replicas"] == [] and [s["outcome"] for s in on_disk["surges"]] == ["serving"]
    assert [p["name"] for p in surge["gate"]["probes"]] == ["docker health of demo-api-surge-1",
                                                           "http 127.0.0.1:8003/health"]
    assert os.listdir(project.dir) == []  # the override file lives only while `up` runs
    assert remove_surge(project, "api-surge", 20)
    assert project.calls[1:] == [("stop", "api-surge", 20), ("rm", "--force", "api-surge")]
    assert not remove_surge(project, "api-surge", 20)  # nothing left to remove


def test_a_surge_that_fails_its_gate_is_removed_and_says_why(tmp_path):
    project = SurgeProject(tmp_path)
    gate = {"consecutive": 1, "interval": 0.01, "timeout": 0.05}
    saved = []
    with pytest.raises(RolloutError) as exc:
        start_surge(project, "api-surge", 8003, "reg/demo-api:1.2.0", gate, grace=5, save=saved.append,
                    gate_runner=failing)
    assert str(exc.value).startswith("api-surge: new image reg/demo-api:1.2.0 failed: ")
    assert exc.value.step["outcome"] == "failed" and exc.value.step["reason"] == str(exc.value)
    assert exc.value.step["gate"]["passed"] is False
    assert "connection refused" in str(exc.value) and str(exc.value).endswith("last log lines:\nboom")
    assert project.calls[1:] == [("stop", "api-surge", 5), ("rm", "--force", "api-surge")]
