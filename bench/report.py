"""bench/run's report: the results file, the targets, docs/PERFORMANCE.md and
the README's headline table. Input: the results JSON bench/run collects
(formats in bench/README.md)."""

import math
import os
import statistics

class BenchError(Exception):
    """A piece of the harness could not run or gave nothing usable: one line,
    then bench/run exits 1."""


DOCS_BEGIN = "<!-- bench/run: begin (generated; rerun bench/run) -->"
DOCS_END = "<!-- bench/run: end -->"

LABEL = {
    "floor": "floor: 8-byte atomic load + clock",
    "memcpy": "floor: `memcpy` of the token + clock (no protocol)",
    "tokenshm": "**tokenshm `get`** (C++ API)",
    "tokenshm_c": "**tokenshm** C ABI (`tokenshm_get_into`)",
    "mutex": "process-shared `interprocess_mutex`, cached by version",
    "rwlock": "process-shared `pthread_rwlock_t`, cached by version",
    "seqlock": "seqlock, single copy, cached by version",
    "unix_daemon": "request to a daemon over a Unix socket",
    "file": "sink file: open/read/close (replaced by rename)",
    "pread": "`pread` on a kept-open file (rewritten in place)",
    "redis_tcp": "Redis `GET`, loopback TCP",
    "redis_unix": "Redis `GET`, Unix socket",
    "legacy": "the design replaced (model: 300 ms sleeps while refreshing)",
}
WRITER_LABEL = {"none": "writer idle", "1khz": "writer at 1 kHz", "1us": "writer every 1 µs",
                "b2b": "writer back to back"}


def label(method):
    return LABEL.get(method, method)


def fmt_ns(x):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if x >= 1e6:
        return f"{x / 1e6:.1f} ms"
    if x >= 1e4:
        return f"{x / 1e3:.0f} µs"
    if x >= 1e3:
        return f"{x / 1e3:.1f} µs"
    return f"{x:.1f} ns" if x < 100 else f"{x:.0f} ns"


def fmt_x(x):
    if x is None or math.isnan(x):
        return "n/a"
    return f"{x:.2f}x" if x < 10 else f"{x:.0f}x"


def fmt_rate(x):
    return f"{x / 1e6:.2f} M/s" if x >= 1e5 else f"{x / 1e3:.1f} k/s"


class Peers:
    """The peers_bench runs, by (method, writer, readers, bytes); repeated
    configurations give the median of each figure."""

    def __init__(self, runs):
        self.runs = {}
        for r in runs:
            key = (r["method"], r["writer"], r["readers"], r["token_bytes"])
            self.runs.setdefault(key, []).append(r)

    def get(self, method, writer="none", readers=1, size=1024, field="ns_per_read_cpu"):
        rs = self.runs.get((method, writer, readers, size))
        if not rs:
            return None
        vals = [r[field] for r in rs if r.get(field) is not None]
        return statistics.median(vals) if vals else None

    def total(self, method, field):
        return sum(r[field] for k, rs in self.runs.items() if k[0] == method for r in rs)

    def has(self, method, writer, readers, size):
        return (method, writer, readers, size) in self.runs


def ratio(a, b):
    """a / b, or NaN when either is missing or b is zero."""
    if a is None or b is None or b == 0:
        return float("nan")
    return a / b


# ------------------------------------------------------------------ targets

def targets(results):
    """[(text, measured string, ok: True/False/None)]; None = shown, not judged."""
    p = Peers(results["peers"])
    floors = results.get("floors", {})
    sysc = results.get("syscalls", {})
    system = results.get("system", {})
    get1 = p.get("tokenshm")
    get2 = p.get("tokenshm", readers=2)
    out = []

    def add(text, value, ok_fn, fmt=fmt_x):
        ok = None if value is None or (isinstance(value, float) and math.isnan(value)) \
            else ok_fn(value)
        out.append((text, fmt(value) if value is not None else "n/a", ok))

    add("unchanged `get` <= 1.2x its floor (load + clock; paired, read_bench)",
        floors.get("unchanged_over_floor"), lambda v: v <= 1.2)
    add("`get` right after a publish on another CPU, 1 KiB, <= 1.5x `memcpy` of the same "
        "fresh bytes (cross_core_bench)", floors.get("changed_1k_cross_core_over_memcpy"),
        lambda v: v <= 1.5)
    out.append(("the same, hot in L1 on one core (labelled: no copy the memory model allows "
                "meets it; docs/PERFORMANCE.md)",
                fmt_x(floors.get("changed_1k_hot_over_memcpy", float("nan"))), None))
    add("unchanged `get` >= 5x faster than the process-shared mutex, 1 reader (CPU ns/read)",
        ratio(p.get("mutex"), get1), lambda v: v >= 5)
    add("... >= 20x with 2 readers", ratio(p.get("mutex", readers=2), get2),
        lambda v: v >= 20)
    for m in ("file", "unix_daemon", "redis_tcp", "redis_unix"):
        add(f">= 100x faster than {label(m)}", ratio(p.get(m), get1), lambda v: v >= 100)
    add(">= 20x faster than `pread`", ratio(p.get("pread"), get1), lambda v: v >= 20)
    for key, what in (("tokenshm", "writer idle"), ("tokenshm@b2b", "writer back to back")):
        s = sysc.get(key)
        add(f"zero syscalls per `get` ({what}; strace -f -c, {s['reads'] if s else '?'} reads)",
            s["per_read"] if s else None, lambda v: v == 0, lambda v: f"{v:g} per read")
    med = p.get("tokenshm", "b2b", 1, 1024, "median_ns")
    add("writer back to back: `get` p99.9 within 10x its own median (1 reader, 1 KiB)",
        ratio(p.get("tokenshm", "b2b", 1, 1024, "p999_ns"), med), lambda v: v <= 10)
    add("no `get` blocked by a refresh: longest `get` under a back-to-back writer < 1 ms "
        f"(the design replaced: {fmt_ns(p.get('legacy', 'none', 1, 1024, 'max_ns'))})",
        p.get("tokenshm", "b2b", 1, 1024, "max_ns"), lambda v: v < 1e6, fmt_ns)
    vis = system.get("publish_to_visible", {})
    for mode in ("spin", "wait"):
        v = vis.get(mode, {}).get("median_ns")
        add(f"publish-to-visible median < 100 µs (reader {'spinning on get' if mode == 'spin' else 'blocked in wait()'})",
            v, lambda x: x < 100e3, fmt_ns)
    ref = {r["credentials"]: r for r in system.get("refresher", [])}
    big = ref.get(1000) or (ref[max(ref)] if ref else None)
    n = big["credentials"] if big else 1000
    add(f"refresher idle CPU < 0.1 % with {n} credentials",
        big["idle_cpu_pct"] if big else None, lambda v: v < 0.1, lambda v: f"{v:.3f} %")
    mib = lambda v: f"{v / 1024:.1f} MiB"  # noqa: E731
    add(f"refresher resident memory (VmRSS, idle) < 16 MiB with {n} credentials",
        big["idle_rss_kib"] if big else None, lambda v: v < 16 * 1024, mib)
    if big and "idle_rss_anon_kib" in big:
        add("... of it the refresher's own (RssAnon: heap, stacks); the rest is shared "
            f"libraries ({mib(big['idle_rss_file_kib'])}) and the segment's pages "
            f"({mib(big['idle_rss_shmem_kib'])}), which every reader maps too",
            big["idle_rss_anon_kib"], lambda v: v < 16 * 1024, mib)
    add("torn reads of tokenshm (C++ and C ABI), every scenario", p.total("tokenshm", "torn")
        + p.total("tokenshm_c", "torn"), lambda v: v == 0, lambda v: f"{v}")
    return out


def verdict(ok):
    return {True: "**PASS**", False: "**FAIL**", None: "shown"}[ok]


def targets_table(tg):
    lines = ["| target | measured | verdict |", "|---|---:|---|"]
    lines += [f"| {t} | {m} | {verdict(ok)} |" for t, m, ok in tg]
    return lines


def targets_text(tg):
    width = max(len(t) for t, _, _ in tg)
    rows = [f"{t.replace('`', '').replace('**', ''):<{width}}  {m:>12}  "
            f"{ {True: 'PASS', False: 'FAIL', None: ''}[ok]}" for t, m, ok in tg]
    return "targets (ratios measured in this run):\n" + "\n".join(rows)


# ------------------------------------------------------------------ the results file

def header(results):
    m = results["machine"]
    return [
        "| | |", "|---|---|",
        f"| CPU | {m['cpu']}, {m['cpus']} CPUs, {m['virt']} |",
        f"| kernel | Linux {m['kernel']} (clocksource {m.get('clocksource') or '?'}) |",
        f"| compiler | {m['compiler']}, `--buildtype=release` |",
        f"| libc | {m['libc']} |",
        f"| command | `{results['command']}` |",
        f"| run | {results['started']}, {results['elapsed_s']:.0f} s; load average "
        f"{results['load_before']} before, {results['load_after']} after |",
    ]


def syscalls_of(results, method):
    s = results.get("syscalls", {}).get(method)
    return "" if s is None else f"{s['per_read']:.2f}".rstrip("0").rstrip(".")


def timer_note(results):
    """The per-read timer's cost and step, from tokenshm's idle runs."""
    runs = [r for r in results["peers"] if r["method"] == "tokenshm" and r["writer"] == "none"]
    if not runs:
        return ""
    lows = sorted({lo for r in runs for lo, n in r["hist"] if n > 0 and lo < 128})
    steps = [b - a for a, b in zip(lows, lows[1:]) if b > a]
    step = min(steps) if steps else None
    overhead = statistics.median(r["timer_ns"] for r in runs)
    return (f"Single reads are timed with the TSC: {overhead:.0f} ns per timed pair "
            "(subtracted)" + (f", in steps of {step:.0f} ns here, so the fastest methods' "
                              "median and tail show the step; their cost is the CPU time "
                              "per read" if step and step > 1 else "") + ".")


def headline(results, size=1024):
    p = Peers(results["peers"])
    get1 = p.get("tokenshm", size=size)
    lines = ["| method | CPU ns / read | median | p99 | p99.9 | max | reads/s | syscalls / read "
             "| torn | CPU time / tokenshm's |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for m in results["methods"]:
        if m == "legacy" or not p.has(m, "none", 1, size):
            continue
        g = lambda f: p.get(m, "none", 1, size, f)  # noqa: E731
        lines.append(f"| {label(m)} | {fmt_ns(g('ns_per_read_cpu'))} | {fmt_ns(g('median_ns'))} "
                     f"| {fmt_ns(g('p99_ns'))} | {fmt_ns(g('p999_ns'))} | {fmt_ns(g('max_ns'))} "
                     f"| {fmt_rate(g('reads_per_s'))} | {syscalls_of(results, m)} "
                     f"| {int(g('torn'))} | {fmt_x(ratio(g('ns_per_read_cpu'), get1))} |")
    return lines


def scenario(results, writer, size=1024):
    p = Peers(results["peers"])
    lines = ["| method | readers | reads/s, all readers | CPU ns / read | median | p99 | p99.9 "
             "| max | torn | errors | publishes/s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for m in results["methods"]:
        for r in sorted({k[2] for k in p.runs if k[0] == m and k[1] == writer and k[3] == size}):
            g = lambda f: p.get(m, writer, r, size, f)  # noqa: E731
            pubs = g("publishes_per_s")
            lines.append(
                f"| {label(m)} | {r} | {fmt_rate(g('reads_per_s'))} "
                f"| {fmt_ns(g('ns_per_read_cpu'))} | {fmt_ns(g('median_ns'))} "
                f"| {fmt_ns(g('p99_ns'))} | {fmt_ns(g('p999_ns'))} | {fmt_ns(g('max_ns'))} "
                f"| {int(g('torn'))} | {int(g('errors'))} "
                f"| {'' if pubs is None else f'{pubs:.0f}'} |")
    return lines


def sizes(results):
    p = Peers(results["peers"])
    cols = [(w, b) for w in ("none", "b2b") for b in (64, 1024, 4096)]
    lines = ["| method | " + " | ".join(f"{b} B, {WRITER_LABEL[w]}" for w, b in cols)
             + " | torn |", "|---|" + "---:|" * (len(cols) + 1)]
    for m in results["methods"]:
        if not any(p.has(m, w, 1, b) for w, b in cols):
            continue
        cells = [fmt_ns(p.get(m, w, 1, b)) for w, b in cols]
        torn = sum(int(p.get(m, w, 1, b, "torn") or 0) for w, b in cols)
        lines.append(f"| {label(m)} | " + " | ".join(cells) + f" | {torn} |")
    return lines


def syscall_detail(results):
    lines = ["| method | syscalls / read | which (per read) |", "|---|---:|---|"]
    for m, s in results.get("syscalls", {}).items():
        which = ", ".join(f"{k} {v:.2g}" for k, v in sorted(s["by_name"].items(),
                                                             key=lambda kv: -kv[1]))
        lines.append(f"| {label(m.split('@')[0])}{' (writer back to back)' if '@' in m else ''} "
                     f"| {syscalls_of(results, m)} | {which or 'none'} |")
    return lines


def python_table(results):
    py = results.get("python", {}).get("results", [])
    lines = ["| method | token | writer | median | p99 | calls | torn |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for r in py:
        lines.append(f"| {r['method']} | {r['token_bytes']} B | {WRITER_LABEL.get(r['writer'], r['writer'])} "
                     f"| {fmt_ns(r['median_ns'])} | {fmt_ns(r.get('p99_ns'))} | {r['calls']} "
                     f"| {r.get('torn', 0)} |")
    return lines


def system_tables(results):
    s = results.get("system", {})
    lines = ["| measure | median | max | samples |", "|---|---:|---:|---:|"]
    for mode, what in (("spin", "publish to visible, reader spinning on `get`"),
                       ("wait", "publish to visible, reader blocked in `wait()` (wake-up)")):
        v = s.get("publish_to_visible", {}).get(mode)
        if v:
            lines.append(f"| {what} | {fmt_ns(v['median_ns'])} | {fmt_ns(v['max_ns'])} "
                         f"| {v['samples']} |")
    v = s.get("response_to_visible")
    if v:
        lines.append(f"| token response's last byte to the new version visible (refresher, "
                     f"test authorization server) | {fmt_ns(v['median_us'] * 1e3)} "
                     f"| {fmt_ns(v['max_us'] * 1e3)} | {v['samples']} |")
    lines += ["", "| credentials | idle CPU | idle RSS | own (anon) / libraries / segment "
              "| refreshes | CPU per refresh | CPU while refreshing | RSS refreshing | peak RSS |",
              "|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in s.get("refresher", []):
        parts = " / ".join(f"{r[k] / 1024:.1f}" for k in ("idle_rss_anon_kib",
                                                          "idle_rss_file_kib",
                                                          "idle_rss_shmem_kib") if k in r)
        lines.append(f"| {r['credentials']} | {r['idle_cpu_pct']:.3f} % "
                     f"| {r['idle_rss_kib'] / 1024:.1f} MiB | {parts} MiB | {r['refreshes']} "
                     f"| {r['refresh_cpu_ms_per_refresh']:.2f} ms "
                     f"| {r['refreshing_cpu_pct']:.1f} % | {r['refreshing_rss_kib'] / 1024:.1f} MiB "
                     f"| {r['peak_rss_kib'] / 1024:.1f} MiB |")
    lines += ["", "| slots | `Reader::open` | `lookup` (last slot) | `get` unchanged "
              "| `get` after a change |", "|---:|---:|---:|---:|---:|"]
    for r in s.get("slots", []):
        lines.append(f"| {r['slots']} | {fmt_ns(r['open_ns'])} | {fmt_ns(r['lookup_ns'])} "
                     f"| {fmt_ns(r['get_ns'])} | {fmt_ns(r['get_changed_ns'])} |")
    return lines


def propagation_tables(results):
    """bench/propagation_bench.py's figures: leader's segment to each follower's
    on one etcd member, the refreshers' CPU and etcd's load."""
    pr = results.get("propagation")
    if not pr:
        return ["Not run (results from before issue 12)."]
    if pr.get("skipped"):
        return [f"Skipped: {pr['skipped']}."]
    lines = [f"etcd {pr['etcd_version']} (one member, loopback), `lease_ttl_s` "
             f"{pr['lease_ttl_s']}, a refresh about every {pr['access_ttl_s'] / 2:g} s, "
             f"windows of {pr['seconds']:g} s. A sample: one follower, one token, from the "
             "leader's segment showing it to the follower's.", "",
             "| followers | median | p99 | max | samples | missed | CPU leader "
             "| CPU followers (each) | CPU etcd |", "|---:" * 9 + "|"]
    for p in pr["phases"]:
        v, c = p["propagation"], p["cpu_pct"]
        lines.append(f"| {p['followers']} | {fmt_ns(v.get('median_ms', 0) * 1e6)} "
                     f"| {fmt_ns(v.get('p99_ms', 0) * 1e6)} | {fmt_ns(v.get('max_ms', 0) * 1e6)} "
                     f"| {v['samples']} | {p['missed']} | {c['leader']:.2f} % "
                     f"| {c['followers_total']:.2f} % ({c['follower_mean']:.3f} %) "
                     f"| {c['etcd']:.2f} % |")
    lines += ["", "etcd's load from its /metrics (gRPC calls by method: the JSON gateway makes "
              "each HTTP call one). Idle: the same fleet with access tokens of an hour, per "
              "hour; per refresh: the busy window's counts beyond the idle rate.", ""]
    rows = [(f"idle, {p['followers']} followers, per hour", p["etcd"]["per_hour"])
            for p in pr.get("idle", [])]
    rows += [(f"per refresh, {n} followers", per)
             for n, per in pr.get("net_per_refresh", {}).items()]
    keys = sorted({k for _, d in rows for k, v in d.items() if v})
    if not keys:
        return lines + ["(etcd's counters did not move)"]
    lines += ["| | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    lines += [f"| {what} | " + " | ".join(f"{d.get(k, 0):g}" for k in keys) + " |"
              for what, d in rows]
    return lines


METHOD_NOTES = """\
How each figure is made (bench/README.md has the details):

- Every peer is a reader process doing what a user's process would do per request,
  in its best light, and checking the token's expiry against `CLOCK_REALTIME_COARSE`
  like `get` does: readers of the mutex, rwlock and seqlock copy only when the
  version changed; the daemon and Redis connections stay open; the sink file is
  replaced by rename, as Vault Agent does.
- **CPU ns / read** is the reader processes' CPU time over their reads in untimed
  blocks: robust to the time a reader waited for a CPU. The ratios use it. For the
  daemon, Redis and files it leaves out the server's and the kernel's work done
  elsewhere, and the wait: it flatters them (their median shows the wall time).
- **median, p99, p99.9, max** are per read, each timed alone with the TSC in blocks
  alternating with the untimed ones, net of the timer's own median cost. With more
  reader processes than CPUs, the tail includes time a reader spent descheduled.
- **syscalls / read**: `strace -f -c` of a reader making 20000 reads against a running
  writer, minus the same reader making none.
- **torn**: every token is its version's 16 hex digits repeated; a read holding bytes
  of two versions is torn. Only designs without a protocol can tear.
- **the design replaced** is a model: a refresh of 100 ms once a second during which a
  reader sleeps 300 ms and retries, up to 20 times.
"""


def plot_lines(plots, md_dir):
    lines = []
    for path in plots:
        rel = os.path.relpath(path, md_dir)
        lines += [f"![{os.path.basename(path)}]({rel})", ""]
    return lines


def render(results, md_path, plots):
    """The results file's text, and the targets."""
    tg = targets(results)
    out = ["# tokenshm against its peers", "", "Written by `bench/run` (bench/README.md). "
           "Absolute times are this machine's; the ratios are measured in the same run.", ""]
    out += header(results) + ["", "## Targets", ""] + targets_table(tg)
    out += ["", "## 1 KiB token, writer idle, one reader", "", timer_note(results), ""]
    out += headline(results)
    for w in ("none", "1khz", "1us", "b2b"):
        out += ["", f"## 1 KiB token, {WRITER_LABEL[w]}, 1 to 16 reader processes", ""]
        out += scenario(results, w)
    out += ["", "## Token sizes (CPU ns per read, one reader)", ""] + sizes(results)
    out += ["", "## Syscalls per read", ""] + syscall_detail(results)
    out += ["", "## Python", ""] + python_table(results)
    out += ["", "## The whole system", ""] + system_tables(results)
    out += ["", "## Many hosts on etcd (issue 12)", ""] + propagation_tables(results)
    out += ["", "## Method", "", METHOD_NOTES, "## Plots", ""]
    out += plot_lines(plots, os.path.dirname(md_path))
    return "\n".join(out).rstrip() + "\n", tg


def replace_block(text, block):
    """text with the generated block replaced, or appended when absent."""
    if DOCS_BEGIN in text and DOCS_END in text:
        head, rest = text.split(DOCS_BEGIN, 1)
        tail = rest.split(DOCS_END, 1)[1]
        return head + DOCS_BEGIN + "\n" + block + DOCS_END + tail
    return text.rstrip() + "\n\n" + DOCS_BEGIN + "\n" + block + DOCS_END + "\n"


def docs_block(root, results, tg, md_path, plots, doc_path, headline_plot=False):
    doc_dir = os.path.dirname(doc_path)
    rel = os.path.relpath(md_path, doc_dir)
    m = results["machine"]
    lines = [f"Measured by `{results['command']}` on {results['started']}: {m['cpu']}, "
             f"{m['cpus']} CPUs, Linux {m['kernel']}, {m['compiler']}. Every table, the "
             f"scenarios with 1 to 16 readers and the plots: [{os.path.basename(rel)}]({rel}).",
             "", "1 KiB token, writer idle, one reader process. " + timer_note(results), ""]
    lines += headline(results)
    if headline_plot:
        bar = [p for p in plots if os.path.basename(p).startswith("peers-bar-none")]
        lines += [""] + plot_lines(bar[:1], doc_dir)
    else:
        lines += ["", "Targets (ratios measured in the same run):", ""] + targets_table(tg)
    return "\n".join(lines).rstrip() + "\n"


def update_docs(root, results, tg, md_path, plots):
    for name, with_plot in (("docs/PERFORMANCE.md", False), ("README.md", True)):
        path = os.path.join(root, name)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        block = docs_block(root, results, tg, md_path, plots, path, with_plot)
        with open(path, "w", encoding="utf-8") as f:
            f.write(replace_block(text, block))


def check_smoke(results, plots):
    """What CI checks of a smoke run: every piece ran and said something
    well-formed, and tokenshm never tore. Never a timing."""
    p = Peers(results["peers"])
    ran = {k[0] for k in p.runs}
    missing = [m for m in results["methods"] if m not in ran]
    problems = [f"peers not run: {', '.join(missing)}"] if missing else []
    for m in ran:
        if p.total(m, "samples") <= 0 or all(r["reads_per_s"] <= 0 for k, rs in p.runs.items()
                                             if k[0] == m for r in rs):
            problems.append(f"{m}: no reads measured")
    if p.total("tokenshm", "torn") or p.total("tokenshm_c", "torn"):
        problems.append("tokenshm returned a torn token")
    if p.total("tokenshm", "errors") or p.total("tokenshm_c", "errors"):
        problems.append("tokenshm's get returned errors")
    # An empty dict: strace could not trace here (said on stderr), not a failure.
    if results.get("syscalls") and results["syscalls"]["tokenshm"]["per_read"] != 0:
        problems.append("tokenshm's get made syscalls")
    if not results.get("python", {}).get("results"):
        problems.append("the Python bench gave no result")
    s = results.get("system", {})
    for key in ("publish_to_visible", "response_to_visible", "refresher", "slots"):
        if not s.get(key):
            problems.append(f"system bench: no {key}")
    pr = results.get("propagation", {})
    if not pr.get("skipped"):  # a skip was said on stderr; it is no pass, and no failure here
        phases = pr.get("phases") or []
        if not phases or not all(p["propagation"]["samples"] for p in phases):
            problems.append("propagation bench: a window without a sample")
    if not plots:
        problems.append("no plot written")
    if problems:
        raise BenchError("smoke: " + "; ".join(problems))
