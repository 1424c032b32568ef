// A FileSystem (refresher/state_store.hpp) that holds files in memory, for
// fuzzing what the state store reads without touching a disk: a fuzzer runs
// an input thousands of times a second, and a real directory would make each
// run depend on the last. Reads work; every call that would change something
// fails with EROFS, since nothing here should write.
#pragma once

#include "state_store.hpp"

#include <fcntl.h>
#include <sys/stat.h>

#include <unistd.h>
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
#include <string>
#include <string_view>
#include <utility>

namespace tokenshm::fuzz {

class MemoryFileSystem final : public refresher::FileSystem {
  public:
    template <class T>
    using FsResult = refresher::FsResult<T>;
    using FsError = refresher::FsError;
    using Secret = refresher::Secret;

    // Adds (or replaces) a regular file.
    void put(const std::string& path, std::string_view bytes, mode_t mode = 0600) {
        files_[path] = File{std::string(bytes), mode};
    }

    FsResult<int> open(const std::string& path, int flags, mode_t) override {
        if ((flags & O_ACCMODE) != O_RDONLY || (flags & (O_CREAT | O_TRUNC)) != 0)
            return fail("open", EROFS, path);
        const auto it = files_.find(path);
        if (it == files_.end()) return fail("open", ENOENT, path);
        const int fd = next_fd_++;
        open_[fd] = Open{&it->second, 0};
        return fd;
    }
    FsResult<int> open_directory(const std::string& path) override {
        return fail("open", EROFS, path);
    }
    FsResult<Done> close(int fd, const std::string& path) override {
        if (open_.erase(fd) == 0) return fail("close", EBADF, path);
        return Done{};
    }
    FsResult<Done> write_all(int, std::string_view, const std::string& path) override {
        return fail("write", EROFS, path);
    }
    FsResult<Secret> read_all(int fd, std::size_t max_bytes, const std::string& path) override {
        const auto it = open_.find(fd);
        if (it == open_.end()) return fail("read", EBADF, path);
        const std::string& bytes = it->second.file->bytes;
        const std::size_t from = std::min(it->second.offset, bytes.size());
        const std::size_t n = std::min(max_bytes, bytes.size() - from);
        it->second.offset = from + n;
        return Secret(bytes.substr(from, n));
    }
    FsResult<Done> fsync(int, const std::string& path) override {
        return fail("fsync", EROFS, path);
    }
    FsResult<Done> fchmod(int, mode_t, const std::string& path) override {
        return fail("fchmod", EROFS, path);
    }
    FsResult<Done> fchown_group(int, gid_t, const std::string& path) override {
        return fail("fchown", EROFS, path);
    }
    FsResult<struct stat> fstat(int fd, const std::string& path) override {
        const auto it = open_.find(fd);
        if (it == open_.end()) return fail("fstat", EBADF, path);
        return stat_of(*it->second.file);
    }
    FsResult<struct stat> stat(const std::string& path) override {
        const auto it = files_.find(path);
        if (it == files_.end()) return fail("stat", ENOENT, path);
        return stat_of(it->second);
    }
    FsResult<Done> chmod(const std::string& path, mode_t) override {
        return fail("chmod", EROFS, path);
    }
    FsResult<Done> mkdir(const std::string& path, mode_t) override {
        return fail("mkdir", EROFS, path);
    }
    FsResult<Done> rename(const std::string& from, const std::string&) override {
        return fail("rename", EROFS, from);
    }
    FsResult<Done> unlink(const std::string& path) override { return fail("unlink", EROFS, path); }

    // Descriptors not closed yet: a reader that leaks one is a bug.
    std::size_t open_descriptors() const noexcept { return open_.size(); }

  private:
    struct File {
        std::string bytes;
        mode_t mode = 0600;
    };
    struct Open {
        File* file;
        std::size_t offset;
    };

    static tokenshm::Unexpected<FsError> fail(const char* call, int err, const std::string& path) {
        return tokenshm::Unexpected<FsError>{FsError{call, err, path}};
    }
    static struct stat stat_of(const File& f) {
        struct stat st;
        std::memset(&st, 0, sizeof st);
        st.st_mode = S_IFREG | f.mode;
        st.st_size = static_cast<off_t>(f.bytes.size());
        st.st_nlink = 1;
        st.st_uid = ::geteuid();
        return st;
    }

    std::map<std::string, File> files_;
    std::map<int, Open> open_;
    int next_fd_ = 3;
};

}  // namespace tokenshm::fuzz
