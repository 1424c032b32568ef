#!/usr/bin/python3
"""Reading a token with the Python module `tokenshm` (python/).

    reader.py NAME [--min-valid S] [--next N]

Opens the segment ($TOKENSHM_SEGMENT, else "tokenshm"), gets credential NAME's
token valid for at least S more seconds (default 60), waiting up to 30 s when
there is none yet, and prints what it got without the token itself. With
--next N it then waits for N newer versions (each up to 60 s) and prints each:
what a long-running consumer does to pick up refreshed tokens.

    storage: version 7, Bearer token of 1024 bytes, expires in 3541 s (valid)

A real consumer would use it as `{"Authorization": f"{t.token_type} {t.token}"}`.
Exit 0 on success, 2 on usage errors, 1 otherwise (the reason on stderr).
"""

import argparse
import sys
import time

import tokenshm


def describe(name, tok):
    return (f"{name}: version {tok.version}, {tok.token_type} token of {len(tok.token)} bytes, "
            f"expires in {int(tok.expires_at - time.time())} s ({tok.state})")


def first_token(handle, min_valid):
    try:
        return handle.get(min_valid=min_valid)
    except tokenshm.Error as e:
        if e.name != "empty":
            raise
        return handle.wait(0, timeout=30, min_valid=min_valid)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("name")
    ap.add_argument("--min-valid", type=float, default=60.0, metavar="S")
    ap.add_argument("--next", type=int, default=0, metavar="N")
    args = ap.parse_args()
    if args.min_valid < 0 or args.next < 0:
        ap.error("--min-valid and --next must be >= 0")
    try:
        handle = tokenshm.Reader().lookup(args.name)
        tok = first_token(handle, args.min_valid)
        print(describe(args.name, tok), flush=True)
        for _ in range(args.next):
            tok = handle.wait(tok.version, timeout=60, min_valid=args.min_valid)
            print(describe(args.name, tok), flush=True)
    except tokenshm.Error as e:
        print(f"reader.py: credential '{args.name}': {e} ({e.name})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
