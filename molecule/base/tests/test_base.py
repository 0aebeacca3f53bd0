"""keelson.stack.base on every instance: sshd, users and sudo, time sync,
unattended upgrades, and an nftables table that left everything else alone."""
import re

import pytest

TEST_KEY_COMMENT_FREE = "ssh-ed25519 "


def sshd_settings(host, spec=None):
    cmd = "sshd -T" + (f" -C {spec}" if spec else "")
    out = host.check_output(cmd)
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def test_sshd_effective_settings_are_hardened(host):
    s = sshd_settings(host)
    assert s["permitrootlogin"] == "no"
    assert s["passwordauthentication"] == "no"
    assert s["kbdinteractiveauthentication"] == "no"
    assert s["pubkeyauthentication"] == "yes"
    assert s["authenticationmethods"] == "publickey"
    assert s["permitemptypasswords"] == "no"
    assert s["x11forwarding"] == "no"
    assert s["allowagentforwarding"] == "no"
    assert s["allowtcpforwarding"] == "no"
    assert s["permituserenvironment"] == "no"
    assert s["maxauthtries"] == "3"
    assert s["logingracetime"] == "30"
    assert s["loglevel"] == "VERBOSE"


def test_sshd_algorithms_are_modern(host):
    s = sshd_settings(host)
    kex, ciphers, macs = (s[k].split(",") for k in ("kexalgorithms", "ciphers", "macs"))
    assert not [k for k in kex if "sha1" in k or "nistp" in k or "group14" in k or "group1-" in k]
    assert "curve25519-sha256" in kex and "sntrup761x25519-sha512@openssh.com" in kex
    assert not [c for c in ciphers if c.endswith("-cbc") or "3des" in c or "arcfour" in c]
    assert macs and all(m.endswith("-etm@openssh.com") for m in macs)
    release = host.file("/etc/debian_version").content_string
    if release.startswith("13") or release.startswith("trixie"):
        assert kex[0] == "mlkem768x25519-sha256"
    else:
        assert "mlkem768x25519-sha256" not in kex


def test_root_login_is_refused_by_config_even_from_an_admin_address(host):
    s = sshd_settings(host, "user=root,host=admin,addr=172.30.81.11")
    assert s["permitrootlogin"] == "no"


def test_sshd_config_is_valid_and_ssh_runs(host):
    assert host.run("sshd -t").rc == 0
    assert host.service("ssh").is_running
    assert host.service("ssh").is_enabled
    assert host.file("/etc/ssh/sshd_config").mode == 0o644


def test_deploy_user_has_keys_and_full_passwordless_sudo(host):
    keys = host.file("/home/deploy/.ssh/authorized_keys")
    assert keys.user == "deploy" and keys.content_string.startswith(TEST_KEY_COMMENT_FREE)
    assert host.run("runuser -u deploy -- sudo -n true").rc == 0
    assert host.check_output("runuser -u deploy -- sudo -n id -un") == "root"
    sudoers = host.file("/etc/sudoers.d/keelson-deploy")
    assert sudoers.mode == 0o440 and sudoers.user == "root"


def test_limited_user_may_run_only_its_commands(host):
    assert host.run("runuser -u operator -- sudo -n /usr/bin/journalctl --version").rc == 0
    refused = host.run("runuser -u operator -- sudo -n /usr/bin/id")
    assert refused.rc != 0 and "password is required" in refused.stderr
    assert host.run("visudo -c").rc == 0


def test_users_have_no_usable_password(host):
    for user in ("deploy", "operator"):
        shadow = host.check_output(f"getent shadow {user}").split(":")[1]
        assert shadow.startswith("!") or shadow == "*"


def test_timesyncd_is_configured_and_enabled(host):
    conf = host.file("/etc/systemd/timesyncd.conf.d/keelson.conf").content_string
    assert "NTP=ntp1.example.invalid ntp2.example.invalid" in conf
    assert host.service("systemd-timesyncd").is_enabled
    # Containers skip the unit (ConditionVirtualization=!container): the
    # configuration is what can be tested here, not that the clock syncs.
    effective = host.check_output("systemd-analyze cat-config systemd/timesyncd.conf")
    assert "NTP=ntp1.example.invalid" in effective


def test_unattended_upgrades_take_security_updates_only(host):
    assert host.package("unattended-upgrades").is_installed
    dump = host.check_output("apt-config dump")
    assert 'APT::Periodic::Unattended-Upgrade "1";' in dump
    origins = re.findall(r'^Unattended-Upgrade::Origins-Pattern:: "(.*)";$', dump, re.M)
    assert origins and all("label=Debian-Security" in o for o in origins), origins


@pytest.mark.parametrize("name", ["acl", "ca-certificates", "curl", "nftables", "openssh-server", "sudo"])
def test_essential_packages(host, name):
    assert host.package(name).is_installed


def test_firewall_table_is_loaded_and_persistent(host):
    assert host.service("nftables").is_enabled
    table = host.check_output("nft list table inet keelson")
    assert "type filter hook input priority filter; policy drop;" in table
    assert "type filter hook forward priority filter; policy accept;" in table
    rules = host.file("/etc/nftables.conf").content_string.splitlines()
    assert not [line for line in rules if "flush" in line and not line.lstrip().startswith("#")]


def test_firewall_left_other_tables_alone(host):
    # Every instance has Docker's embedded-DNS NAT rules (written by the
    # controller's Docker into the instance's namespace) before the role runs.
    tables = host.check_output("nft list tables").splitlines()
    assert "table inet keelson" in tables
    assert "table ip nat" in tables
    assert "DOCKER_OUTPUT" in host.check_output("nft list table ip nat")
