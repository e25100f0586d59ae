"""A real Redis for lb's cluster tests: redis-server on 127.0.0.1, and a
minimal RESP client to look inside it (Python stdlib only).

    from redis_server import Redis, needs_redis

    @needs_redis
    class T(harness.TestCase):
        def test_x(self):
            redis = Redis()                  # or Redis(password="...", extra_args=[...])
            self.addCleanup(redis.cleanup)
            # lb config:  cluster: { redis: <redis.addr> }
            redis.cmd("HGETALL", "lb:overrides")   # -> ["d:web 127.0.0.1:1", "1@1"]
            redis.kill()                     # SIGKILL: no goodbye to its clients
            redis.restart()                  # the same port, empty again

redis-server runs in the foreground on an ephemeral port (or the one given),
bound to 127.0.0.1, saving nothing (--save "" --appendonly no), with its
working directory and log (redis.log) in a temp dir that cleanup() removes.
Like the processes of harness.py it is started through harness._popen, so it
is killed at test end however the test ends.

Replies: a simple string or a bulk string -> str (None for a null bulk), an
integer -> int, an array -> list (None for a null array), an error ->
RedisError raised.

Environment: REDIS_SERVER_BIN (default /usr/bin/redis-server); `needs_redis`
skips a test (or a class) without it.
"""

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402

REDIS_SERVER = os.environ.get("REDIS_SERVER_BIN", "/usr/bin/redis-server")
HAVE_REDIS = os.path.exists(REDIS_SERVER)
needs_redis = unittest.skipUnless(HAVE_REDIS, "no redis-server at %s" % REDIS_SERVER)


class RedisError(Exception):
    """An error reply (-ERR ..., -NOAUTH ...) from Redis."""


def _read_reply(f):
    line = f.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RedisError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        return data[:-2].decode("utf-8", "replace")
    if kind == b"*":
        n = int(rest)
        if n < 0:
            return None
        return [_read_reply(f) for _ in range(n)]
    raise RedisError("unexpected reply %r" % line)


def _encode(parts):
    out = b"*%d\r\n" % len(parts)
    for p in parts:
        p = p if isinstance(p, bytes) else str(p).encode()
        out += b"$%d\r\n%s\r\n" % (len(p), p)
    return out


def redis_cmd(port, *args, password=None, timeout=3.0):
    """One command (after AUTH when password is given) on a fresh connection
    to 127.0.0.1:port -> its reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        f = s.makefile("rb")
        try:
            if password is not None:
                s.sendall(_encode(["AUTH", password]))
                _read_reply(f)
            s.sendall(_encode(list(args)))
            return _read_reply(f)
        finally:
            f.close()


def pairs(flat):
    """HGETALL's [k1, v1, k2, v2...] (or None) -> {k: v}."""
    flat = flat or []
    return dict(zip(flat[0::2], flat[1::2]))


class Redis:
    """redis-server on 127.0.0.1:port (an unused one unless given), nothing
    saved, with requirepass when `password` is given; started at once."""

    def __init__(self, port=None, password=None, extra_args=()):
        self.port = port or harness.unused_port()
        self.password = password
        self.extra_args = list(extra_args)  # e.g. --tls-port and its files
        self.dir = tempfile.mkdtemp(prefix="lb-test-redis-")
        self.proc = None
        self.log = None
        try:
            self.start()
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def start(self, timeout=10.0):
        """Starts redis-server and waits until it answers PING; RuntimeError
        with the end of its log if it does not."""
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--daemonize", "no",
                "--dir", self.dir, "--logfile", ""]
        if self.password is not None:
            args += ["--requirepass", self.password]
        args += self.extra_args
        self.log = open(os.path.join(self.dir, "redis.log"), "ab")
        self.proc = harness._popen(args, stdin=subprocess.DEVNULL, stdout=self.log,
                                   stderr=subprocess.STDOUT, cwd=self.dir)
        if not harness.wait_until(
                lambda: self.cmd("PING") == "PONG" or self.proc.poll() is not None,
                timeout) or self.proc.poll() is not None:
            self.kill()
            with open(os.path.join(self.dir, "redis.log"), "rb") as f:
                raise RuntimeError("redis-server did not start: " + f.read().decode()[-2000:])

    def cmd(self, *args):
        """One command (authenticated when the server has a password) -> its reply."""
        return redis_cmd(self.port, *args, password=self.password)

    def kill(self):
        """SIGKILL (no goodbye to its clients), then reap."""
        if self.proc is not None:
            harness.kill_and_wait(self.proc)
            harness._unregister(self.proc)
            try:
                self.log.close()
            except Exception:
                pass

    def restart(self, timeout=10.0):
        """Starts again on the same port (empty: nothing was saved)."""
        self.kill()
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.start(timeout=max(1.0, deadline - time.monotonic()))
            except RuntimeError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.1)

    def commands_served(self):
        """Commands Redis has executed so far: calls= summed over every
        cmdstat_ line of INFO commandstats (this INFO itself not included)."""
        total = 0
        for line in self.cmd("INFO", "commandstats").splitlines():
            if line.startswith("cmdstat_"):
                m = re.search(r"(?:^|[:,])calls=(\d+)", line)
                if m:
                    total += int(m.group(1))
        return total

    def dump(self, pattern="*", width=60):
        """Every key matching `pattern` and its value, each value (or hash
        field's value) cut to `width` characters (for failure messages)."""
        out = {}
        for key in sorted(self.cmd("KEYS", pattern) or []):
            kind = self.cmd("TYPE", key)
            if kind == "hash":
                out[key] = {k: v[:width] for k, v in pairs(self.cmd("HGETALL", key)).items()}
            elif kind == "string":
                out[key] = (self.cmd("GET", key) or "")[:width]
            else:
                out[key] = kind
        return out

    def cleanup(self):
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
