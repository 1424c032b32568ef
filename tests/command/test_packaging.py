"""packaging/, as `meson install` puts it into a temporary directory.

  test_01: `systemd-analyze verify` passes on the installed unit, with no
           warning (an unknown setting or value is only a warning to it),
           once ExecStart points at the binary in the tree; the unit is
           Type=notify as User=tokenshm, runs the installed refresher with
           /etc/tokenshm/config.json, and keeps the settings that would hide
           or delete the segment (PrivateDevices, RemoveIPC, DynamicUser) off.
  test_02: `systemd-analyze security --offline` rates the unit's exposure at
           2.0 or below (it is 1.8 with systemd 252): hardening stays.
  test_03: `systemd-sysusers --dry-run` into an empty root accepts the
           sysusers file and would create the user and group tokenshm.
  test_04: the example configuration parses: with its files and group
           swapped for ones that exist here, `--check-config` says OK for
           both credentials; as shipped, it fails only on what this host
           lacks (the group or a file), exit 2, one line.
  test_05: `tokenshm-refresher --version` names the project's version, and
           `--help` lists every option the argument parser knows.
"""

import grp
import json
import os
import re
import secrets
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
import harness  # noqa: E402
import installed  # noqa: E402
from harness import IntegrationTest, Workspace  # noqa: E402


def unit_settings(text):
    """{key: [values]} of a unit file's settings."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;[":
            continue
        k, _, v = line.partition("=")
        out.setdefault(k.strip(), []).append(v.strip())
    return out


class Packaging(IntegrationTest):

    @classmethod
    def setUpClass(cls):
        cls.tree_ws = Workspace("packaging-tree")
        cls.tree = installed.install(os.path.join(cls.tree_ws.dir, "destdir"))

    def require(self, tool):
        if shutil.which(tool) is None:
            self.fail(f"{tool} is not installed (scripts/setup installs systemd)")

    def verifiable_unit(self):
        """The installed unit, its ExecStart pointed at the binary in the tree
        (verify checks that it exists), in a directory of its own."""
        t = self.tree
        with open(t.unit) as f:
            text = f.read()
        d = os.path.join(self.ws.dir, "units")
        os.mkdir(d)
        path = os.path.join(d, "tokenshm-refresher.service")
        with open(path, "w") as f:
            f.write(text.replace(t.bindir + "/", t.path(t.bindir) + "/"))
        return text, path

    def test_01_unit_verifies(self):
        self.require("systemd-analyze")
        text, path = self.verifiable_unit()
        r = subprocess.run(["systemd-analyze", "verify", "--man=no", path], capture_output=True,
                           text=True, timeout=60)
        self.assertEqual(r.returncode, 0, "systemd-analyze verify: " + r.stderr)
        self.assertEqual(r.stderr.strip(), "", "systemd-analyze verify warns")

        s = unit_settings(text)
        self.assertEqual(s.get("Type"), ["notify"])
        self.assertEqual(s.get("User"), ["tokenshm"])
        self.assertEqual(s.get("ExecStart"), [
            f"{self.tree.bindir}/tokenshm-refresher --config /etc/tokenshm/config.json"])
        self.assertEqual(s.get("ExecReload"), ["/bin/kill -HUP $MAINPID"])
        for key in ("WatchdogSec", "StateDirectory", "RuntimeDirectory", "NoNewPrivileges",
                    "ProtectSystem", "ProtectHome", "PrivateTmp", "RestrictAddressFamilies",
                    "MemoryDenyWriteExecute", "SystemCallFilter"):
            self.assertIn(key, s, f"the unit does not set {key}")
        self.assertEqual(s["ProtectSystem"], ["strict"])
        self.assertEqual(s["PrivateNetwork"], ["no"])
        # A private /dev hides the segment from readers; RemoveIPC (and
        # DynamicUser, which implies it) deletes it at every stop.
        self.assertNotIn("PrivateDevices", s)
        self.assertNotIn("DynamicUser", s)
        self.assertEqual(s.get("RemoveIPC"), ["no"])
        self.assertEqual(s.get("RuntimeDirectoryPreserve"), ["yes"])
        self.assertIn("RemoveIPC", text.split("[Unit]")[0], "the note on RemoveIPC is missing")

    def test_02_exposure_stays_low(self):
        self.require("systemd-analyze")
        _, path = self.verifiable_unit()
        # --threshold is in tenths: 20 is an exposure of 2.0.
        r = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--threshold=20",
                            "--no-pager", path], capture_output=True, text=True, timeout=60)
        overall = re.search(r"Overall exposure level for \S+: ([\d.]+)", r.stdout)
        self.assertEqual(r.returncode, 0,
                         "exposure above 2.0: " + (overall.group(1) if overall else r.stderr))

    def test_03_sysusers_file(self):
        self.require("systemd-sysusers")
        root = os.path.join(self.ws.dir, "root")
        os.mkdir(root)
        r = subprocess.run(["systemd-sysusers", "--dry-run", f"--root={root}", self.tree.sysusers],
                           capture_output=True, text=True, timeout=60)
        out = r.stdout + r.stderr
        self.assertEqual(r.returncode, 0, "systemd-sysusers: " + out)
        self.assertIn("Creating group 'tokenshm'", out)
        self.assertIn("Creating user 'tokenshm'", out)
        self.assertNotIn("Unknown", out)

    def check_config(self, path):
        return subprocess.run([harness.REFRESHER, "--check-config", "--config", path],
                              capture_output=True, text=True, timeout=30)

    def test_04_example_config_parses(self):
        ws = self.ws
        with open(self.tree.example_config) as f:
            cfg = json.load(f)
        r = self.check_config(self.tree.example_config)
        self.assertEqual(r.returncode, 2, "the example, as shipped, checked OK on a host without "
                         "its group and files: " + r.stdout + r.stderr)
        lines = r.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, r.stderr)
        self.assertRegex(lines[0],
                         r"no such group|No such file|Permission denied|does not exist|missing",
                         "the shipped example fails for another reason than what this host lacks")

        # Its files and group swapped for ones that exist here: OK.
        cfg["group"] = grp.getgrgid(os.getgid()).gr_name
        cfg["state_dir"] = ws.state_dir
        cfg["control_socket"] = os.path.join(ws.dir, "ctl.sock")
        for c in cfg["credentials"]:
            for key in ("client_secret_file", "refresh_token_file"):
                if key in c:
                    c[key] = ws.secret_file(os.path.basename(c[key]), secrets.token_hex(16))
        path = os.path.join(ws.dir, "example.json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        r = self.check_config(path)
        self.assertEqual(r.returncode, 0, "the example does not parse: " + r.stderr)
        self.assertIn(f"OK, {len(cfg['credentials'])} credential(s)", r.stdout)
        self.assertEqual(r.stderr.strip(), "", "the example draws warnings")

    def test_05_version_and_help(self):
        r = subprocess.run([harness.REFRESHER, "--version"], capture_output=True, text=True,
                           timeout=10)
        self.assertEqual(r.returncode, 0)
        self.assertEqual(r.stdout, f"tokenshm-refresher {installed.project_version()}\n")

        r = subprocess.run([harness.REFRESHER, "--help"], capture_output=True, text=True,
                           timeout=10)
        self.assertEqual(r.returncode, 0)
        self.assertEqual(r.stderr, "")
        main_cpp = os.path.join(harness.SOURCE_DIR, "refresher", "main.cpp")
        with open(main_cpp) as f:
            options = set(re.findall(r'a == "(-[-a-z]+)"', f.read()))
        self.assertIn("--config", options, "could not read the options from refresher/main.cpp")
        undocumented = sorted(o for o in options if not re.search(
            r"(^|[\s,])" + re.escape(o) + r"\b", r.stdout))
        self.assertEqual(undocumented, [], "options missing from --help")


if __name__ == "__main__":
    harness.main()
