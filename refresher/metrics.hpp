// What the refresher counts for monitoring, and the node_exporter textfile
// (`metrics_textfile`) it keeps current: the gauges `tokenshm status
// --prometheus` shows (rendered by the same code, reader/prometheus_text),
// except the two only a live reader can know (refresher_up, heartbeat age:
// alert on time() - tokenshm_refresher_heartbeat_timestamp_seconds, or on
// node_textfile_mtime_seconds), plus what only the refresher knows:
//   tokenshm_token_requests_total{credential,outcome}   counter
//     outcome: success, rejected (reauth: invalid_grant/invalid_client...),
//     transient_error (an HTTP answer that was not a token), network_error
//     (no answer: connect, TLS, timeout)
//   tokenshm_token_request_duration_seconds{credential} histogram
//   tokenshm_replays_refused_total{credential}           counter
//     refresh tokens not sent because the spent ledger holds them
// and, coordinated (issue 12), gauges of the election:
//   tokenshm_coordination_role{role}            1 for this host's role, 0 for the others
//   tokenshm_coordination_leader{host,pid}      1, naming the leader this host knows
//   tokenshm_coordination_lease_remaining_seconds   of this host's lease
//   tokenshm_coordination_etcd_up               1 when the last etcd call succeeded
// Counters start at 0 for every outcome (a series that appears only on the
// first failure defeats rate()), and restart with the process.
//
// The file is rewritten (replace_file: temp, rename; mode 0644 less the
// umask, it holds no secret) when something changed, at most every
// kMinWriteGapMs, and every kRefreshEveryMs anyway so the relative gauges
// (expires in) stay current.
#pragma once

#include "clock.hpp"
#include "credential.hpp"
#include "state_store.hpp"
#include "transport.hpp"

#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <string>

namespace tokenshm::refresher {

class RefresherMetrics {
  public:
    enum class Outcome { success, rejected, transient_error, network_error };
    static constexpr std::int64_t kMinWriteGapMs = 2'000;
    static constexpr std::int64_t kRefreshEveryMs = 10'000;
    // Upper bounds of the latency histogram, in seconds (+Inf follows).
    static constexpr std::array<double, 11> kBuckets = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                                        1,    2.5,   5,    10,  30};

    RefresherMetrics(FileSystem& fs, std::string textfile);
    // A reload may name another file (or none); the old one is left as it is.
    void set_textfile(std::string textfile);

    // Hooks from the daemon. Only token requests (POST) are counted; discovery is not.
    void request_started(std::uint64_t id, const std::string& cred, const HttpRequest& req,
                         std::int64_t mono_ms);
    // The answer to a request request_started() counted (others are ignored).
    void request_finished(std::uint64_t id, Outcome outcome, std::int64_t mono_ms);
    // A response for a credential removed while it was in flight.
    void request_dropped(std::uint64_t id) { started_.erase(id); }
    void replay_refused(const std::string& cred);
    void published(const std::string& cred, const Published& p, std::uint64_t version);
    void removed(const std::string& cred);
    // Coordination's gauges (none when the host runs alone).
    struct Coordination {
        std::string role;
        std::string leader_host;
        std::int64_t leader_pid = 0;
        std::int64_t lease_remaining_ms = 0;
        bool etcd_up = true;
    };
    void coordination(const Coordination& c);
    // Writes the textfile when due (see above); failures are logged, never fatal.
    void write_if_due(Now now);
    // At exit: writes what changed since the last write, whatever the gap
    // (a --once run may end within kMinWriteGapMs of its last request).
    void flush(Now now);

    // The textfile's content at `now_unix_ms`, which is also the heartbeat it
    // shows: the file is written by the loop that beats the heart.
    std::string render(std::int64_t now_unix_ms) const;

    struct Histogram {
        std::array<std::uint64_t, kBuckets.size() + 1> counts{};  // per bucket, last: +Inf
        double sum = 0;
        std::uint64_t count = 0;
        void observe(double seconds);
    };
    struct PerCredential {
        shm::RecordState state = shm::RecordState::empty;
        std::uint64_t version = 0;
        std::int64_t expires_at_ms = 0;
        std::uint32_t failures = 0;
        std::array<std::uint64_t, 4> requests{};  // by Outcome
        Histogram latency;
        std::uint64_t replays_refused = 0;
    };

  private:
    void write(Now now);

    struct Started {
        std::string cred;
        std::int64_t mono_ms = 0;
    };

    FileSystem& fs_;
    std::string textfile_;
    std::map<std::string, PerCredential> creds_;
    std::map<std::uint64_t, Started> started_;
    std::optional<Coordination> coordination_;
    bool dirty_ = true;
    std::int64_t last_write_mono_ms_ = 0;
    bool written_ = false;
    bool failing_ = false;  // the last write failed: log the next success
};

const char* to_string(RefresherMetrics::Outcome o) noexcept;
// What a token request came to, read from `cred` once it has taken `resp`.
RefresherMetrics::Outcome token_request_outcome(const HttpResponse& resp,
                                                const CredentialRefresher& cred);

}  // namespace tokenshm::refresher
