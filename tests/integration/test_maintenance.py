"""playbooks/maintenance.yml on the lab's edge: a site in maintenance answers 503 with
the maintenance page, Retry-After and its security headers, on connections opened
before as well as new ones; nginx does not reload, the lb's own status keeps
answering, and the upstreams (files and runtime state) are as they were afterwards."""
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rollout_lab import ROOT, UPSTREAMS, edge, nginx_processes, on, runtime_state, upstream_file  # noqa: E402


def maintenance(on_off, *extra):
    return subprocess.run(["ansible-playbook", "-i", "inventories/lab", "playbooks/maintenance.yml",
                           "-e", "nginx_maintenance=%s" % on_off, *extra], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def send(conn, method, path, body=None):
    conn.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
    response = conn.getresponse()
    return response.status, dict(response.getheaders()), response.read().decode("utf-8", "replace")


def runtime_states():
    return [runtime_state(name) for name in UPSTREAMS]


@pytest.fixture
def out_of_maintenance_afterwards():
    yield
    maintenance("false")


def test_a_site_in_maintenance_answers_503_and_comes_back_without_a_reload(out_of_maintenance_afterwards):
    processes, upstreams, state = nginx_processes(), upstream_file(), runtime_states()
    kept = edge()  # a keep-alive connection that lives through the whole window
    assert send(kept, "GET", "/health")[0] == 200

    res = maintenance("true")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "in maintenance on lb1: demo" in res.stdout
    for conn in (kept, edge()):
        for method, path, body in (("GET", "/health", None), ("POST", "/items", '{"name": "x"}')):
            status, headers, text = send(conn, method, path, body)
            assert status == 503, (method, path, status, text[:200])
            assert headers["Retry-After"] == "300" and headers["Cache-Control"] == "no-store", headers
            assert headers["Strict-Transport-Security"].startswith("max-age=") and "X-Frame-Options" in headers
            assert "Down for maintenance" in text
    assert "Active connections" in on("lb1", "curl", "-sS", "http://127.0.0.1:8080/nginx_status")

    again = maintenance("true")
    assert again.returncode == 0 and "changed=0" in again.stdout.split("PLAY RECAP")[-1], again.stdout[-2000:]

    res = maintenance("false")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "in maintenance on lb1: none" in res.stdout
    assert send(kept, "GET", "/health")[0] == 200
    assert send(edge(), "POST", "/items", '{"name": "after maintenance"}')[0] == 201
    assert nginx_processes() == processes, "nginx reloaded"
    assert upstream_file() == upstreams and runtime_states() == state


def test_an_unknown_site_is_refused_before_any_change():
    res = maintenance("true", "-e", '{"nginx_maintenance_sites": ["dmo"]}')
    assert res.returncode != 0
    assert "nginx_maintenance_sites: dmo not in nginx_sites (demo" in " ".join(res.stdout.split())
    assert on("lb1", "ls", "/var/lib/keelson/maintenance").strip() == ""
