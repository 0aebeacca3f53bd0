"""Runs one role against an unreachable host with given variables, to prove that
bad input fails at argument validation: the validation task needs no connection,
so if validation wrongly passes, the next task fails as unreachable and the test
sees no validation error."""
import json
import os
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_role(role, role_vars, entry_point="main", groups=(), host_vars=None):
    """Returns (returncode, combined output) of a play applying keelson.stack.<role>
    (its tasks_from=<entry_point> when that is not main). The host is in `groups` and has
    `host_vars` as inventory variables (what the filters over hostvars and groups read)."""
    play = [{
        "name": "argspec probe",
        "hosts": "nowhere",
        "gather_facts": False,
        "roles": [{"role": f"keelson.stack.{role}", "vars": role_vars}],
    }]
    if entry_point != "main":
        del play[0]["roles"]
        play[0]["tasks"] = [{"ansible.builtin.include_role": {"name": f"keelson.stack.{role}",
                                                              "tasks_from": entry_point},
                             "vars": role_vars}]
    with tempfile.TemporaryDirectory() as tmp:
        pb = Path(tmp) / "play.yml"
        pb.write_text(json.dumps(play))
        inv = Path(tmp) / "inventory.ini"
        inv.write_text("nowhere ansible_connection=community.docker.docker "
                       "ansible_host=keelson-argspec-no-such-container"
                       + "".join(" %s=%s" % item for item in (host_vars or {}).items()) + "\n"
                       + "".join("[%s]\nnowhere\n" % group for group in groups))
        env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
                   ANSIBLE_COLLECTIONS_PATH=str(ROOT / "collections"), ANSIBLE_NOCOLOR="1")
        res = subprocess.run(["ansible-playbook", "-i", str(inv), str(pb)], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
    return res.returncode, res.stdout + res.stderr


def assert_rejected(role, role_vars, *fragments, entry_point="main", groups=(), host_vars=None):
    """The play fails in the argument validation task with every fragment in the message."""
    rc, out = run_role(role, role_vars, entry_point, groups, host_vars)
    assert rc != 0, out
    assert "Validating arguments against arg spec" in out, out
    assert "UNREACHABLE" not in out, "validation passed and the role went on:\n" + out
    for fragment in fragments:
        assert fragment in out, f"{fragment!r} not in:\n{out}"
