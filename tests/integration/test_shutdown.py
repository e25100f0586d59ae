#!/usr/bin/env python3
"""Signals: graceful SIGTERM, and SIGHUP not killing lb.

- SIGTERM with a slow request in flight: the request completes (200), new
  connections are refused shortly after the signal, POST /reload is refused
  (503) while draining, lb exits 0 soon after;
- an idle keep-alive client connection is closed by lb on SIGTERM, and does
  not hold the exit back until shutdown_timeout;
- SIGHUP: lb keeps running and serving (and says something about reload).
"""

import os
import signal
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import KeepAliveClient, RawConnection, http, wait_until  # noqa: E402


def config(origin, workers=2, shutdown_timeout="20s"):
    return f"""
workers: {workers}
shutdown_timeout: {shutdown_timeout}
access_log: {{ path: "off" }}
admin: {{ listen: 127.0.0.1:0 }}
listeners:
  - name: public
    listen: 127.0.0.1:0
    routes: [ {{ match: {{ path_prefix: / }}, pool: web }} ]
pools:
  web:
    backends: [ {{ address: {origin.addr} }} ]
"""


def connect_refused(port):
    """True if a TCP connect to port is refused (nothing listening)."""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=1)
    except ConnectionRefusedError:
        return True
    s.close()
    return False


class Shutdown(harness.TestCase):
    def test_sigterm_finishes_in_flight_request(self):
        app = self.origin("app-1")
        lb = self.lb(config(app))
        port = lb.port()
        result = {}

        def slow():
            # A keep-alive HTTP/1.1 connection: after its response, lb closes it.
            try:
                with RawConnection(port, timeout=15) as c:
                    c.send(b"GET /slow?delay=1500 HTTP/1.1\r\nHost: t\r\n\r\n")
                    result["r"] = c.read_response()
                    result["closed"] = c.closed_by_peer(3.0)
            except Exception as e:  # noqa: BLE001
                result["e"] = e
        t = threading.Thread(target=slow, daemon=True)
        t.start()
        # The origin has the request (it logs before sleeping): it is in flight in lb.
        self.assertTrue(wait_until(lambda: app.requests_seen("/slow") == 1, 5),
                        "the slow request never reached the origin")
        t_signal = time.monotonic()
        lb.signal(signal.SIGTERM)
        # New connections are refused shortly after the signal, while the slow
        # request is still running.
        self.assertTrue(wait_until(lambda: connect_refused(port), 1.0, 0.02),
                        "lb still accepts connections 1 s after SIGTERM")
        self.assertLess(time.monotonic() - t_signal, 1.4)
        # A reload while draining is refused: it would bind listeners no
        # draining worker takes up.
        status, _, body = lb.admin("POST", "/reload")
        self.assertEqual((status, body), (503, b"shutting down: reload refused\n"))
        t.join(10)
        self.assertFalse(t.is_alive(), "the in-flight request did not finish")
        self.assertNotIn("e", result, "in-flight request failed: %r" % result.get("e"))
        status, headers, body = result["r"]
        self.assertEqual((status, body), (200, b"Hello from app-1\n"))
        self.assertTrue(result["closed"], "lb kept the connection open after the last "
                                          "response while shutting down")
        code = lb.wait_exit(5)
        self.assertEqual(code, 0, "lb exit code %r" % code)
        self.assertLess(time.monotonic() - t_signal, 6)

    def test_sigterm_closes_idle_keepalive_connection(self):
        app = self.origin("app-1", log=False)
        lb = self.lb(config(app, shutdown_timeout="30s"))
        with RawConnection(lb.port()) as c:
            c.send(b"GET /one HTTP/1.1\r\nHost: t\r\n\r\n")
            status, _, body = c.read_response()
            self.assertEqual((status, body), (200, b"Hello from app-1\n"))
            t0 = time.monotonic()
            lb.signal(signal.SIGTERM)
            self.assertTrue(c.closed_by_peer(5.0),
                            "lb did not close an idle keep-alive connection on SIGTERM")
            self.assertEqual(bytes(c.buf), b"", "unexpected bytes before close")
        # The idle connection does not hold lb until shutdown_timeout (30 s).
        code = lb.wait_exit(5)
        self.assertEqual(code, 0, "lb exit code %r" % code)
        self.assertLess(time.monotonic() - t0, 6)

    def test_sighup_does_not_kill(self):
        app = self.origin("app-1", log=False)
        lb = self.lb(config(app))
        with KeepAliveClient(lb.port()) as c:
            status, _, body = c.request("GET", "/before")
            self.assertEqual((status, body), (200, b"Hello from app-1\n"))
            lb.signal(signal.SIGHUP)
            self.assertTrue(wait_until(lambda: "reload" in lb.stderr_text().lower(), 3),
                            "lb logged nothing about reload on SIGHUP:\n" + lb.stderr_text())
            time.sleep(0.3)
            self.assertTrue(lb.running(), "SIGHUP killed lb")
            # The existing connection and new ones keep being served.
            status, _, body = c.request("GET", "/after")
            self.assertEqual((status, body), (200, b"Hello from app-1\n"))
            self.assertEqual(c.connects, 1)
        status, _, body = http(lb.port(), "GET", "/new")
        self.assertEqual((status, body), (200, b"Hello from app-1\n"))
        self.assertTrue(lb.running())


if __name__ == "__main__":
    harness.main()
