// Coordinator: one refresher per grant across hosts (issue 12, design points
// 3, 4 and 5): a lease kept alive, a leader key won by a transaction, and the
// leader's publications guarded by that key. Synchronous and driven by its
// caller: each loop iteration calls tick() with the time (clock.hpp) and
// asks may_refresh() before sending a token request; no thread, no sleep, so
// every branch is tested with a fake clock and canned etcd answers.
//
// Keys under the configured prefix:
//     <prefix>/leader       {"host":..,"pid":..,"lease":".."}, put with the
//                           leader's lease: it goes when the lease does
//     <prefix>/cred/<name>  the sealed publication (publication.hpp)
// A leadership is identified by the leader key's create_revision: every
// publication compares it, so a deposed leader's write fails instead of
// overwriting its successor's.
//
// Why may_refresh() is conservative: the lease may expire on etcd's side
// `ttl` after etcd received the last keepalive, which is after we SENT it.
// Counting from the send time, a request that starts now and takes up to its
// timeout ends before any successor can have won, with `margin` to spare.
//
// Outcomes that may or may not have been applied (no_answer) are never
// assumed either way: the role becomes `unknown` and the next tick reads
// the leader key to learn which it was.
#pragma once

#include "clock.hpp"
#include "etcd_client.hpp"
#include "publication.hpp"
#include "seal.hpp"

#include <tokenshm/expected.hpp>

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace tokenshm::refresher {

enum class Role {
    candidate,  // no lease yet, or no leader known: campaigning
    leader,     // holds the leader key: may refresh (see may_refresh) and publish
    follower,   // another holds the leader key: never calls the token endpoint
    unknown,    // a write's outcome is unknown; the next tick finds out
};
const char* to_string(Role role) noexcept;

// Who holds the leader key (its value, no secrets).
struct LeaderIdentity {
    std::string host;
    std::int64_t pid = 0;
    std::int64_t lease = 0;
    std::int64_t create_revision = 0;  // the leadership's identity
};

struct CoordinationError {
    enum class Kind {
        etcd,         // etcd refused or could not be reached: nothing was written
        deposed,      // the leader key is no longer ours: stepped down
        unknown,      // sent, no answer: it may have been applied; stepped down until known
        not_leader,   // publish() while not leader: nothing sent
        publication,  // an envelope that does not open or is malformed (publication.hpp)
    };
    Kind kind;
    std::string message;                                     // one line, never a value
    std::optional<PublicationError::Kind> publication_kind;  // for Kind::publication
};
const char* to_string(CoordinationError::Kind kind) noexcept;

// One credential's publication as found in etcd.
struct FetchedPublication {
    std::string name;
    std::uint64_t counter = 0;
    std::int64_t mod_revision = 0;  // etcd's: grows with every publication of it
    Publication publication;
};

// Every publication under the prefix: those that opened, and one error per
// credential whose envelope did not (one bad envelope does not hide the rest).
struct FetchedAll {
    std::vector<FetchedPublication> publications;  // sorted by name (etcd's key order)
    std::vector<CoordinationError> refused;
    std::int64_t revision = 0;  // etcd's when it answered: a watch goes on from the next
};

// For `tokenshm status` and metrics (design point 7).
struct CoordinatorStatus {
    Role role = Role::candidate;
    std::optional<LeaderIdentity> leader;  // last seen; ours when leader
    std::int64_t lease_id = 0;             // 0: none
    std::int64_t lease_remaining_ms = 0;   // counted from the last keepalive's send time
    std::string last_etcd_error;           // empty after a success
};

class Coordinator {
  public:
    struct Options {
        std::string prefix;  // "/..." without a trailing "/" (the config checks it)
        std::chrono::seconds lease_ttl{15};
        std::string host;  // this host's name, in the leader key
        std::int64_t pid = 0;
        std::chrono::milliseconds margin{1000};        // may_refresh's spare time
        std::chrono::milliseconds leader_check{1000};  // a follower reads the leader key this often
    };

    // `etcd` and `key` must outlive the coordinator.
    Coordinator(EtcdClient& etcd, const SealKey& key, Options options);

    // One step: grants a lease when there is none, keeps it alive when a
    // third of its TTL passed since the last successful keepalive (a lease
    // gone, or failing past its TTL, ends leadership at once), campaigns when
    // no leader is known or the leader key went. Not leader, it reads the
    // leader key at most every leader_check (at once after a step down); a
    // failed call is retried after leader_check, so a caller that sleeps
    // until next_tick_ms() never spins while etcd is down. Returns the role.
    Role tick(Now now);
    // When tick() next has something to do (CLOCK_MONOTONIC ms).
    std::int64_t next_tick_ms() const noexcept;

    // Leader, and a request of `request_timeout` sent now ends before the
    // lease could expire: (now - last keepalive sent) + timeout + margin < TTL.
    bool may_refresh(Now now, std::chrono::milliseconds request_timeout) const noexcept;
    // A keepalive now, out of turn (a leader about to send whose lease has
    // too little left for the request); nothing without a lease.
    void renew(Now now) {
        if (lease_id_ != 0) keep_alive(now);
    }

    // Publishes `p` for credential `name`, sealed, with the next counter, in
    // one transaction guarded by our leader key's create_revision. Returns
    // the counter used. Lost compare: deposed; no answer: unknown. Either way
    // leadership ends at once.
    Expected<std::uint64_t, CoordinationError> publish(std::string_view name, const Publication& p,
                                                       Now now);

    // Puts `value` under `key` in one transaction guarded by our leader key's
    // create_revision, as publish() does (the sent marks, fleet.hpp). Errors
    // as publish(): deposed and unknown end leadership at once.
    Expected<Done, CoordinationError> put_guarded(const std::string& key, std::string_view value,
                                                  Now now);
    // One key's value (nullopt: absent), and its removal; unguarded.
    Expected<std::optional<EtcdKeyValue>, CoordinationError> get(const std::string& key);
    Expected<Done, CoordinationError> erase(const std::string& key);
    // Every key under `prefix`, and a removal that happens only if the key
    // was not written since `mod_revision` (a request asked again stays).
    Expected<EtcdRange, CoordinationError> list(const std::string& prefix);
    Expected<Done, CoordinationError> erase_unchanged(const std::string& key,
                                                      std::int64_t mod_revision);
    Expected<Done, CoordinationError> put(const std::string& key, std::string_view value);
    const std::string& prefix() const noexcept { return opt_.prefix; }

    // The publication of `name` (nullopt when there is none), or of every
    // credential under the prefix, opened with the seal key. A follower
    // publishes them into its segment; a new leader continues from them.
    Expected<std::optional<FetchedPublication>, CoordinationError> fetch(std::string_view name);
    Expected<FetchedAll, CoordinationError> fetch_all();
    // Opens what a watch of the credentials' prefix delivered (a put of one
    // credential's key); nullopt for what is not one (another key, a delete).
    std::optional<Expected<FetchedPublication, CoordinationError>> open_event(
        const EtcdKeyValue& kv) const;
    std::string credentials_prefix() const { return cred_prefix_; }

    // Revokes our lease (the leader key goes with it): a clean shutdown's
    // hand-over, so a successor need not wait out the TTL.
    Expected<Done, CoordinationError> resign();
    // Follows, and does not campaign, until `until_ms` (CLOCK_MONOTONIC): a
    // host that cannot open what is published must not hold the leadership.
    void stand_aside_until(std::int64_t until_ms) noexcept { no_campaign_until_ms_ = until_ms; }

    CoordinatorStatus status(Now now) const;
    Role role() const noexcept { return role_; }
    const std::string& leader_key() const noexcept { return leader_key_; }
    std::string credential_key(std::string_view name) const;

  private:
    void grant(Now now);
    void keep_alive(Now now);
    void campaign();
    bool read_leader();  // false: etcd did not answer, nothing learnt
    void lose_lease();
    void step_down(Role to);
    std::string leader_value() const;
    Expected<std::uint64_t, CoordinationError> next_counter(std::string_view name);
    void note(const EtcdError& e);

    EtcdClient& etcd_;
    const SealKey& key_;
    Options opt_;
    std::string leader_key_;
    std::string cred_prefix_;

    Role role_ = Role::candidate;
    std::int64_t lease_id_ = 0;
    std::int64_t lease_ttl_ms_ = 0;
    std::int64_t keepalive_sent_ms_ = 0;  // the last SUCCESSFUL keepalive's (or grant's) send time
    std::int64_t next_keepalive_ms_ = 0;  // a third of the TTL on, or a retry after a failure
    std::int64_t next_check_ms_ = 0;  // the next read of the leader key (or grant) when not leader
    std::optional<LeaderIdentity> leader_;
    std::map<std::string, std::uint64_t, std::less<>> counters_;  // last published, this leadership
    std::string last_error_;
    std::int64_t no_campaign_until_ms_ = 0;
};

}  // namespace tokenshm::refresher
