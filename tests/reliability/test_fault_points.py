#!/usr/bin/python3
"""The forced kill points (TOKENSHM_FAULT_KILL, refresher/fault_point.hpp),
one at a time against fault_server.mjs, so each is shown to fire where it
claims and to leave what the chaos test relies on:

  test_01: a malformed switch stops the refresher at start (exit 2).
  test_02: after_rename_before_publish: the successor is in the state
           directory, nothing was published; the next run presents it.
  test_03: after_response_before_rename: the successor is not in the state
           directory (the window the chaos test counts).
  test_04: mid_publish: readers keep the previous record, whole.
  test_05: during_reload: killed inside a SIGHUP reload; readers keep the
           token; the next run presents the newest refresh token.
"""

import json
import os
import signal
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

import harness  # noqa: E402
from harness import IntegrationTest, wait_for  # noqa: E402

INITIAL_RT = "initial-refresh-token-for-the-fault-points"


def ok(expires_in):
    return {"ok": {"expires_in": expires_in, "refresh_token": True}}


class FaultPoints(IntegrationTest):

    def setUp(self):
        super().setUp()
        self.fs = self.ws.server("fault", ["--script", json.dumps([ok(60)])])
        self.cfg = self.ws.config([{
            "name": "p", "token_endpoint": self.fs.token_endpoint, "grant": "refresh_token",
            "client_id": "fault-client",
            "client_secret_file": self.ws.secret_file("p.secret", "fault-point-secret"),
            "refresh_token_file": self.ws.secret_file("p.refresh", INITIAL_RT),
            "refresh_before_s": 58, "min_interval_s": 1, "timeout_s": 3}])
        self.state_file = os.path.join(self.ws.state_dir, "p.refresh_token")
        self.log_path = self.ws.log_path("refresher.log")

    def run_refresher(self, fault=None, args=()):
        env = dict(os.environ)
        env.pop("TOKENSHM_FAULT_KILL", None)
        if fault:
            env["TOKENSHM_FAULT_KILL"] = fault
        with open(self.log_path, "ab") as err:
            return harness.spawn([harness.REFRESHER, "--config", self.cfg, *args],
                                 subprocess.DEVNULL, err, env=env)

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def assert_killed_at(self, p, point, timeout_s=15):
        p.wait(timeout_s)
        self.assertEqual(p.returncode, -signal.SIGKILL, f"not killed at {point}")
        self.assertIn(f"event=fault_kill point={point} ", self.log())

    def issued_refresh_tokens(self):
        with open(self.fs.issued_log) as f:
            return [o["value"] for o in map(json.loads, f) if o["kind"] == "refresh_token"]

    def state_text(self):
        try:
            with open(self.state_file) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def presented(self):
        return [e.get("refresh_token_sha256") for e in self.fs.control_state()["log"]]

    def issued_hashes(self):
        return [e.get("issued_refresh_token_sha256") for e in self.fs.control_state()["log"]]

    def test_01_a_malformed_switch_stops_the_refresher(self):
        for value in ("nowhere", "mid_publish:0", "mid_publish:1.5", "mid_publish:x", ":1"):
            with self.subTest(value=value):
                env = dict(os.environ, TOKENSHM_FAULT_KILL=value)
                r = subprocess.run([harness.REFRESHER, "--version"], env=env, capture_output=True,
                                   timeout=10)
                self.assertEqual(r.returncode, 2)
                self.assertIn(b"TOKENSHM_FAULT_KILL=", r.stderr)
        r = subprocess.run([harness.REFRESHER, "--version"], capture_output=True, timeout=10,
                           env=dict(os.environ, TOKENSHM_FAULT_KILL="mid_publish:0.5"))
        self.assertEqual(r.returncode, 0, "a probability was refused")

    def test_02_after_rename_before_publish_keeps_the_successor(self):
        p = self.run_refresher("after_rename_before_publish:1")
        self.assert_killed_at(p, "after_rename_before_publish")
        successor = self.issued_refresh_tokens()[-1]
        harness.remember(successor)
        self.assertIn(successor, self.state_text(), "the successor is not in the state directory")
        self.assertEqual(self.ws.cred("p")["state"], "empty", "published before the kill point")
        self.run_refresher()
        self.ws.wait_state("p", "valid", 15)
        wait_for(lambda: len(self.presented()) >= 2, 10, "the second token request")
        self.assertEqual(self.presented()[1], self.issued_hashes()[0],
                         "the next run did not present the saved successor")

    def test_03_after_response_before_rename_leaves_the_successor_unsaved(self):
        p = self.run_refresher("after_response_before_rename:1")
        self.assert_killed_at(p, "after_response_before_rename")
        successor = self.issued_refresh_tokens()[-1]
        harness.remember(successor)
        self.assertNotIn(successor, self.state_text())
        self.assertEqual(self.ws.cred("p")["state"], "empty")

    def test_04_mid_publish_leaves_readers_the_previous_record(self):
        p = self.run_refresher()
        self.ws.wait_state("p", "valid", 15)
        rc, before, err = self.ws.get("p")
        self.assertEqual(rc, 0, err)
        v = self.ws.cred("p")["version"]
        harness.stop_process(p)
        # The restart republishes the record it resumes: killed half-way through.
        p = self.run_refresher("mid_publish:1")
        self.assert_killed_at(p, "mid_publish")
        rc, after, err = self.ws.get("p")
        self.assertEqual(rc, 0, err)
        self.assertEqual(after, before, "the previous token is not what readers get")
        self.assertEqual(self.ws.cred("p")["version"], v, "a half-written record became visible")
        self.run_refresher()
        wait_for(lambda: self.ws.cred("p")["version"] > v, 15, "a new version after the restart")

    def test_05_during_reload_keeps_tokens_and_the_newest_refresh_token(self):
        p = self.run_refresher("during_reload:1")
        self.ws.wait_state("p", "valid", 15)
        rc, before, err = self.ws.get("p")
        self.assertEqual(rc, 0, err)
        os.kill(p.pid, signal.SIGHUP)
        self.assert_killed_at(p, "during_reload")
        rc, after, err = self.ws.get("p")
        self.assertEqual((rc, after), (0, before), "readers lost the token to a killed reload")
        self.assertEqual(self.run_refresher(None, ["--once"]).wait(20), 0)
        log = self.fs.control_state()["log"]
        self.assertEqual(log[-1]["refresh_token_sha256"], log[-2]["issued_refresh_token_sha256"],
                         "after the killed reload the newest refresh token was not presented")


if __name__ == "__main__":
    harness.main()
