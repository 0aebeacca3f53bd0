"""smoke_probes: the nginx role's smoke checks as health_gate probes."""
import base64

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.keelson.stack.plugins.filter.smoke import smoke_probes

SITES = [
    {"name": "web", "server_names": ["www.example.test", "example.test"], "certificate": "internal"},
    {"name": "api", "server_names": ["api.example.test"], "certificate": "acme",
     "locations": [{"path": "/admin", "basic_auth": True}]},
]
CA = "/etc/nginx/keelson/tls/internal-ca.crt"


def test_default_check_is_health_of_every_site_by_public_name():
    probes = smoke_probes([{"path": "/health"}], SITES, internal_ca_file=CA)
    assert [p["url"] for p in probes] == ["https://www.example.test/health", "https://api.example.test/health"]
    assert all(p["connect_address"] == "127.0.0.1" and p["method"] == "GET" and p["status"] == [200]
               for p in probes)
    # the internal CA for internal sites, the system store for ACME ones; never insecure
    assert probes[0]["ca_file"] == CA and "ca_file" not in probes[1]
    assert not any(p.get("insecure") for p in probes)
    assert probes[0]["name"] == "GET https://www.example.test/health"


def test_a_check_for_one_site_with_a_json_body():
    check = {"site": "web", "path": "/items", "method": "post", "body": {"name": "smoke"}, "status": 201,
             "body_contains": '"name": "smoke"'}
    (probe,) = smoke_probes([check], SITES)
    assert probe["method"] == "POST" and probe["status"] == [201]
    assert probe["body"] == '{"name": "smoke"}'
    assert probe["headers"] == {"Content-Type": "application/json"}
    assert probe["body_contains"] == '"name": "smoke"'


def test_a_text_body_is_sent_as_is():
    (probe,) = smoke_probes([{"site": "web", "path": "/echo", "method": "PUT", "body": "a=1"}], SITES)
    assert probe["body"] == "a=1" and probe["headers"] == {}


def test_basic_auth_only_where_the_site_needs_it():
    probes = smoke_probes([{"path": "/health"}], SITES, basic_auth_user={"name": "ops", "password": "s3cret"})
    assert "Authorization" not in probes[0]["headers"]
    assert probes[1]["headers"]["Authorization"] == "Basic " + base64.b64encode(b"ops:s3cret").decode()


def test_every_bad_check_is_named():
    with pytest.raises(AnsibleFilterError) as err:
        smoke_probes([{"path": "health"}, {"site": "shop", "path": "/"}], SITES)
    message = str(err.value)
    assert "nginx_smoke_checks[0]: path must start with '/'" in message
    assert "nginx_smoke_checks[1]: no site named 'shop' in nginx_sites (sites: api, web)" in message


def test_no_sites_no_probes():
    assert smoke_probes([{"path": "/health"}], []) == []
