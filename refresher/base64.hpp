// Base64 (RFC 4648), the one home of both alphabets: standard with padding
// (HTTP Basic, etcd's JSON gateway, which carries keys and values as bytes)
// and base64url without padding (PKCE, sealed refresh tokens).
//
// Decoding is strict, so one string has one meaning: only the alphabet's
// characters, padding exactly where the standard alphabet needs it (none in
// base64url), and unused low bits of the last character zero. Anything else
// is refused, never guessed at.
#pragma once

#include "secret.hpp"

#include <optional>
#include <string>
#include <string_view>

namespace tokenshm::refresher {

// Standard Base64 (RFC 4648 §4, with padding), as HTTP Basic uses it.
std::string base64_encode(std::string_view bytes);
// The same, appended to a buffer that is wiped when it goes: for secrets, so
// no unwiped copy of one is ever freed.
void append_base64(WipedString& out, std::string_view bytes);
// Base64url without padding (RFC 4648 §5, RFC 7636 App. A): PKCE's encoding.
std::string base64url_encode(std::string_view bytes);

// The bytes, or nullopt when `text` is not strict Base64 of that alphabet.
// Decoded into a WipedString: what etcd and a sealed string carry may be a
// token.
std::optional<WipedString> base64_decode(std::string_view text);
std::optional<WipedString> base64url_decode(std::string_view text);

}  // namespace tokenshm::refresher
