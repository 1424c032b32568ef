// The read path against its floors, in one process and one run.
//
//   BM_floor_load_clock    one relaxed 8-byte load from the shared mapping plus
//                          clock_gettime(CLOCK_REALTIME_COARSE): the least an
//                          unchanged get() can do (it must look at seq and
//                          at the clock to judge expiry).
//   BM_get_unchanged       Handle::get() when the slot's seq has not moved.
//   BM_memcpy/N            glibc memcpy of N bytes between private buffers.
//   BM_latch_copy/N        shm::load_words of N bytes out of the shared mapping:
//                          the latch's copy alone.
//   BM_floor_changed/N     the least a get() after a change can do: the load,
//                          a memcpy of the record bytes it must copy (fixed part,
//                          type, scope and an N-byte token) and the clock.
//   BM_get_changed/N       Handle::get() right after a change, token of N bytes.
//                          Two twin slots, read alternately: each iteration
//                          bumps the twin's seq by one (one store, as
//                          LatchWriter::publish ends) and calls get() on the
//                          slot bumped one iteration earlier, which re-copies
//                          its other record copy (complete, see
//                          bench_segment.hpp), validates, decodes and reads the
//                          clock. The bump stays in the timed loop (one store:
//                          the figure is conservative); it targets the twin so
//                          that get() never loads a word still in this core's
//                          store buffer through another mapping (a store-
//                          forwarding stall no real reader meets).
//
//   BM_paired_*            the target ratios, measured so that a busy machine
//                          cannot skew them: two of the operations above run in
//                          alternating blocks (A B B A ...) of a few microseconds,
//                          each block timed on its own; the counters a_ns and
//                          b_ns are the median ns per call over all blocks and
//                          ratio is b_ns / a_ns. A block the scheduler cut into
//                          is an outlier the median ignores, and both sides see
//                          the same machine at the same moment.
//
// Caches are warm on both sides of every comparison: the copy's source lines
// were last touched by this core, as were memcpy's. The cross-core cost of a
// real writer is what read_scaling_bench measures.
#include "bench_segment.hpp"

#include <tokenshm/reader.hpp>
#include <tokenshm/shm/latch.hpp>

#include <benchmark/benchmark.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <vector>

namespace {

namespace shm = tokenshm::shm;
namespace tb = tokenshm::bench;

const std::vector<std::size_t> kTokenSizes = {64, 1024, 4096};
// bench_record's token_type and scope ("Bearer", "files.write").
constexpr std::size_t kTypeAndScopeBytes = 6 + 11;

struct Fixture {
    tb::BenchSegment seg{tb::unique_segment("read"), kTokenSizes, 2};
    std::optional<shm::ReadOnlySegment> ro;
    std::optional<tokenshm::Reader> reader;

    Fixture() {
        auto r = shm::ReadOnlySegment::open(seg.name(), {});
        if (!r) tb::die(r.error().message);
        ro.emplace(std::move(*r));
        auto rd = tokenshm::Reader::open(seg.name());
        if (!rd) tb::die(rd.error().message);
        reader.emplace(std::move(*rd));
        seg.unlink();  // both mappings are made; lookups need no name
    }

    const shm::SlotControl& slot(std::size_t bytes) const { return *ro->slot(seg.slot(bytes)); }
    // The start of record copy 0 of that slot, in the read-only mapping.
    const std::uint64_t* copy0(std::size_t bytes) const {
        return shm::copy_at(&slot(bytes), ro->geometry().record_size(), 0);
    }
    tokenshm::Handle handle(std::size_t bytes, unsigned twin = 0) const {
        auto h = reader->lookup(tb::slot_name(bytes, twin));
        if (!h) tb::die(h.error().message);
        return std::move(*h);
    }
};

Fixture* g_fx = nullptr;

// A buffer aligned like the shared record copies (cache line).
struct AlignedBuffer {
    explicit AlignedBuffer(std::size_t bytes)
        : p(static_cast<std::uint64_t*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64))) {
        if (p == nullptr) tb::die("aligned_alloc failed");
        std::memset(p, 'x', bytes);
    }
    AlignedBuffer(const AlignedBuffer&) = delete;
    AlignedBuffer& operator=(const AlignedBuffer&) = delete;
    ~AlignedBuffer() { std::free(p); }
    std::uint64_t* p;
};

// One call of each measured operation. The plain and the paired benchmarks
// run the same objects, so both measure the same code.

struct FloorLoadClock {
    const std::atomic<std::uint64_t>& seq = g_fx->slot(1024).seq;
    void operator()() const {
        std::uint64_t s = seq.load(std::memory_order_relaxed);
        struct timespec ts;
        ::clock_gettime(CLOCK_REALTIME_COARSE, &ts);
        benchmark::DoNotOptimize(s);
        benchmark::DoNotOptimize(ts);
    }
};

struct GetUnchanged {
    tokenshm::Handle h = g_fx->handle(1024);
    bool ready() { return static_cast<bool>(h.get()); }
    void operator()() {
        auto t = h.get();
        benchmark::DoNotOptimize(t);
    }
};

struct Memcpy {
    explicit Memcpy(std::size_t n) : bytes(n), src(n), dst(n) {}
    std::size_t bytes;
    AlignedBuffer src, dst;
    void operator()() {
        benchmark::DoNotOptimize(src.p);
        std::memcpy(dst.p, src.p, bytes);
        benchmark::ClobberMemory();
    }
};

struct LatchCopy {
    explicit LatchCopy(std::size_t n) : bytes(n), src(g_fx->copy0(n)), dst(n) {}
    std::size_t bytes;
    const std::uint64_t* src;
    AlignedBuffer dst;
    void operator()() {
        benchmark::DoNotOptimize(src);
        shm::load_words(dst.p, src, bytes / 8);
        benchmark::ClobberMemory();
    }
};

// The least a get() after a change can do for an n-byte token.
struct FloorChanged {
    explicit FloorChanged(std::size_t n)
        : seq(g_fx->slot(n).seq),
          record(shm::record_words(kTypeAndScopeBytes + n) * 8),
          src(record),
          dst(record) {}
    const std::atomic<std::uint64_t>& seq;
    std::size_t record;
    AlignedBuffer src, dst;
    void operator()() {
        std::uint64_t s = seq.load(std::memory_order_relaxed);
        benchmark::DoNotOptimize(s);
        benchmark::DoNotOptimize(src.p);
        std::memcpy(dst.p, src.p, record);
        benchmark::ClobberMemory();
        struct timespec ts;
        ::clock_gettime(CLOCK_REALTIME_COARSE, &ts);
        benchmark::DoNotOptimize(ts);
    }
};

// get() right after a change, on two twin slots read alternately (see the
// file comment).
struct GetChanged {
    explicit GetChanged(std::size_t n)
        : bytes(n),
          h{g_fx->handle(n, 0), g_fx->handle(n, 1)},
          seq{&g_fx->seg.seq(n, 0), &g_fx->seg.seq(n, 1)} {}
    std::size_t bytes;
    tokenshm::Handle h[2];
    std::atomic<std::uint64_t>* seq[2];
    unsigned next = 0;

    void bump(unsigned i) {
        seq[i]->store(seq[i]->load(std::memory_order_relaxed) + 1, std::memory_order_release);
    }
    bool ready() {
        for (tokenshm::Handle& x : h) {
            const auto t = x.get();
            if (!t || t->token().size() != bytes) return false;
        }
        bump(next);
        return true;
    }
    void operator()() {
        // Move the twin on now: it is read by the next call, long after this
        // store has left the store buffer, as a real writer's would have.
        bump(next ^ 1);
        auto t = h[next].get();
        benchmark::DoNotOptimize(t);
        next ^= 1;
    }
    // Each bump must produce a fresh copy: the two copies of a slot carry
    // versions 1 and 2, so two bumps in a row must read both.
    bool recopies() {
        std::uint64_t seen[2] = {};
        for (std::uint64_t& v : seen) {
            bump(0);
            const auto t = h[0].get();
            if (!t || t->token().size() != bytes) return false;
            v = t->version();
        }
        bump(next);  // leave the slot read next one publish ahead, as ready() did
        return seen[0] != seen[1];
    }
};

std::size_t arg(const benchmark::State& state) {
    return static_cast<std::size_t>(state.range(0));
}

void BM_floor_load_clock(benchmark::State& state) {
    FloorLoadClock op;
    for (auto _ : state)
        op();
}
BENCHMARK(BM_floor_load_clock);

void BM_get_unchanged(benchmark::State& state) {
    GetUnchanged op;
    if (!op.ready()) return state.SkipWithError("no valid token");
    for (auto _ : state)
        op();
}
BENCHMARK(BM_get_unchanged)->Arg(1024);

void BM_memcpy(benchmark::State& state) {
    Memcpy op(arg(state));
    for (auto _ : state)
        op();
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * op.bytes));
}
BENCHMARK(BM_memcpy)->Arg(64)->Arg(1024)->Arg(4096);

void BM_latch_copy(benchmark::State& state) {
    LatchCopy op(arg(state));
    for (auto _ : state)
        op();
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * op.bytes));
}
BENCHMARK(BM_latch_copy)->Arg(64)->Arg(1024)->Arg(4096);

void BM_floor_changed(benchmark::State& state) {
    FloorChanged op(arg(state));
    for (auto _ : state)
        op();
}
BENCHMARK(BM_floor_changed)->Arg(64)->Arg(1024)->Arg(4096);

void BM_get_changed(benchmark::State& state) {
    GetChanged op(arg(state));
    if (!op.ready()) return state.SkipWithError("no valid token of the expected size");
    for (auto _ : state)
        op();
    if (!op.recopies()) state.SkipWithError("get() did not re-copy after the seq moved");
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * op.bytes));
}
BENCHMARK(BM_get_changed)->Arg(64)->Arg(1024)->Arg(4096);

// ---------------------------------------------------------------- paired

double median(std::vector<double>& v) {
    const auto mid = v.begin() + static_cast<std::ptrdiff_t>(v.size() / 2);
    std::nth_element(v.begin(), mid, v.end());
    return *mid;
}

// Ns per call of `calls` calls of `op`, by the steady clock (vDSO, no syscall).
template <class Op>
double time_block(Op& op, int calls) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int k = 0; k < calls; ++k)
        op();
    const auto t1 = std::chrono::steady_clock::now();
    return std::chrono::duration<double, std::nano>(t1 - t0).count() / calls;
}

// Each iteration times one block of `a` and one of `b`, in alternating order.
template <class A, class B>
void run_paired(benchmark::State& state, A& a, B& b, int calls) {
    std::vector<double> ta, tb;
    bool a_first = true;
    for (auto _ : state) {
        if (a_first) {
            ta.push_back(time_block(a, calls));
            tb.push_back(time_block(b, calls));
        } else {
            tb.push_back(time_block(b, calls));
            ta.push_back(time_block(a, calls));
        }
        a_first = !a_first;
    }
    if (ta.empty()) return;
    const double ma = median(ta), mb = median(tb);
    state.counters["a_ns"] = ma;
    state.counters["b_ns"] = mb;
    state.counters["ratio"] = mb / ma;
}

// a = floor (load + clock), b = get() unchanged.
void BM_paired_unchanged(benchmark::State& state) {
    FloorLoadClock a;
    GetUnchanged b;
    if (!b.ready()) return state.SkipWithError("no valid token");
    run_paired(state, a, b, 256);
}
BENCHMARK(BM_paired_unchanged);

// a = memcpy of the token size, b = get() right after a change.
void BM_paired_changed_memcpy(benchmark::State& state) {
    Memcpy a(arg(state));
    GetChanged b(arg(state));
    if (!b.ready()) return state.SkipWithError("no valid token of the expected size");
    run_paired(state, a, b, 64);
    if (!b.recopies()) state.SkipWithError("get() did not re-copy after the seq moved");
}
BENCHMARK(BM_paired_changed_memcpy)->Arg(64)->Arg(1024)->Arg(4096);

// a = floor after a change (load + memcpy of the record + clock), b = get()
// right after a change.
void BM_paired_changed_floor(benchmark::State& state) {
    FloorChanged a(arg(state));
    GetChanged b(arg(state));
    if (!b.ready()) return state.SkipWithError("no valid token of the expected size");
    run_paired(state, a, b, 64);
    if (!b.recopies()) state.SkipWithError("get() did not re-copy after the seq moved");
}
BENCHMARK(BM_paired_changed_floor)->Arg(64)->Arg(1024)->Arg(4096);

// a = memcpy, b = the latch's copy of the same size.
void BM_paired_latch_copy(benchmark::State& state) {
    Memcpy a(arg(state));
    LatchCopy b(arg(state));
    run_paired(state, a, b, 64);
}
BENCHMARK(BM_paired_latch_copy)->Arg(64)->Arg(1024)->Arg(4096);

}  // namespace

int main(int argc, char** argv) {
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    Fixture fx;
    g_fx = &fx;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    g_fx = nullptr;
    return 0;
}
