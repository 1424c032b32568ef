// Issue point 16: the torn-read test with threads instead of processes, so
// ThreadSanitizer sees every access of writer and readers (build with
// -Db_sanitize=thread). Smaller and bounded: about two seconds in all.
#include "test_support.hpp"

#include <tokenshm/reader.hpp>
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
constexpr std::int64_t kRunNs = 1'000'000'000;  // per token size; two sizes

struct ThreadStats {
    std::uint64_t reads = 0;
    std::uint64_t new_versions = 0;
    std::uint64_t busy = 0;
    std::uint64_t torn = 0;
    std::uint64_t other_errors = 0;
    std::string first_problem;
};
}  // namespace

TEST_CASE("no torn read across threads (TSan-clean)", "[torn][threads]") {
    const std::size_t cap = GENERATE(std::size_t{1024}, std::size_t{kMaxTokenBytes});
    constexpr int kReaders = 2;
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
    std::vector<tokenshm::Handle> handles;  // one per thread
    for (int i = 0; i < kReaders; ++i) {
        auto h = reader->lookup("c");
        REQUIRE(h);
        handles.push_back(std::move(*h));
    }

    std::atomic<int> started{0};
    std::atomic<bool> done{false};
    std::vector<ThreadStats> stats(kReaders);
    std::vector<std::thread> threads;
    for (int i = 0; i < kReaders; ++i) {
        threads.emplace_back([&, i] {
            ThreadStats& st = stats[static_cast<std::size_t>(i)];
            tokenshm::Handle& h = handles[static_cast<std::size_t>(i)];
            std::uint64_t prev = 0;
            started.fetch_add(1);
            while (!done.load(std::memory_order_acquire)) {
                auto t = h.get();
                if (!t) {
                    if (t.error() == tokenshm::Error::busy)
                        ++st.busy;
                    else
                        ++st.other_errors;
                    continue;
                }
                ++st.reads;
                if (t->version() != prev) ++st.new_versions;
                if (t->version() < prev && st.first_problem.empty())
                    st.first_problem = "version went backwards";
                if (t->version() < prev) ++st.torn;
                prev = t->version();
                if (const char* why = segtest::verify_synth(segtest::observed(*t), cap)) {
                    ++st.torn;
                    if (st.first_problem.empty())
                        st.first_problem =
                            std::string(why) + " at version " + std::to_string(t->version());
                }
            }
        });
    }

    std::uint64_t publishes = 0;
    std::uint64_t publish_errors = 0;
    std::uint64_t last = 1;
    {
        // The writer runs here, until its deadline; the readers stop after it.
        while (started.load() < kReaders)
            std::this_thread::yield();
        segtest::SynthRecord rec;
        const std::int64_t deadline = segtest::monotonic_ns() + kRunNs;
        for (std::uint64_t v = 2;; ++v) {
            if ((v & 31) == 0 && segtest::monotonic_ns() >= deadline) break;
            segtest::make_synth(v, cap, rec);
            if (!w->publish(slot, rec.rec)) ++publish_errors;
            ++publishes;
            last = v;
        }
        done.store(true, std::memory_order_release);
    }
    for (auto& t : threads)
        t.join();

    std::printf("torn-read-threads cap=%zu writer: publishes=%llu\n", cap,
                static_cast<unsigned long long>(publishes));
    for (int i = 0; i < kReaders; ++i) {
        const ThreadStats& st = stats[static_cast<std::size_t>(i)];
        std::printf(
            "torn-read-threads cap=%zu reader %d: reads=%llu new_versions=%llu busy=%llu "
            "torn=%llu\n",
            cap, i, static_cast<unsigned long long>(st.reads),
            static_cast<unsigned long long>(st.new_versions),
            static_cast<unsigned long long>(st.busy), static_cast<unsigned long long>(st.torn));
        INFO("reader " << i << ": " << st.first_problem);
        CHECK(st.torn == 0);
        CHECK(st.other_errors == 0);
        CHECK(st.reads > 0);
    }
    std::fflush(stdout);
    CHECK(publish_errors == 0);
    CHECK(publishes >= 100);
    auto h = reader->lookup("c");
    REQUIRE(h);
    auto t = h->get();
    REQUIRE(t);
    CHECK(t->version() == last);
    CHECK(segtest::verify_synth(segtest::observed(*t), cap) == nullptr);
}
