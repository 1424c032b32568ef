#include "publication.hpp"

#include "error.hpp"
#include "wiping_json.hpp"

#include <rapidjson/writer.h>

#include <utility>

namespace tokenshm::refresher {

namespace {

using Kind = PublicationError::Kind;

constexpr int kPayloadVersion = 1;

Unexpected<PublicationError> fail(Kind kind, std::string_view message) {
    return Unexpected{PublicationError{kind, printable_line(message)}};
}

// ---- writing: straight into a wiped buffer ---------------------------------

class PayloadWriter : public WipedJsonObject {
  public:
    void i64(const char* k, std::int64_t v) {
        key(k);
        w().Int64(v);
    }
};

WipedString encode_payload(const Publication& p) {
    const Published& r = p.record;
    PayloadWriter w;
    w.i64("v", kPayloadVersion);
    w.i64("version", static_cast<std::int64_t>(r.version));
    w.i64("expires_at_ms", r.expires_at_ms);
    w.i64("issued_at_ms", r.issued_at_ms);
    w.i64("next_refresh_ms", r.next_refresh_ms);
    w.i64("last_attempt_ms", r.last_attempt_ms);
    w.str("state", shm::to_string(r.state));
    w.i64("failures", r.failures);
    w.str("access_token", r.access_token.reveal());  // reveal(): into the sealed payload
    w.str("token_type", r.token_type);
    w.str("scope", r.scope);
    w.str("last_error", r.last_error);
    if (p.refresh_token) w.str("refresh_token", p.refresh_token->reveal());  // sealed too
    return w.done();
}

// ---- reading: every field checked; a failure names the field only ----------

struct FieldReader {
    const JsonValue& obj;
    const char* bad = nullptr;  // the first field that was missing or of the wrong type

    const JsonValue* get(const char* name) {
        const auto it = obj.FindMember(name);
        return it == obj.MemberEnd() ? nullptr : &it->value;
    }
    std::int64_t i64(const char* name) {
        const JsonValue* v = get(name);
        if (v != nullptr && v->IsInt64()) return v->GetInt64();
        if (bad == nullptr) bad = name;
        return 0;
    }
    std::string_view str(const char* name, bool optional = false) {
        const JsonValue* v = get(name);
        if (v != nullptr && v->IsString()) return {v->GetString(), v->GetStringLength()};
        if ((v != nullptr || !optional) && bad == nullptr) bad = name;
        return {};
    }
};

std::optional<shm::RecordState> state_named(std::string_view name) {
    for (std::uint32_t i = 0; i <= shm::kLastRecordState; ++i) {
        const auto s = static_cast<shm::RecordState>(i);
        if (name == shm::to_string(s)) return s;
    }
    return std::nullopt;
}

Expected<Publication, PublicationError> decode_payload(const Secret& text, std::string_view where) {
    JsonDocument doc;
    doc.Parse<rapidjson::kParseValidateEncodingFlag>(text.reveal().data(), text.size());
    if (doc.HasParseError() || !doc.IsObject())
        return fail(Kind::malformed, std::string(where) + ": the opened payload is not JSON");
    FieldReader f{doc};
    if (f.i64("v") != kPayloadVersion)
        return fail(Kind::malformed, std::string(where) + ": payload of an unknown version");
    Publication p;
    Published& r = p.record;
    r.version = static_cast<std::uint64_t>(f.i64("version"));
    r.expires_at_ms = f.i64("expires_at_ms");
    r.issued_at_ms = f.i64("issued_at_ms");
    r.next_refresh_ms = f.i64("next_refresh_ms");
    r.last_attempt_ms = f.i64("last_attempt_ms");
    const auto state = state_named(f.str("state"));
    r.failures = static_cast<std::uint32_t>(f.i64("failures"));
    r.access_token = Secret(std::string(f.str("access_token")));
    r.token_type = std::string(f.str("token_type"));
    r.scope = std::string(f.str("scope"));
    r.last_error = std::string(f.str("last_error"));
    if (const std::string_view rt = f.str("refresh_token", true); !rt.empty())
        p.refresh_token = Secret(std::string(rt));
    if (f.bad != nullptr)
        return fail(Kind::malformed, std::string(where) + ": payload field \"" + f.bad +
                                         "\" is missing or of the wrong type");
    if (!state) return fail(Kind::malformed, std::string(where) + ": payload state is unknown");
    r.state = *state;
    return p;
}

struct Envelope {
    std::uint64_t counter = 0;
    std::string sealed;
};

Expected<Envelope, PublicationError> read_envelope(std::string_view text, std::string_view where) {
    JsonDocument doc;
    doc.Parse<rapidjson::kParseValidateEncodingFlag>(text.data(), text.size());
    if (doc.HasParseError() || !doc.IsObject())
        return fail(Kind::malformed, std::string(where) + ": not a tokenshm publication envelope");
    // Through a const reference: clang rejects == on a Document's MemberIterator
    // (-Wambiguous-reversed-operator under C++20), not on ConstMemberIterator.
    const auto& obj = static_cast<const JsonDocument::ValueType&>(doc);
    const auto c = obj.FindMember("counter");
    const auto s = obj.FindMember("sealed");
    if (c == obj.MemberEnd() || !c->value.IsUint64() || s == obj.MemberEnd() ||
        !s->value.IsString())
        return fail(Kind::malformed,
                    std::string(where) + ": envelope without a counter or a sealed payload");
    return Envelope{c->value.GetUint64(),
                    std::string(s->value.GetString(), s->value.GetStringLength())};
}

}  // namespace

Expected<std::string, PublicationError> seal_publication(const SealKey& key, std::string_view name,
                                                         std::uint64_t counter,
                                                         const Publication& p) {
    const WipedString payload = encode_payload(p);
    auto sealed = seal(key, name, counter, payload.view());
    if (!sealed)
        return fail(Kind::crypto, "sealing the publication failed: " + sealed.error().message);
    return "{\"counter\":" + std::to_string(counter) + ",\"sealed\":\"" + *sealed + "\"}";
}

Expected<std::uint64_t, PublicationError> envelope_counter(std::string_view envelope) {
    auto e = read_envelope(envelope, "publication");
    if (!e) return Unexpected{e.error()};
    return e->counter;
}

Expected<OpenedPublication, PublicationError> open_publication(const SealKey& key,
                                                               std::string_view name,
                                                               std::string_view key_in_etcd,
                                                               std::string_view envelope) {
    const std::string where = quote(key_in_etcd, 200);
    auto e = read_envelope(envelope, where);
    if (!e) return Unexpected{e.error()};
    auto opened = open_sealed(key, name, e->counter, e->sealed);
    if (!opened) {
        if (opened.error().kind == SealError::Kind::does_not_open)
            return fail(Kind::does_not_open,
                        "seal key does not open " + where +
                            " (wrong seal_key_file? or the value was changed or moved)");
        return fail(Kind::malformed, where + ": " + opened.error().message);
    }
    auto p = decode_payload(*opened, where);
    if (!p) return Unexpected{p.error()};
    return OpenedPublication{e->counter, std::move(*p)};
}

}  // namespace tokenshm::refresher
