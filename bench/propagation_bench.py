#!/usr/bin/python3
"""Propagation across hosts and what etcd carries for it (issue 12, points 9 and 10).

    /usr/bin/python3 bench/propagation_bench.py [BUILD_DIR] [--smoke] [--json]
        [--seconds S] [--followers 1,10,100]

Starts, on 127.0.0.1 and under temporary directories (everything stopped by
pid, segments unlinked, also on failure):

- one etcd member (/usr/bin/etcd, free ports, etcd's default settings);
- the test authorization server (tests/authserver/oidc_server.mjs, started as
  tests/integration/harness.py starts it) with one minted refresh-token grant
  and access tokens of 2 s, so the leader refreshes about every second;
- the leader: a tokenshm-refresher with a `coordination` block and the only
  refresh token, started first and waited for until its control socket's
  status says role `leader`;
- then followers, added up to each N of --followers (default 1, 10, 100):
  refreshers with their own segment, state dir and control socket, the same
  coordination block and seal key, and no refresh token.

For each N, once every follower's segment shows a token, bench/propagation_probe
maps every segment read-only and notes when each segment first shows each
access token (compared by hash). A sample is, per follower and token, the time
from the leader's segment showing it to that follower's segment showing it.
Over the same window: the refreshers' CPU (utime + stime), etcd's CPU, the
authorization server's counters (token requests, replays), and etcd's
/metrics before and after, normalised per hour and per refresh.

Then the same again from a fresh etcd and server with access tokens of an
hour, windows of half the length: the idle fleet, whose load per hour
(keepalives, followers' reads) is what the fleet costs besides refreshes;
`net_per_refresh` is a busy window's load beyond that idle rate, per refresh.

Fails (exit 1, one line) on a replay, a failed token request, a refresher
that exits, a secret in any log (tests/integration/harness.py's scan), or a
follower that never shows the leader's tokens. Never on a timing.

--json prints one JSON document on stdout (bench/run.py reads it), --markdown
the tables bench/run's results show; without either, a plain table.
--from-json FILE prints an earlier run's document again (with --markdown).
--smoke: N = 1 and 3, windows of 5 s (idle 2.5 s), under a minute.
Skips (exit 77, one line) when /usr/bin/etcd, node or the authorization
server's node_modules are missing; fails instead under TOKENSHM_CI=1.
"""

import functools
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
import harness  # noqa: E402  (processes, workspaces, the authorization server, the scan)
import run_bench  # noqa: E402  (machine(), loadavg())

ETCD = "/usr/bin/etcd"
CLIENT_ID, CLIENT_SECRET = "tokenshm-demo", "demo-secret"  # the server's default client
CRED = "c"
PREFIX = "/tokenshm/bench"
LEASE_TTL_S = 15              # the default: what the cost figures are for
ACCESS_TTL_S = 2              # with refresh_before_s 1: a refresh about every second
IDLE_ACCESS_TTL_S = 3600      # idle windows: the next refresh is 48 min away
TAIL_S = 2.0                  # tokens the leader showed this close to a window's end
                              # may still be on their way: no sample, not missed
CLK_TCK = os.sysconf("SC_CLK_TCK")
SKIP = 77


class BenchError(Exception):
    pass


class TimedOut(BenchError):
    pass


def log(msg):
    print(f"propagation_bench: {msg}", file=sys.stderr, flush=True)


def wait_for(pred, timeout_s, what, interval_s=0.05):
    """Polls pred() until it returns a truthy value. A BenchError from pred
    (a refresher exited) ends the wait at once; OSError and ValueError (a
    socket not there yet, half an answer) are retried."""
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        try:
            v = pred()
            if v:
                return v
        except (OSError, ValueError) as e:
            last = e
        if time.monotonic() > deadline:
            extra = f" (last error: {type(last).__name__}: {last})" if last else ""
            raise TimedOut(f"timed out after {timeout_s:.0f} s waiting for {what}{extra}")
        time.sleep(interval_s)


# ---------------------------------------------------------------- etcd


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Etcd:
    """One member on free 127.0.0.1 ports, data in a workspace, stopped by pid."""

    def __init__(self, ws):
        self.url = f"http://127.0.0.1:{free_port()}"
        peer = f"http://127.0.0.1:{free_port()}"
        argv = [ETCD, "--name", "m0", "--data-dir", os.path.join(ws.dir, "etcd-data"),
                "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"m0={peer}", "--initial-cluster-state", "new"]
        self.log = ws.log_path("etcd.log")
        with open(self.log, "ab") as out:
            self.proc = harness.spawn(argv, out, out)
        wait_for(self._ready, 30, f"etcd to answer on {self.url} (see {ws.log_path('etcd.log')})")

    def _ready(self):
        if self.proc.poll() is not None:
            raise BenchError(f"etcd exited ({self.proc.returncode}) while starting")
        with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
            return json.loads(r.read()).get("health") == "true"

    def metrics(self):
        """{(name, ((label, value), ...)): value} from /metrics."""
        if self.proc.poll() is not None:
            raise BenchError(f"etcd exited ({self.proc.returncode}); see {self.log}")
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as r:
            return parse_metrics(r.read().decode())

    def stop(self):
        harness.stop_process(self.proc, grace_s=10)


def parse_metrics(text):
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, labels = head.partition("{")
        pairs = []
        for item in filter(None, labels.rstrip("}").split(",")):
            k, _, v = item.partition("=")
            pairs.append((k, v.strip('"')))
        try:
            out[(name, tuple(sorted(pairs)))] = float(value)
        except ValueError:
            continue
    return out


def metric(m, name, **labels):
    """The sum of `name` over the series whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in m.items() if n == name and want <= set(ls))


# Counters read before and after each window, each under the names etcd 3.4
# and 3.5+ use (the first one present counts). Requests are counted by gRPC
# method (grpc_calls): etcd's JSON gateway turns each HTTP call into one, and
# its mvcc txn and client byte counters miss what comes through the gateway.
ETCD_COUNTERS = {
    "puts": ("etcd_mvcc_put_total", "etcd_debugging_mvcc_put_total"),
    "ranges": ("etcd_mvcc_range_total", "etcd_debugging_mvcc_range_total"),
    "deletes": ("etcd_mvcc_delete_total", "etcd_debugging_mvcc_delete_total"),
    "watch_events_sent": ("etcd_debugging_mvcc_events_total",),
    "wal_fsyncs": ("etcd_disk_wal_fsync_duration_seconds_count",),
    "backend_commits": ("etcd_disk_backend_commit_duration_seconds_count",),
}
ETCD_GAUGES = {
    "watchers": ("etcd_debugging_mvcc_watcher_total",),
    "watch_streams": ("etcd_debugging_mvcc_watch_stream_total",),
    "keys": ("etcd_debugging_mvcc_keys_total",),
    "leases": ("etcd_debugging_lease_total",),
}


def first_present(m, names):
    for n in names:
        if any(k[0] == n for k in m):
            return metric(m, n)
    return None


def grpc_calls(m):
    """{method: count}: unary calls answered (grpc_server_handled_total) and,
    for the streams, messages received (LeaseKeepAlive, Watch) and sent
    (Watch): etcd's JSON gateway turns each HTTP call into these."""
    out = {}
    for (name, labels), v in m.items():
        d = dict(labels)
        meth = d.get("grpc_method")
        if meth is None:
            continue
        if name == "grpc_server_handled_total" and d.get("grpc_type") == "unary":
            out[meth] = out.get(meth, 0) + v
        elif name == "grpc_server_msg_received_total" and d.get("grpc_type") != "unary":
            out[meth + " msgs in"] = out.get(meth + " msgs in", 0) + v
        elif name == "grpc_server_msg_sent_total" and d.get("grpc_type") != "unary":
            out[meth + " msgs out"] = out.get(meth + " msgs out", 0) + v
    return out


def etcd_load(before, after, seconds, refreshes):
    """What etcd did over the window: per hour, per refresh, and its gauges."""
    delta = {}
    for key, names in ETCD_COUNTERS.items():
        a, b = first_present(after, names), first_present(before, names)
        if a is not None and b is not None:
            delta[key] = a - b
    calls_a, calls_b = grpc_calls(after), grpc_calls(before)
    for meth, v in calls_a.items():
        d = v - calls_b.get(meth, 0)
        if d > 0:
            delta["grpc " + meth] = d
    per_hour = {k: round(v * 3600 / seconds) for k, v in delta.items()}
    per_refresh = {k: round(v / refreshes, 2) for k, v in delta.items()} if refreshes else {}
    gauges = {k: first_present(after, names) for k, names in ETCD_GAUGES.items()}
    return {"per_hour": per_hour, "per_refresh": per_refresh,
            "gauges": {k: v for k, v in gauges.items() if v is not None}}


# ---------------------------------------------------------------- the authorization server


def start_authserver(ws, access_ttl_s):
    args, paths = ws.mint_args(CLIENT_ID)
    server = ws.server("oidc", ["--access-ttl", str(access_ttl_s), "--test-control", *args])
    ws.remember_files(paths)
    return server, paths[0]


def server_stats(server):
    with urllib.request.urlopen(server.base + "/_test/stats", timeout=5) as r:
        return json.loads(r.read())


# ---------------------------------------------------------------- hosts


control = harness.control_request


class Host:
    """One "host": a workspace (segment, state dir, control socket, logs) and
    its refresher. Only the leader gets the refresh token."""

    def __init__(self, tag, server, etcd, seal_hex, refresh_token_file=None):
        self.tag = tag
        self.ws = harness.Workspace("propbench-" + tag)
        secret = self.ws.secret_file("client.secret", CLIENT_SECRET)
        seal = self.ws.secret_file("seal.key", seal_hex)
        extra = {"refresh_token_file": refresh_token_file} if refresh_token_file else {}
        cred = harness.credential(CRED, CLIENT_ID, secret, endpoint=server.token_endpoint,
                                  grant="refresh_token", refresh_before_s=1, timeout_s=5, **extra)
        coordination = {"etcd": {"endpoints": [etcd.url], "prefix": PREFIX,
                                 "lease_ttl_s": LEASE_TTL_S},
                        "seal_key_file": seal}
        self.config = self.ws.config([cred], coordination=coordination, max_token_bytes=1024)
        self.socket = os.path.join(self.ws.dir, "ctl.sock")
        self.refresher = self.ws.refresher(self.config, name="refresher")

    @property
    def pid(self):
        return self.refresher.pid

    def check_alive(self):
        if not self.refresher.alive():
            tail = self.refresher.log().strip().splitlines()[-1:] or ["(empty log)"]
            raise BenchError(f"host {self.tag}: the refresher exited "
                             f"({self.refresher.proc.returncode}): {tail[0][:300]}")

    def status(self):
        self.check_alive()
        return control(self.socket, {"op": "status"})

    def role(self):
        return (self.status().get("coordination") or {}).get("role")

    def shows_token(self):
        """True once this host's segment holds a valid token of CRED."""
        for c in self.status().get("credentials", []):
            if c.get("name") == CRED:
                return c.get("state") == "valid" and c.get("version", 0) > 0
        return False

    def cpu_s(self):
        return cpu_s(self.pid)


def cpu_s(pid):
    """utime + stime of the whole process, s."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# ---------------------------------------------------------------- the probe


def run_probe(probe, hosts, seconds):
    """Starts propagation_probe on every host's segment; returns (its process,
    its ready_ns) once every segment is open."""
    argv = [probe, "--credential", CRED, "--seconds", str(seconds)] + [h.ws.segment
                                                                       for h in hosts]
    p = harness.spawn(argv, subprocess.PIPE, None)
    line = p.stdout.readline()
    try:
        ready = json.loads(line)
    except ValueError:
        raise BenchError(f"propagation_probe: no ready line (exit {p.wait(5)})") from None
    return p, ready["ready_ns"]


def finish_probe(p, seconds):
    try:
        out, _ = p.communicate(timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        harness.stop_process(p)
        raise BenchError("propagation_probe: no result after its window") from None
    if p.returncode != 0:
        raise BenchError(f"propagation_probe exited {p.returncode}")
    return json.loads(out)


def propagation(result):
    """Samples (ms) from the leader's segment (seen[0]) to each follower's
    (seen[1:]), for the tokens the leader showed in the window (not at attach,
    not in its last TAIL_S); and how many of those a follower never showed."""
    ready, end_ns = result["ready_ns"], result["end_ns"]
    leader = {k: ns for k, ns in result["seen"][0]
              if ready < ns <= end_ns - TAIL_S * 1e9}
    samples, missed, early = [], 0, 0
    for seen in result["seen"][1:]:
        at = dict((k, ns) for k, ns in seen)
        for k, t0 in leader.items():
            if k not in at:
                missed += 1
            elif at[k] < t0:
                early += 1  # shown by a follower before the leader: impossible, counted
            else:
                samples.append((at[k] - t0) / 1e6)
    return sorted(samples), missed, early, len(leader)


def summary(samples):
    if not samples:
        return {"samples": 0}
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    return {"median_ms": round(statistics.median(samples), 3), "p99_ms": round(p99, 3),
            "max_ms": round(samples[-1], 3), "samples": len(samples)}


# ---------------------------------------------------------------- one window


def load_window(hosts, etcd, server, run):
    """Calls run() and returns, over it, the refreshers' and etcd's CPU, the
    authorization server's counters and etcd's load; run's result under "run"."""
    m0, st0, t0 = etcd.metrics(), server_stats(server), time.monotonic()
    cpu0 = [h.cpu_s() for h in hosts] + [cpu_s(etcd.proc.pid)]
    result = run()
    cpu1 = [h.cpu_s() for h in hosts] + [cpu_s(etcd.proc.pid)]
    m1, st1, wall = etcd.metrics(), server_stats(server), time.monotonic() - t0
    for h in hosts:
        h.check_alive()
    cpu = [(b - a) / wall * 100 for a, b in zip(cpu0, cpu1)]
    refreshes = st1["refresh_ok"] - st0["refresh_ok"]
    load = etcd_load(m0, m1, wall, refreshes)
    # Every host holds a lease (a follower to campaign at once when the leader
    # goes) and keeps it alive every lease_ttl_s / 3, the leader included.
    load["keepalives_per_host_per_hour"] = round(
        load["per_hour"].get("grpc LeaseKeepAlive msgs in", 0) / len(hosts))
    return {"followers": len(hosts) - 1, "window_s": round(wall, 1), "refreshes": refreshes,
            "token_requests": st1["token_requests"] - st0["token_requests"],
            "replays": st1["replays"] - st0["replays"],
            "rejected": st1["rejected"] - st0["rejected"],
            "cpu_pct": {"leader": round(cpu[0], 2), "followers_total": round(sum(cpu[1:-1]), 2),
                        "follower_mean": round(statistics.mean(cpu[1:-1]), 3),
                        "follower_max": round(max(cpu[1:-1]), 2), "etcd": round(cpu[-1], 2)},
            "etcd": load, "run": result}


def busy_window(probe, hosts, etcd, server, seconds):
    """A window with a refresh about every second: propagation, CPU, etcd's load."""
    p, _ = run_probe(probe, hosts, seconds)
    out = load_window(hosts, etcd, server, lambda: finish_probe(p, seconds))
    result = out.pop("run")
    samples, missed, early, tokens = propagation(result)
    # The probe's resolution: a token is seen within one pass of its arrival.
    pass_us = (result["end_ns"] - result["ready_ns"]) / 1e3 / max(1, result["passes"])
    out.update({"tokens_in_leader_segment": tokens, "missed": missed, "before_leader": early,
                "propagation": summary(samples), "probe_pass_us": round(pass_us, 1)})
    return out


def idle_window(hosts, etcd, server, seconds):
    """A window without a refresh (tokens of an hour): what holding the
    election and the watches costs."""
    out = load_window(hosts, etcd, server, lambda: time.sleep(seconds))
    del out["run"]
    return out


# ---------------------------------------------------------------- the run


def wait_hosts(hosts, pred, timeout_s, what):
    """Waits until pred(host) holds for every host; names one that never did."""
    pending = list(hosts)

    def done():
        pending[:] = [h for h in pending if not pred(h)]
        return not pending
    try:
        wait_for(done, timeout_s, what, interval_s=0.1)
    except TimedOut:
        h = pending[0]
        st = h.status()
        raise BenchError(f"{len(pending)} of {len(hosts)} hosts not ready after {timeout_s:.0f} s "
                         f"waiting for {what}; {h.tag}: coordination "
                         f"{json.dumps(st.get('coordination'))}, credentials "
                         f"{json.dumps(st.get('credentials'))[:300]} (log {h.refresher.log_path})"
                         ) from None


def add_followers(hosts, n, server, etcd, seal_hex):
    """Adds followers to `hosts` (the leader first) until it holds n hosts."""
    new = [Host(f"f{i}", server, etcd, seal_hex) for i in range(len(hosts), n)]
    hosts += new
    timeout = 60 + 0.5 * len(new)
    wait_hosts(new, lambda h: h.role() == "follower", timeout, "role follower")
    wait_hosts(new, Host.shows_token, timeout, "a token in their segment")


def stop_hosts(hosts):
    """SIGTERM to every refresher at once, then each waited for (SIGKILL after 10 s)."""
    for h in hosts:
        if h.refresher.alive():
            os.kill(h.pid, signal.SIGTERM)
    for h in hosts:
        harness.stop_process(h.refresher.proc, grace_s=10)


def start_leader(base, etcd, access_ttl_s):
    server, refresh_file = start_authserver(base, access_ttl_s)
    seal_hex = os.urandom(32).hex()  # 64 hex digits: a seal_key_file format
    harness.remember(seal_hex)
    leader = Host("leader", server, etcd, seal_hex, refresh_file)
    wait_for(lambda: leader.role() == "leader", 60, "the leader's status to say role leader")
    wait_for(leader.shows_token, 60, "a token in the leader's segment")
    return server, leader, seal_hex


def measure(steps, seconds, window, access_ttl_s):
    """A fresh etcd, authorization server (access tokens of access_ttl_s) and
    leader; then, for each number of followers in `steps`, followers added and
    window(hosts, etcd, server, seconds)."""
    base = harness.Workspace("propbench")
    hosts, etcd, phases = [], None, []
    try:
        etcd = Etcd(base)
        server, leader, seal_hex = start_leader(base, etcd, access_ttl_s)
        hosts.append(leader)
        for n in steps:
            add_followers(hosts, n + 1, server, etcd, seal_hex)
            log(f"{n} followers: a window of {seconds:g} s, access tokens of {access_ttl_s} s")
            phases.append(window(hosts, etcd, server, seconds))
    finally:
        stop_hosts(hosts)
        if etcd is not None:
            etcd.stop()
        harness.cleanup_all()
    return phases


def net_per_refresh(busy, idle):
    """etcd's work per refresh beyond what the same fleet does idle:
    (busy's rate - idle's rate) x busy's window / refreshes, by key."""
    out = {}
    for b in busy:
        i = next((x for x in idle if x["followers"] == b["followers"]), None)
        if i is None or not b["refreshes"]:
            continue
        hours = b["window_s"] / 3600
        out[str(b["followers"])] = {
            k: round((v - i["etcd"]["per_hour"].get(k, 0)) * hours / b["refreshes"], 2)
            for k, v in b["etcd"]["per_hour"].items()}
    return out


def no_secret_in_logs():
    files, hits, problems, values = harness.scan_logs()
    if problems:
        raise BenchError(f"the issued logs cannot be read: {problems[0]}")
    if hits:
        f, what = sorted(hits.items())[0]
        raise BenchError(f"a secret or token in {len(hits)} log file(s), e.g. {f}: {what[0]}")
    return {"files": files, "values": values}


def verdict(phases, idle):
    """Fails the run on what must never happen, whatever the timing."""
    for p in phases + idle:
        if p["replays"] or p["rejected"]:
            raise BenchError(f"{p['followers']} followers: the server saw {p['replays']} "
                             f"replays and {p['rejected']} rejected requests")
    for p in phases:
        n = p["followers"]
        if p["propagation"]["samples"] == 0:
            raise BenchError(f"{n} followers: no follower showed a token the leader published "
                             f"in the window ({p['tokens_in_leader_segment']} published)")
        if p["before_leader"]:
            raise BenchError(f"{n} followers: {p['before_leader']} tokens shown by a follower "
                             f"before the leader's segment")


# ---------------------------------------------------------------- main


def etcd_version():
    r = subprocess.run([ETCD, "--version"], capture_output=True, text=True, timeout=10)
    return (r.stdout.splitlines() or ["?"])[0].replace("etcd Version: ", "")


def table(doc):
    lines = [f"{doc['machine']['cpu']}, {doc['machine']['cpus']} CPUs, load "
             f"{doc['load_before']} before, {doc['load_after']} after",
             f"etcd {doc['etcd_version']}, lease_ttl_s {doc['lease_ttl_s']}, "
             f"a refresh about every {doc['access_ttl_s'] / 2:g} s, windows of "
             f"{doc['seconds']:g} s (idle: {doc['seconds'] / 2:g} s)",
             "followers | samples | median ms | p99 ms | max ms | missed | refreshes | "
             "CPU % leader | followers (each) | etcd"]
    for p in doc["phases"]:
        pr, c = p["propagation"], p["cpu_pct"]
        lines.append(f"{p['followers']} | {pr['samples']} | {pr.get('median_ms')} | "
                     f"{pr.get('p99_ms')} | {pr.get('max_ms')} | {p['missed']} | "
                     f"{p['refreshes']} | {c['leader']} | {c['followers_total']} "
                     f"({c['follower_mean']}) | {c['etcd']}")
    for p in doc["idle"]:
        c = p["cpu_pct"]
        lines.append(f"idle, {p['followers']} followers: CPU % leader {c['leader']}, followers "
                     f"{c['followers_total']}, etcd {c['etcd']}; etcd per hour "
                     f"{json.dumps(p['etcd']['per_hour'])}")
    for n, per in doc["net_per_refresh"].items():
        lines.append(f"per refresh beyond idle, {n} followers: {json.dumps(per)}")
    return "\n".join(lines)


def parse_args(argv):
    import argparse
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("build_dir", nargs="?", help="default: build-bench, else build")
    p.add_argument("--smoke", action="store_true", help="N = 1 and 3, 5 s windows (CI)")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.add_argument("--seconds", type=float, help="each window (default 60; 5 with --smoke)")
    p.add_argument("--followers", help="comma-separated, growing (default 1,10,100)")
    p.add_argument("--markdown", action="store_true",
                   help="markdown tables on stdout (bench/report.py's), with the machine")
    p.add_argument("--from-json", metavar="FILE",
                   help="measure nothing: print the --json document FILE of an earlier run")
    a = p.parse_args(argv)
    a.steps = [int(x) for x in (a.followers or ("1,3" if a.smoke else "1,10,100")).split(",")]
    if any(n < 1 for n in a.steps) or a.steps != sorted(set(a.steps)):
        p.error("--followers: growing positive numbers")
    a.seconds = a.seconds or (5.0 if a.smoke else 60.0)
    if a.build_dir is None:
        a.build_dir = next((d for d in (os.path.join(ROOT, "build-bench"),
                                        os.path.join(ROOT, "build"))
                            if os.path.exists(os.path.join(d, "bench", "propagation_probe"))),
                           os.path.join(ROOT, "build"))
    return a


def missing(build):
    """Why this cannot run here (None when it can): a skip, not a pass."""
    if not os.access(ETCD, os.X_OK):
        return f"{ETCD} is not installed (Debian: etcd-server)"
    if not shutil.which("node"):
        return "node is not installed (needed for the test authorization server)"
    if not os.path.exists(os.path.join(harness.AUTHSERVER_DIR, "node_modules", "oidc-provider")):
        return "tests/authserver/node_modules is missing: run tests/authserver/install.sh"
    for exe in ("bench/propagation_probe", "refresher/tokenshm-refresher"):
        if not os.access(os.path.join(build, exe), os.X_OK):
            return f"{build}/{exe} is not built"
    return None


class _Abort(Exception):
    pass


def _abort(signum, frame):
    raise _Abort(f"signal {signum}" if signum != signal.SIGALRM else "the global deadline passed")


def markdown(doc):
    import report
    m = doc["machine"]
    head = [f"# Many hosts on etcd: propagation and cost ({doc['started']})", "",
            f"Measured by `{doc['command']}` on {m['cpu']}, {m['cpus']} CPUs ({m['virt']}), "
            f"Linux {m['kernel']}, load average {doc['load_before']} before and "
            f"{doc['load_after']} after.", ""]
    return "\n".join(head + report.propagation_tables({"propagation": doc})) + "\n"


def show(doc, a):
    if a.json:
        print(json.dumps(doc))
    else:
        print(markdown(doc) if a.markdown else table(doc), end="" if a.markdown else "\n")


def main():
    a = parse_args(sys.argv[1:])
    if a.from_json:
        with open(a.from_json, encoding="utf-8") as f:
            show(json.load(f), a)
        return 0
    why = missing(a.build_dir)
    if why and os.environ.get("TOKENSHM_CI") == "1":  # as harness.py: a skip is no pass
        log(f"FAIL: cannot run here, and TOKENSHM_CI=1 makes that a failure: {why}")
        return 1
    if why:
        log(f"SKIP: {why}")
        return SKIP
    harness.REFRESHER = os.path.join(a.build_dir, "refresher", "tokenshm-refresher")
    signal.signal(signal.SIGTERM, _abort)
    signal.signal(signal.SIGALRM, _abort)
    signal.alarm(int(300 + len(a.steps) * (1.5 * a.seconds + 120) + 4 * max(a.steps)))
    # Every work dir under one private root, named after no test's, removed
    # on success and kept (and named) on failure.
    root = tempfile.mkdtemp(prefix="propbench-run-")
    tempfile.tempdir = root
    load_before = run_bench.loadavg()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    try:
        probe = os.path.join(a.build_dir, "bench", "propagation_probe")
        phases = measure(a.steps, a.seconds, functools.partial(busy_window, probe), ACCESS_TTL_S)
        idle = measure(a.steps, a.seconds / 2, idle_window, IDLE_ACCESS_TTL_S)
        signal.alarm(0)
        scan = no_secret_in_logs()
        verdict(phases, idle)
    except (BenchError, _Abort, OSError) as e:
        log(f"FAIL: {type(e).__name__}: {e} (work dirs kept under {root})")
        return 1
    finally:
        signal.alarm(0)
        harness.cleanup_all()
    shutil.rmtree(root, ignore_errors=True)
    command = "/usr/bin/python3 bench/propagation_bench.py" + "".join(
        " " + x for x in sys.argv[1:])
    doc = {"command": command, "started": started,
           "machine": run_bench.machine(), "load_before": load_before,
           "load_after": run_bench.loadavg(), "etcd_version": etcd_version(),
           "lease_ttl_s": LEASE_TTL_S,
           "access_ttl_s": ACCESS_TTL_S, "seconds": a.seconds, "smoke": a.smoke,
           "secret_scan": scan, "phases": phases, "idle": idle,
           "net_per_refresh": net_per_refresh(phases, idle)}
    show(doc, a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
