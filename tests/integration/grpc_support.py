"""gRPC and HTTP/2 backends for lb's tests: tests/origin/grpc_origin.py (python3-grpcio),
nghttpd (nghttp2-server) as a cleartext h2 web server, a python3-h2 server that sends
GOAWAY every few streams, and a backend that accepts and never answers.

    GrpcOrigin(name, tls=(cert, key) or None, health_file=None)  .addr .port .kill()
    Nghttpd(docroot)   .addr .port
    GoawayServer(every=N)   .addr .streams .connections
    LimitedServer(max_streams=N, delay=S)   .addr .connections .most_at_once
    SilentServer()     .addr
    established_to(port): how many TCP connections to 127.0.0.1:port are established
"""

import os
import re
import select
import socket
import subprocess
import tempfile
import threading
import time

import harness

GRPC_ORIGIN_PY = os.path.join(os.path.dirname(harness.ORIGIN_PY), "grpc_origin.py")


class GrpcOrigin:
    def __init__(self, name, tls=None, health_file=None, timeout=15.0):
        self.name = name
        args = ["/usr/bin/python3", GRPC_ORIGIN_PY, "--name", name]
        if tls:
            args += ["--tls-cert", tls[0], "--tls-key", tls[1]]
        if health_file:
            args += ["--health-file", health_file]
        self.stderr = tempfile.TemporaryFile()
        self.proc = harness._popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=self.stderr)
        line = []
        t = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()), daemon=True)
        t.start()
        t.join(timeout)
        m = re.match(rb"listening on 127\.0\.0\.1:(\d+)", line[0] if line else b"")
        if not m:
            self.kill()
            self.stderr.seek(0)
            raise RuntimeError("grpc origin %s did not start: %r %s"
                               % (name, line, self.stderr.read()[-2000:]))
        self.port = int(m.group(1))
        self.addr = "127.0.0.1:%d" % self.port

    def kill(self):
        harness.kill_and_wait(self.proc)

    def cleanup(self):
        self.kill()
        for f in (self.proc.stdout, self.stderr):
            f.close()


class Nghttpd:
    """nghttpd --no-tls: HTTP/2 with prior knowledge, files from `docroot`."""

    def __init__(self, docroot, timeout=10.0):
        self.port = harness.unused_port()
        self.addr = "127.0.0.1:%d" % self.port
        self.proc = harness._popen(["nghttpd", "--no-tls", "-a", "127.0.0.1", "-d", docroot,
                                    str(self.port)],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        harness.wait_until(lambda: _can_connect(self.port), timeout)

    def cleanup(self):
        harness.kill_and_wait(self.proc)


def _can_connect(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def established_to(port):
    """Established TCP connections whose remote end is 127.0.0.1:port (/proc/net/tcp)."""
    n = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            remote, state = parts[2], parts[3]
            if state == "01" and remote == "0100007F:%04X" % port:
                n += 1
    return n


class _ThreadedServer:
    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.addr = "127.0.0.1:%d" % self.port
        self.connections = 0
        self.lock = threading.Lock()
        self.stopped = False
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
                self.conns.append(c)
            threading.Thread(target=self.serve, args=(c,), daemon=True).start()

    def serve(self, c):
        raise NotImplementedError

    def cleanup(self):
        self.stopped = True
        self.sock.close()
        with self.lock:
            for c in self.conns:
                try:
                    c.close()
                except OSError:
                    pass


class SilentServer(_ThreadedServer):
    """Accepts, sends an empty SETTINGS frame (its side of the HTTP/2 preface) and
    reads, never answers (an h2c backend that hangs)."""

    def serve(self, c):
        try:
            c.sendall(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            while c.recv(65536):
                pass
        except OSError:
            pass


def h2_server_connection(max_streams=None):
    """The server side of an HTTP/2 connection with prior knowledge
    (python3-h2), its SETTINGS queued (with SETTINGS_MAX_CONCURRENT_STREAMS
    when given)."""
    import h2.config
    import h2.connection
    import h2.settings
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False,
                                                                header_encoding=None))
    if max_streams is not None:
        conn.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_streams})
    conn.initiate_connection()
    return conn


def serve_h2(c, conn, handle):
    """Runs the server side `conn` on socket `c`: sends what it queued, then
    passes the events of every read to `handle(events)` and sends what that
    queued, until the client closes or `handle` returns True. Closes `c`."""
    try:
        c.sendall(conn.data_to_send())
        while True:
            data = c.recv(65536)
            if not data:
                return
            done = handle(conn.receive_data(data))
            c.sendall(conn.data_to_send())
            if done:
                return
    except Exception:
        return
    finally:
        c.close()


class GoawayServer(_ThreadedServer):
    """HTTP/2 with prior knowledge (python3-h2): answers every request 200 with
    "ok STREAM" and, after every `every` streams on a connection, sends GOAWAY
    naming the last stream it took, answers the streams it took, refuses
    the later ones (REFUSED_STREAM) and closes once they are answered."""

    def __init__(self, every=10):
        self.every = every
        self.streams = 0
        super().__init__()

    def serve(self, c):
        import h2.errors
        import h2.events
        conn = h2_server_connection()
        taken = 0
        last = None
        open_streams = set()

        def handle(events):
            nonlocal taken, last
            for e in events:
                if isinstance(e, h2.events.RequestReceived):
                    if last is not None and e.stream_id > last:
                        conn.reset_stream(e.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
                        continue
                    taken += 1
                    open_streams.add(e.stream_id)
                    if taken == self.every:
                        last = e.stream_id
                        conn.close_connection(last_stream_id=last)
                elif isinstance(e, h2.events.StreamEnded) and e.stream_id in open_streams:
                    open_streams.discard(e.stream_id)
                    body = b"ok %d" % e.stream_id
                    conn.send_headers(e.stream_id, [(":status", "200"),
                                                    ("content-length", str(len(body)))])
                    conn.send_data(e.stream_id, body, end_stream=True)
                    with self.lock:
                        self.streams += 1
            return last is not None and not open_streams

        serve_h2(c, conn, handle)


class AckWaitingServer(_ThreadedServer):
    """HTTP/2 with prior knowledge (python3-h2) that answers a request (200
    "ok") only once the client has acknowledged its SETTINGS, as RFC 9113
    §6.5.3 lets a server insist on; counts the requests it answered."""

    def __init__(self):
        self.answered = 0
        super().__init__()

    def serve(self, c):
        import h2.events
        conn = h2_server_connection()
        acked = False
        waiting = []

        def handle(events):
            nonlocal acked
            for e in events:
                if isinstance(e, h2.events.SettingsAcknowledged):
                    acked = True
                elif isinstance(e, h2.events.StreamEnded):
                    waiting.append(e.stream_id)
            if acked:
                for sid in waiting:
                    conn.send_headers(sid, [(":status", "200"), ("content-length", "2")])
                    conn.send_data(sid, b"ok", end_stream=True)
                    with self.lock:
                        self.answered += 1
                waiting.clear()

        serve_h2(c, conn, handle)


class LimitedServer(_ThreadedServer):
    """HTTP/2 with prior knowledge (python3-h2) that allows `max_streams`
    concurrent streams per connection (SETTINGS_MAX_CONCURRENT_STREAMS) and
    answers each request `delay` seconds after it ended, 200 "ok"."""

    def __init__(self, max_streams=2, delay=0.3):
        self.max_streams = max_streams
        self.delay = delay
        self.most_at_once = 0  # the most streams open at once on one connection
        super().__init__()

    def serve(self, c):
        import h2.events
        conn = h2_server_connection(max_streams=self.max_streams)
        due = []  # (when, stream id)
        open_streams = set()
        try:
            c.sendall(conn.data_to_send())
            while True:
                timeout = max(0.0, min(d[0] for d in due) - time.monotonic()) if due else None
                ready, _, _ = select.select([c], [], [], timeout)
                if ready:
                    data = c.recv(65536)
                    if not data:
                        return
                    for e in conn.receive_data(data):
                        if isinstance(e, h2.events.RequestReceived):
                            open_streams.add(e.stream_id)
                            with self.lock:
                                self.most_at_once = max(self.most_at_once, len(open_streams))
                        if isinstance(e, h2.events.StreamEnded):
                            due.append((time.monotonic() + self.delay, e.stream_id))
                now = time.monotonic()
                for item in [d for d in due if d[0] <= now]:
                    due.remove(item)
                    sid = item[1]
                    conn.send_headers(sid, [(":status", "200"), ("content-length", "2")])
                    conn.send_data(sid, b"ok", end_stream=True)
                    open_streams.discard(sid)
                c.sendall(conn.data_to_send())
        except Exception:
            return
        finally:
            c.close()
