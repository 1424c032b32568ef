// The segment layout as C++ types. The C header <tokenshm/layout.h> is the
// contract other languages read; every offset here is asserted against it.
#pragma once

#include <tokenshm/layout.h>

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace tokenshm::shm {

inline constexpr std::uint64_t kMagic = TOKENSHM_MAGIC;
inline constexpr std::uint16_t kMajor = TOKENSHM_MAJOR;
inline constexpr std::uint16_t kMinor = TOKENSHM_MINOR;
inline constexpr std::size_t kCacheLine = TOKENSHM_CACHE_LINE;

struct alignas(kCacheLine) Header {
    // Line 0: geometry, written once before `magic` is published, never again.
    std::atomic<std::uint64_t> magic;
    std::uint16_t major;
    std::uint16_t minor;
    std::uint32_t header_size;
    std::uint32_t slot_count;
    std::uint32_t slot_size;
    std::uint32_t max_token_bytes;
    std::uint32_t record_size;
    std::uint64_t total_size;
    std::int64_t created_ms;
    std::uint8_t pad0[16];
    // Line 1: who writes. Changes once per refresher start.
    std::atomic<std::int64_t> writer_pid;
    std::atomic<std::int64_t> writer_start_ms;
    std::atomic<std::uint64_t> writer_generation;
    std::atomic<std::uint32_t> retired;  // minor 1: 0, or 1 once replaced by a new segment
    std::uint8_t pad1[36];
    // Line 2: heartbeat, alone on its line so its once-a-second store does not
    // evict the geometry line from readers' caches.
    alignas(kCacheLine) std::atomic<std::int64_t> heartbeat_ms;
    // Minor 2: the control socket's path, NUL-padded; written at attach,
    // read on readers' slow path only, so sharing the heartbeat's line is fine.
    char control_socket[TOKENSHM_CONTROL_SOCKET_CAP];
    std::uint8_t pad2[12];
};

struct alignas(kCacheLine) SlotControl {
    std::atomic<std::uint64_t> seq;
    std::atomic<std::uint32_t> futex;
    std::atomic<std::uint32_t> status;
    std::uint8_t pad[48];
    char name[TOKENSHM_SLOT_NAME_CAP];
};

static_assert(sizeof(Header) == TOKENSHM_HEADER_SIZE);
static_assert(offsetof(Header, magic) == TOKENSHM_HDR_MAGIC);
static_assert(offsetof(Header, major) == TOKENSHM_HDR_MAJOR);
static_assert(offsetof(Header, minor) == TOKENSHM_HDR_MINOR);
static_assert(offsetof(Header, header_size) == TOKENSHM_HDR_HEADER_SIZE);
static_assert(offsetof(Header, slot_count) == TOKENSHM_HDR_SLOT_COUNT);
static_assert(offsetof(Header, slot_size) == TOKENSHM_HDR_SLOT_SIZE);
static_assert(offsetof(Header, max_token_bytes) == TOKENSHM_HDR_MAX_TOKEN_BYTES);
static_assert(offsetof(Header, record_size) == TOKENSHM_HDR_RECORD_SIZE);
static_assert(offsetof(Header, total_size) == TOKENSHM_HDR_TOTAL_SIZE);
static_assert(offsetof(Header, created_ms) == TOKENSHM_HDR_CREATED_MS);
static_assert(offsetof(Header, writer_pid) == TOKENSHM_HDR_WRITER_PID);
static_assert(offsetof(Header, writer_start_ms) == TOKENSHM_HDR_WRITER_START_MS);
static_assert(offsetof(Header, writer_generation) == TOKENSHM_HDR_WRITER_GENERATION);
static_assert(offsetof(Header, retired) == TOKENSHM_HDR_RETIRED);
static_assert(offsetof(Header, heartbeat_ms) == TOKENSHM_HDR_HEARTBEAT_MS);
static_assert(offsetof(Header, heartbeat_ms) % kCacheLine == 0);
static_assert(offsetof(Header, control_socket) == TOKENSHM_HDR_CONTROL_SOCKET);

static_assert(sizeof(SlotControl) == TOKENSHM_SLOT_COPIES);
static_assert(offsetof(SlotControl, seq) == TOKENSHM_SLOT_SEQ);
static_assert(offsetof(SlotControl, seq) % kCacheLine == 0);
static_assert(alignof(SlotControl) == kCacheLine);
static_assert(offsetof(SlotControl, futex) == TOKENSHM_SLOT_FUTEX);
static_assert(offsetof(SlotControl, status) == TOKENSHM_SLOT_STATUS);
static_assert(offsetof(SlotControl, name) == TOKENSHM_SLOT_NAME);

// Every shared atomic must be a plain load/store, never a libatomic call: a
// libatomic fallback may write (cmpxchg) and fault on a read-only mapping.
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);
static_assert(std::atomic<std::int64_t>::is_always_lock_free);
static_assert(std::atomic<std::uint32_t>::is_always_lock_free);
static_assert(std::atomic_ref<std::uint64_t>::is_always_lock_free);
static_assert(sizeof(std::atomic<std::uint64_t>) == 8 && sizeof(std::atomic<std::uint32_t>) == 4);

constexpr std::size_t round_up(std::size_t n, std::size_t to) {
    return (n + to - 1) / to * to;
}

// Geometry derived from max_token_bytes; the writer and every reader compute
// it the same way, so a header whose sizes disagree is rejected.
struct Geometry {
    std::uint32_t max_token_bytes;
    std::uint32_t slot_count;

    constexpr std::size_t payload_cap() const {
        return std::size_t{TOKENSHM_TYPE_CAP} + TOKENSHM_SCOPE_CAP + TOKENSHM_ERROR_CAP +
               max_token_bytes;
    }
    constexpr std::size_t record_size() const {
        return round_up(TOKENSHM_REC_FIXED_SIZE + payload_cap(), kCacheLine);
    }
    constexpr std::size_t slot_size() const { return TOKENSHM_SLOT_COPIES + 2 * record_size(); }
    constexpr std::size_t total_size() const {
        return TOKENSHM_HEADER_SIZE + std::size_t{slot_count} * slot_size();
    }
};

// Shared-memory pointers into one slot.
inline SlotControl* slot_at(void* base, std::size_t slot_size, std::uint32_t i) {
    return reinterpret_cast<SlotControl*>(static_cast<char*>(base) + TOKENSHM_HEADER_SIZE +
                                          std::size_t{i} * slot_size);
}
inline const SlotControl* slot_at(const void* base, std::size_t slot_size, std::uint32_t i) {
    return reinterpret_cast<const SlotControl*>(static_cast<const char*>(base) +
                                                TOKENSHM_HEADER_SIZE + std::size_t{i} * slot_size);
}
inline const std::uint64_t* copy_at(const SlotControl* s, std::size_t record_size, unsigned which) {
    return reinterpret_cast<const std::uint64_t*>(reinterpret_cast<const char*>(s) +
                                                  TOKENSHM_SLOT_COPIES + which * record_size);
}
inline std::uint64_t* copy_at(SlotControl* s, std::size_t record_size, unsigned which) {
    return reinterpret_cast<std::uint64_t*>(reinterpret_cast<char*>(s) + TOKENSHM_SLOT_COPIES +
                                            which * record_size);
}

}  // namespace tokenshm::shm
