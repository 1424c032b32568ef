// libtokenshm, C++ API: read OAuth access tokens that tokenshm-refresher keeps
// in shared memory.
//
//   auto reader = tokenshm::Reader::open();          // $TOKENSHM_SEGMENT or "tokenshm"
//   auto handle = reader->lookup("storage");
//   auto tok = handle->get(std::chrono::minutes(5)); // valid for 5 more minutes
//   if (tok) use(tok->token_type(), tok->token());
//
// After open and lookup, get() makes no syscall, takes no lock and allocates
// nothing. A Reader may be shared by threads; a Handle belongs to one thread
// at a time (lookup is cheap: take one per thread).
//
// Errors: every call returns Expected<T, E>: Failure (an Error and one line)
// from open and lookup, a bare Error from the read path. Nothing throws but
// allocation in open and lookup. The environment ($TOKENSHM_SEGMENT,
// $TOKENSHM_TRUSTED_UID) is read here, in Reader::open, and nowhere below.
#pragma once

#include <tokenshm/layout.h>
#include <tokenshm/expected.hpp>
#include <tokenshm/shm/record.hpp>

#include <sys/types.h>
#include <time.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace tokenshm {

// Values match tokenshm_error in <tokenshm/tokenshm.h> (asserted in tokenshm_c.cpp).
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
    // The control socket (report_invalid, request_refresh): none named in the
    // segment, connect failed, or no answer in time.
    unreachable = 14,
    // The refresher refused this process (SO_PEERCRED), or answered an error
    // that maps to no other value.
    refused = 15,
};
const char* to_string(Error e) noexcept;
// SPEC's exit codes: 3 no segment, 4 no such credential, 5 no valid token, 6
// incompatible or untrusted, 7 refresher unreachable or refusing, 2 usage, 1 otherwise.
int exit_code(Error e) noexcept;

// A record's state; the values are layout.h's TOKENSHM_STATE_*.
enum class State : std::uint32_t {
    empty = TOKENSHM_STATE_EMPTY,
    valid = TOKENSHM_STATE_VALID,
    stale = TOKENSHM_STATE_STALE,
    expired = TOKENSHM_STATE_EXPIRED,
    reauth = TOKENSHM_STATE_REAUTH,
};
const char* to_string(State s) noexcept;
static_assert(static_cast<std::uint32_t>(State::empty) ==
                  static_cast<std::uint32_t>(shm::RecordState::empty) &&
              static_cast<std::uint32_t>(State::valid) ==
                  static_cast<std::uint32_t>(shm::RecordState::valid) &&
              static_cast<std::uint32_t>(State::stale) ==
                  static_cast<std::uint32_t>(shm::RecordState::stale) &&
              static_cast<std::uint32_t>(State::expired) ==
                  static_cast<std::uint32_t>(shm::RecordState::expired) &&
              static_cast<std::uint32_t>(State::reauth) ==
                  static_cast<std::uint32_t>(shm::RecordState::reauth) &&
              shm::kLastRecordState == static_cast<std::uint32_t>(State::reauth));

namespace detail {
// The handle's decoded copy of its slot's record: what a Token shows. Filled
// when get() copies a new version, untouched while the version stays.
struct TokenData {
    shm::RecordView record;                                   // views into the handle's copy
    const std::atomic<std::int64_t>* heartbeat_ms = nullptr;  // in the segment's header
};
}  // namespace detail

// A token and its record: a view of the handle's own copy, valid until the
// next call on that handle (which may copy a newer version over it). Two
// words, so get() returns it without copying the record.
class Token {
  public:
    std::string_view token() const noexcept { return d_->record.token; }
    std::string_view token_type() const noexcept { return d_->record.token_type; }
    std::string_view scope() const noexcept { return d_->record.scope; }
    std::string_view last_error() const noexcept { return d_->record.last_error; }
    std::int64_t expires_at_ms() const noexcept { return d_->record.expires_at_ms; }  // Unix ms
    std::int64_t issued_at_ms() const noexcept { return d_->record.issued_at_ms; }
    std::int64_t next_refresh_ms() const noexcept { return d_->record.next_refresh_ms; }
    std::int64_t last_attempt_ms() const noexcept { return d_->record.last_attempt_ms; }
    // Grows with every publish, across refresher restarts.
    std::uint64_t version() const noexcept { return d_->record.version; }
    State state() const noexcept { return static_cast<State>(d_->record.state); }
    // Consecutive failed refreshes.
    std::uint32_t failures() const noexcept { return d_->record.failures; }
    // Since the refresher last said it was alive, as of the call that returned
    // this token; INT64_MAX for a heartbeat too far in the past to subtract.
    std::int64_t heartbeat_age_ms() const noexcept {
        std::int64_t age;
        if (__builtin_sub_overflow(now_ns_ / 1'000'000,
                                   d_->heartbeat_ms->load(std::memory_order_relaxed), &age))
            return std::numeric_limits<std::int64_t>::max();
        return age;
    }
    // A heartbeat within the last kWriterAliveWithinMs (layout.h's
    // TOKENSHM_WRITER_ALIVE_WITHIN_MS, 3 s; the writer beats every 250 ms).
    // One that far in the future is a corrupt or foreign clock, not a live writer.
    bool writer_alive() const noexcept {
        const std::int64_t age = heartbeat_age_ms();
        return age < kWriterAliveWithinMs && age > -kWriterAliveWithinMs;
    }

    static constexpr std::int64_t kWriterAliveWithinMs = TOKENSHM_WRITER_ALIVE_WITHIN_MS;

  private:
    friend class Handle;
    Token(const detail::TokenData* d, std::int64_t now_ns) noexcept : d_(d), now_ns_(now_ns) {}
    const detail::TokenData* d_;
    std::int64_t now_ns_;  // Unix ns, by the clock the call judged expiry with
};

// An error from open or lookup, with one line saying what is wrong.
struct Failure {
    Error code;
    std::string message;
};

struct OpenOptions {
    // Trust segments owned by this uid too (besides ours, root and user
    // "tokenshm"); when unset, $TOKENSHM_TRUSTED_UID applies.
    std::optional<uid_t> trusted_uid;
};

namespace detail {
struct Segment;
struct HandleState;

// What get()'s inline fast path reads: the slot's words and the handle's
// copy. HandleState (reader.cpp) begins with it. Inline in every caller, so
// its layout is part of libtokenshm's ABI: changing it needs a new soname.
struct HandleFast {
    const std::atomic<std::uint64_t>* seq = nullptr;
    const std::atomic<std::uint32_t>* status = nullptr;
    std::uint64_t cached_seq = ~std::uint64_t{0};  // version sequence of `data`
    // CLOCK_REALTIME_COARSE ns before which `data` is a token valid with a
    // margin (kExactWithinMs in reader.cpp); 0 when it is not a token.
    std::int64_t fast_until_ns = 0;
    TokenData data;
};

// The largest min_valid the fast path takes (ms that fit in an int64 of ns).
inline constexpr std::int64_t kMaxFastMs = std::numeric_limits<std::int64_t>::max() / 1'000'000;
}  // namespace detail

// What the refresher answered through its control socket to a refresh asked
// for, or a version reported invalid.
struct RefreshReply {
    enum class Action {
        refreshing,  // this ask started a token request
        joined,      // a token request already asked for or in flight will serve it
        waiting,     // min_interval_s holds: the request goes out at not_before_unix_ms
        newer,       // (invalid) a newer token than the one reported is in the segment
    };
    std::uint64_t version = 0;  // the version the refresher calls current
    Action action = Action::refreshing;
    std::int64_t not_before_unix_ms = 0;  // when the token request may go out
};
const char* to_string(RefreshReply::Action a) noexcept;
class Handle;
namespace detail {
// For tests: how many of this handle's copies the writer invalidated (each one
// a retry). Counted on the retry path only.
std::uint64_t copy_retries(const Handle& h) noexcept;
}  // namespace detail

class Handle {
  public:
    Handle(Handle&&) noexcept;
    Handle& operator=(Handle&&) noexcept;
    ~Handle();

    // The current token, if it is valid for at least `min_valid` more.
    //
    // Inline: the common case (version unchanged since the last copy, and the
    // token valid for min_valid plus a margin by the coarse clock) is two
    // loads of the slot's line, the vDSO clock and one compare, with no call
    // into the library. Everything else (a new version to copy, no token, a
    // deadline near enough for the exact clock) is get_slow().
    //
    // When the refresher recreated its segment (README, "When the segment is
    // recreated"), get_slow() moves the handle to the new one; if that one
    // cannot be used, get() returns its open error (no_segment, untrusted,
    // incompatible, or system when memory runs out).
    Expected<Token, Error> get(std::chrono::milliseconds min_valid = {}) noexcept {
        detail::HandleFast& f = *fast_;
        const std::int64_t need = min_valid.count();
        if (f.status->load(std::memory_order_relaxed) == TOKENSHM_SLOT_ACTIVE &&
            f.seq->load(std::memory_order_acquire) == f.cached_seq &&
            static_cast<std::uint64_t>(need) <= static_cast<std::uint64_t>(detail::kMaxFastMs))
            [[likely]] {
            struct timespec ts;
            ::clock_gettime(CLOCK_REALTIME_COARSE, &ts);
            const std::int64_t now_ns = std::int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
            // fast_until_ns and need * 10^6 are both in [0, 2^63): no overflow.
            if (f.fast_until_ns - need * 1'000'000 > now_ns) [[likely]]
                return Token(&f.data, now_ns);
        }
        return get_slow(min_valid);
    }
    // Blocks until the slot's version exceeds `seen_version` (0: until any
    // record exists), then returns get(min_valid)'s result; Error::timeout
    // when `timeout` passes first. Uses a futex: this one may make syscalls.
    Expected<Token, Error> wait(std::uint64_t seen_version, std::chrono::milliseconds timeout,
                                std::chrono::milliseconds min_valid = {}) noexcept;
    // The current record whatever its state (empty, expired...), for status
    // displays; fails only when the slot is gone or its copy is corrupt.
    Expected<Token, Error> inspect() noexcept;
    // Tells the refresher, through the control socket the segment names, that
    // the token of `version` was rejected (HTTP 401). Returns the version the
    // refresher calls current: if > version, a newer token is already in the
    // segment (get() it); otherwise (== version) a refresh was started or
    // joined, and wait(version, timeout) returns the next record. That record
    // may carry the same token again (republished as stale after a failed
    // try): compare issued_at, as `tokenshm get --invalid` does. Reports of one version by
    // many processes cause one token request. Errors: unreachable (no
    // refresher answers), refused, no_such_credential, reauth, busy (it is
    // stopping), invalid_argument (a version it never published). Makes
    // syscalls (connect, send, receive), bounded by `timeout`; get() still makes none.
    Expected<std::uint64_t, Error> report_invalid(
        std::uint64_t version,
        std::chrono::milliseconds timeout = std::chrono::seconds(5)) noexcept;
    // Asks the refresher to refresh now (min_interval_s still holds): a
    // plain refresh when `invalid_version` is 0, else report_invalid's
    // request; the whole answer.
    Expected<RefreshReply, Error> request_refresh(
        std::uint64_t invalid_version = 0,
        std::chrono::milliseconds timeout = std::chrono::seconds(5)) noexcept;
    // The control socket the segment names (empty: none).
    std::string control_socket() const;
    const std::string& name() const noexcept;

  private:
    friend class Reader;
    friend std::uint64_t detail::copy_retries(const Handle& h) noexcept;
    explicit Handle(std::unique_ptr<detail::HandleState> s) noexcept;
    Expected<Token, Error> get_slow(std::chrono::milliseconds min_valid) noexcept;
    std::unique_ptr<detail::HandleState> s_;
    detail::HandleFast* fast_;  // s_'s first part
};

struct WriterStatus {
    std::int64_t pid = 0;
    std::int64_t start_ms = 0;
    std::int64_t heartbeat_ms = 0;
    std::uint64_t generation = 0;
    bool lock_held = false;  // a refresher holds the segment's lock right now
};

// The election of a refresher coordinated with other hosts on etcd, as it
// sees it (SPEC.md, "tokenshm status"). No secret in it.
struct Coordination {
    std::string role;         // "leader", "follower", "candidate" or "unknown"
    std::string leader_host;  // empty: no leader known
    std::int64_t leader_pid = 0;
    std::int64_t lease_remaining_ms = 0;  // this host's lease
    std::string etcd;                     // "ok", or the last etcd error (one line)
};

class Reader {
  public:
    // `segment` empty: $TOKENSHM_SEGMENT, else "tokenshm". A malformed
    // $TOKENSHM_TRUSTED_UID (when options.trusted_uid is unset) is an error.
    static Expected<Reader, Failure> open(std::string_view segment = {},
                                          const OpenOptions& options = {});
    Expected<Handle, Failure> lookup(std::string_view credential) const;
    // Names of the active credentials, in slot order.
    std::vector<std::string> credentials() const;
    // Who writes and whether it is alive (probes the lock: a syscall).
    WriterStatus writer() const;
    const std::string& segment_name() const noexcept;
    std::uint32_t max_token_bytes() const noexcept;
    // The refresher's control socket as the segment's header names it.
    std::string control_socket() const;
    // Asks the refresher on its control socket (a syscall or several):
    // nullopt when it runs alone. Errors as Handle::request_refresh.
    Expected<std::optional<Coordination>, Error> coordination(
        std::chrono::milliseconds timeout) const noexcept;

  private:
    std::shared_ptr<const detail::Segment> seg_;
};

}  // namespace tokenshm
