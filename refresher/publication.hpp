// What a leader publishes in etcd for one credential (issue 12, design
// point 4): the record readers need and the rotated refresh token, so that a
// follower can publish the record into its own segment and a new leader can
// continue the rotating grant from the token. One type, Publication, travels
// from the leader's credential to the follower's segment: its record is the
// credential's Published, not a copy reshaped by hand.
//
// Form in etcd (the value of <prefix>/cred/<name>), printable JSON:
//     {"counter":N,"sealed":"tks1...."}
// The whole payload is sealed (seal.hpp) with the credential name and N as
// associated data, so an envelope moved to another credential, or given
// another counter, does not open. N is in plain beside it: the leader counts
// up from the last one in etcd, a follower can refuse to go back.
// The payload inside the seal is JSON on the wiping heap (wiping_json.hpp):
//     {"v":1,"version":..,"expires_at_ms":..,"issued_at_ms":..,
//      "next_refresh_ms":..,"last_attempt_ms":..,"state":"valid","failures":0,
//      "access_token":"..","token_type":"..","scope":"..","last_error":"..",
//      "refresh_token":".."}          (refresh_token absent when there is none)
// Errors name the key or the field, never a value.
#pragma once

#include "credential.hpp"
#include "seal.hpp"
#include "secret.hpp"

#include <tokenshm/expected.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace tokenshm::refresher {

struct Publication {
    Published record;                     // what readers see (version: the leader's)
    std::optional<Secret> refresh_token;  // the grant's current refresh token, if any
};

struct PublicationError {
    enum class Kind {
        malformed,      // not an envelope or payload of this version
        does_not_open,  // the seal key does not open it (wrong seal_key_file?) or it was changed
        crypto,         // sealing itself failed (OpenSSL)
    };
    Kind kind;
    std::string message;  // one line, never a value
};

// The sealed envelope of `p` for credential `name` and `counter`.
Expected<std::string, PublicationError> seal_publication(const SealKey& key, std::string_view name,
                                                         std::uint64_t counter,
                                                         const Publication& p);

struct OpenedPublication {
    std::uint64_t counter = 0;
    Publication publication;
};

// The counter of an envelope, without opening it (a leader counting up).
Expected<std::uint64_t, PublicationError> envelope_counter(std::string_view envelope);

// Opens an envelope found under `key` (named in errors) for credential `name`.
Expected<OpenedPublication, PublicationError> open_publication(const SealKey& key,
                                                               std::string_view name,
                                                               std::string_view key_in_etcd,
                                                               std::string_view envelope);

}  // namespace tokenshm::refresher
