"""playbooks/logs.yml's merge: `docker logs --timestamps` lines of several replicas on several hosts as one timeline."""
import pytest

from ansible_collections.keelson.stack.plugins.module_utils.service_logs import (
    merge, settings_errors, since_errors, sources_from, stamp_key)

# As `docker logs --timestamps` prints them: RFC 3339 in UTC, the fraction's trailing zeros dropped.
APP1_API1 = [
    "2026-12-07T04:31:20.100000002Z 2026-12-07T04:31:20 demo[api-1] serving 1.1.0 on :8000",
    "2026-12-07T04:31:21.5Z 2026-12-07T04:31:21 demo[api-1] GET /health 200",
    "2026-12-07T04:31:22.05Z 2026-12-07T04:31:22 demo[api-1] POST /items 201",
]
APP2_API1 = [
    "2026-12-07T04:31:21.49Z 2026-12-07T04:31:21 demo[api-1] serving 1.1.0 on :8000",
    "2026-12-07T04:31:22.1Z Traceback (most recent call last):",
    "  File \"/app/demo.py\", line 300, in do_GET",  # a line docker printed without a stamp
    "2026-12-07T05:31:22.2+01:00 2026-12-07T04:31:22 demo[api-1] GET /items/7 500",
]


def test_lines_are_ordered_by_time_not_text_and_prefixed_by_host_and_replica():
    lines = merge([{"name": "app1/api-1", "lines": APP1_API1}, {"name": "app2/api-1", "lines": APP2_API1}])
    assert lines == [
        "app1/api-1 " + APP1_API1[0],
        "app2/api-1 " + APP2_API1[0],  # .49 before .5
        "app1/api-1 " + APP1_API1[1],
        "app1/api-1 " + APP1_API1[2],  # .05 before .1, though "05" sorts after "1Z" as text
        "app2/api-1 " + APP2_API1[1],
        "app2/api-1 " + APP2_API1[2],  # stays under the line it continues
        "app2/api-1 " + APP2_API1[3],  # 05:31:22.2+01:00 is 04:31:22.2Z
    ]
    assert merge([{"name": "a", "lines": APP1_API1}, {"name": "b", "lines": APP2_API1}], last=2) == [
        "b " + APP2_API1[2], "b " + APP2_API1[3]]


def test_stamp_key_reads_nanoseconds_and_offsets():
    assert stamp_key(APP1_API1[0]) == (1796617880, 100000002)
    assert stamp_key("2026-12-07T04:31:20Z x") == (1796617880, 0)
    assert stamp_key("2026-12-07T05:31:20+01:00 x") == (1796617880, 0)
    assert stamp_key("no stamp") is None


def test_sources_are_named_from_the_container_labels():
    results = [
        {"item": {"Labels": {"keelson.stack.service": "api", "keelson.stack.replica": "2"}},
         "stdout_lines": ["2026-12-07T04:31:20Z out"], "stderr_lines": ["2026-12-07T04:31:19Z err"]},
        {"item": {"Labels": {"keelson.stack.service": "scheduler"}}, "stdout_lines": [], "stderr_lines": []},
        {"skipped": True, "item": {"Labels": {}}},
    ]
    assert sources_from("app1", results) == [
        {"name": "app1/api-2", "lines": ["2026-12-07T04:31:20Z out", "2026-12-07T04:31:19Z err"]},
        {"name": "app1/scheduler", "lines": []}]


@pytest.mark.parametrize("since", ["", "10m", "1h30m", "90s", "1.5h", "1796617880", "2026-12-07",
                                   "2026-12-07T03:00:00Z", "2026-12-07T03:00", "2026-12-07T03:00:00.5+01:00"])
def test_since_takes_what_docker_logs_takes(since):
    assert since_errors(since) == []


@pytest.mark.parametrize("since", ["ten minutes", "10 m", "yesterday", "10d", "-5m", "2026-12-07 03:00"])
def test_since_refuses_the_rest_naming_the_setting(since):
    assert since_errors(since) == [
        "compose_stack_logs_since: %r is not a duration (10m, 1h30m), a Unix time or an RFC 3339 time "
        "(2026-12-07T03:00:00Z)" % since]


def test_settings_errors_name_each_variable_before_anything_runs():
    stack = {"services": [{"name": "api"}, {"name": "worker"}]}
    assert settings_errors(stack, "worker", "30m", 100) == []
    assert settings_errors(stack, "apii", "yesterday", "0") == [
        "compose_stack_logs_service: service 'apii' is not in compose_stack_services (there: api, worker)",
        "compose_stack_logs_lines: 0 is not a number of lines (1 or more)",
        "compose_stack_logs_since: 'yesterday' is not a duration (10m, 1h30m), a Unix time or an RFC 3339 time "
        "(2026-12-07T03:00:00Z)"]
