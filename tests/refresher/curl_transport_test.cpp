// CurlTransport against servers in this process (plain HTTP/1.1 on 127.0.0.1,
// scripted per request) and, for TLS, a python3 http.server with certificates
// made here by the openssl CLI. Every server listens on loopback only, stops
// when its test ends and by itself after a fixed lifetime; every wait for a
// transfer is bounded.
#include "curl_transport.hpp"
#include "ci_skip.hpp"
#include "log.hpp"

#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

extern char** environ;

namespace {

using namespace std::chrono_literals;
using tokenshm::refresher::CurlTransport;
using tokenshm::refresher::EndpointUrl;
using tokenshm::refresher::HttpRequest;
using tokenshm::refresher::HttpResponse;
using tokenshm::refresher::Secret;
using Outcome = HttpResponse::Outcome;
using Clock = std::chrono::steady_clock;
using Completed = std::vector<std::pair<std::uint64_t, HttpResponse>>;

// A server outlives no test: it stops when destroyed, or after this long.
constexpr auto kServerLifetime = 60s;
// No single wait for transfers in these tests takes longer than this.
constexpr auto kWaitLimit = 20s;

class Fd {
  public:
    explicit Fd(int fd = -1) : fd_(fd) {}
    Fd(Fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
    Fd& operator=(Fd&& o) noexcept {
        if (this != &o) {
            reset();
            fd_ = std::exchange(o.fd_, -1);
        }
        return *this;
    }
    ~Fd() { reset(); }
    int get() const { return fd_; }
    void reset() {
        if (fd_ >= 0) ::close(fd_);
        fd_ = -1;
    }

  private:
    int fd_;
};

bool iequals(std::string_view a, std::string_view b) {
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
               return std::tolower(static_cast<unsigned char>(x)) ==
                      std::tolower(static_cast<unsigned char>(y));
           });
}

struct RecordedRequest {
    std::string method;
    std::string target;
    std::vector<std::pair<std::string, std::string>> headers;
    std::string body;

    std::optional<std::string> header(std::string_view name) const {
        for (const auto& [n, v] : headers) {
            if (iequals(n, name)) return v;
        }
        return std::nullopt;
    }
};

struct Reply {
    enum class Kind {
        respond,  // send the response (after `delay`)
        stall,    // read the request, never answer, keep the connection open
        close,    // read the request, close the connection
    };
    Kind kind = Kind::respond;
    int status = 200;
    std::vector<std::string> headers;  // raw "Name: value" lines
    std::string body;
    std::chrono::milliseconds delay{0};
};

// An HTTP/1.1 server on 127.0.0.1:0 in a thread of its own: one poll loop over
// the listening socket and every connection, keep-alive, answers as `script`
// says. It counts accepted connections and records every request.
class LoopbackServer {
  public:
    using Script = std::function<Reply(const RecordedRequest&)>;

    explicit LoopbackServer(Script script) : script_(std::move(script)) {
        listener_ = Fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
        REQUIRE(listener_.get() >= 0);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        addr.sin_port = 0;
        REQUIRE(::bind(listener_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
        REQUIRE(::listen(listener_.get(), 16) == 0);
        socklen_t len = sizeof addr;
        REQUIRE(::getsockname(listener_.get(), reinterpret_cast<sockaddr*>(&addr), &len) == 0);
        port_ = ntohs(addr.sin_port);
        stop_ = Fd(::eventfd(0, EFD_CLOEXEC));
        REQUIRE(stop_.get() >= 0);
        thread_ = std::thread([this] { run(); });
    }
    ~LoopbackServer() {
        const std::uint64_t one = 1;
        [[maybe_unused]] const ssize_t n = ::write(stop_.get(), &one, sizeof one);
        thread_.join();
    }
    LoopbackServer(const LoopbackServer&) = delete;
    LoopbackServer& operator=(const LoopbackServer&) = delete;

    int port() const { return port_; }
    std::string url(std::string_view path = "/token") const {
        return "http://127.0.0.1:" + std::to_string(port_) + std::string(path);
    }
    int accepts() const { return accepts_.load(); }
    std::vector<RecordedRequest> requests() const {
        std::lock_guard<std::mutex> lock(mu_);
        return requests_;
    }

  private:
    struct Connection {
        Fd fd;
        std::string in;
        bool stalled = false;
        std::optional<Clock::time_point> due;  // a delayed reply is waiting
        std::string out;
    };

    static std::string render(const Reply& r) {
        std::string s = "HTTP/1.1 " + std::to_string(r.status) + " Scripted\r\n";
        s += "Content-Length: " + std::to_string(r.body.size()) + "\r\n";
        for (const std::string& h : r.headers)
            s += h + "\r\n";
        s += "\r\n";
        s += r.body;
        return s;
    }

    static void send_all(int fd, std::string_view data) {
        while (!data.empty()) {
            const ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) return;  // the client went away (or SO_SNDTIMEO): fine
            data.remove_prefix(static_cast<std::size_t>(n));
        }
    }

    // Parses one complete request off the front of `in`, if there is one.
    static std::optional<RecordedRequest> take_request(std::string& in) {
        const auto end = in.find("\r\n\r\n");
        if (end == std::string::npos) return std::nullopt;
        RecordedRequest req;
        std::string_view head(in.data(), end);
        const auto first = head.find("\r\n");
        const std::string_view line = head.substr(0, first);
        const auto sp1 = line.find(' ');
        const auto sp2 = line.find(' ', sp1 + 1);
        req.method = std::string(line.substr(0, sp1));
        req.target = std::string(line.substr(sp1 + 1, sp2 - sp1 - 1));
        std::size_t length = 0;
        std::string_view rest = first == std::string_view::npos ? "" : head.substr(first + 2);
        while (!rest.empty()) {
            const auto eol = rest.find("\r\n");
            const std::string_view h = rest.substr(0, eol);
            rest = eol == std::string_view::npos ? "" : rest.substr(eol + 2);
            const auto colon = h.find(':');
            if (colon == std::string_view::npos) continue;
            std::string_view value = h.substr(colon + 1);
            while (!value.empty() && value.front() == ' ')
                value.remove_prefix(1);
            req.headers.emplace_back(std::string(h.substr(0, colon)), std::string(value));
            if (iequals(h.substr(0, colon), "Content-Length"))
                length = std::stoul(std::string(value));
        }
        if (in.size() < end + 4 + length) return std::nullopt;
        req.body = in.substr(end + 4, length);
        in.erase(0, end + 4 + length);
        return req;
    }

    void run() {
        const auto hard_stop = Clock::now() + kServerLifetime;
        std::vector<Connection> conns;
        while (Clock::now() < hard_stop) {
            std::vector<pollfd> fds{{stop_.get(), POLLIN, 0}, {listener_.get(), POLLIN, 0}};
            auto wake_at = hard_stop;
            for (const Connection& c : conns) {
                fds.push_back({c.fd.get(), POLLIN, 0});
                if (c.due) wake_at = std::min(wake_at, *c.due);
            }
            const auto wait = std::chrono::ceil<std::chrono::milliseconds>(wake_at - Clock::now());
            const int n = ::poll(fds.data(), fds.size(),
                                 static_cast<int>(std::max<std::int64_t>(wait.count(), 0)));
            if (n < 0 && errno != EINTR) return;
            if (fds[0].revents != 0) return;
            if (fds[1].revents & POLLIN) {
                Fd fd(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
                if (fd.get() >= 0) {
                    ++accepts_;
                    const timeval limit{5, 0};  // a blocked send cannot hang the server
                    ::setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof limit);
                    conns.push_back(Connection{std::move(fd), {}, false, std::nullopt, {}});
                }
            }
            for (std::size_t i = 0; i < conns.size(); ++i) {
                Connection& c = conns[i];
                const short revents = fds.size() > i + 2 ? fds[i + 2].revents : 0;
                if (revents != 0) serve(c);
                if (c.due && Clock::now() >= *c.due) {
                    send_all(c.fd.get(), c.out);
                    c.due.reset();
                    c.out.clear();
                }
            }
            std::erase_if(conns, [](const Connection& c) { return c.fd.get() < 0; });
        }
    }

    void serve(Connection& c) {
        char buf[16384];
        const ssize_t n = ::recv(c.fd.get(), buf, sizeof buf, 0);
        if (n <= 0) {
            c.fd.reset();
            return;
        }
        c.in.append(buf, static_cast<std::size_t>(n));
        while (!c.stalled && c.fd.get() >= 0) {
            std::optional<RecordedRequest> req = take_request(c.in);
            if (!req) return;
            {
                std::lock_guard<std::mutex> lock(mu_);
                requests_.push_back(*req);
            }
            const Reply reply = script_(*req);
            switch (reply.kind) {
                case Reply::Kind::stall:
                    c.stalled = true;
                    break;
                case Reply::Kind::close:
                    c.fd.reset();
                    break;
                case Reply::Kind::respond:
                    if (reply.delay > 0ms) {
                        c.due = Clock::now() + reply.delay;
                        c.out = render(reply);
                    } else {
                        send_all(c.fd.get(), render(reply));
                    }
                    break;
            }
        }
    }

    Script script_;
    Fd listener_;
    Fd stop_;
    int port_ = 0;
    std::atomic<int> accepts_{0};
    mutable std::mutex mu_;
    std::vector<RecordedRequest> requests_;
    std::thread thread_;
};

Reply reply_of(Reply::Kind kind) {
    Reply r;
    r.kind = kind;
    return r;
}

Reply json_reply(int status = 200) {
    Reply r;
    r.status = status;
    r.headers = {"Content-Type: application/json"};
    r.body = R"({"access_token":"abc","token_type":"Bearer"})";
    return r;
}

// A URL the test knows to be valid (EndpointUrl's own tests cover the rest).
EndpointUrl checked_url(const std::string& text) {
    auto u = EndpointUrl::parse(text);
    REQUIRE(u.has_value());
    return std::move(*u);
}

std::unique_ptr<CurlTransport> make_transport(CurlTransport::Options options = {}) {
    auto t = CurlTransport::create(std::move(options));
    REQUIRE(t.has_value());
    return std::move(*t);
}

HttpRequest post(const std::string& url, std::string body = "grant_type=client_credentials") {
    HttpRequest r(checked_url(url));
    r.body = Secret(std::move(body));
    r.timeout = 10s;
    r.connect_timeout = 5s;
    return r;
}

// Polls until `n` requests completed (or kWaitLimit passed), in completion order.
Completed wait_for(CurlTransport& t, std::size_t n) {
    Completed all;
    const auto deadline = Clock::now() + kWaitLimit;
    while (all.size() < n && Clock::now() < deadline) {
        for (auto& r : t.poll(200ms, -1))
            all.push_back(std::move(r));
    }
    return all;
}

HttpResponse one(CurlTransport& t, HttpRequest req) {
    t.start(1, std::move(req));
    Completed done = wait_for(t, 1);
    REQUIRE(done.size() == 1);
    REQUIRE(done[0].first == 1);
    return std::move(done[0].second);
}

// A loopback port nothing listens on: bound, then closed.
int closed_port() {
    Fd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    REQUIRE(s.get() >= 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(s.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    socklen_t len = sizeof addr;
    REQUIRE(::getsockname(s.get(), reinterpret_cast<sockaddr*>(&addr), &len) == 0);
    return ntohs(addr.sin_port);
}

bool contains(std::string_view hay, std::string_view needle) {
    return hay.find(needle) != std::string_view::npos;
}

}  // namespace

TEST_CASE("a response carries status, body, Content-Type and Retry-After", "[curl_transport]") {
    LoopbackServer server([](const RecordedRequest& req) {
        if (req.target == "/busy") {
            Reply r;
            r.status = 503;
            r.headers = {"retry-after:   120  ", "Content-Type: text/plain"};
            r.body = "try later";
            return r;
        }
        Reply r = json_reply();
        r.headers = {"content-TYPE:   application/json; charset=utf-8  ", "Retry-After: 7"};
        return r;
    });
    const auto transport_owner = make_transport();
    CurlTransport& transport = *transport_owner;

    SECTION("200") {
        transport.start(1, post(server.url()));
        CHECK(transport.in_flight() == 1);
        const Completed done = wait_for(transport, 1);
        REQUIRE(done.size() == 1);
        const HttpResponse& r = done[0].second;
        CHECK(r.outcome == Outcome::response);
        CHECK(r.transport_error.empty());
        CHECK(r.status == 200);
        CHECK(r.body == R"({"access_token":"abc","token_type":"Bearer"})");
        CHECK(r.content_type == "application/json; charset=utf-8");
        REQUIRE(r.retry_after.has_value());
        CHECK(*r.retry_after == "7");
        CHECK_FALSE(r.too_large);
        CHECK(transport.in_flight() == 0);
    }
    SECTION("503 is a response, not a transport failure") {
        const HttpResponse r = one(transport, post(server.url("/busy")));
        CHECK(r.outcome == Outcome::response);
        CHECK(r.status == 503);
        CHECK(r.body == "try later");
        CHECK(r.content_type == "text/plain");
        REQUIRE(r.retry_after.has_value());
        CHECK(*r.retry_after == "120");
    }
    SECTION("no Retry-After header: none reported") {
        LoopbackServer plain([](const RecordedRequest&) { return json_reply(); });
        const HttpResponse r = one(transport, post(plain.url()));
        CHECK(r.status == 200);
        CHECK(r.content_type == "application/json");
        CHECK_FALSE(r.retry_after.has_value());
    }
}

TEST_CASE("requests to one endpoint reuse one connection", "[curl_transport]") {
    LoopbackServer server([](const RecordedRequest&) { return json_reply(); });
    const auto transport_owner = make_transport();
    CurlTransport& transport = *transport_owner;

    SECTION("sequential requests: one TCP connection") {
        for (std::uint64_t id = 1; id <= 3; ++id) {
            transport.start(id, post(server.url()));
            const Completed done = wait_for(transport, 1);
            REQUIRE(done.size() == 1);
            CHECK(done[0].first == id);
            CHECK(done[0].second.status == 200);
        }
        CHECK(server.requests().size() == 3);
        CHECK(server.accepts() == 1);
    }
    SECTION("concurrent requests get a handle each, and both connections are kept") {
        transport.start(1, post(server.url()));
        transport.start(2, post(server.url()));
        const Completed first = wait_for(transport, 2);
        REQUIRE(first.size() == 2);
        CHECK(first[0].second.status == 200);
        CHECK(first[1].second.status == 200);
        const int accepted = server.accepts();
        CHECK(accepted == 2);  // HTTP/1.1: the second one could not wait for the first
        transport.start(3, post(server.url()));
        transport.start(4, post(server.url()));
        const Completed second = wait_for(transport, 2);
        REQUIRE(second.size() == 2);
        CHECK(second[0].second.status == 200);
        CHECK(second[1].second.status == 200);
        CHECK(server.accepts() == accepted);
    }
}

TEST_CASE("a slow server does not delay a fast one", "[curl_transport]") {
    LoopbackServer slow([](const RecordedRequest&) {
        Reply r = json_reply();
        r.delay = 2s;
        return r;
    });
    LoopbackServer fast([](const RecordedRequest&) { return json_reply(); });
    const auto transport_owner = make_transport();
    CurlTransport& transport = *transport_owner;

    transport.start(1, post(slow.url()));
    transport.start(2, post(fast.url()));
    Completed order;
    std::size_t in_flight_after_first = 0;
    const auto deadline = Clock::now() + kWaitLimit;
    while (order.size() < 2 && Clock::now() < deadline) {
        for (auto& r : transport.poll(200ms, -1)) {
            order.push_back(std::move(r));
            if (order.size() == 1) in_flight_after_first = transport.in_flight();
        }
    }
    REQUIRE(order.size() == 2);
    CHECK(order[0].first == 2);  // the fast one
    CHECK(order[1].first == 1);
    CHECK(in_flight_after_first == 1);  // the slow one was still running
    CHECK(order[0].second.status == 200);
    CHECK(order[1].second.status == 200);
}

TEST_CASE("response bodies are capped at kMaxBody", "[curl_transport]") {
    std::size_t body_size = 0;
    LoopbackServer server([&body_size](const RecordedRequest&) {
        Reply r;
        r.headers = {"Content-Type: application/json"};
        r.body.assign(body_size, 'x');
        return r;
    });
    const auto transport_owner = make_transport();
    CurlTransport& transport = *transport_owner;

    SECTION("over the cap: too_large, body cut at the cap") {
        body_size = HttpResponse::kMaxBody + 4096;
        const HttpResponse r = one(transport, post(server.url()));
        CHECK(r.outcome == Outcome::response);
        CHECK(r.status == 200);
        CHECK(r.too_large);
        CHECK(r.body.size() <= HttpResponse::kMaxBody);
    }
    SECTION("exactly the cap: whole") {
        body_size = HttpResponse::kMaxBody;
        const HttpResponse r = one(transport, post(server.url()));
        CHECK(r.outcome == Outcome::response);
        CHECK_FALSE(r.too_large);
        CHECK(r.body.size() == HttpResponse::kMaxBody);
    }
}

TEST_CASE("transport failures are classified by whether the request left", "[curl_transport]") {
    const auto transport_owner = make_transport();
    CurlTransport& transport = *transport_owner;

    SECTION("connection refused: not_sent") {
        const int port = closed_port();
        const HttpResponse r =
            one(transport, post("http://127.0.0.1:" + std::to_string(port) + "/token"));
        CHECK(r.outcome == Outcome::not_sent);
        CHECK(r.status == 0);
        CHECK(r.transport_error.rfind("127.0.0.1:" + std::to_string(port) + ": ", 0) == 0);
    }
    SECTION("no answer within the timeout: sent_no_response") {
        LoopbackServer server([](const RecordedRequest&) { return reply_of(Reply::Kind::stall); });
        HttpRequest req = post(server.url());
        req.timeout = 300ms;
        const HttpResponse r = one(transport, std::move(req));
        CHECK(r.outcome == Outcome::sent_no_response);
        CHECK_THAT(r.transport_error, Catch::Contains("timed out", Catch::CaseSensitive::No));
        CHECK(server.requests().size() == 1);
    }
    SECTION("connection closed after the request: sent_no_response") {
        LoopbackServer server([](const RecordedRequest&) { return reply_of(Reply::Kind::close); });
        const HttpResponse r = one(transport, post(server.url()));
        CHECK(r.outcome == Outcome::sent_no_response);
        CHECK_FALSE(r.transport_error.empty());
        CHECK(server.requests().size() >= 1);
    }
}

TEST_CASE("requests the transport cannot send safely are refused before any connection",
          "[curl_transport]") {
    const auto transport_owner = make_transport();
    CurlTransport& transport = *transport_owner;
    std::vector<std::string> logged;
    tokenshm::refresher::set_log_sink([&logged](std::string_view l) { logged.emplace_back(l); });

    // Refusals complete at once: a poll that may not wait returns them, so no
    // connection attempt (which would take a connect timeout or fail with
    // curl's words) can have been made. (URLs outside the policy cannot be
    // handed to a transport at all: EndpointUrl refuses them.)
    const auto refused = [&transport](HttpRequest req) {
        if (req.authorization.empty()) req.authorization = Secret("Basic s3cr3t-header");
        transport.start(7, std::move(req));
        CHECK(transport.in_flight() == 1);
        const Completed done = transport.poll(0ms, -1);
        REQUIRE(done.size() == 1);
        CHECK(done[0].first == 7);
        CHECK(transport.in_flight() == 0);
        const HttpResponse& r = done[0].second;
        CHECK(r.outcome == Outcome::not_sent);
        CHECK_FALSE(contains(r.transport_error, "s3cr3t"));
        return r.transport_error;
    };

    SECTION("a header with a line break") {
        HttpRequest req =
            post("http://127.0.0.1:1/token?code=s3cr3t-query", "client_secret=s3cr3t-body");
        req.headers = {"X-Injected: a\r\nHost: evil"};
        const std::string e = refused(std::move(req));
        CHECK(e.rfind("127.0.0.1:1: ", 0) == 0);
        CHECK_THAT(e, Catch::Contains("line break"));
    }
    SECTION("an Authorization value with a line break") {
        HttpRequest req = post("http://127.0.0.1:1/token", "client_secret=s3cr3t-body");
        req.authorization = Secret("Basic s3cr3t\r\nHost: evil");
        CHECK_THAT(refused(std::move(req)), Catch::Contains("line break"));
    }
    SECTION("a host libcurl would read differently") {
        // EndpointUrl takes 0x7f000001 for a host name; libcurl reads 127.0.0.1.
        HttpRequest req = post("https://0x7f000001:1/token", "client_secret=s3cr3t-body");
        CHECK_THAT(refused(std::move(req)),
                   Catch::Contains("libcurl reads the URL as https://127.0.0.1"));
    }
    SECTION("a method other than POST and GET") {
        HttpRequest req = post("http://localhost:1/token", "client_secret=s3cr3t-body");
        req.method = "PUT";
        CHECK_THAT(refused(std::move(req)), Catch::Contains("method \"PUT\" not supported"));
    }
    SECTION("a ca_file that is a FIFO (OpenSSL would block opening it)") {
        std::string dir = (std::filesystem::temp_directory_path() / "ca_fifo.XXXXXX").string();
        REQUIRE(::mkdtemp(dir.data()) != nullptr);
        const std::string fifo = dir + "/ca.pem";
        REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
        HttpRequest req = post("http://127.0.0.1:1/token", "client_secret=s3cr3t-body");
        req.ca_file = fifo;
        CHECK_THAT(refused(std::move(req)),
                   Catch::Contains("ca_file " + fifo + ": not a regular file (a FIFO)"));
        std::filesystem::remove_all(dir);
    }
    for (const std::string& line : logged)
        CHECK_FALSE(contains(line, "s3cr3t"));
    tokenshm::refresher::set_log_sink({});
}

TEST_CASE("loopback by name is allowed", "[curl_transport]") {
    LoopbackServer server([](const RecordedRequest&) { return json_reply(); });
    const auto transport_owner = make_transport();
    CurlTransport& transport = *transport_owner;
    const HttpResponse r =
        one(transport, post("http://localhost:" + std::to_string(server.port()) + "/token"));
    CHECK(r.outcome == Outcome::response);
    CHECK(r.status == 200);
}

TEST_CASE("an IPv6 literal libcurl spells differently is the same host", "[curl_transport]") {
    const auto transport_owner = make_transport();
    CurlTransport& transport = *transport_owner;
    // Nothing listens on [::1]:1, so the request fails to connect; what
    // matters is that it got as far as libcurl instead of being refused.
    transport.start(1, post("http://[0:0:0:0:0:0:0:1]:1/token"));
    const Completed done = wait_for(transport, 1);
    REQUIRE(done.size() == 1);
    CHECK(done[0].second.outcome == Outcome::not_sent);
    CHECK_THAT(done[0].second.transport_error, !Catch::Contains("libcurl reads the URL as"));
}

TEST_CASE("the request arrives exactly as given", "[curl_transport]") {
    LoopbackServer server([](const RecordedRequest&) { return json_reply(); });
    const auto transport_owner = make_transport();
    CurlTransport& transport = *transport_owner;

    SECTION("POST with a body and an Authorization header") {
        const std::string body("grant_type=refresh_token&refresh_token=rt%2Fa%3D%3D&x=\0y", 55);
        const std::string authorization = "Basic dXBsb2FkZXI6cyNjcmV0";
        HttpRequest req = post(server.url("/oauth/token?tenant=1"), body);
        req.authorization = Secret(authorization);
        req.headers = {"Accept: application/json"};
        REQUIRE(one(transport, std::move(req)).status == 200);

        const std::vector<RecordedRequest> seen = server.requests();
        REQUIRE(seen.size() == 1);
        const RecordedRequest& got = seen[0];
        CHECK(got.method == "POST");
        CHECK(got.target == "/oauth/token?tenant=1");
        // Compared, not printed: a failure must not echo the values.
        const bool body_matches = got.body == body;
        CHECK(body_matches);
        const bool authorization_matches = got.header("Authorization") == authorization;
        CHECK(authorization_matches);
        CHECK(got.header("Accept") == "application/json");
        CHECK(got.header("Content-Type") == "application/x-www-form-urlencoded");
        CHECK(got.header("User-Agent") == "tokenshm-refresher/0.1");
        CHECK_FALSE(got.header("Expect").has_value());
    }
    SECTION("GET without an Authorization header, after a POST on the same handle") {
        HttpRequest first = post(server.url());
        first.authorization = Secret("Bearer first");
        REQUIRE(one(transport, std::move(first)).status == 200);
        HttpRequest get(checked_url(server.url("/.well-known/openid-configuration")));
        get.method = "GET";
        REQUIRE(one(transport, std::move(get)).status == 200);

        const std::vector<RecordedRequest> seen = server.requests();
        REQUIRE(seen.size() == 2);
        CHECK(seen[1].method == "GET");
        CHECK(seen[1].body.empty());
        CHECK_FALSE(seen[1].header("Authorization").has_value());
        CHECK(server.accepts() == 1);
    }
}

TEST_CASE("poll returns promptly when the wake fd becomes readable", "[curl_transport]") {
    const auto transport_owner = make_transport();
    CurlTransport& transport = *transport_owner;
    Fd wake(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    REQUIRE(wake.get() >= 0);
    const auto signal_wake = [&wake] {
        const std::uint64_t one = 1;
        REQUIRE(::write(wake.get(), &one, sizeof one) == sizeof one);
    };
    // A poll that ignored the fd would sit out all of this.
    constexpr auto kLongWait = 60s;

    SECTION("already readable, nothing in flight") {
        signal_wake();
        const auto t0 = Clock::now();
        CHECK(transport.poll(kLongWait, wake.get()).empty());
        CHECK(Clock::now() - t0 < kLongWait / 4);
    }
    SECTION("written by another thread while a request stalls") {
        LoopbackServer server([](const RecordedRequest&) { return reply_of(Reply::Kind::stall); });
        HttpRequest req = post(server.url());
        req.timeout = 120s;
        transport.start(1, std::move(req));
        std::thread writer([&] {
            std::this_thread::sleep_for(200ms);  // likely inside poll by then; either way must wake
            const std::uint64_t one = 1;
            [[maybe_unused]] const ssize_t n = ::write(wake.get(), &one, sizeof one);
        });
        const auto t0 = Clock::now();
        const Completed done = transport.poll(kLongWait, wake.get());
        const auto waited = Clock::now() - t0;
        writer.join();
        CHECK(done.empty());
        CHECK(waited < kLongWait / 4);
        CHECK(transport.in_flight() == 1);
    }
    // poll() left the fd for its owner to read.
    std::uint64_t value = 0;
    CHECK(::read(wake.get(), &value, sizeof value) == sizeof value);
    CHECK(value == 1);
}

TEST_CASE("poll with nothing in flight waits max_wait and returns nothing", "[curl_transport]") {
    const auto transport_owner = make_transport();
    CurlTransport& transport = *transport_owner;
    const auto t0 = Clock::now();
    CHECK(transport.poll(0ms, -1).empty());
    CHECK(transport.poll(50ms, -1).empty());
    CHECK(Clock::now() - t0 >= 50ms);
    CHECK(transport.in_flight() == 0);
}

// ---------------------------------------------------------------------------
// HTTPS: certificates made with the openssl CLI, served by python3.

namespace {

bool have(const char* tool) {
    const std::string cmd = std::string("command -v ") + tool + " >/dev/null 2>&1";
    return std::system(cmd.c_str()) == 0;
}

class TempDir {
  public:
    TempDir() {
        std::string tmpl = (std::filesystem::temp_directory_path() / "curl_transport_test.XXXXXX");
        REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
        path_ = tmpl;
    }
    ~TempDir() {
        std::error_code ec;
        std::filesystem::remove_all(path_, ec);
    }
    std::string file(std::string_view name) const { return (path_ / name).string(); }

  private:
    std::filesystem::path path_;
};

// Runs `cmd` with its output in `log`; true on exit status 0.
bool run(const std::string& cmd, const std::string& log) {
    return std::system((cmd + " >>" + log + " 2>&1").c_str()) == 0;
}

void make_ca(const TempDir& d, const std::string& name) {
    const std::string log = d.file("openssl.log");
    REQUIRE(
        run("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
            " -keyout " +
                d.file(name + ".key") + " -out " + d.file(name + ".pem") +
                " -days 2 -subj '/CN=tokenshm test " + name + "'" +
                " -addext basicConstraints=critical,CA:TRUE"
                " -addext keyUsage=critical,keyCertSign,cRLSign",
            log));
}

// A certificate for 127.0.0.1 (and no other name) signed by `ca`.
void make_server_cert(const TempDir& d, const std::string& name, const std::string& ca) {
    const std::string log = d.file("openssl.log");
    const std::string ext = d.file(name + ".ext");
    FILE* f = std::fopen(ext.c_str(), "w");
    REQUIRE(f != nullptr);
    std::fputs(
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n", f);
    std::fclose(f);
    REQUIRE(run("openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout " +
                    d.file(name + ".key") + " -out " + d.file(name + ".csr") +
                    " -subj /CN=127.0.0.1",
                log));
    REQUIRE(run("openssl x509 -req -in " + d.file(name + ".csr") + " -CA " + d.file(ca + ".pem") +
                    " -CAkey " + d.file(ca + ".key") + " -CAcreateserial -days 2 -out " +
                    d.file(name + ".pem") + " -extfile " + ext,
                log));
}

// An HTTPS server in a python3 child on 127.0.0.1:0. The child exits by
// itself after a minute; the destructor kills it sooner (also when a test
// fails and unwinds).
class PythonTlsServer {
  public:
    PythonTlsServer(const std::string& cert, const std::string& key) {
        static constexpr const char* kScript = R"(
import http.server, signal, ssl, sys
signal.alarm(60)
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    def do_POST(self):
        self.rfile.read(int(self.headers.get('Content-Length', 0)))
        b = b'{"access_token":"abc","token_type":"Bearer"}'
        self.send_response(200)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def log_message(self, *a):
        pass
s = http.server.ThreadingHTTPServer(('127.0.0.1', 0), H)
c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
c.load_cert_chain(sys.argv[1], sys.argv[2])
s.socket = c.wrap_socket(s.socket, server_side=True)
print(s.server_address[1], flush=True)
s.serve_forever()
)";
        int out[2];
        REQUIRE(::pipe2(out, O_CLOEXEC) == 0);
        Fd read_end(out[0]);
        Fd write_end(out[1]);
        posix_spawn_file_actions_t actions;
        REQUIRE(::posix_spawn_file_actions_init(&actions) == 0);
        REQUIRE(::posix_spawn_file_actions_adddup2(&actions, write_end.get(), 1) == 0);
        std::vector<std::string> args{"python3", "-c", kScript, cert, key};
        std::vector<char*> argv;
        for (std::string& a : args)
            argv.push_back(a.data());
        argv.push_back(nullptr);
        const int rc = ::posix_spawnp(&pid_, "python3", &actions, nullptr, argv.data(), environ);
        ::posix_spawn_file_actions_destroy(&actions);
        REQUIRE(rc == 0);
        write_end.reset();

        // The port, within a bound.
        std::string line;
        const auto deadline = Clock::now() + 20s;
        while (line.find('\n') == std::string::npos && Clock::now() < deadline) {
            pollfd p{read_end.get(), POLLIN, 0};
            if (::poll(&p, 1, 200) <= 0) continue;
            char buf[64];
            const ssize_t n = ::read(read_end.get(), buf, sizeof buf);
            if (n <= 0) break;
            line.append(buf, static_cast<std::size_t>(n));
        }
        REQUIRE(line.find('\n') != std::string::npos);
        port_ = std::stoi(line);
    }
    ~PythonTlsServer() {
        if (pid_ > 0) {
            ::kill(pid_, SIGKILL);
            int status = 0;
            ::waitpid(pid_, &status, 0);
        }
    }
    PythonTlsServer(const PythonTlsServer&) = delete;
    PythonTlsServer& operator=(const PythonTlsServer&) = delete;

    int port() const { return port_; }
    std::string url(std::string_view host = "127.0.0.1") const {
        return "https://" + std::string(host) + ":" + std::to_string(port_) + "/token";
    }

  private:
    pid_t pid_ = -1;
    int port_ = 0;
};

// Two CAs, a server certificate from each, and a hashed CA directory that
// stands in for the system's and trusts ca_b only. Made once per run.
struct TestPki {
    TempDir dir;
    std::string system_dir = dir.file("system");
    TestPki() {
        make_ca(dir, "ca_a");
        make_ca(dir, "ca_b");
        make_server_cert(dir, "server_a", "ca_a");
        make_server_cert(dir, "server_b", "ca_b");
        REQUIRE(std::filesystem::create_directory(system_dir));
        std::filesystem::copy_file(dir.file("ca_b.pem"), system_dir + "/ca_b.pem");
        REQUIRE(run("openssl rehash " + system_dir, dir.file("openssl.log")));
    }
};

const TestPki* test_pki() {
    if (!have("openssl") || !have("python3")) return nullptr;
    static const TestPki pki;
    return &pki;
}

}  // namespace

TEST_CASE("HTTPS verifies certificates; ca_file adds a CA", "[curl_transport][tls]") {
    const TestPki* pki = test_pki();
    if (pki == nullptr) SKIP_OR_FAIL_UNDER_CI("openssl or python3 missing: no HTTPS server");
    const TempDir& dir = pki->dir;
    const std::string& system_dir = pki->system_dir;

    PythonTlsServer server_a(dir.file("server_a.pem"), dir.file("server_a.key"));
    PythonTlsServer server_b(dir.file("server_b.pem"), dir.file("server_b.key"));
    const auto transport_owner = make_transport(CurlTransport::Options{system_dir, 4});
    CurlTransport& transport = *transport_owner;
    const auto request = [&](const std::string& url, const std::string& ca_file) {
        HttpRequest req = post(url);
        req.ca_file = ca_file;
        return one(transport, std::move(req));
    };
    const std::string ca_a = dir.file("ca_a.pem");
    const std::string ca_b = dir.file("ca_b.pem");

    SECTION("with the server's CA as ca_file: response") {
        const HttpResponse r = request(server_a.url(), ca_a);
        CHECK(r.outcome == Outcome::response);
        CHECK(r.status == 200);
        CHECK(r.content_type == "application/json");
    }
    SECTION("without ca_file: not_sent, and the error names the certificate") {
        const HttpResponse r = request(server_a.url(), "");
        CHECK(r.outcome == Outcome::not_sent);
        CHECK_THAT(r.transport_error,
                   Catch::StartsWith("127.0.0.1:" + std::to_string(server_a.port()) + ": "));
        CHECK_THAT(r.transport_error, Catch::Contains("certificate"));
    }
    SECTION("with another CA as ca_file: not_sent") {
        const HttpResponse r = request(server_a.url(), ca_b);
        CHECK(r.outcome == Outcome::not_sent);
        CHECK_THAT(r.transport_error, Catch::Contains("certificate"));
    }
    SECTION("ca_file adds to the system's CAs, it does not replace them") {
        CHECK(request(server_b.url(), "").status == 200);
        CHECK(request(server_b.url(), ca_a).status == 200);  // system CA still trusted
        CHECK(request(server_a.url(), ca_a).status == 200);  // and the added one
    }
    SECTION("a trusted certificate for another name: not_sent") {
        const HttpResponse r = request(server_a.url("localhost"), ca_a);
        CHECK(r.outcome == Outcome::not_sent);
        CHECK_FALSE(r.transport_error.empty());
    }
    SECTION("a ca_file that does not exist: not_sent") {
        const HttpResponse r = request(server_a.url(), dir.file("missing.pem"));
        CHECK(r.outcome == Outcome::not_sent);
        CHECK_FALSE(r.transport_error.empty());
    }
    SECTION("a verified success does not make a later unverified request pass") {
        CHECK(request(server_a.url(), ca_a).status == 200);
        CHECK(request(server_a.url(), "").outcome == Outcome::not_sent);
        CHECK(request(server_a.url(), ca_a).status == 200);
    }
}

TEST_CASE("the default transport trusts libcurl's CA directory and a request's ca_file",
          "[curl_transport][tls]") {
    const auto transport_owner = make_transport();
    CurlTransport& transport = *transport_owner;
    struct stat st {};
    if (::stat("/etc/ssl/certs", &st) == 0 && S_ISDIR(st.st_mode)) {
        CHECK_FALSE(transport.system_ca_path().empty());
    }
    const TestPki* pki = test_pki();
    if (pki == nullptr) SKIP_OR_FAIL_UNDER_CI("openssl or python3 missing: no HTTPS server");
    PythonTlsServer server(pki->dir.file("server_a.pem"), pki->dir.file("server_a.key"));
    HttpRequest with_ca = post(server.url());
    with_ca.ca_file = pki->dir.file("ca_a.pem");
    CHECK(one(transport, std::move(with_ca)).status == 200);
    CHECK(one(transport, post(server.url())).outcome == Outcome::not_sent);
}
