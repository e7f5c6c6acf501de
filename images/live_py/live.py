#!/usr/bin/env python3
"""live_py: shows the platform's ingest activity live.

A small HTML page (/) with a live chart of rows per minute per table, a Server-Sent Events stream (/events) of
per-table insert activity read from PostgreSQL every LIVE_POLL_SECONDS, the latest snapshot as JSON
(/api/tables), the rows per minute of the last LIVE_CHART_MINUTES (/api/activity), and /healthz (200 when
PostgreSQL answers, else 503). SIGTERM/SIGINT: the listener closes, open event streams end, the poller stops,
exit 0.

Only the standard library and psycopg2. Configuration is the environment (see README.md). SQL identifiers
(count mode) come only from LIVE_TABLES and are quoted with psycopg2.sql.Identifier; nothing from a request
ever reaches SQL.
"""

import argparse
import collections
import json
import logging
import os
import re
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg2
from psycopg2 import sql

log = logging.getLogger("live_py")

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")


class ConfigError(Exception):
    pass


def parse_tables(value):
    """'events, raw.metrics' -> [('public'|None, 'events'), ('raw', 'metrics')] as (schema, table); schema None
    means any schema in stats mode and the search_path in count mode."""
    tables = []
    for item in (value or "").split(","):
        item = item.strip()
        if not item:
            continue
        parts = item.split(".")
        if len(parts) > 2 or not all(_IDENT.match(p) for p in parts):
            raise ConfigError("LIVE_TABLES: %r is not a [schema.]table name" % item)
        tables.append((parts[0], parts[1]) if len(parts) == 2 else (None, parts[0]))
    return tables


def parse_listen(value):
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError("LIVE_LISTEN: want host:port, got %r" % value)
    return host or "0.0.0.0", int(port)


class Config:
    def __init__(self, env):
        self.dsn = env.get("LIVE_DATABASE_URL", "")
        self.password_file = env.get("LIVE_DATABASE_PASSWORD_FILE", "")
        self.tables = parse_tables(env.get("LIVE_TABLES", ""))
        self.mode = env.get("LIVE_MODE", "stats")
        self.listen = parse_listen(env.get("LIVE_LISTEN", ":8080"))
        self.title = env.get("LIVE_TITLE", "Sawmill: live ingest")
        try:
            self.poll = float(env.get("LIVE_POLL_SECONDS", "2"))
            self.heartbeat = float(env.get("LIVE_HEARTBEAT_SECONDS", "15"))
            self.history = int(env.get("LIVE_HISTORY", "100"))
            self.max_streams = int(env.get("LIVE_MAX_STREAMS", "100"))
            self.chart_minutes = int(env.get("LIVE_CHART_MINUTES", "30"))
        except ValueError as e:
            raise ConfigError("LIVE_POLL_SECONDS / LIVE_HEARTBEAT_SECONDS / LIVE_HISTORY / LIVE_MAX_STREAMS / "
                              "LIVE_CHART_MINUTES: %s" % e)
        if self.poll <= 0 or self.heartbeat <= 0 or self.history <= 0 or self.max_streams <= 0:
            raise ConfigError("LIVE_POLL_SECONDS, LIVE_HEARTBEAT_SECONDS, LIVE_HISTORY and LIVE_MAX_STREAMS must be positive")
        if not 1 <= self.chart_minutes <= 1440:
            raise ConfigError("LIVE_CHART_MINUTES: 1 to 1440, got %d" % self.chart_minutes)
        if self.mode not in ("stats", "count"):
            raise ConfigError("LIVE_MODE: stats or count, got %r" % self.mode)
        if self.mode == "count" and not self.tables:
            raise ConfigError("LIVE_MODE=count needs LIVE_TABLES")
        if not self.dsn:
            raise ConfigError("LIVE_DATABASE_URL is not set")
        self.password = None
        if self.password_file:
            try:
                with open(self.password_file) as f:
                    self.password = f.read().strip()
            except OSError as e:
                raise ConfigError("LIVE_DATABASE_PASSWORD_FILE: %s" % e.strerror)


class Database:
    """Connections to PostgreSQL. Errors never carry the DSN to clients."""

    def __init__(self, cfg):
        self.cfg = cfg

    def connect(self, timeout=3):
        kwargs = {"connect_timeout": timeout, "application_name": "live_py"}
        if self.cfg.password:
            kwargs["password"] = self.cfg.password
        conn = psycopg2.connect(self.cfg.dsn, **kwargs)
        conn.autocommit = True  # each poll sees fresh statistics
        return conn

    def ping(self):
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
                cur.fetchone()
        finally:
            conn.close()

    def counts(self, conn):
        """{'schema.table': inserted} for the watched tables."""
        with conn.cursor() as cur:
            if self.cfg.mode == "count":
                out = {}
                for schema, table in self.cfg.tables:
                    ident = sql.Identifier(schema, table) if schema else sql.Identifier(table)
                    cur.execute(sql.SQL("SELECT current_schema(), count(*) FROM {}").format(ident))
                    cur_schema, n = cur.fetchone()
                    out["%s.%s" % (schema or cur_schema, table)] = n
                return out
            cur.execute("SELECT schemaname, relname, n_tup_ins FROM pg_stat_user_tables")
            rows = cur.fetchall()
        wanted = self.cfg.tables
        out = {}
        for schema, table, n in rows:
            if not wanted or any(t == table and (s is None or s == schema) for s, t in wanted):
                out["%s.%s" % (schema, table)] = n
        return out


class Broadcaster:
    """Keeps the last snapshot and the recent activity events; wakes the event streams."""

    def __init__(self, history):
        self.cond = threading.Condition()
        self.events = collections.deque(maxlen=history)  # (id, name, data)
        self.seq = 0
        self.snapshot = {"time": None, "ok": False, "tables": {}}
        self.closed = False

    def publish(self, name, data):
        with self.cond:
            self.seq += 1
            self.events.append((self.seq, name, data))
            self.cond.notify_all()

    def set_snapshot(self, snap):
        with self.cond:
            self.snapshot = snap

    def since(self, last_id, timeout):
        """Events after last_id, waiting up to timeout for one. None once closed."""
        with self.cond:
            self.cond.wait_for(lambda: self.closed or self.seq > last_id, timeout)
            if self.closed:
                return None
            return [e for e in self.events if e[0] > last_id]

    def close(self):
        with self.cond:
            self.closed = True
            self.cond.notify_all()


class Activity:
    """Rows inserted per table per minute (minute = floor(epoch seconds / 60) * 60), the last `minutes`."""

    def __init__(self, minutes):
        self.minutes = minutes
        self.lock = threading.Lock()
        self.buckets = {}  # minute -> {table: rows}
        self.tables = set()
        self.through = 0  # the time of the last poll counted: the page adds only later activity events

    def add(self, when, changes):
        """Counts one poll's changes [{"table", "delta"}] at time `when` (all at once: a reader never sees
        half a poll)."""
        minute = int(when // 60) * 60
        with self.lock:
            b = self.buckets.setdefault(minute, {})
            for c in changes:
                b[c["table"]] = b.get(c["table"], 0) + c["delta"]
            self.through = when
            for old in [m for m in self.buckets if m <= minute - 60 * self.minutes]:
                del self.buckets[old]

    def seen(self, tables):
        with self.lock:
            self.tables.update(tables)

    def series(self, now):
        """{"time", "through", "step", "start", "minutes", "tables": {table: [rows per minute, oldest first]}}:
        the last `minutes` minutes up to the one holding `now`, every table seen (zeros where nothing happened);
        `through` is the time of the last poll counted (activity events up to it are in the numbers)."""
        end = int(now // 60) * 60
        start = end - 60 * (self.minutes - 1)
        with self.lock:
            out = {t: [0] * self.minutes for t in self.tables}
            for minute, rows in self.buckets.items():
                if start <= minute <= end:
                    for t, n in rows.items():
                        out.setdefault(t, [0] * self.minutes)[(minute - start) // 60] += n
            through = self.through
        return {"time": now, "through": through, "step": 60, "start": start, "minutes": self.minutes, "tables": out}


class Poller(threading.Thread):
    def __init__(self, db, broadcaster, interval, stop, activity=None):
        super().__init__(name="poller", daemon=True)
        self.db, self.b, self.interval, self.stop = db, broadcaster, interval, stop
        self.activity = activity if activity is not None else Activity(30)
        self.prev = None

        self.conn = None

    def poll(self):
        """One poll; the first successful one is the baseline (no activity event)."""
        try:
            if self.conn is None or self.conn.closed:
                self.conn = self.db.connect()
            self.tick(self.db.counts(self.conn))
            return True
        except psycopg2.Error as e:
            # the first line only: libpq's messages do not carry the password, but keep logs short
            msg = str(e).strip().splitlines()
            log.warning("poll failed: %s", msg[0] if msg else type(e).__name__)
            self.b.set_snapshot(dict(self.b.snapshot, ok=False))
            if self.conn is not None:
                try:
                    self.conn.close()
                except psycopg2.Error:
                    pass
            self.conn = None
            return False

    def run(self):
        while not self.stop.wait(self.interval):
            self.poll()
        if self.conn is not None:
            self.conn.close()

    def tick(self, counts):
        now = time.time()
        tables = {}
        changes = []
        for name, n in sorted(counts.items()):
            # a table that appears after the first poll is new: all its inserts are activity
            before = self.prev.get(name, 0) if self.prev is not None else None
            delta = 0 if before is None else n - before
            tables[name] = {"inserted": n, "delta": delta}
            if delta > 0:
                changes.append({"table": name, "inserted": n, "delta": delta})
        self.activity.seen(counts)
        if changes:
            self.activity.add(now, changes)
        self.b.set_snapshot({"time": now, "ok": True, "tables": tables})
        if changes:
            self.b.publish("activity", {"time": now, "changes": changes})
        self.prev = counts


class Handler(BaseHTTPRequestHandler):
    server_version = "live_py"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    # socket timeout: a client that stops reading its event stream is dropped instead of holding a thread
    timeout = 60

    # set on the class by make_server
    app = None

    def log_message(self, fmt, *args):
        log.debug("%s %s", self.address_string(), fmt % args)

    def log_request(self, code="-", size="-"):
        if self.path not in ("/healthz",):
            log.info("request method=%s path=%s status=%s", self.command, self.path.split("?")[0],
                     getattr(code, "value", code))

    def send_body(self, status, ctype, body, extra=None):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-store")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, status, obj):
        self.send_body(status, "application/json", (json.dumps(obj) + "\n").encode())

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        app = self.app
        if path in ("/", "/index.html"):
            self.send_body(200, "text/html; charset=utf-8", app.page, {
                "Content-Security-Policy": "default-src 'self'; style-src 'self'; script-src 'self'; connect-src 'self'"})
        elif path == "/app.js":
            self.send_body(200, "text/javascript; charset=utf-8", app.static["app.js"])
        elif path == "/app.css":
            self.send_body(200, "text/css; charset=utf-8", app.static["app.css"])
        elif path == "/api/tables":
            self.send_json(200, app.broadcaster.snapshot)
        elif path == "/api/activity":
            self.send_json(200, app.activity.series(time.time()))
        elif path == "/healthz":
            try:
                app.db.ping()
            except psycopg2.Error:
                self.send_json(503, {"status": "unavailable", "error": "database unreachable"})
                return
            self.send_json(200, {"status": "ok"})
        elif path == "/events":
            if self.command == "HEAD":
                self.send_body(200, "text/event-stream", b"")
                return
            self.events()
        else:
            self.send_json(404, {"error": "not found"})

    def do_POST(self):
        self.send_json(405, {"error": "method not allowed"})

    do_PUT = do_DELETE = do_PATCH = do_POST

    def events(self):
        app = self.app
        try:
            last = int(self.headers.get("Last-Event-ID", "0"))
        except ValueError:
            last = 0
        if not app.streams_add(1):
            self.send_json(503, {"error": "too many event streams"})
            return
        try:
            self.stream(last)
        finally:
            app.streams_add(-1)

    def stream(self, last):
        app = self.app
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Accel-Buffering", "no")  # nginx: do not buffer the stream
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            # the current state first, so a page has something to show at once
            self.write_event("snapshot", app.broadcaster.snapshot, None, retry=3000)
            if last == 0:
                last = app.broadcaster.seq
            while not app.stopping.is_set():
                events = app.broadcaster.since(last, app.cfg.heartbeat)
                if events is None:
                    break
                if not events:
                    self.wfile.write(b": keep-alive\n\n")
                    self.wfile.flush()
                    continue
                for seq, name, data in events:
                    self.write_event(name, data, seq)
                    last = seq
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass

    def write_event(self, name, data, seq, retry=None):
        out = []
        if retry:
            out.append("retry: %d" % retry)
        if seq is not None:
            out.append("id: %d" % seq)
        out.append("event: %s" % name)
        out.append("data: %s" % json.dumps(data, separators=(",", ":")))
        self.wfile.write(("\n".join(out) + "\n\n").encode())
        self.wfile.flush()


class App:
    def __init__(self, cfg):
        self.cfg = cfg
        self.db = Database(cfg)
        self.broadcaster = Broadcaster(cfg.history)
        self.activity = Activity(cfg.chart_minutes)
        self.stopping = threading.Event()
        self.streams = 0
        self._lock = threading.Lock()
        with open(os.path.join(STATIC_DIR, "index.html"), "rb") as f:
            self.page = f.read().replace(b"{{title}}", _html_escape(cfg.title).encode())
        self.static = {}
        for name in ("app.js", "app.css"):
            with open(os.path.join(STATIC_DIR, name), "rb") as f:
                self.static[name] = f.read()

    def streams_add(self, n):
        """Counts open event streams; False (and no change) when one more would exceed LIVE_MAX_STREAMS."""
        with self._lock:
            if n > 0 and self.streams + n > self.cfg.max_streams:
                return False
            self.streams += n
            return True


def _html_escape(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def serve(cfg):
    app = App(cfg)
    handler = type("BoundHandler", (Handler,), {"app": app})
    httpd = ThreadingHTTPServer(cfg.listen, handler)
    httpd.daemon_threads = True
    poller = Poller(app.db, app.broadcaster, cfg.poll, app.stopping, app.activity)
    poller.poll()  # the baseline before the first client can connect (retried by the poller when it fails)
    poller.start()

    def stop(signum, _frame):
        if app.stopping.is_set():
            return
        log.info("shutting down signal=%s", signal.Signals(signum).name)
        app.stopping.set()
        app.broadcaster.close()  # ends the event streams
        # shutdown() waits for serve_forever to return, which runs in this (main) thread: call it elsewhere
        threading.Thread(target=httpd.shutdown, name="shutdown").start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    host, port = httpd.server_address[:2]
    log.info("listening on %s:%d mode=%s tables=%s poll=%ss", host, port, cfg.mode,
             ",".join("%s.%s" % (s, t) if s else t for s, t in cfg.tables) or "all", cfg.poll)
    try:
        httpd.serve_forever(poll_interval=0.2)
    finally:
        httpd.server_close()
        poller.join(timeout=5)
        deadline = time.time() + 5
        while app.streams > 0 and time.time() < deadline:
            time.sleep(0.05)
    log.info("stopped")


def healthcheck(env):
    _, port = parse_listen(env.get("LIVE_LISTEN", ":8080"))
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/healthz" % port, timeout=4) as r:
            return 0 if r.status == 200 else 1
    except (urllib.error.URLError, OSError) as e:
        print("unhealthy: %s" % e, file=sys.stderr)
        return 1


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--healthcheck", action="store_true",
                        help="probe http://127.0.0.1:PORT/healthz of the running service; exit 0 or 1")
    args = parser.parse_args(argv)
    if args.healthcheck:
        return healthcheck(os.environ)
    logging.basicConfig(level=os.environ.get("LIVE_LOG_LEVEL", "INFO").upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        cfg = Config(os.environ)
    except ConfigError as e:
        log.error("configuration: %s", e)
        return 2
    serve(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
