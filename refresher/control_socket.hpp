// The control socket's transport (SPEC.md, "The control socket"): a Unix
// stream socket the refresher listens on, peers checked with SO_PEERCRED, one
// JSON request per line and one answer per line. Everything is non-blocking
// and runs inside the daemon's single loop: wait_fd() is an epoll fd that is
// readable when the listening socket or a client needs service, and service()
// does that work without ever blocking. What a request means is the daemon's
// (control_ops.cpp); this file only moves lines.
#pragma once

#include "error.hpp"

#include <tokenshm/expected.hpp>

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace tokenshm::refresher {

struct ControlLimits {
    std::size_t max_request_bytes = 4096;  // one line, newline included
    std::int64_t read_timeout_ms = 5000;   // a client silent this long is dropped
    std::size_t max_clients = 32;          // more: see ControlServer::accept_all
};

// Who is on the other end, from SO_PEERCRED and SO_PEERGROUPS: both are the
// credentials the peer connected with, kept by the kernel with the socket
// (unlike /proc/<pid>, whose pid may have exited and been reused).
struct PeerCred {
    pid_t pid = 0;
    uid_t uid = 0;
    gid_t gid = 0;
    std::vector<gid_t> groups;  // supplementary groups
};

// Why `peer` may not use the socket, or nullopt when it may: the refresher's
// own uid, root, or a member of `group` (primary or supplementary).
std::optional<std::string> refuse_reason(const PeerCred& peer, uid_t self,
                                         std::optional<gid_t> group);

// One answer (a JSON object, no newline) for one request line.
using ControlHandler = std::function<std::string(std::string_view line, const PeerCred& peer)>;

class ControlServer {
  public:
    // Binds `path` with the segment's mode (0600, or 0660 when the segment is
    // 0640 so the group may connect) and group. A socket already at `path`
    // that nobody answers on (a killed refresher's) is replaced; one that
    // answers, or anything that is not a socket, is an error.
    static Expected<std::unique_ptr<ControlServer>, RefresherError> open(const std::string& path,
                                                                         mode_t segment_mode,
                                                                         std::optional<gid_t> group,
                                                                         ControlLimits limits = {});
    // Closes every connection and removes the socket, if it is still ours.
    ~ControlServer();
    ControlServer(const ControlServer&) = delete;
    ControlServer& operator=(const ControlServer&) = delete;

    // Readable when there is work for service(), or when a fd given to
    // add_wake_fd is: the daemon passes it to Transport::poll as its wake fd.
    int wait_fd() const noexcept { return epoll_; }
    // Also wake the loop when `fd` is readable (the signalfd).
    Expected<Done, RefresherError> add_wake_fd(int fd);
    // Also wake it when one of `fds` is readable (a watch's sockets: they
    // change as it reconnects); those of the last call that are not in
    // `fds` no longer wake it.
    void set_watched_fds(const std::vector<int>& fds);
    // Accepts, reads, answers and times out clients; never blocks.
    void service(std::int64_t now_mono_ms, const ControlHandler& handler);
    std::size_t clients() const noexcept { return clients_.size(); }
    const std::string& path() const noexcept { return path_; }

  private:
    std::vector<int> watched_;  // set_watched_fds()
    struct Client {
        PeerCred peer;
        std::string in;   // bytes of the request line so far
        std::string out;  // answer bytes not yet written
        std::int64_t deadline_ms = 0;
        bool close_after_write = false;
        std::string refused;        // why SO_PEERCRED refused it: its request gets that answer
        bool pending_line = false;  // a whole request line waits for the next pass
        bool watching_out = false;  // registered for EPOLLOUT instead of EPOLLIN
        std::uint64_t seq = 0;      // accept order: the lowest is evicted when full
        bool answered = false;      // has had a request answered
    };
    ControlServer(std::string path, int listen_fd, int epoll_fd, ControlLimits limits);
    void accept_all(std::int64_t now_ms);
    void admit(int fd, std::int64_t now_ms);
    void read_client(int fd, Client& c, std::int64_t now_ms, const ControlHandler& handler);
    // Queues `answer` and a newline; true while the client stays open.
    bool answer(int fd, Client& c, std::string_view answer_json);
    bool flush(int fd, Client& c);
    void drop(int fd);
    // Registers the events `c` waits for now (see control_socket.cpp).
    void watch(int fd, Client& c);
    // The client connected longest among those idle between requests (one
    // answered, nothing pending): the one to drop to make room for a new one.
    std::optional<std::pair<int, const Client*>> evictable() const;
    // Stops accepting while max_clients are connected and none is evictable
    // (the rest wait in the backlog), so a full house does not keep the loop awake.
    void set_accepting(bool on);

    std::string path_;
    int listen_ = -1;
    int epoll_ = -1;
    dev_t dev_ = 0;  // of the socket file we bound: removed at exit only if still there
    ino_t ino_ = 0;
    ControlLimits limits_;
    uid_t self_ = 0;
    std::optional<gid_t> group_;
    std::map<int, Client> clients_;
    std::uint64_t next_seq_ = 0;
    bool accepting_ = true;
};

// {"ok":false,"error":WORD,"message":MESSAGE}
std::string control_error(std::string_view word, std::string_view message);

}  // namespace tokenshm::refresher
