#include "prometheus_text.hpp"

#include <charconv>
#include <cmath>

namespace tokenshm::metrics {

namespace {

constexpr shm::RecordState kStates[] = {shm::RecordState::empty, shm::RecordState::valid,
                                        shm::RecordState::stale, shm::RecordState::expired,
                                        shm::RecordState::reauth};

double seconds(std::int64_t ms) {
    return static_cast<double>(ms) / 1000.0;
}

// a - b for times read from the segment, which may hold anything: clamped.
std::int64_t ms_diff(std::int64_t a, std::int64_t b) {
    std::int64_t d;
    if (!__builtin_sub_overflow(a, b, &d)) return d;
    return b < 0 ? INT64_MAX : INT64_MIN;
}

void render_refresher(MetricsText& out, const SegmentSample& s) {
    if (s.live) {
        out.family("refresher_up", "gauge",
                   "1 when the refresher holds the segment's lock and its heartbeat is recent.");
        out.sample({}, s.refresher_up ? 1 : 0);
        out.family("refresher_heartbeat_age_seconds", "gauge",
                   "Seconds since the refresher's last heartbeat, by the reader's clock.");
        out.sample({}, seconds(ms_diff(s.now_ms, s.heartbeat_ms)));
    }
    out.family("refresher_heartbeat_timestamp_seconds", "gauge",
               "Unix time of the refresher's last heartbeat.");
    out.sample({}, seconds(s.heartbeat_ms));
}

void render_states(MetricsText& out, const SegmentSample& s) {
    out.family("credential_state", "gauge",
               "1 for the state the credential's token is in (empty, valid, stale, expired, "
               "reauth), 0 for the others.");
    for (const CredentialSample& c : s.credentials) {
        const shm::RecordState shown = shown_state(c.state, c.expires_at_ms, s.now_ms);
        for (shm::RecordState st : kStates)
            out.sample({{"credential", c.name}, {"state", shm::to_string(st)}},
                       st == shown ? 1 : 0);
    }
}

}  // namespace

std::string format_number(double v) {
    if (std::isnan(v)) return "NaN";
    if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
    char buf[64];
    const auto r = std::to_chars(buf, buf + sizeof buf, v);
    return std::string(buf, r.ptr);
}

shm::RecordState shown_state(shm::RecordState s, std::int64_t expires_at_ms,
                             std::int64_t now_ms) noexcept {
    if (s != shm::RecordState::empty && s != shm::RecordState::reauth && expires_at_ms <= now_ms)
        return shm::RecordState::expired;
    return s;
}

std::string escape_label_value(std::string_view v) {
    std::string out;
    out.reserve(v.size());
    for (char c : v) {
        if (c == '\\')
            out += "\\\\";
        else if (c == '"')
            out += "\\\"";
        else if (c == '\n')
            out += "\\n";
        else
            out += c;
    }
    return out;
}

void MetricsText::family(std::string_view name, std::string_view type, std::string_view help) {
    family_ = "tokenshm_" + std::string(name);
    text_ += "# HELP " + family_ + " " + std::string(help) + "\n";
    text_ += "# TYPE " + family_ + " " + std::string(type) + "\n";
}

void MetricsText::sample(std::string_view suffix, Labels labels, double value) {
    text_ += family_;
    text_ += suffix;
    if (labels.size() > 0) {
        char sep = '{';
        for (const auto& [k, v] : labels) {
            text_ += sep;
            text_ += k;
            text_ += "=\"" + escape_label_value(v) + "\"";
            sep = ',';
        }
        text_ += '}';
    }
    text_ += ' ' + format_number(value) + '\n';
}

void render_segment(MetricsText& out, const SegmentSample& s) {
    render_refresher(out, s);
    render_states(out, s);
    out.family("token_expires_in_seconds", "gauge",
               "Seconds until the served token expires (negative once it has); absent while "
               "there is no token.");
    for (const CredentialSample& c : s.credentials)
        if (c.state != shm::RecordState::empty)
            out.sample({{"credential", c.name}}, seconds(ms_diff(c.expires_at_ms, s.now_ms)));
    out.family("token_expiry_timestamp_seconds", "gauge",
               "Unix time the served token expires; absent while there is no token.");
    for (const CredentialSample& c : s.credentials)
        if (c.state != shm::RecordState::empty)
            out.sample({{"credential", c.name}}, seconds(c.expires_at_ms));
    out.family("credential_consecutive_failures", "gauge",
               "Failed refresh attempts since the last success.");
    for (const CredentialSample& c : s.credentials)
        out.sample({{"credential", c.name}}, c.failures);
    out.family("token_version", "gauge",
               "The slot's record version; it grows with every publish (a new token, a failure).");
    for (const CredentialSample& c : s.credentials)
        out.sample({{"credential", c.name}}, static_cast<double>(c.version));
}

}  // namespace tokenshm::metrics
