#!/usr/bin/env python3
"""Rate limits shared by several lb instances through Redis (`rate_limit:
{scope: cluster}`), as an operator runs them: the limit holds for the sum
over every instance sharing one Redis, and an instance that loses Redis falls
back at once (its own share of the rate, or everything let through) without
a request failing or waiting for Redis.

Every test starts its own redis-server on 127.0.0.1 with an ephemeral port
(no persistence: --save "" --appendonly no) and its own lb instances (one
worker each; a listener `public` with proxy_protocol: true whose route `api`
is limited to 100/s, burst 5, key source_ip, scope: cluster; one pool `web`
of a fast origin; an admin listener). Clients are paced by deadlines on
keep-alive connections (each starting with a PROXY v1 line when it talks to
an instance directly, so that every request has the same key), at about 3x
the rate; each count of 200s is compared with the rate times the window
actually measured, never a nominal duration, and assertion messages give the
counts. Figures are printed to stderr ("[cluster_rate_limit] ...").

Tests:
  - the limit holds for the tier: HAProxy (mode tcp, send-proxy-v2,
    roundrobin, checks of each instance's /healthz on its admin port) in
    front of three instances (cluster.instances: 3, on_redis_error: local).
    Once HAProxy sees all three up and each says the limit is shared
    (lb_rate_limit_shared 1), 6 clients x 50 req/s (two connections per
    instance, every client from 127.0.0.2: one key) load the tier for 10 s.
    The 200s number 100/s x the window within 5% (plus a startup allowance
    of one 100 ms sync period at the rate and the burst + 1 per instance):
    each instance counts locally and exchanges its counts with Redis every
    100 ms, so the sum converges on the rate, where three local limits would
    let 3x through. Every other answer is a 429 with Retry-After, no
    connection fails; each instance served some of the 200s (the growth of
    its lb_requests_total{listener="public",code="200"}; together exactly
    the 200s the clients got) and counted its refusals in
    lb_rate_limited_total{listener,route} (together exactly the 429s). Redis
    holds the hash `lb:ratelimit` (one field per instance) and
    `lb:ratelimit:seed`. Redis's INFO commandstats (calls= summed over every
    cmdstat_ line) rose by at most 30 commands per second per instance over
    the window: the rate sync (one pipelined round trip every 100 ms) and the
    override polling share a budget of ~25/s, so a tier does not load Redis
    in proportion to its traffic;
  - Redis loses its data (FLUSHALL) while the instances stay connected, and
    instance 1's connection is cut (CLIENT KILL): it sets a new hash seed on
    reconnecting; the others see the seed change in their polling and hash
    with it too, so a 5 s load through the tier still gets the rate (+-8%):
    instances hashing apart would each let the rate through;
  - Redis dies and comes back (on_redis_error: local, instances: 3): 300
    req/s to instance 1 alone (the other two run idle, part of the cluster),
    in three phases of 3 s. Shared: 100/s pass (+-10%), since instance 1 is
    the only one using the limit. Redis killed (SIGKILL, no goodbye):
    lb_rate_limit_shared{listener="public",route="api"} turns 0 within 2 s
    and lb_cluster_redis_errors_total rises. Fallen back: each instance
    applies rate / instances on its own, so 100/3 per second pass (+-20%).
    Redis restarted on the same port, empty: the gauge is 1 again within
    2 s. Shared again: 100/s (+-10%). Throughout (transitions included) every
    request is answered 200 or 429 in under 0.5 s and no connection fails:
    no request waits for Redis; lb_rate_limited_total equals the 429s;
  - on_redis_error: open (no cluster.instances, which only the local
    fallback needs): 200 req/s for 2 s to an instance is limited while Redis
    is up; with Redis killed and the gauge at 0, the same load passes whole
    (no 429, lb_rate_limited_total unchanged, each answer under 0.5 s);
  - lb check refuses, each at FILE:LINE:COL: scope: cluster without a
    `cluster:` block, scope: cluster falling back locally (on_redis_error
    local, said or by default) without cluster.instances, on_redis_error:
    bogus, on_redis_error on a scope: local limit, cluster.instances: 0, a
    route saying local under a cluster block saying open without instances,
    cluster.on_redis_error: sometimes; it accepts scope: cluster with
    instances: 3, and on_redis_error: open (the route's or the cluster
    block's, every cluster limit's default)
    without instances.

Environment: LB_BIN, LB_SOURCE_DIR, FAST_ORIGIN_BIN (bench/fast_origin; else
tests/origin/origin.py serves); REDIS_SERVER_BIN (default
/usr/bin/redis-server) and HAPROXY_BIN (default /usr/sbin/haproxy): the tests
that need them are skipped without them.
"""

import os
import re
import socket
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import lb_check, wait_until  # noqa: E402
from haproxy_tier import CLIENT_IP, HAProxy, needs_haproxy, read_response  # noqa: E402
from redis_server import Redis, needs_redis  # noqa: E402

RATE = 100               # the route's limit, per second, for the whole tier
INSTANCES = 3
SYNC_PERIOD = 0.1        # each instance exchanges its counts with Redis this often
# Requests that may come at once beyond the rate. Not 0: a client paced at
# 300/s arrives a little early or late for its slot, and with no burst at all
# a request a microsecond early is refused (the route then passes ~85/s,
# local or not).
BURST = 5
# What may pass beyond rate x window when a load starts: one sync period at
# the rate (an instance admits before it has heard of the others' counts),
# and the burst + 1 on each instance before the first exchange.
STARTUP_ALLOWANCE = int(RATE * SYNC_PERIOD) + INSTANCES * (BURST + 1)
COMMANDS_PER_S_MAX = 30  # Redis commands per second per instance (budget ~25)
FALLBACK_WITHIN = 2.0    # s: the gauge follows Redis going away / coming back
MAX_ANSWER_S = 0.5       # no request waits for Redis


def say(msg):
    sys.stderr.write("    [cluster_rate_limit] %s\n" % msg)
    sys.stderr.flush()


# ---------------------------------------------------------------------------
# paced keep-alive load

class Record:
    __slots__ = ("sent", "answered", "status", "retry_after", "error", "conn")

    def __init__(self, sent, answered, status, retry_after, error, conn):
        self.sent, self.answered, self.status = sent, answered, status
        self.retry_after, self.error, self.conn = retry_after, error, conn


class PacedLoad:
    """`clients` threads, each with its own keep-alive connection to port,
    each sending GET /api/... at `per_client` requests per second, paced by
    deadlines (client i offset by i/clients of an interval, so the load is
    even; a client that fell more than 100 ms behind drops the slots it
    missed instead of bursting). Connections are opened one after another in
    the constructor (roundrobin behind HAProxy: one per instance in turn),
    each starting with `proxy_line` when given. A connection the server
    closes (Connection: close) is replaced; any error is recorded.
    start(duration) runs until duration seconds pass or stop(); the
    threads stop by themselves after `max_seconds` whatever happens."""

    def __init__(self, port, clients, per_client, proxy_line=None, source=None,
                 expect_body=None, timeout=5.0, max_seconds=40.0):
        self.port = port
        self.per_client = float(per_client)
        self.proxy_line = proxy_line
        self.source = source
        self.expect_body = expect_body
        self.timeout = timeout
        self.max_seconds = max_seconds
        self.records = []
        self.connects = [0] * clients
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.threads = []
        self.t_start = None
        self.socks = [self._connect(i) for i in range(clients)]

    def _connect(self, i):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout,
                                     source_address=(self.source, 0) if self.source else None)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.proxy_line:
            s.sendall(self.proxy_line)
        self.connects[i] += 1
        return s

    def start(self, duration=None):
        self.t_start = time.monotonic()
        self.stop_at = self.t_start + min(duration or self.max_seconds, self.max_seconds)
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(len(self.socks))]
        for t in self.threads:
            t.start()
        return self.t_start

    def stop(self):
        self._stop.set()

    def join(self, timeout=10.0):
        """Waits for the threads (they end by stop_at); True if all ended."""
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self.threads)

    def close(self):
        self._stop.set()
        self.join(10)
        for s in self.socks:
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass

    def _run(self, i):
        interval = 1.0 / self.per_client
        t0 = self.t_start + interval * i / len(self.socks)
        k = 0
        local = []
        try:
            while not self._stop.is_set():
                due = t0 + k * interval
                if due >= self.stop_at:
                    break
                now = time.monotonic()
                if due > now:
                    if self._stop.wait(due - now):
                        break
                elif now - due > 0.1:  # a stall: skip the slots missed
                    k = int((now - t0) / interval) + 1
                    continue
                k += 1
                request = ("GET /api/c%d/%d HTTP/1.1\r\nHost: rl.test\r\n\r\n" % (i, k)).encode()
                status = retry_after = error = None
                close = False
                t_send = time.monotonic()
                try:
                    if self.socks[i] is None:
                        self.socks[i] = self._connect(i)
                    self.socks[i].sendall(request)
                    status, headers, body, close = read_response(self.socks[i])
                    retry_after = headers.get("retry-after")
                    if status == 200 and self.expect_body is not None \
                            and body != self.expect_body:
                        error = "200 with body %r" % body[:100]
                except Exception as e:  # noqa: BLE001
                    error = "%s: %r" % (type(e).__name__, e)
                    close = True
                local.append(Record(t_send, time.monotonic(), status, retry_after, error, i))
                if close and self.socks[i] is not None:
                    try:
                        self.socks[i].close()
                    except OSError:
                        pass
                    self.socks[i] = None
        finally:
            with self._lock:
                self.records.extend(local)

    def window(self, t_from=None, t_to=None):
        """Records of the requests sent in [t_from, t_to)."""
        with self._lock:
            return [r for r in self.records
                    if (t_from is None or r.sent >= t_from) and (t_to is None or r.sent < t_to)]


def tally(records):
    """{status: count} (None: no answer)."""
    out = {}
    for r in records:
        out[r.status] = out.get(r.status, 0) + 1
    return out


def describe(records):
    """A line for assertion messages: counts, errors, slowest answer."""
    if not records:
        return "no requests"
    errors = [r.error for r in records if r.error]
    slowest = max(r.answered - r.sent for r in records)
    span = max(r.answered for r in records) - min(r.sent for r in records)
    return ("%d requests in %.2f s (%.0f/s): %s; %d errors%s; slowest answer %.3f s"
            % (len(records), span, len(records) / max(span, 1e-6),
               dict(sorted(tally(records).items(), key=lambda kv: str(kv[0]))), len(errors),
               " (first: %s)" % errors[:3] if errors else "", slowest))


# ---------------------------------------------------------------------------
# lb

def rl_config(backend_addr, redis, on_redis_error="local", instances=INSTANCES, rate=RATE,
              burst=BURST):
    cluster = "  redis: %s\n" % redis.addr
    if instances is not None:
        cluster += "  instances: %d\n" % instances
    return f"""workers: 1
access_log: {{ path: "off" }}
admin: {{ listen: 127.0.0.1:0 }}
cluster:
{cluster}listeners:
  - name: public
    listen: 127.0.0.1:0
    proxy_protocol: true
    routes:
      - name: api
        match: {{ path_prefix: / }}
        rate_limit: {{ key: source_ip, rate: {rate}/s, burst: {burst}, scope: cluster,
                       on_redis_error: {on_redis_error} }}
        pool: web
pools:
  web:
    backends: [ {{ address: "{backend_addr}" }} ]
"""


def proxy_v1(lb):
    """The PROXY v1 line a client writes first on lb's listener (proxy_protocol: true)."""
    return b"PROXY TCP4 127.0.0.1 127.0.0.1 40000 %d\r\n" % lb.port()


def sample(lb, name, timeout=2, **labels):
    """Sum of lb's samples `name` with `labels`, or None when it exposes none
    (so that a missing gauge never reads as 0)."""
    want = {k: str(v) for k, v in labels.items()}
    values = [v for n, l, v in harness.parse_metrics(lb.metrics_text(timeout=timeout))
              if n == name and all(l.get(k) == x for k, x in want.items())]
    return sum(values) if values else None


def shared(lb):
    """lb_rate_limit_shared{listener="public",route="api"}: 1 shared through
    Redis, 0 fallen back, None not exposed."""
    return sample(lb, "lb_rate_limit_shared", listener="public", route="api")


def refused(lb):
    return sample(lb, "lb_rate_limited_total", listener="public", route="api") or 0.0


def ok_served(lb):
    return sample(lb, "lb_requests_total", listener="public", code="200") or 0.0


def redis_errors(lb, redis):
    return sample(lb, "lb_cluster_redis_errors_total", redis=redis.addr)


class ClusterRateLimitCase(harness.TestCase):
    def redis(self):
        r = Redis()
        self.addCleanup(r.cleanup)
        return r

    def backend(self):
        """-> (address, body of its 200s): bench/fast_origin when built, else origin.py."""
        binary = os.environ.get("FAST_ORIGIN_BIN")
        if binary and os.access(binary, os.X_OK):
            o = harness.FastOrigin(binary)
            self.addCleanup(o.cleanup)
            return o.addr, o.body
        o = self.origin("web", log=False)
        return o.addr, b"Hello from web\n"

    def load(self, port, clients, per_client, **kw):
        load = PacedLoad(port, clients, per_client, **kw)
        self.addCleanup(load.close)
        return load

    def wait_shared(self, lbs, value, timeout, what):
        """Polls (every 50 ms) until every lb's gauge equals value; -> seconds taken."""
        t0 = time.monotonic()
        ok = wait_until(lambda: all(shared(lb) == value for lb in lbs), timeout, 0.05)
        took = time.monotonic() - t0
        if not ok:
            got = []
            for lb in lbs:
                try:
                    got.append(shared(lb))
                except Exception as e:  # noqa: BLE001
                    got.append(repr(e))
            self.fail("%s: lb_rate_limit_shared{listener=\"public\",route=\"api\"} is %r, not "
                      "%r, %.2f s later (None: not exposed)" % (what, got, value, took))
        return took

    def assert_answers(self, records, what, max_answer=None):
        """Every request answered 200 or 429 (each 429 with Retry-After in
        whole seconds), none failed, each within max_answer seconds."""
        summary = "%s: %s" % (what, describe(records))
        self.assertTrue(records, summary)
        failed = [(r.conn, r.error) for r in records if r.error]
        self.assertEqual(failed[:5], [], summary)
        self.assertEqual(set(tally(records)) - {200, 429}, set(), summary)
        bad_ra = [r.retry_after for r in records
                  if r.status == 429 and not re.match(r"^[1-9][0-9]*$", r.retry_after or "")]
        self.assertEqual(bad_ra[:5], [], "429s without a valid Retry-After; " + summary)
        if max_answer is not None:
            slow = sorted((round(r.answered - r.sent, 3) for r in records
                           if r.answered - r.sent >= max_answer), reverse=True)
            self.assertEqual(slow[:5], [], "answers slower than %.1f s; %s" % (max_answer, summary))
        return summary


# ---------------------------------------------------------------------------
# 1: the limit holds for the tier

@needs_redis
@needs_haproxy
class Tier(ClusterRateLimitCase):
    CLIENTS, PER_CLIENT, DURATION = 6, 50, 10.0

    def start_tier(self):
        """Redis, the three instances and HAProxy in front, every check up ->
        (redis, the origin's body, the instances, haproxy)."""
        redis = self.redis()
        addr, body = self.backend()
        lbs = [self.lb(rl_config(addr, redis)) for _ in range(INSTANCES)]
        names = ["lb%d" % (k + 1) for k in range(INSTANCES)]
        haproxy = HAProxy([("lbs", None, [(n, lb.port(), lb.admin_port)
                                          for n, lb in zip(names, lbs)])])
        self.addCleanup(haproxy.cleanup_after, self)
        haproxy.wait_checked_up(names)
        return redis, body, lbs, haproxy

    def test_global_limit_through_haproxy(self):
        redis, body, lbs, haproxy = self.start_tier()
        self.wait_shared(lbs, 1, 3.0, "before the load")

        ok_before = [ok_served(lb) for lb in lbs]
        refused_before = [refused(lb) for lb in lbs]
        load = self.load(haproxy.port, self.CLIENTS, self.PER_CLIENT, source=CLIENT_IP,
                         expect_body=body)
        t_info0 = time.monotonic()
        calls0 = redis.commands_served()
        load.start(self.DURATION)
        self.assertTrue(load.join(self.DURATION + 15), "a client thread hangs")
        calls1 = redis.commands_served()
        t_info1 = time.monotonic()
        records = load.window()
        summary = self.assert_answers(records, "tier load")

        counts = tally(records)
        passed, limited = counts.get(200, 0), counts.get(429, 0)
        # lb saw the requests between the first send and the last answer
        # (at most d_up), and at least between the first answer and the last
        # send (d_low).
        d_up = max(r.answered for r in records) - min(r.sent for r in records)
        d_low = max(r.sent for r in records) - min(r.answered for r in records)
        lower = int(RATE * d_low * 0.95)
        upper = int(RATE * d_up * 1.05) + STARTUP_ALLOWANCE
        per_instance = [ok_served(lb) - b for lb, b in zip(lbs, ok_before)]
        refused_by = [refused(lb) - b for lb, b in zip(lbs, refused_before)]
        commands_per_s = (calls1 - calls0 - 1) / (t_info1 - t_info0) / INSTANCES
        figures = ("%d passed, %d refused in a window of %.2f..%.2f s (allowed %d..%d: %d/s x "
                   "window +-5%%, +%d at the start); 200s by instance %r, 429s by instance %r; "
                   "Redis: %.1f commands/s per instance; %s"
                   % (passed, limited, d_low, d_up, lower, upper, RATE, STARTUP_ALLOWANCE,
                      per_instance, refused_by, commands_per_s, summary))
        say("tier: " + figures)

        # The load was well over the limit: 3x the rate.
        self.assertGreater(len(records), 2.5 * RATE * d_low, "the load fell short; " + figures)
        self.assertGreater(limited, passed, "the load did not saturate the limit; " + figures)
        # The sum over the three instances converges on the rate.
        self.assertGreaterEqual(passed, lower, "fewer than the rate passed; " + figures)
        self.assertLessEqual(passed, upper, "more than the rate passed; " + figures)
        # Each instance served part of the 200s, and counted its own 429s.
        self.assertTrue(all(n > 0 for n in per_instance),
                        "not every instance served: " + figures)
        self.assertTrue(wait_until(lambda: sum(ok_served(lb) - b for lb, b in
                                               zip(lbs, ok_before)) == passed, 3),
                        "lb_requests_total{code=\"200\"} of the instances do not add up to the "
                        "200s the clients got; " + figures)
        self.assertEqual(sum(refused(lb) - b for lb, b in zip(lbs, refused_before)), limited,
                         "lb_rate_limited_total{listener=\"public\",route=\"api\"} of the "
                         "instances do not add up to the 429s; " + figures)
        # The keys in Redis.
        self.assertEqual(redis.cmd("TYPE", "lb:ratelimit"), "hash")
        self.assertEqual(redis.cmd("HLEN", "lb:ratelimit"), INSTANCES,
                         "lb:ratelimit: %r" % redis.cmd("HGETALL", "lb:ratelimit"))
        self.assertEqual(redis.cmd("EXISTS", "lb:ratelimit:seed"), 1)
        # Redis's budget: rate sync + override polling, whatever the traffic.
        self.assertLessEqual(commands_per_s, COMMANDS_PER_S_MAX,
                             "Redis got %d commands in %.2f s from %d instances; %s"
                             % (calls1 - calls0 - 1, t_info1 - t_info0, INSTANCES, figures))
        for lb in lbs:
            self.assertEqual(shared(lb), 1)

    def redis_connections_of(self, redis, pid):
        """The local ports of `pid`'s connections to `redis` (ss -tnp)."""
        out = subprocess.run(["ss", "-Htnp", "dst", "127.0.0.1:%d" % redis.port],
                             capture_output=True, text=True, timeout=10).stdout
        return [line.split()[3] for line in out.splitlines() if "pid=%d," % pid in line]

    def test_limit_still_holds_after_redis_loses_its_data(self):
        """Redis emptied (FLUSHALL) while the instances stay connected, then one
        instance's connection cut: it sets a new seed when it reconnects; the
        others see the seed change and hash with it too, so the limit still
        holds for the tier (hashed apart, each would let the rate through)."""
        redis, body, lbs, haproxy = self.start_tier()
        self.wait_shared(lbs, 1, 3.0, "before the flush")
        old_seed = redis.cmd("GET", "lb:ratelimit:seed")
        self.assertTrue(old_seed)

        redis.cmd("FLUSHALL")
        ports = self.redis_connections_of(redis, lbs[0].proc.pid)
        self.assertTrue(ports, "no connection of instance 1 to Redis found")
        for local in ports:
            redis.cmd("CLIENT", "KILL", "ADDR", local)
        self.assertTrue(wait_until(lambda: redis.cmd("GET", "lb:ratelimit:seed"), 3),
                        "no seed set again")
        new_seed = redis.cmd("GET", "lb:ratelimit:seed")
        self.assertNotEqual(new_seed, old_seed)
        self.wait_shared(lbs, 1, 3.0, "after the flush")
        time.sleep(1.0)  # every instance's poll (250 ms) has seen the new seed

        duration = 5.0
        load = self.load(haproxy.port, self.CLIENTS, self.PER_CLIENT, source=CLIENT_IP,
                         expect_body=body)
        load.start(duration)
        self.assertTrue(load.join(duration + 15), "a client thread hangs")
        records = load.window()
        summary = self.assert_answers(records, "tier load after the flush")
        passed = tally(records).get(200, 0)
        d_up = max(r.answered for r in records) - min(r.sent for r in records)
        d_low = max(r.sent for r in records) - min(r.answered for r in records)
        lower = int(RATE * d_low * 0.92)
        upper = int(RATE * d_up * 1.08) + STARTUP_ALLOWANCE
        figures = ("%d passed in a window of %.2f..%.2f s (allowed %d..%d); seed %s -> %s; %s"
                   % (passed, d_low, d_up, lower, upper, old_seed, new_seed, summary))
        say("after the flush: " + figures)
        self.assertGreaterEqual(passed, lower, "fewer than the rate passed; " + figures)
        self.assertLessEqual(passed, upper, "more than the rate passed (the instances hash "
                             "apart?); " + figures)


# ---------------------------------------------------------------------------
# 2: Redis dies and comes back

@needs_redis
class RedisGoesAway(ClusterRateLimitCase):
    CLIENTS, PER_CLIENT = 6, 50
    PHASE = 3.0
    WARMUP = 0.5   # s of load before the first phase counts
    SETTLE = 0.3   # s after the gauge turns 1 again before the last phase counts

    def test_fallback_to_local_share_and_back(self):
        redis = self.redis()
        addr, body = self.backend()
        lbs = [self.lb(rl_config(addr, redis)) for _ in range(INSTANCES)]
        lb1 = lbs[0]
        self.wait_shared(lbs, 1, 3.0, "before the load")
        refused_before = refused(lb1)
        errors_before = redis_errors(lb1, redis)
        self.assertIsNotNone(errors_before, "no lb_cluster_redis_errors_total{redis=\"%s\"}"
                             % redis.addr)

        load = self.load(lb1.port(), self.CLIENTS, self.PER_CLIENT, proxy_line=proxy_v1(lb1),
                         expect_body=body)
        t0 = load.start(40.0)  # stopped below; 40 s at most whatever happens
        phases = {}
        try:
            # (A) shared: instance 1 alone uses the limit, so it gets all of it.
            a0 = t0 + self.WARMUP
            time.sleep(max(0.0, a0 + self.PHASE - time.monotonic()))
            a1 = time.monotonic()
            phases["A"] = (a0, a1)

            redis.kill()
            took_down = self.wait_shared([lb1], 0, FALLBACK_WITHIN, "Redis killed")
            wait_until(lambda: redis_errors(lb1, redis) > errors_before, 1.0)
            errors_down = redis_errors(lb1, redis)

            # (B) fallen back: rate / instances on instance 1's own.
            b0 = time.monotonic()
            time.sleep(self.PHASE)
            b1 = time.monotonic()
            phases["B"] = (b0, b1)
            self.assertEqual(shared(lb1), 0, "the gauge left 0 while Redis was down")

            redis.restart()
            took_up = self.wait_shared([lb1], 1, FALLBACK_WITHIN, "Redis restarted")
            t_up = time.monotonic()

            # (C) shared again.
            c0 = t_up + self.SETTLE
            time.sleep(max(0.0, c0 + self.PHASE - time.monotonic()))
            c1 = time.monotonic()
            phases["C"] = (c0, c1)
        finally:
            load.stop()
        self.assertTrue(load.join(10), "a client thread hangs")
        everything = load.window()
        summary = self.assert_answers(everything, "instance 1, all phases",
                                      max_answer=MAX_ANSWER_S)
        say("redis away: %s; gauge 0 after %.2f s, 1 again after %.2f s; errors %r -> %r"
            % (summary, took_down, took_up, errors_before, errors_down))

        # Redis going away was noticed and counted.
        self.assertIsNotNone(errors_down)
        self.assertGreater(errors_down, errors_before,
                           "lb_cluster_redis_errors_total did not rise after the kill")

        # What passed in each phase: the rate x the phase's length.
        expect = {"A": (RATE, 0.10), "B": (RATE / INSTANCES, 0.20), "C": (RATE, 0.10)}
        figures = {}
        for name, (rate, tolerance) in expect.items():
            t_from, t_to = phases[name]
            records = load.window(t_from, t_to)
            passed = tally(records).get(200, 0)
            expected = rate * (t_to - t_from)
            figures[name] = (len(records), passed, expected)
            say("phase %s: %d passed of %d sent in %.2f s, expected %.0f +-%d%%"
                % (name, passed, len(records), t_to - t_from, expected, tolerance * 100))
        report = "; ".join("phase %s: %d passed of %d sent, expected %.0f"
                           % (name, passed, sent, expected)
                           for name, (sent, passed, expected) in figures.items())
        for name, (rate, tolerance) in expect.items():
            sent, passed, expected = figures[name]
            self.assertGreater(sent, 2.5 * expected,
                               "phase %s: the load fell short; %s" % (name, report))
            self.assertGreaterEqual(passed, expected * (1 - tolerance),
                                    "phase %s: too few passed; %s" % (name, report))
            self.assertLessEqual(passed, expected * (1 + tolerance),
                                 "phase %s: too many passed; %s" % (name, report))

        self.assertEqual(refused(lb1) - refused_before, tally(everything).get(429, 0),
                         "lb_rate_limited_total does not match the 429s; " + summary)
        # The idle instances noticed too, and are back as well.
        self.wait_shared(lbs, 1, FALLBACK_WITHIN, "every instance after Redis came back")


# ---------------------------------------------------------------------------
# 3: on_redis_error: open

@needs_redis
class OpenOnRedisError(ClusterRateLimitCase):
    CLIENTS, PER_CLIENT, DURATION = 4, 50, 2.0

    def run_load(self, lb, body, what):
        load = self.load(lb.port(), self.CLIENTS, self.PER_CLIENT, proxy_line=proxy_v1(lb),
                         expect_body=body)
        load.start(self.DURATION)
        self.assertTrue(load.join(self.DURATION + 15), "a client thread hangs")
        load.close()
        records = load.window()
        summary = self.assert_answers(records, what, max_answer=MAX_ANSWER_S)
        say("open: " + summary)
        return records, summary

    def test_everything_passes_while_redis_is_down(self):
        redis = self.redis()
        addr, body = self.backend()
        lb = self.lb(rl_config(addr, redis, on_redis_error="open", instances=None))
        self.wait_shared([lb], 1, 3.0, "before the load")

        # Redis up: limited.
        records, summary = self.run_load(lb, body, "Redis up")
        counts = tally(records)
        d_up = max(r.answered for r in records) - min(r.sent for r in records)
        upper = int(RATE * d_up * 1.10) + STARTUP_ALLOWANCE
        self.assertGreater(counts.get(429, 0), 0, "not limited with Redis up; " + summary)
        self.assertLessEqual(counts.get(200, 0), upper,
                             "more than the rate passed with Redis up (at most %d); %s"
                             % (upper, summary))

        # Redis down: open.
        errors_before = redis_errors(lb, redis)
        self.assertIsNotNone(errors_before, "no lb_cluster_redis_errors_total{redis=\"%s\"}"
                             % redis.addr)
        redis.kill()
        self.wait_shared([lb], 0, FALLBACK_WITHIN, "Redis killed")
        wait_until(lambda: redis_errors(lb, redis) > errors_before, 1.0)
        self.assertGreater(redis_errors(lb, redis), errors_before,
                           "lb_cluster_redis_errors_total did not rise after the kill")
        refused_before = refused(lb)
        records, summary = self.run_load(lb, body, "Redis down, on_redis_error: open")
        counts = tally(records)
        self.assertEqual(counts.get(429, 0), 0, "refused with on_redis_error: open; " + summary)
        d_low = max(r.sent for r in records) - min(r.answered for r in records)
        self.assertGreater(counts.get(200, 0), 1.5 * RATE * d_low,
                           "the load fell short (all of it passes, so 200/s); " + summary)
        self.assertEqual(refused(lb), refused_before)
        self.assertEqual(shared(lb), 0, "the gauge left 0 while Redis was down")


# ---------------------------------------------------------------------------
# 4: lb check

CHECK_BASE = """admin: { listen: 127.0.0.1:0 }
cluster:
  redis: 127.0.0.1:6379
  instances: 3
listeners:
  - name: public
    listen: 127.0.0.1:0
    proxy_protocol: true
    routes:
      - name: api
        match: { path_prefix: / }
        pool: web
        rate_limit:
          key: source_ip
          rate: 100/s
          burst: 0
          scope: cluster
          on_redis_error: local
pools:
  web:
    backends: [ { address: 127.0.0.1:9001 } ]
"""

_LOCATED = re.compile(r"lb\.yaml:(\d+):(\d+): (.*)")


def edit(text, old, new):
    assert old in text, old
    return text.replace(old, new, 1)


def place(text, needle, of=None):
    """(line, column) of `of` (default `needle`) on the first line holding `needle`."""
    lines = text.split("\n")
    i = next(k for k, l in enumerate(lines) if needle in l)
    return i + 1, lines[i].index(of or needle) + 1


class Check(unittest.TestCase):
    def refused_at(self, what, text, places, words):
        """lb check refuses `text` with an error at one of `places` (line, col)
        whose message holds every one of `words`."""
        code, out, _ = lb_check(text)
        self.assertEqual(code, 1, "%s: accepted: %s" % (what, out))
        located = [(int(m.group(1)), int(m.group(2)), m.group(3)) for m in _LOCATED.finditer(out)]
        self.assertTrue(located, "%s: no FILE:LINE:COL message: %s" % (what, out))
        here = [msg for l, c, msg in located if (l, c) in places]
        self.assertTrue(here, "%s: expected an error at one of %s, got %s"
                        % (what, sorted(places), out))
        for w in words:
            self.assertIn(w, here[0], "%s: %s" % (what, out))
        say("check %s: %s" % (what, out.strip().splitlines()[0]))

    def test_refused(self):
        no_cluster = edit(CHECK_BASE, "cluster:\n  redis: 127.0.0.1:6379\n  instances: 3\n", "")
        self.refused_at("scope cluster without a cluster block", no_cluster,
                        {place(no_cluster, "scope: cluster", "cluster")}, ["cluster"])

        for with_local in (True, False):
            text = edit(CHECK_BASE, "  instances: 3\n", "")
            if not with_local:  # local is the default
                text = edit(text, "          on_redis_error: local\n", "")
            places = {place(text, "scope: cluster", "cluster"), place(text, "scope: cluster"),
                      place(text, "cluster:")}
            if with_local:
                places |= {place(text, "on_redis_error: local", "local"),
                           place(text, "on_redis_error: local")}
            self.refused_at("local fallback without instances (on_redis_error %s)"
                            % ("said" if with_local else "by default"), text, places,
                            ["instances"])

        bogus = edit(CHECK_BASE, "on_redis_error: local", "on_redis_error: bogus")
        self.refused_at("on_redis_error bogus", bogus,
                        {place(bogus, "on_redis_error: bogus", "bogus")},
                        ["on_redis_error", "bogus"])

        local_scope = edit(CHECK_BASE, "scope: cluster", "scope: local")
        self.refused_at("on_redis_error with scope local", local_scope,
                        {place(local_scope, "on_redis_error: local", "local"),
                         place(local_scope, "on_redis_error: local")}, ["on_redis_error"])

        zero = edit(CHECK_BASE, "instances: 3", "instances: 0")
        self.refused_at("instances 0", zero, {place(zero, "instances: 0", "0")}, ["instances"])

        # The cluster block's on_redis_error is every cluster limit's default;
        # a route that says local still needs instances.
        route_local = edit(edit(CHECK_BASE, "  instances: 3\n", "  on_redis_error: open\n"),
                           "on_redis_error: local", "on_redis_error: local")
        self.refused_at("route local under a cluster open, without instances", route_local,
                        {place(route_local, "scope: cluster", "cluster")}, ["instances"])
        cluster_bogus = edit(CHECK_BASE, "  instances: 3\n", "  on_redis_error: sometimes\n")
        self.refused_at("cluster on_redis_error bogus", cluster_bogus,
                        {place(cluster_bogus, "on_redis_error: sometimes", "sometimes")},
                        ["on_redis_error", "sometimes"])

    def test_accepted(self):
        cases = {
            "scope cluster, instances 3": CHECK_BASE,
            "scope cluster, instances 3, on_redis_error by default":
                edit(CHECK_BASE, "          on_redis_error: local\n", ""),
            "on_redis_error open without instances":
                edit(edit(CHECK_BASE, "  instances: 3\n", ""),
                     "on_redis_error: local", "on_redis_error: open"),
            "cluster on_redis_error open, the route says nothing, no instances":
                edit(edit(CHECK_BASE, "  instances: 3\n", "  on_redis_error: open\n"),
                     "          on_redis_error: local\n", ""),
            "instances with a local limit":
                edit(edit(CHECK_BASE, "          on_redis_error: local\n", ""),
                     "scope: cluster", "scope: local"),
        }
        for what, text in cases.items():
            with self.subTest(what):
                code, out, _ = lb_check(text)
                self.assertEqual((code, out.strip()), (0, "ok"), "%s: %s" % (what, out))


if __name__ == "__main__":
    harness.main()
