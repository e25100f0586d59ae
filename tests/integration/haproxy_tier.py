"""HAProxy in TCP mode in front of lb instances, for the tier tests, and the
client side of such a tier (Python stdlib only).

    from haproxy_tier import HAProxy, needs_haproxy

    @needs_haproxy
    class T(harness.TestCase):
        def test_x(self):
            lbs = [self.lb(config) for _ in range(3)]
            names = ["lb1", "lb2", "lb3"]
            haproxy = HAProxy([("lbs", None, [(n, lb.port(), lb.admin_port)
                                              for n, lb in zip(names, lbs)])])
            self.addCleanup(haproxy.cleanup_after, self)
            haproxy.wait_checked_up(names)
            # clients connect to haproxy.port

HAProxy(frontends, health_check="/healthz", send_proxy=True) writes one
frontend (bound on 127.0.0.1) and one backend (balance roundrobin) for each
(backend name, bind port or None for an unused one, [(server name, port,
admin port or None)]) and runs HAProxy in the foreground (-db) with a stats
socket, through harness._popen: killed at test end however the test ends.
  - health_check: "option httpchk GET <path>", expecting a 200, inter 300ms
    fall 2 rise 2 (the whole check may take 2 s, so that a busy machine does
    not fail checks of healthy instances); each server is checked on its
    admin port when it has one ("check port N": no PROXY header on the
    check), else on its own port. None: no checks.
  - send_proxy: a PROXY v2 header on the traffic (send-proxy-v2).
`port` is the first frontend's. servers() and sessions() read "show stat".

The client side: CLIENT_IP, the address the tier's clients bind (HAProxy
connects to lb from 127.0.0.1, so lb knows the client from the PROXY
header), and read_response(), one Content-Length response read from a
socket, telling a connection closed before any byte of the response
(ClosedBeforeResponse: a request a client may send again) from one closed
inside it.

Environment: HAPROXY_BIN (default /usr/sbin/haproxy); `needs_haproxy` skips
a test (or a class) without it.
"""

import csv
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402

HAPROXY = os.environ.get("HAPROXY_BIN", "/usr/sbin/haproxy")
HAVE_HAPROXY = os.access(HAPROXY, os.X_OK)
needs_haproxy = unittest.skipUnless(HAVE_HAPROXY, "no HAProxy at %s" % HAPROXY)

CLIENT_IP = "127.0.0.2"  # the clients' address; HAProxy connects to lb from 127.0.0.1


class HAProxy:
    """HAProxy in TCP mode, in the foreground (-db): a frontend and a
    roundrobin backend per entry of `frontends` [(backend name, bind port or
    None, [(server name, port, admin port or None)])]; see the module
    docstring for health_check and send_proxy."""

    def __init__(self, frontends, health_check="/healthz", send_proxy=True):
        self.dir = tempfile.mkdtemp(prefix="haproxy-tier-")
        self.socket_path = os.path.join(self.dir, "stats.sock")
        self.config_path = os.path.join(self.dir, "haproxy.cfg")
        self.stderr_path = os.path.join(self.dir, "stderr.txt")
        frontends = [(name, port or harness.unused_port(), servers)
                     for name, port, servers in frontends]
        self.backends = [name for name, _, _ in frontends]
        self.port = frontends[0][1]
        lines = [
            "global",
            "  maxconn 1000",
            "  stats socket %s mode 600 level admin" % self.socket_path,
            "defaults",
            "  mode tcp",
            "  timeout connect 2s",
            "  timeout client 30s",
            "  timeout server 30s",
        ]
        if health_check:
            # The whole check may take this long (else: inter, 300ms), so a
            # busy machine does not fail checks of healthy instances.
            lines.append("  timeout check 2s")
        default_server = (["inter 300ms fall 2 rise 2"] if health_check else []) \
            + (["send-proxy-v2"] if send_proxy else [])
        for name, port, servers in frontends:
            lines += ["frontend fe_%s" % name,
                      "  bind 127.0.0.1:%d" % port,
                      "  default_backend %s" % name,
                      "backend %s" % name,
                      "  balance roundrobin"]
            if health_check:
                lines += ["  option httpchk GET %s" % health_check,
                          "  http-check expect status 200"]
            if default_server:
                lines.append("  default-server " + " ".join(default_server))
            for server, server_port, admin_port in servers:
                line = "  server %s 127.0.0.1:%d" % (server, server_port)
                if health_check:
                    # With "port" the check goes to the admin port, without
                    # the PROXY header the traffic gets.
                    line += " check" + (" port %d" % admin_port if admin_port else "")
                lines.append(line)
        with open(self.config_path, "w") as f:
            f.write("\n".join(lines) + "\n")
        self._err = open(self.stderr_path, "wb")
        self.proc = harness._popen([HAPROXY, "-db", "-f", self.config_path],
                                   stdin=subprocess.DEVNULL, stdout=self._err, stderr=self._err,
                                   cwd=self.dir)
        if not harness.wait_until(lambda: self.servers() or not self.running(), 10):
            text = self.stderr_text()
            self.cleanup()
            raise RuntimeError("HAProxy did not start; its output:\n" + text)
        if not self.running():
            text = self.stderr_text()
            self.cleanup()
            raise RuntimeError("HAProxy exited; its output:\n" + text)

    def running(self):
        return self.proc.poll() is None

    def stderr_text(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def command(self, line, timeout=2.0):
        """One command on the stats socket -> HAProxy's answer."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(self.socket_path)
            s.sendall(line.encode() + b"\n")
            out = b""
            while True:
                b = s.recv(65536)
                if not b:
                    return out.decode("utf-8", "replace")
                out += b
        finally:
            s.close()

    def servers(self, backend=None):
        """{server name: its "show stat" row} of `backend` (default: the
        first); check_status without the "* " HAProxy puts in front while a
        check runs."""
        backend = backend or self.backends[0]
        text = self.command("show stat")
        lines = [l for l in text.splitlines() if l.strip()]
        if not lines or not lines[0].startswith("# "):
            return {}
        out = {}
        for r in csv.DictReader([lines[0][2:]] + lines[1:]):
            if r.get("pxname") == backend and r.get("svname") not in ("BACKEND", "FRONTEND"):
                r["check_status"] = (r.get("check_status") or "").lstrip("* ")
                out[r["svname"]] = r
        return out

    def sessions(self, backend=None):
        """{server name: connections it got so far (stot)} of `backend`."""
        return {name: int(r.get("stot") or 0) for name, r in self.servers(backend).items()}

    def all_checked_up(self, names, backend=None):
        s = self.servers(backend)
        return all(n in s and s[n]["status"] == "UP" and s[n]["check_status"] == "L7OK"
                   for n in names)

    def wait_checked_up(self, names, timeout=5.0, backend=None):
        """Waits until every server of `names` is UP with its check passing
        (L7OK); else AssertionError (a test failure) with each server's
        state and HAProxy's output."""
        if harness.wait_until(lambda: self.all_checked_up(names, backend), timeout, 0.1):
            return
        raise AssertionError("HAProxy's checks of lb's /healthz do not pass: %r\n%s"
                             % ({n: (r["status"], r["check_status"], r.get("check_code"),
                                     r.get("last_chk"))
                                 for n, r in self.servers(backend).items()},
                                self.stderr_text()))

    def cleanup(self):
        harness.kill_and_wait(self.proc)
        harness._unregister(self.proc)
        try:
            self._err.close()
        except Exception:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def cleanup_after(self, test, tail=6000):
        """cleanup() for test.addCleanup(haproxy.cleanup_after, test): first
        the end of HAProxy's output on stderr when the test failed (or
        LB_TEST_VERBOSE is set)."""
        if test.failed_so_far() or os.environ.get("LB_TEST_VERBOSE"):
            sys.stderr.write("---- HAProxy output (%s) ----\n%s\n"
                             % (test.id(), self.stderr_text()[-tail:]))
        self.cleanup()


# ---------------------------------------------------------------------------
# the client side

class ClosedBeforeResponse(ConnectionError):
    """The connection closed (EOF, reset, broken pipe) before any byte of the response."""


def read_response(sock):
    """One response with Content-Length (every answer here has one) ->
    (status, {lowercase name: value}, body, server closes after it)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError as e:
            if not buf:
                raise ClosedBeforeResponse("reset before the response") from e
            raise
        if not chunk:
            if not buf:
                raise ClosedBeforeResponse("EOF before the response")
            raise ConnectionError("closed inside the response head: %r" % buf[:200])
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    version, status = lines[0].split(" ")[0], int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    length = int(headers["content-length"])
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed inside the body (%d of %d bytes)" % (len(body), length))
        body += chunk
    if len(body) != length:
        raise ConnectionError("%d bytes more than Content-Length" % (len(body) - length))
    close = version == "HTTP/1.0" or headers.get("connection", "").lower() == "close"
    return status, headers, body, close
