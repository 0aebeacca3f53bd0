"""The backup role's result on each instance."""


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
        "15 */6 * * * root cd /opt/keelson/ansible && /opt/keelson/venv/bin/ansible-playbook -i inventories/staging "
        "playbooks/backup.yml >> /var/log/keelson/backup.log 2>&1",
        "45 5 * * * root cd /opt/keelson/ansible && /opt/keelson/venv/bin/ansible-playbook -i inventories/staging "
        "playbooks/verify_backups.yml >> /var/log/keelson/verify.log 2>&1",
    ]


def test_logrotate_config_is_valid(host):
    assert host.file("/var/log/keelson").mode == 0o750
    res = host.run("logrotate --debug /etc/logrotate.d/keelson-backup")
    assert res.rc == 0, res.stderr
    assert "/var/log/keelson/backup.log" in res.stderr + res.stdout
