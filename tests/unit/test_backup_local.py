"""Lock files and textfile metrics on a real filesystem, with real processes."""
import os
import subprocess
import sys
import textwrap

import pytest

from ansible_collections.keelson.stack.plugins.module_utils import backup_dump, backup_restore
from ansible_collections.keelson.stack.plugins.module_utils.backup_local import (
    DatabaseLock, LockHeld, read_metric, write_metrics)


def test_second_lock_fails_fast_naming_the_holder(tmp_path):
    with DatabaseLock(str(tmp_path), "app", "backup"):
        with pytest.raises(LockHeld, match=r"backup of app is locked by another run \(pid %d on " % os.getpid()):
            with DatabaseLock(str(tmp_path), "app", "backup"):
                pass
        with DatabaseLock(str(tmp_path), "other", "backup"):
            pass  # another database is not blocked
    with DatabaseLock(str(tmp_path), "app", "backup"):
        pass  # released


def test_lock_held_by_another_process_and_freed_when_it_dies(tmp_path):
    collections = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "collections"))
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, time
        sys.path.insert(0, %r)
        from ansible_collections.keelson.stack.plugins.module_utils.backup_local import DatabaseLock
        with DatabaseLock(%r, "app", "backup"):
            print("held", flush=True)
            sys.stdin.read()
        """ % (collections, str(tmp_path)))], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(LockHeld, match="pid %d" % holder.pid):
        with DatabaseLock(str(tmp_path), "app", "backup"):
            pass
    holder.kill()
    holder.wait()
    with DatabaseLock(str(tmp_path), "app", "backup"):
        pass
    assert oct(os.stat(tmp_path / "app.lock").st_mode & 0o777) == "0o600"


def test_metrics_written_atomically_and_failure_keeps_last_success(tmp_path):
    ok = {"bytes": 1234, "duration_seconds": 5.5}
    path = backup_dump.record_metrics(str(tmp_path), "app", ok=True, result=ok, now=1000.0)
    text = open(path).read()
    assert 'keelson_backup_last_run_success{database="app"} 1.0' in text
    assert 'keelson_backup_last_success_timestamp_seconds{database="app"} 1000.0' in text
    assert "# TYPE keelson_backup_last_size_bytes gauge" in text
    backup_dump.record_metrics(str(tmp_path), "app", ok=False, now=2000.0)
    assert read_metric(path, "keelson_backup_last_run_success") == 0
    assert read_metric(path, "keelson_backup_last_success_timestamp_seconds") == 1000.0
    assert read_metric(path, "keelson_backup_last_size_bytes") == 1234
    assert read_metric(path, "keelson_backup_last_run_timestamp_seconds") == 2000.0
    assert sorted(os.listdir(tmp_path)) == ["keelson_backup_app.prom"]
    assert oct(os.stat(path).st_mode & 0o777) == "0o644"
    vpath = backup_restore.record_verify_metrics(str(tmp_path), "app", ok=True, result={"duration_seconds": 3}, now=5.0)
    assert read_metric(vpath, "keelson_backup_verify_last_success_timestamp_seconds") == 5.0


def test_metric_labels_are_escaped_and_names_checked(tmp_path):
    path = write_metrics(str(tmp_path), "x", {"database": 'we"ird\\db'}, [("m", "help", 1)])
    assert 'm{database="we\\"ird\\\\db"} 1.0' in open(path).read()
    with pytest.raises(ValueError):
        write_metrics(str(tmp_path), "../evil", {}, [])


def test_lock_inherited_by_a_survivor_of_a_killed_run_is_named_stale(tmp_path):
    # The run (the outer sh) takes the lock, hands the descriptor to a child that
    # outlives it, and is killed: the recorded pid is gone but the flock is held.
    lock = tmp_path / "app.lock"
    script = ("exec 9>%s; flock -n 9 || exit 1; echo \"pid $$ on here since then\" >&9; "
              "sleep 60 >/dev/null 2>&1 & echo $!; exit 0") % lock
    run = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
    survivor = int(run.stdout.strip())
    try:
        with pytest.raises(LockHeld, match=r"locked by a stale holder: pid \d+ on here since then is gone, "
                                           r"but pid\(s\) %d inherited the lock" % survivor):
            with DatabaseLock(str(tmp_path), "app", "backup"):
                pass
    finally:
        os.kill(survivor, 9)


def test_sigterm_and_a_closed_stdout_stop_the_run():
    collections = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "collections"))
    script = textwrap.dedent("""
        import os, signal, sys
        sys.path.insert(0, %r)
        from ansible_collections.keelson.stack.plugins.module_utils.backup_local import stop_on_signals
        from ansible_collections.keelson.stack.plugins.module_utils.backup_retry import Deadline
        deadline = Deadline()
        stop_on_signals(deadline)
        if sys.argv[1] == "term":
            os.kill(os.getpid(), signal.SIGTERM)
        deadline.sleep(30)
        sys.stderr.write(str(deadline.reason))
    """) % collections
    term = subprocess.run([sys.executable, "-c", script, "term"], capture_output=True, text=True, timeout=60)
    assert term.stderr == "the run was stopped by SIGTERM"
    # stdout a pipe whose reader is gone, as when sshd closes the session
    read_end, write_end = os.pipe()
    os.close(read_end)
    gone = subprocess.run([sys.executable, "-c", script, "pipe"], stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60)
    os.close(write_end)
    assert gone.stderr == "the run was orphaned (the controller's connection closed)"
