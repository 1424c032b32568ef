#include "peers_ipc_methods.hpp"

#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace peers {

std::vector<char> value_of(std::size_t token_bytes, std::uint64_t version) {
    std::vector<char> v(kExpiryBytes + token_bytes);
    const std::int64_t exp = expires_in_an_hour();
    std::memcpy(v.data(), &exp, kExpiryBytes);
    fill_token(v.data() + kExpiryBytes, token_bytes, version);
    return v;
}

View view_of_value(const char* buf, std::size_t n, std::size_t token_bytes) noexcept {
    if (n != kExpiryBytes + token_bytes) return View{nullptr, 0, Status::error};
    std::int64_t exp;
    std::memcpy(&exp, buf, kExpiryBytes);
    View v{buf + kExpiryBytes, static_cast<std::uint32_t>(token_bytes)};
    if (expired(exp)) v.status = Status::expired;
    return v;
}

namespace {

void write_all(int fd, const char* p, std::size_t n, const char* what) {
    while (n > 0) {
        const ssize_t w = ::write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) die(sys_error(what));
        p += w;
        n -= static_cast<std::size_t>(w);
    }
}

// Exactly n bytes; false at end of stream.
bool recv_all(int fd, char* p, std::size_t n) {
    while (n > 0) {
        const ssize_t r = ::recv(fd, p, n, MSG_WAITALL);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) die(sys_error("recv"));
        if (r == 0) return false;
        p += r;
        n -= static_cast<std::size_t>(r);
    }
    return true;
}

sockaddr_un unix_address(const std::string& path) {
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    if (path.size() >= sizeof a.sun_path) die("socket path too long: " + path);
    std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
    return a;
}

int connect_unix(const std::string& path) {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) die(sys_error("socket"));
    const sockaddr_un a = unix_address(path);
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&a), sizeof a) != 0)
        die(sys_error("connect " + path));
    return fd;
}

// The daemon's state: the answer to GET, ready to send: length, value.
struct DaemonState {
    std::vector<char> answer;
};

// One message from a client: 'G' (answer it) or 'S' + length + value (keep
// it). False when the client closed.
bool serve_message(int fd, DaemonState& st) {
    char op;
    if (!recv_all(fd, &op, 1)) return false;
    if (op == 'G') {
        if (::send(fd, st.answer.data(), st.answer.size(), MSG_NOSIGNAL) < 0) return false;
        return true;
    }
    std::uint32_t len;
    if (op != 'S' || !recv_all(fd, reinterpret_cast<char*>(&len), 4)) return false;
    std::vector<char> a(4 + len);
    std::memcpy(a.data(), &len, 4);
    if (!recv_all(fd, a.data() + 4, len)) return false;
    st.answer.swap(a);
    return true;
}

// The daemon process: a single-threaded poll loop until SIGTERM.
[[noreturn]] void run_daemon(int listener, std::size_t bytes) {
    ::signal(SIGTERM, SIG_DFL);  // serve's and run's handlers only set a flag
    ::signal(SIGINT, SIG_DFL);
    DaemonState st;
    const std::vector<char> v = value_of(bytes, 0);
    st.answer.resize(4 + v.size());
    const auto len = static_cast<std::uint32_t>(v.size());
    std::memcpy(st.answer.data(), &len, 4);
    std::memcpy(st.answer.data() + 4, v.data(), v.size());
    std::vector<pollfd> fds{{listener, POLLIN, 0}};
    for (;;) {
        if (::poll(fds.data(), fds.size(), -1) < 0) {
            if (errno == EINTR) continue;
            die(sys_error("daemon: poll"));
        }
        for (std::size_t i = fds.size(); i-- > 1;) {
            if (fds[i].revents == 0) continue;
            if (!serve_message(fds[i].fd, st)) {
                ::close(fds[i].fd);
                fds.erase(fds.begin() + static_cast<std::ptrdiff_t>(i));
            }
        }
        if (fds[0].revents & POLLIN) {
            const int c = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
            if (c < 0 && errno != EINTR) die(sys_error("daemon: accept4"));
            if (c >= 0) fds.push_back({c, POLLIN, 0});
        }
    }
}

}  // namespace

DaemonServer::DaemonServer(const Config& c) : bytes_(c.token_bytes) {
    const std::string path = c.dir + "/daemon.sock";
    const int l = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (l < 0) die(sys_error("socket"));
    const sockaddr_un a = unix_address(path);
    if (::bind(l, reinterpret_cast<const sockaddr*>(&a), sizeof a) != 0)
        die(sys_error("bind " + path));
    cleanup::add_path(path);
    if (::listen(l, 128) != 0) die(sys_error("listen " + path));
    std::fflush(nullptr);
    const pid_t pid = ::fork();
    if (pid < 0) die(sys_error("fork"));
    if (pid == 0) run_daemon(l, bytes_);
    cleanup::add_child(pid);
    if (::close(l) != 0) die(sys_error("close " + path));
    conn_ = connect_unix(path);
}

void DaemonServer::publish(std::uint64_t v) {
    const std::vector<char> value = value_of(bytes_, v);
    std::vector<char> msg(5 + value.size());
    msg[0] = 'S';
    const auto len = static_cast<std::uint32_t>(value.size());
    std::memcpy(msg.data() + 1, &len, 4);
    std::memcpy(msg.data() + 5, value.data(), value.size());
    write_all(conn_, msg.data(), msg.size(), "daemon: send");
}

DaemonReader::DaemonReader(const Config& c)
    : bytes_(c.token_bytes),
      fd_(connect_unix(c.dir + "/daemon.sock")),
      buf_(4 + kExpiryBytes + c.token_bytes) {}

View DaemonReader::read() noexcept {
    const char op = 'G';
    if (::send(fd_, &op, 1, MSG_NOSIGNAL) != 1) die(sys_error("send to the daemon"));
    // Every answer has the same size: one recv with MSG_WAITALL takes it.
    if (!recv_all(fd_, buf_.data(), buf_.size())) die("the daemon closed the connection");
    std::uint32_t len;
    std::memcpy(&len, buf_.data(), 4);
    return view_of_value(buf_.data() + 4, len, bytes_);
}

FileServer::FileServer(const Config& c)
    : bytes_(c.token_bytes), path_(c.dir + "/token"), tmp_(c.dir + "/token.tmp") {
    cleanup::add_path(path_);
    cleanup::add_path(tmp_);
}

void FileServer::publish(std::uint64_t v) {
    const std::vector<char> value = value_of(bytes_, v);
    const int fd = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) die(sys_error("open " + tmp_));
    write_all(fd, value.data(), value.size(), "write token.tmp");
    if (::close(fd) != 0) die(sys_error("close " + tmp_));
    if (::rename(tmp_.c_str(), path_.c_str()) != 0) die(sys_error("rename " + tmp_));
}

FileReader::FileReader(const Config& c)
    : bytes_(c.token_bytes), path_(c.dir + "/token"), buf_(kExpiryBytes + c.token_bytes + 1) {}

View FileReader::read() noexcept {
    const int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) die(sys_error("open " + path_));
    // One read returns the whole (replaced, never partial) file: the buffer
    // holds one byte more than the value, so a full buffer means a wrong size.
    const ssize_t n = ::read(fd, buf_.data(), buf_.size());
    if (n < 0) die(sys_error("read " + path_));
    if (::close(fd) != 0) die(sys_error("close " + path_));
    return view_of_value(buf_.data(), static_cast<std::size_t>(n), bytes_);
}

PreadServer::PreadServer(const Config& c) : bytes_(c.token_bytes) {
    const std::string path = c.dir + "/token.inplace";
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd_ < 0) die(sys_error("open " + path));
    cleanup::add_path(path);
}

void PreadServer::publish(std::uint64_t v) {
    const std::vector<char> value = value_of(bytes_, v);
    const ssize_t n = ::pwrite(fd_, value.data(), value.size(), 0);
    if (n != static_cast<ssize_t>(value.size())) die(sys_error("pwrite token.inplace"));
}

PreadReader::PreadReader(const Config& c)
    : bytes_(c.token_bytes), buf_(kExpiryBytes + c.token_bytes + 1) {
    const std::string path = c.dir + "/token.inplace";
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) die(sys_error("open " + path));
}

View PreadReader::read() noexcept {
    const ssize_t n = ::pread(fd_, buf_.data(), buf_.size(), 0);
    if (n < 0) die(sys_error("pread token.inplace"));
    return view_of_value(buf_.data(), static_cast<std::size_t>(n), bytes_);
}

redisContext* redis_connect(const Config& c) {
    const bool tcp = c.method == "redis_tcp";
    if (tcp && c.redis_port < 0) die(c.method + " needs --redis-port");
    if (!tcp && c.redis_socket.empty()) die(c.method + " needs --redis-socket");
    redisContext* ctx =
        tcp ? redisConnect("127.0.0.1", c.redis_port) : redisConnectUnix(c.redis_socket.c_str());
    if (ctx == nullptr) die("redis: cannot allocate a context");
    if (ctx->err != 0) die(std::string("redis: connect: ") + ctx->errstr);
    return ctx;
}

RedisServer::RedisServer(const Config& c)
    : bytes_(c.token_bytes),
      key_("peers:" + std::to_string(::getpid()) + ":token"),
      ctx_(redis_connect(c)) {
    write_note(c.dir, "redis_key", key_);
}

RedisServer::~RedisServer() {
    if (auto* r = static_cast<redisReply*>(redisCommand(ctx_, "DEL %s", key_.c_str())))
        freeReplyObject(r);
    redisFree(ctx_);
}

void RedisServer::publish(std::uint64_t v) {
    const std::vector<char> value = value_of(bytes_, v);
    auto* r = static_cast<redisReply*>(
        redisCommand(ctx_, "SET %s %b", key_.c_str(), value.data(), value.size()));
    if (r == nullptr) die(std::string("redis: SET: ") + ctx_->errstr);
    const bool ok = r->type == REDIS_REPLY_STATUS;
    freeReplyObject(r);
    if (!ok) die("redis: SET: unexpected reply");
}

RedisReader::RedisReader(const Config& c)
    : bytes_(c.token_bytes), ctx_(redis_connect(c)), buf_(kExpiryBytes + c.token_bytes) {
    const std::string key = read_note(c.dir, "redis_key");
    command_ = "*2\r\n$3\r\nGET\r\n$" + std::to_string(key.size()) + "\r\n" + key + "\r\n";
}

View RedisReader::read() noexcept {
    if (redisAppendFormattedCommand(ctx_, command_.data(), command_.size()) != REDIS_OK)
        die(std::string("redis: GET: ") + ctx_->errstr);
    void* reply = nullptr;
    if (redisGetReply(ctx_, &reply) != REDIS_OK) die(std::string("redis: GET: ") + ctx_->errstr);
    auto* r = static_cast<redisReply*>(reply);
    View v{nullptr, 0, Status::error};
    if (r->type == REDIS_REPLY_STRING && r->len == buf_.size()) {
        std::memcpy(buf_.data(), r->str, buf_.size());
        v = view_of_value(buf_.data(), buf_.size(), bytes_);
    }
    freeReplyObject(r);
    return v;
}

}  // namespace peers
