// Replaces a file's content atomically, for files the refresher writes for
// others to read (sinks, the metrics textfile): a reader sees the old file
// or the new one, never a part. The temp file sits in the same directory
// (rename(2) is atomic only within a filesystem), is created with O_EXCL |
// O_NOFOLLOW (a link planted at its name is an error, never followed) at its
// final mode and group, written, fsynced, then renamed over the target.
#pragma once

#include "state_store.hpp"

#include <sys/types.h>

#include <optional>
#include <string>
#include <string_view>

namespace tokenshm::refresher {

struct ReplaceOptions {
    mode_t mode = 0600;
    // Set the mode exactly (fchmod after creation): a sink's configured mode
    // wins over the umask. Otherwise the umask applies, as for any new file.
    bool exact_mode = true;
    std::optional<gid_t> group;
};

// "<dir>/.<name>.tokenshm-tmp": hidden, and not ending in .prom, so that
// node_exporter's textfile collector never reads a half-written file.
std::string temp_path_for(const std::string& path);

FsResult<Done> replace_file(FileSystem& fs, const std::string& path, std::string_view bytes,
                            const ReplaceOptions& opt);

// The error with errno's name: "rename(/a -> /b): No space left on device (ENOSPC)".
std::string describe(const FsError& e);

}  // namespace tokenshm::refresher
