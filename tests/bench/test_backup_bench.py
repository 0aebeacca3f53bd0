"""Backup benchmarks on the lab (one run, ratios printed, nothing timed is asserted):
  - on incompressible data (random bytea): pg_backup and the playbook vs `pg_dump -Fc --compress=zstd | upload`
  - on compressible data (pgbench): pg_backup and the playbook vs `pg_dump -Fc | aws s3 cp -` (same gzip
    compression; zstd shown too)
  - where the playbook's time beyond the module goes (Ansible start-up, each task)
  - extra local disk written during the backup
  - uploader peak RSS at two stream sizes (1 and 4 GiB at full size)
  - restore -j 2 vs -j 1
Run: pytest -s tests/bench --bench-size=small|full"""
import json
import os
import re
import statistics
import subprocess
import tempfile
import time
import uuid

import pytest

from conftest import ROOT, report

MIB = 1024.0 ** 2
ANSIBLE_ENV = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1")  # profile_tasks is on


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


def rounds_of(bench_size):
    """Interleaved rounds per comparison: 3 at full size (the median is reported), so that a burst
    of load elsewhere on the shared machine does not land on one side of a ratio only."""
    return 3 if bench_size["name"] == "full" else 1


def medians(rounds):
    return {name: statistics.median(seconds) for name, seconds in rounds.items()}


def test_backup_vs_baseline_disk_and_restore_jobs(bench_host, bench_size, bench_db, prefix):
    """Module (gzip as the baseline, and the default zstd) and playbook (gzip) against
    `pg_dump -Fc | aws s3 cp -` on pgbench data."""
    rounds = {"baseline": [], "gzip": [], "zstd": [], "playbook": []}
    for n in range(rounds_of(bench_size)):
        rounds["baseline"].append(bench_host.run("baseline", database=bench_db,
                                                 key="%s/baseline-%d.pgc" % (prefix, n))["seconds"])
        ours = bench_host.run("backup", database=bench_db, s3_prefix=prefix, compression="gzip")
        rounds["gzip"].append(ours["seconds"])
        ours_zstd = bench_host.run("backup", database=bench_db, s3_prefix=prefix + "-zstd", compression="auto")
        rounds["zstd"].append(ours_zstd["seconds"])
        assert ours["rows"] == ours_zstd["rows"] > 0
        seconds, tasks = backup_playbook(bench_db, prefix + "/playbook", "gzip")
        rounds["playbook"].append(seconds)
    m = medians(rounds)
    report("backup wall time (median of %d rounds): ours(gzip) %.1fs / baseline %.1fs = %.2fx (goal <= 1.05x); "
           "ours(auto/zstd) %.1fs = %.2fx; playbook(gzip) %.1fs = %.2fx (goal <= 1.2x); rounds %s"
           % (len(rounds["baseline"]), m["gzip"], m["baseline"], m["gzip"] / m["baseline"], m["zstd"],
              m["zstd"] / m["baseline"], m["playbook"], m["playbook"] / m["baseline"], json.dumps(rounds)))
    report_playbook_time(tasks)
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
    _cleanup(bench_host, prefix)
    report("uploader peak RSS: %.0f MiB at %.2f GiB, %.0f MiB at %.2f GiB, ratio %.2f (goal <= 160 MiB and flat)"
           % (a["peak_rss_mib"], small / 1024.0 ** 3, b["peak_rss_mib"], large / 1024.0 ** 3,
              b["peak_rss_mib"] / a["peak_rss_mib"]))


def _cleanup(bench_host, prefix):
    """Deletes every version under the benchmark's prefixes: the lab's bucket is versioned, so a plain
    delete would only hide the objects, and the lab's S3 holds its objects in 6 GiB of RAM."""
    import boto3
    from botocore.config import Config
    v = bench_host.vars
    s3 = boto3.client("s3", endpoint_url=v["keelson_s3_endpoint_url"], aws_access_key_id=v["keelson_s3_access_key"],
                      aws_secret_access_key=v["keelson_s3_secret_key"], region_name="us-east-1",
                      config=Config(s3={"addressing_style": "path"}))
    for root in (prefix + "/", prefix + "-zstd/"):
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=v["keelson_s3_bucket"], Prefix=root):
            for obj in page.get("Versions", []) + page.get("DeleteMarkers", []):
                s3.delete_object(Bucket=v["keelson_s3_bucket"], Key=obj["Key"], VersionId=obj["VersionId"])


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


def backup_playbook(database, s3_prefix, compression):
    """playbooks/backup.yml from this controller, as cron runs it: (wall seconds, {task: seconds})."""
    fd, extra = tempfile.mkstemp(suffix=".json")
    with os.fdopen(fd, "w") as handle:
        json.dump({"backup_databases": [database], "backup_s3_prefix": s3_prefix,
                   "backup_compression": compression}, handle)
    try:
        started = time.monotonic()
        res = subprocess.run(["ansible-playbook", "-i", str(ROOT / "inventories" / "lab" / "hosts.yml"),
                              str(ROOT / "playbooks" / "backup.yml"), "-e", "@" + extra, "-l", "db1"],
                             cwd=ROOT, env=ANSIBLE_ENV, capture_output=True, text=True, timeout=7200)
        seconds = time.monotonic() - started
    finally:
        os.unlink(extra)
    assert res.returncode == 0, res.stdout + res.stderr
    return seconds, {m.group(1).strip(): float(m.group(2))
                     for m in re.finditer(r"^(.+?) -+ (\d+\.\d+)s$", res.stdout, re.M)}  # profile_tasks


def report_playbook_time(tasks):
    started = time.monotonic()
    subprocess.run(["ansible", "-i", str(ROOT / "inventories" / "lab" / "hosts.yml"), "db1", "-m",
                    "ansible.builtin.ping"], cwd=ROOT, env=ANSIBLE_ENV, capture_output=True, timeout=600)
    startup = time.monotonic() - started
    report("playbook time: ansible start-up and one module round trip (ping) %.1fs; tasks: %s"
           % (startup, ", ".join("%s %.1fs" % (k, v) for k, v in sorted(tasks.items(), key=lambda kv: -kv[1])[:6])))


def test_incompressible_backup_module_and_playbook_vs_bare_pipeline(bench_host, bench_size, random_db, prefix):
    """Module and playbook against `pg_dump -Fc --compress=zstd | upload` on random bytea."""
    name, mib = random_db
    rounds = {"baseline": [], "module": [], "playbook": []}
    for n in range(rounds_of(bench_size)):
        key = "%s/random-baseline-%d.pgc" % (prefix, n)
        rounds["baseline"].append(bench_host.run("baseline", database=name, key=key,
                                                 pg_dump_args=["--compress=zstd"])["seconds"])
        rounds["module"].append(bench_host.run("backup", database=name, s3_prefix=prefix + "/random-module",
                                               compression="zstd")["seconds"])
        seconds, tasks = backup_playbook(name, prefix + "/random-playbook", "zstd")
        rounds["playbook"].append(seconds)
        _cleanup(bench_host, prefix)  # 1.2 GB a round at full size
    m = medians(rounds)
    report("incompressible (%d MiB random bytea, median of %d rounds): bare pg_dump --compress=zstd | upload "
           "%.1fs; pg_backup module %.1fs = %.2fx (goal <= 1.05x); playbook %.1fs = %.2fx (goal <= 1.2x); "
           "rounds %s" % (mib, len(rounds["baseline"]), m["baseline"], m["module"], m["module"] / m["baseline"],
                          m["playbook"], m["playbook"] / m["baseline"], json.dumps(rounds)))
    report_playbook_time(tasks)
