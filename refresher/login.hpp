// `tokenshm login --config FILE NAME`: a person authorises the client once,
// in a browser, and the refresh token that comes back is stored in the state
// directory, where the refresher reads it (SPEC.md, "The command").
//
// The flow is the authorization-code grant (RFC 6749 §4.1) for a native
// app (RFC 8252): PKCE with S256 (RFC 7636: a 32-byte random verifier, its
// SHA-256 as the challenge) and a random `state`, so neither a code
// intercepted on its way to the loopback listener nor a forged redirect can
// be turned into a token. The browser comes back to a listener on
// 127.0.0.1 (the credential's `redirect_uri`, else a free port); the
// authorization URL is printed for the person to open (`--open` runs
// xdg-open). The code is exchanged with the credential's client
// authentication, and the refresh token is saved exactly as the refresher
// saves a rotated one (StateStore::save: temp file, rename, fsync; v2 with
// checksum; mode 0600). Neither the code, the verifier nor any token is
// ever printed.
//
// The authorization endpoint comes from discovery, so login needs `issuer`
// (SPEC has no authorization_endpoint key for token_endpoint-only credentials).
#pragma once

#include "config.hpp"
#include "redirect_uri.hpp"
#include "secret.hpp"

#include <tokenshm/expected.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

namespace tokenshm::refresher {

// Exit codes of `tokenshm login` (SPEC's codes, as they apply here).
namespace login_exit {
constexpr int ok = 0;
constexpr int runtime = 1;  // a syscall, the state directory, discovery or the network failed
constexpr int usage = 2;    // bad arguments or configuration (no issuer, not refresh_token)
constexpr int no_such_credential = 4;  // NAME is not in the configuration
// No refresh token was obtained: the person or the server said no
// (`error=access_denied`, ...), the redirect's state did not match, no
// redirect arrived in time, or the token endpoint refused the code.
constexpr int no_token = 5;
constexpr int unreachable = 7;  // stored, but the running refresher could not be told
}  // namespace login_exit

struct LoginError {
    int exit_code = login_exit::runtime;
    std::string message;  // one line, no secret
};

struct LoginOptions {
    std::string config_path;
    std::string name;
    std::chrono::seconds timeout{300};  // for the browser's redirect
    bool open_browser = false;          // run xdg-open with the URL
    // Shows the authorization URL and the listener's address (the person
    // must see them; they hold no secret). Progress lines go to `note`.
    std::function<void(const std::string& url, const std::string& redirect_uri)> show_url;
    std::function<void(const std::string& line)> note;
};

struct LoginResult {
    std::string token_path;  // where the refresh token now is
    std::string segment;     // the configuration's segment, to find its refresher
};

Expected<LoginResult, LoginError> run_login(const LoginOptions& options);

// The parts, pure, for unit tests.
namespace login_detail {

// PKCE's S256 challenge of a verifier: base64url(SHA-256(verifier)).
std::string s256_challenge(std::string_view verifier);

// What the authorization server sent back to the redirect URI.
struct Callback {
    std::string state;
    Secret code;
    std::string error;               // RFC 6749 §4.1.2.1 error code, sanitised
    std::string error_description;   // sanitised, at most 200 bytes
    std::optional<std::string> iss;  // RFC 9207
};

// Parses a query string (application/x-www-form-urlencoded). A parameter
// given twice, or a malformed %-escape, is an error.
Expected<Callback, std::string> parse_callback_query(std::string_view query);

// The scope to ask for: the configured one, plus "openid offline_access"
// (OpenID Connect Core §11: how to ask for a refresh token) when the server
// publishes offline_access and the scope lacks it.
std::string login_scope(const std::optional<std::string>& configured,
                        const std::vector<std::string>& scopes_supported);

}  // namespace login_detail

}  // namespace tokenshm::refresher
