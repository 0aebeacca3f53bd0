"""deploy.yml, rolling_restart.yml and rollback.yml on the lab (lb1, app1, app2; the demo
API, two replicas per host, its frontend web, two workers per host, the scheduler on app1),
under HTTPS load through nginx on lb1.

The tests run in file order, each starting from the state the previous one left:
1.0.0 from site.yml -> plan -> deploy 1.1.0 (the API's surge first, start_first, then the
API's and web's replicas, then the workers and the scheduler, one at a time; the migration
once) -> restart -> three broken releases (caught on the canary's API surge, no replica
touched) and one whose worker exits (only the canary touched, rolled back) -> a failing
migration (nothing changed) -> rollback to 1.0.0 -> a late failure (all hosts end on
1.0.0) -> a second deploy refused by the lock -> a dead run's lock released by name -> a
controller killed mid-rollout and the rerun -> killed during the migration, rerun once the
dead run is named -> site.yml with the inventory at 1.1.0, rolled through the engine -> killed
mid second batch, the rerun a site.yml that rolls the inventory's 1.0.0 back. The load never resends (a request sent on a
keep-alive connection nginx closed is an error, as for Python requests or Node's agent), and
every rollout asserts 0 non-2xx, 0 socket errors, 0 resends and no nginx reload."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rollout_lab import (  # noqa: E402
    APP_HOSTS, AUDIT, INVENTORY, LOCK, PORTLESS, PROJECT_DIR, REPLICAS, ROOT, Playbook, ServingSampler, all_on,
    container_ids, demo_sql, finish_load, migration_runs, no_backend_down, on, record_of, records, registry,
    requests_while_replaced, run_id, start_load, versions)


# Run ids of earlier tests that later ones name (the tests run in file order).
RUNS = {}


@pytest.fixture
def load():
    generator = start_load()
    yield generator
    generator.stop()  # a no-op after finish_load


def test_check_mode_prints_the_plan_and_changes_nothing():
    before = {h: container_ids(h) for h in APP_HOSTS}
    res = Playbook("deploy.yml", {"app_version": "1.1.0"}, check=True).run()
    assert res.returncode == 0, res.output[-5000:]
    assert "batch 1 (canary): app1" in res.output and "batch 2: app2" in res.output, res.output[-3000:]
    # app1: api-1, api-2, web, worker-1, worker-2, scheduler; app2: the same but the scheduler
    assert "11 replica(s) in 2 batch(es)" in res.output
    # (the YAML callback folds long lines)
    for unit in ("web:8011", "worker-1", "worker-2"):
        assert re.search(r"app2 %s\s+\S+\s+->\s+\S+/demo-api:1\.1\.0" % unit, res.output), res.output[-3000:]
    assert "app2 scheduler" not in res.output
    assert re.search(r"job migrate once on app1: migrate in api-1,\s+image\s+%s/demo-api:1\.1\.0"
                     % re.escape(registry()), res.output), res.output[-3000:]
    assert {h: container_ids(h) for h in APP_HOSTS} == before
    assert versions() == all_on("1.0.0")


def test_deploy_under_load(load):
    migrations = migration_runs("1.1.0")
    serving = ServingSampler().start()
    res = Playbook("deploy.yml", {"app_version": "1.1.0"}).run()
    stats = finish_load(load)
    serving.stop()
    assert res.returncode == 0, res.output[-6000:]
    # start-first: api-surge served on the new release before each host's first api replica
    # was drained, so nginx always had both of a host's api replicas' worth up there
    fewest = serving.min_serving()
    assert [fewest[("api", host)] for host in APP_HOSTS] == [(2, 2)] * len(APP_HOSTS), fewest
    assert "api-surge" in res.output
    for host in APP_HOSTS:
        assert on(host, "docker", "ps", "-aq", "--filter", "label=com.docker.compose.service=api-surge") == ""
    assert versions() == all_on("1.1.0")
    assert migration_runs("1.1.0") == migrations + 1, "the migration did not run exactly once"
    # placement: one scheduler for the environment, never a second one meanwhile
    assert demo_sql("SELECT DISTINCT node FROM scheduler_ticks WHERE ticked_at > now() - interval '15 minutes'") == [
        ["app1"]]
    rid = RUNS["deploy 1.1.0"] = run_id(res.output)
    for host in APP_HOSTS:
        record = record_of(host, rid)
        assert record["outcome"] == "succeeded"
        # every published replica behind nginx first, then the services without ports
        assert [r["name"] for r in record["replicas"]] == REPLICAS + PORTLESS[host]
        assert [r["outcome"] for r in record["replicas"]] == ["replaced"] * len(REPLICAS + PORTLESS[host])
        assert all("@sha256:" in r["new_pinned"] for r in record["replicas"])
        # each published replica was gated on its own service's health path (web sets /livez)
        for r in record["replicas"]:
            if r.get("port"):
                path = "/livez" if r["name"].startswith("web") else "/health"
                http = [p["name"] for p in r["gate"]["probes"] if p["name"].startswith("http ")]
                assert len(http) == 1 and http[0].endswith(":%d%s" % (r["port"], path)), r
        assert json.loads(on(host, "tail", "-n1", PROJECT_DIR + "/audit.log"))["record"] == record["id"]
    audit = json.loads(AUDIT.read_text().splitlines()[-1])
    assert audit["run"] == rid and audit["outcome"] == "succeeded" and audit["hosts"] == APP_HOSTS
    assert audit["jobs"] == ["migrate"]
    no_backend_down()
    assert stats["during"]["requests"] > 0
    assert requests_while_replaced(rid, load.marks["start"]) == []


def test_second_deploy_of_the_same_version_changes_nothing():
    before = {h: container_ids(h) for h in APP_HOSTS}
    res = Playbook("deploy.yml", {"app_version": "1.1.0"}).run()
    assert res.returncode == 0, res.output[-5000:]
    assert "0 replica(s)" in res.output
    assert re.search(r"app1\s+:.*changed=0", res.output) and re.search(r"app2\s+:.*changed=0", res.output)
    assert {h: container_ids(h) for h in APP_HOSTS} == before


def test_site_yml_keeps_the_deployed_release():
    """compose.yaml still says 1.0.0 (the inventory's default); the rollout pins keep 1.1.0."""
    before = {h: container_ids(h) for h in APP_HOSTS}
    res = subprocess.run(["ansible-playbook", "site.yml", "-i", "inventories/lab", "--tags", "stack"],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-5000:]
    assert versions() == all_on("1.1.0")
    after = {h: container_ids(h) for h in APP_HOSTS}
    for host in APP_HOSTS:
        api = [c for c in before[host] if c in after[host]]
        assert len(api) >= 2, "site.yml recreated the API replicas on %s" % host


def test_rolling_restart_under_load(load):
    before = {h: container_ids(h) for h in APP_HOSTS}
    res = Playbook("rolling_restart.yml", {}).run()
    finish_load(load)
    assert res.returncode == 0, res.output[-6000:]
    assert versions() == all_on("1.1.0")
    after = {h: container_ids(h) for h in APP_HOSTS}
    for host in APP_HOSTS:
        assert len(set(after[host]) - set(before[host])) == len(REPLICAS + PORTLESS[host]), \
            "every replica and port-less service recreated on %s" % host
    no_backend_down()
    assert requests_while_replaced(run_id(res.output), load.marks["start"]) == []


@pytest.mark.parametrize("tag, why", [
    ("1.1.0-unhealthy", r"health unhealthy|deadline"),
    ("1.1.0-exits", r"restarted \d+ time\(s\)|exit code 3"),
    ("1.1.0-probefail", r"http [\d.]+:800\d/health: status 500"),
])
def test_broken_release_touches_only_the_canary(load, tag, why):
    """The API is start_first: the broken release fails on api-surge, before any api replica
    of the canary stops, and is removed; the record says so and the run ends rolled back."""
    before = {h: container_ids(h) for h in APP_HOSTS}
    res = Playbook("deploy.yml", {"keelson_deploy_image": "%s/demo-api:%s" % (registry(), tag),
                                  "rollout_services": ["api"]}).run()
    finish_load(load)
    assert res.returncode != 0, res.output[-5000:]
    assert versions() == all_on("1.1.0")
    assert {h: container_ids(h) for h in APP_HOSTS} == before, "a replica was touched"
    rid = run_id(res.output)
    assert record_of("app2", rid) is None
    record = record_of("app1", rid)
    assert record["outcome"] == "rolled_back", record
    assert re.search(why, record["reason"]), record["reason"]
    assert record["replicas"] == [] and [s["name"] for s in record["surges"]] == ["api-surge"], record
    surge = record["surges"][0]
    assert surge["outcome"] == "failed" and surge["reason"] in record["reason"], record
    gate = surge["gate"]
    print("%s: detected after %.1f s (%s)" % (tag, gate["total_seconds"], gate["reason"][:120]))
    assert "rolled back" in res.output or "runs what it ran before" in res.output
    no_backend_down()


def test_broken_worker_rolls_the_whole_release_back(load):
    """1.1.0-badworker: its API and frontend are fine, its worker exits. On the canary the
    published replicas go on it and pass; the first worker fails its gate. They go back too,
    and app2 is never touched."""
    app2_before = container_ids("app2")
    res = Playbook("deploy.yml", {"app_version": "1.1.0-badworker"}).run()
    finish_load(load)
    assert res.returncode != 0, res.output[-5000:]
    assert versions() == all_on("1.1.0")
    assert container_ids("app2") == app2_before, "app2 was touched"
    record = record_of("app1", run_id(res.output))
    assert record["outcome"] == "rolled_back", record
    # the first worker failed its gate and was restored (the second was never touched); the
    # published replicas went back in the rollback
    assert sorted(r["name"] for r in record["replicas"]) == ["api-1", "api-2", "web", "worker-1"], record["replicas"]
    assert [r["name"] for r in record["replicas"] if r["outcome"] == "restored"] == ["worker-1"], record["replicas"]
    assert re.search(r"worker-1: new image \S+:1\.1\.0-badworker failed: .*(restarted|exit code 3)",
                     record["reason"]), record["reason"]
    no_backend_down()


def test_a_failing_migration_changes_no_replica_and_says_why_in_one_line():
    before = {h: container_ids(h) for h in APP_HOSTS}
    res = Playbook("deploy.yml", {"app_version": "1.1.0-badmigration"}).run()
    assert res.returncode != 0, res.output[-5000:]
    assert re.search(r"job migrate \(in api-1, image \S+:1\.1\.0-badmigration\) failed with exit code 1: "
                     r"migration 1\.1\.0-badmigration failed: column items\.owner_id cannot be added",
                     re.sub(r"\s+", " ", res.output)), res.output[-5000:]
    assert {h: container_ids(h) for h in APP_HOSTS} == before
    assert versions() == all_on("1.1.0")
    rid = run_id(res.output)
    assert all(record_of(h, rid) is None for h in APP_HOSTS)
    assert subprocess.run(["docker", "exec", "keelson-lab-app1", "test", "-e", LOCK]).returncode == 1, "lock kept"
    audit = json.loads(AUDIT.read_text().splitlines()[-1])
    assert audit["run"] == rid and audit["outcome"] == "failed" and "exit code 1" in audit["reason"]


def test_rollback_returns_to_the_previous_release(load):
    res = Playbook("rollback.yml", {}).run()
    finish_load(load)
    assert res.returncode == 0, res.output[-6000:]
    assert versions() == all_on("1.0.0")
    no_backend_down()


def wait_while_running(proc, reached, what, timeout=300):
    """Returns once reached() is true; fails if the run ends first or the timeout passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None and not reached():
        time.sleep(0.3)
    assert proc.poll() is None, "the run ended before %s:\n%s" % (what, proc.stdout.read()[-5000:])
    assert time.monotonic() < deadline, "never saw %s" % what


def a_replica_replaced(host, known=()):
    """Whether the host's newest run in progress (not one of the ``known`` ids) has replaced a replica."""
    ours = [r for r in records(host) if r["id"] not in known and r["outcome"] == "in_progress"]
    return bool(ours) and any(s["outcome"] == "replaced" for s in ours[-1]["replicas"])


def test_late_failure_rolls_every_host_back(load):
    """The canary (app1) breaks inside the monitoring window that follows batch 2: app2
    was already on 1.1.0, and both end on 1.0.0."""
    proc = Playbook("deploy.yml", {"app_version": "1.1.0", "rollout_monitor_seconds": 25}).start()
    try:
        wait_while_running(proc, lambda: a_replica_replaced("app2"), "a replica replaced on app2", timeout=600)
        # batch 2 is under way: make the canary's first replica fail its health checks
        on("app1", "docker", "exec", "demo-api-1-1", "touch", "/tmp/demo-fail")
        output, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    finish_load(load)
    assert proc.returncode != 0, output[-5000:]
    assert "monitoring window" in output, output[-5000:]
    assert versions() == all_on("1.0.0")
    rid = run_id(output)
    for host in APP_HOSTS:
        assert record_of(host, rid)["outcome"] == "rolled_back"
    no_backend_down()


def test_releases_lists_each_run_with_its_outcome_and_images():
    res = Playbook("releases.yml", {}).run()
    assert res.returncode == 0, res.output[-3000:]
    text = " ".join(res.output.split())  # the YAML callback folds long lines
    assert re.search(r"%s deploy succeeded at \S+ by \S+ -> \S+/demo-api@sha256:[0-9a-f]{64}: api-1, api-2, "
                     r"scheduler, web, worker-1, worker-2" % RUNS["deploy 1.1.0"], text), res.output[-3000:]
    assert re.search(r"deploy rolled_back at \S+ by \S+ -> .*\(monitoring window", text), res.output[-3000:]
    assert re.search(r"app1.*changed=0", res.output) and re.search(r"app2.*changed=0", res.output)


def test_a_second_deploy_fails_fast_naming_the_holder():
    """The first run returns to a named release (rollback.yml -e release=RUN: the deploy to
    1.1.0), the second is refused by the lock."""
    first = Playbook("rollback.yml", {"release": RUNS["deploy 1.1.0"]}).start()
    try:
        wait_while_running(first, lambda: subprocess.run(["docker", "exec", "keelson-lab-app1", "test", "-s", LOCK])
                           .returncode == 0, "the lock taken")
        started = time.monotonic()
        second = Playbook("deploy.yml", {"app_version": "1.1.0"}).run()
        took = time.monotonic() - started
        assert second.returncode != 0
        assert re.search(r"held by .*-rollback", second.output), second.output[-3000:]
        print("second deploy refused after %.1f s (whole ansible-playbook run)" % took)
        output, _ = first.communicate(timeout=900)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert first.returncode == 0, output[-5000:]
    assert versions() == all_on("1.1.0")


def test_a_dead_runs_lock_is_released_by_naming_it():
    ghost = "ghost@ctl 20261123T000000Z-deploy"
    taken = subprocess.run(
        ["ansible", "-i", str(INVENTORY), "app1", "-m", "keelson.stack.deploy_lock",
         "-a", "path=%s owner='%s' purpose='deploy api 9.9.9' ttl=3600" % (LOCK, ghost)],
        cwd=ROOT, env=dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg")), capture_output=True, text=True)
    assert taken.returncode == 0, taken.stdout + taken.stderr
    try:
        shown = Playbook("deploy_lock.yml", {}).run()
        assert shown.returncode == 0, shown.output[-3000:]
        assert 'held by "%s" for deploy api 9.9.9' % ghost in shown.output, shown.output[-3000:]

        wrong = Playbook("deploy_lock.yml", {"keelson_lock_release": "ghost@ctl 20261122T000000Z-deploy"}).run()
        assert wrong.returncode != 0
        assert "held by %s" % ghost in wrong.output, wrong.output[-3000:]
        assert json.loads(on("app1", "cat", LOCK))["owner"] == ghost

        released = Playbook("deploy_lock.yml", {"keelson_lock_release": ghost}).run()
        assert released.returncode == 0, released.output[-3000:]
        assert subprocess.run(["docker", "exec", "keelson-lab-app1", "test", "-e", LOCK]).returncode == 1
        audit = [json.loads(line) for line in AUDIT.read_text().splitlines()]
        assert audit[-1]["action"] == "release_lock" and audit[-1]["released"] == ghost and audit[-1]["was_held"]
    finally:
        on("app1", "rm", "-f", LOCK)


def kill_when(proc, reached, what, timeout=300):
    """kill -9 of the controller (its whole process group) once reached() is true."""
    try:
        wait_while_running(proc, reached, what, timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_controller_killed_mid_rollout_then_rerun(load):
    """kill -9 of ansible-playbook while app1's first replica is being replaced; the rerun
    (waiting out the dead run's lock, whose ttl is short here) ends all-new, nothing down,
    and closes the dead run's record as failed."""
    extra = {"app_version": "1.0.0", "rollout_lock_ttl": 20}
    known = {r["id"] for r in records("app1")}
    ours = []

    def first_replica_begun():
        ours[:] = [r for r in records("app1") if r["id"] not in known and r["outcome"] == "in_progress"]
        return bool(ours) and bool(ours[-1]["replicas"])

    kill_when(Playbook("deploy.yml", extra).start(), first_replica_begun, "app1's first replica being replaced")
    killed = ours[-1]["id"]
    rerun = Playbook("deploy.yml", dict(extra, rollout_lock_wait=120)).run()
    finish_load(load)
    assert rerun.returncode == 0, rerun.output[-6000:]
    assert "took over a stale lock" in rerun.output
    assert versions() == all_on("1.0.0")
    no_backend_down()
    closed = [r for r in records("app1") if r["id"] == killed][0]
    assert closed["outcome"] == "failed" and closed["reason"].startswith("interrupted"), closed


def name_the_dead_run():
    """What an operator does after a killed run: release its lock by naming it (deploy_lock.yml)."""
    owner = json.loads(on("app1", "cat", LOCK))["owner"]
    released = Playbook("deploy_lock.yml", {"keelson_lock_release": owner}).run()
    assert released.returncode == 0, released.output[-3000:]
    return owner


def migration_running():
    return bool(on("app1", "docker", "ps", "-q", "--filter", "label=com.docker.compose.oneoff=True",
                   "--filter", "label=com.docker.compose.project=demo").split())


def test_controller_killed_during_the_migration_then_rerun(load):
    """kill -9 while the release's migration runs (this release's takes 45 s): no replica has
    changed, and the migration outlives its controller. Once the dead run is named, the
    rerun waits for that migration to end before it runs its own (never two at once), then
    ends all-new."""
    tag = "1.1.0-slowmigration"
    migrations = migration_runs(tag)
    ids = {host: container_ids(host) for host in APP_HOSTS}
    kill_when(Playbook("deploy.yml", {"app_version": tag}).start(), migration_running, "the migration running")
    assert {host: container_ids(host) for host in APP_HOSTS} == ids
    name_the_dead_run()
    assert migration_running(), "the dead run's migration should still be applying"
    rerun = Playbook("deploy.yml", {"app_version": tag}).run()
    finish_load(load)
    assert rerun.returncode == 0, rerun.output[-6000:]
    assert re.search(r"job migrate waited for \S+, left running by an earlier run", rerun.output), rerun.output[-6000:]
    assert versions() == all_on(tag)
    assert migration_runs(tag) == migrations + 2, "the dead run's migration and the rerun's, one after the other"
    no_backend_down()


def current_release(host):
    """The release record current.json names on an app host."""
    return json.loads(on(host, "cat", PROJECT_DIR + "/releases/current.json"))


def test_site_yml_rolls_a_new_version_through_the_rollout_engine(load):
    """The inventory asks for 1.1.0 while another release runs (the last deploy's, newer
    than the inventory's record): site.yml hands the release to the engine (migration
    once, canary first, one replica at a time) instead of `up`, under load with 0 errors,
    and records it. The same converge again changes nothing. (The next test's rerun is a
    site.yml that brings the inventory's own 1.0.0 back through the engine.)"""
    migrations = migration_runs("1.1.0")
    res = Playbook("site.yml", {"app_version": "1.1.0"}, tags="stack").run()
    finish_load(load)
    assert res.returncode == 0, res.output[-6000:]
    assert "batch 1 (canary): app1" in res.output and "batch 2: app2" in res.output, res.output[-6000:]
    assert versions() == all_on("1.1.0")
    assert migration_runs("1.1.0") == migrations + 1, "the migration did not run exactly once"
    no_backend_down()
    rid = run_id(res.output)
    assert requests_while_replaced(rid, load.marks["start"]) == []
    for host in APP_HOSTS:
        assert record_of(host, rid)["outcome"] == "succeeded"
        assert current_release(host)["services"]["api"]["image"].endswith("/demo-api:1.1.0")

    before = {h: container_ids(h) for h in APP_HOSTS}
    again = Playbook("site.yml", {"app_version": "1.1.0"}, tags="stack").run()
    assert again.returncode == 0, again.output[-5000:]
    assert re.search(r"app1\s+:.*changed=0", again.output) and re.search(r"app2\s+:.*changed=0", again.output)
    assert "batch 1 (canary)" not in again.output
    assert {h: container_ids(h) for h in APP_HOSTS} == before


def test_controller_killed_mid_second_batch_then_rerun(load):
    """kill -9 once the second batch (app2) has replaced a replica: app1 is all-new, app2 mixed;
    once the dead run is named, the rerun (site.yml) ends all-new on both hosts with nothing down."""
    extra = {"app_version": "1.0.0"}
    known = {r["id"] for r in records("app2")}
    kill_when(Playbook("deploy.yml", extra).start(), lambda: a_replica_replaced("app2", known),
              "a replica replaced on app2")
    name_the_dead_run()
    # the rerun is the converge: the inventory's 1.0.0 against site.yml's record of 1.1.0
    rerun = Playbook("site.yml", {}, tags="stack").run()
    finish_load(load)
    assert rerun.returncode == 0, rerun.output[-6000:]
    assert versions() == all_on("1.0.0")
    no_backend_down()
    for host in APP_HOSTS:
        assert current_release(host)["services"]["api"]["image"].endswith("/demo-api:1.0.0")

