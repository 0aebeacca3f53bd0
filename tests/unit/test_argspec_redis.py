"""The redis role rejects bad input at argument validation, before any task runs."""
from argspec import assert_rejected, run_role

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


# A db host with a monitor host in the inventory runs the Redis exporter (keelson.stack.monitoring).
EXPORTER_HOST = {"groups": ("db", "monitor")}


def test_missing_exporter_password_is_rejected_where_the_exporter_runs():
    for entry_point in ("main", "validate"):
        assert_rejected("redis", VALID, "redis_exporter_password is required on nowhere",
                        entry_point=entry_point, **EXPORTER_HOST)


def test_exporter_password_is_not_required_where_redis_is_off():
    rc, out = run_role("redis", VALID, "validate", groups=("db", "monitor"), host_vars={"redis_enabled": "false"})
    assert rc == 0, out


def test_exporter_needs_loopback_and_a_user_of_its_own():
    assert_rejected("redis",
                    {**VALID, "redis_exporter_password": "argspec-only", "redis_exporter_user": "app",
                     "redis_bind_addresses": ["10.0.0.5"], "redis_users": [{"name": "app", "password": "x"}]},
                    "redis_bind_addresses must include 127.0.0.1",
                    "redis_exporter_user app is also the admin, default or an application user",
                    entry_point="validate", **EXPORTER_HOST)
