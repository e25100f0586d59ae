#!/usr/bin/env python3
"""Region failover as a client sees it (SPEC: pools' "regions" and
"overprovisioning", "Balancing and failover semantics" 1).

Which origin answered is its X-Origin header; origins are named after their
region ("aws-N" priority 0, "rs-N" priority 1), so every answer counts for a
region. With workers: 1 and sequential requests the smooth weighted round
robin makes the shares exact per period; the assertions keep a +-5% tolerance
and the exact figures are printed.

1. P0 "aws" (4 backends) and P1 "rackspace" (2), overprovisioning 1.4, fast
   active checks: all healthy -> rackspace gets 0 of 400; 2 of 4 aws fail
   /healthz -> 70% / 30% over 1,000 requests; all aws fail -> rackspace 100%;
   aws recovers -> aws 100%. A paced background load (~200 GETs/s) sees no
   error across each transition; /status regions[].traffic_share and
   lb_region_traffic_share agree; every health transition is followed by a
   "traffic share now ..." line, and those lines follow 100 -> 70 -> 0 -> 100.
2. kill -9 of every aws backend under 4 keep-alive clients (~100 GETs/s each,
   6 s, the kill 1 s in): no failed request; the refused backends are ejected
   at once ("ejected ... connection refused") and rackspace takes the traffic
   before the active check (interval 2s, unhealthy_threshold 2) notices.
3. Two priority-0 regions with weights 3:1 -> 75% / 25% over 1,000 requests.
4. overprovisioning 1.0: one of 2 aws backends unhealthy -> 50% / 50%.
"""

import os
import re
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import KeepAliveClient, wait_until  # noqa: E402

FAST_CHECK = ("{ path: /healthz, interval: 200ms, timeout: 150ms, "
              "healthy_threshold: 1, unhealthy_threshold: 2 }")
SLOW_CHECK = ("{ path: /healthz, interval: 2s, timeout: 1s, "
              "healthy_threshold: 1, unhealthy_threshold: 2 }")

SHARE_RE = re.compile(r"pool web: traffic share now (.*) \((.*)\)\s*$")


def say(msg):
    sys.stderr.write("    [regions] %s\n" % msg)
    sys.stderr.flush()


def config(regions, health_check=None, overprovisioning=None, workers=1):
    """regions: [(name, priority, weight, [addresses])]."""
    extra = ""
    if health_check:
        extra += "    health_check: %s\n" % health_check
    if overprovisioning is not None:
        extra += "    overprovisioning: %s\n" % overprovisioning
    parts = []
    for name, priority, weight, addrs in regions:
        backends = "\n".join('          - address: "%s"' % a for a in addrs)
        parts.append(f"""      - name: {name}
        priority: {priority}
        weight: {weight}
        backends:
{backends}""")
    regions_yaml = "\n".join(parts)
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
    balance: round_robin
{extra}    regions:
{regions_yaml}
"""


def region_of(origin_name):
    return {"aws": "aws", "rs": "rackspace", "east": "us-east",
            "west": "us-west"}.get(origin_name.split("-")[0], origin_name)


def pool_status(lb, pool="web"):
    for p in lb.status_json()["pools"]:
        if p["name"] == pool:
            return p
    raise AssertionError("no pool %s in /status" % pool)


def status_shares(lb):
    return {r["name"]: r["traffic_share"] for r in pool_status(lb)["regions"]}


def metric_shares(lb, names):
    text = lb.metrics_text()
    return {n: harness.metric_value(text, "lb_region_traffic_share", pool="web", region=n)
            for n in names}


def all_healthy(lb, origins):
    by_addr = {b["address"]: b for b in pool_status(lb)["backends"]}
    return all(by_addr[o.addr]["healthy"] for o in origins)


def log_lines(text, needle):
    return [l for l in text.splitlines() if needle in l]


def parse_shares(line):
    """'pool web: traffic share now aws 70.0%, rackspace 30.0% (why)' ->
    ({"aws": 70.0, "rackspace": 30.0}, why), or None."""
    m = SHARE_RE.search(line)
    if not m:
        return None
    shares = {}
    for part in m.group(1).split(", "):
        name, _, pct = part.rpartition(" ")
        shares[name] = float(pct.rstrip("%"))
    return shares, m.group(2)


def measure(port, n, path="/m"):
    """n sequential GETs on one keep-alive connection -> ({region: count}, [origin names]).
    Every answer must be a 200 from an origin."""
    counts, names = {}, []
    with KeepAliveClient(port, timeout=10) as c:
        for i in range(n):
            status, h, body = c.request("GET", "%s/%d" % (path, i))
            name = h["X-Origin"]
            if status != 200 or body != ("Hello from %s\n" % name).encode():
                raise AssertionError("GET %s/%d: %d from %s: %r" % (path, i, status, name, body[:200]))
            names.append(name)
            counts[region_of(name)] = counts.get(region_of(name), 0) + 1
    return counts, names


class PacedLoad(threading.Thread):
    """Sequential GETs on one keep-alive connection at about `rate` per second
    (no catch-up bursts). results: (t_start, t_end, status or None, X-Origin or
    error). A non-200 answer or an exception is a client-visible error."""

    def __init__(self, port, rate, path="/load", duration=None):
        super().__init__(daemon=True)
        self.port, self.rate, self.path, self.duration = port, rate, path, duration
        self.results = []
        self.errors = []
        self.halt = threading.Event()

    def run(self):
        client = KeepAliveClient(self.port, timeout=10)
        period = 1.0 / self.rate
        start = next_t = time.monotonic()
        i = 0
        while not self.halt.is_set():
            t = time.monotonic()
            if self.duration is not None and t - start >= self.duration:
                break
            i += 1
            try:
                status, h, body = client.request("GET", "%s/%d" % (self.path, i))
                name = h["X-Origin"]
                self.results.append((t, time.monotonic(), status, name))
                if status != 200 or body != ("Hello from %s\n" % name).encode():
                    self.errors.append("GET %s/%d: %d from %s %r"
                                       % (self.path, i, status, name, body[:200]))
            except Exception as e:  # noqa: BLE001 - every failure is client-visible
                self.results.append((t, time.monotonic(), None, repr(e)))
                self.errors.append("GET %s/%d: %r" % (self.path, i, e))
                client.close()
                client = KeepAliveClient(self.port, timeout=10)
            next_t += period
            now = time.monotonic()
            if next_t > now:
                time.sleep(next_t - now)
            elif now - next_t > 0.1:
                next_t = now  # fell behind: pace from here, no burst
        client.close()

    def stop(self):
        self.halt.set()
        self.join(15)

    def by_region(self, t_from=None, t_to=None):
        out = {}
        for t, _, status, name in self.results:
            if status != 200 or (t_from is not None and t < t_from) or \
                    (t_to is not None and t >= t_to):
                continue
            out[region_of(name)] = out.get(region_of(name), 0) + 1
        return out


class LogWatcher(threading.Thread):
    """Polls lb's stderr and records the monotonic time each needle was first seen."""

    def __init__(self, lb, needles):
        super().__init__(daemon=True)
        self.lb, self.needles = lb, list(needles)
        self.seen = {}
        self.halt = threading.Event()

    def run(self):
        while not self.halt.is_set():
            text = self.lb.stderr_text()
            now = time.monotonic()
            for n in self.needles:
                if n not in self.seen and n in text:
                    self.seen[n] = now
            time.sleep(0.01)

    def stop(self):
        self.halt.set()
        self.join(5)


class Regions(harness.TestCase):
    def two_tier(self, n_aws=4, n_rs=2, **kw):
        aws = [self.origin("aws-%d" % i, log=False) for i in range(1, n_aws + 1)]
        rs = [self.origin("rs-%d" % i, log=False) for i in range(1, n_rs + 1)]
        lb = self.lb(config([("aws", 0, 100, [o.addr for o in aws]),
                             ("rackspace", 1, 100, [o.addr for o in rs])], **kw))
        self.assertTrue(wait_until(lambda: all_healthy(lb, aws + rs), 8),
                        "the backends never all became healthy: %s" % pool_status(lb))
        self.assertTrue(wait_until(lambda: status_shares(lb)["aws"] == 1.0, 3),
                        status_shares(lb))
        return aws, rs, lb

    def assert_shares(self, lb, want, label):
        st = status_shares(lb)
        mt = metric_shares(lb, want.keys())
        say("%s: /status traffic_share %s, lb_region_traffic_share %s" % (label, st, mt))
        for name, w in want.items():
            self.assertAlmostEqual(st[name], w, delta=0.005, msg="%s /status %s" % (label, st))
            self.assertAlmostEqual(mt[name], w, delta=0.005, msg="%s metrics %s" % (label, mt))

    def transition(self, lb, port, act, done, label, timeout=5.0):
        """Runs act() under a paced background load (~200 GETs/s) until done()
        holds (+0.5 s); asserts the load saw no error."""
        load = PacedLoad(port, rate=200, path="/%s" % label)
        load.start()
        self.addCleanup(load.stop)
        time.sleep(0.3)
        t0 = time.monotonic()
        act()
        ok = wait_until(done, timeout, interval=0.02)
        took = time.monotonic() - t0
        time.sleep(0.5)
        load.stop()
        secs = load.results[-1][1] - load.results[0][0] if load.results else 0
        say("%s: transition took %.2f s; background load %d GETs in %.1f s (%.0f/s), "
            "%d errors, by region %s" % (label, took, len(load.results), secs,
                                         len(load.results) / max(secs, 1e-9),
                                         len(load.errors), load.by_region()))
        self.assertTrue(ok, "%s: transition not reached in %.1f s: %s"
                        % (label, timeout, status_shares(lb)))
        self.assertEqual(load.errors, [], "%s: %d client-visible errors, first: %s"
                         % (label, len(load.errors), load.errors[:5]))
        self.assertGreater(len(load.results), 100, "%s: the background load hardly ran" % label)

    # ---- 1 + 5 --------------------------------------------------------------
    def test_priority_failover_with_overprovisioning(self):
        aws, rs, lb = self.two_tier(health_check=FAST_CHECK, overprovisioning=1.4)
        port = lb.port()
        baseline = len(lb.stderr_text())

        # All healthy: priority 1 idle.
        counts, _ = measure(port, 400, "/all-healthy")
        say("all healthy, 400 GETs: %s" % counts)
        self.assertEqual(counts.get("rackspace", 0), 0, counts)
        self.assertEqual(counts.get("aws", 0), 400, counts)
        self.assert_shares(lb, {"aws": 1.0, "rackspace": 0.0}, "all healthy")

        # 2 of 4 aws fail: health 50% x 1.4 = 70% stays, 30% spills over.
        def half_down():
            return abs(status_shares(lb)["aws"] - 0.7) < 1e-6
        self.transition(lb, port, lambda: [o.set_healthy(False) for o in aws[:2]], half_down,
                        "half-down")
        counts, names = measure(port, 1000, "/half")
        say("2 of 4 aws unhealthy, 1000 GETs: %s (by origin %s)"
            % (counts, {n: names.count(n) for n in sorted(set(names))}))
        self.assertAlmostEqual(counts.get("aws", 0), 700, delta=50, msg=counts)
        self.assertAlmostEqual(counts.get("rackspace", 0), 300, delta=50, msg=counts)
        self.assertFalse({"aws-1", "aws-2"} & set(names), "unhealthy aws backends served")
        self.assert_shares(lb, {"aws": 0.7, "rackspace": 0.3}, "2 of 4 aws unhealthy")

        # All aws fail: rackspace takes everything.
        def all_down():
            return status_shares(lb)["rackspace"] == 1.0
        self.transition(lb, port, lambda: [o.set_healthy(False) for o in aws[2:]], all_down,
                        "all-down")
        counts, _ = measure(port, 400, "/down")
        say("all aws unhealthy, 400 GETs: %s" % counts)
        self.assertEqual(counts, {"rackspace": 400})
        self.assert_shares(lb, {"aws": 0.0, "rackspace": 1.0}, "all aws unhealthy")

        # aws recovers: back to 100%.
        def recovered():
            return all_healthy(lb, aws) and status_shares(lb)["aws"] == 1.0
        self.transition(lb, port, lambda: [o.set_healthy(True) for o in aws], recovered,
                        "recovered")
        counts, _ = measure(port, 400, "/back")
        say("aws recovered, 400 GETs: %s" % counts)
        self.assertEqual(counts, {"aws": 400})
        self.assert_shares(lb, {"aws": 1.0, "rackspace": 0.0}, "aws recovered")

        # (5) Every change is logged: one "traffic share now" line per health
        # transition, each with the shares overprovisioning 1.4 gives for 4..0
        # healthy aws backends, in the order 100 -> 70 -> 0 -> 100.
        text = lb.stderr_text()[baseline:]
        share_lines = log_lines(text, "traffic share now")
        transitions = [l for l in text.splitlines() if re.search(r"backend \S+ is now ", l)]
        say("after startup: %d health transitions, %d traffic share lines:\n        %s"
            % (len(transitions), len(share_lines), "\n        ".join(share_lines)))
        self.assertEqual(len(share_lines), len(transitions),
                         "not one 'traffic share' line per health transition:\n" + text)
        allowed = [(100.0, 0.0), (70.0, 30.0), (35.0, 65.0), (0.0, 100.0)]
        states = []
        for l in share_lines:
            parsed = parse_shares(l)
            self.assertIsNotNone(parsed, "unparsable line %r" % l)
            s = (parsed[0].get("aws"), parsed[0].get("rackspace"))
            self.assertIn(s, allowed, "unexpected shares in %r" % l)
            if not states or states[-1] != s:
                states.append(s)
        it = iter(states)
        for want in [(70.0, 30.0), (0.0, 100.0), (100.0, 0.0)]:
            self.assertTrue(any(s == want for s in it),
                            "no %s line in order; share states logged: %s" % (want, states))

    # ---- 2 ------------------------------------------------------------------
    def test_whole_region_killed_under_load(self):
        aws, rs, lb = self.two_tier(health_check=SLOW_CHECK, overprovisioning=1.4, workers=2)
        port = lb.port()
        needles = ["backend %s ejected" % o.addr for o in aws] + \
                  ["backend %s is now unhealthy" % o.addr for o in aws] + \
                  ["traffic share now aws 0.0%, rackspace 100.0%"]
        watcher = LogWatcher(lb, needles)
        watcher.start()
        self.addCleanup(watcher.stop)

        loads = [PacedLoad(port, rate=100, path="/kill-%d" % i, duration=6.0) for i in range(4)]
        t_start = time.monotonic()
        for l in loads:
            l.start()
        for l in loads:
            self.addCleanup(l.stop)
        time.sleep(1.0)
        t_kill = time.monotonic()
        for o in aws:
            o.kill()
        t_killed = time.monotonic()
        # A second into the outage no active check can have noticed yet (2
        # failures needed, 2 s apart): the ejections alone moved the traffic.
        time.sleep(max(0.0, t_kill + 1.0 - time.monotonic()))
        mid_text = lb.stderr_text()
        mid_after = {}
        for l in loads:
            for k, v in l.by_region(t_from=t_killed).items():
                mid_after[k] = mid_after.get(k, 0) + v
        for l in loads:
            l.join(20)
        self.assertFalse(any(l.is_alive() for l in loads), "the load hung")
        t_end = time.monotonic()

        # Right after: sequential GETs, all answered by rackspace.
        after, _ = measure(port, 100, "/right-after")
        watcher.stop()

        results = [r for l in loads for r in l.results]
        errors = [e for l in loads for e in l.errors]
        before = {}
        post = {}
        during = {}
        for t, _, status, name in results:
            if status != 200:
                continue
            bucket = before if t < t_kill else (post if t >= t_killed else during)
            bucket[region_of(name)] = bucket.get(region_of(name), 0) + 1
        post_lat = [t2 - t for t, t2, status, _ in results if t >= t_kill]
        first_rs = min((t2 for t, t2, status, name in results
                        if t >= t_kill and status == 200 and region_of(name) == "rackspace"),
                       default=None)
        unhealthy_seen = [watcher.seen[n] for n in needles if "is now unhealthy" in n
                          and n in watcher.seen]
        first_unhealthy = min(unhealthy_seen, default=None)
        say("load: %d GETs from 4 clients in %.1f s (%.0f/s), %d failed"
            % (len(results), t_end - t_start, len(results) / (t_end - t_start), len(errors)))
        say("before the kill %s; while killing (%.0f ms) %s; after the kill %s; "
            "right after (100 sequential) %s"
            % (before, (t_killed - t_kill) * 1000, during, post, after))
        say("first rackspace answer %.0f ms after the kill; after-kill latency max %.0f ms; "
            "in the first second after the kill %s"
            % (((first_rs - t_kill) * 1000) if first_rs else -1,
               max(post_lat, default=0) * 1000, mid_after))
        say("ejections seen %s ms after the kill; first 'now unhealthy' %s"
            % (sorted(round((watcher.seen[n] - t_kill) * 1000) for n in needles[:4]
                      if n in watcher.seen),
               "%.2f s after the kill" % (first_unhealthy - t_kill) if first_unhealthy
               else "not seen"))
        say("lb said: %s" % [l[4:] for l in mid_text.splitlines()
                             if "ejected" in l or "traffic share" in l or "is now" in l][-12:])

        self.assertGreater(before.get("aws", 0), 100, before)
        self.assertEqual(before.get("rackspace", 0), 0, before)
        self.assertEqual(set(post), {"rackspace"}, post)
        self.assertGreater(post.get("rackspace", 0), 500, post)
        self.assertEqual(after, {"rackspace": 100})
        # Refused backends were ejected at once, before any active check noticed.
        for o in aws:
            lines = log_lines(mid_text, "backend %s ejected" % o.addr)
            self.assertTrue(lines, "%s not ejected within 1 s of the kill:\n%s"
                            % (o.addr, mid_text[-3000:]))
            self.assertIn("connection refused", lines[0])
        self.assertEqual(log_lines(mid_text, "is now unhealthy"), [],
                         "an active check noticed within 1 s (interval 2s, threshold 2)")
        self.assertIn("traffic share now aws 0.0%, rackspace 100.0%", mid_text)
        self.assertGreater(mid_after.get("rackspace", 0), 100, mid_after)
        self.assertIsNotNone(first_rs)
        self.assertLess(first_rs - t_kill, 0.5)
        if first_unhealthy is not None:
            self.assertLess(first_rs, first_unhealthy)
        self.assertEqual(status_shares(lb)["rackspace"], 1.0)
        # Last, so that the checks above still tell whether the failover itself worked.
        self.assertEqual(errors, [], "%d failed requests, first: %s; lb said:\n%s"
                         % (len(errors), errors[:5], "\n".join(
                             l for l in mid_text.splitlines()
                             if "refused" in l or "traffic share" in l)))

    # ---- 3 ------------------------------------------------------------------
    def test_equal_priority_regions_share_by_weight(self):
        east = [self.origin("east-%d" % i, log=False) for i in (1, 2)]
        west = [self.origin("west-%d" % i, log=False) for i in (1, 2)]
        lb = self.lb(config([("us-east", 0, 3, [o.addr for o in east]),
                             ("us-west", 0, 1, [o.addr for o in west])]))
        counts, names = measure(lb.port(), 1000, "/w")
        say("weights 3:1, 1000 GETs: %s (by origin %s)"
            % (counts, {n: names.count(n) for n in sorted(set(names))}))
        self.assertAlmostEqual(counts.get("us-east", 0), 750, delta=50, msg=counts)
        self.assertAlmostEqual(counts.get("us-west", 0), 250, delta=50, msg=counts)
        st = status_shares(lb)
        self.assertAlmostEqual(st["us-east"], 0.75, delta=0.005, msg=st)
        self.assertAlmostEqual(st["us-west"], 0.25, delta=0.005, msg=st)

    # ---- 4 ------------------------------------------------------------------
    def test_overprovisioning_1_spills_at_once(self):
        aws, rs, lb = self.two_tier(n_aws=2, n_rs=2, health_check=FAST_CHECK,
                                    overprovisioning=1.0)
        port = lb.port()
        counts, _ = measure(port, 200, "/op-healthy")
        say("overprovisioning 1.0, all healthy, 200 GETs: %s" % counts)
        self.assertEqual(counts, {"aws": 200})
        aws[0].set_healthy(False)
        self.assertTrue(wait_until(lambda: abs(status_shares(lb)["aws"] - 0.5) < 1e-6, 5),
                        status_shares(lb))
        counts, names = measure(port, 1000, "/op")
        say("overprovisioning 1.0, 1 of 2 aws unhealthy, 1000 GETs: %s (by origin %s)"
            % (counts, {n: names.count(n) for n in sorted(set(names))}))
        self.assertAlmostEqual(counts.get("aws", 0), 500, delta=50, msg=counts)
        self.assertAlmostEqual(counts.get("rackspace", 0), 500, delta=50, msg=counts)
        self.assertNotIn("aws-1", names)
        self.assert_shares(lb, {"aws": 0.5, "rackspace": 0.5}, "overprovisioning 1.0")


if __name__ == "__main__":
    harness.main()
