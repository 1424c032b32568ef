// The read path makes no syscall and allocates nothing. A reader child opens
// the segment and looks its credential up, then installs a seccomp filter
// that kills the process on any syscall except write(2) to its result pipe
// and exit_group, and only then makes its first get(): every copy, the first
// included, runs under the filter. A writer process publishes new versions
// flat out, so the reader's copies keep losing races to it; the child loops
// until it has seen a minimum of copies the writer invalidated (the retry
// path, counted by tokenshm::detail::copy_retries) and of new versions, or a
// time cap, and the test fails when the evidence falls short. (Caught: a
// sched_yield() in the copy's retry loop.) The child also counts every heap
// allocation around the loop and must report none. (Caught: a std::string
// built in the copy path.) Negative controls prove the filter bites and the
// allocation counter counts.
#include "allocation_counter.hpp"
#include "proof_support.hpp"
#include "test_support.hpp"

#include <tokenshm/reader.hpp>
#include <tokenshm/shm/segment.hpp>

#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/resource.h>

#include <catch2/catch.hpp>

#include <cstddef>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>

using namespace std::chrono_literals;
using segtest::Child;
using segtest::Pipe;
using segtest::SegmentGuard;
namespace shm = tokenshm::shm;

namespace {

#if defined(__x86_64__)
constexpr std::uint32_t kAuditArch = AUDIT_ARCH_X86_64;
#elif defined(__aarch64__)
constexpr std::uint32_t kAuditArch = AUDIT_ARCH_AARCH64;
#else
#error "seccomp_test: add this architecture's AUDIT_ARCH"
#endif

constexpr std::size_t kTokenCap = 4096;
constexpr std::uint64_t kMinGets = 1'000'000;
// The evidence the loop must gather under the filter before it stops.
constexpr std::uint64_t kMinNewVersions = 1000;
constexpr std::uint64_t kMinRetries = 16;  // copies the writer invalidated
// A cap, not a verdict: reaching it with too little evidence fails the test.
constexpr std::int64_t kLoopCapNs = 30'000'000'000;

// Allows exit_group, and write(2) to `fd` only; kills the process on
// anything else (including another architecture's syscall ABI).
bool install_filter(int fd) {
    struct sock_filter prog[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, kAuditArch, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_exit_group, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_write, 0, 3),
        // args[0] low word (little-endian): the file descriptor.
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0])),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, static_cast<std::uint32_t>(fd), 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
    };
    struct sock_fprog fprog {
        static_cast<unsigned short>(sizeof prog / sizeof prog[0]), prog
    };
    if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return false;
    return ::syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &fprog) == 0;
}

// No core files from the children the filter kills.
void no_core_dumps() {
    struct rlimit rl {
        0, 0
    };
    (void)::setrlimit(RLIMIT_CORE, &rl);
}

struct LoopReport {
    std::uint64_t gets = 0;
    std::uint64_t ok = 0;
    std::uint64_t cached = 0;        // same version as the previous get: no copy
    std::uint64_t new_versions = 0;  // the version moved: the copying path ran
    std::uint64_t retries = 0;       // copies the writer invalidated: the retry path ran
    std::uint64_t allocations = 0;   // heap allocations made by the loop
    std::uint64_t busy = 0;
    std::uint64_t bad = 0;  // other errors or records failing verification
    std::uint64_t first_version = 0;
    std::uint64_t last_version = 0;
};

// In a reader child, before the filter: everything that needs a syscall (open
// and lookup; the handle copies nothing yet). 0, or the child's exit code for
// what failed.
int prepare_handle(const std::string& segment, std::optional<tokenshm::Handle>& out) {
    auto r = tokenshm::Reader::open(segment);
    if (!r) return 30;
    auto h = r->lookup("c");
    if (!h) return 31;
    out.emplace(std::move(*h));  // the handle keeps the mapping alive
    return 0;
}

// exit_group straight away: no atexit handlers, no sanitizer finalisers.
// Not [[noreturn]] on purpose: ASan precedes every call to a noreturn
// function with __asan_handle_no_return, which calls sigaltstack(2), and
// the filter would kill the child for that, not for the read path.
int exit_now(int code) {
    ::syscall(SYS_exit_group, code);
    return code;  // not reached
}

// A writer child publishing new synthetic versions back to back until killed.
Child start_writer(shm::WriterSegment& w, std::uint32_t slot, int ready_fd) {
    return Child::fork([&w, slot, ready_fd] {
        segtest::pin_to_cpu(0);  // apart from the reader: they race, not take turns
        segtest::SynthRecord rec;
        for (std::uint64_t v = 2;; ++v) {
            segtest::make_synth(v, kTokenCap, rec);
            if (!w.publish(slot, rec.rec)) return 20;
            if (v == 2) {
                const char one = 'w';
                if (!segtest::write_all(ready_fd, &one, 1)) return 21;
            }
        }
    });
}

std::int64_t coarse_ns() {
    struct timespec ts {};
    ::clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);  // the vDSO: no syscall
    return std::int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

// One get() of the loop, tallied into `rep`.
void tally_get(tokenshm::Handle& h, LoopReport& rep, std::uint64_t& prev) {
    auto t = h.get(std::chrono::milliseconds((rep.gets & 1) != 0 ? 1000 : 0));
    ++rep.gets;
    if (t) {
        ++rep.ok;
        const bool moved = t->version() != prev;
        if (moved) {
            ++rep.new_versions;
            prev = t->version();
        } else {
            ++rep.cached;
        }
        // Every new copy is checked; a cached one (the same bytes) now and then.
        if ((moved || (rep.gets & 255) == 0) &&
            segtest::verify_synth(segtest::observed(*t), kTokenCap) != nullptr)
            ++rep.bad;
    } else if (t.error() == tokenshm::Error::busy) {
        ++rep.busy;
    } else {
        ++rep.bad;
    }
}

// The reader child's loop, entirely under the filter: gets until the evidence
// is in or the cap passes, then one write of the report and exit_group.
int read_under_filter(tokenshm::Handle& h, int fd) {
    LoopReport rep;
    const std::int64_t cap = coarse_ns() + kLoopCapNs;  // also warms the vDSO clock
    const std::uint64_t retries_before = tokenshm::detail::copy_retries(h);
    if (!install_filter(fd)) return exit_now(33);

    // ---- no syscall from here on, except the final write and exit_group
    const std::uint64_t allocs_before = segtest::allocations();
    std::uint64_t prev = 0;
    for (;;) {
        tally_get(h, rep, prev);
        if (rep.gets == 1) rep.first_version = prev;
        if ((rep.gets & 1023) != 0 || rep.gets < kMinGets) continue;
        rep.retries = tokenshm::detail::copy_retries(h) - retries_before;
        if (rep.new_versions >= kMinNewVersions && rep.retries >= kMinRetries) break;
        if (coarse_ns() >= cap) break;
    }
    rep.allocations = segtest::allocations() - allocs_before;
    rep.last_version = prev;
    const bool sent = ::write(fd, &rep, sizeof rep) == static_cast<ssize_t>(sizeof rep);
    return exit_now(sent ? 0 : 34);
}

void print(const LoopReport& rep) {
    std::printf(
        "seccomp: gets=%llu ok=%llu cached=%llu new_versions=%llu retries=%llu "
        "allocations=%llu busy=%llu bad=%llu versions %llu..%llu\n",
        static_cast<unsigned long long>(rep.gets), static_cast<unsigned long long>(rep.ok),
        static_cast<unsigned long long>(rep.cached),
        static_cast<unsigned long long>(rep.new_versions),
        static_cast<unsigned long long>(rep.retries),
        static_cast<unsigned long long>(rep.allocations), static_cast<unsigned long long>(rep.busy),
        static_cast<unsigned long long>(rep.bad),
        static_cast<unsigned long long>(rep.first_version),
        static_cast<unsigned long long>(rep.last_version));
    std::fflush(stdout);
}

}  // namespace

TEST_CASE(
    "get makes no syscall and allocates nothing, retries included, under a writer publishing "
    "flat out") {
    SegmentGuard g{segtest::unique_segment("seccomp")};
    segtest::SynthRecord first;
    segtest::make_synth(1, kTokenCap, first);
    auto made = segtest::one_slot_writer(g.name, kTokenCap, &first.rec);
    INFO(made.error);
    REQUIRE(made.w);

    Pipe writer_ready;
    Child writer = start_writer(*made.w, made.slot, writer_ready.wr());
    writer_ready.close_write();
    char byte;
    REQUIRE(segtest::read_exact(writer_ready.rd(), &byte, 1, 30s) == 1);

    Pipe result;
    Child reader = Child::fork([&] {
        result.close_read();
        no_core_dumps();
        segtest::pin_to_cpu(1);
        std::optional<tokenshm::Handle> h;
        if (const int rc = prepare_handle(g.name, h)) return rc;
        return read_under_filter(*h, result.wr());
    });
    result.close_write();

    LoopReport rep;
    const std::size_t got = segtest::read_exact(result.rd(), &rep, sizeof rep, 100s);
    REQUIRE(reader.wait(30s));
    writer.kill(SIGKILL);
    REQUIRE(writer.wait(30s));

    INFO("reader child " << reader.describe()
                         << (reader.killed_by(SIGSYS) ? ": it made a syscall on the read path"
                                                      : ""));
    REQUIRE(reader.exited_with(0));
    REQUIRE(got == sizeof rep);
    print(rep);
    CHECK(rep.gets >= kMinGets);
    CHECK(rep.ok + rep.busy == rep.gets);
    CHECK(rep.bad == 0);
    CHECK(rep.cached > 0);  // the cached path ran under the filter
    CHECK(rep.last_version > rep.first_version);
    // The copying path and its retry path ran under the filter, often enough
    // to count: a cap reached with less is a failure, not a pass.
    CHECK(rep.new_versions >= kMinNewVersions);
    CHECK(rep.retries >= kMinRetries);
    CHECK(rep.allocations == 0);
}

TEST_CASE("negative control: the allocation counter sees new and malloc, ours and the library's") {
    // Stored through volatile pointers, so the optimiser cannot elide them.
    std::uint64_t before = segtest::allocations();
    std::string* volatile s = new std::string(100, 'x');
    delete s;
    CHECK(segtest::allocations() > before);
    before = segtest::allocations();
    char* volatile p = static_cast<char*>(std::malloc(64));
    std::free(p);
    CHECK(segtest::allocations() > before);
    SegmentGuard g{segtest::unique_segment("seccompalloc")};
    segtest::SynthRecord first;
    segtest::make_synth(1, kTokenCap, first);
    auto made = segtest::one_slot_writer(g.name, kTokenCap, &first.rec);
    INFO(made.error);
    REQUIRE(made.w);
    const std::uint64_t before_open = segtest::allocations();
    std::optional<tokenshm::Handle> h;
    REQUIRE(prepare_handle(g.name, h) == 0);  // libtokenshm allocates its reader and handle
    CHECK(segtest::allocations() > before_open);
}

TEST_CASE("negative control: one syscall after the filter kills the child by SIGSYS") {
    SegmentGuard g{segtest::unique_segment("seccompneg")};
    segtest::SynthRecord first;
    segtest::make_synth(1, kTokenCap, first);
    auto made = segtest::one_slot_writer(g.name, kTokenCap, &first.rec);
    INFO(made.error);
    REQUIRE(made.w);

    SECTION("getpid") {
        Pipe result;
        Child child = Child::fork([&] {
            result.close_read();
            no_core_dumps();
            std::optional<tokenshm::Handle> h;
            if (const int rc = prepare_handle(g.name, h)) return rc;
            if (!install_filter(result.wr())) return 33;
            const char one = 'f';  // allowed: proves the filter lets the report through
            if (::write(result.wr(), &one, 1) != 1) return exit_now(35);
            (void)::syscall(SYS_getpid);
            return exit_now(0);  // not reached when the filter works
        });
        result.close_write();
        char byte = 0;
        CHECK(segtest::read_exact(result.rd(), &byte, 1, 30s) == 1);
        CHECK(byte == 'f');
        REQUIRE(child.wait(30s));
        INFO("child " << child.describe());
        CHECK(child.killed_by(SIGSYS));
    }
    SECTION("write to another descriptor") {
        Pipe result, other;
        Child child = Child::fork([&] {
            result.close_read();
            no_core_dumps();
            if (!install_filter(result.wr())) return 33;
            const char one = 'x';
            (void)::write(other.wr(), &one, 1);
            return exit_now(0);
        });
        result.close_write();
        REQUIRE(child.wait(30s));
        INFO("child " << child.describe());
        CHECK(child.killed_by(SIGSYS));
    }
}

// Within two seconds of expiry get() judges with the exact CLOCK_REALTIME
// instead of the coarse clock (reader.cpp). That path must stay syscall-free
// too: it relies on the vDSO, which this test checks on the machine at hand.
TEST_CASE("get makes no syscall near expiry either, where it reads the exact clock") {
    SegmentGuard g{segtest::unique_segment("seccomp-exact")};
    shm::SlotRecord rec;
    rec.version = 1;
    rec.state = shm::RecordState::valid;
    rec.token = "near-expiry-test-token";
    rec.token_type = "Bearer";
    rec.expires_at_ms = shm::sys::realtime_ms() + 60'000;
    rec.issued_at_ms = shm::sys::realtime_ms();
    auto made = segtest::one_slot_writer(g.name, kTokenCap, &rec);
    INFO(made.error);
    REQUIRE(made.w);

    Pipe result;
    Child reader = Child::fork([&] {
        result.close_read();
        no_core_dumps();
        std::optional<tokenshm::Handle> h;
        if (const int rc = prepare_handle(g.name, h)) return rc;
        const int fd = result.wr();
        if (!install_filter(fd)) return 33;
        // ---- no syscall from here on, except the final write and exit_group.
        // min_valid 59 s puts the deadline inside the exact-clock window.
        std::uint64_t counts[2] = {0, 0};  // ok, expiring
        for (int i = 0; i < 200'000; ++i) {
            auto t = h->get(std::chrono::seconds(59));
            if (t)
                ++counts[0];
            else if (t.error() == tokenshm::Error::expiring)
                ++counts[1];
        }
        const bool sent = ::write(fd, counts, sizeof counts) == static_cast<ssize_t>(sizeof counts);
        return exit_now(sent ? 0 : 34);
    });
    result.close_write();
    std::uint64_t counts[2] = {0, 0};
    const std::size_t got = segtest::read_exact(result.rd(), counts, sizeof counts, 60s);
    REQUIRE(reader.wait(30s));
    INFO("reader child " << reader.describe()
                         << (reader.killed_by(SIGSYS) ? ": CLOCK_REALTIME made a syscall" : ""));
    REQUIRE(reader.exited_with(0));
    REQUIRE(got == sizeof counts);
    CHECK(counts[0] + counts[1] == 200'000);
}
