// Persistence of rotated refresh tokens (SPEC.md, "The refresher", Rotation).
//
// A received successor refresh token is written to the state directory before
// the access token that came with it is published: temp file, rename, then
// fsync of the file and of the directory. For a killed process the rename is
// what counts (the page cache survives it), so the rename comes first and the
// window between the response and the rename holds no fsync; the fsyncs that
// follow make it survive a power loss too. A power loss between the rename and
// the fsyncs may leave a torn or empty file: the state file carries the
// SHA-256 of its token (format v2, decode_state_file), so such a file is
// detected and reported, and its content is never sent.
//
// The caller treats any error from save() as "not persisted": it keeps the
// successor in memory (the old one is spent), retries the save every second,
// reports it in the slot's last_error, and still publishes the access token:
// withholding it would not make the successor any safer, only let readers'
// token run out.
//
// Once a successor is durable, the fingerprints of the tokens it replaced go
// to the spent ledger (spent_ledger.hpp), and a token found there is never
// sent again (initial_refresh_token, obtain_refresh_token).
//
// Every file in the state directory is opened with O_NOFOLLOW | O_NONBLOCK |
// O_CLOEXEC and checked with fstat to be a regular file owned by this
// process's euid or root, so a FIFO, device or link planted there is a clear
// error, never a hang.
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

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

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
    // Gives the file to group `gid`; the owner stays.
    virtual FsResult<Done> fchown_group(int fd, gid_t gid, const std::string& path) = 0;
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
    FsResult<Done> fchown_group(int fd, gid_t gid, const std::string& path) override;
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

// SHA-256 of `token` as 64 lowercase hex digits: what the state file's
// checksum and the spent ledger hold instead of the token.
std::string refresh_token_fingerprint(std::string_view token);

// A state file's content. Format v2, written by this version:
//   "tokenshm-state v2 sha256=<refresh_token_fingerprint(token)>\n<token>\n"
// The header comes first so that a file cut anywhere, even inside the header,
// is recognised as v2 and reported torn instead of being read as a bare token.
// Format v1 (earlier versions): the bare token, with or without one "\n".
enum class StateFileFormat { v1, v2 };
struct StateFileContents {
    Secret token;
    StateFileFormat format = StateFileFormat::v2;
};
// Parses a state file's bytes; `what` names the file in messages, which never
// quote the content. Pure (no I/O): the fuzzing target for state files.
Expected<StateFileContents, RefresherError> decode_state_file(
    std::string_view bytes, const std::string& what = "the state file");
// The v2 bytes of a state file holding `token`.
Secret encode_state_file(const Secret& token);

// How a successor came: when the response that carried it was handed to the
// credential (steady clock; for the response-to-rename time), and the
// fingerprints of the refresh tokens it makes spent, ledgered once it is durable.
struct Rotation {
    std::optional<std::chrono::steady_clock::time_point> response_at;
    std::vector<std::string> spent;
};

// Milliseconds from a token response to the rename of its successor into
// place: the window in which a SIGKILL loses the successor. Kept in process
// for reports and tests; each sample is also logged (debug, `persist_ms=<n>`).
struct PersistTimes {
    // Upper bounds (ms) of the histogram buckets; the last bucket is "more".
    static constexpr std::array<std::int64_t, 10> bounds = {1,  2,   5,   10,  20,
                                                            50, 100, 200, 500, 1000};
    std::array<std::uint64_t, bounds.size() + 1> buckets{};
    std::uint64_t count = 0;
    std::int64_t last_ms = 0;
    std::int64_t max_ms = 0;
    void add(std::int64_t ms) noexcept;
    // "count=3 max_ms=41 le1=0 le2=1 ... le1000=0 more=0": the figures, one line.
    std::string summary() const;
};

class SpentLedger;

// The state directory: one `<name>.refresh_token` file (0600) per credential
// and the spent ledger, in a directory (0700) owned by this process's
// effective uid. Names follow libshm's credential name rule
// (shm::valid_credential_name); others are refused.
class StateStore {
  public:
    // Largest accepted refresh token, in bytes (a trailing newline is extra).
    static constexpr std::size_t max_token_bytes = 64 * 1024;
    // Largest state file: the v2 header line, the token and its newline.
    static constexpr std::size_t max_file_bytes = 25 + 64 + 1 + max_token_bytes + 1;

    // Without a sink, warnings go to the log at level warn.
    StateStore(FileSystem& fs, std::string dir, StateWarningSink warn = {});
    ~StateStore();
    StateStore(const StateStore&) = delete;
    StateStore& operator=(const StateStore&) = delete;

    const std::string& dir() const noexcept { return dir_; }
    // "<dir>/<name>.refresh_token"
    std::string token_path(std::string_view credential_name) const;
    const StateWarningSink& warning_sink() const noexcept { return warn_; }
    FileSystem& file_system() const noexcept { return fs_; }

    // Creates the directory (mode 0700; its parent must exist) or checks it: a
    // directory owned by our euid. Group/other access is removed with a warning.
    Expected<Done, RefresherError> prepare();

    // The persisted refresh token, or nullopt when there is none. A file
    // readable by group or others is loaded with a warning; a torn or damaged
    // one is an error. Changes nothing on disk.
    Expected<std::optional<Secret>, RefresherError> load(std::string_view credential_name);
    // The same, saying which format the file had (v1 files are rewritten by
    // obtain_refresh_token).
    Expected<std::optional<StateFileContents>, RefresherError> read_state(
        std::string_view credential_name);

    // Replaces the persisted refresh token atomically and durably (see the top
    // of this file), then ledgers rotation.spent. On error before the rename
    // the old file is untouched and no temp file remains; an error after it
    // (an fsync) means the new token is in place but may not survive a power
    // loss. Either way the caller (CredentialRefresher) keeps the new token in
    // memory, retries the save every second, and still publishes the access
    // token. A failed ledger append is a warning (the successor is safe) and
    // is retried with the next one.
    Expected<Done, RefresherError> save(std::string_view credential_name,
                                        const Secret& refresh_token, const Rotation& rotation = {});

    // Renames <name>.refresh_token to <name>.refresh_token.rejected after the
    // server rejected it, so the next start (or reload) falls back to
    // refresh_token_file, where a person puts a new one. True when a file was
    // moved, false when there was none.
    Expected<bool, RefresherError> set_aside(std::string_view credential_name);

    // The credential that spent the token with this fingerprint, if the
    // ledger (or a record a failed append still holds) says it is spent.
    Expected<std::optional<std::string>, RefresherError> spent_by(std::string_view fingerprint);
    // The token `credential_name` starts with came from refresh_token_file:
    // once spent, its record is kept longer (spent_ledger.hpp says why).
    void note_configured_token(std::string_view credential_name, std::string fingerprint);
    // Ledgers tokens of `credential_name` as spent (save() does it for a
    // successor it saved; the daemon for a successor it had to give up).
    Expected<Done, RefresherError> record_spent(std::string_view credential_name,
                                                const std::vector<std::string>& fingerprints);
    SpentLedger& ledger() noexcept { return *ledger_; }
    const PersistTimes& persist_times() const noexcept { return persist_times_; }

    // A refresh token file named by the config (`refresh_token_file`): opened
    // without blocking, symbolic links followed, but the file reached must be
    // a regular file owned by this process's euid or root; one trailing "\n"
    // or "\r\n" is dropped (as for every secret file); a missing file is an
    // error naming it.
    static Expected<Secret, RefresherError> read_secret_file(FileSystem& fs,
                                                             const std::string& path,
                                                             const StateWarningSink& warn = {},
                                                             std::string_view cred = {});

  private:
    Expected<int, RefresherError> write_temp(const std::string& temp_path, const Secret& content,
                                             const std::string& context);
    Expected<Done, RefresherError> make_durable(int fd, const std::string& name,
                                                const std::string& context);
    void record_persist_time(std::string_view name, const Rotation& rotation);
    void ledger_spent(std::string_view name, const Rotation& rotation);

    FileSystem& fs_;
    std::string dir_;
    StateWarningSink warn_;
    std::unique_ptr<SpentLedger> ledger_;
    std::map<std::string, std::string, std::less<>> configured_;  // name -> fingerprint
    PersistTimes persist_times_;
};

// What a credential starts with: a refresh token, or the reason it has none
// usable and must wait in reauth for a person (the one it would have used is
// spent).
struct StartingRefreshToken {
    std::optional<Secret> token;
    std::string reauth_reason;  // set when token is empty
};

// The refresh token a starting (or reloading) credential uses for `name`: the
// state directory's if present, else the one in `refresh_token_file`. A token
// in the spent ledger is never returned: the reason says what to do. A state
// file in format v1 is rewritten as v2. Errors: unreadable or damaged files,
// no refresh token anywhere.
Expected<StartingRefreshToken, RefresherError> obtain_refresh_token(
    StateStore& store, std::string_view name, const std::optional<std::string>& refresh_token_file);

// The same check for --check-config, changing nothing on disk: a spent token
// is an error here.
Expected<Secret, RefresherError> initial_refresh_token(
    StateStore& store, FileSystem& fs, std::string_view name,
    const std::optional<std::string>& refresh_token_file);

namespace detail {
// Helpers the state store and the spent ledger share; not for other callers.

// Opens a state-directory file for reading (O_NOFOLLOW | O_NONBLOCK), checks
// it is a regular file owned by our euid or root and at most max_bytes long,
// and reads it. nullopt when it does not exist.
struct ReadFile {
    Secret bytes;
    struct stat st;
};
Expected<std::optional<ReadFile>, RefresherError> read_checked_file(
    FileSystem& fs, const std::string& path, int extra_flags, std::size_t max_bytes,
    const StateWarningSink& warn, std::string_view cred);
// Creates `path` exclusively (O_CREAT | O_EXCL | O_NOFOLLOW, mode 0600); a
// leftover from a crash (file, link or FIFO) is removed first.
FsResult<int> create_exclusive(FileSystem& fs, const std::string& path);
// fsync of the directory, so a rename or a new name in it survives a power loss.
FsResult<Done> sync_directory(FileSystem& fs, const std::string& dir, const StateWarningSink& warn,
                              std::string_view cred);
}  // namespace detail

}  // namespace tokenshm::refresher
