"""The exporters table: what each host runs, what the firewall opens and what Prometheus scrapes,
from inventories shaped like the lab's and the staging example's."""
import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.keelson.stack.plugins.filter.monitoring import (expected_backups, exporter_port, host_exporters,
                                                                       scrape_targets)

GROUPS = {
    "all": ["lb1", "app1", "app2", "db1", "mon1"],
    "lb": ["lb1"], "app": ["app1", "app2"], "db": ["db1"], "monitor": ["mon1"], "ungrouped": [],
}
ADDRESSES = {"lb1": "10.20.0.11", "app1": "10.20.0.21", "app2": "10.20.0.22", "db1": "10.20.0.31", "mon1": "10.20.0.51"}


def hostvars(**overrides):
    out = {}
    for host, address in ADDRESSES.items():
        out[host] = {"keelson_private_address": address, "keelson_environment": "staging"}
        out[host].update(overrides.get(host, {}))
    return out


def names(host, hv, groups=GROUPS):
    return [e["name"] for e in host_exporters(host, hv[host], groups)]


def test_each_group_runs_its_exporters():
    hv = hostvars()
    assert names("lb1", hv) == ["node", "nginx", "edge"]
    assert names("app1", hv) == ["node", "docker", "containers"]
    assert names("db1", hv) == ["node", "postgres", "redis", "rabbitmq"]
    assert names("mon1", hv) == ["node"]
    assert host_exporters("db1", hv["db1"], GROUPS)[1] == {"name": "postgres", "port": 9187}


def test_a_data_service_switched_off_has_no_exporter():
    # inventories write the switches as YAML booleans or as strings ("no" from an -e)
    hv = hostvars(db1={"redis_enabled": False, "rabbitmq_enabled": "no"})
    assert names("db1", hv) == ["node", "postgres"]


def test_monitoring_off_on_a_host_runs_nothing_and_scrapes_nothing():
    hv = hostvars(app2={"monitoring_enabled": False})
    assert names("app2", hv) == []
    jobs = {job["job"]: job for job in scrape_targets(hv, GROUPS)}
    assert [t["labels"]["host"] for t in jobs["docker"]["targets"]] == ["app1"]
    assert "app2" not in [t["labels"]["host"] for t in jobs["node"]["targets"]]


def test_renamed_groups_are_followed():
    groups = {"all": ["edge-a", "web-a", "pg-a", "ops-a"], "edge": ["edge-a"], "web": ["web-a"], "pg": ["pg-a"]}
    renamed = {"keelson_lb_group": "edge", "keelson_app_group": "web", "keelson_db_group": "pg"}
    hv = {h: dict(renamed, keelson_private_address="10.0.0.%d" % i, keelson_environment="prod")
          for i, h in enumerate(groups["all"], 1)}
    assert names("edge-a", hv, groups) == ["node", "nginx", "edge"]
    assert names("web-a", hv, groups) == ["node", "docker", "containers"]
    assert names("pg-a", hv, groups) == ["node", "postgres", "redis", "rabbitmq"]
    # a host in none of the collection's groups runs node_exporter and is scraped as "other"
    assert names("ops-a", hv, groups) == ["node"]
    assert [t["labels"]["group"] for t in scrape_targets(hv, groups)[0]["targets"]] == ["lb", "app", "db", "other"]


def test_scrape_targets_are_labelled_with_host_group_and_environment():
    jobs = scrape_targets(hostvars(), GROUPS)
    assert [job["job"] for job in jobs] == ["node", "postgres", "redis", "rabbitmq", "nginx", "edge", "docker",
                                            "containers"]
    node = jobs[0]["targets"]
    assert [t["address"] for t in node] == ["10.20.0.11:9100", "10.20.0.21:9100", "10.20.0.22:9100",
                                            "10.20.0.31:9100", "10.20.0.51:9100"]
    assert [t["labels"]["group"] for t in node] == ["lb", "app", "app", "db", "monitor"]
    assert jobs[-2]["targets"][1] == {"address": "10.20.0.22:9323",
                                      "labels": {"host": "app2", "group": "app", "environment": "staging"}}


def test_an_ipv6_private_address_is_bracketed():
    hv = hostvars(mon1={"keelson_private_address": "2001:db8::51"})
    node = scrape_targets(hv, GROUPS)[0]["targets"]
    assert node[-1]["address"] == "[2001:db8::51]:9100"


def test_a_host_without_an_address_is_a_clear_error():
    hv = hostvars()
    del hv["db1"]["keelson_private_address"]
    with pytest.raises(AnsibleFilterError, match="db1 has no keelson_private_address"):
        scrape_targets(hv, GROUPS)


def test_ports():
    assert [exporter_port(n) for n in ("node", "postgres", "redis", "rabbitmq", "nginx", "edge", "docker",
                                       "containers")] == [9100, 9187, 9121, 15692, 9113, 9145, 9323, 9417]
    with pytest.raises(AnsibleFilterError, match="unknown exporter 'mysql'"):
        exporter_port("mysql")


def test_expected_backups_are_the_db_hosts_databases():
    hv = hostvars(db1={"backup_databases": ["shop", "blog"]}, app1={"backup_databases": ["not-a-db-host"]})
    assert expected_backups(hv, GROUPS) == [
        {"host": "db1", "database": "shop", "environment": "staging"},
        {"host": "db1", "database": "blog", "environment": "staging"}]
    # PostgreSQL or monitoring switched off on the host: nothing expected
    assert expected_backups(hostvars(db1={"backup_databases": ["shop"], "postgresql_enabled": "no"}), GROUPS) == []
    assert expected_backups(hostvars(db1={"backup_databases": ["shop"], "monitoring_enabled": False}), GROUPS) == []
    assert expected_backups(hostvars(), GROUPS) == []
