"""inventories/staging, the worked example, as site.yml would see it: every role's
argument spec per group (with the example vault and its documented password), the
nginx role's own checks, the stack's cross-field rules, tags that follow app_version
and docker_source per Debian release (tests/unit/playbooks/staging_validate.yml).
No host is contacted."""
import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STAGING = ROOT / "inventories" / "staging"
PASSWORD = STAGING / "vault-password.example.txt"


def validate(inventory, *extra):
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    res = subprocess.run(["ansible-playbook", str(ROOT / "tests/unit/playbooks/staging_validate.yml"),
                          "-i", str(inventory), "--vault-id", f"staging@{PASSWORD}", *extra],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return res.returncode, res.stdout + res.stderr


def test_the_example_passes_every_check_and_its_tags_follow_app_version():
    # the play asserts every tag == app_version (a literal tag would fail here)
    rc, out = validate(STAGING, "-e", "app_version=2.5.0")
    assert rc == 0, out[-6000:]
    for host in ("lb1", "app1", "app2", "db1", "mon1"):
        assert f"{host}.staging.example.com" in out
    # the inventory's rollout settings, not a play's: what deploy.yml would roll per host, the
    # port-less services included (the scheduler is placed on the first app host only)
    text = " ".join(out.split())  # the YAML callback folds long messages
    assert ("'rollout on app1.staging.example.com: frontend-1, frontend-2, api-gateway-1, api-gateway-2, "
            "worker-1, worker-2, scheduler'") in text, out[-6000:]
    assert ("'rollout on app2.staging.example.com: frontend-1, frontend-2, api-gateway-1, api-gateway-2, "
            "worker-1, worker-2'") in text, out[-6000:]


def test_the_check_catches_what_a_new_user_hit(tmp_path):
    """Without the db vars, the example fails as the issue reported it."""
    copy = tmp_path / "staging"
    shutil.copytree(STAGING, copy)
    (copy / "group_vars" / "db.yml").unlink()
    rc, out = validate(copy)
    assert rc != 0 and "missing required arguments: redis_admin_password" in out, out[-6000:]


def test_the_vault_password_file_is_not_an_inventory_source():
    res = subprocess.run(["ansible-inventory", "-i", str(STAGING), "--graph"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, env=dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg")))
    assert res.returncode == 0, res.stderr
    assert "keelson-staging-example-only-not-a-secret" not in res.stdout


def test_rollout_settings_come_from_the_inventory_and_are_checked(tmp_path):
    """The inventory narrows what is rolled; an unknown service and a batch of 0 hosts are
    refused, both named in one message, before any host is contacted."""
    copy = tmp_path / "staging"
    shutil.copytree(STAGING, copy)
    rollout = copy / "group_vars" / "app" / "rollout.yml"
    rollout.write_text("rollout_services: [api-gateway, worker]\n")
    rc, out = validate(copy)
    assert rc == 0, out[-6000:]
    assert "'rollout on app1.staging.example.com: api-gateway-1, api-gateway-2, worker-1, worker-2'" in " ".join(
        out.split()), out[-6000:]
    rollout.write_text("rollout_services: [api-gateway, workers]\nrollout_serial: [0]\n")
    rc, out = validate(copy)
    assert rc != 0, out[-6000:]
    assert "rollout_services: workers is not a service of compose_stack_services" in out, out[-6000:]
    assert "rollout_serial: every batch size must be a number of hosts or a percentage above 0, not 0" in out
