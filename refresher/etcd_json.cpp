#include "etcd_json.hpp"

#include "base64.hpp"

#include <charconv>
#include <string_view>

namespace tokenshm::refresher::detail {

void bad(const std::string& why) {
    throw BadAnswer{why};
}

const JsonValue* member(const JsonValue& obj, const char* name) {
    const JsonValue* found = nullptr;
    for (auto it = obj.MemberBegin(); it != obj.MemberEnd(); ++it) {
        if (std::string_view(it->name.GetString(), it->name.GetStringLength()) != name) continue;
        if (found != nullptr) bad(std::string("\"") + name + "\" appears twice");
        found = &it->value;
    }
    return found;
}

const JsonValue& object_member(const JsonValue& obj, const char* name) {
    const JsonValue* v = member(obj, name);
    if (v == nullptr) bad(std::string("\"") + name + "\" is missing");
    if (!v->IsObject()) bad(std::string("\"") + name + "\" is not an object");
    return *v;
}

std::int64_t int64_member(const JsonValue& obj, const char* name) {
    const JsonValue* v = member(obj, name);
    if (v == nullptr) return 0;
    if (v->IsInt64()) return v->GetInt64();
    std::int64_t out = 0;
    if (v->IsString()) {
        const char* s = v->GetString();
        const char* end = s + v->GetStringLength();
        const auto r = std::from_chars(s, end, out);
        if (r.ec == std::errc() && r.ptr == end && end != s && *s != '+') return out;
    }
    bad(std::string("\"") + name + "\" is not a 64-bit integer");
}

std::int64_t positive_member(const JsonValue& obj, const char* name) {
    const std::int64_t v = int64_member(obj, name);
    if (v <= 0) bad(std::string("\"") + name + "\" is missing or not positive");
    return v;
}

bool bool_member(const JsonValue& obj, const char* name) {
    const JsonValue* v = member(obj, name);
    if (v == nullptr) return false;
    if (!v->IsBool()) bad(std::string("\"") + name + "\" is not true or false");
    return v->GetBool();
}

WipedString bytes_member(const JsonValue& obj, const char* name) {
    const JsonValue* v = member(obj, name);
    if (v == nullptr) return {};
    if (!v->IsString()) bad(std::string("\"") + name + "\" is not a string");
    auto decoded = base64_decode(std::string_view(v->GetString(), v->GetStringLength()));
    if (!decoded) bad(std::string("\"") + name + "\" is not Base64");
    return std::move(*decoded);
}

std::int64_t header_revision(const JsonValue& answer) {
    return positive_member(object_member(answer, "header"), "revision");
}

}  // namespace tokenshm::refresher::detail
