"""Backup benchmarks on the lab (one run, ratios printed, nothing timed is asserted):
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
