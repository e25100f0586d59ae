#!/usr/bin/env python3
"""Keep-alive on both sides of lb.

- 200 requests on one client connection reuse pooled upstream connections;
- HTTP/1.0 without keep-alive: answered, then closed; with
  "Connection: keep-alive": kept open and reusable;
- "Connection: close" from an HTTP/1.1 client: echoed, then closed;
- an origin that closes idle connections after 1 s while a client sends a
  request every 1.5 s: no request fails (lb retries on a fresh connection);
- /status `pooled_connections` and lb_backend_pooled_connections count the
  idle upstream connections, and fall to 0 after the pool's timeouts.idle.
"""

import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import KeepAliveClient, RawConnection, http  # noqa: E402


def config(origin, workers=1, pool_extra=""):
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
{pool_extra}    backends: [ {{ address: {origin.addr} }} ]
"""


def header(headers, name):
    """Value of a header in a RawConnection header list (None if absent)."""
    vals = [v for k, v in headers if k.lower() == name.lower()]
    return ", ".join(vals) if vals else None


def tokens(value):
    return {t.strip().lower() for t in (value or "").split(",") if t.strip()}


class KeepAlive(harness.TestCase):
    def test_upstream_connections_are_reused(self):
        app = self.origin("app-1", log=False)
        lb = self.lb(config(app, workers=1))
        with KeepAliveClient(lb.port()) as c:
            for i in range(200):
                status, h, body = c.request("GET", "/ka/%d" % i)
                self.assertEqual((status, body), (200, b"Hello from app-1\n"), i)
            self.assertEqual(c.connects, 1, "lb closed the client connection")
        stats = app.stats()
        self.assertEqual(stats["requests"], 200)
        self.assertLessEqual(stats["connections"], 2,
                             "lb opened %d upstream connections for 200 requests" %
                             stats["connections"])

    def test_pooled_connections_reported(self):
        app = self.origin("app-1", log=False)
        lb = self.lb(config(app, workers=2, pool_extra="    timeouts: { idle: 1s }\n"))

        def pooled():
            for b in lb.status_json()["pools"][0]["backends"]:
                if b["address"] == app.addr:
                    return b["pooled_connections"]
            raise AssertionError("no backend %s in /status" % app.addr)

        self.assertEqual(pooled(), 0)
        # Three requests at once: three upstream connections, idle afterwards.
        results = []

        def one(i):
            status, _, _ = http(lb.port(), "GET", "/pooled/%d?delay=300" % i)
            results.append(status)
        threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        self.assertEqual(results, [200, 200, 200])
        self.assertEqual(app.stats()["connections"], 3)
        self.assertTrue(harness.wait_until(lambda: pooled() == 3, 3), "pooled: %d" % pooled())
        self.assertEqual(lb.metric("lb_backend_pooled_connections", pool="web", backend=app.addr), 3)
        # A request takes one and gives it back (or, on a worker that has
        # none, opens one more): every connection lb opened is pooled again.
        status, _, _ = http(lb.port(), "GET", "/pooled/again")
        self.assertEqual(status, 200)
        self.assertTrue(harness.wait_until(lambda: pooled() == app.stats()["connections"], 3),
                        "pooled %d, opened %d" % (pooled(), app.stats()["connections"]))
        # timeouts.idle: 1s closes them (checked about once a second).
        self.assertTrue(harness.wait_until(lambda: pooled() == 0, 5),
                        "still %d pooled after timeouts.idle" % pooled())
        self.assertEqual(lb.metric("lb_backend_pooled_connections", pool="web", backend=app.addr), 0)

    def test_http10_without_keepalive_closes(self):
        app = self.origin("app-1", log=False)
        lb = self.lb(config(app))
        with RawConnection(lb.port()) as c:
            c.send(b"GET /one HTTP/1.0\r\nHost: t\r\n\r\n")
            status, headers, body = c.read_response()
            self.assertEqual((status, body), (200, b"Hello from app-1\n"))
            self.assertNotIn("keep-alive", tokens(header(headers, "Connection")))
            self.assertTrue(c.closed_by_peer(3.0),
                            "lb kept an HTTP/1.0 connection without keep-alive open")

    def test_http10_with_keepalive_stays_open(self):
        app = self.origin("app-1", log=False)
        lb = self.lb(config(app))
        with RawConnection(lb.port()) as c:
            for i in range(3):
                c.send(b"GET /ka10/%d HTTP/1.0\r\nHost: t\r\nConnection: keep-alive\r\n\r\n" % i)
                status, headers, body = c.read_response()
                self.assertEqual((status, body), (200, b"Hello from app-1\n"), i)
                # An HTTP/1.0 client only keeps the connection when told so.
                self.assertIn("keep-alive", tokens(header(headers, "Connection")), headers)
                self.assertIsNotNone(header(headers, "Content-Length"), headers)
            self.assertFalse(c.closed_by_peer(0.5), "lb closed a keep-alive HTTP/1.0 connection")

    def test_http11_connection_close(self):
        app = self.origin("app-1", log=False)
        lb = self.lb(config(app))
        with RawConnection(lb.port()) as c:
            c.send(b"GET /first HTTP/1.1\r\nHost: t\r\n\r\n")
            status, headers, body = c.read_response()
            self.assertEqual(status, 200)
            self.assertNotIn("close", tokens(header(headers, "Connection")))
            c.send(b"GET /last HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            status, headers, body = c.read_response()
            self.assertEqual((status, body), (200, b"Hello from app-1\n"))
            self.assertIn("close", tokens(header(headers, "Connection")), headers)
            self.assertTrue(c.closed_by_peer(3.0), "lb did not close after Connection: close")

    def test_origin_closing_idle_connections_is_invisible(self):
        app = self.origin("app-1", idle_close=1, log=False)
        lb = self.lb(config(app, workers=1))
        errors = []
        done = 0
        with KeepAliveClient(lb.port()) as c:
            deadline = time.monotonic() + 8.0
            while time.monotonic() < deadline:
                try:
                    status, h, body = c.request("GET", "/idle/%d" % done)
                    if (status, body) != (200, b"Hello from app-1\n"):
                        errors.append((status, body[:200]))
                except Exception as e:  # noqa: BLE001 - any failure is an error here
                    errors.append(repr(e))
                done += 1
                time.sleep(1.5)
        # Also through fresh client connections (the upstream one is pooled across them).
        for i in range(2):
            time.sleep(1.5)
            status, h, body = http(lb.port(), "GET", "/idle-new/%d" % i)
            if (status, body) != (200, b"Hello from app-1\n"):
                errors.append((status, body[:200]))
            done += 1
        self.assertEqual(errors, [], "%d of %d requests failed" % (len(errors), done))
        self.assertGreaterEqual(done, 7)
        stats = app.stats()
        self.assertEqual(stats["requests"], done)
        # The scenario really happened: the origin closed idle connections, so lb
        # had to open new ones.
        self.assertGreaterEqual(stats["connections"], done - 1)


if __name__ == "__main__":
    harness.main()
