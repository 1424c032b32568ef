"""Refresh-token rotation against a real authorization server (oidc-provider).

  test_01: 20+ rotations over HTTPS with ca_file, no replay, readers never fail.
  test_02: SIGKILL and restart (also right after a rotated token was persisted):
           the state directory's refresh token is used, no replay, readers
           always have a token.
  test_03: the server restarts and forgets the grant: reauth with advice, no hot loop.
"""

import os
import stat
import time

import harness
from harness import Deadline, IntegrationTest, ReaderSampler, remember_basic, wait_for

CLIENT_ID = "tokenshm-demo"
CLIENT_SECRET = "demo-secret"


def credential(name, server, secret_file, refresh_file, **kw):
    c = {
        "name": name,
        "issuer": server.base,
        "grant": "refresh_token",
        "client_id": CLIENT_ID,
        "client_secret_file": secret_file,
        "refresh_token_file": refresh_file,
        "refresh_before_s": 2,
        "min_interval_s": 1,
        "min_backoff_s": 1,
        "max_backoff_s": 4,
        "timeout_s": 5,
    }
    if server.tls:
        c["ca_file"] = harness.certs()["ca"]
    c.update(kw)
    return c


def refresh_grants(server):
    return [l for l in server.token_log() if l.get("grant_type") == "refresh_token"]


def replay_evidence(server):
    """Log lines that show a replayed or rejected refresh token, or a revoked grant."""
    bad = []
    for l in server.token_log():
        if l.get("outcome") != "ok" or l.get("grant_revoked"):
            bad.append({k: l.get(k) for k in ("grant_type", "status", "outcome", "detail",
                                              "grant_revoked")})
    bad += server.events("grant.revoked")
    return bad


class Rotation(IntegrationTest):

    def start_server(self, ttl, tls=False, name="oidc"):
        mint, paths = self.ws.mint_args(CLIENT_ID)
        srv = self.ws.server("oidc", ["--access-ttl", str(ttl), *mint], tls=tls, name=name)
        self.ws.remember_files(paths)
        remember_basic(CLIENT_ID, CLIENT_SECRET)
        return srv, paths[0]

    def test_01_twenty_rotations_over_https_without_replay(self):
        ws = self.ws
        srv, rt_file = self.start_server(ttl=3, tls=True)
        secret = ws.secret_file("demo.secret", CLIENT_SECRET)
        cfg = ws.config([credential("rot", srv, secret, rt_file)])
        r = ws.refresher(cfg)
        ws.wait_state("rot", "valid", 20)

        sampler = ReaderSampler(ws, "rot")
        sampler.start()
        versions = []
        try:
            def twenty_one_rotations():
                c = ws.cred("rot")
                versions.append(c["version"])
                ws.remember_state()
                self.assertTrue(r.alive(), "the refresher exited")
                self.assertEqual(replay_evidence(srv), [], "the server rejected a request")
                return sum(1 for g in refresh_grants(srv) if g.get("outcome") == "ok") >= 21
            wait_for(twenty_one_rotations, 50, "21 refresh_token grants")
        finally:
            sampler.stop()
        # The server logs a grant before its answer reaches the refresher: wait
        # for the refresher to have published the 21st token, then sample once more.
        wait_for(lambda: len(r.log_lines("refreshed")) >= 21, 10, "21 refreshed log lines")
        versions.append(ws.cred("rot")["version"])

        grants = refresh_grants(srv)
        self.assertGreaterEqual(len(grants), 21)
        self.assertEqual(replay_evidence(srv), [], "the server saw a rejected request")
        for g in grants:
            self.assertEqual(g["outcome"], "ok")
            self.assertTrue(g["rotated"], "a refresh_token grant that did not rotate")
            self.assertTrue(g["refresh_token_issued"])
            self.assertEqual(g["auth"], "basic")

        fails = sampler.failures_after_first_token()
        self.assertIsNotNone(fails, "no reader sample ever got a token")
        self.assertEqual(fails, [], "a reader failed while the refresher rotated")
        self.assertGreater(len(sampler.samples), 100)
        self.assertGreaterEqual(len(sampler.tokens), 15, "readers did not see the token change")

        self.assertEqual(versions, sorted(versions), "the version went backwards")
        self.assertGreaterEqual(versions[-1] - versions[0], 20)
        self.assertEqual(r.log_lines("refresh_failed") + r.log_lines("reauth"), [])
        self.assertGreaterEqual(len(r.log_lines("refreshed")), 21)
        self.assertTrue(all("rotated=yes" in l for l in r.log_lines("refreshed")))

        st = os.stat(os.path.join(ws.state_dir, "rot.refresh_token"))
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o600)
        # The config's refresh token file is left alone (the state dir holds the new one).
        with open(rt_file) as f, open(os.path.join(ws.state_dir, "rot.refresh_token")) as g:
            self.assertNotEqual(f.read().strip(), g.read().strip())

    def test_02_sigkill_and_restart_use_the_persisted_refresh_token(self):
        ws = self.ws
        srv, rt_file = self.start_server(ttl=4)
        secret = ws.secret_file("demo.secret", CLIENT_SECRET)
        cfg = ws.config([credential("crash", srv, secret, rt_file)])
        state_file = os.path.join(ws.state_dir, "crash.refresh_token")

        def ok_grants():
            return sum(1 for g in refresh_grants(srv) if g.get("outcome") == "ok")

        r = ws.refresher(cfg)
        ws.wait_state("crash", "valid", 20)
        sampler = ReaderSampler(ws, "crash")
        sampler.start()
        try:
            # Let one rotation reach the state dir, then kill at an arbitrary point.
            wait_for(lambda: ok_grants() >= 2 and os.path.exists(state_file), 15,
                     "a rotated refresh token in the state dir")
            ws.remember_state()
            v_before = ws.cred("crash")["version"]
            r.kill9()
            r = ws.refresher(cfg)
            n = ok_grants()
            wait_for(lambda: ok_grants() >= n + 2, 15, "two rotations after the restart")
            self.assertGreater(ws.cred("crash")["version"], v_before, "versions did not continue")
            self.assertIn("event=segment_attached", r.log())
            self.assertEqual(r.log_lines("reauth"), [])

            # Kill right after the refresher persisted a rotated refresh token.
            for _ in range(2):
                ws.remember_state()
                before = os.stat(state_file)
                d = Deadline(10)
                while not d.expired():
                    st = os.stat(state_file)
                    if (st.st_ino, st.st_mtime_ns) != (before.st_ino, before.st_mtime_ns):
                        break
                    time.sleep(0.002)
                else:
                    self.fail("the state file did not change within 10s")
                r.kill9()
                ws.remember_state()
                n = ok_grants()
                r = ws.refresher(cfg)
                wait_for(lambda: ok_grants() >= n + 2, 15, "two rotations after the restart")
                self.assertEqual(r.log_lines("reauth"), [])
        finally:
            sampler.stop()
        ws.remember_state()

        self.assertEqual(replay_evidence(srv), [],
                         "a refresh token was replayed or rejected across the restarts")
        fails = sampler.failures_after_first_token()
        self.assertEqual(fails, [], "readers were without a token across kill -9 and restart")
        self.assertEqual(ws.cred("crash")["state"], "valid")

    def test_03_server_forgets_the_grant_gives_reauth_without_a_hot_loop(self):
        ws = self.ws
        srv, rt_file = self.start_server(ttl=4)
        secret = ws.secret_file("demo.secret", CLIENT_SECRET)
        cfg = ws.config([credential("forgot", srv, secret, rt_file)])
        r = ws.refresher(cfg)
        ws.wait_state("forgot", "valid", 20)
        wait_for(lambda: any(g.get("outcome") == "ok" for g in refresh_grants(srv)), 10,
                 "a first refresh")
        ws.remember_state()

        port = srv.port
        srv.stop()
        srv2 = ws.server("oidc", ["--access-ttl", "4"], port=port, name="oidc-restarted")
        c = ws.wait_state("forgot", "reauth", 20)
        self.assertIn("invalid_grant", c["last_error"])
        self.assertIn("SIGHUP", c["last_error"], "last_error does not say what to do")
        self.assertIn("refresh_token_file", c["last_error"])
        lines = r.log_lines("reauth", cred="forgot")
        self.assertEqual(len(lines), 1, "expected one reauth log line")
        self.assertIn("refresh_token_file", lines[0])
        self.assertIn("SIGHUP", lines[0])

        # No hot loop: count the new server's token requests over 8 s of the
        # refresher's running (its heartbeat, not a sleep, measures the window).
        first = len(srv2.token_log())
        self.assertGreaterEqual(first, 1)
        ws.refresher_ran_for(8, "a window in which a hot loop would show")
        requests = srv2.token_log()
        self.assertLessEqual(len(requests), 2, "the refresher kept asking after reauth")
        self.assertEqual(requests[0]["outcome"], "invalid_grant")
        self.assertTrue(r.alive(), "the refresher exited on reauth")

        # Once the last token has expired, readers get reauth (exit 5) with the reason.
        def reader_says_reauth():
            rc, _, err = ws.get("forgot")
            return rc == 5 and "re-authorise" in err and "invalid_grant" in err
        wait_for(reader_says_reauth, 10, "tokenshm get to exit 5 saying a person must re-authorise")
        self.assertEqual(ws.cred("forgot")["state"], "reauth")


if __name__ == "__main__":
    harness.main()
