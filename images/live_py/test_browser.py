"""live_py's page in a real browser: headless Chromium (Debian's `chromium`) driven over the DevTools protocol on
a pipe (--remote-debugging-pipe; the standard library only), against live.py and the real PostgreSQL.

It loads the page, inserts rows, and reads what a person would see: the chart's lines (one per table, rows per
minute), its legend and summary, after the page's JavaScript drew them from /api/activity (the past) and from
the event stream (live). A screenshot of the page is kept as a test artifact (LIVE_PY_ARTIFACTS, default a
directory under the system's temporary directory; its path is printed).

Without chromium the test is skipped, unless CI=true, where it fails (as the database tests do)."""

import base64
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import unittest

from test_live import CI, Service, db, need_db

CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--no-first-run", "--window-size=1100,800", "--remote-debugging-pipe"]


def chromium_path():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


class Browser:
    """Chromium with the DevTools protocol on fds 3 (commands in) and 4 (answers out): NUL-separated JSON."""

    def __init__(self):
        exe = chromium_path()
        self.profile = tempfile.mkdtemp(prefix="live-py-chromium-")
        cmd_r, cmd_w = os.pipe()
        res_r, res_w = os.pipe()
        # above 4, so that the dup2 below cannot overwrite one with the other
        hi = [os.dup(fd) for fd in (cmd_r, res_w)]
        hi = [fd if fd > 4 else os.dup(fd) for fd in hi]

        def child():
            os.dup2(hi[0], 3)
            os.dup2(hi[1], 4)

        self.proc = subprocess.Popen([exe] + CHROMIUM_FLAGS + ["--user-data-dir=" + self.profile, "about:blank"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     preexec_fn=child, pass_fds=(3, 4))
        for fd in [cmd_r, res_w] + hi:
            try:
                os.close(fd)
            except OSError:
                pass
        self.w = os.fdopen(cmd_w, "wb", buffering=0)
        self.r = os.fdopen(res_r, "rb", buffering=0)
        self.next_id = 0
        self.answers = {}
        self.cond = threading.Condition()
        self.buf = b""
        threading.Thread(target=self._read, daemon=True).start()
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]

    def _read(self):
        while True:
            chunk = self.r.read(65536)
            if not chunk:
                with self.cond:
                    self.answers[None] = "closed"
                    self.cond.notify_all()
                return
            self.buf += chunk
            while b"\0" in self.buf:
                raw, self.buf = self.buf.split(b"\0", 1)
                msg = json.loads(raw)
                if "id" in msg:
                    with self.cond:
                        self.answers[msg["id"]] = msg
                        self.cond.notify_all()

    def call(self, method, params=None, session=None, timeout=30):
        with self.cond:
            self.next_id += 1
            mid = self.next_id
        msg = {"id": mid, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self.w.write(json.dumps(msg).encode() + b"\0")
        with self.cond:
            if not self.cond.wait_for(lambda: mid in self.answers or None in self.answers, timeout):
                raise AssertionError("chromium did not answer %s within %ss" % (method, timeout))
            if mid not in self.answers:
                raise AssertionError("chromium closed the pipe")
            ans = self.answers.pop(mid)
        if "error" in ans:
            raise AssertionError("%s: %s" % (method, ans["error"]))
        return ans["result"]

    def page(self, method, params=None, timeout=30):
        return self.call(method, params, self.session, timeout)

    def eval(self, expression):
        r = self.page("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in r:
            raise AssertionError("%s: %s" % (expression, r["exceptionDetails"]))
        return r["result"].get("value")

    def wait(self, expression, timeout=20):
        """Polls a JavaScript expression until it is truthy; returns its value."""
        deadline = time.time() + timeout
        while True:
            v = self.eval(expression)
            if v or time.time() > deadline:
                return v
            time.sleep(0.2)

    def close(self):
        try:
            self.call("Browser.close", timeout=5)
        except (AssertionError, OSError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.w.close()
        self.r.close()
        shutil.rmtree(self.profile, ignore_errors=True)


# What the page shows, read the way a person reads it: the lines drawn, the legend, the summary sentence.
SEEN = """(() => {
  const lines = [...document.querySelectorAll('#chart polyline')].map(p => ({
    table: p.getAttribute('data-table'), values: p.getAttribute('data-values').split(',').map(Number),
    stroke: p.getAttribute('stroke'), points: p.getAttribute('points').trim().split(' ').length}));
  const r = document.getElementById('chart').getBoundingClientRect();
  return {lines, legend: [...document.querySelectorAll('#legend li')].map(li => li.textContent.trim()),
          summary: document.getElementById('chart-summary').textContent, status: document.getElementById('status').textContent,
          labels: [...document.querySelectorAll('#chart text')].map(t => t.textContent),
          width: r.width, height: r.height};
})()"""


class ChartInChromium(unittest.TestCase):
    def setUp(self):
        need_db(self)
        if chromium_path() is None:
            if CI:
                raise AssertionError("chromium is not installed (CI=true): apt-get install -y chromium")
            raise unittest.SkipTest("chromium is not installed: apt-get install -y chromium")
        self.conn = db()
        self.table = "chart_" + os.urandom(4).hex()
        with self.conn.cursor() as cur:
            cur.execute("CREATE TABLE %s (id serial PRIMARY KEY, v text)" % self.table)
        self.addCleanup(self.drop)

    def drop(self):
        with self.conn.cursor() as cur:
            cur.execute("DROP TABLE IF EXISTS %s" % self.table)
        self.conn.close()

    def insert(self, n):
        with self.conn.cursor() as cur:
            cur.execute("INSERT INTO " + self.table + " (v) SELECT 'x' FROM generate_series(1, %s)", (n,))

    def test_chart_shows_rows_per_minute_live(self):
        svc = Service(LIVE_MODE="count", LIVE_TABLES=self.table, LIVE_CHART_MINUTES="15")
        self.addCleanup(svc.stop)
        name = "public." + self.table

        # 5 rows before the page opens: the page learns them from /api/activity.
        self.insert(5)
        deadline = time.time() + 10
        while time.time() < deadline:
            _, _, body = svc.get("/api/activity")
            if sum(json.loads(body)["tables"].get(name, [])) == 5:
                break
            time.sleep(0.2)
        else:
            self.fail("/api/activity never counted the 5 rows: %s" % body)

        browser = Browser()
        self.addCleanup(browser.close)
        browser.page("Page.enable")
        browser.page("Page.navigate", {"url": "http://127.0.0.1:%d/" % svc.port})
        seen = browser.wait("(() => { const s = document.getElementById('status');"
                            " const p = document.querySelector('#chart polyline');"
                            " return s && s.textContent === 'live' && p ? true : false; })()")
        self.assertTrue(seen, "the page never went live with a chart line: %s" % browser.eval(SEEN))
        before = browser.eval(SEEN)
        line = [ln for ln in before["lines"] if ln["table"] == name]
        self.assertEqual(len(line), 1, before)
        self.assertEqual(len(line[0]["values"]), 15, "15 minutes, one point each")
        self.assertEqual(sum(line[0]["values"]), 5, before)
        self.assertEqual(line[0]["points"], 15)

        # 7 more while the page is open: they arrive over the event stream, without a reload.
        self.insert(7)
        total = browser.wait("(() => { const p = document.querySelector('#chart polyline[data-table=\"%s\"]');"
                             " return p && p.getAttribute('data-values').split(',').map(Number)"
                             ".reduce((a, b) => a + b, 0) === 12; })()" % name)
        after = browser.eval(SEEN)
        self.assertTrue(total, "the chart did not reach 12 rows: %s" % after)
        values = [ln for ln in after["lines"] if ln["table"] == name][0]["values"]
        # All in the last minute or two (the inserts may straddle a minute boundary), none before.
        self.assertEqual(sum(values[-2:]), 12, values)
        self.assertEqual(values[-1] > 0, True, values)
        self.assertIn(name + ": 12 rows in the last 15 minutes", after["summary"])
        self.assertTrue(any(t.startswith(name + ": ") and "12 in 15 min" in t for t in after["legend"]), after["legend"])
        self.assertIn("now", after["labels"])
        self.assertIn("-14 min", after["labels"])
        self.assertIn("rows/min", after["labels"])
        self.assertGreater(after["width"], 300)
        self.assertGreater(after["height"], 100)
        # The y axis grew to hold the peak: a label at least as high as the highest minute.
        peaks = [float(t) for t in after["labels"] if t.replace(".", "", 1).isdigit()]
        self.assertGreaterEqual(max(peaks), max(values))
        # The table section still shows the count.
        self.assertIn("12", browser.eval("document.getElementById('tables').textContent"))

        shot = base64.b64decode(browser.page("Page.captureScreenshot", {"format": "png"})["data"])
        self.assertEqual(shot[:8], b"\x89PNG\r\n\x1a\n")
        out = os.environ.get("LIVE_PY_ARTIFACTS") or os.path.join(tempfile.gettempdir(), "live_py-test-artifacts")
        os.makedirs(out, exist_ok=True)
        path = os.path.join(out, "chart.png")
        with open(path, "wb") as f:
            f.write(shot)
        print("\nscreenshot of the page: %s (%d bytes)" % (path, len(shot)))


if __name__ == "__main__":
    unittest.main()
