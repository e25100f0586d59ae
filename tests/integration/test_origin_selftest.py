#!/usr/bin/env python3
"""Self-test of tests/origin/origin.py and the harness (no lb involved)."""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import KeepAliveClient, RawConnection, http, raw, wait_until  # noqa: E402


class OriginSelfTest(harness.TestCase):
    def setUp(self):
        self.o = self.origin("self-1")

    def test_hello(self):
        status, h, body = http(self.o.port, "GET", "/anything")
        self.assertEqual(status, 200)
        self.assertEqual(body, b"Hello from self-1\n")
        self.assertEqual(h["X-Origin"], "self-1")
        self.assertEqual(h["Content-Length"], str(len(body)))
        self.assertEqual(self.o.addr, "127.0.0.1:%d" % self.o.port)

    def test_echo_with_sha(self):
        data = os.urandom(300000)
        status, h, body = http(self.o.port, "POST", "/echo", body=data)
        self.assertEqual(status, 200)
        self.assertEqual(body, data)
        self.assertEqual(h["X-Body-Sha256"], harness.sha256(data))
        self.assertEqual(h["X-Received-Bytes"], str(len(data)))

    def test_echo_chunked_request(self):
        parts = [b"a" * 1000, b"b" * 70000, b"c"]
        status, h, body = http(self.o.port, "PUT", "/echo", body=iter(parts))
        self.assertEqual(status, 200)
        self.assertEqual(body, b"".join(parts))
        entry = self.o.log_entries()[-1]
        self.assertIn(["Transfer-Encoding", "chunked"], entry["headers"])
        self.assertEqual(entry["body_len"], 71001)

    def test_large_body(self):
        n = 50 * 1024 * 1024
        chunk = harness.pattern_bytes(1 << 20)
        t0 = time.monotonic()
        status, h, body = http(self.o.port, "POST", "/echo",
                               headers={"Content-Length": str(n)},
                               body=iter([chunk] * 50), timeout=60)
        self.assertEqual(status, 200)
        self.assertEqual(len(body), n)
        self.assertEqual(h["X-Body-Sha256"], harness.pattern_sha256(n))
        self.assertLess(time.monotonic() - t0, 30)

    def test_bytes_plain_and_chunked(self):
        n = 200 * 1024 + 7
        status, h, body = http(self.o.port, "GET", "/bytes/%d" % n)
        self.assertEqual(status, 200)
        self.assertEqual(body, harness.pattern_bytes(n))
        self.assertEqual(h["Content-Length"], str(n))
        self.assertEqual(h["X-Body-Sha256"], harness.pattern_sha256(n))

        status, h, body = http(self.o.port, "GET", "/bytes/%d?chunked=1" % n)
        self.assertEqual(status, 200)
        self.assertEqual(h["Transfer-Encoding"], "chunked")
        self.assertIsNone(h["Content-Length"])
        self.assertEqual(body, harness.pattern_bytes(n))

        # Byte-exact framing: 64 KiB chunks.
        with RawConnection(self.o.port) as c:
            c.send(b"GET /bytes/70000?chunked=1 HTTP/1.1\r\nHost: x\r\n\r\n")
            c.recv_until(b"\r\n\r\n")
            self.assertEqual(c.recv_until(b"\r\n"), b"10000\r\n")

    def test_large_bytes(self):
        n = 50 * 1024 * 1024 + 3
        for q in ("", "?chunked=1"):
            status, h, body = http(self.o.port, "GET", "/bytes/%d%s" % (n, q), timeout=60)
            self.assertEqual(status, 200)
            self.assertEqual(len(body), n)
            self.assertEqual(harness.sha256(body), harness.pattern_sha256(n))
            self.assertEqual(h["X-Body-Sha256"], harness.pattern_sha256(n))
        status, h, body = http(self.o.port, "HEAD", "/bytes/%d" % n)
        self.assertEqual((status, body, h["Content-Length"]), (200, b"", str(n)))

    def test_status_204_and_others(self):
        status, h, body = http(self.o.port, "GET", "/status/204")
        self.assertEqual((status, body), (204, b""))
        self.assertIsNone(h["Content-Length"])
        status, h, body = http(self.o.port, "GET", "/status/503")
        self.assertEqual((status, body), (503, b"status 503\n"))
        # 204 on a keep-alive connection leaves the connection usable.
        with RawConnection(self.o.port) as c:
            c.send(b"GET /status/204 HTTP/1.1\r\nHost: x\r\n\r\nGET /x HTTP/1.1\r\nHost: x\r\n\r\n")
            self.assertEqual(c.read_response()[0], 204)
            st, hdrs, body = c.read_response()
            self.assertEqual((st, body), (200, b"Hello from self-1\n"))

    def test_keepalive_reuse_counted(self):
        before = self.o.stats()
        with KeepAliveClient(self.o.port) as c:
            for _ in range(5):
                status, _, body = c.request("GET", "/k")
                self.assertEqual(status, 200)
            self.assertEqual(c.connects, 1)
        after = self.o.stats()
        self.assertEqual(after["requests"] - before["requests"], 5)
        self.assertEqual(after["connections"] - before["connections"], 1)
        self.assertEqual(after["paths"].get("/k"), 5)

    def test_connection_close_and_http10(self):
        data = raw(self.o.port, b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        self.assertTrue(data.startswith(b"HTTP/1.1 200 "))
        self.assertIn(b"Connection: close\r\n", data)
        self.assertTrue(data.endswith(b"Hello from self-1\n"))  # closed by origin, no timeout
        data = raw(self.o.port, b"GET /a HTTP/1.0\r\n\r\n", timeout=5)
        self.assertTrue(data.endswith(b"Hello from self-1\n"))
        with RawConnection(self.o.port) as c:
            c.send(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            st, hdrs, _ = c.read_response()
            self.assertIn(("Connection", "keep-alive"), hdrs)
            self.assertFalse(c.closed_by_peer(0.3))
            c.send(b"GET /a HTTP/1.0\r\n\r\n")
            self.assertEqual(c.read_response()[0], 200)
            self.assertTrue(c.closed_by_peer(2))

    def test_headers_endpoint(self):
        status, h, body = http(self.o.port, "GET", "/headers?q=1",
                               headers=[("X-Foo", "bar"), ("x-foo", "baz")])
        import json
        j = json.loads(body)
        self.assertEqual(j["target"], "/headers?q=1")
        self.assertEqual(j["version"], "HTTP/1.1")
        self.assertIn(["X-Foo", "bar"], j["headers"])
        self.assertIn(["x-foo", "baz"], j["headers"])

    def test_health_and_delay(self):
        self.assertEqual(http(self.o.port, "GET", "/healthz")[0:3:2], (200, b"ok\n"))
        self.o.set_healthy(False)
        self.assertEqual(http(self.o.port, "GET", "/healthz")[0], 503)
        self.o.set_healthy(True)
        self.assertEqual(http(self.o.port, "GET", "/healthz")[0], 200)
        t0 = time.monotonic()
        self.assertEqual(http(self.o.port, "GET", "/x?delay=300")[0], 200)
        self.assertGreaterEqual(time.monotonic() - t0, 0.29)

    def test_log_file(self):
        http(self.o.port, "POST", "/echo?x=1", body=b"hello")
        http(self.o.port, "GET", "/bytes/10")
        entries = self.o.log_entries()
        self.assertEqual(len(entries), 2)
        e = entries[0]
        self.assertEqual(e["name"], "self-1")
        self.assertEqual((e["method"], e["target"], e["version"]), ("POST", "/echo?x=1", "HTTP/1.1"))
        self.assertEqual(e["body_len"], 5)
        self.assertEqual(e["body_sha256"], harness.sha256(b"hello"))
        self.assertIn(["Content-Length", "5"], e["headers"])
        self.assertNotEqual(entries[0]["conn_id"], entries[1]["conn_id"])

    def test_bad_request_closes(self):
        data = raw(self.o.port, b"GET / HTTP/1.1\r\nContent-Length: 1\r\n"
                   b"Transfer-Encoding: chunked\r\n\r\n")
        self.assertTrue(data.startswith(b"HTTP/1.1 400 "))

    def test_drop_and_truncate(self):
        data = raw(self.o.port, b"GET /drop HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(data, b"")
        with RawConnection(self.o.port) as c:
            c.send(b"GET /truncate/1000 HTTP/1.1\r\nHost: x\r\n\r\n")
            with self.assertRaises(ConnectionError):
                c.read_response()

    def test_expect_continue(self):
        with RawConnection(self.o.port) as c:
            c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
                   b"Expect: 100-continue\r\n\r\n")
            self.assertEqual(c.recv_until(b"\r\n\r\n"), b"HTTP/1.1 100 Continue\r\n\r\n")
            c.send(b"abc")
            st, _, body = c.read_response()
            self.assertEqual((st, body), (200, b"abc"))

    def test_kill_and_restart(self):
        port = self.o.port
        self.o.kill()
        self.assertFalse(self.o.running())
        with self.assertRaises(OSError):
            http(port, "GET", "/", timeout=2)
        self.o.restart()
        self.assertEqual(self.o.port, port)
        self.assertEqual(http(port, "GET", "/")[0], 200)


class IdleCloseTest(harness.TestCase):
    def test_idle_close(self):
        o = self.origin("idle", idle_close=0.3)
        with RawConnection(o.port) as c:
            c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            self.assertEqual(c.read_response()[0], 200)
            self.assertTrue(c.closed_by_peer(3))

    def test_wait_until(self):
        t0 = time.monotonic()
        self.assertFalse(wait_until(lambda: False, timeout=0.2))
        self.assertLess(time.monotonic() - t0, 1)
        self.assertTrue(wait_until(lambda: True, timeout=0.2))


class MetricsParseTest(harness.TestCase):
    def test_parse(self):
        text = ('# HELP x\nlb_requests_total{listener="public",pool="web",code="200"} 3\n'
                'lb_requests_total{listener="public",pool="web",code="503"} 2\n'
                'lb_build_info{version="1.0"} 1\n')
        self.assertEqual(harness.metric_value(text, "lb_requests_total"), 5)
        self.assertEqual(harness.metric_value(text, "lb_requests_total", code=503), 2)
        self.assertEqual(harness.metric_value(text, "nope"), 0)


if __name__ == "__main__":
    harness.main()
