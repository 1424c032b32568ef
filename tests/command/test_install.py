"""`meson install` into a temporary directory, and programs built against it.

  test_01: the tree holds the binaries, the headers, libtokenshm (with its
           soname link and the unversioned link to build against),
           tokenshm.pc, the systemd unit, the sysusers file, the example
           configuration and the notes on running it under systemd.
  test_02: the installed tokenshm-refresher runs (--version names the
           project's version) and so does the installed tokenshm, which
           finds the installed libtokenshm.
  test_03: a C and a C++ consumer (tests/command/consumer/), compiled with
           the flags `pkg-config --cflags --libs tokenshm` gives for the
           tree, read the token that the installed refresher keeps for a
           credential of the oidc test server, equal to `tokenshm get`'s.
"""

import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
import harness  # noqa: E402
import installed  # noqa: E402
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "reader"))
import pyutil  # noqa: E402
from harness import IntegrationTest, Workspace, remember_basic  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
HEADERS = ("tokenshm/tokenshm.h", "tokenshm/reader.hpp", "tokenshm/layout.h",
           "tokenshm/expected.hpp", "tokenshm/shm/record.hpp", "tokenshm/shm/layout.hpp")


class InstalledRefresher(harness.Refresher):
    """harness.Refresher, but running the installed binary."""

    def __init__(self, ws, binary, config_path, env):
        self.ws = ws
        self.log_path = ws.log_path("installed-refresher.log")
        with open(self.log_path, "ab") as err:
            self.proc = harness.spawn([binary, "--config", config_path], subprocess.DEVNULL, err,
                                      env=env)
        self.pid = self.proc.pid


class Install(IntegrationTest):

    @classmethod
    def setUpClass(cls):
        cls.tree_ws = Workspace("install-tree")
        cls.tree = installed.install(os.path.join(cls.tree_ws.dir, "destdir"))

    def test_01_files_are_installed(self):
        t = self.tree
        missing = []
        for name in ("tokenshm-refresher", "tokenshm"):
            p = t.bin(name)
            if not (os.path.isfile(p) and os.access(p, os.X_OK)):
                missing.append(p)
        for h in HEADERS:
            if not os.path.isfile(t.path(os.path.join(t.includedir, h))):
                missing.append(h)
        libdir = t.path(t.libdir)
        for f in ("libtokenshm.so", "pkgconfig/tokenshm.pc"):
            if not os.path.exists(os.path.join(libdir, f)):
                missing.append(os.path.join(libdir, f))
        for p in (t.unit, t.sysusers, t.example_config,
                  os.path.join(os.path.dirname(t.example_config), "systemd.md")):
            if not os.path.isfile(p):
                missing.append(p)
        self.assertEqual(missing, [], "not installed")
        sonames = [f for f in os.listdir(libdir) if f.startswith("libtokenshm.so.")]
        self.assertTrue(sonames, "no versioned libtokenshm.so.N")
        with open(os.path.join(libdir, "pkgconfig", "tokenshm.pc")) as f:
            pc = f.read()
        self.assertIn(f"Version: {installed.project_version()}", pc)

    def test_02_installed_programs_run(self):
        t = self.tree
        r = subprocess.run([t.bin("tokenshm-refresher"), "--version"], capture_output=True,
                           text=True, timeout=10, env=t.env())
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.strip(), f"tokenshm-refresher {installed.project_version()}")
        r = subprocess.run([t.bin("tokenshm"), "--help"], capture_output=True, text=True,
                           timeout=10, env=t.env())
        self.assertEqual(r.returncode, 0, "the installed tokenshm does not run: " + r.stderr)

    def compile(self, source, compiler, std):
        t = self.tree
        pc = subprocess.run(["pkg-config", "--cflags", "--libs", "tokenshm"], capture_output=True,
                            text=True, timeout=30, env=t.env())
        self.assertEqual(pc.returncode, 0, "pkg-config does not find tokenshm: " + pc.stderr)
        flags = pc.stdout.split()
        self.assertTrue(any(f.startswith("-I" + t.destdir) for f in flags),
                        "pkg-config's -I does not point into the installed tree")
        out = os.path.join(self.ws.dir, os.path.basename(source) + ".bin")
        # A consumer of a sanitizer build is built with the same sanitizers
        # (their runtime must come first); pkg-config cannot know that.
        lib = t.path(os.path.join(t.libdir, "libtokenshm.so"))
        sanitize = ["-fsanitize=address,undefined"] if pyutil.asan_runtime(lib) else []
        argv = [compiler, f"-std={std}", "-Wall", "-Wextra", "-Werror", *sanitize, source, "-o",
                out, *flags]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=180)
        self.assertEqual(r.returncode, 0, f"{' '.join(argv)}:\n{r.stderr[-3000:]}")
        return out

    def test_03_consumers_read_a_live_token(self):
        ws, t = self.ws, self.tree
        if shutil.which("pkg-config") is None:
            self.fail("pkg-config is not installed (scripts/setup installs it)")
        cc = os.environ.get("CC", "cc")
        cxx = os.environ.get("CXX", "c++")
        c_bin = self.compile(os.path.join(HERE, "consumer", "consumer.c"), cc, "c11")
        cpp_bin = self.compile(os.path.join(HERE, "consumer", "consumer.cpp"), cxx, "c++20")

        srv = ws.server("oidc", ["--access-ttl", "600"])
        remember_basic("tokenshm-demo", "demo-secret")
        cfg = ws.config([{
            "name": "installed",
            "token_endpoint": srv.token_endpoint,
            "grant": "client_credentials",
            "client_id": "tokenshm-demo",
            "client_secret_file": ws.secret_file("demo.secret", "demo-secret"),
        }])
        ws.refreshers.append(InstalledRefresher(ws, t.bin("tokenshm-refresher"), cfg, t.env()))
        ws.wait_state("installed", "valid", 20, "the installed refresher to publish a token")
        rc, expected, err = ws.get("installed")
        self.assertEqual(rc, 0, err)

        for exe in (c_bin, cpp_bin, t.bin("tokenshm")):
            args = ([exe, "get", "installed", "--segment", ws.segment] if exe == t.bin("tokenshm")
                    else [exe, ws.segment, "installed"])
            r = subprocess.run(args, capture_output=True, timeout=20, env=t.env())
            name = os.path.basename(exe)
            self.assertEqual(r.returncode, 0,
                             f"{name} exited {r.returncode}: {r.stderr.decode(errors='replace')}")
            token = r.stdout.decode().strip()
            harness.remember(token)
            self.assertTrue(token == expected, f"{name} read another token than tokenshm get")


if __name__ == "__main__":
    harness.main()
