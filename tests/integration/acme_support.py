"""A real ACME server for lb's tls.acme tests, and what the tests read back
(Python stdlib, the openssl command line and pebble).

    from acme_support import AcmeCase, DOMAINS

    class T(AcmeCase):               # setUpClass: the test CA and dnsmasq
        def test_x(self):
            pebble = self.new_pebble()    # started; killed at test end
            # lb config:  tls.acme: { directory: <pebble.directory>,
            #   domains: [a.lbtest, b.lbtest], ca: <self.ca>, ... }, a plain
            #   listener on pebble.http_port (http-01) or the TLS listener on
            #   pebble.tls_port (tls-alpn-01)
            root, chain, intermediate = pebble.trust()
            self.assert_curl_verifies(pebble.tls_port, chain)

  - make_test_ca(directory): a P-256 CA and, signed by it, the ACME server's
    HTTPS certificate (lb's acme.ca is that CA);
  - Pebble: pebble (the ACME server for tests) on loopback ports, resolving
    names through a DNS server (dns_server.Dnsmasq), started through
    harness._popen (killed at test end however the test ends); its log
    survives restarts, and `counts()` counts orders, certificates and
    accounts in it. Each start has a new root and no accounts; trust()
    fetches the current root and intermediate;
  - AcmeCase (a harness.TestCase): per class the test CA (`ca`, `wfe_cert`,
    `wfe_key`) and dnsmasq (`dns`) resolving DOMAINS to 127.0.0.1; per test
    new_pebble(), curl() and assert_curl_verifies();
  - cert_info(), served_serial(), peer_certificate(), client_context():
    certificates as openssl and a TLS handshake see them;
  - DOMAINS, BODY (the origin "web"'s answer) and the lines lb logs for
    them on the listener "public": ISSUED_RE, LOADED, FAILED_RE.
"""

import calendar
import http.client
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from dns_server import Dnsmasq  # noqa: E402

PEBBLE = "/usr/bin/pebble"
DOMAINS = ["a.lbtest", "b.lbtest"]
BODY = b"Hello from web\n"

ISSUED_RE = re.compile(r"^lb: listener public: acme: certificate for a\.lbtest, b\.lbtest issued, "
                       r"expires (\S+), renews at (\S+)\s*$", re.M)
LOADED = "acme: certificates loaded again"
FAILED_RE = re.compile(r"^lb: listener public: acme: order for a\.lbtest, b\.lbtest failed: (.+); "
                       r"trying again in (\d+)s \((.*)\)\s*$", re.M)


# ---------------------------------------------------------------------------
# certificates

def openssl(*args, input=None):
    r = subprocess.run(["openssl"] + list(args), input=input, capture_output=True, timeout=30)
    if r.returncode != 0:
        raise RuntimeError("openssl %s: %s" % (" ".join(args), r.stderr.decode("utf-8", "replace")))
    return r.stdout.decode("utf-8", "replace")


def make_test_ca(directory):
    """A P-256 CA and, signed by it, the ACME server's own HTTPS certificate
    (CN=localhost, SAN DNS:localhost, IP:127.0.0.1) -> (ca.pem, wfe.pem, wfe.key)."""
    ca_key, ca_pem = os.path.join(directory, "ca.key"), os.path.join(directory, "ca.pem")
    key, csr, pem = (os.path.join(directory, n) for n in ("wfe.key", "wfe.csr", "wfe.pem"))
    ext = os.path.join(directory, "wfe.ext")
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", ca_key)
    openssl("req", "-x509", "-new", "-key", ca_key, "-subj", "/CN=lb test CA", "-days", "2",
            "-out", ca_pem)
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key)
    openssl("req", "-new", "-key", key, "-subj", "/CN=localhost", "-out", csr)
    with open(ext, "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                "extendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", csr, "-CA", ca_pem, "-CAkey", ca_key, "-CAcreateserial",
            "-days", "2", "-extfile", ext, "-out", pem)
    return ca_pem, pem, key


def cert_info(pem):
    """The first certificate of PEM text (a key block before it is skipped) ->
    {subject, issuer, serial (int), not_before, not_after (unix seconds),
    sans [names]}."""
    out = openssl("x509", "-noout", "-nameopt", "RFC2253", "-subject", "-issuer", "-serial",
                  "-startdate", "-enddate", "-ext", "subjectAltName", input=pem.encode())
    info = {"sans": []}
    lines = out.splitlines()
    for i, line in enumerate(lines):
        key, _, value = line.partition("=")
        if key == "subject":
            info["subject"] = value.strip()
        elif key == "issuer":
            info["issuer"] = value.strip()
        elif key == "serial":
            info["serial"] = int(value.strip(), 16)
        elif key == "notBefore":
            info["not_before"] = int(ssl.cert_time_to_seconds(value.strip()))
        elif key == "notAfter":
            info["not_after"] = int(ssl.cert_time_to_seconds(value.strip()))
        elif "Subject Alternative Name" in line and i + 1 < len(lines):
            info["sans"] = [s.strip()[4:] for s in lines[i + 1].split(",")
                            if s.strip().startswith("DNS:")]
    return info


def der_info(der):
    return cert_info(ssl.DER_cert_to_PEM_cert(der))


def read(path):
    with open(path) as f:
        return f.read()


def log_time(text):
    """"2026-12-07T06:19:53Z" -> unix seconds."""
    return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ"))


def client_context(cafile=None):
    """HTTP/1.1 only; verifying name and chain against `cafile`, or nothing at all."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if cafile:
        ctx.load_verify_locations(cafile)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def peer_certificate(port, name, cafile=None):
    """A new TLS handshake with SNI `name` -> the DER certificate lb served."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as plain:
        with client_context(cafile).wrap_socket(plain, server_hostname=name) as s:
            return s.getpeercert(binary_form=True)


def served_serial(port, name, cafile):
    """A new TLS handshake with SNI `name`, verified against `cafile` ->
    the serial of the certificate lb served."""
    return der_info(peer_certificate(port, name, cafile))["serial"]


# ---------------------------------------------------------------------------
# pebble

class Pebble:
    """pebble (the ACME server for tests) on loopback ports: `port` (ACME,
    https://127.0.0.1:PORT/dir), `management_port` (/roots/0, /intermediates/0);
    it validates HTTP-01 at `http_port` and TLS-ALPN-01 at `tls_port` (lb's
    listeners, or HAProxy's frontends in front of a tier), resolving names
    through the DNS server at 127.0.0.1:dns_port. Started through
    harness._popen: killed at test end whatever happens. Its log (stdout)
    survives restarts."""

    def __init__(self, ca, wfe_cert, wfe_key, dns_port, validity=3600):
        self.ca = ca
        self.dir = tempfile.mkdtemp(prefix="pebble-")
        self.port, self.management_port, self.http_port, self.tls_port = \
            (harness.unused_port() for _ in range(4))
        self.config_path = os.path.join(self.dir, "pebble.json")
        self.log_path = os.path.join(self.dir, "pebble.log")
        with open(self.config_path, "w") as f:
            json.dump({"pebble": {
                "listenAddress": "127.0.0.1:%d" % self.port,
                "managementListenAddress": "127.0.0.1:%d" % self.management_port,
                "certificate": wfe_cert, "privateKey": wfe_key,
                "httpPort": self.http_port, "tlsPort": self.tls_port,
                "ocspResponderURL": "", "externalAccountBindingRequired": False,
                "certificateValidityPeriod": validity}}, f)
        self.dns_port = dns_port
        self.proc = None
        self._log = None
        self.starts = 0

    @property
    def directory(self):
        return "https://127.0.0.1:%d/dir" % self.port

    def start(self, timeout=15.0):
        """Starts pebble (again: same ports, a new root and no accounts) and
        waits for "Listening on"."""
        deadline = time.monotonic() + timeout
        while True:
            offset = len(self.log_text())
            env = dict(os.environ, PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0",
                       PEBBLE_AUTHZREUSE="0")
            self._log = open(self.log_path, "ab")
            self.proc = harness._popen(
                [PEBBLE, "-config", self.config_path, "-dnsserver", "127.0.0.1:%d" % self.dns_port],
                stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                cwd=self.dir)
            harness.wait_until(lambda: "Listening on" in self.log_text()[offset:]
                               or self.proc.poll() is not None,
                               max(1.0, deadline - time.monotonic()))
            if "Listening on" in self.log_text()[offset:] and self.proc.poll() is None:
                self.starts += 1
                return self
            self.kill()
            if time.monotonic() >= deadline:
                raise RuntimeError("pebble did not start:\n" + self.log_text()[offset:][-3000:])
            time.sleep(0.2)

    def kill(self):
        if self.proc is not None:
            harness.kill_and_wait(self.proc)
            harness._unregister(self.proc)
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def cleanup(self):
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def cleanup_after(self, test, tail=6000):
        """cleanup() for test.addCleanup(pebble.cleanup_after, test): first
        the end of pebble's log on stderr when the test failed (or
        LB_TEST_VERBOSE is set)."""
        if test.failed_so_far() or os.environ.get("LB_TEST_VERBOSE"):
            sys.stderr.write("---- ACME server log (%s) ----\n%s\n"
                             % (test.id(), self.log_text()[-tail:]))
        self.cleanup()

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def count(self, pattern):
        return len(re.findall(pattern, self.log_text()))

    def counts(self):
        """What the ACME server did so far, counted in its log: orders added,
        certificates issued, new-order and new-account requests, and the lines
        that give its number of accounts."""
        return {what: self.count(what) for what in
                ("Added order ", "Issued certificate serial ", "POST /order-plz",
                 "POST /sign-me-up", r"There are now \d+ accounts")}

    def _get(self, path):
        ctx = ssl.create_default_context(cafile=self.ca)
        conn = http.client.HTTPSConnection("127.0.0.1", self.management_port, timeout=10,
                                           context=ctx)
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            body = r.read().decode()
            if r.status != 200:
                raise RuntimeError("pebble %s: %d" % (path, r.status))
            return body
        finally:
            conn.close()

    def trust(self):
        """Fetches the current issuing root and intermediate -> (root.pem path,
        root+intermediate path, intermediate PEM text)."""
        root, intermediate = self._get("/roots/0"), self._get("/intermediates/0")
        root_path = os.path.join(self.dir, "root-%d.pem" % self.starts)
        chain_path = os.path.join(self.dir, "root-intermediate-%d.pem" % self.starts)
        with open(root_path, "w") as f:
            f.write(root)
        with open(chain_path, "w") as f:
            f.write(root.rstrip("\n") + "\n" + intermediate)
        return root_path, chain_path, intermediate


# ---------------------------------------------------------------------------

class AcmeCase(harness.TestCase):
    """harness.TestCase with, for the whole class, the test CA that signs the
    ACME server's HTTPS certificate (cls.ca, cls.wfe_cert, cls.wfe_key) and
    dnsmasq resolving DOMAINS to 127.0.0.1 (cls.dns)."""

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="lb-acme-ca-")
        cls.addClassCleanup(shutil.rmtree, cls.dir, True)
        cls.ca, cls.wfe_cert, cls.wfe_key = make_test_ca(cls.dir)
        cls.dns = Dnsmasq({name: ["127.0.0.1"] for name in DOMAINS})
        cls.addClassCleanup(cls.dns.cleanup)
        cls.dns.start()

    def new_pebble(self, validity=3600, start=True):
        """A Pebble with certificates valid `validity` seconds, started unless
        start is False; its log is printed at the end of a failed test."""
        p = Pebble(self.ca, self.wfe_cert, self.wfe_key, self.dns.port, validity)
        self.addCleanup(p.cleanup_after, self)
        if start:
            p.start()
        return p

    def curl(self, port, name, cacert, *args, path="/"):
        """curl https://NAME:PORT/PATH (NAME resolved to 127.0.0.1), verifying
        against `cacert` -> (exit code, body, stderr)."""
        r = subprocess.run(["curl", "-sS", "--noproxy", "*", "--max-time", "10", "--cacert", cacert,
                            "--resolve", "%s:%d:127.0.0.1" % (name, port)] + list(args) +
                           ["https://%s:%d%s" % (name, port, path)],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
        return r.returncode, r.stdout, r.stderr.decode("utf-8", "replace")

    def assert_curl_verifies(self, port, cacert, who=None):
        """curl gets BODY for each of DOMAINS on port, verified against `cacert`."""
        for name in DOMAINS:
            code, out, err = self.curl(port, name, cacert)
            self.assertEqual((code, out), (0, BODY), "%scurl https://%s: %s"
                             % ("%s: " % who if who else "", name, err))
