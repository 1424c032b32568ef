#!/usr/bin/env python3
"""Python reads a token through the C ABI with ctypes.

    ctypes_test.py LIBTOKENSHM PUBLISHER

When the library was built with AddressSanitizer, the script re-executes
itself with the ASan runtime preloaded (Python itself is not instrumented)."""

import ctypes
import os
import secrets
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pyutil  # noqa: E402

LIB = PUBLISHER = None

# enum tokenshm_error
OK, NO_SEGMENT, NO_SUCH_CREDENTIAL, EXPIRING, TIMEOUT, BUFFER_TOO_SMALL = 0, 1, 4, 7, 9, 12
STATE_VALID = pyutil.layout_constant("TOKENSHM_STATE_VALID")


class Token(ctypes.Structure):
    """struct tokenshm_token"""

    _fields_ = [
        ("token", ctypes.c_void_p),
        ("token_len", ctypes.c_size_t),
        ("token_type", ctypes.c_void_p),
        ("token_type_len", ctypes.c_size_t),
        ("scope", ctypes.c_void_p),
        ("scope_len", ctypes.c_size_t),
        ("last_error", ctypes.c_void_p),
        ("last_error_len", ctypes.c_size_t),
        ("expires_at_ms", ctypes.c_int64),
        ("issued_at_ms", ctypes.c_int64),
        ("next_refresh_ms", ctypes.c_int64),
        ("last_attempt_ms", ctypes.c_int64),
        ("version", ctypes.c_uint64),
        ("state", ctypes.c_uint32),
        ("failures", ctypes.c_uint32),
        ("heartbeat_age_ms", ctypes.c_int64),
        ("writer_alive", ctypes.c_int32),
        ("reserved", ctypes.c_int32),
    ]

    def text(self, field):
        return ctypes.string_at(getattr(self, field), getattr(self, field + "_len")).decode()


def load(path):
    lib = ctypes.CDLL(path)
    lib.tokenshm_open.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
    lib.tokenshm_open.restype = ctypes.c_int
    lib.tokenshm_close.argtypes = [ctypes.c_void_p]
    lib.tokenshm_close.restype = None
    lib.tokenshm_lookup.argtypes = [ctypes.c_void_p, ctypes.c_char_p,
                                    ctypes.POINTER(ctypes.c_void_p)]
    lib.tokenshm_lookup.restype = ctypes.c_int
    lib.tokenshm_handle_close.argtypes = [ctypes.c_void_p]
    lib.tokenshm_handle_close.restype = None
    lib.tokenshm_get.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.POINTER(Token)]
    lib.tokenshm_get.restype = ctypes.c_int
    lib.tokenshm_get_into.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_char_p,
                                      ctypes.c_size_t, ctypes.POINTER(ctypes.c_size_t),
                                      ctypes.POINTER(Token)]
    lib.tokenshm_get_into.restype = ctypes.c_int
    lib.tokenshm_wait.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int64,
                                  ctypes.c_int64, ctypes.POINTER(Token)]
    lib.tokenshm_wait.restype = ctypes.c_int
    lib.tokenshm_strerror.argtypes = [ctypes.c_int]
    lib.tokenshm_strerror.restype = ctypes.c_char_p
    return lib


class CTypesTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.lib = load(LIB)

    def open(self, segment):
        reader = ctypes.c_void_p()
        rc = self.lib.tokenshm_open(segment.encode(), ctypes.byref(reader))
        return rc, reader

    def test_no_segment(self):
        rc, reader = self.open(pyutil.unique_segment("ctypes-absent"))
        self.assertEqual(rc, NO_SEGMENT)
        self.assertIsNone(reader.value)
        self.assertIn(b"no segment", self.lib.tokenshm_strerror(rc))

    def test_read_token(self):
        segment = pyutil.unique_segment("ctypes")
        token = "junk-" + secrets.token_urlsafe(32)
        with pyutil.Publisher(PUBLISHER, segment, "storage", token):
            rc, reader = self.open(segment)
            self.assertEqual(rc, OK)
            try:
                missing = ctypes.c_void_p()
                rc = self.lib.tokenshm_lookup(reader, b"nope", ctypes.byref(missing))
                self.assertEqual(rc, NO_SUCH_CREDENTIAL)
                self.assertIsNone(missing.value)
                self.assertEqual(self.lib.tokenshm_strerror(rc), b"no such credential")

                handle = ctypes.c_void_p()
                self.assertEqual(self.lib.tokenshm_lookup(reader, b"storage", ctypes.byref(handle)),
                                 OK)
                try:
                    t = Token()
                    self.assertEqual(self.lib.tokenshm_get(handle, 0, ctypes.byref(t)), OK)
                    self.assertEqual(t.text("token"), token)
                    self.assertEqual(t.text("token_type"), "Bearer")
                    self.assertEqual(t.text("scope"), "test.scope")
                    self.assertEqual(t.state, STATE_VALID)
                    self.assertGreaterEqual(t.version, 1)
                    self.assertEqual(t.writer_alive, 1)

                    self.assertEqual(self.lib.tokenshm_get(handle, 10**12, ctypes.byref(t)),
                                     EXPIRING)

                    buf = ctypes.create_string_buffer(len(token) + 1)
                    n = ctypes.c_size_t()
                    self.assertEqual(self.lib.tokenshm_get_into(handle, 0, buf, len(buf),
                                                                ctypes.byref(n), None), OK)
                    self.assertEqual(buf.value.decode(), token)
                    self.assertEqual(n.value, len(token))
                    short = ctypes.create_string_buffer(len(token))
                    self.assertEqual(self.lib.tokenshm_get_into(handle, 0, short, len(short),
                                                                ctypes.byref(n), None),
                                     BUFFER_TOO_SMALL)
                    self.assertEqual(n.value, len(token))

                    self.assertEqual(self.lib.tokenshm_wait(handle, t.version, 30, 0,
                                                            ctypes.byref(t)), TIMEOUT)
                finally:
                    self.lib.tokenshm_handle_close(handle)
            finally:
                self.lib.tokenshm_close(reader)


def main():
    global LIB, PUBLISHER
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    LIB, PUBLISHER = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    pyutil.reexec_with_asan_runtime_of(LIB)
    prog = unittest.main(argv=[sys.argv[0], "-v"], exit=False)
    return 0 if prog.result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
