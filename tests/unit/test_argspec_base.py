"""keelson.stack.base rejects bad input at argument validation, before any task runs."""
from argspec import assert_rejected

ADMIN = {"keelson_admin_networks": ["10.0.0.0/8"]}


def test_wrong_type_is_rejected():
    assert_rejected("base", {**ADMIN, "base_sshd_max_auth_tries": "three"},
                    "base_sshd_max_auth_tries", "unable to convert to int")


def test_unknown_choice_is_rejected():
    assert_rejected("base", {**ADMIN, "base_sshd_permit_root_login": "yes"},
                    "base_sshd_permit_root_login must be one of", "got: yes")


def test_unknown_sudo_mode_of_a_user_is_rejected():
    users = [{"name": "deploy", "sudo": "everything"}]
    assert_rejected("base", {**ADMIN, "base_users": users},
                    "value of sudo must be one of: none, all, commands, got: everything")


def test_limited_sudo_without_commands_is_rejected():
    users = [{"name": "operator", "sudo": "commands"}]
    assert_rejected("base", {**ADMIN, "base_users": users},
                    "sudo is commands but all of the following are missing: sudo_commands")


def test_wrong_type_in_a_firewall_rule_is_rejected():
    rules = [{"comment": "exporter", "ports": ["nine thousand"], "sources": ["10.0.0.0/8"]}]
    assert_rejected("base", {**ADMIN, "base_firewall_allow": rules},
                    "'ports' found in 'base_firewall_allow'", "unable to convert to int")
