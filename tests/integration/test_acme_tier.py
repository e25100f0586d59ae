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

Redis keys (prefix "lb:"): lb:acme:accounts (directory URL -> the tier's
account key), lb:acme:cert:a.lbtest (the key and chain), lb:acme:lock:a.lbtest
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
import csv
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
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import wait_until  # noqa: E402
from dns_server import DNSMASQ, Dnsmasq  # noqa: E402

PEBBLE = "/usr/bin/pebble"
REDIS_SERVER = os.environ.get("REDIS_SERVER_BIN", "/usr/bin/redis-server")
HAPROXY = os.environ.get("HAPROXY_BIN", "/usr/sbin/haproxy")
MISSING = [p for p in (PEBBLE, REDIS_SERVER, HAPROXY, DNSMASQ) if not os.access(p, os.X_OK)]

DOMAINS = ["a.lbtest", "b.lbtest"]
BODY = b"Hello from web\n"
INSTANCES = 3
CHALLENGE_PATH = "/.well-known/acme-challenge/"

ISSUED_RE = re.compile(r"^lb: listener public: acme: certificate for a\.lbtest, b\.lbtest issued, "
                       r"expires (\S+), renews at (\S+)\s*$", re.M)
TAKEN_RE = re.compile(r"^lb: listener public: acme: certificate for a\.lbtest, b\.lbtest taken "
                      r"from the tier, expires (\S+)\s*$", re.M)
WAITING = ("lb: listener public: acme: another instance of the tier is ordering a.lbtest, "
           "b.lbtest; waiting for its certificate")
LOADED = "acme: certificates loaded again"
FAILED_RE = re.compile(r"^lb: listener public: acme: order for a\.lbtest, b\.lbtest failed: (.+); "
                       r"trying again in (\d+)s \((.*)\)\s*$", re.M)
NOT_SEEN = "instances answer the challenge after"  # the orderer gave up waiting for the tier
HTTP_VALIDATION_RE = re.compile(r"Attempting to validate w/ HTTP: http://[a-z.]+:\d+"
                                + re.escape(CHALLENGE_PATH) + r"([A-Za-z0-9_-]+)")


# ---------------------------------------------------------------------------
# certificates (as in test_acme.py)

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
    {subject, issuer, serial (int), not_after (unix seconds), sans [names]}."""
    out = openssl("x509", "-noout", "-nameopt", "RFC2253", "-subject", "-issuer", "-serial",
                  "-enddate", "-ext", "subjectAltName", input=pem.encode())
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
        elif key == "notAfter":
            info["not_after"] = int(ssl.cert_time_to_seconds(value.strip()))
        elif "Subject Alternative Name" in line and i + 1 < len(lines):
            info["sans"] = [s.strip()[4:] for s in lines[i + 1].split(",")
                            if s.strip().startswith("DNS:")]
    return info


def public_key(pem):
    """The public key (PEM) of a private key in PEM text."""
    return openssl("pkey", "-pubout", input=pem.encode())


def read(path):
    with open(path) as f:
        return f.read()


def log_time(text):
    """"2026-12-07T06:19:53Z" -> unix seconds."""
    return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ"))


def client_context(cafile):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def served_serial(port, name, cafile):
    """A new TLS handshake with SNI `name`, verified against `cafile` ->
    the serial of the certificate lb served."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as plain:
        with client_context(cafile).wrap_socket(plain, server_hostname=name) as s:
            return cert_info(ssl.DER_cert_to_PEM_cert(s.getpeercert(binary_form=True)))["serial"]


# ---------------------------------------------------------------------------
# pebble (as in test_acme.py)

class Pebble:
    """pebble on loopback ports: `port` (ACME, https://127.0.0.1:PORT/dir),
    `management_port` (/roots/0, /intermediates/0); it validates HTTP-01 at
    `http_port` and TLS-ALPN-01 at `tls_port` (HAProxy's frontends here)."""

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

    @property
    def directory(self):
        return "https://127.0.0.1:%d/dir" % self.port

    def start(self, timeout=15.0):
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
            wait_until(lambda: "Listening on" in self.log_text()[offset:]
                       or self.proc.poll() is not None, max(1.0, deadline - time.monotonic()))
            if "Listening on" in self.log_text()[offset:] and self.proc.poll() is None:
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

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def count(self, pattern):
        return len(re.findall(pattern, self.log_text()))

    def counts(self):
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
        """The issuing root and intermediate -> (root.pem path, root+intermediate path)."""
        root, intermediate = self._get("/roots/0"), self._get("/intermediates/0")
        root_path = os.path.join(self.dir, "root.pem")
        chain_path = os.path.join(self.dir, "root-intermediate.pem")
        with open(root_path, "w") as f:
            f.write(root)
        with open(chain_path, "w") as f:
            f.write(root.rstrip("\n") + "\n" + intermediate)
        return root_path, chain_path


# ---------------------------------------------------------------------------
# Redis (as in test_cluster.py)

class RedisError(Exception):
    pass


def _read_reply(f):
    line = f.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RedisError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        return data[:-2].decode()
    if kind == b"*":
        n = int(rest)
        if n < 0:
            return None
        return [_read_reply(f) for _ in range(n)]
    raise RedisError("unexpected reply %r" % line)


def redis_cmd(port, *args, timeout=3.0):
    """One command on a fresh connection."""
    out = b"*%d\r\n" % len(args)
    for p in args:
        p = p if isinstance(p, bytes) else str(p).encode()
        out += b"$%d\r\n%s\r\n" % (len(p), p)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        f = s.makefile("rb")
        try:
            s.sendall(out)
            return _read_reply(f)
        finally:
            f.close()


def pairs(flat):
    """HGETALL's [k1, v1, k2, v2...] -> {k: v}."""
    flat = flat or []
    return dict(zip(flat[0::2], flat[1::2]))


class Redis:
    """redis-server on 127.0.0.1:port, nothing saved."""

    def __init__(self):
        self.port = harness.unused_port()
        self.dir = tempfile.mkdtemp(prefix="lb-test-redis-")
        self.log = open(os.path.join(self.dir, "redis.log"), "ab")
        self.proc = harness._popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--dir", self.dir, "--logfile", ""],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT, cwd=self.dir)
        if not wait_until(lambda: self.cmd("PING") == "PONG" or self.proc.poll() is not None,
                          10) or self.proc.poll() is not None:
            self.cleanup()
            raise RuntimeError("redis-server did not start")

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def cmd(self, *args):
        return redis_cmd(self.port, *args)

    def dump(self):
        """Every lb:acme:* key and its value (for failure messages)."""
        out = {}
        for key in sorted(self.cmd("KEYS", "lb:acme:*") or []):
            kind = self.cmd("TYPE", key)
            if kind == "hash":
                out[key] = {k: v[:60] for k, v in pairs(self.cmd("HGETALL", key)).items()}
            elif kind == "string":
                out[key] = (self.cmd("GET", key) or "")[:60]
            else:
                out[key] = kind
        return out

    def cleanup(self):
        harness.kill_and_wait(self.proc)
        harness._unregister(self.proc)
        try:
            self.log.close()
        except Exception:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------------------
# HAProxy (as in test_tier.py, without PROXY protocol and checks)

class HAProxy:
    """HAProxy in TCP mode, in the foreground (-db): `frontends` is
    [(name, bind port, [server ports])]; backend NAME, servers lb1, lb2...
    in that order, roundrobin."""

    def __init__(self, frontends):
        self.dir = tempfile.mkdtemp(prefix="haproxy-acme-")
        self.socket_path = os.path.join(self.dir, "stats.sock")
        self.config_path = os.path.join(self.dir, "haproxy.cfg")
        self.stderr_path = os.path.join(self.dir, "stderr.txt")
        self.backends = [name for name, _, _ in frontends]
        lines = [
            "global",
            "  maxconn 1000",
            "  stats socket %s mode 600 level admin" % self.socket_path,
            "defaults",
            "  mode tcp",
            "  timeout connect 2s",
            "  timeout client 30s",
            "  timeout server 30s",
        ]
        for name, port, servers in frontends:
            lines += ["frontend fe_%s" % name,
                      "  bind 127.0.0.1:%d" % port,
                      "  default_backend %s" % name,
                      "backend %s" % name,
                      "  balance roundrobin"]
            lines += ["  server lb%d 127.0.0.1:%d" % (i + 1, p) for i, p in enumerate(servers)]
        with open(self.config_path, "w") as f:
            f.write("\n".join(lines) + "\n")
        self._err = open(self.stderr_path, "wb")
        self.proc = harness._popen([HAPROXY, "-db", "-f", self.config_path],
                                   stdin=subprocess.DEVNULL, stdout=self._err, stderr=self._err,
                                   cwd=self.dir)
        if not wait_until(lambda: self.sessions(self.backends[0]) or not self.running(), 10) \
                or not self.running():
            text = self.stderr_text()
            self.cleanup()
            raise RuntimeError("HAProxy did not start; its output:\n" + text)

    def running(self):
        return self.proc.poll() is None

    def stderr_text(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def command(self, line, timeout=2.0):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(self.socket_path)
            s.sendall(line.encode() + b"\n")
            out = b""
            while True:
                b = s.recv(65536)
                if not b:
                    return out.decode("utf-8", "replace")
                out += b
        finally:
            s.close()

    def sessions(self, backend):
        """{server name: connections it got so far (stot)} of `backend`."""
        text = self.command("show stat")
        lines = [l for l in text.splitlines() if l.strip()]
        if not lines or not lines[0].startswith("# "):
            return {}
        out = {}
        for r in csv.DictReader([lines[0][2:]] + lines[1:]):
            if r.get("pxname") == backend and r.get("svname") not in ("BACKEND", "FRONTEND"):
                out[r["svname"]] = int(r.get("stot") or 0)
        return out

    def cleanup(self):
        harness.kill_and_wait(self.proc)
        harness._unregister(self.proc)
        try:
            self._err.close()
        except Exception:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


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
class AcmeTier(harness.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="lb-acme-tier-")
        cls.addClassCleanup(shutil.rmtree, cls.dir, True)
        cls.ca, cls.wfe_cert, cls.wfe_key = make_test_ca(cls.dir)
        cls.dns = Dnsmasq({"a.lbtest": ["127.0.0.1"], "b.lbtest": ["127.0.0.1"]})
        cls.addClassCleanup(cls.dns.cleanup)
        cls.dns.start()

    def setUp(self):
        self.web = self.origin("web")
        self.parent = tempfile.mkdtemp(prefix="lb-acme-tier-storage-")
        self.addCleanup(shutil.rmtree, self.parent, True)
        self.redis = Redis()
        self.addCleanup(self.redis.cleanup)
        self.pebble = Pebble(self.ca, self.wfe_cert, self.wfe_key, self.dns.port)
        self.addCleanup(self._pebble_cleanup, self.pebble)
        self.pebble.start()
        self.instances = []
        self.addCleanup(self._report)

    def _pebble_cleanup(self, p):
        if self.failed_so_far() or os.environ.get("LB_TEST_VERBOSE"):
            sys.stderr.write("---- ACME server log (%s) ----\n%s\n"
                             % (self.id(), p.log_text()[-6000:]))
        p.cleanup()

    def _haproxy_cleanup(self, h):
        if self.failed_so_far() or os.environ.get("LB_TEST_VERBOSE"):
            sys.stderr.write("---- HAProxy output (%s) ----\n%s\n" % (self.id(), h.stderr_text()[-3000:]))
        h.cleanup()

    def _report(self):
        # Runs after harness has printed the lb logs (cleanups run last-in,
        # first-out), before Redis and the access logs go.
        if not (self.failed_so_far() or os.environ.get("LB_TEST_VERBOSE")):
            return
        for inst in self.instances:
            sys.stderr.write("---- %s: challenge requests in its access log ----\n%r\n"
                             % (inst.name, inst.validations()))
        try:
            sys.stderr.write("---- Redis lb:acme:* ----\n%r\n" % self.redis.dump())
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
        frontends = [("tls", self.pebble.tls_port, [i.tls_port for i in tier])]
        if plain:
            frontends.insert(0, ("plain", self.pebble.http_port, [i.plain_port for i in tier]))
        self.haproxy = HAProxy(frontends)
        self.addCleanup(self._haproxy_cleanup, self.haproxy)
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

    def curl(self, port, name, cacert):
        r = subprocess.run(["curl", "-sS", "--noproxy", "*", "--max-time", "10", "--cacert", cacert,
                            "--resolve", "%s:%d:127.0.0.1" % (name, port),
                            "https://%s:%d/" % (name, port)],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
        return r.returncode, r.stdout, r.stderr.decode("utf-8", "replace")

    def assert_serves(self, inst, root, chain):
        """curl verifies both names on the instance's own TLS port -> the serial served."""
        for name in DOMAINS:
            code, out, err = self.curl(inst.tls_port, name, chain)
            self.assertEqual((code, out), (0, BODY), "%s: curl https://%s: %s" % (inst.name, name, err))
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

    def assert_redis_clean(self):
        """No lock left, no challenge published."""
        self.assertEqual(self.redis.cmd("EXISTS", "lb:acme:lock:a.lbtest"), 0,
                         "the lock outlived the order: %r" % self.redis.dump())
        self.assertEqual(self.redis.cmd("HLEN", "lb:acme:challenges"), 0, self.redis.dump())

    # ------------------------------------------------------------------------

    def test_http01_one_order_for_the_tier(self):
        t0 = time.monotonic()
        tier = self.start_tier("http-01")
        self.wait_loaded(tier, 40)
        loaded_after = time.monotonic() - t0
        root, chain = self.pebble.trust()
        orderer = self.assert_one_order(tier)

        # Every instance serves the same certificate, verified on its own port.
        serials = {inst.name: self.assert_serves(inst, root, chain) for inst in tier}
        self.assertEqual(len(set(serials.values())), 1, serials)
        serial = serials[orderer.name]

        # Redis: the certificate, one account, no lock, no challenge left.
        cert = self.redis.cmd("GET", "lb:acme:cert:a.lbtest")
        self.assertTrue(cert, self.redis.dump())
        leaf = cert_info(cert)
        self.assertEqual(leaf["serial"], serial)
        self.assertEqual(sorted(leaf["sans"]), DOMAINS)
        accounts = pairs(self.redis.cmd("HGETALL", "lb:acme:accounts"))
        self.assertEqual(list(accounts), [self.pebble.directory], self.redis.dump())
        self.assert_redis_clean()
        # Every instance answers the challenges' current version.
        version = lambda: int(self.redis.cmd("GET", "lb:acme:challenges:version") or 0)  # noqa: E731
        self.assertGreaterEqual(version(), 2, self.redis.dump())
        ok = wait_until(lambda: list(pairs(self.redis.cmd("HGETALL", "lb:acme:seen")).values())
                        == [str(version())] * INSTANCES, 3, 0.1)
        self.assertTrue(ok, self.redis.dump())

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
        self.assertEqual(self.redis.cmd("GET", "lb:acme:cert:a.lbtest"), cert)
        self.assert_redis_clean()

    def test_tls_alpn01_one_order_without_plain_listeners(self):
        tier = self.start_tier("tls-alpn-01", plain=False)
        for inst in tier:
            self.assertEqual(list(inst.lb.listeners), ["public"], inst.name)
        self.wait_loaded(tier, 40)
        root, chain = self.pebble.trust()
        self.assert_one_order(tier)

        plog = self.pebble.log_text()
        self.assertEqual(self.pebble.count(r"set VALID by completed challenge"), 2, plog[-3000:])
        self.assertNotIn("Attempting to validate w/ HTTP", plog)
        # The validation connections went to more than one instance.
        sessions = self.haproxy.sessions("tls")
        self.assertGreaterEqual(sum(1 for n in sessions.values() if n > 0), 2, sessions)

        serials = {inst.name: self.assert_serves(inst, root, chain) for inst in tier}
        self.assertEqual(len(set(serials.values())), 1, serials)
        cert = self.redis.cmd("GET", "lb:acme:cert:a.lbtest")
        self.assertEqual(cert_info(cert)["serial"], next(iter(serials.values())))
        for inst in tier:
            self.assertEqual(read(inst.certificate()), cert, inst.name)
        self.assert_redis_clean()


if __name__ == "__main__":
    harness.main()
