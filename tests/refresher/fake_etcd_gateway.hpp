// An EtcdGateway that answers from a script of canned gateway answers (the
// JSON etcd's v3 gateway sends, int64 as strings, zero fields omitted) and
// records every request, for tests of what sits on EtcdClient (coordinator).
#pragma once

#include "base64.hpp"
#include "etcd_client.hpp"

#include <catch2/catch.hpp>

#include <cstdint>
#include <deque>
#include <string>
#include <string_view>
#include <vector>

namespace tokenshm::test {

class FakeEtcdGateway : public refresher::EtcdGateway {
  public:
    struct Sent {
        std::string path;
        std::string body;
    };
    std::deque<refresher::GatewayAnswer> script;
    std::vector<Sent> sent;

    refresher::GatewayAnswer post(std::string_view path, const refresher::WipedString& body,
                                  const refresher::Secret& /*token*/) override {
        sent.push_back({std::string(path), std::string(body.view())});
        INFO("unscripted request to " << path);
        REQUIRE_FALSE(script.empty());
        refresher::GatewayAnswer a = std::move(script.front());
        script.pop_front();
        return a;
    }

    static std::string header(std::int64_t revision) {
        return R"("header":{"cluster_id":"1","member_id":"2","revision":")" +
               std::to_string(revision) + R"(","raft_term":"2"})";
    }
    void answer(long status, const std::string& body) {
        refresher::GatewayAnswer a;
        a.outcome = refresher::GatewayAnswer::Outcome::answer;
        a.status = status;
        a.body = refresher::WipedString(body);
        script.push_back(std::move(a));
    }
    void ok(const std::string& members, std::int64_t revision = 7) {
        answer(200, "{" + header(revision) + (members.empty() ? "" : ",") + members + "}");
    }
    void outcome(refresher::GatewayAnswer::Outcome o) {
        refresher::GatewayAnswer a;
        a.outcome = o;
        a.transport_error = "canned transport failure";
        script.push_back(std::move(a));
    }
    void no_answer() { outcome(refresher::GatewayAnswer::Outcome::sent_no_answer); }
    void unreachable() { outcome(refresher::GatewayAnswer::Outcome::not_sent); }

    // The answers of the calls an election makes.
    void grant(std::int64_t id, int ttl_s) {
        ok(R"("ID":")" + std::to_string(id) + R"(","TTL":")" + std::to_string(ttl_s) + "\"");
    }
    void keepalive(std::int64_t id, int ttl_s) {  // ttl_s 0: gone (etcd omits "TTL")
        answer(200, R"({"result":{)" + header(7) + R"(,"ID":")" + std::to_string(id) + "\"" +
                        (ttl_s > 0 ? R"(,"TTL":")" + std::to_string(ttl_s) + "\"" : "") + "}}");
    }
    void range_empty(std::int64_t revision = 7) { ok("", revision); }
    void range_one(const std::string& key, std::string_view value, std::int64_t create_revision,
                   std::int64_t mod_revision, std::int64_t lease, std::int64_t revision) {
        ok(R"("kvs":[{"key":")" + refresher::base64_encode(key) + R"(","value":")" +
               refresher::base64_encode(value) + R"(","create_revision":")" +
               std::to_string(create_revision) + R"(","mod_revision":")" +
               std::to_string(mod_revision) + R"(","version":"1")" +
               (lease != 0 ? R"(,"lease":")" + std::to_string(lease) + "\"" : "") +
               R"(}],"count":"1")",
           revision);
    }
    void txn(bool succeeded, std::int64_t revision) {
        ok(succeeded ? R"("succeeded":true)" : "", revision);  // lost: no "succeeded"
    }
};

}  // namespace tokenshm::test
