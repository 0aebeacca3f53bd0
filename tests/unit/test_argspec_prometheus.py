"""Bad input to keelson.stack.prometheus fails in its checks (the argument spec, then the values
in tasks/validate.yml), before any task that could change a host."""
import pytest

from argspec import assert_rejected

SHARED = {"keelson_private_address": "10.0.0.51", "keelson_environment": "unit"}


@pytest.mark.parametrize("role_vars, fragments", [
    ({"prometheus_alertmanager_receivers": [{"name": "hook", "webhook_url": "ftp://hooks.example.com/x"}]},
     ['webhook_url "ftp://hooks.example.com/x" is not an http:// or https:// URL']),
    ({"prometheus_alertmanager_receivers": [{"name": "hook"}]}, ["receiver hook: needs one of webhook_url and email_to"]),
    ({"prometheus_alertmanager_receivers": [{"name": "mail", "email_to": "ops@example.com"}]},
     ["email_to needs prometheus_alertmanager_smtp.smarthost"]),
    ({"prometheus_alertmanager_receivers": [{"name": "a", "webhook_url": "https://h/1"},
                                            {"name": "a", "webhook_url": "https://h/2"}]}, ["each name once"]),
    ({"prometheus_alertmanager_route": {"receiver": "pager"}}, ['sends to ["pager"]']),
    ({"prometheus_alert_disk_used_percent": 120},
     ['prometheus_alert_disk_used_percent is "120"; it must be a number from 1 to 99']),
    ({"prometheus_alert_edge_5xx_ratio": 0}, ['prometheus_alert_edge_5xx_ratio is "0"']),
    ({"prometheus_alert_backup_max_age": "26 hours"},
     ['prometheus_alert_backup_max_age is "26 hours"; it must be a Prometheus duration']),
    ({"prometheus_alert_backup_max_age": "30m"}, ["from 1h to 365d"]),
    ({"prometheus_retention_size": "10 gigabytes"}, ["prometheus_retention_size is \"10 gigabytes\""]),
])
def test_bad_values_are_refused_with_the_setting_named(role_vars, fragments):
    assert_rejected("prometheus", {**SHARED, **role_vars}, *fragments, entry_point="validate")


def test_a_receiver_of_the_wrong_type_is_refused_by_the_spec():
    assert_rejected("prometheus", {**SHARED, "prometheus_alertmanager_receivers": "https://hooks.example.com"},
                    "prometheus_alertmanager_receivers", "list")
