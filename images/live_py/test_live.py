"""Tests of live_py against a real PostgreSQL (DSN in SAWMILL_TEST_PG_DSN; `hack/postgres.sh start` prints
one). Without it the database tests are skipped, unless CI=true, where they fail. The service runs as a real
process, so SIGTERM is a real signal. Run: images/live_py/test.sh (Debian's /usr/bin/python3 with
python3-psycopg2)."""

import http.client
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import live  # noqa: E402

DSN = os.environ.get("SAWMILL_TEST_PG_DSN", "")
CI = os.environ.get("CI") == "true"


def need_db(test):
    if not DSN:
        if CI:
            raise AssertionError("SAWMILL_TEST_PG_DSN is not set (CI=true): "
                                 "export SAWMILL_TEST_PG_DSN=$(hack/postgres.sh start)")
        raise unittest.SkipTest("SAWMILL_TEST_PG_DSN is not set; export SAWMILL_TEST_PG_DSN=$(hack/postgres.sh start)")


def db():
    import psycopg2
    conn = psycopg2.connect(DSN)
    conn.autocommit = True
    return conn


class Service:
    """live.py in its own process, on a free port."""

    def __init__(self, **env):
        full = dict(os.environ)
        full.update({"LIVE_DATABASE_URL": DSN, "LIVE_LISTEN": "127.0.0.1:0", "LIVE_POLL_SECONDS": "0.3",
                     "LIVE_HEARTBEAT_SECONDS": "1", "PYTHONUNBUFFERED": "1"})
        full.update(env)
        self.proc = subprocess.Popen([sys.executable, os.path.join(HERE, "live.py")], env=full,
                                     stderr=subprocess.PIPE, text=True)
        self.lines = []
        self.port = None
        ready = threading.Event()

        def read():
            for line in self.proc.stderr:
                self.lines.append(line)
                m = re.search(r"listening on [\d.]+:(\d+)", line)
                if m:
                    self.port = int(m.group(1))
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(15) or self.port is None:
            self.stop()
            raise AssertionError("live.py did not start:\n" + "".join(self.lines))

    def logs(self):
        return "".join(self.lines)

    def get(self, path, timeout=10):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        c.request("GET", path)
        r = c.getresponse()
        body = r.read()
        c.close()
        return r.status, r.getheader("Content-Type"), body

    def stream(self, timeout=30):
        return EventStream(self.port, timeout)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self.proc.stderr.close()


class EventStream:
    def __init__(self, port, timeout):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        self.conn.request("GET", "/events")
        self.resp = self.conn.getresponse()

    def next(self):
        """The next event as (name, data, id), a comment as ("comment", text, None), or None at the end of the
        stream."""
        name, data, eid = None, [], None
        while True:
            line = self.resp.fp.readline()
            if not line:
                return None
            line = line.decode().rstrip("\n")
            if line == "":
                if data:
                    return name or "message", json.loads("\n".join(data)), eid
                continue
            if line.startswith(":"):
                if not data and name is None:
                    return "comment", line[1:].strip(), None
                continue
            field, _, value = line.partition(": ")
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
            elif field == "id":
                eid = value

    def close(self):
        self.resp.close()  # the response holds the socket open otherwise
        self.conn.close()


def new_table(conn, prefix):
    name = "%s_%s" % (prefix, secrets.token_hex(4))
    with conn.cursor() as cur:
        cur.execute('CREATE TABLE "%s" (id serial PRIMARY KEY, v text)' % name)
    return name


def drop_table(name):
    c = db()
    with c.cursor() as cur:
        cur.execute('DROP TABLE IF EXISTS "%s"' % name)
    c.close()


class ConfigTest(unittest.TestCase):
    def test_tables(self):
        self.assertEqual(live.parse_tables(" events, raw.metrics ,"), [(None, "events"), ("raw", "metrics")])
        for bad in ["a.b.c", "a;drop table x", 'x"y', "a b", ".x"]:
            with self.assertRaises(live.ConfigError, msg=bad):
                live.parse_tables(bad)

    def test_config(self):
        cfg = live.Config({"LIVE_DATABASE_URL": "postgres://x", "LIVE_LISTEN": "127.0.0.1:9000"})
        self.assertEqual((cfg.listen, cfg.mode, cfg.poll), (("127.0.0.1", 9000), "stats", 2.0))
        for env in [{}, {"LIVE_DATABASE_URL": "x", "LIVE_MODE": "count"}, {"LIVE_DATABASE_URL": "x", "LIVE_POLL_SECONDS": "0"},
                    {"LIVE_DATABASE_URL": "x", "LIVE_LISTEN": "nope"}, {"LIVE_DATABASE_URL": "x", "LIVE_MODE": "x"}]:
            with self.assertRaises(live.ConfigError, msg=env):
                live.Config(env)

    def test_bad_config_exits_2(self):
        env = dict(os.environ, LIVE_DATABASE_URL="")
        r = subprocess.run([sys.executable, os.path.join(HERE, "live.py")], env=env, capture_output=True, text=True,
                           timeout=30)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("LIVE_DATABASE_URL", r.stderr)

    def test_poller_deltas(self):
        b = live.Broadcaster(10)
        p = live.Poller(None, b, 1, threading.Event())
        p.tick({"public.a": 5})
        self.assertEqual(b.seq, 0, "the first poll is the baseline, not activity")
        p.tick({"public.a": 7, "public.new": 1})
        self.assertEqual(b.seq, 1)
        _, name, data = b.events[-1]
        self.assertEqual(name, "activity")
        self.assertEqual(data["changes"], [{"table": "public.a", "inserted": 7, "delta": 2},
                                           {"table": "public.new", "inserted": 1, "delta": 1}])
        p.tick({"public.a": 7, "public.new": 1})
        self.assertEqual(b.seq, 1, "no change, no event")


class ServiceTest(unittest.TestCase):
    def setUp(self):
        need_db(self)
        self.conn = db()
        self.services = []

    def tearDown(self):
        for s in self.services:
            s.stop()
        self.conn.close()

    def start(self, **env):
        s = Service(**env)
        self.services.append(s)
        return s

    def test_page(self):
        s = self.start()
        status, ctype, body = s.get("/")
        self.assertEqual(status, 200)
        self.assertTrue(ctype.startswith("text/html"), ctype)
        self.assertIn(b"<script src=\"/app.js\">", body)
        self.assertIn(b"Sawmill", body)
        status, ctype, body = s.get("/app.js")
        self.assertEqual(status, 200)
        self.assertIn(b"new EventSource(\"/events\")", body)
        self.assertEqual(s.get("/app.css")[0], 200)
        self.assertEqual(s.get("/nope")[0], 404)

    def assert_event_after_insert(self, s, table):
        es = s.stream()
        try:
            name, snap, _ = es.next()
            self.assertEqual(name, "snapshot")
            self.assertTrue(snap["ok"], "the first poll is done before the service listens")
            self.assertIn("public." + table, snap["tables"])
            self.assertEqual(snap["tables"]["public." + table]["inserted"], 0)
            with self.conn.cursor() as cur:
                cur.execute('INSERT INTO "%s" (v) VALUES (%%s), (%%s), (%%s)' % table, ("a", "b", "c"))
            # statistics are flushed when the inserting session goes idle (at most every second) or ends
            self.conn.close()
            self.conn = db()
            deadline = time.time() + 20
            while time.time() < deadline:
                ev = es.next()
                self.assertIsNotNone(ev, "the stream ended")
                name, data, eid = ev
                if name != "activity":
                    continue
                self.assertTrue(eid and eid.isdigit(), eid)
                for c in data["changes"]:
                    if c["table"] == "public." + table:
                        self.assertEqual(c["delta"], 3, data)
                        self.assertEqual(c["inserted"], 3, data)
                        return
            self.fail("no activity event for %s:\n%s" % (table, s.logs()))
        finally:
            es.close()

    def test_sse_event_after_insert_stats(self):
        table = new_table(self.conn, "live_stats")
        self.addCleanup(drop_table, table)
        s = self.start(LIVE_TABLES=table)
        self.assert_event_after_insert(s, table)
        # the snapshot endpoint agrees
        deadline = time.time() + 5
        while True:
            snap = json.loads(s.get("/api/tables")[2])
            if snap["tables"].get("public." + table, {}).get("inserted") == 3 or time.time() > deadline:
                break
            time.sleep(0.2)
        self.assertTrue(snap["ok"])
        self.assertEqual(snap["tables"]["public." + table]["inserted"], 3, snap)

    def test_sse_event_after_insert_count(self):
        table = new_table(self.conn, "live_count")
        self.addCleanup(drop_table, table)
        s = self.start(LIVE_TABLES="public." + table, LIVE_MODE="count")
        self.assert_event_after_insert(s, table)

    def test_keepalive(self):
        s = self.start(LIVE_TABLES="nosuchtable")
        es = s.stream(timeout=10)
        try:
            self.assertEqual(es.next()[0], "snapshot")
            line = b""
            deadline = time.time() + 5
            while not line.startswith(b": keep-alive") and time.time() < deadline:
                line = es.resp.fp.readline()
            self.assertTrue(line.startswith(b": keep-alive"), line)
        finally:
            es.close()

    def test_max_streams(self):
        s = self.start(LIVE_MAX_STREAMS="1")
        es = s.stream(timeout=10)
        try:
            self.assertEqual(es.next()[0], "snapshot")
            status, _, body = s.get("/events")
            self.assertEqual(status, 503, body)
        finally:
            es.close()
        deadline = time.time() + 10
        while True:  # the slot is freed when the server notices the closed stream (next keep-alive)
            c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
            c.request("GET", "/events")
            r = c.getresponse()
            c.close()
            if r.status == 200 or time.time() > deadline:
                break
            time.sleep(0.3)
        self.assertEqual(r.status, 200)

    def test_healthz(self):
        s = self.start()
        status, ctype, body = s.get("/healthz")
        self.assertEqual((status, json.loads(body)), (200, {"status": "ok"}))
        # the database down: nothing listens on the port it points at
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
        sock.close()
        down = self.start(LIVE_DATABASE_URL="postgres://nobody:hunter2@127.0.0.1:%d/x?sslmode=disable" % dead)
        status, ctype, body = down.get("/healthz")
        self.assertEqual(status, 503)
        self.assertEqual(json.loads(body)["error"], "database unreachable")
        self.assertNotIn(b"hunter2", body)
        self.assertEqual(down.get("/")[0], 200, "the page is served while the database is down")
        time.sleep(0.5)
        self.assertNotIn("hunter2", down.logs())
        # --healthcheck against both
        for svc, want in ((s, 0), (down, 1)):
            r = subprocess.run([sys.executable, os.path.join(HERE, "live.py"), "--healthcheck"],
                               env=dict(os.environ, LIVE_LISTEN="127.0.0.1:%d" % svc.port), capture_output=True,
                               timeout=30)
            self.assertEqual(r.returncode, want, r.stderr)

    def test_sigterm(self):
        s = self.start(LIVE_HEARTBEAT_SECONDS="60")
        es = s.stream(timeout=15)
        self.assertEqual(es.next()[0], "snapshot")
        t0 = time.time()
        s.proc.send_signal(signal.SIGTERM)
        self.assertEqual(s.proc.wait(10), 0, s.logs())
        self.assertLess(time.time() - t0, 5)
        self.assertIsNone(es.next(), "the event stream ends on shutdown")
        es.close()
        logs = s.logs()
        self.assertIn("shutting down signal=SIGTERM", logs)
        self.assertIn("stopped", logs)
        with self.assertRaises(OSError):
            socket.create_connection(("127.0.0.1", s.port), timeout=2).close()



class ActivityUnit(unittest.TestCase):
    """live.Activity: rows per minute per table, the window sliding with time (no database)."""

    def test_minutes(self):
        a = live.Activity(3)
        a.seen({"public.a": 0, "public.b": 0})
        t0 = 1_800_000_000 - 1_800_000_000 % 60  # a minute boundary
        a.add(t0 + 5, [{"table": "public.a", "delta": 2}])
        a.add(t0 + 50, [{"table": "public.a", "delta": 3}, {"table": "public.b", "delta": 1}])
        a.add(t0 + 61, [{"table": "public.a", "delta": 4}])
        s = a.series(t0 + 70)
        self.assertEqual((s["start"], s["step"], s["minutes"], s["through"]), (t0 - 60, 60, 3, t0 + 61))
        self.assertEqual(s["tables"], {"public.a": [0, 5, 4], "public.b": [0, 1, 0]})
        # three minutes later the first two minutes have left the window (and are pruned on the next add)
        a.add(t0 + 240, [{"table": "public.b", "delta": 9}])
        s = a.series(t0 + 241)
        self.assertEqual(s["tables"], {"public.a": [0, 0, 0], "public.b": [0, 0, 9]})
        self.assertEqual(sorted(a.buckets), [t0 + 240])


if __name__ == "__main__":
    unittest.main()
