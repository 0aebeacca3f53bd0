# -*- coding: utf-8 -*-
# Copyright: keelson.stack contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Stack definitions (the compose_stack role's inventory input) to Compose files.

A stack is a dict: ``project``, ``services`` (list of service dicts as the role's
argument_specs describe them), ``volumes``, ``networks``, ``jobs`` and ``secret_names``
(the keys of the secrets dict: values never come here). Argument specs check the
shape; :func:`validate` checks the rules between fields (port collisions, references);
:func:`compose` renders the Compose document; :func:`backends` lists what nginx can
reach.

A service with ``replicas`` >= 2 becomes one Compose service per replica,
``<name>-<n>``, each answering on the service's name too (a network alias). A
published port becomes ``port + n - 1``: each replica is one nginx upstream server.
Either way a rollout replaces one replica at a time. A published service with
``start_first`` also gets a surge replica, ``<name>-surge``, on the port after its last
replica's (``port + replicas``): Compose starts it only when a rollout names it (profile
``surge``), and nginx holds it drained, so a deploy starts the new release there before
the first old replica is drained, and a host never serves with fewer than ``replicas``.

The role adds ``host`` (the inventory host it renders for) and ``hosts`` (the app
hosts, in inventory order). A service's ``placement`` picks the hosts it runs on:
every app host by default, ``one`` (the first: a singleton, once per environment)
or a list of app hosts. What runs on a host is :func:`for_host` of the stack.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import math
import re

from ansible_collections.keelson.stack.plugins.module_utils.probes import docker_health_probe

PROJECT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
SERVICE_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
MEMORY_RE = re.compile(r"^[0-9]+(\.[0-9]+)?[bkmg]?$", re.IGNORECASE)
DEPENDS_CONDITIONS = ("service_started", "service_healthy", "service_completed_successfully")
SINGLETON = "one"


class StackError(ValueError):
    """Every problem found in a stack, one per line."""

    def __init__(self, errors):
        self.errors = list(errors)
        super(StackError, self).__init__(
            "invalid stack definition:\n" + "\n".join("  - " + e for e in self.errors))


def _ports(service):
    return service.get("ports") or []


def is_split(service):
    """True when each replica is its own Compose service (>= 2 replicas)."""
    return int(service.get("replicas") or 1) > 1


def replica_names(service):
    if is_split(service):
        return ["%s-%d" % (service["name"], n) for n in range(1, int(service["replicas"]) + 1)]
    return [service["name"]]


def published(service):
    """(compose service name, replica number, port dict with the replica's host port)."""
    out = []
    for index, name in enumerate(replica_names(service)):
        for port in _ports(service):
            out.append((name, index + 1, dict(port, published=int(port["published"]) + index)))
    return out


def surge_name(service):
    """The surge replica's Compose service name, or None for a service without start_first."""
    return "%s-surge" % service["name"] if service.get("start_first") else None


def surge_published(service):
    """published() of the surge replica: the port slot after the last replica's."""
    name = surge_name(service)
    if name is None:
        return []
    replicas = int(service.get("replicas") or 1)
    return [(name, "surge", dict(port, published=int(port["published"]) + replicas)) for port in _ports(service)]


def placed_hosts(service, hosts):
    """The app hosts (of ``hosts``, in their order) a service runs on."""
    placement = service.get("placement")
    if placement is None:
        return list(hosts)
    if placement == SINGLETON:
        return list(hosts[:1])
    return [h for h in hosts if h in placement]


def _stack_hosts(stack):
    return list(stack.get("hosts") or ([stack["host"]] if stack.get("host") else []))


def for_host(stack):
    """What of a stack runs on ``stack["host"]``: the services placed there and the jobs
    of those services. A stack without ``host`` is returned as it is."""
    if not stack.get("host"):
        return stack
    hosts = _stack_hosts(stack)
    here = [s for s in stack.get("services") or [] if stack["host"] in placed_hosts(s, hosts)]
    names = set(s.get("name") for s in here)
    return dict(stack, services=here, jobs=[j for j in stack.get("jobs") or [] if j.get("service") in names])


def _placement_errors(svc, where, hosts, replicas):
    placement = svc.get("placement")
    if placement is None:
        return []
    if placement == SINGLETON:
        if int(replicas) > 1:
            return ["%s: placement 'one' runs a single instance per environment; replicas must be 1, not %d"
                    % (where, int(replicas))]
        return []
    if not isinstance(placement, list) or not all(isinstance(h, str) for h in placement):
        return ["%s: placement must be 'one' or a list of app hosts, not %r" % (where, placement)]
    if not placement:
        return ["%s: placement lists no host" % where]
    unknown = [h for h in placement if h not in hosts]
    if unknown and hosts:
        return ["%s: placement names %s, which %s not an app host (the app hosts: %s)"
                % (where, ", ".join(unknown), "is" if len(unknown) == 1 else "are", ", ".join(hosts))]
    return []


def _named_volume(spec):
    """The named volume a short-syntax mount uses, or None for a bind mount."""
    source = spec.split(":", 1)[0] if ":" in spec else ""
    if not source or source.startswith(("/", ".", "~", "$")):
        return None
    return source


def validate(stack):
    """Raises StackError listing every cross-field problem; returns the stack otherwise."""
    errors = []
    project = stack.get("project") or ""
    if not PROJECT_RE.match(project):
        errors.append("project %r: lowercase letters, digits, '-' and '_' only, starting "
                      "with a letter or digit" % project)
    services = stack.get("services") or []
    if not services:
        errors.append("services: at least one service is required")
    names = [s.get("name", "") for s in services]
    by_name = dict((s.get("name"), s) for s in services)
    secret_names = set(stack.get("secret_names") or [])
    volumes = set(v for v in (stack.get("volumes") or []))
    networks = set(n.get("name") for n in (stack.get("networks") or []))
    hosts = _stack_hosts(stack)

    seen_compose = {}
    seen_ports = {}
    for svc in services:
        name = svc.get("name", "")
        where = "service %r" % name
        if not SERVICE_RE.match(name):
            errors.append("%s: name must be lowercase letters, digits, '.', '-', '_'" % where)
        if names.count(name) > 1 and name not in seen_compose:
            errors.append("%s: declared %d times" % (where, names.count(name)))
        if not svc.get("image"):
            errors.append("%s: image is required" % where)
        elif "@" in svc["image"] or re.search(r":[^/]*$", svc["image"]):
            errors.append("%s: image %r must not carry a tag or digest; use tag: or digest:"
                          % (where, svc["image"]))
        if bool(svc.get("tag")) == bool(svc.get("digest")):
            errors.append("%s: set exactly one of tag and digest" % where)
        if svc.get("digest") and not DIGEST_RE.match(svc["digest"]):
            errors.append("%s: digest %r is not sha256:<64 hex digits>" % (where, svc["digest"]))
        replicas = svc.get("replicas", 1)
        if replicas is None or int(replicas) < 1:
            errors.append("%s: replicas must be at least 1" % where)
            continue
        errors.extend(_placement_errors(svc, where, hosts, replicas))
        if svc.get("cpus") is not None and float(svc["cpus"]) <= 0:
            errors.append("%s: cpus must be greater than 0" % where)
        if svc.get("memory") and not MEMORY_RE.match(str(svc["memory"])):
            errors.append("%s: memory %r is not a size such as 256m or 1g" % (where, svc["memory"]))
        if svc.get("health_path") is not None:
            if not str(svc["health_path"]).startswith("/"):
                errors.append("%s: health_path %r must start with /" % (where, svc["health_path"]))
            if not svc.get("ports"):
                errors.append("%s: health_path is probed on a published port, and this service publishes none "
                              "(a service without ports is gated on its Docker healthcheck)" % where)

        if svc.get("start_first") and not _ports(svc):
            errors.append("%s: start_first starts the new release on a spare published port before an old "
                          "replica stops, and this service publishes none (a service without ports is "
                          "replaced one replica at a time)" % where)
        for compose_name in replica_names(svc) + ([surge_name(svc)] if surge_name(svc) else []):
            if compose_name in seen_compose and seen_compose[compose_name] != name:
                errors.append("%s: Compose service name %r is already used by service %r"
                              % (where, compose_name, seen_compose[compose_name]))
            seen_compose.setdefault(compose_name, name)
        for compose_name, _n, port in published(svc) + surge_published(svc):
            if not 1 <= port["published"] <= 65535:
                errors.append("%s: host port %d of %s is out of range"
                              % (where, port["published"], compose_name))
            key = (port.get("host_ip") or "", port["published"], port.get("protocol") or "tcp")
            # An unset host_ip binds every address: it collides with any address.
            clashes = [k for k in seen_ports if k[1:] == key[1:] and (not k[0] or not key[0] or k[0] == key[0])]
            for other in clashes:
                errors.append("port collision: %s and %s both publish %s port %d"
                              % (compose_name, seen_ports[other], key[2], key[1]))
            seen_ports.setdefault(key, compose_name)

        env_names = set((svc.get("environment") or {}).keys())
        for key in env_names:
            if not ENV_NAME_RE.match(str(key)):
                errors.append("%s: environment name %r is not a valid variable name" % (where, key))
        for secret in svc.get("secrets") or []:
            if secret not in secret_names:
                errors.append("%s: secret %r is not defined in compose_stack_secrets" % (where, secret))
            if secret in env_names:
                errors.append("%s: %r is both an environment value and a secret" % (where, secret))
        for dep, condition in (svc.get("depends_on") or {}).items():
            if dep not in by_name:
                errors.append("%s: depends_on unknown service %r" % (where, dep))
            elif hosts and not _placement_errors(by_name[dep], "", hosts, 1):
                missing = [h for h in placed_hosts(svc, hosts) if h not in placed_hosts(by_name[dep], hosts)]
                if missing:
                    errors.append("%s: depends_on %r, which does not run on %s" % (where, dep, ", ".join(missing)))
            if dep == name:
                errors.append("%s: depends on itself" % where)
            if condition not in DEPENDS_CONDITIONS:
                errors.append("%s: depends_on %r condition %r is not one of %s"
                              % (where, dep, condition, ", ".join(DEPENDS_CONDITIONS)))
        for spec in svc.get("volumes") or []:
            vol = _named_volume(spec)
            if vol and vol not in volumes:
                errors.append("%s: volume %r is not declared in compose_stack_volumes" % (where, vol))
        for net in svc.get("networks") or []:
            if net not in networks:
                errors.append("%s: network %r is not declared in compose_stack_networks" % (where, net))
        health = svc.get("healthcheck") or {}
        if health and not health.get("disable") and not health.get("test"):
            errors.append("%s: healthcheck needs test (or disable: true)" % where)

    job_names = [j.get("name") for j in stack.get("jobs") or []]
    for job in stack.get("jobs") or []:
        if job_names.count(job.get("name")) > 1:
            errors.append("job %r: declared more than once" % job.get("name"))
        if job.get("service") not in by_name:
            errors.append("job %r: unknown service %r" % (job.get("name"), job.get("service")))
    if errors:
        # One message per problem, in a stable order, without duplicates.
        raise StackError(sorted(set(errors), key=errors.index))
    return stack


def image_ref(service):
    if service.get("digest"):
        return "%s@%s" % (service["image"], service["digest"])
    return "%s:%s" % (service["image"], service["tag"])


def _escape(value):
    """Compose interpolates ``$`` in the file; inventory values are literal."""
    return str(value).replace("$", "$$")


def _literal(value):
    return str(value)


def _text_of(svc):
    """How a service's inventory text reaches compose.yaml. Every field the role
    renders from user text (command, entrypoint, environment values, healthcheck
    test, label values, volumes, user) goes through the same function, so a
    ``$HOSTNAME`` means the same thing in each: literal by default (``$$``, which
    Compose turns back into ``$``, so a shell in the container still expands it),
    or interpolated by Compose from .env and its environment with ``interpolate: true``."""
    return _literal if svc.get("interpolate") else _escape


def _healthcheck(health, text=_escape):
    if health.get("disable"):
        return {"disable": True}
    out = {"test": [text(part) for part in health["test"]]}
    for key in ("interval", "timeout", "start_period", "start_interval"):
        if health.get(key):
            out[key] = str(health[key])
    if health.get("retries") is not None:
        out["retries"] = int(health["retries"])
    return out


def _service_body(svc, stack, replica, compose_names):
    text = _text_of(svc)
    body = {"image": image_ref(svc)}
    for key in ("command", "entrypoint"):
        if svc.get(key):
            body[key] = [text(part) for part in svc[key]]
    env = dict((k, text(v)) for k, v in sorted((svc.get("environment") or {}).items()))
    for secret in svc.get("secrets") or []:
        # The value lives only in .env (0600); the file names the variable.
        env[secret] = "${%s:?%s must be set in .env}" % (secret, secret)
    if env:
        body["environment"] = env
    if svc.get("healthcheck"):
        body["healthcheck"] = _healthcheck(svc["healthcheck"], text)
    limits = {}
    if svc.get("cpus") is not None:
        limits["cpus"] = str(svc["cpus"])
    if svc.get("memory"):
        limits["memory"] = str(svc["memory"]).lower()
    if limits:
        body.setdefault("deploy", {})["resources"] = {"limits": limits}
    if svc.get("depends_on"):
        deps = {}
        for dep, condition in sorted(svc["depends_on"].items()):
            for target in compose_names[dep]:
                deps[target] = {"condition": condition}
        body["depends_on"] = deps
    if svc.get("volumes"):
        body["volumes"] = [text(spec) for spec in svc["volumes"]]
    if is_split(svc):
        # Each replica is a Compose service of its own; every one answers on the
        # service's name too, so that `http://api:8000` reaches them whatever the count.
        body["networks"] = dict((net, {"aliases": [svc["name"]]}) for net in svc.get("networks") or ["default"])
    elif svc.get("networks"):
        body["networks"] = list(svc["networks"])
    if svc.get("profiles"):
        body["profiles"] = list(svc["profiles"])
    restart = svc.get("restart")
    body["restart"] = "no" if restart is False else str(restart or "unless-stopped")
    if svc.get("stop_grace_period"):
        body["stop_grace_period"] = str(svc["stop_grace_period"])
    if svc.get("user"):
        body["user"] = text(svc["user"])
    if svc.get("stop_signal"):
        body["stop_signal"] = svc["stop_signal"]
    labels = dict((k, text(v)) for k, v in (svc.get("labels") or {}).items())
    labels.update({"keelson.stack.project": stack["project"], "keelson.stack.service": svc["name"]})
    if is_split(svc):
        labels["keelson.stack.replica"] = str(replica)
    body["labels"] = dict(sorted(labels.items()))
    return body


def _port_spec(port, bind_address):
    host_ip = port.get("host_ip") or bind_address
    return "%s%d:%d/%s" % (host_ip + ":" if host_ip else "", port["published"], int(port["target"]),
                           port.get("protocol") or "tcp")


def _surge_body(svc, stack, compose_names, bind_address):
    """A replica on the spare port slot, started only when named (profile ``surge``), never
    restarted by Docker (a host's reboot must not bring back a surge nginx holds drained),
    answering on the service's name like the other replicas."""
    body = _service_body(svc, stack, "surge", compose_names)
    body["ports"] = [_port_spec(port, bind_address) for _name, _n, port in surge_published(svc)]
    body["profiles"] = ["surge"]
    body["restart"] = "no"
    body["networks"] = dict((net, {"aliases": [svc["name"]]}) for net in svc.get("networks") or ["default"])
    body["labels"]["keelson.stack.replica"] = "surge"
    return body


def compose(stack, bind_address=""):
    """The Compose document (a dict) for a validated stack. ``bind_address`` is the host
    address ports are published on when a port sets no host_ip ("" = every address)."""
    stack = for_host(stack)
    compose_names = dict((s["name"], replica_names(s)) for s in stack["services"])
    services = {}
    for svc in stack["services"]:
        for index, name in enumerate(compose_names[svc["name"]]):
            body = _service_body(svc, stack, index + 1, compose_names)
            ports = []
            for _name, _n, port in [p for p in published(svc) if p[0] == name]:
                ports.append(_port_spec(port, bind_address))
            if ports:
                body["ports"] = ports
            services[name] = body
        if surge_name(svc):
            services[surge_name(svc)] = _surge_body(svc, stack, compose_names, bind_address)
    doc = {"name": stack["project"], "services": services}
    if stack.get("volumes"):
        doc["volumes"] = dict((v, {}) for v in stack["volumes"])
    if stack.get("networks"):
        nets = {}
        for net in stack["networks"]:
            nets[net["name"]] = dict((k, True) for k in ("internal", "external") if net.get(k))
        doc["networks"] = nets
    return doc


def backends(stack, host):
    """{service: [{"host", "port", "replica", "surge"?}]} for every published TCP port, in
    replica order, the surge replica last (``surge: true``): what an nginx upstream per
    service is made of."""
    stack = for_host(stack)
    out = {}
    for svc in stack["services"]:
        for name, n, port in published(svc) + surge_published(svc):
            if (port.get("protocol") or "tcp") != "tcp":
                continue
            backend = {"host": port.get("host_ip") or host, "port": port["published"], "replica": name}
            if n == "surge":
                backend["surge"] = True
            out.setdefault(svc["name"], []).append(backend)
    return out


def duration_seconds(value):
    """Whole seconds (rounded up) of a Compose duration (``30s``, ``1m30s``, ``500ms``, a
    number of seconds), or None when it is not one."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(math.ceil(value))
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)", str(value or ""))
    if not parts or "".join(n + u for n, u in parts) != str(value).strip():
        return None
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 0.000001}
    return int(math.ceil(sum(float(n) * scale[u] for n, u in parts)))


def rollout_units(stack, backends_here, services=None):
    """What a rollout replaces on ``stack["host"]``, one unit per replica, in order: the
    replicas of every published service (each one nginx backend of the upstream named
    after its service), then the replicas of every service that publishes no port
    (workers, schedulers), each stopped with its service's ``stop_grace_period`` when it
    has one. A published service's ``health_path``, when it sets one, goes with its units.
    Services placed elsewhere are not here; ``services`` (names) keeps only those.
    [{service, upstream?, port?, health_path?, stop_grace_period?}], as compose_rollout's ``replicas``
    takes them (``service`` is the replica's Compose service)."""
    chosen = [svc for svc in for_host(stack)["services"] if services is None or svc["name"] in services]
    units = []
    for svc in [s for s in chosen if s["name"] in (backends_here or {})]:
        for b in [b for b in backends_here[svc["name"]] if not b.get("surge")]:
            unit = {"service": b["replica"], "upstream": svc["name"], "port": b["port"]}
            if svc.get("health_path"):
                unit["health_path"] = svc["health_path"]
            units.append(unit)
    for svc in [s for s in chosen if s["name"] not in (backends_here or {})]:
        grace = duration_seconds(svc.get("stop_grace_period"))
        for name in replica_names(svc):
            unit = {"service": name}
            if grace is not None:
                unit["stop_grace_period"] = grace
            units.append(unit)
    return units


def rollout_surges(stack, backends_here, services=None):
    """The surge replicas on ``stack["host"]`` of the start_first services (of ``services``,
    names, when given): [{service, upstream, port, health_path?}], ``service`` being the
    surge's Compose service; compose_rollout takes them as its ``replicas`` too."""
    surges = []
    for svc in for_host(stack)["services"]:
        if services is not None and svc["name"] not in services:
            continue
        for b in [b for b in (backends_here or {}).get(svc["name"]) or [] if b.get("surge")]:
            surge = {"service": b["replica"], "upstream": svc["name"], "port": b["port"]}
            if svc.get("health_path"):
                surge["health_path"] = svc["health_path"]
            surges.append(surge)
    return surges


def rollout_targets(stack, backends_here, services=None, image=None):
    """{unit: image reference} for a deploy of the inventory's release: every unit of
    rollout_units to the image the inventory names for its service. ``image`` (an
    operator's one-off image) goes to the units of ``services`` alone, which must then
    name exactly one service."""
    if image and len(services or []) != 1:
        raise ValueError("keelson_deploy_image deploys one image to one service: name it with "
                         "-e '{\"rollout_services\": [\"SERVICE\"]}' (rollout_services is %s)"
                         % (", ".join(services) if services else "every service"))
    image_of = dict((replica, image or image_ref(svc))
                    for svc in for_host(stack)["services"] for replica in replica_names(svc))
    return dict((unit["service"], image_of[unit["service"]]) for unit in rollout_units(stack, backends_here, services))


def host_jobs(stack):
    """The jobs of what runs on ``stack["host"]``: [{name, service, command}], ``service``
    being the Compose service each runs in."""
    placed = for_host(stack)
    return [{"name": job["name"], "service": job_service(placed, job), "command": list(job["command"])}
            for job in placed.get("jobs") or []]


def jobs_once(hosts):
    """Each job once, on the first host (in play order) that has it: ``hosts`` is
    [{host, jobs}] (jobs as host_jobs gives them); returns [{name, host, service, command}]."""
    out, seen = [], set()
    for entry in hosts:
        for job in entry.get("jobs") or []:
            if job["name"] not in seen:
                seen.add(job["name"])
                out.append(dict(job, host=entry["host"]))
    return out


def rollout_jobs(hosts):
    """The release's jobs (migrations) for a deploy, each to run once, before any replica
    of the new release serves: [{name, host, service, command, image}] in definition
    order. ``hosts`` is [{host, stack, targets}] in play order (each app host's placed
    stack and its deploy targets, {unit: image}); a job runs on the first host where its
    service is placed, on the image that host's deploy gives its service. A job whose
    service this run does not change is left out."""
    due = []
    for entry in hosts:
        targets = entry.get("targets") or {}
        due.append({"host": entry["host"], "jobs": [dict(job, image=targets[job["service"]])
                                                    for job in host_jobs(entry["stack"]) if job["service"] in targets]})
    return jobs_once(due)


def upstreams(backends_per_host, services=None, keepalive=32, max_fails=1, fail_timeout=10):
    """nginx role's ``nginx_upstreams`` from each app host's backends fact, one upstream per
    service (in the order the services first appear), servers in host then replica order;
    a surge replica's server is written drained (``down``): a rollout puts it in and takes
    it out again."""
    merged = {}
    for host_backends in backends_per_host:
        for service, servers in (host_backends or {}).items():
            if services is None or service in services:
                merged.setdefault(service, []).extend(
                    dict({"host": s["host"], "port": s["port"]}, **({"down": True} if s.get("surge") else {}))
                    for s in servers)
    return [{"name": name, "servers": servers, "keepalive": keepalive,
             "max_fails": max_fails, "fail_timeout": fail_timeout}
            for name, servers in merged.items()]


def env_file(secrets):
    """.env content: NAME='value' lines (single quotes: Compose reads them literally)."""
    lines = []
    bad = []
    for name in sorted(secrets):
        value = "" if secrets[name] is None else str(secrets[name])
        if not ENV_NAME_RE.match(name) or "'" in value or "\n" in value:
            bad.append(name)
            continue
        lines.append("%s='%s'" % (name, value))
    if bad:
        # Names only: the values are secret.
        raise StackError(["secret %r: names must be variable names and values may not contain "
                          "a single quote or a newline" % n for n in bad])
    return "".join(line + "\n" for line in lines)


def problems(stack, secrets=None):
    """Every problem of the stack and of its secrets (names only), one message each;
    [] when both are valid. What site.yml's first play reports, unwrapped."""
    found = []
    for check, arg in ((validate, stack), (env_file, secrets or {})):
        try:
            check(arg)
        except StackError as exc:
            found.extend(exc.errors)
    return found


def release_images(stack, images, missing_ok=False):
    """{service: {"image", "id", "digest"}} from ``docker_image_info`` results: what each
    service runs, pinned by the registry digest when the image came from a registry
    (a loaded tarball has none: its image ID stands in)."""
    stack = for_host(stack)
    by_ref = {}
    for img in images or []:
        for ref in (img.get("RepoTags") or []) + (img.get("RepoDigests") or []):
            by_ref[ref] = img
    out = {}
    for svc in stack["services"]:
        ref = image_ref(svc)
        img = by_ref.get(ref)
        if img is None and missing_ok:  # check mode: the pull did not happen
            out[svc["name"]] = {"image": ref, "id": None, "digest": None}
            continue
        if img is None:
            raise StackError(["service %r: image %s is not on the host after pulling" % (svc["name"], ref)])
        digests = [d for d in img.get("RepoDigests") or [] if d.split("@")[0] == svc["image"]]
        out[svc["name"]] = {"image": ref, "id": img["Id"],
                            "digest": digests[0].split("@")[1] if digests else None}
    return out


def release_fingerprint(compose_text, services):
    """Identifies a release: the Compose file plus the image each service runs."""
    h = hashlib.sha256(compose_text.encode("utf-8"))
    for name in sorted(services):
        h.update(("\n%s=%s" % (name, services[name]["id"])).encode("utf-8"))
    return h.hexdigest()


def rollout_pending(stack, services, previous):
    """The Compose services on this host whose image a converge would change under a
    running container: the replicas the running release (``previous``, its record, or
    None when nothing runs yet) ran of each service whose image ID is not the one it ran.
    `up` leaves them alone; site.yml hands them to the rollout engine, which replaces
    them canary first, one at a time, after the release's jobs. A service new to the host,
    or a replica it did not run yet, has nothing to replace: `up` starts it."""
    if not previous:
        return []
    ran = set(previous.get("replicas") or [])
    before = previous.get("services") or {}
    out = []
    for svc in for_host(stack)["services"]:
        old = (before.get(svc["name"]) or {}).get("id")
        if old and old != services[svc["name"]]["id"]:
            out.extend(name for name in replica_names(svc) if name in ran)
    return out


def named_service(stack, service, setting):
    """The stack's service called `service`; a StackError naming `setting`, the
    variable that asked for it, when there is none."""
    services = stack.get("services") or []
    for svc in services:
        if svc.get("name") == service:
            return svc
    raise StackError(["%s: service %r is not in compose_stack_services (there: %s)"
                      % (setting, service, ", ".join(s.get("name", "?") for s in services) or "none")])


def exec_target(stack, service, host=""):
    """Where playbooks/exec.yml runs a command: {"host", "compose_service"}, the
    given app host or the first one the service is placed on, and the service's
    first replica (a fresh container takes its definition, `running` its container)."""
    svc = named_service(stack, service, "compose_stack_exec_service")
    hosts = placed_hosts(svc, _stack_hosts(stack))
    if not hosts:
        raise StackError(["service %r runs on no app host" % service])
    if host and host not in hosts:
        raise StackError(["service %r does not run on %s (it runs on: %s)" % (service, host, ", ".join(hosts))])
    return {"host": host or hosts[0], "compose_service": replica_names(svc)[0]}


def job_service(stack, job):
    """The Compose service a job runs in (the first replica of a split service)."""
    for svc in stack["services"]:
        if svc["name"] == job["service"]:
            return replica_names(svc)[0]
    raise StackError(["job %r: unknown service %r" % (job["name"], job["service"])])


def wait_probes(containers):
    """The health_gate probes that bring-up waits for, one per container of the project
    (``docker_compose_v2``'s ``containers``): running, and healthy where it has a
    healthcheck. A container without one, or whose healthcheck is disabled (``disable:
    true``, or ``HEALTHCHECK NONE`` in its image, which ``docker compose up --wait``
    refuses), counts once it runs."""
    return [docker_health_probe(name) for name in sorted(c["Name"] for c in containers)]


def health_report(containers):
    """A readable failure message from ``docker_container_info`` results: for each
    container that is not running healthy, its state and its last health-check outputs."""
    lines = []
    for info in containers:
        if not info:
            continue
        state = info.get("State") or {}
        health = state.get("Health") or {}
        status = health.get("Status") or ("running" if state.get("Running") else "exited")
        if state.get("Running") and status in ("healthy", "running"):
            continue
        name = (info.get("Name") or "").lstrip("/")
        detail = "exit code %s" % state.get("ExitCode") if not state.get("Running") else status
        lines.append("%s: %s (%s)" % (name, status, detail))
        for entry in (health.get("Log") or [])[-3:]:
            output = " ".join((entry.get("Output") or "").split())
            lines.append("  health check exit %s: %s" % (entry.get("ExitCode"), output[:300]))
    return "\n".join(lines) if lines else "no unhealthy or exited container found"


def rollout_pins_to_keep(pins, stack, services_now, services_before, pin_ids):
    """The pins of ``compose.rollout.yaml`` (``{replica: {"image": ref}}``, written by
    compose_rollout) that stay when the role brings the stack up.

    A pin stays when it pins the image compose.yaml asks for (nothing to change), or
    when compose.yaml's image for its service is the one the previous converge ran (the
    inventory has not moved since, so the pin is a newer deploy and site.yml must not
    undo it). It goes when the inventory now asks for another image than both (this run
    is the deploy), or when its replica is gone. ``stack`` gives the replicas of each
    service placed on the host, ``services_now`` and ``services_before`` map a service
    to ``{"id": image id}`` (this run's and the previous release's), ``pin_ids`` a pin's
    reference to its image ID."""
    service_of = dict((replica, svc["name"]) for svc in for_host(stack)["services"] for replica in replica_names(svc))
    kept = {}
    for replica, pin in sorted((pins or {}).items()):
        service = service_of.get(replica)
        pinned = (pin or {}).get("image")
        if not service or not pinned:
            continue
        wanted = (services_now.get(service) or {}).get("id")
        before = ((services_before or {}).get(service) or {}).get("id")
        if wanted is None or wanted == pin_ids.get(pinned) or wanted == before:
            kept[replica] = {"image": pinned}
    return kept
