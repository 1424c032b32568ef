#include <tokenshm/shm/posix.hpp>

#include <fcntl.h>
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstring>

namespace tokenshm::shm {

std::string SysError::message() const {
    std::string m = call;
    m += '(';
    m += subject;
    m += "): ";
    m += std::strerror(err);
    return m;
}

bool SysError::is_not_found() const noexcept {
    return err == ENOENT;
}
bool SysError::is_already_exists() const noexcept {
    return err == EEXIST;
}
bool SysError::is_permission_denied() const noexcept {
    return err == EACCES || err == EPERM;
}
bool SysError::is_no_space() const noexcept {
    return err == ENOSPC;
}
bool SysError::is_lock_held() const noexcept {
    return err == EAGAIN || err == EACCES;
}
bool SysError::is_symlink() const noexcept {
    return err == ELOOP;
}
bool SysError::is_not_regular_file() const noexcept {
    return err == EISDIR || err == ENXIO;
}

Fd& Fd::operator=(Fd&& o) noexcept {
    if (this != &o) {
        if (fd_ >= 0) ::close(fd_);
        fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
}
Fd::~Fd() {
    if (fd_ >= 0) ::close(fd_);
}

Mapping& Mapping::operator=(Mapping&& o) noexcept {
    if (this != &o) {
        if (addr_ != nullptr) ::munmap(addr_, len_);
        addr_ = std::exchange(o.addr_, nullptr);
        len_ = std::exchange(o.len_, 0);
    }
    return *this;
}
Mapping::~Mapping() {
    if (addr_ != nullptr) ::munmap(addr_, len_);
}

namespace sys {
namespace {
Unexpected<SysError> fail(const char* call, int err, const std::string& subject) {
    return Unexpected<SysError>{SysError{call, err, subject}};
}
}  // namespace

SysResult<Fd> shm_open(const std::string& path, int flags, mode_t mode) {
    // open(2) of /dev/shm/<name> (where glibc's shm_open looks) rather than
    // shm_open itself, which turns EISDIR into EINVAL and documents no flags
    // beyond O_RDONLY, O_RDWR, O_CREAT, O_EXCL and O_TRUNC.
    const std::string file = "/dev/shm" + path;
    const int fd = ::open(file.c_str(), flags | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, mode);
    if (fd < 0) return fail("open", errno, file);
    return Fd(fd);
}

SysResult<Done> shm_unlink(const std::string& path) {
    if (::shm_unlink(path.c_str()) != 0) return fail("shm_unlink", errno, path);
    return Done{};
}

SysResult<struct stat> fstat(int fd, const std::string& subject) {
    struct stat st {};
    if (::fstat(fd, &st) != 0) return fail("fstat", errno, subject);
    return st;
}

SysResult<struct stat> lstat_shm(const std::string& path) {
    const std::string file = "/dev/shm" + path;
    struct stat st {};
    if (::lstat(file.c_str(), &st) != 0) return fail("lstat", errno, file);
    return st;
}

SysResult<Done> fchmod(int fd, mode_t mode, const std::string& subject) {
    if (::fchmod(fd, mode) != 0) return fail("fchmod", errno, subject);
    return Done{};
}

SysResult<Done> fchown(int fd, uid_t uid, gid_t gid, const std::string& subject) {
    if (::fchown(fd, uid, gid) != 0) return fail("fchown", errno, subject);
    return Done{};
}

SysResult<Done> posix_fallocate(int fd, off_t len, const std::string& subject) {
    int rc;
    do {
        rc = ::posix_fallocate(fd, 0, len);  // returns the error, does not set errno
    } while (rc == EINTR);
    if (rc != 0) return fail("posix_fallocate", rc, subject);
    return Done{};
}

SysResult<Mapping> mmap(int fd, std::size_t len, bool writable, const std::string& subject) {
    const int prot = writable ? (PROT_READ | PROT_WRITE) : PROT_READ;
    void* p = ::mmap(nullptr, len, prot, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) return fail("mmap", errno, subject);
    // Tokens must not end up in core dumps. Failure only loses that protection.
    (void)::madvise(p, len, MADV_DONTDUMP);
    return Mapping(p, len);
}

SysResult<Done> lock_exclusive(int fd, const std::string& subject) {
    struct flock fl {};
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    if (::fcntl(fd, F_OFD_SETLK, &fl) != 0) return fail("fcntl(F_OFD_SETLK)", errno, subject);
    return Done{};
}

SysResult<bool> write_locked_by_other(int fd, const std::string& subject) {
    struct flock fl {};
    fl.l_type = F_RDLCK;
    fl.l_whence = SEEK_SET;
    if (::fcntl(fd, F_OFD_GETLK, &fl) != 0) return fail("fcntl(F_OFD_GETLK)", errno, subject);
    return fl.l_type != F_UNLCK;
}

void futex_wake_all(const void* word) noexcept {
    (void)::syscall(SYS_futex, word, FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0);
}

SysResult<FutexWake> futex_wait(const void* word, std::uint32_t expected,
                                std::int64_t timeout_ns) noexcept {
    struct timespec ts {};
    struct timespec* tsp = nullptr;
    if (timeout_ns >= 0) {
        ts.tv_sec = static_cast<time_t>(timeout_ns / 1'000'000'000);
        ts.tv_nsec = static_cast<long>(timeout_ns % 1'000'000'000);
        tsp = &ts;
    }
    const long rc = ::syscall(SYS_futex, word, FUTEX_WAIT, expected, tsp, nullptr, 0);
    if (rc == 0 || errno == EAGAIN) return FutexWake::woken;  // EAGAIN: it had changed already
    if (errno == ETIMEDOUT) return FutexWake::timed_out;
    if (errno == EINTR) return FutexWake::interrupted;
    return Unexpected<SysError>{SysError{"futex_wait", errno, {}}};
}

std::int64_t realtime_ms() noexcept {
    struct timespec ts {};
    ::clock_gettime(CLOCK_REALTIME, &ts);
    return std::int64_t{ts.tv_sec} * 1000 + ts.tv_nsec / 1'000'000;
}

}  // namespace sys
}  // namespace tokenshm::shm
