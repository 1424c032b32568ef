// CurlEtcdGateway (etcd_client.hpp): POSTs to etcd's JSON gateway on one
// libcurl easy handle of its own, endpoint after endpoint while a request
// has certainly not left.
#include "curl_transport.hpp"
#include "etcd_client.hpp"
#include "etcd_curl_detail.hpp"
#include "regular_file.hpp"

#include <curl/curl.h>
#include <string.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <utility>

namespace tokenshm::refresher {

namespace {

constexpr const char* kUserAgent = "tokenshm-refresher/0.1";
constexpr std::size_t kMaxErrorText = 200;

// Where a response body goes while libcurl receives it.
struct Sink {
    GatewayAnswer* answer;
    std::size_t cap;
};

std::size_t on_body(char* data, std::size_t size, std::size_t count, void* user) {
    auto* sink = static_cast<Sink*>(user);
    const std::size_t len = size * count;
    WipedString& body = sink->answer->body;
    if (len > sink->cap - body.size()) {
        sink->answer->too_large = true;
        return 0;  // aborts the transfer (CURLE_WRITE_ERROR)
    }
    body.append(data, len);
    return len;
}

std::string one_line(std::string_view s) {
    return printable_line(s.substr(0, kMaxErrorText));
}

// Failures after which the request cannot have left: the next endpoint may
// have it. Anything else may have reached etcd.
bool certainly_not_sent(CURLcode rc) {
    switch (rc) {
        case CURLE_COULDNT_RESOLVE_HOST:
        case CURLE_COULDNT_CONNECT:
        case CURLE_SSL_CONNECT_ERROR:
        case CURLE_PEER_FAILED_VERIFICATION:
        case CURLE_SSL_CERTPROBLEM:
        case CURLE_SSL_CACERT_BADFILE:
        case CURLE_SSL_CIPHER:
        case CURLE_UNSUPPORTED_PROTOCOL:
        case CURLE_URL_MALFORMAT:
            return true;
        default:
            return false;
    }
}

}  // namespace

namespace detail {

long clamp_ms(std::chrono::milliseconds ms) {
    return static_cast<long>(std::clamp<std::chrono::milliseconds::rep>(ms.count(), 1, LONG_MAX));
}

void set_policy(Setter& set, const CurlEtcdGateway::Options& o, const EndpointUrl& endpoint) {
#if LIBCURL_VERSION_NUM >= 0x075500
    set(CURLOPT_PROTOCOLS_STR, endpoint.scheme().c_str(), "CURLOPT_PROTOCOLS_STR");
#else
    set(CURLOPT_PROTOCOLS, endpoint.scheme() == "https" ? CURLPROTO_HTTPS : CURLPROTO_HTTP,
        "CURLOPT_PROTOCOLS");
#endif
    set(CURLOPT_FOLLOWLOCATION, 0L, "CURLOPT_FOLLOWLOCATION");
    set(CURLOPT_NOSIGNAL, 1L, "CURLOPT_NOSIGNAL");
    set(CURLOPT_USERAGENT, kUserAgent, "CURLOPT_USERAGENT");
    set(CURLOPT_TCP_KEEPALIVE, 1L, "CURLOPT_TCP_KEEPALIVE");
    set(CURLOPT_TIMEOUT_MS, clamp_ms(o.timeout), "CURLOPT_TIMEOUT_MS");
    set(CURLOPT_CONNECTTIMEOUT_MS, clamp_ms(o.connect_timeout), "CURLOPT_CONNECTTIMEOUT_MS");
    set(CURLOPT_SSL_VERIFYPEER, 1L, "CURLOPT_SSL_VERIFYPEER");
    set(CURLOPT_SSL_VERIFYHOST, 2L, "CURLOPT_SSL_VERIFYHOST");
    set(CURLOPT_SSLVERSION, static_cast<long>(CURL_SSLVERSION_TLSv1_2), "CURLOPT_SSLVERSION");
    if (!o.ca_file.empty()) set(CURLOPT_CAINFO, o.ca_file.c_str(), "CURLOPT_CAINFO");
    if (!o.cert_file.empty()) set(CURLOPT_SSLCERT, o.cert_file.c_str(), "CURLOPT_SSLCERT");
    if (!o.key_file.empty()) set(CURLOPT_SSLKEY, o.key_file.c_str(), "CURLOPT_SSLKEY");
    if (endpoint.loopback()) set(CURLOPT_PROXY, "", "CURLOPT_PROXY");
}

Headers::~Headers() {
    for (curl_slist* p = list; p != nullptr; p = p->next)
        ::explicit_bzero(p->data, ::strlen(p->data));
    curl_slist_free_all(list);
}

bool Headers::add(std::string_view name, std::string_view value) {
    std::string line;
    line.reserve(name.size() + value.size());
    line.append(name).append(value);
    const Secret copy{std::move(line)};  // NUL-terminated
    curl_slist* next = curl_slist_append(list, copy.reveal().data());
    if (next == nullptr) return false;
    list = next;
    return true;
}

}  // namespace detail

using detail::Headers;
using detail::set_policy;
using detail::Setter;

CurlEtcdGateway::Options CurlEtcdGateway::Options::from(const EtcdConfig& etcd) {
    Options o;
    o.endpoints = etcd.endpoints;
    o.ca_file = etcd.ca_file.value_or("");
    o.cert_file = etcd.cert_file.value_or("");
    o.key_file = etcd.key_file.value_or("");
    return o;
}

Expected<std::unique_ptr<CurlEtcdGateway>, EtcdError> CurlEtcdGateway::create(Options options) {
    const auto error = [](std::string m) {
        return Unexpected{EtcdError{EtcdError::Kind::unreachable, 0, std::move(m)}};
    };
    if (options.endpoints.empty()) return error("etcd: no endpoint");
    if (const CURLcode rc = curl_global_setup(); rc != CURLE_OK)
        return error(std::string("curl_global_init: ") + curl_easy_strerror(rc));
    CURL* easy = curl_easy_init();
    if (easy == nullptr) return error("curl_easy_init failed");
    return std::unique_ptr<CurlEtcdGateway>(new CurlEtcdGateway(std::move(options), easy));
}

CurlEtcdGateway::CurlEtcdGateway(Options options, CURL* easy)
    : options_(std::move(options)), easy_(easy) {}

CurlEtcdGateway::~CurlEtcdGateway() {
    curl_easy_cleanup(easy_);
}

GatewayAnswer CurlEtcdGateway::post(std::string_view path, const WipedString& body,
                                    const Secret& token) {
    GatewayAnswer last;
    for (std::size_t tried = 0; tried < options_.endpoints.size(); ++tried) {
        const std::size_t i = (current_ + tried) % options_.endpoints.size();
        last = post_to(options_.endpoints[i], path, body, token);
        if (last.outcome == GatewayAnswer::Outcome::answer) {
            current_ = i;  // answered: start there next time
            return last;
        }
        if (last.outcome == GatewayAnswer::Outcome::sent_no_answer) {
            // It may have been applied: not sent again. A member that takes
            // requests and does not answer (paused, partitioned) is left for
            // the next one, or every later call would wait on it too.
            current_ = (i + 1) % options_.endpoints.size();
            return last;
        }
    }
    current_ = (current_ + 1) % options_.endpoints.size();
    return last;
}

GatewayAnswer CurlEtcdGateway::post_to(const EndpointUrl& endpoint, std::string_view path,
                                       const WipedString& body, const Secret& token) {
    GatewayAnswer a;
    const std::string label = endpoint.host() + ":" + std::to_string(endpoint.port());
    // OpenSSL opens these with a blocking fopen: a FIFO planted since must not freeze us.
    for (const std::string* f : {&options_.ca_file, &options_.cert_file, &options_.key_file}) {
        if (f->empty()) continue;
        if (auto ok = check_regular_file(*f); !ok) {
            a.transport_error = one_line(label + ": " + ok.error().message);
            return a;
        }
    }
    Headers headers;
    bool ok = headers.add("Content-Type: application/json") && headers.add("Expect:");
    if (!token.empty())
        ok = ok && headers.add("Authorization: ", token.reveal());  // reveal(): to etcd
    if (!ok) {
        a.transport_error = label + ": curl_slist_append: out of memory";
        return a;
    }
    const std::string url = endpoint.text() + std::string(path);
    Sink sink{&a, options_.max_answer_bytes};
    char errbuf[CURL_ERROR_SIZE] = {};
    curl_easy_reset(easy_);  // keeps the connection and TLS session, drops every option
    Setter set(easy_);
    set(CURLOPT_ERRORBUFFER, errbuf, "CURLOPT_ERRORBUFFER");
    set(CURLOPT_URL, url.c_str(), "CURLOPT_URL");
    set_policy(set, options_, endpoint);
    set(CURLOPT_HTTPHEADER, headers.list, "CURLOPT_HTTPHEADER");
    set(CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body.size()),
        "CURLOPT_POSTFIELDSIZE_LARGE");
    set(CURLOPT_POSTFIELDS, body.data(), "CURLOPT_POSTFIELDS");
    set(CURLOPT_WRITEFUNCTION, &on_body, "CURLOPT_WRITEFUNCTION");
    set(CURLOPT_WRITEDATA, static_cast<void*>(&sink), "CURLOPT_WRITEDATA");
    if (!set.error().empty()) {
        a.transport_error = one_line(label + ": " + set.error());
        return a;
    }
    const CURLcode rc = curl_easy_perform(easy_);
    curl_easy_setopt(easy_, CURLOPT_ERRORBUFFER, nullptr);  // errbuf goes out of scope
    long status = 0;
    curl_easy_getinfo(easy_, CURLINFO_RESPONSE_CODE, &status);
    if ((rc == CURLE_OK || (rc == CURLE_WRITE_ERROR && a.too_large)) && status > 0) {
        a.outcome = GatewayAnswer::Outcome::answer;
        a.status = status;
        return a;
    }
    a.body.clear();
    a.outcome = certainly_not_sent(rc) ? GatewayAnswer::Outcome::not_sent
                                       : GatewayAnswer::Outcome::sent_no_answer;
    a.transport_error =
        one_line(label + ": " + (errbuf[0] != '\0' ? errbuf : curl_easy_strerror(rc)));
    return a;
}

}  // namespace tokenshm::refresher
