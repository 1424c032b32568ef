// The refresher daemon: owns the segment (and its lock), one
// CredentialRefresher per configured credential, and the loop that drives
// them through a Transport, publishes their records and beats the heart.
#pragma once

#include "config.hpp"
#include "control_socket.hpp"
#include "credential.hpp"
#include "error.hpp"
#include "fleet.hpp"
#include "metrics.hpp"
#include "notify.hpp"
#include "sinks.hpp"
#include "state_store.hpp"
#include "transport.hpp"

#include <tokenshm/shm/segment.hpp>

#include <atomic>
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>

namespace tokenshm::refresher {

struct DaemonDeps {
    Transport* transport;
    FileSystem* fs;
    // Both clocks (system_now(); tests pass a fake whose wall time they step).
    std::function<Now()> now;
    std::function<double()> random01;
    // systemd's notify socket (READY, WATCHDOG, STATUS...); null: none.
    ServiceNotifier* notifier = nullptr;
    // Listen on cfg.control_socket and name it in the segment's header (the
    // refresher does; unit tests that drive the daemon directly need not).
    bool control_socket = false;
    // Coordination (cfg.coordination): this host's name in the leader key
    // (empty: gethostname()), and the etcd gateway (null: libcurl).
    std::string host = {};
    std::function<std::unique_ptr<EtcdGateway>()> etcd_gateway = {};
};

class Daemon {
  public:
    // Prepares the state directory, attaches to (or creates) the segment,
    // loads refresh tokens, and resumes what a previous refresher left. Every
    // failure is a runtime error.
    static Expected<std::unique_ptr<Daemon>, RefresherError> start(Config cfg, DaemonDeps deps);

    // Runs until SIGTERM/SIGINT arrive on `signal_fd` (a signalfd; -1 for none),
    // or, with `once`, until every credential has made one attempt; then waits
    // (bounded by the longest timeout_s) for requests in flight, unless a
    // second SIGTERM/SIGINT says to stop at once. Returns the exit code: 0, or
    // 1 when `once` and any credential failed, or requests were abandoned.
    int run(int signal_fd, bool once);
    // One pass of the loop (tests drive it step by step): starts due requests,
    // waits at most `max_wait` for responses, publishes what changed.
    void step(std::chrono::milliseconds max_wait, int wake_fd = -1);
    // Applies a new configuration: new credentials get slots, removed ones are
    // retired, changed ones are rebuilt (keeping their schedule: see
    // CredentialRefresher::continue_after_reload), unchanged ones are not
    // touched; one in reauth is rebuilt only when its refresh token on disk changed.
    void reload(Config cfg);
    void request_stop() noexcept { stop_ = true; }
    // Called on SIGHUP from run(): re-reads the configuration and reload()s.
    void set_reload_handler(std::function<void()> f) { reload_ = std::move(f); }

    // One control request line (SPEC.md, "The control socket") and its
    // one-line JSON answer (control_ops.cpp). Tests call it directly.
    std::string control_answer(std::string_view line);

    shm::WriterSegment& segment() noexcept { return *seg_; }
    const CredentialRefresher* credential(const std::string& name) const;

  private:
    struct Entry {
        std::unique_ptr<CredentialRefresher> cred;
        std::uint32_t slot = 0;
        std::uint64_t version = 0;                // last version published in the slot
        std::optional<CredentialConfig> pending;  // a changed config, applied when idle
        bool reload_tokens = false;     // re-read the refresh token from disk when applying it
        bool remove_when_idle = false;  // removed from the config while a request was in flight
        // Control socket: a refresh was asked (refresh, invalid) and its token
        // request has not answered yet; more asks join it.
        bool refresh_asked = false;
        // The first version that carries the current access token (0: not
        // known, as after a restart): `invalid` for an older one is answered
        // with the current version at once.
        std::uint64_t token_version = 0;
        std::optional<std::size_t> token_hash;  // of the token published last
        // Coordination (daemon_fleet.cpp). The counter of the publication in
        // etcd this host's record and refresh token come from (or published).
        std::uint64_t etcd_counter = 0;
        bool continued = false;           // leader: etcd read since this leadership began
        std::optional<std::string> held;  // leader: must not send; why
        std::string marked_fp;            // leader: the refresh token marked sent, this leadership
        std::uint64_t rescued = 0;        // follower: rescue offered for this counter
        std::int64_t fleet_retry_ms = 0;
        std::int64_t forwarded_ms = 0;  // follower: when a refresh was last asked of the leader
    };

    Daemon(Config cfg, DaemonDeps deps);
    Expected<std::unique_ptr<CredentialRefresher>, RefresherError> make_credential(
        const CredentialConfig& c, const std::optional<Secret>& carried);
    // Claims the slot for `name`, adopts its record and marks it to publish;
    // fails when the segment has no slot left (nothing is published then).
    Expected<Done, RefresherError> attach_entry(Entry& e, const std::string& name, bool resume);
    // reload()'s steps: settings only a restart applies stay as they are (with
    // a warning), new credentials get slots, changed ones restart, and those no
    // longer listed go (once their request in flight has answered).
    void keep_restart_only_settings(Config& cfg) const;
    void add_credential(const CredentialConfig& c);
    void update_credential(Entry& e, const CredentialConfig& c);
    void remove_unlisted(const std::set<std::string>& keep);
    // Publishes e's record as the slot's next version; false when it does not fit.
    bool publish(Entry& e);
    // Publishes the records their credentials reported changed.
    void publish_changed();
    void apply_pending(Entry& e);
    void set_aside_rejected(const std::string& name);
    void remove_entry(const std::string& name, Entry& e);
    void check_segment(Now now);
    bool drain_in_flight(int wake_fd, int signal_fd);
    // control_ops.cpp: the requests, and the loop's share of the socket.
    std::string answer_refresh(const std::string& name, std::optional<std::uint64_t> invalid);
    std::string answer_status();
    std::string answer_coordination();
    std::string answer_token_stored(const std::string& name);
    void service_control();
    // After a publish: a new access token starts a new token_version.
    void note_token(Entry& e, const shm::SlotRecord& r);
    // Reads what arrived on the signalfd; true when SIGTERM or SIGINT did.
    bool read_signals(int signal_fd);
    bool all_attempted() const;
    // The one-line summary for the service manager's STATUS= (notify.hpp).
    std::string service_status(Now now) const;
    bool wall_clock_moved(Now now);
    std::int64_t poll_credentials(Now now);
    void trim_heap_after_burst();
    // Saves the rotated refresh tokens still only in memory, retrying for up
    // to `budget_ms`; says, per credential, what is lost when it cannot.
    bool save_unsaved_before_exit(std::int64_t budget_ms, int signal_fd);
    // daemon_fleet.cpp: coordination across hosts (fleet.hpp).
    Expected<Done, RefresherError> start_fleet();
    void drive_fleet(Now now);
    void lead(Now now);
    void continue_from_etcd(const std::string& name, Entry& e, Now now);
    void take_rescue(const std::string& name, Entry& e, Now now);
    void follow_publications(Now now);
    bool apply_publication(const std::string& name, Entry& e, FetchedPublication& p, Now now);
    void publish_to_etcd(Now now);
    // Why `e` may not send now (nullopt: it may).
    std::optional<std::string> fleet_hold(const std::string& name, const Entry& e, Now now);
    // Before a refresh token is sent: its sent mark in etcd; false when it
    // could not be written (the request is then failed as not sent).
    bool mark_before_send(const std::string& name, Entry& e, Now now);
    bool spent_here(const Secret& refresh_token);
    // Not the leader: asks the leader to refresh `name` (design point 6).
    Expected<Done, CoordinationError> forward_refresh(const std::string& name, Entry& e,
                                                      bool invalid);
    void serve_requests(Now now);
    // `tokenshm login` stored a refresh token (coordinated: the answer's
    // action; nullopt when not coordinated, or nothing for the fleet to do).
    std::optional<std::string> fleet_token_stored(const std::string& name, Entry& e);
    void stop_fleet(Now now);
    std::int64_t fleet_lease_ms() const noexcept {
        return fleet_ ? fleet_->lease_ttl().count() : 0;
    }
    void fleet_error(std::string_view cred, const std::string& message);

    Config cfg_;
    DaemonDeps deps_;
    std::unique_ptr<StateStore> store_;
    std::optional<shm::WriterSegment> seg_;
    std::map<std::string, Entry> entries_;
    // Credentials whose record changed since it was last published; each one's
    // RecordChanged callback (make_credential) adds its name.
    std::set<std::string> changed_;
    std::map<std::uint64_t, std::string> requests_;  // request id -> credential
    std::uint64_t next_request_id_ = 1;
    // CLOCK_MONOTONIC ms; the heartbeat itself is published in Unix ms.
    std::int64_t last_heartbeat_ms_ = std::numeric_limits<std::int64_t>::min() / 2;
    std::size_t answers_since_trim_ = 0;
    bool walk_all_ = true;             // poll_credentials() must walk every credential
    std::int64_t quiet_until_ms_ = 0;  // until then no credential has anything to do
    bool swept_ = false;               // wall_clock_moved() has a reference
    std::int64_t swept_wall_offset_ms_ = 0;
    std::atomic<bool> stop_{false};
    bool reload_requested_ = false;
    bool draining_ = false;  // stopping: no new requests, waiting for answers
    bool failed_ = false;    // a fault that must end the daemon with exit 1
    std::function<void()> reload_;
    RefresherMetrics metrics_;  // metrics.hpp: counters and the textfile
    SinkWriter sinks_;          // sinks.hpp: token files for tools
    std::unique_ptr<ControlServer> control_;
    std::unique_ptr<Fleet> fleet_;
    // Leader: credentials whose record changed since it went to etcd.
    std::set<std::string> etcd_dirty_;
    bool applying_ = false;  // a publication from etcd is being applied: not dirty
    std::string last_fleet_error_;
    std::string last_seal_error_;  // a publication this host cannot open ("" after one it can)
};

}  // namespace tokenshm::refresher
