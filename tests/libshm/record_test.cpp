// The record codec on its own: encode() and decode() agree on every field,
// refuse what does not fit, cut last_error at a UTF-8 boundary, and decode()
// rejects any fixed part no honest writer produces.
#include <tokenshm/shm/record.hpp>

#include <catch2/catch.hpp>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace shm = tokenshm::shm;

TEST_CASE("the record codec round-trips every field, and refuses what does not fit") {
    shm::SlotRecord r;
    r.fields() = shm::RecordFields{7, 1'000, 2'000, 3'000, 4'000, shm::RecordState::stale, 5};
    r.token = "tok";
    r.token_type = "Bearer";
    r.scope = "s";
    r.last_error = "oops";
    std::vector<std::uint64_t> words;
    REQUIRE(shm::encode(r, 256, words));
    shm::RecordView v;
    REQUIRE(shm::decode(words.data(), words.size(), 256, v));
    const shm::RecordFields& f = v;
    CHECK(f.version == 7);
    CHECK(f.expires_at_ms == 1'000);
    CHECK(f.issued_at_ms == 2'000);
    CHECK(f.next_refresh_ms == 3'000);
    CHECK(f.last_attempt_ms == 4'000);
    CHECK(f.state == shm::RecordState::stale);
    CHECK(f.failures == 5);
    CHECK(v.token == "tok");
    CHECK(v.token_type == "Bearer");
    CHECK(v.scope == "s");
    CHECK(v.last_error == "oops");

    r.token_type = std::string_view("0123456789012345678901234567890123");
    const auto too_long = shm::encode(r, 256, words);
    REQUIRE_FALSE(too_long);
    CHECK(too_long.error() == shm::EncodeError::type_too_large);
}

namespace {
shm::SlotRecord sample() {
    shm::SlotRecord r;
    r.version = 3;
    r.state = shm::RecordState::valid;
    r.token = "a-token";
    r.token_type = "Bearer";
    r.scope = "files.write";
    return r;
}

// Overwrites `bytes` bytes at `offset` of an encoded record.
template <class T>
void poke(std::vector<std::uint64_t>& words, std::size_t offset, T value) {
    std::memcpy(reinterpret_cast<char*>(words.data()) + offset, &value, sizeof value);
}
}  // namespace

TEST_CASE("every field at its cap encodes; one byte more is refused with the field's reason") {
    const std::string token(256, 't'), type(TOKENSHM_TYPE_CAP, 'y'), scope(TOKENSHM_SCOPE_CAP, 's');
    shm::SlotRecord r = sample();
    r.token = token;
    r.token_type = type;
    r.scope = scope;
    std::vector<std::uint64_t> words;
    REQUIRE(shm::encode(r, 256, words));
    shm::RecordView v;
    REQUIRE(shm::decode(words.data(), words.size(), 256, v));
    CHECK(v.token == token);
    CHECK(v.token_type == type);
    CHECK(v.scope == scope);

    const std::string longer_token(257, 't'), longer_type(TOKENSHM_TYPE_CAP + 1, 'y'),
        longer_scope(TOKENSHM_SCOPE_CAP + 1, 's');
    struct Case {
        const char* what;
        shm::SlotRecord rec;
        shm::EncodeError want;
    };
    std::vector<Case> cases(3, Case{"", r, shm::EncodeError::token_too_large});
    cases[0].what = "token";
    cases[0].rec.token = longer_token;
    cases[1] = Case{"token_type", r, shm::EncodeError::type_too_large};
    cases[1].rec.token_type = longer_type;
    cases[2] = Case{"scope", r, shm::EncodeError::scope_too_large};
    cases[2].rec.scope = longer_scope;
    for (const Case& c : cases) {
        INFO(c.what);
        const auto e = shm::encode(c.rec, 256, words);
        REQUIRE_FALSE(e);
        CHECK(e.error() == c.want);
    }
}

TEST_CASE("last_error longer than its cap is cut at a UTF-8 boundary, never refused") {
    // 'é' is two bytes: 120 of them are 240 bytes, the cap; one 'x' first
    // puts the cut inside the last one, which must go whole.
    std::string err = "x";
    for (int i = 0; i < 120; ++i)
        err += "\xc3\xa9";
    REQUIRE(err.size() == TOKENSHM_ERROR_CAP + 1);
    shm::SlotRecord r = sample();
    r.last_error = err;
    std::vector<std::uint64_t> words;
    REQUIRE(shm::encode(r, 256, words));
    shm::RecordView v;
    REQUIRE(shm::decode(words.data(), words.size(), 256, v));
    CHECK(v.last_error.size() == TOKENSHM_ERROR_CAP - 1);
    CHECK(v.last_error == std::string_view(err).substr(0, TOKENSHM_ERROR_CAP - 1));
    CHECK(v.token == "a-token");  // the fields after it are where they belong
}

TEST_CASE("decode refuses a fixed part no honest writer produces") {
    std::vector<std::uint64_t> good;
    REQUIRE(shm::encode(sample(), 256, good));
    shm::RecordView v;
    REQUIRE(shm::decode(good.data(), good.size(), 256, v));

    SECTION("an unknown state") {
        poke<std::uint32_t>(good, TOKENSHM_REC_STATE, shm::kLastRecordState + 1);
    }
    SECTION("a token longer than max_token_bytes") {
        poke<std::uint32_t>(good, TOKENSHM_REC_TOKEN_LEN, 257);
    }
    SECTION("a token_type longer than its cap") {
        poke<std::uint16_t>(good, TOKENSHM_REC_TYPE_LEN, TOKENSHM_TYPE_CAP + 1);
    }
    SECTION("a scope longer than its cap") {
        poke<std::uint16_t>(good, TOKENSHM_REC_SCOPE_LEN, TOKENSHM_SCOPE_CAP + 1);
    }
    SECTION("a last_error longer than its cap") {
        poke<std::uint16_t>(good, TOKENSHM_REC_ERROR_LEN, TOKENSHM_ERROR_CAP + 1);
    }
    SECTION("lengths that run past the words copied") {
        poke<std::uint32_t>(good, TOKENSHM_REC_TOKEN_LEN, 200);
    }
    CHECK_FALSE(shm::decode(good.data(), good.size(), 256, v));
}

TEST_CASE("the payload a copy reads is clamped to the slot, whatever the lengths say") {
    const shm::Geometry g{256, 1};
    shm::RecordLengths n;
    n.token_len = 0xFFFFFFFFu;
    n.type_len = n.scope_len = n.error_len = 0xFFFFu;
    CHECK(shm::clamped_payload_words(n, 256) * 8 <= g.payload_cap() + 7);
    CHECK(TOKENSHM_REC_FIXED_SIZE + shm::clamped_payload_words(n, 256) * 8 <= g.record_size());
    n = shm::RecordLengths{};
    n.token_len = 9;
    CHECK(shm::clamped_payload_words(n, 256) == 2);
}
