// What every peers_bench method shares: its configuration, the notes `serve`
// leaves in DIR for `read`, the shared memory region of the in-memory
// methods, and the cleanup that removes what a process created on any exit.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace peers {

struct Config {
    std::string method;
    std::size_t token_bytes = 1024;
    std::string dir;  // serve's directory: notes, files, sockets
    int redis_port = -1;
    std::string redis_socket;
};

// DIR/name holds `text` (written by serve, read by read).
void write_note(const std::string& dir, const char* name, const std::string& text);
std::string read_note(const std::string& dir, const char* name);

// What this process created and must remove at exit, also on error. Forked
// children inherit the list but never act on it (owner pid check).
namespace cleanup {
void add_shm(const std::string& name);
void add_path(const std::string& path);  // a file or an empty directory
void add_child(pid_t pid);               // SIGTERM, then reaped
void forget_child(pid_t pid);            // reaped by its owner already
void run() noexcept;                     // also registered with atexit
}  // namespace cleanup

// A POSIX shared memory region: created by serve (and named in DIR/shm), or
// opened read-write by a reader (locks must be written to be taken).
class SharedRegion {
  public:
    static SharedRegion create(const Config& c, std::size_t bytes);
    static SharedRegion open(const Config& c, std::size_t bytes);
    SharedRegion(SharedRegion&& o) noexcept : addr_(o.addr_), bytes_(o.bytes_) {
        o.addr_ = nullptr;
    }
    SharedRegion(const SharedRegion&) = delete;
    SharedRegion& operator=(const SharedRegion&) = delete;
    ~SharedRegion();
    void* addr() const noexcept { return addr_; }

  private:
    SharedRegion(void* a, std::size_t n) : addr_(a), bytes_(n) {}
    void* addr_;
    std::size_t bytes_;
};

}  // namespace peers
