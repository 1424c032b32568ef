// Fuzz target: attaching to a segment of arbitrary bytes and reading it
// (libshm/segment.cpp, reader/reader.cpp). The input is written as a /dev/shm
// segment of this process's uid, mode 0600 (so every trust check passes and
// the bytes decide), under a name unique to the process and the run; it is
// opened with ReadOnlySegment::open, then with the reader API, whose every
// call is made on every active slot; then it is unlinked.
//
// Promises checked (SPEC, "The segment" and "The reader"): errors are typed
// values (never a crash, a hang or a read outside the mapping) and those of
// the open path carry one printable line; libshm and the reader agree on
// whether the segment can be opened; each call returns only the errors its
// contract names; a record that decodes stays within the segment's caps.
#include "fuzz_check.hpp"

#include <tokenshm/layout.h>
#include <tokenshm/reader.hpp>
#include <tokenshm/shm/segment.hpp>

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

namespace {

using tokenshm::Error;
using tokenshm::fuzz::expect;
using tokenshm::fuzz::one_printable_line;
using namespace std::chrono_literals;

[[noreturn]] void cannot_set_up(const char* call, const std::string& name) {
    // The machine, not the input: say so instead of reporting a finding.
    std::fprintf(stderr, "segment_fuzz: %s(/dev/shm/%s): %s\n", call, name.c_str(),
                 std::strerror(errno));
    std::exit(2);
}

// The input as a segment in /dev/shm, unlinked when this goes out of scope.
class SegmentFile {
  public:
    explicit SegmentFile(std::string_view bytes) {
        static unsigned long run = 0;
        name_ = "tokenshm-fuzz-" + std::to_string(::getpid()) + "-" + std::to_string(run++);
        const std::string path = "/" + name_;
        const int fd = ::shm_open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0) cannot_set_up("shm_open", name_);
        // shm_open's mode passed through the umask; the trust check wants exactly 0600.
        if (::fchmod(fd, 0600) != 0) cannot_set_up("fchmod", name_);
        while (!bytes.empty()) {
            const ssize_t n = ::write(fd, bytes.data(), bytes.size());
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) cannot_set_up("write", name_);
            bytes.remove_prefix(static_cast<std::size_t>(n));
        }
        if (::close(fd) != 0) cannot_set_up("close", name_);
    }
    SegmentFile(const SegmentFile&) = delete;
    SegmentFile& operator=(const SegmentFile&) = delete;
    ~SegmentFile() { ::shm_unlink(("/" + name_).c_str()); }

    const std::string& name() const noexcept { return name_; }

  private:
    std::string name_;
};

bool is_one_of(Error e, std::initializer_list<Error> allowed) {
    for (const Error a : allowed)
        if (e == a) return true;
    return false;
}

void check_record(const tokenshm::Token& t, std::uint32_t max_token_bytes) {
    expect(t.token().size() <= max_token_bytes, "a token fits max_token_bytes");
    expect(t.token_type().size() <= TOKENSHM_TYPE_CAP, "a token_type fits its cap");
    expect(t.scope().size() <= TOKENSHM_SCOPE_CAP, "a scope fits its cap");
    expect(t.last_error().size() <= TOKENSHM_ERROR_CAP, "a last_error fits its cap");
    expect(static_cast<std::uint32_t>(t.state()) <= TOKENSHM_STATE_REAUTH, "a known state");
    (void)t.writer_alive();
}

// Every reader call on one credential's handle.
void read_slot(tokenshm::Handle& h, std::uint32_t max_token_bytes) {
    std::uint64_t version = 0;
    if (auto rec = h.inspect()) {
        check_record(*rec, max_token_bytes);
        version = rec->version();
    } else {
        expect(
            is_one_of(rec.error(), {Error::incompatible, Error::busy, Error::no_such_credential}),
            "inspect() fails only as corrupt, busy or gone");
    }
    const auto read_errors = {
        Error::empty,        Error::expired, Error::expiring,          Error::reauth,
        Error::incompatible, Error::busy,    Error::no_such_credential};
    for (const std::chrono::milliseconds min_valid : {0ms, 3'600'000ms}) {
        if (auto tok = h.get(min_valid)) {
            check_record(*tok, max_token_bytes);
        } else {
            expect(is_one_of(tok.error(), read_errors), "get() fails only with a read error");
        }
    }
    // Nothing will publish: wait() must come back at once, with a read error or a timeout.
    if (auto w = h.wait(version, 0ms); !w) {
        expect(w.error() == Error::timeout || is_one_of(w.error(), read_errors),
               "wait() fails only with a read error or a timeout");
    }
}

void read_segment(const std::string& name) {
    const auto seg = tokenshm::shm::ReadOnlySegment::open(name, {});
    if (!seg) expect(one_printable_line(seg.error().message), "an open error is one line");
    const auto reader = tokenshm::Reader::open(name);
    expect(seg.has_value() == reader.has_value(), "libshm and the reader agree on open");
    if (!reader) {
        expect(one_printable_line(reader.error().message), "a reader open error is one line");
        return;
    }
    (void)reader->writer();
    const std::uint32_t max_token_bytes = reader->max_token_bytes();
    const auto names = reader->credentials();
    for (const std::string& cred : names) {
        auto h = reader->lookup(cred);
        if (!h) {
            // A name no writer could have claimed: found by nobody.
            expect(h.error().code == Error::no_such_credential, "lookup fails only as not found");
            continue;
        }
        read_slot(*h, max_token_bytes);
    }
    // The fuzzer can learn this name and write it into a slot: absent only
    // when the slot list says so.
    const std::string absent = "no-such-credential-in-any-seed";
    if (std::find(names.begin(), names.end(), absent) == names.end())
        expect(!reader->lookup(absent), "an absent name is not found");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const SegmentFile file(std::string_view(reinterpret_cast<const char*>(data), size));
    read_segment(file.name());
    return 0;
}
