"""A misbehaving token endpoint (fault_server.mjs).

  test_01: the server is down for longer than a token lifetime: stale (token
           still served), then expired (get exits 5), failures grow with
           visible backoff, and valid again once the server is back; the
           newest refresh token is the one presented afterwards.
  test_02: one fault after another (500, 429 + Retry-After, slow, garbage,
           huge, dropped, empty 400, HTML, truncated): a clear last_error each
           time, the previous token served (stale), the refresher running,
           Retry-After honoured, no refresh token reused after its successor;
           then empty 401 and 403 give reauth.
"""

import hashlib
import json
import re
import time

import harness
from harness import IntegrationTest, log_time, wait_for

INITIAL_RT = "initial-refresh-token-for-the-fault-server"


def hash16(s):
    return hashlib.sha256(s.encode()).hexdigest()[:16]


def ok(expires_in, **kw):
    return {"ok": dict({"expires_in": expires_in, "refresh_token": True}, **kw)}


class Faults(IntegrationTest):

    def credential(self, server, **kw):
        c = {
            "name": "f",
            "token_endpoint": server.token_endpoint,
            "grant": "refresh_token",
            "client_id": "fault-client",
            "client_secret_file": self.ws.secret_file("f.secret", "fault-client-secret"),
            "refresh_token_file": self.ws.secret_file("f.refresh", INITIAL_RT),
            "refresh_before_s": 2,
            "min_interval_s": 1,
            "min_backoff_s": 1,
            "max_backoff_s": 4,
            "timeout_s": 2,
        }
        c.update(kw)
        return c

    def assert_chain(self, logs):
        """Each request presents the newest refresh token issued before it."""
        newest = hash16(INITIAL_RT)
        for i, e in enumerate(logs):
            self.assertTrue(e.get("refresh_token_sha256") == newest,
                            f"request {i} ({e['kind']}) did not present the newest refresh token")
            if e.get("issued_refresh_token_sha256") and e["kind"] == "ok":
                newest = e["issued_refresh_token_sha256"]

    def test_01_server_down_longer_than_a_token_lifetime(self):
        ws = self.ws
        fs = ws.server("fault", ["--script", json.dumps([ok(4)])])
        port = fs.port
        cfg = ws.config([self.credential(fs)])
        r = ws.refresher(cfg)
        ws.wait_state("f", "valid", 15)
        wait_for(lambda: fs.control_state()["requests"] >= 2, 10, "a second refresh")
        log1 = fs.control_state()["log"]
        t_down = time.time()
        fs.stop()
        ws.remember_state()

        c = ws.wait_state("f", "stale", 6)
        self.assertGreaterEqual(c["failures"], 1)
        self.assertIn("connect", c["last_error"].lower())
        rc, tok, err = ws.get("f")
        self.assertEqual(rc, 0, "a stale token was not served: " + err)

        ws.wait_state("f", "expired", 6)
        rc, tok, err = ws.get("f")
        self.assertEqual(rc, 5)
        self.assertIn("expired", err)

        c = wait_for(lambda: (lambda c: c if c["failures"] >= 6 else None)(ws.cred("f")), 25,
                     "six failed attempts")
        self.assertEqual(c["state"], "expired")
        self.assertGreater(c["next_refresh_ms"], c["last_attempt_ms"])
        fails = [l for l in r.log_lines("refresh_failed", cred="f") if log_time(l) >= t_down]
        counts = [int(re.search(r"failures=(\d+)", l).group(1)) for l in fails]
        self.assertEqual(counts, list(range(counts[0], counts[0] + len(counts))))
        retry_in = [int(re.search(r"retry_in=(\d+)s", l).group(1)) for l in fails]
        self.assertEqual(retry_in[0], 1)
        self.assertTrue(all(1 <= x <= 4 for x in retry_in), f"retry_in outside 1..4 s: {retry_in}")
        times = [log_time(l) for l in fails]
        gaps = [b - a for a, b in zip(times, times[1:])]
        self.assertTrue(all(g >= 0.95 for g in gaps), f"retries closer than 1 s: {gaps}")
        self.assertTrue(all(g <= 5.5 for g in gaps), f"retries further apart than 4 s: {gaps}")
        # Backoff grows: after the first failures the delay may exceed 1 s
        # (retry_in is rounded up, so 2 means more than 1 s), and each gap
        # matches the delay the log announced.
        self.assertGreaterEqual(max(retry_in), 2, f"no backoff visible: retry_in={retry_in}")
        for g, announced in zip(gaps, retry_in):
            self.assertGreaterEqual(g, announced - 1.05, f"gap {g:.2f}s shorter than retry_in")
        self.assertTrue(r.alive())

        fs2 = ws.server("fault", ["--script", json.dumps([ok(4)])], port=port, name="fault-back")
        c = ws.wait_state("f", "valid", 8)
        self.assertEqual(c["failures"], 0)
        self.assertEqual(c["last_error"], "")
        rc, tok, err = ws.get("f")
        self.assertEqual(rc, 0, err)
        # The refresh token received last before the outage is the one used after it.
        first_back = fs2.control_state()["log"][0]
        self.assertTrue(first_back["refresh_token_sha256"] == log1[-1]["issued_refresh_token_sha256"],
                        "after the outage the refresher did not present the newest refresh token")
        self.assert_chain(log1)

    def test_02_fault_sequence(self):
        ws = self.ws
        fs = ws.server("fault", ["--script", json.dumps([ok(60)])])
        # 60 s tokens refreshed 2 s after each success: faults make them stale,
        # never expired.
        cfg = ws.config([self.credential(fs, refresh_before_s=58, max_backoff_s=2)])
        r = ws.refresher(cfg)
        ws.wait_state("f", "valid", 15)

        def recover():
            fs.control(script=[ok(60)])
            return ws.wait_state("f", "valid", 10, "recovery to valid")

        cases = [
            ("500", {"status": 500}, "HTTP 500"),
            ("slow", {"slow_ms": 4000, "then": ok(60)}, "timed out"),
            ("garbage", {"garbage": True}, "json"),
            ("huge", {"huge_bytes": 1_500_000}, "larger than 1 MiB"),
            ("drop", {"drop": True}, "empty reply"),
            ("empty 400", {"status": 400, "empty": True}, "HTTP 400"),
            ("html", {"html": True}, "html"),
            ("truncated", {"truncated": True}, "transfer closed"),
        ]
        messages = {}
        for label, step, expect in cases:
            with self.subTest(fault=label):
                rc, before, _ = ws.get("f")
                self.assertEqual(rc, 0)
                fs.control(script=[step])
                c = wait_for(lambda: (lambda c: c if c["failures"] >= 2 else None)(ws.cred("f")),
                             12, f"two failures on {label}")
                messages[label] = c["last_error"]
                self.assertEqual(c["state"], "stale", label)
                self.assertIn(expect.lower(), c["last_error"].lower(),
                              f"{label}: last_error does not say {expect!r}")
                rc, now, err = ws.get("f")
                self.assertEqual(rc, 0, f"{label}: token not served: {err}")
                self.assertEqual(now, before, f"{label}: the served token changed")
                self.assertTrue(r.alive(), f"the refresher died on {label}")
            recover()

        # 429 with Retry-After: 3 s > max_backoff_s (2 s): honoured up to
        # max_backoff_s, and the cap is logged.
        fs.control(script=[{"status": 429, "retry_after": "3"}])
        n0 = fs.control_state()["requests"]
        wait_for(lambda: fs.control_state()["requests"] >= n0 + 3, 15, "three 429 answers")
        c = ws.cred("f")
        self.assertEqual(c["state"], "stale")
        self.assertIn("HTTP 429", c["last_error"])
        log = fs.control_state()["log"]
        t429 = [e["time"] for e in log if e["kind"] == "status(429)"]
        gaps = [b - a for a, b in zip(t429, t429[1:])]
        self.assertTrue(gaps and all(2000 <= g < 3000 for g in gaps),
                        f"attempts after Retry-After: 3 (capped at 2 s) came after {gaps} ms")
        self.assertTrue(r.log_lines(event="retry_after_capped", cred="f"),
                        "a Retry-After over max_backoff_s is capped without a word")
        recover()

        # Not one refresh token presented after its successor had been received.
        self.assert_chain(fs.control_state()["log"])

        # Empty 401: reauth, no more requests.
        fs.control(script=[{"status": 401, "empty": True}])
        c = ws.wait_state("f", "reauth", 10)
        self.assertIn("HTTP 401", c["last_error"])
        self.assertIn("client_id", c["last_error"])
        n = fs.control_state()["requests"]
        ws.refresher_ran_for(3, "a window in which a retry would show")
        self.assertEqual(fs.control_state()["requests"], n, "requests after reauth")
        rc, tok, _ = ws.get("f")
        self.assertEqual(rc, 0, "the unexpired token is not served in reauth")
        r.stop()

        # Empty 403 (after a restart, which retries a reauth record once).
        fs.control(script=[{"status": 403, "empty": True}])
        r = ws.refresher(cfg)
        c = wait_for(lambda: (lambda c: c if c["state"] == "reauth" and "HTTP 403" in
                              c["last_error"] else None)(ws.cred("f")), 10, "reauth on HTTP 403")
        self.assertIn("client_id", c["last_error"])
        n = fs.control_state()["requests"]
        ws.refresher_ran_for(2, "a window in which a retry would show")
        self.assertEqual(fs.control_state()["requests"], n, "requests after reauth")
        self.assertTrue(r.alive())
        ws.remember_state()


if __name__ == "__main__":
    harness.main()
