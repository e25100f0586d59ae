#!/usr/bin/env python3
"""Who gets into the admin API.

- admin.token_file: without the token (or with a wrong one, Bearer or
  Basic) every endpoint but /healthz answers 401 with WWW-Authenticate, and
  nothing changes: a drain, a weight, a reload are not applied; an unknown
  pool gets the same 401 as a known one (nothing is said about what exists);
  with the token (Bearer, or Basic with the token as the password, as a
  browser sends it after its prompt) everything works;
- DNS rebinding: a request whose Host is a name that is no IP literal, not
  localhost and not in admin.allowed_hosts (what a web page on evil.example
  sends once it rebinds its name to 127.0.0.1, with a matching Origin) is
  refused with 421 and drains nothing; IP literals, localhost and the
  allowed names are answered;
- lb check refuses an admin listener on a non-loopback address without a
  token, and a token file that is missing, empty or too short.
"""

import base64
import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import http, lb_check  # noqa: E402

TOKEN = "4f1c2d9e8b7a6f5e4d3c2b1a0f9e8d7c"


def config(origin, admin_extra=""):
    return f"""
workers: 1
access_log: {{ path: "off" }}
admin: {{ listen: 127.0.0.1:0{admin_extra} }}
listeners:
  - name: public
    listen: 127.0.0.1:0
    routes: [ {{ pool: web }} ]
pools:
  web:
    backends: [ "{origin.addr}" ]
"""


def bearer(token=TOKEN):
    return {"Authorization": "Bearer " + token}


def basic(user, password):
    return {"Authorization": "Basic " + base64.b64encode(
        ("%s:%s" % (user, password)).encode()).decode()}


class AdminToken(harness.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="lb-admin-token-")
        cls.token_file = os.path.join(cls.dir, "admin.token")
        with open(cls.token_file, "w") as f:
            f.write(TOKEN + "\n")
        os.chmod(cls.token_file, 0o600)
        cls.origin = harness.Origin("web", log=False)
        cls.lb = harness.Lb(config(cls.origin, ", token_file: %s, allowed_hosts: [lb1.internal]"
                                   % cls.token_file))
        cls.addr = cls.origin.addr

    @classmethod
    def tearDownClass(cls):
        cls.lb.cleanup()
        cls.origin.cleanup()
        shutil.rmtree(cls.dir, ignore_errors=True)

    def admin(self, method, path, headers=None, body=None):
        return self.lb.admin(method, path, headers=headers, body=body)

    def backend(self):
        status, _, body = self.admin("GET", "/status", headers=bearer())
        self.assertEqual(status, 200, body)
        return json.loads(body)["pools"][0]["backends"][0]

    def test_without_the_token_401_and_nothing_changes(self):
        before = self.backend()
        drain = "/pools/web/backends/%s/drain" % self.addr
        for method, path, body in [("GET", "/status", None), ("GET", "/metrics", None),
                                   ("GET", "/", None), ("POST", drain, None),
                                   ("PUT", "/pools/web/backends/%s/weight" % self.addr, "7"),
                                   ("POST", "/reload", None),
                                   ("POST", "/pools/nope/backends/10.0.0.1:80/drain", None),
                                   ("GET", "/no-such-endpoint", None)]:
            for headers in [None, bearer("wrong-" + TOKEN), basic("admin", "wrong"),
                            {"Authorization": "Bearer"}, {"Authorization": "Basic !!!!"},
                            bearer(TOKEN + "x"), basic("admin", TOKEN[:-1])]:
                with self.subTest(method=method, path=path, headers=headers):
                    status, h, text = self.admin(method, path, headers=headers, body=body)
                    self.assertEqual(status, 401, text)
                    challenges = h.get_all("WWW-Authenticate") or []
                    self.assertTrue(any(c.startswith("Basic ") for c in challenges), challenges)
                    # Nothing about what exists.
                    self.assertNotIn(b"web", text)
                    self.assertNotIn(b"nope", text)
        after = self.backend()
        self.assertEqual((after["drained"], after["weight"]), (before["drained"], before["weight"]))
        status, _, text = self.admin("GET", "/metrics", headers=bearer())
        self.assertEqual(harness.metric_value(text.decode(), "lb_config_reloads_total"), 0)
        # /healthz stays open: an outer balancer's check has no token.
        status, _, text = self.admin("GET", "/healthz")
        self.assertEqual((status, text), (200, b"ok\n"))

    def test_with_the_token_everything_works(self):
        status, _, text = self.admin("GET", "/metrics", headers=bearer())
        self.assertEqual(status, 200)
        self.assertIn(b"lb_requests_total", text)
        # Basic with the token as the password (any user name): what a browser sends.
        status, _, text = self.admin("GET", "/", headers=basic("ops", TOKEN))
        self.assertEqual(status, 200)
        self.assertIn(b"<html", text.lower())
        drain = "/pools/web/backends/%s/drain" % self.addr
        status, _, text = self.admin("POST", drain, headers=bearer())
        self.assertEqual(status, 200, text)
        self.assertTrue(self.backend()["drained"])
        status, _, text = self.admin("POST", drain.replace("drain", "enable"),
                                     headers=basic("", TOKEN))
        self.assertEqual(status, 200, text)
        self.assertFalse(self.backend()["drained"])
        # With the token, an unknown pool is named as such.
        status, _, text = self.admin("POST", "/pools/nope/backends/10.0.0.1:80/drain",
                                     headers=bearer())
        self.assertEqual(status, 404, text)

    def test_allowed_host_names(self):
        port = self.lb.admin_port
        for host in ["lb1.internal", "LB1.internal:%d" % port, "localhost:%d" % port,
                     "127.0.0.1:%d" % port, "[::1]:%d" % port]:
            with self.subTest(host=host):
                status, _, text = self.admin("GET", "/status", headers=dict(bearer(), Host=host))
                self.assertEqual(status, 200, text)
        status, _, text = self.admin("GET", "/status",
                                     headers=dict(bearer(), Host="lb2.internal:%d" % port))
        self.assertEqual(status, 421, text)


class DnsRebinding(harness.TestCase):
    """No token (the default, on loopback): the Host check alone keeps a web
    page that rebinds its name to 127.0.0.1 from driving the API."""

    def test_rebound_name_is_refused(self):
        origin = harness.Origin("web", log=False)
        lb = None
        try:
            lb = harness.Lb(config(origin))
            port = lb.admin_port
            drain = "/pools/web/backends/%s/drain" % origin.addr
            evil = {"Host": "evil.example:%d" % port, "Origin": "http://evil.example:%d" % port}
            for method, path in [("POST", drain), ("GET", "/status"), ("GET", "/metrics"),
                                 ("POST", "/reload")]:
                status, _, text = lb.admin(method, path, headers=evil)
                self.assertEqual(status, 421, (method, path, text))
            backend = lb.status_json()["pools"][0]["backends"][0]
            self.assertFalse(backend["drained"], "a rebound request drained the backend")
            # The operator's own requests (by address) still work.
            status, _, text = lb.admin("POST", drain)
            self.assertEqual(status, 200, text)
        finally:
            if lb is not None:
                lb.cleanup()
            origin.cleanup()


class AdminCheck(harness.TestCase):
    def check(self, admin_yaml, token_text=None):
        d = tempfile.mkdtemp(prefix="lb-admin-check-")
        try:
            token_file = os.path.join(d, "admin.token")
            if token_text is not None:
                with open(token_file, "w") as f:
                    f.write(token_text)
            yaml = f"""
admin:
{admin_yaml.replace("TOKEN_FILE", token_file)}
listeners:
  - name: public
    listen: 127.0.0.1:0
    routes: [ {{ pool: web }} ]
pools:
  web:
    backends: [ 127.0.0.1:9 ]
"""
            code, out, path = lb_check(yaml)
            return code, out.replace(path, "FILE").replace(token_file, "TOKEN_FILE")
        finally:
            shutil.rmtree(d, ignore_errors=True)

    def test_public_admin_needs_a_token(self):
        code, out = self.check("  listen: 0.0.0.0:9901")
        self.assertEqual(code, 1, out)
        self.assertIn("FILE:3:11: admin.listen: 0.0.0.0:9901 is not a loopback address: set "
                      "admin.token_file", out)
        code, out = self.check("  listen: \"[::]:9901\"")
        self.assertEqual(code, 1, out)
        code, out = self.check("  listen: 0.0.0.0:9901\n  token_file: TOKEN_FILE", TOKEN + "\n")
        self.assertEqual((code, out.strip()), (0, "ok"))
        code, out = self.check("  listen: 127.0.0.1:9901")
        self.assertEqual((code, out.strip()), (0, "ok"))

    def test_bad_token_files(self):
        code, out = self.check("  listen: 127.0.0.1:9901\n  token_file: TOKEN_FILE")
        self.assertEqual(code, 1, out)
        self.assertIn("FILE:4:15: token_file: cannot read TOKEN_FILE: No such file or directory",
                      out)
        code, out = self.check("  listen: 127.0.0.1:9901\n  token_file: TOKEN_FILE", "\n")
        self.assertIn("TOKEN_FILE holds no token", out)
        code, out = self.check("  listen: 127.0.0.1:9901\n  token_file: TOKEN_FILE", "short\n")
        self.assertIn("a token shorter than 16 characters", out)
        code, out = self.check("  listen: 127.0.0.1:9901\n  allowed_hosts: [\"bad name\"]")
        self.assertIn("allowed_hosts: expected a host name like lb1.internal, got 'bad name'", out)


if __name__ == "__main__":
    harness.main()
