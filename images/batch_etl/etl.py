#!/usr/bin/env python3
"""batch_etl: the platform's batch jobs, loading files and REST sources into PostgreSQL.

Jobs are declared in a JSON file (BATCH_JOBS_FILE, a Swarm config in stacks/platform): each names a source (a
CSV file or http(s) URL, or a REST endpoint answering JSON), a target table and its columns with their types,
and the key columns. A run reads the whole source, checks it, and in one transaction creates the table if it is
missing, copies the rows into a temporary table and upserts them on the key (insert or update; rows the source
no longer has are kept). Every run is recorded in <schema>.etl_runs. A run holds a PostgreSQL advisory lock per
job, so two runs of one job never overlap (the second is refused).

  etl.py run JOB [JOB...]   run jobs now, print one JSON result per job, exit 0 (all ok) or 1
  etl.py list               the configured jobs
  etl.py serve              HTTP: POST /jobs/<job>/run (bearer token), GET /jobs, GET /healthz
  etl.py --healthcheck      probe the running server's /healthz on 127.0.0.1 (the image's HEALTHCHECK)

Only the standard library and psycopg2. Identifiers (table, columns) come only from the jobs file, are checked
against a strict pattern and quoted with psycopg2.sql.Identifier; types come from a fixed list; values travel
as COPY data. Nothing from a request reaches SQL but a job name looked up in the jobs file.
"""

import argparse
import csv
import hashlib
import hmac
import io
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

log = logging.getLogger("batch_etl")

_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_JOB = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
TYPES = {"text", "bigint", "integer", "numeric", "double precision", "boolean", "date", "timestamptz", "jsonb"}
MAX_SOURCE_BYTES = 256 << 20


class ConfigError(Exception):
    pass


class JobError(Exception):
    """The source or its data is not what the job declares (the run fails, nothing is written)."""


class Busy(Exception):
    """Another run of the same job holds its lock."""


def _ident(value, what):
    if not isinstance(value, str) or not _IDENT.match(value):
        raise ConfigError("%s: %r is not a lower-case SQL identifier" % (what, value))
    return value


class Job:
    """One job of the jobs file."""

    def __init__(self, name, spec, default_schema):
        if not _JOB.match(name):
            raise ConfigError("job name %r: letters, digits, . _ - only" % name)
        where = "job %s" % name
        self.name = name
        self.kind = spec.get("kind")
        if self.kind not in ("csv", "rest"):
            raise ConfigError("%s: kind must be csv or rest" % where)
        self.source = spec.get("source")
        if not isinstance(self.source, str) or not self.source:
            raise ConfigError("%s: source is required" % where)
        if self.kind == "rest" and not self.source.startswith(("http://", "https://")):
            raise ConfigError("%s: a rest source is an http(s) URL" % where)
        table = spec.get("table", "")
        schema, _, tbl = table.rpartition(".")
        self.schema = _ident(schema or default_schema, where + " table schema")
        self.table = _ident(tbl, where + " table")
        cols = spec.get("columns")
        if not isinstance(cols, dict) or not cols:
            raise ConfigError("%s: columns: want an object {name: type}" % where)
        self.columns = []
        for col, typ in cols.items():
            _ident(col, where + " column")
            if typ not in TYPES:
                raise ConfigError("%s: column %s: type %r is not one of %s" % (where, col, typ, sorted(TYPES)))
            self.columns.append((col, typ))
        names = [c for c, _ in self.columns]
        self.key = spec.get("key") or []
        if not self.key or not all(k in names for k in self.key):
            raise ConfigError("%s: key must name one or more of its columns" % where)
        # rest: where the records are in the answer ("data.items"), and source field per column (default: same).
        self.records_path = spec.get("records_path", "")
        self.fields = spec.get("fields", {})
        self.delimiter = spec.get("delimiter", ",")
        self.missing_ok = bool(spec.get("missing_ok", False))
        self.token_file = spec.get("token_file", "")

    def describe(self):
        return {"job": self.name, "kind": self.kind, "source": self.source,
                "table": "%s.%s" % (self.schema, self.table), "key": self.key}


def load_jobs(path, default_schema="public"):
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError("BATCH_JOBS_FILE %s: %s" % (path, e)) from e
    jobs = doc.get("jobs") if isinstance(doc, dict) else None
    if not isinstance(jobs, dict):
        raise ConfigError("BATCH_JOBS_FILE %s: want {\"jobs\": {name: {...}}}" % path)
    return {name: Job(name, spec or {}, default_schema) for name, spec in sorted(jobs.items())}


# --- sources ---------------------------------------------------------------------------------------------------

def fetch(source, timeout=60, token_file=""):
    """The bytes of a file path or an http(s) URL (at most MAX_SOURCE_BYTES). FileNotFoundError for a path
    that does not exist."""
    if source.startswith(("http://", "https://")):
        req = urllib.request.Request(source, headers={"Accept": "application/json, text/csv, */*"})
        if token_file:
            with open(token_file, encoding="utf-8") as f:
                req.add_header("Authorization", "Bearer " + f.read().strip())
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                data = resp.read(MAX_SOURCE_BYTES + 1)
        except urllib.error.HTTPError as e:
            raise JobError("%s answered %d" % (source, e.code)) from e
        except (urllib.error.URLError, OSError) as e:
            raise JobError("%s: %s" % (source, getattr(e, "reason", e))) from e
    else:
        with open(source, "rb") as f:
            data = f.read(MAX_SOURCE_BYTES + 1)
    if len(data) > MAX_SOURCE_BYTES:
        raise JobError("%s is larger than %d bytes" % (source, MAX_SOURCE_BYTES))
    return data


def rows_from_csv(job, data):
    """CSV with a header row; every declared column must be in the header (other header columns are ignored).
    Empty cells are NULL."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise JobError("%s: not UTF-8: %s" % (job.source, e)) from e
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=job.delimiter)
    header = next(reader, None)
    if header is None:
        raise JobError("%s: empty file (no header row)" % job.source)
    header = [h.strip() for h in header]
    missing = [c for c, _ in job.columns if c not in header]
    if missing:
        raise JobError("%s: header lacks column(s) %s" % (job.source, ", ".join(missing)))
    idx = [header.index(c) for c, _ in job.columns]
    rows = []
    for n, rec in enumerate(reader, start=2):
        if not rec or rec == [""]:
            continue
        if len(rec) != len(header):
            raise JobError("%s line %d: %d fields, the header has %d" % (job.source, n, len(rec), len(header)))
        rows.append([rec[i] if rec[i] != "" else None for i in idx])
    return rows


def _path(doc, path):
    for part in [p for p in path.split(".") if p]:
        if not isinstance(doc, dict) or part not in doc:
            raise JobError("no %r in the answer" % path)
        doc = doc[part]
    return doc


def rows_from_json(job, data):
    """A JSON array of objects (or one under records_path); each column is the object's field of the same name
    (or fields[column]). A missing field or null is NULL; objects and arrays become JSON text."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise JobError("%s: not JSON: %s" % (job.source, e)) from e
    records = _path(doc, job.records_path)
    if not isinstance(records, list):
        raise JobError("%s: the records are not a JSON array" % job.source)
    rows = []
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise JobError("%s: record %d is not an object" % (job.source, i + 1))
        row = []
        for col, _ in job.columns:
            v = rec
            for part in job.fields.get(col, col).split("."):  # "a.b": the field b of the object a
                v = v.get(part) if isinstance(v, dict) else None
            if isinstance(v, (dict, list)):
                v = json.dumps(v, sort_keys=True)
            elif isinstance(v, bool):
                v = "true" if v else "false"
            elif v is not None:
                v = str(v)
            row.append(v)
        rows.append(row)
    return rows


# --- loading ---------------------------------------------------------------------------------------------------

RUNS_DDL = """CREATE TABLE IF NOT EXISTS {runs} (
    id bigserial PRIMARY KEY,
    job text NOT NULL,
    started timestamptz NOT NULL,
    finished timestamptz NOT NULL DEFAULT now(),
    status text NOT NULL,
    rows_read integer NOT NULL DEFAULT 0,
    inserted integer NOT NULL DEFAULT 0,
    updated integer NOT NULL DEFAULT 0,
    error text
)"""


def _copy_rows(rows):
    """rows as COPY ... (FORMAT csv) input: NULL is an unquoted empty field, every value is quoted."""
    out = io.StringIO()
    for row in rows:
        fields = []
        for v in row:
            if v is None:
                fields.append("")
            else:
                fields.append('"' + str(v).replace('"', '""') + '"')
        out.write(",".join(fields) + "\n")
    out.seek(0)
    return out


def _lock_key(job):
    return int.from_bytes(hashlib.sha256(("batch_etl:" + job).encode()).digest()[:8], "big", signed=True)


def load(conn, job, rows):
    """Upserts rows into the job's table in one transaction; returns (inserted, updated)."""
    tbl = sql.Identifier(job.schema, job.table)
    cols = [sql.Identifier(c) for c, _ in job.columns]
    key = [sql.Identifier(k) for k in job.key]
    others = [sql.Identifier(c) for c, _ in job.columns if c not in job.key]
    with conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} ({}, PRIMARY KEY ({}))").format(
            tbl,
            sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(t)) for c, t in job.columns),
            sql.SQL(", ").join(key)))
        cur.execute(sql.SQL("CREATE TEMP TABLE etl_stage (LIKE {} INCLUDING DEFAULTS) ON COMMIT DROP").format(tbl))
        cur.copy_expert(sql.SQL("COPY etl_stage ({}) FROM STDIN WITH (FORMAT csv)").format(
            sql.SQL(", ").join(cols)), _copy_rows(rows))
        # one source row per key: a duplicate key in the source is the source's mistake
        cur.execute(sql.SQL("SELECT count(*) - count(DISTINCT ({})) FROM etl_stage").format(sql.SQL(", ").join(key)))
        dups = cur.fetchone()[0]
        if dups:
            raise JobError("%s: %d rows repeat a key (%s)" % (job.source, dups, ", ".join(job.key)))
        update = sql.SQL("DO NOTHING") if not others else sql.SQL("DO UPDATE SET {} WHERE ({}) IS DISTINCT FROM ({})").format(
            sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(c) for c in others),
            sql.SQL(", ").join(sql.SQL("{}.{}").format(tbl, c) for c in others),
            sql.SQL(", ").join(sql.SQL("EXCLUDED.{}").format(c) for c in others))
        cur.execute(sql.SQL("INSERT INTO {tbl} ({cols}) SELECT {cols} FROM etl_stage ON CONFLICT ({key}) {update} "
                            "RETURNING (xmax = 0)").format(
            tbl=tbl, cols=sql.SQL(", ").join(cols), key=sql.SQL(", ").join(key), update=update))
        flags = [r[0] for r in cur.fetchall()]
    return sum(1 for f in flags if f), sum(1 for f in flags if not f)


def run_job(conn, job, schema="public", timeout=60):
    """Runs one job on an open connection (autocommit off); returns its result dict and records the run."""
    started = time.time()
    result = {"job": job.name, "table": "%s.%s" % (job.schema, job.table), "status": "ok",
              "rows": 0, "inserted": 0, "updated": 0}
    runs = sql.Identifier(schema, "etl_runs")
    with conn.cursor() as cur:
        cur.execute(sql.SQL(RUNS_DDL).format(runs=runs))
        conn.commit()
        cur.execute("SELECT pg_try_advisory_lock(%s)", (_lock_key(job.name),))
        if not cur.fetchone()[0]:
            conn.rollback()
            raise Busy("job %s is already running" % job.name)
    try:
        try:
            data = fetch(job.source, timeout=timeout, token_file=job.token_file)
        except FileNotFoundError:
            if not job.missing_ok:
                raise JobError("%s does not exist" % job.source) from None
            data = None
        if data is None:
            result["status"] = "skipped"
            result["reason"] = "%s does not exist" % job.source
        else:
            rows = rows_from_csv(job, data) if job.kind == "csv" else rows_from_json(job, data)
            result["rows"] = len(rows)
            result["inserted"], result["updated"] = load(conn, job, rows)
            conn.commit()
            result["unchanged"] = len(rows) - result["inserted"] - result["updated"]
    except (JobError, psycopg2.DataError, psycopg2.IntegrityError) as e:
        conn.rollback()
        result["status"] = "failed"
        result["error"] = str(e).strip().splitlines()[0]
    except Exception:
        conn.rollback()
        raise
    finally:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("INSERT INTO {} (job, started, status, rows_read, inserted, updated, error) "
                                "VALUES (%s, to_timestamp(%s), %s, %s, %s, %s, %s)").format(runs),
                        (job.name, started, result["status"], result["rows"], result["inserted"], result["updated"],
                         result.get("error") or result.get("reason")))
            cur.execute("SELECT pg_advisory_unlock(%s)", (_lock_key(job.name),))
        conn.commit()
    result["seconds"] = round(time.time() - started, 3)
    return result


# --- configuration, CLI and server -------------------------------------------------------------------------------

class Config:
    def __init__(self, env):
        self.dsn = env.get("BATCH_DATABASE_URL", "")
        self.password_file = env.get("BATCH_DATABASE_PASSWORD_FILE", "")
        self.jobs_file = env.get("BATCH_JOBS_FILE", "/etc/batch_etl/jobs.json")
        self.schema = _ident(env.get("BATCH_SCHEMA", "public"), "BATCH_SCHEMA")
        self.token_file = env.get("BATCH_TOKEN_FILE", "/run/secrets/batch_etl_token")
        self.listen = env.get("BATCH_LISTEN", ":8080")
        host, sep, port = self.listen.rpartition(":")
        if not sep or not port.isdigit():
            raise ConfigError("BATCH_LISTEN: want host:port, got %r" % self.listen)
        self.host, self.port = host, int(port)
        try:
            self.timeout = float(env.get("BATCH_SOURCE_TIMEOUT", "60"))
        except ValueError:
            raise ConfigError("BATCH_SOURCE_TIMEOUT: want seconds") from None

    def connect(self):
        if not self.dsn:
            raise ConfigError("BATCH_DATABASE_URL is not set")
        kw = {"connect_timeout": 5, "application_name": "batch_etl"}
        if self.password_file:
            with open(self.password_file, encoding="utf-8") as f:
                kw["password"] = f.read().strip()
        return psycopg2.connect(self.dsn, **kw)


def run_named(cfg, jobs, names):
    results = []
    for name in names:
        job = jobs.get(name)
        if job is None:
            results.append({"job": name, "status": "failed", "error": "no such job"})
            continue
        conn = cfg.connect()
        try:
            results.append(run_job(conn, job, cfg.schema, cfg.timeout))
        except Busy as e:
            results.append({"job": name, "status": "busy", "error": str(e)})
        finally:
            conn.close()
    return results


class Handler(BaseHTTPRequestHandler):
    server_version = "batch_etl"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def log_request(self, code="-", size="-"):
        log.info("%s %s %s", self.command, self.path.split("?")[0], code)

    def send_json(self, status, obj):
        body = (json.dumps(obj, sort_keys=True) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def authorized(self):
        got = self.headers.get("Authorization", "")
        scheme, _, tok = got.partition(" ")
        want = self.server.token
        return scheme.lower() == "bearer" and hmac.compare_digest(
            hashlib.sha256(tok.strip().encode()).digest(), hashlib.sha256(want).digest())

    def do_GET(self):
        path = self.path.split("?")[0]
        if path == "/healthz":
            try:
                conn = self.server.cfg.connect()
                conn.close()
            except (psycopg2.Error, OSError) as e:
                log.warning("health check: database unreachable: %s", str(e).strip().splitlines()[0] if str(e) else e)
                self.send_json(503, {"status": "unavailable"})
                return
            self.send_json(200, {"status": "ok"})
        elif path == "/jobs":
            self.send_json(200, {"jobs": [j.describe() for j in self.server.jobs.values()]})
        else:
            self.send_json(404, {"error": "not found"})

    def do_POST(self):
        m = re.match(r"^/jobs/([^/]+)/run$", self.path.split("?")[0])
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(min(length, 1 << 16))
        if not m:
            self.send_json(404, {"error": "not found"})
            return
        if not self.authorized():
            self.send_json(401, {"error": "missing or invalid bearer token"})
            return
        name = m.group(1)
        if name not in self.server.jobs:
            self.send_json(404, {"error": "no such job"})
            return
        try:
            res = run_named(self.server.cfg, self.server.jobs, [name])[0]
        except (psycopg2.Error, OSError) as e:
            log.error("job %s: database error: %s", name, e)
            self.send_json(503, {"job": name, "status": "failed", "error": "database error"})
            return
        log.info("job %s: %s", name, json.dumps(res, sort_keys=True))
        status = {"ok": 200, "skipped": 200, "busy": 409}.get(res["status"], 422)
        self.send_json(status, res)


def serve(cfg, jobs):
    with open(cfg.token_file, "rb") as f:
        token = f.read().strip()
    if not token:
        raise ConfigError("BATCH_TOKEN_FILE %s is empty" % cfg.token_file)
    srv = ThreadingHTTPServer((cfg.host, cfg.port), Handler)
    srv.daemon_threads = True
    srv.cfg, srv.jobs, srv.token = cfg, jobs, token

    def stop(signum, _frame):
        log.info("signal %d: shutting down", signum)
        threading.Thread(target=srv.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("listening on %s:%d, jobs %s", cfg.host or "0.0.0.0", srv.server_address[1], ", ".join(jobs))
    print("listening %d" % srv.server_address[1], file=sys.stderr, flush=True)
    srv.serve_forever()
    srv.server_close()
    log.info("stopped")


def healthcheck(cfg):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/healthz" % cfg.port, timeout=3) as resp:
            return 0 if resp.status == 200 else 1
    except (urllib.error.URLError, OSError):
        return 1


def main(argv=None, env=None):
    env = os.environ if env is None else env
    p = argparse.ArgumentParser(prog="etl.py", description="batch_etl: files and REST sources into PostgreSQL")
    p.add_argument("--healthcheck", action="store_true")
    sub = p.add_subparsers(dest="cmd")
    r = sub.add_parser("run")
    r.add_argument("jobs", nargs="+")
    sub.add_parser("list")
    sub.add_parser("serve")
    args = p.parse_args(argv)
    logging.basicConfig(level=env.get("BATCH_LOG_LEVEL", "INFO").upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = Config(env)
        if args.healthcheck:
            return healthcheck(cfg)
        jobs = load_jobs(cfg.jobs_file, cfg.schema)
        if args.cmd == "list":
            for j in jobs.values():
                print(json.dumps(j.describe(), sort_keys=True))
            return 0
        if args.cmd == "run":
            results = run_named(cfg, jobs, args.jobs)
            for res in results:
                print(json.dumps(res, sort_keys=True))
            return 0 if all(r["status"] in ("ok", "skipped") for r in results) else 1
        if args.cmd == "serve":
            serve(cfg, jobs)
            return 0
        p.print_usage(sys.stderr)
        return 2
    except ConfigError as e:
        print("batch_etl: %s" % e, file=sys.stderr)
        return 2
    except psycopg2.Error as e:
        print("batch_etl: database: %s" % (str(e).strip().splitlines() or [e])[0], file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
