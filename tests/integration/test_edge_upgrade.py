#!/usr/bin/env python3
"""Upgrade (WebSocket) tunnelled through lb.

The origin's GET /ws answers a WebSocket handshake with 101 and then echoes
raw bytes. Through lb:
- the handshake gets 101 with Upgrade: websocket, Connection: Upgrade and the
  right Sec-WebSocket-Accept;
- the tunnel outlives the listener's idle/header timeouts and the pool's
  response timeout: idle 10 s, it still echoes;
- 1 MiB sent in pieces comes back intact (sha256) while both directions flow;
- listener timeouts.tunnel (idle timeout of a tunnel, default 1h): traffic
  keeps it open, 2 s without any closes it;
- an upgrade the origin refuses (200, not 101) leaves a plain HTTP
  connection: the next request on it is answered normally.
"""

import base64
import hashlib
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import RawConnection  # noqa: E402
import edge_util  # noqa: E402
from edge_util import read_response, tokens, values, joined  # noqa: E402

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = base64.b64encode(hashlib.sha1(
    (KEY + "258EAFA5-E914-47DA-95CA-C5AB0DC11B85").encode()).digest()).decode()

HANDSHAKE = ("GET /ws HTTP/1.1\r\nHost: app.test\r\nUpgrade: websocket\r\n"
             "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
             "Sec-WebSocket-Version: 13\r\n\r\n" % KEY).encode()


class EdgeUpgrade(harness.TestCase):
    def setUp(self):
        self.app = self.origin("ws", log=True)

    def start_lb(self, listener_extra="", pool_extra=""):
        return self.lb(edge_util.lb_config([self.app.addr], listener_extra=listener_extra,
                                           pool_extra=pool_extra)).port()

    def handshake(self, port):
        c = RawConnection(port, timeout=10)
        self.addCleanup(c.close)
        c.send(HANDSHAKE)
        try:
            head = c.recv_until(b"\r\n\r\n", timeout=5)
        except (TimeoutError, ConnectionError) as e:
            self.fail("no answer to a WebSocket handshake (%r)" % e)
        lines = head.decode("latin-1").split("\r\n")
        headers = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:] if line]
        self.assertTrue(lines[0].startswith("HTTP/1.1 101"),
                        "handshake answered %r (origin saw %r)"
                        % (head, [e["headers"] for e in self.app.log_entries()]))
        self.assertIn("websocket", tokens(joined(headers, "Upgrade")), headers)
        self.assertIn("upgrade", tokens(joined(headers, "Connection")), headers)
        self.assertEqual(values(headers, "Sec-WebSocket-Accept"), [ACCEPT], headers)
        return c

    def echo(self, c, data, timeout=5):
        c.send(data)
        got = c._recv_exact(len(data), time.monotonic() + timeout)
        self.assertEqual(got, data)

    def test_handshake_and_echo(self):
        c = self.handshake(self.start_lb())
        self.echo(c, b"hello")
        self.echo(c, b"\x81\x05world")
        # The origin got a real upgrade request.
        entries = [e for e in self.app.log_entries() if e["target"] == "/ws"]
        self.assertEqual(len(entries), 1)
        hdrs = entries[0]["headers"]
        self.assertEqual(values(hdrs, "Sec-WebSocket-Key"), [KEY])
        self.assertEqual(values(hdrs, "Sec-WebSocket-Version"), ["13"])

    def test_tunnel_survives_idle_10s(self):
        # Short listener and pool timeouts: none of them applies to a tunnel.
        port = self.start_lb("    timeouts: { header: 2s, idle: 2s }\n",
                             "    timeouts: { connect: 2s, response: 2s, idle: 2s }\n")
        c = self.handshake(port)
        self.echo(c, b"before")
        time.sleep(10)
        try:
            self.echo(c, b"after 10 s idle")
        except (TimeoutError, ConnectionError, OSError) as e:
            self.fail("the tunnel did not survive 10 s idle: %r" % e)

    def test_tunnel_1mib_both_ways(self):
        c = self.handshake(self.start_lb())
        data = os.urandom(1 << 20)
        errors = []

        def sender():
            try:
                for off in range(0, len(data), 7001):
                    c.sock.sendall(data[off:off + 7001])
            except OSError as e:
                errors.append(e)
        t = threading.Thread(target=sender, daemon=True)
        t.start()
        got = c._recv_exact(len(data), time.monotonic() + 30)
        t.join(10)
        self.assertEqual(errors, [])
        self.assertEqual(hashlib.sha256(got).hexdigest(), hashlib.sha256(data).hexdigest(),
                         "the echoed MiB differs")
        self.echo(c, b"still there")

    def test_tunnel_idle_timeout(self):
        port = self.start_lb("    timeouts: { tunnel: 2s }\n")
        c = self.handshake(port)
        # Traffic every second keeps it open past the 2 s tunnel timeout.
        for i in range(4):
            self.echo(c, b"tick %d" % i)
            time.sleep(1.0)
        self.echo(c, b"last")
        t0 = time.monotonic()
        closed = c.closed_by_peer(6.0)
        elapsed = time.monotonic() - t0
        self.assertTrue(closed, "a tunnel idle for 6 s was not closed (timeouts.tunnel: 2s)")
        self.assertGreaterEqual(elapsed, 1.5, "tunnel closed after only %.2f s idle" % elapsed)
        self.assertLessEqual(elapsed, 4.5, "tunnel closed after %.2f s idle" % elapsed)

    def test_refused_upgrade_stays_http(self):
        port = self.start_lb()
        with RawConnection(port) as c:
            # /headers answers 200 whatever the Upgrade header says.
            c.send(HANDSHAKE.replace(b"GET /ws ", b"GET /headers "))
            status_line, status, headers, body = read_response(c)
            self.assertEqual(status, 200, status_line)
            seen = json.loads(body)["headers"]
            self.assertIn("websocket", tokens(joined(seen, "Upgrade")),
                          "an upgrade request reached the origin without Upgrade: %r" % seen)
            c.send(b"GET /after HTTP/1.1\r\nHost: app.test\r\n\r\n")
            status_line, status, headers, body = read_response(c)
            self.assertEqual((status, body), (200, b"Hello from ws\n"), status_line)
            c.send(b"POST /echo HTTP/1.1\r\nHost: app.test\r\nContent-Length: 3\r\n\r\nabc")
            status_line, status, headers, body = read_response(c)
            self.assertEqual((status, body), (200, b"abc"), status_line)


if __name__ == "__main__":
    harness.main()
