#!/usr/bin/env python3
"""HTTP/1.1 conformance at the edge, from raw bytes (RFC 9110, RFC 9112).

Response side, against scripted origins:
- a response head that arrives in pieces (the origin pauses mid-head, while
  another client has sent half a request) reaches the client whole and
  byte-exact, once, and the connection stays usable;
- 204 with Content-Length and a body, 204 chunked: the client gets the head
  only, without framing fields, and the next pipelined request its answer;
  304 with Content-Length (allowed, RFC 9110 §8.6) ends at its head at once;
- a 1xx goes to an HTTP/1.1 client but not to an HTTP/1.0 one (RFC 9110 §15.2);
- status 600, status 099 and an "HTTP/2.0" status line are invalid: 502;
- response trailers that arrive split over reads pass through intact.

Request side:
- "Connection: Content-Length" / "Connection: Transfer-Encoding" do not strip
  the framing: the origin gets exactly one request with its length, and the
  body's embedded request stays body (no smuggling onto the pooled connection);
- request trailers split over reads are accepted (200, body intact);
- an absolute-form target with a query but no path is routed by "/", sent to
  the origin in origin-form with Host set to its authority;
- a fragment in the target, "GET *": 400; an unknown but well-formed method
  ("FOO", "get"): 501; more than 100 header fields: 431; CONNECT: 405 with
  an Allow header that leaves it out;
- lb's own error answer to HEAD has no body and keeps the connection;
- "Upgrade: h2c" is not passed on: the origin answers the request over 1.1;
- TE: trailers goes out with "Connection: TE".
- Max-Forwards (RFC 9110 §7.6.2): OPTIONS or TRACE with Max-Forwards: 0 is
  answered by lb (OPTIONS: an empty 200, also for "*" that no route matches;
  TRACE: the request echoed as message/http, without Cookie and
  Authorization); with N > 0 it reaches the origin with N - 1; other methods
  and values that are not numbers pass through untouched.
"""

import json
import os
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import RawConnection  # noqa: E402
from edge_util import RawOrigin, fixed, lb_config, read_response, values  # noqa: E402


def recv_all_until_quiet(sock, quiet=0.5, limit=5.0):
    """Everything the peer sends until it is quiet for `quiet` s (or closes)."""
    data = bytearray()
    deadline = time.monotonic() + limit
    sock.settimeout(quiet)
    while time.monotonic() < deadline:
        try:
            b = sock.recv(65536)
        except socket.timeout:
            break
        if not b:
            break
        data += b
    return bytes(data)


class Conformance(harness.TestCase):
    def raw_lb(self, respond, **kw):
        origin = RawOrigin(respond, **kw)
        self.addCleanup(origin.stop)
        lb = self.lb(lb_config([origin.addr], listener_extra="    headers: { via: false }\n"))
        return origin, lb.port()

    # -- responses ------------------------------------------------------------------
    def test_response_head_in_pieces(self):
        pieces = [b"HTTP/1.1 200 OK\r\nX-A: 1\r\n", b"Content-Length: 2\r\n", b"\r\nok"]
        origin, port = self.raw_lb(lambda head, body: list(pieces), pause=0.4)
        # Another client parks half a request with a secret in it meanwhile.
        other = socket.create_connection(("127.0.0.1", port))
        self.addCleanup(other.close)
        with RawConnection(port) as c:
            c.send(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n")
            time.sleep(0.2)
            other.sendall(b"GET /victim HTTP/1.1\r\nHost: t\r\nCookie: session=SECRET-4242\r\n")
            got = recv_all_until_quiet(c.sock, quiet=1.5)
            self.assertNotIn(b"SECRET", got)
            head, _, body = got.partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            self.assertEqual(lines[0], b"HTTP/1.1 200 OK", got[:300])
            self.assertEqual(body, b"ok", got[:300])
            self.assertEqual(sum(1 for l in lines if l.startswith(b"HTTP/")), 1, got[:300])
            self.assertIn(b"X-A: 1", lines)
            self.assertIn(b"Content-Length: 2", lines)
            # Still usable.
            c.send(b"GET /b HTTP/1.1\r\nHost: t\r\n\r\n")
            _, status, _, body = read_response(c)
            self.assertEqual((status, body), (200, b"ok"))

    def test_204_and_304_end_at_their_head(self):
        answers = {
            b"/204-cl": b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello",
            b"/204-chunked": b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"/304-cl": b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\nETag: \"x\"\r\n\r\n",
        }

        def respond(head, body):
            target = head.split(b" ")[1]
            return answers.get(target, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nafter")
        origin, port = self.raw_lb(respond)
        for target in answers:
            with RawConnection(port) as c:
                started = time.monotonic()
                c.send(b"GET " + target + b" HTTP/1.1\r\nHost: t\r\n\r\n"
                       b"GET /after HTTP/1.1\r\nHost: t\r\n\r\n")
                got = recv_all_until_quiet(c.sock, quiet=1.0)
                self.assertLess(time.monotonic() - started, 2.5, "%s: waited for a body" % target)
                first, _, rest = got.partition(b"\r\n\r\n")
                status = int(first.split(b" ")[1])
                self.assertEqual(status, int(target[1:4]), got)
                names = [l.split(b":")[0].lower() for l in first.split(b"\r\n")[1:]]
                self.assertNotIn(b"transfer-encoding", names, got)
                if status == 204:
                    self.assertNotIn(b"content-length", names, got)
                else:
                    self.assertIn(b"content-length", names, got)  # metadata in a 304
                self.assertTrue(rest.startswith(b"HTTP/1.1 200 OK"), "%s: %r" % (target, got))
                self.assertTrue(rest.endswith(b"\r\n\r\nafter"), "%s: %r" % (target, got))

    def test_interim_responses_and_http10(self):
        origin, port = self.raw_lb(fixed(
            b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
        with RawConnection(port) as c:
            c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            got = recv_all_until_quiet(c.sock)
            self.assertTrue(got.startswith(b"HTTP/1.1 103 Early Hints\r\n"), got)
            self.assertTrue(got.endswith(b"\r\n\r\nok"), got)
        with RawConnection(port) as c:
            c.send(b"GET / HTTP/1.0\r\nHost: t\r\n\r\n")
            got = recv_all_until_quiet(c.sock)
            self.assertTrue(got.startswith(b"HTTP/1.1 200 OK\r\n"), got)
            self.assertNotIn(b"103", got)
            self.assertTrue(got.endswith(b"\r\n\r\nok"), got)

    def test_invalid_status_lines_are_502(self):
        for line in (b"HTTP/1.1 600 Odd", b"HTTP/1.1 099 Odd", b"HTTP/2.0 200 OK"):
            origin, port = self.raw_lb(fixed(line + b"\r\nContent-Length: 2\r\n\r\nok"))
            with RawConnection(port) as c:
                c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                status_line, status, _, body = read_response(c)
                self.assertEqual(status, 502, "%r: %s %r" % (line, status_line, body))
                self.assertIn(b"invalid response", body)

    def test_response_trailers_in_pieces(self):
        pieces = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
                  b"0\r\nX-Check", b"sum: 1234\r\n\r\n"]
        origin, port = self.raw_lb(lambda head, body: list(pieces), pause=0.3)
        with RawConnection(port) as c:
            c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            got = recv_all_until_quiet(c.sock, quiet=1.0)
            self.assertTrue(got.endswith(b"\r\n\r\n3\r\nabc\r\n0\r\nX-Checksum: 1234\r\n\r\n"), got)
            c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            self.assertTrue(recv_all_until_quiet(c.sock, quiet=1.0).startswith(b"HTTP/1.1 200"))

    # -- requests ---------------------------------------------------------------------
    def test_connection_cannot_strip_framing(self):
        origin, port = self.raw_lb(fixed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
        smuggled = b"GET /admin/secret HTTP/1.1\r\nHost: a\r\nX-Ignore: "
        with RawConnection(port) as c:
            c.send(b"POST /a HTTP/1.1\r\nHost: t\r\nConnection: Content-Length\r\n"
                   b"Content-Length: %d\r\n\r\n" % len(smuggled) + smuggled)
            _, status, _, body = read_response(c)
            self.assertEqual((status, body), (200, b"ok"))
        with RawConnection(port) as c:
            c.send(b"GET /victim HTTP/1.1\r\nHost: t\r\n\r\n")
            _, status, _, body = read_response(c)
            self.assertEqual((status, body), (200, b"ok"))
        heads = [h for _, h, _ in origin.requests]
        self.assertEqual([h.split(b" ")[1] for h in heads], [b"/a", b"/victim"], heads)
        self.assertIn(b"Content-Length: %d" % len(smuggled), heads[0])
        self.assertEqual(origin.requests[0][2], smuggled)

    def test_connection_cannot_strip_transfer_encoding(self):
        origin = harness.Origin("echo", log=True)
        self.addCleanup(origin.cleanup)
        port = self.lb(lb_config([origin.addr])).port()
        with RawConnection(port) as c:
            c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nConnection: Transfer-Encoding\r\n"
                   b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
            _, status, _, body = read_response(c)
            self.assertEqual((status, body), (200, b"hello"))

    def test_request_trailers_in_pieces(self):
        origin = harness.Origin("echo", log=True)
        self.addCleanup(origin.cleanup)
        port = self.lb(lb_config([origin.addr])).port()
        with RawConnection(port) as c:
            c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
            time.sleep(0.3)
            c.send(b"0\r\nX-Check")
            time.sleep(0.3)
            c.send(b"sum: 1234\r\n\r\n")
            status_line, status, _, body = read_response(c)
            self.assertEqual((status, body), (200, b"abc"), status_line)

    def test_absolute_form_goes_out_in_origin_form(self):
        web = RawOrigin(fixed(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nweb"))
        admin = RawOrigin(fixed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nadmin"))
        self.addCleanup(web.stop)
        self.addCleanup(admin.stop)
        routes = ("    routes:\n"
                  "      - { match: { path_prefix: /admin }, pool: admin }\n"
                  "      - { pool: web }\n")
        cfg = lb_config([web.addr], routes=routes) + "  admin:\n    backends: [ %s ]\n" % admin.addr
        port = self.lb(cfg).port()
        with RawConnection(port) as c:
            c.send(b"GET http://b.example?/admin HTTP/1.1\r\nHost: other\r\n\r\n")
            _, status, _, body = read_response(c)
            self.assertEqual((status, body), (200, b"web"))
            c.send(b"GET http://b.example/admin/x?q=1 HTTP/1.1\r\nHost: other\r\n\r\n")
            _, status, _, body = read_response(c)
            self.assertEqual((status, body), (200, b"admin"))
        line = web.requests[0][1].split(b"\r\n")
        self.assertEqual(line[0], b"GET /?/admin HTTP/1.1")
        self.assertEqual([l for l in line if l.lower().startswith(b"host:")], [b"Host: b.example"])
        self.assertEqual(admin.requests[0][1].split(b"\r\n")[0], b"GET /admin/x?q=1 HTTP/1.1")

    def test_refused_targets_methods_and_heads(self):
        origin = harness.Origin("web", log=True)
        self.addCleanup(origin.cleanup)
        port = self.lb(lb_config([origin.addr], routes="    routes: [ { pool: web } ]\n")).port()
        many = b"".join(b"X-H%d: v\r\n" % i for i in range(120))
        cases = [
            (b"GET /a#frag HTTP/1.1\r\nHost: t\r\n\r\n", 400),
            (b"GET * HTTP/1.1\r\nHost: t\r\n\r\n", 400),
            (b"FOO / HTTP/1.1\r\nHost: t\r\n\r\n", 501),
            (b"get / HTTP/1.1\r\nHost: t\r\n\r\n", 501),
            (b"G@T / HTTP/1.1\r\nHost: t\r\n\r\n", 400),
            # Passed on as received, a request line with doubled spaces could
            # be split otherwise by the backend (RFC 9112 §3).
            (b"GET  / HTTP/1.1\r\nHost: t\r\n\r\n", 400),
            (b"GET /  HTTP/1.1\r\nHost: t\r\n\r\n", 400),
            (b"GET /a  /b HTTP/1.1\r\nHost: t\r\n\r\n", 400),
            # A request line without a version (HTTP/0.9): not spoken here.
            (b"GET /\r\n\r\n", 505),
            (b"GET / HTTP/1.1\r\nHost: t\r\n" + many + b"\r\n", 431),
        ]
        for data, want in cases:
            with RawConnection(port) as c:
                c.send(data)
                status_line, status, _, body = read_response(c)
                self.assertEqual(status, want, "%r: %s %r" % (data[:40], status_line, body))
        self.assertEqual(origin.log_entries(), [])

    def test_connect_is_refused_with_allow(self):
        origin = harness.Origin("web", log=True)
        self.addCleanup(origin.cleanup)
        port = self.lb(lb_config([origin.addr], routes="    routes: [ { pool: web } ]\n")).port()
        with RawConnection(port) as c:
            c.send(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
            status_line, status, headers, body = read_response(c)
            self.assertEqual(status, 405, status_line)
            allow = [m.strip() for v in values(headers, "Allow") for m in v.split(",")]
            self.assertIn("GET", allow)
            self.assertNotIn("CONNECT", allow)
            self.assertIn(b"CONNECT is not supported", body)
        self.assertEqual(origin.log_entries(), [])

    def test_error_answers_with_a_long_request_id_are_whole(self):
        # The id goes into the body of lb's own answers: a long one is cut
        # there, and Content-Length still says what is sent.
        origin = harness.Origin("web", log=True)
        self.addCleanup(origin.cleanup)
        port = self.lb(lb_config([origin.addr], routes=(
            "    routes: [ { match: { path_prefix: /app }, pool: web } ]\n"))).port()
        long_id = b"req-" + b"7" * 600
        for request, want in ((b"GET /nope HTTP/1.1\r\nHost: t\r\n", 404),
                              (b"CONNECT t:443 HTTP/1.1\r\nHost: t:443\r\n", 405),
                              (b"GET /app HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n", 400)):
            with RawConnection(port) as c:
                c.send(request + b"X-Request-Id: " + long_id + b"\r\n\r\n")
                status_line, status, headers, body = read_response(c, timeout=3)
                self.assertEqual(status, want, status_line)
                self.assertEqual(values(headers, "Content-Length"), [str(len(body))])
                self.assertIn(b"(request id req-777", body)
                if want == 404:  # kept open: the next answer is whole too
                    c.send(b"GET /app/x HTTP/1.1\r\nHost: t\r\n\r\n")
                    status_line, status, _, body = read_response(c, timeout=3)
                    self.assertEqual((status, body), (200, b"Hello from web\n"), status_line)

    def test_max_forwards(self):
        origin = harness.Origin("web", log=True)
        self.addCleanup(origin.cleanup)
        port = self.lb(lb_config([origin.addr], routes=(
            "    routes: [ { match: { path_prefix: / }, pool: web } ]\n"))).port()
        with RawConnection(port) as c:
            c.send(b"OPTIONS * HTTP/1.1\r\nHost: t\r\nMax-Forwards: 0\r\n\r\n")
            status_line, status, headers, body = read_response(c)
            self.assertEqual((status, body), (200, b""), status_line)
            self.assertEqual(values(headers, "Content-Length"), ["0"])
            trace = (b"TRACE /echo?x=1 HTTP/1.1\r\nHost: t\r\nCookie: session=secret\r\n"
                     b"X-Probe: one\r\nAuthorization: Basic c2VjcmV0\r\nMax-Forwards: 0\r\n\r\n")
            c.send(trace)  # same connection: the answers kept it open
            status_line, status, headers, body = read_response(c)
            self.assertEqual(status, 200, status_line)
            self.assertEqual(values(headers, "Content-Type"), ["message/http"])
            self.assertEqual(body, b"TRACE /echo?x=1 HTTP/1.1\r\nHost: t\r\nX-Probe: one\r\n"
                                   b"Max-Forwards: 0\r\n\r\n")
        self.assertEqual(origin.log_entries(), [])

        def sent(method, max_forwards):
            with RawConnection(port) as c:
                extra = b"".join(b"Max-Forwards: %s\r\n" % v for v in max_forwards)
                c.send(b"%s /headers HTTP/1.1\r\nHost: t\r\n%s\r\n" % (method, extra))
                status_line, status, _, body = read_response(c)
                self.assertEqual(status, 200, status_line)
                return [v for k, v in json.loads(body)["headers"] if k.lower() == "max-forwards"]
        self.assertEqual(sent(b"OPTIONS", [b"5"]), ["4"])
        self.assertEqual(sent(b"TRACE", [b"1"]), ["0"])
        self.assertEqual(sent(b"TRACE", [b"3", b"9"]), ["2"])
        self.assertEqual(sent(b"GET", [b"0"]), ["0"])
        self.assertEqual(sent(b"OPTIONS", [b"many"]), ["many"])
        self.assertEqual(sent(b"OPTIONS", [b"0000000000000000001"]), ["0"])
        self.assertEqual(sent(b"OPTIONS", [b"1" * 25]), ["9" * 18])
        self.assertEqual(sent(b"OPTIONS", []), [])

    def test_error_answer_to_head_has_no_body(self):
        origin = harness.Origin("web")
        self.addCleanup(origin.cleanup)
        port = self.lb(lb_config([origin.addr], routes=(
            "    routes: [ { match: { path_prefix: /app }, pool: web } ]\n"))).port()
        with RawConnection(port) as c:
            c.send(b"HEAD /nothing-here HTTP/1.1\r\nHost: t\r\n\r\n"
                   b"GET /app HTTP/1.1\r\nHost: t\r\n\r\n")
            got = recv_all_until_quiet(c.sock, quiet=1.0)
            first, _, rest = got.partition(b"\r\n\r\n")
            self.assertTrue(first.startswith(b"HTTP/1.1 404"), got)
            self.assertIn(b"Content-Length: ", first)
            self.assertTrue(rest.startswith(b"HTTP/1.1 200 OK\r\n"), got)

    def test_h2c_upgrade_is_not_passed_on(self):
        origin = harness.Origin("web", log=True)
        self.addCleanup(origin.cleanup)
        port = self.lb(lb_config([origin.addr])).port()
        with RawConnection(port) as c:
            c.send(b"GET /headers HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                   b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\nTE: trailers\r\n\r\n")
            _, status, _, body = read_response(c)
            self.assertEqual(status, 200)
        seen = json.loads(body)["headers"]
        self.assertEqual(values(seen, "Upgrade"), [])
        self.assertEqual(values(seen, "HTTP2-Settings"), [])
        self.assertEqual(values(seen, "Connection"), ["TE"])
        self.assertEqual(values(seen, "TE"), ["trailers"])


if __name__ == "__main__":
    harness.main()
