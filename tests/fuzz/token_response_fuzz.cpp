// Fuzz target: the token-response parser (parse_token_response in
// refresher/oauth.cpp) and the Retry-After parser on arbitrary bytes. The
// input is a response body, judged as it would be under each status a token
// endpoint answers with (200 success or error-in-200, 400/401 OAuth errors,
// 429 and 503 retries), with and without a JSON content type, and under a
// small and the default token size limit. Its first line is also parsed as a
// Retry-After value.
//
// Promises checked (oauth.hpp): only a 200 is a success; a success carries a
// non-empty access_token within the size limit matching RFC 6750's b64token,
// a token_type that is one RFC 7230 token, a rotated refresh token only of VSCHARs, and
// 0 < expires_in <= kMaxLifetime; a failure's message is one
// printable line; Retry-After is never negative.
#include "fuzz_check.hpp"
#include "oauth.hpp"

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace {

using namespace tokenshm::refresher;
using tokenshm::fuzz::expect;
using tokenshm::fuzz::one_printable_line;
using namespace std::chrono_literals;

// RFC 6749 A.12's VSCHAR (%x20-7E): what oauth.hpp promises of a rotated
// refresh_token.
bool all_vschar(std::string_view s) {
    for (const char c : s)
        if (c < 0x20 || c > 0x7e) return false;
    return true;
}

bool ascii_alnum(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

// RFC 6750 2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
// Written out here on its own, so the target does not trust the parser's check.
bool b64token(std::string_view s) {
    std::size_t i = 0;
    while (i < s.size() &&
           (ascii_alnum(s[i]) || std::string_view("-._~+/").find(s[i]) != std::string_view::npos))
        ++i;
    if (i == 0) return false;
    while (i < s.size() && s[i] == '=')
        ++i;
    return i == s.size();
}

// RFC 7230 3.2.6: token = 1*tchar
bool http_token(std::string_view s) {
    if (s.empty()) return false;
    for (const char c : s)
        if (!ascii_alnum(c) &&
            std::string_view("!#$%&'*+-.^_`|~").find(c) == std::string_view::npos)
            return false;
    return true;
}

void check_outcome(const TokenOutcome& o, long status, std::size_t max_token_bytes) {
    if (o.ok()) {
        const TokenSuccess& s = o.success();
        expect(status == 200, "only HTTP 200 is a success");
        const std::string_view token = s.access_token.reveal();
        expect(!token.empty() && token.size() <= max_token_bytes,
               "access_token is non-empty and within max_token_bytes");
        expect(b64token(token), "access_token is a b64token");
        expect(http_token(s.token_type), "token_type is one HTTP token");
        if (s.refresh_token)
            expect(!s.refresh_token->reveal().empty() && all_vschar(s.refresh_token->reveal()),
                   "a rotated refresh_token is non-empty VSCHARs");
        expect(s.expires_in.count() > 0 && s.expires_in <= kMaxLifetime,
               "expires_in is positive and capped");
        if (s.scope) expect(one_printable_line(*s.scope) || s.scope->empty(), "scope is one line");
        return;
    }
    const TokenFailure& f = o.failure();
    expect(f.status == status, "a failure names the response's status");
    expect(one_printable_line(f.message), "a failure's message is one printable line");
    expect(one_printable_line(f.oauth_error) || f.oauth_error.empty(),
           "an OAuth error code is one printable line");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view body(reinterpret_cast<const char*>(data), size);
    static constexpr std::array<long, 5> statuses{200, 400, 401, 429, 503};
    static constexpr std::array<std::size_t, 2> limits{64, 8192};
    for (std::size_t i = 0; i < statuses.size(); ++i) {
        HttpResponse r;
        r.outcome = HttpResponse::Outcome::response;
        r.status = statuses[i];
        r.content_type = i % 2 == 0 ? "application/json;charset=UTF-8" : "";
        r.body = std::string(body);
        for (const std::size_t limit : limits)
            check_outcome(parse_token_response(r, 3600s, limit), statuses[i], limit);
    }

    const std::string_view first_line = body.substr(0, body.find('\n'));
    constexpr std::int64_t now_ms = 1'700'000'000'000;  // a fixed "now": runs must repeat
    if (const auto delay = parse_retry_after(first_line, now_ms))
        expect(delay->count() >= 0, "Retry-After is never negative");
    return 0;
}
