#include "state_store.hpp"

#include "log.hpp"

#include <tokenshm/layout.h>
#include <tokenshm/shm/segment.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <utility>

namespace tokenshm::refresher {

// ---------------------------------------------------------------- PosixFileSystem

namespace {

Unexpected<FsError> fail(const char* call, int err, std::string subject) {
    return Unexpected<FsError>{FsError{call, err, std::move(subject)}};
}

}  // namespace

FsResult<int> PosixFileSystem::open(const std::string& path, int flags, mode_t mode) {
    int fd;
    do {
        fd = ::open(path.c_str(), flags | O_CLOEXEC, mode);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) return fail("open", errno, path);
    return fd;
}

FsResult<int> PosixFileSystem::open_directory(const std::string& path) {
    int fd;
    do {
        fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) return fail("open", errno, path);
    return fd;
}

FsResult<Done> PosixFileSystem::close(int fd, const std::string& path) {
    // Never retried: on Linux the descriptor is gone even when close() fails,
    // and EINTR only means the flush was interrupted (callers fsync first).
    if (::close(fd) != 0 && errno != EINTR) return fail("close", errno, path);
    return Done{};
}

FsResult<Done> PosixFileSystem::write_all(int fd, std::string_view bytes, const std::string& path) {
    while (!bytes.empty()) {
        const ssize_t n = ::write(fd, bytes.data(), bytes.size());
        if (n < 0) {
            if (errno == EINTR) continue;
            return fail("write", errno, path);
        }
        if (n == 0) return fail("write", EIO, path);  // no progress, no errno: give up
        bytes.remove_prefix(static_cast<std::size_t>(n));
    }
    return Done{};
}

FsResult<Secret> PosixFileSystem::read_all(int fd, std::size_t max_bytes, const std::string& path) {
    // Sized past the small-string buffer so moving it into the Secret hands
    // over the allocation instead of leaving an unwiped copy behind.
    std::string buf;
    buf.reserve(std::max<std::size_t>(max_bytes, 32));
    buf.resize(max_bytes);
    std::size_t got = 0;
    while (got < max_bytes) {
        const ssize_t n = ::read(fd, buf.data() + got, max_bytes - got);
        if (n < 0) {
            if (errno == EINTR) continue;
            const int err = errno;
            Secret wipe_on_return(std::move(buf));
            return fail("read", err, path);
        }
        if (n == 0) break;
        got += static_cast<std::size_t>(n);
    }
    buf.resize(got);
    return Secret(std::move(buf));
}

FsResult<Done> PosixFileSystem::fsync(int fd, const std::string& path) {
    int rc;
    do {
        rc = ::fsync(fd);
    } while (rc != 0 && errno == EINTR);
    if (rc != 0) return fail("fsync", errno, path);
    return Done{};
}

FsResult<Done> PosixFileSystem::fchmod(int fd, mode_t mode, const std::string& path) {
    if (::fchmod(fd, mode) != 0) return fail("fchmod", errno, path);
    return Done{};
}

FsResult<struct stat> PosixFileSystem::fstat(int fd, const std::string& path) {
    struct stat st {};
    if (::fstat(fd, &st) != 0) return fail("fstat", errno, path);
    return st;
}

FsResult<struct stat> PosixFileSystem::stat(const std::string& path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) return fail("stat", errno, path);
    return st;
}

FsResult<Done> PosixFileSystem::chmod(const std::string& path, mode_t mode) {
    if (::chmod(path.c_str(), mode) != 0) return fail("chmod", errno, path);
    return Done{};
}

FsResult<Done> PosixFileSystem::mkdir(const std::string& path, mode_t mode) {
    if (::mkdir(path.c_str(), mode) != 0) return fail("mkdir", errno, path);
    return Done{};
}

FsResult<Done> PosixFileSystem::rename(const std::string& from, const std::string& to) {
    if (::rename(from.c_str(), to.c_str()) != 0) return fail("rename", errno, from + " -> " + to);
    return Done{};
}

FsResult<Done> PosixFileSystem::unlink(const std::string& path) {
    if (::unlink(path.c_str()) != 0) return fail("unlink", errno, path);
    return Done{};
}

// ---------------------------------------------------------------- helpers

namespace {

// Every state store error is a runtime error: the directory or a file is
// unusable. (main reports a missing refresh token under --check-config as a
// configuration error.)
Unexpected<RefresherError> state_error(std::string message) {
    return Unexpected{RefresherError::runtime_error(std::move(message))};
}

constexpr std::string_view token_suffix = ".refresh_token";
constexpr std::string_view temp_suffix = ".tmp";

std::string octal_mode(mode_t mode) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "%04o", static_cast<unsigned>(mode & 07777));
    return buf;
}

std::string invalid_name(std::string_view name) {
    return "credential name " + quote(name) + " is not " + std::string(shm::kCredentialNameRule);
}

// A Secret holding a + b, built so no unwiped copy of the bytes is left behind.
Secret secret_of(std::string_view a, std::string_view b = {}) {
    std::string s;
    s.reserve(std::max<std::size_t>(a.size() + b.size(), 32));
    s.append(a);
    s.append(b);
    return Secret(std::move(s));
}

// Whether `token` can be a refresh token; if not, why. `what` names where it
// came from; the token itself never appears.
Expected<Done, RefresherError> check_refresh_token(std::string_view token,
                                                   const std::string& what) {
    if (token.empty()) return state_error(what + " is empty");
    if (token.size() > StateStore::max_token_bytes)
        return state_error(what + " is larger than " + std::to_string(StateStore::max_token_bytes) +
                           " bytes");
    for (const char c : token) {
        const auto u = static_cast<unsigned char>(c);
        if (u < 0x20 || u == 0x7f)
            return state_error(what +
                               " contains a NUL or control character (a refresh token is one "
                               "line of printable text)");
    }
    return Done{};
}

// Releases a descriptor on paths that are already reporting another error.
class OpenFd {
  public:
    OpenFd(FileSystem& fs, int fd, std::string path) : fs_(fs), fd_(fd), path_(std::move(path)) {}
    OpenFd(const OpenFd&) = delete;
    OpenFd& operator=(const OpenFd&) = delete;
    ~OpenFd() {
        // Only reached on error paths; the error being returned is the one that matters.
        if (fd_ >= 0) (void)fs_.close(fd_, path_);
    }
    int get() const noexcept { return fd_; }
    FsResult<Done> close() { return fs_.close(std::exchange(fd_, -1), path_); }

  private:
    FileSystem& fs_;
    int fd_;
    std::string path_;
};

void warn_to(const StateWarningSink& sink, std::string_view cred, std::string_view message) {
    if (sink) {
        sink(cred, message);
    } else {
        log_event(Level::warn, cred, "state_file_mode", message);
    }
}

// Reads and validates one refresh token file. nullopt when it does not exist.
Expected<std::optional<Secret>, RefresherError> read_token_file(FileSystem& fs,
                                                                const std::string& path,
                                                                int extra_flags,
                                                                const StateWarningSink& warn,
                                                                std::string_view cred) {
    // O_NONBLOCK: a FIFO put in the file's place must not hang the refresher.
    auto opened = fs.open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | extra_flags, 0);
    if (!opened) {
        if (opened.error().err == ENOENT) return std::optional<Secret>{};
        return state_error(opened.error().message());
    }
    OpenFd fd(fs, *opened, path);

    auto st = fs.fstat(fd.get(), path);
    if (!st) return state_error(st.error().message());
    if (!S_ISREG(st->st_mode)) return state_error(path + " is not a regular file");
    // A trailing newline is allowed on top of the maximum.
    if (static_cast<std::uintmax_t>(st->st_size) > StateStore::max_token_bytes + 1)
        return state_error(path + " is larger than " + std::to_string(StateStore::max_token_bytes) +
                           " bytes");

    auto raw = fs.read_all(fd.get(), StateStore::max_token_bytes + 2, path);
    if (!raw) return state_error(raw.error().message());
    if (auto closed = fd.close(); !closed)
        warn_to(warn, cred, closed.error().message() + " (ignored: the file was read completely)");

    std::string_view token = raw->reveal();
    if (!token.empty() && token.back() == '\n') token.remove_suffix(1);
    if (auto ok = check_refresh_token(token, path); !ok) return Unexpected{ok.error()};

    if ((st->st_mode & 077) != 0)
        warn_to(warn, cred,
                path + ": mode " + octal_mode(st->st_mode) +
                    " allows group or other access to a refresh token (expected 0600)");
    return std::optional<Secret>{secret_of(token)};
}

std::string parent_of(const std::string& dir) {
    const auto slash = dir.find_last_of('/');
    if (slash == std::string::npos) return ".";
    if (slash == 0) return "/";
    return dir.substr(0, slash);
}

}  // namespace

// ---------------------------------------------------------------- StateStore

StateStore::StateStore(FileSystem& fs, std::string dir, StateWarningSink warn)
    : fs_(fs), dir_(std::move(dir)), warn_(std::move(warn)) {
    while (dir_.size() > 1 && dir_.back() == '/')
        dir_.pop_back();
}

std::string StateStore::token_path(std::string_view credential_name) const {
    std::string p = dir_;
    if (p != "/") p += '/';
    p += credential_name;
    p += token_suffix;
    return p;
}

Expected<Done, RefresherError> StateStore::prepare() {
    if (dir_.empty()) return state_error(std::string("state_dir is empty"));

    bool created = false;
    auto st = fs_.stat(dir_);
    if (!st && st.error().err == ENOENT) {
        if (auto made = fs_.mkdir(dir_, 0700); !made) {
            if (made.error().err == ENOENT)
                return state_error("state_dir " + dir_ + ": its parent directory " +
                                   parent_of(dir_) + " does not exist (" + made.error().message() +
                                   ")");
            // EEXIST: created meanwhile (another refresher or `tokenshm login`); check it below.
            if (made.error().err != EEXIST)
                return state_error("state_dir: " + made.error().message());
        } else {
            created = true;
        }
        st = fs_.stat(dir_);
    }
    if (!st) return state_error("state_dir: " + st.error().message());
    if (!S_ISDIR(st->st_mode)) return state_error("state_dir " + dir_ + " is not a directory");
    const uid_t euid = ::geteuid();
    if (st->st_uid != euid)
        return state_error("state_dir " + dir_ + " is owned by uid " + std::to_string(st->st_uid) +
                           ", but the refresher runs as uid " + std::to_string(euid));

    const mode_t perm = st->st_mode & 07777;
    if (perm != 0700) {
        if (auto changed = fs_.chmod(dir_, 0700); !changed)
            return state_error("state_dir: " + changed.error().message());
        // A directory we just made only differs by umask; say nothing about it.
        if (!created)
            warn_to(warn_, {},
                    "state_dir " + dir_ + ": mode " + octal_mode(perm) +
                        ((perm & 077) != 0 ? " allowed group or other access" : " was unusual") +
                        "; changed to 0700");
    }
    return Done{};
}

Expected<std::optional<Secret>, RefresherError> StateStore::load(std::string_view credential_name) {
    if (!shm::valid_credential_name(credential_name))
        return state_error(invalid_name(credential_name));
    return read_token_file(fs_, token_path(credential_name), O_NOFOLLOW, warn_, credential_name);
}

Expected<Done, RefresherError> StateStore::save(std::string_view credential_name,
                                                const Secret& refresh_token) {
    if (!shm::valid_credential_name(credential_name))
        return state_error(invalid_name(credential_name));
    const std::string name(credential_name);
    const std::string final_path = token_path(name);
    const std::string temp_path = final_path + std::string(temp_suffix);
    const std::string context = "saving the refresh token of " + name + ": ";

    // Refuse what load() would refuse: persisting it would strand the next start.
    if (auto ok = check_refresh_token(refresh_token.reveal(), "the new refresh token"); !ok)
        return state_error(context + ok.error().message + "; " + final_path + " is unchanged");

    // Before the rename: remove the temp file, report the failed step.
    auto failed = [&](const FsError& e, std::optional<FsError> close_error = std::nullopt) {
        std::string msg = context + e.message();
        if (close_error) msg += "; also " + close_error->message();
        if (auto removed = fs_.unlink(temp_path); !removed && removed.error().err != ENOENT)
            msg += "; cleaning up: " + removed.error().message();
        msg += "; " + final_path + " is unchanged";
        return state_error(std::move(msg));
    };

    auto opened = fs_.open(temp_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (!opened) return failed(opened.error());
    const int fd = *opened;
    auto abandon = [&](const FsError& e) {
        auto closed = fs_.close(fd, temp_path);
        return failed(e, closed ? std::nullopt : std::optional<FsError>(closed.error()));
    };
    // The umask, or a leftover temp file from a crash, may have left other bits.
    if (auto r = fs_.fchmod(fd, 0600, temp_path); !r) return abandon(r.error());
    const Secret line = secret_of(refresh_token.reveal(), "\n");
    if (auto r = fs_.write_all(fd, line.reveal(), temp_path); !r) return abandon(r.error());
    if (auto r = fs_.fsync(fd, temp_path); !r) return abandon(r.error());
    if (auto r = fs_.close(fd, temp_path); !r) return failed(r.error());
    if (auto r = fs_.rename(temp_path, final_path); !r) return failed(r.error());

    // After the rename the new token is the file's content, but until the
    // directory is synced a crash may bring the old one back.
    auto not_durable = [&](const FsError& e) {
        return state_error(context + e.message() + "; " + final_path +
                           " holds the new refresh token but may not survive a crash");
    };
    auto dir_fd = fs_.open_directory(dir_);
    if (!dir_fd) return not_durable(dir_fd.error());
    auto synced = fs_.fsync(*dir_fd, dir_);
    auto closed = fs_.close(*dir_fd, dir_);
    if (!synced) return not_durable(synced.error());
    if (!closed)
        warn_to(warn_, name,
                closed.error().message() + " (ignored: the directory was already synced)");
    return Done{};
}

Expected<bool, RefresherError> StateStore::set_aside(std::string_view credential_name) {
    if (!shm::valid_credential_name(credential_name))
        return state_error(invalid_name(credential_name));
    const std::string from = token_path(credential_name);
    const std::string to = from + ".rejected";
    if (auto r = fs_.rename(from, to); !r) {
        if (r.error().err == ENOENT) return false;
        return state_error("setting aside a rejected refresh token: " + r.error().message());
    }
    auto dir_fd = fs_.open_directory(dir_);
    if (!dir_fd)
        return state_error("setting aside a rejected refresh token: " + dir_fd.error().message());
    auto synced = fs_.fsync(*dir_fd, dir_);
    (void)fs_.close(*dir_fd, dir_);
    if (!synced)
        return state_error("setting aside a rejected refresh token: " + synced.error().message());
    return true;
}

Expected<Secret, RefresherError> StateStore::read_secret_file(FileSystem& fs,
                                                              const std::string& path,
                                                              const StateWarningSink& warn,
                                                              std::string_view cred) {
    auto read = read_token_file(fs, path, 0, warn, cred);
    if (!read) return Unexpected{std::move(read).error()};
    if (!*read) return state_error(FsError{"open", ENOENT, path}.message());
    return std::move(**read);
}

Expected<Secret, RefresherError> initial_refresh_token(
    StateStore& store, FileSystem& fs, std::string_view name,
    const std::optional<std::string>& refresh_token_file) {
    const std::string prefix = "credentials: " + std::string(name) + ": ";
    auto stored = store.load(name);
    if (!stored) return state_error(prefix + stored.error().message);
    if (*stored) return std::move(**stored);

    const std::string state_file = store.token_path(name);
    if (!refresh_token_file)
        return state_error(prefix + "no refresh token: neither " + state_file +
                           " nor refresh_token_file exists (set refresh_token_file to a "
                           "file holding one)");
    auto configured = read_token_file(fs, *refresh_token_file, 0, store.warning_sink(), name);
    if (!configured)
        return state_error(prefix + "refresh_token_file: " + configured.error().message);
    if (!*configured)
        return state_error(prefix + "no refresh token: neither " + state_file +
                           " nor refresh_token_file " + *refresh_token_file +
                           " exists (put a refresh token there)");
    return std::move(**configured);
}

}  // namespace tokenshm::refresher
