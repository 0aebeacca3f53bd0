#!/usr/bin/env python3
"""Runs molecule scenarios one after the other and prints a timing table.

With no arguments it runs every scenario under molecule/, in ORDER first (cheap
scenarios that warm the apt cache before the heavy ones), then any others
alphabetically. Exit status is non-zero if any scenario failed.
"""
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ORDER = ["smoke", "base", "docker", "postgresql", "redis", "rabbitmq", "nginx", "rollout_modules",
         "compose_stack", "backup", "full_stack"]


def discover():
    found = sorted(p.parent.name for p in (ROOT / "molecule").glob("*/molecule.yml"))
    return [s for s in ORDER if s in found] + [s for s in found if s not in ORDER]


def main(argv):
    scenarios = argv or discover()
    unknown = [s for s in scenarios if not (ROOT / "molecule" / s / "molecule.yml").exists()]
    if unknown:
        print(f"run_scenarios: no such scenario: {', '.join(unknown)}", file=sys.stderr)
        return 2
    results = []
    for name in scenarios:
        print(f"\n=== molecule test -s {name}", flush=True)
        t0 = time.monotonic()
        rc = subprocess.call(["molecule", "test", "-s", name], cwd=ROOT)
        results.append((name, rc, time.monotonic() - t0))
        if rc != 0:
            subprocess.call(["molecule", "destroy", "-s", name], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print("\nscenario            result   seconds")
    for name, rc, secs in results:
        print(f"{name:<19} {'passed' if rc == 0 else 'FAILED':<8} {secs:7.0f}")
    failed = sum(1 for _, rc, _ in results if rc != 0)
    print(f"molecule: {len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
