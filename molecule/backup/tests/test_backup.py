"""The backup role's result on each instance (the schedule from playbooks/backup_schedule.yml)."""
import shlex
from pathlib import Path

README = Path(__file__).resolve().parents[3] / "README.md"
BACKUP_LINE = ("15 */6 * * * root cd /opt/keelson/ansible && timeout --kill-after=120 14400 "
               "/opt/keelson/venv/bin/ansible-playbook -i inventories/staging "
               "playbooks/backup.yml >> /var/log/keelson/backup.log 2>&1")


def test_prerequisites_installed(host):
    for package in ("python3-boto3", "postgresql-client", "age", "cron", "logrotate"):
        assert host.package(package).is_installed, package
    assert host.run("python3 -c 'import boto3'").rc == 0
    assert host.run("pg_dump --version").rc == 0
    assert host.file("/var/lib/prometheus/node-exporter").is_directory


def test_cron_entries(host):
    cron = host.file("/etc/cron.d/keelson-backup")
    assert cron.user == "root" and cron.mode == 0o644
    lines = [line for line in cron.content_string.splitlines() if line and not line.startswith("#")]
    jobs = [line for line in lines if "ansible-playbook" in line]
    assert jobs == [
        BACKUP_LINE,
        "45 5 * * * root cd /opt/keelson/ansible && timeout --kill-after=120 14400 "
        "/opt/keelson/venv/bin/ansible-playbook -i inventories/staging "
        "playbooks/verify_backups.yml >> /var/log/keelson/verify.log 2>&1",
    ]


def test_logrotate_config_is_valid(host):
    assert host.file("/var/log/keelson").mode == 0o750
    res = host.run("logrotate --debug /etc/logrotate.d/keelson-backup")
    assert res.rc == 0, res.stderr
    assert "/var/log/keelson/backup.log" in res.stderr + res.stdout


def test_readme_shows_exactly_the_line_written():
    assert BACKUP_LINE in README.read_text().splitlines()


def test_the_entry_runs_backup_yml_with_the_inventory_and_logs_rotated(host):
    """Runs the entry's command as cron would (/bin/sh, in cron's PATH) with a stand-in
    ansible-playbook that records its directory and arguments, then rotates the log."""
    entry = [line for line in host.file("/etc/cron.d/keelson-backup").content_string.splitlines()
             if "playbooks/backup.yml" in line][0]
    command = entry.split(None, 6)[6]  # after the five time fields and the user
    stub = "/opt/keelson/venv/bin/ansible-playbook"
    script = '#!/bin/sh\necho "ran in $PWD: $*"\n'
    prepare = ("mkdir -p /opt/keelson/ansible /opt/keelson/venv/bin && rm -f /var/log/keelson/backup.log* "
               "&& printf '%%s' %s > %s && chmod 0755 %s" % (shlex.quote(script), stub, stub))
    assert host.run(prepare).rc == 0
    try:
        res = host.run("env -i PATH=/usr/bin:/bin /bin/sh -c " + shlex.quote(command))
        assert res.rc == 0, res.stderr
        log = host.file("/var/log/keelson/backup.log").content_string
        assert log == "ran in /opt/keelson/ansible: -i inventories/staging playbooks/backup.yml\n"
        res = host.run("logrotate -f /etc/logrotate.d/keelson-backup")
        assert res.rc == 0, res.stderr
        assert host.file("/var/log/keelson/backup.log.1").exists
    finally:
        host.run("rm -f %s /var/log/keelson/backup.log*" % stub)
