"""The base role's SSH lock-out guard, over a real SSH session to db1's hardened sshd.

The lab reaches its hosts through `docker exec`, which has no SSH session to lose,
so this test adds a throw-away user with a key and passwordless sudo on db1 and
runs the base role over SSH with the lab's own variables: once with firewall
sources that leave out the controller (the role must fail at the guard, changing
nothing), once with the lab's (it converges with nothing to change)."""
import json
import re
import subprocess

import pytest
import yaml

from conftest import INVENTORY, ROOT

USER = "keelson-guard-it"
HOST = "db1"


def on_db1(*argv):
    res = subprocess.run(["docker", "exec", "keelson-lab-" + HOST, *argv], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def remove_user():
    subprocess.run(["docker", "exec", "keelson-lab-" + HOST, "rm", "-f", "/etc/sudoers.d/zz-keelson-guard-it"])
    subprocess.run(["docker", "exec", "keelson-lab-" + HOST, "pkill", "-KILL", "-u", USER], capture_output=True)
    subprocess.run(["docker", "exec", "keelson-lab-" + HOST, "userdel", "--force", "--remove", USER],
                   capture_output=True)


@pytest.fixture(scope="module")
def ssh_user(tmp_path_factory):
    keydir = tmp_path_factory.mktemp("ssh")
    key = keydir / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", USER, "-f", str(key)], check=True)
    remove_user()  # a leftover of an interrupted run
    on_db1("useradd", "--create-home", "--shell", "/bin/bash", USER)
    try:
        on_db1("install", "-d", "-m", "0700", "-o", USER, "-g", USER, "/home/%s/.ssh" % USER)
        subprocess.run(["docker", "exec", "-i", "keelson-lab-" + HOST, "sh", "-c",
                        "umask 077 && cat > /home/{0}/.ssh/authorized_keys && chown {0}: /home/{0}/.ssh/authorized_keys"
                        .format(USER)], input=(keydir / "id_ed25519.pub").read_text(), text=True, check=True)
        subprocess.run(["docker", "exec", "-i", "keelson-lab-" + HOST, "sh", "-c",
                        "umask 227 && cat > /etc/sudoers.d/zz-keelson-guard-it"],
                       input="%s ALL=(ALL) NOPASSWD: ALL\n" % USER, text=True, check=True)
        yield key
    finally:
        remove_user()


def run_base_over_ssh(key, tmp_path, **extra):
    address = yaml.safe_load(INVENTORY.read_text())["all"]["children"]["db"]["hosts"][HOST]["keelson_private_address"]
    playbook = tmp_path / "base.yml"
    # the collection's playbook group_vars (group names, private addresses), as site.yml has them
    (tmp_path / "group_vars").symlink_to(ROOT / "playbooks" / "group_vars")
    playbook.write_text(yaml.safe_dump([{"name": "Base over SSH", "hosts": HOST, "become": True,
                                         "roles": [{"role": "keelson.stack.base"}]}]))
    variables = dict(ansible_connection="ssh", ansible_host=address, ansible_user=USER,
                     ansible_ssh_private_key_file=str(key),
                     # no ControlPersist master outliving the test and its user
                     ansible_ssh_args="-o ControlMaster=no -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
                     **extra)
    varfile = tmp_path / "vars.json"
    varfile.write_text(json.dumps(variables))
    res = subprocess.run(["ansible-playbook", "-i", str(INVENTORY), "-l", HOST, str(playbook), "-e", "@%s" % varfile],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    res.output = res.stdout + res.stderr
    found = re.search(r"^%s\s*:\s*(.*)$" % HOST, res.stdout, re.M)
    res.recap = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", found.group(1))} if found else {}
    return res


def test_firewall_that_leaves_out_the_controller_is_refused_before_any_change(ssh_user, tmp_path):
    before = on_db1("sha256sum", "/etc/nftables.conf", "/etc/ssh/sshd_config")
    res = run_base_over_ssh(ssh_user, tmp_path, base_firewall_ssh_sources=["203.0.113.0/24"])
    assert res.returncode != 0
    assert re.search(r"Ansible reaches db1 over SSH from [0-9.]+, which is not in base_firewall_ssh_sources "
                     r"\(203\.0\.113\.0/24\)", res.output), res.output[-3000:]
    assert res.recap.get("changed") == 0 and res.recap.get("failed") == 1, res.recap
    assert on_db1("sha256sum", "/etc/nftables.conf", "/etc/ssh/sshd_config") == before


def test_lab_sources_pass_and_the_role_changes_nothing(ssh_user, tmp_path):
    res = run_base_over_ssh(ssh_user, tmp_path)
    assert res.returncode == 0, res.output[-4000:]
    # the guard ran (not skipped) and passed
    assert re.search(r"Refuse firewall rules that would lock this SSH session out\][^\n]*\n(?:[^\n]*\*{7} \n)?ok: \[db1\]",
                     res.stdout), res.output[-4000:]
    assert res.recap.get("changed") == 0, res.output[-4000:]
