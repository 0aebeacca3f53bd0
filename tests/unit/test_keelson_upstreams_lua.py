"""roles/nginx/files/keelson_upstreams.lua run in LuaJIT (lupa's, the Lua 5.1 dialect nginx's
LuaJIT speaks) with tests/unit/ngx_stub.lua standing in for lua-nginx-module: the state file
parser on files rendered by the role's own template and on malformed ones, the control
endpoint's body parsing and validation, and the balancer's choices (weighted round robin,
down backends, retries, passive failures, in-flight counts). The same code on the lab's nginx
is in tests/integration/test_nginx_runtime.py."""
import json
import types
from pathlib import Path
from urllib.parse import urlencode

import lupa.luajit21 as luajit
import pytest
from nginx_files import ROLE, render_upstream

from ansible_collections.keelson.stack.plugins.module_utils.nginx_upstream import parse_servers

A, B, C = "172.30.77.21:8001", "172.30.77.21:8002", "172.30.77.22:8001"


def py(value):
    """A Lua value as Python: tables with keys 1..n (or none) as lists, other tables as dicts."""
    if luajit.lua_type(value) != "table":
        return value
    items = dict(value.items())
    if list(items) == list(range(1, len(items) + 1)):
        return [py(v) for v in items.values()]
    return {k: py(v) for k, v in items.items()}


@pytest.fixture
def lua():
    """A fresh LuaJIT state (one nginx worker) with the stub and the module loaded."""
    rt = luajit.LuaRuntime(unpack_returned_tuples=True)
    rt.execute("package.path = %r .. ';' .. %r .. ';' .. package.path"
               % (str(ROLE / "files" / "?.lua"), str(Path(__file__).parent / "?.lua")))
    stub = rt.eval('require("ngx_stub")')
    module = rt.eval('require("keelson_upstreams")')
    return types.SimpleNamespace(rt=rt, stub=stub, m=module)


def parse(lua, text):
    """The peers M.parse reads from ``text``, or raises ValueError with its message."""
    result = lua.m.parse(text)
    if isinstance(result, tuple):
        raise ValueError(result[1])
    return py(result)


def load(lua, tmp_path, files, statuses=(502, 504, 503)):
    """init_by_lua on upstream files {name: text} in a directory, as nginx runs it at start and reload."""
    for name, text in files.items():
        (tmp_path / (name + ".conf")).write_text(text)
    lua.m.init(str(tmp_path), lua.rt.table_from(list(files)), lua.rt.table_from(list(statuses)))


def control(lua, method="GET", uri="/upstreams/api", body=None, body_in_file=False):
    """One request to the control endpoint: (status, decoded JSON answer)."""
    request = lua.rt.table_from({"method": method, "uri": uri, "body": body, "body_in_file": body_in_file})
    status, out, _ctx = lua.stub.run(lua.rt.eval("function() return require('keelson_upstreams').control(1000) end"),
                                     request)
    return status, json.loads(out)


def state(lua, upstream="api"):
    status, doc = control(lua, uri="/upstreams/" + upstream)
    assert status == 200, doc
    return doc


def pick(lua, tries=2, ctx=None):
    """balancer_by_lua for one attempt: (status given to ngx.exit or None, peer set, ctx)."""
    before = len(lua.stub.peers)
    status, _out, ctx = lua.stub.run(lua.rt.eval("function() return require('keelson_upstreams').balance('api', %d) end"
                                                 % tries), None, ctx)
    peers = py(lua.stub.peers)
    return status, peers[-1] if len(peers) > before else None, ctx


def finish(lua, ctx, upstream_status="200"):
    """log_by_lua at the end of the request."""
    lua.stub.run(lua.rt.eval("function() return require('keelson_upstreams').log() end"),
                 lua.rt.table_from({"upstream_status": upstream_status}), ctx)


def request(lua, upstream_status="200"):
    _status, peer, ctx = pick(lua)
    finish(lua, ctx, upstream_status)
    return peer


FOUR = [{"host": "172.30.77.21", "port": 8001}, {"host": "172.30.77.21", "port": 8002},
        {"host": "172.30.77.22", "port": 8001, "down": True}, {"host": "172.30.77.22", "port": 8002}]


# --- the state file ----------------------------------------------------------------

def test_files_the_role_renders_are_read_as_the_python_side_reads_them(lua):
    text = render_upstream(FOUR, live={"172.30.77.21:8002": {"state": "down", "weight": 1},
                                       "172.30.77.22:8002": {"state": "up", "weight": 5}})
    assert text.splitlines() == [
        "server 172.30.77.21:8001 max_fails=3 fail_timeout=10s;",
        "server 172.30.77.21:8002 max_fails=3 fail_timeout=10s down;",
        "server 172.30.77.22:8001 max_fails=3 fail_timeout=10s down;",
        "server 172.30.77.22:8002 weight=5 max_fails=3 fail_timeout=10s;",
    ]
    peers = parse(lua, text)
    assert [(p["addr"], p["host"], p["port"], p["weight"], p["max_fails"], p["fail_timeout"], p["state"])
            for p in peers] == [
        ("172.30.77.21:8001", "172.30.77.21", 8001, 1, 3, 10, "up"),
        ("172.30.77.21:8002", "172.30.77.21", 8002, 1, 3, 10, "down"),
        ("172.30.77.22:8001", "172.30.77.22", 8001, 1, 3, 10, "down"),
        ("172.30.77.22:8002", "172.30.77.22", 8002, 5, 3, 10, "up"),
    ]
    # keelson.stack.nginx_upstream and the role's converge read the same file the same way
    assert {p["addr"]: {"state": p["state"], "weight": p["weight"]} for p in peers} == parse_servers(text)


def test_per_upstream_passive_health_settings_are_read(lua):
    text = render_upstream(FOUR[:1], max_fails=0, fail_timeout=30)
    assert text == "server 172.30.77.21:8001 max_fails=0 fail_timeout=30s;\n"
    assert [(p["max_fails"], p["fail_timeout"]) for p in parse(lua, text)] == [(0, 30)]


def test_comments_blank_lines_crlf_and_nginx_defaults(lua):
    text = ("# written by keelson.stack.nginx\r\n\r\n"
            "  server 10.0.0.1:80;   # canary\r\n"
            "server 10.0.0.2:80 weight=2 down ;\r\n")
    assert [(p["addr"], p["weight"], p["max_fails"], p["fail_timeout"], p["state"]) for p in parse(lua, text)] == [
        ("10.0.0.1:80", 1, 1, 10, "up"), ("10.0.0.2:80", 2, 1, 10, "down")]  # nginx's defaults: 1 and 10s
    assert parse(lua, "") == [] and parse(lua, "# no backends yet\n") == []


@pytest.mark.parametrize("line, error", [
    ("server app1.internal:8001 max_fails=3 fail_timeout=10s;", "needs IPv4:PORT, got app1.internal:8001"),
    ("server [::1]:8001 max_fails=3 fail_timeout=10s;", "needs IPv4:PORT, got [::1]:8001"),
    ("server 10.0.0.1 max_fails=3 fail_timeout=10s;", "needs IPv4:PORT, got 10.0.0.1"),
    ("server 10.0.0.1:80 max_fails=3 fail_timeout=10s", "not a server line"),
    ("upstream api {", "not a server line"),
    ("server 10.0.0.1:80 backup;", "unknown parameter backup"),
    ("server 10.0.0.1:80 max_conns=10;", "unknown parameter max_conns=10"),
    ("server 10.0.0.1:80 weight=0;", "weight must be at least 1"),
    ("server 10.0.0.1:80 weight=-1;", "unknown parameter weight=-1"),
    ("server 10.0.0.1:80 weight=heavy;", "unknown parameter weight=heavy"),
    ("server 10.0.0.1:80 max_fails=x;", "unknown parameter max_fails=x"),
    # nginx's own time syntax beyond seconds: the role writes Ns only, the balancer says so
    ("server 10.0.0.1:80 fail_timeout=1m;", "unknown parameter fail_timeout=1m"),
    ("server 10.0.0.1:80 max_fails=3 fail_timeout=10s; server 10.0.0.2:80;", "unknown parameter fail_timeout=10s;"),
    ("server 172.30.77.21:8001 down;", "172.30.77.21:8001 listed twice"),
])
def test_malformed_lines_are_refused_with_their_line_number(lua, line, error):
    text = "# api\nserver 172.30.77.21:8001 max_fails=3 fail_timeout=10s;\n%s\n" % line
    with pytest.raises(ValueError) as refused:
        parse(lua, text)
    assert str(refused.value).startswith("line 3: ") and error in str(refused.value), refused.value


def test_init_loads_the_files_and_a_bad_or_missing_one_fails_the_start(lua, tmp_path):
    load(lua, tmp_path, {"api": render_upstream(FOUR), "web": "server 10.0.0.9:3000 max_fails=1 fail_timeout=5s;\n"})
    assert state(lua)["backends"] == {
        addr: {"state": st, "weight": 1, "in_flight": 0, "failures": 0, "skipped": False}
        for addr, st in [(A, "up"), (B, "up"), (C, "down"), ("172.30.77.22:8002", "up")]}
    assert list(state(lua, "web")["backends"]) == ["10.0.0.9:3000"]
    (tmp_path / "web.conf").write_text("server 10.0.0.9:3000 max_fails=1 fail_timeout=5s;\nserver web1:3000;\n")
    with pytest.raises(luajit.LuaError, match=r"keelson upstream web: .*/web\.conf line 2: the runtime balancer "
                                              r"needs IPv4:PORT, got web1:3000"):
        lua.m.init(str(tmp_path), lua.rt.table_from(["api", "web"]), lua.rt.table_from([502]))
    with pytest.raises(luajit.LuaError, match=r"keelson upstream shop: .*shop\.conf: No such file"):
        lua.m.init(str(tmp_path), lua.rt.table_from(["shop"]), lua.rt.table_from([502]))


def test_a_reload_reads_the_file_again_and_keeps_the_counters(lua, tmp_path):
    load(lua, tmp_path, {"api": render_upstream(FOUR)})
    _status, peer, ctx = pick(lua)  # a request in flight across the reload
    version = state(lua)["version"]
    load(lua, tmp_path, {"api": render_upstream(FOUR, live={peer: {"state": "down", "weight": 1}})})
    doc = state(lua)
    assert doc["version"] > version and doc["backends"][peer]["state"] == "down"
    assert doc["backends"][peer]["in_flight"] == 1
    finish(lua, ctx)
    assert state(lua)["backends"][peer]["in_flight"] == 0


# --- the control endpoint ------------------------------------------------------------

def form(**fields):
    """A body as keelson.stack.nginx_upstream's Control sends it (urlencode of sorted fields: ':' is %3A)."""
    return urlencode(sorted(fields.items()))


def test_control_changes_one_backend_and_bumps_the_version(lua, tmp_path):
    load(lua, tmp_path, {"api": render_upstream(FOUR)})
    before = state(lua)
    status, doc = control(lua, "POST", body=form(backend=A, state="down"))
    assert status == 200 and doc["backends"][A]["state"] == "down" and doc["version"] == before["version"] + 1
    assert {k: v for k, v in doc["backends"].items() if k != A} == {k: v for k, v in before["backends"].items()
                                                                    if k != A}
    # weight alone keeps the state, state alone keeps the weight
    status, doc = control(lua, "POST", body=form(backend=A, weight="7"))
    assert status == 200 and (doc["backends"][A]["state"], doc["backends"][A]["weight"]) == ("down", 7)
    status, doc = control(lua, "POST", body=form(backend=A, state="up"))
    assert status == 200 and (doc["backends"][A]["state"], doc["backends"][A]["weight"]) == ("up", 7)
    assert any("172.30.77.21:8001 set to up weight 7 at runtime" in line for line in py(lua.stub.logs))


@pytest.mark.parametrize("method, uri, body, status, error", [
    ("POST", "/upstreams/api", "backend=10.9.9.9:8001&state=down", 404, "backend 10.9.9.9:8001 is not in upstream api"),
    ("POST", "/upstreams/nosuch", "backend=172.30.77.21:8001&state=down", 404, "unknown upstream nosuch"),
    ("POST", "/upstreams/api/../web", "", 404, "use /upstreams/NAME"),
    ("POST", "/upstreams/", "", 404, "use /upstreams/NAME"),
    ("PUT", "/upstreams/api", "backend=172.30.77.21:8001&state=down", 405, "GET or POST"),
    ("DELETE", "/upstreams/api", "", 405, "GET or POST"),
    ("POST", "/upstreams/api", "state=down", 400, "backend=IPv4:PORT expected"),
    ("POST", "/upstreams/api", "backend=app1:8001&state=down", 400, "backend=IPv4:PORT expected"),
    ("POST", "/upstreams/api", "backend=172.30.77.21:8001%20&state=down", 400, "backend=IPv4:PORT expected"),
    ("POST", "/upstreams/api", "backend=172.30.77.21:8001&state=drain", 400, "state must be up or down"),
    ("POST", "/upstreams/api", "backend=172.30.77.21:8001&state=UP", 400, "state must be up or down"),
    ("POST", "/upstreams/api", "backend=172.30.77.21:8001&state=", 400, "state must be up or down"),
    ("POST", "/upstreams/api", "backend=172.30.77.21:8001&weight=0", 400, "weight must be an integer from 1 to 1000"),
    ("POST", "/upstreams/api", "backend=172.30.77.21:8001&weight=1001", 400, "weight must be an integer"),
    ("POST", "/upstreams/api", "backend=172.30.77.21:8001&weight=2x", 400, "weight must be an integer"),
    ("POST", "/upstreams/api", "backend=172.30.77.21:8001&weight=1e3", 400, "weight must be an integer"),
    ("POST", "/upstreams/api", "backend=172.30.77.21:8001&weight=+5", 400, "weight must be an integer"),
    ("POST", "/upstreams/api", "backend=172.30.77.21:8001&weight=", 400, "weight must be an integer"),
    ("POST", "/upstreams/api", "backend=172.30.77.21:8001&state=down&state=up", 400, "unknown or repeated field state"),
    ("POST", "/upstreams/api", "backend=172.30.77.21:8001&state=down&extra=1", 400, "unknown or repeated field extra"),
    ("POST", "/upstreams/api", "backend&state=down", 400, "unknown or repeated field backend"),
    ("POST", "/upstreams/api", "backend=172.30.77.21:8001&state=down" + "&state=down" * 7, 400, "at most 8 fields"),
    ("POST", "/upstreams/api", "{\"backend\": \"172.30.77.21:8001\", \"state\": \"down\"}", 400, ""),
])
def test_malformed_control_requests_are_refused_and_change_nothing(lua, tmp_path, method, uri, body, status, error):
    load(lua, tmp_path, {"api": render_upstream(FOUR)})
    before = state(lua)
    got, doc = control(lua, method, uri, body)
    assert got == status and error in doc["error"], (got, doc)
    assert state(lua) == before


def test_a_body_nginx_kept_in_a_file_is_too_large(lua, tmp_path):
    """Past client_body_buffer_size (1k) nginx writes the body to a file: refused unread."""
    load(lua, tmp_path, {"api": render_upstream(FOUR)})
    before = state(lua)
    assert control(lua, "POST", body=form(backend=A, state="down"), body_in_file=True) == (
        413, {"error": "body too large"})
    assert state(lua) == before


# --- the balancer ------------------------------------------------------------------

def test_smooth_weighted_round_robin_as_nginx(lua, tmp_path):
    """Weights 3, 1, 1: nginx's smooth weighted round robin gives a b a c a, then again."""
    load(lua, tmp_path, {"api": render_upstream(FOUR[:2] + FOUR[3:], live={A: {"state": "up", "weight": 3}})})
    d = "172.30.77.22:8002"
    assert [request(lua) for _ in range(10)] == [A, B, A, d, A] * 2
    # a weight set at runtime is used from the next pick on (the version moved)
    control(lua, "POST", body=form(backend=A, weight="1"))
    assert sorted(request(lua) for _ in range(3)) == sorted([A, B, d])


def test_down_backends_get_nothing_and_none_up_is_refused(lua, tmp_path):
    load(lua, tmp_path, {"api": render_upstream(FOUR)})
    assert {request(lua) for _ in range(12)} == {A, B, "172.30.77.22:8002"}  # C is down in the file
    control(lua, "POST", body=form(backend=A, state="down"))
    assert {request(lua) for _ in range(12)} == {B, "172.30.77.22:8002"}
    for addr in (B, "172.30.77.22:8002"):
        control(lua, "POST", body=form(backend=addr, state="down"))
    status, peer, _ctx = pick(lua)
    assert (status, peer) == (502, None)  # from the balancer phase nginx answers it as 500 (docs/nginx.md)
    assert "error: keelson upstream api: no backend is up" in py(lua.stub.logs)
    assert all(b["in_flight"] == 0 for b in state(lua)["backends"].values())


def test_in_flight_counts_hold_a_drained_backend_until_the_request_ends(lua, tmp_path):
    load(lua, tmp_path, {"api": render_upstream(FOUR)})
    _status, peer, ctx = pick(lua)
    assert state(lua)["backends"][peer]["in_flight"] == 1
    status, doc = control(lua, "POST", body=form(backend=peer, state="down"))
    assert status == 200 and doc["backends"][peer] == dict(doc["backends"][peer], state="down", in_flight=1)
    assert peer not in {request(lua) for _ in range(6)}
    assert state(lua)["backends"][peer]["in_flight"] == 1
    finish(lua, ctx)
    assert state(lua)["backends"][peer]["in_flight"] == 0


def test_a_drain_between_the_two_reads_makes_the_balancer_pick_again(lua, tmp_path):
    """The control sets `down` after the balancer listed the backend as up but before its
    second read: the request must not go there, and its count must not stay raised."""
    load(lua, tmp_path, {"api": render_upstream(FOUR[:2])})
    drained = []
    # what the control's POST state=down writes, done by "another worker" at that moment
    set_down = lua.rt.eval("function(addr) ngx.shared.keelson_upstreams:set('s:api:' .. addr, 'down') end")

    def drain_on_first_count(key):
        if not drained and key.startswith("i:api:"):
            drained.append(key[len("i:api:"):])
            set_down(drained[0])
    lua.stub.on_incr = drain_on_first_count
    _status, peer, ctx = pick(lua)
    assert drained and peer is not None and peer != drained[0]
    backends = state(lua)["backends"]
    assert backends[drained[0]]["in_flight"] == 0 and backends[peer]["in_flight"] == 1
    finish(lua, ctx)


def test_a_retry_goes_to_another_backend_and_counts_the_failure(lua, tmp_path):
    load(lua, tmp_path, {"api": render_upstream(FOUR)})
    _status, first, ctx = pick(lua, tries=2)
    assert py(lua.stub.more_tries) == [1]  # proxy_next_upstream_tries 2: one more try
    _status, second, ctx = pick(lua, tries=2, ctx=ctx)   # nginx retries: the first attempt failed
    assert second not in (None, first)
    backends = state(lua)["backends"]
    assert (backends[first]["in_flight"], backends[first]["failures"]) == (0, 1)
    assert (backends[second]["in_flight"], backends[second]["failures"]) == (1, 0)
    finish(lua, ctx, "502, 200")
    backends = state(lua)["backends"]
    assert (backends[second]["in_flight"], backends[second]["failures"]) == (0, 0)
    assert py(lua.stub.more_tries) == [1]   # set once, on the first attempt


@pytest.mark.parametrize("tries, up, more", [(2, 3, [1]), (0, 3, [2]), (5, 3, [2]), (2, 1, [])])
def test_more_tries_are_capped_by_the_backends_up(lua, tmp_path, tries, up, more):
    servers = [{"host": "10.0.0.%d" % i, "port": 80} for i in range(1, 4)]
    load(lua, tmp_path, {"api": render_upstream(servers[:up])})
    pick(lua, tries=tries)
    assert py(lua.stub.more_tries) == more


def test_max_fails_within_fail_timeout_skip_a_backend_for_fail_timeout(lua, tmp_path):
    load(lua, tmp_path, {"api": render_upstream(FOUR[:2])})  # A and B, max_fails=3 fail_timeout=10s

    def fail_on_a():
        """One request whose attempt on A fails (502: the connection was refused)."""
        _status, peer, ctx = pick(lua)
        if peer != A:
            finish(lua, ctx)
            _status, peer, ctx = pick(lua)
        assert peer == A
        finish(lua, ctx, "502")

    fail_on_a()
    fail_on_a()
    lua.stub.advance(11)  # the failures are counted within fail_timeout only
    fail_on_a()
    assert state(lua)["backends"][A] == dict(state(lua)["backends"][A], failures=1, skipped=False)
    fail_on_a()
    fail_on_a()
    assert state(lua)["backends"][A] == dict(state(lua)["backends"][A], failures=0, skipped=True)
    assert "warn: keelson upstream api: 172.30.77.21:8001 failed 3 time(s), skipped for 10s" in py(lua.stub.logs)
    assert {request(lua) for _ in range(6)} == {B}
    lua.stub.advance(10)
    assert state(lua)["backends"][A]["skipped"] is False
    assert {request(lua) for _ in range(6)} == {A, B}


def test_statuses_that_nginx_would_not_retry_are_no_failure(lua, tmp_path):
    load(lua, tmp_path, {"api": render_upstream(FOUR[:1])})
    for status in ("500", "404", "429", "200", ""):
        request(lua, status)
    assert state(lua)["backends"][A] == dict(state(lua)["backends"][A], failures=0, skipped=False)
    for status in ("504", "503", "200, 502"):
        request(lua, status)
    assert state(lua)["backends"][A]["skipped"] is True


def test_max_fails_zero_never_skips_and_all_failed_still_serves(lua, tmp_path):
    load(lua, tmp_path, {"api": render_upstream(FOUR[:1], max_fails=0)})
    for _ in range(5):
        request(lua, "502")
    assert state(lua)["backends"][A] == dict(state(lua)["backends"][A], failures=0, skipped=False)
    # every backend left has failed: nginx then tries them anyway, and so does the balancer
    load(lua, tmp_path, {"api": render_upstream(FOUR[:2])})
    for _ in range(6):
        request(lua, "502")
    assert all(b["skipped"] for b in state(lua)["backends"].values())
    assert request(lua) in (A, B)
