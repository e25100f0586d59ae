"""`lb check` and `lb version` as a user runs them.

Every tests/configs/bad/NAME.yaml must be refused (exit 1) with exactly the
FILE:LINE:COL lines of NAME.expected on stderr; every shipped YAML under
config/ and docker/lb.compose.yaml must pass (exit 0, "ok").

Environment: LB_BIN (the lb binary), LB_SOURCE_DIR (repository root; the cwd).
"""

import glob
import os
import re
import subprocess
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("LB_SOURCE_DIR") or os.path.abspath(os.path.join(HERE, "..", ".."))
LB_BIN = os.environ.get("LB_BIN") or os.path.join(SOURCE_DIR, "build", "lb", "lb")
BAD_DIR = os.path.join("tests", "configs", "bad")


def lb(*args):
    """Runs lb from the source dir; returns (exit code, stdout, stderr)."""
    done = subprocess.run([LB_BIN, *args], cwd=SOURCE_DIR, capture_output=True, text=True,
                          timeout=30)
    return done.returncode, done.stdout, done.stderr


def relative(paths):
    return sorted(os.path.relpath(p, SOURCE_DIR) for p in paths)


class ConfigCheck(unittest.TestCase):
    def test_bad_configs_are_refused_with_their_positions(self):
        bad = relative(glob.glob(os.path.join(SOURCE_DIR, BAD_DIR, "*.yaml")))
        self.assertTrue(bad, "no bad configs found")
        for path in bad:
            with self.subTest(config=path):
                with open(os.path.join(SOURCE_DIR, path[:-len(".yaml")] + ".expected")) as f:
                    expected = [line for line in f.read().splitlines() if line.strip()]
                self.assertTrue(expected, f"{path}: empty .expected file")
                code, out, err = lb("check", "-c", path)
                self.assertEqual(code, 1, f"stdout: {out}\nstderr: {err}")
                lines = err.splitlines()
                for line in expected:
                    self.assertIn(line, lines, f"\nstderr was:\n{err}")
                # No error beyond the expected ones: the FILE:LINE:COL lines are exactly these.
                located = [l for l in lines if re.match(re.escape(path) + r":\d+:\d+: ", l)]
                self.assertEqual(located, expected)

    def test_shipped_configs_pass(self):
        shipped = relative(glob.glob(os.path.join(SOURCE_DIR, "config", "*.yaml")) +
                           glob.glob(os.path.join(SOURCE_DIR, "config", "examples", "*.yaml")) +
                   [os.path.join(SOURCE_DIR, "docker", "lb.compose.yaml")])
        for path in shipped:
            with self.subTest(config=path):
                code, out, err = lb("check", "-c", path)
                self.assertEqual((code, out.strip()), (0, "ok"), f"stderr: {err}")

    def test_missing_file(self):
        path = os.path.join(BAD_DIR, "does-not-exist.yaml")
        code, _, err = lb("check", "-c", path)
        self.assertEqual(code, 1)
        self.assertIn(f"{path}: cannot read: No such file or directory", err.splitlines())

    def test_version(self):
        with open(os.path.join(SOURCE_DIR, "CMakeLists.txt")) as f:
            version = re.search(r"project\(lb\s+VERSION\s+([0-9.]+)", f.read()).group(1)
        code, out, _ = lb("version")
        self.assertEqual((code, out.strip()), (0, "lb " + version))


if __name__ == "__main__":
    unittest.main()
