// The refresher's two clocks, read together. Deadlines (next refresh,
// backoff, min_interval_s, the drain, the heartbeat period) run on
// CLOCK_MONOTONIC, so a step of the wall clock (NTP, an operator, a VM
// resumed) neither fires them all at once nor postpones them by the step.
// What readers see (expires_at, issued_at, next_refresh, the heartbeat) is
// Unix time, because readers in other processes and languages compare it
// with their own CLOCK_REALTIME.
#pragma once

#include <chrono>
#include <cstdint>

namespace tokenshm::refresher {

// One reading of both clocks, taken once per loop iteration and handed down,
// so every decision in an iteration sees the same instant.
struct Now {
    std::int64_t mono_ms = 0;  // CLOCK_MONOTONIC: deadlines and intervals
    std::int64_t unix_ms = 0;  // CLOCK_REALTIME: what is published, HTTP-dates

    // Unix minus monotonic: moves only when the wall clock is stepped or slewed.
    std::int64_t wall_offset_ms() const noexcept { return unix_ms - mono_ms; }
};

// The real clocks (libstdc++'s steady_clock is CLOCK_MONOTONIC and
// system_clock CLOCK_REALTIME on Linux; neither read can fail).
inline Now system_now() noexcept {
    using std::chrono::duration_cast;
    using std::chrono::milliseconds;
    return Now{
        duration_cast<milliseconds>(std::chrono::steady_clock::now().time_since_epoch()).count(),
        duration_cast<milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count()};
}

}  // namespace tokenshm::refresher
