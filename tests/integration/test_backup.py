"""Backup and restore against the lab: PostgreSQL on db1, Ceph RGW, the real
playbooks. Fault tests: pg_dump killed halfway, a flipped byte, two backups at
once, wrong S3 credentials, the database down, S3 stalls, SIGTERM on either
side, a PostgreSQL restart, lock waits, deadlines, abandoned uploads."""
import glob
import hashlib
import json
import os
import re
import signal
import subprocess
import threading
import time

import pytest

from conftest import KNOWN_TABLES, container_pid
from test_backup_stream_s3 import assert_upload_gone

SUMMARY = re.compile(r"keelson-(backup|restore|verify) \S+/(\S+) (OK|FAILED): (.*)")


def summaries(output):
    """Summary lines of a run (the YAML callback may fold them; unfold first)."""
    text = re.sub(r"'\n\s+", "' ", output)
    text = re.sub(r"\n\s{8,}", " ", text)
    return [m.groups() for m in SUMMARY.finditer(text)]


def bvars(prefix, databases, **more):
    values = {"backup_databases": list(databases), "backup_s3_prefix": prefix}
    values.update(more)
    return values


def committed(lab, s3, prefix, database):
    """{backup id: manifest} under prefix/database/."""
    bucket = lab.vars["keelson_s3_bucket"]
    result = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="%s/%s/" % (prefix, database)):
        for obj in page.get("Contents", []):
            if obj["Key"].endswith("/manifest.json"):
                body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
                result[obj["Key"].split("/")[-2]] = json.loads(body)
    return result


def keys_under(lab, s3, prefix):
    bucket = lab.vars["keelson_s3_bucket"]
    keys = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            keys[obj["Key"]] = obj["ETag"]
    return keys


def wait_for(predicate, what, attempts=1200):
    """Polls a condition (each attempt blocks on a real command, so no fixed sleeps)."""
    for _ in range(attempts):
        value = predicate()
        if value:
            return value
        subprocess.run(["sleep", "0.25"], check=True)
    raise AssertionError("gave up waiting for " + what)


def table_counts(lab, database):
    rows = lab.psql(database, "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c "
                              "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' "
                              "AND n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1;")
    counts = {}
    for name in rows:
        counts[name] = int(lab.psql(database, "SELECT count(*) FROM ONLY %s;" % name)[0])
    return counts


def test_backup_restore_roundtrip(lab, s3, run_prefix, known_db):
    prefix = run_prefix + "/roundtrip"
    res = lab.playbook("backup.yml", bvars(prefix, [known_db]))
    assert res.returncode == 0, res.output
    lines = summaries(res.output)
    assert [(kind, db, status) for kind, db, status, _ in lines] == [("backup", known_db, "OK")], res.output

    manifests = committed(lab, s3, prefix, known_db)
    assert len(manifests) == 1
    manifest = next(iter(manifests.values()))
    assert manifest["row_counts"] == KNOWN_TABLES
    assert manifest["compression"]["method"] in ("zstd", "gzip")
    assert manifest["encryption"] == {"method": "none"}
    assert set(manifest["objects"]) == {"dump", "globals"}
    stored = s3.get_object(Bucket=lab.vars["keelson_s3_bucket"], Key=manifest["objects"]["dump"]["key"])["Body"].read()
    assert stored[:5] == b"PGDMP"
    assert hashlib.sha256(stored).hexdigest() == manifest["objects"]["dump"]["sha256"]
    assert len(stored) == manifest["objects"]["dump"]["bytes"]

    metrics = lab.sh("cat /var/lib/prometheus/node-exporter/keelson_backup_%s.prom" % known_db).stdout
    assert 'keelson_backup_last_run_success{database="%s"} 1.0' % known_db in metrics

    before = lab.databases()
    res = lab.playbook("restore.yml", bvars(prefix, [known_db], backup_restore_database=known_db))
    assert res.returncode == 0, res.output
    created = lab.databases() - before
    assert created == {"%s_restore_%s" % (known_db, manifest["id"].lower())}, created
    scratch = created.pop()
    try:
        assert table_counts(lab, scratch) == KNOWN_TABLES
    finally:
        lab.psql("postgres", "DROP DATABASE %s;" % scratch)

    # Restoring onto an existing database needs the explicit confirmation.
    res = lab.playbook("restore.yml", bvars(prefix, [known_db], backup_restore_database=known_db,
                                            target=known_db))
    assert res.returncode != 0
    assert "needs confirm_overwrite=%s" % known_db in res.output
    lab.psql(known_db, "INSERT INTO items VALUES (5000, 'added after the backup');")
    res = lab.playbook("restore.yml", bvars(prefix, [known_db], backup_restore_database=known_db,
                                            target=known_db, confirm_overwrite=known_db))
    assert res.returncode == 0, res.output
    assert table_counts(lab, known_db) == KNOWN_TABLES

    # The scheduled test restore: latest backup into a scratch database, dropped, metric written.
    before = lab.databases()
    res = lab.playbook("verify_backups.yml", bvars(prefix, [known_db]))
    assert res.returncode == 0, res.output
    assert [s[:3] for s in summaries(res.output)] == [("verify", known_db, "OK")]
    assert lab.databases() == before
    metrics = lab.sh("cat /var/lib/prometheus/node-exporter/keelson_backup_verify_%s.prom" % known_db).stdout
    assert 'keelson_backup_verify_last_run_success{database="%s"} 1.0' % known_db in metrics


def test_encrypted_backup_secrets_stay_out_of_ps_output_and_files(lab, s3, run_prefix, known_db, tmp_path):
    prefix = run_prefix + "/encrypted"
    # the backup role installs age only where recipients are configured; the lab's are not
    lab.sh("command -v age-keygen >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq age >/dev/null")
    identity = lab.sh("age-keygen 2>/dev/null").stdout  # printed, never stored on the db host
    recipient = re.search(r"public key: (age1\w+)", identity).group(1)
    secret_key = re.search(r"(AGE-SECRET-KEY-\w+)", identity).group(1)
    password = "it-%s" % re.sub(r"\W", "", secret_key[-16:])
    lab.psql("postgres", "DROP ROLE IF EXISTS keelson_it_backup; "
                         "CREATE ROLE keelson_it_backup LOGIN SUPERUSER PASSWORD '%s';" % password)
    secrets = [lab.vars["keelson_s3_secret_key"], secret_key, password]

    samples = []
    stop = threading.Event()

    def sample_ps():
        while not stop.is_set():
            for argv in (["docker", "exec", lab.db_container, "ps", "-eo", "args", "e"], ["ps", "-eo", "args"]):
                samples.append(subprocess.run(argv, capture_output=True, text=True).stdout)

    sampler = threading.Thread(target=sample_ps)
    sampler.start()
    try:
        res = lab.playbook("backup.yml", bvars(prefix, [known_db], backup_age_recipients=[recipient],
                                               backup_pg_host="127.0.0.1", backup_pg_user="keelson_it_backup",
                                               backup_pg_password=password), verbose=True)
    finally:
        stop.set()
        sampler.join()
    assert res.returncode == 0, res.output
    assert any("pg_dump" in s for s in samples), "the sampler never saw pg_dump running"
    for secret in secrets:
        assert secret not in res.output
        assert not any(secret in s for s in samples), "a secret appeared in ps output"
    leftovers = lab.sh("grep -rlsF -e %s -e %s /tmp /var/tmp /run /root /var/lib/postgresql 2>/dev/null || true"
                       % (password, secret_key)).stdout.split()
    assert leftovers == []

    manifest = next(iter(committed(lab, s3, prefix, known_db).values()))
    assert manifest["encryption"] == {"method": "age", "recipients": [recipient]}
    stored = s3.get_object(Bucket=lab.vars["keelson_s3_bucket"], Key=manifest["objects"]["dump"]["key"])["Body"].read()
    assert stored.startswith(b"age-encryption.org/v1")

    res = lab.playbook("restore.yml", bvars(prefix, [known_db], backup_restore_database=known_db))
    assert res.returncode != 0 and "age_identity is required" in res.output

    before = lab.databases()
    res = lab.playbook("restore.yml", bvars(prefix, [known_db], backup_restore_database=known_db,
                                            backup_age_identity=identity, target="keelson_it_decrypted"),
                       verbose=True)
    assert res.returncode == 0, res.output
    for secret in secrets:
        assert secret not in res.output
    try:
        assert table_counts(lab, "keelson_it_decrypted") == KNOWN_TABLES
    finally:
        lab.psql("postgres", "DROP DATABASE IF EXISTS keelson_it_decrypted;")
        lab.psql("postgres", "DROP ROLE IF EXISTS keelson_it_backup;")
    assert lab.databases() == before


def test_flipped_byte_is_refused_before_any_database_is_touched(lab, s3, run_prefix, known_db):
    prefix = run_prefix + "/flip"
    assert lab.playbook("backup.yml", bvars(prefix, [known_db])).returncode == 0
    manifest = next(iter(committed(lab, s3, prefix, known_db).values()))
    bucket, key = lab.vars["keelson_s3_bucket"], manifest["objects"]["dump"]["key"]
    data = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    data[len(data) // 2] ^= 0x01
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(data))

    activity = "SELECT count(*) FROM pg_stat_database WHERE datname LIKE 'keelson_it_restore%';"
    before = lab.databases()
    res = lab.playbook("restore.yml", bvars(prefix, [known_db], backup_restore_database=known_db))
    assert res.returncode != 0
    lines = summaries(res.output)
    assert len(lines) == 1 and lines[0][2] == "FAILED"
    assert "checksum mismatch" in lines[0][3] and "no database was touched" in lines[0][3]
    assert lab.databases() == before
    assert lab.psql("postgres", activity) == ["0"]


def test_pg_dump_killed_halfway_leaves_nothing_behind(lab, s3, run_prefix, big_db):
    prefix = run_prefix + "/kill"
    base = "%s/%s/" % (prefix, big_db)
    res = lab.playbook("backup.yml", bvars(prefix, [big_db], backup_compression="none"))
    assert res.returncode == 0, res.output
    previous = keys_under(lab, s3, base)
    assert len([k for k in previous if k.endswith("manifest.json")]) == 1

    proc, vars_file = lab.playbook("backup.yml", bvars(prefix, [big_db], backup_compression="none"), background=True)
    try:
        # Halfway: pg_dump is copying the big table, after the schema and the small tables went out.
        # Kill exactly our pg_dump, by pid (the one dumping this database in an exported snapshot), in
        # the same command that sees the COPY: on a loaded machine one docker exec can outlast the COPY.
        kill_while_copying = (
            "n=$(runuser -u postgres -- psql -XAt -d postgres -c \"SELECT count(*) FROM pg_stat_activity "
            "WHERE query LIKE 'COPY public.pgbench_accounts %%'\"); [ \"$n\" = 1 ] || exit 0; "
            "pids=$(for p in $(pgrep -x pg_dump); do tr '\\0' ' ' < /proc/$p/cmdline | "
            "grep -q -- '--snapshot=.* -d %s' && echo $p; done); "
            "[ $(echo $pids | wc -w) = 1 ] && kill -KILL $pids; echo ${pids:-none}" % big_db)
        pids = wait_for(lambda: lab.sh(kill_while_copying).stdout.split(), "pg_dump copying pgbench_accounts")
        assert len(pids) == 1 and pids != ["none"], pids
        output = proc.communicate(timeout=600)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
        os.unlink(vars_file)
    assert proc.returncode != 0
    lines = summaries(output)
    assert len(lines) == 1 and lines[0][2] == "FAILED", output
    assert "pg_dump killed by signal 9" in lines[0][3]
    match = re.search(r"upload of (\S+) \(multipart upload (\S+) aborted\)", lines[0][3])
    assert match, lines[0][3]
    key, upload_id = match.groups()
    assert key.startswith(base) and key.endswith("/dump.pgc")
    new_dir = key.rsplit("/", 1)[0] + "/"
    assert not [k for k in keys_under(lab, s3, base) if k.startswith(new_dir)], "objects left under " + new_dir
    assert_upload_gone(s3, lab.vars["keelson_s3_bucket"], key, upload_id)
    assert keys_under(lab, s3, base) == previous  # the previous backup, manifest included, untouched
    metrics = lab.sh("cat /var/lib/prometheus/node-exporter/keelson_backup_%s.prom" % big_db).stdout
    assert 'keelson_backup_last_run_success{database="%s"} 0.0' % big_db in metrics


def test_second_concurrent_backup_fails_fast_naming_the_lock(lab, s3, run_prefix, known_db):
    prefix = run_prefix + "/lock"
    # Hold a table lock so the first backup's pg_dump waits (deterministically) while it holds the backup lock.
    blocker = subprocess.Popen(["docker", "exec", "-i", "-u", "postgres", lab.db_container, "psql", "-X", "-q", "-A", "-t",
                                "-d", known_db], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    blocker.stdin.write("BEGIN; LOCK TABLE items IN ACCESS EXCLUSIVE MODE; SELECT 'locked';\n")
    blocker.stdin.flush()
    assert blocker.stdout.readline().strip() == "locked"
    first, vars_file = lab.playbook("backup.yml", bvars(prefix, [known_db]), background=True)
    try:
        waiting = ("SELECT count(*) > 0 FROM pg_stat_activity WHERE datname = '%s' AND wait_event_type = 'Lock' "
                   "AND query LIKE 'LOCK TABLE%%';" % known_db)
        wait_for(lambda: lab.psql("postgres", waiting) == ["t"], "the first backup's pg_dump waiting for its table lock")
        second = lab.playbook("backup.yml", bvars(prefix, [known_db]))
        assert first.poll() is None, "the first backup ended while its pg_dump was blocked"
        blocker.stdin.write("COMMIT;\n")
        blocker.stdin.close()
        first_output = first.communicate(timeout=900)[0]
    finally:
        if first.poll() is None:
            first.kill()
        if blocker.poll() is None:
            blocker.kill()
        os.unlink(vars_file)
    assert second.returncode != 0
    lines = summaries(second.output)
    assert len(lines) == 1 and lines[0][2] == "FAILED"
    assert re.search(r"backup of %s is locked by another run \(pid \d+ on \S+ since " % known_db, lines[0][3]), lines
    assert first.returncode == 0, first_output
    assert len(committed(lab, s3, prefix, known_db)) == 1


def test_wrong_s3_credentials_fail_with_one_line(lab, run_prefix, known_db):
    wrong = "not-the-secret-0123456789"
    res = lab.playbook("backup.yml", bvars(run_prefix + "/creds", [known_db], backup_s3_secret_key=wrong), verbose=True)
    assert res.returncode != 0
    lines = summaries(res.output)
    assert len(lines) == 1 and lines[0][2] == "FAILED"
    assert re.search(r"S3 HeadBucket \S+ failed: (403|SignatureDoesNotMatch|InvalidAccessKeyId|AccessDenied)", lines[0][3])
    assert wrong not in res.output


def test_database_down_fails_with_one_line(lab, run_prefix, known_db):
    # Nothing listens on this port: the same client error as a stopped server, without stopping the shared one.
    res = lab.playbook("backup.yml", bvars(run_prefix + "/down", [known_db], backup_pg_host="127.0.0.1",
                                           backup_pg_port=5999))
    assert res.returncode != 0
    lines = summaries(res.output)
    assert len(lines) == 1 and lines[0][2] == "FAILED"
    assert "psql failed" in lines[0][3] and "Connection refused" in lines[0][3], lines


@pytest.mark.parametrize("neighbour", ["-other", "x"])
def test_prune_stays_inside_its_exact_prefix(lab, s3, run_prefix, neighbour):
    from ansible_collections.keelson.stack.plugins.module_utils.backup_pruning import run_prune

    bucket = lab.vars["keelson_s3_bucket"]
    prefix = run_prefix + "/prune"
    ids = ["2026010%dT021500Z" % d for d in range(1, 6)]
    layout = {}
    for root in (prefix, prefix + neighbour):
        for backup_id in ids:
            base = "%s/app/%s/" % (root, backup_id)
            manifest = {"format": "keelson-pg-backup/1", "database": "app", "id": backup_id,
                        "objects": {"dump": {"key": base + "dump.pgc", "bytes": 1, "sha256": "x"}}}
            s3.put_object(Bucket=bucket, Key=base + "dump.pgc", Body=b"x")
            s3.put_object(Bucket=bucket, Key=base + "manifest.json", Body=json.dumps(manifest).encode())
    s3.put_object(Bucket=bucket, Key="%s/app/20251231T021500Z/dump.pgc" % prefix, Body=b"uncommitted")
    layout = keys_under(lab, s3, run_prefix + "/prune")
    params = {"database": "app", "s3_bucket": bucket, "s3_prefix": prefix,
              "s3_endpoint_url": lab.vars["keelson_s3_endpoint_url"], "s3_access_key": lab.vars["keelson_s3_access_key"],
              "s3_secret_key": lab.vars["keelson_s3_secret_key"], "keep_daily": 1, "keep_weekly": 0, "keep_monthly": 0,
              "keep_last": 2}
    try:
        dry = run_prune(params, check_mode=True)
        assert dry["keep"] == [ids[4], ids[3]] and dry["delete"] == [ids[2], ids[1], ids[0]]
        assert dry["incomplete"] == ["20251231T021500Z"]
        assert keys_under(lab, s3, run_prefix + "/prune") == layout
        done = run_prune(params)
        assert done["delete"] == dry["delete"]
        after = keys_under(lab, s3, run_prefix + "/prune")
        gone = set(layout) - set(after)
        assert gone == {"%s/app/%s/%s" % (prefix, i, n) for i in ids[:3] for n in ("dump.pgc", "manifest.json")}
    finally:
        for key in keys_under(lab, s3, run_prefix + "/prune"):
            s3.delete_object(Bucket=bucket, Key=key)


# --- Stalls and interruptions: every run ends, leaves no process, no open upload, no lock. ---
# Short bounds per test (read timeout 5 s, 2 attempts), so a stall fails in seconds, not minutes.
FAST = {"backup_s3_read_timeout": 5, "backup_s3_connect_timeout": 5, "backup_s3_attempts": 2,
        "backup_s3_retry_max_delay": 1}


def open_uploads(lab, s3, prefix):
    bucket = lab.vars["keelson_s3_bucket"]
    return [u["UploadId"] for u in s3.list_multipart_uploads(Bucket=bucket, Prefix=prefix + "/").get("Uploads", [])]


def uploaded_parts(lab, s3, prefix):
    """Parts stored so far of the open upload under prefix (0 when there is none)."""
    bucket = lab.vars["keelson_s3_bucket"]
    uploads = s3.list_multipart_uploads(Bucket=bucket, Prefix=prefix + "/").get("Uploads", [])
    if not uploads:
        return 0
    upload = uploads[0]
    return len(s3.list_parts(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]).get("Parts", []))


def stall_mid_upload(lab, s3, prefix, proc, seconds):
    """Waits until the dump's upload has stored a part, then freezes S3 for `seconds`
    (timed with a real sleep, like an outage). Returns the part count seen."""
    parts = wait_for(lambda: proc.poll() is not None or uploaded_parts(lab, s3, prefix), "a stored part")
    assert proc.poll() is None, "the backup ended before S3 could be stalled"
    with lab.stall_s3():
        subprocess.run(["sleep", str(seconds)], check=True)
    return parts


def finish(proc, vars_file, timeout=600):
    try:
        return proc.communicate(timeout=timeout)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
        os.unlink(vars_file)


def assert_nothing_left(lab, s3, prefix, database):
    """No module or pg_dump process, no zombie, the lock free, no open upload."""
    wait_for(lambda: not lab.module_processes(database), "the module and pg_dump to be gone", attempts=240)
    assert lab.lock_is_free(database)
    assert open_uploads(lab, s3, prefix) == []


def failure(proc, output, pattern):
    """The run failed with one summary line matching `pattern`."""
    assert proc.returncode != 0
    lines = summaries(output)
    assert len(lines) == 1 and lines[0][2] == "FAILED", output
    assert re.search(pattern, lines[0][3]), lines[0][3]


def timed(label, started):
    print("%s: %.1f s" % (label, time.monotonic() - started))


def test_s3_stalled_for_20s_mid_upload_is_ridden_out_or_fails_cleanly(lab, s3, run_prefix, big_db):
    prefix = run_prefix + "/stall20"
    started = time.monotonic()
    proc, vars_file = lab.playbook("backup.yml", bvars(prefix, [big_db], backup_compression="none",
                                                       backup_upload_workers=1), background=True)
    try:
        parts = stall_mid_upload(lab, s3, prefix, proc, 20)
    finally:
        output = finish(proc, vars_file)
    timed("20 s stall (default bounds, read timeout 60 s), the stall began after part %d" % parts, started)
    lines = summaries(output)
    assert len(lines) == 1, output
    if lines[0][2] == "FAILED":  # allowed, if it names the cause
        assert re.search(r"S3 did not answer|S3 stopped reading|could not connect to S3|S3 closed the connection", lines[0][3]), lines
    assert_nothing_left(lab, s3, prefix, big_db)
    rerun = lab.playbook("backup.yml", bvars(prefix, [big_db]))
    assert rerun.returncode == 0, rerun.output


def test_s3_stalled_past_the_read_timeout_fails_naming_the_part(lab, s3, run_prefix, big_db):
    prefix = run_prefix + "/stall-long"
    assert lab.playbook("backup.yml", bvars(prefix, [big_db], backup_compression="none")).returncode == 0
    before = committed(lab, s3, prefix, big_db)
    started = time.monotonic()
    proc, vars_file = lab.playbook("backup.yml", bvars(prefix, [big_db], backup_compression="none",
                                                       backup_upload_workers=1, **FAST), background=True)
    try:
        stall_mid_upload(lab, s3, prefix, proc, 30)
    finally:
        output = finish(proc, vars_file)
    timed("stall past a 5 s read timeout, 2 attempts", started)
    failure(proc, output, r"failed: S3 (did not answer for 5 s|stopped reading the request \(sending timed out\)) "
                          r"during part \d+ \(2 attempts in \d+ s\); "
                          r"upload of \S+/dump.pgc \(multipart upload \S+ aborted\)")
    # within the part's retry budget, as the module measured it: 2 x (5 s connect + 5 s read) + a 1 s pause
    spent = int(re.search(r"\(2 attempts in (\d+) s\)", summaries(output)[0][3]).group(1))
    assert spent <= 2 * (5 + 5) + 1, summaries(output)[0][3]
    assert_nothing_left(lab, s3, prefix, big_db)
    assert committed(lab, s3, prefix, big_db) == before  # the previous backup is still the newest
    metrics = lab.sh("cat /var/lib/prometheus/node-exporter/keelson_backup_%s.prom" % big_db).stdout
    assert 'keelson_backup_last_run_success{database="%s"} 0.0' % big_db in metrics
    rerun = lab.playbook("backup.yml", bvars(prefix, [big_db], **FAST))
    assert rerun.returncode == 0, rerun.output


def test_sigterm_mid_upload_ends_the_run_cleanly(lab, s3, run_prefix, big_db):
    # SIGTERM to the module on the db host, as systemd sends it to a local run.
    prefix = run_prefix + "/sigterm"
    proc, vars_file = lab.playbook("backup.yml", bvars(prefix, [big_db], backup_compression="none",
                                                       backup_upload_workers=1, **FAST), background=True)
    try:
        wait_for(lambda: proc.poll() is not None or uploaded_parts(lab, s3, prefix), "a stored part")
        assert proc.poll() is None, "the backup ended before it could be stopped"
        # exactly our module: the one process holding the database's lock (its pid is in the lock file)
        holder = lab.sh("cat /run/lock/keelson-backup/%s.lock" % big_db).stdout
        pids = [re.match(r"pid (\d+) ", holder).group(1)]
        assert pids[0] in lab.lock_holders(big_db), (holder, lab.lock_holders(big_db))
        with lab.stall_s3():  # holds the run mid-upload while it is stopped; resumed so the abort can succeed
            started = time.monotonic()
            lab.sh("kill -TERM %s" % pids[0])
            subprocess.run(["sleep", "3"], check=True)
    finally:
        output = finish(proc, vars_file)
    timed("SIGTERM to the module until the playbook ended", started)
    failure(proc, output, r"failed: the run was stopped by SIGTERM during part \d+")
    assert_nothing_left(lab, s3, prefix, big_db)
    rerun = lab.playbook("backup.yml", bvars(prefix, [big_db]))
    assert rerun.returncode == 0, rerun.output


def pg_dumps(lab):
    """pg_dump processes on the db host, zombies included (pgrep matches them by name too)."""
    return lab.sh("pgrep -x pg_dump; true").stdout.split()


def test_sigterm_to_the_playbook_mid_upload_stops_the_backup_on_the_db_host(lab, s3, run_prefix, big_db):
    # As cron's timeout(1) ends a run: SIGTERM to ansible-playbook's process group on the controller,
    # ssh clients included. The module on db1 sees its session close (backup_local.stop_on_signals).
    prefix = run_prefix + "/controller-term"
    proc, vars_file = lab.playbook("backup.yml", bvars(prefix, [big_db], backup_compression="none",
                                                       backup_upload_workers=1), background=True)
    try:
        wait_for(lambda: proc.poll() is not None or uploaded_parts(lab, s3, prefix), "a stored part")
        assert proc.poll() is None, "the backup ended before it could be stopped"
        # S3 stalled for longer than it takes the module to notice: with the default 60 s read timeout,
        # only the stop can end pg_dump while S3 is silent; S3 resumes so that the abort can succeed
        with lab.stall_s3():
            assert pg_dumps(lab), "pg_dump ended before the run could be stopped"
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
            wait_for(lambda: not pg_dumps(lab), "pg_dump to be stopped and reaped while S3 is silent", attempts=40)
    finally:
        output = finish(proc, vars_file)
    assert proc.returncode != 0, output
    assert_nothing_left(lab, s3, prefix, big_db)
    metrics = lab.sh("cat /var/lib/prometheus/node-exporter/keelson_backup_%s.prom" % big_db).stdout
    assert 'keelson_backup_last_run_success{database="%s"} 0.0' % big_db in metrics
    rerun = lab.playbook("backup.yml", bvars(prefix, [big_db]))
    assert rerun.returncode == 0, rerun.output


def test_postgresql_restart_mid_dump_fails_cleanly(lab, s3, run_prefix, big_db):
    prefix = run_prefix + "/pg-restart"
    proc, vars_file = lab.playbook("backup.yml", bvars(prefix, [big_db], backup_compression="none"), background=True)
    try:
        copying = "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'COPY public.pgbench_accounts %'"
        wait_for(lambda: proc.poll() is not None or lab.psql("postgres", copying + ";") == ["1"],
                 "pg_dump copying pgbench_accounts", attempts=600)
        assert proc.poll() is None, "the backup ended before PostgreSQL could be restarted"
        lab.sh("systemctl restart postgresql")
    finally:
        output = finish(proc, vars_file)
    lines = summaries(output)
    assert len(lines) == 1 and lines[0][2] == "FAILED", output
    assert "pg_dump exited 1" in lines[0][3], lines[0][3]
    assert_nothing_left(lab, s3, prefix, big_db)
    wait_for(lambda: lab.sh("pg_isready -q", check=False).returncode == 0, "PostgreSQL to accept connections")
    rerun = lab.playbook("backup.yml", bvars(prefix, [big_db]))
    assert rerun.returncode == 0, rerun.output


def test_dump_stuck_behind_a_table_lock_fails_after_lock_wait_timeout(lab, s3, run_prefix, known_db):
    prefix = run_prefix + "/lock-wait"
    blocker = subprocess.Popen(["docker", "exec", "-i", "-u", "postgres", lab.db_container, "psql", "-X", "-q", "-A",
                                "-t", "-d", known_db], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        blocker.stdin.write("BEGIN; LOCK TABLE items IN ACCESS EXCLUSIVE MODE; SELECT 'locked';\n")
        blocker.stdin.flush()
        assert blocker.stdout.readline().strip() == "locked"
        res = lab.playbook("backup.yml", bvars(prefix, [known_db], backup_lock_wait_timeout=2))
    finally:
        blocker.kill()
        blocker.wait()
    lines = summaries(res.output)
    assert len(lines) == 1 and lines[0][2] == "FAILED", res.output
    # pg_dump applies --lock-wait-timeout as a statement_timeout on its LOCK TABLE
    assert "pg_dump exited 1" in lines[0][3] and "statement timeout" in lines[0][3] and "LOCK TABLE" in lines[0][3], lines[0][3]
    assert_nothing_left(lab, s3, prefix, known_db)


def started_writing(pattern):
    for path in glob.glob(pattern):
        try:
            if os.path.getsize(path) > 0:
                return True
        except OSError:  # removed in between
            pass
    return False


@pytest.mark.parametrize("bounds, cause", [
    (FAST, r"S3 did not answer for 5 s during the download of \S+ \(2 attempts in \d+ s\)"),
    # the default 60 s read timeout: the deadline cuts the read it is blocked in
    ({"backup_restore_deadline_seconds": 12}, r"the deadline of 12 s passed during the download of \S+ at byte \d+"),
], ids=["read-timeout", "deadline"])
def test_stalled_restore_download_fails_before_any_database_is_touched(lab, s3, run_prefix, big_db, bounds, cause):
    prefix = run_prefix + "/restore-stall"
    assert lab.playbook("backup.yml", bvars(prefix, [big_db], backup_compression="none")).returncode == 0
    before = lab.databases()
    started = time.monotonic()
    proc, vars_file = lab.playbook("restore.yml", bvars(prefix, [big_db], backup_restore_database=big_db, **bounds),
                                   background=True)
    try:
        pattern = lab.host_path("/var/tmp/keelson-restore-*/dump.pgc")
        while proc.poll() is None and not started_writing(pattern):
            time.sleep(0.01)  # a tight poll on purpose: the whole download takes about a second
        assert proc.poll() is None, "the restore ended before S3 could be stalled"
        with lab.stall_s3():
            subprocess.run(["sleep", "30"], check=True)
    finally:
        output = finish(proc, vars_file)
    timed("restore download stalled (%s)" % ", ".join("%s=%s" % item for item in sorted(bounds.items())), started)
    failure(proc, output, cause + "; no database was touched")
    assert lab.databases() == before
    assert lab.sh("ls -d /var/tmp/keelson-restore-* 2>/dev/null; true").stdout.strip() == ""


def restore_processes(container):
    """Host pids of the `pg_restore -j` runs in `container` (the restore itself,
    not its `pg_restore -l` check), found through the host's /proc so that a test
    can act on one within milliseconds of its start."""
    namespace = os.readlink("/proc/%s/ns/pid" % container_pid(container))
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = open("/proc/%s/cmdline" % entry, "rb").read().split(b"\0")
            restore = os.path.basename(argv[0]) == b"pg_restore" and argv[1:2] == [b"-j"]
            if restore and os.readlink("/proc/%s/ns/pid" % entry) == namespace:
                pids.append(int(entry))
        except OSError:  # exited in between
            pass
    return pids


def test_restore_past_its_deadline_fails_and_drops_the_database_it_created(lab, s3, run_prefix, big_db):
    prefix = run_prefix + "/restore-deadline"
    assert lab.playbook("backup.yml", bvars(prefix, [big_db], backup_compression="none")).returncode == 0
    before = lab.databases()
    proc, vars_file = lab.playbook("restore.yml", bvars(prefix, [big_db], backup_restore_database=big_db,
                                                        backup_restore_deadline_seconds=15), background=True)
    frozen = []
    try:
        while proc.poll() is None and not frozen:
            frozen = restore_processes(lab.db_container)
            time.sleep(0.01)
        assert frozen, "the restore ended before pg_restore started"
        # pg_restore started its own process group: freezing it (workers included) holds the restore
        # past its deadline whatever the machine's speed
        os.killpg(frozen[0], signal.SIGSTOP)
    finally:
        output = finish(proc, vars_file)
    failure(proc, output, r"the deadline of 15 s passed during pg_restore; the new database %s_restore_\w+ was dropped"
                          % big_db)
    assert lab.databases() == before
    assert lab.sh("pgrep -x pg_restore; true").stdout.strip() == ""
    assert lab.sh("ls -d /var/tmp/keelson-restore-* 2>/dev/null; true").stdout.strip() == ""
    assert lab.lock_is_free("restore-" + big_db)


def test_prune_aborts_the_uploads_killed_runs_left_and_nothing_else(lab, s3, run_prefix, known_db):
    prefix = run_prefix + "/abandoned"
    bucket = lab.vars["keelson_s3_bucket"]
    mine = "%s/%s/20260101T000000Z/dump.pgc" % (prefix, known_db)
    neighbour = "%s/%s-other/20260101T000000Z/dump.pgc" % (prefix, known_db)  # another database's prefix
    left = s3.create_multipart_upload(Bucket=bucket, Key=mine)["UploadId"]
    other = s3.create_multipart_upload(Bucket=bucket, Key=neighbour)["UploadId"]
    try:
        young = lab.playbook("backup.yml", bvars(prefix, [known_db], backup_abort_uploads_after_hours=1))
        assert young.returncode == 0, young.output
        assert "prune: %s: keep" % known_db in summaries(young.output)[0][3], young.output
        assert "aborted 0 abandoned multipart upload(s), 1 open upload(s) kept (younger than 1 h" \
            in summaries(young.output)[0][3], young.output
        assert open_uploads(lab, s3, "%s/%s" % (prefix, known_db)) == [left]

        time.sleep(4)  # older than 0.001 h
        old = lab.playbook("backup.yml", bvars(prefix, [known_db], backup_abort_uploads_after_hours=0.001))
        assert old.returncode == 0, old.output
        assert "aborted 1 abandoned multipart upload(s)" in summaries(old.output)[0][3], old.output
        assert open_uploads(lab, s3, "%s/%s" % (prefix, known_db)) == []
        assert open_uploads(lab, s3, "%s/%s-other" % (prefix, known_db)) == [other]
    finally:
        for key, upload in ((mine, left), (neighbour, other)):
            try:
                s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)
            except Exception:  # already aborted by the prune
                pass
