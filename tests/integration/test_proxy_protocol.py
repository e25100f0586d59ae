#!/usr/bin/env python3
"""PROXY protocol v1/v2 on a listener with proxy_protocol: true.

An outer L4 balancer (HAProxy, an AWS NLB, ...) prepends a PROXY header naming
the real client. lb takes the client address from it for X-Forwarded-For (and
logs, hashing); a bad or missing header closes the connection before anything
reaches a backend.
"""

import json
import os
import socket
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import RawConnection  # noqa: E402

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def v2_header(src, dst, src_port, dst_port, tlv=b""):
    if ":" in src:
        addresses = (socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
                     + struct.pack("!HH", src_port, dst_port))
        family = 0x21
    else:
        addresses = (socket.inet_aton(src) + socket.inet_aton(dst)
                     + struct.pack("!HH", src_port, dst_port))
        family = 0x11
    body = addresses + tlv
    return V2_SIGNATURE + bytes([0x21, family]) + struct.pack("!H", len(body)) + body


def config(origin, proxy_protocol=True):
    return f"""
workers: 1
admin: {{ listen: 127.0.0.1:0 }}
access_log: {{ path: "off" }}
listeners:
  - name: public
    listen: 127.0.0.1:0
    proxy_protocol: {"true" if proxy_protocol else "false"}
    routes: [ {{ pool: web }} ]
pools:
  web:
    backends: [ "{origin.addr}" ]
"""


class ProxyProtocol(harness.TestCase):
    def setUp(self):
        self.web = self.origin("web")

    def forwarded_for(self, port, preamble, requests=1):
        seen = []
        with RawConnection(port) as c:
            c.send(preamble)
            for i in range(requests):
                c.send(b"GET /headers HTTP/1.1\r\nHost: t\r\n\r\n")
                status, headers, body = c.read_response()
                self.assertEqual(status, 200, body[:200])
                values = [v for k, v in json.loads(body)["headers"] if k.lower() == "x-forwarded-for"]
                seen.append(values)
        return seen

    def test_v1_tcp4(self):
        lb = self.lb(config(self.web))
        seen = self.forwarded_for(lb.port(), b"PROXY TCP4 203.0.113.9 192.0.2.1 40000 443\r\n", 2)
        self.assertEqual(seen, [["203.0.113.9"], ["203.0.113.9"]])

    def test_v1_tcp6_and_unknown(self):
        lb = self.lb(config(self.web))
        seen = self.forwarded_for(lb.port(), b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 443\r\n")
        self.assertEqual(seen, [["2001:db8::7"]])
        # UNKNOWN: the connection's own address stays.
        seen = self.forwarded_for(lb.port(), b"PROXY UNKNOWN\r\n")
        self.assertEqual(seen, [["127.0.0.1"]])

    def test_v2_ipv4_with_tlv_and_ipv6(self):
        lb = self.lb(config(self.web))
        tlv = b"\x04\x00\x03abc"  # a NOOP TLV, skipped
        seen = self.forwarded_for(lb.port(), v2_header("198.51.100.20", "192.0.2.1", 5555, 80, tlv))
        self.assertEqual(seen, [["198.51.100.20"]])
        seen = self.forwarded_for(lb.port(), v2_header("2001:db8::42", "2001:db8::1", 5555, 80))
        self.assertEqual(seen, [["2001:db8::42"]])

    def test_header_split_across_writes(self):
        lb = self.lb(config(self.web))
        with RawConnection(lb.port()) as c:
            for piece in (b"PROXY TCP4 203.0.", b"113.50 192.0.2.1 1 2", b"\r\nGET /headers HTTP/1.1\r\n",
                          b"Host: t\r\n\r\n"):
                c.send(piece)
            status, headers, body = c.read_response()
        self.assertEqual(status, 200)
        values = [v for k, v in json.loads(body)["headers"] if k.lower() == "x-forwarded-for"]
        self.assertEqual(values, ["203.0.113.50"])

    def test_bad_or_missing_header_closes_and_reaches_nothing(self):
        lb = self.lb(config(self.web))
        for bad in (b"GET / HTTP/1.1\r\nHost: t\r\n\r\n",            # no header at all
                    b"PROXY TCP4 999.1.1.1 192.0.2.1 1 2\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n",
                    b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n",
                    V2_SIGNATURE + b"\x31\x11\x00\x0c" + b"\x00" * 12):  # version 3
            got = harness.raw(lb.port(), bad, timeout=3)
            self.assertEqual(got, b"", "lb answered %r to %r" % (got[:80], bad[:40]))
        self.assertEqual(self.web.stats()["requests"], 0)
        self.assertTrue(lb.running())

    def test_plain_listener_refuses_a_proxy_line_as_http(self):
        lb = self.lb(config(self.web, proxy_protocol=False))
        got = harness.raw(lb.port(), b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n")
        self.assertTrue(got.startswith(b"HTTP/1.1 400"), got[:100])
        self.assertEqual(self.web.stats()["requests"], 0)


if __name__ == "__main__":
    harness.main()
