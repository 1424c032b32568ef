"""Helpers shared by the reader suite's Python tests: a publisher process
that owns a segment for the duration of a `with` block, and unique names."""

import itertools
import os
import re
import select
import signal
import subprocess
import sys
import time

_counter = itertools.count()


def layout_constant(name):
    """The value of a #define in <tokenshm/layout.h>: Python readers take the
    contract's numbers from the header, not from a copy."""
    src = os.environ.get("TOKENSHM_SOURCE_DIR",
                         os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    path = os.path.join(src, "libshm", "include", "tokenshm", "layout.h")
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = re.match(r"#define\s+(\w+)\s+(0x[0-9A-Fa-f]+|\d+)[uUlL]*\b", line)
            if m and m.group(1) == name:
                return int(m.group(2), 0)
    raise KeyError(name)


def unique_segment(tag):
    return f"tokenshm-test-{tag}-{os.getpid()}-{next(_counter)}"


def unlink_segment(name):
    try:
        os.unlink(f"/dev/shm/{name}")
    except FileNotFoundError:
        pass


def read_line(stream, timeout):
    """One line from a pipe, or '' at EOF or after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    line = b""
    fd = stream.fileno()
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        chunk = os.read(fd, 1)
        if not chunk:
            break
        line += chunk
    return line.decode()


class Publisher:
    """Runs `publisher SEGMENT NAME TOKEN TTL_MS --hold S [extra...]` until the
    block ends; the segment is unlinked whatever happens."""

    def __init__(self, exe, segment, name, token, ttl_ms=600_000, extra=(), hold=120):
        self.exe, self.segment, self.name, self.token = exe, segment, name, token
        self.args = [exe, segment, name, token, str(ttl_ms), "--hold", str(hold), *extra]
        self.proc = None

    def __enter__(self):
        self.proc = subprocess.Popen(self.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        line = read_line(self.proc.stdout, 30)
        if not line.startswith("ready "):
            self.__exit__(None, None, None)
            raise RuntimeError(f"publisher did not start: {line!r}")
        self.pid = int(line.split()[1])
        return self

    def publish_now(self):
        """For --publish-on-stdin: publish, and wait for the confirmation."""
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.flush()
        line = read_line(self.proc.stdout, 30)
        if not line.startswith("published "):
            raise RuntimeError(f"publisher did not publish: {line!r}")

    def __exit__(self, *exc):
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            for stream in (self.proc.stdin, self.proc.stdout):
                if stream:
                    stream.close()
        finally:
            unlink_segment(self.segment)
        return False


def under_ci():
    """True under TOKENSHM_CI=1 (.ci/run), where a check that cannot run fails."""
    return os.environ.get("TOKENSHM_CI") == "1"


def assert_blocked_in_futex(test, pid, what, timeout=20):
    """Fails `test` unless /proc shows `pid` blocked in futex(2) within
    `timeout`; where /proc does not tell, warns (fails under TOKENSHM_CI=1)."""
    blocked = in_futex(pid, timeout)
    test.assertIsNot(blocked, False, f"{what} never blocked in futex")
    if blocked is None:
        if under_ci():
            test.fail(f"/proc/{pid}/syscall does not tell whether {what} blocked in futex "
                      "(TOKENSHM_CI=1 makes that a failure)")
        print(f"warning: could not confirm that {what} blocked in futex", file=sys.stderr)


def in_futex(pid, timeout):
    """True once /proc says `pid` is blocked in futex(2) (x86-64: 202,
    arm64: 98); None if /proc does not tell; False on timeout."""
    nr = {"x86_64": "202", "aarch64": "98"}.get(os.uname().machine)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/syscall") as f:
                first = f.read().split(" ", 1)[0]
        except OSError:
            return None
        if nr is None:
            return None
        if first == nr:
            return True
        time.sleep(0.001)
    return False


def asan_runtime(lib_path):
    """The ASan runtime the library needs, if it was built with ASan."""
    with open(lib_path, "rb") as f:
        if b"libasan.so" not in f.read():
            return None
    out = subprocess.run(["ldd", lib_path], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if "libasan.so" in line and "=>" in line:
            return line.split("=>")[1].split()[0]
    return None


def reexec_with_asan_runtime_of(lib_path):
    """Runs this script again with the ASan runtime preloaded when `lib_path`
    (a library this interpreter will load) was built with ASan; else returns."""
    rt = asan_runtime(lib_path)
    if rt and rt not in os.environ.get("LD_PRELOAD", ""):
        env = dict(os.environ, LD_PRELOAD=rt,
                   # Python's own allocations are not ours to judge; the
                   # last setting wins, so ours goes after the caller's.
                   ASAN_OPTIONS=":".join(filter(None, [os.environ.get("ASAN_OPTIONS"),
                                                        "detect_leaks=0"])))
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
