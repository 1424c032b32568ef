#include "metrics.hpp"

#include "log.hpp"
#include "replace_file.hpp"

#include "prometheus_text.hpp"

#include <algorithm>
#include <utility>

namespace tokenshm::refresher {

namespace {

constexpr RefresherMetrics::Outcome kOutcomes[] = {
    RefresherMetrics::Outcome::success, RefresherMetrics::Outcome::rejected,
    RefresherMetrics::Outcome::transient_error, RefresherMetrics::Outcome::network_error};

using Creds = std::map<std::string, RefresherMetrics::PerCredential>;

void render_requests(metrics::MetricsText& out, const Creds& creds) {
    out.family("token_requests", "counter",
               "Token requests answered (or failed) since the refresher started, by outcome.");
    for (const auto& [name, c] : creds)
        for (auto o : kOutcomes)
            out.sample("_total", {{"credential", name}, {"outcome", to_string(o)}},
                       static_cast<double>(c.requests[static_cast<std::size_t>(o)]));
}

void render_latency(metrics::MetricsText& out, const Creds& creds) {
    out.family("token_request_duration_seconds", "histogram",
               "Time from sending a token request to its answer (or its failure).");
    for (const auto& [name, c] : creds) {
        std::uint64_t cumulative = 0;
        for (std::size_t i = 0; i < c.latency.counts.size(); ++i) {
            cumulative += c.latency.counts[i];
            const std::string le = i < RefresherMetrics::kBuckets.size()
                                       ? metrics::format_number(RefresherMetrics::kBuckets[i])
                                       : std::string("+Inf");
            out.sample("_bucket", {{"credential", name}, {"le", le}},
                       static_cast<double>(cumulative));
        }
        out.sample("_sum", {{"credential", name}}, c.latency.sum);
        out.sample("_count", {{"credential", name}}, static_cast<double>(c.latency.count));
    }
}

void render_replays(metrics::MetricsText& out, const Creds& creds) {
    out.family("replays_refused", "counter",
               "Refresh tokens not sent because the spent ledger holds them (a strict server "
               "would revoke the grant on their reuse).");
    for (const auto& [name, c] : creds)
        out.sample("_total", {{"credential", name}}, static_cast<double>(c.replays_refused));
}

void render_coordination(metrics::MetricsText& out, const RefresherMetrics::Coordination& c) {
    out.family("coordination_role", "gauge",
               "This host's role in the election on etcd: 1 for its role, 0 for the others.");
    for (const char* role : {"leader", "follower", "candidate", "unknown"})
        out.sample({{"role", role}}, c.role == role ? 1 : 0);
    out.family("coordination_leader", "gauge", "The leader this host knows of (1).");
    if (c.leader_pid != 0)
        out.sample({{"host", c.leader_host}, {"pid", std::to_string(c.leader_pid)}}, 1);
    out.family("coordination_lease_remaining_seconds", "gauge",
               "What is left of this host's lease, counted from its last keepalive.");
    out.sample({}, static_cast<double>(c.lease_remaining_ms) / 1000.0);
    out.family("coordination_etcd_up", "gauge", "1 when the last etcd call succeeded.");
    out.sample({}, c.etcd_up ? 1 : 0);
}

}  // namespace

RefresherMetrics::Outcome token_request_outcome(const HttpResponse& resp,
                                                const CredentialRefresher& cred) {
    // on_response() of a token request ends in succeed() or fail(), and each
    // sets last_attempt_ok().
    if (cred.last_attempt_ok() == true) return RefresherMetrics::Outcome::success;
    if (cred.in_reauth()) return RefresherMetrics::Outcome::rejected;
    if (resp.outcome != HttpResponse::Outcome::response)
        return RefresherMetrics::Outcome::network_error;
    return RefresherMetrics::Outcome::transient_error;
}

const char* to_string(RefresherMetrics::Outcome o) noexcept {
    switch (o) {
        case RefresherMetrics::Outcome::success:
            return "success";
        case RefresherMetrics::Outcome::rejected:
            return "rejected";
        case RefresherMetrics::Outcome::transient_error:
            return "transient_error";
        case RefresherMetrics::Outcome::network_error:
            return "network_error";
    }
    return "unknown";
}

void RefresherMetrics::Histogram::observe(double seconds) {
    std::size_t i = 0;
    while (i < kBuckets.size() && seconds > kBuckets[i])
        ++i;
    ++counts[i];
    sum += seconds;
    ++count;
}

RefresherMetrics::RefresherMetrics(FileSystem& fs, std::string textfile)
    : fs_(fs), textfile_(std::move(textfile)) {}

void RefresherMetrics::set_textfile(std::string textfile) {
    if (textfile == textfile_) return;
    textfile_ = std::move(textfile);
    written_ = false;
    dirty_ = true;
}

void RefresherMetrics::request_started(std::uint64_t id, const std::string& cred,
                                       const HttpRequest& req, std::int64_t mono_ms) {
    // RFC 6749 token requests are POSTs; discovery documents are fetched with GET.
    if (req.method == "POST") started_[id] = Started{cred, mono_ms};
}

void RefresherMetrics::request_finished(std::uint64_t id, Outcome outcome, std::int64_t mono_ms) {
    auto it = started_.find(id);
    if (it == started_.end()) return;
    PerCredential& c = creds_[it->second.cred];
    ++c.requests[static_cast<std::size_t>(outcome)];
    c.latency.observe(static_cast<double>(std::max<std::int64_t>(0, mono_ms - it->second.mono_ms)) /
                      1000.0);
    started_.erase(it);
    dirty_ = true;
}

void RefresherMetrics::replay_refused(const std::string& cred) {
    ++creds_[cred].replays_refused;
    dirty_ = true;
}

void RefresherMetrics::published(const std::string& cred, const Published& p,
                                 std::uint64_t version) {
    PerCredential& c = creds_[cred];
    c.state = p.state;
    c.version = version;
    c.expires_at_ms = p.expires_at_ms;
    c.failures = p.failures;
    dirty_ = true;
}

void RefresherMetrics::removed(const std::string& cred) {
    creds_.erase(cred);
    dirty_ = true;
}

std::string RefresherMetrics::render(std::int64_t now_unix_ms) const {
    metrics::SegmentSample s;
    s.now_ms = now_unix_ms;
    s.heartbeat_ms = now_unix_ms;
    s.live = false;
    for (const auto& [name, c] : creds_)
        s.credentials.push_back({name, c.state, c.version, c.expires_at_ms, c.failures});
    metrics::MetricsText out;
    metrics::render_segment(out, s);
    render_requests(out, creds_);
    render_latency(out, creds_);
    render_replays(out, creds_);
    if (coordination_) render_coordination(out, *coordination_);
    return out.text();
}

void RefresherMetrics::coordination(const Coordination& c) {
    // The lease's countdown alone rewrites nothing: kRefreshEveryMs keeps it current.
    if (!coordination_ || coordination_->role != c.role ||
        coordination_->leader_host != c.leader_host || coordination_->leader_pid != c.leader_pid ||
        coordination_->etcd_up != c.etcd_up)
        dirty_ = true;
    coordination_ = c;
}

void RefresherMetrics::write_if_due(Now now) {
    if (textfile_.empty()) return;
    const std::int64_t since = now.mono_ms - last_write_mono_ms_;
    if (written_ && !(dirty_ && since >= kMinWriteGapMs) && since < kRefreshEveryMs) return;
    write(now);
}

void RefresherMetrics::flush(Now now) {
    if (!textfile_.empty() && (dirty_ || !written_)) write(now);
}

void RefresherMetrics::write(Now now) {
    last_write_mono_ms_ = now.mono_ms;
    written_ = true;  // a failed write is retried after the same gap
    ReplaceOptions opt;
    opt.mode = 0644;
    opt.exact_mode = false;  // no secret in it: the umask decides
    auto r = replace_file(fs_, textfile_, render(now.unix_ms), opt);
    if (!r) {
        if (!failing_) log_event(Level::warn, "", "metrics_write_failed", describe(r.error()));
        failing_ = true;
        return;
    }
    if (std::exchange(failing_, false))
        log_event(Level::info, "", "metrics_written", "writing " + textfile_ + " works again");
    dirty_ = false;
}

}  // namespace tokenshm::refresher
