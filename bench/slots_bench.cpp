// What the number of slots costs a reader.
//
//   slots_bench [--repeats N]
//
// For segments of 1, 10, 100 and 1000 slots (each holding a 1 KiB token,
// published with WriterSegment::publish, see bench_segment.hpp), times
//
//   open         Reader::open of the segment (shm_open, fstat, mmap, checks);
//   lookup       Reader::lookup of the LAST slot's name (the longest search);
//   get          Handle::get() with the version unchanged;
//   get_changed  Handle::get() right after a change: the slot's seq bumped as
//                bench_segment.hpp does, so get() copies the record again.
//
// open and lookup are timed one call at a time; the gets in batches of
// kBatch calls (one call is near the clock's own cost). Each figure is the
// median over --repeats (default 200) in ns per call. Prints on stdout
//
//   {"slots":[{"slots":1,"open_ns":..,"lookup_ns":..,"get_ns":..,"get_changed_ns":..},...]}
#include "bench_segment.hpp"

#include <tokenshm/reader.hpp>

#include <time.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

namespace {

namespace tb = tokenshm::bench;

constexpr std::size_t kTokenBytes = 1024;
constexpr int kBatch = 1000;
constexpr unsigned kSlotCounts[] = {1, 10, 100, 1000};

std::int64_t mono_ns() noexcept {
    struct timespec ts;
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    return std::int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

double median(std::vector<double>& v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

double open_ns(const std::string& segment, int repeats) {
    std::vector<double> t;
    for (int i = 0; i < repeats; ++i) {
        const std::int64_t t0 = mono_ns();
        auto r = tokenshm::Reader::open(segment);
        const std::int64_t t1 = mono_ns();
        if (!r) tb::die("open: " + r.error().message);
        t.push_back(static_cast<double>(t1 - t0));
    }
    return median(t);
}

double lookup_ns(const tokenshm::Reader& r, const std::string& name, int repeats) {
    std::vector<double> t;
    for (int i = 0; i < repeats; ++i) {
        const std::int64_t t0 = mono_ns();
        auto h = r.lookup(name);
        const std::int64_t t1 = mono_ns();
        if (!h) tb::die("lookup: " + h.error().message);
        t.push_back(static_cast<double>(t1 - t0));
    }
    return median(t);
}

// ns per get(), median over batches; with `seq`, each get() follows a bump.
double get_ns(tokenshm::Handle& h, std::atomic<std::uint64_t>* seq, int repeats) {
    std::vector<double> t;
    std::uint64_t failed = 0;
    for (int i = 0; i < repeats; ++i) {
        const std::int64_t t0 = mono_ns();
        for (int k = 0; k < kBatch; ++k) {
            if (seq)
                seq->store(seq->load(std::memory_order_relaxed) + 1, std::memory_order_release);
            const auto tok = h.get();
            if (!tok || tok->token().size() != kTokenBytes) ++failed;
        }
        const std::int64_t t1 = mono_ns();
        t.push_back(static_cast<double>(t1 - t0) / kBatch);
    }
    if (failed != 0) tb::die(std::to_string(failed) + " get() calls failed");
    return median(t);
}

std::string measure(unsigned slots, int repeats) {
    tb::BenchSegment seg(tb::unique_segment(("slots" + std::to_string(slots)).c_str()),
                         {kTokenBytes}, slots);
    const std::string last = tb::slot_name(kTokenBytes, slots - 1);
    const double open = open_ns(seg.name(), repeats);
    auto reader = tokenshm::Reader::open(seg.name());
    if (!reader) tb::die("open: " + reader.error().message);
    const double lookup = lookup_ns(*reader, last, repeats);
    auto h = reader->lookup(last);
    if (!h) tb::die("lookup: " + h.error().message);
    const double get = get_ns(*h, nullptr, repeats);
    const double changed = get_ns(*h, &seg.seq(kTokenBytes, slots - 1), repeats);
    char buf[200];
    std::snprintf(buf, sizeof buf,
                  "{\"slots\":%u,\"open_ns\":%.0f,\"lookup_ns\":%.1f,\"get_ns\":%.2f,"
                  "\"get_changed_ns\":%.2f}",
                  slots, open, lookup, get, changed);
    return buf;
}

int parse_repeats(int argc, char** argv) {
    if (argc == 1) return 200;
    char* end = nullptr;
    errno = 0;
    const long n =
        argc == 3 && std::string_view(argv[1]) == "--repeats" ? std::strtol(argv[2], &end, 10) : -1;
    if (n < 1 || n > 100'000 || errno != 0 || *end != '\0') {
        std::fprintf(stderr,
                     "slots_bench: --repeats needs an integer in [1, 100000]\n"
                     "usage: slots_bench [--repeats N]\n");
        std::exit(2);
    }
    return static_cast<int>(n);
}

}  // namespace

int main(int argc, char** argv) {
    const int repeats = parse_repeats(argc, argv);
    std::string out;
    for (unsigned n : kSlotCounts)
        out += (out.empty() ? "" : ",") + measure(n, repeats);
    std::printf("{\"slots\":[%s]}\n", out.c_str());
    return 0;
}
