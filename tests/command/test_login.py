"""`tokenshm login --config FILE NAME` end to end against oidc_server.mjs,
whose built-in login and consent pages are driven over HTTP with urllib, as
a person's browser would.

  test_01: login with no refresher running: exit 0, the state directory holds
           the refresh token (v2, mode 0600), a refresher started afterwards
           gets an access token with it; a second login while it works says
           the refresher keeps its own token.
  test_02: a refresher in reauth (its configured refresh token was refused)
           is told through its control socket (no SIGHUP, no reload) and
           resumes with the new token; the listener takes the configured
           redirect_uri.
  test_03: the server's real code delivered with another state: a 400
           page, nothing stored, and the login waits on; the person's own
           redirect then completes it.
  test_04: the person cancels (error=access_denied): exit 5, nothing stored.
  test_05: no redirect within --timeout: exit 5.
  test_06: bad arguments and configurations: exit 2 or 4, one line.
  test_07: a client_secret_post client logs in the same way.

No token, code or secret appears in the command's output: its stdout and
stderr are files in the workspace's logs/, which the harness scans.
"""

import http.cookiejar
import os
import re
import select
import socket
import stat
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
import harness  # noqa: E402
from harness import Deadline, IntegrationTest, Workspace, credential, remember_basic, spawn  # noqa: E402

EXIT_NO_TOKEN = 5


def free_port():
    """A port nothing listens on now (the kernel's choice for port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Login:
    """A running `tokenshm login`; its output goes to files in logs/."""

    def __init__(self, ws, config, name, *args):
        ws._n += 1
        self.out_path = ws.log_path(f"login-{ws._n}.stdout")
        self.err_path = ws.log_path(f"login-{ws._n}.stderr")
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = spawn([harness.TOKENSHM, "login", "--config", config, name, *args],
                              out, err)

    def url(self, timeout_s=30):
        """The authorization URL, the first line on stdout."""
        d = Deadline(timeout_s)
        while not d.expired():
            with open(self.out_path) as f:
                line = f.readline()
            if line.endswith("\n"):
                return line.strip()
            if self.proc.poll() is not None:
                raise AssertionError(f"login exited {self.proc.returncode} before printing a URL: "
                                     f"{self.stderr()}")
            select.select([], [], [], 0.05)
        raise AssertionError("login printed no URL in time")

    def wait(self, timeout_s=60):
        return self.proc.wait(timeout_s)

    def stdout(self):
        with open(self.out_path, errors="replace") as f:
            return f.read()

    def stderr(self):
        with open(self.err_path, errors="replace") as f:
            return f.read()


class Browser:
    """urllib with a cookie jar: follows redirects, including the last one to
    the login command's loopback listener."""

    def __init__(self, stop_at=None):
        """stop_at: a URL prefix whose redirect is not followed; open() then
        returns the redirect's Location as its `url`."""
        stop = self

        class Redirects(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, req, fp, code, msg, headers, newurl):
                if stop.stop_at and newurl.startswith(stop.stop_at):
                    return None
                return super().redirect_request(req, fp, code, msg, headers, newurl)

        self.stop_at = stop_at
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()), Redirects())

    def open(self, url, form=None):
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        try:
            with self.opener.open(url, data=data, timeout=30) as r:
                return r.status, r.geturl(), r.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            if 300 <= e.code < 400:
                return e.code, e.headers.get("Location", ""), ""
            return e.code, e.geturl(), e.read().decode(errors="replace")

    def interaction(self, page_url, body):
        """The interaction's own URL (the form's action) from its page."""
        m = re.search(r'action="([^"]*/interaction/[^"/]+)"', body)
        assert m, f"no interaction form on {urllib.parse.urlsplit(page_url).path}"
        return urllib.parse.urljoin(page_url, m.group(1))

    def log_in_and_consent(self, auth_url):
        status, url, body = self.open(auth_url)
        assert status == 200, f"login page: HTTP {status}"
        status, url, body = self.open(self.interaction(url, body),
                                      {"prompt": "login", "login": "alice", "password": "x"})
        assert status == 200, f"consent page: HTTP {status}"
        # The last redirect reaches the loopback listener, which answers the page.
        return self.open(self.interaction(url, body), {"prompt": "consent"})

    def cancel(self, auth_url):
        status, url, body = self.open(auth_url)
        assert status == 200, f"login page: HTTP {status}"
        m = re.search(r'href="([^"]*/interaction/[^"/]+/abort)"', body)
        assert m, "no abort link on the login page"
        return self.open(urllib.parse.urljoin(url, m.group(1)))


class LoginTest(IntegrationTest):

    @classmethod
    def setUpClass(cls):
        cls.server_ws = Workspace("login-server")
        mint, cls.minted = cls.server_ws.mint_args("tokenshm-demo")
        cls.srv = cls.server_ws.server("oidc", ["--access-ttl", "30", *mint])
        cls.addClassCleanup(cls.server_ws.stop_all)
        cls.server_ws.remember_files(cls.minted)
        remember_basic("tokenshm-demo", "demo-secret")

    def cred(self, name, client_id="tokenshm-demo", client_secret_file=None, **kw):
        secret = client_secret_file or self.ws.secret_file("demo.secret", "demo-secret")
        return credential(name, client_id, secret, issuer=self.srv.base, grant="refresh_token",
                          **kw)

    def token_path(self, name):
        return os.path.join(self.ws.state_dir, f"{name}.refresh_token")

    def assert_stored(self, name):
        path = self.token_path(name)
        st = os.lstat(path)
        self.assertTrue(stat.S_ISREG(st.st_mode))
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o600)
        with open(path) as f:
            head = f.readline()
        self.assertTrue(head.startswith("tokenshm-state v2 sha256="), "not a v2 state file")
        self.ws.remember_state()

    def login_ok(self, config, name, redirect=None):
        login = Login(self.ws, config, name, "--timeout", "60")
        url = login.url()
        self.assertTrue(url.startswith(self.srv.base + "/auth?"), "not the issuer's authorization URL")
        q = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
        self.assertEqual(q["code_challenge_method"], ["S256"])
        self.assertEqual(len(q["code_challenge"][0]), 43)
        if redirect:
            self.assertEqual(q["redirect_uri"], [redirect])
        else:
            self.assertRegex(q["redirect_uri"][0], r"^http://127\.0\.0\.1:\d+/callback$")
        status, _, page = Browser().log_in_and_consent(url)
        rc = login.wait()
        self.assertEqual(rc, 0, login.stderr())
        self.assertEqual(status, 200, "the listener's page should say it worked")
        self.assertIn("stored", page)
        return login

    def test_01_login_then_start(self):
        ws = self.ws
        cfg = ws.config([self.cred("first")])
        login = self.login_ok(cfg, "first")
        self.assertIn("no refresher runs", login.stdout())
        self.assert_stored("first")
        r = ws.refresher(cfg)
        ws.wait_state("first", "valid", 20)
        self.assertEqual(ws.get("first")[0], 0)
        # A second login while the credential works: stored, the refresher is
        # told, and the command says the working token stays in use.
        again = self.login_ok(cfg, "first")
        self.assertIn(f"pid {r.pid}", again.stdout())
        self.assertIn("not in reauth", again.stdout())
        self.assertTrue(r.alive())
        ws.wait_state("first", "valid", 20)

    def test_02_refresher_in_reauth_resumes(self):
        ws = self.ws
        bogus = ws.secret_file("bogus.refresh", "not-a-refresh-token-at-all")
        # The test server registers http://127.0.0.1/callback (any port: RFC 8252 §7.3).
        redirect = f"http://127.0.0.1:{free_port()}/callback"
        cfg = ws.config([self.cred("again", refresh_token_file=bogus, redirect_uri=redirect)])
        r = ws.refresher(cfg)
        ws.wait_state("again", "reauth", 20)
        self.assertTrue(any("tokenshm login --config" in line for line in r.log_lines(cred="again")),
                        "the reauth advice does not name tokenshm login")
        login = self.login_ok(cfg, "again", redirect)
        self.assertIn(f"the refresher (pid {r.pid}) is using the new refresh token",
                      login.stdout())
        self.assert_stored("again")
        ws.wait_state("again", "valid", 20)
        self.assertTrue(r.log_lines(event="changed", cred="again"),
                        "the refresher did not take the stored token up")
        self.assertFalse(r.log_lines(event="reload"), "login made the refresher reload its config")
        self.assertEqual(ws.get("again")[0], 0)
        self.assertTrue(r.alive())

    def test_07_client_secret_post(self):
        ws = self.ws
        remember_basic("tokenshm-post", "post-secret")
        cfg = ws.config([self.cred("post", client_id="tokenshm-post",
                                   auth_method="client_secret_post",
                                   client_secret_file=ws.secret_file("post.secret", "post-secret"))])
        self.login_ok(cfg, "post")
        self.assert_stored("post")
        ws.refresher(cfg)
        ws.wait_state("post", "valid", 20)

    def test_03_wrong_state_is_refused_and_login_waits_on(self):
        ws = self.ws
        cfg = ws.config([self.cred("forged")])
        login = Login(ws, cfg, "forged", "--timeout", "60")
        url = login.url()
        redirect = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["redirect_uri"][0]
        # A real code from the server, delivered with another state: only the
        # state check stands between it and a stored token.
        code, location, _ = Browser(stop_at=redirect).log_in_and_consent(url)
        self.assertEqual(code, 303)
        answer = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))
        self.assertIn("code", answer)
        forged = dict(answer, state="not-the-state-login-sent")
        status, _, page = Browser().open(redirect + "?" + urllib.parse.urlencode(forged))
        self.assertEqual(status, 400)
        self.assertIn("not this login", page)
        self.assertFalse(os.path.exists(self.token_path("forged")))
        self.assertIsNone(login.proc.poll(), "a forged redirect ended the login")
        # The person's own redirect still completes it.
        status, _, _ = Browser().open(location)
        self.assertEqual(status, 200)
        self.assertEqual(login.wait(), 0, login.stderr())
        self.assert_stored("forged")

    def test_04_access_denied(self):
        ws = self.ws
        cfg = ws.config([self.cred("denied")])
        login = Login(ws, cfg, "denied", "--timeout", "60")
        status, _, _ = Browser().cancel(login.url())
        self.assertEqual(login.wait(), EXIT_NO_TOKEN)
        self.assertEqual(status, 400)
        err = login.stderr().strip().splitlines()
        self.assertIn("error=access_denied", err[-1])
        self.assertFalse(os.path.exists(self.token_path("denied")))

    def test_05_timeout(self):
        ws = self.ws
        cfg = ws.config([self.cred("late")])
        login = Login(ws, cfg, "late", "--timeout", "1")
        login.url()
        self.assertEqual(login.wait(), EXIT_NO_TOKEN)
        self.assertIn("in time", login.stderr())
        self.assertFalse(os.path.exists(self.token_path("late")))

    def test_06_bad_arguments_and_config(self):
        ws = self.ws
        cfg = ws.config([self.cred("one"),
                         {**self.cred("direct"), "issuer": None,
                          "token_endpoint": self.srv.token_endpoint}])
        cases = [
            ([], 2),
            (["--config", cfg], 2),
            (["--config", cfg, "one", "two"], 2),
            (["--config", cfg, "one", "--timeout", "0"], 2),
            (["--config", cfg, "one", "--bogus"], 2),
            (["--config", os.path.join(ws.dir, "missing.json"), "one"], 2),
            (["--config", cfg, "nosuch"], 4),
            (["--config", cfg, "direct"], 2),
        ]
        for args, want in cases:
            r = subprocess.run([harness.TOKENSHM, "login", *args], stdin=subprocess.DEVNULL,
                               capture_output=True, timeout=30)
            with open(ws.log_path("bad-args.log"), "ab") as f:
                f.write(r.stdout + r.stderr)
            self.assertEqual(r.returncode, want, f"{args}: {r.stderr!r}")
            self.assertTrue(r.stderr.decode().startswith("tokenshm: login: "))
        r = subprocess.run([harness.TOKENSHM, "login", "--config", cfg, "direct"],
                           capture_output=True, timeout=30)
        self.assertIn("needs issuer", r.stderr.decode())


if __name__ == "__main__":
    harness.main()
