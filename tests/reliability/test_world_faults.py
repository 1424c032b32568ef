#!/usr/bin/python3
"""Faults of the world the refresher must ride out, each with what readers
see, how often the refresher asks meanwhile (bounded: no hot loop) and how
it recovers. Figures go to BUILD/meson-logs/world-faults-report.json.

  test_01: a 5xx storm (500, 502, 503, 504 in turn).
  test_02: a response that stalls mid-body (headers, 22 bytes, then nothing).
  test_03: DNS failure (a .invalid host) after a reload.
  test_04: TLS failure (a server certificate from a CA the refresher does not trust).
  test_05: /dev/shm too small to create the segment (a small tmpfs in a
           private mount namespace; root only).
  test_06: the state directory full, then freed (root only).
  test_07: the state directory read-only, then writable again (root only).

The outage longer than a token lifetime, 429 with Retry-After, HTML pages,
a body over the cap, garbage and truncated bodies are test_faults.py's
(integration suite); clock steps are proven with a fake clock by the unit
tests in tests/refresher (docs/RELIABILITY.md has the table).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

import harness  # noqa: E402
from harness import IntegrationTest, ReaderSampler, wait_for  # noqa: E402

INITIAL_RT = "initial-refresh-token-for-the-world-faults"
FIGURES = {}
WINDOW_S = 8


def ok(expires_in):
    return {"ok": {"expires_in": expires_in, "refresh_token": True}}


def read_text(path):
    with open(path, errors="replace") as f:
        return f.read()


def rc_counts(sampler, since):
    out = {}
    for t, rc, _ in sampler.samples:
        if t >= since:
            out[str(rc)] = out.get(str(rc), 0) + 1
    return out


def need_root(test):
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("nsenter") is None:
        if os.environ.get("TOKENSHM_CI") == "1":
            test.fail("needs root, unshare and nsenter (TOKENSHM_CI=1 makes a skip a failure)")
        test.skipTest("needs root, unshare and nsenter")


class PrivateMounts:
    """A process holding a private mount namespace with a small tmpfs at
    `path`; commands run inside it through nsenter."""

    def __init__(self, path, options):
        os.makedirs(path, exist_ok=True)
        self.path = path
        self.proc = harness.spawn(
            ["unshare", "-m", "--propagation", "private", "sh", "-c",
             f"mount -t tmpfs -o {options},mode=0700 tmpfs '{path}' && echo ready && exec sleep 3600"],
            subprocess.PIPE, subprocess.DEVNULL)
        line = self.proc.stdout.readline()
        if line.strip() != b"ready":
            raise AssertionError("could not mount a tmpfs in a private mount namespace")

    def argv(self, *cmd):
        return ["nsenter", "-t", str(self.proc.pid), "-m", "--", *cmd]

    def run(self, *cmd, check=True):
        return subprocess.run(self.argv(*cmd), capture_output=True, timeout=30, check=check)

    def fill(self):
        # Fill every block (dd stops at ENOSPC), then every inode.
        self.run("dd", "if=/dev/zero", f"of={self.path}/filler", "bs=4k", check=False)
        self.run("sh", "-c", f"i=0; while touch '{self.path}/f'$i 2>/dev/null; do i=$((i+1)); done",
                 check=False)

    def free(self):
        self.run("sh", "-c", f"rm -f '{self.path}'/filler '{self.path}'/f*")

    def stop(self):
        harness.stop_process(self.proc)


class WorldFaults(IntegrationTest):

    @classmethod
    def tearDownClass(cls):
        path = os.path.join(harness.BUILD_DIR, "meson-logs", "world-faults-report.json")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(FIGURES, f, indent=2)
        print(f"\nworld faults: figures in {path}")
        for k, v in FIGURES.items():
            print(f"  {k}: {json.dumps(v)}")

    # ------------------------------------------------------------ helpers
    def credential(self, endpoint, **kw):
        c = {"name": "w", "token_endpoint": endpoint, "grant": "refresh_token",
             "client_id": "fault-client",
             "client_secret_file": self.ws.secret_file("w.secret", "world-fault-secret"),
             "refresh_token_file": self.ws.secret_file("w.refresh", INITIAL_RT),
             "refresh_before_s": 58, "min_interval_s": 1, "min_backoff_s": 1, "max_backoff_s": 2,
             "timeout_s": 2}
        c.update(kw)
        return c

    def fault_setup(self, **kw):
        fs = self.ws.server("fault", ["--script", json.dumps([ok(60)])])
        cfg = self.ws.config([self.credential(fs.token_endpoint, **kw)])
        return fs, cfg

    def sampler(self):
        s = ReaderSampler(self.ws, "w", interval_s=0.2)
        s.start()
        self.addCleanup(s.stop)
        return s

    def assert_chain(self, fs):
        """Each request presents the newest refresh token issued before it."""
        newest = None
        for i, e in enumerate(fs.control_state()["log"]):
            if newest is not None:
                self.assertTrue(e.get("refresh_token_sha256") == newest,
                                f"request {i} did not present the newest refresh token")
            if e.get("issued_refresh_token_sha256") and e["kind"] == "ok":
                newest = e["issued_refresh_token_sha256"]

    def failed_lines(self, r, since):
        return [line for line in r.log_lines("refresh_failed") if harness.log_time(line) >= since]

    def served_fault(self, fs, r, step, expect, window_s=WINDOW_S):
        """Injects `step` into a valid credential; returns the figures of the
        window: requests, what readers got, last_error, recovery time."""
        ws = self.ws
        ws.wait_state("w", "valid", 15)
        rc, before, err = ws.get("w")
        self.assertEqual(rc, 0, err)
        s = self.sampler()
        fs.control(script=[step] if isinstance(step, dict) else step)
        n0 = fs.control_state()["requests"]
        t0 = time.time()
        c = wait_for(lambda: (lambda c: c if c["failures"] >= 1 else None)(ws.cred("w")), 15,
                     "a first failure")
        elapsed = ws.refresher_ran_for(window_s, "the fault window")
        requests = fs.control_state()["requests"] - n0
        c = ws.cred("w")
        self.assertEqual(c["state"], "stale")
        self.assertIn(expect.lower(), c["last_error"].lower())
        rc, now, err = ws.get("w")
        self.assertEqual((rc, now == before), (0, True), "the previous token is not served")
        readers = rc_counts(s, t0)
        self.assertEqual(set(readers), {"0"}, f"readers failed during the fault: {readers}")
        # Backoff from min_backoff_s (1 s): never more than one request a second.
        bound = (time.time() - t0) / 1.0 + 1
        self.assertLessEqual(requests, bound, f"{requests} requests in {time.time() - t0:.1f}s")
        t1 = time.time()
        fs.control(script=[ok(60)])
        ws.wait_state("w", "valid", 10, "recovery")
        recovery = time.time() - t1
        self.assertTrue(r.alive())
        self.assert_chain(fs)
        return {"window_s": round(elapsed, 1), "requests": requests,
                "readers": f"state stale, the previous token served ({readers.get('0', 0)} of "
                           f"{sum(readers.values())} samples)",
                "last_error": c["last_error"][:80], "recovery_s": round(recovery, 1)}

    # ------------------------------------------------------------ server faults
    def test_01_five_xx_storm(self):
        fs, cfg = self.fault_setup()
        r = self.ws.refresher(cfg)
        storm = [{"status": s} for s in (500, 502, 503, 504) * 30]
        FIGURES["5xx storm"] = self.served_fault(fs, r, storm, "HTTP 50", window_s=12)

    def test_02_response_stalls_mid_body(self):
        fs, cfg = self.fault_setup()
        r = self.ws.refresher(cfg)
        FIGURES["stall mid-body"] = self.served_fault(fs, r, {"stall_body": True}, "timed out")

    def test_03_dns_failure_after_a_reload(self):
        ws = self.ws
        fs, cfg = self.fault_setup()
        r = ws.refresher(cfg)
        ws.wait_state("w", "valid", 15)
        rc, before, _ = ws.get("w")
        s = self.sampler()
        t0 = time.time()
        ws.config([self.credential("https://tokenshm-reliability.invalid/token")])
        os.kill(r.pid, signal.SIGHUP)
        c = wait_for(lambda: (lambda c: c if c["failures"] >= 1 else None)(ws.cred("w")), 30,
                     "a DNS failure")
        elapsed = ws.refresher_ran_for(WINDOW_S, "the fault window")
        c = ws.cred("w")
        self.assertEqual(c["state"], "stale")
        self.assertRegex(c["last_error"].lower(), "resolv")
        attempts = len(self.failed_lines(r, t0))
        self.assertLessEqual(attempts, (time.time() - t0) + 1, "retries faster than 1/s")
        rc, now, err = ws.get("w")
        self.assertEqual((rc, now == before), (0, True), "the previous token is not served")
        readers = rc_counts(s, t0)
        self.assertEqual(set(readers), {"0"}, f"readers failed: {readers}")
        t1 = time.time()
        ws.config([self.credential(fs.token_endpoint)])
        os.kill(r.pid, signal.SIGHUP)
        wait_for(lambda: (lambda c: c if c["state"] == "valid" and c["failures"] == 0 else None)(
            ws.cred("w")), 15, "valid again after the reload")
        self.assert_chain(fs)
        FIGURES["DNS failure"] = {
            "window_s": round(elapsed, 1), "attempts": attempts,
            "readers": f"state stale, the previous token served ({readers['0']} samples)",
            "last_error": c["last_error"][:80], "recovery_s": round(time.time() - t1, 1)}

    def test_04_tls_failure_untrusted_certificate(self):
        ws = self.ws
        mint, paths = ws.mint_args("tokenshm-demo")
        srv = ws.server("oidc", ["--access-ttl", "60", *mint], tls=True)
        ws.remember_files(paths)
        harness.remember_basic("tokenshm-demo", "demo-secret")
        secret = ws.secret_file("demo.secret", "demo-secret")

        def cred(ca):
            return {"name": "w", "token_endpoint": srv.token_endpoint, "grant": "refresh_token",
                    "client_id": "tokenshm-demo", "client_secret_file": secret,
                    "refresh_token_file": paths[0], "ca_file": ca, "min_backoff_s": 1,
                    "max_backoff_s": 2, "timeout_s": 2, "min_interval_s": 1}
        cfg = ws.config([cred(harness.certs()["other_ca"])])
        r = ws.refresher(cfg)
        s = self.sampler()
        t0 = time.time()
        wait_for(lambda: (lambda c: c if c and c["failures"] >= 1 else None)(ws.cred("w")), 20,
                 "a TLS failure")
        elapsed = ws.refresher_ran_for(WINDOW_S, "the fault window")
        c = ws.cred("w")
        self.assertEqual(c["state"], "empty")
        self.assertRegex(c["last_error"].lower(), "certificate|ssl|tls")
        attempts = len(self.failed_lines(r, t0))
        self.assertLessEqual(attempts, (time.time() - t0) + 1, "retries faster than 1/s")
        self.assertEqual([x for x in srv.token_log()], [], "a request went through unverified")
        readers = rc_counts(s, t0)
        self.assertEqual(set(readers), {"5"}, f"readers: {readers} (expected exit 5, no token)")
        t1 = time.time()
        ws.config([cred(harness.certs()["ca"])])
        os.kill(r.pid, signal.SIGHUP)
        ws.wait_state("w", "valid", 15, "valid with the right CA")
        FIGURES["TLS failure"] = {
            "window_s": round(elapsed, 1), "attempts": attempts,
            "readers": f"no token yet: get exits 5 ({readers['5']} samples); no request reached the server",
            "last_error": c["last_error"][:80], "recovery_s": round(time.time() - t1, 1)}

    # ------------------------------------------------------------ local faults (root)
    def test_05_dev_shm_too_small_at_creation(self):
        need_root(self)
        ws = self.ws
        fs, cfg = self.fault_setup()
        p = subprocess.run(
            ["unshare", "-m", "--propagation", "private", "sh", "-c",
             f"mount -t tmpfs -o size=16k tmpfs /dev/shm && exec '{os.path.abspath(harness.REFRESHER)}' --config '{cfg}'"],
            capture_output=True, timeout=30)
        err = p.stderr.decode(errors="replace")
        with open(ws.log_path("small-shm.log"), "w") as f:
            f.write(err)
        self.assertEqual(p.returncode, 1, err)
        self.assertIn("No space left on device", err)
        self.assertEqual(fs.control_state()["requests"], 0, "a token request before the segment")
        rc, _, msg = ws.get("w")
        self.assertEqual(rc, 3, msg)
        t1 = time.time()
        ws.refresher(cfg)
        ws.wait_state("w", "valid", 15)
        FIGURES["/dev/shm too small"] = {
            "injected": "tmpfs size=16k at /dev/shm (private mount namespace)",
            "refresher": "exit 1: " + next((l for l in err.splitlines() if "space" in l), "")[:100],
            "requests": 0, "readers": "no segment: get exits 3",
            "recovery_s": round(time.time() - t1, 1)}

    def state_dir_fault(self, label, inject, undo):
        need_root(self)
        ws = self.ws
        fs = ws.server("fault", ["--script", json.dumps([ok(60)])])
        mounts = PrivateMounts(os.path.join(ws.dir, "statefs"), "size=64k,nr_inodes=32")
        self.addCleanup(mounts.stop)
        state_dir = os.path.join(mounts.path, "state")
        cfg = ws.config([self.credential(fs.token_endpoint, refresh_before_s=58)],
                        state_dir=state_dir)
        log = ws.log_path(f"refresher-{label}.log")

        def start():
            with open(log, "ab") as err:
                return harness.spawn(mounts.argv(os.path.abspath(harness.REFRESHER), "--config", cfg),
                                     subprocess.DEVNULL, err)
        p = start()
        ws.wait_state("w", "valid", 15)
        wait_for(lambda: fs.control_state()["requests"] >= 2, 10, "a rotation saved")
        s = self.sampler()
        inject(mounts)
        t0 = time.time()
        n0 = fs.control_state()["requests"]
        wait_for(lambda: "event=persist_failed" in read_text(log), 15, "a failed save")
        elapsed = ws.refresher_ran_for(WINDOW_S, "the fault window")
        requests = fs.control_state()["requests"] - n0
        c = ws.cred("w")
        self.assertEqual(c["state"], "valid")
        self.assertIn("not yet saved", c["last_error"])
        readers = rc_counts(s, t0)
        self.assertEqual(set(readers), {"0"}, f"readers failed: {readers}")
        self.assertLessEqual(requests, (time.time() - t0) / 1.0 + 1, "more than one request a second")
        t1 = time.time()
        undo(mounts)
        wait_for(lambda: "event=refresh_token_persisted" in read_text(log), 10, "the save retried")
        saved_s = time.time() - t1
        # The successor kept in memory reached the disk: a restart presents it.
        harness.kill9(p)
        n = fs.control_state()["requests"]
        start()
        wait_for(lambda: fs.control_state()["requests"] > n, 15, "a request after the restart")
        self.assert_chain(fs)
        FIGURES[f"state directory {label}"] = {
            "window_s": round(elapsed, 1), "requests": requests,
            "readers": f"valid, new tokens published ({readers['0']} samples); last_error says "
                       "the rotated refresh token is not yet saved",
            "saved_after_recovery_s": round(saved_s, 1), "lost": "nothing (restart presented "
                                                                 "the newest refresh token)"}

    def test_06_state_dir_full(self):
        self.state_dir_fault("full", lambda m: m.fill(), lambda m: m.free())

    def test_07_state_dir_read_only(self):
        self.state_dir_fault(
            "read-only", lambda m: m.run("mount", "-o", "remount,ro", m.path),
            lambda m: m.run("mount", "-o", "remount,rw", m.path))


if __name__ == "__main__":
    harness.main()
