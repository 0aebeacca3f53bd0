"""site.yml refuses bad input in its first play, before any layer runs.

One site.yml run on the whole lab per typical mistake, each given as an extra vars
file: every run must fail in the first play ("Reach every host"), with the role's
own clean message naming the variable (or, for the stack, the problem and where
its definition comes from), and no host may report a change. These runs share no
converge: the first play only reads facts and the deploy lock."""
import copy

import pytest
import yaml

from conftest import ROOT, recap

GROUP_VARS = ROOT / "inventories" / "lab" / "group_vars"


def lab_vars(group):
    return yaml.safe_load((GROUP_VARS / ("%s.yml" % group)).read_text())


def services_with(**changes):
    services = copy.deepcopy(lab_vars("app")["compose_stack_services"])
    services[0].update(changes)
    return services


def sites_with_typo():
    sites = copy.deepcopy(lab_vars("lb")["nginx_sites"])
    sites[0]["server_name"] = sites[0].pop("server_names")
    return sites


# id -> (extra vars, host whose check fails, fragments of the message)
MISTAKES = {
    "replicas-zero": ({"compose_stack_services": services_with(replicas=0)}, "app1",
                      ["service 'api': replicas must be at least 1",
                       "in the stack of app1: the compose_stack_* variables of its host_vars, of the group_vars of app, all"]),
    "wrong-type": ({"base_sshd_port": "twenty-two"}, "db1",
                   ["argument 'base_sshd_port' is of type str and we were unable to convert to int"]),
    "unknown-choice": ({"docker_source": "podman"}, "app2",
                       ["value of docker_source must be one of: debian, docker, got: podman"]),
    "unknown-option": ({"nginx_sites": sites_with_typo()}, "lb1",
                       ["nginx_sites.server_name. Supported parameters include",
                        "missing required arguments: server_names found in nginx_sites"]),
    "missing-secret": ({"redis_admin_password": "{{ vault_redis_admin_password }}"}, "db1",
                       ["vault_redis_admin_password", "undefined"]),
}


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_bad_input_fails_in_the_first_play_with_nothing_changed(lab, mistake):
    extra_vars, host, fragments = MISTAKES[mistake]
    res = lab.playbook("site.yml", extra_vars, limit="all")
    assert res.returncode != 0, res.output[-4000:]
    assert "PLAY [Base layer" not in res.stdout, "a layer ran before the mistake was reported:\n" + res.output[-4000:]
    failed = [line for line in res.stdout.splitlines() if line.startswith("fatal: [%s]" % host)]
    assert failed, "no failure on %s:\n%s" % (host, res.output[-4000:])
    for fragment in fragments:
        assert fragment in res.stdout, "%r not in:\n%s" % (fragment, res.output[-4000:])
    hosts = recap(res.stdout)
    assert set(hosts) >= {"lb1", "app1", "app2", "db1"}, hosts
    assert all(r["changed"] == 0 for r in hosts.values()), hosts
