#!/usr/bin/env python3
"""The admin API as an operator uses it (SPEC "Admin API").

- drain a backend while a slow request to it is in flight: that request
  finishes 200, new requests go only to the other backend, /status and
  /metrics show it drained and out of rotation; enable brings traffic back;
- PUT weight 3 on one of two round-robin backends: the next 400 requests
  split 300/100;
- IPv6 backends addressed as [::1]:PORT, raw or percent-encoded;
- unknown pool or backend -> 404 naming it; bad weight -> 400; wrong method
  -> 405 with Allow; GET /reload -> 405; oversized body -> 413;
- /healthz: 200 while serving, 503 once SIGTERM started draining (while a
  slow request keeps lb alive), then lb exits 0.
"""

import json
import os
import signal
import socket
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import KeepAliveClient, http, wait_until  # noqa: E402


def config(*origins, workers=2):
    backends = "\n".join('      - address: "%s"' % o.addr for o in origins)
    return f"""
workers: {workers}
shutdown_timeout: 20s
access_log: {{ path: "off" }}
admin: {{ listen: 127.0.0.1:0 }}
listeners:
  - name: public
    listen: 127.0.0.1:0
    routes: [ {{ match: {{ path_prefix: / }}, pool: web }} ]
pools:
  web:
    balance: round_robin
    backends:
{backends}
"""


def backend_status(lb, address, pool="web"):
    for p in lb.status_json()["pools"]:
        if p["name"] == pool:
            for b in p["backends"]:
                if b["address"] == address:
                    return b
    raise AssertionError("no backend %s in /status" % address)


def answered_by(port, n, path="/x"):
    """Sends n requests on fresh connections; returns the X-Origin of each."""
    seen = []
    for i in range(n):
        status, h, _ = http(port, "GET", "%s/%d" % (path, i))
        assert status == 200, status
        seen.append(h["X-Origin"])
    return seen


def ipv6_loopback():
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.bind(("::1", 0))
        s.close()
        return True
    except OSError:
        return False


class Admin(harness.TestCase):
    def test_drain_lets_in_flight_finish_and_enable_brings_traffic_back(self):
        a, b = self.origin("app-a"), self.origin("app-b")
        lb = self.lb(config(a, b))
        port = lb.port()
        result = {}
        slow = threading.Thread(target=lambda: result.update(
            r=http(port, "GET", "/slow?delay=1500", timeout=15)), daemon=True)
        slow.start()
        self.assertTrue(wait_until(lambda: a.requests_seen("/slow") + b.requests_seen("/slow") == 1,
                                   5), "the slow request never reached an origin")
        victim, other = (a, b) if a.requests_seen("/slow") else (b, a)

        status, _, body = lb.admin("POST", "/pools/web/backends/%s/drain" % victim.addr)
        self.assertEqual(status, 200, body)
        answer = json.loads(body)
        self.assertEqual((answer["backend"], answer["drained"], answer["in_rotation"]),
                         (victim.addr, True, False))
        self.assertTrue(slow.is_alive(), "the slow request finished before the drain: no test")

        seen = answered_by(port, 20)
        self.assertEqual(seen, [other.name] * 20, "a drained backend got new requests")
        st = backend_status(lb, victim.addr)
        self.assertTrue(st["drained"])
        self.assertFalse(st["in_rotation"])
        self.assertTrue(backend_status(lb, other.addr)["in_rotation"])
        self.assertEqual(lb.metric("lb_backend_healthy", pool="web", backend=victim.addr), 0)

        slow.join(10)
        self.assertFalse(slow.is_alive())
        status, h, _ = result["r"]
        self.assertEqual(status, 200, "the in-flight request to the drained backend failed")
        self.assertEqual(h["X-Origin"], victim.name)

        status, _, body = lb.admin("POST", "/pools/web/backends/%s/enable" % victim.addr)
        self.assertEqual(status, 200, body)
        self.assertEqual(json.loads(body)["drained"], False)
        seen = answered_by(port, 20)
        self.assertEqual(seen.count(victim.name), 10, seen)
        self.assertEqual(seen.count(other.name), 10, seen)
        st = backend_status(lb, victim.addr)
        self.assertFalse(st["drained"])
        self.assertTrue(st["in_rotation"])
        # Draining twice or enabling an enabled backend is fine (idempotent).
        self.assertEqual(lb.admin("POST", "/pools/web/backends/%s/enable" % victim.addr)[0], 200)

    def test_weight_changes_the_split(self):
        a, b = self.origin("app-a", log=False), self.origin("app-b", log=False)
        lb = self.lb(config(a, b))
        status, _, body = lb.admin("PUT", "/pools/web/backends/%s/weight" % a.addr, body="3\n")
        self.assertEqual(status, 200, body)
        self.assertEqual(json.loads(body)["weight"], 3)
        self.assertEqual(backend_status(lb, a.addr)["weight"], 3)
        self.assertEqual(lb.metric("lb_backend_weight", pool="web", backend=a.addr), 3)
        seen = []
        with KeepAliveClient(lb.port()) as c:
            for i in range(400):
                status, h, _ = c.request("GET", "/w/%d" % i)
                self.assertEqual(status, 200)
                seen.append(h["X-Origin"])
        self.assertAlmostEqual(seen.count("app-a"), 300, delta=4)
        self.assertAlmostEqual(seen.count("app-b"), 100, delta=4)

    def test_ipv6_backend_in_the_path(self):
        if not ipv6_loopback():
            self.skipTest("no IPv6 loopback here")
        v4, v6 = self.origin("app-v4", log=False), self.origin("app-v6", listen="[::1]:0", log=False)
        self.assertTrue(v6.addr.startswith("[::1]:"), v6.addr)
        lb = self.lb(config(v4, v6))
        status, _, body = lb.admin("POST", "/pools/web/backends/%s/drain" % v6.addr)
        self.assertEqual(status, 200, body)
        self.assertEqual(json.loads(body)["backend"], v6.addr)
        self.assertTrue(backend_status(lb, v6.addr)["drained"])
        self.assertEqual(answered_by(lb.port(), 6), ["app-v4"] * 6)
        encoded = v6.addr.replace("[", "%5B").replace("]", "%5D").replace(":", "%3A")
        status, _, body = lb.admin("POST", "/pools/web/backends/%s/enable" % encoded)
        self.assertEqual(status, 200, body)
        self.assertFalse(backend_status(lb, v6.addr)["drained"])
        self.assertEqual(sorted(set(answered_by(lb.port(), 6))), ["app-v4", "app-v6"])

    def test_errors_say_what_is_wrong(self):
        a = self.origin("app-a", log=False)
        lb = self.lb(config(a))
        path = "/pools/web/backends/%s" % a.addr

        status, _, body = lb.admin("POST", "/pools/nope/backends/%s/drain" % a.addr)
        self.assertEqual(status, 404)
        self.assertIn(b"no pool named 'nope'", body)
        status, _, body = lb.admin("POST", "/pools/web/backends/10.9.8.7:6/drain")
        self.assertEqual(status, 404)
        self.assertIn(b"no backend '10.9.8.7:6'", body)
        self.assertIn(a.addr.encode(), body, "the 404 should list the pool's backends")
        status, _, body = lb.admin("POST", "%s/explode" % path)
        self.assertEqual(status, 404)
        self.assertIn(b"drain, enable or weight", body)

        for bad in ("abc", "-1", "1001", "", "3.5", "1 2", "99999999999"):
            status, _, body = lb.admin("PUT", "%s/weight" % path, body=bad)
            self.assertEqual(status, 400, "weight %r: %r" % (bad, body))
            self.assertIn(b"integer 0..1000", body)
        self.assertEqual(backend_status(lb, a.addr)["weight"], 1, "a bad weight changed it")
        status, _, _ = lb.admin("PUT", "%s/weight" % path, body="1" * 2048)
        self.assertEqual(status, 413)

        status, h, _ = lb.admin("GET", "%s/drain" % path)
        self.assertEqual((status, h["Allow"]), (405, "POST"))
        status, h, _ = lb.admin("POST", "%s/weight" % path, body="2")
        self.assertEqual((status, h["Allow"]), (405, "PUT"))
        status, h, _ = lb.admin("POST", "/metrics")
        self.assertEqual((status, h["Allow"]), (405, "GET, HEAD"))

        # A page elsewhere cannot drain through an operator's browser (CSRF).
        status, _, body = lb.admin("POST", "%s/drain" % path,
                                   headers={"Origin": "http://evil.example"})
        self.assertEqual(status, 403, body)
        self.assertIn(b"cross-origin", body)
        status, _, body = lb.admin("GET", "/reload")
        self.assertEqual(status, 405)
        status, _, body = lb.admin("GET", "/no/such/thing")
        self.assertEqual(status, 404)
        self.assertIn(b"no such admin endpoint: /no/such/thing", body)
        status, _, body = lb.admin("GET", "/pools/web/backends/%ZZ/drain")
        self.assertEqual(status, 400)

        # Nothing of the above touched the backend.
        st = backend_status(lb, a.addr)
        self.assertEqual((st["drained"], st["weight"], st["in_rotation"]), (False, 1, True))
        status, h, body = lb.admin("GET", "/")
        self.assertEqual(status, 200)
        self.assertTrue(h["Content-Type"].startswith("text/html"))
        self.assertIn(b"/status", body)

    def test_healthz_turns_503_while_shutting_down(self):
        a = self.origin("app-a")
        lb = self.lb(config(a))
        self.assertEqual(lb.admin("GET", "/healthz")[::2], (200, b"ok\n"))
        status, h, body = lb.admin("HEAD", "/healthz")
        self.assertEqual((status, body), (200, b""))
        self.assertFalse(lb.status_json()["draining"])

        result = {}
        slow = threading.Thread(target=lambda: result.update(
            r=http(lb.port(), "GET", "/slow?delay=2000", timeout=15)), daemon=True)
        slow.start()
        self.assertTrue(wait_until(lambda: a.requests_seen("/slow") == 1, 5))
        lb.signal(signal.SIGTERM)
        self.assertTrue(wait_until(lambda: lb.admin("GET", "/healthz", timeout=2)[0] == 503, 1.5),
                        "/healthz still 200 after SIGTERM")
        self.assertEqual(lb.admin("GET", "/healthz")[2], b"shutting down\n")
        self.assertTrue(lb.status_json()["draining"])
        self.assertTrue(slow.is_alive(), "the slow request ended too early for this test")
        slow.join(10)
        self.assertEqual(result["r"][0], 200)
        self.assertEqual(lb.wait_exit(10), 0)


if __name__ == "__main__":
    harness.main()
