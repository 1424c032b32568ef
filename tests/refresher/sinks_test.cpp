// File sinks: each format's content, the exact mode and group whatever the
// umask, rewritten only when the token changes, removed with their
// credential or their configuration, failures logged and retried. The token
// used here must never reach a log line.
#include "sinks.hpp"
#include "log.hpp"
#include "replace_file.hpp"
#include "temp_dir.hpp"

#include <catch2/catch.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

using namespace tokenshm::refresher;

namespace {

constexpr const char* kToken = "tok-SINK-5b1e";
constexpr const char* kToken2 = "tok-SINK-77a0";

std::string read(const std::string& path) {
    std::ifstream f(path);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

mode_t mode_of(const std::string& path) {
    struct stat st {};
    REQUIRE(::lstat(path.c_str(), &st) == 0);
    return st.st_mode & 07777;
}

Published with_token(const char* token, std::int64_t expires_at_ms = 1'700'000'000'000) {
    Published p;
    p.state = tokenshm::shm::RecordState::valid;
    p.access_token = Secret(std::string(token));
    p.token_type = "Bearer";
    p.expires_at_ms = expires_at_ms;
    return p;
}

SinkConfig sink(const std::string& path, SinkFormat f, mode_t mode = 0600) {
    SinkConfig s;
    s.path = path;
    s.format = f;
    s.mode = mode;
    return s;
}

struct LogCapture {
    std::vector<std::string> lines;
    LogCapture() {
        set_log_sink([this](std::string_view l) { lines.emplace_back(l); });
    }
    ~LogCapture() { set_log_sink(nullptr); }
    bool mentions(std::string_view s) const {
        for (const auto& l : lines)
            if (l.find(s) != std::string::npos) return true;
        return false;
    }
};

}  // namespace

TEST_CASE("each sink format is one line", "[sinks]") {
    const Secret t{std::string(kToken)};
    CHECK(sink_content(SinkFormat::token, t, "Bearer", 0, 1) == std::string(kToken) + "\n");
    CHECK(sink_content(SinkFormat::header, t, "", 0, 1) ==
          std::string("Authorization: Bearer ") + kToken + "\n");
    CHECK(sink_content(SinkFormat::header, t, "DPoP", 0, 1) ==
          std::string("Authorization: DPoP ") + kToken + "\n");
    CHECK(sink_content(SinkFormat::json, Secret(std::string("a\"b\\c")), "Bearer",
                       1'700'000'000'999,
                       9) == std::string(R"({"access_token":"a\"b\\c","token_type":"Bearer",)"
                                         R"("expires_at":1700000000,"version":9})"
                                         "\n"));
}

TEST_CASE("sinks are written at their mode, rewritten when the token changes, removed", "[sinks]") {
    LogCapture log;
    tokenshm::test::TempDir dir("sinks_test");
    PosixFileSystem fs;
    SinkWriter w(fs);
    const std::string tok = dir.path + "/a.token", hdr = dir.path + "/a.hdr",
                      js = dir.path + "/a.json";
    std::vector<SinkConfig> sinks = {sink(tok, SinkFormat::token),
                                     sink(hdr, SinkFormat::header, 0640),
                                     sink(js, SinkFormat::json, 0660)};
    const mode_t old_umask = ::umask(077);  // the configured mode wins over it
    w.published("a", sinks, with_token(kToken), 3);
    ::umask(old_umask);
    CHECK(read(tok) == std::string(kToken) + "\n");
    CHECK(read(hdr) == std::string("Authorization: Bearer ") + kToken + "\n");
    CHECK(read(js).find("\"version\":3}") != std::string::npos);
    CHECK(mode_of(tok) == 0600);
    CHECK(mode_of(hdr) == 0640);
    CHECK(mode_of(js) == 0660);
    CHECK_FALSE(std::filesystem::exists(temp_path_for(tok)));

    // A publish with the same token (a failure counted, say) leaves the files alone.
    w.published("a", sinks, with_token(kToken), 4);
    CHECK(read(js).find("\"version\":3}") != std::string::npos);

    w.published("a", sinks, with_token(kToken2), 5);
    CHECK(read(tok) == std::string(kToken2) + "\n");
    CHECK(read(js).find("\"version\":5}") != std::string::npos);

    // A reload that drops a sink removes its file; a new one is written at once.
    const std::string added = dir.path + "/b.token";
    sinks = {sinks[0], sinks[1], sink(added, SinkFormat::token)};
    w.published("a", sinks, with_token(kToken2), 6);
    CHECK_FALSE(std::filesystem::exists(js));
    CHECK(read(added) == std::string(kToken2) + "\n");

    w.removed("a");
    CHECK_FALSE(std::filesystem::exists(tok));
    CHECK_FALSE(std::filesystem::exists(hdr));
    CHECK_FALSE(std::filesystem::exists(added));
    CHECK_FALSE(log.mentions(kToken));
    CHECK_FALSE(log.mentions(kToken2));
}

TEST_CASE("a sink that cannot be written is logged and retried, never followed", "[sinks]") {
    LogCapture log;
    tokenshm::test::TempDir dir("sinks_test");
    PosixFileSystem fs;
    SinkWriter w(fs);
    const std::string sub = dir.path + "/later";
    const std::string path = sub + "/a.token";
    w.published("a", {sink(path, SinkFormat::token)}, with_token(kToken), 1);
    CHECK(log.mentions("sink_write_failed"));
    CHECK(log.mentions("(ENOENT)"));
    CHECK_FALSE(log.mentions(kToken));

    REQUIRE(::mkdir(sub.c_str(), 0700) == 0);
    w.retry_if_due(SinkWriter::kRetryEveryMs);
    CHECK(read(path) == std::string(kToken) + "\n");
    CHECK(log.mentions("sink_written"));

    // A symlink planted at the temp file's name is removed, never written through.
    const std::string target = dir.path + "/target";
    REQUIRE(::symlink(target.c_str(), temp_path_for(path).c_str()) == 0);
    w.published("a", {sink(path, SinkFormat::token)}, with_token(kToken2), 2);
    CHECK_FALSE(std::filesystem::exists(target));
    CHECK(read(path) == std::string(kToken2) + "\n");
}
