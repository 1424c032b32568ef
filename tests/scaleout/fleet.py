"""The pieces of the fleet proof (test_fleet.py): a 3-member etcd cluster,
a per-host proxy in front of the authorization server's token endpoint, and
a "host" (its own segment, state directory, control socket and refresher
process, restarted as a supervisor would).

Everything listens on 127.0.0.1 on free ports, keeps its data under a
workspace's temporary directory and is stopped by pid (harness.spawn), also
when a test fails. Nothing here prints a token, a secret or a seal key.
"""

import http.client
import http.server
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.parse

import harness
from harness import wait_for

ETCD = "/usr/bin/etcd"
ETCDCTL = "/usr/bin/etcdctl"


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pause(proc):
    """SIGSTOP, returning once the process has stopped (waitpid WUNTRACED):
    kill() alone returns while it may still run for a moment."""
    os.kill(proc.pid, signal.SIGSTOP)
    _, status = os.waitpid(proc.pid, os.WUNTRACED)
    if not os.WIFSTOPPED(status):
        raise AssertionError(f"pid {proc.pid} did not stop (wait status {status})")


def resume(proc):
    os.kill(proc.pid, signal.SIGCONT)


# ---------------------------------------------------------------- etcd


class EtcdCluster:
    """Three members with a static --initial-cluster. A member killed or
    stopped comes back with the same data directory and ports."""

    SIZE = 3

    def __init__(self, root, logs):
        self.root, self.logs = root, logs
        self.names = [f"m{i}" for i in range(self.SIZE)]
        self.client = [f"http://127.0.0.1:{free_port()}" for _ in self.names]
        self.peer = [f"http://127.0.0.1:{free_port()}" for _ in self.names]
        self.initial = ",".join(f"{n}={p}" for n, p in zip(self.names, self.peer))
        self.procs = [None] * self.SIZE
        for i in range(self.SIZE):
            self.start(i)
        self.wait_healthy(60)

    def argv(self, i):
        return [ETCD, "--name", self.names[i], "--data-dir", os.path.join(self.root, self.names[i]),
                "--listen-client-urls", self.client[i], "--advertise-client-urls", self.client[i],
                "--listen-peer-urls", self.peer[i], "--initial-advertise-peer-urls", self.peer[i],
                "--initial-cluster", self.initial, "--initial-cluster-state", "new",
                "--initial-cluster-token", "tokenshm-fleet"]

    def start(self, i):
        """Starts member i (again: the same data directory and ports)."""
        if self.procs[i] is not None and self.procs[i].poll() is None:
            raise AssertionError(f"etcd member {self.names[i]} is already running")
        log = open(os.path.join(self.logs, f"etcd-{self.names[i]}.log"), "ab")
        with log:
            self.procs[i] = harness.spawn(self.argv(i), log, subprocess.STDOUT)

    def kill9(self, i):
        harness.kill9(self.procs[i])

    def pause(self, i):
        pause(self.procs[i])

    def resume(self, i):
        resume(self.procs[i])

    def kill_all(self):
        """A full outage: every member SIGKILLed; returns when all are dead."""
        for i in range(self.SIZE):
            self.kill9(i)

    def start_dead(self):
        """Starts every member that is not running."""
        for i, p in enumerate(self.procs):
            if p is None or p.poll() is not None:
                self.start(i)

    def stop(self):
        for p in self.procs:
            if p is not None and p.poll() is None:
                resume(p)
                harness.stop_process(p)

    def ctl(self, *args, endpoints=None, timeout=10):
        argv = [ETCDCTL, "--endpoints", ",".join(endpoints or self.client),
                "--dial-timeout", "1s", "--command-timeout", "3s", *args]
        env = dict(os.environ, ETCDCTL_API="3")
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)

    def healthy(self):
        """True when every member answers a quorum read."""
        return self.ctl("endpoint", "health").returncode == 0

    def wait_healthy(self, timeout_s):
        wait_for(self.healthy, timeout_s, "every etcd member healthy", interval_s=0.3)

    def make_leader(self, i):
        """Moves raft leadership to member i (etcdctl move-leader)."""
        def moved():
            lead = self.leader_index()
            if lead == i:
                return True
            if lead is not None:
                target = format(self.member_ids()[i], "x")
                self.ctl("move-leader", target, endpoints=[self.client[lead]])
            return False
        wait_for(moved, 20, f"etcd member {self.names[i]} to become raft leader", interval_s=0.5)

    def member_ids(self):
        r = self.ctl("endpoint", "status", "-w", "json")
        return [next(s["Status"]["header"]["member_id"] for s in json.loads(r.stdout)
                     if s["Endpoint"] == c) for c in self.client]

    def leader_index(self):
        """The index of the member that is raft leader (None if none answers)."""
        r = self.ctl("endpoint", "status", "-w", "json")
        if r.returncode != 0:
            return None
        for s in json.loads(r.stdout):
            if s["Status"]["header"]["member_id"] == s["Status"]["leader"]:
                return self.client.index(s["Endpoint"])
        return None


# ---------------------------------------------------------------- token proxy


class TokenProxy:
    """Forwards POST /token to the authorization server and records, per
    request, when it arrived and when the server's answer came back. One per
    host: the record says which host sent which request and whether two
    hosts' requests overlapped in time. It records times and status codes
    only, never a body (a body holds secrets)."""

    def __init__(self, upstream_base, host_name):
        self.upstream = urllib.parse.urlsplit(upstream_base)
        self.host_name = host_name
        self.requests = []           # [start, end, status] (Unix seconds)
        self.lock = threading.Lock()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def token_endpoint(self):
        return f"http://127.0.0.1:{self.port}/token"

    def _handler(self):
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # never log a request
                pass

            def do_POST(self):
                start = time.time()
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                status, ctype, answer = proxy.forward(self.path, self.headers, body)
                with proxy.lock:
                    proxy.requests.append([start, time.time(), status])
                self.send_response(status)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(answer)))
                self.send_header("cache-control", "no-store")
                self.end_headers()
                self.wfile.write(answer)
        return Handler

    def forward(self, path, headers, body):
        keep = {k: v for k, v in headers.items()
                if k.lower() in ("authorization", "content-type", "accept")}
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=15)
        try:
            conn.request("POST", self.upstream.path.rstrip("/") + path, body=body, headers=keep)
            r = conn.getresponse()
            return r.status, r.getheader("content-type", "application/json"), r.read()
        except OSError:
            return 502, "application/json", b'{"error":"temporarily_unavailable"}'
        finally:
            conn.close()

    def snapshot(self):
        with self.lock:
            return [list(r) for r in self.requests]

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def overlaps(proxies):
    """Pairs of token requests from two different hosts that overlapped in
    time: [(host a, host b, seconds of overlap)]."""
    spans = sorted((s, e, p.host_name) for p in proxies for s, e, _ in p.snapshot())
    out = []
    for i, (s1, e1, h1) in enumerate(spans):
        for s2, e2, h2 in spans[i + 1:]:
            if s2 >= e1:
                break
            if h1 != h2:
                out.append((h1, h2, round(min(e1, e2) - s2, 3)))
    return out


# ---------------------------------------------------------------- a host


ask = harness.control_request


class Host:
    """One "host": a workspace (segment, state_dir, control socket, logs), a
    token proxy and the refresher, run again and again. Log questions are
    about the current run (`run_log`) unless they say otherwise."""

    def __init__(self, index, proxy):
        self.index = index
        self.name = f"host{index}"
        self.ws = harness.Workspace(f"fleet-{self.name}")
        self.proxy = proxy
        self.log_path = self.ws.log_path("refresher.log")
        self.control_socket = os.path.join(self.ws.dir, "ctl.sock")
        self.config_path = None
        self.proc = None
        self.offset = 0
        self.runs = 0

    def write_config(self, credential, coordination, name="config.json"):
        self.config_path = self.ws.config([credential], name=name, coordination=coordination)
        return self.config_path

    def start(self, config_path=None, fault=None):
        """Starts the refresher; `fault`: its TOKENSHM_FAULT_KILL (fault_point.hpp)."""
        if self.proc is not None and self.proc.poll() is None:
            raise AssertionError(f"{self.name}: the refresher is already running")
        self.offset = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0
        with open(self.log_path, "ab") as err:
            # debug: the leader's published_etcd lines are debug.
            argv = [harness.REFRESHER, "--config", config_path or self.config_path,
                    "--log-level", "debug"]
            env = dict(os.environ)
            env.pop("TOKENSHM_FAULT_KILL", None)
            if fault:
                env["TOKENSHM_FAULT_KILL"] = fault
            self.proc = harness.spawn(argv, subprocess.DEVNULL, err, env=env)
        self.runs += 1
        return self

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill9(self):
        """SIGKILL; returns once the process is gone."""
        harness.kill9(self.proc)

    def pause(self):
        pause(self.proc)

    def resume(self):
        resume(self.proc)

    def stop(self):
        if self.proc is not None:
            if self.proc.poll() is None:
                resume(self.proc)
            harness.stop_process(self.proc)

    def full_log(self):
        if not os.path.exists(self.log_path):
            return ""
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def run_log(self):
        with open(self.log_path, "rb") as f:
            f.seek(self.offset)
            return f.read().decode("utf-8", "replace")

    def events(self, event, whole=False):
        """(time, line) of each `event=EVENT` line of the current run (every run: whole)."""
        text = self.full_log() if whole else self.run_log()
        out = []
        for line in text.splitlines():
            if f" event={event} " in line + " ":
                out.append((harness.log_time(line), line))
        return out

    def lines_with(self, text):
        """Every line of the current run that contains `text`."""
        return [line for line in self.run_log().splitlines() if text in line]

    def role(self):
        """The first word of the current run's last `event=role` detail (None: none yet)."""
        roles = self.events("role")
        return self.role_word(roles[-1][1]) if roles else None

    @staticmethod
    def role_word(line):
        """The first word of an `event=role` line's detail: leader, follower..."""
        detail = line.split(" event=role", 1)[1].strip()
        return detail.split()[0] if detail else ""

    def status(self):
        return ask(self.control_socket, {"op": "status"})

    def token(self, cred):
        """The token in this host's segment now (`tokenshm get`), or None."""
        rc, tok, _ = self.ws.get(cred)
        return tok if rc == 0 else None

    def requests(self):
        return self.proxy.snapshot()

    def requests_started(self, after, before=None):
        return [r for r in self.requests() if r[0] > after and (before is None or r[0] < before)]

    def tail(self, n=1500):
        return self.run_log()[-n:]
