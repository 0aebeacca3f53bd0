"""The app hosts' metrics (keelson.stack.monitoring on top of the docker role): the engine's own on
<private address>:9323 (daemon.json's metrics-addr), the container exporter's on :9417."""
import json
import re
import time

import pytest

# molecule.yml's addresses: the instances' private (default-route) addresses
ADDRESS = {"docker-debian12": "172.30.77.231", "docker-debian13": "172.30.77.232"}
UNIT = "keelson-container-exporter"
# Compose's labels, as on the containers of a project (the exporter reads nothing else)
LABELS = "--label com.docker.compose.project=molecule --label com.docker.compose.oneoff=False"
FETCH = ("python3 -c 'import sys, urllib.request; "
         "sys.stdout.write(urllib.request.urlopen(\"http://{}:{}/metrics\", timeout=10).read().decode())'")


def address(host):
    return ADDRESS[host.backend.get_hostname()]


def image(host):
    # pushed and pulled back by side_effect.yml
    return "172.30.77.42:5000/keelson/busybox:" + host.backend.get_hostname()


def fetch(host, port, at=None):
    return host.run(FETCH.format(at or address(host), port))


def scrape(host, port=9417):
    res = fetch(host, port)
    assert res.rc == 0, res.stderr
    out = {}
    for line in res.stdout.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def of(container, metric, got):
    """The value of a container's series, None when it has none."""
    for key, value in got.items():
        if key.startswith(metric + "{") and 'container="%s"' % container in key:
            return value
    return None


def wait_for(what, check, within=60, every=1):
    deadline = time.monotonic() + within
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, "no %s within %d s" % (what, within)
        time.sleep(every)


def scrape_until(host, what, check, within=60):
    """Scrapes the container exporter until check(series) holds; returns those series."""
    found = {}

    def once():
        found["got"] = scrape(host)
        return check(found["got"])
    wait_for(what, once, within)
    return found["got"]


@pytest.fixture
def containers(host):
    """Runs containers labelled as a Compose project; removes them afterwards."""
    names = []

    def run(name, command, options=""):
        host.run("docker rm -f %s" % name)
        host.check_output("docker run -d --name %s %s --label com.docker.compose.service=%s %s %s %s"
                          % (name, LABELS, name, options, image(host), command))
        names.append(name)
        return name
    yield run
    host.run("docker rm -f %s" % " ".join(names))


def test_engine_metrics_on_the_private_address_only(host):
    config = json.loads(host.file("/etc/docker/daemon.json").content_string)
    assert config["metrics-addr"] == address(host) + ":9323"
    # Debian 12's 20.10 needs no experimental mode for them (moby#40427, in 20.10)
    assert "experimental" not in config
    got = scrape(host, 9323)
    assert [k for k in got if k.startswith("engine_daemon_container_states_containers{")], sorted(got)[:20]
    refused = fetch(host, 9323, at="127.0.0.1")
    assert refused.rc != 0 and "Connection refused" in refused.stderr


def test_container_exporter_on_the_private_address_only(host):
    assert host.service(UNIT).is_running and host.service(UNIT).is_enabled
    listening = [s for s in host.socket.get_listening_sockets() if s.endswith(":9417")]
    assert listening == ["tcp://%s:9417" % address(host)]
    refused = fetch(host, 9417, at="127.0.0.1")
    assert refused.rc != 0 and "Connection refused" in refused.stderr
    got = scrape(host)
    assert got["keelson_container_docker_up"] == 1


def test_a_container_up_then_stopped(host, containers):
    name = containers("kce-up", "sleep 3600")
    got = scrape_until(host, "kce-up up", lambda g: of(name, "keelson_container_up", g) == 1)
    assert of(name, "keelson_container_cpu_seconds_total", got) is not None
    assert of(name, "keelson_container_memory_bytes", got) > 0
    assert of(name, "keelson_container_restarts_total", got) == 0
    assert 'keelson_container_up{container="kce-up",project="molecule",replica="kce-up",service="kce-up"}' in got
    host.check_output("docker stop -t 1 %s" % name)
    got = scrape(host)
    assert of(name, "keelson_container_up", got) == 0
    assert of(name, "keelson_container_memory_bytes", got) is None


def test_restarts_are_counted_and_survive_an_exporter_restart(host, containers):
    name = containers("kce-crash", "sh -c 'sleep 1; exit 3'", "--restart always")

    def restarts(got):
        return of(name, "keelson_container_restarts_total", got) or 0
    first = restarts(scrape_until(host, "a restart", lambda g: restarts(g) >= 1))
    later = restarts(scrape_until(host, "another restart", lambda g: restarts(g) > first))
    host.check_output("systemctl restart %s" % UNIT)
    wait_for("the exporter back", lambda: fetch(host, 9417).rc == 0)
    # the count is the engine's: a restarted exporter reports it unchanged or higher
    assert restarts(scrape(host)) >= later


def test_health(host, containers):
    # the image is FROM scratch: Debian's static busybox serves as the healthcheck's /bin/sh
    shell = "-v /bin/busybox:/bin/sh:ro --health-interval 1s --health-retries 1"
    ok = containers("kce-healthy", "sleep 3600", shell + " --health-cmd true")
    sick = containers("kce-sick", "sleep 3600", shell + " --health-cmd false")
    got = scrape_until(host, "both health states", lambda g: (
        of(ok, "keelson_container_healthy", g), of(sick, "keelson_container_healthy", g)) == (1, 0))
    assert of(sick, "keelson_container_up", got) == 1   # running, though unhealthy


def test_scrape_time(host, containers):
    for n in range(4):
        containers("kce-load-%d" % n, "sleep 3600")
    durations = sorted(scrape(host)["keelson_container_scrape_duration_seconds"] for _ in range(5))
    # one-shot stats answer at once from Engine 25 on; 20.10 answers at its 1 s collector tick
    assert durations[2] < (1.5 if host.backend.get_hostname().endswith("debian12") else 0.5), durations


def test_exporter_keeps_serving_while_the_engine_is_down(host):
    try:
        # docker.socket would start the engine again at the exporter's next call
        host.check_output("systemctl stop docker.socket docker.service")
        got = scrape(host)
        assert got["keelson_container_docker_up"] == 0
        assert got["keelson_container_scrape_errors_total"] >= 1
        assert not [k for k in got if k.startswith("keelson_container_up{")]
    finally:
        host.check_output("systemctl start docker.socket docker.service")
    wait_for("the engine back in the exporter", lambda: scrape(host)["keelson_container_docker_up"] == 1)


def test_unit_runs_unprivileged_with_only_the_docker_group(host):
    props = dict(line.split("=", 1) for line in host.check_output(
        "systemctl show %s -p DynamicUser -p SupplementaryGroups -p NoNewPrivileges -p ProtectSystem "
        "-p CapabilityBoundingSet -p PrivateDevices -p RestrictAddressFamilies -p MainPID" % UNIT).splitlines())
    assert props["DynamicUser"] == "yes" and props["SupplementaryGroups"] == "docker"
    assert props["NoNewPrivileges"] == "yes" and props["ProtectSystem"] == "strict"
    assert props["CapabilityBoundingSet"] == "" and props["PrivateDevices"] == "yes"
    status = host.file("/proc/%s/status" % props["MainPID"]).content_string
    uid = re.search(r"^Uid:\s+(\d+)", status, re.M).group(1)
    gid = re.search(r"^Gid:\s+(\d+)", status, re.M).group(1)
    groups = set(re.search(r"^Groups:\s*(.*)$", status, re.M).group(1).split()) - {gid}
    assert uid != "0" and gid != "0"
    # its own transient group, and docker for the socket
    assert groups == {host.check_output("getent group docker | cut -d: -f3")}
    assert re.search(r"^CapEff:\s+0+$", status, re.M)
    exposure = host.check_output("systemd-analyze security %s --no-pager | tail -1" % UNIT)
    assert float(re.search(r"level for \S+: ([0-9.]+)", exposure).group(1)) < 2.0, exposure
