// The configuration parser: every default of SPEC.md, every field, and one
// clear line naming the key's path for each kind of bad input. The secrets
// used here must never show up in an error or a warning.
#include "config.hpp"
#include "ci_skip.hpp"
#include "temp_dir.hpp"

#include <catch2/catch.hpp>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

using namespace tokenshm::refresher;
using namespace std::chrono_literals;

namespace {

// Compared as Secret(kSecret), never via reveal(), so a failing check cannot print it.
constexpr const char* kSecret = "s3cr3t-VALUE-9f8e";

// In-memory environment, files and groups.
struct FakeSystem {
    std::map<std::string, std::string> env{{"STORAGE_SECRET", kSecret}};
    struct File {
        std::string content;
        bool loose = false;
    };
    std::map<std::string, File> files;
    std::map<std::string, gid_t> groups{{"tokenshm-readers", 1234}};
    std::vector<std::string> files_read;
    std::vector<std::string> files_checked;

    ConfigSources sources() {
        ConfigSources s;
        s.getenv = [this](const std::string& name) -> std::optional<std::string> {
            const auto it = env.find(name);
            if (it == env.end()) return std::nullopt;
            return it->second;
        };
        s.read_file = [this](const std::string& path,
                             bool& loose) -> tokenshm::Expected<WipedString, RefresherError> {
            files_read.push_back(path);
            const auto it = files.find(path);
            if (it == files.end()) {
                return tokenshm::Unexpected{
                    RefresherError::config_error(path + ": No such file or directory")};
            }
            loose = it->second.loose;
            return WipedString(it->second.content);
        };
        s.check_file = [this](const std::string& path) -> tokenshm::Expected<Done, RefresherError> {
            files_checked.push_back(path);
            if (files.count(path) == 0) {
                return tokenshm::Unexpected{
                    RefresherError::config_error(path + ": No such file or directory")};
            }
            return Done{};
        };
        s.group_id = [this](const std::string& name) -> std::optional<gid_t> {
            const auto it = groups.find(name);
            if (it == groups.end()) return std::nullopt;
            return it->second;
        };
        return s;
    }
};

using Field = std::pair<std::string, std::string>;  // key, raw JSON value

// A JSON object of `fields`, with fields replaced or added by `changes` and
// fields left out by `drop`.
std::string object(std::vector<Field> fields, const std::vector<Field>& changes,
                   const std::vector<std::string>& drop) {
    for (const auto& [key, value] : changes) {
        auto it = std::find_if(fields.begin(), fields.end(),
                               [&key = key](const Field& f) { return f.first == key; });
        if (it != fields.end()) {
            it->second = value;
        } else {
            fields.emplace_back(key, value);
        }
    }
    std::string out = "{";
    for (const auto& [key, value] : fields) {
        if (std::find(drop.begin(), drop.end(), key) != drop.end()) continue;
        if (out.size() > 1) out += ", ";
        out += "\"" + key + "\": " + value;
    }
    return out + "}";
}

// A valid credential object, with fields replaced or added by `changes` and
// fields left out by `drop`.
std::string credential(const std::vector<Field>& changes = {},
                       const std::vector<std::string>& drop = {}) {
    std::vector<Field> fields = {
        {"name", R"("storage")"},
        {"grant", R"("client_credentials")"},
        {"client_id", R"("uploader")"},
        {"client_secret_env", R"("STORAGE_SECRET")"},
        {"token_endpoint", R"("https://id.example.com/token")"},
    };
    return object(std::move(fields), changes, drop);
}

// A document with extra top-level fields (raw JSON, each followed by a comma)
// and the given credentials array contents.
std::string document(const std::string& top = "", const std::string& creds = credential()) {
    return "{" + top + "\"credentials\": [" + creds + "]}";
}

struct BadConfig {
    std::string what;
    std::string json;
    std::string path;  // the error must start with "<path>: "
    std::string gist;  // and contain this
};

std::vector<BadConfig> bad_configs() {
    const std::string two = credential() + ", " + credential({{"grant", R"("password")"}});
    std::string too_many;
    for (int i = 0; i < 4097; ++i) {
        if (i > 0) too_many += ",";
        too_many += credential({{"name", "\"c" + std::to_string(i) + "\""}});
    }
    return {
        // JSON itself
        {"syntax error", "{\n  \"segment\": \"a\"\n  \"mode\": \"0600\"\n}", "line 3, column 3",
         "Missing a comma or '}'"},
        {"trailing garbage", "{} {}", "line 1, column 4", "must not be followed by other values"},
        {"empty document", "", "line 1, column 1", "document is empty"},
        {"NUL byte", std::string("{\"segment\"\0: 1}", 15), "line 1, column 11", "NUL byte"},
        {"comments are not JSON", "// hi\n" + document(), "line 1, column 1", "Invalid value"},
        {"top level not an object", "[" + credential() + "]", "(top level)",
         "expected a JSON object, found an array"},
        // unknown and duplicate keys
        {"unknown top-level key", document(R"("segmnet": "x", )"), "segmnet", "unknown key"},
        {"unknown credential key", document("", credential({{"colour", R"("red")"}})),
         "credentials[0].colour", "unknown key"},
        {"inline client secret",
         document("", credential({{"client_secret", "\"" + std::string(kSecret) + "\""}})),
         "credentials[0].client_secret", "use client_secret_file or client_secret_env"},
        {"inline refresh token", document("", credential({{"refresh_token", R"("rt")"}})),
         "credentials[0].refresh_token", "use refresh_token_file"},
        {"odd unknown key is quoted", document(R"("a b": 1, )"), R"(["a b"])", "unknown key"},
        {"duplicate top-level key", document(R"("segment": "a", "segment": "b", )"), "segment",
         "key appears twice"},
        {"duplicate credential key",
         document("", R"({"name": "a", "grant": "client_credentials", "grant": "refresh_token"})"),
         "credentials[0].grant", "key appears twice"},
        // top-level values
        {"segment wrong type", document(R"("segment": 5, )"), "segment",
         "expected a string of 1 to 200 characters [A-Za-z0-9._-], found 5"},
        {"segment with a slash", document(R"("segment": "a/b", )"), "segment", R"(found "a/b")"},
        {"segment ..", document(R"("segment": "..", )"), "segment", R"(other than "." and "..")"},
        {"segment too long", document("\"segment\": \"" + std::string(201, 'a') + "\", "),
         "segment", "1 to 200 characters"},
        {"mode 0644", document(R"("mode": "0644", )"), "mode",
         R"(expected "0600" or "0640", found "0644")"},
        {"mode as a number", document(R"("mode": 600, )"), "mode", "found 600"},
        {"mode not octal", document(R"("mode": "rw-r-----", )"), "mode", R"(found "rw-r-----")"},
        {"mode 0640 without group", document(R"("mode": "0640", )"), "group",
         R"(required when mode is "0640")"},
        {"unknown group", document(R"("mode": "0640", "group": "nobody-here", )"), "group",
         R"(no such group "nobody-here")"},
        {"group wrong type", document(R"("group": 1234, )"), "group",
         "expected a group name or null, found 1234"},
        {"relative state_dir", document(R"("state_dir": "var/lib", )"), "state_dir",
         R"(expected an absolute path, found "var/lib")"},
        {"state_dir wrong type", document(R"("state_dir": ["/a"], )"), "state_dir",
         "expected an absolute path, found an array"},
        {"control_socket too long",
         document("\"control_socket\": \"/" + std::string(200, 's') + "\", "), "control_socket",
         "longer than 107 bytes"},
        {"default control_socket too long",
         document("\"segment\": \"" + std::string(100, 'a') + "\", "), "control_socket",
         "set control_socket"},
        {"max_token_bytes too small", document(R"("max_token_bytes": 10, )"), "max_token_bytes",
         "expected an integer from 64 to 1048576, found 10"},
        {"max_token_bytes fraction", document(R"("max_token_bytes": 8192.5, )"), "max_token_bytes",
         "found 8192.5"},
        {"max_token_bytes 8192.0", document(R"("max_token_bytes": 8192.0, )"), "max_token_bytes",
         "found 8192.0"},
        {"max_token_bytes string", document(R"("max_token_bytes": "8192", )"), "max_token_bytes",
         R"(found "8192")"},
        {"max_token_bytes bool", document(R"("max_token_bytes": true, )"), "max_token_bytes",
         "found true"},
        {"max_token_bytes huge", document(R"("max_token_bytes": 18446744073709551615, )"),
         "max_token_bytes", "found 18446744073709551615"},
        // credentials array
        {"credentials missing", "{}", "credentials", "required key is missing"},
        {"credentials empty", document("", ""), "credentials",
         "expected a non-empty array of credential objects, found an empty array"},
        {"credentials an object", R"({"credentials": {}})", "credentials", "found an empty object"},
        {"credential not an object", document("", credential() + R"(, "storage")"),
         "credentials[1]", "expected an object, found a string"},
        {"too many credentials", document("", too_many), "credentials",
         "at most 4096 credentials, found 4097"},
        // redirect_uri (tokenshm login)
        {"redirect_uri with client_credentials",
         document("", credential({{"redirect_uri", R"("http://127.0.0.1:8765/cb")"}})),
         "credentials[0].redirect_uri", "only allowed with grant \"refresh_token\""},
        {"redirect_uri not on 127.0.0.1",
         document("", credential({{"grant", R"("refresh_token")"},
                                  {"redirect_uri", R"("http://localhost:8765/cb")"}})),
         "credentials[0].redirect_uri", "expected http://127.0.0.1:PORT/PATH"},
        {"redirect_uri without a port",
         document("", credential({{"grant", R"("refresh_token")"},
                                  {"redirect_uri", R"("http://127.0.0.1:/cb")"}})),
         "credentials[0].redirect_uri", "a port from 1 to 65535"},
        // required credential keys
        {"missing name", document("", credential({}, {"name"})), "credentials[0].name",
         "required key is missing"},
        {"missing grant", document("", credential({}, {"grant"})), "credentials[0].grant",
         "required key is missing"},
        {"missing client_id", document("", credential({}, {"client_id"})),
         "credentials[0].client_id", "required key is missing"},
        {"no client secret", document("", credential({}, {"client_secret_env"})),
         "credentials[0].client_secret_file", "give client_secret_file or client_secret_env"},
        {"both client secrets", document("", credential({{"client_secret_file", R"("/etc/s")"}})),
         "credentials[0].client_secret_env", "not both"},
        {"no endpoint", document("", credential({}, {"token_endpoint"})), "credentials[0].issuer",
         "give issuer or token_endpoint"},
        {"null endpoint counts as absent",
         document("", credential({{"token_endpoint", "null"}, {"issuer", "null"}})),
         "credentials[0].issuer", "give issuer or token_endpoint"},
        {"both endpoints", document("", credential({{"issuer", R"("https://id.example.com")"}})),
         "credentials[0].token_endpoint", "not both"},
        // credential values
        {"bad grant", document("", two), "credentials[1].grant",
         R"(expected "refresh_token" or "client_credentials", found "password")"},
        {"grant wrong type", document("", credential({{"grant", "1"}})), "credentials[0].grant",
         "found 1"},
        {"name used twice", document("", credential() + ", " + credential() + ", " + credential()),
         "credentials[1].name", R"("storage" is used twice (first by credentials[0]))"},
        {"name with a space", document("", credential({{"name", R"("my token")"}})),
         "credentials[0].name", R"(found "my token")"},
        {"name too long", document("", credential({{"name", "\"" + std::string(64, 'n') + "\""}})),
         "credentials[0].name", "1 to 63 characters"},
        {"name wrong type", document("", credential({{"name", "null"}})), "credentials[0].name",
         "found null"},
        {"empty client_id", document("", credential({{"client_id", R"("")"}})),
         "credentials[0].client_id", "expected a non-empty string"},
        {"client_id control character", document("", credential({{"client_id", R"("a\nb")"}})),
         "credentials[0].client_id", "control character"},
        {"client_id wrong type", document("", credential({{"client_id", "42"}})),
         "credentials[0].client_id", "expected a non-empty string, found 42"},
        {"bad env variable name", document("", credential({{"client_secret_env", R"("A-B")"}})),
         "credentials[0].client_secret_env", "expected an environment variable name"},
        {"client_secret_file wrong type",
         document("", credential({{"client_secret_file", "{}"}}, {"client_secret_env"})),
         "credentials[0].client_secret_file", "expected a path, found an empty object"},
        {"http issuer not loopback",
         document("", credential({{"issuer", R"("http://id.example.com")"}}, {"token_endpoint"})),
         "credentials[0].issuer", "plain http:// is allowed only for a loopback host"},
        {"http to a name starting 127",
         document("", credential({{"token_endpoint", R"("http://127.0.0.1.evil.example/t")"}})),
         "credentials[0].token_endpoint", "plain http://"},
        {"http localhost lookalike",
         document("", credential({{"token_endpoint", R"("http://localhost.evil.example/t")"}})),
         "credentials[0].token_endpoint", "plain http://"},
        {"ftp endpoint",
         document("", credential({{"token_endpoint", R"("ftp://id.example.com")"}})),
         "credentials[0].token_endpoint",
         R"(expected an https:// URL, found "ftp://id.example.com")"},
        {"endpoint not a URL",
         document("", credential({{"token_endpoint", R"("id.example.com")"}})),
         "credentials[0].token_endpoint", "expected an https:// URL"},
        {"endpoint wrong type", document("", credential({{"token_endpoint", "true"}})),
         "credentials[0].token_endpoint", "expected an https:// URL, found true"},
        {"issuer with a query",
         document("", credential({{"issuer", R"("https://id.example.com/?tenant=a")"}},
                                 {"token_endpoint"})),
         "credentials[0].issuer", "must not have a query"},
        {"endpoint with a fragment",
         document("", credential({{"token_endpoint", R"("https://id.example.com/token#x")"}})),
         "credentials[0].token_endpoint", "must not have a fragment"},
        {"endpoint with user info",
         document("", credential({{"token_endpoint", "\"https://user:" + std::string(kSecret) +
                                                         "@id.example.com/token\""}})),
         "credentials[0].token_endpoint", "must not contain user info"},
        {"endpoint without host",
         document("", credential({{"token_endpoint", R"("https:///token")"}})),
         "credentials[0].token_endpoint", "has no host"},
        {"endpoint bad port",
         document("", credential({{"token_endpoint", R"("https://id.example.com:99999/t")"}})),
         "credentials[0].token_endpoint", "invalid port"},
        {"endpoint with a space",
         document("", credential({{"token_endpoint", R"("https://id.example.com/a b")"}})),
         "credentials[0].token_endpoint", "space"},
        {"bad auth_method", document("", credential({{"auth_method", R"("private_key_jwt")"}})),
         "credentials[0].auth_method",
         R"(expected "client_secret_basic" or "client_secret_post", found "private_key_jwt")"},
        {"bad basic_encoding", document("", credential({{"basic_encoding", R"("utf8")"}})),
         "credentials[0].basic_encoding", R"(expected "form" or "raw", found "utf8")"},
        {"refresh_token_file with client_credentials",
         document("", credential({{"refresh_token_file", R"("/etc/r")"}})),
         "credentials[0].refresh_token_file", R"(only allowed with grant "refresh_token")"},
        {"refresh_token_file wrong type",
         document("", credential({{"grant", R"("refresh_token")"}, {"refresh_token_file", "7"}})),
         "credentials[0].refresh_token_file", "expected a path, found 7"},
        {"scope too long",
         document("", credential({{"scope", "\"" + std::string(1025, 's') + "\""}})),
         "credentials[0].scope", "1 to 1024 printable ASCII characters, found 1025 bytes"},
        {"scope with a tab", document("", credential({{"scope", R"("a\tb")"}})),
         "credentials[0].scope", "found another character"},
        {"scope wrong type", document("", credential({{"scope", R"(["a"])"}})),
         "credentials[0].scope", "found an array"},
        {"extra_params overrides grant_type",
         document("",
                  credential({{"extra_params", R"({"audience": "x", "grant_type": "password"})"}})),
         "credentials[0].extra_params.grant_type", "reserved: tokenshm sets this parameter itself"},
        {"extra_params overrides client_secret",
         document("", credential({{"extra_params", R"({"client_secret": "x"})"}})),
         "credentials[0].extra_params.client_secret",
         "reserved: tokenshm sets this parameter itself"},
        {"extra_params value not a string",
         document("", credential({{"extra_params", R"({"audience": 3})"}})),
         "credentials[0].extra_params.audience", "expected a string, found 3"},
        {"extra_params not an object",
         document("", credential({{"extra_params", R"(["audience"])"}})),
         "credentials[0].extra_params", "expected an object of string values, found an array"},
        {"extra_params duplicate key",
         document("", credential({{"extra_params", R"({"a": "1", "a": "2"})"}})),
         "credentials[0].extra_params.a", "key appears twice"},
        {"default_lifetime_s zero", document("", credential({{"default_lifetime_s", "0"}})),
         "credentials[0].default_lifetime_s", "expected an integer from 1 to 31536000, found 0"},
        {"refresh_before_s negative", document("", credential({{"refresh_before_s", "-1"}})),
         "credentials[0].refresh_before_s", "expected an integer from 0 to 86400, found -1"},
        {"min_interval_s too big", document("", credential({{"min_interval_s", "86401"}})),
         "credentials[0].min_interval_s", "found 86401"},
        {"min_backoff_s zero", document("", credential({{"min_backoff_s", "0"}})),
         "credentials[0].min_backoff_s", "expected an integer from 1 to 86400, found 0"},
        {"max_backoff_s below min_backoff_s",
         document("", credential({{"min_backoff_s", "60"}, {"max_backoff_s", "30"}})),
         "credentials[0].max_backoff_s", "must be at least min_backoff_s (60), found 30"},
        {"timeout_s too big", document("", credential({{"timeout_s", "601"}})),
         "credentials[0].timeout_s", "expected an integer from 1 to 600, found 601"},
        {"timeout_s fraction", document("", credential({{"timeout_s", "1.5"}})),
         "credentials[0].timeout_s", "found 1.5"},
        {"timeout_s string", document("", credential({{"timeout_s", R"("20s")"}})),
         "credentials[0].timeout_s", R"(found "20s")"},
        {"ca_file empty", document("", credential({{"ca_file", R"("")"}})),
         "credentials[0].ca_file", "expected a path, found an empty string"},
        {"ca_file wrong type", document("", credential({{"ca_file", "false"}})),
         "credentials[0].ca_file", "found false"},
        // secrets
        {"secret env not set", document("", credential({{"client_secret_env", R"("NOT_SET")"}})),
         "credentials[0].client_secret_env", "environment variable NOT_SET is not set"},
        {"secret file missing",
         document("",
                  credential({{"client_secret_file", R"("/etc/missing")"}}, {"client_secret_env"})),
         "credentials[0].client_secret_file", "/etc/missing: No such file or directory"},
        {"secret empty", document("", credential({{"client_secret_env", R"("EMPTY")"}})),
         "credentials[0].client_secret_env", "the secret in environment variable EMPTY is empty"},
        {"secret two lines",
         document("", credential({{"client_secret_file", R"("/etc/two-lines")"}},
                                 {"client_secret_env"})),
         "credentials[0].client_secret_file", "more than one line"},
    };
}

}  // namespace

TEST_CASE("every bad configuration gets one line naming the key's path", "[config]") {
    const auto cases = bad_configs();
    REQUIRE(cases.size() >= 30);
    for (const auto& c : cases) {
        FakeSystem sys;
        sys.env["EMPTY"] = "\n";
        sys.files["/etc/two-lines"] = {std::string(kSecret) + "\nsecond line\n", false};
        const auto r = parse_config(c.json, sys.sources());
        INFO(c.what);
        REQUIRE_FALSE(r.has_value());
        const std::string& e = r.error().message;
        CHECK(r.error().kind == RefresherError::Kind::config);
        INFO(e);
        CHECK(e.rfind(c.path + ": ", 0) == 0);
        CHECK(e.find(c.gist) != std::string::npos);
        CHECK(e.find('\n') == std::string::npos);
        CHECK(e.find(kSecret) == std::string::npos);
    }
}

TEST_CASE("a bad document reads no secret", "[config]") {
    FakeSystem sys;
    const auto r = parse_config(
        document(R"("segmnet": "x", )",
                 credential({{"client_secret_file", R"("/etc/s")"}}, {"client_secret_env"})),
        sys.sources());
    REQUIRE_FALSE(r.has_value());
    CHECK(sys.files_read.empty());
}

TEST_CASE("the segment comes from the config, else TOKENSHM_SEGMENT, else tokenshm", "[config]") {
    FakeSystem sys;
    SECTION("the variable names it when the config does not") {
        sys.env["TOKENSHM_SEGMENT"] = "team-a.tokens";
        const auto r = parse_config(document(), sys.sources());
        REQUIRE(r.has_value());
        CHECK(r->segment == "team-a.tokens");
        CHECK(r->control_socket == "/run/tokenshm/team-a.tokens.sock");
        CHECK(r->warnings.empty());
    }
    SECTION("an empty variable is unset") {
        sys.env["TOKENSHM_SEGMENT"] = "";
        const auto r = parse_config(document(), sys.sources());
        REQUIRE(r.has_value());
        CHECK(r->segment == "tokenshm");
    }
    SECTION("the config wins; a different variable is a warning naming both") {
        sys.env["TOKENSHM_SEGMENT"] = "other";
        const auto r = parse_config(document(R"("segment": "mine", )"), sys.sources());
        REQUIRE(r.has_value());
        CHECK(r->segment == "mine");
        REQUIRE(r->warnings.size() == 1);
        CHECK(r->warnings[0].rfind("segment: ", 0) == 0);
        CHECK(r->warnings[0].find("\"mine\"") != std::string::npos);
        CHECK(r->warnings[0].find("\"other\"") != std::string::npos);
    }
    SECTION("the same name in both is no warning") {
        sys.env["TOKENSHM_SEGMENT"] = "mine";
        const auto r = parse_config(document(R"("segment": "mine", )"), sys.sources());
        REQUIRE(r.has_value());
        CHECK(r->warnings.empty());
    }
    SECTION("a bad variable is an error naming it") {
        for (const std::string& bad :
             std::vector<std::string>{"../etc", "a/b", "..", std::string(201, 'x'), "tab\there"}) {
            INFO(bad);
            sys.env["TOKENSHM_SEGMENT"] = bad;
            const auto r = parse_config(document(), sys.sources());
            REQUIRE_FALSE(r.has_value());
            CHECK(r.error().message.rfind("TOKENSHM_SEGMENT (environment): expected 1 to 200", 0) ==
                  0);
            CHECK(r.error().message.find('\n') == std::string::npos);
        }
    }
}

TEST_CASE("a minimal configuration gets every default of SPEC.md", "[config]") {
    FakeSystem sys;
    const auto r = parse_config(document(), sys.sources());
    REQUIRE(r.has_value());
    const Config& cfg = *r;
    CHECK(cfg.segment == "tokenshm");
    CHECK(cfg.mode == 0600);
    CHECK_FALSE(cfg.group.has_value());
    CHECK_FALSE(cfg.group_id.has_value());
    CHECK(cfg.state_dir == "/var/lib/tokenshm");
    CHECK(cfg.control_socket == "/run/tokenshm/tokenshm.sock");
    CHECK(cfg.max_token_bytes == 8192);
    CHECK(cfg.warnings.empty());
    REQUIRE(cfg.credentials.size() == 1);
    const CredentialConfig& c = cfg.credentials[0];
    CHECK(c.name == "storage");
    CHECK(c.grant == Grant::client_credentials);
    CHECK(c.client_id == "uploader");
    CHECK(c.client_secret == Secret(kSecret));
    CHECK(c.client_secret_source == "env STORAGE_SECRET");
    CHECK_FALSE(c.issuer.has_value());
    CHECK(c.token_endpoint->text() == "https://id.example.com/token");
    CHECK(c.auth_method == AuthMethod::client_secret_basic);
    CHECK(c.basic_encoding == BasicEncoding::form);
    CHECK_FALSE(c.refresh_token_file.has_value());
    CHECK_FALSE(c.scope.has_value());
    CHECK(c.extra_params.empty());
    CHECK(c.default_lifetime == 3600s);
    CHECK(c.refresh_before == 300s);
    CHECK(c.min_interval == 5s);
    CHECK(c.min_backoff == 1s);
    CHECK(c.max_backoff == 300s);
    CHECK(c.timeout == 20s);
    CHECK_FALSE(c.ca_file.has_value());
}

TEST_CASE("the default control socket follows the segment name", "[config]") {
    FakeSystem sys;
    const auto r = parse_config(document(R"("segment": "billing.prod", )"), sys.sources());
    REQUIRE(r.has_value());
    CHECK(r->segment == "billing.prod");
    CHECK(r->control_socket == "/run/tokenshm/billing.prod.sock");
}

TEST_CASE("every field of the SPEC example is parsed", "[config]") {
    FakeSystem sys;
    sys.files["/etc/ssl/private-ca.pem"] = {"-----BEGIN CERTIFICATE-----\n", false};
    sys.files["/etc/tokenshm/storage.secret"] = {std::string(kSecret) + "\r\n", false};
    const std::string json = R"({
  "segment": "tokenshm-a",
  "mode": "0640",
  "group": "tokenshm-readers",
  "state_dir": "/srv/tokenshm/state",
  "control_socket": "/run/custom/a.sock",
  "max_token_bytes": 16384,
  "credentials": [
    {
      "name": "storage",
      "issuer": "https://id.example.com",
      "token_endpoint": null,
      "grant": "refresh_token",
      "client_id": "uploader",
      "client_secret_file": "/etc/tokenshm/storage.secret",
      "auth_method": "client_secret_post",
      "basic_encoding": "raw",
      "refresh_token_file": "/etc/tokenshm/storage.refresh",
      "scope": "files.write files.read",
      "extra_params": {"audience": "storage", "resource": "https://files.example.com"},
      "default_lifetime_s": 7200,
      "refresh_before_s": 600,
      "min_interval_s": 0,
      "min_backoff_s": 2,
      "max_backoff_s": 2,
      "timeout_s": 600,
      "ca_file": "/etc/ssl/private-ca.pem"
    },
    {
      "name": "Queue_2",
      "token_endpoint": "https://id.example.com/oauth2/token?tenant=q",
      "grant": "client_credentials",
      "client_id": "worker",
      "client_secret_env": "STORAGE_SECRET",
      "scope": null,
      "extra_params": null,
      "ca_file": null
    }
  ]
})";
    const auto r = parse_config(json, sys.sources());
    REQUIRE(r.has_value());
    const Config& cfg = *r;
    CHECK(cfg.segment == "tokenshm-a");
    CHECK(cfg.mode == 0640);
    CHECK(cfg.group == "tokenshm-readers");
    CHECK(cfg.group_id == gid_t{1234});
    CHECK(cfg.state_dir == "/srv/tokenshm/state");
    CHECK(cfg.control_socket == "/run/custom/a.sock");
    CHECK(cfg.max_token_bytes == 16384);
    REQUIRE(cfg.credentials.size() == 2);

    const CredentialConfig& a = cfg.credentials[0];
    CHECK(a.name == "storage");
    CHECK(a.issuer->text() == "https://id.example.com");
    CHECK_FALSE(a.token_endpoint.has_value());
    CHECK(a.grant == Grant::refresh_token);
    CHECK(a.client_id == "uploader");
    CHECK(a.client_secret == Secret(kSecret));  // "\r\n" stripped
    CHECK(a.client_secret_source == "file /etc/tokenshm/storage.secret");
    CHECK(a.auth_method == AuthMethod::client_secret_post);
    CHECK(a.basic_encoding == BasicEncoding::raw);
    CHECK(a.refresh_token_file == "/etc/tokenshm/storage.refresh");
    CHECK(a.scope == "files.write files.read");
    const std::vector<std::pair<std::string, std::string>> params = {
        {"audience", "storage"}, {"resource", "https://files.example.com"}};
    CHECK(a.extra_params == params);  // file order kept
    CHECK(a.default_lifetime == 7200s);
    CHECK(a.refresh_before == 600s);
    CHECK(a.min_interval == 0s);
    CHECK(a.min_backoff == 2s);
    CHECK(a.max_backoff == 2s);
    CHECK(a.timeout == 600s);
    CHECK(a.ca_file == "/etc/ssl/private-ca.pem");
    // The refresh token file is the persistence layer's to read, not ours.
    CHECK(sys.files_read == std::vector<std::string>{"/etc/tokenshm/storage.secret"});

    const CredentialConfig& b = cfg.credentials[1];
    CHECK(b.name == "Queue_2");
    CHECK(b.token_endpoint->text() == "https://id.example.com/oauth2/token?tenant=q");
    CHECK(b.grant == Grant::client_credentials);
    CHECK(b.client_secret == Secret(kSecret));
    CHECK_FALSE(b.scope.has_value());
    CHECK(b.extra_params.empty());
    CHECK_FALSE(b.ca_file.has_value());

    // basic_encoding is meaningless with client_secret_post: said, not fatal.
    REQUIRE(cfg.warnings.size() == 1);
    CHECK(cfg.warnings[0].rfind("credentials[0].basic_encoding: ignored", 0) == 0);
}

TEST_CASE("plain http is accepted for loopback hosts only", "[config]") {
    for (const char* url :
         {"http://127.0.0.1:8080/token", "http://127.3.2.1/token", "http://localhost/token",
          "http://LOCALHOST:9000", "http://[::1]:9000/token", "https://[2001:db8::1]:8443/token",
          "HTTPS://id.example.com/token"}) {
        FakeSystem sys;
        const auto r = parse_config(
            document("", credential({{"token_endpoint", "\"" + std::string(url) + "\""}})),
            sys.sources());
        INFO(url);
        REQUIRE(r.has_value());
        CHECK(r->credentials[0].token_endpoint->text() == url);
    }
}

TEST_CASE("the client secret is read from the environment", "[config]") {
    FakeSystem sys;
    sys.env["STORAGE_SECRET"] = std::string(kSecret) + "\n";
    const auto r = parse_config(document(), sys.sources());
    REQUIRE(r.has_value());
    CHECK(r->credentials[0].client_secret == Secret(kSecret));
    CHECK(r->credentials[0].client_secret_source == "env STORAGE_SECRET");
    CHECK(sys.files_read.empty());
}

TEST_CASE("a secret file open to group or others is a warning without the secret", "[config]") {
    FakeSystem sys;
    sys.files["/etc/tokenshm/s.secret"] = {std::string(kSecret) + "\n", true};
    const auto r = parse_config(
        document("", credential({{"client_secret_file", R"("/etc/tokenshm/s.secret")"}},
                                {"client_secret_env"})),
        sys.sources());
    REQUIRE(r.has_value());
    CHECK(r->credentials[0].client_secret == Secret(kSecret));
    REQUIRE(r->warnings.size() == 1);
    const std::string& w = r->warnings[0];
    CHECK(w.rfind("credentials[0].client_secret_file: /etc/tokenshm/s.secret ", 0) == 0);
    CHECK(w.find("chmod 600 /etc/tokenshm/s.secret") != std::string::npos);
    CHECK(w.find(kSecret) == std::string::npos);
}

TEST_CASE("a path with bytes above 0x7f is escaped in warnings and errors", "[config]") {
    // \xc2\x9b is U+009B, a terminal's CSI: a path may hold it, a message may not.
    const std::string path =
        "/etc/tokenshm/\xc2\x9b"
        "2J.secret";
    const std::string shown = "/etc/tokenshm/\\xc2\\x9b2J.secret";
    const std::string doc = document(
        "", credential({{"client_secret_file", "\"" + path + "\""}}, {"client_secret_env"}));
    FakeSystem sys;
    sys.files[path] = {std::string(kSecret) + "\n", true};
    const auto loose = parse_config(doc, sys.sources());
    REQUIRE(loose.has_value());
    REQUIRE(loose->warnings.size() == 1);
    CHECK(loose->warnings[0].find(shown + " is accessible") != std::string::npos);
    CHECK(loose->warnings[0].find('\xc2') == std::string::npos);

    FakeSystem missing;
    const auto r = parse_config(doc, missing.sources());
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().message.find(shown + ": No such file") != std::string::npos);
    CHECK(r.error().message.find('\xc2') == std::string::npos);
}

TEST_CASE("a group with mode 0600 is a warning", "[config]") {
    FakeSystem sys;
    const auto r = parse_config(document(R"("group": "tokenshm-readers", )"), sys.sources());
    REQUIRE(r.has_value());
    CHECK(r->mode == 0600);
    CHECK(r->group_id == gid_t{1234});
    REQUIRE(r->warnings.size() == 1);
    CHECK(r->warnings[0].rfind("group: ", 0) == 0);
}

TEST_CASE("null means absent for keys whose default is none", "[config]") {
    FakeSystem sys;
    const auto r =
        parse_config(document(R"("group": null, )", credential({{"issuer", "null"},
                                                                {"client_secret_file", "null"},
                                                                {"refresh_token_file", "null"},
                                                                {"scope", "null"},
                                                                {"extra_params", "null"},
                                                                {"ca_file", "null"}})),
                     sys.sources());
    REQUIRE(r.has_value());
    CHECK_FALSE(r->group.has_value());
    CHECK(r->credentials[0].client_secret_source == "env STORAGE_SECRET");
    CHECK(r->credentials[0].token_endpoint.has_value());
}

TEST_CASE("to_string names grants and auth methods as the config spells them", "[config]") {
    CHECK(std::string(to_string(Grant::refresh_token)) == "refresh_token");
    CHECK(std::string(to_string(Grant::client_credentials)) == "client_credentials");
    CHECK(std::string(to_string(AuthMethod::client_secret_basic)) == "client_secret_basic");
    CHECK(std::string(to_string(AuthMethod::client_secret_post)) == "client_secret_post");
}

namespace {

// A temporary directory removed at scope exit.
using tokenshm::test::TempDir;

}  // namespace

TEST_CASE("load_config reads a real file and a real 0644 secret file", "[config]") {
    TempDir dir("config_test");
    const std::string secret = dir.write("storage.secret", std::string(kSecret) + "\n", 0644);
    const std::string config = dir.write(
        "tokenshm.json",
        document("",
                 credential({{"client_secret_file", "\"" + secret + "\""}}, {"client_secret_env"})),
        0644);

    const auto r = load_config(config, ConfigSources::system());
    REQUIRE(r.has_value());
    CHECK(r->credentials[0].client_secret == Secret(kSecret));
    CHECK(r->credentials[0].client_secret_source == "file " + secret);
    REQUIRE(r->warnings.size() == 1);
    CHECK(r->warnings[0].find("chmod 600 " + secret) != std::string::npos);
    CHECK(r->warnings[0].find(kSecret) == std::string::npos);

    SECTION("a 0600 secret file gives no warning") {
        REQUIRE(::chmod(secret.c_str(), 0600) == 0);
        const auto again = load_config(config, ConfigSources::system());
        REQUIRE(again.has_value());
        CHECK(again->warnings.empty());
    }
    SECTION("a parse error is prefixed with the file's path") {
        const std::string bad = dir.write("bad.json", document(R"("mode": "0777", )"), 0644);
        const auto e = load_config(bad, ConfigSources::system());
        REQUIRE_FALSE(e.has_value());
        CHECK(e.error().message == bad + R"(: mode: expected "0600" or "0640", found "0777")");
    }
    SECTION("a missing file says so with strerror") {
        const auto e = load_config(dir.path + "/nope.json", ConfigSources::system());
        REQUIRE_FALSE(e.has_value());
        CHECK(e.error().message == dir.path + "/nope.json: " + std::strerror(ENOENT));
    }
    SECTION("a missing secret file names the key and the file") {
        REQUIRE(::unlink(secret.c_str()) == 0);
        const auto e = load_config(config, ConfigSources::system());
        REQUIRE_FALSE(e.has_value());
        CHECK(e.error().message == config + ": credentials[0].client_secret_file: " + secret +
                                       ": " + std::strerror(ENOENT));
    }
    SECTION("a file over 1 MiB is refused") {
        const std::string big = dir.write("big.json", std::string((1 << 20) + 1, ' '), 0600);
        const auto e = load_config(big, ConfigSources::system());
        REQUIRE_FALSE(e.has_value());
        CHECK(e.error().message == big + ": larger than 1 MiB");
    }
    SECTION("a directory is not a config file") {
        const auto e = load_config(dir.path, ConfigSources::system());
        REQUIRE_FALSE(e.has_value());
        CHECK(e.error().message.rfind(dir.path + ": ", 0) == 0);
    }
}

TEST_CASE("the system sources read the environment and the group database", "[config]") {
    const ConfigSources sys = ConfigSources::system();
    REQUIRE(::setenv("TOKENSHM_CONFIG_TEST_VAR", "value", 1) == 0);
    CHECK(sys.getenv("TOKENSHM_CONFIG_TEST_VAR") == std::optional<std::string>("value"));
    REQUIRE(::unsetenv("TOKENSHM_CONFIG_TEST_VAR") == 0);
    CHECK_FALSE(sys.getenv("TOKENSHM_CONFIG_TEST_VAR").has_value());
    CHECK(sys.group_id("root") == std::optional<gid_t>(0));
    CHECK(sys.group_id("4242") == std::optional<gid_t>(4242));  // numeric, like chown
    CHECK_FALSE(sys.group_id("no-such-group-tokenshm-test").has_value());
}

TEST_CASE("a URL's query is never quoted in an error (it may carry a key)", "[config]") {
    FakeSystem sys;
    const auto r = parse_config(
        document("", credential({{"token_endpoint",
                                  R"("https://id.example.test:99999/t?code=k3y-s3cr3t")"}},
                                {"issuer"})),
        sys.sources());
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().message.rfind("credentials[0].token_endpoint: ", 0) == 0);
    CHECK(r.error().message.find("k3y-s3cr3t") == std::string::npos);
    CHECK(r.error().message.find("query not shown") != std::string::npos);
}

TEST_CASE("a ca_file must exist: the error names the key and the file", "[config]") {
    FakeSystem sys;
    const std::string json = document("", credential({{"ca_file", R"("/etc/ssl/none.pem")"}}));
    const auto missing = parse_config(json, sys.sources());
    REQUIRE_FALSE(missing.has_value());
    CHECK(missing.error().message ==
          "credentials[0].ca_file: /etc/ssl/none.pem: No such file or directory");
    sys.files["/etc/ssl/none.pem"] = {"pem", false};
    CHECK(parse_config(json, sys.sources()).has_value());
    CHECK(sys.files_checked == std::vector<std::string>{"/etc/ssl/none.pem", "/etc/ssl/none.pem"});
}

namespace {

// load_config(config) in a child process, so a read that blocks (a FIFO)
// fails the test after a bounded wait instead of hanging it. The error line,
// or "OK".
std::string load_in_child(const std::string& config) {
    int fds[2];
    REQUIRE(::pipe2(fds, O_CLOEXEC) == 0);
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        ::close(fds[0]);
        const auto r = load_config(config, ConfigSources::system());
        const std::string out = r ? "OK" : r.error().message;
        const ssize_t n = ::write(fds[1], out.data(), out.size());
        ::_exit(n == static_cast<ssize_t>(out.size()) ? 0 : 1);
    }
    ::close(fds[1]);
    pollfd p{fds[0], POLLIN, 0};
    const int ready = ::poll(&p, 1, 10'000);
    std::string out;
    if (ready == 1) {
        char buf[4096];
        ssize_t n;
        while ((n = ::read(fds[0], buf, sizeof buf)) > 0)
            out.append(buf, static_cast<std::size_t>(n));
    }
    ::close(fds[0]);
    if (ready != 1) ::kill(pid, SIGKILL);
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    REQUIRE(ready == 1);  // else load_config blocked for 10 s
    CHECK(WIFEXITED(status));
    return out;
}

}  // namespace

TEST_CASE("a FIFO, a device or a directory is never read as a config or secret file", "[config]") {
    TempDir dir("config_test");
    const std::string fifo = dir.path + "/planted.fifo";
    REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
    const auto config_with_secret = [&](const std::string& secret_file) {
        return dir.write(
            "tokenshm.json",
            document("", credential({{"client_secret_file", "\"" + secret_file + "\""}},
                                    {"client_secret_env"})),
            0600);
    };
    SECTION("a FIFO as client_secret_file fails at once, saying what it is") {
        const std::string config = config_with_secret(fifo);
        CHECK(load_in_child(config) == config + ": credentials[0].client_secret_file: " + fifo +
                                           ": not a regular file (a FIFO)");
    }
    SECTION("a FIFO as the configuration itself") {
        CHECK(load_in_child(fifo) == fifo + ": not a regular file (a FIFO)");
    }
    SECTION("a character device as client_secret_file") {
        const std::string config = config_with_secret("/dev/zero");
        CHECK(load_in_child(config) == config +
                                           ": credentials[0].client_secret_file: /dev/zero: not a "
                                           "regular file (a character device)");
    }
    SECTION("a directory as ca_file") {
        const std::string secret = dir.write("s.secret", std::string(kSecret) + "\n", 0600);
        const std::string config =
            dir.write("ca.json",
                      document("", credential({{"client_secret_file", "\"" + secret + "\""},
                                               {"ca_file", "\"" + dir.path + "\""}},
                                              {"client_secret_env"})),
                      0600);
        CHECK(load_in_child(config) == config + ": credentials[0].ca_file: " + dir.path +
                                           ": not a regular file (a directory)");
    }
    SECTION("a FIFO as ca_file") {
        const std::string secret = dir.write("s.secret", std::string(kSecret) + "\n", 0600);
        const std::string config =
            dir.write("ca.json",
                      document("", credential({{"client_secret_file", "\"" + secret + "\""},
                                               {"ca_file", "\"" + fifo + "\""}},
                                              {"client_secret_env"})),
                      0600);
        CHECK(load_in_child(config) ==
              config + ": credentials[0].ca_file: " + fifo + ": not a regular file (a FIFO)");
    }
}

TEST_CASE("secret files are followed through symlinks to files of our uid or root only",
          "[config]") {
    TempDir dir("config_test");
    const std::string target = dir.write("real.secret", std::string(kSecret) + "\r\n", 0600);
    const std::string link = dir.path + "/mounted.secret";
    REQUIRE(::symlink(target.c_str(), link.c_str()) == 0);
    const std::string config = dir.write(
        "tokenshm.json",
        document("",
                 credential({{"client_secret_file", "\"" + link + "\""}}, {"client_secret_env"})),
        0600);

    SECTION("a link to our own file is followed, and CRLF is dropped as for LF") {
        const auto r = load_config(config, ConfigSources::system());
        REQUIRE(r.has_value());
        CHECK(r->credentials[0].client_secret == Secret(kSecret));
    }
    SECTION("a file (or the file behind a link) owned by another uid is refused") {
        if (::geteuid() != 0) SKIP_OR_FAIL_UNDER_CI("chown to another uid needs root");
        REQUIRE(::chown(target.c_str(), 12345, static_cast<gid_t>(-1)) == 0);
        const auto r = load_config(config, ConfigSources::system());
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().message == config + ": credentials[0].client_secret_file: " + link +
                                       ": owned by uid 12345, not by this process's uid 0 or "
                                       "root; refused");
        CHECK(r.error().message.find(kSecret) == std::string::npos);
        const std::string direct =
            dir.write("direct.json",
                      document("", credential({{"client_secret_file", "\"" + target + "\""}},
                                              {"client_secret_env"})),
                      0600);
        const auto d = load_config(direct, ConfigSources::system());
        REQUIRE_FALSE(d.has_value());
        CHECK(d.error().message.find("owned by uid 12345") != std::string::npos);
    }
    SECTION("a configuration owned by another uid is refused too") {
        if (::geteuid() != 0) SKIP_OR_FAIL_UNDER_CI("chown to another uid needs root");
        REQUIRE(::chown(config.c_str(), 12345, static_cast<gid_t>(-1)) == 0);
        const auto r = load_config(config, ConfigSources::system());
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().message == config +
                                       ": owned by uid 12345, not by this process's uid 0 or "
                                       "root; refused");
    }
}

TEST_CASE("redirect_uri gives tokenshm login its port and path", "[config]") {
    FakeSystem sys;
    const auto r = parse_config(
        document("", credential({{"grant", R"("refresh_token")"},
                                 {"redirect_uri", R"("http://127.0.0.1:8765/callback")"}})),
        sys.sources());
    REQUIRE(r.has_value());
    REQUIRE(r->credentials[0].redirect_uri.has_value());
    CHECK(r->credentials[0].redirect_uri->port == 8765);
    CHECK(r->credentials[0].redirect_uri->path == "/callback");
    const auto none = parse_config(document(), sys.sources());
    REQUIRE(none.has_value());
    CHECK_FALSE(none->credentials[0].redirect_uri.has_value());
}

TEST_CASE("sinks and metrics_textfile are parsed with their defaults", "[config][sinks]") {
    FakeSystem sys;
    const auto r = parse_config(
        document(R"("metrics_textfile": "/var/lib/node_exporter/textfile/tokenshm.prom", )",
                 credential({{"sinks", R"([{"path": "/run/tokenshm/a.token"},
                     {"path": "/run/tokenshm/a.hdr", "mode": "0640", "group": "tokenshm-readers",
                      "format": "header"},
                     {"path": "/run/tokenshm/a.json", "mode": "640", "format": "json",
                      "group": null}])"}})),
        sys.sources());
    INFO((r ? std::string() : r.error().message));
    REQUIRE(r.has_value());
    CHECK(r->metrics_textfile == "/var/lib/node_exporter/textfile/tokenshm.prom");
    const auto& s = r->credentials.at(0).sinks;
    REQUIRE(s.size() == 3);
    CHECK(s[0].path == "/run/tokenshm/a.token");
    CHECK(s[0].mode == 0600);
    CHECK(s[0].format == SinkFormat::token);
    CHECK_FALSE(s[0].group.has_value());
    CHECK(s[1].mode == 0640);
    CHECK(s[1].format == SinkFormat::header);
    CHECK(s[1].group_id == std::optional<gid_t>(1234));
    CHECK(s[2].mode == 0640);
    CHECK(s[2].format == SinkFormat::json);
    CHECK_FALSE(s[2].group_id.has_value());
    CHECK(std::string(to_string(SinkFormat::header)) == "header");
}

TEST_CASE("no sinks and no metrics file by default", "[config][sinks]") {
    FakeSystem sys;
    const auto r = parse_config(document(R"("metrics_textfile": null, )"), sys.sources());
    REQUIRE(r.has_value());
    CHECK(r->metrics_textfile.empty());
    CHECK(r->credentials.at(0).sinks.empty());
}

TEST_CASE("a bad sink is one line naming its key", "[config][sinks]") {
    const auto sink = [](const std::string& s) { return document("", credential({{"sinks", s}})); };
    const std::vector<BadConfig> cases = {
        {"sinks not an array", sink(R"({"path": "/a"})"), "credentials[0].sinks", "an array"},
        {"sink not an object", sink(R"(["/a"])"), "credentials[0].sinks[0]", "an object"},
        {"path missing", sink(R"([{"mode": "0600"}])"), "credentials[0].sinks[0].path",
         "required key is missing"},
        {"relative path", sink(R"([{"path": "a.token"}])"), "credentials[0].sinks[0].path",
         "absolute path"},
        {"directory path", sink(R"([{"path": "/run/"}])"), "credentials[0].sinks[0].path",
         "directory"},
        {"world-readable", sink(R"([{"path": "/a", "mode": "0644"}])"),
         "credentials[0].sinks[0].mode", "others"},
        {"world-writable", sink(R"([{"path": "/a", "mode": "0602"}])"),
         "credentials[0].sinks[0].mode", "others"},
        {"mode not octal", sink(R"([{"path": "/a", "mode": "0690"}])"),
         "credentials[0].sinks[0].mode", "octal"},
        {"mode a number", sink(R"([{"path": "/a", "mode": 384}])"), "credentials[0].sinks[0].mode",
         "octal"},
        {"setgid", sink(R"([{"path": "/a", "mode": "2640"}])"), "credentials[0].sinks[0].mode",
         "setuid"},
        {"unknown format", sink(R"([{"path": "/a", "format": "yaml"}])"),
         "credentials[0].sinks[0].format", R"("token", "header" or "json")"},
        {"unknown key", sink(R"([{"path": "/a", "owner": "root"}])"),
         "credentials[0].sinks[0].owner", "unknown key"},
        {"unknown group", sink(R"([{"path": "/a", "group": "nobody-here"}])"),
         "credentials[0].sinks[0].group", "no such group"},
        {"same path twice", sink(R"([{"path": "/a"}, {"path": "/a", "format": "json"}])"),
         "credentials[0].sinks[1].path", "used twice (first by credentials[0].sinks[0].path)"},
        {"the metrics file",
         document(R"("metrics_textfile": "/m.prom", )",
                  credential({{"sinks", R"([{"path": "/m.prom"}])"}})),
         "credentials[0].sinks[0].path", "metrics_textfile"},
        {"relative metrics file", document(R"("metrics_textfile": "m.prom", )"), "metrics_textfile",
         "absolute path"},
    };
    for (const auto& c : cases) {
        FakeSystem sys;
        const auto r = parse_config(c.json, sys.sources());
        INFO(c.what);
        REQUIRE_FALSE(r.has_value());
        const std::string& e = r.error().message;
        INFO(e);
        CHECK(e.rfind(c.path + ": ", 0) == 0);
        CHECK(e.find(c.gist) != std::string::npos);
        CHECK(e.find('\n') == std::string::npos);
    }
}

namespace {

// A `coordination` block with the etcd object's fields replaced or added by
// `etcd_changes` and left out by `drop`, and the keys after etcd raw.
std::string coordination(const std::vector<Field>& etcd_changes = {},
                         const std::vector<std::string>& drop = {},
                         const std::string& after_etcd = R"(, "seal_key_file": "/etc/seal.key")") {
    std::vector<Field> fields = {{"endpoints", R"(["https://10.0.0.1:2379"])"},
                                 {"prefix", R"("/tokenshm/prod")"}};
    return R"("coordination": {"etcd": )" + object(std::move(fields), etcd_changes, drop) +
           after_etcd + "}, ";
}

FakeSystem coordination_system() {
    FakeSystem sys;
    for (const char* f : {"/etc/seal.key", "/etc/etcd-ca.pem", "/etc/etcd.crt", "/etc/etcd.key"})
        sys.files[f] = {"x", false};
    sys.files["/etc/etcd.password"] = {std::string(kSecret) + "\n", false};
    return sys;
}

}  // namespace

TEST_CASE("no coordination block: one host, as before", "[config][coordination]") {
    FakeSystem sys;
    const auto cfg = parse_config(document(), sys.sources());
    REQUIRE(cfg.has_value());
    CHECK_FALSE(cfg->coordination.has_value());
    const auto null_block = parse_config(document(R"("coordination": null, )"), sys.sources());
    REQUIRE(null_block.has_value());
    CHECK_FALSE(null_block->coordination.has_value());
}

TEST_CASE("the SPEC example's coordination block is parsed, with its defaults",
          "[config][coordination]") {
    FakeSystem sys = coordination_system();
    SECTION("minimal: endpoints, prefix, seal_key_file; lease_ttl_s 15, no TLS files, no user") {
        const auto cfg = parse_config(document(coordination()), sys.sources());
        REQUIRE(cfg.has_value());
        REQUIRE(cfg->coordination.has_value());
        const CoordinationConfig& c = *cfg->coordination;
        REQUIRE(c.etcd.endpoints.size() == 1);
        CHECK(c.etcd.endpoints[0].text() == "https://10.0.0.1:2379");
        CHECK(c.etcd.prefix == "/tokenshm/prod");
        CHECK(c.etcd.lease_ttl == 15s);
        CHECK_FALSE(c.etcd.ca_file);
        CHECK_FALSE(c.etcd.cert_file);
        CHECK_FALSE(c.etcd.key_file);
        CHECK_FALSE(c.etcd.username);
        CHECK_FALSE(c.etcd.password_file);
        CHECK(c.etcd.password.empty());
        CHECK(c.seal_key_file == "/etc/seal.key");
        CHECK(sys.files_checked == std::vector<std::string>{"/etc/seal.key"});
    }
    SECTION("every key, nulls as in SPEC's example") {
        const auto cfg = parse_config(
            document(
                coordination({{"endpoints", R"(["https://10.0.0.1:2379", "http://127.0.0.1:2379",
                                                    "https://[fd00::1]:2379"])"},
                              {"lease_ttl_s", "30"},
                              {"ca_file", R"("/etc/etcd-ca.pem")"},
                              {"cert_file", R"("/etc/etcd.crt")"},
                              {"key_file", R"("/etc/etcd.key")"},
                              {"username", R"("tokenshm")"},
                              {"password_file", R"("/etc/etcd.password")"}})),
            sys.sources());
        REQUIRE(cfg.has_value());
        const EtcdConfig& e = cfg->coordination->etcd;
        CHECK(e.endpoints.size() == 3);
        CHECK(e.endpoints[1].loopback());
        CHECK(e.lease_ttl == 30s);
        CHECK(e.ca_file == "/etc/etcd-ca.pem");
        CHECK(e.cert_file == "/etc/etcd.crt");
        CHECK(e.key_file == "/etc/etcd.key");
        CHECK(e.username == "tokenshm");
        CHECK(e.password_file == "/etc/etcd.password");
        CHECK(e.password == Secret(std::string(kSecret)));  // one line end dropped
        CHECK(cfg->warnings.empty());
        const auto nulls = parse_config(document(coordination({{"ca_file", "null"},
                                                               {"cert_file", "null"},
                                                               {"key_file", "null"},
                                                               {"username", "null"},
                                                               {"password_file", "null"}})),
                                        sys.sources());
        REQUIRE(nulls.has_value());
        CHECK_FALSE(nulls->coordination->etcd.username);
    }
}

TEST_CASE("a bad coordination block is one line naming the key's path", "[config][coordination]") {
    const std::vector<BadConfig> cases = {
        {"not an object", document(R"("coordination": [], )"), "coordination",
         "expected an object or null, found an empty array"},
        {"unknown key", document(coordination({}, {}, R"(, "seal_key_file": "/k", "x": 1)")),
         "coordination.x", "unknown key"},
        {"etcd missing", document(R"("coordination": {"seal_key_file": "/etc/seal.key"}, )"),
         "coordination.etcd", "required key is missing"},
        {"etcd not an object",
         document(R"("coordination": {"etcd": "https://e:2379", "seal_key_file": "/k"}, )"),
         "coordination.etcd", "expected an object, found a string"},
        {"seal_key_file missing", document(coordination({}, {}, "")), "coordination.seal_key_file",
         "required key is missing"},
        {"seal_key_file null", document(coordination({}, {}, R"(, "seal_key_file": null)")),
         "coordination.seal_key_file", "expected a path, found null"},
        {"seal_key_file absent from disk",
         document(coordination({}, {}, R"(, "seal_key_file": "/etc/none.key")")),
         "coordination.seal_key_file", "/etc/none.key: No such file or directory"},
        {"unknown etcd key", document(coordination({{"endpoint", R"("https://e:2379")"}})),
         "coordination.etcd.endpoint", "unknown key"},
        {"endpoints missing", document(coordination({}, {"endpoints"})),
         "coordination.etcd.endpoints", "required key is missing"},
        {"endpoints empty", document(coordination({{"endpoints", "[]"}})),
         "coordination.etcd.endpoints",
         "non-empty array of etcd client URLs, found an empty array"},
        {"endpoints a string", document(coordination({{"endpoints", R"("https://e:2379")"}})),
         "coordination.etcd.endpoints", "found a string"},
        {"endpoint not a URL", document(coordination({{"endpoints", R"(["e:2379"])"}})),
         "coordination.etcd.endpoints[0]", ""},
        {"endpoint a number", document(coordination({{"endpoints", R"([2379])"}})),
         "coordination.etcd.endpoints[0]", "expected an https:// URL, found 2379"},
        {"plain http off loopback",
         document(coordination({{"endpoints", R"(["https://a:2379", "http://10.0.0.2:2379"])"}})),
         "coordination.etcd.endpoints[1]", "http"},
        {"endpoint with a path",
         document(coordination({{"endpoints", R"(["https://e:2379/v3"])"}})),
         "coordination.etcd.endpoints[0]", "without a path"},
        {"endpoint with a trailing slash",
         document(coordination({{"endpoints", R"(["https://e:2379/"])"}})),
         "coordination.etcd.endpoints[0]", "without a path"},
        {"endpoint with a query",
         document(coordination({{"endpoints", R"(["https://e:2379?a=b"])"}})),
         "coordination.etcd.endpoints[0]", "query"},
        {"endpoint with user info",
         document(coordination({{"endpoints", R"(["https://u:p@e:2379"])"}})),
         "coordination.etcd.endpoints[0]", ""},
        {"endpoint twice",
         document(coordination({{"endpoints", R"(["https://e:2379", "https://e:2379"])"}})),
         "coordination.etcd.endpoints[1]", "given twice"},
        {"prefix missing", document(coordination({}, {"prefix"})), "coordination.etcd.prefix",
         "required key is missing"},
        {"prefix relative", document(coordination({{"prefix", R"("tokenshm")"}})),
         "coordination.etcd.prefix", R"(must start with "/", found "tokenshm")"},
        {"prefix empty", document(coordination({{"prefix", R"("")"}})), "coordination.etcd.prefix",
         R"(must start with "/")"},
        {"prefix with trailing slash", document(coordination({{"prefix", R"("/tokenshm/")"}})),
         "coordination.etcd.prefix", R"(must not end with "/", found "/tokenshm/")"},
        {"prefix only a slash", document(coordination({{"prefix", R"("/")"}})),
         "coordination.etcd.prefix", R"(must not end with "/")"},
        {"prefix with a space", document(coordination({{"prefix", R"("/a b")"}})),
         "coordination.etcd.prefix", "printable ASCII without spaces"},
        {"prefix with a control", document(coordination({{"prefix", R"("/a\u0001")"}})),
         "coordination.etcd.prefix", "printable ASCII without spaces"},
        {"prefix a number", document(coordination({{"prefix", "7"}})), "coordination.etcd.prefix",
         "found 7"},
        {"lease_ttl_s too short", document(coordination({{"lease_ttl_s", "4"}})),
         "coordination.etcd.lease_ttl_s", "expected an integer from 5 to 3600, found 4"},
        {"lease_ttl_s too long", document(coordination({{"lease_ttl_s", "3601"}})),
         "coordination.etcd.lease_ttl_s", "from 5 to 3600, found 3601"},
        {"lease_ttl_s a string", document(coordination({{"lease_ttl_s", R"("15")"}})),
         "coordination.etcd.lease_ttl_s", R"(found "15")"},
        {"cert_file without key_file",
         document(coordination({{"cert_file", R"("/etc/etcd.crt")"}})),
         "coordination.etcd.key_file", "required with cert_file"},
        {"key_file without cert_file", document(coordination({{"key_file", R"("/etc/etcd.key")"}})),
         "coordination.etcd.cert_file", "required with key_file"},
        {"username without password_file", document(coordination({{"username", R"("u")"}})),
         "coordination.etcd.password_file", "required with username"},
        {"password_file without username",
         document(coordination({{"password_file", R"("/etc/etcd.password")"}})),
         "coordination.etcd.username", "required with password_file"},
        {"username empty",
         document(
             coordination({{"username", R"("")"}, {"password_file", R"("/etc/etcd.password")"}})),
         "coordination.etcd.username", "1 to 255 characters"},
        {"ca_file missing from disk", document(coordination({{"ca_file", R"("/etc/none.pem")"}})),
         "coordination.etcd.ca_file", "/etc/none.pem: No such file or directory"},
        {"key_file missing from disk",
         document(coordination(
             {{"cert_file", R"("/etc/etcd.crt")"}, {"key_file", R"("/etc/none.key")"}})),
         "coordination.etcd.key_file", "/etc/none.key: No such file or directory"},
        {"password file with two lines",
         document(coordination({{"username", R"("u")"}, {"password_file", R"("/etc/two-lines")"}})),
         "coordination.etcd.password_file", "more than one line"},
        {"password file missing",
         document(
             coordination({{"username", R"("u")"}, {"password_file", R"("/etc/none.password")"}})),
         "coordination.etcd.password_file", "No such file or directory"},
        {"duplicate key", document(coordination({{"prefix", R"("/a", "prefix": "/b")"}})),
         "coordination.etcd.prefix", "key appears twice"},
    };
    for (const auto& c : cases) {
        FakeSystem sys = coordination_system();
        sys.files["/etc/two-lines"] = {std::string(kSecret) + "\nsecond line\n", false};
        const auto r = parse_config(c.json, sys.sources());
        INFO(c.what);
        REQUIRE_FALSE(r.has_value());
        const std::string& e = r.error().message;
        INFO(e);
        CHECK(r.error().kind == RefresherError::Kind::config);
        CHECK(e.rfind(c.path + ": ", 0) == 0);
        CHECK(e.find(c.gist) != std::string::npos);
        CHECK(e.find('\n') == std::string::npos);
        CHECK(e.find(kSecret) == std::string::npos);
    }
}

TEST_CASE("a loose etcd password file is a warning without the password",
          "[config][coordination]") {
    FakeSystem sys = coordination_system();
    sys.files["/etc/etcd.password"].loose = true;
    const auto cfg = parse_config(
        document(
            coordination({{"username", R"("u")"}, {"password_file", R"("/etc/etcd.password")"}})),
        sys.sources());
    REQUIRE(cfg.has_value());
    REQUIRE(cfg->warnings.size() == 2);  // first the timeout_s lowered (below)
    CHECK(cfg->warnings[1].rfind("coordination.etcd.password_file: /etc/etcd.password", 0) == 0);
    CHECK(cfg->warnings[1].find(kSecret) == std::string::npos);
}

TEST_CASE("coordinated, a timeout_s above two thirds of the lease is lowered, with a warning",
          "[config][coordination]") {
    FakeSystem sys = coordination_system();
    const auto cfg = parse_config(
        document(coordination(),
                 credential() + ", " + credential({{"name", R"("short")"}, {"timeout_s", "10"}})),
        sys.sources());
    REQUIRE(cfg.has_value());
    REQUIRE(cfg->credentials.size() == 2);
    CHECK(cfg->credentials[0].timeout == std::chrono::seconds(10));  // 20 (default), lease 15
    CHECK(cfg->credentials[1].timeout == std::chrono::seconds(10));
    REQUIRE(cfg->warnings.size() == 1);
    CHECK(cfg->warnings[0].rfind(
              "credentials: " + cfg->credentials[0].name + ": timeout_s 20 lowered to 10 ", 0) ==
          0);
    const auto alone = parse_config(document(), sys.sources());
    REQUIRE(alone.has_value());
    CHECK(alone->credentials[0].timeout == std::chrono::seconds(20));  // one host: as set
}
