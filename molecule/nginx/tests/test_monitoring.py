"""keelson.stack.monitoring on the lb instance: the nginx exporter and the edge's own metrics on
the private address only, requests counted by site and status code, and the expiry of each
certificate nginx serves, still true after side_effect.yml renewed the ACME one with the nginx
role alone (no monitoring run since)."""
import datetime
import re

CA = "/etc/nginx/keelson/tls/internal-ca.crt"
WEB = "web.molecule.test"


def private(host):
    return host.ansible.get_variables()["keelson_private_address"]


def metrics(host, port):
    """{sample name with labels as written: value} from an endpoint on the private address."""
    text = host.check_output(f"curl -sS --max-time 10 http://{private(host)}:{port}/metrics")
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_exporters_listen_on_the_private_address_only(host):
    for port in (9113, 9145):
        assert host.socket(f"tcp://{private(host)}:{port}").is_listening, port
        assert not host.socket(f"tcp://0.0.0.0:{port}").is_listening, port
        assert not host.socket(f"tcp://:::{port}").is_listening, port


def test_nginx_exporter_reads_stub_status(host):
    samples = metrics(host, 9113)
    assert samples["nginx_up"] == 1
    assert samples["nginx_connections_accepted"] >= 1
    assert "nginx_connections_active" in samples


def test_a_request_through_a_site_is_counted_by_site_and_code(host):
    before = metrics(host, 9145)
    res = host.run(f"curl -s -o /dev/null -w '%{{http_code}}' --cacert {CA} --resolve {WEB}:443:127.0.0.1 "
                   f"https://{WEB}/no-such-page")
    assert res.stdout == "404"  # the backend's answer
    # names no site declares: 444 on port 80, the handshake refused on 443; neither is a site
    host.run("curl -s --max-time 5 -H 'Host: other.test' http://127.0.0.1/")
    host.run("curl -s --max-time 5 -k --resolve other.test:443:127.0.0.1 https://other.test/")
    after = metrics(host, 9145)

    def delta(name):
        return after.get(name, 0) - before.get(name, 0)
    assert delta('keelson_edge_requests_total{site="web",code="404"}') == 1
    assert delta('keelson_edge_request_duration_seconds_count{site="web"}') == 1
    assert delta('keelson_edge_request_duration_seconds_bucket{site="web",le="+Inf"}') == 1
    assert 'keelson_edge_request_duration_seconds_bucket{site="web",le="0.005"}' in after
    sites = {m.group(1) for name in after for m in [re.search(r'site="([^"]*)"', name)] if m}
    assert sites <= {"web", "acme", "provided"}, sites


def test_certificate_expiry_matches_each_served_certificate(host):
    """The acme site's certificate was renewed by side_effect.yml's nginx-only run: the path
    unit refreshed the metric without the monitoring role."""
    text = host.file("/var/lib/prometheus/node-exporter/keelson_certificates.prom").content_string
    with host.sudo():
        for site in ("web", "acme", "provided"):
            path = f"/etc/nginx/keelson/tls/{site}.crt"
            end = host.check_output(f"openssl x509 -noout -enddate -in {path}").split("=", 1)[1]
            expected = int(datetime.datetime.strptime(end, "%b %d %H:%M:%S %Y %Z")
                           .replace(tzinfo=datetime.timezone.utc).timestamp())
            line = f'keelson_certificate_expiry_timestamp_seconds{{site="{site}",path="{path}"}} {expected}'
            assert line in text.splitlines(), (line, text)
    # node_exporter serves them
    assert 'site="acme"' in host.check_output(
        f"curl -sS http://{private(host)}:9100/metrics | grep ^keelson_certificate_expiry_timestamp_seconds")
