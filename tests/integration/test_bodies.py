#!/usr/bin/env python3
"""Bodies through lb, both ways, byte for byte.

- uploads to /echo of 0 B, 1 B, 1 MiB and 50 MiB (Content-Length) and a chunked
  upload: the origin's X-Body-Sha256 and the echoed body match what was sent;
- downloads of /bytes/N (Content-Length and ?chunked=1) match pattern_bytes(N);
- HEAD, 204 and 304 answers carry no body: the next request on the same
  keep-alive connection is answered correctly;
- pipelined requests are answered in order.
"""

import hashlib
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import KeepAliveClient, RawConnection, http  # noqa: E402

MiB = 1024 * 1024


class Bodies(harness.TestCase):
    def setUp(self):
        self.app = self.origin("app-1")
        self.lb_ = self.lb(f"""
workers: 2
access_log: {{ path: "off" }}
admin: {{ listen: 127.0.0.1:0 }}
listeners:
  - name: public
    listen: 127.0.0.1:0
    limits: {{ max_body_bytes: 100MiB }}
    routes: [ {{ match: {{ path_prefix: / }}, pool: web }} ]
pools:
  web:
    backends: [ {{ address: {self.app.addr} }} ]
""")
        self.port = self.lb_.port()

    # -- uploads ---------------------------------------------------------------
    def upload(self, n):
        """POSTs pattern_bytes(n) to /echo with Content-Length, sent in 1 MiB pieces."""
        piece = harness.pattern_bytes(min(n, MiB))
        pieces = []
        left = n
        while left > 0:
            take = min(left, MiB)
            pieces.append(piece[:take])
            left -= take
        want = harness.pattern_sha256(n)
        status, h, body = http(self.port, "POST", "/echo",
                               headers={"Content-Length": str(n)},
                               body=iter(pieces) if n else b"", timeout=60)
        self.assertEqual(status, 200, body[:200])
        self.assertEqual(h["X-Origin"], "app-1")
        self.assertEqual(h["X-Received-Bytes"], str(n))
        self.assertEqual(h["X-Body-Sha256"], want, "origin received a different body")
        self.assertEqual(len(body), n)
        self.assertEqual(hashlib.sha256(body).hexdigest(), want, "echoed body differs")

    def test_upload_0_bytes(self):
        self.upload(0)

    def test_upload_1_byte(self):
        self.upload(1)

    def test_upload_1_mib(self):
        self.upload(MiB)

    def test_upload_50_mib(self):
        t0 = time.monotonic()
        self.upload(50 * MiB)
        self.assertLess(time.monotonic() - t0, 40)

    def test_upload_random_bytes(self):
        data = os.urandom(300 * 1024 + 17)
        status, h, body = http(self.port, "PUT", "/echo", body=data)
        self.assertEqual(status, 200)
        self.assertEqual(h["X-Body-Sha256"], harness.sha256(data))
        self.assertEqual(body, data)

    def test_upload_chunked(self):
        parts = [b"a" * 1000, os.urandom(70000), b"c", os.urandom(3 * MiB + 5), b"end"]
        data = b"".join(parts)
        status, h, body = http(self.port, "POST", "/echo", body=iter(parts), timeout=30)
        self.assertEqual(status, 200, body[:200])
        self.assertEqual(h["X-Received-Bytes"], str(len(data)))
        self.assertEqual(h["X-Body-Sha256"], harness.sha256(data))
        self.assertEqual(body, data)
        entry = self.app.log_entries()[-1]
        self.assertEqual(entry["target"], "/echo")
        self.assertEqual(entry["body_len"], len(data))

    # -- downloads ---------------------------------------------------------------
    def download(self, n, chunked=False):
        path = "/bytes/%d%s" % (n, "?chunked=1" if chunked else "")
        status, h, body = http(self.port, "GET", path, timeout=60)
        self.assertEqual(status, 200, body[:200])
        self.assertEqual(len(body), n)
        self.assertEqual(hashlib.sha256(body).hexdigest(), harness.pattern_sha256(n))
        self.assertEqual(h["X-Body-Sha256"], harness.pattern_sha256(n))
        if chunked:
            self.assertEqual((h["Transfer-Encoding"] or "").lower(), "chunked")
            self.assertIsNone(h["Content-Length"])
        else:
            self.assertEqual(h["Content-Length"], str(n))
        return h

    def test_download_sizes(self):
        for n in (0, 1, MiB):
            with self.subTest(n=n):
                self.download(n)

    def test_download_50_mib(self):
        t0 = time.monotonic()
        self.download(50 * MiB)
        self.assertLess(time.monotonic() - t0, 40)

    def test_download_chunked(self):
        for n in (1, 70000, 3 * MiB + 7):
            with self.subTest(n=n):
                self.download(n, chunked=True)

    def test_download_chunked_then_next_request(self):
        with KeepAliveClient(self.port) as c:
            status, h, body = c.request("GET", "/bytes/200000?chunked=1")
            self.assertEqual(status, 200)
            self.assertEqual(body, harness.pattern_bytes(200000))
            status, h, body = c.request("GET", "/after")
            self.assertEqual((status, body), (200, b"Hello from app-1\n"))
            self.assertEqual(c.connects, 1)

    # -- responses without a body ---------------------------------------------------
    def test_no_body_responses_keep_connection(self):
        with RawConnection(self.port) as c:
            c.send(b"HEAD /bytes/1000 HTTP/1.1\r\nHost: t\r\n\r\n")
            status, headers, body = c.read_response(head_request=True)
            h = {k.lower(): v for k, v in headers}
            self.assertEqual(status, 200)
            self.assertEqual(h.get("content-length"), "1000", headers)
            self.assertEqual(h.get("x-origin"), "app-1")

            c.send(b"GET /status/204 HTTP/1.1\r\nHost: t\r\n\r\n")
            status, headers, _ = c.read_response()
            self.assertEqual(status, 204)

            c.send(b"GET /status/304 HTTP/1.1\r\nHost: t\r\n\r\n")
            status, headers, _ = c.read_response()
            self.assertEqual(status, 304)

            # Nothing extra was sent after any of those heads: the next answer
            # starts exactly at the next status line.
            c.send(b"GET /headers?n=4 HTTP/1.1\r\nHost: t\r\n\r\n")
            status, headers, body = c.read_response()
            self.assertEqual(status, 200)
            self.assertEqual(json.loads(body)["target"], "/headers?n=4")
            self.assertFalse(c.closed_by_peer(0.3), "lb closed the keep-alive connection")
            self.assertEqual(bytes(c.buf), b"", "unexpected bytes after the last response")

    # -- pipelining -----------------------------------------------------------------
    def test_pipelined_in_order(self):
        with RawConnection(self.port) as c:
            c.send(b"GET /headers?n=1&delay=200 HTTP/1.1\r\nHost: t\r\n\r\n"
                   b"GET /headers?n=2 HTTP/1.1\r\nHost: t\r\n\r\n"
                   b"GET /headers?n=3 HTTP/1.1\r\nHost: t\r\n\r\n")
            targets = []
            for _ in range(3):
                status, headers, body = c.read_response(timeout=10)
                self.assertEqual(status, 200, body)
                targets.append(json.loads(body)["target"])
            self.assertEqual(targets, ["/headers?n=1&delay=200", "/headers?n=2", "/headers?n=3"])

    def test_pipelined_with_bodies(self):
        with RawConnection(self.port) as c:
            c.send(b"POST /echo?delay=100 HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"
                   b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"3\r\nabc\r\n0\r\n\r\n"
                   b"GET /bytes/10 HTTP/1.1\r\nHost: t\r\n\r\n")
            bodies = [c.read_response(timeout=10)[2] for _ in range(3)]
            self.assertEqual(bodies, [b"hello", b"abc", harness.pattern_bytes(10)])


if __name__ == "__main__":
    harness.main()
