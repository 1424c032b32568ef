// A minimal writer for the cross-language tests (C ABI, Python, CLI):
//
//   publisher SEGMENT NAME TOKEN TTL_MS [--hold SECONDS] [--version N]
//             [--empty] [--publish-on-stdin] [--state STATE] [--mode OCTAL]
//             [--last-error TEXT] [--no-times]
//
// Creates (or re-attaches to) SEGMENT, claims NAME and publishes TOKEN valid
// for TTL_MS (negative: already expired), then prints "ready <pid>" on stdout.
// --empty leaves the slot empty; --publish-on-stdin publishes only after a
// line arrives on stdin (then prints "published <version>"). --hold keeps the
// segment (with a heartbeat) for SECONDS or until SIGTERM/SIGINT. The segment
// is unlinked at exit. Exit 0 on success, 2 on usage errors, 1 otherwise.
#include <tokenshm/shm/segment.hpp>

#include <signal.h>
#include <time.h>

#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <optional>
#include <string>
#include <string_view>

namespace shm = tokenshm::shm;

namespace {

int usage(const char* why) {
    std::fprintf(stderr,
                 "publisher: %s\nusage: publisher SEGMENT NAME TOKEN TTL_MS [--hold SECONDS] "
                 "[--version N] [--empty] [--publish-on-stdin] [--state STATE] [--mode OCTAL] "
                 "[--last-error TEXT] [--no-times]\n",
                 why);
    return 2;
}

template <class T>
bool parse(std::string_view s, T& out, int base = 10) {
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out, base);
    return ec == std::errc{} && p == s.data() + s.size();
}

std::optional<shm::RecordState> parse_state(std::string_view s) {
    for (auto st : {shm::RecordState::empty, shm::RecordState::valid, shm::RecordState::stale,
                    shm::RecordState::expired, shm::RecordState::reauth})
        if (s == shm::to_string(st)) return st;
    return std::nullopt;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 5) return usage("too few arguments");
    const std::string segment = argv[1];
    const std::string name = argv[2];
    const std::string token = argv[3];
    std::int64_t ttl_ms = 0;
    if (!parse(argv[4], ttl_ms)) return usage("TTL_MS is not an integer");
    long hold_s = 0;
    std::optional<std::uint64_t> version;
    bool empty = false;
    bool on_stdin = false;
    shm::RecordState state = shm::RecordState::valid;
    unsigned mode = 0600;
    std::string last_error;
    bool no_times = false;  // a record that never had a token: every time 0
    for (int i = 5; i < argc; ++i) {
        const std::string_view a = argv[i];
        const bool has_value = i + 1 < argc;
        if (a == "--hold" && has_value) {
            if (!parse(argv[++i], hold_s) || hold_s < 0) return usage("bad --hold");
        } else if (a == "--version" && has_value) {
            std::uint64_t v = 0;
            if (!parse(argv[++i], v)) return usage("bad --version");
            version = v;
        } else if (a == "--state" && has_value) {
            auto s = parse_state(argv[++i]);
            if (!s) return usage("bad --state");
            state = *s;
        } else if (a == "--mode" && has_value) {
            if (!parse(argv[++i], mode, 8)) return usage("bad --mode");
        } else if (a == "--last-error" && has_value) {
            last_error = argv[++i];
        } else if (a == "--no-times") {
            no_times = true;
        } else if (a == "--empty") {
            empty = true;
        } else if (a == "--publish-on-stdin") {
            on_stdin = true;
        } else {
            return usage("unknown argument");
        }
    }

    // Block the stop signals before anything else, so none is lost while setting up.
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    sigprocmask(SIG_BLOCK, &stop, nullptr);

    shm::SegmentSpec spec;
    spec.name = segment;
    spec.mode = static_cast<mode_t>(mode);
    auto w = shm::WriterSegment::create_or_attach(spec);
    if (!w) {
        std::fprintf(stderr, "publisher: %s\n", w.error().message.c_str());
        return 1;
    }
    auto slot = w->claim(name);
    if (!slot) {
        std::fprintf(stderr, "publisher: %s\n", slot.error().message.c_str());
        w->unlink();
        return 1;
    }

    std::vector<std::uint64_t> scratch;
    const auto current = w->current(*slot, scratch);
    const std::uint64_t next = version ? *version : (current ? current->version : 0) + 1;
    auto publish = [&]() -> bool {
        shm::SlotRecord r;
        r.version = next;
        r.state = state;
        r.token = token;
        r.token_type = "Bearer";
        r.scope = "test.scope";
        r.issued_at_ms = shm::sys::realtime_ms();
        r.expires_at_ms = r.issued_at_ms + ttl_ms;
        r.next_refresh_ms = r.issued_at_ms + ttl_ms / 2;
        r.last_error = last_error;
        if (no_times) r.issued_at_ms = r.expires_at_ms = r.next_refresh_ms = 0;
        const auto e = w->publish(*slot, r);
        if (!e) {
            std::fprintf(stderr, "publisher: %s\n", shm::to_string(e.error()));
            return false;
        }
        return true;
    };

    int rc = 0;
    if (!empty && !on_stdin && !publish()) rc = 1;
    if (rc == 0) {
        std::printf("ready %d\n", static_cast<int>(::getpid()));
        std::fflush(stdout);
    }
    if (rc == 0 && on_stdin) {
        std::string line;
        if (!std::getline(std::cin, line)) {
            rc = 1;
        } else if (!publish()) {
            rc = 1;
        } else {
            std::printf("published %llu\n", static_cast<unsigned long long>(next));
            std::fflush(stdout);
        }
    }
    if (rc == 0 && hold_s > 0) {
        struct timespec start {};
        clock_gettime(CLOCK_MONOTONIC, &start);
        for (;;) {
            struct timespec now {};
            clock_gettime(CLOCK_MONOTONIC, &now);
            if (now.tv_sec - start.tv_sec >= hold_s) break;
            w->heartbeat(shm::sys::realtime_ms());
            struct timespec one_second {
                1, 0
            };
            const int sig = sigtimedwait(&stop, nullptr, &one_second);
            if (sig == SIGTERM || sig == SIGINT) break;
        }
    }
    w->unlink();
    return rc;
}
