// Hostile and broken segments get the right typed error, from
// the reader API and as `tokenshm get`'s exit code, never a crash (run it under
// ASan+UBSan). Each case starts from a valid segment and corrupts it through a
// second read-write mapping, or writes /dev/shm/<name> directly.
#include "ci_skip.hpp"
#include "test_support.hpp"

#include <tokenshm/reader.hpp>
#include <tokenshm/shm/segment.hpp>

#include <pwd.h>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <optional>
#include <string>
#include <vector>

using namespace std::chrono_literals;
using segtest::Child;
using segtest::Pipe;
using segtest::RawSegment;
using segtest::SegmentGuard;
using tokenshm::Error;
namespace shm = tokenshm::shm;

namespace {

constexpr std::uint32_t kMaxToken = 256;
constexpr std::uint32_t kSlots = 2;
const shm::Geometry kGeo{kMaxToken, kSlots};

// A valid segment with credential "c" holding a token, and no writer attached.
void make_valid(const std::string& name, mode_t mode = 0600) {
    auto s = segtest::spec(name, kMaxToken, kSlots);
    s.mode = mode;
    auto w = shm::WriterSegment::create_or_attach(s);
    REQUIRE(w);
    const std::uint32_t slot = *w->claim("c");
    shm::SlotRecord r;
    r.version = 1;
    r.state = shm::RecordState::valid;
    r.token = "hostile-test-token";
    r.token_type = "Bearer";
    r.issued_at_ms = shm::sys::realtime_ms();
    r.expires_at_ms = r.issued_at_ms + 3'600'000;
    REQUIRE(w->publish(slot, r));
}

struct CliResult {
    int exit_code = -1;
    std::string out, err;
};

// Runs the built `tokenshm` command with `args`; its environment is ours.
CliResult run_cli(const std::vector<std::string>& args) {
    const std::string exe = segtest::build_path("reader/tokenshm");
    Pipe out, err;
    Child child = Child::fork([&] {
        ::dup2(out.wr(), 1);
        ::dup2(err.wr(), 2);
        std::vector<char*> argv;
        argv.push_back(const_cast<char*>("tokenshm"));
        for (const auto& a : args)
            argv.push_back(const_cast<char*>(a.c_str()));
        argv.push_back(nullptr);
        ::execv(exe.c_str(), argv.data());
        return 127;
    });
    out.close_write();
    err.close_write();
    CliResult r;
    char buf[4096];
    std::size_t n;
    while ((n = segtest::read_exact(out.rd(), buf, sizeof buf, 30s)) > 0)
        r.out.append(buf, n);
    while ((n = segtest::read_exact(err.rd(), buf, sizeof buf, 30s)) > 0)
        r.err.append(buf, n);
    if (child.wait(30s) && WIFEXITED(child.status())) r.exit_code = WEXITSTATUS(child.status());
    return r;
}

// `tokenshm get c --segment NAME`: the exit code, and one line on stderr.
int cli_get_exit(const std::string& segment) {
    const CliResult r = run_cli({"get", "c", "--segment", segment});
    INFO("stderr: " << r.err);
    if (r.exit_code != 0) {
        CHECK(r.out.empty());
        CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
    }
    return r.exit_code;
}

// Opens `name` and returns the error code (nullopt: opened), checking the
// message mentions `what`.
std::optional<Error> open_error(const std::string& name, const std::string& what = "",
                                const tokenshm::OpenOptions& opts = {}) {
    auto r = tokenshm::Reader::open(name, opts);
    if (r) return std::nullopt;
    INFO("message: " << r.error().message);
    CHECK(r.error().message.find('\n') == std::string::npos);
    if (!what.empty()) CHECK_THAT(r.error().message, Catch::Contains(what));
    return r.error().code;
}

// Sets (or unsets) an environment variable for one scope.
struct EnvGuard {
    std::string key;
    std::optional<std::string> old;
    EnvGuard(std::string k, const char* value) : key(std::move(k)) {
        if (const char* o = std::getenv(key.c_str())) old = o;
        if (value != nullptr)
            ::setenv(key.c_str(), value, 1);
        else
            ::unsetenv(key.c_str());
    }
    ~EnvGuard() {
        if (old)
            ::setenv(key.c_str(), old->c_str(), 1);
        else
            ::unsetenv(key.c_str());
    }
};

std::size_t slot_off(std::uint32_t i) {
    return TOKENSHM_HEADER_SIZE + i * kGeo.slot_size();
}
std::size_t current_copy(const RawSegment& raw, std::uint32_t slot) {
    const auto seq = raw.get<std::uint64_t>(slot_off(slot) + TOKENSHM_SLOT_SEQ);
    return slot_off(slot) + TOKENSHM_SLOT_COPIES + (seq & 1) * kGeo.record_size();
}

}  // namespace

TEST_CASE("a valid segment opens (the control for every case below)") {
    SegmentGuard g{segtest::unique_segment("hvalid")};
    make_valid(g.name);
    CHECK_FALSE(open_error(g.name));
    const CliResult r = run_cli({"get", "c", "--segment", g.name});
    CHECK(r.exit_code == 0);
    CHECK(r.out == "hostile-test-token\n");
}

TEST_CASE("untrusted modes are refused") {
    SegmentGuard g{segtest::unique_segment("hmode")};
    make_valid(g.name);
    RawSegment raw(g.name);
    REQUIRE(raw.ok());
    for (mode_t m : {mode_t{0666}, mode_t{0620}, mode_t{0602}, mode_t{0660}}) {
        INFO("mode " << std::oct << m);
        REQUIRE(::fchmod(raw.fd(), m) == 0);
        char octal[8];
        std::snprintf(octal, sizeof octal, "%04o", static_cast<unsigned>(m));
        CHECK(open_error(g.name, octal) == Error::untrusted);
        CHECK(cli_get_exit(g.name) == 6);
        // A writer never adopts it either.
        auto w = shm::WriterSegment::create_or_attach(segtest::spec(g.name, kMaxToken, kSlots));
        REQUIRE_FALSE(w);
        CHECK(w.error().code == shm::SegmentErrc::untrusted);
    }
    for (mode_t m : {mode_t{0640}, mode_t{0644}, mode_t{0400}}) {
        INFO("mode " << std::oct << m);
        REQUIRE(::fchmod(raw.fd(), m) == 0);
        CHECK_FALSE(open_error(g.name));
    }
}

TEST_CASE("header corruption is incompatible, and says which field") {
    SegmentGuard g{segtest::unique_segment("hhdr")};
    make_valid(g.name);

    struct Case {
        const char* what;
        std::size_t off;
        std::uint64_t value;
        int width;  // bytes
        const char* message;
    };
    const std::uint64_t total = kGeo.total_size();
    const Case cases[] = {
        {"wrong magic", TOKENSHM_HDR_MAGIC, 0x4641524241474152ull, 8, "bad magic"},
        {"magic off by one bit", TOKENSHM_HDR_MAGIC, TOKENSHM_MAGIC ^ 1, 8, "bad magic"},
        {"unknown major version", TOKENSHM_HDR_MAJOR, 2, 2, "major version 2"},
        {"major version 0", TOKENSHM_HDR_MAJOR, 0, 2, "major version 0"},
        {"header size", TOKENSHM_HDR_HEADER_SIZE, 128, 4, "header size 128"},
        {"slot count 0", TOKENSHM_HDR_SLOT_COUNT, 0, 4, "slot count 0"},
        {"slot count 1e9", TOKENSHM_HDR_SLOT_COUNT, 1'000'000'000, 4, "slot count 1000000000"},
        {"slot count one more", TOKENSHM_HDR_SLOT_COUNT, kSlots + 1, 4, "total size"},
        {"slot count one less", TOKENSHM_HDR_SLOT_COUNT, kSlots - 1, 4, "total size"},
        {"max_token_bytes 0", TOKENSHM_HDR_MAX_TOKEN_BYTES, 0, 4, "max_token_bytes 0"},
        {"max_token_bytes 63", TOKENSHM_HDR_MAX_TOKEN_BYTES, 63, 4, "max_token_bytes 63"},
        {"max_token_bytes 1e9", TOKENSHM_HDR_MAX_TOKEN_BYTES, 1'000'000'000, 4,
         "max_token_bytes 1000000000"},
        {"max_token_bytes off by one", TOKENSHM_HDR_MAX_TOKEN_BYTES, kMaxToken + 64, 4,
         "do not match"},
        {"record size", TOKENSHM_HDR_RECORD_SIZE, kGeo.record_size() + 64, 4, "record size"},
        {"record size 0", TOKENSHM_HDR_RECORD_SIZE, 0, 4, "record size"},
        {"slot size", TOKENSHM_HDR_SLOT_SIZE, kGeo.slot_size() - 64, 4, "slot size"},
        {"slot size huge", TOKENSHM_HDR_SLOT_SIZE, 0xFFFFFFFFu, 4, "slot size"},
        {"total size larger", TOKENSHM_HDR_TOTAL_SIZE, total + 64, 8, "total size"},
        {"total size smaller", TOKENSHM_HDR_TOTAL_SIZE, total - kGeo.slot_size(), 8, "total size"},
        {"total size 2^64-1", TOKENSHM_HDR_TOTAL_SIZE, ~std::uint64_t{0}, 8, "total size"},
    };
    RawSegment raw(g.name);
    REQUIRE(raw.ok());
    std::vector<char> pristine(raw.bytes(), raw.bytes() + TOKENSHM_HEADER_SIZE);
    for (const Case& c : cases) {
        INFO(c.what);
        std::memcpy(raw.bytes(), pristine.data(), pristine.size());
        switch (c.width) {
            case 2:
                raw.put<std::uint16_t>(c.off, static_cast<std::uint16_t>(c.value));
                break;
            case 4:
                raw.put<std::uint32_t>(c.off, static_cast<std::uint32_t>(c.value));
                break;
            default:
                raw.put<std::uint64_t>(c.off, c.value);
                break;
        }
        CHECK(open_error(g.name, c.message) == Error::incompatible);
        CHECK(cli_get_exit(g.name) == 6);
        std::vector<std::string> repaired;
        auto w = shm::WriterSegment::create_or_attach(segtest::spec(g.name, kMaxToken, kSlots),
                                                      &repaired);
        REQUIRE_FALSE(w);
        CHECK(w.error().code == shm::SegmentErrc::incompatible);
    }

    SECTION("geometry consistent with itself but larger than the file") {
        std::memcpy(raw.bytes(), pristine.data(), pristine.size());
        const shm::Geometry big{8192, kSlots};
        raw.put<std::uint32_t>(TOKENSHM_HDR_MAX_TOKEN_BYTES, 8192);
        raw.put<std::uint32_t>(TOKENSHM_HDR_RECORD_SIZE,
                               static_cast<std::uint32_t>(big.record_size()));
        raw.put<std::uint32_t>(TOKENSHM_HDR_SLOT_SIZE, static_cast<std::uint32_t>(big.slot_size()));
        raw.put<std::uint64_t>(TOKENSHM_HDR_TOTAL_SIZE, big.total_size());
        CHECK(open_error(g.name, "truncated") == Error::incompatible);
        CHECK(cli_get_exit(g.name) == 6);
    }
    SECTION("a newer minor version is still readable") {
        std::memcpy(raw.bytes(), pristine.data(), pristine.size());
        raw.put<std::uint16_t>(TOKENSHM_HDR_MINOR, 7);
        CHECK_FALSE(open_error(g.name));
        CHECK(cli_get_exit(g.name) == 0);
    }
    SECTION("magic 0: not initialised yet is no_segment") {
        std::memcpy(raw.bytes(), pristine.data(), pristine.size());
        raw.put<std::uint64_t>(TOKENSHM_HDR_MAGIC, 0);
        CHECK(open_error(g.name, "not initialised") == Error::no_segment);
        CHECK(cli_get_exit(g.name) == 3);
    }
}

TEST_CASE("truncated files are refused before anything is read") {
    SegmentGuard g{segtest::unique_segment("htrunc")};
    make_valid(g.name);
    RawSegment raw(g.name);
    REQUIRE(raw.ok());

    SECTION("smaller than the header") {
        for (off_t len : {off_t{1}, off_t{100}, off_t{TOKENSHM_HEADER_SIZE - 1}}) {
            INFO("length " << len);
            REQUIRE(raw.truncate(len));
            CHECK(open_error(g.name, "truncated") == Error::incompatible);
            CHECK(cli_get_exit(g.name) == 6);
        }
    }
    SECTION("the header claims more than the file") {
        for (off_t len : {off_t{TOKENSHM_HEADER_SIZE}, off_t{TOKENSHM_HEADER_SIZE + 64},
                          static_cast<off_t>(kGeo.total_size() - 8)}) {
            INFO("length " << len);
            REQUIRE(raw.truncate(len));
            CHECK(open_error(g.name, "truncated") == Error::incompatible);
            CHECK(cli_get_exit(g.name) == 6);
        }
    }
    SECTION("a longer file than the header says is fine") {
        REQUIRE(raw.truncate(static_cast<off_t>(kGeo.total_size() + 4096)));
        CHECK_FALSE(open_error(g.name));
    }
}

namespace {
// Something planted at /dev/shm/<name> that is not a regular file; removed
// (unlink or rmdir) when the test ends.
struct PlantedFile {
    std::string name;
    std::string path() const { return "/dev/shm/" + name; }
    ~PlantedFile() {
        if (::unlink(path().c_str()) != 0) (void)::rmdir(path().c_str());
    }
};

// What a reader's open and a writer's create_or_attach said of a segment, run
// in a child so that a hang (a FIFO opened without O_NONBLOCK) ends as a
// timeout of the test instead of blocking it.
struct OpenOutcome {
    bool finished = false;
    std::string text;  // "<reader error> <writer errc>|<reader msg>|<writer msg>"
};
OpenOutcome open_in_child(const std::string& name) {
    Pipe out;
    Child child = Child::fork([&] {
        std::string line;
        auto r = tokenshm::Reader::open(name);
        line += r ? "0" : std::to_string(static_cast<int>(r.error().code));
        auto w = shm::WriterSegment::create_or_attach(segtest::spec(name, kMaxToken, kSlots));
        line += w ? " ok" : " " + std::to_string(static_cast<int>(w.error().code));
        line += "|" + (r ? std::string() : r.error().message);
        line += "|" + (w ? std::string() : w.error().message) + "\n";
        return segtest::write_all(out.wr(), line.data(), line.size()) ? 0 : 1;
    });
    out.close_write();
    OpenOutcome o;
    char buf[2048];
    const std::size_t n = segtest::read_exact(out.rd(), buf, sizeof buf, 10s);
    o.text.assign(buf, n);
    o.finished = child.wait(10s) && child.exited_with(0);
    return o;
}

std::string expected_codes() {
    return std::to_string(static_cast<int>(Error::untrusted)) + " " +
           std::to_string(static_cast<int>(shm::SegmentErrc::untrusted)) + "|";
}
}  // namespace

TEST_CASE("a segment that is a symlink, a FIFO or a directory is refused at once, with why") {
    PlantedFile planted{segtest::unique_segment("hkind")};
    SegmentGuard target{segtest::unique_segment("hkindtarget")};
    struct stat before {};

    SECTION("a symlink to a valid segment is not followed") {
        make_valid(target.name);
        REQUIRE(::symlink(("/dev/shm/" + target.name).c_str(), planted.path().c_str()) == 0);
        const OpenOutcome o = open_in_child(planted.name);
        INFO(o.text);
        REQUIRE(o.finished);
        CHECK(o.text.rfind(expected_codes(), 0) == 0);
        CHECK(std::count(o.text.begin(), o.text.end(), '|') == 2);
        CHECK_THAT(o.text, Catch::Matches(".*\\|.*is a symlink.*\\|.*is a symlink.*\n"));
        CHECK(cli_get_exit(planted.name) == 6);
        REQUIRE(::lstat(planted.path().c_str(), &before) == 0);
        CHECK(S_ISLNK(before.st_mode));
    }
    SECTION("a FIFO never blocks a reader or the writer") {
        REQUIRE(::mkfifo(planted.path().c_str(), 0600) == 0);
        const OpenOutcome o = open_in_child(planted.name);
        INFO(o.text);
        REQUIRE(o.finished);
        CHECK(o.text.rfind(expected_codes(), 0) == 0);
        CHECK_THAT(o.text, Catch::Matches(
                               ".*\\|.*not a regular file \\(it is a FIFO\\).*\\|.*not a regular "
                               "file \\(it is a FIFO\\).*\n"));
        const CliResult cli = run_cli({"get", "c", "--segment", planted.name});
        CHECK(cli.exit_code == 6);
        CHECK_THAT(cli.err, Catch::Contains("not a regular file"));
        REQUIRE(::lstat(planted.path().c_str(), &before) == 0);
        CHECK(S_ISFIFO(before.st_mode));  // the writer left it where it was
    }
    SECTION("a directory") {
        REQUIRE(::mkdir(planted.path().c_str(), 0700) == 0);
        const OpenOutcome o = open_in_child(planted.name);
        INFO(o.text);
        REQUIRE(o.finished);
        CHECK(o.text.rfind(expected_codes(), 0) == 0);
        CHECK_THAT(o.text,
                   Catch::Matches(".*\\|.*not a regular file.*\\|.*not a regular file.*\n"));
        CHECK(cli_get_exit(planted.name) == 6);
    }
}

TEST_CASE("an empty file (a refresher between create and initialise) is no segment yet") {
    SegmentGuard g{segtest::unique_segment("hzero")};
    const int fd = ::shm_open(("/" + g.name).c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
    REQUIRE(fd >= 0);
    CHECK(open_error(g.name) == Error::no_segment);
    CHECK(cli_get_exit(g.name) == 3);

    SECTION("and a new writer initialises it") {
        auto w = shm::WriterSegment::create_or_attach(segtest::spec(g.name, kMaxToken, kSlots));
        INFO((w ? std::string("ok") : w.error().message));
        REQUIRE(w);
        const std::uint32_t slot = *w->claim("c");
        shm::SlotRecord r;
        r.version = 1;
        r.state = shm::RecordState::valid;
        r.token = "after-recovery";
        r.expires_at_ms = shm::sys::realtime_ms() + 60'000;
        REQUIRE(w->publish(slot, r));
        CHECK(cli_get_exit(g.name) == 0);
    }
    SECTION("sized but magic never published: a new writer initialises it") {
        REQUIRE(::ftruncate(fd, static_cast<off_t>(kGeo.total_size())) == 0);
        CHECK(open_error(g.name, "not initialised") == Error::no_segment);
        auto w = shm::WriterSegment::create_or_attach(segtest::spec(g.name, kMaxToken, kSlots));
        INFO((w ? std::string("ok") : w.error().message));
        REQUIRE(w);
        CHECK_FALSE(open_error(g.name));
    }
    ::close(fd);
}

TEST_CASE("corrupt records: lengths beyond their caps are incompatible from get") {
    SegmentGuard g{segtest::unique_segment("hrec")};
    make_valid(g.name);
    RawSegment raw(g.name);
    REQUIRE(raw.ok());
    const std::size_t rc = current_copy(raw, 0);
    std::vector<char> pristine(raw.bytes() + rc, raw.bytes() + rc + TOKENSHM_REC_FIXED_SIZE);

    struct Case {
        const char* what;
        std::size_t off;
        std::uint32_t value;
        int width;
    };
    const Case cases[] = {
        {"token_len max+1", TOKENSHM_REC_TOKEN_LEN, kMaxToken + 1, 4},
        {"token_len 2^32-1", TOKENSHM_REC_TOKEN_LEN, 0xFFFFFFFFu, 4},
        {"type_len 33", TOKENSHM_REC_TYPE_LEN, TOKENSHM_TYPE_CAP + 1, 2},
        {"type_len 65535", TOKENSHM_REC_TYPE_LEN, 0xFFFF, 2},
        {"scope_len 1025", TOKENSHM_REC_SCOPE_LEN, TOKENSHM_SCOPE_CAP + 1, 2},
        {"error_len 241", TOKENSHM_REC_ERROR_LEN, TOKENSHM_ERROR_CAP + 1, 2},
        {"error_len 65535", TOKENSHM_REC_ERROR_LEN, 0xFFFF, 2},
        {"state 5", TOKENSHM_REC_STATE, 5, 4},
        {"state 2^32-1", TOKENSHM_REC_STATE, 0xFFFFFFFFu, 4},
    };
    for (const Case& c : cases) {
        INFO(c.what);
        std::memcpy(raw.bytes() + rc, pristine.data(), pristine.size());
        if (c.width == 2)
            raw.put<std::uint16_t>(rc + c.off, static_cast<std::uint16_t>(c.value));
        else
            raw.put<std::uint32_t>(rc + c.off, c.value);
        auto reader = tokenshm::Reader::open(g.name);
        REQUIRE(reader);
        auto h = reader->lookup("c");
        REQUIRE(h);
        auto t = h->get();
        REQUIRE_FALSE(t);
        CHECK(t.error() == Error::incompatible);
        auto i = h->inspect();
        REQUIRE_FALSE(i);
        CHECK(i.error() == Error::incompatible);
        CHECK(cli_get_exit(g.name) == 6);
        const CliResult status = run_cli({"status", "--segment", g.name});
        CHECK(status.exit_code == 0);  // status reports the bad slot, it does not die of it
        CHECK_THAT(status.out, Catch::Contains("incompatible"));
        const CliResult json = run_cli({"status", "--json", "--segment", g.name});
        CHECK(json.exit_code == 0);
        CHECK_THAT(json.out, Catch::Contains("\"error\""));
    }

    SECTION("a re-attaching writer resets the corrupt slot to empty, versions going on") {
        raw.put<std::uint32_t>(rc + TOKENSHM_REC_TOKEN_LEN, 0xFFFFFFFFu);
        std::vector<std::string> repaired;
        auto w = shm::WriterSegment::create_or_attach(segtest::spec(g.name, kMaxToken, kSlots),
                                                      &repaired);
        REQUIRE(w);
        CHECK_FALSE(w->created());
        REQUIRE(repaired.size() == 1);
        CHECK_THAT(repaired[0], Catch::Contains("'c'"));
        auto reader = tokenshm::Reader::open(g.name);
        REQUIRE(reader);
        auto h = reader->lookup("c");
        REQUIRE(h);
        CHECK(h->get().error() == Error::empty);
        auto rec = h->inspect();
        REQUIRE(rec);
        CHECK(rec->version() >= 2);
    }
}

TEST_CASE("absurd times in the header and the record never overflow a reader or the CLI") {
    // Signed overflow is undefined; UBSan (CI) turns any into a failure here,
    // in the library and in the tokenshm processes the test runs.
    SegmentGuard g{segtest::unique_segment("htime")};
    make_valid(g.name);
    RawSegment raw(g.name);
    REQUIRE(raw.ok());
    const std::size_t rc = current_copy(raw, 0);
    constexpr auto kMin = std::numeric_limits<std::int64_t>::min();
    constexpr auto kMax = std::numeric_limits<std::int64_t>::max();
    for (const std::int64_t v : {kMin, kMin + 1, std::int64_t{-1}, kMax - 1, kMax}) {
        INFO("every time field = " << v);
        raw.put<std::int64_t>(TOKENSHM_HDR_HEARTBEAT_MS, v);
        for (std::size_t off : {TOKENSHM_REC_EXPIRES_AT_MS, TOKENSHM_REC_ISSUED_AT_MS,
                                TOKENSHM_REC_NEXT_REFRESH_MS, TOKENSHM_REC_LAST_ATTEMPT_MS})
            raw.put<std::int64_t>(rc + off, v);
        auto reader = tokenshm::Reader::open(g.name);
        REQUIRE(reader);
        auto h = reader->lookup("c");
        REQUIRE(h);
        auto rec = h->inspect();
        REQUIRE(rec);
        CHECK(rec->expires_at_ms() == v);
        // Far past or far future, a heartbeat like that is no live writer.
        if (v < 0) CHECK(rec->heartbeat_age_ms() > 1'000'000'000);
        if (v > 0) CHECK(rec->heartbeat_age_ms() < -1'000'000'000);
        CHECK_FALSE(rec->writer_alive());
        auto t = h->get(std::chrono::milliseconds(kMax));
        if (v < 0) {
            REQUIRE_FALSE(t);
            CHECK(t.error() == Error::expired);
        } else {
            CHECK((t || t.error() == Error::expiring));
        }
        CHECK(cli_get_exit(g.name) == (v < 0 ? 5 : 0));
        const CliResult status = run_cli({"status", "--segment", g.name});
        CHECK(status.exit_code == 0);
        const CliResult json = run_cli({"status", "--json", "--segment", g.name});
        CHECK(json.exit_code == 0);
    }
}

TEST_CASE("corrupt slot control: bad status or unterminated name is never found") {
    SegmentGuard g{segtest::unique_segment("hslot")};
    make_valid(g.name);
    RawSegment raw(g.name);
    REQUIRE(raw.ok());

    SECTION("status out of range") {
        raw.put<std::uint32_t>(slot_off(0) + TOKENSHM_SLOT_STATUS, 7);
        auto reader = tokenshm::Reader::open(g.name);
        REQUIRE(reader);
        CHECK(reader->lookup("c").error().code == Error::no_such_credential);
        CHECK(reader->credentials().empty());
        CHECK(cli_get_exit(g.name) == 4);
    }
    SECTION("a name filling all 64 bytes, no NUL") {
        std::memset(raw.bytes() + slot_off(0) + TOKENSHM_SLOT_NAME, 'a', TOKENSHM_SLOT_NAME_CAP);
        auto reader = tokenshm::Reader::open(g.name);
        REQUIRE(reader);
        CHECK(reader->lookup(std::string(63, 'a')).error().code == Error::no_such_credential);
        CHECK(reader->lookup(std::string(64, 'a')).error().code == Error::no_such_credential);
        const auto names = reader->credentials();
        REQUIRE(names.size() == 1);
        CHECK(names[0].size() <= TOKENSHM_SLOT_NAME_CAP);
        CHECK(run_cli({"status", "--segment", g.name}).exit_code == 0);

        std::vector<std::string> repaired;
        auto w = shm::WriterSegment::create_or_attach(segtest::spec(g.name, kMaxToken, kSlots),
                                                      &repaired);
        REQUIRE(w);
        CHECK(repaired.size() == 1);  // freed by the writer
        CHECK(reader->credentials().empty());
    }
}

TEST_CASE("owner: another uid is untrusted unless TOKENSHM_TRUSTED_UID names it") {
    if (::geteuid() != 0) {
        SKIP_OR_FAIL_UNDER_CI("not root: cannot create a segment as another user");
    }
    struct passwd* nobody = ::getpwnam("nobody");
    if (nobody == nullptr || ::access("/usr/bin/setpriv", X_OK) != 0) {
        SKIP_OR_FAIL_UNDER_CI("no user 'nobody' or no /usr/bin/setpriv");
    }
    const uid_t nobody_uid = nobody->pw_uid;
    SegmentGuard g{segtest::unique_segment("howner")};
    const std::string publisher = segtest::build_path("tests/libshm/publisher");

    // The publisher, run as nobody, creates and holds the segment.
    Pipe out;
    Child pub = Child::fork([&] {
        ::dup2(out.wr(), 1);
        const char* argv[] = {"setpriv",
                              "--reuid=nobody",
                              "--regid=nogroup",
                              "--clear-groups",
                              publisher.c_str(),
                              g.name.c_str(),
                              "c",
                              "tok-of-nobody",
                              "600000",
                              "--hold",
                              "120",
                              nullptr};
        ::execv("/usr/bin/setpriv", const_cast<char**>(argv));
        return 127;
    });
    out.close_write();
    char line[64] = {};
    const std::size_t n = segtest::read_exact(out.rd(), line, 6, 30s);
    INFO("publisher said '" << std::string(line, n) << "', " << pub.describe());
    REQUIRE(std::string(line, n) == "ready ");
    struct stat st {};
    {
        const int fd = ::shm_open(("/" + g.name).c_str(), O_RDONLY, 0);
        REQUIRE(fd >= 0);
        REQUIRE(::fstat(fd, &st) == 0);
        ::close(fd);
    }
    REQUIRE(st.st_uid == nobody_uid);

    EnvGuard no_env("TOKENSHM_TRUSTED_UID", nullptr);
    const std::string uid_str = std::to_string(nobody_uid);
    SECTION("refused by default") {
        CHECK(open_error(g.name, "uid " + uid_str) == Error::untrusted);
        CHECK(cli_get_exit(g.name) == 6);
    }
    SECTION("accepted through OpenOptions::trusted_uid") {
        tokenshm::OpenOptions o;
        o.trusted_uid = nobody_uid;
        auto r = tokenshm::Reader::open(g.name, o);
        REQUIRE(r);
        auto h = r->lookup("c");
        REQUIRE(h);
        auto t = h->get();
        REQUIRE(t);
        CHECK(t->token() == "tok-of-nobody");
        o.trusted_uid = nobody_uid - 1;
        CHECK(open_error(g.name, "", o) == Error::untrusted);
    }
    SECTION("accepted through TOKENSHM_TRUSTED_UID") {
        EnvGuard env("TOKENSHM_TRUSTED_UID", uid_str.c_str());
        CHECK_FALSE(open_error(g.name));
        const CliResult r = run_cli({"get", "c", "--segment", g.name});
        CHECK(r.exit_code == 0);
        CHECK(r.out == "tok-of-nobody\n");
    }
    SECTION("a different TOKENSHM_TRUSTED_UID does not help") {
        EnvGuard env("TOKENSHM_TRUSTED_UID", "12345");
        CHECK(open_error(g.name, "uid " + uid_str) == Error::untrusted);
    }
    SECTION("garbage TOKENSHM_TRUSTED_UID is rejected, not ignored") {
        for (const char* bad :
             {"abc", "-1", "65534x", " 65534", "4294967295", "99999999999", "0x10", "1e3"}) {
            INFO("TOKENSHM_TRUSTED_UID='" << bad << "'");
            EnvGuard env("TOKENSHM_TRUSTED_UID", bad);
            CHECK(open_error(g.name, "TOKENSHM_TRUSTED_UID") == Error::invalid_argument);
            CHECK(cli_get_exit(g.name) == 2);
        }
    }
    pub.kill(SIGTERM);
    REQUIRE(pub.wait(30s));
    CHECK(pub.exited_with(0));
}

TEST_CASE("a writer never adopts a segment owned by another uid") {
    if (::geteuid() != 0) {
        SKIP_OR_FAIL_UNDER_CI("not root: cannot chown the segment to another uid");
    }
    SegmentGuard g{segtest::unique_segment("hadopt")};
    make_valid(g.name);
    RawSegment raw(g.name);
    REQUIRE(raw.ok());
    REQUIRE(::fchown(raw.fd(), 65534, 65534) == 0);
    auto w = shm::WriterSegment::create_or_attach(segtest::spec(g.name, kMaxToken, kSlots));
    REQUIRE_FALSE(w);
    CHECK(w.error().code == shm::SegmentErrc::untrusted);
    CHECK_THAT(w.error().message, Catch::Contains("uid 65534"));
}

TEST_CASE("a foreign segment is refused on its owner before its lock or header is believed") {
    if (::geteuid() != 0) {
        SKIP_OR_FAIL_UNDER_CI("not root: cannot chown the segment to another uid");
    }
    SegmentGuard g{segtest::unique_segment("hforeignlock")};
    make_valid(g.name);
    RawSegment raw(g.name);
    REQUIRE(raw.ok());
    // What a hostile owner plants: a lock held and a header naming pid 1.
    raw.put<std::int64_t>(TOKENSHM_HDR_WRITER_PID, 1);
    REQUIRE(shm::sys::lock_exclusive(raw.fd(), g.name));
    REQUIRE(::fchown(raw.fd(), 65534, 65534) == 0);
    auto w = shm::WriterSegment::create_or_attach(segtest::spec(g.name, kMaxToken, kSlots));
    REQUIRE_FALSE(w);
    INFO(w.error().message);
    CHECK(w.error().code == shm::SegmentErrc::untrusted);
    CHECK_THAT(w.error().message, Catch::Contains("owned by uid 65534"));
    CHECK_THAT(w.error().message, !Catch::Contains("pid") && !Catch::Contains("held by"));
    CHECK(open_error(g.name, "owned by uid 65534") == Error::untrusted);
}

TEST_CASE("a writer refuses a segment made with another max_token_bytes") {
    SegmentGuard g{segtest::unique_segment("hcfg")};
    make_valid(g.name);
    auto w = shm::WriterSegment::create_or_attach(segtest::spec(g.name, kMaxToken * 2, kSlots));
    REQUIRE_FALSE(w);
    CHECK(w.error().code == shm::SegmentErrc::incompatible);
    CHECK_THAT(w.error().message, Catch::Contains("max_token_bytes"));
    CHECK_FALSE(open_error(g.name));  // and left it as it was
}
