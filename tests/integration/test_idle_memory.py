#!/usr/bin/env python3
"""What an idle keep-alive client connection costs lb (DESIGN "A connection is
small; a request borrows what it needs").

- 2,000 client connections on 127.0.0.1, one GET each (a fast origin behind),
  then idle: lb's resident memory grows by at most 1,500 bytes per connection
  (bench/run.sh --scenarios idle measures ~500; a connection that kept its
  request state or a read buffer while idle costs 16-19 KB);
- after they close, a second wave of 2,000 grows lb no more than 300 bytes
  per connection beyond the first (nothing per connection is left behind);
- every connection got its 200 and was still open when the memory was read.
Skipped under the sanitizers (their allocator pads every object).
"""

import os
import resource
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import wait_until  # noqa: E402

CONNECTIONS = 2000
REQUEST = b"GET / HTTP/1.1\r\nHost: idle.test\r\n\r\n"


def open_idle(port, n):
    """n connections, one keep-alive GET answered on each -> the sockets."""
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(REQUEST)
        data = b""
        while b"\r\n\r\n" not in data or not data.endswith(b"Hello from fast-origin\n"):
            chunk = s.recv(4096)
            if not chunk:
                raise AssertionError("lb closed a connection before answering: %r" % data[:80])
            data += chunk
        if not data.startswith(b"HTTP/1.1 200"):
            raise AssertionError("not a 200: %r" % data[:80])
        socks.append(s)
    return socks


def still_open(socks):
    """Every socket still open (nothing to read, no EOF)."""
    for s in socks:
        s.setblocking(False)
        try:
            if s.recv(1) == b"":
                return False
        except BlockingIOError:
            pass
        finally:
            s.setblocking(True)
    return True


class IdleMemory(harness.TestCase):
    def setUp(self):
        super().setUp()
        # The client's own descriptors: 2,000 sockets at once.
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = CONNECTIONS + 256
        if soft < want:
            if hard != resource.RLIM_INFINITY and hard < want:
                self.skipTest("RLIMIT_NOFILE hard limit %d is below %d" % (hard, want))
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        if os.environ.get("LB_SANITIZED", "").lower() in ("1", "true", "on", "yes"):
            self.skipTest("the sanitizers' allocator pads every object")
        binary = os.environ.get("FAST_ORIGIN_BIN")
        if not binary:
            self.skipTest("FAST_ORIGIN_BIN is not set (ctest sets it)")
        self.origin_proc = harness.FastOrigin(binary)
        self.addCleanup(self.origin_proc.cleanup)

    def test_idle_connections_cost_little(self):
        lb = self.lb(harness.one_pool_config(self.origin_proc.addr))
        open_idle(lb.port(), 1)[0].close()  # warm: the pools and the first buffers
        time.sleep(1.5)
        base = harness.rss_bytes(lb.pid)
        peaks = []
        for wave in range(2):
            socks = open_idle(lb.port(), CONNECTIONS)
            try:
                time.sleep(2.5)  # lb gives unused buffers back every second
                grown = harness.rss_bytes(lb.pid) - base
                self.assertTrue(still_open(socks), "lb closed idle connections")
            finally:
                for s in socks:
                    s.close()
            per_connection = grown / CONNECTIONS
            sys.stderr.write("    [idle] wave %d: %d connections idle, RSS +%d bytes, %.0f bytes "
                             "per connection\n" % (wave + 1, CONNECTIONS, grown, per_connection))
            peaks.append(grown)
            self.assertLessEqual(per_connection, 1500,
                                 "an idle keep-alive connection costs %.0f bytes" % per_connection)
            wait_until(lambda: lb.metric("lb_downstream_connections") == 0, timeout=10)
        self.assertLessEqual(peaks[1], peaks[0] + 600 * 1024,
                             "a second wave grew lb more than the first: %d then %d bytes" %
                             (peaks[0], peaks[1]))


if __name__ == "__main__":
    harness.main()
