"""The postgresql scenario: each database server admits the app host with its
password over scram-sha-256 and turns everyone else away.

Tests run on the db instances; logins are tried from the app and outsider
instances. Passwords reach the clients in a 0600 passfile written through an
Ansible module (not a command line), so they never show in a process list."""
import json

import pytest
import testinfra

testinfra_hosts = ["db"]

APP = "postgresql-app"
OUTSIDER = "postgresql-outsider"


@pytest.fixture(scope="module")
def peer(request):
    inventory = request.config.option.ansible_inventory

    def get(name):
        return testinfra.get_host(f"ansible://{name}?ansible_inventory={inventory}")
    return get


@pytest.fixture(scope="module")
def address(host):
    return host.ansible("setup", "filter=ansible_default_ipv4")["ansible_facts"][
        "ansible_default_ipv4"]["address"]


@pytest.fixture(scope="module")
def passwords(host):
    return {u["name"]: u["password"] for u in host.ansible.get_variables()["postgresql_users"]}


def sql(host, query, database="postgres"):
    res = host.run("runuser -u postgres -- psql -XAtq -d %s -c %s", database, query)
    assert res.rc == 0, res.stderr
    return res.stdout.strip()


def login(client, server_address, user, password, database="app", query="SELECT current_user"):
    """psql over TCP from `client` with a passfile; returns the command result."""
    passfile = f"/root/.pgpass-{server_address}-{user}"
    client.ansible("copy", json.dumps({
        "dest": passfile, "mode": "0600",
        "content": f"{server_address}:5432:*:{user}:{password}\n"}), check=False)
    return client.run(
        "PGPASSFILE=%s PGCONNECT_TIMEOUT=10 psql -XAtq -w "
        "-h %s -U %s -d %s -c %s", passfile, server_address, user, database, query)


def test_password_encryption_is_scram(host):
    assert sql(host, "SHOW password_encryption") == "scram-sha-256"


def test_passwords_are_stored_as_scram(host):
    stored = sql(host, "SELECT rolname || ' ' || left(rolpassword, 13) FROM pg_authid "
                       "WHERE rolname IN ('app', 'reporting') ORDER BY 1")
    assert stored.splitlines() == ["app SCRAM-SHA-256", "reporting SCRAM-SHA-256"]


def test_hba_admits_postgres_by_peer_the_exporter_on_loopback_and_the_app_host_by_scram_only(host, peer):
    app_address = peer(APP).ansible("setup", "filter=ansible_default_ipv4")[
        "ansible_facts"]["ansible_default_ipv4"]["address"]
    rules = sql(host, "SELECT type, array_to_string(database, ','), array_to_string(user_name, ','), "
                      "coalesce(address, ''), coalesce(netmask, ''), auth_method, coalesce(error, '') "
                      "FROM pg_hba_file_rules ORDER BY line_number")
    assert rules.splitlines() == [
        "local|all|postgres|||peer|",
        "host|postgres|keelson_exporter|127.0.0.1|255.255.255.255|scram-sha-256|",
        f"host|all|all|{app_address}|255.255.255.255|scram-sha-256|",
    ]
    hba = host.file(f"/etc/postgresql/{sql(host, 'SHOW server_version_num')[:2]}/main/pg_hba.conf")
    assert hba.user == "postgres" and hba.mode == 0o640
    for word in ("trust", "md5", "password ", "ident"):
        assert word not in hba.content_string


def test_listens_on_loopback_and_private_address_only(host, address):
    assert host.socket("tcp://127.0.0.1:5432").is_listening
    assert host.socket(f"tcp://{address}:5432").is_listening
    assert not host.socket("tcp://0.0.0.0:5432").is_listening


def test_memory_tuning_applied_without_pending_restart(host):
    memtotal = host.ansible("setup", "filter=ansible_memtotal_mb")["ansible_facts"][
        "ansible_memtotal_mb"]
    # the scenario caps shared_buffers at 256 MB
    assert sql(host, "SHOW shared_buffers") == f"{min(memtotal // 4, 256)}MB"
    assert sql(host, "SELECT setting FROM pg_settings WHERE name = 'effective_cache_size'") \
        == str(int(memtotal * 0.75) * 1024 // 8)  # in 8 kB pages
    assert sql(host, "SELECT count(*) FROM pg_settings WHERE pending_restart") == "0"


def test_app_host_logs_in_with_its_password(host, peer, address, passwords):
    res = login(peer(APP), address, "app", passwords["app"])
    assert res.rc == 0, res.stderr
    assert res.stdout.strip() == "app"


def test_wrong_password_is_refused(host, peer, address):
    res = login(peer(APP), address, "app", "not-the-password")
    assert res.rc != 0
    assert 'password authentication failed for user "app"' in res.stderr


def test_outsider_is_refused_by_pg_hba(host, peer, address, passwords):
    outsider = peer(OUTSIDER)
    res = login(outsider, address, "app", passwords["app"])
    assert res.rc != 0
    assert "no pg_hba.conf entry for host" in res.stderr


def test_db_host_itself_is_refused_over_tcp(host, address, passwords):
    res = login(host, address, "app", passwords["app"])
    assert res.rc != 0
    assert f'no pg_hba.conf entry for host "{address}"' in res.stderr


def test_database_owned_by_app_and_closed_to_public(host, peer, address, passwords):
    assert sql(host, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'app'") == "app"
    assert sql(host, "SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'jobs'",
               database="app") == "app"
    assert sql(host, "SELECT has_database_privilege('public', 'app', 'CONNECT')") == "f"
    res = login(peer(APP), address, "reporting", passwords["reporting"],
                query="SELECT has_schema_privilege('jobs', 'USAGE')")
    assert res.rc == 0, res.stderr
    assert res.stdout.strip() == "t"


# The PostgreSQL exporter (keelson.stack.monitoring) and its login (this role's).
MONITOR = OUTSIDER
EXPORTER = "keelson_exporter"


def metrics(client, address, port):
    """The exporter's /metrics as `client` reads it over the network."""
    res = client.run("python3 -c %s", "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen("
                     f"'http://{address}:{port}/metrics', timeout=20).read().decode())")
    assert res.rc == 0, res.stderr
    return res.stdout


def exporter_password(host):
    return host.ansible.get_variables()["postgresql_exporter_password"]


def test_exporter_runs_and_listens_on_the_private_address_only(host, address):
    service = host.service("prometheus-postgres-exporter")
    assert service.is_running and service.is_enabled
    assert host.socket(f"tcp://{address}:9187").is_listening
    for other in ("0.0.0.0", "127.0.0.1", "::"):
        assert not host.socket(f"tcp://{other}:9187").is_listening


def test_monitor_host_reads_pg_up_and_the_metrics_the_alerts_use(peer, address):
    lines = metrics(peer(MONITOR), address, 9187).splitlines()
    assert "pg_up 1" in lines
    assert "pg_exporter_last_scrape_error 0" in lines
    assert any(line.startswith("pg_stat_activity_count{") for line in lines)
    assert any(line.startswith("pg_settings_max_connections{") and line.endswith(" 100") for line in lines)


def test_exporter_logs_in_from_loopback_as_a_pg_monitor_member_and_nothing_more(host, peer, address):
    metrics(peer(MONITOR), address, 9187)  # a scrape keeps its connection open
    assert sql(host, "SELECT DISTINCT client_addr FROM pg_stat_activity "
                     f"WHERE usename = '{EXPORTER}'") == "127.0.0.1"
    assert sql(host, "SELECT rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls, "
                     f"left(rolpassword, 13) FROM pg_authid WHERE rolname = '{EXPORTER}'") \
        == "t|f|f|f|f|f|SCRAM-SHA-256"
    assert sql(host, "SELECT string_agg(g.rolname, ',') FROM pg_auth_members m "
                     "JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles r ON r.oid = m.member "
                     f"WHERE r.rolname = '{EXPORTER}'") == "pg_monitor"


def test_exporter_login_is_refused_over_the_network(host, address):
    password = exporter_password(host).replace("\\", "\\\\").replace(":", "\\:")
    res = login(host, address, EXPORTER, password, database="postgres")
    assert res.rc != 0
    assert f'no pg_hba.conf entry for host "{address}", user "{EXPORTER}"' in res.stderr


def test_exporter_password_is_in_no_command_line_log_or_readable_file(host):
    password = exporter_password(host)
    assert password not in host.check_output("ps -eo args")
    assert password not in host.check_output("systemctl cat prometheus-postgres-exporter")
    invocation = host.check_output("systemctl show -p InvocationID --value prometheus-postgres-exporter")
    log = host.check_output(f"journalctl -o cat _SYSTEMD_INVOCATION_ID={invocation}")
    assert password not in log
    assert "level=error" not in log.lower(), log
    settings = host.file("/etc/default/prometheus-postgres-exporter")
    assert (settings.user, settings.group, settings.mode) == ("root", "root", 0o600)
