// A segment created and filled in-process for the read benchmarks.
//
// `twins` slots per token size, named "tok<bytes>" and "tok<bytes>.<k>", each
// published twice so that both record copies hold a complete record of that
// size. A second, writable mapping hands out each slot's sequence word: bumping
// it makes a reader's next get() re-copy the other (complete) copy, which is
// exactly the reader's work "right after a change" without the writer's encode
// and futex wake in the timed loop. Bumping by one is what LatchWriter::publish
// does last, so the reader sees a state the real writer also produces.
#pragma once

#include <tokenshm/reader.hpp>
#include <tokenshm/shm/segment.hpp>

#include <fcntl.h>
#include <sched.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace tokenshm::bench {

// Stops the benchmark with one line on stderr: a harness that cannot set up
// has nothing to measure.
[[noreturn]] inline void die(const std::string& what) {
    std::fprintf(stderr, "bench: %s\n", what.c_str());
    std::exit(1);
}

// The enumerator's name, for the JSON reports.
inline const char* error_name(tokenshm::Error e) {
    using tokenshm::Error;
    switch (e) {
        case Error::no_segment:
            return "no_segment";
        case Error::incompatible:
            return "incompatible";
        case Error::untrusted:
            return "untrusted";
        case Error::no_such_credential:
            return "no_such_credential";
        case Error::empty:
            return "empty";
        case Error::expired:
            return "expired";
        case Error::expiring:
            return "expiring";
        case Error::reauth:
            return "reauth";
        case Error::timeout:
            return "timeout";
        case Error::busy:
            return "busy";
        case Error::invalid_argument:
            return "invalid_argument";
        case Error::buffer_too_small:
            return "buffer_too_small";
        case Error::system:
            return "system";
        case Error::unreachable:
            return "unreachable";
        case Error::refused:
            return "refused";
    }
    return "other";
}

// The CPUs this process may run on.
inline std::vector<int> allowed_cpus() {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (::sched_getaffinity(0, sizeof set, &set) != 0)
        die(std::string("sched_getaffinity: ") + std::strerror(errno));
    std::vector<int> out;
    for (int c = 0; c < CPU_SETSIZE; ++c)
        if (CPU_ISSET(c, &set)) out.push_back(c);
    return out;
}

// Pins the calling thread to `cpu`; false, with errno set, when refused.
inline bool pin_to(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return ::sched_setaffinity(0, sizeof set, &set) == 0;
}

inline std::string unique_segment(const char* tag) {
    return std::string("tokenshm-bench-") + tag + "-" + std::to_string(::getpid());
}

// A token of `bytes` printable characters; `salt` varies the content.
inline std::string token_text(std::size_t bytes, unsigned salt = 0) {
    std::string t(bytes, 'a');
    for (std::size_t i = 0; i < bytes; ++i)
        t[i] = static_cast<char>('a' + (i + salt) % 26);
    return t;
}

// A valid record with a realistic type and scope, expiring in an hour.
inline shm::SlotRecord bench_record(std::uint64_t version, std::string_view token) {
    shm::SlotRecord r;
    r.version = version;
    r.state = shm::RecordState::valid;
    r.token_type = "Bearer";
    r.scope = "files.write";
    r.token = token;
    r.issued_at_ms = shm::sys::realtime_ms();
    r.expires_at_ms = r.issued_at_ms + 3'600'000;
    r.next_refresh_ms = r.issued_at_ms + 2'880'000;
    r.last_attempt_ms = r.issued_at_ms;
    return r;
}

inline std::string slot_name(std::size_t token_bytes, unsigned twin = 0) {
    std::string n = "tok" + std::to_string(token_bytes);
    if (twin != 0) {
        n += '.';  // not "." + to_string(): g++ 12 -O3 raises a false -Wrestrict there
        n += std::to_string(twin);
    }
    return n;
}

class BenchSegment {
  public:
    // Creates segment `name` with `twins` slots per size in `token_sizes`. The
    // name is unlinked when the object dies; mappings stay valid until then.
    BenchSegment(std::string name, const std::vector<std::size_t>& token_sizes, unsigned twins = 1)
        : name_(std::move(name)) {
        shm::SegmentSpec spec;
        spec.name = name_;
        spec.slot_count = static_cast<std::uint32_t>(token_sizes.size() * twins);
        auto w = shm::WriterSegment::create_or_attach(spec);
        if (!w) die(w.error().message);
        writer_.emplace(std::move(*w));
        for (std::size_t bytes : token_sizes) {
            for (unsigned twin = 0; twin < twins; ++twin) {
                auto slot = writer().claim(slot_name(bytes, twin));
                if (!slot) die(slot.error().message);
                for (std::uint64_t v = 1; v <= 2; ++v) {
                    const std::string tok = token_text(bytes, static_cast<unsigned>(v));
                    const auto e = writer().publish(*slot, bench_record(v, tok));
                    if (!e) die(shm::to_string(e.error()));
                }
                slots_[{bytes, twin}] = *slot;
            }
        }
        auto fd = shm::sys::shm_open("/" + name_, O_RDWR, 0);
        if (!fd) die(fd.error().message());
        auto map = shm::sys::mmap(fd->get(), writer().geometry().total_size(), true, name_);
        if (!map) die(map.error().message());
        rw_ = std::move(*map);
    }
    BenchSegment(const BenchSegment&) = delete;
    BenchSegment& operator=(const BenchSegment&) = delete;
    ~BenchSegment() { unlink(); }

    // Removes the name once every process has mapped the segment, so a run
    // that dies later leaves nothing in /dev/shm.
    void unlink() const { (void)shm::sys::shm_unlink("/" + name_); }

    const std::string& name() const noexcept { return name_; }
    shm::WriterSegment& writer() noexcept { return *writer_; }
    std::uint32_t slot(std::size_t token_bytes, unsigned twin = 0) const {
        return slots_.at({token_bytes, twin});
    }

    // The slot's sequence word, writable. Only the benchmark's own thread may
    // store to it, and only while no WriterSegment::publish runs on that slot.
    std::atomic<std::uint64_t>& seq(std::size_t token_bytes, unsigned twin = 0) noexcept {
        return shm::slot_at(rw_.addr(), writer().geometry().slot_size(), slot(token_bytes, twin))
            ->seq;
    }

  private:
    std::string name_;
    std::optional<shm::WriterSegment> writer_;  // set by the constructor, never empty after
    std::map<std::pair<std::size_t, unsigned>, std::uint32_t> slots_;
    shm::Mapping rw_;
};

}  // namespace tokenshm::bench
