"""The systemd notify protocol, against a datagram socket the test binds in
place of the service manager's (NOTIFY_SOCKET), with the refresher serving
a credential from the oidc test server.

  test_01: READY=1 comes once, with the segment attached and the credential's
           record published (status lists it); STATUS= then reports it valid,
           in a line of counts and times only; WATCHDOG=1 repeats with
           WATCHDOG_USEC set; SIGHUP sends RELOADING=1 with a MONOTONIC_USEC
           read between the signal and its receipt, then READY=1 again;
           SIGTERM sends STOPPING=1 and exits 0.
  test_02: an abstract socket ('@name') works the same way.
  test_03: WATCHDOG_PID naming another process: no WATCHDOG=1, READY still.
  test_04: NOTIFY_SOCKET naming nothing: the refresher serves tokens anyway
           and says so once in its log.
"""

import os
import re
import signal
import socket
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
import harness  # noqa: E402
from harness import IntegrationTest, Workspace, remember_basic, wait_for  # noqa: E402

# What STATUS= may say: counts by state and a coarse time, nothing else.
STATUS_RE = re.compile(
    r"^(\d+ credentials?(: \d+ (valid|stale|expired|reauth|empty)(, \d+ (valid|stale|expired|"
    r"reauth|empty))*)?(; next refresh (due now|in (under 1m|\d+m|\d+h( \d+m)?)))?"
    r"|reloading the configuration|stopping)$")


class NotifyListener:
    """A bound AF_UNIX datagram socket standing in for the service manager.
    Every datagram is kept (as a dict of its VAR=value lines, in order) and
    written to a log in the workspace, so the secret scan reads it too."""

    def __init__(self, ws, abstract=False):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"tokenshm-notify-test-{os.getpid()}-{id(self)}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            self.address = os.path.join(ws.dir, "notify.sock")
            self.sock.bind(self.address)
        self.sock.setblocking(False)
        self.log_path = ws.log_path("notify.log")
        self.messages = []

    def drain(self):
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return self.messages
            with open(self.log_path, "ab") as f:
                f.write(data + b"\n--\n")
            msg = {}
            for line in data.decode().split("\n"):
                if line:
                    k, _, v = line.partition("=")
                    msg[k] = v
            self.messages.append(msg)

    def index_of(self, key, value="1", start=0):
        """Index of the first message from `start` on with key=value, else None."""
        for i, m in enumerate(self.drain()[start:], start):
            if m.get(key) == value:
                return i
        return None

    def wait(self, key, value="1", start=0, timeout_s=15, what=None):
        """Waits for key=value from `start` on; its index."""
        found = []

        def pred():
            i = self.index_of(key, value, start)
            if i is not None:
                found.append(i)
            return i is not None
        wait_for(pred, timeout_s, what or f"{key}={value} on the notify socket")
        return found[-1]

    def statuses(self):
        return [m["STATUS"] for m in self.drain() if "STATUS" in m]

    def count(self, key, value="1"):
        return sum(1 for m in self.drain() if m.get(key) == value)

    def close(self):
        self.sock.close()


class Notify(IntegrationTest):

    @classmethod
    def setUpClass(cls):
        cls.server_ws = Workspace("notify-server")
        cls.srv = cls.server_ws.server("oidc", ["--access-ttl", "600"])
        cls.addClassCleanup(cls.server_ws.stop_all)
        remember_basic("tokenshm-demo", "demo-secret")

    def cred(self, name):
        return {
            "name": name,
            "token_endpoint": self.srv.token_endpoint,
            "grant": "client_credentials",
            "client_id": "tokenshm-demo",
            "client_secret_file": self.ws.secret_file("demo.secret", "demo-secret"),
            "min_interval_s": 1,
            "timeout_s": 5,
        }

    def start(self, listener_address, name="notified", **env):
        """A refresher with NOTIFY_SOCKET (and the given WATCHDOG_*) in its environment."""
        saved = {k: os.environ.get(k) for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        try:
            for k in saved:
                os.environ.pop(k, None)
            os.environ["NOTIFY_SOCKET"] = listener_address
            os.environ.update(env)
            return self.ws.refresher(self.ws.config([self.cred(name)]))
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def listener(self, abstract=False):
        n = NotifyListener(self.ws, abstract)
        self.addCleanup(n.close)
        return n

    def assert_statuses_clean(self, n):
        for s in n.statuses():
            self.assertRegex(s, STATUS_RE, "a STATUS= line that is not a summary of counts")

    def test_01_ready_watchdog_status_reload_stop(self):
        ws, n = self.ws, self.listener()
        r = self.start(n.address, WATCHDOG_USEC="2000000")
        ready = n.wait("READY", what="READY=1 after start")
        # READY means the segment is attached and the record published.
        self.assertIsNotNone(ws.cred("notified"),
                             "READY=1 before the credential was in the segment")
        self.assertEqual(n.count("READY"), 1, "READY=1 sent more than once before any reload")
        self.assertIn("STATUS", n.messages[ready], "READY=1 without a STATUS= summary")

        ws.wait_state("notified", "valid", 15)
        ws.get("notified")
        wait_for(lambda: any(s.startswith("1 credential: 1 valid") for s in n.statuses()), 15,
                 "STATUS= reporting the credential valid")
        wait_for(lambda: n.count("WATCHDOG") >= 3, 30, "three WATCHDOG=1 pings")

        before_us = time.monotonic_ns() // 1000
        os.kill(r.pid, signal.SIGHUP)
        reloading = n.wait("RELOADING", start=ready + 1, what="RELOADING=1 after SIGHUP")
        after_us = time.monotonic_ns() // 1000
        mono = n.messages[reloading].get("MONOTONIC_USEC", "")
        self.assertRegex(mono, r"^\d+$", "RELOADING=1 without MONOTONIC_USEC")
        self.assertTrue(before_us <= int(mono) <= after_us,
                        "MONOTONIC_USEC is not CLOCK_MONOTONIC at the reload")
        n.wait("READY", start=reloading + 1, what="READY=1 after RELOADING=1")
        self.assertTrue(r.alive())

        os.kill(r.pid, signal.SIGTERM)
        self.assertEqual(r.proc.wait(10), 0)
        n.wait("STOPPING", start=reloading + 1, what="STOPPING=1 on SIGTERM")
        self.assert_statuses_clean(n)

    def test_02_abstract_socket(self):
        n = self.listener(abstract=True)
        r = self.start(n.address)
        n.wait("READY", what="READY=1 on an abstract socket")
        self.ws.wait_state("notified", "valid", 15)
        r.stop()
        n.wait("STOPPING")
        self.assertEqual(n.count("WATCHDOG"), 0, "WATCHDOG=1 without WATCHDOG_USEC")
        self.assert_statuses_clean(n)

    def test_03_watchdog_for_another_pid(self):
        n = self.listener()
        r = self.start(n.address, WATCHDOG_USEC="400000", WATCHDOG_PID=str(os.getpid()))
        n.wait("READY")
        # A tenth of a second per ping would have been due: two seconds of
        # the refresher's own loop (its heartbeat) would have sent many.
        self.ws.refresher_ran_for(2, "watchdog pings to have been due")
        self.assertEqual(n.count("WATCHDOG"), 0, "WATCHDOG=1 though WATCHDOG_PID names another pid")
        self.assertTrue(r.alive())

    def test_04_unreachable_socket_is_not_fatal(self):
        ws = self.ws
        r = self.start(os.path.join(ws.dir, "nobody-listens.sock"), WATCHDOG_USEC="400000")
        ws.wait_state("notified", "valid", 15)
        self.assertEqual(ws.get("notified")[0], 0)
        ws.refresher_ran_for(1, "more notify messages to fail")
        self.assertTrue(r.alive())
        lines = r.log_lines(event="notify")
        self.assertEqual(len(lines), 1, "the failure to notify is not logged exactly once")
        self.assertIn("NOTIFY_SOCKET", lines[0])


if __name__ == "__main__":
    harness.main()
