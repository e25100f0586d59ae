#!/usr/bin/python3
"""idle_client: opens many keep-alive connections, one request each, then holds them idle.

  idle_client.py --target 127.0.0.1:PORT [--connections N] [--window W]
                 [--path /] [--timeout S] [--hold S]

For bench/run.sh's "idle" scenario (memory per idle client connection). Opens
N connections to the target, at most W of them still connecting or waiting for
their response at any time (so the proxy's listen backlog and its upstream
connections stay small); each sends one keep-alive "GET PATH HTTP/1.1" and
reads the whole response (Content-Length or chunked). When every connection
has its response (or has failed, or --timeout S has passed), prints one line
and flushes it:

  RESULT connections=N ok=K failed=F elapsed_s=T

(ok: connections that got a complete 200 and are still open). Then holds every
connection open and idle, sending nothing, until SIGTERM or SIGINT (or --hold
S seconds: a bound in case nobody signals), and prints on exit

  HELD ok=K closed=C

(closed: held connections the peer closed meanwhile). The exit status is 0 if
every connection got its 200 and none was closed, 1 otherwise.

Standard library only (selectors, non-blocking sockets); raises its soft limit
on open files to the hard limit.
"""

import argparse
import errno
import resource
import selectors
import signal
import socket
import sys
import time

CONNECTING, SENDING, READING = 1, 2, 3


class Conn:
    __slots__ = ("sock", "state", "out", "buf", "status", "need", "chunked")

    def __init__(self, sock, request):
        self.sock = sock
        self.state = CONNECTING
        self.out = request
        self.buf = b""
        self.status = 0
        self.need = None  # bytes of body still expected (Content-Length), once the head is in
        self.chunked = False


def response_complete(c):
    """Parses what c.buf holds; True once the whole response is in."""
    if c.need is None and not c.chunked:
        end = c.buf.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = c.buf[:end].decode("latin-1").split("\r\n")
        parts = head[0].split(" ", 2)
        c.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        length = 0
        for line in head[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value.strip())
            elif name == "transfer-encoding" and "chunked" in value.lower():
                c.chunked = True
        c.buf = c.buf[end + 4:]
        if not c.chunked:
            c.need = length
    if c.chunked:
        # Enough for the small bodies the benchmark fetches: the body ends
        # with the last chunk and an empty trailer section.
        return c.buf.endswith(b"0\r\n\r\n")
    return len(c.buf) >= c.need


def main():
    ap = argparse.ArgumentParser(description="Holds many idle keep-alive connections.")
    ap.add_argument("--target", required=True, help="HOST:PORT")
    ap.add_argument("--connections", type=int, default=5000)
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--path", default="/")
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--hold", type=float, default=300.0)
    args = ap.parse_args()
    host, _, port = args.target.rpartition(":")
    addr = (host, int(port))

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.connections + 64
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else want, hard))

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))

    request = f"GET {args.path} HTTP/1.1\r\nHost: {args.target}\r\nUser-Agent: idle_client\r\n\r\n".encode()
    sel = selectors.DefaultSelector()
    held = []
    failed = 0
    started = 0
    active = 0
    t0 = time.monotonic()
    deadline = t0 + args.timeout

    def fail(c):
        nonlocal failed, active
        sel.unregister(c.sock)
        c.sock.close()
        failed += 1
        active -= 1

    while (started < args.connections or active) and not stop and time.monotonic() < deadline:
        while started < args.connections and active < args.window:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            started += 1
            active += 1
            err = s.connect_ex(addr)
            c = Conn(s, request)
            if err not in (0, errno.EINPROGRESS):
                sel.register(s, selectors.EVENT_WRITE, c)
                fail(c)
                continue
            sel.register(s, selectors.EVENT_WRITE, c)
        for key, _ in sel.select(timeout=0.2):
            c = key.data
            try:
                if c.state == CONNECTING:
                    if c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                        fail(c)
                        continue
                    c.state = SENDING
                if c.state == SENDING:
                    n = c.sock.send(c.out)
                    c.out = c.out[n:]
                    if not c.out:
                        c.state = READING
                        sel.modify(c.sock, selectors.EVENT_READ, c)
                    continue
                data = c.sock.recv(65536)
                if not data:
                    fail(c)
                    continue
                c.buf += data
                if response_complete(c):
                    sel.unregister(c.sock)
                    active -= 1
                    if c.status == 200:
                        c.buf = b""
                        held.append(c.sock)
                    else:
                        c.sock.close()
                        failed += 1
            except (BlockingIOError, InterruptedError):
                pass
            except (OSError, ValueError):
                fail(c)
    failed = args.connections - len(held)  # includes those not done by the deadline (or when stopped)
    print(f"RESULT connections={args.connections} ok={len(held)} failed={failed} "
          f"elapsed_s={time.monotonic() - t0:.2f}", flush=True)

    # Hold: nothing is sent; a held socket that becomes readable was closed
    # (or written to) by the peer.
    for s in held:
        sel.register(s, selectors.EVENT_READ)
    closed = 0
    end = time.monotonic() + args.hold
    while not stop and time.monotonic() < end:
        for key, _ in sel.select(timeout=0.2):
            sel.unregister(key.fileobj)
            closed += 1
    print(f"HELD ok={len(held)} closed={closed}", flush=True)
    for s in held:
        s.close()
    return 0 if failed == 0 and closed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
