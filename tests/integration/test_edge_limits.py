#!/usr/bin/env python3
"""Limits and timeouts at the edge.

- limits.max_header_bytes: a head over the limit -> 431, connection closed,
  nothing reaches the origin; a request target over 8 KiB -> 414;
- limits.max_body_bytes: a Content-Length over the limit -> 413 before any
  body byte is read (no "100 Continue" first); a chunked body growing over
  the limit -> 413 and the origin never gets a complete request;
- timeouts.header: a head trickling in one byte per 300 ms -> 408 about
  timeouts.header after the first byte, then close; a connection that never
  sends a byte is closed silently after timeouts.idle;
- slowloris at scale: 5,000 connections trickling header bytes do not slow
  a concurrent keep-alive client down (median latency at most 2x + 5 ms) and
  each gets a 408 within timeouts.header + 3 s;
- limits.max_connections: the connection over the limit is accepted by the
  kernel but served only once another one closes; with two workers the limit
  counts both.
"""

import json
import os
import resource
import selectors
import socket
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import RawConnection  # noqa: E402
import edge_util  # noqa: E402
from edge_util import read_response, values  # noqa: E402

KiB = 1024


class EdgeLimits(harness.TestCase):
    def setUp(self):
        self.app = self.origin("app-1", log=True)

    def start_lb(self, listener_extra, workers=1):
        lb = self.lb(edge_util.lb_config([self.app.addr], listener_extra=listener_extra,
                                         workers=workers))
        return lb.port()

    def assert_lb_error(self, status_line, status, headers, body, want):
        self.assertEqual(status, want, "%s %r" % (status_line, body[:300]))
        self.assertTrue(status_line.startswith("HTTP/1.1 %d" % want), status_line)
        self.assertEqual(values(headers, "X-Origin"), [], "answered by the origin")
        self.assertRegex(body.decode("utf-8", "replace").lower(), r"request id [0-9a-z._:-]{16,}",
                         "%d body has no request id: %r" % (want, body))

    def assert_origin_saw_nothing(self, path_prefix="/edge/"):
        time.sleep(0.2)
        seen = [e["target"] for e in self.app.log_entries() if e["target"].startswith(path_prefix)]
        self.assertEqual(seen, [], "the origin received %r" % seen)

    # -- sizes -----------------------------------------------------------------------
    def test_header_too_large_431(self):
        port = self.start_lb("    limits: { max_header_bytes: 4KiB }\n")
        # Control: a 3 KiB header fits.
        with RawConnection(port) as c:
            c.send(b"GET /ok HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * (3 * KiB) + b"\r\n\r\n")
            status_line, status, headers, body = read_response(c)
            self.assertEqual(status, 200, status_line)
        with RawConnection(port) as c:
            c.send(b"GET /edge/431 HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * (6 * KiB)
                   + b"\r\n\r\n")
            try:
                r = read_response(c)
            except (TimeoutError, ConnectionError) as e:
                self.fail("no response from lb (%r)" % e)
            self.assert_lb_error(*r, 431)
            self.assertTrue(c.closed_by_peer(3.0), "lb kept the connection open after a 431")
        self.assert_origin_saw_nothing()

    def test_target_too_long_414(self):
        port = self.start_lb("    limits: { max_header_bytes: 64KiB }\n")
        with RawConnection(port) as c:
            c.send(b"GET /ok/" + b"a" * (4 * KiB) + b" HTTP/1.1\r\nHost: t\r\n\r\n")
            status_line, status, headers, body = read_response(c)
            self.assertEqual(status, 200, status_line)
        with RawConnection(port) as c:
            c.send(b"GET /edge/" + b"a" * (9 * KiB) + b" HTTP/1.1\r\nHost: t\r\n\r\n")
            try:
                r = read_response(c)
            except (TimeoutError, ConnectionError) as e:
                self.fail("no response from lb (%r)" % e)
            self.assert_lb_error(*r, 414)
        self.assert_origin_saw_nothing()

    def test_body_content_length_too_large_413_before_body(self):
        port = self.start_lb("    limits: { max_body_bytes: 1KiB }\n")
        with RawConnection(port) as c:
            c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n"
                   + b"x" * 1000)
            status_line, status, headers, body = read_response(c)
            self.assertEqual((status, len(body)), (200, 1000), status_line)
        with RawConnection(port) as c:
            # Only the head: lb must answer without waiting for (or asking for) the body.
            c.send(b"POST /edge/413 HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n"
                   b"Expect: 100-continue\r\n\r\n")
            try:
                head = c.recv_until(b"\r\n\r\n", timeout=5)
            except (TimeoutError, ConnectionError) as e:
                self.fail("no answer to a head announcing 5000 bytes over a 1 KiB limit (%r)"
                          % e)
            first = head.split(b"\r\n", 1)[0]
            self.assertFalse(first.startswith(b"HTTP/1.1 100"),
                             "lb asked for a body it will refuse: %r" % head)
            c.buf[:0] = head
            self.assert_lb_error(*read_response(c), 413)
        self.assert_origin_saw_nothing()

    def test_body_chunked_too_large_413(self):
        port = self.start_lb("    limits: { max_body_bytes: 1KiB }\n")
        chunk = b"200\r\n" + b"c" * 512 + b"\r\n"
        with RawConnection(port) as c:
            c.send(b"POST /edge/413-chunked HTTP/1.1\r\nHost: t\r\n"
                   b"Transfer-Encoding: chunked\r\n\r\n" + chunk * 4 + b"0\r\n\r\n")
            try:
                status_line, status, headers, body = read_response(c)
            except ConnectionError:
                status_line, status, body = "(closed without a response)", None, b""
            except TimeoutError:
                self.fail("no answer and no close for a 2 KiB chunked body over a 1 KiB limit")
            # The origin cannot have answered (it waits for the whole body), so lb
            # must still be able to say 413.
            self.assertEqual(status, 413, "%s %r" % (status_line, body[:200]))
            self.assertIn("request id", body.decode("utf-8", "replace").lower(), body)
            self.assertTrue(c.closed_by_peer(3.0), "lb kept the connection open after a 413")
        self.assert_origin_saw_nothing()

    # -- timeouts ------------------------------------------------------------------
    def test_header_timeout_408(self):
        port = self.start_lb("    timeouts: { header: 1s, idle: 10s }\n")
        s = socket.create_connection(("127.0.0.1", port))
        self.addCleanup(s.close)
        s.setblocking(False)
        sel = selectors.DefaultSelector()
        self.addCleanup(sel.close)
        sel.register(s, selectors.EVENT_READ)
        trickle = b"X-Slow: " + b"a" * 100
        t_first = time.monotonic()
        s.send(b"GET /edge/slow HTTP/1.1\r\n")
        got = bytearray()
        t_response = None
        closed = False
        sent = 0
        next_send = t_first + 0.3
        deadline = t_first + 6.0
        while time.monotonic() < deadline and not closed:
            now = time.monotonic()
            if now >= next_send and t_response is None and sent < len(trickle):
                try:
                    s.send(trickle[sent:sent + 1])
                    sent += 1
                except OSError:
                    pass
                next_send += 0.3
            for _ in sel.select(max(0.0, min(next_send, deadline) - time.monotonic())):
                try:
                    b = s.recv(65536)
                except BlockingIOError:
                    continue
                except ConnectionResetError:
                    b = b""
                if not b:
                    closed = True
                    break
                if t_response is None:
                    t_response = time.monotonic()
                got += b
        self.assertIsNotNone(t_response, "no response to a trickling head in 6 s (%d bytes sent)"
                             % sent)
        elapsed = t_response - t_first
        self.assertTrue(got.startswith(b"HTTP/1.1 408"), bytes(got[:200]))
        self.assertGreaterEqual(elapsed, 0.9, "408 before timeouts.header (%.2f s)" % elapsed)
        self.assertLessEqual(elapsed, 2.5, "408 after %.2f s with timeouts.header: 1s" % elapsed)
        self.assertRegex(bytes(got).lower(), rb"request id [0-9a-z._:-]{16,}", bytes(got))
        self.assertTrue(closed, "lb did not close the connection after the 408")
        self.assert_origin_saw_nothing()

    def test_silent_connection_closed_after_idle(self):
        port = self.start_lb("    timeouts: { header: 5s, idle: 1s }\n")
        with RawConnection(port) as c:
            t0 = time.monotonic()
            closed = c.closed_by_peer(4.0)
            elapsed = time.monotonic() - t0
            self.assertTrue(closed, "a connection that sent nothing was not closed in 4 s "
                                    "(timeouts.idle: 1s); got %r" % bytes(c.buf[:200]))
            self.assertEqual(bytes(c.buf), b"", "lb wrote to a connection that sent nothing")
            self.assertGreaterEqual(elapsed, 0.8, "closed after only %.2f s" % elapsed)
            self.assertLessEqual(elapsed, 3.0, "closed after %.2f s with idle: 1s" % elapsed)

    # -- slowloris -------------------------------------------------------------------
    def test_slowloris_5000_connections(self):
        conns = 5000
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY and hard < 4096:
            self.skipTest("RLIMIT_NOFILE hard limit %d < 4096" % hard)
        want = hard if hard != resource.RLIM_INFINITY else 65536
        if soft == resource.RLIM_INFINITY or soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))  # lb inherits it
        header_timeout = 3.0
        port = self.start_lb("    timeouts: { header: 3s, idle: 30s }\n", workers=2)

        # The measuring client is its own process, so the GIL of this one (busy
        # with 5,000 sockets) does not count as lb latency.
        duration = 12.0
        client = subprocess.Popen(
            [sys.executable, "-c", _LATENCY_CLIENT, str(port), str(duration)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.addCleanup(lambda: client.poll() is None and client.kill())
        time.sleep(3.5)  # baseline

        sel = selectors.DefaultSelector()
        self.addCleanup(sel.close)
        socks = []
        trickle = b"X-Slow: " + b"a" * 64
        attack_start = time.monotonic()
        for i in range(conns):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            socks.append(s)
        self.addCleanup(lambda: [s.close() for s in socks])
        state = [{"t0": None, "sent": 0, "got": bytearray(), "closed_at": None}
                 for _ in range(conns)]
        for i, s in enumerate(socks):
            sel.register(s, selectors.EVENT_READ, i)
        # Request lines (retrying sockets whose connect is still in progress).
        pending = list(range(conns))
        while pending and time.monotonic() - attack_start < 5:
            left = []
            for i in pending:
                try:
                    socks[i].send(b"GET /edge/loris HTTP/1.1\r\n")
                    state[i]["t0"] = time.monotonic()
                except (BlockingIOError, OSError):
                    left.append(i)
            pending = left
            if pending:
                time.sleep(0.01)
        self.assertEqual(pending, [], "%d connections could not even send a request line"
                         % len(pending))
        attack_established = time.monotonic()

        tick = 0.05
        buckets = 20  # each connection sends a byte every buckets * tick = 1 s
        next_tick = time.monotonic() + tick
        deadline = attack_established + header_timeout + 4.0
        open_count = conns
        n_tick = 0
        while open_count and time.monotonic() < deadline:
            now = time.monotonic()
            if now >= next_tick:
                b = n_tick % buckets
                for i in range(b, conns, buckets):
                    st = state[i]
                    if st["closed_at"] is None and not st["got"]:
                        try:
                            socks[i].send(trickle[st["sent"] % len(trickle):][:1])
                            st["sent"] += 1
                        except (BlockingIOError, OSError):
                            pass
                n_tick += 1
                next_tick += tick
            for key, _ in sel.select(max(0.0, next_tick - time.monotonic())):
                i = key.data
                st = state[i]
                try:
                    data = socks[i].recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if data:
                    st["got"] += data
                else:
                    st["closed_at"] = time.monotonic()
                    sel.unregister(socks[i])
                    open_count -= 1
        attack_end = time.monotonic()

        out, err = client.communicate(timeout=duration + 10)
        samples = json.loads(out or b"[]")
        self.assertTrue(samples, "latency client produced nothing: %r" % err[-500:])
        before = [lat for t, lat in samples if attack_start - 3.0 <= t < attack_start]
        during = [lat for t, lat in samples if attack_start <= t < attack_end]
        errors = [lat for t, lat in samples if lat is None or lat < 0]
        self.assertEqual(errors, [], "the keep-alive client had failed requests")
        self.assertGreater(len(before), 10, "too few baseline samples")
        self.assertGreater(len(during), 10, "too few samples during the attack")
        m_before = statistics.median(before) * 1000
        m_during = statistics.median(during) * 1000
        print("\nslowloris: keep-alive client median latency %.2f ms before (%d samples), "
              "%.2f ms during the attack (%d samples, %.1f s)"
              % (m_before, len(before), m_during, len(during), attack_end - attack_start),
              file=sys.stderr)

        never_closed = [i for i in range(conns) if state[i]["closed_at"] is None]
        not_408 = [i for i in range(conns)
                   if state[i]["closed_at"] is not None
                   and not bytes(state[i]["got"]).startswith(b"HTTP/1.1 408")]
        late = [i for i in range(conns) if state[i]["closed_at"] is not None
                and state[i]["closed_at"] - state[i]["t0"] > header_timeout + 3.0]
        self.assertEqual(len(never_closed), 0,
                         "%d of %d slowloris connections still open %.1f s after their "
                         "request line" % (len(never_closed), conns, header_timeout + 4.0))
        self.assertEqual(len(not_408), 0, "%d connections closed without a 408, e.g. %r"
                         % (len(not_408), bytes(state[not_408[0]]["got"][:100])
                            if not_408 else b""))
        self.assertEqual(len(late), 0, "%d connections closed later than header timeout + 3 s"
                         % len(late))
        self.assertLessEqual(m_during, 2 * m_before + 5.0,
                             "keep-alive latency %.2f ms during the attack vs %.2f ms before"
                             % (m_during, m_before))
        self.assert_origin_saw_nothing()

    # -- max_connections ----------------------------------------------------------------
    def check_max_connections(self, workers, limit, rounds):
        """`limit` connections are served; each one over the limit waits in the
        kernel's queue and is served once another one closes. With several
        workers the limit counts them all: the kernel's spread over their
        sockets decides nothing."""
        port = self.start_lb("    limits: { max_connections: %d }\n"
                             "    timeouts: { header: 30s, idle: 60s }\n" % limit, workers=workers)
        held = []
        self.addCleanup(lambda: [c.close() for c in held])
        for i in range(limit):
            c = RawConnection(port, timeout=10)
            held.append(c)
            c.send(b"GET /held/%d HTTP/1.1\r\nHost: t\r\n\r\n" % i)
            try:
                status_line, status, headers, body = read_response(c, timeout=5)
            except (TimeoutError, ConnectionError) as e:
                self.fail("connection %d of max_connections: %d (workers: %d) was not served: %r"
                          % (i + 1, limit, workers, e))
            self.assertEqual(status, 200, "connection %d: %s" % (i, status_line))
        waits = []
        for r in range(rounds):
            extra = RawConnection(port, timeout=10)  # accepted by the kernel (backlog)
            held.append(extra)
            extra.send(b"GET /extra/%d HTTP/1.1\r\nHost: t\r\n\r\n" % r)
            try:
                head = extra.recv_until(b"\r\n\r\n", timeout=1.5)
                self.fail("connection %d was served over max_connections: %d: %r"
                          % (limit + 1, limit, head))
            except TimeoutError:
                pass
            except ConnectionError as e:
                self.fail("connection %d was closed instead of waiting: %r" % (limit + 1, e))
            held.pop(0).close()
            t0 = time.monotonic()
            try:
                status_line, status, headers, body = read_response(extra, timeout=8)
            except (TimeoutError, ConnectionError) as e:
                self.fail("the waiting connection was not served after one of the %d closed (%r)"
                          % (limit, e))
            waits.append(time.monotonic() - t0)
            self.assertEqual((status, body), (200, b"Hello from app-1\n"), status_line)
        print("\nmax_connections: %d (workers: %d): the waiting connection served %s s after a "
              "slot freed" % (limit, workers, ", ".join("%.2f" % w for w in waits)), file=sys.stderr)
        # The held connections were not disturbed.
        held[0].send(b"GET /held/again HTTP/1.1\r\nHost: t\r\n\r\n")
        status_line, status, headers, body = read_response(held[0])
        self.assertEqual(status, 200, status_line)

    def test_max_connections(self):
        self.check_max_connections(workers=1, limit=20, rounds=1)

    def test_max_connections_counts_every_worker(self):
        # 16 connections over two workers' sockets land 8:8 only one time in
        # five: a limit split per worker would leave one waiting below 16.
        # Three rounds: a slot freed on one worker serves a connection queued
        # on the other.
        self.check_max_connections(workers=2, limit=16, rounds=3)

    def test_max_connections_changed_by_reload(self):
        cfg = lambda limit: edge_util.lb_config(  # noqa: E731
            [self.app.addr], workers=2,
            listener_extra="    limits: { max_connections: %d }\n"
                           "    timeouts: { header: 30s, idle: 60s }\n" % limit)
        lb = self.lb(cfg(4))
        port = lb.port()
        conns = []
        self.addCleanup(lambda: [c.close() for c in conns])

        def open_one(tag):
            c = RawConnection(port, timeout=10)
            conns.append(c)
            c.send(b"GET /%s HTTP/1.1\r\nHost: t\r\n\r\n" % tag.encode())
            return c

        def served(c, within):
            try:
                status_line, status, _, _ = read_response(c, timeout=within)
                return status == 200
            except TimeoutError:
                return False

        for i in range(4):
            self.assertTrue(served(open_one("held/%d" % i), 5), "connection %d of 4" % (i + 1))
        waiting = [open_one("waiting/%d" % i) for i in range(2)]
        self.assertFalse(served(waiting[0], 1.0), "the 5th connection was served over 4")
        # Raised to 6: both waiting connections are served, a 7th waits.
        lb.write_config(cfg(6))
        status, _, body = lb.admin("POST", "/reload")
        self.assertEqual(status, 200, body)
        for i, c in enumerate(waiting):
            self.assertTrue(served(c, 5), "waiting connection %d not served after the limit "
                            "was raised to 6" % (i + 1))
        seventh = open_one("seventh")
        self.assertFalse(served(seventh, 1.0), "the 7th connection was served over 6")
        # Lowered to 3: the 6 open ones stay; a new one is served only once
        # fewer than 3 are open.
        lb.write_config(cfg(3))
        status, _, body = lb.admin("POST", "/reload")
        self.assertEqual(status, 200, body)
        for c in conns[:3]:
            c.send(b"GET /still HTTP/1.1\r\nHost: t\r\n\r\n")
            self.assertTrue(served(c, 5), "an open connection was not served after the reload")
        for c in conns[:3]:
            c.close()
        self.assertFalse(served(seventh, 1.0), "served with 3 open and max_connections: 3")
        conns[3].close()
        self.assertTrue(served(seventh, 5), "not served with 2 open and max_connections: 3")


# Runs in a subprocess: GETs on one keep-alive connection for argv[2] seconds,
# then prints JSON [[monotonic start, latency seconds or null on error], ...].
_LATENCY_CLIENT = r"""
import http.client, json, sys, time
port, duration = int(sys.argv[1]), float(sys.argv[2])
end = time.monotonic() + duration
out = []
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
while time.monotonic() < end:
    t = time.monotonic()
    try:
        conn.request("GET", "/latency")
        r = conn.getresponse()
        r.read()
        out.append([t, time.monotonic() - t if r.status == 200 else None])
    except Exception:
        out.append([t, None])
        conn.close()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    time.sleep(0.02)
print(json.dumps(out))
"""


if __name__ == "__main__":
    harness.main()
