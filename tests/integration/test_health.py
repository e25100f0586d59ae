#!/usr/bin/env python3
"""Backend health as a client sees it (SPEC: health_check, outlier_detection,
fail_open, "Balancing and failover semantics" 4).

- an active check (interval 300ms, timeout 200ms, unhealthy_threshold 3,
  healthy_threshold 2) takes a backend whose /healthz turns 503 out of
  rotation within interval x 3 + timeout + 1 s, and after that it gets no
  request; once /healthz passes again it is back (2 passes) and gets traffic;
- at startup a backend whose /healthz fails never gets a request; when every
  backend fails: fail_open: false -> 503 "no healthy backend in pool web",
  fail_open: true (the default) -> served anyway, counted and logged;
- kill -9 of one of three origins during 3,000 keep-alive GETs
  (concurrency 16): no client sees an error; restarted on the same port it
  gets traffic again;
- outlier detection without an active check: a backend answering 500 to
  everything is ejected after 3 of them for 2 s (the 500s stop), comes back,
  and is ejected again for 4 s (doubling);
- the last backend in rotation is never ejected: clients see its 500s, not 503s;
- a refused backend next to a live one: every GET succeeds (retried), the
  refused one is ejected, and lb_retries_total counts the retries.
- lb_health_checks_total{pool,backend,result} counts passes and failures.

Origins' request logs say who got traffic; /healthz lines in them are lb's checks.
"""

import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import KeepAliveClient, http, unused_port, wait_until  # noqa: E402

INTERVAL, TIMEOUT, HEALTHY_N, UNHEALTHY_N = 0.3, 0.2, 2, 3
FAST_CHECK = ("{ path: /healthz, interval: 300ms, timeout: 200ms, "
              "healthy_threshold: 2, unhealthy_threshold: 3 }")


def config(addresses, health_check=None, outlier=None, fail_open=None, retries=None,
           workers=2):
    backends = "\n".join('      - address: "%s"' % a for a in addresses)
    extra = ""
    if health_check:
        extra += "    health_check: %s\n" % health_check
    if outlier:
        extra += "    outlier_detection: %s\n" % outlier
    if fail_open is not None:
        extra += "    fail_open: %s\n" % ("true" if fail_open else "false")
    if retries is not None:
        extra += "    retries: %d\n" % retries
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
{extra}    backends:
{backends}
"""


def say(msg):
    sys.stderr.write("    [health] %s\n" % msg)
    sys.stderr.flush()


def backend_status(lb, address, pool="web"):
    for p in lb.status_json()["pools"]:
        if p["name"] == pool:
            for b in p["backends"]:
                if b["address"] == address:
                    return b
    raise AssertionError("no backend %s in /status" % address)


def pool_status(lb, pool="web"):
    for p in lb.status_json()["pools"]:
        if p["name"] == pool:
            return p
    raise AssertionError("no pool %s in /status" % pool)


def app_requests(origin, since=None):
    """Log entries of client traffic (not lb's /healthz checks), optionally only
    those received after wall-clock time `since`."""
    return [e for e in origin.log_entries()
            if not e["target"].startswith("/healthz") and (since is None or e["time"] > since)]


def checks_seen(origin):
    return sum(1 for e in origin.log_entries() if e["target"].startswith("/healthz"))


def log_lines(lb, needle):
    return [l for l in lb.stderr_text().splitlines() if needle in l]


def wait_log(lb, needle, count=1, timeout=10.0):
    """Waits until `needle` occurs on `count` lines of lb's stderr; returns the
    time.monotonic() it was first seen, or None."""
    deadline = time.monotonic() + timeout
    while True:
        if len(log_lines(lb, needle)) >= count:
            return time.monotonic()
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.01)


class SteadyLoad(threading.Thread):
    """One keep-alive client sending GETs back to back (pause between them);
    records (monotonic start, wall start, status, X-Origin or error)."""

    def __init__(self, port, pause=0.02):
        super().__init__(daemon=True)
        self.port, self.pause = port, pause
        self.results = []
        self.errors = []
        self.halt = threading.Event()

    def run(self):
        client = KeepAliveClient(self.port, timeout=10)
        i = 0
        while not self.halt.is_set():
            i += 1
            t, w = time.monotonic(), time.time()
            try:
                status, h, body = client.request("GET", "/steady/%d" % i)
                self.results.append((t, w, status, h["X-Origin"]))
                if status != 200:
                    self.errors.append("GET /steady/%d: %d %r" % (i, status, body[:200]))
            except Exception as e:  # noqa: BLE001 - every failure is a client-visible error
                self.results.append((t, w, None, repr(e)))
                self.errors.append("GET /steady/%d: %r" % (i, e))
                client.close()
                client = KeepAliveClient(self.port, timeout=10)
            time.sleep(self.pause)
        client.close()

    def stop(self):
        self.halt.set()
        self.join(15)


class Health(harness.TestCase):
    # ---- 1 ------------------------------------------------------------------
    def test_failing_healthz_leaves_rotation_and_comes_back(self):
        a, b = self.origin("app-a"), self.origin("app-b")
        lb = self.lb(config([a.addr, b.addr], health_check=FAST_CHECK))
        self.assertTrue(wait_until(lambda: all(backend_status(lb, o.addr)["healthy"]
                                               for o in (a, b)), 5),
                        "the backends never became healthy: %s" % lb.status_json())
        load = SteadyLoad(lb.port())
        load.start()
        self.addCleanup(load.stop)
        self.assertTrue(wait_until(lambda: len(app_requests(a)) >= 5, 5),
                        "app-a got no traffic while healthy")

        # /healthz turns 503: out of rotation within interval x 3 + timeout + 1 s.
        t0 = time.monotonic()
        a.set_healthy(False)
        seen = wait_log(lb, "backend %s is now unhealthy" % a.addr, timeout=10)
        self.assertIsNotNone(seen, "no 'now unhealthy' line for app-a")
        took = seen - t0
        bound = INTERVAL * UNHEALTHY_N + TIMEOUT + 1.0
        say("unhealthy after %.2f s (bound %.2f s)" % (took, bound))
        self.assertLessEqual(took, bound, "app-a left rotation %.2f s after /healthz failed" % took)
        line = log_lines(lb, "backend %s is now unhealthy" % a.addr)[0]
        self.assertIn("GET /healthz: status 503", line)
        self.assertIn("(3 consecutive failures)", line)
        st = backend_status(lb, a.addr)
        self.assertEqual((st["healthy"], st["in_rotation"]), (False, False), st)
        self.assertTrue(backend_status(lb, b.addr)["in_rotation"])
        self.assertEqual(lb.metric("lb_backend_healthy", pool="web", backend=a.addr), 0)
        self.assertEqual(lb.metric("lb_backend_healthy", pool="web", backend=b.addr), 1)

        # From now on, no request reaches app-a.
        cut_mono, cut_wall = time.monotonic(), time.time()
        time.sleep(1.5)
        late = app_requests(a, since=cut_wall + 0.05)
        self.assertEqual(late, [], "app-a got %d requests after it was marked unhealthy: %s"
                         % (len(late), [e["target"] for e in late][:10]))
        after = [r for r in load.results if r[0] > cut_mono]
        self.assertGreaterEqual(len(after), 20, "too few requests sent to prove anything")
        self.assertEqual({r[3] for r in after}, {"app-b"},
                         "requests after the transition went to %s" % sorted({r[3] for r in after}))
        say("%d requests in the 1.5 s after the transition, all to app-b" % len(after))

        # /healthz passes again: back after healthy_threshold (2) passes, traffic again.
        t1 = time.monotonic()
        t1_wall = time.time()
        a.set_healthy(True)
        seen = wait_log(lb, "backend %s is now healthy" % a.addr, count=2, timeout=10)
        self.assertIsNotNone(seen, "app-a never became healthy again:\n" + lb.stderr_text()[-2000:])
        took = seen - t1
        bound = INTERVAL * HEALTHY_N + TIMEOUT + 1.0
        say("healthy again after %.2f s (bound %.2f s)" % (took, bound))
        self.assertLessEqual(took, bound)
        self.assertIn("(2 consecutive passes)",
                      log_lines(lb, "backend %s is now healthy" % a.addr)[1])
        self.assertTrue(wait_until(lambda: len(app_requests(a, since=t1_wall)) >= 5, 5),
                        "app-a got no traffic after it became healthy again")
        self.assertTrue(backend_status(lb, a.addr)["in_rotation"])
        load.stop()
        self.assertEqual(load.errors, [], "client-visible errors: %s" % load.errors[:5])
        say("steady load: %d requests, %d errors" % (len(load.results), len(load.errors)))

    # ---- 2 ------------------------------------------------------------------
    def test_startup_failing_backend_never_gets_a_request(self):
        good, bad = self.origin("app-good"), self.origin("app-bad")
        bad.set_healthy(False)
        lb = self.lb(config([good.addr, bad.addr], health_check=FAST_CHECK, fail_open=False))
        answers = []
        with KeepAliveClient(lb.port()) as c:
            for i in range(40):  # from the moment lb is ready, over ~2 s
                status, h, _ = c.request("GET", "/start/%d" % i)
                answers.append((status, h["X-Origin"]))
                time.sleep(0.05)
        self.assertEqual(app_requests(bad), [], "a backend whose /healthz fails got requests")
        self.assertGreaterEqual(checks_seen(bad), 3, "lb never checked app-bad: no test")
        self.assertTrue(all(a in ((200, "app-good"), (503, None)) for a in answers), answers)
        self.assertGreaterEqual(answers.count((200, "app-good")), 30, answers)
        self.assertEqual(log_lines(lb, "backend %s is now healthy" % bad.addr), [])
        st = backend_status(lb, bad.addr)
        self.assertEqual((st["healthy"], st["in_rotation"]), (False, False), st)
        self.assertTrue(backend_status(lb, good.addr)["in_rotation"])
        self.assertEqual(lb.metric("lb_backend_healthy", pool="web", backend=bad.addr), 0)

    def wait_checks_failed(self, origins, n=3):
        """Waits until each origin has answered n of lb's checks (with 503)."""
        self.assertTrue(wait_until(lambda: all(checks_seen(o) >= n for o in origins), 5),
                        "lb's health checks did not reach the origins")

    def test_all_unhealthy_fail_open_false_503(self):
        a, b = self.origin("app-a"), self.origin("app-b")
        a.set_healthy(False)
        b.set_healthy(False)
        lb = self.lb(config([a.addr, b.addr], health_check=FAST_CHECK, fail_open=False))
        self.wait_checks_failed((a, b))
        for i in range(5):
            status, _, body = http(lb.port(), "GET", "/x/%d" % i)
            self.assertEqual(status, 503, body)
            self.assertIn(b"no healthy backend in pool web", body)
            self.assertIn(b"request id", body)
        self.assertEqual(app_requests(a) + app_requests(b), [])
        self.assertFalse(pool_status(lb)["fail_open_active"])
        self.assertEqual(lb.metric("lb_fail_open_requests_total", pool="web"), 0)
        # One recovers: it serves.
        a.set_healthy(True)
        self.assertIsNotNone(wait_log(lb, "backend %s is now healthy" % a.addr, timeout=5))
        status, h, _ = http(lb.port(), "GET", "/after")
        self.assertEqual((status, h["X-Origin"]), (200, "app-a"))

    def test_all_unhealthy_fail_open_default_serves(self):
        a, b = self.origin("app-a"), self.origin("app-b")
        a.set_healthy(False)
        b.set_healthy(False)
        lb = self.lb(config([a.addr, b.addr], health_check=FAST_CHECK))
        self.wait_checks_failed((a, b))
        seen = []
        for i in range(20):
            status, h, body = http(lb.port(), "GET", "/x/%d" % i)
            self.assertEqual(status, 200, body)
            seen.append(h["X-Origin"])
        self.assertEqual((seen.count("app-a"), seen.count("app-b")), (10, 10), seen)
        self.assertEqual((len(app_requests(a)), len(app_requests(b))), (10, 10))
        self.assertEqual(lb.metric("lb_fail_open_requests_total", pool="web"), 20)
        self.assertTrue(pool_status(lb)["fail_open_active"])
        for o in (a, b):
            self.assertFalse(backend_status(lb, o.addr)["healthy"])
        self.assertTrue(log_lines(lb, "fail_open"),
                        "serving in fail_open was not logged; stderr:\n" + lb.stderr_text())

    def test_health_check_metrics(self):
        # lb_health_checks_total{pool,backend,result} (SPEC "Metrics") counts the
        # checks the origins answered: passes for the healthy one, fails for the other.
        good, bad = self.origin("app-good"), self.origin("app-bad")
        bad.set_healthy(False)
        lb = self.lb(config([good.addr, bad.addr], health_check=FAST_CHECK))
        self.wait_checks_failed((good, bad), n=3)
        text = lb.metrics_text()

        def checks(o, result):
            return harness.metric_value(text, "lb_health_checks_total", pool="web",
                                        backend=o.addr, result=result)
        self.assertGreaterEqual(checks(good, "pass"), 2, "lb_health_checks_total:\n" + "\n".join(
            l for l in text.splitlines() if "health_checks" in l))
        self.assertEqual(checks(good, "fail"), 0)
        self.assertGreaterEqual(checks(bad, "fail"), 2)
        self.assertEqual(checks(bad, "pass"), 0)

    # ---- 3 ------------------------------------------------------------------
    def test_kill_9_during_load_no_errors_and_restart_gets_traffic(self):
        origins = [self.origin("app-%d" % i) for i in range(3)]
        victim = origins[2]
        lb = self.lb(config([o.addr for o in origins],
                            health_check="{ path: /healthz, interval: 500ms, timeout: 300ms }"))
        self.assertTrue(wait_until(lambda: all(backend_status(lb, o.addr)["healthy"]
                                               for o in origins), 5))
        total, concurrency = 3000, 16
        lock = threading.Lock()
        state = {"next": 0, "done": 0}
        errors, by_origin = [], {}

        def worker():
            client = KeepAliveClient(lb.port(), timeout=15)
            while True:
                with lock:
                    i = state["next"]
                    state["next"] += 1
                if i >= total:
                    break
                try:
                    status, h, body = client.request("GET", "/load/%d" % i)
                    name = h["X-Origin"]
                    ok = status == 200 and body == ("Hello from %s\n" % name).encode()
                    with lock:
                        if ok:
                            by_origin[name] = by_origin.get(name, 0) + 1
                        else:
                            errors.append("GET /load/%d: %d %r" % (i, status, body[:200]))
                except Exception as e:  # noqa: BLE001
                    with lock:
                        errors.append("GET /load/%d: %r" % (i, e))
                    client.close()
                    client = KeepAliveClient(lb.port(), timeout=15)
                with lock:
                    state["done"] += 1
                time.sleep(0.05)  # bounded: ~300 requests/s in all
            client.close()

        t_start = time.monotonic()
        threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
        for t in threads:
            t.start()
        self.assertTrue(wait_until(lambda: state["done"] >= 600, 30), "the load does not progress")
        done_at_kill = state["done"]
        t_kill = time.monotonic()
        victim.kill()
        down = wait_log(lb, "backend %s is now unhealthy" % victim.addr, timeout=5)
        self.assertIsNotNone(down, "the killed origin was never marked unhealthy")
        t_restart, t_restart_wall = time.monotonic(), time.time()
        done_at_restart = state["done"]
        victim.restart()
        for t in threads:
            t.join(120)
        self.assertFalse(any(t.is_alive() for t in threads), "the load hung")
        t_end = time.monotonic()
        say("load: %d GETs, concurrency %d, %.1f s, %d errors, by origin %s"
            % (total, concurrency, t_end - t_start, len(errors), dict(sorted(by_origin.items()))))
        say("killed %s after %d requests; marked unhealthy %.2f s later; restarted after %d"
            % (victim.name, done_at_kill, down - t_kill, done_at_restart))

        # The restarted origin gets traffic again (a refused connection ejected it
        # for 5 s; the check needs 2 passes).
        def victim_served():
            return app_requests(victim, since=t_restart_wall)
        deadline = t_restart + 10
        with KeepAliveClient(lb.port()) as c:
            i = 0
            while not victim_served() and time.monotonic() < deadline:
                status, h, body = c.request("GET", "/after/%d" % i)
                if status != 200:
                    errors.append("GET /after/%d: %d %r" % (i, status, body[:200]))
                i += 1
                time.sleep(0.02)
        back = victim_served()
        in_load = [e for e in back if e["target"].startswith("/load/")]
        say("restarted origin served %d of the load's requests; lb said: %s" % (
            len(in_load), [l[4:] for l in log_lines(lb, victim.addr)][:6]))
        self.assertTrue(back, "the restarted origin got no traffic within 10 s:\n"
                        + lb.stderr_text()[-3000:])
        back_after = back[0]["time"] - t_restart_wall
        say("restarted origin got its first request %.2f s after the restart" % back_after)
        self.assertEqual(errors, [], "%d client-visible errors, first: %s"
                         % (len(errors), errors[:5]))
        self.assertEqual(sum(by_origin.values()), total)
        self.assertLessEqual(back_after, 8.0)

    # ---- 4 ------------------------------------------------------------------
    def drive(self, port, until, timeout, pause=0.01):
        """Sequential GETs on one keep-alive connection until until() is true
        (checked after each answer). Returns [(status, X-Origin, until() after it)]."""
        out = []
        deadline = time.monotonic() + timeout
        with KeepAliveClient(port) as c:
            while time.monotonic() < deadline:
                status, h, _ = c.request("GET", "/od")
                done = until()
                out.append((status, h["X-Origin"], done))
                if done:
                    return out
                time.sleep(pause)
        self.fail("condition not reached in %.1f s; answers: %s" % (timeout, out[-10:]))

    def test_outlier_ejects_500s_and_readmits_with_doubling(self):
        good = self.origin("app-good")
        bad = self.origin("app-500", extra_args=["--status-all", "500"])
        lb = self.lb(config([good.addr, bad.addr],
                            outlier="{ consecutive_failures: 3, ejection_time: 2s }"))
        port = lb.port()
        ejected_line = "backend %s ejected" % bad.addr
        back_line = "backend %s back in rotation after ejection" % bad.addr

        def count(needle):
            return len(log_lines(lb, needle))

        # A: until the first ejection: exactly 3 answers of 500 from app-500.
        a = self.drive(port, lambda: count(ejected_line) >= 1, 5)
        t_ej1 = time.monotonic()
        st = backend_status(lb, bad.addr)
        self.assertEqual([r[:2] for r in a if r[0] != 200], [(500, "app-500")] * 3, a)
        self.assertEqual(len(app_requests(bad)), 3)
        self.assertEqual((st["ejected"], st["in_rotation"]), (True, False), st)
        self.assertTrue(1500 < st["ejected_for_ms"] <= 2000, st)
        self.assertIn("ejected for 2000 ms", log_lines(lb, ejected_line)[0])
        self.assertEqual(lb.metric("lb_outlier_ejections_total", pool="web", backend=bad.addr), 1)
        self.assertEqual(lb.metric("lb_backend_healthy", pool="web", backend=bad.addr), 0)

        # B: ejected: only app-good answers, until it is back (~2 s).
        b = self.drive(port, lambda: count(back_line) >= 1, 5)
        t_back1 = time.monotonic()
        inside = [r[:2] for r in b if not r[2]]
        self.assertGreaterEqual(len(inside), 30)
        self.assertEqual(set(inside), {(200, "app-good")}, "requests while ejected: %s" % b)
        first = t_back1 - t_ej1
        say("first ejection lasted %.2f s (%d requests, all app-good)" % (first, len(inside)))
        self.assertTrue(1.8 <= first <= 2.8, "first ejection lasted %.2f s" % first)
        n_bad = len(app_requests(bad))
        self.assertLessEqual(n_bad, 4, "app-500 got requests while ejected")  # 3 + maybe the last

        # C: re-admitted: it gets requests again, and 3 more 500s eject it for 4 s.
        c = self.drive(port, lambda: count(ejected_line) >= 2, 5)
        t_ej2 = time.monotonic()
        st = backend_status(lb, bad.addr)
        self.assertEqual(len(app_requests(bad)), 6, "app-500 was not re-admitted or not re-ejected")
        self.assertIn("ejected for 4000 ms", log_lines(lb, ejected_line)[1])
        self.assertTrue(3500 < st["ejected_for_ms"] <= 4000, st)
        self.assertEqual(lb.metric("lb_outlier_ejections_total", pool="web", backend=bad.addr), 2)
        self.assertEqual([r[:2] for r in b[-1:] + c if r[0] != 200][-3:], [(500, "app-500")] * 3)

        # D: the second ejection lasts ~4 s.
        d = self.drive(port, lambda: count(back_line) >= 2, 8)
        second = time.monotonic() - t_ej2
        inside = [r[:2] for r in d if not r[2]]
        self.assertEqual(set(inside), {(200, "app-good")})
        say("second ejection lasted %.2f s (%d requests, all app-good)" % (second, len(inside)))
        self.assertTrue(3.8 <= second <= 4.8, "second ejection lasted %.2f s" % second)
        self.assertLessEqual(len(app_requests(bad)), 7)

    # ---- 5 ------------------------------------------------------------------
    def test_last_backend_is_never_ejected(self):
        bad = self.origin("app-500", extra_args=["--status-all", "500"])
        lb = self.lb(config([bad.addr], outlier="{ consecutive_failures: 3, ejection_time: 2s }"))
        with KeepAliveClient(lb.port()) as c:
            for i in range(20):
                status, h, body = c.request("GET", "/last/%d" % i)
                self.assertEqual((status, h["X-Origin"], body), (500, "app-500", b"status 500\n"),
                                 "request %d" % i)
        self.assertEqual(len(app_requests(bad)), 20)
        self.assertEqual(log_lines(lb, "ejected for"), [])
        st = backend_status(lb, bad.addr)
        self.assertEqual((st["ejected"], st["in_rotation"]), (False, True), st)

    def test_two_failing_backends_one_stays(self):
        x = self.origin("app-x", extra_args=["--status-all", "500"])
        y = self.origin("app-y", extra_args=["--status-all", "502"])
        lb = self.lb(config([x.addr, y.addr],
                            outlier="{ consecutive_failures: 3, ejection_time: 10s }"))
        answers = []
        with KeepAliveClient(lb.port()) as c:
            for i in range(30):
                status, h, _ = c.request("GET", "/two/%d" % i)
                answers.append((status, h["X-Origin"]))
        self.assertEqual(len(log_lines(lb, "ejected for")), 1, lb.stderr_text())
        self.assertNotIn(503, [s for s, _ in answers])
        # After the ejection every request reaches the one left, and its error is seen.
        tail = set(answers[-10:])
        self.assertEqual(len(tail), 1, answers)
        self.assertIn(tail.pop(), ((500, "app-x"), (502, "app-y")))

    # ---- 6 ------------------------------------------------------------------
    def test_refused_backend_retried_and_ejected(self):
        app = self.origin("app-1")
        dead = "127.0.0.1:%d" % unused_port()
        lb = self.lb(config([dead, app.addr]))
        for i in range(50):
            status, h, body = http(lb.port(), "GET", "/r/%d" % i)
            self.assertEqual((status, h["X-Origin"], body), (200, "app-1", b"Hello from app-1\n"),
                             "request %d" % i)
        self.assertEqual(len(app_requests(app)), 50)
        lines = log_lines(lb, "backend %s ejected" % dead)
        self.assertTrue(lines, "the refused backend was not ejected:\n" + lb.stderr_text())
        self.assertIn("connection refused", lines[0])
        retries = lb.metric("lb_retries_total", pool="web")
        say("retries %d, connect errors %d" % (
            retries, lb.metric("lb_upstream_connect_errors_total", pool="web", backend=dead)))
        self.assertGreaterEqual(retries, 1)
        self.assertGreaterEqual(lb.metric("lb_upstream_connect_errors_total", pool="web",
                                          backend=dead), 1)
        st = backend_status(lb, dead)
        self.assertEqual((st["ejected"], st["in_rotation"]), (True, False), st)


if __name__ == "__main__":
    harness.main()
