// No torn read across threads: the torn-read test with threads instead of
// processes, so ThreadSanitizer sees every access of writer and readers
// (suite tsan, built with -Db_sanitize=thread). As there, a pass needs
// evidence that the race happened: each reader thread loops until it has
// seen a minimum of new versions and of get() copies the writer invalidated
// (tokenshm::detail::copy_retries), and of stalled bare-latch copies (the
// reader waits between a record's head and its payload until the writer has
// rewritten that copy: segtest::stalled_copy) that the latch reported as
// lost races, or a time cap, and the test fails if the cap comes first. The minimums are modest so
// it stays quick under TSan. Caught: try_read() reporting every copy as good, or skipping the seq
// re-check.
#include "proof_support.hpp"
#include "test_support.hpp"

#include <tokenshm/reader.hpp>
#include <tokenshm/shm/latch.hpp>
#include <tokenshm/shm/segment.hpp>

#include <catch2/catch.hpp>

#include <atomic>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

namespace shm = tokenshm::shm;
using segtest::SegmentGuard;

namespace {
constexpr std::uint32_t kMaxTokenBytes = 4096;
constexpr int kReaders = 2;
// The evidence each reader thread must gather, and the cap (per token size)
// that turns "not enough yet" into a failure.
constexpr std::uint64_t kMinReads = 20'000;
constexpr std::uint64_t kMinNewVersions = 100;
constexpr std::uint64_t kMinRetries = 8;
constexpr std::uint64_t kMinStalledLost = 8;    // provoked races the latch caught
constexpr std::int64_t kStallNs = 200'000'000;  // a stalled copy waits at most this
constexpr std::int64_t kCapNs = 20'000'000'000;

struct ThreadStats {
    std::uint64_t reads = 0;
    std::uint64_t new_versions = 0;
    std::uint64_t retries = 0;        // get() copies the writer invalidated
    std::uint64_t stalled_lost = 0;   // stalled bare-latch copies reported as lost races
    std::uint64_t stalled_reads = 0;  // stalled copies the writer did not rewrite: verified
    std::uint64_t busy = 0;
    std::uint64_t torn = 0;
    std::uint64_t other_errors = 0;
    std::string first_problem;

    bool evidence_in() const noexcept {
        return reads >= kMinReads && new_versions >= kMinNewVersions && retries >= kMinRetries &&
               stalled_lost >= kMinStalledLost;
    }
};

// One get(), verified and tallied.
void check_get(tokenshm::Handle& h, std::size_t cap, ThreadStats& st, std::uint64_t& prev) {
    auto t = h.get();
    if (!t) {
        if (t.error() == tokenshm::Error::busy)
            ++st.busy;
        else
            ++st.other_errors;
        return;
    }
    ++st.reads;
    if (t->version() != prev) ++st.new_versions;
    if (t->version() < prev) {
        ++st.torn;
        if (st.first_problem.empty()) st.first_problem = "version went backwards";
    }
    prev = t->version();
    if (const char* why = segtest::verify_synth(segtest::observed(*t), cap)) {
        ++st.torn;
        if (st.first_problem.empty())
            st.first_problem = std::string(why) + " at version " + std::to_string(t->version());
    }
}

void problem(ThreadStats& st, std::string why) {
    ++st.torn;
    if (st.first_problem.empty()) st.first_problem = std::move(why);
}

// One stalled bare-latch copy (segtest::stalled_copy), judged and tallied.
void check_stalled(const shm::LatchReader& latch, std::vector<std::uint64_t>& buf,
                   std::uint32_t max_token, std::size_t cap, ThreadStats& st) {
    const segtest::StalledCopy c =
        segtest::stalled_copy(latch, buf.data(), buf.size(), max_token, kStallNs);
    if (c.writer_moved && !c.copied) {
        ++st.stalled_lost;
    } else if (c.writer_moved) {
        problem(st, "validation passed a copy the writer rewrote during it");
    } else if (!c.decoded) {
        problem(st, "stalled copy undecodable");
    } else if (const char* why = segtest::verify_synth(segtest::observed(c.view), cap)) {
        problem(st, std::string("stalled copy: ") + why);
    } else {
        ++st.stalled_reads;
    }
}

// A reader thread: reads until it has the evidence, a torn record (which
// decides the verdict already) or the cap.
void read_until_evidence(tokenshm::Handle& h, const shm::ReadOnlySegment& ro, std::size_t cap,
                         ThreadStats& st) {
    const shm::SlotControl* slot = ro.slot(*ro.find("c"));
    const std::size_t rec = ro.geometry().record_size();
    const shm::LatchReader latch{&slot->seq,
                                 {shm::copy_at(slot, rec, 0), shm::copy_at(slot, rec, 1)}};
    std::vector<std::uint64_t> buf(rec / 8);
    const segtest::EvidenceCap cap_time(kCapNs);
    const std::uint64_t retries_before = tokenshm::detail::copy_retries(h);
    std::uint64_t prev = 0;
    for (std::uint64_t i = 1;; ++i) {
        check_get(h, cap, st, prev);
        if ((i & 63) == 0) check_stalled(latch, buf, ro.geometry().max_token_bytes, cap, st);
        if ((i & 63) != 0) continue;
        st.retries = tokenshm::detail::copy_retries(h) - retries_before;
        if (st.evidence_in() || st.torn > 0 || cap_time.reached()) break;
    }
}
}  // namespace

TEST_CASE("no torn read across threads (TSan-clean), with evidence the writer raced the readers",
          "[torn][threads]") {
    const std::size_t cap = GENERATE(std::size_t{1024}, std::size_t{kMaxTokenBytes});
    INFO("token size up to " << cap << " bytes");

    SegmentGuard g{segtest::unique_segment("tornthr")};
    auto w = shm::WriterSegment::create_or_attach(segtest::spec(g.name, kMaxTokenBytes, 1));
    REQUIRE(w);
    const std::uint32_t slot = *w->claim("c");
    segtest::SynthRecord first;
    segtest::make_synth(1, cap, first);
    REQUIRE(w->publish(slot, first.rec));

    auto reader = tokenshm::Reader::open(g.name);  // shared by the reader threads
    REQUIRE(reader);
    auto ro = shm::ReadOnlySegment::open(g.name, {});  // for the bare-latch copies
    REQUIRE(ro);
    REQUIRE(ro->find("c"));
    std::vector<tokenshm::Handle> handles;  // one per thread
    for (int i = 0; i < kReaders; ++i) {
        auto h = reader->lookup("c");
        REQUIRE(h);
        handles.push_back(std::move(*h));
    }

    std::atomic<int> started{0};
    std::atomic<int> finished{0};
    std::vector<ThreadStats> stats(kReaders);
    std::vector<std::thread> threads;
    for (int i = 0; i < kReaders; ++i) {
        threads.emplace_back([&, i] {
            segtest::pin_to_cpu(1);  // the writer (this thread) has the first CPU
            started.fetch_add(1);
            read_until_evidence(handles[static_cast<std::size_t>(i)], *ro, cap,
                                stats[static_cast<std::size_t>(i)]);
            finished.fetch_add(1);
        });
    }

    std::uint64_t publishes = 0;
    std::uint64_t publish_errors = 0;
    std::uint64_t last = 1;
    {
        // The writer runs here until every reader has finished (each stops by
        // its own cap at the latest).
        segtest::pin_to_cpu(0);
        while (started.load() < kReaders)
            std::this_thread::yield();
        segtest::SynthRecord rec;
        for (std::uint64_t v = 2;; ++v) {
            if ((v & 7) == 0 && finished.load() == kReaders) break;
            segtest::make_synth(v, cap, rec);
            if (!w->publish(slot, rec.rec)) ++publish_errors;
            ++publishes;
            last = v;
        }
    }
    for (auto& t : threads)
        t.join();

    std::printf("torn-read-threads cap=%zu writer: publishes=%llu\n", cap,
                static_cast<unsigned long long>(publishes));
    for (int i = 0; i < kReaders; ++i) {
        const ThreadStats& st = stats[static_cast<std::size_t>(i)];
        std::printf(
            "torn-read-threads cap=%zu reader %d: reads=%llu new_versions=%llu retries=%llu "
            "stalled_lost=%llu stalled_reads=%llu busy=%llu torn=%llu\n",
            cap, i, static_cast<unsigned long long>(st.reads),
            static_cast<unsigned long long>(st.new_versions),
            static_cast<unsigned long long>(st.retries),
            static_cast<unsigned long long>(st.stalled_lost),
            static_cast<unsigned long long>(st.stalled_reads),
            static_cast<unsigned long long>(st.busy), static_cast<unsigned long long>(st.torn));
        INFO("reader " << i << ": " << st.first_problem);
        CHECK(st.torn == 0);
        CHECK(st.other_errors == 0);
        // Evidence, gathered before the cap: the writer moved under this
        // reader and invalidated some of its copies.
        CHECK(st.reads >= kMinReads);
        CHECK(st.new_versions >= kMinNewVersions);
        CHECK(st.retries >= kMinRetries);
        CHECK(st.stalled_lost >= kMinStalledLost);
    }
    std::fflush(stdout);
    CHECK(publish_errors == 0);
    auto h = reader->lookup("c");
    REQUIRE(h);
    auto t = h->get();
    REQUIRE(t);
    CHECK(t->version() == last);
    CHECK(segtest::verify_synth(segtest::observed(*t), cap) == nullptr);
}
