"""The docker role rejects bad input at argument validation, before any task runs."""
from argspec import assert_rejected


def test_unknown_source_is_rejected():
    assert_rejected("docker", {"docker_source": "snap"}, "docker_source", "snap")


def test_wrong_type_is_rejected():
    assert_rejected("docker", {"docker_log_max_file": "several"}, "docker_log_max_file")


def test_address_pool_without_size_is_rejected():
    assert_rejected("docker", {"docker_default_address_pools": [{"base": "10.10.0.0/16"}]},
                    "size")


def test_login_without_password_is_rejected():
    assert_rejected("docker", {"docker_registry_logins": [{"registry": "r:5000", "username": "u"}]},
                    "password")
