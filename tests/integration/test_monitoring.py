"""Monitoring on the lab, after site.yml converged it: Prometheus on mon1 scrapes every exporter
the inventory implies and each is up, the exporters answer the monitor host only, and alerts reach
a webhook receiver of this test's own (started on mon1, where the lab inventory's Alertmanager
receiver points): a stopped API replica fires KeelsonReplicaDown and resolves when it starts again,
and a backup whose last success is days old fires KeelsonBackupTooOld."""
import json
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request

import pytest
import yaml

from conftest import INVENTORY, ROOT
from ansible_collections.keelson.stack.plugins.module_utils.backup_dump import record_metrics

MON = "keelson-lab-mon1"
ALERTS_FILE = "/var/tmp/keelson-test-alerts.jsonl"
RECEIVER = "/usr/local/lib/keelson-test/webhook_receiver.py"
# Which exporters the hosts of each group run (roles/monitoring), with their ports: issue 14's list.
EXPECTED = {
    "all": {"node": 9100},
    "db": {"postgres": 9187, "redis": 9121, "rabbitmq": 15692},
    "lb": {"nginx": 9113, "edge": 9145},
    "app": {"docker": 9323, "containers": 9417},
}
# The prometheus role's defaults and the lab's Alertmanager timing (inventories/lab/group_vars/monitor.yml).
SCRAPE_INTERVAL = EVALUATION_INTERVAL = 15
REPLICA_DOWN_FOR = 30
GROUP_WAIT = 5
GROUP_INTERVAL = 15


def docker_exec(container, *argv, check=True, timeout=60):
    res = subprocess.run(["docker", "exec", container, *argv], capture_output=True, text=True, timeout=timeout)
    if check:
        assert res.returncode == 0, "%s on %s: %s%s" % (argv, container, res.stdout, res.stderr)
    return res


@pytest.fixture(scope="module")
def inventory():
    groups = yaml.safe_load(INVENTORY.read_text())["all"]["children"]
    return {group: spec["hosts"] for group, spec in groups.items()}


@pytest.fixture(scope="module")
def prometheus(inventory):
    address = inventory["monitor"]["mon1"]["keelson_private_address"]

    def get(path, **params):
        url = "http://%s:9090%s?%s" % (address, path, urllib.parse.urlencode(params))
        with urllib.request.urlopen(url, timeout=10) as res:
            body = json.load(res)
        assert body["status"] == "success", body
        return body["data"]
    return get


def wait_for(what, check, within, every=2):
    """Polls check() until it returns something truthy; fails after `within` seconds (a bound for a
    broken setup, not a measurement)."""
    deadline = time.monotonic() + within
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, "no %s within %d s" % (what, within)
        time.sleep(every)


@pytest.fixture(scope="module")
def webhook():
    """The receiver runs on mon1 as a transient unit for this module; returns a reader of what it got."""
    docker_exec(MON, "mkdir", "-p", RECEIVER.rsplit("/", 1)[0])
    subprocess.run(["docker", "cp", str(ROOT / "tests/integration/files/webhook_receiver.py"), MON + ":" + RECEIVER],
                   check=True, timeout=60)
    docker_exec(MON, "rm", "-f", ALERTS_FILE)
    docker_exec(MON, "systemd-run", "--unit", "keelson-test-webhook", "--collect",
                "python3", RECEIVER, "127.0.0.1", "9099", ALERTS_FILE)

    def received():
        out = docker_exec(MON, "cat", ALERTS_FILE, check=False).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]
    try:
        wait_for("webhook receiver on mon1", lambda: docker_exec(
            MON, "python3", "-c", "import socket; socket.create_connection(('127.0.0.1', 9099), 2)",
            check=False).returncode == 0, within=30, every=1)
        yield received
    finally:
        docker_exec(MON, "systemctl", "stop", "keelson-test-webhook", check=False)


def notifications(received, alertname, status, **labels):
    """(time received, alert) for each alert of that name, status and labels the receiver got."""
    return [(record["received"], alert) for record in received() for alert in record["body"]["alerts"]
            if alert["labels"].get("alertname") == alertname and alert["status"] == status
            and all(alert["labels"].get(k) == v for k, v in labels.items())]


def test_prometheus_scrapes_every_exporter_of_the_inventory_and_each_is_up(inventory, prometheus):
    expected = {(job, host) for group, jobs in EXPECTED.items()
                for host in (set().union(*inventory.values()) if group == "all" else inventory[group])
                for job in jobs}
    expected |= {("prometheus", "mon1"), ("alertmanager", "mon1")}

    def all_up():
        targets = prometheus("/api/v1/targets", state="active")["activeTargets"]
        seen = {(t["labels"]["job"], t["labels"].get("host")): t for t in targets}
        missing = expected - set(seen)
        assert not missing, "not scraped: %s" % sorted(missing)
        down = {k: t.get("lastError") for k, t in seen.items() if k in expected and t["health"] != "up"}
        return seen if not down else None
    # the first scrape of each target comes within one scrape interval of Prometheus' start
    seen = wait_for("every target up", all_up, within=90)
    db = seen[("node", "db1")]["labels"]
    assert db["group"] == "db" and db["environment"] == "lab", db
    assert seen[("node", "app2")]["labels"]["group"] == "app"


def reaches(source, address, port):
    script = ("import socket,sys\ntry:\n socket.create_connection((sys.argv[1], int(sys.argv[2])), 2).close()\n"
              "except OSError: sys.exit(1)\n")
    return docker_exec("keelson-lab-" + source, "python3", "-c", script, address, str(port),
                       check=False).returncode == 0


# Each exporter port of each group, tried from mon1 and from a host of another group.
OUTSIDER = {"db": "app1", "lb": "app1", "app": "lb1", "monitor": "lb1"}


@pytest.mark.parametrize("group", ["db", "lb", "app", "monitor"])
def test_exporters_answer_the_monitor_host_only(inventory, group):
    ports = sorted(set(EXPECTED["all"].values()) | set(EXPECTED.get(group, {}).values()))
    for target, hostvars in sorted(inventory[group].items()):
        address = hostvars["keelson_private_address"]
        for port in ports:
            assert reaches("mon1", address, port), "mon1 cannot reach %s:%d" % (target, port)
            if target != "mon1":
                assert not reaches(OUTSIDER[group], address, port), "%s reaches %s:%d" % (OUTSIDER[group], target, port)


def app_container(host, service, replica):
    """The name of a replica's container on an app host (compose_stack's labels)."""
    out = docker_exec("keelson-lab-" + host, "docker", "ps", "-a", "--format", "{{.Names}}",
                      "--filter", "label=keelson.stack.service=%s" % service,
                      "--filter", "label=keelson.stack.replica=%s" % replica).stdout.split()
    assert len(out) == 1, out
    return out[0]


def test_a_stopped_api_replica_fires_replica_down_at_the_webhook_and_resolves_when_it_starts(prometheus, webhook):
    container = app_container("app2", "api", 1)
    # The exporter sees the stop at Prometheus' next scrape, the rule is pending from the next
    # evaluation and fires on the first evaluation after its `for`; Alertmanager waits group_wait.
    bound = SCRAPE_INTERVAL + EVALUATION_INTERVAL + REPLICA_DOWN_FOR + EVALUATION_INTERVAL + GROUP_WAIT + 5
    stopped = time.time()
    docker_exec("keelson-lab-app2", "docker", "stop", container)
    try:
        got = wait_for("KeelsonReplicaDown at the webhook", lambda: notifications(
            webhook, "KeelsonReplicaDown", "firing", container=container, host="app2"), within=bound + 60)
        elapsed = got[0][0] - stopped
        print("\nreplica %s stopped -> KeelsonReplicaDown at the webhook: %.0f s (bound %d s)" % (container, elapsed, bound))
        alert = got[0][1]
        assert alert["labels"]["environment"] == "lab" and alert["labels"]["service"] == "api", alert
        assert elapsed <= bound, "the alert took %.0f s, more than its for plus the intervals (%d s)" % (elapsed, bound)
    finally:
        docker_exec("keelson-lab-app2", "docker", "start", container)
    started = time.time()
    wait_for("KeelsonReplicaDown resolved at the webhook", lambda: [
        n for n in notifications(webhook, "KeelsonReplicaDown", "resolved", container=container, host="app2")
        if n[0] > started], within=SCRAPE_INTERVAL + EVALUATION_INTERVAL + GROUP_INTERVAL + 60)
    print("replica %s started -> resolved at the webhook: %.0f s" % (container, time.time() - started))


def backup_metrics(database, when=None):
    """`database`'s backup metrics as pg_backup writes them (node_exporter drops a metric family whose
    files disagree on its HELP text, so a hand-written file would hide every database's backup metrics)."""
    with tempfile.TemporaryDirectory() as tmp:
        with open(record_metrics(tmp, database, True, {"bytes": 1024, "duration_seconds": 1.0}, now=when)) as handle:
            return handle.read()


def put(lab, path, text):
    """Replaces a textfile-collector file on db1 at once (node_exporter never reads half of it)."""
    lab.sh("cat > %s.tmp && mv %s.tmp %s" % (path, path, path), input=text)


def test_a_backup_whose_last_success_is_days_old_fires_backup_too_old_at_the_webhook(lab, prometheus, webhook):
    # Databases of this test's own, so the real backups' metrics are left alone (and their alerts:
    # a database whose backups failed in another test alerts too, rightly): one backed up four
    # days ago, one an hour ago.
    now = time.time()
    stale = {"monitoring_stale": now - 4 * 86400, "monitoring_fresh": now - 3600}
    paths = ["/var/lib/prometheus/node-exporter/keelson_backup_%s.prom" % database for database in stale]
    for (database, when), path in zip(stale.items(), paths):
        put(lab, path, backup_metrics(database, when))
    try:
        def firing():
            alerts = prometheus("/api/v1/alerts")["alerts"]
            return [a for a in alerts if a["labels"]["alertname"] == "KeelsonBackupTooOld"
                    and a["labels"].get("database") in stale and a["state"] == "firing"]
        written = time.time()
        alerts = wait_for("KeelsonBackupTooOld firing", firing, within=180)
        assert [(a["labels"]["database"], a["labels"]["host"]) for a in alerts] == [("monitoring_stale", "db1")], alerts
        got = wait_for("KeelsonBackupTooOld at the webhook", lambda: notifications(
            webhook, "KeelsonBackupTooOld", "firing", database="monitoring_stale", host="db1"), within=120)
        assert got[0][1]["labels"]["environment"] == "lab"
        print("\nstale backup metric written -> firing alert at the webhook: %.0f s" % (got[0][0] - written))
        # both were scraped: the fresh one is evaluated and stays quiet
        series = prometheus("/api/v1/query", query='keelson_backup_last_success_timestamp_seconds{database=~"monitoring_.*"}')
        assert sorted(r["metric"]["database"] for r in series["result"]) == sorted(stale)
        assert not notifications(webhook, "KeelsonBackupTooOld", "firing", database="monitoring_fresh")
    finally:
        lab.sh("rm -f %s" % " ".join(paths))


def test_a_database_the_inventory_backs_up_without_any_backup_metrics_is_pending_backup_missing(lab, prometheus):
    """The lab backs up `demo` (backup_databases) but runs no cron: without its metrics file the
    absent() rule is pending (it fires after prometheus_alert_backup_max_age); a backup's metrics
    clear it."""
    path = "/var/lib/prometheus/node-exporter/keelson_backup_demo.prom"
    saved = lab.sh("cat %s 2>/dev/null; true" % path).stdout

    def missing():
        return [a for a in prometheus("/api/v1/alerts")["alerts"] if a["labels"]["alertname"] == "KeelsonBackupMissing"
                and a["labels"].get("database") == "demo" and a["labels"].get("host") == "db1"]
    try:
        lab.sh("rm -f %s" % path)
        alert = wait_for("KeelsonBackupMissing pending for demo", missing, within=90)[0]
        assert alert["state"] == "pending" and alert["labels"]["environment"] == "lab", alert
        put(lab, path, backup_metrics("demo"))
        wait_for("KeelsonBackupMissing cleared by demo's metrics", lambda: not missing(), within=90)
    finally:
        if saved:
            put(lab, path, saved)
        else:
            lab.sh("rm -f %s" % path)


def scrape(host_address, port):
    """An exporter's /metrics as the monitor host reads it."""
    return docker_exec(MON, "python3", "-c", "import urllib.request,sys; sys.stdout.write(urllib.request.urlopen("
                       "sys.argv[1], timeout=10).read().decode())", "http://%s:%d/metrics" % (host_address, port)).stdout


def sample(text, name, **labels):
    """The value of one series in a /metrics text (None when absent)."""
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        if series.split("{")[0] == name and all('%s="%s"' % kv in series for kv in labels.items()):
            return float(value)
    return None


def test_the_edge_counts_each_request_of_a_site_by_status_and_time(inventory):
    lb = inventory["lb"]["lb1"]["keelson_private_address"]
    before = scrape(lb, EXPECTED["lb"]["edge"])
    ok = [sample(before, "keelson_edge_requests_total", site="demo", code="200") or 0,
          sample(before, "keelson_edge_request_duration_seconds_count", site="demo") or 0]
    missing = sample(before, "keelson_edge_requests_total", site="demo", code="404") or 0
    for path in ("/health", "/health", "/health", "/no-such-page"):
        docker_exec("keelson-lab-lb1", "curl", "-sS", "-o", "/dev/null", "--cacert", "/etc/nginx/keelson/tls/internal-ca.crt",
                    "https://lb1.lab.keelson.test" + path)
    after = scrape(lb, EXPECTED["lb"]["edge"])
    # other tests' traffic may add to these; never less than ours
    assert sample(after, "keelson_edge_requests_total", site="demo", code="200") >= ok[0] + 3
    assert sample(after, "keelson_edge_requests_total", site="demo", code="404") >= missing + 1
    assert sample(after, "keelson_edge_request_duration_seconds_count", site="demo") >= ok[1] + 4
    assert sample(after, "keelson_edge_request_duration_seconds_bucket", site="demo", le="+Inf") == \
        sample(after, "keelson_edge_request_duration_seconds_count", site="demo")
    # the stub_status exporter beside it
    assert sample(scrape(lb, EXPECTED["lb"]["nginx"]), "nginx_up") == 1


def test_the_certificate_metric_is_the_served_certificate_expiry(inventory):
    lb = inventory["lb"]["lb1"]["keelson_private_address"]
    path = "/etc/nginx/keelson/tls/demo.crt"
    not_after = docker_exec("keelson-lab-lb1", "python3", "-c", "import sys; from cryptography import x509; "
                            "print(int(x509.load_pem_x509_certificate(open(sys.argv[1], 'rb').read())"
                            ".not_valid_after_utc.timestamp()))", path).stdout.strip()
    metrics = scrape(lb, EXPECTED["all"]["node"])
    assert sample(metrics, "keelson_certificate_expiry_timestamp_seconds", site="demo", path=path) == float(not_after)


def test_the_db_exporters_scrape_as_their_own_users_and_their_passwords_stay_secret(lab, inventory):
    db = inventory["db"]["db1"]["keelson_private_address"]
    assert sample(scrape(db, EXPECTED["db"]["postgres"]), "pg_up") == 1
    redis = scrape(db, EXPECTED["db"]["redis"])
    assert sample(redis, "redis_up") == 1
    assert sample(scrape(db, EXPECTED["db"]["rabbitmq"]), "rabbitmq_queue_messages_ready") is not None
    # the PostgreSQL exporter is a pg_monitor member over loopback, and nothing more
    login = lab.vars.get("keelson_postgresql_exporter_user", "keelson_exporter")
    assert lab.psql("postgres", "SELECT DISTINCT client_addr FROM pg_stat_activity WHERE usename = '%s'" % login) == \
        ["127.0.0.1"]
    assert lab.psql("postgres", "SELECT b.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member "
                    "JOIN pg_roles b ON b.oid = m.roleid WHERE r.rolname = '%s'" % login) == ["pg_monitor"]
    # the Redis exporter's restricted user was refused no command, key or channel (the admin's password on
    # stdin, not argv). Failed logins are left out: a converge that changes the password leaves the
    # exporter with the old one until the monitoring layer restarts it.
    log = json.loads(lab.sh("read -r pw; REDISCLI_AUTH=\"$pw\" redis-cli --json --user keelson-admin ACL LOG 128",
                            input=lab.vars["keelson_redis_admin_password"] + "\n").stdout)
    assert not [entry for entry in log if entry.get("username") == "keelson-exporter" and entry.get("reason") != "auth"], log
    secrets = [lab.vars["keelson_postgresql_exporter_password"], lab.vars["keelson_redis_exporter_password"]]
    processes = lab.sh("ps -eo args").stdout
    for secret in secrets:
        assert secret not in processes
    for name in ("postgres", "redis"):
        stat = lab.sh("stat -c '%%U:%%G %%a' /etc/default/prometheus-%s-exporter" % name).stdout.split()
        assert stat == ["root:root", "600"], (name, stat)


def test_a_changed_exporter_setting_shows_no_password_in_check_diff_or_converge(lab):
    """The exporters' environment files hold passwords: a converge that rewrites them (here after a
    hand edit) reports the change without its content, in --check --diff -v and in the real run."""
    secrets = [lab.vars["keelson_postgresql_exporter_password"], lab.vars["keelson_redis_exporter_password"]]
    for name in ("postgres", "redis"):
        lab.sh("echo '# edited by hand' >> /etc/default/prometheus-%s-exporter" % name)
    argv = ["ansible-playbook", "site.yml", "-i", "inventories/lab", "--tags", "monitoring", "--limit", "db1",
            "--diff", "-v"]
    for extra in (["--check"], []):
        res = subprocess.run(argv + extra, cwd=ROOT, capture_output=True, text=True, timeout=900)
        out = res.stdout + res.stderr
        assert res.returncode == 0, out[-4000:]
        assert "db1" in out and "changed=0" not in out.split("PLAY RECAP")[-1], out[-3000:]
        for secret in secrets:
            assert secret not in out, "an exporter password is in the output of %s" % " ".join(argv + extra)
    for name in ("postgres", "redis"):
        assert "edited by hand" not in lab.sh("cat /etc/default/prometheus-%s-exporter" % name).stdout
    assert sample(scrape(lab.db_address, EXPECTED["db"]["postgres"]), "pg_up") == 1
