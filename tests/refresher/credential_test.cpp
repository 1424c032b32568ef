// The per-credential state machine with the time passed in and responses
// handed back: schedule, failure policy, rotation and persistence, discovery.
#include "credential.hpp"
#include "log.hpp"

#include <catch2/catch.hpp>

#include <string>
#include <vector>

using namespace tokenshm::refresher;
using tokenshm::shm::RecordState;

namespace {

// A URL the test knows to be valid, as the config would have checked it.
EndpointUrl checked_url(const std::string& text) {
    auto u = EndpointUrl::parse(text);
    REQUIRE(u.has_value());
    return std::move(*u);
}

CredentialConfig base_config() {
    CredentialConfig c;
    c.name = "storage";
    c.token_endpoint = checked_url("https://id.example.test/token");
    c.grant = Grant::refresh_token;
    c.client_id = "uploader";
    c.client_secret = Secret("client-secret-test");
    c.default_lifetime = std::chrono::seconds(3600);
    c.refresh_before = std::chrono::seconds(300);
    c.min_interval = std::chrono::seconds(5);
    c.min_backoff = std::chrono::seconds(1);
    c.max_backoff = std::chrono::seconds(300);
    return c;
}

HttpResponse json_response(long status, std::string body) {
    HttpResponse r;
    r.outcome = HttpResponse::Outcome::response;
    r.status = status;
    r.content_type = "application/json";
    r.body = std::move(body);
    return r;
}

HttpResponse token_response(const std::string& at, int expires_in,
                            const std::string& rt = std::string()) {
    std::string b = R"({"access_token":")" + at + R"(","token_type":"bearer","expires_in":)" +
                    std::to_string(expires_in);
    if (!rt.empty()) b += R"(,"refresh_token":")" + rt + '"';
    return json_response(200, b + "}");
}

// Both clocks at `ms`: the tests of the schedule read one timeline; those of
// clock steps build a Now whose wall time differs.
Now at(std::int64_t ms) {
    return Now{ms, ms};
}

struct Harness {
    std::vector<std::string> persisted;  // refresh tokens saved, in order
    bool persist_fails = false;
    int record_changes = 0;  // calls of the credential's RecordChanged
    CredentialRefresher cred;

    explicit Harness(CredentialConfig c = base_config(), double jitter = 0.5)
        : cred(
              std::move(c), 8192, Secret("rt-test-1"),
              [this](std::string_view, const Secret& t,
                     const Rotation&) -> tokenshm::Expected<Done, RefresherError> {
                  if (persist_fails)
                      return tokenshm::Unexpected{RefresherError::runtime_error("disk full")};
                  persisted.emplace_back(t.reveal());
                  return Done{};
              },
              [jitter] { return jitter; }, [this] { ++record_changes; }) {}

    // A first refresh succeeds (token "at", 100 s); the next one is answered
    // invalid_grant. Returns when that second request was made.
    std::int64_t refresh_then_reject() {
        REQUIRE(cred.poll(at(0)));
        cred.on_response(token_response("at", 100), at(0));
        const std::int64_t t = cred.published().next_refresh_ms;
        REQUIRE(cred.poll(at(t)));
        cred.on_response(json_response(400, R"({"error":"invalid_grant"})"), at(t));
        return t;
    }

    bool body_has(const HttpRequest& r, const std::string& s) const {
        return std::string(r.body.reveal()).find(s) != std::string::npos;
    }
};

struct QuietLogs {
    QuietLogs() {
        set_log_sink([](std::string_view) {});
    }
    ~QuietLogs() { set_log_sink({}); }
};

}  // namespace

TEST_CASE("a fresh credential refreshes at once and publishes a valid token") {
    QuietLogs quiet;
    Harness h;
    CHECK(h.cred.published().state == RecordState::empty);
    auto req = h.cred.poll(at(1'000));
    REQUIRE(req);
    CHECK(req->url.text() == "https://id.example.test/token");
    CHECK(h.body_has(*req, "grant_type=refresh_token"));
    CHECK(h.body_has(*req, "refresh_token=rt-test-1"));
    CHECK_FALSE(h.cred.poll(at(1'000)));  // one request at a time

    // Expiry counts from when the request was sent, not when the answer came.
    h.cred.on_response(token_response("at-test-1", 100, "rt-test-2"), at(3'000));
    const Published& p = h.cred.published();
    CHECK(p.state == RecordState::valid);
    CHECK(p.access_token.reveal() == "at-test-1");
    CHECK(p.token_type == "Bearer");
    CHECK(p.issued_at_ms == 1'000);
    CHECK(p.expires_at_ms == 101'000);
    CHECK(p.failures == 0);
    CHECK(h.persisted == std::vector<std::string>{"rt-test-2"});
    // 80 % of 100 s is earlier than 300 s before expiry (which is already past).
    CHECK(p.next_refresh_ms <= 1'000 + 80'000);
    CHECK(p.next_refresh_ms >= 1'000 + 5'000);

    CHECK_FALSE(h.cred.poll(at(p.next_refresh_ms - 1)));
    auto next = h.cred.poll(at(p.next_refresh_ms));
    REQUIRE(next);
    CHECK(h.body_has(*next, "refresh_token=rt-test-2"));  // the successor, never the spent one
    CHECK_FALSE(h.body_has(*next, "rt-test-1"));
}

TEST_CASE("refresh_before wins when it comes before 80 % of the lifetime") {
    QuietLogs quiet;
    Harness h;
    REQUIRE(h.cred.poll(at(0)));
    // 1000 s: 80 % is at 800 s, 300 s before expiry is at 700 s: the earlier wins.
    h.cred.on_response(token_response("at", 1000), at(10));
    const auto& p = h.cred.published();
    CHECK(p.next_refresh_ms <= 700'000);
    CHECK(p.next_refresh_ms >= 700'000 - 70'000);  // jitter moves it earlier by <= 10 %
}

TEST_CASE("a response without refresh_token keeps the current one") {
    QuietLogs quiet;
    Harness h;
    REQUIRE(h.cred.poll(at(0)));
    h.cred.on_response(token_response("at", 100), at(10));
    CHECK(h.persisted.empty());
    auto req = h.cred.poll(at(h.cred.published().next_refresh_ms));
    REQUIRE(req);
    CHECK(h.body_has(*req, "refresh_token=rt-test-1"));
}

TEST_CASE("failures keep serving the token as stale, back off, then expire") {
    QuietLogs quiet;
    Harness h;
    REQUIRE(h.cred.poll(at(0)));
    h.cred.on_response(token_response("at-test", 100), at(0));
    std::int64_t now = h.cred.published().next_refresh_ms;
    REQUIRE(h.cred.poll(at(now)));
    h.cred.on_response(json_response(503, ""), at(now));
    CHECK(h.cred.published().state == RecordState::stale);
    CHECK(h.cred.published().access_token.reveal() == "at-test");
    CHECK(h.cred.published().failures == 1);
    CHECK_THAT(h.cred.published().last_error, Catch::Contains("503"));
    const std::int64_t retry_at = h.cred.published().next_refresh_ms;
    CHECK(retry_at >= now + 1'000);
    CHECK_FALSE(h.cred.poll(at(retry_at - 1)));

    // Keep failing until past expiry: the state turns expired by itself.
    for (int i = 0; i < 50 && now < 100'000; ++i) {
        now = std::max(now + 1, h.cred.next_action_ms());
        if (h.cred.poll(at(now))) h.cred.on_response(json_response(500, "oops"), at(now));
    }
    CHECK(now >= 100'000);
    CHECK(h.cred.published().state == RecordState::expired);
    CHECK(h.cred.published().failures >= 2);

    // Recovery.
    now = h.cred.next_action_ms();
    REQUIRE(h.cred.poll(at(now)));
    h.cred.on_response(token_response("at-test-new", 100), at(now));
    CHECK(h.cred.published().state == RecordState::valid);
    CHECK(h.cred.published().failures == 0);
    CHECK(h.cred.published().last_error.empty());
}

TEST_CASE("Retry-After is honoured") {
    QuietLogs quiet;
    Harness h;
    REQUIRE(h.cred.poll(at(0)));
    auto r = json_response(429, "");
    r.retry_after = "30";
    h.cred.on_response(r, at(0));
    CHECK(h.cred.published().next_refresh_ms >= 30'000);
    CHECK_FALSE(h.cred.poll(at(29'999)));
    CHECK(h.cred.poll(at(h.cred.published().next_refresh_ms)));
}

TEST_CASE("Retry-After asking for a day waits max_backoff_s, and the log says so") {
    std::vector<std::string> lines;
    set_log_sink([&lines](std::string_view l) { lines.emplace_back(l); });
    Harness h;  // max_backoff 300 s
    REQUIRE(h.cred.poll(at(0)));
    auto r = json_response(429, "");
    r.retry_after = "86400";
    h.cred.on_response(r, at(0));
    set_log_sink({});
    CHECK(h.cred.published().next_refresh_ms == 300'000);
    CHECK_FALSE(h.cred.poll(at(299'999)));
    CHECK(h.cred.poll(at(300'000)));
    bool told = false;
    for (const auto& l : lines)
        told = told || (l.find(" warn ") != std::string::npos &&
                        l.find("86400s (Retry-After)") != std::string::npos &&
                        l.find("max_backoff_s=300s") != std::string::npos);
    CHECK(told);
}

TEST_CASE("a rejected grant stops all requests: reauth") {
    QuietLogs quiet;
    Harness h;
    const std::int64_t t = h.refresh_then_reject();
    CHECK(h.cred.published().state == RecordState::reauth);
    CHECK_THAT(h.cred.published().last_error, Catch::Contains("invalid_grant"));
    // The token is still served until it expires; no request is ever made again.
    CHECK(h.cred.published().access_token.reveal() == "at");
    for (std::int64_t now = t; now < t + 24 * 3'600'000; now += 60'000)
        REQUIRE_FALSE(h.cred.poll(at(now)));
    // A person fixed it and reloaded: refresh_soon allows requests again.
    h.cred.refresh_soon(at(t + 24 * 3'600'000));
    CHECK(h.cred.poll(at(t + 24 * 3'600'000)));
}

TEST_CASE("a request that timed out after it was sent is retried with the same refresh token") {
    QuietLogs quiet;
    Harness h;
    REQUIRE(h.cred.poll(at(0)));
    HttpResponse lost;
    lost.outcome = HttpResponse::Outcome::sent_no_response;
    lost.transport_error = "id.example.test:443: Operation timed out";
    h.cred.on_response(lost, at(20'000));
    CHECK_THAT(h.cred.published().last_error, Catch::Contains("timed out"));
    auto again = h.cred.poll(at(h.cred.next_action_ms()));
    REQUIRE(again);
    CHECK(h.body_has(*again, "refresh_token=rt-test-1"));
}

TEST_CASE("a successor that cannot be saved is kept in memory, used, and saved later") {
    QuietLogs quiet;
    Harness h;
    h.persist_fails = true;
    REQUIRE(h.cred.poll(at(0)));
    h.cred.on_response(token_response("at", 100, "rt-test-2"), at(0));
    CHECK(h.cred.published().state == RecordState::valid);
    CHECK_THAT(h.cred.published().last_error, Catch::Contains("not yet saved"));
    CHECK(h.persisted.empty());
    // The persist is retried without waiting for the next refresh.
    CHECK(h.cred.next_action_ms() <= 1'000);
    h.persist_fails = false;
    (void)h.cred.poll(at(1'000));
    CHECK(h.persisted == std::vector<std::string>{"rt-test-2"});
    auto req = h.cred.poll(at(h.cred.published().next_refresh_ms));
    REQUIRE(req);
    CHECK(h.body_has(*req, "refresh_token=rt-test-2"));
}

TEST_CASE("discovery finds the token endpoint, trying both well-known documents") {
    QuietLogs quiet;
    CredentialConfig c = base_config();
    c.token_endpoint.reset();
    c.issuer = checked_url("https://id.example.test");
    Harness h(c);
    auto d1 = h.cred.poll(at(0));
    REQUIRE(d1);
    CHECK(d1->method == "GET");
    CHECK(d1->url.text() == "https://id.example.test/.well-known/openid-configuration");
    h.cred.on_response(json_response(404, ""), at(10));
    auto d2 = h.cred.poll(at(10));
    REQUIRE(d2);
    CHECK(d2->url.text() == "https://id.example.test/.well-known/oauth-authorization-server");
    h.cred.on_response(json_response(200, R"({"issuer":"https://id.example.test",
        "token_endpoint":"https://id.example.test/oauth/token"})"),
                       at(20));
    auto t = h.cred.poll(at(20));
    REQUIRE(t);
    CHECK(t->url.text() == "https://id.example.test/oauth/token");
    CHECK(t->method == "POST");

    // After repeated failures the endpoint is looked up again.
    std::int64_t now = 20;
    h.cred.on_response(json_response(500, ""), at(now));
    bool rediscovered = false;
    for (int i = 0; i < 6 && !rediscovered; ++i) {
        now = h.cred.next_action_ms();
        auto r = h.cred.poll(at(now));
        REQUIRE(r);
        if (r->method == "GET")
            rediscovered = true;
        else
            h.cred.on_response(json_response(500, ""), at(now));
    }
    CHECK(rediscovered);
}

TEST_CASE("no hot loop: an hour of errors stays within the backoff bounds") {
    QuietLogs quiet;
    for (double jitter : {0.0, 0.5, 0.999}) {
        Harness h(base_config(), jitter);
        std::int64_t now = 0;
        std::int64_t last = -1'000'000;
        int requests = 0;
        while (now < 3'600'000) {
            if (h.cred.poll(at(now))) {
                ++requests;
                REQUIRE(now - last >= 1'000);  // min_backoff
                last = now;
                h.cred.on_response(json_response(500, ""), at(now));
            }
            now = std::max(now + 1, h.cred.next_action_ms());
        }
        INFO("jitter " << jitter << ": " << requests << " requests in an hour");
        CHECK(requests <= 3600);  // never more than one per min_backoff, whatever the dice say
        CHECK(requests >= 12);    // and it keeps trying (max_backoff 300 s)
        if (jitter >= 0.5) CHECK(requests <= 60);  // typical dice: the window grows
    }
}

TEST_CASE("a restarted refresher keeps serving and refreshes on the old schedule") {
    QuietLogs quiet;
    Harness h;
    Published prev;
    prev.state = RecordState::valid;
    prev.access_token = Secret("at-prev");
    prev.token_type = "Bearer";
    prev.issued_at_ms = 0;
    prev.expires_at_ms = 100'000;
    prev.next_refresh_ms = 80'000;
    h.cred.resume(prev, at(10'000));
    CHECK(h.cred.published().access_token.reveal() == "at-prev");
    CHECK(h.cred.published().state == RecordState::valid);
    CHECK_FALSE(h.cred.poll(at(79'999)));
    CHECK(h.cred.poll(at(80'000)));

    Harness expired;
    prev.expires_at_ms = 5'000;
    expired.cred.resume(prev, at(10'000));
    CHECK(expired.cred.published().state == RecordState::empty);
    CHECK(expired.cred.poll(at(10'000)));
}

TEST_CASE("client_credentials needs no refresh token") {
    QuietLogs quiet;
    CredentialConfig c = base_config();
    c.grant = Grant::client_credentials;
    c.auth_method = AuthMethod::client_secret_post;
    CredentialRefresher cred(
        c, 8192, std::nullopt,
        [](std::string_view, const Secret&,
           const Rotation&) -> tokenshm::Expected<Done, RefresherError> { return Done{}; },
        [] { return 0.5; });
    auto req = cred.poll(at(0));
    REQUIRE(req);
    CHECK(std::string(req->body.reveal()).find("grant_type=client_credentials") !=
          std::string::npos);
    CHECK(req->authorization.empty());
}

TEST_CASE("reauth with a token that then expires leaves nothing to do: no spin") {
    QuietLogs quiet;
    Harness h;
    (void)h.refresh_then_reject();
    REQUIRE(h.cred.published().state == RecordState::reauth);
    const std::int64_t later = 200'000;  // past expiry
    CHECK_FALSE(h.cred.poll(at(later)));
    CHECK(h.cred.next_action_ms() > later);
}

TEST_CASE("a rotated refresh token is kept even when the rest of the answer is unusable") {
    QuietLogs quiet;
    Harness h;
    REQUIRE(h.cred.poll(at(0)));
    const std::string huge(9000, 'a');  // larger than the slot (8192)
    h.cred.on_response(token_response(huge, 100, "rt-test-2"), at(10));
    CHECK(h.cred.published().state == RecordState::empty);
    CHECK_THAT(h.cred.published().last_error, Catch::Contains("max_token_bytes"));
    CHECK(h.persisted == std::vector<std::string>{"rt-test-2"});
    auto again = h.cred.poll(at(h.cred.next_action_ms()));
    REQUIRE(again);
    CHECK(h.body_has(*again, "refresh_token=rt-test-2"));
    CHECK_FALSE(h.body_has(*again, "rt-test-1"));
}

TEST_CASE("secrets a server quotes back are redacted from last_error") {
    QuietLogs quiet;
    Harness h;
    REQUIRE(h.cred.poll(at(0)));
    h.cred.on_response(
        json_response(
            400,
            R"J({"error":"invalid_grant","error_description":"Invalid refresh token: rt-test-1 (client-secret-test)"})J"),
        at(10));
    const std::string& e = h.cred.published().last_error;
    CHECK(e.find("rt-test-1") == std::string::npos);
    CHECK(e.find("client-secret-test") == std::string::npos);
    CHECK_THAT(e, Catch::Contains("[redacted]"));
}

TEST_CASE("the credential itself says when its record changed, and only then") {
    QuietLogs quiet;
    Harness h;
    REQUIRE(h.cred.poll(at(0)));
    CHECK(h.record_changes == 0);  // a request sent changes nothing readers see yet
    h.cred.on_response(token_response("at", 100), at(0));
    CHECK(h.record_changes == 1);
    CHECK(h.cred.published().state == RecordState::valid);
    CHECK_FALSE(h.cred.poll(at(1'000)));  // nothing due: no request, no change
    CHECK(h.record_changes == 1);
    const std::int64_t t = h.cred.published().next_refresh_ms;
    REQUIRE(h.cred.poll(at(t)));
    h.cred.on_response(json_response(503, "{}"), at(t));
    CHECK(h.record_changes == 2);
    CHECK(h.cred.published().state == RecordState::stale);
    (void)h.cred.poll(at(100'000));  // the token expired meanwhile
    CHECK(h.cred.published().state == RecordState::expired);
    CHECK(h.record_changes == 3);
}

TEST_CASE("a step of the wall clock moves no deadline and keeps the published expiry honest") {
    QuietLogs quiet;
    constexpr std::int64_t kUnix = 1'700'000'000'000;  // wall time at monotonic 0
    constexpr std::int64_t kHour = 3'600'000;
    for (const std::int64_t step : {kHour, -kHour}) {
        INFO("wall clock stepped by " << step << " ms");
        Harness h;
        REQUIRE(h.cred.poll(Now{0, kUnix}));
        h.cred.on_response(token_response("at", 3600), Now{200, kUnix + 200});
        const std::int64_t due = h.cred.next_action_ms();  // monotonic
        REQUIRE(due > 60'000);
        CHECK(h.cred.published().expires_at_ms == kUnix + kHour);
        CHECK(h.cred.published().next_refresh_ms == kUnix + due);

        // The wall clock jumps a minute later; monotonic time goes on.
        const Now stepped{60'000, kUnix + 60'000 + step};
        const int changes = h.record_changes;
        CHECK_FALSE(h.cred.poll(stepped));       // no request storm on a step forward
        CHECK(h.record_changes == changes + 1);  // republished in the new wall time
        const Published& p = h.cred.published();
        CHECK(p.state == RecordState::valid);
        // A reader's wall clock says what is left of the lifetime, as before the step.
        CHECK(p.expires_at_ms - stepped.unix_ms == kHour - 60'000);
        CHECK(p.next_refresh_ms - stepped.unix_ms == due - 60'000);
        CHECK(p.issued_at_ms == kUnix + step);

        // Neither early (step forward) nor late (step back): the refresh comes on its
        // monotonic deadline, and the expiry check runs on it too.
        CHECK_FALSE(h.cred.poll(Now{due - 1, kUnix + due - 1 + step}));
        CHECK(h.cred.published().state == RecordState::valid);
        auto req = h.cred.poll(Now{due, kUnix + due + step});
        REQUIRE(req);
        h.cred.on_response(token_response("at-2", 3600), Now{due, kUnix + due + step});
        CHECK(h.cred.published().expires_at_ms == kUnix + due + step + kHour);
    }
}

TEST_CASE("a slewing wall clock (under a second) republishes nothing") {
    QuietLogs quiet;
    Harness h;
    REQUIRE(h.cred.poll(Now{0, 1'000'000}));
    h.cred.on_response(token_response("at", 3600), Now{0, 1'000'000});
    const int changes = h.record_changes;
    const Published before = h.cred.published();
    CHECK_FALSE(h.cred.poll(Now{10'000, 1'010'999}));  // 999 ms ahead of the monotonic clock
    CHECK(h.record_changes == changes);
    CHECK(h.cred.published().expires_at_ms == before.expires_at_ms);
}

TEST_CASE("backoff runs on the monotonic clock: a wall step forward brings no retry early") {
    QuietLogs quiet;
    Harness h;
    REQUIRE(h.cred.poll(Now{0, 5'000'000}));
    h.cred.on_response(json_response(503, ""), Now{0, 5'000'000});
    const std::int64_t retry_at = h.cred.next_action_ms();
    REQUIRE(retry_at >= 1'000);
    // A day forward on the wall clock: the backoff has not run out.
    CHECK_FALSE(h.cred.poll(Now{retry_at - 1, 5'000'000 + retry_at - 1 + 86'400'000}));
    CHECK(h.cred.poll(Now{retry_at, 5'000'000 + retry_at + 86'400'000}));
}

TEST_CASE("Retry-After as an HTTP-date counts from the wall clock, the wait from the monotonic") {
    QuietLogs quiet;
    Harness h;
    // 1994-11-06 08:49:07 UTC on the wall clock; monotonic 42 s since boot.
    const Now now{42'000, 784'111'747'000};
    REQUIRE(h.cred.poll(now));
    auto r = json_response(503, "");
    r.retry_after = "Sun, 06 Nov 1994 08:49:37 GMT";  // 30 s later
    h.cred.on_response(r, now);
    CHECK(h.cred.next_action_ms() == 42'000 + 30'000);
    CHECK(h.cred.published().next_refresh_ms == now.unix_ms + 30'000);
    CHECK_FALSE(h.cred.poll(Now{71'999, now.unix_ms + 29'999}));
    CHECK(h.cred.poll(Now{72'000, now.unix_ms + 30'000}));
}

TEST_CASE("a resumed record's Unix times become monotonic deadlines") {
    QuietLogs quiet;
    Harness h;
    constexpr std::int64_t kUnix = 1'700'000'000'000;
    Published prev;
    prev.state = RecordState::valid;
    prev.access_token = Secret("at-prev");
    prev.token_type = "Bearer";
    prev.issued_at_ms = kUnix - 10'000;
    prev.expires_at_ms = kUnix + 90'000;
    prev.next_refresh_ms = kUnix + 70'000;
    const Now now{5'000, kUnix};  // this refresher starts 5 s after boot
    REQUIRE(h.cred.resume(prev, now));
    CHECK(h.cred.next_action_ms() == 75'000);
    CHECK(h.cred.published().next_refresh_ms == kUnix + 70'000);
    CHECK_FALSE(h.cred.poll(Now{74'999, kUnix + 69'999}));
    CHECK(h.cred.poll(Now{75'000, kUnix + 70'000}));

    Harness gone;
    prev.expires_at_ms = kUnix;  // expired as this refresher starts
    CHECK_FALSE(gone.cred.resume(prev, now));
    CHECK(gone.cred.published().state == RecordState::empty);
}

TEST_CASE("a Retry-After past the token's expiry is honoured, and the record says so") {
    QuietLogs quiet;
    Harness h;  // max_backoff 300 s
    REQUIRE(h.cred.poll(at(0)));
    h.cred.on_response(token_response("at", 200), at(0));  // expires at 200 s
    const std::int64_t t = 100'000;
    REQUIRE(h.cred.poll(at(t)));
    auto r = json_response(503, "");
    r.retry_after = "240";  // until 340 s: after the token expires
    h.cred.on_response(r, at(t));
    const Published& p = h.cred.published();
    CHECK(p.state == RecordState::stale);
    CHECK(p.next_refresh_ms == t + 240'000);
    CHECK_THAT(p.last_error, Catch::StartsWith("the server asked to wait 240s (Retry-After); the "
                                               "current token expires in 100s, before that; "));
    CHECK_THAT(p.last_error, Catch::Contains("503"));
    CHECK_FALSE(h.cred.poll(at(t + 239'999)));
    CHECK(h.cred.published().state == RecordState::expired);  // the reason stays with it
    CHECK_THAT(h.cred.published().last_error, Catch::Contains("Retry-After"));
    CHECK(h.cred.poll(at(t + 240'000)));
}

TEST_CASE("a capped Retry-After past the token's expiry names both waits") {
    QuietLogs quiet;
    Harness h;
    REQUIRE(h.cred.poll(at(0)));
    h.cred.on_response(token_response("at", 200), at(0));
    REQUIRE(h.cred.poll(at(100'000)));
    auto r = json_response(429, "");
    r.retry_after = "86400";
    h.cred.on_response(r, at(100'000));
    CHECK(h.cred.published().next_refresh_ms == 400'000);
    CHECK_THAT(h.cred.published().last_error,
               Catch::StartsWith("the server asked to wait 86400s (Retry-After), capped at "
                                 "max_backoff_s 300s; the current token expires in 100s"));
}

TEST_CASE("a Retry-After within the token's lifetime leaves the error as it was") {
    QuietLogs quiet;
    Harness h;
    REQUIRE(h.cred.poll(at(0)));
    h.cred.on_response(token_response("at", 200), at(0));
    REQUIRE(h.cred.poll(at(100'000)));
    auto r = json_response(503, "");
    r.retry_after = "60";
    h.cred.on_response(r, at(100'000));
    CHECK(h.cred.published().next_refresh_ms == 160'000);
    CHECK(h.cred.published().last_error.find("Retry-After") == std::string::npos);
}

TEST_CASE("a credential rebuilt by a reload goes on with the old one's backoff and record") {
    QuietLogs quiet;
    Harness old;  // min_backoff 1 s, max 300 s, min_interval 5 s, dice at 0.5
    std::int64_t now = 0;
    for (int i = 0; i < 3; ++i) {  // three failures: the next window is up to 8 s
        REQUIRE(old.cred.poll(at(now)));
        old.cred.on_response(json_response(503, ""), at(now));
        now = old.cred.next_action_ms();
    }
    CredentialConfig changed = base_config();
    changed.scope = "files.read";
    Harness rebuilt(changed);
    rebuilt.cred.continue_after_reload(old.cred, at(now));
    CHECK(rebuilt.cred.published().failures == 3);
    CHECK(rebuilt.cred.published().state == old.cred.published().state);
    CHECK_THAT(rebuilt.cred.published().last_error, Catch::Contains("503"));
    // Changed settings are tried as soon as min_interval_s allows: the last
    // request went out at 2.5 s (failures at 0, 1 s, 2.5 s), so not before 7.5 s.
    REQUIRE(now == 5'000);
    CHECK(rebuilt.cred.next_action_ms() == 7'500);
    CHECK_FALSE(rebuilt.cred.poll(at(7'499)));
    REQUIRE(rebuilt.cred.poll(at(7'500)));
    rebuilt.cred.on_response(json_response(503, ""), at(7'500));
    // The fourth failure's delay (1 s + half of 7 s), not a fresh first one (1 s).
    CHECK(rebuilt.cred.next_action_ms() == 7'500 + 4'500);
}
