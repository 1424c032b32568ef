// The record: one type from the refresher to the reader, and its one codec.
//
// RecordFields holds the record's scalars. The writer's SlotRecord, the
// decoded RecordView (the same type) and the reader's Token all carry them as
// that one struct, so a new field is added here (and in layout.h, the codec
// below, the refresher code that sets it, Token's accessor and the C struct),
// and every copy in between moves it without being touched.
#pragma once

#include <tokenshm/expected.hpp>
#include <tokenshm/shm/layout.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>
#include <vector>

namespace tokenshm::shm {

enum class RecordState : std::uint32_t {
    empty = TOKENSHM_STATE_EMPTY,
    valid = TOKENSHM_STATE_VALID,
    stale = TOKENSHM_STATE_STALE,
    expired = TOKENSHM_STATE_EXPIRED,
    reauth = TOKENSHM_STATE_REAUTH,
};
inline constexpr std::uint32_t kLastRecordState = TOKENSHM_STATE_REAUTH;

const char* to_string(RecordState s) noexcept;

// The scalar fields of a record, in their order in the fixed part.
struct RecordFields {
    std::uint64_t version = 0;  // grows with every publish, across refresher restarts
    std::int64_t expires_at_ms = 0;
    std::int64_t issued_at_ms = 0;
    std::int64_t next_refresh_ms = 0;
    std::int64_t last_attempt_ms = 0;
    RecordState state = RecordState::empty;
    std::uint32_t failures = 0;
};

// A record with its strings as views. The writer composes one for publish()
// (the views must outlive the call); decode() makes one over a local copy
// (the views point into that copy).
struct SlotRecord : RecordFields {
    std::string_view token_type, scope, last_error, token;

    RecordFields& fields() noexcept { return *this; }
    const RecordFields& fields() const noexcept { return *this; }
};
using RecordView = SlotRecord;

// The payload's lengths, as the fixed part announces them.
struct RecordLengths {
    std::uint32_t token_len = 0;
    std::uint16_t type_len = 0;
    std::uint16_t scope_len = 0;
    std::uint16_t error_len = 0;
    std::uint16_t pad = 0;

    std::size_t payload_bytes() const noexcept {
        return std::size_t{token_len} + type_len + scope_len + error_len;
    }
};

// The fixed part of a record copy as a local struct. In shared memory it is
// only ever accessed as 8-byte words through the latch.
struct RecordFixed {
    RecordFields fields;
    RecordLengths lengths;
    std::uint32_t pad = 0;
};

static_assert(sizeof(RecordFixed) == TOKENSHM_REC_FIXED_SIZE);
static_assert(sizeof(RecordFields) == TOKENSHM_REC_TOKEN_LEN);  // no padding, lengths follow
static_assert(offsetof(RecordFixed, fields.version) == TOKENSHM_REC_VERSION);
static_assert(offsetof(RecordFixed, fields.expires_at_ms) == TOKENSHM_REC_EXPIRES_AT_MS);
static_assert(offsetof(RecordFixed, fields.issued_at_ms) == TOKENSHM_REC_ISSUED_AT_MS);
static_assert(offsetof(RecordFixed, fields.next_refresh_ms) == TOKENSHM_REC_NEXT_REFRESH_MS);
static_assert(offsetof(RecordFixed, fields.last_attempt_ms) == TOKENSHM_REC_LAST_ATTEMPT_MS);
static_assert(offsetof(RecordFixed, fields.state) == TOKENSHM_REC_STATE);
static_assert(offsetof(RecordFixed, fields.failures) == TOKENSHM_REC_FAILURES);
static_assert(offsetof(RecordFixed, lengths.token_len) == TOKENSHM_REC_TOKEN_LEN);
static_assert(offsetof(RecordFixed, lengths.type_len) == TOKENSHM_REC_TYPE_LEN);
static_assert(offsetof(RecordFixed, lengths.scope_len) == TOKENSHM_REC_SCOPE_LEN);
static_assert(offsetof(RecordFixed, lengths.error_len) == TOKENSHM_REC_ERROR_LEN);
static_assert(sizeof(RecordState) == 4);
static_assert(sizeof(RecordLengths) == 12);  // explicit padding: encode() leaves no stray bytes

// Why a record cannot be encoded (the writer's input was too big).
enum class EncodeError { token_too_large, type_too_large, scope_too_large };
const char* to_string(EncodeError e) noexcept;

// Encodes `r` into `out` (resized to whole words). last_error is cut to
// TOKENSHM_ERROR_CAP bytes at a UTF-8 boundary; every other field must fit.
Expected<Done, EncodeError> encode(const SlotRecord& r, std::uint32_t max_token_bytes,
                                   std::vector<std::uint64_t>& out);

// Words a record with these lengths occupies, fixed part included.
constexpr std::size_t record_words(std::size_t payload_bytes) {
    return (TOKENSHM_REC_FIXED_SIZE + payload_bytes + 7) / 8;
}

// What follows is on the reader's copy path, so it is inline. Every field is
// read at its own width: the words were just stored 8 bytes at a time, and one
// wide load spanning two of those stores cannot be store-forwarded (it stalls
// until they reach the cache).

// The lengths a fixed part announces (which may be mid-change while copying).
inline RecordLengths read_lengths(const std::uint64_t* words) noexcept {
    const char* b = reinterpret_cast<const char*>(words);
    RecordLengths n;
    std::memcpy(&n.token_len, b + TOKENSHM_REC_TOKEN_LEN, sizeof n.token_len);
    std::memcpy(&n.type_len, b + TOKENSHM_REC_TYPE_LEN, sizeof n.type_len);
    std::memcpy(&n.scope_len, b + TOKENSHM_REC_SCOPE_LEN, sizeof n.scope_len);
    std::memcpy(&n.error_len, b + TOKENSHM_REC_ERROR_LEN, sizeof n.error_len);
    return n;
}

// Payload words the lengths announce, clamped to the slot's capacity, so a
// racing or corrupt length can never make the copy overrun.
inline std::size_t clamped_payload_words(const RecordLengths& n,
                                         std::uint32_t max_token_bytes) noexcept {
    const std::size_t cap = Geometry{max_token_bytes, 1}.payload_cap();
    const std::size_t bytes = n.payload_bytes();
    return ((bytes < cap ? bytes : cap) + 7) / 8;
}

// Validates a copied record whose lengths are `n` (read_lengths() of the same
// words): lengths within their caps, a known state, the payload inside
// `words_len` words. Then fills `out` with its fields and views into `words`.
// False for a record that no honest writer could have published.
inline bool decode(const std::uint64_t* words, std::size_t words_len, const RecordLengths& n,
                   std::uint32_t max_token_bytes, RecordView& out) noexcept {
    if (words_len * 8 < TOKENSHM_REC_FIXED_SIZE) return false;
    const char* b = reinterpret_cast<const char*>(words);
    std::uint32_t state;
    std::memcpy(&state, b + TOKENSHM_REC_STATE, 4);
    if (state > kLastRecordState) return false;
    if (n.token_len > max_token_bytes || n.type_len > TOKENSHM_TYPE_CAP ||
        n.scope_len > TOKENSHM_SCOPE_CAP || n.error_len > TOKENSHM_ERROR_CAP)
        return false;
    if (TOKENSHM_REC_FIXED_SIZE + n.payload_bytes() > words_len * 8) return false;
    RecordFields& f = out;
    std::memcpy(&f.version, b + TOKENSHM_REC_VERSION, 8);
    std::memcpy(&f.expires_at_ms, b + TOKENSHM_REC_EXPIRES_AT_MS, 8);
    std::memcpy(&f.issued_at_ms, b + TOKENSHM_REC_ISSUED_AT_MS, 8);
    std::memcpy(&f.next_refresh_ms, b + TOKENSHM_REC_NEXT_REFRESH_MS, 8);
    std::memcpy(&f.last_attempt_ms, b + TOKENSHM_REC_LAST_ATTEMPT_MS, 8);
    f.state = static_cast<RecordState>(state);
    std::memcpy(&f.failures, b + TOKENSHM_REC_FAILURES, 4);
    const char* p = b + TOKENSHM_REC_PAYLOAD;
    out.token_type = {p, n.type_len};
    p += n.type_len;
    out.scope = {p, n.scope_len};
    p += n.scope_len;
    out.last_error = {p, n.error_len};
    p += n.error_len;
    out.token = {p, n.token_len};
    return true;
}

// The same, reading the lengths from `words` first.
inline bool decode(const std::uint64_t* words, std::size_t words_len, std::uint32_t max_token_bytes,
                   RecordView& out) noexcept {
    if (words_len * 8 < TOKENSHM_REC_FIXED_SIZE) return false;
    return decode(words, words_len, read_lengths(words), max_token_bytes, out);
}

}  // namespace tokenshm::shm
