#!/usr/bin/env python3
"""One bounded libFuzzer run of one target (the meson suite `fuzz`).

    fuzz_run.py --seconds S --runs N --work DIR FUZZER NAME SEEDS REGRESSIONS

By default the run is bounded by inputs: libFuzzer starts from seed 1 and
stops after N inputs (about S seconds on the machine CI runs on), so CI
explores about what its author's run explored, not whatever a faster machine
or a lucky seed reaches (not input for input: the corpus still drifts a few
percent between two runs of one binary). S * 3 bounds a slow machine, which
then explores a prefix of the same inputs. The working corpus starts empty
(DIR/corpus is cleared) for the same reason.

Exploring (new seeds, longer runs) is asked for explicitly:
TOKENSHM_FUZZ_SECONDS=S runs for S seconds with a random libFuzzer seed and
keeps DIR/corpus between runs (e.g. 600 for a long run); TOKENSHM_FUZZ_SEED
picks the seed of either mode. libFuzzer runs every seed and regression once
before it mutates anything, so a regression that crashes again fails at
once. New inputs go to DIR/corpus only, never into the source tree.

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
    p.add_argument("--runs", type=int, required=True)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("fuzzer", type=Path)
    p.add_argument("name")
    p.add_argument("seeds", type=Path)
    p.add_argument("regressions", type=Path)
    a = p.parse_args()

    explore = "TOKENSHM_FUZZ_SECONDS" in os.environ
    seconds = int(os.environ.get("TOKENSHM_FUZZ_SECONDS", a.seconds))
    seed = int(os.environ.get("TOKENSHM_FUZZ_SEED", "0" if explore else "1"))
    corpus = a.work / "corpus"
    artifacts = a.work / "artifacts"
    if not explore:
        shutil.rmtree(corpus, ignore_errors=True)
    corpus.mkdir(parents=True, exist_ok=True)
    # Artifacts of an earlier run would be taken for this run's.
    shutil.rmtree(artifacts, ignore_errors=True)
    artifacts.mkdir(parents=True)
    log = a.work / "fuzz.log"
    for d in (a.seeds, a.regressions):
        if not d.is_dir():
            print(f"fuzz {a.name}: {d} is not a directory", file=sys.stderr)
            return 1

    bound = [f"-max_total_time={seconds}"] if explore else \
        [f"-runs={a.runs}", f"-max_total_time={seconds * 3}"]
    cmd = [str(a.fuzzer), *bound, f"-seed={seed}", "-rss_limit_mb=2048", "-timeout=10",
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
                                timeout=seconds * 3 + 120).returncode
        except subprocess.TimeoutExpired:
            rc = -1
            out.write(b"\nfuzz_run.py: the fuzzer ran past its time and was killed\n")
    lines = log.read_text(errors="replace").splitlines()

    found = sorted(f for f in artifacts.iterdir() if f.name.startswith(ARTIFACT_PREFIXES))
    if rc == 0 and not found:
        stats = [l for l in lines if l.startswith("stat::number_of_executed_units")
                 or l.startswith("Done ")]
        what = f"{seconds} s, seed {seed}" if explore else f"{a.runs} inputs from seed {seed}"
        print(f"fuzz {a.name}: no finding in {what} ({'; '.join(stats) or 'no stats'}); "
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
