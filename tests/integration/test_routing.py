#!/usr/bin/env python3
"""Routing and the headers lb adds or removes.

Routes are matched in order (first match wins) on host (exact or "*.domain",
case-insensitive, port ignored), path prefix and header equality; no match
answers 404 with a body naming the reason and the request id. Requests carry
X-Request-Id (kept or generated), X-Forwarded-For (appended), Via; hop-by-hop
headers are not forwarded.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import RawConnection, http  # noqa: E402


def all_values(headers, name):
    """Values of header `name` in an origin /headers list [[k, v], ...]."""
    return [v for k, v in headers if k.lower() == name.lower()]


def joined(headers, name):
    """All values of a (list-valued) header joined with ", ", None when absent."""
    vals = all_values(headers, name)
    return ", ".join(vals) if vals else None


class Routing(harness.TestCase):
    @classmethod
    def setUpClass(cls):
        # One lb and one origin per pool for every test of this class.
        names = ["api", "canary", "exact", "wild", "static", "blue"]
        cls.origins = {n: harness.Origin(n, log=False) for n in names}
        o = cls.origins
        pools = "\n".join(f"""  {n}:
    backends: [ {{ address: {o[n].addr} }} ]""" for n in names)
        cls.lb_ = harness.Lb(f"""
workers: 2
access_log: {{ path: "off" }}
admin: {{ listen: 127.0.0.1:0 }}
listeners:
  - name: public
    listen: 127.0.0.1:0
    routes:
      - match: {{ host: api.example.com, path_prefix: /v1/ }}
        pool: api
      - match: {{ host: "*.example.com", header: {{ X-Canary: "1" }} }}
        pool: canary
      - match: {{ host: exact.test }}
        pool: exact
      - match: {{ host: "*.example.com" }}
        pool: wild
      - match: {{ path_prefix: /static/ }}
        pool: static
      - match: {{ header: {{ X-Tenant: blue }} }}
        pool: blue
pools:
{pools}
""")
        cls.port = cls.lb_.port()

    @classmethod
    def tearDownClass(cls):
        cls.lb_.cleanup()
        for o in cls.origins.values():
            o.cleanup()

    def route(self, host, path="/", headers=None):
        """-> (status, X-Origin or None, body) of a GET with this Host."""
        hdrs = [("Host", host)] + list((headers or {}).items())
        status, h, body = http(self.port, "GET", path, headers=hdrs)
        return status, h["X-Origin"], body

    def assert_routed(self, want, host, path="/", headers=None):
        status, origin, body = self.route(host, path, headers)
        self.assertEqual((status, origin), (200, want),
                         "Host %r %s %r -> %d %r %r" % (host, path, headers, status, origin,
                                                        body[:200]))

    def assert_no_route(self, host, path="/", headers=None):
        status, origin, body = self.route(host, path, headers)
        self.assertEqual((status, origin), (404, None),
                         "Host %r %s %r -> %d %r" % (host, path, headers, status, origin))

    # -- matching ------------------------------------------------------------------
    def test_host_and_path_prefix(self):
        self.assert_routed("api", "api.example.com", "/v1/users")
        self.assert_routed("api", "api.example.com", "/v1/")
        # Same host, other path: the api route does not match, the wildcard does.
        self.assert_routed("wild", "api.example.com", "/v2/users")
        self.assert_routed("wild", "api.example.com", "/v1")

    def test_host_exact(self):
        self.assert_routed("exact", "exact.test", "/anything")
        self.assert_routed("exact", "EXACT.Test", "/anything")
        self.assert_routed("exact", "exact.test:8080", "/anything")
        self.assert_no_route("sub.exact.test", "/anything")
        self.assert_no_route("exact.testing", "/anything")

    def test_host_wildcard(self):
        self.assert_routed("wild", "www.example.com")
        self.assert_routed("wild", "WWW.Example.COM")
        self.assert_routed("wild", "shop.example.com:8443")
        self.assert_routed("api", "API.EXAMPLE.COM:8080", "/v1/x")
        # "*.example.com" is the subdomains, not example.com nor a look-alike.
        self.assert_no_route("example.com")
        self.assert_no_route("badexample.com")
        self.assert_no_route("www.example.com.evil.test")

    def test_path_prefix(self):
        self.assert_routed("static", "other.test", "/static/app.js")
        self.assert_routed("static", "other.test", "/static/")
        self.assert_no_route("other.test", "/static")
        self.assert_no_route("other.test", "/Static/app.js")

    def test_header_equality(self):
        self.assert_routed("blue", "other.test", "/x", {"X-Tenant": "blue"})
        self.assert_routed("blue", "other.test", "/x", {"x-tenant": "blue"})
        self.assert_no_route("other.test", "/x", {"X-Tenant": "blue-ish"})
        self.assert_no_route("other.test", "/x", {"X-Tenant": "green"})
        self.assert_no_route("other.test", "/x")

    def test_combination_and_first_match_wins(self):
        # host wildcard + header
        self.assert_routed("canary", "www.example.com", "/", {"X-Canary": "1"})
        self.assert_routed("wild", "www.example.com", "/", {"X-Canary": "0"})
        self.assert_routed("wild", "www.example.com", "/")
        # api route comes first: it wins over the canary route that also matches.
        self.assert_routed("api", "api.example.com", "/v1/a", {"X-Canary": "1"})
        # wildcard host comes before the path_prefix and header routes.
        self.assert_routed("wild", "www.example.com", "/static/a.css", {"X-Tenant": "blue"})
        # exact host before path prefix.
        self.assert_routed("exact", "exact.test", "/static/a.css")

    def test_no_route_404(self):
        status, h, body = http(self.port, "GET", "/nowhere",
                               headers={"Host": "nothing.test", "X-Request-Id": "rid-404-check"})
        self.assertEqual(status, 404)
        self.assertIsNone(h["X-Origin"])
        text = body.decode("utf-8", "replace").lower()
        self.assertIn("route", text, "404 body does not name the reason: %r" % body)
        self.assertIn("request id", text, "404 body has no request id: %r" % body)
        self.assertIn("rid-404-check", text, "404 body does not show the client's request id")
        for o in self.origins.values():
            self.assertEqual(o.stats()["paths"].get("/nowhere", 0), 0, o.name)

    def test_host_passed_unchanged(self):
        status, h, body = http(self.port, "GET", "/headers",
                               headers={"Host": "Shop.Example.com:8443"})
        self.assertEqual((status, h["X-Origin"]), (200, "wild"))
        seen = json.loads(body)["headers"]
        self.assertEqual(all_values(seen, "Host"), ["Shop.Example.com:8443"])

    # -- added headers ------------------------------------------------------------------
    def origin_headers(self, headers):
        hdrs = [("Host", "www.example.com")] + list(headers)
        status, h, body = http(self.port, "GET", "/headers", headers=hdrs)
        self.assertEqual((status, h["X-Origin"]), (200, "wild"), body[:200])
        return h, json.loads(body)["headers"]

    def test_request_id_generated(self):
        _, seen1 = self.origin_headers([])
        _, seen2 = self.origin_headers([])
        ids1 = all_values(seen1, "X-Request-Id")
        ids2 = all_values(seen2, "X-Request-Id")
        self.assertEqual(len(ids1), 1, seen1)
        self.assertEqual(len(ids2), 1, seen2)
        self.assertTrue(ids1[0].strip(), "empty generated request id")
        self.assertNotEqual(ids1[0], ids2[0], "two requests got the same request id")

    def test_request_id_kept(self):
        _, seen = self.origin_headers([("X-Request-Id", "client-id-42")])
        self.assertEqual(all_values(seen, "X-Request-Id"), ["client-id-42"])

    def test_forwarded_for(self):
        _, seen = self.origin_headers([])
        self.assertEqual(joined(seen, "X-Forwarded-For"), "127.0.0.1")
        _, seen = self.origin_headers([("X-Forwarded-For", "203.0.113.7")])
        self.assertEqual(joined(seen, "X-Forwarded-For"), "203.0.113.7, 127.0.0.1")
        _, seen = self.origin_headers([("X-Forwarded-For", "203.0.113.7, 198.51.100.2")])
        self.assertEqual(joined(seen, "X-Forwarded-For"),
                         "203.0.113.7, 198.51.100.2, 127.0.0.1")

    def test_via_both_ways(self):
        h, seen = self.origin_headers([])
        self.assertEqual(joined(seen, "Via"), "1.1 lb")
        self.assertIn("1.1 lb", h.get_all("Via") or [], "response has no Via: 1.1 lb")
        # An existing Via is kept and lb's hop appended.
        h, seen = self.origin_headers([("Via", "1.0 fred")])
        self.assertEqual(joined(seen, "Via"), "1.0 fred, 1.1 lb")

    def test_hop_by_hop_not_forwarded(self):
        with RawConnection(self.port) as c:
            c.send(b"GET /headers HTTP/1.1\r\n"
                   b"Host: www.example.com\r\n"
                   b"Connection: keep-alive, X-Secret-Hop\r\n"
                   b"Keep-Alive: timeout=5\r\n"
                   b"X-Secret-Hop: do-not-forward\r\n"
                   b"TE: gzip\r\n"
                   b"Upgrade: h2c\r\n"
                   b"Proxy-Connection: keep-alive\r\n"
                   b"X-End-To-End: kept\r\n"
                   b"\r\n")
            status, headers, body = c.read_response()
        self.assertEqual(status, 200, body[:300])
        seen = json.loads(body)["headers"]
        names = {k.lower() for k, _ in seen}
        for hop in ("keep-alive", "x-secret-hop", "te", "upgrade", "proxy-connection"):
            self.assertNotIn(hop, names, "hop-by-hop header %s was forwarded: %r" % (hop, seen))
        for v in all_values(seen, "Connection"):
            self.assertNotIn("x-secret-hop", v.lower(), "client's Connection header forwarded")
        self.assertEqual(all_values(seen, "X-End-To-End"), ["kept"])

    def test_te_trailers_passes(self):
        # RFC 9110 §10.1.4: TE is hop-by-hop, but "trailers" tells the next hop the
        # client accepts trailer fields; lb keeps that and drops other codings.
        with RawConnection(self.port) as c:
            c.send(b"GET /headers HTTP/1.1\r\nHost: www.example.com\r\n"
                   b"TE: gzip, trailers\r\n\r\n")
            status, headers, body = c.read_response()
        self.assertEqual(status, 200, body[:300])
        seen = json.loads(body)["headers"]
        self.assertEqual(all_values(seen, "TE"), ["trailers"], seen)


if __name__ == "__main__":
    harness.main()
