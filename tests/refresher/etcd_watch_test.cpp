// EtcdWatchStream fed canned gateway streams: objects split anywhere by chunk
// boundaries and several in one chunk, PUT with "type" omitted (protobuf's
// zero value), DELETE, progress notifications, "created" first, canceled,
// compacted, stream errors, garbage and oversize, and the silence limit,
// on a clock passed in. The real etcd is tests/scaleout/etcd_gateway_watch_test.cpp.
#include "etcd_watch.hpp"
#include "base64.hpp"

#include <catch2/catch.hpp>

#include <rapidjson/document.h>

#include <string>
#include <vector>

using namespace tokenshm::refresher;
using namespace std::chrono_literals;

namespace {

constexpr const char* kValue = "SEALED-VALUE-tks1.abc";
using Kind = EtcdWatchError::Kind;

std::string b64(std::string_view s) {
    WipedString out;
    append_base64(out, s);
    return std::string(out.view());
}

std::string header(std::int64_t revision) {
    return R"("header":{"cluster_id":"1","member_id":"2","revision":")" + std::to_string(revision) +
           R"(","raft_term":"2"})";
}

std::string created(std::int64_t revision) {
    return R"({"result":{)" + header(revision) +
           R"(,"created":true}})"
           "\n";
}

std::string progress(std::int64_t revision) {
    return R"({"result":{)" + header(revision) + "}}\n";
}

// A PUT as the gateway writes it: no "type" (PUT is 0, so omitted).
std::string put_event(const std::string& key, std::string_view value, std::int64_t rev,
                      std::int64_t created_rev, std::int64_t version) {
    return R"({"kv":{"key":")" + b64(key) + R"(","create_revision":")" +
           std::to_string(created_rev) + R"(","mod_revision":")" + std::to_string(rev) +
           R"(","version":")" + std::to_string(version) + R"(","value":")" + b64(value) + "\"}}";
}

std::string delete_event(const std::string& key, std::int64_t rev) {
    return R"({"type":"DELETE","kv":{"key":")" + b64(key) + R"(","mod_revision":")" +
           std::to_string(rev) + "\"}}";
}

std::string events(std::int64_t revision, const std::vector<std::string>& evs) {
    std::string list;
    for (const auto& e : evs)
        list += (list.empty() ? "" : ",") + e;
    return R"({"result":{)" + header(revision) + R"(,"events":[)" + list + "]}}\n";
}

EtcdWatchStream stream(std::int64_t start = 5, EtcdWatchLimits limits = {}) {
    return EtcdWatchStream("/t/", start, limits, 0);
}

// The stream of a watch from 5: created, a put at 5, a put and a delete at 6
// (one txn), a progress notification at 9.
std::string sample() {
    return created(8) + events(8, {put_event("/t/rec/a", kValue, 5, 5, 1)}) +
           events(8, {put_event("/t/rec/b", "v2", 6, 6, 1), delete_event("/t/rec/a", 6)}) +
           progress(9);
}

void check_sample(EtcdWatchStream& s) {
    CHECK(s.created());
    const auto evs = s.take_events();
    REQUIRE(evs.size() == 3);
    CHECK(evs[0].type == EtcdWatchEvent::Type::put);
    CHECK(evs[0].kv.key == "/t/rec/a");
    CHECK(evs[0].kv.value == std::string_view(kValue));
    CHECK(evs[0].kv.mod_revision == 5);
    CHECK(evs[0].kv.version == 1);
    CHECK(evs[1].type == EtcdWatchEvent::Type::put);
    CHECK(evs[1].kv.key == "/t/rec/b");
    CHECK(evs[2].type == EtcdWatchEvent::Type::erase);
    CHECK(evs[2].kv.key == "/t/rec/a");
    CHECK(evs[2].kv.mod_revision == 6);
    CHECK(evs[2].kv.value.empty());
    CHECK(s.next_revision() == 10);  // the progress notification at 9
    CHECK(s.header_revision() == 9);
    CHECK(s.take_events().empty());
}

EtcdWatchError failure(EtcdWatchStream& s, const std::string& bytes) {
    const auto r = s.feed(bytes, 1);
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().message.find(kValue) == std::string::npos);
    CHECK(r.error().message.find(b64(kValue)) == std::string::npos);
    CHECK(r.error().message.find('\n') == std::string::npos);
    return r.error();
}

}  // namespace

TEST_CASE("the watch request: prefix as key and range_end, start revision, progress notify",
          "[etcd][watch]") {
    const WipedString body = watch_request("/t/", 42);
    rapidjson::Document d;
    d.Parse(body.data(), body.size());
    REQUIRE_FALSE(d.HasParseError());
    const auto& c = d["create_request"];
    CHECK(c["key"].GetString() == b64("/t/"));
    CHECK(c["range_end"].GetString() == b64("/t0"));
    CHECK(std::string(c["start_revision"].GetString()) == "42");
    CHECK(c["progress_notify"].GetBool());
    const WipedString now = watch_request("/t/", 0);
    d.Parse(now.data(), now.size());
    CHECK_FALSE(d["create_request"].HasMember("start_revision"));
}

TEST_CASE("a watch stream in one chunk, in chunks split at every byte, and byte by byte",
          "[etcd][watch]") {
    const std::string all = sample();
    SECTION("one chunk") {
        auto s = stream();
        REQUIRE(s.feed(all, 1).has_value());
        check_sample(s);
    }
    SECTION("two chunks, split at every offset") {
        for (std::size_t cut = 0; cut <= all.size(); ++cut) {
            auto s = stream();
            REQUIRE(s.feed(std::string_view(all).substr(0, cut), 1).has_value());
            REQUIRE(s.feed(std::string_view(all).substr(cut), 2).has_value());
            check_sample(s);
        }
    }
    SECTION("byte by byte; nothing is delivered before its message ends") {
        auto s = stream();
        const std::size_t first_put_end =
            created(8).size() + events(8, {put_event("/t/rec/a", kValue, 5, 5, 1)}).size();
        for (std::size_t i = 0; i < all.size(); ++i) {
            REQUIRE(s.feed(std::string_view(all).substr(i, 1), 1).has_value());
            if (i + 3 == first_put_end) CHECK(s.take_events().empty());  // '}' and '\n' left
            if (i + 2 == first_put_end) CHECK(s.take_events().size() == 1);
        }
        CHECK(s.next_revision() == 10);
    }
    SECTION("no newline between objects, and whitespace around them") {
        std::string packed;
        for (char c : all)
            if (c != '\n') packed += c;
        auto s = stream();
        REQUIRE(s.feed("\r\n " + packed + " \n\n", 1).has_value());
        check_sample(s);
    }
}

TEST_CASE("a watch stream: braces and quotes inside strings do not end a message",
          "[etcd][watch]") {
    auto s = stream();
    REQUIRE(s.feed(created(5), 1).has_value());
    const auto r = s.feed(
        R"({"result":{)" + header(6) + R"(,"canceled":true,"cancel_reason":"odd } \" { reason"}})",
        2);
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().kind == Kind::canceled);
    CHECK(r.error().message.find("odd } \\\" { reason") != std::string::npos);
}

TEST_CASE("a watch stream: revisions move next_revision only when nothing can be lost",
          "[etcd][watch]") {
    SECTION("created does not move it; a catching-up batch moves it to its last event + 1") {
        auto s = stream(3);
        REQUIRE(s.feed(created(100), 1).has_value());
        CHECK(s.next_revision() == 3);
        REQUIRE(s.feed(events(100, {put_event("/t/a", "x", 4, 4, 1)}), 2).has_value());
        CHECK(s.next_revision() == 5);  // not 101: events up to 100 may still come
    }
    SECTION("a progress notification never moves it back") {
        auto s = stream(50);
        REQUIRE(s.feed(created(60) + progress(40), 1).has_value());
        CHECK(s.next_revision() == 50);
    }
    SECTION("a watch from now keeps 0 until an event or a progress notification") {
        auto s = stream(0);
        REQUIRE(s.feed(created(60), 1).has_value());
        CHECK(s.next_revision() == 0);
        REQUIRE(s.feed(progress(61), 1).has_value());
        CHECK(s.next_revision() == 62);
    }
}

TEST_CASE("a watch stream: canceled, compacted and stream errors end it with a typed error",
          "[etcd][watch]") {
    SECTION("compacted: the caller must range again") {
        auto s = stream(2);
        REQUIRE(s.feed(created(90), 1).has_value());
        const auto e =
            failure(s, R"({"result":{)" + header(90) +
                           R"(,"compact_revision":"40","canceled":true,)"
                           R"("cancel_reason":"mvcc: required revision has been compacted"}})");
        CHECK(e.kind == Kind::compacted);
        CHECK(e.compact_revision == 40);
    }
    SECTION("compacted as etcd 3.4 sends it: the header has no revision") {
        auto s = stream(2);
        REQUIRE(s.feed(created(90), 1).has_value());
        const auto e = failure(s, R"({"result":{"header":{"cluster_id":"1","member_id":"2",)"
                                  R"("raft_term":"2"},"compact_revision":"4","canceled":true}})");
        CHECK(e.kind == Kind::compacted);
        CHECK(e.compact_revision == 4);
    }
    SECTION("canceled, with etcd's reason") {
        auto s = stream();
        const auto e = failure(
            s, R"({"result":{)" + header(9) +
                   R"(,"created":true,"canceled":true,"cancel_reason":"permission denied"}})");
        CHECK(e.kind == Kind::canceled);
        CHECK(e.message.find("permission denied") != std::string::npos);
    }
    SECTION("a stream error: unauthenticated (16) or rejected with its code") {
        auto s = stream();
        REQUIRE(s.feed(created(9), 1).has_value());
        const auto e = failure(
            s,
            R"({"error":{"grpc_code":16,"http_code":401,"message":"etcdserver: invalid auth token","http_status":"Unauthorized"}})");
        CHECK(e.kind == Kind::unauthenticated);
        CHECK(e.code == 16);
        auto t = stream();
        const auto r =
            failure(t, R"({"error":{"grpc_code":14,"message":"etcdserver: no leader"}})");
        CHECK(r.kind == Kind::rejected);
        CHECK(r.code == 14);
    }
    SECTION("an HTTP error answer") {
        CHECK(watch_http_error(401, R"({"error":"x","code":16,"message":"bad token"})").kind ==
              Kind::unauthenticated);
        const auto e = watch_http_error(400, R"({"code":3,"message":"bad request"})");
        CHECK(e.kind == Kind::rejected);
        CHECK(e.code == 3);
        CHECK(watch_http_error(502, "<html>").kind == Kind::rejected);
    }
    SECTION("a failure is final") {
        auto s = stream();
        const auto e = failure(s, "nonsense");
        CHECK(e.kind == Kind::bad_answer);
        CHECK_FALSE(s.feed(created(9), 2).has_value());
        CHECK(s.ended("eof").kind == Kind::bad_answer);
    }
    SECTION("the end of the stream is disconnected") {
        auto s = stream();
        REQUIRE(s.feed(created(9), 1).has_value());
        CHECK(s.ended("etcd ended the stream").kind == Kind::disconnected);
    }
}

TEST_CASE("a watch stream refuses what the gateway does not send, naming no value",
          "[etcd][watch]") {
    const std::string put5 = put_event("/t/a", kValue, 5, 5, 1);
    const std::vector<std::pair<const char*, std::string>> bad = {
        {"garbage", "\x01\x02 {"},
        {"not JSON", "{\"result\":{,}}"},
        {"an array", "[1,2]"},
        {"events before created", events(8, {put5})},
        {"created twice", created(8) + created(8)},
        {"no header", created(8) + R"({"result":{"events":[]}})"},
        {"revision not a number", created(8) + R"({"result":{"header":{"revision":"7x"}}})"},
        {"revision as a float", created(8) + R"({"result":{"header":{"revision":7.5}}})"},
        {"unknown event type", created(8) + events(8, {R"({"type":"EXPIRE","kv":{"key":")" +
                                                       b64("/t/a") + R"(","mod_revision":"5"}})"})},
        {"type as a number", created(8) + events(8, {R"({"type":1,"kv":{"key":")" + b64("/t/a") +
                                                     R"(","mod_revision":"5"}})"})},
        {"key outside the prefix", created(8) + events(8, {put_event("/u/a", kValue, 5, 5, 1)})},
        {"value not Base64",
         created(8) +
             events(
                 8,
                 {R"({"kv":{"key":")" + b64("/t/a") +
                  R"(","create_revision":"5","mod_revision":"5","version":"1","value":"!!"}})"})},
        {"a put without version",
         created(8) + events(8, {R"({"kv":{"key":")" + b64("/t/a") +
                                 R"(","create_revision":"5","mod_revision":"5"}})"})},
        {"modified before created", created(8) + events(8, {put_event("/t/a", kValue, 5, 6, 1)})},
        {"event newer than header", created(4) + events(4, {put5})},
        {"event before the start", created(8) + events(8, {put_event("/t/a", kValue, 4, 4, 1)})},
        {"revisions going back",
         created(8) + events(8, {put_event("/t/a", kValue, 6, 6, 1), put5})},
        {"another watch id", created(8) + R"({"result":{)" + header(8) + R"(,"watch_id":"3"}})"},
        {"a fragment", created(8) + R"({"result":{)" + header(8) + R"(,"fragment":true}})"},
        {"two results", R"({"result":{)" + header(8) + R"(,"created":true},"result":{}})"},
    };
    for (const auto& [what, bytes] : bad) {
        INFO(what);
        auto s = stream();
        const auto e = failure(s, bytes);
        CHECK(e.kind == Kind::bad_answer);
        CHECK(s.take_events().empty());
    }
}

TEST_CASE("a watch stream caps the bytes it holds without a whole message", "[etcd][watch]") {
    EtcdWatchLimits limits;
    limits.max_buffered_bytes = 1000;
    auto s = stream(5, limits);
    REQUIRE(s.feed(created(8), 1).has_value());
    // Whole messages larger in total than the cap pass: only what waits counts.
    for (int i = 0; i < 20; ++i)
        REQUIRE(s.feed(progress(9 + i), 1).has_value());
    const std::string big = events(40, {put_event("/t/a", std::string(2000, 'v'), 30, 30, 1)});
    SECTION("a message in pieces") {
        REQUIRE(s.feed(big.substr(0, 900), 2).has_value());
        CHECK(s.buffered_bytes() == 900);
        const auto e = failure(s, big.substr(900));
        CHECK(e.kind == Kind::too_large);
        CHECK(s.buffered_bytes() == 0);  // dropped (and wiped) on failure
    }
    SECTION("a message in one chunk") {
        CHECK(failure(s, big).kind == Kind::too_large);
    }
    SECTION("a message under the cap passes") {
        const std::string fits = events(40, {put_event("/t/a", std::string(600, 'v'), 30, 30, 1)});
        REQUIRE(fits.size() < 1000);
        REQUIRE(s.feed(fits, 2).has_value());
        CHECK(s.take_events().size() == 1);
    }
}

TEST_CASE("a watch is stalled when nothing whole arrives within the silence limit",
          "[etcd][watch]") {
    EtcdWatchLimits limits;
    limits.silence = 3000ms;
    EtcdWatchStream s("/t/", 5, limits, 1000);
    CHECK(s.stall_deadline_ms() == 4000);
    CHECK(s.check_alive(3999).has_value());
    REQUIRE(s.feed(created(8), 3000).has_value());
    CHECK(s.stall_deadline_ms() == 6000);
    REQUIRE(s.feed(progress(8).substr(0, 10), 5500).has_value());  // part of a message: no
    CHECK(s.stall_deadline_ms() == 6000);
    REQUIRE(s.feed(progress(8).substr(10), 5900).has_value());
    CHECK(s.stall_deadline_ms() == 8900);
    const auto r = s.check_alive(8900);
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().kind == Kind::stalled);
    CHECK(s.next_revision() == 9);  // where the caller reconnects
    CHECK_FALSE(s.feed(progress(9), 9000).has_value());
}

TEST_CASE("the default silence is three of etcd's default progress intervals", "[etcd][watch]") {
    CHECK(EtcdWatchLimits{}.silence == 30min);
}
