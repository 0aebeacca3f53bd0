"""Bad input to keelson.stack.postgresql fails at argument validation."""
from argspec import assert_rejected

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
