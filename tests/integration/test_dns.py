#!/usr/bin/env python3
"""Backends found by DNS (SPEC: `dns`, `dns:` and `srv:` backends, "Balancing
and failover semantics" 3), with dnsmasq on a loopback port as the real DNS
server and origins on 127.0.0.2-4 (all of 127/8 is loopback on Linux).

- `dns: app.test:PORT`: every A record is a backend. When dnsmasq is
  restarted with another set (TTL 1 s), the new address takes traffic and the
  vanished one stops getting any within TTL + 2 s, while a paced load of GETs
  runs without a single failure; the new address is health-checked first.
  Requests in flight to the vanished address finish (it is drained). When
  dnsmasq stops answering (SIGSTOP), the last set keeps serving. An address
  that vanishes and comes back is a new backend: checked again before it
  takes traffic, even while an idle client connection still holds the
  snapshot that had it.
- `srv: _http._tcp.app.test`: targets of weights 1 and 3 (priority 10) split
  25/75 +-5%; the priority-20 target serves nothing while one of them is up,
  everything once both are down (kill -9), and traffic returns when they are
  back.
- the addresses found are in /status and logged.
"""

import os
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from dns_server import Dnsmasq  # noqa: E402
from harness import KeepAliveClient, http, port_free_on, wait_until  # noqa: E402

CHECK = "{ path: /healthz, interval: 300ms, timeout: 200ms, healthy_threshold: 1, unhealthy_threshold: 1 }"


def config(dns_port, backend, check=CHECK):
    return f"""
workers: 2
access_log: {{ path: "off" }}
admin: {{ listen: 127.0.0.1:0 }}
dns:
  servers: ["127.0.0.1:{dns_port}"]
  min_ttl: 1s
  max_ttl: 5s
listeners:
  - name: public
    listen: 127.0.0.1:0
    routes: [ {{ pool: web }} ]
pools:
  web:
    retries: 3
    health_check: {check}
    backends:
      - {backend}
"""


def who(port):
    status, _, body = http(port, "GET", "/")
    return status, body.decode().strip().replace("Hello from ", "")


class PacedLoad:
    """GETs every 10 ms on a new connection from a thread, until stopped (at most 60 s)."""

    def __init__(self, port):
        self.port, self.answers, self.failures = port, [], []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        deadline = time.time() + 60
        while not self.stopping.is_set() and time.time() < deadline:
            try:
                status, name = who(self.port)
                (self.answers if status == 200 else self.failures).append((time.time(), status, name))
            except Exception as e:  # noqa: BLE001 - any error is a failed request
                self.failures.append((time.time(), repr(e)))
            time.sleep(0.01)

    def stop(self):
        self.stopping.set()
        self.thread.join(timeout=10)


class Dns(harness.TestCase):
    def test_dns_backend_follows_its_records(self):
        hosts = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
        port = port_free_on(hosts)
        o2, o3, o4 = (self.origin("o%s" % h[-1], listen="%s:%d" % (h, port)) for h in hosts)
        dns = Dnsmasq({"app.test": ["127.0.0.2", "127.0.0.3"]}, ttl=1)
        dns.start()
        self.addCleanup(dns.cleanup)
        lb = self.lb(config(dns.port, "dns: app.test:%d" % port))
        lport = lb.port()
        seen = set()
        self.assertTrue(wait_until(lambda: seen.add(who(lport)) or {(200, "o2"), (200, "o3")} <= seen,
                                   timeout=10), seen)
        self.assertIn("dns: dns:app.test:%d: 127.0.0.2:%d, 127.0.0.3:%d" % (port, port, port),
                      lb.stderr_text())
        backends = {b["address"] for p in lb.status_json()["pools"] if p["name"] == "web"
                    for b in p["backends"]}
        self.assertEqual(backends, {"127.0.0.2:%d" % port, "127.0.0.3:%d" % port})

        load = PacedLoad(lport)
        self.addCleanup(load.stop)
        # Slow requests in flight when o2's address vanishes: they finish.
        slow = []
        slow_threads = [threading.Thread(
            target=lambda: slow.append(http(lport, "GET", "/?delay=2500", timeout=15)), daemon=True)
            for _ in range(4)]
        for t in slow_threads:
            t.start()
        time.sleep(1)
        changed = time.time()
        dns.restart(a_records={"app.test": ["127.0.0.3", "127.0.0.4"]})
        for t in slow_threads:
            t.join(timeout=15)
        self.assertEqual(sorted(r[0] for r in slow), [200] * 4, slow)
        self.assertIn(b"Hello from o2\n", [r[2] for r in slow], "no slow request went to o2")

        def moved():
            recent = [a for a in load.answers if a[0] > time.time() - 0.5]
            names = {a[2] for a in recent}
            return len(recent) > 10 and names == {"o3", "o4"}
        self.assertTrue(wait_until(moved, timeout=10), "traffic did not move to the new set")
        # Within TTL (1 s) + 2 s: the new address took traffic, the vanished one got its last.
        first_o4 = min(a[0] for a in load.answers if a[2] == "o4")
        gone = max(a[0] for a in load.answers if a[2] == "o2")
        self.assertLess(first_o4 - changed, 1 + 2)
        self.assertLess(gone - changed, 1 + 2)
        # New addresses are checked before they take traffic.
        checks = [e for e in o4.log_entries() if e["target"] == "/healthz"]
        self.assertTrue(checks, "o4 got traffic without a health check")

        # The DNS server stops answering: the last set keeps serving.
        dns.stop(freeze=True)
        time.sleep(3)
        recent = [a for a in load.answers if a[0] > time.time() - 1]
        self.assertEqual({a[2] for a in recent}, {"o3", "o4"})
        self.assertIn("keeping the last", lb.stderr_text())
        dns.resume()
        load.stop()
        self.assertEqual(load.failures, [], "failed while the records changed")
        self.assertGreater(len(load.answers), 300)
        self.assertGreater(first_o4, changed)

    def test_address_that_comes_back_is_checked_again(self):
        hosts = ["127.0.0.2", "127.0.0.3"]
        port = port_free_on(hosts)
        o2, o3 = (self.origin("o%s" % h[-1], listen="%s:%d" % (h, port)) for h in hosts)
        dns = Dnsmasq({"app.test": hosts}, ttl=1)
        dns.start()
        self.addCleanup(dns.cleanup)
        # Each check takes 400 ms at the origin: a backend that serves only
        # once checked gets no request in the first 400 ms after it appears.
        lb = self.lb(config(dns.port, "dns: app.test:%d" % port, check="{ path: \"/healthz?delay=400\", "
                            "interval: 1s, timeout: 900ms, healthy_threshold: 1, unhealthy_threshold: 1 }"))
        lport = lb.port()
        seen = set()
        self.assertTrue(wait_until(lambda: seen.add(who(lport)) or {(200, "o2"), (200, "o3")} <= seen,
                                   timeout=10), seen)
        o2_addr = "127.0.0.2:%d" % port

        def listed():
            return {b["address"] for p in lb.status_json()["pools"] for b in p["backends"]}
        # An idle keep-alive client keeps the snapshot it last used, o2 in it.
        with KeepAliveClient(lport) as idle:
            self.assertEqual(idle.request("GET", "/idle")[0], 200)
            dns.restart(a_records={"app.test": ["127.0.0.3"]})
            self.assertTrue(wait_until(lambda: o2_addr not in listed(), timeout=5), listed())
            load = PacedLoad(lport)
            self.addCleanup(load.stop)
            back = time.time()
            dns.restart(a_records={"app.test": hosts})
            self.assertTrue(wait_until(lambda: any(a[2] == "o2" and a[0] > back for a in load.answers),
                                       timeout=8), "o2 never served again")
            load.stop()
        self.assertEqual(load.failures, [])
        after = [e for e in o2.log_entries() if e["time"] > back]
        checks = [e["time"] for e in after if e["target"].startswith("/healthz")]
        served = [e["time"] for e in after if e["target"] == "/"]
        self.assertTrue(checks and served, after)
        self.assertGreaterEqual(min(served), min(checks) + 0.35,
                                "o2 took traffic %.0f ms after its first check began (it takes 400 ms): "
                                "it came back with its old health" % (1000 * (min(served) - min(checks))))

    def test_refused_reload_leaves_discovery_as_it_was(self):
        hosts = ["127.0.0.2", "127.0.0.3"]
        port = port_free_on(hosts)
        o2, o3 = (self.origin("o%s" % h[-1], listen="%s:%d" % (h, port)) for h in hosts)
        dns = Dnsmasq({"app.test": ["127.0.0.2"], "other.test": ["127.0.0.3"]}, ttl=1)
        dns.start()
        self.addCleanup(dns.cleanup)
        lb = self.lb(config(dns.port, "dns: app.test:%d" % port))
        lport = lb.port()
        self.assertTrue(wait_until(lambda: who(lport) == (200, "o2"), timeout=10))
        # A reload that changes the DNS name but cannot be applied (its new
        # listener's port is taken) changes nothing, the resolver included.
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        self.addCleanup(busy.close)
        bad = config(dns.port, "dns: other.test:%d" % port).replace(
            "pools:", "  - name: extra\n    listen: 127.0.0.1:%d\n    routes: [ { pool: web } ]\npools:"
            % busy.getsockname()[1])
        lb.write_config(bad)
        status, _, body = lb.admin("POST", "/reload")
        self.assertEqual(status, 400, body)
        self.assertIn(b"cannot listen on", body)
        self.assertEqual([who(lport) for _ in range(10)], [(200, "o2")] * 10)
        # app.test still follows its records.
        dns.restart(a_records={"app.test": ["127.0.0.3"], "other.test": ["127.0.0.3"]})
        self.assertTrue(wait_until(lambda: who(lport) == (200, "o3"), timeout=5),
                        lb.stderr_text())

    def test_srv_weights_and_priorities(self):
        o1, o2, o3 = (self.origin(n) for n in ("o1", "o2", "o3"))
        srv = "_http._tcp.app.test"
        dns = Dnsmasq({"a.test": ["127.0.0.1"], "b.test": ["127.0.0.1"], "c.test": ["127.0.0.1"]},
                      [(srv, "a.test", o1.port, 10, 1), (srv, "b.test", o2.port, 10, 3),
                       (srv, "c.test", o3.port, 20, 1)], ttl=5)
        dns.start()
        self.addCleanup(dns.cleanup)
        lb = self.lb(config(dns.port, "srv: %s" % srv))
        lport = lb.port()
        self.assertTrue(wait_until(lambda: who(lport) == (200, "o2"), timeout=10))
        time.sleep(0.5)  # every target has passed its first check
        counts = {}
        for _ in range(400):
            status, name = who(lport)
            self.assertEqual(status, 200)
            counts[name] = counts.get(name, 0) + 1
        self.assertNotIn("o3", counts, counts)
        self.assertAlmostEqual(counts.get("o1", 0) / 400, 0.25, delta=0.05, msg=counts)
        self.assertAlmostEqual(counts.get("o2", 0) / 400, 0.75, delta=0.05, msg=counts)

        # Both priority-10 targets die: the priority-20 one takes everything.
        o1.kill()
        o2.kill()
        answers = [who(lport) for _ in range(50)]
        self.assertEqual(answers, [(200, "o3")] * 50)
        # They come back: traffic returns to them.
        o1.restart()
        o2.restart()
        self.assertTrue(wait_until(lambda: who(lport)[1] in ("o1", "o2"), timeout=40))


if __name__ == "__main__":
    harness.main()
