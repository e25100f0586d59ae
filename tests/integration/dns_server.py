"""A real DNS server for lb's integration tests: dnsmasq serving only the records a test gives
(Python stdlib only).

    from dns_server import Dnsmasq

    with Dnsmasq({"app.internal": ["127.0.0.2", "127.0.0.3"]},
                 [("_http._tcp.app.internal", "app.internal", 8080, 10, 1)],
                 ttl=1) as dns:
        # lb config:  dns: { servers: ["127.0.0.1:%d" % dns.port] }
        dns.restart(a_records={"app.internal": ["127.0.0.4"]})   # same port, new records
        dns.stop(freeze=True)     # SIGSTOP: still bound, answers nothing (queries time out)
        dns.resume()              # SIGCONT
        dns.query("app.internal", "A")  # -> (rcode, [("A", ttl, "127.0.0.4")]), no c-ares

dnsmasq runs as the current user (--no-daemon never changes user id and writes no pid file),
on 127.0.0.1 only, UDP and TCP on one ephemeral port, reading no /etc/dnsmasq.conf,
/etc/hosts or resolv.conf, forwarding nothing: a name it was not given is NXDOMAIN. Its
config, query log and output are in a temp dir (`dir`), removed by cleanup(). Every record is
served with the TTL given: --host-record=NAME,ADDRESS,TTL for addresses, --local-ttl=TTL for
the SRV (and TXT) records, which take no TTL of their own.

Like the processes of harness.py, dnsmasq is killed at test end however it ends: cleanup() and
the context manager, an atexit hook (which removes the temp dir too), and PR_SET_PDEATHSIG when
started from the main thread.
"""

import atexit
import ipaddress
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time

from harness import _preexec, kill_and_wait  # dies with the test process, as harness's processes do

DNSMASQ = "/usr/sbin/dnsmasq"

_TYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "TXT": 16, "AAAA": 28, "SRV": 33}
_TYPE_NAMES = {v: k for k, v in _TYPES.items()}

_live = set()  # the Dnsmasq objects not cleaned up yet
_live_lock = threading.Lock()


def _cleanup_all():
    with _live_lock:
        servers = list(_live)
    for server in servers:
        try:
            server.cleanup()
        except Exception:
            pass


atexit.register(_cleanup_all)


def _free_port():
    """A loopback port free for both UDP and TCP (dnsmasq serves both on one port)."""
    for _ in range(100):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            t.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            u.close()
            t.close()
    raise RuntimeError("no port free for both UDP and TCP")


class Dnsmasq:
    """Dnsmasq(a_records=None, srv_records=None, ttl=5)

      a_records:   {name: [address, ...]}; IPv4 addresses become A records, IPv6 ones AAAA.
                   An empty list makes a name that exists without addresses (NODATA).
      srv_records: [(name, target, port, priority, weight), ...]; target "." is "no service".
      ttl:         seconds, for every record.
    Methods: start(), restart(a_records=None, srv_records=None, ttl=None) (None: keep),
    stop(freeze=False), resume(), cleanup(), query(name, qtype, tcp=False),
    queries(name=None, qtype=None). Attributes: port (set by start()), addr ("127.0.0.1:PORT"),
    dir, log_path, proc.
    """

    def __init__(self, a_records=None, srv_records=None, ttl=5):
        self.a_records = dict(a_records or {})
        self.srv_records = list(srv_records or [])
        self.ttl = int(ttl)
        self.port = None
        self.proc = None
        self.dir = tempfile.mkdtemp(prefix="dnsmasq-")
        self.config_path = os.path.join(self.dir, "dnsmasq.conf")
        self.log_path = os.path.join(self.dir, "dnsmasq.log")
        self.pid_path = os.path.join(self.dir, "dnsmasq.pid")
        self.output_path = os.path.join(self.dir, "output.txt")
        self._output = None
        with _live_lock:
            _live.add(self)

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    # -- process ---------------------------------------------------------------------------

    def start(self, timeout=10.0):
        """Starts dnsmasq (on a new ephemeral port the first time, on the same port after) and
        waits until it answers. Returns self."""
        deadline = time.monotonic() + timeout
        while True:
            if self.port is None:
                port, fixed = _free_port(), False
            else:
                port, fixed = self.port, True
            self._spawn(port)
            if self._wait_ready(port, deadline):
                self.port = port
                return self
            self._kill()
            # A port taken meanwhile: pick another, unless it must stay (restart).
            if time.monotonic() >= deadline:
                raise RuntimeError("dnsmasq did not start on port %d; output:\n%s"
                                   % (port, self._read(self.output_path)))
            if not fixed:
                continue
            time.sleep(0.1)

    def restart(self, a_records=None, srv_records=None, ttl=None, timeout=10.0):
        """Kills dnsmasq and starts it again on the same port, with new records (None keeps
        the current ones). Returns self."""
        if a_records is not None:
            self.a_records = dict(a_records)
        if srv_records is not None:
            self.srv_records = list(srv_records)
        if ttl is not None:
            self.ttl = int(ttl)
        self._kill()
        return self.start(timeout)

    def stop(self, freeze=False):
        """Stops serving. freeze=False: kills the process (the port is free, a query is
        refused). freeze=True: SIGSTOP, so the port stays bound and queries time out, until
        resume()."""
        if freeze:
            if self.running():
                self.proc.send_signal(signal.SIGSTOP)
        else:
            self._kill()

    def resume(self):
        """Undoes stop(freeze=True): SIGCONT. dnsmasq then answers the queries queued
        meanwhile too."""
        if self.running():
            self.proc.send_signal(signal.SIGCONT)

    def cleanup(self):
        self._kill()
        shutil.rmtree(self.dir, ignore_errors=True)
        with _live_lock:
            _live.discard(self)

    def __enter__(self):
        if not self.running():
            self.start()
        return self

    def __exit__(self, *exc):
        self.cleanup()
        return False

    def _config(self):
        lines = []
        for name, addresses in self.a_records.items():
            for a in addresses:
                ipaddress.ip_address(a)  # refuses a typo here rather than in dnsmasq's log
                lines.append("host-record=%s,%s,%d" % (name, a, self.ttl))
            if not addresses:
                lines.append("txt-record=%s,no-addresses" % name)
        for name, target, port, priority, weight in self.srv_records:
            lines.append("srv-host=%s,%s,%d,%d,%d" % (name, target, port, priority, weight))
        return "".join(line + "\n" for line in lines)

    def _spawn(self, port):
        with open(self.config_path, "w") as f:
            f.write(self._config())
        args = [DNSMASQ,
                "--no-daemon",                         # foreground, same user, no TCP children
                "--conf-file=" + self.config_path,     # and not /etc/dnsmasq.conf
                "--no-hosts", "--no-resolv",
                "--local=/#/",                         # every other name: NXDOMAIN, not forwarded
                "--bind-interfaces", "--listen-address=127.0.0.1", "--port=%d" % port,
                "--local-ttl=%d" % self.ttl,           # SRV and TXT records
                "--log-queries", "--log-facility=" + self.log_path,
                "--pid-file=" + self.pid_path]
        self._output = open(self.output_path, "ab")
        kw = {}
        if threading.current_thread() is threading.main_thread():
            kw["preexec_fn"] = _preexec
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self._output,
                                     stderr=subprocess.STDOUT, **kw)

    def _wait_ready(self, port, deadline):
        """Whether dnsmasq answers on `port` (any answer) before `deadline` without exiting."""
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                _ask(port, "probe.invalid", "A", False, 0.1)
                return True
            except OSError:  # socket.timeout, or refused: not bound yet
                pass
        return False

    def _kill(self):
        if self.proc is not None:
            kill_and_wait(self.proc)
            self.proc = None
        if self._output is not None:
            self._output.close()
            self._output = None

    @staticmethod
    def _read(path):
        try:
            with open(path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    # -- checks that do not go through lb's resolver ------------------------------------------

    def queries(self, name=None, qtype=None):
        """How many queries dnsmasq logged since the first start (the log survives restarts):
        all, or those for `name` and/or of `qtype` ("A", "AAAA", "SRV")."""
        n = 0
        for m in re.finditer(r"query\[(\w+)\] (\S+) from", self._read(self.log_path)):
            if (qtype is None or m.group(1) == qtype) and (name is None or m.group(2) == name):
                n += 1
        return n

    def query(self, name, qtype="A", tcp=False, timeout=2.0):
        """One query to this dnsmasq -> (rcode, [(type, ttl, value), ...]) for the answer
        section: value is the address for A/AAAA, (priority, weight, port, target) for SRV."""
        if self.port is None:
            raise RuntimeError("dnsmasq is not started")
        return _ask(self.port, name, qtype, tcp, timeout)


def _ask(port, name, qtype, tcp, timeout):
    qid = random.randrange(1 << 16)
    packet = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.rstrip(".").split("."):
        packet += bytes([len(label)]) + label.encode()
    packet += b"\0" + struct.pack(">HH", _TYPES[qtype], 1)
    if tcp:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(struct.pack(">H", len(packet)) + packet)
            size = struct.unpack(">H", _recv_exact(s, 2))[0]
            data = _recv_exact(s, size)
    else:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.connect(("127.0.0.1", port))
            s.send(packet)
            while True:  # skips late answers to earlier queries
                data = s.recv(65535)
                if len(data) >= 12 and struct.unpack(">H", data[:2])[0] == qid:
                    break
    return _parse(data)


def _recv_exact(s, n):
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed after %d of %d bytes" % (len(data), n))
        data += chunk
    return data


def _name(data, i):
    """The (possibly compressed) name at offset i -> (name, offset after it)."""
    labels, end, hops = [], None, 0
    while True:
        n = data[i]
        if n & 0xC0 == 0xC0:
            if end is None:
                end = i + 2
            i = (n & 0x3F) << 8 | data[i + 1]
            hops += 1
            if hops > 64:
                raise ValueError("compression loop")
            continue
        if n == 0:
            return ".".join(labels), (end if end is not None else i + 1)
        labels.append(data[i + 1:i + 1 + n].decode("ascii", "replace"))
        i += 1 + n


def _parse(data):
    _, flags, qd, an, _, _ = struct.unpack(">HHHHHH", data[:12])
    i = 12
    for _ in range(qd):
        i = _name(data, i)[1] + 4
    records = []
    for _ in range(an):
        i = _name(data, i)[1]
        rtype, _, ttl, size = struct.unpack(">HHIH", data[i:i + 10])
        i += 10
        rdata = data[i:i + size]
        if rtype == 1:
            value = socket.inet_ntop(socket.AF_INET, rdata)
        elif rtype == 28:
            value = socket.inet_ntop(socket.AF_INET6, rdata)
        elif rtype == 33:
            value = struct.unpack(">HHH", rdata[:6]) + (_name(data, i + 6)[0],)
        elif rtype == 5:
            value = _name(data, i)[0]
        else:
            value = rdata
        records.append((_TYPE_NAMES.get(rtype, rtype), ttl, value))
        i += size
    return flags & 0xF, records
