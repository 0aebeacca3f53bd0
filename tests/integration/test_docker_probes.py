"""Docker probes and image pinning against the controller's own engine and the lab images
(`make lab` starts both; the unit tests run before either exists)."""
import docker
import pytest

from ansible_collections.keelson.stack.plugins.module_utils.probes import run_probe, wait_for_probes
from ansible_collections.keelson.stack.plugins.module_utils.rollout import pinned_reference


@pytest.fixture
def docker_client():
    import docker
    client = docker.from_env()
    made = []

    def run(name, **kwargs):
        made.append(name)
        return client.containers.run("keelson/debian:12", name=name, detach=True, **kwargs)
    yield client, run
    for name in made:
        client.containers.get(name).remove(force=True)


def test_docker_probe_health_and_exit(docker_client):
    """Real containers on the controller's engine: healthy, no healthcheck, exited."""
    client, run = docker_client
    uid = "keelson-unit-probe-%d" % id(client)
    run(uid + "-ok", command=["sleep", "60"],
        healthcheck={"test": ["CMD", "true"], "interval": 200_000_000, "start_period": 0})
    run(uid + "-plain", command=["sleep", "60"])
    gone = run(uid + "-exit", command=["sh", "-c", "exit 3"])
    gone.wait(timeout=30)
    # Docker's health status changes in real time, so this gate runs on the real clock.
    res = wait_for_probes([{"type": "docker", "container": uid + "-ok"}], consecutive=1, interval=0.3, timeout=120)
    assert res["passed"]
    plain = run_probe({"type": "docker", "container": uid + "-plain"})
    assert not plain.ok and plain.fatal and "no healthcheck" in plain.reason
    assert run_probe({"type": "docker", "container": uid + "-plain", "require_healthcheck": False}).ok
    exited = run_probe({"type": "docker", "container": uid + "-exit"})
    assert not exited.ok and exited.fatal and "exited (exit code 3)" in exited.reason
    missing = run_probe({"type": "docker", "container": uid + "-missing"})
    assert not missing.ok and not missing.fatal and "not found" in missing.reason


def test_local_image_without_digest_pins_by_id():
    """The lab's base image was built here, never pushed: no RepoDigests."""
    attrs = docker.from_env().images.get("keelson/debian:13").attrs
    assert not attrs.get("RepoDigests")
    assert pinned_reference(attrs, "keelson/debian:13") == attrs["Id"]
