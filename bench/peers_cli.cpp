#include "peers_cli.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <string_view>

namespace peers {
namespace {

[[noreturn]] void usage_error(const std::string& what) {
    std::fprintf(stderr, "peers_bench: %s\n", what.c_str());
    std::exit(2);
}

// The command's shape, for a missing or unknown command.
[[noreturn]] void usage() {
    std::fprintf(stderr,
                 "usage: peers_bench list | run --method M --token-bytes B --writer W --readers R "
                 "--seconds S [--pin] | serve --method M --token-bytes B --writer W --dir DIR | "
                 "read --method M --token-bytes B --dir DIR (--seconds S | --reads N) "
                 "[--pin-cpu K]; redis methods: --redis-port P, --redis-socket PATH\n");
    std::exit(2);
}

long long integer(const std::string& key, const std::string& v, long long lo, long long hi) {
    char* end = nullptr;
    errno = 0;
    const long long n = std::strtoll(v.c_str(), &end, 10);
    if (v.empty() || *end != '\0' || errno != 0 || n < lo || n > hi)
        usage_error(key + ": not an integer in " + std::to_string(lo) + ".." + std::to_string(hi) +
                    ": " + v);
    return n;
}

WriterMode writer_mode(const std::string& v) {
    if (v == "none") return WriterMode::none;
    if (v == "1khz") return WriterMode::khz;
    if (v == "1us") return WriterMode::us;
    if (v == "b2b") return WriterMode::b2b;
    usage_error("--writer: not none, 1khz, 1us or b2b: " + v);
}

// "--key value" or "--key=value" pairs, and the bare flag --pin.
std::map<std::string, std::string> pairs(int argc, char** argv) {
    std::map<std::string, std::string> kv;
    for (int i = 2; i < argc; ++i) {
        std::string a = argv[i];
        if (a.rfind("--", 0) != 0) usage_error("unexpected argument: " + a);
        if (a == "--pin") {
            kv[a] = "";
            continue;
        }
        const auto eq = a.find('=');
        if (eq != std::string::npos) {
            kv[a.substr(0, eq)] = a.substr(eq + 1);
        } else {
            if (i + 1 >= argc) usage_error(a + ": value missing");
            kv[a] = argv[++i];
        }
    }
    return kv;
}

void apply(Options& o, const std::string& k, const std::string& v) {
    Config& c = o.config;
    if (k == "--method") {
        if (std::find_if(kMethods.begin(), kMethods.end(), [&](const char* m) { return v == m; }) ==
            kMethods.end())
            usage_error("--method: unknown method (see peers_bench list): " + v);
        c.method = v;
    } else if (k == "--token-bytes") {
        c.token_bytes = static_cast<std::size_t>(integer(k, v, 64, 4096));
        if (c.token_bytes != 64 && c.token_bytes != 1024 && c.token_bytes != 4096)
            usage_error("--token-bytes: not 64, 1024 or 4096: " + v);
    } else if (k == "--writer") {
        o.writer = writer_mode(v);
    } else if (k == "--readers") {
        o.readers = static_cast<int>(integer(k, v, 1, 64));
    } else if (k == "--seconds") {
        char* end = nullptr;
        o.seconds = std::strtod(v.c_str(), &end);
        if (v.empty() || *end != '\0' || !(o.seconds > 0) || o.seconds > 600)
            usage_error("--seconds: not a number in (0, 600]: " + v);
    } else if (k == "--reads") {
        o.reads = integer(k, v, 0, 1'000'000'000);
    } else if (k == "--pin") {
        o.pin = true;
    } else if (k == "--pin-cpu") {
        o.pin_cpu = static_cast<int>(integer(k, v, 0, 1023));
    } else if (k == "--dir") {
        struct stat st;
        if (v.empty() || ::stat(v.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
            usage_error("--dir: not a directory: " + v);
        c.dir = v;
    } else if (k == "--redis-port") {
        c.redis_port = static_cast<int>(integer(k, v, 1, 65535));
    } else if (k == "--redis-socket") {
        if (v.empty() || v.size() > 100) usage_error("--redis-socket: empty or too long");
        c.redis_socket = v;
    } else {
        usage_error("unknown option " + k);
    }
}

// Which options each command takes (beyond the redis ones) and needs.
void check_command(const Options& o, const std::map<std::string, std::string>& kv) {
    static const std::map<Command, std::pair<std::string, std::string>> spec = {
        {Command::run,
         {"--method --token-bytes --writer --readers --seconds --pin",
          "--method --token-bytes --writer --readers --seconds"}},
        {Command::serve,
         {"--method --token-bytes --writer --dir", "--method --token-bytes --writer --dir"}},
        {Command::read,
         {"--method --token-bytes --dir --seconds --reads --pin-cpu",
          "--method --token-bytes --dir"}},
    };
    const auto& [allowed, needed] = spec.at(o.command);
    for (const auto& [k, v] : kv)
        if (k != "--redis-port" && k != "--redis-socket" &&
            (" " + allowed + " ").find(" " + k + " ") == std::string::npos)
            usage_error(k + ": not an option of this command");
    std::string_view rest = needed;
    while (!rest.empty()) {
        const auto sp = rest.find(' ');
        const std::string k(rest.substr(0, sp));
        if (kv.count(k) == 0) usage_error(k + " missing");
        rest = sp == std::string_view::npos ? "" : rest.substr(sp + 1);
    }
    if (o.command == Command::read && (o.reads >= 0) == (o.seconds > 0))
        usage_error("read: give exactly one of --seconds and --reads");
}

}  // namespace

const char* to_string(WriterMode w) noexcept {
    switch (w) {
        case WriterMode::none:
            return "none";
        case WriterMode::khz:
            return "1khz";
        case WriterMode::us:
            return "1us";
        case WriterMode::b2b:
            return "b2b";
    }
    return "?";
}

Options parse_options(int argc, char** argv) {
    Options o;
    if (argc < 2) usage();
    const std::string cmd = argv[1];
    if (cmd == "list") {
        if (argc != 2) usage_error("list takes no options");
        return o;
    }
    if (cmd == "run")
        o.command = Command::run;
    else if (cmd == "serve")
        o.command = Command::serve;
    else if (cmd == "read")
        o.command = Command::read;
    else
        usage();
    const auto kv = pairs(argc, argv);
    for (const auto& [k, v] : kv)
        apply(o, k, v);
    check_command(o, kv);
    const std::string& m = o.config.method;
    if (m == "redis_tcp" && o.config.redis_port < 0) usage_error("redis_tcp needs --redis-port");
    if (m == "redis_unix" && o.config.redis_socket.empty())
        usage_error("redis_unix needs --redis-socket");
    return o;
}

}  // namespace peers
