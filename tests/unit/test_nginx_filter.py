"""nginx_edge_errors: the nginx role's edge settings refused before any change."""
import pytest

from ansible_collections.keelson.stack.plugins.filter.nginx import nginx_edge_errors


def site(**extra):
    return dict({"name": "web", "server_names": ["web.example.test"], "upstream": "app"}, **extra)


def test_sound_settings_have_no_errors():
    good = site(headers=[{"name": "Permissions-Policy", "value": "geolocation=()"}],
                locations=[{"path": "/events/", "buffering": False, "proxy_read_timeout": "1h",
                            "headers": [{"name": "X-Accel-Buffering", "value": "no"}]},
                           {"path": "/static/", "root": "/srv/www", "expires": "30d"},
                           {"path": "/assets/", "root": "/srv/www", "cache_control": "public, immutable"}])
    assert nginx_edge_errors([good], ssl_ciphers="ECDHE-RSA-AES128-GCM-SHA256", ssl_protocols=["TLSv1.3"]) == []


@pytest.mark.parametrize("name", ["X Frame", "X-Bad\nInjected: 1", "Colon:Name", ""])
def test_bad_header_names_are_named(name):
    errors = nginx_edge_errors([site(headers=[{"name": name, "value": "1"}])])
    assert len(errors) == 1 and errors[0].startswith("nginx_sites[0].headers[0].name %r is not a header name" % name)


def test_location_header_value_with_a_newline():
    bad = site(locations=[{"path": "/", "headers": [{"name": "X-Ok", "value": "a\r\nSet-Cookie: x"}]}])
    assert nginx_edge_errors([bad]) == ["nginx_sites[0].locations[0].headers[0].value of 'X-Ok' contains a newline"]


def test_location_rules():
    bad = {"name": "s", "server_names": ["s.test"], "locations": [
        {"path": "/a", "root": "/srv", "upstream": "app"},
        {"path": "/b"},
        {"path": "/c", "root": "/srv", "expires": "1h", "cache_control": "no-store"},
    ]}
    assert nginx_edge_errors([site(), bad]) == [
        "nginx_sites[1].locations[0] (/a): set root (static files) or upstream, not both",
        "nginx_sites[1].locations[1] (/b): needs root, upstream, or an upstream on the site",
        "nginx_sites[1].locations[2] (/c): set expires or cache_control, not both (each sends Cache-Control)",
    ]


def test_empty_tls_overrides_are_refused_and_null_keeps_the_profile():
    assert nginx_edge_errors([], ssl_ciphers=None, ssl_protocols=None) == []
    errors = nginx_edge_errors([], ssl_ciphers=" ", ssl_protocols=[], ssl_ecdh_curve="", gzip_comp_level=10)
    assert [e.split(" ")[0] for e in errors] == ["nginx_ssl_ciphers", "nginx_ssl_protocols", "nginx_ssl_ecdh_curve",
                                                 "nginx_gzip_comp_level"]


def test_unknown_tls_protocol_is_refused():
    assert nginx_edge_errors([], ssl_protocols=["TLSv1.3", "SSLv3"]) == [
        "nginx_ssl_protocols: SSLv3 not one of TLSv1, TLSv1.1, TLSv1.2, TLSv1.3"]


def test_maintenance_retry_after_must_be_a_second_to_a_day():
    assert nginx_edge_errors([], maintenance_retry_after=1) == []
    assert nginx_edge_errors([], maintenance_retry_after=86400) == []
    for bad in (0, -5, 86401):
        assert nginx_edge_errors([], maintenance_retry_after=bad) == [
            "nginx_maintenance_retry_after %d is not between 1 and 86400 seconds" % bad]
