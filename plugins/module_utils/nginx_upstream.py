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

Runtime path. With the nginx role's ``nginx_upstream_runtime`` (the default), the
upstream is balanced by Lua (``roles/nginx/files/keelson_upstreams.lua``) from a shared
dict that nginx loads from the same include file at every start and reload. Then the
file is rewritten and validated as above, and the running nginx is told through the
control socket instead of reloaded: no worker restarts, no client connection closes.
The Lua balancer counts the requests in flight per backend (raised before a pick is
final, then the state is read again; the control sets ``down`` before it reads the
count), so the drain waits until that count is 0, also when nothing is left to change
(a rerun after a drain that timed out waits for what is still in flight). Whatever the
control socket cannot do (no socket, an upstream or backend the running nginx does not
know) falls back to the reload, and the result says which path was taken (``applied_via``).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import re
import shutil
import socket
import tempfile
import time

try:
    from http.client import HTTPConnection
    from urllib.parse import urlencode
except ImportError:  # Python 2 (ansible-test sanity imports every module_utils)
    from httplib import HTTPConnection
    from urllib import urlencode

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


def parse_servers(text):
    """Returns {address: {'state': 'up'|'down', 'weight': int}} for the server lines of an
    include file (weight 1 when the line has none, as nginx)."""
    servers = {}
    for line in text.splitlines():
        match = SERVER_LINE.match(line)
        if match:
            params = match.group("params").split()
            weight = [p.split("=", 1)[1] for p in params if p.startswith("weight=")]
            servers[match.group("address")] = {"state": "down" if "down" in params else "up",
                                               "weight": int(weight[-1]) if weight and weight[-1].isdigit() else 1}
    return servers


MAX_WEIGHT = 1000


def check_weight(weight):
    """Raises UpstreamError unless ``weight`` is None or an integer from 1 to MAX_WEIGHT (the
    control endpoint's bound)."""
    if weight is not None and (isinstance(weight, bool) or not isinstance(weight, int)
                               or not 1 <= weight <= MAX_WEIGHT):
        raise UpstreamError("weight must be an integer from 1 to %d, got %r" % (MAX_WEIGHT, weight))


def set_backend_state(text, address, state, weight=None):
    """Returns the text with ``address``'s line set to ``state`` ('up' or 'down') and, when
    given, ``weight`` (weight 1 is written as no weight parameter, nginx's default); every
    other line is kept byte for byte. Raises UpstreamError if the backend is absent."""
    if state not in ("up", "down"):
        raise ValueError("state must be up or down")
    check_weight(weight)
    lines = text.splitlines(True)
    found = False
    for i, line in enumerate(lines):
        match = SERVER_LINE.match(line.rstrip("\r\n"))
        if not match or match.group("address") != address:
            continue
        found = True
        params = [p for p in match.group("params").split()
                  if p != "down" and not (weight is not None and p.startswith("weight="))]
        if weight is not None and weight != 1:
            params.insert(0, "weight=%d" % weight)
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


# --- the control socket (runtime path) ----------------------------------------------

class ControlUnavailable(Exception):
    """The runtime path cannot be used; the message says why (the module reports it)."""


class _UnixConnection(HTTPConnection):
    def __init__(self, path, timeout):
        HTTPConnection.__init__(self, "localhost", timeout=timeout)
        self._path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def control_request(path, method, uri, fields=None, timeout=5.0):
    """One HTTP request to the control socket at ``path``. Returns (status, decoded JSON)."""
    conn = _UnixConnection(path, timeout)
    try:
        body = urlencode(sorted(fields.items())) if fields is not None else None
        headers = {"Content-Type": "application/x-www-form-urlencoded"} if body is not None else {}
        conn.request(method, uri, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    try:
        return response.status, json.loads(data.decode("utf-8"))
    except ValueError:
        return response.status, {"error": data.decode("utf-8", "replace").strip()[:300]}


class Control(object):
    """The nginx role's control endpoint (``nginx_upstream_runtime``): GET and POST
    /upstreams/NAME on a unix socket."""

    def __init__(self, socket_path, timeout=5.0):
        self.socket_path = socket_path
        self.timeout = timeout

    def status(self, upstream):
        """{address: {state, weight, in_flight, failures, skipped}} of the running nginx.
        Raises ControlUnavailable when there is no runtime state for ``upstream``."""
        if not os.path.exists(self.socket_path):
            raise ControlUnavailable("no control socket at %s (nginx_upstream_runtime off, or nginx "
                                     "not running)" % self.socket_path)
        try:
            status, doc = control_request(self.socket_path, "GET", "/upstreams/" + upstream, timeout=self.timeout)
        except (OSError, socket.error) as exc:
            raise ControlUnavailable("control socket %s does not answer: %s" % (self.socket_path, exc))
        if status == 404:
            raise ControlUnavailable("the running nginx balances upstream %s without runtime state: %s"
                                     % (upstream, doc.get("error", "")))
        if status != 200 or not isinstance(doc.get("backends"), dict):
            raise ControlUnavailable("control socket answered %d: %s" % (status, doc.get("error", doc)))
        return doc["backends"]

    def set(self, upstream, address, state, weight=None):
        fields = {"backend": address, "state": state}
        if weight is not None:
            fields["weight"] = str(weight)
        status, doc = control_request(self.socket_path, "POST", "/upstreams/" + upstream, fields,
                                      timeout=self.timeout)
        if status != 200:
            raise UpstreamError("the control socket refused %s %s: %d %s"
                                % (address, state, status, doc.get("error", doc)))
        return doc["backends"]


def wait_for_in_flight(control, upstream, address, timeout, clock=time.monotonic, sleep=time.sleep,
                       interval=0.1):
    """Waits until the running nginx has no request in flight to ``address``.
    Returns (drained, seconds, in_flight)."""
    start = clock()
    while True:
        in_flight = control.status(upstream)[address]["in_flight"]
        elapsed = clock() - start
        if in_flight == 0:
            return True, elapsed, 0
        if elapsed >= timeout:
            return False, elapsed, in_flight
        sleep(interval)


def _write_validated(path, before, after, run, nginx, result):
    backup = path + ".prev"
    write_atomically(path, after, backup)
    result["backup"] = backup
    rc, out, err = run([nginx, "-t"])
    if rc != 0:
        shutil.copy2(backup, path)
        raise UpstreamError("nginx -t failed, %s restored: %s" % (path, (err or out).strip()))


def set_upstream_backend(path, address, state, run, check_mode=False, drain=True, drain_timeout=60.0,
                         reload_timeout=10.0, nginx="nginx", pid_file="/run/nginx.pid", proc="/proc",
                         clock=time.monotonic, sleep=time.sleep, weight=None, upstream=None, control=None):
    """Brings one backend to ``state`` (and ``weight``, when given) in the file and in the
    running nginx. ``run(argv)`` runs a command and returns (rc, stdout, stderr); ``control``
    (a Control, or None) is the runtime path, tried first. Returns the result dict for the
    module.

    Idempotence covers the running nginx too: on the runtime path, a file that already says
    ``state`` while nginx says otherwise (a run that died between the two) is applied
    again; on the reload path, a file written after the current workers started is
    reloaded (and drained) anyway.
    """
    with open(path) as handle:
        before = handle.read()
    after = set_backend_state(before, address, state, weight)
    upstream = upstream or os.path.basename(path)[:-len(".conf")]
    file_changed = after != before
    wanted = parse_servers(after)[address]
    result = {
        "changed": file_changed,
        "backend": address,
        "state": state,
        "previous_state": parse_backends(before)[address],
        "weight": wanted["weight"],
        "file_changed": file_changed,
        "applied_via": None,
        "runtime_unavailable": None,
        "reloaded": False,
        "drained": None,
        "drain_seconds": None,
        "in_flight": None,
        "old_workers_remaining": None,
        "backup": None,
        "diff": {"before": before, "after": after, "before_header": path, "after_header": path},
        "warnings": [],
    }

    live = None
    if control is not None:
        try:
            live = control.status(upstream)
            if address not in live:
                raise ControlUnavailable("the running nginx does not know backend %s of %s yet"
                                         % (address, upstream))
        except ControlUnavailable as exc:
            live = None
            result["runtime_unavailable"] = str(exc)

    if live is not None:
        now = live[address]
        runtime_pending = (now["state"], now["weight"]) != (wanted["state"], wanted["weight"])
        result["changed"] = file_changed or runtime_pending
        result["applied_via"] = "runtime" if result["changed"] else None
        if check_mode:
            return result
        if result["changed"]:
            if file_changed:
                _write_validated(path, before, after, run, nginx, result)
            control.set(upstream, address, state, weight)
        # A drain that changes nothing still waits: the run before (its drain timed out, or
        # it was killed after the control call) may have left requests in flight.
        if state == "down" and drain:
            drained, seconds, in_flight = wait_for_in_flight(control, upstream, address, drain_timeout, clock, sleep)
            result.update(drained=drained, drain_seconds=round(seconds, 3), in_flight=in_flight)
            if not drained:
                result["warnings"].append(
                    "%d request(s) still in flight to %s after %gs" % (in_flight, address, drain_timeout))
        return result

    master = master_pid(pid_file, proc)
    current = workers(master, proc) if master else {}
    live_since = newest_worker_start(current, proc) if master else None
    reload_pending = master is not None and (live_since is None or os.stat(path).st_mtime > live_since)
    result["changed"] = file_changed or reload_pending
    result["applied_via"] = "reload" if reload_pending or (file_changed and master is not None) else None
    if check_mode or not result["changed"]:
        return result

    if file_changed:
        _write_validated(path, before, after, run, nginx, result)

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
