// CredentialRefresher: the life of one credential as a state machine, driven
// by the daemon loop with the time passed in and HTTP responses handed back.
// It never sleeps, never touches the network or the segment itself, so the
// schedule and the failure policy are unit-tested with a fake clock.
//
// Time: every deadline it keeps (next attempt, min_interval_s, backoff,
// Retry-After, the token's expiry, persist retries) is CLOCK_MONOTONIC ms;
// what it publishes is Unix ms, each instant projected through one wall
// offset (unix - monotonic). When the wall clock is stepped, the offset
// follows and the published times are re-expressed in the new wall time, so
// expires_at - (a reader's now) stays the token's real remaining lifetime.
//
//   empty --ok--> valid --refresh fails--> stale --expires--> expired
//     ^             ^  \--ok--------------------/                |
//     |             +--------------------ok----------------------+
//   any --invalid_grant/invalid_client/unauthorized_client--> reauth (no more requests)
#pragma once

#include "clock.hpp"
#include "config.hpp"
#include "oauth.hpp"
#include "schedule.hpp"
#include "secret.hpp"
#include "state_store.hpp"
#include "transport.hpp"

#include <tokenshm/shm/record.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace tokenshm::refresher {

inline constexpr std::int64_t kNever = std::numeric_limits<std::int64_t>::max();

// What the slot should show: the segment's record fields (`version` is the
// daemon's to set when it publishes) and the strings, owned, the token kept
// a Secret. The credential reports every change through its RecordChanged.
struct Published : shm::RecordFields {
    Secret access_token;
    std::string token_type;
    std::string scope;
    std::string last_error;

    // The record to hand to WriterSegment::publish; its views point into *this.
    shm::SlotRecord record() const;
    // An owned copy of a record read from the segment.
    static Published from(const shm::RecordView& v);
};

// Told, by the credential itself, each time what it publishes changed.
using RecordChanged = std::function<void()>;

// Where rotated refresh tokens go; the daemon passes the StateStore. The
// Rotation says when the response came and which tokens the successor makes
// spent (to be ledgered once it is saved).
using PersistRefreshToken = std::function<Expected<Done, RefresherError>(
    std::string_view name, const Secret& token, const Rotation& rotation)>;

class CredentialRefresher {
  public:
    CredentialRefresher(CredentialConfig cfg, std::size_t max_token_bytes,
                        std::optional<Secret> refresh_token, PersistRefreshToken persist,
                        std::function<double()> random01, RecordChanged on_change = {});

    const CredentialConfig& config() const noexcept { return cfg_; }
    const std::string& name() const noexcept { return cfg_.name; }

    // Adopts what a previous refresher left in the slot: a token that has not
    // expired keeps being served and is refreshed on its old schedule. Its
    // Unix times are turned into monotonic deadlines once, here. True when
    // the previous token is served.
    bool resume(const Published& previous, Now now);

    // When the machine next wants to act, in CLOCK_MONOTONIC ms (a request is
    // due, a token expires, a persist must be retried); kNever when it waits
    // for a person.
    std::int64_t next_action_ms() const noexcept;
    bool in_flight() const noexcept { return in_flight_ != Request::none; }
    // When the next request may go out (CLOCK_MONOTONIC ms), whatever the
    // state: the control socket tells clients (not_before_unix_ms, status).
    std::int64_t next_attempt_ms() const noexcept { return next_attempt_ms_; }

    // Why a credential may not send now (coordination: this host is not the
    // leader, or its lease is too short), and how long past its refresh time
    // it stays `valid` before it shows `stale` with `why` as its last error.
    struct Hold {
        std::string_view why;
        std::int64_t grace_ms = 0;
    };
    // Updates time-driven state (expiry) and returns the request to send now,
    // if one is due and `hold` is null. The caller must hand the response to
    // on_response().
    std::optional<HttpRequest> poll(Now now, const Hold* hold = nullptr);
    // A token request (not discovery) is in flight.
    bool sending_token() const noexcept { return in_flight_ == Request::token; }
    // Coordination, a follower: serves what the leader published (its record,
    // `record.version` aside) on the leader's schedule, and takes its refresh
    // token (saved like a rotation; the one it replaces is spent), so that
    // it can continue the grant if it leads one day.
    void follow(const Published& record, std::optional<Secret> refresh_token, Now now);
    void on_response(const HttpResponse& response, Now now);

    // Refresh as soon as allowed: not before min_interval_s after the last
    // request, nor before a Retry-After the server gave (--once, a changed
    // credential). Leaves reauth.
    void refresh_soon(Now now);

    // What the slot should show; on_change (from the constructor) is called
    // whenever it changes.
    const Published& published() const noexcept { return pub_; }
    // The refresh token in use (to carry it over when a reload replaces this
    // credential), and whether it is still only in memory.
    const std::optional<Secret>& refresh_token() const noexcept { return refresh_token_; }
    // The server rejected the refresh token itself (invalid_grant): the daemon
    // sets the persisted copy aside. Cleared by take_refresh_token_rejected().
    bool take_refresh_token_rejected() noexcept { return std::exchange(rt_rejected_, false); }
    bool in_reauth() const noexcept { return reauth_; }
    // A received refresh token that could not be saved yet.
    bool has_unsaved_refresh_token() const noexcept { return unpersisted_.has_value(); }
    // Fingerprints of the tokens it replaced: spent, not yet in the ledger.
    const std::vector<std::string>& spent_unledgered() const noexcept { return spent_unledgered_; }
    // One more attempt to save it (at shutdown, and --once's retries); done
    // when nothing is unsaved, else the save's error.
    Expected<Done, RefresherError> flush_refresh_token();
    // The credential starts without a usable refresh token (the one it would
    // use is spent): the reauth it goes to says `why`.
    void set_no_refresh_token_reason(std::string why) { no_token_reason_ = std::move(why); }
    // A reload replaces this credential: take over its unsaved refresh token
    // (`now_ms` monotonic).
    void inherit_unsaved(CredentialRefresher& from, std::int64_t now_ms);
    // A reload rebuilt this credential from `from` (its settings changed, or a
    // person put a new refresh token in place): the record, the deadlines,
    // min_interval_s, Retry-After and the backoff's failure count go on, so a
    // reload buys no request the schedule would not have made. Then it
    // refreshes as soon as those allow (refresh_soon), except that a
    // credential in reauth because the server rejected its refresh token
    // stays in reauth while that is still the token it has.
    void continue_after_reload(const CredentialRefresher& from, Now now);
    // Whether the last completed attempt obtained a token (for --once).
    std::optional<bool> last_attempt_ok() const noexcept { return last_ok_; }

  private:
    enum class Request { none, discovery, token };

    // Private members take `now_ms` on CLOCK_MONOTONIC.
    void fail(std::int64_t now_ms, FailureKind kind, const std::string& raw_message,
              std::optional<std::chrono::milliseconds> retry_after, const std::string& event,
              const std::string& oauth_error = {});
    // After a failure: the next attempt, from the backoff and Retry-After; says
    // so in last_error when the server's wait runs past the token's expiry.
    // Returns the delay.
    std::int64_t schedule_retry(std::int64_t now_ms,
                                std::optional<std::chrono::milliseconds> retry_after);
    void succeed(TokenSuccess& s, std::int64_t now_ms);
    // Takes a rotated refresh token: to disk first, and into use whatever
    // happens. True when it differs from the one in use.
    bool adopt_refresh_token(Secret token, std::int64_t now_ms);
    // Saves the unsaved successor with the spent tokens it replaces.
    Expected<Done, RefresherError> persist_unsaved();
    // `msg` with every secret this credential knows replaced by [redacted].
    std::string redact(std::string msg) const;
    void expire_if_due(std::int64_t now_ms);
    // Held past its refresh time by more than the hold's grace: `stale`.
    void hold_overdue(std::int64_t now_ms, const Hold& hold);
    // Notices a step of the wall clock and re-expresses what is published.
    void follow_wall_clock(Now now);
    // The Unix ms to publish for a monotonic instant.
    std::int64_t unix_of(std::int64_t mono_ms) const noexcept;
    void changed() {
        if (on_change_) on_change_();
    }
    bool has_live_token(std::int64_t now_ms) const noexcept {
        return !pub_.access_token.empty() && expires_at_ms_ > now_ms;
    }

    CredentialConfig cfg_;
    std::size_t max_token_bytes_;
    std::optional<Secret> refresh_token_;
    PersistRefreshToken persist_;
    std::function<double()> random01_;
    Backoff backoff_;

    std::optional<EndpointUrl> token_endpoint_;  // configured or discovered
    std::size_t discovery_index_ = 0;
    Request in_flight_ = Request::none;
    // CLOCK_MONOTONIC ms, all of them; pub_ holds their Unix projections.
    std::int64_t sent_at_ms_ = 0;
    std::int64_t expires_at_ms_ = 0;  // the served token's expiry
    std::int64_t next_attempt_ms_ = 0;
    std::int64_t last_sent_ms_ = std::numeric_limits<std::int64_t>::min() / 2;
    std::int64_t not_before_ms_ = 0;  // the server's Retry-After runs until then
    bool reauth_ = false;
    bool rt_rejected_ = false;
    bool rt_refused_ = false;  // refresh_token_ is the one the server rejected (invalid_grant)
    std::optional<Secret> unpersisted_;  // a received refresh token not yet on disk
    // Fingerprints of the tokens unpersisted_ replaced: ledgered with its save.
    std::vector<std::string> spent_unledgered_;
    // When the last token response was handed over, and the one unpersisted_ came in.
    std::chrono::steady_clock::time_point response_at_{};
    std::optional<std::chrono::steady_clock::time_point> unpersisted_response_at_;
    std::string no_token_reason_ =
        "no refresh token: run tokenshm login --config FILE NAME, or put one in "
        "refresh_token_file and send SIGHUP";
    std::int64_t next_persist_ms_ = kNever;
    // Unix minus monotonic, as pub_'s times were computed; unset before the first Now.
    std::optional<std::int64_t> wall_offset_ms_;
    std::optional<bool> last_ok_;

    Published pub_;
    RecordChanged on_change_;
};

}  // namespace tokenshm::refresher
