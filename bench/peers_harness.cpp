#include "peers_harness.hpp"

#include <bit>
#include <cmath>

namespace peers {

void die(const std::string& what) {
    std::fprintf(stderr, "bench: %s\n", what.c_str());
    std::exit(1);
}

std::string sys_error(const std::string& what) {
    return what + ": " + std::strerror(errno);
}

namespace {
constexpr char kHex[] = "0123456789abcdef";

void hex16(char* out, std::uint64_t v) noexcept {
    for (int i = 15; i >= 0; --i, v >>= 4)
        out[i] = kHex[v & 15];
}
}  // namespace

void fill_token(char* out, std::size_t bytes, std::uint64_t version) noexcept {
    char chunk[16];
    hex16(chunk, version);
    for (std::size_t i = 0; i < bytes; i += 16)
        std::memcpy(out + i, chunk, std::min<std::size_t>(16, bytes - i));
}

std::string token_of(std::size_t bytes, std::uint64_t version) {
    std::string t(bytes, '\0');
    fill_token(t.data(), bytes, version);
    return t;
}

std::uint64_t token_version(const char* p, std::size_t len) noexcept {
    if (len < 16) return 0;
    std::uint64_t v = 0;
    for (int i = 0; i < 16; ++i) {
        const char* d = std::strchr(kHex, p[i]);
        if (p[i] == '\0' || d == nullptr) return 0;
        v = v << 4 | static_cast<std::uint64_t>(d - kHex);
    }
    return v;
}

bool torn(const char* p, std::size_t len, std::size_t expected_len) noexcept {
    if (len != expected_len) return true;
    if (len < 16) {  // too short to name a version: only its prefix is checked
        return len != 0 && token_version(p, len) != 0;
    }
    if (token_version(p, len) == 0) return true;
    for (std::size_t i = 16; i < len; i += 16)
        if (std::memcmp(p + i, p, std::min<std::size_t>(16, len - i)) != 0) return true;
    return false;
}

int Histogram::index(std::uint64_t ns) noexcept {
    if (ns < kExact) return static_cast<int>(ns);
    const int e = std::bit_width(ns) - 1;  // >= 7
    if (e >= 47) return kBuckets - 1;
    const int sub = static_cast<int>((ns >> (e - 5)) & (kSub - 1));
    return kExact + (e - 7) * kSub + sub;
}

std::uint64_t Histogram::lower(int i) noexcept {
    if (i < kExact) return static_cast<std::uint64_t>(i);
    const int e = (i - kExact) / kSub + 7, sub = (i - kExact) % kSub;
    return static_cast<std::uint64_t>(kSub + sub) << (e - 5);
}

std::uint64_t Histogram::width(int i) noexcept {
    if (i < kExact) return 1;
    return std::uint64_t{1} << ((i - kExact) / kSub + 7 - 5);
}

std::uint64_t Histogram::total() const noexcept {
    std::uint64_t n = 0;
    for (std::uint64_t c : counts_)
        n += c;
    return n;
}

double Histogram::quantile(double q) const noexcept {
    const std::uint64_t n = total();
    if (n == 0) return 0;
    const auto rank = static_cast<std::uint64_t>(std::ceil(q * static_cast<double>(n)));
    std::uint64_t seen = 0;
    for (int i = 0; i < kBuckets; ++i) {
        seen += counts_[i];
        if (seen >= std::max<std::uint64_t>(rank, 1)) {
            if (i < kExact) return static_cast<double>(i);
            return static_cast<double>(lower(i)) + static_cast<double>(width(i)) / 2;
        }
    }
    return static_cast<double>(lower(kBuckets - 1));
}

std::string Histogram::json() const {
    std::string out = "[";
    for (int i = 0; i < kBuckets; ++i) {
        if (counts_[i] == 0) continue;
        if (out.size() > 1) out += ',';
        out += '[' + std::to_string(lower(i)) + ',' + std::to_string(counts_[i]) + ']';
    }
    return out + ']';
}

double calibrate_ticks_per_ns() {
    const std::uint64_t t0 = tick_start();
    const std::int64_t m0 = clock_ns(CLOCK_MONOTONIC);
    struct timespec pause = {0, 20'000'000};
    while (::nanosleep(&pause, &pause) != 0)
        if (errno != EINTR) die(sys_error("nanosleep"));
    const std::uint64_t t1 = tick_start();
    const std::int64_t m1 = clock_ns(CLOCK_MONOTONIC);
    return static_cast<double>(t1 - t0) / static_cast<double>(m1 - m0);
}

double timer_overhead_ns(double ticks_per_ns) {
    std::vector<std::uint64_t> v(20000);
    for (auto& x : v) {
        const std::uint64_t t0 = tick_start();
        x = tick_stop() - t0;
    }
    std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
    return static_cast<double>(v[v.size() / 2]) / ticks_per_ns;
}

}  // namespace peers
