"""roles/monitoring/files/keelson_edge.lua run in LuaJIT (lupa) with tests/unit/ngx_stub.lua
standing in for lua-nginx-module, and with the settings module the role's own template renders:
what nginx's log phase counts per request (and at what cost), and the Prometheus text the
metrics server answers. Also the nginx role's http-level Lua, which calls the hook. The same
code on nginx is checked by molecule/nginx (tests/test_monitoring.py)."""
import json
import re
import types
from pathlib import Path

import jinja2
import lupa.luajit21 as luajit
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "roles" / "monitoring"
NGINX = ROOT / "roles" / "nginx"
DEFAULT_BUCKETS = yaml.safe_load((MONITORING / "defaults" / "main.yml").read_text())["monitoring_edge_buckets"]


def render_settings(buckets):
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(MONITORING / "templates")), trim_blocks=True,
                             keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    return env.get_template("keelson_edge_settings.lua.j2").render(
        ansible_managed="Ansible managed", monitoring_edge_buckets=buckets)


def make_lua(tmp_path, buckets=DEFAULT_BUCKETS):
    """A fresh LuaJIT state (one nginx worker) with the stub, the settings and the module."""
    (tmp_path / "keelson_edge_settings.lua").write_text(render_settings(buckets))
    rt = luajit.LuaRuntime(unpack_returned_tuples=True)
    rt.execute("package.path = %r .. ';' .. %r .. ';' .. %r .. ';' .. package.path"
               % (str(tmp_path / "?.lua"), str(MONITORING / "files" / "?.lua"), str(Path(__file__).parent / "?.lua")))
    stub = rt.eval('require("ngx_stub")')
    rt.execute("ngx.shared.keelson_edge = require('ngx_stub').dict()")
    module = rt.eval('require("keelson_edge")')
    return types.SimpleNamespace(rt=rt, stub=stub, m=module)


@pytest.fixture
def lua(tmp_path):
    return make_lua(tmp_path)


def request(lua, site, status="200", request_time="0.012"):
    """The log phase of one request, with nginx's variables as nginx gives them (strings)."""
    var = {"status": status, "request_time": request_time}
    if site is not None:
        var["keelson_site"] = site
    lua.stub.run(lua.rt.eval("function() return require('keelson_edge').log() end"),
                 lua.rt.table_from({"var": lua.rt.table_from(var)}))


def scrape(lua):
    status, body, _ctx = lua.stub.run(lua.rt.eval("function() return require('keelson_edge').serve() end"))
    assert status is None
    assert lua.rt.eval("ngx.header['Content-Type']") == "text/plain; version=0.0.4; charset=utf-8"
    return body


SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')


def parse(text):
    """Prometheus' text format, strictly: {(name, frozenset(labels)): value}, and the TYPE of
    each family declared before its samples."""
    samples, types_ = {}, {}
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name not in types_
            types_[name] = kind
            continue
        match = SAMPLE.match(line)
        assert match, line
        name, labels_text, value = match.groups()
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in types_ else name
        assert family in types_, "sample before its TYPE: " + line
        labels, pos = {}, 0
        for m in LABEL.finditer(labels_text or ""):
            assert m.start() == pos, line
            labels[m.group(1)] = m.group(2).encode().decode("unicode_escape")
            pos = m.end()
        assert pos == len(labels_text or ""), line
        key = (name, frozenset(labels.items()))
        assert key not in samples, "duplicate series: " + line
        samples[key] = float(value)
    return samples, types_


def value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())))


def buckets_of(samples, site):
    out = {}
    for (name, labels), v in samples.items():
        labels = dict(labels)
        if name == "keelson_edge_request_duration_seconds_bucket" and labels["site"] == site:
            out[labels["le"]] = v
    return out


def test_the_metric_contract_of_the_alert_rules(lua):
    for status, t in (("200", "0.004"), ("200", "0.020"), ("502", "0.300"), ("404", "0.001")):
        request(lua, "web", status, t)
    request(lua, "api", "200", "12.5")
    samples, kinds = parse(scrape(lua))
    assert kinds == {"keelson_edge_requests_total": "counter", "keelson_edge_request_duration_seconds": "histogram"}
    assert value(samples, "keelson_edge_requests_total", site="web", code="200") == 2
    assert value(samples, "keelson_edge_requests_total", site="web", code="502") == 1
    assert value(samples, "keelson_edge_requests_total", site="web", code="404") == 1
    assert value(samples, "keelson_edge_requests_total", site="api", code="200") == 1
    assert value(samples, "keelson_edge_request_duration_seconds_count", site="web") == 4
    assert value(samples, "keelson_edge_request_duration_seconds_sum", site="web") == pytest.approx(0.325)
    assert value(samples, "keelson_edge_request_duration_seconds_sum", site="api") == pytest.approx(12.5)
    web = buckets_of(samples, "web")
    assert list(web) == ["0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf"]
    assert [web[le] for le in ("0.005", "0.01", "0.025", "0.25", "0.5", "10", "+Inf")] == [2, 2, 3, 3, 4, 4, 4]
    # over the last bound: only +Inf
    api = buckets_of(samples, "api")
    assert api["10"] == 0 and api["+Inf"] == 1


def test_buckets_are_cumulative_and_a_bound_is_inclusive(lua):
    for t in ("0.005", "0.0051", "0.010", "0.000", "10.000", "10.001"):
        request(lua, "web", "200", t)
    samples, _ = parse(scrape(lua))
    web = buckets_of(samples, "web")
    # le is "less than or equal": 0.005 and 0.000 in the first, 0.0051 and 0.010 in the second
    assert web["0.005"] == 2 and web["0.01"] == 4 and web["10"] == 5 and web["+Inf"] == 6
    ordered = [web[le] for le in web]
    assert ordered == sorted(ordered)
    assert value(samples, "keelson_edge_request_duration_seconds_count", site="web") == web["+Inf"]


def test_requests_no_site_served_are_not_counted(lua):
    # the default servers (444, rejected names), the status and metrics servers: $keelson_site is ""
    request(lua, "", "444")
    request(lua, None, "400")
    assert scrape(lua) == (
        "# HELP keelson_edge_requests_total Requests served by each site, by HTTP status code.\n"
        "# TYPE keelson_edge_requests_total counter\n"
        "# HELP keelson_edge_request_duration_seconds Request time ($request_time) by site.\n"
        "# TYPE keelson_edge_request_duration_seconds histogram\n")
    assert lua.rt.eval("#ngx.shared.keelson_edge:get_keys(0)") == 0


def test_each_request_costs_three_shared_dict_increments_and_no_new_key_once_seen(lua):
    incr = []
    lua.stub.on_incr = lambda key: incr.append(key)
    request(lua, "web", "200", "0.03")
    assert incr == ["r:web:200", "b:web:0.05", "s:web"]
    keys = lua.rt.eval("#ngx.shared.keelson_edge:get_keys(0)")
    for _ in range(50):
        request(lua, "web", "200", "0.03")
    assert len(incr) == 3 * 51
    assert lua.rt.eval("#ngx.shared.keelson_edge:get_keys(0)") == keys


def test_series_are_bounded_by_sites_codes_and_buckets(lua):
    for i in range(200):
        request(lua, "web", "200" if i % 2 else "503", "%.3f" % (i / 10))
    samples, _ = parse(scrape(lua))
    assert len(samples) == 2 + (len(DEFAULT_BUCKETS) + 1) + 2


def test_label_values_are_escaped(lua):
    request(lua, 'we"b\\x', "200")
    samples, _ = parse(scrape(lua))
    assert value(samples, "keelson_edge_requests_total", site='we"b\\x', code="200") == 1


def test_output_is_sorted_by_site_and_code(lua):
    for site, code in (("b", "500"), ("a", "200"), ("b", "200"), ("a", "404")):
        request(lua, site, code)
    lines = [line for line in scrape(lua).splitlines() if line.startswith("keelson_edge_requests_total")]
    assert lines == [
        'keelson_edge_requests_total{site="a",code="200"} 1',
        'keelson_edge_requests_total{site="a",code="404"} 1',
        'keelson_edge_requests_total{site="b",code="200"} 1',
        'keelson_edge_requests_total{site="b",code="500"} 1',
    ]


def test_counts_survive_a_reload_and_new_buckets_stay_consistent(tmp_path):
    """The dict outlives a reload (new workers, new module); a changed bucket list must still
    give cumulative buckets whose +Inf is _count."""
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    old = make_lua(tmp_path / "old", buckets=[0.1, 1])
    request(old, "web", "200", "0.05")
    request(old, "web", "200", "0.5")
    request(old, "web", "200", "5")
    dict_items = old.rt.eval("ngx.shared.keelson_edge.items")
    saved = {k: dict(v.items()) for k, v in dict_items.items()}

    new = make_lua(tmp_path / "new", buckets=[0.1, 0.25, 2.5])
    items = new.rt.eval("ngx.shared.keelson_edge.items")
    for key, item in saved.items():
        items[key] = new.rt.table_from(item)
    request(new, "web", "200", "0.2")
    samples, _ = parse(scrape(new))
    web = buckets_of(samples, "web")
    assert list(web) == ["0.1", "0.25", "2.5", "+Inf"]
    assert [web[le] for le in web] == [1, 2, 2, 3]   # the removed bound's request (0.5 in le=1) is left out
    assert value(samples, "keelson_edge_request_duration_seconds_count", site="web") == web["+Inf"]
    assert value(samples, "keelson_edge_requests_total", site="web", code="200") == 4


def test_settings_render_the_role_default_as_lua_numbers():
    text = render_settings(DEFAULT_BUCKETS)
    assert "buckets = { 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0 }," in text


# --- keelson.stack.nginx's http-level Lua, which calls the hook -------------------------

def render_upstreams(runtime_upstreams, edge):
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(NGINX / "templates")), trim_blocks=True,
                             keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    env.filters["to_json"] = json.dumps
    upstreams = [{"name": name, "servers": [{"host": "10.0.0.21", "port": 8001}]} for name in runtime_upstreams]
    return env.get_template("upstreams.conf.j2").render(
        ansible_managed="Ansible managed", nginx_runtime_upstreams=runtime_upstreams, nginx_edge_metrics=edge,
        nginx_upstreams=upstreams, nginx_lua_dir="/etc/nginx/keelson/lua", nginx_runtime_failure_statuses=[502],
        nginx_proxy_next_upstream_tries=2, nginx_upstream_keepalive=32, nginx_control_socket="/run/x.sock",
        nginx_runtime_max_weight=1000)


@pytest.mark.parametrize("runtime,edge", [(["app"], True), ([], True), (["app"], False), ([], False)])
def test_nginx_has_one_log_by_lua_that_calls_each_hook_in_use(runtime, edge):
    text = render_upstreams(runtime, edge)
    lua_in_use = bool(runtime) or edge
    assert text.count("log_by_lua_block") == (1 if lua_in_use else 0)
    assert text.count("lua_package_path") == (1 if lua_in_use else 0)
    assert ('require("keelson_upstreams").log()' in text) == bool(runtime)
    assert ('require("keelson_edge").log()' in text) == edge
    if edge:
        # a host where the monitoring role has not declared the dict yet runs nothing of it
        assert "if ngx.shared.keelson_edge then" in text
