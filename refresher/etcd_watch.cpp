#include "etcd_watch.hpp"

#include "base64.hpp"
#include "error.hpp"
#include "etcd_json.hpp"
#include "wiping_json.hpp"

#include <rapidjson/error/en.h>

#include <algorithm>
#include <utility>

namespace tokenshm::refresher {

const char* to_string(EtcdWatchError::Kind kind) noexcept {
    switch (kind) {
        case EtcdWatchError::Kind::unreachable:
            return "unreachable";
        case EtcdWatchError::Kind::disconnected:
            return "disconnected";
        case EtcdWatchError::Kind::stalled:
            return "stalled";
        case EtcdWatchError::Kind::compacted:
            return "compacted";
        case EtcdWatchError::Kind::canceled:
            return "canceled";
        case EtcdWatchError::Kind::rejected:
            return "rejected";
        case EtcdWatchError::Kind::unauthenticated:
            return "unauthenticated";
        case EtcdWatchError::Kind::bad_answer:
            return "bad_answer";
        case EtcdWatchError::Kind::too_large:
            return "too_large";
    }
    return "unknown";
}

WipedString watch_request(std::string_view prefix, std::int64_t start_revision) {
    // Keys are Base64, so only the revision needs writing: no escaping here.
    WipedString body("{\"create_request\":{\"key\":\"");
    append_base64(body, prefix);
    body.append("\",\"range_end\":\"", 15);
    append_base64(body, prefix_range_end(prefix));
    body.append("\"", 1);
    if (start_revision > 0) {
        const std::string rev = ",\"start_revision\":\"" + std::to_string(start_revision) + "\"";
        body.append(rev.data(), rev.size());
    }
    const std::string_view tail = ",\"progress_notify\":true}}";
    body.append(tail.data(), tail.size());
    return body;
}

namespace {

using Kind = EtcdWatchError::Kind;
using namespace detail;

constexpr std::size_t kMaxReasonText = 160;
constexpr std::size_t kSlice = 64 << 10;  // bytes framed between two checks of the cap

EtcdWatchError error(Kind kind, const std::string& why) {
    return EtcdWatchError{kind, 0, 0, printable_line("etcd watch: " + why)};
}

// A stream's error ({"error": {"grpc_code", "message", ...}}): its gRPC code
// and text. etcd's messages name conditions, not values.
EtcdWatchError stream_error(const JsonValue& e) {
    if (!e.IsObject()) bad("\"error\" is not an object");
    const std::int64_t c =
        member(e, "grpc_code") != nullptr ? int64_member(e, "grpc_code") : int64_member(e, "code");
    const int code = static_cast<int>(std::clamp<std::int64_t>(c, 0, 99));
    std::string line = "etcd watch: code " + std::to_string(code);
    const JsonValue* m = member(e, "message");
    if (m != nullptr && m->IsString())
        line +=
            ": " + quote(std::string_view(m->GetString(), m->GetStringLength()), kMaxReasonText);
    return EtcdWatchError{code == 16 ? Kind::unauthenticated : Kind::rejected, code, 0,
                          printable_line(line)};
}

EtcdWatchEvent read_event(const JsonValue& v, std::string_view prefix) {
    if (!v.IsObject()) bad("an event is not an object");
    EtcdWatchEvent ev;
    if (const JsonValue* t = member(v, "type")) {
        const std::string_view name =
            t->IsString() ? std::string_view(t->GetString(), t->GetStringLength()) : "";
        if (name == "DELETE") {
            ev.type = EtcdWatchEvent::Type::erase;
        } else if (name != "PUT") {
            bad("an event's \"type\" is neither PUT nor DELETE");
        }
    }
    const JsonValue& kv = object_member(v, "kv");
    WipedString key = bytes_member(kv, "key");
    if (key.empty()) bad("an event has no key");
    if (!key.view().starts_with(prefix)) bad("an event's key is outside the prefix watched");
    ev.kv.key = std::string(key.view());
    ev.kv.mod_revision = positive_member(kv, "mod_revision");
    if (ev.type == EtcdWatchEvent::Type::erase) return ev;
    ev.kv.value = bytes_member(kv, "value");
    ev.kv.create_revision = positive_member(kv, "create_revision");
    ev.kv.version = positive_member(kv, "version");
    ev.kv.lease = int64_member(kv, "lease");
    if (ev.kv.lease < 0) bad("an event's lease is negative");
    if (ev.kv.mod_revision < ev.kv.create_revision)
        bad("an event's key was modified before it was created");
    return ev;
}

}  // namespace

EtcdWatchError watch_http_error(long status, std::string_view body) {
    EtcdWatchError e{Kind::rejected, 0, 0, "etcd watch: HTTP " + std::to_string(status)};
    JsonDocument doc;
    doc.Parse<rapidjson::kParseIterativeFlag | rapidjson::kParseValidateEncodingFlag>(body.data(),
                                                                                      body.size());
    if (!doc.HasParseError() && doc.IsObject()) {
        try {
            const JsonValue* nested = member(doc, "error");
            e = stream_error(nested != nullptr ? *nested : doc);
            e.message = printable_line("etcd watch: HTTP " + std::to_string(status) + ", " +
                                       e.message.substr(std::string_view("etcd watch: ").size()));
        } catch (const BadAnswer&) {
        }
    }
    if (status == 401) e.kind = Kind::unauthenticated;
    return e;
}

EtcdWatchStream::EtcdWatchStream(std::string prefix, std::int64_t start_revision,
                                 EtcdWatchLimits limits, std::int64_t now_ms)
    : prefix_(std::move(prefix)),
      limits_(limits),
      next_revision_(std::max<std::int64_t>(start_revision, 0)),
      last_message_ms_(now_ms) {}

Expected<Done, EtcdWatchError> EtcdWatchStream::fail(EtcdWatchError e) {
    failed_ = e;
    buffer_.clear();
    consumed_ = scanned_ = 0;
    return Unexpected{std::move(e)};
}

std::int64_t EtcdWatchStream::stall_deadline_ms() const noexcept {
    return last_message_ms_ + limits_.silence.count();
}

Expected<Done, EtcdWatchError> EtcdWatchStream::check_alive(std::int64_t now_ms) {
    if (failed_) return Unexpected{*failed_};
    if (now_ms < stall_deadline_ms()) return Done{};
    return fail(error(Kind::stalled, "nothing for " + std::to_string(limits_.silence.count()) +
                                         " ms, not even a progress notification"));
}

EtcdWatchError EtcdWatchStream::ended(std::string why) {
    if (failed_) return *failed_;
    (void)fail(error(Kind::disconnected, why));
    return *failed_;
}

std::vector<EtcdWatchEvent> EtcdWatchStream::take_events() {
    return std::exchange(events_, {});
}

Expected<Done, EtcdWatchError> EtcdWatchStream::feed(std::string_view bytes, std::int64_t now_ms) {
    if (failed_) return Unexpected{*failed_};
    now_ms_ = now_ms;
    while (!bytes.empty()) {  // a slice at a time: the cap bounds what is held
        const std::string_view slice = bytes.substr(0, kSlice);
        bytes.remove_prefix(slice.size());
        buffer_.append(slice.data(), slice.size());
        if (auto ok = frame(); !ok) return ok;
        compact_buffer();
        if (buffered_bytes() > limits_.max_buffered_bytes) return too_large();
    }
    return Done{};
}

// A message (or what precedes one) longer than the cap.
Expected<Done, EtcdWatchError> EtcdWatchStream::too_large() {
    return fail(error(Kind::too_large, "more than " + std::to_string(limits_.max_buffered_bytes) +
                                           " bytes without a whole message"));
}

// Finds whole top-level objects in what is buffered, resuming where the
// last call stopped, and reads each. Between objects only whitespace (the
// gateway's newline); strings are skipped so braces inside them do not count.
Expected<Done, EtcdWatchError> EtcdWatchStream::frame() {
    const std::string_view b = buffer_.view();
    for (; scanned_ < b.size(); ++scanned_) {
        const char c = b[scanned_];
        if (scanned_ - consumed_ >= limits_.max_buffered_bytes) return too_large();
        if (depth_ == 0) {
            if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
                consumed_ = scanned_ + 1;
                continue;
            }
            if (c != '{') return fail(error(Kind::bad_answer, "the stream holds a non-object"));
        }
        if (in_string_) {
            if (escaped_) {
                escaped_ = false;
            } else if (c == '\\') {
                escaped_ = true;
            } else if (c == '"') {
                in_string_ = false;
            }
            continue;
        }
        if (c == '"') {
            in_string_ = true;
        } else if (c == '{' || c == '[') {
            ++depth_;
        } else if ((c == '}' || c == ']') && --depth_ == 0) {
            if (auto ok = message(b.substr(consumed_, scanned_ + 1 - consumed_)); !ok) return ok;
            consumed_ = scanned_ + 1;
        }
    }
    return Done{};
}

// Drops the bytes already read (wiped: they held values).
void EtcdWatchStream::compact_buffer() {
    if (consumed_ == 0) return;
    WipedString rest;
    rest.append(buffer_.data() + consumed_, buffer_.size() - consumed_);
    buffer_ = std::move(rest);
    scanned_ -= consumed_;
    consumed_ = 0;
}

// One watch response, validated whole before any of it is believed.
Expected<Done, EtcdWatchError> EtcdWatchStream::message(std::string_view text) {
    JsonDocument doc;
    doc.Parse<rapidjson::kParseIterativeFlag | rapidjson::kParseValidateEncodingFlag>(text.data(),
                                                                                      text.size());
    if (doc.HasParseError())
        return fail(error(Kind::bad_answer, std::string("a message is not JSON (") +
                                                rapidjson::GetParseError_En(doc.GetParseError()) +
                                                ")"));
    std::vector<EtcdWatchEvent> events;
    std::optional<EtcdWatchError> ends;
    try {
        ends = read_response(doc, events);
    } catch (const BadAnswer& e) {
        return fail(error(Kind::bad_answer, e.why));
    }
    if (ends) return fail(std::move(*ends));
    last_message_ms_ = now_ms_;
    for (auto& ev : events)
        events_.push_back(std::move(ev));
    return Done{};
}

// Reads {"result": WatchResponse} into `events` and the revisions, or says
// how the watch ended ({"error": ...}, canceled, compacted).
std::optional<EtcdWatchError> EtcdWatchStream::read_response(const JsonValue& doc,
                                                             std::vector<EtcdWatchEvent>& events) {
    if (!doc.IsObject()) bad("a message is not an object");
    if (const JsonValue* e = member(doc, "error")) return stream_error(*e);
    const JsonValue& r = object_member(doc, "result");
    // etcd's compacted answer has a header without a revision (0, omitted).
    const std::int64_t revision = int64_member(object_member(r, "header"), "revision");
    const bool created = bool_member(r, "created");
    const std::int64_t compact = int64_member(r, "compact_revision");
    if (compact < 0) bad("\"compact_revision\" is negative");
    if (bool_member(r, "fragment")) bad("a fragment, which was not asked for");
    const std::int64_t id = int64_member(r, "watch_id");  // the first watch's id is 0: omitted
    if (!created_ && !created) bad("a message before \"created\"");
    if (created_ && created) bad("\"created\" twice");
    if (created_ && id != watch_id_) bad("a message for another watch");
    watch_id_ = id;
    created_ = true;
    header_revision_ = std::max(header_revision_, revision);
    if (compact > 0)
        return EtcdWatchError{Kind::compacted, 0, compact,
                              "etcd watch: revision " + std::to_string(next_revision_) +
                                  " is compacted; the oldest left is " + std::to_string(compact)};
    if (bool_member(r, "canceled")) return canceled(r);
    if (revision <= 0) bad("\"revision\" is missing or not positive");
    read_events(r, revision, events);
    if (!events.empty()) {
        next_revision_ = events.back().kv.mod_revision + 1;
    } else if (!created) {
        // A progress notification: etcd sends it only to a watcher that has
        // caught up, so every event up to `revision` has been delivered.
        next_revision_ = std::max(next_revision_, revision + 1);
    }
    return std::nullopt;
}

EtcdWatchError EtcdWatchStream::canceled(const JsonValue& r) const {
    std::string line = "etcd watch: canceled";
    const JsonValue* why = member(r, "cancel_reason");
    if (why != nullptr && why->IsString())
        line += ": " +
                quote(std::string_view(why->GetString(), why->GetStringLength()), kMaxReasonText);
    return EtcdWatchError{Kind::canceled, 0, 0, printable_line(line)};
}

// The events, in etcd's order: under the prefix, revisions that only grow,
// none before the watch's start or newer than the message's header.
void EtcdWatchStream::read_events(const JsonValue& r, std::int64_t revision,
                                  std::vector<EtcdWatchEvent>& events) const {
    const JsonValue* list = member(r, "events");
    if (list == nullptr) return;
    if (!list->IsArray()) bad("\"events\" is not an array");
    std::int64_t last = next_revision_;
    for (const JsonValue& v : list->GetArray()) {
        EtcdWatchEvent ev = read_event(v, prefix_);
        if (ev.kv.mod_revision < last) bad("an event older than one already delivered");
        if (ev.kv.mod_revision > revision) bad("an event newer than its message's revision");
        last = ev.kv.mod_revision;
        events.push_back(std::move(ev));
    }
}

}  // namespace tokenshm::refresher
