"""Converging with --diff -v while the registry password changes prints no password."""
import json
import os
import subprocess
from pathlib import Path

SCENARIO = Path(__file__).resolve().parents[1]
ROOT = SCENARIO.parents[1]
OLD = "Molecule-Docker-Login-7f3c"
NEW = "Molecule-Docker-Login-rotated-91aa"


def converge(extra_vars=None):
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
               ANSIBLE_COLLECTIONS_PATH=str(ROOT / "collections"), ANSIBLE_NOCOLOR="1")
    cmd = ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"],
           str(SCENARIO / "converge.yml"), "--diff", "-v"]
    if extra_vars:
        cmd += ["-e", json.dumps(extra_vars)]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    return res.returncode, res.stdout + res.stderr


def test_rotating_the_registry_password_prints_neither_password():
    rc, out = converge({"docker_registry_logins": [
        {"registry": "172.30.77.42:5000", "username": "keelson-molecule", "password": NEW}]})
    assert rc == 0, out
    assert "changed=1" in out, out  # the login really ran with the new password
    assert NEW not in out and OLD not in out
    rc, out = converge()
    assert rc == 0, out
    assert NEW not in out and OLD not in out
