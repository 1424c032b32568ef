#!/usr/bin/env python3
"""One bounded libFuzzer run of one target (the meson suite `fuzz`).

    fuzz_run.py --seconds S --work DIR FUZZER NAME SEEDS REGRESSIONS

Runs FUZZER for S seconds (TOKENSHM_FUZZ_SECONDS overrides it, e.g. 30 while
developing, 3600 for a long run) over a working corpus in DIR/corpus, the
seeds and the regressions: libFuzzer runs every seed and regression once
before it mutates anything, so a regression that crashes again fails here
at once. New inputs go to DIR/corpus only, never into the source tree.

On a crash, a leak, a timeout (-timeout=10: a hang is a finding) or an
out-of-memory (-rss_limit_mb=2048), exits 1 after printing the end of
libFuzzer's report, where the reproducer was saved, and how to replay and
keep it. Exit 0 otherwise, with one line of statistics."""
import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

ARTIFACT_PREFIXES = ("crash-", "leak-", "timeout-", "oom-")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=int, required=True)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("fuzzer", type=Path)
    p.add_argument("name")
    p.add_argument("seeds", type=Path)
    p.add_argument("regressions", type=Path)
    a = p.parse_args()

    seconds = int(os.environ.get("TOKENSHM_FUZZ_SECONDS", a.seconds))
    corpus = a.work / "corpus"
    artifacts = a.work / "artifacts"
    corpus.mkdir(parents=True, exist_ok=True)
    # Artifacts of an earlier run would be taken for this run's.
    shutil.rmtree(artifacts, ignore_errors=True)
    artifacts.mkdir(parents=True)
    log = a.work / "fuzz.log"
    for d in (a.seeds, a.regressions):
        if not d.is_dir():
            print(f"fuzz {a.name}: {d} is not a directory", file=sys.stderr)
            return 1

    cmd = [str(a.fuzzer), f"-max_total_time={seconds}", "-rss_limit_mb=2048", "-timeout=10",
           "-print_final_stats=1", f"-artifact_prefix={artifacts}/",
           str(corpus), str(a.seeds), str(a.regressions)]
    env = dict(os.environ)
    env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=1")
    env.setdefault("UBSAN_OPTIONS", "halt_on_error=1:print_stacktrace=1")
    print(f"fuzz {a.name}: {' '.join(cmd)}", flush=True)
    with open(log, "wb") as out:
        try:
            # libFuzzer stops itself; this bounds a fuzzer that does not.
            rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                timeout=seconds + 120).returncode
        except subprocess.TimeoutExpired:
            rc = -1
            out.write(b"\nfuzz_run.py: the fuzzer ran past its time and was killed\n")
    lines = log.read_text(errors="replace").splitlines()

    found = sorted(f for f in artifacts.iterdir() if f.name.startswith(ARTIFACT_PREFIXES))
    if rc == 0 and not found:
        stats = [l for l in lines if l.startswith("stat::number_of_executed_units")
                 or l.startswith("Done ")]
        print(f"fuzz {a.name}: no finding in {seconds} s ({'; '.join(stats) or 'no stats'}); "
              f"corpus {len(list(corpus.iterdir()))} inputs in {corpus}")
        return 0

    print("\n".join(lines[-80:]))
    print(f"fuzz {a.name}: FAILED (fuzzer exit {rc}); full log: {log}")
    for f in found:
        print(f"fuzz {a.name}: reproducer saved at {f.resolve()}")
        print(f"  replay it:  {a.fuzzer.resolve()} {f.resolve()}")
        print(f"  keep it:    cp {f.resolve()} {a.regressions}/<what-it-found>")
    if not found:
        print(f"fuzz {a.name}: no reproducer was saved (see the log above)")
    return 1


if __name__ == "__main__":
    sys.exit(main())
