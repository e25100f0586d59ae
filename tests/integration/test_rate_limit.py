#!/usr/bin/env python3
"""Routes' rate limits (`rate_limit: {key, rate, burst, scope, max_keys}`), as
clients, the origin and the admin port see them, against the real lb:

- burst then refusal: 20 requests on one keep-alive connection to a route
  limited to 2/s burst 5: exactly the first 6 are 200, the other 14 get
  `429 Too Many Requests` (text body, `Retry-After: 1`, `RateLimit-Policy:
  2;w=1;burst=5`, `RateLimit: limit=2, remaining=0, reset=1`), the
  connection stays open, the origin sees only the 6; the catch-all route is
  not limited; pipelined requests get their answers in order;
- sustained: 12 keep-alive connections to 2 workers (both busy, by their
  threads' CPU time) send as fast as they can for ~3 s against 50/s burst
  25: the 200s number burst + 1 + rate x D (D measured around the first and
  last request) within a request or two, and the origin saw exactly those;
- keys: header:X-Api-Key and cookie:session keep one bucket per value, and
  requests without them share one (the empty key); key: route counts
  everybody together (clients bound to 127.0.0.1 and 127.0.0.2), source_ip
  keeps those two apart; behind `proxy_protocol: true` the address from the
  PROXY header is the key; a `respond` route is limited too;
- Retry-After is honoured: 30/min (`RateLimit-Policy: 30;w=60`) refuses the
  second request with Retry-After 2, counts down, and after waiting that long
  a request passes;
- metrics: lb_rate_limited_total{listener, route} equals the 429s seen, with
  the route's name as label, "#INDEX" for an unnamed route; with max_keys: 1
  (two slots) a third key passes untracked, counted in
  lb_rate_limit_untracked_total;
- reload: an exhausted key stays limited after reloading the same config (and
  after routes are added before a named route); a changed rate, or a renamed
  route, starts with a fresh bucket;
- lb check refuses rate 10/hour, 0/s, abc, 1000001/s, burst -1, scope cluster
  without a cluster block, on_redis_error on a local limit, scope global, key ip, a missing
  rate and two routes of one listener with the same name, each at
  FILE:LINE:COL; it accepts every valid form;
- HTTP/2 (h2c, python3-h2 and curl): streams are limited the same way, the
  429 arrives on its stream with the same fields.
Figures are printed to stderr ("[rate_limit] ...").
"""

import http.client as http_client
import math
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
from harness import KeepAliveClient, RawConnection, http, lb_check  # noqa: E402

import h2.config  # noqa: E402
import h2.connection  # noqa: E402
import h2.events  # noqa: E402

SANITIZED = os.environ.get("LB_SANITIZED", "").lower() in ("1", "true", "on", "yes")
SLOW = 2.0 if SANITIZED else 1.0  # time limits stretch under sanitizers


def say(msg):
    sys.stderr.write("    [rate_limit] %s\n" % msg)
    sys.stderr.flush()


def config(origin, routes, workers=2, more_listeners=""):
    """An lb config: listener "public" with `routes` (YAML lines indented for
    the routes list), optional more listeners, pool "web" of `origin`."""
    return f"""workers: {workers}
access_log: {{ path: "off" }}
admin: {{ listen: 127.0.0.1:0 }}
listeners:
  - name: public
    listen: 127.0.0.1:0
    routes:
{routes}{more_listeners}pools:
  web:
    backends: [ {{ address: "{origin.addr}" }} ]
"""


def get(port, path, headers=None, source=None, timeout=10):
    """One GET on a fresh connection (its client end bound to `source` when
    given) -> (status, headers, body)."""
    conn = http_client.HTTPConnection("127.0.0.1", port, timeout=timeout,
                                      source_address=(source, 0) if source else None)
    try:
        conn.request("GET", path, headers=dict(headers or {}))
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def path_count(origin, path):
    return origin.stats()["paths"].get(path, 0)


def worker_cpu_ticks(pid):
    """{thread id: utime + stime in clock ticks} of lb's worker threads (named
    "lb", the main thread excepted)."""
    out = {}
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/comm" % (pid, tid)) as f:
                comm = f.read().strip()
            with open("/proc/%d/task/%s/stat" % (pid, tid)) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if comm == "lb" and int(tid) != pid:
            out[int(tid)] = int(fields[11]) + int(fields[12])
    return out


def wait_reloaded(testcase, lb, before):
    testcase.assertTrue(harness.wait_until(
        lambda: lb.metric("lb_config_reloads_total", result="success") > before,
        timeout=10 * SLOW), "the reload did not succeed: %s" % lb.stderr_text()[-2000:])


class LimitAsserts:
    def assert_limited(self, status, h, body, limit, window, burst, retry_after=None):
        """A 429 from lb's rate limit with exactly the documented fields.
        `h`: an HTTPMessage, or a dict of lower-case names (HTTP/2).
        Returns the Retry-After value (int)."""
        def all_of(name):
            if isinstance(h, dict):
                v = h.get(name.lower())
                return [] if v is None else [v]
            return h.get_all(name) or []

        self.assertEqual(status, 429, "expected 429, got %d %r" % (status, body[:200]))
        ra = all_of("Retry-After")
        self.assertEqual(len(ra), 1, "Retry-After fields: %r" % ra)
        self.assertRegex(ra[0], r"^[1-9][0-9]*$", "Retry-After is not whole seconds >= 1")
        if retry_after is not None:
            self.assertEqual(int(ra[0]), retry_after, "Retry-After")
        policy = "%d;w=%d" % (limit, window) + (";burst=%d" % burst if burst else "")
        self.assertEqual(all_of("RateLimit-Policy"), [policy])
        self.assertEqual(all_of("RateLimit"), ["limit=%d, remaining=0, reset=%s" % (limit, ra[0])])
        self.assertEqual(all_of("X-Origin"), [], "a 429 came from the origin")
        ctype = all_of("Content-Type")
        self.assertTrue(ctype and ctype[0].startswith("text/plain"), "Content-Type %r" % ctype)
        self.assertTrue(body.strip(), "the 429 has no body")
        self.assertIn(b"Too Many Requests", body, body)
        return int(ra[0])


# ---------------------------------------------------------------------------
# 1: a burst, then refusals

class Burst(harness.TestCase, LimitAsserts):
    RATE, BURST = 2, 5

    def setUp(self):
        self.web = self.origin("web")
        self.lb_ = self.lb(config(self.web, f"""      - name: api
        match: {{ path_prefix: /api/ }}
        pool: web
        rate_limit: {{ key: source_ip, rate: {self.RATE}/s, burst: {self.BURST} }}
      - pool: web
"""))

    def test_burst_then_429_on_one_keep_alive_connection(self):
        port = self.lb_.port()
        results = []
        with KeepAliveClient(port) as ka:
            start = time.monotonic()
            for i in range(20):
                status, h, body = ka.request("GET", "/api/r%d" % i)
                results.append((status, h, body))
            elapsed = time.monotonic() - start
            connects = ka.connects
        statuses = [s for s, _, _ in results]
        passed = [i for i, s in enumerate(statuses) if s == 200]
        say("burst: 20 requests in %.0f ms: %s" % (elapsed * 1000, statuses))
        # A refill every 1/rate s: none while the 20 requests take < 0.5 s.
        refills = math.floor(elapsed * self.RATE)
        self.assertTrue(self.BURST + 1 <= len(passed) <= self.BURST + 1 + refills,
                        "%d of 20 passed in %.3f s (burst %d, rate %d/s): %s"
                        % (len(passed), elapsed, self.BURST, self.RATE, statuses))
        self.assertEqual(statuses[:self.BURST + 1], [200] * (self.BURST + 1), statuses)
        if refills == 0:
            self.assertEqual(statuses[self.BURST + 1:], [429] * (20 - self.BURST - 1), statuses)
        for status, h, body in results:
            if status == 200:
                self.assertEqual(h["X-Origin"], "web")
            else:
                self.assert_limited(status, h, body, self.RATE, 1, self.BURST, retry_after=1)
        self.assertEqual(connects, 1, "a 429 closed the keep-alive connection")
        # The origin saw exactly the requests that got a 200.
        paths = self.web.stats()["paths"]
        seen = {p for p in paths if p.startswith("/api/")}
        self.assertEqual(seen, {"/api/r%d" % i for i in passed}, paths)
        self.assertTrue(all(paths[p] == 1 for p in seen), paths)
        # The catch-all route has no limit.
        with KeepAliveClient(port) as ka:
            other = [ka.request("GET", "/other")[0] for _ in range(30)]
        self.assertEqual(other, [200] * 30)
        self.assertEqual(path_count(self.web, "/other"), 30)

    def test_pipelined_requests_answered_in_order(self):
        port = self.lb_.port()
        n = 12
        with RawConnection(port, timeout=10 * SLOW) as c:
            c.send(b"".join(b"GET /api/p%d HTTP/1.1\r\nHost: t\r\n\r\n" % i for i in range(n)))
            answers = [c.read_response() for _ in range(n)]
        statuses = [s for s, _, _ in answers]
        say("pipelined: %s" % statuses)
        self.assertEqual(statuses[:self.BURST + 1], [200] * (self.BURST + 1), statuses)
        self.assertEqual(statuses[self.BURST + 1:], [429] * (n - self.BURST - 1), statuses)
        for status, headers, body in answers:
            h = {k.lower(): v for k, v in headers}
            if status == 200:
                self.assertEqual(h.get("x-origin"), "web")
                self.assertEqual(body, b"Hello from web\n")
            else:
                self.assert_limited(status, h, body, self.RATE, 1, self.BURST, retry_after=1)
        paths = self.web.stats()["paths"]
        self.assertEqual({p for p in paths if p.startswith("/api/")},
                         {"/api/p%d" % i for i in range(self.BURST + 1)}, paths)


# ---------------------------------------------------------------------------
# 2: sustained load over 2 workers

class Sustained(harness.TestCase):
    RATE, BURST = 50, 25
    THREADS, DURATION = 12, 3.0

    def test_rate_exact_across_workers(self):
        web = self.origin("web", log=False)
        lb = self.lb(config(web, f"""      - name: api
        match: {{ path_prefix: /api/ }}
        pool: web
        rate_limit: {{ key: source_ip, rate: {self.RATE}/s, burst: {self.BURST} }}
      - pool: web
""", workers=2))
        self.assertEqual(lb.workers, 2)
        port = lb.port()
        cpu_before = worker_cpu_ticks(lb.pid)
        self.assertEqual(len(cpu_before), 2, "lb's worker threads: %r" % cpu_before)
        records = []  # (sent, received, status)
        errors = []
        lock = threading.Lock()
        go = threading.Event()
        clients = [KeepAliveClient(port, timeout=10) for _ in range(self.THREADS)]
        for c in clients:  # connect first: every connection open when the clock starts
            c.conn.connect()

        def worker(c):
            local = []
            try:
                go.wait()
                stop = time.monotonic() + self.DURATION
                while time.monotonic() < stop:
                    t0 = time.monotonic()
                    status, _, _ = c.request("GET", "/api/s")
                    local.append((t0, time.monotonic(), status))
            except Exception as e:
                with lock:
                    errors.append(repr(e))
            finally:
                with lock:
                    records.extend(local)

        threads = [threading.Thread(target=worker, args=(c,), daemon=True) for c in clients]
        for t in threads:
            t.start()
        go.set()
        for t in threads:
            t.join(self.DURATION + 30)
        for c in clients:
            c.close()
        self.assertFalse(any(t.is_alive() for t in threads), "a client thread hangs")
        cpu = {tid: ticks - cpu_before.get(tid, 0)
               for tid, ticks in worker_cpu_ticks(lb.pid).items()}
        self.assertEqual(errors, [])
        statuses = {}
        for _, _, s in records:
            statuses[s] = statuses.get(s, 0) + 1
        self.assertEqual(set(statuses) - {200, 429}, set(), statuses)
        passed = statuses.get(200, 0)
        # Every request reached lb between its send and its answer, so lb's
        # span lies between these two.
        d_up = max(r for _, r, _ in records) - min(s for s, _, _ in records)
        d_low = max(s for s, _, _ in records) - min(r for _, r, _ in records)
        upper = math.floor(self.RATE * d_up) + self.BURST + 2
        lower = math.floor(self.RATE * d_low) + self.BURST + 1 - 2
        say("sustained: %d requests (%.0f/s) on %d connections, %d passed; D in [%.3f, %.3f] s, "
            "allowed [%d, %d]; workers' CPU ticks %s" % (
                len(records), len(records) / d_up, self.THREADS, passed, d_low, d_up, lower,
                upper, sorted(cpu.values())))
        # Both workers served connections (SO_REUSEPORT spreads them), so both
        # took from the one bucket.
        self.assertTrue(len(cpu) == 2 and min(cpu.values()) >= 2,
                        "not both workers served the load: CPU ticks %r" % cpu)
        self.assertGreater(statuses.get(429, 0), passed, "the load did not saturate the limit")
        self.assertLessEqual(passed, upper, "more passed than rate x D + burst + 1")
        self.assertGreaterEqual(passed, lower, "fewer passed than rate x D + burst + 1")
        self.assertTrue(harness.wait_until(lambda: path_count(web, "/api/s") == passed, 5),
                        "the origin saw %d, clients got %d 200s" % (path_count(web, "/api/s"), passed))
        self.assertEqual(lb.metric("lb_rate_limited_total", listener="public", route="api"),
                         statuses.get(429, 0))


# ---------------------------------------------------------------------------
# 3: keys

class Keys(harness.TestCase, LimitAsserts):
    def setUp(self):
        self.web = self.origin("web")
        self.lb_ = self.lb(config(self.web, """      - name: by-header
        match: { path_prefix: /h/ }
        pool: web
        rate_limit: { key: "header:X-Api-Key", rate: 1/min, burst: 1 }
      - name: by-cookie
        match: { path_prefix: /c/ }
        pool: web
        rate_limit: { key: "cookie:session", rate: 1/min, burst: 1 }
      - name: everyone
        match: { path_prefix: /r/ }
        pool: web
        rate_limit: { key: route, rate: 1/min, burst: 1 }
      - name: by-ip
        match: { path_prefix: /ip/ }
        pool: web
        rate_limit: { key: source_ip, rate: 1/min, burst: 1 }
      - name: fixed
        match: { path_prefix: /fixed/ }
        respond: { status: 200, body: "fixed", content_type: text/plain }
        rate_limit: { key: source_ip, rate: 1/min }
      - pool: web
""", more_listeners="""  - name: behind
    listen: 127.0.0.1:0
    proxy_protocol: true
    routes:
      - match: { path_prefix: / }
        pool: web
        rate_limit: { key: source_ip, rate: 1/min }
"""))
        self.port = self.lb_.port()

    def statuses(self, path, n, headers=None, source=None):
        out = []
        for _ in range(n):
            status, h, body = get(self.port, path, headers=headers, source=source)
            if status == 429:
                self.assert_limited(status, h, body, 1, 60, 0 if path.startswith("/fixed/") else 1)
            out.append(status)
        return out

    def test_header_key(self):
        self.assertEqual(self.statuses("/h/a", 3, {"X-Api-Key": "A"}), [200, 200, 429])
        # Another value: its own bucket; A stays limited.
        self.assertEqual(self.statuses("/h/b", 3, {"X-Api-Key": "B"}), [200, 200, 429])
        self.assertEqual(self.statuses("/h/a", 1, {"X-Api-Key": "A"}), [429])
        # Without the header: one shared bucket (the empty key), whatever the
        # connection or address.
        self.assertEqual(self.statuses("/h/n", 1), [200])
        self.assertEqual(self.statuses("/h/n", 1, source="127.0.0.2"), [200])
        self.assertEqual(self.statuses("/h/n", 1, source="127.0.0.3"), [429])
        self.assertEqual(self.statuses("/h/n", 1), [429])
        self.assertEqual(self.statuses("/h/c", 2, {"X-Api-Key": "C"}), [200, 200])
        self.assertEqual(path_count(self.web, "/h/a"), 2)
        self.assertEqual(path_count(self.web, "/h/b"), 2)
        self.assertEqual(path_count(self.web, "/h/n"), 2)

    def test_cookie_key(self):
        self.assertEqual(self.statuses("/c/a", 3, {"Cookie": "theme=dark; session=A"}),
                         [200, 200, 429])
        self.assertEqual(self.statuses("/c/b", 3, {"Cookie": "session=B"}), [200, 200, 429])
        self.assertEqual(self.statuses("/c/n", 3, {"Cookie": "theme=dark"}), [200, 200, 429])
        self.assertEqual(self.statuses("/c/n", 1), [429])  # no Cookie at all: the same empty key

    def test_route_key_counts_everybody(self):
        self.assertEqual(self.statuses("/r/x", 1, source="127.0.0.1"), [200])
        self.assertEqual(self.statuses("/r/x", 1, source="127.0.0.2", headers={"X-Api-Key": "Z"}),
                         [200])
        self.assertEqual(self.statuses("/r/x", 1, source="127.0.0.2"), [429])
        self.assertEqual(self.statuses("/r/y", 1, source="127.0.0.3"), [429])
        self.assertEqual(self.statuses("/r/y", 1, source="127.0.0.1"), [429])

    def test_source_ip_keeps_addresses_apart(self):
        self.assertEqual(self.statuses("/ip/x", 3, source="127.0.0.1"), [200, 200, 429])
        self.assertEqual(self.statuses("/ip/x", 3, source="127.0.0.2"), [200, 200, 429])
        self.assertEqual(self.statuses("/ip/x", 1, source="127.0.0.3"), [200])
        self.assertEqual(path_count(self.web, "/ip/x"), 5)

    def test_respond_route_is_limited_too(self):
        status, h, body = get(self.port, "/fixed/x")
        self.assertEqual((status, body), (200, b"fixed"))
        self.assert_limited(*get(self.port, "/fixed/x"), limit=1, window=60, burst=0)

    def test_proxy_protocol_address_is_the_key(self):
        port = self.lb_.port("behind")

        def via(client_ip):
            with RawConnection(port) as c:
                c.send(b"PROXY TCP4 %s 192.0.2.1 40000 80\r\n" % client_ip.encode())
                c.send(b"GET /pp HTTP/1.1\r\nHost: t\r\n\r\n")
                status, headers, body = c.read_response()
                if status == 429:
                    self.assert_limited(status, {k.lower(): v for k, v in headers}, body, 1, 60, 0)
                return status

        self.assertEqual(via("203.0.113.9"), 200)
        self.assertEqual(via("203.0.113.9"), 429)
        self.assertEqual(via("203.0.113.10"), 200)  # the same TCP peer, another client
        self.assertEqual(via("203.0.113.10"), 429)
        self.assertEqual(path_count(self.web, "/pp"), 2)


# ---------------------------------------------------------------------------
# 4: Retry-After

class RetryAfter(harness.TestCase, LimitAsserts):
    def test_waiting_retry_after_lets_a_request_pass(self):
        web = self.origin("web")
        lb = self.lb(config(web, """      - name: slow
        match: { path_prefix: /api/ }
        pool: web
        rate_limit: { key: source_ip, rate: 30/min }
"""))
        port = lb.port()
        t_send0 = time.monotonic()
        status, _, _ = get(port, "/api/a")
        t_recv0 = time.monotonic()
        self.assertEqual(status, 200)
        # One request per 2 s, no burst: the next one waits ~2 s.
        ra = self.assert_limited(*get(port, "/api/a"), limit=30, window=60, burst=0)
        self.assertEqual(ra, 2, "Retry-After right after the first request")
        time.sleep(1.2)
        t_send = time.monotonic()
        status, h, body = get(port, "/api/a")
        t_recv = time.monotonic()
        if t_recv - t_send0 < 2.0:  # lb saw it less than 2 s after the first one
            ra = self.assert_limited(status, h, body, 30, 60, 0)
            if t_send - t_recv0 > 1.0:  # and more than 1 s after it
                self.assertEqual(ra, 1, "Retry-After counts down")
        else:
            say("retry-after: the machine is slow (%.2f s), no countdown check" % (t_recv - t_send0))
            ra = 1 if status == 200 else int(h["Retry-After"])
        last_429 = time.monotonic()
        say("retry-after: 2 at once, then %s %.2f s after the first request"
            % ("200" if status == 200 else "429 with Retry-After %d" % ra, t_send - t_recv0))
        if status != 200:
            time.sleep(max(0.0, ra - (time.monotonic() - last_429)))
            status, h, body = get(port, "/api/a")
            self.assertEqual((status, h["X-Origin"]), (200, "web"),
                             "Retry-After: %d was not enough: %d %r" % (ra, status, body[:200]))
        self.assertEqual(path_count(web, "/api/a"), 2)


# ---------------------------------------------------------------------------
# 5: metrics

class Metrics(harness.TestCase, LimitAsserts):
    def test_counters_by_listener_and_route(self):
        web = self.origin("web", log=False)
        lb = self.lb(config(web, """      - name: api
        match: { path_prefix: /api/ }
        pool: web
        rate_limit: { rate: 1/min, burst: 2 }
      - match: { path_prefix: /anon/ }
        pool: web
        rate_limit: { rate: 1/min }
      - name: few
        match: { path_prefix: /few/ }
        pool: web
        rate_limit: { key: "header:X-Key", rate: 1/min, max_keys: 1 }
      - pool: web
""", more_listeners="""  - name: other
    listen: 127.0.0.1:0
    routes:
      - match: { path_prefix: / }
        pool: web
        rate_limit: { key: route, rate: 1/min }
"""))
        text = lb.metrics_text()
        self.assertRegex(text, r"(?m)^# TYPE lb_rate_limited_total counter$")
        self.assertRegex(text, r"(?m)^# TYPE lb_rate_limit_untracked_total counter$")
        labels = sorted((l["listener"], l["route"]) for n, l, _ in harness.parse_metrics(text)
                        if n == "lb_rate_limited_total")
        self.assertEqual(labels, [("other", "#0"), ("public", "#1"), ("public", "api"),
                                  ("public", "few")], text)
        for name in ("lb_rate_limited_total", "lb_rate_limit_untracked_total"):
            for listener, route in labels:
                self.assertEqual(harness.metric_value(text, name, listener=listener, route=route), 0)

        # Fresh connections: spread over both workers.
        port = lb.port()
        seen = [get(port, "/api/x")[0] for _ in range(10)]
        self.assertEqual(seen, [200] * 3 + [429] * 7)
        seen_anon = [get(port, "/anon/x")[0] for _ in range(4)]
        self.assertEqual(seen_anon, [200] + [429] * 3)
        other = [get(lb.port("other"), "/y")[0] for _ in range(2)]
        self.assertEqual(other, [200, 429])
        # max_keys 1: a table of 2 slots (twice max_keys); A and B hold them,
        # C passes untracked (twice), A is limited.
        few = [get(port, "/few/x", headers={"X-Key": k})[0] for k in ("A", "B", "C", "C", "A")]
        self.assertEqual(few, [200, 200, 200, 200, 429])

        text = lb.metrics_text()
        say("metrics: " + "; ".join(line for line in text.splitlines()
                                    if line.startswith("lb_rate_limit")))
        m = lambda name, **l: harness.metric_value(text, name, **l)  # noqa: E731
        self.assertEqual(m("lb_rate_limited_total", listener="public", route="api"),
                         seen.count(429))
        self.assertEqual(m("lb_rate_limited_total", listener="public", route="#1"),
                         seen_anon.count(429))
        self.assertEqual(m("lb_rate_limited_total", listener="other", route="#0"),
                         other.count(429))
        self.assertEqual(m("lb_rate_limited_total", listener="public", route="few"), 1)
        self.assertEqual(m("lb_rate_limit_untracked_total", listener="public", route="few"), 2)
        for route in ("api", "#1"):
            self.assertEqual(m("lb_rate_limit_untracked_total", listener="public", route=route), 0)
        self.assertEqual(m("lb_rate_limited_total"), 7 + 3 + 1 + 1)
        # Nothing is labelled with the named route's index.
        self.assertEqual([l for n, l, _ in harness.parse_metrics(text)
                          if n.startswith("lb_rate_limit") and l.get("listener") == "public"
                          and l.get("route") in ("#0", "#2")], [])


# ---------------------------------------------------------------------------
# 6: reload

class Reload(harness.TestCase, LimitAsserts):
    def test_buckets_survive_a_reload_of_the_same_limit(self):
        web = self.origin("web", log=False)

        def cfg(rate, name="api", before=""):
            return config(web, before + f"""      - name: {name}
        match: {{ path_prefix: /api/ }}
        pool: web
        rate_limit: {{ key: source_ip, rate: {rate}/min }}
      - pool: web
""")

        lb = self.lb(cfg(1))
        port = lb.port()

        def reload(text):
            before = lb.metric("lb_config_reloads_total", result="success")
            lb.reload(text)
            wait_reloaded(self, lb, before)

        self.assertEqual(get(port, "/api/x")[0], 200)
        self.assert_limited(*get(port, "/api/x"), limit=1, window=60, burst=0)
        reload(cfg(1))  # the same file
        self.assert_limited(*get(port, "/api/x"), limit=1, window=60, burst=0)
        # A route added before it: its index moves, its name (label) stays.
        reload(cfg(1, before="""      - match: { path_prefix: /new/ }
        pool: web
"""))
        self.assert_limited(*get(port, "/api/x"), limit=1, window=60, burst=0)
        self.assertEqual(lb.metric("lb_rate_limited_total", listener="public", route="api"), 3)
        # Another rate: a fresh bucket.
        reload(cfg(2))
        self.assertEqual(get(port, "/api/x")[0], 200)
        self.assert_limited(*get(port, "/api/x"), limit=2, window=60, burst=0)
        # Another name: a fresh bucket too.
        reload(cfg(2, name="api2"))
        self.assertEqual(get(port, "/api/x")[0], 200)
        self.assert_limited(*get(port, "/api/x"), limit=2, window=60, burst=0)
        self.assertEqual(lb.metric("lb_rate_limited_total", listener="public", route="api2"), 1)


# ---------------------------------------------------------------------------
# 7: lb check

CHECK_BASE = """admin: { listen: 127.0.0.1:0 }
listeners:
  - name: public
    listen: 127.0.0.1:0
    routes:
      - name: api
        match: { path_prefix: /api/ }
        pool: web
        rate_limit:
          key: source_ip
          rate: 10/s
          burst: 5
          scope: local
          max_keys: 65536
      - pool: web
pools:
  web:
    backends: [ { address: 127.0.0.1:9001 } ]
"""

_LOCATED = re.compile(r"lb\.yaml:(\d+):(\d+): (.*)")


class Check(unittest.TestCase):
    def test_valid_forms_accepted(self):
        code, out, _ = lb_check(CHECK_BASE)
        self.assertEqual(code, 0, out)
        for rate in ("5/s", "5/sec", "5/second", "300/m", "300/min", "300/minute", "1/s",
                     "1000000/s", "1000000/min"):
            with self.subTest(rate=rate):
                code, out, _ = lb_check(CHECK_BASE.replace("rate: 10/s", "rate: " + rate))
                self.assertEqual(code, 0, out)
        for key in ('"header:X-Api-Key"', '"cookie:session"', "route"):
            with self.subTest(key=key):
                code, out, _ = lb_check(CHECK_BASE.replace("key: source_ip", "key: " + key))
                self.assertEqual(code, 0, out)
        # burst, scope and max_keys may be left out; an unnamed route beside a named one.
        minimal = CHECK_BASE.replace("          burst: 5\n          scope: local\n"
                                     "          max_keys: 65536\n", "") \
                            .replace("      - pool: web\n", "      - pool: web\n"
                                     "        rate_limit: { rate: 1/min, burst: 0 }\n")
        code, out, _ = lb_check(minimal)
        self.assertEqual(code, 0, out)

    def test_invalid_rate_limits_refused_with_their_place(self):
        def case(old, new, at, words, col_of=None, nth=0):
            # The error's place: the `nth` line holding `at`, the column of `col_of` (or `at`).
            text = CHECK_BASE.replace(old, new, 1)
            self.assertNotEqual(text, CHECK_BASE)
            lines = text.split("\n")
            line = [i for i, l in enumerate(lines) if at in l][nth] + 1
            col = lines[line - 1].index(col_of or at) + 1
            return text, line, col, words

        cases = {
            "rate 10/hour": case("rate: 10/s", "rate: 10/hour", "10/hour", ["rate", "10/hour"]),
            "rate 0/s": case("rate: 10/s", "rate: 0/s", "0/s", ["rate", "0/s"]),
            "rate abc": case("rate: 10/s", "rate: abc", "abc", ["rate", "abc"]),
            "rate 1000001/s": case("rate: 10/s", "rate: 1000001/s", "1000001/s", ["rate"]),
            "burst -1": case("burst: 5", "burst: -1", "-1", ["burst", "-1"]),
            "scope cluster without a cluster block": case(
                "scope: local", "scope: cluster", "cluster", ["cluster block", "scope: local"]),
            "on_redis_error on a local limit": case(
                "scope: local", "scope: local\n          on_redis_error: open", "on_redis_error",
                ["only with scope: cluster"], col_of="open"),
            "scope global": case("scope: local", "scope: global", "global", ["scope", "global"]),
            "key ip": case("key: source_ip", "key: ip", "key: ip", ["key", "ip"], col_of="ip"),
            "rate missing": case("          rate: 10/s\n", "", "rate_limit:", ["rate"]),
            "name twice": case("      - pool: web\n", "      - name: api\n        pool: web\n",
                               "- name: api", ["api", "twice"], col_of="name", nth=1),
        }
        for what, (text, line, col, words) in cases.items():
            with self.subTest(what):
                code, out, _ = lb_check(text)
                self.assertEqual(code, 1, "%s: accepted: %s" % (what, out))
                located = [(int(m.group(1)), int(m.group(2)), m.group(3))
                           for m in _LOCATED.finditer(out)]
                self.assertTrue(located, "%s: no FILE:LINE:COL message: %s" % (what, out))
                here = [msg for l, c, msg in located if (l, c) == (line, col)]
                if what == "name twice" and not here:  # the list item's dash is its place too
                    here = [msg for l, c, msg in located if (l, c) == (line, col - 2)]
                self.assertTrue(here, "%s: expected an error at %d:%d, got %s"
                                % (what, line, col, out))
                for w in words:
                    self.assertIn(w, here[0], "%s: %s" % (what, out))
                say("check %s: %s" % (what, out.strip().splitlines()[0]))


# ---------------------------------------------------------------------------
# 8: HTTP/2

def h2_get_all(port, paths, timeout=10.0):
    """Opens an h2c (prior knowledge) connection, sends a GET for each of
    `paths` as concurrent streams, and reads until every stream ended.
    -> [(status, {lower-case name: value}, body)] in the order of `paths`."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        sids = []
        for p in paths:
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, [(":method", "GET"), (":path", p), (":scheme", "http"),
                                    (":authority", "lb.test")], end_stream=True)
            sids.append(sid)
        sock.sendall(conn.data_to_send())
        res = {sid: {"headers": {}, "body": b"", "done": False} for sid in sids}
        deadline = time.monotonic() + timeout
        while not all(r["done"] for r in res.values()):
            if time.monotonic() > deadline:
                raise AssertionError("HTTP/2 streams not done after %.0f s" % timeout)
            data = sock.recv(65536)
            if not data:
                raise AssertionError("lb closed the HTTP/2 connection")
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    res[ev.stream_id]["headers"] = {
                        (k.decode() if isinstance(k, bytes) else k).lower():
                        (v.decode() if isinstance(v, bytes) else v) for k, v in ev.headers}
                elif isinstance(ev, h2.events.DataReceived):
                    res[ev.stream_id]["body"] += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    res[ev.stream_id]["done"] = True
                elif isinstance(ev, h2.events.StreamReset):
                    raise AssertionError("stream %d reset (%s)" % (ev.stream_id, ev.error_code))
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    raise AssertionError("GOAWAY: %s" % ev)
            out = conn.data_to_send()
            if out:
                sock.sendall(out)
        return [(int(res[s]["headers"][":status"]), res[s]["headers"], res[s]["body"])
                for s in sids]
    finally:
        sock.close()


class Http2(harness.TestCase, LimitAsserts):
    def test_streams_limited_like_requests(self):
        web = self.origin("web")
        lb = self.lb(config(web, """      - name: api
        match: { path_prefix: /api/ }
        pool: web
        rate_limit: { key: source_ip, rate: 1/min, burst: 3 }
      - pool: web
"""))
        port = lb.port()
        answers = h2_get_all(port, ["/api/h%d" % i for i in range(10)] + ["/free"])
        statuses = [s for s, _, _ in answers]
        say("http/2 streams: %s" % statuses)
        self.assertEqual(sorted(statuses[:10]), [200] * 4 + [429] * 6, statuses)
        self.assertEqual(statuses[10], 200, "the catch-all stream")
        passed = set()
        for i, (status, h, body) in enumerate(answers[:10]):
            if status == 200:
                self.assertEqual((h.get("x-origin"), body), ("web", b"Hello from web\n"))
                passed.add("/api/h%d" % i)
            else:
                self.assert_limited(status, h, body, 1, 60, 3)
        paths = web.stats()["paths"]
        self.assertEqual({p for p in paths if p.startswith("/api/")}, passed, paths)
        # curl over h2c: the same bucket (this address), refused.
        out = subprocess.run(["curl", "-s", "--http2-prior-knowledge", "--max-time", "10",
                              "-D", "-", "-o", "/dev/null", "http://127.0.0.1:%d/api/c" % port],
                             capture_output=True, text=True, timeout=20 * SLOW)
        self.assertEqual(out.returncode, 0, out.stderr)
        head = out.stdout.replace("\r\n", "\n")
        self.assertTrue(head.startswith("HTTP/2 429"), head)
        lower = head.lower()
        self.assertRegex(lower, r"\nretry-after: [1-9][0-9]*\n")
        self.assertIn("\nratelimit-policy: 1;w=60;burst=3\n", lower)
        self.assertRegex(lower, r"\nratelimit: limit=1, remaining=0, reset=[1-9][0-9]*\n")
        self.assertEqual(lb.metric("lb_rate_limited_total", listener="public", route="api"), 7)
        # HTTP/1.1 from the same address shares the bucket.
        self.assert_limited(*get(port, "/api/one"), limit=1, window=60, burst=3)


if __name__ == "__main__":
    harness.main()
