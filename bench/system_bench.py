#!/usr/bin/python3
"""The whole system's figures, as one JSON document on stdout.

    /usr/bin/python3 bench/system_bench.py BUILD_DIR [--smoke]

publish_to_visible   bench/visible_bench: writer publish -> reader sees it
                     (spinning on get(), blocking in wait()).
response_to_visible  the refresher against the test authorization server
                     (tests/authserver/oidc_server.mjs, HTTP on 127.0.0.1)
                     through a TCP proxy that notes when it forwarded each
                     chunk of the server's answers; a reader
                     (visible_bench --follow) notes when it sees each new
                     version; a sample is the time from the last chunk
                     forwarded before it to that moment. Refreshes are asked
                     for with `tokenshm refresh NAME`.
refresher            the refresher's CPU and resident memory with 1, 100 and
                     1000 credentials: idle (long token lifetime, after every
                     credential has its first token) and while refreshing
                     every credential (asked through the control socket).
slots                bench/slots_bench: open, lookup, get as slots grow.

Everything started is stopped by pid, the temp dir and the segments removed,
also on error. A failed token request (the server's log or the refresher's)
fails the run: exit 1, one line on stderr. Takes about 3 minutes on 2 CPUs,
--smoke about 20 s (fewer samples, 1 and 100 credentials, short windows).
"""

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AUTHSERVER = os.path.join(REPO, "tests", "authserver", "oidc_server.mjs")
CLIENT_ID = "tokenshm-bench"
CLIENT_SECRET = "bench-secret-not-a-real-one"
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    pass


def die(msg):
    raise BenchError(msg)


# ---------------------------------------------------------------- processes


class Processes:
    """Everything this run started, stopped by pid (SIGTERM, then SIGKILL)."""

    def __init__(self):
        self.procs = []

    def start(self, argv, stdout=subprocess.DEVNULL, stderr=None):
        try:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr)
        except OSError as e:
            die(f"start {argv[0]}: {e.strerror}")
        self.procs.append(p)
        return p

    def stop(self, p, grace_s=5.0):
        if p.poll() is None:
            os.kill(p.pid, signal.SIGTERM)
            try:
                p.wait(grace_s)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
        if p in self.procs:
            self.procs.remove(p)
        return p.returncode

    def stop_all(self):
        for p in list(reversed(self.procs)):
            self.stop(p)


def read_line(p, timeout_s, what):
    """One line of p's stdout within timeout_s, as text."""
    fd = p.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + timeout_s
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            die(f"{what}: nothing within {timeout_s} s")
        r, _, _ = select.select([fd], [], [], left)
        if r:
            c = os.read(fd, 1)
            if not c:
                die(f"{what}: exited (status {p.wait()})")
            buf += c
    return buf.decode()


def run_json(argv, timeout_s, none_on_exit=None):
    """argv's stdout as JSON; None when it exits `none_on_exit`."""
    try:
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        die(f"{os.path.basename(argv[0])}: no answer within {timeout_s} s")
    if none_on_exit is not None and r.returncode == none_on_exit:
        return None
    sys.stderr.write(r.stderr.decode(errors="replace"))
    if r.returncode != 0:
        die(f"{os.path.basename(argv[0])} exited {r.returncode}")
    try:
        return json.loads(r.stdout)
    except ValueError:
        die(f"{os.path.basename(argv[0])}: output is not JSON")


# ---------------------------------------------------------------- proxy


class Proxy:
    """A TCP proxy on 127.0.0.1 to `upstream_port`, noting time.monotonic_ns()
    after each chunk it forwards from the server to the client."""

    def __init__(self, upstream_port):
        self.upstream = ("127.0.0.1", upstream_port)
        self.forwarded_ns = []
        self.lock = threading.Lock()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.conns += [client, server]
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, src, dst, note):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
                if note:
                    t = time.monotonic_ns()
                    with self.lock:
                        self.forwarded_ns.append(t)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def last_forward_before(self, t_ns):
        with self.lock:
            before = [t for t in self.forwarded_ns if t <= t_ns]
        return before[-1] if before else None

    def close(self):
        self.listener.close()
        for s in self.conns:
            s.close()


# ---------------------------------------------------------------- the system


class System:
    """A temp dir holding the authorization server, one refresher, their
    configs and logs; `close` stops both and removes the dir and segment."""

    def __init__(self, build, tag, procs):
        self.build = build
        self.procs = procs
        self.dir = tempfile.mkdtemp(prefix=f"tokenshm-sysbench-{tag}-")
        self.segment = f"tokenshm-sysbench-{os.getpid()}-{tag}"
        self.server = self.refresher = None
        self.server_log = os.path.join(self.dir, "server.jsonl")
        self.refresher_log = os.path.join(self.dir, "refresher.log")

    def start_server(self, access_ttl_s):
        clients = os.path.join(self.dir, "clients.json")
        with open(clients, "w") as f:
            json.dump([{"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                        "token_endpoint_auth_method": "client_secret_basic",
                        "grant_types": ["client_credentials"]}], f)
        argv = ["node", AUTHSERVER, "--port", "0", "--host", "127.0.0.1",
                "--access-ttl", str(access_ttl_s), "--clients", clients,
                "--log", self.server_log]
        with open(os.path.join(self.dir, "server.stderr"), "wb") as err:
            self.server = self.procs.start(argv, subprocess.PIPE, err)
        ready = json.loads(read_line(self.server, 30, "the authorization server"))
        if ready.get("ready") is not True:
            die("the authorization server's first line is not its ready line")
        return ready["port"]

    def start_refresher(self, port, credentials):
        secret = os.path.join(self.dir, "client.secret")
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(CLIENT_SECRET)
        creds = [{"name": f"c{i}", "grant": "client_credentials", "client_id": CLIENT_ID,
                  "client_secret_file": secret, "min_interval_s": 0, "timeout_s": 10,
                  "token_endpoint": f"http://127.0.0.1:{port}/token"}
                 for i in range(credentials)]
        self.control_socket = os.path.join(self.dir, "ctl.sock")
        config = os.path.join(self.dir, "config.json")
        with open(config, "w") as f:
            json.dump({"segment": self.segment, "state_dir": os.path.join(self.dir, "state"),
                       "control_socket": self.control_socket, "max_token_bytes": 1024,
                       "credentials": creds}, f)
        with open(self.refresher_log, "wb") as err:
            self.refresher = self.procs.start(
                [os.path.join(self.build, "refresher", "tokenshm-refresher"), "--config", config],
                stderr=err)

    def status(self):
        """{name: (state, version)} from `tokenshm status --json`; {} while
        the refresher has not initialised its segment (exit 3)."""
        st = run_json([os.path.join(self.build, "reader", "tokenshm"), "status", "--json",
                       "--segment", self.segment], 10, none_on_exit=3)
        if st is None:
            return {}
        return {c["name"]: (c.get("state"), c.get("version", 0)) for c in st["credentials"]}

    def wait_versions(self, above, timeout_s, what):
        """Waits until every credential is valid with a version above
        above[name] (0 when absent); returns the status."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.check_logs()
            if self.refresher.poll() is not None:
                die(f"the refresher exited ({self.refresher.returncode}) while {what}")
            st = self.status()
            done = [n for n, (s, v) in st.items() if s == "valid" and v > above.get(n, 0)]
            if st and len(done) == len(st):
                return st
            if time.monotonic() > deadline:
                die(f"{what}: {len(done)} of {len(st)} credentials done in {timeout_s} s")
            time.sleep(0.05)

    def check_logs(self):
        """Fails the run on any failed token request or refresher error."""
        if os.path.exists(self.server_log):
            with open(self.server_log) as f:
                for line in f:
                    e = json.loads(line) if line.strip() else {}
                    if "outcome" in e and e["outcome"] != "ok":
                        die(f"a token request failed: {e['outcome']} ({e.get('detail')})")
        with open(self.refresher_log, errors="replace") as f:
            for line in f:
                if line.split(" ", 2)[1:2] == ["error"]:
                    die(f"the refresher logged an error: {line.strip()[:300]}")

    def control(self, requests):
        """Sends JSON lines on the control socket; returns the answers."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        try:
            s.connect(self.control_socket)
            f = s.makefile("rwb")
            answers = []
            for r in requests:
                f.write(json.dumps(r).encode() + b"\n")
                f.flush()
                answers.append(json.loads(f.readline() or b"null"))
            return answers
        except OSError as e:
            die(f"control socket: {e.strerror or e}")
        finally:
            s.close()

    def close(self):
        for p in (self.refresher, self.server):
            if p is not None:
                self.procs.stop(p)
        try:
            os.unlink(f"/dev/shm/{self.segment}")
        except FileNotFoundError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------- measures


def cpu_s_stat(pid):
    """utime + stime of the whole process (exited threads included), s, in
    clock ticks (10 ms: 0.2 % of a 5 s window)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_s_sched(pid):
    """CPU time of the process's live threads from schedstat, s, in ns."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except FileNotFoundError:
            pass
    return total / 1e9


class CpuWindow:
    """The process's CPU time and wall time between `__init__` and `end`.
    Uses schedstat (ns) unless utime + stime grew by more than two ticks
    over it: then threads that exited in the window took CPU schedstat no
    longer shows (the refresher has one thread; libcurl may add resolvers)."""

    def __init__(self, pid):
        self.pid = pid
        self.sched, self.stat, self.t = cpu_s_sched(pid), cpu_s_stat(pid), time.monotonic()

    def end(self):
        sched = cpu_s_sched(self.pid) - self.sched
        stat = cpu_s_stat(self.pid) - self.stat
        wall = time.monotonic() - self.t
        return (stat if stat > sched + 2 / CLK_TCK else sched), wall


def sockets(pid):
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            n += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except FileNotFoundError:
            pass
    return n


def memory_kib(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                out[k] = int(v.split()[0])
    return out


def response_to_visible(build, procs, refreshes):
    sysm = System(build, "resp", procs)
    proxy = None
    try:
        proxy = Proxy(sysm.start_server(3600))
        sysm.start_refresher(proxy.port, 1)
        sysm.wait_versions({}, 30, "waiting for the first token")
        follower = procs.start([os.path.join(build, "bench", "visible_bench"), "--follow",
                                sysm.segment, "c0", "--count", str(refreshes), "--timeout", "15"],
                               subprocess.PIPE)
        last = int(read_line(follower, 10, "visible_bench --follow").split()[1])
        samples = []
        for _ in range(refreshes):
            r = subprocess.run([os.path.join(build, "reader", "tokenshm"), "refresh", "c0",
                                "--segment", sysm.segment], stdin=subprocess.DEVNULL,
                               capture_output=True, timeout=15)
            if r.returncode != 0:
                die(f"tokenshm refresh exited {r.returncode}: {r.stderr.decode().strip()}")
            t_ns, version = map(int, read_line(follower, 20, "visible_bench --follow").split())
            if version <= last:
                die("visible_bench --follow saw no newer version")
            last = version
            fwd = proxy.last_forward_before(t_ns)
            if fwd is None:
                die("the proxy forwarded nothing before a new version")
            samples.append((t_ns - fwd) / 1000)
            time.sleep(0.02)
        if procs.stop(follower) not in (0, -signal.SIGTERM):
            die("visible_bench --follow failed")
        sysm.check_logs()
    finally:
        if proxy:
            proxy.close()
        sysm.close()
    samples.sort()
    return {"median_us": round(samples[len(samples) // 2], 1),
            "max_us": round(samples[-1], 1), "samples": len(samples)}


def refresh_all(sysm, versions, timeout_s):
    """Asks for a refresh of every credential on one control connection and
    waits until each has a newer version; returns the new versions."""
    answers = sysm.control([{"op": "refresh", "name": n} for n in versions])
    bad = [a for a in answers if not a or not a.get("ok")
           or a.get("action") not in ("refreshing", "joined")]
    if bad:
        die(f"the control socket refused a refresh: {bad[0]}")
    after = sysm.wait_versions(versions, timeout_s, "refreshing every credential")
    return {n: v for n, (_, v) in after.items()}


def refresher_figures(build, procs, credentials, idle_s):
    """Idle, then `rounds` refreshes of every credential (at least ~100
    refreshes in all, so one credential is not one sample)."""
    sysm = System(build, f"r{credentials}", procs)
    timeout_s = 60 + credentials * 0.1
    try:
        sysm.start_refresher(sysm.start_server(3600), credentials)
        versions = {n: v for n, (_, v) in
                    sysm.wait_versions({}, timeout_s, "waiting for the first tokens").items()}
        pid = sysm.refresher.pid
        w = CpuWindow(pid)
        time.sleep(idle_s)
        idle_cpu, idle_wall = w.end()
        idle_mem = memory_kib(pid)
        idle_sockets = sockets(pid)
        rounds = max(1, 100 // credentials)
        w = CpuWindow(pid)
        for _ in range(rounds):
            versions = refresh_all(sysm, versions, timeout_s)
        busy_cpu, busy_wall = w.end()
        busy_mem = memory_kib(pid)
        sysm.check_logs()
    finally:
        sysm.close()
    refreshes = rounds * credentials
    sys.stderr.write(f"system_bench: refresher, {credentials} credentials: idle RssAnon "
                     f"{idle_mem['RssAnon']} RssFile {idle_mem['RssFile']} RssShmem "
                     f"{idle_mem['RssShmem']} KiB, {idle_sockets} sockets open\n")
    return {"credentials": credentials,
            "idle_cpu_pct": round(idle_cpu / idle_wall * 100, 4),
            "idle_rss_kib": idle_mem["VmRSS"],
            # VmRSS's parts: the refresher's own (heap, stacks), shared
            # libraries, and the segment (shared with every reader)
            "idle_rss_anon_kib": idle_mem["RssAnon"],
            "idle_rss_file_kib": idle_mem["RssFile"],
            "idle_rss_shmem_kib": idle_mem["RssShmem"],
            "refreshes": refreshes,
            "refresh_cpu_ms_per_refresh": round(busy_cpu * 1000 / refreshes, 3),
            "refreshing_cpu_pct": round(busy_cpu / busy_wall * 100, 2),
            "refreshing_rss_kib": busy_mem["VmRSS"],
            "peak_rss_kib": busy_mem["VmHWM"]}


def parse_args(argv):
    args = [a for a in argv if a != "--smoke"]
    if len(args) != 1 or args[0].startswith("-"):
        sys.stderr.write("usage: system_bench.py BUILD_DIR [--smoke]\n")
        sys.exit(2)
    build = args[0]
    for exe in ("bench/visible_bench", "bench/slots_bench", "refresher/tokenshm-refresher",
                "reader/tokenshm"):
        if not os.access(os.path.join(build, exe), os.X_OK):
            sys.stderr.write(f"system_bench: {build}/{exe}: not built\n")
            sys.exit(2)
    if shutil.which("node") is None or not os.path.isdir(
            os.path.join(REPO, "tests", "authserver", "node_modules")):
        sys.stderr.write("system_bench: needs node and tests/authserver/install.sh run\n")
        sys.exit(2)
    return build, "--smoke" in argv


def run(build, smoke, procs):
    bench = os.path.join(build, "bench")
    out = {"publish_to_visible": run_json(
        [os.path.join(bench, "visible_bench"), "--samples", "200" if smoke else "3000",
         "--seconds", "5" if smoke else "20"], 60)}
    out["response_to_visible"] = response_to_visible(build, procs, 5 if smoke else 30)
    out["refresher"] = [refresher_figures(build, procs, n, 1 if smoke else 5)
                        for n in ((1, 100) if smoke else (1, 100, 1000))]
    out["slots"] = run_json([os.path.join(bench, "slots_bench"), "--repeats",
                             "20" if smoke else "200"], 60)["slots"]
    return out


def main():
    build, smoke = parse_args(sys.argv[1:])
    procs = Processes()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        out = run(build, smoke, procs)
    except BenchError as e:
        sys.stderr.write(f"system_bench: {e}\n")
        return 1
    finally:
        procs.stop_all()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
