// Creating and attaching to a segment, as the writer does: the name rule,
// claiming slots, the step hook tests use to stop a writer, and the lock that
// keeps a second writer out.
#include "test_support.hpp"

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
