// Shared scaffolding for the segment tests: unique segment names that are
// always unlinked, pipes, forked children that are always reaped, and the
// synthetic checksummed records the torn-read tests publish and verify.
#pragma once

#include <tokenshm/reader.hpp>
#include <tokenshm/shm/posix.hpp>
#include <tokenshm/shm/record.hpp>
#include <tokenshm/shm/segment.hpp>

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

namespace segtest {

namespace shm = tokenshm::shm;

// Removes segments that earlier test processes left behind when they were
// killed (a timeout's SIGKILL runs no destructor): "tokenshm-test-...-<pid>"
// or "...-<pid>-<n>" whose process is gone and which nobody touched for 15
// minutes (longer than any test runs, so a live test elsewhere is safe).
inline void sweep_stale_segments() {
    DIR* dir = ::opendir("/dev/shm");
    if (dir == nullptr) return;
    const std::int64_t now = ::time(nullptr);
    while (const struct dirent* e = ::readdir(dir)) {
        const std::string_view name = e->d_name;
        if (name.substr(0, 14) != "tokenshm-test-") continue;
        // The pid is the last all-digit component, or the one before it.
        auto numeric = [](std::string_view c) {
            return !c.empty() && c.find_first_not_of("0123456789") == std::string_view::npos;
        };
        std::string_view rest = name;
        const std::size_t last = rest.rfind('-');
        std::string_view pid_part = rest.substr(last + 1);
        const std::size_t prev = rest.rfind('-', last - 1);
        const std::string_view before = rest.substr(prev + 1, last - prev - 1);
        if (numeric(pid_part) && numeric(before)) pid_part = before;
        if (!numeric(pid_part) || pid_part.size() > 9) continue;
        const pid_t pid = static_cast<pid_t>(std::stol(std::string(pid_part)));
        if (pid <= 0 || ::kill(pid, 0) == 0 || errno != ESRCH) continue;
        struct stat st {};
        const std::string path = "/dev/shm/" + std::string(name);
        if (::stat(path.c_str(), &st) != 0 || now - st.st_mtime < 15 * 60) continue;
        (void)::shm_unlink(("/" + std::string(name)).c_str());
    }
    ::closedir(dir);
}

// "tokenshm-test-<tag>-<pid>-<n>": unique per process and per call.
inline std::string unique_segment(const char* tag) {
    static const bool swept = (sweep_stale_segments(), true);
    (void)swept;
    static std::atomic<unsigned> counter{0};
    return std::string("tokenshm-test-") + tag + "-" + std::to_string(::getpid()) + "-" +
           std::to_string(counter.fetch_add(1));
}

// Removes the segment's name when the test ends, whatever happens.
struct SegmentGuard {
    std::string name;
    SegmentGuard() = default;
    explicit SegmentGuard(std::string n) : name(std::move(n)) {}
    SegmentGuard(const SegmentGuard&) = delete;
    SegmentGuard& operator=(const SegmentGuard&) = delete;
    ~SegmentGuard() {
        if (!name.empty()) (void)::shm_unlink(("/" + name).c_str());
    }
};

inline shm::SegmentSpec spec(const std::string& name, std::uint32_t max_token_bytes = 8192,
                             std::uint32_t slot_count = 4) {
    shm::SegmentSpec s;
    s.name = name;
    s.max_token_bytes = max_token_bytes;
    s.slot_count = slot_count;
    return s;
}

// A new one-slot segment whose slot "c" holds `first` (when given). `w` is
// empty and `error` says why when a step fails: test with REQUIRE(x.w).
struct OneSlotWriter {
    std::optional<shm::WriterSegment> w;
    std::uint32_t slot = 0;
    std::string error;
};
inline OneSlotWriter one_slot_writer(const std::string& name, std::uint32_t max_token_bytes,
                                     const shm::SlotRecord* first = nullptr) {
    OneSlotWriter out;
    auto w = shm::WriterSegment::create_or_attach(spec(name, max_token_bytes, 1));
    if (!w) {
        out.error = w.error().message;
        return out;
    }
    const auto slot = w->claim("c");
    if (!slot) {
        out.error = slot.error().message;
        return out;
    }
    if (first != nullptr) {
        if (const auto e = w->publish(*slot, *first); !e) {
            out.error = std::string("publish: ") + shm::to_string(e.error());
            return out;
        }
    }
    out.slot = *slot;
    out.w.emplace(std::move(*w));
    return out;
}

// A valid Bearer record for `token` (a view: the caller keeps it alive),
// issued now and valid for `valid_ms`.
inline shm::SlotRecord token_record(std::uint64_t version, std::string_view token,
                                    std::int64_t valid_ms = 3'600'000) {
    shm::SlotRecord r;
    r.version = version;
    r.state = shm::RecordState::valid;
    r.token = token;
    r.token_type = "Bearer";
    r.issued_at_ms = shm::sys::realtime_ms();
    r.expires_at_ms = r.issued_at_ms + valid_ms;
    return r;
}

inline std::int64_t monotonic_ns() {
    struct timespec ts {};
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    return std::int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

// ------------------------------------------------------------------ pipes

inline bool write_all(int fd, const void* data, std::size_t n) {
    const char* p = static_cast<const char*>(data);
    while (n > 0) {
        const ssize_t w = ::write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return false;
        p += w;
        n -= static_cast<std::size_t>(w);
    }
    return true;
}

// Reads exactly `n` bytes, giving up at `timeout` or EOF. Returns the bytes read.
inline std::size_t read_exact(int fd, void* data, std::size_t n,
                              std::chrono::milliseconds timeout) {
    char* p = static_cast<char*>(data);
    std::size_t got = 0;
    const std::int64_t deadline = monotonic_ns() + timeout.count() * 1'000'000;
    while (got < n) {
        const std::int64_t left_ms = (deadline - monotonic_ns()) / 1'000'000;
        if (left_ms <= 0) break;
        struct pollfd pfd {
            fd, POLLIN, 0
        };
        const int rc = ::poll(&pfd, 1, static_cast<int>(left_ms));
        if (rc < 0 && errno == EINTR) continue;
        if (rc <= 0) break;
        const ssize_t r = ::read(fd, p + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got += static_cast<std::size_t>(r);
    }
    return got;
}

class Pipe {
  public:
    Pipe() {
        int fds[2];
        if (::pipe2(fds, O_CLOEXEC) != 0) std::terminate();
        rd_ = fds[0];
        wr_ = fds[1];
    }
    Pipe(const Pipe&) = delete;
    Pipe& operator=(const Pipe&) = delete;
    ~Pipe() {
        close_read();
        close_write();
    }
    int rd() const noexcept { return rd_; }
    int wr() const noexcept { return wr_; }
    void close_read() noexcept {
        if (rd_ >= 0) ::close(std::exchange(rd_, -1));
    }
    void close_write() noexcept {
        if (wr_ >= 0) ::close(std::exchange(wr_, -1));
    }

  private:
    int rd_ = -1;
    int wr_ = -1;
};

// ------------------------------------------------------------------ children

// A forked child that is always reaped: the destructor SIGKILLs and waits for
// it if the test did not, so a failing assertion leaves no orphan behind.
class Child {
  public:
    // Runs `body` (returning the exit status) in a child process. The child
    // never returns into the test framework: it leaves through _exit.
    template <class F>
    static Child fork(F&& body) {
        std::fflush(stdout);
        std::fflush(stderr);
        const pid_t pid = ::fork();
        if (pid < 0) std::terminate();
        if (pid == 0) {
            // The test framework's crash handlers must not run in the child:
            // a fault there is the child's outcome, reported by its status.
            for (int sig : {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGSYS, SIGTERM, SIGINT})
                ::signal(sig, SIG_DFL);
            int rc = 111;
            try {
                rc = body();
            } catch (...) {
                rc = 112;
            }
            ::_exit(rc);
        }
        return Child(pid);
    }

    explicit Child(pid_t pid) : pid_(pid) {
        pidfd_ = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
    }
    Child(Child&& o) noexcept
        : pid_(std::exchange(o.pid_, -1)),
          pidfd_(std::exchange(o.pidfd_, -1)),
          status_(o.status_) {}
    Child& operator=(Child&&) = delete;
    Child(const Child&) = delete;
    ~Child() {
        if (pid_ > 0) {
            ::kill(pid_, SIGKILL);
            int st = 0;
            while (::waitpid(pid_, &st, 0) < 0 && errno == EINTR) {
            }
        }
        if (pidfd_ >= 0) ::close(pidfd_);
    }

    pid_t pid() const noexcept { return pid_ > 0 ? pid_ : reaped_pid_; }
    bool running() const noexcept { return pid_ > 0; }
    void kill(int sig) const noexcept {
        if (pid_ > 0) ::kill(pid_, sig);
    }

    // Waits for the child to end, at most `timeout`. Returns false (child still
    // running) on timeout; the destructor then kills it.
    bool wait(std::chrono::milliseconds timeout = std::chrono::seconds(60)) {
        if (pid_ <= 0) return true;
        if (pidfd_ >= 0) {
            struct pollfd pfd {
                pidfd_, POLLIN, 0
            };
            const std::int64_t deadline = monotonic_ns() + timeout.count() * 1'000'000;
            for (;;) {
                const std::int64_t left_ms = (deadline - monotonic_ns()) / 1'000'000;
                if (left_ms <= 0) return false;
                const int rc = ::poll(&pfd, 1, static_cast<int>(left_ms));
                if (rc > 0) break;
                if (rc < 0 && errno != EINTR) return false;
            }
        }
        int st = 0;
        pid_t r;
        while ((r = ::waitpid(pid_, &st, 0)) < 0 && errno == EINTR) {
        }
        if (r != pid_) return false;
        status_ = st;
        reaped_pid_ = pid_;
        pid_ = -1;
        return true;
    }

    int status() const noexcept { return status_; }
    bool exited_with(int code) const noexcept {
        return pid_ <= 0 && WIFEXITED(status_) && WEXITSTATUS(status_) == code;
    }
    bool killed_by(int sig) const noexcept {
        return pid_ <= 0 && WIFSIGNALED(status_) && WTERMSIG(status_) == sig;
    }
    std::string describe() const {
        if (pid_ > 0) return "still running";
        if (WIFEXITED(status_)) return "exited " + std::to_string(WEXITSTATUS(status_));
        if (WIFSIGNALED(status_)) return std::string("killed by ") + ::strsignal(WTERMSIG(status_));
        return "status " + std::to_string(status_);
    }

  private:
    pid_t pid_ = -1;
    pid_t reaped_pid_ = -1;
    int pidfd_ = -1;
    int status_ = 0;
};

// ------------------------------------------------------------------ raw access

// A second, read-write mapping of a segment by its /dev/shm name, for tests
// that corrupt a segment the way a hostile or buggy process could.
class RawSegment {
  public:
    explicit RawSegment(const std::string& name) {
        fd_ = ::shm_open(("/" + name).c_str(), O_RDWR | O_CLOEXEC, 0);
        if (fd_ < 0) return;
        remap();
    }
    RawSegment(const RawSegment&) = delete;
    RawSegment& operator=(const RawSegment&) = delete;
    ~RawSegment() {
        unmap();
        if (fd_ >= 0) ::close(fd_);
    }
    bool ok() const noexcept { return addr_ != nullptr; }
    std::size_t size() const noexcept { return len_; }
    char* bytes() const noexcept { return static_cast<char*>(addr_); }
    int fd() const noexcept { return fd_; }

    template <class T>
    T get(std::size_t off) const {
        T v;
        std::memcpy(&v, bytes() + off, sizeof v);
        return v;
    }
    template <class T>
    void put(std::size_t off, T v) {
        std::memcpy(bytes() + off, &v, sizeof v);
    }
    bool truncate(off_t len) {
        unmap();
        const bool ok = ::ftruncate(fd_, len) == 0;
        remap();
        return ok;
    }

  private:
    void remap() {
        struct stat st {};
        if (::fstat(fd_, &st) != 0 || st.st_size == 0) return;
        void* p = ::mmap(nullptr, static_cast<std::size_t>(st.st_size), PROT_READ | PROT_WRITE,
                         MAP_SHARED, fd_, 0);
        if (p == MAP_FAILED) return;
        addr_ = p;
        len_ = static_cast<std::size_t>(st.st_size);
    }
    void unmap() {
        if (addr_ != nullptr) ::munmap(addr_, len_);
        addr_ = nullptr;
        len_ = 0;
    }
    int fd_ = -1;
    void* addr_ = nullptr;
    std::size_t len_ = 0;
};

// Path of a built artefact, from $TOKENSHM_BUILD_DIR (set by meson's test_env).
inline std::string build_path(const char* rel) {
    const char* dir = std::getenv("TOKENSHM_BUILD_DIR");
    return std::string(dir != nullptr ? dir : ".") + "/" + rel;
}

// ------------------------------------------------------------------ synthetic records
//
// Record `version` is a pure function of the version: a token of a length the
// version picks (between kMinSynthToken and the test's cap), "v=<hex version>;"
// then bytes from a PRNG seeded with the version, then "#<hex FNV-1a of all
// bytes before '#'>". The scope, last_error and fixed fields derive from the
// version too, so a reader can check every byte of whatever it copied.

inline constexpr std::size_t kMinSynthToken = 40;
inline constexpr std::int64_t kFarFutureMs = 4'102'444'800'000;  // 2100-01-01

inline std::uint64_t splitmix64(std::uint64_t& s) {
    std::uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

inline std::uint64_t fnv1a(std::string_view s) {
    std::uint64_t h = 0xcbf29ce484222325ull;
    for (char c : s) {
        h ^= static_cast<unsigned char>(c);
        h *= 0x100000001b3ull;
    }
    return h;
}

inline void put_hex(char* out, std::uint64_t v) {
    static const char kHex[] = "0123456789abcdef";
    for (int i = 15; i >= 0; --i, v >>= 4)
        out[i] = kHex[v & 15];
}

inline bool parse_hex(std::string_view s, std::uint64_t& v) {
    if (s.size() != 16) return false;
    v = 0;
    for (char c : s) {
        int d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else
            return false;
        v = (v << 4) | static_cast<unsigned>(d);
    }
    return true;
}

inline std::size_t synth_token_len(std::uint64_t version, std::size_t cap) {
    std::uint64_t s = version ^ 0xA5A5A5A5A5A5A5A5ull;
    return kMinSynthToken + splitmix64(s) % (cap - kMinSynthToken + 1);
}

// The strings a record refers to; reuse one per writer so publishing allocates
// nothing after warm-up.
struct SynthRecord {
    std::string token;
    std::string scope;
    std::string last_error;
    shm::SlotRecord rec;
};

inline void make_synth(std::uint64_t version, std::size_t cap, SynthRecord& out) {
    static const char kAlphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const std::size_t len = synth_token_len(version, cap);
    out.token.assign(len, '\0');
    char* t = out.token.data();
    t[0] = 'v';
    t[1] = '=';
    put_hex(t + 2, version);
    t[18] = ';';
    std::uint64_t s = version;
    for (std::size_t i = 19; i < len - 17; ++i)
        t[i] = kAlphabet[splitmix64(s) & 63];
    const std::uint64_t h = fnv1a(std::string_view(t, len - 17));
    t[len - 17] = '#';
    put_hex(t + len - 16, h);

    out.scope.assign(17, '\0');
    out.scope[0] = 'h';
    put_hex(out.scope.data() + 1, h);
    out.last_error.assign(version % 23, static_cast<char>('a' + version % 26));

    shm::SlotRecord& r = out.rec;
    r.version = version;
    r.state = shm::RecordState::valid;
    r.expires_at_ms = kFarFutureMs + static_cast<std::int64_t>(version);
    r.issued_at_ms = static_cast<std::int64_t>(version * 3);
    r.next_refresh_ms = static_cast<std::int64_t>(version ^ 0x5555);
    r.last_attempt_ms = static_cast<std::int64_t>(version + 7);
    r.failures = static_cast<std::uint32_t>(version * 2654435761u);
    r.token_type = (version & 1) != 0 ? "Bearer" : "DPoP";
    r.token = out.token;
    r.scope = out.scope;
    r.last_error = out.last_error;
}

// What a reader saw, whichever path it came through.
struct Observed {
    std::uint64_t version;
    std::int64_t expires_at_ms;
    std::int64_t issued_at_ms;
    std::int64_t next_refresh_ms;
    std::int64_t last_attempt_ms;
    std::uint32_t state;
    std::uint32_t failures;
    std::string_view token_type, scope, last_error, token;
};

inline Observed observed(const tokenshm::Token& t) {
    return Observed{t.version(),
                    t.expires_at_ms(),
                    t.issued_at_ms(),
                    t.next_refresh_ms(),
                    t.last_attempt_ms(),
                    static_cast<std::uint32_t>(t.state()),
                    t.failures(),
                    t.token_type(),
                    t.scope(),
                    t.last_error(),
                    t.token()};
}

inline Observed observed(const shm::RecordView& v) {
    return Observed{v.version,
                    v.expires_at_ms,
                    v.issued_at_ms,
                    v.next_refresh_ms,
                    v.last_attempt_ms,
                    static_cast<std::uint32_t>(v.state),
                    v.failures,
                    v.token_type,
                    v.scope,
                    v.last_error,
                    v.token};
}

// Null when `o` is exactly the synthetic record of its version; else what is wrong.
inline const char* verify_synth(const Observed& o, std::size_t cap) {
    const std::string_view t = o.token;
    if (t.size() < kMinSynthToken || t.size() > cap) return "token length out of range";
    std::uint64_t v = 0;
    if (t.substr(0, 2) != "v=" || t[18] != ';' || !parse_hex(t.substr(2, 16), v))
        return "token prefix mangled";
    if (v != o.version) return "token's version differs from the record's";
    if (t.size() != synth_token_len(v, cap)) return "token length does not match its version";
    std::uint64_t h = 0;
    if (t[t.size() - 17] != '#' || !parse_hex(t.substr(t.size() - 16), h))
        return "checksum field mangled";
    if (fnv1a(t.substr(0, t.size() - 17)) != h) return "checksum mismatch";
    if (o.scope.size() != 17 || o.scope[0] != 'h' || o.scope.substr(1) != t.substr(t.size() - 16))
        return "scope does not match the token";
    if (o.last_error.size() != v % 23 ||
        o.last_error.find_first_not_of(static_cast<char>('a' + v % 26)) != std::string_view::npos)
        return "last_error does not match the version";
    if (o.token_type != ((v & 1) != 0 ? "Bearer" : "DPoP")) return "token_type mismatch";
    if (o.state != TOKENSHM_STATE_VALID) return "state mismatch";
    if (o.expires_at_ms != kFarFutureMs + static_cast<std::int64_t>(v) ||
        o.issued_at_ms != static_cast<std::int64_t>(v * 3) ||
        o.next_refresh_ms != static_cast<std::int64_t>(v ^ 0x5555) ||
        o.last_attempt_ms != static_cast<std::int64_t>(v + 7) ||
        o.failures != static_cast<std::uint32_t>(v * 2654435761u))
        return "fixed fields do not match the version";
    return nullptr;
}

}  // namespace segtest
