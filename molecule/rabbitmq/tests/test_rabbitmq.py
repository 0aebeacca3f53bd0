"""The rabbitmq scenario: no guest, the app user publishes and consumes on its
vhost over the private address, a wrong password is refused, management listens
on loopback only.

AMQP is spoken by a small pika script on the instance itself; credentials reach
it in a 0600 file written through an Ansible module, never on a command line."""
import hashlib
import json

import pytest

CLIENT = r'''
import json, sys
import pika
import pika.exceptions

creds = json.load(open(sys.argv[1]))
params = pika.ConnectionParameters(
    host=creds["host"], port=5672, virtual_host=creds["vhost"],
    credentials=pika.PlainCredentials(creds["user"], creds["password"]),
    connection_attempts=1, socket_timeout=10)
try:
    connection = pika.BlockingConnection(params)
except (pika.exceptions.ProbableAuthenticationError, pika.exceptions.AuthenticationError):
    print(json.dumps({"outcome": "refused"}))
    sys.exit(0)
channel = connection.channel()
channel.queue_declare(queue="keelson-molecule", durable=True)
channel.confirm_delivery()
channel.basic_publish(exchange="", routing_key="keelson-molecule", body=b"ping",
                      properties=pika.BasicProperties(delivery_mode=2))
method, _, body = channel.basic_get(queue="keelson-molecule", auto_ack=True)
connection.close()
print(json.dumps({"outcome": "connected", "body": body.decode() if body else None}))
'''


@pytest.fixture(scope="module")
def config(host):
    return host.ansible.get_variables()


@pytest.fixture(scope="module")
def address(host):
    return host.ansible("setup", "filter=ansible_default_ipv4")["ansible_facts"][
        "ansible_default_ipv4"]["address"]


@pytest.fixture(scope="module")
def version(host):
    out = host.check_output("dpkg-query -W -f '${Version}' rabbitmq-server")
    return tuple(int(part) for part in out.split("-")[0].split(".")[:2])


def amqp(host, address, user, password, vhost="app"):
    host.ansible("copy", json.dumps({"dest": "/root/amqp_check.py", "content": CLIENT,
                                     "mode": "0644"}), check=False)
    host.ansible("copy", json.dumps({
        "dest": "/root/amqp_check.json", "mode": "0600",
        "content": json.dumps({"host": address, "vhost": vhost, "user": user,
                               "password": password})}), check=False)
    res = host.run("python3 /root/amqp_check.py /root/amqp_check.json")
    assert res.rc == 0, res.stderr
    return json.loads(res.stdout)


def test_no_guest_user(host):
    users = host.check_output("rabbitmqctl -q list_users --no-table-headers")
    names = {line.split()[0] for line in users.splitlines() if line.strip()}
    assert names == {"app", "monitor"}
    assert "[monitoring]" in [line for line in users.splitlines() if line.startswith("monitor")][0]


def test_erlang_cookie_is_the_configured_one_and_private(host, config):
    cookie = host.file("/var/lib/rabbitmq/.erlang.cookie")
    assert cookie.user == "rabbitmq" and cookie.mode == 0o400
    expected = hashlib.sha256(config["rabbitmq_erlang_cookie"].encode()).hexdigest()
    assert cookie.sha256sum == expected
    # the CLI reads the file: it reaches the node only if the node runs with that cookie
    assert host.run("rabbitmqctl -q status").rc == 0


def test_amqp_listens_on_loopback_and_private_address_only(host, address):
    assert host.socket("tcp://127.0.0.1:5672").is_listening
    assert host.socket(f"tcp://{address}:5672").is_listening
    assert not host.socket("tcp://0.0.0.0:5672").is_listening
    assert not host.socket("tcp://:::5672").is_listening


def test_management_listens_on_loopback_only(host):
    assert host.socket("tcp://127.0.0.1:15672").is_listening
    assert not host.socket("tcp://0.0.0.0:15672").is_listening
    assert not host.socket("tcp://:::15672").is_listening


def test_app_user_publishes_and_consumes_on_its_vhost(host, address, config, version):
    password = next(u["password"] for u in config["rabbitmq_users"] if u["name"] == "app")
    assert amqp(host, address, "app", password) == {"outcome": "connected", "body": "ping"}
    queues = host.check_output("rabbitmqctl -q list_queues -p app --no-table-headers name type")
    # RabbitMQ 3.10 has no configurable default queue type (see the role's README)
    expected_type = "quorum" if version >= (3, 13) else "classic"
    assert queues.split() == ["keelson-molecule", expected_type]


def test_wrong_password_is_refused(host, address):
    assert amqp(host, address, "app", "not-the-password") == {"outcome": "refused"}


def test_guest_is_refused(host, address):
    assert amqp(host, address, "guest", "guest", vhost="/") == {"outcome": "refused"}


# RabbitMQ's Prometheus plugin, enabled by this role where keelson.stack.monitoring runs the exporters.
def test_prometheus_plugin_is_enabled_beside_management(host):
    enabled = host.check_output("rabbitmq-plugins -q list --enabled --minimal").split()
    assert {"rabbitmq_management", "rabbitmq_prometheus"} <= set(enabled)


def test_prometheus_metrics_listen_on_the_private_address_only(host, address):
    assert host.socket(f"tcp://{address}:15692").is_listening
    for other in ("0.0.0.0", "127.0.0.1", "::"):
        assert not host.socket(f"tcp://{other}:15692").is_listening


def test_prometheus_metrics_serve_the_aggregated_queue_metrics(host, address):
    res = host.run("python3 -c %s", "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen("
                   f"'http://{address}:15692/metrics', timeout=20).read().decode())")
    assert res.rc == 0, res.stderr
    lines = res.stdout.splitlines()
    assert any(line.startswith("rabbitmq_queue_messages_ready ") for line in lines)
    assert any(line.startswith("rabbitmq_identity_info{") for line in lines)
