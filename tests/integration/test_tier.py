#!/usr/bin/env python3
"""lb in a tier, as an operator runs it: HAProxy in TCP mode in front of three
lb instances, and shutdown_delay (the lame duck) taking one instance out
without a single failed request.

The tier (everything on 127.0.0.1, ephemeral ports, started by the test):
  - three lb instances (lb1, lb2, lb3), each with one listener with
    proxy_protocol: true, an admin listener, shutdown_delay: 3s and
    shutdown_timeout: 10s; lbN routes everything to its own origin appN, so a
    response's body ("Hello from appN") says which lb instance served it;
  - HAProxy (mode tcp, roundrobin): the traffic gets a PROXY v2 header
    (send-proxy-v2), the health check is "GET /healthz" on each lb's admin
    port (check port N: no PROXY header on the check), inter 300ms fall 2
    rise 2; a stats socket shows HAProxy's view of each server.

Tests:
  - the tier spreads: 30 requests (a new connection each) reach all three lb
    instances (lb_requests_total of each admin /metrics > 0, and equal to the
    responses its origin gave), HAProxy's check of every instance's /healthz
    passes (L7OK, 200), and the origin sees X-Forwarded-For: 127.0.0.2, the
    client's real address (the client binds 127.0.0.2, HAProxy connects from
    127.0.0.1): lb honours PROXY v2;
  - lame duck: 5 client threads (2 with a new connection per request, 3 with
    a keep-alive connection each, one on each instance, retrying on a new
    connection only when a reused connection closes before any byte of the
    response, the usual rule for idempotent requests) load the tier for 8 s;
    SIGTERM to lb2 after 2 s. No request fails; lb2's /healthz answers 503 at
    once, HAProxy marks lb2 down well before its shutdown_delay is over, lb2
    still serves new connections until then and its open keep-alive
    connection until the drain, no new connection reaches lb2 once HAProxy
    marked it down, lb1 and lb3 take the rest, and lb2 exits 0 by itself
    after shutdown_delay (log: lame duck, then the drain, then "drained");
  - lb check: shutdown_delay: 2h, 61m and abc are refused with
    FILE:LINE:COL, 0s, 3s and 1h are accepted;
  - a single lb with shutdown_delay: 2s: after SIGTERM /healthz answers 503
    at once, new connections and an open keep-alive connection are served
    during the delay; after it new connections are refused, the idle
    keep-alive connection is closed and lb exits 0.

Environment: LB_BIN, LB_SOURCE_DIR; HAPROXY_BIN (default /usr/sbin/haproxy;
the tier tests are skipped without it).
"""

import json
import os
import signal
import socket
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import RawConnection, http, wait_until  # noqa: E402
from haproxy_tier import (CLIENT_IP, ClosedBeforeResponse, HAProxy, needs_haproxy,  # noqa: E402
                          read_response)

SHUTDOWN_DELAY_S = 3.0


def lb_config(origin, shutdown_delay="3s", proxy_protocol=True):
    return f"""
workers: 1
shutdown_delay: {shutdown_delay}
shutdown_timeout: 10s
access_log: {{ path: "off" }}
admin: {{ listen: 127.0.0.1:0 }}
listeners:
  - name: public
    listen: 127.0.0.1:0
    proxy_protocol: {"true" if proxy_protocol else "false"}
    routes: [ {{ match: {{ path_prefix: / }}, pool: web }} ]
pools:
  web:
    backends: [ {{ address: "{origin.addr}" }} ]
"""


def connect_refused(port):
    """True if a TCP connect to port is refused (nothing listening)."""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=1)
    except ConnectionRefusedError:
        return True
    s.close()
    return False


def public_requests(lb, timeout=2):
    """lb_requests_total of the listener "public", from lb's admin /metrics."""
    return lb.metric("lb_requests_total", timeout=timeout, listener="public")


# ---------------------------------------------------------------------------
# a client from CLIENT_IP

class Client:
    """GETs to port from CLIENT_IP. keep_alive=False: a new connection per
    request (Connection: close). keep_alive=True: one connection reused; when
    a reused connection closes before any byte of the response, the request
    is sent once more on a new connection (what HTTP clients do for
    idempotent requests); every other error is raised."""

    def __init__(self, port, keep_alive, timeout=5.0):
        self.port = port
        self.keep_alive = keep_alive
        self.timeout = timeout
        self.sock = None
        self.retries = 0
        self.connects = 0

    def _connect(self):
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout,
                                             source_address=(CLIENT_IP, 0))
        self.connects += 1

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None

    def _exchange(self, request):
        try:
            self.sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError) as e:
            raise ClosedBeforeResponse("send failed: %r" % e) from e
        return read_response(self.sock)

    def get(self, path):
        """-> (status, headers, body, retried)."""
        request = ("GET %s HTTP/1.1\r\nHost: tier.test\r\n%s\r\n"
                   % (path, "" if self.keep_alive else "Connection: close\r\n")).encode()
        retried = False
        try:
            reused = self.sock is not None
            if not reused:
                self._connect()
            try:
                status, headers, body, close = self._exchange(request)
            except ClosedBeforeResponse:
                if not reused:
                    raise
                self.close()
                self.retries += 1
                retried = True
                self._connect()
                status, headers, body, close = self._exchange(request)
        except BaseException:
            self.close()
            raise
        if close or not self.keep_alive:
            self.close()
        return status, headers, body, retried


# ---------------------------------------------------------------------------

@needs_haproxy
class Tier(harness.TestCase):
    def start_tier(self, log=True):
        self.apps = [self.origin("app%d" % i, log=log) for i in (1, 2, 3)]
        self.lbs = [self.lb(lb_config(app)) for app in self.apps]
        self.names = ["lb1", "lb2", "lb3"]
        self.haproxy = HAProxy([("lbs", None, [(name, lb.port(), lb.admin_port)
                                               for name, lb in zip(self.names, self.lbs)])])
        self.addCleanup(self.haproxy.cleanup_after, self)
        # HAProxy's checks of every instance's /healthz pass (admin port, no PROXY header).
        self.haproxy.wait_checked_up(self.names)
        return self.haproxy

    def test_tier_spreads_and_lb_sees_the_client_address(self):
        haproxy = self.start_tier()
        for name, row in haproxy.servers().items():
            self.assertEqual((row["status"], row["check_status"], row["check_code"]),
                             ("UP", "L7OK", "200"), name)
        seen = {}
        for i in range(30):
            c = Client(haproxy.port, keep_alive=False)
            status, headers, body, _ = c.get("/headers?i=%d" % i)
            self.assertEqual(status, 200, body[:300])
            app = headers.get("x-origin")
            self.assertIn(app, ("app1", "app2", "app3"), headers)
            got = json.loads(body)
            xff = [v for k, v in got["headers"] if k.lower() == "x-forwarded-for"]
            self.assertEqual(xff, [CLIENT_IP],
                             "the origin saw X-Forwarded-For %r, not the client's real address "
                             "%s from HAProxy's PROXY v2 header" % (xff, CLIENT_IP))
            seen[app] = seen.get(app, 0) + 1
        self.assertEqual(set(seen), {"app1", "app2", "app3"}, seen)
        # Each instance counted exactly the requests its origin answered.
        for lb, app in zip(self.lbs, ("app1", "app2", "app3")):
            self.assertTrue(wait_until(lambda: public_requests(lb) == seen[app], 3),
                            "%s: lb_requests_total %r, its origin answered %d"
                            % (app, public_requests(lb), seen[app]))
            self.assertGreater(public_requests(lb), 0)
        # The origins' own logs say the same about the client address.
        for app in self.apps:
            for e in app.log_entries():
                xff = [v for k, v in e["headers"] if k.lower() == "x-forwarded-for"]
                self.assertEqual(xff, [CLIENT_IP], e)
        # No instance went down (HAProxy says so on its output when one does).
        self.assertNotIn(" is DOWN", haproxy.stderr_text())

    def test_lame_duck_takes_an_instance_out_without_failures(self):
        haproxy = self.start_tier(log=False)
        lb1, lb2, lb3 = self.lbs
        records = []  # (start, end, kind, app or None, error or None, retried)
        lock = threading.Lock()

        # Three long-lived keep-alive connections, opened one after another
        # before any other traffic: roundrobin puts one on each instance, so
        # one of them is on lb2 when it drains.
        kept = {}
        for i in range(9):
            if len(kept) == 3:
                break
            c = Client(haproxy.port, keep_alive=True)
            t0 = time.monotonic()
            status, headers, body, _ = c.get("/tier/warmup/%d" % i)
            app = headers.get("x-origin")
            records.append((t0, time.monotonic(), "warmup", app,
                            None if (status, body) == (200, b"Hello from %s\n" % app.encode())
                            else "status %d, body %r" % (status, body[:200]), False))
            if app in kept:
                c.close()
            else:
                kept[app] = c
        self.assertEqual(sorted(kept), ["app1", "app2", "app3"],
                         "keep-alive connections opened in a row did not land on each instance")
        t_start = time.monotonic()
        stop_at = t_start + 8.0

        def load(kind, c):
            n = 0
            while time.monotonic() < stop_at:
                n += 1
                t0 = time.monotonic()
                app, error, retried = None, None, False
                try:
                    status, headers, body, retried = c.get("/tier/%s/%d" % (kind, n))
                    app = headers.get("x-origin")
                    if status != 200 or app not in ("app1", "app2", "app3") \
                            or body != b"Hello from %s\n" % app.encode():
                        error = "status %d, X-Origin %r, body %r" % (status, app, body[:200])
                except Exception as e:  # noqa: BLE001
                    error = repr(e)
                with lock:
                    records.append((t0, time.monotonic(), kind, app, error, retried))
                time.sleep(0.01)  # a steady load, leaving the 2 cores some air
            c.close()

        jobs = [("new", Client(haproxy.port, keep_alive=False)) for _ in range(2)]
        jobs += [("keepalive:" + app, c) for app, c in sorted(kept.items())]
        clients = [c for _, c in jobs]
        threads = [threading.Thread(target=load, args=job, daemon=True) for job in jobs]
        for t in threads:
            t.start()
        time.sleep(2.0)
        before = public_requests(lb2)
        self.assertGreater(before, 0, "lb2 got no traffic before SIGTERM")
        t_term = time.monotonic()
        lb2.signal(signal.SIGTERM)

        t_503 = t_down = t_drain = t_exit = None
        lame_duck_count = before
        while any(t.is_alive() for t in threads) and time.monotonic() < stop_at + 10:
            if t_exit is None and not lb2.running():
                t_exit = time.monotonic()
            if t_drain is None and "shutdown_delay over: draining" in lb2.stderr_text():
                t_drain = time.monotonic()
            if t_503 is None and t_exit is None:
                try:
                    if lb2.admin("GET", "/healthz", timeout=1)[0] == 503:
                        t_503 = time.monotonic()
                except OSError:
                    pass
            if t_drain is None and t_exit is None:
                try:
                    lame_duck_count = max(lame_duck_count, public_requests(lb2, timeout=1))
                except (OSError, RuntimeError):
                    pass
            if t_down is None:
                try:
                    if haproxy.servers()["lb2"]["status"].startswith("DOWN"):
                        t_down = time.monotonic()
                except (OSError, KeyError):
                    pass
            time.sleep(0.05)
        for t in threads:
            t.join(10)
        self.assertFalse(any(t.is_alive() for t in threads), "a client thread hangs")
        code = lb2.wait_exit(max(0.1, t_term + SHUTDOWN_DELAY_S + 4 - time.monotonic()))
        if t_exit is None and code is not None:
            t_exit = time.monotonic()

        failed = [r for r in records if r[4] is not None]
        retries = sum(c.retries for c in clients)
        by_app = {a: sum(1 for r in records if r[3] == a) for a in ("app1", "app2", "app3")}
        summary = ("%d requests (%s), %d failed, %d keep-alive retries; SIGTERM at %.2f s, "
                   "/healthz 503 at %s, HAProxy lb2 DOWN at %s, drain at %s, exit at %s"
                   % (len(records), by_app, len(failed), retries, t_term - t_start,
                      *["%.2f s" % (t - t_start) if t is not None else "never"
                        for t in (t_503, t_down, t_drain, t_exit)]))
        if os.environ.get("LB_TEST_VERBOSE"):
            sys.stderr.write(summary + "\n")

        # Not one failed request.
        self.assertEqual(failed[:10], [], summary)
        self.assertGreater(len(records), 200, summary)

        # lb2 exits 0 by itself, once its shutdown_delay is over.
        self.assertEqual(code, 0, "lb2 exit code %r; %s" % (code, summary))
        self.assertIsNotNone(t_exit, summary)
        self.assertGreaterEqual(t_exit - t_term, SHUTDOWN_DELAY_S - 0.1,
                                "lb2 exited before its shutdown_delay was over; " + summary)
        self.assertLess(t_exit - t_term, SHUTDOWN_DELAY_S + 3, summary)
        log = lb2.stderr_text()
        lame = "lb: SIGTERM: lame duck for 3000 ms (/healthz answers 503, listeners keep " \
               "serving), then draining (up to 10000 ms)"
        drain = "lb: shutdown_delay over: draining (up to 10000 ms), then exiting"
        self.assertIn(lame, log.splitlines())
        self.assertIn(drain, log.splitlines())
        self.assertIn("lb: drained: exiting", log.splitlines())
        self.assertLess(log.index(lame), log.index(drain))
        self.assertLess(log.index(drain), log.index("lb: drained: exiting"))

        # /healthz turned 503 at once; HAProxy took lb2 out before the drain began.
        self.assertIsNotNone(t_503, summary)
        self.assertLess(t_503 - t_term, 1.0, summary)
        self.assertIsNotNone(t_down, "HAProxy never marked lb2 down; " + summary)
        self.assertLess(t_down - t_term, SHUTDOWN_DELAY_S - 0.5, summary)
        self.assertIn("Server lbs/lb2 is DOWN", haproxy.stderr_text())
        self.assertNotIn("Server lbs/lb1 is DOWN", haproxy.stderr_text())
        self.assertNotIn("Server lbs/lb3 is DOWN", haproxy.stderr_text())
        servers = haproxy.servers()
        self.assertEqual((servers["lb1"]["status"], servers["lb3"]["status"]), ("UP", "UP"))
        self.assertTrue(servers["lb2"]["status"].startswith("DOWN"), servers["lb2"]["status"])

        # lb2 served during its lame duck: its count kept rising after SIGTERM,
        # new connections included, until HAProxy took it out.
        self.assertGreater(lame_duck_count, before,
                           "lb2 served nothing after SIGTERM; " + summary)
        lame_new = [r for r in records if r[3] == "app2" and r[2] == "new" and r[0] > t_term]
        self.assertGreater(len(lame_new), 0, "no new connection reached lb2 in its lame duck; "
                           + summary)
        # The keep-alive connection on lb2 was served on lb2 after HAProxy
        # took lb2 out (lame duck: open connections keep being served), and
        # its requests went to lb1 or lb3 after lb2 closed it.
        mine = [r for r in records if r[2] == "keepalive:app2"]
        self.assertGreater(sum(1 for r in mine if r[3] == "app2" and r[0] > t_down), 0, summary)
        self.assertGreater(sum(1 for r in mine if r[3] in ("app1", "app3")), 0, summary)
        # No new connection reached lb2 once HAProxy had marked it down.
        late_new = [r for r in records if r[3] == "app2" and r[2] == "new" and r[0] > t_down]
        self.assertEqual(late_new[:5], [], summary)
        # Nothing reached lb2 once it had exited; lb1 and lb3 took the rest.
        after_exit = [r for r in records if r[0] > t_exit]
        self.assertGreater(len(after_exit), 50, summary)
        self.assertEqual([r for r in after_exit if r[3] not in ("app1", "app3")][:5], [], summary)
        for app in ("app1", "app3"):
            self.assertGreater(sum(1 for r in records if r[3] == app and r[0] > t_down), 0,
                               "%s got nothing after lb2 went down; %s" % (app, summary))
        # lb1 and lb3 counted exactly the requests their origins answered.
        for lb, app in ((lb1, "app1"), (lb3, "app3")):
            self.assertTrue(wait_until(lambda: public_requests(lb) == by_app[app], 3),
                            "%s: lb_requests_total %r, responses %d"
                            % (app, public_requests(lb), by_app[app]))


class CheckShutdownDelay(unittest.TestCase):
    TEMPLATE = """workers: 1
shutdown_timeout: 10s
shutdown_delay: {value}
listeners:
  - name: public
    listen: 127.0.0.1:0
    routes: [ {{ pool: web }} ]
pools:
  web: {{ backends: [ "127.0.0.1:1" ] }}
"""

    def test_refused_values_with_their_position(self):
        for value, message in (
                ("2h", "shutdown_delay: at most 1h"),
                ("61m", "shutdown_delay: at most 1h"),
                ("abc", "shutdown_delay: expected a duration like 2s or 250ms, got 'abc'")):
            with self.subTest(value=value):
                code, out, path = harness.lb_check(self.TEMPLATE.format(value=value))
                self.assertEqual(code, 1, out)
                located = [l for l in out.splitlines() if l.startswith(path + ":")]
                self.assertEqual(len(located), 1, out)
                self.assertTrue(located[0].startswith("%s:3:17: %s" % (path, message)), out)
                self.assertIn(value, located[0][len(path):])

    def test_accepted_values(self):
        for value in ("0s", "1h", "3s"):
            with self.subTest(value=value):
                code, out, _ = harness.lb_check(self.TEMPLATE.format(value=value))
                self.assertEqual((code, out.strip()), (0, "ok"), out)


class SingleInstance(harness.TestCase):
    def test_lame_duck_then_drain(self):
        app = self.origin("app", log=False)
        lb = self.lb(lb_config(app, shutdown_delay="2s", proxy_protocol=False))
        port = lb.port()
        self.assertEqual(lb.admin("GET", "/healthz")[0], 200)
        hello = b"Hello from app\n"
        with RawConnection(port) as kept:
            kept.send(b"GET /before HTTP/1.1\r\nHost: t\r\n\r\n")
            status, _, body = kept.read_response()
            self.assertEqual((status, body), (200, hello))

            t0 = time.monotonic()
            lb.signal(signal.SIGTERM)
            # /healthz answers 503 at once.
            self.assertTrue(wait_until(lambda: lb.admin("GET", "/healthz", timeout=1)[0] == 503,
                                       0.5, 0.01),
                            "/healthz does not answer 503 right after SIGTERM")
            self.assertEqual(lb.admin("GET", "/healthz")[2], b"shutting down\n")
            self.assertTrue(wait_until(lambda: "lame duck for 2000 ms" in lb.stderr_text(), 1),
                            lb.stderr_text())
            # The listener keeps serving: new connections and the open keep-alive one.
            status, _, body = http(port, "GET", "/lame-duck-1", timeout=2)
            self.assertEqual((status, body), (200, hello))
            kept.send(b"GET /lame-duck-kept HTTP/1.1\r\nHost: t\r\n\r\n")
            status, _, body = kept.read_response(timeout=2)
            self.assertEqual((status, body), (200, hello))
            time.sleep(max(0.0, t0 + 1.5 - time.monotonic()))
            status, _, body = http(port, "GET", "/lame-duck-2", timeout=2)
            self.assertEqual((status, body), (200, hello))
            self.assertLess(time.monotonic() - t0, 1.9, "the machine is too slow for this test")
            self.assertTrue(lb.running())
            # After the delay: new connections refused, the idle keep-alive
            # connection closed, exit 0.
            self.assertTrue(wait_until(lambda: connect_refused(port), 3.5, 0.02),
                            "lb still accepts connections 3.5 s after SIGTERM with "
                            "shutdown_delay: 2s")
            refused_after = time.monotonic() - t0
            self.assertGreaterEqual(refused_after, 1.9,
                                    "lb stopped accepting %.2f s after SIGTERM, before its "
                                    "shutdown_delay (2s) was over" % refused_after)
            self.assertTrue(kept.closed_by_peer(3.0),
                            "lb did not close an idle keep-alive connection when draining")
        code = lb.wait_exit(max(0.1, t0 + 5 - time.monotonic()))
        self.assertEqual(code, 0, "lb exit code %r\n%s" % (code, lb.stderr_text()))
        self.assertGreaterEqual(time.monotonic() - t0, 1.9)
        log = lb.stderr_text()
        self.assertIn("lb: SIGTERM: lame duck for 2000 ms (/healthz answers 503, listeners keep "
                      "serving), then draining (up to 10000 ms)", log)
        self.assertIn("lb: shutdown_delay over: draining (up to 10000 ms), then exiting", log)
        self.assertIn("lb: drained: exiting", log)

    def test_second_signal_ends_the_lame_duck_and_a_reload_still_works(self):
        app = self.origin("app", log=False)
        lb = self.lb(lb_config(app, shutdown_delay="30s", proxy_protocol=False))
        port = lb.port()
        lb.signal(signal.SIGTERM)
        self.assertTrue(wait_until(lambda: "lame duck for 30000 ms" in lb.stderr_text(), 2),
                        lb.stderr_text())
        # A lame duck still serves, and still reloads on SIGHUP.
        self.assertEqual(http(port, "GET", "/during", timeout=2)[0], 200)
        lb.signal(signal.SIGHUP)
        self.assertTrue(wait_until(lambda: "SIGHUP: configuration reloaded" in lb.stderr_text(),
                                   3), lb.stderr_text())
        self.assertEqual(http(port, "GET", "/after-reload", timeout=2)[0], 200)
        # A second SIGTERM: the drain starts now, not 30 s later.
        t0 = time.monotonic()
        lb.signal(signal.SIGTERM)
        code = lb.wait_exit(5)
        self.assertEqual(code, 0, "lb exit code %r\n%s" % (code, lb.stderr_text()))
        self.assertLess(time.monotonic() - t0, 5)
        log = lb.stderr_text()
        self.assertIn("lb: second SIGTERM: draining (up to 10000 ms), then exiting", log)
        self.assertNotIn("second signal: stopping now", log)
        self.assertIn("lb: drained: exiting", log)


if __name__ == "__main__":
    harness.main()
