"""The redis role: private bind, protected mode, ACL users, no plaintext secrets on disk."""
import re
import shlex

import pytest


def variables(host):
    return host.ansible.get_variables()


def cli(host, *args, user=None, password=None, address="127.0.0.1"):
    """redis-cli output (stdout + stderr); the password goes through REDISCLI_AUTH."""
    env = f"REDISCLI_AUTH={shlex.quote(password)} " if password else ""
    who = f"--user {shlex.quote(user)} " if user else ""
    cmd = host.run(f"{env}redis-cli --no-auth-warning -h {address} {who}"
                   + " ".join(shlex.quote(a) for a in args))
    return (cmd.stdout + cmd.stderr).strip()


def app(host):
    user = variables(host)["redis_users"][0]
    return {"user": user["name"], "password": user["password"]}


def admin(host):
    return {"user": "keelson-admin", "password": variables(host)["redis_admin_password"]}


def test_server_runs_the_release_version(host):
    assert host.service("redis-server").is_running
    assert host.service("redis-server").is_enabled
    version = host.check_output("redis-server --version")
    major = "7." if host.backend.get_hostname().endswith("debian12") else "8."
    assert f"v={major}" in version


def test_listens_on_private_address_and_loopback_only(host):
    private = host.ansible("setup", "filter=ansible_default_ipv4")["ansible_facts"][
        "ansible_default_ipv4"]["address"]
    assert host.socket(f"tcp://{private}:6379").is_listening
    assert host.socket("tcp://127.0.0.1:6379").is_listening
    assert not host.socket("tcp://0.0.0.0:6379").is_listening


@pytest.mark.parametrize("address", ["127.0.0.1", "private"])
def test_unauthenticated_ping_gets_noauth(host, address):
    if address == "private":
        address = host.ansible("setup", "filter=ansible_default_ipv4")["ansible_facts"][
            "ansible_default_ipv4"]["address"]
    assert cli(host, "PING", address=address).startswith("NOAUTH")


def test_app_user_sets_and_gets(host):
    assert cli(host, "SET", "keelson:probe", "42", **app(host)) == "OK"
    assert cli(host, "GET", "keelson:probe", **app(host)) == "42"


@pytest.mark.parametrize("command", [["FLUSHALL"], ["CONFIG", "GET", "maxmemory"], ["KEYS", "*"],
                                     ["SHUTDOWN"], ["ACL", "LIST"]])
def test_app_user_is_denied_dangerous_commands(host, command):
    assert cli(host, *command, **app(host)).startswith("NOPERM")
    assert cli(host, "GET", "keelson:probe", **app(host)) == "42"


def test_wrong_password_is_refused(host):
    out = cli(host, "PING", user=app(host)["user"], password="not-the-password")
    assert "WRONGPASS" in out and "PONG" not in out


def test_default_user_is_disabled_or_password_protected(host):
    acl = cli(host, "ACL", "GETUSER", "default", **admin(host))
    password = variables(host).get("redis_default_user_password")
    if password:
        assert "on" in acl.split("\n")[acl.split("\n").index("flags") + 1:][0].split()
        assert cli(host, "PING", user="default", password=password) == "PONG"
    else:
        assert acl.split("\n")[acl.split("\n").index("flags") + 1] == "off"


def test_memory_and_persistence_settings(host):
    def setting(name):
        return cli(host, "CONFIG", "GET", name, **admin(host)).split("\n")[1]
    assert setting("maxmemory") == str(64 * 1024 * 1024)
    assert setting("maxmemory-policy") == "allkeys-lru"
    assert setting("appendonly") == "yes"
    assert setting("protected-mode") == "yes"


def test_files_are_private_to_redis_and_hold_no_plaintext_password(host):
    secrets = [app(host)["password"], admin(host)["password"]]
    for path in ["/etc/redis/users.acl", "/etc/redis/redis.conf"]:
        f = host.file(path)
        assert (f.user, f.group, f.mode) == ("redis", "redis", 0o640)
        assert not any(secret in f.content_string for secret in secrets)
    # Commands are withheld by ACL category, never renamed.
    assert not re.search(r"^\s*rename-command", host.file("/etc/redis/redis.conf").content_string,
                         re.MULTILINE)


# The Redis exporter (keelson.stack.monitoring) and its user (this role's).
EXPORTER = "keelson-exporter"


def exporter(host):
    return {"user": EXPORTER, "password": variables(host)["redis_exporter_password"]}


def private_address(host):
    return host.ansible("setup", "filter=ansible_default_ipv4")["ansible_facts"]["ansible_default_ipv4"]["address"]


def metrics(host):
    res = host.run("python3 -c %s", "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen("
                   f"'http://{private_address(host)}:9121/metrics', timeout=20).read().decode())")
    assert res.rc == 0, res.stderr
    return res.stdout.splitlines()


def test_exporter_runs_and_listens_on_the_private_address_only(host):
    service = host.service("prometheus-redis-exporter")
    assert service.is_running and service.is_enabled
    assert host.socket(f"tcp://{private_address(host)}:9121").is_listening
    for other in ("0.0.0.0", "127.0.0.1", "::"):
        assert not host.socket(f"tcp://{other}:9121").is_listening


def test_exporter_scrapes_redis_with_its_user_and_no_permission_error(host):
    assert cli(host, "ACL", "LOG", "RESET", **admin(host)) == "OK"
    assert cli(host, "CONFIG", "RESETSTAT", **admin(host)) == "OK"
    metrics(host)
    lines = metrics(host)
    assert "redis_up 1" in lines
    assert 'redis_exporter_last_scrape_error{err=""} 0' in lines
    assert any(line.startswith("redis_memory_used_bytes ") for line in lines)
    max_bytes = [float(line.split()[1]) for line in lines if line.startswith("redis_memory_max_bytes ")]
    assert max_bytes == [64 * 1024 * 1024]
    # every command of both scrapes was allowed and known: no ACL denial, no error reply at all
    assert cli(host, "ACL", "LOG", **admin(host)) == ""
    assert cli(host, "INFO", "errorstats", **admin(host)).splitlines() == ["# Errorstats"]


def test_exporter_user_reads_no_key_and_runs_no_other_command(host):
    assert cli(host, "INFO", "memory", **exporter(host)).startswith("# Memory")
    for command in (["GET", "keelson:probe"], ["SET", "keelson:probe", "0"], ["KEYS", "*"],
                    ["CONFIG", "SET", "maxmemory", "0"], ["ACL", "LIST"], ["FLUSHALL"]):
        assert cli(host, *command, **exporter(host)).startswith("NOPERM"), command
    assert cli(host, "GET", "keelson:probe", **app(host)) == "42"


def test_exporter_password_is_in_no_command_line_log_or_readable_file(host):
    password = exporter(host)["password"]
    assert password not in host.check_output("ps -eo args")
    assert password not in host.check_output("systemctl cat prometheus-redis-exporter")
    invocation = host.check_output("systemctl show -p InvocationID --value prometheus-redis-exporter")
    log = host.check_output(f"journalctl -o cat _SYSTEMD_INVOCATION_ID={invocation}")
    assert password not in log
    assert "level=error" not in log.lower(), log
    settings = host.file("/etc/default/prometheus-redis-exporter")
    assert (settings.user, settings.group, settings.mode) == ("root", "root", 0o600)
    assert password not in host.file("/etc/redis/users.acl").content_string
