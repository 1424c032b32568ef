"""Client authentication, TLS trust and the one-shot modes, against oidc-provider.

  test_01: client_credentials with client_secret_basic, client_secret_post, and
           the odd-character client (form-encoded Basic); the same client with
           basic_encoding "raw" is refused; a wrong auth method gives reauth and
           no further requests.
  test_02: a CA that did not sign the server: TLS error naming the certificate,
           never valid, retried with backoff.
  test_03: --once exits 0 on success and non-zero on failure.
  test_04: --check-config: 0 for a good config, 2 with a one-line message
           naming the key path for a bad one.
"""

import os
import socket
import subprocess
import time

import harness
from harness import IntegrationTest, credential, log_time, remember_basic, wait_for

ODD_ID = "id:with+odd%chars x"
ODD_SECRET = "secret:with+odd%chars y"


def cc(name, server, client_id, secret_file, **kw):
    return credential(name, client_id, secret_file, endpoint=server.token_endpoint, **kw)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class ClientAuth(IntegrationTest):

    def secrets(self):
        ws = self.ws
        remember_basic("tokenshm-demo", "demo-secret")
        remember_basic("tokenshm-post", "post-secret")
        remember_basic(ODD_ID, ODD_SECRET)
        return (ws.secret_file("demo.secret", "demo-secret"),
                ws.secret_file("post.secret", "post-secret"),
                ws.secret_file("odd.secret", ODD_SECRET))

    def test_01_auth_methods_and_encodings(self):
        ws = self.ws
        srv = ws.server("oidc", ["--access-ttl", "5"])
        demo, post, odd = self.secrets()
        basic = cc("cc-basic", srv, "tokenshm-demo", demo)
        del basic["token_endpoint"]
        basic["issuer"] = srv.base  # and discovery along the way
        cfg = ws.config([
            basic,
            cc("cc-post", srv, "tokenshm-post", post, auth_method="client_secret_post"),
            cc("cc-odd-form", srv, ODD_ID, odd, basic_encoding="form"),
            cc("cc-odd-raw", srv, ODD_ID, odd, basic_encoding="raw"),
            cc("cc-wrong-method", srv, "tokenshm-demo", demo, auth_method="client_secret_post"),
        ])
        r = ws.refresher(cfg)
        for name in ("cc-basic", "cc-post", "cc-odd-form"):
            ws.wait_state(name, "valid", 20)
            rc, tok, err = ws.get(name)
            self.assertEqual(rc, 0, f"tokenshm get {name} failed: {err}")
            self.assertTrue(tok)

        c = ws.wait_state("cc-wrong-method", "reauth", 10)
        self.assertIn("invalid_client", c["last_error"])
        self.assertIn("client_id", c["last_error"], "last_error does not say what to check")
        self.assertEqual(c["failures"], 1)

        raw = wait_for(lambda: (lambda c: c if c["failures"] >= 2 else None)(ws.cred("cc-odd-raw")),
                       15, "two failed attempts of cc-odd-raw")
        self.assertEqual(raw["state"], "empty")
        self.assertIn("HTTP 400 invalid_request", raw["last_error"])

        # The server saw what we meant to send.
        log = srv.token_log()
        by = lambda cid, auth, outcome: [l for l in log if l["client_id"] == cid  # noqa: E731
                                         and l["auth"] == auth and l["outcome"] == outcome]
        self.assertTrue(by("tokenshm-demo", "basic", "ok"))
        self.assertTrue(by("tokenshm-post", "post", "ok"))
        self.assertTrue(by(ODD_ID, "basic", "ok"), "the odd client never succeeded with Basic")
        for l in log:
            if l["outcome"] == "ok":
                self.assertEqual(l["grant_type"], "client_credentials")
                self.assertFalse(l["refresh_token_issued"])

        # No retries after reauth: the server's count of wrong-method requests stays put.
        def wrong_method():
            return [l for l in srv.token_log() if l["outcome"] == "invalid_client"]
        n = len(wrong_method())
        self.assertEqual(n, 1)
        self.assertIn("does not match the registered", wrong_method()[0].get("detail", ""))
        ws.refresher_ran_for(5, "a window in which a retry would show")
        self.assertEqual(len(wrong_method()), n, "the refresher retried after invalid_client")
        self.assertEqual(len(r.log_lines("reauth", cred="cc-wrong-method")), 1)
        self.assertEqual(ws.cred("cc-wrong-method")["state"], "reauth")
        rc, _, err = ws.get("cc-wrong-method")
        self.assertEqual(rc, 5)
        self.assertIn("invalid_client", err)
        # client_credentials never writes to the state directory.
        self.assertEqual(os.listdir(ws.state_dir) if os.path.isdir(ws.state_dir) else [], [])
        self.assertTrue(r.alive())

    def test_02_wrong_ca_is_a_clear_tls_error_with_backoff(self):
        ws = self.ws
        srv = ws.server("oidc", ["--access-ttl", "5"], tls=True)
        demo, _, _ = self.secrets()
        cfg = ws.config([
            cc("wrong-ca", srv, "tokenshm-demo", demo, ca_file=harness.certs()["other_ca"],
               max_backoff_s=2),
        ])
        r = ws.refresher(cfg)
        c = wait_for(lambda: (lambda c: c if c["failures"] >= 4 else None)(ws.cred("wrong-ca")),
                     20, "four failed attempts")
        self.assertEqual(c["state"], "empty")
        self.assertIn("certificate", c["last_error"].lower())
        rc, _, err = ws.get("wrong-ca")
        self.assertEqual(rc, 5)
        fails = r.log_lines("refresh_failed", cred="wrong-ca")
        self.assertGreaterEqual(len(fails), 4)
        for l in fails:
            self.assertIn("certificate", l.lower())
            self.assertIn("retry_in=", l)
        times = [log_time(l) for l in fails]
        gaps = [b - a for a, b in zip(times, times[1:])]
        self.assertTrue(all(g >= 0.95 for g in gaps), f"retries closer than min_backoff_s: {gaps}")
        self.assertTrue(all(g <= 3.5 for g in gaps), f"retries further apart than max_backoff_s: {gaps}")
        self.assertEqual(srv.token_log(), [], "a request got past the TLS check")
        self.assertTrue(r.alive())

    def run_once(self, cfg, timeout=20):
        p = subprocess.run([harness.REFRESHER, "--config", cfg, "--once"], capture_output=True,
                           timeout=timeout, stdin=subprocess.DEVNULL)
        with open(self.ws.log_path("once.log"), "ab") as f:
            f.write(p.stdout + p.stderr)
        return p.returncode, p.stderr.decode(errors="replace")

    def test_03_once(self):
        ws = self.ws
        mint, paths = ws.mint_args("tokenshm-demo")
        srv = ws.server("oidc", ["--access-ttl", "5", *mint])
        ws.remember_files(paths)
        demo, _, _ = self.secrets()
        rt = {"grant": "refresh_token", "refresh_token_file": paths[0]}

        # Success: both grants refreshed and published, the rotated token persisted.
        good = ws.config([cc("once-cc", srv, "tokenshm-demo", demo),
                          cc("once-rt", srv, "tokenshm-demo", demo, **rt)], name="good.json")
        t0 = time.monotonic()
        rc, err = self.run_once(good)
        self.assertEqual(rc, 0, "--once failed: " + err.strip().splitlines()[-1])
        self.assertLess(time.monotonic() - t0, 10)
        for name in ("once-cc", "once-rt"):
            rc, tok, _ = ws.get(name)
            self.assertEqual(rc, 0, f"no token for {name} after --once")
        self.assertTrue(os.path.exists(os.path.join(ws.state_dir, "once-rt.refresh_token")),
                        "--once did not persist the rotated refresh token")
        ws.remember_state()
        self.assertEqual(len([l for l in srv.token_log() if l["outcome"] == "ok"]), 2)

        # A second --once uses the persisted (rotated) refresh token: no replay.
        rc, err = self.run_once(good)
        self.assertEqual(rc, 0, "second --once failed")
        ws.remember_state()
        self.assertEqual([l["outcome"] for l in srv.token_log()], ["ok"] * 4)

        # A rejected secret: non-zero, and the log says why.
        bad_secret = ws.secret_file("bad.secret", "not-the-demo-secret")
        bad = ws.config([cc("once-cc", srv, "tokenshm-demo", bad_secret)], name="bad.json")
        rc, err = self.run_once(bad)
        self.assertNotEqual(rc, 0)
        self.assertIn("invalid_client", err)

        # The server is down: non-zero after one attempt, not a retry loop.
        down = ws.config([cc("once-cc", srv, "tokenshm-demo", demo,
                             token_endpoint=f"http://127.0.0.1:{free_port()}/token")],
                         name="down.json")
        t0 = time.monotonic()
        rc, err = self.run_once(down)
        self.assertNotEqual(rc, 0)
        self.assertLess(time.monotonic() - t0, 8, "--once kept retrying")
        self.assertIn("event=refresh_failed", err)

    def check_config(self, cfg):
        p = subprocess.run([harness.REFRESHER, "--config", cfg, "--check-config"],
                           capture_output=True, timeout=10, stdin=subprocess.DEVNULL)
        with open(self.ws.log_path("check.log"), "ab") as f:
            f.write(p.stdout + p.stderr)
        return p.returncode, p.stdout.decode(), p.stderr.decode()

    def test_04_check_config(self):
        ws = self.ws
        demo, _, _ = self.secrets()
        rt = ws.secret_file("x.refresh", "some-refresh-token-value")
        srv_url = "http://127.0.0.1:9/token"
        base = {"name": "a", "token_endpoint": srv_url, "grant": "refresh_token",
                "client_id": "c", "client_secret_file": demo, "refresh_token_file": rt}
        rc, out, err = self.check_config(ws.config([base], name="good.json"))
        self.assertEqual(rc, 0, err)
        self.assertIn("OK", out)
        self.assertFalse(os.path.exists("/dev/shm/" + ws.segment),
                         "--check-config created the segment")

        cases = [
            ("credentials[1].grant", [base, dict(base, name="b", grant="bogus")]),
            ("credentials[0].colour", [dict(base, colour="red")]),
            ("credentials[0].client_id", [{k: v for k, v in base.items() if k != "client_id"}]),
            ("credentials[0].refresh_before_s", [dict(base, refresh_before_s="2")]),
            ("credentials[0].max_backoff_s", [dict(base, min_backoff_s=10, max_backoff_s=2)]),
            ("credentials[0].token_endpoint", [dict(base, token_endpoint="http://example.com/t")]),
        ]
        for path, creds in cases:
            with self.subTest(path=path):
                rc, out, err = self.check_config(ws.config(creds, name="bad.json"))
                self.assertEqual(rc, 2, f"{path}: exit {rc}")
                lines = err.strip().splitlines()
                self.assertEqual(len(lines), 1, f"{path}: expected one line, got {len(lines)}")
                self.assertIn(path, lines[0])
        # Top level, and a file that is not JSON.
        rc, _, err = self.check_config(ws.config([base], name="bad.json", segment="a/b"))
        self.assertEqual(rc, 2)
        self.assertIn("segment", err)
        bad = os.path.join(ws.dir, "broken.json")
        with open(bad, "w") as f:
            f.write('{"credentials": [')
        rc, _, err = self.check_config(bad)
        self.assertEqual(rc, 2)
        self.assertEqual(len(err.strip().splitlines()), 1)
        # A refresh token that is nowhere: 2, naming the credential.
        missing = dict(base, refresh_token_file=os.path.join(ws.dir, "nope.refresh"))
        rc, _, err = self.check_config(ws.config([missing], name="bad.json"))
        self.assertEqual(rc, 2)
        self.assertIn("nope.refresh", err)


if __name__ == "__main__":
    harness.main()
