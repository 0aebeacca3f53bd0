"""Release records and audit lines in a real directory; the plan against Ansible's own batching."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ansible.utils.helpers import pct_to_int
from ansible_collections.keelson.stack.plugins.module_utils.release import (
    append_audit, finish_record, interrupted_records, last_good_release, load_record, load_records, new_record, plan_lines,
    record_path, release_history, release_lines, roll_steps, rollback_target, rollout_plan, rollout_settings_errors,
    run_of, save_replica_step, serial_batches)

OLD = "172.30.77.42:5000/demo-api@sha256:" + "a" * 64
NEW = "172.30.77.42:5000/demo-api@sha256:" + "b" * 64


def step(name, outcome, old=OLD, new=NEW):
    return {"name": name, "port": 8000 + int(name[-1]), "old_image": "demo-api:1.0.0", "old_pinned": old,
            "new_image": "demo-api:1.1.0", "new_pinned": new, "outcome": outcome}


def test_record_lifecycle(tmp_path):
    releases = str(tmp_path)
    record = new_record("20270115T080000Z-deploy-app1", "shop", "api", "app1", "deploy", "ana@ctl", now=1800000000)
    save_replica_step(releases, record, step("api-1", "replacing"))
    on_disk = load_record(releases, record["id"])
    assert on_disk["outcome"] == "in_progress" and on_disk["replicas"][0]["outcome"] == "replacing"
    save_replica_step(releases, record, step("api-1", "replaced"))
    save_replica_step(releases, record, step("api-2", "replaced"))
    finish_record(releases, record, "succeeded", now=1800000090)
    on_disk = json.loads((tmp_path / (record["id"] + ".json")).read_text())
    assert [r["name"] for r in on_disk["replicas"]] == ["api-1", "api-2"]
    assert on_disk["started_at"] == "2027-01-15T08:00:00Z" and on_disk["finished_at"] == "2027-01-15T08:01:30Z"
    assert oct((tmp_path / (record["id"] + ".json")).stat().st_mode & 0o777) == "0o644"
    assert sorted(p.name for p in tmp_path.iterdir()) == [record["id"] + ".json"], "no temporary files left"
    with pytest.raises(ValueError):
        finish_record(releases, record, "fine")
    with pytest.raises(ValueError):
        record_path(releases, "../etc/passwd")


def test_last_good_release_skips_failures_and_foreign_files(tmp_path):
    releases = str(tmp_path)
    good = new_record("r1", "shop", "api", "app1", "deploy", "ana", now=1800000000)
    good["replicas"] = [step("api-1", "replaced", old="x", new=OLD), step("api-2", "replaced", old="x", new=OLD)]
    finish_record(releases, good, "succeeded")
    bad = new_record("r2", "shop", "api", "app1", "deploy", "ana", now=1800000100)
    bad["replicas"] = [step("api-1", "restored")]
    finish_record(releases, bad, "rolled_back", reason="api-1: deadline of 60s passed")
    (tmp_path / "compose-release-1.json").write_text(json.dumps({"images": {"api": "x"}}))
    (tmp_path / "broken.json").write_text("{not json")
    records = load_records(releases)
    assert [r["id"] for r in records] == ["r1", "r2"]
    assert last_good_release(records) == {"record": "r1", "finished_at": good["finished_at"],
                                          "images": {"api-1": OLD, "api-2": OLD}}
    assert last_good_release(records, exclude_id="r1") is None
    assert last_good_release(records, service="worker") is None


def test_a_rolled_back_replica_counts_its_old_image(tmp_path):
    record = new_record("r3", "shop", "api", "app1", "restart", "ana", now=1800000000)
    record["replicas"] = [step("api-1", "restored")]
    finish_record(str(tmp_path), record, "succeeded")
    assert last_good_release(load_records(str(tmp_path)))["images"] == {"api-1": OLD}


def test_rollback_target_walks_back_through_the_deploys(tmp_path):
    releases = str(tmp_path)

    def record(rid, at, action, outcome, replicas):
        r = new_record(rid, "shop", "api", "app1", action, "ana", now=at)
        r["replicas"] = replicas
        finish_record(releases, r, outcome)
        return r

    r1 = record("r1", 1800000000, "deploy", "succeeded", [step("api-1", "replaced", "v0", OLD),
                                                           step("api-2", "replaced", "v0", OLD)])
    r2 = record("r2", 1800000100, "deploy", "succeeded", [step("api-1", "replaced"), step("api-2", "replaced")])
    record("r3", 1800000200, "restart", "succeeded", [step("api-1", "replaced", NEW, NEW)])
    both = lambda ref: {"api-1": ref, "api-2": ref}  # noqa: E731
    # right after r2: back to what r2 replaced
    assert rollback_target(load_records(releases), both(NEW)) == {
        "record": "r2", "finished_at": r2["finished_at"], "images": both(OLD), "side": "before"}
    # after that rollback (its own record makes no release): one further back
    record("r4", 1800000300, "rollback", "succeeded", [step("api-1", "replaced", NEW, OLD),
                                                       step("api-2", "replaced", NEW, OLD)])
    assert rollback_target(load_records(releases), both(OLD))["images"] == both("v0")
    # a deploy killed half way (api-1 on BROKEN, api-2 still on NEW): back to what ran before it
    broken = NEW.replace("b", "c")
    record("r5", 1800000400, "deploy", "succeeded", [step("api-1", "replaced", OLD, NEW),
                                                     step("api-2", "replaced", OLD, NEW)])
    killed = new_record("r6", "shop", "api", "app1", "deploy", "ana", now=1800000500)
    save_replica_step(releases, killed, step("api-1", "replaced", NEW, broken))
    records = load_records(releases)
    assert rollback_target(records, {"api-1": broken, "api-2": NEW})["images"] == {"api-1": NEW}
    # an automatic rollback left NEW running: an explicit rollback goes back to OLD
    assert rollback_target(records, both(NEW)) == {
        "record": "r5", "finished_at": records[-2]["finished_at"], "images": both(OLD), "side": "before"}
    assert rollback_target(records, both(NEW), record_id="r1") == {
        "record": "r1", "finished_at": r1["finished_at"], "images": both(OLD), "side": "after"}
    assert rollback_target(records, both(NEW), service="worker") is None
    assert rollback_target([], both(NEW)) is None
    assert interrupted_records(records) == ["r6"] and interrupted_records(records, exclude_id="r6") == []


def test_the_release_history_names_each_run_newest_first_with_what_it_left(tmp_path):
    releases = str(tmp_path)
    deploy = new_record("20270115T080000Z-deploy-app1.example.com", "shop", "api", "app1", "deploy", "ana",
                        now=1800000000)
    deploy["replicas"] = [step("api-1", "replaced"), step("api-2", "replaced"), step("worker-1", "replaced")]
    finish_record(releases, deploy, "succeeded", now=1800000060)
    bad = new_record("20270116T080000Z-deploy-app1.example.com", "shop", "api", "app1", "deploy", "bo", now=1800086400)
    bad["replicas"] = [step("api-1", "restored")]
    finish_record(releases, bad, "rolled_back", reason="api-1: new image failed", now=1800086460)
    history = release_history(load_records(releases))
    assert [(h["release"], h["outcome"]) for h in history] == [
        ("20270116T080000Z-deploy", "rolled_back"), ("20270115T080000Z-deploy", "succeeded")]
    assert history[1]["images"] == {"api-1": NEW, "api-2": NEW, "worker-1": NEW}
    assert release_lines(history) == [
        "20270116T080000Z-deploy deploy rolled_back at 2027-01-16T08:01:00Z by bo -> %s: api-1 "
        "(api-1: new image failed)" % OLD,
        "20270115T080000Z-deploy deploy succeeded at 2027-01-15T08:01:00Z by ana -> %s: api-1, api-2, worker-1" % NEW]
    assert release_history(load_records(releases), limit=1)[0]["release"] == "20270116T080000Z-deploy"
    assert run_of("20270115T080000Z-rollback-app1") == "20270115T080000Z-rollback"
    assert run_of("converge-deploy") == "converge-deploy"


def test_audit_lines(tmp_path):
    log = tmp_path / "audit.log"
    append_audit(str(log), {"at": "2027-01-15T08:01:30Z", "action": "deploy", "outcome": "succeeded", "who": "ana"})
    append_audit(str(log), {"at": "2027-01-15T08:03:00Z", "action": "rollback", "outcome": "failed", "who": "bo"})
    lines = log.read_text().splitlines()
    assert [json.loads(line)["action"] for line in lines] == ["deploy", "rollback"]
    assert lines[0] == '{"action":"deploy","at":"2027-01-15T08:01:30Z","outcome":"succeeded","who":"ana"}'


def ansible_batches(hosts, serial):
    """Ansible's algorithm (playbook_executor._get_serialized_batches) with its own pct_to_int."""
    hosts, batches, i = list(hosts), [], 0
    total = len(hosts)
    while hosts:
        size = pct_to_int(serial[i], total)
        if size <= 0:
            batches.append(hosts)
            break
        batches.append(hosts[:size])
        hosts = hosts[size:]
        i = min(i + 1, len(serial) - 1)
    return batches


@pytest.mark.parametrize("serial", [[1, "50%"], [1], ["30%"], [1, 2], [2, "100%"], [0], ["10%", "50%"]])
@pytest.mark.parametrize("count", [1, 2, 5, 7])
def test_serial_batches_match_ansible(serial, count):
    hosts = ["app%d" % i for i in range(1, count + 1)]
    assert serial_batches(hosts, serial) == ansible_batches(hosts, serial)


def test_plan_deploy_by_digest():
    replicas = [{"name": "api-1", "port": 8001}, {"name": "api-2", "port": 8002}]
    current = {
        "app1": {"api-1": {"image": "demo-api:1.0.0", "digest": "sha256:aa"},
                 "api-2": {"image": "demo-api:1.0.0", "digest": "sha256:aa"}},
        "app2": {"api-1": {"image": "demo-api:1.1.0", "digest": "sha256:bb"},
                 "api-2": {"image": "demo-api:1.0.0", "digest": "sha256:aa"}},
        "app3": {"api-1": {"image": "demo-api:1.1.0", "digest": "sha256:bb"},
                 "api-2": {"image": "demo-api:1.1.0", "digest": "sha256:bb"}},
    }
    plan = rollout_plan(["app1", "app2", "app3"], replicas, current, "deploy", "demo-api:1.1.0", "sha256:bb")
    assert plan["batches"] == [["app1"], ["app2"], ["app3"]]
    assert plan["canary"] == ["app1"]
    assert [s["changes"] for s in plan["hosts"]["app2"]["replicas"]] == [False, True]
    assert plan["replicas_to_change"] == 3 and plan["unchanged_hosts"] == ["app3"]
    assert plan_lines(plan) == [
        "deploy to sha256:bb: 3 replica(s) in 3 batch(es)",
        "batch 1 (canary): app1",
        "  app1 api-1:8001 sha256:aa -> sha256:bb",
        "  app1 api-2:8002 sha256:aa -> sha256:bb",
        "batch 2: app2",
        "  app2 api-2:8002 sha256:aa -> sha256:bb",
        "batch 3: app3",
        "already on target: app3",
    ]


def test_plan_without_digest_compares_references_and_restart_touches_all():
    replicas = [{"name": "api-1", "port": 8001}]
    current = {"app1": {"api-1": {"image": "demo-api:1.1.0"}}, "app2": {}}
    plan = rollout_plan(["app1", "app2"], replicas, current, "deploy", "demo-api:1.1.0")
    assert [plan["hosts"][h]["changes"] for h in ("app1", "app2")] == [0, 1]
    restart = rollout_plan(["app1", "app2"], replicas, current, "restart", serial=[1, "100%"])
    assert restart["replicas_to_change"] == 2 and restart["batches"] == [["app1"], ["app2"]]
    assert restart["hosts"]["app1"]["replicas"][0]["to"] == "demo-api:1.1.0"
    with pytest.raises(ValueError):
        rollout_plan(["app1"], replicas, current, "deploy")


def test_plan_with_host_answers_and_per_host_targets():
    """compose_rollout in check mode compares image IDs: its answer beats the references
    (a replica pinned by digest runs the tag's image); a rollback has a target per host."""
    replicas = [{"name": "api-1", "port": 8001}, {"name": "api-2", "port": 8002}]
    current = {h: {"api-1": {"image": OLD}, "api-2": {"image": OLD}} for h in ("app1", "app2")}
    plan = rollout_plan(["app1", "app2"], replicas, current, "deploy", "demo-api:1.0.0",
                        changes={"app1": {"api-1": False, "api-2": False}, "app2": {"api-1": True}})
    assert plan["unchanged_hosts"] == ["app1"] and plan["replicas_to_change"] == 2
    rollback = rollout_plan(["app1", "app2"], replicas, current, "deploy",
                            targets={"app1": {"api-1": NEW, "api-2": NEW}, "app2": {"api-1": OLD, "api-2": OLD}})
    assert rollback["unchanged_hosts"] == ["app2"]
    assert [s["to"] for s in rollback["hosts"]["app1"]["replicas"]] == [NEW, NEW]
    assert plan_lines(rollback)[0] == "deploy to per-host images: 2 replica(s) in 2 batch(es)"


def test_plan_per_host_units_with_port_less_services_and_one_off_images():
    """Placement makes each host's units differ (the scheduler on app1 only); a worker has
    no port; a one-off image for the API (targets without the workers) leaves them out."""
    units = {"app1": [{"name": "api-1", "port": 8001}, {"name": "worker"}, {"name": "scheduler"}],
             "app2": [{"name": "api-1", "port": 8001}, {"name": "worker"}]}
    current = {h: {u["name"]: {"image": OLD} for u in units[h]} for h in units}
    release = {h: {u["name"]: NEW for u in units[h]} for h in units}
    plan = rollout_plan(["app1", "app2"], units, current, "deploy", NEW, targets=release)
    assert plan["replicas_to_change"] == 5
    assert plan_lines(plan)[1:] == [
        "batch 1 (canary): app1", "  app1 api-1:8001 %s -> %s" % (OLD, NEW), "  app1 worker %s -> %s" % (OLD, NEW),
        "  app1 scheduler %s -> %s" % (OLD, NEW), "batch 2: app2", "  app2 api-1:8001 %s -> %s" % (OLD, NEW),
        "  app2 worker %s -> %s" % (OLD, NEW)]
    one_off = rollout_plan(["app1", "app2"], units, current, "deploy", NEW,
                           targets={h: {"api-1": NEW} for h in units})
    assert [[s["name"] for s in one_off["hosts"][h]["replicas"]] for h in units] == [["api-1"], ["api-1"]]


def test_plan_through_ansible(tmp_path):
    """The filter as a playbook calls it, with compose_rollout status output as input."""
    root = Path(__file__).resolve().parents[2]
    play = tmp_path / "plan.yml"
    play.write_text("""
- hosts: localhost
  connection: local
  gather_facts: false
  vars:
    ansible_python_interpreter: "%s"
    current:
      app1: {api-1: {image: "demo-api:1.0.0", digest: "sha256:aa"}, api-2: {image: "demo-api:1.0.0", digest: "sha256:aa"}}
      app2: {api-1: {image: "demo-api:1.0.0", digest: "sha256:aa"}, api-2: {image: "demo-api:1.0.0", digest: "sha256:aa"}}
    replicas: [{service: api-1, port: 8001}, {service: api-2, port: 8002}]
  tasks:
    - ansible.builtin.copy:
        content: "{{ current | keelson.stack.rollout_plan(['app1', 'app2'], replicas, 'deploy', image='demo-api:1.1.0') | to_json }}"
        dest: "%s"
        mode: "0600"
""" % (sys.executable, tmp_path / "plan.json"))
    env = dict(os.environ, ANSIBLE_CONFIG=str(root / "ansible.cfg"), ANSIBLE_COLLECTIONS_PATH=str(root / "collections"),
               ANSIBLE_NOCOLOR="1")
    playbook = Path(sys.executable).parent / "ansible-playbook"  # the venv's, whatever PATH says
    out = subprocess.run([str(playbook), "-i", "localhost,", str(play)], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["batches"] == [["app1"], ["app2"]] and plan["replicas_to_change"] == 4
    assert plan["lines"][1:3] == ["batch 1 (canary): app1", "  app1 api-1:8001 sha256:aa -> demo-api:1.1.0"]


STACK = [{"name": "web", "ports": [{"published": 3001, "target": 3000}]}, {"name": "worker", "ports": []},
         {"name": "api", "ports": [{"published": 8001, "target": 8000}]}]


@pytest.mark.parametrize("serial", [[1, "50%"], [1], ["100%"], [2, "30%", 5], ["3"]])
def test_rollout_settings_that_hold(serial):
    assert rollout_settings_errors(STACK, ["web", "worker", "api"], serial) == []
    assert rollout_settings_errors(STACK, ["worker"], serial) == []


def test_rollout_settings_errors_name_every_problem():
    assert rollout_settings_errors(STACK, ["api", "apii", "wrker"], [1, 0, "0%", True, "half"]) == [
        "rollout_services: apii, wrker are not services of compose_stack_services (web, worker, api)",
        "rollout_serial: every batch size must be a number of hosts or a percentage above 0, "
        "not 0, '0%', True, 'half'"]
    assert rollout_settings_errors(STACK, ["apii"], []) == [
        "rollout_services: apii is not a service of compose_stack_services (web, worker, api)",
        'rollout_serial: [] is not a non-empty list of batch sizes such as [1, "50%"]']
    assert rollout_settings_errors([], [], "1") == [
        "rollout_services: [] names no service (services: none)",
        "rollout_serial: '1' is not a non-empty list of batch sizes such as [1, \"50%\"]"]


def test_the_monitoring_window_probes_each_published_replica_at_its_service_health_path():
    from ansible_collections.keelson.stack.plugins.filter.rollout_plan import rollout_monitor_probes
    host = {"inventory_hostname": "app1", "keelson_rollout_address": "10.0.0.21", "keelson_rollout_replicas": [
        {"service": "api-1", "upstream": "api", "port": 8001},
        {"service": "web-1", "upstream": "web", "port": 3000, "health_path": "/healthz"},
        {"service": "worker"}]}
    assert [(p["name"], p["url"]) for p in rollout_monitor_probes([host], "/health")] == [
        ("app1 api-1", "http://10.0.0.21:8001/health"), ("app1 web-1", "http://10.0.0.21:3000/healthz")]


def test_roll_steps_start_each_surge_right_before_its_service_and_remove_it_right_after():
    units = [{"service": "api-1", "upstream": "api", "port": 8001}, {"service": "api-2", "upstream": "api", "port": 8002},
             {"service": "web", "upstream": "web", "port": 8011}, {"service": "worker-1"}, {"service": "scheduler"}]
    api_surge = {"service": "api-surge", "upstream": "api", "port": 8003}
    web_surge = {"service": "web-surge", "upstream": "web", "port": 8012}
    steps = roll_steps(units, [api_surge, web_surge])
    named = [(s["surge"]["service"], s["state"]) if "surge" in s else s["replica"]["service"] for s in steps]
    assert named == [("api-surge", "started"), "api-1", "api-2", ("api-surge", "removed"),
                     ("web-surge", "started"), "web", ("web-surge", "removed"), "worker-1", "scheduler"]
    # only api-2 changes here: api's surge still frames it; a surge whose service does not change never starts
    steps = roll_steps(units[1:2] + units[3:4], [api_surge, web_surge])
    named = [(s["surge"]["service"], s["state"]) if "surge" in s else s["replica"]["service"] for s in steps]
    assert named == [("api-surge", "started"), "api-2", ("api-surge", "removed"), "worker-1"]
    assert [s["replica"]["service"] for s in roll_steps(units, [])] == [u["service"] for u in units]
    assert roll_steps([], [api_surge]) == []

