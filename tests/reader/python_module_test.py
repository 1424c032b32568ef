#!/usr/bin/env python3
"""The compiled Python module `tokenshm` (python/) against a segment the
publisher holds.

    python_module_test.py MODULE PUBLISHER

MODULE is the built extension (its directory goes first on sys.path); run by
the interpreter meson built it for. Like ctypes_test.py, the script re-executes
itself with the ASan runtime preloaded when the module was built with ASan.

  test_get:                 the token, its record, the same Token object while
                            the version stays, a repr without the token.
  test_min_valid_expiring:  min_valid beyond the expiry raises Error 'expiring'.
  test_wait_timeout:        wait() for a version that does not come: 'timeout'.
  test_wait_wakes:          wait(0) on an empty slot returns the first publish.
  test_wait_releases_gil:   while one thread is blocked in wait() (in futex,
                            says /proc), another thread runs Python.
  test_errors:              no segment, no such credential, bad arguments.
  test_report_invalid_unreachable: a segment naming no control socket (the
                            publisher's) gives Error 'unreachable' (14).
                            Against a live refresher: tests/command/
                            test_examples.py.
"""

import os
import secrets
import sys
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import pyutil  # noqa: E402

MODULE = PUBLISHER = None
tokenshm = None


class PythonModuleTest(unittest.TestCase):
    def publisher(self, tag, ttl_ms=600_000, extra=()):
        segment = pyutil.unique_segment(tag)
        token = "junk-" + secrets.token_urlsafe(32)
        return pyutil.Publisher(PUBLISHER, segment, "storage", token, ttl_ms, extra)

    def test_get(self):
        with self.publisher("py-get") as pub:
            before = time.time()
            reader = tokenshm.Reader(pub.segment)
            self.assertEqual(reader.segment, pub.segment)
            self.assertEqual(reader.credentials(), ["storage"])
            handle = reader.lookup("storage")
            self.assertEqual(handle.name, "storage")
            tok = handle.get()
            self.assertEqual(tok.token, pub.token)
            self.assertEqual(tok.token_type, "Bearer")
            self.assertEqual(tok.scope, "test.scope")
            self.assertEqual(tok.state, "valid")
            self.assertEqual(tok.failures, 0)
            self.assertEqual(tok.last_error, "")
            self.assertGreaterEqual(tok.version, 1)
            self.assertAlmostEqual(tok.expires_at - tok.issued_at, 600.0, places=2)
            self.assertGreater(tok.expires_at, before + 500)
            # While the version stays, get() returns the Token it built for it.
            self.assertIs(handle.get(), tok)
            self.assertIs(handle.get(min_valid=60), tok)
            self.assertIs(handle.get(60.5), tok)
            self.assertNotIn(pub.token, repr(tok))
            self.assertNotIn(pub.token, str(tok))
            self.assertIn(f"version={tok.version}", repr(tok))
            with self.assertRaises(AttributeError):
                tok.token = "x"

    def test_min_valid_expiring(self):
        with self.publisher("py-expiring", ttl_ms=60_000) as pub:
            handle = tokenshm.Reader(pub.segment).lookup("storage")
            handle.get(min_valid=30)
            with self.assertRaises(tokenshm.Error) as cm:
                handle.get(min_valid=120)
            self.assertEqual(cm.exception.name, "expiring")
            self.assertEqual(cm.exception.code, 7)
            self.assertNotIn(pub.token, str(cm.exception))
            self.assertIsInstance(cm.exception, Exception)

    def test_wait_timeout(self):
        with self.publisher("py-timeout") as pub:
            handle = tokenshm.Reader(pub.segment).lookup("storage")
            tok = handle.get()
            with self.assertRaises(tokenshm.Error) as cm:
                handle.wait(tok.version, timeout=0.05)
            self.assertEqual(cm.exception.name, "timeout")
            self.assertEqual(cm.exception.code, 9)
            # A version already past seen_version returns at once.
            self.assertEqual(handle.wait(tok.version - 1, timeout=0).version, tok.version)

    def test_wait_wakes(self):
        with self.publisher("py-wakes", extra=["--publish-on-stdin"]) as pub:
            handle = tokenshm.Reader(pub.segment).lookup("storage")
            with self.assertRaises(tokenshm.Error) as cm:
                handle.get()
            self.assertEqual(cm.exception.name, "empty")
            got = {}
            waiter = threading.Thread(target=lambda: got.update(tok=handle.wait(0, timeout=20)))
            waiter.start()
            pub.publish_now()
            waiter.join(60)
            self.assertFalse(waiter.is_alive())
            self.assertEqual(got["tok"].token, pub.token)
            self.assertGreaterEqual(got["tok"].version, 1)
            self.assertEqual(handle.get().version, got["tok"].version)

    def test_wait_releases_gil(self):
        # The waiter blocks for up to 20 s. Were the GIL held during wait(),
        # this thread could not run Python until then: in_futex() (Python,
        # polling /proc) would only return after the waiter had timed out, and
        # `got` would hold its 'timeout'. (Both waits' 20 s keep that mutant's
        # failure within the test's timeout; the publisher answers in ms.)
        with self.publisher("py-gil", extra=["--publish-on-stdin"]) as pub:
            handle = tokenshm.Reader(pub.segment).lookup("storage")
            got = {}

            def wait():
                got["tid"] = threading.get_native_id()
                try:
                    got["tok"] = handle.wait(0, timeout=20)
                except tokenshm.Error as e:
                    got["error"] = e.name

            waiter = threading.Thread(target=wait)
            waiter.start()
            pyutil.assert_blocked_in_futex(self, got_tid(got), "the waiting thread")
            self.assertNotIn("error", got)
            self.assertNotIn("tok", got)
            pub.publish_now()
            waiter.join(60)
            self.assertEqual(got["tok"].token, pub.token)

    def test_errors(self):
        with self.assertRaises(tokenshm.Error) as cm:
            tokenshm.Reader(pyutil.unique_segment("py-absent"))
        self.assertEqual((cm.exception.name, cm.exception.code), ("no_segment", 1))
        self.assertIn("does not exist", str(cm.exception))
        with self.publisher("py-errors") as pub:
            reader = tokenshm.Reader(pub.segment)
            with self.assertRaises(tokenshm.Error) as cm:
                reader.lookup("nope")
            self.assertEqual((cm.exception.name, cm.exception.code), ("no_such_credential", 4))
            handle = reader.lookup("storage")
            with self.assertRaises(ValueError):
                handle.get(min_valid=-1)
            with self.assertRaises(ValueError):
                handle.get(float("nan"))
            with self.assertRaises(TypeError):
                handle.get(1, 2)
            with self.assertRaises(TypeError):
                handle.get(valid=1)
            with self.assertRaises(ValueError):
                handle.wait(0, timeout=-1)
            with self.assertRaises(TypeError):
                tokenshm.Handle()
            with self.assertRaises(TypeError):
                reader.lookup(3)
            # A version is 0 to 2**64-1: -1 must not wrap to 2**64-1 (wait
            # would then never return, report_invalid would send a version
            # nobody published).
            for bad in (-1, 2**64):
                with self.assertRaises(OverflowError):
                    handle.wait(bad, timeout=0)
                with self.assertRaises(OverflowError):
                    handle.report_invalid(bad, timeout=0)
            with self.assertRaises(TypeError):
                handle.wait(1.5, timeout=0)

    def test_report_invalid_unreachable(self):
        with self.publisher("py-report") as pub:
            handle = tokenshm.Reader(pub.segment).lookup("storage")
            tok = handle.get()
            with self.assertRaises(tokenshm.Error) as cm:
                handle.report_invalid(tok.version, timeout=2)
            self.assertEqual((cm.exception.name, cm.exception.code), ("unreachable", 14))
            with self.assertRaises(TypeError):
                handle.report_invalid()
            with self.assertRaises(ValueError):
                handle.report_invalid(tok.version, timeout=-1)
            self.assertIs(handle.get(), tok)


def got_tid(got, timeout=20):
    """The waiter's thread id, once it has published it."""
    deadline = time.monotonic() + timeout
    while "tid" not in got and time.monotonic() < deadline:
        time.sleep(0.001)
    return got["tid"]


def main():
    global MODULE, PUBLISHER, tokenshm
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    MODULE, PUBLISHER = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    pyutil.reexec_with_asan_runtime_of(MODULE)
    sys.path.insert(0, os.path.dirname(MODULE))
    import tokenshm as mod
    tokenshm = mod
    prog = unittest.main(argv=[sys.argv[0], "-v"], exit=False)
    return 0 if prog.result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
