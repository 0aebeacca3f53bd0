"""Converging with --diff -v while a user's password changes prints neither the
password nor its hash (runs after test_redis.py and restores the password)."""
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


def converge(extra_vars=None):
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
               ANSIBLE_COLLECTIONS_PATH=str(ROOT / "collections"), ANSIBLE_NOCOLOR="1")
    cmd = ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"],
           str(SCENARIO / "converge.yml"), "--diff", "-v"]
    if extra_vars:
        cmd += ["-e", json.dumps(extra_vars)]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    return res.returncode, res.stdout + res.stderr


def run_ids():
    """Each instance's server run_id: it changes when redis-server restarts."""
    ids = {}
    names = subprocess.run(["docker", "ps", "--filter", "name=^redis-debian", "--format", "{{.Names}}"],
                           capture_output=True, text=True, check=True).stdout.split()
    assert names, "no redis instance is running"
    for name in names:
        info = subprocess.run(
            ["docker", "exec", "-e", "REDISCLI_AUTH", name, "redis-cli", "--no-auth-warning",
             "--user", "keelson-admin", "INFO", "server"],
            env=dict(os.environ, REDISCLI_AUTH=ADMIN), capture_output=True, text=True, check=True)
        ids[name] = next(line for line in info.stdout.splitlines() if line.startswith("run_id:"))
    return ids


def assert_no_secret(out):
    for secret in (OLD, NEW, ADMIN):
        assert secret not in out
        assert hashlib.sha256(secret.encode()).hexdigest() not in out


def test_rotating_a_password_prints_no_secret_and_needs_no_restart():
    before = run_ids()
    rc, out = converge({"redis_users": [{"name": "app", "password": NEW}]})
    assert rc == 0, out
    # The ACL file really changed and ACL LOAD applied it without a restart.
    assert "RUNNING HANDLER [keelson.stack.redis : Load the Redis ACL file]" in out, out
    assert run_ids() == before
    assert_no_secret(out)
    rc, out = converge()
    assert rc == 0, out
    assert_no_secret(out)
