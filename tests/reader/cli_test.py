#!/usr/bin/env python3
"""The `tokenshm` command's exit codes and output, against segments held by
the test publisher:

    cli_test.py TOKENSHM_CLI PUBLISHER

0 success, 2 usage, 3 no segment, 4 no such credential, 5 no valid token
(empty, expired, expiring, reauth), 6 incompatible or untrusted. Every
failure prints a line on stderr starting "tokenshm: "."""

import json
import os
import re
import secrets
import struct
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pyutil  # noqa: E402

CLI = PUBLISHER = None
MAGIC = 0x314D48534E4B4F54  # "TOKNSHM1"


def run(*args, env=None, timeout=60):
    e = dict(os.environ)
    e.pop("TOKENSHM_SEGMENT", None)
    e.pop("TOKENSHM_TRUSTED_UID", None)
    if env:
        e.update(env)
    return subprocess.run([CLI, *args], capture_output=True, text=True, env=e, timeout=timeout)


def junk_token():
    return "junk-" + secrets.token_urlsafe(24)


class CliTest(unittest.TestCase):
    def assert_fails(self, r, code, one_line=True):
        self.assertEqual(r.returncode, code, f"stdout={r.stdout!r} stderr={r.stderr!r}")
        self.assertEqual(r.stdout, "")
        self.assertTrue(r.stderr.startswith("tokenshm: "), r.stderr)
        if one_line:
            self.assertEqual(r.stderr.count("\n"), 1, r.stderr)

    def published(self, token=None, ttl_ms=600_000, extra=()):
        seg = pyutil.unique_segment("cli")
        return pyutil.Publisher(PUBLISHER, seg, "storage", token or junk_token(), ttl_ms, extra)

    # ---------------------------------------------------------------- success

    def test_get_prints_the_token(self):
        token = junk_token()
        with self.published(token) as p:
            r = run("get", "storage", "--segment", p.segment)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(r.stdout, token + "\n")
            self.assertEqual(r.stderr, "")
            # The segment may come from the environment instead.
            r = run("get", "storage", env={"TOKENSHM_SEGMENT": p.segment})
            self.assertEqual((r.returncode, r.stdout), (0, token + "\n"))
            r = run("get", "storage", "--segment", p.segment, "--min-valid", "30")
            self.assertEqual((r.returncode, r.stdout), (0, token + "\n"))

    def test_header_format(self):
        token = junk_token()
        with self.published(token) as p:
            r = run("get", "storage", "--header", "--segment", p.segment)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(r.stdout, f"Authorization: Bearer {token}\n")

    def test_status(self):
        token = junk_token()
        with self.published(token) as p:
            r = run("status", "--segment", p.segment)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn(f"pid {p.pid} alive", r.stdout)
            self.assertRegex(r.stdout, r"\nstorage +valid ")
            self.assertNotIn(token, r.stdout + r.stderr)
            r = run("status", "--json", "--segment", p.segment)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertNotIn(token, r.stdout)
            doc = json.loads(r.stdout)
            self.assertEqual(doc["segment"], p.segment)
            self.assertEqual(doc["refresher"]["pid"], p.pid)
            self.assertIs(doc["refresher"]["alive"], True)
            self.assertEqual(len(doc["credentials"]), 1)
            cred = doc["credentials"][0]
            self.assertEqual(cred["name"], "storage")
            self.assertEqual(cred["state"], "valid")
            self.assertEqual(cred["version"], 1)
            self.assertEqual(cred["token_type"], "Bearer")
            self.assertGreater(cred["expires_in_ms"], 500_000)

    def test_help_and_version(self):
        self.assertEqual(run("--help").returncode, 0)
        r = run("--version")
        self.assertEqual(r.returncode, 0)
        self.assertTrue(r.stdout.startswith("tokenshm "))

    # ---------------------------------------------------------------- 3, 4, 5, 6

    def test_no_segment_is_3(self):
        seg = pyutil.unique_segment("cli-absent")
        self.assert_fails(run("get", "storage", "--segment", seg), 3)
        self.assert_fails(run("status", "--segment", seg), 3)

    def test_no_such_credential_is_4(self):
        with self.published() as p:
            self.assert_fails(run("get", "other", "--segment", p.segment), 4)

    def test_no_valid_token_is_5(self):
        cases = {
            "empty": dict(extra=("--empty",)),
            "expired": dict(ttl_ms=-1000),
            "reauth, expired": dict(ttl_ms=-1000, extra=("--state", "reauth")),
        }
        for what, kw in cases.items():
            with self.subTest(what), self.published(**kw) as p:
                self.assert_fails(run("get", "storage", "--segment", p.segment), 5)
        with self.published(ttl_ms=60_000) as p:
            r = run("get", "storage", "--segment", p.segment, "--min-valid", "3600")
            self.assert_fails(r, 5)
            self.assertIn("expires", r.stderr)

    def test_server_text_cannot_drive_the_terminal(self):
        # last_error comes from the authorization server: escape sequences,
        # BEL, DEL and newlines in it are printed escaped, never raw.
        hostile = "denied\x1b[2J\x1b]0;owned\x07\x7f\nsecond line"
        extra = ("--state", "reauth", "--no-times", "--last-error", hostile)
        with self.published(ttl_ms=0, extra=extra) as p:
            r = run("get", "storage", "--segment", p.segment)
            self.assert_fails(r, 5)
            self.assertIn("denied\\u001b[2J", r.stderr)
            r2 = run("status", "--segment", p.segment)
            self.assertEqual(r2.returncode, 0, r2.stderr)
            for out in (r.stderr, r2.stdout):
                for raw in ("\x1b", "\x07", "\x7f", "\nsecond"):
                    self.assertNotIn(raw, out, f"{raw!r} printed raw")
            row = [ln for ln in r2.stdout.splitlines() if ln.startswith("storage ")]
            self.assertEqual(len(row), 1, r2.stdout)
            # No token was ever issued: every time column is "-", not "-20788d".
            cols = row[0].split()
            self.assertEqual(cols[1:4], ["reauth", "-", "1"], row[0])
            self.assertEqual(cols[4], "-", row[0])   # last refresh
            self.assertEqual(cols[6], "-", row[0])   # next refresh

    def test_stale_and_unexpired_reauth_still_serve(self):
        for state in ("stale", "reauth"):
            token = junk_token()
            with self.subTest(state), self.published(token, extra=("--state", state)) as p:
                r = run("get", "storage", "--segment", p.segment)
                self.assertEqual((r.returncode, r.stdout), (0, token + "\n"), r.stderr)

    def test_untrusted_and_incompatible_are_6(self):
        with self.published() as p:
            path = f"/dev/shm/{p.segment}"
            os.chmod(path, 0o666)
            self.assert_fails(run("get", "storage", "--segment", p.segment), 6)
            self.assert_fails(run("status", "--segment", p.segment), 6)
            os.chmod(path, 0o600)
            with open(path, "r+b") as f:
                f.write(struct.pack("<Q", 0x0123456789ABCDEF))  # wrong magic
                f.flush()
                self.assert_fails(run("get", "storage", "--segment", p.segment), 6)
                f.seek(0)
                f.write(struct.pack("<QH", MAGIC, 9))  # unknown major version
                f.flush()
                r = run("get", "storage", "--segment", p.segment)
                self.assert_fails(r, 6)
                self.assertIn("major version 9", r.stderr)
                f.seek(0)
                f.write(struct.pack("<QH", 0, 1))  # magic never published
                f.flush()
                self.assert_fails(run("get", "storage", "--segment", p.segment), 3)

    # ---------------------------------------------------------------- 2: usage

    def test_usage_errors_are_2(self):
        with self.published() as p:
            seg = ("--segment", p.segment)
            for args in [
                ("get", "storage", "--frobnicate", *seg),
                ("get", "storage", "--min-valid", "abc", *seg),
                ("get", "storage", "--min-valid", "-1", *seg),
                ("get", "storage", "--min-valid", "1e99", *seg),
                ("get", "storage", "--min-valid", "", *seg),
                ("get", "storage", "--min-valid", "nan", *seg),
                ("get", "storage", "--min-valid"),
                ("get", "storage", "--wait", "soon", *seg),
                ("get", *seg),
                ("get", "storage", "extra", *seg),
                ("get", "storage", "--segment"),
                ("status", "--frobnicate", *seg),
                ("frobnicate",),
                (),
            ]:
                with self.subTest(args=args):
                    self.assert_fails(run(*args), 2, one_line=False)
            self.assert_fails(run("get", "storage", env={"TOKENSHM_SEGMENT": "../x"}), 2)
            self.assert_fails(run("get", "storage", "--segment", "a/b"), 2)

    # ---------------------------------------------------------------- --wait

    def test_wait_returns_once_published(self):
        token = junk_token()
        with self.published(token, extra=("--publish-on-stdin",)) as p:
            cli = subprocess.Popen([CLI, "get", "storage", "--wait", "60", "--segment", p.segment],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                pyutil.assert_blocked_in_futex(self, cli.pid, "tokenshm get --wait")
                start = time.monotonic()
                p.publish_now()
                out, err = cli.communicate(timeout=60)
            finally:
                if cli.poll() is None:
                    cli.kill()
                    cli.wait()
            self.assertEqual((cli.returncode, out), (0, token + "\n"), err)
            self.assertLess(time.monotonic() - start, 30)

    def test_watch_prints_a_line_per_change_and_never_the_token(self):
        token = junk_token()
        with self.published(token, extra=("--empty", "--publish-on-stdin")) as p:
            w = subprocess.Popen([CLI, "watch", "storage", "--count", "2", "--segment", p.segment],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                pyutil.assert_blocked_in_futex(self, w.pid, "tokenshm watch")
                p.publish_now()
                out, err = w.communicate(timeout=60)
            finally:
                if w.poll() is None:
                    w.kill()
                    w.wait()
            self.assertEqual(w.returncode, 0, err)
            lines = out.splitlines()
            self.assertEqual(len(lines), 2, out)
            self.assertIn(" storage version=0 state=empty", lines[0])
            self.assertIn(" state=valid expires_in=", lines[1])
            self.assertNotIn(token, out)
        r = run("watch", "storage", "--count", "0", "--segment", "x")
        self.assert_fails(r, 2, one_line=False)

    def test_wait_for_the_segment_to_appear(self):
        token = junk_token()
        seg = pyutil.unique_segment("cli-late")
        cli = subprocess.Popen([CLI, "get", "storage", "--wait", "60", "--segment", seg],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            with pyutil.Publisher(PUBLISHER, seg, "storage", token):
                out, err = cli.communicate(timeout=60)
        finally:
            if cli.poll() is None:
                cli.kill()
                cli.wait()
        self.assertEqual((cli.returncode, out), (0, token + "\n"), err)

    def test_wait_times_out(self):
        with self.published(extra=("--empty",)) as p:
            start = time.monotonic()
            r = run("get", "storage", "--wait", "0.5", "--segment", p.segment)
            took = time.monotonic() - start
            self.assert_fails(r, 5)
            self.assertGreaterEqual(took, 0.5)


SOURCE_DIR = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


def source(*parts):
    with open(os.path.join(SOURCE_DIR, *parts)) as f:
        return f.read()


def function_body(text, name):
    """The text of the C++ function `name` (from its name to the closing brace
    at the start of a line)."""
    m = re.search(r"\b" + re.escape(name) + r"\(", text)
    assert m, f"{name} not found"
    end = text.index("\n}\n", m.end())
    return text[m.start():end]


def accepted_options():
    """{command: {option}} read from the argument parsers' `a == "--x"`
    comparisons, so an option added without help fails the test below."""
    cli = source("reader", "tokenshm_cli.cpp")
    login = source("reader", "tokenshm_login.cpp")
    parsers = {"get": (cli, "parse_get_args"), "status": (cli, "cmd_status"),
               "watch": (cli, "parse_watch_args"), "refresh": (cli, "parse_refresh_args"),
               "login": (login, "parse_login_args")}
    return {cmd: set(re.findall(r'a == "(-[-a-z]+)"', function_body(text, fn)))
            for cmd, (text, fn) in parsers.items()}


def mentions(text, option):
    return re.search(r"(^|[\s,\[|(])" + re.escape(option) + r"\b", text) is not None


class HelpTest(unittest.TestCase):
    """`tokenshm --help` and `tokenshm COMMAND --help`: exit 0, stdout only,
    every command and every option its parser accepts."""

    def test_every_dispatched_command_has_a_parser_here(self):
        dispatched = set(re.findall(r'cmd == "([a-z]+)"\) return',
                                    function_body(source("reader", "tokenshm_cli.cpp"), "main")))
        self.assertEqual(dispatched - {"help"}, set(accepted_options()))

    def test_top_level_help_names_every_command_and_option(self):
        for flag in ("--help", "-h", "help"):
            r = run(flag)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(r.stderr, "")
            for cmd, options in accepted_options().items():
                self.assertTrue(mentions(r.stdout, "tokenshm " + cmd), cmd)
                for o in options:
                    self.assertTrue(mentions(r.stdout, o), f"{cmd} {o} missing from --help")
            self.assertIn("COMMAND --help", r.stdout)

    def test_every_command_help_names_every_option(self):
        options = accepted_options()
        self.assertIn("--min-valid", options["get"], "could not read get's options")
        self.assertIn("--config", options["login"], "could not read login's options")
        for cmd, opts in options.items():
            for form in ([cmd, "--help"], [cmd, "-h"], ["help", cmd]):
                with self.subTest(form=form):
                    r = run(*form)
                    self.assertEqual(r.returncode, 0, r.stderr)
                    self.assertEqual(r.stderr, "")
                    self.assertTrue(r.stdout.startswith("usage: tokenshm " + cmd), r.stdout)
                    self.assertIn("exit codes:", r.stdout)
                    undocumented = sorted(o for o in opts | {"--help", "-h"}
                                          if not mentions(r.stdout, o))
                    self.assertEqual(undocumented, [], f"options missing from {cmd} --help")

    def test_help_anywhere_among_other_arguments(self):
        # Even where the arguments alone would be a usage error or would
        # need a segment, --help wins and nothing else runs.
        for args in (["login", "--help"], ["login", "storage", "--timeout", "5", "-h"],
                     ["get", "storage", "--min-valid", "--help"],
                     ["refresh", "--segment", "cli-no-such-segment", "storage", "--help"],
                     ["watch", "--bogus", "--help"], ["status", "--json", "--prometheus", "-h"]):
            with self.subTest(args=args):
                r = run(*args)
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertEqual(r.stderr, "")
                self.assertTrue(r.stdout.startswith("usage: tokenshm " + args[0]), r.stdout)

    def test_help_for_an_unknown_command_is_a_usage_error(self):
        for args in (["bogus", "--help"], ["help", "bogus"]):
            with self.subTest(args=args):
                r = run(*args)
                self.assertEqual(r.returncode, 2)
                self.assertEqual(r.stdout, "")
                self.assertTrue(r.stderr.startswith("tokenshm: unknown command 'bogus'"),
                                r.stderr)


def main():
    global CLI, PUBLISHER
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    CLI, PUBLISHER = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    prog = unittest.main(argv=[sys.argv[0], "-v"], exit=False)
    if prog.result.testsRun == 0:
        print("cli_test: no test ran, which is no pass", file=sys.stderr)
        return 1
    return 0 if prog.result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
