#!/usr/bin/env python3
"""gRPC and HTTP/2 to backends (pools with `protocol: h2c` or `h2`), with
python3-grpcio servers (tests/origin/grpc_origin.py) and clients from Debian:

- one channel making 9,000 unary calls through lb to three servers: each
  gets 3,000 +-10% (streams are balanced, not the connection);
- server streaming of 100 MB, client streaming of 100 MB and a bidi echo of
  10,000 messages, intact: TLS to lb with h2c to the servers, and TLS on
  both sides (h2, ALPN);
- a server's grpc-status 5 with its message reaches the client (trailers);
- one of three servers killed under a steady load of unary calls: 0 failed
  calls;
- no backend: UNAVAILABLE with lb's message; grpc-timeout 100m against a
  slow server: DEADLINE_EXCEEDED in about 100 ms (lb's own deadline shown
  against a backend that never answers);
- a server whose health service says NOT_SERVING leaves the rotation and
  comes back with SERVING (health_check type grpc, over h2c and over TLS);
  an http check of an h2c pool speaks HTTP/2 (nghttpd: 200, then 404) and
  acknowledges the backend's SETTINGS (a backend that answers only then
  passes);
- HTTP/1.1 clients (wrk, keep-alive) through an h2c pool to nghttpd: 0
  errors, one or two connections to the backend per worker;
- a backend that sends GOAWAY every 10 streams: every request answered, new
  streams go to a new connection; one that allows 2 concurrent streams gets
  another connection for more;
- grpc-status in the access log and lb_grpc_responses_total;
- `lb check` refuses h2 without tls, h2c with tls, a grpc check on an
  HTTP/1.1 pool, unknown protocols and service on an http check.
"""

import collections
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import grpc  # noqa: E402

import harness  # noqa: E402
from grpc_support import (AckWaitingServer, GoawayServer, GrpcOrigin,  # noqa: E402
                          LimitedServer, Nghttpd, SilentServer, established_to)
from harness import lb_check, wait_until  # noqa: E402


def pattern_sha(total):
    import hashlib
    h = hashlib.sha256()
    block = bytes((i % 251) for i in range(251 * 1024))
    sent = 0
    while sent < total:
        n = min(len(block), total - sent)
        h.update(block[:n] if sent % 251 == 0 else bytes((i % 251) for i in range(sent, sent + n)))
        sent += n
    return h.hexdigest()


class Grpc(harness.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="lb-grpc-")
        cls.ca, cls.cert, cls.key = harness.make_ca_and_leaf(cls.dir)
        with open(cls.ca, "rb") as f:
            cls.ca_bytes = f.read()

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir, ignore_errors=True)

    # ---- helpers

    def grpc_origin(self, name, **kw):
        o = GrpcOrigin(name, **kw)
        self.addCleanup(o.cleanup)
        return o

    def config(self, backends, protocol="h2c", tls_listener=False, pool_extra="", workers=1,
               access_log='{ path: "off" }'):
        listener_tls = (f"    tls: {{ certificates: [ {{ cert: {self.cert}, key: {self.key} }} ] }}\n"
                        if tls_listener else "")
        pool_tls = (f"    tls: {{ ca: {self.ca}, sni: app.test }}\n" if protocol == "h2" else "")
        listed = ", ".join('"%s"' % b for b in backends)
        return f"""
workers: {workers}
access_log: {access_log}
admin: {{ listen: 127.0.0.1:0 }}
listeners:
  - name: public
    listen: 127.0.0.1:0
{listener_tls}    routes: [ {{ pool: app }} ]
pools:
  app:
    protocol: {protocol}
    timeouts: {{ connect: 1s, response: 30s }}
{pool_tls}{pool_extra}    backends: [ {listed} ]
"""

    def channel(self, lb, tls=False):
        opts = [("grpc.max_receive_message_length", 64 << 20),
                ("grpc.max_send_message_length", 64 << 20),
                ("grpc.enable_retries", 0)]
        if tls:
            creds = grpc.ssl_channel_credentials(root_certificates=self.ca_bytes)
            ch = grpc.secure_channel("127.0.0.1:%d" % lb.port(), creds,
                                     opts + [("grpc.ssl_target_name_override", "app.test")])
        else:
            ch = grpc.insecure_channel("127.0.0.1:%d" % lb.port(), opts)
        self.addCleanup(ch.close)
        return ch

    # ---- balancing

    def test_unary_calls_are_balanced_per_stream(self):
        origins = [self.grpc_origin(n) for n in ("a", "b", "c")]
        lb = self.lb(self.config([o.addr for o in origins]))
        ch = self.channel(lb)
        unary = ch.unary_unary("/lbtest.Echo/Whoami")
        counts = collections.Counter()
        pending = collections.deque()
        for i in range(9000):
            pending.append(unary.future(b"", timeout=30))
            if len(pending) >= 64:
                counts[pending.popleft().result()] += 1
        while pending:
            counts[pending.popleft().result()] += 1
        self.assertEqual(sum(counts.values()), 9000)
        for name in (b"a", b"b", b"c"):
            self.assertGreaterEqual(counts[name], 2700, counts)
            self.assertLessEqual(counts[name], 3300, counts)

    # ---- streaming, trailers

    def streaming(self, protocol):
        tls = (self.cert, self.key) if protocol == "h2" else None
        origin = self.grpc_origin("s", tls=tls)
        lb = self.lb(self.config([origin.addr], protocol=protocol, tls_listener=True))
        ch = self.channel(lb, tls=True)
        total = 100 * 1000 * 1000
        # Server streaming: 100 MB in 64 KiB messages.
        import hashlib
        h = hashlib.sha256()
        n = 0
        for m in ch.unary_stream("/lbtest.Echo/ServerStream")(b"%d/65536" % total, timeout=120):
            h.update(m)
            n += len(m)
        self.assertEqual(n, total)
        self.assertEqual(h.hexdigest(), pattern_sha(total))
        # Client streaming: 100 MB in 1 MB messages.
        block = os.urandom(1000 * 1000)
        digest = hashlib.sha256(block * 100).hexdigest()
        answer = ch.stream_unary("/lbtest.Echo/ClientStream")(iter([block] * 100), timeout=120)
        self.assertEqual(answer.decode(), "%d %s" % (total, digest))
        # Bidi: 10,000 messages echoed in order.
        msgs = [b"message %d" % i for i in range(10000)]
        got = list(ch.stream_stream("/lbtest.Echo/Bidi")(iter(msgs), timeout=120))
        self.assertEqual(got, msgs)

    def test_streaming_tls_to_lb_h2c_to_servers(self):
        self.streaming("h2c")

    def test_streaming_tls_both_sides(self):
        self.streaming("h2")

    def test_status_and_message_in_trailers_reach_the_client(self):
        origin = self.grpc_origin("t")
        lb = self.lb(self.config([origin.addr], access_log="{ path: stdout, format: json }"))
        ch = self.channel(lb)
        with self.assertRaises(grpc.RpcError) as ctx:
            ch.unary_unary("/lbtest.Echo/Fail")(b"widget 7", timeout=10)
        self.assertEqual(ctx.exception.code(), grpc.StatusCode.NOT_FOUND)
        self.assertEqual(ctx.exception.details(), "no such thing: widget 7")
        # A streamed answer ends with trailers too.
        self.assertEqual(ch.unary_unary("/lbtest.Echo/Unary")(b"x", timeout=10), b"t:x")
        self.assertTrue(wait_until(lambda: harness.metric_value(
            lb.metrics_text(), "lb_grpc_responses_total", pool="app", grpc_status="5") == 1))
        self.assertEqual(harness.metric_value(lb.metrics_text(), "lb_grpc_responses_total",
                                              pool="app", grpc_status="0"), 1)
        lb.terminate()
        entries = [json.loads(line) for line in lb.stdout_text().splitlines() if line.strip()]
        self.assertEqual(sorted(e.get("grpc_status") for e in entries), [0, 5], entries)

    # ---- failures

    def test_killing_a_server_under_load_fails_no_call(self):
        origins = [self.grpc_origin(n) for n in ("a", "b", "c")]
        lb = self.lb(self.config([o.addr for o in origins], workers=2))
        ch = self.channel(lb)
        unary = ch.unary_unary("/lbtest.Echo/Unary")
        stop = time.time() + 5
        counts = collections.Counter()
        errors = []
        lock = threading.Lock()

        def client():
            while time.time() < stop:
                try:
                    name = unary(b"x", timeout=10).split(b":")[0]
                    with lock:
                        counts[name] += 1
                except grpc.RpcError as e:
                    with lock:
                        errors.append("%s %s" % (e.code(), e.details()))

        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        time.sleep(2)
        before = sum(counts.values())
        origins[2].kill()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])
        self.assertGreater(before, 100)
        self.assertGreater(sum(counts.values()) - before, 100, "calls went on after the kill")
        self.assertGreater(counts[b"c"], 0)

    def test_no_backend_is_unavailable_with_lbs_message(self):
        port = harness.unused_port()
        lb = self.lb(self.config(["127.0.0.1:%d" % port]))
        ch = self.channel(lb)
        with self.assertRaises(grpc.RpcError) as ctx:
            ch.unary_unary("/lbtest.Echo/Unary")(b"x", timeout=10)
        self.assertEqual(ctx.exception.code(), grpc.StatusCode.UNAVAILABLE)
        self.assertIn("connect to 127.0.0.1:%d failed: Connection refused" % port,
                      ctx.exception.details())
        self.assertIn("request id", ctx.exception.details())

    def test_deadline_against_a_slow_server(self):
        origin = self.grpc_origin("slow")
        lb = self.lb(self.config([origin.addr]))
        ch = self.channel(lb)
        started = time.monotonic()
        with self.assertRaises(grpc.RpcError) as ctx:
            ch.unary_unary("/lbtest.Echo/Slow")(b"3", timeout=0.1)
        elapsed = time.monotonic() - started
        self.assertEqual(ctx.exception.code(), grpc.StatusCode.DEADLINE_EXCEEDED)
        self.assertLess(elapsed, 1.0)

    def test_lb_enforces_grpc_timeout_itself(self):
        # A backend that takes the stream and never answers; the client sets
        # no deadline of its own, only the grpc-timeout field (raw HTTP/2).
        silent = SilentServer()
        self.addCleanup(silent.cleanup)
        lb = self.lb(self.config([silent.addr]))
        import h2.config
        import h2.connection
        import h2.events
        s = socket.create_connection(("127.0.0.1", lb.port()), timeout=10)
        self.addCleanup(s.close)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                                    header_encoding="utf-8"))
        conn.initiate_connection()
        conn.send_headers(1, [(":method", "POST"), (":scheme", "http"), (":authority", "app"),
                              (":path", "/lbtest.Echo/Unary"),
                              ("content-type", "application/grpc"), ("te", "trailers"),
                              ("grpc-timeout", "100m")])
        conn.send_data(1, b"\x00\x00\x00\x00\x01x", end_stream=True)
        started = time.monotonic()
        s.sendall(conn.data_to_send())
        headers = None
        while headers is None:
            data = s.recv(65536)
            self.assertTrue(data, "lb closed the connection")
            for e in conn.receive_data(data):
                if isinstance(e, h2.events.ResponseReceived):
                    headers = dict(e.headers)
                    ended = e.stream_ended is not None
            s.sendall(conn.data_to_send())
        elapsed = time.monotonic() - started
        self.assertEqual(headers[":status"], "200")
        self.assertEqual(headers["grpc-status"], "4")
        self.assertIn("grpc-timeout", headers["grpc-message"])
        self.assertTrue(ended, "a trailers-only answer ends the stream with its HEADERS")
        self.assertGreater(elapsed, 0.08)
        self.assertLess(elapsed, 0.6)

    # ---- health

    def test_not_serving_leaves_the_rotation_and_comes_back(self):
        health = os.path.join(self.dir, "health-b")
        if os.path.exists(health):
            os.unlink(health)
        a = self.grpc_origin("a")
        b = self.grpc_origin("b", health_file=health)
        lb = self.lb(self.config([a.addr, b.addr], pool_extra=(
            "    health_check: { type: grpc, service: lbtest.Echo, interval: 200ms,"
            " healthy_threshold: 1, unhealthy_threshold: 1 }\n")))
        label = {"pool": "app", "backend": b.addr}
        self.assertTrue(wait_until(lambda: harness.metric_value(
            lb.metrics_text(), "lb_backend_healthy", region="default", **label) == 1, 10))
        ch = self.channel(lb)
        whoami = ch.unary_unary("/lbtest.Echo/Whoami")

        def names(n):
            return collections.Counter(whoami(b"", timeout=10) for _ in range(n))

        self.assertGreater(names(20)[b"b"], 0)
        with open(health, "w") as f:
            f.write("NOT_SERVING\n")
        self.assertTrue(wait_until(lambda: harness.metric_value(
            lb.metrics_text(), "lb_backend_healthy", region="default", **label) == 0, 10))
        self.assertEqual(names(30)[b"b"], 0)
        self.assertIn("NOT_SERVING", lb.stderr_text())
        os.unlink(health)
        self.assertTrue(wait_until(lambda: harness.metric_value(
            lb.metrics_text(), "lb_backend_healthy", region="default", **label) == 1, 10))
        self.assertGreater(names(20)[b"b"], 0)

    def test_grpc_check_over_tls(self):
        # protocol h2: the check's handshake, request, SETTINGS acknowledgement
        # and answer all over TLS; NOT_SERVING fails it, SERVING passes again.
        health = os.path.join(self.dir, "health-tls")
        if os.path.exists(health):
            os.unlink(health)
        origin = self.grpc_origin("t", tls=(self.cert, self.key), health_file=health)
        lb = self.lb(self.config([origin.addr], protocol="h2", pool_extra=(
            "    health_check: { type: grpc, service: lbtest.Echo, interval: 200ms,"
            " healthy_threshold: 1, unhealthy_threshold: 1 }\n")))
        label = {"pool": "app", "backend": origin.addr}

        def healthy():
            return harness.metric_value(lb.metrics_text(), "lb_backend_healthy",
                                        region="default", **label)

        self.assertTrue(wait_until(lambda: healthy() == 1, 10), lb.stderr_text()[-2000:])
        with open(health, "w") as f:
            f.write("NOT_SERVING\n")
        self.assertTrue(wait_until(lambda: healthy() == 0, 10))
        os.unlink(health)
        self.assertTrue(wait_until(lambda: healthy() == 1, 10))
        self.assertIn("gRPC Health/Check of lbtest.Echo: NOT_SERVING", lb.stderr_text())

    def test_http_check_of_an_h2c_pool_speaks_http2(self):
        docroot = os.path.join(self.dir, "docroot-health")
        os.makedirs(docroot, exist_ok=True)
        with open(os.path.join(docroot, "healthz"), "w") as f:
            f.write("ok\n")
        server = Nghttpd(docroot)
        self.addCleanup(server.cleanup)
        check = ("    health_check: { path: %s, interval: 200ms,"
                 " healthy_threshold: 1, unhealthy_threshold: 1 }\n")
        text = self.config([server.addr], pool_extra=check % "/healthz")
        # Another pool checks a path nghttpd answers with 404, and expects that.
        text += ("  other:\n    protocol: h2c\n    health_check: { path: /missing, interval: 200ms,"
                 " expect_status: 404 }\n    backends: [ \"%s\" ]\n" % server.addr)
        lb = self.lb(text)
        for pool in ("app", "other"):
            self.assertTrue(wait_until(lambda: harness.metric_value(
                lb.metrics_text(), "lb_backend_healthy", pool=pool, backend=server.addr) == 1, 10),
                pool)
        self.assertIn("GET /healthz: status 200", lb.stderr_text())
        self.assertIn("GET /missing: status 404", lb.stderr_text())

    def test_http2_check_acknowledges_the_backends_settings(self):
        # A backend that answers only once its SETTINGS are acknowledged: the
        # check sends the acknowledgement and passes; requests get through.
        server = AckWaitingServer()
        self.addCleanup(server.cleanup)
        check = ("    health_check: { path: /healthz, interval: 500ms, timeout: 500ms,"
                 " healthy_threshold: 1, unhealthy_threshold: 1 }\n")
        lb = self.lb(self.config([server.addr], pool_extra=check))
        self.assertTrue(wait_until(lambda: "GET /healthz: status 200" in lb.stderr_text(), 10),
                        lb.stderr_text()[-2000:])
        self.assertTrue(wait_until(lambda: server.answered >= 3, 10))
        self.assertNotIn("GET /healthz: timeout", lb.stderr_text())
        self.assertEqual(harness.metric_value(lb.metrics_text(), "lb_backend_healthy",
                                              pool="app", backend=server.addr), 1)
        c = harness.KeepAliveClient(lb.port())
        try:
            status, _, body = c.request("GET", "/")
        finally:
            c.close()
        self.assertEqual((status, body), (200, b"ok"))

    # ---- HTTP/1.1 clients, GOAWAY

    def test_http1_clients_through_an_h2c_pool(self):
        docroot = os.path.join(self.dir, "docroot")
        os.makedirs(docroot, exist_ok=True)
        with open(os.path.join(docroot, "index.html"), "w") as f:
            f.write("hello from nghttpd\n")
        server = Nghttpd(docroot)
        self.addCleanup(server.cleanup)
        lb = self.lb(self.config([server.addr], workers=2))
        status, _, body = harness.http(lb.port(), "GET", "/index.html")
        self.assertEqual((status, body), (200, b"hello from nghttpd\n"))
        out = subprocess.run(["wrk", "-t2", "-c64", "-d3s", "--latency",
                              "http://127.0.0.1:%d/index.html" % lb.port()],
                             capture_output=True, text=True, timeout=60).stdout
        requests = int(re.search(r"(\d+) requests in", out).group(1))
        self.assertGreater(requests, 1000, out)
        self.assertNotIn("Non-2xx", out)
        self.assertNotIn("Socket errors", out)
        # Few connections carry them all (at most one or two per worker), and
        # the metric says how many.
        self.assertLessEqual(established_to(server.port), 4)
        self.assertGreaterEqual(established_to(server.port), 1)
        self.assertEqual(lb.metric("lb_backend_http2_connections", pool="app",
                                   backend=server.addr), established_to(server.port))

    def test_head_and_upgrades_through_an_h2c_pool(self):
        docroot = os.path.join(self.dir, "docroot-head")
        os.makedirs(docroot, exist_ok=True)
        with open(os.path.join(docroot, "index.html"), "w") as f:
            f.write("hello from nghttpd\n")
        server = Nghttpd(docroot)
        self.addCleanup(server.cleanup)
        lb = self.lb(self.config([server.addr]))
        c = harness.KeepAliveClient(lb.port())
        self.addCleanup(c.close)
        status, headers, body = c.request("HEAD", "/index.html")
        self.assertEqual((status, body), (200, b""))
        self.assertEqual(headers.get("content-length"), "19")
        status, _, body = c.request("GET", "/index.html")  # the connection goes on
        self.assertEqual((status, body), (200, b"hello from nghttpd\n"))
        self.assertEqual(c.connects, 1)
        # A WebSocket upgrade cannot be carried over HTTP/2 to the backend: 501, said why.
        status, _, body = harness.http(lb.port(), "GET", "/chat", headers={
            "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
        self.assertEqual(status, 501)
        self.assertIn(b"upgrades (WebSocket) are not carried", body)

    def test_streams_beyond_the_backends_limit_open_another_connection(self):
        server = LimitedServer(max_streams=2, delay=0.5)
        self.addCleanup(server.cleanup)
        lb = self.lb(self.config([server.addr]))
        results = []
        lock = threading.Lock()

        def get():
            status, _, body = harness.http(lb.port(), "GET", "/", timeout=10)
            with lock:
                results.append((status, body))

        started = time.monotonic()
        threads = [threading.Thread(target=get) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
        self.maxDiff = None
        self.assertEqual(results, [(200, b"ok")] * 8)
        # 8 requests at once, 2 streams per connection: 4 connections, all
        # answered together (not 4 rounds of 0.5 s on one connection).
        self.assertGreaterEqual(server.connections, 4)
        self.assertLessEqual(server.most_at_once, 2)
        backend = [b for p in lb.status_json()["pools"] for b in p["backends"]][0]
        self.assertEqual(backend["http2_connections"], server.connections)
        self.assertLess(elapsed, 1.6)

    def test_goaway_moves_new_streams_to_a_new_connection(self):
        server = GoawayServer(every=10)
        self.addCleanup(server.cleanup)
        lb = self.lb(self.config([server.addr]))
        errors = []
        answered = [0]
        lock = threading.Lock()

        def client():
            c = harness.KeepAliveClient(lb.port())
            try:
                for _ in range(50):
                    status, _, body = c.request("GET", "/")
                    with lock:
                        if status == 200 and body.startswith(b"ok "):
                            answered[0] += 1
                        else:
                            errors.append((status, body[:100]))
            finally:
                c.close()

        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])
        self.assertEqual(answered[0], 200)
        self.assertGreaterEqual(server.connections, 20)

    # ---- configuration

    def test_lb_check_refuses_what_cannot_work(self):
        base = """
listeners:
  - name: public
    listen: 127.0.0.1:0
    routes: [ { pool: app } ]
pools:
  app:
%s    backends: [ "127.0.0.1:9" ]
"""
        cases = [
            ("    protocol: h2\n", "protocol: h2 needs the pool's tls"),
            ("    protocol: h2c\n    tls: { verify: false }\n", "protocol: h2c is HTTP/2 without TLS"),
            ("    protocol: http3\n", "protocol: expected http1, h2 or h2c, got 'http3'"),
            ("    health_check: { type: grpc }\n", "health_check type grpc needs protocol h2 or h2c"),
            ("    protocol: h2c\n    health_check: { type: http, service: a.B }\n",
             "service: applies to type grpc only"),
            ("    protocol: h2c\n    health_check: { type: grpc, path: /x }\n",
             "path: applies to type http only"),
            ("    protocol: h2c\n    health_check: { type: grpc, service: \"a b\" }\n",
             "service: expected a gRPC service name"),
        ]
        for extra, message in cases:
            code, out, _ = lb_check(base % extra)
            self.assertNotEqual(code, 0, extra)
            self.assertIn(message, out, extra)
            self.assertRegex(out, r"lb\.yaml:\d+:\d+", extra)
        code, out, _ = lb_check(base % "    protocol: h2c\n    health_check: { type: grpc, service: pkg.Svc }\n")
        self.assertEqual(code, 0, out)


if __name__ == "__main__":
    harness.main()
