// EndpointUrl: the one rule for URLs the refresher sends credentials to. The
// cases are those the config, discovery and the transport each checked on
// their own before the rule had one home.
#include "endpoint_url.hpp"

#include <catch2/catch.hpp>

#include <string>
#include <utility>
#include <vector>

using tokenshm::refresher::EndpointUrl;
using tokenshm::refresher::is_loopback_host;

namespace {

bool contains(const std::string& hay, const std::string& needle) {
    return hay.find(needle) != std::string::npos;
}

std::string refusal(const std::string& url, EndpointUrl::Role role = EndpointUrl::Role::endpoint) {
    const auto r = EndpointUrl::parse(url, role);
    REQUIRE_FALSE(r.has_value());
    CHECK_FALSE(contains(r.error().message, "\n"));
    return r.error().message;
}

}  // namespace

TEST_CASE("https anywhere and plain http on loopback are accepted as written", "[endpoint_url]") {
    for (const char* ok :
         {"https://id.example.com/token", "HTTPS://id.example.com:8443/t?x=1",
          "http://127.0.0.1:8080/token", "http://127.200.3.4/token", "http://localhost/token",
          "http://LOCALHOST:9", "http://[::1]:9000/token", "https://[2001:db8::1]:8443/token",
          "http://[::ffff:127.0.0.1]/t"}) {
        INFO(ok);
        const auto u = EndpointUrl::parse(ok);
        REQUIRE(u.has_value());
        CHECK(u->text() == ok);
    }
}

TEST_CASE("scheme, host and port are read once, normalised", "[endpoint_url]") {
    const auto a = EndpointUrl::parse("HTTPS://ID.Example.com:8443/t?x=1");
    REQUIRE(a.has_value());
    CHECK(a->scheme() == "https");
    CHECK(a->host() == "id.example.com");
    CHECK(a->port() == 8443);
    CHECK_FALSE(a->loopback());

    const auto b = EndpointUrl::parse("http://[::1]/token");
    REQUIRE(b.has_value());
    CHECK(b->scheme() == "http");
    CHECK(b->host() == "[::1]");
    CHECK(b->port() == 80);
    CHECK(b->loopback());

    const auto c = EndpointUrl::parse("https://id.example.com");
    REQUIRE(c.has_value());
    CHECK(c->port() == 443);
}

TEST_CASE("every refused URL gets a reason", "[endpoint_url]") {
    const std::vector<std::pair<std::string, std::string>> bad = {
        {"", "empty"},
        {"id.example.com/token", "not absolute"},
        {"/token", "not absolute"},
        {"::not a url::", "expected an https:// URL"},
        {"ftp://id.example.com", R"(expected an https:// URL, found "ftp://id.example.com")"},
        {"file:///etc/passwd", "expected an https:// URL"},
        {"http://id.example.com/token", "plain http:// is allowed only for a loopback host"},
        {"http://10.0.0.1/token", "loopback"},
        {"http://128.0.0.1/token", "loopback"},
        {"http://127.0.0.1.evil.com/token", "loopback"},
        {"http://localhost.evil.example/t", "loopback"},
        {"http://127.0.0.256/token", "loopback"},
        {"http://2130706433/token", "loopback"},  // libcurl would read 127.0.0.1: not our spelling
        {"http://127.1/token", "loopback"},
        {"http://[::2]/token", "loopback"},
        {"https://user:pw@id.example.com/token", "user info"},
        {"http://127.0.0.1@10.0.0.1/token", "user info"},
        {"https://id.example.com/token#frag", "fragment"},
        {"https://id.example.com/to ken", "spaces"},
        {"https://id.example.com\r\n/token", "control"},
        {"https://id.example.com/caf\xc3\xa9", "non-ASCII"},
        {"https:///token", "has no host"},
        {"https://id.example.com:/t", "empty port"},
        {"https://id.example.com:70000/t", "invalid port"},
        {"https://id.example.com:0/t", "invalid port"},
        {"https://id.example.com:8x/t", "invalid port"},
        {"https://[::1/t", "unterminated"},
        {"https://[zz::1]/t", "invalid [IPv6] host"},
        {"https://[::1]x/t", "junk after the [IPv6] host"},
        {"https://ex%41mple.com/t", "invalid host"},
        {"https://a:b:c/t", "invalid port"},
    };
    for (const auto& [url, why] : bad) {
        INFO(url);
        CHECK_THAT(refusal(url), Catch::Contains(why));
    }
}

TEST_CASE("an issuer may not have a query; an endpoint may", "[endpoint_url]") {
    CHECK(EndpointUrl::parse("https://id.example.com/t?tenant=a").has_value());
    CHECK_THAT(refusal("https://id.example.com/?tenant=a", EndpointUrl::Role::issuer),
               Catch::Contains("must not have a query"));
}

TEST_CASE("a refusal never shows user info or a query", "[endpoint_url]") {
    const std::string q = refusal("https://id.example.test:99999/t?code=k3y-s3cr3t");
    CHECK_FALSE(contains(q, "k3y-s3cr3t"));
    CHECK(contains(q, "query not shown"));
    const std::string u = refusal("https://id.example.test:99999/a@k3y-s3cr3t");
    CHECK_FALSE(contains(u, "k3y-s3cr3t"));
}

TEST_CASE("loopback hosts", "[endpoint_url]") {
    CHECK(is_loopback_host("127.0.0.1"));
    CHECK(is_loopback_host("127.255.3.4"));
    CHECK(is_loopback_host("localhost"));
    CHECK(is_loopback_host("LocalHost"));
    CHECK(is_loopback_host("[::1]"));
    CHECK(is_loopback_host("[::ffff:127.0.0.1]"));
    CHECK_FALSE(is_loopback_host("128.0.0.1"));
    CHECK_FALSE(is_loopback_host("10.0.0.1"));
    CHECK_FALSE(is_loopback_host("[::2]"));
    CHECK_FALSE(is_loopback_host("::1"));  // unbracketed is not how a URL spells it
    CHECK_FALSE(is_loopback_host("localhost.example.com"));
    CHECK_FALSE(is_loopback_host("127.0.0.1.example.com"));
    CHECK_FALSE(is_loopback_host(""));
}
