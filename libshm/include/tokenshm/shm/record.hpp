// SlotRecord: the decoded form of one record copy, and its encoding into the
// 8-byte words the latch moves.
#pragma once

#include <tokenshm/shm/layout.hpp>

#include <cstdint>
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
bool decode(const std::uint64_t* words, std::size_t words_len, std::uint32_t max_token_bytes,
            RecordView& out) noexcept;

// Payload bytes announced by a fixed part, clamped to the slot's capacity, so a
// racing or corrupt length can never make the copy overrun.
std::size_t clamped_payload(const RecordFixed& f, std::uint32_t max_token_bytes) noexcept;

}  // namespace tokenshm::shm
