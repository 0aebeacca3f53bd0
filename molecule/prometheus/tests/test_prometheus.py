"""The prometheus role: Prometheus and Alertmanager on the private address only, the scrape
configuration from the inventory, retention flags, receivers, and the alert rules' promtool unit
tests (rules_tests/) run against the rules the role rendered."""
import json
import re
import time
from pathlib import Path

import yaml

RULES = "/etc/prometheus/rules/keelson.rules.yml"
TESTS = sorted((Path(__file__).resolve().parents[1] / "rules_tests").glob("*.test.yml"))
SMTP_SECRET = "Molecule-Smtp-Secret-7f3a"


def address(host):
    """The instance's private address (keelson_private_address is its default IPv4 address)."""
    return host.interface("eth0").addresses[0]


def api(host, path):
    out = host.check_output("python3 -c \"import urllib.request,sys; print(urllib.request.urlopen(sys.argv[1], timeout=5)"
                            ".read().decode())\" http://%s:9090%s" % (address(host), path))
    return json.loads(out)["data"]


def test_services_run_and_listen_on_the_private_address_only(host):
    for unit in ("prometheus", "prometheus-alertmanager"):
        assert host.service(unit).is_running and host.service(unit).is_enabled
    listening = host.check_output("ss -Hltn")
    ours = [line.split()[3] for line in listening.splitlines() if re.search(r":(9090|9093)$", line.split()[3])]
    assert sorted(ours) == sorted(["%s:9090" % address(host), "%s:9093" % address(host)]), listening


def test_the_rendered_configuration_passes_promtool_and_amtool(host):
    host.check_output("promtool check config /etc/prometheus/prometheus.yml")
    host.check_output("promtool check rules %s" % RULES)
    host.check_output("amtool check-config /etc/prometheus/alertmanager.yml")


def test_retention_flags_reach_the_running_server(host):
    args = host.check_output("ps -o args= -C prometheus")
    assert "--storage.tsdb.retention.time=7d" in args and "--storage.tsdb.retention.size=1GB" in args, args


def test_every_exporter_of_the_inventory_is_scraped_with_host_group_and_environment_labels(host):
    config = yaml.safe_load(host.file("/etc/prometheus/prometheus.yml").content_string)
    jobs = {job["job_name"]: job["static_configs"] for job in config["scrape_configs"]}
    assert set(jobs) == {"prometheus", "alertmanager", "node"}, set(jobs)
    node = {t["labels"]["host"]: t for t in jobs["node"]}
    assert sorted(node) == ["prometheus-debian12", "prometheus-debian13"]
    assert node["prometheus-debian12"]["labels"] == {"host": "prometheus-debian12", "group": "monitor",
                                                      "environment": "molecule"}
    assert node["prometheus-debian13"]["targets"][0].endswith(":9100")
    assert jobs["prometheus"][0]["targets"] == ["%s:9090" % address(host)]
    assert jobs["alertmanager"][0]["targets"] == ["%s:9093" % address(host)]
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["%s:9093" % address(host)]


def test_every_target_is_up(host):
    for _ in range(30):  # each is first scraped within one interval (15 s) of the start
        targets = api(host, "/api/v1/targets")["activeTargets"]
        health = {(t["labels"]["job"], t["labels"]["host"]): t["health"] for t in targets}
        if "unknown" not in health.values():
            break
        time.sleep(2)
    me = host.backend.get_hostname()
    assert health == {("prometheus", me): "up", ("alertmanager", me): "up",
                      ("node", "prometheus-debian12"): "up", ("node", "prometheus-debian13"): "up"}, health


def test_the_rules_are_loaded(host):
    groups = api(host, "/api/v1/rules")["groups"]
    assert {g["name"] for g in groups} == {"keelson-backups", "keelson-availability", "keelson-edge", "keelson-resources"}
    assert all(g["file"] == RULES for g in groups)


def test_alertmanager_routes_to_the_first_receiver_and_the_inventory_routes(host):
    config = yaml.safe_load(host.file("/etc/prometheus/alertmanager.yml").content_string)
    route = config["route"]
    assert route["receiver"] == "hook"
    assert route["group_by"] == ["alertname", "environment", "host"]
    assert (route["group_wait"], route["group_interval"], route["repeat_interval"]) == ("10s", "1m", "4h")
    assert route["routes"] == [{"receiver": "mail", "matchers": ['severity="critical"']}]
    receivers = {r["name"]: r for r in config["receivers"]}
    assert set(receivers) == {"hook", "mail"}
    assert receivers["hook"]["webhook_configs"] == [{"url": "http://127.0.0.1:9099/alerts", "send_resolved": True}]
    assert receivers["mail"]["email_configs"][0]["to"] == "ops@example.com"
    assert config["global"]["smtp_smarthost"] == "mail.example.com:587"
    # what the running Alertmanager loaded
    status = json.loads(host.check_output(
        "python3 -c \"import urllib.request,sys; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())\" "
        "http://%s:9093/api/v2/status" % address(host)))
    loaded = yaml.safe_load(status["config"]["original"])
    assert loaded["route"]["receiver"] == "hook"
    assert [r["name"] for r in loaded["receivers"]] == ["hook", "mail"]
    # Alertmanager 0.28 shows the webhook URL as <secret>, 0.25 as it is; the SMTP password never
    assert loaded["receivers"][0]["webhook_configs"][0]["url"] in ("http://127.0.0.1:9099/alerts", "<secret>")
    assert SMTP_SECRET not in status["config"]["original"]


def test_the_smtp_password_is_readable_by_alertmanager_only(host):
    config = host.file("/etc/prometheus/alertmanager.yml")
    assert (config.user, config.group, config.mode) == ("root", "prometheus", 0o640)
    assert SMTP_SECRET not in host.check_output("ps -eo args")
    for path in ("/etc/default/prometheus-alertmanager", "/etc/prometheus/prometheus.yml", RULES):
        assert SMTP_SECRET not in host.file(path).content_string


def test_the_alert_rules_pass_their_unit_tests(host):
    work = "/var/tmp/keelson-rules-test"
    host.check_output("rm -rf %s && mkdir -p %s && cp %s %s/" % (work, work, RULES, work))
    for tests in TESTS:
        host.check_output("cat > %s/%s << 'EOF'\n%s\nEOF" % (work, tests.name, tests.read_text()))
    out = host.run("cd %s && promtool test rules %s" % (work, " ".join(t.name for t in TESTS)))
    assert out.rc == 0 and "SUCCESS" in out.stdout, out.stdout + out.stderr


def test_every_alert_has_a_case_that_fires_and_one_that_does_not(host):
    rules = yaml.safe_load(host.file(RULES).content_string)
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    cases = [case for tests in TESTS for test in yaml.safe_load(tests.read_text())["tests"]
             for case in test.get("alert_rule_test", [])]
    fires = {c["alertname"] for c in cases if c.get("exp_alerts")}
    quiet = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    assert len(alerts) == 15, sorted(alerts)
    assert alerts - fires == set(), "alerts never shown firing: %s" % (alerts - fires)
    assert alerts - quiet == set(), "alerts never shown quiet: %s" % (alerts - quiet)
