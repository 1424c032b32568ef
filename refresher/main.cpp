// tokenshm-refresher --config FILE [--check-config | --once] [--log-level L]
//                    [--allow-core-dumps]
// tokenshm-refresher --help | --version
// Exit codes: 0 ok, 1 runtime failure (segment held by another refresher,
// state_dir unusable, a --once refresh failed), 2 usage or configuration error.
//
// The process makes itself non-dumpable (prctl PR_SET_DUMPABLE 0) before it
// reads any secret: no core file, no ptrace by other processes of the same
// uid, /proc/<pid>/mem closed to them. --allow-core-dumps keeps the default
// (dumpable) for debugging, and says so in the log.
//
// Errors: every step below returns Expected<T, RefresherError> (error.hpp);
// fail() is the one place that prints an error and turns its kind into the
// exit code. Nothing here throws.
#include "config.hpp"
#include "curl_transport.hpp"
#include "daemon.hpp"
#include "error.hpp"
#include "log.hpp"
#include "regular_file.hpp"
#include "seal.hpp"
#include "state_store.hpp"

#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <string_view>

using namespace tokenshm::refresher;
using tokenshm::Expected;
using tokenshm::Unexpected;

namespace {

const char* const kUsage =
    "usage: tokenshm-refresher --config FILE [--check-config | --once] [--log-level LEVEL]\n"
    "                          [--allow-core-dumps]\n"
    "       tokenshm-refresher --help | --version\n";

// --help: every option, the signals, the environment and the exit codes.
const char* const kHelp =
    "Keeps the OAuth 2.0 access tokens of the configured credentials fresh in a POSIX\n"
    "shared memory segment (/dev/shm/<segment>), for readers (libtokenshm, `tokenshm get`).\n"
    "\n"
    "options:\n"
    "  --config FILE       the JSON configuration (required; keys in the README)\n"
    "  --check-config      validate the configuration and every file it names, then exit\n"
    "  --once              refresh every credential once, publish, exit (0 if all succeeded)\n"
    "  --log-level LEVEL   debug, info (the default), warn or error; the log goes to stderr\n"
    "  --allow-core-dumps  stay dumpable (core files, ptrace) for debugging; by default the\n"
    "                      refresher is not dumpable, so no core holds its secrets\n"
    "  -h, --help          print this help and exit\n"
    "  --version           print the version and exit\n"
    "\n"
    "signals: SIGHUP re-reads the configuration; SIGTERM or SIGINT stops after the\n"
    "requests in flight have answered (a second one stops at once). The segment and its\n"
    "tokens stay for readers.\n"
    "\n"
    "environment: NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID, set by systemd for a\n"
    "Type=notify unit (READY=1, WATCHDOG=1, STATUS=, RELOADING=1, STOPPING=1).\n"
    "\n"
    "exit codes: 0 success, 1 runtime failure (segment held by another refresher,\n"
    "unusable state directory, a --once refresh failed, requests abandoned), 2 usage\n"
    "or configuration error.\n";

// Prints `e` as one line (and the usage after a usage error); the exit code.
int fail(const RefresherError& e) {
    std::fprintf(stderr, "tokenshm-refresher: %s\n", e.message.c_str());
    if (e.kind == RefresherError::Kind::usage) std::fputs(kUsage, stderr);
    return exit_code(e.kind);
}

struct Arguments {
    std::string config_path;
    bool check_only = false;
    bool once = false;
    bool help = false;
    bool version = false;
    bool allow_core_dumps = false;
};

Unexpected<RefresherError> usage_error(std::string message) {
    return Unexpected{RefresherError::usage_error(std::move(message))};
}

Expected<Level, RefresherError> parse_level(std::string_view l) {
    if (l == "debug") return Level::debug;
    if (l == "info") return Level::info;
    if (l == "warn") return Level::warn;
    if (l == "error") return Level::error;
    return usage_error("--log-level: expected debug, info, warn or error, got '" + std::string(l) +
                       "'");
}

// Reads the command line; sets the log level as it goes.
Expected<Arguments, RefresherError> parse_arguments(int argc, char** argv) {
    Arguments args;
    for (int i = 1; i < argc; ++i) {
        const std::string_view a = argv[i];
        if (a == "--config") {
            if (i + 1 >= argc) return usage_error("--config needs a file");
            args.config_path = argv[++i];
        } else if (a == "--check-config") {
            args.check_only = true;
        } else if (a == "--once") {
            args.once = true;
        } else if (a == "--allow-core-dumps") {
            args.allow_core_dumps = true;
        } else if (a == "--log-level") {
            if (i + 1 >= argc) return usage_error("--log-level needs a level");
            const auto level = parse_level(argv[++i]);
            if (!level) return Unexpected{level.error()};
            set_log_level(*level);
        } else if (a == "--help" || a == "-h") {
            args.help = true;
            return args;
        } else if (a == "--version") {
            args.version = true;
            return args;
        } else {
            return usage_error("unknown argument '" + std::string(a) + "'");
        }
    }
    if (args.config_path.empty()) return usage_error("--config FILE is required");
    if (args.check_only && args.once)
        return usage_error("--check-config and --once do not go together");
    return args;
}

// The configuration, for start, --check-config and SIGHUP alike; with
// coordination, the seal key must load too (the daemon loads it again).
Expected<Config, RefresherError> load_and_warn(const std::string& path) {
    auto cfg = load_config(path);
    if (!cfg) return cfg;
    if (cfg->coordination)
        if (auto key = load_seal_key(cfg->coordination->seal_key_file); !key)
            return Unexpected{RefresherError::config_error(
                path + ": coordination.seal_key_file: " + key.error().message)};
    for (const std::string& w : cfg->warnings)
        log_event(Level::warn, "", "config", w);
    return cfg;
}

// Core files and ptrace would expose every secret this process holds: off,
// unless --allow-core-dumps. The kernel's answer is read back, not assumed.
Expected<Done, RefresherError> set_dumpable(bool allow) {
    if (::prctl(PR_SET_DUMPABLE, allow ? 1 : 0, 0, 0, 0) != 0)
        return Unexpected{RefresherError::runtime_error(std::string("prctl(PR_SET_DUMPABLE): ") +
                                                        std::strerror(errno))};
    const int now = ::prctl(PR_GET_DUMPABLE, 0, 0, 0, 0);
    if (now != (allow ? 1 : 0))
        return Unexpected{RefresherError::runtime_error("prctl(PR_GET_DUMPABLE) reads " +
                                                        std::to_string(now) + " after setting it")};
    if (allow)
        log_event(Level::warn, "", "core_dumps_allowed",
                  "--allow-core-dumps: a core file or a debugger can read every secret");
    return Done{};
}

// --check-config: the refresh tokens must be reachable too (state_dir, else
// refresh_token_file). A missing one is a configuration error. A
// refresh_token_file that exists must be a regular file we may trust (it is
// checked without blocking before anything reads it); whether a missing one
// matters depends on the state directory.
Expected<Done, RefresherError> check_refresh_tokens(const Config& cfg, FileSystem& fs) {
    StateStore store(fs, cfg.state_dir);
    for (const auto& c : cfg.credentials) {
        if (c.grant != Grant::refresh_token) continue;
        if (c.refresh_token_file) {
            auto ok = check_regular_file(*c.refresh_token_file);
            if (!ok && ok.error().err != ENOENT)
                return Unexpected{RefresherError::config_error(
                    "credentials: " + c.name + ": refresh_token_file: " + ok.error().message)};
        }
        // Coordinated, a host may start without one: the grant's is in etcd.
        if (cfg.coordination) continue;
        auto rt = initial_refresh_token(store, fs, c.name, c.refresh_token_file);
        if (!rt) return Unexpected{RefresherError::config_error(rt.error().message)};
    }
    return Done{};
}

// Signals arrive on a signalfd that the loop polls: no work in handlers.
Expected<int, RefresherError> open_signal_fd() {
    const auto sys_error = [](const char* call) {
        return Unexpected{
            RefresherError::runtime_error(std::string(call) + ": " + std::strerror(errno))};
    };
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGHUP);
    if (sigprocmask(SIG_BLOCK, &mask, nullptr) != 0) return sys_error("sigprocmask");
    const int sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (sfd < 0) return sys_error("signalfd");
    std::signal(SIGPIPE, SIG_IGN);
    return sfd;
}

// Starts the daemon and runs it until it stops; its exit code.
Expected<int, RefresherError> run_daemon(Config cfg, const Arguments& args, FileSystem& fs) {
    const auto sfd = open_signal_fd();
    if (!sfd) return Unexpected{sfd.error()};
    auto transport = CurlTransport::create();
    if (!transport) return Unexpected{transport.error()};
    std::mt19937_64 rng(std::random_device{}());
    std::uniform_real_distribution<double> unit(0.0, 1.0);
    ServiceNotifier notifier = ServiceNotifier::from_environment();
    DaemonDeps deps{transport->get(), &fs, system_now, [&] { return unit(rng); }, &notifier};
    deps.control_socket = true;

    auto daemon = Daemon::start(std::move(cfg), deps);
    if (!daemon) return Unexpected{daemon.error()};
    Daemon& d = **daemon;
    d.set_reload_handler([&] {
        auto next = load_and_warn(args.config_path);
        if (!next) {
            log_event(Level::error, "", "reload_failed",
                      next.error().message + "; keeping the running configuration");
            return;
        }
        log_event(Level::info, "", "reload", args.config_path);
        d.reload(std::move(*next));
    });
    log_event(Level::info, "", "started", args.once ? "mode=once" : "mode=daemon");
    const int rc = d.run(*sfd, args.once);
    log_event(Level::info, "", "stopped", "exit=" + std::to_string(rc));
    ::close(*sfd);
    return rc;
}

Expected<int, RefresherError> run(const Arguments& args) {
    auto cfg = load_and_warn(args.config_path);
    if (!cfg) return Unexpected{cfg.error()};
    // One refresh per credential, then exit: on a follower it would wait
    // for a leader forever, and a leader would resign at once.
    if (args.once && cfg->coordination)
        return Unexpected{RefresherError::config_error(
            args.config_path +
            ": --once does not go with coordination: run the refresher as a daemon on each host")};
    PosixFileSystem fs;
    if (!args.check_only) return run_daemon(std::move(*cfg), args, fs);
    if (auto ok = check_refresh_tokens(*cfg, fs); !ok) return Unexpected{ok.error()};
    std::printf("%s: OK, %zu credential(s), segment '%s'\n", args.config_path.c_str(),
                cfg->credentials.size(), cfg->segment.c_str());
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    const auto args = parse_arguments(argc, argv);
    if (!args) return fail(args.error());
    if (args->help) {
        std::fputs(kUsage, stdout);
        std::fputs("\n", stdout);
        std::fputs(kHelp, stdout);
        return 0;
    }
    if (args->version) {
        std::puts("tokenshm-refresher " TOKENSHM_VERSION);
        return 0;
    }
    if (auto ok = set_dumpable(args->allow_core_dumps); !ok) return fail(ok.error());
    const auto rc = run(*args);
    return rc ? *rc : fail(rc.error());
}
