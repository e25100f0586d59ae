#!/usr/bin/env python3
"""The worker's event loop under the conditions that break event loops
(DESIGN "lb's own event loop"):

- a backend that closes its idle keep-alive connections every second while
  requests flow: lb learns of each close from the event, and a request that
  crosses one is replayed when it is idempotent, so no GET fails; a POST is
  never sent twice (it may fail with a 502: lb cannot know it was not
  processed);
- 2,000 client connections opened and closed in every way (whole requests,
  half a head, a reset, nothing at all) while requests flow leave no file
  descriptor behind;
- a client that stops reading a 50 MiB response holds lb's memory: lb stops
  reading from the backend (RSS grows less than 8 MiB), and serves others
  meanwhile.
"""

import os
import socket
import struct
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import wait_until  # noqa: E402


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


class BackendReapsIdleConnections(unittest.TestCase):
    def test_gets_never_fail_and_posts_never_repeat(self):
        origins = [harness.Origin("reaper-%d" % i, extra_args=["--close-idle-every", "1"])
                   for i in range(2)]
        try:
            with harness.Lb(harness.one_pool_config([o.addr for o in origins])) as lb:
                port = lb.port()
                stop = time.monotonic() + 6.0
                lock = threading.Lock()
                gets = {"ok": 0, "failed": []}
                posts = {"sent": 0, "ok": 0, "502": 0, "other": []}

                def client(n):
                    c = harness.KeepAliveClient(port, timeout=10)
                    i = 0
                    try:
                        while time.monotonic() < stop:
                            i += 1
                            if i % 5 == 0:
                                body = ("post %d-%d" % (n, i)).encode()
                                with lock:
                                    posts["sent"] += 1
                                try:
                                    status, _, data = c.request("POST", "/echo", body=body)
                                except OSError as e:
                                    status, data = repr(e), b""
                                with lock:
                                    if status == 200 and data == body:
                                        posts["ok"] += 1
                                    elif status == 502:
                                        posts["502"] += 1
                                    else:
                                        posts["other"].append(status)
                                continue
                            try:
                                status, _, _ = c.request("GET", "/item/%d/%d" % (n, i))
                            except OSError as e:
                                status = repr(e)
                            with lock:
                                if status == 200:
                                    gets["ok"] += 1
                                else:
                                    gets["failed"].append(status)
                            # Some pauses: connections go idle in lb's pool
                            # and the origin reaps them.
                            if i % 7 == 0:
                                time.sleep(0.01)
                    finally:
                        c.close()

                threads = [threading.Thread(target=client, args=(n,)) for n in range(6)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(30)
                self.assertEqual(gets["failed"], [], "GETs that failed")
                self.assertGreater(gets["ok"], 300)
                self.assertEqual(posts["other"], [], "POSTs answered neither 200 nor 502")
                self.assertGreater(posts["ok"], 50)
                # Every POST body reached an origin at most once.
                seen = {}
                for o in origins:
                    for e in o.log_entries():
                        if e["method"] == "POST":
                            seen[e["body_sha256"]] = seen.get(e["body_sha256"], 0) + 1
                repeated = {h: n for h, n in seen.items() if n > 1}
                self.assertEqual(repeated, {}, "POST bodies sent twice")
                self.assertGreaterEqual(len(seen), posts["ok"])
                # The origins did reap: lb opened connections again and again.
                opened = sum(o.stats()["connections"] for o in origins)
                self.assertGreater(opened, 12, "the origins closed nothing: the test tests nothing")
                self.assertTrue(lb.running())
        finally:
            for o in origins:
                o.cleanup()


class NoDescriptorLeftBehind(unittest.TestCase):
    def test_two_thousand_connections_in_every_way(self):
        with harness.Origin("fds") as origin:
            # Pooled backend connections close after 1 s idle: the count
            # can come back to where it started.
            extra = "    timeouts: { idle: 1s }\n"
            with harness.Lb(harness.one_pool_config(origin.addr, pool_extra=extra)) as lb:
                port = lb.port()
                pid = lb.proc.pid
                self.assertEqual(harness.http(port, "GET", "/")[0], 200)
                time.sleep(2.5)  # the warm-up's pooled connection times out
                start = fd_count(pid)

                stop = threading.Event()
                errors = []

                def load():
                    c = harness.KeepAliveClient(port, timeout=10)
                    try:
                        while not stop.is_set():
                            status, _, _ = c.request("GET", "/")
                            if status != 200:
                                errors.append(status)
                    except OSError as e:
                        errors.append(repr(e))
                    finally:
                        c.close()

                loaders = [threading.Thread(target=load) for _ in range(2)]
                for t in loaders:
                    t.start()
                try:
                    for i in range(2000):
                        s = socket.create_connection(("127.0.0.1", port), timeout=10)
                        kind = i % 5
                        if kind == 0:
                            pass  # connect, close
                        elif kind == 1:  # a whole request and its answer
                            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                            data = b""
                            while b"\r\n\r\n" not in data:
                                chunk = s.recv(4096)
                                if not chunk:
                                    break
                                data += chunk
                            self.assertTrue(data.startswith(b"HTTP/1.1 200"), data[:40])
                        elif kind == 2:  # half a head
                            s.sendall(b"GET / HTTP/1.1\r\nHo")
                        elif kind == 3:  # a request, then a reset before the answer
                            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                         struct.pack("ii", 1, 0))
                        else:  # a request and a half close
                            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                            s.shutdown(socket.SHUT_WR)
                        s.close()
                finally:
                    stop.set()
                    for t in loaders:
                        t.join(30)
                self.assertEqual(errors, [])
                self.assertTrue(
                    wait_until(lambda: fd_count(pid) <= start, timeout=15),
                    "lb holds %d descriptors, %d before" % (fd_count(pid), start))
                self.assertEqual(harness.http(port, "GET", "/")[0], 200)


class ClientThatStopsReading(unittest.TestCase):
    def test_memory_stays_bounded(self):
        size = 50 * 1024 * 1024
        with harness.Origin("big", log=False) as origin:
            with harness.Lb(harness.one_pool_config(origin.addr)) as lb:
                port = lb.port()
                pid = lb.proc.pid
                self.assertEqual(harness.http(port, "GET", "/")[0], 200)
                before = harness.rss_bytes(pid)
                s = socket.create_connection(("127.0.0.1", port), timeout=10)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
                try:
                    s.sendall(b"GET /bytes/%d HTTP/1.1\r\nHost: x\r\n\r\n" % size)
                    got = 0
                    while got < 256 * 1024:
                        chunk = s.recv(65536)
                        self.assertTrue(chunk, "lb closed the connection")
                        got += len(chunk)
                    # Now the client reads nothing for 3 s.
                    peak = before
                    for _ in range(30):
                        time.sleep(0.1)
                        peak = max(peak, harness.rss_bytes(pid))
                    self.assertLess(peak - before, 8 * 1024 * 1024,
                                    "RSS %d -> %d bytes" % (before, peak))
                    # Others are served meanwhile.
                    self.assertEqual(harness.http(port, "GET", "/")[0], 200)
                    # And the response is still whole when the client reads on.
                    s.settimeout(30)
                    while got < size:
                        chunk = s.recv(1 << 20)
                        if not chunk:
                            break
                        got += len(chunk)
                    self.assertGreaterEqual(got, size)
                finally:
                    s.close()


if __name__ == "__main__":
    unittest.main()
