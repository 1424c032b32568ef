// The reader's side of the control socket (SPEC.md, "The control socket"):
// Handle::report_invalid and Handle::request_refresh send one JSON line to the
// socket the segment's header names and read one JSON line back, all within
// one deadline. libtokenshm links no JSON library: the answers are flat
// objects, read by the small parser below.
#include <tokenshm/reader.hpp>
#include <tokenshm/shm/posix.hpp>

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <map>
#include <new>
#include <optional>
#include <string>

namespace tokenshm {

namespace {

constexpr std::size_t kMaxAnswerBytes = 64 * 1024;
constexpr long kConnectRetryMs = 5;

std::int64_t mono_ms() noexcept {
    struct timespec ts {};
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    return std::int64_t{ts.tv_sec} * 1000 + ts.tv_nsec / 1'000'000;
}

using shm::Fd;  // closes its descriptor when it goes

// Waits for `events` on fd until `deadline` (monotonic ms); false on timeout.
bool wait_for(int fd, short events, std::int64_t deadline) noexcept {
    for (;;) {
        const std::int64_t left = deadline - mono_ms();
        if (left <= 0) return false;
        pollfd p{fd, events, 0};
        const int r = ::poll(&p, 1, static_cast<int>(std::min<std::int64_t>(left, 60'000)));
        if (r > 0) return true;
        if (r < 0 && errno != EINTR) return false;
    }
}

// A connect to a Unix socket whose listen backlog is full fails EAGAIN at
// once (nothing is in progress, so there is nothing to poll for): the
// refresher is busy with a burst of clients, and a slot frees soon. Tries
// again every few ms until the deadline.
Expected<int, Error> connect_to(const std::string& path, std::int64_t deadline) noexcept {
    if (path.empty() || path.size() >= sizeof(sockaddr_un{}.sun_path))
        return Unexpected{Error::unreachable};
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::memcpy(a.sun_path, path.data(), path.size());
    for (;;) {
        const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0) return Unexpected{Error::system};
        if (::connect(fd, reinterpret_cast<const sockaddr*>(&a), sizeof a) == 0) return fd;
        const int err = errno;
        if (err == EINPROGRESS) {
            int so = 0;
            socklen_t len = sizeof so;
            if (wait_for(fd, POLLOUT, deadline) &&
                ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &so, &len) == 0 && so == 0)
                return fd;
        }
        ::close(fd);
        if ((err == EAGAIN || err == EINTR) && mono_ms() + kConnectRetryMs < deadline) {
            const struct timespec pause { 0, kConnectRetryMs * 1'000'000 };
            ::nanosleep(&pause, nullptr);
            continue;
        }
        // The file system's permission is the first refusal a peer meets.
        return Unexpected{err == EACCES || err == EPERM ? Error::refused : Error::unreachable};
    }
}

// Sends `line` and reads one line back before `deadline`.
Expected<std::string, Error> exchange(int fd, const std::string& line,
                                      std::int64_t deadline) noexcept {
    std::size_t sent = 0;
    while (sent < line.size()) {
        const ssize_t n = ::send(fd, line.data() + sent, line.size() - sent, MSG_NOSIGNAL);
        if (n > 0) {
            sent += static_cast<std::size_t>(n);
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && errno == EAGAIN) {
            if (!wait_for(fd, POLLOUT, deadline)) return Unexpected{Error::unreachable};
        } else {
            return Unexpected{Error::unreachable};
        }
    }
    std::string in;
    char buf[4096];
    while (in.find('\n') == std::string::npos) {
        if (in.size() > kMaxAnswerBytes || !wait_for(fd, POLLIN, deadline))
            return Unexpected{Error::unreachable};
        const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
        if (n == 0) return Unexpected{Error::unreachable};  // closed before answering
        if (n < 0 && errno != EINTR && errno != EAGAIN) return Unexpected{Error::unreachable};
        if (n > 0) in.append(buf, static_cast<std::size_t>(n));
    }
    in.resize(in.find('\n'));
    return in;
}

// A flat JSON object's members, each value as its text (a string's decoded,
// escapes other than \" \\ \/ \n \t kept as '?'); nullopt if it is not one.
std::optional<std::map<std::string, std::string>> parse_flat(std::string_view s) {
    std::map<std::string, std::string> out;
    std::size_t i = 0;
    const auto ws = [&] {
        while (i < s.size() && (s[i] == ' ' || s[i] == '\t' || s[i] == '\r'))
            ++i;
    };
    const auto str = [&](std::string& v) -> bool {
        if (i >= s.size() || s[i] != '"') return false;
        for (++i; i < s.size() && s[i] != '"'; ++i) {
            if (s[i] != '\\') {
                v.push_back(s[i]);
                continue;
            }
            if (++i >= s.size()) return false;
            const char c = s[i];
            v.push_back(c == 'n'                              ? '\n'
                        : c == 't'                            ? '\t'
                        : (c == '"' || c == '\\' || c == '/') ? c
                                                              : '?');
            if (c == 'u') i += 4;
        }
        return i++ < s.size();
    };
    ws();
    if (i >= s.size() || s[i++] != '{') return std::nullopt;
    for (bool first = true;; first = false) {
        ws();
        if (i < s.size() && s[i] == '}' && first) return out;
        std::string key, val;
        if (!str(key)) return std::nullopt;
        ws();
        if (i >= s.size() || s[i++] != ':') return std::nullopt;
        ws();
        if (i < s.size() && s[i] == '"') {
            if (!str(val)) return std::nullopt;
        } else {
            const std::size_t start = i;
            while (i < s.size() && s[i] != ',' && s[i] != '}' && s[i] != ' ')
                ++i;
            val.assign(s.substr(start, i - start));
            if (val.empty() || val[0] == '{' || val[0] == '[') return std::nullopt;
        }
        out[key] = std::move(val);
        ws();
        if (i < s.size() && s[i] == ',') {
            ++i;
            continue;
        }
        if (i < s.size() && s[i] == '}') return out;
        return std::nullopt;
    }
}

template <typename T>
bool number(const std::map<std::string, std::string>& m, const char* key, T& v) {
    auto it = m.find(key);
    if (it == m.end()) return false;
    const auto [p, ec] =
        std::from_chars(it->second.data(), it->second.data() + it->second.size(), v);
    return ec == std::errc{} && p == it->second.data() + it->second.size();
}

Error error_of(const std::string& word) {
    if (word == "no_such_credential") return Error::no_such_credential;
    if (word == "reauth") return Error::reauth;
    if (word == "busy") return Error::busy;
    if (word == "bad_request") return Error::invalid_argument;
    return Error::refused;
}

Expected<RefreshReply, Error> decode_reply(const std::string& line) {
    const auto m = parse_flat(line);
    if (!m) return Unexpected{Error::refused};
    const auto ok = m->find("ok");
    if (ok == m->end() || ok->second != "true") {
        const auto word = m->find("error");
        return Unexpected{error_of(word == m->end() ? std::string() : word->second)};
    }
    RefreshReply r;
    const auto action = m->find("action");
    if (!number(*m, "version", r.version) ||
        !number(*m, "not_before_unix_ms", r.not_before_unix_ms) || action == m->end())
        return Unexpected{Error::refused};
    using A = RefreshReply::Action;
    const std::string& a = action->second;
    if (a == "refreshing")
        r.action = A::refreshing;
    else if (a == "joined")
        r.action = A::joined;
    else if (a == "waiting")
        r.action = A::waiting;
    else if (a == "newer")
        r.action = A::newer;
    else
        return Unexpected{Error::refused};
    return r;
}

}  // namespace

const char* to_string(RefreshReply::Action a) noexcept {
    switch (a) {
        case RefreshReply::Action::refreshing:
            return "refreshing";
        case RefreshReply::Action::joined:
            return "joined";
        case RefreshReply::Action::waiting:
            return "waiting";
        case RefreshReply::Action::newer:
            return "newer";
    }
    return "unknown";
}

Expected<RefreshReply, Error> Handle::request_refresh(std::uint64_t invalid_version,
                                                      std::chrono::milliseconds timeout) noexcept {
    try {
        const std::int64_t deadline = mono_ms() + std::max<std::int64_t>(0, timeout.count());
        auto fd = connect_to(control_socket(), deadline);
        if (!fd) return Unexpected{fd.error()};
        Fd sock(*fd);
        // Credential names are [A-Za-z0-9._-]: nothing to escape.
        std::string line = invalid_version == 0
                               ? R"({"op":"refresh","name":")" + name() + "\"}\n"
                               : R"({"op":"invalid","name":")" + name() + R"(","version":)" +
                                     std::to_string(invalid_version) + "}\n";
        auto answer = exchange(sock.get(), line, deadline);
        if (!answer) return Unexpected{answer.error()};
        return decode_reply(*answer);
    } catch (const std::bad_alloc&) {
        return Unexpected{Error::system};
    }
}

Expected<std::uint64_t, Error> Handle::report_invalid(std::uint64_t version,
                                                      std::chrono::milliseconds timeout) noexcept {
    if (version == 0) return Unexpected{Error::invalid_argument};
    auto r = request_refresh(version, timeout);
    if (!r) return Unexpected{r.error()};
    // Only "newer" means another token: the record's version also moves when
    // the refresher republishes the same token (stale after a failed try).
    return r->action == RefreshReply::Action::newer ? r->version : version;
}

Expected<std::optional<Coordination>, Error> Reader::coordination(
    std::chrono::milliseconds timeout) const noexcept {
    try {
        const std::int64_t deadline = mono_ms() + std::max<std::int64_t>(0, timeout.count());
        auto fd = connect_to(control_socket(), deadline);
        if (!fd) return Unexpected{fd.error()};
        Fd sock(*fd);
        auto answer = exchange(sock.get(), "{\"op\":\"coordination\"}\n", deadline);
        if (!answer) return Unexpected{answer.error()};
        const auto m = parse_flat(*answer);
        if (!m) return Unexpected{Error::refused};
        const auto ok = m->find("ok");
        const auto role = m->find("role");
        if (ok == m->end() || ok->second != "true" || role == m->end())
            return Unexpected{Error::refused};
        if (role->second == "alone") return std::optional<Coordination>();
        Coordination c;
        c.role = role->second;
        if (auto h = m->find("leader_host"); h != m->end()) c.leader_host = h->second;
        if (auto e = m->find("etcd"); e != m->end()) c.etcd = e->second;
        if (!number(*m, "leader_pid", c.leader_pid) ||
            !number(*m, "lease_remaining_ms", c.lease_remaining_ms))
            return Unexpected{Error::refused};
        return std::optional<Coordination>(std::move(c));
    } catch (const std::bad_alloc&) {
        return Unexpected{Error::system};
    }
}

}  // namespace tokenshm
