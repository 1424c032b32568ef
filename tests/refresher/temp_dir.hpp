// A private temporary directory for a test case, removed with everything in
// it when the case ends, and a way to put a file with an exact mode in it.
#pragma once

#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <string>

namespace tokenshm::test {

struct TempDir {
    std::string path;

    // `prefix` names the test in /tmp; `mode` is the directory's (0700 from
    // mkdtemp; 0755 lets a child running under another uid walk in).
    explicit TempDir(const std::string& prefix, mode_t mode = 0700) {
        std::string tmpl = (std::filesystem::temp_directory_path() / (prefix + ".XXXXXX")).string();
        REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
        path = tmpl;
        if (mode != 0700) REQUIRE(::chmod(path.c_str(), mode) == 0);
    }
    ~TempDir() { std::filesystem::remove_all(path); }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;

    // Writes `content` to `name` in the directory with exactly `mode`, whatever the umask.
    std::string write(const std::string& name, const std::string& content, mode_t mode) const {
        const std::string file = path + "/" + name;
        const int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        REQUIRE(fd >= 0);
        REQUIRE(::write(fd, content.data(), content.size()) ==
                static_cast<ssize_t>(content.size()));
        REQUIRE(::fchmod(fd, mode) == 0);
        ::close(fd);
        return file;
    }
};

}  // namespace tokenshm::test
