#include "fault_point.hpp"

#include "log.hpp"

#include <signal.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <utility>

namespace tokenshm::refresher {

namespace {

constexpr const char* kVariable = "TOKENSHM_FAULT_KILL";

constexpr std::array<std::pair<FaultPoint, std::string_view>, 4> kNames{{
    {FaultPoint::after_response_before_rename, "after_response_before_rename"},
    {FaultPoint::after_rename_before_publish, "after_rename_before_publish"},
    {FaultPoint::mid_publish, "mid_publish"},
    {FaultPoint::during_reload, "during_reload"},
}};

// What TOKENSHM_FAULT_KILL asked for: the point, and either the hit to kill
// at (nth) or the chance of killing at each hit (probability > 0).
struct Arming {
    FaultPoint point = FaultPoint::none;
    unsigned long nth = 1;
    double probability = 0;
};

[[noreturn]] void refuse(std::string_view value, const char* why) {
    std::fprintf(stderr,
                 "tokenshm-refresher: %s=%.*s: %s (expected <point>[:<Nth hit>|:<probability>], "
                 "point one of after_response_before_rename, after_rename_before_publish, "
                 "mid_publish, during_reload)\n",
                 kVariable, static_cast<int>(value.size()), value.data(), why);
    std::_Exit(2);
}

// "<N>" (N >= 1) or "<p>" with a decimal point (0 < p <= 1).
void parse_when(std::string_view value, std::string_view when, Arming& a) {
    if (when.find('.') == std::string_view::npos) {
        const auto [end, ec] = std::from_chars(when.data(), when.data() + when.size(), a.nth);
        if (ec != std::errc{} || end != when.data() + when.size() || a.nth == 0)
            refuse(value, "the hit count is not an integer >= 1");
        return;
    }
    char* end = nullptr;
    const std::string text(when);
    a.probability = std::strtod(text.c_str(), &end);
    if (end != text.c_str() + text.size() || !(a.probability > 0 && a.probability <= 1))
        refuse(value, "the probability is not a number in (0, 1]");
}

Arming read_arming() {
    const char* raw = std::getenv(kVariable);
    if (raw == nullptr || *raw == '\0') return {};
    const std::string_view value(raw);
    const auto colon = value.find(':');
    Arming a;
    const auto point = fault_point_named(value.substr(0, colon));
    if (!point) refuse(value, "unknown point");
    a.point = *point;
    if (colon != std::string_view::npos) parse_when(value, value.substr(colon + 1), a);
    return a;
}

const Arming g_arming = read_arming();
std::atomic<unsigned long> g_hits{0};

bool kill_at_this_hit(unsigned long hit) {
    if (g_arming.probability <= 0) return hit == g_arming.nth;
    static std::mt19937_64 rng{std::random_device{}()};
    return std::uniform_real_distribution<double>(0.0, 1.0)(rng) < g_arming.probability;
}

}  // namespace

const FaultPoint detail::armed_fault_point = g_arming.point;

std::string_view to_string(FaultPoint p) noexcept {
    for (const auto& [point, name] : kNames)
        if (point == p) return name;
    return "none";
}

std::optional<FaultPoint> fault_point_named(std::string_view name) noexcept {
    for (const auto& [point, n] : kNames)
        if (n == name) return point;
    return std::nullopt;
}

void detail::fault_point_reached(FaultPoint at) {
    const unsigned long hit = g_hits.fetch_add(1, std::memory_order_relaxed) + 1;
    if (!kill_at_this_hit(hit)) return;
    // The harness matches this line with the kill it observes.
    log_event(Level::warn, "", "fault_kill",
              "point=" + std::string(to_string(at)) + " hit=" + std::to_string(hit) + " (" +
                  kVariable + ")");
    ::kill(::getpid(), SIGKILL);
    std::_Exit(128 + SIGKILL);  // not reached: SIGKILL cannot be caught
}

shm::WriterStepHook fault_step_hook() {
    if (detail::armed_fault_point != FaultPoint::mid_publish) return {};
    return [](shm::WriterStep step) {
        if (step == shm::WriterStep::mid_copy) fault_point(FaultPoint::mid_publish);
    };
}

}  // namespace tokenshm::refresher
