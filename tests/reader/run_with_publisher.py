#!/usr/bin/env python3
"""Runs PROGRAM against a freshly published segment:

    run_with_publisher.py PUBLISHER PROGRAM [ARGS...]

Starts PUBLISHER holding a unique segment with one credential and a generated
junk token, runs `PROGRAM ARGS... SEGMENT NAME TOKEN`, stops the publisher,
unlinks the segment, and exits with PROGRAM's status."""

import os
import secrets
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pyutil  # noqa: E402


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    publisher, program = sys.argv[1], sys.argv[2:]
    segment = pyutil.unique_segment("run")
    name = "storage"
    token = "junk-" + secrets.token_urlsafe(24)
    with pyutil.Publisher(publisher, segment, name, token):
        return subprocess.run([*program, segment, name, token], timeout=120).returncode


if __name__ == "__main__":
    sys.exit(main())
