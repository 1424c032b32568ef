// tokenshm-refresher --config FILE [--check-config | --once] [--log-level L]
// Exit codes: 0 ok, 1 runtime failure (segment held by another refresher,
// state_dir unusable, a --once refresh failed), 2 usage or configuration error.
#include "config.hpp"
#include "curl_transport.hpp"
#include "daemon.hpp"
#include "log.hpp"
#include "state_store.hpp"

#include <sys/signalfd.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <string_view>

using namespace tokenshm::refresher;

namespace {

const char* const kUsage =
    "usage: tokenshm-refresher --config FILE [--check-config | --once] [--log-level "
    "debug|info|warn|error]\n";

int usage(const std::string& msg) {
    std::fprintf(stderr, "tokenshm-refresher: %s\n%s", msg.c_str(), kUsage);
    return 2;
}

std::int64_t realtime_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

}  // namespace

int main(int argc, char** argv) {
    std::string config_path;
    bool check_only = false;
    bool once = false;
    for (int i = 1; i < argc; ++i) {
        const std::string_view a = argv[i];
        if (a == "--config") {
            if (i + 1 >= argc) return usage("--config needs a file");
            config_path = argv[++i];
        } else if (a == "--check-config") {
            check_only = true;
        } else if (a == "--once") {
            once = true;
        } else if (a == "--log-level") {
            if (i + 1 >= argc) return usage("--log-level needs a level");
            const std::string_view l = argv[++i];
            if (l == "debug")
                set_log_level(Level::debug);
            else if (l == "info")
                set_log_level(Level::info);
            else if (l == "warn")
                set_log_level(Level::warn);
            else if (l == "error")
                set_log_level(Level::error);
            else
                return usage("--log-level: expected debug, info, warn or error, got '" +
                             std::string(l) + "'");
        } else if (a == "--help" || a == "-h") {
            std::fputs(kUsage, stdout);
            return 0;
        } else if (a == "--version") {
            std::puts("tokenshm-refresher " TOKENSHM_VERSION);
            return 0;
        } else {
            return usage("unknown argument '" + std::string(a) + "'");
        }
    }
    if (config_path.empty()) return usage("--config FILE is required");
    if (check_only && once) return usage("--check-config and --once do not go together");

    auto cfg = load_config(config_path);
    if (!cfg) {
        std::fprintf(stderr, "tokenshm-refresher: %s\n", cfg.error().c_str());
        return 2;
    }
    for (const std::string& w : cfg->warnings)
        log_event(Level::warn, "", "config", w);

    PosixFileSystem fs;
    if (check_only) {
        // The refresh tokens must be reachable too (state_dir, else refresh_token_file).
        StateStore store(fs, cfg->state_dir);
        for (const auto& c : cfg->credentials) {
            if (c.grant != Grant::refresh_token) continue;
            auto rt = initial_refresh_token(store, fs, c.name, c.refresh_token_file);
            if (!rt) {
                std::fprintf(stderr, "tokenshm-refresher: %s\n", rt.error().c_str());
                return 2;
            }
        }
        std::printf("%s: OK, %zu credential(s), segment '%s'\n", config_path.c_str(),
                    cfg->credentials.size(), cfg->segment.c_str());
        return 0;
    }

    // Signals arrive on a signalfd that the loop polls: no work in handlers.
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGHUP);
    if (sigprocmask(SIG_BLOCK, &mask, nullptr) != 0) {
        std::fprintf(stderr, "tokenshm-refresher: sigprocmask: %s\n", std::strerror(errno));
        return 1;
    }
    const int sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (sfd < 0) {
        std::fprintf(stderr, "tokenshm-refresher: signalfd: %s\n", std::strerror(errno));
        return 1;
    }
    std::signal(SIGPIPE, SIG_IGN);

    CurlTransport transport;
    std::mt19937_64 rng(std::random_device{}());
    std::uniform_real_distribution<double> unit(0.0, 1.0);
    DaemonDeps deps{&transport, &fs, realtime_ms, [&] { return unit(rng); }};

    auto daemon = Daemon::start(std::move(*cfg), deps);
    if (!daemon) {
        std::fprintf(stderr, "tokenshm-refresher: %s\n", daemon.error().c_str());
        return 1;
    }
    Daemon& d = **daemon;
    d.set_reload_handler([&] {
        auto next = load_config(config_path);
        if (!next) {
            log_event(Level::error, "", "reload_failed",
                      next.error() + "; keeping the running configuration");
            return;
        }
        for (const std::string& w : next->warnings)
            log_event(Level::warn, "", "config", w);
        log_event(Level::info, "", "reload", config_path);
        d.reload(std::move(*next));
    });
    log_event(Level::info, "", "started", once ? "mode=once" : "mode=daemon");
    const int rc = d.run(sfd, once);
    log_event(Level::info, "", "stopped", "exit=" + std::to_string(rc));
    ::close(sfd);
    return rc;
}
