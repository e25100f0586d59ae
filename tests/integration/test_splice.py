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

Long request bodies (uploads) the same way, client to backend:

- upload sizes around the threshold and beyond it (16 KiB - 1 .. 10 MiB) reach
  the backend whole (its sha256), each followed by a small request, on one
  keep-alive client connection and one backend connection;
- a client that pauses mid-upload: its body so far went by splice, lb holds
  no pipe while it is silent, others are served meanwhile, the body arrives
  whole when it goes on; an HTTPS upload goes without a pipe;
- a backend that answers early and closes mid-upload: the client gets that
  answer and the connection ends; a backend that closes without answering:
  502 (an upload is never sent twice), the connection ends, nothing hangs;
- clients that go away mid-upload leave no descriptor behind.

Tunnels (WebSocket): a direction that fills lb's buffer in one read goes on
by splice (20 MiB each way while the client stops reading: pipes both ways,
every byte back in order, the half close passed on); small messages never
take a pipe.

`splice: false`: a paused download, a paused upload and a bulk tunnel hold no
pipe and arrive whole; a reload to `splice: true` brings pipes back.
"""

import hashlib
import os
import socket
import ssl
import sys
import tempfile
import threading
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


def read_response(s):
    """One response with a Content-Length body -> (status, body)."""
    head, body = read_head(s)
    length = 0
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    while len(body) < length:
        chunk = s.recv(1 << 20)
        if not chunk:
            raise AssertionError("closed mid-body")
        body += chunk
    return int(head.split(" ")[1]), body[:length]


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
        cls.origin = harness.Origin("big", log=True)
        cls.lb = harness.Lb(f"""
workers: 1
access_log: {{ path: "off" }}
admin: {{ listen: 127.0.0.1:0 }}
listeners:
  - name: public
    listen: 127.0.0.1:0
    limits: {{ max_body_bytes: 100MiB }}
    routes: [ {{ pool: web }} ]
  - name: secure
    listen: 127.0.0.1:0
    tls: {{ certificates: [ {{ cert: {cls.cert}, key: {cls.key} }} ] }}
    limits: {{ max_body_bytes: 100MiB }}
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

    # ---- uploads

    def logged_body(self, target):
        """(body_len, body_sha256) the origin logged for its one request `target`."""
        entries = [e for e in self.origin.log_entries() if e["target"] == target]
        self.assertEqual(len(entries), 1, "origin requests for %s: %d" % (target, len(entries)))
        return entries[0]["body_len"], entries[0]["body_sha256"]

    def test_uploads_arrive_whole_and_the_connections_stay_reusable(self):
        before = self.origin.stats()["connections"]
        # Head and 100 body bytes first, the rest a moment later: what is left
        # after lb's first read straddles the threshold (16 KiB - 1, 16 KiB,
        # 16 KiB + 1) and goes far beyond it; 40 KiB all at once is read with
        # the head.
        sizes = ((16 * KiB + 99, True), (16 * KiB + 100, True), (16 * KiB + 101, True),
                 (40 * KiB, False), (64 * KiB, True), (300 * KiB + 3, True), (MiB, True),
                 (10 * MiB + 1, True))
        s = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        try:
            for n, pause in sizes:
                with self.subTest(n=n):
                    target = "/upload-sizes/%d" % n
                    rest = self.paused_upload(s, target, n, 100 if pause else n)
                    if pause:
                        time.sleep(0.05)
                        s.sendall(rest)
                    status, body = read_response(s)
                    self.assertEqual(status, 200)
                    self.assertEqual(self.logged_body(target), (n, harness.pattern_sha256(n)))
                    s.sendall(b"GET /small HTTP/1.1\r\nHost: x\r\n\r\n")
                    self.assertEqual(read_response(s), (200, b"Hello from big\n"))
        finally:
            s.close()
        # (One client connection carried them all: read_response would have
        # failed on a close.) One backend connection did too.
        self.assertLessEqual(self.origin.stats()["connections"] - before, 1)

    def paused_upload(self, s, target, size, first, host=b"x"):
        """Sends the head and `first` body bytes; returns the rest to send."""
        body = harness.pattern_bytes(size)
        s.sendall(b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n"
                  % (target.encode(), host, size) + body[:first])
        return body[first:]

    def test_a_paused_upload_goes_by_splice_holds_no_pipe_and_arrives_whole(self):
        size = 20 * MiB
        self.assertTrue(wait_until(lambda: self.splice_pipes() == 0, timeout=10))
        s = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        try:
            rest = self.paused_upload(s, "/upload-paused", size, 2 * MiB)
            # The body so far went on by splice (a pipe was taken) ...
            self.assertTrue(wait_until(lambda: self.splice_pipes() >= 2, timeout=5), "no pipe")
            # ... and while the client sends nothing, lb holds none: the empty
            # pipe went back to the worker, which closes unused ones.
            self.assertTrue(wait_until(lambda: self.splice_pipes() == 0, timeout=10),
                            "pipes held by a paused upload: %d" % self.splice_pipes())
            self.assertEqual(harness.http(self.port, "GET", "/")[0], 200)
            s.sendall(rest)
            head, _ = read_head(s)
            self.assertTrue(head.startswith("HTTP/1.1 200"), head)
        finally:
            s.close()
        self.assertEqual(self.logged_body("/upload-paused"), (size, harness.pattern_sha256(size)))

    def test_https_uploads_go_without_a_pipe(self):
        ctx = ssl.create_default_context(cafile=self.ca)
        size = 8 * MiB
        self.assertTrue(wait_until(lambda: self.splice_pipes() == 0, timeout=10))
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", self.tls_port), timeout=30),
                            server_hostname="lb.test")
        try:
            rest = self.paused_upload(s, "/upload-tls", size, MiB, host=b"lb.test")
            time.sleep(0.5)  # lb has sent on what it read by now
            self.assertEqual(self.splice_pipes(), 0)
            s.sendall(rest)
            head, _ = read_head(s)
            self.assertTrue(head.startswith("HTTP/1.1 200"), head)
        finally:
            s.close()
        self.assertEqual(self.logged_body("/upload-tls"), (size, harness.pattern_sha256(size)))

    def raw_backend(self, answer):
        """A one-connection backend: reads the head and 256 KiB of body, then
        sends `answer` (maybe nothing) and closes. Returns (lb port, requests seen)."""
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        seen = []

        def serve():
            while True:
                try:
                    conn, _ = srv.accept()
                except OSError:
                    return
                with conn:
                    data = b""
                    try:
                        while b"\r\n\r\n" not in data or len(data) < 256 * KiB:
                            chunk = conn.recv(65536)
                            if not chunk:
                                break
                            data += chunk
                    except OSError:
                        pass
                    if not data:
                        continue  # a health check's connection
                    seen.append(data.split(b"\r\n", 1)[0])
                    if answer:
                        try:
                            conn.sendall(answer)
                        except OSError:
                            pass
        threading.Thread(target=serve, daemon=True).start()
        self.addCleanup(srv.close)
        lb = harness.Lb(f"""
workers: 1
access_log: {{ path: "off" }}
admin: {{ listen: 127.0.0.1:0 }}
listeners:
  - name: public
    listen: 127.0.0.1:0
    limits: {{ max_body_bytes: 100MiB }}
    routes: [ {{ pool: raw }} ]
pools:
  raw:
    backends: [ {{ address: "127.0.0.1:{srv.getsockname()[1]}" }} ]
    health_check: {{ type: tcp }}
""")
        self.addCleanup(lb.cleanup)
        return lb.port("public"), seen

    def upload_until_closed(self, port, size):
        """Uploads `size` bytes as fast as lb takes them; returns what came back
        once the connection ended (b"" when nothing did)."""
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        got = b""

        def sender():
            try:
                s.sendall(self.paused_upload(s, "/up", size, 0))
            except OSError:
                pass  # (lb closed while the body was still coming)
        threading.Thread(target=sender, daemon=True).start()
        try:
            t0 = time.monotonic()
            while time.monotonic() - t0 < 10:
                try:
                    chunk = s.recv(65536)
                except (ConnectionResetError, socket.timeout):
                    break
                if not chunk:
                    break
                got += chunk
            self.assertLess(time.monotonic() - t0, 10, "the connection stayed open")
        finally:
            s.close()
        return got

    def test_a_backend_that_answers_early_and_closes_mid_upload(self):
        port, seen = self.raw_backend(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\n"
                                      b"Connection: close\r\n\r\nbig\n")
        got = self.upload_until_closed(port, 50 * MiB)
        self.assertTrue(got.startswith(b"HTTP/1.1 413 "), got[:200])
        self.assertTrue(got.endswith(b"\r\n\r\nbig\n"), got[-200:])
        self.assertEqual(seen, [b"POST /up HTTP/1.1"])

    def test_a_backend_that_closes_mid_upload_without_answering(self):
        port, seen = self.raw_backend(b"")
        # 512 KiB: the backend reads half of it and closes. Whether lb had
        # read the whole body by then (the connection may stay open) or not
        # (it reads and drops up to 1 MiB more while it closes), the client
        # gets the answer, not a reset or a hang.
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        try:
            s.sendall(self.paused_upload(s, "/up", 512 * KiB, 0))
            status, body = read_response(s)
        finally:
            s.close()
        self.assertEqual(status, 502, body)
        self.assertEqual(seen, [b"POST /up HTTP/1.1"])  # never sent twice

    def test_clients_that_go_away_mid_upload_leave_no_descriptor(self):
        harness.http(self.port, "GET", "/")
        start = fd_count(self.pid)
        for i in range(40):
            s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            self.paused_upload(s, "/upload-gone-%d" % i, 8 * MiB, 512 * KiB)
            time.sleep(0.02)
            if i % 2:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.close()
        self.assertEqual(harness.http(self.port, "GET", "/bytes/%d" % MiB, timeout=30)[0], 200)
        self.assertTrue(wait_until(lambda: fd_count(self.pid) <= start, timeout=15),
                        "lb holds %d descriptors, %d before" % (fd_count(self.pid), start))

    # ---- tunnels

    def upgrade(self):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        s.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        head, rest = read_head(s)
        self.assertTrue(head.startswith("HTTP/1.1 101"), head)
        self.assertEqual(rest, b"")
        return s

    def test_a_bulk_tunnel_goes_by_splice_both_ways(self):
        self.assertTrue(wait_until(lambda: self.splice_pipes() == 0, timeout=10))
        size = 20 * MiB
        data = harness.pattern_bytes(size)
        s = self.upgrade()
        errors = []

        def sender():
            try:
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)  # the end is passed on
            except OSError as e:
                errors.append(e)
        try:
            t = threading.Thread(target=sender, daemon=True)
            t.start()
            # The client reads nothing yet: the echo backs up in lb's pipes.
            self.assertTrue(wait_until(lambda: self.splice_pipes() >= 4, timeout=10),
                            "pipes: %d" % self.splice_pipes())
            got = bytearray()
            while True:
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                got += chunk
            t.join(10)
            self.assertEqual(errors, [])
            self.assertEqual(len(got), size)
            self.assertEqual(hashlib.sha256(got).hexdigest(), harness.pattern_sha256(size))
        finally:
            s.close()

    def test_small_tunnel_messages_take_no_pipe(self):
        self.assertTrue(wait_until(lambda: self.splice_pipes() == 0, timeout=10))
        s = self.upgrade()
        try:
            for i in range(200):
                msg = b"\x81\x10message %07d" % i
                s.sendall(msg)
                got = b""
                while len(got) < len(msg):
                    chunk = s.recv(4096)
                    self.assertTrue(chunk)
                    got += chunk
                self.assertEqual(got, msg)
            self.assertEqual(self.splice_pipes(), 0)
        finally:
            s.close()


class SpliceDisabled(unittest.TestCase):
    CONFIG = """
workers: 1
splice: {splice}
access_log: {{ path: "off" }}
admin: {{ listen: 127.0.0.1:0 }}
listeners:
  - name: public
    listen: 127.0.0.1:0
    limits: {{ max_body_bytes: 100MiB }}
    routes: [ {{ pool: web }} ]
pools:
  web:
    backends: [ {{ address: "{addr}" }} ]
"""

    def setUp(self):
        self.origin = harness.Origin("big", log=True)
        self.addCleanup(self.origin.cleanup)
        self.lb = harness.Lb(self.CONFIG.format(splice="false", addr=self.origin.addr))
        self.addCleanup(self.lb.cleanup)
        self.port = self.lb.port("public")
        self.own_pipes = set(pipes_of(self.lb.proc.pid).values())

    def splice_pipes(self):
        return sum(1 for t in pipes_of(self.lb.proc.pid).values() if t not in self.own_pipes)

    def paused_download(self, size):
        """GET /bytes/size, read 256 KiB, pause; returns the pipes lb held
        meanwhile. The body must then arrive whole."""
        s = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KiB)
        try:
            s.sendall(b"GET /bytes/%d HTTP/1.1\r\nHost: x\r\n\r\n" % size)
            head, body = read_head(s)
            h = hashlib.sha256(body)
            got = len(body)
            while got < 256 * KiB:
                chunk = s.recv(65536)
                self.assertTrue(chunk)
                h.update(chunk)
                got += len(chunk)
            wait_until(lambda: self.splice_pipes() >= 2, timeout=2)
            held = self.splice_pipes()
            while got < size:
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                h.update(chunk)
                got += len(chunk)
            self.assertEqual(got, size)
            self.assertEqual(h.hexdigest(), harness.pattern_sha256(size))
            return held
        finally:
            s.close()

    def test_no_pipe_for_anything_then_a_reload_turns_splice_on(self):
        self.assertEqual(self.paused_download(20 * MiB), 0)
        # A paused upload: copied, no pipe; it arrives whole.
        size = 8 * MiB
        body = harness.pattern_bytes(size)
        s = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        try:
            s.sendall(b"POST /off-upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                      % size + body[:MiB])
            time.sleep(0.5)
            self.assertEqual(self.splice_pipes(), 0)
            s.sendall(body[MiB:])
            head, _ = read_head(s)
            self.assertTrue(head.startswith("HTTP/1.1 200"), head)
        finally:
            s.close()
        entries = [e for e in self.origin.log_entries() if e["target"] == "/off-upload"]
        self.assertEqual([(e["body_len"], e["body_sha256"]) for e in entries],
                         [(size, harness.pattern_sha256(size))])
        # A bulk tunnel: copied both ways, no pipe.
        s = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        try:
            s.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                      b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                      b"Sec-WebSocket-Version: 13\r\n\r\n")
            head, _ = read_head(s)
            self.assertTrue(head.startswith("HTTP/1.1 101"), head)
            data = harness.pattern_bytes(4 * MiB)
            # The client sends it all and reads nothing for a while: the echo
            # backs up in lb (copied: no pipe).
            threading.Thread(target=lambda: s.sendall(data), daemon=True).start()
            time.sleep(0.5)
            self.assertEqual(self.splice_pipes(), 0)
            got = bytearray()
            while len(got) < len(data):
                chunk = s.recv(1 << 20)
                self.assertTrue(chunk)
                got += chunk
            self.assertEqual(bytes(got), data)
        finally:
            s.close()
        # Turned on by a reload: the next long body goes by splice.
        self.lb.reload(self.CONFIG.format(splice="true", addr=self.origin.addr))
        self.assertTrue(wait_until(
            lambda: self.lb.metric("lb_config_reloads_total", result="success") >= 1, timeout=10))
        self.assertGreaterEqual(self.paused_download(20 * MiB), 2)


if __name__ == "__main__":
    unittest.main()
