#!/usr/bin/env python3
"""HTTP/2 to clients (README "HTTP/2"), with real clients: curl, h2load,
Chromium and python3-h2 (Debian), against the real lb and origins.

- cleartext: `curl --http2-prior-knowledge` gets HTTP/2 answers (cookie
  crumbs joined, :authority as Host, X-Forwarded-Proto http), HTTP/1.1
  clients on the same port still get HTTP/1.1; a body of unknown length
  reaches the backend chunked and whole;
- TLS: ALPN selects h2 ("ALPN: server accepted h2" in curl's trace), and
  http/1.1 for clients that ask for it; X-Forwarded-Proto https;
  `http2: false` offers HTTP/1.1 only;
- h2load -n 200000 -c 64 -m 32, over TLS and h2c: 0 failed, 0 errored;
- one 50 MiB upload and one 50 MiB download, each beside 100 small
  concurrent streams on the same connection: hashes match; a client that
  reads a 50 MiB download slowly keeps lb's RSS within 16 MiB of its start;
- floods (100,000 HEADERS+RST_STREAM pairs, an endless CONTINUATION, 100,000
  SETTINGS, PING, WINDOW_UPDATE, PRIORITY and empty DATA frames): each connection ends with
  GOAWAY ENHANCE_YOUR_CALM, lb's RSS stays bounded, and h2load running beside
  them keeps 0 failures; more streams at once than SETTINGS allow: GOAWAY
  PROTOCOL_ERROR; clients that never open their window (20 connections x 10
  streams of 10 MiB): cut with GOAWAY ENHANCE_YOUR_CALM at timeouts.idle,
  memory bounded;
- responses: HEAD, 204, 304, chunked (DATA, no chunk framing), trailers both
  ways, lb's own 502, a body cut short (RST_STREAM INTERNAL_ERROR); an
  answer sent before the upload ended is followed by RST_STREAM(NO_ERROR);
- a head over max_header_bytes gets 431 on its stream, the connection goes on;
- SIGTERM with 50 streams in flight: GOAWAY names the last stream taken,
  every one of the 50 completes, a stream opened after the GOAWAY is not
  served (the client may retry it elsewhere); an idle HTTP/2 connection gets
  GOAWAY and lb exits at once;
- Chromium (headless) loads a page through lb over HTTPS with
  nextHopProtocol "h2";
- metrics: lb_http2_streams_total, lb_http2_goaways_total{reason}; the access
  log's protocol field.
Figures are printed to stderr ("[http2] ...").
"""

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402

import h2.config  # noqa: E402
import h2.connection  # noqa: E402
import h2.events  # noqa: E402
import h2.settings  # noqa: E402
import hpack  # noqa: E402

MiB = 1 << 20
ENHANCE_YOUR_CALM = 0xB


def say(msg):
    sys.stderr.write("    [http2] %s\n" % msg)
    sys.stderr.flush()


def make_cert(directory, name="localhost"):
    cert = os.path.join(directory, name + ".pem")
    key = os.path.join(directory, name + ".key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=" + name, "-addext",
                    "subjectAltName=DNS:%s,IP:127.0.0.1" % name,
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    return cert, key


def config(backends, tls=None, http2=None, workers=1, limits="", access_log='{ path: "off" }',
           timeouts=""):
    addresses = [backends] if isinstance(backends, str) else list(backends)
    listed = ", ".join('{ address: "%s" }' % a for a in addresses)
    extra = ""
    if tls:
        extra += "    tls: { certificates: [ { cert: %s, key: %s } ] }\n" % tls
    if http2 is not None:
        extra += "    http2: %s\n" % ("true" if http2 else "false")
    if limits:
        extra += "    limits: { %s }\n" % limits
    if timeouts:
        extra += "    timeouts: { %s }\n" % timeouts
    return f"""
workers: {workers}
access_log: {access_log}
admin: {{ listen: 127.0.0.1:0 }}
listeners:
  - name: public
    listen: 127.0.0.1:0
{extra}    routes: [ {{ match: {{ path_prefix: / }}, pool: web }} ]
pools:
  web:
    timeouts: {{ response: 60s }}
    backends: [ {listed} ]
"""


def curl(*args, timeout=30):
    r = subprocess.run(["curl", "-sS", *args], capture_output=True, timeout=timeout)
    return r.returncode, r.stdout, r.stderr.decode(errors="replace")


def h2load(url, n, c, m, timeout=300):
    r = subprocess.run(["h2load", "-n", str(n), "-c", str(c), "-m", str(m), url],
                       capture_output=True, text=True, timeout=timeout)
    out = r.stdout
    got = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                    r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
    if not got:
        raise AssertionError("h2load printed no summary: %s %s" % (out[-2000:], r.stderr[-2000:]))
    total, started, done, ok, failed, errored, timedout = map(int, got.groups())
    rps = re.search(r"finished in ([\d.]+)s, ([\d.]+) req/s", out)
    proto = re.search(r"Application protocol: (\S+)", out)
    return {"done": done, "succeeded": ok, "failed": failed, "errored": errored,
            "timeout": timedout, "seconds": float(rps.group(1)) if rps else 0.0,
            "rps": float(rps.group(2)) if rps else 0.0,
            "protocol": proto.group(1) if proto else "", "out": out}


class H2Client:
    """A python3-h2 client over one TCP (or TLS) connection to lb."""

    def __init__(self, port, tls=False, window=None, timeout=30):
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols(["h2"])
            sock = ctx.wrap_socket(sock, server_hostname="localhost")
        self.sock = sock
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        if window:
            self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.flush()
        self.responses = {}  # stream id -> {"headers", "data" (sha256), "length", "ended", "reset"}
        self.goaway = None
        self.closed = False
        self.auto_ack = True

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(self, path, method="GET", headers=(), end_stream=True):
        sid = self.conn.get_next_available_stream_id()
        hdrs = [(":method", method), (":path", path), (":scheme", "http"),
                (":authority", "lb.test")] + list(headers)
        self.conn.send_headers(sid, hdrs, end_stream=end_stream)
        self.responses[sid] = {"headers": None, "sha": hashlib.sha256(), "length": 0,
                               "ended": False, "reset": None, "trailers": None, "body": b""}
        self.flush()
        return sid

    def pump(self, block=True):
        """Reads once and handles the events; False when the connection ended."""
        try:
            self.sock.settimeout(None if block else 0.0)
            data = self.sock.recv(65536)
        except (BlockingIOError, ssl.SSLWantReadError):
            return True
        except (ConnectionError, OSError):
            self.closed = True
            return False
        finally:
            self.sock.settimeout(30)
        if not data:
            self.closed = True
            return False
        for ev in self.conn.receive_data(data):
            self.on_event(ev)
        self.flush()
        return True

    def on_event(self, ev):
        if isinstance(ev, h2.events.ResponseReceived):
            self.responses[ev.stream_id]["headers"] = dict(
                (k.decode() if isinstance(k, bytes) else k, v.decode() if isinstance(v, bytes) else v)
                for k, v in ev.headers)
        elif isinstance(ev, h2.events.TrailersReceived):
            self.responses[ev.stream_id]["trailers"] = dict(
                (k.decode() if isinstance(k, bytes) else k, v.decode() if isinstance(v, bytes) else v)
                for k, v in ev.headers)
        elif isinstance(ev, h2.events.DataReceived):
            r = self.responses[ev.stream_id]
            r["sha"].update(ev.data)
            r["length"] += len(ev.data)
            if r["length"] <= 65536:
                r["body"] += ev.data
            if self.auto_ack:
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.StreamEnded):
            self.responses[ev.stream_id]["ended"] = True
        elif isinstance(ev, h2.events.StreamReset):
            if ev.stream_id in self.responses:
                self.responses[ev.stream_id]["reset"] = ev.error_code
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.goaway = ev

    def wait(self, predicate, timeout=60):
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError("timed out waiting on the HTTP/2 connection")
            if not self.pump():
                break
        return predicate()

    def send_body(self, sid, total, chunk=16384, pattern=b"0123456789abcdef"):
        """Sends `total` bytes on stream `sid` as the windows allow."""
        block = (pattern * (chunk // len(pattern) + 1))[:chunk]
        sent = 0
        sha = hashlib.sha256()
        while sent < total:
            room = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size,
                       total - sent)
            if room <= 0:
                self.pump()
                continue
            piece = block[:room]
            self.conn.send_data(sid, piece)
            sha.update(piece)
            sent += len(piece)
            self.flush()
            self.pump(block=False)
        self.conn.end_stream(sid)
        self.flush()
        return sha.hexdigest()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def cpu_seconds(pid):
    """User + system CPU time of process `pid` so far."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def frame(ftype, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def read_goaway(sock, timeout=30):
    """Reads frames until GOAWAY (-> its error code) or the end (-> None)."""
    buf = b""
    deadline = time.monotonic() + timeout
    sock.settimeout(1.0)
    while time.monotonic() < deadline:
        while len(buf) >= 9:
            length = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + length:
                break
            ftype = buf[3]
            payload = buf[9:9 + length]
            buf = buf[9 + length:]
            if ftype == 7:
                return struct.unpack(">I", payload[4:8])[0]
        try:
            data = sock.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            return None
        if not data:
            return None
        buf += data
    return None


class WithCertificate(harness.TestCase):
    """A self-signed certificate for localhost and 127.0.0.1 (cls.cert: cert, key)."""

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="lb-h2-")
        cls.cert = make_cert(cls.dir)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir, ignore_errors=True)


class Basics(WithCertificate):

    def test_h2c_prior_knowledge_beside_http11(self):
        o = self.origin("app-1")
        lb = self.lb(config(o.addr))
        url = "http://127.0.0.1:%d" % lb.port()
        rc, out, err = curl("-v", "--http2-prior-knowledge", "-H", "Cookie: a=1", "-H", "Cookie: b=2",
                            url + "/headers?x=1")
        self.assertEqual(rc, 0, err)
        self.assertIn("< HTTP/2 200", err)
        seen = json.loads(out)
        h = {k.lower(): v for k, v in seen["headers"]}
        self.assertEqual(seen["version"], "HTTP/1.1")
        self.assertEqual(seen["target"], "/headers?x=1")
        self.assertEqual(h["host"], "127.0.0.1:%d" % lb.port())
        self.assertEqual(h["cookie"], "a=1; b=2")
        self.assertEqual(h["x-forwarded-proto"], "http")
        self.assertIn("x-request-id", h)
        say("h2c GET: backend saw %s %s, Host %s, Cookie %r" % (seen["version"], seen["target"],
                                                                 h["host"], h["cookie"]))
        # The response head: lower case, no connection-specific fields.
        self.assertNotIn("connection:", err.lower().split("< http/2 200")[1])
        # HTTP/1.1 on the same port.
        rc, out, err = curl("-v", "--http1.1", url + "/")
        self.assertEqual(rc, 0, err)
        self.assertIn("< HTTP/1.1 200", err)
        self.assertEqual(out, b"Hello from app-1\n")
        # A body with a length, and one without (sent on chunked).
        body = os.urandom(300_000)
        path = os.path.join(self.dir, "body")
        with open(path, "wb") as f:
            f.write(body)
        rc, out, err = curl("-v", "--http2-prior-knowledge", "--data-binary", "@" + path,
                            url + "/echo")
        self.assertEqual((rc, out), (0, body), err[-500:])
        r = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-T", "-", "-D", "-",
                            url + "/echo"], input=body, capture_output=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(r.stdout.endswith(body))
        self.assertIn(b"x-body-sha256: " + hashlib.sha256(body).hexdigest().encode(), r.stdout)
        say("h2c: %d-byte POST with a length and a PUT without one: echoed whole" % len(body))

    def test_response_shapes(self):
        o = self.origin("app-1", log=False)
        lb = self.lb(config(o.addr))
        url = "http://127.0.0.1:%d" % lb.port()

        def get(*args):
            rc, out, err = curl("-v", "--http2-prior-knowledge", *args)
            status = re.search(r"< HTTP/2 (\d+)", err)
            return rc, status.group(1) if status else None, out, err

        rc, status, out, err = get("-I", url + "/")
        self.assertEqual((rc, status), (0, "200"))
        self.assertIn(b"content-length: 17", out)  # HEAD: the length, no body
        for code in ("204", "304"):
            rc, status, out, _ = get(url + "/status/" + code)
            self.assertEqual((rc, status, out), (0, code, b""))
        # A chunked response becomes DATA frames: the body whole, no chunk framing.
        rc, status, out, err = get(url + "/bytes/100000?chunked=1")
        self.assertEqual((rc, status), (0, "200"))
        self.assertEqual(hashlib.sha256(out).hexdigest(), harness.pattern_sha256(100000))
        self.assertNotIn("transfer-encoding", err.lower())
        # lb's own answer when the backend fails before responding.
        rc, status, out, _ = get(url + "/drop")
        self.assertEqual((rc, status), (0, "502"))
        self.assertIn(b"reset the connection", out)
        # A response cut short by the backend: the stream is reset, not ended.
        # (Its head may not have gone out yet when the reset does.)
        rc, status, out, err = get(url + "/truncate/100")
        self.assertIn(status, (None, "200"))
        self.assertNotEqual(rc, 0)
        self.assertIn("INTERNAL_ERROR", err)
        say("HTTP/2 responses: HEAD, 204, 304, chunked -> DATA, lb's 502, a truncated body -> "
            "RST_STREAM INTERNAL_ERROR")

    def test_trailers_both_ways(self):
        o = self.origin("app-1", log=False)
        lb = self.lb(config(o.addr))
        c = H2Client(lb.port())
        try:
            # A chunked response's trailer section becomes trailing HEADERS.
            sid = c.request("/bytes/300000?chunked=1&trailer=1")
            c.wait(lambda: c.responses[sid]["ended"])
            r = c.responses[sid]
            self.assertEqual(r["length"], 300000)
            self.assertEqual(r["sha"].hexdigest(), harness.pattern_sha256(300000))
            self.assertEqual(r["trailers"], {"x-checksum": harness.pattern_sha256(300000),
                                             "x-trailer-note": "end"})
            self.assertNotIn("transfer-encoding", r["headers"])
            # A request's trailers reach the backend in its chunked body.
            sid = c.request("/headers", method="POST", end_stream=False)
            c.conn.send_data(sid, b"abc")
            c.conn.send_headers(sid, [("x-request-trailer", "yes")], end_stream=True)
            c.flush()
            c.wait(lambda: c.responses[sid]["ended"])
            seen = json.loads(c.responses[sid]["body"])
            self.assertEqual(seen["body_len"], 3)
            self.assertEqual(seen["trailers"], [["x-request-trailer", "yes"]])
        finally:
            c.close()
        say("trailers: a chunked response's -> trailing HEADERS; a request's -> the backend's "
            "chunked trailer section")

    def test_tls_alpn(self):
        o = self.origin("app-1")
        lb = self.lb(config(o.addr, tls=self.cert))
        url = "https://127.0.0.1:%d" % lb.port()
        rc, out, err = curl("-v", "-k", "--http2", url + "/headers")
        self.assertEqual(rc, 0, err)
        self.assertIn("ALPN: server accepted h2", err)
        self.assertIn("< HTTP/2 200", err)
        h = {k.lower(): v for k, v in json.loads(out)["headers"]}
        self.assertEqual(h["x-forwarded-proto"], "https")
        rc, out, err = curl("-v", "-k", "--http1.1", url + "/")
        self.assertEqual(rc, 0, err)
        self.assertIn("ALPN: server accepted http/1.1", err)
        self.assertEqual(out, b"Hello from app-1\n")
        say("TLS: ALPN h2 for curl --http2, http/1.1 for curl --http1.1")

    def test_http2_off(self):
        o = self.origin("app-1")
        lb = self.lb(config(o.addr, tls=self.cert, http2=False))
        rc, out, err = curl("-v", "-k", "--http2", "https://127.0.0.1:%d/" % lb.port())
        self.assertEqual(rc, 0, err)
        self.assertIn("ALPN: server accepted http/1.1", err)
        self.assertEqual(out, b"Hello from app-1\n")
        lb2 = self.lb(config(o.addr, http2=False))
        rc, out, err = curl("-v", "--http2-prior-knowledge", "http://127.0.0.1:%d/" % lb2.port())
        self.assertNotEqual(rc, 0)
        self.assertNotIn("< HTTP/2 200", err)
        say("http2: false -> ALPN http/1.1, and no HTTP/2 by prior knowledge")

    def test_head_too_large_gets_431_and_the_connection_goes_on(self):
        o = self.origin("app-1")
        lb = self.lb(config(o.addr, limits="max_header_bytes: 4096"))
        c = H2Client(lb.port())
        try:
            big = c.request("/", headers=[("x-big", "a" * 8000)])
            small = c.request("/")
            c.wait(lambda: c.responses[big]["ended"] and c.responses[small]["ended"])
            self.assertEqual(c.responses[big]["headers"][":status"], "431")
            self.assertEqual(c.responses[small]["headers"][":status"], "200")
        finally:
            c.close()
        say("a 8 KiB header field over max_header_bytes 4096: 431 on its stream, 200 beside it")

    def test_an_early_answer_resets_the_rest_of_the_upload(self):
        # 413 before the body: the stream ends with the answer, then RST_STREAM
        # NO_ERROR tells the client to stop sending (RFC 9113 §8.1).
        o = self.origin("app-1", log=False)
        lb = self.lb(config(o.addr, limits="max_body_bytes: 1024"))
        c = H2Client(lb.port())
        try:
            sid = c.request("/upload", method="POST", end_stream=False,
                            headers=[("content-length", str(MiB))])
            c.wait(lambda: c.responses[sid]["reset"] is not None, timeout=10)
            r = c.responses[sid]
            self.assertEqual(r["headers"][":status"], "413")
            self.assertTrue(r["ended"])
            self.assertEqual(r["reset"], 0)
            again = c.request("/")  # the connection goes on
            c.wait(lambda: c.responses[again]["ended"])
            self.assertEqual(c.responses[again]["headers"][":status"], "200")
        finally:
            c.close()
        say("413 before a 1 MiB upload: the answer, then RST_STREAM(NO_ERROR); the connection goes on")

    def test_streams_over_the_limit_end_the_connection(self):
        o = self.origin("app-1", log=False)
        lb = self.lb(config(o.addr, limits="max_concurrent_streams: 10"))
        sock = socket.create_connection(("127.0.0.1", lb.port()), timeout=10)
        try:
            sock.sendall(PREFACE + frame(4, 0, 0))
            # lb's SETTINGS (MAX_CONCURRENT_STREAMS 10) first, acknowledged.
            head = b""
            while len(head) < 9:
                head += sock.recv(9 - len(head))
            self.assertEqual(head[3], 4)
            length = int.from_bytes(head[:3], "big")
            payload = b""
            while len(payload) < length:
                payload += sock.recv(length - len(payload))
            settings = {struct.unpack(">H", payload[i:i + 2])[0]: struct.unpack(">I", payload[i + 2:i + 6])[0]
                        for i in range(0, length, 6)}
            self.assertEqual(settings.get(3), 10)
            sock.sendall(frame(4, 1, 0))
            time.sleep(0.2)
            enc = hpack.Encoder()
            sock.sendall(b"".join(frame(1, 0x5, 2 * i + 1, enc.encode(
                [(":method", "GET"), (":path", "/?delay=1000"), (":scheme", "http"),
                 (":authority", "lb.test")])) for i in range(11)))
            code = read_goaway(sock, timeout=10)
        finally:
            sock.close()
        self.assertEqual(code, 1)  # PROTOCOL_ERROR
        self.assertEqual(lb.metric("lb_http2_goaways_total", listener="public",
                                   reason="protocol_error"), 1)
        say("11 streams at once where SETTINGS said 10: GOAWAY PROTOCOL_ERROR")

    def test_metrics_and_access_log(self):
        o = self.origin("app-1")
        log = os.path.join(self.dir, "access-%d.log" % os.getpid())
        lb = self.lb(config(o.addr, access_log='{ path: "%s", format: json }' % log))
        url = "http://127.0.0.1:%d/" % lb.port()
        for _ in range(3):
            self.assertEqual(curl("--http2-prior-knowledge", url)[0], 0)
        self.assertEqual(curl("--http1.1", url)[0], 0)
        self.assertEqual(lb.metric("lb_http2_streams_total", listener="public"), 3)
        self.assertEqual(lb.metric("lb_requests_total", listener="public", code="200",
                                   protocol="HTTP/2"), 3)
        self.assertEqual(lb.metric("lb_requests_total", listener="public", code="200",
                                   protocol="HTTP/1.1"), 1)
        protocols = []

        def logged():
            if os.path.exists(log):
                with open(log) as f:
                    protocols[:] = [json.loads(line).get("protocol") for line in f if line.strip()]
            return len(protocols) >= 4
        harness.wait_until(logged, timeout=10)
        self.assertEqual(sorted(protocols), ["HTTP/1.1", "HTTP/2", "HTTP/2", "HTTP/2"])
        # The status page's connections by protocol, with one HTTP/2 connection open.
        c = H2Client(lb.port())
        try:
            sid = c.request("/")
            c.wait(lambda: c.responses[sid]["ended"])
            listener = lb.status_json()["listeners"][0]
            self.assertEqual(listener["connections_by_protocol"], {"HTTP/1.1": 0, "HTTP/2": 1})
            self.assertEqual(lb.metric("lb_http2_connections", listener="public"), 1)
        finally:
            c.close()
        say("metrics: lb_http2_streams_total 3, lb_requests_total{protocol=\"HTTP/2\"} 3; /status "
            "connections by protocol; access log protocols %s" % sorted(protocols))


class Load(WithCertificate):

    def fast_origin(self):
        o = harness.FastOrigin(os.environ["FAST_ORIGIN_BIN"])
        self.addCleanup(o.cleanup)
        return o

    def test_h2load_tls_and_h2c(self):
        o = self.fast_origin()
        n = 200_000
        for tls in (False, True):
            lb = self.lb(config(o.addr, tls=self.cert if tls else None, workers=2))
            url = "%s://127.0.0.1:%d/" % ("https" if tls else "http", lb.port())
            r = h2load(url, n, 64, 32)
            say("h2load -n %d -c 64 -m 32 %s: %d succeeded, %d failed, %d errored, %.0f req/s (%s)"
                % (n, "TLS" if tls else "h2c", r["succeeded"], r["failed"], r["errored"], r["rps"],
                   r["protocol"]))
            self.assertEqual(r["protocol"], "h2" if tls else "h2c")
            self.assertEqual((r["succeeded"], r["failed"], r["errored"], r["timeout"]), (n, 0, 0, 0))
            lb.terminate()

    def test_big_bodies_beside_small_streams(self):
        o = self.origin("app-1", log=False)
        lb = self.lb(config(o.addr, limits="max_body_bytes: 0, max_concurrent_streams: 128"))
        c = H2Client(lb.port())
        try:
            size = 50 * MiB
            # The download and 100 small streams at once.
            big = c.request("/bytes/%d" % size)
            small = [c.request("/bytes/1000") for _ in range(100)]
            c.wait(lambda: all(c.responses[s]["ended"] for s in [big] + small), timeout=120)
            r = c.responses[big]
            self.assertEqual(r["length"], size)
            self.assertEqual(r["sha"].hexdigest(), r["headers"]["x-body-sha256"])
            for s in small:
                self.assertEqual(c.responses[s]["length"], 1000)
                self.assertEqual(c.responses[s]["headers"][":status"], "200")
            # The upload beside 100 small streams.
            up = c.request("/echo", method="POST", end_stream=False)
            small = [c.request("/bytes/1000") for _ in range(100)]
            sent_sha = c.send_body(up, size)
            c.wait(lambda: all(c.responses[s]["ended"] for s in [up] + small), timeout=120)
            r = c.responses[up]
            self.assertEqual(r["headers"][":status"], "200")
            self.assertEqual(r["headers"]["x-body-sha256"], sent_sha)
            self.assertEqual(r["headers"]["x-received-bytes"], str(size))
            self.assertEqual(r["sha"].hexdigest(), sent_sha)
            self.assertTrue(all(c.responses[s]["length"] == 1000 for s in small))
        finally:
            c.close()
        say("50 MiB download and 50 MiB upload (chunked to the backend), each beside 100 small "
            "streams: hashes match")

    def test_slow_reader_keeps_memory_bounded(self):
        o = self.origin("app-1", log=False)
        lb = self.lb(config(o.addr))
        time.sleep(0.3)
        start = harness.rss_bytes(lb.proc.pid)
        c = H2Client(lb.port())
        peak = start
        try:
            size = 50 * MiB
            sid = c.request("/bytes/%d" % size)
            c.auto_ack = False
            # Read what comes, opening the window by 64 KiB every 20 ms: about 3 MiB/s.
            deadline = time.monotonic() + 6
            while time.monotonic() < deadline:
                c.pump(block=False)
                got = c.responses[sid]["length"]
                c.conn.acknowledge_received_data(min(65536, max(0, got)), sid)
                c.flush()
                time.sleep(0.02)
                peak = max(peak, harness.rss_bytes(lb.proc.pid))
                if os.environ.get("H2_TRACE"):
                    say("t=%.2f got %d rss %.1f" % (6 - (deadline - time.monotonic()), c.responses[sid]["length"], harness.rss_bytes(lb.proc.pid) / MiB))
            got = c.responses[sid]["length"]
        finally:
            c.close()
        say("slow HTTP/2 reader of 50 MiB: %.1f MiB read in 6 s, lb RSS %.1f -> peak %.1f MiB"
            % (got / MiB, start / MiB, peak / MiB))
        self.assertGreater(got, 0)
        self.assertLess(got, size)
        self.assertLess(peak - start, 16 * MiB)


class Floods(harness.TestCase):
    """Each flood on its own connection, h2load beside them."""

    def flood(self, lb, name, frames_of, count, quiet=False):
        sock = socket.create_connection(("127.0.0.1", lb.port()), timeout=30)
        result = {}

        def reader():
            result["code"] = read_goaway(sock, timeout=60)

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        sent = 0
        t0 = time.monotonic()
        try:
            sock.sendall(PREFACE + frame(4, 0, 0))
            batch = []
            for i in range(count):
                batch.append(frames_of(i))
                if len(batch) == 500:
                    sock.sendall(b"".join(batch))
                    sent += len(batch)
                    batch = []
            if batch:
                sock.sendall(b"".join(batch))
                sent += len(batch)
        except OSError:
            pass  # lb closed the connection: what a flood should get
        t.join(60)
        sock.close()
        took = time.monotonic() - t0
        if not quiet:
            say("%s: %d frames sent of %d before lb closed, in %.2f s; GOAWAY error code %s"
                % (name, sent, count, took, result.get("code")))
        self.assertLess(took, 10, name)
        return result.get("code")

    def test_floods_end_with_goaway_and_others_keep_working(self):
        o = harness.FastOrigin(os.environ["FAST_ORIGIN_BIN"])
        self.addCleanup(o.cleanup)
        lb = self.lb(config(o.addr, workers=2))
        time.sleep(0.3)
        rss0 = harness.rss_bytes(lb.proc.pid)
        good = {}

        def well_behaved():
            good.update(h2load("http://127.0.0.1:%d/" % lb.port(), 100_000, 8, 10))

        t = threading.Thread(target=well_behaved, daemon=True)
        t.start()
        enc = hpack.Encoder()

        def headers_rst(i):
            sid = 2 * i + 1
            if i == 0:
                enc.__init__()  # a new connection: a new HPACK context
            block = enc.encode([(":method", "GET"), (":path", "/"), (":scheme", "http"),
                                (":authority", "lb.test")])
            return frame(1, 0x5, sid, block) + frame(3, 0, sid, struct.pack(">I", 8))

        cont_block = hpack.Encoder().encode([(":method", "GET"), (":path", "/"),
                                             (":scheme", "http"), (":authority", "lb.test")])

        def continuation(i):
            if i == 0:
                return frame(1, 0x1, 1, cont_block)  # HEADERS without END_HEADERS
            return frame(9, 0, 1, hpack.Encoder().encode([("x-filler-%d" % i, "v" * 100)]))

        def priority(i):
            return frame(2, 0, 2 * i + 1, struct.pack(">IB", 0, 15))

        def empty_data(i):
            if i == 0:  # a stream whose body never ends, then empty DATA frames on it
                return frame(1, 0x4, 1, hpack.Encoder().encode(
                    [(":method", "POST"), (":path", "/echo"), (":scheme", "http"),
                     (":authority", "lb.test")]))
            return frame(0, 0, 1)

        def settings(i):
            return frame(4, 0, 0, struct.pack(">HI", 3, 100))

        def ping(i):
            return frame(6, 0, 0, struct.pack(">Q", i))

        def window_update(i):
            return frame(8, 0, 0, struct.pack(">I", 1))

        floods = [("rapid reset", "HEADERS+RST_STREAM x 100,000", headers_rst),
                  ("continuation", "endless CONTINUATION", continuation),
                  ("settings", "SETTINGS x 100,000", settings), ("ping", "PING x 100,000", ping),
                  ("window update", "WINDOW_UPDATE x 100,000", window_update),
                  ("priority", "PRIORITY x 100,000", priority),
                  ("empty data", "empty DATA x 100,000", empty_data)]
        time.sleep(0.3)  # h2load is under way
        cpu0 = cpu_seconds(lb.proc.pid)
        codes, rounds = {}, 0
        while t.is_alive() or rounds == 0:
            for key, name, frames_of in floods:
                code = self.flood(lb, name, frames_of, 100_000, quiet=rounds > 0)
                codes.setdefault(key, set()).add(code)
            rounds += 1
        cpu = cpu_seconds(lb.proc.pid) - cpu0
        say("%d rounds of the %d floods while h2load ran; lb CPU meanwhile %.2f s"
            % (rounds, len(floods), cpu))
        t.join(300)
        rss = harness.rss_bytes(lb.proc.pid)
        say("h2load beside the floods: %d succeeded, %d failed, %d errored; lb RSS %.1f -> %.1f MiB"
            % (good.get("succeeded", -1), good.get("failed", -1), good.get("errored", -1),
               rss0 / MiB, rss / MiB))
        for name, seen in codes.items():
            self.assertEqual(seen, {ENHANCE_YOUR_CALM}, name)
        self.assertEqual((good["failed"], good["errored"], good["timeout"]), (0, 0, 0))
        self.assertEqual(good["succeeded"], 100_000)
        if os.environ.get("LB_SANITIZED", "").lower() not in ("1", "true", "on", "yes"):
            # (ASan's quarantine holds freed memory: no bound to check there.)
            self.assertLess(rss - rss0, 32 * MiB)
        self.assertGreaterEqual(lb.metric("lb_http2_goaways_total", listener="public",
                                          reason="flood"), len(floods))
        self.assertTrue(lb.running())


class Shutdown(harness.TestCase):
    def test_sigterm_finishes_streams_in_flight(self):
        # A client of raw frames: after a GOAWAY it still reads the answers to
        # the streams the GOAWAY covers, and opens one more stream.
        o = self.origin("app-1", log=False)
        lb = self.lb(config(o.addr) + "shutdown_timeout: 30s\n")
        sock = socket.create_connection(("127.0.0.1", lb.port()), timeout=20)
        enc, dec = hpack.Encoder(), hpack.Decoder()

        def get(sid, path):
            block = enc.encode([(":method", "GET"), (":path", path), (":scheme", "http"),
                                (":authority", "lb.test")])
            return frame(1, 0x5, sid, block)

        sids = list(range(1, 101, 2))
        sock.sendall(PREFACE + frame(4, 0, 0) + b"".join(get(s, "/?delay=800") for s in sids))
        status, ended, goaway, late = {}, set(), None, None
        buf = b""
        signalled = False
        t0 = time.monotonic()
        while time.monotonic() - t0 < 30:
            if not signalled and time.monotonic() - t0 > 0.3:
                lb.signal(signal.SIGTERM)  # all 50 are at the backend by now
                signalled = True
            sock.settimeout(0.1)
            try:
                data = sock.recv(65536)
            except socket.timeout:
                continue
            if not data:
                break
            buf += data
            while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
                length = int.from_bytes(buf[:3], "big")
                ftype, flags, sid = buf[3], buf[4], struct.unpack(">I", buf[5:9])[0] & 0x7FFFFFFF
                payload, buf = buf[9:9 + length], buf[9 + length:]
                if ftype == 4 and not flags & 1:
                    sock.sendall(frame(4, 1, 0))  # SETTINGS ACK
                elif ftype == 1:
                    status[sid] = dict(dec.decode(payload)).get(":status")
                elif ftype == 7 and goaway is None:
                    goaway = struct.unpack(">II", payload[:8])
                    goaway = (goaway[0] & 0x7FFFFFFF, goaway[1])
                    late = max(sids) + 2
                    sock.sendall(get(late, "/"))  # after the GOAWAY: not to be served
                if ftype in (0, 1) and flags & 1:
                    ended.add(sid)
        sock.close()
        self.assertIsNotNone(goaway, "no GOAWAY")
        last, code = goaway
        self.assertEqual(code, 0)
        self.assertEqual(last, max(sids))
        self.assertEqual(sorted(ended), sids)
        self.assertTrue(all(status[s] == "200" for s in sids), status)
        self.assertNotIn(late, status)
        self.assertEqual(lb.wait_exit(timeout=20), 0)
        say("SIGTERM with 50 streams in flight: GOAWAY(NO_ERROR, last %d), all 50 answered 200, "
            "stream %d opened after it not served" % (last, late))


class Stall(harness.TestCase):
    def test_a_client_that_never_opens_its_window_is_cut_at_the_idle_timeout(self):
        o = self.origin("app-1", log=False)
        lb = self.lb(config(o.addr, timeouts="header: 2s, idle: 2s"))
        time.sleep(0.3)
        rss0 = harness.rss_bytes(lb.proc.pid)
        conns = []
        try:
            for _ in range(20):
                c = H2Client(lb.port(), window=0)
                c.auto_ack = False
                for _ in range(10):
                    c.request("/bytes/%d" % (10 * MiB))
                conns.append(c)
            time.sleep(1)
            rss = harness.rss_bytes(lb.proc.pid)
            t0 = time.monotonic()
            for c in conns:
                c.wait(lambda: c.closed, timeout=15)
            took = time.monotonic() - t0
            codes = {c.goaway.error_code if c.goaway else None for c in conns}
        finally:
            for c in conns:
                c.close()
        say("20 connections x 10 streams of 10 MiB with window 0: lb RSS %.1f -> %.1f MiB; all "
            "closed %.1f s later with GOAWAY %s" % (rss0 / MiB, rss / MiB, took, codes))
        self.assertEqual(codes, {ENHANCE_YOUR_CALM})
        if os.environ.get("LB_SANITIZED", "").lower() not in ("1", "true", "on", "yes"):
            self.assertLess(rss - rss0, 64 * MiB)
        self.assertTrue(lb.running())


class IdleDrain(harness.TestCase):
    def test_sigterm_closes_an_idle_http2_connection_at_once(self):
        o = self.origin("app-1", log=False)
        lb = self.lb(config(o.addr) + "shutdown_timeout: 30s\n")
        c = H2Client(lb.port())
        try:
            sid = c.request("/")
            c.wait(lambda: c.responses[sid]["ended"])
            t0 = time.monotonic()
            lb.signal(signal.SIGTERM)
            c.wait(lambda: c.closed, timeout=10)
            self.assertIsNotNone(c.goaway)
            self.assertEqual(c.goaway.error_code, 0)
            self.assertEqual(lb.wait_exit(timeout=10), 0)
            took = time.monotonic() - t0
        finally:
            c.close()
        self.assertLess(took, 5)
        say("SIGTERM with an idle HTTP/2 connection: GOAWAY(NO_ERROR), closed, lb exited in %.2f s"
            % took)


class Chromium(harness.TestCase):
    def test_chromium_loads_a_page_over_h2(self):
        chrome = shutil.which("chromium")
        if not chrome:
            self.fail("chromium is not installed (.ci/setup.sh installs it)")
        d = tempfile.mkdtemp(prefix="lb-h2-chromium-")
        self.addCleanup(shutil.rmtree, d, True)
        cert = make_cert(d)
        site = os.path.join(d, "site")
        os.mkdir(site)
        with open(os.path.join(site, "index.html"), "w") as f:
            f.write("<!doctype html><html><body><p id=p>loading</p><script>"
                    "document.getElementById('p').textContent = 'protocol=' + "
                    "performance.getEntriesByType('navigation')[0].nextHopProtocol;"
                    "</script></body></html>")
        port = harness.unused_port()
        web = harness._popen(["/usr/bin/python3", "-m", "http.server", str(port), "--bind",
                              "127.0.0.1", "--directory", site],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(harness.kill_and_wait, web)
        harness.wait_until(lambda: curl("http://127.0.0.1:%d/" % port)[0] == 0, timeout=10)
        lb = self.lb(config("127.0.0.1:%d" % port, tls=cert))
        r = subprocess.run([chrome, "--headless", "--no-sandbox", "--disable-gpu",
                            "--ignore-certificate-errors", "--user-data-dir=" + os.path.join(d, "profile"),
                            "--virtual-time-budget=5000", "--dump-dom",
                            "https://127.0.0.1:%d/index.html" % lb.port()],
                           capture_output=True, text=True, timeout=120)
        m = re.search(r"protocol=(\S*?)<", r.stdout)
        say("Chromium through lb over HTTPS: nextHopProtocol %s" % (m.group(1) if m else None))
        self.assertTrue(m, r.stdout[-1000:] + r.stderr[-2000:])
        self.assertEqual(m.group(1), "h2")


if __name__ == "__main__":
    unittest.main()
