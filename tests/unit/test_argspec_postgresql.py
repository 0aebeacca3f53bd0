"""Bad input to keelson.stack.postgresql fails at argument validation."""
from argspec import assert_rejected, run_role

# keelson_private_address comes from group_vars/all in a real inventory.
SHARED = {"keelson_private_address": "10.0.0.5"}


def test_unknown_source_is_rejected():
    assert_rejected("postgresql", {**SHARED, "postgresql_source": "ubuntu"},
                    "postgresql_source", "debian, pgdg")


def test_non_integer_max_connections_is_rejected():
    assert_rejected("postgresql", {**SHARED, "postgresql_max_connections": "many"},
                    "postgresql_max_connections", "int")


def test_md5_in_extra_hba_lines_is_rejected():
    assert_rejected("postgresql",
                    {**SHARED, "postgresql_hba_extra": [{"address": "10.0.0.0/8", "method": "md5"}]},
                    "method", "scram-sha-256, peer, cert, reject")


def test_trust_in_extra_hba_lines_is_rejected():
    assert_rejected("postgresql",
                    {**SHARED, "postgresql_hba_extra": [{"type": "local", "method": "trust"}]},
                    "method")


def test_database_without_name_is_rejected():
    assert_rejected("postgresql", {**SHARED, "postgresql_databases": [{"owner": "app"}]},
                    "name")


def test_enabled_switch_must_be_a_boolean():
    assert_rejected("postgresql", {**SHARED, "postgresql_enabled": "maybe"}, "postgresql_enabled")


# A db host with a monitor host in the inventory runs the PostgreSQL exporter (keelson.stack.monitoring).
EXPORTER_HOST = {"groups": ("db", "monitor")}


def test_missing_exporter_password_is_rejected_where_the_exporter_runs():
    for entry_point in ("main", "validate"):
        assert_rejected("postgresql", SHARED, "postgresql_exporter_password is required on nowhere",
                        entry_point=entry_point, **EXPORTER_HOST)


def test_exporter_password_is_not_required_where_monitoring_is_off():
    rc, out = run_role("postgresql", SHARED, "validate", groups=("db", "monitor"),
                       host_vars={"monitoring_enabled": "false"})
    assert rc == 0, out


def test_exporter_needs_loopback_and_a_login_of_its_own():
    assert_rejected("postgresql",
                    {**SHARED, "postgresql_exporter_password": "argspec-only",
                     "postgresql_listen_addresses": ["10.0.0.5"],
                     "postgresql_users": [{"name": "keelson_exporter", "password": "x"}]},
                    "postgresql_listen_addresses must include localhost",
                    "postgresql_exporter_user keelson_exporter is also in postgresql_users",
                    entry_point="validate", **EXPORTER_HOST)
