#!/usr/bin/env python3
"""Several lb instances as one tier through Redis (`cluster:`), as an
operator runs it.

Every test starts its own redis-server on 127.0.0.1 with an ephemeral port
(no persistence: --save "" --appendonly no) and its own lb instances (one
worker each, one pool `web` of the same two origins A and B, round robin);
which origin answered a request is its X-Origin header, and each origin's
/__origin/stats counts what reached it (no health checks are configured, so
every request an origin sees came from a client through lb).

Tests:
  - tier drain: three instances share one Redis; `drain?scope=cluster` of A
    on instance 1 answers 200 with "scope": "cluster", writes
    `lb:overrides` field "d:web A" = "1@1" (value@version) and bumps `lb:overrides:version`;
    within 1 s no instance sends to A (20 requests to each afterwards: A's
    count does not move, B gets all 60), every /status shows A drained and
    cluster.overrides_version equal to Redis's version; a fourth instance
    started afterwards never sends its first 20 requests to A (it reads the
    overrides before it serves); `enable?scope=cluster` on instance 2 puts
    A back on all four within 1 s;
  - tier weight: `PUT weight?scope=cluster` 0 for B on instance 3 (key
    prefix "tier2:") takes B out of rotation on every instance within 1 s,
    weight 1 puts it back; a plain drain (no scope, and scope=local) still
    concerns only the instance that got it and writes nothing to Redis;
  - Redis dies (SIGKILL) after a cluster drain of A: every instance keeps
    serving (no failed request, each well under 0.5 s) and keeps A drained;
    `drain?scope=cluster` answers 503 "not written, nothing changed" and
    changes nothing; lb_cluster_redis_up is 0, lb_cluster_redis_errors_total
    rises, the "unreachable" line is logged once, not once per poll. Redis
    comes back empty on the same port: "reachable again" within 2 s,
    lb_cluster_redis_up 1. An empty Redis has no version key (read as
    version 0) and an empty hash: each instance applies that empty set of
    overrides (version 0), which carries nothing
    about A, so A stays drained where it was drained (an empty set undoes
    nothing); a later cluster enable works as usual;
  - AUTH: Redis with requirepass, lb with password_file: drain?scope=cluster
    works; an instance with a wrong password shows cluster.connected false,
    its errors rise, and its drain?scope=cluster answers 503, changing
    nothing;
  - scope without a cluster block: 400 naming the cluster block, nothing
    changes; unknown parameters (scope=bogus, x=1) are 400 with or without
    a cluster block; a reload that changes `cluster:` is logged as taking
    effect at the next restart (and the running instance keeps its Redis
    key prefix);
  - lb check: redis "a b:1" and "h:99999", a missing redis, a missing or
    empty password_file, key_prefix "", tls: maybe, a missing tls.ca, a cert
    without its key and a missing key are refused with
    FILE:LINE:COL; a complete block passes.

Environment: LB_BIN, LB_SOURCE_DIR; REDIS_SERVER_BIN (default
/usr/bin/redis-server; the tests that need Redis are skipped without it).
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import http, lb_check, port_free_on, wait_until  # noqa: E402
from dns_server import Dnsmasq  # noqa: E402
from redis_server import Redis, RedisError, needs_redis, redis_cmd  # noqa: E402

PROPAGATION = 1.0  # seconds: every instance follows a cluster change within this


# ---------------------------------------------------------------------------
# lb configuration and helpers

def tier_config(origins, cluster_yaml=None):
    backends = ", ".join('"%s"' % o.addr for o in origins)
    text = f"""
workers: 1
access_log: {{ path: "off" }}
admin: {{ listen: 127.0.0.1:0 }}
listeners:
  - name: public
    listen: 127.0.0.1:0
    routes: [ {{ match: {{ path_prefix: / }}, pool: web }} ]
pools:
  web:
    balance: round_robin
    backends: [ {backends} ]
"""
    if cluster_yaml is not None:
        text += "cluster:\n" + cluster_yaml
    return text


def cluster_block(redis, extra=""):
    return "  redis: %s\n%s" % (redis.addr, extra)


def backend_status(lb, address, pool="web"):
    doc = lb.status_json()
    for p in doc["pools"]:
        if p["name"] == pool:
            for b in p["backends"]:
                if b["address"] == address:
                    return b
    raise AssertionError("no backend %s in pool %s: %s" % (address, pool, doc["pools"]))


def action_path(origin, action, scope="cluster"):
    path = "/pools/web/backends/%s/%s" % (origin.addr, action)
    return path + ("?scope=" + scope if scope else "")


class ClusterTestCase(harness.TestCase):
    def redis(self, **kw):
        r = Redis(**kw)
        self.addCleanup(r.cleanup)
        return r

    def two_origins(self):
        return self.origin("A", log=False), self.origin("B", log=False)

    def served(self, lb, n, tag, max_seconds=None):
        """n requests through lb (a new connection each) -> list of X-Origin
        names; every one must be a 200 (and each faster than max_seconds)."""
        names = []
        for i in range(n):
            t0 = time.monotonic()
            status, h, body = http(lb.port(), "GET", "/%s/%d" % (tag, i), timeout=5)
            took = time.monotonic() - t0
            self.assertEqual(status, 200, body)
            if max_seconds is not None:
                self.assertLess(took, max_seconds, "request %s/%d took %.3f s" % (tag, i, took))
            names.append(h["X-Origin"])
        return names

    def assert_both_serve(self, lbs, tag):
        for k, lb in enumerate(lbs):
            names = self.served(lb, 4, "%s-%d" % (tag, k))
            self.assertEqual(sorted(set(names)), ["A", "B"], "instance %d: %s" % (k + 1, names))

    def wait_everywhere(self, lbs, predicate, what, timeout=PROPAGATION, since=None):
        """Polls (every 50 ms) until predicate(lb) holds for every lb; fails
        with what did not follow when `timeout` seconds after `since` pass."""
        start = since if since is not None else time.monotonic()
        left = max(0.0, start + timeout - time.monotonic())
        pending = list(range(len(lbs)))

        def check():
            for k in list(pending):
                if predicate(lbs[k]):
                    pending.remove(k)
            return not pending
        ok = wait_until(check, timeout=left, interval=0.05)
        took = time.monotonic() - start
        self.assertTrue(ok, "%s: instance(s) %s not there %.2f s later"
                        % (what, [k + 1 for k in pending], took))
        return took

    def assert_redis_metrics(self, lb, redis, up, errors=None, errors_above=None, trips=True):
        """lb_cluster_redis_up / _round_trips_total / _errors_total{redis}."""
        samples = [(n, l, v) for n, l, v in harness.parse_metrics(lb.metrics_text())
                   if n.startswith("lb_cluster_redis_")]
        got = {n: v for n, l, v in samples if l.get("redis") == redis.addr}
        self.assertEqual(sorted(got), ["lb_cluster_redis_errors_total",
                                       "lb_cluster_redis_round_trips_total",
                                       "lb_cluster_redis_up"],
                         "GET /metrics has no lb_cluster_redis_*{redis=\"%s\"} samples: %s"
                         % (redis.addr, samples))
        self.assertEqual(got["lb_cluster_redis_up"], up)
        if trips:
            self.assertGreater(got["lb_cluster_redis_round_trips_total"], 0)
        if errors is not None:
            self.assertEqual(got["lb_cluster_redis_errors_total"], errors)
        if errors_above is not None:
            self.assertGreater(got["lb_cluster_redis_errors_total"], errors_above)
        return got

    def admin_ok(self, lb, method, path, body=None):
        status, _, text = lb.admin(method, path, body=body)
        self.assertEqual(status, 200, text)
        return json.loads(text)


# ---------------------------------------------------------------------------

@needs_redis
class TierOverrides(ClusterTestCase):
    def test_cluster_drain_reaches_every_instance_and_a_new_one(self):
        redis = self.redis()
        a, b = self.two_origins()
        config = tier_config([a, b], cluster_block(redis))
        lbs = [self.lb(config) for _ in range(3)]
        for lb in lbs:
            link = lb.status_json()["cluster"]
            self.assertEqual(link["redis"], redis.addr)
            self.assertTrue(link["connected"], link)
            self.assertEqual(link["overrides_version"], 0, link)  # no version key yet
        self.assert_both_serve(lbs, "before")

        # Drain A for the tier, through instance 1.
        t0 = time.monotonic()
        doc = self.admin_ok(lbs[0], "POST", action_path(a, "drain"))
        self.assertEqual(doc["scope"], "cluster")
        self.assertEqual((doc["pool"], doc["backend"], doc["drained"], doc["in_rotation"]),
                         ("web", a.addr, True, False), doc)
        # Applied at once on instance 1, and written to Redis in one step.
        self.assertTrue(backend_status(lbs[0], a.addr)["drained"])
        self.assertEqual(redis.cmd("HGETALL", "lb:overrides"), ["d:web " + a.addr, "1@1"])
        version = int(redis.cmd("GET", "lb:overrides:version"))
        self.assertEqual(version, 1)
        took = self.wait_everywhere(
            lbs, lambda lb: not backend_status(lb, a.addr)["in_rotation"]
            and lb.status_json()["cluster"]["overrides_version"] == version,
            "A out of rotation", since=t0)
        sys.stderr.write("\n  [drain reached all 3 instances in %.2f s] " % took)
        a_before, b_before = a.stats()["requests"], b.stats()["requests"]
        for k, lb in enumerate(lbs):
            self.assertEqual(self.served(lb, 20, "drained-%d" % k), ["B"] * 20,
                             "instance %d" % (k + 1))
        self.assertEqual(a.stats()["requests"], a_before, "A got requests after the drain")
        self.assertEqual(b.stats()["requests"], b_before + 60)
        for k, lb in enumerate(lbs):
            st = backend_status(lb, a.addr)
            self.assertTrue(st["drained"], "instance %d: %s" % (k + 1, st))
            self.assertEqual(lb.status_json()["cluster"]["overrides_version"], version,
                             "instance %d" % (k + 1))
        for lb in lbs[1:]:
            self.assertTrue(wait_until(lambda: re.search(
                r"cluster: backend overrides version 1: 1 change applied",
                lb.stderr_text()), timeout=2), lb.stderr_text())
        self.assertIn("admin: pool web backend %s drained for the cluster" % a.addr,
                      lbs[0].stderr_text())

        # A fourth instance: it reads the overrides before it serves.
        lb4 = self.lb(config)
        a_before = a.stats()["requests"]
        self.assertEqual(self.served(lb4, 20, "fourth"), ["B"] * 20)
        self.assertEqual(a.stats()["requests"], a_before, "the new instance sent to A")
        self.assertTrue(backend_status(lb4, a.addr)["drained"])
        self.assertEqual(lb4.status_json()["cluster"]["overrides_version"], version)
        lbs.append(lb4)

        # Enable A for the tier, through instance 2: all four send to it again.
        t0 = time.monotonic()
        doc = self.admin_ok(lbs[1], "POST", action_path(a, "enable"))
        self.assertEqual((doc["scope"], doc["drained"], doc["in_rotation"]),
                         ("cluster", False, True), doc)
        self.assertEqual(redis.cmd("HGET", "lb:overrides", "d:web " + a.addr), "0@2")
        version = int(redis.cmd("GET", "lb:overrides:version"))
        self.assertEqual(version, 2)
        # (The instance that took the action applies it at once and reads the
        # new version at its next look, within 250 ms.)
        took = self.wait_everywhere(
            lbs, lambda lb: backend_status(lb, a.addr)["in_rotation"]
            and lb.status_json()["cluster"]["overrides_version"] == version,
            "A back in rotation", since=t0)
        sys.stderr.write("[enable reached all 4 in %.2f s] " % took)
        a_before = a.stats()["requests"]
        for k, lb in enumerate(lbs):
            names = self.served(lb, 4, "enabled-%d" % k)
            self.assertEqual(names.count("A"), 2, "instance %d: %s" % (k + 1, names))
            self.assertEqual(lb.status_json()["cluster"]["overrides_version"], version)
        self.assertEqual(a.stats()["requests"], a_before + 8)
        # The link in /status and in the metrics: up, round trips, no errors.
        for k, lb in enumerate(lbs):
            link = lb.status_json()["cluster"]
            self.assertEqual((link["connected"], link["errors"]), (True, 0), link)
            self.assertGreater(link["round_trips"], 0, link)
            with self.subTest("metrics", instance=k + 1):
                self.assert_redis_metrics(lb, redis, up=1, errors=0)

    def test_cluster_weight_and_local_actions(self):
        redis = self.redis()
        a, b = self.two_origins()
        config = tier_config([a, b], cluster_block(redis, '  key_prefix: "tier2:"\n'))
        lbs = [self.lb(config) for _ in range(3)]
        self.assert_both_serve(lbs, "before")

        # Weight 0 for B through instance 3: out of rotation everywhere.
        t0 = time.monotonic()
        doc = self.admin_ok(lbs[2], "PUT", action_path(b, "weight"), body="0")
        self.assertEqual((doc["scope"], doc["backend"], doc["weight"], doc["in_rotation"]),
                         ("cluster", b.addr, 0, False), doc)
        self.assertEqual(redis.cmd("HGETALL", "tier2:overrides"), ["w:web " + b.addr, "0@1"])
        self.assertEqual(redis.cmd("GET", "tier2:overrides:version"), "1")
        self.assertIsNone(redis.cmd("GET", "lb:overrides:version"))  # the prefix is honoured
        self.wait_everywhere(lbs, lambda lb: backend_status(lb, b.addr)["weight"] == 0
                             and not backend_status(lb, b.addr)["in_rotation"],
                             "B at weight 0", since=t0)
        b_before = b.stats()["requests"]
        for k, lb in enumerate(lbs):
            self.assertEqual(self.served(lb, 20, "w0-%d" % k), ["A"] * 20, "instance %d" % (k + 1))
        self.assertEqual(b.stats()["requests"], b_before, "B got requests at weight 0")

        # Weight 1 back, through instance 1.
        t0 = time.monotonic()
        doc = self.admin_ok(lbs[0], "PUT", action_path(b, "weight"), body="1")
        self.assertEqual((doc["scope"], doc["weight"], doc["in_rotation"]),
                         ("cluster", 1, True), doc)
        self.assertEqual(redis.cmd("HGET", "tier2:overrides", "w:web " + b.addr), "1@2")
        self.wait_everywhere(lbs, lambda lb: backend_status(lb, b.addr)["in_rotation"]
                             and backend_status(lb, b.addr)["weight"] == 1
                             and lb.status_json()["cluster"]["overrides_version"] == 2,
                             "B back at weight 1", since=t0)
        self.assert_both_serve(lbs, "w1")
        for lb in lbs:
            self.assertEqual(lb.status_json()["cluster"]["overrides_version"], 2)

        # A plain drain (no scope) and scope=local concern this instance only.
        for scope in (None, "local"):
            with self.subTest(scope=scope):
                doc = self.admin_ok(lbs[0], "POST", action_path(a, "drain", scope=scope))
                self.assertEqual((doc["scope"], doc["drained"]), ("local", True), doc)
                time.sleep(0.6)  # more than two polls of Redis
                self.assertEqual(redis.cmd("GET", "tier2:overrides:version"), "2")
                self.assertEqual(redis.cmd("HLEN", "tier2:overrides"), 1)
                self.assertEqual(self.served(lbs[0], 6, "local-%s" % scope), ["B"] * 6)
                for k, lb in enumerate(lbs[1:], start=2):
                    self.assertFalse(backend_status(lb, a.addr)["drained"], "instance %d" % k)
                    names = self.served(lb, 4, "local-%s-%d" % (scope, k))
                    self.assertEqual(names.count("A"), 2, "instance %d: %s" % (k, names))
                doc = self.admin_ok(lbs[0], "POST", action_path(a, "enable", scope=scope))
                self.assertEqual((doc["scope"], doc["drained"]), ("local", False), doc)

    def test_redis_dies_and_comes_back_empty(self):
        redis = self.redis()
        a, b = self.two_origins()
        config = tier_config([a, b], cluster_block(redis))
        lbs = [self.lb(config) for _ in range(3)]
        t0 = time.monotonic()
        self.admin_ok(lbs[0], "POST", action_path(a, "drain"))
        self.wait_everywhere(lbs, lambda lb: backend_status(lb, a.addr)["drained"]
                             and lb.status_json()["cluster"]["overrides_version"] == 1,
                             "A drained", since=t0)

        redis.kill()  # SIGKILL: no goodbye
        t_down = time.monotonic()
        # Traffic goes on at once, and keeps going while the instances notice.
        unreachable = "cluster: redis %s unreachable (" % redis.addr
        a_before, b_before = a.stats()["requests"], b.stats()["requests"]
        sent = 0
        for k, lb in enumerate(lbs):
            self.assertEqual(self.served(lb, 10, "down-early-%d" % k, max_seconds=0.5), ["B"] * 10)
            sent += 10
        self.wait_everywhere(lbs, lambda lb: not lb.status_json()["cluster"]["connected"],
                             "cluster.connected false", timeout=2.0, since=t_down)
        errors = [lb.status_json()["cluster"]["errors"] for lb in lbs]
        self.assertTrue(all(e >= 1 for e in errors), errors)
        metric_errors = {}
        for k, lb in enumerate(lbs):
            with self.subTest("metrics while down", instance=k + 1):
                metric_errors[k] = self.assert_redis_metrics(
                    lb, redis, up=0, errors_above=0)["lb_cluster_redis_errors_total"]
        # Several polls later: more traffic, all on B, fast; errors keep rising.
        t_traffic = time.monotonic()
        while time.monotonic() - t_traffic < 1.2:
            for k, lb in enumerate(lbs):
                self.assertEqual(self.served(lb, 3, "down-%d-%d" % (k, sent), max_seconds=0.5),
                                 ["B"] * 3)
                sent += 3
        self.assertEqual(a.stats()["requests"], a_before, "A got requests while Redis was down")
        self.assertEqual(b.stats()["requests"], b_before + sent)
        for k, lb in enumerate(lbs):
            self.assertGreater(lb.status_json()["cluster"]["errors"], errors[k],
                               "instance %d: errors did not rise" % (k + 1))
            if k in metric_errors:
                with self.subTest("metrics errors rise", instance=k + 1):
                    self.assert_redis_metrics(lb, redis, up=0, errors_above=metric_errors[k])
            self.assertTrue(backend_status(lb, a.addr)["drained"])
            link = lb.status_json()["cluster"]
            self.assertEqual((link["connected"], link["overrides_version"]), (False, 1), link)
            self.assertEqual(lb.stderr_text().count(unreachable), 1,
                             "instance %d:\n%s" % (k + 1, lb.stderr_text()))
        # A cluster action cannot be written: 503, and nothing changes.
        for method, path, body in [("POST", action_path(b, "drain"), None),
                                   ("PUT", action_path(b, "weight"), "5"),
                                   ("POST", action_path(a, "enable"), None)]:
            with self.subTest(method=method, path=path):
                t = time.monotonic()
                status, _, text = lbs[1].admin(method, path, body=body)
                self.assertLess(time.monotonic() - t, 2.0)
                self.assertEqual(status, 503, text)
                self.assertTrue(text.startswith(b"scope=cluster: not written, nothing changed: "),
                                text)
                self.assertIn(redis.addr.encode(), text)
        for lb in lbs:
            st_a, st_b = backend_status(lb, a.addr), backend_status(lb, b.addr)
            self.assertEqual((st_a["drained"], st_a["weight"]), (True, 1), st_a)
            self.assertEqual((st_b["drained"], st_b["weight"], st_b["in_rotation"]),
                             (False, 1, True), st_b)
        self.assertEqual(self.served(lbs[1], 5, "after-503"), ["B"] * 5)

        # Redis comes back on the same port, empty (nothing was saved).
        redis.restart()
        t_up = time.monotonic()
        again = "cluster: redis %s reachable again" % redis.addr
        self.wait_everywhere(lbs, lambda lb: again in lb.stderr_text(),
                             "'reachable again' logged", timeout=2.0, since=t_up)
        for k, lb in enumerate(lbs):
            self.assertTrue(lb.status_json()["cluster"]["connected"])
            with self.subTest("metrics once back", instance=k + 1):
                self.assert_redis_metrics(lb, redis, up=1)
            self.assertEqual(lb.stderr_text().count(unreachable), 1, "instance %d" % (k + 1))
            self.assertEqual(lb.stderr_text().count(again), 1, "instance %d" % (k + 1))
        # The empty Redis has no version key: read as version 0, a change from
        # 1, so each instance applies the (empty) set of overrides. It has no
        # override for A, so A stays drained: an empty set undoes nothing.
        self.wait_everywhere(
            lbs, lambda lb: lb.status_json()["cluster"]["overrides_version"] == 0,
            "the empty set read", timeout=2.0, since=t_up)
        self.assertIsNone(redis.cmd("GET", "lb:overrides:version"))
        for k, lb in enumerate(lbs):
            self.assertEqual(lb.status_json()["cluster"]["overrides_version"], 0)
            self.assertTrue(backend_status(lb, a.addr)["drained"], "instance %d" % (k + 1))
            self.assertEqual(self.served(lb, 6, "back-%d" % k), ["B"] * 6)
        # And the tier works again: enable A for the cluster through instance 3.
        t0 = time.monotonic()
        self.admin_ok(lbs[2], "POST", action_path(a, "enable"))
        self.assertEqual(redis.cmd("GET", "lb:overrides:version"), "1")
        self.wait_everywhere(lbs, lambda lb: backend_status(lb, a.addr)["in_rotation"],
                             "A enabled after Redis came back", since=t0)
        self.assert_both_serve(lbs, "enabled")


    def test_a_backend_dns_brings_back_is_drained_again(self):
        """A backend drained for the tier that leaves its pool's DNS answer and
        comes back is drained again when it returns (a new backend for lb)."""
        redis = self.redis()
        hosts = ["127.0.0.2", "127.0.0.3"]
        port = port_free_on(hosts)
        for h in hosts:
            self.origin("o" + h[-1], listen="%s:%d" % (h, port), log=False)
        dns = Dnsmasq({"app.test": hosts}, ttl=1)
        dns.start()
        self.addCleanup(dns.cleanup)
        lb = self.lb(f"""
workers: 1
access_log: {{ path: "off" }}
admin: {{ listen: 127.0.0.1:0 }}
dns: {{ servers: ["127.0.0.1:{dns.port}"], min_ttl: 1s, max_ttl: 2s }}
listeners:
  - name: public
    listen: 127.0.0.1:0
    routes: [ {{ pool: web }} ]
pools:
  web:
    backends: [ {{ dns: "app.test:{port}" }} ]
cluster:
{cluster_block(redis)}""")
        o2 = "127.0.0.2:%d" % port

        def listed():
            return {b["address"] for p in lb.status_json()["pools"] for b in p["backends"]}
        self.assertTrue(wait_until(lambda: listed() == {o2, "127.0.0.3:%d" % port}, 10), listed())
        self.admin_ok(lb, "POST", "/pools/web/backends/%s/drain?scope=cluster" % o2)
        self.assertEqual(set(self.served(lb, 6, "drained")), {"o3"})

        dns.restart(a_records={"app.test": ["127.0.0.3"]})
        self.assertTrue(wait_until(lambda: o2 not in listed(), 8), listed())
        dns.restart(a_records={"app.test": hosts})
        self.assertTrue(wait_until(lambda: o2 in listed(), 8), listed())
        # Back in the pool, and drained again at once: no request reaches it.
        self.assertTrue(backend_status(lb, o2)["drained"], lb.status_json()["pools"])
        self.assertEqual(set(self.served(lb, 10, "back")), {"o3"})
        self.assertIn("cluster: backend overrides version", lb.stderr_text())


def make_cert(directory, name, ca=False, signer=None, ip=None):
    """NAME.pem and NAME.key in `directory` (P-256): a CA when `ca`, else a
    certificate signed by `signer` (a CA's name) for IP `ip` (or a client's)."""
    key, pem = (os.path.join(directory, name + ext) for ext in (".key", ".pem"))
    subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key],
                   check=True, capture_output=True)
    if ca:
        subprocess.run(["openssl", "req", "-x509", "-new", "-key", key, "-out", pem, "-days", "2",
                        "-subj", "/CN=%s" % name], check=True, capture_output=True)
        return pem, key
    csr = os.path.join(directory, name + ".csr")
    ext = os.path.join(directory, name + ".ext")
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:%s\n" % ip if ip else "extendedKeyUsage=clientAuth\n")
    subprocess.run(["openssl", "req", "-new", "-key", key, "-out", csr, "-subj", "/CN=%s" % name],
                   check=True, capture_output=True)
    subprocess.run(["openssl", "x509", "-req", "-in", csr, "-CA", os.path.join(directory, signer + ".pem"),
                    "-CAkey", os.path.join(directory, signer + ".key"), "-CAcreateserial",
                    "-out", pem, "-days", "2", "-extfile", ext], check=True, capture_output=True)
    return pem, key


@needs_redis
class RedisOverTls(ClusterTestCase):
    """cluster.tls: Redis with only a TLS port for lb (tls-auth-clients yes:
    a client certificate is required), its plain port kept for the test."""

    def setUp(self):
        self.pki = tempfile.mkdtemp(prefix="lb-test-redis-tls-")
        self.addCleanup(shutil.rmtree, self.pki, True)
        self.ca, _ = make_cert(self.pki, "ca", ca=True)
        self.other_ca, _ = make_cert(self.pki, "other-ca", ca=True)
        self.server = make_cert(self.pki, "redis", signer="ca", ip="127.0.0.1")
        self.client = make_cert(self.pki, "lb", signer="ca")
        self.tls_port = harness.unused_port()
        self.redis_server = self.redis(extra_args=[
            "--tls-port", str(self.tls_port), "--tls-cert-file", self.server[0],
            "--tls-key-file", self.server[1], "--tls-ca-cert-file", self.ca,
            "--tls-auth-clients", "yes"])

    def block(self, ca=None, client=True, extra=""):
        tls = ["ca: %s" % (ca or self.ca)]
        if client:
            tls += ["cert: %s" % self.client[0], "key: %s" % self.client[1]]
        return "  redis: 127.0.0.1:%d\n  tls: { %s%s }\n" % (self.tls_port, ", ".join(tls), extra)

    def connected(self, lb):
        return lb.status_json().get("cluster", {}).get("connected")

    def test_drain_for_the_tier_over_tls(self):
        a, b = self.two_origins()
        lbs = [self.lb(tier_config([a, b], self.block())) for _ in range(2)]
        for lb in lbs:
            self.assertTrue(wait_until(lambda: self.connected(lb) is True, 3), lb.stderr_text())
        self.admin_ok(lbs[0], "POST", action_path(a, "drain"))
        self.wait_everywhere(lbs, lambda lb: backend_status(lb, a.addr)["drained"], "drain")
        for k, lb in enumerate(lbs):
            self.assertEqual(set(self.served(lb, 4, "tls-%d" % k)), {"B"})
        # What went over TLS is in Redis (read through its plain port).
        self.assertEqual(self.redis_server.cmd("HGET", "lb:overrides", "d:web " + a.addr)[:2], "1@")
        self.admin_ok(lbs[1], "POST", action_path(a, "enable"))
        self.wait_everywhere(lbs, lambda lb: not backend_status(lb, a.addr)["drained"], "enable")

    def test_a_certificate_that_does_not_verify_keeps_lb_off_redis(self):
        a, b = self.two_origins()
        for what, block, words in (
                ("another CA", self.block(ca=self.other_ca),
                 "TLS handshake with 127.0.0.1:%d: self-signed certificate in certificate chain"
                 % self.tls_port),
                ("no client certificate", self.block(client=False), "certificate required"),
                ("the wrong name", self.block(extra=", sni: redis.example"),
                 "TLS handshake with 127.0.0.1:%d: hostname mismatch" % self.tls_port)):
            with self.subTest(what):
                lb = self.lb(tier_config([a, b], block))
                self.assertTrue(wait_until(lambda: "unreachable" in lb.stderr_text(), 3),
                                lb.stderr_text())
                self.assertIn(words, lb.stderr_text())
                self.assertIs(self.connected(lb), False)
                status, _, text = lb.admin("POST", action_path(a, "drain"))
                self.assertEqual(status, 503, text)
                self.assertEqual(set(self.served(lb, 4, "still")), {"A", "B"})
        # verify: false takes any certificate (a client certificate is still needed).
        lb = self.lb(tier_config([a, b], self.block(ca=self.other_ca, extra=", verify: false")))
        self.assertTrue(wait_until(lambda: self.connected(lb) is True, 3), lb.stderr_text())


@needs_redis
class RedisAuth(ClusterTestCase):
    def test_password_file(self):
        password = "s3cret-for-the-tier"
        redis = self.redis(password=password)
        d = tempfile.mkdtemp(prefix="lb-test-redis-pass-")
        self.addCleanup(shutil.rmtree, d, True)
        good, wrong = os.path.join(d, "good.pass"), os.path.join(d, "wrong.pass")
        with open(good, "w") as f:
            f.write(password + "\n")  # the trailing newline is cut
        with open(wrong, "w") as f:
            f.write("not-the-password\n")
        a, b = self.two_origins()
        lb_good = self.lb(tier_config([a, b], cluster_block(redis, "  password_file: %s\n" % good)))
        lb_wrong = self.lb(tier_config([a, b],
                                       cluster_block(redis, "  password_file: %s\n" % wrong)))

        self.assertTrue(lb_good.status_json()["cluster"]["connected"])
        doc = self.admin_ok(lb_good, "POST", action_path(a, "drain"))
        self.assertEqual((doc["scope"], doc["drained"]), ("cluster", True))
        self.assertEqual(redis.cmd("HGET", "lb:overrides", "d:web " + a.addr), "1@1")
        self.assertEqual(redis.cmd("GET", "lb:overrides:version"), "1")
        self.assertEqual(self.served(lb_good, 6, "good"), ["B"] * 6)
        with self.assertRaises(RedisError):  # the server does want a password
            redis_cmd(redis.port, "GET", "lb:overrides:version")

        # The wrong password: never connected, errors rising, 503, nothing changes.
        self.assertTrue(wait_until(lambda: lb_wrong.status_json()["cluster"]["errors"] >= 1,
                                   timeout=2))
        link = lb_wrong.status_json()["cluster"]
        self.assertEqual((link["connected"], link["overrides_version"]), (False, -1), link)
        self.assertTrue(wait_until(lambda: lb_wrong.status_json()["cluster"]["errors"]
                                   > link["errors"], timeout=2))
        with self.subTest("metrics"):
            self.assert_redis_metrics(lb_wrong, redis, up=0, errors_above=0, trips=False)
        self.assertIn("cluster: redis %s unreachable (AUTH: " % redis.addr, lb_wrong.stderr_text())
        status, _, text = lb_wrong.admin("POST", action_path(b, "drain"))
        self.assertEqual(status, 503, text)
        self.assertTrue(text.startswith(b"scope=cluster: not written, nothing changed: "), text)
        self.assertFalse(backend_status(lb_wrong, b.addr)["drained"])
        self.assertEqual(redis.cmd("HLEN", "lb:overrides"), 1)
        self.assertEqual(redis.cmd("GET", "lb:overrides:version"), "1")
        # It could not read the tier's overrides: it serves with its own config.
        names = self.served(lb_wrong, 4, "wrong")
        self.assertEqual(sorted(set(names)), ["A", "B"], names)


class WithoutCluster(ClusterTestCase):
    def test_scope_cluster_needs_the_block_and_unknown_parameters_are_refused(self):
        a, b = self.two_origins()
        lb = self.lb(tier_config([a, b]))
        self.assertNotIn("cluster", lb.status_json())
        for method, path, body in [("POST", action_path(a, "drain"), None),
                                   ("POST", action_path(a, "enable"), None),
                                   ("PUT", action_path(a, "weight"), "0")]:
            with self.subTest(path=path):
                status, _, text = lb.admin(method, path, body=body)
                self.assertEqual(status, 400, text)
                self.assertIn(b"scope=cluster needs a cluster: {redis: HOST:PORT} block in the "
                              b"config", text)
        for query in ("scope=bogus", "x=1", "scope=local&x=1", "scope=cluster&scope=nope"):
            with self.subTest(query=query):
                status, _, text = lb.admin(
                    "POST", "/pools/web/backends/%s/drain?%s" % (a.addr, query))
                self.assertEqual(status, 400, text)
                self.assertIn(b"unknown parameter", text)
        st = backend_status(lb, a.addr)
        self.assertEqual((st["drained"], st["weight"], st["in_rotation"]), (False, 1, True), st)
        self.assertNotIn("lb_cluster_redis", lb.metrics_text())
        names = self.served(lb, 4, "still")
        self.assertEqual(names.count("A"), 2, names)
        # scope=local is the plain action.
        doc = self.admin_ok(lb, "POST", action_path(a, "drain", scope="local"))
        self.assertEqual((doc["scope"], doc["drained"]), ("local", True))

    @needs_redis
    def test_unknown_parameter_with_a_cluster_and_reload(self):
        redis = self.redis()
        a, b = self.two_origins()
        lb = self.lb(tier_config([a, b], cluster_block(redis)))
        status, _, text = lb.admin("POST", action_path(a, "drain", scope="bogus"))
        self.assertEqual(status, 400, text)
        self.assertIn(b"unknown parameter 'scope=bogus'", text)
        self.assertFalse(backend_status(lb, a.addr)["drained"])
        self.assertIsNone(redis.cmd("GET", "lb:overrides:version"))

        # A reload that changes the cluster block: logged, for the next restart.
        lb.reload(tier_config([a, b], cluster_block(redis, '  key_prefix: "other:"\n')))
        line = "reload: 'cluster' changed: takes effect at the next restart"
        self.assertTrue(wait_until(lambda: line in lb.stderr_text(), timeout=5), lb.stderr_text())
        self.admin_ok(lb, "POST", action_path(a, "drain"))
        self.assertEqual(redis.cmd("GET", "lb:overrides:version"), "1")  # the running prefix
        self.assertIsNone(redis.cmd("GET", "other:overrides:version"))


class _Backend:
    def __init__(self, addr):
        self.addr = addr


class ClusterCheck(unittest.TestCase):
    """lb check: every bad cluster block is refused at its FILE:LINE:COL."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="lb-test-cluster-check-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.empty = os.path.join(self.dir, "empty.pass")
        with open(self.empty, "w") as f:
            f.write(" \n\n")  # only whitespace: empty once trailing whitespace is cut
        self.good = os.path.join(self.dir, "good.pass")
        with open(self.good, "w") as f:
            f.write("secret\n")
        self.missing = os.path.join(self.dir, "missing.pass")
        self.ca = os.path.join(self.dir, "ca.pem")
        make_cert(self.dir, "ca", ca=True)

    def base(self):
        return tier_config([_Backend("127.0.0.1:8080"), _Backend("127.0.0.1:8081")])

    def check(self, block, key, message):
        """`block` is the cluster block; the error is expected at the value of
        `key` (or at `cluster:` itself when key is None)."""
        text = self.base() + "cluster:\n" + block
        lines = text.split("\n")
        if key is None:
            line = lines.index("cluster:") + 1
            col = 1
        else:
            line = next(i for i, l in enumerate(lines) if l.startswith("  %s:" % key)) + 1
            prefix = "  %s: " % key
            col = len(prefix) + 1
        code, out, path = lb_check(text)
        self.assertEqual(code, 1, out)
        located = [l for l in out.splitlines() if l.startswith(path + ":")]
        self.assertEqual(len(located), 1, out)
        self.assertTrue(located[0].startswith("%s:%d:%d: " % (path, line, col)), out)
        self.assertIn(message, located[0])

    def test_bad_blocks(self):
        cases = [
            ('  redis: "a b:1"\n', "redis",
             "redis: expected HOST:PORT like 10.0.0.7:6379 or redis.internal:6379, got 'a b:1'"),
            ('  redis: "h:99999"\n', "redis",
             "redis: expected HOST:PORT like 10.0.0.7:6379 or redis.internal:6379, "
             "got 'h:99999'"),
            ('  redis: "h:"\n', "redis", "redis: expected HOST:PORT"),
            ('  redis: "user@h:6379"\n', "redis", "redis: expected HOST:PORT"),
            ('  key_prefix: "x:"\n', None, "cluster: needs redis"),
            ("  redis: 127.0.0.1:6379\n  password_file: %s\n" % self.missing, "password_file",
             "password_file: cannot read %s: No such file or directory" % self.missing),
            ("  redis: 127.0.0.1:6379\n  password_file: %s\n" % self.empty, "password_file",
             "password_file: %s is empty" % self.empty),
            ('  redis: 127.0.0.1:6379\n  key_prefix: ""\n', "key_prefix",
             "key_prefix: expected up to 64 printable characters without spaces, got ''"),
            ('  redis: 127.0.0.1:6379\n  key_prefix: "a b"\n', "key_prefix",
             "key_prefix: expected up to 64 printable characters"),
            ("  redis: 127.0.0.1:6379\n  tls: maybe\n", "tls", "expected true or false"),
            ("  redis: 127.0.0.1:6379\n  tls:\n    ca: %s\n" % self.missing, "  ca",
             "ca: cannot read %s" % self.missing),
            ("  redis: 127.0.0.1:6379\n  tls:\n    cert: %s\n" % self.ca, "  cert",
             "tls: cert and key go together"),
            ("  redis: 127.0.0.1:6379\n  tls:\n    cert: %s\n    key: %s\n"
             % (self.ca, self.missing), "  key", "key: cannot read %s" % self.missing),
        ]
        for block, key, message in cases:
            with self.subTest(block=block):
                self.check(block, key, message)

    def test_good_block_passes(self):
        for block in ("  redis: 127.0.0.1:6379\n",
                      "  redis: redis.internal:6380\n  password_file: %s\n  key_prefix: \"t1:\"\n"
                      % self.good,
                      "  redis: 127.0.0.1:6379\n  tls: true\n",
                      "  redis: 127.0.0.1:6379\n  tls: {}\n",
                      "  redis: 127.0.0.1:6379\n  tls: { ca: %s, sni: redis.internal, verify: true }\n"
                      % self.ca):
            with self.subTest(block=block):
                code, out, _ = lb_check(self.base() + "cluster:\n" + block)
                self.assertEqual((code, out.strip()), (0, "ok"), out)


if __name__ == "__main__":
    harness.main()
