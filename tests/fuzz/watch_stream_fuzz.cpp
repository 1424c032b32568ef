// Fuzz target: EtcdWatchStream (etcd_watch.cpp), the reader of etcd's watch
// stream, on arbitrary bytes cut into arbitrary chunks. What etcd streams
// back, any host with etcd access could have written.
//
// Input: byte 0 picks the chunk size (1 to 64 bytes, or all at once) and a
// small buffer cap half the time; the rest is the stream, fed chunk by
// chunk with a clock that moves a little at each.
//
// Promises checked: an error is one printable line of a kind the stream
// names, and final; a compacted error names a positive revision; events are
// under the prefix, in revision order, none before the start revision, with
// revisions etcd could have (a put: create > 0, mod >= create, version > 0);
// next_revision() never goes back; no more than the cap is ever held.
#include "etcd_watch.hpp"
#include "fuzz_check.hpp"

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace {

using namespace tokenshm::refresher;
using tokenshm::fuzz::expect;
using tokenshm::fuzz::one_printable_line;

constexpr std::int64_t kStart = 5;

void check_error(const EtcdWatchError& e) {
    expect(one_printable_line(e.message), "a watch error is one printable line");
    expect(std::string_view(to_string(e.kind)) != "unknown", "a watch error has a kind");
    expect(e.kind != EtcdWatchError::Kind::compacted || e.compact_revision > 0,
           "compacted names a revision");
}

void check_events(EtcdWatchStream& s, std::int64_t& last) {
    for (const EtcdWatchEvent& ev : s.take_events()) {
        expect(ev.kv.key.starts_with("/t/"), "an event under the prefix");
        expect(ev.kv.mod_revision >= last && ev.kv.mod_revision >= kStart,
               "events in revision order, none before the start");
        last = ev.kv.mod_revision;
        if (ev.type == EtcdWatchEvent::Type::put)
            expect(ev.kv.create_revision > 0 && ev.kv.mod_revision >= ev.kv.create_revision &&
                       ev.kv.version > 0,
                   "a put has revisions etcd could have");
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) return 0;
    const unsigned chunk = (data[0] & 0x3f) + 1u;
    const bool whole = (data[0] & 0x3f) == 0x3f;
    EtcdWatchLimits limits;
    if (data[0] & 0x40) limits.max_buffered_bytes = 256;
    EtcdWatchStream s("/t/", kStart, limits, 0);
    std::string_view rest(reinterpret_cast<const char*>(data) + 1, size - 1);
    std::int64_t now = 0;
    std::int64_t last = 0;
    std::int64_t next = s.next_revision();
    bool failed = false;
    while (!rest.empty()) {
        const std::string_view piece = rest.substr(0, whole ? rest.size() : chunk);
        rest.remove_prefix(piece.size());
        const auto r = s.feed(piece, now += 7);
        expect(!failed || !r, "a failure is final");
        if (!r) {
            check_error(r.error());
            failed = true;
        }
        check_events(s, last);
        expect(s.next_revision() >= next, "next_revision never goes back");
        next = s.next_revision();
        expect(s.buffered_bytes() <= limits.max_buffered_bytes, "no more than the cap held");
    }
    const auto alive = s.check_alive(now + limits.silence.count());
    expect(!alive, "silence past the limit is stalled (or the failure seen)");
    check_error(alive.error());
    return 0;
}
