// How the etcd gateway's answers are read, field by field, shared by the
// unary calls (etcd_client.cpp) and the watch stream (etcd_watch.cpp): one
// home for protobuf's JSON rules (int64 as strings, zero and false fields
// omitted, bytes as Base64, one member per name). Callers must not use it:
// it throws detail::BadAnswer, which its two users turn into typed errors.
#pragma once

#include "secret.hpp"
#include "wiping_json.hpp"

#include <cstdint>
#include <string>

namespace tokenshm::refresher::detail {

// Thrown by the readers below, caught where an answer is parsed: keeps each
// field check one line. `why` names a field or a condition, never a value.
struct BadAnswer {
    std::string why;
};

[[noreturn]] void bad(const std::string& why);

// A member by name; absent: null. Two members of one name: refused (which
// one counts would be ambiguous).
const JsonValue* member(const JsonValue& obj, const char* name);
// A member that must be there and be an object.
const JsonValue& object_member(const JsonValue& obj, const char* name);
// An int64 as a string of digits, or a JSON integer; absent is 0.
std::int64_t int64_member(const JsonValue& obj, const char* name);
// As int64_member, and > 0.
std::int64_t positive_member(const JsonValue& obj, const char* name);
// true, false, or absent (false).
bool bool_member(const JsonValue& obj, const char* name);
// Bytes, as standard Base64; absent is empty.
WipedString bytes_member(const JsonValue& obj, const char* name);
// The header's revision, which every KV, lease and watch answer carries.
std::int64_t header_revision(const JsonValue& answer);

}  // namespace tokenshm::refresher::detail
