"""roles/monitoring/files/certificate_expiry.py: which certificate files the sites that the nginx
role renders name, their notAfter (real PEM files made here with cryptography, leaf first in a
chain), and the textfile for node_exporter, written whole."""
import datetime
import importlib.util
import os
from pathlib import Path

import jinja2
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parents[2]
NGINX = ROOT / "roles" / "nginx"
SCRIPT = ROOT / "roles" / "monitoring" / "files" / "certificate_expiry.py"

spec = importlib.util.spec_from_file_location("certificate_expiry", SCRIPT)
certificate_expiry = importlib.util.module_from_spec(spec)
spec.loader.exec_module(certificate_expiry)


def certificate(common_name, not_after, issuer_key=None, issuer_name=None):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer_name or subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_after - datetime.timedelta(days=90))
            .not_valid_after(not_after)
            .sign(issuer_key or key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM), key, subject


def utc(*args):
    return datetime.datetime(*args, tzinfo=datetime.timezone.utc)


def render_site(site):
    """sites/NAME.conf as the nginx role's template renders it (its defaults, nginx 1.26)."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(NGINX / "templates")), trim_blocks=True,
                             keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    settings = yaml.safe_load((NGINX / "defaults" / "main.yml").read_text())
    # the role's fixed vars (paths); the templated ones need Ansible
    settings.update((k, v) for k, v in yaml.safe_load((NGINX / "vars" / "main.yml").read_text()).items()
                    if isinstance(v, str) and "{{" not in v)
    return env.get_template("site.conf.j2").render(
        dict(settings, item=site, ansible_managed="Ansible managed", nginx_http2_directive=True, nginx_site_ocsp={}))


def test_the_sites_the_nginx_role_renders_name_their_certificates(tmp_path):
    for name in ("web", "api"):
        (tmp_path / f"{name}.conf").write_text(render_site(
            {"name": name, "server_names": [f"{name}.example.test"], "upstream": "app"}))
    (tmp_path / "notes.txt").write_text("ssl_certificate /not/a/site.crt;\n")
    assert certificate_expiry.certificate_paths(str(tmp_path)) == [
        ("api", "/etc/nginx/keelson/tls/api.crt"),
        ("web", "/etc/nginx/keelson/tls/web.crt"),
    ]


def test_comments_quotes_relative_paths_and_variables(tmp_path):
    (tmp_path / "web.conf").write_text(
        "server {\n"
        "    # ssl_certificate /commented/out.crt;\n"
        "    ssl_certificate \"/etc/ssl/with space.crt\";\n"
        "    ssl_certificate_key /etc/ssl/web.key;\n"
        "    ssl_certificate tls/relative.crt; ssl_certificate /etc/ssl/per-request/$ssl_server_name.crt;\n"
        "}\n")
    assert certificate_expiry.certificate_paths(str(tmp_path)) == [
        ("web", "/etc/nginx/tls/relative.crt"),
        ("web", "/etc/ssl/with space.crt"),
    ]


def test_no_sites_directory_means_no_certificates(tmp_path):
    assert certificate_expiry.certificate_paths(str(tmp_path / "missing")) == []


def test_not_after_is_the_leafs_in_a_full_chain():
    ca_pem, ca_key, ca_name = certificate("CA", utc(2036, 1, 1))
    leaf_pem, _, _ = certificate("web.example.test", utc(2027, 3, 4, 5, 6, 7), ca_key, ca_name)
    assert certificate_expiry.not_after(leaf_pem + ca_pem) == int(utc(2027, 3, 4, 5, 6, 7).timestamp())


def test_the_textfile_for_node_exporter(tmp_path):
    tls = tmp_path / "tls"
    tls.mkdir()
    (tls / "web.crt").write_bytes(certificate("web.example.test", utc(2027, 1, 2))[0])
    (tls / "broken.crt").write_text("not a certificate\n")
    sites = tmp_path / "sites"
    sites.mkdir()
    for name in ("web", "broken", "gone"):
        (sites / f"{name}.conf").write_text(f"server {{ ssl_certificate {tls}/{name}.crt; }}\n")
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    output = metrics / "keelson_certificates.prom"
    output.write_text("old\n")

    assert certificate_expiry.main([str(sites), str(output)]) == 0
    assert output.read_text() == (
        "# HELP keelson_certificate_expiry_timestamp_seconds notAfter of a certificate nginx serves (Unix time).\n"
        "# TYPE keelson_certificate_expiry_timestamp_seconds gauge\n"
        f'keelson_certificate_expiry_timestamp_seconds{{site="web",path="{tls}/web.crt"}} '
        f"{int(utc(2027, 1, 2).timestamp())}\n"
        "# HELP keelson_certificate_readable Whether the certificate file nginx is configured with could be read.\n"
        "# TYPE keelson_certificate_readable gauge\n"
        f'keelson_certificate_readable{{site="broken",path="{tls}/broken.crt"}} 0\n'
        f'keelson_certificate_readable{{site="gone",path="{tls}/gone.crt"}} 0\n'
        f'keelson_certificate_readable{{site="web",path="{tls}/web.crt"}} 1\n')
    assert oct(output.stat().st_mode & 0o777) == "0o644"
    assert os.listdir(metrics) == ["keelson_certificates.prom"], "no temporary file left behind"


def test_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    output = tmp_path / "keelson_certificates.prom"
    output.write_text("previous\n")

    def fail(*_args):
        raise OSError("disk full")
    monkeypatch.setattr(certificate_expiry.os, "fsync", fail)
    with pytest.raises(OSError):
        certificate_expiry.write_atomically(str(output), "new\n")
    assert output.read_text() == "previous\n"
    assert os.listdir(tmp_path) == ["keelson_certificates.prom"]


def test_label_values_are_escaped():
    text = certificate_expiry.render([('a"b', "/x\\y.crt", 1)])
    assert 'keelson_certificate_expiry_timestamp_seconds{site="a\\"b",path="/x\\\\y.crt"} 1' in text
