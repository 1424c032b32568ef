// Strict parsing of the refresher's JSON configuration (SPEC.md,
// "Configuration"). Every rejection is one line that starts with the key's
// path and says what was expected; values that may be sensitive (secrets,
// client ids, URLs with user info, extra parameters) are described by their
// kind, never echoed. Secrets are read only after the whole document has been
// validated, so a typo never touches a secret file.
#include "config.hpp"

#include "regular_file.hpp"

#include <tokenshm/layout.h>
#include <tokenshm/shm/segment.hpp>

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <rapidjson/document.h>
#include <rapidjson/error/en.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>
#include <span>

namespace tokenshm::refresher {

const char* to_string(Grant g) noexcept {
    switch (g) {
        case Grant::refresh_token:
            return "refresh_token";
        case Grant::client_credentials:
            return "client_credentials";
    }
    return "unknown";
}

const char* to_string(AuthMethod m) noexcept {
    switch (m) {
        case AuthMethod::client_secret_basic:
            return "client_secret_basic";
        case AuthMethod::client_secret_post:
            return "client_secret_post";
    }
    return "unknown";
}

const char* to_string(SinkFormat f) noexcept {
    switch (f) {
        case SinkFormat::token:
            return "token";
        case SinkFormat::header:
            return "header";
        case SinkFormat::json:
            return "json";
    }
    return "unknown";
}

namespace {

using Value = rapidjson::Value;

constexpr std::size_t max_credentials = 4096;
constexpr std::size_t max_path_bytes = 4095;
constexpr std::size_t max_socket_path_bytes = 107;  // sizeof(sockaddr_un::sun_path) - 1
// libshm's valid_segment_name allows this many; only messages need the number.

// Thrown only inside this file; parse_config catches it and returns a config
// RefresherError. The one exception to error.hpp's rule, and it never leaves
// this file: it keeps the many small validation steps readable (each check
// is one line, with no error to pass up by hand).
struct ConfigError {
    std::string line;
};

[[noreturn]] void fail(const std::string& path, std::string_view what) {
    throw ConfigError{path + ": " + std::string(what)};
}

std::string_view text_of(const Value& v) {
    return {v.GetString(), v.GetStringLength()};
}

bool is_name_char(char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
}

bool has_control(std::string_view s) {
    return std::any_of(s.begin(), s.end(), [](char c) {
        const auto u = static_cast<unsigned char>(c);
        return u < 0x20 || u == 0x7f;
    });
}

// The kind of a value, for places where the value itself must not be shown.
std::string kind(const Value& v) {
    switch (v.GetType()) {
        case rapidjson::kNullType:
            return "null";
        case rapidjson::kFalseType:
            return "false";
        case rapidjson::kTrueType:
            return "true";
        case rapidjson::kObjectType:
            return v.MemberCount() == 0 ? "an empty object" : "an object";
        case rapidjson::kArrayType:
            return v.Empty() ? "an empty array" : "an array";
        case rapidjson::kStringType:
            return "a string";
        case rapidjson::kNumberType:
            return "a number";
    }
    return "a value";
}

// The value itself where showing it is safe (numbers, enum-like strings).
std::string describe(const Value& v) {
    if (v.IsString()) return quote(text_of(v));
    if (v.IsInt64()) return std::to_string(v.GetInt64());
    if (v.IsUint64()) return std::to_string(v.GetUint64());
    if (v.IsNumber()) {
        char buf[64];
        const auto r = std::to_chars(buf, buf + sizeof buf, v.GetDouble());
        std::string s(buf, r.ptr);
        // 5.0 parses as a double: show it as written-ish, not as "5".
        if (s.find_first_of(".en") == std::string::npos) s += ".0";
        return s;
    }
    return kind(v);
}

std::string member_path(const std::string& parent, std::string_view key) {
    const bool plain = !key.empty() && std::all_of(key.begin(), key.end(), [](char c) {
        return is_name_char(c) && c != '.';
    });
    if (!plain) return parent + "[" + quote(key) + "]";
    return parent.empty() ? std::string(key) : parent + "." + std::string(key);
}

std::string index_path(const std::string& parent, std::size_t i) {
    return parent + "[" + std::to_string(i) + "]";
}

// An object's members by key, after rejecting duplicate and unknown keys (in
// file order, so the first offending key is the one reported).
class Members {
  public:
    Members(const Value& obj, const std::string& obj_path, std::span<const std::string_view> known,
            std::string_view (*hint)(std::string_view key) = nullptr)
        : path_(obj_path) {
        for (auto it = obj.MemberBegin(); it != obj.MemberEnd(); ++it) {
            const std::string key(text_of(it->name));
            const std::string key_path = member_path(obj_path, key);
            if (std::find(known.begin(), known.end(), key) == known.end()) {
                std::string what = "unknown key";
                if (hint != nullptr) {
                    const auto h = hint(key);
                    if (!h.empty()) what += "; " + std::string(h);
                }
                fail(key_path, what);
            }
            if (!by_key_.emplace(key, &it->value).second) fail(key_path, "key appears twice");
        }
    }

    // The value, or nullptr when the key is absent.
    const Value* find(std::string_view key) const {
        const auto it = by_key_.find(key);
        return it == by_key_.end() ? nullptr : it->second;
    }
    // As find(), but null counts as absent (keys whose default is "none").
    const Value* find_nullable(std::string_view key) const {
        const Value* v = find(key);
        return v != nullptr && v->IsNull() ? nullptr : v;
    }
    const Value& require(std::string_view key) const {
        const Value* v = find(key);
        if (v == nullptr) fail(path(key), "required key is missing");
        return *v;
    }
    std::string path(std::string_view key) const { return member_path(path_, key); }

  private:
    std::string path_;
    std::map<std::string, const Value*, std::less<>> by_key_;
};

// The string itself; a value of another type is shown in the error (it is not a string, so
// it cannot be a secret or a URL).
std::string_view expect_string(const Value& v, const std::string& path, std::string_view what) {
    if (!v.IsString()) fail(path, "expected " + std::string(what) + ", found " + describe(v));
    return text_of(v);
}

std::int64_t expect_int(const Value& v, const std::string& path, std::int64_t lo, std::int64_t hi) {
    if (v.IsInt64() && v.GetInt64() >= lo && v.GetInt64() <= hi) return v.GetInt64();
    fail(path, "expected an integer from " + std::to_string(lo) + " to " + std::to_string(hi) +
                   ", found " + describe(v));
}

std::chrono::seconds seconds_member(const Members& m, std::string_view key, std::int64_t lo,
                                    std::int64_t hi, std::chrono::seconds fallback) {
    const Value* v = m.find(key);
    return v == nullptr ? fallback : std::chrono::seconds(expect_int(*v, m.path(key), lo, hi));
}

// A segment or credential name: libshm's rule (shm::valid_segment_name,
// shm::valid_credential_name), which the message states.
enum class NameKind { segment, credential };

std::size_t name_max(NameKind k) {
    return k == NameKind::segment ? shm::kSegmentNameMax : shm::kCredentialNameMax;
}

bool valid_name(NameKind k, std::string_view s) {
    return k == NameKind::segment ? shm::valid_segment_name(s) : shm::valid_credential_name(s);
}

std::string expect_name(const Value& v, const std::string& path, NameKind k) {
    const std::string what =
        "a string of 1 to " + std::to_string(name_max(k)) + " characters [A-Za-z0-9._-]";
    const auto s = expect_string(v, path, what);
    if (!valid_name(k, s)) {
        fail(path, "expected " + what + " other than \".\" and \"..\", found " + quote(s));
    }
    return std::string(s);
}

std::string expect_path(const Value& v, const std::string& path, bool absolute) {
    const auto s = expect_string(v, path, absolute ? "an absolute path" : "a path");
    if (s.empty()) fail(path, "expected a path, found an empty string");
    if (s.size() > max_path_bytes) {
        fail(path, "path is longer than " + std::to_string(max_path_bytes) + " bytes");
    }
    if (has_control(s)) fail(path, "path contains a control character");
    if (absolute && s.front() != '/') fail(path, "expected an absolute path, found " + quote(s));
    return std::string(s);
}

template <class E, std::size_t N>
E expect_enum(const Value& v, const std::string& path,
              const std::array<std::pair<std::string_view, E>, N>& choices) {
    std::string expected;
    for (std::size_t i = 0; i < N; ++i) {
        if (i > 0) expected += (i + 1 == N) ? " or " : ", ";
        expected += "\"" + std::string(choices[i].first) + "\"";
    }
    if (v.IsString()) {
        for (const auto& [word, e] : choices) {
            if (text_of(v) == word) return e;
        }
    }
    fail(path, "expected " + expected + ", found " + describe(v));
}

// An issuer or endpoint URL, checked by EndpointUrl (the one URL rule).
EndpointUrl expect_url(const Value& v, const std::string& path, EndpointUrl::Role role) {
    const auto text = expect_string(v, path, "an https:// URL");
    auto url = EndpointUrl::parse(text, role);
    if (!url) fail(path, url.error().message);
    return std::move(*url);
}

constexpr std::array<std::string_view, 9> top_keys = {"segment",        "mode",
                                                      "group",          "state_dir",
                                                      "control_socket", "max_token_bytes",
                                                      "credentials",    "metrics_textfile",
                                                      "coordination"};
constexpr std::array<std::string_view, 2> coordination_keys = {"etcd", "seal_key_file"};
constexpr std::array<std::string_view, 8> etcd_keys = {"endpoints", "prefix",       "lease_ttl_s",
                                                       "ca_file",   "cert_file",    "key_file",
                                                       "username",  "password_file"};
// Members of one etcd cluster a host may try; more is a mistake, not a cluster.
constexpr std::size_t max_etcd_endpoints = 16;
constexpr std::size_t max_etcd_prefix = 512;

// clang-format off
constexpr std::array<std::string_view, 21> credential_keys = {
    "name", "issuer", "token_endpoint", "grant", "client_id", "client_secret_file",
    "client_secret_env", "auth_method", "basic_encoding", "refresh_token_file", "scope",
    "extra_params", "default_lifetime_s", "refresh_before_s", "min_interval_s", "min_backoff_s",
    "max_backoff_s", "timeout_s", "ca_file", "redirect_uri",
    "sinks"};
// clang-format on
constexpr std::array<std::string_view, 4> sink_keys = {"path", "mode", "group", "format"};
// A credential's sinks; far more than any tool needs, few enough to write each change.
constexpr std::size_t max_sinks = 16;

// Parameters the client sets itself; extra_params may not override them.
constexpr std::array<std::string_view, 5> reserved_params = {"grant_type", "refresh_token",
                                                             "client_id", "client_secret", "scope"};

std::string_view credential_key_hint(std::string_view key) {
    if (key == "client_secret") {
        return "secrets are read from a file or the environment: use client_secret_file or "
               "client_secret_env";
    }
    if (key == "refresh_token") {
        return "refresh tokens are read from a file: use refresh_token_file";
    }
    return {};
}

// Where a credential's client secret comes from, resolved after validation.
struct SecretSource {
    std::string key_path;  // credentials[i].client_secret_file or ..._env
    bool from_file = false;
    std::string where;  // the path or the variable name
};

std::string parse_client_id(const Members& m) {
    const auto client_id =
        expect_string(m.require("client_id"), m.path("client_id"), "a non-empty string");
    if (client_id.empty()) fail(m.path("client_id"), "expected a non-empty string, found \"\"");
    if (has_control(client_id)) fail(m.path("client_id"), "contains a control character");
    return std::string(client_id);
}

// client_secret_file or client_secret_env (exactly one); the secret itself is
// read later, by read_secret.
SecretSource parse_secret_source(const Members& m) {
    const Value* secret_file = m.find_nullable("client_secret_file");
    const Value* secret_env = m.find_nullable("client_secret_env");
    if (secret_file == nullptr && secret_env == nullptr) {
        fail(m.path("client_secret_file"),
             "required key is missing; give client_secret_file or client_secret_env");
    }
    if (secret_file != nullptr && secret_env != nullptr) {
        fail(m.path("client_secret_env"),
             "give either client_secret_file or client_secret_env, not both");
    }
    if (secret_file != nullptr) {
        return {m.path("client_secret_file"), true,
                expect_path(*secret_file, m.path("client_secret_file"), false)};
    }
    const auto name =
        expect_string(*secret_env, m.path("client_secret_env"), "an environment variable name");
    const bool valid =
        !name.empty() && name.size() <= 255 && !(name.front() >= '0' && name.front() <= '9') &&
        std::all_of(name.begin(), name.end(),
                    [](char ch) { return is_name_char(ch) && ch != '.' && ch != '-'; });
    if (!valid) {
        fail(m.path("client_secret_env"),
             "expected an environment variable name [A-Za-z_][A-Za-z0-9_]*");
    }
    return {m.path("client_secret_env"), false, std::string(name)};
}

// issuer or token_endpoint (exactly one).
void parse_endpoint(const Members& m, CredentialConfig& c) {
    const Value* issuer = m.find_nullable("issuer");
    const Value* endpoint = m.find_nullable("token_endpoint");
    if (issuer == nullptr && endpoint == nullptr) {
        fail(m.path("issuer"), "required key is missing; give issuer or token_endpoint");
    }
    if (issuer != nullptr && endpoint != nullptr) {
        fail(m.path("token_endpoint"), "give either issuer or token_endpoint, not both");
    }
    if (issuer != nullptr)
        c.issuer = expect_url(*issuer, m.path("issuer"), EndpointUrl::Role::issuer);
    if (endpoint != nullptr) {
        c.token_endpoint =
            expect_url(*endpoint, m.path("token_endpoint"), EndpointUrl::Role::endpoint);
    }
}

// auth_method and basic_encoding.
void parse_client_auth(const Members& m, CredentialConfig& c, std::vector<std::string>& warnings) {
    if (const Value* a = m.find("auth_method")) {
        c.auth_method = expect_enum(
            *a, m.path("auth_method"),
            std::array{
                std::pair{std::string_view("client_secret_basic"), AuthMethod::client_secret_basic},
                std::pair{std::string_view("client_secret_post"), AuthMethod::client_secret_post}});
    }
    if (const Value* e = m.find("basic_encoding")) {
        c.basic_encoding =
            expect_enum(*e, m.path("basic_encoding"),
                        std::array{std::pair{std::string_view("form"), BasicEncoding::form},
                                   std::pair{std::string_view("raw"), BasicEncoding::raw}});
        if (c.auth_method == AuthMethod::client_secret_post) {
            warnings.push_back(m.path("basic_encoding") +
                               ": ignored, auth_method is \"client_secret_post\"");
        }
    }
}

std::optional<std::string> parse_refresh_token_file(const Members& m, Grant grant) {
    const Value* r = m.find_nullable("refresh_token_file");
    if (r == nullptr) return std::nullopt;
    if (grant != Grant::refresh_token) {
        fail(m.path("refresh_token_file"),
             "only allowed with grant \"refresh_token\", this credential uses \"" +
                 std::string(to_string(grant)) + "\"");
    }
    return expect_path(*r, m.path("refresh_token_file"), false);
}

// `tokenshm login`'s loopback redirect; login obtains a refresh token, so
// only the refresh_token grant has one.
std::optional<RedirectUri> parse_redirect_uri(const Members& m, Grant grant) {
    const Value* r = m.find_nullable("redirect_uri");
    if (r == nullptr) return std::nullopt;
    if (grant != Grant::refresh_token) {
        fail(m.path("redirect_uri"),
             "only allowed with grant \"refresh_token\", this credential uses \"" +
                 std::string(to_string(grant)) + "\"");
    }
    auto uri = RedirectUri::parse(expect_string(*r, m.path("redirect_uri"), "a string"));
    if (!uri) fail(m.path("redirect_uri"), uri.error());
    return std::move(*uri);
}

// At most the record's scope capacity, printable ASCII.
std::optional<std::string> parse_scope(const Members& m) {
    const Value* s = m.find_nullable("scope");
    if (s == nullptr) return std::nullopt;
    constexpr std::size_t cap = TOKENSHM_SCOPE_CAP;
    const std::string what =
        "a string of 1 to " + std::to_string(cap) + " printable ASCII characters";
    const auto scope = expect_string(*s, m.path("scope"), what);
    const bool printable =
        std::all_of(scope.begin(), scope.end(), [](char ch) { return ch >= 0x20 && ch <= 0x7e; });
    if (scope.empty() || scope.size() > cap) {
        fail(m.path("scope"),
             "expected " + what + ", found " + std::to_string(scope.size()) + " bytes");
    }
    if (!printable) fail(m.path("scope"), "expected " + what + ", found another character");
    return std::string(scope);
}

// String values, in file order; no duplicate and no parameter tokenshm sets.
std::vector<std::pair<std::string, std::string>> parse_extra_params(const Members& m) {
    std::vector<std::pair<std::string, std::string>> params;
    const Value* x = m.find_nullable("extra_params");
    if (x == nullptr) return params;
    const std::string xpath = m.path("extra_params");
    if (!x->IsObject()) fail(xpath, "expected an object of string values, found " + kind(*x));
    std::set<std::string, std::less<>> seen;
    for (auto it = x->MemberBegin(); it != x->MemberEnd(); ++it) {
        const auto key = text_of(it->name);
        const std::string kpath = member_path(xpath, key);
        if (key.empty() || has_control(key)) {
            fail(kpath, "expected a parameter name without control characters");
        }
        if (!seen.emplace(key).second) fail(kpath, "key appears twice");
        if (std::find(reserved_params.begin(), reserved_params.end(), key) !=
            reserved_params.end()) {
            fail(kpath, "reserved: tokenshm sets this parameter itself");
        }
        const auto value = expect_string(it->value, kpath, "a string");
        params.emplace_back(std::string(key), std::string(value));
    }
    return params;
}

// Lifetime, schedule, backoff and timeout, in seconds.
void parse_timings(const Members& m, CredentialConfig& c) {
    c.default_lifetime = seconds_member(m, "default_lifetime_s", 1, 31'536'000, c.default_lifetime);
    c.refresh_before = seconds_member(m, "refresh_before_s", 0, 86'400, c.refresh_before);
    c.min_interval = seconds_member(m, "min_interval_s", 0, 86'400, c.min_interval);
    c.min_backoff = seconds_member(m, "min_backoff_s", 1, 86'400, c.min_backoff);
    c.max_backoff = seconds_member(m, "max_backoff_s", 1, 86'400, c.max_backoff);
    if (c.max_backoff < c.min_backoff) {
        fail(m.path("max_backoff_s"), "must be at least min_backoff_s (" +
                                          std::to_string(c.min_backoff.count()) + "), found " +
                                          std::to_string(c.max_backoff.count()));
    }
    c.timeout = seconds_member(m, "timeout_s", 1, 600, c.timeout);
}

// A sink's mode: an octal string, at most 0770. A token file readable (or
// writable) by others is what the segment's modes exist to prevent.
mode_t parse_sink_mode(const Members& m) {
    const Value* v = m.find("mode");
    if (v == nullptr) return 0600;
    const auto s = expect_string(*v, m.path("mode"), "an octal mode such as \"0600\" or \"0640\"");
    const bool octal = s.size() >= 3 && s.size() <= 4 &&
                       std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '7'; });
    if (!octal) fail(m.path("mode"), "expected an octal mode such as \"0640\", found " + quote(s));
    const auto n = static_cast<mode_t>(std::strtoul(std::string(s).c_str(), nullptr, 8));
    if (n > 0777)
        fail(m.path("mode"), "setuid, setgid and sticky bits make no sense on a token file");
    if ((n & 0007) != 0)
        fail(m.path("mode"),
             quote(s) + " lets others read or write the token; use at most \"0660\"");
    return n;
}

SinkConfig parse_sink(const Value& v, const std::string& path) {
    if (!v.IsObject()) fail(path, "expected an object, found " + kind(v));
    const Members m(v, path, sink_keys);
    SinkConfig s;
    s.path = expect_path(m.require("path"), m.path("path"), true);
    if (s.path.back() == '/') fail(m.path("path"), "expected a file's path, found a directory's");
    s.mode = parse_sink_mode(m);
    if (const Value* g = m.find_nullable("group")) {
        const auto name = expect_string(*g, m.path("group"), "a group name or null");
        if (name.empty() || name.size() > 256 || has_control(name))
            fail(m.path("group"), "expected a group name or null, found " + quote(name));
        s.group = std::string(name);
    }
    if (const Value* f = m.find("format"))
        s.format = expect_enum(*f, m.path("format"),
                               std::array{std::pair{std::string_view("token"), SinkFormat::token},
                                          std::pair{std::string_view("header"), SinkFormat::header},
                                          std::pair{std::string_view("json"), SinkFormat::json}});
    return s;
}

std::vector<SinkConfig> parse_sinks(const Members& m) {
    const Value* v = m.find_nullable("sinks");
    if (v == nullptr) return {};
    if (!v->IsArray())
        fail(m.path("sinks"), "expected an array of sink objects, found " + kind(*v));
    if (v->Size() > max_sinks)
        fail(m.path("sinks"), "at most " + std::to_string(max_sinks) + " sinks per credential");
    std::vector<SinkConfig> sinks;
    for (rapidjson::SizeType i = 0; i < v->Size(); ++i)
        sinks.push_back(parse_sink((*v)[i], index_path(m.path("sinks"), i)));
    return sinks;
}

// One credential, in the order a reader of the file meets its keys' rules.
// Where its secret comes from goes to `secret`; it is read later.
CredentialConfig parse_credential(const Value& v, const std::string& path, SecretSource& secret,
                                  std::vector<std::string>& warnings) {
    if (!v.IsObject()) fail(path, "expected an object, found " + kind(v));
    const Members m(v, path, credential_keys, credential_key_hint);
    CredentialConfig c;
    c.name = expect_name(m.require("name"), m.path("name"), NameKind::credential);
    c.grant = expect_enum(
        m.require("grant"), m.path("grant"),
        std::array{std::pair{std::string_view("refresh_token"), Grant::refresh_token},
                   std::pair{std::string_view("client_credentials"), Grant::client_credentials}});
    c.client_id = parse_client_id(m);
    secret = parse_secret_source(m);
    c.client_secret_source = (secret.from_file ? "file " : "env ") + secret.where;
    parse_endpoint(m, c);
    parse_client_auth(m, c, warnings);
    c.refresh_token_file = parse_refresh_token_file(m, c.grant);
    c.scope = parse_scope(m);
    c.extra_params = parse_extra_params(m);
    parse_timings(m, c);
    if (const Value* ca = m.find_nullable("ca_file")) {
        c.ca_file = expect_path(*ca, m.path("ca_file"), false);
    }
    c.redirect_uri = parse_redirect_uri(m, c.grant);
    c.sinks = parse_sinks(m);
    return c;
}

// Reads a client secret: one trailing "\n" or "\r\n" is dropped; empty or
// multi-line secrets are errors. Messages name the source, never the content.
Secret read_secret(const SecretSource& src, const ConfigSources& sources,
                   std::vector<std::string>& warnings) {
    WipedString value;  // wiped when dropped, on every path
    if (src.from_file) {
        if (!sources.read_file) fail(src.key_path, "no way to read files here");
        bool loose = false;
        auto r = sources.read_file(src.where, loose);
        if (!r) fail(src.key_path, r.error().message);
        value = std::move(*r);
        if (loose) {
            warnings.push_back(printable_line(src.key_path + ": " + src.where +
                                              " is accessible to group or others; run chmod 600 " +
                                              src.where));
        }
    } else {
        std::optional<std::string> env = sources.getenv ? sources.getenv(src.where) : std::nullopt;
        if (!env) fail(src.key_path, "environment variable " + src.where + " is not set");
        value = std::move(*env);
    }
    const std::string_view s = without_line_end(value.view());
    const std::string what =
        src.from_file ? "file " + src.where : "environment variable " + src.where;
    if (s.empty()) fail(src.key_path, "the secret in " + what + " is empty");
    if (has_control(s)) {
        fail(src.key_path,
             "the secret in " + what + " contains a control character or more than one line");
    }
    return Secret(std::string(s));
}

// The segment: the config's `segment`, else $TOKENSHM_SEGMENT (the variable
// readers use), else "tokenshm".
void parse_segment(const Members& m, const ConfigSources& sources, Config& cfg) {
    std::optional<std::string> env_segment =
        sources.getenv ? sources.getenv("TOKENSHM_SEGMENT") : std::nullopt;
    if (env_segment && env_segment->empty()) env_segment.reset();
    if (const Value* v = m.find("segment")) {
        cfg.segment = expect_name(*v, "segment", NameKind::segment);
        if (env_segment && *env_segment != cfg.segment)
            cfg.warnings.push_back("segment: the config names " + quote(cfg.segment) +
                                   "; TOKENSHM_SEGMENT=" + quote(*env_segment) +
                                   " is ignored, and readers that use it will not find these "
                                   "tokens");
    } else if (env_segment) {
        const std::string& s = *env_segment;
        if (!shm::valid_segment_name(s))
            fail("TOKENSHM_SEGMENT (environment)",
                 "expected 1 to " + std::to_string(shm::kSegmentNameMax) +
                     " characters [A-Za-z0-9._-] other than \".\" and \"..\", found " + quote(s));
        cfg.segment = s;
    }
}

// mode ("0600" or "0640") and the group that 0640 needs.
void parse_access(const Members& m, Config& cfg) {
    if (const Value* v = m.find("mode")) {
        const auto s = expect_string(*v, "mode", "\"0600\" or \"0640\"");
        const bool octal =
            s.size() >= 3 && s.size() <= 4 &&
            std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '7'; });
        const auto n = octal ? std::strtoul(std::string(s).c_str(), nullptr, 8) : 0UL;
        if (n != 0600 && n != 0640) {
            fail("mode", "expected \"0600\" or \"0640\", found " + quote(s));
        }
        cfg.mode = static_cast<mode_t>(n);
    }
    if (const Value* v = m.find_nullable("group")) {
        const auto s = expect_string(*v, "group", "a group name or null");
        if (s.empty() || s.size() > 256 || has_control(s)) {
            fail("group", "expected a group name or null, found " + quote(s));
        }
        cfg.group = std::string(s);
    }
    if (cfg.mode == 0640 && !cfg.group) {
        fail("group", "required when mode is \"0640\": name the group that may read the segment");
    }
    if (cfg.mode == 0600 && cfg.group) {
        cfg.warnings.push_back("group: the segment's mode is \"0600\", so group " +
                               quote(*cfg.group) + " gets no access; set mode \"0640\"");
    }
}

// control_socket, or its default under /run/tokenshm, within a socket path's limit.
void parse_control_socket(const Members& m, Config& cfg) {
    if (const Value* v = m.find("control_socket")) {
        cfg.control_socket = expect_path(*v, "control_socket", true);
        if (cfg.control_socket.size() > max_socket_path_bytes) {
            fail("control_socket", "longer than " + std::to_string(max_socket_path_bytes) +
                                       " bytes, the limit of a Unix socket path");
        }
        return;
    }
    cfg.control_socket = "/run/tokenshm/" + cfg.segment + ".sock";
    if (cfg.control_socket.size() > max_socket_path_bytes) {
        fail("control_socket", "the default /run/tokenshm/<segment>.sock is longer than " +
                                   std::to_string(max_socket_path_bytes) +
                                   " bytes (a Unix socket path's limit); set control_socket");
    }
}

// Two sinks writing one file would overwrite each other's token.
void check_sink_paths(const Config& cfg) {
    std::map<std::string, std::string, std::less<>> first_use;  // path -> its key path
    for (std::size_t i = 0; i < cfg.credentials.size(); ++i) {
        const auto& sinks = cfg.credentials[i].sinks;
        for (std::size_t j = 0; j < sinks.size(); ++j) {
            const std::string key =
                index_path(index_path("credentials", i) + ".sinks", j) + ".path";
            const auto [it, fresh] = first_use.emplace(sinks[j].path, key);
            if (!fresh)
                fail(key, quote(sinks[j].path) + " is used twice (first by " + it->second + ")");
            if (sinks[j].path == cfg.metrics_textfile) fail(key, "is the metrics_textfile");
        }
    }
}

// Every credential, names unique; where each secret comes from goes to `secrets`.
void parse_credentials(const Members& m, Config& cfg, std::vector<SecretSource>& secrets) {
    const Value& creds = m.require("credentials");
    if (!creds.IsArray() || creds.Empty()) {
        fail("credentials",
             "expected a non-empty array of credential objects, found " + kind(creds));
    }
    if (creds.Size() > max_credentials) {
        fail("credentials", "at most " + std::to_string(max_credentials) + " credentials, found " +
                                std::to_string(creds.Size()));
    }
    secrets.resize(creds.Size());
    std::map<std::string, std::size_t, std::less<>> first_use;
    for (rapidjson::SizeType i = 0; i < creds.Size(); ++i) {
        const std::string path = index_path("credentials", i);
        cfg.credentials.push_back(parse_credential(creds[i], path, secrets[i], cfg.warnings));
        const auto [it, fresh] = first_use.emplace(cfg.credentials.back().name, i);
        if (!fresh) {
            fail(path + ".name", quote(it->first) + " is used twice (first by " +
                                     index_path("credentials", it->second) + ")");
        }
    }
    check_sink_paths(cfg);
}

void resolve_sink_groups(Config& cfg, const ConfigSources& sources) {
    for (std::size_t i = 0; i < cfg.credentials.size(); ++i) {
        auto& sinks = cfg.credentials[i].sinks;
        for (std::size_t j = 0; j < sinks.size(); ++j) {
            if (!sinks[j].group) continue;
            sinks[j].group_id = sources.group_id ? sources.group_id(*sinks[j].group) : std::nullopt;
            if (!sinks[j].group_id)
                fail(index_path(index_path("credentials", i) + ".sinks", j) + ".group",
                     "no such group " + quote(*sinks[j].group));
        }
    }
}

// An etcd client URL: EndpointUrl's rule (https, or http to loopback; no
// user info, no query), and nothing after host:port, since the client
// appends the gateway's paths (/v3/kv/range) itself.
EndpointUrl parse_etcd_endpoint(const Value& v, const std::string& path) {
    const auto text = expect_string(v, path, "an https:// URL");
    auto url = EndpointUrl::parse(text, EndpointUrl::Role::issuer);
    if (!url) fail(path, url.error().message);
    const auto host_start = text.find("://");
    if (host_start != std::string_view::npos &&
        text.find('/', host_start + 3) != std::string_view::npos) {
        fail(path, "expected scheme://host:port only, without a path or a trailing \"/\"");
    }
    return std::move(*url);
}

std::vector<EndpointUrl> parse_etcd_endpoints(const Members& m) {
    const std::string path = m.path("endpoints");
    const Value& v = m.require("endpoints");
    if (!v.IsArray() || v.Empty())
        fail(path, "expected a non-empty array of etcd client URLs, found " + kind(v));
    if (v.Size() > max_etcd_endpoints)
        fail(path, "at most " + std::to_string(max_etcd_endpoints) + " endpoints, found " +
                       std::to_string(v.Size()));
    std::vector<EndpointUrl> out;
    for (rapidjson::SizeType i = 0; i < v.Size(); ++i) {
        out.push_back(parse_etcd_endpoint(v[i], index_path(path, i)));
        if (std::find(out.begin(), out.end() - 1, out.back()) != out.end() - 1)
            fail(index_path(path, i), "the same endpoint is given twice");
    }
    return out;
}

// "/" and printable ASCII without spaces, no trailing "/": keys are
// prefix + "/" + what the election adds, so "/a/" would make "/a//x".
std::string parse_etcd_prefix(const Members& m) {
    const std::string path = m.path("prefix");
    const auto s = expect_string(m.require("prefix"), path, "a key prefix such as \"/tokenshm\"");
    if (s.empty() || s.front() != '/') fail(path, "must start with \"/\", found " + quote(s));
    if (s.back() == '/') fail(path, "must not end with \"/\", found " + quote(s));
    if (s.size() > max_etcd_prefix)
        fail(path, "longer than " + std::to_string(max_etcd_prefix) + " bytes");
    if (!std::all_of(s.begin(), s.end(), [](char c) { return c > 0x20 && c < 0x7f; }))
        fail(path, "expected printable ASCII without spaces, found " + quote(s));
    return std::string(s);
}

// An optional path key; absent and null are none.
std::optional<std::string> optional_path(const Members& m, std::string_view key) {
    const Value* v = m.find_nullable(key);
    if (v == nullptr) return std::nullopt;
    return expect_path(*v, m.path(key), false);
}

// Keys that mean nothing alone: both, or neither.
void require_together(const Members& m, std::string_view a, bool has_a, std::string_view b,
                      bool has_b) {
    if (has_a && !has_b) fail(m.path(b), "required with " + std::string(a));
    if (has_b && !has_a) fail(m.path(a), "required with " + std::string(b));
}

// TLS files and etcd's user; the password is read later, by resolve_from_system.
void parse_etcd_credentials(const Members& m, EtcdConfig& e) {
    e.ca_file = optional_path(m, "ca_file");
    e.cert_file = optional_path(m, "cert_file");
    e.key_file = optional_path(m, "key_file");
    require_together(m, "cert_file", e.cert_file.has_value(), "key_file", e.key_file.has_value());
    if (const Value* v = m.find_nullable("username")) {
        const auto s = expect_string(*v, m.path("username"), "an etcd user name");
        if (s.empty() || s.size() > 255 || has_control(s))
            fail(m.path("username"), "expected 1 to 255 characters without control characters");
        e.username = std::string(s);
    }
    e.password_file = optional_path(m, "password_file");
    require_together(m, "username", e.username.has_value(), "password_file",
                     e.password_file.has_value());
}

EtcdConfig parse_etcd(const Value& v, const std::string& path) {
    if (!v.IsObject()) fail(path, "expected an object, found " + kind(v));
    const Members m(v, path, etcd_keys);
    EtcdConfig e;
    e.endpoints = parse_etcd_endpoints(m);
    e.prefix = parse_etcd_prefix(m);
    e.lease_ttl = seconds_member(m, "lease_ttl_s", 5, 3600, e.lease_ttl);
    parse_etcd_credentials(m, e);
    return e;
}

// The optional `coordination` block; null is absent (one host).
std::optional<CoordinationConfig> parse_coordination(const Members& top) {
    const Value* v = top.find_nullable("coordination");
    if (v == nullptr) return std::nullopt;
    if (!v->IsObject()) fail("coordination", "expected an object or null, found " + kind(*v));
    const Members m(*v, "coordination", coordination_keys);
    CoordinationConfig c;
    c.etcd = parse_etcd(m.require("etcd"), m.path("etcd"));
    c.seal_key_file = expect_path(m.require("seal_key_file"), m.path("seal_key_file"), false);
    return c;
}

// The files `coordination` names must exist and be trustworthy; the etcd
// password is read like a client secret file (one line, a warning if loose).
void resolve_coordination(Config& cfg, const ConfigSources& sources) {
    if (!cfg.coordination) return;
    EtcdConfig& e = cfg.coordination->etcd;
    const auto check = [&](const std::optional<std::string>& file, const std::string& key) {
        if (!file) return;
        if (!sources.check_file) fail(key, "no way to check files here");
        if (auto ok = sources.check_file(*file); !ok) fail(key, ok.error().message);
    };
    check(e.ca_file, "coordination.etcd.ca_file");
    check(e.cert_file, "coordination.etcd.cert_file");
    check(e.key_file, "coordination.etcd.key_file");
    check(cfg.coordination->seal_key_file, "coordination.seal_key_file");
    if (e.password_file) {
        e.password =
            read_secret(SecretSource{"coordination.etcd.password_file", true, *e.password_file},
                        sources, cfg.warnings);
    }
}

// Coordinated, a leader sends a token request only when its answer is due
// before the lease could end (Coordinator::may_refresh): a timeout_s near
// lease_ttl_s would never let it send. Above two thirds of the TTL it is
// lowered to that, with a warning naming the credential.
void fit_timeouts_to_lease(Config& cfg) {
    if (!cfg.coordination) return;
    const auto most = std::chrono::seconds(cfg.coordination->etcd.lease_ttl.count() * 2 / 3);
    for (CredentialConfig& c : cfg.credentials) {
        if (c.timeout <= most) continue;
        cfg.warnings.push_back("credentials: " + c.name + ": timeout_s " +
                               std::to_string(c.timeout.count()) + " lowered to " +
                               std::to_string(most.count()) +
                               " (two thirds of coordination.etcd.lease_ttl_s): a leader must "
                               "have its answer before its lease can end");
        c.timeout = most;
    }
}

// What needs the system: the group's id and the client secrets. Called only
// once the whole document is valid.
void resolve_from_system(Config& cfg, const std::vector<SecretSource>& secrets,
                         const ConfigSources& sources) {
    if (cfg.group) {
        std::optional<gid_t> gid = sources.group_id ? sources.group_id(*cfg.group) : std::nullopt;
        if (!gid) fail("group", "no such group " + quote(*cfg.group));
        cfg.group_id = gid;
    }
    resolve_sink_groups(cfg, sources);
    for (std::size_t i = 0; i < secrets.size(); ++i) {
        cfg.credentials[i].client_secret = read_secret(secrets[i], sources, cfg.warnings);
        if (const auto& ca = cfg.credentials[i].ca_file) {
            const std::string key = index_path("credentials", i) + ".ca_file";
            if (!sources.check_file) fail(key, "no way to check files here");
            if (auto ok = sources.check_file(*ca); !ok) fail(key, ok.error().message);
        }
    }
}

Config parse_document(const Value& root, const ConfigSources& sources) {
    if (!root.IsObject()) fail("(top level)", "expected a JSON object, found " + kind(root));
    const Members m(root, "", top_keys);
    Config cfg;
    parse_segment(m, sources, cfg);
    parse_access(m, cfg);
    if (const Value* v = m.find("state_dir")) cfg.state_dir = expect_path(*v, "state_dir", true);
    parse_control_socket(m, cfg);
    if (const Value* v = m.find_nullable("metrics_textfile"))
        cfg.metrics_textfile = expect_path(*v, "metrics_textfile", true);
    if (const Value* v = m.find("max_token_bytes")) {
        cfg.max_token_bytes = static_cast<std::uint32_t>(expect_int(
            *v, "max_token_bytes", TOKENSHM_MIN_TOKEN_BYTES, TOKENSHM_MAX_TOKEN_BYTES_LIMIT));
    }
    std::vector<SecretSource> secrets;
    parse_credentials(m, cfg, secrets);
    cfg.coordination = parse_coordination(m);
    fit_timeouts_to_lease(cfg);
    resolve_from_system(cfg, secrets, sources);
    resolve_coordination(cfg, sources);
    return cfg;
}

// 1-based line and byte column of `offset` in `text`.
std::string position(std::string_view text, std::size_t offset) {
    offset = std::min(offset, text.size());
    const auto before = text.substr(0, offset);
    const auto line = 1 + std::count(before.begin(), before.end(), '\n');
    const auto last_nl = before.rfind('\n');
    const auto column = last_nl == std::string_view::npos ? offset + 1 : offset - last_nl;
    return "line " + std::to_string(line) + ", column " + std::to_string(column);
}

std::optional<std::string> system_getenv(const std::string& name) {
    const char* v = ::getenv(name.c_str());
    if (v == nullptr) return std::nullopt;
    return std::string(v);
}

Expected<WipedString, RefresherError> system_read_file(const std::string& path, bool& loose_mode) {
    FileFacts facts;
    auto content = read_regular_file(path, FileRules{}, &facts);
    if (!content) return Unexpected{RefresherError::config_error(content.error().message)};
    loose_mode = facts.loose();
    return std::move(*content);
}

Expected<Done, RefresherError> system_check_file(const std::string& path) {
    if (auto ok = check_regular_file(path); !ok)
        return Unexpected{RefresherError::config_error(ok.error().message)};
    return Done{};
}

std::optional<gid_t> system_group_id(const std::string& name) {
    long hint = ::sysconf(_SC_GETGR_R_SIZE_MAX);
    std::vector<char> buf(hint > 0 ? static_cast<std::size_t>(hint) : 1024);
    for (;;) {
        struct group grp {};
        struct group* found = nullptr;
        const int rc = ::getgrnam_r(name.c_str(), &grp, buf.data(), buf.size(), &found);
        if (rc == ERANGE && buf.size() < (1U << 20)) {
            buf.resize(buf.size() * 2);
            continue;
        }
        if (rc == 0 && found != nullptr) return found->gr_gid;
        break;
    }
    // Like chown(1), a number that is not a group name is a gid.
    gid_t gid = 0;
    const auto r = std::from_chars(name.data(), name.data() + name.size(), gid);
    if (!name.empty() && r.ec == std::errc() && r.ptr == name.data() + name.size()) return gid;
    return std::nullopt;
}

}  // namespace

ConfigSources ConfigSources::system() {
    return ConfigSources{system_getenv, system_read_file, system_check_file, system_group_id};
}

Expected<Config, RefresherError> parse_config(std::string_view json, const ConfigSources& sources) {
    const auto error = [](std::string line) {
        return Unexpected{RefresherError::config_error(std::move(line))};
    };
    // RapidJSON treats a NUL byte as the end of input; refuse it outright.
    if (const auto nul = json.find('\0'); nul != std::string_view::npos) {
        return error(position(json, nul) + ": NUL byte in the configuration");
    }
    rapidjson::Document doc;
    doc.Parse<rapidjson::kParseValidateEncodingFlag | rapidjson::kParseIterativeFlag>(json.data(),
                                                                                      json.size());
    if (doc.HasParseError()) {
        return error(position(json, doc.GetErrorOffset()) + ": " +
                     rapidjson::GetParseError_En(doc.GetParseError()));
    }
    try {
        return parse_document(doc, sources);
    } catch (ConfigError& e) {
        return error(std::move(e.line));
    }
}

Expected<Config, RefresherError> load_config(const std::string& path,
                                             const ConfigSources& sources) {
    const auto error = [](std::string line) {
        return Unexpected{RefresherError::config_error(std::move(line))};
    };
    if (!sources.read_file) return error(path + ": no way to read files here");
    bool loose = false;  // the configuration holds no secret: its mode does not matter
    auto text = sources.read_file(path, loose);
    if (!text) return Unexpected{text.error()};
    auto cfg = parse_config(text->view(), sources);
    if (!cfg) return error(path + ": " + cfg.error().message);
    return cfg;
}

}  // namespace tokenshm::refresher
