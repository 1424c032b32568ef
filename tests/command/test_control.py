"""The control socket (SPEC.md, "The control socket"), end to end against the
oidc test server and a live refresher; token requests are counted by the
server (--test-control, /_test/stats).

  test_01: `tokenshm refresh NAME --wait` gets a new token: one token request.
  test_02: `get NAME --invalid V` reports, waits and prints the new token; the
           same report again (V is old now) answers at once, no token request.
  test_03: a hundred reports of one version (CLI processes and raw clients,
           concurrently) cause one token request.
  test_04: concurrent `refresh` asks within min_interval_s share one token
           request, and every answer says when it may go out.
  test_05: `status` over the socket; bad requests, an unknown credential, an
           over-long line are answered with errors.
  test_06: a stopped refresher removes its socket: refresh and get --invalid
           exit 7.
  test_07: a socket left by kill -9 is replaced by the next refresher; a file
           that is not a socket is never removed (the refresher exits 1).
  test_08: a peer of another uid (nobody) that can reach the socket file is
           refused by SO_PEERCRED: an answer saying so and a log line.
  test_09: hostile input (random bytes, over-long and non-UTF-8 lines, clients
           that never read their answers, clients that keep every slot)
           leaves the refresher serving: every answer is one line of valid
           JSON, and a 401 report still gets through.
"""

import random

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))

import harness  # noqa: E402
from harness import IntegrationTest, Workspace, remember, remember_basic, wait_for  # noqa: E402


def ask(path, request, timeout=10):
    """One request line to the control socket; the answer, decoded."""
    line = request if isinstance(request, (bytes, str)) else json.dumps(request)
    if isinstance(line, str):
        line = line.encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(line + b"\n")
        buf = b""
        while b"\n" not in buf:
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
    return json.loads(buf.split(b"\n", 1)[0])


def burst(path, requests):
    """Sends every request at once, over its own connection (all connected
    first, then released together); the answers in order."""
    answers = [None] * len(requests)
    ready = threading.Barrier(len(requests))

    def one(i):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(20)
            s.connect(path)
            ready.wait(20)
            s.sendall(json.dumps(requests[i]).encode() + b"\n")
            buf = b""
            while b"\n" not in buf:
                chunk = s.recv(4096)
                if not chunk:
                    break
                buf += chunk
            answers[i] = json.loads(buf.split(b"\n", 1)[0])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return answers


class Control(IntegrationTest):

    @classmethod
    def setUpClass(cls):
        cls.server_ws = Workspace("control-server")
        # Two-minute tokens refreshed 10 s before expiry: nothing refreshes
        # by itself while a test counts token requests.
        cls.srv = cls.server_ws.server("oidc", ["--access-ttl", "120", "--test-control"])
        cls.addClassCleanup(cls.server_ws.stop_all)
        remember_basic("tokenshm-demo", "demo-secret")

    def token_requests(self):
        with urllib.request.urlopen(self.srv.base + "/_test/stats", timeout=5) as r:
            return json.loads(r.read())["token_requests"]

    def cred(self, name, **kw):
        c = {
            "name": name,
            "token_endpoint": self.srv.token_endpoint,
            "grant": "client_credentials",
            "client_id": "tokenshm-demo",
            "client_secret_file": self.ws.secret_file("demo.secret", "demo-secret"),
            "refresh_before_s": 10,
            "min_interval_s": 1,
            "min_backoff_s": 1,
            "max_backoff_s": 4,
            "timeout_s": 5,
        }
        c.update(kw)
        return c

    def start(self, name="c", **kw):
        """A refresher with one credential, once it serves a token; its socket path."""
        cfg = self.ws.config([self.cred(name, **kw)])
        r = self.ws.refresher(cfg)
        self.ws.wait_state(name, "valid", 20)
        sock = os.path.join(self.ws.dir, "ctl.sock")
        wait_for(lambda: os.path.exists(sock), 10, "the control socket")
        return r, sock

    def version(self, name="c"):
        return self.ws.cred(name)["version"]

    def wait_new_token(self, name, issued_before):
        return wait_for(lambda: (c := self.ws.cred(name)) and c["issued_at_ms"] > issued_before
                        and c, 20, f"a new token for {name}")

    def test_01_refresh_waits_for_a_new_token(self):
        r, sock = self.start()
        before = self.ws.cred("c")
        n0 = self.token_requests()
        out = self.ws.cli("refresh", "c", "--wait", "20", timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr.decode())
        self.assertIn("new token", out.stdout.decode())
        after = self.ws.cred("c")
        self.assertGreater(after["version"], before["version"])
        self.assertGreater(after["issued_at_ms"], before["issued_at_ms"])
        self.assertEqual(self.token_requests() - n0, 1)
        self.assertIn("event=refresh_asked", r.log())

    def test_02_get_invalid_reports_then_prints_the_new_token(self):
        _, sock = self.start()
        rc, old, err = self.ws.get("c")
        self.assertEqual(rc, 0, err)
        v = self.version()
        n0 = self.token_requests()
        rc, new, err = self.ws.get("c", "--invalid", str(v), "--wait", "8")
        self.assertEqual(rc, 0, err)
        self.assertNotEqual(new, old, "get --invalid printed the rejected token")
        self.assertEqual(self.token_requests() - n0, 1)
        # The same report again: that version is old now, the answer is at once.
        a = ask(sock, {"op": "invalid", "name": "c", "version": v})
        self.assertTrue(a["ok"], a)
        self.assertEqual(a["action"], "newer")
        self.assertGreater(a["version"], v)
        rc, again, err = self.ws.get("c", "--invalid", str(v), "--wait", "8")
        self.assertEqual(rc, 0, err)
        self.assertEqual(again, new)
        self.assertEqual(self.token_requests() - n0, 1, "a stale report caused a token request")

    def test_03_a_hundred_reports_one_token_request(self):
        _, sock = self.start()
        before = self.ws.cred("c")
        v = before["version"]
        n0 = self.token_requests()
        argv = [harness.TOKENSHM, "get", "c", "--invalid", str(v), "--wait", "20",
                "--segment", self.ws.segment]
        procs = [subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE) for _ in range(40)]
        answers = burst(sock, [{"op": "invalid", "name": "c", "version": v}] * 60)
        outs = [p.communicate(timeout=60) for p in procs]
        tokens = set()
        for p, (out, err) in zip(procs, outs):
            self.assertEqual(p.returncode, 0, err.decode())
            remember(out.decode().strip())
            tokens.add(out.decode().strip())
        for a in answers:
            self.assertTrue(a and a["ok"], a)
            self.assertIn(a["action"], ("refreshing", "joined", "waiting", "newer"))
        self.wait_new_token("c", before["issued_at_ms"])
        self.assertEqual(len(tokens), 1, "the reporters did not all get the one new token")
        self.assertEqual(self.token_requests() - n0, 1)

    def test_04_concurrent_refresh_asks_share_one_request(self):
        _, sock = self.start(min_interval_s=5)
        # A refresh now opens a 5 s min_interval_s window.
        before = self.ws.cred("c")
        first = ask(sock, {"op": "refresh", "name": "c"})
        self.assertTrue(first["ok"], first)
        after_first = self.wait_new_token("c", before["issued_at_ms"])
        wait_for(lambda: not ask(sock, {"op": "status"})["credentials"][0]["in_flight"], 10,
                 "the first refresh to finish")
        n0 = self.token_requests()
        t0 = int(time.time() * 1000)
        answers = burst(sock, [{"op": "refresh", "name": "c"}] * 30)
        for a in answers:
            self.assertTrue(a and a["ok"], a)
        actions = [a["action"] for a in answers]
        self.assertEqual(actions.count("refreshing"), 0, actions)
        self.assertTrue(all(x in ("waiting", "joined") for x in actions), actions)
        # One instant, give or take the ms each answer's clock reading rounds.
        not_before = [a["not_before_unix_ms"] for a in answers if a["action"] == "waiting"]
        self.assertLessEqual(max(not_before) - min(not_before), 10, not_before)
        self.assertGreater(min(not_before), t0, "min_interval_s did not hold")
        st = ask(sock, {"op": "status"})["credentials"][0]
        self.assertTrue(st["refresh_asked"], st)
        self.wait_new_token("c", after_first["issued_at_ms"])
        wait_for(lambda: not ask(sock, {"op": "status"})["credentials"][0]["refresh_asked"], 10,
                 "the asked refresh to be answered")
        self.assertEqual(self.token_requests() - n0, 1)

    def test_05_status_and_bad_requests(self):
        r, sock = self.start()
        st = ask(sock, {"op": "status"})
        self.assertTrue(st["ok"])
        self.assertEqual(st["refresher"]["pid"], r.pid)
        self.assertIn("requests_in_flight", st["refresher"])
        c = st["credentials"][0]
        self.assertEqual((c["name"], c["state"]), ("c", "valid"))
        for key in ("version", "expires_at_ms", "in_flight", "next_attempt_unix_ms", "backoff_ms",
                    "failures", "last_error"):
            self.assertIn(key, c)
        self.assertEqual(c["version"], self.version())
        self.assertNotIn("token", c)
        for bad in (b"not json", b"[]", json.dumps({"op": "nope"}).encode(),
                    json.dumps({"op": "refresh"}).encode(),
                    json.dumps({"op": "invalid", "name": "c"}).encode(),
                    json.dumps({"op": "invalid", "name": "c", "version": 10**9}).encode()):
            a = ask(sock, bad)
            self.assertEqual((a["ok"], a["error"]), (False, "bad_request"), bad)
            self.assertTrue(a["message"])
        a = ask(sock, {"op": "refresh", "name": "nosuch"})
        self.assertEqual(a["error"], "no_such_credential")
        out = self.ws.cli("refresh", "nosuch")
        self.assertEqual(out.returncode, 4, out.stderr.decode())
        a = ask(sock, b"{" + b" " * 5000 + b"}")
        self.assertEqual(a["error"], "bad_request")
        self.assertIn("longer than", a["message"])
        self.assertTrue(r.alive())
        out = self.ws.cli("refresh")
        self.assertEqual(out.returncode, 2)
        out = self.ws.cli("get", "c", "--invalid", "x")
        self.assertEqual(out.returncode, 2)

    def test_06_no_refresher_exit_7(self):
        r, sock = self.start()
        v = self.version()
        self.assertTrue(stat.S_ISSOCK(os.lstat(sock).st_mode))
        r.stop()
        self.assertEqual(r.proc.wait(10), 0)
        self.assertFalse(os.path.exists(sock), "the socket outlived a clean exit")
        out = self.ws.cli("refresh", "c")
        self.assertEqual(out.returncode, 7, out.stderr.decode())
        self.assertIn("unreachable", out.stderr.decode())
        self.assertEqual(len(out.stderr.decode().strip().splitlines()), 1)
        rc, _, err = self.ws.get("c", "--invalid", str(v))
        self.assertEqual(rc, 7, err)

    def test_07_stale_socket_replaced_non_socket_kept(self):
        r, sock = self.start()
        r.kill9()
        self.assertTrue(stat.S_ISSOCK(os.lstat(sock).st_mode), "kill -9 left no socket to test")
        r2 = self.ws.refresher(os.path.join(self.ws.dir, "config.json"))
        wait_for(lambda: "event=control_listening" in r2.log(), 20, "the new refresher's socket")
        self.assertIn("event=control_stale_removed", r2.log())
        out = self.ws.cli("refresh", "c")
        self.assertEqual(out.returncode, 0, out.stderr.decode())
        r2.stop()
        self.assertEqual(r2.proc.wait(10), 0)
        with open(sock, "w") as f:
            f.write("not a socket")
        r3 = self.ws.refresher(os.path.join(self.ws.dir, "config.json"))
        self.assertEqual(r3.proc.wait(20), 1)
        self.assertIn("is not a socket", r3.log())
        with open(sock) as f:
            self.assertEqual(f.read(), "not a socket")

    def test_09_missing_socket_directory_is_made_one_level_only(self):
        run_dir = os.path.join(self.ws.dir, "run")
        sock = os.path.join(run_dir, "ctl.sock")
        cfg = self.ws.config([self.cred("c")], name="made.json", control_socket=sock)
        r = self.ws.refresher(cfg)
        self.ws.wait_state("c", "valid", 20)
        wait_for(lambda: os.path.exists(sock), 10, "the socket in the directory it made")
        self.assertEqual(stat.S_IMODE(os.stat(run_dir).st_mode), 0o755)
        self.assertIn("event=control_dir_created", r.log())
        out = self.ws.cli("refresh", "c")
        self.assertEqual(out.returncode, 0, out.stderr.decode())
        r.stop()
        self.assertEqual(r.proc.wait(10), 0)
        deep = os.path.join(self.ws.dir, "no", "such", "ctl.sock")
        cfg = self.ws.config([self.cred("c")], name="deep.json", control_socket=deep)
        r2 = self.ws.refresher(cfg)
        self.assertEqual(r2.proc.wait(20), 1)
        self.assertIn("cannot create its directory", r2.log())

    def test_08_other_uid_refused_by_peercred(self):
        if os.geteuid() != 0 or not shutil.which("setpriv"):
            self.skipTest("needs root and setpriv to run a client as nobody")
        r, sock = self.start()
        # Let nobody reach the file, so that only SO_PEERCRED can refuse it.
        os.chmod(self.ws.dir, 0o711)
        os.chmod(sock, 0o666)
        client = ("import json,socket,sys\n"
                  "s=socket.socket(socket.AF_UNIX);s.connect(sys.argv[1])\n"
                  "s.sendall(b'{\"op\":\"refresh\",\"name\":\"c\"}\\n')\n"
                  "print(s.makefile().readline().strip())\n")
        out = subprocess.run(["setpriv", "--reuid", "nobody", "--regid", "nogroup",
                              "--clear-groups", sys.executable, "-c", client, sock],
                             capture_output=True, timeout=20)
        self.assertEqual(out.returncode, 0, out.stderr.decode())
        a = json.loads(out.stdout)
        self.assertEqual((a["ok"], a["error"]), (False, "refused"), a)
        self.assertIn("uid 65534", a["message"])
        wait_for(lambda: "event=control_refused" in r.log(), 5, "the refusal's log line")
        line = [x for x in r.log().splitlines() if "event=control_refused" in x][0]
        self.assertIn("uid 65534", line)
        self.assertTrue(r.alive())

    def test_09_hostile_input_leaves_it_serving(self):
        r, sock = self.start()
        rng = random.Random(10)  # fixed seed: a failure repeats
        for _ in range(300):
            junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
            junk = junk.replace(b"\n", b"") or b"x"
            line = rng.choice([junk, b'{"' + junk + b'":1}', b'{"op":"' + junk + b'"}'])
            a = ask(sock, line)  # json.loads of bytes checks it is valid UTF-8
            self.assertFalse(a["ok"], line)
            self.assertIn(a["error"], ("bad_request", "no_such_credential"), line)
        # Clients that send requests and never read, holding their slots...
        greedy = []
        for _ in range(8):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(sock)
            s.setblocking(False)
            try:
                for _ in range(2000):
                    s.send(b'{"op":"status"}\n' * 64)
            except BlockingIOError:
                pass
            greedy.append(s)
        # ...and clients that keep every other slot with a request now and then.
        hogs = []
        for _ in range(40):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(10)
            s.connect(sock)
            s.sendall(b'{"op":"status"}\n')
            s.makefile("rb").readline()
            hogs.append(s)
        # A 401 report from a reader still gets its answer.
        v = self.version()
        out = self.ws.cli("get", "c", "--invalid", str(v), "--wait", "10", timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr.decode())
        remember(out.stdout.decode().strip())
        for s in greedy + hogs:
            s.close()
        self.assertTrue(ask(sock, {"op": "status"})["ok"])
        self.assertTrue(r.alive())


if __name__ == "__main__":
    harness.main()
