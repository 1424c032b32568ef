// Thin wrappers over the syscalls the segment needs: each names the call and
// turns errno into a value, so no caller inspects errno or calls perror.
#pragma once

#include <tokenshm/expected.hpp>

#include <sys/stat.h>
#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace tokenshm::shm {

// A failed syscall: errno is wrapped here once, and callers ask the named
// predicates below instead of comparing errno values.
struct SysError {
    const char* call;  // "shm_open", "fstat", ...
    int err;           // errno
    std::string subject;
    // "shm_open(/tokenshm): Permission denied"
    std::string message() const;

    bool is_not_found() const noexcept;          // ENOENT
    bool is_already_exists() const noexcept;     // EEXIST
    bool is_permission_denied() const noexcept;  // EACCES, EPERM
    bool is_no_space() const noexcept;           // ENOSPC
    // A lock another open file description holds (EAGAIN, EACCES from F_OFD_SETLK).
    bool is_lock_held() const noexcept;
    // open() met a final symlink under O_NOFOLLOW (ELOOP).
    bool is_symlink() const noexcept;
    // open() met something that is not a regular file: a directory (EISDIR),
    // a socket or a device without its driver (ENXIO).
    bool is_not_regular_file() const noexcept;
};

template <class T>
using SysResult = Expected<T, SysError>;
using tokenshm::Done;

// An owned file descriptor.
class Fd {
  public:
    Fd() = default;
    explicit Fd(int fd) noexcept : fd_(fd) {}
    Fd(Fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
    Fd& operator=(Fd&& o) noexcept;
    Fd(const Fd&) = delete;
    Fd& operator=(const Fd&) = delete;
    ~Fd();
    int get() const noexcept { return fd_; }
    bool valid() const noexcept { return fd_ >= 0; }

  private:
    int fd_ = -1;
};

// An owned mapping.
class Mapping {
  public:
    Mapping() = default;
    Mapping(void* addr, std::size_t len) noexcept : addr_(addr), len_(len) {}
    Mapping(Mapping&& o) noexcept
        : addr_(std::exchange(o.addr_, nullptr)), len_(std::exchange(o.len_, 0)) {}
    Mapping& operator=(Mapping&& o) noexcept;
    Mapping(const Mapping&) = delete;
    Mapping& operator=(const Mapping&) = delete;
    ~Mapping();
    void* addr() const noexcept { return addr_; }
    std::size_t size() const noexcept { return len_; }

  private:
    void* addr_ = nullptr;
    std::size_t len_ = 0;
};

namespace sys {
// Opens the segment "/<name>" as /dev/shm/<name> with O_NOFOLLOW | O_NONBLOCK
// | O_CLOEXEC added: a symlink planted at the name fails (is_symlink()) and a
// FIFO opens at once instead of blocking until some writer appears. Callers
// fstat the result before believing it is a regular file.
SysResult<Fd> shm_open(const std::string& path, int flags, mode_t mode);
SysResult<Done> shm_unlink(const std::string& path);
SysResult<struct stat> fstat(int fd, const std::string& subject);
// lstat of the segment "/<name>", i.e. of /dev/shm/<name>.
SysResult<struct stat> lstat_shm(const std::string& path);
SysResult<Done> fchmod(int fd, mode_t mode, const std::string& subject);
SysResult<Done> fchown(int fd, uid_t uid, gid_t gid, const std::string& subject);
SysResult<Done> posix_fallocate(int fd, off_t len, const std::string& subject);
SysResult<Mapping> mmap(int fd, std::size_t len, bool writable, const std::string& subject);
// Takes an exclusive open-file-description lock on the whole file without
// waiting; returns the errno (EAGAIN) when another description holds it.
SysResult<Done> lock_exclusive(int fd, const std::string& subject);
// True when some open file description holds a write lock on the file. Takes
// no lock itself, so probing never disturbs a starting writer.
SysResult<bool> write_locked_by_other(int fd, const std::string& subject);
// FUTEX_WAKE on a word in a shared mapping (all waiters).
void futex_wake_all(const void* word) noexcept;
// How a FUTEX_WAIT ended: woken (or the value already differed), the timeout
// passed, or a signal interrupted it. Any other failure is a SysError.
enum class FutexWake { woken, timed_out, interrupted };
// FUTEX_WAIT while *word == expected, at most timeout_ns (negative: forever).
SysResult<FutexWake> futex_wait(const void* word, std::uint32_t expected,
                                std::int64_t timeout_ns) noexcept;
// Unix time in milliseconds from CLOCK_REALTIME.
std::int64_t realtime_ms() noexcept;
}  // namespace sys

}  // namespace tokenshm::shm
