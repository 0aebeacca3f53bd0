"""Converging with --diff -v while a user's password and the exporter's change prints none of
the passwords nor their hashes, restarts the exporter but not Redis (runs after test_redis.py
and restores the passwords)."""
import hashlib
import json
import os
import subprocess
from pathlib import Path

SCENARIO = Path(__file__).resolve().parents[1]
ROOT = SCENARIO.parents[1]
OLD = "Molecule-Redis-App-51c0"
NEW = "Molecule-Redis-App-rotated-3e77"
ADMIN = "Molecule-Redis-Admin-2b9e"
EXPORTER_OLD = "Molecule-Redis-Exp$HOME\"q`x\\y'z"
EXPORTER_NEW = "Molecule-Redis-Exp-rotated-9c1d"


def converge(extra_vars=None):
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
               ANSIBLE_COLLECTIONS_PATH=str(ROOT / "collections"), ANSIBLE_NOCOLOR="1")
    cmd = ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"],
           str(SCENARIO / "converge.yml"), "--diff", "-v"]
    if extra_vars:
        cmd += ["-e", json.dumps(extra_vars)]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    return res.returncode, res.stdout + res.stderr


def instances():
    names = subprocess.run(["docker", "ps", "--filter", "name=^redis-debian", "--format", "{{.Names}}"],
                           capture_output=True, text=True, check=True).stdout.split()
    assert names, "no redis instance is running"
    return names


def run_ids():
    """Each instance's server run_id: it changes when redis-server restarts."""
    ids = {}
    for name in instances():
        info = subprocess.run(
            ["docker", "exec", "-e", "REDISCLI_AUTH", name, "redis-cli", "--no-auth-warning",
             "--user", "keelson-admin", "INFO", "server"],
            env=dict(os.environ, REDISCLI_AUTH=ADMIN), capture_output=True, text=True, check=True)
        ids[name] = next(line for line in info.stdout.splitlines() if line.startswith("run_id:"))
    return ids


def exporter_pids():
    return {name: subprocess.run(["docker", "exec", name, "systemctl", "show", "-p", "MainPID", "--value",
                                  "prometheus-redis-exporter"], capture_output=True, text=True,
                                 check=True).stdout.strip() for name in instances()}


def redis_up():
    """redis_up as each instance's exporter reports it (on the instance's private address)."""
    script = ("import socket, urllib.request; a = socket.gethostbyname(socket.gethostname()); "
              "print([l for l in urllib.request.urlopen('http://%s:9121/metrics' % a, timeout=20)"
              ".read().decode().splitlines() if l.startswith('redis_up ')][0])")
    return {name: subprocess.run(["docker", "exec", name, "python3", "-c", script], capture_output=True,
                                 text=True, check=True).stdout.strip() for name in instances()}


def assert_no_secret(out):
    for secret in (OLD, NEW, ADMIN, EXPORTER_OLD, EXPORTER_NEW):
        assert secret not in out
        assert hashlib.sha256(secret.encode()).hexdigest() not in out


def test_rotating_passwords_prints_no_secret_and_restarts_only_the_exporter():
    before, exporters = run_ids(), exporter_pids()
    rc, out = converge({"redis_users": [{"name": "app", "password": NEW}],
                        "redis_exporter_password": EXPORTER_NEW})
    assert rc == 0, out
    # The ACL file really changed and ACL LOAD applied it without a restart.
    assert "RUNNING HANDLER [keelson.stack.redis : Load the Redis ACL file]" in out, out
    assert run_ids() == before
    assert all(exporter_pids()[name] != pid for name, pid in exporters.items())
    assert set(redis_up().values()) == {"redis_up 1"}
    assert_no_secret(out)
    rc, out = converge()
    assert rc == 0, out
    assert_no_secret(out)
    assert set(redis_up().values()) == {"redis_up 1"}
