// No torn read, ever, across processes. A writer process publishes
// checksummed synthetic records (every byte derived from the version) as fast
// as it can; two or three reader processes verify every record Handle::get
// returns. Parameterised over token size (64 B, 1 KiB, max_token_bytes) x
// readers (2, 3).
//
// A pass needs evidence that the race happened: each reader loops until it
// has seen a minimum of new versions, of get() copies the writer invalidated
// (tokenshm::detail::copy_retries) and of bare-latch copies the writer
// invalidated (every 4th iteration a reader also copies the slot through
// LatchReader::try_read, the protocol get() uses, and verifies that copy
// too), and of stalled bare-latch copies (the reader waits between a
// record's head and its payload until the writer has rewritten that copy:
// segtest::stalled_copy) that the latch reported as lost races, or until a
// time cap, and the test fails if the cap comes first.
// Caught: try_read() reporting every copy as good, or skipping the seq
// re-check (the retries never happen, and torn copies get through).
#include "proof_support.hpp"
#include "test_support.hpp"

#include <tokenshm/reader.hpp>
#include <tokenshm/shm/latch.hpp>
#include <tokenshm/shm/segment.hpp>

#include <catch2/catch.hpp>

#include <chrono>
#include <cstdio>
#include <memory>
#include <vector>

using namespace std::chrono_literals;
using segtest::Child;
using segtest::Pipe;
using segtest::SegmentGuard;
namespace shm = tokenshm::shm;

namespace {

constexpr std::uint32_t kMaxTokenBytes = 8192;
// The evidence each reader must gather, and the cap (per parameter pair) that
// turns "not enough yet" into a failure. Copies the writer invalidated by
// itself are counted over all the readers of a run: on a loaded machine
// they need a reader preempted mid-copy, which is rare for a small record.
constexpr std::uint64_t kMinReads = 20'000;
constexpr std::uint64_t kMinNewVersions = 200;
constexpr std::uint64_t kMinGetRetries = 8;     // all readers together
constexpr std::uint64_t kMinRawRetries = 8;     // all readers together
constexpr std::uint64_t kMinStalledLost = 4;    // provoked races the latch caught
constexpr std::int64_t kStallNs = 200'000'000;  // a stalled copy waits at most this
constexpr std::int64_t kCapNs = 15'000'000'000;

struct ReaderStats {
    std::uint64_t reads = 0;         // successful Handle::get calls, each verified
    std::uint64_t copies = 0;        // of those, how many returned a new version
    std::uint64_t get_retries = 0;   // get() copies the writer invalidated
    std::uint64_t busy = 0;          // get() gave up after its bounded retries
    std::uint64_t raw_reads = 0;     // bare-latch copies, each verified
    std::uint64_t raw_retries = 0;   // bare-latch copies the writer invalidated
    std::uint64_t stalled_lost = 0;  // stalled bare-latch copies reported as lost races
    std::uint64_t torn = 0;          // records that failed verification
    std::uint64_t other_errors = 0;
    std::uint64_t last_version = 0;
    char first_problem[96] = {};
};

struct WriterStats {
    std::uint64_t publishes = 0;
    std::uint64_t last_version = 0;
};

// Shared by the parent, the readers and the writer of one run.
struct RunControl {
    std::atomic<bool> stop{false};              // raised once every reader has reported
    std::atomic<std::uint64_t> get_retries{0};  // the readers' totals
    std::atomic<std::uint64_t> raw_retries{0};

    // Adds a reader's new retries to the totals; true when the totals and the
    // reader's own counts are all in.
    bool evidence_in(const ReaderStats& st, ReaderStats& reported) noexcept {
        const std::uint64_t get = get_retries.fetch_add(st.get_retries - reported.get_retries) +
                                  st.get_retries - reported.get_retries;
        const std::uint64_t raw = raw_retries.fetch_add(st.raw_retries - reported.raw_retries) +
                                  st.raw_retries - reported.raw_retries;
        reported = st;
        return st.reads >= kMinReads && st.copies >= kMinNewVersions &&
               st.stalled_lost >= kMinStalledLost && get >= kMinGetRetries && raw >= kMinRawRetries;
    }
};

void note(ReaderStats& st, const char* why, std::uint64_t version) {
    if (st.first_problem[0] == '\0')
        std::snprintf(st.first_problem, sizeof st.first_problem, "%s (version %llu)", why,
                      static_cast<unsigned long long>(version));
}

// One bare-latch copy of the slot, following copy_record's protocol, counting
// the attempts the writer invalidated.
bool raw_copy(const shm::LatchReader& latch, std::uint64_t* buf, std::size_t buf_words,
              std::uint32_t max_token, ReaderStats& st, shm::RecordView& out) {
    constexpr std::size_t kFixedWords = TOKENSHM_REC_FIXED_SIZE / 8;
    shm::LatchSeq s = latch.current();
    bool overrun = false;
    auto payload_words = [&](const std::uint64_t* head) {
        const std::size_t words = shm::clamped_payload_words(shm::read_lengths(head), max_token);
        overrun = kFixedWords + words > buf_words;
        return overrun ? 0 : words;
    };
    for (int attempt = 0; attempt < 100000; ++attempt) {
        const shm::LatchCopy c = latch.try_read(s, 0, buf, kFixedWords, payload_words);
        if (overrun) return false;
        if (c.copied) return shm::decode(buf, c.words, max_token, out);
        ++st.raw_retries;
        s = c.seq;
    }
    return false;
}

// One get(), verified and tallied.
void check_get(tokenshm::Handle& handle, std::size_t cap, ReaderStats& st,
               std::uint64_t& prev_version) {
    auto t = handle.get();
    if (!t) {
        if (t.error() == tokenshm::Error::busy) {
            ++st.busy;
        } else {
            ++st.other_errors;
            note(st, tokenshm::to_string(t.error()), 0);
        }
        return;
    }
    ++st.reads;
    if (t->version() != prev_version) ++st.copies;
    if (t->version() < prev_version) {
        ++st.torn;
        note(st, "version went backwards", t->version());
    }
    prev_version = t->version();
    if (const char* why = segtest::verify_synth(segtest::observed(*t), cap)) {
        ++st.torn;
        note(st, why, t->version());
    }
}

// One bare-latch copy, verified and tallied.
void check_raw(const shm::LatchReader& latch, std::uint64_t* buf, std::size_t buf_words,
               std::uint32_t max_token, std::size_t cap, ReaderStats& st) {
    shm::RecordView v{};
    if (!raw_copy(latch, buf, buf_words, max_token, st, v)) {
        ++st.torn;
        note(st, "bare-latch copy undecodable", 0);
        return;
    }
    ++st.raw_reads;
    if (const char* why = segtest::verify_synth(segtest::observed(v), cap)) {
        ++st.torn;
        note(st, why, v.version);
    }
}

// One stalled bare-latch copy (segtest::stalled_copy), judged and tallied.
void check_stalled(const shm::LatchReader& latch, std::uint64_t* buf, std::size_t buf_words,
                   std::uint32_t max_token, std::size_t cap, ReaderStats& st) {
    const segtest::StalledCopy c =
        segtest::stalled_copy(latch, buf, buf_words, max_token, kStallNs);
    if (c.writer_moved && !c.copied) {
        ++st.stalled_lost;
        return;
    }
    const char* why = c.writer_moved ? "validation passed a copy the writer rewrote during it"
                      : !c.decoded   ? "stalled copy undecodable"
                                     : segtest::verify_synth(segtest::observed(c.view), cap);
    if (why != nullptr) {
        ++st.torn;
        note(st, why, c.view.version);
    }
}

// The body of one reader process: waits for `go` to close, reads until it
// has the evidence (or a torn record, or the cap), writes its stats to `out`.
int reader_main(const std::string& segment, std::size_t cap, RunControl& control, int ready_fd,
                int go_fd, int out_fd) {
    auto reader = tokenshm::Reader::open(segment);
    if (!reader) return 10;
    auto handle = reader->lookup("c");
    if (!handle) return 11;
    auto ro = shm::ReadOnlySegment::open(segment, {});
    if (!ro) return 12;
    const auto idx = ro->find("c");
    if (!idx) return 13;
    const shm::SlotControl* slot = ro->slot(*idx);
    const std::size_t rec = ro->geometry().record_size();
    const shm::LatchReader latch{&slot->seq,
                                 {shm::copy_at(slot, rec, 0), shm::copy_at(slot, rec, 1)}};
    const std::size_t buf_words = rec / 8;
    auto buf = std::make_unique<std::uint64_t[]>(buf_words);

    const char one = 'r';
    if (!segtest::write_all(ready_fd, &one, 1)) return 14;
    char dummy;
    if (segtest::read_exact(go_fd, &dummy, 1, 30s) != 0) return 15;  // EOF is the start signal

    ReaderStats st;
    ReaderStats reported;  // what `control` has of st already
    const segtest::EvidenceCap cap_time(kCapNs);
    const std::uint64_t retries_before = tokenshm::detail::copy_retries(*handle);
    std::uint64_t prev_version = 0;
    for (std::uint64_t i = 1;; ++i) {
        check_get(*handle, cap, st, prev_version);
        if ((i & 3) == 0)
            check_raw(latch, buf.get(), buf_words, ro->geometry().max_token_bytes, cap, st);
        if ((i & 1023) == 2)
            check_stalled(latch, buf.get(), buf_words, ro->geometry().max_token_bytes, cap, st);
        if ((i & 255) != 0) continue;
        st.get_retries = tokenshm::detail::copy_retries(*handle) - retries_before;
        // A torn record already decides the verdict: stop there.
        if (control.evidence_in(st, reported) || st.torn > 0 || cap_time.reached()) break;
    }
    st.last_version = prev_version;
    return segtest::write_all(out_fd, &st, sizeof st) ? 0 : 16;
}

}  // namespace

TEST_CASE("no torn read across processes under a writer publishing flat out", "[torn]") {
    const std::size_t cap =
        GENERATE(std::size_t{64}, std::size_t{1024}, std::size_t{kMaxTokenBytes});
    const int readers = GENERATE(2, 3);
    INFO("token size up to " << cap << " bytes, " << readers << " readers");

    SegmentGuard g{segtest::unique_segment("torn")};
    auto w = shm::WriterSegment::create_or_attach(segtest::spec(g.name, kMaxTokenBytes, 2));
    REQUIRE(w);
    const std::uint32_t slot = *w->claim("c");
    segtest::SynthRecord synth;
    segtest::make_synth(1, cap, synth);
    REQUIRE(w->publish(slot, synth.rec));

    segtest::SharedPage<RunControl> control;
    Pipe ready, go;
    std::vector<std::unique_ptr<Pipe>> results;
    std::vector<Child> children;
    children.reserve(static_cast<std::size_t>(readers) + 1);
    for (int r = 0; r < readers; ++r) {
        results.push_back(std::make_unique<Pipe>());
        const int out_fd = results.back()->wr();
        children.push_back(Child::fork([&, out_fd] {
            go.close_write();
            segtest::pin_to_cpu(1);  // the writer has the first CPU
            return reader_main(g.name, cap, *control, ready.wr(), go.rd(), out_fd);
        }));
        results.back()->close_write();
    }
    // The writer: a child using the segment this process created (the fork
    // shares the mapping and the open file description holding the lock). It
    // publishes until every reader has reported (or, should the parent die,
    // well past the readers' cap).
    Pipe writer_out;
    children.push_back(Child::fork([&] {
        go.close_write();
        segtest::pin_to_cpu(0);
        char dummy;
        if (segtest::read_exact(go.rd(), &dummy, 1, 30s) != 0) return 20;
        WriterStats ws;
        segtest::SynthRecord rec;
        const segtest::EvidenceCap safety(kCapNs + 60'000'000'000);
        for (std::uint64_t v = 2;; ++v) {
            if ((v & 63) == 0 && (control->stop.load() || safety.reached())) break;
            segtest::make_synth(v, cap, rec);
            if (!w->publish(slot, rec.rec)) return 21;
            ++ws.publishes;
            ws.last_version = v;
        }
        return segtest::write_all(writer_out.wr(), &ws, sizeof ws) ? 0 : 22;
    }));
    writer_out.close_write();
    ready.close_write();

    // Start everyone at once when all readers have mapped the segment.
    std::vector<char> ready_bytes(static_cast<std::size_t>(readers));
    REQUIRE(segtest::read_exact(ready.rd(), ready_bytes.data(), ready_bytes.size(), 30s) ==
            ready_bytes.size());
    go.close_write();

    std::vector<ReaderStats> stats(static_cast<std::size_t>(readers));
    for (ReaderStats& st : stats)
        REQUIRE(segtest::read_exact(results[static_cast<std::size_t>(&st - stats.data())]->rd(),
                                    &st, sizeof st, 90s) == sizeof st);
    control->stop.store(true);
    WriterStats ws;
    REQUIRE(segtest::read_exact(writer_out.rd(), &ws, sizeof ws, 60s) == sizeof ws);
    std::printf("torn-read cap=%zu readers=%d writer: publishes=%llu\n", cap, readers,
                static_cast<unsigned long long>(ws.publishes));
    for (int r = 0; r < readers; ++r) {
        const ReaderStats& st = stats[static_cast<std::size_t>(r)];
        std::printf(
            "torn-read cap=%zu readers=%d reader %d: reads=%llu new_versions=%llu "
            "get_retries=%llu busy=%llu raw_reads=%llu raw_retries=%llu stalled_lost=%llu "
            "torn=%llu\n",
            cap, readers, r, static_cast<unsigned long long>(st.reads),
            static_cast<unsigned long long>(st.copies),
            static_cast<unsigned long long>(st.get_retries),
            static_cast<unsigned long long>(st.busy), static_cast<unsigned long long>(st.raw_reads),
            static_cast<unsigned long long>(st.raw_retries),
            static_cast<unsigned long long>(st.stalled_lost),
            static_cast<unsigned long long>(st.torn));
        INFO("reader " << r << ": " << st.first_problem);
        CHECK(st.torn == 0);
        CHECK(st.other_errors == 0);
        CHECK(st.reads > 0);
        CHECK(st.raw_reads > 0);
        CHECK(st.last_version <= ws.last_version);
        // Evidence that the race happened, gathered before the cap: the writer
        // moved under this reader, and rewrote copies it had stalled in.
        CHECK(st.reads >= kMinReads);
        CHECK(st.copies >= kMinNewVersions);
        CHECK(st.stalled_lost >= kMinStalledLost);
    }
    // The writer invalidated copies by itself, of both kinds.
    std::printf("torn-read cap=%zu readers=%d: get_retries=%llu raw_retries=%llu in all\n", cap,
                readers, static_cast<unsigned long long>(control->get_retries.load()),
                static_cast<unsigned long long>(control->raw_retries.load()));
    std::fflush(stdout);
    CHECK(control->get_retries.load() >= kMinGetRetries);
    CHECK(control->raw_retries.load() >= kMinRawRetries);
    for (Child& c : children) {
        REQUIRE(c.wait(30s));
        INFO("child " << c.pid() << " " << c.describe());
        CHECK(c.exited_with(0));
    }
    // The last record is still intact after the run.
    auto reader = tokenshm::Reader::open(g.name);
    REQUIRE(reader);
    auto h = reader->lookup("c");  // the token views live in the handle
    REQUIRE(h);
    auto t = h->get();
    REQUIRE(t);
    CHECK(t->version() == ws.last_version);
    CHECK(segtest::verify_synth(segtest::observed(*t), cap) == nullptr);
}
