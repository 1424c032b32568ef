// libcurl set-up shared by the two clients of etcd's gateway: the unary
// calls (etcd_curl_gateway.cpp) and the watch (etcd_watch_curl.cpp), so
// both follow one policy (verified TLS 1.2+, the endpoint's scheme only, no
// redirects, no proxy for loopback). Not for other callers.
#pragma once

#include "etcd_client.hpp"

#include <curl/curl.h>

#include <chrono>
#include <string>
#include <string_view>

namespace tokenshm::refresher::detail {

long clamp_ms(std::chrono::milliseconds ms);

// Sets options; remembers the first failure, by name.
class Setter {
  public:
    explicit Setter(CURL* easy) : easy_(easy) {}
    template <class T>
    void operator()(CURLoption option, T value, const char* name) {
        if (!error_.empty()) return;
        if (const CURLcode rc = curl_easy_setopt(easy_, option, value); rc != CURLE_OK)
            error_ = std::string(name) + ": " + curl_easy_strerror(rc);
    }
    const std::string& error() const noexcept { return error_; }

  private:
    CURL* easy_;
    std::string error_;
};

// Certificates always verified, TLS 1.2 or later, the endpoint's scheme
// only, no redirects, bounded times; a client certificate when configured.
void set_policy(Setter& set, const CurlEtcdGateway::Options& o, const EndpointUrl& endpoint);

// A request's header list; etcd wants its token as the bare value of
// Authorization. Every line is wiped when the list goes.
struct Headers {
    curl_slist* list = nullptr;
    Headers() = default;
    Headers(const Headers&) = delete;
    Headers& operator=(const Headers&) = delete;
    ~Headers();
    // `name` and `value` joined in one buffer that is wiped when it goes
    // (the value may be etcd's token); libcurl's copy is wiped above.
    bool add(std::string_view name, std::string_view value = {});
};

}  // namespace tokenshm::refresher::detail
