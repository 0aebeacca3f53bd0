"""The base role's SSH lock-out guard, over a real SSH session to db1's hardened sshd.

The lab inventory reaches its hosts over SSH (unless `lab.py up --connection docker`
made it use `docker exec`); this test does not depend on which: it adds a throw-away
user with a key and passwordless sudo on db1 and runs the base role over SSH, without
connection sharing, with the lab's own variables: once with firewall
sources that leave out the controller (the role must fail at the guard, changing
nothing), once with the lab's (it converges with nothing to change)."""
import re
import subprocess

import pytest
import yaml

from conftest import ROOT, recap

USER = "keelson-guard-it"
SUDOERS = "/etc/sudoers.d/zz-keelson-guard-it"


def remove_user(lab):
    lab.sh("rm -f {1}; pkill -KILL -u {0}; userdel --force --remove {0}".format(USER, SUDOERS), check=False)


@pytest.fixture(scope="module")
def ssh_user(lab, tmp_path_factory):
    key = tmp_path_factory.mktemp("ssh") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", USER, "-f", str(key)], check=True)
    remove_user(lab)  # a leftover of an interrupted run
    lab.sh("useradd --create-home --shell /bin/bash %s" % USER)
    try:
        lab.sh("install -d -m 0700 -o {0} -g {0} /home/{0}/.ssh && umask 077 && cat > /home/{0}/.ssh/authorized_keys"
               " && chown {0}: /home/{0}/.ssh/authorized_keys".format(USER),
               input=key.with_suffix(".pub").read_text())
        lab.sh("umask 227 && cat > %s" % SUDOERS, input="%s ALL=(ALL) NOPASSWD: ALL\n" % USER)
        yield key
    finally:
        remove_user(lab)


def run_base_over_ssh(lab, key, tmp_path, **extra):
    playbook = tmp_path / "base.yml"
    # the collection's playbook group_vars (group names, private addresses), as site.yml has them
    (tmp_path / "group_vars").symlink_to(ROOT / "playbooks" / "group_vars")
    playbook.write_text(yaml.safe_dump([{"name": "Base over SSH", "hosts": lab.db_host, "become": True,
                                         "roles": [{"role": "keelson.stack.base"}]}]))
    res = lab.playbook(playbook, dict(
        ansible_connection="ssh", ansible_host=lab.db_address, ansible_user=USER,
        ansible_ssh_private_key_file=str(key),
        # no ControlPersist master outliving the test and its user
        ansible_ssh_args="-o ControlMaster=no -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
        **extra))
    res.recap = recap(res.stdout).get(lab.db_host, {})
    return res


def config_digests(lab):
    return lab.sh("sha256sum /etc/nftables.conf /etc/ssh/sshd_config").stdout


def test_firewall_that_leaves_out_the_controller_is_refused_before_any_change(lab, ssh_user, tmp_path):
    before = config_digests(lab)
    res = run_base_over_ssh(lab, ssh_user, tmp_path, base_firewall_ssh_sources=["203.0.113.0/24"])
    assert res.returncode != 0
    assert re.search(r"Ansible reaches db1 over SSH from [0-9.]+, which is not in base_firewall_ssh_sources "
                     r"\(203\.0\.113\.0/24\)", res.output), res.output[-3000:]
    assert res.recap.get("changed") == 0 and res.recap.get("failed") == 1, res.recap
    assert config_digests(lab) == before


def test_lab_sources_pass_and_the_role_changes_nothing(lab, ssh_user, tmp_path):
    res = run_base_over_ssh(lab, ssh_user, tmp_path)
    assert res.returncode == 0, res.output[-4000:]
    # the guard ran (not skipped) and passed
    guard = r"Refuse firewall rules that would lock this SSH session out\][^\n]*\n(?:[^\n]*\*{3,} ?\n)?ok: \[db1\]"
    assert re.search(guard, res.stdout), res.output[-4000:]
    assert res.recap.get("changed") == 0, res.output[-4000:]
