// Writes the segment fuzz target's seed images: real segments made by
// libshm's writer (the refresher's own code), small enough to fuzz quickly
// (64-byte tokens, two slots), copied out of /dev/shm into OUTDIR.
//
//   segment_seed OUTDIR
//   segment_seed --check IMAGE...
//
// Images: two credentials, one valid (published twice, so both copies of
// its latch hold a record) and one in reauth with a last error; one with a
// claimed slot never published and a retired one. Times are fixed (the token
// valid until 2100), so a fuzzed image decodes to a token the reader returns.
//
// --check puts each IMAGE in /dev/shm and opens it as a reader would: a seed
// today's layout refuses would leave the fuzzer stuck at the header check,
// so it fails, saying how to make new ones.
// Exit 0 on success, 2 on usage errors, 1 otherwise.
#include <tokenshm/shm/segment.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <functional>
#include <iterator>
#include <string>
#include <string_view>
#include <vector>

namespace shm = tokenshm::shm;

namespace {

constexpr std::int64_t kIssuedMs = 1'700'000'000'000;
constexpr std::int64_t kFarFutureMs = 4'102'444'800'000;  // 2100-01-01

shm::SlotRecord record(std::uint64_t version, shm::RecordState state, std::string_view token,
                       std::string_view last_error) {
    shm::SlotRecord r;
    r.version = version;
    r.state = state;
    r.token = token;
    r.token_type = "Bearer";
    r.scope = "files.write";
    r.last_error = last_error;
    r.issued_at_ms = kIssuedMs;
    r.expires_at_ms = state == shm::RecordState::valid ? kFarFutureMs : kIssuedMs + 3'600'000;
    r.next_refresh_ms = r.expires_at_ms - 300'000;
    r.last_attempt_ms = kIssuedMs;
    return r;
}

// Makes a segment, lets `fill` write into it, copies its bytes to `out`, unlinks it.
bool make_image(const std::string& out, const std::function<bool(shm::WriterSegment&)>& fill) {
    shm::SegmentSpec spec;
    spec.name = "tokenshm-fuzz-seed-" + std::to_string(::getpid());
    spec.max_token_bytes = 64;
    spec.slot_count = 2;
    auto w = shm::WriterSegment::create_or_attach(spec);
    if (!w) {
        std::fprintf(stderr, "segment_seed: %s\n", w.error().message.c_str());
        return false;
    }
    bool ok = fill(*w);
    std::ifstream in("/dev/shm/" + spec.name, std::ios::binary);
    const std::vector<char> bytes((std::istreambuf_iterator<char>(in)),
                                  std::istreambuf_iterator<char>());
    w->unlink();
    std::ofstream os(out, std::ios::binary | std::ios::trunc);
    os.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!in || bytes.empty() || !os) {
        std::fprintf(stderr, "segment_seed: copying the segment to %s failed\n", out.c_str());
        ok = false;
    }
    return ok;
}

bool publish(shm::WriterSegment& w, std::string_view name, const shm::SlotRecord& r) {
    auto slot = w.claim(name);
    if (!slot || !w.publish(*slot, r)) {
        std::fprintf(stderr, "segment_seed: cannot publish %.*s\n", static_cast<int>(name.size()),
                     name.data());
        return false;
    }
    return true;
}

// Whether `image` opens as a segment and has an active slot "storage".
bool image_opens(const std::string& image) {
    std::ifstream in(image, std::ios::binary);
    const std::vector<char> bytes((std::istreambuf_iterator<char>(in)),
                                  std::istreambuf_iterator<char>());
    if (!in || bytes.empty()) {
        std::fprintf(stderr, "segment_seed: cannot read %s\n", image.c_str());
        return false;
    }
    const std::string name = "tokenshm-fuzz-check-" + std::to_string(::getpid());
    const std::string path = "/dev/shm/" + name;
    {
        std::ofstream os(path, std::ios::binary | std::ios::trunc);
        os.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
        if (!os || ::chmod(path.c_str(), 0600) != 0) {
            std::fprintf(stderr, "segment_seed: cannot write %s\n", path.c_str());
            ::unlink(path.c_str());
            return false;
        }
    }
    const auto seg = shm::ReadOnlySegment::open(name, {});
    ::unlink(path.c_str());
    if (!seg) {
        std::fprintf(stderr,
                     "segment_seed: %s no longer opens (%s): make new seeds with "
                     "segment_seed tests/fuzz/corpus/segment\n",
                     image.c_str(), seg.error().message.c_str());
        return false;
    }
    if (!seg->find("storage")) {
        std::fprintf(stderr, "segment_seed: %s has no active slot \"storage\"\n", image.c_str());
        return false;
    }
    return true;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc >= 3 && std::string_view(argv[1]) == "--check") {
        bool ok = true;
        for (int i = 2; i < argc; ++i)
            ok = image_opens(argv[i]) && ok;
        return ok ? 0 : 1;
    }
    if (argc != 2) {
        std::fprintf(stderr, "usage: segment_seed OUTDIR | segment_seed --check IMAGE...\n");
        return 2;
    }
    const std::string dir = argv[1];
    using shm::RecordState;
    const bool two = make_image(dir + "/two-credentials.seg", [](shm::WriterSegment& w) {
        return publish(w, "storage",
                       record(1, RecordState::valid, "eyJhbGciOiJIUzI1NiJ9.first", "")) &&
               publish(w, "storage",
                       record(2, RecordState::valid, "eyJhbGciOiJIUzI1NiJ9.second", "")) &&
               publish(w, "workers",
                       record(7, RecordState::reauth, "", "invalid_grant: refresh token revoked"));
    });
    const bool empty = make_image(dir + "/empty-and-retired.seg", [](shm::WriterSegment& w) {
        auto claimed = w.claim("storage");
        auto retired = w.claim("old");
        if (!claimed || !retired) return false;
        w.retire(*retired);
        return true;
    });
    return two && empty ? 0 : 1;
}
