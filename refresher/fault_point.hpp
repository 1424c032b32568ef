// Test-only crash points for the chaos harness (tests/reliability).
//
// TOKENSHM_FAULT_KILL=<point>[:<when>] makes the refresher SIGKILL itself the
// moment it reaches <point>: the Nth time (<when> an integer, default 1) or
// at each hit with a probability (<when> a decimal such as 0.25). The
// variable is read once, before main; without it every fault_point() is one
// compare of a byte that never changes, and no hook is installed anywhere.
// A malformed value stops the refresher at start (exit 2): a chaos run that
// silently injects nothing would prove nothing. docs/RELIABILITY.md lists the
// points; never set the variable outside a test.
#pragma once

#include <tokenshm/shm/segment.hpp>

#include <optional>
#include <string_view>

namespace tokenshm::refresher {

enum class FaultPoint : unsigned char {
    none,
    after_response_before_rename,  // a rotated refresh token arrived, not yet renamed into place
    after_rename_before_publish,   // the successor is saved, the access token not yet published
    mid_publish,    // half of the new slot copy written (libshm's WriterStep::mid_copy)
    during_reload,  // a SIGHUP reload has rebuilt credentials, not yet published
};

// The point's name as TOKENSHM_FAULT_KILL spells it.
std::string_view to_string(FaultPoint p) noexcept;
std::optional<FaultPoint> fault_point_named(std::string_view name) noexcept;

namespace detail {
extern const FaultPoint armed_fault_point;
void fault_point_reached(FaultPoint at);
}  // namespace detail

// Kills the process here when TOKENSHM_FAULT_KILL says so; otherwise nothing.
inline void fault_point(FaultPoint at) {
    if (detail::armed_fault_point == at) [[unlikely]]
        detail::fault_point_reached(at);
}

// A segment step hook that reaches FaultPoint::mid_publish mid-copy, or an
// empty hook (none installed) unless that point is armed.
shm::WriterStepHook fault_step_hook();

}  // namespace tokenshm::refresher
