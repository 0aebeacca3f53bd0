"""Bad input to keelson.stack.monitoring fails before any task that could change a host."""
import pytest

from argspec import assert_rejected

SHARED = {"keelson_private_address": "10.0.0.21", "keelson_environment": "unit"}


def test_exporters_without_a_monitor_host_to_scrape_them_are_refused():
    # the probe's inventory has one host and no group `monitor`
    assert_rejected("monitoring", SHARED, "monitoring_enabled is true on nowhere but the inventory has no host in group "
                    "monitor", entry_point="validate")


def test_the_switch_must_be_a_boolean():
    assert_rejected("monitoring", {**SHARED, "monitoring_enabled": "sometimes"}, "monitoring_enabled")


def test_histogram_buckets_must_be_numbers():
    assert_rejected("monitoring", {**SHARED, "monitoring_edge_buckets": [0.1, "fast", 1]},
                    "monitoring_edge_buckets", "float")


@pytest.mark.parametrize("buckets", [[0.5, 0.1, 1], [0, 1], [0.1, 0.1, 1], []])
def test_histogram_buckets_must_be_positive_and_increasing(buckets):
    assert_rejected("monitoring", {**SHARED, "monitoring_edge_buckets": buckets},
                    "monitoring_edge_buckets must be positive and increasing", entry_point="validate",
                    groups=["lb", "monitor"])
