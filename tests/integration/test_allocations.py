#!/usr/bin/env python3
"""Steady-state keep-alive forwarding allocates nothing on the heap per request.

lb runs with the allocation-counting shim (LD_PRELOAD=$LB_ALLOC_COUNTER), which
writes its count to $LB_ALLOC_COUNT_FILE on SIGUSR2. After a warm-up of 2,000
keep-alive requests over 4 connections, 10,000 more requests over the same
connections must cost (almost) no allocations: fewer than 0.01 per request.

Origin: the fast C++ origin ($FAST_ORIGIN_BIN) if available, else origin.py.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import wait_until  # noqa: E402

CONNECTIONS = 4
WARMUP = 2000
MEASURED = 10000


def read_text(path):
    with open(path) as f:
        return f.read()


class Client:
    """A minimal pipelining-free keep-alive client on a raw socket (cheap enough in
    Python to push thousands of requests per second)."""

    REQUEST = b"GET / HTTP/1.1\r\nHost: alloc.test\r\n\r\n"

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def one(self):
        """Sends one GET, reads its response; returns (status, body)."""
        self.sock.sendall(self.REQUEST)
        while b"\r\n\r\n" not in self.buf:
            b = self.sock.recv(65536)
            if not b:
                raise ConnectionError("lb closed the connection")
            self.buf += b
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        m = re.search(rb"\r\ncontent-length:\s*(\d+)", head, re.I)
        if not m:
            raise AssertionError("response without Content-Length: %r" % head)
        n = int(m.group(1))
        while len(rest) < n:
            b = self.sock.recv(65536)
            if not b:
                raise ConnectionError("lb closed the connection mid-body")
            rest += b
        self.buf = rest[n:]
        return int(head.split(b" ", 2)[1]), rest[:n]

    def close(self):
        self.sock.close()


@unittest.skipIf(os.environ.get("LB_SANITIZED") == "1",
                 "AddressSanitizer replaces malloc: allocations are counted in the Release build")
class Allocations(harness.TestCase):
    def setUp(self):
        shim = os.environ.get("LB_ALLOC_COUNTER")
        if not shim or not os.path.exists(shim):
            raise unittest.SkipTest("LB_ALLOC_COUNTER (liballoc_counter.so) not set")
        self.shim = os.path.abspath(shim)
        fast = os.environ.get("FAST_ORIGIN_BIN")
        if fast and os.path.exists(fast):
            o = harness.FastOrigin(fast)
            self.addCleanup(o.cleanup)
            self.origin_addr, self.origin_body = o.addr, o.body
        else:
            o = self.origin("alloc-origin", log=False)
            self.origin_addr, self.origin_body = o.addr, b"Hello from alloc-origin\n"
        d = tempfile.mkdtemp(prefix="lb-alloc-")
        self.count_file = os.path.join(d, "count")
        self.addCleanup(lambda: (os.path.exists(self.count_file) and os.unlink(self.count_file),
                                 os.rmdir(d)))

    def read_count(self, lb):
        """SIGUSR2 to lb, then the count written by the shim (waits for a new write)."""
        try:
            before = os.stat(self.count_file).st_mtime_ns
            old = read_text(self.count_file)
        except FileNotFoundError:
            before, old = None, None
        # Remove the file so a fresh write is unambiguous.
        if old is not None:
            os.unlink(self.count_file)
        lb.signal(signal.SIGUSR2)
        ok = wait_until(lambda: read_text(self.count_file).endswith("\n"), 5, 0.02)
        self.assertTrue(ok, "the allocation shim wrote no count on SIGUSR2 "
                            "(is LD_PRELOAD working?) previous=%r mtime=%r" % (old, before))
        return int(read_text(self.count_file).strip())

    def run_requests(self, clients, total):
        per = total // len(clients)
        errors = []

        def work(c):
            try:
                for _ in range(per):
                    status, body = c.one()
                    if status != 200 or body != self.origin_body:
                        errors.append((status, body[:100]))
                        return
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))
        threads = [threading.Thread(target=work, args=(c,), daemon=True) for c in clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        self.assertFalse(any(t.is_alive() for t in threads), "requests did not finish")
        self.assertEqual(errors, [])

    def test_zero_allocations_per_request(self):
        lb = self.lb(harness.one_pool_config(self.origin_addr),
                     env={"LD_PRELOAD": self.shim, "LB_ALLOC_COUNT_FILE": self.count_file})
        clients = [Client(lb.port()) for _ in range(CONNECTIONS)]
        self.addCleanup(lambda: [c.close() for c in clients])

        t0 = time.monotonic()
        self.run_requests(clients, WARMUP)
        before = self.read_count(lb)
        self.run_requests(clients, MEASURED)
        after = self.read_count(lb)
        elapsed = time.monotonic() - t0
        per_request = (after - before) / MEASURED
        print("\nallocations: before=%d after=%d -> %d over %d requests (%.4f per request), "
              "%.1f s" % (before, after, after - before, MEASURED, per_request, elapsed),
              file=sys.stderr)
        self.assertGreater(before, 0, "the shim counted nothing: LD_PRELOAD not in effect?")
        self.assertLess(per_request, 0.01,
                        "lb allocates on the heap per keep-alive request: %d allocations "
                        "for %d requests" % (after - before, MEASURED))


if __name__ == "__main__":
    harness.main()
