#!/usr/bin/env python3
"""Requests that end early or abnormally, as users hit them.

- A backend that answers while the client is still uploading (a 401 right
  after the head, as auth layers and nginx's client_max_body_size do): the
  client gets that answer, lb goes on serving (it used to crash when the rest
  of the body arrived), and the connection closes.
- A client whose body stalls past timeouts.response gets 408; more body bytes
  after that change nothing, and lb keeps serving.
- A request queued by max_connections_per_backend that leaves the queue for
  a pooled connection is no longer bound by queue_timeout: 200, not a false
  "circuit open" 503 after the backend already ran it.
- Requests cut short are logged and counted: a truncated response under the
  status that was sent, a client that leaves mid-body (so before any
  response) as 499; every
  JSON access-log line is valid JSON without duplicate keys, and lb's own log
  lines keep their "lb: " prefix whole.
"""

import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import RawConnection, http  # noqa: E402
from edge_util import RawOrigin, fixed, lb_config, read_response  # noqa: E402


def strict_json(line):
    def no_duplicates(pairs):
        keys = [k for k, _ in pairs]
        assert len(keys) == len(set(keys)), "duplicate keys in %r" % line
        return dict(pairs)
    return json.loads(line, object_pairs_hook=no_duplicates)


class Aborts(harness.TestCase):
    def test_early_answer_while_uploading(self):
        # RawOrigin reads no chunked body: it answers right after the head.
        origin = RawOrigin(fixed(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 6\r\n\r\ndenied"))
        self.addCleanup(origin.stop)
        lb = self.lb(lb_config([origin.addr]))
        port = lb.port()
        for _ in range(3):
            with RawConnection(port) as c:
                c.send(b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
                chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
                status = None
                try:
                    for _ in range(20):
                        c.send(chunk)
                        time.sleep(0.02)
                except OSError:
                    pass  # lb closed after the answer: fine
                try:
                    _, status, _, body = read_response(c)
                    self.assertEqual((status, body), (401, b"denied"))
                except (ConnectionError, TimeoutError):
                    pass  # the reset may destroy the answer in flight
            time.sleep(0.2)
            self.assertTrue(lb.running(), "lb died: %s" % lb.stderr_text()[-2000:])
        status, _, body = http(port, "GET", "/after")
        self.assertEqual((status, body), (401, b"denied"))

    def test_body_stalled_past_the_response_timeout(self):
        origin = harness.Origin("web")
        self.addCleanup(origin.cleanup)
        lb = self.lb(lb_config([origin.addr], pool_extra="    timeouts: { response: 1s }\n"))
        port = lb.port()
        with RawConnection(port) as c:
            c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
            status_line, status, _, body = read_response(c, timeout=5)
            self.assertEqual(status, 408, status_line)
            try:
                c.send(b"y" * 90)
            except OSError:
                pass
        time.sleep(0.5)
        self.assertTrue(lb.running(), "lb died: %s" % lb.stderr_text()[-2000:])
        status, _, body = http(port, "GET", "/after")
        self.assertEqual(status, 200, body)

    def test_queue_timeout_stops_when_the_request_leaves_the_queue(self):
        origin = harness.Origin("web", log=True)
        self.addCleanup(origin.cleanup)
        lb = self.lb(lb_config([origin.addr], pool_extra=(
            "    max_connections_per_backend: 1\n    queue_timeout: 1s\n")))
        port = lb.port()
        http(port, "GET", "/warm")  # one pooled connection
        results = {}

        def one(name):
            started = time.monotonic()
            status, _, body = http(port, "POST", "/echo?delay=700&" + name, body=name.encode())
            results[name] = (status, body, time.monotonic() - started)
        first = threading.Thread(target=one, args=("first",))
        first.start()
        time.sleep(0.1)
        one("second")
        first.join()
        self.assertEqual(results["first"][:2], (200, b"first"))
        self.assertEqual(results["second"][:2], (200, b"second"), results)
        self.assertLess(results["second"][2], 2.5)

    def test_cut_short_requests_are_logged_and_counted(self):
        tmp = tempfile.mkdtemp(prefix="lb-aborts-")
        self.addCleanup(shutil.rmtree, tmp, True)
        log_path = os.path.join(tmp, "access.log")
        origin = harness.Origin("web")
        self.addCleanup(origin.cleanup)
        cfg = lb_config([origin.addr], top_extra='access_log: { path: "%s", format: json }\n' % log_path)
        lb = self.lb(cfg)
        port = lb.port()
        with RawConnection(port) as c:  # the origin promises 1000 bytes, sends 500, closes
            c.send(b"GET /truncate/1000 HTTP/1.1\r\nHost: t\r\n\r\n")
            deadline = time.monotonic() + 5
            while not c.closed_by_peer(1.0):  # False on every piece of data too
                self.assertLess(time.monotonic(), deadline, "lb kept the connection open")
        with RawConnection(port) as c:  # the client leaves halfway through its body
            c.send(b"POST /echo?left HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
            time.sleep(0.3)
        time.sleep(0.3)
        status, _, _ = http(port, "GET", "/after")
        self.assertEqual(status, 200)

        def lines():
            try:
                with open(log_path) as f:
                    return [strict_json(l) for l in f if l.strip()]
            except FileNotFoundError:
                return []
        self.assertTrue(harness.wait_until(lambda: len(lines()) >= 3, timeout=5), lines())
        by_target = {r["target"]: r["status"] for r in lines()}
        self.assertEqual(by_target.get("/truncate/1000"), 200, lines())
        self.assertEqual(by_target.get("/echo?left"), 499, lines())
        self.assertEqual(lb.metric("lb_requests_total", code="499"), 1)
        for line in lb.stderr_text().splitlines():
            self.assertTrue(line.startswith("lb: ") or not line.strip(), "split log line: %r" % line)


if __name__ == "__main__":
    harness.main()
