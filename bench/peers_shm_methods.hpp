// The in-memory peers: each a Server (serve's side: creates the shared state,
// publish(version) writes the token of that version) and a Reader (attaches
// from DIR; read() returns the token, checked for expiry with the coarse
// realtime clock). Readers that keep a copy re-copy only when the version
// changed, as a careful user would.
#pragma once

#include "peers_harness.hpp"
#include "peers_setup.hpp"

#include <tokenshm/tokenshm.h>
#include <tokenshm/reader.hpp>
#include <tokenshm/shm/segment.hpp>

#include <pthread.h>
#include <sched.h>

#include <atomic>
#include <boost/interprocess/sync/interprocess_mutex.hpp>
#include <cstring>
#include <mutex>
#include <new>
#include <optional>
#include <string>
#include <vector>

namespace peers {

// The region of every shm method: control words, then the token at kTokenAt.
struct ShmHead {
    alignas(64) std::atomic<std::uint64_t> seq;  // floor, memcpy: the version; seqlocks: the count
    std::atomic<std::uint32_t> refreshing;       // legacy: set while "refreshing"
    std::atomic<std::int64_t> expires_at_ms;     // floor, memcpy
    alignas(64) unsigned char lock[64];          // mutex or rwlock, placement-new'd
    alignas(64) std::uint64_t version;           // under the lock or the seqlock
    std::int64_t expires_under_lock;
};
constexpr std::size_t kTokenAt = sizeof(ShmHead);
static_assert(kTokenAt % 64 == 0);
static_assert(sizeof(boost::interprocess::interprocess_mutex) <= 64);
static_assert(sizeof(pthread_rwlock_t) <= 64);
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);

// Serve's side of an shm method: the region, a private token buffer.
struct ShmServer {
    std::size_t bytes;
    SharedRegion region;
    std::vector<char> fresh;  // the next token, prepared outside any lock
    explicit ShmServer(const Config& c)
        : bytes(c.token_bytes),
          region(SharedRegion::create(c, kTokenAt + c.token_bytes)),
          fresh(c.token_bytes) {
        new (region.addr()) ShmHead{};
    }
    ShmHead& head() const noexcept { return *static_cast<ShmHead*>(region.addr()); }
    char* token() const noexcept { return static_cast<char*>(region.addr()) + kTokenAt; }
};

struct ShmClient {
    std::size_t bytes;
    SharedRegion region;
    explicit ShmClient(const Config& c)
        : bytes(c.token_bytes), region(SharedRegion::open(c, kTokenAt + c.token_bytes)) {}
    ShmHead& head() const noexcept { return *static_cast<ShmHead*>(region.addr()); }
    const char* token() const noexcept { return static_cast<char*>(region.addr()) + kTokenAt; }
};

// floor and memcpy: no protocol. The writer stores the token, then the version.
struct PlainServer : ShmServer {
    using ShmServer::ShmServer;
    void publish(std::uint64_t v) {
        fill_token(fresh.data(), bytes, v);
        std::memcpy(token(), fresh.data(), bytes);
        head().expires_at_ms.store(expires_in_an_hour(), std::memory_order_relaxed);
        head().seq.store(v, std::memory_order_release);
    }
};

// floor: one 8-byte load of the version word and the clock.
struct FloorReader : ShmClient {
    using ShmClient::ShmClient;
    View read() noexcept {
        View v;
        v.version = head().seq.load(std::memory_order_relaxed);
        if (expired(head().expires_at_ms.load(std::memory_order_relaxed)))
            v.status = Status::expired;
        return v;
    }
};

// memcpy: the token's bytes copied out of shm, no protocol (may tear).
struct MemcpyReader : ShmClient {
    std::vector<char> buf;
    explicit MemcpyReader(const Config& c) : ShmClient(c), buf(c.token_bytes) {}
    View read() noexcept {
        std::memcpy(buf.data(), token(), bytes);
        View v{buf.data(), static_cast<std::uint32_t>(bytes)};
        if (expired(head().expires_at_ms.load(std::memory_order_relaxed)))
            v.status = Status::expired;
        return v;
    }
};

// A reader's private copy, refreshed when the version changed.
struct Cache {
    std::vector<char> buf;
    std::uint64_t version = 0;
    std::int64_t expires_at_ms = 0;
    View view(std::size_t bytes) const noexcept {
        View v{buf.data(), static_cast<std::uint32_t>(bytes), Status::ok, version};
        if (expired(expires_at_ms)) v.status = Status::expired;
        return v;
    }
};

// mutex: boost::interprocess::interprocess_mutex (process-shared) in shm.
struct MutexServer : ShmServer {
    using Mutex = boost::interprocess::interprocess_mutex;
    explicit MutexServer(const Config& c) : ShmServer(c) { new (head().lock) Mutex; }
    Mutex& mutex() const noexcept { return *std::launder(reinterpret_cast<Mutex*>(head().lock)); }
    void publish(std::uint64_t v) {
        fill_token(fresh.data(), bytes, v);
        std::lock_guard<Mutex> g(mutex());
        std::memcpy(token(), fresh.data(), bytes);
        head().version = v;
        head().expires_under_lock = expires_in_an_hour();
    }
};

struct MutexReader : ShmClient {
    Cache cache;
    explicit MutexReader(const Config& c) : ShmClient(c) { cache.buf.resize(c.token_bytes); }
    View read() noexcept {
        auto& m = *std::launder(reinterpret_cast<MutexServer::Mutex*>(head().lock));
        m.lock();
        if (head().version != cache.version) {
            std::memcpy(cache.buf.data(), token(), bytes);
            cache.version = head().version;
            cache.expires_at_ms = head().expires_under_lock;
        }
        m.unlock();
        return cache.view(bytes);
    }
};

// rwlock: pthread_rwlock_t with PTHREAD_PROCESS_SHARED in shm.
struct RwlockServer : ShmServer {
    explicit RwlockServer(const Config& c);
    pthread_rwlock_t* lock() const noexcept {
        return reinterpret_cast<pthread_rwlock_t*>(head().lock);
    }
    void publish(std::uint64_t v);
};

struct RwlockReader : ShmClient {
    Cache cache;
    explicit RwlockReader(const Config& c) : ShmClient(c) { cache.buf.resize(c.token_bytes); }
    View read() noexcept {
        auto* l = reinterpret_cast<pthread_rwlock_t*>(head().lock);
        if (::pthread_rwlock_rdlock(l) != 0) return View{nullptr, 0, Status::error};
        if (head().version != cache.version) {
            std::memcpy(cache.buf.data(), token(), bytes);
            cache.version = head().version;
            cache.expires_at_ms = head().expires_under_lock;
        }
        ::pthread_rwlock_unlock(l);
        return cache.view(bytes);
    }
};

// seqlock: one copy; seq odd while the writer writes it (Boehm 2012; the
// acquire fence orders the copy's loads before the second load of seq).
struct SeqlockServer : ShmServer {
    using ShmServer::ShmServer;
    std::mutex writers;  // legacy publishes from two threads
    void publish(std::uint64_t v) {
        fill_token(fresh.data(), bytes, v);
        std::lock_guard<std::mutex> g(writers);
        const std::uint64_t s = head().seq.load(std::memory_order_relaxed);
        head().seq.store(s + 1, std::memory_order_relaxed);
        std::atomic_thread_fence(std::memory_order_release);  // odd seq before the data
        std::memcpy(token(), fresh.data(), bytes);
        head().version = v;
        head().expires_under_lock = expires_in_an_hour();
        head().seq.store(s + 2, std::memory_order_release);  // the data before even seq
    }
};

// Waits out a writer that holds seq odd; yields when it was preempted.
inline void seqlock_pause(int& spins) noexcept {
#if defined(__x86_64__)
    _mm_pause();
#endif
    if (++spins % 256 == 0) ::sched_yield();
}

struct SeqlockReader : ShmClient {
    Cache cache;
    std::uint64_t cached_seq = 0;
    explicit SeqlockReader(const Config& c) : ShmClient(c) { cache.buf.resize(c.token_bytes); }
    View read() noexcept {
        std::uint64_t s = head().seq.load(std::memory_order_acquire);
        if (s == cached_seq) [[likely]]
            return cache.view(bytes);
        for (int spins = 0;; s = head().seq.load(std::memory_order_acquire)) {
            if (s & 1) {
                seqlock_pause(spins);
                continue;
            }
            std::memcpy(cache.buf.data(), token(), bytes);
            cache.version = head().version;
            cache.expires_at_ms = head().expires_under_lock;
            std::atomic_thread_fence(std::memory_order_acquire);  // the copy before the re-check
            if (head().seq.load(std::memory_order_relaxed) == s) break;
            seqlock_pause(spins);
        }
        cached_seq = s;
        return cache.view(bytes);
    }
};

// legacy: the design tokenshm replaced. While the writer "refreshes" (a flag
// set for 100 ms once a second) a reader sleeps 300 ms and looks again, up
// to 20 times, then reads (a seqlock copy, cached by version).
struct LegacyReader : SeqlockReader {
    using SeqlockReader::SeqlockReader;
    static constexpr bool kRecordStalls = true;  // see record_stall
    View read() noexcept {
        for (int i = 0; i < 20 && head().refreshing.load(std::memory_order_acquire) != 0; ++i) {
            struct timespec ts = {0, 300'000'000};
            while (::nanosleep(&ts, &ts) != 0 && errno == EINTR) {
            }
        }
        return SeqlockReader::read();
    }
};

// tokenshm: a one-slot segment written with WriterSegment::publish, the
// refresher's own call.
struct TokenshmServer {
    std::size_t bytes;
    std::string name;
    std::optional<tokenshm::shm::WriterSegment> writer;
    std::uint32_t slot = 0;
    std::string fresh;
    explicit TokenshmServer(const Config& c);
    void publish(std::uint64_t v);
};

struct TokenshmReader {
    std::optional<tokenshm::Handle> handle;
    explicit TokenshmReader(const Config& c);
    View read() noexcept {
        const auto t = handle->get();
        if (!t) [[unlikely]]
            return View{nullptr, 0,
                        t.error() == tokenshm::Error::expired ? Status::expired : Status::error};
        return View{t->token().data(), static_cast<std::uint32_t>(t->token().size()), Status::ok,
                    t->version()};
    }
};

// tokenshm_c: the C ABI's copy into the caller's buffer.
struct TokenshmCReader {
    tokenshm_handle* handle = nullptr;
    std::vector<char> buf;
    explicit TokenshmCReader(const Config& c);
    TokenshmCReader(const TokenshmCReader&) = delete;
    TokenshmCReader& operator=(const TokenshmCReader&) = delete;
    ~TokenshmCReader() { tokenshm_handle_close(handle); }
    View read() noexcept {
        std::size_t len = 0;
        const tokenshm_error e =
            tokenshm_get_into(handle, 0, buf.data(), buf.size(), &len, nullptr);
        if (e != TOKENSHM_OK) [[unlikely]]
            return View{nullptr, 0, e == TOKENSHM_ERR_EXPIRED ? Status::expired : Status::error};
        return View{buf.data(), static_cast<std::uint32_t>(len)};
    }
};

// The segment's name, its single slot's name.
constexpr const char* kSlotName = "tok";

}  // namespace peers
