#!/usr/bin/env python3
"""One ACME order for a tier: several lb instances with the same tls.acme
domains and a `cluster:` block (Redis) share their ACME state, so N
instances behind one name make ONE order at the ACME server, whichever
instance its validations reach.

The tier (everything on 127.0.0.1, started by each test): redis-server on an
ephemeral port (nothing saved); pebble (the ACME server for tests, its HTTPS
certificate signed by a test CA, lb's acme.ca) resolving a.lbtest and
b.lbtest through dnsmasq to 127.0.0.1; HAProxy in TCP mode (roundrobin, no
PROXY protocol, no checks) bound at pebble's HTTP-01 port in front of the
three instances' plain listeners and at its TLS-ALPN-01 port in front of
their TLS listeners, so a validation may reach any instance; three lb
instances (one worker each, `cluster: {redis, instances: 3}`, a plain
listener and the TLS listener `public` on ports of their own, tls.acme for
[a.lbtest, b.lbtest] with a storage directory of its own, a JSON access log
of its own), started together.

Redis keys (prefix "lb:"; NAME is a.lbtest@ and the first 12 hex digits of
the SHA-256 of the directory URL and the sorted domains, one per line):
lb:acme:accounts (directory URL -> the tier's account key), lb:acme:cert:NAME
(a hash: pem, the key and chain; expires, its notAfter), lb:acme:lock:NAME
(the instance ordering; gone after the order), lb:acme:challenges (only while
validated), lb:acme:challenges:version, lb:acme:seen (instance -> the
challenges version it answers).

Tests:
  - http-01: within 40 s every instance has its certificate ("certificates
    loaded again"); exactly one instance logged "issued", the other two
    "another instance of the tier is ordering ...; waiting" then "taken from
    the tier" (with the certificate's notAfter); pebble saw 1 order, 1
    issued certificate and 1 new account (POST /sign-me-up): one account
    for the tier. curl verifies both names on each instance's own TLS port
    against pebble's root + intermediate, and all three serve the same
    serial. The validations that reached lb (GET
    /.well-known/acme-challenge/TOKEN in the access logs) were the tokens
    pebble asked for, answered 200 by lb itself (the origin saw none of
    them), and at least one by an instance other than the one that ordered
    (roundrobin over two validation connections: certain): the challenges
    reach every instance through Redis. Redis then holds the certificate,
    one account (pebble's directory), no lock, no challenge, and lb:acme:seen
    has the three instances at the challenges' current version; every
    instance's a.lbtest.pem is Redis's certificate byte for byte, and the
    orderer's account.key is Redis's account key (a waiting instance's, if
    it wrote one, too). Then a fourth instance (same config, empty storage of
    its own, not behind HAProxy) takes the certificate from Redis at start
    ("taken from the tier", loaded within 10 s), asks pebble for nothing (no
    order, no account: the counts stay), serves the same serial, verified;
  - the store away when an 18 s certificate falls due: no instance orders
    while more than a sixth of its lifetime is left (each logs that it
    waits for the tier's storage, and until when); from then on each
    orders alone;
  - tls-alpn-01 without plain listeners: the same three-instance start;
    exactly one order, 2 "set VALID by completed challenge" and no HTTP
    validation in pebble's log, HAProxy spread the validation connections
    over at least two instances, every instance serves the same verified
    certificate, and Redis holds no lock and no challenge afterwards.

Environment: LB_BIN, LB_SOURCE_DIR; REDIS_SERVER_BIN (default
/usr/bin/redis-server), HAPROXY_BIN (default /usr/sbin/haproxy); skipped
without redis-server, HAProxy, pebble or dnsmasq.
"""

import calendar
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import wait_until  # noqa: E402
from acme_support import (DOMAINS, FAILED_RE, ISSUED_RE, LOADED, PEBBLE, AcmeCase,  # noqa: E402
                          cert_info, log_time, openssl, read, served_serial)
from dns_server import DNSMASQ  # noqa: E402
from haproxy_tier import HAPROXY, HAProxy  # noqa: E402
from redis_server import REDIS_SERVER, Redis, pairs  # noqa: E402

MISSING = [p for p in (PEBBLE, REDIS_SERVER, HAPROXY, DNSMASQ) if not os.access(p, os.X_OK)]

INSTANCES = 3
CHALLENGE_PATH = "/.well-known/acme-challenge/"

TAKEN_RE = re.compile(r"^lb: listener public: acme: certificate for a\.lbtest, b\.lbtest taken "
                      r"from the tier, expires (\S+)\s*$", re.M)
WAITING = ("lb: listener public: acme: another instance of the tier is ordering a.lbtest, "
           "b.lbtest; waiting for its certificate")
NOT_SEEN = "instances answer the challenge after"  # the orderer gave up waiting for the tier
HTTP_VALIDATION_RE = re.compile(r"Attempting to validate w/ HTTP: http://[a-z.]+:\d+"
                                + re.escape(CHALLENGE_PATH) + r"([A-Za-z0-9_-]+)")


def public_key(pem):
    """The public key (PEM) of a private key in PEM text."""
    return openssl("pkey", "-pubout", input=pem.encode())


# ---------------------------------------------------------------------------

class Instance:
    """One lb of the tier: its ports, storage and access log (chosen before it
    starts, so HAProxy can be configured first), and its harness.Lb."""

    def __init__(self, parent, index):
        self.index = index
        self.name = "lb%d" % (index + 1)
        self.plain_port = harness.unused_port()
        self.tls_port = harness.unused_port()
        self.storage = os.path.join(parent, "acme-%s" % self.name)  # lb creates it
        self.access_log = os.path.join(parent, "access-%s.json" % self.name)
        self.lb = None

    def account_key(self):
        return os.path.join(self.storage, "account.key")

    def certificate(self):
        return os.path.join(self.storage, "a.lbtest.pem")

    def log(self):
        return self.lb.stderr_text()

    def access_entries(self):
        try:
            text = read(self.access_log)
        except OSError:
            return []
        # Whole lines only (the writer may be mid-flush).
        return [json.loads(line) for line in text.split("\n")[:-1] if line.strip()]

    def validations(self):
        """Access-log entries of GET /.well-known/acme-challenge/..."""
        return [e for e in self.access_entries() if e.get("target", "").startswith(CHALLENGE_PATH)]


@unittest.skipIf(MISSING, "missing: %s" % ", ".join(MISSING))
class AcmeTier(AcmeCase):
    def setUp(self):
        self.web = self.origin("web")
        self.parent = tempfile.mkdtemp(prefix="lb-acme-tier-storage-")
        self.addCleanup(shutil.rmtree, self.parent, True)
        self.redis = Redis()
        self.addCleanup(self.redis.cleanup)
        self.pebble = self.new_pebble()
        self.instances = []
        self.addCleanup(self._report)

    def _report(self):
        # Runs after harness has printed the lb logs (cleanups run last-in,
        # first-out), before Redis and the access logs go.
        if not (self.failed_so_far() or os.environ.get("LB_TEST_VERBOSE")):
            return
        for inst in self.instances:
            sys.stderr.write("---- %s: challenge requests in its access log ----\n%r\n"
                             % (inst.name, inst.validations()))
        try:
            sys.stderr.write("---- Redis lb:acme:* ----\n%r\n" % self.redis.dump("lb:acme:*"))
        except Exception as e:  # noqa: BLE001
            sys.stderr.write("---- Redis: %r ----\n" % e)

    def config(self, inst, challenge, plain=True):
        plain_listener = f"""
  - name: plain
    listen: 127.0.0.1:{inst.plain_port}
    routes: [ {{ pool: web }} ]""" if plain else ""
        return f"""
workers: 1
admin: {{ listen: 127.0.0.1:0 }}
access_log: {{ path: "{inst.access_log}", format: json }}
cluster:
  redis: {self.redis.addr}
  instances: {INSTANCES}
listeners:{plain_listener}
  - name: public
    listen: 127.0.0.1:{inst.tls_port}
    tls:
      acme:
        directory: {self.pebble.directory}
        email: ops@lbtest.example
        domains: [a.lbtest, b.lbtest]
        storage: {inst.storage}
        ca: {self.ca}
        challenge: {challenge}
    routes: [ {{ pool: web }} ]
pools:
  web:
    backends: [ "{self.web.addr}" ]
"""

    def start_tier(self, challenge, plain=True):
        """HAProxy in front of three instances (chosen ports), then the three
        lb started together -> the instances."""
        tier = [Instance(self.parent, i) for i in range(INSTANCES)]
        frontends = [("tls", self.pebble.tls_port, [(i.name, i.tls_port, None) for i in tier])]
        if plain:
            frontends.insert(0, ("plain", self.pebble.http_port,
                                 [(i.name, i.plain_port, None) for i in tier]))
        self.haproxy = HAProxy(frontends, health_check=None, send_proxy=False)
        self.addCleanup(self.haproxy.cleanup_after, self)
        for inst in tier:
            inst.lb = self.lb(self.config(inst, challenge, plain), wait_ready=False)
            self.instances.append(inst)
        for inst in tier:
            inst.lb.wait_ready(20)
            self.assertEqual(inst.lb.port("public"), inst.tls_port)
        return tier

    def start_instance(self, index, challenge, plain=True):
        inst = Instance(self.parent, index)
        inst.lb = self.lb(self.config(inst, challenge, plain), timeout=20)
        self.instances.append(inst)
        return inst

    def wait_loaded(self, instances, timeout):
        ok = wait_until(lambda: all(LOADED in i.log() for i in instances), timeout, 0.05)
        self.assertTrue(ok, "not every instance has its certificate after %.0f s: %s"
                        % (timeout, {i.name: LOADED in i.log() for i in instances}))

    def assert_serves(self, inst, root, chain):
        """curl verifies both names on the instance's own TLS port -> the serial served."""
        self.assert_curl_verifies(inst.tls_port, chain, who=inst.name)
        serials = {served_serial(inst.tls_port, name, root) for name in DOMAINS}
        self.assertEqual(len(serials), 1, "%s: one certificate for both names" % inst.name)
        return serials.pop()

    def assert_one_order(self, tier):
        """Exactly one instance ordered, the others waited and took its
        certificate -> the orderer."""
        logs = {i.name: i.log() for i in tier}
        issued = [i for i in tier if ISSUED_RE.search(logs[i.name])]
        self.assertEqual(len(issued), 1, "instances that logged 'issued': %r"
                         % [i.name for i in issued])
        orderer = issued[0]
        self.assertIsNone(TAKEN_RE.search(logs[orderer.name]), orderer.name)
        self.assertNotIn(WAITING, logs[orderer.name])
        for inst in tier:
            text = logs[inst.name]
            self.assertIsNone(FAILED_RE.search(text), "%s: %s" % (inst.name, FAILED_RE.search(text)))
            self.assertNotIn(NOT_SEEN, text, inst.name)
            if inst is orderer:
                continue
            self.assertIsNone(ISSUED_RE.search(text), inst.name)
            self.assertEqual(len(TAKEN_RE.findall(text)), 1, inst.name)
            self.assertEqual(text.count(WAITING), 1, inst.name)
            self.assertLess(text.index(WAITING), TAKEN_RE.search(text).start(), inst.name)
            self.assertLess(TAKEN_RE.search(text).start(), text.rindex(LOADED), inst.name)
        counts = self.pebble.counts()
        self.assertEqual(counts["Added order "], 1, counts)
        self.assertEqual(counts["Issued certificate serial "], 1, counts)
        self.assertEqual(counts["POST /sign-me-up"], 1, "one account for the tier: %r" % counts)
        return orderer

    def share_name(self):
        """The certificate's name in Redis: FIRST-DOMAIN@HASH."""
        what = "\n".join([self.pebble.directory] + sorted(DOMAINS))
        return "a.lbtest@" + hashlib.sha256(what.encode()).hexdigest()[:12]

    def stored_cert(self):
        """lb:acme:cert:NAME's pem (the only certificate key), its expires
        field checked against the certificate's notAfter."""
        keys = self.redis.cmd("KEYS", "lb:acme:cert:*")
        self.assertEqual(keys, ["lb:acme:cert:" + self.share_name()], self.redis.dump("lb:acme:*"))
        stored = pairs(self.redis.cmd("HGETALL", keys[0]))
        self.assertEqual(sorted(stored), ["expires", "pem"], self.redis.dump("lb:acme:*"))
        not_after = subprocess.run(["openssl", "x509", "-noout", "-enddate"],
                                   input=stored["pem"].encode(), capture_output=True,
                                   check=True).stdout.decode().strip().split("=", 1)[1]
        self.assertEqual(int(stored["expires"]),
                         calendar.timegm(time.strptime(not_after, "%b %d %H:%M:%S %Y %Z")))
        return stored["pem"]

    def assert_redis_clean(self):
        """No lock left, no challenge published."""
        self.assertEqual(self.redis.cmd("EXISTS", "lb:acme:lock:" + self.share_name()), 0,
                         "the lock outlived the order: %r" % self.redis.dump("lb:acme:*"))
        self.assertEqual(self.redis.cmd("HLEN", "lb:acme:challenges"), 0,
                         self.redis.dump("lb:acme:*"))

    # ------------------------------------------------------------------------

    def test_http01_one_order_for_the_tier(self):
        t0 = time.monotonic()
        tier = self.start_tier("http-01")
        self.wait_loaded(tier, 40)
        loaded_after = time.monotonic() - t0
        root, chain, _ = self.pebble.trust()
        orderer = self.assert_one_order(tier)

        # Every instance serves the same certificate, verified on its own port.
        serials = {inst.name: self.assert_serves(inst, root, chain) for inst in tier}
        self.assertEqual(len(set(serials.values())), 1, serials)
        serial = serials[orderer.name]

        # Redis: the certificate, one account, no lock, no challenge left.
        cert = self.stored_cert()
        self.assertTrue(cert, self.redis.dump("lb:acme:*"))
        leaf = cert_info(cert)
        self.assertEqual(leaf["serial"], serial)
        self.assertEqual(sorted(leaf["sans"]), DOMAINS)
        accounts = pairs(self.redis.cmd("HGETALL", "lb:acme:accounts"))
        self.assertEqual(list(accounts), [self.pebble.directory], self.redis.dump("lb:acme:*"))
        self.assert_redis_clean()
        # Every instance answers the challenges' current version.
        version = lambda: int(self.redis.cmd("GET", "lb:acme:challenges:version") or 0)  # noqa: E731
        self.assertGreaterEqual(version(), 2, self.redis.dump("lb:acme:*"))
        ok = wait_until(lambda: list(pairs(self.redis.cmd("HGETALL", "lb:acme:seen")).values())
                        == [str(version())] * INSTANCES, 3, 0.1)
        self.assertTrue(ok, self.redis.dump("lb:acme:*"))

        # Storage: each instance holds Redis's certificate byte for byte; the
        # account key is the tier's.
        for inst in tier:
            self.assertEqual(read(inst.certificate()), cert, inst.name)
        self.assertTrue(os.path.isfile(orderer.account_key()), orderer.name)
        tier_key = public_key(accounts[self.pebble.directory])
        self.assertEqual(public_key(read(orderer.account_key())), tier_key, orderer.name)
        for inst in tier:
            if os.path.exists(inst.account_key()):
                self.assertEqual(public_key(read(inst.account_key())), tier_key, inst.name)

        # The TAKEN lines give the certificate's notAfter.
        for inst in tier:
            if inst is not orderer:
                m = TAKEN_RE.search(inst.log())
                self.assertEqual(log_time(m.group(1)), leaf["not_after"], m.group(0))

        # The validations: the tokens pebble asked for, answered 200 by lb
        # itself, not all by the instance that ordered.
        asked = set(HTTP_VALIDATION_RE.findall(self.pebble.log_text()))
        self.assertEqual(len(asked), 2, self.pebble.log_text()[-3000:])
        ok = wait_until(lambda: {e["target"][len(CHALLENGE_PATH):]
                                 for i in tier for e in i.validations()} >= asked, 5, 0.1)
        answered = [(i.name, e) for i in tier for e in i.validations()]
        self.assertTrue(ok, "pebble asked for %r; the access logs show %r" % (asked, answered))
        self.assertEqual({e["target"][len(CHALLENGE_PATH):] for _, e in answered}, asked)
        for name, e in answered:
            self.assertEqual((e["method"], e["status"], e["listener"]), ("GET", 200, "plain"),
                             "%s: %r" % (name, e))
        self.assertEqual(self.web.requests_seen(CHALLENGE_PATH), 0,
                         "a validation was routed to the origin: an instance had no answer")
        others = {name for name, _ in answered} - {orderer.name}
        self.assertTrue(others, "every validation reached the instance that ordered (%s): %r"
                        % (orderer.name, answered))
        if os.environ.get("LB_TEST_VERBOSE"):
            sys.stderr.write("tier loaded in %.1f s; %s ordered; validations answered by %r\n"
                             % (loaded_after, orderer.name, sorted(n for n, _ in answered)))

        # A fourth instance, started later with an empty storage and not
        # behind HAProxy: the certificate from Redis, nothing asked of pebble.
        before = self.pebble.counts()
        late = self.start_instance(INSTANCES, "http-01")
        self.wait_loaded([late], 10)
        text = late.log()
        m = TAKEN_RE.search(text)
        self.assertIsNotNone(m, text)
        self.assertEqual(log_time(m.group(1)), leaf["not_after"])
        self.assertEqual(self.assert_serves(late, root, chain), serial)
        self.assertEqual(read(late.certificate()), cert)
        time.sleep(1.5)  # an order or an account request would be under way by now
        text = late.log()
        self.assertEqual(self.pebble.counts(), before, "the late instance asked pebble")
        self.assertIsNone(ISSUED_RE.search(text), text)
        self.assertIsNone(FAILED_RE.search(text), text)
        self.assertNotIn(WAITING, text)
        self.assertNotIn("new account key", text)
        self.assertEqual(self.stored_cert(), cert)
        self.assert_redis_clean()

    def test_store_away_when_due_holds_orders_back_until_a_sixth_is_left(self):
        """Redis gone when an 18 s certificate falls due (at 2/3 of its life):
        no instance orders while more than a sixth of the lifetime is left
        (ordering alone, every instance would order); each says it waits and
        until when; from that moment on it orders alone."""
        self.pebble.kill()
        self.pebble = self.new_pebble(validity=18)
        tier = self.start_tier("http-01")
        self.wait_loaded(tier, 40)
        self.assert_one_order(tier)
        info = cert_info(read(tier[0].certificate()))
        life = info["not_after"] - info["not_before"]
        due, alone = info["not_before"] + life * 2 / 3, info["not_after"] - life // 6
        self.redis.kill()
        self.assertGreater(due - time.time(), 1.0, "the certificate was due before Redis went")
        # Until shortly before `alone`: still the one order, and every
        # instance says it is holding back.
        time.sleep(max(0.0, alone - 1.5 - time.time()))
        self.assertEqual(self.pebble.counts()["Added order "], 1,
                         "an instance ordered while the tier's storage was away and time was left")
        for inst in tier:
            self.assertIn("acme: a.lbtest, b.lbtest is due; waiting for the tier's storage until",
                          inst.log(), inst.name)
            self.assertIn("the tier's storage cannot be reached", inst.log(), inst.name)
        # From `alone` on, each orders alone (whether its validation reaches
        # it through the balancer is another matter: Redis is away).
        ok = wait_until(lambda: self.pebble.counts()["Added order "] >= 1 + INSTANCES,
                        max(1.0, alone + 8 - time.time()), 0.1)
        self.assertTrue(ok, "no instance ordered alone once a sixth of the lifetime was left: %r"
                        % self.pebble.counts())

    def test_tls_alpn01_one_order_without_plain_listeners(self):
        tier = self.start_tier("tls-alpn-01", plain=False)
        for inst in tier:
            self.assertEqual(list(inst.lb.listeners), ["public"], inst.name)
        self.wait_loaded(tier, 40)
        root, chain, _ = self.pebble.trust()
        self.assert_one_order(tier)

        plog = self.pebble.log_text()
        self.assertEqual(self.pebble.count(r"set VALID by completed challenge"), 2, plog[-3000:])
        self.assertNotIn("Attempting to validate w/ HTTP", plog)
        # The validation connections went to more than one instance.
        sessions = self.haproxy.sessions("tls")
        self.assertGreaterEqual(sum(1 for n in sessions.values() if n > 0), 2, sessions)

        serials = {inst.name: self.assert_serves(inst, root, chain) for inst in tier}
        self.assertEqual(len(set(serials.values())), 1, serials)
        cert = self.stored_cert()
        self.assertEqual(cert_info(cert)["serial"], next(iter(serials.values())))
        for inst in tier:
            self.assertEqual(read(inst.certificate()), cert, inst.name)
        self.assert_redis_clean()


if __name__ == "__main__":
    harness.main()
