// No secret is left in memory the refresher gives back: every heap block
// freed while a token request is built, sent over libcurl, answered, parsed,
// and while a secret file is read, is searched for the secrets in every form
// they travel in (secret_echoes.hpp: verbatim, form-encoded, Base64 of the
// Basic pair). A plain std::string holding a secret, or a library whose
// buffers are not wiped, leaves one behind and fails the test.
//
// How: this executable defines free() and realloc() (it comes first in symbol
// lookup, so libstdc++, libcurl and the refresher's code call these). While a
// FreedMemoryScan is active on the calling thread, each block is searched
// before it goes back to glibc. Under ASan/TSan the sanitizer owns malloc and
// its free hook does the same.
#include "ci_skip.hpp"
#include "config.hpp"
#include "curl_transport.hpp"
#include "oauth.hpp"
#include "secret_echoes.hpp"

#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <fcntl.h>
#include <malloc.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define WIPING_TEST_SANITIZER 1
extern "C" int __sanitizer_install_malloc_and_free_hooks(void (*malloc_hook)(const volatile void*,
                                                                             std::size_t),
                                                         void (*free_hook)(const volatile void*));
extern "C" std::size_t __sanitizer_get_allocated_size(const volatile void* p);
#endif

namespace {

// Patterns live in static storage: the search itself must not allocate.
constexpr std::size_t kMaxPatterns = 512;
constexpr std::size_t kMaxPatternBytes = 1024;
// Shorter Base64 fragments could match unrelated bytes by chance.
constexpr std::size_t kMinPatternBytes = 12;
struct Pattern {
    char bytes[kMaxPatternBytes];
    std::size_t size;
};
Pattern g_patterns[kMaxPatterns];
std::size_t g_pattern_count = 0;
std::atomic<std::size_t> g_hits{0};
std::atomic<std::size_t> g_blocks{0};
thread_local bool t_scanning = false;

void search_block(const void* p, std::size_t size) {
    if (!t_scanning || p == nullptr) return;
    g_blocks.fetch_add(1, std::memory_order_relaxed);
    for (std::size_t i = 0; i < g_pattern_count; ++i) {
        if (::memmem(p, size, g_patterns[i].bytes, g_patterns[i].size) != nullptr) {
            g_hits.fetch_add(1, std::memory_order_relaxed);
            return;
        }
    }
}

#if defined(WIPING_TEST_SANITIZER)
void on_malloc(const volatile void*, std::size_t) {}
void on_free(const volatile void* p) {
    if (p != nullptr) search_block(const_cast<const void*>(p), __sanitizer_get_allocated_size(p));
}
const int kHooks = __sanitizer_install_malloc_and_free_hooks(on_malloc, on_free);
#endif

}  // namespace

#if !defined(WIPING_TEST_SANITIZER)
extern "C" {
void* __libc_malloc(std::size_t);
void __libc_free(void*);

void free(void* p) noexcept {
    if (p != nullptr) search_block(p, ::malloc_usable_size(p));
    __libc_free(p);
}
// Never in place, so the block it leaves is searched like any freed block.
void* realloc(void* p, std::size_t n) noexcept {
    if (p == nullptr) return __libc_malloc(n);
    if (n == 0) {
        free(p);
        return nullptr;
    }
    void* fresh = __libc_malloc(n);
    if (fresh == nullptr) return nullptr;
    std::memcpy(fresh, p, std::min(::malloc_usable_size(p), n));
    free(p);
    return fresh;
}
}
#endif

namespace {

using namespace tokenshm::refresher;
using namespace std::chrono_literals;

// Long enough that every Base64 fragment is over kMinPatternBytes.
const std::string kClientId = "uploader-client";
const std::string kClientSecret = "Client+Secret/Value~ 0123456789abcdef";
const std::string kRefresh = "RT-refresh-token-0123456789-abcdefghijklmnop";
const std::string kAccess = "AT-access-token-0123456789-ABCDEFGHIJKLMNOP";

// Searches every block freed on this thread until stop() or destruction.
// Construct it after the test's own copies of the secrets exist, and stop it
// before they go.
class FreedMemoryScan {
  public:
    explicit FreedMemoryScan(const SecretEchoes& echoes) {
        g_pattern_count = 0;
        for (const Secret& p : echoes.patterns()) {
            const std::string_view v = p.reveal();
            if (v.size() < kMinPatternBytes || v.size() > kMaxPatternBytes) continue;
            REQUIRE(g_pattern_count < kMaxPatterns);
            std::memcpy(g_patterns[g_pattern_count].bytes, v.data(), v.size());
            g_patterns[g_pattern_count].size = v.size();
            ++g_pattern_count;
        }
        REQUIRE(g_pattern_count > 10);
        g_hits = 0;
        g_blocks = 0;
        t_scanning = true;
    }
    ~FreedMemoryScan() { t_scanning = false; }
    // Blocks that held a secret when they were freed.
    std::size_t stop() {
        t_scanning = false;
        return g_hits.load();
    }
    std::size_t blocks() const { return g_blocks.load(); }
};

SecretEchoes all_secrets() {
    SecretEchoes e;
    e.add_basic_pair(kClientId, kClientSecret);
    e.add(kRefresh);
    e.add(kAccess);
    return e;
}

CredentialConfig credential(AuthMethod method, BasicEncoding encoding) {
    CredentialConfig c;
    c.name = "storage";
    c.grant = Grant::refresh_token;
    c.client_id = kClientId;
    c.client_secret = Secret(kClientSecret);
    c.auth_method = method;
    c.basic_encoding = encoding;
    c.scope = "files.write";
    return c;
}

EndpointUrl url(const std::string& text) {
    auto u = EndpointUrl::parse(text);
    REQUIRE(u.has_value());
    return *u;
}

}  // namespace

TEST_CASE("the scan sees a plain std::string holding a secret when it is freed") {
    const SecretEchoes echoes = all_secrets();
    FreedMemoryScan scan(echoes);
    { std::string plain = "x" + kRefresh; }  // what the other tests must never do
    CHECK(scan.stop() == 1);
}

TEST_CASE("building a token request frees no copy of a secret") {
    const SecretEchoes echoes = all_secrets();
    const Secret refresh(kRefresh);
    const EndpointUrl endpoint = url("https://id.example.com/token");
    for (const auto& [method, encoding] :
         {std::pair{AuthMethod::client_secret_basic, BasicEncoding::form},
          std::pair{AuthMethod::client_secret_basic, BasicEncoding::raw},
          std::pair{AuthMethod::client_secret_post, BasicEncoding::form}}) {
        const CredentialConfig c = credential(method, encoding);
        FreedMemoryScan scan(echoes);
        { auto r = build_token_request(c, endpoint, &refresh); }
        const std::size_t hits = scan.stop();
        CHECK(scan.blocks() > 0);
        CHECK(hits == 0);
    }
}

TEST_CASE("parsing a token response frees no copy of a token") {
    const SecretEchoes echoes = all_secrets();
    const std::string json = R"({"access_token":")" + kAccess +
                             R"(","token_type":"Bearer","expires_in":3600,"refresh_token":")" +
                             kRefresh + R"(","scope":"files.write"})";
    HttpResponse r;
    r.outcome = HttpResponse::Outcome::response;
    r.status = 200;
    r.content_type = "application/json";
    r.body = WipedString(json);
    FreedMemoryScan scan(echoes);
    {
        HttpResponse response = std::move(r);
        auto o = parse_token_response(response, 3600s, 8192);
        if (!o.ok()) t_scanning = false;
        REQUIRE(o.ok());
    }
    const std::size_t hits = scan.stop();
    CHECK(hits == 0);
}

TEST_CASE("an error response that echoes the secrets frees no copy of them") {
    const SecretEchoes echoes = all_secrets();
    const RedactEchoes redact = [&echoes](std::string s) { return echoes.redact(std::move(s)); };
    const std::string json = R"({"error":"invalid_grant","error_description":"you sent )" +
                             form_urlencode(kRefresh) + " and " +
                             base64_encode(kClientId + ":" + kClientSecret) + R"("})";
    HttpResponse r;
    r.outcome = HttpResponse::Outcome::response;
    r.status = 400;
    r.content_type = "application/json";
    r.body = WipedString(json);
    FreedMemoryScan scan(echoes);
    std::string message;
    {
        HttpResponse response = std::move(r);
        auto o = parse_token_response(response, 3600s, 8192, redact);
        if (o.ok()) t_scanning = false;
        REQUIRE_FALSE(o.ok());
        message = std::move(o.failure().message);
    }
    const std::size_t hits = scan.stop();
    CHECK(hits == 0);
    CHECK(message.find("[redacted]") != std::string::npos);
}

TEST_CASE("reading a client secret file frees no copy of it") {
    const SecretEchoes echoes = all_secrets();
    const std::string dir = std::filesystem::temp_directory_path() / "wiping_test.XXXXXX";
    std::string tmpl = dir;
    REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    const std::string secret_file = tmpl + "/client.secret";
    const std::string config_file = tmpl + "/tokenshm.json";
    const auto write = [](const std::string& path, const std::string& text) {
        const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        REQUIRE(fd >= 0);
        REQUIRE(::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()));
        ::close(fd);
    };
    write(secret_file, kClientSecret + "\r\n");
    write(config_file, R"({"credentials": [{"name": "storage", "grant": "client_credentials",
        "client_id": "uploader", "token_endpoint": "https://id.example.com/token",
        "client_secret_file": ")" +
                           secret_file + R"("}]})");
    {
        FreedMemoryScan scan(echoes);
        {
            auto cfg = load_config(config_file, ConfigSources::system());
            if (!cfg) t_scanning = false;
            REQUIRE(cfg.has_value());
        }
        CHECK(scan.stop() == 0);
    }
    std::filesystem::remove_all(tmpl);
}

namespace {

// One HTTP exchange on 127.0.0.1 in a thread of its own (whose frees are not
// searched): reads a request, answers with a token response.
class OneShotServer {
  public:
    OneShotServer() {
        fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        REQUIRE(fd_ >= 0);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        REQUIRE(::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
        REQUIRE(::listen(fd_, 1) == 0);
        socklen_t len = sizeof addr;
        REQUIRE(::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
        port_ = ntohs(addr.sin_port);
        thread_ = std::thread([this] { serve(); });
    }
    ~OneShotServer() {
        ::shutdown(fd_, SHUT_RDWR);
        thread_.join();
        ::close(fd_);
    }
    int port() const { return port_; }
    bool saw_secret_in_request() const { return saw_secret_; }

  private:
    void serve() {
        const int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
        if (c < 0) return;
        timeval tv{10, 0};
        ::setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        std::string request;
        char buf[4096];
        for (;;) {
            const auto end = request.find("\r\n\r\n");
            if (end != std::string::npos) {
                const auto cl = request.find("Content-Length: ");
                const std::size_t body =
                    cl == std::string::npos ? 0 : std::stoul(request.substr(cl + 16));
                if (request.size() >= end + 4 + body) break;
            }
            const ssize_t n = ::recv(c, buf, sizeof buf, 0);
            if (n <= 0) break;
            request.append(buf, static_cast<std::size_t>(n));
        }
        saw_secret_ = request.find(form_urlencode(kRefresh)) != std::string::npos;
        const std::string body = R"({"access_token":")" + kAccess +
                                 R"(","token_type":"Bearer","expires_in":3600,"refresh_token":")" +
                                 kRefresh + R"("})";
        const std::string reply =
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            "Connection: close\r\nContent-Length: " +
            std::to_string(body.size()) + "\r\n\r\n" + body;
        (void)::send(c, reply.data(), reply.size(), MSG_NOSIGNAL);
        ::close(c);
    }

    int fd_ = -1;
    int port_ = 0;
    bool saw_secret_ = false;
    std::thread thread_;
};

}  // namespace

TEST_CASE("a request sent and answered over libcurl frees no copy of a secret") {
    const SecretEchoes echoes = all_secrets();
    OneShotServer server;
    const Secret refresh(kRefresh);
    const CredentialConfig c = credential(AuthMethod::client_secret_basic, BasicEncoding::raw);
    auto request = build_token_request(
        c, url("http://127.0.0.1:" + std::to_string(server.port()) + "/t"), &refresh);
    REQUIRE(request.has_value());
    std::size_t hits = 0;
    long status = 0;
    bool openssl_free_is_ours = false;
    {
        FreedMemoryScan scan(echoes);
        {
            // The process's first libcurl call: it installs the wiping heap.
            auto transport = CurlTransport::create();
            CRYPTO_malloc_fn m = nullptr;
            CRYPTO_realloc_fn r = nullptr;
            CRYPTO_free_fn f = nullptr;
            CRYPTO_get_mem_functions(&m, &r, &f);
            openssl_free_is_ours = f != nullptr && f != &CRYPTO_free;
            if (transport) {
                (*transport)->start(1, std::move(*request));
                const auto deadline = std::chrono::steady_clock::now() + 20s;
                while ((*transport)->in_flight() > 0 &&
                       std::chrono::steady_clock::now() < deadline) {
                    auto done = (*transport)->poll(100ms, -1);
                    if (!done.empty()) status = done.front().second.status;
                }
            }
        }
        hits = scan.stop();
    }
    CHECK(status == 200);
    CHECK(server.saw_secret_in_request());
    CHECK(hits == 0);
    // TLS is not exercised here (plain HTTP on loopback); what can be seen is
    // that OpenSSL frees through the wiping heap, not through libc's free.
    CHECK(openssl_free_is_ours);
}
