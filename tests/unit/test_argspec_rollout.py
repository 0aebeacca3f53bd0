"""The rollout role refuses bad settings before any host changes: wrong types at
argument validation, and the rules against the stack (the rolled services are services
of the stack, every batch holds a host) in the assert that follows it, which
runs on the controller (no UNREACHABLE)."""
from argspec import assert_rejected, run_role

SERVICES = [{"name": "web", "image": "r/web", "tag": "1", "ports": [{"published": 3001, "target": 3000}]},
            {"name": "api", "image": "r/api", "tag": "1", "ports": [{"published": 8001, "target": 8000}]},
            {"name": "worker", "image": "r/api", "tag": "1"}]
TIMES = ["rollout_gate_timeout", "rollout_gate_interval", "rollout_monitor_seconds", "rollout_lock_ttl"]


def rejected_by_the_check(role_vars, *fragments):
    rc, out = run_role("rollout", dict({"compose_stack_services": SERVICES}, **role_vars))
    assert rc != 0 and "Check the rollout settings against the stack" in out, out
    assert "UNREACHABLE" not in out, out
    for fragment in fragments:
        assert fragment in out, f"{fragment!r} not in:\n{out}"


def test_times_must_be_numbers():
    assert_rejected("rollout", {"compose_stack_services": SERVICES, **{name: "soon" for name in TIMES}}, *TIMES)


def test_the_services_must_be_services_of_the_stack_and_batches_hold_hosts():
    rejected_by_the_check({"rollout_services": ["api", "apii"], "rollout_serial": [1, 0, "0%"]},
                          "rollout_services: apii is not a service of compose_stack_services (web, api, worker)",
                          "not 0, '0%'")


def test_a_string_is_refused_with_the_list_to_give_instead():
    # -e rollout_services=api is a string, which the playbook would read letter by letter
    rejected_by_the_check({"rollout_services": "web, worker"},
                          """rollout_services: 'web, worker' is a string, and it must be a list""",
                          """-e '{"rollout_services": ["web", "worker"]}'""")
    rc, out = run_role("rollout", {"compose_stack_services": SERVICES, "rollout_services": ["web", "worker"]})
    assert rc == 0, out


def test_an_empty_stack_has_nothing_to_roll():
    rejected_by_the_check({"compose_stack_services": []}, "rollout_services: [] names no service (services: none)")
