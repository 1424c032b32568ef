#include "replace_file.hpp"

#include <fcntl.h>

#include <cerrno>
#include <cstring>

namespace tokenshm::refresher {

std::string temp_path_for(const std::string& path) {
    const auto slash = path.rfind('/');
    const std::string dir = slash == std::string::npos ? "." : path.substr(0, slash);
    const std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
    return dir + "/." + name + ".tokenshm-tmp";
}

namespace {

// Writes `bytes` into the open temp file and gives it its mode and group.
FsResult<Done> fill(FileSystem& fs, int fd, const std::string& tmp, std::string_view bytes,
                    const ReplaceOptions& opt) {
    if (opt.group)
        if (auto r = fs.fchown_group(fd, *opt.group, tmp); !r) return r;
    if (opt.exact_mode)
        if (auto r = fs.fchmod(fd, opt.mode, tmp); !r) return r;
    if (auto r = fs.write_all(fd, bytes, tmp); !r) return r;
    return fs.fsync(fd, tmp);
}

}  // namespace

FsResult<Done> replace_file(FileSystem& fs, const std::string& path, std::string_view bytes,
                            const ReplaceOptions& opt) {
    const std::string tmp = temp_path_for(path);
    // Left by a process killed mid-write: only this writer uses the name (it
    // holds the segment's lock), so it is stale.
    (void)fs.unlink(tmp);
    auto fd = fs.open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, opt.mode);
    if (!fd) return Unexpected{fd.error()};
    auto filled = fill(fs, *fd, tmp, bytes, opt);
    auto closed = fs.close(*fd, tmp);
    if (filled && !closed) filled = Unexpected{closed.error()};
    if (filled) filled = fs.rename(tmp, path);
    if (!filled) (void)fs.unlink(tmp);
    return filled;
}

std::string describe(const FsError& e) {
    const char* name = ::strerrorname_np(e.err);
    return e.message() + (name != nullptr ? " (" + std::string(name) + ")" : std::string());
}

}  // namespace tokenshm::refresher
