// When to refresh a token, and how long to wait after a failure. Pure
// arithmetic on milliseconds of one clock (the credential uses
// CLOCK_MONOTONIC, see clock.hpp): the caller passes the time and a random
// number in [0, 1), so the rules are tested without a clock or sleeping.
#pragma once

#include "config.hpp"

#include <chrono>
#include <cstdint>
#include <optional>

namespace tokenshm::refresher {

// The time (ms, on the clock of `sent_at_ms`) to refresh a token obtained by a request sent at
// `sent_at_ms` that expires at `expires_at_ms`:
//  - at 80 % of the lifetime or when `refresh_before` remains, whichever is
//    earlier: 80 % keeps short-lived tokens from being refreshed at the last
//    second, refresh_before leaves long-lived ones time for a slow server;
//  - moved earlier by up to 10 % of (that point - sent_at), scaled by
//    `jitter01`, so refreshers started together do not hit the server together;
//  - never sooner than sent_at + min_interval, so a server handing out tiny
//    lifetimes cannot make us spin;
//  - never later than expires_at, so we never plan to serve an expired token
//    (except when the lifetime is at most min_interval: then
//    sent_at + min_interval, since the floor wins over a useless token).
// Times count from when the request was sent, not when the answer came, so
// a slow response can only make us refresh early, never late.
// `jitter01` outside [0, 1] is clamped (NaN counts as 0).
std::int64_t next_refresh_at_ms(std::int64_t sent_at_ms, std::int64_t expires_at_ms,
                                const CredentialConfig& c, double jitter01);

// Exponential backoff with full jitter (the AWS Architecture Blog's "full
// jitter": spreads a herd of failed clients over the whole window instead of
// synchronising their retries). The n-th consecutive failure (n from 0)
// waits uniformly in [min, min(max, min * 2^n)]: doubling gives a struggling
// server room fast, the cap keeps a recovered one from waiting long.
class Backoff {
  public:
    Backoff(std::chrono::milliseconds min_backoff, std::chrono::milliseconds max_backoff);
    explicit Backoff(const CredentialConfig& c);

    // The delay before the next attempt; counts one more failure.
    // Saturates instead of overflowing, however many failures there were.
    std::chrono::milliseconds next(double jitter01);
    // After a success: the next failure starts from min_backoff again.
    void reset() noexcept { failures_ = 0; }
    // Consecutive failures counted by next() since the last reset().
    unsigned failures() const noexcept { return failures_; }
    // Goes on from where `other` stopped (a reload rebuilt the credential):
    // the next delay is as long as other's would have been, within this one's bounds.
    void continue_from(const Backoff& other) noexcept { failures_ = other.failures_; }
    // The longest delay next() ever returns.
    std::chrono::milliseconds max() const noexcept { return max_; }

  private:
    std::chrono::milliseconds min_;
    std::chrono::milliseconds max_;
    unsigned failures_ = 0;
};

// The delay before retrying, and what the server asked for when the cap cut it.
struct RetryDelay {
    std::chrono::milliseconds delay;
    // The part of `delay` the server demanded (Retry-After after the cap;
    // 0 without one): a reload or an operator must not cut it short.
    std::chrono::milliseconds server_wait{0};
    // Set when Retry-After asked for more than backoff.max(): what it asked.
    std::optional<std::chrono::milliseconds> capped_from;
};

// The delay before retrying: the backoff's next delay, or the server's
// Retry-After when that is longer, because the server knows its own load
// better than our doubling does. Retry-After counts up to max_backoff_s only
// (backoff.max()): a server or proxy asking for hours of silence would
// otherwise stop refreshing long past the token's expiry, on one bad header.
// Counts one failure in `backoff`.
RetryDelay retry_delay(Backoff& backoff, std::optional<std::chrono::milliseconds> retry_after,
                       double jitter01);

}  // namespace tokenshm::refresher
