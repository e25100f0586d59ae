#!/usr/bin/env python3
"""GET /metrics: exact values after known traffic, and a well-formed exposition.

With 2 workers (the kernel spreads new connections over both, so the counters
are summed over workers at scrape time):
- 100 x 200 through a route to a live origin, 7 x 404 (no route matches),
  3 x 502 (a pool whose only backend refuses connections) -> exact
  lb_requests_total per listener/pool/code, histogram count and buckets,
  lb_upstream_requests_total, connect errors, bytes, build info;
- gauges move: an open client connection, a request in flight;
- the whole exposition passes a promtool-style check (HELP and TYPE before
  samples, names, label syntax and escaping, counters end in _total,
  histogram buckets cumulative and ending in +Inf, no duplicate series), and
  `promtool check metrics` too when Debian's prometheus package is installed.
"""

import math
import os
import re
import shutil
import subprocess
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import RawConnection, http, parse_metrics, unused_port, wait_until  # noqa: E402


# ---------------------------------------------------------------------------
# promtool-style checker

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL_NAME = r"[a-zA-Z_][a-zA-Z0-9_]*"
_SAMPLE = re.compile(r"^(%s)(\{(.*)\})? (\S+)( -?\d+)?$" % _NAME)
_LABEL_PAIR = re.compile(r'(%s)="((?:[^"\\\n]|\\[\\"n])*)"' % _LABEL_NAME)
_TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}


def _value(text):
    if text in ("+Inf", "Inf"):
        return math.inf
    if text == "-Inf":
        return -math.inf
    return float(text)  # raises on garbage; "NaN" is accepted


def _parse_labels(body):
    """'a="1",b="x\\"y"' -> [(a, 1), (b, x"y)], or None when malformed."""
    labels, pos = [], 0
    while pos < len(body):
        m = _LABEL_PAIR.match(body, pos)
        if not m:
            return None
        value = re.sub(r'\\(.)', lambda e: {"n": "\n"}.get(e.group(1), e.group(1)), m.group(2))
        labels.append((m.group(1), value))
        pos = m.end()
        if pos < len(body):
            if body[pos] != ",":
                return None
            pos += 1
    return labels


def lint(text):
    """Problems with a Prometheus text exposition (format 0.0.4), as strings."""
    problems = []
    helps, types = {}, {}
    families_done, current = set(), None
    series = set()
    histograms = {}  # (family, labels without le) -> {"buckets": [(le, v)], "sum", "count"}
    if not text.endswith("\n"):
        problems.append("exposition does not end with a newline")
    for n, line in enumerate(text.split("\n")[:-1], 1):
        where = "line %d: %r" % (n, line)
        if not line:
            problems.append(where + ": empty line")
            continue
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                name = parts[2]
                if not re.fullmatch(_NAME, name):
                    problems.append(where + ": bad metric name")
                if parts[1] == "HELP":
                    if name in helps:
                        problems.append(where + ": second HELP for " + name)
                    helps[name] = parts[3] if len(parts) > 3 else ""
                    if not helps[name].strip():
                        problems.append(where + ": empty HELP text")
                else:
                    if name in types:
                        problems.append(where + ": second TYPE for " + name)
                    if len(parts) != 4 or parts[3] not in _TYPES:
                        problems.append(where + ": bad TYPE line")
                        continue
                    types[name] = parts[3]
                    if parts[3] == "counter" and not name.endswith("_total"):
                        problems.append(where + ": counter name does not end in _total")
                    if parts[3] != "counter" and name.endswith("_total"):
                        problems.append(where + ": non-counter name ends in _total")
                if name != current:
                    if current is not None:
                        families_done.add(current)
                    if name in families_done:
                        problems.append(where + ": family %s is not contiguous" % name)
                    current = name
            continue
        m = _SAMPLE.match(line)
        if not m:
            problems.append(where + ": not a valid sample line")
            continue
        name, label_text, value_text = m.group(1), m.group(3), m.group(4)
        labels = _parse_labels(label_text or "")
        if labels is None:
            problems.append(where + ": malformed labels")
            continue
        names = [k for k, _ in labels]
        if len(set(names)) != len(names):
            problems.append(where + ": repeated label name")
        try:
            value = _value(value_text)
        except ValueError:
            problems.append(where + ": bad value")
            continue
        family = name
        for suffix in ("_bucket", "_sum", "_count"):
            base = name[: -len(suffix)]
            if name.endswith(suffix) and types.get(base) in ("histogram", "summary"):
                family = base
        if family not in types:
            problems.append(where + ": sample before its TYPE line")
        if family not in helps:
            problems.append(where + ": sample before its HELP line")
        if family != current:
            problems.append(where + ": sample outside its family's block")
        key = (name, tuple(sorted(labels)))
        if key in series:
            problems.append(where + ": duplicate series")
        series.add(key)
        if types.get(family) in ("counter", "histogram") and value < 0:
            problems.append(where + ": negative counter")
        if types.get(family) == "histogram":
            rest = tuple(sorted((k, v) for k, v in labels if k != "le"))
            h = histograms.setdefault((family, rest), {"buckets": [], "sum": None, "count": None})
            if name.endswith("_bucket"):
                le = dict(labels).get("le")
                if le is None:
                    problems.append(where + ": bucket without le")
                    continue
                h["buckets"].append((_value(le), value))
            elif name.endswith("_sum"):
                h["sum"] = value
            elif name.endswith("_count"):
                h["count"] = value
            else:
                problems.append(where + ": histogram sample without _bucket/_sum/_count")
    for (family, rest), h in histograms.items():
        where = "histogram %s%s" % (family, dict(rest))
        b = h["buckets"]
        if not b:
            problems.append(where + ": no buckets")
            continue
        les = [le for le, _ in b]
        if les != sorted(les) or len(set(les)) != len(les):
            problems.append(where + ": le not strictly ascending")
        if les[-1] != math.inf:
            problems.append(where + ": last bucket is not +Inf")
        counts = [v for _, v in b]
        if counts != sorted(counts):
            problems.append(where + ": buckets not cumulative")
        if h["count"] is None or h["sum"] is None:
            problems.append(where + ": _sum or _count missing")
        elif counts[-1] != h["count"]:
            problems.append(where + ": +Inf bucket %s != _count %s" % (counts[-1], h["count"]))
    return problems


def buckets(text, name, **labels):
    """[(le, cumulative count)] of a histogram's series, in exposition order."""
    out = []
    for n, l, v in parse_metrics(text):
        if n == name + "_bucket" and all(l.get(k) == str(x) for k, x in labels.items()):
            out.append((_value(l["le"]), v))
    return out


# ---------------------------------------------------------------------------

def config(live, dead_port):
    return f"""
workers: 2
access_log: {{ path: "off" }}
admin: {{ listen: 127.0.0.1:0 }}
listeners:
  - name: public
    listen: 127.0.0.1:0
    routes:
      - {{ match: {{ path_prefix: /app/ }}, pool: web }}
      - {{ match: {{ path_prefix: /dead/ }}, pool: dead }}
pools:
  web:
    backends: [ {{ address: {live.addr} }} ]
  dead:
    backends: [ {{ address: 127.0.0.1:{dead_port} }} ]
"""


class Metrics(harness.TestCase):
    def test_checker_catches_broken_expositions(self):
        good = ("# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 3\n"
                "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\n"
                "h_sum 0.5\nh_count 2\n")
        self.assertEqual(lint(good), [])
        bad = {
            "no TYPE": "# HELP a_total A.\na_total 1\n",
            "no HELP": "# TYPE a_total counter\na_total 1\n",
            "counter name": "# HELP a A.\n# TYPE a counter\na 1\n",
            "bad escape": "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"\\q\"} 1\n",
            "unquoted": "# HELP a_total A.\n# TYPE a_total counter\na_total{x=1} 1\n",
            "bad name": "# HELP 1a_total A.\n# TYPE 1a_total counter\n1a_total 1\n",
            "duplicate": "# HELP a_total A.\n# TYPE a_total counter\na_total 1\na_total 2\n",
            "no +Inf": good.replace('le="+Inf"', 'le="2"'),
            "not cumulative": good.replace('h_bucket{le="1"} 1', 'h_bucket{le="1"} 5'),
            "le order": good.replace('h_bucket{le="1"} 1', 'h_bucket{le="2"} 1\nh_bucket{le="1"} 1'),
            "sample outside family": good + "a_total{x=\"2\"} 1\n",
            "count": good.replace("h_count 2", "h_count 3"),
        }
        for what, text in bad.items():
            self.assertNotEqual(lint(text), [], "the checker missed: " + what)

    def test_exact_counts_after_known_traffic(self):
        live = self.origin("live", log=False)
        lb = self.lb(config(live, unused_port()))
        self.assertEqual(lb.workers, 2)
        port = lb.port()
        body_len = 0
        for i in range(100):
            status, _, body = http(port, "GET", "/app/%d" % i)  # a new connection each
            self.assertEqual(status, 200)
            body_len += len(body)
        for i in range(7):
            self.assertEqual(http(port, "GET", "/nothing/%d" % i)[0], 404)
        for i in range(3):
            self.assertEqual(http(port, "GET", "/dead/%d" % i)[0], 502)

        # A request is counted as it finishes, just after its last byte went out.
        def counted():
            t = lb.metrics_text()
            return (harness.metric_value(t, "lb_requests_total", pool="web") == 100 and
                    harness.metric_value(t, "lb_requests_total", pool="none") == 7 and
                    harness.metric_value(t, "lb_requests_total", pool="dead") == 3)
        self.assertTrue(wait_until(counted, 5), lb.metrics_text())
        text = lb.metrics_text()
        self.assertEqual(lint(text), [], text)
        m = lambda name, **labels: harness.metric_value(text, name, **labels)  # noqa: E731

        self.assertEqual(m("lb_requests_total", listener="public", pool="web", code="200"), 100)
        self.assertEqual(m("lb_requests_total", listener="public", pool="none", code="404"), 7)
        self.assertEqual(m("lb_requests_total", listener="public", pool="dead", code="502"), 3)
        self.assertEqual(m("lb_requests_total"), 110, "requests counted under other labels")

        self.assertEqual(m("lb_request_duration_seconds_count", pool="web"), 100)
        self.assertGreater(m("lb_request_duration_seconds_sum", pool="web"), 0)
        b = buckets(text, "lb_request_duration_seconds", pool="web")
        self.assertGreaterEqual(len(b), 2)
        self.assertEqual(b[-1], (math.inf, 100))
        self.assertEqual([le for le, _ in b], sorted(le for le, _ in b))
        self.assertEqual([v for _, v in b], sorted(v for _, v in b), "buckets not cumulative")
        self.assertEqual(m("lb_request_duration_seconds_count", pool="dead"), 3)

        self.assertEqual(m("lb_upstream_requests_total", pool="web", backend=live.addr, code="200"),
                         100)
        self.assertEqual(m("lb_upstream_requests_total", pool="dead"), 0)
        self.assertGreaterEqual(m("lb_upstream_connect_errors_total", pool="dead"), 3)
        self.assertEqual(m("lb_upstream_connect_errors_total", pool="web", backend=live.addr), 0)

        self.assertGreaterEqual(m("lb_bytes_total", listener="public", direction="out"), body_len)
        self.assertGreater(m("lb_bytes_total", listener="public", direction="in"), 110 * 20)
        self.assertEqual(m("lb_backend_healthy", pool="web", region="default", backend=live.addr), 1)
        self.assertEqual(m("lb_region_traffic_share", pool="web", region="default"), 1)
        self.assertEqual(m("lb_backend_active_requests", pool="web", backend=live.addr), 0)
        self.assertEqual(m("lb_retries_total", pool="web"), 0)
        self.assertEqual(m("lb_outlier_ejections_total", pool="web", backend=live.addr), 0)

        version = subprocess.run([harness.lb_bin(), "version"], stdout=subprocess.PIPE,
                                 check=True).stdout.decode().split()[-1]
        self.assertEqual(m("lb_build_info", version=version), 1)
        for result in ("success", "failure"):
            self.assertIn('lb_config_reloads_total{result="%s"} 0' % result, text)
        for family in ("lb_health_checks_total", "lb_downstream_connections",
                       "lb_region_traffic_share", "lb_backend_healthy"):
            self.assertIn("# TYPE %s " % family, text)
            self.assertIn("# HELP %s " % family, text)

        if shutil.which("promtool"):
            r = subprocess.run(["promtool", "check", "metrics"], input=text.encode(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            self.assertEqual(r.returncode, 0, r.stdout.decode())

    def test_gauges_follow_connections_and_requests_in_flight(self):
        live = self.origin("live", log=False)
        lb = self.lb(config(live, unused_port()))
        port = lb.port()

        def gauge(name, **labels):
            return lb.metric(name, **labels)

        self.assertEqual(gauge("lb_downstream_connections", listener="public"), 0)
        with RawConnection(port) as c:
            c.send(b"GET /app/1 HTTP/1.1\r\nHost: t\r\n\r\n")
            self.assertEqual(c.read_response()[0], 200)
            # The keep-alive connection stays open.
            self.assertTrue(wait_until(
                lambda: gauge("lb_downstream_connections", listener="public") == 1, 5))
        self.assertTrue(wait_until(
            lambda: gauge("lb_downstream_connections", listener="public") == 0, 5))

        result = {}
        t = threading.Thread(target=lambda: result.update(
            r=http(port, "GET", "/app/slow?delay=1500", timeout=10)), daemon=True)
        t.start()
        self.assertTrue(wait_until(
            lambda: gauge("lb_backend_active_requests", pool="web", backend=live.addr) == 1, 5),
            "the request in flight is not shown as active")
        t.join(10)
        self.assertEqual(result["r"][0], 200)
        self.assertTrue(wait_until(
            lambda: gauge("lb_backend_active_requests", pool="web", backend=live.addr) == 0, 5))
        self.assertEqual(lint(lb.metrics_text()), [])


if __name__ == "__main__":
    harness.main()
