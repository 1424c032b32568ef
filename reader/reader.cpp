#include <tokenshm/reader.hpp>
#include <tokenshm/shm/latch.hpp>
#include <tokenshm/shm/segment.hpp>

#include <time.h>

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <limits>

namespace tokenshm {

namespace detail {

struct Segment {
    shm::ReadOnlySegment seg;
    shm::ReadOnlySegment::Options trust;  // to reopen it by name with the same trust
};

// A handle's state: get()'s fast part first (reader.hpp), then what copying
// and waiting need.
struct HandleState : HandleFast {
    const std::atomic<std::uint32_t>* futex;
    shm::LatchReader latch;
    std::uint32_t max_token_bytes;
    std::size_t prefetch_bytes;  // of the last record copied; the whole record before
    std::unique_ptr<std::uint64_t[]> buf_storage;
    std::uint64_t* buf;  // record_size bytes in buf_storage, placed by place_buffer()
    std::size_t buf_words;
    std::shared_ptr<const Segment> seg;  // keeps the mapping alive
    std::string name;
    // Copies the writer invalidated (tests read it through copy_retries()).
    // Relaxed, and touched on the retry path only.
    std::atomic<std::uint64_t> copy_retries{0};
    // Monotonic ns before which a dead writer's segment is not looked for
    // again under its name (reopen_if_replaced).
    std::int64_t next_replacement_probe_ns = 0;
};

}  // namespace detail

namespace {

constexpr int kMaxCopyAttempts = 1000;

// Expiry is judged with two clocks. CLOCK_REALTIME_COARSE is always served
// by the vDSO (no syscall, ~10 ns) but lags real time: by up to a tick, and by
// longer when the CPU that keeps time is preempted (seen on loaded VMs). It
// never runs ahead, so it can only make a token look younger. Far from the
// deadline that lag cannot matter; within kExactWithinMs of it, the exact
// CLOCK_REALTIME (vDSO where the clocksource allows, ~30 ns) decides. A
// refresher renews tokens long before that window, so the fast path is the
// common one.
constexpr std::int64_t kExactWithinMs = 2000;

// Milliseconds that a ns count can hold (about 292 years); deadlines are
// clamped to it.
constexpr std::int64_t kMaxMs = detail::kMaxFastMs;

inline std::int64_t now_ns_of(clockid_t clock) noexcept {
    struct timespec ts;
    ::clock_gettime(clock, &ts);
    return std::int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}
inline std::int64_t coarse_now_ns() noexcept {
    return now_ns_of(CLOCK_REALTIME_COARSE);
}

Error map_error(shm::SegmentErrc c) noexcept {
    switch (c) {
        case shm::SegmentErrc::no_segment:
            return Error::no_segment;
        case shm::SegmentErrc::incompatible:
            return Error::incompatible;
        case shm::SegmentErrc::untrusted:
            return Error::untrusted;
        case shm::SegmentErrc::invalid:
            return Error::invalid_argument;
        case shm::SegmentErrc::locked:
        case shm::SegmentErrc::no_space:
        case shm::SegmentErrc::system:
            return Error::system;
    }
    return Error::system;
}

std::int64_t monotonic_ns() noexcept {
    return now_ns_of(CLOCK_MONOTONIC);
}

constexpr std::uintptr_t kPage = 4096;

// Where in `storage` (record_size + kPage bytes) the handle's copy goes. The
// copy loop stores to it while loading from the shared copy a few words ahead;
// when the two addresses are equal modulo 4096 the core may take a load for a
// dependent of an earlier store (4K aliasing) and stall it. Measured on this
// project's Xeon, hot in L1: the scalar copy of 1 KiB takes 25 ns with the
// buffer 1-2 KiB away modulo 4096 and 32-37 ns with it 128-256 bytes above.
// So the buffer goes to the middle of the wider gap between the two shared
// copies' page offsets.
std::uint64_t* place_buffer(std::uint64_t* storage, const std::uint64_t* copy0,
                            const std::uint64_t* copy1) noexcept {
    const std::uintptr_t a = reinterpret_cast<std::uintptr_t>(copy0) % kPage;
    const std::uintptr_t b = reinterpret_cast<std::uintptr_t>(copy1) % kPage;
    const std::uintptr_t lo = a < b ? a : b, hi = a < b ? b : a;
    // The wider of the gaps lo..hi and hi..lo+kPage, and its middle.
    const std::uintptr_t mid =
        hi - lo >= kPage - (hi - lo) ? lo + (hi - lo) / 2 : hi + (kPage - (hi - lo)) / 2;
    const std::uintptr_t want = (mid % kPage) & ~std::uintptr_t{63};
    const std::uintptr_t base = reinterpret_cast<std::uintptr_t>(storage);
    const std::uintptr_t delta = (want + kPage - base % kPage) % kPage;
    return storage + delta / 8;  // storage is 8-aligned and want is 64-aligned: exact
}

// Points the handle's TokenData at the record `view` decoded from h.buf.
// `view` is a local of copy_record, kept in registers: had decode() written
// it to memory, reading its string_views back as 16-byte loads right after
// decode()'s 8-byte stores would stall on store forwarding (measured: about
// 15 ns more per copy).
inline void fill(detail::HandleState& h, const shm::RecordView& view) noexcept {
    h.data.record = view;
    // Clamped into [0, kMaxMs] ms whatever the record says, so get()'s fast
    // compare cannot overflow; 0 sends every get() to the slow path.
    const bool token = view.state != shm::RecordState::empty && !view.token.empty();
    const std::int64_t until_ms = view.expires_at_ms < kExactWithinMs
                                      ? 0
                                      : std::min(view.expires_at_ms - kExactWithinMs, kMaxMs);
    h.fast_until_ns = token ? until_ms * 1'000'000 : 0;
}

// Copies the record published as `s` (or a later one) into the handle. Out of
// line; its Expected<Done, Error> comes back in a register (expected.hpp).
Expected<Done, Error> copy_record(detail::HandleState& h, shm::LatchSeq s) noexcept {
    constexpr std::size_t kFixedWords = TOKENSHM_REC_FIXED_SIZE / 8;
    for (int attempt = 0; attempt < kMaxCopyAttempts; ++attempt) {
        // The head's lengths bound the copy: they may be mid-change, so they
        // are clamped to the slot, and try_read() rejects the copy if they
        // were. decode() reads them again from the validated copy (four
        // narrow loads of words stored earlier). Carried here across the
        // payload copy instead, they made g++ spill eight registers around
        // its unrolled loop; with the variant Expected's return through
        // memory that cost about 2.5 ns per copy of a 64-byte token
        // (bench/read_bench BM_get_changed, against the pre-refactor copy).
        auto payload_words = [&h](const std::uint64_t* head) noexcept {
            return shm::clamped_payload_words(shm::read_lengths(head), h.max_token_bytes);
        };
        // Records of a credential keep about the same size: prefetch as much
        // as the last one had, and the payload loads need not wait for its length.
        const shm::LatchCopy c =
            h.latch.try_read(s, h.prefetch_bytes, h.buf, kFixedWords, payload_words);
        if (c.copied) [[likely]] {
            shm::RecordView view;
            if (!shm::decode(h.buf, c.words, h.max_token_bytes, view)) {
                h.cached_seq = ~std::uint64_t{0};
                return Unexpected{Error::incompatible};
            }
            h.cached_seq = s.value();
            h.prefetch_bytes = c.words * 8;
            fill(h, view);
            return Done{};
        }
        h.copy_retries.store(h.copy_retries.load(std::memory_order_relaxed) + 1,
                             std::memory_order_relaxed);
        s = c.seq;
    }
    h.cached_seq = ~std::uint64_t{0};
    return Unexpected{Error::busy};
}

}  // namespace

const char* to_string(Error e) noexcept {
    switch (e) {
        case Error::no_segment:
            return "no segment (is tokenshm-refresher running?)";
        case Error::incompatible:
            return "segment incompatible or corrupt";
        case Error::untrusted:
            return "segment untrusted";
        case Error::no_such_credential:
            return "no such credential";
        case Error::empty:
            return "no token yet";
        case Error::expired:
            return "token expired";
        case Error::expiring:
            return "token expires sooner than required";
        case Error::reauth:
            return "grant rejected: a person must re-authorise";
        case Error::timeout:
            return "timed out";
        case Error::busy:
            return "segment busy: the writer republished during every retry";
        case Error::invalid_argument:
            return "invalid argument";
        case Error::buffer_too_small:
            return "buffer too small";
        case Error::system:
            return "system error";
        case Error::unreachable:
            return "refresher unreachable (no answer on its control socket)";
        case Error::refused:
            return "refused by the refresher";
    }
    return "unknown error";
}

int exit_code(Error e) noexcept {
    switch (e) {
        case Error::no_segment:
            return 3;
        case Error::no_such_credential:
            return 4;
        case Error::empty:
        case Error::expired:
        case Error::expiring:
        case Error::reauth:
        case Error::timeout:
        case Error::busy:
            return 5;
        case Error::incompatible:
        case Error::untrusted:
            return 6;
        case Error::invalid_argument:
            return 2;
        case Error::unreachable:
        case Error::refused:
            return 7;
        case Error::buffer_too_small:
        case Error::system:
            return 1;
    }
    return 1;
}

const char* to_string(State s) noexcept {
    return shm::to_string(static_cast<shm::RecordState>(s));
}

// ------------------------------------------------------ a recreated segment
//
// When the refresher recreates its segment (unlinked, truncated, replaced),
// it retires the old one: TOKENSHM_HDR_RETIRED and every slot
// TOKENSHM_SLOT_RETIRED. get()'s inline path already checks that the slot is
// active, so a retired slot sends it here, to the slow path, with nothing
// added to the fast one. A writer killed before it could retire anything is
// noticed when its token runs out: see reopen_if_replaced.

namespace {

constexpr std::int64_t kReplacementProbeEveryNs = 1'000'000'000;

// Points the handle at slot `idx` of `seg`: the slot's words, a copy buffer
// of its record size, and nothing copied yet. Allocates (lookup, and moving
// to a recreated segment: never the steady state).
void bind(detail::HandleState& h, std::shared_ptr<const detail::Segment> seg, std::uint32_t idx) {
    const shm::ReadOnlySegment& s = seg->seg;
    const shm::Geometry g = s.geometry();
    const shm::SlotControl* slot = s.slot(idx);
    h.seq = &slot->seq;
    h.status = &slot->status;
    h.futex = &slot->futex;
    h.data.heartbeat_ms = &s.header().heartbeat_ms;
    h.data.record = shm::RecordView{};
    h.cached_seq = ~std::uint64_t{0};
    h.fast_until_ns = 0;
    h.latch = shm::LatchReader{
        &slot->seq,
        {shm::copy_at(slot, g.record_size(), 0), shm::copy_at(slot, g.record_size(), 1)}};
    h.max_token_bytes = g.max_token_bytes;
    h.prefetch_bytes = g.record_size();
    if (!h.buf_storage || h.buf_words != g.record_size() / 8) {
        h.buf_words = g.record_size() / 8;
        h.buf_storage = std::make_unique<std::uint64_t[]>(h.buf_words + kPage / 8);
    }
    h.buf = place_buffer(h.buf_storage.get(), h.latch.copy[0], h.latch.copy[1]);
    h.seg = std::move(seg);
}

// The segment now at `cur`'s name, opened with the same trust.
Expected<std::shared_ptr<const detail::Segment>, Error> open_again(
    const detail::Segment& cur) noexcept {
    try {
        auto seg = shm::ReadOnlySegment::open(cur.seg.name(), cur.trust);
        if (!seg) return Unexpected{map_error(seg.error().code)};
        return std::make_shared<const detail::Segment>(detail::Segment{std::move(*seg), cur.trust});
    } catch (...) {  // allocation
        return Unexpected{Error::system};
    }
}

// Moves the handle to its credential in `seg`.
Expected<Done, Error> move_to(detail::HandleState& h,
                              std::shared_ptr<const detail::Segment> seg) noexcept {
    const auto idx = seg->seg.find(h.name);
    if (!idx) return Unexpected{Error::no_such_credential};
    try {
        bind(h, std::move(seg), *idx);
    } catch (...) {  // allocation
        return Unexpected{Error::system};
    }
    return Done{};
}

// The handle's slot is not active: removed (no_such_credential), or its
// segment retired, and then the handle moves to the segment at the name, or
// gets that one's typed error (no_segment, untrusted, incompatible...).
Expected<Done, Error> follow_retired(detail::HandleState& h) noexcept {
    if (h.status->load(std::memory_order_acquire) != TOKENSHM_SLOT_RETIRED && !h.seg->seg.retired())
        return Unexpected{Error::no_such_credential};
    auto seg = open_again(*h.seg);
    if (!seg) return Unexpected{seg.error()};
    if ((*seg)->seg.same_file(h.seg->seg)) return Unexpected{Error::no_such_credential};
    return move_to(h, std::move(*seg));
}

// Called when get() has no usable token. A writer killed before it could
// retire its segment, whose name another refresher has since filled with a
// new segment, leaves the handle on a dead one: when the heartbeat says the
// writer is dead, look (at most once a second) for another file at the name.
// nullopt: nothing better found; else the handle moved (Done) or the segment
// now at the name cannot be used (its typed error).
std::optional<Expected<Done, Error>> reopen_if_replaced(detail::HandleState& h) noexcept {
    const std::int64_t now = monotonic_ns();
    if (now < h.next_replacement_probe_ns) return std::nullopt;
    h.next_replacement_probe_ns = now + kReplacementProbeEveryNs;
    // Token::writer_alive's rule. The heartbeat is the segment's word: a
    // hostile one (INT64_MIN) must not overflow the subtraction.
    const std::int64_t beat = h.data.heartbeat_ms->load(std::memory_order_relaxed);
    std::int64_t age;
    if (!__builtin_sub_overflow(coarse_now_ns() / 1'000'000, beat, &age) &&
        age < Token::kWriterAliveWithinMs && age > -Token::kWriterAliveWithinMs)
        return std::nullopt;  // alive: it will publish, or retire this one
    auto seg = open_again(*h.seg);
    if (!seg) {
        if (seg.error() == Error::untrusted || seg.error() == Error::incompatible)
            return Expected<Done, Error>{Unexpected{seg.error()}};
        return std::nullopt;
    }
    if ((*seg)->seg.same_file(h.seg->seg)) return std::nullopt;
    return move_to(h, std::move(*seg));
}

}  // namespace

// ------------------------------------------------------------------ Handle

Handle::Handle(std::unique_ptr<detail::HandleState> s) noexcept
    : s_(std::move(s)), fast_(s_.get()) {}
Handle::Handle(Handle&&) noexcept = default;
Handle& Handle::operator=(Handle&&) noexcept = default;
Handle::~Handle() = default;

const std::string& Handle::name() const noexcept {
    return s_->name;
}

std::string Handle::control_socket() const {
    return s_->seg->seg.control_socket();
}

std::string Reader::control_socket() const {
    return seg_->seg.control_socket();
}

std::uint64_t detail::copy_retries(const Handle& h) noexcept {
    return h.s_->copy_retries.load(std::memory_order_relaxed);
}

namespace {
// Brings the handle's copy up to date: a no-op (one atomic load) when the
// slot's sequence has not moved since the last copy. A slot whose segment
// was retired sends the handle to the new segment at the name.
inline Expected<Done, Error> sync(detail::HandleState& h) noexcept {
    if (h.status->load(std::memory_order_relaxed) != TOKENSHM_SLOT_ACTIVE) [[unlikely]] {
        if (auto moved = follow_retired(h); !moved) return Unexpected{moved.error()};
        if (h.status->load(std::memory_order_relaxed) != TOKENSHM_SLOT_ACTIVE)
            return Unexpected{Error::no_such_credential};
    }
    const shm::LatchSeq s = h.latch.current();
    if (s.value() != h.cached_seq) return copy_record(h, s);
    return Done{};
}

bool no_usable_token(Error e) noexcept {
    return e == Error::empty || e == Error::expired || e == Error::expiring || e == Error::reauth;
}

// get() off its fast path: a new version to copy, no token, an unusual
// min_valid, or a deadline near enough that the exact clock must decide.
// Returns the time (Unix ns) at which the copy was judged a token valid for
// `min_valid_ms` more.
Expected<std::int64_t, Error> check_slow(detail::HandleState& h,
                                         std::int64_t min_valid_ms) noexcept {
    if (auto synced = sync(h); !synced) return Unexpected{synced.error()};
    const shm::RecordView& d = h.data.record;
    if (d.state == shm::RecordState::empty || d.token.empty()) return Unexpected{Error::empty};
    // A negative min_valid asks for nothing, never for an expired token.
    const std::int64_t need = std::max<std::int64_t>(min_valid_ms, 0);
    std::int64_t now_ns = coarse_now_ns();
    std::int64_t now_ms = now_ns / 1'000'000;
    // Differences are taken only when expires_at_ms > now_ms >= 0, so none
    // can overflow whatever the record holds.
    if (d.expires_at_ms > now_ms && d.expires_at_ms - now_ms - kExactWithinMs > need) return now_ns;
    now_ns = now_ns_of(CLOCK_REALTIME);
    now_ms = now_ns / 1'000'000;
    if (d.expires_at_ms <= now_ms)
        return Unexpected{d.state == shm::RecordState::reauth ? Error::reauth : Error::expired};
    if (d.expires_at_ms - now_ms < need) return Unexpected{Error::expiring};
    return now_ns;
}

}  // namespace

Expected<Token, Error> Handle::get_slow(std::chrono::milliseconds min_valid) noexcept {
    detail::HandleState& h = *s_;
    auto judged = check_slow(h, min_valid.count());
    if (!judged && no_usable_token(judged.error())) {
        if (auto moved = reopen_if_replaced(h)) {
            if (!*moved) return Unexpected{moved->error()};
            judged = check_slow(h, min_valid.count());
        }
    }
    if (!judged) return Unexpected{judged.error()};
    return Token(&h.data, *judged);
}

Expected<Token, Error> Handle::inspect() noexcept {
    detail::HandleState& h = *s_;
    if (auto synced = sync(h); !synced) return Unexpected{synced.error()};
    return Token(&h.data, coarse_now_ns());
}

Expected<Token, Error> Handle::wait(std::uint64_t seen_version, std::chrono::milliseconds timeout,
                                    std::chrono::milliseconds min_valid) noexcept {
    detail::HandleState& h = *s_;
    const std::int64_t start_ns = monotonic_ns();
    // Clamped so the conversion to ns cannot overflow (about 292 years).
    const std::int64_t limit_ns =
        timeout.count() < 0 ? -1 : std::min<std::int64_t>(timeout.count(), kMaxMs) * 1'000'000;
    for (;;) {
        // Read the futex word before the check, so a publish between the
        // check and FUTEX_WAIT changes it and the wait returns at once.
        const std::uint32_t f = h.futex->load(std::memory_order_acquire);
        if (auto synced = sync(h); !synced) return Unexpected{synced.error()};
        if (h.data.record.version > seen_version) return get(min_valid);
        std::int64_t left_ns = -1;
        if (limit_ns >= 0) {
            left_ns = limit_ns - (monotonic_ns() - start_ns);
            if (left_ns <= 0) return Unexpected{Error::timeout};
        }
        // Woken, timed out or interrupted: the loop looks again either way.
        if (!shm::sys::futex_wait(h.futex, f, left_ns)) return Unexpected{Error::system};
    }
}

// ------------------------------------------------------------------ Reader

namespace {
// The segment to open: `explicit_name`, else $TOKENSHM_SEGMENT, else "tokenshm".
std::string resolve_segment_name(std::string_view explicit_name) {
    if (!explicit_name.empty()) return std::string(explicit_name);
    if (const char* env = std::getenv("TOKENSHM_SEGMENT"); env != nullptr && *env != '\0')
        return env;
    return "tokenshm";
}

// The uid to trust besides the defaults: `given`, else $TOKENSHM_TRUSTED_UID.
Expected<std::optional<uid_t>, Failure> resolve_trusted_uid(std::optional<uid_t> given) {
    if (given) return given;
    const char* env = std::getenv("TOKENSHM_TRUSTED_UID");
    if (env == nullptr || *env == '\0') return std::optional<uid_t>{};
    unsigned long v = 0;
    const char* end = env + std::strlen(env);
    auto [p, ec] = std::from_chars(env, end, v);
    if (ec != std::errc{} || p != end || v > 0xFFFFFFFEul)
        return Unexpected{Failure{Error::invalid_argument,
                                  "TOKENSHM_TRUSTED_UID is not a uid: '" + std::string(env) + "'"}};
    return std::optional<uid_t>{static_cast<uid_t>(v)};
}
}  // namespace

Expected<Reader, Failure> Reader::open(std::string_view segment, const OpenOptions& options) {
    const std::string name = resolve_segment_name(segment);
    auto trusted = resolve_trusted_uid(options.trusted_uid);
    if (!trusted) return Unexpected{std::move(trusted).error()};
    shm::ReadOnlySegment::Options o;
    o.trusted_uid = *trusted;
    auto seg = shm::ReadOnlySegment::open(name, o);
    if (!seg)
        return Unexpected{Failure{map_error(seg.error().code), std::move(seg).error().message}};
    Reader r;
    r.seg_ = std::make_shared<const detail::Segment>(detail::Segment{std::move(*seg), o});
    return r;
}

namespace {
// The reader's segment, or, once its writer retired it, the one now at its
// name (not kept: each handle keeps the segment it reads).
std::shared_ptr<const detail::Segment> current_segment(
    const std::shared_ptr<const detail::Segment>& seg) {
    if (!seg->seg.retired()) return seg;
    auto again = open_again(*seg);
    return again ? *again : seg;
}
}  // namespace

Expected<Handle, Failure> Reader::lookup(std::string_view credential) const {
    std::shared_ptr<const detail::Segment> current = current_segment(seg_);
    const shm::ReadOnlySegment& seg = current->seg;
    const auto idx = seg.find(credential);
    if (!idx)
        return Unexpected{Failure{
            Error::no_such_credential,
            "segment '" + seg.name() + "' has no credential '" + std::string(credential) + "'"}};
    auto h = std::make_unique<detail::HandleState>();
    h->name = std::string(credential);
    bind(*h, std::move(current), *idx);
    return Handle(std::move(h));
}

std::vector<std::string> Reader::credentials() const {
    const std::shared_ptr<const detail::Segment> current = current_segment(seg_);
    const shm::ReadOnlySegment& seg = current->seg;
    std::vector<std::string> out;
    for (std::uint32_t i = 0; i < seg.geometry().slot_count; ++i) {
        const shm::SlotControl* s = seg.slot(i);
        if (s->status.load(std::memory_order_acquire) != TOKENSHM_SLOT_ACTIVE) continue;
        out.emplace_back(s->name, ::strnlen(s->name, sizeof s->name));
    }
    return out;
}

WriterStatus Reader::writer() const {
    const std::shared_ptr<const detail::Segment> current = current_segment(seg_);
    const shm::WriterInfo w = current->seg.writer();
    WriterStatus st;
    st.pid = w.pid;
    st.start_ms = w.start_ms;
    st.heartbeat_ms = w.heartbeat_ms;
    st.generation = w.generation;
    const auto held = current->seg.writer_holds_lock();
    st.lock_held = held && *held;
    return st;
}

const std::string& Reader::segment_name() const noexcept {
    return seg_->seg.name();
}
std::uint32_t Reader::max_token_bytes() const noexcept {
    return seg_->seg.geometry().max_token_bytes;
}

}  // namespace tokenshm
