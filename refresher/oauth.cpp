#include "oauth.hpp"

#include "wiping_heap.hpp"
#include "wiping_json.hpp"

#include <tokenshm/layout.h>

#include <rapidjson/document.h>
#include <rapidjson/error/en.h>

#include <time.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>

namespace tokenshm::refresher {

namespace {

constexpr std::size_t kMaxTokenType = TOKENSHM_TYPE_CAP;
constexpr std::size_t kMaxScope = TOKENSHM_SCOPE_CAP;
constexpr std::size_t kMaxErrorCode = 64;

bool is_alpha(char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}
bool is_digit(char c) {
    return c >= '0' && c <= '9';
}
bool is_vschar(char c) {
    return c >= 0x20 && c <= 0x7e;
}  // RFC 6749 App. A: VSCHAR
bool is_visible(char c) {
    return c > 0x20 && c <= 0x7e;
}  // VCHAR: printable, no space

// RFC 6750 §2.1 b64token: 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
bool is_b64token_char(char c) {
    return is_alpha(c) || is_digit(c) || c == '-' || c == '.' || c == '_' || c == '~' || c == '+' ||
           c == '/';
}
// RFC 9110 §5.6.2 tchar: what a single token (an auth scheme) may hold.
bool is_tchar(char c) {
    return is_alpha(c) || is_digit(c) ||
           std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

bool all_of(std::string_view s, bool (*pred)(char)) {
    return std::all_of(s.begin(), s.end(), pred);
}

char ascii_lower(char c) {
    return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
}

bool is_b64token(std::string_view s) {
    const std::size_t last = s.find_last_not_of('=');
    return last != std::string_view::npos && all_of(s.substr(0, last + 1), is_b64token_char);
}

bool iequals(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i)
        if (ascii_lower(a[i]) != ascii_lower(b[i])) return false;
    return true;
}

std::string_view trim_ows(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t'))
        s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t'))
        s.remove_suffix(1);
    return s;
}

// Text from the network made fit for one log line: printable ASCII only,
// at most `max` characters.
std::string sanitize(std::string_view s, std::size_t max) {
    std::string out;
    for (char c : s) {
        if (out.size() >= max) {
            out += "...";
            break;
        }
        out += is_vschar(c) ? c : '?';
    }
    return out;
}

std::string quoted(std::string_view s, std::size_t max) {
    return "\"" + sanitize(s, max) + "\"";
}

// The media type of a Content-Type value, lowercased, without parameters.
std::string media_type(std::string_view content_type) {
    std::string_view t = content_type.substr(0, content_type.find(';'));
    t = trim_ows(t);
    std::string out;
    for (char c : t)
        out += ascii_lower(c);
    return out;
}

bool looks_like_html(const HttpResponse& r) {
    const std::string mt = media_type(r.content_type);
    if (mt == "text/html" || mt == "application/xhtml+xml") return true;
    std::string_view b = r.body.view();
    while (!b.empty() &&
           (b.front() == ' ' || b.front() == '\t' || b.front() == '\r' || b.front() == '\n'))
        b.remove_prefix(1);
    return !b.empty() && b.front() == '<';
}

bool blank(std::string_view s) {
    return std::all_of(s.begin(), s.end(),
                       [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; });
}

// Parses without recursion (a body of a million '[' must not blow the stack)
// and rejects invalid UTF-8. On failure, `why` says what and where, and
// never quotes the body.
bool parse_json(std::string_view body, JsonDocument& doc, std::string& why) {
    doc.Parse<rapidjson::kParseIterativeFlag | rapidjson::kParseValidateEncodingFlag>(body.data(),
                                                                                      body.size());
    if (!doc.HasParseError()) return true;
    why = rapidjson::GetParseError_En(doc.GetParseError());
    if (!why.empty() && why.back() == '.') why.pop_back();
    why += " at offset " + std::to_string(doc.GetErrorOffset());
    return false;
}

// A member by name, or null when absent. A name given twice is ambiguous
// (two parsers could disagree on which one counts), so it is reported.
const JsonValue* member(const JsonValue& obj, const char* name, bool& duplicate) {
    const JsonValue* found = nullptr;
    duplicate = false;
    const std::string_view want(name);
    for (auto it = obj.MemberBegin(); it != obj.MemberEnd(); ++it) {
        if (std::string_view(it->name.GetString(), it->name.GetStringLength()) != want) continue;
        if (found) duplicate = true;
        found = &it->value;
    }
    return found;
}

std::string_view str(const JsonValue& v) {
    return {v.GetString(), v.GetStringLength()};
}

std::string strip_one_slash(std::string_view s) {
    if (!s.empty() && s.back() == '/') s.remove_suffix(1);
    return std::string(s);
}

// ---- token responses ----

TokenOutcome fail(FailureKind kind, long status, std::string message, std::string code = {}) {
    return TokenOutcome{
        TokenFailure{kind, status, std::move(code), std::move(message), std::nullopt}};
}

TokenOutcome retry(long status, std::string message) {
    return fail(FailureKind::retry, status, std::move(message));
}

std::string http(long status) {
    return "HTTP " + std::to_string(status);
}

// What a person must do when the server rejected the credentials, by code.
const char* reauth_advice(std::string_view code) {
    if (code == "invalid_grant")
        return "the refresh token was rejected: run tokenshm login --config FILE NAME, or put "
               "a new refresh token in refresh_token_file and send SIGHUP";
    if (code == "invalid_client")
        return "the client id or secret was rejected: check client_id and "
               "client_secret_file/env";
    if (code == "unauthorized_client")
        return "the client may not use this grant: check grant and the client's registration "
               "at the server";
    return nullptr;
}

// An error response (RFC 6749 §5.2), or a 200 that carries `error`.
// Echoed secrets are redacted before the text is made printable and cut:
// a cut through a secret would leave its first part behind, unmatched.
TokenOutcome classify_error(long status, const JsonDocument* doc, const RedactEchoes& redact) {
    const auto server_text = [&redact](std::string_view raw, std::size_t max) {
        return sanitize(redact ? redact(std::string(raw)) : std::string(raw), max);
    };
    std::string code;
    std::string description;
    if (doc && doc->IsObject()) {
        bool dup = false;
        if (const auto* e = member(*doc, "error", dup); e && e->IsString())
            code = server_text(str(*e), kMaxErrorCode);
        if (const auto* d = member(*doc, "error_description", dup); d && d->IsString())
            description = server_text(str(*d), kMaxDescription);
    }
    std::string head = http(status);
    if (!code.empty()) head += " " + code;
    const std::string server_says = description.empty() ? "" : " (server: \"" + description + "\")";

    // Busy or broken servers: whatever the body says, time may cure it.
    if (status == 408 || status == 429 || (status >= 500 && status <= 599))
        return fail(FailureKind::retry, status, head + " from the token endpoint" + server_says,
                    code);
    if (const char* advice = reauth_advice(code))
        return fail(FailureKind::reauth, status, head + ": " + advice + server_says, code);
    if (!code.empty()) return fail(FailureKind::retry, status, head + server_says, code);
    if (status == 401 || status == 403)
        return fail(FailureKind::reauth, status,
                    "the server refused the client (" + head +
                        ") without saying why: check client_id and client_secret_file/env",
                    code);
    if (status == 404)
        return retry(status, head + " from the token endpoint: check token_endpoint or issuer");
    return retry(status, head + " from the token endpoint without an OAuth error code");
}

// expires_in as seconds, or an error line. Integers, whole-number strings
// (some servers quote it) and positive non-integral numbers (floored) are
// accepted; zero, negatives and anything else are not.
Expected<std::chrono::seconds, std::string> parse_expires_in(const JsonValue& v) {
    constexpr std::int64_t cap = kMaxLifetime.count();
    std::int64_t seconds = 0;
    if (v.IsInt64()) {
        seconds = v.GetInt64();
    } else if (v.IsUint64()) {
        seconds = cap;  // beyond int64: certainly above the cap
    } else if (v.IsNumber()) {
        const double d = v.GetDouble();
        if (!std::isfinite(d) || d < 1)
            return Unexpected{std::string("expires_in is less than one second")};
        seconds = d >= static_cast<double>(cap) ? cap : static_cast<std::int64_t>(std::floor(d));
    } else if (v.IsString()) {
        const std::string_view s = str(v);
        if (s.empty() || !all_of(s, is_digit))
            return Unexpected{
                std::string("expires_in is a string that is not a number of seconds")};
        for (char c : s) {
            seconds = seconds * 10 + (c - '0');
            if (seconds > cap) {
                seconds = cap;
                break;
            }
        }
    } else {
        return Unexpected{std::string("expires_in is not a number")};
    }
    if (seconds <= 0) return Unexpected{std::string("expires_in is zero or negative")};
    return std::chrono::seconds(std::min(seconds, cap));
}

// Why `at` (the access_token member, null when absent) cannot be published,
// or "" when it can. It goes into "Authorization: Bearer <token>" as is:
// anything but an RFC 6750 b64token could split or bend that header in a
// consumer's hands.
std::string access_token_problem(const JsonValue* at, std::size_t max_token_bytes) {
    if (!at) return "no access_token";
    if (!at->IsString()) return "access_token is not a string";
    if (at->GetStringLength() == 0) return "access_token is empty";
    if (at->GetStringLength() > max_token_bytes)
        return "access_token is " + std::to_string(at->GetStringLength()) +
               " bytes, more than max_token_bytes (" + std::to_string(max_token_bytes) + ")";
    if (!all_of(str(*at), is_vschar))
        return "access_token contains characters other than printable ASCII";
    if (!is_b64token(str(*at)))
        return "access_token is not an RFC 6750 b64token (letters, digits, -._~+/ and only "
               "trailing '=')";
    return {};
}

// Why `tt` (the token_type member) is not a single RFC 9110 token (an auth
// scheme), or "" when it is.
std::string token_type_problem(const JsonValue* tt) {
    if (!tt) return "no token_type";
    if (!tt->IsString()) return "token_type is not a string";
    const std::string_view type = str(*tt);
    if (type.empty()) return "token_type is empty";
    if (type.size() > kMaxTokenType)
        return "token_type is longer than " + std::to_string(kMaxTokenType) + " characters";
    if (!all_of(type, is_visible))
        return "token_type contains characters other than printable ASCII";
    if (!all_of(type, is_tchar))
        return "token_type contains characters other than an RFC 9110 token's (letters, "
               "digits, !#$%&'*+-.^_`|~)";
    return {};
}

// Everything of a 200 response but the refresh token (parse_success).
TokenOutcome parse_success_fields(const JsonDocument& doc, std::chrono::seconds default_lifetime,
                                  std::size_t max_token_bytes) {
    const std::string head = "HTTP 200 token response: ";
    bool dup = false;
    auto get = [&](const char* name) -> const JsonValue* {
        const JsonValue* v = member(doc, name, dup);
        return (v && v->IsNull()) ? nullptr : v;  // null counts as absent
    };
    TokenSuccess ok;
    const auto* at = get("access_token");
    if (std::string why = access_token_problem(at, max_token_bytes); !why.empty())
        return retry(200, head + why);
    const auto* tt = get("token_type");
    if (std::string why = token_type_problem(tt); !why.empty()) return retry(200, head + why);
    const std::string_view type = str(*tt);
    ok.token_type = iequals(type, "bearer") ? std::string("Bearer") : std::string(type);

    ok.expires_in = std::min(default_lifetime, kMaxLifetime);
    if (const auto* ei = get("expires_in")) {
        auto e = parse_expires_in(*ei);
        if (!e) return retry(200, head + e.error());
        ok.expires_in = *e;
    }

    if (const auto* sc = get("scope")) {
        if (!sc->IsString()) return retry(200, head + "scope is not a string");
        if (sc->GetStringLength() > kMaxScope)
            return retry(200, head + "scope is " + std::to_string(sc->GetStringLength()) +
                                  " bytes, more than " + std::to_string(kMaxScope));
        if (!all_of(str(*sc), is_vschar))
            return retry(200, head + "scope contains characters other than printable ASCII");
        ok.scope = std::string(str(*sc));
    }

    ok.access_token = Secret(std::string(str(*at)));
    return TokenOutcome{std::move(ok)};
}

// A 200 response. The refresh token is read first and travels with a failure
// too: the server has rotated it even when the rest of the answer is unusable
// (say, an access token larger than the slot), and the old one is spent.
TokenOutcome parse_success(const JsonDocument& doc, std::chrono::seconds default_lifetime,
                           std::size_t max_token_bytes) {
    const std::string head = "HTTP 200 token response: ";
    bool dup = false;
    auto get = [&](const char* name) -> const JsonValue* {
        const JsonValue* v = member(doc, name, dup);
        return (v && v->IsNull()) ? nullptr : v;  // null counts as absent
    };
    for (const char* name :
         {"access_token", "token_type", "expires_in", "refresh_token", "scope"}) {
        get(name);
        if (dup) return retry(200, head + name + " appears more than once");
    }
    std::optional<Secret> rotated;
    if (const auto* rt = get("refresh_token")) {
        if (!rt->IsString() || rt->GetStringLength() == 0)
            return retry(200, head + "refresh_token is present but not a non-empty string");
        if (!all_of(str(*rt), is_vschar))
            return retry(200,
                         head + "refresh_token contains characters other than printable ASCII");
        rotated = Secret(std::string(str(*rt)));
    }
    TokenOutcome out = parse_success_fields(doc, default_lifetime, max_token_bytes);
    if (out.ok())
        out.success().refresh_token = std::move(rotated);
    else
        out.failure().refresh_token = std::move(rotated);
    return out;
}

// ---- HTTP-date ----

constexpr std::array<std::string_view, 7> kDays = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
constexpr std::array<std::string_view, 7> kLongDays = {"Sunday",   "Monday", "Tuesday", "Wednesday",
                                                       "Thursday", "Friday", "Saturday"};
constexpr std::array<std::string_view, 12> kMonths = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                                      "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};

template <std::size_t N>
bool one_of(std::string_view s, const std::array<std::string_view, N>& names) {
    return std::find(names.begin(), names.end(), s) != names.end();
}

int month_index(std::string_view s) {
    for (std::size_t i = 0; i < kMonths.size(); ++i)
        if (kMonths[i] == s) return static_cast<int>(i);
    return -1;
}

// `n` digits at s[pos..], or -1.
int digits(std::string_view s, std::size_t pos, std::size_t n) {
    if (pos + n > s.size()) return -1;
    int v = 0;
    for (std::size_t i = pos; i < pos + n; ++i) {
        if (!is_digit(s[i])) return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

struct Fields {
    int year = 0, month = -1, day = 0, hour = 0, minute = 0, second = 0;
};

// "HH:MM:SS" at s[pos..].
bool parse_time(std::string_view s, std::size_t pos, Fields& f) {
    if (pos + 8 > s.size() || s[pos + 2] != ':' || s[pos + 5] != ':') return false;
    f.hour = digits(s, pos, 2);
    f.minute = digits(s, pos + 3, 2);
    f.second = digits(s, pos + 6, 2);
    return f.hour >= 0 && f.minute >= 0 && f.second >= 0;
}

bool leap(int y) {
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

std::optional<std::int64_t> to_unix(const Fields& f) {
    static constexpr int kMonthDays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (f.month < 0 || f.month > 11 || f.year < 1900) return std::nullopt;
    const int mdays = kMonthDays[f.month] + (f.month == 1 && leap(f.year) ? 1 : 0);
    if (f.day < 1 || f.day > mdays || f.hour > 23 || f.minute > 59 || f.second > 60)
        return std::nullopt;  // 60: a leap second, which RFC 9110 allows
    struct tm tm {};
    tm.tm_year = f.year - 1900;
    tm.tm_mon = f.month;
    tm.tm_mday = f.day;
    tm.tm_hour = f.hour;
    tm.tm_min = f.minute;
    tm.tm_sec = f.second;
    return static_cast<std::int64_t>(::timegm(&tm));
}

// Unix seconds of an HTTP-date (RFC 9110 §5.6.7), or nullopt.
std::optional<std::int64_t> parse_http_date(std::string_view s, std::int64_t now_unix_ms) {
    Fields f;
    // IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT"
    if (s.size() == 29 && s[3] == ',') {
        if (!one_of(s.substr(0, 3), kDays) || s[4] != ' ' || s[7] != ' ' || s[11] != ' ' ||
            s[16] != ' ' || s[25] != ' ' || s.substr(26) != "GMT")
            return std::nullopt;
        f.day = digits(s, 5, 2);
        f.month = month_index(s.substr(8, 3));
        f.year = digits(s, 12, 4);
        if (!parse_time(s, 17, f)) return std::nullopt;
        return to_unix(f);
    }
    // rfc850-date: "Sunday, 06-Nov-94 08:49:37 GMT"
    if (const std::size_t comma = s.find(','); comma != std::string_view::npos) {
        const std::string_view rest = s.substr(comma + 1);  // " 06-Nov-94 08:49:37 GMT"
        if (!one_of(s.substr(0, comma), kLongDays) || rest.size() != 23 || rest[0] != ' ' ||
            rest[3] != '-' || rest[7] != '-' || rest[10] != ' ' || rest[19] != ' ' ||
            rest.substr(20) != "GMT")
            return std::nullopt;
        f.day = digits(rest, 1, 2);
        f.month = month_index(rest.substr(4, 3));
        const int yy = digits(rest, 8, 2);
        if (yy < 0 || !parse_time(rest, 11, f)) return std::nullopt;
        // RFC 9110: a two-digit year more than 50 years in the future means
        // the most recent past year with those digits.
        const time_t now = static_cast<time_t>(now_unix_ms / 1000);
        struct tm now_tm {};
        if (!::gmtime_r(&now, &now_tm)) return std::nullopt;
        const int now_year = now_tm.tm_year + 1900;
        f.year = now_year - now_year % 100 + yy;
        if (f.year > now_year + 50) f.year -= 100;
        return to_unix(f);
    }
    // asctime-date: "Sun Nov  6 08:49:37 1994" (day is 2DIGIT or SP DIGIT)
    if (s.size() == 24) {
        if (!one_of(s.substr(0, 3), kDays) || s[3] != ' ' || s[7] != ' ' || s[10] != ' ' ||
            s[19] != ' ')
            return std::nullopt;
        f.month = month_index(s.substr(4, 3));
        f.day = s[8] == ' ' ? digits(s, 9, 1) : digits(s, 8, 2);
        f.year = digits(s, 20, 4);
        if (!parse_time(s, 11, f)) return std::nullopt;
        return to_unix(f);
    }
    return std::nullopt;
}

}  // namespace

namespace {

// The encoders write through `put(const char*, std::size_t)`, so the same
// code fills a std::string (public values) or a WipedString (secrets).
template <class Out>
void put(Out& out, const char* data, std::size_t n) {
    out.append(data, n);
}

template <class Out>
void form_urlencode_into(Out& out, std::string_view s) {
    static constexpr char kHex[] = "0123456789ABCDEF";
    for (char ch : s) {
        const auto c = static_cast<unsigned char>(ch);
        if (is_alpha(ch) || is_digit(ch) || ch == '-' || ch == '.' || ch == '_' || ch == '*') {
            put(out, &ch, 1);
        } else if (ch == ' ') {
            put(out, "+", 1);
        } else {
            const char esc[3] = {'%', kHex[c >> 4], kHex[c & 0xF]};
            put(out, esc, 3);
        }
    }
}

}  // namespace

std::string form_urlencode(std::string_view s) {
    std::string out;
    out.reserve(s.size() * 3);
    form_urlencode_into(out, s);
    return out;
}

void append_form_urlencoded(WipedString& out, std::string_view s) {
    form_urlencode_into(out, s);
}

Secret basic_authorization(std::string_view client_id, const Secret& client_secret,
                           BasicEncoding encoding) {
    // Every buffer that holds the secret in any form is a WipedString.
    WipedString pair;
    pair.reserve(3 * (client_id.size() + client_secret.size()) + 1);
    if (encoding == BasicEncoding::form) {
        append_form_urlencoded(pair, client_id);
        pair.append(":", 1);
        append_form_urlencoded(pair, client_secret.reveal());
    } else {
        pair.append(client_id.data(), client_id.size());
        pair.append(":", 1);
        pair.append(client_secret.reveal().data(), client_secret.size());
    }
    WipedString header;
    header.reserve(6 + (pair.size() + 2) / 3 * 4);
    header.append("Basic ", 6);
    append_base64(header, pair.view());
    return Secret(std::move(header));
}

namespace {

void add_form_field(WipedString& body, std::string_view name, std::string_view value) {
    if (!body.empty()) body.append("&", 1);
    append_form_urlencoded(body, name);
    body.append("=", 1);
    append_form_urlencoded(body, value);
}

// extra_params in file order, then the client's credentials: for
// client_secret_post in the body, else only in `authorization`.
void finish_token_request(HttpRequest& r, WipedString& body, const CredentialConfig& c) {
    for (const auto& [name, value] : c.extra_params)
        add_form_field(body, name, value);
    if (c.auth_method == AuthMethod::client_secret_post) {
        add_form_field(body, "client_id", c.client_id);
        add_form_field(body, "client_secret", c.client_secret.reveal());
    } else {
        r.authorization = basic_authorization(c.client_id, c.client_secret, c.basic_encoding);
    }
    r.body = Secret(std::move(body));
}

void apply_common(HttpRequest& r, const CredentialConfig& c) {
    r.timeout = std::chrono::duration_cast<std::chrono::milliseconds>(c.timeout);
    r.connect_timeout = std::min<std::chrono::milliseconds>(r.timeout, std::chrono::seconds(10));
    r.ca_file = c.ca_file.value_or("");
    r.headers.push_back("Accept: application/json");
}

}  // namespace

Expected<HttpRequest, RefresherError> build_token_request(const CredentialConfig& c,
                                                          const EndpointUrl& token_endpoint,
                                                          const Secret* refresh_token) {
    if (c.grant == Grant::refresh_token && refresh_token == nullptr)
        return Unexpected{RefresherError::runtime_error(
            "no token request: the refresh_token grant needs a refresh token")};
    HttpRequest r(token_endpoint);
    r.method = "POST";
    r.headers.push_back("Content-Type: application/x-www-form-urlencoded");
    apply_common(r, c);

    // The body carries the refresh token or the client secret: built in a
    // WipedString, encoded in place, so no unwiped copy is left behind.
    WipedString body;
    body.reserve(512 + 3 * (c.client_secret.size() + (refresh_token ? refresh_token->size() : 0)));
    if (c.grant == Grant::refresh_token) {
        add_form_field(body, "grant_type", "refresh_token");
        add_form_field(body, "refresh_token", refresh_token->reveal());
    } else {
        add_form_field(body, "grant_type", "client_credentials");
    }
    if (c.scope) add_form_field(body, "scope", *c.scope);
    finish_token_request(r, body, c);
    return r;
}

HttpRequest build_code_exchange_request(const CredentialConfig& c,
                                        const EndpointUrl& token_endpoint, const Secret& code,
                                        std::string_view redirect_uri,
                                        const Secret& code_verifier) {
    HttpRequest r(token_endpoint);
    r.method = "POST";
    r.headers.push_back("Content-Type: application/x-www-form-urlencoded");
    apply_common(r, c);
    WipedString body;
    body.reserve(512 + 3 * (c.client_secret.size() + code.size() + code_verifier.size()));
    add_form_field(body, "grant_type", "authorization_code");
    add_form_field(body, "code", code.reveal());
    add_form_field(body, "redirect_uri", redirect_uri);
    add_form_field(body, "code_verifier", code_verifier.reveal());
    finish_token_request(r, body, c);
    return r;
}

std::vector<EndpointUrl> discovery_urls(const EndpointUrl& issuer) {
    std::string_view base = issuer.text();
    while (!base.empty() && base.back() == '/')
        base.remove_suffix(1);
    const std::size_t scheme_end = base.find("://");
    const std::size_t path_start =
        base.find('/', scheme_end == std::string_view::npos ? 0 : scheme_end + 3);
    const std::string_view origin = base.substr(0, path_start);
    const std::string_view path =
        path_start == std::string_view::npos ? std::string_view{} : base.substr(path_start);
    // A URL-safe path added to a checked issuer (no query, no fragment) is a
    // valid endpoint; parse() checks it all the same rather than assume so.
    std::vector<EndpointUrl> out;
    for (const std::string& url :
         {std::string(base) + "/.well-known/openid-configuration",
          std::string(origin) + "/.well-known/oauth-authorization-server" + std::string(path)}) {
        if (auto u = EndpointUrl::parse(url)) out.push_back(std::move(*u));
    }
    return out;
}

HttpRequest build_discovery_request(const EndpointUrl& url, const CredentialConfig& c) {
    HttpRequest r(url);
    r.method = "GET";
    apply_common(r, c);
    return r;
}

namespace {

Unexpected<RefresherError> discovery_error(std::string message) {
    return Unexpected{RefresherError::runtime_error(std::move(message))};
}

// The metadata document of a discovery response, or why there is none.
Expected<JsonDocument, RefresherError> discovery_document(const HttpResponse& response) {
    switch (response.outcome) {
        case HttpResponse::Outcome::not_sent:
            return discovery_error("discovery request not sent: " +
                                   sanitize(response.transport_error, 200));
        case HttpResponse::Outcome::sent_no_response:
            return discovery_error("discovery request got no response: " +
                                   sanitize(response.transport_error, 200));
        case HttpResponse::Outcome::response:
            break;
    }
    if (response.too_large) return discovery_error("discovery response body larger than 1 MiB");
    if (response.status != 200)
        return discovery_error("discovery returned " + http(response.status) + " (expected 200)");
    if (looks_like_html(response))
        return discovery_error("discovery returned an HTML page, not JSON metadata (check issuer)");
    JsonDocument doc;
    std::string why;
    if (!parse_json(response.body.view(), doc, why))
        return discovery_error("discovery response is not valid JSON (" + why + ")");
    if (!doc.IsObject()) return discovery_error("discovery response is not a JSON object");
    return doc;
}

}  // namespace

namespace {

// RFC 8414 §3.3: the metadata's `issuer`, when present, must be ours.
Expected<Done, RefresherError> check_metadata_issuer(const JsonDocument& doc,
                                                     const EndpointUrl& issuer) {
    bool dup = false;
    const JsonValue* iss = member(doc, "issuer", dup);
    if (dup) return discovery_error("discovery metadata has issuer more than once");
    if (iss && !iss->IsNull()) {
        if (!iss->IsString()) return discovery_error("discovery metadata: issuer is not a string");
        if (strip_one_slash(str(*iss)) != strip_one_slash(issuer.text()))
            return discovery_error("discovery metadata names issuer " + quoted(str(*iss), 100) +
                                   ", not the configured " + quoted(issuer.text(), 100));
    }
    return Done{};
}

// A required endpoint of the metadata (`token_endpoint`, ...), checked like a
// configured one.
Expected<EndpointUrl, RefresherError> metadata_endpoint(const JsonDocument& doc, const char* name) {
    const std::string key(name);
    bool dup = false;
    const JsonValue* te = member(doc, name, dup);
    if (dup) return discovery_error("discovery metadata has " + key + " more than once");
    if (!te || te->IsNull()) return discovery_error("discovery metadata has no " + key);
    if (!te->IsString()) return discovery_error("discovery metadata: " + key + " is not a string");
    auto endpoint = EndpointUrl::parse(str(*te));
    if (!endpoint)
        return discovery_error("discovery metadata: " + key + ": " + endpoint.error().message);
    return std::move(*endpoint);
}

// The strings of an optional array member; non-strings are skipped.
std::vector<std::string> metadata_strings(const JsonDocument& doc, const char* name) {
    std::vector<std::string> out;
    bool dup = false;
    const JsonValue* v = member(doc, name, dup);
    if (dup || !v || !v->IsArray()) return out;
    for (const auto& e : v->GetArray())
        if (e.IsString() && out.size() < 256) out.emplace_back(sanitize(str(e), 200));
    return out;
}

}  // namespace

Expected<EndpointUrl, RefresherError> parse_discovery(const HttpResponse& response,
                                                      const EndpointUrl& issuer) {
    auto doc = discovery_document(response);
    if (!doc) return Unexpected{doc.error()};
    if (auto ok = check_metadata_issuer(*doc, issuer); !ok) return Unexpected{ok.error()};
    return metadata_endpoint(*doc, "token_endpoint");
}

Expected<AuthorizationServer, RefresherError> parse_authorization_server(
    const HttpResponse& response, const EndpointUrl& issuer) {
    auto doc = discovery_document(response);
    if (!doc) return Unexpected{doc.error()};
    if (auto ok = check_metadata_issuer(*doc, issuer); !ok) return Unexpected{ok.error()};
    auto token = metadata_endpoint(*doc, "token_endpoint");
    if (!token) return Unexpected{token.error()};
    auto authorization = metadata_endpoint(*doc, "authorization_endpoint");
    if (!authorization) return Unexpected{authorization.error()};
    const auto methods = metadata_strings(*doc, "code_challenge_methods_supported");
    if (!methods.empty() && std::find(methods.begin(), methods.end(), "S256") == methods.end())
        return discovery_error(
            "discovery metadata: code_challenge_methods_supported lacks S256 (PKCE, RFC 7636)");
    bool dup = false;
    const JsonValue* rim = member(*doc, "authorization_response_iss_parameter_supported", dup);
    return AuthorizationServer{std::move(*authorization), std::move(*token),
                               metadata_strings(*doc, "scopes_supported"),
                               !dup && rim && rim->IsBool() && rim->GetBool()};
}

TokenOutcome parse_token_response(const HttpResponse& response,
                                  std::chrono::seconds default_lifetime,
                                  std::size_t max_token_bytes, const RedactEchoes& redact) {
    switch (response.outcome) {
        case HttpResponse::Outcome::not_sent:
            return retry(0, "token request not sent: " + sanitize(response.transport_error, 200));
        case HttpResponse::Outcome::sent_no_response:
            return retry(
                0, "token request got no response: " + sanitize(response.transport_error, 200));
        case HttpResponse::Outcome::response:
            break;
    }
    const long status = response.status;
    if (response.too_large) return retry(status, "response body larger than 1 MiB");

    const bool html = looks_like_html(response);
    JsonDocument doc;
    std::string why;
    const bool json =
        !html && !blank(response.body.view()) && parse_json(response.body.view(), doc, why);

    if (status == 200) {
        const std::string head = "HTTP 200 token response: ";
        if (html) return retry(200, head + "an HTML page, not JSON (check token_endpoint)");
        if (blank(response.body.view())) return retry(200, head + "empty body");
        if (!json) {
            const std::string mt = media_type(response.content_type);
            std::string msg = head + "not valid JSON (" + why + ")";
            if (!mt.empty() && mt != "application/json")
                msg += ", content-type " + sanitize(mt, 60);
            return retry(200, msg);
        }
        if (!doc.IsObject()) return retry(200, head + "not a JSON object");
        // Some servers answer errors with 200 and an `error` member.
        bool dup = false;
        const auto* err = member(doc, "error", dup);
        const auto* at = member(doc, "access_token", dup);
        if (err && err->IsString() && (!at || at->IsNull()))
            return classify_error(200, &doc, redact);
        return parse_success(doc, default_lifetime, max_token_bytes);
    }
    if (status >= 200 && status <= 299)
        return retry(status, http(status) + " from the token endpoint (expected 200)");
    if (status >= 300 && status <= 399)
        return retry(status, http(status) +
                                 " redirect from the token endpoint (not followed: check "
                                 "token_endpoint)");
    if (status < 400 || status > 599)
        return retry(status, "unexpected " + http(status) + " from the token endpoint");
    return classify_error(status, json ? &doc : nullptr, redact);
}

std::optional<std::chrono::milliseconds> parse_retry_after(std::string_view value,
                                                           std::int64_t now_unix_ms) {
    value = trim_ows(value);
    if (value.empty()) return std::nullopt;
    if (all_of(value, is_digit)) {
        // Saturate far beyond any sane delay; callers cap it anyway.
        constexpr std::int64_t kMaxSeconds = 1'000'000'000'000;
        std::int64_t seconds = 0;
        for (char c : value) {
            seconds = seconds * 10 + (c - '0');
            if (seconds > kMaxSeconds) {
                seconds = kMaxSeconds;
                break;
            }
        }
        return std::chrono::seconds(seconds);
    }
    const auto when = parse_http_date(value, now_unix_ms);
    if (!when) return std::nullopt;
    const std::int64_t delta = *when * 1000 - now_unix_ms;
    return std::chrono::milliseconds(std::max<std::int64_t>(delta, 0));
}

}  // namespace tokenshm::refresher
