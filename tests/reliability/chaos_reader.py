#!/usr/bin/python3
"""A reader process for the chaos test: reads one credential through
libtokenshm's C ABI (ctypes) in a loop and checks every read.

    chaos_reader.py LIBTOKENSHM SEGMENT NAME ISSUED_LOG OUT_JSON [SEEN_LOG]

Each successful read must return a token the authorization server issued (its
--issued-log, re-read when a token is not yet known), the same token, expiry
and state for the same version, a version that never goes backwards, and an
expiry in the future. A token the server never issued counts as torn. On SIGTERM it writes
its figures to OUT_JSON and exits 0. It never prints a token: it keeps
SHA-256 digests only. With SEEN_LOG it appends the hex SHA-256 of each token
the first time it reads it, a line each, flushed at once: a test can then
ask, while the reader runs, whether a segment got every token a server issued.
"""

import ctypes
import hashlib
import json
import os
import signal
import sys
import time

OK, NO_SEGMENT, NO_SUCH_CREDENTIAL = 0, 1, 4
READS_PER_PAUSE = 5
PAUSE_S = 0.001
GAP_RECORD_MS = 300   # gaps without a valid token at least this long are listed


class Token(ctypes.Structure):
    """struct tokenshm_token (reader/include/tokenshm/tokenshm.h)"""

    _fields_ = [
        ("token", ctypes.c_void_p), ("token_len", ctypes.c_size_t),
        ("token_type", ctypes.c_void_p), ("token_type_len", ctypes.c_size_t),
        ("scope", ctypes.c_void_p), ("scope_len", ctypes.c_size_t),
        ("last_error", ctypes.c_void_p), ("last_error_len", ctypes.c_size_t),
        ("expires_at_ms", ctypes.c_int64), ("issued_at_ms", ctypes.c_int64),
        ("next_refresh_ms", ctypes.c_int64), ("last_attempt_ms", ctypes.c_int64),
        ("version", ctypes.c_uint64), ("state", ctypes.c_uint32), ("failures", ctypes.c_uint32),
        ("heartbeat_age_ms", ctypes.c_int64), ("writer_alive", ctypes.c_int32),
        ("reserved", ctypes.c_int32),
    ]


def load(path):
    lib = ctypes.CDLL(path)
    vp = ctypes.c_void_p
    lib.tokenshm_open.argtypes = [ctypes.c_char_p, ctypes.POINTER(vp)]
    lib.tokenshm_lookup.argtypes = [vp, ctypes.c_char_p, ctypes.POINTER(vp)]
    lib.tokenshm_get.argtypes = [vp, ctypes.c_int64, ctypes.POINTER(Token)]
    lib.tokenshm_close.argtypes = [vp]
    lib.tokenshm_close.restype = None
    return lib


class IssuedTokens:
    """SHA-256 of every access token in the server's issued log, with the
    expiry the server enforces (exp_ms), read incrementally."""

    def __init__(self, path):
        self.path, self.offset, self.exp = path, 0, {}

    def refresh(self):
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1
        self.offset += end
        for line in data[:end].splitlines():
            o = json.loads(line)
            if o.get("kind") == "access_token":
                self.exp[hashlib.sha256(o["value"].encode()).digest()] = o.get("exp_ms")

    def lookup(self, digest):
        if digest not in self.exp:
            self.refresh()
        return digest in self.exp, self.exp.get(digest)


class Figures:
    def __init__(self):
        self.reads = 0
        self.ok = 0
        self.errors = {}
        self.torn = 0                 # a token the server never issued
        self.version_backwards = 0
        self.version_token_mismatch = 0
        self.expired_served = 0       # expires_at_ms already past when returned
        self.past_server_expiry = 0   # served after the server's own expiry
        self.max_past_server_expiry_ms = 0
        self.longest_gap_ms = 0
        self.gaps = []                # [start_ms, end_ms] of long gaps
        self.first_ok_ms = None
        self.last_ok_ms = None
        self.failed_since_ok = False
        self.versions_seen = 0

    def as_dict(self):
        d = dict(self.__dict__)
        d.pop("failed_since_ok")
        d["gaps"] = self.gaps[:1000]
        return d


def open_handle(lib, segment, name, halt):
    reader, handle = ctypes.c_void_p(), ctypes.c_void_p()
    while not halt():
        if lib.tokenshm_open(segment.encode(), ctypes.byref(reader)) == OK:
            if lib.tokenshm_lookup(reader, name.encode(), ctypes.byref(handle)) == OK:
                lib.tokenshm_close(reader)
                return handle
            lib.tokenshm_close(reader)
        time.sleep(0.02)
    return None


def check_read(tok, issued, fig, by_version, now_ms, seen):
    raw = ctypes.string_at(tok.token, tok.token_len)
    digest = hashlib.sha256(raw).digest()
    seen(digest)
    known, exp_ms = issued.lookup(digest)
    if not known:
        fig.torn += 1
    # One version is one record: the same token, expiry and state every time.
    record = (digest, tok.expires_at_ms, tok.issued_at_ms, tok.state)
    seen = by_version.get(tok.version)
    if seen is None:
        by_version[tok.version] = record
        fig.versions_seen += 1
    elif seen != record:
        fig.version_token_mismatch += 1
    if tok.expires_at_ms <= now_ms:
        fig.expired_served += 1
    if exp_ms is not None and now_ms > exp_ms:
        fig.past_server_expiry += 1
        fig.max_past_server_expiry_ms = max(fig.max_past_server_expiry_ms, now_ms - exp_ms)


def note_ok(fig, now_ms):
    # A gap is the time from the last good read to the next one with failed
    # reads between them (a reader merely descheduled has no gap).
    if fig.last_ok_ms is not None and fig.failed_since_ok:
        gap = now_ms - fig.last_ok_ms
        fig.longest_gap_ms = max(fig.longest_gap_ms, gap)
        if gap >= GAP_RECORD_MS:
            fig.gaps.append([fig.last_ok_ms, now_ms])
    else:
        fig.first_ok_ms = now_ms
    fig.ok += 1
    fig.last_ok_ms = now_ms
    fig.failed_since_ok = False


class SeenLog:
    """Appends each digest's hex the first time it is read (no file: nothing)."""

    def __init__(self, path):
        self.file = open(path, "a") if path else None
        self.digests = set()

    def __call__(self, digest):
        if self.file is None or digest in self.digests:
            return
        self.digests.add(digest)
        self.file.write(digest.hex() + "\n")
        self.file.flush()


def run(lib_path, segment, name, issued_path, out_path, seen_path=None):
    stop = []
    seen = SeenLog(seen_path)
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    halt = lambda: bool(stop)  # noqa: E731
    lib = load(lib_path)
    issued = IssuedTokens(issued_path)
    fig = Figures()
    by_version = {}
    last_version = 0
    handle = open_handle(lib, segment, name, halt)
    tok = Token()
    while handle is not None and not stop:
        for _ in range(READS_PER_PAUSE):
            # The clock is read before the call: the library's own clock (the
            # same CLOCK_REALTIME near a deadline) then reads no earlier, so a
            # token it returned at its deadline is no false "expired served".
            now_ms = int(time.time() * 1000)
            rc = lib.tokenshm_get(handle, 0, ctypes.byref(tok))
            fig.reads += 1
            if rc != OK:
                fig.errors[str(rc)] = fig.errors.get(str(rc), 0) + 1
                fig.failed_since_ok = True
                continue
            if tok.version < last_version:
                fig.version_backwards += 1
            last_version = max(last_version, tok.version)
            check_read(tok, issued, fig, by_version, now_ms, seen)
            note_ok(fig, now_ms)
        time.sleep(PAUSE_S)
    tmp = out_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(fig.as_dict(), f)
    os.rename(tmp, out_path)


if __name__ == "__main__":
    if len(sys.argv) not in (6, 7):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    run(*sys.argv[1:])
