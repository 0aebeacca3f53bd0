#!/usr/bin/python3
"""keelson demo application: a small HTTP API plus a worker, for the lab.

    demo.py serve        HTTP API on DEMO_PORT (default 8000)
    demo.py worker       consumes item events from RabbitMQ, records them in PostgreSQL
    demo.py scheduler    a periodic job (Celery beat, cron) that must run once per environment:
                         a row in scheduler_ticks every DEMO_SCHEDULER_INTERVAL s (default 5),
                         naming DEMO_NODE (the app host) and the version
    demo.py migrate      creates the tables (idempotent); the stack's migration job
    demo.py healthcheck  the Docker healthcheck: exit 0 when the API answers
    demo.py healthcheck worker   exit 0 when the worker loop ran in the last 30 s
    demo.py healthcheck scheduler   exit 0 when the scheduler ticked in the last 30 s

API: GET /health (liveness), GET /ready (PostgreSQL, Redis, RabbitMQ reachable),
GET /version, POST /items {"name": ...}, GET /items/<id>, GET /events/<id>
(has the worker processed the item's event), GET /stats, GET /slow?ms=N.
As the lab's frontend (`web`), GET /web/ calls the API by its Compose name
(DEMO_API_URL, http://api:8000 by default) and answers both versions.

Dependencies are optional: only the ones configured (DEMO_DATABASE_URL,
DEMO_REDIS_URL, DEMO_AMQP_URL, or DATABASE_URL, REDIS_URL, AMQP_URL) are used and
checked by /ready. With DEMO_PATH_PREFIX=/api, /api/health is /health, and so on.

DEMO_FAIL_MODE makes a deliberately broken release for rollout tests:
    unhealthy  /health answers 500, so the Docker healthcheck fails too
    exit       the process exits DEMO_EXIT_AFTER seconds (default 5) after start
    probe      /health answers 500 but the Docker healthcheck (which then probes
               /livez) passes: healthy for Docker, failing through nginx
    worker     the API serves normally; the worker exits 1 s after it starts
               (a release whose only broken part is its worker)
    migrate    the migration fails (exit 1) before it changes anything
    slowmigrate  the migration takes DEMO_MIGRATE_SECONDS (default 45) before it applies
               (a window to kill the controller in)
Any version's /health answers 500 once the file /tmp/demo-fail exists in its
container (`docker exec ... touch /tmp/demo-fail`): a release that goes bad late.
"""
import json
import os
import select
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

VERSION = os.environ.get("DEMO_VERSION", "0.0.0")
FAIL_MODE = os.environ.get("DEMO_FAIL_MODE", "")
PORT = int(os.environ.get("DEMO_PORT", "8000"))
# DEMO_* first; the usual names (DATABASE_URL ...) when the demo stands in for another
# application's images (lab/demo/jobsearch)
DATABASE_URL = os.environ.get("DEMO_DATABASE_URL") or os.environ.get("DATABASE_URL", "")
REDIS_URL = os.environ.get("DEMO_REDIS_URL") or os.environ.get("REDIS_URL", "")
AMQP_URL = os.environ.get("DEMO_AMQP_URL") or os.environ.get("AMQP_URL", "")
# served under this prefix as well as at the root (an API behind the edge's /api/)
PATH_PREFIX = os.environ.get("DEMO_PATH_PREFIX", "").rstrip("/")
QUEUE = os.environ.get("DEMO_QUEUE", "demo.items")
API_URL = os.environ.get("DEMO_API_URL", "http://api:8000")
HOSTNAME = socket.gethostname()
CONNECT_TIMEOUT = 3

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS processed_events (
    item_id BIGINT PRIMARY KEY REFERENCES items (id),
    worker TEXT NOT NULL,
    processed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS scheduler_ticks (
    id BIGSERIAL PRIMARY KEY,
    node TEXT NOT NULL,
    version TEXT NOT NULL,
    ticked_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS migration_runs (
    id BIGSERIAL PRIMARY KEY,
    version TEXT NOT NULL,
    host TEXT NOT NULL,
    ran_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
"""


def log(msg):
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} demo[{HOSTNAME}] {msg}", flush=True)


# --- backends ----------------------------------------------------------------

class Backends:
    """Lazily connected clients; nothing is contacted at start, so the API is up in
    well under a second whatever the state of its dependencies."""

    def __init__(self):
        self._lock = threading.Lock()
        self._pg_pool = None
        self._redis = None
        self._amqp = None

    def pg(self):
        import psycopg2.pool
        with self._lock:
            if self._pg_pool is None:
                self._pg_pool = psycopg2.pool.ThreadedConnectionPool(
                    1, 16, DATABASE_URL, connect_timeout=CONNECT_TIMEOUT)
            return self._pg_pool

    def query(self, sql, args=(), fetch=True):
        """Runs one statement in its own transaction. A pooled connection that PostgreSQL
        closed (a restart) fails before the statement reaches the server: that attempt is
        retried once on a fresh connection, as an application's pool pre-ping would."""
        import psycopg2
        pool = self.pg()
        for attempt in (1, 2):
            conn = pool.getconn()
            broken = False
            try:
                with conn, conn.cursor() as cur:
                    cur.execute(sql, args)
                    return cur.fetchall() if fetch else None
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                broken = True
                if attempt == 2 or not conn.closed:
                    raise
            except Exception:
                broken = True
                raise
            finally:
                pool.putconn(conn, close=broken)

    def redis(self):
        import redis
        with self._lock:
            if self._redis is None:
                self._redis = redis.Redis.from_url(
                    REDIS_URL, socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=CONNECT_TIMEOUT)
            return self._redis

    def publish(self, body):
        """One publisher connection shared under a lock (pika is not thread-safe);
        reconnects once if the broker dropped it."""
        import pika
        with self._lock:
            for attempt in (1, 2):
                try:
                    if self._amqp is None or self._amqp.is_closed:
                        self._amqp = amqp_connect()
                        ch = self._amqp.channel()
                        ch.queue_declare(queue=QUEUE, durable=True)
                        ch.confirm_delivery()
                        self._amqp_channel = ch
                    self._amqp_channel.basic_publish(
                        exchange="", routing_key=QUEUE, body=body,
                        properties=pika.BasicProperties(delivery_mode=2))
                    return
                except Exception:
                    self._amqp = None
                    if attempt == 2:
                        raise


def amqp_connect():
    import pika
    params = pika.URLParameters(AMQP_URL)
    params.socket_timeout = CONNECT_TIMEOUT
    params.blocked_connection_timeout = CONNECT_TIMEOUT
    params.connection_attempts = 1
    return pika.BlockingConnection(params)


BACKENDS = Backends()


def readiness():
    """Every configured dependency answers: {name: "ok" | error text}."""
    checks = {}
    if DATABASE_URL:
        checks["postgresql"] = probe(lambda: BACKENDS.query("SELECT 1"))
    if REDIS_URL:
        checks["redis"] = probe(lambda: BACKENDS.redis().ping())
    if AMQP_URL:
        checks["rabbitmq"] = probe(lambda: amqp_connect().close())
    return checks


def probe(fn):
    try:
        fn()
        return "ok"
    except Exception as exc:  # the message is the readiness answer
        return f"{type(exc).__name__}: {exc}".strip()


# --- HTTP API ----------------------------------------------------------------

class Server(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True  # server_close() waits for in-flight requests

    def __init__(self, addr):
        super().__init__(addr, Handler)
        self.stopping = False
        self.idle = set()  # keep-alive connections waiting for their next request
        self.idle_lock = threading.Lock()

    def close_idle(self):
        with self.idle_lock:
            for sock in list(self.idle):
                if select.select([sock], [], [], 0)[0]:
                    continue  # its next request has arrived: it is served, then closed
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as nginx upstream keepalive uses
    server_version = f"keelson-demo/{VERSION}"
    timeout = 75  # idle keep-alive connections are closed after this
    # headers and body go out in separate writes: without TCP_NODELAY, Nagle plus the
    # peer's delayed ACK add about 40 ms to every response
    disable_nagle_algorithm = True

    def handle_one_request(self):
        # idle: a kept-alive connection waiting for its next request (a new one's first
        # request is on its way, and closing it would drop that request)
        idle = getattr(self, "served", False)
        if idle:
            with self.server.idle_lock:
                self.server.idle.add(self.connection)
        try:
            self.raw_requestline = self.rfile.readline(65537)
        except OSError:
            self.close_connection = True
            return
        finally:
            if idle:
                with self.server.idle_lock:
                    self.server.idle.discard(self.connection)
        if not self.raw_requestline or not self.parse_request():
            self.close_connection = True
            return
        method = getattr(self, "do_" + self.command, None)
        if method is None:
            self.send_error(501)
            return
        method()
        self.wfile.flush()
        self.served = True
        if self.server.stopping:
            self.close_connection = True

    def log_message(self, fmt, *args):
        if os.environ.get("DEMO_ACCESS_LOG", "1") == "1":
            log(f"{self.address_string()} {fmt % args}")

    def reply(self, status, body):
        data = (json.dumps(body) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Demo-Version", VERSION)
        self.send_header("X-Demo-Host", HOSTNAME)
        if self.server.stopping:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def route(self):
        url = urlparse(self.path)
        if PATH_PREFIX and url.path.startswith(PATH_PREFIX + "/"):
            url = url._replace(path=url.path[len(PATH_PREFIX):])
        return url

    def do_GET(self):
        url = self.route()
        parts = [p for p in url.path.split("/") if p]
        try:
            if url.path == "/health":
                if FAIL_MODE in ("unhealthy", "probe") or os.path.exists("/tmp/demo-fail"):
                    self.reply(500, {"status": "failing", "mode": FAIL_MODE})
                else:
                    self.reply(200, {"status": "ok"})
            elif url.path == "/livez":
                self.reply(200, {"status": "ok"})
            elif url.path == "/ready":
                checks = readiness()
                ok = all(v == "ok" for v in checks.values()) and not self.server.stopping
                self.reply(200 if ok else 503, {"ready": ok, "checks": checks})
            elif url.path == "/version":
                self.reply(200, {"version": VERSION, "host": HOSTNAME, "mode": FAIL_MODE or "normal"})
            elif url.path == "/slow":
                ms = min(int(parse_qs(url.query).get("ms", ["500"])[0]), 30000)
                time.sleep(ms / 1000)
                self.reply(200, {"slept_ms": ms, "version": VERSION})
            elif len(parts) == 2 and parts[0] == "items" and parts[1].isdigit():
                self.get_item(int(parts[1]))
            elif len(parts) == 2 and parts[0] == "events" and parts[1].isdigit():
                rows = BACKENDS.query(
                    "SELECT worker, processed_at::text FROM processed_events WHERE item_id = %s",
                    (int(parts[1]),))
                if rows:
                    self.reply(200, {"item_id": int(parts[1]), "worker": rows[0][0], "processed_at": rows[0][1]})
                else:
                    self.reply(404, {"error": "not processed yet"})
            elif url.path == "/stats":
                self.stats()
            elif url.path in ("/web", "/web/"):
                self.reply(200, {"web": VERSION, "host": HOSTNAME, "api": api_version()})
            else:
                self.reply(404, {"error": "not found"})
        except Exception as exc:
            self.reply(500, {"error": f"{type(exc).__name__}: {exc}"})

    do_HEAD = do_GET

    def get_item(self, item_id):
        key = f"demo:item:{item_id}"
        if REDIS_URL:
            cached = BACKENDS.redis().get(key)
            if cached:
                self.reply(200, dict(json.loads(cached), cache="hit"))
                return
        rows = BACKENDS.query(
            "SELECT id, name, created_by, created_at::text FROM items WHERE id = %s", (item_id,))
        if not rows:
            self.reply(404, {"error": "no such item"})
            return
        item = dict(zip(("id", "name", "created_by", "created_at"), rows[0]))
        if REDIS_URL:
            BACKENDS.redis().set(key, json.dumps(item), ex=300)
        self.reply(200, dict(item, cache="miss"))

    def stats(self):
        body = {"version": VERSION, "host": HOSTNAME}
        if DATABASE_URL:
            body["items"] = BACKENDS.query("SELECT count(*) FROM items")[0][0]
            body["processed_events"] = BACKENDS.query("SELECT count(*) FROM processed_events")[0][0]
        if REDIS_URL:
            body["writes"] = int(BACKENDS.redis().get("demo:writes") or 0)
        self.reply(200, body)

    def do_POST(self):
        url = self.route()
        try:
            length = int(self.headers.get("Content-Length") or 0)
            payload = json.loads(self.rfile.read(length) or b"{}")
            if url.path != "/items":
                self.reply(404, {"error": "not found"})
                return
            name = str(payload.get("name") or "")
            if not name:
                self.reply(400, {"error": "name is required"})
                return
            item_id = BACKENDS.query(
                "INSERT INTO items (name, created_by) VALUES (%s, %s) RETURNING id",
                (name, HOSTNAME))[0][0]
            if REDIS_URL:
                BACKENDS.redis().incr("demo:writes")
            if AMQP_URL:
                BACKENDS.publish(json.dumps({"item_id": item_id, "by": HOSTNAME}).encode())
            self.reply(201, {"id": item_id, "name": name, "version": VERSION})
        except (ValueError, json.JSONDecodeError) as exc:
            self.reply(400, {"error": str(exc)})
        except Exception as exc:
            self.reply(500, {"error": f"{type(exc).__name__}: {exc}"})


def api_version():
    """GET /version of the API by its Compose name. A rollout drains a replica from
    nginx, not from the name (east-west traffic), so a replica that is stopping can
    reset a connection it had just accepted: like an HTTP client with retries, try
    an idempotent call once more (the name's other address answers)."""
    for attempt in (1, 2):
        try:
            with urllib.request.urlopen(API_URL + "/version", timeout=CONNECT_TIMEOUT) as resp:
                return json.loads(resp.read())
        except (ConnectionError, urllib.error.URLError) as exc:  # http.client.RemoteDisconnected is one
            if attempt == 2 or not isinstance(getattr(exc, "reason", exc), ConnectionError):
                raise


def serve():
    server = Server(("0.0.0.0", PORT))

    def stop(signum, _frame):
        log(f"signal {signum}: finishing in-flight requests")
        server.stopping = True
        # shutdown() blocks until serve_forever returns: call it off the main thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if FAIL_MODE == "exit":
        delay = float(os.environ.get("DEMO_EXIT_AFTER", "5"))
        threading.Timer(delay, lambda: os._exit(3)).start()
        log(f"fail mode 'exit': exiting in {delay}s")
    log(f"version {VERSION} listening on :{PORT} (mode {FAIL_MODE or 'normal'})")
    server.serve_forever(poll_interval=0.2)
    # Other services reach this one by its Compose name, which lists it until it has
    # exited: connections already queued are served, then the listener closes, so the
    # next ones are refused and a client goes on to the name's next address.
    while select.select([server.socket], [], [], 0)[0]:
        server._handle_request_noblock()
    server.close_idle()
    server.server_close()  # joins the request threads: in-flight requests complete
    log("stopped")


# --- worker, migrate, healthcheck ---------------------------------------------

HEARTBEAT = Path("/tmp/demo-worker.heartbeat")
SCHEDULER_HEARTBEAT = Path("/tmp/demo-scheduler.heartbeat")


def worker():
    import pika
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    log(f"worker {VERSION} consuming {QUEUE}")
    if FAIL_MODE == "worker":
        threading.Timer(1, lambda: os._exit(3)).start()
        log("fail mode 'worker': exiting in 1s")
    while not stop.is_set():
        try:
            conn = amqp_connect()
            ch = conn.channel()
            ch.queue_declare(queue=QUEUE, durable=True)
            ch.basic_qos(prefetch_count=10)
            for method, _props, body in ch.consume(QUEUE, inactivity_timeout=0.5):
                HEARTBEAT.touch()
                if stop.is_set():
                    break
                if method is None:
                    continue
                event = json.loads(body)
                BACKENDS.query(
                    "INSERT INTO processed_events (item_id, worker) VALUES (%s, %s) "
                    "ON CONFLICT (item_id) DO NOTHING", (event["item_id"], HOSTNAME), fetch=False)
                ch.basic_ack(method.delivery_tag)
            ch.cancel()
            conn.close()
        except (pika.exceptions.AMQPError, OSError) as exc:
            log(f"worker: {type(exc).__name__}: {exc}; retrying")
            stop.wait(1)
    log("worker stopped")


def scheduler():
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    node = os.environ.get("DEMO_NODE", HOSTNAME)
    interval = float(os.environ.get("DEMO_SCHEDULER_INTERVAL", "5"))
    log(f"scheduler {VERSION} on {node}, every {interval:g} s")
    while not stop.is_set():
        try:
            BACKENDS.query("INSERT INTO scheduler_ticks (node, version) VALUES (%s, %s)", (node, VERSION),
                           fetch=False)
            SCHEDULER_HEARTBEAT.touch()
        except Exception as exc:  # the database restarting is no reason to stop scheduling
            log(f"scheduler: {type(exc).__name__}: {exc}; retrying")
        stop.wait(interval)
    log("scheduler stopped")


def migrate():
    """Applies the schema and counts the run in migration_runs (the tests check that a
    deploy runs it exactly once)."""
    if FAIL_MODE == "migrate":
        print(f"migration {VERSION} failed: column items.owner_id cannot be added: relation \"owners\" does not exist",
              file=sys.stderr, flush=True)
        return 1
    if FAIL_MODE == "slowmigrate":
        log("fail mode 'slowmigrate': applying in %s s" % os.environ.get("DEMO_MIGRATE_SECONDS", "45"))
        time.sleep(float(os.environ.get("DEMO_MIGRATE_SECONDS", "45")))
    deadline = time.monotonic() + float(os.environ.get("DEMO_MIGRATE_WAIT", "60"))
    while True:
        try:
            BACKENDS.query(SCHEMA, fetch=False)
            BACKENDS.query("INSERT INTO migration_runs (version, host) VALUES (%s, %s)", (VERSION, HOSTNAME),
                           fetch=False)
            log("migrations applied")
            return 0
        except Exception as exc:
            if time.monotonic() > deadline:
                raise
            log(f"database not ready ({type(exc).__name__}); retrying")
            time.sleep(1)


def healthcheck(what="api"):
    if what in ("worker", "scheduler"):
        beat = HEARTBEAT if what == "worker" else SCHEDULER_HEARTBEAT
        try:
            age = time.time() - beat.stat().st_mtime
        except OSError:
            print(f"{what}: no heartbeat yet")
            return 1
        print(f"{what}: heartbeat {age:.0f}s ago")
        return 0 if age < 30 else 1
    path = "/livez" if FAIL_MODE == "probe" else "/health"
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{PORT}{path}", timeout=3) as resp:
            return 0 if resp.status == 200 else 1
    except Exception as exc:
        print(f"healthcheck {path}: {exc}")
        return 1


def main(argv):
    cmd = argv[1] if len(argv) > 1 else "serve"
    if cmd == "serve":
        serve()
    elif cmd == "worker":
        worker()
    elif cmd == "scheduler":
        scheduler()
    elif cmd == "migrate":
        return migrate()
    elif cmd == "healthcheck":
        return healthcheck(argv[2] if len(argv) > 2 else "api")
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
