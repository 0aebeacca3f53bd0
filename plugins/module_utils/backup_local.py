# -*- coding: utf-8 -*-
# Copyright: keelson.stack developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Host-local pieces of backups: the per-database lock and Prometheus textfile metrics."""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import errno
import fcntl
import os
import re
import select
import signal
import socket
import subprocess
import tempfile
import threading


class LockHeld(Exception):
    """Another run holds the lock; the message names the holder."""


class DatabaseLock(object):
    """flock on <dir>/<name>.lock: released by the kernel when the holder dies,
    so a crashed run never leaves a stale lock. The file records the holder."""

    def __init__(self, lock_dir, name, purpose):
        self.path = os.path.join(lock_dir, "%s.lock" % name)
        self.lock_dir = lock_dir
        self.name = name
        self.purpose = purpose
        self.fd = None

    def __enter__(self):
        os.makedirs(self.lock_dir, mode=0o700, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            holder = os.read(fd, 512).decode("utf-8", "replace").strip() or "unknown holder"
            holders = lock_holders(os.path.realpath(self.path))
            os.close(fd)
            recorded = re.match(r"pid (\d+) ", holder)
            if recorded and not pid_alive(int(recorded.group(1))):
                raise LockHeld("%s of %s is locked by a stale holder: %s is gone, but pid(s) %s inherited the lock "
                               "(lock %s)" % (self.purpose, self.name, holder, ", ".join(map(str, holders)) or "?",
                                              self.path))
            raise LockHeld("%s of %s is locked by another run (%s, lock %s)" % (
                self.purpose, self.name, holder, self.path))
        os.ftruncate(fd, 0)
        started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        os.write(fd, ("pid %d on %s since %s" % (os.getpid(), socket.gethostname(), started)).encode())
        self.fd = fd
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def pid_alive(pid):
    """True when `pid` runs (a zombie counts as gone)."""
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def lock_holders(path):
    """pids (other than ours) with `path` open: who keeps a flock that its
    recorded holder, now dead, passed on to a child."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            fds = os.listdir("/proc/%s/fd" % entry)
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink("/proc/%s/fd/%s" % (entry, fd)) == path:
                    pids.append(int(entry))
                    break
            except OSError:
                continue
    return sorted(pids)


def _label(value):
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def read_metric(path, name):
    """The value of one metric in an existing textfile, or None."""
    try:
        with open(path) as handle:
            for line in handle:
                if line.startswith(name + "{") or line.startswith(name + " "):
                    return float(line.rsplit(" ", 1)[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def write_metrics(metrics_dir, file_stem, labels, metrics):
    """Atomically writes <metrics_dir>/<file_stem>.prom for node_exporter's
    textfile collector. metrics: list of (name, help, value). Returns the path."""
    if not re.match(r"^[A-Za-z0-9_.-]+$", file_stem):
        raise ValueError("unsafe metrics file name %r" % file_stem)
    os.makedirs(metrics_dir, exist_ok=True)
    label_text = ",".join('%s="%s"' % (k, _label(v)) for k, v in sorted(labels.items()))
    lines = []
    for name, help_text, value in metrics:
        lines.append("# HELP %s %s" % (name, help_text))
        lines.append("# TYPE %s gauge" % name)
        lines.append("%s{%s} %s" % (name, label_text, repr(float(value))))
    path = os.path.join(metrics_dir, file_stem + ".prom")
    fd, tmp = tempfile.mkstemp(dir=metrics_dir, prefix="." + file_stem, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write("\n".join(lines) + "\n")
        os.chmod(tmp, 0o644)
        os.rename(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def kill_and_reap(proc, group=False):
    """Kills a child (with `group`, the whole process group of a child started
    with start_new_session, so that its own children go too) and reaps it: a
    killed child nobody waits for stays a zombie."""
    if proc.poll() is None:
        try:
            if group:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
        except OSError:  # exited in between
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:  # uninterruptible sleep; the kernel reaps it for init once we exit
        pass


def stop_on_signals(deadline, signals=(signal.SIGTERM, signal.SIGHUP, signal.SIGINT), watch_parent=True):
    """Turns SIGTERM (cron's timeout, systemd), SIGHUP and SIGINT into a stop of
    the run's deadline, so the run ends through its ordinary failure path: children
    killed and reaped, the multipart upload aborted, the lock released, the
    failure metric written. The handler only records the stop; the threads
    waiting on the deadline do the rest (a handler that raised could cut a
    cleanup in half).

    watch_parent: also stop when the controller is gone: this process re-parented
    (the shell that ran us ended) or the reader of our stdout gone (sshd closed
    the session: the pipe reports POLLERR), so an orphaned run does not go on
    until its deadline. A `docker exec` session shows neither when its client is
    killed; there the run's own bounds end it."""
    def handler(signum, _frame):
        deadline.stop("the run was stopped by %s" % signal.Signals(signum).name)

    for signum in signals:
        signal.signal(signum, handler)
    if watch_parent:
        parent = os.getppid()
        stdout = select.poll()
        stdout.register(1, 0)  # only POLLERR / POLLHUP / POLLNVAL are reported

        def watch():
            while not deadline.sleep(1.0):
                if os.getppid() != parent:
                    deadline.stop("the run was orphaned (its parent process %d ended)" % parent)
                elif any(events & (select.POLLERR | select.POLLHUP) for _fd, events in stdout.poll(0)):
                    deadline.stop("the run was orphaned (the controller's connection closed)")
        thread = threading.Thread(target=watch, name="backup-parent-watch")
        thread.daemon = True
        thread.start()
