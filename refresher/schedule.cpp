#include "schedule.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

namespace tokenshm::refresher {

namespace {

double clamp01(double x) {
    if (!(x > 0)) return 0;  // also NaN
    return x > 1 ? 1 : x;
}

// floor(span * fraction) for span >= 0 and fraction in [0, 1], never above span.
std::int64_t scaled(std::int64_t span, double fraction) {
    const double v = std::floor(static_cast<double>(span) * fraction);
    if (v <= 0) return 0;
    if (v >= static_cast<double>(span)) return span;
    return static_cast<std::int64_t>(v);
}

std::int64_t ms(std::chrono::seconds s) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(s).count();
}

}  // namespace

std::int64_t next_refresh_at_ms(std::int64_t sent_at_ms, std::int64_t expires_at_ms,
                                const CredentialConfig& c, double jitter01) {
    const std::int64_t min_interval = std::max<std::int64_t>(ms(c.min_interval), 0);
    const std::int64_t floor_at = sent_at_ms + min_interval;
    if (expires_at_ms - sent_at_ms <= min_interval) return floor_at;
    const std::int64_t lifetime = expires_at_ms - sent_at_ms;

    const std::int64_t at_80 = sent_at_ms + (lifetime - lifetime / 5);
    const std::int64_t before = expires_at_ms - std::max<std::int64_t>(ms(c.refresh_before), 0);
    std::int64_t at = std::max(std::min(at_80, before), sent_at_ms);
    at -= scaled(at - sent_at_ms, 0.1 * clamp01(jitter01));
    return std::min(std::max(at, floor_at), expires_at_ms);
}

Backoff::Backoff(std::chrono::milliseconds min_backoff, std::chrono::milliseconds max_backoff)
    : min_(std::max(min_backoff, std::chrono::milliseconds(0))),
      max_(std::max(max_backoff, min_)) {}

Backoff::Backoff(const CredentialConfig& c) : Backoff(c.min_backoff, c.max_backoff) {}

std::chrono::milliseconds Backoff::next(double jitter01) {
    const std::int64_t lo = min_.count();
    const std::int64_t hi = max_.count();
    // upper = min(hi, lo * 2^n) without overflow: compare against hi >> n.
    const unsigned shift = std::min(failures_, 62u);
    const std::int64_t upper = (lo == 0 || lo <= (hi >> shift)) ? lo << shift : hi;
    const std::int64_t capped = std::min(upper, hi);
    if (failures_ < std::numeric_limits<unsigned>::max()) ++failures_;
    return std::chrono::milliseconds(lo + scaled(capped - lo, clamp01(jitter01)));
}

RetryDelay retry_delay(Backoff& backoff, std::optional<std::chrono::milliseconds> retry_after,
                       double jitter01) {
    const std::chrono::milliseconds delay = backoff.next(jitter01);
    if (!retry_after) return {delay, std::chrono::milliseconds(0), std::nullopt};
    const auto asked = std::max(*retry_after, std::chrono::milliseconds(0));
    const auto server = std::min(asked, backoff.max());
    return {std::max(delay, server), server,
            asked > server ? std::optional<std::chrono::milliseconds>(asked) : std::nullopt};
}

}  // namespace tokenshm::refresher
