"""Lab fixtures for the integration tests (session-scoped): the lab inventory and
generated variables, commands on lab hosts, the S3 server, playbook runs, and a
database with known tables and row counts created here (not the demo app's)."""
import json
import os
import re
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INVENTORY = ROOT / "inventories" / "lab" / "hosts.yml"
COLLECTIONS = ROOT / "collections"
if str(COLLECTIONS) not in sys.path:
    sys.path.insert(0, str(COLLECTIONS))
GENERATED = ROOT / "inventories" / "lab" / "group_vars" / "all" / "lab_generated.yml"

# Known content: table -> rows (quoted identifiers as pg_backup's manifest names them).
KNOWN_TABLES = {
    "public.items": 1000,
    'public."Odd Name"': 37,
    "public.empty": 0,
    "sales.orders_2025": 250,
    "sales.orders_2026": 120,
}
KNOWN_SQL = """
CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 1000) g;
CREATE TABLE "Odd Name" (v text);
INSERT INTO "Odd Name" SELECT md5(g::text) FROM generate_series(1, 37) g;
CREATE TABLE empty (v int);
CREATE SCHEMA sales;
CREATE TABLE sales.orders (id int, year int NOT NULL) PARTITION BY LIST (year);
CREATE TABLE sales.orders_2025 PARTITION OF sales.orders FOR VALUES IN (2025);
CREATE TABLE sales.orders_2026 PARTITION OF sales.orders FOR VALUES IN (2026);
INSERT INTO sales.orders SELECT g, 2025 FROM generate_series(1, 250) g;
INSERT INTO sales.orders SELECT g, 2026 FROM generate_series(1, 120) g;
"""


class Lab:
    def __init__(self):
        if not INVENTORY.exists() or not GENERATED.exists():
            pytest.fail("the lab is not up: run `make lab` first (%s missing)" % INVENTORY)
        inventory = yaml.safe_load(INVENTORY.read_text())
        self.vars = yaml.safe_load(GENERATED.read_text())
        db_hosts = inventory["all"]["children"]["db"]["hosts"]
        self.db_host = sorted(db_hosts)[0]
        # shell checks go through `docker exec`; Ansible reaches the host as the inventory says
        self.db_container = db_hosts[self.db_host].get("keelson_lab_container", "keelson-lab-" + self.db_host)
        self.db_address = db_hosts[self.db_host]["keelson_private_address"]

    def sh(self, script, check=True, user=None, timeout=600, input=None):
        """Runs a shell script on the db host (``input`` on its stdin); returns CompletedProcess."""
        argv = ["docker", "exec", "-i"] + (["-u", user] if user else []) + [self.db_container, "sh", "-c", script]
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input)
        if check and res.returncode != 0:
            raise AssertionError("on %s: %s\n%s%s" % (self.db_container, script, res.stdout, res.stderr))
        return res

    def psql(self, database, sql):
        res = subprocess.run(["docker", "exec", "-i", "-u", "postgres", self.db_container,
                              "psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", database],
                             input=sql, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr
        return [line for line in res.stdout.splitlines() if line]

    def stall_s3(self):
        """with lab.stall_s3(): ... -- S3 stops answering until the block ends."""
        return S3Stall(self.vars.get("keelson_s3_container", "keelson-lab-s3"), self.vars["keelson_s3_endpoint_url"])

    def host_path(self, path):
        """The db host's `path` as seen from the controller (through its init's /proc root):
        a test can poll it in a tight loop without a docker exec per look."""
        return "/proc/%s/root%s" % (container_pid(self.db_container), path)

    def lock_is_free(self, database):
        return self.sh("flock -n /run/lock/keelson-backup/%s.lock true" % database, check=False).returncode == 0

    def lock_holders(self, database):
        """pids with `database`'s backup lock open: the pg_backup / pg_restore / backup_prune module
        (over pipelined SSH its command line is a bare python3, so only the lock names it) and any
        child that inherited the descriptor."""
        out = self.sh("find /proc/[0-9]*/fd -maxdepth 1 -lname /run/lock/keelson-backup/%s.lock 2>/dev/null "
                      "| cut -d/ -f3 | sort -u" % database, check=False).stdout
        return out.split()

    def module_processes(self, database):
        """pids of modules holding `database`'s lock, pg_dump / pg_restore processes of `database` and
        zombie pg_* processes on the db host."""
        out = self.sh("for p in $(pgrep -f 'pg_dump|pg_restore'); do "
                      "[ $p = $$ ] && continue; tr '\\0' ' ' < /proc/$p/cmdline 2>/dev/null | grep -qE -- '-d %s( |$)' && echo $p; "
                      "done; ps -eo pid=,stat=,comm= | awk '$2 ~ /Z/ && $3 ~ /^pg_/ {print $1 \"(zombie)\"}'"
                      % database).stdout
        return sorted(set(out.split()) | set(self.lock_holders(database)))

    def databases(self):
        return set(self.psql("postgres", "SELECT datname FROM pg_database;"))

    def s3(self):
        import boto3
        from botocore.config import Config
        return boto3.client("s3", endpoint_url=self.vars["keelson_s3_endpoint_url"],
                            aws_access_key_id=self.vars["keelson_s3_access_key"],
                            aws_secret_access_key=self.vars["keelson_s3_secret_key"], region_name="us-east-1",
                            config=Config(s3={"addressing_style": "path"}))

    def playbook(self, name, extra_vars, verbose=False, background=False, limit=None):
        """ansible-playbook on the db host (or on ``limit``) with extra vars passed in a 0600 file (never argv).
        name: a playbook in playbooks/, or an absolute path.
        Returns CompletedProcess, or (Popen, vars_file) when background; a background run leads a process
        group of its own (with its ssh clients), as under cron's timeout(1)."""
        fd, path = tempfile.mkstemp(prefix="keelson-it-", suffix=".json")
        with os.fdopen(fd, "w") as handle:
            json.dump(extra_vars, handle)
        argv = ["ansible-playbook", "-i", str(INVENTORY), str(ROOT / "playbooks" / name), "-e", "@" + path,
                "-l", limit or self.db_host] + (["-v"] if verbose else [])
        env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
                   ANSIBLE_FORCE_COLOR="0")
        if background:
            proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, start_new_session=True)
            return proc, path
        try:
            res = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
        finally:
            os.unlink(path)
        res.output = res.stdout + res.stderr
        return res


def container_pid(container):
    """The host pid of `container`'s init: its /proc entry reaches the container's
    root, namespaces and processes from the controller."""
    return subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}}", container], capture_output=True,
                          text=True, check=True).stdout.strip()


class S3Stall(object):
    """The lab's S3 server stops answering: in its container's network namespace,
    every TCP segment it sends from the endpoint's port that carries data is dropped. Clients
    still connect and their requests are still received and acknowledged, so they
    see exactly a server that stopped answering, while radosgw and its RADOS
    cluster keep running (freezing radosgw mid-upload has left the cluster wedged
    on a loaded machine). On exit the rule is removed and TCP retransmits what was
    held. If S3 still does not answer 60 s later, its container is restarted, so
    that the tests that follow meet a working S3, and this test fails saying so."""

    def __init__(self, container, endpoint):
        import urllib.parse
        self.container = container
        self.endpoint = endpoint
        # a segment longer than an IP and a TCP header with timestamps (52 bytes) carries data
        self.rule = ["OUTPUT", "-p", "tcp", "--sport", str(urllib.parse.urlsplit(endpoint).port), "!", "-o", "lo",
                     "--tcp-flags", "SYN", "NONE", "-m", "length", "--length", "53:65535", "-j", "DROP"]

    def iptables(self, action):
        subprocess.run(["nsenter", "-t", container_pid(self.container), "-n", "iptables", "-w", action] + self.rule,
                       check=True)

    def __enter__(self):
        self.iptables("-I")
        return self

    def __exit__(self, *exc):
        self.iptables("-D")
        if s3_answers(self.endpoint, within=60):
            return
        subprocess.run(["docker", "restart", self.container], capture_output=True, check=True)
        ready = s3_answers(self.endpoint, within=180, ready_file=(self.container, "/run/lab-s3-ready"))
        raise AssertionError("the lab's S3 server still did not answer 60 s after the stall ended; "
                             "its container was restarted (%s) and its objects are gone"
                             % ("it answers again" if ready else "and it still does not answer"))


def s3_answers(endpoint, within, ready_file=None):
    """True once S3 answers a GET / within 5 s (and ready_file, (container, path), exists)."""
    import time
    import urllib.error
    import urllib.request
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if ready_file is None or subprocess.run(["docker", "exec", ready_file[0], "test", "-e", ready_file[1]],
                                                capture_output=True).returncode == 0:
            try:
                urllib.request.urlopen(endpoint + "/", timeout=5).close()
                return True
            except urllib.error.HTTPError:
                return True
            except OSError:
                pass
        time.sleep(1)
    return False


def recap(output):
    """{host: {ok: N, changed: N, ...}} from a playbook's PLAY RECAP."""
    return {m.group(1): {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
            for m in re.finditer(r"^(\S+)\s+:\s+(ok=.*)$", output, re.M)}


@pytest.fixture(scope="session")
def lab():
    lab = Lab()
    if lab.sh("command -v pg_dump && command -v psql", check=False).returncode != 0:
        pytest.fail("PostgreSQL is not installed on %s: run `make lab` (site.yml) first" % lab.db_container)
    return lab


@pytest.fixture(scope="session")
def s3(lab):
    return lab.s3()


@pytest.fixture(scope="session")
def run_prefix(lab, s3):
    """An S3 prefix of this test session, emptied afterwards."""
    prefix = "itest/%s" % uuid.uuid4().hex[:12]
    yield prefix
    bucket = lab.vars["keelson_s3_bucket"]
    for root in (prefix, prefix + "-other"):
        for upload in s3.list_multipart_uploads(Bucket=bucket, Prefix=root + "/").get("Uploads", []):
            s3.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=root + "/"):
            for obj in page.get("Contents", []):
                s3.delete_object(Bucket=bucket, Key=obj["Key"])


@pytest.fixture(scope="session")
def known_db(lab):
    """A database with KNOWN_TABLES, recreated for this session."""
    name = "keelson_it"
    lab.psql("postgres", "DROP DATABASE IF EXISTS %s WITH (FORCE);" % name)
    lab.psql("postgres", "CREATE DATABASE %s;" % name)
    lab.psql(name, KNOWN_SQL)
    yield name
    lab.psql("postgres", "DROP DATABASE IF EXISTS %s WITH (FORCE);" % name)


@pytest.fixture(scope="session")
def big_db(lab):
    """A pgbench database large enough (uncompressed dump > 100 MB) for pg_dump
    to run for a while: fault tests kill it or race it."""
    name = "keelson_it_big"
    lab.psql("postgres", "DROP DATABASE IF EXISTS %s WITH (FORCE);" % name)
    lab.psql("postgres", "CREATE DATABASE %s;" % name)
    lab.sh("cd / && pgbench -i -q -s 10 %s" % name, user="postgres", timeout=1200)
    yield name
    lab.psql("postgres", "DROP DATABASE IF EXISTS %s WITH (FORCE);" % name)

