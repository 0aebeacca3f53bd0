"""The redis role rejects bad input at argument validation, before any task runs."""
from argspec import assert_rejected

VALID = {"redis_admin_password": "argspec-only"}


def test_unknown_eviction_policy_is_rejected():
    assert_rejected("redis", dict(VALID, redis_maxmemory_policy="allkeys-fifo"),
                    "redis_maxmemory_policy", "allkeys-fifo")


def test_wrong_type_is_rejected():
    assert_rejected("redis", dict(VALID, redis_port="six-three-seven-nine"), "redis_port")


def test_missing_admin_password_is_rejected():
    assert_rejected("redis", {}, "redis_admin_password")


def test_user_without_password_is_rejected():
    assert_rejected("redis", dict(VALID, redis_users=[{"name": "app"}]), "password")


def test_enabled_switch_must_be_a_boolean():
    assert_rejected("redis", {**VALID, "redis_enabled": "maybe"}, "redis_enabled")
