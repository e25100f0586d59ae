#!/usr/bin/env python3
"""Hot reload (SPEC "Command line": SIGHUP; admin POST /reload) as users see it.

- 5,000 GETs at concurrency 32 (half on keep-alive connections, half on a new
  connection each) while the config is reloaded 20 times, alternately adding
  and removing a backend, by SIGHUP and by POST /reload: no request fails, a
  WebSocket opened before stays open and echoes after, the added backend gets
  traffic, and lb_config_reloads_total{result="success"} counts 20;
- a backend a reload adds is health-checked at once (not at a point spread
  over a tenth of a long interval) and serves right after its check passes;
- a backend its checks found unhealthy before a reload gets no request right
  after it (its health state survives: no reset to a fresh start);
- a keep-alive client's requests after a reload reuse the upstream
  connections lb pooled before it;
- an invalid config is refused with its FILE:LINE:COL errors (POST /reload
  answers 400 with them; SIGHUP logs them), counted as failures, and the old
  config keeps serving;
- a listener added by a reload accepts, one removed stops, the kept one keeps
  its port, and a keep-alive connection opened before a route change is
  routed by the new routes on its next request;
- a new request id header name applies to a keep-alive connection's next
  request: the client's id under the new name is kept, none is added under
  the old one.
"""

import json
import os
import signal
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import KeepAliveClient, RawConnection, http, unused_port, wait_until  # noqa: E402

CHECK = "{ path: /healthz, interval: 300ms, timeout: 200ms, healthy_threshold: 2, unhealthy_threshold: 2 }"
KEY = "dGhlIHNhbXBsZSBub25jZQ=="
HANDSHAKE = ("GET /ws HTTP/1.1\r\nHost: app.test\r\nUpgrade: websocket\r\n"
             "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
             "Sec-WebSocket-Version: 13\r\n\r\n" % KEY).encode()


def config(addresses, retries=2, extra_listener=None, api=None, routes=None, check=CHECK,
           listener_headers=""):
    backends = "\n".join('      - address: "%s"' % a for a in addresses)
    listeners = """
  - name: public
    listen: 127.0.0.1:0
    routes: %s
%s""" % (routes or "[ { match: { path_prefix: / }, pool: web } ]", listener_headers)
    if extra_listener:
        listeners += """
  - name: extra
    listen: 127.0.0.1:%d
    routes: [ { pool: web } ]
""" % extra_listener
    pools = f"""
  web:
    retries: {retries}
    health_check: {check}
    backends:
{backends}
"""
    if api:
        pools += """
  api:
    backends: [ "%s" ]
""" % api
    return f"""
workers: 2
access_log: {{ path: "off" }}
admin: {{ listen: 127.0.0.1:0 }}
listeners:{listeners}
pools:{pools}
"""


def answered_by(port, path="/", client=None):
    status, _, body = client.request("GET", path) if client else http(port, "GET", path)
    return status, body.decode().strip().replace("Hello from ", "")


class Reload(harness.TestCase):
    def wait_serving(self, port, names, timeout=10):
        """Until every origin in `names` has answered through lb."""
        seen = set()

        def all_seen():
            status, who = answered_by(port)
            if status == 200:
                seen.add(who)
            return set(names) <= seen
        self.assertTrue(wait_until(all_seen, timeout=timeout), "only %s answered" % seen)

    def test_20_reloads_under_load_fail_nothing(self):
        o1, o2, o3 = (self.origin(n) for n in ("o1", "o2", "o3"))
        lb = self.lb(config([o1.addr, o2.addr]))
        port = lb.port()
        self.wait_serving(port, ["o1", "o2"])

        ws = RawConnection(port, timeout=10)
        self.addCleanup(ws.close)
        ws.send(HANDSHAKE)
        head = ws.recv_until(b"\r\n\r\n", timeout=5)
        self.assertTrue(head.startswith(b"HTTP/1.1 101"), head)

        total, concurrency = 5000, 32
        failures, done = [], [0]
        lock = threading.Lock()
        counter = iter(range(total))

        def take():
            with lock:
                return next(counter, None)

        def keep_alive_worker():
            client = None
            while take() is not None:
                try:
                    if client is None:
                        client = KeepAliveClient(port)
                    status, _, body = client.request("GET", "/")
                    ok = status == 200 and body.startswith(b"Hello from ")
                    if not ok:
                        failures.append((status, body[:100]))
                    if client.server_closed():
                        client.close()
                        client = None
                except Exception as e:  # noqa: BLE001 - every error is a failed request
                    failures.append(repr(e))
                    client = None
                with lock:
                    done[0] += 1
            if client:
                client.close()

        def new_connection_worker():
            while take() is not None:
                try:
                    status, _, body = http(port, "GET", "/")
                    if status != 200:
                        failures.append((status, body[:100]))
                except Exception as e:  # noqa: BLE001
                    failures.append(repr(e))
                with lock:
                    done[0] += 1

        threads = [threading.Thread(target=keep_alive_worker if i % 2 else new_connection_worker,
                                    daemon=True) for i in range(concurrency)]
        for t in threads:
            t.start()
        reload_answers = []
        for i in range(20):
            time.sleep(0.25)
            addresses = [o1.addr, o2.addr] + ([o3.addr] if i % 2 == 0 else [])
            if i % 4 < 2:
                lb.reload(config(addresses))
            else:
                lb.write_config(config(addresses))
                status, _, body = lb.admin("POST", "/reload")
                reload_answers.append((status, body))
        for t in threads:
            t.join(timeout=120)
        self.assertFalse(any(t.is_alive() for t in threads), "load did not finish")
        self.assertEqual(done[0], total)
        self.assertEqual(failures, [], "%d of %d requests failed" % (len(failures), total))
        for status, body in reload_answers:
            self.assertEqual((status, body), (200, b"ok: configuration reloaded\n"))
        self.assertTrue(wait_until(
            lambda: lb.metric("lb_config_reloads_total", result="success") == 20, timeout=5),
            lb.metrics_text())
        self.assertEqual(lb.metric("lb_config_reloads_total", result="failure"), 0)
        # The backend the reloads added and removed took its share while it was in.
        self.assertGreater(len([e for e in o3.log_entries() if e["target"] == "/"]), 0)
        # The WebSocket opened before the reloads still echoes.
        ws.send(b"still there?")
        self.assertEqual(ws.recv_until(b"?", timeout=5), b"still there?")

    def test_unhealthy_backend_stays_out_after_reload(self):
        o1, o2 = self.origin("o1"), self.origin("o2")
        lb = self.lb(config([o1.addr, o2.addr]))
        port = lb.port()
        self.wait_serving(port, ["o1", "o2"])
        o2.set_healthy(False)
        self.assertTrue(wait_until(
            lambda: lb.metric("lb_backend_healthy", pool="web", backend=o2.addr) == 0, timeout=5))
        before = len([e for e in o2.log_entries() if e["target"] == "/"])
        # The check itself changes (its interval): checking starts over from
        # the health lb has now, not from "healthy" and not from scratch.
        lb.write_config(config([o1.addr, o2.addr], retries=3,
                               check=CHECK.replace("interval: 300ms", "interval: 400ms")))
        status, _, body = lb.admin("POST", "/reload")
        self.assertEqual(status, 200, body)
        answers = [answered_by(port) for _ in range(50)]
        self.assertEqual(answers, [(200, "o1")] * 50)
        self.assertEqual(len([e for e in o2.log_entries() if e["target"] == "/"]), before,
                         "the unhealthy backend got requests after the reload")
        self.assertEqual(lb.metric("lb_backend_healthy", pool="web", backend=o2.addr), 0)
        # Its checks go on from where they were: healthy again after 2 passes.
        o2.set_healthy(True)
        self.assertTrue(wait_until(
            lambda: lb.metric("lb_backend_healthy", pool="web", backend=o2.addr) == 1, timeout=5))

    def test_added_backend_is_checked_at_once(self):
        # With a 60 s interval, a first check spread over interval/10 could
        # come 6 s after the reload; a backend the reload adds is checked at
        # once, so it serves within a round trip or two.
        slow_check = CHECK.replace("interval: 300ms", "interval: 60s")
        o1, o2 = self.origin("o1"), self.origin("o2")
        lb = self.lb(config([o1.addr], check=slow_check))
        port = lb.port()
        self.assertTrue(wait_until(
            lambda: lb.metric("lb_backend_healthy", pool="web", backend=o1.addr) == 1, timeout=3))
        lb.write_config(config([o1.addr, o2.addr], check=slow_check))
        status, _, body = lb.admin("POST", "/reload")
        self.assertEqual(status, 200, body)
        reloaded = time.monotonic()
        self.assertTrue(wait_until(
            lambda: lb.metric("lb_backend_healthy", pool="web", backend=o2.addr) == 1,
            timeout=5, interval=0.02))
        self.assertLess(time.monotonic() - reloaded, 1.0,
                        "the added backend waited for a scheduled check")
        self.wait_serving(port, ["o1", "o2"], timeout=2)

    def test_pooled_connections_survive_reload(self):
        o1 = self.origin("o1")
        lb = self.lb(config([o1.addr]))
        port = lb.port()
        self.wait_serving(port, ["o1"])
        with KeepAliveClient(port) as client:
            for _ in range(10):
                self.assertEqual(answered_by(port, client=client), (200, "o1"))
            before = {e["conn_id"] for e in o1.log_entries() if e["target"] == "/"}
            lb.write_config(config([o1.addr], retries=3))
            status, _, body = lb.admin("POST", "/reload")
            self.assertEqual(status, 200, body)
            for _ in range(10):
                self.assertEqual(answered_by(port, client=client), (200, "o1"))
        after = [e["conn_id"] for e in o1.log_entries() if e["target"] == "/"][-10:]
        self.assertLessEqual(set(after), before,
                             "requests after the reload went over new upstream connections")

    def test_invalid_config_is_refused_and_the_old_one_serves(self):
        o1 = self.origin("o1")
        lb = self.lb(config([o1.addr]))
        port = lb.port()
        self.wait_serving(port, ["o1"])
        lb.write_config(config([o1.addr]).replace("retries: 2", "retries: many"))
        status, _, body = lb.admin("POST", "/reload")
        self.assertEqual(status, 400, body)
        self.assertIn("lb.yaml:", body.decode())
        self.assertIn("retries: expected", body.decode())
        lb.signal(signal.SIGHUP)
        self.assertTrue(wait_until(
            lambda: lb.stderr_text().count("reload refused, still serving the previous config") == 2,
            timeout=5), lb.stderr_text())
        self.assertEqual([answered_by(port) for _ in range(20)], [(200, "o1")] * 20)
        self.assertEqual(lb.metric("lb_config_reloads_total", result="failure"), 2)
        self.assertEqual(lb.metric("lb_config_reloads_total", result="success"), 0)

    def test_listeners_and_routes_change(self):
        o1, o2 = self.origin("o1"), self.origin("o2")
        lb = self.lb(config([o1.addr]))
        port = lb.port()
        self.wait_serving(port, ["o1"])
        client = KeepAliveClient(port)
        self.addCleanup(client.close)
        self.assertEqual(answered_by(port, "/v2/x", client), (200, "o1"))

        extra = unused_port()
        routes = "[ { match: { path_prefix: /v2/ }, pool: api }, { pool: web } ]"
        lb.write_config(config([o1.addr], extra_listener=extra, api=o2.addr, routes=routes))
        status, _, body = lb.admin("POST", "/reload")
        self.assertEqual(status, 200, body)
        # The kept listener kept its port; the connection opened before sees the new routes.
        self.assertEqual(answered_by(port, "/v2/x", client), (200, "o2"))
        self.assertEqual(answered_by(port, "/"), (200, "o1"))
        self.assertEqual(answered_by(extra, "/"), (200, "o1"))

        lb.write_config(config([o1.addr]))
        status, _, body = lb.admin("POST", "/reload")
        self.assertEqual(status, 200, body)

        def refused():
            try:
                socket.create_connection(("127.0.0.1", extra), timeout=2).close()
                return False
            except ConnectionRefusedError:
                return True
        self.assertTrue(wait_until(refused, timeout=5), "the removed listener still accepts")
        self.assertEqual(answered_by(port, "/v2/x", client), (200, "o1"))

    def test_request_id_name_change_applies_to_open_connections(self):
        o1 = self.origin("o1")
        lb = self.lb(config([o1.addr]))
        port = lb.port()
        self.wait_serving(port, ["o1"])

        def ids(client, headers):
            status, _, body = client.request("GET", "/headers", headers=headers)
            self.assertEqual(status, 200, body)
            seen = json.loads(body)["headers"]
            return ([v for k, v in seen if k.lower() == "x-request-id"],
                    [v for k, v in seen if k.lower() == "x-trace-id"])

        with KeepAliveClient(port) as client:
            old, trace = ids(client, {"X-Trace-Id": "t-1"})
            self.assertEqual((len(old), trace), (1, ["t-1"]))  # generated under the default name
            lb.write_config(config([o1.addr],
                                   listener_headers="    headers: { request_id: X-Trace-Id }\n"))
            status, _, body = lb.admin("POST", "/reload")
            self.assertEqual(status, 200, body)
            for _ in range(3):  # the first may still be routed by the old snapshot's parser
                old, trace = ids(client, {"X-Trace-Id": "t-2"})
            self.assertEqual((old, trace), ([], ["t-2"]))
            old, trace = ids(client, {})
            self.assertEqual(old, [])
            self.assertEqual(len(trace), 1, "no request id generated under the new name")


if __name__ == "__main__":
    harness.main()
