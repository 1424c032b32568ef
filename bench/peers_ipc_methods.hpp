// The peers that cross the kernel on every read: a daemon over a Unix socket,
// a sink file, pread of a file rewritten in place, Redis over TCP and a Unix
// socket. Each value is the token's expiry (8 bytes, native order) followed by
// the token, so every reader checks expiry as tokenshm does.
#pragma once

#include "peers_harness.hpp"
#include "peers_setup.hpp"

#include <sys/types.h>

#include <string>
#include <vector>

struct redisContext;

namespace peers {

constexpr std::size_t kExpiryBytes = 8;

// The value every IPC method stores: expiry then token.
std::vector<char> value_of(std::size_t token_bytes, std::uint64_t version);
// The token in `buf` (n bytes received), checked for size and expiry.
View view_of_value(const char* buf, std::size_t n, std::size_t token_bytes) noexcept;

// unix_daemon: serve forks a daemon holding the token in a single-threaded
// poll loop (a GenServer); the writer sends it each new value over its own
// connection. A read: one request byte, the answer (4-byte length, value) back.
class DaemonServer {
  public:
    explicit DaemonServer(const Config& c);
    void publish(std::uint64_t v);

  private:
    std::size_t bytes_;
    int conn_ = -1;  // the writer's connection to the daemon
};

class DaemonReader {
  public:
    explicit DaemonReader(const Config& c);
    View read() noexcept;

  private:
    std::size_t bytes_;
    int fd_;
    std::vector<char> buf_;
};

// file: the writer writes DIR/token.tmp and renames it over DIR/token
// (Vault Agent's sink); a read is open, read, close.
class FileServer {
  public:
    explicit FileServer(const Config& c);
    void publish(std::uint64_t v);

  private:
    std::size_t bytes_;
    std::string path_, tmp_;
};

class FileReader {
  public:
    explicit FileReader(const Config& c);
    View read() noexcept;

  private:
    std::size_t bytes_;
    std::string path_;
    std::vector<char> buf_;
};

// pread: the writer rewrites DIR/token.inplace with one pwrite; a read is one
// pread on a descriptor kept open. Nothing orders the two: reads may tear.
class PreadServer {
  public:
    explicit PreadServer(const Config& c);
    void publish(std::uint64_t v);

  private:
    std::size_t bytes_;
    int fd_;
};

class PreadReader {
  public:
    explicit PreadReader(const Config& c);
    View read() noexcept;

  private:
    std::size_t bytes_;
    int fd_;
    std::vector<char> buf_;
};

// redis_tcp, redis_unix: hiredis on a kept-open connection to the caller's
// redis-server; the writer SETs the key on its own connection, a read is a
// pre-formatted GET and its reply.
redisContext* redis_connect(const Config& c);

class RedisServer {
  public:
    explicit RedisServer(const Config& c);
    RedisServer(const RedisServer&) = delete;
    RedisServer& operator=(const RedisServer&) = delete;
    ~RedisServer();
    void publish(std::uint64_t v);

  private:
    std::size_t bytes_;
    std::string key_;
    redisContext* ctx_;
};

class RedisReader {
  public:
    explicit RedisReader(const Config& c);
    View read() noexcept;

  private:
    std::size_t bytes_;
    std::string command_;  // "GET key" in the protocol, formatted once
    redisContext* ctx_;
    std::vector<char> buf_;
};

}  // namespace peers
