// SecretEchoes: every form in which a secret the refresher sent can come back
// in a server's text (error_description, an error page), so that text can be
// logged and published with the secret replaced by Secret::redacted.
//
// A token request carries a secret three ways, and a server that echoes what
// it got may quote any of them:
//  - verbatim (what the server decoded);
//  - application/x-www-form-urlencoded, as our body encodes it ("S3cr%2Bet",
//    '+' for a space), also with lowercase hex as some servers re-encode;
//  - Base64 (standard and URL-safe, with and without padding), as the Basic
//    header carries "id:secret", both form-encoded and raw. A secret inside a
//    longer Base64 text changes with its offset modulo 3, so the characters
//    that depend only on the secret are matched at each of the three
//    alignments; of a Base64 echo, at most the 1 or 2 characters that mix the
//    secret's first or last bits with a neighbour's remain.
// Secrets shorter than kMinSecret bytes are not matched (they would mangle
// ordinary words and say little anyway). Every pattern is held as a Secret.
#pragma once

#include "secret.hpp"

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace tokenshm::refresher {

class SecretEchoes {
  public:
    static constexpr std::size_t kMinSecret = 4;

    // A secret that went into a request body or a header.
    void add(std::string_view secret);
    // The client credentials of an HTTP Basic header: the secret itself (as
    // add()) and the Base64 of the whole "id:secret" pair, in both encodings.
    void add_basic_pair(std::string_view client_id, std::string_view secret);

    // `text` with every echo replaced, longest pattern first.
    std::string redact(std::string text) const;

    // The patterns, longest first (tests use them to look for leftovers).
    const std::vector<Secret>& patterns() const noexcept { return patterns_; }

  private:
    void add_pattern(std::string_view pattern);
    void add_base64_forms(std::string_view bytes);

    std::vector<Secret> patterns_;
};

}  // namespace tokenshm::refresher
