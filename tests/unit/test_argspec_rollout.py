"""The rollout role refuses bad settings before any host changes: wrong types at
argument validation, and the rules against the stack (the rolled service exists and
publishes ports, every batch holds a host) in the assert that follows it, which
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


def test_the_service_must_be_a_published_service_of_the_stack_and_batches_hold_hosts():
    rejected_by_the_check({"rollout_service": "apii", "rollout_serial": [1, 0, "0%"]},
                          "rollout_service: apii is not a service of compose_stack_services (web, api, worker)",
                          "not 0, '0%'")
    rejected_by_the_check({"rollout_service": "worker"},
                          "rollout_service: worker publishes no ports", "(services that publish ports: web, api)")


def test_a_stack_without_published_services_has_nothing_to_roll():
    rejected_by_the_check({"compose_stack_services": [SERVICES[2]]},
                          "rollout_service: the stack has no service that publishes ports (services: worker)")
