// Propagation across hosts (issue 12): when each segment first shows each
// access token.
//
//   propagation_probe --credential NAME --seconds S [--pause-us U] SEGMENT...
//
// Maps every SEGMENT read-only through libtokenshm (Reader::open, lookup),
// then loops: Handle::inspect() on each (no syscall; it copies a record only
// when its version changed, and shows it whatever its state), and for a new
// version hashes the token (FNV-1a, 64 bits) and notes CLOCK_MONOTONIC the
// first time that segment shows that hash; then pauses U µs (default 100).
// The segments' versions differ (each host has its own), the token is the
// same: the hash says "the same token", never the token itself.
//
// Prints on stdout one line once every segment is open and read once,
//
//   {"ready":true,"ready_ns":T}
//
// and after S seconds, or on SIGTERM / SIGINT, one JSON document:
//
//   {"segments":N,"passes":P,"tokens":K,"ready_ns":T,"end_ns":E,"seen":[[[k,ns],...],...]}
//
// seen[i] lists, for SEGMENT i in the order given, (k, first-seen ns) where k
// numbers the distinct tokens in the order the probe first saw them anywhere
// (no hash is printed). Tokens a segment showed at attach have ns <= ready_ns:
// they were not seen arriving.
#include <tokenshm/reader.hpp>

#include <signal.h>
#include <time.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace {

std::atomic<bool> g_stop{false};
static_assert(std::atomic<bool>::is_always_lock_free);

extern "C" void on_stop(int) {
    g_stop.store(true, std::memory_order_relaxed);
}

[[noreturn]] void die(const std::string& what) {
    std::fprintf(stderr, "propagation_probe: %s\n", what.c_str());
    std::exit(1);
}

std::int64_t mono_ns() noexcept {
    struct timespec ts;
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    return std::int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

// FNV-1a: enough to tell tokens apart, and what is compared instead of them.
std::uint64_t token_hash(std::string_view token) noexcept {
    std::uint64_t h = 14695981039346656037ull;
    for (const unsigned char c : token) {
        h ^= c;
        h *= 1099511628211ull;
    }
    return h;
}

struct Options {
    std::string credential;
    double seconds = 10;
    long pause_us = 100;
    std::vector<std::string> segments;
};

// One segment under watch: its handle, the last version it showed, and
// (token number, first-seen ns) for each token it showed.
struct Watched {
    tokenshm::Reader reader;
    tokenshm::Handle handle;
    std::uint64_t last_version = 0;
    std::vector<std::pair<std::uint32_t, std::int64_t>> seen;
};

// Numbers distinct tokens by hash, in the order first seen anywhere.
class TokenNumbers {
  public:
    std::uint32_t number(std::uint64_t hash) {
        const auto [it, added] = by_hash_.try_emplace(hash, static_cast<std::uint32_t>(size_));
        if (added) ++size_;
        return it->second;
    }
    std::size_t size() const noexcept { return size_; }

  private:
    std::unordered_map<std::uint64_t, std::uint32_t> by_hash_;
    std::size_t size_ = 0;
};

Watched attach(const std::string& segment, const std::string& credential) {
    auto reader = tokenshm::Reader::open(segment);
    if (!reader) die("open " + segment + ": " + reader.error().message);
    auto handle = reader->lookup(credential);
    if (!handle) die("lookup " + credential + " in " + segment + ": " + handle.error().message);
    return Watched{std::move(*reader), std::move(*handle), 0, {}};
}

// Looks at one segment once; notes a token it shows for the first time.
void look(Watched& w, TokenNumbers& numbers, std::int64_t now) {
    const auto t = w.handle.inspect();
    if (!t) die(std::string("inspect ") + w.handle.name() + ": " + tokenshm::to_string(t.error()));
    if (t->version() == w.last_version || t->token().empty()) return;
    w.last_version = t->version();
    const std::uint32_t k = numbers.number(token_hash(t->token()));
    for (const auto& [seen_k, ns] : w.seen)
        if (seen_k == k) return;  // republished (state change): the same token
    w.seen.emplace_back(k, now);
}

void pass(std::vector<Watched>& all, TokenNumbers& numbers) {
    for (Watched& w : all)
        look(w, numbers, mono_ns());
}

std::string report(const std::vector<Watched>& all, std::size_t passes, std::size_t tokens,
                   std::int64_t ready_ns, std::int64_t end_ns) {
    std::string out =
        "{\"segments\":" + std::to_string(all.size()) + ",\"passes\":" + std::to_string(passes) +
        ",\"tokens\":" + std::to_string(tokens) + ",\"ready_ns\":" + std::to_string(ready_ns) +
        ",\"end_ns\":" + std::to_string(end_ns) + ",\"seen\":[";
    for (std::size_t i = 0; i < all.size(); ++i) {
        out += i ? ",[" : "[";
        for (std::size_t j = 0; j < all[i].seen.size(); ++j) {
            if (j) out += ',';
            out += '[' + std::to_string(all[i].seen[j].first) + ',' +
                   std::to_string(all[i].seen[j].second) + ']';
        }
        out += ']';
    }
    return out + "]}";
}

[[noreturn]] void usage(const std::string& why) {
    std::fprintf(stderr,
                 "propagation_probe: %s\nusage: propagation_probe --credential NAME --seconds S "
                 "[--pause-us U] SEGMENT...\n",
                 why.c_str());
    std::exit(2);
}

double number(const char* flag, const char* v, double lo, double hi) {
    char* end = nullptr;
    errno = 0;
    const double d = std::strtod(v, &end);
    if (errno != 0 || end == v || *end != '\0' || !(d >= lo && d <= hi))
        usage(std::string(flag) + ": not a number in range: " + std::string(v).substr(0, 40));
    return d;
}

Options parse(int argc, char** argv) {
    Options o;
    for (int i = 1; i < argc; ++i) {
        const std::string_view a = argv[i];
        const bool has = i + 1 < argc;
        if (a == "--credential" && has) {
            o.credential = argv[++i];
        } else if (a == "--seconds" && has) {
            o.seconds = number("--seconds", argv[++i], 0.1, 3600);
        } else if (a == "--pause-us" && has) {
            o.pause_us = static_cast<long>(number("--pause-us", argv[++i], 0, 100'000));
        } else if (!a.empty() && a[0] == '-') {
            usage("unknown or incomplete argument: " + std::string(a));
        } else {
            o.segments.emplace_back(a);
        }
    }
    if (o.credential.empty() || o.segments.empty()) usage("needs --credential and a SEGMENT");
    return o;
}

}  // namespace

int main(int argc, char** argv) {
    const Options o = parse(argc, argv);
    struct sigaction sa {};
    sa.sa_handler = on_stop;
    ::sigemptyset(&sa.sa_mask);
    if (::sigaction(SIGTERM, &sa, nullptr) != 0 || ::sigaction(SIGINT, &sa, nullptr) != 0)
        die(std::string("sigaction: ") + std::strerror(errno));
    std::vector<Watched> all;
    all.reserve(o.segments.size());
    for (const std::string& s : o.segments)
        all.push_back(attach(s, o.credential));
    TokenNumbers numbers;
    pass(all, numbers);
    const std::int64_t ready_ns = mono_ns();
    std::printf("{\"ready\":true,\"ready_ns\":%lld}\n", static_cast<long long>(ready_ns));
    std::fflush(stdout);
    const std::int64_t end = ready_ns + static_cast<std::int64_t>(o.seconds * 1e9);
    const struct timespec pause = {0, o.pause_us * 1000};
    std::size_t passes = 1;
    while (!g_stop.load(std::memory_order_relaxed) && mono_ns() < end) {
        if (o.pause_us > 0) ::nanosleep(&pause, nullptr);  // EINTR: a stop signal, looked at next
        pass(all, numbers);
        ++passes;
    }
    const std::string out = report(all, passes, numbers.size(), ready_ns, mono_ns());
    if (std::printf("%s\n", out.c_str()) < 0 || std::fflush(stdout) != 0)
        die(std::string("stdout: ") + std::strerror(errno));
    return 0;
}
