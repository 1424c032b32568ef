"""File sinks: a credential's token copied to files for tools that only read
files (`curl -H @file`).

  test_01: each format (token, header, json) is written with its exact mode
           and group, never readable by others, holding the token the segment
           serves; rewritten when the token changes; no temp file left.
  test_02: a plain stop leaves the sink files (their token stays valid); a
           reload that removes the credential removes them.
  test_03: a sink mode readable by others is refused at start, one line
           naming the key.

Tokens are compared, never printed: a failed comparison names what differs.
Sink files live under the workspace's secrets/ directory, which the harness's
secret scan leaves out (they hold tokens by design).
"""

import grp
import json
import os
import signal
import stat
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))

import harness  # noqa: E402
from harness import IntegrationTest, Workspace, remember_basic, wait_for  # noqa: E402

CLIENT_ID = "tokenshm-demo"
CLIENT_SECRET = "demo-secret"


def read(path):
    with open(path) as f:
        return f.read()


class Sinks(IntegrationTest):

    @classmethod
    def setUpClass(cls):
        # 30 s tokens: nothing refreshes by itself while a test looks.
        cls.server_ws = Workspace("sinks-server")
        cls.srv = cls.server_ws.server("oidc", ["--access-ttl", "30"])
        cls.addClassCleanup(cls.server_ws.stop_all)
        remember_basic(CLIENT_ID, CLIENT_SECRET)

    def setUp(self):
        super().setUp()
        self.sink_dir = os.path.join(self.ws.secrets, "sinks")
        os.mkdir(self.sink_dir, 0o755)
        self.group = grp.getgrgid(os.getgid()).gr_name

    def cred(self, name, sinks, **kw):
        c = {
            "name": name,
            "token_endpoint": self.srv.token_endpoint,
            "grant": "client_credentials",
            "client_id": CLIENT_ID,
            "client_secret_file": self.ws.secret_file("demo.secret", CLIENT_SECRET),
            "refresh_before_s": 2,
            "min_interval_s": 1,
            "timeout_s": 5,
            "sinks": sinks,
        }
        c.update(kw)
        return c

    def sink_paths(self, prefix):
        return {f: os.path.join(self.sink_dir, f"{prefix}.{f}") for f in ("token", "header", "json")}

    def sinks(self, paths):
        return [{"path": paths["token"]},
                {"path": paths["header"], "mode": "0640", "group": self.group,
                 "format": "header"},
                {"path": paths["json"], "mode": "0660", "format": "json"}]

    def token(self, name):
        rc, tok, err = self.ws.get(name)
        self.assertEqual(rc, 0, err)
        return tok

    def assert_sinks_hold(self, paths, tok, cred):
        """The three files hold `tok` (compared, not shown) in their formats."""
        self.assertTrue(read(paths["token"]) == tok + "\n", "token sink differs from get's token")
        self.assertTrue(read(paths["header"]) == f"Authorization: Bearer {tok}\n",
                        "header sink is not 'Authorization: Bearer <the token>'")
        j = json.loads(read(paths["json"]))
        self.assertEqual(sorted(j), ["access_token", "expires_at", "token_type", "version"])
        self.assertTrue(j["access_token"] == tok, "json sink's access_token differs")
        self.assertEqual(j["token_type"], "Bearer")
        self.assertEqual(j["expires_at"], cred["expires_at_ms"] // 1000)
        self.assertLessEqual(j["version"], cred["version"])

    def sinks_match_segment(self, name, paths):
        tok = self.token(name)
        try:
            return read(paths["token"]) == tok + "\n" and \
                json.loads(read(paths["json"]))["access_token"] == tok
        except (OSError, ValueError):
            return False

    def test_01_formats_modes_and_updates(self):
        ws = self.ws
        paths = self.sink_paths("s1")
        c = self.cred("s1", self.sinks(paths))
        r = ws.refresher(ws.config([c]))
        ws.wait_state("s1", "valid", 20)
        wait_for(lambda: self.sinks_match_segment("s1", paths), 10,
                 "the sinks to hold the segment's token")
        first = self.token("s1")
        self.assert_sinks_hold(paths, first, ws.cred("s1"))
        modes = {f: stat.S_IMODE(os.stat(p).st_mode) for f, p in paths.items()}
        self.assertEqual(modes, {"token": 0o600, "header": 0o640, "json": 0o660})
        self.assertEqual(os.stat(paths["header"]).st_gid, os.getgid())
        self.assertEqual(sorted(os.listdir(self.sink_dir)), ["s1.header", "s1.json", "s1.token"],
                         "a temp file was left behind")

        # A changed setting makes the credential refresh: a new token, new files.
        c["timeout_s"] = 6
        ws.config([c])
        os.kill(r.pid, signal.SIGHUP)
        wait_for(lambda: self.token("s1") != first, 20, "a new token after the reload")
        wait_for(lambda: self.sinks_match_segment("s1", paths), 10,
                 "the sinks to hold the new token")
        self.assert_sinks_hold(paths, self.token("s1"), ws.cred("s1"))
        for p in paths.values():
            self.assertEqual(os.stat(p).st_mode & 0o007, 0, f"{p} is open to others")

    def test_02_kept_on_stop_removed_with_the_credential(self):
        ws = self.ws
        paths = self.sink_paths("s2")
        keep = self.sink_paths("k2")
        creds = [self.cred("s2", self.sinks(paths)), self.cred("k2", self.sinks(keep))]
        cfg = ws.config(creds)
        r = ws.refresher(cfg)
        for n, p in (("s2", paths), ("k2", keep)):
            ws.wait_state(n, "valid", 20)
            wait_for(lambda n=n, p=p: self.sinks_match_segment(n, p), 10, f"{n}'s sinks")
        r.stop()
        self.assertEqual(r.proc.wait(10), 0)
        for p in list(paths.values()) + list(keep.values()):
            self.assertTrue(os.path.exists(p), f"{p} removed on a plain stop")

        r = ws.refresher(cfg)
        # The old token is still in the segment: wait for this refresher
        # itself (its signal handling) before sending SIGHUP.
        wait_for(lambda: r.log_lines(event="started"), 20, "the restarted refresher")
        ws.config([creds[1]])
        os.kill(r.pid, signal.SIGHUP)
        wait_for(lambda: not any(os.path.exists(p) for p in paths.values()), 20,
                 "the removed credential's sinks to go")
        self.assertEqual(ws.get("s2")[0], 4)
        for p in keep.values():
            self.assertTrue(os.path.exists(p), f"{p} of the kept credential went too")
        self.assertTrue(r.alive())

    def test_03_a_sink_open_to_others_is_refused(self):
        ws = self.ws
        path = os.path.join(self.sink_dir, "bad.token")
        cfg = ws.config([self.cred("s3", [{"path": path, "mode": "0644"}])])
        r = ws.refresher(cfg)
        rc = r.proc.wait(15)
        self.assertNotEqual(rc, 0)
        err = r.log().strip()
        self.assertIn("credentials[0].sinks[0].mode", err)
        self.assertIn("others", err)
        self.assertFalse(os.path.exists(path))


if __name__ == "__main__":
    harness.main()
