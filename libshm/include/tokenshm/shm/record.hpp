// SlotRecord: the decoded form of one record copy, and its encoding into the
// 8-byte words the latch moves.
#pragma once

#include <tokenshm/shm/layout.hpp>

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

const char* to_string(RecordState s) noexcept;

// A record as the writer composes it. The views must outlive encode().
struct SlotRecord {
    std::uint64_t version = 0;
    std::int64_t expires_at_ms = 0;
    std::int64_t issued_at_ms = 0;
    std::int64_t next_refresh_ms = 0;
    std::int64_t last_attempt_ms = 0;
    RecordState state = RecordState::empty;
    std::uint32_t failures = 0;
    std::string_view token_type;
    std::string_view scope;
    std::string_view last_error;
    std::string_view token;
};

// Why a record cannot be encoded (the writer's input was too big).
enum class EncodeError { ok, token_too_large, type_too_large, scope_too_large };
const char* to_string(EncodeError e) noexcept;

// Encodes `r` into `out` (resized to whole words). last_error is cut to
// TOKENSHM_ERROR_CAP bytes at a UTF-8 boundary; every other field must fit.
EncodeError encode(const SlotRecord& r, std::uint32_t max_token_bytes,
                   std::vector<std::uint64_t>& out);

// Words a record with these lengths occupies, fixed part included.
constexpr std::size_t record_words(std::size_t payload_bytes) {
    return (TOKENSHM_REC_FIXED_SIZE + payload_bytes + 7) / 8;
}

// A decoded view over a local copy made by the latch. Valid when check() said
// so; the string views point into the copy.
struct RecordView {
    RecordFixed fixed;
    std::string_view token_type, scope, last_error, token;
};

// Validates the fixed part (lengths within their caps, a known state) and
// builds views over `words` (which hold at least the payload). Returns false
// for a record that no honest writer could have published.
inline bool decode(const std::uint64_t* words, std::size_t words_len, std::uint32_t max_token_bytes,
                   RecordView& out) noexcept;

// Payload bytes announced by a fixed part, clamped to the slot's capacity, so a
// racing or corrupt length can never make the copy overrun.
inline std::size_t clamped_payload(const RecordFixed& f, std::uint32_t max_token_bytes) noexcept;

// Both are on the reader's copy path, so they are inline.
inline std::size_t clamped_payload(const RecordFixed& f, std::uint32_t max_token_bytes) noexcept {
    const Geometry g{max_token_bytes, 1};
    const std::size_t n = std::size_t{f.token_len} + f.type_len + f.scope_len + f.error_len;
    return n < g.payload_cap() ? n : g.payload_cap();
}

inline bool decode(const std::uint64_t* words, std::size_t words_len, std::uint32_t max_token_bytes,
                   RecordView& out) noexcept {
    if (words_len * 8 < TOKENSHM_REC_FIXED_SIZE) return false;
    // Field by field, each at its own width: the words were just stored 8 bytes
    // at a time, and one wide load spanning two of those stores cannot be
    // store-forwarded (it stalls until they reach the cache).
    RecordFixed& f = out.fixed;
    const char* b = reinterpret_cast<const char*>(words);
    std::memcpy(&f.version, b + TOKENSHM_REC_VERSION, 8);
    std::memcpy(&f.expires_at_ms, b + TOKENSHM_REC_EXPIRES_AT_MS, 8);
    std::memcpy(&f.issued_at_ms, b + TOKENSHM_REC_ISSUED_AT_MS, 8);
    std::memcpy(&f.next_refresh_ms, b + TOKENSHM_REC_NEXT_REFRESH_MS, 8);
    std::memcpy(&f.last_attempt_ms, b + TOKENSHM_REC_LAST_ATTEMPT_MS, 8);
    std::memcpy(&f.state, b + TOKENSHM_REC_STATE, 4);
    std::memcpy(&f.failures, b + TOKENSHM_REC_FAILURES, 4);
    std::memcpy(&f.token_len, b + TOKENSHM_REC_TOKEN_LEN, 4);
    std::memcpy(&f.type_len, b + TOKENSHM_REC_TYPE_LEN, 2);
    std::memcpy(&f.scope_len, b + TOKENSHM_REC_SCOPE_LEN, 2);
    std::memcpy(&f.error_len, b + TOKENSHM_REC_ERROR_LEN, 2);
    if (f.state > TOKENSHM_STATE_REAUTH) return false;
    if (f.token_len > max_token_bytes || f.type_len > TOKENSHM_TYPE_CAP ||
        f.scope_len > TOKENSHM_SCOPE_CAP || f.error_len > TOKENSHM_ERROR_CAP)
        return false;
    const std::size_t payload = std::size_t{f.token_len} + f.type_len + f.scope_len + f.error_len;
    if (TOKENSHM_REC_FIXED_SIZE + payload > words_len * 8) return false;
    const char* p = reinterpret_cast<const char*>(words) + TOKENSHM_REC_PAYLOAD;
    out.token_type = {p, f.type_len};
    p += f.type_len;
    out.scope = {p, f.scope_len};
    p += f.scope_len;
    out.last_error = {p, f.error_len};
    p += f.error_len;
    out.token = {p, f.token_len};
    return true;
}

}  // namespace tokenshm::shm
