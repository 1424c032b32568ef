#include "state_store.hpp"

#include "log.hpp"
#include "spent_ledger.hpp"

#include <tokenshm/layout.h>
#include <tokenshm/shm/segment.hpp>

#include <fcntl.h>
#include <openssl/evp.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
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

FsResult<Done> PosixFileSystem::fchown_group(int fd, gid_t gid, const std::string& path) {
    if (::fchown(fd, static_cast<uid_t>(-1), gid) != 0) return fail("fchown", errno, path);
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
// Any file starting with (a prefix of) this is format v2 or later.
constexpr std::string_view state_magic = "tokenshm-state ";
constexpr std::string_view state_header_v2 = "tokenshm-state v2 sha256=";
constexpr std::size_t fingerprint_hex = 64;
static_assert(StateStore::max_file_bytes ==
              state_header_v2.size() + fingerprint_hex + 1 + StateStore::max_token_bytes + 1);

std::string octal_mode(mode_t mode) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "%04o", static_cast<unsigned>(mode & 07777));
    return buf;
}

std::string invalid_name(std::string_view name) {
    return "credential name " + quote(name) + " is not " + std::string(shm::kCredentialNameRule);
}

// A Secret holding a + b + c, built so no unwiped copy of the bytes is left behind.
Secret secret_of(std::string_view a, std::string_view b = {}, std::string_view c = {}) {
    std::string s;
    s.reserve(std::max<std::size_t>(a.size() + b.size() + c.size(), 32));
    s.append(a);
    s.append(b);
    s.append(c);
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

void warn_if_loose(const StateWarningSink& warn, std::string_view cred, const std::string& path,
                   const struct stat& st) {
    if ((st.st_mode & 077) != 0)
        warn_to(warn, cred,
                path + ": mode " + octal_mode(st.st_mode) +
                    " allows group or other access to a refresh token (expected 0600)");
}

bool lower_hex(std::string_view s) {
    return std::all_of(s.begin(), s.end(),
                       [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

// Format v1: the bare token and at most one "\n".
Expected<StateFileContents, RefresherError> decode_v1(std::string_view bytes,
                                                      const std::string& what) {
    if (!bytes.empty() && bytes.back() == '\n') bytes.remove_suffix(1);
    if (auto ok = check_refresh_token(bytes, what); !ok) return Unexpected{ok.error()};
    return StateFileContents{secret_of(bytes), StateFileFormat::v1};
}

std::string parent_of(const std::string& dir) {
    const auto slash = dir.find_last_of('/');
    if (slash == std::string::npos) return ".";
    if (slash == 0) return "/";
    return dir.substr(0, slash);
}

}  // namespace

// ---------------------------------------------------------------- the state file format

std::string refresh_token_fingerprint(std::string_view token) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (EVP_Digest(token.data(), token.size(), md, &len, EVP_sha256(), nullptr) != 1 || len != 32) {
        // Only a broken OpenSSL installation gets here; going on without a
        // checksum or a ledger would break the promise the ledger makes.
        log_event(Level::error, "", "sha256_failed",
                  "OpenSSL's EVP_Digest(SHA-256) failed; cannot checksum or ledger refresh tokens");
        std::abort();
    }
    static constexpr char digits[] = "0123456789abcdef";
    std::string hex(2 * len, '0');
    for (unsigned int i = 0; i < len; ++i) {
        hex[2 * i] = digits[md[i] >> 4];
        hex[2 * i + 1] = digits[md[i] & 0xf];
    }
    return hex;
}

Secret encode_state_file(const Secret& token) {
    const std::string header =
        std::string(state_header_v2) + refresh_token_fingerprint(token.reveal()) + "\n";
    return secret_of(header, token.reveal(), "\n");
}

Expected<StateFileContents, RefresherError> decode_state_file(std::string_view bytes,
                                                              const std::string& what) {
    if (bytes.empty()) return state_error(what + " is empty");
    const bool v2_or_later = bytes.starts_with(state_magic) || state_magic.starts_with(bytes);
    if (!v2_or_later) return decode_v1(bytes, what);

    const auto torn = [&what] {
        return state_error(what +
                           " is torn or damaged (its checksum does not match: a write cut short "
                           "by a crash or a power loss); its refresh token is not used (move the "
                           "file aside to fall back to refresh_token_file)");
    };
    const auto nl = bytes.find('\n');
    if (nl == std::string_view::npos) return torn();
    const std::string_view header = bytes.substr(0, nl);
    if (!header.starts_with(state_header_v2)) {
        // A complete header line of another version: not torn, just not ours.
        if (header.starts_with("tokenshm-state v") && !header.starts_with("tokenshm-state v2 "))
            return state_error(what +
                               " has a format this version does not know (written by a "
                               "newer tokenshm?); it is not used");
        return torn();
    }
    const std::string_view sum = header.substr(state_header_v2.size());
    if (sum.size() != fingerprint_hex || !lower_hex(sum)) return torn();
    std::string_view token = bytes.substr(nl + 1);
    if (token.empty() || token.back() != '\n') return torn();
    token.remove_suffix(1);
    if (token.size() > StateStore::max_token_bytes) return torn();
    if (refresh_token_fingerprint(token) != sum) return torn();
    if (auto ok = check_refresh_token(token, what); !ok) return Unexpected{ok.error()};
    return StateFileContents{secret_of(token), StateFileFormat::v2};
}

void PersistTimes::add(std::int64_t ms) noexcept {
    ms = std::max<std::int64_t>(ms, 0);
    std::size_t b = 0;
    while (b < bounds.size() && ms > bounds[b])
        ++b;
    ++buckets[b];
    ++count;
    last_ms = ms;
    max_ms = std::max(max_ms, ms);
}

std::string PersistTimes::summary() const {
    std::string s = "count=" + std::to_string(count) + " max_ms=" + std::to_string(max_ms);
    for (std::size_t b = 0; b < bounds.size(); ++b)
        s += " le" + std::to_string(bounds[b]) + "=" + std::to_string(buckets[b]);
    return s + " more=" + std::to_string(buckets[bounds.size()]);
}

// ---------------------------------------------------------------- shared file helpers

namespace detail {

Expected<std::optional<ReadFile>, RefresherError> read_checked_file(
    FileSystem& fs, const std::string& path, int extra_flags, std::size_t max_bytes,
    const StateWarningSink& warn, std::string_view cred) {
    // O_NONBLOCK: a FIFO put in the file's place must not hang the refresher.
    auto opened = fs.open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | extra_flags, 0);
    if (!opened) {
        if (opened.error().err == ENOENT) return std::optional<ReadFile>{};
        return state_error(opened.error().message());
    }
    OpenFd fd(fs, *opened, path);

    auto st = fs.fstat(fd.get(), path);
    if (!st) return state_error(st.error().message());
    if (!S_ISREG(st->st_mode)) return state_error(path + " is not a regular file");
    const uid_t euid = ::geteuid();
    if (st->st_uid != euid && st->st_uid != 0)
        return state_error(path + " is owned by uid " + std::to_string(st->st_uid) +
                           ", not by the refresher's uid " + std::to_string(euid) +
                           " or root; refusing to read a refresh token from it");
    if (static_cast<std::uintmax_t>(st->st_size) > max_bytes)
        return state_error(path + " is larger than " + std::to_string(max_bytes) + " bytes");

    // One byte more than allowed, to notice a file that grew since fstat.
    auto raw = fs.read_all(fd.get(), max_bytes + 1, path);
    if (!raw) return state_error(raw.error().message());
    if (raw->size() > max_bytes)
        return state_error(path + " is larger than " + std::to_string(max_bytes) + " bytes");
    if (auto closed = fd.close(); !closed)
        warn_to(warn, cred, closed.error().message() + " (ignored: the file was read completely)");
    return std::optional<ReadFile>{ReadFile{std::move(*raw), *st}};
}

FsResult<int> create_exclusive(FileSystem& fs, const std::string& path) {
    constexpr int flags = O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC;
    auto opened = fs.open(path, flags, 0600);
    if (opened || opened.error().err != EEXIST) return opened;
    // A temp file a crash left behind (or a link or FIFO someone planted):
    // only this process writes these names, so it goes.
    if (auto removed = fs.unlink(path); !removed && removed.error().err != ENOENT)
        return Unexpected<FsError>{removed.error()};
    return fs.open(path, flags, 0600);
}

FsResult<Done> sync_directory(FileSystem& fs, const std::string& dir, const StateWarningSink& warn,
                              std::string_view cred) {
    auto dir_fd = fs.open_directory(dir);
    if (!dir_fd) return Unexpected<FsError>{dir_fd.error()};
    auto synced = fs.fsync(*dir_fd, dir);
    auto closed = fs.close(*dir_fd, dir);
    if (!synced) return synced;
    if (!closed)
        warn_to(warn, cred,
                closed.error().message() + " (ignored: the directory was already synced)");
    return Done{};
}

}  // namespace detail

// ---------------------------------------------------------------- StateStore

StateStore::StateStore(FileSystem& fs, std::string dir, StateWarningSink warn)
    : fs_(fs), dir_(std::move(dir)), warn_(std::move(warn)) {
    while (dir_.size() > 1 && dir_.back() == '/')
        dir_.pop_back();
    ledger_ = std::make_unique<SpentLedger>(fs_, dir_, warn_);
}

StateStore::~StateStore() = default;

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

Expected<std::optional<StateFileContents>, RefresherError> StateStore::read_state(
    std::string_view credential_name) {
    if (!shm::valid_credential_name(credential_name))
        return state_error(invalid_name(credential_name));
    const std::string path = token_path(credential_name);
    auto read = detail::read_checked_file(fs_, path, O_NOFOLLOW, StateStore::max_file_bytes, warn_,
                                          credential_name);
    if (!read) return Unexpected{std::move(read).error()};
    if (!*read) return std::optional<StateFileContents>{};
    auto decoded = decode_state_file((*read)->bytes.reveal(), path);
    if (!decoded) return Unexpected{std::move(decoded).error()};
    warn_if_loose(warn_, credential_name, path, (*read)->st);
    return std::optional<StateFileContents>{std::move(*decoded)};
}

Expected<std::optional<Secret>, RefresherError> StateStore::load(std::string_view credential_name) {
    auto state = read_state(credential_name);
    if (!state) return Unexpected{std::move(state).error()};
    if (!*state) return std::optional<Secret>{};
    return std::optional<Secret>{std::move((*state)->token)};
}

Expected<int, RefresherError> StateStore::write_temp(const std::string& temp_path,
                                                     const Secret& content,
                                                     const std::string& context) {
    // Before the rename: remove the temp file, report the failed step.
    auto failed = [&](const FsError& e, std::optional<FsError> close_error = std::nullopt) {
        std::string msg = context + e.message();
        if (close_error) msg += "; also " + close_error->message();
        if (auto removed = fs_.unlink(temp_path); !removed && removed.error().err != ENOENT)
            msg += "; cleaning up: " + removed.error().message();
        return state_error(std::move(msg));
    };
    auto opened = detail::create_exclusive(fs_, temp_path);
    if (!opened) return failed(opened.error());
    const int fd = *opened;
    auto abandon = [&](const FsError& e) {
        auto closed = fs_.close(fd, temp_path);
        return failed(e, closed ? std::nullopt : std::optional<FsError>(closed.error()));
    };
    // O_CREAT's mode went through the umask, which may have taken bits away.
    if (auto r = fs_.fchmod(fd, 0600, temp_path); !r) return abandon(r.error());
    if (auto r = fs_.write_all(fd, content.reveal(), temp_path); !r) return abandon(r.error());
    return fd;
}

Expected<Done, RefresherError> StateStore::make_durable(int fd, const std::string& name,
                                                        const std::string& context) {
    const std::string final_path = token_path(name);
    // After the rename the new token is the file's content for every process,
    // whatever happens to this one; only a power loss can still undo it.
    auto not_durable = [&](const FsError& e) {
        return state_error(context + e.message() + "; " + final_path +
                           " holds the new refresh token but may not survive a power loss");
    };
    auto synced = fs_.fsync(fd, final_path);
    auto closed = fs_.close(fd, final_path);
    if (!synced) return not_durable(synced.error());
    if (!closed)
        warn_to(warn_, name, closed.error().message() + " (ignored: the file was already synced)");
    if (auto r = detail::sync_directory(fs_, dir_, warn_, name); !r) return not_durable(r.error());
    return Done{};
}

Expected<Done, RefresherError> StateStore::save(std::string_view credential_name,
                                                const Secret& refresh_token,
                                                const Rotation& rotation) {
    if (!shm::valid_credential_name(credential_name))
        return state_error(invalid_name(credential_name));
    const std::string name(credential_name);
    const std::string final_path = token_path(name);
    const std::string temp_path = final_path + std::string(temp_suffix);
    const std::string context = "saving the refresh token of " + name + ": ";
    const std::string unchanged = "; " + final_path + " is unchanged";

    // Refuse what load() would refuse: persisting it would strand the next start.
    if (auto ok = check_refresh_token(refresh_token.reveal(), "the new refresh token"); !ok)
        return state_error(context + ok.error().message + unchanged);

    auto fd = write_temp(temp_path, encode_state_file(refresh_token), context);
    if (!fd) return state_error(fd.error().message + unchanged);
    // No fsync before the rename: a killed process loses nothing the rename
    // has made visible, and this is the window in which a kill loses the successor.
    if (auto r = fs_.rename(temp_path, final_path); !r) {
        (void)fs_.close(*fd, temp_path);
        std::string msg = context + r.error().message();
        if (auto removed = fs_.unlink(temp_path); !removed && removed.error().err != ENOENT)
            msg += "; cleaning up: " + removed.error().message();
        return state_error(msg + unchanged);
    }
    record_persist_time(name, rotation);
    if (auto r = make_durable(*fd, name, context); !r) return r;
    ledger_spent(name, rotation);
    return Done{};
}

void StateStore::record_persist_time(std::string_view name, const Rotation& rotation) {
    if (!rotation.response_at) return;
    const auto us = std::chrono::duration_cast<std::chrono::microseconds>(
                        std::chrono::steady_clock::now() - *rotation.response_at)
                        .count();
    persist_times_.add(us / 1000);
    // Microseconds: on a quiet disk the whole window is well under a millisecond.
    char ms[32];
    std::snprintf(ms, sizeof ms, "persist_ms=%lld.%03lld", static_cast<long long>(us / 1000),
                  static_cast<long long>(us % 1000));
    log_event(Level::debug, name, "successor_renamed", ms);
}

// Called only once the successor is durable. The other order would be unsafe:
// a crash between a ledger entry and the successor's rename would leave on
// disk only a token the ledger calls spent, turning a successor lost in the
// response-to-rename window (which a server with a reuse grace period may
// still forgive) into a certain reauth. In this order a crash between the two
// only leaves a spent token out of the ledger while its successor is safe on
// disk, so it can only come back if the state file is lost as well.
void StateStore::ledger_spent(std::string_view name, const Rotation& rotation) {
    if (auto r = record_spent(name, rotation.spent); !r)
        warn_to(warn_, name,
                r.error().message +
                    " (the new refresh token is saved; the ledger entry is kept in memory and "
                    "written with the next one)");
}

Expected<Done, RefresherError> StateStore::record_spent(
    std::string_view credential_name, const std::vector<std::string>& fingerprints) {
    if (fingerprints.empty()) return Done{};
    std::vector<SpentLedger::Record> records;
    const auto configured = configured_.find(credential_name);
    for (const std::string& fp : fingerprints) {
        const bool from_file = configured != configured_.end() && configured->second == fp;
        records.push_back({std::string(credential_name),
                           from_file ? SpentLedger::Kind::configured : SpentLedger::Kind::rotated,
                           fp});
    }
    return ledger_->append(records);
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
    if (auto r = detail::sync_directory(fs_, dir_, warn_, credential_name); !r)
        return state_error("setting aside a rejected refresh token: " + r.error().message());
    return true;
}

Expected<std::optional<std::string>, RefresherError> StateStore::spent_by(
    std::string_view fingerprint) {
    return ledger_->spent_by(fingerprint);
}

void StateStore::note_configured_token(std::string_view credential_name, std::string fingerprint) {
    configured_.insert_or_assign(std::string(credential_name), std::move(fingerprint));
}

namespace {

// A refresh_token_file's token; nullopt when the file does not exist.
Expected<std::optional<Secret>, RefresherError> read_refresh_token_file(
    FileSystem& fs, const std::string& path, const StateWarningSink& warn, std::string_view cred) {
    // Symbolic links are followed (mounted secrets often are links), but the
    // file they lead to must pass read_checked_file's checks. The line end is
    // stripped as for every secret file (without_line_end).
    auto read = detail::read_checked_file(fs, path, 0, StateStore::max_token_bytes + 2, warn, cred);
    if (!read) return Unexpected{std::move(read).error()};
    if (!*read) return std::optional<Secret>{};
    const std::string_view token = without_line_end((*read)->bytes.reveal());
    if (auto ok = check_refresh_token(token, path); !ok) return Unexpected{ok.error()};
    warn_if_loose(warn, cred, path, (*read)->st);
    return std::optional<Secret>{secret_of(token)};
}

}  // namespace

Expected<Secret, RefresherError> StateStore::read_secret_file(FileSystem& fs,
                                                              const std::string& path,
                                                              const StateWarningSink& warn,
                                                              std::string_view cred) {
    auto read = read_refresh_token_file(fs, path, warn, cred);
    if (!read) return Unexpected{std::move(read).error()};
    if (!*read) return state_error(FsError{"open", ENOENT, path}.message());
    return std::move(**read);
}

// ---------------------------------------------------------------- starting tokens

namespace {

std::string spent_in_file_reason(const std::string& file) {
    return "refresh_token_file " + file +
           " holds a spent refresh token (it was already rotated: its successor was received, "
           "and a server that detects reuse revokes the grant when it sees it again); it is not "
           "sent. Run tokenshm login --config FILE NAME, or put a fresh refresh token from the "
           "authorization server in " +
           file + " and send SIGHUP";
}

std::string spent_in_state_reason(const std::string& state_file) {
    return state_file +
           " holds a spent refresh token (its successor was received before); it is not sent. "
           "Run tokenshm login --config FILE NAME (it replaces the file), or move it aside, put a "
           "fresh refresh token from the authorization server in refresh_token_file and send "
           "SIGHUP";
}

// The token in the state directory or, failing that, refresh_token_file,
// with the message to give if the ledger says it is spent.
struct FoundToken {
    Secret token;
    std::optional<StateFileFormat> state_format;  // nullopt: from refresh_token_file
    std::string spent_message;
};

Expected<FoundToken, RefresherError> find_refresh_token(StateStore& store, std::string_view name,
                                                        const std::optional<std::string>& file,
                                                        const std::string& prefix) {
    const std::string state_file = store.token_path(name);
    auto stored = store.read_state(name);
    if (!stored) return state_error(prefix + stored.error().message);
    if (*stored)
        return FoundToken{std::move((*stored)->token), (*stored)->format,
                          spent_in_state_reason(state_file)};
    if (!file)
        return state_error(prefix + "no refresh token: neither " + state_file +
                           " nor refresh_token_file exists (set refresh_token_file to a file "
                           "holding one)");
    auto read = read_refresh_token_file(store.file_system(), *file, store.warning_sink(), name);
    if (!read) return state_error(prefix + "refresh_token_file: " + read.error().message);
    if (!*read)
        return state_error(prefix + "no refresh token: neither " + state_file +
                           " nor refresh_token_file " + *file +
                           " exists (put a refresh token there)");
    return FoundToken{std::move(**read), std::nullopt, spent_in_file_reason(*file)};
}

// What obtain_refresh_token and initial_refresh_token share; `upgrade`
// rewrites a v1 state file and remembers where the token came from.
Expected<StartingRefreshToken, RefresherError> starting_refresh_token(
    StateStore& store, std::string_view name, const std::optional<std::string>& file,
    bool upgrade) {
    const std::string prefix = "credentials: " + std::string(name) + ": ";
    auto found = find_refresh_token(store, name, file, prefix);
    if (!found) return Unexpected{std::move(found).error()};
    const std::string fingerprint = refresh_token_fingerprint(found->token.reveal());
    auto spent = store.spent_by(fingerprint);
    if (!spent) return state_error(prefix + spent.error().message);
    if (*spent) return StartingRefreshToken{std::nullopt, std::move(found->spent_message)};
    if (!upgrade) return StartingRefreshToken{std::move(found->token), {}};

    if (!found->state_format) store.note_configured_token(name, fingerprint);
    if (found->state_format == StateFileFormat::v1) {
        if (auto r = store.save(name, found->token); !r)
            warn_to(store.warning_sink(), name,
                    r.error().message + " (rewriting it in format v2; the old file stays in use)");
        else
            log_event(Level::info, name, "state_file_upgraded",
                      store.token_path(name) + " rewritten in format v2 (with a checksum)");
    }
    return StartingRefreshToken{std::move(found->token), {}};
}

}  // namespace

Expected<StartingRefreshToken, RefresherError> obtain_refresh_token(
    StateStore& store, std::string_view name,
    const std::optional<std::string>& refresh_token_file) {
    return starting_refresh_token(store, name, refresh_token_file, true);
}

Expected<Secret, RefresherError> initial_refresh_token(
    StateStore& store, FileSystem& fs, std::string_view name,
    const std::optional<std::string>& refresh_token_file) {
    (void)fs;  // the store's filesystem reads refresh_token_file too
    auto found = starting_refresh_token(store, name, refresh_token_file, false);
    if (!found) return Unexpected{std::move(found).error()};
    if (!found->token)
        return state_error("credentials: " + std::string(name) + ": " + found->reauth_reason);
    return std::move(*found->token);
}

}  // namespace tokenshm::refresher
