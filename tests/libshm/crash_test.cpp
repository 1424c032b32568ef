// A writer killed anywhere leaves readers a complete record and the next
// writer a segment it can go on with.
//
// - Killed mid-copy (stopped there by the WriterStep hook): readers keep the
//   previous record, the half-written copy is visible in the segment but no
//   reader is directed to it, a second writer is refused while the first
//   lives, and a new writer re-attaches and continues versions.
// - Killed at random points of a writer publishing flat out, until a minimum
//   of kills has landed between the half-copy and the sequence store (the
//   writer notes, at its mid-copy step, the version it is writing, on a page
//   the test shares; a kill landed there when that version is one past the
//   one readers see). Caught: seq stored before the copy, or the mid-copy
//   step hook not called (no such kill is ever observed).
// - Killed deterministically at the other steps, each stopped there by the
//   hook and the stop observed in the segment before the kill: slot claim
//   (no half-claimed slot visible), retire, header initialisation (no
//   half-written header trusted).
#include "proof_support.hpp"
#include "test_support.hpp"

#include <tokenshm/reader.hpp>
#include <tokenshm/shm/latch.hpp>
#include <tokenshm/shm/segment.hpp>

#include <catch2/catch.hpp>

#include <atomic>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

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

namespace {

// Where the random-kill writer child stands: the version it is publishing,
// noted by its mid-copy step hook, on a page the test shares with it.
struct MidCopyProbe {
    std::atomic<std::uint64_t> mid_copy_version{0};
};

// The random-kill writer child: attaches, reports what it found, then
// publishes flat out until killed.
int publish_until_killed(const std::string& name, MidCopyProbe& probe, int report_fd) {
    std::vector<std::string> repaired;
    auto w = shm::WriterSegment::create_or_attach(segtest::spec(name, kMaxToken, 2), &repaired);
    AttachReport rep;
    if (!w) {
        (void)segtest::write_all(report_fd, &rep, sizeof rep);
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
    std::uint64_t v = rep.start_version + 1;
    w->set_step_hook([&v, &probe](shm::WriterStep step) {
        if (step == shm::WriterStep::mid_copy) probe.mid_copy_version.store(v);
    });
    segtest::SynthRecord rec;
    for (;; ++v) {
        segtest::make_synth(v, kCap, rec);
        if (!w->publish(*slot, rec.rec)) return 12;
        if (v == rep.start_version + 1 && !segtest::write_all(report_fd, &rep, sizeof rep))
            return 13;
    }
}

// The version word of the copy the slot's seq does not direct readers to.
std::uint64_t other_copy_version(const std::string& name) {
    RawSegment raw(name);
    if (!raw.ok()) return 0;
    const shm::Geometry geo{kMaxToken, 2};
    const auto seq = raw.get<std::uint64_t>(TOKENSHM_HEADER_SIZE + TOKENSHM_SLOT_SEQ);
    const std::size_t other =
        TOKENSHM_HEADER_SIZE + TOKENSHM_SLOT_COPIES + ((seq + 1) & 1) * geo.record_size();
    return raw.get<std::uint64_t>(other + TOKENSHM_REC_VERSION);
}

}  // namespace

TEST_CASE(
    "writers killed at random points: kills land mid-copy, every restart finds a complete "
    "record") {
    SegmentGuard g{segtest::unique_segment("crashrand")};
    // Rounds go on until this many kills have landed between the half-copy
    // and the seq store; the caps turn too few into a failure.
    constexpr int kMinMidCopyKills = 10;
    constexpr int kMaxRounds = 3000;
    const segtest::EvidenceCap cap(60'000'000'000);
    std::mt19937 rng(static_cast<unsigned>(::getpid()));
    std::uniform_int_distribution<int> delay_us(0, 1000);
    segtest::SharedPage<MidCopyProbe> probe;
    std::uint64_t last_seen = 0;
    int rounds = 0;
    int mid_copy_kills = 0;
    std::uint64_t total_publishes = 0;

    for (; rounds < kMaxRounds && mid_copy_kills < kMinMidCopyKills && !cap.reached(); ++rounds) {
        INFO("round " << rounds);
        Pipe report;
        Child writer = Child::fork([&] {
            report.close_read();
            return publish_until_killed(g.name, *probe, report.wr());
        });
        report.close_write();
        AttachReport rep;
        REQUIRE(segtest::read_exact(report.rd(), &rep, sizeof rep, 30s) == sizeof rep);
        REQUIRE(rep.ok == 1);
        REQUIRE(rep.created == (rounds == 0 ? 1 : 0));
        REQUIRE(rep.repaired == 0);
        REQUIRE(rep.start_version == last_seen);

        // The delay only spreads the kill points; whether a kill landed
        // mid-copy is observed below, not assumed.
        struct timespec d {
            0, delay_us(rng) * 1000L
        };
        ::nanosleep(&d, nullptr);
        writer.kill(SIGKILL);
        REQUIRE(writer.wait(30s));
        REQUIRE(writer.killed_by(SIGKILL));

        auto reader = tokenshm::Reader::open(g.name);
        REQUIRE(reader);
        auto h = reader->lookup("c");
        REQUIRE(h);
        auto t = h->get();
        REQUIRE(t);
        REQUIRE(segtest::verify_synth(segtest::observed(*t), kCap) == nullptr);
        REQUIRE(t->version() > last_seen);  // the writer published at least once
        total_publishes += t->version() - last_seen;

        // The hook can only have run for the version readers see or the next.
        const std::uint64_t mid = probe->mid_copy_version.load();
        REQUIRE(mid >= t->version());
        REQUIRE(mid <= t->version() + 1);
        if (mid == t->version() + 1) {
            // Killed after writing half of version t+1 and before seq named it:
            // that copy's head already says t+1, and no reader sees it.
            ++mid_copy_kills;
            CHECK(other_copy_version(g.name) == t->version() + 1);
        }
        last_seen = t->version();
    }
    std::printf(
        "crash: %d kills, %llu publishes, %d kills landed between half-copy and seq store\n",
        rounds, static_cast<unsigned long long>(total_publishes), mid_copy_kills);
    std::fflush(stdout);
    REQUIRE(mid_copy_kills >= kMinMidCopyKills);

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

namespace {

// Starts a writer child that runs `body` (which arms a stop_at hook on the
// pipe it is given) and waits until the child stands at the hook. `at_hook`
// is false when the child never got there.
template <class F>
Child writer_stopped_at_hook(F&& body, bool& at_hook) {
    Pipe hooked;
    Child writer = Child::fork([&] {
        hooked.close_read();
        return body(hooked.wr());
    });
    hooked.close_write();
    char byte = 0;
    at_hook = segtest::read_exact(hooked.rd(), &byte, 1, 30s) == 1;
    return writer;
}

// Claims `name` and publishes synthetic version `v` in it.
bool claim_and_publish(shm::WriterSegment& w, const char* name, std::uint64_t v) {
    const auto slot = w.claim(name);
    if (!slot) return false;
    segtest::SynthRecord rec;
    segtest::make_synth(v, kCap, rec);
    return w.publish(*slot, rec.rec).has_value();
}

// The version a fresh reader sees for `name`, or 0 when it sees none.
std::uint64_t version_seen(const std::string& segment, const char* name) {
    auto reader = tokenshm::Reader::open(segment);
    if (!reader) return 0;
    auto h = reader->lookup(name);
    if (!h) return 0;
    auto t = h->get();
    if (!t || segtest::verify_synth(segtest::observed(*t), kCap) != nullptr) return 0;
    return t->version();
}

tokenshm::Error lookup_error(const std::string& segment, const char* name) {
    auto reader = tokenshm::Reader::open(segment);
    if (!reader) return reader.error().code;
    auto h = reader->lookup(name);
    return h ? tokenshm::Error{} : h.error().code;
}

std::size_t slot_offset(std::uint32_t i) {
    return TOKENSHM_HEADER_SIZE + i * shm::Geometry{kMaxToken, 2}.slot_size();
}

// Kills `writer` and checks it died by that kill.
bool kill_and_reap(Child& writer) {
    writer.kill(SIGKILL);
    return writer.wait(30s) && writer.killed_by(SIGKILL);
}

}  // namespace

TEST_CASE(
    "writer killed while claiming a slot: no half-claimed slot is visible, a new writer "
    "goes on") {
    SegmentGuard g{segtest::unique_segment("crashclaim")};
    bool at_hook = false;
    Child writer = writer_stopped_at_hook(
        [&](int fd) {
            auto w = shm::WriterSegment::create_or_attach(segtest::spec(g.name, kMaxToken, 2));
            if (!w || !claim_and_publish(*w, "a", 1)) return 10;
            w->set_step_hook(stop_at(shm::WriterStep::slot_claim, fd));
            (void)w->claim("b");  // stops with the name written, status still free
            return 11;
        },
        at_hook);
    REQUIRE(at_hook);
    {
        // Observed: slot 1 holds the name "b" and is still free.
        RawSegment raw(g.name);
        REQUIRE(raw.ok());
        CHECK(std::string(raw.bytes() + slot_offset(1) + TOKENSHM_SLOT_NAME) == "b");
        CHECK(raw.get<std::uint32_t>(slot_offset(1) + TOKENSHM_SLOT_STATUS) == TOKENSHM_SLOT_FREE);
    }
    CHECK(lookup_error(g.name, "b") == tokenshm::Error::no_such_credential);
    CHECK(version_seen(g.name, "a") == 1);
    REQUIRE(kill_and_reap(writer));
    CHECK(lookup_error(g.name, "b") == tokenshm::Error::no_such_credential);
    CHECK(version_seen(g.name, "a") == 1);

    std::vector<std::string> repaired;
    auto w = shm::WriterSegment::create_or_attach(segtest::spec(g.name, kMaxToken, 2), &repaired);
    REQUIRE(w);
    CHECK_FALSE(w->created());
    CHECK(repaired.empty());
    REQUIRE(claim_and_publish(*w, "a", 2));
    REQUIRE(claim_and_publish(*w, "b", 1));
    CHECK(version_seen(g.name, "a") == 2);
    CHECK(version_seen(g.name, "b") == 1);
}

TEST_CASE(
    "writer killed while retiring a slot: the slot stays retired, a new writer revives it "
    "and versions go on") {
    SegmentGuard g{segtest::unique_segment("crashretire")};
    bool at_hook = false;
    Child writer = writer_stopped_at_hook(
        [&](int fd) {
            auto w = shm::WriterSegment::create_or_attach(segtest::spec(g.name, kMaxToken, 2));
            if (!w || !claim_and_publish(*w, "a", 1) || !claim_and_publish(*w, "b", 5)) return 10;
            w->set_step_hook(stop_at(shm::WriterStep::retire, fd));
            w->retire(1);  // stops with status removed, waiters not yet woken
            return 11;
        },
        at_hook);
    REQUIRE(at_hook);
    {
        RawSegment raw(g.name);  // observed: slot 1 says removed
        REQUIRE(raw.ok());
        CHECK(raw.get<std::uint32_t>(slot_offset(1) + TOKENSHM_SLOT_STATUS) ==
              TOKENSHM_SLOT_REMOVED);
    }
    CHECK(lookup_error(g.name, "b") == tokenshm::Error::no_such_credential);
    REQUIRE(kill_and_reap(writer));
    CHECK(lookup_error(g.name, "b") == tokenshm::Error::no_such_credential);
    CHECK(version_seen(g.name, "a") == 1);

    std::vector<std::string> repaired;
    auto w = shm::WriterSegment::create_or_attach(segtest::spec(g.name, kMaxToken, 2), &repaired);
    REQUIRE(w);
    CHECK(repaired.empty());
    const auto slot = w->claim("b");
    REQUIRE(slot);
    CHECK(*slot == 1);  // its own slot, revived
    std::vector<std::uint64_t> scratch;
    const auto cur = w->current(*slot, scratch);
    REQUIRE(cur);
    CHECK(cur->version == 5);
    REQUIRE(claim_and_publish(*w, "b", cur->version + 1));
    CHECK(version_seen(g.name, "b") == 6);
    REQUIRE(claim_and_publish(*w, "a", 2));
    CHECK(version_seen(g.name, "a") == 2);
}

TEST_CASE(
    "writer killed while initialising the header: no reader trusts the segment, a new "
    "writer finishes it") {
    SegmentGuard g{segtest::unique_segment("crashinit")};
    bool at_hook = false;
    Child writer = writer_stopped_at_hook(
        [&](int fd) {
            shm::SegmentSpec sp = segtest::spec(g.name, kMaxToken, 2);
            sp.step_hook = stop_at(shm::WriterStep::header_init, fd);
            (void)shm::WriterSegment::create_or_attach(sp);  // stops before the magic
            return 10;
        },
        at_hook);
    REQUIRE(at_hook);
    {
        RawSegment raw(g.name);  // observed: geometry written, magic not
        REQUIRE(raw.ok());
        CHECK(raw.get<std::uint32_t>(TOKENSHM_HDR_MAX_TOKEN_BYTES) == kMaxToken);
        CHECK(raw.get<std::uint64_t>(TOKENSHM_HDR_MAGIC) == 0);
    }
    CHECK(lookup_error(g.name, "c") == tokenshm::Error::no_segment);
    REQUIRE(kill_and_reap(writer));
    CHECK(lookup_error(g.name, "c") == tokenshm::Error::no_segment);
    auto ro = shm::ReadOnlySegment::open(g.name, {});
    REQUIRE_FALSE(ro);
    CHECK(ro.error().code == shm::SegmentErrc::no_segment);

    std::vector<std::string> repaired;
    auto w = shm::WriterSegment::create_or_attach(segtest::spec(g.name, kMaxToken, 2), &repaired);
    REQUIRE(w);
    CHECK(w->created());  // it finished the dead writer's creation
    CHECK(repaired.empty());
    REQUIRE(claim_and_publish(*w, "c", 1));
    CHECK(version_seen(g.name, "c") == 1);
}
