// StateStore against the real filesystem in a temporary directory, and
// through a FaultyFileSystem that fails one chosen operation, to show that a
// rotated refresh token is never lost and never half-written.
//
// Every token here is an obviously fake test value ("rt-test-..."); the
// checks that a message leaks no content use a marker that is not a token.
#include "state_store.hpp"

#include <tokenshm/shm/segment.hpp>

#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

using namespace tokenshm::refresher;
namespace stdfs = std::filesystem;

namespace {

class TempDir {
  public:
    TempDir() {
        const char* base = std::getenv("TMPDIR");
        std::string tmpl = std::string(base != nullptr && *base != '\0' ? base : "/tmp") +
                           "/tokenshm-state-test.XXXXXX";
        if (::mkdtemp(tmpl.data()) == nullptr) FAIL("mkdtemp(" << tmpl << ") failed");
        path_ = tmpl;
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    ~TempDir() {
        std::error_code ec;
        stdfs::remove_all(path_, ec);
    }
    const std::string& path() const { return path_; }

  private:
    std::string path_;
};

void write_file(const std::string& path, const std::string& content, mode_t mode) {
    {
        std::ofstream out(path, std::ios::binary | std::ios::trunc);
        REQUIRE(out.good());
        out << content;
        REQUIRE(out.good());
    }
    REQUIRE(::chmod(path.c_str(), mode) == 0);
}

std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    REQUIRE(in.good());
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// What a state file holding `token` contains (format v2).
std::string state_file_of(const std::string& token) {
    return std::string(encode_state_file(Secret(token)).reveal());
}

mode_t mode_of(const std::string& path) {
    struct stat st {};
    REQUIRE(::lstat(path.c_str(), &st) == 0);
    return st.st_mode & 07777;
}

bool exists(const std::string& path) {
    struct stat st {};
    return ::lstat(path.c_str(), &st) == 0;
}

std::set<std::string> entries(const std::string& dir) {
    std::set<std::string> names;
    for (const auto& e : stdfs::directory_iterator(dir))
        names.insert(e.path().filename());
    return names;
}

std::size_t open_fds() {
    return static_cast<std::size_t>(
        std::distance(stdfs::directory_iterator("/proc/self/fd"), stdfs::directory_iterator{}));
}

struct Warnings {
    std::vector<std::pair<std::string, std::string>> seen;  // (cred, message)
    StateWarningSink sink() {
        return [this](std::string_view cred, std::string_view msg) {
            seen.emplace_back(std::string(cred), std::string(msg));
        };
    }
};

// PosixFileSystem with one operation made to fail: the fail_at-th call
// (1-based; 0 = none). Failures behave like the kernel's: a failed write has
// written part of the data, a failed close has still released the descriptor.
class FaultyFileSystem final : public FileSystem {
  public:
    int fail_at = 0;
    std::vector<std::string> calls;          // "open", "write_all", ... in order
    std::optional<uid_t> reported_uid;       // stat() pretends this owner
    std::optional<uid_t> reported_file_uid;  // fstat() pretends this owner

    FsResult<int> open(const std::string& path, int flags, mode_t mode) override {
        if (hit("open")) return injected("open", EMFILE, path);
        return real_.open(path, flags, mode);
    }
    FsResult<int> open_directory(const std::string& path) override {
        if (hit("open_directory")) return injected("open", EMFILE, path);
        return real_.open_directory(path);
    }
    FsResult<Done> close(int fd, const std::string& path) override {
        if (hit("close")) {
            (void)real_.close(fd, path);
            return injected("close", EIO, path);
        }
        return real_.close(fd, path);
    }
    FsResult<Done> write_all(int fd, std::string_view bytes, const std::string& path) override {
        if (hit("write_all")) {
            (void)real_.write_all(fd, bytes.substr(0, bytes.size() / 2), path);
            return injected("write", ENOSPC, path);
        }
        return real_.write_all(fd, bytes, path);
    }
    FsResult<Secret> read_all(int fd, std::size_t max_bytes, const std::string& path) override {
        if (hit("read_all")) return injected("read", EIO, path);
        return real_.read_all(fd, max_bytes, path);
    }
    FsResult<Done> fsync(int fd, const std::string& path) override {
        if (hit("fsync")) return injected("fsync", EIO, path);
        return real_.fsync(fd, path);
    }
    FsResult<Done> fchmod(int fd, mode_t mode, const std::string& path) override {
        if (hit("fchmod")) return injected("fchmod", EPERM, path);
        return real_.fchmod(fd, mode, path);
    }
    FsResult<Done> fchown_group(int fd, gid_t gid, const std::string& path) override {
        if (hit("fchown_group")) return injected("fchown", EPERM, path);
        return real_.fchown_group(fd, gid, path);
    }
    FsResult<struct stat> fstat(int fd, const std::string& path) override {
        if (hit("fstat")) return injected("fstat", EIO, path);
        auto st = real_.fstat(fd, path);
        if (st && reported_file_uid) st->st_uid = *reported_file_uid;
        return st;
    }
    FsResult<struct stat> stat(const std::string& path) override {
        if (hit("stat")) return injected("stat", EACCES, path);
        auto st = real_.stat(path);
        if (st && reported_uid) st->st_uid = *reported_uid;
        return st;
    }
    FsResult<Done> chmod(const std::string& path, mode_t mode) override {
        if (hit("chmod")) return injected("chmod", EPERM, path);
        return real_.chmod(path, mode);
    }
    FsResult<Done> mkdir(const std::string& path, mode_t mode) override {
        if (hit("mkdir")) return injected("mkdir", ENOSPC, path);
        return real_.mkdir(path, mode);
    }
    FsResult<Done> rename(const std::string& from, const std::string& to) override {
        if (hit("rename")) return injected("rename", ENOSPC, from + " -> " + to);
        return real_.rename(from, to);
    }
    FsResult<Done> unlink(const std::string& path) override {
        if (hit("unlink")) return injected("unlink", EIO, path);
        return real_.unlink(path);
    }

  private:
    bool hit(const char* call) {
        calls.emplace_back(call);
        return fail_at != 0 && static_cast<int>(calls.size()) == fail_at;
    }
    static tokenshm::Unexpected<FsError> injected(const char* call, int err, std::string path) {
        return tokenshm::Unexpected<FsError>{FsError{call, err, std::move(path)}};
    }
    PosixFileSystem real_;
};

}  // namespace

// ------------------------------------------------------------------ names

TEST_CASE("the state store takes libshm's credential names: [A-Za-z0-9._-]{1,63}",
          "[state_store]") {
    CHECK(tokenshm::shm::valid_credential_name("storage"));
    CHECK(tokenshm::shm::valid_credential_name("A-z_0.9"));
    CHECK(tokenshm::shm::valid_credential_name(std::string(63, 'a')));
    CHECK_FALSE(tokenshm::shm::valid_credential_name(""));
    CHECK_FALSE(tokenshm::shm::valid_credential_name(std::string(64, 'a')));
    CHECK_FALSE(tokenshm::shm::valid_credential_name("a/b"));
    CHECK_FALSE(tokenshm::shm::valid_credential_name("../etc/passwd"));
    CHECK_FALSE(tokenshm::shm::valid_credential_name("a b"));
    CHECK_FALSE(tokenshm::shm::valid_credential_name(std::string("a\0b", 3)));
    CHECK_FALSE(tokenshm::shm::valid_credential_name("caf\xc3\xa9"));
}

TEST_CASE("save and load reject bad credential names and touch nothing", "[state_store]") {
    TempDir tmp;
    PosixFileSystem fs;
    StateStore store(fs, tmp.path());
    REQUIRE(store.prepare());
    for (const std::string& bad :
         std::vector<std::string>{"", "a/b", "../x", "x\ny", std::string(64, 'n')}) {
        INFO("name of " << bad.size() << " bytes");
        auto saved = store.save(bad, Secret("rt-test-1"));
        REQUIRE_FALSE(saved);
        CHECK(saved.error().message.find("credential name") != std::string::npos);
        CHECK(saved.error().message.find('\n') == std::string::npos);
        auto loaded = store.load(bad);
        REQUIRE_FALSE(loaded);
        CHECK(loaded.error().message.find("credential name") != std::string::npos);
    }
    CHECK(entries(tmp.path()).empty());
    CHECK(entries(stdfs::path(tmp.path()).parent_path()).count("x.refresh_token") == 0);
}

// ------------------------------------------------------------------ prepare

TEST_CASE("prepare creates a missing state directory with mode 0700", "[state_store]") {
    TempDir tmp;
    PosixFileSystem fs;
    Warnings w;
    const std::string dir = tmp.path() + "/state";
    StateStore store(fs, dir + "/", w.sink());
    CHECK(store.dir() == dir);
    const mode_t old_umask = ::umask(0);
    auto prepared = store.prepare();
    ::umask(old_umask);
    REQUIRE(prepared);
    CHECK(mode_of(dir) == 0700);
    CHECK(w.seen.empty());
    // A second start finds it in order.
    REQUIRE(store.prepare());
    CHECK(w.seen.empty());
}

TEST_CASE("prepare says so when the parent directory is missing", "[state_store]") {
    TempDir tmp;
    PosixFileSystem fs;
    StateStore store(fs, tmp.path() + "/missing/state");
    auto prepared = store.prepare();
    REQUIRE_FALSE(prepared);
    CHECK(prepared.error().message == "state_dir " + tmp.path() +
                                          "/missing/state: its parent directory " + tmp.path() +
                                          "/missing does not exist (mkdir(" + tmp.path() +
                                          "/missing/state): No such file or directory)");
    CHECK_FALSE(exists(tmp.path() + "/missing"));
}

TEST_CASE("prepare rejects a state_dir that is not a directory", "[state_store]") {
    TempDir tmp;
    PosixFileSystem fs;
    write_file(tmp.path() + "/file", "x", 0600);
    StateStore store(fs, tmp.path() + "/file");
    auto prepared = store.prepare();
    REQUIRE_FALSE(prepared);
    CHECK(prepared.error().message == "state_dir " + tmp.path() + "/file is not a directory");
    CHECK(prepared.error().kind == RefresherError::Kind::runtime);
}

TEST_CASE("prepare tightens a 0755 directory to 0700 and warns", "[state_store]") {
    TempDir tmp;
    PosixFileSystem fs;
    Warnings w;
    REQUIRE(::chmod(tmp.path().c_str(), 0755) == 0);
    StateStore store(fs, tmp.path(), w.sink());
    REQUIRE(store.prepare());
    CHECK(mode_of(tmp.path()) == 0700);
    REQUIRE(w.seen.size() == 1);
    CHECK(w.seen[0].first.empty());
    CHECK(w.seen[0].second ==
          "state_dir " + tmp.path() + ": mode 0755 allowed group or other access; changed to 0700");
}

TEST_CASE("prepare refuses a directory owned by another uid", "[state_store]") {
    TempDir tmp;
    FaultyFileSystem fs;
    fs.reported_uid = ::geteuid() + 1;
    StateStore store(fs, tmp.path());
    auto prepared = store.prepare();
    REQUIRE_FALSE(prepared);
    CHECK(prepared.error().message ==
          "state_dir " + tmp.path() + " is owned by uid " + std::to_string(::geteuid() + 1) +
              ", but the refresher runs as uid " + std::to_string(::geteuid()));
}

TEST_CASE("prepare names the failing call", "[state_store]") {
    TempDir tmp;
    SECTION("stat") {
        FaultyFileSystem fs;
        fs.fail_at = 1;
        StateStore store(fs, tmp.path());
        auto prepared = store.prepare();
        REQUIRE_FALSE(prepared);
        CHECK(prepared.error().message == "state_dir: stat(" + tmp.path() + "): Permission denied");
    }
    SECTION("mkdir") {
        FaultyFileSystem fs;
        fs.fail_at = 2;  // stat (absent), mkdir
        StateStore store(fs, tmp.path() + "/state");
        auto prepared = store.prepare();
        REQUIRE_FALSE(prepared);
        CHECK(prepared.error().message ==
              "state_dir: mkdir(" + tmp.path() + "/state): No space left on device");
    }
    SECTION("chmod") {
        REQUIRE(::chmod(tmp.path().c_str(), 0750) == 0);
        FaultyFileSystem fs;
        fs.fail_at = 2;  // stat, chmod
        StateStore store(fs, tmp.path());
        auto prepared = store.prepare();
        REQUIRE_FALSE(prepared);
        CHECK(prepared.error().message ==
              "state_dir: chmod(" + tmp.path() + "): Operation not permitted");
        CHECK(mode_of(tmp.path()) == 0750);
    }
}

// ------------------------------------------------------------------ save and load

TEST_CASE("save then load round-trips with modes 0600 and 0700", "[state_store]") {
    TempDir tmp;
    PosixFileSystem fs;
    Warnings w;
    StateStore store(fs, tmp.path() + "/state", w.sink());
    REQUIRE(store.prepare());

    REQUIRE(store.save("storage", Secret("rt-test-1")));
    const std::string file = tmp.path() + "/state/storage.refresh_token";
    CHECK(store.token_path("storage") == file);
    // The header, with the SHA-256 of the token, then the token.
    CHECK(read_file(file) ==
          "tokenshm-state v2 "
          "sha256=a5b57562346c5968ca8f2545fc245a21a84098f13631a46a1eda70be23cf1ced\nrt-test-1\n");
    CHECK(mode_of(file) == 0600);
    CHECK(mode_of(tmp.path() + "/state") == 0700);
    CHECK(entries(tmp.path() + "/state") == std::set<std::string>{"storage.refresh_token"});

    auto loaded = store.load("storage");
    REQUIRE(loaded);
    REQUIRE(loaded->has_value());
    CHECK((*loaded)->reveal() == "rt-test-1");

    // A successor replaces it.
    REQUIRE(store.save("storage", Secret("rt-test-2")));
    loaded = store.load("storage");
    REQUIRE(loaded);
    REQUIRE(loaded->has_value());
    CHECK((*loaded)->reveal() == "rt-test-2");
    CHECK(entries(tmp.path() + "/state") == std::set<std::string>{"storage.refresh_token"});
    CHECK(w.seen.empty());
}

TEST_CASE("save writes mode 0600 whatever the umask or a leftover temp file", "[state_store]") {
    TempDir tmp;
    PosixFileSystem fs;
    StateStore store(fs, tmp.path());
    REQUIRE(store.prepare());
    const std::string file = tmp.path() + "/storage.refresh_token";
    write_file(file + ".tmp", "leftover from a crash, longer than the new token", 0666);

    const mode_t old_umask = ::umask(0);
    auto saved = store.save("storage", Secret("rt-test-1"));
    ::umask(old_umask);
    REQUIRE(saved);
    CHECK(mode_of(file) == 0600);
    CHECK(read_file(file) == state_file_of("rt-test-1"));
    CHECK_FALSE(exists(file + ".tmp"));
}

TEST_CASE("save refuses a value load would refuse, keeping the old file", "[state_store]") {
    TempDir tmp;
    PosixFileSystem fs;
    StateStore store(fs, tmp.path());
    REQUIRE(store.prepare());
    REQUIRE(store.save("storage", Secret("rt-test-1")));
    const std::string file = tmp.path() + "/storage.refresh_token";

    for (const std::string& bad : {std::string(), std::string("rt-test\nLEAKMARKER"),
                                   std::string(StateStore::max_token_bytes + 1, 'L')}) {
        INFO("value of " << bad.size() << " bytes");
        auto saved = store.save("storage", Secret(bad));
        REQUIRE_FALSE(saved);
        CHECK(saved.error().message.rfind(
                  "saving the refresh token of storage: the new refresh token ", 0) == 0);
        CHECK(saved.error().message.find("LEAKMARKER") == std::string::npos);
        CHECK(saved.error().message.find("LLLL") == std::string::npos);
        CHECK(read_file(file) == state_file_of("rt-test-1"));
        CHECK(entries(tmp.path()) == std::set<std::string>{"storage.refresh_token"});
    }
}

TEST_CASE("save does not follow a link or open a FIFO left at the temp path", "[state_store]") {
    TempDir tmp;
    PosixFileSystem fs;
    const std::string dir = tmp.path() + "/state";
    StateStore store(fs, dir);
    REQUIRE(store.prepare());
    const std::string victim = tmp.path() + "/victim";
    write_file(victim, "untouched", 0644);
    const std::string temp = dir + "/storage.refresh_token.tmp";

    SECTION("symbolic link") {
        REQUIRE(::symlink(victim.c_str(), temp.c_str()) == 0);
    }
    SECTION("FIFO (an open without O_EXCL | O_NONBLOCK would block)") {
        REQUIRE(::mkfifo(temp.c_str(), 0600) == 0);
    }
    // The temp file is created exclusively: what was there goes, nothing is
    // written through it.
    REQUIRE(store.save("storage", Secret("rt-test-1")));
    CHECK(read_file(victim) == "untouched");
    CHECK_FALSE(exists(temp));
    CHECK(read_file(dir + "/storage.refresh_token") == state_file_of("rt-test-1"));
}

TEST_CASE("load of an absent file is nullopt", "[state_store]") {
    TempDir tmp;
    PosixFileSystem fs;
    StateStore store(fs, tmp.path());
    REQUIRE(store.prepare());
    auto loaded = store.load("storage");
    REQUIRE(loaded);
    CHECK_FALSE(loaded->has_value());
}

TEST_CASE("load strips exactly one trailing newline", "[state_store]") {
    TempDir tmp;
    PosixFileSystem fs;
    StateStore store(fs, tmp.path());
    const std::string file = tmp.path() + "/storage.refresh_token";

    write_file(file, "rt-test-1", 0600);
    auto loaded = store.load("storage");
    REQUIRE(loaded);
    REQUIRE(loaded->has_value());
    CHECK((*loaded)->reveal() == "rt-test-1");

    write_file(file, "rt-test-1\n", 0600);
    loaded = store.load("storage");
    REQUIRE(loaded);
    REQUIRE(loaded->has_value());
    CHECK((*loaded)->reveal() == "rt-test-1");

    write_file(file, "rt-test-1\n\n", 0600);
    loaded = store.load("storage");
    REQUIRE_FALSE(loaded);
    CHECK(loaded.error().message.find("control character") != std::string::npos);
}

TEST_CASE("a token file readable by others loads with a warning", "[state_store]") {
    TempDir tmp;
    PosixFileSystem fs;
    Warnings w;
    StateStore store(fs, tmp.path(), w.sink());
    const std::string file = tmp.path() + "/storage.refresh_token";
    write_file(file, "rt-test-1\n", 0644);

    auto loaded = store.load("storage");
    REQUIRE(loaded);
    REQUIRE(loaded->has_value());
    CHECK((*loaded)->reveal() == "rt-test-1");
    REQUIRE(w.seen.size() == 1);
    CHECK(w.seen[0].first == "storage");
    CHECK(w.seen[0].second ==
          file + ": mode 0644 allows group or other access to a refresh token (expected 0600)");
    CHECK(mode_of(file) == 0644);  // reported, not changed behind the operator's back
}

TEST_CASE("load rejects bad contents without quoting them", "[state_store]") {
    TempDir tmp;
    PosixFileSystem fs;
    StateStore store(fs, tmp.path());
    const std::string file = tmp.path() + "/storage.refresh_token";
    const std::string max = std::to_string(StateStore::max_token_bytes);

    struct Case {
        std::string content;
        std::string error;
    };
    const std::vector<Case> cases = {
        {"", file + " is empty"},
        {"\n", file + " is empty"},
        {std::string(StateStore::max_token_bytes + 1, 'L'),
         file + " is larger than " + max + " bytes"},
        {std::string(StateStore::max_token_bytes + 1, 'L') + "\n",
         file + " is larger than " + max + " bytes"},
        {std::string(1 << 20, 'L'),
         file + " is larger than " + std::to_string(StateStore::max_file_bytes) + " bytes"},
        {std::string("LEAKMARKER\0LEAKMARKER", 21),
         file + " contains a NUL or control character (a refresh token is one line of printable "
                "text)"},
        {"LEAKMARKER\x01", file + " contains a NUL or control character (a refresh token is one "
                                  "line of printable text)"},
        {"LEAKMARKER\r\n", file + " contains a NUL or control character (a refresh token is one "
                                  "line of printable text)"},
        {"LEAKMARKER\x7f", file + " contains a NUL or control character (a refresh token is one "
                                  "line of printable text)"},
    };
    for (std::size_t i = 0; i < cases.size(); ++i) {
        INFO("case " << i);
        write_file(file, cases[i].content, 0600);
        auto loaded = store.load("storage");
        REQUIRE_FALSE(loaded);
        CHECK(loaded.error().message == cases[i].error);
    }

    // The largest accepted token, with and without its newline.
    write_file(file, std::string(StateStore::max_token_bytes, 'L') + "\n", 0600);
    auto loaded = store.load("storage");
    REQUIRE(loaded);
    REQUIRE(loaded->has_value());
    CHECK((*loaded)->size() == StateStore::max_token_bytes);
}

TEST_CASE("load refuses links, directories and FIFOs in the token file's place", "[state_store]") {
    TempDir tmp;
    PosixFileSystem fs;
    StateStore store(fs, tmp.path());
    const std::string file = tmp.path() + "/storage.refresh_token";

    SECTION("symbolic link") {
        write_file(tmp.path() + "/elsewhere", "rt-test-1\n", 0600);
        REQUIRE(::symlink("elsewhere", file.c_str()) == 0);
        auto loaded = store.load("storage");
        REQUIRE_FALSE(loaded);
        CHECK(loaded.error().message == "open(" + file + "): Too many levels of symbolic links");
    }
    SECTION("directory") {
        REQUIRE(::mkdir(file.c_str(), 0700) == 0);
        auto loaded = store.load("storage");
        REQUIRE_FALSE(loaded);
        CHECK(loaded.error().message == file + " is not a regular file");
    }
    SECTION("FIFO, without blocking") {
        REQUIRE(::mkfifo(file.c_str(), 0600) == 0);
        auto loaded = store.load("storage");
        REQUIRE_FALSE(loaded);
        CHECK(loaded.error().message == file + " is not a regular file");
    }
}

TEST_CASE("load names the failing call and leaks no descriptor", "[state_store]") {
    TempDir tmp;
    PosixFileSystem real;
    StateStore setup(real, tmp.path());
    REQUIRE(setup.save("storage", Secret("rt-test-1")));
    const std::string file = tmp.path() + "/storage.refresh_token";

    FaultyFileSystem dry;
    StateStore probe(dry, tmp.path());
    REQUIRE(probe.load("storage"));
    REQUIRE(dry.calls == std::vector<std::string>{"open", "fstat", "read_all", "close"});

    const std::map<int, std::string> expected = {
        {1, "open(" + file + "): Too many open files"},
        {2, "fstat(" + file + "): Input/output error"},
        {3, "read(" + file + "): Input/output error"},
    };
    for (const auto& [k, message] : expected) {
        INFO("failing operation " << k);
        const std::size_t fds = open_fds();
        FaultyFileSystem fs;
        fs.fail_at = k;
        StateStore store(fs, tmp.path());
        auto loaded = store.load("storage");
        REQUIRE_FALSE(loaded);
        CHECK(loaded.error().message == message);
        CHECK(open_fds() == fds);
    }

    // A failed close after a complete read costs nothing: loaded, with a warning.
    const std::size_t fds = open_fds();
    FaultyFileSystem fs;
    fs.fail_at = 4;
    Warnings w;
    StateStore store(fs, tmp.path(), w.sink());
    auto loaded = store.load("storage");
    REQUIRE(loaded);
    REQUIRE(loaded->has_value());
    CHECK((*loaded)->reveal() == "rt-test-1");
    REQUIRE(w.seen.size() == 1);
    CHECK(w.seen[0].second ==
          "close(" + file + "): Input/output error (ignored: the file was read completely)");
    CHECK(open_fds() == fds);
}

// ------------------------------------------------------------------ faults during save

TEST_CASE("save survives the failure of each of its operations", "[state_store]") {
    TempDir tmp;
    const std::string dir = tmp.path() + "/state";
    const std::string file = dir + "/storage.refresh_token";
    const std::string temp = file + ".tmp";
    PosixFileSystem real;
    StateStore plain(real, dir);
    REQUIRE(plain.prepare());

    // The sequence every save performs, found by a run without faults.
    FaultyFileSystem dry;
    StateStore probe(dry, dir);
    REQUIRE(probe.save("storage", Secret("rt-test-0")));
    // The rename comes before any fsync: a SIGKILL after it loses nothing.
    const std::vector<std::string> sequence = {"open",           "fchmod", "write_all",
                                               "rename",         "fsync",  "close",
                                               "open_directory", "fsync",  "close"};
    REQUIRE(dry.calls == sequence);

    const std::string prefix = "saving the refresh token of storage: ";
    const std::string unchanged = "; " + file + " is unchanged";
    const std::string not_durable =
        "; " + file + " holds the new refresh token but may not survive a power loss";
    const std::vector<std::string> expected = {
        prefix + "open(" + temp + "): Too many open files" + unchanged,
        prefix + "fchmod(" + temp + "): Operation not permitted" + unchanged,
        prefix + "write(" + temp + "): No space left on device" + unchanged,
        prefix + "rename(" + temp + " -> " + file + "): No space left on device" + unchanged,
        prefix + "fsync(" + file + "): Input/output error" + not_durable,
        "",  // closing the synced file: success with a warning
        prefix + "open(" + dir + "): Too many open files" + not_durable,
        prefix + "fsync(" + dir + "): Input/output error" + not_durable,
        "",  // closing the synced directory: success with a warning
    };
    const std::vector<std::string> warnings = {
        "close(" + file + "): Input/output error (ignored: the file was already synced)",
        "close(" + dir + "): Input/output error (ignored: the directory was already synced)",
    };
    REQUIRE(expected.size() == sequence.size());

    for (std::size_t k = 1; k <= sequence.size(); ++k) {
        INFO("failing operation " << k << " (" << sequence[k - 1] << ")");
        REQUIRE(plain.save("storage", Secret("rt-test-old")));
        const std::size_t fds = open_fds();

        FaultyFileSystem fs;
        fs.fail_at = static_cast<int>(k);
        Warnings w;
        StateStore store(fs, dir, w.sink());
        auto saved = store.save("storage", Secret("rt-test-new"));

        CHECK(open_fds() == fds);
        CHECK_FALSE(exists(temp));
        CHECK(mode_of(file) == 0600);
        auto loaded = plain.load("storage");
        REQUIRE(loaded);
        REQUIRE(loaded->has_value());
        if (k <= 4) {  // up to and including the rename: the old token, intact
            REQUIRE_FALSE(saved);
            CHECK(saved.error().message == expected[k - 1]);
            CHECK((*loaded)->reveal() == "rt-test-old");
            CHECK(read_file(file) == state_file_of("rt-test-old"));
        } else if (expected[k - 1].empty()) {  // a close after its fsync: a warning
            REQUIRE(saved);
            CHECK((*loaded)->reveal() == "rt-test-new");
            REQUIRE(w.seen.size() == 1);
            CHECK(w.seen[0].first == "storage");
            CHECK(w.seen[0].second == warnings[k == 6 ? 0 : 1]);
        } else {  // after the rename, not synced: an error, the new token in place
            REQUIRE_FALSE(saved);
            CHECK(saved.error().message == expected[k - 1]);
            CHECK((*loaded)->reveal() == "rt-test-new");
        }
        CHECK(entries(dir) == std::set<std::string>{"storage.refresh_token"});
    }
}

TEST_CASE("a failed first save leaves no token and no temp file", "[state_store]") {
    TempDir tmp;
    FaultyFileSystem fs;
    fs.fail_at = 3;  // open, fchmod, write_all: half the bytes written, then ENOSPC
    StateStore store(fs, tmp.path());
    auto saved = store.save("storage", Secret("rt-test-1"));
    REQUIRE_FALSE(saved);
    CHECK(entries(tmp.path()).empty());
    auto loaded = store.load("storage");
    REQUIRE(loaded);
    CHECK_FALSE(loaded->has_value());
}

TEST_CASE("a failed cleanup is named too", "[state_store]") {
    TempDir tmp;
    FaultyFileSystem fs;
    fs.fail_at = 6;  // open, fchmod, write_all, rename (fails), close, unlink (fails)
    // Make the rename fail for real by putting a non-empty directory in its way.
    const std::string file = tmp.path() + "/storage.refresh_token";
    REQUIRE(::mkdir(file.c_str(), 0700) == 0);
    write_file(file + "/keep", "x", 0600);
    StateStore store(fs, tmp.path());
    auto saved = store.save("storage", Secret("rt-test-1"));
    REQUIRE_FALSE(saved);
    CHECK(saved.error().message == "saving the refresh token of storage: rename(" + file +
                                       ".tmp -> " + file +
                                       "): Is a directory; cleaning up: unlink(" + file +
                                       ".tmp): Input/output error; " + file + " is unchanged");
}

// ------------------------------------------------------------------ refresh_token_file

TEST_CASE("read_secret_file validates like load and names a missing file", "[state_store]") {
    TempDir tmp;
    PosixFileSystem fs;
    Warnings w;
    const std::string file = tmp.path() + "/storage.refresh";

    auto missing = StateStore::read_secret_file(fs, file, w.sink());
    REQUIRE_FALSE(missing);
    CHECK(missing.error().message == "open(" + file + "): No such file or directory");

    write_file(file, "", 0600);
    auto empty = StateStore::read_secret_file(fs, file, w.sink());
    REQUIRE_FALSE(empty);
    CHECK(empty.error().message == file + " is empty");

    // Symbolic links are followed here (secrets mounted by an orchestrator often are links).
    write_file(tmp.path() + "/target", "rt-test-cfg\n", 0640);
    REQUIRE(::unlink(file.c_str()) == 0);
    REQUIRE(::symlink("target", file.c_str()) == 0);
    auto read = StateStore::read_secret_file(fs, file, w.sink(), "storage");
    REQUIRE(read);
    CHECK(read->reveal() == "rt-test-cfg");
    REQUIRE(w.seen.size() == 1);
    CHECK(w.seen[0].first == "storage");
    CHECK(w.seen[0].second.find(file + ": mode 0640 allows group or other access") == 0);
}

// ------------------------------------------------------------------ initial_refresh_token

TEST_CASE("initial_refresh_token prefers the state directory, then the config file",
          "[state_store]") {
    TempDir tmp;
    PosixFileSystem fs;
    Warnings w;
    const std::string dir = tmp.path() + "/state";
    const std::string cfg = tmp.path() + "/storage.refresh";
    StateStore store(fs, dir, w.sink());
    REQUIRE(store.prepare());
    write_file(cfg, "rt-test-config\n", 0600);

    SECTION("only the config file") {
        auto rt = initial_refresh_token(store, fs, "storage", cfg);
        REQUIRE(rt);
        CHECK(rt->reveal() == "rt-test-config");
    }
    SECTION("a rotated token in the state directory wins") {
        REQUIRE(store.save("storage", Secret("rt-test-rotated")));
        auto rt = initial_refresh_token(store, fs, "storage", cfg);
        REQUIRE(rt);
        CHECK(rt->reveal() == "rt-test-rotated");
        rt = initial_refresh_token(store, fs, "storage", std::nullopt);
        REQUIRE(rt);
        CHECK(rt->reveal() == "rt-test-rotated");
    }
    SECTION("neither, and no refresh_token_file configured") {
        auto rt = initial_refresh_token(store, fs, "storage", std::nullopt);
        REQUIRE_FALSE(rt);
        CHECK(rt.error().message == "credentials: storage: no refresh token: neither " + dir +
                                        "/storage.refresh_token nor refresh_token_file exists (set "
                                        "refresh_token_file to a file holding one)");
    }
    SECTION("neither, and refresh_token_file missing") {
        auto rt = initial_refresh_token(store, fs, "storage", tmp.path() + "/gone");
        REQUIRE_FALSE(rt);
        CHECK(rt.error().message == "credentials: storage: no refresh token: neither " + dir +
                                        "/storage.refresh_token nor refresh_token_file " +
                                        tmp.path() + "/gone exists (put a refresh token there)");
    }
    SECTION("a broken state file is an error, not a silent fallback to an older token") {
        write_file(dir + "/storage.refresh_token", "", 0600);
        auto rt = initial_refresh_token(store, fs, "storage", cfg);
        REQUIRE_FALSE(rt);
        CHECK(rt.error().message ==
              "credentials: storage: " + dir + "/storage.refresh_token is empty");
    }
    SECTION("a broken refresh_token_file") {
        write_file(cfg, "LEAKMARKER\x02", 0600);
        auto rt = initial_refresh_token(store, fs, "storage", cfg);
        REQUIRE_FALSE(rt);
        CHECK(rt.error().message ==
              "credentials: storage: refresh_token_file: " + cfg +
                  " contains a NUL or control character (a refresh token is one "
                  "line of printable text)");
    }
    CHECK(w.seen.empty());
}

// ------------------------------------------------------------------ the state file format

TEST_CASE("decode_state_file reads what encode_state_file writes, and format v1", "[state_store]") {
    auto v2 = decode_state_file(state_file_of("rt-test-1"));
    REQUIRE(v2);
    CHECK(v2->token.reveal() == "rt-test-1");
    CHECK(v2->format == StateFileFormat::v2);
    for (const std::string v1 : {"rt-test-1", "rt-test-1\n"}) {
        auto old = decode_state_file(v1);
        REQUIRE(old);
        CHECK(old->token.reveal() == "rt-test-1");
        CHECK(old->format == StateFileFormat::v1);
    }
}

TEST_CASE("a state file cut short or damaged anywhere is reported and never read as a token",
          "[state_store]") {
    const std::string token = "LEAKMARKER-rt-test-1";
    const std::string good = state_file_of(token);
    const std::string torn =
        "F is torn or damaged (its checksum does not match: a write cut short by a crash or a "
        "power loss); its refresh token is not used (move the file aside to fall back to "
        "refresh_token_file)";
    // Every proper prefix, as a crash or power loss may leave it.
    for (std::size_t n = 1; n < good.size(); ++n) {
        INFO("the first " << n << " of " << good.size() << " bytes");
        auto d = decode_state_file(good.substr(0, n), "F");
        REQUIRE_FALSE(d);
        CHECK(d.error().message == torn);
    }
    CHECK(decode_state_file("", "F").error().message == "F is empty");
    // Every single byte changed (a delayed allocation zeroes blocks, a disk flips bits).
    for (std::size_t i = 0; i < good.size(); ++i) {
        for (const char c : {'\0', 'x'}) {
            std::string bad = good;
            if (bad[i] == c) continue;
            bad[i] = c;
            INFO("byte " << i << " changed");
            auto d = decode_state_file(bad, "F");
            REQUIRE_FALSE(d);
            CHECK(d.error().message.find("LEAKMARKER") == std::string::npos);
        }
    }
    auto longer = decode_state_file(good + "x\n", "F");
    REQUIRE_FALSE(longer);
    CHECK(longer.error().message == torn);
    auto newer = decode_state_file("tokenshm-state v3 blake3=00\n" + token + "\n", "F");
    REQUIRE_FALSE(newer);
    CHECK(newer.error().message ==
          "F has a format this version does not know (written by a newer tokenshm?); it is not "
          "used");
}

TEST_CASE("a torn state file stops the credential's start; the token in it is not used",
          "[state_store]") {
    TempDir tmp;
    PosixFileSystem fs;
    StateStore store(fs, tmp.path());
    const std::string cfg = tmp.path() + "/storage.refresh";
    write_file(cfg, "rt-test-config\n", 0600);
    const std::string file = tmp.path() + "/storage.refresh_token";
    const std::string good = state_file_of("rt-test-rotated");
    write_file(file, good.substr(0, good.size() - 4), 0600);
    auto rt = obtain_refresh_token(store, "storage", cfg);
    REQUIRE_FALSE(rt);
    CHECK(rt.error().message.rfind("credentials: storage: " + file + " is torn or damaged", 0) ==
          0);
    CHECK(read_file(file) == good.substr(0, good.size() - 4));  // left for a person to see
}

TEST_CASE("a v1 state file is used and rewritten as v2 at start, not by --check-config",
          "[state_store]") {
    TempDir tmp;
    PosixFileSystem fs;
    Warnings w;
    StateStore store(fs, tmp.path(), w.sink());
    const std::string file = tmp.path() + "/storage.refresh_token";
    write_file(file, "rt-test-old-format\n", 0600);

    auto checked = initial_refresh_token(store, fs, "storage", std::nullopt);
    REQUIRE(checked);
    CHECK(checked->reveal() == "rt-test-old-format");
    CHECK(read_file(file) == "rt-test-old-format\n");

    auto started = obtain_refresh_token(store, "storage", std::nullopt);
    REQUIRE(started);
    REQUIRE(started->token);
    CHECK(started->token->reveal() == "rt-test-old-format");
    CHECK(read_file(file) == state_file_of("rt-test-old-format"));
    CHECK(mode_of(file) == 0600);
    CHECK(w.seen.empty());
}

TEST_CASE("state files owned by another uid are refused", "[state_store]") {
    TempDir tmp;
    PosixFileSystem real;
    StateStore setup(real, tmp.path());
    REQUIRE(setup.save("storage", Secret("rt-test-1")));
    FaultyFileSystem fs;
    fs.reported_file_uid = ::geteuid() + 1;
    StateStore store(fs, tmp.path());
    auto loaded = store.load("storage");
    REQUIRE_FALSE(loaded);
    CHECK(loaded.error().message ==
          tmp.path() + "/storage.refresh_token is owned by uid " + std::to_string(::geteuid() + 1) +
              ", not by the refresher's uid " + std::to_string(::geteuid()) +
              " or root; refusing to read a refresh token from it");
    fs.reported_file_uid = 0;  // root's are trusted
    REQUIRE(store.load("storage"));
}

TEST_CASE("save records the time from the token response to the rename", "[state_store]") {
    TempDir tmp;
    PosixFileSystem fs;
    StateStore store(fs, tmp.path());
    REQUIRE(store.save("storage", Secret("rt-test-1")));
    CHECK(store.persist_times().count == 0);  // no response: a rewrite, not a rotation

    Rotation r;
    r.response_at = std::chrono::steady_clock::now() - std::chrono::milliseconds(30);
    REQUIRE(store.save("storage", Secret("rt-test-2"), r));
    const PersistTimes& t = store.persist_times();
    CHECK(t.count == 1);
    CHECK(t.last_ms >= 30);
    CHECK(t.last_ms < 30'000);
    // 30 ms is over the first five buckets' bounds (1 to 20 ms).
    CHECK(t.buckets[0] + t.buckets[1] + t.buckets[2] + t.buckets[3] + t.buckets[4] == 0);

    PersistTimes fixed;
    for (const std::int64_t ms : {0, 2, 3, 1000, 1001, 70'000})
        fixed.add(ms);
    CHECK(fixed.summary() ==
          "count=6 max_ms=70000 le1=1 le2=1 le5=1 le10=0 le20=0 le50=0 le100=0 le200=0 le500=0 "
          "le1000=1 more=2");
}

// ------------------------------------------------------------------ refresh_token_file checks

TEST_CASE("read_secret_file drops a trailing CRLF like every secret file", "[state_store]") {
    TempDir tmp;
    PosixFileSystem fs;
    const std::string file = tmp.path() + "/storage.refresh";
    for (const std::string content : {"rt-test-cfg\r\n", "rt-test-cfg\n", "rt-test-cfg"}) {
        write_file(file, content, 0600);
        auto read = StateStore::read_secret_file(fs, file);
        REQUIRE(read);
        CHECK(read->reveal() == "rt-test-cfg");
    }
    write_file(file, "rt-test-cfg\r\r\n", 0600);
    CHECK_FALSE(StateStore::read_secret_file(fs, file));
}

TEST_CASE(
    "read_secret_file refuses a FIFO (also through a link) without blocking, and a file "
    "of another uid",
    "[state_store]") {
    TempDir tmp;
    PosixFileSystem fs;
    const std::string fifo = tmp.path() + "/fifo";
    REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
    auto direct = StateStore::read_secret_file(fs, fifo);
    REQUIRE_FALSE(direct);
    CHECK(direct.error().message == fifo + " is not a regular file");
    const std::string link = tmp.path() + "/link";
    REQUIRE(::symlink("fifo", link.c_str()) == 0);
    auto linked = StateStore::read_secret_file(fs, link);
    REQUIRE_FALSE(linked);
    CHECK(linked.error().message == link + " is not a regular file");

    const std::string file = tmp.path() + "/storage.refresh";
    write_file(file, "rt-test-cfg\n", 0600);
    FaultyFileSystem foreign;
    foreign.reported_file_uid = ::geteuid() + 1;
    auto refused = StateStore::read_secret_file(foreign, file);
    REQUIRE_FALSE(refused);
    CHECK(refused.error().message.find(file + " is owned by uid " +
                                       std::to_string(::geteuid() + 1)) == 0);
}
