// What the control socket's requests do (SPEC.md, "The control socket"):
//   {"op":"refresh","name":N}              refresh now (min_interval_s holds)
//   {"op":"invalid","name":N,"version":V}  a consumer got 401 with version V
//   {"op":"status"}                        the segment's view plus the loop's
//   {"op":"coordination"}                  the election on etcd, flat (role
//                                          "alone" when not coordinated)
//   {"op":"token_stored","name":N}         `tokenshm login` put a new refresh
//                                          token for N in the state directory
// Requests for one credential share one token request: while one is asked
// for or in flight, more asks join it. The answers never wait for the token:
// clients wait on the segment (Handle::wait) for the version after `version`.
#include "daemon.hpp"
#include "error.hpp"
#include "log.hpp"

#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <tokenshm/shm/names.hpp>

#include <unistd.h>

#include <algorithm>
#include <functional>

namespace tokenshm::refresher {

namespace {

using JsonWriter = rapidjson::Writer<rapidjson::StringBuffer>;

void put(JsonWriter& w, const char* key, std::string_view v) {
    w.Key(key);
    w.String(v.data(), static_cast<rapidjson::SizeType>(v.size()));
}
void put(JsonWriter& w, const char* key, std::int64_t v) {
    w.Key(key);
    w.Int64(v);
}
void put_u(JsonWriter& w, const char* key, std::uint64_t v) {
    w.Key(key);
    w.Uint64(v);
}
void put_b(JsonWriter& w, const char* key, bool v) {
    w.Key(key);
    w.Bool(v);
}

// The election as `status` and `coordination` answer it (no secret in it).
// `seal`: "ok", or why a publication does not open here (another seal key).
void put_coordination(JsonWriter& w, const CoordinatorStatus& c, const std::string& seal) {
    put(w, "role", to_string(c.role));
    put(w, "leader_host", c.leader ? c.leader->host : std::string());
    put(w, "leader_pid", c.leader ? c.leader->pid : 0);
    put(w, "lease_remaining_ms", c.lease_remaining_ms);
    put(w, "etcd", c.last_etcd_error.empty() ? std::string("ok") : c.last_etcd_error);
    put(w, "seal", seal.empty() ? std::string("ok") : seal);
}

// The parsed request, or the bad_request message.
struct Request {
    std::string op;
    std::string name;
    std::optional<std::uint64_t> version;
};

Expected<Request, std::string> parse_request(std::string_view line) {
    rapidjson::Document d;
    d.Parse<rapidjson::kParseStopWhenDoneFlag>(line.data(), line.size());
    if (d.HasParseError() || !d.IsObject()) return Unexpected{std::string("not a JSON object")};
    Request r;
    // Through a const reference: a non-const MemberIterator's != is ambiguous
    // in C++20 (clang's -Wambiguous-reversed-operator, an error in the fuzz build).
    const rapidjson::Value& obj = d;
    for (auto m = obj.MemberBegin(); m != obj.MemberEnd(); ++m) {
        const std::string_view key(m->name.GetString(), m->name.GetStringLength());
        if (key == "op" && m->value.IsString()) {
            r.op.assign(m->value.GetString(), m->value.GetStringLength());
        } else if (key == "name" && m->value.IsString()) {
            r.name.assign(m->value.GetString(), m->value.GetStringLength());
        } else if (key == "version" && m->value.IsUint64() && m->value.GetUint64() > 0) {
            r.version = m->value.GetUint64();
        } else {
            // The key is the client's bytes: quoted as printable ASCII, so the
            // answer stays valid UTF-8 JSON whatever they were.
            return Unexpected{quote(key, 40) + ": unknown key or wrong type"};
        }
    }
    if (r.op != "refresh" && r.op != "invalid" && r.op != "status" && r.op != "token_stored" &&
        r.op != "coordination")
        return Unexpected{
            std::string("\"op\" must be \"refresh\", \"invalid\", \"status\", "
                        "\"coordination\" or \"token_stored\"")};
    if (r.op != "status" && r.op != "coordination" && !shm::valid_credential_name(r.name))
        return Unexpected{std::string("\"name\" must be a credential name")};
    if ((r.op == "invalid") != r.version.has_value())
        return Unexpected{std::string(r.op == "invalid"
                                          ? "\"invalid\" needs \"version\" (1 or more)"
                                          : "\"version\" belongs to \"invalid\" only")};
    return r;
}

}  // namespace

std::string Daemon::control_answer(std::string_view line) {
    walk_all_ = true;  // a request may move a schedule (refresh, invalid, token_stored)
    auto req = parse_request(line);
    if (!req) return control_error("bad_request", req.error());
    if (req->op == "status") return answer_status();
    if (req->op == "coordination") return answer_coordination();
    if (draining_ || stop_) return control_error("busy", "the refresher is stopping");
    if (req->op == "token_stored") return answer_token_stored(req->name);
    return answer_refresh(req->name, req->version);
}

// After `tokenshm login`: a credential waiting for a person (reauth, or no
// refresh token yet) reads its refresh token from the state directory again,
// as SIGHUP would make it; one that works keeps the token it has (it may be
// newer than the stored one, and its next rotation replaces the file).
std::string Daemon::answer_token_stored(const std::string& name) {
    auto it = entries_.find(name);
    if (it == entries_.end() || !it->second.cred)
        return control_error("no_such_credential", "no credential called " + name);
    Entry& e = it->second;
    std::string action = "kept";
    if (auto fleet_action = fleet_token_stored(name, e)) {
        action = *fleet_action;
    } else if (e.cred->in_reauth() && !e.cred->in_flight()) {
        const CredentialRefresher* before = e.cred.get();
        e.pending = e.cred->config();
        e.reload_tokens = true;
        apply_pending(e);
        action = e.cred.get() != before ? "loaded" : "unchanged";
    }
    rapidjson::StringBuffer b;
    JsonWriter w(b);
    w.StartObject();
    put_b(w, "ok", true);
    put(w, "name", name);
    put(w, "action", action);
    w.EndObject();
    return b.GetString();
}

std::string Daemon::answer_refresh(const std::string& name, std::optional<std::uint64_t> invalid) {
    auto it = entries_.find(name);
    if (it == entries_.end() || !it->second.cred)
        return control_error("no_such_credential", "no credential called " + name);
    Entry& e = it->second;
    CredentialRefresher& cred = *e.cred;
    const Now now = deps_.now();
    if (invalid && *invalid > e.version)
        return control_error("bad_request", "version " + std::to_string(*invalid) +
                                                " was never published (current " +
                                                std::to_string(e.version) + ")");
    std::string action;
    if (invalid && *invalid < e.token_version) {
        action = "newer";  // the consumer had an older token: the current one is news
    } else if (fleet_ && !fleet_->leader()) {
        // Coordinated, not the leader: asked of the leader through etcd; the
        // new token comes back as a publication, as every other does.
        // Asked within a lease TTL and nothing published since: that ask stands.
        if (e.refresh_asked && now.mono_ms - e.forwarded_ms < fleet_lease_ms()) {
            action = "joined";
        } else if (auto fw = forward_refresh(name, e, invalid.has_value()); !fw) {
            return control_error(
                "busy", "the leader could not be asked through etcd: " + fw.error().message);
        } else {
            action = "refreshing";
        }
    } else if (cred.in_reauth()) {
        return control_error("reauth", name + " needs a new refresh token before it can refresh");
    } else if (cred.in_flight()) {
        action = "joined";
    } else if (e.refresh_asked) {
        action = cred.next_attempt_ms() > now.mono_ms ? "waiting" : "joined";
    } else {
        cred.refresh_soon(now);
        e.refresh_asked = true;
        action = cred.next_attempt_ms() > now.mono_ms ? "waiting" : "refreshing";
        log_event(
            Level::info, name, invalid ? "invalid_reported" : "refresh_asked",
            (invalid ? "version " + std::to_string(*invalid) + " rejected; " : std::string()) +
                (action == "waiting"
                     ? "refreshing in " + std::to_string(cred.next_attempt_ms() - now.mono_ms) +
                           " ms (min_interval_s)"
                     : std::string("refreshing now")));
    }
    const std::int64_t not_before =
        fleet_ && !fleet_->leader()
            ? now.unix_ms
            : now.unix_ms + std::max<std::int64_t>(0, cred.next_attempt_ms() - now.mono_ms);
    rapidjson::StringBuffer b;
    JsonWriter w(b);
    w.StartObject();
    put_b(w, "ok", true);
    put(w, "name", name);
    put_u(w, "version", e.version);
    put(w, "action", action);
    put(w, "not_before_unix_ms", action == "newer" ? now.unix_ms : not_before);
    w.EndObject();
    return b.GetString();
}

// Flat, for tokenshm status (the reader's parser reads flat objects only).
std::string Daemon::answer_coordination() {
    rapidjson::StringBuffer b;
    JsonWriter w(b);
    w.StartObject();
    put_b(w, "ok", true);
    if (!fleet_)
        put(w, "role", "alone");
    else
        put_coordination(w, fleet_->status(deps_.now()), last_seal_error_);
    w.EndObject();
    return b.GetString();
}

std::string Daemon::answer_status() {
    const Now now = deps_.now();
    rapidjson::StringBuffer b;
    JsonWriter w(b);
    w.StartObject();
    put_b(w, "ok", true);
    put(w, "segment", cfg_.segment);
    w.Key("refresher");
    w.StartObject();
    put(w, "pid", static_cast<std::int64_t>(::getpid()));
    put(w, "requests_in_flight", static_cast<std::int64_t>(deps_.transport->in_flight()));
    put_b(w, "stopping", draining_);
    w.EndObject();
    if (fleet_) {
        // SPEC's "tokenshm status" coordination line: role, leader, lease, etcd.
        w.Key("coordination");
        w.StartObject();
        put_coordination(w, fleet_->status(now), last_seal_error_);
        w.EndObject();
    }
    w.Key("credentials");
    w.StartArray();
    for (const auto& [name, e] : entries_) {
        if (!e.cred) continue;
        const Published& p = e.cred->published();
        const std::int64_t next = e.cred->next_attempt_ms() - now.mono_ms;
        w.StartObject();
        put(w, "name", name);
        put(w, "state", shm::to_string(p.state));
        put_u(w, "version", e.version);
        put(w, "expires_at_ms", p.expires_at_ms);
        put(w, "expires_in_ms",
            p.state == shm::RecordState::empty ? 0 : p.expires_at_ms - now.unix_ms);
        put(w, "issued_at_ms", p.issued_at_ms);
        put(w, "next_refresh_ms", p.next_refresh_ms);
        put(w, "last_attempt_ms", p.last_attempt_ms);
        put(w, "failures", static_cast<std::int64_t>(p.failures));
        put(w, "token_type", p.token_type);
        put(w, "scope", p.scope);
        put(w, "last_error", p.last_error);
        put_b(w, "in_flight", e.cred->in_flight());
        put_b(w, "refresh_asked", e.refresh_asked);
        put_b(w, "reauth", e.cred->in_reauth());
        if (fleet_) {
            put_u(w, "etcd_counter", e.etcd_counter);
            put(w, "held", e.held ? *e.held : std::string());
        }
        put(w, "next_attempt_unix_ms", now.unix_ms + std::max<std::int64_t>(0, next));
        put(w, "backoff_ms", p.failures > 0 ? std::max<std::int64_t>(0, next) : 0);
        w.EndObject();
    }
    w.EndArray();
    w.EndObject();
    return b.GetString();
}

void Daemon::service_control() {
    if (!control_) return;
    control_->service(deps_.now().mono_ms, [this](std::string_view line, const PeerCred&) {
        return control_answer(line);
    });
}

void Daemon::note_token(Entry& e, const shm::SlotRecord& r) {
    const std::size_t h = std::hash<std::string_view>{}(r.token);
    // The first publish after a start does not know which version first
    // carried its token: every version up to it counts as current.
    if (e.token_hash && *e.token_hash != h) e.token_version = r.version;
    e.token_hash = h;
}

}  // namespace tokenshm::refresher
