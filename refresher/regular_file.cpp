#include "regular_file.hpp"

#include <tokenshm/shm/posix.hpp>

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <utility>

namespace tokenshm::refresher {

namespace {

Unexpected<FileError> refuse(FileError::Kind kind, const std::string& path, std::string why,
                             int err = 0) {
    return Unexpected{FileError{kind, err, path + ": " + why}};
}

Unexpected<FileError> sys_error(const std::string& path, int err) {
    return refuse(FileError::Kind::system, path, ::strerror(err), err);
}

// "not a regular file (a FIFO)": what an operator needs to find the mistake.
std::string not_regular(mode_t mode) {
    const char* kind = S_ISDIR(mode)    ? "a directory"
                       : S_ISFIFO(mode) ? "a FIFO"
                       : S_ISCHR(mode)  ? "a character device"
                       : S_ISBLK(mode)  ? "a block device"
                       : S_ISSOCK(mode) ? "a socket"
                                        : nullptr;
    return kind == nullptr ? "not a regular file"
                           : std::string("not a regular file (") + kind + ")";
}

std::string size_text(std::size_t bytes) {
    if (bytes % (1024 * 1024) == 0) return std::to_string(bytes / (1024 * 1024)) + " MiB";
    if (bytes % 1024 == 0) return std::to_string(bytes / 1024) + " KiB";
    return std::to_string(bytes) + " bytes";
}

// The open descriptor of a file that passed the rules, and what fstat said.
struct CheckedFile {
    shm::Fd fd;
    FileFacts facts;
};

Expected<CheckedFile, FileError> open_checked(const std::string& path, const FileRules& rules) {
    int flags = O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY;
    if (!rules.follow_symlinks) flags |= O_NOFOLLOW;
    shm::Fd fd(::open(path.c_str(), flags));
    if (!fd.valid()) {
        const int err = errno;
        if (err == ELOOP && !rules.follow_symlinks)
            return refuse(FileError::Kind::not_regular, path, "is a symlink", err);
        return sys_error(path, err);
    }
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) return sys_error(path, errno);
    if (!S_ISREG(st.st_mode))
        return refuse(FileError::Kind::not_regular, path, not_regular(st.st_mode));
    const uid_t euid = ::geteuid();
    if (st.st_uid != euid && st.st_uid != 0) {
        return refuse(FileError::Kind::foreign_owner, path,
                      "owned by uid " + std::to_string(st.st_uid) + ", not by this process's uid " +
                          std::to_string(euid) + " or root; refused");
    }
    if (static_cast<std::uint64_t>(st.st_size) > rules.max_bytes)
        return refuse(FileError::Kind::too_large, path,
                      "larger than " + size_text(rules.max_bytes));
    return CheckedFile{std::move(fd),
                       FileFacts{st.st_mode, st.st_uid, static_cast<std::uint64_t>(st.st_size)}};
}

}  // namespace

Expected<FileFacts, FileError> check_regular_file(const std::string& path, const FileRules& rules) {
    auto file = open_checked(path, rules);
    if (!file) return Unexpected{std::move(file).error()};
    return file->facts;
}

Expected<WipedString, FileError> read_regular_file(const std::string& path, const FileRules& rules,
                                                   FileFacts* facts) {
    auto file = open_checked(path, rules);
    if (!file) return Unexpected{std::move(file).error()};
    WipedString out;
    out.reserve(static_cast<std::size_t>(file->facts.size) + 1);
    char buf[4096];
    // Read one byte past the limit so a file that grew since fstat is still caught.
    while (out.size() <= rules.max_bytes) {
        const ssize_t n = ::read(file->fd.get(), buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            const int err = errno;
            ::explicit_bzero(buf, sizeof buf);
            return sys_error(path, err);
        }
        if (n == 0) break;
        out.append(buf, static_cast<std::size_t>(n));
    }
    ::explicit_bzero(buf, sizeof buf);
    if (out.size() > rules.max_bytes)
        return refuse(FileError::Kind::too_large, path,
                      "larger than " + size_text(rules.max_bytes));
    if (facts != nullptr) *facts = file->facts;
    return out;
}

}  // namespace tokenshm::refresher
