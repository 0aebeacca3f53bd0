"""lab/lab.py's inventory: what `lab.py up` writes, parsed by ansible-inventory as
the playbooks see it (groups, the extra app hosts, the SSH or docker connection),
and that inventories/lab holds nothing Ansible would fail to parse."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def lab(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("keelson_lab_tool", ROOT / "lab" / "lab.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "INVENTORY_DIR", tmp_path / "inventory")
    return module


def inventory(lab, connection, extra_app=0):
    lab.write_inventory("13", {"s3_access_key": "LABKEY", "s3_secret_key": "s3cret"},
                        lab.lab_hosts(extra_app), connection)
    res = subprocess.run([str(Path(sys.executable).parent / "ansible-inventory"), "--list", "--export",
                          "-i", str(lab.INVENTORY_DIR / "hosts.yml")],
                         capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(res.stdout), res.stderr


def test_ssh_inventory_reaches_hosts_as_real_vms(lab):
    inv, stderr = inventory(lab, "ssh")
    assert "WARNING" not in stderr, stderr
    assert {g: sorted(inv[g]["hosts"]) for g in ("lb", "app", "db", "monitor")} == {
        "lb": ["lb1"], "app": ["app1", "app2"], "db": ["db1"], "monitor": ["mon1"]}
    hostvars = inv["_meta"]["hostvars"]
    assert hostvars["mon1"]["ansible_host"] == hostvars["mon1"]["keelson_private_address"] == "172.30.77.51"
    assert hostvars["db1"]["keelson_lab_container"] == "keelson-lab-db1"
    allvars = inv["all"]["vars"]
    assert allvars["ansible_user"] == "debian" and allvars["ansible_become"] is True
    assert allvars["ansible_ssh_private_key_file"] == str(lab.SSH_KEY)
    assert "StrictHostKeyChecking=yes" in allvars["ansible_ssh_common_args"]
    assert "ansible_connection" not in allvars


def test_docker_connection_stays_available(lab):
    inv, _ = inventory(lab, "docker")
    assert inv["all"]["vars"]["ansible_connection"] == "community.docker.docker"
    assert inv["_meta"]["hostvars"]["lb1"]["ansible_host"] == "keelson-lab-lb1"
    assert "ansible_become" not in inv["all"]["vars"]


def test_extra_app_hosts(lab):
    inv, _ = inventory(lab, "ssh", extra_app=8)
    assert sorted(inv["app"]["hosts"], key=lambda h: int(h[3:])) == ["app%d" % n for n in range(1, 11)]
    addresses = [h["keelson_private_address"] for h in inv["_meta"]["hostvars"].values()]
    assert len(set(addresses)) == len(addresses)
    assert inv["_meta"]["hostvars"]["app10"]["keelson_private_address"] == "172.30.77.30"
    with pytest.raises(lab.LabError):
        lab.lab_hosts(9)


def test_generated_vars_point_outside_the_inventory(lab):
    lab.write_inventory("13", {}, lab.lab_hosts(), "ssh")
    generated = (lab.INVENTORY_DIR / "group_vars" / "all" / "lab_generated.yml").read_text()
    assert "keelson_acme_directory_cafile: %s\n" % lab.PEBBLE_CA in generated
    assert not str(lab.PEBBLE_CA).startswith(str(lab.INVENTORY_DIR))
