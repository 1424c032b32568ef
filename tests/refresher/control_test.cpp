// The control socket: what its requests do to the daemon (fake clock, fake
// transport, a real segment), and the socket itself (a real one in a temp dir).
#include "ci_skip.hpp"
#include "control_socket.hpp"
#include "daemon.hpp"
#include "fake_transport.hpp"
#include "log.hpp"

#include <rapidjson/document.h>

#include <grp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

using namespace tokenshm::refresher;
namespace fs = std::filesystem;

namespace {

struct TempDir {
    fs::path path;
    TempDir() {
        std::string t = (fs::temp_directory_path() / "tokenshm-control-XXXXXX").string();
        REQUIRE(::mkdtemp(t.data()) != nullptr);
        path = t;
    }
    ~TempDir() { fs::remove_all(path); }
};

rapidjson::Document json(const std::string& s) {
    rapidjson::Document d;
    d.Parse(s.c_str());
    REQUIRE_FALSE(d.HasParseError());
    REQUIRE(d.IsObject());
    return d;
}

struct World {
    TempDir dir;
    std::string segment = "tokenshm-test-control-" + std::to_string(::getpid());
    tokenshm::test::FakeTransport transport;
    PosixFileSystem posix;
    std::int64_t now = 7'200'000;
    const std::int64_t wall = 1'700'000'000'000 - 7'200'000;
    Config cfg;
    std::unique_ptr<Daemon> daemon;

    World() {
        set_log_sink([](std::string_view) {});
        cfg.segment = segment;
        cfg.state_dir = (dir.path / "state").string();
        CredentialConfig c;
        c.name = "alpha";
        c.token_endpoint = EndpointUrl::parse("https://alpha.example.test/token").value();
        c.grant = Grant::client_credentials;
        c.client_id = "alpha-client";
        c.client_secret = Secret("secret-alpha");
        c.min_interval = std::chrono::seconds(5);
        cfg.credentials.push_back(c);
        auto d = Daemon::start(cfg, DaemonDeps{&transport, &posix,
                                               [this] {
                                                   return Now{now, now + wall};
                                               },
                                               [] { return 0.5; }});
        REQUIRE(d);
        daemon = std::move(*d);
    }
    ~World() {
        daemon.reset();
        (void)tokenshm::shm::sys::shm_unlink("/" + segment);
        set_log_sink({});
    }
    void step() { daemon->step(std::chrono::milliseconds(0)); }
    // Steps until alpha has its first token; returns its version.
    std::uint64_t first_token() {
        step();
        REQUIRE(transport.answer("alpha", tokenshm::test::token_response("at-1", 3600)));
        step();
        return version();
    }
    std::uint64_t version() {
        auto st = json(daemon->control_answer(R"({"op":"status"})"));
        return st["credentials"][0]["version"].GetUint64();
    }
    rapidjson::Document ask(const std::string& line) { return json(daemon->control_answer(line)); }
};

// An answer's "action" ("refreshing", "joined", "newer"...).
std::string action_of(const rapidjson::Document& answer) {
    return answer["action"].GetString();
}

std::string invalid(std::uint64_t v) {
    return R"({"op":"invalid","name":"alpha","version":)" + std::to_string(v) + "}";
}

}  // namespace

TEST_CASE("refresh asks within min_interval_s share one token request, and say when") {
    World w;
    const std::uint64_t v1 = w.first_token();
    REQUIRE(w.transport.started == 1);
    for (int i = 0; i < 10; ++i) {
        auto a = w.ask(R"({"op":"refresh","name":"alpha"})");
        CHECK(a["ok"].GetBool());
        CHECK(action_of(a) == "waiting");
        CHECK(a["version"].GetUint64() == v1);
        // The first request went out at `now`: the next may at now + 5 s.
        CHECK(a["not_before_unix_ms"].GetInt64() == w.now + w.wall + 5000);
        auto r = w.ask(invalid(v1));
        CHECK(action_of(r) == "waiting");
        w.step();
    }
    CHECK(w.transport.started == 1);  // min_interval_s holds
    w.now += 5000;
    w.step();
    CHECK(w.transport.started == 2);
    // Asks while it is in flight join it.
    CHECK(action_of(w.ask(invalid(v1))) == "joined");
    CHECK(action_of(w.ask(R"({"op":"refresh","name":"alpha"})")) == "joined");
    REQUIRE(w.transport.answer("alpha", tokenshm::test::token_response("at-2", 3600)));
    w.step();
    CHECK(w.transport.started == 2);
    const std::uint64_t v2 = w.version();
    CHECK(v2 > v1);
    // A report of the old token is answered with the new one, no request.
    auto old = w.ask(invalid(v1));
    CHECK(action_of(old) == "newer");
    CHECK(old["version"].GetUint64() == v2);
    w.now += 60'000;
    w.step();
    CHECK(w.transport.started == 2);
}

TEST_CASE("a refresh asked while every credential is idle goes out at the next pass") {
    // The idle loop skips its walk over credentials until one is due
    // (Daemon::poll_credentials); a control request must end that skip.
    World w;
    w.first_token();
    for (int i = 0; i < 4; ++i) {  // settle: the walk after the answer is done
        w.now += 10'000;
        w.step();
    }
    const int started = w.transport.started;
    CHECK(action_of(w.ask(R"({"op":"refresh","name":"alpha"})")) == "refreshing");
    w.step();
    CHECK(w.transport.started == started + 1);
}

TEST_CASE("a hundred reports of the current version cause one token request") {
    World w;
    const std::uint64_t v1 = w.first_token();
    w.now += 10'000;  // past min_interval_s
    auto first = w.ask(invalid(v1));
    CHECK(action_of(first) == "refreshing");
    for (int i = 0; i < 99; ++i) {
        auto a = w.ask(invalid(v1));
        CHECK(action_of(a) == "joined");
        if (i % 10 == 0) w.step();
    }
    CHECK(w.transport.started == 2);
    REQUIRE(w.transport.answer("alpha", tokenshm::test::token_response("at-2", 3600)));
    w.step();
    for (int i = 0; i < 100; ++i)
        CHECK(action_of(w.ask(invalid(v1))) == "newer");
    w.now += 10'000;
    w.step();
    CHECK(w.transport.started == 2);
}

TEST_CASE("a failed refresh republishes the same token: its versions still count as current") {
    World w;
    const std::uint64_t v1 = w.first_token();
    w.now += 10'000;
    CHECK(action_of(w.ask(invalid(v1))) == "refreshing");
    w.step();
    HttpResponse down;
    down.outcome = HttpResponse::Outcome::response;
    down.status = 503;
    REQUIRE(w.transport.answer("alpha", down));
    w.step();
    const std::uint64_t v2 = w.version();
    CHECK(v2 > v1);  // stale, with the same token
    w.now += 10'000;
    CHECK(action_of(w.ask(invalid(v1))) == "refreshing");
}

TEST_CASE("status carries a server's error text as printable ASCII, whatever its bytes") {
    World w;
    w.first_token();
    w.now += 10'000;
    CHECK(action_of(w.ask(R"({"op":"refresh","name":"alpha"})")) == "refreshing");
    w.step();
    HttpResponse bad;
    bad.outcome = HttpResponse::Outcome::response;
    bad.status = 400;
    bad.content_type = "application/json";
    // Valid UTF-8 (the body must parse): an accent and U+009B, a terminal's CSI.
    bad.body = "{\"error\":\"invalid_request\",\"error_description\":\"caf\xc3\xa9 \xc2\x9b" "2J\"}";
    REQUIRE(w.transport.answer("alpha", bad));
    w.step();
    const std::string answer = w.daemon->control_answer(R"({"op":"status"})");
    for (const char c : answer)
        CHECK(static_cast<unsigned char>(c) < 0x80);
    auto st = json(answer);
    const std::string last_error = st["credentials"][0]["last_error"].GetString();
    INFO(last_error);
    CHECK(last_error.find("invalid_request") != std::string::npos);
}

TEST_CASE("bad requests, unknown credentials and status") {
    World w;
    const std::uint64_t v1 = w.first_token();
    for (const char* bad :
         {"", "nonsense", "[]", R"({"op":"nope"})", R"({"op":"refresh"})",
          R"({"op":"refresh","name":"../x"})", R"({"op":"invalid","name":"alpha"})",
          R"({"op":"invalid","name":"alpha","version":0})",
          R"({"op":"invalid","name":"alpha","version":"1"})",
          R"({"op":"refresh","name":"alpha","version":1})",
          R"({"op":"refresh","name":"alpha","extra":1})"}) {
        INFO(bad);
        auto a = w.ask(bad);
        CHECK_FALSE(a["ok"].GetBool());
        CHECK(std::string(a["error"].GetString()) == "bad_request");
        CHECK(std::string(a["message"].GetString()).find('\n') == std::string::npos);
    }
    auto never = w.ask(invalid(v1 + 100));
    CHECK(std::string(never["error"].GetString()) == "bad_request");
    auto unknown = w.ask(R"({"op":"refresh","name":"gamma"})");
    CHECK(std::string(unknown["error"].GetString()) == "no_such_credential");

    auto st = w.ask(R"({"op":"status"})");
    CHECK(st["ok"].GetBool());
    CHECK(st["refresher"]["pid"].GetInt64() == ::getpid());
    CHECK(st["refresher"]["requests_in_flight"].GetInt64() == 0);
    const auto& c = st["credentials"][0];
    CHECK(std::string(c["name"].GetString()) == "alpha");
    CHECK(std::string(c["state"].GetString()) == "valid");
    CHECK_FALSE(c["in_flight"].GetBool());
    CHECK(c["backoff_ms"].GetInt64() == 0);
    CHECK_FALSE(c.HasMember("token"));
    CHECK(w.daemon->control_answer(R"({"op":"status"})").find("at-1") == std::string::npos);
}

// ---------------------------------------------------------------- the socket

namespace {

int connect_to(const std::string& path) {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    REQUIRE(fd >= 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
    REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    return fd;
}

// Sends `line`, services the server until an answer line arrives.
std::string roundtrip(ControlServer& s, int fd, const std::string& line, std::int64_t now = 0) {
    REQUIRE(::send(fd, line.data(), line.size(), MSG_NOSIGNAL) ==
            static_cast<ssize_t>(line.size()));
    std::string in;
    for (int i = 0; i < 1000 && in.find('\n') == std::string::npos; ++i) {
        s.service(now, [](std::string_view l, const PeerCred&) {
            return R"({"ok":true,"echo":")" + std::string(l) + "\"}";
        });
        char buf[8192];
        const ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n > 0) in.append(buf, static_cast<std::size_t>(n));
        if (n == 0) break;
    }
    return in;
}

}  // namespace

TEST_CASE("the socket: mode, one answer per line, size cap, removed when closed") {
    TempDir dir;
    const std::string path = (dir.path / "ctl.sock").string();
    {
        auto s = ControlServer::open(path, 0640, std::nullopt, ControlLimits{64, 5000, 4});
        REQUIRE(s);
        struct stat st {};
        REQUIRE(::lstat(path.c_str(), &st) == 0);
        CHECK(S_ISSOCK(st.st_mode));
        CHECK((st.st_mode & 07777) == 0660);
        const int fd = connect_to(path);
        CHECK(roundtrip(**s, fd, "hello\n") == "{\"ok\":true,\"echo\":\"hello\"}\n");
        CHECK(roundtrip(**s, fd, "again\n") == "{\"ok\":true,\"echo\":\"again\"}\n");
        const std::string big(100, 'x');
        const std::string answer = roundtrip(**s, fd, big);
        CHECK(answer.find("bad_request") != std::string::npos);
        CHECK(answer.find("longer than 64 bytes") != std::string::npos);
        ::close(fd);
    }
    CHECK_FALSE(fs::exists(path));
}

TEST_CASE("a client that sends nothing is dropped after the read timeout") {
    TempDir dir;
    const std::string path = (dir.path / "ctl.sock").string();
    auto s = ControlServer::open(path, 0600, std::nullopt, ControlLimits{4096, 1000, 4});
    REQUIRE(s);
    const int fd = connect_to(path);
    const ControlHandler h = [](std::string_view, const PeerCred&) { return std::string("{}"); };
    (*s)->service(0, h);
    CHECK((*s)->clients() == 1);
    (*s)->service(999, h);
    CHECK((*s)->clients() == 1);
    (*s)->service(1000, h);
    CHECK((*s)->clients() == 0);
    ::close(fd);
}

TEST_CASE("a stale socket is replaced; a live one or a non-socket is an error") {
    TempDir dir;
    const std::string path = (dir.path / "ctl.sock").string();
    {
        // A socket nobody listens on any more, as a killed refresher leaves it.
        const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
        sockaddr_un a{};
        a.sun_family = AF_UNIX;
        std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
        REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
        ::close(fd);
    }
    auto s = ControlServer::open(path, 0600, std::nullopt);
    REQUIRE(s);
    auto second = ControlServer::open(path, 0600, std::nullopt);
    REQUIRE_FALSE(second);
    CHECK(second.error().message.find("in use by another process") != std::string::npos);
    s->reset();

    std::ofstream(path) << "keep me";
    auto file = ControlServer::open(path, 0600, std::nullopt);
    REQUIRE_FALSE(file);
    CHECK(file.error().message.find("is not a socket") != std::string::npos);
    std::ifstream in(path);
    std::string kept;
    std::getline(in, kept);
    CHECK(kept == "keep me");
}

TEST_CASE("peers: our uid, root, or a member of the group; others refused with a reason") {
    const std::vector<gid_t> none;
    const std::vector<gid_t> member{10, 27, 1000};
    CHECK_FALSE(refuse_reason(PeerCred{1, 1000, 1000, none}, 1000, std::nullopt));
    CHECK_FALSE(refuse_reason(PeerCred{1, 0, 0, none}, 1000, std::nullopt));
    auto why = refuse_reason(PeerCred{1, 65534, 65534, none}, 1000, std::nullopt);
    REQUIRE(why);
    CHECK(why->find("uid 65534") != std::string::npos);
    CHECK_FALSE(refuse_reason(PeerCred{1, 2000, 27, none}, 1000, gid_t{27}));    // primary group
    CHECK_FALSE(refuse_reason(PeerCred{1, 2000, 50, member}, 1000, gid_t{27}));  // supplementary
    auto not_member = refuse_reason(PeerCred{1, 2000, 50, member}, 1000, gid_t{28});
    REQUIRE(not_member);
    CHECK(not_member->find("group 28") != std::string::npos);
}

TEST_CASE("beyond max_clients, connections wait in the backlog until a client leaves") {
    set_log_sink([](std::string_view) {});
    TempDir dir;
    const std::string path = (dir.path / "ctl.sock").string();
    auto s = ControlServer::open(path, 0600, std::nullopt, ControlLimits{4096, 5000, 2});
    REQUIRE(s);
    const ControlHandler h = [](std::string_view, const PeerCred&) { return std::string("{}"); };
    const int a = connect_to(path);
    const int b = connect_to(path);
    const int c = connect_to(path);
    (*s)->service(0, h);
    CHECK((*s)->clients() == 2);
    ::close(a);
    (*s)->service(0, h);  // reads a's end of file: a goes
    CHECK((*s)->clients() == 1);
    (*s)->service(0, h);  // and c, waiting in the backlog, comes in
    CHECK((*s)->clients() == 2);
    CHECK(roundtrip(**s, c, "hi\n") == "{\"ok\":true,\"echo\":\"hi\"}\n");
    ::close(b);
    ::close(c);
    set_log_sink({});
}

namespace {

bool readable_now(int fd) {
    pollfd p{fd, POLLIN, 0};
    return ::poll(&p, 1, 0) == 1;
}

}  // namespace

TEST_CASE("a client that does not read its answers gets one at a time and does not wake the loop") {
    set_log_sink([](std::string_view) {});
    TempDir dir;
    const std::string path = (dir.path / "ctl.sock").string();
    auto s = ControlServer::open(path, 0600, std::nullopt, ControlLimits{4096, 5000, 4});
    REQUIRE(s);
    int calls = 0;
    // An answer larger than the socket's buffers: it cannot be written at once.
    const std::string big = R"({"ok":true,"pad":")" + std::string(1 << 20, 'p') + "\"}";
    const ControlHandler h = [&](std::string_view, const PeerCred&) {
        ++calls;
        return big;
    };
    const int fd = connect_to(path);
    std::string lines;
    for (int i = 0; i < 8; ++i)
        lines += "{\"op\":\"status\"}\n";
    REQUIRE(::send(fd, lines.data(), lines.size(), MSG_NOSIGNAL) ==
            static_cast<ssize_t>(lines.size()));
    for (int i = 0; i < 4; ++i)
        (*s)->service(0, h);
    // One answer queued; the other seven requests wait for it to be read.
    CHECK(calls == 1);
    // More bytes from a client that reads nothing must not keep the loop awake.
    REQUIRE(::send(fd, "x", 1, MSG_NOSIGNAL) == 1);
    (*s)->service(0, h);
    CHECK_FALSE(readable_now((*s)->wait_fd()));
    CHECK((*s)->clients() == 1);
    // Once it reads, every request gets its answer.
    std::string in;
    for (int i = 0; i < 100000 && std::count(in.begin(), in.end(), '\n') < 8; ++i) {
        (*s)->service(0, h);
        char buf[65536];
        const ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n > 0) in.append(buf, static_cast<std::size_t>(n));
        if (n == 0) break;
    }
    CHECK(std::count(in.begin(), in.end(), '\n') == 8);
    CHECK(calls == 8);
    ::close(fd);
    set_log_sink({});
}

TEST_CASE("a client pipelining many requests is served a few per pass, the rest soon after") {
    set_log_sink([](std::string_view) {});
    TempDir dir;
    const std::string path = (dir.path / "ctl.sock").string();
    auto s = ControlServer::open(path, 0600, std::nullopt, ControlLimits{4096, 5000, 4});
    REQUIRE(s);
    int calls = 0;
    const ControlHandler h = [&](std::string_view, const PeerCred&) {
        ++calls;
        return std::string("{}");
    };
    const int fd = connect_to(path);
    std::string lines;
    for (int i = 0; i < 100; ++i)
        lines += "{\"op\":\"status\"}\n";
    REQUIRE(::send(fd, lines.data(), lines.size(), MSG_NOSIGNAL) ==
            static_cast<ssize_t>(lines.size()));
    (*s)->service(0, h);
    // One pass does not belong to one client: the loop has other work.
    CHECK(calls < 100);
    CHECK(calls > 0);
    // ...and the loop is woken for the rest (the client reading its
    // answers, as a pipelining client does), no new request bytes needed.
    std::string in;
    char buf[65536];
    for (int i = 0; i < 1000 && calls < 100; ++i) {
        for (ssize_t n; (n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT)) > 0;)
            in.append(buf, static_cast<std::size_t>(n));
        INFO("calls " << calls << " pass " << i);
        REQUIRE(readable_now((*s)->wait_fd()));
        (*s)->service(0, h);
    }
    CHECK(calls == 100);
    for (ssize_t n; (n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT)) > 0;)
        in.append(buf, static_cast<std::size_t>(n));
    CHECK(std::count(in.begin(), in.end(), '\n') == 100);
    ::close(fd);
    set_log_sink({});
}

namespace {

// A connection made by a child process as uid 5001, gid 5000 and the
// supplementary group `group`, handed to us over SCM_RIGHTS; the child has
// exited and been reaped before we return, so its pid names nobody (or,
// after reuse, somebody else).
int connect_as_exited_member(const std::string& path, gid_t group) {
    int sp[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, sp) == 0);
    const pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
        ::close(sp[0]);
        const gid_t groups[1] = {group};
        if (::setgroups(1, groups) != 0 || ::setgid(5000) != 0 || ::setuid(5001) != 0) _exit(2);
        const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
        sockaddr_un a{};
        a.sun_family = AF_UNIX;
        std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
        if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) _exit(3);
        char control[CMSG_SPACE(sizeof(int))] = {};
        char byte = 'f';
        iovec iov{&byte, 1};
        msghdr m{};
        m.msg_iov = &iov;
        m.msg_iovlen = 1;
        m.msg_control = control;
        m.msg_controllen = sizeof control;
        cmsghdr* c = CMSG_FIRSTHDR(&m);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        std::memcpy(CMSG_DATA(c), &fd, sizeof fd);
        _exit(::sendmsg(sp[1], &m, 0) == 1 ? 0 : 4);
    }
    ::close(sp[1]);
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    REQUIRE(WIFEXITED(status));
    REQUIRE(WEXITSTATUS(status) == 0);
    char control[CMSG_SPACE(sizeof(int))] = {};
    char byte = 0;
    iovec iov{&byte, 1};
    msghdr m{};
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = control;
    m.msg_controllen = sizeof control;
    REQUIRE(::recvmsg(sp[0], &m, 0) == 1);
    ::close(sp[0]);
    cmsghdr* c = CMSG_FIRSTHDR(&m);
    REQUIRE(c != nullptr);
    int fd = -1;
    std::memcpy(&fd, CMSG_DATA(c), sizeof fd);
    return fd;
}

}  // namespace

TEST_CASE("a group member is admitted by the groups it connected with, not by its pid's /proc") {
    if (::geteuid() != 0) SKIP_OR_FAIL_UNDER_CI("needs root to connect as another uid");
    set_log_sink([](std::string_view) {});
    TempDir dir;
    REQUIRE(::chmod(dir.path.c_str(), 0711) == 0);
    const std::string path = (dir.path / "ctl.sock").string();
    const gid_t group = 4242;
    auto s = ControlServer::open(path, 0640, group, ControlLimits{4096, 5000, 4});
    REQUIRE(s);
    const int fd = connect_as_exited_member(path, group);
    // The pid SO_PEERCRED names is gone (a reused one could belong to
    // anybody): membership must come from the connection itself.
    CHECK(roundtrip(**s, fd, "hello\n") == "{\"ok\":true,\"echo\":\"hello\"}\n");
    ::close(fd);
    set_log_sink({});
}

namespace {

// One line of valid UTF-8 JSON, an object with a boolean "ok".
bool well_formed_answer(const std::string& a) {
    if (a.find('\n') != std::string::npos) return false;
    rapidjson::Document d;
    d.Parse<rapidjson::kParseValidateEncodingFlag>(a.c_str(), a.size());
    return !d.HasParseError() && d.IsObject() && d.HasMember("ok") && d["ok"].IsBool();
}

}  // namespace

TEST_CASE("any request bytes get one line of valid UTF-8 JSON, and the daemon still serves") {
    World w;
    w.first_token();
    // Keys the parser echoes in its message: invalid UTF-8, a character cut
    // by the message's length cap, controls and NUL.
    const std::vector<std::string> echoes = {
        "{\"\xff\xfe\":1}", "{\"" + std::string(39, 'k') + "\xc3\xa9\":1}",
        std::string("{\"a\\u0000\x1b[31m\":1}"), "{\"\xe2\x80\xae\":1}"};
    for (const std::string& line : echoes) {
        const std::string a = w.daemon->control_answer(line);
        INFO(a);
        CHECK(well_formed_answer(a));
    }
    std::uint64_t seed = 0x9e3779b97f4a7c15u;
    const auto next = [&] {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        return seed;
    };
    const std::string alphabet = "{}[]\":,\\ u0123456789opnamereshvlidtufsx\xff\xc3\x80";
    for (int i = 0; i < 20000; ++i) {
        std::string line(next() % 64, '\0');
        for (char& c : line)
            c = (next() % 4 == 0) ? static_cast<char>(next()) : alphabet[next() % alphabet.size()];
        if (i % 3 == 0) line = "{\"" + line + "\":1}";
        const std::string a = w.daemon->control_answer(line);
        if (!well_formed_answer(a)) {
            FAIL_CHECK("answer to a random request is not one line of UTF-8 JSON: " << a);
            break;
        }
    }
    CHECK(w.ask(R"({"op":"status"})")["ok"].GetBool());
}

TEST_CASE("clients holding every slot do not starve a new one: the longest connected makes room") {
    set_log_sink([](std::string_view) {});
    TempDir dir;
    const std::string path = (dir.path / "ctl.sock").string();
    auto s = ControlServer::open(path, 0600, std::nullopt, ControlLimits{4096, 5000, 2});
    REQUIRE(s);
    const ControlHandler h = [](std::string_view l, const PeerCred&) {
        return R"({"ok":true,"echo":")" + std::string(l) + "\"}";
    };
    // Two hogs take both slots and keep them: a request now and then resets
    // their read timeout.
    const int a = connect_to(path);
    (*s)->service(0, h);
    const int b = connect_to(path);
    (*s)->service(1, h);
    CHECK((*s)->clients() == 2);
    std::int64_t now = 1;
    for (int i = 0; i < 10; ++i) {
        now += 4000;
        CHECK(roundtrip(**s, a, "keep\n", now) == "{\"ok\":true,\"echo\":\"keep\"}\n");
        CHECK(roundtrip(**s, b, "keep\n", now) == "{\"ok\":true,\"echo\":\"keep\"}\n");
    }
    // A reader reporting a 401 must get its answer now, not after the hogs leave.
    const int c = connect_to(path);
    CHECK(roundtrip(**s, c, "invalid\n", now) == "{\"ok\":true,\"echo\":\"invalid\"}\n");
    CHECK((*s)->clients() <= 2);
    ::close(a);
    ::close(b);
    ::close(c);
    set_log_sink({});
}
