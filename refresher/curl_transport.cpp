#include "curl_transport.hpp"

#include "log.hpp"
#include "regular_file.hpp"
#include "wiping_heap.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <string.h>
#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <climits>
#include <cstring>
#include <iterator>
#include <limits>
#include <memory>
#include <optional>
#include <utility>

namespace tokenshm::refresher {

namespace detail {

// One request in flight. Heap-allocated so the pointers libcurl holds (error
// buffer, callback data, body, header list) stay put until it completes.
struct CurlTransfer {
    std::uint64_t id = 0;
    std::string endpoint;  // scheme://host:port, the idle-handle pool key
    std::string label;     // host:port, the prefix of every error message
    HttpRequest request;   // owns the body libcurl sends from (not copied)
    curl_slist* headers = nullptr;
    HttpResponse response;
    char errbuf[CURL_ERROR_SIZE] = {};

    explicit CurlTransfer(HttpRequest r) : request(std::move(r)) {}
    CurlTransfer(const CurlTransfer&) = delete;
    CurlTransfer& operator=(const CurlTransfer&) = delete;
    // The header list holds a copy of the Authorization value: wipe it.
    ~CurlTransfer() {
        for (curl_slist* p = headers; p != nullptr; p = p->next) {
            if (p->data != nullptr) ::explicit_bzero(p->data, ::strlen(p->data));
        }
        curl_slist_free_all(headers);
    }
};

}  // namespace detail

namespace {

constexpr long kMaxIdleConnections = 16;

using detail::CurlTransfer;
using Outcome = HttpResponse::Outcome;

constexpr const char* kUserAgent = "tokenshm-refresher/0.1";
constexpr std::size_t kMaxHeaderValue = 256;
constexpr std::size_t kMaxErrorText = 300;

// libcurl's global state, initialised once per process (thread-safe static).
// Its heap is ours, and OpenSSL's: every buffer they free (the request
// composed with the body and the Authorization header, the response
// received, TLS records, header list copies) is wiped first. This must be
// the process's first libcurl and OpenSSL call.
CURLcode global_init() {
    static const CURLcode rc = [] {
        // libcurl initialises OpenSSL: OpenSSL's heap must be ours before that.
        if (!install_wiping_heap_for_openssl())
            log_event(Level::warn, {}, "openssl_heap",
                      "OpenSSL had allocated before libcurl started: its TLS buffers are not "
                      "wiped when freed");
        return curl_global_init_mem(CURL_GLOBAL_DEFAULT, wiping_malloc, wiping_free, wiping_realloc,
                                    wiping_strdup, wiping_calloc);
    }();
    return rc;
}

std::string_view trim(std::string_view s) {
    const auto space = [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; };
    while (!s.empty() && space(s.front()))
        s.remove_prefix(1);
    while (!s.empty() && space(s.back()))
        s.remove_suffix(1);
    return s;
}

bool iequals(std::string_view a, std::string_view b) {
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
               return std::tolower(static_cast<unsigned char>(x)) ==
                      std::tolower(static_cast<unsigned char>(y));
           });
}

bool has_line_break(std::string_view s) {
    return s.find_first_of("\r\n") != std::string_view::npos;
}

// One line, printable, bounded: error text goes into logs and the segment.
std::string one_line(std::string_view s) {
    std::string out;
    for (char c : trim(s)) {
        const auto u = static_cast<unsigned char>(c);
        out += (u < 0x20 || u == 0x7f) ? ' ' : c;
        if (out.size() >= kMaxErrorText) break;
    }
    return out;
}

std::optional<std::string> url_part(CURLU* u, CURLUPart part, CURLUcode& rc) {
    char* value = nullptr;
    rc = curl_url_get(u, part, &value, 0);
    if (rc != CURLUE_OK) return std::nullopt;
    std::string out = value;
    curl_free(value);
    for (char& c : out)
        c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return out;
}

std::string url_error(const char* what, CURLUcode rc) {
#if LIBCURL_VERSION_NUM >= 0x075000
    return std::string("invalid URL (") + what + "): " + curl_url_strerror(rc);
#else
    return std::string("invalid URL (") + what + "): CURLUcode " + std::to_string(rc);
#endif
}

// Equal host names, or IPv6 literals naming the same address (libcurl
// normalises "[::0:1]" to "[::1]").
bool same_host(const std::string& a, const std::string& b) {
    if (a == b) return true;
    const auto ipv6 = [](const std::string& h, in6_addr& out) {
        return h.size() > 2 && h.front() == '[' && h.back() == ']' &&
               ::inet_pton(AF_INET6, h.substr(1, h.size() - 2).c_str(), &out) == 1;
    };
    in6_addr x{}, y{};
    return ipv6(a, x) && ipv6(b, y) && std::memcmp(&x, &y, sizeof x) == 0;
}

Unexpected<RefresherError> refused(std::string why) {
    return Unexpected{RefresherError::runtime_error(std::move(why))};
}

// Defence in depth: the URL passed EndpointUrl's checks, and libcurl, which
// will connect, must read the same scheme and host from it (a parser
// disagreement could send a plain-http request elsewhere).
Expected<Done, RefresherError> libcurl_agrees(const EndpointUrl& url) {
    std::unique_ptr<CURLU, decltype(&curl_url_cleanup)> u(curl_url(), &curl_url_cleanup);
    if (!u) return refused("curl_url: out of memory");
    CURLUcode rc = curl_url_set(u.get(), CURLUPART_URL, url.text().c_str(), 0);
    if (rc != CURLUE_OK) return refused(url_error("curl_url_set", rc));
    const auto scheme = url_part(u.get(), CURLUPART_SCHEME, rc);
    if (!scheme) return refused(url_error("scheme", rc));
    const auto host = url_part(u.get(), CURLUPART_HOST, rc);
    if (!host) return refused(url_error("host", rc));
    if (*scheme != url.scheme() || !same_host(*host, url.host()))
        return refused("libcurl reads the URL as " + one_line(*scheme) + "://" + one_line(*host) +
                       ", refused");
    return Done{};
}

// Sets options on an easy handle; remembers the first failure, by name.
class EasyOptions {
  public:
    explicit EasyOptions(CURL* easy) : easy_(easy) {}
    template <class T>
    void set(CURLoption option, T value, const char* name) {
        if (!error_.empty()) return;
        const CURLcode rc = curl_easy_setopt(easy_, option, value);
        if (rc != CURLE_OK) error_ = std::string(name) + ": " + curl_easy_strerror(rc);
    }
    const std::string& error() const noexcept { return error_; }

  private:
    CURL* easy_;
    std::string error_;
};

long clamp_ms(std::chrono::milliseconds ms) {
    // curl treats 0 as "no timeout": never let a request run unbounded.
    return static_cast<long>(std::clamp<std::chrono::milliseconds::rep>(ms.count(), 1, LONG_MAX));
}

std::size_t on_body(char* data, std::size_t size, std::size_t count, void* user) {
    auto* t = static_cast<CurlTransfer*>(user);
    const std::size_t len = size * count;
    WipedString& body = t->response.body;
    const std::size_t room = HttpResponse::kMaxBody - body.size();
    if (len > room) {
        body.append(data, room);
        t->response.too_large = true;
        return 0;  // anything but `len` aborts the transfer (CURLE_WRITE_ERROR)
    }
    body.append(data, len);
    return len;
}

std::size_t on_header(char* data, std::size_t size, std::size_t count, void* user) {
    auto* t = static_cast<CurlTransfer*>(user);
    const std::size_t len = size * count;
    const std::string_view line = trim(std::string_view(data, len));
    if (line.substr(0, 5) == "HTTP/") {
        // A new status line (after 100 Continue, or a proxy's CONNECT reply):
        // only the final response's headers count.
        t->response.content_type.clear();
        t->response.retry_after.reset();
        return len;
    }
    const auto colon = line.find(':');
    if (colon == std::string_view::npos) return len;
    const std::string_view name = trim(line.substr(0, colon));
    const std::string_view value = trim(line.substr(colon + 1)).substr(0, kMaxHeaderValue);
    if (iequals(name, "Content-Type")) {
        t->response.content_type = value;
    } else if (iequals(name, "Retry-After")) {
        t->response.retry_after = std::string(value);
    }
    return len;
}

// Failures that happen before the request can have left: name resolution,
// connecting, the TLS handshake and certificate checks, local setup.
bool fails_before_sending(CURLcode rc) {
    switch (rc) {
        case CURLE_UNSUPPORTED_PROTOCOL:
        case CURLE_FAILED_INIT:
        case CURLE_URL_MALFORMAT:
        case CURLE_NOT_BUILT_IN:
        case CURLE_COULDNT_RESOLVE_PROXY:
        case CURLE_COULDNT_RESOLVE_HOST:
        case CURLE_COULDNT_CONNECT:
        case CURLE_SSL_CONNECT_ERROR:
        case CURLE_BAD_FUNCTION_ARGUMENT:
        case CURLE_SSL_ENGINE_NOTFOUND:
        case CURLE_SSL_ENGINE_SETFAILED:
        case CURLE_SSL_CERTPROBLEM:
        case CURLE_SSL_CIPHER:
        case CURLE_PEER_FAILED_VERIFICATION:
        case CURLE_SSL_ENGINE_INITFAILED:
        case CURLE_SSL_CACERT_BADFILE:
        case CURLE_SSL_CRL_BADFILE:
        case CURLE_SSL_ISSUER_ERROR:
        case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
        case CURLE_SSL_INVALIDCERTSTATUS:
            return true;
        default:
            return false;
    }
}

// Whether the request may have left, at least in part: curl counted request
// bytes, or got as far as "about to transfer" (connected, TLS done).
bool request_may_have_left(CURL* easy) {
    long request_size = 0;
    if (curl_easy_getinfo(easy, CURLINFO_REQUEST_SIZE, &request_size) != CURLE_OK ||
        request_size > 0) {
        return true;  // unknown counts as sent: the cautious answer
    }
    curl_off_t pretransfer_us = 0;
    if (curl_easy_getinfo(easy, CURLINFO_PRETRANSFER_TIME_T, &pretransfer_us) != CURLE_OK) {
        return true;
    }
    return pretransfer_us > 0;
}

std::string builtin_ca_path() {
#if LIBCURL_VERSION_NUM >= 0x075400
    std::unique_ptr<CURL, decltype(&curl_easy_cleanup)> easy(curl_easy_init(), &curl_easy_cleanup);
    if (easy) {
        char* path = nullptr;
        if (curl_easy_getinfo(easy.get(), CURLINFO_CAPATH, &path) == CURLE_OK && path != nullptr) {
            return path;
        }
    }
#endif
    // libcurl built without a CA path (or too old to say): Debian's.
    struct stat st {};
    if (::stat("/etc/ssl/certs", &st) == 0 && S_ISDIR(st.st_mode)) return "/etc/ssl/certs";
    return {};
}

void log_multi_error(const char* call, CURLMcode mc) {
    log_event(Level::error, {}, "curl_multi_error",
              std::string(call) + ": " + curl_multi_strerror(mc));
}

// Waits on `fd` alone, for when libcurl's own wait fails: a caller looping on
// poll() must not spin.
void wait_readable(int fd, std::chrono::milliseconds max_wait) {
    const int timeout = static_cast<int>(std::clamp<std::chrono::milliseconds::rep>(
        max_wait.count(), 0, std::numeric_limits<int>::max()));
    pollfd p{fd, POLLIN, 0};
    ::poll(&p, fd >= 0 ? 1 : 0, timeout);
}

bool readable_now(int fd) {
    if (fd < 0) return false;
    pollfd p{fd, POLLIN, 0};
    return ::poll(&p, 1, 0) > 0 && (p.revents & (POLLIN | POLLHUP | POLLERR)) != 0;
}

}  // namespace

CURLcode curl_global_setup() {
    return global_init();
}

Expected<std::unique_ptr<CurlTransport>, RefresherError> CurlTransport::create() {
    return create(Options{});
}

Expected<std::unique_ptr<CurlTransport>, RefresherError> CurlTransport::create(Options options) {
    if (const CURLcode rc = global_init(); rc != CURLE_OK)
        return Unexpected{RefresherError::runtime_error(std::string("curl_global_init: ") +
                                                        curl_easy_strerror(rc))};
    CURLM* multi = curl_multi_init();
    if (multi == nullptr)
        return Unexpected{RefresherError::runtime_error("curl_multi_init failed")};
    // libcurl's default keeps up to 4 idle connections per transfer ever added
    // at once: after a start with a thousand credentials, hundreds of sockets
    // and their buffers (tens of MiB) stayed for good. A refresher talks to a
    // few token endpoints; this many idle connections is plenty for reuse.
    if (const CURLMcode mc = curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, kMaxIdleConnections);
        mc != CURLM_OK) {
        curl_multi_cleanup(multi);
        return Unexpected{RefresherError::runtime_error(
            std::string("curl_multi_setopt(CURLMOPT_MAXCONNECTS): ") + curl_multi_strerror(mc))};
    }
    return std::unique_ptr<CurlTransport>(new CurlTransport(std::move(options), multi));
}

CurlTransport::CurlTransport(Options options, CURLM* multi)
    : options_(std::move(options)), multi_(multi) {
    system_ca_path_ = options_.system_ca_path.empty() ? builtin_ca_path() : options_.system_ca_path;
}

CurlTransport::~CurlTransport() {
    for (auto& [easy, transfer] : transfers_) {
        const CURLMcode mc = curl_multi_remove_handle(multi_, easy);
        if (mc != CURLM_OK) log_multi_error("curl_multi_remove_handle", mc);
        curl_easy_cleanup(easy);  // before `transfer` (its buffers) goes
    }
    transfers_.clear();
    for (auto& [endpoint, handles] : idle_) {
        for (CURL* easy : handles)
            curl_easy_cleanup(easy);
    }
    const CURLMcode mc = curl_multi_cleanup(multi_);
    if (mc != CURLM_OK) log_multi_error("curl_multi_cleanup", mc);
}

void CurlTransport::fail_now(std::uint64_t id, std::string message) {
    HttpResponse r;
    r.outcome = Outcome::not_sent;
    r.transport_error = one_line(message);
    ready_.emplace_back(id, std::move(r));
}

CURL* CurlTransport::take_handle(const std::string& endpoint) {
    auto it = idle_.find(endpoint);
    if (it != idle_.end() && !it->second.empty()) {
        CURL* easy = it->second.back();
        it->second.pop_back();
        return easy;
    }
    return curl_easy_init();
}

void CurlTransport::return_handle(const std::string& endpoint, CURL* easy) {
    // Reset now, not at reuse: an idle handle must not point at the finished
    // transfer's buffers. Connections and the TLS session cache survive it.
    curl_easy_reset(easy);
    auto& handles = idle_[endpoint];
    if (handles.size() >= options_.max_idle_per_endpoint) {
        curl_easy_cleanup(easy);
        return;
    }
    handles.push_back(easy);
}

namespace {

// Whether the transport may send `request`: what its type cannot rule out.
Expected<Done, RefresherError> sendable(const HttpRequest& request) {
    if (request.method != "POST" && request.method != "GET")
        return refused("method \"" + one_line(request.method) + "\" not supported (POST or GET)");
    if (has_line_break(request.authorization.reveal()) ||
        std::any_of(request.headers.begin(), request.headers.end(), has_line_break))
        return refused("a request header contains a line break");
    // OpenSSL opens ca_file with a blocking fopen: a FIFO swapped in since the
    // config was loaded would freeze the event loop. Checked at every request.
    if (!request.ca_file.empty()) {
        if (auto ca = check_regular_file(request.ca_file); !ca)
            return refused("ca_file " + ca.error().message);
    }
    return libcurl_agrees(request.url);
}

// The transfer's header list. curl_slist_append copies each string;
// ~CurlTransfer wipes the copies. False when out of memory.
bool build_headers(CurlTransfer& t) {
    bool ok = true;
    const auto append = [&](const char* line) {
        curl_slist* next = curl_slist_append(t.headers, line);
        if (next == nullptr) {
            ok = false;
        } else {
            t.headers = next;
        }
    };
    for (const std::string& h : t.request.headers)
        append(h.c_str());
    append("Expect:");  // no 100-continue round trip (and no wait on servers that ignore it)
    if (!t.request.authorization.empty()) {
        constexpr std::string_view prefix = "Authorization: ";
        std::string line;
        line.reserve(prefix.size() + t.request.authorization.size());  // one buffer, wiped below
        line.append(prefix).append(t.request.authorization.reveal());
        const Secret wiped_on_scope_exit{std::move(line)};
        append(wiped_on_scope_exit.reveal().data());  // reveal(): to curl; NUL-terminated
    }
    return ok;
}

// Certificates always verified, TLS 1.2 or later, only the URL's protocol,
// no redirects, bounded times.
void set_policy_options(EasyOptions& o, const HttpRequest& req, const std::string& system_ca_path) {
#if LIBCURL_VERSION_NUM >= 0x075500
    o.set(CURLOPT_PROTOCOLS_STR, req.url.scheme().c_str(), "CURLOPT_PROTOCOLS_STR");
    o.set(CURLOPT_REDIR_PROTOCOLS_STR, "https", "CURLOPT_REDIR_PROTOCOLS_STR");
#else
    const long protocol = req.url.scheme() == "https" ? CURLPROTO_HTTPS : CURLPROTO_HTTP;
    o.set(CURLOPT_PROTOCOLS, protocol, "CURLOPT_PROTOCOLS");
    o.set(CURLOPT_REDIR_PROTOCOLS, static_cast<long>(CURLPROTO_HTTPS), "CURLOPT_REDIR_PROTOCOLS");
#endif
    o.set(CURLOPT_FOLLOWLOCATION, 0L, "CURLOPT_FOLLOWLOCATION");
    o.set(CURLOPT_NOSIGNAL, 1L, "CURLOPT_NOSIGNAL");
    o.set(CURLOPT_USERAGENT, kUserAgent, "CURLOPT_USERAGENT");
    o.set(CURLOPT_TCP_KEEPALIVE, 1L, "CURLOPT_TCP_KEEPALIVE");
    o.set(CURLOPT_TIMEOUT_MS, clamp_ms(req.timeout), "CURLOPT_TIMEOUT_MS");
    o.set(CURLOPT_CONNECTTIMEOUT_MS, clamp_ms(req.connect_timeout), "CURLOPT_CONNECTTIMEOUT_MS");
    o.set(CURLOPT_SSL_VERIFYPEER, 1L, "CURLOPT_SSL_VERIFYPEER");
    o.set(CURLOPT_SSL_VERIFYHOST, 2L, "CURLOPT_SSL_VERIFYHOST");
    o.set(CURLOPT_SSLVERSION, static_cast<long>(CURL_SSLVERSION_TLSv1_2), "CURLOPT_SSLVERSION");
    if (!req.ca_file.empty()) {
        // With OpenSSL, CAINFO replaces the system bundle while CAPATH is
        // searched as well: the system's CAs stay trusted through the path.
        o.set(CURLOPT_CAINFO, req.ca_file.c_str(), "CURLOPT_CAINFO");
    }
    if (!system_ca_path.empty()) o.set(CURLOPT_CAPATH, system_ca_path.c_str(), "CURLOPT_CAPATH");
    if (req.url.loopback()) {
        o.set(CURLOPT_PROXY, "", "CURLOPT_PROXY");  // "" overrides *_proxy variables
    }
}

}  // namespace

Expected<Done, RefresherError> CurlTransport::configure(CURL* easy, CurlTransfer& t) const {
    const HttpRequest& req = t.request;
    EasyOptions o(easy);
    o.set(CURLOPT_ERRORBUFFER, t.errbuf, "CURLOPT_ERRORBUFFER");
    o.set(CURLOPT_URL, req.url.text().c_str(), "CURLOPT_URL");
    set_policy_options(o, req, system_ca_path_);
    o.set(CURLOPT_HTTPHEADER, t.headers, "CURLOPT_HTTPHEADER");
    if (req.method == "POST") {
        const std::string_view body = req.body.reveal();  // reveal(): to curl, not copied
        o.set(CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body.size()),
              "CURLOPT_POSTFIELDSIZE_LARGE");
        o.set(CURLOPT_POSTFIELDS, body.data(), "CURLOPT_POSTFIELDS");
    } else {
        o.set(CURLOPT_HTTPGET, 1L, "CURLOPT_HTTPGET");
    }
    o.set(CURLOPT_WRITEFUNCTION, &on_body, "CURLOPT_WRITEFUNCTION");
    o.set(CURLOPT_WRITEDATA, static_cast<void*>(&t), "CURLOPT_WRITEDATA");
    o.set(CURLOPT_HEADERFUNCTION, &on_header, "CURLOPT_HEADERFUNCTION");
    o.set(CURLOPT_HEADERDATA, static_cast<void*>(&t), "CURLOPT_HEADERDATA");
    if (!o.error().empty()) return refused(o.error());
    return Done{};
}

void CurlTransport::start(std::uint64_t id, HttpRequest request) {
    const std::string label = request.url.host() + ":" + std::to_string(request.url.port());
    if (auto ok = sendable(request); !ok) return fail_now(id, label + ": " + ok.error().message);

    const std::string endpoint = request.url.scheme() + "://" + label;
    auto t = std::make_unique<CurlTransfer>(std::move(request));
    t->id = id;
    t->endpoint = endpoint;
    t->label = label;
    if (!build_headers(*t)) return fail_now(id, label + ": curl_slist_append: out of memory");

    CURL* easy = take_handle(t->endpoint);
    if (easy == nullptr) return fail_now(id, label + ": curl_easy_init failed");
    if (auto configured = configure(easy, *t); !configured) {
        curl_easy_cleanup(easy);  // while t's buffers still exist
        return fail_now(id, label + ": " + configured.error().message);
    }
    transfers_.emplace(easy, std::move(t));
    const CURLMcode mc = curl_multi_add_handle(multi_, easy);
    if (mc != CURLM_OK) {
        curl_easy_cleanup(easy);
        transfers_.erase(easy);
        return fail_now(id, label + ": curl_multi_add_handle: " + curl_multi_strerror(mc));
    }
}

bool CurlTransport::perform() {
    int running = 0;
    const CURLMcode mc = curl_multi_perform(multi_, &running);
    if (mc != CURLM_OK) {
        log_multi_error("curl_multi_perform", mc);
        return false;
    }
    return true;
}

void CurlTransport::collect(Completed& done) {
    int queued = 0;
    while (CURLMsg* m = curl_multi_info_read(multi_, &queued)) {
        if (m->msg != CURLMSG_DONE) continue;
        // Copy out: `m` is invalid once the handle is removed.
        CURL* easy = m->easy_handle;
        const CURLcode result = m->data.result;
        finish(easy, result, done);
    }
}

void CurlTransport::finish(CURL* easy, CURLcode result, Completed& done) {
    auto it = transfers_.find(easy);
    if (it == transfers_.end()) return;  // not ours; cannot happen
    const std::unique_ptr<CurlTransfer> t = std::move(it->second);
    transfers_.erase(it);

    const CURLMcode mc = curl_multi_remove_handle(multi_, easy);
    if (mc != CURLM_OK) log_multi_error("curl_multi_remove_handle", mc);

    HttpResponse r = std::move(t->response);
    long status = 0;
    const CURLcode info = curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
    const bool complete = result == CURLE_OK || (result == CURLE_WRITE_ERROR && r.too_large);
    if (complete && info == CURLE_OK && status > 0) {
        r.outcome = Outcome::response;
        r.status = status;
    } else {
        const bool sent = !fails_before_sending(result) && request_may_have_left(easy);
        r = HttpResponse{};
        r.outcome = sent ? Outcome::sent_no_response : Outcome::not_sent;
        std::string why;
        if (info != CURLE_OK) {
            why = std::string("CURLINFO_RESPONSE_CODE: ") + curl_easy_strerror(info);
        } else if (result == CURLE_OK) {
            why = "no HTTP status in the response";
        } else {
            why = t->errbuf[0] != '\0' ? t->errbuf : curl_easy_strerror(result);
        }
        r.transport_error = one_line(t->label + ": " + why);
    }

    // Keep the handle (and with it the TLS session) only after a clean exchange.
    if (mc == CURLM_OK && r.outcome == Outcome::response && !r.too_large) {
        return_handle(t->endpoint, easy);
    } else {
        curl_easy_cleanup(easy);
    }
    done.emplace_back(t->id, std::move(r));
}

std::vector<std::pair<std::uint64_t, HttpResponse>> CurlTransport::poll(
    std::chrono::milliseconds max_wait, int wake_fd) {
    using Clock = std::chrono::steady_clock;
    const auto deadline = Clock::now() + std::max(max_wait, std::chrono::milliseconds(0));
    Completed done = std::exchange(ready_, {});
    bool curl_failed = !perform();
    collect(done);
    while (done.empty() && !curl_failed) {
        const auto now = Clock::now();
        if (now >= deadline) break;
        const auto remaining = std::chrono::ceil<std::chrono::milliseconds>(deadline - now);
        const int timeout = static_cast<int>(std::min<std::chrono::milliseconds::rep>(
            remaining.count(), std::numeric_limits<int>::max()));
        curl_waitfd extra{};
        extra.fd = wake_fd;
        extra.events = CURL_WAIT_POLLIN;
        const CURLMcode mc = curl_multi_poll(multi_, wake_fd >= 0 ? &extra : nullptr,
                                             wake_fd >= 0 ? 1u : 0u, timeout, nullptr);
        if (mc != CURLM_OK) {
            log_multi_error("curl_multi_poll", mc);
            curl_failed = true;
            break;
        }
        curl_failed = !perform();
        collect(done);
        if (readable_now(wake_fd)) break;  // the caller reads it, not us
    }
    if (curl_failed && done.empty()) {
        // Wait out max_wait on wake_fd alone: a caller looping on poll() must
        // not spin while libcurl keeps failing.
        wait_readable(wake_fd,
                      std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now()));
    }
    return done;
}

std::size_t CurlTransport::in_flight() const {
    return transfers_.size() + ready_.size();
}

}  // namespace tokenshm::refresher
