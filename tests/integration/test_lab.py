"""The lab itself, as `make lab` leaves it: hosts boot, Ansible reaches them, and
the service containers are the real servers the other tests rely on."""
import json
import os
import re
import ssl
import subprocess
import urllib.request
from pathlib import Path

import boto3
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INVENTORY = ROOT / "inventories" / "lab"


@pytest.fixture(scope="module")
def labvars():
    return yaml.safe_load((INVENTORY / "group_vars" / "all" / "lab_generated.yml").read_text())


@pytest.fixture(scope="module")
def hosts():
    inv = yaml.safe_load((INVENTORY / "hosts.yml").read_text())
    found = {}
    for group in inv["all"]["children"].values():
        found.update(group["hosts"])
    return found


def test_inventory_has_every_group_and_host(hosts):
    # app3 ... only after `lab.py up --extra-app N`
    assert {"lb1", "app1", "app2", "db1", "mon1"} <= set(hosts)
    assert all(re.fullmatch(r"app\d+", name) for name in set(hosts) - {"lb1", "app1", "app2", "db1", "mon1"})


def test_inventory_reaches_hosts_over_ssh_with_a_private_key():
    inv = yaml.safe_load((INVENTORY / "hosts.yml").read_text())["all"]["vars"]
    if inv.get("ansible_connection") == "community.docker.docker":
        pytest.skip("the lab was brought up with --connection docker")
    assert inv["ansible_become"] is True and inv["ansible_user"] != "root"
    assert Path(inv["ansible_ssh_private_key_file"]).stat().st_mode & 0o077 == 0


def test_inventory_dir_holds_only_inventory():
    """Anything else there makes every run print "Failed to parse inventory" warnings."""
    found = {str(p.relative_to(INVENTORY)) for p in INVENTORY.rglob("*") if p.is_file()}
    assert {f for f in found if not f.startswith(".") and not f.endswith(".yml")} == set()


def test_generated_credentials_are_private():
    gen = INVENTORY / "group_vars" / "all" / "lab_generated.yml"
    assert gen.stat().st_mode & 0o077 == 0


def test_every_host_boots_systemd(hosts):
    states = {name: subprocess.run(["docker", "exec", spec["keelson_lab_container"], "systemctl",
                                    "is-system-running"], capture_output=True, text=True).stdout.strip()
              for name, spec in hosts.items()}
    assert set(states.values()) == {"running"}, states


def test_ansible_reaches_every_host(hosts):
    res = subprocess.run(["ansible", "all", "-i", str(INVENTORY / "hosts.yml"), "-m", "ansible.builtin.ping"],
                         cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("SUCCESS") == len(hosts)


def s3client(labvars):
    return boto3.client("s3", endpoint_url=labvars["keelson_s3_endpoint_url"],
                        aws_access_key_id=labvars["keelson_s3_access_key"],
                        aws_secret_access_key=labvars["keelson_s3_secret_key"],
                        region_name="us-east-1")


def test_s3_single_put_roundtrip(labvars):
    s3 = s3client(labvars)
    body = os.urandom(3 << 20)
    key = "lab-test/single-put"
    s3.put_object(Bucket=labvars["keelson_s3_bucket"], Key=key, Body=body)
    assert s3.get_object(Bucket=labvars["keelson_s3_bucket"], Key=key)["Body"].read() == body
    s3.delete_object(Bucket=labvars["keelson_s3_bucket"], Key=key)


def test_s3_multipart_roundtrip(labvars):
    """Distinct parts read back in order (RGW's dbstore backend, which the lab used before
    RADOS, returned the last part's bytes for every part)."""
    s3 = s3client(labvars)
    bucket, key = labvars["keelson_s3_bucket"], "lab-test/multipart-roundtrip"
    parts = [os.urandom(5 << 20) for _ in range(3)]   # distinct parts: identical ones would hide a mix-up
    upload = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    done = [{"PartNumber": n, "ETag": s3.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=n,
                                                     Body=part)["ETag"]}
            for n, part in enumerate(parts, start=1)]
    s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": done})
    try:
        got = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    finally:
        s3.delete_object(Bucket=bucket, Key=key)
    assert len(got) == sum(map(len, parts))
    assert got == b"".join(parts)


def test_s3_refuses_wrong_secret(labvars):
    bad = dict(labvars, keelson_s3_secret_key="not-the-secret")
    with pytest.raises(Exception) as err:
        s3client(bad).list_objects_v2(Bucket=labvars["keelson_s3_bucket"])
    assert "SignatureDoesNotMatch" in str(err.value) or "AccessDenied" in str(err.value)


def test_registry_answers_v2(labvars):
    with urllib.request.urlopen(f"http://{labvars['keelson_registry']}/v2/", timeout=10) as resp:
        assert resp.status == 200


def test_pebble_serves_acme_directory(labvars):
    ctx = ssl.create_default_context(cafile=labvars["keelson_acme_directory_cafile"])
    with urllib.request.urlopen(labvars["keelson_acme_directory_url"], timeout=10, context=ctx) as resp:
        directory = json.load(resp)
    assert {"newAccount", "newNonce", "newOrder"} <= set(directory)


def test_the_first_converge_ran_each_job_once():
    """site.yml ran the stack's migration once for the environment, not once per app host
    (the demo's migrate counts its runs in migration_runs)."""
    res = subprocess.run(["docker", "exec", "keelson-lab-db1", "runuser", "-u", "postgres", "--", "psql", "-X", "-A",
                          "-t", "-d", "demo", "-c", "SELECT version, count(*) FROM migration_runs GROUP BY version"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["1.0.0|1"], res.stdout
