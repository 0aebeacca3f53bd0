"""keelson.stack.nginx rejects bad input at argument validation, before any task runs."""
from argspec import assert_rejected, run_role

# keelson_environment comes from group_vars/all in a real inventory.
ENV = {"keelson_environment": "unit"}
UPSTREAMS = [{"name": "app", "servers": [{"host": "10.0.0.21", "port": 8001}]}]


def test_unknown_tls_profile_is_rejected():
    assert_rejected("nginx", {**ENV, "nginx_tls_profile": "old"},
                    "nginx_tls_profile must be one of: intermediate, modern, got: old")


def test_unknown_certificate_source_is_rejected():
    sites = [{"name": "web", "server_names": ["web.example.test"], "certificate": "selfsigned",
              "upstream": "app"}]
    assert_rejected("nginx", {**ENV, "nginx_upstreams": UPSTREAMS, "nginx_sites": sites},
                    "value of certificate must be one of: internal, provided, acme, got: selfsigned")


def test_backend_port_must_be_an_integer():
    upstreams = [{"name": "app", "servers": [{"host": "10.0.0.21", "port": "http"}]}]
    assert_rejected("nginx", {**ENV, "nginx_upstreams": upstreams},
                    "argument 'port' is of type str found in 'nginx_upstreams -> servers'", "unable to convert to int")


def test_site_without_server_names_is_rejected():
    sites = [{"name": "web", "upstream": "app"}]
    assert_rejected("nginx", {**ENV, "nginx_upstreams": UPSTREAMS, "nginx_sites": sites},
                    "missing required arguments: server_names found in nginx_sites")


def test_rate_limit_burst_must_be_an_integer():
    sites = [{"name": "web", "server_names": ["web.example.test"], "upstream": "app",
              "locations": [{"path": "/api/", "limit_req": {"zone": "api", "burst": "lots"}}]}]
    assert_rejected("nginx", {**ENV, "nginx_upstreams": UPSTREAMS, "nginx_sites": sites},
                    "burst", "unable to convert to int")


def test_smoke_check_without_a_path_is_rejected():
    checks = [{"site": "web", "method": "GET"}]
    assert_rejected("nginx", {**ENV, "nginx_smoke_checks": checks},
                    "missing required arguments: path found in nginx_smoke_checks")
    assert_rejected("nginx", {"nginx_smoke_checks": checks}, "missing required arguments: path found in nginx_smoke_checks",
                    entry_point="smoke")


def test_smoke_check_status_must_be_an_integer():
    assert_rejected("nginx", {"nginx_smoke_checks": [{"path": "/health", "status": "ok"}]},
                    "status", "unable to convert to int", entry_point="smoke")


def test_header_without_a_value_is_rejected():
    sites = [{"name": "web", "server_names": ["web.example.test"], "upstream": "app",
              "headers": [{"name": "Permissions-Policy"}]}]
    assert_rejected("nginx", {**ENV, "nginx_upstreams": UPSTREAMS, "nginx_sites": sites},
                    "missing required arguments: value found in nginx_sites -> headers")


def test_tls_protocols_must_be_a_list():
    assert_rejected("nginx", {**ENV, "nginx_ssl_protocols": {"TLSv1.3": True}}, "nginx_ssl_protocols",
                    entry_point="validate")


def test_header_name_with_a_space_is_refused_before_any_change():
    sites = [{"name": "web", "server_names": ["web.example.test"], "upstream": "app",
              "locations": [{"path": "/", "headers": [{"name": "X Bad", "value": "1"}]}]}]
    rc, out = run_role("nginx", {**ENV, "nginx_upstreams": UPSTREAMS, "nginx_sites": sites}, "validate")
    assert rc != 0 and "nginx_sites[0].locations[0].headers[0].name 'X Bad' is not a header name" in out, out
    assert "UNREACHABLE" not in out


def test_empty_cipher_list_is_refused_before_any_change():
    rc, out = run_role("nginx", {**ENV, "nginx_ssl_ciphers": ""}, "validate")
    assert rc != 0 and "nginx_ssl_ciphers is empty" in out, out
    assert "UNREACHABLE" not in out


def test_upstream_runtime_must_be_a_boolean():
    assert_rejected("nginx", {**ENV, "nginx_upstream_runtime": "sometimes"},
                    "nginx_upstream_runtime", "bool")
