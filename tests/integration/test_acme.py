#!/usr/bin/env python3
"""Certificates from an ACME server (RFC 8555) for a TLS listener with tls.acme,
against a real ACME server (pebble) whose HTTPS certificate is signed by a test
CA (lb's acme.ca), resolving the names through dnsmasq:

  - http-01: a config that names only domains [a.lbtest, b.lbtest] serves one
    certificate for both names, verified by curl --cacert <the ACME server's
    root + intermediate> --resolve; its SANs are the two names and its issuer
    the ACME server's intermediate; the storage directory is created 0700 and
    account.key and a.lbtest.pem (the key and its chain) are 0600; /metrics shows
    lb_certificate_expiry_seconds (the certificate's notAfter) and
    lb_acme_renewals_total success 1, failure 0; the validations were HTTP-01
    ones on the plain listener;
  - tls-alpn-01 with no plain listener at all: until the first certificate the
    listener serves a self-signed placeholder (the ACME server is not up yet:
    the first order fails, "no certificate yet", retried 2 s later); then both
    names verify with curl;
  - renewal at notBefore + 2/3 of the lifetime (a 24 s certificate) while a
    keep-alive HTTPS client sends a request every 20 ms and new connections
    come every 0.5 s: no request fails, the keep-alive connection lives on
    with the old certificate, new handshakes get the new serial;
  - the ACME server down at renewal: the order failure is logged with its
    backoff (never more than a quarter of the remaining lifetime) and counted,
    new handshakes still get the old certificate; once the server is back
    (same ports, new root, no accounts) lb creates its account again and the
    renewal succeeds;
  - a restart of lb reuses the stored account and certificate: same serial
    from the first handshake on, "stored" in the log, no new order and no new
    account at the ACME server, lb_acme_renewals_total 0;
  - a storage directory others may write to (0777, made before lb starts) is
    refused: the order fails with "is writable by other users", counted as a
    failure, and nothing is written there; after chmod 700 the next try (the
    backoff: 2 s, 4 s...) gets the certificate, verified by curl;
  - tls-alpn-01 on a listener that requires client certificates (client_ca,
    client_verify: required; no plain listener): the ACME server's validator,
    which has no client certificate, is not asked for one and the certificate
    is issued; then curl with a client certificate of that CA gets a 200 and
    curl without one is refused in the handshake;
  - the stored certificate file a.lbtest.pem (0600) holds the private key
    block, then the chain (the leaf, matching that key, then its issuer), and
    no temporary file (*.tmp) is left in the storage directory.
"""

import os
import re
import shutil
import ssl
import stat
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from acme_support import (BODY, DOMAINS, FAILED_RE, ISSUED_RE, LOADED, AcmeCase,  # noqa: E402
                          cert_info, client_context, der_info, log_time, openssl,
                          peer_certificate, read, served_serial)


def make_client_ca(directory):
    """A CA for client certificates (client_ca) and, signed by it, one client
    certificate (extendedKeyUsage clientAuth) -> (ca.pem, client.pem, client.key)."""
    ca_key, ca_pem = (os.path.join(directory, n) for n in ("client-ca.key", "client-ca.pem"))
    key, csr, pem = (os.path.join(directory, "client." + suffix)
                     for suffix in ("key", "csr", "pem"))
    ext = os.path.join(directory, "client.ext")
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", ca_key)
    openssl("req", "-x509", "-new", "-key", ca_key, "-subj", "/CN=lb test client CA",
            "-days", "2", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", ca_pem)
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key)
    openssl("req", "-new", "-key", key, "-subj", "/CN=client.lbtest", "-out", csr)
    with open(ext, "w") as f:
        f.write("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                "extendedKeyUsage=clientAuth\nsubjectAltName=DNS:client.lbtest\n")
    openssl("x509", "-req", "-in", csr, "-CA", ca_pem, "-CAkey", ca_key, "-set_serial", "7",
            "-days", "2", "-extfile", ext, "-out", pem)
    return ca_pem, pem, key


PEM_BLOCK_RE = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----\n.*?\n-----END \1-----\n?", re.S)


def pem_blocks(text):
    """PEM text -> [(label, block text)] in file order; text outside blocks
    (other than blank lines) is an error."""
    blocks, rest, pos = [], [], 0
    for m in PEM_BLOCK_RE.finditer(text):
        rest.append(text[pos:m.start()])
        blocks.append((m.group(1), m.group(0)))
        pos = m.end()
    rest.append(text[pos:])
    if "".join(rest).strip():
        raise AssertionError("text outside PEM blocks: %r" % "".join(rest).strip()[:200])
    return blocks


def expiry(metrics, name):
    """lb_certificate_expiry_seconds of listener "public" and `name` (a label
    metric_value cannot take) -> [values]: one expected."""
    return [v for n, labels, v in harness.parse_metrics(metrics)
            if n == "lb_certificate_expiry_seconds"
            and labels == {"listener": "public", "name": name, "source": "acme"}]


def tls_connection(port, name, cafile):
    """A harness.RawConnection over TLS (verified against `cafile`, SNI `name`)."""
    conn = harness.RawConnection(port, timeout=10)
    conn.sock = client_context(cafile).wrap_socket(conn.sock, server_hostname=name)
    return conn


def get(conn, path, name="a.lbtest", close=False):
    conn.send(("GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n"
               % (path, name, "Connection: close\r\n" if close else "")).encode())
    status, _, body = conn.read_response()
    return status, body


class Acme(AcmeCase):
    def setUp(self):
        self.web = self.origin("web")
        self.storage_parent = tempfile.mkdtemp(prefix="lb-acme-storage-")
        self.addCleanup(shutil.rmtree, self.storage_parent, True)
        self.storage = os.path.join(self.storage_parent, "acme")  # lb creates it

    def config(self, pebble, challenge="http-01", plain=True, tls_extra=""):
        plain_listener = f"""
  - name: plain
    listen: 127.0.0.1:{pebble.http_port}
    routes: [ {{ pool: web }} ]""" if plain else ""
        challenge_line = f"\n        challenge: {challenge}" if challenge else ""
        return f"""
workers: 2
admin: {{ listen: 127.0.0.1:0 }}
access_log: {{ path: "off" }}
listeners:{plain_listener}
  - name: public
    listen: 127.0.0.1:{pebble.tls_port}
    tls:{tls_extra}
      acme:
        directory: {pebble.directory}
        email: ops@lbtest.example
        domains: [a.lbtest, b.lbtest]
        storage: {self.storage}
        ca: {self.ca}{challenge_line}
    routes: [ {{ pool: web }} ]
pools:
  web:
    backends: [ "{self.web.addr}" ]
"""

    def wait_loaded(self, lb, times=1, timeout=30.0):
        """Waits until lb has built its listeners with an ACME certificate
        `times` times; fails with lb's log if not."""
        ok = harness.wait_until(lambda: lb.stderr_text().count(LOADED) >= times, timeout, 0.02)
        self.assertTrue(ok, "no certificate #%d after %.0f s; lb log:\n%s"
                        % (times, timeout, lb.stderr_text()[-4000:]))

    def stored(self):
        return (os.path.join(self.storage, "account.key"),
                os.path.join(self.storage, "a.lbtest.pem"))

    # ------------------------------------------------------------------------

    def test_http01_serves_a_verified_certificate_for_both_names(self):
        pebble = self.new_pebble()
        self.assertFalse(os.path.exists(self.storage))
        lb = self.lb(self.config(pebble, "http-01"))
        self.wait_loaded(lb)
        root, chain, intermediate = pebble.trust()
        port = pebble.tls_port

        # curl (real clients) verifies both names against the ACME server's CA;
        # with only the test CA (which signed no lb certificate) it does not.
        self.assert_curl_verifies(port, chain)
        code, _, err = self.curl(port, "a.lbtest", self.ca)
        self.assertNotEqual(code, 0, "verified against the wrong CA: " + err)

        # One certificate for both names, issued by the intermediate; lb sends
        # the chain (only the root is trusted here).
        served = [peer_certificate(port, name, root) for name in DOMAINS]
        self.assertEqual(served[0], served[1], "one certificate for both names")
        leaf = der_info(served[0])
        self.assertEqual(sorted(leaf["sans"]), DOMAINS)
        self.assertEqual(leaf["issuer"], cert_info(intermediate)["subject"])

        # Storage: the directory made 0700, the keys and chain 0600; the chain
        # file's leaf is what lb serves.
        self.assertEqual(stat.S_IMODE(os.stat(self.storage).st_mode), 0o700)
        for path in self.stored():
            self.assertTrue(os.path.isfile(path), path)
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600, path)
        self.assertEqual(cert_info(read(self.stored()[1]))["serial"], leaf["serial"])

        # Log: issued, with its expiry and renewal at 2/3 of the lifetime.
        text = lb.stderr_text()
        m = ISSUED_RE.search(text)
        self.assertIsNotNone(m, text)
        self.assertEqual(log_time(m.group(1)), leaf["not_after"])
        lifetime = leaf["not_after"] - leaf["not_before"]
        self.assertAlmostEqual(log_time(m.group(2)), leaf["not_before"] + lifetime * 2 // 3,
                               delta=1)
        self.assertIn(LOADED, text)
        self.assertIsNone(FAILED_RE.search(text), text)

        # Metrics: the expiry of each name and one successful order.
        metrics = lb.metrics_text()
        for name in DOMAINS:
            self.assertEqual(expiry(metrics, name), [leaf["not_after"]], name)
        self.assertEqual(harness.metric_value(metrics, "lb_acme_renewals_total",
                                              listener="public", result="success"), 1)
        self.assertEqual(harness.metric_value(metrics, "lb_acme_renewals_total",
                                              listener="public", result="failure"), 0)
        self.assertIn('lb_acme_renewals_total{listener="public",result="failure"} 0', metrics)

        # The ACME server validated both names over HTTP-01 on the plain listener.
        plog = pebble.log_text()
        for name in DOMAINS:
            self.assertIn("Attempting to validate w/ HTTP: http://%s:%d/.well-known/acme-challenge/"
                          % (name, pebble.http_port), plog)
        self.assertEqual(pebble.count(r"Added order "), 1)
        self.assertEqual(pebble.count(r"Issued certificate serial "), 1)

    def test_tls_alpn01_without_a_plain_listener(self):
        # The ACME server is not up yet: the listener serves its placeholder
        # and the first order fails.
        pebble = self.new_pebble(start=False)
        lb = self.lb(self.config(pebble, "tls-alpn-01", plain=False))
        self.assertEqual(list(lb.listeners), ["public"])
        ok = harness.wait_until(lambda: FAILED_RE.search(lb.stderr_text()), 10)
        self.assertTrue(ok, lb.stderr_text())
        m = FAILED_RE.search(lb.stderr_text())
        self.assertEqual((m.group(2), m.group(3)), ("2", "no certificate yet"), m.group(0))
        placeholder = der_info(peer_certificate(pebble.tls_port, "a.lbtest"))
        self.assertEqual(placeholder["subject"], placeholder["issuer"], "self-signed")
        self.assertIn("a.lbtest", placeholder["subject"] + " " + " ".join(placeholder["sans"]))

        pebble.start()
        root, chain, _ = pebble.trust()
        with self.assertRaises(ssl.SSLCertVerificationError):
            peer_certificate(pebble.tls_port, "a.lbtest", root)
        self.wait_loaded(lb, timeout=30)
        self.assert_curl_verifies(pebble.tls_port, chain)
        leaf = der_info(peer_certificate(pebble.tls_port, "b.lbtest", root))
        self.assertEqual(sorted(leaf["sans"]), DOMAINS)
        self.assertNotEqual(leaf["serial"], placeholder["serial"])

        # Both names were validated, and never over HTTP (there is no plain listener).
        plog = pebble.log_text()
        self.assertEqual(pebble.count(r"set VALID by completed challenge"), 2, plog[-3000:])
        self.assertNotIn("Attempting to validate w/ HTTP", plog)
        self.assertEqual(lb.metric("lb_acme_renewals_total", listener="public",
                                   result="success"), 1)
        self.assertGreaterEqual(lb.metric("lb_acme_renewals_total", listener="public",
                                          result="failure"), 1)

    def test_renewal_under_load(self):
        # A 24 s certificate renews 16 s after its notBefore. Default challenge
        # (tls-alpn-01): the validations share the listener with the load.
        pebble = self.new_pebble(validity=24)
        lb = self.lb(self.config(pebble, challenge=None, plain=False))
        self.wait_loaded(lb)
        root, _, _ = pebble.trust()
        port = pebble.tls_port
        first = cert_info(read(self.stored()[1]))
        renews_at = first["not_before"] + (first["not_after"] - first["not_before"]) * 2 // 3
        self.assertEqual(served_serial(port, "a.lbtest", root), first["serial"])

        failures = []
        stop = threading.Event()
        keepalive = {"serial": None, "times": []}
        handshakes = []  # (monotonic start, serial)

        def keepalive_client():
            try:
                conn = tls_connection(port, "a.lbtest", root)
                keepalive["serial"] = int(conn.sock.getpeercert()["serialNumber"], 16)
                with conn:
                    n = 0
                    while not stop.is_set():
                        n += 1
                        status, body = get(conn, "/keepalive/%d" % n)
                        if (status, body) != (200, BODY):
                            failures.append("keep-alive request %d: %d %r" % (n, status, body))
                            return
                        keepalive["times"].append(time.monotonic())
                        time.sleep(0.02)
            except Exception as e:
                failures.append("keep-alive connection after %d requests: %r"
                                % (len(keepalive["times"]), e))

        def new_connections():
            n = 0
            while not stop.is_set():
                n += 1
                started = time.monotonic()
                try:
                    with tls_connection(port, "a.lbtest", root) as conn:
                        serial = int(conn.sock.getpeercert()["serialNumber"], 16)
                        status, body = get(conn, "/new/%d" % n, close=True)
                        if (status, body) != (200, BODY):
                            failures.append("new connection %d: %d %r" % (n, status, body))
                        handshakes.append((started, serial))
                except Exception as e:
                    failures.append("new connection %d: %r" % (n, e))
                stop.wait(0.5)

        threads = [threading.Thread(target=keepalive_client, daemon=True),
                   threading.Thread(target=new_connections, daemon=True)]
        for t in threads:
            t.start()
        try:
            # The renewal: due at renews_at, done a moment later.
            timeout = max(5.0, renews_at - time.time() + 15)
            self.wait_loaded(lb, times=2, timeout=timeout)
            renewed = time.monotonic()
            renewed_wall = time.time()
            second = cert_info(read(self.stored()[1]))
            harness.wait_until(lambda: any(s == second["serial"] for t, s in handshakes), 5)
            time.sleep(1.0)
        finally:
            stop.set()
            for t in threads:
                t.join(15)
        self.assertFalse(any(t.is_alive() for t in threads), "a client thread hangs")

        self.assertEqual(failures, [])
        self.assertGreaterEqual(renewed_wall, renews_at - 1, "renewed before 2/3 of the lifetime")
        self.assertNotEqual(second["serial"], first["serial"])
        self.assertEqual(len(ISSUED_RE.findall(lb.stderr_text())), 2)
        # The keep-alive connection kept its certificate and its requests went
        # on through the renewal.
        self.assertEqual(keepalive["serial"], first["serial"])
        before = [t for t in keepalive["times"] if t < renewed]
        after = [t for t in keepalive["times"] if t > renewed]
        self.assertGreaterEqual(len(before), 20, "keep-alive requests before the renewal")
        self.assertGreaterEqual(len(after), 20, "keep-alive requests after the renewal")
        # New handshakes: the old serial before, the new one after.
        self.assertTrue(any(s == first["serial"] for t, s in handshakes if t < renewed), handshakes)
        late = [s for t, s in handshakes if t > renewed]
        self.assertGreaterEqual(len(late), 2, handshakes)
        self.assertEqual(set(late), {second["serial"]},
                         "handshakes after the renewal (old serial %x, new %x)"
                         % (first["serial"], second["serial"]))
        self.assertEqual(lb.metric("lb_acme_renewals_total", listener="public",
                                   result="success"), 2)
        self.assertEqual(lb.metric("lb_acme_renewals_total", listener="public",
                                   result="failure"), 0)
        self.assertEqual(expiry(lb.metrics_text(), "a.lbtest"), [second["not_after"]])

    def test_acme_server_down_at_renewal(self):
        pebble = self.new_pebble(validity=24)
        lb = self.lb(self.config(pebble, "http-01"))
        self.wait_loaded(lb)
        root, _, _ = pebble.trust()
        port = pebble.tls_port
        first = cert_info(read(self.stored()[1]))
        renews_at = first["not_before"] + (first["not_after"] - first["not_before"]) * 2 // 3

        pebble.kill()
        ok = harness.wait_until(
            lambda: lb.metric("lb_acme_renewals_total", listener="public", result="failure") >= 2,
            max(5.0, renews_at - time.time() + 12), 0.05)
        self.assertTrue(ok, lb.stderr_text())
        self.assertGreaterEqual(time.time(), renews_at - 1, "an order before the renewal was due")

        # Logged and counted, while the current certificate serves. The
        # backoff: 2 s, doubling, but never more than a quarter of what is left
        # (8 s at the renewal point, about 6 s at the second failure: 1 s).
        text = lb.stderr_text()
        failed = FAILED_RE.findall(text)
        self.assertGreaterEqual(len(failed), 2, text)
        for why, wait, serving in failed:
            self.assertIn("127.0.0.1:%d" % pebble.port, why)
            self.assertTrue(1 <= int(wait) <= 2, "backoff %ss: %s" % (wait, text))
            self.assertTrue(serving.startswith("the current certificate serves until "), serving)
            self.assertEqual(log_time(serving.split()[-1]), first["not_after"], serving)
        self.assertEqual(failed[1][1], "1", text)
        self.assertEqual(len(ISSUED_RE.findall(text)), 1)

        # The old certificate still serves new handshakes, verified, while valid.
        self.assertLess(time.time(), first["not_after"])
        for name in DOMAINS:
            self.assertEqual(served_serial(port, name, root), first["serial"], name)
        with tls_connection(port, "b.lbtest", root) as conn:
            self.assertEqual(get(conn, "/", "b.lbtest", close=True), (200, BODY))
        self.assertEqual(lb.metric("lb_acme_renewals_total", listener="public",
                                   result="success"), 1)
        self.assertEqual(expiry(lb.metrics_text(), "a.lbtest"), [first["not_after"]])

        # The ACME server back on the same ports, forgetting every account: the
        # next tries renew (the account created again).
        pebble.start()
        new_root, chain, _ = pebble.trust()
        self.wait_loaded(lb, times=2, timeout=20)
        second = cert_info(read(self.stored()[1]))
        self.assertNotEqual(second["serial"], first["serial"])
        self.assertEqual(served_serial(port, "a.lbtest", new_root), second["serial"])
        self.assert_curl_verifies(port, chain)
        self.assertEqual(lb.metric("lb_acme_renewals_total", listener="public",
                                   result="success"), 2)

    def test_restart_reuses_the_stored_account_and_certificate(self):
        pebble = self.new_pebble()
        config = self.config(pebble, "http-01")
        lb = self.lb(config)
        self.wait_loaded(lb)
        root, _, _ = pebble.trust()
        port = pebble.tls_port
        serial = served_serial(port, "a.lbtest", root)
        files = {p: read(p) for p in self.stored()}
        before = pebble.counts()
        self.assertEqual(before["Added order "], 1, before)
        self.assertEqual(lb.terminate(), 0)

        lb2 = self.lb(config)
        # The stored certificate serves from the first handshake on.
        self.assertEqual(served_serial(port, "a.lbtest", root), serial)
        self.assertEqual(served_serial(port, "b.lbtest", root), serial)
        ok = harness.wait_until(
            lambda: "listener public: acme: certificate for a.lbtest stored, expires "
                    in lb2.stderr_text(), 10)
        self.assertTrue(ok, lb2.stderr_text())
        m = re.search(r"certificate for a\.lbtest stored, expires (\S+), renews at (\S+)",
                      lb2.stderr_text())
        leaf = cert_info(files[self.stored()[1]])
        self.assertEqual(log_time(m.group(1)), leaf["not_after"])
        self.assertAlmostEqual(log_time(m.group(2)), leaf["not_before"] +
                               (leaf["not_after"] - leaf["not_before"]) * 2 // 3, delta=1)
        time.sleep(1.5)  # an order would be under way by now

        text = lb2.stderr_text()
        self.assertIsNone(ISSUED_RE.search(text), text)
        self.assertNotIn("new account key", text)
        self.assertNotIn("acme: account ", text)
        self.assertIsNone(FAILED_RE.search(text), text)
        self.assertEqual(pebble.counts(), before, "the ACME server saw a new order or account")
        self.assertEqual({p: read(p) for p in self.stored()}, files, "stored files changed")
        self.assertEqual(served_serial(port, "a.lbtest", root), serial)
        self.assertEqual(lb2.metric("lb_acme_renewals_total", listener="public",
                                    result="success"), 0)
        self.assertEqual(lb2.metric("lb_acme_renewals_total", listener="public",
                                    result="failure"), 0)
        self.assertEqual(expiry(lb2.metrics_text(), "b.lbtest"), [leaf["not_after"]])

    def test_storage_writable_by_others_is_refused_until_fixed(self):
        # The storage directory exists before lb starts, open to everybody.
        os.mkdir(self.storage)
        os.chmod(self.storage, 0o777)
        self.assertEqual(stat.S_IMODE(os.stat(self.storage).st_mode), 0o777)
        pebble = self.new_pebble()
        lb = self.lb(self.config(pebble, "http-01"))
        ok = harness.wait_until(lambda: FAILED_RE.search(lb.stderr_text()), 15)
        self.assertTrue(ok, lb.stderr_text())
        m = FAILED_RE.search(lb.stderr_text())
        self.assertIn("%s is writable by other users" % self.storage, m.group(1), m.group(0))
        self.assertEqual((m.group(2), m.group(3)), ("2", "no certificate yet"), m.group(0))
        self.assertGreaterEqual(lb.metric("lb_acme_renewals_total", listener="public",
                                          result="failure"), 1)
        self.assertEqual(lb.metric("lb_acme_renewals_total", listener="public",
                                   result="success"), 0)
        # Nothing was written there, nothing was asked of the ACME server, and
        # lb left the directory's mode alone.
        self.assertEqual(os.listdir(self.storage), [])
        self.assertFalse(os.path.exists(self.stored()[0]))
        self.assertEqual(pebble.count(r"POST /sign-me-up"), 0)
        self.assertEqual(pebble.count(r"Added order "), 0)
        self.assertEqual(stat.S_IMODE(os.stat(self.storage).st_mode), 0o777)
        self.assertNotIn(LOADED, lb.stderr_text())

        # Fixed: the next try (2 s after the first, then 4 s...) succeeds.
        os.chmod(self.storage, 0o700)
        self.wait_loaded(lb, timeout=20)
        _, chain, _ = pebble.trust()
        self.assert_curl_verifies(pebble.tls_port, chain)
        for path in self.stored():
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600, path)
        text = lb.stderr_text()
        self.assertEqual(len(ISSUED_RE.findall(text)), 1, text)
        for why, _, _ in FAILED_RE.findall(text):
            self.assertIn("is writable by other users", why, text)
        self.assertEqual(lb.metric("lb_acme_renewals_total", listener="public",
                                   result="success"), 1)

    def test_tls_alpn01_on_a_listener_requiring_client_certificates(self):
        client_ca, client_cert, client_key = make_client_ca(self.storage_parent)
        pebble = self.new_pebble()
        lb = self.lb(self.config(pebble, "tls-alpn-01", plain=False,
                                 tls_extra='\n      client_ca: "%s"\n      client_verify: required'
                                           % client_ca))
        self.assertEqual(list(lb.listeners), ["public"])
        # The validator presents no client certificate: it must not be asked
        # for one, or no certificate is ever issued.
        self.wait_loaded(lb, timeout=30)
        _, chain, _ = pebble.trust()
        port = pebble.tls_port
        plog = pebble.log_text()
        self.assertEqual(pebble.count(r"set VALID by completed challenge"), 2, plog[-3000:])
        self.assertNotIn("Attempting to validate w/ HTTP", plog)
        self.assertIsNone(FAILED_RE.search(lb.stderr_text()), lb.stderr_text())
        self.assertEqual(lb.metric("lb_acme_renewals_total", listener="public",
                                   result="success"), 1)

        # A client with a certificate of client_ca: a 200, lb's certificate verified.
        for name in DOMAINS:
            code, out, err = self.curl(port, name, chain, "--cert", client_cert,
                                       "--key", client_key, path="/mtls/" + name)
            self.assertEqual((code, out), (0, BODY), "curl --cert https://%s: %s" % (name, err))
        # Without one: refused in the handshake, nothing reaches the origin.
        code, out, err = self.curl(port, "a.lbtest", chain, path="/mtls/anonymous")
        self.assertNotEqual(code, 0, "no client certificate, yet curl got %r" % out)
        self.assertEqual(out, b"")
        with self.assertRaises((ssl.SSLError, ConnectionError, OSError)):
            with tls_connection(port, "a.lbtest", chain) as conn:
                get(conn, "/mtls/python-anonymous")
        self.assertEqual(sorted(e["target"] for e in self.web.log_entries()),
                         ["/mtls/" + name for name in DOMAINS])
        self.assertTrue(lb.running())

    def test_stored_file_holds_the_key_then_the_chain(self):
        pebble = self.new_pebble()
        lb = self.lb(self.config(pebble, "http-01"))
        self.wait_loaded(lb)
        root, _, intermediate = pebble.trust()
        path = self.stored()[1]
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        text = read(path)
        blocks = pem_blocks(text)
        labels = [label for label, _ in blocks]
        self.assertIn(labels[0], ("PRIVATE KEY", "EC PRIVATE KEY"), labels)
        self.assertGreaterEqual(len(labels), 3, labels)
        self.assertEqual(labels[1:], ["CERTIFICATE"] * (len(labels) - 1),
                         "the key first, then the chain: %r" % labels)
        key, leaf_pem, issuer_pem = blocks[0][1], blocks[1][1], blocks[2][1]
        # The leaf is what lb serves, and it belongs to the key stored with it.
        leaf = cert_info(leaf_pem)
        self.assertEqual(sorted(leaf["sans"]), DOMAINS)
        self.assertEqual(served_serial(pebble.tls_port, "a.lbtest", root), leaf["serial"])
        self.assertEqual(openssl("pkey", "-pubout", input=key.encode()),
                         openssl("x509", "-noout", "-pubkey", input=leaf_pem.encode()),
                         "the stored key does not match the stored certificate")
        # Then its issuer, the ACME server's intermediate.
        self.assertEqual(leaf["issuer"], cert_info(issuer_pem)["subject"])
        self.assertEqual(cert_info(issuer_pem)["serial"], cert_info(intermediate)["serial"])
        # No temporary file left behind.
        names = sorted(os.listdir(self.storage))
        self.assertEqual([n for n in names if n.endswith(".tmp") or ".tmp" in n], [], names)
        self.assertIn("account.key", names)
        self.assertIn("a.lbtest.pem", names)


if __name__ == "__main__":
    harness.main()
