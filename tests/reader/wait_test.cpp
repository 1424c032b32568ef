// Handle::wait wakes when another process publishes (or retires the
// credential), and times out no sooner than asked.
//
// To be sure the wake-up really comes through the futex, the writer child
// publishes only once /proc/<reader>/syscall shows the reader blocked in
// futex(2). Where /proc does not say (no permission), the child publishes
// anyway and the test warns that it could not confirm the blocked state;
// under TOKENSHM_CI=1 that is a failure (ci_skip.hpp).
#include "ci_skip.hpp"
#include "test_support.hpp"

#include <tokenshm/reader.hpp>
#include <tokenshm/shm/segment.hpp>

#include <catch2/catch.hpp>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>

using namespace std::chrono_literals;
using segtest::Child;
using segtest::Pipe;
using segtest::SegmentGuard;
using tokenshm::Error;
namespace shm = tokenshm::shm;

namespace {

constexpr int kBlockedSeen = 0;
constexpr int kBlockedUnknown = 3;

// Polls (bounded) until thread `tid` is blocked in futex(2). 1: timed out;
// kBlockedUnknown: /proc does not tell.
int wait_until_in_futex(pid_t tid, std::chrono::milliseconds timeout) {
    const std::string path = "/proc/" + std::to_string(tid) + "/syscall";
    const std::int64_t deadline = segtest::monotonic_ns() + timeout.count() * 1'000'000;
    while (segtest::monotonic_ns() < deadline) {
        std::ifstream f(path);
        std::string first;
        if (!(f >> first)) return kBlockedUnknown;
        if (first == std::to_string(SYS_futex)) return kBlockedSeen;
        struct timespec pace {
            0, 200'000
        };
        ::nanosleep(&pace, nullptr);
    }
    return 1;
}

// The writer child's verdict: it saw the reader in futex(2) before acting.
// Where /proc did not tell, a warning (a failure under TOKENSHM_CI=1).
void check_reader_was_in_futex(Child& writer) {
    if (writer.exited_with(kBlockedUnknown))
        WARN_OR_FAIL_UNDER_CI(
            "/proc/<pid>/syscall unreadable: could not confirm the reader "
            "was blocked in futex(2)");
    else
        CHECK(writer.exited_with(kBlockedSeen));
}

shm::SlotRecord record(std::uint64_t version, std::string_view token) {
    return segtest::token_record(version, token, 600'000);
}

std::int64_t elapsed_ms(std::chrono::steady_clock::time_point since) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() -
                                                                 since)
        .count();
}

}  // namespace

TEST_CASE("wait wakes when another process publishes") {
    SegmentGuard g{segtest::unique_segment("wait")};
    const shm::SlotRecord first = record(1, "first");
    auto made = segtest::one_slot_writer(g.name, 256, &first);
    INFO(made.error);
    REQUIRE(made.w);
    auto& w = made.w;
    const std::uint32_t slot = made.slot;

    auto reader = tokenshm::Reader::open(g.name);
    REQUIRE(reader);
    auto h = reader->lookup("c");
    REQUIRE(h);
    auto t = h->get();
    REQUIRE(t);
    REQUIRE(t->version() == 1);

    const pid_t me = ::getpid();
    Pipe go;
    Child writer = Child::fork([&] {
        go.close_write();
        char b;
        if (segtest::read_exact(go.rd(), &b, 1, 30s) != 1) return 10;
        const int seen = wait_until_in_futex(me, 20s);
        if (!w->publish(slot, record(2, "second"))) return 11;
        return seen;
    });
    go.close_read();
    const char one = 'g';
    REQUIRE(segtest::write_all(go.wr(), &one, 1));
    const auto start = std::chrono::steady_clock::now();
    auto woken = h->wait(1, 60s);
    const auto took = elapsed_ms(start);
    REQUIRE(writer.wait(30s));
    INFO("writer " << writer.describe() << ", wait took " << took << " ms");
    REQUIRE(woken);
    CHECK(woken->version() == 2);
    CHECK(woken->token() == "second");
    CHECK(took < 60'000);
    check_reader_was_in_futex(writer);
    std::printf("wait: woken by another process's publish after %lld ms\n",
                static_cast<long long>(took));

    // Already past the seen version: returns at once, no wait.
    auto now = h->wait(1, 0ms);
    REQUIRE(now);
    CHECK(now->version() == 2);
}

TEST_CASE("wait wakes when another process retires the credential") {
    SegmentGuard g{segtest::unique_segment("waitrm")};
    const shm::SlotRecord first = record(1, "first");
    auto made = segtest::one_slot_writer(g.name, 256, &first);
    INFO(made.error);
    REQUIRE(made.w);
    auto& w = made.w;
    const std::uint32_t slot = made.slot;
    auto reader = tokenshm::Reader::open(g.name);
    REQUIRE(reader);
    auto h = reader->lookup("c");
    REQUIRE(h);

    const pid_t me = ::getpid();
    Child writer = Child::fork([&] {
        const int seen = wait_until_in_futex(me, 20s);
        w->retire(slot);
        return seen;
    });
    auto r = h->wait(1, 60s);
    REQUIRE(writer.wait(30s));
    REQUIRE_FALSE(r);
    CHECK(r.error() == Error::no_such_credential);
    check_reader_was_in_futex(writer);
}

TEST_CASE("wait times out no sooner than asked") {
    SegmentGuard g{segtest::unique_segment("waitto")};
    auto made = segtest::one_slot_writer(g.name, 256);
    INFO(made.error);
    REQUIRE(made.w);
    auto& w = made.w;
    const std::uint32_t slot = made.slot;
    auto reader = tokenshm::Reader::open(g.name);
    REQUIRE(reader);
    auto h = reader->lookup("c");
    REQUIRE(h);

    SECTION("empty slot, waiting for any record") {
        const auto start = std::chrono::steady_clock::now();
        auto r = h->wait(0, 250ms);
        const auto took = elapsed_ms(start);
        REQUIRE_FALSE(r);
        CHECK(r.error() == Error::timeout);
        CHECK(took >= 250);
    }
    SECTION("a token exists, waiting for a newer one") {
        REQUIRE(w->publish(slot, record(5, "five")));
        const auto start = std::chrono::steady_clock::now();
        auto r = h->wait(5, 300ms);
        const auto took = elapsed_ms(start);
        REQUIRE_FALSE(r);
        CHECK(r.error() == Error::timeout);
        CHECK(took >= 300);
    }
    SECTION("the writer republishing an older version does not end the wait") {
        REQUIRE(w->publish(slot, record(5, "five")));
        // Another process bumps the futex word with a record that is not newer
        // than the one the caller has seen: wait must go back to sleep.
        Child writer = Child::fork([&] {
            const int seen = wait_until_in_futex(::getppid(), 20s);
            return w->publish(slot, record(5, "five-again")).has_value() ? seen : 11;
        });
        const auto start = std::chrono::steady_clock::now();
        auto r = h->wait(5, 1000ms);
        const auto took = elapsed_ms(start);
        REQUIRE(writer.wait(30s));
        check_reader_was_in_futex(writer);
        REQUIRE_FALSE(r);
        CHECK(r.error() == Error::timeout);
        CHECK(took >= 1000);
    }
}
