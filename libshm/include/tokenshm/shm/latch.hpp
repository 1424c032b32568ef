// Latch: a sequence counter in front of two copies of a record.
//
// Why it is correct. A record is written by one process and copied by many
// while it may be changing, which in C++ is only defined behaviour when every
// racing access is atomic (Boehm, "Can Seqlocks Get Along With Programming
// Language Memory Models?", MSPC 2012; WG21 P1478). So the copies are read and
// written only as relaxed 8-byte atomics, and the sequence word orders them:
//
//   writer, publish n+1                   reader
//   ------------------------------------  -------------------------------------
//   fence(release)          (F)           s  = seq.load(acquire)           (A)
//   store words of copy[(n+1)&1] relaxed  load words of copy[s&1] relaxed
//   seq.store(n+1, release) (R)           fence(acquire)                   (G)
//                                         s2 = seq.load(relaxed); ok iff s2 == s
//
// A reader that sees seq == s (A synchronises with R of publish s) sees every
// word of copy[s&1] as published. The writer only ever writes the copy readers
// are *not* directed to; it next writes copy[s&1] during publish s+2, after
// storing seq = s+1. If any word the reader loaded came from that later write,
// F (issued after seq = s+1) synchronises with G, so the reader's second load
// sees seq >= s+1 and it retries. Hence a copy that passes the check is exactly
// the record of publish s: never torn, never mixed.
//
// The writer can be killed at any instruction: seq changes in one store, so it
// always names a complete copy, and a new writer just overwrites the other one.
// There is no "mid-write" counter state to repair.
//
// Cost. An 8-byte relaxed load is the widest well-defined lock-free load on
// x86-64 (a 16-byte std::atomic goes through libatomic's cmpxchg16b, which
// writes, and faults on a read-only mapping: never use one), and g++ 12 does
// not vectorise relaxed atomic loads; nor does it fold them into SSE loads
// (tried: as double, combined with unpcklpd or _mm256_set, all slower). So the
// copy moves 8 bytes per load where memcpy moves 32 or 64, unrolled by eight
// words, and is load- and store-bound: about 4-7x a memcpy of 1 KiB when both
// run from this core's L1. That is not the case that happens: a reader copies
// right after the writer, on another core, wrote the record, and then the
// cache-line transfers dominate. There the copy plus get()'s validation and
// decode run at about 1.3x a memcpy of the same fresh 1 KiB, because
// LatchReader::try_read()'s prefetch puts all the record's lines in flight at once
// (bench/cross_core_bench.cpp; docs/PERFORMANCE.md). SSE loads in an asm block
// would leave the C++ memory model for the x86 one; we keep the copy defined.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace tokenshm::shm {

namespace detail {
inline std::uint64_t load_word(const std::uint64_t* p) noexcept {
    // atomic_ref's load does not write, so the const_cast is sound on a PROT_READ page.
    return std::atomic_ref<std::uint64_t>(*const_cast<std::uint64_t*>(p))
        .load(std::memory_order_relaxed);
}
inline void store_word(std::uint64_t* p, std::uint64_t v) noexcept {
    std::atomic_ref<std::uint64_t>(*p).store(v, std::memory_order_relaxed);
}
}  // namespace detail

// Copies `words` 8-byte words out of shared memory with relaxed atomic loads.
inline void load_words(std::uint64_t* __restrict dst, const std::uint64_t* src,
                       std::size_t words) noexcept {
    std::size_t i = 0;
    for (; i + 8 <= words; i += 8) {
        const std::uint64_t w0 = detail::load_word(src + i + 0);
        const std::uint64_t w1 = detail::load_word(src + i + 1);
        const std::uint64_t w2 = detail::load_word(src + i + 2);
        const std::uint64_t w3 = detail::load_word(src + i + 3);
        const std::uint64_t w4 = detail::load_word(src + i + 4);
        const std::uint64_t w5 = detail::load_word(src + i + 5);
        const std::uint64_t w6 = detail::load_word(src + i + 6);
        const std::uint64_t w7 = detail::load_word(src + i + 7);
        dst[i + 0] = w0;
        dst[i + 1] = w1;
        dst[i + 2] = w2;
        dst[i + 3] = w3;
        dst[i + 4] = w4;
        dst[i + 5] = w5;
        dst[i + 6] = w6;
        dst[i + 7] = w7;
    }
    for (; i < words; ++i)
        dst[i] = detail::load_word(src + i);
}

// Copies `words` words into shared memory with relaxed atomic stores.
inline void store_words(std::uint64_t* dst, const std::uint64_t* __restrict src,
                        std::size_t words) noexcept {
    for (std::size_t i = 0; i < words; ++i)
        detail::store_word(dst + i, src[i]);
}

// Stands in for a writer hook when none is wanted; compiles to nothing.
struct NoHook {
    void operator()() const noexcept {}
};

// The writer's side. `seq` and `copies` point into one slot.
struct LatchWriter {
    std::atomic<std::uint64_t>* seq;
    std::uint64_t* copy[2];

    // Publishes `words` words of `image`; returns the new sequence number.
    // `mid_copy` runs between the two halves of the copy: a test's fault
    // injection point (a writer killed there leaves a half-written copy that
    // no reader is directed to).
    template <class MidCopy = NoHook>
    std::uint64_t publish(const std::uint64_t* image, std::size_t words,
                          MidCopy&& mid_copy = {}) const noexcept {
        const std::uint64_t s = seq->load(std::memory_order_relaxed);  // we are the only writer
        std::uint64_t* dst = copy[(s + 1) & 1];
        // F: orders our earlier store of seq (= s) before the word stores below,
        // so a reader that loads any of them also sees seq >= s and retries.
        std::atomic_thread_fence(std::memory_order_release);
        const std::size_t half = words / 2;
        store_words(dst, image, half);
        mid_copy();
        store_words(dst + half, image + half, words - half);
        // R: makes the words above visible to a reader that acquires seq = s+1.
        seq->store(s + 1, std::memory_order_release);
        return s + 1;
    }
};

// A sequence number a reader acquired from the latch (load A). Only
// LatchReader makes one, so a copy cannot start from an unordered load.
class LatchSeq {
  public:
    std::uint64_t value() const noexcept { return v_; }

  private:
    friend struct LatchReader;
    explicit LatchSeq(std::uint64_t v) noexcept : v_(v) {}
    std::uint64_t v_;
};

// What one try_read() did: `copied` is true when `dst` holds exactly the
// record published as `seq`, `words` of it; false when the writer moved on
// during the copy, and `seq` is then the sequence to try again with.
struct LatchCopy {
    bool copied;
    LatchSeq seq;
    std::size_t words;
};

// The reader's side: the only way to copy a record out is try_read(), which
// validates what it copied (as Abseil's SequenceLock::TryRead does).
struct LatchReader {
    const std::atomic<std::uint64_t>* seq;
    const std::uint64_t* copy[2];

    // A: pairs with the writer's R.
    LatchSeq current() const noexcept { return LatchSeq(seq->load(std::memory_order_acquire)); }

    // One attempt at copying the record that `s` directs to into `dst`:
    // prefetch `prefetch_bytes`, copy `head_words`, ask `payload_words(dst)`
    // how many more words the head announces (it must clamp them to the
    // slot: the head may be mid-change), copy those, then validate.
    template <class PayloadWords>
    LatchCopy try_read(LatchSeq s, std::size_t prefetch_bytes, std::uint64_t* dst,
                       std::size_t head_words, PayloadWords&& payload_words) const noexcept {
        const std::uint64_t* src = copy[s.v_ & 1];
        prefetch(src, prefetch_bytes);
        load_words(dst, src, head_words);
        const std::size_t more = payload_words(static_cast<const std::uint64_t*>(dst));
        load_words(dst + head_words, src + head_words, more);
        // G: orders the copy above before the re-check of seq.
        std::atomic_thread_fence(std::memory_order_acquire);
        if (seq->load(std::memory_order_relaxed) == s.v_)
            return LatchCopy{true, s, head_words + more};
        return LatchCopy{false, current(), 0};  // a new A: the retry needs its own acquire
    }

  private:
    // Asks the core to start fetching the first `bytes` of `src`. A prefetch
    // is a hint, not an access in the C++ memory model: it cannot race, fault
    // or change what the loads see. It lets the loads of the head and of the
    // payload (whose length the head gives) find their lines already on the
    // way, instead of waiting for one cross-core transfer after another when
    // the writer has just written them.
    static void prefetch(const std::uint64_t* src, std::size_t bytes) noexcept {
        const auto first = reinterpret_cast<std::uintptr_t>(src) & ~std::uintptr_t{63};
        const auto end = reinterpret_cast<std::uintptr_t>(src) + bytes;
        for (std::uintptr_t line = first; line < end; line += 64)
            __builtin_prefetch(reinterpret_cast<const void*>(line), 0, 3);
    }
};

}  // namespace tokenshm::shm
