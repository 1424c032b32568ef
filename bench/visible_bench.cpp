// Publish-to-visible: how long after the writer's publish a reader sees the
// new version.
//
//   visible_bench [--samples N] [--seconds S]
//   visible_bench --follow SEGMENT CREDENTIAL --count N [--timeout S]
//
// Run mode: a writer process (pinned to the second allowed CPU) publishes
// with WriterSegment::publish, the refresher's own call, at random intervals
// of 0.5 to 2 ms, and stores CLOCK_MONOTONIC taken just before each publish
// in a shared page, indexed by version. The reader, this process on the first
// CPU, either spins on Handle::get() ("spin") or blocks in Handle::wait()
// ("wait", a futex) and takes CLOCK_MONOTONIC when it sees a new version; a
// sample is the difference. A version the reader skipped (two publishes
// before it looked) is no sample. Prints on stdout
//
//   {"spin":{"median_ns":..,"max_ns":..,"samples":N},"wait":{...}}
//
// Follow mode (bench/system_bench.py's reader behind the refresher): opens
// SEGMENT, blocks in wait() on CREDENTIAL and prints one line
// "<CLOCK_MONOTONIC ns> <version>" per new version, flushed; the first line is
// the version found at attach. Exits after N new versions, 1 when a wait
// times out.
#include "bench_segment.hpp"

#include <tokenshm/reader.hpp>

#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <new>
#include <random>
#include <string>
#include <string_view>
#include <vector>

namespace {

namespace shm = tokenshm::shm;
namespace tb = tokenshm::bench;

constexpr std::size_t kTokenBytes = 1024;
constexpr std::uint64_t kFirstVersion = 3;  // BenchSegment published 1 and 2
constexpr std::size_t kMaxPublishes = 100'000;
constexpr std::size_t kWarmup = 20;  // publishes not sampled at the start

// The page writer and reader share through fork.
struct Shared {
    std::atomic<std::int64_t> publish_ns[kMaxPublishes];   // by version - kFirstVersion
    std::atomic<std::int64_t> returned_ns[kMaxPublishes];  // when publish returned
    std::atomic<int> stop;
    std::atomic<int> writer_failed;
};
static_assert(std::atomic<std::int64_t>::is_always_lock_free);

struct Options {
    std::size_t samples = 2000;
    double seconds = 20;
    bool follow = false;
    std::string segment, credential;
    std::size_t count = 0;
    double timeout = 30;
};

std::int64_t mono_ns() noexcept {
    struct timespec ts;
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    return std::int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

std::string errno_text(const char* call) {
    return std::string(call) + ": " + std::strerror(errno);
}

// The writer process: publishes until `stop`, the page full or the deadline.
[[noreturn]] void run_writer(tb::BenchSegment& seg, Shared& sh, int cpu, std::int64_t deadline) {
    // Dies with the reader: a reader that failed leaves no writer behind.
    if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || !tb::pin_to(cpu)) sh.writer_failed.store(1);
    std::mt19937 rng(12345);
    std::uniform_int_distribution<long> gap_ns(500'000, 2'000'000);
    const std::uint32_t slot = seg.slot(kTokenBytes);
    for (std::size_t i = 0; i < kMaxPublishes && !sh.stop.load(std::memory_order_relaxed); ++i) {
        if (mono_ns() > deadline) break;
        struct timespec gap = {0, gap_ns(rng)};
        while (::clock_nanosleep(CLOCK_MONOTONIC, 0, &gap, &gap) == EINTR) {
        }
        const std::uint64_t v = kFirstVersion + i;
        const std::string tok = tb::token_text(kTokenBytes, static_cast<unsigned>(v));
        const shm::SlotRecord rec = tb::bench_record(v, tok);
        sh.publish_ns[i].store(mono_ns(), std::memory_order_relaxed);
        if (!seg.writer().publish(slot, rec)) {
            sh.writer_failed.store(1);
            break;
        }
        sh.returned_ns[i].store(mono_ns(), std::memory_order_relaxed);
    }
    ::_exit(sh.writer_failed.load() ? 1 : 0);
}

// Waits for the next version after `last`, spinning on get() or blocking in
// wait(); 0 when the deadline passed.
std::uint64_t next_version(tokenshm::Handle& h, std::uint64_t last, bool spin,
                           std::int64_t deadline) {
    while (!spin) {
        const auto t = h.wait(last, std::chrono::milliseconds(100));
        if (t) return t->version();
        if (t.error() != tokenshm::Error::timeout)
            tb::die(std::string("wait: ") + tb::error_name(t.error()));
        if (mono_ns() > deadline) return 0;
    }
    for (unsigned n = 0;; ++n) {
        const auto t = h.get();
        if (!t) tb::die(std::string("get: ") + tb::error_name(t.error()));
        if (t->version() != last) return t->version();
        if ((n & 0xffff) == 0 && mono_ns() > deadline) return 0;
    }
}

// The reader's samples (ns) for `samples` publishes after the warmup.
std::vector<std::int64_t> read_versions(tokenshm::Handle& h, Shared& sh, bool spin,
                                        std::size_t samples, std::int64_t deadline) {
    std::vector<std::int64_t> out;
    out.reserve(samples);
    std::uint64_t last = kFirstVersion - 1;
    while (out.size() < samples) {
        const std::uint64_t v = next_version(h, last, spin, deadline);
        const std::int64_t seen = mono_ns();
        if (v == 0) break;
        if (v < kFirstVersion || v - kFirstVersion >= kMaxPublishes) tb::die("unexpected version");
        if (v == last + 1 && v - kFirstVersion >= kWarmup)
            out.push_back(seen - sh.publish_ns[v - kFirstVersion].load(std::memory_order_relaxed));
        last = v;
    }
    return out;
}

void stop_writer(pid_t child, Shared& sh) {
    sh.stop.store(1);
    int status = 0;
    while (::waitpid(child, &status, 0) < 0)
        if (errno != EINTR) tb::die(errno_text("waitpid"));
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) tb::die("the writer failed");
}

// On stderr, for the reader of the figures: how long publish itself took
// (its stores, then the futex wake) of the median publish-to-visible.
void note_publish_cost(const Shared& sh, bool spin) {
    std::vector<std::int64_t> d;
    for (std::size_t i = kWarmup; i < kMaxPublishes; ++i) {
        const std::int64_t a = sh.publish_ns[i].load(), b = sh.returned_ns[i].load();
        if (a == 0 || b == 0) break;
        d.push_back(b - a);
    }
    if (d.empty()) return;
    std::sort(d.begin(), d.end());
    std::fprintf(stderr, "visible_bench: %s: WriterSegment::publish took %lld ns (median of %zu)\n",
                 spin ? "spin" : "wait", static_cast<long long>(d[d.size() / 2]), d.size());
}

// One mode's JSON object.
std::string measure(bool spin, const Options& o, const std::vector<int>& cpus) {
    tb::BenchSegment seg(tb::unique_segment(spin ? "vis-spin" : "vis-wait"), {kTokenBytes});
    void* page =
        ::mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (page == MAP_FAILED) tb::die(errno_text("mmap"));
    Shared& sh = *new (page) Shared{};
    auto reader = tokenshm::Reader::open(seg.name());
    if (!reader) tb::die("open: " + reader.error().message);
    auto handle = reader->lookup(tb::slot_name(kTokenBytes));
    if (!handle) tb::die("lookup: " + handle.error().message);
    seg.unlink();
    const std::int64_t deadline = mono_ns() + static_cast<std::int64_t>(o.seconds * 1e9);
    std::fflush(nullptr);
    const pid_t child = ::fork();
    if (child < 0) tb::die(errno_text("fork"));
    if (child == 0) run_writer(seg, sh, cpus[1], deadline);
    std::vector<std::int64_t> s = read_versions(*handle, sh, spin, o.samples, deadline);
    stop_writer(child, sh);
    note_publish_cost(sh, spin);
    if (::munmap(page, sizeof(Shared)) != 0) tb::die(errno_text("munmap"));
    if (s.empty()) tb::die("no sample within --seconds");
    std::sort(s.begin(), s.end());
    char buf[160];
    std::snprintf(buf, sizeof buf, "{\"median_ns\":%lld,\"max_ns\":%lld,\"samples\":%zu}",
                  static_cast<long long>(s[s.size() / 2]), static_cast<long long>(s.back()),
                  s.size());
    return buf;
}

// Follow mode: see the file comment.
int follow(const Options& o) {
    auto reader = tokenshm::Reader::open(o.segment);
    if (!reader) tb::die("open " + o.segment + ": " + reader.error().message);
    auto h = reader->lookup(o.credential);
    if (!h) tb::die("lookup " + o.credential + ": " + h.error().message);
    const auto first = h->inspect();
    if (!first) tb::die(std::string("inspect: ") + tb::error_name(first.error()));
    std::uint64_t last = first->version();
    std::printf("%lld %llu\n", static_cast<long long>(mono_ns()),
                static_cast<unsigned long long>(last));
    std::fflush(stdout);
    const auto timeout = std::chrono::milliseconds(static_cast<long>(o.timeout * 1000));
    for (std::size_t n = 0; n < o.count; ++n) {
        const auto t = h->wait(last, timeout);
        const std::int64_t seen = mono_ns();
        if (!t) tb::die(std::string("wait: ") + tb::error_name(t.error()));
        last = t->version();
        if (std::printf("%lld %llu\n", static_cast<long long>(seen),
                        static_cast<unsigned long long>(last)) < 0 ||
            std::fflush(stdout) != 0)
            tb::die(errno_text("stdout"));
    }
    return 0;
}

[[noreturn]] void usage(const std::string& why) {
    std::fprintf(stderr,
                 "visible_bench: %s\nusage: visible_bench [--samples N] [--seconds S]\n"
                 "       visible_bench --follow SEGMENT CREDENTIAL --count N [--timeout S]\n",
                 why.c_str());
    std::exit(2);
}

double number(const char* flag, const char* v, double lo, double hi) {
    char* end = nullptr;
    errno = 0;
    const double d = std::strtod(v, &end);
    if (errno != 0 || end == v || *end != '\0' || !(d >= lo && d <= hi)) {
        char why[160];
        std::snprintf(why, sizeof why, "%s: not a number in [%g, %g]: %.40s", flag, lo, hi, v);
        usage(why);
    }
    return d;
}

Options parse(int argc, char** argv) {
    Options o;
    for (int i = 1; i < argc; ++i) {
        const std::string_view a = argv[i];
        const bool has = i + 1 < argc;
        if (a == "--follow" && i + 2 < argc) {
            o.follow = true;
            o.segment = argv[++i];
            o.credential = argv[++i];
        } else if (a == "--samples" && has) {
            o.samples = static_cast<std::size_t>(number("--samples", argv[++i], 1, 50'000));
        } else if (a == "--seconds" && has) {
            o.seconds = number("--seconds", argv[++i], 0.1, 600);
        } else if (a == "--count" && has) {
            o.count = static_cast<std::size_t>(number("--count", argv[++i], 1, 1e9));
        } else if (a == "--timeout" && has) {
            o.timeout = number("--timeout", argv[++i], 0.001, 3600);
        } else {
            usage("unknown or incomplete argument: " + std::string(a));
        }
    }
    if (o.follow && o.count == 0) usage("--follow needs --count N");
    return o;
}

}  // namespace

int main(int argc, char** argv) {
    const Options o = parse(argc, argv);
    if (o.follow) return follow(o);
    const std::vector<int> cpus = tb::allowed_cpus();
    if (cpus.size() < 2) tb::die("needs two CPUs (reader and writer on different cores)");
    if (!tb::pin_to(cpus[0])) tb::die(errno_text("sched_setaffinity"));
    const std::string spin = measure(true, o, cpus);
    const std::string wait = measure(false, o, cpus);
    std::printf("{\"spin\":%s,\"wait\":%s}\n", spin.c_str(), wait.c_str());
    return 0;
}
