"""The examples (examples/) against a live refresher and the test
authorization server; issue 10, points 10 and 13.

  test_01: examples/reader (C ABI) prints the credential's version, token type
           and length, never the token; an unknown credential exits 1 naming
           the error.
  test_02: examples/reader.py (the compiled module) prints the current token
           and, with --next 2, the two versions the refresher publishes next
           (Handle.wait against a real refresher).
  test_03: examples/uploader against a loopback HTTP server that answers 401
           to the token the test marks rejected: the uploader reports that
           version, gets the refresher's next one, retries once and succeeds;
           the authorization server saw exactly one more token request.
  test_04: the Python module's report_invalid against the live refresher:
           the answer is the reported version (a refresh started), wait()
           returns the next one, and a second report of the old version
           answers the newer one at once without another token request.

The examples are found under TOKENSHM_BUILD_DIR (examples/, python/); the
Python example runs with the interpreter the module was built for
(/usr/bin/python3 when it exists).
"""

import glob
import hashlib
import http.server
import os
import re
import subprocess
import sys
import threading

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
import harness  # noqa: E402
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "reader"))
import pyutil  # noqa: E402
from harness import IntegrationTest, Workspace, credential, remember_basic, wait_for  # noqa: E402

LINE = re.compile(r"^(\S+): version (\d+), Bearer token of (\d+) bytes, "
                  r"expires in (-?\d+) s \((\w+)\)$")


def build_path(*parts):
    return os.path.join(harness.BUILD_DIR, *parts)


def module_python():
    """The interpreter the module was built for, and the module's directory."""
    if not glob.glob(build_path("python", "tokenshm*.so")):
        return None, None
    py = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else "python3"
    return py, build_path("python")


def module_env(path, segment):
    """The environment of a Python example: the module on its path, and in an
    ASan build the ASan runtime preloaded (the interpreter is not built with it)."""
    env = dict(os.environ, TOKENSHM_SEGMENT=segment, PYTHONPATH=path)
    rt = pyutil.asan_runtime(glob.glob(os.path.join(path, "tokenshm*.so"))[0])
    if rt:
        env["LD_PRELOAD"] = rt
        env["ASAN_OPTIONS"] = ":".join(filter(None, [env.get("ASAN_OPTIONS"), "detect_leaks=0"]))
    return env


class RejectingServer(http.server.ThreadingHTTPServer):
    """127.0.0.1, any port: 401 for a bearer token in `rejected`, 200 for any
    other. Keeps (sha256 of the token, status) per request: no token in
    memory longer than the request, none in any output."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), RejectingHandler)
        self.rejected = set()  # sha256 hex of rejected tokens
        self.seen = []
        self.lock = threading.Lock()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/upload"


class RejectingHandler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's name)
        n = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(min(n, 1 << 16))
        auth = self.headers.get("Authorization") or ""
        digest = hashlib.sha256(auth.partition(" ")[2].encode()).hexdigest()
        with self.server.lock:
            status = 401 if digest in self.server.rejected or not auth else 200
            self.server.seen.append((digest, status))
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):  # the default writes request lines to stderr
        pass


class Examples(IntegrationTest):

    @classmethod
    def setUpClass(cls):
        # One hour tokens: nothing refreshes by itself while a test looks,
        # unless it asks (test_03's report) or uses the short-lived server.
        cls.server_ws = Workspace("examples-server")
        cls.srv = cls.server_ws.server("oidc", ["--access-ttl", "3600"])
        cls.short = cls.server_ws.server("oidc", ["--access-ttl", "6"], name="oidc-short")
        cls.addClassCleanup(cls.server_ws.stop_all)
        remember_basic("tokenshm-demo", "demo-secret")

    def cred(self, name, srv=None, **kw):
        return credential(name, "tokenshm-demo",
                          self.ws.secret_file("demo.secret", "demo-secret"),
                          endpoint=(srv or self.srv).token_endpoint,
                          **{"refresh_before_s": 3, **kw})

    def not_built(self, what):
        """A skip, which TOKENSHM_CI=1 turns into a failure: a skip is no pass."""
        if os.environ.get("TOKENSHM_CI") == "1":
            self.fail(f"{what} is not built, and TOKENSHM_CI=1 makes that a failure")
        self.skipTest(f"{what} is not built")

    def run_example(self, argv, timeout=60):
        env = dict(os.environ, TOKENSHM_SEGMENT=self.ws.segment)
        return subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=timeout)

    def test_01_reader_c(self):
        ws = self.ws
        ws.refresher(ws.config([self.cred("one")]))
        ws.wait_state("one", "valid", 15)
        rc, tok, _ = ws.get("one")
        self.assertEqual(rc, 0)
        version = ws.cred("one")["version"]

        r = self.run_example([build_path("examples", "reader"), "one", "60"])
        self.assertEqual(r.returncode, 0, r.stderr)
        m = LINE.match(r.stdout.strip())
        self.assertIsNotNone(m, "unexpected output of examples/reader")
        self.assertEqual(m.group(1), "one")
        self.assertEqual(int(m.group(2)), version)
        self.assertEqual(int(m.group(3)), len(tok))
        self.assertGreater(int(m.group(4)), 3000)
        self.assertEqual(m.group(5), "valid")
        self.assertNotIn(tok, r.stdout + r.stderr)

        r = self.run_example([build_path("examples", "reader"), "nope"])
        self.assertEqual(r.returncode, 1)
        self.assertIn("no such credential", r.stderr)
        r = self.run_example([build_path("examples", "reader"), "one", "-5"])
        self.assertEqual(r.returncode, 2)

    def test_02_reader_py_follows_versions(self):
        py, path = module_python()
        if py is None:
            self.not_built("the Python module (python3-dev missing?)")
        ws = self.ws
        ws.refresher(ws.config([self.cred("short", srv=self.short)]))
        ws.wait_state("short", "valid", 15)
        env_argv = [py, "-B", os.path.join(harness.SOURCE_DIR, "examples", "reader.py"),
                    "short", "--min-valid", "1", "--next", "2"]
        env = module_env(path, ws.segment)
        r = subprocess.run(env_argv, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=90)
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = r.stdout.strip().splitlines()
        self.assertEqual(len(lines), 3, "expected the current version and two more")
        versions = []
        for line in lines:
            m = LINE.match(line)
            self.assertIsNotNone(m, "unexpected output of examples/reader.py")
            self.assertEqual(m.group(5), "valid")
            versions.append(int(m.group(2)))
        self.assertEqual(versions, sorted(set(versions)), "versions did not grow")

        r = subprocess.run(env_argv[:3] + ["nope"], env=env, stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 1)
        self.assertIn("no_such_credential", r.stderr)

    def test_03_uploader_retries_after_401(self):
        uploader = build_path("examples", "uploader")
        if not os.access(uploader, os.X_OK):
            self.not_built("examples/uploader")
        ws = self.ws
        ws.refresher(ws.config([self.cred("up")]))
        ws.wait_state("up", "valid", 15)
        rc, tok, _ = ws.get("up")
        self.assertEqual(rc, 0)
        first_version = ws.cred("up")["version"]
        requests_before = len(self.srv.token_log())

        web = RejectingServer()
        threading.Thread(target=web.serve_forever, daemon=True).start()
        self.addCleanup(web.server_close)
        self.addCleanup(web.shutdown)
        rejected = hashlib.sha256(tok.encode()).hexdigest()
        web.rejected.add(rejected)

        r = self.run_example([uploader, "up", web.url, "--requests", "2", "--min-valid", "60"])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertNotIn(tok, r.stdout + r.stderr)
        lines = r.stdout.strip().splitlines()
        m = re.match(r"request 1: HTTP 401 with token version (\d+); reported, retrying with "
                     r"version (\d+)$", lines[0])
        self.assertIsNotNone(m, "the first request was not a 401 followed by a retry")
        self.assertEqual(int(m.group(1)), first_version)
        second_version = int(m.group(2))
        self.assertGreater(second_version, first_version)
        self.assertEqual(lines[1:], [f"request 1: HTTP 200 with token version {second_version}",
                                     f"request 2: HTTP 200 with token version {second_version}"])
        with web.lock:
            statuses = [s for _, s in web.seen]
            digests = [d for d, _ in web.seen]
        self.assertEqual(statuses, [401, 200, 200])
        self.assertEqual(digests[0], rejected)
        self.assertNotEqual(digests[1], rejected)
        self.assertEqual(digests[1], digests[2])
        # The report caused one token request, not one per retry.
        wait_for(lambda: len(self.srv.token_log()) >= requests_before + 1, 10,
                 "the refresh the report asked for")
        self.assertEqual(len(self.srv.token_log()), requests_before + 1)
        rc, now, _ = ws.get("up")
        self.assertEqual(hashlib.sha256(now.encode()).hexdigest(), digests[1])

    def test_04_module_report_invalid(self):
        py, path = module_python()
        if py is None:
            self.not_built("the Python module (python3-dev missing?)")
        ws = self.ws
        ws.refresher(ws.config([self.cred("py")]))
        ws.wait_state("py", "valid", 15)
        requests_before = len(self.srv.token_log())
        # Prints versions only: the token stays in the child.
        script = (
            "import tokenshm\n"
            "h = tokenshm.Reader().lookup('py')\n"
            "old = h.get().version\n"
            "now = h.report_invalid(old)\n"
            "new = h.wait(old, timeout=30) if now <= old else h.get()\n"
            "again = h.report_invalid(old)\n"
            "print(old, now, new.version, again, new.state)\n")
        env = module_env(path, ws.segment)
        r = subprocess.run([py, "-B", "-c", script], env=env, stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        old, now, new, again, state = r.stdout.split()
        old, now, new, again = int(old), int(now), int(new), int(again)
        self.assertEqual(now, old, "the refresher did not start a refresh for the current version")
        self.assertGreater(new, old)
        self.assertEqual(again, new, "a report of a replaced version must answer the newer one")
        self.assertEqual(state, "valid")
        self.assertEqual(len(self.srv.token_log()), requests_before + 1)


if __name__ == "__main__":
    harness.main()
