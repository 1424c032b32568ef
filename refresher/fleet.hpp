// Fleet: the daemon's side of coordination (issue 12), over the Coordinator.
// It owns the etcd client and the seal key, and adds what the daemon needs
// to refresh one grant from many hosts without ever replaying a refresh
// token:
//
//   <prefix>/sent/<name>    {"counter":N,"host":..,"pid":..,"sealed":"tks1."}
//       written by the leader (guarded by its leadership) BEFORE it sends a
//       refresh token: the sealed fingerprint of the token sent. A new
//       leader whose token is the one marked sent, with no publication of
//       the answer after it, must not send it (the server has it, maybe
//       consumed): it holds instead, and says who sent it.
//   <prefix>/rescue/<name>  a publication envelope, written by a host that
//       holds a refresh token newer than etcd's (its leadership was killed
//       after it saved the answer and before it published it): a held
//       leader takes it and goes on with the grant.
//
// Synchronous, like the Coordinator: every call is one or a few gateway
// requests bounded by the gateway's timeouts. Log lines name keys, hosts
// and counters, never a value.
#pragma once

#include "config.hpp"
#include "coordinator.hpp"
#include "error.hpp"
#include "etcd_client.hpp"
#include "etcd_watch.hpp"
#include "seal.hpp"

#include <tokenshm/expected.hpp>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace tokenshm::refresher {

// A refresh token a leadership sent without publishing the answer.
struct SentMark {
    std::uint64_t counter = 0;  // of the publication whose token it sent (0: none yet)
    std::string fingerprint;    // refresh_token_fingerprint() of the token sent
    std::string sent_by;        // "host H pid P", for messages
};

// What a new leader reads before it sends anything for a credential.
struct Continuation {
    std::optional<FetchedPublication> latest;
    std::optional<SentMark> sent;
};

class Fleet {
  public:
    // Loads the seal key (a config error naming the file when it is not one)
    // and makes the etcd client; `gateway` null: libcurl to cfg's endpoints.
    static Expected<std::unique_ptr<Fleet>, RefresherError> start(
        const CoordinationConfig& cfg, std::string host, std::int64_t pid,
        std::unique_ptr<EtcdGateway> gateway = nullptr);

    // One election step (Coordinator::tick); logs a change of role. True
    // when this host has just become the leader.
    bool tick(Now now);
    Role role() const noexcept { return coord_->role(); }
    bool leader() const noexcept { return coord_->role() == Role::leader; }
    std::int64_t next_tick_ms() const noexcept { return coord_->next_tick_ms(); }
    // Leader, and an answer to a request sent now is due before the lease
    // could end; when it is not, one keepalive out of turn (at most one a
    // second) may make it so.
    bool may_send(Now now, std::chrono::milliseconds timeout);
    std::chrono::milliseconds lease_ttl() const noexcept { return lease_ttl_; }
    const std::string& seal_key_file() const noexcept { return seal_key_file_; }

    // Leader.
    Expected<Continuation, CoordinationError> continuation(std::string_view name);
    Expected<Done, CoordinationError> mark_sent(std::string_view name, std::uint64_t counter,
                                                const Secret& refresh_token, Now now);
    Expected<std::uint64_t, CoordinationError> publish(std::string_view name, const Publication& p,
                                                       Now now);
    // A rescue offered for `name` (removed from etcd once read), or nullopt.
    Expected<std::optional<FetchedPublication>, CoordinationError> take_rescue(
        std::string_view name);

    // Design point 6: a host that is not the leader asks it to refresh `name`
    // through a request key, <prefix>/request/<name>/<host>:<pid> holding
    // {"counter":N}, N the newest publication that host has; the leader
    // reads them at most every leader_check and removes what it read.
    Expected<Done, CoordinationError> request_refresh(std::string_view name, std::uint64_t counter);
    // Leader: the credentials other hosts asked to refresh, each with the
    // newest counter a requester had (when due; empty otherwise).
    std::map<std::string, std::uint64_t> take_requests(Now now);

    // Follower: what was published since the last call. A watch of the
    // credentials' prefix delivers each publication as etcd applies it; when
    // there is none (the first call, a failed watch) every publication is
    // read (at most once a leader_check) and a watch starts from there.
    // nullopt: nothing new (or etcd failed: in status()).
    std::optional<FetchedAll> poll_publications(Now now);
    // The watch's sockets, for the daemon's wait (empty without a watch).
    std::vector<int> watch_fds();
    // Stops watching (this host leads: it publishes, it does not follow).
    void stop_watch() { watch_.reset(); }
    // A host holding a newer refresh token than etcd's offers it.
    Expected<Done, CoordinationError> offer_rescue(std::string_view name, std::uint64_t counter,
                                                   const Publication& p);

    // A clean stop: revokes the lease so a successor need not wait out the TTL.
    void resign();
    // This host cannot open what is in etcd (another seal key): it gives the
    // leadership up, and does not campaign for `for_ms`, so that a host that
    // can open it leads.
    void stand_aside(Now now, std::int64_t for_ms);

    CoordinatorStatus status(Now now) const { return coord_->status(now); }

  private:
    Fleet(std::unique_ptr<EtcdGateway> gateway, const EtcdConfig& etcd, SealKey key,
          Coordinator::Options options, std::string seal_key_file);
    std::optional<FetchedAll> watched(Now now);
    void start_watch(std::int64_t from_revision, Now now);
    std::string sent_key(std::string_view name) const;
    std::string rescue_key(std::string_view name) const;
    std::string request_prefix() const { return coord_->prefix() + "/request/"; }
    Expected<std::optional<SentMark>, CoordinationError> read_mark(std::string_view name);

    std::unique_ptr<EtcdGateway> gateway_;
    std::unique_ptr<EtcdClient> client_;
    SealKey key_;
    std::unique_ptr<Coordinator> coord_;
    std::string seal_key_file_;
    std::chrono::milliseconds lease_ttl_;
    std::chrono::milliseconds leader_check_;
    Role logged_role_ = Role::candidate;
    std::string logged_leader_;
    std::int64_t next_fetch_ms_ = 0;
    std::int64_t next_renew_ms_ = 0;
    std::int64_t next_requests_ms_ = 0;
    CurlEtcdGateway::Options watch_options_;
    std::unique_ptr<EtcdWatch> watch_;
    std::size_t watch_endpoint_ = 0;  // the next watch tries the next endpoint
    std::string host_;
    std::int64_t pid_ = 0;
};

}  // namespace tokenshm::refresher
