#include "credential.hpp"

#include "fault_point.hpp"
#include "log.hpp"
#include "secret_echoes.hpp"

#include <algorithm>
#include <limits>

namespace tokenshm::refresher {

namespace {
constexpr std::int64_t kPersistRetryMs = 1000;
// After this many consecutive failures a discovered endpoint is looked up again:
// the server may have moved it.
constexpr unsigned kRediscoverAfter = 3;
// A change of the wall offset beyond this is a step of the wall clock; below
// it, NTP's slewing and the gap between the two clock reads.
constexpr std::int64_t kWallStepMs = 1000;

// Times read from the segment are any int64 a previous writer (or a bug) left.
std::int64_t saturating_add(std::int64_t a, std::int64_t b) noexcept {
    std::int64_t r;
    if (!__builtin_add_overflow(a, b, &r)) return r;
    return b > 0 ? std::numeric_limits<std::int64_t>::max()
                 : std::numeric_limits<std::int64_t>::min();
}
std::int64_t saturating_sub(std::int64_t a, std::int64_t b) noexcept {
    std::int64_t r;
    if (!__builtin_sub_overflow(a, b, &r)) return r;
    return b < 0 ? std::numeric_limits<std::int64_t>::max()
                 : std::numeric_limits<std::int64_t>::min();
}

std::string seconds_text(std::int64_t ms) {
    return std::to_string((ms + 999) / 1000) + "s";
}
}  // namespace

shm::SlotRecord Published::record() const {
    shm::SlotRecord r;
    r.fields() = *this;
    r.token = access_token.reveal();
    r.token_type = token_type;
    r.scope = scope;
    r.last_error = last_error;
    return r;
}

Published Published::from(const shm::RecordView& v) {
    Published p;
    static_cast<shm::RecordFields&>(p) = v.fields();
    p.access_token = Secret(std::string(v.token));
    p.token_type = std::string(v.token_type);
    p.scope = std::string(v.scope);
    p.last_error = std::string(v.last_error);
    return p;
}

CredentialRefresher::CredentialRefresher(CredentialConfig cfg, std::size_t max_token_bytes,
                                         std::optional<Secret> refresh_token,
                                         PersistRefreshToken persist,
                                         std::function<double()> random01, RecordChanged on_change)
    : cfg_(std::move(cfg)),
      max_token_bytes_(max_token_bytes),
      refresh_token_(std::move(refresh_token)),
      persist_(std::move(persist)),
      random01_(std::move(random01)),
      backoff_(cfg_),
      on_change_(std::move(on_change)) {
    if (cfg_.token_endpoint) token_endpoint_ = cfg_.token_endpoint;
}

bool CredentialRefresher::resume(const Published& previous, Now now) {
    follow_wall_clock(now);
    // Unix times from the segment become monotonic deadlines once, here.
    const auto mono_of = [offset = *wall_offset_ms_](std::int64_t unix_ms) {
        return saturating_sub(unix_ms, offset);
    };
    const std::int64_t expires = mono_of(previous.expires_at_ms);
    if (previous.access_token.empty() || expires <= now.mono_ms) return false;
    pub_ = previous;
    pub_.last_error.clear();
    expires_at_ms_ = expires;
    if (pub_.state == shm::RecordState::reauth || pub_.state == shm::RecordState::expired)
        pub_.state = shm::RecordState::stale;
    // Refresh on the old schedule; a person may have fixed a rejected grant
    // before this restart, so a reauth record is retried once, now.
    next_attempt_ms_ =
        previous.state == shm::RecordState::valid && previous.next_refresh_ms > 0
            ? std::max(now.mono_ms, std::min(mono_of(previous.next_refresh_ms), expires))
            : now.mono_ms;
    pub_.next_refresh_ms = unix_of(next_attempt_ms_);
    changed();
    return true;
}

void CredentialRefresher::follow_wall_clock(Now now) {
    const std::int64_t offset = now.wall_offset_ms();
    if (!wall_offset_ms_) wall_offset_ms_ = offset;
    const std::int64_t step = offset - *wall_offset_ms_;
    if (step > -kWallStepMs && step < kWallStepMs) return;
    wall_offset_ms_ = offset;
    // The deadlines stand (they are monotonic); what readers compare with
    // their own wall clock moves with it, or a step forward would show them
    // a live token as expired, and a step back an expired one as live.
    bool moved = false;
    for (std::int64_t* t :
         {&pub_.expires_at_ms, &pub_.issued_at_ms, &pub_.next_refresh_ms, &pub_.last_attempt_ms}) {
        if (*t == 0) continue;  // a time the record never had stays "never"
        *t = saturating_add(*t, step);
        moved = true;
    }
    if (!moved) return;
    changed();
    // NTP's slewing adds up to a second now and then; a real step is news.
    const bool big = step >= 60'000 || step <= -60'000;
    log_event(big ? Level::warn : Level::info, cfg_.name, "wall_clock_step",
              "the wall clock moved " + std::string(step > 0 ? "forward" : "back") + " by " +
                  seconds_text(step > 0 ? step : -step) +
                  "; deadlines run on CLOCK_MONOTONIC, the published times follow the new wall "
                  "time");
}

std::int64_t CredentialRefresher::unix_of(std::int64_t mono_ms) const noexcept {
    return saturating_add(mono_ms, wall_offset_ms_.value_or(0));
}

std::int64_t CredentialRefresher::next_action_ms() const noexcept {
    std::int64_t t = next_persist_ms_;
    if (!in_flight() && !reauth_) t = std::min(t, next_attempt_ms_);
    // Only the states expire_if_due() moves on from: anything else would be a
    // past deadline forever, and the loop would spin on it.
    if (!pub_.access_token.empty() &&
        (pub_.state == shm::RecordState::valid || pub_.state == shm::RecordState::stale))
        t = std::min(t, expires_at_ms_);
    return t;
}

void CredentialRefresher::expire_if_due(std::int64_t now_ms) {
    if (pub_.access_token.empty() || expires_at_ms_ > now_ms) return;
    if (pub_.state == shm::RecordState::valid || pub_.state == shm::RecordState::stale) {
        pub_.state = shm::RecordState::expired;
        changed();
        log_event(Level::warn, cfg_.name, "expired",
                  "the last token expired; readers get 'expired' until a refresh succeeds");
    }
}

void CredentialRefresher::refresh_soon(Now now) {
    follow_wall_clock(now);
    reauth_ = false;
    next_attempt_ms_ =
        std::max({now.mono_ms, last_sent_ms_ + cfg_.min_interval.count() * 1000, not_before_ms_});
}

void CredentialRefresher::continue_after_reload(const CredentialRefresher& from, Now now) {
    pub_ = from.pub_;
    wall_offset_ms_ = from.wall_offset_ms_;
    expires_at_ms_ = from.expires_at_ms_;
    next_attempt_ms_ = from.next_attempt_ms_;
    last_sent_ms_ = from.last_sent_ms_;
    not_before_ms_ = from.not_before_ms_;
    backoff_.continue_from(from.backoff_);
    last_ok_ = from.last_ok_;
    follow_wall_clock(now);
    if (from.reauth_ && from.rt_refused_ && refresh_token_ == from.refresh_token_) {
        // Sending it again cannot help, and a strict server may count it as replay.
        reauth_ = rt_refused_ = true;
        log_event(Level::warn, cfg_.name, "reauth",
                  "settings changed, but the refresh token is still the one the server "
                  "rejected; run tokenshm login --config FILE " +
                      cfg_.name + ", or put a new one in refresh_token_file and send SIGHUP");
        return;
    }
    refresh_soon(now);
    pub_.next_refresh_ms = unix_of(next_attempt_ms_);
    changed();
}

std::optional<HttpRequest> CredentialRefresher::poll(Now now, const Hold* hold) {
    follow_wall_clock(now);
    const std::int64_t now_ms = now.mono_ms;
    expire_if_due(now_ms);

    if (unpersisted_ && now_ms >= next_persist_ms_) {
        if (auto r = persist_unsaved(); r) {
            log_event(Level::info, cfg_.name, "refresh_token_persisted",
                      "the rotated refresh token is on disk now");
        } else {
            next_persist_ms_ = now_ms + kPersistRetryMs;
        }
    }

    if (in_flight() || reauth_ || now_ms < next_attempt_ms_) return std::nullopt;
    if (hold) {
        hold_overdue(now_ms, *hold);
        return std::nullopt;
    }
    if (cfg_.grant == Grant::refresh_token && !refresh_token_) {
        fail(now_ms, FailureKind::reauth, no_token_reason_, std::nullopt, "reauth");
        return std::nullopt;
    }

    sent_at_ms_ = now_ms;
    pub_.last_attempt_ms = unix_of(now_ms);
    if (!token_endpoint_) {
        const auto urls = discovery_urls(*cfg_.issuer);
        in_flight_ = Request::discovery;
        return build_discovery_request(urls[discovery_index_ % urls.size()], cfg_);
    }
    auto request =
        build_token_request(cfg_, *token_endpoint_, refresh_token_ ? &*refresh_token_ : nullptr);
    if (!request) {
        fail(now_ms, FailureKind::reauth, request.error().message, std::nullopt, "reauth");
        return std::nullopt;
    }
    in_flight_ = Request::token;
    last_sent_ms_ = now_ms;
    return std::move(*request);
}

void CredentialRefresher::hold_overdue(std::int64_t now_ms, const Hold& hold) {
    if (pub_.state != shm::RecordState::valid || now_ms < next_attempt_ms_ + hold.grace_ms) return;
    pub_.state = shm::RecordState::stale;
    pub_.last_error = printable_line(hold.why);
    changed();
}

void CredentialRefresher::follow(const Published& record, std::optional<Secret> refresh_token,
                                 Now now) {
    follow_wall_clock(now);
    const auto mono_of = [offset = *wall_offset_ms_](std::int64_t unix_ms) {
        return saturating_sub(unix_ms, offset);
    };
    const std::uint64_t version = pub_.version;
    pub_ = record;
    pub_.version = version;
    expires_at_ms_ = record.access_token.empty() ? 0 : mono_of(record.expires_at_ms);
    next_attempt_ms_ = record.next_refresh_ms > 0
                           ? std::max(now.mono_ms, mono_of(record.next_refresh_ms))
                           : now.mono_ms;
    reauth_ = false;
    rt_refused_ = false;
    if (refresh_token) {
        response_at_ = std::chrono::steady_clock::now();
        adopt_refresh_token(std::move(*refresh_token), now.mono_ms);
    }
    changed();
}

void CredentialRefresher::on_response(const HttpResponse& response, Now now) {
    follow_wall_clock(now);
    const std::int64_t now_ms = now.mono_ms;
    const Request was = std::exchange(in_flight_, Request::none);
    response_at_ = std::chrono::steady_clock::now();
    if (was == Request::discovery) {
        auto ep = parse_discovery(response, *cfg_.issuer);
        if (ep) {
            token_endpoint_ = *ep;
            discovery_index_ = 0;
            log_event(Level::info, cfg_.name, "discovered", "token_endpoint=" + ep->text());
            next_attempt_ms_ = now_ms;  // go straight on to the token request
            return;
        }
        const auto urls = discovery_urls(*cfg_.issuer);
        ++discovery_index_;
        if (discovery_index_ % urls.size() != 0) {
            // Try the other well-known document before counting a failure.
            log_event(Level::info, cfg_.name, "discovery_next", ep.error().message);
            next_attempt_ms_ = now_ms;
            return;
        }
        fail(now_ms, FailureKind::retry, "discovery failed: " + ep.error().message, std::nullopt,
             "discovery_failed");
        return;
    }
    if (was != Request::token) return;

    TokenOutcome out = parse_token_response(response, cfg_.default_lifetime, max_token_bytes_,
                                            [this](std::string s) { return redact(std::move(s)); });
    if (out.ok()) {
        succeed(out.success(), now_ms);
        return;
    }
    TokenFailure& f = out.failure();
    if (f.refresh_token) adopt_refresh_token(std::move(*f.refresh_token), now_ms);
    std::optional<std::chrono::milliseconds> retry_after;
    if (response.retry_after) retry_after = parse_retry_after(*response.retry_after, now.unix_ms);
    fail(now_ms, f.kind, f.message, retry_after,
         f.kind == FailureKind::reauth ? "reauth" : "refresh_failed", f.oauth_error);
}

bool CredentialRefresher::adopt_refresh_token(Secret token, std::int64_t now_ms) {
    if (refresh_token_ && token == *refresh_token_) return false;
    fault_point(FaultPoint::after_response_before_rename);
    // The successor goes to disk before the new access token is published.
    // Whatever happens next, it replaces the old one in memory: the old one
    // is spent, and using it again would make the server revoke the grant.
    // The old one's fingerprint is ledgered once the successor is saved.
    if (refresh_token_)
        spent_unledgered_.push_back(refresh_token_fingerprint(refresh_token_->reveal()));
    unpersisted_ = token;
    unpersisted_response_at_ = response_at_;
    if (auto r = persist_unsaved(); !r) {
        log_event(Level::error, cfg_.name, "persist_failed",
                  "could not save the rotated refresh token (" + r.error().message +
                      "); keeping it in memory and retrying every second");
        next_persist_ms_ = now_ms + kPersistRetryMs;
    }
    refresh_token_ = std::move(token);
    return true;
}

Expected<Done, RefresherError> CredentialRefresher::persist_unsaved() {
    if (!unpersisted_) return Done{};
    const Rotation rotation{unpersisted_response_at_, spent_unledgered_};
    if (auto r = persist_(cfg_.name, *unpersisted_, rotation); !r) return r;
    unpersisted_.reset();
    unpersisted_response_at_.reset();
    spent_unledgered_.clear();
    next_persist_ms_ = kNever;
    return Done{};
}

Expected<Done, RefresherError> CredentialRefresher::flush_refresh_token() {
    if (!unpersisted_) return Done{};
    if (auto r = persist_unsaved(); !r) {
        log_event(Level::error, cfg_.name, "persist_failed",
                  "the rotated refresh token is still not saved (" + r.error().message +
                      "); it is lost if this process ends before a save succeeds");
        return r;
    }
    log_event(Level::info, cfg_.name, "refresh_token_persisted",
              "the rotated refresh token is on disk now");
    return Done{};
}

void CredentialRefresher::inherit_unsaved(CredentialRefresher& from, std::int64_t now_ms) {
    if (!from.unpersisted_) return;
    unpersisted_ = std::move(from.unpersisted_);
    from.unpersisted_.reset();
    unpersisted_response_at_ = std::exchange(from.unpersisted_response_at_, std::nullopt);
    spent_unledgered_ = std::exchange(from.spent_unledgered_, {});
    next_persist_ms_ = now_ms;
}

std::string CredentialRefresher::redact(std::string msg) const {
    // Verbatim, form-encoded and Base64 (secret_echoes.hpp).
    SecretEchoes echoes;
    if (refresh_token_) echoes.add(refresh_token_->reveal());
    if (unpersisted_) echoes.add(unpersisted_->reveal());
    echoes.add_basic_pair(cfg_.client_id, cfg_.client_secret.reveal());
    echoes.add(pub_.access_token.reveal());
    return echoes.redact(std::move(msg));
}

void CredentialRefresher::succeed(TokenSuccess& s, std::int64_t now_ms) {
    bool rotated = false;
    if (s.refresh_token) rotated = adopt_refresh_token(std::move(*s.refresh_token), now_ms);
    const bool persisted = !unpersisted_;
    fault_point(FaultPoint::after_rename_before_publish);

    const std::int64_t expires_at = sent_at_ms_ + s.expires_in.count() * 1000;
    pub_.state = shm::RecordState::valid;
    pub_.access_token = std::move(s.access_token);
    pub_.token_type = s.token_type;
    pub_.scope = s.scope ? *s.scope : (cfg_.scope ? *cfg_.scope : std::string());
    pub_.issued_at_ms = unix_of(sent_at_ms_);
    pub_.expires_at_ms = unix_of(expires_at);
    expires_at_ms_ = expires_at;
    pub_.failures = 0;
    pub_.last_error =
        persisted ? std::string() : "rotated refresh token not yet saved to state_dir";
    next_attempt_ms_ = next_refresh_at_ms(sent_at_ms_, expires_at, cfg_, random01_());
    pub_.next_refresh_ms = unix_of(next_attempt_ms_);
    backoff_.reset();
    reauth_ = rt_refused_ = false;
    // --once also needs the successor saved: Daemon::save_unsaved_before_exit checks that.
    last_ok_ = true;
    changed();
    log_event(Level::info, cfg_.name, "refreshed",
              "expires_in=" + seconds_text(expires_at - now_ms) + " next_refresh_in=" +
                  seconds_text(next_attempt_ms_ - now_ms) + " rotated=" + (rotated ? "yes" : "no"));
}

void CredentialRefresher::fail(std::int64_t now_ms, FailureKind kind,
                               const std::string& raw_message,
                               std::optional<std::chrono::milliseconds> retry_after,
                               const std::string& event, const std::string& oauth_error) {
    // Servers sometimes quote what they were sent in error_description.
    const std::string message = redact(raw_message);
    last_ok_ = false;
    pub_.failures += 1;
    pub_.last_error = message;
    if (kind == FailureKind::reauth) {
        reauth_ = true;
        rt_rejected_ = cfg_.grant == Grant::refresh_token && oauth_error == "invalid_grant";
        rt_refused_ = rt_rejected_;
        pub_.state = shm::RecordState::reauth;
        pub_.next_refresh_ms = 0;
        changed();
        log_event(Level::error, cfg_.name, event,
                  message +
                      "; no more attempts until the config is reloaded or the refresher "
                      "restarted");
        return;
    }
    if (cfg_.issuer && token_endpoint_ && !cfg_.token_endpoint &&
        backoff_.failures() + 1 >= kRediscoverAfter)
        token_endpoint_.reset();  // look the endpoint up again next time
    const std::int64_t delay = schedule_retry(now_ms, retry_after);
    if (has_live_token(now_ms))
        pub_.state = shm::RecordState::stale;
    else if (!pub_.access_token.empty())
        pub_.state = shm::RecordState::expired;
    changed();
    log_event(Level::warn, cfg_.name, event,
              pub_.last_error + "; failures=" + std::to_string(pub_.failures) +
                  " retry_in=" + seconds_text(delay));
}

std::int64_t CredentialRefresher::schedule_retry(
    std::int64_t now_ms, std::optional<std::chrono::milliseconds> retry_after) {
    const RetryDelay retry = retry_delay(backoff_, retry_after, random01_());
    std::string asked;
    if (retry_after)
        asked = "the server asked to wait " +
                seconds_text((retry.capped_from ? *retry.capped_from : retry.server_wait).count()) +
                " (Retry-After)";
    if (retry.capped_from)
        log_event(
            Level::warn, cfg_.name, "retry_after_capped",
            asked + "; waiting max_backoff_s=" + seconds_text(backoff_.max().count()) + " instead");
    next_attempt_ms_ = now_ms + retry.delay.count();
    not_before_ms_ = now_ms + retry.server_wait.count();
    pub_.next_refresh_ms = unix_of(next_attempt_ms_);
    // Honoured, but readers and the status table must see why the token will
    // run out with no attempt to replace it.
    if (retry.server_wait.count() > 0 && has_live_token(now_ms) && not_before_ms_ > expires_at_ms_)
        pub_.last_error =
            asked +
            (retry.capped_from
                 ? ", capped at max_backoff_s " + seconds_text(retry.server_wait.count())
                 : std::string()) +
            "; the current token expires in " + seconds_text(expires_at_ms_ - now_ms) +
            ", before that; " + pub_.last_error;
    return retry.delay.count();
}

}  // namespace tokenshm::refresher
