"""Upstream include files in the nginx role's format; the /proc reading against real processes.
The reload and drain against a real nginx are in molecule/rollout_modules."""
import os
import subprocess
import sys
import time

import pytest

from ansible_collections.keelson.stack.plugins.module_utils.nginx_upstream import (
    UpstreamError, newest_worker_start, parse_backends, set_backend_state, set_upstream_backend,
    wait_for_drain, workers, write_atomically)

FILE = (
    "server 172.30.77.21:8001 max_fails=3 fail_timeout=10s;\n"
    "server 172.30.77.21:8002 max_fails=3 fail_timeout=10s;\n"
    "server 172.30.77.22:8001 max_fails=3 fail_timeout=10s down;\n"
)


def test_parse():
    assert parse_backends(FILE) == {"172.30.77.21:8001": "up", "172.30.77.21:8002": "up",
                                    "172.30.77.22:8001": "down"}


def test_down_rewrites_only_that_line():
    after = set_backend_state(FILE, "172.30.77.21:8002", "down")
    assert after.splitlines() == [
        "server 172.30.77.21:8001 max_fails=3 fail_timeout=10s;",
        "server 172.30.77.21:8002 max_fails=3 fail_timeout=10s down;",
        "server 172.30.77.22:8001 max_fails=3 fail_timeout=10s down;",
    ]
    assert set_backend_state(after, "172.30.77.21:8002", "down") == after
    assert set_backend_state(after, "172.30.77.21:8002", "up") == FILE


def test_up_and_prefix_addresses_are_distinct():
    text = "server 10.0.0.1:80 max_fails=1 fail_timeout=5s down;\nserver 10.0.0.1:8080 max_fails=1 fail_timeout=5s down;\n"
    after = set_backend_state(text, "10.0.0.1:80", "up")
    assert parse_backends(after) == {"10.0.0.1:80": "up", "10.0.0.1:8080": "down"}


def test_unknown_backend_names_the_known_ones():
    with pytest.raises(UpstreamError, match=r"172.30.77.23:8001 is not in .*\(has 172.30.77.21:8001, "):
        set_backend_state(FILE, "172.30.77.23:8001", "down")


def test_write_atomically_keeps_mode_and_backup(tmp_path):
    path = tmp_path / "shop_api.conf"
    path.write_text(FILE)
    os.chmod(path, 0o640)
    write_atomically(str(path), "x\n", str(path) + ".prev")
    assert path.read_text() == "x\n"
    assert (tmp_path / "shop_api.conf.prev").read_text() == FILE
    assert oct(path.stat().st_mode & 0o777) == "0o640"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shop_api.conf", "shop_api.conf.prev"]




def test_workers_of_a_real_process_tree(tmp_path):
    """A real parent whose children are named like nginx workers by `exec -a`."""
    script = tmp_path / "master.sh"
    script.write_text("#!/bin/bash\n"
                      "(exec -a 'nginx: worker process' sleep 30) &\n"
                      "(exec -a 'nginx: worker process is shutting down' sleep 30) &\n"
                      "(exec -a 'nginx: cache manager process' sleep 30) &\n"
                      "wait\n")
    before = time.time()
    master = subprocess.Popen(["bash", str(script)])
    try:
        deadline = time.monotonic() + 10
        found = {}
        while len(found) < 2 and time.monotonic() < deadline:
            found = workers(master.pid)
        # the sleep argument follows the title; nginx itself rewrites its argv to the bare title
        assert sorted(found.values()) == ["nginx: worker process 30", "nginx: worker process is shutting down 30"]
        # start times are clock ticks (10 ms): precise enough to order a file write and a reload
        started = newest_worker_start(found)
        assert before - 0.02 <= started <= time.time()
        # none of the recorded workers exits: the drain reports them at its (injected) deadline
        now = [0.0]

        def sleep(seconds):
            now[0] += seconds
        drained, seconds, remaining = wait_for_drain(master.pid, found, 5, clock=lambda: now[0], sleep=sleep)
        assert (drained, remaining) == (False, 2) and seconds >= 5
        for pid, _ticks in found:
            os.kill(pid, 15)
        drained, seconds, remaining = wait_for_drain(master.pid, found, 10)
        assert drained and remaining == 0
    finally:
        master.kill()
        master.wait()


def test_set_upstream_backend_validates_and_restores(tmp_path):
    """`nginx -t` stand-in: a real program that fails, so the file must be restored; nginx not
    running (no pid file) means no reload."""
    path = tmp_path / "shop_api.conf"
    path.write_text(FILE)
    calls = []

    def run(argv):
        calls.append(argv)
        proc = subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write('emerg: bad'); sys.exit(1)"],
                              capture_output=True, text=True)
        return proc.returncode, proc.stdout, proc.stderr

    with pytest.raises(UpstreamError, match="nginx -t failed.*emerg: bad"):
        set_upstream_backend(str(path), "172.30.77.21:8001", "down", run, pid_file=str(tmp_path / "none.pid"))
    assert path.read_text() == FILE
    assert calls == [["nginx", "-t"]]


def test_set_upstream_backend_check_mode_and_idempotence(tmp_path):
    path = tmp_path / "shop_api.conf"
    path.write_text(FILE)

    def run(argv):
        return 0, "", ""

    res = set_upstream_backend(str(path), "172.30.77.21:8001", "down", run, check_mode=True,
                               pid_file=str(tmp_path / "none.pid"))
    assert res["changed"] and res["file_changed"] and path.read_text() == FILE
    assert "8001 max_fails=3 fail_timeout=10s down;" in res["diff"]["after"]
    res = set_upstream_backend(str(path), "172.30.77.21:8001", "down", run, pid_file=str(tmp_path / "none.pid"))
    assert res["file_changed"] and not res["reloaded"] and res["warnings"]
    assert parse_backends(path.read_text())["172.30.77.21:8001"] == "down"
    res = set_upstream_backend(str(path), "172.30.77.21:8001", "down", run, pid_file=str(tmp_path / "none.pid"))
    assert not res["changed"] and res["previous_state"] == "down"
