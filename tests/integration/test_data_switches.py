"""Data-tier switches: the lab converges with RabbitMQ switched off on db1, the
firewall stops admitting the app hosts to 5672 (PostgreSQL and Redis stay open),
and switching it back on restores the port. Hold both lab locks: the demo's
worker on the app hosts loses AMQP while the switch is off. Only the layers the
switch touches are converged (--tags base,rabbitmq on db1), to keep CI time low."""
import json
import subprocess

import pytest

from conftest import ROOT, recap

CONVERGE = ["ansible-playbook", "site.yml", "-i", "inventories/lab", "--limit", "db1", "--tags", "base,rabbitmq"]


def converge(*extra):
    res = subprocess.run(CONVERGE + list(extra), cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stdout[-5000:] + res.stderr[-2000:]
    return res.stdout


def reachable(lab, port):
    """A TCP connection from app1 to db1's private address (through db1's firewall)."""
    script = ("import socket,sys\ntry:\n socket.create_connection((sys.argv[1], int(sys.argv[2])), 3).close()\n"
              "except OSError: sys.exit(1)\n")
    res = subprocess.run(["docker", "exec", "keelson-lab-app1", "python3", "-c", script, lab.db_address, str(port)],
                         capture_output=True, text=True, timeout=30)
    return res.returncode == 0


def rabbitmq_tasks(output):
    """{task title: block of output} for the rabbitmq role's tasks, but for the arguments check
    of its `validate` entry point: site.yml's first play checks every role's settings, switched
    off or not."""
    blocks = output.split("\nTASK [")
    return {b.split("]", 1)[0]: b for b in blocks
            if b.startswith("keelson.stack.rabbitmq :") and "arg spec 'validate'" not in b.split("]", 1)[0]}


@pytest.fixture(scope="module")
def without_rabbitmq(lab):
    """db1 converged with RabbitMQ off; converged back at the end unless a test already did."""
    switched = {"back": False}
    try:
        yield converge("-e", json.dumps({"rabbitmq_enabled": False})), switched
    finally:
        if not switched["back"]:
            converge()


def test_lab_converges_without_rabbitmq(without_rabbitmq):
    output, _ = without_rabbitmq
    assert recap(output)["db1"]["failed"] == 0
    tasks = rabbitmq_tasks(output)
    assert tasks, "the rabbitmq role's tasks are not even listed"
    ran = [t for t, block in tasks.items() if "ok: [db1]" in block or "changed: [db1]" in block]
    assert not ran, ran


def test_firewall_closes_only_the_rabbitmq_port(lab, without_rabbitmq):
    rules = lab.sh("nft list table inet keelson").stdout
    assert "5672" not in rules and "5432" in rules and "6379" in rules, rules
    assert not reachable(lab, 5672)
    assert reachable(lab, 5432) and reachable(lab, 6379)


def test_switching_back_opens_the_port_again(lab, without_rabbitmq):
    _, switched = without_rabbitmq
    converge()
    switched["back"] = True
    assert "5672" in lab.sh("nft list table inet keelson").stdout
    assert reachable(lab, 5672)
