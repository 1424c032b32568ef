// The HTTP transport the refresher talks through. The daemon uses
// CurlTransport (libcurl multi: many requests in flight, one slow server never
// delays another); tests inject a fake that answers from a script.
#pragma once

#include "endpoint_url.hpp"
#include "secret.hpp"

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace tokenshm::refresher {

struct HttpRequest {
    explicit HttpRequest(EndpointUrl target) : url(std::move(target)) {}

    // Checked when it was made: https, or http to a loopback host.
    EndpointUrl url;
    std::string method = "POST";  // "POST" or "GET"
    // Non-secret headers, "Name: value".
    std::vector<std::string> headers;
    // The Authorization header value, when there is one (it carries credentials).
    Secret authorization;
    // application/x-www-form-urlencoded body; carries secrets, so it is a Secret.
    Secret body;
    std::chrono::milliseconds timeout{20000};
    std::chrono::milliseconds connect_timeout{10000};
    std::string ca_file;  // extra CA bundle, empty for the system's
};

struct HttpResponse {
    enum class Outcome {
        response,          // an HTTP response arrived (any status)
        not_sent,          // failed before the request left: resolve, connect, TLS
        sent_no_response,  // sent, then timed out or the connection dropped
    };
    Outcome outcome = Outcome::not_sent;
    std::string transport_error;  // curl's words, no secrets; empty for `response`
    long status = 0;
    std::string content_type;
    std::optional<std::string> retry_after;  // raw Retry-After header value
    // The body, at most kMaxBody bytes; `too_large` when the server sent more.
    // It may hold tokens: wiped when the response goes.
    WipedString body;
    bool too_large = false;
    static constexpr std::size_t kMaxBody = 1 << 20;
};

class Transport {
  public:
    virtual ~Transport() = default;
    // Starts a request identified by `id` (unique among those in flight).
    virtual void start(std::uint64_t id, HttpRequest request) = 0;
    // Waits at most `max_wait` for requests to complete, or for `wake_fd`
    // (when >= 0) to become readable; returns the completed ones.
    virtual std::vector<std::pair<std::uint64_t, HttpResponse>> poll(
        std::chrono::milliseconds max_wait, int wake_fd) = 0;
    virtual std::size_t in_flight() const = 0;
};

}  // namespace tokenshm::refresher
