// Creating and attaching to a segment, as the writer does: the name rule,
// claiming slots, the step hook tests use to stop a writer, and the lock that
// keeps a second writer out.
#include "test_support.hpp"

#include <tokenshm/reader.hpp>
#include <tokenshm/shm/names.hpp>
#include <tokenshm/shm/segment.hpp>

#include <unistd.h>

#include <catch2/catch.hpp>

#include <string>
#include <vector>

namespace shm = tokenshm::shm;
using segtest::SegmentGuard;

TEST_CASE("segment and credential names follow one rule, which refuses '.' and '..'") {
    using shm::valid_credential_name;
    using shm::valid_segment_name;
    for (const char* good : {"tokenshm", "a", "A-z_0.9", "..."}) {
        INFO(good);
        CHECK(valid_segment_name(good));
        CHECK(valid_credential_name(good));
    }
    for (const char* bad : {"", ".", "..", "a/b", "a b", "é", "tok\nen"}) {
        INFO(bad);
        CHECK_FALSE(valid_segment_name(bad));
        CHECK_FALSE(valid_credential_name(bad));
    }
    const std::string seg_max(TOKENSHM_SEGMENT_NAME_MAX, 's');
    CHECK(valid_segment_name(seg_max));
    CHECK_FALSE(valid_segment_name(seg_max + "s"));
    const std::string cred_max(TOKENSHM_SLOT_NAME_CAP - 1, 'c');
    CHECK(valid_credential_name(cred_max));
    CHECK_FALSE(valid_credential_name(cred_max + "c"));
}

TEST_CASE("a credential called '..' gets no slot") {
    SegmentGuard g{segtest::unique_segment("names")};
    auto w = shm::WriterSegment::create_or_attach(segtest::spec(g.name, 256, 2));
    REQUIRE(w);
    const auto dotdot = w->claim("..");
    REQUIRE_FALSE(dotdot);
    CHECK(dotdot.error().code == shm::SegmentErrc::invalid);
}

TEST_CASE("the writer's step hook runs at header initialisation, slot claim, mid-copy, retire") {
    SegmentGuard g{segtest::unique_segment("steps")};
    std::vector<shm::WriterStep> seen;
    shm::SegmentSpec spec = segtest::spec(g.name, 256, 2);
    spec.step_hook = [&seen](shm::WriterStep s) { seen.push_back(s); };
    auto w = shm::WriterSegment::create_or_attach(spec);
    REQUIRE(w);
    const std::uint32_t slot = *w->claim("c");
    shm::SlotRecord r;
    r.version = 1;
    REQUIRE(w->publish(slot, r));
    w->retire(slot);
    using S = shm::WriterStep;
    CHECK(seen == std::vector<S>{S::header_init, S::slot_claim, S::mid_copy, S::retire});
}

TEST_CASE("a second writer is refused with the holder's pid") {
    SegmentGuard g{segtest::unique_segment("two")};
    auto w = shm::WriterSegment::create_or_attach(segtest::spec(g.name, 256, 2));
    REQUIRE(w);
    auto w2 = shm::WriterSegment::create_or_attach(segtest::spec(g.name, 256, 2));
    REQUIRE_FALSE(w2);
    CHECK(w2.error().code == shm::SegmentErrc::locked);
    CHECK_THAT(w2.error().message, Catch::Contains("pid " + std::to_string(::getpid())));
}

namespace {
using segtest::token_record;

// The token and version a fresh reader of `name` gets for credential "c".
std::string fresh_read(const std::string& name) {
    auto r = tokenshm::Reader::open(name);
    if (!r) return "open: " + r.error().message;
    auto h = r->lookup("c");
    if (!h) return "lookup: " + h.error().message;
    auto t = h->get();
    if (!t) return std::string("get: ") + tokenshm::to_string(t.error());
    return std::string(t->token()) + " v" + std::to_string(t->version());
}
}  // namespace

TEST_CASE("a writer whose segment is truncated under it survives and recreates it") {
    SegmentGuard g{segtest::unique_segment("strunc")};
    // In a child: without the size checks the writer dies of SIGBUS.
    segtest::Child child = segtest::Child::fork([&] {
        auto w = shm::WriterSegment::create_or_attach(segtest::spec(g.name));
        if (!w) return 10;
        const std::uint32_t slot = *w->claim("c");
        if (!w->publish(slot, token_record(7, "tok-before"))) return 11;
        if (!w->ensure_intact() || *w->ensure_intact() != shm::Integrity::intact) return 12;
        {
            segtest::RawSegment raw(g.name);
            if (!raw.ok() || !raw.truncate(0)) return 13;
        }
        w->heartbeat(shm::sys::realtime_ms());  // a store into the first page
        if (!w->publish(slot, token_record(8, "tok-while-truncated"))) return 14;
        auto found = w->ensure_intact();
        if (!found || *found != shm::Integrity::truncated) return 15;
        if (!w->ensure_intact() || *w->ensure_intact() != shm::Integrity::intact) return 16;
        return 0;
    });
    REQUIRE(child.wait());
    INFO("writer: " << child.describe());
    CHECK(child.exited_with(0));
    // The record published while truncated is in the new segment, same slot.
    CHECK(fresh_read(g.name) == "tok-while-truncated v8");
}

TEST_CASE("check_intact tells unlinked and replaced apart, and recreate brings every slot back") {
    SegmentGuard g{segtest::unique_segment("sunlink")};
    auto w = shm::WriterSegment::create_or_attach(segtest::spec(g.name));
    REQUIRE(w);
    REQUIRE(w->claim("a"));
    const std::uint32_t slot = *w->claim("c");
    REQUIRE(slot == 1);
    REQUIRE(w->publish(slot, token_record(3, "tok-c")));
    CHECK(*w->check_intact() == shm::Integrity::intact);

    SECTION("unlinked") {
        w->unlink();
        CHECK(*w->check_intact() == shm::Integrity::unlinked);
    }
    SECTION("replaced by a file of ours") {
        w->unlink();
        const int fd = ::open(("/dev/shm/" + g.name).c_str(), O_CREAT | O_EXCL | O_RDWR, 0644);
        REQUIRE(fd >= 0);
        REQUIRE(::fchmod(fd, 0644) == 0);
        REQUIRE(::write(fd, "x", 1) == 1);
        ::close(fd);
        CHECK(*w->check_intact() == shm::Integrity::replaced);
        // Not ours to overwrite: an error, and the old mapping stays in use.
        auto again = w->ensure_intact();
        REQUIRE_FALSE(again);
        CHECK(*w->check_intact() == shm::Integrity::replaced);
        struct stat st {};
        REQUIRE(::stat(("/dev/shm/" + g.name).c_str(), &st) == 0);
        CHECK(st.st_size == 1);  // left as it was
        REQUIRE(::unlink(("/dev/shm/" + g.name).c_str()) == 0);
    }
    auto found = w->ensure_intact();
    REQUIRE(found);
    CHECK(*found == shm::Integrity::unlinked);
    CHECK(*w->check_intact() == shm::Integrity::intact);
    CHECK(fresh_read(g.name) == "tok-c v3");
    // Same slot numbers: the refresher's slot indexes stay right.
    auto again = w->claim("c");
    REQUIRE(again);
    CHECK(*again == slot);
    REQUIRE(w->publish(slot, token_record(4, "tok-c-2")));
    CHECK(fresh_read(g.name) == "tok-c-2 v4");
}
