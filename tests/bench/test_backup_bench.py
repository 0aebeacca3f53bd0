"""Backup benchmarks on the lab (one run, ratios printed, nothing timed is asserted):
  - on incompressible data (random bytea): pg_backup and the playbook vs `pg_dump -Fc --compress=zstd | upload`
  - our backup's wall time vs `pg_dump -Fc | aws s3 cp -` (same gzip compression; zstd shown too)
  - extra local disk written during the backup
  - uploader peak RSS at two stream sizes (1 and 4 GiB at full size)
  - restore -j 2 vs -j 1
Run: pytest -s tests/bench --bench-size=small|full"""
import uuid

import pytest

from conftest import report

MIB = 1024.0 ** 2


@pytest.fixture(scope="module")
def bench_db(bench_host, bench_size):
    name = "keelson_bench_%s" % bench_size["name"]
    rows = bench_size["scale"] * 100000
    have = bench_host.sh("psql -XAtc \"SELECT 1 FROM pg_database WHERE datname = '%s'\"" % name, user="postgres")
    if have.strip() != "1" or bench_host.sh("psql -XAt -d %s -c 'SELECT count(*) FROM pgbench_accounts'" % name,
                                            user="postgres").strip() != str(rows):
        bench_host.sh("cd / && dropdb --if-exists %s && createdb %s && pgbench -i -q -s %d %s"
                      % (name, name, bench_size["scale"], name), user="postgres")
    size = int(bench_host.sh("psql -XAtc \"SELECT pg_database_size('%s')\"" % name, user="postgres"))
    report("database %s: %.0f MiB (pgbench scale %d)" % (name, size / MIB, bench_size["scale"]))
    return name


@pytest.fixture(scope="module")
def prefix():
    prefix = "bench/%s" % uuid.uuid4().hex[:10]
    return prefix


def test_backup_vs_baseline_disk_and_restore_jobs(bench_host, bench_db, prefix):
    baseline = bench_host.run("baseline", database=bench_db, key=prefix + "/baseline.pgc")
    ours = bench_host.run("backup", database=bench_db, s3_prefix=prefix, compression="gzip")
    ours_zstd = bench_host.run("backup", database=bench_db, s3_prefix=prefix + "-zstd", compression="auto")
    assert ours["rows"] == ours_zstd["rows"] > 0
    report("backup wall time: ours(gzip) %.1fs / baseline %.1fs = %.2fx (goal <= 1.1x); ours(auto/zstd) %.1fs = %.2fx"
           % (ours["seconds"], baseline["seconds"], ours["seconds"] / baseline["seconds"],
              ours_zstd["seconds"], ours_zstd["seconds"] / baseline["seconds"]))
    report("extra local disk written during our backup: %.2f MiB (goal <= 10 MiB); stored %.1f MiB"
           % (ours["disk_written_mib"], ours["bytes"] / MIB))

    one = bench_host.run("restore", database=bench_db, s3_prefix=prefix, backup=ours["backup_id"], jobs=1)
    two = bench_host.run("restore", database=bench_db, s3_prefix=prefix, backup=ours["backup_id"], jobs=2)
    assert one["rows"] == two["rows"] == ours["rows"]
    report("restore -j 2 %.1fs / -j 1 %.1fs = %.2fx" % (two["seconds"], one["seconds"], two["seconds"] / one["seconds"]))
    _cleanup(bench_host, prefix)


def test_uploader_rss_is_flat(bench_host, bench_size, prefix):
    small, large = bench_size["streams"]
    a = bench_host.run("stream", size=small, key="%s/rss-a" % prefix)
    b = bench_host.run("stream", size=large, key="%s/rss-b" % prefix)
    assert a["bytes"] == small and b["bytes"] == large
    report("uploader peak RSS: %.0f MiB at %.2f GiB, %.0f MiB at %.2f GiB, ratio %.2f (goal <= 160 MiB and flat)"
           % (a["peak_rss_mib"], small / 1024.0 ** 3, b["peak_rss_mib"], large / 1024.0 ** 3,
              b["peak_rss_mib"] / a["peak_rss_mib"]))


def _cleanup(bench_host, prefix):
    import boto3
    from botocore.config import Config
    v = bench_host.vars
    s3 = boto3.client("s3", endpoint_url=v["keelson_s3_endpoint_url"], aws_access_key_id=v["keelson_s3_access_key"],
                      aws_secret_access_key=v["keelson_s3_secret_key"], region_name="us-east-1",
                      config=Config(s3={"addressing_style": "path"}))
    for root in (prefix + "/", prefix + "-zstd/"):
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=v["keelson_s3_bucket"], Prefix=root):
            for obj in page.get("Contents", []):
                s3.delete_object(Bucket=v["keelson_s3_bucket"], Key=obj["Key"])


@pytest.fixture(scope="module")
def random_db(bench_host, bench_size):
    """Poorly compressible data: random bytea (32 MiB small, about 400 MiB full)."""
    mib = 400 if bench_size["name"] == "full" else 32
    name = "keelson_bench_random_%d" % mib
    have = bench_host.sh("psql -XAtc \"SELECT 1 FROM pg_database WHERE datname = '%s'\"" % name, user="postgres")
    if have.strip() != "1":
        bench_host.sh("cd / && createdb %s && psql -Xq -d %s -c \"CREATE TABLE blobs (id int, b bytea); "
                      "INSERT INTO blobs SELECT g, decode(string_agg(lpad(to_hex((random() * 4294967295)::bigint), 8, "
                      "'0'), ''), 'hex') FROM generate_series(1, %d) g, generate_series(1, 8192) w GROUP BY g;\""
                      % (name, name, mib * 32), user="postgres")
    return name, mib


def test_incompressible_backup_module_and_playbook_vs_bare_pipeline(bench_host, random_db, prefix):
    """Module and playbook against `pg_dump -Fc --compress=zstd | upload` on random bytea, and where
    the playbook's extra time goes."""
    import json
    import os
    import re
    import subprocess
    import tempfile
    import time
    from pathlib import Path

    name, mib = random_db
    baseline = bench_host.run("baseline", database=name, key=prefix + "/random-baseline.pgc",
                              pg_dump_args=["--compress=zstd"])
    module = bench_host.run("backup", database=name, s3_prefix=prefix + "/random-module", compression="zstd")
    root = Path(__file__).resolve().parents[2]
    fd, extra = tempfile.mkstemp(suffix=".json")
    with os.fdopen(fd, "w") as handle:
        json.dump({"backup_databases": [name], "backup_s3_prefix": prefix + "/random-playbook",
                   "backup_compression": "zstd"}, handle)
    env = dict(os.environ, ANSIBLE_CONFIG=str(root / "ansible.cfg"), ANSIBLE_NOCOLOR="1")  # profile_tasks is on
    try:
        started = time.monotonic()
        res = subprocess.run(["ansible-playbook", "-i", str(root / "inventories" / "lab" / "hosts.yml"),
                              str(root / "playbooks" / "backup.yml"), "-e", "@" + extra, "-l", "db1"],
                             cwd=root, env=env, capture_output=True, text=True, timeout=7200)
        playbook = time.monotonic() - started
        startup = time.monotonic()
        subprocess.run(["ansible", "-i", str(root / "inventories" / "lab" / "hosts.yml"), "db1", "-m",
                        "ansible.builtin.ping"], cwd=root, env=env, capture_output=True, timeout=600)
        startup = time.monotonic() - startup
    finally:
        os.unlink(extra)
    assert res.returncode == 0, res.stdout + res.stderr
    tasks = {}
    for m in re.finditer(r"^(.+?) -+ (\d+\.\d+)s$", res.stdout, re.M):
        tasks[m.group(1).strip()] = float(m.group(2))
    report("incompressible (%d MiB random bytea): bare pg_dump --compress=zstd | upload %.1fs; pg_backup module "
           "%.1fs = %.2fx (goal <= 1.05x); playbook %.1fs = %.2fx (goal <= 1.2x)"
           % (mib, baseline["seconds"], module["seconds"], module["seconds"] / baseline["seconds"], playbook,
              playbook / baseline["seconds"]))
    report("playbook time: ansible start-up and one module round trip (ping) %.1fs; tasks: %s"
           % (startup, ", ".join("%s %.1fs" % (k, v) for k, v in sorted(tasks.items(), key=lambda kv: -kv[1])[:6])))
    _cleanup(bench_host, prefix)
