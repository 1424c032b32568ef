#include "coordinator.hpp"

#include "error.hpp"

#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <algorithm>
#include <charconv>
#include <utility>

namespace tokenshm::refresher {

const char* to_string(Role role) noexcept {
    switch (role) {
        case Role::candidate:
            return "candidate";
        case Role::leader:
            return "leader";
        case Role::follower:
            return "follower";
        case Role::unknown:
            return "unknown";
    }
    return "unknown";
}

const char* to_string(CoordinationError::Kind kind) noexcept {
    switch (kind) {
        case CoordinationError::Kind::etcd:
            return "etcd";
        case CoordinationError::Kind::deposed:
            return "deposed";
        case CoordinationError::Kind::unknown:
            return "unknown";
        case CoordinationError::Kind::not_leader:
            return "not_leader";
        case CoordinationError::Kind::publication:
            return "publication";
    }
    return "unknown";
}

namespace {

using CKind = CoordinationError::Kind;

Unexpected<CoordinationError> fail(CKind kind, std::string_view message) {
    return Unexpected{CoordinationError{kind, printable_line(message), std::nullopt}};
}

CoordinationError refused(const PublicationError& e) {
    return CoordinationError{CKind::publication, e.message, e.kind};
}

Unexpected<CoordinationError> fail(const PublicationError& e) {
    return Unexpected{refused(e)};
}

// The leader key's value as another host wrote it; what cannot be read stays
// empty (the key still names a leader: its lease and create_revision count).
LeaderIdentity read_identity(const EtcdKeyValue& kv) {
    LeaderIdentity id{{}, 0, kv.lease, kv.create_revision};
    rapidjson::Document d;
    d.Parse(kv.value.data(), kv.value.size());
    if (d.HasParseError() || !d.IsObject()) return id;
    // Through a const reference: clang rejects != on a Document's MemberIterator
    // (-Wambiguous-reversed-operator under C++20), not on ConstMemberIterator.
    const rapidjson::Value& obj = d;
    if (auto h = obj.FindMember("host"); h != obj.MemberEnd() && h->value.IsString())
        id.host =
            printable_line(std::string_view(h->value.GetString(), h->value.GetStringLength()));
    if (auto p = obj.FindMember("pid"); p != obj.MemberEnd() && p->value.IsInt64())
        id.pid = p->value.GetInt64();
    return id;
}

}  // namespace

Coordinator::Coordinator(EtcdClient& etcd, const SealKey& key, Options options)
    : etcd_(etcd),
      key_(key),
      opt_(std::move(options)),
      leader_key_(opt_.prefix + "/leader"),
      cred_prefix_(opt_.prefix + "/cred/") {}

std::string Coordinator::credential_key(std::string_view name) const {
    return cred_prefix_ + std::string(name);
}

void Coordinator::note(const EtcdError& e) {
    last_error_ = std::string(to_string(e.kind)) + ": " + e.message;
}

std::string Coordinator::leader_value() const {
    rapidjson::StringBuffer buf;
    rapidjson::Writer<rapidjson::StringBuffer> w(buf);
    w.StartObject();
    w.Key("host");
    w.String(opt_.host.c_str(), static_cast<rapidjson::SizeType>(opt_.host.size()));
    w.Key("pid");
    w.Int64(opt_.pid);
    w.Key("lease");
    w.String(std::to_string(lease_id_).c_str());
    w.EndObject();
    return std::string(buf.GetString(), buf.GetSize());
}

void Coordinator::step_down(Role to) {
    if (role_ == Role::leader) leader_.reset();
    role_ = to;
    counters_.clear();
    next_check_ms_ = 0;  // learn who leads at the next tick
}

void Coordinator::lose_lease() {
    lease_id_ = 0;
    lease_ttl_ms_ = 0;
    next_check_ms_ = 0;  // a new lease at the next tick
    if (role_ == Role::leader || role_ == Role::unknown) step_down(Role::candidate);
    if (role_ != Role::follower) role_ = Role::candidate;
}

Role Coordinator::tick(Now now) {
    // Past its TTL since the last keepalive we know arrived: presumed expired.
    if (lease_id_ != 0 && now.mono_ms - keepalive_sent_ms_ >= lease_ttl_ms_) lose_lease();
    if (lease_id_ == 0) {
        if (now.mono_ms < next_check_ms_) return role_;
        grant(now);
        if (lease_id_ == 0) return role_;
    } else if (now.mono_ms >= next_keepalive_ms_) {
        keep_alive(now);
        if (lease_id_ == 0) return role_;
    }
    if (role_ == Role::leader || now.mono_ms < next_check_ms_) return role_;
    next_check_ms_ = now.mono_ms + opt_.leader_check.count();
    if (read_leader() && role_ == Role::candidate && now.mono_ms >= no_campaign_until_ms_)
        campaign();
    return role_;
}

void Coordinator::grant(Now now) {
    auto lease = etcd_.lease_grant(opt_.lease_ttl);
    if (!lease) {
        note(lease.error());
        next_check_ms_ = now.mono_ms + opt_.leader_check.count();
        return;
    }
    last_error_.clear();
    lease_id_ = lease->id;
    lease_ttl_ms_ = std::chrono::milliseconds(lease->ttl).count();
    keepalive_sent_ms_ = now.mono_ms;  // its life began after we sent the grant
    next_keepalive_ms_ = now.mono_ms + lease_ttl_ms_ / 3;
}

void Coordinator::keep_alive(Now now) {
    auto ka = etcd_.lease_keepalive(lease_id_);
    if (!ka) {
        note(ka.error());  // retried soon; the lease is lost when its TTL has passed
        next_keepalive_ms_ = now.mono_ms + opt_.leader_check.count();
        return;
    }
    last_error_.clear();
    if (ka->gone()) {
        last_error_ = "lease gone: etcd no longer has it (expired or revoked)";
        lose_lease();
        return;
    }
    keepalive_sent_ms_ = now.mono_ms;
    lease_ttl_ms_ = std::chrono::milliseconds(ka->ttl).count();
    next_keepalive_ms_ = now.mono_ms + lease_ttl_ms_ / 3;
}

bool Coordinator::read_leader() {
    auto r = etcd_.range(leader_key_);
    if (!r) {
        note(r.error());
        return false;  // the role stays what it was: nothing learnt
    }
    last_error_.clear();
    if (r->kvs.empty()) {
        if (role_ == Role::leader || role_ == Role::unknown) step_down(Role::candidate);
        leader_.reset();
        role_ = Role::candidate;
        return true;
    }
    LeaderIdentity id = read_identity(r->kvs[0]);
    const bool ours = lease_id_ != 0 && id.lease == lease_id_;
    if (ours && role_ != Role::leader) counters_.clear();  // (again) leader: counters re-read
    role_ = ours ? Role::leader : Role::follower;
    leader_ = std::move(id);
    return true;
}

void Coordinator::campaign() {
    EtcdTxn t;
    t.compare.push_back(EtcdCompare::absent(leader_key_));
    t.success.push_back(EtcdOp::put(leader_key_, leader_value(), lease_id_));
    auto r = etcd_.txn(t);
    if (!r) {
        note(r.error());
        if (r.error().kind == EtcdError::Kind::no_answer) {
            role_ = Role::unknown;
            next_check_ms_ = 0;  // read the leader key at the next tick
        }
        return;
    }
    last_error_.clear();
    if (!r->succeeded) {
        read_leader();  // lost: follow whoever won
        return;
    }
    // The put is the transaction's only write: its revision is the key's create_revision.
    leader_ = LeaderIdentity{opt_.host, opt_.pid, lease_id_, r->revision};
    counters_.clear();
    role_ = Role::leader;
}

std::int64_t Coordinator::next_tick_ms() const noexcept {
    if (lease_id_ == 0) return next_check_ms_;
    if (role_ == Role::leader) return next_keepalive_ms_;
    return std::min(next_keepalive_ms_, next_check_ms_);
}

bool Coordinator::may_refresh(Now now, std::chrono::milliseconds request_timeout) const noexcept {
    if (role_ != Role::leader || lease_id_ == 0) return false;
    const std::int64_t used = now.mono_ms - keepalive_sent_ms_;
    return used + request_timeout.count() + opt_.margin.count() < lease_ttl_ms_;
}

Expected<std::uint64_t, CoordinationError> Coordinator::next_counter(std::string_view name) {
    if (auto it = counters_.find(name); it != counters_.end()) return it->second + 1;
    const std::string key = credential_key(name);
    auto r = etcd_.range(key);
    if (!r) {
        note(r.error());
        return fail(CKind::etcd, r.error().message);
    }
    if (r->kvs.empty()) return std::uint64_t{1};
    auto c = envelope_counter(r->kvs[0].value.view());
    if (!c) return fail(c.error());
    return *c + 1;
}

Expected<std::uint64_t, CoordinationError> Coordinator::publish(std::string_view name,
                                                                const Publication& p, Now now) {
    if (lease_id_ != 0 && now.mono_ms - keepalive_sent_ms_ >= lease_ttl_ms_) lose_lease();
    if (role_ != Role::leader || !leader_)
        return fail(CKind::not_leader,
                    "publish " + quote(name) + ": not the leader (" + to_string(role_) + ")");
    auto counter = next_counter(name);
    if (!counter) return Unexpected{counter.error()};
    auto sealed = seal_publication(key_, name, *counter, p);
    if (!sealed) return fail(sealed.error());
    if (auto put = put_guarded(credential_key(name), *sealed, now); !put) {
        CoordinationError e = std::move(put).error();
        e.message = "publish " + quote(name) + ": " + e.message;
        return Unexpected{std::move(e)};
    }
    counters_[std::string(name)] = *counter;
    return *counter;
}

Expected<Done, CoordinationError> Coordinator::put_guarded(const std::string& key,
                                                           std::string_view value, Now now) {
    if (lease_id_ != 0 && now.mono_ms - keepalive_sent_ms_ >= lease_ttl_ms_) lose_lease();
    if (role_ != Role::leader || !leader_)
        return fail(CKind::not_leader, std::string("not the leader (") + to_string(role_) + ")");
    EtcdTxn t;
    t.compare.push_back(EtcdCompare::create_revision_is(leader_key_, leader_->create_revision));
    t.success.push_back(EtcdOp::put(key, value));
    auto r = etcd_.txn(t);
    if (!r) {
        note(r.error());
        const auto k = r.error().kind;
        if (k == EtcdError::Kind::no_answer || k == EtcdError::Kind::bad_answer) {
            step_down(Role::unknown);
            return fail(CKind::unknown,
                        "outcome unknown, stepped down until the leader key is read (" +
                            r.error().message + ")");
        }
        return fail(CKind::etcd, r.error().message);
    }
    last_error_.clear();
    if (!r->succeeded) {
        step_down(Role::candidate);
        return fail(CKind::deposed, "deposed (the leader key is no longer ours), stepped down");
    }
    return Done{};
}

Expected<std::optional<EtcdKeyValue>, CoordinationError> Coordinator::get(const std::string& key) {
    auto r = etcd_.range(key);
    if (!r) {
        note(r.error());
        return fail(CKind::etcd, r.error().message);
    }
    last_error_.clear();
    if (r->kvs.empty()) return std::optional<EtcdKeyValue>();
    return std::optional<EtcdKeyValue>(std::move(r->kvs[0]));
}

// An unguarded transaction (its compares only about its own keys): done,
// or an etcd error noted for status().
Expected<Done, CoordinationError> Coordinator::plain_txn(const EtcdTxn& t) {
    auto r = etcd_.txn(t);
    if (!r) {
        note(r.error());
        return fail(CKind::etcd, r.error().message);
    }
    last_error_.clear();
    return Done{};
}

Expected<Done, CoordinationError> Coordinator::put(const std::string& key, std::string_view value) {
    EtcdTxn t;
    t.success.push_back(EtcdOp::put(key, value));
    return plain_txn(t);
}

Expected<EtcdRange, CoordinationError> Coordinator::list(const std::string& prefix) {
    auto r = etcd_.range(prefix, RangeScope::prefix);
    if (!r) {
        note(r.error());
        return fail(CKind::etcd, r.error().message);
    }
    last_error_.clear();
    return std::move(*r);
}

Expected<Done, CoordinationError> Coordinator::erase_unchanged(const std::string& key,
                                                               std::int64_t mod_revision) {
    EtcdTxn t;
    t.compare.push_back(EtcdCompare::mod_revision_is(key, mod_revision));
    t.success.push_back(EtcdOp::erase(key));
    return plain_txn(t);
}

Expected<Done, CoordinationError> Coordinator::erase(const std::string& key) {
    EtcdTxn t;
    t.success.push_back(EtcdOp::erase(key));
    return plain_txn(t);
}

Expected<std::optional<FetchedPublication>, CoordinationError> Coordinator::fetch(
    std::string_view name) {
    auto r = etcd_.range(credential_key(name));
    if (!r) {
        note(r.error());
        return fail(CKind::etcd, r.error().message);
    }
    if (r->kvs.empty()) return std::optional<FetchedPublication>();
    const EtcdKeyValue& kv = r->kvs[0];
    auto opened = open_publication(key_, name, kv.key, kv.value.view());
    if (!opened) return fail(opened.error());
    return std::optional<FetchedPublication>(FetchedPublication{
        std::string(name), opened->counter, kv.mod_revision, std::move(opened->publication)});
}

Expected<FetchedAll, CoordinationError> Coordinator::fetch_all() {
    auto r = etcd_.range(cred_prefix_, RangeScope::prefix);
    if (!r) {
        note(r.error());
        return fail(CKind::etcd, r.error().message);
    }
    FetchedAll out;
    out.revision = r->revision;
    for (const EtcdKeyValue& kv : r->kvs) {
        const std::string name = kv.key.substr(cred_prefix_.size());
        auto opened = open_publication(key_, name, kv.key, kv.value.view());
        if (!opened) {
            out.refused.push_back(refused(opened.error()));
            continue;
        }
        out.publications.push_back(FetchedPublication{name, opened->counter, kv.mod_revision,
                                                      std::move(opened->publication)});
    }
    return out;
}

std::optional<Expected<FetchedPublication, CoordinationError>> Coordinator::open_event(
    const EtcdKeyValue& kv) const {
    if (kv.key.size() <= cred_prefix_.size() ||
        kv.key.compare(0, cred_prefix_.size(), cred_prefix_) != 0)
        return std::nullopt;
    const std::string name = kv.key.substr(cred_prefix_.size());
    auto opened = open_publication(key_, name, kv.key, kv.value.view());
    if (!opened) return Expected<FetchedPublication, CoordinationError>(fail(opened.error()));
    return Expected<FetchedPublication, CoordinationError>(
        FetchedPublication{name, opened->counter, kv.mod_revision, std::move(opened->publication)});
}

Expected<Done, CoordinationError> Coordinator::resign() {
    if (lease_id_ == 0) return Done{};
    auto r = etcd_.lease_revoke(lease_id_);
    if (!r) {
        note(r.error());
        return fail(CKind::etcd, r.error().message);
    }
    lose_lease();
    return Done{};
}

CoordinatorStatus Coordinator::status(Now now) const {
    CoordinatorStatus s;
    s.role = role_;
    s.leader = leader_;
    s.lease_id = lease_id_;
    if (lease_id_ != 0)
        s.lease_remaining_ms =
            std::max<std::int64_t>(0, lease_ttl_ms_ - (now.mono_ms - keepalive_sent_ms_));
    s.last_etcd_error = last_error_;
    return s;
}

}  // namespace tokenshm::refresher
