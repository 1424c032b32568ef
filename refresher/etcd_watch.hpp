// A watch of a key prefix over etcd's v3 JSON gateway (issue 12, design
// point 2): POST /v3/watch with one create_request, answered by a chunked
// stream of JSON objects, one per watch response ({"result": {...}}, or
// {"error": {...}} when the stream fails), each followed by a newline.
//
// Two parts, so the first is tested without a network:
//  - EtcdWatchStream reads the bytes as they come: chunk boundaries fall
//    anywhere (an object split in two, several in one chunk), so it frames
//    whole top-level objects itself and validates each before believing it;
//  - EtcdWatch (etcd_watch_curl.cpp) owns a libcurl easy handle in a multi
//    handle of its own, never blocks, and hands the bytes to a stream. A
//    poll()-based loop asks it for fds() and timeout_ms(), polls them with
//    its own, and calls step() whenever poll returns (ready or not):
//
//      auto w = EtcdWatch::start(options, "/tokenshm/", range.revision + 1, token, now);
//      for (;;) {
//          std::vector<pollfd> fds = (*w)->fds();  // + the loop's own
//          poll(fds.data(), fds.size(), std::min(loop_timeout, (*w)->timeout_ms(now)));
//          auto ok = (*w)->step(now = system_now().mono_ms);
//          for (EtcdWatchEvent& e : (*w)->take_events()) publish(e);
//          if (!ok) { /* see below: restart at next_revision(), or range again */ }
//      }
//
// Liveness: a watch stream is silent while nothing changes, and a paused or
// partitioned etcd is silence too. The watch asks for progress notifications
// (progress_notify), which etcd sends every
// --experimental-watch-progress-notify-interval (10 min by default) while
// the watcher is synced; when no whole message arrives within `silence`
// (default 3 x that interval) the watch fails `stalled`.
//
// Every failure is final for that watch. After `stalled`, `disconnected`
// or `unreachable` the caller starts a new watch at next_revision(), which
// loses nothing: it is one past the newest revision whose events were all
// delivered (a batch's last event, or a progress notification's revision;
// never a `created` or catching-up header, which can run ahead of events
// still to come). After `compacted` or `bad_answer` it ranges the prefix
// again and watches from the range's revision + 1: a bad answer (an event
// older than a progress notification said, as etcd bug 20221 can send to a
// watch from a future revision) means next_revision() cannot be trusted.
//
// Values are secrets (sealed tokens, records with access tokens): the buffer
// and the parse are wiped, and no error names a value or a key's bytes.
#pragma once

#include "etcd_client.hpp"
#include "secret.hpp"
#include "wiping_json.hpp"

#include <tokenshm/expected.hpp>

#include <poll.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

typedef void CURLM;  // NOLINT: libcurl's own spelling

namespace tokenshm::refresher {

struct EtcdWatchError {
    enum class Kind {
        unreachable,      // no connection to the endpoint: nothing was watched
        disconnected,     // the stream ended or broke: start again at next_revision()
        stalled,          // nothing, not even a progress notification, for `silence`
        compacted,        // the start revision is gone: range the prefix, then watch again
        canceled,         // etcd canceled the watch (its reason in the message)
        rejected,         // etcd answered with an error: `code` is the gRPC status code
        unauthenticated,  // etcd refused our token (code 16, or HTTP 401)
        bad_answer,       // bytes that are not what the gateway sends
        too_large,        // more than max_buffered_bytes without a whole message
    };
    Kind kind;
    int code = 0;                       // for rejected and unauthenticated
    std::int64_t compact_revision = 0;  // for compacted: the oldest revision left
    std::string message;                // one printable line, never a value
};

const char* to_string(EtcdWatchError::Kind kind) noexcept;

struct EtcdWatchEvent {
    enum class Type { put, erase };
    Type type = Type::put;  // the gateway omits "type" for PUT (protobuf's zero value)
    // For an erase, only key and mod_revision (the delete's revision) are set.
    EtcdKeyValue kv;
};

struct EtcdWatchLimits {
    // The longest message, and the most bytes held while one arrives; more
    // is `too_large`.
    std::size_t max_buffered_bytes = 16 << 20;
    // 3 x etcd's default --experimental-watch-progress-notify-interval (10 min).
    std::chrono::milliseconds silence{std::chrono::minutes(30)};
};

class EtcdWatchStream {
  public:
    // Watches keys starting with `prefix` from `start_revision` (0: from
    // now); `now_ms` (CLOCK_MONOTONIC) starts the silence clock.
    EtcdWatchStream(std::string prefix, std::int64_t start_revision, EtcdWatchLimits limits,
                    std::int64_t now_ms);

    // Takes what arrived; every whole message is validated and its events
    // queued. After a failure every call returns that failure.
    Expected<Done, EtcdWatchError> feed(std::string_view bytes, std::int64_t now_ms);
    // `stalled` once nothing whole arrived for `silence`.
    Expected<Done, EtcdWatchError> check_alive(std::int64_t now_ms);
    // The stream ended (EOF): `disconnected`, or the failure already seen.
    EtcdWatchError ended(std::string why);

    // The events validated since the last call, in etcd's order.
    std::vector<EtcdWatchEvent> take_events();
    // Where a new watch starts so that nothing is lost or seen twice.
    std::int64_t next_revision() const noexcept { return next_revision_; }
    // etcd's newest revision as last reported (header), 0 before the first message.
    std::int64_t header_revision() const noexcept { return header_revision_; }
    bool created() const noexcept { return created_; }
    // CLOCK_MONOTONIC ms at which the watch will be `stalled`.
    std::int64_t stall_deadline_ms() const noexcept;
    std::size_t buffered_bytes() const noexcept { return buffer_.size() - consumed_; }

  private:
    Expected<Done, EtcdWatchError> fail(EtcdWatchError e);
    Expected<Done, EtcdWatchError> frame();
    Expected<Done, EtcdWatchError> too_large();
    Expected<Done, EtcdWatchError> message(std::string_view text);
    std::optional<EtcdWatchError> read_response(const JsonValue& doc,
                                                std::vector<EtcdWatchEvent>& events);
    EtcdWatchError canceled(const JsonValue& result) const;
    void read_events(const JsonValue& result, std::int64_t revision,
                     std::vector<EtcdWatchEvent>& events) const;
    void compact_buffer();

    std::string prefix_;
    EtcdWatchLimits limits_;
    std::int64_t next_revision_;
    std::int64_t header_revision_ = 0;
    std::int64_t last_message_ms_;
    std::int64_t now_ms_ = 0;  // the feed() in progress
    std::int64_t watch_id_ = 0;
    bool created_ = false;
    std::optional<EtcdWatchError> failed_;
    std::vector<EtcdWatchEvent> events_;
    // Framing: bytes [consumed_, scanned_) belong to the object being read.
    WipedString buffer_;
    std::size_t consumed_ = 0;
    std::size_t scanned_ = 0;
    int depth_ = 0;
    bool in_string_ = false;
    bool escaped_ = false;
};

// The request body of a watch: create_request for `prefix` from
// `start_revision`, with progress notifications.
WipedString watch_request(std::string_view prefix, std::int64_t start_revision);

// A watch answered with an HTTP status other than 200: etcd's error body
// ({"error": {...}} or the error object itself) read for its gRPC code and
// text; `unauthenticated` for 401 or code 16, else `rejected`.
EtcdWatchError watch_http_error(long status, std::string_view body);

// The transport: one watch on one endpoint, non-blocking. Not thread-safe.
class EtcdWatch {
  public:
    struct Options {
        // Endpoints, TLS files and connect_timeout as the unary calls have
        // them (`timeout` is not used: a watch lasts); the watch connects to
        // endpoints[endpoint % size], so a caller moves on by counting.
        CurlEtcdGateway::Options gateway;
        std::size_t endpoint = 0;
        EtcdWatchLimits limits;
    };
    // Starts the request (nothing is sent before the first step()).
    // `token`: etcd's auth token when etcd has authentication, else empty.
    static Expected<std::unique_ptr<EtcdWatch>, EtcdWatchError> start(Options options,
                                                                      std::string prefix,
                                                                      std::int64_t start_revision,
                                                                      const Secret& token,
                                                                      std::int64_t now_ms);
    ~EtcdWatch();
    EtcdWatch(const EtcdWatch&) = delete;
    EtcdWatch& operator=(const EtcdWatch&) = delete;

    // The sockets to poll now (libcurl's, from curl_multi_fdset: descriptors
    // below FD_SETSIZE, which a daemon's are) and how long poll may wait at
    // most: libcurl's own timers and the stall deadline.
    std::vector<pollfd> fds();
    int timeout_ms(std::int64_t now_ms);
    // Moves the transfer on, reads what arrived, checks liveness. Events
    // are then in take_events(); a failure is final.
    Expected<Done, EtcdWatchError> step(std::int64_t now_ms);

    std::vector<EtcdWatchEvent> take_events() { return stream_.take_events(); }
    std::int64_t next_revision() const noexcept { return stream_.next_revision(); }
    bool created() const noexcept { return stream_.created(); }

    struct Transfer;  // libcurl's side, defined in etcd_watch_curl.cpp

  private:
    EtcdWatch(std::unique_ptr<Transfer> transfer, EtcdWatchStream stream);
    Expected<Done, EtcdWatchError> finish(int curl_code);

    std::unique_ptr<Transfer> transfer_;
    EtcdWatchStream stream_;
    std::optional<EtcdWatchError> failed_;
};

}  // namespace tokenshm::refresher
