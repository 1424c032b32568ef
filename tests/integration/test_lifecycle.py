"""The refresher's life: one per segment, signals, a segment removed under it.

  test_01: a second refresher on the same segment exits non-zero naming the
           first one's pid; the first keeps serving.
  test_02: SIGTERM: exit 0, the segment and its token stay for readers.
  test_03: SIGHUP: an added credential appears and gets a token, a removed one
           is gone (get exits 4), an unchanged one is not touched; a broken
           config is refused and the running one kept.
  test_04: the segment unlinked under the refresher is recreated within ~2 s,
           versions continuing.
  test_05: SIGTERM while a refresh is in flight waits for its answer; a
           second SIGTERM stops at once, exit 1, saying what was abandoned.
"""

import json
import os
import signal
import time

import harness
from harness import IntegrationTest, Workspace, remember_basic, wait_for


class Lifecycle(IntegrationTest):

    @classmethod
    def setUpClass(cls):
        # One server for the whole file: 30 s tokens, so nothing refreshes by
        # itself while a test looks (refresh after ~22 s at the earliest).
        cls.server_ws = Workspace("lifecycle-server")
        mint, cls.minted = cls.server_ws.mint_args("tokenshm-demo")
        cls.srv = cls.server_ws.server("oidc", ["--access-ttl", "30", *mint])
        cls.addClassCleanup(cls.server_ws.stop_all)
        cls.server_ws.remember_files(cls.minted)
        remember_basic("tokenshm-demo", "demo-secret")
        remember_basic("tokenshm-post", "post-secret")

    def cred(self, name, **kw):
        post = name.startswith("post")
        c = {
            "name": name,
            "token_endpoint": self.srv.token_endpoint,
            "grant": "client_credentials",
            "client_id": "tokenshm-post" if post else "tokenshm-demo",
            "client_secret_file": self.ws.secret_file(
                "post.secret" if post else "demo.secret", "post-secret" if post else "demo-secret"),
            "refresh_before_s": 2,
            "min_interval_s": 1,
            "min_backoff_s": 1,
            "max_backoff_s": 4,
            "timeout_s": 5,
        }
        if post:
            c["auth_method"] = "client_secret_post"
        c.update(kw)
        return c

    def test_01_second_refresher_names_the_first(self):
        ws = self.ws
        cfg = ws.config([self.cred("one")])
        first = ws.refresher(cfg)
        ws.wait_state("one", "valid", 15)
        second = ws.refresher(cfg, name="second")
        rc = second.proc.wait(10)
        self.assertNotEqual(rc, 0)
        err = second.log()
        self.assertIn(str(first.pid), err, "the message does not name the running refresher's pid")
        self.assertEqual(len(err.strip().splitlines()), 1, "expected one line")
        self.assertTrue(first.alive())
        st = ws.status()
        self.assertEqual(st["refresher"]["pid"], first.pid)
        self.assertTrue(st["refresher"]["alive"])
        self.assertEqual(ws.get("one")[0], 0)

    def test_02_sigterm_leaves_the_token_for_readers(self):
        ws = self.ws
        r = ws.refresher(ws.config([self.cred("term")]))
        ws.wait_state("term", "valid", 15)
        rc, before, _ = ws.get("term")
        self.assertEqual(rc, 0)
        t0 = time.monotonic()
        os.kill(r.pid, signal.SIGTERM)
        self.assertEqual(r.proc.wait(5), 0, "SIGTERM did not exit 0")
        self.assertLess(time.monotonic() - t0, 2)
        self.assertTrue(os.path.exists("/dev/shm/" + ws.segment), "the segment was removed")
        rc, after, err = ws.get("term")
        self.assertEqual(rc, 0, "no token after SIGTERM: " + err)
        self.assertEqual(after, before)
        st = ws.status()
        self.assertFalse(st["refresher"]["alive"])
        self.assertIn("event=stopping", r.log())

    def test_03_sighup_adds_removes_and_leaves_unchanged_alone(self):
        ws = self.ws
        keep, gone = self.cred("keep"), self.cred("post-gone", auth_method="client_secret_post")
        cfg = ws.config([keep, gone])
        r = ws.refresher(cfg)
        ws.wait_state("keep", "valid", 15)
        ws.wait_state("post-gone", "valid", 15)
        rc, keep_token, _ = ws.get("keep")
        self.assertEqual(rc, 0)
        before = ws.cred("keep")

        added = self.cred("added-rt", grant="refresh_token", refresh_token_file=self.minted[0])
        ws.config([keep, added])
        os.kill(r.pid, signal.SIGHUP)
        c = ws.wait_state("added-rt", "valid", 15, "the added credential to get a token")
        self.assertGreater(c["version"], 0)
        rc, tok, err = ws.get("added-rt")
        self.assertEqual(rc, 0, err)
        rc, _, err = ws.get("post-gone")
        self.assertEqual(rc, 4, f"removed credential: get exited {rc} ({err})")
        self.assertNotIn("post-gone", [x["name"] for x in ws.status()["credentials"]])

        after = ws.cred("keep")
        if after["issued_at_ms"] == before["issued_at_ms"]:
            self.assertEqual(after["version"], before["version"], "the unchanged slot was republished")
            self.assertEqual(ws.get("keep")[1], keep_token)
        else:
            # Only its own scheduled refresh may have moved it.
            self.assertGreaterEqual(after["issued_at_ms"], before["next_refresh_ms"],
                                    "the unchanged credential was refreshed by the reload")
        self.assertEqual(after["state"], "valid")
        log = r.log()
        for ev in ("event=reload", "cred=added-rt event=added", "cred=post-gone event=removed"):
            self.assertIn(ev, log)
        self.assertNotIn("cred=keep event=changed", log)
        ws.remember_state()

        # A broken config on SIGHUP: refused, the running one kept.
        with open(cfg, "w") as f:
            f.write('{"credentials": [{"name": 1}]}')
        os.kill(r.pid, signal.SIGHUP)
        wait_for(lambda: "event=reload_failed" in r.log(), 5, "reload_failed in the log")
        self.assertTrue(r.alive())
        self.assertEqual(ws.get("keep")[0], 0)
        self.assertEqual(ws.get("added-rt")[0], 0)
        self.assertEqual(ws.cred("keep")["version"], after["version"])

    def test_04_unlinked_segment_is_recreated(self):
        ws = self.ws
        r = ws.refresher(ws.config([self.cred("unlinked")]))
        ws.wait_state("unlinked", "valid", 15)
        v_old = ws.cred("unlinked")["version"]
        os.unlink("/dev/shm/" + ws.segment)
        t0 = time.monotonic()
        rc, _, err = ws.get("unlinked")
        self.assertEqual(rc, 3, "a reader found a segment that was just removed")

        def back():
            c = ws.cred("unlinked")
            return c if c and c["state"] == "valid" else None
        c = wait_for(back, 3, "the segment to be recreated")
        took = time.monotonic() - t0
        self.assertLessEqual(took, 2.5, f"recreated after {took:.1f}s")
        self.assertGreater(c["version"], v_old, "versions did not continue")
        rc, tok, err = ws.get("unlinked")
        self.assertEqual(rc, 0, err)
        st = ws.status()
        self.assertTrue(st["refresher"]["alive"])
        self.assertEqual(st["refresher"]["pid"], r.pid)
        self.assertRegex(r.log(), r"event=segment_recreated segment \S+ was unlinked")
        self.assertTrue(r.alive())

    def test_05_truncated_segment_is_recreated(self):
        """Truncating the live segment used to kill the refresher with SIGBUS
        at its next store: it notices the size and recreates the segment,
        and a new reader gets a token from the new one."""
        ws = self.ws
        r = ws.refresher(ws.config([self.cred("truncated")]))
        ws.wait_state("truncated", "valid", 15)
        v_old = ws.cred("truncated")["version"]
        os.truncate("/dev/shm/" + ws.segment, 0)

        def back():
            if "event=segment_recreated" not in r.log():
                return None
            c = ws.cred("truncated")
            return c if c and c["state"] == "valid" else None
        c = wait_for(back, 5, "the truncated segment to be recreated")
        self.assertGreater(c["version"], v_old, "versions did not continue")
        rc, _, err = ws.get("truncated")
        self.assertEqual(rc, 0, err)
        self.assertRegex(r.log(), r"event=segment_recreated segment \S+ was truncated")
        # Survived: still beating, still the same process.
        self.assertTrue(r.alive(), "the refresher died after the truncation:\n" + r.log()[-2000:])
        st = ws.status()
        self.assertTrue(st["refresher"]["alive"])
        self.assertEqual(st["refresher"]["pid"], r.pid)


    def test_05_second_sigterm_stops_the_drain_at_once(self):
        ws = self.ws
        # The first refresh answers at once; the second is held for 60 s, far
        # longer than the test, so only a signal can end the wait for it.
        fs = ws.server("fault", ["--script", json.dumps([
            {"ok": {"expires_in": 4}},
            {"slow_ms": 60000, "then": {"ok": {"expires_in": 4}}},
        ])])
        c = {
            "name": "slow",
            "token_endpoint": fs.token_endpoint,
            "grant": "client_credentials",
            "client_id": "fault-client",
            "client_secret_file": ws.secret_file("slow.secret", "fault-client-secret"),
            "refresh_before_s": 2,
            "min_interval_s": 1,
            "timeout_s": 30,
        }
        r = ws.refresher(ws.config([c]))
        ws.wait_state("slow", "valid", 15)
        wait_for(lambda: fs.control_state()["requests"] >= 2, 10, "the held second request")
        os.kill(r.pid, signal.SIGTERM)
        wait_for(lambda: "event=draining" in r.log(), 5, "the refresher draining")
        self.assertTrue(r.alive(), "the first SIGTERM did not wait for the answer in flight")
        t0 = time.monotonic()
        os.kill(r.pid, signal.SIGTERM)
        self.assertEqual(r.proc.wait(5), 1, "a second SIGTERM did not stop the refresher with 1")
        self.assertLess(time.monotonic() - t0, 3)
        log = r.log()
        self.assertIn("event=abandoned", log)
        self.assertIn("1 request(s) left unanswered", log)
        rc, _, err = ws.get("slow")
        self.assertEqual(rc, 0, "the token published before the stop is gone: " + err)


if __name__ == "__main__":
    harness.main()
