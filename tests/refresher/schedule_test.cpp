// The refresh schedule and the retry backoff, with time and randomness passed
// in as numbers.
#include "schedule.hpp"

#include <catch2/catch.hpp>

#include <cmath>
#include <limits>

using namespace tokenshm::refresher;
using namespace std::chrono_literals;

namespace {

constexpr std::int64_t kSent = 1'780'272'000'000;  // 2026-06-01T00:00:00Z
constexpr double kAlmostOne = 0.9999999;

CredentialConfig cred(std::chrono::seconds refresh_before = 300s,
                      std::chrono::seconds min_interval = 5s) {
    CredentialConfig c;
    c.name = "storage";
    c.refresh_before = refresh_before;
    c.min_interval = min_interval;
    return c;
}

std::int64_t s(std::int64_t seconds) {
    return seconds * 1000;
}

}  // namespace

TEST_CASE("schedule: 80 % of the lifetime when that comes first") {
    // One hour: 80 % is at 48 min, refresh_before (5 min) would be at 55 min.
    CHECK(next_refresh_at_ms(kSent, kSent + s(3600), cred(), 0.0) == kSent + s(2880));
    // A day: 80 % at 19.2 h.
    CHECK(next_refresh_at_ms(kSent, kSent + s(86400), cred(), 0.0) == kSent + s(69120));
    // refresh_before 0 leaves 80 %.
    CHECK(next_refresh_at_ms(kSent, kSent + s(100), cred(0s), 0.0) == kSent + s(80));
}

TEST_CASE("schedule: refresh_before when that comes first") {
    // Ten minutes: 300 s before expiry (at 5 min) is earlier than 80 % (at 8 min).
    CHECK(next_refresh_at_ms(kSent, kSent + s(600), cred(), 0.0) == kSent + s(300));
    // Two hours with refresh_before 30 min: 90 min is earlier than 96 min.
    CHECK(next_refresh_at_ms(kSent, kSent + s(7200), cred(1800s), 0.0) == kSent + s(5400));
}

TEST_CASE("schedule: counts from when the request was sent") {
    const std::int64_t later = kSent + s(17);
    CHECK(next_refresh_at_ms(later, later + s(3600), cred(), 0.0) == later + s(2880));
}

TEST_CASE("schedule: jitter moves earlier by at most 10 % of the span") {
    const std::int64_t expires = kSent + s(3600);
    const std::int64_t point = kSent + s(2880);
    const std::int64_t span = point - kSent;
    CHECK(next_refresh_at_ms(kSent, expires, cred(), 0.0) == point);
    CHECK(next_refresh_at_ms(kSent, expires, cred(), 0.5) == point - span / 20);
    const std::int64_t near_one = next_refresh_at_ms(kSent, expires, cred(), kAlmostOne);
    CHECK(near_one >= point - span / 10);
    CHECK(near_one <= point - span / 10 + 1);
    std::int64_t previous = point;
    for (double j = 0; j < 1; j += 0.05) {
        const std::int64_t at = next_refresh_at_ms(kSent, expires, cred(), j);
        CHECK(at <= previous);  // more jitter, never later
        CHECK(at >= point - span / 10);
        previous = at;
    }
    // Out-of-range jitter is clamped; NaN counts as none.
    CHECK(next_refresh_at_ms(kSent, expires, cred(), 7.0) == point - span / 10);
    CHECK(next_refresh_at_ms(kSent, expires, cred(), -1.0) == point);
    CHECK(next_refresh_at_ms(kSent, expires, cred(), std::nan("")) == point);
}

TEST_CASE("schedule: never sooner than min_interval") {
    // 8 s lifetime, refresh_before 300 s: "refresh now" is held back to 5 s.
    CHECK(next_refresh_at_ms(kSent, kSent + s(8), cred(), 0.0) == kSent + s(5));
    CHECK(next_refresh_at_ms(kSent, kSent + s(8), cred(), kAlmostOne) == kSent + s(5));
    // 80 % of 6 s is 4.8 s, below the 5 s floor.
    CHECK(next_refresh_at_ms(kSent, kSent + s(6), cred(0s), 0.0) == kSent + s(5));
    // Jitter does not break through the floor either.
    CHECK(next_refresh_at_ms(kSent, kSent + s(6250), cred(0s, 4600s), kAlmostOne) ==
          kSent + s(4600));
}

TEST_CASE("schedule: a lifetime within min_interval waits min_interval") {
    CHECK(next_refresh_at_ms(kSent, kSent + s(5), cred(), 0.0) == kSent + s(5));
    CHECK(next_refresh_at_ms(kSent, kSent + s(2), cred(), 0.0) == kSent + s(5));
    CHECK(next_refresh_at_ms(kSent, kSent - s(10), cred(), 0.0) == kSent + s(5));
    CHECK(next_refresh_at_ms(kSent, kSent + 1, cred(0s, 0s), 0.0) <= kSent + 1);
}

TEST_CASE("schedule: never later than expiry") {
    for (std::int64_t lifetime : {1, 999, 5001, 6000, 60000, 3600000}) {
        for (double j : {0.0, 0.3, kAlmostOne}) {
            const auto at = next_refresh_at_ms(kSent, kSent + lifetime, cred(), j);
            INFO(lifetime << " " << j);
            if (lifetime > s(5)) {
                CHECK(at <= kSent + lifetime);
                CHECK(at >= kSent + s(5));
            } else {
                CHECK(at == kSent + s(5));
            }
        }
    }
}

TEST_CASE("backoff: first failure waits min_backoff") {
    Backoff b(1s, 300s);
    CHECK(b.failures() == 0);
    CHECK(b.next(0.0) == 1s);
    CHECK(b.failures() == 1);
    Backoff b2(1s, 300s);
    CHECK(b2.next(kAlmostOne) == 1s);  // [1 s, min(300 s, 1 s * 2^0)]
}

TEST_CASE("backoff: the window doubles, from min_backoff, up to max_backoff") {
    Backoff low(1s, 300s);
    Backoff high(1s, 300s);
    Backoff mid(1s, 300s);
    const std::int64_t expected_upper[] = {1000,  2000,   4000,   8000,   16000,  32000,
                                           64000, 128000, 256000, 300000, 300000, 300000};
    for (std::int64_t upper : expected_upper) {
        INFO(upper);
        CHECK(low.next(0.0) == 1s);
        const auto h = high.next(kAlmostOne);
        CHECK(h.count() <= upper);
        CHECK(h.count() >= upper - 1);
        CHECK(mid.next(0.5).count() == 1000 + (upper - 1000) / 2);
    }
    CHECK(high.failures() == 12);
}

TEST_CASE("backoff: reset starts over") {
    Backoff b(2s, 60s);
    for (int i = 0; i < 5; ++i)
        b.next(0.9);
    CHECK(b.failures() == 5);
    b.reset();
    CHECK(b.failures() == 0);
    CHECK(b.next(kAlmostOne) == 2s);
}

TEST_CASE("backoff: no overflow after many failures") {
    Backoff b(1s, 300s);
    for (int i = 0; i < 200; ++i) {
        const auto d = b.next(kAlmostOne);
        CHECK(d >= 1s);
        CHECK(d <= 300s);
    }
    CHECK(b.failures() == 200);
    CHECK(b.next(kAlmostOne) >= 299s);
    CHECK(b.next(0.0) == 1s);

    // A huge max_backoff: the doubling saturates instead of wrapping.
    Backoff wide(1ms, std::chrono::milliseconds::max());
    std::chrono::milliseconds last{0};
    for (int i = 0; i < 200; ++i) {
        const auto d = wide.next(kAlmostOne);
        CHECK(d >= 1ms);
        CHECK(d >= last);
        last = d;
    }
    CHECK(last.count() > (std::int64_t{1} << 61));
}

TEST_CASE("backoff: taken from the credential; min above max means min") {
    CredentialConfig c = cred();
    c.min_backoff = 3s;
    c.max_backoff = 10s;
    Backoff b(c);
    CHECK(b.next(0.0) == 3s);
    CHECK(b.next(kAlmostOne) <= 6s);
    CHECK(b.next(kAlmostOne) <= 10s);
    CHECK(b.next(kAlmostOne) >= 9999ms);

    Backoff odd(10s, 1s);
    CHECK(odd.next(0.0) == 10s);
    CHECK(odd.next(kAlmostOne) == 10s);
}

TEST_CASE("retry_delay: Retry-After is honoured when longer, capped at max_backoff") {
    Backoff b(1s, 300s);
    CHECK(retry_delay(b, std::nullopt, 0.0).delay == 1s);
    CHECK(retry_delay(b, 30s, 0.0).delay == 30s);            // the server asks for more
    CHECK(retry_delay(b, 100ms, 0.0).delay == 1s);           // the backoff asks for more
    CHECK(retry_delay(b, 0ms, kAlmostOne).delay >= 7999ms);  // fourth failure: window up to 8 s
    CHECK(retry_delay(b, -5s, 0.0).delay == 1s);
    CHECK(b.failures() == 5);  // each call counts one failure

    // Up to max_backoff the server's wish is granted as asked, and not reported as cut.
    const RetryDelay exact = retry_delay(b, 300s, 0.0);
    CHECK(exact.delay == 300s);
    CHECK(exact.server_wait == 300s);
    CHECK_FALSE(exact.capped_from);

    // A day (or a nonsense value) is cut to max_backoff, and says what was asked.
    const RetryDelay day = retry_delay(b, 24h, 0.0);
    CHECK(day.delay == 300s);
    CHECK(day.server_wait == 300s);
    REQUIRE(day.capped_from);
    CHECK(*day.capped_from == 24h);
    CHECK(retry_delay(b, std::chrono::milliseconds::max(), 0.0).delay == 300s);

    // What the server asked for (capped) is told apart from the backoff's share.
    CHECK(retry_delay(b, std::nullopt, 0.0).server_wait == 0ms);
    CHECK(retry_delay(b, 2s, 0.0).server_wait == 2s);
}

TEST_CASE("retry_delay: a backoff with min above max caps Retry-After at min") {
    Backoff odd(10s, 1s);  // Backoff treats max below min as min
    const RetryDelay d = retry_delay(odd, 60s, 0.0);
    CHECK(d.delay == 10s);
    REQUIRE(d.capped_from);
    CHECK(*d.capped_from == 60s);
}
