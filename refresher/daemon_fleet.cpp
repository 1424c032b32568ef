// The daemon's coordination across hosts (issue 12; fleet.hpp): only the
// leader sends token requests, each after marking in etcd the refresh token
// it sends; it publishes every change of a record there after its state
// directory and its segment; followers apply what it published into their
// own segment, with their own versions, and keep its refresh token so that
// any of them can continue the grant.
#include "daemon.hpp"

#include "log.hpp"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <climits>
#include <cstring>

namespace tokenshm::refresher {

namespace {
// How often a leader retries etcd for one credential after a failure.
constexpr std::int64_t kFleetRetryMs = 1000;
// A host that cannot open etcd's publications does not campaign this long.
constexpr std::int64_t kStandAsideMs = 30'000;

std::string this_host() {
    std::array<char, HOST_NAME_MAX + 1> name{};
    if (::gethostname(name.data(), name.size() - 1) != 0) {
        log_event(Level::warn, "", "coordination_error",
                  std::string("gethostname: ") + std::strerror(errno) + "; the leader key says ?");
        return "?";
    }
    return printable_line(name.data());
}
}  // namespace

Expected<Done, RefresherError> Daemon::start_fleet() {
    if (!cfg_.coordination) return Done{};
    std::unique_ptr<EtcdGateway> gateway;
    if (deps_.etcd_gateway) gateway = deps_.etcd_gateway();
    auto fleet = Fleet::start(*cfg_.coordination, deps_.host.empty() ? this_host() : deps_.host,
                              ::getpid(), std::move(gateway));
    if (!fleet) return Unexpected{fleet.error()};
    fleet_ = std::move(*fleet);
    log_event(Level::info, "", "coordination",
              "prefix=" + cfg_.coordination->etcd.prefix +
                  " lease_ttl_s=" + std::to_string(cfg_.coordination->etcd.lease_ttl.count()) +
                  "; no token request before this host leads");
    return Done{};
}

void Daemon::fleet_error(std::string_view cred, const std::string& message) {
    if (message == last_fleet_error_) return;  // said once until it changes
    last_fleet_error_ = message;
    log_event(Level::warn, cred, "coordination_error", message);
}

void Daemon::drive_fleet(Now now) {
    if (!fleet_) return;
    if (draining_) {
        // Stopping: no new request, but the lease is kept alive while the
        // answers in flight arrive, so that they can still be published.
        (void)fleet_->tick(now);
        return;
    }
    if (fleet_->tick(now)) {
        for (auto& [name, e] : entries_) {
            e.continued = false;
            e.held.reset();
            e.marked_fp.clear();
            e.fleet_retry_ms = 0;
            // What this host asked of the previous leader is now its own to do.
            if (!e.cred || !e.cred->in_flight()) e.refresh_asked = false;
        }
    }
    const CoordinatorStatus s = fleet_->status(now);
    if (!s.last_etcd_error.empty()) {
        fleet_error("", s.last_etcd_error);
    } else if (!last_fleet_error_.empty() && s.role != Role::unknown) {
        last_fleet_error_.clear();
        log_event(Level::info, "", "coordination_ok", "etcd answers again");
    }
    metrics_.coordination({to_string(s.role), s.leader ? s.leader->host : std::string(),
                           s.leader ? s.leader->pid : 0, s.lease_remaining_ms,
                           s.last_etcd_error.empty()});
    walk_all_ = true;  // whether a credential may send can change with each step
    if (fleet_->leader()) {
        fleet_->stop_watch();
        lead(now);
    } else {
        follow_publications(now);
    }
    // A publication wakes the loop at once, not at its next quarter second.
    if (control_) control_->set_watched_fds(fleet_->watch_fds());
}

void Daemon::lead(Now now) {
    serve_requests(now);
    for (auto& [name, e] : entries_) {
        if (!e.cred || now.mono_ms < e.fleet_retry_ms) continue;
        if (!e.continued)
            continue_from_etcd(name, e, now);
        else if (e.held || e.cred->in_reauth())
            take_rescue(name, e, now);
        if (!fleet_->leader()) return;  // deposed on the way
    }
}

// Refreshes other hosts asked for: one whose requester already had the
// newest publication is due now (refresh_soon: min_interval_s holds); an
// older one is answered by that publication, which it will see.
void Daemon::serve_requests(Now now) {
    for (const auto& [name, counter] : fleet_->take_requests(now)) {
        auto it = entries_.find(name);
        if (it == entries_.end() || !it->second.cred) continue;
        Entry& e = it->second;
        if (counter < e.etcd_counter || e.refresh_asked || e.cred->in_flight() ||
            e.cred->in_reauth())
            continue;  // a newer token is published, or a refresh is under way
        e.cred->refresh_soon(now);
        e.refresh_asked = true;
        log_event(Level::info, name, "refresh_asked", "by another host, through etcd");
    }
}

Expected<Done, CoordinationError> Daemon::forward_refresh(const std::string& name, Entry& e,
                                                          bool invalid) {
    auto r = fleet_->request_refresh(name, e.etcd_counter);
    if (!r) return r;
    e.refresh_asked = true;  // until the next publication arrives
    e.forwarded_ms = deps_.now().mono_ms;
    log_event(Level::info, name, invalid ? "invalid_reported" : "refresh_asked",
              "asked of the leader through etcd");
    return r;
}

// A new leadership: etcd's latest publication is newer than what this host
// has (unless this host holds its successor), and a refresh token another
// leadership marked sent is never sent again.
void Daemon::continue_from_etcd(const std::string& name, Entry& e, Now now) {
    auto c = fleet_->continuation(name);
    if (!c && c.error().kind == CoordinationError::Kind::publication) {
        // Another seal key, or a damaged publication: this host cannot
        // continue the grant, so it must not hold the leadership either.
        last_seal_error_ = c.error().message + " (is seal_key_file " + fleet_->seal_key_file() +
                           " the same on every host?)";
        log_event(Level::error, name, "seal_refused",
                  last_seal_error_ + "; standing aside as leader for " +
                      std::to_string(kStandAsideMs / 1000) + " s");
        fleet_->stand_aside(now, kStandAsideMs);
        return;
    }
    if (!c) {
        fleet_error(name, "reading etcd before leading: " + c.error().message);
        e.fleet_retry_ms = now.mono_ms + kFleetRetryMs;
        return;
    }
    if (c->latest && c->latest->counter > e.etcd_counter)
        apply_publication(name, e, *c->latest, now);
    if (c->latest) e.etcd_counter = std::max(e.etcd_counter, c->latest->counter);
    e.continued = true;
    const auto& rt = e.cred->refresh_token();
    if (c->sent && rt && refresh_token_fingerprint(rt->reveal()) == c->sent->fingerprint) {
        e.held = "held: the refresh token was sent by " + c->sent->sent_by +
                 ", whose answer never reached etcd; waiting for that host to offer its "
                 "successor (restart its refresher), or run tokenshm login";
    }
    if (e.held) log_event(Level::error, name, "held", *e.held);
}

// A person ran tokenshm login on this host while the fleet needs a token
// (the leader held or in reauth): the leader takes it at once; another host
// offers it to the leader as a rescue. A credential that works keeps its
// token (nullopt: the caller answers as on one host).
std::optional<std::string> Daemon::fleet_token_stored(const std::string& name, Entry& e) {
    if (!fleet_ || e.cred->in_flight()) return std::nullopt;
    if (fleet_->leader() && !e.held && !e.cred->in_reauth()) return std::nullopt;
    auto stored = store_->load(name);
    if (!stored || !*stored) return std::string("unchanged");
    Secret token = std::move(**stored);
    if ((e.cred->refresh_token() && token == *e.cred->refresh_token()) || spent_here(token))
        return std::string("unchanged");
    const Now now = deps_.now();
    const Published record = e.cred->published();
    if (fleet_->leader()) {
        applying_ = true;
        e.cred->follow(record, std::move(token), now);
        applying_ = false;
        e.held.reset();
        etcd_dirty_.insert(name);
        log_event(Level::info, name, "changed", "a new refresh token is in place; trying it");
        return std::string("loaded");
    }
    if (auto r = fleet_->offer_rescue(name, e.etcd_counter + 1, Publication{record, token}); !r) {
        fleet_error(name, "offering the stored refresh token: " + r.error().message);
        return std::string("unchanged");
    }
    log_event(Level::info, name, "rescue_offered", "the stored refresh token, to the leader");
    return std::string("offered");
}

void Daemon::take_rescue(const std::string& name, Entry& e, Now now) {
    e.fleet_retry_ms = now.mono_ms + kFleetRetryMs;
    auto r = fleet_->take_rescue(name);
    if (!r) {
        fleet_error(name, "reading a rescue: " + r.error().message);
        return;
    }
    if (!*r || !(*r)->publication.refresh_token) return;
    FetchedPublication& p = **r;
    if (spent_here(*p.publication.refresh_token) ||
        (e.cred->refresh_token() && *p.publication.refresh_token == *e.cred->refresh_token())) {
        log_event(Level::warn, name, "rescue_refused", "the offered refresh token is spent");
        return;
    }
    applying_ = true;
    e.cred->follow(p.publication.record, std::move(p.publication.refresh_token), now);
    applying_ = false;
    e.held.reset();
    etcd_dirty_.insert(name);  // the fleet learns it from this leadership
    log_event(Level::info, name, "rescued", "continuing the grant from the offered successor");
}

void Daemon::follow_publications(Now now) {
    for (auto& [name, e] : entries_)
        e.continued = false;
    etcd_dirty_.clear();  // only a leader publishes
    auto all = fleet_->poll_publications(now);
    if (!all) return;
    for (const CoordinationError& r : all->refused) {
        const std::string line = r.message + " (is seal_key_file " + fleet_->seal_key_file() +
                                 " the same on every host?)";
        if (line == last_seal_error_) continue;  // said once until it changes
        last_seal_error_ = line;
        log_event(Level::error, "", "seal_refused", line);
    }
    if (all->refused.empty() && !all->publications.empty()) last_seal_error_.clear();
    for (FetchedPublication& p : all->publications) {
        auto it = entries_.find(p.name);
        if (it == entries_.end() || !it->second.cred || p.counter <= it->second.etcd_counter)
            continue;
        apply_publication(p.name, it->second, p, now);
    }
}

// False when this host holds a newer refresh token than `p`'s (it spent
// p's): then a follower offers it as a rescue, a leader publishes its own.
bool Daemon::apply_publication(const std::string& name, Entry& e, FetchedPublication& p, Now now) {
    const auto& theirs = p.publication.refresh_token;
    const auto& ours = e.cred->refresh_token();
    if (theirs && ours && *theirs != *ours && spent_here(*theirs)) {
        e.etcd_counter = std::max(e.etcd_counter, p.counter);
        if (fleet_->leader()) {
            etcd_dirty_.insert(name);
        } else if (e.rescued != p.counter) {
            e.rescued = p.counter;
            const Publication mine{e.cred->published(), ours};
            if (auto r = fleet_->offer_rescue(name, p.counter + 1, mine); r)
                log_event(Level::warn, name, "rescue_offered",
                          "this host holds the successor of the refresh token in etcd (counter " +
                              std::to_string(p.counter) + "); offered to the leader");
            else
                fleet_error(name, "offering a rescue: " + r.error().message);
        }
        return false;
    }
    applying_ = true;
    e.cred->follow(p.publication.record, std::move(p.publication.refresh_token), now);
    applying_ = false;
    e.etcd_counter = p.counter;
    e.refresh_asked = false;  // what was asked of the leader has come, or something newer
    log_event(Level::info, name, "followed", "counter=" + std::to_string(p.counter));
    return true;
}

void Daemon::publish_to_etcd(Now now) {
    if (!fleet_ || etcd_dirty_.empty() || !fleet_->leader()) return;
    for (auto it = etcd_dirty_.begin(); it != etcd_dirty_.end();) {
        auto en = entries_.find(*it);
        if (en == entries_.end() || !en->second.cred) {
            it = etcd_dirty_.erase(it);
            continue;
        }
        Entry& e = en->second;
        if (!e.continued || now.mono_ms < e.fleet_retry_ms) {
            ++it;
            continue;
        }
        const Publication p{e.cred->published(), e.cred->refresh_token()};
        auto r = fleet_->publish(*it, p, now);
        if (!r) {
            fleet_error(*it, r.error().message);
            e.fleet_retry_ms = now.mono_ms + kFleetRetryMs;
            if (!fleet_->leader()) return;  // deposed, or unknown: a follower again
            ++it;
            continue;
        }
        e.etcd_counter = *r;
        log_event(Level::info, *it, "published_etcd", "counter=" + std::to_string(*r));
        it = etcd_dirty_.erase(it);
    }
}

std::optional<std::string> Daemon::fleet_hold(const std::string& name, const Entry& e, Now now) {
    if (!fleet_) return std::nullopt;
    switch (fleet_->role()) {
        case Role::follower:
            return "follower: the leader refreshes it and has not published a newer token";
        case Role::candidate:
        case Role::unknown:
            return "no leader (etcd unreachable, or an election under way): nobody refreshes";
        case Role::leader:
            break;
    }
    if (!e.continued) return "leader: reading etcd before the first refresh";
    if (e.held) return *e.held;
    if (etcd_dirty_.count(name)) return "leader: its last change is not in etcd yet";
    if (!fleet_->may_send(now, e.cred->config().timeout))
        return "leader: its lease could end before an answer (etcd keepalives failing)";
    return std::nullopt;
}

bool Daemon::mark_before_send(const std::string& name, Entry& e, Now now) {
    if (!fleet_ || !e.cred->sending_token() || !e.cred->refresh_token()) return true;
    std::string fp = refresh_token_fingerprint(e.cred->refresh_token()->reveal());
    if (fp == e.marked_fp) return true;
    auto r = fleet_->mark_sent(name, e.etcd_counter, *e.cred->refresh_token(), now);
    if (r) {
        e.marked_fp = std::move(fp);
        return true;
    }
    HttpResponse not_sent;
    not_sent.outcome = HttpResponse::Outcome::not_sent;
    not_sent.transport_error =
        "coordination: the send could not be marked in etcd (" + r.error().message + ")";
    e.cred->on_response(not_sent, now);
    return false;
}

bool Daemon::spent_here(const Secret& refresh_token) {
    auto spent = store_->spent_by(refresh_token_fingerprint(refresh_token.reveal()));
    if (!spent) {
        // Unknown: treat as spent, so nothing is sent or replaced on a guess.
        fleet_error("", "spent ledger: " + spent.error().message);
        return true;
    }
    return spent->has_value();
}

// A clean stop: what changed goes to etcd, then the lease is revoked, so a
// successor starts at once instead of after the TTL.
void Daemon::stop_fleet(Now now) {
    if (!fleet_) return;
    if (fleet_->leader()) {
        publish_to_etcd(now);
        fleet_->resign();
        log_event(Level::info, "", "role", "resigned: the lease is revoked");
    }
}

}  // namespace tokenshm::refresher
