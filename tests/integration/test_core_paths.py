#!/usr/bin/env python3
"""The rarer paths of one request through lb, as clients and backends hit them.

- A retry that lands on a pooled connection is bound by timeouts.response,
  not by the connect timeout of the backend that failed first: a slow POST
  there gets its 200 and runs once (it used to be failed as a "connect
  timeout" of the healthy backend and sent on again).
- A request queued by max_connections_per_backend that gets its 503 while
  queued (its backend drained) leaves the queue: lb goes on serving (the
  queue's next poll used to crash it).
- A request replayed while its body is still arriving (its pooled
  connection was reset) reaches the backend whole: one body pump, not two.
- A backend that answers early and closes while the client is still
  uploading and reading slowly: the client gets the whole answer although
  sending the rest of the body failed (lb used to close mid-answer).
- Thousands of pipelined requests that lb answers itself (404) are answered
  in order without exhausting the stack.
- An HTTPS client that never starts its handshake, and a PROXY-protocol
  client that sends half a header, cost no CPU while they wait, and are
  closed at timeouts.header; a PROXY header split over several reads works.
- Empty lines (CRLF) between keep-alive requests are ignored (RFC 9112
  §2.2): no 408, no trace of the previous request in any answer.
- HEAD to a pool in maintenance gets the head of the maintenance page and no
  body, so the next response on the connection is read correctly.
- An X-Forwarded-For header the client names in Connection is removed, not
  appended to.
"""

import fcntl
import hashlib
import json
import os
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import KeepAliveClient, RawConnection, http, wait_until  # noqa: E402
from edge_util import lb_config, read_response, values  # noqa: E402


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ScriptedOrigin:
    """A threaded origin whose connection handler the test writes:
    serve(sock, index) runs for each accepted connection (index from 0)."""

    def __init__(self, serve):
        self.serve = serve
        self.srv = socket.socket()
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(64)
        self.addr = "127.0.0.1:%d" % self.srv.getsockname()[1]
        self.errors = []
        self.count = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                s, _ = self.srv.accept()
            except OSError:
                return
            index, self.count = self.count, self.count + 1
            threading.Thread(target=self._run, args=(s, index), daemon=True).start()

    def _run(self, s, index):
        try:
            self.serve(s, index)
        except Exception as e:  # reported by the test that owns the origin
            self.errors.append(repr(e))
        finally:
            s.close()

    def stop(self):
        self.srv.close()


def read_head(sock, buf):
    """Reads until a whole head is in buf (a bytearray); returns it, removed from buf."""
    while b"\r\n\r\n" not in buf:
        b = sock.recv(65536)
        if not b:
            raise ConnectionError("closed before a head")
        buf += b
    i = buf.index(b"\r\n\r\n") + 4
    head = bytes(buf[:i])
    del buf[:i]
    return head


def read_chunked(sock, buf, slow=0.0):
    """Reads a chunked body (no trailers); returns the decoded bytes."""
    out = bytearray()

    def need(n):
        while len(buf) < n:
            b = sock.recv(65536)
            if not b:
                raise ConnectionError("closed mid-body")
            buf.extend(b)
            if slow:
                time.sleep(slow)
    while True:
        while b"\r\n" not in buf:
            need(len(buf) + 1)
        i = buf.index(b"\r\n")
        size = int(bytes(buf[:i]).split(b";")[0], 16)
        del buf[:i + 2]
        need(size + 2)
        out += buf[:size]
        del buf[:size + 2]
        if size == 0:
            return bytes(out)


def reset(sock):
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


class CorePaths(harness.TestCase):
    def test_retry_onto_a_pooled_connection_waits_for_the_response(self):
        a, b = self.origin("a"), self.origin("b")
        lb = self.lb(lb_config([a.addr, b.addr], pool_extra=(
            "    retries: 1\n    timeouts: { connect: 300ms, response: 5s }\n")))
        port = lb.port()
        seen = set()
        self.assertTrue(wait_until(lambda: seen.add(http(port, "GET", "/warm")[1]["X-Origin"])
                                   or seen == {"a", "b"}, timeout=5))
        a.kill()  # its pooled connection is now closed; connecting to it is refused
        time.sleep(0.2)
        for name in ("p1", "p2"):  # one of them meets a first, then goes to b's pooled connection
            started = time.monotonic()
            status, headers, body = http(port, "POST", "/echo?delay=1000", body=name.encode())
            self.assertEqual((status, body), (200, name.encode()), body)
            self.assertGreater(time.monotonic() - started, 0.9)
        posts = [e for e in b.log_entries() if e["method"] == "POST"]
        self.assertEqual(len(posts), 2, "a POST ran more than once: %r" % posts)

    def test_request_answered_while_queued_leaves_the_queue(self):
        web = self.origin("web")
        lb = self.lb(lb_config([web.addr], pool_extra=(
            "    max_connections_per_backend: 1\n    queue_timeout: 5s\n")))
        port = lb.port()
        self.assertEqual(http(port, "GET", "/warm")[0], 200)
        slow = {}
        t = threading.Thread(target=lambda: slow.update(r=http(port, "GET", "/?delay=1500")))
        t.start()
        time.sleep(0.3)
        with KeepAliveClient(port) as client:
            waiting = {}
            q = threading.Thread(target=lambda: waiting.update(r=client.request("GET", "/queued")))
            q.start()
            time.sleep(0.3)  # queued behind the slow request
            status, _, body = lb.admin("POST", "/pools/web/backends/%s/drain" % web.addr)
            self.assertEqual(status, 200, body)
            q.join(5)
            self.assertEqual(waiting["r"][0], 503, waiting)
            time.sleep(0.5)  # the queue polls every few ms
            self.assertTrue(lb.running(), "lb died: %s" % lb.stderr_text()[-3000:])
            status, _, body = lb.admin("POST", "/pools/web/backends/%s/enable" % web.addr)
            self.assertEqual(status, 200, body)
            self.assertEqual(client.request("GET", "/after")[0], 200)
        t.join(5)
        self.assertEqual(slow["r"][0], 200)

    def test_replay_while_the_body_arrives_sends_it_whole(self):
        def serve(sock, index):
            buf = bytearray()
            if index == 0:
                read_head(sock, buf)  # GET /warm
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                read_head(sock, buf)  # the PUT, on the pooled connection: reset
                reset(sock)
                return
            head = read_head(sock, buf)
            body = read_chunked(sock, buf, slow=0.002)  # slowly: lb's writes block
            answer = ("%d %s" % (len(body), hashlib.sha256(body).hexdigest())).encode()
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))
            if not head.startswith(b"PUT "):
                raise AssertionError("unexpected request %r" % head)
        origin = ScriptedOrigin(serve)
        self.addCleanup(origin.stop)
        lb = self.lb(lb_config([origin.addr]))
        port = lb.port()
        self.assertEqual(http(port, "GET", "/warm")[0], 200)
        data = b"".join(bytes([i % 251]) * 65536 for i in range(64))  # 4 MiB, every 64 KiB different
        with RawConnection(port, timeout=30) as c:
            c.send(b"PUT /up HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
                   b"Transfer-Encoding: chunked\r\n\r\n")
            time.sleep(0.5)  # the reset and the replay happen now, before any body byte
            for i in range(0, len(data), 65536):
                c.send(b"%x\r\n%s\r\n" % (65536, data[i:i + 65536]))
            c.send(b"0\r\n\r\n")
            _, status, _, body = read_response(c, timeout=30)
        self.assertEqual((status, body.decode()),
                         (200, "%d %s" % (len(data), hashlib.sha256(data).hexdigest())))
        self.assertEqual(origin.errors, [])
        self.assertTrue(lb.running())

    def test_early_answer_survives_a_failed_body_write(self):
        # The backend answers at once and closes while the client is still
        # uploading and reading slowly: lb holds the rest of the answer (in
        # its buffers and sockets) when sending more body to the backend
        # fails with a reset. 3 MB is more than lb passes on to a client that
        # does not read, and less than lb's socket takes from the backend.
        page = b"denied " * 450000
        answer = (b"HTTP/1.1 403 Forbidden\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                  % (len(page), page))
        delivered = threading.Event()

        def serve(sock, index):
            read_head(sock, bytearray())
            sock.sendall(answer)
            sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:  # until lb's kernel has acknowledged every byte
                if struct.unpack("i", fcntl.ioctl(sock, termios.TIOCOUTQ, b"\0" * 4))[0] == 0:
                    delivered.set()
                    break
                time.sleep(0.01)
            reset(sock)  # with body bytes unread: the rest of the upload meets a reset
        origin = ScriptedOrigin(serve)
        self.addCleanup(origin.stop)
        lb = self.lb(lb_config([origin.addr]))
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(10)
        s.connect(("127.0.0.1", lb.port()))
        c = RawConnection.__new__(RawConnection)
        c.sock, c.buf, c.timeout = s, bytearray(), 10
        with c:
            c.send(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 10000000\r\n\r\n")
            if not delivered.wait(6):
                self.skipTest("this kernel's socket buffers do not hold the answer: no set-up")
            time.sleep(0.1)
            try:
                for _ in range(30):  # more body (under lb's 1 MiB lingering bound)
                    c.send(b"x" * 16384)
                    time.sleep(0.01)
            except OSError:
                pass
            time.sleep(0.3)
            _, status, _, body = read_response(c, timeout=10)
        self.assertEqual((status, len(body)), (403, len(page)))
        self.assertTrue(lb.running())

    def test_thousands_of_pipelined_local_answers(self):
        web = self.origin("web")
        lb = self.lb(lb_config([web.addr], routes=(
            "    routes: [ { match: { host: app.test }, pool: web } ]\n")))
        port = lb.port()
        n = 20000
        request = b"GET /nothing HTTP/1.1\r\nHost: other.test\r\n\r\n"
        with RawConnection(port, timeout=30) as c:
            sender = threading.Thread(target=lambda: c.send(request * n))
            sender.start()
            got = 0
            try:
                for got in range(1, n + 1):
                    status, _, _ = c.read_response(timeout=30)
                    self.assertEqual(status, 404)
            finally:
                sender.join(30)
            self.assertEqual(got, n)
        self.assertTrue(lb.running(), "lb died: %s" % lb.stderr_text()[-2000:])
        self.assertEqual(http(port, "GET", "/", headers={"Host": "app.test"})[0], 200)

    def test_idle_tls_and_proxy_clients_cost_no_cpu(self):
        tmp = tempfile.mkdtemp(prefix="lb-core-")
        self.addCleanup(shutil.rmtree, tmp, True)
        cert, key = os.path.join(tmp, "c.pem"), os.path.join(tmp, "c.key")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj",
                        "/CN=app.test", "-keyout", key, "-out", cert], check=True,
                       capture_output=True)
        web = self.origin("web")
        lb = self.lb("""
workers: 1
admin: { listen: 127.0.0.1:0 }
access_log: { path: "off" }
listeners:
  - name: https
    listen: 127.0.0.1:0
    tls: { certificates: [ { cert: %s, key: %s } ] }
    timeouts: { header: 1500ms }
    routes: [ { pool: web } ]
  - name: proxied
    listen: 127.0.0.1:0
    proxy_protocol: true
    timeouts: { header: 1500ms }
    routes: [ { pool: web } ]
pools:
  web:
    backends: [ "%s" ]
""" % (cert, key, web.addr))
        tls_port, proxy_port = lb.port("https"), lb.port("proxied")
        idle = socket.create_connection(("127.0.0.1", tls_port))  # no ClientHello, ever
        half_v1 = socket.create_connection(("127.0.0.1", proxy_port))
        half_v1.sendall(b"PROXY TCP4 192.0.2.1 ")
        half_v2 = socket.create_connection(("127.0.0.1", proxy_port))
        half_v2.sendall(b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c")  # signature, no addresses
        for s in (idle, half_v1, half_v2):
            self.addCleanup(s.close)
        time.sleep(0.2)
        before = cpu_seconds(lb.pid)
        time.sleep(3.0)  # past timeouts.header
        used = cpu_seconds(lb.pid) - before
        self.assertLess(used, 0.5, "lb used %.2f s of CPU for three idle clients" % used)
        for s in (idle, half_v1, half_v2):
            s.settimeout(3)
            try:
                data = s.recv(4096)
                while data:  # an answer (no TLS, so none on the https listener) then the close
                    data = s.recv(4096)
            except ConnectionResetError:
                pass
        # A PROXY header that arrives in pieces is read whole.
        with RawConnection(proxy_port) as c:
            for piece in (b"PROXY TCP4 198.51", b".100.7 127.0.0.1 4", b"000 80\r", b"\n"):
                c.send(piece)
                time.sleep(0.05)
            c.send(b"GET /headers HTTP/1.1\r\nHost: t\r\n\r\n")
            status, _, body = c.read_response()
        self.assertEqual(status, 200)
        seen = json.loads(body)["headers"]
        self.assertEqual(values(seen, "X-Forwarded-For"), ["198.51.100.7"])
        # And the HTTPS listener still serves.
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        data = harness.tls_exchange(
            tls_port, b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n", ctx,
            "app.test")
        self.assertTrue(data.startswith(b"HTTP/1.1 200"), data[:100])

    def test_empty_lines_between_requests_are_ignored(self):
        web = self.origin("web")
        lb = self.lb(lb_config([web.addr], listener_extra=(
            "    timeouts: { header: 1s, idle: 30s }\n")))
        port = lb.port()
        with RawConnection(port) as c:
            c.send(b"GET / HTTP/1.1\r\nHost: t\r\nX-Request-Id: secret-earlier-id\r\n\r\n")
            self.assertEqual(c.read_response()[0], 200)
            c.send(b"\r\n")  # as some clients send after a body
            self.assertFalse(c.closed_by_peer(timeout=2.0), "lb closed the connection")
            self.assertEqual(bytes(c.buf), b"", "lb answered an empty line")
            c.send(b"\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n")
            self.assertEqual(c.read_response()[0], 200)
            # A head that never completes gets its 408, and nothing of the request before it.
            c.send(b"\r\nGET /slow HTT")
            _, status, _, body = read_response(c, timeout=5)
        self.assertEqual(status, 408)
        self.assertNotIn(b"secret-earlier-id", body)

    def test_head_to_a_pool_in_maintenance(self):
        web = self.origin("web")
        lb = self.lb(lb_config([web.addr], pool_extra="    maintenance: true\n"))
        with RawConnection(lb.port()) as c:
            c.send(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n")
            status, headers, body = c.read_response(head_request=True)
            self.assertEqual((status, body), (503, b""))
            length = int(dict((k.lower(), v) for k, v in headers)["content-length"])
            status, _, body = c.read_response()
            self.assertEqual(status, 503)
            self.assertEqual(len(body), length)
            self.assertIn(b"maintenance", body)

    def test_forwarded_for_named_in_connection_is_removed(self):
        web = self.origin("web")
        lb = self.lb(lb_config([web.addr]))
        status, _, body = http(lb.port(), "GET", "/headers", headers={
            "X-Forwarded-For": "203.0.113.9", "Connection": "X-Forwarded-For"})
        self.assertEqual(status, 200)
        self.assertEqual(values(json.loads(body)["headers"], "X-Forwarded-For"), ["127.0.0.1"])


if __name__ == "__main__":
    harness.main()
