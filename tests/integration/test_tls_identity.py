#!/usr/bin/env python3
"""TLS identity on a listener: client certificates (mTLS) and certificate
rotation, as clients (real curl, Python ssl sockets) and the origins see them.

- client_verify: required: curl with a certificate from the listener's
  client_ca gets a 200 and the origin sees X-Forwarded-Client-Cert in Envoy's
  format, exactly: Hash=<sha256 of the certificate's DER, lower-case hex>;
  Subject="<RFC 2253 subject>";URI=<SAN URI>;DNS=<SAN DNS name>;
- required: no certificate, or one issued by another CA, fails the handshake
  (curl exits non-zero) and no request reaches the origin;
- client_verify: optional: without a certificate the request goes through and
  the origin sees no X-Forwarded-Client-Cert, with one it sees it; a
  certificate from another CA is still refused;
- a client's own X-Forwarded-Client-Cert never reaches the origin: removed on
  a plain HTTP listener and from anonymous clients of an optional listener,
  replaced by lb's single value on an mTLS connection (HTTP/1.1 and HTTP/2);
- HTTP/2 (curl --http2 with a client certificate) delivers the header too;
- a route `match: { client_cert: true }` before a catch-all: clients with a
  verified certificate go to one pool, anonymous ones fall through to the other;
- `lb check` refuses client_verify without client_ca, a client_ca that does not
  exist, match.client_cert on a listener without client_ca, a route that sets
  X-Forwarded-Client-Cert itself, and a client_verify that is neither required
  nor optional, each with FILE:LINE:COL (a valid mTLS config passes);
- rotation on reload: cert/key files replaced in place (same paths, new
  serial) and a reload: new handshakes get the new certificate, a keep-alive
  connection opened before keeps working (and keeps the old one); a reload
  whose certificate file is garbage is refused and the old certificate serves;
- tls.watch: true: cert and key replaced by rename (key first, then cert) are
  served to new handshakes within ~5 s without a reload, every handshake in
  between succeeds, an open keep-alive connection keeps working; without watch
  the certificate does not change when its files do;
- reloads and client certificates: a keep-alive mTLS connection (client_verify:
  required, Python ssl with a client certificate) opened before a reload of
  the same config gets its next request answered (200, the origin still sees
  X-Forwarded-Client-Cert) with Connection: close, and lb closes it afterwards
  (the client shakes hands again against the client_ca now in force); a new
  connection with the certificate works. Without client_ca a reload closes
  no keep-alive connection: no Connection: close, further requests work.
"""

import hashlib
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import http, lb_check, wait_until  # noqa: E402

XFCC = "X-Forwarded-Client-Cert"
SERVER_NAME = "lb.test"


# ---------------------------------------------------------------------------
# certificates (openssl command line, P-256 keys: quick to make)

def openssl(*args, cwd=None):
    r = subprocess.run(["openssl", *args], stdin=subprocess.DEVNULL, capture_output=True,
                       cwd=cwd, timeout=30)
    if r.returncode != 0:
        raise RuntimeError("openssl %s failed: %s" % (" ".join(args),
                                                       r.stderr.decode(errors="replace")))
    return r.stdout


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


def make_ca(directory, name, common_name):
    """A self-signed CA -> (cert path, key path)."""
    cert, key = os.path.join(directory, name + ".pem"), os.path.join(directory, name + ".key")
    cnf = write(os.path.join(directory, name + ".cnf"), """
[req]
distinguished_name = dn
x509_extensions = v3_ca
prompt = no
[dn]
CN = unused
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
""")
    openssl("req", "-x509", "-config", cnf, "-newkey", "ec", "-pkeyopt",
            "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj", "/CN=" + common_name,
            "-keyout", key, "-out", cert)
    return cert, key


def make_client_cert(directory, name, ca, subject, sans, serial):
    """A client certificate issued by `ca` (cert, key) -> (cert path, key path)."""
    cert, key = os.path.join(directory, name + ".pem"), os.path.join(directory, name + ".key")
    csr = os.path.join(directory, name + ".csr")
    ext = write(os.path.join(directory, name + ".ext"), """
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectAltName = %s
""" % ",".join(sans))
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-subj", subject, "-keyout", key, "-out", csr)
    openssl("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-set_serial",
            str(serial), "-days", "2", "-sha256", "-extfile", ext, "-out", cert)
    return cert, key


def make_server_cert(directory, name, serial):
    """A self-signed certificate for SERVER_NAME with serial `serial`."""
    cert, key = os.path.join(directory, name + ".pem"), os.path.join(directory, name + ".key")
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-days", "2", "-set_serial", str(serial), "-subj", "/CN=" + SERVER_NAME,
            "-addext", "subjectAltName=DNS:" + SERVER_NAME, "-keyout", key, "-out", cert)
    return cert, key


def der_of(pem_path):
    """The certificate's DER, as `openssl x509 -outform der` writes it."""
    return openssl("x509", "-in", pem_path, "-outform", "der")


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


class Certs:
    """Made once for the module."""
    dir = None


def setUpModule():
    d = Certs.dir = tempfile.mkdtemp(prefix="lb-tls-identity-")
    Certs.server = make_server_cert(d, "server", 1)
    Certs.ca = make_ca(d, "client-ca", "Example Client CA")
    Certs.other_ca = make_ca(d, "other-ca", "Other Client CA")
    Certs.alice = make_client_cert(d, "alice", Certs.ca, "/CN=alice/O=Example",
                                   ["DNS:alice.example", "URI:spiffe://example/alice"], 4242)
    Certs.mallory = make_client_cert(d, "mallory", Certs.other_ca, "/CN=mallory/O=Example",
                                     ["DNS:mallory.example"], 4343)
    Certs.alice_hash = hashlib.sha256(der_of(Certs.alice[0])).hexdigest()
    Certs.alice_xfcc = ('Hash=%s;Subject="O=Example,CN=alice";URI=spiffe://example/alice;'
                        'DNS=alice.example' % Certs.alice_hash)
    # Two certificates for one name, told apart by serial (and key).
    Certs.rot_a = make_server_cert(d, "rot-a", 1001)
    Certs.rot_b = make_server_cert(d, "rot-b", 2002)


def tearDownModule():
    if Certs.dir:
        shutil.rmtree(Certs.dir, ignore_errors=True)


# ---------------------------------------------------------------------------
# clients

def curl(port, path, *args, http_version="--http1.1", cert=None):
    """curl https://lb.test:PORT/PATH (resolved to 127.0.0.1, lb's certificate
    trusted) -> (exit code, HTTP status or 0, HTTP version, stderr)."""
    cmd = ["curl", "-sS", "--max-time", "10", http_version,
           "--resolve", "%s:%d:127.0.0.1" % (SERVER_NAME, port), "--cacert", Certs.server[0],
           "-o", "/dev/null", "-w", "%{http_code} %{http_version}"]
    if cert:
        cmd += ["--cert", cert[0], "--key", cert[1]]
    cmd += list(args) + ["https://%s:%d%s" % (SERVER_NAME, port, path)]
    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=20)
    out = r.stdout.decode(errors="replace").split()
    status = int(out[0]) if out and out[0].isdigit() else 0
    version = out[1] if len(out) > 1 else ""
    return r.returncode, status, version, r.stderr.decode(errors="replace").strip()


def values_seen(origin, target, name=XFCC):
    """Values of header `name` in the one request with `target` the origin logged."""
    entries = [e for e in origin.log_entries() if e["target"] == target]
    if len(entries) != 1:
        raise AssertionError("origin %s logged %d requests for %s (want 1): %r"
                             % (origin.name, len(entries), target,
                                [e["target"] for e in origin.log_entries()]))
    return [v for k, v in entries[0]["headers"] if k.lower() == name.lower()]


def client_context(alpn=("http/1.1",), cert=None):
    """cert: (cert path, key path) to present as a client certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    if cert:
        ctx.load_cert_chain(cert[0], cert[1])
    return ctx


class TlsConn:
    """One TLS connection to lb speaking HTTP/1.1 keep-alive (Content-Length framed)."""

    def __init__(self, port, timeout=10, cert=None):
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        try:
            self.sock = client_context(cert=cert).wrap_socket(raw, server_hostname=SERVER_NAME)
        except BaseException:
            raw.close()
            raise
        self.buf = b""

    def peer_der(self):
        return self.sock.getpeercert(binary_form=True)

    def _fill(self):
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("closed by lb; got %r" % self.buf[:200])
        self.buf += chunk

    def get(self, path):
        """GET path on this connection -> (status, {header: value}, body)."""
        self.sock.sendall(b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path.encode(),
                                                                    SERVER_NAME.encode()))
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        n = int(headers.get("content-length", "0"))
        while len(self.buf) < n:
            self._fill()
        body, self.buf = self.buf[:n], self.buf[n:]
        return status, headers, body

    def closed_by_peer(self, timeout=5.0):
        """True if lb closes the connection (EOF, close_notify or a reset)
        within `timeout` without sending anything more."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1 << 16) == b""
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError, ConnectionError):
            return True
        except (socket.timeout, TimeoutError):
            return False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def handshake_der(port):
    """The certificate lb presents to a new handshake (DER)."""
    c = TlsConn(port, timeout=5)
    try:
        return c.peer_der()
    finally:
        c.close()


def yaml_position(text, needle, value=True):
    """1-based (line, column) of `needle` in text (of the value after it with
    value=True: needle is then "key:")."""
    for n, line in enumerate(text.split("\n"), start=1):
        i = line.find(needle)
        if i >= 0:
            if value:
                i += len(needle)
                while line[i] == " ":
                    i += 1
            return n, i + 1
    raise AssertionError("%r not in the config" % needle)


def reload_and_wait(test, lb, result):
    """SIGHUP, then waits until lb counts one more reload with `result`."""
    before = lb.metric("lb_config_reloads_total", result=result)
    lb.reload()
    test.assertTrue(wait_until(
        lambda: lb.metric("lb_config_reloads_total", result=result) == before + 1,
        timeout=10), "no reload %s counted; stderr:\n%s" % (result, lb.stderr_text()[-2000:]))


PREAMBLE = """workers: 2
access_log: { path: "off" }
admin: { listen: 127.0.0.1:0 }
"""


def tls_block(client_verify=None, cert=None, extra=""):
    cert = cert or Certs.server
    lines = ["    tls:",
             '      certificates: [ { cert: "%s", key: "%s" } ]' % cert]
    if client_verify:
        lines.append('      client_ca: "%s"' % Certs.ca[0])
        lines.append("      client_verify: %s" % client_verify)
    if extra:
        lines.append("      " + extra)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------

class ClientCertificates(harness.TestCase):
    def setUp(self):
        self.web = self.origin("web")

    def start(self, client_verify="required", routes=None, pools=None):
        """lb with listeners "public" (TLS, client certificates as asked) and
        "plain" (HTTP), both routed to pool web unless `routes` says otherwise."""
        routes = routes or "[ { pool: web } ]"
        pools = pools or '  web: { backends: [ "%s" ] }\n' % self.web.addr
        return self.lb(PREAMBLE + """listeners:
  - name: public
    listen: 127.0.0.1:0
""" + tls_block(client_verify) + """    routes: %s
  - name: plain
    listen: 127.0.0.1:0
    routes: [ { pool: web } ]
pools:
""" % routes + pools)

    def assert_ok(self, result, what):
        rc, status, version, err = result
        self.assertEqual((rc, status), (0, 200), "%s: curl exit %d, status %d: %s"
                         % (what, rc, status, err))

    def test_required_forwards_the_verified_identity(self):
        lb = self.start("required")
        self.assert_ok(curl(lb.port(), "/req/alice", cert=Certs.alice), "alice")
        self.assertEqual(values_seen(self.web, "/req/alice"), [Certs.alice_xfcc])
        # The same on a second request of a keep-alive connection (two URLs, one curl).
        r = subprocess.run(
            ["curl", "-sS", "--max-time", "10", "--http1.1", "--resolve",
             "%s:%d:127.0.0.1" % (SERVER_NAME, lb.port()), "--cacert", Certs.server[0],
             "--cert", Certs.alice[0], "--key", Certs.alice[1], "-o", "/dev/null",
             "-o", "/dev/null", "-w", "%{http_code} %{num_connects}\n",
             "https://%s:%d/req/ka1" % (SERVER_NAME, lb.port()),
             "https://%s:%d/req/ka2" % (SERVER_NAME, lb.port())],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=20)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.decode().split(), ["200", "1", "200", "0"],
                         "two requests over one connection")
        for target in ("/req/ka1", "/req/ka2"):
            self.assertEqual(values_seen(self.web, target), [Certs.alice_xfcc], target)

    def test_required_refuses_no_certificate_and_a_foreign_one(self):
        lb = self.start("required")
        rc, status, _, err = curl(lb.port(), "/req/none")
        self.assertNotEqual(rc, 0, "no client certificate: curl got status %d" % status)
        self.assertEqual(status, 0)
        rc, status, _, err = curl(lb.port(), "/req/mallory", cert=Certs.mallory)
        self.assertNotEqual(rc, 0, "a certificate of another CA: curl got status %d" % status)
        self.assertEqual(status, 0)
        # Python's ssl too: no certificate -> the handshake (or the first read) fails.
        with self.assertRaises((ssl.SSLError, ConnectionError, OSError)):
            c = TlsConn(lb.port(), timeout=5)
            try:
                c.get("/req/python-none")
            finally:
                c.close()
        # A good client afterwards: it is the only request the origin ever saw.
        self.assert_ok(curl(lb.port(), "/req/after", cert=Certs.alice), "alice")
        self.assertEqual([e["target"] for e in self.web.log_entries()], ["/req/after"])
        self.assertTrue(lb.running())

    def test_optional_anonymous_gets_through_without_the_header(self):
        lb = self.start("optional")
        self.assert_ok(curl(lb.port(), "/opt/anon"), "anonymous")
        self.assertEqual(values_seen(self.web, "/opt/anon"), [])
        self.assert_ok(curl(lb.port(), "/opt/alice", cert=Certs.alice), "alice")
        self.assertEqual(values_seen(self.web, "/opt/alice"), [Certs.alice_xfcc])
        # A certificate that does not verify is refused even when optional.
        rc, status, _, err = curl(lb.port(), "/opt/mallory", cert=Certs.mallory)
        self.assertNotEqual(rc, 0, "a certificate of another CA: curl got status %d" % status)
        self.assertEqual(self.web.requests_seen("/opt/mallory"), 0)

    def test_forged_header_never_reaches_the_origin(self):
        lb = self.start("optional")
        forged = "Hash=evil;Subject=\"CN=root\""
        # Plain HTTP listener: removed, whatever its spelling, however often sent.
        status, _, body = http(lb.port("plain"), "GET", "/forged/plain",
                               headers=[(XFCC, forged), ("x-forwarded-client-cert", "Hash=evil2")])
        self.assertEqual(status, 200, body)
        self.assertEqual(values_seen(self.web, "/forged/plain"), [])
        # TLS listener, anonymous client: removed.
        self.assert_ok(curl(lb.port(), "/forged/anon", "-H", "%s: %s" % (XFCC, forged)),
                       "anonymous")
        self.assertEqual(values_seen(self.web, "/forged/anon"), [])
        # mTLS client: exactly one field, lb's.
        self.assert_ok(curl(lb.port(), "/forged/alice", "-H", "%s: %s" % (XFCC, forged),
                            cert=Certs.alice), "alice")
        self.assertEqual(values_seen(self.web, "/forged/alice"), [Certs.alice_xfcc])
        # The same over HTTP/2.
        rc, status, version, err = curl(lb.port(), "/forged/alice-h2", "-H",
                                        "%s: %s" % (XFCC, forged), http_version="--http2",
                                        cert=Certs.alice)
        self.assertEqual((rc, status, version), (0, 200, "2"), err)
        self.assertEqual(values_seen(self.web, "/forged/alice-h2"), [Certs.alice_xfcc])
        rc, status, version, err = curl(lb.port(), "/forged/anon-h2", "-H",
                                        "%s: %s" % (XFCC, forged), http_version="--http2")
        self.assertEqual((rc, status, version), (0, 200, "2"), err)
        self.assertEqual(values_seen(self.web, "/forged/anon-h2"), [])

    def test_http2_delivers_the_header(self):
        lb = self.start("required")
        rc, status, version, err = curl(lb.port(), "/h2/alice", http_version="--http2",
                                        cert=Certs.alice)
        self.assertEqual((rc, status, version), (0, 200, "2"), err)
        self.assertEqual(values_seen(self.web, "/h2/alice"), [Certs.alice_xfcc])
        # Several streams on one HTTP/2 connection all carry it.
        urls = ["https://%s:%d/h2/multi/%d" % (SERVER_NAME, lb.port(), i) for i in range(3)]
        r = subprocess.run(
            ["curl", "-sS", "--max-time", "10", "--http2", "--resolve",
             "%s:%d:127.0.0.1" % (SERVER_NAME, lb.port()), "--cacert", Certs.server[0],
             "--cert", Certs.alice[0], "--key", Certs.alice[1],
             "-w", "%{http_code} %{http_version}\n"] +
            sum((["-o", "/dev/null", u] for u in urls), []),
            stdin=subprocess.DEVNULL, capture_output=True, timeout=20)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.decode().split(), ["200", "2"] * 3)
        for i in range(3):
            self.assertEqual(values_seen(self.web, "/h2/multi/%d" % i), [Certs.alice_xfcc])

    def test_route_match_client_cert(self):
        other = self.origin("anon")
        lb = self.start("optional",
                        routes="[ { match: { client_cert: true }, pool: certified }, "
                               "{ pool: anonymous } ]",
                        pools='  certified: { backends: [ "%s" ] }\n'
                              '  anonymous: { backends: [ "%s" ] }\n'
                              '  web: { backends: [ "%s" ] }\n'
                              % (self.web.addr, other.addr, self.web.addr))
        for i in range(3):
            self.assert_ok(curl(lb.port(), "/match/alice/%d" % i, cert=Certs.alice), "alice")
            self.assert_ok(curl(lb.port(), "/match/anon/%d" % i), "anonymous")
        rc, status, version, err = curl(lb.port(), "/match/alice-h2", http_version="--http2",
                                        cert=Certs.alice)
        self.assertEqual((rc, status, version), (0, 200, "2"), err)
        rc, status, version, err = curl(lb.port(), "/match/anon-h2", http_version="--http2")
        self.assertEqual((rc, status, version), (0, 200, "2"), err)
        self.assertEqual(sorted(e["target"] for e in self.web.log_entries()),
                         ["/match/alice-h2"] + ["/match/alice/%d" % i for i in range(3)])
        self.assertEqual(sorted(e["target"] for e in other.log_entries()),
                         ["/match/anon-h2"] + ["/match/anon/%d" % i for i in range(3)])
        for e in self.web.log_entries():
            self.assertEqual([v for k, v in e["headers"] if k.lower() == XFCC.lower()],
                             [Certs.alice_xfcc], e["target"])

    def check_error(self, yaml_text, needle, message, value=True):
        """lb check refuses yaml_text (exit 1) with one error: FILE:LINE:COL of
        `needle` (of the value after it with value=True), then `message`."""
        code, output, path = lb_check(yaml_text)
        self.assertEqual(code, 1, output)
        line, col = yaml_position(yaml_text, needle, value)
        self.assertIn("%s:%d:%d: %s" % (path, line, col, message), output)
        self.assertIn("1 error", output)
        return output

    def test_lb_check_errors(self):
        base = PREAMBLE + """listeners:
  - name: public
    listen: 127.0.0.1:0
    tls:
      certificates: [ { cert: "%s", key: "%s" } ]
%s    routes:
%s
pools:
  web: { backends: [ "127.0.0.1:1" ] }
"""
        plain_route = "      - { pool: web }"
        # A valid mTLS config passes.
        ok = base % (Certs.server + ('      client_ca: "%s"\n      client_verify: optional\n'
                                     % Certs.ca[0],
                                     "      - match: { client_cert: true }\n"
                                     "        pool: web\n" + plain_route))
        code, output, _ = lb_check(ok)
        self.assertEqual(code, 0, output)

        self.check_error(base % (Certs.server + ("      client_verify: required\n", plain_route)),
                         "client_verify:", "client_verify: needs client_ca")

        missing = os.path.join(Certs.dir, "no-such-ca.pem")
        self.check_error(base % (Certs.server + ('      client_ca: "%s"\n' % missing,
                                                 plain_route)),
                         "client_ca:", "client_ca: cannot read %s" % missing)

        self.check_error(base % (Certs.server + ("", "      - match: { client_cert: true }\n"
                                                     "        pool: web\n" + plain_route)),
                         "match: { client_cert: true }",
                         "match.client_cert: the listener asks for no client certificate",
                         value=False)

        self.check_error(
            base % (Certs.server + ('      client_ca: "%s"\n' % Certs.ca[0],
                                    "      - pool: web\n"
                                    "        request_headers:\n"
                                    "          set: { X-Forwarded-Client-Cert: forged }")),
            "X-Forwarded-Client-Cert", "request_headers: X-Forwarded-Client-Cert is set by lb",
            value=False)

        self.check_error(base % (Certs.server + ('      client_ca: "%s"\n'
                                                 "      client_verify: sometimes\n" % Certs.ca[0],
                                                 plain_route)),
                         "client_verify:", "client_verify: expected required or optional")


# ---------------------------------------------------------------------------

class Rotation(harness.TestCase):
    """The listener's certificate and key live at fixed paths whose content
    changes: with a reload, or (watch: true) by itself."""

    def setUp(self):
        self.web = self.origin("web")
        self.dir = tempfile.mkdtemp(prefix="lb-rotation-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.cert = os.path.join(self.dir, "live.pem")
        self.key = os.path.join(self.dir, "live.key")
        shutil.copyfile(Certs.rot_a[0], self.cert)
        shutil.copyfile(Certs.rot_a[1], self.key)
        self.der_a = der_of(Certs.rot_a[0])
        self.der_b = der_of(Certs.rot_b[0])
        self.assertNotEqual(self.der_a, self.der_b)

    def start(self, watch=None):
        extra = "watch: %s" % ("true" if watch else "false") if watch is not None else ""
        return self.lb(PREAMBLE + """listeners:
  - name: public
    listen: 127.0.0.1:0
""" + tls_block(cert=(self.cert, self.key), extra=extra) + """    routes: [ { pool: web } ]
pools:
  web: { backends: [ "%s" ] }
""" % self.web.addr)

    def open_and_check(self, lb, expected_der, label):
        conn = TlsConn(lb.port())
        self.addCleanup(conn.close)
        self.assertEqual(conn.peer_der(), expected_der, label)
        status, _, body = conn.get("/%s/0" % label)
        self.assertEqual(status, 200, body)
        return conn

    def assert_keeps_working(self, conn, label, expected_der):
        for i in range(1, 4):
            status, headers, body = conn.get("/%s/%d" % (label, i))
            self.assertEqual(status, 200, body)
            self.assertNotEqual(headers.get("connection", "").lower(), "close")
        self.assertEqual(conn.peer_der(), expected_der)
        self.assertEqual(self.web.requests_seen("/%s/" % label), 4)

    def replace_in_place(self, pair):
        """Overwrites the live files (same paths, same inodes) with pair's content."""
        with open(self.key, "wb") as f:
            f.write(read_bytes(pair[1]))
        with open(self.cert, "wb") as f:
            f.write(read_bytes(pair[0]))

    def replace_by_rename(self, pair):
        """Writes temp files in the same directory and renames them over the
        live ones: the key first, then the certificate."""
        for src, dst in ((pair[1], self.key), (pair[0], self.cert)):
            tmp = dst + ".tmp-%d" % os.getpid()
            with open(tmp, "wb") as f:
                f.write(read_bytes(src))
            os.replace(tmp, dst)

    def reload_and_wait(self, lb, result):
        reload_and_wait(self, lb, result)

    def test_reload_rotates_the_certificate_and_keeps_open_connections(self):
        lb = self.start()
        old = self.open_and_check(lb, self.der_a, "old")
        self.replace_in_place(Certs.rot_b)
        self.reload_and_wait(lb, "success")
        self.assertEqual(lb.metric("lb_config_reloads_total", result="failure"), 0)
        self.assertEqual(handshake_der(lb.port()), self.der_b,
                         "a new handshake after the reload still gets the old certificate")
        new = self.open_and_check(lb, self.der_b, "new")
        self.assert_keeps_working(old, "old", self.der_a)
        self.assertEqual(new.get("/new/1")[0], 200)

    def test_reload_with_a_garbage_certificate_is_refused(self):
        lb = self.start()
        old = self.open_and_check(lb, self.der_a, "old")
        with open(self.cert, "w") as f:
            f.write("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
        self.reload_and_wait(lb, "failure")
        self.assertEqual(lb.metric("lb_config_reloads_total", result="success"), 0)
        self.assertIn("reload refused", lb.stderr_text())
        for _ in range(3):
            self.assertEqual(handshake_der(lb.port()), self.der_a)
        self.open_and_check(lb, self.der_a, "after")
        self.assert_keeps_working(old, "old", self.der_a)
        self.assertTrue(lb.running())

    def test_watch_serves_replaced_files_without_a_reload(self):
        lb = self.start(watch=True)
        old = self.open_and_check(lb, self.der_a, "old")
        self.replace_by_rename(Certs.rot_b)
        changed = time.monotonic()
        seen = []

        def rotated():
            der = handshake_der(lb.port())  # every handshake meanwhile must succeed
            seen.append(der)
            return der == self.der_b
        deadline = changed + 6.0
        ok = False
        while time.monotonic() < deadline:
            try:
                if rotated():
                    ok = True
                    break
            except (ssl.SSLError, OSError) as e:
                self.fail("a handshake failed while the files changed: %r" % e)
            time.sleep(0.1)
        self.assertTrue(ok, "new handshakes still get the old certificate %.1f s after the "
                            "files were replaced (watch: true)" % (time.monotonic() - changed))
        self.assertTrue(all(d in (self.der_a, self.der_b) for d in seen))
        self.assertLessEqual(time.monotonic() - changed, 6.0)
        self.assertEqual(lb.metric("lb_config_reloads_total", result="success"), 0)
        self.assert_keeps_working(old, "old", self.der_a)
        self.open_and_check(lb, self.der_b, "new")
        # Rotating back works as well.
        self.replace_by_rename(Certs.rot_a)
        self.assertTrue(wait_until(lambda: handshake_der(lb.port()) == self.der_a,
                                   timeout=6.0, interval=0.1), "second rotation not picked up")

    def test_without_watch_changed_files_are_not_picked_up(self):
        lb = self.start(watch=False)
        old = self.open_and_check(lb, self.der_a, "old")
        self.replace_by_rename(Certs.rot_b)
        time.sleep(3.0)
        for _ in range(3):
            self.assertEqual(handshake_der(lb.port()), self.der_a,
                             "the certificate changed without watch and without a reload")
        self.assert_keeps_working(old, "old", self.der_a)



# ---------------------------------------------------------------------------

class ReloadWithClientCertificates(harness.TestCase):
    """A reload rebuilds a listener's TLS settings: a keep-alive connection
    whose client certificate was checked against the old client_ca closes
    after its next response; without client certificates it lives on."""

    def setUp(self):
        self.web = self.origin("web")

    def start(self, client_verify=None):
        return self.lb(PREAMBLE + """listeners:
  - name: public
    listen: 127.0.0.1:0
""" + tls_block(client_verify) + """    routes: [ { pool: web } ]
pools:
  web: { backends: [ "%s" ] }
""" % self.web.addr)

    def connect(self, lb, cert=None):
        conn = TlsConn(lb.port(), cert=cert)
        self.addCleanup(conn.close)
        return conn

    def test_mtls_keepalive_connection_closes_after_a_reload(self):
        lb = self.start("required")
        conn = self.connect(lb, cert=Certs.alice)
        status, headers, body = conn.get("/before/1")
        self.assertEqual(status, 200, body)
        self.assertNotEqual(headers.get("connection", "").lower(), "close")
        self.assertEqual(values_seen(self.web, "/before/1"), [Certs.alice_xfcc])
        status, headers, body = conn.get("/before/2")  # still keep-alive
        self.assertEqual(status, 200, body)
        self.assertNotEqual(headers.get("connection", "").lower(), "close")

        reload_and_wait(self, lb, "success")  # the same config
        # The next request is still answered, for the identity checked at the
        # handshake, but it is the connection's last.
        status, headers, body = conn.get("/after-reload")
        self.assertEqual(status, 200, body)
        with self.subTest("the response says Connection: close"):
            self.assertEqual(headers.get("connection", "").lower(), "close",
                             "the response after the reload: %r" % headers)
        self.assertEqual(values_seen(self.web, "/after-reload"), [Certs.alice_xfcc])
        self.assertTrue(conn.closed_by_peer(5.0),
                        "the mTLS connection stays open after its Connection: close response")

        # A new connection with the certificate works, on keep-alive again.
        fresh = self.connect(lb, cert=Certs.alice)
        for i in range(2):
            status, headers, body = fresh.get("/fresh/%d" % i)
            self.assertEqual(status, 200, body)
            self.assertNotEqual(headers.get("connection", "").lower(), "close")
            self.assertEqual(values_seen(self.web, "/fresh/%d" % i), [Certs.alice_xfcc])
        # And it too closes after one more reload, not before.
        reload_and_wait(self, lb, "success")
        status, headers, body = fresh.get("/fresh/after-reload")
        self.assertEqual(status, 200, body)
        with self.subTest("the response says Connection: close (second reload)"):
            self.assertEqual(headers.get("connection", "").lower(), "close",
                             "the response after the second reload: %r" % headers)
        self.assertTrue(fresh.closed_by_peer(5.0))
        # Without a certificate the listener still refuses.
        self.assertEqual(curl(lb.port(), "/anonymous")[1], 0)
        self.assertEqual(self.web.requests_seen("/anonymous"), 0)
        self.assertEqual(lb.metric("lb_config_reloads_total", result="failure"), 0)

    def test_plain_tls_keepalive_connection_survives_a_reload(self):
        lb = self.start()
        conn = self.connect(lb)
        status, headers, body = conn.get("/before")
        self.assertEqual(status, 200, body)
        self.assertNotEqual(headers.get("connection", "").lower(), "close")

        reload_and_wait(self, lb, "success")  # the same config
        for i in range(3):
            status, headers, body = conn.get("/after-reload/%d" % i)
            self.assertEqual(status, 200, body)
            self.assertNotEqual(headers.get("connection", "").lower(), "close",
                                "request %d after the reload: %r" % (i, headers))
        self.assertFalse(conn.closed_by_peer(0.5), "lb closed the connection after a reload")
        # Another reload: still the same connection.
        reload_and_wait(self, lb, "success")
        status, headers, body = conn.get("/after-second-reload")
        self.assertEqual(status, 200, body)
        self.assertNotEqual(headers.get("connection", "").lower(), "close")
        self.assertEqual(self.web.requests_seen("/after-"), 4)
        self.assertEqual(values_seen(self.web, "/before"), [])


if __name__ == "__main__":
    harness.main()
