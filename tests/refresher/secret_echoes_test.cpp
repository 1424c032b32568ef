// Secrets a server quotes back, in any of the encodings the request carried
// them in, never reach a message: verbatim, form-encoded, Base64 (alone, as
// the Basic header's "id:secret", and inside a longer Base64 text at each of
// the three alignments).
#include "secret_echoes.hpp"
#include "oauth.hpp"

#include <catch2/catch.hpp>

#include <string>
#include <string_view>
#include <vector>

using namespace tokenshm::refresher;
using namespace std::chrono_literals;

namespace {

// '+', '/', '~' and a space: each encoding spells them differently.
const std::string kSecret = "S3cr+et/Value~ 42";
const std::string kClientId = "uploader";
const std::string kRefresh = "RT-" + std::string(200, 'r') + "-end";

std::string url_safe(std::string s) {
    for (char& c : s)
        c = c == '+' ? '-' : c == '/' ? '_' : c;
    return s;
}

std::string unpadded(std::string s) {
    while (!s.empty() && s.back() == '=')
        s.pop_back();
    return s;
}

SecretEchoes client_echoes() {
    SecretEchoes e;
    e.add_basic_pair(kClientId, kSecret);
    return e;
}

struct Echo {
    std::string what;
    std::string text;       // as the server would quote it
    std::size_t max_left;   // characters that may remain before [redacted]
    std::size_t max_right;  // and after it
};

std::vector<Echo> echoes_of_the_secret() {
    const std::string form = form_urlencode(kSecret);
    std::string lower = form;
    for (std::size_t i = 0; i + 2 < lower.size(); ++i) {
        if (lower[i] != '%') continue;
        for (std::size_t k = i + 1; k <= i + 2; ++k)
            if (lower[k] >= 'A' && lower[k] <= 'F') lower[k] = static_cast<char>(lower[k] + 32);
    }
    std::vector<Echo> out = {
        {"verbatim", kSecret, 0, 0},
        {"form-encoded as our body", form, 0, 0},
        {"form-encoded, lowercase hex", lower, 0, 0},
        {"Base64 of the secret", base64_encode(kSecret), 0, 0},
        {"URL-safe Base64 of the secret, unpadded", url_safe(unpadded(base64_encode(kSecret))), 0,
         0},
        {"Base64 of the form-encoded secret", base64_encode(form), 0, 0},
        {"Basic pair, form-encoded", base64_encode(form_urlencode(kClientId) + ":" + form), 0, 0},
        {"Basic pair, raw", base64_encode(kClientId + ":" + kSecret), 0, 0},
        {"Basic pair, URL-safe", url_safe(base64_encode(kClientId + ":" + kSecret)), 0, 0},
        {"Basic header line", "Basic " + base64_encode(kClientId + ":" + kSecret), 6, 0},
    };
    // Inside a longer Base64 text, at offsets 0, 1 and 2 modulo 3: only the
    // characters that mix a neighbour's bits with the secret's may remain.
    for (const std::string prefix : {"", "x", "xy", "xyz", "id=7&secret="}) {
        const std::string b64 = base64_encode(prefix + kSecret + "&more=1");
        // Characters that carry a bit of the prefix or of what follows.
        const std::size_t left = (prefix.size() * 8 + 5) / 6;
        const std::size_t right = b64.size() - (prefix.size() + kSecret.size()) * 8 / 6;
        out.push_back(
            {"embedded after " + std::to_string(prefix.size()) + " bytes", b64, left, right});
        out.push_back({"embedded, URL-safe, after " + std::to_string(prefix.size()) + " bytes",
                       url_safe(b64), left, right});
    }
    return out;
}

}  // namespace

TEST_CASE("a secret echoed verbatim, form-encoded or in Base64 is redacted") {
    const SecretEchoes echoes = client_echoes();
    for (const Echo& e : echoes_of_the_secret()) {
        INFO(e.what);
        const std::string before = "server says: <";
        const std::string after = "> is wrong";
        const std::string out = echoes.redact(before + e.text + after);
        const auto open = out.find('<');
        const auto close = out.rfind('>');
        REQUIRE(open != std::string::npos);
        REQUIRE(close != std::string::npos);
        CHECK(out.substr(0, open + 1) == before);
        CHECK(out.substr(close) == after);
        const std::string inner = out.substr(open + 1, close - open - 1);
        const auto mark = inner.find(Secret::redacted);
        REQUIRE(mark != std::string::npos);
        const std::string left = inner.substr(0, mark);
        const std::string right = inner.substr(mark + Secret::redacted.size());
        CHECK(left.size() <= e.max_left);
        CHECK(right.size() <= e.max_right);
        // What remains is no slice of the secret's own encoding.
        CHECK(right.find(Secret::redacted) == std::string::npos);
    }
}

TEST_CASE("the remains of an embedded Base64 echo are only the neighbours' characters") {
    const SecretEchoes echoes = client_echoes();
    const std::string b64 = base64_encode("xy" + kSecret + "&more=1");
    const std::string out = echoes.redact(b64);
    // "xy" is 16 bits: 2 whole characters, the 3rd mixes in the secret.
    CHECK(out.substr(0, 2) == b64.substr(0, 2));
    CHECK(out.find(Secret::redacted) <= 3);
    // "&more=1" and its padding: at most the characters of the suffix remain.
    const std::string tail = out.substr(out.find(Secret::redacted) + Secret::redacted.size());
    CHECK(tail.size() <= base64_encode("&more=1").size() + 1);
}

TEST_CASE("short secrets and unrelated text are left alone") {
    SecretEchoes e;
    e.add("abc");  // shorter than kMinSecret
    CHECK(e.patterns().empty());
    e.add(kSecret);
    CHECK(e.redact("invalid_grant: token expired") == "invalid_grant: token expired");
    for (std::size_t i = 1; i < e.patterns().size(); ++i)
        CHECK(e.patterns()[i - 1].size() >= e.patterns()[i].size());  // longest first
}

TEST_CASE("a long echo is redacted before error_description is cut, not after") {
    SecretEchoes echoes = client_echoes();
    echoes.add(kRefresh);
    const RedactEchoes redact = [&echoes](std::string s) { return echoes.redact(std::move(s)); };
    // The server echoes our whole request body: the refresh token straddles
    // the point where the description is cut (kMaxDescription characters).
    const std::string body = "grant_type=refresh_token&refresh_token=" + form_urlencode(kRefresh) +
                             "&client_secret=" + form_urlencode(kSecret);
    REQUIRE(body.size() > kMaxDescription);
    HttpResponse r;
    r.outcome = HttpResponse::Outcome::response;
    r.status = 400;
    r.content_type = "application/json";
    r.body = R"({"error":"invalid_grant","error_description":"bad request: )" + body + R"("})";
    const auto o = parse_token_response(r, 3600s, 8192, redact);
    REQUIRE_FALSE(o.ok());
    const std::string& m = o.failure().message;
    CHECK(m.find("refresh_token=[redacted]") != std::string::npos);
    for (std::size_t i = 0; i + 8 <= kRefresh.size(); ++i) {
        const std::string slice = kRefresh.substr(i, 8);
        if (m.find(slice) != std::string::npos) FAIL_CHECK("a slice of the refresh token survived");
    }
    SECTION("the error code is redacted too") {
        r.body = R"({"error":")" + kSecret + R"("})";
        const auto c = parse_token_response(r, 3600s, 8192, redact);
        REQUIRE_FALSE(c.ok());
        CHECK(c.failure().message.find("S3cr") == std::string::npos);
    }
}
