#!/usr/bin/env python3
"""Listener rules as a client and the origins see them: richer route matches,
route actions (pool, weighted pools, redirect, fixed response), request and
response header rules, rewrites, access lists, retry_on / retry_budget /
per_try_timeout.

- redirect: `{scheme: https, code: 308}` (curl -I) -> Location
  https://www.example.com/a/b?c=d; `{prefix: /new/}` on path_prefix /old/ ->
  301 http://HOST:PORT/new/x/y?q=1 (the port is kept when the scheme is, a
  port equal to the scheme's default is not written); host + port + path +
  query; codes 302, 303, 307; the origin sees none of them;
- respond: 503 "back soon" text/plain with the right Content-Length; a HEAD
  gets the head only (the next response on the connection starts clean);
- pools 90/10 over 10,000 GETs (4 keep-alive clients): 9,000 +-200 / 1,000
  +-200, the origins' counters agree; split_key cookie:user: 200 users x 5
  rounds, every user always on one side, both sides get users;
- every match kind selects its pool and a near miss falls through to the
  catch-all: method, query (percent-decoded), header present / exact, exact
  path, path_regex (partial match on the path without query), source CIDR
  (clients bound to 127.0.0.2, 127.0.1.x), and all keys together;
- request_headers set / add / remove with %{client_ip}, %{request_id},
  %{host}; response_headers set / add / remove (X-Origin removed, a second
  X-Origin added, Content-Type replaced);
- rewrite /api/ -> / and /old/ -> /v2/ with host internal.example.com: the
  origin sees the new target and Host, X-Forwarded-Host the client's Host; the
  client sees a plain 200;
- deny / allow (CIDRs and plain IPs, deny wins): 403 before routing, no origin
  touched; two listeners in one lb;
- retries: 3 backends, one answering 503 to everything, retry_on [503]:
  10,000 GETs all 200, POSTs not retried (about a third get the 503);
  everything 503 for ~10 s under retry_budget {ratio 0.2, min_per_second 3}:
  origins see <= 1.2 x client requests + 3/s, clients get the backend's 503,
  lb_retries_total{reason="503"} and lb_retry_budget_exhausted_total move;
- per_try_timeout 500ms next to an origin that takes 3 s: every GET is a 200
  from the fast one within ~1.5 s;
- lb check accepts every new key and refuses a few invalid rule configs with
  FILE:LINE:COL messages.
"""

import collections
import http.client as http_client
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import KeepAliveClient, RawConnection, http, lb_check  # noqa: E402

# The start of every lb config here: two workers, no access log, an admin port.
PREAMBLE = """workers: 2
access_log: { path: "off" }
admin: { listen: 127.0.0.1:0 }
"""

SANITIZED = os.environ.get("LB_SANITIZED", "").lower() in ("1", "true", "on", "yes")
SLOW = 2.0 if SANITIZED else 1.0  # time limits stretch under sanitizers


def say(msg):
    sys.stderr.write("    [rules] %s\n" % msg)
    sys.stderr.flush()


def all_values(headers, name):
    """Values of header `name` in a list [[k, v], ...] / [(k, v), ...]."""
    return [v for k, v in headers if k.lower() == name.lower()]


def request_from(source_ip, port, method, path, headers=None, timeout=10):
    """One request on a fresh connection whose client end is bound to
    source_ip (any 127.x address works on Linux) -> (status, headers, body)."""
    conn = http_client.HTTPConnection("127.0.0.1", port, timeout=timeout,
                                      source_address=(source_ip, 0))
    try:
        conn.request(method, path, headers=dict(headers or {}))
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def curl_head(url, *args):
    """`curl -sS -I URL ARGS` -> (status, [(name, value)]) of the response head."""
    r = subprocess.run(["curl", "-sS", "-I", "--globoff", "--max-time", "10", *args, url],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=20)
    if r.returncode != 0:
        raise AssertionError("curl %s failed (%d): %s" % (url, r.returncode,
                                                          r.stderr.decode(errors="replace")))
    text = r.stdout.decode("latin-1")
    blocks = [b for b in text.split("\r\n\r\n") if b.strip()]
    if not blocks:
        raise AssertionError("curl printed no head: %r" % text)
    lines = blocks[-1].split("\r\n")
    status = int(lines[0].split()[1])
    headers = []
    for line in lines[1:]:
        k, _, v = line.partition(":")
        if k.strip():
            headers.append((k.strip(), v.strip()))
    return status, headers


def run_load(port, threads, path, per_thread=None, duration=None, interval=0.0,
             method="GET", headers=None, body=None, max_seconds=90.0):
    """Each of `threads` threads sends requests on its own keep-alive
    connection (KeepAliveClient): `per_thread` requests, or for `duration`
    seconds; with interval > 0, one request every `interval` seconds.
    -> (Counter{(status, X-Origin, body): n}, [errors], elapsed seconds)."""
    counts = collections.Counter()
    errors = []
    lock = threading.Lock()
    start = time.monotonic()
    hard_stop = start + max_seconds
    stop_at = start + duration if duration is not None else hard_stop

    def worker():
        local = collections.Counter()
        try:
            with KeepAliveClient(port, timeout=15) as c:
                sent = 0
                next_t = time.monotonic()
                while per_thread is None or sent < per_thread:
                    now = time.monotonic()
                    if now >= stop_at:
                        if per_thread is not None:
                            with lock:
                                errors.append("gave up after %.0f s with %d of %d requests sent"
                                              % (now - start, sent, per_thread))
                        break
                    if interval:
                        if next_t > now:
                            time.sleep(next_t - now)
                        next_t += interval
                    status, h, data = c.request(method, path, headers=headers, body=body)
                    local[(status, h["X-Origin"], data)] += 1
                    sent += 1
        except Exception as e:  # reported by the caller's assertion
            with lock:
                errors.append(repr(e))
        finally:
            with lock:
                counts.update(local)

    ts = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(max(1.0, hard_stop + 30 - time.monotonic()))
    if any(t.is_alive() for t in ts):
        errors.append("a client thread still runs after %.0f s" % (time.monotonic() - start))
    return counts, errors, time.monotonic() - start


def by_origin(counts):
    """Counter{(status, origin, body): n} -> Counter{origin: n}."""
    out = collections.Counter()
    for (_, origin, _), n in counts.items():
        out[origin] += n
    return out


def path_count(origin, path):
    return origin.stats()["paths"].get(path, 0)


class SharedLb(harness.TestCase):
    """One lb and its origins for every test of the class (started in
    setUpClass, killed in tearDownClass). Subclasses set ORIGINS (names, or
    (name, extra origin.py args) pairs) and define config()."""

    ORIGINS = ()
    ORIGIN_LOG = False
    lb_ = None
    origins = {}

    @classmethod
    def config(cls):
        raise NotImplementedError

    @classmethod
    def setUpClass(cls):
        cls.origins = {}
        cls.lb_ = None
        try:
            for spec in cls.ORIGINS:
                name, extra = (spec, ()) if isinstance(spec, str) else spec
                cls.origins[name] = harness.Origin(name, log=cls.ORIGIN_LOG, extra_args=extra)
            cls.lb_ = harness.Lb(cls.config())
        except BaseException:
            cls.tearDownClass()
            raise
        cls.port = cls.lb_.port()

    @classmethod
    def tearDownClass(cls):
        if cls.lb_ is not None:
            cls.lb_.cleanup()
            cls.lb_ = None
        for o in cls.origins.values():
            o.cleanup()
        cls.origins = {}

    def tearDown(self):
        if self.lb_ is not None and (self.failed_so_far() or os.environ.get("LB_TEST_VERBOSE")):
            sys.stderr.write("---- lb stderr (%s) ----\n%s\n"
                             % (self.id(), self.lb_.stderr_text()[-6000:]))


def backends_of(*origins):
    return ", ".join("{ address: %s }" % o.addr for o in origins)


# ---------------------------------------------------------------------------
# 1, 2: redirect and respond

class RedirectAndRespond(SharedLb):
    ORIGINS = ("web",)

    @classmethod
    def config(cls):
        return f"""
{PREAMBLE}listeners:
  - name: public
    listen: 127.0.0.1:0
    routes:
      - match: {{ path_prefix: /old/ }}
        redirect: {{ prefix: /new/ }}
      - match: {{ path_prefix: /moved/ }}
        redirect: {{ scheme: https, host: example.com, port: 8443, path: /new, query: "a=b", code: 302 }}
      - match: {{ path_prefix: /promo/ }}
        redirect: {{ path: /landing, code: 307 }}
      - match: {{ path_prefix: /see/ }}
        redirect: {{ path: /other, code: 303 }}
      - match: {{ path_prefix: /maint/ }}
        respond: {{ status: 503, body: "back soon", content_type: text/plain }}
      - match: {{ host: "*.example.com" }}
        redirect: {{ scheme: https, code: 308 }}
      - match: {{ path_prefix: / }}
        pool: web
pools:
  web:
    backends: [ {backends_of(cls.origins["web"])} ]
"""

    def setUp(self):
        self.web = self.origins["web"]
        self.seen_before = self.web.stats()["requests"]

    def assert_origin_untouched(self):
        st = self.web.stats()
        self.assertEqual(st["requests"], self.seen_before,
                         "the origin saw requests lb should have answered itself: %r"
                         % st["paths"])

    def assert_redirect(self, method, path, host, code, location):
        status, h, body = http(self.port, method, path, headers={"Host": host})
        self.assertEqual((status, h["Location"]), (code, location),
                         "%s %s Host %s -> %d Location %r, body %r"
                         % (method, path, host, status, h["Location"], body[:200]))
        self.assertIsNone(h["X-Origin"], "a redirect came from the origin")

    def test_https_redirect_308(self):
        if not shutil.which("curl"):
            self.skipTest("curl is not installed")
        status, headers = curl_head("http://127.0.0.1:%d/a/b?c=d" % self.port,
                                    "-H", "Host: www.example.com")
        self.assertEqual(status, 308, headers)
        self.assertEqual(all_values(headers, "Location"), ["https://www.example.com/a/b?c=d"],
                         headers)
        self.assertEqual(all_values(headers, "X-Origin"), [], headers)
        self.assert_redirect("GET", "/a/b?c=d", "www.example.com", 308,
                             "https://www.example.com/a/b?c=d")
        self.assert_redirect("POST", "/a/b?c=d", "www.example.com", 308,
                             "https://www.example.com/a/b?c=d")
        # The scheme changes and no port is given: the Host's port is not kept.
        self.assert_redirect("GET", "/a/b?c=d", "www.example.com:8080", 308,
                             "https://www.example.com/a/b?c=d")
        # No query: none added.
        self.assert_redirect("GET", "/plain", "shop.example.com", 308,
                             "https://shop.example.com/plain")
        self.assert_origin_untouched()

    def test_prefix_redirect_301(self):
        if not shutil.which("curl"):
            self.skipTest("curl is not installed")
        # curl's Host is 127.0.0.1:PORT; the scheme is unchanged, so the port is kept.
        status, headers = curl_head("http://127.0.0.1:%d/old/x/y?q=1" % self.port)
        self.assertEqual(status, 301, headers)
        self.assertEqual(all_values(headers, "Location"),
                         ["http://127.0.0.1:%d/new/x/y?q=1" % self.port], headers)
        self.assert_redirect("GET", "/old/x/y?q=1", "shop.test:8080", 301,
                             "http://shop.test:8080/new/x/y?q=1")
        self.assert_redirect("GET", "/old/", "shop.test:8080", 301, "http://shop.test:8080/new/")
        self.assert_redirect("HEAD", "/old/x", "shop.test", 301, "http://shop.test/new/x")
        # A port equal to the scheme's default is not written.
        self.assert_redirect("GET", "/old/x", "shop.test:80", 301, "http://shop.test/new/x")
        self.assert_origin_untouched()

    def test_redirect_with_host_port_path_query(self):
        self.assert_redirect("GET", "/moved/x?y=1", "www.other.test:8080", 302,
                             "https://example.com:8443/new?a=b")
        self.assert_redirect("GET", "/moved/", "www.other.test", 302,
                             "https://example.com:8443/new?a=b")
        self.assert_origin_untouched()

    def test_redirect_codes_and_kept_parts(self):
        # Only the path is given: scheme, host, port and query are the request's.
        self.assert_redirect("GET", "/promo/spring?utm=mail", "shop.test:8080", 307,
                             "http://shop.test:8080/landing?utm=mail")
        self.assert_redirect("POST", "/promo/spring", "shop.test:8080", 307,
                             "http://shop.test:8080/landing")
        self.assert_redirect("GET", "/see/x", "shop.test", 303, "http://shop.test/other")
        self.assert_redirect("GET", "/see/x?k=v", "shop.test", 303, "http://shop.test/other?k=v")
        self.assert_origin_untouched()

    def test_respond_fixed_response(self):
        for method in ("GET", "POST"):
            status, h, body = http(self.port, method, "/maint/page?x=1",
                                   headers={"Host": "shop.test"})
            self.assertEqual(status, 503, "%s -> %d %r" % (method, status, body[:200]))
            self.assertEqual(body, b"back soon", method)
            ctype = h["Content-Type"] or ""
            self.assertEqual(ctype.split(";")[0].strip().lower(), "text/plain",
                             "Content-Type %r" % ctype)
            self.assertEqual(h.get_all("Content-Length"), ["9"], method)
            self.assertIsNone(h["X-Origin"])
        self.assert_origin_untouched()

    def test_respond_head_gets_head_only(self):
        with RawConnection(self.port) as c:
            c.send(b"HEAD /maint/x HTTP/1.1\r\nHost: shop.test\r\n\r\n")
            status, headers, _ = c.read_response(head_request=True)
            self.assertEqual(status, 503, headers)
            lengths = all_values(headers, "Content-Length")
            self.assertIn(lengths, ([], ["9"]), "HEAD Content-Length %r" % lengths)
            closes = "close" in ",".join(all_values(headers, "Connection")).lower()
            if closes:
                self.assertTrue(c.closed_by_peer(2.0), "Connection: close but not closed")
                self.assertEqual(bytes(c.buf), b"", "bytes after a HEAD response's head")
            else:
                self.assertFalse(c.closed_by_peer(0.3))
                self.assertEqual(bytes(c.buf), b"", "a HEAD response carried a body")
                # The connection goes on cleanly: the next response starts at once.
                c.send(b"GET /maint/x HTTP/1.1\r\nHost: shop.test\r\n\r\n")
                status, headers, body = c.read_response()
                self.assertEqual((status, body), (503, b"back soon"))
        self.assert_origin_untouched()

    def test_catch_all_reaches_the_origin(self):
        # The control: what no rule answers goes to the pool.
        status, h, body = http(self.port, "GET", "/hello", headers={"Host": "shop.test"})
        self.assertEqual((status, h["X-Origin"], body), (200, "web", b"Hello from web\n"))
        self.assertEqual(self.web.stats()["requests"], self.seen_before + 1)


# ---------------------------------------------------------------------------
# 3: weighted pools

class WeightedPools(SharedLb):
    ORIGINS = ("stable", "canary")

    @classmethod
    def config(cls):
        o = cls.origins
        return f"""
{PREAMBLE}listeners:
  - name: public
    listen: 127.0.0.1:0
    routes:
      - match: {{ path_prefix: /sticky/ }}
        pools: [ {{ pool: stable, weight: 90 }}, {{ pool: canary, weight: 10 }} ]
        split_key: "cookie:user"
      - match: {{ path_prefix: / }}
        pools: [ {{ pool: stable, weight: 90 }}, {{ pool: canary, weight: 10 }} ]
pools:
  stable:
    backends: [ {backends_of(o["stable"])} ]
  canary:
    backends: [ {backends_of(o["canary"])} ]
"""

    def requests_seen(self):
        return {n: o.stats()["requests"] for n, o in self.origins.items()}

    def test_split_90_10(self):
        before = self.requests_seen()
        counts, errors, elapsed = run_load(self.port, threads=4, path="/split", per_thread=2500)
        self.assertEqual(errors, [])
        total = sum(counts.values())
        self.assertEqual(total, 10000)
        wrong = {k: n for k, n in counts.items()
                 if k[0] != 200 or k[2] != ("Hello from %s\n" % k[1]).encode()}
        self.assertEqual(wrong, {}, "answers other than the origins' 200")
        got = by_origin(counts)
        after = self.requests_seen()
        say("split 90/10 over %d GETs in %.1f s: %r" % (total, elapsed, dict(got)))
        self.assertEqual(got["stable"] + got["canary"], 10000, got)
        self.assertLessEqual(abs(got["stable"] - 9000), 200, "stable got %d of 10,000 (want "
                             "9,000 +-200), canary %d" % (got["stable"], got["canary"]))
        self.assertLessEqual(abs(got["canary"] - 1000), 200, "canary got %d of 10,000 (want "
                             "1,000 +-200), stable %d" % (got["canary"], got["stable"]))
        for name in ("stable", "canary"):
            self.assertEqual(after[name] - before[name], got[name],
                             "origin %s counted %d requests, the clients saw %d answers from it"
                             % (name, after[name] - before[name], got[name]))

    def test_split_key_cookie_keeps_each_user_on_one_side(self):
        before = self.requests_seen()
        sides = collections.defaultdict(list)
        for rnd in range(5):
            # A new connection each round: stickiness comes from the cookie.
            with KeepAliveClient(self.port) as c:
                for u in range(200):
                    cookie = ("user=u%d" % u) if u % 2 == 0 else \
                        ("theme=dark; user=u%d; lang=en" % u)
                    status, h, body = c.request("GET", "/sticky/page",
                                                headers={"Cookie": cookie})
                    self.assertEqual(status, 200, "user u%d round %d: %d %r"
                                     % (u, rnd, status, body[:200]))
                    sides[u].append(h["X-Origin"])
        flipped = {"u%d" % u: s for u, s in sides.items() if len(set(s)) != 1}
        self.assertEqual(flipped, {}, "%d of 200 users switched sides" % len(flipped))
        users = collections.Counter(s[0] for s in sides.values())
        say("split_key cookie:user: users per side %r" % dict(users))
        self.assertEqual(users["stable"] + users["canary"], 200, users)
        self.assertGreater(users["canary"], 0, "no user on canary: %r" % users)
        self.assertGreater(users["stable"], 0, "no user on stable: %r" % users)
        self.assertGreater(users["stable"], users["canary"],
                           "weights 90/10 but users per side %r" % users)
        after = self.requests_seen()
        self.assertEqual(sum(after.values()) - sum(before.values()), 1000)


# ---------------------------------------------------------------------------
# 4: match kinds

class MatchKinds(SharedLb):
    ORIGINS = ("method", "query", "header", "exact", "regex", "source", "fallback")

    @classmethod
    def config(cls):
        pools = "\n".join(f"""  {n}:
    backends: [ {backends_of(o)} ]""" for n, o in cls.origins.items())
        return f"""
{PREAMBLE}listeners:
  - name: public
    listen: 127.0.0.1:0
    routes:
      - match: {{ path_prefix: /m/, method: [ GET, HEAD ] }}
        pool: method
      - match: {{ path_prefix: /p/, method: POST }}
        pool: method
      - match: {{ path_prefix: /q/, query: {{ preview: "1" }} }}
        pool: query
      - match: {{ path_prefix: /c/, method: PUT, query: {{ preview: "1" }}, header: {{ X-Debug: present }} }}
        pool: query
      - match: {{ path_prefix: /hp/, header: {{ X-Debug: present }} }}
        pool: header
      - match: {{ path_prefix: /he/, header: {{ X-Canary: "1" }} }}
        pool: header
      - match: {{ path: /exact }}
        pool: exact
      - match: {{ path_regex: "^/u/[0-9]+$" }}
        pool: regex
      - match: {{ path_regex: "[.]png$" }}
        pool: regex
      - match: {{ path_prefix: /s/, source: [ 127.0.0.2/32, 127.0.1.0/24 ] }}
        pool: source
      - match: {{ path_prefix: / }}
        pool: fallback
pools:
{pools}
"""

    def assert_pool(self, want, method, path, headers=None, source=None):
        if source is None:
            status, h, body = http(self.port, method, path, headers=headers)
        else:
            status, h, body = request_from(source, self.port, method, path, headers=headers)
        self.assertEqual((status, h["X-Origin"]), (200, want),
                         "%s %s headers %r from %s -> %d %r (want pool %s) %r"
                         % (method, path, headers, source or "127.0.0.1", status,
                            h["X-Origin"], want, body[:200]))

    def test_method(self):
        self.assert_pool("method", "GET", "/m/x")
        self.assert_pool("method", "HEAD", "/m/x")
        self.assert_pool("fallback", "POST", "/m/x")
        self.assert_pool("fallback", "DELETE", "/m/x")
        self.assert_pool("method", "POST", "/p/x")
        self.assert_pool("fallback", "GET", "/p/x")
        self.assert_pool("fallback", "PUT", "/p/x")

    def test_query(self):
        for q in ("?preview=1", "?preview=%31", "?a=b&preview=1", "?preview=1&a=b"):
            self.assert_pool("query", "GET", "/q/x" + q)
        for q in ("", "?preview=2", "?preview=10", "?preview=", "?preview", "?xpreview=1",
                  "?a=preview", "?a=1"):
            self.assert_pool("fallback", "GET", "/q/x" + q)
        # The query alone does not select the route: its path_prefix must hold too.
        self.assert_pool("fallback", "GET", "/other?preview=1")

    def test_header_present(self):
        self.assert_pool("header", "GET", "/hp/x", {"X-Debug": "anything"})
        self.assert_pool("header", "GET", "/hp/x", {"X-Debug": "present"})
        self.assert_pool("header", "GET", "/hp/x", {"x-debug": "0"})
        self.assert_pool("fallback", "GET", "/hp/x")
        self.assert_pool("fallback", "GET", "/hp/x", {"X-Debugger": "1"})

    def test_header_exact(self):
        self.assert_pool("header", "GET", "/he/x", {"X-Canary": "1"})
        self.assert_pool("header", "GET", "/he/x", {"x-canary": "1"})
        self.assert_pool("fallback", "GET", "/he/x", {"X-Canary": "10"})
        self.assert_pool("fallback", "GET", "/he/x", {"X-Canary": "0"})
        self.assert_pool("fallback", "GET", "/he/x")

    def test_path_exact(self):
        self.assert_pool("exact", "GET", "/exact")
        self.assert_pool("exact", "GET", "/exact?x=1")
        for p in ("/exact/", "/exactly", "/exact/x", "/EXACT", "/x/exact"):
            self.assert_pool("fallback", "GET", p)

    def test_path_regex(self):
        for p in ("/u/123", "/u/0", "/u/123?x=1", "/u/123?x=abc"):
            self.assert_pool("regex", "GET", p)
        for p in ("/u/12a", "/u/", "/u", "/u/123/", "/x/u/123"):
            self.assert_pool("fallback", "GET", p)
        # Partial match (no anchor at the start), on the path without its query.
        for p in ("/img/a.png", "/a.png?x=1", "/deep/dir/b.png?v=2.png"):
            self.assert_pool("regex", "GET", p)
        for p in ("/img/a.pngx", "/img/apng", "/img/a.png/x", "/img/a.jpg?f=a.png"):
            self.assert_pool("fallback", "GET", p)

    def test_source(self):
        self.assert_pool("source", "GET", "/s/x", source="127.0.0.2")
        self.assert_pool("source", "GET", "/s/x", source="127.0.1.77")
        self.assert_pool("fallback", "GET", "/s/x", source="127.0.0.1")
        self.assert_pool("fallback", "GET", "/s/x", source="127.0.0.3")
        self.assert_pool("fallback", "GET", "/s/x", source="127.0.2.1")

    def test_every_key_must_hold(self):
        debug = {"X-Debug": "1"}
        self.assert_pool("query", "PUT", "/c/x?preview=1", debug)
        self.assert_pool("fallback", "GET", "/c/x?preview=1", debug)
        self.assert_pool("fallback", "PUT", "/c/x?preview=2", debug)
        self.assert_pool("fallback", "PUT", "/c/x", debug)
        self.assert_pool("fallback", "PUT", "/c/x?preview=1")


# ---------------------------------------------------------------------------
# 5, 6: header rules and rewrites

class HeaderRulesAndRewrite(SharedLb):
    ORIGINS = ("app",)
    ORIGIN_LOG = True  # the rewrite test reads the request log

    @classmethod
    def config(cls):
        return f"""
{PREAMBLE}listeners:
  - name: public
    listen: 127.0.0.1:0
    routes:
      - match: {{ path_prefix: /api/ }}
        pool: app
        rewrite: {{ path_prefix: /, host: internal.example.com }}
      - match: {{ path_prefix: /old/ }}
        pool: app
        rewrite: {{ path_prefix: /v2/, host: internal.example.com }}
      - match: {{ path: /headers, header: {{ X-Route: one }} }}
        pool: app
        request_headers:
          set: {{ X-Env: prod }}
          add:
            X-Client: "%{{client_ip}}"
            X-Rid: "%{{request_id}}"
            X-Host-Seen: "%{{host}}"
            X-Trace: "ip=%{{client_ip}} host=%{{host}}"
          remove: [ X-Debug ]
        response_headers:
          set: {{ Strict-Transport-Security: "max-age=63072000" }}
          remove: [ X-Origin, Server ]
      - match: {{ path: /headers, header: {{ X-Route: two }} }}
        pool: app
        request_headers:
          set: {{ X-Multi: one }}
          add: {{ X-Tag: lb }}
        response_headers:
          set: {{ Content-Type: text/x-rules }}
          add: {{ X-Origin: lb-edge }}
      - match: {{ path_prefix: / }}
        pool: app
pools:
  app:
    backends: [ {backends_of(cls.origins["app"])} ]
"""

    def origin_view(self, headers, path="/headers"):
        """GET through lb -> (client's response headers, the origin's JSON view)."""
        status, h, body = http(self.port, "GET", path, headers=headers)
        self.assertEqual(status, 200, body[:300])
        return h, json.loads(body)

    def test_request_headers_set_add_remove_and_variables(self):
        h, seen = self.origin_view([("Host", "rules.example.com"), ("X-Route", "one"),
                                    ("X-Env", "dev"), ("X-Debug", "1"), ("x-debug", "2"),
                                    ("X-Request-Id", "rid-rules-1")])
        hdrs = seen["headers"]
        self.assertEqual(all_values(hdrs, "X-Env"), ["prod"], "set did not replace: %r" % hdrs)
        self.assertEqual(all_values(hdrs, "X-Debug"), [], "remove left a field: %r" % hdrs)
        self.assertEqual(all_values(hdrs, "X-Client"), ["127.0.0.1"], hdrs)
        self.assertEqual(all_values(hdrs, "X-Request-Id"), ["rid-rules-1"], hdrs)
        self.assertEqual(all_values(hdrs, "X-Rid"), ["rid-rules-1"], hdrs)
        self.assertEqual(all_values(hdrs, "X-Host-Seen"), ["rules.example.com"], hdrs)
        self.assertEqual(all_values(hdrs, "X-Trace"), ["ip=127.0.0.1 host=rules.example.com"],
                         hdrs)
        self.assertEqual(all_values(hdrs, "Host"), ["rules.example.com"], hdrs)
        # No client request id: %{request_id} is the one lb generated and forwards.
        h, seen = self.origin_view([("Host", "rules.example.com"), ("X-Route", "one")])
        hdrs = seen["headers"]
        ids = all_values(hdrs, "X-Request-Id")
        self.assertEqual(len(ids), 1, hdrs)
        self.assertTrue(ids[0].strip(), hdrs)
        self.assertEqual(all_values(hdrs, "X-Rid"), ids, hdrs)
        self.assertEqual(all_values(hdrs, "X-Env"), ["prod"], "set of an absent field: %r" % hdrs)

    def test_request_headers_set_replaces_every_field_add_appends(self):
        h, seen = self.origin_view([("Host", "rules.example.com"), ("X-Route", "two"),
                                    ("X-Multi", "a"), ("X-Multi", "b"), ("X-Tag", "client")])
        hdrs = seen["headers"]
        self.assertEqual(all_values(hdrs, "X-Multi"), ["one"], hdrs)
        self.assertEqual(all_values(hdrs, "X-Tag"), ["client", "lb"], hdrs)
        h, seen = self.origin_view([("Host", "rules.example.com"), ("X-Route", "two")])
        self.assertEqual(all_values(seen["headers"], "X-Tag"), ["lb"], seen["headers"])

    def test_response_headers(self):
        h, _ = self.origin_view([("Host", "rules.example.com"), ("X-Route", "one")])
        self.assertEqual(h.get_all("Strict-Transport-Security"), ["max-age=63072000"], h.items())
        self.assertIsNone(h.get_all("X-Origin"), "remove left X-Origin: %r" % h.items())
        h, _ = self.origin_view([("Host", "rules.example.com"), ("X-Route", "two")])
        self.assertEqual(h.get_all("X-Origin"), ["app", "lb-edge"], h.items())
        self.assertEqual(h.get_all("Content-Type"), ["text/x-rules"], h.items())
        self.assertIsNone(h.get_all("Strict-Transport-Security"), h.items())

    def test_no_rules_no_changes(self):
        h, seen = self.origin_view([("Host", "rules.example.com"), ("X-Env", "dev"),
                                    ("X-Debug", "1")])
        hdrs = seen["headers"]
        self.assertEqual(all_values(hdrs, "X-Env"), ["dev"], hdrs)
        self.assertEqual(all_values(hdrs, "X-Debug"), ["1"], hdrs)
        self.assertEqual(all_values(hdrs, "X-Client"), [], hdrs)
        self.assertEqual(all_values(hdrs, "Host"), ["rules.example.com"], hdrs)
        self.assertEqual(h.get_all("X-Origin"), ["app"])
        self.assertEqual(h.get_all("Content-Type"), ["application/json"])
        self.assertIsNone(h.get_all("Strict-Transport-Security"))

    def test_rewrite_prefix_and_host(self):
        h, seen = self.origin_view([("Host", "shop.example.com")], path="/api/headers?y=1")
        self.assertEqual(seen["target"], "/headers?y=1", seen)
        self.assertEqual(all_values(seen["headers"], "Host"), ["internal.example.com"],
                         seen["headers"])
        self.assertEqual(all_values(seen["headers"], "X-Forwarded-Host"), ["shop.example.com"],
                         seen["headers"])
        # Nothing of the rewrite shows to the client.
        self.assertIsNone(h["Location"])
        self.assertEqual(h["X-Origin"], "app")

    def test_rewrite_to_v2(self):
        app = self.origins["app"]
        before = app.stats()["paths"]
        status, h, body = http(self.port, "GET", "/old/x?z=2", headers={"Host": "shop.example.com"})
        self.assertEqual((status, h["X-Origin"], body), (200, "app", b"Hello from app\n"))
        self.assertIsNone(h["Location"])
        status, _, _ = http(self.port, "GET", "/old/", headers={"Host": "shop.example.com"})
        self.assertEqual(status, 200)
        after = app.stats()["paths"]

        def delta(p):
            return after.get(p, 0) - before.get(p, 0)
        self.assertEqual((delta("/v2/x"), delta("/v2/"), delta("/old/x"), delta("/old/")),
                         (1, 1, 0, 0), "origin paths before %r after %r" % (before, after))
        entries = [e for e in app.log_entries() if e["target"].startswith("/v2/x")]
        self.assertTrue(entries, "no /v2/x in the origin's log")
        last = entries[-1]
        self.assertEqual(last["target"], "/v2/x?z=2")
        self.assertEqual(all_values(last["headers"], "Host"), ["internal.example.com"],
                         last["headers"])
        self.assertEqual(all_values(last["headers"], "X-Forwarded-Host"), ["shop.example.com"],
                         last["headers"])

    def test_http2_streams_get_the_same_rules(self):
        # Prior-knowledge HTTP/2 (h2c): request and response rules, the
        # rewrite, and a 404 for a route-less path all as for HTTP/1.1.
        out = subprocess.run(
            ["curl", "-s", "--http2-prior-knowledge", "-D", "-", "-H", "X-Route: one",
             "-H", "X-Debug: 1", "-H", "X-Env: dev",
             f"http://127.0.0.1:{self.port}/headers"],
            capture_output=True, text=True, timeout=20 * SLOW)
        self.assertEqual(out.returncode, 0, out.stderr)
        head, _, body = out.stdout.partition("\n\n")  # (text mode: CRLF read as LF)
        self.assertTrue(head.startswith("HTTP/2 200"), head)
        lower = head.lower()
        self.assertIn("strict-transport-security: max-age=63072000", lower)
        self.assertNotIn("x-origin:", lower)
        seen = json.loads(body)["headers"]
        self.assertEqual(all_values(seen, "X-Env"), ["prod"], seen)
        self.assertEqual(all_values(seen, "X-Debug"), [], seen)
        self.assertEqual(all_values(seen, "X-Client"), ["127.0.0.1"], seen)
        out = subprocess.run(
            ["curl", "-s", "--http2-prior-knowledge", f"http://127.0.0.1:{self.port}/api/headers?y=2"],
            capture_output=True, text=True, timeout=20 * SLOW)
        seen = json.loads(out.stdout)
        self.assertEqual(seen["target"], "/headers?y=2", seen)
        self.assertEqual(all_values(seen["headers"], "Host"), ["internal.example.com"], seen)


# ---------------------------------------------------------------------------
# 7: access lists

class AccessLists(SharedLb):
    ORIGINS = ("web",)

    @classmethod
    def config(cls):
        web = backends_of(cls.origins["web"])
        return f"""
{PREAMBLE}listeners:
  - name: public
    listen: 127.0.0.1:0
    deny: [ 127.0.0.3/32, 127.0.0.9 ]
    routes:
      - match: {{ path_prefix: /acl/ }}
        pool: web
  - name: internal
    listen: 127.0.0.1:0
    allow: [ 127.0.0.2/32, 127.0.1.0/24 ]
    deny: [ 127.0.1.9/32 ]
    routes:
      - match: {{ path_prefix: / }}
        pool: web
pools:
  web:
    backends: [ {web} ]
"""

    def assert_refused(self, port, source, path="/acl/x"):
        status, h, body = request_from(source, port, "GET", path)
        self.assertEqual(status, 403, "from %s: %d %r" % (source, status, body[:200]))
        self.assertIsNone(h["X-Origin"])
        text = body.decode("utf-8", "replace").lower()
        self.assertTrue(any(w in text for w in ("denied", "not allowed", "forbidden", "access")),
                        "403 body names no reason: %r" % body)

    def assert_served(self, port, source, path="/acl/x"):
        status, h, body = request_from(source, port, "GET", path)
        self.assertEqual((status, h["X-Origin"]), (200, "web"),
                         "from %s: %d %r" % (source, status, body[:200]))

    def test_deny(self):
        web = self.origins["web"]
        port = self.lb_.port("public")
        before = web.stats()["requests"]
        self.assert_refused(port, "127.0.0.3")
        self.assert_refused(port, "127.0.0.9")   # a plain IP in the list
        self.assert_refused(port, "127.0.0.3", "/nowhere")  # before routing: 403, not 404
        self.assertEqual(web.stats()["requests"], before, "a denied request reached the origin")
        self.assert_served(port, "127.0.0.1")
        self.assert_served(port, "127.0.0.2")
        status, _, _ = http(port, "GET", "/nowhere")
        self.assertEqual(status, 404)
        self.assertEqual(web.stats()["requests"], before + 2)

    def test_allow(self):
        web = self.origins["web"]
        port = self.lb_.port("internal")
        before = web.stats()["requests"]
        self.assert_refused(port, "127.0.0.1")
        self.assert_refused(port, "127.0.0.3")
        self.assert_refused(port, "127.0.1.9")   # in the allow list, but deny wins
        self.assertEqual(web.stats()["requests"], before, "a refused request reached the origin")
        self.assert_served(port, "127.0.0.2")
        self.assert_served(port, "127.0.1.5")
        self.assertEqual(web.stats()["requests"], before + 2)


# ---------------------------------------------------------------------------
# 8: retry_on and retry_budget

class Retries(SharedLb):
    # ok-1, bad, ok-2 in this order; bad answers 503 to everything.
    ORIGINS = ("ok-1", ("bad", ["--status-all", "503"]), "ok-2")

    @classmethod
    def config(cls):
        o = cls.origins
        backends = backends_of(o["ok-1"], o["bad"], o["ok-2"])
        # One worker: the budget is then one counter whatever its scope.
        # Pool web's budget never binds (each GET needs at most one retry); pool
        # tight (the same backends) has the budget under test.
        return f"""
workers: 1
access_log: {{ path: "off" }}
admin: {{ listen: 127.0.0.1:0 }}
listeners:
  - name: public
    listen: 127.0.0.1:0
    routes:
      - match: {{ header: {{ X-Pool: tight }} }}
        pool: tight
      - match: {{ path_prefix: / }}
        pool: web
pools:
  web:
    balance: round_robin
    retries: 2
    retry_on: [ 503 ]
    retry_budget: {{ ratio: 1.0, min_per_second: 1000 }}
    backends: [ {backends} ]
  tight:
    balance: round_robin
    retries: 2
    retry_on: [ 503 ]
    retry_budget: {{ ratio: 0.2, min_per_second: 3 }}
    backends: [ {backends} ]
"""

    def paths_seen(self, path):
        return {n: path_count(o, path) for n, o in self.origins.items()}

    def metric(self, name, **labels):
        return self.lb_.metric(name, **labels)

    def test_get_retried_past_503(self):
        before = self.paths_seen("/g")
        retries_before = self.metric("lb_retries_total", pool="web", reason="503")
        counts, errors, elapsed = run_load(self.port, threads=4, path="/g", per_thread=2500)
        self.assertEqual(errors, [])
        after = self.paths_seen("/g")
        seen = {n: after[n] - before[n] for n in after}
        total = sum(counts.values())
        say("10,000 GETs past a 503 backend in %.1f s: %r, origins saw %r"
            % (elapsed, dict(by_origin(counts)), seen))
        self.assertEqual(total, 10000)
        not_ok = {k: n for k, n in counts.items() if k[0] != 200 or k[1] == "bad"}
        self.assertEqual(not_ok, {}, "GETs not answered 200 by a good backend")
        self.assertEqual(seen["ok-1"] + seen["ok-2"], 10000, seen)
        self.assertGreater(seen["bad"], 0, "the 503 backend got no request: %r" % seen)
        retries = self.metric("lb_retries_total", pool="web", reason="503") - retries_before
        self.assertEqual(retries, seen["bad"],
                         "lb_retries_total{pool=web,reason=503} moved by %d, the 503 backend "
                         "answered %d GETs" % (retries, seen["bad"]))
        self.assertEqual(self.metric("lb_retry_budget_exhausted_total", pool="web"), 0)

    def test_post_not_retried_on_503(self):
        before = self.paths_seen("/post")
        retries_before = self.metric("lb_retries_total", pool="web", reason="503")
        n = 300
        got = collections.Counter()
        with KeepAliveClient(self.port) as c:
            for i in range(n):
                status, h, body = c.request("POST", "/post", body=b"payload-%d" % i)
                got[(status, h["X-Origin"], body)] += 1
        after = self.paths_seen("/post")
        seen = {k: after[k] - before[k] for k in after}
        say("%d POSTs: %r, origins saw %r" % (n, dict(got), seen))
        failed = sum(v for k, v in got.items() if k[0] == 503)
        self.assertEqual(failed + sum(v for k, v in got.items() if k[0] == 200), n, got)
        self.assertEqual(got[(503, "bad", b"status 503\n")], failed,
                         "a 503 that is not the backend's own answer: %r" % got)
        self.assertTrue(0.2 * n <= failed <= 0.47 * n,
                        "%d of %d POSTs got 503 (want about a third): %r" % (failed, n, got))
        self.assertEqual(seen["bad"], failed, "the 503 backend saw %d POSTs, clients got %d 503s"
                         % (seen["bad"], failed))
        self.assertEqual(sum(seen.values()), n, "POSTs were sent twice: %r" % seen)
        self.assertEqual(self.metric("lb_retries_total", pool="web", reason="503"),
                         retries_before, "a POST was retried")

    def test_retry_budget(self):
        names = set(self.origins)
        before = self.paths_seen("/status/503")
        r_before = self.metric("lb_retries_total", pool="tight", reason="503")
        ex_before = self.metric("lb_retry_budget_exhausted_total", pool="tight")
        counts, errors, elapsed = run_load(self.port, threads=4, path="/status/503",
                                           duration=10.0, interval=0.025,
                                           headers={"X-Pool": "tight"})
        self.assertEqual(errors, [])
        after = self.paths_seen("/status/503")
        seen = sum(after.values()) - sum(before.values())
        n = sum(counts.values())
        retries = self.metric("lb_retries_total", pool="tight", reason="503") - r_before
        exhausted = self.metric("lb_retry_budget_exhausted_total", pool="tight") - ex_before
        seconds = math.ceil(elapsed) + 2  # windows touched, with one at each edge
        bound = 1.2 * n + 3 * seconds
        say("retry budget: %d client requests in %.1f s, origins saw %d (bound %.0f), "
            "retries %d, budget exhausted %d" % (n, elapsed, seen, bound, retries, exhausted))
        self.assertGreater(n, 200, "too few requests sent: %d" % n)
        wrong = {k: v for k, v in counts.items()
                 if k[0] != 503 or k[2] != b"status 503\n" or k[1] not in names}
        self.assertEqual(wrong, {}, "answers other than a backend's 503")
        self.assertGreaterEqual(seen, n)
        self.assertLessEqual(seen, bound, "origins saw %d requests for %d client requests in "
                             "%.1f s: more than 1.2 x %d + 3 x %d = %.0f"
                             % (seen, n, elapsed, n, seconds, bound))
        self.assertGreater(retries, 0, "lb_retries_total{pool=tight,reason=503} did not move")
        self.assertEqual(seen - n, retries, "origins saw %d requests beyond the clients' %d, "
                         "lb_retries_total says %d" % (seen - n, n, retries))
        self.assertGreater(exhausted, 0, "lb_retry_budget_exhausted_total{pool=tight} did not move")


# ---------------------------------------------------------------------------
# 9: per_try_timeout

class PerTryTimeout(SharedLb):
    ORIGINS = (("slow", ["--delay-all", "3000"]), "fast")

    @classmethod
    def config(cls):
        o = cls.origins
        return f"""
{PREAMBLE}listeners:
  - name: public
    listen: 127.0.0.1:0
    routes:
      - match: {{ path_prefix: / }}
        pool: web
pools:
  web:
    balance: round_robin
    retries: 2
    retry_on: [ 504 ]
    per_try_timeout: 500ms
    timeouts: {{ connect: 1s, response: 10s }}
    backends: [ {backends_of(o["slow"], o["fast"])} ]
"""

    def test_slow_attempt_cut_and_retried(self):
        limit = 1.5 * SLOW
        results = []
        with KeepAliveClient(self.port, timeout=15) as ka:
            for i in range(8):
                t0 = time.monotonic()
                if i % 2 == 0:
                    status, h, body = http(self.port, "GET", "/t/%d" % i, timeout=15)
                else:
                    status, h, body = ka.request("GET", "/t/%d" % i)
                results.append((status, h["X-Origin"], round(time.monotonic() - t0, 2)))
        say("per_try_timeout 500ms: %r" % results)
        late = [r for r in results if r[0] != 200 or r[1] != "fast" or r[2] > limit]
        self.assertEqual(late, [], "answers not a 200 from the fast origin within %.1f s: %r"
                         % (limit, results))
        slow_seen = self.origins["slow"].stats()["requests"]
        self.assertGreater(slow_seen, 0, "no attempt went to the slow origin: the per-try "
                                         "timeout was not exercised (%r)" % results)
        retries = self.lb_.metric("lb_retries_total", pool="web", reason="504")
        self.assertEqual(retries, slow_seen, "lb_retries_total{pool=web,reason=504} = %d, the "
                         "slow origin got %d attempts" % (retries, slow_seen))


class PausingBackend:
    """A raw HTTP/1.1 backend on 127.0.0.1: answers every request with its
    head at once and its body `pause` seconds later (a report or a long poll:
    the head is there, the body takes its time); one request per connection."""

    def __init__(self, pause, body=b"late body\n"):
        import socket
        self.pause, self.body = pause, body
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.addr = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn):
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                         % len(self.body))
            time.sleep(self.pause)
            conn.sendall(self.body)

    def close(self):
        self.stop = True
        self.sock.close()


class PerTryTimeoutEndsWithTheHead(harness.TestCase):
    """per_try_timeout bounds an attempt until its response head: a body that
    pauses longer than it afterwards still arrives whole (timeouts.response
    governs from there)."""

    def test_body_pause_longer_than_per_try_timeout(self):
        backend = PausingBackend(pause=1.5)
        lb = None
        try:
            lb = harness.Lb(f"""
{PREAMBLE}listeners:
  - name: public
    listen: 127.0.0.1:0
    routes: [ {{ pool: web }} ]
pools:
  web:
    retry_on: [ 504 ]
    per_try_timeout: 500ms
    timeouts: {{ response: 10s }}
    backends: [ {backend.addr} ]
""")
            status, _, body = http(lb.port(), "GET", "/report", timeout=15)
            self.assertEqual((status, body), (200, b"late body\n"))
            self.assertEqual(lb.metric("lb_retries_total", pool="web"), 0)
        finally:
            if lb is not None:
                lb.cleanup()
            backend.close()

class ReloadAppliesRules(harness.TestCase):
    """A reload changes the rules for the next request, also on a keep-alive
    connection that stays open across it."""

    CONFIG = f"""
{PREAMBLE}listeners:
  - name: public
    listen: 127.0.0.1:0
    routes:
      - match: {{ path: /notice }}
        respond: {{ status: 200, body: "BODY", content_type: text/plain }}
      - redirect: {{ scheme: https }}
pools:
  web:
    backends: [ 127.0.0.1:9 ]
"""

    def test_reload_changes_rules_on_an_open_connection(self):
        lb = harness.Lb(self.CONFIG.replace("BODY", "before"))
        try:
            with KeepAliveClient(lb.port(), timeout=10) as ka:
                status, _, body = ka.request("GET", "/notice")
                self.assertEqual((status, body), (200, b"before"))
                reloads = lb.metric("lb_config_reloads_total", result="success")
                lb.reload(self.CONFIG.replace("BODY", "after"))
                self.assertTrue(harness.wait_until(
                    lambda: lb.metric("lb_config_reloads_total", result="success") > reloads,
                    timeout=10), "the reload did not succeed: %s" % lb.stderr_text()[-2000:])
                status, _, body = ka.request("GET", "/notice")
                self.assertEqual((status, body), (200, b"after"))
                self.assertEqual(ka.connects, 1, "the reload closed the keep-alive connection")
        finally:
            lb.cleanup()

# ---------------------------------------------------------------------------
# lb check: the new keys are accepted, some invalid rules refused

_ACCEPTED = """
admin: { listen: 127.0.0.1:0 }
listeners:
  - name: public
    listen: 127.0.0.1:0
    allow: [ 127.0.0.0/8, 10.0.0.1 ]
    deny: [ 127.0.0.3/32 ]
    routes:
      - match:
          host: "*.example.com"
          path_prefix: /v1/
          method: [ GET, HEAD ]
          header: { X-Canary: "1", X-Debug: present }
          query: { preview: "1" }
          source: [ 127.0.0.2/32 ]
        pool: web
        rewrite: { path_prefix: /v2/, host: internal.example.com }
        request_headers: { set: { X-Env: prod }, add: { X-Client: "%{client_ip}" }, remove: [ X-Debug ] }
        response_headers: { set: { Strict-Transport-Security: "max-age=63072000" }, remove: [ Server ] }
      - match: { path: /exact, method: POST }
        pools: [ { pool: stable, weight: 90 }, { pool: canary, weight: 10 } ]
        split_key: "cookie:user"
      - match: { path_regex: "^/u/[0-9]+$" }
        pools: [ { pool: stable, weight: 50 }, { pool: canary, weight: 50 } ]
        split_key: source_ip
      - match: { header: { X-Split: present } }
        pools: [ { pool: stable, weight: 1 }, { pool: canary, weight: 1 } ]
        split_key: "header:X-User"
      - match: { path_prefix: /old/ }
        redirect: { scheme: https, host: example.com, port: 8443, prefix: /new/, query: "a=b", code: 308 }
      - match: { path_prefix: /moved/ }
        redirect: { path: /new, code: 302 }
      - match: { path_prefix: /maint/ }
        respond: { status: 503, body: "back soon", content_type: text/plain }
pools:
  web:
    backends: [ { address: 127.0.0.1:9001 } ]
    retries: 2
    retry_on: [ connect_failure, reset, 502, 503, 504 ]
    retry_budget: { ratio: 0.2, min_per_second: 3 }
    per_try_timeout: 5s
  stable:
    backends: [ { address: 127.0.0.1:9002 } ]
  canary:
    backends: [ { address: 127.0.0.1:9003 } ]
"""


def _one_route(route, pool_extra=""):
    return f"""
admin: {{ listen: 127.0.0.1:0 }}
listeners:
  - name: public
    listen: 127.0.0.1:0
    routes:
{route}
pools:
  web:
    backends: [ {{ address: 127.0.0.1:9001 }} ]
{pool_extra}"""


class ConfigCheck(unittest.TestCase):
    def test_new_keys_accepted(self):
        code, out, _ = lb_check(_ACCEPTED)
        self.assertEqual(code, 0, out)

    def test_invalid_rules_refused(self):
        bad = {
            "two actions": _one_route(
                "      - match: { path_prefix: / }\n"
                "        pool: web\n"
                "        redirect: { scheme: https }\n"),
            "modifier on a respond route": _one_route(
                "      - match: { path_prefix: / }\n"
                "        respond: { status: 200, body: ok }\n"
                "        request_headers: { set: { X-A: b } }\n"),
            "redirect code 304": _one_route(
                "      - match: { path_prefix: / }\n"
                "        redirect: { scheme: https, code: 304 }\n"),
            "invalid regex": _one_route(
                "      - match: { path_regex: \"(\" }\n"
                "        pool: web\n"),
            "retry_on 500": _one_route(
                "      - match: { path_prefix: / }\n"
                "        pool: web\n",
                "    retry_on: [ 500 ]\n"),
        }
        for what, text in bad.items():
            with self.subTest(what):
                code, out, _ = lb_check(text)
                self.assertEqual(code, 1, "%s: accepted: %s" % (what, out))
                self.assertTrue(re.search(r"lb\.yaml:\d+:\d+: ", out),
                                "%s: no FILE:LINE:COL message: %s" % (what, out))


if __name__ == "__main__":
    harness.main()
