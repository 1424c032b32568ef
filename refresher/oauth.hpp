// The OAuth 2.0 client protocol, as pure functions: building token and
// discovery requests, and judging what came back. No I/O, no clock, no
// randomness: the caller passes the transport's response and the time, so
// every rule here is tested with literal inputs.
//
// References: RFC 6749 (OAuth 2.0: §2.3.1 client auth, §4.4 client
// credentials, §5.1/§5.2 token and error responses, §6 refresh, App. B form
// encoding), RFC 8414 (authorization server metadata), OpenID Connect
// Discovery 1.0, RFC 9110 §10.2.3 / §5.6.7 (Retry-After, HTTP-date).
#pragma once

#include "base64.hpp"
#include "config.hpp"
#include "endpoint_url.hpp"
#include "error.hpp"
#include "secret.hpp"
#include "transport.hpp"

#include <tokenshm/expected.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace tokenshm::refresher {

// application/x-www-form-urlencoded (RFC 6749 App. B, the HTML form rules):
// ALPHA DIGIT "-._*" stay, space becomes "+", every other byte is %XX
// (uppercase hex). This, not RFC 3986 percent-encoding, is what servers decode
// form bodies and client_secret_basic credentials with.
std::string form_urlencode(std::string_view s);

// The same encoding appended to a buffer that is wiped when it goes:
// for secrets, so no unwiped copy of one is ever freed.
void append_form_urlencoded(WipedString& out, std::string_view s);

// "Basic " base64(id ":" secret). RFC 6749 §2.3.1 says to form-encode id and
// secret first (so a ':' in the id cannot split it); `raw` exists because
// some servers never decode and would reject the encoded form.
Secret basic_authorization(std::string_view client_id, const Secret& client_secret,
                           BasicEncoding encoding);

// The token request (RFC 6749 §6 refresh, §4.4 client credentials), a POST to
// `token_endpoint`. Body: grant_type, the refresh token (refresh_token grant
// only), scope when configured, then extra_params in file order, then, for
// client_secret_post, client_id and client_secret. For client_secret_basic
// the credentials go only into `authorization`. `refresh_token` is
// ignored for client_credentials; for the refresh_token grant a null one is
// an error (a runtime RefresherError: no request can be built).
Expected<HttpRequest, RefresherError> build_token_request(const CredentialConfig& c,
                                                          const EndpointUrl& token_endpoint,
                                                          const Secret* refresh_token);

// Discovery candidates for an issuer, in the order to try them:
//   OpenID:   <issuer>/.well-known/openid-configuration   (appended)
//   RFC 8414: https://host/.well-known/oauth-authorization-server[/path]
// RFC 8414 §3.1 inserts the well-known segment between host and path, while
// OpenID Discovery appends it; servers implement one or the other, so both
// are tried. A trailing slash on the issuer never yields "//".
std::vector<EndpointUrl> discovery_urls(const EndpointUrl& issuer);

// A GET for one discovery URL, with the credential's timeouts and CA; it
// carries no credentials (metadata is public).
HttpRequest build_discovery_request(const EndpointUrl& url, const CredentialConfig& c);

// The token_endpoint from a discovery response. The metadata's `issuer`, when
// present, must equal the configured issuer (one trailing slash ignored):
// RFC 8414 §3.3 makes this the defence against a metadata document that
// speaks for some other server. Errors are one line and quote nothing of the
// body except the offending field's name. The token_endpoint must pass
// EndpointUrl's checks like a configured one. Errors are runtime errors.
Expected<EndpointUrl, RefresherError> parse_discovery(const HttpResponse& response,
                                                      const EndpointUrl& issuer);

// What `tokenshm login` needs of an issuer's metadata (RFC 8414 §2).
struct AuthorizationServer {
    EndpointUrl authorization_endpoint;  // checked like a token endpoint: the browser
    EndpointUrl token_endpoint;          // gets the code there, and the code is a secret
    std::vector<std::string> scopes_supported;  // empty when not published
    // RFC 9207: the redirect carries `iss`, which must then be the issuer.
    bool iss_parameter = false;
};

// The same checks as parse_discovery, plus an authorization_endpoint, and
// S256 among code_challenge_methods_supported when the server lists them.
Expected<AuthorizationServer, RefresherError> parse_authorization_server(
    const HttpResponse& response, const EndpointUrl& issuer);

// The authorization-code token request (RFC 6749 §4.1.3, RFC 7636 §4.5):
// grant_type, code, redirect_uri, code_verifier, then extra_params and the
// client's credentials exactly as build_token_request sends them.
HttpRequest build_code_exchange_request(const CredentialConfig& c,
                                        const EndpointUrl& token_endpoint, const Secret& code,
                                        std::string_view redirect_uri,
                                        const Secret& code_verifier);

// What a token response means for the credential.
enum class FailureKind {
    retry,   // try again with backoff; the current token keeps being served
    reauth,  // the grant or the client was rejected: retrying cannot help, a person must act
};

struct TokenSuccess {
    Secret access_token;              // non-empty VSCHARs (RFC 6749 A.12), at most max_token_bytes
    std::string token_type;           // "Bearer" normalised; others as sent
    std::chrono::seconds expires_in;  // > 0, capped at kMaxLifetime
    std::optional<Secret> refresh_token;  // a rotated refresh token, when the server sent one
    std::optional<std::string> scope;     // granted scope, when the server sent one
};

struct TokenFailure {
    FailureKind kind = FailureKind::retry;
    long status = 0;          // HTTP status, 0 when no response arrived
    std::string oauth_error;  // the `error` code (RFC 6749 §5.2), empty if none
    std::string message;      // one printable line, safe to log and publish
    // A rotated refresh token that came with an otherwise unusable 200 answer:
    // the caller must adopt it (the old one is spent).
    std::optional<Secret> refresh_token;
};

struct TokenOutcome {
    std::variant<TokenSuccess, TokenFailure> v;

    bool ok() const noexcept { return v.index() == 0; }
    TokenSuccess& success() { return std::get<0>(v); }
    const TokenSuccess& success() const { return std::get<0>(v); }
    TokenFailure& failure() { return std::get<1>(v); }
    const TokenFailure& failure() const { return std::get<1>(v); }
};

// expires_in larger than this is capped: a server's "forever" should still
// be refreshed now and then, and the cap keeps every later sum far from
// overflow.
inline constexpr std::chrono::seconds kMaxLifetime{10LL * 365 * 24 * 3600};

// error_description is cut to this many characters: enough to act on, short
// enough for one log line and the record's last_error.
inline constexpr std::size_t kMaxDescription = 160;

// Judges a token endpoint response (RFC 6749 §5.1 success, §5.2 error).
//  - Only HTTP 200 with a JSON object holding a usable access_token and
//    token_type is a success; anything malformed is `retry`, because a broken
//    response says nothing about the grant, and the current token stays.
//  - 408, 429, 5xx and transport failures are `retry`: the server is busy or
//    unreachable, which time cures.
//  - invalid_grant, invalid_client, unauthorized_client (any 4xx, or a 200
//    carrying `error`) are `reauth`: the server has said the credentials are
//    wrong, and hammering it would not change that (and may lock the client).
//  - Any other error code is `retry` (invalid_scope, server_error, ...: a
//    server or config hiccup that someone may fix without new credentials).
//  - An error without a code decides by status: 401 and 403 are `reauth`
//    (the server refused the client), other 4xx `retry`.
// `expires_in` absent (or null) means `default_lifetime`; JSON null for any
// optional member is treated as absent, as several servers send it that way.
// Messages never contain the token, the refresh token or any part of the
// body other than a sanitised, cut error_description.
//
// `redact` (SecretEchoes::redact, bound to the credential's secrets) is
// applied to the server's error code and error_description before they are
// made printable and cut to kMaxDescription, so a cut never leaves part of
// an echoed secret behind.
using RedactEchoes = std::function<std::string(std::string)>;
TokenOutcome parse_token_response(const HttpResponse& response,
                                  std::chrono::seconds default_lifetime,
                                  std::size_t max_token_bytes, const RedactEchoes& redact = {});

// Retry-After (RFC 9110 §10.2.3): delta-seconds, or an HTTP-date in any of
// the three forms a recipient must accept (§5.6.7): IMF-fixdate
// "Sun, 06 Nov 1994 08:49:37 GMT", RFC 850 "Sunday, 06-Nov-94 08:49:37 GMT",
// asctime "Sun Nov  6 08:49:37 1994". Parsed by hand with timegm, so the
// result never depends on the locale or time zone. A date in the past gives
// 0 ms; anything else unparseable gives nullopt (ignore the header).
std::optional<std::chrono::milliseconds> parse_retry_after(std::string_view value,
                                                           std::int64_t now_unix_ms);

}  // namespace tokenshm::refresher
