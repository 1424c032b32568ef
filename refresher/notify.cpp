#include "notify.hpp"

#include "log.hpp"

#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <utility>

namespace tokenshm::refresher {

namespace {

// NOTIFY_SOCKET as a socket address: "/path" or "@abstract" (the '@' stands
// for the leading NUL). False, with `why`, for anything else (vsock: and
// friends are for VMs, not a host daemon) or a name that does not fit.
bool notify_address(std::string_view v, sockaddr_un& addr, socklen_t& len, std::string& why) {
    addr = {};
    addr.sun_family = AF_UNIX;
    if (v.empty() || (v[0] != '/' && v[0] != '@')) {
        why = "is neither an absolute path nor an abstract name starting with '@'";
        return false;
    }
    // A path needs its terminating NUL inside sun_path; an abstract name does not.
    const std::size_t room = sizeof addr.sun_path - (v[0] == '/' ? 1 : 0);
    if (v.size() < 2 || v.size() > room) {
        why = "has " + std::to_string(v.size()) + " bytes; a socket name has 2 to " +
              std::to_string(room);
        return false;
    }
    std::memcpy(addr.sun_path, v.data(), v.size());
    if (v[0] == '@') addr.sun_path[0] = '\0';
    len =
        static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + v.size() + (v[0] == '/' ? 1 : 0));
    return true;
}

// A decimal number with nothing around it; false for anything else.
bool parse_u64(const char* s, std::uint64_t& out) {
    const std::string_view v(s);
    const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
    return ec == std::errc() && end == v.data() + v.size() && !v.empty();
}

// WATCHDOG_USEC / WATCHDOG_PID: how often to ping, in ms, or 0 when the watchdog is
// not ours (another pid) or not set. A bad value is logged and ignored.
std::int64_t watchdog_period_ms_from_environment() {
    const char* usec = std::getenv("WATCHDOG_USEC");
    if (!usec) return 0;
    std::uint64_t period = 0, pid = 0;
    if (!parse_u64(usec, period) || period == 0 || period > (1ull << 52)) {
        log_event(Level::warn, "", "notify",
                  "WATCHDOG_USEC is not a positive number of microseconds; no watchdog pings");
        return 0;
    }
    if (const char* p = std::getenv("WATCHDOG_PID")) {
        if (!parse_u64(p, pid)) {
            log_event(Level::warn, "", "notify",
                      "WATCHDOG_PID is not a process id; no watchdog pings");
            return 0;
        }
        if (pid != static_cast<std::uint64_t>(::getpid())) return 0;  // meant for another process
    }
    // A quarter period: comfortably inside the half that sd_watchdog_enabled(3) asks for.
    return std::max<std::int64_t>(1, static_cast<std::int64_t>(period / 4000));
}

std::uint64_t monotonic_usec() {
    timespec ts{};
    ::clock_gettime(CLOCK_MONOTONIC, &ts);  // cannot fail for CLOCK_MONOTONIC
    return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000u +
           static_cast<std::uint64_t>(ts.tv_nsec) / 1000u;
}

// "under 1m", "4m", "2h" or "2h 5m".
std::string coarse_duration(std::int64_t ms) {
    const std::int64_t minutes = ms / 60'000;
    if (minutes < 1) return "under 1m";
    if (minutes < 60) return std::to_string(minutes) + "m";
    const std::string h = std::to_string(minutes / 60) + "h";
    return minutes % 60 ? h + " " + std::to_string(minutes % 60) + "m" : h;
}

}  // namespace

ServiceNotifier ServiceNotifier::from_environment() {
    ServiceNotifier n;
    const char* where = std::getenv("NOTIFY_SOCKET");
    if (!where) return n;
    std::string why;
    if (!notify_address(where, n.addr_, n.addr_len_, why)) {
        log_event(Level::warn, "", "notify", "NOTIFY_SOCKET " + why + "; not notifying");
        return n;
    }
    n.fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (n.fd_ < 0) {
        log_event(Level::warn, "", "notify",
                  std::string("socket(AF_UNIX, SOCK_DGRAM): ") + std::strerror(errno) +
                      "; not notifying");
        return n;
    }
    n.watchdog_every_ms_ = watchdog_period_ms_from_environment();
    return n;
}

ServiceNotifier::ServiceNotifier(ServiceNotifier&& o) noexcept
    : fd_(std::exchange(o.fd_, -1)),
      addr_(o.addr_),
      addr_len_(o.addr_len_),
      watchdog_every_ms_(o.watchdog_every_ms_),
      last_watchdog_ms_(o.last_watchdog_ms_),
      watchdog_sent_(o.watchdog_sent_),
      last_status_(std::move(o.last_status_)),
      failure_logged_(o.failure_logged_) {}

ServiceNotifier::~ServiceNotifier() {
    if (fd_ >= 0) ::close(fd_);
}

void ServiceNotifier::send(const std::string& message) {
    if (fd_ < 0) return;
    const ssize_t n = ::sendto(fd_, message.data(), message.size(), MSG_NOSIGNAL,
                               reinterpret_cast<const sockaddr*>(&addr_), addr_len_);
    if (n == static_cast<ssize_t>(message.size()) || failure_logged_) return;
    failure_logged_ = true;
    log_event(Level::warn, "", "notify",
              std::string("sendto(NOTIFY_SOCKET): ") +
                  (n < 0 ? std::strerror(errno) : "short write") +
                  "; the service manager may miss READY/WATCHDOG (logged once)");
}

void ServiceNotifier::ready(const std::string& status) {
    last_status_ = status;
    send("READY=1\nSTATUS=" + status);
}

void ServiceNotifier::reloading() {
    send("RELOADING=1\nMONOTONIC_USEC=" + std::to_string(monotonic_usec()) +
         "\nSTATUS=reloading the configuration");
    last_status_.clear();
}

void ServiceNotifier::stopping() {
    send("STOPPING=1\nSTATUS=stopping");
}

void ServiceNotifier::heartbeat(std::int64_t mono_ms, const std::string& status) {
    if (fd_ < 0) return;
    std::string message;
    if (watchdog_every_ms_ > 0 &&
        (!watchdog_sent_ || mono_ms - last_watchdog_ms_ >= watchdog_every_ms_)) {
        message = "WATCHDOG=1";
        watchdog_sent_ = true;
        last_watchdog_ms_ = mono_ms;
    }
    if (status != last_status_) {
        last_status_ = status;
        message += (message.empty() ? "STATUS=" : "\nSTATUS=") + status;
    }
    if (!message.empty()) send(message);
}

std::string status_summary(const std::vector<CredentialBrief>& creds, std::int64_t now_unix_ms) {
    using shm::RecordState;
    constexpr std::array<RecordState, 5> kOrder{RecordState::valid, RecordState::stale,
                                                RecordState::expired, RecordState::reauth,
                                                RecordState::empty};
    std::string s =
        std::to_string(creds.size()) + (creds.size() == 1 ? " credential" : " credentials");
    std::string counts;
    for (const RecordState st : kOrder) {
        std::size_t n = 0;
        for (const auto& c : creds)
            n += c.state == st ? 1 : 0;
        if (n > 0)
            counts += (counts.empty() ? "" : ", ") + std::to_string(n) + " " + shm::to_string(st);
    }
    if (!counts.empty()) s += ": " + counts;
    std::int64_t next = 0;
    for (const auto& c : creds)
        if (c.next_refresh_ms > 0 && (next == 0 || c.next_refresh_ms < next))
            next = c.next_refresh_ms;
    if (next > 0)
        s += next <= now_unix_ms ? "; next refresh due now"
                                 : "; next refresh in " + coarse_duration(next - now_unix_ms);
    return s;
}

}  // namespace tokenshm::refresher
