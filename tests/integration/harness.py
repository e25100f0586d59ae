"""Helpers for lb's integration tests (unittest based, Python stdlib only).

Tests run as `python3 tests/integration/test_x.py` with the environment
    LB_BIN          path of the lb binary
    LB_SOURCE_DIR   repository root
    LB_ALLOC_COUNTER  (optional) path of the allocation-counting LD_PRELOAD shim
Typical use:

    import harness
    from harness import Origin, Lb, http

    class T(harness.TestCase):
        def test_hello(self):
            a = self.origin("a")
            lb = self.lb(f'''
    listeners:
      - name: public
        listen: 127.0.0.1:0
        routes: [ {{ match: {{ path_prefix: / }}, pool: web }} ]
    admin: {{ listen: 127.0.0.1:0 }}
    pools:
      web:
        backends: [ {{ address: {a.addr} }} ]
    ''')
            status, headers, body = http(lb.port(), "GET", "/")
            self.assertEqual(status, 200)

    if __name__ == "__main__":
        harness.main()

Every process started here is killed at test end (TestCase cleanups, context
managers, an atexit hook, and PR_SET_PDEATHSIG when started from the main
thread), whatever happens.
"""

import atexit
import ctypes
import hashlib
import http.client as _http_client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)
SOURCE_DIR = os.environ.get("LB_SOURCE_DIR") or os.path.abspath(os.path.join(HERE, "..", ".."))
ORIGIN_PY = os.path.join(SOURCE_DIR, "tests", "origin", "origin.py")
if not os.path.exists(ORIGIN_PY):
    ORIGIN_PY = os.path.abspath(os.path.join(HERE, "..", "origin", "origin.py"))
_ORIGIN_DIR = os.path.dirname(ORIGIN_PY)
if _ORIGIN_DIR not in sys.path:
    sys.path.insert(0, _ORIGIN_DIR)

import origin as _origin_module  # noqa: E402  (for pattern_bytes)


def pattern_bytes(n):
    """The exact body origin.py serves for /bytes/N."""
    return _origin_module.pattern_bytes(n)


def pattern_sha256(n):
    """sha256 hex of pattern_bytes(n), computed without building the whole body."""
    return _origin_module.pattern_sha256(n)


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def lb_bin():
    """Path of the lb binary: $LB_BIN, else $LB_SOURCE_DIR/build/lb/lb."""
    b = os.environ.get("LB_BIN")
    if b:
        return os.path.abspath(b)  # lb runs with cwd = its temp dir
    return os.path.join(SOURCE_DIR, "build", "lb", "lb")


def port_free_on(hosts):
    """A TCP port free on every host in `hosts` (to listen on several
    loopback addresses with one port, as DNS-discovered backends do)."""
    for _ in range(50):
        s = socket.socket()
        s.bind((hosts[0], 0))
        port = s.getsockname()[1]
        s.close()
        ok = True
        for h in hosts[1:]:
            t = socket.socket()
            try:
                t.bind((h, port))
            except OSError:
                ok = False
            finally:
                t.close()
        if ok:
            return port
    raise RuntimeError("no port free on all of %s" % hosts)

def unused_port(host="127.0.0.1"):
    """A loopback port with nothing listening on it (bound to port 0, then closed):
    connecting to it is refused."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((host, 0))
        return s.getsockname()[1]
    finally:
        s.close()


# ---------------------------------------------------------------------------
# process bookkeeping

_live = set()
_live_lock = threading.Lock()


def _register(proc):
    with _live_lock:
        _live.add(proc)


def _unregister(proc):
    with _live_lock:
        _live.discard(proc)


def kill_and_wait(proc, timeout=5):
    """SIGKILL `proc` if it still runs, then reap it (waiting up to `timeout`)."""
    if proc.poll() is None:
        proc.kill()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass


def _kill_all():
    with _live_lock:
        procs = list(_live)
        _live.clear()
    for p in procs:
        try:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=5)
        except Exception:
            pass


atexit.register(_kill_all)


def _on_term(signum, frame):
    _kill_all()
    os._exit(128 + signum)


if threading.current_thread() is threading.main_thread():
    try:
        signal.signal(signal.SIGTERM, _on_term)
    except (ValueError, OSError):
        pass

_PR_SET_PDEATHSIG = 1
try:
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:
    _libc = None


def _preexec():
    # Dies with the test process (only set when spawned from the main thread:
    # the signal fires when the spawning *thread* exits).
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _popen(args, **kw):
    if threading.current_thread() is threading.main_thread():
        kw["preexec_fn"] = _preexec
    p = subprocess.Popen(args, **kw)
    _register(p)
    return p


def wait_until(predicate, timeout=10.0, interval=0.05):
    """Calls predicate() until it returns a truthy value or timeout seconds pass.
    Returns True if it succeeded, False on timeout. Exceptions raised by the
    predicate count as "not yet"."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return True
        except Exception:
            pass
        now = time.monotonic()
        if now >= deadline:
            return False
        time.sleep(min(interval, deadline - now))


# ---------------------------------------------------------------------------
# origin servers

class Origin:
    """A tests/origin/origin.py subprocess.

    Origin(name, listen="127.0.0.1:0", log=True, idle_close=None, extra_args=())
    Attributes: name, port, addr ("127.0.0.1:PORT"), log_path, fail_health_path, proc.
    """

    def __init__(self, name, listen="127.0.0.1:0", log=True, idle_close=None,
                 extra_args=(), start=True):
        self.name = name
        self.listen = listen
        self.idle_close = idle_close
        self.extra_args = list(extra_args)
        self.dir = tempfile.mkdtemp(prefix="origin-%s-" % re.sub(r"[^\w.-]", "_", name))
        self.log_path = os.path.join(self.dir, "requests.log") if log else None
        self.fail_health_path = os.path.join(self.dir, "fail-health")
        self.proc = None
        self.port = None
        self.host = None
        self._stderr_path = os.path.join(self.dir, "stderr.txt")
        if start:
            self.start()

    @property
    def addr(self):
        return "%s:%d" % (self.host, self.port)

    def start(self, timeout=10.0):
        """Starts the process (again: restart() reuses the same port)."""
        args = [sys.executable, ORIGIN_PY, "--name", self.name, "--listen", self.listen,
                "--fail-health", self.fail_health_path]
        if self.log_path:
            args += ["--log", self.log_path]
        if self.idle_close is not None:
            args += ["--idle-close", str(self.idle_close)]
        args += self.extra_args
        self._stderr = open(self._stderr_path, "ab")
        self.proc = _popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=self._stderr)
        line = self._read_first_line(timeout)
        m = re.match(r"listening on (.+):(\d+)\s*$", line or "")
        if not m:
            self.kill()
            raise RuntimeError("origin %s did not start: first line %r, stderr: %s"
                               % (self.name, line, self._read_stderr()))
        self.host = m.group(1)  # as printed: "127.0.0.1" or "[::1]"
        self.port = int(m.group(2))
        self.listen = "%s:%d" % (self.host, self.port)
        return self

    def _read_first_line(self, timeout):
        result = []

        def reader():
            try:
                result.append(self.proc.stdout.readline().decode("utf-8", "replace"))
            except Exception as e:  # pragma: no cover
                result.append("")
        t = threading.Thread(target=reader, daemon=True)
        t.start()
        t.join(timeout)
        return result[0] if result else None

    def _read_stderr(self):
        try:
            with open(self._stderr_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stats(self, timeout=5):
        """GET /__origin/stats directly: {"requests", "connections",
        "active_connections", "paths": {path: count}}."""
        status, _, body = http(self.port, "GET", "/__origin/stats", timeout=timeout,
                               host=self.host.strip("[]"))
        if status != 200:
            raise RuntimeError("origin stats: status %d" % status)
        return json.loads(body)

    def log_entries(self):
        """Parsed --log lines: dicts with name, conn_id, method, target, version,
        headers [[k, v], ...], body_len, body_sha256, time."""
        if not self.log_path or not os.path.exists(self.log_path):
            return []
        out = []
        with open(self.log_path, "r", encoding="utf-8") as f:
            for line in f:
                if line.endswith("\n"):
                    out.append(json.loads(line))
        return out

    def requests_seen(self, path_prefix=None):
        """Number of logged requests (optionally only targets starting with path_prefix)."""
        return sum(1 for e in self.log_entries()
                   if path_prefix is None or e["target"].startswith(path_prefix))

    def set_healthy(self, healthy):
        """Makes GET /healthz answer 200 (True) or 503 (False)."""
        if healthy:
            try:
                os.unlink(self.fail_health_path)
            except FileNotFoundError:
                pass
        else:
            open(self.fail_health_path, "w").close()

    def kill(self):
        """SIGKILL, then wait."""
        if self.proc is not None:
            kill_and_wait(self.proc)
            self._close_pipes()
            _unregister(self.proc)

    def stop(self):
        """SIGTERM, wait (5 s), SIGKILL if still alive."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=5)
            self._close_pipes()
            _unregister(self.proc)

    def restart(self, timeout=10.0):
        """Kills the process if running and starts it again on the same port."""
        self.kill()
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.start(timeout=max(1.0, deadline - time.monotonic()))
            except RuntimeError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.1)

    def _close_pipes(self):
        try:
            if self.proc.stdout:
                self.proc.stdout.close()
        except Exception:
            pass
        try:
            self._stderr.close()
        except Exception:
            pass

    def cleanup(self):
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cleanup()
        return False


# ---------------------------------------------------------------------------
# lb

_LISTENER_RE = re.compile(r"^lb: listener (\S+) listening on (\S+):(\d+)\s*$", re.M)
_ADMIN_RE = re.compile(r"^lb: admin listening on (\S+):(\d+)\s*$", re.M)
_READY_RE = re.compile(r"^lb: ready \((\d+) workers?\)\s*$", re.M)


class FastOrigin:
    """bench/fast_origin: answers "Hello from fast-origin\\n" to everything."""

    def __init__(self, binary):
        self.proc = _popen([binary, "--listen", "127.0.0.1:0", "--threads", "1"],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL)
        line = []
        t = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()),
                             daemon=True)
        t.start()
        t.join(10)
        m = re.match(rb"listening on (\S+):(\d+)", line[0] if line else b"")
        if not m:
            self.cleanup()
            raise RuntimeError("fast_origin did not start: %r" % line)
        self.addr = "%s:%s" % (m.group(1).decode(), m.group(2).decode())
        self.body = b"Hello from fast-origin\n"

    def cleanup(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=5)
        self.proc.stdout.close()
        _unregister(self.proc)


class LbStartError(RuntimeError):
    pass


class Lb:
    """The real lb binary, started as `$LB_BIN run -c DIR/lb.yaml`.

    Lb(yaml_text, env=None, args=None, wait_ready=True, timeout=15, cwd=None,
       binary=None)
      env:   extra environment variables (merged over os.environ), e.g.
             {"LD_PRELOAD": os.environ["LB_ALLOC_COUNTER"]}
      args:  replaces ["run", "-c", config_path] if given (use lb.config_path)
      cwd:   working directory (default: the temp dir holding the config)
    stdout (access log when path: stdout) and stderr go to files in lb.dir.
    """

    def __init__(self, yaml_text, env=None, args=None, wait_ready=True, timeout=15.0,
                 cwd=None, binary=None):
        self.dir = tempfile.mkdtemp(prefix="lb-test-")
        self.config_path = os.path.join(self.dir, "lb.yaml")
        with open(self.config_path, "w") as f:
            f.write(yaml_text)
        self.stderr_path = os.path.join(self.dir, "stderr.txt")
        self.stdout_path = os.path.join(self.dir, "stdout.txt")
        self.binary = binary or lb_bin()
        full_env = dict(os.environ)
        if env:
            full_env.update({k: str(v) for k, v in env.items()})
        self.env = full_env
        argv = [self.binary] + (list(args) if args is not None
                                else ["run", "-c", self.config_path])
        self._out = open(self.stdout_path, "wb")
        self._err = open(self.stderr_path, "wb")
        self.listeners = {}       # name -> port, in the order printed
        self.admin_port = None
        self.workers = None
        self.returncode = None
        self.proc = _popen(argv, stdin=subprocess.DEVNULL, stdout=self._out,
                           stderr=self._err, env=full_env, cwd=cwd or self.dir)
        self.pid = self.proc.pid
        if wait_ready:
            try:
                self.wait_ready(timeout)
            except BaseException:
                self.cleanup()
                raise

    def wait_ready(self, timeout=15.0):
        """Waits for "lb: ready (N workers)" and parses the listener/admin lines.
        Raises LbStartError (with stderr) if lb exits or times out first."""
        wait_until(lambda: _READY_RE.search(self.stderr_text()) or not self.running(), timeout)
        text = self.stderr_text()
        m = _READY_RE.search(text)
        if not m:
            why = "exited with %s" % self.proc.poll() if not self.running() else \
                "not ready after %.0f s" % timeout
            raise LbStartError("lb %s; stderr:\n%s" % (why, text))
        self.workers = int(m.group(1))
        for lm in _LISTENER_RE.finditer(text):
            self.listeners[lm.group(1)] = int(lm.group(3))
        am = _ADMIN_RE.search(text)
        if am:
            self.admin_port = int(am.group(2))
        return self

    def port(self, listener=None):
        """Port of the named listener; default "public" if present, else the first."""
        if listener is None:
            if "public" in self.listeners:
                return self.listeners["public"]
            if not self.listeners:
                raise LbStartError("lb printed no listener line; stderr:\n" + self.stderr_text())
            return next(iter(self.listeners.values()))
        return self.listeners[listener]

    def running(self):
        return self.proc.poll() is None

    def stderr_text(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def stdout_text(self):
        try:
            with open(self.stdout_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def write_config(self, yaml_text):
        with open(self.config_path, "w") as f:
            f.write(yaml_text)

    def reload(self, yaml_text=None):
        """Optionally rewrites the config file, then sends SIGHUP."""
        if yaml_text is not None:
            self.write_config(yaml_text)
        self.signal(signal.SIGHUP)

    def signal(self, sig):
        if self.running():
            self.proc.send_signal(sig)

    def admin(self, method, path, body=None, headers=None, timeout=10):
        """HTTP request to the admin listener -> (status, headers, body)."""
        return http(self.admin_port, method, path, headers=headers, body=body, timeout=timeout)

    def metrics_text(self, timeout=10):
        status, _, body = self.admin("GET", "/metrics", timeout=timeout)
        if status != 200:
            raise RuntimeError("GET /metrics: %d" % status)
        return body.decode()

    def metric(self, name, timeout=10, **labels):
        """Sum of the samples of metric `name` whose labels include `labels`
        (from GET /metrics); 0.0 if none."""
        return metric_value(self.metrics_text(timeout), name, **labels)

    def status_json(self, timeout=10):
        status, _, body = self.admin("GET", "/status", timeout=timeout)
        if status != 200:
            raise RuntimeError("GET /status: %d" % status)
        return json.loads(body)

    def wait_exit(self, timeout=30.0):
        """Waits for the process to exit; returns its exit code, or None on timeout."""
        try:
            self.returncode = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        return self.returncode

    def terminate(self, timeout=30.0):
        """SIGTERM, wait up to timeout, return the exit code (SIGKILL and
        return None if it did not exit in time)."""
        if self.running():
            self.proc.terminate()
        code = self.wait_exit(timeout)
        if code is None:
            self.kill()
        self._close_files()
        return code

    def kill(self):
        if self.running():
            self.proc.kill()
        try:
            self.returncode = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self._close_files()
        _unregister(self.proc)

    def _close_files(self):
        for f in (self._out, self._err):
            try:
                f.close()
            except Exception:
                pass

    def cleanup(self, keep_dir=False):
        self.kill()
        if not keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cleanup()
        return False


def one_pool_config(address, workers=1, pool_extra=""):
    """lb config: one listener on an ephemeral port, every path to one pool
    "web" of the backend at `address` (or of each address of a list); no
    access log. `pool_extra`: more lines of the pool, indented 4 spaces."""
    addresses = [address] if isinstance(address, str) else list(address)
    listed = ", ".join('{ address: "%s" }' % a for a in addresses)
    return f"""
workers: {workers}
access_log: {{ path: "off" }}
admin: {{ listen: 127.0.0.1:0 }}
listeners:
  - name: public
    listen: 127.0.0.1:0
    routes: [ {{ match: {{ path_prefix: / }}, pool: web }} ]
pools:
  web:
    backends: [ {listed} ]
{pool_extra}"""


def rss_bytes(pid):
    """Resident memory of process `pid` (VmRSS), in bytes."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS for %d" % pid)


def make_ca_and_leaf(d, name="app.test", ip="127.0.0.1"):
    """A test CA and a leaf it signed for DNS `name` and IP `ip` (openssl CLI, RSA 2048,
    2 days), written to directory d -> (ca.pem, leaf.pem, leaf.key) paths."""
    def openssl(*args):
        subprocess.run(["openssl"] + list(args), check=True, capture_output=True)
    ca, ca_key = os.path.join(d, "ca.pem"), os.path.join(d, "ca.key")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=lb test CA", "-keyout", ca_key, "-out", ca)
    cert, key, csr = (os.path.join(d, "app" + ext) for ext in (".pem", ".key", ".csr"))
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=" + name,
            "-keyout", key, "-out", csr)
    ext = os.path.join(d, "san.ext")
    with open(ext, "w") as f:
        f.write("subjectAltName=DNS:%s,IP:%s\n" % (name, ip))
    openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
            "-days", "2", "-extfile", ext, "-out", cert)
    return ca, cert, key


def lb_check(yaml_text, timeout=30.0, binary=None):
    """Runs `lb check -c FILE` on yaml_text -> (exit_code, stdout+stderr text, path)."""
    d = tempfile.mkdtemp(prefix="lb-check-")
    path = os.path.join(d, "lb.yaml")
    with open(path, "w") as f:
        f.write(yaml_text)
    try:
        r = subprocess.run([binary or lb_bin(), "check", "-c", path], stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout,
                           cwd=d)
        return r.returncode, r.stdout.decode("utf-8", "replace"), path
    finally:
        shutil.rmtree(d, ignore_errors=True)


# ---------------------------------------------------------------------------
# metrics

_SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)')
_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text):
    """Prometheus text -> list of (name, {label: value}, float)."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE_RE.match(line)
        if not m:
            continue
        labels = {k: v.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
                  for k, v in _LABEL_RE.findall(m.group(3) or "")}
        try:
            value = float(m.group(4))
        except ValueError:
            continue
        out.append((m.group(1), labels, value))
    return out


def metric_value(text, name, **labels):
    """Sum of samples named `name` whose labels include all of `labels`."""
    want = {k: str(v) for k, v in labels.items()}
    return sum(v for n, l, v in parse_metrics(text)
               if n == name and all(l.get(k) == x for k, x in want.items()))


# ---------------------------------------------------------------------------
# HTTP clients

def http(port, method, path, headers=None, body=None, timeout=10, host="127.0.0.1"):
    """One request on a fresh connection -> (status:int, headers:HTTPMessage, body:bytes).

    headers: dict or list of (name, value); a Host header given here replaces
    the default one. body: bytes/str (sent with Content-Length), or an
    iterable of bytes (sent chunked when no Content-Length header is given).
    Response headers: case-insensitive, h["X-Origin"], h.get_all("Via").
    """
    conn = _http_client.HTTPConnection(host, port, timeout=timeout)
    try:
        return _do_request(conn, method, path, headers, body)
    finally:
        conn.close()


def _do_request(conn, method, path, headers, body):
    hdrs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    names = {k.lower() for k, _ in hdrs}
    conn.putrequest(method, path, skip_host="host" in names,
                    skip_accept_encoding="accept-encoding" in names)
    chunked = False
    if body is not None and not isinstance(body, (bytes, bytearray, memoryview, str)):
        if "content-length" not in names and "transfer-encoding" not in names:
            conn.putheader("Transfer-Encoding", "chunked")
            chunked = True
    elif body is not None and "content-length" not in names:
        if isinstance(body, str):
            body = body.encode()
        conn.putheader("Content-Length", str(len(body)))
    elif body is None and method in ("POST", "PUT", "PATCH") and "content-length" not in names \
            and "transfer-encoding" not in names:
        conn.putheader("Content-Length", "0")
    for k, v in hdrs:
        conn.putheader(k, v)
    if isinstance(body, str):
        body = body.encode()
    conn.endheaders()
    if body is not None:
        if isinstance(body, (bytes, bytearray, memoryview)):
            conn.send(body)
        else:
            for piece in body:
                if not piece:
                    continue
                if chunked:
                    conn.send(b"%x\r\n" % len(piece))
                    conn.send(piece)
                    conn.send(b"\r\n")
                else:
                    conn.send(piece)
            if chunked:
                conn.send(b"0\r\n\r\n")
    resp = conn.getresponse()
    data = resp.read()
    return resp.status, resp.headers, data


class KeepAliveClient:
    """Reuses one connection for several requests.

    KeepAliveClient(port, timeout=10, host="127.0.0.1")
      .request(method, path, headers=None, body=None) -> (status, headers, body)
      .connects   number of TCP connections opened so far (1 when all requests
                  shared one connection; http.client silently reconnects after
                  the server closed, and this counts it)
      .server_closed()  True if the last response closed the connection
      .close()
    """

    def __init__(self, port, timeout=10, host="127.0.0.1"):
        client = self

        class _Conn(_http_client.HTTPConnection):
            def connect(self):
                super().connect()
                client.connects += 1

        self.connects = 0
        self.conn = _Conn(host, port, timeout=timeout)
        self._last_closed = False

    def request(self, method, path, headers=None, body=None):
        status, hdrs, data = _do_request(self.conn, method, path, headers, body)
        self._last_closed = self.conn.sock is None
        return status, hdrs, data

    def server_closed(self):
        return self._last_closed

    def close(self):
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def tls_exchange(port, data, context, server_hostname, timeout=5.0, host="127.0.0.1"):
    """Sends `data` over a new TLS connection (ssl.SSLContext `context`) and
    returns every byte received until the peer closes."""
    with socket.create_connection((host, port), timeout=timeout) as plain:
        with context.wrap_socket(plain, server_hostname=server_hostname) as s:
            s.sendall(data)
            out = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    return out
                out += chunk


def raw(port, data, timeout=5.0, host="127.0.0.1", half_close=False):
    """Connects, sends `data` (bytes), reads everything until the peer closes
    or `timeout` seconds (total) pass; returns the bytes received. With
    half_close=True, shuts down the write side after sending."""
    s = socket.create_connection((host, port), timeout=timeout)
    deadline = time.monotonic() + timeout
    chunks = []
    try:
        if data:
            s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            s.settimeout(left)
            try:
                b = s.recv(1 << 16)
            except socket.timeout:
                break
            except ConnectionResetError:
                break
            if not b:
                break
            chunks.append(b)
    finally:
        s.close()
    return b"".join(chunks)


class RawConnection:
    """A raw TCP connection for byte-exact tests (pipelining, slowloris, smuggling).

    RawConnection(port, timeout=10, host="127.0.0.1")
      .send(bytes)
      .recv_until(marker: bytes, timeout=None) -> bytes up to and including marker
                  (raises TimeoutError / ConnectionError)
      .read_response(head_request=False, timeout=None) -> (status, [(k, v)], body)
                  one response, framed by Content-Length / chunked / close
      .closed_by_peer(timeout=2.0) -> True if the peer closes (EOF or reset)
                  within timeout with no further data
      .close()
    """

    def __init__(self, port, timeout=10.0, host="127.0.0.1"):
        self.timeout = timeout
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = bytearray()

    def send(self, data):
        self.sock.sendall(data)

    def _recv(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no data before deadline")
        self.sock.settimeout(left)
        try:
            b = self.sock.recv(1 << 16)
        except socket.timeout:
            raise TimeoutError("no data before deadline")
        return b

    def recv_until(self, marker, timeout=None):
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            i = self.buf.find(marker)
            if i >= 0:
                out = bytes(self.buf[:i + len(marker)])
                del self.buf[:i + len(marker)]
                return out
            b = self._recv(deadline)
            if not b:
                raise ConnectionError("closed before %r; got %r" % (marker, bytes(self.buf)))
            self.buf += b

    def _recv_exact(self, n, deadline):
        while len(self.buf) < n:
            b = self._recv(deadline)
            if not b:
                raise ConnectionError("closed before %d bytes" % n)
            self.buf += b
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_response(self, head_request=False, timeout=None):
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            head = self.recv_until(b"\r\n\r\n", max(0.001, deadline - time.monotonic()))
            lines = head[:-4].decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ")[1])
            headers = []
            for line in lines[1:]:
                k, _, v = line.partition(":")
                headers.append((k, v.strip()))
            if 100 <= status < 200 and status != 101:
                continue  # interim response
            break
        h = {k.lower(): v for k, v in headers}
        if head_request or status in (204, 304) or 100 <= status < 200:
            return status, headers, b""
        if "chunked" in h.get("transfer-encoding", "").lower():
            body = bytearray()
            while True:
                line = self.recv_until(b"\r\n", max(0.001, deadline - time.monotonic()))
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    while self.recv_until(b"\r\n", max(0.001, deadline - time.monotonic())) \
                            != b"\r\n":
                        pass
                    return status, headers, bytes(body)
                body += self._recv_exact(size + 2, deadline)[:-2]
        if "content-length" in h:
            return status, headers, self._recv_exact(int(h["content-length"]), deadline)
        # Delimited by close.
        while True:
            b = self._recv(deadline)
            if not b:
                out = bytes(self.buf)
                self.buf.clear()
                return status, headers, out
            self.buf += b

    def closed_by_peer(self, timeout=2.0):
        deadline = time.monotonic() + timeout
        try:
            while True:
                b = self._recv(deadline)
                if not b:
                    return True
                self.buf += b
                return False
        except TimeoutError:
            return False
        except (ConnectionResetError, BrokenPipeError):
            return True

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


# ---------------------------------------------------------------------------
# unittest glue

class TestCase(unittest.TestCase):
    """unittest.TestCase whose helpers register cleanups, so processes are
    killed (and on failure lb's stderr is printed) however the test ends.

      self.origin(name, **Origin kwargs) -> Origin
      self.lb(yaml_text, **Lb kwargs)    -> Lb
    """

    def origin(self, name, **kw):
        o = Origin(name, **kw)
        self.addCleanup(o.cleanup)
        return o

    def lb(self, yaml_text, **kw):
        lb = Lb(yaml_text, **kw)
        self.addCleanup(self._lb_cleanup, lb)
        return lb

    def failed_so_far(self):
        """True if this test has already recorded a failure or an error."""
        outcome = getattr(self, "_outcome", None)
        result = getattr(outcome, "result", None)
        if result is None:
            return False
        return any(t is self for t, _ in list(result.failures) + list(result.errors))

    def _lb_cleanup(self, lb):
        failed = self.failed_so_far()
        lb.kill()
        if failed or os.environ.get("LB_TEST_VERBOSE"):
            sys.stderr.write("---- lb stderr (%s) ----\n%s\n" % (self.id(), lb.stderr_text()[-8000:]))
        lb.cleanup()


def main():
    """unittest.main() with verbosity 2; exits non-zero on failure."""
    unittest.main(verbosity=2)
