// The latch on its own: a reader's try_read() either copies exactly one
// publish's words or reports that it lost a race, never a torn copy.
#include <tokenshm/shm/latch.hpp>
#include <tokenshm/shm/layout.hpp>

#include <catch2/catch.hpp>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <thread>
#include <vector>

namespace shm = tokenshm::shm;

// The words the latch moves are plain 8-byte atomics (never a libatomic call,
// which may write and would fault on a read-only mapping), and the sequence
// word sits alone at the start of its slot's cache line.
static_assert(std::atomic_ref<std::uint64_t>::is_always_lock_free);
static_assert(std::atomic_ref<std::uint64_t>::required_alignment == 8);
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);
static_assert(sizeof(std::atomic<std::uint64_t>) == 8);
static_assert(offsetof(shm::SlotControl, seq) == TOKENSHM_SLOT_SEQ);
static_assert(TOKENSHM_SLOT_SEQ % TOKENSHM_CACHE_LINE == 0);
static_assert(TOKENSHM_SLOT_COPIES % 8 == 0 && TOKENSHM_REC_FIXED_SIZE % 8 == 0);

namespace {

constexpr std::size_t kWords = 64;
constexpr std::size_t kHead = 2;

// A slot in local memory: a sequence word and two copies.
struct LocalSlot {
    alignas(64) std::atomic<std::uint64_t> seq{0};
    alignas(64) std::uint64_t copies[2][kWords] = {};

    shm::LatchWriter writer() { return {&seq, {copies[0], copies[1]}}; }
    shm::LatchReader reader() const { return {&seq, {copies[0], copies[1]}}; }
};

// Word i of publish v: every word names its publish, so a copy mixing two
// publishes is seen at once. Word 0 tells how many payload words follow.
std::vector<std::uint64_t> image_of(std::uint64_t v) {
    std::vector<std::uint64_t> w(kWords);
    w[0] = kWords - kHead;
    for (std::size_t i = 1; i < kWords; ++i)
        w[i] = v * 1000 + i;
    return w;
}

auto payload_from_head = [](const std::uint64_t* head) {
    return head[0] <= kWords - kHead ? static_cast<std::size_t>(head[0]) : kWords - kHead;
};

bool one_publish(const std::uint64_t* w, std::uint64_t& v) {
    v = (w[1] - 1) / 1000;
    for (std::size_t i = 1; i < kWords; ++i)
        if (w[i] != v * 1000 + i) return false;
    return true;
}

}  // namespace

TEST_CASE("try_read copies the record the sequence names when nothing races") {
    LocalSlot slot;
    const auto img = image_of(1);
    REQUIRE(slot.writer().publish(img.data(), img.size()) == 1);
    std::uint64_t dst[kWords] = {};
    const shm::LatchReader r = slot.reader();
    const shm::LatchCopy c = r.try_read(r.current(), sizeof dst, dst, kHead, payload_from_head);
    REQUIRE(c.copied);
    CHECK(c.seq.value() == 1);
    CHECK(c.words == kWords);
    std::uint64_t v = 0;
    CHECK(one_publish(dst, v));
    CHECK(v == 1);
}

TEST_CASE("try_read reports a lost race when the writer publishes during the copy") {
    LocalSlot slot;
    const auto first = image_of(1), second = image_of(2), third = image_of(3);
    slot.writer().publish(first.data(), first.size());
    const shm::LatchReader r = slot.reader();
    const shm::LatchSeq s = r.current();
    std::uint64_t dst[kWords] = {};
    // The writer publishes twice while the reader is between head and payload:
    // the second publish rewrites the very copy being read.
    auto racing = [&](const std::uint64_t* head) {
        slot.writer().publish(second.data(), second.size());
        slot.writer().publish(third.data(), third.size());
        return payload_from_head(head);
    };
    const shm::LatchCopy c = r.try_read(s, 0, dst, kHead, racing);
    REQUIRE_FALSE(c.copied);
    CHECK(c.seq.value() == 3);  // the sequence to try again with
    // The copy it refused was indeed torn: head from publish 1, payload from 3.
    CHECK(dst[1] == 1 * 1000 + 1);
    CHECK(dst[kHead] == 3 * 1000 + kHead);
    const shm::LatchCopy again = r.try_read(c.seq, 0, dst, kHead, payload_from_head);
    REQUIRE(again.copied);
    std::uint64_t v = 0;
    CHECK(one_publish(dst, v));
    CHECK(v == 3);
}

TEST_CASE("a writer killed mid-copy leaves readers the previous publish") {
    LocalSlot slot;
    const auto first = image_of(1), second = image_of(2);
    slot.writer().publish(first.data(), first.size());
    // The mid-copy hook runs with half of copy[0] holding publish 2; the
    // reader copies there, as a reader would while the writer lies dead.
    std::uint64_t dst[kWords] = {};
    bool copied_mid = false;
    std::uint64_t v = 0;
    const shm::LatchReader r = slot.reader();
    slot.writer().publish(second.data(), second.size(), [&] {
        const shm::LatchCopy c = r.try_read(r.current(), 0, dst, kHead, payload_from_head);
        copied_mid = c.copied && c.seq.value() == 1 && one_publish(dst, v) && v == 1;
    });
    CHECK(copied_mid);
}

TEST_CASE("concurrent copies are never torn and lost races are counted") {
    LocalSlot slot;
    slot.writer().publish(image_of(1).data(), kWords);
    std::atomic<bool> stop{false};
    std::thread writer([&] {
        std::vector<std::vector<std::uint64_t>> images;
        for (std::uint64_t v = 0; v < 64; ++v)
            images.push_back(image_of(v + 2));
        for (std::uint64_t n = 0; !stop.load(std::memory_order_relaxed); ++n)
            slot.writer().publish(images[n % images.size()].data(), kWords);
    });
    const shm::LatchReader r = slot.reader();
    std::uint64_t torn = 0, copies = 0, lost = 0;
    std::uint64_t dst[kWords];
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    // Until both outcomes were seen often enough (bounded in time).
    while ((copies < 20000 || lost < 200) && std::chrono::steady_clock::now() < until) {
        shm::LatchSeq s = r.current();
        for (;;) {
            const shm::LatchCopy c = r.try_read(s, 0, dst, kHead, payload_from_head);
            if (c.copied) break;
            ++lost;
            s = c.seq;
        }
        ++copies;
        std::uint64_t v = 0;
        if (!one_publish(dst, v)) ++torn;
    }
    stop = true;
    writer.join();
    INFO("copies " << copies << ", lost races " << lost);
    CHECK(torn == 0);
    CHECK(copies >= 20000);
    CHECK(lost >= 200);
}
