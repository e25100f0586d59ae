#!/usr/bin/env python3
"""HTTPS termination on a listener with tls: certificates chosen by SNI (the
first one is the default), min_version, ALPN http/1.1, session resumption,
keep-alive and pipelining over TLS, large bodies, X-Forwarded-Proto: https, and
certificate errors reported by `lb check` at the YAML node.
"""

import hashlib
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402


def make_cert(directory, name, sans):
    cert = os.path.join(directory, name + ".pem")
    key = os.path.join(directory, name + ".key")
    san = ",".join("DNS:" + s for s in sans)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=" + sans[0], "-addext", "subjectAltName=" + san,
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    return cert, key


def der_of(pem_path):
    with open(pem_path) as f:
        return ssl.PEM_cert_to_DER_cert(f.read())


class Tls(harness.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="lb-tls-")
        cls.default = make_cert(cls.dir, "default", ["default.test"])
        cls.a = make_cert(cls.dir, "a", ["a.test"])
        cls.b = make_cert(cls.dir, "b", ["b.test", "*.b.test"])

    def config(self, min_version="1.2"):
        web = self.web
        return f"""
workers: 2
admin: {{ listen: 127.0.0.1:0 }}
access_log: {{ path: "off" }}
listeners:
  - name: public
    listen: 127.0.0.1:0
    tls:
      min_version: "{min_version}"
      certificates:
        - {{ cert: {self.default[0]}, key: {self.default[1]} }}
        - {{ cert: {self.a[0]}, key: {self.a[1]} }}
        - {{ cert: {self.b[0]}, key: {self.b[1]} }}
    limits: {{ max_body_bytes: 64MiB }}
    routes: [ {{ pool: web }} ]
pools:
  web:
    backends: [ "{web.addr}" ]
"""

    def setUp(self):
        self.web = self.origin("web")

    def client_context(self, maximum=None, minimum=None, alpn=None):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        if maximum:
            ctx.maximum_version = maximum
        if minimum:
            ctx.minimum_version = minimum
        if alpn:
            ctx.set_alpn_protocols(alpn)
        return ctx

    def connect(self, port, server_name, ctx=None, session=None):
        ctx = ctx or self.client_context()
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        return ctx.wrap_socket(raw, server_hostname=server_name, session=session)

    def exchange(self, conn, request):
        conn.sendall(request)
        return harness_read_response(conn)

    def test_sni_picks_the_certificate_and_unknown_gets_the_default(self):
        lb = self.lb(self.config())
        for name, expected in (("a.test", self.a), ("b.test", self.b), ("www.b.test", self.b),
                               ("unknown.test", self.default)):
            with self.connect(lb.port(), name) as c:
                self.assertEqual(c.getpeercert(binary_form=True), der_of(expected[0]), name)

    def test_keepalive_pipelining_and_forwarded_proto(self):
        lb = self.lb(self.config())
        with self.connect(lb.port(), "a.test") as c:
            for i in range(3):
                status, headers, body = self.exchange(c, b"GET /headers HTTP/1.1\r\nHost: a.test\r\n\r\n")
                self.assertEqual(status, 200)
                seen = json.loads(body)["headers"]
                self.assertIn(["X-Forwarded-Proto", "https"], seen)
            c.sendall(b"GET /one HTTP/1.1\r\nHost: a.test\r\n\r\nGET /two HTTP/1.1\r\nHost: a.test\r\n\r\n")
            first = harness_read_response(c)
            second = harness_read_response(c)
            self.assertEqual((first[0], second[0]), (200, 200))
        self.assertEqual(self.web.stats()["connections"], 1, "upstream keep-alive across TLS requests")

    def test_ten_mib_body_both_ways(self):
        lb = self.lb(self.config())
        data = os.urandom(10 * 1024 * 1024)
        with self.connect(lb.port(), "a.test") as c:
            c.sendall(b"POST /echo HTTP/1.1\r\nHost: a.test\r\nContent-Length: %d\r\n\r\n" % len(data))
            c.sendall(data)
            status, headers, body = harness_read_response(c)
        self.assertEqual(status, 200)
        self.assertEqual(hashlib.sha256(body).hexdigest(), hashlib.sha256(data).hexdigest())
        n = 10 * 1024 * 1024
        with self.connect(lb.port(), "b.test") as c:
            status, headers, body = self.exchange(c, b"GET /bytes/%d HTTP/1.1\r\nHost: b.test\r\n\r\n" % n)
        self.assertEqual((status, len(body)), (200, n))
        self.assertEqual(hashlib.sha256(body).hexdigest(), harness.pattern_sha256(n))

    def test_min_version(self):
        lb = self.lb(self.config(min_version="1.3"))
        with self.assertRaises(ssl.SSLError):
            with self.connect(lb.port(), "a.test",
                              self.client_context(maximum=ssl.TLSVersion.TLSv1_2)):
                pass
        with self.connect(lb.port(), "a.test") as c:
            self.assertEqual(c.version(), "TLSv1.3")
        lb12 = self.lb(self.config(min_version="1.2"))
        with self.connect(lb12.port(), "a.test",
                          self.client_context(maximum=ssl.TLSVersion.TLSv1_2)) as c:
            self.assertEqual(c.version(), "TLSv1.2")
        # TLS 1.1 is refused (whatever the client library would allow).
        ctx = self.client_context(maximum=ssl.TLSVersion.TLSv1_1)
        try:
            ctx.minimum_version = ssl.TLSVersion.TLSv1
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        except (ValueError, ssl.SSLError):
            pass
        with self.assertRaises((ssl.SSLError, OSError)):
            with self.connect(lb12.port(), "a.test", ctx):
                pass
        self.assertTrue(lb12.running())

    def test_alpn_and_resumption(self):
        lb = self.lb(self.config(min_version="1.2"))
        # h2 first when the client offers it (an HTTP/2 listener, the default);
        # http/1.1 for a client that offers only that.
        with self.connect(lb.port(), "a.test",
                          self.client_context(alpn=["http/1.1", "h2"])) as c:
            self.assertEqual(c.selected_alpn_protocol(), "h2")
        ctx = self.client_context(maximum=ssl.TLSVersion.TLSv1_2, alpn=["http/1.1"])
        with self.connect(lb.port(), "a.test", ctx) as c:
            self.assertEqual(c.selected_alpn_protocol(), "http/1.1")
            self.assertEqual(self.exchange(c, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")[0], 200)
            session = c.session
        with self.connect(lb.port(), "a.test", ctx, session=session) as c:
            self.assertTrue(c.session_reused, "TLS session was not resumed")

    def test_plain_http_to_a_tls_listener_is_closed(self):
        lb = self.lb(self.config())
        got = harness.raw(lb.port(), b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", timeout=3)
        self.assertFalse(got.startswith(b"HTTP/1.1 200"), got[:80])
        self.assertEqual(self.web.stats()["requests"], 0)

    def test_lb_check_reports_certificate_errors_at_the_node(self):
        missing = os.path.join(self.dir, "missing.key")
        yaml_text = f"""
listeners:
  - name: public
    listen: 127.0.0.1:0
    tls:
      certificates:
        - cert: {self.a[0]}
          key: {missing}
        - cert: {self.a[0]}
          key: {self.b[1]}
    routes: [ {{ pool: web }} ]
pools:
  web: {{ backends: [ "127.0.0.1:1" ] }}
"""
        code, output, path = harness.lb_check(yaml_text)
        self.assertEqual(code, 1, output)
        self.assertIn("%s:8:16: key: cannot read %s" % (path, missing), output)
        self.assertIn("%s:10:16: key: %s does not match the certificate" % (path, self.b[1]), output)


class Reader:
    """Reads responses (Content-Length framed) from a TLS socket, keeping what
    arrives past one response for the next (pipelining)."""

    def __init__(self, conn):
        self.conn = conn
        self.buf = b""

    def fill(self):
        chunk = self.conn.recv(1 << 20)
        if not chunk:
            raise ConnectionError("closed mid-response: %r" % self.buf[:200])
        self.buf += chunk

    def response(self):
        while b"\r\n\r\n" not in self.buf:
            self.fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
        n = int(headers.get("content-length", "0"))
        while len(self.buf) < n:
            self.fill()
        body, self.buf = self.buf[:n], self.buf[n:]
        return status, headers, body


_readers = {}


def harness_read_response(conn):
    reader = _readers.get(id(conn))
    if reader is None or reader.conn is not conn:
        reader = _readers[id(conn)] = Reader(conn)
    return reader.response()


if __name__ == "__main__":
    harness.main()
