#!/usr/bin/env python3
"""The status page (GET / on the admin listener) in a real browser.

Headless Chromium, driven over the DevTools protocol (stdlib only: a tiny
WebSocket client below), loads the page from a running lb with traffic
flowing and checks what a person would see:
- every backend's address and state, every region with its traffic share,
  requests/s computed from successive /status samples;
- clicking a backend's Drain button drains it in lb (/status says so) and the
  row then reads "drained" with an Enable button; Enable brings it back;
- a phone-sized viewport has no horizontal scrolling;
- the page loads nothing from anywhere else.
A screenshot (a pool with 3 backends, one drained) is written to the test's
temp dir, or to docs/status-page.png with LB_UPDATE_SCREENSHOT=1.

Skipped when /usr/bin/chromium is missing (.ci/setup.sh installs it).
"""

import base64
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from urllib.parse import urlsplit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import http, wait_until  # noqa: E402

CHROMIUM = "/usr/bin/chromium"


class DevTools:
    """One DevTools protocol session over a WebSocket (RFC 6455, text frames only)."""

    def __init__(self, ws_url, timeout=30):
        u = urlsplit(ws_url)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(("GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                           "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n"
                           % (u.path, u.hostname, u.port, key)).encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self.buf += self._recv()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise ConnectionError("DevTools refused the WebSocket: %r" % head)
        self.next_id = 0

    def _recv(self):
        b = self.sock.recv(1 << 16)
        if not b:
            raise ConnectionError("DevTools closed the connection")
        return b

    def _exact(self, n):
        while len(self.buf) < n:
            self.buf += self._recv()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _send(self, opcode, payload):
        n = len(payload)
        head = bytes([0x80 | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 1 << 16:
            head += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack("!Q", n)
        mask = os.urandom(4)
        masked = bytes(c ^ mask[i & 3] for i, c in enumerate(payload))
        self.sock.sendall(head + mask + masked)

    def _message(self):
        parts = []
        while True:
            b0, b1 = self._exact(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._exact(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._exact(8))[0]
            mask = self._exact(4) if b1 & 0x80 else None
            payload = self._exact(n)
            if mask:
                payload = bytes(c ^ mask[i & 3] for i, c in enumerate(payload))
            opcode = b0 & 0x0F
            if opcode == 8:
                raise ConnectionError("DevTools sent close")
            if opcode == 9:
                self._send(10, payload)
                continue
            if opcode == 10:
                continue
            parts.append(payload)
            if b0 & 0x80:
                return b"".join(parts)

    def call(self, method, **params):
        self.next_id += 1
        self._send(1, json.dumps({"id": self.next_id, "method": method, "params": params}).encode())
        while True:
            msg = json.loads(self._message())
            if msg.get("id") == self.next_id:  # anything else is an event: ignored
                if "error" in msg:
                    raise RuntimeError("%s: %s" % (method, msg["error"]))
                return msg["result"]

    def evaluate(self, expression):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                      awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError("JS error in %r: %s" % (expression, r["exceptionDetails"]))
        return r["result"].get("value")

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class Browser:
    """Headless Chromium with remote debugging on a port it picks itself."""

    def __init__(self):
        self.profile = tempfile.mkdtemp(prefix="lb-chromium-")
        args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                "--user-data-dir=" + self.profile, "--remote-debugging-port=0",
                "--remote-debugging-address=127.0.0.1", "--window-size=1280,900", "about:blank"]
        self.log = open(os.path.join(self.profile, "chromium.log"), "wb")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=self.log, start_new_session=True,
                                     preexec_fn=harness._preexec)
        harness._register(self.proc)
        port_file = os.path.join(self.profile, "DevToolsActivePort")
        if not wait_until(lambda: os.path.getsize(port_file) > 0, 60, 0.1):
            self.close()
            raise RuntimeError("chromium did not start (no DevToolsActivePort)")
        self.port = int(open(port_file).read().split()[0])

    def page(self):
        """A DevTools session on the (one) page target."""
        def target():
            with urllib.request.urlopen("http://127.0.0.1:%d/json/list" % self.port,
                                        timeout=5) as r:
                pages = [t for t in json.load(r) if t.get("type") == "page"]
            return pages[0]["webSocketDebuggerUrl"] if pages else None
        found = []
        self.assert_ok(wait_until(lambda: found.append(target()) or found[-1], 30),
                       "no page target")
        return DevTools(found[-1])

    def assert_ok(self, ok, what):
        if not ok:
            raise RuntimeError("chromium: " + what)

    def close(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        harness._unregister(self.proc)
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)


def config(us1, us2, eu, api, listen="127.0.0.1:0"):
    return f"""
workers: 2
access_log: {{ path: "off" }}
admin: {{ listen: 127.0.0.1:0 }}
listeners:
  - name: public
    listen: {listen}
    routes:
      - {{ match: {{ path_prefix: /api/ }}, pool: api }}
      - {{ match: {{ path_prefix: / }}, pool: web }}
pools:
  web:
    regions:
      - name: us-east
        priority: 0
        backends: [ {{ address: {us1.addr} }}, {{ address: {us2.addr} }} ]
      - name: eu-west
        priority: 0
        backends: [ {{ address: {eu.addr} }} ]
  api:
    backends: [ {{ address: {api.addr} }} ]
"""

ROWS_JS = """JSON.stringify([...document.querySelectorAll('tr[data-backend]')].map(r => ({
  pool: r.dataset.pool, address: r.dataset.backend,
  shown: r.querySelector('td.addr').textContent,
  state: r.querySelector('.state').textContent,
  button: r.querySelector('button.drain, button.enable').className,
  rps: r.querySelector('.rps').textContent})))"""

REGIONS_JS = """JSON.stringify([...document.querySelectorAll('section.pool')].map(s => ({
  pool: s.dataset.pool,
  regions: [...s.querySelectorAll('.regions > .region')].map(r => [r.dataset.region,
                                                        r.querySelector('.pct').textContent])})))"""


class StatusPage(harness.TestCase):
    def setUp(self):
        if not os.path.exists(CHROMIUM):
            self.skipTest("%s is missing: install the chromium package (.ci/setup.sh does)"
                          % CHROMIUM)

    def traffic(self, port):
        """Steady requests through lb (a few 5xx among them) until the test ends."""
        stop = threading.Event()

        def run():
            i = 0
            while not stop.is_set():
                i += 1
                path = "/status/500" if i % 25 == 0 else ("/api/%d" % i if i % 4 == 0 else "/x")
                try:
                    http(port, "GET", path, timeout=5)
                except OSError:
                    pass
                stop.wait(0.02)
        t = threading.Thread(target=run, daemon=True)
        t.start()
        self.addCleanup(t.join, 5)
        self.addCleanup(stop.set)

    def test_page_shows_backends_and_drains_on_click(self):
        us1, us2 = self.origin("us-1", log=False), self.origin("us-2", log=False)
        eu, api = self.origin("eu-1", log=False), self.origin("api-1", log=False)
        # /status shows listeners as configured: give the docs screenshot a real port.
        listen = "127.0.0.1:%d" % harness.unused_port() if os.environ.get(
            "LB_UPDATE_SCREENSHOT") else "127.0.0.1:0"
        lb = self.lb(config(us1, us2, eu, api, listen))
        self.traffic(lb.port())

        status, _, html = lb.admin("GET", "/")
        self.assertEqual(status, 200)
        self.assertIsNone(re.search(rb'(src|href)\s*=\s*["\']?(https?:)?//', html),
                          "the page must not load anything from elsewhere")

        browser = Browser()
        self.addCleanup(browser.close)
        page = browser.page()
        self.addCleanup(page.close)
        page.call("Emulation.setDeviceMetricsOverride", width=1280, height=900,
                  deviceScaleFactor=1, mobile=False)
        page.call("Page.navigate", url="http://127.0.0.1:%d/" % lb.admin_port)

        backends = {us1.addr: "web", us2.addr: "web", eu.addr: "web", api.addr: "api"}

        def rows():
            return {r["address"]: r for r in json.loads(page.evaluate(ROWS_JS) or "[]")}
        self.assertTrue(wait_until(lambda: set(rows()) == set(backends), 20),
                        "the page did not list the backends: %r" % rows())
        for address, r in rows().items():
            self.assertEqual((r["pool"], r["shown"], r["state"], r["button"]),
                             (backends[address], address, "healthy", "drain"), r)
        regions = {p["pool"]: dict(p["regions"]) for p in json.loads(page.evaluate(REGIONS_JS))}
        self.assertEqual(regions, {"web": {"us-east": "50%", "eu-west": "50%"},
                                   "api": {"default": "100%"}})
        # Rates need two samples a second apart; traffic is flowing.
        self.assertTrue(wait_until(lambda: rows()[us1.addr]["rps"] not in ("–", "0.0"), 10),
                        "no requests/s shown: %r" % rows())

        # Click Drain on us-1: lb drains it, and the page says so.
        page.evaluate("document.querySelector('[data-backend=\"%s\"] button.drain').click()"
                      % us1.addr)
        self.assertTrue(wait_until(lambda: [b for p in lb.status_json()["pools"]
                                            for b in p["backends"]
                                            if b["address"] == us1.addr][0]["drained"], 5),
                        "clicking Drain did not drain the backend in lb")
        self.assertTrue(wait_until(lambda: rows()[us1.addr]["state"] == "drained", 5),
                        rows().get(us1.addr))
        self.assertEqual(rows()[us1.addr]["button"], "enable")
        for address in (us2.addr, eu.addr, api.addr):
            self.assertEqual(rows()[address]["state"], "healthy")
        # A drained backend does not count against its region's health: us-2 now takes
        # all of us-east's half.
        self.assertEqual({p["pool"]: dict(p["regions"]) for p in json.loads(
            page.evaluate(REGIONS_JS))}["web"], {"us-east": "50%", "eu-west": "50%"})

        if os.environ.get("LB_UPDATE_SCREENSHOT"):
            time.sleep(12)  # for docs: more samples for the sparklines
        height = page.evaluate("document.documentElement.scrollHeight")
        page.call("Emulation.setDeviceMetricsOverride", width=1280, height=int(height),
                  deviceScaleFactor=1, mobile=False)
        shot = base64.b64decode(page.call("Page.captureScreenshot", format="png")["data"])
        self.assertTrue(shot.startswith(b"\x89PNG\r\n\x1a\n") and len(shot) > 20000)
        if os.environ.get("LB_UPDATE_SCREENSHOT"):
            path = os.path.join(harness.SOURCE_DIR, "docs", "status-page.png")
            os.makedirs(os.path.dirname(path), exist_ok=True)
        else:
            path = os.path.join(lb.dir, "status-page.png")
        with open(path, "wb") as f:
            f.write(shot)

        # Enable again from the page.
        page.evaluate("document.querySelector('[data-backend=\"%s\"] button.enable').click()"
                      % us1.addr)
        self.assertTrue(wait_until(lambda: rows()[us1.addr]["state"] == "healthy", 5),
                        rows().get(us1.addr))
        self.assertFalse([b for p in lb.status_json()["pools"] for b in p["backends"]
                          if b["address"] == us1.addr][0]["drained"])

        # A phone: everything fits the width (columns hide, nothing scrolls sideways).
        page.call("Emulation.setDeviceMetricsOverride", width=390, height=844,
                  deviceScaleFactor=2, mobile=True)
        overflow = ("[document.documentElement.scrollWidth - innerWidth].concat("
                    "[...document.querySelectorAll('.table-wrap')].map("
                    "w => w.scrollWidth - w.clientWidth))")
        self.assertTrue(wait_until(lambda: max(page.evaluate(overflow)) <= 0, 5),
                        "the page or a table scrolls sideways at 390 px: %r px too wide"
                        % page.evaluate(overflow))
        self.assertEqual(rows()[us1.addr]["state"], "healthy")


if __name__ == "__main__":
    harness.main()
