// Opening a small file the refresher is told to trust (the configuration, a
// client secret, a CA bundle) without ever blocking or believing the wrong
// file. One home for the rule, used by every such file:
//  - open(2) with O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY, so a FIFO or
//    a device planted at the path cannot freeze the process (no open that
//    waits for a writer, no read that waits for data);
//  - fstat(2) on the descriptor decides: a regular file, owned by this
//    process's effective uid or by root, no larger than the cap;
//  - symbolic links are followed (mounted secrets usually are links), unless
//    the caller asks for O_NOFOLLOW; the checks apply to the final file, so a
//    link is followed only to a file that passes them;
//  - what was read is wiped before its buffer is freed, on every path.
// Errors are one line naming the path and the reason (and the owner's uid for
// a foreign file), never the content.
#pragma once

#include "secret.hpp"

#include <tokenshm/expected.hpp>

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace tokenshm::refresher {

struct FileRules {
    bool follow_symlinks = true;  // false: O_NOFOLLOW on the final component
    std::size_t max_bytes = 1024 * 1024;
};

// What fstat said about a file that passed the rules.
struct FileFacts {
    mode_t mode = 0;
    uid_t owner = 0;
    std::uint64_t size = 0;
    // Readable or writable by group or others.
    bool loose() const noexcept { return (mode & 077) != 0; }
};

struct FileError {
    enum class Kind {
        system,         // open/fstat/read failed: `err` is the errno
        not_regular,    // a FIFO, a device, a directory, a socket
        foreign_owner,  // owned by a uid other than ours and root
        too_large,      // over FileRules::max_bytes
    };
    Kind kind;
    int err = 0;
    std::string message;  // "<path>: <reason>", one line, no content
};

// Opens, checks and closes `path` without reading it: for files another
// library reads (ca_file), and for --check-config.
Expected<FileFacts, FileError> check_regular_file(const std::string& path,
                                                  const FileRules& rules = {});

// The whole content of `path`, after the checks above. `facts` (optional)
// receives what fstat said.
Expected<WipedString, FileError> read_regular_file(const std::string& path,
                                                   const FileRules& rules = {},
                                                   FileFacts* facts = nullptr);

}  // namespace tokenshm::refresher
