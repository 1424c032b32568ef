// `tokenshm login --config FILE NAME`: the arguments, the person's view of
// refresher/login.hpp's flow, and telling a running refresher that a new
// refresh token is in the state directory.
//
// The refresher is told with SIGHUP (SPEC: SIGHUP reloads; a credential in
// reauth then reads its refresh token again, and the state directory's wins
// over refresh_token_file). The pid comes from the segment's header; it is
// signalled only while it holds the segment's lock, is named
// tokenshm-refresher, runs as our uid (or we are root), and started no later
// than the header says the writer attached, so a reused pid is never hit.
#include "tokenshm_login.hpp"

#include <login.hpp>
#include <tokenshm/reader.hpp>

#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

namespace {

namespace login = tokenshm::refresher;
namespace login_exit = tokenshm::refresher::login_exit;

int fail(int code, const std::string& msg) {
    std::fprintf(stderr, "tokenshm: login: %s\n", msg.c_str());
    return code;
}

int usage(const std::string& msg) {
    std::fprintf(stderr, "tokenshm: login: %s\n%s", msg.c_str(), tokenshm_cli::kLoginUsage);
    return login_exit::usage;
}

std::optional<int> parse_login_args(const std::vector<std::string_view>& args,
                                    login::LoginOptions& o) {
    for (std::size_t i = 0; i < args.size(); ++i) {
        const std::string_view a = args[i];
        const bool has_value = i + 1 < args.size();
        if (a == "--config") {
            if (!has_value) return usage("--config needs a file");
            o.config_path = std::string(args[++i]);
        } else if (a == "--timeout") {
            if (!has_value) return usage("--timeout needs a number of seconds");
            const std::string_view v = args[++i];
            long s = 0;
            auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), s);
            if (ec != std::errc{} || p != v.data() + v.size() || s < 1 || s > 86400)
                return usage("--timeout: '" + std::string(v) +
                             "' is not a whole number of seconds from 1 to 86400");
            o.timeout = std::chrono::seconds(s);
        } else if (a == "--open") {
            o.open_browser = true;
        } else if (a.size() > 1 && a[0] == '-') {
            return usage("unknown option '" + std::string(a) + "'");
        } else if (!o.name.empty()) {
            return usage("one credential name only ('" + std::string(a) + "' is extra)");
        } else {
            o.name = std::string(a);
        }
    }
    if (o.config_path.empty()) return usage("--config FILE is required");
    if (o.name.empty()) return usage("which credential? (tokenshm login --config FILE NAME)");
    return std::nullopt;
}

std::string read_proc(const std::string& path) {
    std::ifstream f(path);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

// When process `pid` started, in Unix ms (from /proc), or -1.
std::int64_t process_start_ms(pid_t pid) {
    const std::string stat = read_proc("/proc/" + std::to_string(pid) + "/stat");
    const std::size_t close = stat.rfind(") ");
    if (close == std::string::npos) return -1;
    std::istringstream fields(stat.substr(close + 2));  // from field 3, the state
    std::string field;
    long long start_ticks = -1;
    for (int i = 3; fields >> field; ++i) {
        if (i == 22) {
            start_ticks = std::atoll(field.c_str());
            break;
        }
    }
    std::istringstream boot(read_proc("/proc/stat"));
    long long btime = -1;
    for (std::string word; boot >> word;)
        if (word == "btime" && boot >> btime) break;
    const long hz = ::sysconf(_SC_CLK_TCK);
    if (start_ticks < 0 || btime < 0 || hz <= 0) return -1;
    return btime * 1000 + start_ticks * 1000 / hz;
}

// Why `w`'s pid is not one to signal, or empty when it is.
std::string not_our_refresher(const tokenshm::WriterStatus& w) {
    const pid_t pid = static_cast<pid_t>(w.pid);
    const std::string proc = "/proc/" + std::to_string(pid);
    const std::string comm = read_proc(proc + "/comm");
    if (comm != "tokenshm-refres\n" && comm != "tokenshm-refresher\n")
        return "pid " + std::to_string(pid) + " is not a tokenshm-refresher";
    const std::string status = read_proc(proc + "/status");
    const std::size_t at = status.find("\nUid:");
    long uid = -1;
    if (at != std::string::npos) std::istringstream(status.substr(at + 5)) >> uid;
    if (::geteuid() != 0 && uid != static_cast<long>(::geteuid()))
        return "refresher pid " + std::to_string(pid) + " runs as uid " + std::to_string(uid) +
               ", not ours";
    const std::int64_t started = process_start_ms(pid);
    // /proc/stat's btime is whole seconds: allow for its rounding.
    if (started < 0 || started > w.start_ms + 2000)
        return "pid " + std::to_string(pid) + " started after the segment's writer attached";
    return {};
}

// Tells the refresher of `segment`, if one runs, to read the new token.
int tell_refresher(const std::string& segment, const std::string& name) {
    auto reader = tokenshm::Reader::open(segment);
    if (!reader) {
        if (reader.error().code == tokenshm::Error::no_segment) {
            std::printf(
                "no refresher runs on segment %s: it uses the new refresh token for %s "
                "when it starts\n",
                segment.c_str(), name.c_str());
            return login_exit::ok;
        }
        return fail(login_exit::unreachable, "stored, but the refresher could not be told: " +
                                                 reader.error().message + "; send it SIGHUP");
    }
    const tokenshm::WriterStatus w = reader->writer();
    if (!w.lock_held || w.pid <= 0) {
        std::printf(
            "no refresher runs on segment %s: it uses the new refresh token for %s "
            "when it starts\n",
            segment.c_str(), name.c_str());
        return login_exit::ok;
    }
    if (const std::string why = not_our_refresher(w); !why.empty())
        return fail(login_exit::unreachable,
                    "stored, but the refresher was not told (" + why + "); send it SIGHUP");
    if (::kill(static_cast<pid_t>(w.pid), SIGHUP) != 0)
        return fail(login_exit::unreachable, "stored, but kill(" + std::to_string(w.pid) +
                                                 ", SIGHUP): " + std::strerror(errno) +
                                                 "; send it SIGHUP");
    std::printf("told the refresher (pid %lld) to load it (SIGHUP)\n",
                static_cast<long long>(w.pid));
    // A reload reads refresh tokens again only for a credential in reauth
    // (daemon.cpp, update_credential); one that works keeps the token it has.
    if (auto h = reader->lookup(name)) {
        if (auto t = h->inspect();
            t && t->state() != tokenshm::State::reauth && t->state() != tokenshm::State::empty)
            std::printf(
                "%s is %s, not in reauth: the refresher keeps the refresh token it has, "
                "and its next rotation replaces the one stored now\n",
                name.c_str(), tokenshm::to_string(t->state()));
    }
    return login_exit::ok;
}

}  // namespace

namespace tokenshm_cli {

const char* const kLoginUsage =
    "usage: tokenshm login --config FILE NAME [--timeout S] [--open]\n"
    "Gets credential NAME its first (or a new) refresh token: the authorization-code\n"
    "flow with PKCE (S256) and state, through the issuer's authorization_endpoint.\n"
    "Prints the URL to open in a browser, waits for the authorization server's\n"
    "redirect to a listener on 127.0.0.1 (the credential's redirect_uri, else a free\n"
    "port and /callback), exchanges the code, stores the refresh token in the state\n"
    "directory (never printed) and tells a running refresher (SIGHUP).\n"
    "options:\n"
    "  --config FILE      the refresher's configuration (required): the credential,\n"
    "                     its client and issuer, and state_dir\n"
    "  --timeout S        wait at most S whole seconds for the redirect, 1 to 86400\n"
    "                     (default 300)\n"
    "  --open             also open the URL with xdg-open\n"
    "  -h, --help         print this help and exit 0\n"
    "exit codes: 0 stored, 1 system, network or state directory error, 2 usage or\n"
    "            config error, 4 no such credential in the config, 5 no refresh token\n"
    "            obtained (access denied, state mismatch, timeout, code refused),\n"
    "            7 stored but the running refresher could not be told\n";

int cmd_login(const std::vector<std::string_view>& args) {
    login::LoginOptions o;
    if (auto rc = parse_login_args(args, o)) return *rc;
    // The process holds a client secret, a code and a refresh token: no core file.
    if (::prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0)
        return fail(login_exit::runtime,
                    std::string("prctl(PR_SET_DUMPABLE): ") + std::strerror(errno));
    o.show_url = [](const std::string& url, const std::string& redirect) {
        std::fprintf(stderr,
                     "tokenshm: login: open this URL in a browser and log in "
                     "(waiting for the redirect to %s):\n",
                     redirect.c_str());
        std::printf("%s\n", url.c_str());
        std::fflush(stdout);
    };
    o.note = [](const std::string& line) {
        std::fprintf(stderr, "tokenshm: login: %s\n", line.c_str());
    };
    auto done = login::run_login(o);
    if (!done) return fail(done.error().exit_code, done.error().message);
    std::printf("stored the refresh token for %s in %s\n", o.name.c_str(),
                done->token_path.c_str());
    return tell_refresher(done->segment, o.name);
}

}  // namespace tokenshm_cli
