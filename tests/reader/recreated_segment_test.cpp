// A reader follows the refresher to a recreated segment: the writer retires
// the old segment (unlinked, truncated or replaced under it) and the reader's
// slow path reopens the name, with nothing added to get()'s inline path.
#include "test_support.hpp"

#include <tokenshm/reader.hpp>
#include <tokenshm/shm/segment.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include <chrono>
#include <string>
#include <thread>

using namespace std::chrono_literals;
using segtest::Child;
using segtest::Pipe;
using segtest::SegmentGuard;
using tokenshm::Error;
namespace shm = tokenshm::shm;

namespace {

using segtest::token_record;

// Reads lines from `fd` until one equals `want` (true) or `timeout` passes;
// every line read is appended to `seen`.
bool wait_for_line(int fd, const std::string& want, std::string& seen,
                   std::chrono::milliseconds timeout) {
    const std::int64_t deadline = segtest::monotonic_ns() + timeout.count() * 1'000'000;
    std::string line;
    while (segtest::monotonic_ns() < deadline) {
        char c;
        if (segtest::read_exact(fd, &c, 1, 1s) != 1) continue;
        seen += c;
        if (c != '\n') {
            line += c;
            continue;
        }
        if (line == want) return true;
        line.clear();
    }
    return false;
}

// The reader process: one open and one lookup, then get() in a loop, writing
// each new token (and any error) as a line, until it sees `last`.
int follow_tokens(const std::string& segment, const std::string& last, int out) {
    auto reader = tokenshm::Reader::open(segment);
    if (!reader) return 10;
    auto handle = reader->lookup("c");
    if (!handle) return 11;
    std::string current;
    int last_error = 0;
    const std::int64_t deadline = segtest::monotonic_ns() + 60'000'000'000;
    while (segtest::monotonic_ns() < deadline) {
        auto t = handle->get();
        if (!t) {
            if (static_cast<int>(t.error()) != last_error) {
                last_error = static_cast<int>(t.error());
                const std::string line =
                    "error " + std::string(tokenshm::to_string(t.error())) + "\n";
                (void)segtest::write_all(out, line.data(), line.size());
            }
        } else if (t->token() != current) {
            current = std::string(t->token());
            const std::string line = current + "\n";
            (void)segtest::write_all(out, line.data(), line.size());
            if (current == last) return 0;
        }
        std::this_thread::sleep_for(200us);
    }
    return 12;
}

}  // namespace

TEST_CASE("a reader process gets the new segment's tokens across three recreations") {
    SegmentGuard g{segtest::unique_segment("rrecreate")};
    auto w = shm::WriterSegment::create_or_attach(segtest::spec(g.name));
    REQUIRE(w);
    const std::uint32_t slot = *w->claim("c");
    REQUIRE(w->publish(slot, token_record(1, "gen-0")));

    Pipe lines;
    Child reader = Child::fork([&] {
        lines.close_read();
        return follow_tokens(g.name, "gen-3", lines.wr());
    });
    lines.close_write();
    std::string seen;
    REQUIRE(wait_for_line(lines.rd(), "gen-0", seen, 30s));
    for (int k = 1; k <= 3; ++k) {
        INFO("recreation " << k << "; the reader said:\n" << seen);
        w->unlink();  // systemd RemoveIPC, or a person
        auto found = w->ensure_intact();
        REQUIRE(found);
        CHECK(*found == shm::Integrity::unlinked);
        REQUIRE(w->publish(slot, token_record(2 * k + 1, "gen-" + std::to_string(k))));
        REQUIRE(wait_for_line(lines.rd(), "gen-" + std::to_string(k), seen, 30s));
    }
    REQUIRE(reader.wait(30s));
    INFO("the reader said:\n" << seen);
    CHECK(reader.exited_with(0));
    // The old segments kept serving the last token until they were retired,
    // and the new one was complete before that: the reader never saw an error.
    CHECK(seen == "gen-0\ngen-1\ngen-2\ngen-3\n");
}

TEST_CASE("a handle on a retired segment gets the new one's typed error when it is untrusted") {
    SegmentGuard g{segtest::unique_segment("runtrusted")};
    auto w = shm::WriterSegment::create_or_attach(segtest::spec(g.name));
    REQUIRE(w);
    const std::uint32_t slot = *w->claim("c");
    REQUIRE(w->publish(slot, token_record(1, "tok-old")));
    auto reader = tokenshm::Reader::open(g.name);
    REQUIRE(reader);
    auto h = reader->lookup("c");
    REQUIRE(h);
    REQUIRE(h->get());

    w->unlink();
    REQUIRE(w->ensure_intact());
    // Someone makes the new segment writable by others: not to be trusted.
    REQUIRE(::chmod(("/dev/shm/" + g.name).c_str(), 0666) == 0);
    auto t = h->get();
    REQUIRE_FALSE(t);
    CHECK(t.error() == Error::untrusted);
    // Once it is fixed, the same handle moves over.
    REQUIRE(::chmod(("/dev/shm/" + g.name).c_str(), 0600) == 0);
    auto again = h->get();
    REQUIRE(again);
    CHECK(again->token() == "tok-old");
    REQUIRE(w->publish(slot, token_record(2, "tok-new")));
    CHECK(h->get()->token() == "tok-new");
    // And a lookup through the reader opened on the old segment finds it too.
    auto h2 = reader->lookup("c");
    REQUIRE(h2);
    CHECK(h2->get()->token() == "tok-new");
}

TEST_CASE(
    "a handle on a dead writer's segment finds the new one at the name when its token runs out") {
    SegmentGuard g{segtest::unique_segment("rdead")};
    std::optional<tokenshm::Reader> reader;
    std::optional<tokenshm::Handle> h;
    {
        // A writer killed before it could retire its segment: no retired
        // marks, a heartbeat 10 s old, and its name removed.
        auto dead = shm::WriterSegment::create_or_attach(segtest::spec(g.name));
        REQUIRE(dead);
        const std::uint32_t slot = *dead->claim("c");
        REQUIRE(dead->publish(slot, token_record(1, "tok-dying", 10'000)));
        dead->heartbeat(shm::sys::realtime_ms() - 10'000);
        auto r = tokenshm::Reader::open(g.name);
        REQUIRE(r);
        reader.emplace(std::move(*r));
        auto hh = reader->lookup("c");
        REQUIRE(hh);
        h.emplace(std::move(*hh));
        REQUIRE(h->get());
        dead->unlink();
    }
    auto fresh = shm::WriterSegment::create_or_attach(segtest::spec(g.name));
    REQUIRE(fresh);
    REQUIRE(fresh->publish(*fresh->claim("c"), token_record(5, "tok-fresh")));
    // Valid for 10 s: not enough for a caller that needs a minute, so the
    // slow path looks for a live segment at the name.
    auto t = h->get(1min);
    REQUIRE(t);
    CHECK(t->token() == "tok-fresh");
    CHECK(t->writer_alive());
}
