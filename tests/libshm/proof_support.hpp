// Scaffolding for the proofs that must show the event they are about really
// happened (a copy the writer invalidated, a kill that landed mid-copy): a
// page shared with forked children to count such events across processes,
// the cap of the "until the evidence is in" loops, and a copy that provokes
// the race a torn read needs.
// Time is only ever a cap here: running out of it turns "not enough
// evidence" into a failure, it never decides a pass.
#pragma once

#include "test_support.hpp"

#include <tokenshm/shm/latch.hpp>
#include <tokenshm/shm/record.hpp>

#include <sched.h>
#include <sys/mman.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <exception>
#include <new>
#include <thread>

namespace segtest {

// Counters on an anonymous MAP_SHARED page, so a forked child's increments
// (or a flag the parent raises) are seen by the other side. T must be made
// of lock-free atomics.
template <class T>
class SharedPage {
  public:
    SharedPage() {
        void* p =
            ::mmap(nullptr, sizeof(T), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) std::terminate();
        obj_ = new (p) T{};
    }
    SharedPage(const SharedPage&) = delete;
    SharedPage& operator=(const SharedPage&) = delete;
    ~SharedPage() { ::munmap(obj_, sizeof(T)); }
    T* operator->() const noexcept { return obj_; }
    T& operator*() const noexcept { return *obj_; }

  private:
    T* obj_;
};

// A deadline on CLOCK_MONOTONIC, `cap_ns` from now.
class EvidenceCap {
  public:
    explicit EvidenceCap(std::int64_t cap_ns) : deadline_(monotonic_ns() + cap_ns) {}
    bool reached() const noexcept { return monotonic_ns() >= deadline_; }

  private:
    std::int64_t deadline_;
};

// Pins the calling process (or thread) to the `index`-th CPU it may run on,
// modulo their number, so a writer and its readers pinned to different
// indices really run at the same time when the machine has two CPUs or more,
// instead of taking turns on one (then only a preemption mid-copy races them).
// Best effort: a failure leaves the affinity as it was.
// The CPUs are those the process could use at the first call (a thread
// created after its creator was pinned inherits the pin, not the whole set).
inline void pin_to_cpu(unsigned index) {
    static const cpu_set_t allowed = [] {
        cpu_set_t set;
        CPU_ZERO(&set);
        if (::sched_getaffinity(0, sizeof set, &set) != 0) CPU_ZERO(&set);
        return set;
    }();
    const int count = CPU_COUNT(&allowed);
    if (count < 2) return;
    unsigned want = index % static_cast<unsigned>(count);
    for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
        if (!CPU_ISSET(cpu, &allowed)) continue;
        if (want-- != 0) continue;
        cpu_set_t one;
        CPU_ZERO(&one);
        CPU_SET(cpu, &one);
        (void)::sched_setaffinity(0, sizeof one, &one);
        return;
    }
}

// One bare-latch copy in which the reader stalls between the record's head
// and its payload until the writer has published twice more (or `stall_ns`
// passes), so the copy it is reading has been rewritten under it: the race a
// torn read needs, provoked instead of hoped for. A correct latch reports a
// lost race; one that does not validate hands out a head of one version with
// the payload of another, which verify_synth rejects.
struct StalledCopy {
    bool writer_moved = false;  // the writer published twice during the stall
    bool copied = false;        // try_read said the copy is good
    bool decoded = false;       // and it decoded into `view`
    shm::RecordView view{};
};
inline StalledCopy stalled_copy(const shm::LatchReader& latch, std::uint64_t* buf,
                                std::size_t buf_words, std::uint32_t max_token,
                                std::int64_t stall_ns) {
    constexpr std::size_t kFixedWords = TOKENSHM_REC_FIXED_SIZE / 8;
    StalledCopy out;
    const shm::LatchSeq s = latch.current();
    bool overrun = false;
    auto payload_words = [&](const std::uint64_t* head) {
        const EvidenceCap stall(stall_ns);
        // Yielding lets the writer run when readers outnumber the cores.
        while (latch.seq->load(std::memory_order_acquire) < s.value() + 2 && !stall.reached())
            std::this_thread::yield();
        out.writer_moved = latch.seq->load(std::memory_order_acquire) >= s.value() + 2;
        const std::size_t words = shm::clamped_payload_words(shm::read_lengths(head), max_token);
        overrun = kFixedWords + words > buf_words;
        return overrun ? 0 : words;
    };
    const shm::LatchCopy c = latch.try_read(s, 0, buf, kFixedWords, payload_words);
    out.copied = c.copied && !overrun;
    if (out.copied) out.decoded = shm::decode(buf, c.words, max_token, out.view);
    return out;
}

}  // namespace segtest
