# -*- coding: utf-8 -*-
# Copyright: keelson.stack contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One backend of an nginx upstream include file: mark it up or down, validate, reload,
and wait for the drain.

The include file (written by the nginx role) holds one line per backend:
``server HOST:PORT max_fails=N fail_timeout=Ns;`` with `` down`` before the ``;``
when drained. Only the backend's own line is rewritten.

Drain. Open-source nginx cannot say how many requests are in flight to one backend.
What it does guarantee: on reload the master starts workers with the new
configuration and tells the old workers to finish the requests they are serving and
exit ("worker process is shutting down"). New requests only reach new workers, which
see the backend as ``down``. So once no worker of the previous generation is alive,
no request is in flight to the drained backend. We record the old workers (PID and
start time, so a reused PID is not mistaken for one) before the reload and wait until
they are gone, bounded by the drain timeout. The wait also covers in-flight requests
to other backends, which makes it an upper bound, never an early answer.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re
import shutil
import tempfile
import time

SERVER_LINE = re.compile(r"^(?P<indent>\s*)server\s+(?P<address>\S+)(?P<params>[^;]*);\s*(?P<comment>#.*)?$")


class UpstreamError(Exception):
    pass


def parse_backends(text):
    """Returns {address: 'up'|'down'} for the server lines of an include file."""
    states = {}
    for line in text.splitlines():
        match = SERVER_LINE.match(line)
        if match:
            params = match.group("params").split()
            states[match.group("address")] = "down" if "down" in params else "up"
    return states


def set_backend_state(text, address, state):
    """Returns the text with ``address``'s line set to ``state`` ('up' or 'down'); every
    other line is kept byte for byte. Raises UpstreamError if the backend is absent."""
    if state not in ("up", "down"):
        raise ValueError("state must be up or down")
    lines = text.splitlines(True)
    found = False
    for i, line in enumerate(lines):
        match = SERVER_LINE.match(line.rstrip("\r\n"))
        if not match or match.group("address") != address:
            continue
        found = True
        params = [p for p in match.group("params").split() if p != "down"]
        if state == "down":
            params.append("down")
        ending = line[len(line.rstrip("\r\n")):]
        comment = " " + match.group("comment") if match.group("comment") else ""
        lines[i] = "%sserver %s%s;%s%s" % (match.group("indent"), address,
                                           "".join(" " + p for p in params), comment, ending)
    if not found:
        raise UpstreamError("backend %s is not in the upstream file (has %s)"
                            % (address, ", ".join(sorted(parse_backends(text))) or "no server lines"))
    return "".join(lines)


def write_atomically(path, text, backup_path):
    """Copies the current file to ``backup_path`` then replaces ``path`` by rename, keeping
    its mode and owner."""
    shutil.copy2(path, backup_path)
    stat = os.stat(path)
    fd, tmp = tempfile.mkstemp(prefix=".%s." % os.path.basename(path), dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, stat.st_mode & 0o7777)
        os.chown(tmp, stat.st_uid, stat.st_gid)
        os.rename(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# --- nginx processes, read from /proc ---------------------------------------------

def _read(path):
    with open(path) as handle:
        return handle.read()


def _start_ticks(pid, proc):
    stat = _read("%s/%d/stat" % (proc, pid))
    # field 22 (starttime) counted after the ")" that closes the command name
    return int(stat[stat.rindex(")") + 2:].split()[19])


def master_pid(pid_file, proc="/proc"):
    """PID of the running nginx master, or None."""
    try:
        pid = int(_read(pid_file).strip())
        if "nginx" in _read("%s/%d/cmdline" % (proc, pid)):
            return pid
    except (OSError, ValueError):
        pass
    return None


def workers(master, proc="/proc"):
    """{(pid, start_ticks): title} of the master's worker processes, current and shutting down."""
    found = {}
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            status = _read("%s/%d/status" % (proc, pid))
            ppid = int(re.search(r"^PPid:\s*(\d+)", status, re.M).group(1))
            if ppid != master:
                continue
            title = _read("%s/%d/cmdline" % (proc, pid)).replace("\0", " ").strip()
            if "worker process" in title:
                found[(pid, _start_ticks(pid, proc))] = title
        except (OSError, AttributeError, ValueError, IndexError):
            continue  # exited while we looked
    return found


def boot_time(proc="/proc"):
    """Boot time in seconds since the epoch, to about 10 ms (``btime`` in /proc/stat is
    whole seconds, too coarse to compare with a file written just before a reload)."""
    return time.time() - float(_read("%s/uptime" % proc).split()[0])


def newest_worker_start(worker_map, proc="/proc"):
    """Wall-clock start of the newest current worker (seconds since the epoch), or None.
    Workers are started at every reload, so this is when the live configuration was read."""
    current = [key for key, title in worker_map.items() if "shutting down" not in title]
    if not current:
        return None
    hertz = os.sysconf("SC_CLK_TCK")
    return boot_time(proc) + max(ticks for _pid, ticks in current) / float(hertz)


def wait_for_generation_change(master, old, timeout, proc="/proc", clock=time.monotonic, sleep=time.sleep,
                               interval=0.1):
    """After a reload signal: waits until a worker not in ``old`` runs (nginx applied the new
    configuration). Returns seconds waited; raises UpstreamError at the timeout."""
    start = clock()
    while True:
        now = workers(master, proc)
        if any(key not in old and "shutting down" not in title for key, title in now.items()):
            return clock() - start
        if clock() - start >= timeout:
            raise UpstreamError("nginx did not start new workers within %gs of the reload "
                                "(see the nginx error log)" % timeout)
        sleep(interval)


def wait_for_drain(master, old, timeout, proc="/proc", clock=time.monotonic, sleep=time.sleep, interval=0.2):
    """Waits until no worker of ``old`` is alive. Returns (drained, seconds, remaining_count)."""
    start = clock()
    while True:
        remaining = [key for key in workers(master, proc) if key in old]
        elapsed = clock() - start
        if not remaining:
            return True, elapsed, 0
        if elapsed >= timeout:
            return False, elapsed, len(remaining)
        sleep(interval)


def set_upstream_backend(path, address, state, run, check_mode=False, drain=True, drain_timeout=60.0,
                         reload_timeout=10.0, nginx="nginx", pid_file="/run/nginx.pid", proc="/proc",
                         clock=time.monotonic, sleep=time.sleep):
    """Brings one backend to ``state`` and makes it live. ``run(argv)`` runs a command and
    returns (rc, stdout, stderr). Returns the result dict for the module.

    Idempotence covers the running nginx too: if the file already says ``state`` but was
    written after the current workers started (a run that died between write and reload),
    nginx is reloaded (and drained) anyway.
    """
    with open(path) as handle:
        before = handle.read()
    after = set_backend_state(before, address, state)
    master = master_pid(pid_file, proc)
    current = workers(master, proc) if master else {}
    live_since = newest_worker_start(current, proc) if master else None
    file_changed = after != before
    reload_pending = master is not None and (live_since is None or os.stat(path).st_mtime > live_since)
    result = {
        "changed": file_changed or reload_pending,
        "backend": address,
        "state": state,
        "previous_state": parse_backends(before)[address],
        "file_changed": file_changed,
        "reloaded": False,
        "drained": None,
        "drain_seconds": None,
        "old_workers_remaining": None,
        "backup": None,
        "diff": {"before": before, "after": after, "before_header": path, "after_header": path},
        "warnings": [],
    }
    if check_mode or not result["changed"]:
        return result

    if file_changed:
        backup = path + ".prev"
        write_atomically(path, after, backup)
        result["backup"] = backup
        rc, out, err = run([nginx, "-t"])
        if rc != 0:
            shutil.copy2(backup, path)
            raise UpstreamError("nginx -t failed, %s restored: %s" % (path, (err or out).strip()))

    if master is None:
        result["warnings"].append("nginx is not running: the file is updated, nothing to reload or drain")
        return result
    rc, out, err = run([nginx, "-s", "reload"])
    if rc != 0:
        raise UpstreamError("nginx -s reload failed: %s" % (err or out).strip())
    wait_for_generation_change(master, current, reload_timeout, proc, clock, sleep)
    result["reloaded"] = True
    if state == "down" and drain:
        drained, seconds, remaining = wait_for_drain(master, current, drain_timeout, proc, clock, sleep)
        result.update(drained=drained, drain_seconds=round(seconds, 3), old_workers_remaining=remaining)
        if not drained:
            result["warnings"].append(
                "%d nginx worker(s) of the previous generation still serve requests after %gs; "
                "long requests to %s may still be in flight" % (remaining, drain_timeout, address))
    return result
