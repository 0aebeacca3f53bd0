"""Debian 12's archive (bookworm-backports included) has no Compose v2: the role,
asked for Compose from Debian there, stops before changing anything."""
import json
import os
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_debian12_with_debian_compose_fails_early():
    play = [{"name": "refusal probe", "hosts": "docker-debian12",
             "roles": [{"role": "keelson.stack.docker"}]}]
    with tempfile.TemporaryDirectory() as tmp:
        pb = Path(tmp) / "play.yml"
        pb.write_text(json.dumps(play))
        env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
                   ANSIBLE_COLLECTIONS_PATH=str(ROOT / "collections"), ANSIBLE_NOCOLOR="1")
        res = subprocess.run(
            ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], str(pb),
             "-e", json.dumps({"docker_compose_install": True, "docker_source": "debian"})],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert "bookworm-backports" in out and "docker_source: docker" in out, out
    assert "changed=0" in out, out
    assert "Install the Engine" not in out, out
