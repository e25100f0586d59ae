#!/usr/bin/env python3
"""Long response bodies by splice: a body framed by Content-Length with 16 KiB
or more still to come after the response's first read goes from the backend's
socket to the client's through a pipe, never copied through lb.

- sizes around that threshold and far beyond it (16 KiB - 1 .. 50 MiB) arrive
  whole, one after the other on one keep-alive client connection, each
  followed by a small request on it; one backend connection serves them all
  (it stays reusable after a spliced body);
- while a client holds a paused 50 MiB download, lb holds a pipe for it (the
  body goes by splice), serves others meanwhile and the body arrives whole
  when the client reads on; to an HTTPS client the same download goes without
  a pipe (TLS is copied) and arrives whole too;
- a backend that closes mid-body (/truncate/N): the client gets the backend's
  bytes and then the connection closes (no hang); the next request is
  answered;
- clients that go away mid-body leave no descriptor behind (pipes included).
"""

import hashlib
import os
import socket
import ssl
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import KeepAliveClient, wait_until  # noqa: E402

KiB = 1024
MiB = 1024 * KiB


def pipes_of(pid):
    """The pipes lb holds, by descriptor -> pipe inode."""
    found = {}
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            target = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        if target.startswith("pipe:"):
            found[fd] = target
    return found


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def read_head(s):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            raise AssertionError("closed before the head: %r" % data)
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head.decode("latin-1"), rest


class Splice(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="lb-splice-")
        cls.ca, cls.cert, cls.key = harness.make_ca_and_leaf(cls.dir, name="lb.test")
        cls.origin = harness.Origin("big", log=False)
        cls.lb = harness.Lb(f"""
workers: 1
access_log: {{ path: "off" }}
admin: {{ listen: 127.0.0.1:0 }}
listeners:
  - name: public
    listen: 127.0.0.1:0
    routes: [ {{ pool: web }} ]
  - name: secure
    listen: 127.0.0.1:0
    tls: {{ certificates: [ {{ cert: {cls.cert}, key: {cls.key} }} ] }}
    routes: [ {{ pool: web }} ]
pools:
  web:
    backends: [ {{ address: "{cls.origin.addr}" }} ]
""")
        cls.port = cls.lb.port("public")
        cls.tls_port = cls.lb.port("secure")
        cls.pid = cls.lb.proc.pid
        # lb's own pipes (signals, logs): not splice's.
        cls.own_pipes = set(pipes_of(cls.pid).values())

    def splice_pipes(self):
        """Descriptors of pipes lb opened for splice (both ends count)."""
        return sum(1 for t in pipes_of(self.pid).values() if t not in self.own_pipes)

    @classmethod
    def tearDownClass(cls):
        cls.lb.cleanup()
        cls.origin.cleanup()

    def read_rest(self, s, h, got, size):
        """Reads the body to its end; it must be /bytes/size, whole."""
        while got < size:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            h.update(chunk)
            got += len(chunk)
        self.assertEqual(got, size)
        self.assertEqual(h.hexdigest(), harness.pattern_sha256(size))

    def test_sizes_arrive_whole_and_the_connections_stay_reusable(self):
        before = self.origin.stats()["connections"]
        sizes = (16 * KiB - 1, 16 * KiB, 16 * KiB + 1, 32 * KiB + 17, 64 * KiB,
                 64 * KiB + 100, 300 * KiB + 3, MiB, 10 * MiB + 1)
        with KeepAliveClient(self.port, timeout=30) as c:
            for n in sizes:
                with self.subTest(n=n):
                    status, h, body = c.request("GET", "/bytes/%d" % n)
                    self.assertEqual(status, 200)
                    self.assertEqual(h["Content-Length"], str(n))
                    self.assertEqual(len(body), n)
                    self.assertEqual(hashlib.sha256(body).hexdigest(), harness.pattern_sha256(n))
                    status, _, body = c.request("GET", "/small")
                    self.assertEqual((status, body), (200, b"Hello from big\n"))
            self.assertEqual(c.connects, 1)
        # One backend connection carried all of them (the one lb already had,
        # or one new one).
        self.assertLessEqual(self.origin.stats()["connections"] - before, 1)

    def test_a_paused_download_holds_a_pipe_and_arrives_whole(self):
        size = 50 * MiB
        # Pipes a worker no longer needs are closed within a few seconds.
        self.assertTrue(wait_until(lambda: self.splice_pipes() == 0, timeout=10))
        s = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KiB)
        try:
            s.sendall(b"GET /bytes/%d HTTP/1.1\r\nHost: x\r\n\r\n" % size)
            head, body = read_head(s)
            self.assertIn("Content-Length: %d" % size, head)
            h = hashlib.sha256(body)
            got = len(body)
            while got < 256 * KiB:
                chunk = s.recv(65536)
                self.assertTrue(chunk)
                h.update(chunk)
                got += len(chunk)
            # The client reads nothing for a while: the rest waits in a pipe
            # (and in the sockets), not in lb's memory.
            self.assertTrue(wait_until(lambda: self.splice_pipes() >= 2, timeout=5), "no pipe")
            self.assertEqual(harness.http(self.port, "GET", "/")[0], 200)
            self.read_rest(s, h, got, size)
        finally:
            s.close()

    def test_https_clients_get_long_bodies_without_a_pipe(self):
        ctx = ssl.create_default_context(cafile=self.ca)
        size = 20 * MiB
        raw = socket.create_connection(("127.0.0.1", self.tls_port), timeout=30)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KiB)
        s = ctx.wrap_socket(raw, server_hostname="lb.test")
        try:
            self.assertTrue(wait_until(lambda: self.splice_pipes() == 0, timeout=10))
            s.sendall(b"GET /bytes/%d HTTP/1.1\r\nHost: lb.test\r\n\r\n" % size)
            head, body = read_head(s)
            self.assertIn("Content-Length: %d" % size, head)
            h = hashlib.sha256(body)
            got = len(body)
            time.sleep(0.5)  # lb has read what the sockets hold by now
            self.assertEqual(self.splice_pipes(), 0)
            self.read_rest(s, h, got, size)
        finally:
            s.close()

    def test_a_backend_that_closes_mid_body(self):
        n = 4 * MiB
        s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        try:
            s.sendall(b"GET /truncate/%d HTTP/1.1\r\nHost: x\r\n\r\n" % n)
            head, body = read_head(s)
            self.assertIn("Content-Length: %d" % n, head)
            got = bytearray(body)
            t0 = time.monotonic()
            closed = False
            while time.monotonic() - t0 < 10:
                try:
                    chunk = s.recv(1 << 20)
                except ConnectionResetError:
                    closed = True
                    break
                if not chunk:
                    closed = True
                    break
                got += chunk
            # The backend's bytes, then the end of the connection: the client
            # sees the response is short; nothing hangs.
            self.assertTrue(closed, "the connection stayed open (%d bytes)" % len(got))
            self.assertLess(len(got), n)
            self.assertGreater(len(got), 64 * KiB)  # past the first read: spliced bytes came
            self.assertEqual(bytes(got), harness.pattern_bytes(len(got)))
        finally:
            s.close()
        self.assertEqual(harness.http(self.port, "GET", "/bytes/%d" % MiB, timeout=30)[0], 200)

    def test_clients_that_go_away_mid_body_leave_no_descriptor(self):
        harness.http(self.port, "GET", "/")
        start = fd_count(self.pid)
        for i in range(40):
            s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * KiB)
            s.sendall(b"GET /bytes/%d HTTP/1.1\r\nHost: x\r\n\r\n" % (8 * MiB))
            read_head(s)
            if i % 2:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.close()
        self.assertEqual(harness.http(self.port, "GET", "/bytes/%d" % MiB, timeout=30)[0], 200)
        # Pipes an idle worker no longer needs are closed within a few seconds.
        self.assertTrue(wait_until(lambda: fd_count(self.pid) <= start, timeout=15),
                        "lb holds %d descriptors, %d before" % (fd_count(self.pid), start))


if __name__ == "__main__":
    unittest.main()
