#include "etcd_client.hpp"

#include "base64.hpp"
#include "etcd_json.hpp"
#include "wiping_json.hpp"

#include <rapidjson/error/en.h>
#include <rapidjson/writer.h>

#include <algorithm>
#include <limits>
#include <utility>

namespace tokenshm::refresher {

const char* to_string(EtcdError::Kind kind) noexcept {
    switch (kind) {
        case EtcdError::Kind::unreachable:
            return "unreachable";
        case EtcdError::Kind::no_answer:
            return "no_answer";
        case EtcdError::Kind::rejected:
            return "rejected";
        case EtcdError::Kind::unauthenticated:
            return "unauthenticated";
        case EtcdError::Kind::bad_answer:
            return "bad_answer";
    }
    return "unknown";
}

std::string prefix_range_end(std::string_view prefix) {
    std::string end(prefix);
    while (!end.empty()) {
        auto& last = reinterpret_cast<unsigned char&>(end.back());
        if (last < 0xff) {
            ++last;
            return end;
        }
        end.pop_back();
    }
    return std::string(1, '\0');
}

EtcdCompare EtcdCompare::absent(std::string key) {
    return create_revision_is(std::move(key), 0);
}
EtcdCompare EtcdCompare::create_revision_is(std::string key, std::int64_t revision) {
    return EtcdCompare{std::move(key), Target::create_revision, Result::equal, revision, {}};
}
EtcdCompare EtcdCompare::mod_revision_is(std::string key, std::int64_t revision) {
    return EtcdCompare{std::move(key), Target::mod_revision, Result::equal, revision, {}};
}
EtcdCompare EtcdCompare::version_is(std::string key, std::int64_t version) {
    return EtcdCompare{std::move(key), Target::version, Result::equal, version, {}};
}
EtcdCompare EtcdCompare::value_is(std::string key, std::string_view value) {
    return EtcdCompare{std::move(key), Target::value, Result::equal, 0,
                       WipedString(std::string(value))};
}

EtcdOp EtcdOp::put(std::string key, std::string_view value, std::int64_t lease) {
    return EtcdOp{Kind::put, std::move(key), WipedString(std::string(value)), lease};
}
EtcdOp EtcdOp::erase(std::string key) {
    return EtcdOp{Kind::erase, std::move(key), {}, 0};
}

namespace {

using Kind = EtcdError::Kind;
using detail::bad;
using detail::BadAnswer;
using detail::bool_member;
using detail::bytes_member;
using detail::header_revision;
using detail::int64_member;
using detail::member;
using detail::object_member;
using detail::positive_member;

Unexpected<EtcdError> fail(Kind kind, std::string message, int code = 0) {
    return Unexpected{EtcdError{kind, code, printable_line(message)}};
}

// ---- requests: JSON written straight into a wiped buffer -------------------

class Body : public WipedJsonObject {
  public:
    void bytes(const char* k, std::string_view v) {
        WipedString b64;
        append_base64(b64, v);
        str(k, b64.view());
    }
    void int64(const char* k, std::int64_t v) {  // as a string: protobuf's JSON for int64
        str(k, std::to_string(v));
    }
};

const char* target_name(EtcdCompare::Target t) {
    switch (t) {
        case EtcdCompare::Target::create_revision:
            return "CREATE";
        case EtcdCompare::Target::mod_revision:
            return "MOD";
        case EtcdCompare::Target::version:
            return "VERSION";
        case EtcdCompare::Target::value:
            return "VALUE";
    }
    return "CREATE";
}

const char* result_name(EtcdCompare::Result r) {
    switch (r) {
        case EtcdCompare::Result::equal:
            return "EQUAL";
        case EtcdCompare::Result::not_equal:
            return "NOT_EQUAL";
        case EtcdCompare::Result::greater:
            return "GREATER";
        case EtcdCompare::Result::less:
            return "LESS";
    }
    return "EQUAL";
}

void write_compare(Body& b, const EtcdCompare& c) {
    b.w().StartObject();
    b.bytes("key", c.key);
    b.key("target");
    b.w().String(target_name(c.target));
    b.key("result");
    b.w().String(result_name(c.result));
    switch (c.target) {
        case EtcdCompare::Target::create_revision:
            b.int64("create_revision", c.number);
            break;
        case EtcdCompare::Target::mod_revision:
            b.int64("mod_revision", c.number);
            break;
        case EtcdCompare::Target::version:
            b.int64("version", c.number);
            break;
        case EtcdCompare::Target::value:
            b.bytes("value", c.value.view());
            break;
    }
    b.w().EndObject();
}

void write_op(Body& b, const EtcdOp& op) {
    b.w().StartObject();
    b.key(op.kind == EtcdOp::Kind::put ? "request_put" : "request_delete_range");
    b.w().StartObject();
    b.bytes("key", op.key);
    if (op.kind == EtcdOp::Kind::put) {
        b.bytes("value", op.value.view());
        if (op.lease != 0) b.int64("lease", op.lease);
    }
    b.w().EndObject();
    b.w().EndObject();
}

template <class T, class F>
void write_array(Body& b, const char* key, const std::vector<T>& items, F write) {
    b.key(key);
    b.w().StartArray();
    for (const T& item : items)
        write(b, item);
    b.w().EndArray();
}

// ---- answers: every field checked before it is believed --------------------

constexpr std::size_t kMaxErrorText = 160;

// Parses an answer body as a JSON object into `doc`; then `read` turns it
// into the result. Any surprise is `bad_answer`, naming the call, not a value.
template <class R, class F>
Expected<R, EtcdError> parse(std::string_view what, const WipedString& body, F read) {
    JsonDocument doc;
    doc.Parse<rapidjson::kParseIterativeFlag | rapidjson::kParseValidateEncodingFlag>(body.data(),
                                                                                      body.size());
    if (doc.HasParseError())
        return fail(Kind::bad_answer, "etcd " + std::string(what) + ": answer is not JSON (" +
                                          rapidjson::GetParseError_En(doc.GetParseError()) +
                                          " at offset " + std::to_string(doc.GetErrorOffset()) +
                                          ")");
    if (!doc.IsObject())
        return fail(Kind::bad_answer, "etcd " + std::string(what) + ": answer is not an object");
    try {
        return read(static_cast<const JsonValue&>(doc));
    } catch (const BadAnswer& e) {
        return fail(Kind::bad_answer, "etcd " + std::string(what) + ": " + e.why);
    }
}

// etcd's error answer ({"error", "message", "code"}): the gRPC code and its
// text, shortened. etcd's messages name conditions, not values.
EtcdError error_of(std::string_view what, long status, const WipedString& body) {
    int code = 0;
    std::string text;
    parse<Done>(what, body, [&](const JsonValue& a) {
        // A unary call's error is the object itself; a stream's is {"error": {...}}.
        const JsonValue* nested = member(a, "error");
        const JsonValue& e = nested != nullptr && nested->IsObject() ? *nested : a;
        const std::int64_t c =
            member(e, "code") != nullptr ? int64_member(e, "code") : int64_member(e, "grpc_code");
        code = static_cast<int>(std::clamp<std::int64_t>(c, 0, 99));
        const JsonValue* m = member(e, "message");
        if (m != nullptr && m->IsString())
            text = std::string(m->GetString(),
                               std::min<std::size_t>(m->GetStringLength(), kMaxErrorText));
        return Done{};
    });
    std::string line = "etcd " + std::string(what) + ": HTTP " + std::to_string(status);
    if (code != 0) line += ", code " + std::to_string(code);
    if (!text.empty()) line += ": " + quote(text, kMaxErrorText);
    const bool auth = status == 401 || code == 16;
    return EtcdError{auth ? Kind::unauthenticated : Kind::rejected, code, printable_line(line)};
}

EtcdKeyValue read_kv(const JsonValue& v) {
    if (!v.IsObject()) bad("a kvs entry is not an object");
    EtcdKeyValue kv;
    WipedString key = bytes_member(v, "key");
    if (key.empty()) bad("a kvs entry has no key");
    kv.key = std::string(key.view());
    kv.value = bytes_member(v, "value");
    kv.create_revision = positive_member(v, "create_revision");
    kv.mod_revision = positive_member(v, "mod_revision");
    kv.version = positive_member(v, "version");
    kv.lease = int64_member(v, "lease");
    if (kv.mod_revision < kv.create_revision) bad("a kvs entry was modified before it was created");
    return kv;
}

bool in_scope(std::string_view asked, RangeScope scope, std::string_view key) {
    return scope == RangeScope::key ? key == asked : key.starts_with(asked);
}

EtcdRange read_range(const JsonValue& a, std::string_view asked, RangeScope scope) {
    EtcdRange r;
    r.revision = header_revision(a);
    r.more = bool_member(a, "more");
    if (const JsonValue* kvs = member(a, "kvs")) {
        if (!kvs->IsArray()) bad("\"kvs\" is not an array");
        for (const JsonValue& v : kvs->GetArray()) {
            r.kvs.push_back(read_kv(v));
            if (!in_scope(asked, scope, r.kvs.back().key)) bad("a key outside the range asked for");
            if (r.kvs.back().mod_revision > r.revision)
                bad("a key newer than the answer's revision");
        }
    }
    return r;
}

}  // namespace

EtcdClient::EtcdClient(EtcdGateway& gateway, std::optional<std::string> username, Secret password)
    : gateway_(gateway), username_(std::move(username)), password_(std::move(password)) {}

Expected<WipedString, EtcdError> EtcdClient::call_once(std::string_view path,
                                                       const WipedString& body) {
    GatewayAnswer a = gateway_.post(path, body, token_);
    const std::string what(path);
    switch (a.outcome) {
        case GatewayAnswer::Outcome::not_sent:
            return fail(Kind::unreachable, "etcd " + what + ": " + a.transport_error);
        case GatewayAnswer::Outcome::sent_no_answer:
            return fail(Kind::no_answer, "etcd " + what + ": " + a.transport_error);
        case GatewayAnswer::Outcome::answer:
            break;
    }
    if (a.too_large) return fail(Kind::bad_answer, "etcd " + what + ": answer too large");
    if (a.status != 200) return Unexpected{error_of(path, a.status, a.body)};
    return std::move(a.body);
}

Expected<Done, EtcdError> EtcdClient::authenticate() {
    Body b;
    b.key("name");
    b.w().String(username_->c_str(), static_cast<rapidjson::SizeType>(username_->size()));
    b.key("password");
    const std::string_view pw = password_.reveal();  // reveal(): into the request body
    b.w().String(pw.data(), static_cast<rapidjson::SizeType>(pw.size()));
    token_ = Secret();
    auto answer = call_once("/v3/auth/authenticate", b.done());
    if (!answer) {
        EtcdError e = std::move(answer).error();
        if (e.kind == Kind::rejected && e.code == 3)
            e.kind = Kind::unauthenticated;  // bad password
        return Unexpected{std::move(e)};
    }
    auto token = parse<Secret>("/v3/auth/authenticate", *answer, [](const JsonValue& a) {
        const JsonValue* t = member(a, "token");
        if (t == nullptr || !t->IsString() || t->GetStringLength() == 0 ||
            t->GetStringLength() > 4096)
            bad("no token");
        const std::string_view s(t->GetString(), t->GetStringLength());
        if (std::any_of(s.begin(), s.end(), [](char c) { return c < 0x21 || c > 0x7e; }))
            bad("the token is not printable ASCII");
        return Secret(std::string(s));
    });
    if (!token) return Unexpected{token.error()};
    token_ = std::move(*token);
    return Done{};
}

// With a user: authenticated first, and once more when etcd says the token
// went stale (it expires on etcd's side, or a member restarted).
Expected<WipedString, EtcdError> EtcdClient::call(std::string_view path, const WipedString& body) {
    if (username_ && token_.empty()) {
        if (auto ok = authenticate(); !ok) return Unexpected{ok.error()};
    }
    auto answer = call_once(path, body);
    if (answer || !username_ || answer.error().kind != Kind::unauthenticated) return answer;
    if (auto ok = authenticate(); !ok) return Unexpected{ok.error()};
    return call_once(path, body);
}

Expected<Secret, EtcdError> EtcdClient::auth_token(bool stale) {
    if (!username_) return Secret();
    if (stale || token_.empty()) {
        if (auto ok = authenticate(); !ok) return Unexpected{ok.error()};
    }
    return token_;
}

Expected<EtcdRange, EtcdError> EtcdClient::range(std::string_view key, RangeScope scope) {
    if (key.empty()) return fail(Kind::rejected, "etcd range: empty key", 3);
    Body b;
    b.bytes("key", key);
    if (scope == RangeScope::prefix) b.bytes("range_end", prefix_range_end(key));
    auto answer = call("/v3/kv/range", b.done());
    if (!answer) return Unexpected{answer.error()};
    return parse<EtcdRange>("/v3/kv/range", *answer,
                            [&](const JsonValue& a) { return read_range(a, key, scope); });
}

Expected<EtcdTxnResult, EtcdError> EtcdClient::txn(const EtcdTxn& t) {
    Body b;
    write_array(b, "compare", t.compare, write_compare);
    write_array(b, "success", t.success, write_op);
    write_array(b, "failure", t.failure, write_op);
    auto answer = call("/v3/kv/txn", b.done());
    if (!answer) return Unexpected{answer.error()};
    return parse<EtcdTxnResult>("/v3/kv/txn", *answer, [](const JsonValue& a) {
        return EtcdTxnResult{bool_member(a, "succeeded"), header_revision(a)};
    });
}

Expected<EtcdLease, EtcdError> EtcdClient::lease_grant(std::chrono::seconds ttl) {
    if (ttl.count() <= 0) return fail(Kind::rejected, "etcd lease grant: TTL must be positive", 3);
    Body b;
    b.int64("TTL", ttl.count());
    auto answer = call("/v3/lease/grant", b.done());
    if (!answer) return Unexpected{answer.error()};
    return parse<EtcdLease>("/v3/lease/grant", *answer, [](const JsonValue& a) {
        if (const JsonValue* e = member(a, "error");
            e != nullptr && e->IsString() && e->GetStringLength() > 0)
            bad("etcd says " + quote(std::string_view(e->GetString(), e->GetStringLength())));
        header_revision(a);
        return EtcdLease{positive_member(a, "ID"), std::chrono::seconds(positive_member(a, "TTL"))};
    });
}

Expected<EtcdKeepAlive, EtcdError> EtcdClient::lease_keepalive(std::int64_t id) {
    Body b;
    b.int64("ID", id);
    auto answer = call("/v3/lease/keepalive", b.done());
    if (!answer) return Unexpected{answer.error()};
    // A stream of one message: {"result": {...}}, or {"error": {...}}.
    bool stream_error = false;
    auto parsed = parse<EtcdKeepAlive>("/v3/lease/keepalive", *answer, [&](const JsonValue& a) {
        if (member(a, "error") != nullptr) {
            stream_error = true;
            return EtcdKeepAlive{};
        }
        const JsonValue& r = object_member(a, "result");
        header_revision(r);
        if (int64_member(r, "ID") != id) bad("the answer is for another lease");
        const std::int64_t ttl = int64_member(r, "TTL");  // absent (or -1): the lease is gone
        return EtcdKeepAlive{std::chrono::seconds(std::max<std::int64_t>(ttl, 0))};
    });
    if (stream_error) return Unexpected{error_of("/v3/lease/keepalive", 200, *answer)};
    return parsed;
}

Expected<Done, EtcdError> EtcdClient::lease_revoke(std::int64_t id) {
    Body b;
    b.int64("ID", id);
    auto answer = call("/v3/lease/revoke", b.done());
    if (!answer) {
        if (answer.error().kind == Kind::rejected && answer.error().code == 5) return Done{};
        return Unexpected{answer.error()};
    }
    return parse<Done>("/v3/lease/revoke", *answer, [](const JsonValue& a) {
        header_revision(a);
        return Done{};
    });
}

}  // namespace tokenshm::refresher
