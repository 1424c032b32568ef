// A self check of peers_bench's measuring pieces (no test framework): the
// histogram's buckets and quantiles, and the torn-read pattern. Each check
// names the mistake it catches; exits 1 on the first failure.
#include "peers_harness.hpp"

#include <cstdio>
#include <string>

namespace {

int failures = 0;

void expect(bool ok, const char* what) {
    if (ok) return;
    std::fprintf(stderr, "peers_harness_check: FAILED: %s\n", what);
    ++failures;
}

// Every value lands in a bucket that holds it, at most 1/32 wide (3.1 %).
void check_buckets() {
    using peers::Histogram;
    bool holds = true, narrow = true, ordered = true;
    for (std::uint64_t v = 0; v < (std::uint64_t{1} << 40); v = v < 4096 ? v + 1 : v * 9 / 8) {
        const int i = Histogram::index(v);
        holds &= Histogram::lower(i) <= v && v < Histogram::lower(i) + Histogram::width(i);
        narrow &=
            v < 128 ? Histogram::width(i) == 1 : Histogram::width(i) * 32 <= Histogram::lower(i);
        ordered &= i == 0 || Histogram::lower(i - 1) < Histogram::lower(i);
    }
    expect(holds, "a value outside its bucket (index/lower disagree)");
    expect(narrow, "a bucket wider than 1 ns below 128 or 1/32 above");
    expect(ordered, "buckets out of order");
}

void check_quantiles() {
    peers::Histogram h;
    for (int i = 0; i < 990; ++i)
        h.add(10);
    for (int i = 0; i < 10; ++i)
        h.add(100'000);
    expect(h.quantile(0.5) == 10, "median of 990 x 10 ns and 10 x 100 us is not 10");
    expect(h.quantile(0.99) == 10, "p99 counts the 1 % tail in (rank off by one)");
    const double p999 = h.quantile(0.999);
    expect(p999 > 97'000 && p999 < 103'000, "p99.9 not within 3 % of 100 us");
    expect(h.total() == 1000, "samples lost");
}

void check_torn() {
    const std::string a = peers::token_of(1024, 41), b = peers::token_of(1024, 42);
    expect(!peers::torn(a.data(), a.size(), 1024), "a whole token called torn");
    expect(peers::token_version(a.data(), a.size()) == 41, "version not read back");
    std::string mixed = a;
    mixed.replace(512, 512, b, 512, 512);  // the second half from the next version
    expect(peers::torn(mixed.data(), mixed.size(), 1024), "half of each version not seen");
    std::string last = a;
    last[1023] = b[1023] == last[1023] ? 'x' : b[1023];
    expect(peers::torn(last.data(), last.size(), 1024), "a torn last byte not seen");
    expect(peers::torn(a.data(), 1000, 1024), "a short read not seen");
    const std::string small = peers::token_of(64, 7);
    expect(!peers::torn(small.data(), 64, 64), "a 64-byte token called torn");
}

}  // namespace

int main() {
    check_buckets();
    check_quantiles();
    check_torn();
    if (failures == 0) std::printf("peers_harness_check: ok\n");
    return failures == 0 ? 0 : 1;
}
