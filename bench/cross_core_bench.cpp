// `get` right after the writer's publish, across cores, against floors on the
// same fresh bytes.
//
//   cross_core_bench [--samples=N] [--seconds=S] [--seed=K] [--text]
//
// A writer process pinned to the second allowed CPU publishes records with
// WriterSegment::publish (the refresher's own call); the reader, this process,
// pinned to the first, waits for each publish and times ONE operation on the
// record just written:
//
//   get          Handle::get(): the handle's cached seq is stale, so it copies
//                the record (validate, decode, clock, Token) like any reader
//                after a refresh.
//   memcpy       glibc memcpy of token_bytes bytes starting at the token's
//                offset in the record copy just written (the issue's
//                yardstick, "memcpy of the same size", on the same fresh lines).
//   floor        floor after a change: a relaxed load of seq, memcpy of the
//                bytes get() copies (64-byte fixed part, type, scope, token,
//                rounded to words as get() rounds) from the start of the copy,
//                and clock_gettime(CLOCK_REALTIME_COARSE).
//   empty        nothing: the cost of the timer itself.
//   memcpy_hot   (not a scheduled op) the memcpy above timed a second time,
//                right after: the same bytes hot in this core's L1, to show
//                what the fresh lines cost.
//
// Cache-line state when the timer starts. The writer has just stored every
// word of the record copy (publish n writes copy n & 1), so those lines are
// Modified in the writer core's L1/L2 and Invalid here: whatever this core
// read of that copy before (two or more publishes ago), those stores
// invalidated. While waiting, the reader touches only the slot's control line
// (seq; its 128-byte buddy is the slot name, not a record), so neither its
// loads nor the adjacent-line prefetcher bring record lines in early; the loads
// of the timed operation start after an lfence. Every record line the
// operation reads is therefore a transfer from the other core, as for a real
// reader right after the refresher's publish. The control line (seq, status,
// futex) may be back in the writer's cache as well: publish ends with an
// atomic increment of the futex word, just after the seq store the reader saw.
// The writer waits for the reader's ack before its next publish, so nothing
// writes the lines during the timed operation and get() never retries. This is the situation the
// issue's 1 KB target is about; read_bench's hot, same-core memcpy is not.
//
// Each round publishes once per (size, operation), in an order shuffled with a
// fixed seed, so outside noise hits every operation alike. Times are rdtsc with
// lfence on both sides, converted to ns with the TSC rate measured against
// CLOCK_MONOTONIC over the run. Prints one JSON object on stdout; with --text
// also a table on stderr. Exits 1 when any get() fails or setup fails, 0
// with a message when fewer than two CPUs are allowed.
#include "bench_segment.hpp"

#include <tokenshm/reader.hpp>
#include <tokenshm/shm/segment.hpp>

#if defined(__x86_64__)
#include <immintrin.h>
#include <x86intrin.h>
#endif
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <new>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#if defined(__x86_64__)

namespace {

namespace shm = tokenshm::shm;
namespace tb = tokenshm::bench;

constexpr std::array<std::size_t, 3> kSizes = {64, 1024, 4096};
constexpr std::size_t kNSizes = kSizes.size();
// bench_record's token_type and scope ("Bearer", "files.write"), no last_error.
constexpr std::size_t kTypeAndScopeBytes = 6 + 11;
constexpr std::size_t kTokenOffset = TOKENSHM_REC_PAYLOAD + kTypeAndScopeBytes;
constexpr int kWarmupRounds = 200;
constexpr std::int64_t kMinCalibrationNs = 100'000'000;

enum Op : std::uint8_t { kGet, kMemcpy, kFloor, kEmpty, kScheduledOps, kMemcpyHot = kScheduledOps };
constexpr int kOps = kMemcpyHot + 1;
constexpr const char* kOpName[kOps] = {"get", "memcpy", "floor", "empty", "memcpy_hot"};

struct Options {
    std::size_t samples = 20000;  // per operation and size
    double seconds = 10;          // wall-clock cap of the measured phase
    std::uint32_t seed = 1;
    bool text = false;
};

struct Step {
    std::uint8_t size;  // index into kSizes
    Op op;
};

// The handshake, in a MAP_SHARED|MAP_ANONYMOUS page made before fork. Each word
// sits on its own line, so the writer's spin on `ack` touches nothing else.
struct alignas(64) Word {
    std::atomic<std::uint64_t> v{0};
};
enum WriterState : std::uint64_t { kStarting = 0, kRunning = 1, kDone = 2, kFailed = 3 };
struct Control {
    Word ack;     // steps the reader has finished (reader stores)
    Word stop;    // 1: the writer must return now (reader stores)
    Word writer;  // WriterState (writer stores)
};
static_assert(sizeof(Control) == 3 * 64);
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);

// What must happen on every exit path of the reader (this process).
struct Cleanup {
    pid_t child = -1;
    std::string segment;  // empty once unlinked
};
Cleanup g_cleanup;

void reap(pid_t p, int* status) {
    while (::waitpid(p, status, 0) < 0 && errno == EINTR) {
    }
}

// Stops the run with one line on stderr, killing the writer and removing the
// segment first. Only the reader calls it.
[[noreturn]] void fail(const std::string& what) {
    if (g_cleanup.child > 0) {
        ::kill(g_cleanup.child, SIGKILL);
        int status = 0;
        reap(g_cleanup.child, &status);
    }
    if (!g_cleanup.segment.empty()) (void)shm::sys::shm_unlink("/" + g_cleanup.segment);
    std::fprintf(stderr, "cross_core_bench: %s\n", what.c_str());
    std::exit(1);
}

std::string errno_text(const char* call, const std::string& subject = {}) {
    return std::string(call) + (subject.empty() ? "" : "(" + subject + ")") + ": " +
           std::strerror(errno);
}

std::int64_t mono_ns() noexcept {
    struct timespec ts;
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    return std::int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

// rdtsc fenced so that nothing before `tsc_start` and nothing after `tsc_stop`
// runs inside the interval, and the timed loads have completed at `tsc_stop`.
inline std::uint64_t tsc_start() noexcept {
    _mm_lfence();
    const std::uint64_t t = __rdtsc();
    _mm_lfence();
    return t;
}
inline std::uint64_t tsc_stop() noexcept {
    _mm_lfence();
    return __rdtsc();
}

// A private buffer placed so that its offset within a page is 2 KiB away from
// `near`'s: a copy from `near` into it never has loads that falsely alias its
// own pending stores (4 KiB aliasing), which would add a stall no reader needs.
class CopyBuffer {
  public:
    CopyBuffer(std::size_t bytes, const void* near) {
        base_ = static_cast<char*>(std::aligned_alloc(4096, bytes + 8192));
        if (base_ == nullptr) fail("aligned_alloc: out of memory");
        const std::uintptr_t off = (reinterpret_cast<std::uintptr_t>(near) + 2048) & 4095;
        p_ = base_ + (off & ~std::uintptr_t{63});
        std::memset(base_, 'x', bytes + 8192);  // fault the pages in now
    }
    CopyBuffer(const CopyBuffer&) = delete;
    CopyBuffer& operator=(const CopyBuffer&) = delete;
    ~CopyBuffer() { std::free(base_); }
    char* get() const noexcept { return p_; }

  private:
    char* base_;
    char* p_;
};

// The writer process. Publishes the record of step i, then waits for the
// reader's ack of step i before the next. Never returns.
[[noreturn]] void run_writer(shm::WriterSegment& w, const std::array<std::uint32_t, kNSizes>& slots,
                             const std::vector<Step>& steps, Control& c, int cpu, pid_t parent,
                             std::int64_t deadline_ns) {
    auto die = [&c](const std::string& what) {
        std::fprintf(stderr, "cross_core_bench: writer: %s\n", what.c_str());
        c.writer.v.store(kFailed, std::memory_order_release);
        ::_exit(1);
    };
    if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) die(errno_text("prctl", "PR_SET_PDEATHSIG"));
    if (::getppid() != parent) ::_exit(1);  // the reader died before prctl
    if (!tokenshm::bench::pin_to(cpu))
        die(errno_text("sched_setaffinity", "cpu " + std::to_string(cpu)));

    // 26 token texts per size, so consecutive versions differ in every byte.
    std::array<std::vector<std::string>, kNSizes> tokens;
    for (std::size_t k = 0; k < kNSizes; ++k)
        for (unsigned salt = 0; salt < 26; ++salt)
            tokens[k].push_back(tb::token_text(kSizes[k], salt));
    std::array<std::uint64_t, kNSizes> version{};
    version.fill(2);  // setup published versions 1 and 2; seq == version after each publish

    c.writer.v.store(kRunning, std::memory_order_release);
    for (std::size_t i = 0; i < steps.size(); ++i) {
        const std::size_t k = steps[i].size;
        const std::uint64_t v = ++version[k];
        const auto e = w.publish(slots[k], tb::bench_record(v, tokens[k][v % tokens[k].size()]));
        if (!e) die(std::string("publish: ") + shm::to_string(e.error()));
        for (unsigned spins = 1; c.ack.v.load(std::memory_order_acquire) <= i; ++spins) {
            if (c.stop.v.load(std::memory_order_relaxed) != 0) ::_exit(0);
            _mm_pause();
            if ((spins & 1023) != 0) continue;
            // PR_SET_PDEATHSIG should have killed us with the reader; in case not.
            if (::getppid() != parent) ::_exit(1);
            if (mono_ns() > deadline_ns + 1'000'000'000) die("the reader stopped acknowledging");
        }
    }
    c.writer.v.store(kDone, std::memory_order_release);
    ::_exit(0);
}

// The segment: one slot per size, both record copies holding a complete
// record (versions 1 and 2), as bench_segment.hpp's BenchSegment but removed
// from /dev/shm on every failure.
struct Setup {
    std::optional<shm::WriterSegment> writer;
    std::array<std::uint32_t, kNSizes> slots{};
    std::optional<tokenshm::Reader> reader;
    std::optional<shm::ReadOnlySegment> ro;
};

Setup make_segment(const std::string& name) {
    Setup s;
    shm::SegmentSpec spec;
    spec.name = name;
    spec.slot_count = kNSizes;
    spec.max_token_bytes = 4096;
    auto w = shm::WriterSegment::create_or_attach(spec);
    if (!w) fail(w.error().message);
    g_cleanup.segment = name;
    s.writer.emplace(std::move(*w));
    for (std::size_t k = 0; k < kNSizes; ++k) {
        auto slot = s.writer->claim(tb::slot_name(kSizes[k]));
        if (!slot) fail(slot.error().message);
        s.slots[k] = *slot;
        for (std::uint64_t v = 1; v <= 2; ++v) {
            const std::string tok = tb::token_text(kSizes[k], static_cast<unsigned>(v));
            const auto e = s.writer->publish(*slot, tb::bench_record(v, tok));
            if (!e) fail(std::string("publish: ") + shm::to_string(e.error()));
        }
    }
    auto rd = tokenshm::Reader::open(name);
    if (!rd) fail(rd.error().message);
    s.reader.emplace(std::move(*rd));
    auto ro = shm::ReadOnlySegment::open(name, {});
    if (!ro) fail(ro.error().message);
    s.ro.emplace(std::move(*ro));
    // Every mapping is made (the writer inherits its own through fork): remove
    // the name now, so no later exit path can leave it in /dev/shm.
    if (auto u = shm::sys::shm_unlink("/" + name); !u) fail(u.error().message());
    g_cleanup.segment.clear();
    return s;
}

// Rounds of one publish per (size, operation), each round in shuffled order.
std::vector<Step> make_schedule(std::size_t rounds, std::uint32_t seed) {
    std::vector<Step> round;
    for (std::size_t k = 0; k < kNSizes; ++k)
        for (int op = 0; op < kScheduledOps; ++op)
            round.push_back({static_cast<std::uint8_t>(k), static_cast<Op>(op)});
    std::mt19937 rng(seed);
    std::vector<Step> steps;
    steps.reserve(rounds * round.size());
    for (std::size_t r = 0; r < rounds; ++r) {
        std::shuffle(round.begin(), round.end(), rng);
        steps.insert(steps.end(), round.begin(), round.end());
    }
    return steps;
}

struct Samples {
    std::array<std::array<std::vector<std::uint64_t>, kOps>, kNSizes> ticks;
    std::array<std::array<std::uint64_t, 16>, kNSizes> errors_by_code{};  // by tokenshm::Error
    std::array<std::uint64_t, kNSizes> wrong_record{};  // a token of another size or version
    double ticks_per_ns = 0;
    double elapsed_s = 0;
    bool truncated = false;
};

// Waits for the writer to publish to `seq`'s slot. Returns the new seq, or
// nullopt when the wall-clock cap passed. Fails the run if the writer died.
std::optional<std::uint64_t> wait_publish(const std::atomic<std::uint64_t>& seq, std::uint64_t last,
                                          const Control& c, std::int64_t deadline_ns) {
    for (unsigned spins = 1;; ++spins) {
        const std::uint64_t s = seq.load(std::memory_order_acquire);
        if (s != last) return s;
        _mm_pause();
        if ((spins & 1023) != 0) continue;
        if (mono_ns() > deadline_ns) return std::nullopt;
        if (c.writer.v.load(std::memory_order_acquire) == kFailed) fail("the writer failed");
        int status = 0;
        const pid_t p = ::waitpid(g_cleanup.child, &status, WNOHANG);
        if (p < 0) fail(errno_text("waitpid"));
        if (p == g_cleanup.child) {
            g_cleanup.child = -1;
            fail("the writer exited before the run ended");
        }
    }
}

// One moment on both clocks (CLOCK_MONOTONIC and the TSC), to measure the TSC rate.
struct ClockMark {
    std::int64_t mono = 0;
    std::uint64_t tsc = 0;
};

ClockMark clock_mark() noexcept {
    ClockMark m;
    m.mono = mono_ns();
    m.tsc = __rdtsc();
    return m;
}

// TSC ticks per ns since `from`, measured over at least kMinCalibrationNs.
double tsc_per_ns_since(const ClockMark& from) noexcept {
    std::int64_t mono1 = mono_ns();
    while (mono1 - from.mono < kMinCalibrationNs)
        mono1 = mono_ns();
    const std::uint64_t tsc1 = __rdtsc();
    return static_cast<double>(tsc1 - from.tsc) / static_cast<double>(mono1 - from.mono);
}

// The reader's side of the run, one entry per size: the handle whose get() is
// timed, the slot's seq and the two record copies the writer stores to, and a
// private destination for the memcpy and floor copies.
struct ReaderSlots {
    std::vector<tokenshm::Handle> handles;
    std::array<const std::atomic<std::uint64_t>*, kNSizes> seq{};
    std::array<std::array<const char*, 2>, kNSizes> copy{};
    std::array<std::uint64_t, kNSizes> last{};
    std::array<std::size_t, kNSizes> record_bytes{};
    std::array<std::unique_ptr<CopyBuffer>, kNSizes> dst;

    static ReaderSlots open(Setup& s);
    std::size_t take_samples(const std::vector<Step>& steps, std::size_t warmup_steps, Control& c,
                             std::int64_t deadline_ns, Samples& out, ClockMark& measured_from);
};

ReaderSlots ReaderSlots::open(Setup& s) {
    const shm::Geometry g = s.ro->geometry();
    ReaderSlots r;
    for (std::size_t k = 0; k < kNSizes; ++k) {
        auto h = s.reader->lookup(tb::slot_name(kSizes[k]));
        if (!h) fail(h.error().message);
        // The first get() copies and sizes everything; afterwards each get()
        // copies because the writer has moved seq on.
        const auto t = h->get();
        if (!t || t->token().size() != kSizes[k]) fail("no valid token before the run");
        r.handles.push_back(std::move(*h));
        const shm::SlotControl* slot = s.ro->slot(s.slots[k]);
        r.seq[k] = &slot->seq;
        r.last[k] = r.seq[k]->load(std::memory_order_acquire);
        for (unsigned i = 0; i < 2; ++i)
            r.copy[k][i] = reinterpret_cast<const char*>(shm::copy_at(slot, g.record_size(), i));
        r.record_bytes[k] = shm::record_words(kTypeAndScopeBytes + kSizes[k]) * 8;
        r.dst[k] = std::make_unique<CopyBuffer>(r.record_bytes[k], r.copy[k][0]);
    }
    return r;
}

// Keeps one measured step's sample (and the hot memcpy's, for a memcpy step).
void keep_sample(Samples& out, const Step& step, std::uint64_t ticks, std::uint64_t hot) {
    out.ticks[step.size][step.op].push_back(ticks);
    if (step.op == kMemcpy) out.ticks[step.size][kMemcpyHot].push_back(hot);
}

// For each step: waits for the writer's publish, times the step's operation on
// the record just written, then acks so the writer publishes the next. Keeps
// the samples of the steps from warmup_steps on, whose start `measured_from`
// records. Returns the number of steps done: fewer than steps.size() when the
// wall-clock cap passed first. Only the code between tsc_start and tsc_stop is
// timed; keep everything else out of it.
std::size_t ReaderSlots::take_samples(const std::vector<Step>& steps, std::size_t warmup_steps,
                                      Control& c, std::int64_t deadline_ns, Samples& out,
                                      ClockMark& measured_from) {
    for (std::size_t i = 0; i < steps.size(); ++i) {
        if (i == warmup_steps) measured_from = clock_mark();
        const std::size_t k = steps[i].size;
        const auto got = wait_publish(*seq[k], last[k], c, deadline_ns);
        if (!got) return i;
        const std::uint64_t sq = last[k] = *got;
        const char* rec = copy[k][sq & 1];
        char* buf = dst[k]->get();
        std::uint64_t t0 = 0, t1 = 0, hot = 0;
        switch (steps[i].op) {
            case kGet: {
                t0 = tsc_start();
                auto t = handles[k].get();
                t1 = tsc_stop();
                if (!t)
                    ++out.errors_by_code[k][static_cast<unsigned>(t.error()) & 15];
                else if (t->token().size() != kSizes[k] || t->version() != sq)
                    ++out.wrong_record[k];
                break;
            }
            case kMemcpy: {
                t0 = tsc_start();
                std::memcpy(buf, rec + kTokenOffset, kSizes[k]);
                asm volatile("" : : "r"(buf) : "memory");
                t1 = tsc_stop();
                // The same copy again: now the lines are in this core's L1.
                const std::uint64_t h0 = tsc_start();
                std::memcpy(buf, rec + kTokenOffset, kSizes[k]);
                asm volatile("" : : "r"(buf) : "memory");
                hot = tsc_stop() - h0;
                break;
            }
            case kFloor: {
                t0 = tsc_start();
                const std::uint64_t s2 = seq[k]->load(std::memory_order_relaxed);
                std::memcpy(buf, rec, record_bytes[k]);
                struct timespec ts;
                ::clock_gettime(CLOCK_REALTIME_COARSE, &ts);
                asm volatile("" : : "r"(buf), "r"(s2), "r"(ts.tv_nsec) : "memory");
                t1 = tsc_stop();
                break;
            }
            case kEmpty:
            case kScheduledOps:
                t0 = tsc_start();
                t1 = tsc_stop();
                break;
        }
        c.ack.v.store(i + 1, std::memory_order_release);
        if (i >= warmup_steps) keep_sample(out, steps[i], t1 - t0, hot);
    }
    return steps.size();
}

Samples run_reader(Setup& s, const std::vector<Step>& steps, std::size_t warmup_steps, Control& c,
                   std::int64_t start_ns, std::int64_t deadline_ns) {
    ReaderSlots r = ReaderSlots::open(s);
    Samples out;
    for (auto& per_size : out.ticks)
        for (auto& v : per_size)
            v.reserve((steps.size() - warmup_steps) / (kNSizes * kScheduledOps) + 1);

    ClockMark measured_from;
    const std::size_t done =
        r.take_samples(steps, warmup_steps, c, deadline_ns, out, measured_from);
    if (done <= warmup_steps) fail("the wall-clock cap passed before any sample was taken");
    out.truncated = done < steps.size();
    c.stop.v.store(1, std::memory_order_relaxed);
    out.ticks_per_ns = tsc_per_ns_since(measured_from);
    out.elapsed_s = static_cast<double>(mono_ns() - start_ns) / 1e9;
    return out;
}

struct Stats {
    std::size_t n = 0;
    double p10 = 0, median = 0, p90 = 0;  // ns
};

Stats stats(std::vector<std::uint64_t>& v, double ticks_per_ns) {
    Stats s;
    s.n = v.size();
    if (v.empty()) return s;
    std::sort(v.begin(), v.end());
    auto at = [&](std::size_t pct) {
        return static_cast<double>(v[std::min(v.size() - 1, v.size() * pct / 100)]) / ticks_per_ns;
    };
    s.p10 = at(10);
    s.median = at(50);
    s.p90 = at(90);
    return s;
}

// "1.23" or "null" when the denominator is not positive.
std::string ratio(double a, double b) {
    if (!(b > 0)) return "null";
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.3f", a / b);
    return buf;
}

// The five ratios of one size, each "1.23" or "null" (see ratio).
struct Ratios {
    std::string memcpy_net, floor_net, memcpy_raw, floor_raw, fresh_over_hot;
};

Ratios ratios(const std::array<Stats, kOps>& st) {
    const double empty = st[kEmpty].median;
    const double get = st[kGet].median, mc = st[kMemcpy].median, fl = st[kFloor].median,
                 hot = st[kMemcpyHot].median;
    Ratios r;
    r.memcpy_net = ratio(get - empty, mc - empty);
    r.floor_net = ratio(get - empty, fl - empty);
    r.memcpy_raw = ratio(get, mc);
    r.floor_raw = ratio(get, fl);
    r.fresh_over_hot = ratio(mc - empty, hot - empty);
    return r;
}

// The failed get() calls of one size: their total (wrong records included)
// and the JSON members counting them by error code.
struct GetErrors {
    std::uint64_t total = 0;
    std::string by_code;
};

GetErrors get_errors(const Samples& s, std::size_t k) {
    GetErrors e;
    e.total = s.wrong_record[k];
    for (unsigned code = 0; code < 16; ++code) {
        if (s.errors_by_code[k][code] == 0) continue;
        e.total += s.errors_by_code[k][code];
        e.by_code += (e.by_code.empty() ? "\"" : ",\"") +
                     std::string(tokenshm::bench::error_name(static_cast<tokenshm::Error>(code))) +
                     "\":" + std::to_string(s.errors_by_code[k][code]);
    }
    return e;
}

// The "ops" members of one size: each operation's statistics.
std::string ops_json(const std::array<Stats, kOps>& st) {
    const double empty = st[kEmpty].median;
    std::string ops;
    for (int op = 0; op < kOps; ++op) {
        char buf[256];
        std::snprintf(buf, sizeof buf,
                      "%s\"%s\":{\"samples\":%zu,\"median_ns\":%.2f,\"p10_ns\":%.2f,"
                      "\"p90_ns\":%.2f,\"net_median_ns\":%.2f}",
                      ops.empty() ? "" : ",", kOpName[op], st[op].n, st[op].median, st[op].p10,
                      st[op].p90, st[op].median - empty);
        ops += buf;
    }
    return ops;
}

// One element of the report's "sizes" array.
std::string size_json(std::size_t k, const std::array<Stats, kOps>& st, const Ratios& r,
                      const GetErrors& e, std::uint64_t wrong_record) {
    const std::string ops = ops_json(st);
    char buf[4096];
    std::snprintf(buf, sizeof buf,
                  "{\"token_bytes\":%zu,\"record_bytes\":%zu,\"memcpy_from\":\"token offset %zu\","
                  "\"ops\":{%s},\"ratios\":{\"get_over_memcpy_net\":%s,\"get_over_floor_net\":%s,"
                  "\"get_over_memcpy_raw\":%s,\"get_over_floor_raw\":%s,"
                  "\"memcpy_fresh_over_hot_net\":%s},\"get_errors\":%llu,"
                  "\"get_errors_by_code\":{%s},\"get_wrong_record\":%llu}",
                  kSizes[k], shm::record_words(kTypeAndScopeBytes + kSizes[k]) * 8, kTokenOffset,
                  ops.c_str(), r.memcpy_net.c_str(), r.floor_net.c_str(), r.memcpy_raw.c_str(),
                  r.floor_raw.c_str(), r.fresh_over_hot.c_str(),
                  static_cast<unsigned long long>(e.total), e.by_code.c_str(),
                  static_cast<unsigned long long>(wrong_record));
    return buf;
}

// The --text table rows of one size.
std::string size_table(std::size_t k, const std::array<Stats, kOps>& st, const Ratios& r,
                       std::uint64_t errors) {
    const double empty = st[kEmpty].median;
    std::string table;
    char buf[512];
    for (int op = 0; op < kOps; ++op) {
        std::snprintf(buf, sizeof buf, "%6zu  %-10s  %8.1f  %8.1f  %8.1f  %8.1f  %7zu\n", kSizes[k],
                      kOpName[op], st[op].median, st[op].median - empty, st[op].p10, st[op].p90,
                      st[op].n);
        table += buf;
    }
    std::snprintf(buf, sizeof buf,
                  "        get/memcpy %s (raw %s)  get/floor %s (raw %s)  "
                  "memcpy fresh/hot %s  get errors %llu\n",
                  r.memcpy_net.c_str(), r.memcpy_raw.c_str(), r.floor_net.c_str(),
                  r.floor_raw.c_str(), r.fresh_over_hot.c_str(),
                  static_cast<unsigned long long>(errors));
    table += buf;
    return table;
}

// Prints the JSON report (and the table with --text); returns the number of
// failed get() calls.
std::uint64_t report(const Options& o, Samples& s, int reader_cpu, int writer_cpu) {
    std::string sizes;
    std::string table;
    std::uint64_t failed = 0;
    for (std::size_t k = 0; k < kNSizes; ++k) {
        std::array<Stats, kOps> st;
        for (int op = 0; op < kOps; ++op)
            st[op] = stats(s.ticks[k][op], s.ticks_per_ns);
        const Ratios r = ratios(st);
        const GetErrors e = get_errors(s, k);
        failed += e.total;
        if (!sizes.empty()) sizes += ',';
        sizes += size_json(k, st, r, e, s.wrong_record[k]);
        if (o.text) table += size_table(k, st, r, e.total);
    }
    std::printf(
        "{\"bench\":\"cross_core\",\"reader_cpu\":%d,\"writer_cpu\":%d,\"samples_per_op\":%zu,"
        "\"seconds_cap\":%g,\"seed\":%u,\"elapsed_s\":%.3f,\"truncated\":%s,\"tsc_per_ns\":%.4f,"
        "\"get_errors\":%llu,\"sizes\":[%s]}\n",
        reader_cpu, writer_cpu, o.samples, o.seconds, o.seed, s.elapsed_s,
        s.truncated ? "true" : "false", s.ticks_per_ns, static_cast<unsigned long long>(failed),
        sizes.c_str());
    if (o.text) {
        std::fprintf(stderr,
                     "reader on CPU %d, writer on CPU %d, TSC %.3f GHz, %.2f s%s; net = median - "
                     "empty median\n"
                     " token  op            median       net       p10       p90  samples\n%s",
                     reader_cpu, writer_cpu, s.ticks_per_ns, s.elapsed_s,
                     s.truncated ? " (cut by --seconds)" : "", table.c_str());
    }
    return failed;
}

Options parse(int argc, char** argv) {
    Options o;
    auto usage = [] {
        std::fprintf(stderr,
                     "usage: cross_core_bench [--samples=N] [--seconds=S] [--seed=K] [--text]\n");
        std::exit(2);
    };
    for (int i = 1; i < argc; ++i) {
        const std::string_view a = argv[i];
        const auto eq = a.find('=');
        const std::string_view key = a.substr(0, eq);
        const std::string val = eq == std::string_view::npos ? "" : std::string(a.substr(eq + 1));
        try {
            if (key == "--samples")
                o.samples = std::stoul(val);
            else if (key == "--seconds")
                o.seconds = std::stod(val);
            else if (key == "--seed")
                o.seed = static_cast<std::uint32_t>(std::stoul(val));
            else if (key == "--text" && val.empty())
                o.text = true;
            else
                usage();
        } catch (const std::exception&) {
            usage();
        }
    }
    if (o.samples < 1 || o.samples > 10'000'000 || !(o.seconds > 0) || o.seconds > 600) usage();
    return o;
}

// The handshake page, shared with the writer through fork.
Control& map_control() {
    void* page =
        ::mmap(nullptr, sizeof(Control), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (page == MAP_FAILED) fail(errno_text("mmap", "handshake page"));
    return *new (page) Control;
}

// Forks the writer process (run_writer); returns its pid in the reader.
pid_t start_writer(Setup& setup, const std::vector<Step>& steps, Control& control, int writer_cpu,
                   std::int64_t deadline_ns) {
    std::fflush(nullptr);  // nothing buffered may be written twice
    const pid_t parent = ::getpid();
    const pid_t child = ::fork();
    if (child < 0) fail(errno_text("fork"));
    if (child == 0)
        run_writer(*setup.writer, setup.slots, steps, control, writer_cpu, parent, deadline_ns);
    g_cleanup.child = child;
    return child;
}

// The writer returns on `stop`; give it a second, then kill it. Fails the run
// unless it exited with status 0.
void await_writer(pid_t child) {
    int status = 0;
    pid_t p = 0;
    for (int i = 0; i < 1000 && p == 0; ++i) {
        p = ::waitpid(child, &status, WNOHANG);
        if (p < 0 && errno == EINTR) p = 0;
        if (p == 0) ::usleep(1000);
    }
    if (p < 0) fail(errno_text("waitpid"));
    if (p == 0) fail("the writer did not stop");
    g_cleanup.child = -1;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) fail("the writer failed");
}

}  // namespace

int main(int argc, char** argv) {
    const Options o = parse(argc, argv);
    const std::vector<int> cpus = tokenshm::bench::allowed_cpus();
    if (cpus.size() < 2) {
        std::fprintf(stderr,
                     "cross_core_bench: needs two CPUs (reader and writer on different cores), "
                     "%zu allowed: nothing measured\n",
                     cpus.size());
        std::printf("{\"bench\":\"cross_core\",\"skipped\":\"needs two CPUs, %zu allowed\"}\n",
                    cpus.size());
        return 0;
    }
    const int reader_cpu = cpus[0], writer_cpu = cpus[1];
    if (!tokenshm::bench::pin_to(reader_cpu))
        fail(errno_text("sched_setaffinity", "cpu " + std::to_string(reader_cpu)));

    Setup setup = make_segment(tb::unique_segment("xcore"));
    const std::vector<Step> steps = make_schedule(kWarmupRounds + o.samples, o.seed);
    const std::size_t warmup_steps = std::size_t{kWarmupRounds} * kNSizes * kScheduledOps;
    Control& control = map_control();

    const std::int64_t start_ns = mono_ns();
    const std::int64_t deadline_ns = start_ns + static_cast<std::int64_t>(o.seconds * 1e9);
    const pid_t child = start_writer(setup, steps, control, writer_cpu, deadline_ns);
    Samples samples = run_reader(setup, steps, warmup_steps, control, start_ns, deadline_ns);
    await_writer(child);

    const std::uint64_t failed = report(o, samples, reader_cpu, writer_cpu);
    if (failed != 0) {
        std::fprintf(stderr,
                     "cross_core_bench: %llu get() calls failed or copied the wrong record\n",
                     static_cast<unsigned long long>(failed));
        return 1;
    }
    if (samples.truncated)
        std::fprintf(stderr, "cross_core_bench: --seconds=%g passed before %zu samples per op\n",
                     o.seconds, o.samples);
    return 0;
}

#else  // not x86-64

int main() {
    std::fprintf(stderr, "cross_core_bench: x86-64 only (rdtsc): nothing measured\n");
    std::printf("{\"bench\":\"cross_core\",\"skipped\":\"x86-64 only\"}\n");
    return 0;
}

#endif
