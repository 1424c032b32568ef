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
#pragma once

#include <tokenshm/layout.h>
#include <tokenshm/expected.hpp>

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

namespace detail {
// The handle's decoded copy of its slot's record: what a Token shows. Filled
// when get() copies a new version, untouched while the version stays.
struct TokenData {
    std::string_view token, token_type, scope, last_error;
    std::int64_t expires_at_ms = 0;
    std::int64_t issued_at_ms = 0;
    std::int64_t next_refresh_ms = 0;
    std::int64_t last_attempt_ms = 0;
    std::uint64_t version = 0;
    State state = State::empty;
    std::uint32_t failures = 0;
    const std::atomic<std::int64_t>* heartbeat_ms = nullptr;  // in the segment's header
};
}  // namespace detail

// A token and its record: a view of the handle's own copy, valid until the
// next call on that handle (which may copy a newer version over it). Two
// words, so get() returns it without copying the record.
class Token {
  public:
    std::string_view token() const noexcept { return d_->token; }
    std::string_view token_type() const noexcept { return d_->token_type; }
    std::string_view scope() const noexcept { return d_->scope; }
    std::string_view last_error() const noexcept { return d_->last_error; }
    std::int64_t expires_at_ms() const noexcept { return d_->expires_at_ms; }  // Unix ms
    std::int64_t issued_at_ms() const noexcept { return d_->issued_at_ms; }
    std::int64_t next_refresh_ms() const noexcept { return d_->next_refresh_ms; }
    std::int64_t last_attempt_ms() const noexcept { return d_->last_attempt_ms; }
    // Grows with every publish, across refresher restarts.
    std::uint64_t version() const noexcept { return d_->version; }
    State state() const noexcept { return d_->state; }
    // Consecutive failed refreshes.
    std::uint32_t failures() const noexcept { return d_->failures; }
    // Since the refresher last said it was alive, as of the call that returned
    // this token; INT64_MAX for a heartbeat too far in the past to subtract.
    std::int64_t heartbeat_age_ms() const noexcept {
        std::int64_t age;
        if (__builtin_sub_overflow(now_ns_ / 1'000'000,
                                   d_->heartbeat_ms->load(std::memory_order_relaxed), &age))
            return std::numeric_limits<std::int64_t>::max();
        return age;
    }
    // A heartbeat within the last 3 s. One more than 3 s in the future is a
    // corrupt or foreign clock, not a live writer.
    bool writer_alive() const noexcept {
        const std::int64_t age = heartbeat_age_ms();
        return age < kWriterAliveWithinMs && age > -kWriterAliveWithinMs;
    }

    static constexpr std::int64_t kWriterAliveWithinMs = 3000;

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
    // "tokenshm"); overrides $TOKENSHM_TRUSTED_UID.
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
