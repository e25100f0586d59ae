#!/usr/bin/env python3
"""A small, precise HTTP/1.1 origin server for lb's integration tests and demo.

Python stdlib only, one thread per connection, raw sockets and a hand-written
HTTP/1.1 parser, so that framing (Content-Length, chunked, keep-alive,
Connection: close, HTTP/1.0) is exactly what the tests expect.

Usage:
  origin.py --name NAME [--listen 127.0.0.1:0] [--log FILE]
            [--fail-health FILE] [--idle-close SECONDS] [--status-all N]
            [--delay-all MS] [--close-idle-every SECONDS]

On start it prints one line "listening on HOST:PORT" to stdout.

Endpoints (every response carries "X-Origin: NAME", and Content-Length
unless it is chunked or has no body by definition):
  GET  /healthz          200 "ok\\n"; 503 while the --fail-health file exists
  ANY  /echo             200, body = request body; X-Body-Sha256, X-Received-Bytes
  ANY  /bytes/N          N deterministic bytes (see pattern_bytes); X-Body-Sha256;
                         ?chunked=1 sends them chunked (chunks up to 64 KiB);
                         with &trailer=1 a trailer section follows (X-Checksum:
                         the body's sha256, X-Trailer-Note: end)
  ANY  /status/N         status N, body "status N\\n" (none for 1xx/204/304)
  ANY  /headers          200, JSON {"method","target","version","headers":[[k,v],..],
                         "body_len","trailers":[[k,v],..]} of the request as received
  ANY  /drop             close the connection without answering (RST)
  ANY  /truncate/N       promise Content-Length N, send N//2 bytes, close
  GET  /ws               with "Upgrade: websocket" and "Connection: Upgrade":
                         101 Switching Protocols (Sec-WebSocket-Accept computed
                         from Sec-WebSocket-Key), then echoes every byte received
                         until the peer closes (a raw byte echo, no framing);
                         without them: the default 200 answer
  GET  /__origin/stats   JSON {"requests","connections","active_connections",
                         "paths","tls_server_names"}; not counted, and a connection whose first
                         request is this one is not counted either
  anything else          200 "Hello from NAME\\n"
With --status-all N every request (/healthz included; /__origin/stats excepted)
is answered with status N and the body "status N\\n": a broken application.
With --delay-all MS every request (/__origin/stats excepted) sleeps MS
milliseconds before its answer (on top of ?delay=): a slow application.
With --close-idle-every S, every S seconds it closes every connection that
sits between requests at that moment (a server reaping its idle keep-alive
connections: the close can cross a request already on its way).
With --tls-cert FILE --tls-key FILE it speaks HTTPS (the SNI names clients
sent are in the stats).
Query parameters on any path:
  delay=MS     sleep MS milliseconds (after reading the request) before answering
  close=1      answer with "Connection: close" and close afterwards
  hints=N      send N interim responses (103 Early Hints, each with a Link
               header) before the answer; HTTP/1.1 requests only
"""

import argparse
import base64
import hashlib
import json
import os
import signal
import socket
import ssl
import sys
import threading
import time
from urllib.parse import parse_qs, urlsplit

RECV_SIZE = 1 << 20
MAX_HEAD = 64 * 1024
CHUNK_OUT = 64 * 1024
REQUEST_READ_TIMEOUT = 120.0  # once a request has started, per recv
TUNNEL_TIMEOUT = 600.0        # an upgraded (/ws) connection, per recv
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC11B85"

_PATTERN = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_"  # 64 bytes
_BLOCK = _PATTERN * 1024  # 64 KiB


def pattern_bytes(n):
    """The deterministic body of /bytes/N: a 64-byte pattern repeated, truncated to n."""
    full, rem = divmod(n, len(_BLOCK))
    return _BLOCK * full + _BLOCK[:rem]


def pattern_sha256(n):
    h = hashlib.sha256()
    full, rem = divmod(n, len(_BLOCK))
    for _ in range(full):
        h.update(_BLOCK)
    h.update(_BLOCK[:rem])
    return h.hexdigest()


_sha_cache = {}
_sha_lock = threading.Lock()


def cached_pattern_sha256(n):
    with _sha_lock:
        v = _sha_cache.get(n)
    if v is None:
        v = pattern_sha256(n)
        with _sha_lock:
            if len(_sha_cache) > 1000:
                _sha_cache.clear()
            _sha_cache[n] = v
    return v


class PatternPayload:
    """pattern_bytes(n) without materialising it (for large /bytes/N)."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def pieces(self, size):
        assert size == len(_BLOCK)
        left = self.n
        mv = memoryview(_BLOCK)
        while left > 0:
            take = min(left, size)
            yield mv[:take]
            left -= take


def pieces(payload, size):
    if isinstance(payload, PatternPayload):
        yield from payload.pieces(size)
        return
    mv = memoryview(payload)
    for off in range(0, len(mv), size):
        yield mv[off:off + size]


REASONS = {
    100: "Continue", 101: "Switching Protocols", 200: "OK", 201: "Created",
    202: "Accepted", 204: "No Content", 206: "Partial Content",
    301: "Moved Permanently", 302: "Found", 304: "Not Modified",
    307: "Temporary Redirect", 308: "Permanent Redirect", 400: "Bad Request",
    401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 413: "Content Too Large",
    429: "Too Many Requests", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Gateway Timeout",
}


class BadRequest(Exception):
    pass


class ClientGone(Exception):
    pass


class Reader:
    """Buffered reader over a socket."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()

    def _fill(self):
        data = self.sock.recv(RECV_SIZE)
        if not data:
            raise ClientGone()
        self.buf += data

    def read_head(self):
        """Returns the request head (without the final CRLFCRLF), or None on a clean EOF
        before any byte."""
        # Tolerate (RFC 9112 §2.2) empty lines before a request line.
        start = 0
        while True:
            while self.buf.startswith(b"\r\n"):
                del self.buf[:2]
            idx = self.buf.find(b"\r\n\r\n", max(0, start - 3))
            if idx >= 0:
                head = bytes(self.buf[:idx])
                del self.buf[:idx + 4]
                return head
            if len(self.buf) > MAX_HEAD:
                raise BadRequest("head too large")
            start = len(self.buf)
            try:
                data = self.sock.recv(RECV_SIZE)
            except socket.timeout:
                if not self.buf:
                    raise
                raise BadRequest("head timeout")
            if not data:
                if not self.buf:
                    return None
                raise ClientGone()
            self.buf += data
            # A request has started: switch from the idle timeout to the request one.
            self.sock.settimeout(REQUEST_READ_TIMEOUT)

    def read_line(self, limit=8192):
        while True:
            idx = self.buf.find(b"\r\n")
            if idx >= 0:
                line = bytes(self.buf[:idx])
                del self.buf[:idx + 2]
                return line
            if len(self.buf) > limit:
                raise BadRequest("line too long")
            self._fill()

    def read_exact(self, n, sink):
        """Reads exactly n bytes, passing each piece to sink(bytes)."""
        if self.buf:
            take = min(n, len(self.buf))
            sink(bytes(self.buf[:take]))
            del self.buf[:take]
            n -= take
        while n > 0:
            data = self.sock.recv(min(n, RECV_SIZE))
            if not data:
                raise ClientGone()
            sink(data)
            n -= len(data)


class Body:
    def __init__(self, keep):
        self.hash = hashlib.sha256()
        self.length = 0
        self.parts = [] if keep else None
        self.trailers = []  # [name, value] of a chunked body's trailer section

    def __call__(self, data):
        self.hash.update(data)
        self.length += len(data)
        if self.parts is not None:
            self.parts.append(data)

    def bytes(self):
        return b"".join(self.parts) if self.parts is not None else b""


class Origin:
    def __init__(self, args):
        self.name = args.name
        self.fail_health = args.fail_health
        self.idle_close = args.idle_close
        self.status_all = args.status_all
        self.delay_all = max(0.0, args.delay_all or 0.0) / 1000.0
        self.lock = threading.Lock()
        self.requests = 0
        self.connections = 0
        self.active = 0
        self.paths = {}
        self.next_conn_id = 0
        self.log = open(args.log, "a", buffering=1) if args.log else None
        self.tls_server_names = []
        self.idle_socks = set()  # connections waiting for their next request
        self.tls = None
        if args.tls_cert:
            self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.tls.load_cert_chain(args.tls_cert, args.tls_key)
            self.tls.sni_callback = self.on_sni

    def on_sni(self, sock, name, ctx):
        with self.lock:
            self.tls_server_names.append(name)

    # -- accounting -------------------------------------------------------
    def log_request(self, conn_id, method, target, version, headers, body):
        if self.log is None:
            return
        line = json.dumps({
            "name": self.name, "conn_id": conn_id, "method": method,
            "target": target, "version": version, "headers": headers,
            "body_len": body.length, "body_sha256": body.hash.hexdigest(),
            "time": time.time(),
        })
        with self.lock:
            self.log.write(line + "\n")
            self.log.flush()

    # -- connection -------------------------------------------------------
    def serve(self, sock, conn_id):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        if self.tls:
            try:
                sock.settimeout(REQUEST_READ_TIMEOUT)
                sock = self.tls.wrap_socket(sock, server_side=True)
            except (OSError, ssl.SSLError):
                sock.close()
                with self.lock:
                    self.active -= 1
                return
        reader = Reader(sock)
        first = True
        try:
            while True:
                # Between requests: the idle timeout (if any) applies.
                sock.settimeout(REQUEST_READ_TIMEOUT if reader.buf else self.idle_close)
                if not reader.buf:
                    with self.lock:
                        self.idle_socks.add(sock)
                try:
                    head = reader.read_head()
                except socket.timeout:
                    return  # idle keep-alive connection: close it
                finally:
                    with self.lock:
                        self.idle_socks.discard(sock)
                if head is None:
                    return
                sock.settimeout(REQUEST_READ_TIMEOUT)
                keep = self.handle(sock, reader, head, conn_id, first)
                first = False
                if not keep:
                    return
        except BadRequest as e:
            self.send_simple(sock, 400, ("bad request: %s\n" % e).encode(), close=True)
        except (ClientGone, ConnectionError, socket.timeout, OSError):
            pass
        finally:
            with self.lock:
                self.active -= 1
            try:
                sock.close()
            except OSError:
                pass

    def reap_idle(self, every):
        """Every `every` seconds: close the connections between requests."""
        while True:
            time.sleep(every)
            with self.lock:
                idle = list(self.idle_socks)
                self.idle_socks.clear()
            for sock in idle:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def send_simple(self, sock, status, body, close=False):
        try:
            sock.sendall(self.response_head(status, [("Content-Length", str(len(body)))], close)
                         + body)
        except OSError:
            pass

    def response_head(self, status, headers, close):
        lines = ["HTTP/1.1 %d %s" % (status, REASONS.get(status, "Status"))]
        lines.append("X-Origin: " + self.name)
        for k, v in headers:
            lines.append("%s: %s" % (k, v))
        if close:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def handle(self, sock, reader, head, conn_id, first):
        try:
            text = head.decode("latin-1")
        except UnicodeDecodeError:
            raise BadRequest("undecodable head")
        lines = text.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            raise BadRequest("request line")
        method, target, version = parts
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            raise BadRequest("version")
        headers = []
        for line in lines[1:]:
            if not line or line[0] in " \t" or ":" not in line:
                raise BadRequest("header line %r" % line)
            k, v = line.split(":", 1)
            if k != k.strip() or not k:
                raise BadRequest("header name")
            headers.append([k, v.strip(" \t")])

        def get_all(name):
            n = name.lower()
            return [v for k, v in headers if k.lower() == n]

        conn_tokens = set()
        for v in get_all("Connection"):
            conn_tokens.update(t.strip().lower() for t in v.split(",") if t.strip())
        if version == "HTTP/1.1":
            keep = "close" not in conn_tokens
        else:
            keep = "keep-alive" in conn_tokens and "close" not in conn_tokens

        url = urlsplit(target)
        path = url.path or "/"
        query = parse_qs(url.query)

        def qget(k, default=None):
            vs = query.get(k)
            return vs[-1] if vs else default

        # Request body framing.
        te = get_all("Transfer-Encoding")
        cls = get_all("Content-Length")
        keep_body = path == "/echo"
        body = Body(keep_body)
        if any(v.lower() == "100-continue" for v in get_all("Expect")) and version == "HTTP/1.1":
            if te or (cls and cls[0] != "0"):
                sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        if te:
            if cls:
                raise BadRequest("both Content-Length and Transfer-Encoding")
            codings = [c.strip().lower() for v in te for c in v.split(",")]
            if codings != ["chunked"]:
                raise BadRequest("transfer-encoding %r" % codings)
            self.read_chunked(reader, body)
        elif cls:
            values = set(c.strip() for v in cls for c in v.split(","))
            if len(values) != 1:
                raise BadRequest("several content-lengths")
            v = values.pop()
            if not v.isdigit():
                raise BadRequest("content-length")
            reader.read_exact(int(v), body)

        is_stats = path == "/__origin/stats"
        with self.lock:
            if is_stats:
                if first:
                    self.connections -= 1
            else:
                self.requests += 1
                self.paths[path] = self.paths.get(path, 0) + 1
        if not is_stats:
            self.log_request(conn_id, method, target, version, headers, body)

        if self.delay_all and not is_stats:
            time.sleep(self.delay_all)
        delay = qget("delay")
        if delay:
            try:
                time.sleep(max(0.0, float(delay)) / 1000.0)
            except ValueError:
                pass
        if qget("close") == "1":
            keep = False
        hints = qget("hints")
        if hints and hints.isdigit() and version == "HTTP/1.1":
            sock.sendall(b"".join(
                b"HTTP/1.1 103 Early Hints\r\nLink: </asset-%d.css>; rel=preload; as=style\r\n\r\n"
                % i for i in range(int(hints))))
        upgrade = set()
        for v in get_all("Upgrade"):
            upgrade.update(t.strip().lower() for t in v.split(",") if t.strip())
        if path == "/ws" and "websocket" in upgrade and "upgrade" in conn_tokens:
            self.websocket_echo(sock, reader, get_all("Sec-WebSocket-Key"))
            return False
        return self.respond(sock, method, path, target, version, headers, body, qget, keep)

    def websocket_echo(self, sock, reader, keys):
        key = keys[0].strip() if keys else ""
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        sock.sendall(self.response_head(101, [("Upgrade", "websocket"),
                                              ("Connection", "Upgrade"),
                                              ("Sec-WebSocket-Accept", accept)], False))
        sock.settimeout(TUNNEL_TIMEOUT)
        if reader.buf:
            sock.sendall(bytes(reader.buf))
            reader.buf.clear()
        while True:
            data = sock.recv(RECV_SIZE)
            if not data:
                try:
                    sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            sock.sendall(data)

    def read_chunked(self, reader, body):
        while True:
            line = reader.read_line()
            size_text = line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise BadRequest("chunk size %r" % size_text)
            if size_text.startswith((b"-", b"+", b"0x", b"0X")) or size < 0:
                raise BadRequest("chunk size %r" % size_text)
            if size == 0:
                while True:  # trailers
                    line = reader.read_line()
                    if line == b"":
                        return
                    name, _, value = line.decode("latin-1").partition(":")
                    body.trailers.append([name.strip(), value.strip()])
            reader.read_exact(size, body)
            if reader.read_line() != b"":
                raise BadRequest("chunk data not followed by CRLF")

    def respond(self, sock, method, path, target, version, headers, body, qget, keep):
        close = not keep
        status = 200
        extra = []
        payload = b""
        chunked = False
        no_body = False

        if self.status_all is not None and path != "/__origin/stats":
            status = self.status_all
            if status < 200 or status in (204, 304):
                no_body = True
            else:
                payload = ("status %d\n" % status).encode()
        elif path == "/healthz":
            if self.fail_health and os.path.exists(self.fail_health):
                status, payload = 503, b"unhealthy\n"
            else:
                payload = b"ok\n"
        elif path == "/echo":
            payload = body.bytes()
            extra += [("X-Body-Sha256", body.hash.hexdigest()),
                      ("X-Received-Bytes", str(body.length))]
        elif path.startswith("/bytes/"):
            try:
                n = int(path[len("/bytes/"):])
            except ValueError:
                n = -1
            if n < 0:
                status, payload = 400, b"bad size\n"
            else:
                payload = pattern_bytes(n) if n <= (4 << 20) else PatternPayload(n)
                extra.append(("X-Body-Sha256", cached_pattern_sha256(n)))
                chunked = qget("chunked") == "1" and version == "HTTP/1.1"
        elif path.startswith("/status/"):
            try:
                status = int(path[len("/status/"):])
            except ValueError:
                status = 0
            if not 100 <= status <= 999:
                status, payload = 400, b"bad status\n"
            elif status < 200 or status in (204, 304):
                no_body = True
            else:
                payload = ("status %d\n" % status).encode()
        elif path == "/headers":
            payload = json.dumps({"method": method, "target": target, "version": version,
                                  "headers": headers, "body_len": body.length,
                                  "trailers": body.trailers}).encode()
            extra.append(("Content-Type", "application/json"))
        elif path == "/__origin/stats":
            with self.lock:
                payload = json.dumps({"requests": self.requests,
                                      "connections": self.connections,
                                      "active_connections": self.active - 1,
                                      "tls_server_names": list(self.tls_server_names),
                                      "paths": dict(self.paths)}).encode()
            extra.append(("Content-Type", "application/json"))
        elif path == "/drop":
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                b"\x01\x00\x00\x00\x00\x00\x00\x00")
            except OSError:
                pass
            return False
        elif path.startswith("/truncate/"):
            try:
                n = int(path[len("/truncate/"):])
            except ValueError:
                n = 2
            data = pattern_bytes(n)
            sock.sendall(self.response_head(200, [("Content-Length", str(n))], False)
                         + data[:n // 2])
            return False
        else:
            payload = ("Hello from %s\n" % self.name).encode()

        if keep and version == "HTTP/1.0":
            extra.append(("Connection", "keep-alive"))
        is_head = method == "HEAD"
        if no_body:
            sock.sendall(self.response_head(status, extra, close))
        elif chunked:
            extra.append(("Transfer-Encoding", "chunked"))
            sock.sendall(self.response_head(status, extra, close))
            if not is_head:
                digest = hashlib.sha256()
                for piece in pieces(payload, CHUNK_OUT):
                    sock.sendall(b"%x\r\n" % len(piece))
                    sock.sendall(piece)
                    sock.sendall(b"\r\n")
                    digest.update(piece)
                if qget("trailer") == "1":
                    sock.sendall(b"0\r\nX-Checksum: %s\r\nX-Trailer-Note: end\r\n\r\n"
                                 % digest.hexdigest().encode())
                else:
                    sock.sendall(b"0\r\n\r\n")
        else:
            extra.append(("Content-Length", str(len(payload))))
            hdr = self.response_head(status, extra, close)
            if is_head:
                sock.sendall(hdr)
            elif isinstance(payload, bytes) and len(payload) <= 256 * 1024:
                sock.sendall(hdr + payload)
            else:
                sock.sendall(hdr)
                if isinstance(payload, PatternPayload):
                    for piece in pieces(payload, CHUNK_OUT):
                        sock.sendall(piece)
                else:
                    sock.sendall(payload)
        return keep


def parse_listen(text):
    host, _, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        return host[1:-1], int(port), socket.AF_INET6
    return host or "0.0.0.0", int(port), socket.AF_INET


def main():
    ap = argparse.ArgumentParser(description="HTTP/1.1 test origin")
    ap.add_argument("--name", required=True)
    ap.add_argument("--listen", default="127.0.0.1:0")
    ap.add_argument("--log")
    ap.add_argument("--fail-health")
    ap.add_argument("--idle-close", type=float)
    ap.add_argument("--status-all", type=int,
                    help="answer every request (except /__origin/stats) with this status")
    ap.add_argument("--delay-all", type=float, metavar="MS",
                    help="sleep MS milliseconds before answering every request "
                         "(except /__origin/stats)")
    ap.add_argument("--close-idle-every", type=float, metavar="SECONDS",
                    help="every SECONDS, close the connections that sit between requests")
    ap.add_argument("--tls-cert", help="serve HTTPS with this certificate chain (PEM)")
    ap.add_argument("--tls-key", help="and this key (PEM)")
    args = ap.parse_args()

    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    # A background job of a script has SIGINT ignored: keep it so (the demo's
    # Ctrl-C must reach lb, which drains, not the app servers behind it).
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, lambda *_: os._exit(0))

    host, port, family = parse_listen(args.listen)
    srv = socket.socket(family, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        srv.bind((host, port))
    except OSError as e:
        print("origin %s: cannot listen on %s: %s" % (args.name, args.listen, e),
              file=sys.stderr, flush=True)
        sys.exit(1)
    srv.listen(1024)
    bound = srv.getsockname()
    shown = ("[%s]" % bound[0]) if family == socket.AF_INET6 else bound[0]
    sys.stdout.write("listening on %s:%d\n" % (shown, bound[1]))
    sys.stdout.flush()

    origin = Origin(args)
    if args.close_idle_every:
        threading.Thread(target=origin.reap_idle, args=(args.close_idle_every,),
                         daemon=True).start()
    while True:
        try:
            conn, _ = srv.accept()
        except InterruptedError:
            continue
        except OSError:
            time.sleep(0.01)
            continue
        with origin.lock:
            origin.next_conn_id += 1
            conn_id = origin.next_conn_id
            origin.connections += 1
            origin.active += 1
        t = threading.Thread(target=origin.serve, args=(conn, conn_id), daemon=True)
        t.start()


if __name__ == "__main__":
    main()
