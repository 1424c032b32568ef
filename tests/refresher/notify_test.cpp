// The notify protocol's messages and the STATUS= summary, against an abstract
// datagram socket bound here (tests/command/test_notify.py runs the daemon).
#include "notify.hpp"

#include <catch2/catch.hpp>

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>

using namespace tokenshm::refresher;
using tokenshm::shm::RecordState;

namespace {

constexpr std::int64_t kNow = 1'780'272'000'000;  // 2026-06-01T00:00:00Z

// A bound abstract socket standing in for the service manager; sets
// NOTIFY_SOCKET (and WATCHDOG_*) for from_environment(), and unsets them after.
struct Manager {
    int fd = -1;
    explicit Manager(const char* watchdog_usec = nullptr, const char* watchdog_pid = nullptr) {
        fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        REQUIRE(fd >= 0);
        const std::string name = "tokenshm-notify-unit-" + std::to_string(::getpid());
        sockaddr_un a{};
        a.sun_family = AF_UNIX;
        std::memcpy(a.sun_path + 1, name.data(), name.size());
        REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a),
                       static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size())) ==
                0);
        ::setenv("NOTIFY_SOCKET", ("@" + name).c_str(), 1);
        set("WATCHDOG_USEC", watchdog_usec);
        set("WATCHDOG_PID", watchdog_pid);
    }
    ~Manager() {
        ::close(fd);
        ::unsetenv("NOTIFY_SOCKET");
        ::unsetenv("WATCHDOG_USEC");
        ::unsetenv("WATCHDOG_PID");
    }
    static void set(const char* k, const char* v) {
        if (v)
            ::setenv(k, v, 1);
        else
            ::unsetenv(k);
    }
    // The next datagram, or "" when none is waiting.
    std::string next() {
        char buf[4096];
        const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
        return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string();
    }
};

}  // namespace

TEST_CASE("status_summary counts states and gives the next refresh coarsely") {
    CHECK(status_summary({}, kNow) == "0 credentials");
    CHECK(status_summary({{RecordState::valid, kNow + 4 * 60'000 + 59'000}}, kNow) ==
          "1 credential: 1 valid; next refresh in 4m");
    CHECK(status_summary({{RecordState::valid, kNow + 30 * 60'000},
                          {RecordState::stale, kNow + 59'000},
                          {RecordState::valid, 0}},
                         kNow) == "3 credentials: 2 valid, 1 stale; next refresh in under 1m");
    CHECK(status_summary({{RecordState::reauth, 0}, {RecordState::empty, kNow - 1}}, kNow) ==
          "2 credentials: 1 reauth, 1 empty; next refresh due now");
    CHECK(status_summary({{RecordState::valid, kNow + 125 * 60'000}}, kNow) ==
          "1 credential: 1 valid; next refresh in 2h 5m");
    CHECK(status_summary({{RecordState::expired, kNow + 120 * 60'000}}, kNow) ==
          "1 credential: 1 expired; next refresh in 2h");
}

TEST_CASE("without NOTIFY_SOCKET nothing is sent") {
    ::unsetenv("NOTIFY_SOCKET");
    ServiceNotifier n = ServiceNotifier::from_environment();
    CHECK_FALSE(n.enabled());
    n.ready("x");  // a no-op, not a crash
}

TEST_CASE("NOTIFY_SOCKET that is neither a path nor '@name' turns notifying off") {
    ::setenv("NOTIFY_SOCKET", "vsock:2:1234", 1);
    CHECK_FALSE(ServiceNotifier::from_environment().enabled());
    ::setenv("NOTIFY_SOCKET", ("/" + std::string(200, 'x')).c_str(), 1);
    CHECK_FALSE(ServiceNotifier::from_environment().enabled());
    ::unsetenv("NOTIFY_SOCKET");
}

TEST_CASE("READY, RELOADING with MONOTONIC_USEC, STOPPING") {
    Manager m;
    ServiceNotifier n = ServiceNotifier::from_environment();
    REQUIRE(n.enabled());
    CHECK(n.watchdog_every_ms() == 0);
    n.ready("1 credential: 1 valid");
    CHECK(m.next() == "READY=1\nSTATUS=1 credential: 1 valid");
    n.reloading();
    const std::string r = m.next();
    CHECK(r.rfind("RELOADING=1\nMONOTONIC_USEC=", 0) == 0);
    n.stopping();
    CHECK(m.next().rfind("STOPPING=1", 0) == 0);
}

TEST_CASE("heartbeat: STATUS only when it changed, no WATCHDOG without WATCHDOG_USEC") {
    Manager m;
    ServiceNotifier n = ServiceNotifier::from_environment();
    n.ready("a");
    CHECK(m.next() == "READY=1\nSTATUS=a");
    n.heartbeat(0, "a");
    CHECK(m.next().empty());
    n.heartbeat(10, "b");
    CHECK(m.next() == "STATUS=b");
}

TEST_CASE("WATCHDOG=1 every quarter of WATCHDOG_USEC, from the first heartbeat") {
    Manager m("2000000");
    ServiceNotifier n = ServiceNotifier::from_environment();
    REQUIRE(n.watchdog_every_ms() == 500);
    n.heartbeat(1000, "s");
    CHECK(m.next() == "WATCHDOG=1\nSTATUS=s");
    n.heartbeat(1499, "s");
    CHECK(m.next().empty());
    n.heartbeat(1500, "s");
    CHECK(m.next() == "WATCHDOG=1");
}

TEST_CASE("WATCHDOG_PID of another process, or a bad WATCHDOG_USEC: no watchdog") {
    SECTION("another pid") {
        Manager m("2000000", std::to_string(::getpid() + 1).c_str());
        CHECK(ServiceNotifier::from_environment().watchdog_every_ms() == 0);
    }
    SECTION("this pid") {
        Manager m("2000000", std::to_string(::getpid()).c_str());
        CHECK(ServiceNotifier::from_environment().watchdog_every_ms() == 500);
    }
    SECTION("not a number") {
        Manager m("2s");
        CHECK(ServiceNotifier::from_environment().watchdog_every_ms() == 0);
    }
    SECTION("zero") {
        Manager m("0");
        CHECK(ServiceNotifier::from_environment().watchdog_every_ms() == 0);
    }
}
