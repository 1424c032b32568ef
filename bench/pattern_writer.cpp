// The writer behind python_read_bench.py's segment and file methods.
//
//   pattern_writer segment NAME TOKEN_BYTES none|b2b
//   pattern_writer file PATH TOKEN_BYTES none|b2b
//
// segment: creates segment NAME with one slot "bench" and publishes it with
// WriterSegment::publish, the refresher's own call; file: writes PATH the way
// Vault Agent's sink does, a temporary file renamed over it. The token of
// version v is v as 16 hex digits repeated to TOKEN_BYTES, so a reader that
// finds bytes of two versions in one read sees it (torn). Publishes version 1,
// prints "ready <pid>", then with b2b publishes versions 2, 3, ... back to
// back, with none only keeps the heartbeat, until SIGTERM or SIGINT (also
// sent when the parent dies); then
// removes what it created and prints {"publishes":N,"seconds":S}.
// Exit 0, 1 when a syscall fails, 2 on usage errors.
#include "bench_segment.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>

namespace {

namespace shm = tokenshm::shm;
namespace tb = tokenshm::bench;

[[noreturn]] void usage(const char* why) {
    std::fprintf(stderr,
                 "pattern_writer: %s\nusage: pattern_writer segment NAME|file PATH TOKEN_BYTES "
                 "none|b2b\n",
                 why);
    std::exit(2);
}

[[noreturn]] void die_errno(const std::string& what) {
    tb::die(what + ": " + std::strerror(errno));
}

// v as 16 lowercase hex digits, repeated to `bytes` (the last copy cut short).
std::string pattern_token(std::uint64_t v, std::size_t bytes) {
    char hex[17];
    std::snprintf(hex, sizeof hex, "%016" PRIx64, v);
    std::string t(bytes, '0');
    for (std::size_t i = 0; i < bytes; ++i)
        t[i] = hex[i % 16];
    return t;
}

std::int64_t monotonic_ns() {
    struct timespec ts;
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    return std::int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

// One slot "bench" in a segment of its own, unlinked when this dies.
class SegmentSink {
  public:
    explicit SegmentSink(const std::string& name) {
        shm::SegmentSpec spec;
        spec.name = name;
        spec.slot_count = 1;
        auto w = shm::WriterSegment::create_or_attach(spec);
        if (!w) tb::die(w.error().message);
        writer_.emplace(std::move(*w));
        auto slot = writer_->claim("bench");
        if (!slot) {
            writer_->unlink();
            tb::die(slot.error().message);
        }
        slot_ = *slot;
    }
    ~SegmentSink() { writer_->unlink(); }
    void publish(std::uint64_t v, const std::string& token) {
        const auto e = writer_->publish(slot_, tb::bench_record(v, token));
        if (!e) tb::die(std::string("publish: ") + shm::to_string(e.error()));
    }
    void heartbeat() { writer_->heartbeat(shm::sys::realtime_ms()); }

  private:
    std::optional<shm::WriterSegment> writer_;
    std::uint32_t slot_ = 0;
};

// PATH, replaced whole by write-temporary-then-rename; removed when this dies.
class FileSink {
  public:
    explicit FileSink(std::string path) : path_(std::move(path)), tmp_(path_ + ".tmp") {}
    ~FileSink() {
        (void)::unlink(tmp_.c_str());
        (void)::unlink(path_.c_str());
    }
    void publish(std::uint64_t, const std::string& token) {
        const int fd = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0) die_errno("open " + tmp_);
        std::size_t done = 0;
        while (done < token.size()) {
            const ssize_t n = ::write(fd, token.data() + done, token.size() - done);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) die_errno("write " + tmp_);
            done += static_cast<std::size_t>(n);
        }
        if (::close(fd) != 0) die_errno("close " + tmp_);
        if (::rename(tmp_.c_str(), path_.c_str()) != 0) die_errno("rename " + tmp_);
    }
    void heartbeat() {}

  private:
    std::string path_, tmp_;
};

// True once SIGTERM or SIGINT (blocked) is pending; waits up to `wait_s`.
bool stop_requested(const sigset_t& stop, long wait_s) {
    struct timespec t {
        wait_s, 0
    };
    const int sig = ::sigtimedwait(&stop, nullptr, &t);
    if (sig < 0 && errno != EAGAIN && errno != EINTR) die_errno("sigtimedwait");
    return sig == SIGTERM || sig == SIGINT;
}

// Publishes until stopped; returns the number of publishes after the first.
template <class Sink>
std::uint64_t run(Sink& sink, std::size_t bytes, bool b2b, const sigset_t& stop) {
    sink.publish(1, pattern_token(1, bytes));
    std::printf("ready %d\n", static_cast<int>(::getpid()));
    std::fflush(stdout);
    std::uint64_t v = 1;
    std::int64_t beat = monotonic_ns();
    for (;;) {
        if (b2b) {
            for (int k = 0; k < 64; ++k) {
                ++v;
                sink.publish(v, pattern_token(v, bytes));
            }
        }
        if (monotonic_ns() - beat > 500'000'000) {
            sink.heartbeat();
            beat = monotonic_ns();
        }
        if (stop_requested(stop, b2b ? 0 : 1)) return v - 1;
    }
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 5) usage("wrong number of arguments");
    const std::string_view kind = argv[1], writer = argv[4];
    std::size_t bytes = 0;
    const std::string_view b = argv[3];
    const auto [end, ec] = std::from_chars(b.data(), b.data() + b.size(), bytes);
    if (ec != std::errc{} || end != b.data() + b.size() || bytes < 16 || bytes > 8192)
        usage("TOKEN_BYTES must be an integer in [16, 8192]");
    if (writer != "none" && writer != "b2b") usage("the writer must be none or b2b");
    if (kind != "segment" && kind != "file") usage("the sink must be segment or file");

    // Blocked before anything is created, so no stop signal is lost meanwhile.
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    if (::sigprocmask(SIG_BLOCK, &stop, nullptr) != 0) die_errno("sigprocmask");
    // A bench killed before it could stop us must not leave a writer spinning.
    if (::prctl(PR_SET_PDEATHSIG, SIGTERM) != 0) die_errno("prctl PR_SET_PDEATHSIG");

    const std::int64_t t0 = monotonic_ns();
    std::uint64_t publishes = 0;
    if (kind == "segment") {
        SegmentSink sink(argv[2]);
        publishes = run(sink, bytes, writer == "b2b", stop);
    } else {
        FileSink sink(argv[2]);
        publishes = run(sink, bytes, writer == "b2b", stop);
    }
    std::printf("{\"publishes\":%" PRIu64 ",\"seconds\":%.3f}\n", publishes,
                static_cast<double>(monotonic_ns() - t0) / 1e9);
    return 0;
}
