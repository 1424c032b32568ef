#!/usr/bin/python3
"""How fast Python gets a token three ways (issue 10, point 11):

    /usr/bin/python3 bench/python_read_bench.py BUILD_DIR [--calls N] [--rounds R]
                     [--token-bytes B]
    /usr/bin/python3 bench/python_read_bench.py BUILD_DIR --json [--smoke]
                     [--redis-port P] [--redis-socket PATH]

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

--json (issue 11) measures each way, and redis_tcp / redis_unix (python3-redis
GET on a kept connection to the redis-server at --redis-port / --redis-socket,
which the caller started), for tokens of 64, 1024 and 4096 bytes, with the
writer idle ("none") and publishing back to back ("b2b": bench/pattern_writer
for the segment and the sink file, a SET loop on its own connection for
redis). Each call is timed alone; median_ns and p99_ns are net of the timer's
own cost. The token of version v is v in 16 hex digits repeated, so every
read is checked for bytes of two versions (torn). Prints one JSON document:
{"python":"3.11.2","results":[{"method":..,"token_bytes":..,"writer":..,
"median_ns":..,"p99_ns":..,"calls":N,"torn":0},...]}. --smoke: a few seconds.
"""

import argparse
import ctypes
import glob
import importlib.util
import json
import multiprocessing
import os
import platform
import secrets
import signal
import stat
import statistics
import subprocess
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


# ---- --json (issue 11): every method under an idle and a back-to-back writer ----

SIZES = (64, 1024, 4096)
ORDER = ("module", "ctypes", "file", "redis_tcp", "redis_unix")  # of the results


def is_socket(path):
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def pattern_token(version, size):
    """The token of `version`: its 16 hex digits repeated to `size` bytes."""
    return (f"{version:016x}" * (size // 16 + 1))[:size]


def is_torn(token, size):
    """True unless every byte of `token` follows the pattern of one version."""
    try:
        version = int(token[:16], 16)
    except ValueError:
        return True
    return len(token) != size or token != pattern_token(version, size)


class PatternWriter:
    """bench/pattern_writer SINK TARGET BYTES WRITER for the length of a `with`
    block; stopped by its pid, its segment removed whatever happens."""

    def __init__(self, build, sink, target, size, writer):
        self.args = [os.path.join(build, "bench", "pattern_writer"), sink, target, str(size),
                     writer]
        self.segment = target if sink == "segment" else None
        self.proc = None

    def __enter__(self):
        try:
            self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE)
        except OSError as e:
            raise SystemExit(f"python_read_bench: {self.args[0]}: {e.strerror}")
        line = pyutil.read_line(self.proc.stdout, 30)
        if not line.startswith("ready "):
            self.__exit__()
            raise SystemExit(f"python_read_bench: pattern_writer did not start: {line!r}")
        return self

    def __exit__(self, *exc):
        try:
            if self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.kill(self.proc.pid, signal.SIGKILL)
                    self.proc.wait()
            self.proc.stdout.close()
        finally:
            if self.segment:
                pyutil.unlink_segment(self.segment)
        return False


def redis_client(where):
    """A python3-redis client of ("tcp", port) or ("unix", path), strings decoded."""
    import redis
    if where[0] == "tcp":
        return redis.Redis(host="127.0.0.1", port=where[1], decode_responses=True)
    return redis.Redis(unix_socket_path=where[1], decode_responses=True)


def redis_set_loop(where, key, size, stop):
    """The b2b redis writer (a forked process): SET back to back on its own connection."""
    try:
        client, version = redis_client(where), 1
        while not stop.is_set():
            for _ in range(64):
                version += 1
                client.set(key, pattern_token(version, size))
    except Exception as e:  # noqa: BLE001  (any failure ends the child with one line)
        print(f"python_read_bench: redis writer: {e}", file=sys.stderr)
        os._exit(1)


class RedisWriter:
    """SETs version 1 of `key`; with b2b a forked process SETs on until the block ends."""

    def __init__(self, where, key, size, writer):
        self.where, self.key, self.size, self.writer = where, key, size, writer
        self.proc = None

    def __enter__(self):
        import redis
        self.client = redis_client(self.where)
        try:
            self.client.set(self.key, pattern_token(1, self.size))
        except redis.RedisError as e:
            self.client.close()
            raise SystemExit(f"python_read_bench: redis at {self.where[1]}: {e}")
        if self.writer == "b2b":
            ctx = multiprocessing.get_context("fork")
            self.stop = ctx.Event()
            self.proc = ctx.Process(target=redis_set_loop,
                                    args=(self.where, self.key, self.size, self.stop))
            self.proc.start()
        return self

    def __exit__(self, *exc):
        try:
            if self.proc:
                self.stop.set()
                self.proc.join(10)
                if self.proc.is_alive():
                    os.kill(self.proc.pid, signal.SIGKILL)
                    self.proc.join()
        finally:
            self.client.delete(self.key)
            self.client.close()
        return False


def timer_ns(pc):
    """The cost of an empty timed pair: the median of 20000."""
    pairs = []
    for _ in range(20_000):
        t0 = pc()
        t1 = pc()
        pairs.append(t1 - t0)
    return statistics.median(pairs)


def measure(call, size, seconds, max_calls):
    """Times each call alone for `seconds` (at most `max_calls`); checks every
    token read for tearing outside the timed pair."""
    pc = time.perf_counter_ns
    for _ in range(1000):
        call()
    samples, torn, errors, last_whole = [], 0, 0, None
    end = pc() + int(seconds * 1e9)
    while pc() < end and len(samples) < max_calls:
        for _ in range(256):
            try:
                t0 = pc()
                token = call()
                t1 = pc()
            except Exception:  # noqa: BLE001  (tokenshm.Error "busy", a redis error)
                errors += 1
                continue
            samples.append(t1 - t0)
            if token is not last_whole and token != last_whole:
                if is_torn(token, size):
                    torn += 1
                else:
                    last_whole = token
    if not samples:
        raise SystemExit(f"python_read_bench: every one of {errors} reads failed")
    timer = timer_ns(pc)
    samples.sort()

    def net(q):
        return round(max(0.0, samples[int(q * (len(samples) - 1))] - timer), 1)
    return {"median_ns": net(0.5), "p99_ns": net(0.99), "calls": len(samples),
            "torn": torn}, errors


def segment_calls(build, segment, size):
    """The module's and the C ABI's get of slot "bench", and what closes them."""
    import tokenshm
    handle = tokenshm.Reader(segment).lookup("bench")
    lib = ctypes_test.load(os.path.join(build, "reader", "libtokenshm.so"))
    reader, chandle = ctypes.c_void_p(), ctypes.c_void_p()
    if lib.tokenshm_open(segment.encode(), ctypes.byref(reader)) != 0:
        raise SystemExit("python_read_bench: ctypes: tokenshm_open failed")
    if lib.tokenshm_lookup(reader, b"bench", ctypes.byref(chandle)) != 0:
        lib.tokenshm_close(reader)
        raise SystemExit("python_read_bench: ctypes: tokenshm_lookup failed")
    buf = ctypes.create_string_buffer(size + 1)
    n = ctypes.c_size_t()
    get_into, cap, n_ref = lib.tokenshm_get_into, len(buf), ctypes.byref(n)

    def ctypes_call():
        if get_into(chandle, 0, buf, cap, n_ref, None) != 0:
            raise RuntimeError("tokenshm_get_into failed")
        return buf.value.decode()

    def close():
        lib.tokenshm_handle_close(chandle)
        lib.tokenshm_close(reader)
    return {"module": lambda: handle.get().token, "ctypes": ctypes_call}, close


def sink_file_call(path):
    def call():
        with open(path, encoding="ascii") as f:
            return f.read()
    return call


def redis_calls(redis_at, key):
    """GET through a kept connection, for each redis endpoint given."""
    clients = {m: redis_client(w) for m, w in redis_at.items()}
    return {m: (lambda c=c: c.get(key)) for m, c in clients.items()}, \
        lambda: [c.close() for c in clients.values()]


def scenarios(build, redis_at, tmp):
    """(size, writer, sink context, function giving ({method: call}, close))."""
    for writer in ("none", "b2b"):
        for size in SIZES:
            tag = f"{size}-{writer}"
            segment = pyutil.unique_segment(f"pybench-{tag}")
            yield (size, writer, PatternWriter(build, "segment", segment, size, writer),
                   lambda segment=segment, size=size: segment_calls(build, segment, size))
            path = os.path.join(tmp, f"token-{tag}")
            yield (size, writer, PatternWriter(build, "file", path, size, writer),
                   lambda path=path: ({"file": sink_file_call(path)}, lambda: None))
            if redis_at:
                key = f"tokenshm-pybench-{os.getpid()}-{tag}"
                yield (size, writer, RedisWriter(next(iter(redis_at.values())), key, size, writer),
                       lambda key=key: redis_calls(redis_at, key))


def json_main(args, build):
    if not glob.glob(os.path.join(build, "python", "tokenshm*.so")) or \
            not os.path.exists(os.path.join(build, "bench", "pattern_writer")):
        raise SystemExit(f"python_read_bench: no built module or bench/pattern_writer in {build} "
                         "(meson compile -C BUILD_DIR)")
    sys.path.insert(0, os.path.join(build, "python"))
    # SIGTERM (a harness's timeout) unwinds like ^C: writers stopped, files removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    redis_at = {}
    if args.redis_port is not None:
        redis_at["redis_tcp"] = ("tcp", args.redis_port)
    if args.redis_socket:
        redis_at["redis_unix"] = ("unix", args.redis_socket)
    if redis_at and importlib.util.find_spec("redis") is None:
        raise SystemExit("python_read_bench: python3-redis is not installed")
    seconds, max_calls = (0.03, 5_000) if args.smoke else (1.0, 300_000)
    results = []
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as tmp:
        for size, writer, sink, calls_of in scenarios(build, redis_at, tmp):
            with sink:
                calls, close = calls_of()
                try:
                    for method, call in calls.items():
                        r, errors = measure(call, size, seconds, max_calls)
                        if errors:
                            print(f"python_read_bench: {method} {size} {writer}: {errors} reads "
                                  "failed", file=sys.stderr)
                        results.append({"method": method, "token_bytes": size, "writer": writer,
                                        **r})
                finally:
                    close()
    results.sort(key=lambda r: (ORDER.index(r["method"]), r["writer"] != "none", r["token_bytes"]))
    print(json.dumps({"python": platform.python_version(), "results": results}))
    return 0


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("build_dir")
    ap.add_argument("--calls", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=25)
    ap.add_argument("--token-bytes", type=int, default=1024)
    ap.add_argument("--json", action="store_true", help="every method, size and writer, as JSON")
    ap.add_argument("--smoke", action="store_true", help="with --json: a few seconds in all")
    ap.add_argument("--redis-port", type=int, help="with --json: redis-server on 127.0.0.1:P")
    ap.add_argument("--redis-socket", help="with --json: redis-server's Unix socket")
    args = ap.parse_args()
    if args.calls < 1 or args.rounds < 1 or not 16 <= args.token_bytes <= 8192:
        ap.error("--calls and --rounds must be >= 1, --token-bytes in [16, 8192]")
    if (args.smoke or args.redis_port is not None or args.redis_socket) and not args.json:
        ap.error("--smoke, --redis-port and --redis-socket go with --json")
    if args.redis_port is not None and not 1 <= args.redis_port <= 65535:
        ap.error("--redis-port must be in [1, 65535]")
    if args.redis_socket is not None and not is_socket(args.redis_socket):
        ap.error(f"--redis-socket {args.redis_socket}: not a Unix socket")
    return args


def main():
    args = parse_args()
    build = os.path.abspath(args.build_dir)
    if args.json:
        return json_main(args, build)
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
