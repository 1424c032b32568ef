// Handle::report_invalid and request_refresh against a scripted control
// socket (a thread that answers one line per connection): what they send,
// how answers and failures map to Error, and exit code 7.
#include "test_support.hpp"

#include <tokenshm/tokenshm.h>
#include <tokenshm/reader.hpp>
#include <tokenshm/shm/segment.hpp>

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using segtest::SegmentGuard;

namespace {

// Listens on a temp path; each connection gets `answer` for its one line,
// which is kept in `got`.
struct ScriptedSocket {
    std::string dir;
    std::string path;
    int fd = -1;
    ScriptedSocket() {
        char t[] = "/tmp/tokenshm-ri-XXXXXX";
        REQUIRE(::mkdtemp(t) != nullptr);
        dir = t;
        path = dir + "/ctl.sock";
        fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
        sockaddr_un a{};
        a.sun_family = AF_UNIX;
        std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
        REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
        REQUIRE(::listen(fd, 4) == 0);
    }
    ~ScriptedSocket() {
        ::close(fd);
        ::unlink(path.c_str());
        ::rmdir(dir.c_str());
    }
    // Serves one connection on a thread; returns the line it read (joined).
    std::thread serve(std::string answer, std::string& got) {
        return std::thread([this, answer, &got] {
            const int c = ::accept(fd, nullptr, nullptr);
            if (c < 0) return;
            char buf[512];
            while (got.find('\n') == std::string::npos) {
                const ssize_t n = ::recv(c, buf, sizeof buf, 0);
                if (n <= 0) break;
                got.append(buf, static_cast<std::size_t>(n));
            }
            if (!answer.empty()) (void)::send(c, answer.data(), answer.size(), MSG_NOSIGNAL);
            ::close(c);
        });
    }
};

struct Fixture {
    SegmentGuard g{segtest::unique_segment("report")};
    std::optional<tokenshm::shm::WriterSegment> w;
    Fixture(const std::string& socket_path) {
        auto spec = segtest::spec(g.name, 256, 1);
        spec.control_socket = socket_path;
        auto made = tokenshm::shm::WriterSegment::create_or_attach(spec);
        REQUIRE(made);
        w.emplace(std::move(*made));
        REQUIRE(w->claim("c"));
    }
    tokenshm::Handle handle() {
        auto r = tokenshm::Reader::open(g.name);
        REQUIRE(r);
        auto h = r->lookup("c");
        REQUIRE(h);
        return std::move(*h);
    }
};

}  // namespace

TEST_CASE("report_invalid sends one invalid line and returns the current version") {
    ScriptedSocket s;
    Fixture f(s.path);
    auto h = f.handle();
    CHECK(h.control_socket() == s.path);
    std::string got;
    auto t = s.serve(R"({"ok":true,"name":"c","version":9,"action":"newer","not_before_unix_ms":5})"
                     "\n",
                     got);
    auto v = h.report_invalid(7, 5s);
    t.join();
    REQUIRE(v);
    CHECK(*v == 9);
    CHECK(got == "{\"op\":\"invalid\",\"name\":\"c\",\"version\":7}\n");

    got.clear();
    auto t2 =
        s.serve(R"({"ok":true,"name":"c","version":7,"action":"waiting","not_before_unix_ms":1234})"
                "\n",
                got);
    auto r = h.request_refresh(0, 5s);
    t2.join();
    REQUIRE(r);
    CHECK(r->action == tokenshm::RefreshReply::Action::waiting);
    CHECK(r->not_before_unix_ms == 1234);
    CHECK(got == "{\"op\":\"refresh\",\"name\":\"c\"}\n");
}

TEST_CASE("error answers map to Error values, exit code 7 for unreachable and refused") {
    ScriptedSocket s;
    Fixture f(s.path);
    auto h = f.handle();
    const std::pair<const char*, tokenshm::Error> cases[] = {
        {R"({"ok":false,"error":"no_such_credential","message":"no"})",
         tokenshm::Error::no_such_credential},
        {R"({"ok":false,"error":"refused","message":"uid 1 is not \"ours\""})",
         tokenshm::Error::refused},
        {R"({"ok":false,"error":"reauth","message":"x"})", tokenshm::Error::reauth},
        {R"({"ok":false,"error":"busy","message":"x"})", tokenshm::Error::busy},
        {R"({"ok":false,"error":"bad_request","message":"x"})", tokenshm::Error::invalid_argument},
        {R"({"ok":false,"error":"something_new","message":"x"})", tokenshm::Error::refused},
        {R"(not json)", tokenshm::Error::refused},
        {R"({"ok":true,"version":"x"})", tokenshm::Error::refused},
        {"", tokenshm::Error::unreachable},  // closed without answering
    };
    for (const auto& [answer, want] : cases) {
        INFO(answer);
        std::string got;
        auto t = s.serve(*answer ? std::string(answer) + "\n" : std::string(), got);
        auto v = h.report_invalid(3, 5s);
        t.join();
        REQUIRE_FALSE(v);
        CHECK(v.error() == want);
    }
    CHECK(tokenshm::exit_code(tokenshm::Error::unreachable) == 7);
    CHECK(tokenshm::exit_code(tokenshm::Error::refused) == 7);
    CHECK(std::string(tokenshm_strerror(TOKENSHM_ERR_UNREACHABLE)).find("unreachable") !=
          std::string::npos);
}

TEST_CASE("no socket: unreachable, within the timeout") {
    SECTION("the segment names one nobody listens on") {
        Fixture f("/tmp/tokenshm-no-such-dir/ctl.sock");
        auto h = f.handle();
        auto v = h.report_invalid(1, 1s);
        REQUIRE_FALSE(v);
        CHECK(v.error() == tokenshm::Error::unreachable);
    }
    SECTION("the segment names none") {
        Fixture f("");
        auto h = f.handle();
        CHECK(h.control_socket().empty());
        uint64_t cur = 0;
        tokenshm_handle* ch = nullptr;
        tokenshm_reader* cr = nullptr;
        REQUIRE(tokenshm_open(f.g.name.c_str(), &cr) == TOKENSHM_OK);
        REQUIRE(tokenshm_lookup(cr, "c", &ch) == TOKENSHM_OK);
        CHECK(tokenshm_report_invalid(ch, 1, 1000, &cur) == TOKENSHM_ERR_UNREACHABLE);
        CHECK(tokenshm_report_invalid(nullptr, 1, 1000, &cur) == TOKENSHM_ERR_INVALID_ARGUMENT);
        tokenshm_handle_close(ch);
        tokenshm_close(cr);
    }
    SECTION("a silent refresher: the timeout bounds the call") {
        ScriptedSocket s;  // listens, never accepts: the answer never comes
        Fixture f(s.path);
        auto h = f.handle();
        auto v = h.report_invalid(1, 300ms);  // returns: the deadline holds
        REQUIRE_FALSE(v);
        CHECK(v.error() == tokenshm::Error::unreachable);
    }
    SECTION("version 0 is no version") {
        Fixture f("");
        auto h = f.handle();
        auto v = h.report_invalid(0);
        REQUIRE_FALSE(v);
        CHECK(v.error() == tokenshm::Error::invalid_argument);
    }
}

TEST_CASE("a full listen backlog is waited out within the timeout, not taken for unreachable") {
    ScriptedSocket s;  // listen backlog 4, nobody accepting yet
    Fixture f(s.path);
    auto h = f.handle();
    // Fill the backlog as a burst of clients would, until connect says EAGAIN.
    std::vector<int> fillers;
    for (int i = 0; i < 64; ++i) {
        const int c = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
        REQUIRE(c >= 0);
        sockaddr_un a{};
        a.sun_family = AF_UNIX;
        std::strncpy(a.sun_path, s.path.c_str(), sizeof a.sun_path - 1);
        if (::connect(c, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
            REQUIRE(errno == EAGAIN);
            ::close(c);
            break;
        }
        fillers.push_back(c);
    }
    REQUIRE_FALSE(fillers.empty());
    std::optional<tokenshm::Expected<std::uint64_t, tokenshm::Error>> v;
    std::thread reporter([&] { v.emplace(h.report_invalid(7, 10s)); });
    // The refresher gets to the backlog later. The delay only gives the
    // reporter time to meet the full backlog; the result does not depend on it.
    std::this_thread::sleep_for(300ms);
    for (std::size_t i = 0; i < fillers.size(); ++i) {
        const int c = ::accept(s.fd, nullptr, nullptr);
        REQUIRE(c >= 0);
        ::close(c);
    }
    for (int c : fillers)
        ::close(c);
    std::string got;
    auto t = s.serve(R"({"ok":true,"name":"c","version":9,"action":"newer","not_before_unix_ms":5})"
                     "\n",
                     got);
    reporter.join();
    if (!v || !*v) {  // it gave up: release the server thread with a connection of our own
        const int c = ::socket(AF_UNIX, SOCK_STREAM, 0);
        sockaddr_un a{};
        a.sun_family = AF_UNIX;
        std::strncpy(a.sun_path, s.path.c_str(), sizeof a.sun_path - 1);
        (void)::connect(c, reinterpret_cast<sockaddr*>(&a), sizeof a);
        (void)::send(c, "\n", 1, MSG_NOSIGNAL);
        t.join();
        ::close(c);
    } else {
        t.join();
    }
    REQUIRE(v.has_value());
    REQUIRE(*v);
    CHECK(**v == 9);
    CHECK(got == "{\"op\":\"invalid\",\"name\":\"c\",\"version\":7}\n");
}
