// Coordinator against canned etcd answers and a fake clock: every branch of
// the election (won, lost, the key gone, a campaign whose answer was lost),
// the lease (keepalive due at a third of the TTL, gone, failing past the
// TTL), may_refresh's boundary counted from the keepalive's SEND time, and
// publication (counter, guard, deposed, unknown outcome, wrong seal key).
// The real etcd with two coordinators is tests/scaleout/two_coordinators_test.cpp.
#include "coordinator.hpp"
#include "fake_etcd_gateway.hpp"

#include <catch2/catch.hpp>

#include <rapidjson/document.h>

#include <string>

using namespace tokenshm::refresher;
using tokenshm::test::FakeEtcdGateway;
using namespace std::chrono_literals;

namespace {

constexpr std::int64_t kLease = 100;
constexpr std::int64_t kOtherLease = 300;
constexpr const char* kAccessToken = "ACCESS-TOKEN-very-secret-1";
constexpr const char* kRefreshToken = "REFRESH-TOKEN-very-secret-1";
const std::string kOtherLeader = R"({"host":"host-b","pid":22,"lease":"300"})";

SealKey key_of(unsigned char fill) {
    std::array<unsigned char, SealKey::kBytes> b{};
    b.fill(fill);
    return SealKey(b);
}

Now at(std::int64_t mono_ms) {
    return Now{mono_ms, 1'700'000'000'000 + mono_ms};
}

Coordinator::Options options() {
    Coordinator::Options o;
    o.prefix = "/t";
    o.lease_ttl = 15s;
    o.host = "host-a";
    o.pid = 11;
    return o;
}

Publication sample(int n) {
    Publication p;
    p.record.version = static_cast<std::uint64_t>(n);
    p.record.expires_at_ms = 1'700'000'300'000;
    p.record.issued_at_ms = 1'700'000'000'000;
    p.record.next_refresh_ms = 1'700'000'200'000;
    p.record.last_attempt_ms = 1'699'999'999'000;
    p.record.state = tokenshm::shm::RecordState::valid;
    p.record.failures = 0;
    p.record.access_token = Secret(std::string(kAccessToken) + std::to_string(n));
    p.record.token_type = "Bearer";
    p.record.scope = "read write";
    p.refresh_token = Secret(std::string(kRefreshToken) + std::to_string(n));
    return p;
}

rapidjson::Document json(const std::string& s) {
    rapidjson::Document d;
    d.Parse(s.c_str());
    REQUIRE_FALSE(d.HasParseError());
    return d;
}

std::string str(const rapidjson::Value& v) {
    return std::string(v.GetString(), v.GetStringLength());
}

std::string unb64(const rapidjson::Value& v) {
    auto d = base64_decode(str(v));
    REQUIRE(d.has_value());
    return std::string(d->view());
}

// One host's coordinator on canned etcd answers, with seal key 1.
struct Host {
    FakeEtcdGateway gw;
    EtcdClient etcd{gw};
    const SealKey key = key_of(1);
    Coordinator c{etcd, key, options()};
};

// Scripts and runs the first tick of a coordinator that wins: grant, no
// leader key, campaign won at revision 20.
void win(FakeEtcdGateway& gw, Coordinator& c, std::int64_t now_ms = 0) {
    gw.grant(kLease, 15);
    gw.range_empty();
    gw.txn(true, 20);
    REQUIRE(c.tick(at(now_ms)) == Role::leader);
}

void check_clean(const std::string& message) {
    INFO(message);
    CHECK(message.find("very-secret") == std::string::npos);
    CHECK(message.find('\n') == std::string::npos);
    CHECK_FALSE(message.empty());
}

}  // namespace

TEST_CASE("a campaign won: lease, leader key put with it only if absent", "[coordinator]") {
    Host h;
    auto& [gw, etcd, key, c] = h;
    win(gw, c, 1000);
    REQUIRE(gw.sent.size() == 3);
    CHECK(gw.sent[0].path == "/v3/lease/grant");
    CHECK(str(json(gw.sent[0].body)["TTL"]) == "15");
    CHECK(gw.sent[1].path == "/v3/kv/range");
    CHECK(gw.sent[2].path == "/v3/kv/txn");
    const auto t = json(gw.sent[2].body);
    CHECK(unb64(t["compare"][0]["key"]) == "/t/leader");
    CHECK(str(t["compare"][0]["target"]) == "CREATE");
    CHECK(str(t["compare"][0]["create_revision"]) == "0");
    const auto& put = t["success"][0]["request_put"];
    CHECK(unb64(put["key"]) == "/t/leader");
    CHECK(str(put["lease"]) == "100");
    const auto value = json(unb64(put["value"]));
    CHECK(str(value["host"]) == "host-a");
    CHECK(value["pid"].GetInt64() == 11);
    CHECK(str(value["lease"]) == "100");

    const CoordinatorStatus s = c.status(at(2000));
    CHECK(s.role == Role::leader);
    REQUIRE(s.leader.has_value());
    CHECK(s.leader->host == "host-a");
    CHECK(s.leader->pid == 11);
    CHECK(s.leader->create_revision == 20);
    CHECK(s.lease_id == kLease);
    CHECK(s.lease_remaining_ms == 14000);
    CHECK(s.last_etcd_error.empty());
    CHECK(c.may_refresh(at(2000), 5s));
    // Nothing to do before a third of the TTL: no request.
    CHECK(c.tick(at(5999)) == Role::leader);
    CHECK(gw.sent.size() == 3);
    CHECK(c.next_tick_ms() == 6000);
}

TEST_CASE("a campaign lost: the loser reads who leads and follows", "[coordinator]") {
    Host h;
    auto& [gw, etcd, key, c] = h;
    gw.grant(kLease, 15);
    gw.range_empty();
    gw.txn(false, 21);  // someone won in between
    gw.range_one("/t/leader", kOtherLeader, 21, 21, kOtherLease, 21);
    CHECK(c.tick(at(0)) == Role::follower);
    CHECK_FALSE(c.may_refresh(at(0), 1s));
    const CoordinatorStatus s = c.status(at(0));
    REQUIRE(s.leader.has_value());
    CHECK(s.leader->host == "host-b");
    CHECK(s.leader->pid == 22);
    CHECK(s.leader->lease == kOtherLease);
    CHECK(s.leader->create_revision == 21);
    // Publishing as a follower sends nothing.
    const auto refused = c.publish("storage", sample(1), at(0));
    REQUIRE_FALSE(refused.has_value());
    CHECK(refused.error().kind == CoordinationError::Kind::not_leader);
    CHECK(gw.sent.size() == 4);
}

TEST_CASE("a follower reads the leader key every leader_check and campaigns when it is gone",
          "[coordinator]") {
    Host h;
    auto& [gw, etcd, key, c] = h;
    gw.grant(kLease, 15);
    gw.range_one("/t/leader", kOtherLeader, 21, 21, kOtherLease, 21);  // a leader: no campaign
    CHECK(c.tick(at(0)) == Role::follower);
    CHECK(gw.sent.size() == 2);
    CHECK(c.tick(at(999)) == Role::follower);  // not yet
    CHECK(gw.sent.size() == 2);
    CHECK(c.next_tick_ms() == 1000);
    gw.range_one("/t/leader", kOtherLeader, 21, 21, kOtherLease, 22);
    CHECK(c.tick(at(1000)) == Role::follower);
    gw.range_empty(30);  // its lease expired: the key went with it
    gw.txn(true, 31);
    CHECK(c.tick(at(2000)) == Role::leader);
    CHECK(c.status(at(2000)).leader->create_revision == 31);
    CHECK(gw.sent.size() == 5);
}

TEST_CASE("keepalive at a third of the TTL; a gone lease ends leadership at once",
          "[coordinator]") {
    Host h;
    auto& [gw, etcd, key, c] = h;
    win(gw, c);
    gw.keepalive(kLease, 15);
    CHECK(c.tick(at(5000)) == Role::leader);
    CHECK(gw.sent.back().path == "/v3/lease/keepalive");
    CHECK(str(json(gw.sent.back().body)["ID"]) == "100");
    CHECK(c.next_tick_ms() == 10000);
    gw.keepalive(kLease, 0);  // 200 without TTL: revoked or expired
    CHECK(c.tick(at(10000)) == Role::candidate);
    CHECK_FALSE(c.may_refresh(at(10000), 1s));
    CHECK(c.status(at(10000)).lease_id == 0);
    CHECK_FALSE(c.status(at(10000)).leader.has_value());
    // The next tick starts over: a new lease, a new campaign.
    gw.grant(kLease + 1, 15);
    gw.range_empty(40);
    gw.txn(true, 41);
    CHECK(c.tick(at(10001)) == Role::leader);
    CHECK(c.status(at(10001)).leader->create_revision == 41);
}

TEST_CASE("keepalives failing: may_refresh stops first, the lease is dropped at its TTL",
          "[coordinator]") {
    Host h;
    auto& [gw, etcd, key, c] = h;
    win(gw, c);
    gw.unreachable();
    CHECK(c.tick(at(5000)) == Role::leader);  // retried at the next tick
    check_clean(c.status(at(5000)).last_etcd_error);
    gw.no_answer();
    CHECK(c.tick(at(9000)) == Role::leader);
    CHECK(c.may_refresh(at(8999), 5s));  // 8999 + 5000 + 1000 < 15000
    CHECK_FALSE(c.may_refresh(at(9000), 5s));
    gw.no_answer();
    CHECK(c.tick(at(14999)) == Role::leader);
    CHECK_FALSE(c.may_refresh(at(14999), 0s));
    // At the TTL the lease is presumed gone: leadership ends before any request.
    gw.grant(kLease + 1, 15);
    gw.range_one("/t/leader", kOtherLeader, 50, 50, kOtherLease, 50);
    CHECK(c.tick(at(15000)) == Role::follower);
    CHECK(gw.sent[gw.sent.size() - 2].path == "/v3/lease/grant");
}

TEST_CASE("may_refresh is counted from the time the keepalive was SENT", "[coordinator]") {
    Host h;
    auto& [gw, etcd, key, c] = h;
    win(gw, c, 0);
    gw.keepalive(kLease, 15);
    REQUIRE(c.tick(at(5000)) == Role::leader);  // sent at 5000
    // (now - 5000) + 5000 + 1000 < 15000  <=>  now < 14000
    CHECK(c.may_refresh(at(13999), 5s));
    CHECK_FALSE(c.may_refresh(at(14000), 5s));
    CHECK(c.may_refresh(at(5000), 13999ms));
    CHECK_FALSE(c.may_refresh(at(5000), 14000ms));
    // A failed keepalive does not move the reference.
    gw.unreachable();
    REQUIRE(c.tick(at(10000)) == Role::leader);
    CHECK_FALSE(c.may_refresh(at(14000), 5s));
    CHECK(c.status(at(14000)).lease_remaining_ms == 6000);
}

TEST_CASE("a campaign whose answer was lost is unknown until the leader key is read",
          "[coordinator]") {
    Host h;
    auto& [gw, etcd, key, c] = h;
    gw.grant(kLease, 15);
    gw.range_empty();
    gw.no_answer();
    CHECK(c.tick(at(0)) == Role::unknown);
    CHECK_FALSE(c.may_refresh(at(0), 1s));
    CHECK(c.next_tick_ms() == 0);
    // It was applied: the key holds our lease.
    gw.range_one("/t/leader", R"({"host":"host-a","pid":11,"lease":"100"})", 25, 25, kLease, 25);
    CHECK(c.tick(at(100)) == Role::leader);
    CHECK(c.status(at(100)).leader->create_revision == 25);
}

TEST_CASE("publish: sealed envelope, counter from etcd then counted, guarded by the leader key",
          "[coordinator]") {
    Host h;
    auto& [gw, etcd, key, c] = h;
    win(gw, c);
    gw.range_empty();  // no publication yet: counter 1
    gw.txn(true, 22);
    const auto first = c.publish("storage", sample(1), at(100));
    REQUIRE(first.has_value());
    CHECK(*first == 1);
    REQUIRE(gw.sent.size() == 5);
    CHECK(unb64(json(gw.sent[3].body)["key"]) == "/t/cred/storage");
    const auto t = json(gw.sent[4].body);
    CHECK(unb64(t["compare"][0]["key"]) == "/t/leader");
    CHECK(str(t["compare"][0]["target"]) == "CREATE");
    CHECK(str(t["compare"][0]["create_revision"]) == "20");
    const auto& put = t["success"][0]["request_put"];
    CHECK(unb64(put["key"]) == "/t/cred/storage");
    CHECK_FALSE(put.HasMember("lease"));  // a publication outlives its leader
    const std::string envelope = unb64(put["value"]);
    INFO(envelope);
    CHECK(envelope.find("very-secret") == std::string::npos);
    CHECK(gw.sent[4].body.find(base64_encode(kAccessToken)) == std::string::npos);
    const auto e = json(envelope);
    CHECK(e["counter"].GetUint64() == 1);
    CHECK(str(e["sealed"]).starts_with("tks1."));
    const auto opened = open_publication(key, "storage", "/t/cred/storage", envelope);
    REQUIRE(opened.has_value());
    CHECK(opened->publication.refresh_token ==
          std::optional<Secret>(Secret(std::string(kRefreshToken) + "1")));

    gw.txn(true, 23);  // the counter is known now: no range
    const auto second = c.publish("storage", sample(2), at(200));
    REQUIRE(second.has_value());
    CHECK(*second == 2);
    CHECK(gw.sent.size() == 6);
}

TEST_CASE("a new leader counts on from the counter found in etcd", "[coordinator]") {
    Host h;
    auto& [gw, etcd, key, c] = h;
    win(gw, c);
    const std::string previous = *seal_publication(key, "storage", 41, sample(41));
    gw.range_one("/t/cred/storage", previous, 5, 19, 0, 20);
    gw.txn(true, 22);
    const auto n = c.publish("storage", sample(42), at(100));
    REQUIRE(n.has_value());
    CHECK(*n == 42);
}

TEST_CASE("a deposed leader's publish fails and it steps down", "[coordinator]") {
    Host h;
    auto& [gw, etcd, key, c] = h;
    win(gw, c);
    gw.range_empty();
    gw.txn(false, 30);  // the leader key's create_revision is no longer 20
    const auto r = c.publish("storage", sample(1), at(100));
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().kind == CoordinationError::Kind::deposed);
    check_clean(r.error().message);
    CHECK(c.role() == Role::candidate);
    CHECK_FALSE(c.may_refresh(at(100), 1s));
    gw.range_one("/t/leader", kOtherLeader, 29, 29, kOtherLease, 30);
    CHECK(c.tick(at(200)) == Role::follower);
}

TEST_CASE("a publish with no answer is unknown: stepped down until the leader key is read",
          "[coordinator]") {
    Host h;
    auto& [gw, etcd, key, c] = h;
    win(gw, c);
    gw.range_empty();
    gw.no_answer();
    const auto r = c.publish("storage", sample(1), at(100));
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().kind == CoordinationError::Kind::unknown);
    check_clean(r.error().message);
    CHECK(c.role() == Role::unknown);
    CHECK_FALSE(c.may_refresh(at(100), 1s));
    // Still ours: leader again, and the counter is read again (it may have been used).
    gw.range_one("/t/leader", R"({"host":"host-a","pid":11,"lease":"100"})", 20, 20, kLease, 21);
    CHECK(c.tick(at(200)) == Role::leader);
    const std::string applied = *seal_publication(key, "storage", 1, sample(1));
    gw.range_one("/t/cred/storage", applied, 21, 21, 0, 21);
    gw.txn(true, 22);
    const auto again = c.publish("storage", sample(1), at(300));
    REQUIRE(again.has_value());
    CHECK(*again == 2);
}

TEST_CASE("an unreachable etcd at publish: nothing applied, leadership kept", "[coordinator]") {
    Host h;
    auto& [gw, etcd, key, c] = h;
    win(gw, c);
    gw.range_empty();
    gw.unreachable();
    const auto r = c.publish("storage", sample(1), at(100));
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().kind == CoordinationError::Kind::etcd);
    CHECK(c.role() == Role::leader);
    // Past the lease's TTL without a keepalive, publish refuses before sending.
    const auto late = c.publish("storage", sample(1), at(15000));
    REQUIRE_FALSE(late.has_value());
    CHECK(late.error().kind == CoordinationError::Kind::not_leader);
    CHECK(gw.sent.size() == 5);
}

TEST_CASE("fetch and fetch_all open what the leader sealed; a wrong key is a clear error",
          "[coordinator]") {
    FakeEtcdGateway gw;
    EtcdClient etcd(gw);
    const SealKey key = key_of(1);
    const SealKey wrong = key_of(2);
    Coordinator c(etcd, key, options());
    Coordinator other(etcd, wrong, options());
    const std::string storage = *seal_publication(key, "storage", 3, sample(3));
    const std::string mail = *seal_publication(key, "mail", 1, sample(1));

    gw.range_one("/t/cred/storage", storage, 5, 9, 0, 9);
    const auto one = c.fetch("storage");
    REQUIRE(one.has_value());
    REQUIRE(one->has_value());
    const FetchedPublication& f = **one;
    CHECK(f.name == "storage");
    CHECK(f.counter == 3);
    CHECK(f.mod_revision == 9);
    CHECK(f.publication.record.version == 3);
    CHECK(f.publication.record.access_token == Secret(std::string(kAccessToken) + "3"));
    CHECK(f.publication.record.scope == "read write");
    CHECK(f.publication.record.state == tokenshm::shm::RecordState::valid);
    CHECK(f.publication.refresh_token ==
          std::optional<Secret>(Secret(std::string(kRefreshToken) + "3")));
    CHECK(unb64(json(gw.sent.back().body)["key"]) == "/t/cred/storage");

    gw.range_empty();
    const auto none = c.fetch("nothing");
    REQUIRE(none.has_value());
    CHECK_FALSE(none->has_value());

    gw.ok(R"("kvs":[{"key":")" + base64_encode("/t/cred/mail") + R"(","value":")" +
              base64_encode(mail) +
              R"(","create_revision":"4","mod_revision":"4","version":"1"},{"key":")" +
              base64_encode("/t/cred/storage") + R"(","value":")" + base64_encode(storage) +
              R"(","create_revision":"5","mod_revision":"9","version":"3"}],"count":"2")",
          9);
    const auto all = c.fetch_all();
    REQUIRE(all.has_value());
    REQUIRE(all->publications.size() == 2);
    CHECK(all->refused.empty());
    CHECK(all->publications[0].name == "mail");
    CHECK(all->publications[1].name == "storage");
    CHECK(all->publications[1].counter == 3);
    CHECK(str(json(gw.sent.back().body)["range_end"]) == base64_encode("/t/cred0"));

    // One envelope that does not open is refused alone; the others still come.
    const std::string foreign = *seal_publication(wrong, "mail", 1, sample(1));
    gw.ok(R"("kvs":[{"key":")" + base64_encode("/t/cred/mail") + R"(","value":")" +
              base64_encode(foreign) +
              R"(","create_revision":"4","mod_revision":"4","version":"1"},{"key":")" +
              base64_encode("/t/cred/storage") + R"(","value":")" + base64_encode(storage) +
              R"(","create_revision":"5","mod_revision":"9","version":"3"}],"count":"2")",
          9);
    const auto partly = c.fetch_all();
    REQUIRE(partly.has_value());
    REQUIRE(partly->publications.size() == 1);
    CHECK(partly->publications[0].name == "storage");
    REQUIRE(partly->refused.size() == 1);
    CHECK(partly->refused[0].message.find("\"/t/cred/mail\"") != std::string::npos);
    check_clean(partly->refused[0].message);

    gw.range_one("/t/cred/storage", storage, 5, 9, 0, 9);
    const auto refused = other.fetch("storage");
    REQUIRE_FALSE(refused.has_value());
    CHECK(refused.error().kind == CoordinationError::Kind::publication);
    CHECK(refused.error().publication_kind == PublicationError::Kind::does_not_open);
    CHECK(refused.error().message.find("seal key does not open \"/t/cred/storage\"") == 0);
    CHECK(refused.error().message.find("wrong seal_key_file?") != std::string::npos);
    check_clean(refused.error().message);
}

TEST_CASE("an envelope moved to another credential, changed, or not an envelope does not open",
          "[coordinator][publication]") {
    const SealKey key = key_of(1);
    const std::string storage = *seal_publication(key, "storage", 3, sample(3));
    const auto moved = open_publication(key, "mail", "/t/cred/mail", storage);
    REQUIRE_FALSE(moved.has_value());
    CHECK(moved.error().kind == PublicationError::Kind::does_not_open);
    std::string recounted = storage;
    recounted.replace(recounted.find("\"counter\":3"), 11, "\"counter\":4");
    const auto other_counter = open_publication(key, "storage", "/t/cred/storage", recounted);
    REQUIRE_FALSE(other_counter.has_value());
    CHECK(other_counter.error().kind == PublicationError::Kind::does_not_open);
    for (const char* bad : {"", "tks1.abc", "{\"counter\":1}", "{\"counter\":-1,\"sealed\":\"x\"}",
                            "{\"counter\":1,\"sealed\":\"tks1.abc\"}"}) {
        INFO(bad);
        const auto r = open_publication(key, "storage", "/t/cred/storage", bad);
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().kind == PublicationError::Kind::malformed);
        check_clean(r.error().message);
    }
}

TEST_CASE("a publication without a refresh token (client credentials) round-trips",
          "[coordinator][publication]") {
    const SealKey key = key_of(1);
    Publication p = sample(7);
    p.refresh_token.reset();
    p.record.state = tokenshm::shm::RecordState::stale;
    p.record.failures = 3;
    p.record.last_error = "HTTP 503 from the token endpoint";
    const auto opened =
        open_publication(key, "cc", "/t/cred/cc", *seal_publication(key, "cc", 1, p));
    REQUIRE(opened.has_value());
    const Published& r = opened->publication.record;
    CHECK_FALSE(opened->publication.refresh_token.has_value());
    CHECK(r.state == tokenshm::shm::RecordState::stale);
    CHECK(r.failures == 3);
    CHECK(r.last_error == "HTTP 503 from the token endpoint");
    CHECK(r.expires_at_ms == p.record.expires_at_ms);
    CHECK(r.issued_at_ms == p.record.issued_at_ms);
    CHECK(r.next_refresh_ms == p.record.next_refresh_ms);
    CHECK(r.last_attempt_ms == p.record.last_attempt_ms);
    CHECK(r.token_type == "Bearer");
}

TEST_CASE("resign revokes the lease", "[coordinator]") {
    Host h;
    auto& [gw, etcd, key, c] = h;
    win(gw, c);
    gw.ok("");
    REQUIRE(c.resign().has_value());
    CHECK(gw.sent.back().path == "/v3/lease/revoke");
    CHECK(c.role() == Role::candidate);
    CHECK_FALSE(c.may_refresh(at(100), 1s));
}

TEST_CASE("etcd down: failed calls wait leader_check, so a caller never spins", "[coordinator]") {
    Host h;
    auto& [gw, etcd, key, c] = h;
    gw.unreachable();
    CHECK(c.tick(at(0)) == Role::candidate);
    check_clean(c.status(at(0)).last_etcd_error);
    CHECK(c.next_tick_ms() == 1000);
    CHECK(c.tick(at(999)) == Role::candidate);  // nothing sent
    CHECK(gw.sent.size() == 1);
    gw.grant(kLease, 15);
    gw.unreachable();  // the leader key cannot be read: no campaign blind
    CHECK(c.tick(at(1000)) == Role::candidate);
    CHECK(gw.sent.size() == 3);
    CHECK(c.next_tick_ms() == 2000);
    gw.range_empty();
    gw.txn(true, 20);
    CHECK(c.tick(at(2000)) == Role::leader);
    gw.unreachable();  // a keepalive fails: retried after leader_check, not at once
    CHECK(c.tick(at(7000)) == Role::leader);
    CHECK(c.next_tick_ms() == 8000);
    CHECK(c.tick(at(7999)) == Role::leader);
    CHECK(gw.sent.size() == 6);
}
