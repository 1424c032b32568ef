// Issue point 14: a writer killed with SIGKILL in the middle of writing a copy
// leaves readers the previous complete record at once; a new writer
// re-attaches and versions go on; a second writer while the first lives is
// refused with a message naming the holder's pid. Then the same again with the
// kill landing at random points of a writer publishing flat out.
#include "test_support.hpp"

#include <tokenshm/reader.hpp>
#include <tokenshm/shm/latch.hpp>
#include <tokenshm/shm/segment.hpp>

#include <catch2/catch.hpp>

#include <cstdio>
#include <random>

using namespace std::chrono_literals;
using segtest::Child;
using segtest::Pipe;
using segtest::RawSegment;
using segtest::SegmentGuard;
namespace shm = tokenshm::shm;

namespace {

constexpr std::uint32_t kMaxToken = 1024;
constexpr std::size_t kCap = 1024;

// A writer step hook for the writer child: at `at`, tells the parent (on
// `fd`) that the writer stands there, then waits for the SIGKILL.
shm::WriterStepHook stop_at(shm::WriterStep at, int fd) {
    return [at, fd](shm::WriterStep step) {
        if (step != at) return;
        const char one = 'h';
        (void)segtest::write_all(fd, &one, 1);
        for (;;)
            ::pause();
    };
}

struct AttachReport {
    int ok = 0;
    int created = 0;
    std::uint32_t repaired = 0;
    std::uint64_t start_version = 0;  // the version this writer found
};

}  // namespace

TEST_CASE("writer killed mid-write: readers keep the previous record, a new writer goes on") {
    SegmentGuard g{segtest::unique_segment("crash")};
    Pipe hooked;
    Child writer = Child::fork([&] {
        hooked.close_read();
        auto w = shm::WriterSegment::create_or_attach(segtest::spec(g.name, kMaxToken, 2));
        if (!w || !w->created()) return 10;
        auto slot = w->claim("c");
        if (!slot) return 11;
        segtest::SynthRecord rec;
        segtest::make_synth(1, kCap, rec);
        if (!w->publish(*slot, rec.rec)) return 12;
        w->set_step_hook(stop_at(shm::WriterStep::mid_copy, hooked.wr()));
        segtest::make_synth(2, kCap, rec);
        (void)w->publish(*slot, rec.rec);  // stops halfway, in the hook
        return 13;
    });
    hooked.close_write();
    char byte = 0;
    REQUIRE(segtest::read_exact(hooked.rd(), &byte, 1, 30s) == 1);

    // The writer is frozen halfway through copy 0 (version 2); seq still says 1.
    auto reader = tokenshm::Reader::open(g.name);
    REQUIRE(reader);
    auto h = reader->lookup("c");
    REQUIRE(h);
    {
        auto t = h->get();
        REQUIRE(t);
        CHECK(t->version() == 1);
        CHECK(segtest::verify_synth(segtest::observed(*t), kCap) == nullptr);
        const auto ws = reader->writer();
        CHECK(ws.pid == writer.pid());
        CHECK(ws.lock_held);
    }
    {
        // Proof that the kill lands mid-write: the copy the writer was filling
        // holds version 2's first half, and would not verify.
        RawSegment raw(g.name);
        REQUIRE(raw.ok());
        const shm::Geometry geo{kMaxToken, 2};
        const std::size_t slot0 = TOKENSHM_HEADER_SIZE;
        REQUIRE(raw.get<std::uint64_t>(slot0 + TOKENSHM_SLOT_SEQ) == 1);
        const std::size_t partial = slot0 + TOKENSHM_SLOT_COPIES + 0 * geo.record_size();
        CHECK(raw.get<std::uint64_t>(partial + TOKENSHM_REC_VERSION) == 2);
        std::vector<std::uint64_t> words(geo.record_size() / 8);
        std::memcpy(words.data(), raw.bytes() + partial, geo.record_size());
        shm::RecordView v{};
        const bool decodes = shm::decode(words.data(), words.size(), kMaxToken, v);
        CHECK((!decodes || segtest::verify_synth(segtest::observed(v), kCap) != nullptr));
    }

    SECTION("a second writer is refused while the first lives, naming its pid") {
        std::vector<std::string> repaired;
        auto second =
            shm::WriterSegment::create_or_attach(segtest::spec(g.name, kMaxToken, 2), &repaired);
        REQUIRE_FALSE(second);
        CHECK(second.error().code == shm::SegmentErrc::locked);
        CHECK_THAT(second.error().message, Catch::Contains("pid " + std::to_string(writer.pid())));
        CHECK(repaired.empty());
        // Refusing changed nothing.
        auto t = h->get();
        REQUIRE(t);
        CHECK(t->version() == 1);
    }

    SECTION("after SIGKILL: same record at once, then a new writer re-attaches") {
        writer.kill(SIGKILL);
        REQUIRE(writer.wait(30s));
        INFO("writer " << writer.describe());
        CHECK(writer.killed_by(SIGKILL));

        auto t = h->get();  // the cached handle
        REQUIRE(t);
        CHECK(t->version() == 1);
        CHECK(segtest::verify_synth(segtest::observed(*t), kCap) == nullptr);
        auto fresh_reader = tokenshm::Reader::open(g.name);  // and a new one
        REQUIRE(fresh_reader);
        auto h2 = fresh_reader->lookup("c");  // the token views live in the handle
        REQUIRE(h2);
        auto t2 = h2->get();
        REQUIRE(t2);
        CHECK(t2->version() == 1);
        CHECK(segtest::verify_synth(segtest::observed(*t2), kCap) == nullptr);
        CHECK_FALSE(reader->writer().lock_held);

        std::vector<std::string> repaired;
        auto w =
            shm::WriterSegment::create_or_attach(segtest::spec(g.name, kMaxToken, 2), &repaired);
        REQUIRE(w);
        CHECK_FALSE(w->created());
        CHECK(repaired.empty());  // the current record was complete: nothing to repair
        const auto slot = w->claim("c");
        REQUIRE(slot);
        CHECK(*slot == 0);
        std::vector<std::uint64_t> scratch;
        const auto cur = w->current(*slot, scratch);
        REQUIRE(cur);
        CHECK(cur->version == 1);

        segtest::SynthRecord rec;
        segtest::make_synth(cur->version + 1, kCap, rec);
        REQUIRE(w->publish(*slot, rec.rec));
        auto t3 = h->get();
        REQUIRE(t3);
        CHECK(t3->version() == 2);
        CHECK(segtest::verify_synth(segtest::observed(*t3), kCap) == nullptr);
        const auto ws = reader->writer();
        CHECK(ws.pid == ::getpid());
        CHECK(ws.generation == 2);
        CHECK(ws.lock_held);
    }
}

TEST_CASE("writers killed at random points: every restart finds a complete record") {
    SegmentGuard g{segtest::unique_segment("crashrand")};
    constexpr int kRounds = 25;
    std::mt19937 rng(static_cast<unsigned>(::getpid()));
    std::uniform_int_distribution<int> delay_us(0, 3000);
    std::uint64_t last_seen = 0;
    int partial_copies = 0;
    std::uint64_t total_publishes = 0;

    for (int round = 0; round < kRounds; ++round) {
        INFO("round " << round);
        Pipe report;
        Child writer = Child::fork([&] {
            report.close_read();
            std::vector<std::string> repaired;
            auto w = shm::WriterSegment::create_or_attach(segtest::spec(g.name, kMaxToken, 2),
                                                          &repaired);
            AttachReport rep;
            if (!w) {
                (void)segtest::write_all(report.wr(), &rep, sizeof rep);
                return 10;
            }
            auto slot = w->claim("c");
            if (!slot) return 11;
            std::vector<std::uint64_t> scratch;
            const auto cur = w->current(*slot, scratch);
            rep.ok = 1;
            rep.created = w->created() ? 1 : 0;
            rep.repaired = static_cast<std::uint32_t>(repaired.size());
            rep.start_version = cur ? cur->version : 0;
            segtest::SynthRecord rec;
            for (std::uint64_t v = rep.start_version + 1;; ++v) {
                segtest::make_synth(v, kCap, rec);
                if (!w->publish(*slot, rec.rec)) return 12;
                if (v == rep.start_version + 1 &&
                    !segtest::write_all(report.wr(), &rep, sizeof rep))
                    return 13;
            }
        });
        report.close_write();
        AttachReport rep;
        REQUIRE(segtest::read_exact(report.rd(), &rep, sizeof rep, 30s) == sizeof rep);
        REQUIRE(rep.ok == 1);
        CHECK(rep.created == (round == 0 ? 1 : 0));
        CHECK(rep.repaired == 0);
        CHECK(rep.start_version == last_seen);

        // The kill lands wherever the writer happens to be: the assertions below
        // hold at every instruction, so the delay only spreads the kill points.
        struct timespec d {
            0, delay_us(rng) * 1000L
        };
        ::nanosleep(&d, nullptr);
        writer.kill(SIGKILL);
        REQUIRE(writer.wait(30s));
        CHECK(writer.killed_by(SIGKILL));

        auto reader = tokenshm::Reader::open(g.name);
        REQUIRE(reader);
        auto h = reader->lookup("c");
        REQUIRE(h);
        auto t = h->get();
        REQUIRE(t);
        CHECK(segtest::verify_synth(segtest::observed(*t), kCap) == nullptr);
        CHECK(t->version() > last_seen);  // the writer published at least once
        total_publishes += t->version() - last_seen;

        // Was the other copy being written (or written but not yet published)?
        RawSegment raw(g.name);
        REQUIRE(raw.ok());
        const shm::Geometry geo{kMaxToken, 2};
        const auto seq = raw.get<std::uint64_t>(TOKENSHM_HEADER_SIZE + TOKENSHM_SLOT_SEQ);
        const std::size_t other =
            TOKENSHM_HEADER_SIZE + TOKENSHM_SLOT_COPIES + ((seq + 1) & 1) * geo.record_size();
        if (raw.get<std::uint64_t>(other + TOKENSHM_REC_VERSION) > t->version()) ++partial_copies;
        last_seen = t->version();
    }
    std::printf("crash: %d kills, %llu publishes, %d kills left an unpublished copy behind\n",
                kRounds, static_cast<unsigned long long>(total_publishes), partial_copies);
    std::fflush(stdout);

    // A last writer re-attaches and goes on from the last version.
    auto w = shm::WriterSegment::create_or_attach(segtest::spec(g.name, kMaxToken, 2));
    REQUIRE(w);
    CHECK_FALSE(w->created());
    const auto slot = *w->claim("c");
    segtest::SynthRecord rec;
    segtest::make_synth(last_seen + 1, kCap, rec);
    REQUIRE(w->publish(slot, rec.rec));
    auto reader = tokenshm::Reader::open(g.name);
    REQUIRE(reader);
    auto h = reader->lookup("c");
    REQUIRE(h);
    auto t = h->get();
    REQUIRE(t);
    CHECK(t->version() == last_seen + 1);
}
