// The reader against a segment written in-process: publish, read, every typed
// error of the read path, the version cache, wait().
#include "ci_skip.hpp"

#include <tokenshm/reader.hpp>
#include <tokenshm/shm/segment.hpp>

#include <sys/syscall.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include <chrono>
#include <fstream>
#include <limits>
#include <optional>
#include <string>
#include <thread>

using namespace std::chrono_literals;
using tokenshm::Error;
namespace shm = tokenshm::shm;

namespace {

std::string unique_segment(const char* tag) {
    return std::string("tokenshm-test-") + tag + "-" + std::to_string(::getpid());
}

// Removes the segment's name when the test ends, whatever happens.
struct SegmentGuard {
    std::string name;
    ~SegmentGuard() { (void)shm::sys::shm_unlink("/" + name); }
};

shm::SegmentSpec spec(const std::string& name, std::uint32_t max_token_bytes = 8192) {
    shm::SegmentSpec s;
    s.name = name;
    s.max_token_bytes = max_token_bytes;
    return s;
}

std::int64_t now_ms() {
    return shm::sys::realtime_ms();
}

enum class Blocked { in_futex, not_seen, unknown };

// Polls (bounded) until thread `tid` of this process sleeps ('S' in its stat)
// inside futex(2) (the syscall number first in /proc/self/task/<tid>/syscall).
// `unknown` when /proc does not say.
Blocked wait_until_in_futex(pid_t tid, std::chrono::milliseconds timeout) {
    const std::string task = "/proc/self/task/" + std::to_string(tid);
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
        std::ifstream syscall_file(task + "/syscall");
        std::string nr;
        if (!(syscall_file >> nr)) return Blocked::unknown;
        std::ifstream stat_file(task + "/stat");
        std::string stat;
        if (!std::getline(stat_file, stat)) return Blocked::unknown;
        const std::size_t paren = stat.rfind(')');  // "pid (comm) S ...": comm may hold spaces
        const char state = paren + 2 < stat.size() ? stat[paren + 2] : '?';
        if (nr == std::to_string(SYS_futex) && state == 'S') return Blocked::in_futex;
        std::this_thread::sleep_for(200us);
    }
    return Blocked::not_seen;
}

shm::SlotRecord valid_record(std::uint64_t version, std::string_view token, std::int64_t ttl_ms) {
    shm::SlotRecord r;
    r.version = version;
    r.state = shm::RecordState::valid;
    r.token = token;
    r.token_type = "Bearer";
    r.scope = "files.write";
    r.issued_at_ms = now_ms();
    r.expires_at_ms = now_ms() + ttl_ms;
    return r;
}

// A new segment with one claimed slot "c", a reader on it and a handle.
struct OneSlot {
    explicit OneSlot(const char* tag, std::uint32_t max_token_bytes = 8192)
        : g{unique_segment(tag)} {
        auto created = shm::WriterSegment::create_or_attach(spec(g.name, max_token_bytes));
        REQUIRE(created);
        w.emplace(std::move(*created));
        const auto claimed = w->claim("c");
        REQUIRE(claimed);
        slot = *claimed;
        auto opened = tokenshm::Reader::open(g.name);
        REQUIRE(opened);
        r.emplace(std::move(*opened));
        auto looked_up = r->lookup("c");
        REQUIRE(looked_up);
        h.emplace(std::move(*looked_up));
    }
    SegmentGuard g;
    std::optional<shm::WriterSegment> w;
    std::uint32_t slot = 0;
    std::optional<tokenshm::Reader> r;
    std::optional<tokenshm::Handle> h;
};

}  // namespace

TEST_CASE("a published token reads back with its record") {
    SegmentGuard g{unique_segment("rt")};
    auto w = shm::WriterSegment::create_or_attach(spec(g.name));
    REQUIRE(w);
    CHECK(w->created());
    auto slot = w->claim("storage");
    REQUIRE(slot);

    auto r = tokenshm::Reader::open(g.name);
    REQUIRE(r);
    auto h = r->lookup("storage");
    REQUIRE(h);

    auto empty = h->get();
    REQUIRE_FALSE(empty);
    CHECK(empty.error() == Error::empty);

    REQUIRE(w->publish(*slot, valid_record(1, "tok-one", 60'000)));
    auto t = h->get();
    REQUIRE(t);
    CHECK(t->token() == "tok-one");
    CHECK(t->token_type() == "Bearer");
    CHECK(t->scope() == "files.write");
    CHECK(t->version() == 1);
    CHECK(t->state() == tokenshm::State::valid);
    CHECK(t->writer_alive());

    // The cached copy is served until the version moves, then the new one.
    auto again = h->get();
    REQUIRE(again);
    CHECK(again->token().data() == t->token().data());
    REQUIRE(w->publish(*slot, valid_record(2, "tok-two-longer", 60'000)));
    auto t2 = h->get();
    REQUIRE(t2);
    CHECK(t2->token() == "tok-two-longer");
    CHECK(t2->version() == 2);
}

TEST_CASE("expiry, min_valid and reauth are errors on the read path") {
    OneSlot f{"exp"};
    auto& w = f.w;
    const std::uint32_t slot = f.slot;
    tokenshm::Handle& h = *f.h;

    REQUIRE(w->publish(slot, valid_record(1, "t", 10'000)));
    CHECK(h.get(5s));
    auto expiring = h.get(20s);
    REQUIRE_FALSE(expiring);
    CHECK(expiring.error() == Error::expiring);

    REQUIRE(w->publish(slot, valid_record(2, "t", -1)));
    CHECK(h.get().error() == Error::expired);

    auto reauth = valid_record(3, "t", 60'000);
    reauth.state = shm::RecordState::reauth;
    REQUIRE(w->publish(slot, reauth));
    auto still = h.get();  // not expired: served, the state travels with it
    REQUIRE(still);
    CHECK(still->state() == tokenshm::State::reauth);
    reauth.version = 4;
    reauth.expires_at_ms = now_ms() - 1;
    REQUIRE(w->publish(slot, reauth));
    CHECK(h.get().error() == Error::reauth);
}

TEST_CASE("min_valid out of range and absurd deadlines never return an expired token") {
    OneSlot f{"edge"};
    auto& w = f.w;
    const std::uint32_t slot = f.slot;
    tokenshm::Handle& h = *f.h;
    constexpr auto kI64Max = std::numeric_limits<std::int64_t>::max();
    constexpr auto kI64Min = std::numeric_limits<std::int64_t>::min();

    // Expired a second ago: a negative min_valid asks for nothing extra, it
    // does not buy back the second.
    REQUIRE(w->publish(slot, valid_record(1, "t", -1000)));
    CHECK(h.get(-10s).error() == Error::expired);
    CHECK(h.get(std::chrono::milliseconds(kI64Min)).error() == Error::expired);

    // Valid for a minute: served on the fast path and the slow one alike.
    REQUIRE(w->publish(slot, valid_record(2, "t", 60'000)));
    CHECK(h.get(-10s));
    CHECK(h.get(std::chrono::milliseconds(kI64Min)));
    CHECK(h.get(59s));
    CHECK(h.get(61s).error() == Error::expiring);
    CHECK(h.get(std::chrono::milliseconds(kI64Max)).error() == Error::expiring);

    // Deadlines at the ends of int64 (a corrupt or hostile record): no
    // overflow (UBSan runs this), and the answers follow the numbers.
    auto rec = valid_record(3, "t", 0);
    rec.expires_at_ms = kI64Max;
    REQUIRE(w->publish(slot, rec));
    CHECK(h.get());
    CHECK(h.get(std::chrono::hours(24 * 365 * 100)));
    CHECK(h.get(std::chrono::milliseconds(kI64Max)).error() == Error::expiring);
    rec.version = 4;
    rec.expires_at_ms = kI64Min;
    REQUIRE(w->publish(slot, rec));
    CHECK(h.get().error() == Error::expired);
    CHECK(h.get(std::chrono::milliseconds(kI64Min)).error() == Error::expired);
}

TEST_CASE("a Token is a view of its handle's copy") {
    OneSlot f{"view"};
    auto& w = f.w;
    const std::uint32_t slot = f.slot;
    auto& r = f.r;
    tokenshm::Handle& h = *f.h;
    REQUIRE(w->publish(slot, valid_record(1, "first", 60'000)));
    auto t1 = h.get();
    REQUIRE(t1);
    // Unchanged version: the same copy, not a new one.
    auto t1b = h.get();
    REQUIRE(t1b);
    CHECK(t1b->token().data() == t1->token().data());
    CHECK(t1b->version() == 1);
    // A later get() that copies a new version is what the earlier Token shows
    // from then on: it is valid until the next call on the handle, as documented.
    REQUIRE(w->publish(slot, valid_record(2, "second", 60'000)));
    auto t2 = h.get();
    REQUIRE(t2);
    CHECK(t2->token() == "second");
    CHECK(t2->version() == 2);
    // Another handle on the same slot keeps its own copy.
    auto h2 = *r->lookup("c");
    auto u = h2.get();
    REQUIRE(u);
    CHECK(u->token().data() != t2->token().data());
    CHECK(u->token() == t2->token());
}

TEST_CASE("the handle's copy sits half a page from the shared copies (no 4K aliasing)") {
    // Mappings start on a page, so a copy's offset in the segment is its
    // address modulo 4096 in the reader's mapping too.
    for (std::uint32_t max_token : {128u, 1024u, 4096u, 5000u}) {
        OneSlot f{"place", max_token};
        auto& w = f.w;
        const std::uint32_t slot = f.slot;
        tokenshm::Handle& h = *f.h;
        REQUIRE(w->publish(slot, valid_record(1, "tok", 60'000)));
        auto t = h.get();
        REQUIRE(t);
        // The payload is type, scope, last_error, token, after the fixed part.
        const char* buf = t->token().data() - TOKENSHM_REC_FIXED_SIZE - t->token_type().size() -
                          t->scope().size() - t->last_error().size();
        const shm::Geometry geo = w->geometry();
        const auto page_offset = [](std::uintptr_t x) { return x % 4096; };
        const std::uintptr_t mine = page_offset(reinterpret_cast<std::uintptr_t>(buf));
        for (unsigned which = 0; which < 2; ++which) {
            const std::uintptr_t theirs =
                page_offset(TOKENSHM_HEADER_SIZE + std::uintptr_t{slot} * geo.slot_size() +
                            TOKENSHM_SLOT_COPIES + which * geo.record_size());
            const std::uintptr_t d = (mine + 4096 - theirs) % 4096;
            const std::uintptr_t distance = d < 4096 - d ? d : 4096 - d;
            INFO("max_token " << max_token << " copy " << which << " at " << theirs
                              << ", handle's at " << mine);
            // Two points on a 4096 circle leave a gap of at least 2048; its
            // middle is at least 1024 from both.
            CHECK(distance >= 1024 - 64);
        }
    }
}

TEST_CASE("lookup and removed slots") {
    SegmentGuard g{unique_segment("rm")};
    auto w = shm::WriterSegment::create_or_attach(spec(g.name));
    REQUIRE(w);
    auto slot = *w->claim("a");
    auto r = tokenshm::Reader::open(g.name);
    REQUIRE(r);
    CHECK(r->lookup("b").error().code == Error::no_such_credential);
    CHECK(r->lookup("a/../x").error().code == Error::no_such_credential);
    auto h = *r->lookup("a");
    w->retire(slot);
    CHECK(h.get().error() == Error::no_such_credential);
    CHECK(r->credentials().empty());
    CHECK(*w->claim("a") == slot);  // the same name gets its slot back
    CHECK(r->credentials() == std::vector<std::string>{"a"});
}

TEST_CASE("a token larger than the slot is refused, nothing is published") {
    SegmentGuard g{unique_segment("big")};
    auto w = shm::WriterSegment::create_or_attach(spec(g.name, 128));
    REQUIRE(w);
    auto slot = *w->claim("c");
    const std::string big(129, 'x');
    const auto too_large = w->publish(slot, valid_record(1, big, 1000));
    REQUIRE_FALSE(too_large);
    CHECK(too_large.error() == shm::EncodeError::token_too_large);
    auto r = tokenshm::Reader::open(g.name);
    REQUIRE(r);
    CHECK(r->lookup("c")->get().error() == Error::empty);
}

TEST_CASE("no segment is a typed error") {
    auto r = tokenshm::Reader::open("tokenshm-test-absent-" + std::to_string(::getpid()));
    REQUIRE_FALSE(r);
    CHECK(r.error().code == Error::no_segment);
    auto bad = tokenshm::Reader::open("../etc/passwd");
    REQUIRE_FALSE(bad);
    CHECK(bad.error().code == Error::invalid_argument);
}

TEST_CASE("wait wakes on publish and times out on time") {
    OneSlot f{"wait"};
    auto& w = f.w;
    const std::uint32_t slot = f.slot;
    tokenshm::Handle& h = *f.h;

    auto timed_out = h.wait(0, 30ms);
    REQUIRE_FALSE(timed_out);
    CHECK(timed_out.error() == Error::timeout);

    // The writer publishes only after the reader has been seen asleep in
    // futex(2), so the wake-up below comes through the futex; it publishes
    // after 20 s in any case, so a wait that never blocks still ends.
    const pid_t reader_tid = ::gettid();
    Blocked seen = Blocked::unknown;
    bool published = false;
    std::thread writer([&] {
        seen = wait_until_in_futex(reader_tid, 20s);
        published = w->publish(slot, valid_record(7, "woken", 60'000)).has_value();
    });
    auto t = h.wait(0, 60s);
    writer.join();
    REQUIRE(published);
    if (seen == Blocked::unknown)
        WARN_OR_FAIL_UNDER_CI(
            "/proc/self/task/<tid> does not say whether the reader slept in "
            "futex(2)");
    else
        CHECK(seen == Blocked::in_futex);
    REQUIRE(t);
    CHECK(t->version() == 7);
    CHECK(t->token() == "woken");
    // Already past the seen version: returns at once.
    CHECK(h.wait(6, 0ms));
}
