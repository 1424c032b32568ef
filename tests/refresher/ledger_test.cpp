// The spent ledger: fingerprints of rotated-away refresh tokens, written
// after their successor is durable, read back whatever a crash left, bounded,
// and consulted before any token from the state directory or
// refresh_token_file is used. Tokens here are obviously fake test values.
#include "spent_ledger.hpp"
#include "state_store.hpp"

#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <string>
#include <vector>

using namespace tokenshm::refresher;
namespace stdfs = std::filesystem;

namespace {

struct TempDir {
    std::string path;
    TempDir() {
        std::string t = (stdfs::temp_directory_path() / "tokenshm-ledger-XXXXXX").string();
        REQUIRE(::mkdtemp(t.data()) != nullptr);
        path = t;
    }
    ~TempDir() {
        std::error_code ec;
        stdfs::remove_all(path, ec);
    }
};

void write_file(const std::string& path, const std::string& content) {
    std::ofstream(path, std::ios::binary | std::ios::trunc) << content;
    REQUIRE(::chmod(path.c_str(), 0600) == 0);
}

std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::string fp(const std::string& token) {
    return refresh_token_fingerprint(token);
}

// The real filesystem, with a log of calls ("open spent.ledger", ...) and a
// hook that may fail any call.
struct SpyFileSystem : PosixFileSystem {
    std::vector<std::string> calls;
    std::function<bool(const std::string& call, const std::string& path)> fail_if;

    bool fails(const std::string& call, const std::string& path) {
        calls.push_back(call + " " + stdfs::path(path).filename().string());
        return fail_if && fail_if(call, path);
    }
    static tokenshm::Unexpected<FsError> injected(const char* call, const std::string& path) {
        return tokenshm::Unexpected<FsError>{FsError{call, ENOSPC, path}};
    }
    FsResult<int> open(const std::string& path, int flags, mode_t mode) override {
        if (fails("open", path)) return injected("open", path);
        return PosixFileSystem::open(path, flags, mode);
    }
    FsResult<Done> write_all(int fd, std::string_view b, const std::string& path) override {
        if (fails("write", path)) return injected("write", path);
        return PosixFileSystem::write_all(fd, b, path);
    }
    FsResult<Done> fsync(int fd, const std::string& path) override {
        if (fails("fsync", path)) return injected("fsync", path);
        return PosixFileSystem::fsync(fd, path);
    }
    FsResult<Done> rename(const std::string& from, const std::string& to) override {
        if (fails("rename", to)) return injected("rename", to);
        return PosixFileSystem::rename(from, to);
    }
};

Rotation spending(std::vector<std::string> tokens) {
    Rotation r;
    for (const auto& t : tokens)
        r.spent.push_back(fp(t));
    return r;
}

}  // namespace

TEST_CASE("a saved successor ledgers the tokens it replaced, after it is durable", "[ledger]") {
    TempDir tmp;
    SpyFileSystem fs;
    StateStore store(fs, tmp.path);
    REQUIRE(store.save("storage", Secret("rt-test-2"), spending({"rt-test-1"})));

    // The ledger is touched only after the state file's directory was synced.
    const auto& c = fs.calls;
    const auto renamed = std::find(c.begin(), c.end(), "rename storage.refresh_token") - c.begin();
    const auto dir_synced = std::find(c.begin() + renamed, c.end(),
                                      "fsync " + stdfs::path(tmp.path).filename().string()) -
                            c.begin();
    const auto ledgered = std::find(c.begin(), c.end(), "open spent.ledger") - c.begin();
    REQUIRE(dir_synced < static_cast<long>(c.size()));
    CHECK(ledgered > dir_synced);

    const std::string ledger = tmp.path + "/spent.ledger";
    const std::string content = read_file(ledger);
    CHECK(content == encode_ledger_line({"storage", SpentLedger::Kind::rotated, fp("rt-test-1")}));
    CHECK(content.find("rt-test-1") == std::string::npos);  // a fingerprint, never the token
    struct stat st {};
    REQUIRE(::stat(ledger.c_str(), &st) == 0);
    CHECK((st.st_mode & 07777) == 0600);

    auto by = store.spent_by(fp("rt-test-1"));
    REQUIRE(by);
    CHECK(*by == std::optional<std::string>("storage"));
    CHECK(*store.spent_by(fp("rt-test-2")) == std::nullopt);
}

TEST_CASE("a successor that could not be saved ledgers nothing", "[ledger]") {
    TempDir tmp;
    SpyFileSystem fs;
    fs.fail_if = [](const std::string& call, const std::string&) { return call == "rename"; };
    StateStore store(fs, tmp.path);
    REQUIRE_FALSE(store.save("storage", Secret("rt-test-2"), spending({"rt-test-1"})));
    CHECK_FALSE(stdfs::exists(tmp.path + "/spent.ledger"));
    CHECK(*store.spent_by(fp("rt-test-1")) == std::nullopt);
}

TEST_CASE("a failed ledger append keeps the record in memory and writes it with the next",
          "[ledger]") {
    TempDir tmp;
    SpyFileSystem fs;
    fs.fail_if = [](const std::string& call, const std::string& path) {
        return call == "write" && path.ends_with("spent.ledger");
    };
    std::vector<std::string> warnings;
    StateStore store(fs, tmp.path,
                     [&](std::string_view, std::string_view m) { warnings.emplace_back(m); });
    // The successor is safe: save succeeds, with a warning.
    REQUIRE(store.save("storage", Secret("rt-test-2"), spending({"rt-test-1"})));
    REQUIRE(warnings.size() == 1);
    CHECK(warnings[0].find("spent ledger: write(") == 0);
    CHECK(*store.spent_by(fp("rt-test-1")) == std::optional<std::string>("storage"));

    fs.fail_if = {};
    REQUIRE(store.save("storage", Secret("rt-test-3"), spending({"rt-test-2"})));
    auto contents = store.ledger().read();
    REQUIRE(contents);
    CHECK(contents->records == std::vector<SpentLedger::Record>{
                                   {"storage", SpentLedger::Kind::rotated, fp("rt-test-1")},
                                   {"storage", SpentLedger::Kind::rotated, fp("rt-test-2")}});
    CHECK(store.ledger().unwritten().empty());
}

TEST_CASE("ledger lines that a crash cut short or damaged are skipped, then rewritten away",
          "[ledger]") {
    const std::string good = encode_ledger_line({"a", SpentLedger::Kind::rotated, fp("rt-1")});
    REQUIRE(decode_ledger_line(good.substr(0, good.size() - 1)));
    for (std::size_t n = 0; n + 1 < good.size(); ++n)
        CHECK_FALSE(decode_ledger_line(good.substr(0, n)));
    for (std::size_t i = 0; i + 1 < good.size(); ++i) {
        std::string bad = good.substr(0, good.size() - 1);
        bad[i] = bad[i] == '0' ? '1' : '0';
        INFO("byte " << i);
        CHECK_FALSE(decode_ledger_line(bad));
    }

    TempDir tmp;
    PosixFileSystem fs;
    std::vector<std::string> warnings;
    StateStore store(fs, tmp.path,
                     [&](std::string_view, std::string_view m) { warnings.emplace_back(m); });
    const std::string ledger = tmp.path + "/spent.ledger";
    write_file(ledger, good + "garbage line\n" + good.substr(0, 30));  // torn at the end
    auto read = store.ledger().read();
    REQUIRE(read);
    CHECK(read->records.size() == 1);
    CHECK(read->damaged == 2);
    CHECK(*store.spent_by(fp("rt-1")) == std::optional<std::string>("a"));

    REQUIRE(store.save("b", Secret("rt-test-2"), spending({"rt-test-1"})));
    CHECK(read_file(ledger) ==
          good + encode_ledger_line({"b", SpentLedger::Kind::rotated, fp("rt-test-1")}));
    REQUIRE(warnings.size() == 1);
    CHECK(warnings[0] == ledger +
                             ": 2 damaged line(s) skipped (a write cut short by a crash?); "
                             "rewriting it without them");
}

TEST_CASE("the ledger keeps configured tokens however many rotations follow", "[ledger]") {
    std::vector<SpentLedger::Record> all;
    all.push_back({"a", SpentLedger::Kind::configured, fp("rt-file")});
    for (int i = 0; i < 1000; ++i)
        all.push_back({"a", SpentLedger::Kind::rotated, fp("rt-" + std::to_string(i))});
    all.push_back({"b", SpentLedger::Kind::rotated, fp("rt-b")});
    const auto kept = compact_ledger(all);
    REQUIRE(kept.size() == 1 + SpentLedger::keep_rotated + 1);
    CHECK(kept.front().fingerprint == fp("rt-file"));
    CHECK(kept[1].fingerprint == fp("rt-" + std::to_string(1000 - SpentLedger::keep_rotated)));
    CHECK(kept[kept.size() - 2].fingerprint == fp("rt-999"));
    CHECK(kept.back().credential == "b");

    // The same through the store: the token read from refresh_token_file is
    // recorded as configured and survives the file's compactions.
    TempDir tmp;
    PosixFileSystem fs;
    StateStore store(fs, tmp.path);
    const std::string file = tmp.path + "/a.refresh";
    write_file(file, "rt-test-file\n");
    auto start = obtain_refresh_token(store, "a", file);
    REQUIRE(start);
    REQUIRE(start->token);
    std::string previous = "rt-test-file";
    for (std::size_t i = 0; i < 2 * SpentLedger::keep_rotated + 1; ++i) {
        const std::string next = "rt-test-" + std::to_string(i);
        REQUIRE(store.save("a", Secret(next), spending({previous})));
        previous = next;
    }
    auto read = store.ledger().read();
    REQUIRE(read);
    CHECK(read->records.size() <= 2 * SpentLedger::keep_rotated + 1);
    CHECK(read->records.front() ==
          SpentLedger::Record{"a", SpentLedger::Kind::configured, fp("rt-test-file")});
    CHECK(*store.spent_by(fp("rt-test-file")) == std::optional<std::string>("a"));
}

TEST_CASE("a spent token in refresh_token_file or the state directory is never handed out",
          "[ledger]") {
    TempDir tmp;
    PosixFileSystem fs;
    StateStore store(fs, tmp.path);
    const std::string file = tmp.path + "/storage.refresh";
    write_file(file, "rt-test-1\n");
    REQUIRE(store.save("storage", Secret("rt-test-2"), spending({"rt-test-1"})));

    SECTION("the state file was set aside (reauth): refresh_token_file holds the spent original") {
        REQUIRE(*store.set_aside("storage"));
        auto start = obtain_refresh_token(store, "storage", file);
        REQUIRE(start);
        CHECK_FALSE(start->token);
        CHECK(start->reauth_reason ==
              "refresh_token_file " + file +
                  " holds a spent refresh token (it was already rotated: its successor was "
                  "received, and a server that detects reuse revokes the grant when it sees it "
                  "again); it is not sent. Run tokenshm login --config FILE NAME, or put a "
                  "fresh refresh token from the authorization server in " +
                  file + " and send SIGHUP");
        // --check-config says the same, as an error.
        auto checked = initial_refresh_token(store, fs, "storage", file);
        REQUIRE_FALSE(checked);
        CHECK(checked.error().message == "credentials: storage: " + start->reauth_reason);

        // A person puts a fresh token there: it is used.
        write_file(file, "rt-test-fresh\n");
        start = obtain_refresh_token(store, "storage", file);
        REQUIRE(start);
        REQUIRE(start->token);
        CHECK(start->token->reveal() == "rt-test-fresh");
    }
    SECTION("the state file itself holds a spent token (restored from an old backup)") {
        REQUIRE(store.save("storage", Secret("rt-test-1")));
        auto start = obtain_refresh_token(store, "storage", file);
        REQUIRE(start);
        CHECK_FALSE(start->token);
        CHECK(start->reauth_reason.find(tmp.path +
                                        "/storage.refresh_token holds a spent refresh token") == 0);
    }
    SECTION("the current successor is not spent") {
        auto start = obtain_refresh_token(store, "storage", file);
        REQUIRE(start);
        REQUIRE(start->token);
        CHECK(start->token->reveal() == "rt-test-2");
    }
}

TEST_CASE("a FIFO or link in the ledger's place is a clear error, never a hang", "[ledger]") {
    TempDir tmp;
    PosixFileSystem fs;
    StateStore store(fs, tmp.path);
    const std::string ledger = tmp.path + "/spent.ledger";
    SECTION("FIFO") {
        REQUIRE(::mkfifo(ledger.c_str(), 0600) == 0);
        auto by = store.spent_by(fp("rt-test-1"));
        REQUIRE_FALSE(by);
        CHECK(by.error().message == ledger + " is not a regular file");
    }
    SECTION("symbolic link") {
        write_file(tmp.path + "/elsewhere", "");
        REQUIRE(::symlink("elsewhere", ledger.c_str()) == 0);
        auto by = store.spent_by(fp("rt-test-1"));
        REQUIRE_FALSE(by);
        CHECK(by.error().message == "open(" + ledger + "): Too many levels of symbolic links");
    }
    // A credential cannot start on a token the ledger cannot vouch for.
    write_file(tmp.path + "/storage.refresh", "rt-test-1\n");
    auto start = obtain_refresh_token(store, "storage", tmp.path + "/storage.refresh");
    REQUIRE_FALSE(start);
    CHECK(start.error().message.find("credentials: storage: ") == 0);
}
