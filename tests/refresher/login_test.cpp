// The pure parts of `tokenshm login` (refresher/login.hpp, redirect_uri.hpp);
// the flow itself is tested end to end in tests/command/test_login.py.
#include "login.hpp"
#include "redirect_uri.hpp"

#include <catch2/catch.hpp>

#include <string>
#include <vector>

using namespace tokenshm::refresher;
using namespace tokenshm::refresher::login_detail;

TEST_CASE("redirect_uri: only http://127.0.0.1:PORT/PATH", "[login]") {
    auto ok = RedirectUri::parse("http://127.0.0.1:8765/callback");
    REQUIRE(ok.has_value());
    CHECK(ok->port == 8765);
    CHECK(ok->path == "/callback");
    CHECK(ok->text(8765) == "http://127.0.0.1:8765/callback");
    CHECK(RedirectUri{}.text(4000) == "http://127.0.0.1:4000/callback");
    for (const char* bad :
         {"https://127.0.0.1:8765/callback", "http://localhost:8765/callback",
          "http://127.0.0.2:8765/cb", "http://127.0.0.1/callback", "http://127.0.0.1:0/cb",
          "http://127.0.0.1:65536/cb", "http://127.0.0.1:8765", "http://127.0.0.1:8765/cb?x=1",
          "http://127.0.0.1:8765/cb#f", "http://127.0.0.1:+80/cb", "http://127.0.0.1:8765/c b"}) {
        INFO(bad);
        CHECK_FALSE(RedirectUri::parse(bad).has_value());
    }
}

TEST_CASE("PKCE S256 challenge is base64url(SHA-256(verifier))", "[login]") {
    // Computed independently: base64.urlsafe_b64encode(hashlib.sha256(v).digest()).rstrip(b"=")
    CHECK(s256_challenge("dBjftJeZ4CVP-mJ92IvwiA8yM2lfcD4zyZG9Y1OS8qQ") ==
          "-cesZA6lQRP0iIr1h0hFTh_47SbiWQ-y8ugahB6-rD0");
    CHECK(s256_challenge("x").size() == 43);
}

TEST_CASE("the redirect's query", "[login]") {
    SECTION("code, state and iss, form-decoded") {
        auto cb = parse_callback_query("code=a%2Fb+c&state=S-1&iss=http%3A%2F%2F127.0.0.1%3A9");
        REQUIRE(cb.has_value());
        CHECK(cb->code == Secret("a/b c"));
        CHECK(cb->state == "S-1");
        CHECK(cb->iss == std::optional<std::string>("http://127.0.0.1:9"));
        CHECK(cb->error.empty());
    }
    SECTION("an error answer, its description made printable") {
        auto cb = parse_callback_query("error=access_denied&error_description=End-User%0Aaborted");
        REQUIRE(cb.has_value());
        CHECK(cb->error == "access_denied");
        CHECK(cb->error_description == "End-User?aborted");
        CHECK(cb->code.empty());
    }
    SECTION("a parameter twice, or a broken escape, is refused") {
        CHECK_FALSE(parse_callback_query("state=a&state=b").has_value());
        CHECK_FALSE(parse_callback_query("code=a%2").has_value());
        CHECK_FALSE(parse_callback_query("code=%zz").has_value());
    }
}

TEST_CASE("login scope asks for offline_access where the server has it", "[login]") {
    const std::vector<std::string> oidc = {"openid", "offline_access", "files.write"};
    CHECK(login_scope(std::nullopt, oidc) == "openid offline_access");
    CHECK(login_scope(std::string("files.write"), oidc) == "files.write openid offline_access");
    CHECK(login_scope(std::string("openid offline_access"), oidc) == "openid offline_access");
    CHECK(login_scope(std::string("files.write"), {}) == "files.write");
    CHECK(login_scope(std::nullopt, {}) == "");
}
