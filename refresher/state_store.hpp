// Persistence of rotated refresh tokens (SPEC.md, "The refresher", Rotation).
//
// A received successor refresh token is written to the state directory before
// the access token that came with it is published, so a crash at any point
// leaves either the old token (the successor never reached the disk, and the
// server's grant of it was never acted on) or the new one, never a torn or
// empty file: temp file, fsync, rename, fsync of the directory. The caller
// treats any error from save() as "not persisted": it keeps the successor in
// memory (the old one is spent), retries the save every second, reports it in
// the slot's last_error, and still publishes the access token: withholding it
// would not make the successor any safer, only let readers' token run out.
//
// The filesystem is passed in so every step can be made to fail in tests.
// Its calls fail with an FsError (call, path, errno); the store's own
// functions with a runtime RefresherError whose message names the file.
#pragma once

#include "error.hpp"
#include "secret.hpp"

#include <tokenshm/expected.hpp>
#include <tokenshm/shm/posix.hpp>

#include <sys/stat.h>
#include <sys/types.h>

#include <cstddef>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

namespace tokenshm::refresher {

// Names the call, the path and the errno: "rename(/a.tmp -> /a): No space left on device".
using FsError = shm::SysError;
template <class T>
using FsResult = Expected<T, FsError>;

// The filesystem operations the state store needs, nothing more. Each returns
// a value or an FsError naming the call and the path it acted on. File
// descriptors are plain ints owned by the caller, who must close() them.
class FileSystem {
  public:
    virtual ~FileSystem() = default;

    virtual FsResult<int> open(const std::string& path, int flags, mode_t mode) = 0;
    // O_RDONLY | O_DIRECTORY: for fsync of the directory after a rename.
    virtual FsResult<int> open_directory(const std::string& path) = 0;
    // The descriptor is released even when an error is returned (Linux semantics).
    virtual FsResult<Done> close(int fd, const std::string& path) = 0;
    // Writes every byte (short writes continue) or fails.
    virtual FsResult<Done> write_all(int fd, std::string_view bytes, const std::string& path) = 0;
    // Reads until end of file or until max_bytes have been read.
    virtual FsResult<Secret> read_all(int fd, std::size_t max_bytes, const std::string& path) = 0;
    virtual FsResult<Done> fsync(int fd, const std::string& path) = 0;
    virtual FsResult<Done> fchmod(int fd, mode_t mode, const std::string& path) = 0;
    virtual FsResult<struct stat> fstat(int fd, const std::string& path) = 0;
    // Follows symbolic links (a state directory may be a link to another volume).
    virtual FsResult<struct stat> stat(const std::string& path) = 0;
    virtual FsResult<Done> chmod(const std::string& path, mode_t mode) = 0;
    virtual FsResult<Done> mkdir(const std::string& path, mode_t mode) = 0;
    virtual FsResult<Done> rename(const std::string& from, const std::string& to) = 0;
    virtual FsResult<Done> unlink(const std::string& path) = 0;
};

// The real thing: O_CLOEXEC on every descriptor, EINTR retried.
class PosixFileSystem : public FileSystem {
  public:
    FsResult<int> open(const std::string& path, int flags, mode_t mode) override;
    FsResult<int> open_directory(const std::string& path) override;
    FsResult<Done> close(int fd, const std::string& path) override;
    FsResult<Done> write_all(int fd, std::string_view bytes, const std::string& path) override;
    FsResult<Secret> read_all(int fd, std::size_t max_bytes, const std::string& path) override;
    FsResult<Done> fsync(int fd, const std::string& path) override;
    FsResult<Done> fchmod(int fd, mode_t mode, const std::string& path) override;
    FsResult<struct stat> fstat(int fd, const std::string& path) override;
    FsResult<struct stat> stat(const std::string& path) override;
    FsResult<Done> chmod(const std::string& path, mode_t mode) override;
    FsResult<Done> mkdir(const std::string& path, mode_t mode) override;
    FsResult<Done> rename(const std::string& from, const std::string& to) override;
    FsResult<Done> unlink(const std::string& path) override;
};

// Non-fatal findings (loose permissions). `cred` is empty for directory-wide
// ones. Messages name files and modes, never contents.
using StateWarningSink = std::function<void(std::string_view cred, std::string_view message)>;

// The state directory: one `<name>.refresh_token` file (0600) per credential
// in a directory (0700) owned by this process's effective uid. Names follow
// libshm's credential name rule (shm::valid_credential_name); others are refused.
class StateStore {
  public:
    // Largest accepted refresh token, in bytes (a trailing newline is extra).
    static constexpr std::size_t max_token_bytes = 64 * 1024;

    // Without a sink, warnings go to the log at level warn.
    StateStore(FileSystem& fs, std::string dir, StateWarningSink warn = {});

    const std::string& dir() const noexcept { return dir_; }
    // "<dir>/<name>.refresh_token"
    std::string token_path(std::string_view credential_name) const;
    const StateWarningSink& warning_sink() const noexcept { return warn_; }

    // Creates the directory (mode 0700; its parent must exist) or checks it: a
    // directory owned by our euid. Group/other access is removed with a warning.
    Expected<Done, RefresherError> prepare();

    // The persisted refresh token, or nullopt when there is none. A file
    // readable by group or others is loaded with a warning.
    Expected<std::optional<Secret>, RefresherError> load(std::string_view credential_name);

    // Replaces the persisted refresh token atomically and durably. On error
    // before the rename the old file is untouched and no temp file remains;
    // an error after it (directory fsync) means the new token is in place but
    // may not survive a crash. Either way the caller (CredentialRefresher)
    // keeps the new token in memory, retries the save every second, and still
    // publishes the access token (see the top of this file for why).
    Expected<Done, RefresherError> save(std::string_view credential_name,
                                        const Secret& refresh_token);

    // Renames <name>.refresh_token to <name>.refresh_token.rejected after the
    // server rejected it, so the next start (or reload) falls back to
    // refresh_token_file, where a person puts a new one. True when a file was
    // moved, false when there was none.
    Expected<bool, RefresherError> set_aside(std::string_view credential_name);

    // A refresh token file named by the config (`refresh_token_file`): same
    // validation as load(); symbolic links are followed; a missing file is an
    // error naming it.
    static Expected<Secret, RefresherError> read_secret_file(FileSystem& fs,
                                                             const std::string& path,
                                                             const StateWarningSink& warn = {},
                                                             std::string_view cred = {});

  private:
    FileSystem& fs_;
    std::string dir_;
    StateWarningSink warn_;
};

// The refresh token a starting refresher uses for `name`: the state directory's
// if present, else the one in `refresh_token_file`, else an error telling the
// operator what to do.
Expected<Secret, RefresherError> initial_refresh_token(
    StateStore& store, FileSystem& fs, std::string_view name,
    const std::optional<std::string>& refresh_token_file);

}  // namespace tokenshm::refresher
