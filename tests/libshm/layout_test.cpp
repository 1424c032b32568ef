// The C header is the contract. Offsets a C program derives
// from <tokenshm/layout.h> (layout_c.c, compiled as C) must equal the C++
// structs', the geometry must be computed the same way on both sides, and a
// real segment must put every field where the header says.
#include "layout_c.h"
#include "test_support.hpp"

#include <tokenshm/layout.h>
#include <tokenshm/reader.hpp>
#include <tokenshm/shm/layout.hpp>
#include <tokenshm/shm/segment.hpp>

#include <catch2/catch.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <vector>

namespace shm = tokenshm::shm;
using segtest::RawSegment;
using segtest::SegmentGuard;

namespace {

struct Field {
    std::size_t offset;
    std::size_t size;
};

#define CXX_ROW(ctype, type, field)                              \
    {                                                            \
#ctype "." #field, Field {                               \
            offsetof(shm::type, field), sizeof(shm::type::field) \
        }                                                        \
    }

// A field of the record's fixed part, nested in RecordFixed's `part` member.
#define RECORD_ROW(part, field)                                                           \
    {                                                                                     \
        "c_record_fixed." #field, Field {                                                 \
            offsetof(shm::RecordFixed, part.field), sizeof(shm::RecordFixed{}.part.field) \
        }                                                                                 \
    }

const std::map<std::string, Field>& cxx_fields() {
    static const std::map<std::string, Field> m = {
        CXX_ROW(c_header, Header, magic),
        CXX_ROW(c_header, Header, major),
        CXX_ROW(c_header, Header, minor),
        CXX_ROW(c_header, Header, header_size),
        CXX_ROW(c_header, Header, slot_count),
        CXX_ROW(c_header, Header, slot_size),
        CXX_ROW(c_header, Header, max_token_bytes),
        CXX_ROW(c_header, Header, record_size),
        CXX_ROW(c_header, Header, total_size),
        CXX_ROW(c_header, Header, created_ms),
        CXX_ROW(c_header, Header, writer_pid),
        CXX_ROW(c_header, Header, writer_start_ms),
        CXX_ROW(c_header, Header, writer_generation),
        CXX_ROW(c_header, Header, retired),
        CXX_ROW(c_header, Header, heartbeat_ms),
        CXX_ROW(c_header, Header, control_socket),
        CXX_ROW(c_slot_control, SlotControl, seq),
        CXX_ROW(c_slot_control, SlotControl, futex),
        CXX_ROW(c_slot_control, SlotControl, status),
        CXX_ROW(c_slot_control, SlotControl, name),
        RECORD_ROW(fields, version),
        RECORD_ROW(fields, expires_at_ms),
        RECORD_ROW(fields, issued_at_ms),
        RECORD_ROW(fields, next_refresh_ms),
        RECORD_ROW(fields, last_attempt_ms),
        RECORD_ROW(fields, state),
        RECORD_ROW(fields, failures),
        RECORD_ROW(lengths, token_len),
        RECORD_ROW(lengths, type_len),
        RECORD_ROW(lengths, scope_len),
        RECORD_ROW(lengths, error_len),
    };
    return m;
}

}  // namespace

TEST_CASE("C and C++ agree on every offset and size of the layout") {
    const auto& cxx = cxx_fields();
    REQUIRE(layout_c_field_count == cxx.size());
    for (std::size_t i = 0; i < layout_c_field_count; ++i) {
        const layout_c_field& c = layout_c_fields[i];
        INFO(c.name);
        const auto it = cxx.find(c.name);
        REQUIRE(it != cxx.end());
        CHECK(c.offset == it->second.offset);
        CHECK(c.size == it->second.size);
    }
    CHECK(layout_c_header_size == sizeof(shm::Header));
    CHECK(layout_c_slot_control_size == sizeof(shm::SlotControl));
    CHECK(layout_c_record_fixed_size == sizeof(shm::RecordFixed));
    CHECK(sizeof(shm::Header) == TOKENSHM_HEADER_SIZE);
    CHECK(alignof(shm::Header) == TOKENSHM_CACHE_LINE);
    CHECK(alignof(shm::SlotControl) == TOKENSHM_CACHE_LINE);
}

TEST_CASE("C and C++ compute the same geometry") {
    for (std::uint32_t max_token :
         {std::uint32_t{TOKENSHM_MIN_TOKEN_BYTES}, 100u, 1000u, 4096u, 8192u, 8193u, 65535u,
          std::uint32_t{TOKENSHM_MAX_TOKEN_BYTES_LIMIT}}) {
        for (std::uint32_t slots : {1u, 3u, 16u, std::uint32_t{TOKENSHM_MAX_SLOTS}}) {
            INFO("max_token_bytes " << max_token << ", slots " << slots);
            const shm::Geometry g{max_token, slots};
            CHECK(g.record_size() == layout_c_record_size(max_token));
            CHECK(g.slot_size() == layout_c_slot_size(max_token));
            CHECK(g.total_size() == layout_c_total_size(max_token, slots));
            // Cache-line multiples keep every slot's seq word on its own line.
            CHECK(g.record_size() % TOKENSHM_CACHE_LINE == 0);
            CHECK(g.slot_size() % TOKENSHM_CACHE_LINE == 0);
            CHECK(g.record_size() >= TOKENSHM_REC_FIXED_SIZE + TOKENSHM_TYPE_CAP +
                                         TOKENSHM_SCOPE_CAP + TOKENSHM_ERROR_CAP + max_token);
        }
    }
}

TEST_CASE("a real segment puts every field where the C header says") {
    SegmentGuard g{segtest::unique_segment("layout")};
    constexpr std::uint32_t kMaxToken = 1000;  // not a multiple of 64: exercises the rounding
    constexpr std::uint32_t kSlots = 3;
    shm::SegmentSpec spec = segtest::spec(g.name, kMaxToken, kSlots);
    spec.control_socket = "/run/test/ctl.sock";
    auto w = shm::WriterSegment::create_or_attach(spec);
    REQUIRE(w);
    const std::uint32_t a = *w->claim("alpha");
    const std::uint32_t b = *w->claim("beta");
    REQUIRE(a == 0);
    REQUIRE(b == 1);

    shm::SlotRecord r;
    r.version = 41;
    r.state = shm::RecordState::stale;
    r.failures = 3;
    r.expires_at_ms = 1'700'000'000'123;
    r.issued_at_ms = 1'700'000'000'001;
    r.next_refresh_ms = 1'700'000'000'050;
    r.last_attempt_ms = 1'700'000'000'060;
    r.token_type = "Bearer";
    r.scope = "files.write";
    r.last_error = "HTTP 503";
    r.token = "tok-41";
    REQUIRE(w->publish(b, r));
    r.version = 42;
    r.token = "token-number-42";
    REQUIRE(w->publish(b, r));

    SECTION("raw bytes at the C offsets") {
        RawSegment raw(g.name);
        REQUIRE(raw.ok());
        const std::uint64_t rec_size = layout_c_record_size(kMaxToken);
        const std::uint64_t slot_size = layout_c_slot_size(kMaxToken);
        REQUIRE(raw.size() == layout_c_total_size(kMaxToken, kSlots));

        CHECK(raw.get<std::uint64_t>(TOKENSHM_HDR_MAGIC) == TOKENSHM_MAGIC);
        CHECK(std::memcmp(raw.bytes() + TOKENSHM_HDR_MAGIC, "TOKNSHM1", 8) == 0);
        CHECK(raw.get<std::uint16_t>(TOKENSHM_HDR_MAJOR) == TOKENSHM_MAJOR);
        CHECK(raw.get<std::uint16_t>(TOKENSHM_HDR_MINOR) == TOKENSHM_MINOR);
        CHECK(raw.get<std::uint32_t>(TOKENSHM_HDR_HEADER_SIZE) == TOKENSHM_HEADER_SIZE);
        CHECK(raw.get<std::uint32_t>(TOKENSHM_HDR_SLOT_COUNT) == kSlots);
        CHECK(raw.get<std::uint32_t>(TOKENSHM_HDR_SLOT_SIZE) == slot_size);
        CHECK(raw.get<std::uint32_t>(TOKENSHM_HDR_MAX_TOKEN_BYTES) == kMaxToken);
        CHECK(raw.get<std::uint32_t>(TOKENSHM_HDR_RECORD_SIZE) == rec_size);
        CHECK(raw.get<std::uint64_t>(TOKENSHM_HDR_TOTAL_SIZE) == raw.size());
        CHECK(raw.get<std::int64_t>(TOKENSHM_HDR_CREATED_MS) > 1'600'000'000'000);
        CHECK(raw.get<std::int64_t>(TOKENSHM_HDR_WRITER_PID) == ::getpid());
        CHECK(raw.get<std::int64_t>(TOKENSHM_HDR_WRITER_START_MS) > 1'600'000'000'000);
        CHECK(raw.get<std::uint64_t>(TOKENSHM_HDR_WRITER_GENERATION) == 1);
        CHECK(raw.get<std::int64_t>(TOKENSHM_HDR_HEARTBEAT_MS) > 1'600'000'000'000);
        CHECK(std::string(raw.bytes() + TOKENSHM_HDR_CONTROL_SOCKET) == "/run/test/ctl.sock");
        CHECK(raw.bytes()[TOKENSHM_HDR_CONTROL_SOCKET + TOKENSHM_CONTROL_SOCKET_CAP - 1] == 0);

        const std::size_t sa = TOKENSHM_HEADER_SIZE + a * slot_size;
        const std::size_t sb = TOKENSHM_HEADER_SIZE + b * slot_size;
        CHECK(raw.get<std::uint32_t>(sa + TOKENSHM_SLOT_STATUS) == TOKENSHM_SLOT_ACTIVE);
        CHECK(std::string(raw.bytes() + sa + TOKENSHM_SLOT_NAME) == "alpha");
        CHECK(raw.get<std::uint64_t>(sa + TOKENSHM_SLOT_SEQ) == 0);
        CHECK(std::string(raw.bytes() + sb + TOKENSHM_SLOT_NAME) == "beta");
        CHECK(raw.get<std::uint32_t>(sb + TOKENSHM_SLOT_STATUS) == TOKENSHM_SLOT_ACTIVE);
        const auto seq = raw.get<std::uint64_t>(sb + TOKENSHM_SLOT_SEQ);
        CHECK(seq == 2);
        CHECK(raw.get<std::uint32_t>(sb + TOKENSHM_SLOT_FUTEX) == 2);
        const std::uint32_t unused_slot = 2;
        CHECK(raw.get<std::uint32_t>(TOKENSHM_HEADER_SIZE + unused_slot * slot_size +
                                     TOKENSHM_SLOT_STATUS) == TOKENSHM_SLOT_FREE);

        // The current copy is (seq & 1); the other holds the previous publish.
        for (const auto& [which, version, token] :
             {std::tuple{seq & 1, 42ull, std::string("token-number-42")},
              std::tuple{(seq + 1) & 1, 41ull, std::string("tok-41")}}) {
            INFO("copy " << which);
            const std::size_t rc = sb + TOKENSHM_SLOT_COPIES + which * rec_size;
            CHECK(raw.get<std::uint64_t>(rc + TOKENSHM_REC_VERSION) == version);
            CHECK(raw.get<std::int64_t>(rc + TOKENSHM_REC_EXPIRES_AT_MS) == 1'700'000'000'123);
            CHECK(raw.get<std::int64_t>(rc + TOKENSHM_REC_ISSUED_AT_MS) == 1'700'000'000'001);
            CHECK(raw.get<std::int64_t>(rc + TOKENSHM_REC_NEXT_REFRESH_MS) == 1'700'000'000'050);
            CHECK(raw.get<std::int64_t>(rc + TOKENSHM_REC_LAST_ATTEMPT_MS) == 1'700'000'000'060);
            CHECK(raw.get<std::uint32_t>(rc + TOKENSHM_REC_STATE) == TOKENSHM_STATE_STALE);
            CHECK(raw.get<std::uint32_t>(rc + TOKENSHM_REC_FAILURES) == 3);
            CHECK(raw.get<std::uint32_t>(rc + TOKENSHM_REC_TOKEN_LEN) == token.size());
            CHECK(raw.get<std::uint16_t>(rc + TOKENSHM_REC_TYPE_LEN) == 6);
            CHECK(raw.get<std::uint16_t>(rc + TOKENSHM_REC_SCOPE_LEN) == 11);
            CHECK(raw.get<std::uint16_t>(rc + TOKENSHM_REC_ERROR_LEN) == 8);
            // Payload order: token_type, scope, last_error, token.
            CHECK(std::string(raw.bytes() + rc + TOKENSHM_REC_PAYLOAD, 6 + 11 + 8 + token.size()) ==
                  "Bearerfiles.writeHTTP 503" + token);
        }
    }

    SECTION("the reader's mapping: seq words aligned and lock-free") {
        auto ro = shm::ReadOnlySegment::open(g.name, {});
        REQUIRE(ro);
        CHECK(ro->control_socket() == "/run/test/ctl.sock");
        const auto base = reinterpret_cast<std::uintptr_t>(&ro->header());
        CHECK(base % 4096 == 0);
        for (std::uint32_t i = 0; i < kSlots; ++i) {
            INFO("slot " << i);
            const shm::SlotControl* s = ro->slot(i);
            const auto seq_addr = reinterpret_cast<std::uintptr_t>(&s->seq);
            CHECK(seq_addr - base == TOKENSHM_HEADER_SIZE + i * layout_c_slot_size(kMaxToken));
            CHECK(seq_addr % TOKENSHM_CACHE_LINE == 0);
            CHECK(seq_addr % alignof(std::atomic<std::uint64_t>) == 0);
            CHECK(sizeof(s->seq) == 8);
            CHECK(s->seq.is_lock_free());
            CHECK(reinterpret_cast<std::uintptr_t>(&s->futex) % 4 == 0);
            CHECK(s->futex.is_lock_free());
            for (unsigned c = 0; c < 2; ++c) {
                const auto copy = reinterpret_cast<std::uintptr_t>(
                    shm::copy_at(s, ro->geometry().record_size(), c));
                CHECK(copy % TOKENSHM_CACHE_LINE == 0);
                CHECK(copy + ro->geometry().record_size() <= base + ro->header().total_size);
            }
        }
        CHECK(ro->slot(b)->seq.load() == 2);
        CHECK(std::atomic_ref<std::uint64_t>::required_alignment == 8);

        // The reader sees what the raw bytes say.
        auto reader = tokenshm::Reader::open(g.name);
        REQUIRE(reader);
        auto h = reader->lookup("beta");
        REQUIRE(h);
        auto t = h->inspect();
        REQUIRE(t);
        CHECK(t->version() == 42);
        CHECK(t->token() == "token-number-42");
        CHECK(t->state() == tokenshm::State::stale);
        CHECK(t->last_error() == "HTTP 503");
    }
}

TEST_CASE("a reader's mapping cannot be written") {
    SegmentGuard g{segtest::unique_segment("ro")};
    auto w = shm::WriterSegment::create_or_attach(segtest::spec(g.name, 256, 1));
    REQUIRE(w);
    const std::uint32_t slot = *w->claim("c");
    auto ro = shm::ReadOnlySegment::open(g.name, {});
    REQUIRE(ro);
    // A child tries to bump the seq word through the reader's const mapping:
    // the page is PROT_READ, so the store faults and nothing changes.
    auto child = segtest::Child::fork([&] {
        auto* seq = const_cast<std::atomic<std::uint64_t>*>(&ro->slot(slot)->seq);
        seq->store(12345, std::memory_order_relaxed);
        return 0;
    });
    REQUIRE(child.wait());
    INFO(child.describe());
    // SIGSEGV, or a nonzero exit when a sanitizer's SEGV handler reports it.
    CHECK_FALSE(child.exited_with(0));
    CHECK((child.killed_by(SIGSEGV) ||
           (WIFEXITED(child.status()) && WEXITSTATUS(child.status()) != 0)));
    CHECK(ro->slot(slot)->seq.load() == 0);
}
