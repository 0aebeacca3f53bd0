"""Benchmark options and lab access. `--bench-size=small` (CI, well under a minute
of work) or `full` (a pgbench database of at least 2 GB, streams of 1 and 4 GiB)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SIZES = {
    # pgbench scale (about 15 MB of table data per unit), uploader RSS stream sizes
    "small": {"scale": 1, "streams": [32 * 1024 ** 2, 128 * 1024 ** 2]},
    "full": {"scale": 150, "streams": [1024 ** 3, 4 * 1024 ** 3]},
}


def pytest_addoption(parser):
    parser.addoption("--bench-size", choices=sorted(SIZES), default="small",
                     help="small for CI, full for the 2 GB runs")


@pytest.fixture(scope="session")
def bench_size(request):
    name = request.config.getoption("--bench-size")
    return dict(SIZES[name], name=name)


class BenchHost:
    """Runs bench/driver.py on the db host with the collection's plugins copied
    next to it; parameters (credentials included) travel on stdin, not argv."""

    def __init__(self):
        inventory = yaml.safe_load((ROOT / "inventories" / "lab" / "hosts.yml").read_text())
        self.vars = yaml.safe_load((ROOT / "inventories" / "lab" / "group_vars" / "all" / "lab_generated.yml").read_text())
        hosts = inventory["all"]["children"]["db"]["hosts"]
        name = sorted(hosts)[0]
        self.container = hosts[name].get("keelson_lab_container", "keelson-lab-" + name)
        self.sh("rm -rf /root/keelson-bench && mkdir -p /root/keelson-bench/ansible_collections/keelson/stack")
        tar = subprocess.run(["tar", "-C", str(ROOT), "-c", "plugins"], capture_output=True, check=True).stdout
        subprocess.run(["docker", "exec", "-i", self.container, "tar", "-C",
                        "/root/keelson-bench/ansible_collections/keelson/stack", "-x"], input=tar, check=True)
        driver = (Path(__file__).parent / "driver.py").read_bytes()
        subprocess.run(["docker", "exec", "-i", self.container, "sh", "-c", "cat > /root/keelson-bench/driver.py"],
                       input=driver, check=True)

    def sh(self, script, user=None, timeout=7200):
        argv = ["docker", "exec", "-i"] + (["-u", user] if user else []) + [self.container, "sh", "-c", script]
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        assert res.returncode == 0, res.stdout + res.stderr
        return res.stdout

    def run(self, action, **params):
        params = dict(params, action=action, s3_bucket=self.vars["keelson_s3_bucket"],
                      s3_endpoint_url=self.vars["keelson_s3_endpoint_url"],
                      s3_access_key=self.vars["keelson_s3_access_key"],
                      s3_secret_key=self.vars["keelson_s3_secret_key"])
        res = subprocess.run(["docker", "exec", "-i", self.container, "python3", "/root/keelson-bench/driver.py"],
                             input=json.dumps(params), capture_output=True, text=True, timeout=7200)
        assert res.returncode == 0, res.stdout + res.stderr
        return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def bench_host():
    try:
        return BenchHost()
    except (OSError, subprocess.CalledProcessError, KeyError) as exc:
        pytest.fail("the lab is not up (make lab): %s" % exc)


def report(line):
    sys.stdout.write("\nBENCH " + line + "\n")
    sys.stdout.flush()
