// How the refresher says "failed" (one rule for every part of the daemon):
//  - A function that can fail returns Expected<T, E>. Inside a module E may be
//    a narrower typed error (UrlError, FsError); what crosses into the daemon
//    or main() is a RefresherError: a kind and the one line an operator reads,
//    already free of secrets.
//  - Nothing throws past a module boundary. (Only libcurl's and the standard
//    library's own failures, e.g. std::bad_alloc, can still end the process.)
//  - main() alone turns a RefresherError into SPEC's exit code, through
//    exit_code() below.
#pragma once

#include <tokenshm/shm/posix.hpp>

#include <cstddef>
#include <string>
#include <string_view>
#include <utility>

namespace tokenshm::refresher {

// The value of an Expected that has nothing to return but success.
using Done = shm::Done;

// `s` with every byte outside printable ASCII (controls, DEL, and bytes above
// 0x7f, which could be a C1 control such as U+009B, a terminal's CSI) written
// as \xNN, so a message that names a path or a server's words stays one line
// that cannot drive a terminal. Plain ASCII comes back unchanged.
std::string printable_line(std::string_view s);

struct RefresherError {
    enum class Kind {
        usage,    // the command line is wrong                       -> exit 2
        config,   // the configuration (or a file it names) is wrong -> exit 2
        runtime,  // the system refused: segment held, state_dir unusable, libcurl -> exit 1
    };
    Kind kind;
    std::string message;  // one line, no secrets

    // Every message goes through printable_line: paths from a config may
    // hold any byte but a control character.
    static RefresherError usage_error(std::string_view m) {
        return {Kind::usage, printable_line(m)};
    }
    static RefresherError config_error(std::string_view m) {
        return {Kind::config, printable_line(m)};
    }
    static RefresherError runtime_error(std::string_view m) {
        return {Kind::runtime, printable_line(m)};
    }
};

// A value an error message names (a key, a name, a URL without its query),
// in double quotes, JSON-escaped (and bytes above 0x7f as \xNN) and cut at
// `limit` bytes, so whatever a file held stays on one line of printable
// ASCII. Never pass a secret.
std::string quote(std::string_view s, std::size_t limit = 64);

// SPEC.md, "Exit codes": 2 usage or config error, 1 runtime failure.
constexpr int exit_code(RefresherError::Kind kind) noexcept {
    switch (kind) {
        case RefresherError::Kind::usage:
        case RefresherError::Kind::config:
            return 2;
        case RefresherError::Kind::runtime:
            return 1;
    }
    return 1;
}
static_assert(exit_code(RefresherError::Kind::usage) == 2);
static_assert(exit_code(RefresherError::Kind::config) == 2);
static_assert(exit_code(RefresherError::Kind::runtime) == 1);

}  // namespace tokenshm::refresher
