"""Shared helpers for the test_edge_*.py files (HTTP correctness at the edge).

- RawOrigin: a scripted TCP "origin" on 127.0.0.1:0 that answers every request
  with bytes the test chooses (invalid status lines, conflicting
  Content-Lengths, hop-by-hop headers, Keep-Alive hints...) and records what
  it saw, including whether lb closed each connection (EOF or reset).
- read_response(): RawConnection.read_response() that also returns the
  status line as sent, so "HTTP/1.1 400" can be checked byte for byte.
- small header helpers.
"""

import os
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402,F401


def values(headers, name):
    """All values of header `name` in a [(k, v), ...] or [[k, v], ...] list."""
    n = name.lower()
    return [v for k, v in headers if k.lower() == n]


def joined(headers, name):
    vals = values(headers, name)
    return ", ".join(vals) if vals else None


def tokens(value):
    return {t.strip().lower() for t in (value or "").split(",") if t.strip()}


def read_response(conn, head_request=False, timeout=5.0):
    """One response from a harness.RawConnection ->
    (status_line: str, status: int, headers [(k, v)], body: bytes)."""
    head = conn.recv_until(b"\r\n\r\n", timeout)
    # read_response() parses (and skips interim 1xx responses); put the head back first.
    conn.buf[:0] = head
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    if status_line.split(" ")[1:2] and status_line.split(" ")[1].startswith("1") \
            and not status_line.startswith("HTTP/1.1 101"):
        # Interim response: the final one's status line is what a test checks.
        status, headers, body = conn.read_response(head_request=head_request, timeout=timeout)
        return "(after %s) HTTP/1.1 %d" % (status_line, status), status, headers, body
    status, headers, body = conn.read_response(head_request=head_request, timeout=timeout)
    return status_line, status, headers, body


class RawOrigin:
    """A tiny threaded TCP server standing in for a (misbehaving) origin.

    RawOrigin(respond, idle_close=None, keep_alive=True)
      respond(head: bytes, body: bytes) -> bytes   the whole answer to one request
                 (may be b"" to answer nothing; None to reset the connection;
                 a list of bytes: sent piece by piece, `pause` seconds apart)
      idle_close  close a connection after this many idle seconds between
                  requests (None: keep it until the peer closes or stop())
      keep_alive  after answering, read the next request on the connection;
                  False: answer once, then only wait for the peer to close.
    Attributes: port, addr, requests [(conn_index, head, body)], conns [dict]:
      {"requests": n, "closed_by_peer": bool, "closed_at": monotonic or None}
    Only request bodies framed by Content-Length are read (no chunked).
    """

    def __init__(self, respond, idle_close=None, keep_alive=True, wait_for_peer=30.0, pause=0.3):
        self.respond = respond
        self.pause = pause
        self.idle_close = idle_close
        self.keep_alive = keep_alive
        self.wait_for_peer = wait_for_peer
        self.lock = threading.Lock()
        self.requests = []
        self.conns = []
        self._socks = []
        self._stopped = False
        self.srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(128)
        self.port = self.srv.getsockname()[1]
        self.addr = "127.0.0.1:%d" % self.port
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def _accept_loop(self):
        while not self._stopped:
            try:
                s, _ = self.srv.accept()
            except OSError:
                return
            with self.lock:
                index = len(self.conns)
                rec = {"requests": 0, "closed_by_peer": False, "closed_at": None}
                self.conns.append(rec)
                self._socks.append(s)
            threading.Thread(target=self._serve, args=(s, index, rec), daemon=True).start()

    def _serve(self, s, index, rec):
        buf = bytearray()
        try:
            while True:
                # Read one request head (and a Content-Length body).
                timeout = self.idle_close if (self.idle_close and not buf) else self.wait_for_peer
                deadline = time.monotonic() + timeout
                while b"\r\n\r\n" not in buf:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return  # idle (or stuck): close it ourselves
                    s.settimeout(left)
                    try:
                        b = s.recv(65536)
                    except socket.timeout:
                        return
                    except (ConnectionResetError, BrokenPipeError):
                        b = b""
                    if not b:
                        rec["closed_by_peer"] = True
                        rec["closed_at"] = time.monotonic()
                        return
                    buf += b
                i = buf.index(b"\r\n\r\n")
                head = bytes(buf[:i + 4])
                del buf[:i + 4]
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    k, _, v = line.partition(b":")
                    if k.strip().lower() == b"content-length":
                        try:
                            length = int(v.strip())
                        except ValueError:
                            length = 0
                s.settimeout(self.wait_for_peer)
                while len(buf) < length:
                    b = s.recv(65536)
                    if not b:
                        rec["closed_by_peer"] = True
                        rec["closed_at"] = time.monotonic()
                        return
                    buf += b
                body = bytes(buf[:length])
                del buf[:length]
                with self.lock:
                    self.requests.append((index, head, body))
                    rec["requests"] += 1
                answer = self.respond(head, body)
                if answer is None:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                 b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    return
                if isinstance(answer, list):
                    for i, piece in enumerate(answer):
                        if i:
                            time.sleep(self.pause)
                        s.sendall(piece)
                elif answer:
                    s.sendall(answer)
                if not self.keep_alive:
                    # Only wait for the peer to close (or the timeout).
                    s.settimeout(self.wait_for_peer)
                    while True:
                        try:
                            b = s.recv(65536)
                        except socket.timeout:
                            return
                        except (ConnectionResetError, BrokenPipeError):
                            b = b""
                        if not b:
                            rec["closed_by_peer"] = True
                            rec["closed_at"] = time.monotonic()
                            return
        except OSError:
            if not self._stopped:
                rec["closed_by_peer"] = True
                rec["closed_at"] = time.monotonic()
        finally:
            try:
                s.close()
            except OSError:
                pass

    def request_count(self):
        with self.lock:
            return len(self.requests)

    def stop(self):
        self._stopped = True
        try:
            self.srv.close()
        except OSError:
            pass
        with self.lock:
            socks = list(self._socks)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass


def fixed(answer):
    """A RawOrigin respond() that always answers `answer`."""
    return lambda head, body: answer


def lb_config(pool_backends, listener_extra="", pool_extra="", top_extra="", workers=1,
              routes=None):
    """A one-listener ("public"), one-pool ("web") config. pool_backends: list of
    "host:port"; listener_extra / pool_extra: YAML lines (already indented)."""
    backends = "\n".join("      - address: %s" % a for a in pool_backends)
    routes = routes or "    routes: [ { match: { path_prefix: / }, pool: web } ]\n"
    return (
        "workers: %d\n" % workers
        + "admin: { listen: 127.0.0.1:0 }\n"
        + (top_extra if top_extra else 'access_log: { path: "off" }\n')
        + "listeners:\n"
        + "  - name: public\n"
        + "    listen: 127.0.0.1:0\n"
        + listener_extra
        + routes
        + "pools:\n"
        + "  web:\n"
        + pool_extra
        + "    backends:\n"
        + backends + "\n"
    )
