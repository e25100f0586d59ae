#!/usr/bin/env python3
"""Balancing as a user sees it: which origin (X-Origin) answers each request.

- round robin over 3 equal backends: strict rotation app-1, app-2, app-3, ...
  whether each request opens a new connection or all share one keep-alive
  connection, with 2 workers (the rotation is global across workers);
- weights 3:1: smooth weighted round robin gives exactly 3 of every 4;
- regions: regions of priority 0 share the traffic, a priority-1 region gets
  nothing while priority 0 is healthy.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import KeepAliveClient, http  # noqa: E402


def listener_yaml(workers=2):
    return f"""
workers: {workers}
access_log: {{ path: "off" }}
admin: {{ listen: 127.0.0.1:0 }}
listeners:
  - name: public
    listen: 127.0.0.1:0
    routes: [ {{ match: {{ path_prefix: / }}, pool: web }} ]
"""


class Balancing(harness.TestCase):
    def three_origins(self):
        return [self.origin("app-%d" % i, log=False) for i in (1, 2, 3)]

    def rr_lb(self, origins):
        backends = "\n".join("      - address: %s" % o.addr for o in origins)
        return self.lb(listener_yaml(workers=2) + f"""
pools:
  web:
    balance: round_robin
    backends:
{backends}
""")

    def assert_rotation(self, seen):
        self.assertEqual(len(seen), 30)
        expected = ["app-1", "app-2", "app-3"] * 10
        self.assertEqual(seen, expected, "answers were not in round-robin order")
        for name in ("app-1", "app-2", "app-3"):
            self.assertEqual(seen.count(name), 10, seen)

    def test_round_robin_new_connection_each(self):
        origins = self.three_origins()
        lb = self.rr_lb(origins)
        self.assertEqual(lb.workers, 2)
        seen = []
        for i in range(30):
            status, h, body = http(lb.port(), "GET", "/rr/%d" % i)
            self.assertEqual(status, 200, body)
            self.assertEqual(body, ("Hello from %s\n" % h["X-Origin"]).encode())
            seen.append(h["X-Origin"])
        self.assert_rotation(seen)
        # The origins agree with what the client saw.
        for o in origins:
            self.assertEqual(o.stats()["requests"], 10, o.name)

    def test_round_robin_one_keepalive_connection(self):
        origins = self.three_origins()
        lb = self.rr_lb(origins)
        seen = []
        with KeepAliveClient(lb.port()) as c:
            for i in range(30):
                status, h, body = c.request("GET", "/rr/%d" % i)
                self.assertEqual(status, 200, body)
                seen.append(h["X-Origin"])
            self.assertEqual(c.connects, 1, "lb closed the client keep-alive connection")
        self.assert_rotation(seen)
        for o in origins:
            self.assertEqual(o.stats()["requests"], 10, o.name)

    def test_weights_3_to_1(self):
        heavy = self.origin("heavy", log=False)
        light = self.origin("light", log=False)
        lb = self.lb(listener_yaml(workers=2) + f"""
pools:
  web:
    backends:
      - address: {heavy.addr}
        weight: 3
      - address: {light.addr}
        weight: 1
""")
        seen = []
        with KeepAliveClient(lb.port()) as c:
            for i in range(400):
                status, h, _ = c.request("GET", "/w")
                self.assertEqual(status, 200)
                seen.append(h["X-Origin"])
        self.assertEqual(seen.count("heavy"), 300)
        self.assertEqual(seen.count("light"), 100)
        # Smooth WRR is exact per period: every 4 consecutive answers (period
        # aligned, the rotation starting with the first request) hold 3 heavy, 1 light,
        # and the light one never comes twice in a row nor heavy 4 times in a row.
        for p in range(0, 400, 4):
            self.assertEqual(seen[p:p + 4].count("heavy"), 3, (p, seen[p:p + 4]))
        run = longest = 0
        for name in seen:
            run = run + 1 if name == "heavy" else 0
            longest = max(longest, run)
        self.assertLessEqual(longest, 3, "heavy answered %d times in a row" % longest)
        self.assertEqual(heavy.stats()["requests"], 300)
        self.assertEqual(light.stats()["requests"], 100)

    def test_regions_priority(self):
        east = self.origin("east-1", log=False)
        west = self.origin("west-1", log=False)
        standby = self.origin("standby-1", log=False)
        lb = self.lb(listener_yaml(workers=2) + f"""
pools:
  web:
    regions:
      - name: east
        priority: 0
        backends:
          - address: {east.addr}
      - name: west
        priority: 0
        backends:
          - address: {west.addr}
      - name: standby
        priority: 1
        backends:
          - address: {standby.addr}
""")
        counts = {"east-1": 0, "west-1": 0, "standby-1": 0}
        for i in range(60):
            status, h, _ = http(lb.port(), "GET", "/r/%d" % i)
            self.assertEqual(status, 200)
            counts[h["X-Origin"]] += 1
        self.assertEqual(counts["standby-1"], 0, counts)
        self.assertEqual(counts["east-1"] + counts["west-1"], 60, counts)
        # Equal weights: both priority-0 regions serve a fair share.
        self.assertGreaterEqual(counts["east-1"], 15, counts)
        self.assertGreaterEqual(counts["west-1"], 15, counts)
        self.assertEqual(standby.stats()["requests"], 0)


if __name__ == "__main__":
    harness.main()
