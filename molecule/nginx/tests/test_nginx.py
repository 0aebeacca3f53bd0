"""The nginx role on a real instance: HTTPS sites with the internal CA, a provided and an
ACME (pebble) certificate, headers, redirect, rate limit, basic auth, upstream contract.

Requests are made with curl on the instance against 127.0.0.1 with --resolve, so the
name-based routing, SNI and certificate checks are the real ones."""
import json

import pytest

CA = "/etc/nginx/keelson/tls/internal-ca.crt"
WEB = "web.molecule.test"


def curl(host, url, *args, name=WEB, port=443):
    """Runs curl on the instance; returns (status, headers dict, body)."""
    cmd = ["curl", "-sS", "--max-time", "10", "--resolve", f"{name}:{port}:127.0.0.1",
           "-D", "-", *args, url]
    res = host.run(" ".join(f"'{c}'" for c in cmd))
    assert res.rc == 0, res.stderr
    head, _, body = res.stdout.replace("\r\n", "\n").partition("\n\n")
    lines = head.splitlines()
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers.setdefault(key.strip().lower(), []).append(value.strip())
    return status, headers, body


def nginx_version(host):
    return tuple(int(x) for x in host.run("nginx -v").stderr.split("/")[1].split()[0].split("."))


def test_configuration_is_valid_and_nginx_running(host):
    assert host.run("nginx -t").rc == 0
    assert host.service("nginx").is_running
    assert host.service("nginx").is_enabled


def test_https_proxies_to_the_backends_with_the_internal_ca(host):
    bodies = set()
    for _ in range(6):
        status, _, body = curl(host, f"https://{WEB}/", "--cacert", CA)
        assert status == 200
        bodies.add(body.strip())
    assert bodies <= {"backend1", "backend2"} and bodies, bodies


def test_security_headers(host):
    status, headers, _ = curl(host, f"https://{WEB}/", "--cacert", CA)
    assert status == 200
    assert headers["strict-transport-security"] == ["max-age=63072000; includeSubDomains"]
    assert headers["x-frame-options"] == ["DENY"]
    assert headers["x-content-type-options"] == ["nosniff"]
    assert headers["referrer-policy"] == ["strict-origin-when-cross-origin"]
    assert headers["content-security-policy"] == ["default-src 'self'"]
    assert headers["server"] == ["nginx"], "server_tokens off hides the version"


def test_site_overrides_the_csp(host):
    status, headers, _ = curl(host, "https://provided.molecule.test/", "-k",
                              name="provided.molecule.test")
    assert status == 200
    assert headers["content-security-policy"] == ["default-src 'none'"]


def test_http_redirects_to_https(host):
    status, headers, _ = curl(host, f"http://{WEB}/some/path?q=1", port=80)
    assert status == 301
    assert headers["location"] == [f"https://{WEB}/some/path?q=1"]


def test_acme_challenge_path_is_not_redirected(host):
    host.run("echo token-body > /var/www/keelson-acme/.well-known/acme-challenge/probe")
    try:
        status, _, body = curl(host, f"http://{WEB}/.well-known/acme-challenge/probe", port=80)
    finally:
        host.run("rm -f /var/www/keelson-acme/.well-known/acme-challenge/probe")
    assert status == 200 and body.strip() == "token-body"


def test_unknown_names_get_no_site(host):
    res = host.run(f"curl -sS --max-time 5 --resolve other.test:443:127.0.0.1 -k https://other.test/")
    assert res.rc != 0  # TLS handshake rejected (ssl_reject_handshake)
    res = host.run("curl -s --max-time 5 -o /dev/null -w '%{http_code}' -H 'Host: other.test' http://127.0.0.1/")
    assert res.stdout == "000"  # 444: connection closed without a response


def test_basic_auth(host):
    url = f"https://{WEB}/private/"
    status, headers, _ = curl(host, url, "--cacert", CA)
    assert status == 401
    assert headers["www-authenticate"] == ['Basic realm="Restricted"']
    assert headers["x-frame-options"] == ["DENY"], "headers also on error responses"
    status, _, _ = curl(host, url, "--cacert", CA, "-u", "staging:wrong-password")
    assert status == 401
    status, _, body = curl(host, url, "--cacert", CA, "-u", "staging:molecule-staging-password")
    assert status == 200 and "private" in body
    htpasswd = host.file("/etc/nginx/keelson/htpasswd")
    assert htpasswd.mode == 0o640 and htpasswd.group == "www-data"
    assert htpasswd.content_string.startswith("staging:$6$")


def test_rate_limit_answers_429_after_the_burst(host):
    # 300 requests, 50 at a time: well above 100 r/s with a burst of 10.
    host.run("rm -rf /tmp/keelson-rl && mkdir /tmp/keelson-rl")
    res = host.run(
        f"curl -s --parallel --parallel-max 50 --cacert {CA} --resolve {WEB}:443:127.0.0.1 "
        f"-o '/tmp/keelson-rl/#1' "
        f"-w '%{{http_code}} %{{url_effective}} %header{{retry-after}} %header{{x-content-type-options}}\\n' "
        f"'https://{WEB}/api/?n=[1-300]'")
    lines = [line.split() for line in res.stdout.splitlines()]
    codes = [line[0] for line in lines]
    assert len(codes) == 300, res.stderr
    assert codes.count("200") >= 11, codes
    assert codes.count("429") > 0, codes
    assert set(codes) <= {"200", "429"}, codes
    limited = [line for line in lines if line[0] == "429"]
    assert all(line[2:] == ["1", "nosniff"] for line in limited), limited
    body = host.file("/tmp/keelson-rl/" + limited[0][1].split("n=")[1]).content_string
    assert json.loads(body) == {"error": "too many requests"}


def test_json_access_log_has_upstream_and_timings(host):
    curl(host, f"https://{WEB}/", "--cacert", CA, "-H", "User-Agent: keelson-log-probe")
    lines = [json.loads(line) for line in host.file("/var/log/nginx/access.log").content_string.splitlines()
             if "keelson-log-probe" in line]
    entry = lines[-1]
    assert entry["status"] == 200
    assert entry["upstream_addr"] in ("127.0.0.1:8001", "127.0.0.1:8002")
    assert entry["upstream_status"] == "200"
    for key in ("request_time", "upstream_connect_time", "upstream_header_time", "upstream_response_time"):
        assert key in entry


def test_upstream_contract_files(host):
    servers = host.file("/etc/nginx/keelson/upstreams/app.conf").content_string.splitlines()
    assert servers == [
        "server 127.0.0.1:8001 max_fails=3 fail_timeout=10s;",
        "server 127.0.0.1:8002 max_fails=3 fail_timeout=10s;",
    ]
    upstreams = host.file("/etc/nginx/keelson/upstreams.conf").content_string
    assert "include /etc/nginx/keelson/upstreams/app.conf;" in upstreams
    assert "keepalive 16;" in upstreams
    # the runtime balancer, with nginx's keepalive cache declared after it (so it wraps it)
    block = upstreams[upstreams.index("upstream app {"):]
    assert block.index("balancer_by_lua_block") < block.index("keepalive 16;")


def test_stub_status_on_loopback(host):
    res = host.run("curl -s http://127.0.0.1:8080/nginx_status")
    assert res.stdout.startswith("Active connections:")
    listening = host.socket("tcp://127.0.0.1:8080")
    assert listening.is_listening
    assert not host.socket("tcp://0.0.0.0:8080").is_listening


def test_http2_per_nginx_version_and_no_session_tickets(host):
    res = host.run(f"curl -s --http2 --cacert {CA} --resolve {WEB}:443:127.0.0.1 "
                   f"-o /dev/null -w '%{{http_version}}' https://{WEB}/")
    assert res.stdout == "2"
    http_conf = host.file("/etc/nginx/keelson/http.conf").content_string
    site = host.file("/etc/nginx/keelson/sites/web.conf").content_string
    if nginx_version(host) >= (1, 25, 1):
        assert "http2 on;" in site
    else:
        assert "listen 443 ssl http2;" in site
    # Mozilla's intermediate profile: no session tickets, whatever the nginx version.
    assert "ssl_session_tickets off;" in http_conf
    assert "ssl_prefer_server_ciphers off;" in http_conf


def test_tls_versions(host):
    base = f"curl -s -o /dev/null --cacert {CA} --resolve {WEB}:443:127.0.0.1 https://{WEB}/"
    assert host.run(base + " --tlsv1.1 --tls-max 1.1").rc != 0
    assert host.run(base + " --tlsv1.2 --tls-max 1.2").rc == 0
    assert host.run(base + " --tlsv1.3").rc == 0


def test_keys_are_private(host):
    for name in ("web", "acme", "provided"):
        key = host.file(f"/etc/nginx/keelson/tls/{name}.key")
        assert key.mode == 0o600 and key.user == "root", name
    assert host.file("/etc/nginx/keelson/acme/account.key").mode == 0o600
    # No backups left behind by the validated renders.
    assert host.run("find /etc/nginx -name '*~'").stdout == ""


def test_acme_certificate_from_pebble_is_served(host):
    name = f"{host.backend.get_hostname()}.lab.keelson.test"
    res = host.run(f"echo | openssl s_client -connect 127.0.0.1:443 -servername {name} 2>/dev/null"
                   " | openssl x509 -noout -issuer -ext subjectAltName")
    assert "Pebble" in res.stdout, res.stdout
    assert f"DNS:{name}" in res.stdout


SECURITY = ("strict-transport-security", "x-frame-options", "x-content-type-options", "referrer-policy",
            "content-security-policy")


def test_site_header_is_sent_with_the_security_headers(host):
    status, headers, _ = curl(host, f"https://{WEB}/", "--cacert", CA)
    assert status == 200
    assert headers["permissions-policy"] == ["geolocation=(), camera=()"]
    assert all(name in headers for name in SECURITY), headers


def test_location_with_its_own_headers_keeps_the_site_and_security_headers(host):
    status, headers, _ = curl(host, f"https://{WEB}/events/", "--cacert", CA)
    assert status == 404  # the backends have no /events/; the headers are nginx's
    assert headers["x-accel-buffering"] == ["no"]
    assert headers["permissions-policy"] == ["geolocation=(), camera=()"]
    for name in SECURITY:
        assert len(headers.get(name, [])) == 1, (name, headers)


def test_streaming_location_is_unbuffered_with_long_timeouts(host):
    site = host.file("/etc/nginx/keelson/sites/web.conf").content_string
    events = site.split("location /events/ {")[1].split("}")[0]
    assert "proxy_buffering off;" in events
    assert "proxy_read_timeout 1h;" in events and "proxy_send_timeout 1h;" in events


def test_static_files_with_expires_and_gzip(host):
    status, headers, body = curl(host, f"https://{WEB}/static/app.css", "--cacert", CA)
    assert status == 200 and body.startswith("body { margin: 0;")
    assert headers["cache-control"] == ["max-age=3600"]
    assert "expires" in headers
    assert all(name in headers for name in SECURITY)
    status, headers, _ = curl(host, f"https://{WEB}/static/app.css", "--cacert", CA,
                              "-H", "Accept-Encoding: gzip", "-o", "/dev/null")
    assert headers["content-encoding"] == ["gzip"] and headers["vary"] == ["Accept-Encoding"]
    assert curl(host, f"https://{WEB}/static/missing.css", "--cacert", CA)[0] == 404
    assert "gzip_comp_level 6;" in host.file("/etc/nginx/keelson/sites/web.conf").content_string


def test_static_files_with_cache_control_keep_the_security_headers(host):
    status, headers, _ = curl(host, f"https://{WEB}/assets/app.css", "--cacert", CA)
    assert status == 200
    assert headers["cache-control"] == ["public, max-age=31536000, immutable"]
    assert all(name in headers for name in SECURITY)
    assert headers["permissions-policy"] == ["geolocation=(), camera=()"]


def test_cipher_override_is_served(host):
    base = (f"curl -s -o /dev/null --cacert {CA} --resolve {WEB}:443:127.0.0.1 "
            f"--tlsv1.2 --tls-max 1.2 https://{WEB}/")
    # the site's certificate is ECDSA: ECDSA suites are the ones it can serve
    assert host.run(base + " --ciphers ECDHE-ECDSA-AES128-GCM-SHA256").rc == 0
    # in the intermediate profile, left out by nginx_ssl_ciphers
    assert host.run(base + " --ciphers ECDHE-ECDSA-CHACHA20-POLY1305").rc != 0


def test_runtime_backend_state_through_the_control_socket(host):
    """The Lua balancer serves app from the upstream file, and the root-only control socket
    changes a backend without a reload (the workers stay the same processes)."""
    sock = "/run/keelson-nginx/control.sock"
    assert host.file("/run/keelson-nginx").mode == 0o700
    assert host.file("/etc/tmpfiles.d/keelson-nginx.conf").contains("/run/keelson-nginx 0700 root root")
    with host.sudo():
        state = json.loads(host.check_output(f"curl -sS --unix-socket {sock} http://lb/upstreams/app"))
        assert {a: b["state"] for a, b in state["backends"].items()} == {
            "127.0.0.1:8001": "up", "127.0.0.1:8002": "up"}
        workers = host.check_output("pgrep -f '^nginx: worker process' | sort")
        refused = host.run(f"curl -sS -w '%{{http_code}}' -o /dev/null --unix-socket {sock} "
                           "-d 'backend=127.0.0.1:8001&weight=0' http://lb/upstreams/app")
        assert refused.stdout == "400"
        host.check_output(f"curl -sS --unix-socket {sock} -d 'backend=127.0.0.1:8001&state=down' "
                          "http://lb/upstreams/app")
        try:
            for _ in range(6):
                status, _, _ = curl(host, f"https://{WEB}/", "--cacert", CA)
                assert status == 200
            assert host.check_output("pgrep -f '^nginx: worker process' | sort") == workers
        finally:
            host.check_output(f"curl -sS --unix-socket {sock} -d 'backend=127.0.0.1:8001&state=up' "
                              "http://lb/upstreams/app")
    last = [json.loads(line) for line in host.file("/var/log/nginx/access.log").content_string.splitlines()[-6:]]
    assert {entry["upstream_addr"] for entry in last} == {"127.0.0.1:8002"}
