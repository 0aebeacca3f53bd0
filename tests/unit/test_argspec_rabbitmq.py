"""Bad input to keelson.stack.rabbitmq fails at argument validation."""
from argspec import assert_rejected

# keelson_private_address comes from group_vars/all in a real inventory.
SHARED = {"keelson_private_address": "10.0.0.5"}


def test_unknown_queue_type_is_rejected():
    assert_rejected("rabbitmq", {**SHARED, "rabbitmq_default_queue_type": "stream"},
                    "rabbitmq_default_queue_type", "quorum, classic")


def test_non_boolean_management_flag_is_rejected():
    assert_rejected("rabbitmq", {**SHARED, "rabbitmq_management_enabled": "sometimes"},
                    "rabbitmq_management_enabled", "bool")


def test_user_without_name_is_rejected():
    assert_rejected("rabbitmq", {**SHARED, "rabbitmq_users": [{"password": "x"}]}, "name")


def test_permission_without_vhost_is_rejected():
    assert_rejected("rabbitmq",
                    {**SHARED, "rabbitmq_users": [{"name": "app", "permissions": [{"read_priv": ".*"}]}]},
                    "vhost")


def test_enabled_switch_must_be_a_boolean():
    assert_rejected("rabbitmq", {**SHARED, "rabbitmq_enabled": "maybe"}, "rabbitmq_enabled")
