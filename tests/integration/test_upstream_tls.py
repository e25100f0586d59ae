#!/usr/bin/env python3
"""HTTPS toward backends (pool `tls:`), against origins speaking TLS with
certificates this test makes (openssl CLI): a test CA, and a leaf for
app.test and 127.0.0.1 signed by it.

- verified by name (`sni: app.test`): GETs answered, the origin saw SNI
  app.test, keep-alive reuse (far fewer TLS connections than requests), a
  1 MiB body intact both ways, and the HTTP health check runs over TLS;
- verified by IP address (no `sni`): the leaf's IP SAN matches;
- a name the certificate does not have: 502 naming the verify failure, and
  `verify: false` accepts it;
- a plain-HTTP backend behind a `tls:` pool: 502 "TLS handshake ... timed
  out" at the connect timeout;
- `lb check` reports an unreadable or bad `ca` at its node.
"""

import hashlib
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import KeepAliveClient, http, lb_check, wait_until  # noqa: E402


class UpstreamTls(harness.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="lb-upstream-tls-")
        cls.ca, cls.cert, cls.key = harness.make_ca_and_leaf(cls.dir)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir, ignore_errors=True)

    def tls_origin(self, name):
        return self.origin(name, extra_args=["--tls-cert", self.cert, "--tls-key", self.key])

    def origin_stats(self, origin):
        ctx = ssl.create_default_context(cafile=self.ca)
        data = harness.tls_exchange(
            origin.port, b"GET /__origin/stats HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
            ctx, "app.test")
        return json.loads(data.split(b"\r\n\r\n", 1)[1])

    def config(self, origin, tls, check=False, check_path="/healthz"):
        extra = ("    health_check: { path: %s, interval: 300ms, timeout: 250ms }\n" % check_path
                 if check else "")
        return f"""
workers: 2
access_log: {{ path: "off" }}
admin: {{ listen: 127.0.0.1:0 }}
listeners:
  - name: public
    listen: 127.0.0.1:0
    routes: [ {{ pool: app }} ]
pools:
  app:
    retries: 0
    tls: {tls}
{extra}    backends: [ "{origin.addr}" ]
"""

    def test_check_reads_past_interim_responses(self):
        # 60 interim responses (103 Early Hints, ~4 KiB) before the 200, read
        # over TLS: the final status decides.
        o = self.tls_origin("tls-hints")
        lb = self.lb(self.config(o, "{ ca: %s, sni: app.test }" % self.ca, check=True,
                                 check_path='"/healthz?hints=60"'))
        self.assertTrue(wait_until(
            lambda: lb.metric("lb_backend_healthy", pool="app", backend=o.addr) == 1, timeout=10),
            "the HTTPS health check never passed:\n" + lb.stderr_text())
        self.assertIn("GET /healthz?hints=60: status 200", lb.stderr_text())
        self.assertEqual(lb.metric("lb_health_checks_total", pool="app", backend=o.addr,
                                   result="fail"), 0)

    def test_verified_by_name_keep_alive_bodies_and_checks(self):
        o = self.tls_origin("tls1")
        lb = self.lb(self.config(o, "{ ca: %s, sni: app.test }" % self.ca, check=True))
        port = lb.port()
        self.assertTrue(wait_until(
            lambda: lb.metric("lb_backend_healthy", pool="app", backend=o.addr) == 1, timeout=10),
            "the HTTPS health check never passed:\n" + lb.stderr_text())
        with KeepAliveClient(port) as c:
            for _ in range(30):
                status, _, body = c.request("GET", "/")
                self.assertEqual((status, body), (200, b"Hello from tls1\n"))
            payload = os.urandom(1 << 20)
            status, headers, body = c.request("POST", "/echo", body=payload)
            self.assertEqual(status, 200)
            self.assertEqual(hashlib.sha256(body).hexdigest(), hashlib.sha256(payload).hexdigest())
            status, headers, body = c.request("GET", "/bytes/%d" % (1 << 20))
            self.assertEqual((status, len(body)), (200, 1 << 20))
            self.assertEqual(hashlib.sha256(body).hexdigest(), headers["X-Body-Sha256"])
        stats = self.origin_stats(o)
        self.assertIn("app.test", stats["tls_server_names"])
        # 32 requests from lb plus its health checks (a connection each).
        checks = stats["paths"].get("/healthz", 0)
        self.assertLessEqual(stats["connections"] - checks, 4, stats)
        self.assertEqual(lb.metric("lb_upstream_requests_total", pool="app", backend=o.addr,
                                   code="200"), 32)

    def test_verified_by_ip_address(self):
        o = self.tls_origin("tls2")
        lb = self.lb(self.config(o, "{ ca: %s }" % self.ca))
        self.assertEqual(http(lb.port(), "GET", "/")[0::2], (200, b"Hello from tls2\n"))

    def test_wrong_name_is_refused_unless_verify_is_off(self):
        o = self.tls_origin("tls3")
        lb = self.lb(self.config(o, "{ ca: %s, sni: other.test }" % self.ca))
        status, _, body = http(lb.port(), "GET", "/")
        self.assertEqual(status, 502, body)
        self.assertIn(b"certificate verify failed", body)
        self.assertIn(b"TLS handshake with %s failed" % o.addr.encode(), body)
        lb2 = self.lb(self.config(o, "{ verify: false, sni: other.test }"))
        self.assertEqual(http(lb2.port(), "GET", "/")[0::2], (200, b"Hello from tls3\n"))
        # The system trust store does not know the test CA.
        lb3 = self.lb(self.config(o, "{ sni: app.test }"))
        status, _, body = http(lb3.port(), "GET", "/")
        self.assertEqual(status, 502, body)
        self.assertIn(b"certificate verify failed", body)

    def test_tls_settings_changed_by_a_reload_apply_to_pooled_connections(self):
        o = self.tls_origin("tls4")
        lb = self.lb(self.config(o, "{ verify: false, sni: other.test }"))
        with KeepAliveClient(lb.port()) as c:
            for _ in range(5):
                self.assertEqual(c.request("GET", "/")[0::2], (200, b"Hello from tls4\n"))
            # Verification turned on: the name does not match, and the pooled
            # unverified connections must not be used any more.
            lb.write_config(self.config(o, "{ ca: %s, sni: other.test }" % self.ca))
            status, _, body = lb.admin("POST", "/reload")
            self.assertEqual(status, 200, body)
            status, _, body = c.request("GET", "/")
            self.assertEqual(status, 502, body)
            self.assertIn(b"certificate verify failed", body)

    def test_plain_backend_behind_a_tls_pool(self):
        o = self.origin("plain")
        lb = self.lb(self.config(o, "{ verify: false }").replace("retries: 0", "retries: 0\n    timeouts: { connect: 500ms }"))
        started = time.time()
        status, _, body = http(lb.port(), "GET", "/")
        self.assertEqual(status, 502, body)
        # The origin waits for the end of a "request head" that never comes:
        # the handshake ends at the connect timeout.
        self.assertIn(b"TLS handshake with %s timed out" % o.addr.encode(), body)
        self.assertLess(time.time() - started, 3)

    def test_lb_check_reports_a_bad_ca_at_its_node(self):
        bad = os.path.join(self.dir, "not-a-ca.pem")
        with open(bad, "w") as f:
            f.write("hello\n")
        base = self.config(types.SimpleNamespace(addr="127.0.0.1:1"), "TLS")
        for ca, message in ((os.path.join(self.dir, "missing.pem"), "ca: cannot read"),
                            (bad, "ca: .*not-a-ca.pem holds no PEM certificate")):
            code, out, path = lb_check(base.replace("TLS", "{ ca: %s }" % ca))
            self.assertEqual(code, 1, out)
            self.assertRegex(out, r"lb\.yaml:12:16: " + message, out)


if __name__ == "__main__":
    harness.main()
