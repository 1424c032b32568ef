// libtokenshm, C++ API: read OAuth access tokens that tokenshm-refresher keeps
// in shared memory.
//
//   auto reader = tokenshm::Reader::open();          // $TOKENSHM_SEGMENT or "tokenshm"
//   auto handle = reader->lookup("storage");
//   auto tok = handle->get(std::chrono::minutes(5)); // valid for 5 more minutes
//   if (tok) use(tok->token_type, tok->token);
//
// After open and lookup, get() makes no syscall, takes no lock and allocates
// nothing. A Reader may be shared by threads; a Handle belongs to one thread
// at a time (lookup is cheap: take one per thread).
#pragma once

#include <tokenshm/expected.hpp>

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace tokenshm {

// Values match tokenshm_error in <tokenshm/tokenshm.h>.
enum class Error : int {
    no_segment = 1,          // no segment, or the refresher never ran
    incompatible = 2,        // unknown layout version, sizes that do not add up, corrupt
    untrusted = 3,           // owned by an untrusted uid, or writable by group/others
    no_such_credential = 4,  // no active slot of that name
    empty = 5,               // the refresher has not obtained a token yet
    expired = 6,             // the last token expired
    expiring = 7,            // valid, but for less than the requested min_valid
    reauth = 8,              // the grant was rejected and the last token expired
    timeout = 9,             // wait() gave up
    busy = 10,               // the writer republished during every bounded retry
    invalid_argument = 11,
    buffer_too_small = 12,
    system = 13,  // a syscall failed (open path only)
};
const char* to_string(Error e) noexcept;
// SPEC's exit codes: 3 no segment, 4 no such credential, 5 no valid token, 6
// incompatible or untrusted, 2 usage, 1 otherwise.
int exit_code(Error e) noexcept;

enum class State : std::uint32_t { empty = 0, valid = 1, stale = 2, expired = 3, reauth = 4 };
const char* to_string(State s) noexcept;

// A token and its record. The views point into the handle's own copy and stay
// valid until the next call on that handle.
struct Token {
    std::string_view token;
    std::string_view token_type;
    std::string_view scope;
    std::string_view last_error;
    std::int64_t expires_at_ms = 0;  // Unix ms
    std::int64_t issued_at_ms = 0;
    std::int64_t next_refresh_ms = 0;
    std::int64_t last_attempt_ms = 0;
    std::uint64_t version = 0;  // grows with every publish, across refresher restarts
    State state = State::empty;
    std::uint32_t failures = 0;         // consecutive failed refreshes
    std::int64_t heartbeat_age_ms = 0;  // since the refresher last said it was alive
    bool writer_alive = false;          // heartbeat younger than 3 s
};

// An error from open or lookup, with one line saying what is wrong.
struct Failure {
    Error code;
    std::string message;
};

struct OpenOptions {
    // Trust segments owned by this uid too (besides ours, root and user
    // "tokenshm"); overrides $TOKENSHM_TRUSTED_UID.
    std::optional<uid_t> trusted_uid;
};

namespace detail {
struct Segment;
struct HandleState;
}  // namespace detail

class Handle {
  public:
    Handle(Handle&&) noexcept;
    Handle& operator=(Handle&&) noexcept;
    ~Handle();

    // The current token, if it is valid for at least `min_valid` more.
    Expected<Token, Error> get(std::chrono::milliseconds min_valid = {}) noexcept;
    // Blocks until the slot's version exceeds `seen_version` (0: until any
    // record exists), then returns get(min_valid)'s result; Error::timeout
    // when `timeout` passes first. Uses a futex: this one may make syscalls.
    Expected<Token, Error> wait(std::uint64_t seen_version, std::chrono::milliseconds timeout,
                                std::chrono::milliseconds min_valid = {}) noexcept;
    // The current record whatever its state (empty, expired...), for status
    // displays; fails only when the slot is gone or its copy is corrupt.
    Expected<Token, Error> inspect() noexcept;
    const std::string& name() const noexcept;

  private:
    friend class Reader;
    explicit Handle(std::unique_ptr<detail::HandleState> s) noexcept;
    std::unique_ptr<detail::HandleState> s_;
};

struct WriterStatus {
    std::int64_t pid = 0;
    std::int64_t start_ms = 0;
    std::int64_t heartbeat_ms = 0;
    std::uint64_t generation = 0;
    bool lock_held = false;  // a refresher holds the segment's lock right now
};

class Reader {
  public:
    static Expected<Reader, Failure> open(std::string_view segment = {},
                                          const OpenOptions& options = {});
    Expected<Handle, Failure> lookup(std::string_view credential) const;
    // Names of the active credentials, in slot order.
    std::vector<std::string> credentials() const;
    // Who writes and whether it is alive (probes the lock: a syscall).
    WriterStatus writer() const;
    const std::string& segment_name() const noexcept;
    std::uint32_t max_token_bytes() const noexcept;

  private:
    std::shared_ptr<const detail::Segment> seg_;
};

}  // namespace tokenshm
