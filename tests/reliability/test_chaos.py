#!/usr/bin/python3
"""Chaos: the refresher is SIGKILLed again and again while readers check
every read, against oidc-provider with reuse detection on (a spent refresh
token presented again revokes the whole grant).

    test_chaos.py REFRESHER TOKENSHM [--kills N] [--seed S] [--report FILE]

3-second tokens, refreshed after about one second. Each run of the refresher
ends in a SIGKILL: from the test at a random moment, or by the refresher
itself at a forced point (TOKENSHM_FAULT_KILL, refresher/fault_point.hpp):
after a response arrived and before its refresh token was renamed into place,
after the rename and before publishing, mid-publish (half a slot copy
written), during a SIGHUP reload. Two reader processes (chaos_reader.py, the C
ABI through ctypes) check every read all along.

After each kill the test waits for the server to finish any request the
refresher left behind, then asks whether the server's newest refresh token is
the one the next run will present (the state directory's, else
refresh_token_file). If not, the kill fell in the response-to-rename window:
the grant is lost by design (the server consumed the old token, the new one
died with the process). The test then does what a person would (mint a new
grant, put it in refresh_token_file, SIGHUP) and counts it. Any replay or
reauth that such a kill does not explain fails the test, as does a torn read,
a token the server never issued, a version going backwards, or an expired
token served. Figures go to stdout and to FILE.json / FILE.md (default
BUILD/meson-logs/chaos-report).
"""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))


def _take_option(name, default):
    """Removes `--name VALUE` from sys.argv (unittest must not see it)."""
    if name in sys.argv:
        i = sys.argv.index(name)
        value = sys.argv[i + 1]
        del sys.argv[i:i + 2]
        return value
    return default


KILLS = int(_take_option("--kills", os.environ.get("TOKENSHM_CHAOS_KILLS", "200")))
SEED = int(_take_option("--seed", os.environ.get("TOKENSHM_CHAOS_SEED", str(time.time_ns() % 10**9))))
REPORT = _take_option("--report", None)
# The harness reads its global deadline at import: make it fit the kills asked for.
os.environ.setdefault("TOKENSHM_IT_DEADLINE", str(max(420, int(KILLS * 2.5) + 120)))

import harness  # noqa: E402
from harness import IntegrationTest, wait_for  # noqa: E402

CLIENT_ID = "tokenshm-demo"
CLIENT_SECRET = "demo-secret"
CRED = "chaos"
TTL_S = 3

# (mode, weight): "random" is a SIGKILL from the test; the others are
# TOKENSHM_FAULT_KILL points.
MODES = [("random", 35), ("random_near_refresh", 15), ("after_response_before_rename", 8),
         ("after_rename_before_publish", 14), ("mid_publish", 14), ("during_reload", 14)]
RANDOM_KILL_S = (0.02, 1.3)
NEAR_REFRESH_S = (0.0, 0.15)   # after the scheduled refresh: while its request is likely in flight
FORCED_WAIT_S = 6.0


def libtokenshm():
    return os.environ.get("TOKENSHM_LIB") or os.path.join(harness.BUILD_DIR, "reader",
                                                          "libtokenshm.so")


class Tally:
    """What happened, for the assertions and the report."""

    def __init__(self):
        self.kills = {"random": 0, "random_near_refresh": 0, "forced": {}, "forced_missed": {},
                      "recovery": 0}
        self.in_window = {"random": 0, "random_near_refresh": 0, "forced": 0, "recovery": 0}
        self.grants_lost = 0          # new grants a person had to mint
        self.unexplained = []         # replays or reauths no kill in the window explains
        self.predicted_not_lost = 0   # a window kill after which the grant survived
        self.recoveries = []          # [kill time, valid again] (Unix ms)
        self.runs = 0

    def total_kills(self):
        k = self.kills
        return (k["random"] + k["random_near_refresh"] + sum(k["forced"].values()) +
                k["recovery"])


class Chaos(IntegrationTest):

    # ------------------------------------------------------------ plumbing
    def setUp(self):
        super().setUp()
        ws = self.ws
        mint, paths = ws.mint_args(CLIENT_ID)
        self.srv = ws.server("oidc", ["--access-ttl", str(TTL_S), "--test-control", *mint])
        ws.remember_files(paths)
        harness.remember_basic(CLIENT_ID, CLIENT_SECRET)
        with open(paths[0]) as f:
            self.rt_file = ws.secret_file("chaos.refresh", f.read())
        secret = ws.secret_file("demo.secret", CLIENT_SECRET)
        self.configs = [ws.config([self.credential(secret, timeout)], name=f"config-{timeout}.json")
                        for timeout in (3, 4)]
        self.cfg_link = os.path.join(ws.dir, "config.json")
        os.symlink(self.configs[0], self.cfg_link)
        self.cfg_index = 0
        self.log_path = ws.log_path("refresher.log")
        self.state_file = os.path.join(ws.state_dir, CRED + ".refresh_token")
        self.proc = None
        self.t = Tally()

    def credential(self, secret, timeout_s):
        return {"name": CRED, "issuer": self.srv.base, "grant": "refresh_token",
                "client_id": CLIENT_ID, "client_secret_file": secret,
                "refresh_token_file": self.rt_file, "refresh_before_s": 2, "min_interval_s": 1,
                "min_backoff_s": 1, "max_backoff_s": 2, "timeout_s": timeout_s}

    def stats(self):
        with urllib.request.urlopen(self.srv.base + "/_test/stats", timeout=5) as r:
            return json.loads(r.read())

    def mint(self):
        req = urllib.request.Request(self.srv.base + "/_test/mint",
                                     data=json.dumps({"client_id": CLIENT_ID}).encode(),
                                     method="POST")
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())["refresh_token"]

    def start(self, fault=None):
        env = dict(os.environ)
        env.pop("TOKENSHM_FAULT_KILL", None)
        if fault:
            env["TOKENSHM_FAULT_KILL"] = fault
        self.log_offset = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0
        self.rotations_before_run = self.stats()["refresh_ok"]
        with open(self.log_path, "ab") as err:
            # debug: the successor_renamed lines time the response-to-rename window.
            self.proc = harness.spawn([harness.REFRESHER, "--config", self.cfg_link,
                                       "--log-level", "debug"],
                                      subprocess.DEVNULL, err, env=env)
        self.t.runs += 1

    def run_log(self):
        with open(self.log_path, errors="replace") as f:
            f.seek(self.log_offset)
            return f.read()

    def alive(self):
        return self.proc.poll() is None

    def wait_exit(self, seconds):
        try:
            self.proc.wait(seconds)
            return True
        except subprocess.TimeoutExpired:
            return False

    def kill(self):
        harness.kill9(self.proc)

    def state(self):
        c = self.ws.cred(CRED)
        return c["state"] if c else None

    # ------------------------------------------------------------ after a kill
    def server_settled(self):
        """Waits until the server has answered everything the dead refresher sent."""
        time.sleep(0.1)
        last = None
        for _ in range(60):
            s = self.stats()
            key = (s["token_requests"], s["token_requests_in_flight"])
            if s["token_requests_in_flight"] == 0 and key == last:
                return s
            last = key
            time.sleep(0.05)
        raise AssertionError("the server kept a token request in flight for 3 s")

    def newest_refresh_token(self):
        newest = None
        with open(self.srv.issued_log) as f:
            for line in f:
                o = json.loads(line)
                if o["kind"] == "refresh_token":
                    newest = o["value"]
        return newest

    def next_presented(self):
        """The file the next run takes its refresh token from, read whole."""
        for path in (self.state_file, self.rt_file):
            try:
                with open(path) as f:
                    return f.read()
            except FileNotFoundError:
                continue
        return ""

    def kill_lost_the_newest(self):
        """True when the server's newest refresh token is not where the next
        run will look: the kill fell in the response-to-rename window. That
        is only so when the refresher had not finished with the response (it
        logs `refreshed` after saving); otherwise the save itself is broken."""
        rotations = self.server_settled()["refresh_ok"] - self.rotations_before_run
        newest = self.newest_refresh_token()
        harness.remember(newest)
        lost = newest not in self.next_presented()
        finished = self.run_log().count(" event=refreshed ")
        if lost and rotations <= finished:
            self.t.unexplained.append(f"run {self.t.runs}: the newest refresh token is not saved, "
                                      f"yet the refresher finished all {finished} refreshes")
        return lost

    # ------------------------------------------------------------ one run
    def forced_run(self, mode):
        nth = random.randint(1, 4) if mode == "mid_publish" else 1
        self.start(f"{mode}:{nth}")
        if mode == "during_reload":
            wait_for(lambda: "event=started" in self.run_log() or not self.alive(), 10,
                     "the refresher to start")
            time.sleep(random.uniform(0.0, 0.8))
            if self.alive():
                self.cfg_index ^= random.randint(0, 1)  # half the reloads change the credential
                tmp = self.cfg_link + ".tmp"
                os.symlink(self.configs[self.cfg_index], tmp)
                os.replace(tmp, self.cfg_link)
                os.kill(self.proc.pid, signal.SIGHUP)
        exited = self.wait_exit(FORCED_WAIT_S)
        hit = exited and self.proc.returncode == -signal.SIGKILL and \
            f"point={mode} " in self.run_log()
        self.assertTrue(hit or not exited, f"the refresher exited by itself "
                        f"({self.proc.returncode}):\n" + self.run_log()[-2000:])
        k = self.t.kills
        if hit:
            k["forced"][mode] = k["forced"].get(mode, 0) + 1
        else:
            self.kill()
            k["forced_missed"][mode] = k["forced_missed"].get(mode, 0) + 1
            k["random"] += 1
        return "forced" if hit else "random"

    def random_run(self, near_refresh):
        """A SIGKILL at a random moment, or (near_refresh) at a random moment
        just after the refresh the record schedules: how often a random kill
        lands in the response-to-rename window is then worth counting."""
        delay = random.uniform(*RANDOM_KILL_S)
        self.start()
        if near_refresh:
            c = self.ws.cred(CRED) or {}
            due = c.get("next_refresh_ms", 0) / 1000 - time.time()
            delay = min(max(due, 0) + random.uniform(*NEAR_REFRESH_S), 3.0)
        self.wait_exit(delay)
        self.assertTrue(self.alive(), "the refresher exited by itself:\n" + self.run_log()[-2000:])
        self.kill()
        kind = "random_near_refresh" if near_refresh else "random"
        self.t.kills[kind] += 1
        return kind

    # ------------------------------------------------------------ a lost grant
    def recover_grant(self, predicted, kill_ms):
        """Runs the refresher until it refreshes or says reauth; on reauth does
        what a person does: a new grant in refresh_token_file, then SIGHUP."""
        self.start()
        outcome = wait_for(lambda: ("reauth" if " event=reauth" in self.run_log() else
                                    "refreshed" if " event=refreshed" in self.run_log() else None),
                           20, "reauth or a refresh after a kill")
        if outcome == "refreshed":
            self.t.predicted_not_lost += predicted
        else:
            self.t.grants_lost += 1
            if not predicted:
                self.t.unexplained.append(f"run {self.t.runs}: reauth after a kill outside "
                                          "the window")
            mark = len(self.run_log())
            rotations_at_mark = self.stats()["refresh_ok"]
            self.ws.secret_file("chaos.refresh", self.mint())
            os.kill(self.proc.pid, signal.SIGHUP)
            wait_for(lambda: " event=refreshed" in self.run_log()[mark:], 20,
                     "a refresh after a new grant and SIGHUP")
            self.log_offset += len(self.run_log()[:mark].encode())  # judge the rest of the run alone
            self.rotations_before_run = rotations_at_mark
        self.t.recoveries.append([kill_ms, int(time.time() * 1000)])
        self.kill()
        self.t.kills["recovery"] += 1

    def after_kill(self, kind, kill_ms):
        """Classifies the kill; recovers when the grant is (or may be) gone,
        and classifies the recovery run's own kill in turn."""
        for _ in range(5):
            lost = self.kill_lost_the_newest()
            self.t.in_window[kind] += lost
            replays = self.stats()["replays"]
            if replays > self.replays_seen:
                self.t.unexplained.append(f"run {self.t.runs}: {replays - self.replays_seen} "
                                          "replay(s) with no kill in the window before it")
            # Stop at the first loss no kill explains: the rest would only pile on.
            self.assertEqual(self.t.unexplained, [], "a grant lost outside the window")
            if not lost and " event=reauth" not in self.run_log():
                self.replays_seen = replays
                return
            self.recover_grant(lost, kill_ms)
            # The recovery run's replays are the lost grant's.
            self.replays_seen = self.stats()["replays"]
            kind = "recovery"
        self.fail("five recoveries in a row, each killed in the window")

    # ------------------------------------------------------------ the test
    def start_readers(self):
        self.readers = []
        for i in range(2):
            out = self.ws.log_path(f"reader-{i}.json")
            with open(self.ws.log_path(f"reader-{i}.stderr"), "ab") as err:
                p = harness.spawn(["/usr/bin/python3", os.path.join(HERE, "chaos_reader.py"),
                                   libtokenshm(), self.ws.segment, CRED, self.srv.issued_log, out],
                                  subprocess.DEVNULL, err)
            self.readers.append((p, out))

    def stop_readers(self):
        figures = []
        for p, out in self.readers:
            harness.stop_process(p, grace_s=10)
            self.assertEqual(p.returncode, 0, f"a reader failed (see {out}.stderr)")
            with open(out) as f:
                figures.append(json.load(f))
        return figures

    def test_sigkill_at_random_and_forced_points_loses_nothing_outside_the_window(self):
        random.seed(SEED)
        print(f"\nchaos: {KILLS} kills, seed {SEED}", flush=True)
        t0 = time.monotonic()
        self.start()
        self.ws.wait_state(CRED, "valid", 30)
        self.start_readers()
        self.replays_seen = 0
        self.kill()
        self.t.kills["random"] += 1
        self.after_kill("random", int(time.time() * 1000))
        names, weights = zip(*MODES)
        while self.t.total_kills() < KILLS:
            mode = random.choices(names, weights)[0]
            kind = (self.random_run(mode == "random_near_refresh") if mode.startswith("random")
                    else self.forced_run(mode))
            self.after_kill(kind, int(time.time() * 1000))
        # A last run, left alive: readers must end with a valid token.
        self.start()
        self.ws.wait_state(CRED, "valid", 20, "valid after the last kill")
        time.sleep(0.5)
        readers = self.stop_readers()
        self.report(readers, time.monotonic() - t0)
        self.check(readers)

    # ------------------------------------------------------------ verdict
    def figures(self, readers, seconds):
        s = self.stats()
        t = self.t

        def outside_recovery(gap):
            return not any(a <= gap[1] and gap[0] <= b + 1000 for a, b in t.recoveries)
        gaps = [g for r in readers for g in r["gaps"]]
        return {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "seed": SEED, "seconds": round(seconds, 1), "refresher_runs": t.runs,
            "kills": t.total_kills(), "kills_random": t.kills["random"],
            "kills_random_just_after_a_scheduled_refresh": t.kills["random_near_refresh"],
            "kills_forced": t.kills["forced"], "forced_points_missed": t.kills["forced_missed"],
            "kills_during_grant_recovery": t.kills["recovery"],
            "kills_in_response_to_rename_window": t.in_window,
            "grants_lost": t.grants_lost, "unexplained_losses": t.unexplained,
            "window_kills_without_loss": t.predicted_not_lost,
            "server_refreshes": s["refresh_ok"], "server_replays": s["replays"],
            "server_grants_revoked": s["grants_revoked"],
            "reads": sum(r["reads"] for r in readers), "good_reads": sum(r["ok"] for r in readers),
            "torn_or_unknown_tokens": sum(r["torn"] for r in readers),
            "version_backwards": sum(r["version_backwards"] for r in readers),
            "version_token_mismatch": sum(r["version_token_mismatch"] for r in readers),
            "expired_served": sum(r["expired_served"] for r in readers),
            "reads_past_server_expiry": sum(r["past_server_expiry"] for r in readers),
            "max_past_server_expiry_ms": max(r["max_past_server_expiry_ms"] for r in readers),
            "reader_errors": [r["errors"] for r in readers],
            "longest_without_valid_token_ms": max(r["longest_gap_ms"] for r in readers),
            "longest_without_valid_token_outside_grant_recovery_ms": max(
                [g[1] - g[0] for g in gaps if outside_recovery(g)] or [0]),
            "response_to_rename_ms": self.persist_times(),
        }

    def persist_times(self):
        """The distribution of the refresher's own measure of each rotation's
        window, from the last byte of the token response to the rename of
        its successor (the debug lines `event=successor_renamed persist_ms=`)."""
        with open(self.log_path, errors="replace") as f:
            ms = sorted(float(m) for m in re.findall(r"persist_ms=([0-9]+\.[0-9]+)", f.read()))
        if not ms:
            return {"count": 0}

        def q(p):
            return round(ms[min(len(ms) - 1, int(p * len(ms)))], 3)
        return {"count": len(ms), "median": q(0.5), "p90": q(0.9), "p99": q(0.99),
                "max": round(ms[-1], 3)}

    def report(self, readers, seconds):
        self.fig = fig = self.figures(readers, seconds)
        base = REPORT or os.path.join(harness.BUILD_DIR, "meson-logs", "chaos-report")
        os.makedirs(os.path.dirname(os.path.abspath(base)), exist_ok=True)
        with open(base + ".json", "w") as f:
            json.dump(fig, f, indent=2)
        lines = ["| figure | value |", "|---|---|"]
        lines += [f"| {k} | {json.dumps(v)} |" for k, v in fig.items()]
        with open(base + ".md", "w") as f:
            f.write("\n".join(lines) + "\n")
        print("\n".join(lines), flush=True)
        print(f"chaos: report in {base}.json and {base}.md", flush=True)

    def check(self, readers):
        fig = self.fig
        self.assertGreaterEqual(fig["kills"], KILLS)
        for mode, _ in MODES[2:]:
            self.assertGreater(fig["kills_forced"].get(mode, 0), 0, f"no kill at {mode}")
        self.assertEqual(fig["unexplained_losses"], [], "a grant lost outside the window")
        self.assertEqual(fig["window_kills_without_loss"], 0,
                         "a kill judged in the window did not cost the grant: the judge is wrong")
        # Each window kill costs at most one replay (none when the ledger refuses the token).
        self.assertLessEqual(fig["server_replays"], sum(fig["kills_in_response_to_rename_window"].values()))
        self.assertEqual(fig["grants_lost"], sum(fig["kills_in_response_to_rename_window"].values()))
        self.assertGreater(fig["kills_in_response_to_rename_window"]["forced"], 0)
        for r in readers:
            self.assertGreater(r["ok"], 100, "a reader hardly ever got a token")
        self.assertEqual(fig["torn_or_unknown_tokens"], 0, "a read returned a token never issued")
        self.assertEqual(fig["version_backwards"], 0)
        self.assertEqual(fig["version_token_mismatch"], 0, "one version, two different records")
        self.assertEqual(fig["expired_served"], 0)
        # expires_in is whole seconds and the server counts from the start of
        # its second: a token may outlive the server's expiry by < 1 s, never more.
        self.assertLess(fig["max_past_server_expiry_ms"], 1100)
        # Every rotation the refresher saved timed its window (point 2's figure).
        self.assertGreater(fig["response_to_rename_ms"]["count"], 0,
                           "no successor_renamed timing in the refresher's debug log")


if __name__ == "__main__":
    harness.main()
