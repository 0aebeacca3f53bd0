#!/usr/bin/env python3
"""Builds the demo application images and pushes them to the lab registry.

    python3 lab/demo/build.py --registry 172.30.77.42:5000 [--only demo-api] [--no-push]

Images (all FROM the lab's keelson/debian:13; nothing is pulled):
    demo-api:1.0.0, :1.1.0            the API/worker, two good versions
    demo-api:1.1.0-unhealthy          /health answers 500 (Docker healthcheck fails)
    demo-api:1.1.0-exits              exits 5 s after start
    demo-api:1.1.0-probefail          Docker-healthy, but /health answers 500
    demo-api:1.1.0-badworker          the API is fine, the worker exits 1 s after start
    demo-api:1.1.0-badmigration       its migration fails (exit 1), changing nothing
    demo-api:1.1.0-slowmigration      its migration takes 45 s (a controller is killed during it)
    demo-postgres:17, demo-redis:8, demo-rabbitmq:4   test-only backing services
    jobsearch/frontend, jobsearch/api-gateway, jobsearch/worker :2.4.1, :2.5.0
                                      stand-ins for inventories/staging's images (the demo
                                      on their ports, commands and paths; lab/demo/jobsearch)

The lab registry speaks plain HTTP on a private address. A Docker engine refuses
that unless the registry is listed in `insecure-registries`, except on loopback
(127.0.0.0/8 is always trusted). So, unless --direct is given, the push goes
through a TCP forwarder this script opens on 127.0.0.1: the repository names and
digests are the same, the engine's configuration is untouched.

Standard library only. Exits non-zero with the reason on any failure.
"""
import argparse
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BASE = "keelson/debian:13"

# (repository, tag, build context, build args); "{registry}" in an argument is the registry
STANDIN = {"DEMO_IMAGE": "{registry}/demo-api:1.0.0"}
IMAGES = [
    ("demo-api", "1.0.0", "app", {"DEMO_VERSION": "1.0.0"}),
    ("demo-api", "1.1.0", "app", {"DEMO_VERSION": "1.1.0"}),
    ("demo-api", "1.1.0-unhealthy", "app", {"DEMO_VERSION": "1.1.0-unhealthy", "DEMO_FAIL_MODE": "unhealthy"}),
    ("demo-api", "1.1.0-exits", "app", {"DEMO_VERSION": "1.1.0-exits", "DEMO_FAIL_MODE": "exit"}),
    ("demo-api", "1.1.0-probefail", "app", {"DEMO_VERSION": "1.1.0-probefail", "DEMO_FAIL_MODE": "probe"}),
    ("demo-api", "1.1.0-badworker", "app", {"DEMO_VERSION": "1.1.0-badworker", "DEMO_FAIL_MODE": "worker"}),
    ("demo-api", "1.1.0-badmigration", "app", {"DEMO_VERSION": "1.1.0-badmigration", "DEMO_FAIL_MODE": "migrate"}),
    ("demo-api", "1.1.0-slowmigration", "app", {"DEMO_VERSION": "1.1.0-slowmigration",
                                                 "DEMO_FAIL_MODE": "slowmigrate"}),
    ("demo-postgres", "17", "postgres", {}),
    ("demo-redis", "8", "redis", {}),
    ("demo-rabbitmq", "4", "rabbitmq", {}),
    *[(repo, version, "jobsearch", dict(STANDIN, VERSION=version, **args))
      for version in ("2.4.1", "2.5.0")
      for repo, args in (("jobsearch/frontend", {"PORT": "3000"}),
                         ("jobsearch/api-gateway", {"PORT": "8080", "PATH_PREFIX": "/api"}),
                         ("jobsearch/worker", {"ROLE": "worker"}))],
]


class BuildError(Exception):
    pass


def log(msg):
    print(f"demo-build: {msg}", flush=True)


def docker(*args, check=True):
    env = dict(os.environ, DOCKER_BUILDKIT="0")
    res = subprocess.run(["docker", *args], capture_output=True, text=True, env=env)
    if check and res.returncode != 0:
        raise BuildError(f"docker {' '.join(args)} failed ({res.returncode}):\n"
                         f"{res.stdout[-3000:]}{res.stderr[-3000:]}")
    return res


class Forwarder:
    """127.0.0.1:<ephemeral> -> registry, one thread pair per connection."""

    def __init__(self, target):
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.listener.close()


def build(repo, tag, context, args, registry):
    ref = f"{registry}/{repo}:{tag}"
    cmd = ["build", "-q", "-t", ref, "--build-arg", f"BASE={BASE}"]
    for key, value in args.items():
        cmd += ["--build-arg", f"{key}={value.format(registry=registry)}"]
    t0 = time.monotonic()
    docker(*cmd, str(HERE / context))
    size = int(docker("image", "inspect", "-f", "{{.Size}}", ref).stdout.strip())
    log(f"built {ref} ({size / 1e6:.0f} MB) in {time.monotonic() - t0:.0f}s")
    return ref


def push(ref, registry, push_via):
    """Pushes ref; push_via is the registry address the engine talks to."""
    if push_via == registry:
        out = docker("push", ref).stdout
    else:
        alias = push_via + ref[len(registry):]
        docker("tag", ref, alias)
        try:
            out = docker("push", alias).stdout
        finally:
            docker("rmi", alias, check=False)
    digest = next((w for w in out.split() if w.startswith("sha256:")), "?")
    log(f"pushed {ref} {digest}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--registry", required=True, help="registry host:port, e.g. 172.30.77.42:5000")
    parser.add_argument("--only", action="append", help="build only these repositories (repeatable)")
    parser.add_argument("--no-push", action="store_true", help="build and tag only")
    parser.add_argument("--direct", action="store_true",
                        help="push straight to the registry (the engine trusts it already)")
    opts = parser.parse_args(argv)
    if docker("image", "inspect", BASE, check=False).returncode != 0:
        raise BuildError(f"base image {BASE} is missing: run `python3 lab/lab.py images` first")
    t0 = time.monotonic()
    refs = [build(repo, tag, ctx, args, opts.registry)
            for repo, tag, ctx, args in IMAGES if not opts.only or repo in opts.only]
    if not opts.no_push:
        forwarder = None if opts.direct else Forwarder(opts.registry)
        via = opts.registry if forwarder is None else f"127.0.0.1:{forwarder.port}"
        try:
            for ref in refs:
                push(ref, opts.registry, via)
        finally:
            if forwarder:
                forwarder.close()
    log(f"{len(refs)} images ready in {time.monotonic() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BuildError as exc:
        print(f"demo-build: error: {exc}", file=sys.stderr)
        sys.exit(1)
