"""The docker role: Engine, Compose v2, daemon.json in force, SDK, group, registry."""
import json

import pytest

REGISTRY = "172.30.77.42:5000"


def is_debian12(host):
    return host.backend.get_hostname().endswith("debian12")


def info(host):
    return json.loads(host.check_output("docker info --format '{{json .}}'"))


def http_get(host, port):
    return host.check_output(
        "python3 -c 'import sys, urllib.request; "
        f"sys.stdout.write(urllib.request.urlopen(\"http://127.0.0.1:{port}/\", timeout=10).read().decode())'")


def test_engine_is_debians_and_running(host):
    assert host.service("docker").is_running and host.service("docker").is_enabled
    server = host.check_output("docker version --format '{{.Server.Version}}'")
    major = int(server.split(".")[0])
    assert major == 20 if is_debian12(host) else major >= 26, server


def test_compose_v2(host):
    if is_debian12(host):
        # docker_compose_install: false here (test_refusal.py covers the default).
        assert not host.package("docker-compose").is_installed
        assert host.run("docker compose version").rc != 0
    else:
        out = host.check_output("docker compose version --short")
        assert int(out.lstrip("v").split(".")[0]) == 2, out


def test_daemon_json_as_configured(host):
    f = host.file("/etc/docker/daemon.json")
    assert (f.user, f.mode) == ("root", 0o644)
    config = json.loads(f.content_string)
    assert config["log-driver"] == "json-file"
    assert config["log-opts"] == {"max-size": "20m", "max-file": "5"}
    assert config["live-restore"] is True
    assert config["default-address-pools"] == [{"base": "10.213.0.0/16", "size": 24}]
    assert config["insecure-registries"] == [REGISTRY]
    assert "registry-mirrors" not in config


def test_daemon_runs_with_that_configuration(host):
    running = info(host)
    assert running["LoggingDriver"] == "json-file"
    assert running["LiveRestoreEnabled"] is True
    assert running["RegistryConfig"]["IndexConfigs"][REGISTRY]["Secure"] is False
    assert running["Driver"] == "overlay2"


def test_deploy_user_uses_docker_without_sudo(host):
    assert "docker" in host.user("keelson-deploy").groups
    assert host.run("runuser -u keelson-deploy -- docker ps").rc == 0


def test_python_sdk_reaches_the_engine(host):
    assert host.run("python3 -c 'import docker; assert docker.from_env().ping()'").rc == 0


def test_registry_login_stored_for_root_only(host):
    f = host.file("/root/.docker/config.json")
    assert f.mode == 0o600 and f.user == "root"
    assert REGISTRY in json.loads(f.content_string)["auths"]


def test_image_was_pulled_from_the_lab_registry(host):
    ref = f"{REGISTRY}/keelson/busybox:{host.backend.get_hostname()}"
    digests = host.check_output(f"docker image inspect --format '{{{{json .RepoDigests}}}}' {ref}")
    assert json.loads(digests)[0].startswith(f"{REGISTRY}/keelson/busybox@sha256:")


def test_container_runs_and_its_published_port_answers(host):
    state = host.check_output("docker inspect --format '{{.State.Status}}' keelson-probe")
    assert state == "running"
    assert http_get(host, 18080).startswith("keelson docker probe")


def test_container_logs_rotate_as_configured(host):
    log_config = json.loads(host.check_output(
        "docker inspect --format '{{json .HostConfig.LogConfig}}' keelson-probe"))
    assert log_config == {"Type": "json-file", "Config": {"max-file": "5", "max-size": "20m"}}


@pytest.mark.parametrize("port", [18081])
def test_compose_project_answers_on_a_pooled_network(host, port):
    if is_debian12(host):
        # No Compose v2 on this instance: the project only runs on Debian 13.
        assert host.run("docker compose ls").rc != 0
        return
    assert http_get(host, port).startswith("keelson docker probe")
    subnet = host.check_output(
        "docker network inspect --format '{{(index .IPAM.Config 0).Subnet}}' probe-compose_default")
    assert subnet.startswith("10.213."), subnet
