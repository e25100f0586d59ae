#!/usr/bin/env python3
"""Reusing pooled upstream connections the origin may be closing.

- an origin that closes idle keep-alive connections after 1 s, and a client
  sending a GET every 1.0 s (the worst timing: lb reuses a connection just as
  the origin closes it) for 60 s: zero errors;
- an origin that announces "Keep-Alive: timeout=1" and closes idle
  connections a little later (1.1 s), requests 1.1 s apart: zero errors;
- a POST (not idempotent) on a pooled connection the origin closed or is
  closing: 200 or 502, never a hang, and the origin sees it at most once.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import KeepAliveClient  # noqa: E402
import edge_util  # noqa: E402
from edge_util import RawOrigin  # noqa: E402


class EdgeReuse(harness.TestCase):
    def test_origin_idle_close_race_60s(self):
        app = self.origin("app-1", idle_close=1, log=True)
        lb = self.lb(edge_util.lb_config([app.addr]))
        errors = []
        done = 0
        reused = 0
        t_end = time.monotonic() + 60.0
        with KeepAliveClient(lb.port(), timeout=10) as c:
            while time.monotonic() < t_end:
                try:
                    status, h, body = c.request("GET", "/race/%d" % done)
                    if (status, body) != (200, b"Hello from app-1\n"):
                        errors.append((done, status, body[:200]))
                except Exception as e:  # noqa: BLE001 - any failure counts
                    errors.append((done, repr(e)))
                done += 1
                time.sleep(1.0)
            reused = c.connects
        print("\nidle-close race: %d requests, %d errors, %d client connections, "
              "%d upstream connections" % (done, len(errors), reused, app.stats()["connections"]),
              file=sys.stderr)
        self.assertEqual(errors, [], "%d of %d requests failed" % (len(errors), done))
        self.assertEqual(reused, 1, "lb closed the client connection")
        self.assertGreaterEqual(done, 50)
        targets = [e["target"] for e in app.log_entries() if e["target"].startswith("/race/")]
        self.assertEqual(len(targets), done, "the origin did not see each request exactly once")
        self.assertEqual(len(set(targets)), done)

    def test_keep_alive_timeout_hint(self):
        def respond(head, body):
            return (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n"
                    b"Keep-Alive: timeout=1\r\n\r\nhi\n")
        raw = RawOrigin(respond, idle_close=1.1)
        self.addCleanup(raw.stop)
        lb = self.lb(edge_util.lb_config([raw.addr]))
        errors = []
        with KeepAliveClient(lb.port(), timeout=10) as c:
            for i in range(8):
                try:
                    status, h, body = c.request("GET", "/hint/%d" % i)
                    if (status, body) != (200, b"hi\n"):
                        errors.append((i, status, body[:200]))
                    if h["Keep-Alive"] is not None:
                        errors.append((i, "origin's Keep-Alive forwarded", h["Keep-Alive"]))
                except Exception as e:  # noqa: BLE001
                    errors.append((i, repr(e)))
                time.sleep(1.1)
            connects = c.connects
        print("\nkeep-alive hint: %d upstream connections for 8 requests" % len(raw.conns),
              file=sys.stderr)
        self.assertEqual(errors, [])
        self.assertEqual(connects, 1, "lb closed the client connection")
        self.assertEqual(raw.request_count(), 8)

    def test_post_on_closed_pooled_connection(self):
        app = self.origin("app-1", idle_close=1, log=True)
        lb = self.lb(edge_util.lb_config([app.addr]))
        outcomes = []
        # 1.0 s: the origin closes as lb reuses; 1.5 s: it closed well before.
        for i, pause in enumerate((1.0, 1.5, 1.0, 1.5, 1.0, 0.98, 1.02)):
            status, h, body = harness.http(lb.port(), "GET", "/warm/%d" % i, timeout=10)
            self.assertEqual(status, 200)
            time.sleep(pause)
            t0 = time.monotonic()
            try:
                status, h, body = harness.http(lb.port(), "POST", "/echo?post=%d" % i,
                                               body=b"payload-%d" % i, timeout=10)
            except Exception as e:  # noqa: BLE001
                self.fail("POST %d after %.2f s: %r (after %.1f s)"
                          % (i, pause, e, time.monotonic() - t0))
            outcomes.append(status)
            self.assertIn(status, (200, 502), "POST %d: %d %r" % (i, status, body[:200]))
            if status == 200:
                self.assertEqual(body, b"payload-%d" % i)
        print("\nPOST after origin idle close: statuses %r" % outcomes, file=sys.stderr)
        time.sleep(0.3)
        for i in range(len(outcomes)):
            seen = [e for e in app.log_entries() if e["target"] == "/echo?post=%d" % i]
            self.assertLessEqual(len(seen), 1, "POST %d reached the origin %d times"
                                 % (i, len(seen)))
            if outcomes[i] == 200:
                self.assertEqual(len(seen), 1)


if __name__ == "__main__":
    harness.main()
