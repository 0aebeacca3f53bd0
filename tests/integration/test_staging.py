"""inventories/staging, the worked example, converged and deployed as written, on five
fresh hosts of its own on the lab network (lb1, app1, app2, db1 and mon1
.staging.example.com, at .61 to .65): the example can never silently rot again.

What differs on the lab is overridden, and only that (`overrides()`):
  - addresses and connection: an inventory of host vars beside the example's
    (`-i inventories/staging -i <that file>`), hosts reached with docker exec;
  - the registry: the lab's, which holds stand-ins under the example's image names
    (lab/demo/jobsearch: the demo on the example's ports, paths and commands);
  - S3's endpoint and keys, and the ACME directory (the lab's pebble; its root is
    trusted on lb1 as Let's Encrypt's is on a real VM, and pebble reaches
    staging.example.com on lb1 by a network alias);
  - where Alertmanager would send (loopback: no traffic leaves the lab).
The example's vault is opened with its documented example password.

Then: the edge answers by the public name with a verified certificate, deploy.yml
moves every service on both app hosts to the next version with the migration run
once, and backup.yml stores a verified backup of the example's database."""
import base64
import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import GENERATED, ROOT, recap

sys.path.insert(0, str(ROOT / "lab"))
import lab as labpy  # noqa: E402  (lab/lab.py: the lab's network and host flags)

STAGING = ROOT / "inventories" / "staging"
VAULT = ["--vault-id", "staging@%s" % (STAGING / "vault-password.example.txt")]
HOSTS = {"lb1": 61, "app1": 62, "app2": 63, "db1": 64, "mon1": 65}
DOMAIN = "staging.example.com"
NEXT = "2.5.0"


def container(short):
    return "keelson-lab-staging-" + short


def start_host(short, suffix):
    args = ["--hostname", "%s.%s" % (short, DOMAIN), "--network", labpy.NETWORK, "--ip", labpy.address(suffix),
            *labpy.SYSTEMD_FLAGS, "--label", labpy.LABEL]
    if short == "lb1":
        args += ["--network-alias", DOMAIN]  # the public name, for pebble's HTTP-01 check
    if short.startswith("app"):
        args += ["-v", "/var/lib/docker"]  # an anonymous volume: Docker's storage off the overlay
    subprocess.run(["docker", "rm", "-f", "-v", container(short)], capture_output=True)
    subprocess.run(["docker", "run", "-d", "--name", container(short), *args, "keelson/debian:13",
                    "/lib/systemd/systemd"], capture_output=True, check=True)


def sh(short, script, input=None):
    res = subprocess.run(["docker", "exec", "-i", container(short), "sh", "-c", script], input=input,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, "%s: %s\n%s%s" % (short, script, res.stdout, res.stderr)
    return res.stdout


def acme_root(lab_vars):
    """The lab pebble's root certificate (its management API, behind its listener certificate)."""
    context = ssl.create_default_context(cafile=lab_vars["keelson_acme_directory_cafile"])
    base = lab_vars["keelson_acme_directory_url"].rsplit(":", 1)[0]
    with urllib.request.urlopen(base + ":15000/roots/0", context=context, timeout=30) as resp:
        return resp.read().decode()


def overrides(lab_vars):
    registry = lab_vars["keelson_registry"]
    return {
        "keelson_admin_networks": [lab_vars["keelson_lab_network"]],
        "staging_registry": registry,
        "docker_insecure_registries": [registry],
        "backup_s3_endpoint_url": lab_vars["keelson_s3_endpoint_url"],
        "backup_s3_region": "us-east-1",
        "backup_s3_bucket": lab_vars["keelson_s3_bucket"],
        "backup_s3_access_key": lab_vars["keelson_s3_access_key"],
        "backup_s3_secret_key": lab_vars["keelson_s3_secret_key"],
        "nginx_acme_directory_url": lab_vars["keelson_acme_directory_url"],
        "nginx_acme_directory_cafile": lab_vars["keelson_acme_directory_cafile"],
        "prometheus_alertmanager_receivers": [
            {"name": "oncall", "webhook_url": "http://127.0.0.1:9/alertmanager/staging"},
            {"name": "ops-email", "email_to": "ops@example.com"}],
        "prometheus_alertmanager_smtp": {"smarthost": "127.0.0.1:25", "from": "alertmanager@" + DOMAIN,
                                         "require_tls": False},
    }


class Staging:
    def __init__(self, workdir, lab_vars):
        self.lab_vars = lab_vars
        self.hosts_file = workdir / "lab-hosts.yml"
        self.hosts_file.write_text(yaml.safe_dump({"all": {"hosts": {
            "%s.%s" % (short, DOMAIN): {"ansible_host": container(short),
                                        "keelson_private_address": labpy.address(suffix)}
            for short, suffix in HOSTS.items()}, "vars": {
            "ansible_connection": "community.docker.docker", "ansible_user": "root",
            "ansible_python_interpreter": "/usr/bin/python3"}}}))
        self.vars_file = workdir / "lab-overrides.json"
        fd = os.open(self.vars_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(overrides(lab_vars), handle)

    def playbook(self, playbook, *extra, timeout=1800):
        argv = ["ansible-playbook", playbook, "-i", str(STAGING), "-i", str(self.hosts_file),
                "-e", "@%s" % self.vars_file, *VAULT, *extra]
        env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
                   ANSIBLE_FORCE_COLOR="0")
        started = time.monotonic()
        res = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        res.seconds = time.monotonic() - started
        res.output = res.stdout + res.stderr
        return res

    def vault_value(self, name):
        env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
        res = subprocess.run(["ansible", "localhost", "-i", str(STAGING), *VAULT, "-m", "ansible.builtin.debug",
                              "-a", "var=" + name, "-o"], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=120)
        assert res.returncode == 0, res.stdout + res.stderr
        return json.loads(res.stdout.split("=>", 1)[1])[name]

    def edge(self, path, auth=None):
        """(status, body) of GET https://staging.example.com<path>, sent to lb1, its certificate
        verified against the lab ACME root."""
        conn = http.client.HTTPSConnection(DOMAIN, 443, timeout=30, context=ssl.create_default_context(
            cadata=self.acme_root))
        conn._create_connection = lambda _host_port, *args, **kwargs: socket.create_connection(
            (labpy.address(HOSTS["lb1"]), 443), *args, **kwargs)
        headers = {}
        if auth:
            headers["Authorization"] = "Basic " + base64.b64encode(("%s:%s" % auth).encode()).decode()
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        body = resp.read().decode(errors="replace")
        conn.close()
        return resp.status, body


def app_containers(short):
    """{stack service: [DEMO_VERSION of each of its running containers]} of the jobsearch project."""
    out = subprocess.run(["docker", "exec", container(short), "docker", "ps", "--filter",
                          "label=keelson.stack.project=jobsearch", "--format", "{{.ID}}"],
                         capture_output=True, text=True, check=True).stdout.split()
    found = {}
    for cid in out:
        inspected = json.loads(subprocess.run(["docker", "exec", container(short), "docker", "inspect", cid],
                                              capture_output=True, text=True, check=True).stdout)[0]
        service = inspected["Config"]["Labels"]["keelson.stack.service"]
        env = dict(e.split("=", 1) for e in inspected["Config"]["Env"])
        found.setdefault(service, []).append(env.get("DEMO_VERSION"))
    return found


@pytest.fixture(scope="module")
def staging(lab):
    lab_vars = yaml.safe_load(GENERATED.read_text())
    for short, suffix in HOSTS.items():
        start_host(short, suffix)
    try:
        for short in HOSTS:
            labpy.wait_systemd("staging-" + short)  # lab.py names its containers keelson-lab-<name>
        root = acme_root(lab_vars)
        sh("lb1", "cat > /usr/local/share/ca-certificates/lab-acme-root.crt && update-ca-certificates >/dev/null",
           input=root)
        with tempfile.TemporaryDirectory(prefix="keelson-staging-") as workdir:
            env = Staging(Path(workdir), lab_vars)
            env.acme_root = root
            yield env
    finally:
        subprocess.run(["docker", "rm", "-f", "-v", *[container(s) for s in HOSTS]], capture_output=True)
        s3 = lab.s3()
        bucket = lab_vars["keelson_s3_bucket"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="staging/"):
            for obj in page.get("Contents", []):
                s3.delete_object(Bucket=bucket, Key=obj["Key"])


@pytest.fixture(scope="module")
def converged(staging):
    res = staging.playbook("site.yml")
    print("\nstaging site.yml on 5 fresh hosts: %.0f s" % res.seconds)
    assert res.returncode == 0, res.output[-8000:]
    return res


def test_site_yml_converges_the_example_as_written(converged):
    hosts = recap(converged.output)
    assert sorted(hosts) == sorted("%s.%s" % (s, DOMAIN) for s in HOSTS), hosts
    assert not [h for h, r in hosts.items() if r["failed"] or r["unreachable"]], hosts
    # the example's own smoke checks passed through the edge (site.yml's last play)
    assert "smoke OK through the edge" in converged.output
    for short in ("app1", "app2"):
        services = app_containers(short)
        for service in ("frontend", "api-gateway", "worker"):
            assert services.get(service) == ["2.4.1", "2.4.1"], services
        # the scheduler (placement: one) on the first app host only
        assert ("scheduler" in services) == (short == "app1"), services


def test_the_edge_serves_the_public_name_with_basic_auth(staging, converged):
    status, body = staging.edge("/health")
    assert status == 200, body
    status, _ = staging.edge("/")
    assert status == 401
    password = staging.vault_value("vault_basic_auth_password")
    status, body = staging.edge("/api/version", auth=("staging", password))
    assert status == 200 and json.loads(body)["version"] == "2.4.1", body


def test_deploy_moves_every_service_and_runs_the_migration_once(lab, staging, converged):
    res = staging.playbook("playbooks/deploy.yml", "-e", "app_version=" + NEXT)
    print("\nstaging deploy.yml %s: %.0f s" % (NEXT, res.seconds))
    assert res.returncode == 0, res.output[-8000:]
    for short in ("app1", "app2"):
        services = app_containers(short)
        assert {v for versions in services.values() for v in versions} == {NEXT}, (short, services)
    runs = subprocess.run(["docker", "exec", "-u", "postgres", container("db1"), "psql", "-XAt", "-d", "jobsearch",
                           "-c", "SELECT version, count(*) FROM migration_runs GROUP BY 1 ORDER BY 1"],
                          capture_output=True, text=True, check=True).stdout.split()
    assert runs == ["2.4.1|1", NEXT + "|1"], runs
    status, body = staging.edge("/health")
    assert status == 200, body


def test_backup_yml_stores_the_example_database(lab, staging, converged):
    res = staging.playbook("playbooks/backup.yml")
    assert res.returncode == 0, res.output[-8000:]
    keys = [o["Key"] for page in lab.s3().get_paginator("list_objects_v2").paginate(
        Bucket=staging.lab_vars["keelson_s3_bucket"], Prefix="staging/postgresql/db1.%s/jobsearch/" % DOMAIN)
        for o in page.get("Contents", [])]
    assert any(k.endswith("manifest.json") for k in keys), keys
