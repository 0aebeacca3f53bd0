"""Image pinning with `docker image inspect` output of the lab's demo images. The replica
replacement itself runs against a real Docker and nginx in molecule/rollout_modules (converge: deploy; side_effect: three broken releases restored)."""
import pytest

from ansible_collections.keelson.stack.plugins.module_utils.rollout import default_probes, pinned_reference

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
