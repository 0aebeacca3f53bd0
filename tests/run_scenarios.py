#!/usr/bin/env python3
"""Runs molecule scenarios and prints a timing table.

    run_scenarios.py [--jobs N] [SCENARIO ...]

With no scenario names it runs every scenario under molecule/, those in ORDER
first (longest first, so that the last to start are short and the jobs end
together), then any others alphabetically. --jobs runs that many scenarios at once (their instance
names, networks and addresses are distinct); each scenario's output goes to
.cache/molecule-logs/<scenario>.log and is printed when it ends. Exit status is
non-zero if any scenario failed.
"""
import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOGS = ROOT / ".cache" / "molecule-logs"
ORDER = ["base", "nginx", "docker", "compose_stack", "rabbitmq", "rollout_modules", "postgresql", "prometheus", "redis",
         "backup", "smoke"]


def discover():
    found = sorted(p.parent.name for p in (ROOT / "molecule").glob("*/molecule.yml"))
    return [s for s in ORDER if s in found] + [s for s in found if s not in ORDER]


def run_one(name):
    log = LOGS / f"{name}.log"
    t0 = time.monotonic()
    with open(log, "w") as out:
        rc = subprocess.call(["molecule", "test", "-s", name], cwd=ROOT, stdout=out,
                             stderr=subprocess.STDOUT, env=dict(os.environ, NO_COLOR="1"))
    secs = time.monotonic() - t0
    if rc != 0:
        subprocess.call(["molecule", "destroy", "-s", name], cwd=ROOT,
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    text = log.read_text(errors="replace")
    print(f"\n=== molecule test -s {name}: {'passed' if rc == 0 else 'FAILED'} in {secs:.0f}s", flush=True)
    # a failing scenario prints everything, a passing one its closing recap
    print(text if rc else text[-2500:], flush=True)
    return name, rc, secs


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("MOLECULE_JOBS", "1")))
    parser.add_argument("scenarios", nargs="*")
    args = parser.parse_args(argv)
    scenarios = args.scenarios or discover()
    unknown = [s for s in scenarios if not (ROOT / "molecule" / s / "molecule.yml").exists()]
    if unknown:
        print(f"run_scenarios: no such scenario: {', '.join(unknown)}", file=sys.stderr)
        return 2
    LOGS.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(run_one, scenarios))
    print(f"\nscenario            result   seconds   (jobs={args.jobs}, wall {time.monotonic() - t0:.0f}s)")
    for name, rc, secs in results:
        print(f"{name:<19} {'passed' if rc == 0 else 'FAILED':<8} {secs:7.0f}")
    failed = sum(1 for _, rc, _ in results if rc != 0)
    print(f"molecule: {len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
