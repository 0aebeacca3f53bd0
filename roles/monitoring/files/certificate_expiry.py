"""The expiry time of every certificate nginx serves, for node_exporter's textfile collector
(keelson.stack.monitoring). keelson-certificate-expiry.service runs it hourly and whenever a
file under /etc/nginx/keelson/tls or /etc/nginx/keelson/sites changes, so that a renewal
between converges (ACME by `--tags nginx`) shows without the monitoring role running.

    certificate_expiry.py SITES_DIR OUTPUT

SITES_DIR holds keelson.stack.nginx's sites, one SITE.conf per nginx_sites entry: each
ssl_certificate in it is a certificate of SITE (the file nginx reads, as it reads it). OUTPUT
is replaced whole (a temporary file in its directory, then a rename), with per certificate:

    keelson_certificate_expiry_timestamp_seconds{site,path}   notAfter of the file's first
                                                              certificate (the leaf)
    keelson_certificate_readable{site,path}                   0 when the file is missing or
                                                              holds no PEM certificate

This runs on the lb hosts with Debian's python3-cryptography (38 on Debian 12, 43 on 13).
"""
import calendar
import os
import sys
import tempfile

NGINX_PREFIX = "/etc/nginx"


def tokens(text):
    """nginx's configuration syntax as tokens: words (quotes removed), ";", "{" and "}"."""
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif c in ";{}":
            yield c
            i += 1
        elif c in "\"'":
            word, i = [], i + 1
            while i < n and text[i] != c:
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                word.append(text[i])
                i += 1
            yield "".join(word)
            i += 1
        else:
            start = i
            while i < n and not text[i].isspace() and text[i] not in ";{}\"'":
                i += 1
            yield text[start:i]


def directive_values(text, name):
    """The arguments of every `name ARGS;` directive in the text, at any depth."""
    values, current = [], []
    for token in tokens(text):
        if token in (";", "{", "}"):
            if token == ";" and current and current[0] == name:
                values.append(current[1:])
            current = []
        else:
            current.append(token)
    return values


def certificate_paths(sites_dir):
    """[(site, path)] of the ssl_certificate files of every site, sorted; a path that holds a
    variable (chosen per request) is left out."""
    found = set()
    try:
        names = os.listdir(sites_dir)
    except FileNotFoundError:
        return []
    for name in names:
        if not name.endswith(".conf"):
            continue
        with open(os.path.join(sites_dir, name), encoding="utf-8") as f:
            text = f.read()
        for args in directive_values(text, "ssl_certificate"):
            if len(args) != 1 or "$" in args[0]:
                continue
            found.add((name[:-len(".conf")], os.path.join(NGINX_PREFIX, args[0])))
    return sorted(found)


def not_after(pem):
    """notAfter of the first certificate in PEM bytes, as a Unix time (int)."""
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(pem)
    when = getattr(cert, "not_valid_after_utc", None) or cert.not_valid_after
    return calendar.timegm(when.utctimetuple())


def read_expiry(path):
    """(notAfter, None) or (None, why the file could not be read)."""
    try:
        with open(path, "rb") as f:
            return not_after(f.read()), None
    except (OSError, ValueError) as exc:
        return None, str(exc)


def _label(value):
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(entries):
    """The textfile for [(site, path, notAfter or None)]."""
    lines = [
        "# HELP keelson_certificate_expiry_timestamp_seconds notAfter of a certificate nginx serves (Unix time).",
        "# TYPE keelson_certificate_expiry_timestamp_seconds gauge",
    ]
    for site, path, expiry in entries:
        if expiry is not None:
            lines.append('keelson_certificate_expiry_timestamp_seconds{site="%s",path="%s"} %d'
                         % (_label(site), _label(path), expiry))
    lines += [
        "# HELP keelson_certificate_readable Whether the certificate file nginx is configured with could be read.",
        "# TYPE keelson_certificate_readable gauge",
    ]
    for site, path, expiry in entries:
        lines.append('keelson_certificate_readable{site="%s",path="%s"} %d'
                     % (_label(site), _label(path), 0 if expiry is None else 1))
    return "\n".join(lines) + "\n"


def write_atomically(path, text):
    """node_exporter never reads a half-written file: temp file, fsync, rename."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.rename(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv):
    if len(argv) != 2:
        sys.stderr.write("usage: certificate_expiry.py SITES_DIR OUTPUT\n")
        return 2
    sites_dir, output = argv
    entries = []
    for site, path in certificate_paths(sites_dir):
        expiry, error = read_expiry(path)
        if error:
            sys.stderr.write("%s (site %s): %s\n" % (path, site, error))
        entries.append((site, path, expiry))
    write_atomically(output, render(entries))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
