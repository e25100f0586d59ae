#!/usr/bin/env python3
"""docker/Dockerfile, checked without Docker (which cannot run here): the
runtime stage installs the Debian package of every shared library the lb
binary loads (`ldd`, mapped to packages with `dpkg -S`), so the image
does not start a binary that cannot find its libraries.
"""

import os
import re
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
# In every debian:12-slim image already.
BASE = {"libc6", "libgcc-s1"}


def runtime_packages(dockerfile):
    """The packages the last stage's `apt-get install` lines name."""
    text = open(dockerfile).read().replace("\\\n", " ")
    last_stage = text[text.rindex("\nFROM "):]
    packages = set()
    for line in last_stage.splitlines():
        m = re.search(r"apt-get install\s+(.*?)(&&|$)", line)
        if m:
            packages |= {w for w in m.group(1).split() if not w.startswith("-")}
    return packages


class DockerFiles(unittest.TestCase):
    @unittest.skipIf(os.environ.get("LB_SANITIZED") == "1",
                     "a sanitizer build loads libasan/libubsan; the image is a Release build")
    def test_runtime_stage_has_every_library_lb_loads(self):
        out = subprocess.run(["ldd", harness.lb_bin()], capture_output=True, text=True,
                             check=True).stdout
        paths = re.findall(r"=>\s+(/\S+)", out)
        self.assertTrue(paths, out)
        needed = set()
        for path in paths:
            real = os.path.realpath(path)
            found = None
            for candidate in (path, real, "/usr" + path if not path.startswith("/usr") else path):
                r = subprocess.run(["dpkg", "-S", candidate], capture_output=True, text=True)
                if r.returncode == 0:
                    found = r.stdout.split(":")[0]
                    break
            self.assertIsNotNone(found, "no Debian package owns %s" % path)
            needed.add(found)
        missing = needed - BASE - runtime_packages(os.path.join(ROOT, "docker", "Dockerfile"))
        self.assertEqual(missing, set(),
                         "docker/Dockerfile's runtime stage does not install %s" % sorted(missing))


if __name__ == "__main__":
    harness.main()
