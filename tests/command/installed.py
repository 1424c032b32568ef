"""`meson install` of the build under test into a temporary directory, for the
packaging and install-and-consume tests.

The build directory's own prefix (often /usr/local) is kept: `--destdir`
puts every file under DESTDIR + its installed path, so no root is needed and
nothing is rebuilt (`--no-rebuild`; `meson test` built everything first).
Paths in Tree are where the files landed; `installed_path` is where they
would be on the host.
"""

import json
import os
import shutil
import subprocess

import harness


def _meson():
    m = shutil.which("meson")
    if m is None:
        raise AssertionError("meson is not on PATH; the install tests run it")
    return m


def build_options():
    """The build directory's options: {name: value}."""
    out = subprocess.run([_meson(), "introspect", "--buildoptions", harness.BUILD_DIR],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return {o["name"]: o["value"] for o in json.loads(out)}


def project_version():
    out = subprocess.run([_meson(), "introspect", "--projectinfo", harness.BUILD_DIR],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return json.loads(out)["version"]


class Tree:
    """The installed tree under `destdir`."""

    def __init__(self, destdir):
        self.destdir = destdir
        o = build_options()
        self.prefix = o["prefix"]

        def under_prefix(d):
            return d if os.path.isabs(d) else os.path.join(self.prefix, d)
        self.bindir = under_prefix(o["bindir"])
        self.libdir = under_prefix(o["libdir"])
        self.includedir = under_prefix(o["includedir"])
        self.datadir = under_prefix(o["datadir"])

    def path(self, installed_path):
        """Where a file the host would have at `installed_path` is in the tree."""
        return self.destdir + installed_path

    @property
    def unit(self):
        return self.path(os.path.join(self.prefix, "lib", "systemd", "system",
                                      "tokenshm-refresher.service"))

    @property
    def sysusers(self):
        return self.path(os.path.join(self.prefix, "lib", "sysusers.d", "tokenshm.conf"))

    @property
    def example_config(self):
        return self.path(os.path.join(self.datadir, "doc", "tokenshm", "config.example.json"))

    def bin(self, name):
        return self.path(os.path.join(self.bindir, name))

    def env(self):
        """The environment in which pkg-config finds tokenshm.pc in the tree and
        the installed programs find libtokenshm."""
        e = dict(os.environ)
        e["PKG_CONFIG_PATH"] = self.path(os.path.join(self.libdir, "pkgconfig"))
        e["PKG_CONFIG_LIBDIR"] = self.path(os.path.join(self.libdir, "pkgconfig"))
        # tokenshm.pc names the host's paths; the sysroot points them into the tree.
        e["PKG_CONFIG_SYSROOT_DIR"] = self.destdir
        e["LD_LIBRARY_PATH"] = self.path(self.libdir)
        return e


def install(destdir):
    """Runs `meson install --destdir DESTDIR`; the installed Tree. Its output
    goes to install.log beside `destdir`."""
    r = subprocess.run([_meson(), "install", "-C", harness.BUILD_DIR, "--no-rebuild",
                        "--destdir", destdir], capture_output=True, timeout=300)
    with open(destdir.rstrip("/") + "-install.log", "wb") as f:
        f.write(r.stdout + r.stderr)
    if r.returncode != 0:
        tail = (r.stdout + r.stderr).decode(errors="replace").strip().splitlines()[-5:]
        raise AssertionError(f"meson install exited {r.returncode}: " + " | ".join(tail))
    return Tree(destdir)
