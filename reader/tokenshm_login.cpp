// `tokenshm login --config FILE NAME`: the arguments, the person's view of
// refresher/login.hpp's flow, and telling a running refresher that a new
// refresh token is in the state directory.
//
// The refresher is told through the control socket the segment names
// ({"op":"token_stored","name":N}): a credential in reauth then reads its
// refresh token again (the state directory's wins over refresh_token_file);
// one that works keeps its own.
#include "tokenshm_login.hpp"

#include <login.hpp>
#include <tokenshm/reader.hpp>
#include <tokenshm/shm/posix.hpp>

#include <rapidjson/document.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <cstring>

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

// Sends one request line to the control socket at `path` and returns its
// one answer line (bounded by 4 KiB and `timeout_ms`), or why not.
tokenshm::Expected<std::string, std::string> ask_control(const std::string& path,
                                                         const std::string& line, int timeout_ms) {
    sockaddr_un a{};
    if (path.empty() || path.size() >= sizeof a.sun_path)
        return tokenshm::Unexpected{std::string("the segment names no usable control socket")};
    a.sun_family = AF_UNIX;
    std::memcpy(a.sun_path, path.data(), path.size());
    const tokenshm::shm::Fd sock(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!sock.valid()) return tokenshm::Unexpected{std::string("socket: ") + std::strerror(errno)};
    const int fd = sock.get();
    const timeval tv{timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    if (::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0 ||
        ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) != 0)
        return tokenshm::Unexpected{std::string("setsockopt: ") + std::strerror(errno)};
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&a), sizeof a) != 0)
        return tokenshm::Unexpected{"connect to " + path + ": " + std::strerror(errno)};
    if (::send(fd, line.data(), line.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(line.size()))
        return tokenshm::Unexpected{"send to " + path + ": " + std::strerror(errno)};
    std::string answer;
    char buf[512];
    while (answer.find('\n') == std::string::npos && answer.size() < 4096) {
        const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
        if (n == 0) return tokenshm::Unexpected{path + " closed without an answer"};
        if (n < 0 && errno == EINTR) continue;
        if (n < 0)
            return tokenshm::Unexpected{"receive from " + path + ": " + std::strerror(errno)};
        answer.append(buf, static_cast<std::size_t>(n));
    }
    const auto end = answer.find('\n');
    if (end == std::string::npos) return tokenshm::Unexpected{path + " answered an over-long line"};
    answer.resize(end);
    return answer;
}

void print_no_refresher(const std::string& segment, const std::string& name) {
    std::printf(
        "no refresher runs on segment %s: it uses the new refresh token for %s when it "
        "starts\n",
        segment.c_str(), name.c_str());
}

// Tells the refresher of `segment`, if one runs, through its control socket
// ({"op":"token_stored"}) that a new refresh token for `name` is stored.
int tell_refresher(const std::string& segment, const std::string& name) {
    const auto not_told = [](const std::string& why) {
        return fail(login_exit::unreachable,
                    "stored, but the refresher was not told (" + why + "); send it SIGHUP");
    };
    auto reader = tokenshm::Reader::open(segment);
    if (!reader && reader.error().code == tokenshm::Error::no_segment) {
        print_no_refresher(segment, name);
        return login_exit::ok;
    }
    if (!reader) return not_told(reader.error().message);
    const tokenshm::WriterStatus w = reader->writer();
    if (!w.lock_held || w.pid <= 0) {
        print_no_refresher(segment, name);
        return login_exit::ok;
    }
    auto h = reader->lookup(name);
    if (!h) {
        std::printf(
            "the refresher (pid %lld) has no credential %s yet: a reload that adds it "
            "uses the new refresh token\n",
            static_cast<long long>(w.pid), name.c_str());
        return login_exit::ok;
    }
    auto answer =
        ask_control(h->control_socket(), R"({"op":"token_stored","name":")" + name + "\"}\n", 5000);
    if (!answer) return not_told(answer.error());
    rapidjson::Document d;
    d.Parse(answer->data(), answer->size());
    const auto text = [&](const char* key) -> std::string {
        if (!d.IsObject() || !d.HasMember(key) || !d[key].IsString()) return {};
        return {d[key].GetString(), d[key].GetStringLength()};
    };
    if (d.HasParseError() || !d.IsObject() || !d.HasMember("ok") || !d["ok"].IsBool())
        return not_told("its answer is not the control protocol's");
    if (!d["ok"].GetBool())
        return not_told(
            tokenshm::refresher::printable_line(text("error") + ": " + text("message")));
    const std::string action = text("action");
    if (action == "loaded") {
        std::printf("the refresher (pid %lld) is using the new refresh token for %s\n",
                    static_cast<long long>(w.pid), name.c_str());
    } else if (action == "kept") {
        std::printf(
            "%s is not in reauth: the refresher (pid %lld) keeps the refresh token it "
            "has, and its next rotation replaces the one stored now\n",
            name.c_str(), static_cast<long long>(w.pid));
    } else if (action == "offered") {
        std::printf(
            "the refresher (pid %lld) follows a leader on another host: the new refresh "
            "token for %s was offered to it through etcd\n",
            static_cast<long long>(w.pid), name.c_str());
    } else if (action == "unchanged") {
        return not_told("it found the refresh token it was refused with, not a new one");
    } else {
        return not_told("it answered " + tokenshm::refresher::quote(action));
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
    "directory (never printed) and tells a running refresher (control socket).\n"
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
