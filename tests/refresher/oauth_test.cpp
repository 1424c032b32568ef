// The OAuth protocol logic against literal requests and responses: what goes
// on the wire, and how every kind of answer is judged.
#include "oauth.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <string>
#include <vector>

using namespace tokenshm::refresher;
using namespace std::chrono_literals;

namespace {

// The secrets the test bodies carry; no message may ever contain them.
const std::string kAccess = "AT-secret-0123456789";
const std::string kRefresh = "RT-secret-abcdef";
const std::string kClientSecret = "s:e+c%r t";
const std::string kClientId = "a:b+c%d e";

// A URL the test knows to be valid, as the config would have checked it.
EndpointUrl checked_url(const std::string& text) {
    auto u = EndpointUrl::parse(text);
    REQUIRE(u.has_value());
    return std::move(*u);
}

std::vector<std::string> texts(const std::vector<EndpointUrl>& urls) {
    std::vector<std::string> out;
    for (const auto& u : urls)
        out.push_back(u.text());
    return out;
}

CredentialConfig credential(Grant grant, AuthMethod method) {
    CredentialConfig c;
    c.name = "storage";
    c.token_endpoint = checked_url("https://id.example.com/token");
    c.grant = grant;
    c.client_id = kClientId;
    c.client_secret = Secret(kClientSecret);
    c.auth_method = method;
    c.scope = "files.write read";
    c.extra_params = {{"audience", "storage"}, {"resource", "https://x/y"}};
    c.timeout = 20s;
    c.ca_file = "/etc/ca.pem";
    return c;
}

HttpResponse reply(long status, std::string body, std::string content_type = "application/json") {
    HttpResponse r;
    r.outcome = HttpResponse::Outcome::response;
    r.status = status;
    r.body = std::move(body);
    r.content_type = std::move(content_type);
    return r;
}

HttpRequest token_request(const CredentialConfig& c, const Secret* refresh_token) {
    auto r = build_token_request(c, checked_url("https://id.example.com/token"), refresh_token);
    REQUIRE(r.has_value());
    return std::move(*r);
}

bool has_header(const HttpRequest& r, const std::string& h) {
    return std::find(r.headers.begin(), r.headers.end(), h) != r.headers.end();
}

bool contains(std::string_view hay, std::string_view needle) {
    return hay.find(needle) != std::string_view::npos;
}

bool one_printable_line(const std::string& s) {
    return !s.empty() &&
           std::all_of(s.begin(), s.end(), [](char c) { return c >= 0x20 && c <= 0x7e; });
}

const std::string kGood =
    R"({"access_token":")" + kAccess + R"(","token_type":"Bearer","expires_in":3600})";

}  // namespace

TEST_CASE("form_urlencode follows RFC 6749 Appendix B") {
    CHECK(form_urlencode("") == "");
    CHECK(form_urlencode("AZaz09-._*") == "AZaz09-._*");
    CHECK(form_urlencode("a b") == "a+b");
    CHECK(form_urlencode("~") == "%7E");  // RFC 3986 unreserved, but not in the form set
    CHECK(form_urlencode("a:b+c%d e") == "a%3Ab%2Bc%25d+e");
    CHECK(form_urlencode("/?&=#") == "%2F%3F%26%3D%23");
    CHECK(form_urlencode(std::string("\x00\xff\n", 3)) == "%00%FF%0A");
    CHECK(form_urlencode("\xc3\xa9") == "%C3%A9");  // UTF-8 bytes one by one
}

TEST_CASE("base64 matches RFC 4648 vectors") {
    CHECK(base64_encode("") == "");
    CHECK(base64_encode("f") == "Zg==");
    CHECK(base64_encode("fo") == "Zm8=");
    CHECK(base64_encode("foo") == "Zm9v");
    CHECK(base64_encode("foob") == "Zm9vYg==");
    CHECK(base64_encode("fooba") == "Zm9vYmE=");
    CHECK(base64_encode("foobar") == "Zm9vYmFy");
    CHECK(base64_encode(std::string("\xff\xfe\x00", 3)) == "//4A");
}

TEST_CASE("Basic authorization, form-encoded and raw") {
    const Secret secret(kClientSecret);
    // base64("a%3Ab%2Bc%25d+e:s%3Ae%2Bc%25r+t")
    CHECK(basic_authorization(kClientId, secret, BasicEncoding::form).reveal() ==
          "Basic YSUzQWIlMkJjJTI1ZCtlOnMlM0FlJTJCYyUyNXIrdA==");
    // base64("a:b+c%d e:s:e+c%r t")
    CHECK(basic_authorization(kClientId, secret, BasicEncoding::raw).reveal() ==
          "Basic YTpiK2MlZCBlOnM6ZStjJXIgdA==");
}

TEST_CASE("token request: refresh_token grant, client_secret_basic") {
    const auto c = credential(Grant::refresh_token, AuthMethod::client_secret_basic);
    const Secret rt(kRefresh);
    const HttpRequest r = token_request(c, &rt);
    CHECK(r.url.text() == "https://id.example.com/token");
    CHECK(r.method == "POST");
    CHECK(has_header(r, "Content-Type: application/x-www-form-urlencoded"));
    CHECK(has_header(r, "Accept: application/json"));
    CHECK(r.body.reveal() ==
          "grant_type=refresh_token&refresh_token=RT-secret-abcdef&scope=files.write+read"
          "&audience=storage&resource=https%3A%2F%2Fx%2Fy");
    CHECK(r.authorization.reveal() == "Basic YSUzQWIlMkJjJTI1ZCtlOnMlM0FlJTJCYyUyNXIrdA==");
    // The client's credentials travel only in the header.
    CHECK_FALSE(contains(r.body.reveal(), "client_secret"));
    CHECK_FALSE(contains(r.body.reveal(), "client_id"));
    CHECK_FALSE(contains(r.body.reveal(), "s%3Ae"));
    CHECK(r.timeout == 20s);
    CHECK(r.connect_timeout == 10s);
    CHECK(r.ca_file == "/etc/ca.pem");
    for (const auto& h : r.headers) {
        CHECK_FALSE(contains(h, kRefresh));
        CHECK_FALSE(contains(h, "Basic"));
    }
}

TEST_CASE("token request: refresh_token grant, client_secret_post") {
    auto c = credential(Grant::refresh_token, AuthMethod::client_secret_post);
    c.timeout = 4s;
    c.ca_file.reset();
    const Secret rt(kRefresh);
    const HttpRequest r = token_request(c, &rt);
    CHECK(r.body.reveal() ==
          "grant_type=refresh_token&refresh_token=RT-secret-abcdef&scope=files.write+read"
          "&audience=storage&resource=https%3A%2F%2Fx%2Fy"
          "&client_id=a%3Ab%2Bc%25d+e&client_secret=s%3Ae%2Bc%25r+t");
    CHECK(r.authorization.empty());
    CHECK(r.timeout == 4s);
    CHECK(r.connect_timeout == 4s);  // never longer than the whole request
    CHECK(r.ca_file.empty());
}

TEST_CASE("token request: client_credentials grant, both auth methods") {
    const Secret rt(kRefresh);
    SECTION("basic") {
        auto c = credential(Grant::client_credentials, AuthMethod::client_secret_basic);
        c.scope.reset();
        c.extra_params.clear();
        const HttpRequest r = token_request(c, &rt);
        CHECK(r.body.reveal() == "grant_type=client_credentials");  // no refresh token
        CHECK(r.authorization.reveal() == "Basic YSUzQWIlMkJjJTI1ZCtlOnMlM0FlJTJCYyUyNXIrdA==");
    }
    SECTION("basic, raw encoding") {
        auto c = credential(Grant::client_credentials, AuthMethod::client_secret_basic);
        c.basic_encoding = BasicEncoding::raw;
        const HttpRequest r = token_request(c, nullptr);
        CHECK(r.body.reveal() ==
              "grant_type=client_credentials&scope=files.write+read&audience=storage"
              "&resource=https%3A%2F%2Fx%2Fy");
        CHECK(r.authorization.reveal() == "Basic YTpiK2MlZCBlOnM6ZStjJXIgdA==");
    }
    SECTION("post") {
        auto c = credential(Grant::client_credentials, AuthMethod::client_secret_post);
        const HttpRequest r = token_request(c, &rt);
        CHECK(r.body.reveal() ==
              "grant_type=client_credentials&scope=files.write+read&audience=storage"
              "&resource=https%3A%2F%2Fx%2Fy&client_id=a%3Ab%2Bc%25d+e"
              "&client_secret=s%3Ae%2Bc%25r+t");
        CHECK_FALSE(contains(r.body.reveal(), kRefresh));
        CHECK(r.authorization.empty());
    }
}

TEST_CASE("token request: refresh_token grant without a refresh token is refused") {
    const auto c = credential(Grant::refresh_token, AuthMethod::client_secret_basic);
    const auto r = build_token_request(c, checked_url("https://id.example.com/token"), nullptr);
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().kind == RefresherError::Kind::runtime);
    CHECK(contains(r.error().message, "needs a refresh token"));
}

TEST_CASE("discovery URLs: OpenID appends, RFC 8414 inserts") {
    using V = std::vector<std::string>;
    CHECK(texts(discovery_urls(checked_url("https://id.example.com"))) ==
          V{"https://id.example.com/.well-known/openid-configuration",
            "https://id.example.com/.well-known/oauth-authorization-server"});
    CHECK(texts(discovery_urls(checked_url("https://id.example.com/"))) ==
          texts(discovery_urls(checked_url("https://id.example.com"))));
    CHECK(texts(discovery_urls(checked_url("https://h:8443/tenant"))) ==
          V{"https://h:8443/tenant/.well-known/openid-configuration",
            "https://h:8443/.well-known/oauth-authorization-server/tenant"});
    CHECK(texts(discovery_urls(checked_url("https://h/realms/a/b/"))) ==
          V{"https://h/realms/a/b/.well-known/openid-configuration",
            "https://h/.well-known/oauth-authorization-server/realms/a/b"});
    for (const auto& u : texts(discovery_urls(checked_url("https://h/tenant/"))))
        CHECK_FALSE(contains(u.substr(8), "//"));
}

TEST_CASE("discovery request is a credential-free GET") {
    const auto c = credential(Grant::refresh_token, AuthMethod::client_secret_basic);
    const HttpRequest r = build_discovery_request(
        checked_url("https://id.example.com/.well-known/openid-configuration"), c);
    CHECK(r.method == "GET");
    CHECK(r.url.text() == "https://id.example.com/.well-known/openid-configuration");
    CHECK(r.body.empty());
    CHECK(r.authorization.empty());
    CHECK(has_header(r, "Accept: application/json"));
    CHECK(r.timeout == 20s);
    CHECK(r.connect_timeout == 10s);
    CHECK(r.ca_file == "/etc/ca.pem");
}

TEST_CASE("parse_discovery") {
    const EndpointUrl issuer = checked_url("https://id.example.com");
    SECTION("token_endpoint of a matching issuer") {
        auto r = parse_discovery(
            reply(200, R"({"issuer":"https://id.example.com","token_endpoint":)"
                       R"("https://id.example.com/oauth/token","jwks_uri":"x","extra":[1,{}]})"),
            issuer);
        REQUIRE(r.has_value());
        CHECK(r->text() == "https://id.example.com/oauth/token");
    }
    SECTION("one trailing slash is ignored on either side; issuer may be absent") {
        CHECK(parse_discovery(reply(200, R"({"issuer":"https://id.example.com/",)"
                                         R"("token_endpoint":"https://id.example.com/t"})"),
                              issuer)
                  .has_value());
        CHECK(parse_discovery(reply(200, R"({"issuer":"https://id.example.com",)"
                                         R"("token_endpoint":"https://id.example.com/t"})"),
                              checked_url("https://id.example.com/"))
                  .has_value());
        CHECK(parse_discovery(reply(200, R"({"token_endpoint":"http://127.0.0.1:8080/t"})"), issuer)
                  .has_value());
    }
    const auto not_sent = [] {
        HttpResponse r;
        r.outcome = HttpResponse::Outcome::not_sent;
        r.transport_error = "Could not resolve host: id.example.com";
        return r;
    }();
    const auto too_large = [] {
        auto r = reply(200, "{");
        r.too_large = true;
        return r;
    }();
    const std::vector<std::pair<HttpResponse, std::string>> bad = {
        {not_sent, "not sent: Could not resolve host"},
        {too_large, "larger than 1 MiB"},
        {reply(404, "Not Found", "text/plain"), "HTTP 404"},
        {reply(200, "<html>login</html>", "text/html"), "HTML page"},
        {reply(200, "  <!DOCTYPE html>", "application/json"), "HTML page"},
        {reply(200, R"({"token_endpoint":)"), "not valid JSON"},
        {reply(200, "[]"), "not a JSON object"},
        {reply(200, R"({"issuer":"https://evil.example.com","token_endpoint":"https://e/t"})"),
         "names issuer \"https://evil.example.com\""},
        {reply(200, R"({"issuer":"https://id.example.com//","token_endpoint":"https://e/t"})"),
         "names issuer"},
        {reply(200, R"({"issuer":7,"token_endpoint":"https://e/t"})"), "issuer is not a string"},
        {reply(200, R"({"issuer":"https://id.example.com"})"), "no token_endpoint"},
        {reply(200, R"({"token_endpoint":null})"), "no token_endpoint"},
        {reply(200, R"({"token_endpoint":["https://e/t"]})"), "token_endpoint is not a string"},
        {reply(200, R"({"token_endpoint":"http://id.example.com/token"})"), "loopback"},
        {reply(200, R"({"token_endpoint":"/token"})"), "not absolute"},
        {reply(200, R"({"token_endpoint":"https://e/t","token_endpoint":"https://f/t"})"),
         "more than once"},
    };
    for (const auto& [resp, fragment] : bad) {
        INFO(fragment);
        const auto r = parse_discovery(resp, issuer);
        REQUIRE_FALSE(r.has_value());
        CHECK(contains(r.error().message, fragment));
        CHECK(one_printable_line(r.error().message));
        CHECK(r.error().kind == RefresherError::Kind::runtime);
    }
}

TEST_CASE("token response: success") {
    SECTION("the usual") {
        const auto o = parse_token_response(reply(200, kGood), 3600s, 8192);
        REQUIRE(o.ok());
        CHECK(o.success().access_token.reveal() == kAccess);
        CHECK(o.success().token_type == "Bearer");
        CHECK(o.success().expires_in == 3600s);
        CHECK_FALSE(o.success().refresh_token.has_value());
        CHECK_FALSE(o.success().scope.has_value());
    }
    SECTION("rotation, scope, unknown members, bearer in any case") {
        const auto o = parse_token_response(
            reply(200,
                  R"({"access_token":")" + kAccess +
                      R"(","token_type":"bEaReR",)"
                      R"("expires_in":"120","refresh_token":")" +
                      kRefresh +
                      R"(","scope":"files.write read","id_token":"x.y.z",)"
                      R"("nested":{"a":[1,2,{"b":null}]},"not_before_policy":0})",
                  "application/json; charset=utf-8"),
            3600s, 8192);
        REQUIRE(o.ok());
        CHECK(o.success().token_type == "Bearer");
        CHECK(o.success().expires_in == 120s);  // a string of digits
        REQUIRE(o.success().refresh_token.has_value());
        CHECK(o.success().refresh_token->reveal() == kRefresh);
        CHECK(o.success().scope == "files.write read");
    }
    SECTION("other token types are kept as sent") {
        const auto o = parse_token_response(
            reply(200, R"({"access_token":"x","token_type":"DPoP","expires_in":60})"), 3600s, 8192);
        REQUIRE(o.ok());
        CHECK(o.success().token_type == "DPoP");
    }
    SECTION("expires_in absent or null means the default lifetime") {
        const auto a = parse_token_response(
            reply(200, R"({"access_token":"x","token_type":"bearer"})"), 900s, 8192);
        REQUIRE(a.ok());
        CHECK(a.success().expires_in == 900s);
        const auto b = parse_token_response(
            reply(200, R"({"access_token":"x","token_type":"bearer","expires_in":null,)"
                       R"("refresh_token":null,"scope":null})"),
            900s, 8192);
        REQUIRE(b.ok());
        CHECK(b.success().expires_in == 900s);
        CHECK_FALSE(b.success().refresh_token.has_value());
        CHECK_FALSE(b.success().scope.has_value());
    }
    SECTION("expires_in is capped at ten years and fractions are floored") {
        for (const char* big :
             {"99999999999", "18446744073709551615", "1e300", "\"999999999999999999999999999\""}) {
            INFO(big);
            const auto o = parse_token_response(
                reply(200, std::string(R"({"access_token":"x","token_type":"Bearer",)") +
                               R"("expires_in":)" + big + "}"),
                3600s, 8192);
            REQUIRE(o.ok());
            CHECK(o.success().expires_in == kMaxLifetime);
        }
        const auto f = parse_token_response(
            reply(200, R"({"access_token":"x","token_type":"Bearer","expires_in":59.9})"), 3600s,
            8192);
        REQUIRE(f.ok());
        CHECK(f.success().expires_in == 59s);
    }
    SECTION("a token of exactly max_token_bytes fits") {
        const std::string token(64, 'a');
        const auto o = parse_token_response(
            reply(200, R"({"access_token":")" + token + R"(","token_type":"Bearer"})"), 3600s, 64);
        REQUIRE(o.ok());
        CHECK(o.success().access_token.size() == 64);
    }
    SECTION("a 200 carrying an error code but also a token is a success") {
        const auto o = parse_token_response(
            reply(200, R"({"access_token":"x","token_type":"Bearer","error":"warn"})"), 3600s,
            8192);
        CHECK(o.ok());
    }
}

namespace {

struct BadCase {
    const char* what;
    HttpResponse response;
    FailureKind kind;
    std::string fragment;
    std::string oauth_error = {};
};

HttpResponse transport(HttpResponse::Outcome outcome, std::string error) {
    HttpResponse r;
    r.outcome = outcome;
    r.transport_error = std::move(error);
    return r;
}

std::string with(const std::string& members) {
    return R"({"access_token":")" + kAccess + R"(","token_type":"Bearer",)" + members + "}";
}

}  // namespace

TEST_CASE("token response: a table of odd and bad answers") {
    using K = FailureKind;
    const std::string rt = R"("refresh_token":")" + kRefresh + R"(")";
    auto big = reply(200, kGood);
    big.too_large = true;
    const std::vector<BadCase> cases = {
        {"resolve failure", transport(HttpResponse::Outcome::not_sent, "Could not resolve host"),
         K::retry, "not sent: Could not resolve host"},
        {"timeout after sending",
         transport(HttpResponse::Outcome::sent_no_response, "Operation timed out"), K::retry,
         "no response: Operation timed out"},
        {"body over 1 MiB", big, K::retry, "response body larger than 1 MiB"},
        {"HTML by content type", reply(200, kGood, "text/html; charset=utf-8"), K::retry,
         "HTML page"},
        {"HTML by body", reply(200, "\n<html><body>Sign in</body></html>"), K::retry, "HTML page"},
        {"empty 200", reply(200, ""), K::retry, "empty body"},
        {"truncated JSON", reply(200, kGood.substr(0, kGood.size() - 10)), K::retry,
         "not valid JSON"},
        {"trailing garbage", reply(200, kGood + "x"), K::retry, "not valid JSON"},
        {"invalid UTF-8", reply(200, with("\"x\":\"\xff\xfe\"")), K::retry, "not valid JSON"},
        {"form-encoded instead of JSON",
         reply(200, "access_token=" + kAccess + "&token_type=bearer",
               "application/x-www-form-urlencoded"),
         K::retry, "content-type application/x-www-form-urlencoded"},
        {"JSON array", reply(200, "[" + kGood + "]"), K::retry, "not a JSON object"},
        {"deeply nested", reply(200, std::string(200000, '[')), K::retry, "not valid JSON"},
        {"no access_token", reply(200, R"({"token_type":"Bearer"})"), K::retry, "no access_token"},
        {"access_token a number", reply(200, R"({"access_token":12,"token_type":"Bearer"})"),
         K::retry, "access_token is not a string"},
        {"empty access_token", reply(200, R"({"access_token":"","token_type":"Bearer"})"), K::retry,
         "access_token is empty"},
        {"access_token with CRLF",
         reply(200, R"({"access_token":")" + kAccess + R"(\r\nX-Evil: 1","token_type":"Bearer"})"),
         K::retry, "access_token contains characters other than printable ASCII"},
        {"access_token twice", reply(200, with(R"("access_token":"AT-secret-other")")), K::retry,
         "access_token appears more than once"},
        {"no token_type", reply(200, R"({"access_token":")" + kAccess + R"("})"), K::retry,
         "no token_type"},
        {"token_type not a string", reply(200, R"({"access_token":"x","token_type":true})"),
         K::retry, "token_type is not a string"},
        {"token_type empty", reply(200, R"({"access_token":"x","token_type":""})"), K::retry,
         "token_type is empty"},
        {"token_type with a space", reply(200, R"({"access_token":"x","token_type":"Bearer x"})"),
         K::retry, "token_type contains characters"},
        {"token_type too long",
         reply(200, R"({"access_token":"x","token_type":")" + std::string(33, 'T') + "\"}"),
         K::retry, "token_type is longer than 32"},
        {"expires_in zero", reply(200, with(R"("expires_in":0)")), K::retry,
         "expires_in is zero or negative"},
        {"expires_in negative", reply(200, with(R"("expires_in":-5)")), K::retry,
         "expires_in is zero or negative"},
        {"expires_in fraction below one", reply(200, with(R"("expires_in":0.5)")), K::retry,
         "expires_in is less than one second"},
        {"expires_in words", reply(200, with(R"("expires_in":"soon")")), K::retry,
         "expires_in is a string that is not a number"},
        {"expires_in signed string", reply(200, with(R"("expires_in":"-60")")), K::retry,
         "expires_in is a string that is not a number"},
        {"expires_in boolean", reply(200, with(R"("expires_in":true)")), K::retry,
         "expires_in is not a number"},
        {"refresh_token empty", reply(200, with(R"("refresh_token":"")")), K::retry,
         "refresh_token is present but not a non-empty string"},
        {"refresh_token a number", reply(200, with(R"("refresh_token":42)")), K::retry,
         "refresh_token is present but not a non-empty string"},
        {"refresh_token with a newline",
         reply(200, with(R"("refresh_token":")" + kRefresh + R"(\n")")), K::retry,
         "refresh_token contains characters"},
        {"scope an array", reply(200, with(R"("scope":["a","b"])")), K::retry,
         "scope is not a string"},
        {"scope too long", reply(200, with(R"("scope":")" + std::string(2000, 's') + "\"")),
         K::retry, "scope is 2000 bytes, more than 1024"},
        {"201 instead of 200", reply(201, kGood), K::retry, "HTTP 201 from the token endpoint"},
        {"redirect", reply(302, "", "text/html"), K::retry, "HTTP 302 redirect"},
        {"status 0", reply(0, ""), K::retry, "unexpected HTTP 0"},
        {"bare 500", reply(500, ""), K::retry, "HTTP 500 from the token endpoint"},
        {"503 saying invalid_grant is still the server's trouble",
         reply(503, R"({"error":"invalid_grant"})"), K::retry, "HTTP 503 invalid_grant",
         "invalid_grant"},
        {"429", reply(429, R"({"error":"slow_down"})"), K::retry, "HTTP 429 slow_down",
         "slow_down"},
        {"408", reply(408, "", "text/plain"), K::retry, "HTTP 408"},
        {"invalid_grant",
         reply(400, R"({"error":"invalid_grant","error_description":"Token is not active"})"),
         K::reauth,
         "HTTP 400 invalid_grant: the refresh token was rejected: run tokenshm login --config "
         "FILE NAME, or put a new refresh token in refresh_token_file and send SIGHUP (server: "
         "\"Token is not active\")",
         "invalid_grant"},
        {"invalid_client on 401", reply(401, R"({"error":"invalid_client"})"), K::reauth,
         "the client id or secret was rejected: check client_id and client_secret_file/env",
         "invalid_client"},
        {"unauthorized_client", reply(400, R"({"error":"unauthorized_client"})"), K::reauth,
         "HTTP 400 unauthorized_client: the client may not use this grant", "unauthorized_client"},
        {"invalid_grant in a 200", reply(200, R"({"error":"invalid_grant"})"), K::reauth,
         "HTTP 200 invalid_grant", "invalid_grant"},
        {"invalid_scope",
         reply(400, R"({"error":"invalid_scope","error_description":"files.write"})"), K::retry,
         "HTTP 400 invalid_scope (server: \"files.write\")", "invalid_scope"},
        {"unsupported_grant_type", reply(400, R"({"error":"unsupported_grant_type"})"), K::retry,
         "HTTP 400 unsupported_grant_type", "unsupported_grant_type"},
        {"invalid_request", reply(400, R"({"error":"invalid_request"})"), K::retry,
         "HTTP 400 invalid_request", "invalid_request"},
        {"error code not a string", reply(400, R"({"error":["invalid_grant"]})"), K::retry,
         "HTTP 400 from the token endpoint without an OAuth error code"},
        {"bare 400", reply(400, "", "text/plain"), K::retry,
         "HTTP 400 from the token endpoint without an OAuth error code"},
        {"bare 401", reply(401, ""), K::reauth,
         "the server refused the client (HTTP 401) without saying why"},
        {"403 HTML page", reply(403, "<html>Forbidden</html>", "text/html"), K::reauth,
         "the server refused the client (HTTP 403) without saying why"},
        {"401 JSON without error", reply(401, R"({"message":"nope"})"), K::reauth,
         "(HTTP 401) without saying why"},
        {"404", reply(404, "Not Found", "text/plain"), K::retry, "check token_endpoint"},
        {"418", reply(418, "teapot", "text/plain"), K::retry, "HTTP 418"},
    };
    REQUIRE(cases.size() >= 20);
    for (const auto& c : cases) {
        INFO(c.what);
        const auto o = parse_token_response(c.response, 3600s, 8192);
        REQUIRE_FALSE(o.ok());
        const TokenFailure& f = o.failure();
        CHECK(f.kind == c.kind);
        CHECK(contains(f.message, c.fragment));
        CHECK(f.oauth_error == c.oauth_error);
        CHECK(one_printable_line(f.message));
        // Never the tokens from the body, nor any slice of them.
        CHECK_FALSE(contains(f.message, "-secret-"));
        CHECK_FALSE(contains(f.message, kAccess));
        CHECK_FALSE(contains(f.message, kRefresh));
    }
}

TEST_CASE("token response: a token over max_token_bytes names sizes, not the token") {
    const std::string token = "AT-secret-" + std::string(90, 'x');
    const auto o = parse_token_response(
        reply(200, R"({"access_token":")" + token + R"(","token_type":"Bearer"})"), 3600s, 64);
    REQUIRE_FALSE(o.ok());
    CHECK(o.failure().kind == FailureKind::retry);
    CHECK(o.failure().message ==
          "HTTP 200 token response: access_token is 100 bytes, more than max_token_bytes (64)");
}

TEST_CASE("token response: error_description is sanitised and cut") {
    const std::string desc = "line one\\nline two\\u0007 " + std::string(300, 'd');
    const auto o = parse_token_response(
        reply(400, R"({"error":"invalid\u0001scope","error_description":")" + desc + "\"}"), 3600s,
        8192);
    REQUIRE_FALSE(o.ok());
    const auto& m = o.failure().message;
    CHECK(one_printable_line(m));
    CHECK(o.failure().oauth_error == "invalid?scope");
    CHECK(contains(m, "(server: \"line one?line two? ddd"));
    CHECK(contains(m, std::string(kMaxDescription - 19, 'd') + "...\")"));
    CHECK_FALSE(contains(m, std::string(kMaxDescription - 18, 'd')));
    CHECK(o.failure().status == 400);
}

TEST_CASE("Retry-After: delta-seconds") {
    const std::int64_t now = 784111777000;
    CHECK(parse_retry_after("120", now) == std::chrono::milliseconds(120000));
    CHECK(parse_retry_after("0", now) == std::chrono::milliseconds(0));
    CHECK(parse_retry_after(" 5\t", now) == std::chrono::milliseconds(5000));
    const auto huge = parse_retry_after("99999999999999999999999999", now);
    REQUIRE(huge.has_value());
    CHECK(*huge >= std::chrono::hours(24 * 365));
}

TEST_CASE("Retry-After: the three HTTP-date forms") {
    // Sun, 06 Nov 1994 08:49:37 GMT is Unix 784111777; "now" is 37 s earlier.
    const std::int64_t now = 784111740000;
    CHECK(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now) == 37000ms);
    CHECK(parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", now) == 37000ms);
    CHECK(parse_retry_after("Sun Nov  6 08:49:37 1994", now) == 37000ms);
    CHECK(parse_retry_after("Sun Nov 16 08:49:37 1994", now) == 37000ms + 10 * 24h);
    CHECK(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now + 500) == 36500ms);
    // Leap years are real: 29 Feb 1996 exists.
    CHECK(parse_retry_after("Thu, 29 Feb 1996 00:00:00 GMT", now).has_value());
}

TEST_CASE("Retry-After: a date in the past means now") {
    const std::int64_t now = 784111777000 + 3600000;
    CHECK(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now) == 0ms);
    CHECK(parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", now) == 0ms);
    CHECK(parse_retry_after("Sun Nov  6 08:49:37 1994", now) == 0ms);
}

TEST_CASE("Retry-After: RFC 850 two-digit years") {
    const std::int64_t now_2026 = 1780272000000;  // 2026-06-01T00:00:00Z
    // 2027 is less than 50 years ahead: the future.
    CHECK(parse_retry_after("Friday, 01-Jan-27 00:00:00 GMT", now_2026) ==
          std::chrono::milliseconds(1798761600000 - now_2026));
    // 2099 would be more than 50 years ahead: it means 1999, the past.
    CHECK(parse_retry_after("Friday, 01-Jan-99 00:00:10 GMT", now_2026) == 0ms);
}

TEST_CASE("Retry-After: garbage is ignored") {
    const std::int64_t now = 784111740000;
    for (const char* g : {"",
                          "  ",
                          "soon",
                          "-5",
                          "1.5",
                          "+5",
                          "5s",
                          "0x10",
                          "Sun, 06 Nov 1994 08:49:37 UTC",
                          "Sun, 06 Nov 1994 08:49:37 gmt ",
                          "Sun, 31 Feb 1994 08:49:37 GMT",
                          "Sun, 29 Feb 1995 08:49:37 GMT",
                          "Sun, 06 Nov 1994 24:00:00 GMT",
                          "Sun, 06 Nov 1994 08:60:00 GMT",
                          "Sun, 06 Nox 1994 08:49:37 GMT",
                          "Xyz, 06 Nov 1994 08:49:37 GMT",
                          "Sun, 6 Nov 1994 08:49:37 GMT",
                          "Sun, 06 Nov 94 08:49:37 GMT",
                          "Sun, 06 Nov 1994 08-49-37 GMT",
                          "Funday, 06-Nov-94 08:49:37 GMT",
                          "Sunday, 06-Nov-1994 08:49:37 GMT",
                          "Sun Nov 6 08:49:37 1994",
                          "Sun Nov  6 08:49:37 94",
                          "Sun Nov 00 08:49:37 1994",
                          "Sun, 06 Nov 1994 08:49:37 GMT trailing"}) {
        INFO(g);
        CHECK_FALSE(parse_retry_after(g, now).has_value());
    }
}

TEST_CASE("token response: only a b64token access_token and a one-token token_type are published") {
    const auto parse = [](const std::string& at, const std::string& tt) {
        return parse_token_response(
            reply(200, R"({"access_token":")" + at + R"(","token_type":")" + tt + R"("})"), 3600s,
            8192);
    };
    SECTION("every b64token character, and '=' padding, is accepted") {
        const auto o = parse("AZaz09-._~+/x==", "DPoP");
        REQUIRE(o.ok());
        CHECK(o.success().access_token.reveal() == "AZaz09-._~+/x==");
        CHECK(o.success().token_type == "DPoP");
        CHECK(parse("x", "N_A!#$%&'*+-.^_`|~").ok());  // every tchar
    }
    const std::vector<std::pair<const char*, std::string>> bad_tokens = {
        {"a space", "AT-secret abc"},
        {"CRLF", R"(AT-secret\r\nX-Evil: 1)"},
        {"NUL", R"(AT-secret\u0000abc)"},
        {"UTF-8", "AT-secret-\xc3\xa9t\xc3\xa9"},
        {"a tab", R"(AT-secret\tabc)"},
        {"'=' before the end", "AT-secret=abc"},
        {"only '='", "=="},
        {"a double quote", R"(AT-secret\"abc)"},
        {"a comma", "AT-secret,abc"},
    };
    for (const auto& [what, token] : bad_tokens) {
        INFO("access_token with " << what);
        const auto o = parse(token, "Bearer");
        REQUIRE_FALSE(o.ok());
        CHECK(o.failure().kind == FailureKind::retry);
        CHECK(contains(o.failure().message, "access_token "));
        CHECK(one_printable_line(o.failure().message));
        CHECK_FALSE(contains(o.failure().message, "secret"));
    }
    const std::vector<std::pair<const char*, std::string>> bad_types = {
        {"a space", "Bearer x"},
        {"CRLF", R"(Bearer\r\nX-Evil: 1)"},
        {"NUL", R"(Bear\u0000er)"},
        {"UTF-8",
         "B\xc3\xa9"
         "arer"},
        {"a comma", "Bearer,DPoP"},
        {"a slash", "Bearer/1"},
        {"parentheses", "(Bearer)"},
        {"a colon", "Bearer:"},
    };
    for (const auto& [what, type] : bad_types) {
        INFO("token_type with " << what);
        const auto o = parse("AT-ok", type);
        REQUIRE_FALSE(o.ok());
        CHECK(o.failure().kind == FailureKind::retry);
        CHECK(contains(o.failure().message, "token_type contains characters other than"));
        CHECK(one_printable_line(o.failure().message));
    }
}

TEST_CASE("base64url has no padding and the URL-safe alphabet (RFC 4648 §5)") {
    CHECK(base64url_encode("") == "");
    CHECK(base64url_encode("f") == "Zg");
    CHECK(base64url_encode("fo") == "Zm8");
    CHECK(base64url_encode("\xfb\xff") == "-_8");
}

TEST_CASE("code exchange request: code, redirect_uri, verifier and the client's auth") {
    const Secret code("CODE-abc/def");
    const Secret verifier("verifier-xyz");
    SECTION("client_secret_basic: credentials only in the header") {
        const auto c = credential(Grant::refresh_token, AuthMethod::client_secret_basic);
        const HttpRequest r =
            build_code_exchange_request(c, checked_url("https://id.example.com/token"), code,
                                        "http://127.0.0.1:8765/cb", verifier);
        CHECK(r.method == "POST");
        CHECK(r.body.reveal() ==
              "grant_type=authorization_code&code=CODE-abc%2Fdef"
              "&redirect_uri=http%3A%2F%2F127.0.0.1%3A8765%2Fcb&code_verifier=verifier-xyz"
              "&audience=storage&resource=https%3A%2F%2Fx%2Fy");
        CHECK(r.authorization.reveal() == "Basic YSUzQWIlMkJjJTI1ZCtlOnMlM0FlJTJCYyUyNXIrdA==");
        CHECK_FALSE(contains(r.body.reveal(), "scope="));
    }
    SECTION("client_secret_post: credentials in the body") {
        const auto c = credential(Grant::refresh_token, AuthMethod::client_secret_post);
        const HttpRequest r =
            build_code_exchange_request(c, checked_url("https://id.example.com/token"), code,
                                        "http://127.0.0.1:1/cb", verifier);
        CHECK(r.authorization.empty());
        CHECK(contains(r.body.reveal(), "&client_id="));
        CHECK(contains(r.body.reveal(), "&client_secret="));
    }
}

TEST_CASE("parse_authorization_server") {
    const EndpointUrl issuer = checked_url("https://id.example.com");
    const std::string both = R"("issuer":"https://id.example.com","token_endpoint":)"
                             R"("https://id.example.com/token","authorization_endpoint":)"
                             R"("https://id.example.com/auth")";
    SECTION("both endpoints, scopes, RFC 9207") {
        auto r = parse_authorization_server(
            reply(200, "{" + both +
                           R"(,"scopes_supported":["openid","offline_access",3],)"
                           R"("code_challenge_methods_supported":["S256"],)"
                           R"("authorization_response_iss_parameter_supported":true})"),
            issuer);
        REQUIRE(r.has_value());
        CHECK(r->authorization_endpoint.text() == "https://id.example.com/auth");
        CHECK(r->token_endpoint.text() == "https://id.example.com/token");
        CHECK(r->scopes_supported == std::vector<std::string>{"openid", "offline_access"});
        CHECK(r->iss_parameter);
    }
    SECTION("no authorization_endpoint") {
        auto r = parse_authorization_server(
            reply(200, R"({"token_endpoint":"https://id.example.com/token"})"), issuer);
        REQUIRE_FALSE(r.has_value());
        CHECK(contains(r.error().message, "no authorization_endpoint"));
    }
    SECTION("PKCE methods listed without S256") {
        auto r = parse_authorization_server(
            reply(200, "{" + both + R"(,"code_challenge_methods_supported":["plain"]})"), issuer);
        REQUIRE_FALSE(r.has_value());
        CHECK(contains(r.error().message, "S256"));
    }
    SECTION("another issuer's metadata") {
        auto r = parse_authorization_server(
            reply(200, R"({"issuer":"https://evil.example.com","token_endpoint":)"
                       R"("https://id.example.com/token","authorization_endpoint":)"
                       R"("https://id.example.com/auth"})"),
            issuer);
        REQUIRE_FALSE(r.has_value());
        CHECK(contains(r.error().message, "not the configured"));
    }
    SECTION("an authorization_endpoint in clear text to another host") {
        auto r = parse_authorization_server(
            reply(200, R"({"token_endpoint":"https://id.example.com/token",)"
                       R"("authorization_endpoint":"http://id.example.com/auth"})"),
            issuer);
        REQUIRE_FALSE(r.has_value());
        CHECK(contains(r.error().message, "authorization_endpoint"));
    }
}
