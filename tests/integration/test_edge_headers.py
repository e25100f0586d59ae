#!/usr/bin/env python3
"""Headers and message semantics at the edge.

- hop-by-hop headers (Connection and the headers it names, Keep-Alive,
  Proxy-Connection, TE except "trailers", Trailer, Upgrade) are removed in
  both directions;
- Via: 1.1 lb on requests and responses; headers.via: off adds none;
- X-Forwarded-For append / replace / off; X-Forwarded-Proto: http replaces a
  client's; X-Forwarded-Host is the Host;
- the request id: generated (16+ chars, unique), kept when sent, shown in
  lb's own error bodies and in the access log (json fields; combined format
  matches the NCSA regex); request_id: off adds none;
- HTTP/1.0: close after the response without keep-alive; never chunked to a
  1.0 client;
- pipelining: 5 requests in one write answered in order;
- HEAD, 204, 304 framed without a body, the connection stays usable;
- Expect: 100-continue: 100 Continue first, then the final answer.
"""

import json
import os
import re
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import RawConnection, http  # noqa: E402
import edge_util  # noqa: E402
from edge_util import RawOrigin, fixed, joined, read_response, tokens, values  # noqa: E402

HOST = "app.test"
LISTENERS = {
    "public": "",
    "via_off": "    headers: { via: off }\n",
    "xff_replace": "    headers: { forwarded_for: replace }\n",
    "xff_off": "    headers: { forwarded_for: \"off\" }\n",
    "rid_off": "    headers: { request_id: \"off\" }\n",
}

COMBINED_RE = re.compile(
    r'^(\S+) (\S+) (\S+) \[(\d{2}/\w{3}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4})\] '
    r'"(\S+) (\S+) (HTTP/\d\.\d)" (\d{3}) (\d+|-) "([^"]*)" "([^"]*)"$')


def read_text(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def config(origin_addr, access_log_path, fmt="json"):
    listeners = ""
    for name, extra in LISTENERS.items():
        listeners += (f"  - name: {name}\n"
                      f"    listen: 127.0.0.1:0\n"
                      f"{extra}"
                      f"    routes: [ {{ match: {{ host: \"*.test\" }}, pool: web }} ]\n")
    return f"""
workers: 1
admin: {{ listen: 127.0.0.1:0 }}
access_log: {{ path: {access_log_path}, format: {fmt} }}
listeners:
{listeners}pools:
  web:
    backends: [ {{ address: {origin_addr} }} ]
"""


class EdgeHeaders(harness.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.app = harness.Origin("web", log=True)
        cls.log_dir = tempfile.mkdtemp(prefix="lb-edge-log-")
        cls.access_log = os.path.join(cls.log_dir, "access.json")
        cls.lb_ = harness.Lb(config(cls.app.addr, cls.access_log))

    @classmethod
    def tearDownClass(cls):
        cls.lb_.cleanup()
        cls.app.cleanup()
        shutil.rmtree(cls.log_dir, ignore_errors=True)

    def port(self, listener="public"):
        return self.lb_.port(listener)

    def origin_view(self, headers=(), listener="public", path="/headers"):
        """GET path through lb -> (response headers, origin's view of the request headers)."""
        hdrs = [("Host", HOST)] + list(headers)
        status, h, body = http(self.port(listener), "GET", path, headers=hdrs)
        self.assertEqual((status, h["X-Origin"]), (200, "web"), body[:300])
        return h, json.loads(body)["headers"]

    # -- hop-by-hop --------------------------------------------------------------------
    def test_hop_by_hop_removed_from_requests(self):
        with RawConnection(self.port()) as c:
            c.send(b"GET /headers HTTP/1.1\r\n"
                   b"Host: app.test\r\n"
                   b"Connection: keep-alive, X-Secret-Hop\r\n"
                   b"Connection: X-Other-Hop\r\n"
                   b"Keep-Alive: timeout=5\r\n"
                   b"X-Secret-Hop: 1\r\n"
                   b"X-Other-Hop: 2\r\n"
                   b"Proxy-Connection: keep-alive\r\n"
                   b"TE: trailers, deflate\r\n"
                   b"Trailer: X-Checksum\r\n"
                   b"Upgrade: h2c\r\n"
                   b"X-End-To-End: kept\r\n"
                   b"\r\n")
            status_line, status, headers, body = read_response(c)
        self.assertEqual(status, 200, status_line)
        seen = json.loads(body)["headers"]
        names = {k.lower() for k, _ in seen}
        for hop in ("keep-alive", "x-secret-hop", "x-other-hop", "proxy-connection", "upgrade"):
            self.assertNotIn(hop, names, "%s forwarded to the origin: %r" % (hop, seen))
        for v in values(seen, "TE"):
            self.assertEqual(tokens(v), {"trailers"}, "TE forwarded beyond trailers: %r" % seen)
        # The client's Connection lines go; lb names its own TE (RFC 9110 §10.1.4).
        self.assertEqual(values(seen, "Connection"), ["TE"])
        # Trailer is end-to-end (RFC 9110 §6.6.2), as is any unnamed field.
        self.assertEqual(values(seen, "Trailer"), ["X-Checksum"])
        self.assertEqual(values(seen, "X-End-To-End"), ["kept"])

    def test_hop_by_hop_removed_from_responses(self):
        bad = RawOrigin(fixed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
                              b"Connection: X-Secret\r\nX-Secret: 1\r\n"
                              b"Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\n"
                              b"Upgrade: h2c\r\nX-End-To-End: kept\r\n\r\nok"))
        self.addCleanup(bad.stop)
        lb = self.lb(edge_util.lb_config([bad.addr]))
        with RawConnection(lb.port()) as c:
            for i in range(2):
                c.send(b"GET /hop/%d HTTP/1.1\r\nHost: t\r\n\r\n" % i)
                status_line, status, headers, body = read_response(c)
                self.assertEqual((status, body), (200, b"ok"), status_line)
                names = {k.lower() for k, _ in headers}
                for hop in ("x-secret", "keep-alive", "proxy-connection", "upgrade"):
                    self.assertNotIn(hop, names, "%s forwarded to the client: %r" % (hop, headers))
                for v in values(headers, "Connection"):
                    self.assertNotIn("x-secret", tokens(v), headers)
                self.assertEqual(values(headers, "X-End-To-End"), ["kept"])

    # -- Via ---------------------------------------------------------------------------
    def test_via(self):
        h, seen = self.origin_view()
        self.assertEqual(joined(seen, "Via"), "1.1 lb")
        self.assertIn("1.1 lb", ", ".join(h.get_all("Via") or []), "response has no Via: 1.1 lb")
        h, seen = self.origin_view(listener="via_off")
        self.assertEqual(values(seen, "Via"), [], "via: off still adds Via to requests")
        self.assertIsNone(h.get_all("Via"), "via: off still adds Via to responses")

    # -- X-Forwarded-* -----------------------------------------------------------------
    def test_forwarded_for_append(self):
        _, seen = self.origin_view([("X-Forwarded-For", "1.2.3.4")])
        self.assertEqual(joined(seen, "X-Forwarded-For"), "1.2.3.4, 127.0.0.1")
        _, seen = self.origin_view()
        self.assertEqual(joined(seen, "X-Forwarded-For"), "127.0.0.1")

    def test_forwarded_for_replace(self):
        _, seen = self.origin_view([("X-Forwarded-For", "1.2.3.4")], listener="xff_replace")
        self.assertEqual(values(seen, "X-Forwarded-For"), ["127.0.0.1"])
        _, seen = self.origin_view(listener="xff_replace")
        self.assertEqual(values(seen, "X-Forwarded-For"), ["127.0.0.1"])

    def test_forwarded_for_off(self):
        _, seen = self.origin_view([("X-Forwarded-For", "1.2.3.4")], listener="xff_off")
        self.assertEqual(values(seen, "X-Forwarded-For"), ["1.2.3.4"])
        _, seen = self.origin_view(listener="xff_off")
        self.assertEqual(values(seen, "X-Forwarded-For"), [])

    def test_forwarded_proto_and_host(self):
        _, seen = self.origin_view([("X-Forwarded-Proto", "https")])
        self.assertEqual(values(seen, "X-Forwarded-Proto"), ["http"],
                         "a client-supplied X-Forwarded-Proto was not replaced")
        _, seen = self.origin_view()
        self.assertEqual(values(seen, "X-Forwarded-Proto"), ["http"])
        hdrs = [("Host", "shop.test:8080")]
        status, h, body = http(self.port(), "GET", "/headers", headers=hdrs)
        self.assertEqual(status, 200, body[:200])
        seen = json.loads(body)["headers"]
        self.assertEqual(values(seen, "Host"), ["shop.test:8080"])
        self.assertEqual(values(seen, "X-Forwarded-Host"), ["shop.test:8080"])

    # -- request id --------------------------------------------------------------------
    def test_request_id_generated_and_kept(self):
        ids = []
        for _ in range(3):
            _, seen = self.origin_view()
            v = values(seen, "X-Request-Id")
            self.assertEqual(len(v), 1, seen)
            ids.append(v[0])
        for rid in ids:
            self.assertGreaterEqual(len(rid), 16, "generated request id too short: %r" % rid)
        self.assertEqual(len(set(ids)), 3, "request ids repeat: %r" % ids)
        _, seen = self.origin_view([("X-Request-Id", "client-chosen-id-7")])
        self.assertEqual(values(seen, "X-Request-Id"), ["client-chosen-id-7"])

    def test_request_id_off(self):
        h, seen = self.origin_view(listener="rid_off")
        self.assertEqual(values(seen, "X-Request-Id"), [], "request_id: off still adds one")
        self.assertIsNone(h["X-Request-Id"])

    def test_request_id_in_error_body(self):
        status, h, body = http(self.port(), "GET", "/nowhere",
                               headers={"Host": "nowhere.invalid", "X-Request-Id": "rid-err-1"})
        self.assertEqual(status, 404, body)
        self.assertIn(b"rid-err-1", body)
        status, h, body = http(self.port(), "GET", "/nowhere", headers={"Host": "nowhere.invalid"})
        self.assertEqual(status, 404, body)
        m = re.search(r"request id:?\s*([\w.-]{16,})", body.decode("utf-8", "replace"), re.I)
        self.assertIsNotNone(m, "404 body shows no generated request id: %r" % body)

    def test_access_log_json(self):
        rid = "rid-log-%d" % time.monotonic_ns()
        status, h, body = http(self.port(), "GET", "/bytes/123?x=1",
                               headers={"Host": HOST, "X-Request-Id": rid})
        self.assertEqual(status, 200)
        status, h, body = http(self.port(), "GET", "/nowhere",
                               headers={"Host": "nowhere.invalid", "X-Request-Id": rid + "-404"})
        self.assertEqual(status, 404)

        def lines():
            return [json.loads(line) for line in read_text(self.access_log).splitlines()
                    if line.strip()]
        self.assertTrue(harness.wait_until(
            lambda: {rid, rid + "-404"} <= {e.get("request_id") for e in lines()}, 5.0),
            "access log lines not written: %r" % read_text(self.access_log)[-2000:])
        entries = {e["request_id"]: e for e in lines()}  # every line parses as JSON
        e = entries[rid]
        for key in ("request_id", "client", "route", "pool", "backend", "status", "bytes_out",
                    "upstream_ms", "total_ms", "method", "target"):
            self.assertIn(key, e, "access log line lacks %s: %r" % (key, e))
        self.assertIsInstance(e["route"], int, e)
        self.assertIsNone(entries[rid + "-404"]["route"], "a 404 matched no route")
        self.assertTrue(e["client"].startswith("127.0.0.1"), e)
        self.assertEqual((e["pool"], e["status"], e["method"], e["target"]),
                         ("web", 200, "GET", "/bytes/123?x=1"), e)
        self.assertIn(str(self.app.port), e["backend"], e)
        self.assertGreaterEqual(e["bytes_out"], 123, e)
        self.assertGreaterEqual(e["upstream_ms"], 0, e)
        self.assertGreaterEqual(e["total_ms"], e["upstream_ms"], e)
        e = entries[rid + "-404"]
        self.assertEqual((e["status"], e["target"]), (404, "/nowhere"), e)

    def test_access_log_combined(self):
        log_dir = tempfile.mkdtemp(prefix="lb-edge-clf-")
        self.addCleanup(shutil.rmtree, log_dir, True)
        path = os.path.join(log_dir, "access.log")
        lb = self.lb(config(self.app.addr, path, fmt="combined"))
        status, _, _ = http(lb.port(), "GET", "/clf?a=1",
                            headers={"Host": HOST, "User-Agent": "edge-test/1.0",
                                     "Referer": "http://ref.test/"})
        self.assertEqual(status, 200)
        status, _, _ = http(lb.port(), "GET", "/clf-404", headers={"Host": "nowhere.invalid"})
        self.assertEqual(status, 404)
        self.assertTrue(harness.wait_until(
            lambda: len(read_text(path).splitlines()) >= 2, 5.0), "access log not written")
        lines = read_text(path).splitlines()
        for line in lines:
            self.assertRegex(line, COMBINED_RE)
        m = COMBINED_RE.match(lines[0])
        self.assertEqual((m.group(1), m.group(5), m.group(6), m.group(8), m.group(10),
                          m.group(11)),
                         ("127.0.0.1", "GET", "/clf?a=1", "200", "http://ref.test/",
                          "edge-test/1.0"), lines[0])

    # -- HTTP/1.0 ------------------------------------------------------------------------
    def test_http10_closes_without_keepalive(self):
        with RawConnection(self.port()) as c:
            c.send(b"GET /one HTTP/1.0\r\nHost: app.test\r\n\r\n")
            status_line, status, headers, body = read_response(c)
            self.assertEqual((status, body), (200, b"Hello from web\n"), status_line)
            self.assertTrue(c.closed_by_peer(3.0), "HTTP/1.0 connection kept open")

    def test_http10_never_chunked(self):
        n = 100000
        # origin.py does not chunk to an HTTP/1.0 request (lb may forward it as
        # 1.0); this origin answers chunked to anything, as an HTTP/1.1 one may.
        data = harness.pattern_bytes(n)
        chunked = b"".join(b"%x\r\n%s\r\n" % (len(data[i:i + 30000]), data[i:i + 30000])
                           for i in range(0, n, 30000)) + b"0\r\n\r\n"
        raw = RawOrigin(fixed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                              + chunked))
        self.addCleanup(raw.stop)
        lb = self.lb(edge_util.lb_config([raw.addr]))
        for port, what in ((self.port(), "origin.py ?chunked=1"), (lb.port(), "chunked origin")):
            for keep_alive in (False, True):
                self.check_http10_response(port, n, keep_alive, "%s, keep_alive=%s"
                                           % (what, keep_alive))

    def check_http10_response(self, port, n, keep_alive, what):
        with RawConnection(port) as c:
            c.send(b"GET /bytes/%d?chunked=1 HTTP/1.0\r\nHost: app.test\r\n%s\r\n"
                   % (n, b"Connection: keep-alive\r\n" if keep_alive else b""))
            head = c.recv_until(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            hdrs = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:] if line]
            self.assertTrue(lines[0].startswith("HTTP/1."), lines[0])
            self.assertEqual(lines[0].split(" ")[1], "200", "%s: %s" % (what, lines[0]))
            for v in values(hdrs, "Transfer-Encoding"):
                self.assertNotIn("chunked", v.lower(), "%s: chunked to an HTTP/1.0 client" % what)
            cl = values(hdrs, "Content-Length")
            if cl:
                body = c._recv_exact(int(cl[0]), time.monotonic() + 10)
            else:
                self.assertNotIn("keep-alive", tokens(joined(hdrs, "Connection")),
                                 "%s: keep-alive promised without a Content-Length" % what)
                body = bytes(c.buf)
                c.buf.clear()
                deadline = time.monotonic() + 10
                while True:
                    b = c._recv(deadline)
                    if not b:
                        break
                    body += b
            self.assertEqual(len(body), n, what)
            self.assertEqual(body, harness.pattern_bytes(n), "%s: body differs" % what)
            if not keep_alive or not cl:
                self.assertTrue(c.closed_by_peer(3.0), "%s: connection kept open" % what)
            else:
                # Reusable: a second request on the same connection.
                c.send(b"GET /bytes/%d HTTP/1.0\r\nHost: app.test\r\n"
                       b"Connection: keep-alive\r\n\r\n" % n)
                status_line, status, headers, body = read_response(c, timeout=10)
                self.assertEqual((status, len(body)), (200, n), "%s: second request" % what)

    # -- pipelining ----------------------------------------------------------------------
    def test_pipelining_in_order(self):
        with RawConnection(self.port(), timeout=10) as c:
            c.send(b"GET /p1?delay=300 HTTP/1.1\r\nHost: app.test\r\n\r\n"
                   b"GET /bytes/1000 HTTP/1.1\r\nHost: app.test\r\n\r\n"
                   b"HEAD /bytes/500 HTTP/1.1\r\nHost: app.test\r\n\r\n"
                   b"POST /echo HTTP/1.1\r\nHost: app.test\r\nContent-Length: 14\r\n\r\n"
                   b"pipelined-body"
                   b"GET /bytes/7 HTTP/1.1\r\nHost: app.test\r\n\r\n")
            got = []
            for i in range(5):
                status_line, status, headers, body = read_response(c, head_request=(i == 2))
                got.append((status, joined(headers, "Content-Length"), body))
            self.assertEqual(got[0], (200, "15", b"Hello from web\n"))
            self.assertEqual(got[1], (200, "1000", harness.pattern_bytes(1000)))
            self.assertEqual(got[2], (200, "500", b""))
            self.assertEqual(got[3], (200, "14", b"pipelined-body"))
            self.assertEqual(got[4], (200, "7", harness.pattern_bytes(7)))
            self.assertFalse(c.closed_by_peer(0.3), "connection closed after the pipeline")
            self.assertEqual(bytes(c.buf), b"", "extra bytes after five responses")

    # -- no-body responses -------------------------------------------------------------
    def test_head_204_304_then_next_request(self):
        with RawConnection(self.port()) as c:
            c.send(b"HEAD /bytes/1000 HTTP/1.1\r\nHost: app.test\r\n\r\n")
            status_line, status, headers, body = read_response(c, head_request=True)
            self.assertEqual((status, joined(headers, "Content-Length")), (200, "1000"))
            for code in (204, 304):
                c.send(b"GET /status/%d HTTP/1.1\r\nHost: app.test\r\n\r\n" % code)
                status_line, status, headers, body = read_response(c)
                self.assertEqual(status, code, status_line)
                self.assertEqual(values(headers, "Transfer-Encoding"), [], headers)
            c.send(b"GET /after HTTP/1.1\r\nHost: app.test\r\n\r\n")
            status_line, status, headers, body = read_response(c)
            self.assertEqual((status, body), (200, b"Hello from web\n"), status_line)
            self.assertFalse(c.closed_by_peer(0.3))
            self.assertEqual(bytes(c.buf), b"", "stray bytes after a no-body response")

    # -- Expect: 100-continue --------------------------------------------------------------
    def test_expect_100_continue(self):
        with RawConnection(self.port()) as c:
            c.send(b"POST /echo HTTP/1.1\r\nHost: app.test\r\nContent-Length: 11\r\n"
                   b"Expect: 100-continue\r\n\r\n")
            try:
                interim = c.recv_until(b"\r\n\r\n", timeout=5)
            except (TimeoutError, ConnectionError) as e:
                self.fail("no 100 Continue before the body was sent (%r)" % e)
            self.assertTrue(interim.startswith(b"HTTP/1.1 100"), interim)
            c.send(b"hello world")
            status_line, status, headers, body = read_response(c)
            self.assertEqual((status, body), (200, b"hello world"), status_line)
            # Still usable.
            c.send(b"GET /after-expect HTTP/1.1\r\nHost: app.test\r\n\r\n")
            status_line, status, headers, body = read_response(c)
            self.assertEqual((status, body), (200, b"Hello from web\n"), status_line)


if __name__ == "__main__":
    harness.main()
