#!/usr/bin/env python3
"""The keelson lab: local Debian "VMs" as systemd containers on this machine.

    lab.py engine          install and start a Docker engine and the apt cache if none answers
    lab.py images          build (or reuse) the Debian 12/13 host images and the service images
    lab.py up              engine + images + network + hosts + services, then write inventories/lab
        --debian 12|13         the Debian release of the hosts (default 13)
        --extra-app N          N more app hosts, app3 ... (for the converge benchmark; default 0,
                               and a later `up` without it removes them again)
        --connection ssh|docker  how the inventory reaches the hosts (default: $KEELSON_LAB_CONNECTION,
                               else ssh). ssh: as real VMs, user `debian` with passwordless sudo and
                               the lab key; docker: `docker exec` as root (community.docker.docker)
    lab.py status          what the lab is running
    lab.py down            remove every container, network and volume the lab made, nothing else

Every host is made like a cloud VM: sshd with its own host keys, a login user
`debian` with passwordless sudo and the lab's key (made once, 0600, under the lab
cache dir with a known_hosts file of the hosts' keys, never in inventories/lab).
inventories/lab holds only inventory; the pebble listener certificate is in the
cache dir too.

Standard library only: it runs before any virtualenv exists. Every failure exits
non-zero with the reason; nothing is skipped silently.
"""
import argparse
import concurrent.futures
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMAGES_DIR = ROOT / "lab" / "images"
INVENTORY_DIR = ROOT / "inventories" / "lab"
CACHE_DIR = Path(os.environ.get("KEELSON_LAB_CACHE", "/var/cache/keelson-lab"))

LABEL = "keelson.lab"
NETWORK = "keelson-lab"
SUBNET = "172.30.77.0/24"
GATEWAY = "172.30.77.1"
DOMAIN = "lab.keelson.test"
APT_CACHE_PORT = 3142

# How the inventory reaches the hosts: like real VMs over SSH, or `docker exec`.
CONNECTIONS = ("ssh", "docker")
LOGIN_USER = "debian"  # as on Debian's cloud images
SSH_DIR = CACHE_DIR / "ssh"
SSH_KEY = SSH_DIR / "id_ed25519"
KNOWN_HOSTS = SSH_DIR / "known_hosts"
PEBBLE_CA = CACHE_DIR / "pebble-listener.pem"

# Debian releases the lab can boot: image tag -> debootstrap suite.
RELEASES = {"12": "bookworm", "13": "trixie"}
ROOTFS_PACKAGES = [
    "python3", "python3-apt", "systemd", "systemd-sysv", "dbus", "sudo",
    "iproute2", "procps", "ca-certificates", "gpg",
]

# The lab hosts: name -> address suffix, inventory groups, extra volumes.
HOSTS = {
    "lb1": {"ip": 11, "groups": ["lb"]},
    "app1": {"ip": 21, "groups": ["app"], "docker_volume": True},
    "app2": {"ip": 22, "groups": ["app"], "docker_volume": True},
    "db1": {"ip": 31, "groups": ["db"]},
    "mon1": {"ip": 51, "groups": ["monitor"]},
}
GROUPS = ["lb", "app", "db", "monitor"]
# `up --extra-app N`: app3 ... app(N+2) at .23 ... (.30 at most: db1 is .31).
MAX_EXTRA_APP = 8


def lab_hosts(extra_app=0):
    """HOSTS plus the extra app hosts asked for."""
    if not 0 <= extra_app <= MAX_EXTRA_APP:
        raise LabError(f"--extra-app must be between 0 and {MAX_EXTRA_APP}")
    hosts = dict(HOSTS)
    for n in range(3, 3 + extra_app):
        hosts[f"app{n}"] = {"ip": 20 + n, "groups": ["app"], "docker_volume": True}
    return hosts


# Service containers (plain processes, not "VMs").
SERVICES = {
    # no data volume: the S3 server starts empty whenever its container is made
    # (new image, flags or credentials) and keeps its data while it lives
    "s3": {"ip": 41, "image": "keelson/lab-s3", "data": None},
    "registry": {"ip": 42, "image": "keelson/lab-registry", "data": "/var/lib/docker-registry"},
    "pebble": {"ip": 43, "image": "keelson/lab-pebble", "data": None},
}
S3_PORT = 7480
REGISTRY_PORT = 5000
PEBBLE_PORT = 14000
S3_BUCKET = "keelson-backups"

# Flags that make a systemd container boot here (see shared/LAB-NOTES.md:
# --privileged is refused by this sandbox).
# The lab's containers weigh four times a molecule instance (Docker's default, 1024)
# for the CPU: `make test` runs the molecule scenarios beside the integration tests,
# and the lab lane, which mostly waits on its hosts, is the longer one.
CPU_SHARES = ["--cpu-shares", "4096"]
SYSTEMD_FLAGS = [
    "--cap-add", "SYS_ADMIN", "--cap-add", "NET_ADMIN",
    # `docker exec` in a nested engine (healthchecks, compose --wait) needs ptrace
    "--cap-add", "SYS_PTRACE",
    "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
    "--tmpfs", "/run", "--tmpfs", "/run/lock",
    "-v", "/sys/fs/cgroup:/sys/fs/cgroup:ro",
    "--stop-signal", "SIGRTMIN+3",
]


class LabError(Exception):
    pass


def log(msg):
    print(f"lab: {msg}", flush=True)


def run(cmd, check=True, capture=False, env=None, input=None):
    res = subprocess.run(cmd, text=True, env=env, input=input,
                         stdout=subprocess.PIPE if capture else None,
                         stderr=subprocess.PIPE if capture else None)
    if check and res.returncode != 0:
        detail = (res.stderr or res.stdout or "").strip() if capture else ""
        raise LabError(f"command failed ({res.returncode}): {' '.join(cmd)}\n{detail}")
    return res


def docker(*args, check=True, capture=True):
    return run(["docker", *args], check=check, capture=capture)


def docker_answers():
    try:
        return docker("info", "--format", "{{.ServerVersion}}", check=False).returncode == 0
    except FileNotFoundError:
        return False


def tcp_open(host, port, timeout=1.0):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for(what, predicate, timeout, interval=0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise LabError(f"timed out after {timeout}s waiting for {what}")


# --- engine -----------------------------------------------------------------

def apt_install(packages):
    missing = [p for p in packages
               if run(["dpkg-query", "-W", "-f=${Status}", p], check=False, capture=True)
               .stdout.strip() != "install ok installed"]
    if not missing:
        return
    log(f"installing {' '.join(missing)} from Debian")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update", "-qq"], env=env)
    run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env)


def ensure_apt_cache():
    """apt-cacher-ng on the controller: the lab images and molecule instances find it
    through their default gateway (see images/debian/rootfs/usr/local/sbin/lab-apt-proxy)."""
    apt_install(["apt-cacher-ng"])
    if tcp_open("127.0.0.1", APT_CACHE_PORT):
        return
    log("starting apt-cacher-ng")
    Path("/run/apt-cacher-ng").mkdir(exist_ok=True)
    shutil.chown("/run/apt-cacher-ng", "apt-cacher-ng", "apt-cacher-ng")
    run(["runuser", "-u", "apt-cacher-ng", "--", "/usr/sbin/apt-cacher-ng",
         "-c", str(ROOT / "lab" / "apt-cacher-ng"), "ForeGround=0",
         "pidfile=/run/apt-cacher-ng/pid", "SocketPath=/run/apt-cacher-ng/socket"])
    wait_for("apt-cacher-ng on port 3142", lambda: tcp_open("127.0.0.1", APT_CACHE_PORT), 30)


def ensure_engine():
    # openssh-client: tests/integration/test_ssh_guard.py
    apt_install(["docker.io", "debootstrap", "iptables", "runc", "containerd", "openssh-client"])
    if not docker_answers():
        if shutil.which("systemctl") and Path("/run/systemd/system").is_dir():
            run(["systemctl", "start", "docker"])
        else:
            log("starting dockerd (no systemd on this machine)")
            logf = open("/var/log/keelson-dockerd.log", "ab")
            subprocess.Popen(["dockerd"], stdout=logf, stderr=logf, start_new_session=True)
        try:
            wait_for("the Docker engine to answer", docker_answers, 90)
        except LabError:
            tail = Path("/var/log/keelson-dockerd.log")
            detail = tail.read_text(errors="replace")[-2000:] if tail.exists() else ""
            raise LabError("the Docker engine did not start; dockerd log tail:\n" + detail)
    ensure_apt_cache()
    log(f"docker engine {docker('info', '--format', '{{.ServerVersion}}').stdout.strip()} answers")


# --- images -----------------------------------------------------------------

def tree_hash(*paths):
    h = hashlib.sha256()
    for base in paths:
        for p in sorted(Path(base).rglob("*")):
            if p.is_file():
                h.update(str(p.relative_to(base)).encode())
                h.update(p.read_bytes())
    return h.hexdigest()[:12]


def image_exists(ref):
    return docker("image", "inspect", ref, check=False).returncode == 0


def debian_mirror():
    for src in [Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")]:
        if src.exists():
            for line in src.read_text().splitlines():
                line = line.strip()
                if line.startswith("URIs:") and "security" not in line:
                    return line.split()[1]
                if line.startswith("deb ") and "security" not in line:
                    return next(w for w in line.split()[1:] if w.startswith("http"))
    return "http://deb.debian.org/debian"


def build_rootfs_image(release):
    """debootstrap once per release and package list; the result is imported as a
    docker image whose tag carries the recipe hash, so a rebuild happens only when
    the recipe changes."""
    suite = RELEASES[release]
    recipe = hashlib.sha256(f"{suite} {' '.join(ROOTFS_PACKAGES)}".encode()).hexdigest()[:12]
    ref = f"keelson/debian-rootfs:{release}-{recipe}"
    if image_exists(ref):
        return ref
    rootfs = CACHE_DIR / f"rootfs-{suite}"
    if rootfs.exists():
        shutil.rmtree(rootfs)
    rootfs.parent.mkdir(parents=True, exist_ok=True)
    log(f"debootstrap {suite} (once; cached as {ref})")
    t0 = time.monotonic()
    env = dict(os.environ, http_proxy=f"http://127.0.0.1:{APT_CACHE_PORT}")
    run(["debootstrap", "--variant=minbase", f"--include={','.join(ROOTFS_PACKAGES)}",
         suite, str(rootfs), debian_mirror()], env=env, capture=True)
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    imp = subprocess.run(["docker", "import", "-c", 'CMD ["/lib/systemd/systemd"]', "-", ref],
                         stdin=tar.stdout, capture_output=True, text=True)
    tar.stdout.close()
    if tar.wait() != 0 or imp.returncode != 0:
        raise LabError(f"docker import of {suite} failed: {imp.stderr.strip()}")
    shutil.rmtree(rootfs)
    log(f"rootfs {suite} built in {time.monotonic() - t0:.0f}s")
    return ref


def docker_build(tag, context, build_args):
    args = ["build", "-q", "-t", tag]
    for k, v in build_args.items():
        args += ["--build-arg", f"{k}={v}"]
    env = dict(os.environ, DOCKER_BUILDKIT="0")
    res = run(["docker", *args, str(context)], env=env, capture=True, check=False)
    if res.returncode != 0:
        raise LabError(f"building {tag} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")


def ensure_images(releases=("12", "13"), services=True):
    """The host images (keelson/debian:12, :13) add the lab-only drop-ins to the
    rootfs; Docker's build cache makes a second run a no-op."""
    t0 = time.monotonic()
    for release in releases:
        base = build_rootfs_image(release)
        docker_build(f"keelson/debian:{release}", IMAGES_DIR / "debian",
                     {"BASE": base, "SUITE": RELEASES[release]})
    if services:
        for name, svc in SERVICES.items():
            docker_build(f"{svc['image']}:latest", IMAGES_DIR / name, {"BASE": "keelson/debian:13"})
    log(f"images ready in {time.monotonic() - t0:.0f}s")


# --- up / down / status -----------------------------------------------------

def address(suffix):
    return SUBNET.rsplit(".", 1)[0] + f".{suffix}"


def lab_containers():
    out = docker("ps", "-a", "--filter", f"label={LABEL}", "--format", "{{.Names}}").stdout
    return [n for n in out.split() if n]


def spec_label(image, args):
    """A hash of what the container is made from: the image as built now and the
    run arguments. A change of either makes `up` recreate the container."""
    image_id = docker("image", "inspect", "-f", "{{.Id}}", image).stdout.strip()
    digest = hashlib.sha256(json.dumps([image_id, args]).encode()).hexdigest()[:16]
    return f"{LABEL}.spec={digest}"


def container_current(name, spec):
    res = docker("inspect", "-f", '{{.State.Running}} {{index .Config.Labels "keelson.lab.spec"}}',
                 name, check=False)
    if res.returncode != 0:
        return False
    running, _, have = res.stdout.strip().partition(" ")
    return running == "true" and f"{LABEL}.spec={have}" == spec


def replace_container(cname, image, args, env=None, secret_env=()):
    # the secrets passed by name count too (hashed), so new credentials recreate it
    seal = hashlib.sha256("\0".join(env[k] for k in secret_env).encode()).hexdigest() if secret_env else ""
    spec = spec_label(image, args + [seal])
    if container_current(cname, spec):
        return
    docker("rm", "-f", cname, check=False)
    run(["docker", "run", "-d", "--name", cname, "--label", LABEL, "--label", spec, *args, image],
        env=env, capture=True)


def ensure_network():
    if docker("network", "inspect", NETWORK, check=False).returncode == 0:
        return
    docker("network", "create", "--label", LABEL, "--subnet", SUBNET, "--gateway", GATEWAY, NETWORK)


def start_host(name, spec, release):
    args = ["--hostname", name, "--network", NETWORK, "--ip", address(spec["ip"]),
            "--network-alias", name, "--network-alias", f"{name}.{DOMAIN}", *CPU_SHARES, *SYSTEMD_FLAGS]
    if spec.get("docker_volume"):
        vol = f"keelson-lab-{name}-docker"
        docker("volume", "create", "--label", LABEL, vol)
        args += ["-v", f"{vol}:/var/lib/docker"]
    replace_container(f"keelson-lab-{name}", f"keelson/debian:{release}", args)


def start_service(name, svc, creds):
    args = ["--hostname", name, "--network", NETWORK, "--ip", address(svc["ip"]),
            "--network-alias", name, "--network-alias", f"{name}.{DOMAIN}", *CPU_SHARES]
    if svc["data"]:
        vol = f"keelson-lab-{name}-data"
        docker("volume", "create", "--label", LABEL, vol)
        args += ["-v", f"{vol}:{svc['data']}"]
    env = None
    if name == "s3":
        # passed by name so the secrets stay out of the process list
        args += ["-e", "S3_ACCESS_KEY", "-e", "S3_SECRET_KEY", "-e", f"S3_BUCKET={S3_BUCKET}"]
        env = dict(os.environ, S3_ACCESS_KEY=creds["s3_access_key"], S3_SECRET_KEY=creds["s3_secret_key"])
    replace_container(f"keelson-lab-{name}", f"{svc['image']}:latest", args, env=env,
                      secret_env=("S3_ACCESS_KEY", "S3_SECRET_KEY") if env else ())


def wait_systemd(name, timeout=90):
    cname = f"keelson-lab-{name}"

    def booted():
        res = docker("exec", cname, "systemctl", "is-system-running", check=False)
        return res.stdout.strip() in ("running", "degraded")

    wait_for(f"systemd in {name} to finish booting", booted, timeout)
    state = docker("exec", cname, "systemctl", "is-system-running", check=False).stdout.strip()
    if state != "running":
        failed = docker("exec", cname, "systemctl", "--failed", "--no-legend", check=False).stdout
        raise LabError(f"{name} booted {state}; failed units:\n{failed}")


def ensure_ssh_key():
    """The lab's key pair, made once (0600) and kept until `lab.py down`."""
    SSH_DIR.mkdir(parents=True, exist_ok=True)
    SSH_DIR.chmod(0o700)
    if not SSH_KEY.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "keelson-lab", "-f", str(SSH_KEY)],
            capture=True)
    SSH_KEY.chmod(0o600)
    return SSH_KEY.with_suffix(".pub").read_text()


# What a cloud image and its first boot give a VM: sshd with host keys of its own
# (made when openssh-server is installed in this container, not shared through the
# image), and a login user with passwordless sudo and the operator's key. The apt
# lists are emptied again so the first converge sees the image's stale state.
PROVISION = r"""set -eu
if [ ! -x /usr/sbin/sshd ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends openssh-server >/dev/null
  apt-get clean; rm -rf /var/lib/apt/lists/*; touch -d @0 /var/lib/apt/lists
fi
id -u {user} >/dev/null 2>&1 || useradd --create-home --shell /bin/bash --groups sudo {user}
umask 227; echo '{user} ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/90-lab-login-user; umask 022
install -d -m 0700 -o {user} -g {user} /home/{user}/.ssh
install -m 0600 -o {user} -g {user} /dev/stdin /home/{user}/.ssh/authorized_keys
systemctl enable --now --quiet ssh
cat /etc/ssh/ssh_host_ed25519_key.pub
"""


def provision_host(name, spec, pubkey):
    """Waits for systemd, then makes the host reachable over SSH; returns its
    known_hosts line."""
    wait_systemd(name)
    res = run(["docker", "exec", "-i", f"keelson-lab-{name}", "sh", "-c", PROVISION.format(user=LOGIN_USER)],
              input=pubkey, capture=True)
    hostkey = res.stdout.strip().splitlines()[-1].split()
    return f"{address(spec['ip'])} {hostkey[0]} {hostkey[1]}"


def ensure_hosts_reachable(hosts):
    pubkey = ensure_ssh_key()
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(hosts)) as pool:
        lines = list(pool.map(lambda item: provision_host(item[0], item[1], pubkey), hosts.items()))
    KNOWN_HOSTS.write_text("\n".join(lines) + "\n")
    for name, spec in hosts.items():
        wait_for(f"sshd on {name}", lambda: tcp_open(address(spec["ip"]), 22), 30)


def remove_extra_hosts(hosts):
    """App hosts of an earlier `up --extra-app` that this one does not ask for."""
    for cname in lab_containers():
        m = re.fullmatch(r"keelson-lab-(app\d+)", cname)
        if m and m.group(1) not in hosts:
            log(f"removing {m.group(1)} (not asked for by --extra-app)")
            docker("rm", "-f", "-v", cname)
            docker("volume", "rm", f"{cname}-docker", check=False)


LAB_SECRETS = {
    # name in lab_generated.yml -> generator
    "s3_access_key": lambda: "LAB" + secrets.token_hex(8).upper(),
    "s3_secret_key": lambda: secrets.token_urlsafe(30),
    # these go into connection URLs: hex needs no quoting
    "demo_db_password": lambda: secrets.token_hex(16),
    "demo_redis_password": lambda: secrets.token_hex(16),
    "demo_amqp_password": lambda: secrets.token_hex(16),
    "redis_admin_password": lambda: secrets.token_urlsafe(24),
    "erlang_cookie": lambda: secrets.token_hex(20).upper(),
    "basic_auth_password": lambda: secrets.token_urlsafe(18),
    "postgresql_exporter_password": lambda: secrets.token_urlsafe(24),
    "redis_exporter_password": lambda: secrets.token_urlsafe(24),
}


def load_credentials():
    """Lab secrets, generated once per lab and kept (0600) until `lab.py down`."""
    path = INVENTORY_DIR / ".credentials.json"
    creds = json.loads(path.read_text()) if path.exists() else {}
    missing = {k: gen() for k, gen in LAB_SECRETS.items() if k not in creds}
    if missing:
        creds.update(missing)
        INVENTORY_DIR.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(creds, f)
    return creds


def write_inventory(release, creds, hosts, connection):
    """inventories/lab/hosts.yml (addresses, groups, how to reach the hosts) and a
    generated group_vars file with the service endpoints and credentials (mode 0600)."""
    INVENTORY_DIR.mkdir(parents=True, exist_ok=True)
    lines = ["# Written by lab/lab.py up; do not edit (rerun `lab.py up`).", "all:", "  children:"]
    for group in GROUPS:
        lines += [f"    {group}:", "      hosts:"]
        for name, spec in hosts.items():
            if group in spec["groups"]:
                target = address(spec["ip"]) if connection == "ssh" else f"keelson-lab-{name}"
                lines += [f"        {name}:",
                          f"          ansible_host: {target}",
                          f"          keelson_private_address: {address(spec['ip'])}",
                          f"          keelson_lab_container: keelson-lab-{name}",
                          f"          keelson_lab_debian: \"{release}\""]
    lines += ["  vars:"]
    if connection == "ssh":
        # as inventories/staging reaches real VMs: a login user and sudo
        lines += [f"    ansible_user: {LOGIN_USER}",
                  "    ansible_become: true",
                  f"    ansible_ssh_private_key_file: {SSH_KEY}",
                  f"    ansible_ssh_common_args: -o UserKnownHostsFile={KNOWN_HOSTS} -o StrictHostKeyChecking=yes"]
    else:
        lines += ["    ansible_connection: community.docker.docker"]
    lines += ["    ansible_python_interpreter: /usr/bin/python3"]
    (INVENTORY_DIR / "hosts.yml").write_text("\n".join(lines) + "\n")

    gen = INVENTORY_DIR / "group_vars" / "all" / "lab_generated.yml"
    gen.parent.mkdir(parents=True, exist_ok=True)
    body = "\n".join([
        "# Written by lab/lab.py up; do not edit. Lab-only credentials.",
        f"keelson_lab_network: {SUBNET}",
        f"keelson_lab_controller_address: {GATEWAY}",
        f"keelson_s3_endpoint_url: http://{address(SERVICES['s3']['ip'])}:{S3_PORT}",
        f"keelson_s3_bucket: {S3_BUCKET}",
        *[f"keelson_{k}: {v}" for k, v in sorted(creds.items())],
        f"keelson_registry: {address(SERVICES['registry']['ip'])}:{REGISTRY_PORT}",
        f"keelson_acme_directory_url: https://{address(SERVICES['pebble']['ip'])}:{PEBBLE_PORT}/dir",
        f"keelson_acme_directory_cafile: {PEBBLE_CA}",
        "",
    ])
    fd = os.open(gen, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(body)


def cmd_images(args):
    ensure_engine()
    ensure_images(services=not args.no_services)


def cmd_up(args):
    t0 = time.monotonic()
    hosts = lab_hosts(args.extra_app)
    ensure_engine()
    ensure_images(releases=sorted({args.debian, "13"}))
    ensure_network()
    creds = load_credentials()
    for name, svc in SERVICES.items():
        start_service(name, svc, creds)
    remove_extra_hosts(hosts)
    for name, spec in hosts.items():
        start_host(name, spec, args.debian)
    ensure_hosts_reachable(hosts)
    wait_for("the S3 server (bucket created)",
             lambda: docker("exec", "keelson-lab-s3", "test", "-e", "/run/lab-s3-ready",
                            check=False).returncode == 0, 120)
    wait_for("the registry", lambda: tcp_open(address(SERVICES["registry"]["ip"]), REGISTRY_PORT), 30)
    # the demo application's images (and the test-only backing images) in the lab registry
    run([sys.executable, str(ROOT / "lab" / "demo" / "build.py"),
         "--registry", f"{address(SERVICES['registry']['ip'])}:{REGISTRY_PORT}"])
    wait_for("pebble", lambda: tcp_open(address(SERVICES["pebble"]["ip"]), PEBBLE_PORT), 30)
    pebble_ca = docker("exec", "keelson-lab-pebble", "cat", "/etc/pebble/tls/cert.pem").stdout
    PEBBLE_CA.write_text(pebble_ca)
    (INVENTORY_DIR / "pebble-listener.pem").unlink(missing_ok=True)  # where labs before the SSH one kept it
    write_inventory(args.debian, creds, hosts, args.connection)
    log(f"up in {time.monotonic() - t0:.0f}s; inventory: {INVENTORY_DIR / 'hosts.yml'}")
    cmd_status(args)


def cmd_down(_args):
    if not docker_answers():
        log("no Docker engine answers: nothing to remove")
        return
    names = lab_containers()
    if names:
        docker("rm", "-f", "-v", *names)
    vols = docker("volume", "ls", "-q", "--filter", f"label={LABEL}").stdout.split()
    if vols:
        docker("volume", "rm", *vols)
    nets = docker("network", "ls", "-q", "--filter", f"label={LABEL}").stdout.split()
    for net in nets:
        # molecule instances join the lab's network; a killed run can leave some behind
        # (molecule's next run destroys them): they must not keep the network alive
        attached = docker("network", "inspect", "-f", "{{range .Containers}}{{.Name}} {{end}}", net).stdout.split()
        for cname in attached:
            log(f"disconnecting {cname} from the lab network")
            docker("network", "disconnect", "-f", net, cname, check=False)
    if nets:
        docker("network", "rm", *nets)
    for f in [INVENTORY_DIR / "hosts.yml", INVENTORY_DIR / "group_vars" / "all" / "lab_generated.yml",
              INVENTORY_DIR / ".credentials.json", INVENTORY_DIR / "pebble-listener.pem", PEBBLE_CA]:
        f.unlink(missing_ok=True)
    shutil.rmtree(SSH_DIR, ignore_errors=True)
    left = (lab_containers()
            + docker("volume", "ls", "-q", "--filter", f"label={LABEL}").stdout.split()
            + docker("network", "ls", "-q", "--filter", f"label={LABEL}").stdout.split())
    if left:
        raise LabError(f"still present after down: {' '.join(left)}")
    log(f"removed {len(names)} containers, {len(vols)} volumes, {len(nets)} networks; none left")


def cmd_status(_args):
    if not docker_answers():
        print("engine: not running")
        return 1
    out = docker("ps", "-a", "--filter", f"label={LABEL}",
                 "--format", "{{.Names}}\t{{.Status}}\t{{.Image}}").stdout
    print(out.strip() or "no lab containers")
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(prog="lab", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("engine").set_defaults(fn=lambda a: ensure_engine())
    img = sub.add_parser("images")
    img.add_argument("--no-services", action="store_true")
    img.set_defaults(fn=cmd_images)
    up = sub.add_parser("up")
    up.add_argument("--debian", choices=sorted(RELEASES), default="13")
    up.add_argument("--extra-app", type=int, default=0, metavar="N",
                    help=f"N more app hosts, app3 ... (0 to {MAX_EXTRA_APP}; default 0)")
    up.add_argument("--connection", choices=CONNECTIONS,
                    default=os.environ.get("KEELSON_LAB_CONNECTION", "ssh"),
                    help="how the inventory reaches the hosts (default: $KEELSON_LAB_CONNECTION or ssh)")
    up.set_defaults(fn=cmd_up)
    sub.add_parser("down").set_defaults(fn=cmd_down)
    sub.add_parser("status").set_defaults(fn=cmd_status)
    args = p.parse_args(argv)
    if getattr(args, "connection", "ssh") not in CONNECTIONS:
        p.error(f"KEELSON_LAB_CONNECTION must be one of {', '.join(CONNECTIONS)}, not {args.connection!r}")
    if os.geteuid() != 0 and args.cmd in ("engine", "images", "up"):
        print("lab: must run as root (installs packages, starts dockerd)", file=sys.stderr)
        return 2
    try:
        return args.fn(args) or 0
    except LabError as e:
        print(f"lab: ERROR: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
