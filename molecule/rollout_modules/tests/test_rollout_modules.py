"""State after converge (and side_effect, when it ran): both replicas on demo-api 1.1.0,
both backends up in nginx, records and audit lines written."""
import json

PROJECT = "/opt/keelson/stacks/demo"
UPSTREAM = "/etc/nginx/keelson/upstreams/demo_api.conf"


def test_both_replicas_serve_the_new_version(host):
    for port in (8001, 8002):
        out = host.check_output("curl -sf http://127.0.0.1:%d/version" % port)
        assert json.loads(out)["version"] == "1.1.0"
    through_nginx = {json.loads(host.check_output("curl -sf http://127.0.0.1/version"))["version"] for _ in range(4)}
    assert through_nginx == {"1.1.0"}


def test_both_backends_are_up_in_nginx(host):
    assert host.file(UPSTREAM).content_string.splitlines() == [
        "server 127.0.0.1:8001 max_fails=3 fail_timeout=10s;",
        "server 127.0.0.1:8002 max_fails=3 fail_timeout=10s;",
    ]
    assert host.run("nginx -t").rc == 0


def test_images_are_pinned_by_digest(host):
    pins = json.loads(host.file(PROJECT + "/compose.rollout.yaml").content_string)["services"]
    assert sorted(pins) == ["api-1", "api-2"]
    for pin in pins.values():
        assert pin["image"].startswith("172.30.77.42:5000/demo-api@sha256:")
    running = host.check_output("docker inspect demo-api-1-1 --format '{{.Config.Image}}'")
    assert running == pins["api-1"]["image"]


def test_deploy_record_and_audit(host):
    record = json.loads(host.file(PROJECT + "/releases/converge-deploy.json").content_string)
    assert record["kind"] == "rollout" and record["action"] == "deploy" and record["outcome"] == "succeeded"
    assert [(r["name"], r["outcome"]) for r in record["replicas"]] == [("api-1", "replaced"), ("api-2", "replaced")]
    for step in record["replicas"]:
        assert step["old_image"].endswith("demo-api:1.0.0") and step["new_image"].endswith("demo-api:1.1.0")
        assert step["old_digest"] != step["new_digest"]
        assert step["gate"]["passed"] and all(p["attempts"] >= 3 for p in step["gate"]["probes"])
    audit = [json.loads(line) for line in host.file(PROJECT + "/audit.log").content_string.splitlines()]
    assert [(a["action"], a["outcome"]) for a in audit if a["record"] == "converge-deploy"] == [("deploy", "succeeded")]


def test_broken_releases_were_rolled_back_with_reasons(host):
    """Present once side_effect has run (molecule test runs it before verify)."""
    releases = host.file(PROJECT + "/releases")
    names = sorted(n for n in releases.listdir() if n.startswith("side-effect-"))
    assert names == ["side-effect-1.1.0-exits.json", "side-effect-1.1.0-probefail.json",
                     "side-effect-1.1.0-unhealthy.json"]
    expected = {"exits": "exited", "probefail": "status 500", "unhealthy": ""}
    for name in names:
        record = json.loads(host.file(PROJECT + "/releases/" + name).content_string)
        step = record["replicas"][0]
        assert record["outcome"] == "rolled_back" and step["outcome"] == "restored"
        assert step["gate"]["passed"] is False and step["restore_gate"]["passed"] is True
        assert expected[name.split("-")[-1][:-5]] in step["reason"]
