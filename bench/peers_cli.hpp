// peers_bench's command line: every value validated, a one-line error and
// exit status 2 otherwise.
#pragma once

#include "peers_setup.hpp"

#include <array>
#include <cstdint>

namespace peers {

inline constexpr std::array<const char*, 13> kMethods = {
    "floor",       "memcpy", "tokenshm", "tokenshm_c", "mutex",      "rwlock", "seqlock",
    "unix_daemon", "file",   "pread",    "redis_tcp",  "redis_unix", "legacy"};

enum class Command { list, run, serve, read };
// none: one publish at start; khz: every 1 ms; us: every 1 µs; b2b: back to back.
enum class WriterMode { none, khz, us, b2b };
const char* to_string(WriterMode w) noexcept;

struct Options {
    Command command = Command::list;
    Config config;
    WriterMode writer = WriterMode::none;
    int readers = 1;
    double seconds = 0;  // 0: not given
    std::int64_t reads = -1;
    bool pin = false;
    int pin_cpu = -1;
};

Options parse_options(int argc, char** argv);

}  // namespace peers
