"""Converge benchmarks on the lab (one run, figures printed, nothing timed is asserted):
  - the no-op converge time of site.yml for N hosts (small: 1 and 2, full: 1, 4 and 8),
    with the ratio of the largest to the one before it (full: 8 hosts / 4 hosts), the
    tasks per host and the per-task mean, and the five slowest tasks (profile_tasks);
  - the first converge of a bare host: a fresh container from the lab's Debian image,
    on its own inventory (group db, the lab's group_vars), through site.yml (small: the
    base layer only; full: base and the data layer), then its second run.
Every no-op run must report changed=0 on every host.

N hosts are a --limit of the lab's hosts, app hosts first, then db, then lb (lb only
once every app host is in: nginx's upstreams are made from all of them). Counts the
lab does not have (8 needs `lab.py up --extra-app 4`) are reported as not measured.
It converges every lab host: run it alone (`make bench`, or under both lab locks).
Run: pytest -s tests/bench/test_converge_bench.py --bench-size=small|full"""
import os
import re
import subprocess
import time

import pytest
import yaml

from conftest import ROOT, report

INVENTORY = ROOT / "inventories" / "lab" / "hosts.yml"
COUNTS = {"small": [1, 2], "full": [1, 4, 8]}
# The bare host: the lab's network, an address no lab host or molecule scenario uses.
BARE = {"name": "keelson-bench-bare1", "image": "keelson/debian:13", "address_suffix": 250}
SYSTEMD_FLAGS = ["--cap-add", "SYS_ADMIN", "--cap-add", "NET_ADMIN", "--cap-add", "SYS_PTRACE",
                 "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
                 "--tmpfs", "/run", "--tmpfs", "/run/lock", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:ro",
                 "--stop-signal", "SIGRTMIN+3"]
BARE_TAGS = {"small": ["--tags", "base"], "full": ["--tags", "base,data"]}


def lab_hosts():
    """Inventory host names in benchmark order: app, db, lb, then any other group."""
    children = yaml.safe_load(INVENTORY.read_text())["all"]["children"]
    order = ["app", "db", "lb"] + sorted(set(children) - {"app", "db", "lb"})
    hosts = []
    for group in order:
        hosts += [h for h in sorted((children.get(group) or {}).get("hosts") or {}) if h not in hosts]
    return hosts, sorted((children.get("app") or {}).get("hosts") or {})


def host_set(count):
    hosts, apps = lab_hosts()
    if count > len(hosts):
        return None
    chosen = hosts[:count]
    if "lb1" in chosen and not set(apps) <= set(chosen):
        return None
    return chosen


def site(args, inventory=INVENTORY):
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0",
               PROFILE_TASKS_TASK_OUTPUT_LIMIT="all")
    started = time.monotonic()
    res = subprocess.run(["ansible-playbook", "site.yml", "-i", str(inventory)] + args, cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=3600)
    res.seconds = time.monotonic() - started
    res.recap = {m.group(1): {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
                 for m in re.finditer(r"^(\S+)\s+:\s+(ok=.*)$", res.stdout, re.M)}
    # profile_tasks' summary: "<role> : <task> ---- 1.23s"
    res.tasks = [(name.strip(), float(sec)) for name, sec in
                 re.findall(r"^(.+?) -{3,} (\d+\.\d+)s$", res.stdout, re.M)]
    return res


def tasks_per_host(recap):
    return {h: r["ok"] + r["changed"] + r["skipped"] + r.get("failed", 0) for h, r in recap.items()}


def describe(label, res):
    per_host = tasks_per_host(res.recap)
    task_count = len(res.tasks)
    report("%s: %.1f s, %d tasks run (mean %.2f s per task), tasks per host: %s" % (
        label, res.seconds, task_count, res.seconds / max(task_count, 1),
        ", ".join("%s %d" % (h, n) for h, n in sorted(per_host.items()))))
    slowest = sorted(res.tasks, key=lambda t: -t[1])[:5]
    report("  five slowest tasks: " + "; ".join("%s %.2fs" % t for t in slowest))


def test_noop_converge_scales_flat(bench_size):
    figures = {}
    for count in COUNTS[bench_size["name"]]:
        hosts = host_set(count)
        if hosts is None:
            report("no-op site.yml, %d hosts: not measured (the lab has %d hosts; `lab.py up --extra-app N`)"
                   % (count, len(lab_hosts()[0])))
            continue
        res = site(["--limit", ",".join(hosts)])
        if res.returncode == 0 and any(r["changed"] for r in res.recap.values()):
            # the lab was last converged with other code or settings: this run put it back
            res = site(["--limit", ",".join(hosts)])
        assert res.returncode == 0, res.stdout[-5000:] + res.stderr[-2000:]
        changed = {h: r["changed"] for h, r in res.recap.items() if r["changed"]}
        assert not changed, "the no-op run changed something: %s" % changed
        figures[count] = res.seconds
        describe("no-op site.yml, %d hosts (%s)" % (count, ", ".join(hosts)), res)
    counts = sorted(figures)
    if len(counts) >= 2:
        big, small = counts[-1], counts[-2]
        report("no-op ratio %d hosts / %d hosts: %.2f (goal <= 1.3 for 8/4); %d hosts %.1f s (goal <= 45 s at 4)"
               % (big, small, figures[big] / figures[small], small, figures[small]))


@pytest.fixture
def bare_inventory(tmp_path):
    """A fresh host from the lab image, alone in group db of its own inventory, with the lab's group_vars."""
    subnet = yaml.safe_load((ROOT / "inventories" / "lab" / "group_vars" / "all" / "lab_generated.yml")
                            .read_text())["keelson_lab_network"]
    address = re.sub(r"\.0/24$", ".%d" % BARE["address_suffix"], subnet)
    network = subprocess.run(["docker", "inspect", "-f", "{{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{end}}",
                              "keelson-lab-db1"], capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run(["docker", "rm", "-f", BARE["name"]], capture_output=True)
    subprocess.run(["docker", "run", "-d", "--name", BARE["name"], "--hostname", "bare1", "--network", network,
                    "--ip", address, *SYSTEMD_FLAGS, BARE["image"], "/lib/systemd/systemd"],
                   capture_output=True, check=True)
    try:
        for _ in range(60):
            state = subprocess.run(["docker", "exec", BARE["name"], "systemctl", "is-system-running"],
                                   capture_output=True, text=True).stdout.strip()
            if state in ("running", "degraded"):
                break
            time.sleep(1)
        (tmp_path / "group_vars").mkdir()
        for name in ("all", "db.yml"):
            (tmp_path / "group_vars" / name).symlink_to(ROOT / "inventories" / "lab" / "group_vars" / name)
        (tmp_path / "hosts.yml").write_text(yaml.safe_dump({"all": {
            "children": {"db": {"hosts": {"bare1": {"ansible_host": BARE["name"],
                                                    "keelson_private_address": address,
                                                    # no monitor host here to scrape it
                                                    "monitoring_enabled": False}}},
                         "app": {"hosts": {}}, "lb": {"hosts": {}}},
            "vars": {"ansible_connection": "community.docker.docker",
                     "ansible_python_interpreter": "/usr/bin/python3"}}}))
        yield tmp_path / "hosts.yml"
    finally:
        subprocess.run(["docker", "rm", "-f", BARE["name"]], capture_output=True)


def test_first_converge_of_a_bare_host(bench_size, bare_inventory):
    tags = BARE_TAGS[bench_size["name"]]
    first = site(tags, inventory=bare_inventory)
    assert first.returncode == 0, first.stdout[-5000:] + first.stderr[-2000:]
    describe("first converge of a bare host (site.yml %s)" % " ".join(tags), first)
    second = site(tags, inventory=bare_inventory)
    assert second.returncode == 0, second.stdout[-5000:] + second.stderr[-2000:]
    assert second.recap["bare1"]["changed"] == 0, second.recap
    describe("its second run", second)
    report("bare host: first converge %.1f s, second (no-op) %.1f s, ratio %.1f"
           % (first.seconds, second.seconds, first.seconds / second.seconds))
