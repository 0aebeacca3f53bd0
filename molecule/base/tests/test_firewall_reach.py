"""The firewall seen from other instances: what the policy allows connects,
what it forbids does not. Instances (molecule.yml): db (group db), app (group
app, runs Docker publishing 8080), lb (group lb, also the admin network) and
an outsider in no group."""
import os
import shlex

import pytest
import testinfra

DB, APP, LB, OUT = "base-db-debian12", "base-app-debian13", "base-lb-debian13", "base-out-debian12"
ADDRESS = {DB: "172.30.81.31", APP: "172.30.81.21", LB: "172.30.81.11", OUT: "172.30.81.99"}

PROBE = """
import socket, sys
s = socket.socket()
s.settimeout(4)
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    print("open")
except socket.timeout:
    print("timeout")
except ConnectionRefusedError:
    print("refused")
"""


@pytest.fixture(scope="module")
def hosts(request):
    inventory = request.config.option.ansible_inventory or os.environ["MOLECULE_INVENTORY_FILE"]
    return {name: testinfra.get_host(f"ansible://{name}", ansible_inventory=inventory)
            for name in ADDRESS}


def connect(hosts, source, target, port):
    """open, timeout (dropped) or refused, as seen by a TCP connect from source."""
    cmd = f"python3 -c {shlex.quote(PROBE)} {ADDRESS[target]} {port}"
    return hosts[source].check_output(cmd)


def listen(host, port):
    """A throwaway TCP listener under systemd; returns the command that stops it."""
    unit = f"keelson-probe-{port}"
    host.run(f"systemctl stop {unit}")
    host.check_output(f"systemd-run --unit {unit} --collect python3 -m http.server {port}")
    # Wait until it accepts locally (loopback is always allowed).
    host.check_output(
        "for i in $(seq 50); do python3 -c 'import socket; socket.create_connection"
        f"((\"127.0.0.1\", {port}), 1)' 2>/dev/null && exit 0; sleep 0.2; done; exit 1")
    return lambda: host.run(f"systemctl stop {unit}")


@pytest.fixture
def listener(hosts, request):
    target, port = request.param
    stop = listen(hosts[target], port)
    yield target, port
    stop()


@pytest.mark.parametrize("listener", [(DB, 5432), (DB, 6379), (DB, 5672)], indirect=True)
def test_db_ports_open_to_app_hosts_only(hosts, listener):
    target, port = listener
    assert connect(hosts, APP, target, port) == "open"
    assert connect(hosts, OUT, target, port) == "timeout"
    assert connect(hosts, LB, target, port) == "timeout"


@pytest.mark.parametrize("listener", [(LB, 80), (LB, 443)], indirect=True)
def test_web_ports_open_on_lb_from_anywhere(hosts, listener):
    target, port = listener
    assert connect(hosts, OUT, target, port) == "open"
    assert connect(hosts, APP, target, port) == "open"


@pytest.mark.parametrize("listener", [(APP, 80), (DB, 443)], indirect=True)
def test_web_ports_closed_off_lb(hosts, listener):
    target, port = listener
    assert connect(hosts, OUT, target, port) == "timeout"
    assert connect(hosts, LB, target, port) == "timeout"


@pytest.mark.parametrize("target", [DB, APP, LB, OUT])
def test_ssh_only_from_admin_network(hosts, target):
    source = LB if target != LB else APP
    expected_from_source = "open" if source == LB else "timeout"
    assert connect(hosts, source, target, 22) == expected_from_source
    if target != OUT:
        assert connect(hosts, OUT, target, 22) == "timeout"


@pytest.mark.parametrize("listener", [(DB, 9100)], indirect=True)
def test_extra_rule_from_source_group(hosts, listener):
    target, port = listener
    assert connect(hosts, LB, target, port) == "open"
    assert connect(hosts, APP, target, port) == "timeout"


def test_docker_published_port_follows_the_policy(hosts):
    # app publishes 8080 -> container:80; the policy opens 8080 to lb hosts only.
    fetch = ("python3 -c 'import urllib.request,sys; print(urllib.request.urlopen("
             f"\"http://{ADDRESS[APP]}:8080/\", timeout=5).read().decode())'")
    assert hosts[LB].check_output(fetch) == "published by docker"
    assert connect(hosts, OUT, APP, 8080) == "timeout"
    assert connect(hosts, DB, APP, 8080) == "timeout"


def test_container_address_cannot_be_reached_around_the_published_port(hosts):
    app, out = hosts[APP], hosts[OUT]
    ip = app.check_output("docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' web")
    subnet = ip.rsplit(".", 2)[0] + ".0.0/16"
    out.run(f"ip route del {subnet}")
    out.check_output(f"ip route add {subnet} via {ADDRESS[APP]}")
    try:
        probe = f"python3 -c {shlex.quote(PROBE)} {ip} 80"
        assert out.check_output(probe) == "timeout"
    finally:
        out.run(f"ip route del {subnet}")


def test_docker_nat_survives_nftables_reload_stop_and_start(hosts):
    app = hosts[APP]
    app.check_output("systemctl reload nftables")
    assert "DNAT" in app.check_output("iptables -t nat -S DOCKER")
    app.check_output("systemctl stop nftables")
    try:
        tables = app.check_output("nft list tables").splitlines()
        assert "table inet keelson" not in tables
        assert "table ip nat" in tables and "table ip filter" in tables
        assert "DNAT" in app.check_output("iptables -t nat -S DOCKER")
    finally:
        app.check_output("systemctl start nftables")
    assert "table inet keelson" in app.check_output("nft list tables")
    fetch = ("python3 -c 'import urllib.request; print(urllib.request.urlopen("
             f"\"http://{ADDRESS[APP]}:8080/\", timeout=5).read().decode())'")
    assert hosts[LB].check_output(fetch) == "published by docker"


@pytest.fixture
def lb_key(hosts):
    """The deploy user's test private key, copied to the lb (admin) instance."""
    path = os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "id_ed25519")
    lb = hosts[LB]
    lb.ansible("ansible.builtin.copy", f"src={path} dest=/root/keelson-test-key mode=0600", check=False)
    yield "/root/keelson-test-key"
    lb.run("rm -f /root/keelson-test-key")


SSH = ("ssh -i {key} -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
       "-o ConnectTimeout=5 {opts} {user}@{addr} {cmd}")


@pytest.mark.parametrize("target", [DB, APP])
def test_ssh_login_with_key_works_root_and_passwords_refused(hosts, lb_key, target):
    lb, addr = hosts[LB], ADDRESS[target]
    ok = lb.run(SSH.format(key=lb_key, opts="", user="deploy", addr=addr, cmd="sudo -n id -un"))
    assert ok.rc == 0 and ok.stdout.strip() == "root", ok.stderr
    # root has the same key in authorized_keys (prepare), and is still refused.
    root = lb.run(SSH.format(key=lb_key, opts="", user="root", addr=addr, cmd="true"))
    assert root.rc == 255 and "Permission denied (publickey)" in root.stderr
    password = lb.run(SSH.format(key=lb_key, opts="-o PreferredAuthentications=password,keyboard-interactive",
                                 user="deploy", addr=addr, cmd="true"))
    assert password.rc == 255 and "Permission denied (publickey)" in password.stderr
