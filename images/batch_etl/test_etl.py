"""Tests of batch_etl against a real PostgreSQL (DSN in SAWMILL_TEST_PG_DSN; `hack/postgres.sh start` prints
one). Without it the database tests are skipped, unless CI=true, where they fail. REST sources are a local HTTP
server; the service runs as a real process; the Airflow DAG's trigger() talks to it. Run:
images/batch_etl/test.sh (Debian's /usr/bin/python3 with python3-psycopg2)."""

import http.client
import http.server
import importlib.util
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import etl  # noqa: E402

DSN = os.environ.get("SAWMILL_TEST_PG_DSN", "")
CI = os.environ.get("CI") == "true"


def need_db():
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


def load_dag_module():
    spec = importlib.util.spec_from_file_location("sawmill_batch_etl", os.path.join(HERE, "dags", "sawmill_batch_etl.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class DBTest(unittest.TestCase):
    """A fresh schema per test, dropped at the end."""

    def setUp(self):
        need_db()
        self.admin = db()
        self.schema = "etl_test_" + secrets.token_hex(4)
        with self.admin.cursor() as cur:
            cur.execute("CREATE SCHEMA " + self.schema)
        self.addCleanup(self.drop)
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)

    def drop(self):
        with self.admin.cursor() as cur:
            cur.execute("DROP SCHEMA %s CASCADE" % self.schema)
        self.admin.close()

    def file(self, name, text):
        path = os.path.join(self.tmp.name, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def jobs(self, jobs):
        return self.file("jobs.json", json.dumps({"jobs": jobs}))

    def query(self, q):
        with self.admin.cursor() as cur:
            cur.execute(q.replace("{s}", self.schema))
            return cur.fetchall()

    def run_job(self, job):
        import psycopg2
        conn = psycopg2.connect(DSN)
        try:
            return etl.run_job(conn, job, self.schema, timeout=10)
        finally:
            conn.close()


STATIONS = {"kind": "csv", "table": "stations",
            "columns": {"id": "bigint", "name": "text", "opened": "date", "active": "boolean",
                        "capacity": "numeric", "tags": "jsonb", "seen": "timestamptz"},
            "key": ["id"]}


class CSVJob(DBTest):
    def job(self, source, **kw):
        spec = dict(STATIONS, source=source, **kw)
        return etl.load_jobs(self.jobs({"stations": spec}), self.schema)["stations"]

    def test_load_then_upsert(self):
        src = self.file("stations.csv",
                        "\ufeffid,name,opened,active,capacity,tags,seen,ignored\n"
                        "1,Mill Road,2024-05-01,true,12.5,\"[\"\"a\"\"]\",2026-11-01T10:00:00Z,x\n"
                        "2,\"Quay, North\",,false,,,2026-11-01T11:00:00+01:00,y\n")
        job = self.job(src)
        res = self.run_job(job)
        self.assertEqual((res["status"], res["rows"], res["inserted"], res["updated"]), ("ok", 2, 2, 0), res)
        rows = self.query("SELECT id, name, opened::text, active, capacity::text, tags::text, "
                          "to_char(seen AT TIME ZONE 'UTC', 'HH24:MI') FROM {s}.stations ORDER BY id")
        self.assertEqual(rows, [(1, "Mill Road", "2024-05-01", True, "12.5", '["a"]', "10:00"),
                                (2, "Quay, North", None, False, None, None, "10:00")])

        # The source changes: one row updated, one new, one unchanged; nothing is deleted.
        with open(src, "w", encoding="utf-8") as f:
            f.write("id,name,opened,active,capacity,tags,seen,ignored\n"
                    "1,Mill Road,2024-05-01,true,12.5,\"[\"\"a\"\"]\",2026-11-01T10:00:00Z,x\n"
                    "2,Quay North,,true,8,,2026-11-02T00:00:00Z,y\n"
                    "3,Harbour,2025-01-01,true,3,{},2026-11-02T00:00:00Z,z\n")
        res = self.run_job(job)
        self.assertEqual((res["status"], res["rows"], res["inserted"], res["updated"], res["unchanged"]),
                         ("ok", 3, 1, 1, 1), res)
        self.assertEqual(self.query("SELECT id, name, active FROM {s}.stations ORDER BY id"),
                         [(1, "Mill Road", True), (2, "Quay North", True), (3, "Harbour", True)])
        runs = self.query("SELECT job, status, rows_read, inserted, updated FROM {s}.etl_runs ORDER BY id")
        self.assertEqual(runs, [("stations", "ok", 2, 2, 0), ("stations", "ok", 3, 1, 1)])

    def test_bad_data_writes_nothing(self):
        good = "id,name,opened,active,capacity,tags,seen\n1,A,,true,1,,2026-11-01T00:00:00Z\n"
        src = self.file("s.csv", good)
        job = self.job(src)
        self.assertEqual(self.run_job(job)["status"], "ok")
        for name, text, want in [
            ("type", good + "two,B,,true,1,,2026-11-01T00:00:00Z\n", "bigint"),
            ("header", "id,name\n5,E\n", "header lacks column(s) opened, active, capacity, tags, seen"),
            ("duplicate key", good + "1,C,,true,1,,2026-11-01T00:00:00Z\n", "repeat a key"),
            ("ragged", good + "7,F\n", "fields, the header has"),
            ("not null key", good + ",G,,true,1,,2026-11-01T00:00:00Z\n", "null value"),
        ]:
            with self.subTest(name):
                with open(src, "w", encoding="utf-8") as f:
                    f.write(text.replace("1,A,", "1,Changed,") if name != "header" else text)
                res = self.run_job(job)
                self.assertEqual(res["status"], "failed", res)
                self.assertIn(want, res["error"])
                self.assertEqual(self.query("SELECT id, name FROM {s}.stations"), [(1, "A")])
        failed = self.query("SELECT count(*) FROM {s}.etl_runs WHERE status = 'failed' AND error <> ''")
        self.assertEqual(failed, [(5,)])

    def test_missing_file(self):
        missing = os.path.join(self.tmp.name, "nope.csv")
        res = self.run_job(self.job(missing))
        self.assertEqual(res["status"], "failed")
        self.assertIn("does not exist", res["error"])
        res = self.run_job(self.job(missing, missing_ok=True))
        self.assertEqual(res["status"], "skipped", res)
        self.assertEqual(self.query("SELECT to_regclass('{s}.stations') IS NULL"), [(True,)])

    def test_one_run_at_a_time(self):
        src = self.file("s.csv", "id,name,opened,active,capacity,tags,seen\n")
        job = self.job(src)
        holder = db()
        self.addCleanup(holder.close)
        with holder.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (etl._lock_key("stations"),))
        with self.assertRaises(etl.Busy):
            self.run_job(job)
        with holder.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock(%s)", (etl._lock_key("stations"),))
        self.assertEqual(self.run_job(job)["status"], "ok")


class Source(http.server.BaseHTTPRequestHandler):
    """A REST source: /stations answers {"data": {"items": [...]}}; /broken answers 500."""
    items = []

    def log_message(self, *a):
        pass

    def do_GET(self):
        if self.path == "/stations" and self.headers.get("Authorization") == "Bearer rest-token":
            body = json.dumps({"data": {"items": self.items}}).encode()
            self.send_response(200)
        elif self.path == "/stations":
            body, _ = b'{"error": "unauthorized"}', self.send_response(401)
        else:
            body, _ = b"oops", self.send_response(500)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class RESTJob(DBTest):
    def setUp(self):
        super().setUp()
        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Source)
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()
        self.addCleanup(self.srv.server_close)
        self.addCleanup(self.srv.shutdown)
        self.base = "http://127.0.0.1:%d" % self.srv.server_address[1]
        self.token = self.file("rest_token", "rest-token\n")

    def job(self, path):
        return etl.load_jobs(self.jobs({"api": {
            "kind": "rest", "source": self.base + path, "table": "api_stations", "records_path": "data.items",
            "columns": {"id": "text", "name": "text", "lat": "double precision", "meta": "jsonb", "ok": "boolean"},
            "fields": {"lat": "position.lat"}, "key": ["id"], "token_file": self.token}}), self.schema)["api"]

    def test_rest_source(self):
        Source.items = [{"id": "s1", "name": "One", "position": {"lat": 52.5}, "meta": {"k": [1]}, "ok": True},
                        {"id": "s2", "name": None, "ok": False, "extra": "ignored"}]
        res = self.run_job(self.job("/stations"))
        self.assertEqual((res["status"], res["inserted"]), ("ok", 2), res)
        self.assertEqual(self.query("SELECT id, name, lat, meta::text, ok FROM {s}.api_stations ORDER BY id"),
                         [("s1", "One", 52.5, '{"k": [1]}', True), ("s2", None, None, None, False)])

    def test_rest_errors(self):
        res = self.run_job(self.job("/broken"))
        self.assertEqual(res["status"], "failed")
        self.assertIn("answered 500", res["error"])
        Source.items = {"not": "a list"}
        res = self.run_job(self.job("/stations"))
        self.assertEqual(res["status"], "failed")
        self.assertIn("not a JSON array", res["error"])


class Config(unittest.TestCase):
    def test_rejected_jobs(self):
        base = dict(STATIONS, source="/x.csv")
        cases = [
            ({"bad name!": base}, "job name"),
            ({"j": dict(base, table='stations"; DROP TABLE x; --')}, "not a lower-case SQL identifier"),
            ({"j": dict(base, columns={"id": "bigint; DROP"})}, "type"),
            ({"j": dict(base, columns={"Id": "bigint"})}, "identifier"),
            ({"j": dict(base, key=["nope"])}, "key must name"),
            ({"j": dict(base, kind="ftp")}, "kind"),
            ({"j": dict(base, kind="rest")}, "http(s) URL"),
        ]
        with tempfile.TemporaryDirectory() as d:
            for jobs, want in cases:
                with self.subTest(want):
                    path = os.path.join(d, "j.json")
                    with open(path, "w") as f:
                        json.dump({"jobs": jobs}, f)
                    with self.assertRaises(etl.ConfigError) as cm:
                        etl.load_jobs(path)
                    self.assertIn(want, str(cm.exception))

    def test_cli_config_errors(self):
        self.assertEqual(etl.main(["list"], {"BATCH_JOBS_FILE": "/nonexistent/jobs.json"}), 2)
        self.assertEqual(etl.main(["list"], {"BATCH_LISTEN": "nope"}), 2)


class Service(DBTest):
    """etl.py serve as a real process; the DAG's trigger() and the CLI against it."""

    def setUp(self):
        super().setUp()
        self.token = "etl-" + secrets.token_hex(8)
        self.token_file = self.file("token", self.token + "\n")
        self.csv = self.file("events.csv", "id,source\n1,a\n2,b\n")
        self.jobs_file = self.jobs({
            "inbox": {"kind": "csv", "source": self.csv, "table": "inbox", "columns": {"id": "bigint", "source": "text"},
                      "key": ["id"]},
            "broken": {"kind": "csv", "source": self.file("b.csv", "id\nx\n"), "table": "b", "columns": {"id": "bigint"},
                       "key": ["id"]}})
        self.env = dict(os.environ, BATCH_DATABASE_URL=DSN, BATCH_JOBS_FILE=self.jobs_file, BATCH_SCHEMA=self.schema,
                        BATCH_TOKEN_FILE=self.token_file, BATCH_LISTEN="127.0.0.1:0", PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, os.path.join(HERE, "etl.py"), "serve"], env=self.env,
                                     stderr=subprocess.PIPE, text=True)
        self.addCleanup(self.stop)
        self.lines = []
        ready = threading.Event()

        def read():
            for line in self.proc.stderr:
                self.lines.append(line)
                m = re.match(r"listening (\d+)", line)
                if m:
                    self.port = int(m.group(1))
                    ready.set()
            ready.set()

        self.port = None
        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(15) or self.port is None:
            raise AssertionError("etl.py serve did not start:\n" + "".join(self.lines))
        self.base = "http://127.0.0.1:%d" % self.port

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stderr.close()

    def request(self, method, path, token=None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"Authorization": "Bearer " + token} if token else {}
        c.request(method, path, body=b"" if method == "POST" else None, headers=headers)
        r = c.getresponse()
        body = json.loads(r.read() or b"null")
        c.close()
        return r.status, body

    def test_http(self):
        self.assertEqual(self.request("GET", "/healthz"), (200, {"status": "ok"}))
        status, body = self.request("GET", "/jobs")
        self.assertEqual([j["job"] for j in body["jobs"]], ["broken", "inbox"])
        self.assertEqual(self.request("POST", "/jobs/inbox/run")[0], 401)
        self.assertEqual(self.request("POST", "/jobs/inbox/run", "wrong")[0], 401)
        self.assertEqual(self.query("SELECT to_regclass('{s}.inbox') IS NULL"), [(True,)])
        self.assertEqual(self.request("POST", "/jobs/nope/run", self.token)[0], 404)
        status, body = self.request("POST", "/jobs/inbox/run", self.token)
        self.assertEqual((status, body["status"], body["inserted"]), (200, "ok", 2), body)
        self.assertEqual(self.query("SELECT id, source FROM {s}.inbox ORDER BY id"), [(1, "a"), (2, "b")])
        status, body = self.request("POST", "/jobs/broken/run", self.token)
        self.assertEqual((status, body["status"]), (422, "failed"), body)
        hc = subprocess.run([sys.executable, os.path.join(HERE, "etl.py"), "--healthcheck"],
                            env=dict(self.env, BATCH_LISTEN="127.0.0.1:%d" % self.port), timeout=10)
        self.assertEqual(hc.returncode, 0)
        self.assertNotIn(self.token, "".join(self.lines))

    def test_dag_trigger(self):
        dag = load_dag_module()
        res = dag.trigger("inbox", base_url=self.base, token_file=self.token_file, timeout=30)
        self.assertEqual((res["status"], res["inserted"]), ("ok", 2))
        with self.assertRaisesRegex(RuntimeError, "HTTP 422"):
            dag.trigger("broken", base_url=self.base, token_file=self.token_file, timeout=30)
        with self.assertRaisesRegex(RuntimeError, "HTTP 401"):
            dag.trigger("inbox", base_url=self.base, token_file=self.file("bad", "nope"), timeout=30)
        self.assertEqual(dag.JOBS, ["inbox_events"])

    def test_cli_run(self):
        out = subprocess.run([sys.executable, os.path.join(HERE, "etl.py"), "run", "inbox", "broken"], env=self.env,
                             capture_output=True, text=True, timeout=30)
        self.assertEqual(out.returncode, 1, out.stderr)
        results = [json.loads(line) for line in out.stdout.splitlines()]
        self.assertEqual([(r["job"], r["status"]) for r in results], [("inbox", "ok"), ("broken", "failed")])


class DAGParse(unittest.TestCase):
    """The DAG files as Airflow loads them, where Airflow is importable (it is not in the project's test
    environment: Debian has no Airflow package and PyPI is not used)."""

    def test_dagbag(self):
        try:
            from airflow.models import DagBag
        except ImportError:
            raise unittest.SkipTest("Airflow is not importable here; the DAG parse check runs where it is")
        bag = DagBag(dag_folder=os.path.join(HERE, "dags"), include_examples=False)
        self.assertEqual(bag.import_errors, {})
        self.assertIn("sawmill_batch_etl", bag.dags)
        self.assertEqual([t.task_id for t in bag.dags["sawmill_batch_etl"].tasks], ["run_inbox_events"])

    def test_compiles(self):
        for name in os.listdir(os.path.join(HERE, "dags")):
            if name.endswith(".py"):
                with open(os.path.join(HERE, "dags", name), encoding="utf-8") as f:
                    compile(f.read(), name, "exec")


if __name__ == "__main__":
    unittest.main()
