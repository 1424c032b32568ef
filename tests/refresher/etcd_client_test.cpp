// EtcdClient against canned gateway answers: what it sends (int64 as
// strings, bytes as Base64, the compares and operations a txn needs), how it
// reads protobuf's JSON where zero and false fields are omitted (a lost txn
// has no "succeeded", a dead lease's keepalive no "TTL", an empty range no
// "kvs"), and that every surprise is a typed one-line error that never holds
// a value. The real etcd is tests/scaleout/etcd_gateway_test.cpp.
#include "etcd_client.hpp"
#include "base64.hpp"

#include <catch2/catch.hpp>

#include <rapidjson/document.h>

#include <deque>
#include <string>
#include <vector>

using namespace tokenshm::refresher;
using namespace std::chrono_literals;

namespace {

constexpr const char* kValue = "SEALED-VALUE-tks1.abc";
constexpr const char* kPassword = "etcd-PASSWORD-42";
constexpr const char* kHeader =
    R"("header":{"cluster_id":"1","member_id":"2","revision":"7","raft_term":"2"})";

struct Sent {
    std::string path;
    std::string body;
    std::string token;
};

// Answers from a script, records what it was asked.
struct FakeGateway : EtcdGateway {
    std::deque<GatewayAnswer> script;
    std::vector<Sent> sent;

    GatewayAnswer post(std::string_view path, const WipedString& body,
                       const Secret& token) override {
        sent.push_back({std::string(path), std::string(body.view()), std::string(token.reveal())});
        REQUIRE_FALSE(script.empty());
        GatewayAnswer a = std::move(script.front());
        script.pop_front();
        return a;
    }
    void answer(long status, const std::string& body) {
        GatewayAnswer a;
        a.outcome = GatewayAnswer::Outcome::answer;
        a.status = status;
        a.body = WipedString(body);
        script.push_back(std::move(a));
    }
    void ok(const std::string& members) {
        answer(200, "{" + std::string(kHeader) + (members.empty() ? "" : ",") + members + "}");
    }
};

rapidjson::Document json(const std::string& s) {
    rapidjson::Document d;
    d.Parse(s.c_str());
    REQUIRE_FALSE(d.HasParseError());
    return d;
}

std::string b64(std::string_view s) {
    return base64_encode(s);
}

std::string str(const rapidjson::Value& v) {
    return std::string(v.GetString(), v.GetStringLength());
}

// An error never holds a value, a password or a line break.
void check_clean(const EtcdError& e) {
    INFO(e.message);
    CHECK(e.message.find(kValue) == std::string::npos);
    CHECK(e.message.find(b64(kValue)) == std::string::npos);
    CHECK(e.message.find(kPassword) == std::string::npos);
    CHECK(e.message.find('\n') == std::string::npos);
    CHECK_FALSE(e.message.empty());
}

std::string kv_json(const std::string& key, const std::string& extra = "") {
    return R"({"key":")" + b64(key) +
           R"(","create_revision":"3","mod_revision":"5","version":"2",)" + R"("value":")" +
           b64(kValue) + "\"" + extra + "}";
}

}  // namespace

TEST_CASE("prefix_range_end is etcd's: the last byte below 0xff incremented", "[etcd]") {
    CHECK(prefix_range_end("/a") == "/b");
    CHECK(prefix_range_end("/tokenshm/prod/") == "/tokenshm/prod0");
    CHECK(prefix_range_end(std::string("a\xff", 2)) == "b");
    CHECK(prefix_range_end(std::string("a\xfe\xff", 3)) == std::string("a\xff", 2));
    CHECK(prefix_range_end(std::string("\xff\xff", 2)) == std::string(1, '\0'));
    CHECK(prefix_range_end("") == std::string(1, '\0'));
}

TEST_CASE("range of a key sends it as Base64 and reads every field", "[etcd]") {
    FakeGateway gw;
    gw.ok(R"("kvs":[)" + kv_json("/t/leader", R"(,"lease":"9223372036854775807")") +
          R"(],"count":"1")");
    EtcdClient client(gw);
    const auto r = client.range("/t/leader");
    REQUIRE(r.has_value());
    REQUIRE(gw.sent.size() == 1);
    CHECK(gw.sent[0].path == "/v3/kv/range");
    const auto req = json(gw.sent[0].body);
    CHECK(str(req["key"]) == b64("/t/leader"));
    CHECK_FALSE(req.HasMember("range_end"));
    CHECK(gw.sent[0].token.empty());
    CHECK(r->revision == 7);
    CHECK_FALSE(r->more);
    REQUIRE(r->kvs.size() == 1);
    const EtcdKeyValue& kv = r->kvs[0];
    CHECK(kv.key == "/t/leader");
    CHECK(kv.value == std::string_view(kValue));
    CHECK(kv.create_revision == 3);
    CHECK(kv.mod_revision == 5);
    CHECK(kv.version == 2);
    CHECK(kv.lease == 9223372036854775807LL);
}

TEST_CASE("an empty range omits kvs; a key without lease or value reads 0 and empty", "[etcd]") {
    FakeGateway gw;
    gw.ok("");
    gw.ok(R"("kvs":[{"key":")" + b64("/t/a") +
          R"(","create_revision":"4","mod_revision":"4","version":"1"}],"more":true)");
    EtcdClient client(gw);
    const auto empty = client.range("/t/", RangeScope::prefix);
    REQUIRE(empty.has_value());
    CHECK(empty->kvs.empty());
    const auto req = json(gw.sent[0].body);
    CHECK(str(req["range_end"]) == b64("/t0"));
    const auto one = client.range("/t/", RangeScope::prefix);
    REQUIRE(one.has_value());
    REQUIRE(one->kvs.size() == 1);
    CHECK(one->kvs[0].lease == 0);
    CHECK(one->kvs[0].value.empty());
    CHECK(one->more);
}

TEST_CASE("a txn sends compares and puts with int64 as strings; won and lost", "[etcd]") {
    FakeGateway gw;
    gw.ok(R"("succeeded":true,"responses":[{"response_put":{"header":{"revision":"7"}}}])");
    gw.ok(
        R"("responses":[{"response_range":{"header":{"revision":"7"}}}])");  // lost: no "succeeded"
    EtcdClient client(gw);
    EtcdTxn t;
    t.compare.push_back(EtcdCompare::absent("/t/leader"));
    t.compare.push_back(EtcdCompare::mod_revision_is("/t/rec", 12));
    t.compare.push_back(EtcdCompare::version_is("/t/v", 3));
    t.compare.push_back(EtcdCompare::value_is("/t/x", kValue));
    t.success.push_back(EtcdOp::put("/t/leader", kValue, 7587869384221410311LL));
    t.success.push_back(EtcdOp::erase("/t/old"));
    t.failure.push_back(EtcdOp::put("/t/other", "v"));
    const auto won = client.txn(t);
    REQUIRE(won.has_value());
    CHECK(won->succeeded);
    CHECK(won->revision == 7);
    const auto lost = client.txn(t);
    REQUIRE(lost.has_value());
    CHECK_FALSE(lost->succeeded);

    CHECK(gw.sent[0].path == "/v3/kv/txn");
    const auto req = json(gw.sent[0].body);
    const auto& c = req["compare"];
    REQUIRE(c.Size() == 4);
    CHECK(str(c[0]["key"]) == b64("/t/leader"));
    CHECK(str(c[0]["target"]) == "CREATE");
    CHECK(str(c[0]["result"]) == "EQUAL");
    CHECK(str(c[0]["create_revision"]) == "0");
    CHECK(str(c[1]["target"]) == "MOD");
    CHECK(str(c[1]["mod_revision"]) == "12");
    CHECK(str(c[2]["target"]) == "VERSION");
    CHECK(str(c[2]["version"]) == "3");
    CHECK(str(c[3]["target"]) == "VALUE");
    CHECK(str(c[3]["value"]) == b64(kValue));
    const auto& s = req["success"];
    REQUIRE(s.Size() == 2);
    CHECK(str(s[0]["request_put"]["key"]) == b64("/t/leader"));
    CHECK(str(s[0]["request_put"]["value"]) == b64(kValue));
    CHECK(str(s[0]["request_put"]["lease"]) == "7587869384221410311");
    CHECK(str(s[1]["request_delete_range"]["key"]) == b64("/t/old"));
    const auto& f = req["failure"];
    REQUIRE(f.Size() == 1);
    CHECK_FALSE(f[0]["request_put"].HasMember("lease"));  // no lease: omitted, as etcd does
}

TEST_CASE("lease grant, keepalive (alive and gone) and revoke", "[etcd]") {
    FakeGateway gw;
    gw.ok(R"("ID":"7587869384221410311","TTL":"15")");
    gw.answer(200, R"({"result":{)" + std::string(kHeader) +
                       R"(,"ID":"7587869384221410311","TTL":"15"}})");
    gw.answer(200, R"({"result":{)" + std::string(kHeader) + R"(,"ID":"7587869384221410311"}})");
    gw.ok("");
    gw.answer(
        404,
        R"({"error":"etcdserver: requested lease not found","message":"etcdserver: requested lease not found","code":5})");
    EtcdClient client(gw);
    const auto lease = client.lease_grant(15s);
    REQUIRE(lease.has_value());
    CHECK(lease->id == 7587869384221410311LL);
    CHECK(lease->ttl == 15s);
    CHECK(str(json(gw.sent[0].body)["TTL"]) == "15");
    const auto alive = client.lease_keepalive(lease->id);
    REQUIRE(alive.has_value());
    CHECK_FALSE(alive->gone());
    CHECK(alive->ttl == 15s);
    CHECK(str(json(gw.sent[1].body)["ID"]) == "7587869384221410311");
    const auto gone = client.lease_keepalive(lease->id);  // 200 without "TTL"
    REQUIRE(gone.has_value());
    CHECK(gone->gone());
    CHECK(client.lease_revoke(lease->id).has_value());
    CHECK(gw.sent[3].path == "/v3/lease/revoke");
    CHECK(client.lease_revoke(lease->id).has_value());  // already gone: done too
}

TEST_CASE("a keepalive answer for another lease, or a stream error, is not believed", "[etcd]") {
    FakeGateway gw;
    gw.answer(200, R"({"result":{)" + std::string(kHeader) + R"(,"ID":"5","TTL":"15"}})");
    gw.answer(
        200,
        R"({"error":{"grpc_code":14,"http_code":503,"message":"transport is closing","http_status":"Service Unavailable"}})");
    EtcdClient client(gw);
    const auto other = client.lease_keepalive(6);
    REQUIRE_FALSE(other.has_value());
    CHECK(other.error().kind == EtcdError::Kind::bad_answer);
    const auto stream = client.lease_keepalive(6);
    REQUIRE_FALSE(stream.has_value());
    CHECK(stream.error().kind == EtcdError::Kind::rejected);
    CHECK(stream.error().code == 14);
    check_clean(stream.error());
}

TEST_CASE("transport outcomes keep their meaning: unreachable, no answer", "[etcd]") {
    FakeGateway gw;
    GatewayAnswer not_sent;
    not_sent.outcome = GatewayAnswer::Outcome::not_sent;
    not_sent.transport_error = "127.0.0.1:1: Connection refused";
    gw.script.push_back(std::move(not_sent));
    GatewayAnswer lost;
    lost.outcome = GatewayAnswer::Outcome::sent_no_answer;
    lost.transport_error = "127.0.0.1:2: Operation timed out";
    gw.script.push_back(std::move(lost));
    EtcdClient client(gw);
    const auto a = client.range("/k");
    REQUIRE_FALSE(a.has_value());
    CHECK(a.error().kind == EtcdError::Kind::unreachable);
    CHECK_THAT(a.error().message, Catch::Contains("Connection refused"));
    EtcdTxn t;
    t.success.push_back(EtcdOp::put("/k", kValue));
    const auto b = client.txn(t);
    REQUIRE_FALSE(b.has_value());
    CHECK(b.error().kind == EtcdError::Kind::no_answer);  // it may have been applied
    check_clean(b.error());
}

TEST_CASE("etcd's error answers are rejected with their gRPC code, in one line", "[etcd]") {
    FakeGateway gw;
    gw.answer(
        400,
        R"({"error":"etcdserver: key is not provided","message":"etcdserver: key is not provided","code":3})");
    gw.answer(503, "upstream down\n");  // not JSON: the status still says what happened
    EtcdClient client(gw);
    const auto a = client.range("/k");
    REQUIRE_FALSE(a.has_value());
    CHECK(a.error().kind == EtcdError::Kind::rejected);
    CHECK(a.error().code == 3);
    CHECK(a.error().message ==
          R"(etcd /v3/kv/range: HTTP 400, code 3: "etcdserver: key is not provided")");
    const auto b = client.range("/k");
    REQUIRE_FALSE(b.has_value());
    CHECK(b.error().kind == EtcdError::Kind::rejected);
    CHECK(b.error().message == "etcd /v3/kv/range: HTTP 503");
}

TEST_CASE("every malformed answer is bad_answer, never a value in the message", "[etcd]") {
    const std::string h = kHeader;
    const std::vector<std::pair<std::string, std::string>> cases = {
        {"not JSON", "{"},
        {"not an object", "[]"},
        {"no header", R"({"kvs":[]})"},
        {"header revision zero", R"({"header":{"revision":"0"}})"},
        {"revision not a number", R"({"header":{"revision":"7x"}})"},
        {"revision with a plus", R"({"header":{"revision":"+7"}})"},
        {"revision too big", R"({"header":{"revision":"9223372036854775808"}})"},
        {"revision a float", R"({"header":{"revision":7.5}})"},
        {"kvs not an array", "{" + h + R"(,"kvs":{}})"},
        {"kv not an object", "{" + h + R"(,"kvs":["x"]})"},
        {"value not Base64",
         "{" + h + R"(,"kvs":[{"key":")" + b64("/k") +
             R"(","create_revision":"3","mod_revision":"5","version":"2","value":"SEALED-VALUE"}]})"},
        {"value not a string",
         "{" + h + R"(,"kvs":[{"key":")" + b64("/k") +
             R"(","create_revision":"3","mod_revision":"5","version":"2","value":5}]})"},
        {"kv without key",
         "{" + h + R"(,"kvs":[{"create_revision":"3","mod_revision":"5","version":"2"}]})"},
        {"kv without create_revision",
         "{" + h + R"(,"kvs":[{"key":")" + b64("/k") + R"(","mod_revision":"5","version":"2"}]})"},
        {"kv modified before created",
         "{" + h + R"(,"kvs":[{"key":")" + b64("/k") +
             R"(","create_revision":"6","mod_revision":"5","version":"2"}]})"},
        {"kv newer than the answer",
         "{" + h + R"(,"kvs":[{"key":")" + b64("/k") +
             R"(","create_revision":"3","mod_revision":"8","version":"2"}]})"},
        {"another key", "{" + h + R"(,"kvs":[)" + kv_json("/other") + "]}"},
        {"duplicate member", "{" + h + "," + h + "}"},
        {"more not a bool", "{" + h + R"(,"more":"true"})"},
    };
    for (const auto& [what, body] : cases) {
        INFO(what);
        FakeGateway gw;
        gw.answer(200, body);
        EtcdClient client(gw);
        const auto r = client.range("/k");
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().kind == EtcdError::Kind::bad_answer);
        CHECK(r.error().message.rfind("etcd /v3/kv/range: ", 0) == 0);
        check_clean(r.error());
    }
}

TEST_CASE("a lost txn, a grant without ID or TTL, and answers too large", "[etcd]") {
    FakeGateway gw;
    gw.ok(R"("succeeded":"yes")");
    gw.ok(R"("TTL":"15")");
    gw.ok(R"("ID":"5")");
    gw.ok(R"("ID":"5","TTL":"15","error":"etcdserver: too many requests")");
    GatewayAnswer big;
    big.outcome = GatewayAnswer::Outcome::answer;
    big.status = 200;
    big.too_large = true;
    gw.script.push_back(std::move(big));
    EtcdClient client(gw);
    CHECK(client.txn(EtcdTxn{}).error().kind == EtcdError::Kind::bad_answer);
    CHECK(client.lease_grant(15s).error().kind == EtcdError::Kind::bad_answer);
    CHECK(client.lease_grant(15s).error().kind == EtcdError::Kind::bad_answer);
    CHECK(client.lease_grant(15s).error().kind == EtcdError::Kind::bad_answer);
    const auto r = client.range("/k");
    REQUIRE_FALSE(r.has_value());
    CHECK_THAT(r.error().message, Catch::Contains("too large"));
    CHECK(client.lease_grant(0s).error().kind == EtcdError::Kind::rejected);  // never sent
    CHECK(gw.sent.size() == 5);
}

TEST_CASE("with a user: authenticate first, send the token, re-authenticate once when stale",
          "[etcd][auth]") {
    FakeGateway gw;
    gw.ok(R"("token":"TOKEN.1")");
    gw.ok("");
    gw.answer(
        401,
        R"({"error":"etcdserver: invalid auth token","message":"etcdserver: invalid auth token","code":16})");
    gw.ok(R"("token":"TOKEN.2")");
    gw.ok("");
    EtcdClient client(gw, std::string("tokenshm"), Secret(std::string(kPassword)));
    REQUIRE(client.range("/k").has_value());
    REQUIRE(client.range("/k").has_value());
    REQUIRE(gw.sent.size() == 5);
    CHECK(gw.sent[0].path == "/v3/auth/authenticate");
    const auto auth = json(gw.sent[0].body);
    CHECK(str(auth["name"]) == "tokenshm");
    CHECK(str(auth["password"]) == kPassword);
    CHECK(gw.sent[0].token.empty());
    CHECK(gw.sent[1].token == "TOKEN.1");
    CHECK(gw.sent[2].token == "TOKEN.1");
    CHECK(gw.sent[3].path == "/v3/auth/authenticate");
    CHECK(gw.sent[4].token == "TOKEN.2");
}

TEST_CASE("a watch's token: none without a user, authenticated once, again when stale",
          "[etcd][auth][watch]") {
    FakeGateway gw;
    EtcdClient anonymous(gw);
    const auto none = anonymous.auth_token();
    REQUIRE(none.has_value());
    CHECK(none->empty());
    CHECK(gw.sent.empty());
    gw.ok(R"("token":"TOKEN.1")");
    gw.ok(R"("token":"TOKEN.2")");
    EtcdClient client(gw, std::string("tokenshm"), Secret(std::string(kPassword)));
    CHECK(client.auth_token()->reveal() == "TOKEN.1");
    CHECK(client.auth_token()->reveal() == "TOKEN.1");  // kept: no second request
    CHECK(gw.sent.size() == 1);
    CHECK(client.auth_token(true)->reveal() == "TOKEN.2");
    CHECK(gw.sent.size() == 2);
    CHECK(gw.sent[1].path == "/v3/auth/authenticate");
}

TEST_CASE("a wrong password is unauthenticated, without the password", "[etcd][auth]") {
    FakeGateway gw;
    gw.answer(
        400,
        R"({"error":"etcdserver: authentication failed, invalid user ID or password","message":"etcdserver: authentication failed, invalid user ID or password","code":3})");
    gw.answer(
        401,
        R"({"error":"etcdserver: invalid auth token","message":"etcdserver: invalid auth token","code":16})");
    EtcdClient client(gw, std::string("tokenshm"), Secret(std::string(kPassword)));
    const auto r = client.range("/k");
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().kind == EtcdError::Kind::unauthenticated);
    check_clean(r.error());
    CHECK(gw.sent.size() == 1);
    // Without a user, a 401 is just unauthenticated: nothing to retry with.
    EtcdClient anonymous(gw);
    CHECK(anonymous.range("/k").error().kind == EtcdError::Kind::unauthenticated);
}
