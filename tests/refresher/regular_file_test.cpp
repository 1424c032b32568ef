// read_regular_file and check_regular_file, the one rule for opening a file
// the refresher must trust: every refusal by kind, with one line naming the
// path and never the content.
#include "regular_file.hpp"
#include "ci_skip.hpp"
#include "temp_dir.hpp"

#include <catch2/catch.hpp>

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <string>

using namespace tokenshm::refresher;

namespace {

using tokenshm::test::TempDir;

}  // namespace

TEST_CASE("a regular file of ours is read whole, with what fstat said") {
    TempDir dir("regular_file_test");
    const std::string f = dir.write("a.secret", "value\r\n", 0640);
    FileFacts facts;
    const auto r = read_regular_file(f, {}, &facts);
    REQUIRE(r.has_value());
    CHECK(*r == "value\r\n");
    CHECK(facts.size == 7);
    CHECK(facts.owner == ::geteuid());
    CHECK(facts.loose());
    CHECK(check_regular_file(f).has_value());
}

TEST_CASE("every refusal has its kind and one line naming the path") {
    TempDir dir("regular_file_test");
    const std::string f = dir.write("big", std::string(2048, 'x'), 0600);
    SECTION("missing: the errno") {
        const auto r = read_regular_file(dir.path + "/none");
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().kind == FileError::Kind::system);
        CHECK(r.error().err == ENOENT);
        CHECK(r.error().message == dir.path + "/none: No such file or directory");
    }
    SECTION("over the cap") {
        const auto r = read_regular_file(f, FileRules{true, 1024});
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().kind == FileError::Kind::too_large);
        CHECK(r.error().message == f + ": larger than 1 KiB");
        CHECK(r.error().message.find("xxx") == std::string::npos);
    }
    SECTION("a directory") {
        const auto r = check_regular_file(dir.path);
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().kind == FileError::Kind::not_regular);
        CHECK(r.error().message == dir.path + ": not a regular file (a directory)");
    }
    SECTION("a FIFO, without blocking") {
        const std::string fifo = dir.path + "/fifo";
        REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
        const auto r = read_regular_file(fifo);
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().message == fifo + ": not a regular file (a FIFO)");
    }
    SECTION("a symlink: followed by default, refused with O_NOFOLLOW") {
        const std::string link = dir.path + "/link";
        REQUIRE(::symlink(f.c_str(), link.c_str()) == 0);
        CHECK(check_regular_file(link).has_value());
        const auto r = check_regular_file(link, FileRules{false, 1 << 20});
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().kind == FileError::Kind::not_regular);
        CHECK(r.error().message == link + ": is a symlink");
    }
    SECTION("owned by another uid (not root)") {
        if (::geteuid() != 0) SKIP_OR_FAIL_UNDER_CI("chown to another uid needs root");
        REQUIRE(::chown(f.c_str(), 4242, static_cast<gid_t>(-1)) == 0);
        const auto r = read_regular_file(f);
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().kind == FileError::Kind::foreign_owner);
        CHECK(r.error().message ==
              f + ": owned by uid 4242, not by this process's uid 0 or root; refused");
    }
}
