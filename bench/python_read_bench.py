#!/usr/bin/python3
"""How fast Python gets a token three ways (issue 10, point 11):

    /usr/bin/python3 bench/python_read_bench.py BUILD_DIR [--calls N] [--rounds R]
                     [--token-bytes B]

  module: the compiled module's Handle.get().token (python/)
  ctypes: tokenshm_get_into through ctypes into a preallocated buffer, .decode()
  file:   re-reading a token file (open, read, strip), what a consumer of a
          file sink does per request

Each yields the token as a str. The segment is held by the test publisher
(tests/libshm/publisher) with a B-byte junk token, the file holds the same
token in a fresh temporary directory on tmpfs (/dev/shm, where the
systemd unit's RuntimeDirectory would put a sink too). Each way runs R rounds of N calls; the
figure is the median over rounds of ns per call. Prints one line per way and
the ratio file / module, which issue 10 wants >= 20. Run with the interpreter
the module was built for (meson's python module: /usr/bin/python3 on Debian).
"""

import argparse
import ctypes
import glob
import os
import secrets
import statistics
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "tests", "reader"))
import ctypes_test  # noqa: E402  (the ctypes declarations of the C ABI)
import pyutil  # noqa: E402


def median_ns(call, calls, rounds):
    """Median over `rounds` of the ns per call of `calls` calls of `call`."""
    loop = range(calls)
    per_call = []
    for _ in range(rounds):
        start = time.perf_counter_ns()
        for _ in loop:
            call()
        per_call.append((time.perf_counter_ns() - start) / calls)
    return statistics.median(per_call)


def module_get(build, segment):
    sys.path.insert(0, os.path.join(build, "python"))
    import tokenshm
    handle = tokenshm.Reader(segment).lookup("bench")
    return lambda: handle.get().token


def ctypes_get(build, segment, token_bytes):
    lib = ctypes_test.load(os.path.join(build, "reader", "libtokenshm.so"))
    reader, handle = ctypes.c_void_p(), ctypes.c_void_p()
    if lib.tokenshm_open(segment.encode(), ctypes.byref(reader)) != 0:
        raise SystemExit("python_read_bench: ctypes: tokenshm_open failed")
    if lib.tokenshm_lookup(reader, b"bench", ctypes.byref(handle)) != 0:
        raise SystemExit("python_read_bench: ctypes: tokenshm_lookup failed")
    buf = ctypes.create_string_buffer(token_bytes + 1)
    n = ctypes.c_size_t()
    get_into, cap, n_ref = lib.tokenshm_get_into, len(buf), ctypes.byref(n)

    def call():
        if get_into(handle, 0, buf, cap, n_ref, None) != 0:
            raise RuntimeError("tokenshm_get_into failed")
        return buf.value.decode()
    return call


def file_get(path):
    def call():
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    return call


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("build_dir")
    ap.add_argument("--calls", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=25)
    ap.add_argument("--token-bytes", type=int, default=1024)
    args = ap.parse_args()
    if args.calls < 1 or args.rounds < 1 or not 16 <= args.token_bytes <= 8192:
        ap.error("--calls and --rounds must be >= 1, --token-bytes in [16, 8192]")
    build = os.path.abspath(args.build_dir)
    publisher = os.path.join(build, "tests", "libshm", "publisher")
    built = glob.glob(os.path.join(build, "python", "tokenshm*.so"))
    if not built or not os.path.exists(publisher):
        raise SystemExit(f"python_read_bench: no built module or publisher in {build} "
                         "(meson compile -C BUILD_DIR)")
    token = ("junk-" + secrets.token_urlsafe(args.token_bytes))[:args.token_bytes]
    segment = pyutil.unique_segment("pybench")
    tmpfs = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(dir=tmpfs) as tmp, \
            pyutil.Publisher(publisher, segment, "bench", token, ttl_ms=3_600_000, hold=3600):
        path = os.path.join(tmp, "token")
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(token + "\n")
        ways = {"module": module_get(build, segment),
                "ctypes": ctypes_get(build, segment, args.token_bytes),
                "file": file_get(path)}
        for name, call in ways.items():
            if call() != token:
                raise SystemExit(f"python_read_bench: {name} read a different token")
        results = {name: median_ns(call, args.calls, args.rounds) for name, call in ways.items()}
    print(f"python {sys.version.split()[0]}, token {args.token_bytes} bytes, "
          f"median of {args.rounds} rounds x {args.calls} calls")
    for name, ns in results.items():
        print(f"{name:7s} {ns:9.1f} ns/call")
    print(f"file / module = {results['file'] / results['module']:.1f}x, "
          f"ctypes / module = {results['ctypes'] / results['module']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
