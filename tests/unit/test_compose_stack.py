"""module_utils/compose_stack: validation rules, rendering, backends and releases."""
import copy

import pytest
import yaml

from ansible_collections.keelson.stack.plugins.module_utils import compose_stack as cs

DIGEST = "sha256:" + "ab" * 32


def stack(**overrides):
    base = {
        "project": "demo",
        "services": [
            {"name": "postgres", "image": "reg:5000/demo-postgres", "tag": "17",
             "secrets": ["POSTGRES_PASSWORD"], "volumes": ["pgdata:/var/lib/postgresql/data"]},
            {"name": "api", "image": "reg:5000/demo-api", "tag": "1.0.0", "replicas": 2,
             "ports": [{"published": 8001, "target": 8000}],
             "environment": {"GREETING": "costs $5"}, "secrets": ["DATABASE_URL"],
             "depends_on": {"postgres": "service_healthy"},
             "healthcheck": {"test": ["CMD", "true"], "interval": "2s", "retries": 3},
             "cpus": 0.5, "memory": "256m"},
            {"name": "frontend", "image": "reg:5000/frontend", "digest": DIGEST,
             "ports": [{"published": 3000, "target": 80}]},
        ],
        "volumes": ["pgdata"],
        "networks": [],
        "jobs": [{"name": "migrate", "service": "api", "command": ["migrate"]}],
        "secret_names": ["POSTGRES_PASSWORD", "DATABASE_URL"],
    }
    base.update(overrides)
    return base


def errors_of(st):
    with pytest.raises(cs.StackError) as exc:
        cs.validate(st)
    return exc.value.errors


def with_service(st, name, **changes):
    st = copy.deepcopy(st)
    for svc in st["services"]:
        if svc["name"] == name:
            svc.update(changes)
    return st


def test_valid_stack_passes_unchanged():
    st = stack()
    assert cs.validate(st) is st


def test_replicas_with_ports_become_one_service_each_with_consecutive_ports():
    doc = cs.compose(stack(), "10.0.0.5")
    assert [n for n in doc["services"] if n.startswith("api")] == ["api-1", "api-2"]
    assert doc["services"]["api-1"]["ports"] == ["10.0.0.5:8001:8000/tcp"]
    assert doc["services"]["api-2"]["ports"] == ["10.0.0.5:8002:8000/tcp"]
    assert doc["services"]["api-2"]["labels"]["keelson.stack.replica"] == "2"
    assert "replicas" not in doc["services"]["api-1"].get("deploy", {})


def test_every_replica_answers_on_the_service_name_on_each_of_its_networks():
    doc = cs.compose(stack(), "")
    for name in ("api-1", "api-2"):
        assert doc["services"][name]["networks"] == {"default": {"aliases": ["api"]}}
    assert "networks" not in doc["services"]["frontend"]  # one replica: its Compose name is its name
    st = stack(networks=[{"name": "backend"}, {"name": "edge"}])
    st["services"][1]["networks"] = ["backend", "edge"]
    st["services"][2]["networks"] = ["edge"]
    doc = cs.compose(st, "")
    assert doc["services"]["api-2"]["networks"] == {"backend": {"aliases": ["api"]}, "edge": {"aliases": ["api"]}}
    assert doc["services"]["frontend"]["networks"] == ["edge"]


def test_replicas_without_ports_are_services_of_their_own_under_one_name():
    st = stack(services=[{"name": "worker", "image": "reg/w", "tag": "1", "replicas": 3}],
               volumes=[], jobs=[], secret_names=[])
    doc = cs.compose(st)
    assert list(doc["services"]) == ["worker-1", "worker-2", "worker-3"]
    assert doc["services"]["worker-2"]["networks"] == {"default": {"aliases": ["worker"]}}
    assert "deploy" not in doc["services"]["worker-2"] and "ports" not in doc["services"]["worker-2"]
    assert doc["services"]["worker-3"]["labels"]["keelson.stack.replica"] == "3"


def test_render_limits_secrets_dependencies_and_escaping():
    api = cs.compose(stack(), "")["services"]["api-1"]
    assert api["deploy"]["resources"]["limits"] == {"cpus": "0.5", "memory": "256m"}
    assert api["environment"]["GREETING"] == "costs $$5"
    assert api["environment"]["DATABASE_URL"].startswith("${DATABASE_URL:?")
    assert api["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert api["ports"] == ["8001:8000/tcp"]
    assert api["restart"] == "unless-stopped"
    doc = cs.compose(stack(), "")
    assert doc["services"]["frontend"]["image"] == "reg:5000/frontend@" + DIGEST
    assert doc["name"] == "demo" and doc["volumes"] == {"pgdata": {}}


def test_depends_on_a_split_service_names_every_replica():
    st = stack()
    st["services"].append({"name": "gateway", "image": "reg/gw", "tag": "2",
                           "depends_on": {"api": "service_healthy"}})
    deps = cs.compose(st)["services"]["gateway"]["depends_on"]
    assert sorted(deps) == ["api-1", "api-2"]


def test_port_collision_between_replicas_and_services():
    # api publishes 8001 and 8002; frontend on 8002 collides with replica api-2.
    st = stack()
    st["services"][2]["ports"] = [{"published": 8002, "target": 80}]
    errs = errors_of(st)
    assert errs == ["port collision: frontend and api-2 both publish tcp port 8002"]


def test_port_collision_respects_host_ip_and_protocol():
    st = stack()
    st["services"][2]["ports"] = [{"published": 8002, "target": 80, "host_ip": "10.0.0.1"}]
    assert "port collision" in errors_of(st)[0]  # api binds every address: still a clash
    st = with_service(stack(), "api", ports=[{"published": 8001, "target": 8000, "host_ip": "10.0.0.2"}])
    st["services"][2]["ports"] = [{"published": 8002, "target": 80, "host_ip": "10.0.0.1"}]
    cs.validate(st)  # different addresses
    st["services"][2]["ports"] = [{"published": 8002, "target": 80, "protocol": "udp"}]
    cs.validate(st)  # udp and tcp do not clash


def test_references_and_formats_are_checked():
    st = stack()
    st["services"][1]["depends_on"] = {"cache": "service_healthy", "postgres": "healthy"}
    st["services"][1]["secrets"] = ["DATABASE_URL", "API_KEY"]
    st["services"][1]["volumes"] = ["uploads:/srv/uploads", "./conf:/etc/app:ro"]
    st["services"][1]["networks"] = ["backend"]
    st["services"][1]["memory"] = "lots"
    st["services"][0]["image"] = "reg:5000/demo-postgres:17"
    st["services"][2]["tag"] = "latest"
    st["jobs"].append({"name": "seed", "service": "nope", "command": ["x"]})
    errs = errors_of(st)
    expected = [
        "service 'postgres': image 'reg:5000/demo-postgres:17' must not carry a tag or digest",
        "service 'api': memory 'lots' is not a size",
        "service 'api': secret 'API_KEY' is not defined in compose_stack_secrets",
        "service 'api': depends_on unknown service 'cache'",
        "service 'api': depends_on 'postgres' condition 'healthy' is not one of",
        "service 'api': volume 'uploads' is not declared in compose_stack_volumes",
        "service 'api': network 'backend' is not declared in compose_stack_networks",
        "service 'frontend': set exactly one of tag and digest",
        "job 'seed': unknown service 'nope'",
    ]
    for fragment in expected:
        assert any(e.startswith(fragment) for e in errs), (fragment, errs)
    assert len(errs) == len(expected), errs


def test_names_and_duplicates():
    st = stack(project="Demo App")
    st["services"].append(dict(st["services"][0]))
    st["services"].append({"name": "api-1", "image": "reg/x", "tag": "1"})
    errs = errors_of(st)
    assert any(e.startswith("project 'Demo App'") for e in errs)
    assert "service 'postgres': declared 2 times" in errs
    assert any("Compose service name 'api-1' is already used by service 'api'" in e for e in errs)


def test_bad_digest_and_replicas():
    errs = errors_of(with_service(stack(), "frontend", digest="sha256:abc"))
    assert errs == ["service 'frontend': digest 'sha256:abc' is not sha256:<64 hex digits>"]
    errs = errors_of(with_service(stack(), "api", replicas=0))
    assert errs == ["service 'api': replicas must be at least 1"]


def test_backends_and_upstreams():
    b1 = cs.backends(stack(), "10.0.0.21")
    b2 = cs.backends(stack(), "10.0.0.22")
    assert b1["api"] == [{"host": "10.0.0.21", "port": 8001, "replica": "api-1"},
                         {"host": "10.0.0.21", "port": 8002, "replica": "api-2"}]
    ups = cs.upstreams([b1, b2], services=["api"], keepalive=16, max_fails=2, fail_timeout=5)
    assert ups == [{"name": "api", "keepalive": 16, "max_fails": 2, "fail_timeout": 5, "servers": [
        {"host": "10.0.0.21", "port": 8001}, {"host": "10.0.0.21", "port": 8002},
        {"host": "10.0.0.22", "port": 8001}, {"host": "10.0.0.22", "port": 8002}]}]
    assert [u["name"] for u in cs.upstreams([b1])] == ["api", "frontend"]


def test_env_file_quotes_and_refuses_unsafe_values_by_name_only():
    assert cs.env_file({"B": "x$y z", "A": "1"}) == "A='1'\nB='x$y z'\n"
    with pytest.raises(cs.StackError) as exc:
        cs.env_file({"GOOD": "ok", "BAD": "it's-secret"})
    assert "'BAD'" in str(exc.value) and "it's-secret" not in str(exc.value)


IMAGES = [
    {"Id": "sha256:pg", "RepoTags": ["reg:5000/demo-postgres:17"],
     "RepoDigests": ["reg:5000/demo-postgres@sha256:" + "11" * 32]},
    {"Id": "sha256:api1", "RepoTags": ["reg:5000/demo-api:1.0.0"],
     "RepoDigests": ["reg:5000/demo-api@sha256:" + "22" * 32]},
    {"Id": "sha256:fe", "RepoTags": [], "RepoDigests": ["reg:5000/frontend@" + DIGEST]},
]


def test_release_images_fingerprint_and_rollout_pending():
    st = stack()
    services = cs.release_images(st, IMAGES)
    assert services["api"] == {"image": "reg:5000/demo-api:1.0.0", "id": "sha256:api1",
                               "digest": "sha256:" + "22" * 32}
    assert services["frontend"]["digest"] == DIGEST
    text = yaml.safe_dump(cs.compose(st))
    fp = cs.release_fingerprint(text, services)
    assert fp == cs.release_fingerprint(text, copy.deepcopy(services))
    assert cs.rollout_pending(st, services, None) == []  # nothing runs yet

    new_images = copy.deepcopy(IMAGES)
    new_images[1]["Id"] = "sha256:api2"
    new_services = cs.release_images(st, new_images)
    assert cs.release_fingerprint(text, new_services) != fp
    previous = {"id": "r1", "services": services, "replicas": ["postgres", "api-1", "api-2", "frontend"]}
    # both replicas of the API, and nothing whose image stayed
    assert cs.rollout_pending(st, new_services, previous) == ["api-1", "api-2"]
    assert cs.rollout_pending(st, services, previous) == []
    # a replica the running release did not run (scaled from 2 to 3) has nothing to replace
    scaled = with_service(st, "api", replicas=3)
    assert cs.rollout_pending(scaled, new_services, previous) == ["api-1", "api-2"]
    # a service new to the host has no running image: `up` starts it
    assert cs.rollout_pending(st, new_services, dict(previous, services={"postgres": services["postgres"]})) == []


def test_release_images_missing_image():
    with pytest.raises(cs.StackError):
        cs.release_images(stack(), IMAGES[:1])
    assert cs.release_images(stack(), [], missing_ok=True)["api"]["id"] is None


def test_job_service_and_health_report():
    assert cs.job_service(stack(), {"name": "migrate", "service": "api"}) == "api-1"
    report = cs.health_report([
        {"Name": "/demo-api-1-1", "State": {"Running": True, "ExitCode": 0, "Health": {
            "Status": "unhealthy",
            "Log": [{"ExitCode": 1, "Output": "healthcheck /health: HTTP Error 500\n"}]}}},
        {"Name": "/demo-api-2-1", "State": {"Running": True, "Health": {"Status": "healthy", "Log": []}}},
        {"Name": "/demo-worker-1", "State": {"Running": False, "ExitCode": 3}},
    ])
    assert report.splitlines() == [
        "demo-api-1-1: unhealthy (unhealthy)",
        "  health check exit 1: healthcheck /health: HTTP Error 500",
        "demo-worker-1: exited (exit code 3)",
    ]


def test_bring_up_waits_on_every_container_without_requiring_a_healthcheck():
    # docker_compose_v2's `containers` after up (the staging stand-ins: a worker whose image
    # says HEALTHCHECK NONE, which `docker compose up --wait` refuses)
    containers = [
        {"Name": "jobsearch-worker-1-1", "Service": "worker-1", "State": "running", "Health": ""},
        {"Name": "jobsearch-api-gateway-1-1", "Service": "api-gateway-1", "State": "running", "Health": "starting"},
    ]
    probes = cs.wait_probes(containers)
    assert [p["container"] for p in probes] == ["jobsearch-api-gateway-1-1", "jobsearch-worker-1-1"]
    assert all(p["type"] == "docker" and p["require_healthcheck"] is False for p in probes)
    assert "max_restarts" not in probes[0]  # old containers may have restarted long ago
    assert cs.wait_probes([]) == []


def test_rollout_pins_stay_until_the_inventory_moves_on():
    st = stack()
    v10, v11, v12 = ({"id": "sha256:" + c * 64} for c in "abc")
    pins = {"api-1": {"image": "reg/demo-api@sha256:" + "1" * 64}, "api-2": {"image": "reg/demo-api@sha256:" + "1" * 64},
            "gone-1": {"image": "reg/old@sha256:" + "2" * 64}}
    pin_ids = {"reg/demo-api@sha256:" + "1" * 64: v11["id"]}
    kept_all = {"api-1": pins["api-1"], "api-2": pins["api-2"]}
    # deploy.yml put 1.1.0 on while the inventory still says 1.0.0, as at the last converge: kept
    assert cs.rollout_pins_to_keep(pins, st, {"api": v10}, {"api": v10}, pin_ids) == kept_all
    # the inventory now says 1.1.0 too: kept (they change nothing)
    assert cs.rollout_pins_to_keep(pins, st, {"api": v11}, {"api": v10}, pin_ids) == kept_all
    # the inventory moved on to 1.2.0: this converge is the deploy
    assert cs.rollout_pins_to_keep(pins, st, {"api": v12}, {"api": v10}, pin_ids) == {}
    # check mode before the pull (no image ID yet) changes nothing
    assert cs.rollout_pins_to_keep(pins, st, {"api": {"id": None}}, {}, pin_ids) == kept_all
    # a pin whose image is gone from the host cannot match
    assert cs.rollout_pins_to_keep(pins, st, {"api": v12}, {"api": v10}, {}) == {}


def test_problems_lists_stack_and_secret_errors_unwrapped():
    bad = stack()
    bad["services"][1]["replicas"] = 0
    assert cs.problems(bad, {"DATABASE_URL": "it's", "POSTGRES_PASSWORD": "ok"}) == [
        "service 'api': replicas must be at least 1",
        "secret 'DATABASE_URL': names must be variable names and values may not contain a single quote or a newline"]
    assert cs.problems(stack(), {"DATABASE_URL": "x", "POSTGRES_PASSWORD": "y"}) == []


def _dollar_service(**extra):
    svc = {"name": "web", "image": "reg/web", "tag": "1",
           "command": ["sh", "-c", "exec serve --port $PORT"],
           "entrypoint": ["/entry", "${HOSTNAME}"],
           "environment": {"GREETING": "costs $5"},
           "healthcheck": {"test": ["CMD-SHELL", "curl -f http://localhost:$PORT/health"]},
           "labels": {"traefik.rule": "Host(`$HOSTNAME`)"},
           "volumes": ["/srv/$PROJECT/data:/data"],
           "user": "$UID"}
    svc.update(extra)
    return cs.compose(stack(services=[svc], volumes=[], jobs=[], secret_names=[]))["services"]["web"]


# field: (what compose.yaml holds by default, what it holds with interpolate: true)
DOLLAR_FIELDS = {
    "command": (["sh", "-c", "exec serve --port $$PORT"], ["sh", "-c", "exec serve --port $PORT"]),
    "entrypoint": (["/entry", "$${HOSTNAME}"], ["/entry", "${HOSTNAME}"]),
    "environment": ({"GREETING": "costs $$5"}, {"GREETING": "costs $5"}),
    "healthcheck": ({"test": ["CMD-SHELL", "curl -f http://localhost:$$PORT/health"]},
                    {"test": ["CMD-SHELL", "curl -f http://localhost:$PORT/health"]}),
    "volumes": (["/srv/$$PROJECT/data:/data"], ["/srv/$PROJECT/data:/data"]),
    "user": ("$$UID", "$UID"),
}


@pytest.mark.parametrize("field", sorted(DOLLAR_FIELDS))
def test_dollar_is_literal_in_every_field(field):
    assert _dollar_service()[field] == DOLLAR_FIELDS[field][0]


@pytest.mark.parametrize("field", sorted(DOLLAR_FIELDS))
def test_interpolate_opt_in_writes_every_field_as_given(field):
    assert _dollar_service(interpolate=True)[field] == DOLLAR_FIELDS[field][1]


def test_dollar_is_literal_in_labels_and_role_labels_stay():
    labels = _dollar_service()["labels"]
    assert labels["traefik.rule"] == "Host(`$$HOSTNAME`)"
    assert labels["keelson.stack.service"] == "web"


def test_interpolate_opt_in_labels_and_secrets():
    svc = _dollar_service(interpolate=True)
    assert svc["labels"]["traefik.rule"] == "Host(`$HOSTNAME`)"
    st = stack(services=[{"name": "web", "image": "reg/web", "tag": "1", "secrets": ["TOKEN"]}],
               volumes=[], jobs=[], secret_names=["TOKEN"])
    # secrets always come from .env through Compose, whatever interpolate says
    assert cs.compose(st)["services"]["web"]["environment"]["TOKEN"] == "${TOKEN:?TOKEN must be set in .env}"


def seed_stack(host):
    """A frontend calling the api, a worker, a scheduler once per environment, a sidecar on app2 only."""
    return stack(
        host=host, hosts=["app1", "app2"],
        services=stack()["services"][:2] + [
            {"name": "web", "image": "reg/web", "tag": "1", "replicas": 2, "ports": [{"published": 3000, "target": 80}],
             "depends_on": {"api": "service_healthy"}},
            {"name": "worker", "image": "reg/demo-api", "tag": "1.0.0", "command": ["worker"]},
            {"name": "scheduler", "image": "reg/demo-api", "tag": "1.0.0", "command": ["beat"], "placement": "one"},
            {"name": "sidecar", "image": "reg/side", "tag": "3", "placement": ["app2"],
             "ports": [{"published": 9100, "target": 9100}]},
        ],
        jobs=[{"name": "migrate", "service": "api", "command": ["migrate"]},
              {"name": "beat-schema", "service": "scheduler", "command": ["beat", "--init"]}])


def test_placement_decides_what_each_host_runs():
    app1, app2 = (cs.compose(cs.validate(seed_stack(h)), "") for h in ("app1", "app2"))
    assert sorted(app1["services"]) == ["api-1", "api-2", "postgres", "scheduler", "web-1", "web-2", "worker"]
    assert sorted(app2["services"]) == ["api-1", "api-2", "postgres", "sidecar", "web-1", "web-2", "worker"]
    assert sorted(cs.backends(seed_stack("app1"), "10.0.0.21")) == ["api", "web"]
    assert [b["port"] for b in cs.backends(seed_stack("app2"), "10.0.0.22")["sidecar"]] == [9100]
    assert [j["name"] for j in cs.for_host(seed_stack("app1"))["jobs"]] == ["migrate", "beat-schema"]
    assert [j["name"] for j in cs.for_host(seed_stack("app2"))["jobs"]] == ["migrate"]


def test_a_stack_without_hosts_runs_everything_where_it_is_rendered():
    st = stack()
    assert cs.for_host(st) is st
    alone = stack(host="vm1", services=stack()["services"] + [
        {"name": "beat", "image": "reg/b", "tag": "1", "placement": "one"}])
    assert "beat" in cs.compose(cs.validate(alone))["services"]


def test_bad_placement_is_refused_naming_the_service():
    st = seed_stack("app1")
    assert errors_of(with_service(st, "scheduler", replicas=2)) == [
        "service 'scheduler': placement 'one' runs a single instance per environment; replicas must be 1, not 2"]
    assert errors_of(with_service(st, "sidecar", placement=["app2", "app9"])) == [
        "service 'sidecar': placement names app9, which is not an app host (the app hosts: app1, app2)"]
    assert errors_of(with_service(st, "sidecar", placement=[])) == ["service 'sidecar': placement lists no host"]
    assert errors_of(with_service(st, "sidecar", placement="everywhere")) == [
        "service 'sidecar': placement must be 'one' or a list of app hosts, not 'everywhere'"]
    # web runs on both hosts, and would depend on the singleton on app1
    assert errors_of(with_service(st, "web", depends_on={"scheduler": "service_started"})) == [
        "service 'web': depends_on 'scheduler', which does not run on app2"]
    # the other way round is fine: the singleton runs where the api runs
    cs.validate(with_service(st, "scheduler", depends_on={"api": "service_healthy"}))


def test_a_rollout_takes_every_published_replica_then_every_port_less_replica_placed_here():
    st = with_service(seed_stack("app1"), "worker", replicas=2, stop_grace_period="1m30s")
    here = cs.backends(st, "10.0.0.21")
    assert cs.rollout_units(st, here) == [
        {"service": "api-1", "upstream": "api", "port": 8001}, {"service": "api-2", "upstream": "api", "port": 8002},
        {"service": "web-1", "upstream": "web", "port": 3000}, {"service": "web-2", "upstream": "web", "port": 3001},
        {"service": "postgres"}, {"service": "worker-1", "stop_grace_period": 90},
        {"service": "worker-2", "stop_grace_period": 90}, {"service": "scheduler"}]
    # the singleton is not on app2, the sidecar (published, one replica) is
    app2 = seed_stack("app2")
    assert [(u["service"], u.get("upstream")) for u in cs.rollout_units(app2, cs.backends(app2, "h"))] == [
        ("api-1", "api"), ("api-2", "api"), ("web-1", "web"), ("web-2", "web"), ("sidecar", "sidecar"),
        ("postgres", None), ("worker", None)]
    # narrowed to some services; one placed elsewhere has nothing here
    assert [u["service"] for u in cs.rollout_units(st, here, ["worker", "web"])] == ["web-1", "web-2", "worker-1",
                                                                                       "worker-2"]
    assert cs.rollout_units(st, here, ["sidecar"]) == []


def test_a_service_health_path_goes_with_its_units_and_is_checked():
    st = with_service(seed_stack("app1"), "web", health_path="/healthz")
    units = cs.rollout_units(st, cs.backends(st, "10.0.0.21"), ["web", "api"])
    assert [(u["service"], u.get("health_path")) for u in units] == [
        ("api-1", None), ("api-2", None), ("web-1", "/healthz"), ("web-2", "/healthz")]
    assert errors_of(with_service(seed_stack("app1"), "web", health_path="healthz")) == [
        "service 'web': health_path 'healthz' must start with /"]
    assert errors_of(with_service(seed_stack("app1"), "worker", health_path="/health")) == [
        "service 'worker': health_path is probed on a published port, and this service publishes none "
        "(a service without ports is gated on its Docker healthcheck)"]


def test_a_deploy_image_goes_to_the_one_service_named():
    st = seed_stack("app1")
    here = cs.backends(st, "10.0.0.21")
    assert cs.rollout_targets(st, here) == {
        "api-1": "reg:5000/demo-api:1.0.0", "api-2": "reg:5000/demo-api:1.0.0", "web-1": "reg/web:1",
        "web-2": "reg/web:1", "postgres": "reg:5000/demo-postgres:17", "worker": "reg/demo-api:1.0.0",
        "scheduler": "reg/demo-api:1.0.0"}
    assert cs.rollout_targets(st, here, ["api", "worker"]) == {
        "api-1": "reg:5000/demo-api:1.0.0", "api-2": "reg:5000/demo-api:1.0.0", "worker": "reg/demo-api:1.0.0"}
    forced = cs.rollout_targets(st, here, ["api"], "reg:5000/demo-api@" + DIGEST)
    assert forced == {"api-1": "reg:5000/demo-api@" + DIGEST, "api-2": "reg:5000/demo-api@" + DIGEST}
    for services in (None, ["api", "web"]):
        with pytest.raises(ValueError, match="keelson_deploy_image deploys one image to one service"):
            cs.rollout_targets(st, here, services, "reg:5000/demo-api@" + DIGEST)


@pytest.mark.parametrize("value, seconds", [
    ("30s", 30), ("1m30s", 90), ("1h", 3600), ("500ms", 1), ("1.5s", 2), (45, 45), (2.5, 3),
    ("", None), (None, None), ("30", None), ("soon", None), ("30s junk", None)])
def test_compose_durations_in_whole_seconds(value, seconds):
    assert cs.duration_seconds(value) == seconds


def test_a_port_less_service_keeps_its_rollout_pins_like_a_replica():
    st = seed_stack("app1")
    pin = {"image": "reg/demo-api@sha256:" + "1" * 64}
    v10, v12 = {"id": "sha256:" + "a" * 64}, {"id": "sha256:" + "c" * 64}
    ids = {"reg/demo-api@sha256:" + "1" * 64: "sha256:" + "b" * 64}
    assert cs.rollout_pins_to_keep({"worker": pin}, st, {"worker": v10}, {"worker": v10}, ids) == {"worker": pin}
    assert cs.rollout_pins_to_keep({"worker": pin}, st, {"worker": v12}, {"worker": v10}, ids) == {}
    two = with_service(st, "worker", replicas=2)
    pins = {"worker-1": pin, "worker-2": pin}
    assert cs.rollout_pins_to_keep(pins, two, {"worker": v10}, {"worker": v10}, ids) == pins


def test_the_release_jobs_run_once_on_the_first_host_their_service_is_on():
    hosts = []
    for name in ("app1", "app2"):
        st = seed_stack(name)
        hosts.append({"host": name, "stack": st, "targets": cs.rollout_targets(st, cs.backends(st, name))})
    assert cs.rollout_jobs(hosts) == [
        {"name": "migrate", "host": "app1", "service": "api-1", "command": ["migrate"], "image": "reg:5000/demo-api:1.0.0"},
        {"name": "beat-schema", "host": "app1", "service": "scheduler", "command": ["beat", "--init"],
         "image": "reg/demo-api:1.0.0"}]
    # the scheduler placed on app2 only: its job runs there
    for entry in hosts:
        entry["stack"] = with_service(entry["stack"], "scheduler", placement=["app2"])
        entry["targets"] = cs.rollout_targets(entry["stack"], cs.backends(entry["stack"], "h"))
    assert [(j["name"], j["host"]) for j in cs.rollout_jobs(hosts)] == [("migrate", "app1"), ("beat-schema", "app2")]
    # a one-off image for the API: the API's job runs on it, the scheduler's does not run
    for entry in hosts:
        entry["targets"] = cs.rollout_targets(entry["stack"], cs.backends(entry["stack"], "h"), ["api"], "reg/x@" + DIGEST)
    assert [(j["name"], j["image"]) for j in cs.rollout_jobs(hosts)] == [("migrate", "reg/x@" + DIGEST)]


def test_site_jobs_run_once_on_the_first_host_whose_release_asks_for_them():
    due = [{"host": "app1", "jobs": []},  # app1's release did not change
           {"host": "app2", "jobs": cs.host_jobs(seed_stack("app2"))},
           {"host": "app3", "jobs": cs.host_jobs(seed_stack("app1"))}]
    assert cs.host_jobs(seed_stack("app2")) == [{"name": "migrate", "service": "api-1", "command": ["migrate"]}]
    assert [(j["name"], j["host"]) for j in cs.jobs_once(due)] == [("migrate", "app2"), ("beat-schema", "app3")]


def test_exec_runs_on_the_first_host_placing_the_service_in_its_first_replica():
    st = seed_stack("app2")  # every host computes the same target, whichever it is
    assert cs.exec_target(st, "api") == {"host": "app1", "compose_service": "api-1"}
    assert cs.exec_target(st, "worker", "app2") == {"host": "app2", "compose_service": "worker"}
    assert cs.exec_target(st, "sidecar") == {"host": "app2", "compose_service": "sidecar"}
    assert cs.exec_target(st, "scheduler")["host"] == "app1"


def test_exec_refuses_an_unknown_service_or_a_host_it_does_not_run_on():
    st = seed_stack("app1")
    with pytest.raises(cs.StackError, match=r"service 'apii' is not in compose_stack_services \(there: postgres, api,"):
        cs.exec_target(st, "apii")
    with pytest.raises(cs.StackError, match=r"service 'scheduler' does not run on app2 \(it runs on: app1\)"):
        cs.exec_target(st, "scheduler", "app2")
    with pytest.raises(cs.StackError, match=r"service 'sidecar' does not run on app3 \(it runs on: app2\)"):
        cs.exec_target(st, "sidecar", "app3")


def test_a_start_first_service_gets_a_surge_replica_on_the_port_after_its_last():
    st = with_service(stack(), "api", start_first=True)
    doc = cs.compose(st, "10.0.0.5")
    surge = doc["services"]["api-surge"]
    assert surge["ports"] == ["10.0.0.5:8003:8000/tcp"]
    # started only when a rollout names it, never brought back by Docker, reached by the service's name
    assert surge["profiles"] == ["surge"] and surge["restart"] == "no"
    assert surge["networks"] == {"default": {"aliases": ["api"]}}
    assert surge["labels"]["keelson.stack.replica"] == "surge"
    assert surge["image"] == doc["services"]["api-1"]["image"]
    assert surge["environment"] == doc["services"]["api-1"]["environment"]
    # a one-replica service's surge answers on its name too
    one = cs.compose(with_service(stack(), "frontend", start_first=True), "")
    assert one["services"]["frontend-surge"]["ports"] == ["3001:80/tcp"]
    assert one["services"]["frontend-surge"]["networks"] == {"default": {"aliases": ["frontend"]}}
    assert "frontend-surge" not in cs.compose(stack(), "")["services"]


def test_the_surge_is_a_drained_server_and_not_a_rollout_unit():
    st = with_service(stack(), "api", start_first=True)
    here = cs.backends(st, "10.0.0.21")
    assert here["api"][-1] == {"host": "10.0.0.21", "port": 8003, "replica": "api-surge", "surge": True}
    servers = cs.upstreams([here], services=["api"])[0]["servers"]
    assert servers == [{"host": "10.0.0.21", "port": 8001}, {"host": "10.0.0.21", "port": 8002},
                       {"host": "10.0.0.21", "port": 8003, "down": True}]
    assert [u["service"] for u in cs.rollout_units(st, here)] == ["api-1", "api-2", "frontend", "postgres"]
    assert cs.rollout_surges(st, here) == [{"service": "api-surge", "upstream": "api", "port": 8003}]
    assert cs.rollout_surges(st, here, ["frontend"]) == []
    hp = with_service(st, "api", health_path="/ready")
    assert cs.rollout_surges(hp, cs.backends(hp, "h"))[0]["health_path"] == "/ready"


def test_start_first_needs_ports_and_a_free_surge_slot():
    worker = stack(services=stack()["services"] + [{"name": "worker", "image": "reg/w", "tag": "1", "start_first": True}])
    assert any("'worker': start_first" in e and "publishes none" in e for e in errors_of(worker))
    # api's surge takes 8003, which another service publishes
    clash = with_service(with_service(stack(), "api", start_first=True), "frontend",
                         ports=[{"published": 8003, "target": 80}])
    assert any("port collision" in e and "api-surge" in e for e in errors_of(clash)), errors_of(clash)
    named = stack(services=stack()["services"] + [{"name": "api-surge", "image": "reg/x", "tag": "1"}])
    assert any("api-surge" in e for e in errors_of(with_service(named, "api", start_first=True)))
