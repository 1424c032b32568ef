// EtcdWatch (etcd_watch.hpp): one POST /v3/watch on a libcurl easy handle
// in a multi handle of its own, driven by the caller's poll loop; what
// arrives goes straight into an EtcdWatchStream.
#include "curl_transport.hpp"
#include "etcd_curl_detail.hpp"
#include "etcd_watch.hpp"
#include "regular_file.hpp"

#include <curl/curl.h>
#include <sys/select.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <utility>

namespace tokenshm::refresher {

namespace {

using Kind = EtcdWatchError::Kind;
constexpr std::size_t kMaxErrorBody = 4096;  // an error answer's body kept for its message
constexpr std::size_t kMaxErrorText = 200;

EtcdWatchError watch_error(Kind kind, std::string_view why, int code = 0) {
    return EtcdWatchError{
        kind, code, 0, printable_line("etcd watch: " + std::string(why.substr(0, kMaxErrorText)))};
}

}  // namespace

struct EtcdWatch::Transfer {
    CURLM* multi = nullptr;
    CURL* easy = nullptr;
    detail::Headers headers;
    WipedString body;  // the request: libcurl reads it in place
    std::string url;
    std::string label;  // host:port, for messages
    char errbuf[CURL_ERROR_SIZE] = {};
    EtcdWatchStream* stream = nullptr;
    std::int64_t now_ms = 0;  // the step() in progress
    long status = 0;
    WipedString error_body;  // a non-200 answer, capped
    std::optional<EtcdWatchError> stream_failed;

    Transfer() = default;
    Transfer(const Transfer&) = delete;
    Transfer& operator=(const Transfer&) = delete;
    ~Transfer() {
        if (multi != nullptr && easy != nullptr) curl_multi_remove_handle(multi, easy);
        if (easy != nullptr) curl_easy_cleanup(easy);
        if (multi != nullptr) curl_multi_cleanup(multi);
    }

    static std::size_t on_body(char* data, std::size_t size, std::size_t count, void* user) {
        auto* t = static_cast<Transfer*>(user);
        const std::size_t len = size * count;
        if (t->status == 0) curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &t->status);
        if (t->status != 200) {
            t->error_body.append(data, std::min(len, kMaxErrorBody - t->error_body.size()));
            return len;
        }
        if (auto ok = t->stream->feed(std::string_view(data, len), t->now_ms); !ok) {
            t->stream_failed = ok.error();
            return 0;  // aborts the transfer (CURLE_WRITE_ERROR)
        }
        return len;
    }
};

namespace {

// Sets up the easy handle for a watch request: the unary calls' policy,
// then no overall timeout (a watch lasts; liveness is the stream's).
std::string set_up(EtcdWatch::Options& o, EtcdWatch::Transfer& t, const EndpointUrl& endpoint,
                   const Secret& token) {
    detail::Setter set(t.easy);
    set(CURLOPT_ERRORBUFFER, t.errbuf, "CURLOPT_ERRORBUFFER");
    set(CURLOPT_URL, t.url.c_str(), "CURLOPT_URL");
    detail::set_policy(set, o.gateway, endpoint);
    set(CURLOPT_TIMEOUT_MS, 0L, "CURLOPT_TIMEOUT_MS");
    bool ok = t.headers.add("Content-Type: application/json") && t.headers.add("Expect:");
    if (!token.empty()) ok = ok && t.headers.add("Authorization: ", token.reveal());  // to etcd
    if (!ok) return "curl_slist_append: out of memory";
    set(CURLOPT_HTTPHEADER, t.headers.list, "CURLOPT_HTTPHEADER");
    set(CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(t.body.size()),
        "CURLOPT_POSTFIELDSIZE_LARGE");
    set(CURLOPT_POSTFIELDS, t.body.data(), "CURLOPT_POSTFIELDS");
    set(CURLOPT_WRITEFUNCTION, &EtcdWatch::Transfer::on_body, "CURLOPT_WRITEFUNCTION");
    set(CURLOPT_WRITEDATA, static_cast<void*>(&t), "CURLOPT_WRITEDATA");
    return set.error();
}

}  // namespace

Expected<std::unique_ptr<EtcdWatch>, EtcdWatchError> EtcdWatch::start(Options options,
                                                                      std::string prefix,
                                                                      std::int64_t start_revision,
                                                                      const Secret& token,
                                                                      std::int64_t now_ms) {
    if (options.gateway.endpoints.empty())
        return Unexpected{watch_error(Kind::unreachable, "no endpoint")};
    if (prefix.empty()) return Unexpected{watch_error(Kind::rejected, "empty prefix", 3)};
    const EndpointUrl& endpoint =
        options.gateway.endpoints[options.endpoint % options.gateway.endpoints.size()];
    auto t = std::make_unique<Transfer>();
    t->label = endpoint.host() + ":" + std::to_string(endpoint.port());
    for (const std::string* f :
         {&options.gateway.ca_file, &options.gateway.cert_file, &options.gateway.key_file}) {
        if (f->empty()) continue;  // a FIFO planted there must not freeze OpenSSL's fopen
        if (auto ok = check_regular_file(*f); !ok)
            return Unexpected{watch_error(Kind::unreachable, t->label + ": " + ok.error().message)};
    }
    if (const CURLcode rc = curl_global_setup(); rc != CURLE_OK)
        return Unexpected{watch_error(Kind::unreachable,
                                      std::string("curl_global_init: ") + curl_easy_strerror(rc))};
    t->multi = curl_multi_init();
    t->easy = curl_easy_init();
    if (t->multi == nullptr || t->easy == nullptr)
        return Unexpected{
            watch_error(Kind::unreachable, "curl_multi_init or curl_easy_init failed")};
    t->url = endpoint.text() + "/v3/watch";
    t->body = watch_request(prefix, start_revision);
    if (const std::string e = set_up(options, *t, endpoint, token); !e.empty())
        return Unexpected{watch_error(Kind::unreachable, t->label + ": " + e)};
    if (const CURLMcode mc = curl_multi_add_handle(t->multi, t->easy); mc != CURLM_OK)
        return Unexpected{watch_error(
            Kind::unreachable, std::string("curl_multi_add_handle: ") + curl_multi_strerror(mc))};
    EtcdWatchStream stream(std::move(prefix), start_revision, options.limits, now_ms);
    return std::unique_ptr<EtcdWatch>(new EtcdWatch(std::move(t), std::move(stream)));
}

EtcdWatch::EtcdWatch(std::unique_ptr<Transfer> transfer, EtcdWatchStream stream)
    : transfer_(std::move(transfer)), stream_(std::move(stream)) {
    transfer_->stream = &stream_;
}

EtcdWatch::~EtcdWatch() = default;

std::vector<pollfd> EtcdWatch::fds() {
    std::vector<pollfd> out;
    if (failed_) return out;
    fd_set r, w, e;
    FD_ZERO(&r);
    FD_ZERO(&w);
    FD_ZERO(&e);
    int max_fd = -1;
    if (curl_multi_fdset(transfer_->multi, &r, &w, &e, &max_fd) != CURLM_OK) return out;
    for (int fd = 0; fd <= max_fd; ++fd) {
        const short events =
            static_cast<short>((FD_ISSET(fd, &r) ? POLLIN : 0) | (FD_ISSET(fd, &w) ? POLLOUT : 0));
        if (events != 0) out.push_back(pollfd{fd, events, 0});
    }
    return out;
}

int EtcdWatch::timeout_ms(std::int64_t now_ms) {
    if (failed_) return 0;
    std::int64_t wait = std::max<std::int64_t>(stream_.stall_deadline_ms() - now_ms, 0);
    long curl_ms = -1;
    if (curl_multi_timeout(transfer_->multi, &curl_ms) == CURLM_OK && curl_ms >= 0)
        wait = std::min<std::int64_t>(wait, curl_ms);
    return static_cast<int>(std::min<std::int64_t>(wait, INT_MAX));
}

Expected<Done, EtcdWatchError> EtcdWatch::step(std::int64_t now_ms) {
    if (failed_) return Unexpected{*failed_};
    transfer_->now_ms = now_ms;
    int running = 0;
    if (const CURLMcode mc = curl_multi_perform(transfer_->multi, &running); mc != CURLM_OK) {
        failed_ = watch_error(Kind::disconnected,
                              std::string("curl_multi_perform: ") + curl_multi_strerror(mc));
        return Unexpected{*failed_};
    }
    int left = 0;
    while (CURLMsg* m = curl_multi_info_read(transfer_->multi, &left)) {
        if (m->msg == CURLMSG_DONE) return finish(static_cast<int>(m->data.result));
    }
    if (auto ok = stream_.check_alive(now_ms); !ok) failed_ = ok.error();
    if (failed_) return Unexpected{*failed_};
    return Done{};
}

// The transfer is over: say why, in the most specific terms known.
Expected<Done, EtcdWatchError> EtcdWatch::finish(int curl_code) {
    Transfer& t = *transfer_;
    const auto rc = static_cast<CURLcode>(curl_code);
    const std::string curl_text = t.errbuf[0] != '\0' ? t.errbuf : curl_easy_strerror(rc);
    if (t.status == 0) curl_easy_getinfo(t.easy, CURLINFO_RESPONSE_CODE, &t.status);
    if (t.stream_failed) {
        failed_ = *t.stream_failed;
    } else if (t.status == 0) {
        failed_ = watch_error(rc == CURLE_OK ? Kind::disconnected : Kind::unreachable,
                              t.label + ": " + curl_text);
    } else if (t.status != 200) {
        failed_ = watch_http_error(t.status, t.error_body.view());
    } else {
        failed_ =
            stream_.ended(t.label + ": " + (rc == CURLE_OK ? "etcd ended the stream" : curl_text));
    }
    return Unexpected{*failed_};
}

}  // namespace tokenshm::refresher
