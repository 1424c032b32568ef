"""Metrics: `tokenshm status --prometheus` and the refresher's metrics_textfile,
parsed with Debian's python3-prometheus-client (prom_parse.py, run by
/usr/bin/python3, which has the module whatever python3 runs this file).

  test_01: status --prometheus against a live segment: every family typed and
           documented, values as the segment shows them (version, state
           one-hot, expires in, failures, refresher up, heartbeat age); no
           segment: exit 3, nothing on stdout.
  test_02: the metrics_textfile: written atomically (no temp file left, mode
           0644 less the umask), the gauges match the segment, and token
           requests by outcome add up to the token requests the server saw,
           as does the latency histogram's count.
  test_03: a refresh token the spent ledger holds is refused, not sent: the
           file counts one replay refused and the server sees no request.
"""

import json
import os
import signal
import stat
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))

import harness  # noqa: E402
from harness import IntegrationTest, Workspace, remember_basic, wait_for  # noqa: E402

SYSTEM_PYTHON = "/usr/bin/python3"
PARSER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "prom_parse.py")
CLIENT_ID = "tokenshm-demo"
CLIENT_SECRET = "demo-secret"


def parse(text):
    """{family: {"type", "help"}}, [(sample name, labels, value)]; fails the test
    when prometheus_client refuses the text."""
    r = subprocess.run([SYSTEM_PYTHON, PARSER], input=text.encode(), capture_output=True,
                       timeout=30)
    if r.returncode != 0:
        raise AssertionError("prometheus_client: " + r.stderr.decode(errors="replace").strip())
    out = json.loads(r.stdout)
    return out["families"], [tuple(s) for s in out["samples"]]


def value(samples, name, **labels):
    """The value of the one sample NAME{labels...} (labels compared as a subset)."""
    found = [v for n, l, v in samples
             if n == name and all(l.get(k) == w for k, w in labels.items())]
    if len(found) != 1:
        raise AssertionError(f"{len(found)} samples {name}{labels}, expected 1")
    return found[0]


def requests_by_outcome(samples, cred):
    return {l["outcome"]: v for n, l, v in samples
            if n == "tokenshm_token_requests_total" and l.get("credential") == cred}


class Metrics(IntegrationTest):

    @classmethod
    def setUpClass(cls):
        if not os.access(SYSTEM_PYTHON, os.X_OK) or subprocess.run(
                [SYSTEM_PYTHON, "-c", "import prometheus_client.parser"],
                capture_output=True).returncode != 0:
            raise AssertionError(f"{SYSTEM_PYTHON} cannot import prometheus_client: install "
                                 "python3-prometheus-client (scripts/setup does)")
        # 30 s tokens: nothing refreshes by itself while a test looks.
        cls.server_ws = Workspace("metrics-server")
        mint, cls.minted = cls.server_ws.mint_args(CLIENT_ID)
        cls.srv = cls.server_ws.server("oidc", ["--access-ttl", "30", *mint])
        cls.addClassCleanup(cls.server_ws.stop_all)
        cls.server_ws.remember_files(cls.minted)
        remember_basic(CLIENT_ID, CLIENT_SECRET)

    def cred(self, name, srv=None, **kw):
        c = {
            "name": name,
            "token_endpoint": (srv or self.srv).token_endpoint,
            "grant": "client_credentials",
            "client_id": CLIENT_ID,
            "client_secret_file": self.ws.secret_file("demo.secret", CLIENT_SECRET),
            "refresh_before_s": 2,
            "min_interval_s": 1,
            "timeout_s": 5,
        }
        c.update(kw)
        return c

    @staticmethod
    def server_requests(srv):
        """Token requests `srv` answered (or refused)."""
        return [l for l in srv.token_log() if l.get("grant_type") == "client_credentials"]

    def test_01_status_prometheus_shows_the_segment(self):
        ws = self.ws
        r = ws.cli("status", "--prometheus")
        self.assertEqual(r.returncode, 3, "no segment yet: exit 3")
        self.assertEqual(r.stdout, b"")

        ws.refresher(ws.config([self.cred("pa"), self.cred("pb")]))
        ws.wait_state("pa", "valid", 20)
        ws.wait_state("pb", "valid", 20)
        before = ws.cred("pa")
        r = ws.cli("status", "--prometheus")
        self.assertEqual(r.returncode, 0, r.stderr)
        after = ws.cred("pa")
        fams, samples = parse(r.stdout.decode())
        for f in ("tokenshm_refresher_up", "tokenshm_refresher_heartbeat_age_seconds",
                  "tokenshm_credential_state", "tokenshm_token_expires_in_seconds",
                  "tokenshm_credential_consecutive_failures", "tokenshm_token_version"):
            self.assertIn(f, fams)
            self.assertEqual(fams[f]["type"], "gauge", f)
            self.assertTrue(fams[f]["help"], f"{f} has no HELP")
        self.assertEqual(value(samples, "tokenshm_refresher_up"), 1)
        self.assertLess(value(samples, "tokenshm_refresher_heartbeat_age_seconds"), 5)
        self.assertIn(value(samples, "tokenshm_token_version", credential="pa"),
                      {before["version"], after["version"]})
        exp = value(samples, "tokenshm_token_expires_in_seconds", credential="pa")
        self.assertTrue(0 < exp <= 30, f"expires in {exp}s, token lifetime is 30s")
        self.assertEqual(value(samples, "tokenshm_credential_consecutive_failures",
                               credential="pb"), 0)
        states = {l["state"]: v for n, l, v in samples
                  if n == "tokenshm_credential_state" and l["credential"] == "pa"}
        self.assertEqual(states, {"empty": 0, "valid": 1, "stale": 0, "expired": 0, "reauth": 0})

        r = ws.cli("status", "--prometheus", "--json")
        self.assertEqual(r.returncode, 2, "--json and --prometheus together: usage error")

    def test_02_textfile_counts_what_the_server_saw(self):
        ws = self.ws
        mdir = os.path.join(ws.dir, "textfile")
        os.mkdir(mdir)
        prom = os.path.join(mdir, "tokenshm.prom")
        srv = ws.server("oidc", ["--access-ttl", "30"], name="count")
        cred = self.cred("tf", srv)
        cfg = ws.config([cred], metrics_textfile=prom)
        umask = os.umask(0o022)
        os.umask(umask)
        r = ws.refresher(cfg)
        ws.wait_state("tf", "valid", 20)

        # A reload that changes the credential makes it refresh once more.
        cred["timeout_s"] = 6
        ws.config([cred], metrics_textfile=prom)
        first_version = ws.cred("tf")["version"]
        os.kill(r.pid, signal.SIGHUP)
        wait_for(lambda: len(self.server_requests(srv)) >= 2, 20,
                 "the server to see the second token request")

        def file_samples():
            if not os.path.exists(prom):
                return None
            with open(prom) as f:
                return parse(f.read())

        def counted_as_server():
            got = file_samples()
            if got is None:
                return None
            total = sum(requests_by_outcome(got[1], "tf").values())
            return got if total == len(self.server_requests(srv)) else None
        fams, samples = wait_for(counted_as_server, 20,
                                 "the textfile to count the server's token requests")
        by = requests_by_outcome(samples, "tf")
        self.assertEqual(set(by), {"success", "rejected", "transient_error", "network_error"})
        self.assertGreaterEqual(by["success"], 2)
        self.assertEqual(fams["tokenshm_token_requests"]["type"], "counter")
        self.assertEqual(fams["tokenshm_token_request_duration_seconds"]["type"], "histogram")
        count = value(samples, "tokenshm_token_request_duration_seconds_count", credential="tf")
        self.assertEqual(count, sum(by.values()))
        self.assertEqual(value(samples, "tokenshm_token_request_duration_seconds_bucket",
                               credential="tf", le="+Inf"), count)
        self.assertGreater(value(samples, "tokenshm_token_version", credential="tf"),
                           first_version - 1)
        self.assertEqual(value(samples, "tokenshm_replays_refused_total", credential="tf"), 0)
        self.assertNotIn("tokenshm_refresher_up", fams, "only a live reader knows that")

        # The gauges follow the segment.
        def version_matches():
            got = file_samples()
            v = value(got[1], "tokenshm_token_version", credential="tf")
            return got if v == ws.cred("tf")["version"] else None
        _, samples = wait_for(version_matches, 20, "the textfile's version to match the segment")
        exp = value(samples, "tokenshm_token_expires_in_seconds", credential="tf")
        self.assertTrue(0 < exp <= 30, f"expires in {exp}s, token lifetime is 30s")

        mode = stat.S_IMODE(os.stat(prom).st_mode)
        self.assertEqual(mode, 0o644 & ~umask, f"mode {oct(mode)}")
        self.assertEqual(os.listdir(mdir), ["tokenshm.prom"], "a temp file was left behind")

    def test_03_replay_refused_is_counted(self):
        ws = self.ws
        mint, paths = ws.mint_args(CLIENT_ID)
        srv = ws.server("oidc", ["--access-ttl", "30", *mint], name="rot")
        ws.remember_files(paths)
        prom = os.path.join(ws.dir, "tokenshm.prom")
        c = {
            "name": "rt", "token_endpoint": srv.token_endpoint, "grant": "refresh_token",
            "client_id": CLIENT_ID,
            "client_secret_file": ws.secret_file("demo.secret", CLIENT_SECRET),
            "refresh_token_file": paths[0], "min_interval_s": 1, "timeout_s": 5,
        }
        cfg = ws.config([c], metrics_textfile=prom)
        r = ws.refresher(cfg)
        ws.wait_state("rt", "valid", 20)
        state_file = os.path.join(ws.state_dir, "rt.refresh_token")
        wait_for(lambda: os.path.exists(state_file), 10, "the rotated refresh token saved")
        ws.remember_state()
        r.stop()
        self.assertEqual(r.proc.wait(10), 0)
        # The successor is lost; refresh_token_file still holds the token it
        # replaced, which the ledger knows as spent.
        os.unlink(state_file)
        sent = len(srv.token_log())
        ws.refresher(cfg)
        ws.wait_state("rt", "reauth", 20)

        def refused():
            if not os.path.exists(prom):
                return None
            with open(prom) as f:
                _, samples = parse(f.read())
            v = value(samples, "tokenshm_replays_refused_total", credential="rt")
            reauth = value(samples, "tokenshm_credential_state", credential="rt", state="reauth")
            return samples if (v, reauth) == (1, 1) else None
        samples = wait_for(refused, 20, "the textfile to count the refused replay, in reauth")
        self.assertEqual(sum(requests_by_outcome(samples, "rt").values()), 0)
        self.assertEqual(len(srv.token_log()), sent, "the spent token was sent")


if __name__ == "__main__":
    harness.main()
