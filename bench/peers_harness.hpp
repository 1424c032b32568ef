// The measuring half of peers_bench: the synthetic token, the torn-read check,
// the timer, the latency histogram and the reader loop every method runs.
//
// A method's reader is any type with `View read()`; the loop is a template so
// that each method's read is inlined into it exactly as a user's code would
// inline it: no virtual call is added to anyone's cost.
#pragma once

#if defined(__x86_64__)
#include <immintrin.h>
#include <x86intrin.h>
#endif
#include <time.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace peers {

// Stops the process with one line on stderr (a failed syscall or setup).
[[noreturn]] void die(const std::string& what);
// "what: strerror(errno)" for die().
std::string sys_error(const std::string& what);

inline std::int64_t clock_ns(clockid_t id) noexcept {
    struct timespec ts;
    ::clock_gettime(id, &ts);
    return std::int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

// The expiry check every method makes, with the clock tokenshm uses.
inline bool expired(std::int64_t expires_at_ms) noexcept {
    struct timespec ts;
    ::clock_gettime(CLOCK_REALTIME_COARSE, &ts);
    return std::int64_t{ts.tv_sec} * 1000 + ts.tv_nsec / 1'000'000 >= expires_at_ms;
}

// A token valid for an hour from now, for every publish.
inline std::int64_t expires_in_an_hour() noexcept {
    return clock_ns(CLOCK_REALTIME) / 1'000'000 + 3'600'000;
}

// The synthetic token of `version`: its 16 lowercase hex digits repeated to
// `bytes` (the last chunk cut). Printable, and a mix of two versions is seen.
void fill_token(char* out, std::size_t bytes, std::uint64_t version) noexcept;
std::string token_of(std::size_t bytes, std::uint64_t version);
// The version the token's first 16 bytes spell; 0 when they are not hex.
std::uint64_t token_version(const char* p, std::size_t len) noexcept;
// True unless the `len` bytes are exactly token_of(expected_len, v) for one v.
bool torn(const char* p, std::size_t len, std::size_t expected_len) noexcept;

enum class Status : std::uint8_t { ok, expired, error };

// What one read saw. `data` null: the method copies no token (floor).
// `version` 0: the method keeps none beside the token; the loop reads it
// from the token itself, outside the timed region.
struct View {
    const char* data = nullptr;
    std::uint32_t len = 0;
    Status status = Status::ok;
    std::uint64_t version = 0;
};

// Exact 1-ns buckets below 128 ns, then 32 sub-buckets per power of two
// (at most 1/32 = 3.1 % wide), up to 2^47 ns.
class Histogram {
  public:
    static constexpr int kExact = 128;
    static constexpr int kSub = 32;
    static constexpr int kBuckets = kExact + kSub * (47 - 7);

    void add(std::uint64_t ns) noexcept { ++counts_[index(ns)]; }
    void merge(const Histogram& o) noexcept {
        for (int i = 0; i < kBuckets; ++i)
            counts_[i] += o.counts_[i];
    }
    std::uint64_t total() const noexcept;
    // The value at quantile q (0..1): the bucket's middle (exact below 128).
    double quantile(double q) const noexcept;
    // [[lo_ns,count],...] of the nonzero buckets.
    std::string json() const;

    static int index(std::uint64_t ns) noexcept;
    static std::uint64_t lower(int i) noexcept;
    static std::uint64_t width(int i) noexcept;

  private:
    std::array<std::uint64_t, kBuckets> counts_{};
};

// What one reader measured; plain data, so `run` collects it in shared memory.
struct Tally {
    std::uint64_t reads = 0;  // in throughput blocks
    double tp_wall_s = 0, tp_cpu_s = 0;
    std::uint64_t lat_samples = 0, over_1ms = 0;
    double timer_ns = 0, max_ns = 0;  // raw: the timer included
    std::uint64_t torn = 0, expired = 0, errors = 0, changes = 0;
    Histogram hist;
};

// Ticks of the fenced time stamp counter (or ns where there is none).
#if defined(__x86_64__)
inline std::uint64_t tick_start() noexcept {
    _mm_lfence();
    const std::uint64_t t = __rdtsc();
    _mm_lfence();
    return t;
}
inline std::uint64_t tick_stop() noexcept {
    _mm_lfence();
    return __rdtsc();
}
#else
inline std::uint64_t tick_start() noexcept {
    return static_cast<std::uint64_t>(clock_ns(CLOCK_MONOTONIC));
}
inline std::uint64_t tick_stop() noexcept {
    return tick_start();
}
#endif

// Ticks per ns, measured against CLOCK_MONOTONIC across a 20 ms sleep.
double calibrate_ticks_per_ns();
// The median of 20000 empty timed pairs, in ns.
double timer_overhead_ns(double ticks_per_ns);

// When the reader loop stops: at `deadline_ns` (CLOCK_MONOTONIC), or, when
// `reads` >= 0, after that many reads (half untimed, half timed).
struct Limit {
    std::int64_t deadline_ns = 0;
    std::int64_t reads = -1;
};

constexpr std::int64_t kBlockNs = 5'000'000;

// Counts what a read returned; torn checks only where `check` (latency
// blocks). A version change is counted in every block: a method that keeps no
// version beside the token has its token's bytes 8..15 compared (the low
// half of the version's digits: one load from the copy just made) and the
// version read from the token only when they differ.
struct Checker {
    std::size_t token_bytes;
    std::uint64_t last_version = 0;
    std::uint64_t last_prefix = 0;

    void account(const View& v, bool check, Tally& t) noexcept {
        if (v.status != Status::ok) {
            ++(v.status == Status::expired ? t.expired : t.errors);
            return;
        }
        std::uint64_t version = v.version;
        if (check && v.data != nullptr && torn(v.data, v.len, token_bytes)) ++t.torn;
        if (version == 0 && v.data != nullptr && v.len >= 16) {
            std::uint64_t prefix;
            std::memcpy(&prefix, v.data + 8, 8);
            if (prefix == last_prefix) return;
            last_prefix = prefix;
            version = token_version(v.data, v.len);
        }
        if (version != 0 && version != last_version) {
            if (last_version != 0) ++t.changes;
            last_version = version;
        }
    }
};

inline void keep(const View& v) noexcept {
    asm volatile("" : : "r"(v.data), "r"(v.version), "r"(v.len) : "memory");
}

// A batch of untimed reads that took over 1 ms held a read that blocked: it
// is recorded as one latency sample of the batch's length (an upper bound,
// off by the batch's other reads: 20 µs at most). Only for readers that
// block by design (legacy), whose stalls are the point and would otherwise be
// seen only when they fall in a latency block.
inline void record_stall(std::uint64_t ticks, double ticks_per_ns, Tally& t) {
    const double ns = static_cast<double>(ticks) / ticks_per_ns;
    if (ns <= 1e6) return;
    t.hist.add(static_cast<std::uint64_t>(ns));
    t.max_ns = std::max(t.max_ns, ns);
    ++t.over_1ms;
    ++t.lat_samples;
}

// Untimed reads for ~5 ms (or `n` reads); adds to reads, tp_wall_s, tp_cpu_s.
template <class R>
void throughput_block(R& r, Checker& c, std::int64_t n, double ticks_per_ns, Tally& t) {
    const std::int64_t cpu0 = clock_ns(CLOCK_PROCESS_CPUTIME_ID);
    const std::int64_t wall0 = clock_ns(CLOCK_MONOTONIC);
    const std::uint64_t end = tick_start() + static_cast<std::uint64_t>(kBlockNs * ticks_per_ns);
    std::int64_t done = 0, batch = 1;
    while (n < 0 ? tick_start() < end : done < n) {
        const std::int64_t b = n < 0 ? batch : n;
        const std::uint64_t b0 = tick_start();
        for (std::int64_t i = 0; i < b; ++i) {
            const View v = r.read();
            keep(v);
            c.account(v, false, t);
        }
        done += b;
        if constexpr (requires { R::kRecordStalls; })
            record_stall(tick_start() - b0, ticks_per_ns, t);
        // Look at the clock about every 20 µs: rarely for the fast methods.
        if (batch < 4096 && static_cast<double>(tick_start() - b0) < 20'000 * ticks_per_ns)
            batch *= 2;
    }
    t.tp_wall_s += static_cast<double>(clock_ns(CLOCK_MONOTONIC) - wall0) / 1e9;
    t.tp_cpu_s += static_cast<double>(clock_ns(CLOCK_PROCESS_CPUTIME_ID) - cpu0) / 1e9;
    t.reads += static_cast<std::uint64_t>(done);
}

// Each read timed alone for ~5 ms (or `n` reads); checks outside the timing.
template <class R>
void latency_block(R& r, Checker& c, std::int64_t n, double ticks_per_ns, Tally& t) {
    const std::uint64_t end = tick_start() + static_cast<std::uint64_t>(kBlockNs * ticks_per_ns);
    const double ns_per_tick = 1.0 / ticks_per_ns;
    for (std::int64_t done = 0; n < 0 ? tick_start() < end : done < n; ++done) {
        const std::uint64_t t0 = tick_start();
        const View v = r.read();
        const std::uint64_t t1 = tick_stop();
        keep(v);
        const double ns = static_cast<double>(t1 - t0) * ns_per_tick;
        t.hist.add(static_cast<std::uint64_t>(ns));
        t.max_ns = std::max(t.max_ns, ns);
        if (ns > 1e6) ++t.over_1ms;
        ++t.lat_samples;
        c.account(v, true, t);
    }
}

// The reader loop: alternating throughput and latency blocks until `limit`.
template <class R>
void measure(R& r, std::size_t token_bytes, const Limit& limit, double ticks_per_ns, Tally& t) {
    Checker c{token_bytes};
    t.timer_ns = timer_overhead_ns(ticks_per_ns);
    if (limit.reads >= 0) {
        throughput_block(r, c, limit.reads / 2, ticks_per_ns, t);
        latency_block(r, c, limit.reads - limit.reads / 2, ticks_per_ns, t);
        return;
    }
    do {
        throughput_block(r, c, -1, ticks_per_ns, t);
        latency_block(r, c, -1, ticks_per_ns, t);
    } while (clock_ns(CLOCK_MONOTONIC) < limit.deadline_ns);
}

}  // namespace peers
