"""Rolling restart and deploy of the demo API (2 app hosts x 2 replicas) under constant
HTTPS load through nginx on lb1. Prints, per rollout: requests, non-2xx, socket errors,
p50/p99 before vs during, the total roll time, and its ratio to the sum of the replicas'
boot-to-healthy times (from the release records, measured in the same run; goal <= 1.3).

The roll time is the span of the release records: from the first replica's replacement
(right after its drain) to the records' close at the end of the run, so it includes
the nginx steps between replicas and the batch handover; the monitoring window is off
here (a deliberate wait, not rolling work). Small size: a rolling
restart. Full size: a restart, a deploy to the other version and a deploy back, with
more load workers. Errors must be 0; the timing figures are printed, never asserted.

Reloads: the rollouts take the runtime path (no reload). The load here resends, as curl
does, so that it can count what a reload costs: for each rollout it prints the p99
during / p99 before (goal <= 1.2) and the resends (requests sent on a keep-alive
connection nginx closed; 0 on the runtime path). test_reload_path_resends puts the same
load through the reloads the reload path made for one rolling restart (a drain and a
put-back per replica, `systemctl reload nginx`, spaced RELOAD_SPACING apart) and prints
its resends next to the runtime path's.

Each rollout also prints the fewest backends nginx had up per upstream and app host
(sampled on lb1 every 0.5 s; goal: the replica count, which needs start-first), and
writes its timeline as a PNG (.cache/bench/rollout-*.png: load, latency, backends up,
each replica's replacement)."""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rollout_lab import (  # noqa: E402
    APP_HOSTS, REPLICAS, Playbook, ServingSampler, epoch, finish_load, on, private_address, record_of, run_id,
    start_load, versions)
from timeline import write_timeline  # noqa: E402

from conftest import ROOT  # noqa: E402

PLANS = {
    "small": {"workers": 4, "runs": [("rolling_restart.yml", "same")]},
    "full": {"workers": 8, "runs": [("rolling_restart.yml", "same"), ("deploy.yml", "there"),
                                    ("deploy.yml", "back")]},
}
# The demo versions a deploy switches between; the lab may be on either when the bench starts.
VERSIONS = ("1.0.0", "1.1.0")
# Production-like gate (10 s stable window), no monitoring window.
SETTINGS = {"rollout_monitor_seconds": 0, "rollout_gate_interval": 0.5,
            "rollout_gate_stable_seconds": 10}
# Seconds between two reloads of the reload path stand-in (small: CI; full: about one replica step).
RELOAD_SPACING = {"small": 2, "full": 8}
RESENDS = {}


def pytest_generate_tests(metafunc):
    if "run" in metafunc.fixturenames:
        runs = PLANS[metafunc.config.getoption("--bench-size")]["runs"]
        metafunc.parametrize("run", runs, ids=["%s-%s" % (p.split(".")[0], step) for p, step in runs])


def other_version():
    running = {v for host in versions().values() for v in host.values()}
    assert len(running) == 1 and running <= set(VERSIONS), running
    return [v for v in VERSIONS if v not in running][0]


def test_rollout_under_load(bench_size, run):
    playbook, step = run
    extra = {} if step == "same" else {"app_version": other_version()}
    serving = ServingSampler().start()
    load = start_load(workers=PLANS[bench_size["name"]]["workers"], baseline=10, resend=True)
    started = time.time()
    res = Playbook(playbook, dict(SETTINGS, **extra)).run()
    wall = time.time() - started
    stats = finish_load(load)
    serving.stop()
    assert res.returncode == 0, res.output[-6000:]
    rid = run_id(res.output)
    steps, spans, host_steps = [], [], []
    for host in APP_HOSTS:
        record = record_of(host, rid)
        assert record and record["outcome"] == "succeeded", record
        steps += record["replicas"]
        host_steps += [(host, s) for s in record["replicas"]]
        spans.append((epoch(record["started_at"]), epoch(record["finished_at"])))
    boot = sum(s["boot_to_healthy_seconds"] for s in steps)
    per_replica = sum(s["seconds"] for s in steps)
    roll = max(end for _, end in spans) - min(start for start, _ in spans)
    before, during = stats["before"], stats["during"]
    print("\n%s (%s): %d replicas, versions now %s" % (playbook, bench_size["name"], len(steps),
                                                     sorted({v for h in versions().values() for v in h.values()})))
    print("  load before: %d req, p50 %.1f ms, p99 %.1f ms | during: %d req, %d non-2xx, %d socket errors, "
          "p50 %.1f ms, p99 %.1f ms" % (before["requests"], before["p50_ms"], before["p99_ms"], during["requests"],
                                        during["non_2xx"], during["socket_errors"], during["p50_ms"],
                                        during["p99_ms"]))
    print("  roll time %.1f s (playbook wall %.1f s), replica steps %.1f s, boot-to-healthy sum %.1f s: "
          "ratio roll/boot %.2f (goal <= 1.3), playbook wall/boot %.2f"
          % (roll, wall, per_replica, boot, roll / boot, wall / boot))
    print("  p99 during / p99 before: %.2f (goal <= 1.2); resends (runtime path): %d"
          % (during["p99_ms"] / before["p99_ms"], during["stale_retries"]))
    fewest = serving.min_serving()
    print("  fewest backends up per app host (of its replicas; goal: all, with start-first): "
          + ", ".join("%s on %s %d/%d" % (upstream, host, up, total)
                      for (upstream, host), (up, total) in sorted(fewest.items())))
    picture = ROOT / ".cache" / "bench" / ("rollout-%s-%s.png" % (playbook.split(".")[0], step))
    picture.parent.mkdir(parents=True, exist_ok=True)
    write_timeline(picture, "%s (%s), run %s" % (playbook, step, rid), load.results(), load.marks,
                   [(host, dict(s, end=epoch(s["at"]))) for host, s in host_steps],
                   serving, dict((private_address(h), h) for h in APP_HOSTS))
    print("  timeline: %s" % picture)
    RESENDS.setdefault("runtime", []).append(during["stale_retries"])
    assert during["non_2xx"] == 0 and during["socket_errors"] == 0


def test_reload_path_resends(bench_size):
    """The reloads one rolling restart made on the reload path, under the same load."""
    reloads = 2 * len(APP_HOSTS) * len(REPLICAS)
    load = start_load(workers=PLANS[bench_size["name"]]["workers"], baseline=10, resend=True)
    for _ in range(reloads):
        on("lb1", "systemctl", "reload", "nginx")
        time.sleep(RELOAD_SPACING[bench_size["name"]])
    stats = finish_load(load, reloads_allowed=True)
    before, during = stats["before"], stats["during"]
    runtime = RESENDS.get("runtime", [])
    print("\nreload path (%d reloads, %d s apart): %d requests, %d resends (%.2f%%), %d non-2xx, %d socket errors, "
          "p99 during / before %.2f | runtime path resends: %s"
          % (reloads, RELOAD_SPACING[bench_size["name"]], during["requests"], during["stale_retries"],
             100.0 * during["stale_retries"] / during["requests"], during["non_2xx"], during["socket_errors"],
             during["p99_ms"] / before["p99_ms"], ", ".join(map(str, runtime)) or "not run"))
    assert during["non_2xx"] == 0 and during["socket_errors"] == 0
