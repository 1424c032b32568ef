#include "control_socket.hpp"

#include "log.hpp"

#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

namespace tokenshm::refresher {

namespace {

// Requests one client may have answered per pass of the loop: a client
// pipelining requests as fast as it can must not keep the loop to itself.
constexpr std::size_t kRequestsPerPass = 8;

Unexpected<RefresherError> sys_fail(const std::string& what) {
    return Unexpected{RefresherError::runtime_error(what + ": " + std::strerror(errno))};
}

sockaddr_un address_of(const std::string& path) {
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::memcpy(a.sun_path, path.data(), std::min(path.size(), sizeof a.sun_path - 1));
    return a;
}

// Whether a process accepts connections on the socket at `path` (a connect
// to a killed refresher's socket is refused at once).
bool somebody_answers(const std::string& path) {
    // Non-blocking: a live process whose backlog is full answers EAGAIN
    // instead of holding the start up.
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return true;  // cannot tell: do not remove it
    const sockaddr_un a = address_of(path);
    const int r = ::connect(fd, reinterpret_cast<const sockaddr*>(&a), sizeof a);
    const int err = errno;
    ::close(fd);
    return r == 0 || (err != ECONNREFUSED && err != ENOENT);
}

// Makes `path` free for bind: nothing there, or a socket nobody answers on.
Expected<Done, RefresherError> clear_stale(const std::string& path) {
    struct stat st {};
    if (::lstat(path.c_str(), &st) != 0) {
        if (errno == ENOENT) return Done{};
        return sys_fail("control_socket " + path + ": lstat");
    }
    if (!S_ISSOCK(st.st_mode))
        return Unexpected{RefresherError::runtime_error(
            "control_socket " + path + " exists and is not a socket; not removing it")};
    if (somebody_answers(path))
        return Unexpected{RefresherError::runtime_error(
            "control_socket " + path +
            " is in use by another process (another refresher with the same control_socket?)")};
    if (::unlink(path.c_str()) != 0 && errno != ENOENT)
        return sys_fail("control_socket " + path + ": unlink of the stale socket");
    log_event(Level::info, "", "control_stale_removed", path + " (left by a stopped refresher)");
    return Done{};
}

// Binds with the mode asked (through the umask: a chmod by path after the
// bind would follow a symlink someone swapped in), then sets the group with
// lchown, which does not follow one. The peer check guards the moment before.
Expected<Done, RefresherError> bind_private(int fd, const std::string& path, mode_t mode,
                                            std::optional<gid_t> group) {
    const sockaddr_un a = address_of(path);
    const mode_t old = ::umask(0777 & ~mode);
    const int r = ::bind(fd, reinterpret_cast<const sockaddr*>(&a), sizeof a);
    const int err = errno;
    ::umask(old);
    if (r != 0) {
        errno = err;
        return sys_fail("control_socket " + path + ": bind");
    }
    if (group && ::lchown(path.c_str(), static_cast<uid_t>(-1), *group) != 0)
        return sys_fail("control_socket " + path + ": chown to group " + std::to_string(*group));
    return Done{};
}

// The peer's supplementary groups as it connected (SO_PEERGROUPS), or why not.
Expected<std::vector<gid_t>, std::string> peer_groups(int fd) {
    std::vector<gid_t> groups(64);
    for (int tries = 0; tries < 4; ++tries) {
        socklen_t len = static_cast<socklen_t>(groups.size() * sizeof(gid_t));
        if (::getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &len) == 0) {
            groups.resize(len / sizeof(gid_t));
            return groups;
        }
        if (errno != ERANGE)
            return Unexpected{std::string("SO_PEERGROUPS: ") + std::strerror(errno)};
        groups.resize(len / sizeof(gid_t) + 1);  // len now says how much it needs
    }
    return Unexpected{std::string("SO_PEERGROUPS: the group list keeps growing")};
}

}  // namespace

std::string control_error(std::string_view word, std::string_view message) {
    rapidjson::StringBuffer b;
    rapidjson::Writer<rapidjson::StringBuffer> w(b);
    w.StartObject();
    w.Key("ok");
    w.Bool(false);
    w.Key("error");
    w.String(word.data(), static_cast<rapidjson::SizeType>(word.size()));
    w.Key("message");
    w.String(message.data(), static_cast<rapidjson::SizeType>(message.size()));
    w.EndObject();
    return b.GetString();
}

std::optional<std::string> refuse_reason(const PeerCred& peer, uid_t self,
                                         std::optional<gid_t> group) {
    if (peer.uid == self || peer.uid == 0) return std::nullopt;
    if (group && (peer.gid == *group ||
                  std::find(peer.groups.begin(), peer.groups.end(), *group) != peer.groups.end()))
        return std::nullopt;
    return "uid " + std::to_string(peer.uid) + " is not the refresher's uid " +
           std::to_string(self) + " or root" +
           (group ? ", nor a member of group " + std::to_string(*group) : std::string());
}

ControlServer::ControlServer(std::string path, int listen_fd, int epoll_fd, ControlLimits limits)
    : path_(std::move(path)),
      listen_(listen_fd),
      epoll_(epoll_fd),
      limits_(limits),
      self_(::geteuid()) {}

Expected<std::unique_ptr<ControlServer>, RefresherError> ControlServer::open(
    const std::string& path, mode_t segment_mode, std::optional<gid_t> group,
    ControlLimits limits) {
    if (path.empty() || path.size() >= sizeof(sockaddr_un{}.sun_path))
        return Unexpected{RefresherError::runtime_error("control_socket '" + path +
                                                        "': empty or too long for a socket")};
    if (auto ok = clear_stale(path); !ok) return Unexpected{ok.error()};
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return sys_fail("control_socket: socket");
    const int ep = ::epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) {
        ::close(fd);
        return sys_fail("control_socket: epoll_create1");
    }
    std::unique_ptr<ControlServer> s(new ControlServer(path, fd, ep, limits));
    s->group_ = group;
    // 0640 on the segment lets the group read; connecting needs write, so 0660.
    const mode_t mode = (segment_mode & 0040) ? 0660 : 0600;
    if (auto ok = bind_private(fd, path, mode, group); !ok) return Unexpected{ok.error()};
    struct stat st {};
    if (::lstat(path.c_str(), &st) != 0) return sys_fail("control_socket " + path + ": lstat");
    s->dev_ = st.st_dev;
    s->ino_ = st.st_ino;
    if (::listen(fd, 64) != 0) return sys_fail("control_socket " + path + ": listen");
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    if (::epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0) return sys_fail("control_socket: epoll_ctl");
    log_event(Level::info, "", "control_listening", path);
    return s;
}

ControlServer::~ControlServer() {
    for (const auto& [fd, c] : clients_)
        ::close(fd);
    if (listen_ >= 0) {
        struct stat st {};
        // Only the socket we bound: a person may have put something else there.
        if (ino_ != 0 && ::lstat(path_.c_str(), &st) == 0 && st.st_dev == dev_ &&
            st.st_ino == ino_ && ::unlink(path_.c_str()) != 0)
            log_event(Level::warn, "", "control_unlink",
                      path_ + ": unlink: " + std::strerror(errno));
        ::close(listen_);
    }
    if (epoll_ >= 0) ::close(epoll_);
}

Expected<Done, RefresherError> ControlServer::add_wake_fd(int fd) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    if (::epoll_ctl(epoll_, EPOLL_CTL_ADD, fd, &ev) != 0 && errno != EEXIST)
        return sys_fail("control_socket: epoll_ctl of a wake fd");
    return Done{};
}

void ControlServer::set_watched_fds(const std::vector<int>& fds) {
    // Added again every time (EEXIST is fine): a closed socket leaves the
    // epoll set by itself, and its number may come back as another socket.
    for (int fd : fds) {
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.fd = fd;
        if (::epoll_ctl(epoll_, EPOLL_CTL_ADD, fd, &ev) != 0 && errno != EEXIST)
            log_event(Level::warn, "", "control_socket",
                      std::string("epoll_ctl of a watch socket: ") + std::strerror(errno));
    }
    for (int fd : watched_)
        if (std::find(fds.begin(), fds.end(), fd) == fds.end())
            (void)::epoll_ctl(epoll_, EPOLL_CTL_DEL, fd, nullptr);  // gone already: fine
    watched_ = fds;
}

void ControlServer::service(std::int64_t now_ms, const ControlHandler& handler) {
    accept_all(now_ms);
    std::vector<int> fds;
    for (const auto& [fd, c] : clients_)
        fds.push_back(fd);
    for (int fd : fds) {
        auto it = clients_.find(fd);
        if (it == clients_.end()) continue;
        Client& c = it->second;
        if (!c.out.empty() && !flush(fd, c)) continue;
        if (c.out.empty() && c.close_after_write) {
            drop(fd);
        } else if (c.out.empty()) {
            read_client(fd, c, now_ms, handler);
        } else if (now_ms >= c.deadline_ms) {
            drop(fd);  // not reading its answers: its slot is for other clients
        }
    }
    // A client answered this pass may now make room for a waiting one.
    set_accepting(clients_.size() < limits_.max_clients || evictable());
}

// A full house makes room when it can: the client connected longest among
// those idle between requests goes, so clients that keep their connections
// (each request resets the read timeout) cannot starve a reader reporting a
// 401. Clients that have sent nothing yet, or are mid-request, keep their
// slot: their read timeout bounds them. When nobody can go, the rest wait
// in the backlog, unwatched, so a full house does not keep the loop awake.
void ControlServer::accept_all(std::int64_t now_ms) {
    for (std::size_t n = 0; n < limits_.max_clients; ++n) {
        if (clients_.size() >= limits_.max_clients && !evictable()) break;
        const int fd = ::accept4(listen_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED)
                log_event(Level::warn, "", "control_accept", std::strerror(errno));
            break;
        }
        if (clients_.size() >= limits_.max_clients) {
            const auto [victim, c] = *evictable();
            log_event(Level::debug, "", "control_evicted",
                      "pid " + std::to_string(c->peer.pid) +
                          ": idle the longest while every slot was taken");
            drop(victim);
        }
        admit(fd, now_ms);
    }
}

std::optional<std::pair<int, const ControlServer::Client*>> ControlServer::evictable() const {
    std::optional<std::pair<int, const Client*>> oldest;
    for (const auto& [fd, c] : clients_)
        if (c.answered && c.in.empty() && c.out.empty() && !c.close_after_write &&
            (!oldest || c.seq < oldest->second->seq))
            oldest = std::pair<int, const Client*>(fd, &c);
    return oldest;
}

void ControlServer::set_accepting(bool on) {
    if (on == accepting_) return;
    epoll_event ev{};
    ev.events = on ? EPOLLIN : 0u;
    ev.data.fd = listen_;
    if (::epoll_ctl(epoll_, EPOLL_CTL_MOD, listen_, &ev) == 0) accepting_ = on;
}

void ControlServer::admit(int fd, std::int64_t now_ms) {
    Client c;
    c.deadline_ms = now_ms + limits_.read_timeout_ms;
    c.seq = next_seq_++;
    ucred cred{};
    socklen_t len = sizeof cred;
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
        log_event(Level::warn, "", "control_peer",
                  std::string("SO_PEERCRED: ") + std::strerror(errno));
        ::close(fd);
        return;
    }
    c.peer = PeerCred{cred.pid, cred.uid, cred.gid, {}};
    if (auto groups = peer_groups(fd))
        c.peer.groups = std::move(*groups);
    else  // then only the primary group counts
        log_event(Level::warn, "", "control_peer", groups.error());
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    if (::epoll_ctl(epoll_, EPOLL_CTL_ADD, fd, &ev) != 0) {
        log_event(Level::warn, "", "control_accept",
                  std::string("epoll_ctl: ") + std::strerror(errno));
        ::close(fd);
        return;
    }
    Client& mine = clients_[fd] = std::move(c);
    const std::string who = "pid " + std::to_string(mine.peer.pid) + " uid " +
                            std::to_string(mine.peer.uid) + " gid " + std::to_string(mine.peer.gid);
    // Refused peers get their answer when their request comes, so that they
    // read it instead of finding the connection closed under their write.
    if (auto why = refuse_reason(mine.peer, self_, group_)) {
        log_event(Level::warn, "", "control_refused", who + ": " + *why);
        mine.refused = std::move(*why);
    }
}

void ControlServer::read_client(int fd, Client& c, std::int64_t now_ms,
                                const ControlHandler& handler) {
    char buf[1024];
    std::size_t budget = kRequestsPerPass;
    for (;;) {
        // One request at a time: the next line waits until its answer is
        // written, so a client that does not read cannot pile answers up.
        for (std::size_t nl; c.out.empty() && (nl = c.in.find('\n')) != std::string::npos;) {
            if (budget-- == 0) {
                // The loop has other work: come back at once (watch() wakes
                // it while a line is waiting), not on the client's next bytes.
                c.pending_line = true;
                watch(fd, c);
                return;
            }
            const std::string line = c.in.substr(0, nl);
            c.in.erase(0, nl + 1);
            c.deadline_ms = now_ms + limits_.read_timeout_ms;
            c.answered = true;
            if (!c.refused.empty()) {
                c.close_after_write = true;
                answer(fd, c, control_error("refused", c.refused));
                return;
            }
            if (!answer(fd, c, handler(line, c.peer))) return;
        }
        c.pending_line = false;
        if (!c.out.empty()) return;  // watch() waits for the client to read it
        if (c.in.size() >= limits_.max_request_bytes) {
            c.close_after_write = true;
            c.in.clear();
            answer(fd, c,
                   control_error("bad_request", "request longer than " +
                                                    std::to_string(limits_.max_request_bytes) +
                                                    " bytes"));
            return;
        }
        const ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n == 0) {  // the client is done (or gone)
            drop(fd);
            return;
        }
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) break;
            drop(fd);
            return;
        }
        c.in.append(buf, static_cast<std::size_t>(n));
    }
    watch(fd, c);
    if (now_ms >= c.deadline_ms) {
        // Idle or too slow: its slot is for other clients.
        log_event(Level::debug, "", "control_timeout",
                  "pid " + std::to_string(c.peer.pid) + ": no complete request in time");
        drop(fd);
    }
}

bool ControlServer::answer(int fd, Client& c, std::string_view answer_json) {
    c.out.append(answer_json);
    c.out.push_back('\n');
    if (!flush(fd, c)) return false;
    if (c.out.empty() && c.close_after_write) {
        drop(fd);
        return false;
    }
    return true;
}

bool ControlServer::flush(int fd, Client& c) {
    while (!c.out.empty()) {
        const ssize_t n = ::send(fd, c.out.data(), c.out.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            if (errno == EINTR) continue;
            drop(fd);
            return false;
        }
        c.out.erase(0, static_cast<std::size_t>(n));
    }
    watch(fd, c);
    return true;
}

// While an answer waits to be written, or a request line waits for the next
// pass, the loop wants EPOLLOUT (writable: the client reads, or at once) and
// not EPOLLIN: bytes from a client that reads nothing would otherwise keep
// the loop awake until its deadline.
void ControlServer::watch(int fd, Client& c) {
    const bool out = !c.out.empty() || c.pending_line;
    if (out == c.watching_out) return;
    epoll_event ev{};
    ev.events = out ? EPOLLOUT : EPOLLIN;
    ev.data.fd = fd;
    if (::epoll_ctl(epoll_, EPOLL_CTL_MOD, fd, &ev) == 0)
        c.watching_out = out;
    else
        log_event(Level::warn, "", "control_epoll",
                  std::string("epoll_ctl: ") + std::strerror(errno));
}

void ControlServer::drop(int fd) {
    (void)::epoll_ctl(epoll_, EPOLL_CTL_DEL, fd, nullptr);
    ::close(fd);
    clients_.erase(fd);
    set_accepting(true);
}

}  // namespace tokenshm::refresher
