"""The inventory's smoke checks (nginx tasks_from: smoke) against the lab's edge.

The lab's checks (inventories/lab/group_vars/lb.yml) pass through lb1 by the
site's public name; a failing check names the URL, the status and the first
bytes of the body; a malformed check is refused before any host is touched."""
import json
import subprocess

from conftest import ROOT


def playbook(*args):
    return subprocess.run(["ansible-playbook", "-i", "inventories/lab", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def test_lab_checks_pass_through_the_edge():
    res = playbook("playbooks/smoke.yml")
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    # the yaml callback folds a long message over lines
    assert "smoke OK through the edge: GET https://demo.lab.keelson.test/health, " \
           "POST https://demo.lab.keelson.test/items, GET https://demo.lab.keelson.test/ready" \
           in " ".join(res.stdout.split()), res.stdout[-4000:]


def test_a_failed_check_names_url_status_and_body():
    checks = {"nginx_smoke_checks": [{"site": "demo", "path": "/no-such-page"}], "nginx_smoke_timeout": 4}
    res = playbook("playbooks/smoke.yml", "-e", json.dumps(checks))
    assert res.returncode != 0
    assert ('GET https://demo.lab.keelson.test/no-such-page: status 404, expected 200: {"error": "not found"}'
            in " ".join(res.stdout.split())), res.stdout[-4000:]


def test_a_check_without_a_path_fails_before_any_change():
    checks = {"nginx_smoke_checks": [{"site": "demo", "method": "GET"}]}
    res = playbook("site.yml", "-e", json.dumps(checks))
    assert res.returncode != 0
    assert "missing required arguments: path found in nginx_smoke_checks" in res.stdout, res.stdout[-4000:]
    # it stopped in the first play: no later play started
    assert "PLAY [Base layer" not in res.stdout
