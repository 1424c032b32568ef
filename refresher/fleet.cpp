#include "fleet.hpp"

#include "log.hpp"
#include "state_store.hpp"

#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <poll.h>

#include <algorithm>
#include <utility>

namespace tokenshm::refresher {

namespace {

using CKind = CoordinationError::Kind;

Unexpected<CoordinationError> fail(CKind kind, std::string message) {
    return Unexpected{CoordinationError{kind, printable_line(message), std::nullopt}};
}

// The seal's associated data for a sent mark: not a credential's own, so a
// mark never opens as a publication, nor a publication as a mark.
std::string mark_scope(std::string_view name) {
    return "sent/" + std::string(name);
}

// The daemon's loop waits for each etcd call (the client is synchronous):
// short bounds keep its heartbeat (every 250 ms, readers allow 3 s) and its
// control socket going while etcd is slow or gone. etcd on a LAN answers in
// milliseconds; a call that fails is retried at the next leader_check.
CurlEtcdGateway::Options daemon_gateway_options(const EtcdConfig& etcd) {
    CurlEtcdGateway::Options o = CurlEtcdGateway::Options::from(etcd);
    o.timeout = std::chrono::milliseconds(1000);
    o.connect_timeout = std::chrono::milliseconds(500);
    return o;
}

std::string who(const std::optional<LeaderIdentity>& id) {
    if (!id) return "nobody";
    return "host " + (id->host.empty() ? std::string("?") : id->host) + " pid " +
           std::to_string(id->pid);
}

}  // namespace

Fleet::Fleet(std::unique_ptr<EtcdGateway> gateway, const EtcdConfig& etcd, SealKey key,
             Coordinator::Options options, std::string seal_key_file)
    : gateway_(std::move(gateway)),
      client_(std::make_unique<EtcdClient>(*gateway_, etcd.username, etcd.password)),
      key_(std::move(key)),
      seal_key_file_(std::move(seal_key_file)),
      lease_ttl_(options.lease_ttl),
      leader_check_(options.leader_check),
      host_(options.host),
      pid_(options.pid) {
    coord_ = std::make_unique<Coordinator>(*client_, key_, std::move(options));
}

Expected<std::unique_ptr<Fleet>, RefresherError> Fleet::start(
    const CoordinationConfig& cfg, std::string host, std::int64_t pid,
    std::unique_ptr<EtcdGateway> gateway) {
    auto key = load_seal_key(cfg.seal_key_file);
    if (!key)
        return Unexpected{
            RefresherError::config_error("coordination.seal_key_file: " + key.error().message)};
    if (!gateway) {
        auto curl = CurlEtcdGateway::create(daemon_gateway_options(cfg.etcd));
        if (!curl)
            return Unexpected{
                RefresherError::runtime_error("coordination.etcd: " + curl.error().message)};
        gateway = std::move(*curl);
    }
    Coordinator::Options o;
    o.prefix = cfg.etcd.prefix;
    o.lease_ttl = cfg.etcd.lease_ttl;
    o.host = std::move(host);
    o.pid = pid;
    std::unique_ptr<Fleet> f(
        new Fleet(std::move(gateway), cfg.etcd, std::move(*key), std::move(o), cfg.seal_key_file));
    f->watch_options_ = daemon_gateway_options(cfg.etcd);
    return f;
}

bool Fleet::tick(Now now) {
    const Role before = logged_role_;
    const Role role = coord_->tick(now);
    const CoordinatorStatus s = coord_->status(now);
    const std::string leader = who(s.leader);
    if (role != logged_role_ || (role == Role::follower && leader != logged_leader_)) {
        std::string detail = to_string(role);
        if (role == Role::leader)
            detail += " lease_ttl_ms=" + std::to_string(s.lease_remaining_ms);
        else if (role == Role::follower)
            detail += " of " + leader;
        log_event(role == Role::unknown ? Level::warn : Level::info, "", "role", detail);
        logged_role_ = role;
        logged_leader_ = leader;
    }
    return role == Role::leader && before != Role::leader;
}

bool Fleet::may_send(Now now, std::chrono::milliseconds timeout) {
    if (coord_->may_refresh(now, timeout)) return true;
    if (!leader() || now.mono_ms < next_renew_ms_) return false;
    next_renew_ms_ = now.mono_ms + 1000;
    coord_->renew(now);
    return coord_->may_refresh(now, timeout);
}

std::string Fleet::sent_key(std::string_view name) const {
    return coord_->prefix() + "/sent/" + std::string(name);
}

std::string Fleet::rescue_key(std::string_view name) const {
    return coord_->prefix() + "/rescue/" + std::string(name);
}

Expected<std::optional<SentMark>, CoordinationError> Fleet::read_mark(std::string_view name) {
    auto kv = coord_->get(sent_key(name));
    if (!kv) return Unexpected{kv.error()};
    if (!*kv) return std::optional<SentMark>();
    const std::string key = sent_key(name);
    rapidjson::Document d;
    d.Parse((*kv)->value.data(), (*kv)->value.size());
    const rapidjson::Value& v = d;
    if (d.HasParseError() || !v.IsObject() || !v.HasMember("counter") || !v["counter"].IsUint64() ||
        !v.HasMember("sealed") || !v["sealed"].IsString())
        return fail(CKind::publication, key + ": not a sent mark of this version");
    SentMark m;
    m.counter = v["counter"].GetUint64();
    auto fp = open_sealed(key_, mark_scope(name), m.counter,
                          std::string_view(v["sealed"].GetString(), v["sealed"].GetStringLength()));
    if (!fp)
        return fail(CKind::publication, key + ": does not open with seal_key_file " +
                                            seal_key_file_ + " (" + fp.error().message + ")");
    m.fingerprint = std::string(fp->reveal());
    m.sent_by = "host ?";
    if (v.HasMember("host") && v["host"].IsString() && v.HasMember("pid") && v["pid"].IsInt64())
        m.sent_by = "host " + printable_line(v["host"].GetString()) + " pid " +
                    std::to_string(v["pid"].GetInt64());
    return std::optional<SentMark>(std::move(m));
}

Expected<Continuation, CoordinationError> Fleet::continuation(std::string_view name) {
    Continuation c;
    auto latest = coord_->fetch(name);
    if (!latest) return Unexpected{latest.error()};
    c.latest = std::move(*latest);
    // A mark that does not open (another seal key) is an error like a
    // publication that does not: the caller stands aside, never sends.
    auto mark = read_mark(name);
    if (!mark) return Unexpected{mark.error()};
    c.sent = std::move(*mark);
    return c;
}

Expected<Done, CoordinationError> Fleet::mark_sent(std::string_view name, std::uint64_t counter,
                                                   const Secret& refresh_token, Now now) {
    auto sealed =
        seal(key_, mark_scope(name), counter, refresh_token_fingerprint(refresh_token.reveal()));
    if (!sealed)
        return fail(CKind::publication, "sealing the sent mark: " + sealed.error().message);
    const CoordinatorStatus s = coord_->status(now);
    rapidjson::StringBuffer buf;
    rapidjson::Writer<rapidjson::StringBuffer> w(buf);
    w.StartObject();
    w.Key("counter");
    w.Uint64(counter);
    w.Key("host");
    w.String(s.leader ? s.leader->host.c_str() : "");
    w.Key("pid");
    w.Int64(s.leader ? s.leader->pid : 0);
    w.Key("sealed");
    w.String(sealed->c_str(), static_cast<rapidjson::SizeType>(sealed->size()));
    w.EndObject();
    return coord_->put_guarded(sent_key(name), std::string_view(buf.GetString(), buf.GetSize()),
                               now);
}

Expected<std::uint64_t, CoordinationError> Fleet::publish(std::string_view name,
                                                          const Publication& p, Now now) {
    return coord_->publish(name, p, now);
}

Expected<std::optional<FetchedPublication>, CoordinationError> Fleet::take_rescue(
    std::string_view name) {
    const std::string key = rescue_key(name);
    auto kv = coord_->get(key);
    if (!kv) return Unexpected{kv.error()};
    if (!*kv) return std::optional<FetchedPublication>();
    auto opened = open_publication(key_, name, key, (*kv)->value.view());
    (void)coord_->erase(key);  // read once, whatever it held; a failed erase is read again
    if (!opened) return fail(CKind::publication, opened.error().message);
    return std::optional<FetchedPublication>(FetchedPublication{
        std::string(name), opened->counter, (*kv)->mod_revision, std::move(opened->publication)});
}

Expected<Done, CoordinationError> Fleet::request_refresh(std::string_view name,
                                                         std::uint64_t counter) {
    const std::string key =
        request_prefix() + std::string(name) + "/" + host_ + ":" + std::to_string(pid_);
    return coord_->put(key, "{\"counter\":" + std::to_string(counter) + "}");
}

std::map<std::string, std::uint64_t> Fleet::take_requests(Now now) {
    std::map<std::string, std::uint64_t> asked;
    if (now.mono_ms < next_requests_ms_) return asked;
    next_requests_ms_ = now.mono_ms + leader_check_.count();
    auto r = coord_->list(request_prefix());
    if (!r) return asked;  // in status(); tried again at the next leader_check
    const std::string prefix = request_prefix();
    for (const EtcdKeyValue& kv : r->kvs) {
        (void)coord_->erase_unchanged(kv.key, kv.mod_revision);
        const std::string rest = kv.key.substr(prefix.size());
        const auto slash = rest.rfind('/');
        rapidjson::Document d;
        d.Parse(kv.value.data(), kv.value.size());
        const rapidjson::Value& v = d;
        if (slash == std::string::npos || d.HasParseError() || !v.IsObject() ||
            !v.HasMember("counter") || !v["counter"].IsUint64()) {
            log_event(Level::warn, "", "coordination_error",
                      printable_line(kv.key) + ": not a refresh request of this version; removed");
            continue;
        }
        std::uint64_t& c = asked[rest.substr(0, slash)];
        c = std::max(c, v["counter"].GetUint64());
    }
    return asked;
}

std::optional<FetchedAll> Fleet::poll_publications(Now now) {
    if (watch_) return watched(now);
    if (now.mono_ms < next_fetch_ms_) return std::nullopt;
    next_fetch_ms_ = now.mono_ms + leader_check_.count();
    auto all = coord_->fetch_all();
    if (!all) return std::nullopt;  // in status(); the role's log says the rest
    start_watch(all->revision + 1, now);
    return std::move(*all);
}

void Fleet::start_watch(std::int64_t from_revision, Now now) {
    auto token = client_->auth_token();
    if (!token) return;  // read again at the next leader_check, and watched from there
    EtcdWatch::Options o;
    o.gateway = watch_options_;
    o.endpoint = watch_endpoint_++;
    // The whole prefix: publications, and the leader key's deletion (a
    // follower campaigns at once instead of at its next leader_check).
    auto w =
        EtcdWatch::start(std::move(o), coord_->prefix() + "/", from_revision, *token, now.mono_ms);
    if (!w) {
        log_event(Level::warn, "", "coordination_error", "watch: " + w.error().message);
        return;
    }
    watch_ = std::move(*w);
}

// What the watch delivered. A failed watch is dropped: the next call reads
// every publication again (nothing is lost: versions only grow, and a
// publication applied twice is applied once), and watches from there.
std::optional<FetchedAll> Fleet::watched(Now now) {
    auto ok = watch_->step(now.mono_ms);
    FetchedAll out;
    for (EtcdWatchEvent& e : watch_->take_events()) {
        if (e.kv.key == coord_->leader_key() && e.type == EtcdWatchEvent::Type::erase)
            coord_->check_leader_now();
        if (e.type != EtcdWatchEvent::Type::put) continue;
        auto opened = coord_->open_event(e.kv);
        if (!opened) continue;
        if (*opened)
            out.publications.push_back(std::move(**opened));
        else
            out.refused.push_back(opened->error());
    }
    if (!ok) {
        log_event(Level::info, "", "watch_ended", ok.error().message + "; reading etcd again");
        watch_.reset();
        next_fetch_ms_ = now.mono_ms;
    }
    if (out.publications.empty() && out.refused.empty()) return std::nullopt;
    return out;
}

std::vector<int> Fleet::watch_fds() {
    std::vector<int> fds;
    if (!watch_) return fds;
    for (const pollfd& p : watch_->fds())
        if (p.events & POLLIN) fds.push_back(p.fd);
    return fds;
}

Expected<Done, CoordinationError> Fleet::offer_rescue(std::string_view name, std::uint64_t counter,
                                                      const Publication& p) {
    auto sealed = seal_publication(key_, name, counter, p);
    if (!sealed) return fail(CKind::publication, sealed.error().message);
    return coord_->put(rescue_key(name), *sealed);
}

void Fleet::stand_aside(Now now, std::int64_t for_ms) {
    coord_->stand_aside_until(now.mono_ms + for_ms);
    if (leader()) resign();
}

void Fleet::resign() {
    if (auto r = coord_->resign(); !r)
        log_event(Level::warn, "", "coordination_error",
                  "could not revoke the lease at exit (" + r.error().message +
                      "); a successor waits for it to expire");
}

}  // namespace tokenshm::refresher
