#!/usr/bin/env python3
"""Backend failures as a client sees them.

- a refused backend next to a live one: every GET succeeds (retried);
- every backend refused: 502 naming the reason ("connect");
- a backend slower than timeouts.response: 504 in about that time;
- a backend that resets the connection: 502;
- a backend that closes mid-body: the client's connection is closed before
  the full body (never a silently short "complete" response);
- retries: 0 with the refused backend first in rotation: that request is 502.
"""

import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import RawConnection, http, unused_port  # noqa: E402


def config(addresses, retries=None, response_timeout=None, workers=1):
    backends = "\n".join("      - address: %s" % a for a in addresses)
    extra = ""
    if retries is not None:
        extra += "    retries: %d\n" % retries
    if response_timeout is not None:
        extra += "    timeouts: { connect: 1s, response: %s }\n" % response_timeout
    return f"""
workers: {workers}
access_log: {{ path: "off" }}
admin: {{ listen: 127.0.0.1:0 }}
listeners:
  - name: public
    listen: 127.0.0.1:0
    routes: [ {{ match: {{ path_prefix: / }}, pool: web }} ]
pools:
  web:
{extra}    backends:
{backends}
"""


class Failures(harness.TestCase):
    def assert_error_body(self, body, *reasons):
        text = body.decode("utf-8", "replace").lower()
        self.assertTrue(any(r in text for r in reasons),
                        "error body names none of %r: %r" % (reasons, body))
        self.assertIn("request id", text, "error body has no request id: %r" % body)

    def test_refused_backend_is_retried(self):
        app = self.origin("app-1", log=False)
        dead = "127.0.0.1:%d" % unused_port()
        lb = self.lb(config([dead, app.addr], workers=2))
        for i in range(20):
            status, h, body = http(lb.port(), "GET", "/r/%d" % i)
            self.assertEqual((status, h["X-Origin"], body), (200, "app-1", b"Hello from app-1\n"),
                             "request %d" % i)
        self.assertEqual(app.stats()["requests"], 20)

    def test_all_refused_502(self):
        dead1 = "127.0.0.1:%d" % unused_port()
        dead2 = "127.0.0.1:%d" % unused_port()
        lb = self.lb(config([dead1, dead2]))
        t0 = time.monotonic()
        status, h, body = http(lb.port(), "GET", "/x")
        self.assertEqual(status, 502, body)
        self.assertLess(time.monotonic() - t0, 5)
        self.assert_error_body(body, "connect")
        # And lb still serves the next one the same way (no hang, no crash).
        status, h, body = http(lb.port(), "POST", "/x", body=b"data")
        self.assertEqual(status, 502, body)
        self.assertTrue(lb.running())

    def test_slow_backend_504(self):
        app = self.origin("app-1", log=False)
        lb = self.lb(config([app.addr], response_timeout="1s"))
        t0 = time.monotonic()
        status, h, body = http(lb.port(), "GET", "/slow?delay=3000", timeout=10)
        elapsed = time.monotonic() - t0
        self.assertEqual(status, 504, body)
        self.assertGreaterEqual(elapsed, 0.9, "504 before the response timeout")
        self.assertLess(elapsed, 2.5, "504 took %.2f s with timeouts.response: 1s" % elapsed)
        self.assert_error_body(body, "timeout", "timed out")
        # A fast request right after is served.
        status, h, body = http(lb.port(), "GET", "/fast")
        self.assertEqual((status, body), (200, b"Hello from app-1\n"))

    def test_reset_502(self):
        app = self.origin("app-1", log=False)
        lb = self.lb(config([app.addr]))
        status, h, body = http(lb.port(), "GET", "/drop")
        self.assertEqual(status, 502, body)
        self.assert_error_body(body, "reset", "closed", "connection")
        status, h, body = http(lb.port(), "GET", "/after")
        self.assertEqual((status, body), (200, b"Hello from app-1\n"))

    def test_truncated_body_closes_client_connection(self):
        app = self.origin("app-1", log=False)
        lb = self.lb(config([app.addr]))
        n = 100000
        with RawConnection(lb.port()) as c:
            c.send(b"GET /truncate/%d HTTP/1.1\r\nHost: t\r\n\r\n" % n)
            head = c.recv_until(b"\r\n\r\n")
            self.assertTrue(head.startswith(b"HTTP/1.1 200 "), head)
            self.assertIn(b"content-length: %d\r\n" % n, head.lower())
            got = bytearray(c.buf)
            c.buf.clear()
            closed = False
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                try:
                    c.sock.settimeout(max(0.01, deadline - time.monotonic()))
                    b = c.sock.recv(1 << 16)
                except socket.timeout:
                    break
                except ConnectionResetError:
                    closed = True
                    break
                if not b:
                    closed = True
                    break
                got += b
            self.assertTrue(closed, "lb kept the client connection open after a truncated "
                                    "body (%d of %d bytes received)" % (len(got), n))
            self.assertLess(len(got), n)
            self.assertEqual(bytes(got), harness.pattern_bytes(n)[:len(got)],
                             "the bytes received are not the origin's")

    def test_refused_backend_is_skipped_even_with_retries_0(self):
        app = self.origin("app-1", log=False)
        dead = "127.0.0.1:%d" % unused_port()
        lb = self.lb(config([dead, app.addr], retries=0, workers=1))
        results = []
        for i in range(4):
            status, h, body = http(lb.port(), "GET", "/n/%d" % i)
            results.append((status, h["X-Origin"]))
        # A refused connection sent nothing and cost nothing: lb moves on to the
        # next backend without using up a retry, and the refusing backend leaves
        # the rotation at once. `retries` bounds the costly failures (timeouts,
        # resets), not this one.
        self.assertEqual(results, [(200, "app-1")] * 4)
        self.assertEqual(app.stats()["requests"], 4)
        self.assertIn("ejected", lb.stderr_text())

    def test_retries_0_does_not_retry_a_timeout(self):
        # A backend that accepts but never answers the connect in time is not
        # retried with retries: 0: the client gets the 502/504 at once.
        app = self.origin("app-1", log=False)
        lb = self.lb(config([app.addr], retries=0, response_timeout="1s"))
        status, h, body = http(lb.port(), "GET", "/slow?delay=3000")
        self.assertEqual(status, 504, body)
        self.assertEqual(app.stats()["requests"], 1)


if __name__ == "__main__":
    harness.main()
