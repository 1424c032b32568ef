#!/usr/bin/python3
"""The proof of issue 12 (point 8): three hosts, one grant, on a 3-member etcd.

    test_fleet.py REFRESHER TOKENSHM [unittest args]

A 3-member etcd cluster (/usr/bin/etcd, static --initial-cluster, free
127.0.0.1 ports, data under a temporary directory), the test authorization
server with reuse detection on (3-second tokens, refreshed after about one
second) and three "hosts": each its own segment, state_dir, control_socket,
refresher process and reader (chaos_reader.py: no torn read, versions never
go back, every token one the server issued). The hosts share the
credential, the `coordination` block (one prefix per test, lease_ttl_s 5)
and the seal key (32 random bytes, mode 0600).

The grant's first refresh token (minted per test) is in host 0's
refresh_token_file only: hosts 1 and 2 have none (a coordinated host may
start without one; it gets the grant from etcd). Host 0 starts first and
becomes leader; the others start once it has published, as an operator
bootstrapping a fleet would. After host 0's first refresh that token is
spent: test_e gives it to the host with the wrong seal key, and in test_f a
host's own state directory holds a spent one, so a host that ever sent its
own instead of etcd's sealed successor is a replay at the server.

Each host's token endpoint is its own proxy in this process (fleet.py,
TokenProxy) that records when each request arrived and when the server's
answer came back: which host sent which request, and whether two hosts'
requests ever overlapped. The sum over the proxies must equal the server's
own count of token requests, so no request goes around them.

TOKENSHM_FLEET_KILLS (default 50) sets how many times test_b SIGKILLs the
leader, TOKENSHM_FLEET_SEED the random moments (printed).
"""

import base64
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

KILLS = int(os.environ.get("TOKENSHM_FLEET_KILLS", "50"))
SEED = int(os.environ.get("TOKENSHM_FLEET_SEED", str(time.time_ns() % 10**9)))
# The harness reads its global deadline at import: make it fit the kills asked for.
os.environ.setdefault("TOKENSHM_IT_DEADLINE", str(max(300, KILLS * 6 + 200)))

import harness  # noqa: E402
from harness import IntegrationTest, wait_for  # noqa: E402
from fleet import ETCD, EtcdCluster, Host, TokenProxy, overlaps  # noqa: E402

CLIENT_ID = "tokenshm-demo"
CLIENT_SECRET = "demo-secret"
CRED = "fleet"
TOKEN_TTL_S = 3
LEASE_TTL_S = 5
# The leader refreshes only while (since its last keepalive + timeout_s + 1 s)
# < lease_ttl_s: with 5 s and keepalives every 5/3 s, timeout_s 2 leaves room.
TIMEOUT_S = 2
# "Within one lease TTL" plus slack for a loaded 2-core VM: the lease ends at
# most LEASE_TTL_S after the kill, then a campaign, a token request and a publish.
FAILOVER_BOUND_S = 2 * LEASE_TTL_S + 2
KILL_DELAY_S = (0.0, 0.6)         # from the leader's newest publication to its kill
START_S = 30                      # a refresher to start, win or follow
READER = os.path.join(HERE, "..", "reliability", "chaos_reader.py")
EXPIRED = "6"                     # TOKENSHM_ERR_EXPIRED: an aged token, no failure


def libtokenshm():
    return os.environ.get("TOKENSHM_LIB") or os.path.join(harness.BUILD_DIR, "reader",
                                                          "libtokenshm.so")


class Fleet(IntegrationTest):
    """One etcd cluster and one authorization server for the file; each test
    has its own prefix, grant, hosts and readers."""

    @classmethod
    def setUpClass(cls):
        cls.base = harness.Workspace("fleet")
        # Under state/: the final scan skips it (three 64 MB write-ahead logs);
        # what the hosts put in etcd is scanned from a dump (dump_etcd).
        cls.etcd = EtcdCluster(os.path.join(cls.base.dir, "state", "etcd"), cls.base.logs)
        cls.srv = cls.base.server("oidc", ["--access-ttl", str(TOKEN_TTL_S), "--test-control"])
        harness.remember_basic(CLIENT_ID, CLIENT_SECRET)

    @classmethod
    def tearDownClass(cls):
        cls.etcd.stop()
        cls.base.stop_all()

    def setUp(self):
        super().setUp()
        self.etcd.start_dead()
        self.etcd.wait_healthy(60)
        self.prefix = "/tokenshm/fleet/" + self._testMethodName
        self.secret = self.ws.secret_file("client.secret", CLIENT_SECRET)
        self.seal_key = self.seal_key_file("seal.key")
        self.grant = self.ws.secret_file("grant.refresh", self.mint())
        self.hosts, self.readers = [], []
        self.stats0 = self.stats()
        self.issued0 = len(self.issued_access_tokens(0))
        self.addCleanup(self.stop_hosts)

    def stop_hosts(self):
        self.dump_etcd()
        for _, p, _, _ in self.readers:
            harness.stop_process(p, grace_s=10)
        for h in self.hosts:
            h.stop()
            h.proxy.stop()
            h.ws.remember_state()

    def dump_etcd(self):
        """Every key and value under the test's prefix into a log the final scan
        reads: no token or refresh token may be in etcd in the clear."""
        if not self.hosts or not self.etcd.healthy():
            return
        r = self.etcd.ctl("get", "--prefix", self.prefix)
        with open(self.ws.log_path("etcd-dump.txt"), "w") as f:
            f.write(r.stdout)

    # ------------------------------------------------------------ the server
    def stats(self):
        with urllib.request.urlopen(self.srv.base + "/_test/stats", timeout=5) as r:
            return json.loads(r.read())

    def stats_delta(self, key):
        return self.stats()[key] - self.stats0[key]

    def mint(self):
        req = urllib.request.Request(self.srv.base + "/_test/mint", method="POST",
                                     data=json.dumps({"client_id": CLIENT_ID}).encode())
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())["refresh_token"]

    def issued_access_tokens(self, start=None):
        """Hex SHA-256 of each access token the server issued in this test, in order."""
        out = []
        with open(self.srv.issued_log) as f:
            for line in f:
                o = json.loads(line)
                if o["kind"] == "access_token":
                    out.append(hashlib.sha256(o["value"].encode()).hexdigest())
        return out[self.issued0 if start is None else start:]

    def assert_no_replay(self):
        self.assertEqual(self.stats_delta("replays"), 0, "the server saw a refresh token replayed")
        self.assertEqual(self.stats_delta("grants_revoked"), 0, "the server revoked the grant")

    def assert_every_request_seen(self):
        """Each token request the server counted came through a host's proxy.
        A proxy records a request once its answer is back, the server when
        it arrives: one in flight is waited for (a few seconds at most); one
        that bypassed the proxies never matches."""
        def counts():
            return (sum(len(h.requests()) for h in self.hosts), self.stats_delta("token_requests"))
        try:
            wait_for(lambda: (lambda c: c[0] == c[1])(counts()), 5, "the proxies' count")
        except AssertionError:
            pass  # the assertion below says what differs
        through, server = counts()
        self.assertEqual(through, server,
                         "token requests reached the server other than through the hosts' proxies")

    # ------------------------------------------------------------ hosts
    def seal_key_file(self, name):
        key = os.urandom(32)
        for text in (key.hex(), base64.b64encode(key).decode()):
            harness.remember(text)
        path = os.path.join(self.ws.secrets, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
        return path

    def credential(self, host, refresh_token_file):
        c = harness.credential(CRED, CLIENT_ID, self.secret, endpoint=host.proxy.token_endpoint,
                               grant="refresh_token", refresh_before_s=2, timeout_s=TIMEOUT_S,
                               max_backoff_s=2)
        if refresh_token_file:
            c["refresh_token_file"] = refresh_token_file
        return c

    def coordination(self, seal_key_file):
        return {"etcd": {"endpoints": self.etcd.client, "prefix": self.prefix,
                         "lease_ttl_s": LEASE_TTL_S},
                "seal_key_file": seal_key_file}

    def add_host(self, refresh_token_file=None, seal_key_file=None):
        """A host; `refresh_token_file` is copied into the host's own secrets."""
        i = len(self.hosts)
        h = Host(i, TokenProxy(self.srv.base, f"host{i}"))
        self.hosts.append(h)
        if refresh_token_file:
            with open(refresh_token_file) as f:
                refresh_token_file = h.ws.secret_file("grant.refresh", f.read())
        h.write_config(self.credential(h, refresh_token_file),
                       self.coordination(seal_key_file or self.seal_key))
        return h

    def start_fleet(self, n=3, readers=True, fault=None):
        """Host 0 (with the grant) first; the others once it has published.
        `fault`: host 0's TOKENSHM_FAULT_KILL."""
        first = self.add_host(self.grant)
        first.start(fault=fault)
        self.wait_published(first, 0, START_S, "host 0 to win and publish")
        for _ in range(n - 1):
            self.add_host().start()
        for h in self.hosts[1:]:
            self.wait_event(h, "followed", 0, START_S, f"{h.name} to follow a publication")
        if readers:
            self.start_readers()

    def wait_event(self, host, event, after, timeout_s, what):
        def pred():
            if not host.alive():
                raise AssertionError(f"{host.name}'s refresher exited ({host.proc.returncode}) "
                                     f"while waiting for {what}:\n{host.tail()}")
            return [t for t, _ in host.events(event) if t > after]
        return wait_for(pred, timeout_s, what)[0]

    def wait_published(self, host, after, timeout_s, what):
        return self.wait_event(host, "published_etcd", after, timeout_s, what)

    def first_publication_after(self, t):
        """(time, host) of the first `published_etcd` after t on any host, or
        None; fails at once on a replay (the grant is gone, nothing follows)."""
        self.assert_no_replay()
        found = [(pt, h) for h in self.hosts for pt, _ in h.events("published_etcd") if pt > t]
        return min(found, key=lambda x: x[0]) if found else None

    def leader(self):
        """The host with the newest `published_etcd` of its current run."""
        found = [(h.events("published_etcd")[-1][0], h) for h in self.hosts
                 if h.alive() and h.events("published_etcd")]
        if not found:
            raise AssertionError("no host has published")
        return max(found, key=lambda x: x[0])[1]

    def assert_alive(self):
        for h in self.hosts:
            self.assertTrue(h.alive(), f"{h.name}'s refresher exited ({h.proc.returncode}):\n"
                            f"{h.tail()}")

    # ------------------------------------------------------------ readers
    def start_readers(self):
        for h in self.hosts:
            out, seen = h.ws.log_path("reader.json"), h.ws.log_path("reader.seen")
            with open(h.ws.log_path("reader.stderr"), "ab") as err:
                p = harness.spawn(["/usr/bin/python3", READER, libtokenshm(), h.ws.segment, CRED,
                                   self.srv.issued_log, out, seen], subprocess.DEVNULL, err)
            self.readers.append((h, p, out, seen))
        wait_for(lambda: all(self.seen(h) for h in self.hosts), 20,
                 "every host's reader to read a token")

    def seen(self, host):
        for h, _, _, path in self.readers:
            if h is host and os.path.exists(path):
                with open(path) as f:
                    return set(f.read().split())
        return set()

    def wait_every_host_read(self, tokens, timeout_s):
        """Waits until every host's reader has read each of `tokens` (digests)."""
        for h in self.hosts:
            def missing(h=h):
                return len(set(tokens) - self.seen(h))
            try:
                wait_for(lambda: missing() == 0, timeout_s, f"{h.name}'s reader")
            except AssertionError:
                self.fail(f"{h.name}'s segment never got {missing()} of the {len(tokens)} "
                          "access tokens the leader got")

    def stop_readers(self, allowed_errors=(EXPIRED,)):
        """Stops the readers and checks every read they made."""
        figs = {}
        for h, p, out, _ in self.readers:
            harness.stop_process(p, grace_s=10)
            self.assertEqual(p.returncode, 0, f"{h.name}'s reader failed (see {out}.stderr)")
            with open(out) as f:
                figs[h.name] = json.load(f)
        self.readers = []
        for name, r in figs.items():
            bad = {k: r[k] for k in ("torn", "version_backwards", "version_token_mismatch",
                                     "expired_served") if r[k]}
            bad.update({f"error {k}": v for k, v in r["errors"].items() if k not in allowed_errors})
            self.assertEqual(bad, {}, f"{name}'s reader: bad reads")
            self.assertGreater(r["ok"], 0, f"{name}'s reader never read a token")
            self.assertLess(r["max_past_server_expiry_ms"], 1100,
                            f"{name}'s reader was served a token the server had expired")
        return figs

    # ------------------------------------------------------------ tests
    def test_0_infrastructure(self):
        """The cluster elects, survives its raft leader's SIGKILL and takes it
        back; a refresher without coordination gets tokens through a proxy."""
        etcd = self.etcd
        lead = wait_for(lambda: [etcd.leader_index()] if etcd.leader_index() is not None
                        else None, 20, "an etcd raft leader")[0]
        others = [c for i, c in enumerate(etcd.client) if i != lead]
        etcd.kill9(lead)
        key = self.prefix + "/probe"
        wait_for(lambda: etcd.ctl("put", key, "after-kill", endpoints=others).returncode == 0, 20,
                 "a write with the raft leader killed")
        etcd.start(lead)
        etcd.wait_healthy(30)
        r = etcd.ctl("get", key, "--print-value-only", endpoints=[etcd.client[lead]])
        self.assertEqual(r.stdout.strip(), "after-kill", "the restarted member lost the write")
        etcd.pause(lead)  # a stopped member: the other two keep quorum
        self.assertEqual(etcd.ctl("put", key, "paused", endpoints=others).returncode, 0,
                         "a write with one member stopped")
        etcd.resume(lead)
        etcd.wait_healthy(30)
        h = Host(0, TokenProxy(self.srv.base, "host0"))
        self.hosts.append(h)
        h.start(h.ws.config([self.credential(h, self.grant)], name="single.json"))
        wait_for(lambda: h.token(CRED), START_S, "a token through the proxy (no coordination)")
        digest = hashlib.sha256(h.token(CRED).encode()).hexdigest()
        self.assertIn(digest, self.issued_access_tokens(), "the token is not one the server issued")
        self.assertGreater(len(h.requests()), 0)
        self.assert_every_request_seen()

    def test_a_one_refresher_sends_and_every_host_gets_every_token(self):
        """Only the leader sends; every host's segment gets each of its tokens.
        Fails if a follower refreshes too (two senders, then a replay), or a
        follower misses publications (applies only the first, or coalesces)."""
        self.start_fleet()
        mark = len(self.issued_access_tokens())

        def six_more():  # a second sender fails at once, not as a stalled grant
            self.assertEqual(self.senders(), ["host0"], "the hosts that sent token requests")
            self.assert_no_replay()
            return len(self.issued_access_tokens()) >= mark + 6
        wait_for(six_more, 30, "six more rotations")
        tokens = self.issued_access_tokens()[mark:]
        self.wait_every_host_read(tokens, 10)
        self.assertEqual(self.senders(), ["host0"], "the hosts that sent token requests")
        self.assert_every_request_seen()
        for h in self.hosts:
            want = "leader" if h.index == 0 else "follower"
            self.assertEqual(h.role(), want, f"{h.name}'s last event=role")
            refreshed = len(h.events("refreshed"))
            self.assertEqual(refreshed > 0, h.index == 0, f"{h.name} logged {refreshed} refreshes")
        self.assert_no_replay()
        self.assertEqual(overlaps(h.proxy for h in self.hosts), [])
        self.stop_readers(allowed_errors=())
        self.check_status()

    def senders(self):
        return sorted(h.name for h in self.hosts if h.requests())

    def check_status(self):
        """The control socket's status names each host's role and the leader's pid."""
        for h in self.hosts:
            st = h.status()
            self.assertIn("coordination", st, f"{h.name}: status has no coordination object")
            c = st["coordination"]
            self.assertEqual(c.get("role"), "leader" if h.index == 0 else "follower",
                             f"{h.name}: status coordination.role")
            self.assertEqual(c.get("leader_pid"), self.hosts[0].pid,
                             f"{h.name}: status coordination.leader_pid")
            self.assertEqual(c.get("etcd"), "ok", f"{h.name}: status coordination.etcd")
            if h.index == 0:
                self.assertTrue(0 < c.get("lease_remaining_ms", 0) <= LEASE_TTL_S * 1000,
                                f"{h.name}: status coordination.lease_remaining_ms out of range")
            # `tokenshm status` asks the refresher the same (point 7).
            cli = h.ws.status().get("coordination", {})
            self.assertEqual((cli.get("role"), cli.get("leader_pid")),
                             (c.get("role"), c.get("leader_pid")),
                             f"{h.name}: tokenshm status --json coordination")
            table = h.ws.cli("status").stdout.decode(errors="replace")
            self.assertIn(f"coordination: {c.get('role')}, leader host ", table,
                          f"{h.name}: tokenshm status has no coordination line")

    def test_b_sigkill_the_leader_again_and_again(self):
        """SIGKILL the leader KILLS times, restarting it: a new leader
        publishes each time within the bound, the server sees no replay.
        Kills fall anywhere outside a token request's window (sleep_to_kill_time).
        Fails if a leader's death is not noticed, or no host campaigns again."""
        self.start_fleet()
        random.seed(SEED)
        print(f"\nfleet: {KILLS} kills, seed {SEED}", flush=True)
        failovers, elections = [], []
        for k in range(KILLS):
            self.assert_alive()
            leader = self.leader()
            self.sleep_to_kill_time(leader)
            leader.kill9()
            t_kill = time.time()
            leader.start()  # as a supervisor would
            t_pub, new = wait_for(lambda: self.first_publication_after(t_kill), FAILOVER_BOUND_S,
                                  f"kill {k + 1}: a new leader to publish within "
                                  f"{FAILOVER_BOUND_S}s (lease_ttl_s {LEASE_TTL_S} + slack)")
            failovers.append(t_pub - t_kill)
            elections.append(min([t for t, line in new.events("role") if t > t_kill and
                                  Host.role_word(line) == "leader"], default=t_pub) - t_kill)
        held = sum(len(h.events("held", whole=True)) for h in self.hosts)
        print(f"\nfleet: {KILLS} leader kills (lease_ttl_s {LEASE_TTL_S}): from the kill to "
              f"a new leader median {statistics.median(elections):.2f}s, max "
              f"{max(elections):.2f}s; to its publication median "
              f"{statistics.median(failovers):.2f}s, max {max(failovers):.2f}s; "
              f"{self.stats_delta('refresh_ok')} rotations; {held} held", flush=True)
        # The restarted hosts follow again: each segment gets a token issued
        # after the last kill (that each gets every token is test_a's claim).
        mark = len(self.issued_access_tokens())
        for h in self.hosts:
            wait_for(lambda h=h: self.seen(h) & set(self.issued_access_tokens()[mark:]), 15,
                     f"{h.name}'s segment to get a token issued after the last kill")
        self.assert_alive()
        self.assert_no_replay()
        self.assertEqual(overlaps(h.proxy for h in self.hosts), [],
                         "two hosts' token requests overlapped")
        self.assert_every_request_seen()
        self.stop_readers()

    def sleep_to_kill_time(self, leader):
        """Sleeps until a random moment at most KILL_DELAY_S[1] after the
        leader's newest publication: min_interval_s (1 s) keeps its next token
        request later than that, so the kill never falls between a sent mark
        and its publication (that window holds the grant by design)."""
        t_last = leader.events("published_etcd")[-1][0]
        if time.time() > t_last + KILL_DELAY_S[1] - 0.1:
            t_last = self.wait_published(leader, t_last, 10, "the leader's next publication")
        time.sleep(max(0.0, t_last + random.uniform(*KILL_DELAY_S) - time.time()))

    def test_c_sigstop_the_leader_past_its_lease(self):
        """A leader paused past its lease (a stopped VM) is replaced and, on
        waking, steps down without a token request. Fails if the leader
        refreshes on a lease it has not renewed (Coordinator::may_refresh)."""
        self.start_fleet()
        old = self.leader()
        # Right after a publication: no request of its own in flight, so what
        # follows is the lease alone (a request in flight is test_b's window).
        self.wait_published(old, time.time(), 10, "the leader to publish")
        old.pause()
        t_stop = time.time()
        t_pub, new = wait_for(lambda: self.first_publication_after(t_stop), FAILOVER_BOUND_S,
                              "another host to publish while the leader is stopped")
        self.assertIsNot(new, old)
        time.sleep(max(0.0, t_stop + LEASE_TTL_S + 3 - time.time()))  # past its lease, on purpose
        old.resume()
        t_cont = time.time()
        wait_for(lambda: [t for t, _ in old.events("role") if t > t_cont] and
                 old.role() != "leader", 15, "the old leader to log a role other than leader")
        self.wait_published(new, t_cont + 2, 15, "the new leader to publish after the old woke")
        self.assertEqual(old.requests_started(t_cont), [],
                         "the old leader sent token requests after it woke")
        self.assertEqual(self.leader(), new, "the new leader lost its place")
        self.assertEqual(overlaps(h.proxy for h in self.hosts), [],
                         "two hosts' token requests overlapped")
        self.assert_no_replay()
        self.assert_every_request_seen()
        self.assert_alive()
        self.stop_readers()

    def test_d_etcd_member_killed_then_full_outage(self):
        """etcd's raft leader down: the fleet publishes again within the
        failover bound (the longest gap is printed). All of etcd down for
        longer than a token lives: nobody sends a token request, every host
        runs on and readers keep their segment; when etcd returns a leader
        refreshes again. Fails if a host refreshes without a live lease, or
        never campaigns again after the outage."""
        self.start_fleet()
        etcd = self.etcd
        etcd.make_leader(0)
        etcd.kill9(0)  # the raft leader, and the first endpoint every host tries
        t_kill = t = time.time()
        for n in range(2):
            t = wait_for(lambda: self.first_publication_after(t), FAILOVER_BOUND_S,
                         f"publication {n + 1} with etcd member m0 down")[0]
        print(f"\nfleet: etcd raft leader killed: publications resumed after "
              f"{self.publication_gap(t_kill - 5, t):.2f}s at most", flush=True)
        etcd.start(0)
        etcd.wait_healthy(30)
        etcd.kill_all()
        t_out = time.time()
        status_seen = self.status_during_outage()
        time.sleep(max(0.0, t_out + max(TOKEN_TTL_S, LEASE_TTL_S) + 2 - time.time()))
        self.assert_alive()
        late = [(h.name, round(r[0] - t_out, 2)) for h in self.hosts
                for r in h.requests_started(t_out + 0.5)]
        self.assertEqual(late, [], "token requests (host, seconds into the outage) without etcd")
        etcd.start_dead()
        t_back = time.time()
        etcd.wait_healthy(60)
        t_pub, _ = wait_for(lambda: self.first_publication_after(t_back), LEASE_TTL_S + 25,
                            "a leader to publish after etcd came back")
        self.wait_every_host_read(self.issued_access_tokens()[-1:], 15)
        self.assert_no_replay()
        self.assertEqual(overlaps(h.proxy for h in self.hosts), [])
        self.stop_readers()
        self.assertEqual(status_seen, {h.name: True for h in self.hosts},
                         "hosts whose status said coordination.etcd != ok during the outage")

    def publication_gap(self, start, end):
        """The longest time between two publications (any host) in [start, end]."""
        times = sorted(pt for h in self.hosts for pt, _ in h.events("published_etcd", whole=True)
                       if start <= pt <= end)
        return max((b - a for a, b in zip(times, times[1:])), default=0.0)

    def status_during_outage(self):
        """{host: True} when its control socket answered, during the outage, a
        status whose coordination.etcd is an error (point 7), else what it said."""
        out = {}
        for h in self.hosts:
            def pred(h=h):
                c = h.status().get("coordination", {})
                out[h.name] = c.get("etcd", "no coordination.etcd in status")
                return c.get("etcd") not in (None, "ok")
            try:
                wait_for(pred, 5, f"{h.name}'s status to report etcd's error")
                out[h.name] = True
            except AssertionError:
                pass
        return out

    def test_e_a_wrong_seal_key_is_a_clear_error_never_a_replay(self):
        """A host with another seal key logs seal_refused naming its file and
        never sends a token request, even alone with a (spent) local refresh
        token. Fails if it falls back to that token when it cannot unseal."""
        good = self.add_host(self.grant)
        good.start()
        self.wait_published(good, 0, START_S, "host 0 to win and publish")
        wrong_key = self.seal_key_file("wrong-seal.key")
        # It has the grant's first refresh token too, spent by now: a host that
        # falls back to it when it cannot unseal replays it.
        wrong = self.add_host(self.grant, seal_key_file=wrong_key).start()
        # event=seal_refused (the brief), or a line whose detail says seal_refused.
        refused = wait_for(lambda: wrong.lines_with("seal_refused"), START_S,
                           "a seal_refused line from the host with the wrong key")
        self.assertIn(wrong_key, refused[0], "the seal_refused line does not name seal_key_file")
        good.kill9()  # the wrong-key host is left the only candidate
        try:
            wait_for(lambda: wrong.role() == "leader", FAILOVER_BOUND_S,
                     "the host with the wrong key to lead")
        except AssertionError:
            pass  # not leading is fine too; it must not send either way
        # Evidence its loop ran on for 3 s (its heartbeat), not a sleep.
        wrong.ws.refresher_ran_for(3, "the host with the wrong key, alone")
        self.assertEqual(len(wrong.requests()), 0, "token requests from the host with the wrong "
                         f"key (statuses {[r[2] for r in wrong.requests()]})")
        self.assert_no_replay()
        print(f"\nfleet: wrong key: {len(wrong.lines_with('seal_refused'))} seal_refused lines, "
              f"last role {wrong.role()!r}", flush=True)


    def test_f_a_host_back_alone_continues_from_etcd_not_its_state(self):
        """A host down while the leader rotated the token, back when no other
        host runs, wins at once and must continue from etcd's sealed refresh
        token, not the spent one in its state directory. Fails if a new
        leader goes on from its local token (a replay at the server)."""
        self.start_fleet(n=2, readers=False)
        first, second = self.hosts
        second.kill9()
        t = time.time()
        for n in range(3):
            t = self.wait_published(first, t, 15, f"rotation {n + 1} with host1 down")
        first.kill9()
        time.sleep(LEASE_TTL_S + 1)  # the dead leader's lease ends: host1 wins at once
        t_back = time.time()
        second.start()
        self.wait_published(second, t_back, FAILOVER_BOUND_S + LEASE_TTL_S,
                            "host1, back alone, to publish")
        self.assert_no_replay()
        self.assert_every_request_seen()



    def die_at_fault(self, host, restart=True):
        """Waits for `host` to SIGKILL itself at its fault point; restarts it
        without the fault, as a supervisor would. Returns the time of death."""
        wait_for(lambda: not host.alive(), 30, f"{host.name} to reach its fault point")
        t_dead = time.time()
        self.assertEqual(host.proc.returncode, -9, f"{host.name} exited otherwise:\n{host.tail()}")
        if restart:
            host.start()
        return t_dead

    def held_after(self, t):
        return [line for h in self.hosts for ht, line in h.events("held") if ht > t]

    def test_g_leader_killed_after_saving_its_successor_is_rescued(self):
        """The leader dies after saving a rotated refresh token and before
        publishing it: the new leader finds the token it holds marked sent and
        holds; the dead host, restarted after that, offers its successor and
        the leader goes on with it. Fails on a replay (the marked token
        resent) or a grant left held."""
        self.start_fleet(readers=False, fault="after_rename_before_publish:5")
        dead = self.hosts[0]
        t_dead = self.die_at_fault(dead, restart=False)
        held = wait_for(lambda: self.held_after(t_dead), FAILOVER_BOUND_S, "a new leader to hold")
        self.assertIn(f"pid {dead.pid}", held[0], "the held line does not name the dead leader")
        t_back = time.time()
        dead.start()  # restarted late, so the held leader must take its rescue
        wait_for(lambda: self.first_publication_after(t_back), FAILOVER_BOUND_S,
                 "a publication after the restarted host offered its successor")
        rescued = [line for h in self.hosts[1:] for _, line in h.events("rescued")]
        self.assertTrue(rescued, "the held leader published without event=rescued")
        self.assert_no_replay()
        self.assert_every_request_seen()

    def test_h_leader_killed_before_saving_its_successor_holds_never_replays(self):
        """The leader dies after the server rotated the refresh token and
        before saving the successor: it is lost (as on one host), so the new
        leader must hold, naming the dead process, and nobody sends again.
        Fails if a host resends the spent token (a replay, the grant revoked)."""
        self.start_fleet(readers=False, fault="after_response_before_rename:5")
        dead_pid = self.hosts[0].pid
        t_dead = self.die_at_fault(self.hosts[0])
        held = wait_for(lambda: self.held_after(t_dead), FAILOVER_BOUND_S, "a new leader to hold")
        self.assertIn(f"pid {dead_pid}", held[0], "the held line does not name the dead leader")
        self.hosts[0].ws.refresher_ran_for(2, "the fleet, held")
        late = [(h.name, round(r[0] - t_dead, 2)) for h in self.hosts
                for r in h.requests_started(t_dead)]
        self.assertEqual(late, [], "token requests (host, seconds after the death) while held")
        self.assert_no_replay()



if __name__ == "__main__":
    if not os.access(ETCD, os.X_OK):
        harness._skip(f"{ETCD} not found (Debian's etcd-server, installed by scripts/setup)")
    harness.main()
