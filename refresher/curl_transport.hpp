// CurlTransport: the daemon's Transport, on one libcurl multi handle. Every
// request is a transfer on that handle, so many are in flight at once and a
// slow authorization server never delays another; poll() drives them all.
//
// Policy, applied to every request whatever the caller asks:
// - certificates are always verified (peer and host name, TLS 1.2 or later);
//   a request's `ca_file` is trusted in addition to the system's CAs;
// - a request's URL is an EndpointUrl, so it is https://, or http:// to a
//   loopback address, by construction; libcurl's own parse of it must agree
//   on scheme and host, or the request is refused before a packet leaves;
// - no redirects are followed, no proxy is used for loopback;
// - response bodies are capped at HttpResponse::kMaxBody before anyone parses
//   them.
//
// Idle easy handles are kept per endpoint (scheme, host, port) and reused: the
// connection itself lives in the multi handle's cache (keep-alive), the easy
// handle keeps the TLS session for resumption. Before each use the handle is
// reset (curl_easy_reset keeps connections and sessions, drops every option),
// so nothing set for one request, such as a ca_file, leaks into the next.
#pragma once

#include "error.hpp"
#include "transport.hpp"

#include <curl/curl.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace tokenshm::refresher {

namespace detail {
struct CurlTransfer;  // one request in flight; defined in the .cpp
}  // namespace detail

// libcurl's process-wide initialisation on the wiping heap (and OpenSSL's
// heap before it), done once, whoever comes first: every libcurl user in the
// refresher (CurlTransport, the etcd gateway) calls it before its first handle.
CURLcode curl_global_setup();

// Not thread-safe: one thread (the daemon's event loop) starts and polls.
class CurlTransport final : public Transport {
  public:
    struct Options {
        // Directory of hashed CA certificates (c_rehash layout) that stays trusted
        // when a request names a ca_file. Empty: libcurl's built-in CA path
        // (/etc/ssl/certs on Debian). Tests point it at their own directory.
        std::string system_ca_path;
        // Idle easy handles kept per endpoint; more are cleaned up.
        std::size_t max_idle_per_endpoint = 4;
    };

    // A transport, or why libcurl could not be initialised (a runtime error).
    static Expected<std::unique_ptr<CurlTransport>, RefresherError> create();
    static Expected<std::unique_ptr<CurlTransport>, RefresherError> create(Options options);
    ~CurlTransport() override;
    CurlTransport(const CurlTransport&) = delete;
    CurlTransport& operator=(const CurlTransport&) = delete;

    // `id` must be unique among the requests in flight. A request refused by
    // policy or that libcurl cannot start completes as `not_sent` at the next
    // poll(), which then does not wait.
    void start(std::uint64_t id, HttpRequest request) override;
    std::vector<std::pair<std::uint64_t, HttpResponse>> poll(std::chrono::milliseconds max_wait,
                                                             int wake_fd) override;
    // Requests started and not yet returned by poll().
    std::size_t in_flight() const override;

    // The CA directory trusted alongside a request's ca_file ("" if none).
    const std::string& system_ca_path() const noexcept { return system_ca_path_; }

  private:
    using Completed = std::vector<std::pair<std::uint64_t, HttpResponse>>;
    CurlTransport(Options options, CURLM* multi);
    void fail_now(std::uint64_t id, std::string message);
    // Sets every option of `easy` for `t`'s request; the first failure, by name.
    Expected<Done, RefresherError> configure(CURL* easy, detail::CurlTransfer& t) const;
    bool perform();
    void collect(Completed& done);
    void finish(CURL* easy, CURLcode result, Completed& done);
    CURL* take_handle(const std::string& endpoint);
    void return_handle(const std::string& endpoint, CURL* easy);

    Options options_;
    std::string system_ca_path_;
    CURLM* multi_ = nullptr;
    std::unordered_map<CURL*, std::unique_ptr<detail::CurlTransfer>> transfers_;
    std::unordered_map<std::string, std::vector<CURL*>> idle_;
    // Requests that completed without reaching libcurl (refused, setup failed).
    Completed ready_;
};

}  // namespace tokenshm::refresher
