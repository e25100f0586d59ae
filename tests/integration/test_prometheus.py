#!/usr/bin/env python3
"""A real Prometheus scrapes lb's /metrics.

Debian's prometheus runs on a loopback port with a 1 s scrape interval and
one job "lb" whose target is lb's admin listener, protected by
admin.token_file; Prometheus sends the token from
`authorization.credentials_file`:
- with the right token, up{job="lb"} is 1, and after the test sends 37
  requests through lb (2 workers, fresh and keep-alive connections, 200s and
  404s), the value Prometheus' query API returns for sum(lb_requests_total)
  is exactly 37 (split by code and by pool too), and stays 37 over further
  scrapes: the scrapes themselves are not counted as requests;
- with a wrong token, lb answers the scrapes 401: up{job="lb"} is 0, the
  target's last error names the 401, and no lb_requests_total is stored.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import KeepAliveClient, http, unused_port, wait_until  # noqa: E402

PROMETHEUS = os.environ.get("PROMETHEUS_BIN") or shutil.which("prometheus") or \
    "/usr/bin/prometheus"
TOKEN = "9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a"
WRONG_TOKEN = "0123456789abcdef0123456789abcdef"


class Prometheus:
    """Debian's prometheus on 127.0.0.1:<unused port>, scraping one target
    every second as job "lb" with `Authorization: Bearer <credentials_file>`."""

    def __init__(self, target, credentials_file, timeout=20.0):
        self.dir = tempfile.mkdtemp(prefix="prometheus-")
        self.config_path = os.path.join(self.dir, "prometheus.yml")
        self.log_path = os.path.join(self.dir, "prometheus.log")
        with open(self.config_path, "w") as f:
            f.write(f"""
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: lb
    scheme: http
    metrics_path: /metrics
    authorization:
      type: Bearer
      credentials_file: {credentials_file}
    static_configs:
      - targets: ["{target}"]
""")
        self.proc = None
        self._log = None
        # The port is free when chosen but could be taken before prometheus
        # binds it: then prometheus exits and another port is tried.
        for _ in range(3):
            self.port = unused_port()
            self._start()
            if wait_until(lambda: self.ready() or not self.running(), timeout, 0.1) \
                    and self.running():
                return
            self.kill()
        raise RuntimeError("prometheus did not become ready; log:\n" + self.log_text()[-4000:])

    def _start(self):
        data = os.path.join(self.dir, "data-%d" % self.port)
        self._log = open(self.log_path, "ab")
        self.proc = harness._popen(
            [PROMETHEUS,
             "--config.file=" + self.config_path,
             "--storage.tsdb.path=" + data,
             "--storage.tsdb.retention.time=1h",
             "--web.listen-address=127.0.0.1:%d" % self.port,
             "--query.lookback-delta=1m",
             "--log.level=info"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log, cwd=self.dir)

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def ready(self):
        status, _, _ = http(self.port, "GET", "/-/ready", timeout=2)
        return status == 200

    def api(self, path, **params):
        status, _, body = http(self.port, "GET", "/api/v1/%s?%s"
                               % (path, urllib.parse.urlencode(params)), timeout=5)
        if status != 200:
            raise RuntimeError("prometheus %s: %d %r" % (path, status, body[:300]))
        doc = json.loads(body)
        if doc.get("status") != "success":
            raise RuntimeError("prometheus %s: %r" % (path, doc))
        return doc["data"]

    def query(self, promql):
        """Instant query -> [(labels, float value)]."""
        data = self.api("query", query=promql)
        if data["resultType"] != "vector":
            raise RuntimeError("%s: result type %s" % (promql, data["resultType"]))
        return [(r["metric"], float(r["value"][1])) for r in data["result"]]

    def scalar(self, promql):
        """The single value of a one-sample result, None when it is empty."""
        result = self.query(promql)
        if not result:
            return None
        if len(result) != 1:
            raise RuntimeError("%s: %d samples: %r" % (promql, len(result), result))
        return result[0][1]

    def target(self):
        """The lb job's active target from /api/v1/targets."""
        targets = [t for t in self.api("targets", state="active")["activeTargets"]
                   if t["labels"].get("job") == "lb"]
        if len(targets) != 1:
            raise RuntimeError("targets: %r" % targets)
        return targets[0]

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def kill(self):
        if self.proc is not None:
            harness.kill_and_wait(self.proc)
            harness._unregister(self.proc)
        if self._log is not None:
            self._log.close()
            self._log = None

    def cleanup(self):
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def config(origin, token_file):
    return f"""
workers: 2
access_log: {{ path: "off" }}
admin: {{ listen: 127.0.0.1:0, token_file: {token_file} }}
listeners:
  - name: public
    listen: 127.0.0.1:0
    routes: [ {{ match: {{ path_prefix: /app }}, pool: web }} ]
pools:
  web:
    backends: [ "{origin.addr}" ]
"""


class PrometheusScrape(harness.TestCase):
    def setUp(self):
        if not os.path.exists(PROMETHEUS):
            self.fail("%s is missing: install Debian's prometheus package (.ci/setup.sh does)"
                      % PROMETHEUS)
        self.dir = tempfile.mkdtemp(prefix="lb-prometheus-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.token_file = self.write("admin.token", TOKEN)
        self.origin_ = self.origin("web", log=False)
        self.lb_ = self.lb(config(self.origin_, self.token_file))

    def write(self, name, text):
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text + "\n")
        os.chmod(path, 0o600)
        return path

    def prometheus(self, credentials_file):
        p = Prometheus("127.0.0.1:%d" % self.lb_.admin_port, credentials_file)
        self.addCleanup(self._prometheus_cleanup, p)
        return p

    def _prometheus_cleanup(self, p):
        failed = self.failed_so_far()
        p.kill()
        if failed or os.environ.get("LB_TEST_VERBOSE"):
            sys.stderr.write("---- prometheus log (%s) ----\n%s\n"
                             % (self.id(), p.log_text()[-6000:]))
        p.cleanup()

    def lb_metric(self, name, **labels):
        status, _, body = self.lb_.admin("GET", "/metrics",
                                         headers={"Authorization": "Bearer " + TOKEN})
        self.assertEqual(status, 200, body)
        return harness.metric_value(body.decode(), name, **labels)

    def wait_for(self, promql, want, timeout=20.0):
        """Polls an instant query until its single value is `want`; returns
        the last value seen (None: no sample)."""
        seen = [None]

        def check():
            seen[0] = self.prom.scalar(promql)
            return seen[0] == want
        wait_until(check, timeout, 0.25)
        return seen[0]

    def test_scraped_request_count_is_exact(self):
        self.prom = self.prometheus(self.token_file)
        self.assertEqual(self.wait_for('up{job="lb"}', 1), 1, self.prom.target())
        self.assertIn(self.prom.scalar("sum(lb_requests_total)"), (None, 0))
        port = self.lb_.port()
        ok = not_found = 0
        for i in range(10):
            status, _, body = http(port, "GET", "/app/fresh/%d" % i)
            self.assertEqual(status, 200, body)
            ok += 1
        with KeepAliveClient(port) as c:
            for i in range(20):
                status, _, body = c.request("GET", "/app/kept/%d" % i)
                self.assertEqual(status, 200, body)
                ok += 1
            self.assertEqual(c.connects, 1)
        for i in range(7):
            status, _, _ = http(port, "GET", "/nope/%d" % i)
            self.assertEqual(status, 404)
            not_found += 1
        sent = ok + not_found
        self.assertEqual(sent, 37)
        self.assertEqual(self.lb_metric("lb_requests_total"), sent)

        got = self.wait_for("sum(lb_requests_total)", sent)
        self.assertEqual(got, sent, self.prom.query("lb_requests_total"))
        by_code = {labels["code"]: value for labels, value in
                   self.prom.query('sum by (code) (lb_requests_total{job="lb"})')}
        self.assertEqual(by_code, {"200": ok, "404": not_found})
        by_pool = {labels["pool"]: value for labels, value in
                   self.prom.query("sum by (pool) (lb_requests_total)")}
        self.assertEqual(by_pool, {"web": ok, "none": not_found})

        # More scrapes happen; they are admin requests and count nowhere.
        scrapes = self.prom.scalar('count_over_time(up{job="lb"}[1m])')
        self.assertTrue(wait_until(
            lambda: self.prom.scalar('count_over_time(up{job="lb"}[1m])') >= scrapes + 2,
            10, 0.25))
        self.assertEqual(self.prom.scalar("sum(lb_requests_total)"), sent)
        self.assertEqual(self.prom.scalar('up{job="lb"}'), 1)
        self.assertEqual(self.lb_metric("lb_requests_total"), sent)
        target = self.prom.target()
        self.assertEqual(target["health"], "up", target)
        self.assertEqual(target["lastError"], "", target)

    def test_wrong_token_is_refused(self):
        wrong = self.write("wrong.token", WRONG_TOKEN)
        self.prom = self.prometheus(wrong)
        for i in range(5):
            status, _, body = http(self.lb_.port(), "GET", "/app/%d" % i)
            self.assertEqual(status, 200, body)

        self.assertTrue(wait_until(lambda: self.prom.target()["health"] == "down", 15, 0.25),
                        self.prom.target())
        self.assertEqual(self.prom.scalar('up{job="lb"}'), 0)
        self.assertIn("401 Unauthorized", self.prom.target()["lastError"])
        # A few more scrapes, all refused: nothing of lb's is stored.
        time.sleep(2.5)
        self.assertEqual(self.prom.scalar('up{job="lb"}'), 0)
        self.assertEqual(self.prom.scalar('max_over_time(up{job="lb"}[1m])'), 0)
        self.assertEqual(self.prom.query("lb_requests_total"), [])
        self.assertEqual(self.prom.query('{__name__=~"lb_.+"}'), [])
        self.assertEqual(self.lb_metric("lb_requests_total"), 5)


if __name__ == "__main__":
    harness.main()
