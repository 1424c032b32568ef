#include <tokenshm/shm/record.hpp>

#include <cstring>

namespace tokenshm::shm {

const char* to_string(RecordState s) noexcept {
    switch (s) {
        case RecordState::empty:
            return "empty";
        case RecordState::valid:
            return "valid";
        case RecordState::stale:
            return "stale";
        case RecordState::expired:
            return "expired";
        case RecordState::reauth:
            return "reauth";
    }
    return "unknown";
}

const char* to_string(EncodeError e) noexcept {
    switch (e) {
        case EncodeError::token_too_large:
            return "token larger than max_token_bytes";
        case EncodeError::type_too_large:
            return "token_type longer than 32 bytes";
        case EncodeError::scope_too_large:
            return "scope longer than 1024 bytes";
    }
    return "unknown";
}

namespace {
// Longest prefix of `s` no longer than `cap` that does not split a UTF-8 sequence.
std::string_view utf8_prefix(std::string_view s, std::size_t cap) {
    if (s.size() <= cap) return s;
    std::size_t n = cap;
    while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80)
        --n;
    return s.substr(0, n);
}
}  // namespace

Expected<Done, EncodeError> encode(const SlotRecord& r, std::uint32_t max_token_bytes,
                                   std::vector<std::uint64_t>& out) {
    if (r.token.size() > max_token_bytes) return Unexpected{EncodeError::token_too_large};
    if (r.token_type.size() > TOKENSHM_TYPE_CAP) return Unexpected{EncodeError::type_too_large};
    if (r.scope.size() > TOKENSHM_SCOPE_CAP) return Unexpected{EncodeError::scope_too_large};
    const std::string_view err = utf8_prefix(r.last_error, TOKENSHM_ERROR_CAP);

    RecordFixed f{};
    f.fields = r.fields();
    f.lengths.token_len = static_cast<std::uint32_t>(r.token.size());
    f.lengths.type_len = static_cast<std::uint16_t>(r.token_type.size());
    f.lengths.scope_len = static_cast<std::uint16_t>(r.scope.size());
    f.lengths.error_len = static_cast<std::uint16_t>(err.size());

    out.assign(record_words(f.lengths.payload_bytes()), 0);
    char* bytes = reinterpret_cast<char*>(out.data());
    std::memcpy(bytes, &f, sizeof f);
    char* p = bytes + TOKENSHM_REC_PAYLOAD;
    for (std::string_view part : {r.token_type, r.scope, err, r.token}) {
        if (!part.empty()) std::memcpy(p, part.data(), part.size());
        p += part.size();
    }
    return Done{};
}

}  // namespace tokenshm::shm
