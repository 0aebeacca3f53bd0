"""The compose_stack role rejects a bad stack before any task touches the host: the
shape at argument validation, the cross-field rules in the first (local) task."""
from argspec import assert_rejected, run_role

API = {"name": "api", "image": "reg:5000/demo-api", "tag": "1.0.0", "replicas": 2,
       "ports": [{"published": 8001, "target": 8000}]}


def stack(*services, **extra):
    return dict({"compose_stack_project": "demo", "compose_stack_bind_address": "10.0.0.5",
                 "compose_stack_services": list(services) or [API]}, **extra)


def test_unknown_service_key_is_rejected():
    assert_rejected("compose_stack", stack(dict(API, replica=3)), "replica", "compose_stack_services")


def test_wrong_type_is_rejected():
    assert_rejected("compose_stack", stack(dict(API, replicas="two")), "replicas")


def test_unknown_port_key_is_rejected():
    bad = dict(API, ports=[{"published": 8001, "target": 8000, "hostip": "10.0.0.5"}])
    assert_rejected("compose_stack", stack(bad), "hostip")


def test_tag_and_digest_together_are_rejected():
    assert_rejected("compose_stack", stack(dict(API, digest="sha256:" + "0" * 64)), "tag", "digest")


def test_unknown_image_source_is_rejected():
    assert_rejected("compose_stack", stack(compose_stack_image_source="ftp"), "compose_stack_image_source")


def test_port_collision_fails_in_the_first_task_with_a_clear_message():
    admin = {"name": "admin", "image": "reg:5000/admin", "tag": "1", "ports": [{"published": 8002, "target": 80}]}
    rc, out = run_role("compose_stack", stack(API, admin))
    assert rc != 0, out
    assert "Check the stack definition and render the Compose document" in out, out
    assert "port collision: admin and api-2 both publish tcp port 8002" in out, out
    assert "UNREACHABLE" not in out, "the role went past validation:\n" + out


def test_valid_stack_passes_validation_and_reaches_the_host():
    # The control: the same runner with a valid stack gets past both checks and only
    # then fails, because the host does not exist.
    rc, out = run_role("compose_stack", stack())
    assert rc != 0 and "UNREACHABLE" in out, out


def test_interpolate_must_be_a_boolean():
    assert_rejected("compose_stack", stack(dict(API, interpolate="sometimes")), "interpolate")
