#!/usr/bin/python3
"""tokenshm against what users would otherwise run, in one command (issue 11).

    bench/run [--smoke] [--build-dir DIR] [--no-build] [--out-dir DIR] [--no-docs]

Builds the harness in release mode (build-bench/), starts a redis-server on a
free 127.0.0.1 port and a Unix socket (stopped by its pid), then runs:

  1. bench/run_bench.py: `get` against its floors, cross-core (docs/PERFORMANCE.md's
     generated part, as before);
  2. bench/peers_bench: every peer (floors, tokenshm through the C++ API and the
     C ABI, a process-shared mutex and rwlock, a seqlock, a Unix-socket daemon, a
     sink file, pread, Redis over TCP and a Unix socket, a model of the design
     replaced) under four writers and 1, 2, 4 and 16 reader processes;
  3. syscalls per read of every peer, counted with `strace -f -c` on a reader
     attached to a running writer (the attach itself subtracted);
  4. bench/python_read_bench.py: the same from Python;
  5. bench/system_bench.py: publish-to-visible, the refresher against the test
     authorization server (response to visible, CPU and memory with 1, 100 and
     1000 credentials), open/lookup/get as slots grow;
  6. bench/propagation_bench.py (issue 12): a leader and 1, 10, 100 followers on
     one etcd member, from the leader's segment to each follower's, their CPU and
     etcd's load (skipped, said on stderr, without /usr/bin/etcd);

writes bench/results/<date>-<cpu>.md and .json and PNG plots beside them,
updates docs/PERFORMANCE.md and the README's headline table, and prints the
target ratios. `--smoke` runs every piece briefly into a temporary directory,
checks that each produced well-formed results, and touches no file of the
repository: what CI runs. No timing is ever asserted; the targets table says
PASS or FAIL and that is all.
"""

import argparse
import datetime
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, BENCH)
import report  # noqa: E402
import run_bench  # noqa: E402  (machine(), loadavg())

WRITERS = ("none", "1khz", "1us", "b2b")
READERS = (1, 2, 4, 16)
SIZES = (64, 1024, 4096)
HEADLINE_REPS = 3          # runs of the configurations the ratio targets use
STRACE_READS = 20000       # reads in the counted strace run
# meson target names bench/run needs (the Python module is found by where it is defined)
TARGETS = ("read_bench", "read_scaling_bench", "cross_core_bench", "peers_bench", "visible_bench",
           "slots_bench", "pattern_writer", "tokenshm", "tokenshm-refresher", "publisher",
           "propagation_probe")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


BenchError = report.BenchError


def run_json(cmd, timeout, what):
    """Runs cmd, returns its stdout parsed as one JSON document."""
    log("+ " + " ".join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{what}: no result within {timeout:.0f} s") from None
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no stderr)"]
        raise BenchError(f"{what}: exit {proc.returncode}: {tail[0]}")
    try:
        return json.loads(proc.stdout)
    except ValueError as e:
        raise BenchError(f"{what}: output is not JSON ({e})") from None


# ------------------------------------------------------------------ build

def build(build_dir):
    if not os.path.exists(os.path.join(build_dir, "build.ninja")):
        subprocess.run(["meson", "setup", "--buildtype=release", build_dir, ROOT], check=True,
                       stdout=subprocess.DEVNULL)
    else:
        subprocess.run(["meson", "configure", build_dir, "-Dbuildtype=release"], check=True)
    proc = subprocess.run(["ninja", "-C", build_dir] + ninja_outputs(build_dir),
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:])
        raise BenchError("the build failed (see above)")


def ninja_outputs(build_dir):
    """The files of the targets bench/run runs, as ninja names them."""
    out = subprocess.run(["meson", "introspect", "--targets", build_dir], capture_output=True,
                         text=True, check=True)
    files = []
    for t in json.loads(out.stdout):
        if t["name"] in TARGETS or t["defined_in"].endswith(os.path.join("python",
                                                                         "meson.build")):
            files += [os.path.relpath(f, build_dir) for f in t["filename"]]
    if not any(f.endswith("peers_bench") for f in files):
        raise BenchError("peers_bench is not configured (are libboost-dev and libhiredis-dev "
                         "installed? scripts/setup installs them; then meson setup --reconfigure)")
    return files


# ------------------------------------------------------------------ redis

class Redis:
    """A redis-server on a free 127.0.0.1 port and a Unix socket in a private
    directory, persistence off, stopped by its pid."""

    def __init__(self, workdir):
        self.dir = os.path.join(workdir, "redis")
        os.mkdir(self.dir, 0o700)
        self.socket = os.path.join(self.dir, "redis.sock")
        exe = shutil.which("redis-server")
        if exe is None:
            raise BenchError("redis-server is not installed (scripts/setup installs it)")
        for _ in range(5):
            self.port = free_port()
            self.proc = subprocess.Popen(
                [exe, "--bind", "127.0.0.1", "--port", str(self.port), "--unixsocket",
                 self.socket, "--unixsocketperm", "700", "--save", "", "--appendonly", "no",
                 "--dir", self.dir, "--logfile", os.path.join(self.dir, "redis.log")],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if self._wait_ready(10.0):
                return
            self.stop()
        raise BenchError("redis-server did not start (see its log in a kept --work-dir)")

    def _wait_ready(self, seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG") and os.path.exists(self.socket):
                        return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def args(self):
        return ["--redis-port", str(self.port), "--redis-socket", self.socket]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ peers

RUN_KEYS = ("method", "writer", "readers", "token_bytes", "reads_per_s", "ns_per_read_cpu",
            "median_ns", "p99_ns", "p999_ns", "max_ns", "samples", "timer_ns", "over_1ms",
            "hist", "torn", "expired", "errors", "changes", "publishes")


def peer_configs(methods, smoke):
    """(method, writer, readers, token_bytes, seconds, repetition) to run."""
    if smoke:  # every method once, and one writer with two readers
        return [(m, "none", 1, 1024, 0.05, 0) for m in methods] + [
            ("tokenshm", "b2b", 2, 1024, 0.05, 0)]
    configs = []
    for m in methods:
        if m == "legacy":
            configs += [(m, "none", r, 1024, 2.5, 0) for r in (1, 4)]
            continue
        configs += [(m, w, r, 1024, 0.3, 0) for w in WRITERS for r in READERS]
        configs += [(m, w, 1, b, 0.3, 0) for b in (64, 4096) for w in ("none", "b2b")]
        configs += [(m, "none", r, 1024, 0.3, k) for r in (1, 2) for k in
                    range(1, HEADLINE_REPS)]
    random.Random(11).shuffle(configs)  # a burst of outside load hits a different one each time
    return configs


def run_peers(exe, redis, smoke):
    methods = subprocess.run([exe, "list"], capture_output=True, text=True,
                             check=True).stdout.split()
    if not methods:
        raise BenchError("peers_bench list named no method")
    configs = peer_configs(methods, smoke)
    log(f"peers: {len(configs)} runs")
    results = []
    for method, writer, readers, size, seconds, rep in configs:
        cmd = [exe, "run", "--method", method, "--writer", writer, "--readers", str(readers),
               "--token-bytes", str(size), "--seconds", str(seconds)] + redis.args()
        if readers <= (os.cpu_count() or 1):
            cmd.append("--pin")
        r = run_json(cmd, 60 + 20 * seconds, f"peers_bench {method}/{writer}/{readers}")
        missing = [k for k in RUN_KEYS if k not in r]
        if missing:
            raise BenchError(f"peers_bench {method}: result lacks {', '.join(missing)}")
        r["repetition"] = rep
        results.append(r)
    return methods, results


class StraceUnavailable(Exception):
    """strace cannot trace here (ptrace refused, as in some containers)."""


def strace_calls(cmd, outfile):
    """Total syscalls, and calls by name, of cmd and its children under strace -c -f."""
    proc = subprocess.run(["strace", "-f", "-c", "-o", outfile] + cmd, capture_output=True,
                          text=True, timeout=120)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no stderr)"]
        if "ptrace" in proc.stderr or "Operation not permitted" in proc.stderr:
            raise StraceUnavailable(tail[0])
        raise BenchError(f"strace {' '.join(cmd[:3])}: exit {proc.returncode}: {tail[0]}")
    by_name = {}
    with open(outfile, encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            # % time, seconds, usecs/call, calls, [errors,] syscall
            if len(fields) >= 5 and fields[3].isdigit() and fields[-1] != "total":
                by_name[fields[-1]] = int(fields[3])
    return sum(by_name.values()), by_name


def count_syscalls(exe, method, writer, redis, workdir):
    """Syscalls per read: a reader attached to a running writer makes
    STRACE_READS reads under strace; one making none is the baseline."""
    d = tempfile.mkdtemp(prefix=f"sys-{method}-", dir=workdir)
    serve = subprocess.Popen([exe, "serve", "--method", method, "--token-bytes", "1024",
                              "--writer", writer, "--dir", d] + redis.args(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = serve.stdout.readline()
        if '"ready"' not in line:
            raise BenchError(f"peers_bench serve {method}: not ready: {serve.stderr.read(300)}")
        read = [exe, "read", "--method", method, "--token-bytes", "1024", "--dir", d]
        base, base_by = strace_calls(read + ["--reads", "0"] + redis.args(),
                                     os.path.join(d, "strace0"))
        total, by = strace_calls(read + ["--reads", str(STRACE_READS)] + redis.args(),
                                 os.path.join(d, "strace1"))
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            serve.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            serve.kill()
            serve.communicate()
    extra = {k: (v - base_by.get(k, 0)) / STRACE_READS for k, v in by.items()
             if v - base_by.get(k, 0) > 0}
    return {"per_read": max(total - base, 0) / STRACE_READS, "extra_calls": total - base,
            "reads": STRACE_READS, "by_name": extra}


def run_syscalls(exe, methods, redis, workdir, smoke):
    if shutil.which("strace") is None:
        log("syscalls: strace is not installed; column left empty")
        return {}
    wanted = ["tokenshm"] if smoke else methods
    try:
        out = {m: count_syscalls(exe, m, "none", redis, workdir) for m in wanted}
        out["tokenshm@b2b"] = count_syscalls(exe, "tokenshm", "b2b", redis, workdir)
    except StraceUnavailable as e:
        log(f"syscalls: strace cannot trace on this machine ({e}); column left empty")
        return {}
    return out


# ------------------------------------------------------------------ the rest

def run_floors(build_dir, workdir, smoke, write_docs, command_line):
    """bench/run_bench.py (get against its floors, cross-core), and its ratios."""
    out = os.path.join(workdir, "floors.json")
    cmd = [sys.executable, os.path.join(BENCH, "run_bench.py"), "--no-build",
           "--build-dir", build_dir, "--json", out]
    if smoke:
        cmd += ["--reps", "1", "--min-time", "0.01", "--seconds", "0.05", "--xc-reps", "1",
                "--xc-samples", "200", "--no-write"]
    elif not write_docs:
        cmd.append("--no-write")
    log("+ " + " ".join(cmd))
    env = dict(os.environ, TOKENSHM_BENCH_COMMAND=f"{command_line}   # which runs run_bench.py")
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
    with open(out, encoding="utf-8") as f:
        return json.load(f)


def run_python(build_dir, redis, smoke):
    cmd = ["/usr/bin/python3", os.path.join(BENCH, "python_read_bench.py"), build_dir,
           "--json"] + redis.args() + (["--smoke"] if smoke else [])
    return run_json(cmd, 300, "python_read_bench")


def run_system(build_dir, smoke):
    cmd = ["/usr/bin/python3", os.path.join(BENCH, "system_bench.py"), build_dir] + (
        ["--smoke"] if smoke else [])
    return run_json(cmd, 600, "system_bench")


def run_propagation(build_dir, smoke):
    """bench/propagation_bench.py (issue 12): {"skipped": why} where etcd,
    node or the authorization server's modules are missing (said on stderr)."""
    if not os.access("/usr/bin/etcd", os.X_OK):
        why = "/usr/bin/etcd is not installed (Debian: etcd-server)"
        if os.environ.get("TOKENSHM_CI") == "1":  # a skip is no pass in CI
            raise BenchError(f"propagation: {why}, and TOKENSHM_CI=1")
        log(f"propagation: skipped: {why}")
        return {"skipped": why}
    cmd = ["/usr/bin/python3", os.path.join(BENCH, "propagation_bench.py"), build_dir,
           "--json"] + (["--smoke"] if smoke else [])
    log("+ " + " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    if proc.returncode == 77:  # (under TOKENSHM_CI=1 it exits 1 instead)
        why = (proc.stderr.strip().splitlines() or ["(no reason given)"])[-1]
        log(f"propagation: skipped: {why}")
        return {"skipped": why}
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no stderr)"]
        raise BenchError(f"propagation_bench: exit {proc.returncode}: {tail[0]}")
    return json.loads(proc.stdout)


def run_plots(results_json, out_dir):
    cmd = ["/usr/bin/python3", os.path.join(BENCH, "plots.py"), results_json, out_dir]
    log("+ " + " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise BenchError(f"plots.py: exit {proc.returncode}: {proc.stderr.strip()[-300:]}")
    return [p for p in proc.stdout.split("\n") if p.strip()]


def result_stem(info):
    cpu = re.sub(r"\(R\)|\(TM\)|CPU|Processor|@.*", "", info["cpu"].split(" (family")[0])
    cpu = re.sub(r"[^A-Za-z0-9]+", "-", cpu).strip("-").lower() or "cpu"
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d") + "-" + cpu


def parse_args():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true",
                   help="every piece briefly, into a temporary directory (CI)")
    p.add_argument("--build-dir", default=os.path.join(ROOT, "build-bench"))
    p.add_argument("--no-build", action="store_true", help="use the binaries as built")
    p.add_argument("--out-dir", help="where the results go (default bench/results)")
    p.add_argument("--no-docs", action="store_true",
                   help="leave docs/PERFORMANCE.md and README.md alone")
    p.add_argument("--from-json", metavar="FILE",
                   help="measure nothing: render the report, plots and docs again from the "
                        "results FILE of an earlier run")
    args = p.parse_args()
    args.command_line = "bench/run" + "".join(" " + a for a in sys.argv[1:])
    args.build_dir = os.path.abspath(args.build_dir)
    return args


def collect(args, workdir):
    if not args.no_build:
        build(args.build_dir)
    exe = os.path.join(args.build_dir, "bench", "peers_bench")
    if not os.access(exe, os.X_OK):
        raise BenchError(f"{exe} is not built (are libboost-dev and libhiredis-dev installed?)")
    write_docs = not (args.smoke or args.no_docs)
    results = {"machine": run_bench.machine(), "command": args.command_line,
               "started": datetime.datetime.now(datetime.timezone.utc).strftime(
                   "%Y-%m-%d %H:%M UTC"), "load_before": run_bench.loadavg(),
               "smoke": args.smoke}
    t0 = time.monotonic()
    redis = Redis(workdir)
    try:
        results["floors"] = run_floors(args.build_dir, workdir, args.smoke, write_docs,
                                        args.command_line)
        results["methods"], results["peers"] = run_peers(exe, redis, args.smoke)
        results["syscalls"] = run_syscalls(exe, results["methods"], redis, workdir, args.smoke)
        results["python"] = run_python(args.build_dir, redis, args.smoke)
    finally:
        redis.stop()
    results["system"] = run_system(args.build_dir, args.smoke)
    results["propagation"] = run_propagation(args.build_dir, args.smoke)
    results["load_after"] = run_bench.loadavg()
    results["elapsed_s"] = time.monotonic() - t0
    return results


def main():
    args = parse_args()
    workdir = tempfile.mkdtemp(prefix="tokenshm-bench-")
    try:
        if args.from_json:
            with open(args.from_json, encoding="utf-8") as f:
                results = json.load(f)
            stem = os.path.splitext(os.path.basename(args.from_json))[0]
        else:
            results = collect(args, workdir)
            stem = result_stem(results["machine"])
        out_dir = args.out_dir or (os.path.join(workdir, "results") if args.smoke else
                                   os.path.join(BENCH, "results"))
        os.makedirs(out_dir, exist_ok=True)
        json_path = os.path.join(out_dir, stem + ".json")
        if not args.from_json or os.path.abspath(args.from_json) != os.path.abspath(json_path):
            with open(json_path, "w", encoding="utf-8") as f:
                json.dump(results, f, separators=(",", ":"))
        plots = run_plots(json_path, os.path.join(out_dir, stem))
        md_path = os.path.join(out_dir, stem + ".md")
        text, targets = report.render(results, md_path, plots)
        with open(md_path, "w", encoding="utf-8") as f:
            f.write(text)
        log(f"wrote {md_path} and {len(plots)} plots")
        if not (args.smoke or args.no_docs):
            report.update_docs(ROOT, results, targets, md_path, plots)
        if args.smoke:
            report.check_smoke(results, plots)
        if args.smoke:
            print("smoke run: every piece ran and gave well-formed results; the figures below "
                  "come from runs of 0.05 s and mean nothing")
        print(report.targets_text(targets))
    except BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
