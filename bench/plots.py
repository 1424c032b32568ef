#!/usr/bin/python3
"""The plots of bench/run's results (issue 11):

    /usr/bin/python3 bench/plots.py RESULTS_JSON OUT_DIR

RESULTS_JSON is bench/run's combined document: {"machine":{...},"peers":[...],
"syscalls":{...},"python":{...},"system":{...}} (formats: bench/run, peers_bench,
python_read_bench.py --json, system_bench.py). Writes into OUT_DIR:

  peers-bar-<writer>.png       median and p99 per read of every method, one
                               reader, 1 KiB token (the README's plot)
  latency-<writer>-<bytes>.png the latency distribution of every method, one
                               reader: CDF and tail, from each run's histogram
                               net of its timer
  scaling-readers-<writer>.png total reads/s against reader processes, 1 KiB
  scaling-slots.png            open, lookup and get against slots

and prints each path written, one per line. A part missing from the JSON
skips its plots. Needs python3-matplotlib (Debian): run with /usr/bin/python3.
"""

import argparse
import json
import os
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator  # noqa: E402

HEADLINE_BYTES = 1024
FLOOR_NS = 1.0  # latencies at or below the timer are drawn here on the log axes

WRITERS = {"none": "writer idle", "1khz": "writer publishing every 1 ms",
           "1us": "writer publishing every 1 µs", "b2b": "writer publishing back to back"}

# Every method in a fixed order and colour, the same in every plot.
METHODS = ["floor", "memcpy", "tokenshm", "tokenshm_c", "seqlock", "mutex", "rwlock",
           "unix_daemon", "file", "pread", "redis_tcp", "redis_unix", "legacy"]
FAMILY = {"floor": "floor", "memcpy": "floor", "tokenshm": "tokenshm", "tokenshm_c": "tokenshm",
          "py:module": "tokenshm", "py:ctypes": "tokenshm"}
FAMILY_COLOUR = {"floor": "#7f7f7f", "tokenshm": "#2ca02c", "peer": "#d62728",
                 "python": "#1f77b4"}


def colour(method):
    """A stable colour per method (tab20 by its place in METHODS)."""
    cmap = plt.get_cmap("tab20")
    if method in METHODS:
        return cmap(METHODS.index(method) % 20)
    return cmap((len(METHODS) + hash(method) % 7) % 20)


def family(method):
    if method in FAMILY:
        return FAMILY[method]
    return "python" if method.startswith("py:") else "peer"


def duration(ns, _pos=None):
    """A label of at most 3 digits: 7.5 ns, 2 µs, 30.1 ms, 1 s."""
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3g} {unit}"
    return f"{ns:.3g} ns"


def ratio(x):
    """1.3×, 129×, 2,570×: as many digits as a reader compares."""
    if x < 10:
        return f"{x:.2g}×" if x < 1 else f"{x:.1f}×"
    return f"{x:,.0f}×"


def rate(r, _pos=None):
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if r >= scale:
            return f"{r / scale:g}{unit}"
    return f"{r:g}"


def machine_note(machine):
    """One line naming where the numbers come from, from whatever bench/run recorded."""
    if not isinstance(machine, dict):
        return ""
    keys = ("cpu", "cpu_model", "cpus", "kernel", "compiler", "date")
    parts = [f"{machine[k]} CPUs" if k == "cpus" else str(machine[k])
             for k in keys if machine.get(k) not in (None, "")]
    return " · ".join(parts)


def finish(fig, out_dir, name, note):
    if note:
        fig.text(0.01, 0.005, note, fontsize=7, color="#555555", ha="left", va="bottom")
    path = os.path.join(out_dir, name)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def log_duration_axis(axis):
    axis.set_major_locator(LogLocator(base=10))
    axis.set_major_formatter(FuncFormatter(duration))


# ---- peers-bar-<writer>.png -------------------------------------------------

def bar_rows(peers, python, writer):
    """(label, method, ns per read, p99_ns) of every method at one reader, 1 KiB.
    A peer's bar is its CPU time per read (finer than one timed read, whose
    timer may move in steps of 10 ns), the median over repeated runs; the
    model of the design replaced is left out (its cost is its stalls, in the
    targets table)."""
    by_method = {}
    for r in peers:
        if (r.get("writer") == writer and r.get("readers") == 1
                and r.get("token_bytes") == HEADLINE_BYTES and r.get("method") != "legacy"):
            by_method.setdefault(r["method"], []).append(r)
    rows = []
    for method, runs in by_method.items():
        per_read = statistics.median(r.get("ns_per_read_cpu", r["median_ns"]) for r in runs)
        rows.append((method, method, per_read, statistics.median(r["p99_ns"] for r in runs)))
    for r in python:
        if r.get("writer") == writer and r.get("token_bytes") == HEADLINE_BYTES:
            rows.append((f"Python {r['method']}", "py:" + r["method"], r["median_ns"],
                         r["p99_ns"]))
    return sorted(rows, key=lambda row: row[2])


def bar_label(label, method, syscalls):
    per_read = syscalls.get(method) if isinstance(syscalls, dict) else None
    if isinstance(per_read, dict):  # bench/run's shape: {"per_read": x, "by_name": {...}}
        per_read = per_read.get("per_read")
    if isinstance(per_read, (int, float)):
        return f"{label}  ({per_read:.3g} syscalls/read)"
    return label


def plot_peers_bar(doc, out_dir, writer, note):
    rows = bar_rows(doc.get("peers") or [], (doc.get("python") or {}).get("results") or [],
                    writer)
    if not rows:
        return None
    # Ratios against tokenshm's C++ get, or the Python module's when only Python ran.
    base_label, base = next(((r[0], r[2]) for r in rows if r[1] == "tokenshm"),
                            next(((r[0], r[2]) for r in rows if r[1] == "py:module"), (None, None)))
    fig, ax = plt.subplots(figsize=(10, 0.42 * len(rows) + 1.6))
    y = range(len(rows))
    for i, (label, method, median, p99) in enumerate(rows):
        c = FAMILY_COLOUR[family(method)]
        ax.barh(i, max(p99, FLOOR_NS) - FLOOR_NS, left=FLOOR_NS, color=c, alpha=0.3, height=0.7)
        ax.barh(i, max(median, FLOOR_NS) - FLOOR_NS, left=FLOOR_NS, color=c, height=0.7)
        text = duration(median)
        if base and label != base_label:
            text += f"  ({ratio(median / base)} {base_label})"
        ax.text(max(p99, median, FLOOR_NS) * 1.15, i, text, va="center", fontsize=8)
    ax.set_yticks(list(y), [bar_label(r[0], r[1], doc.get("syscalls")) for r in rows],
                  fontsize=9)
    ax.invert_yaxis()
    ax.set_xscale("log")
    log_duration_axis(ax.xaxis)
    ax.set_xlim(FLOOR_NS, max(r[3] for r in rows) * 60)
    ax.set_xlabel("time per read, log scale (bar: CPU time per read, Python: median call; "
                  "pale extension: p99 of single timed reads)")
    ax.set_title(f"One read of a {HEADLINE_BYTES} B token, 1 reader, {WRITERS.get(writer, writer)}")
    ax.grid(axis="x", which="major", alpha=0.3)
    fams = [f for f in ("floor", "tokenshm", "peer", "python")
            if any(family(r[1]) == f for r in rows)]
    names = {"floor": "floors", "tokenshm": "tokenshm", "peer": "alternatives",
             "python": "Python alternatives"}
    ax.legend(handles=[Patch(color=FAMILY_COLOUR[f], label=names[f]) for f in fams],
              loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    return finish(fig, out_dir, f"peers-bar-{writer}.png", note)


# ---- latency-<writer>-<bytes>.png -------------------------------------------

def net_cdf(run):
    """Per bucket: its lower bound (ns, net of the timer, at least FLOOR_NS), the
    fraction of reads in it or below, and the fraction in it or above."""
    hist = sorted((lo, n) for lo, n in run["hist"] if n > 0)
    total = sum(n for _, n in hist)
    if total == 0:
        return [], [], []
    timer = run.get("timer_ns", 0.0)
    xs, at_most, at_least, seen = [], [], [], 0
    for lo, n in hist:
        xs.append(max(lo - timer, FLOOR_NS))
        at_least.append((total - seen) / total)
        seen += n
        at_most.append(seen / total)
    return xs, at_most, at_least


def plot_latency(runs, out_dir, writer, size, note):
    fig, (cdf, tail) = plt.subplots(1, 2, figsize=(13, 5.2), sharex=True)
    drawn = 0
    for run in sorted(runs, key=lambda r: r.get("median_ns", 0)):
        xs, at_most, at_least = net_cdf(run)
        if not xs:
            continue
        m = run["method"]
        style = {"color": colour(m), "label": m, "where": "post",
                 "linewidth": 2.4 if family(m) == "tokenshm" else 1.4}
        cdf.step(xs, at_most, **style)
        tail.step(xs, at_least, **style)
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    for ax in (cdf, tail):
        ax.set_xscale("log")
        log_duration_axis(ax.xaxis)
        ax.set_xlabel("latency of one read, net of the timer (log)")
        ax.grid(which="major", alpha=0.3)
    cdf.set_ylabel("fraction of reads at most this long")
    cdf.set_ylim(0, 1.01)
    tail.set_yscale("log")
    tail.set_ylabel("fraction of reads this slow or slower (log)")
    for q, name in ((1e-2, "p99"), (1e-3, "p99.9")):
        tail.axhline(q, color="#999999", linestyle=":", linewidth=1)
        tail.text(tail.get_xlim()[0], q, f" {name}", va="bottom", fontsize=8, color="#555555")
    fig.suptitle(f"Read latency, 1 reader, {size} B token, {WRITERS.get(writer, writer)}")
    tail.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, title="method")
    return finish(fig, out_dir, f"latency-{writer}-{size}.png", note)


def plot_latencies(doc, out_dir, note):
    groups = {}
    for run in doc.get("peers") or []:
        if run.get("readers") == 1 and run.get("hist"):
            groups.setdefault((run["writer"], run["token_bytes"]), []).append(run)
    order = list(WRITERS)
    for (writer, size) in sorted(groups, key=lambda k: (order.index(k[0]) if k[0] in order
                                                        else len(order), k[0], k[1])):
        yield plot_latency(groups[(writer, size)], out_dir, writer, size, note)


# ---- scaling-readers-<writer>.png and scaling-slots.png ----------------------

def plot_scaling_readers(doc, out_dir, writer, note):
    series = {}
    for run in doc.get("peers") or []:
        if run.get("writer") == writer and run.get("token_bytes") == HEADLINE_BYTES:
            series.setdefault(run["method"], []).append((run["readers"], run["reads_per_s"]))
    series = {m: sorted(p) for m, p in series.items() if len(p) > 1}
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(10, 5.5))
    readers = sorted({r for pts in series.values() for r, _ in pts})
    for m in sorted(series, key=lambda m: -series[m][0][1]):
        xs, ys = zip(*series[m])
        ax.plot(xs, ys, marker="o", color=colour(m), label=m,
                linewidth=2.4 if family(m) == "tokenshm" else 1.4)
    cpus = (doc.get("machine") or {}).get("cpus")
    if isinstance(cpus, int) and cpus > 0:
        ax.axvline(cpus, color="#999999", linestyle="--", linewidth=1)
        ax.text(cpus, 0.02, f" {cpus} CPUs", fontsize=8, color="#555555", va="bottom",
                transform=ax.get_xaxis_transform())
    ax.set_xscale("log", base=2)
    ax.set_xticks(readers, [str(r) for r in readers])
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(rate))
    ax.set_xlabel("reader processes")
    ax.set_ylabel("reads per second, all readers together (log)")
    ax.set_title(f"Throughput against readers, {HEADLINE_BYTES} B token, "
                 f"{WRITERS.get(writer, writer)}")
    ax.grid(which="major", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, title="method")
    return finish(fig, out_dir, f"scaling-readers-{writer}.png", note)


def plot_scaling_slots(doc, out_dir, note):
    rows = sorted((doc.get("system") or {}).get("slots") or [], key=lambda r: r["slots"])
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    xs = [r["slots"] for r in rows]
    for key, label in (("open_ns", "open (Reader::open)"), ("lookup_ns", "lookup"),
                       ("get_ns", "get, unchanged"), ("get_changed_ns", "get, right after a change")):
        pts = [(x, r[key]) for x, r in zip(xs, rows) if isinstance(r.get(key), (int, float))
               and r[key] > 0]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(xs, [str(x) for x in xs])
    log_duration_axis(ax.yaxis)
    ax.set_xlabel("slots in the segment (log)")
    ax.set_ylabel("time per call (log)")
    ax.set_title("Cost against the number of slots")
    ax.grid(which="major", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    return finish(fig, out_dir, "scaling-slots.png", note)


# ---- driver ----------------------------------------------------------------

def writers_in(doc):
    found = {r.get("writer") for r in doc.get("peers") or []}
    found |= {r.get("writer") for r in (doc.get("python") or {}).get("results") or []}
    return [w for w in WRITERS if w in found] + sorted(w for w in found - set(WRITERS) if w)


def plots(doc, out_dir):
    """Every plot the document has data for: (name, thunk giving a path or None)."""
    note = machine_note(doc.get("machine"))
    for w in writers_in(doc):
        yield f"peers-bar-{w}", lambda w=w: [plot_peers_bar(doc, out_dir, w, note)]
    yield "latency", lambda: list(plot_latencies(doc, out_dir, note))
    for w in writers_in(doc):
        yield f"scaling-readers-{w}", lambda w=w: [plot_scaling_readers(doc, out_dir, w, note)]
    yield "scaling-slots", lambda: [plot_scaling_slots(doc, out_dir, note)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results_json")
    ap.add_argument("out_dir")
    args = ap.parse_args()
    try:
        with open(args.results_json, encoding="utf-8") as f:
            doc = json.load(f)
    except OSError as e:
        raise SystemExit(f"plots: {args.results_json}: {e.strerror}")
    except ValueError as e:
        raise SystemExit(f"plots: {args.results_json}: not JSON: {e}")
    if not isinstance(doc, dict):
        raise SystemExit(f"plots: {args.results_json}: not a JSON object")
    try:
        os.makedirs(args.out_dir, exist_ok=True)
    except OSError as e:
        raise SystemExit(f"plots: {args.out_dir}: {e.strerror}")
    for name, make in plots(doc, args.out_dir):
        try:
            paths = make()
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            # Malformed data for one plot skips that plot, loudly; the rest go on.
            print(f"plots: {name}: skipped, malformed results: {e!r}", file=sys.stderr)
            continue
        except OSError as e:
            raise SystemExit(f"plots: {name}: {e.strerror or e}")
        for p in paths:
            if p:
                print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
