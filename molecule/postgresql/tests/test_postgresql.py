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


def test_hba_admits_postgres_by_peer_and_the_app_host_by_scram_only(host, peer):
    app_address = peer(APP).ansible("setup", "filter=ansible_default_ipv4")[
        "ansible_facts"]["ansible_default_ipv4"]["address"]
    rules = sql(host, "SELECT type, array_to_string(user_name, ','), coalesce(address, ''), "
                      "coalesce(netmask, ''), auth_method, coalesce(error, '') "
                      "FROM pg_hba_file_rules ORDER BY line_number")
    assert rules.splitlines() == [
        "local|postgres|||peer|",
        f"host|all|{app_address}|255.255.255.255|scram-sha-256|",
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
