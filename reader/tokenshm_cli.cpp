// `tokenshm`: the command-line reader. Only `get` prints a token, to stdout.
// Every failure prints one line on stderr and exits with SPEC's code:
// 0 ok, 1 a system error (writing to stdout, a failing syscall), 2 usage,
// 3 no segment, 4 no such credential, 5 no valid token (empty, expired,
// expiring, reauth; also a wait that timed out or a writer busy through every
// retry), 6 incompatible or untrusted, 7 refresher unreachable or refusing
// (`refresh` and `get --invalid`, which talk to its control socket).
#include "prometheus_text.hpp"
#include "tokenshm_login.hpp"

#include <tokenshm/reader.hpp>

#include <unistd.h>

#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace {

using namespace std::chrono_literals;
using tokenshm::Error;

constexpr int kExitSystem = 1;
constexpr int kExitUsage = 2;

const char* const kUsage =
    "usage: tokenshm get NAME [--min-valid S] [--wait S] [--header] [--invalid VERSION]\n"
    "                         [--segment SEG]\n"
    "       tokenshm status [--json | --prometheus] [--segment SEG]\n"
    "       tokenshm watch NAME [--count N] [--segment SEG]\n"
    "       tokenshm refresh NAME [--wait S] [--segment SEG]\n"
    "       tokenshm login --config FILE NAME [--timeout S] [--open]\n"
    "       tokenshm --help | --version\n"
    "  get        print the token (--header: as an Authorization header); --wait S waits\n"
    "             for a valid one; --invalid VERSION first tells the refresher that the\n"
    "             token of that version was rejected (401), then waits (--wait, default\n"
    "             30 s) for a newer one and prints it\n"
    "  status     every credential's state, expiry, version, failures; the refresher's\n"
    "             liveness\n"
    "  watch      a line each time the token changes (never the token)\n"
    "  refresh    ask the refresher to refresh now, through its control socket\n"
    "             (min_interval_s still holds); --wait S waits for the new token\n"
    "  login      the authorization-code flow (PKCE) for a credential of FILE: prints\n"
    "             the URL to open, stores the refresh token in the state directory\n"
    "exit codes: 0 ok, 1 system error, 2 usage, 3 no segment, 4 no such credential,\n"
    "            5 no valid token (or none new in time), 6 segment incompatible or\n"
    "            untrusted, 7 refresher unreachable or refusing (control socket)\n"
    "tokenshm COMMAND --help (or tokenshm help COMMAND) prints that command's options.\n"
    "environment: TOKENSHM_SEGMENT (the segment when --segment is not given; default\n"
    "             \"tokenshm\"), TOKENSHM_TRUSTED_UID (a further uid whose segment to trust)\n";

// --- Help: `tokenshm COMMAND --help`, every option of that command ---------

const char* const kSegmentOption =
    "  --segment SEG      the segment's name (default: $TOKENSHM_SEGMENT, else \"tokenshm\")\n"
    "  -h, --help         print this help and exit 0\n";

const char* const kGetHelp =
    "usage: tokenshm get NAME [--min-valid S] [--wait S] [--header] [--invalid VERSION]\n"
    "                         [--segment SEG]\n"
    "Prints credential NAME's access token and a newline on stdout (the only command\n"
    "that prints a token). A token that has not expired is printed whatever its state.\n"
    "options:\n"
    "  --min-valid S      fail (exit 5, \"expiring\") unless the token stays valid S more\n"
    "                     seconds, so a long job never starts with a dying token\n"
    "  --wait S           wait up to S seconds for the segment, the credential and a\n"
    "                     valid token (a refresher that is starting); default: no wait\n"
    "  --header           print \"Authorization: <Type> <token>\" (curl -H @file)\n"
    "  --invalid VERSION  the token of VERSION (status --json's \"version\") got a 401:\n"
    "                     tell the refresher through its control socket, wait (--wait,\n"
    "                     default 30 s) for a token issued later, and print that one\n";
const char* const kGetTail =
    "S: seconds, a decimal from 0 to 31536000 (\"30\", \"0.5\").\n"
    "exit codes: 0 printed, 1 writing to stdout failed, 2 usage, 3 no segment, 4 no such\n"
    "            credential, 5 no valid token (empty, expired, expiring, reauth; with\n"
    "            --invalid: none new in time), 6 segment incompatible or untrusted,\n"
    "            7 control socket unreachable or refusing (--invalid)\n";

const char* const kStatusHelp =
    "usage: tokenshm status [--json | --prometheus] [--segment SEG]\n"
    "Every credential in the segment: state (empty, valid, stale, expired, reauth),\n"
    "expires in, version, last refresh, consecutive failures, next refresh, last\n"
    "error; and the refresher's pid and liveness (alive, hung, not running). Never a\n"
    "token. A dead refresher is not an error: the table says so.\n"
    "options:\n"
    "  --json             one JSON object: segment, refresher {pid, alive, lock_held,\n"
    "                     heartbeat_age_ms, started_at_ms, generation}, credentials [...]\n"
    "  --prometheus       node_exporter's textfile format (metric names in the README)\n";
const char* const kStatusTail =
    "exit codes: 0 shown, 2 usage, 3 no segment, 6 segment incompatible or untrusted\n";

const char* const kWatchHelp =
    "usage: tokenshm watch NAME [--count N] [--segment SEG]\n"
    "A line on stdout for the credential's current record and then one each time it\n"
    "changes (refresh, failure, state): \"<UTC time> NAME version=V state=S\n"
    "expires_in=D failures=N [last_error=\"...\"]\". Never the token. Runs until\n"
    "interrupted.\n"
    "options:\n"
    "  --count N          exit 0 after N lines (N >= 1)\n";
const char* const kWatchTail =
    "exit codes: 0 --count lines printed, 1 writing to stdout failed, 2 usage, 3 no\n"
    "            segment, 4 no such credential (also once a reload removes it),\n"
    "            6 segment incompatible or untrusted\n";

const char* const kRefreshHelp =
    "usage: tokenshm refresh NAME [--wait S] [--segment SEG]\n"
    "Asks the refresher to refresh NAME now, through the control socket the segment\n"
    "names. Asks for one credential share one token request, and min_interval_s still\n"
    "holds. Prints \"NAME: refreshing (version V)\" (this ask sent the request),\n"
    "\"joined\" (a request already under way serves it) or \"waiting\" (with when the\n"
    "request goes out).\n"
    "options:\n"
    "  --wait S           then wait up to S seconds for a newly issued token and print\n"
    "                     \"NAME: new token, version V, expires in D\"\n";
const char* const kRefreshTail =
    "exit codes: 0 asked (with --wait: the new token is in the segment), 2 usage, 3 no\n"
    "            segment, 4 no such credential, 5 with --wait: the refresh failed, reauth,\n"
    "            or no new token in time, 6 segment incompatible or untrusted, 7 control\n"
    "            socket unreachable, or the refresher refused this user\n";

int usage_error(const std::string& msg) {
    std::fprintf(stderr, "tokenshm: %s\n%s", msg.c_str(), kUsage);
    return kExitUsage;
}

int fail(int code, const std::string& msg) {
    std::fprintf(stderr, "tokenshm: %s\n", msg.c_str());
    return code;
}

bool asks_for_help(const std::vector<std::string_view>& args) {
    for (const std::string_view a : args)
        if (a == "--help" || a == "-h") return true;
    return false;
}

int print_help(const std::vector<const char*>& parts) {
    for (const char* p : parts)
        if (std::fputs(p, stdout) < 0)
            return fail(kExitSystem, std::string("writing to stdout: ") + std::strerror(errno));
    if (std::fflush(stdout) != 0)
        return fail(kExitSystem, std::string("writing to stdout: ") + std::strerror(errno));
    return 0;
}

// `cmd`'s help on stdout (exit 0), or a usage error for an unknown command.
int command_help(std::string_view cmd) {
    if (cmd == "get") return print_help({kGetHelp, kSegmentOption, kGetTail});
    if (cmd == "status") return print_help({kStatusHelp, kSegmentOption, kStatusTail});
    if (cmd == "watch") return print_help({kWatchHelp, kSegmentOption, kWatchTail});
    if (cmd == "refresh") return print_help({kRefreshHelp, kSegmentOption, kRefreshTail});
    if (cmd == "login") return print_help({tokenshm_cli::kLoginUsage});
    return usage_error("unknown command '" + std::string(cmd) + "'");
}

// Seconds as a non-negative decimal ("30", "0.5"), at most a year.
std::optional<std::chrono::milliseconds> parse_seconds(std::string_view s) {
    if (s.empty() || s.size() > 20) return std::nullopt;
    double v = 0;
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc{} || p != s.data() + s.size() || !std::isfinite(v) || v < 0 ||
        v > 31536000.0)
        return std::nullopt;
    return std::chrono::milliseconds(static_cast<std::int64_t>(std::llround(v * 1000.0)));
}

std::int64_t now_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

// a - b for times read from the segment, which may hold anything: clamped to
// the int64 range instead of overflowing.
std::int64_t ms_diff(std::int64_t a, std::int64_t b) {
    std::int64_t d;
    if (!__builtin_sub_overflow(a, b, &d)) return d;
    return b < 0 ? std::numeric_limits<std::int64_t>::max()
                 : std::numeric_limits<std::int64_t>::min();
}

// "45s", "3m12s", "1h02m", "2d03h"; a negative duration gets a leading "-".
std::string human_duration(std::int64_t ms) {
    // -INT64_MIN does not fit in an int64; INT64_MAX reads the same.
    if (ms < 0)
        return "-" + human_duration(ms == std::numeric_limits<std::int64_t>::min()
                                        ? std::numeric_limits<std::int64_t>::max()
                                        : -ms);
    std::int64_t s = ms / 1000;
    char buf[48];
    if (s < 60)
        std::snprintf(buf, sizeof buf, "%llds", static_cast<long long>(s));
    else if (s < 3600)
        std::snprintf(buf, sizeof buf, "%lldm%02llds", static_cast<long long>(s / 60),
                      static_cast<long long>(s % 60));
    else if (s < 86400)
        std::snprintf(buf, sizeof buf, "%lldh%02lldm", static_cast<long long>(s / 3600),
                      static_cast<long long>(s % 3600 / 60));
    else
        std::snprintf(buf, sizeof buf, "%lldd%02lldh", static_cast<long long>(s / 86400),
                      static_cast<long long>(s % 86400 / 3600));
    return buf;
}

std::string json_escape(std::string_view s) {
    std::string out;
    for (char c : s) {
        switch (c) {
            case '"':
                out += "\\\"";
                break;
            case '\\':
                out += "\\\\";
                break;
            case '\n':
                out += "\\n";
                break;
            case '\t':
                out += "\\t";
                break;
            default:
                if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
                    char b[8];
                    std::snprintf(b, sizeof b, "\\u%04x", static_cast<unsigned>(c));
                    out += b;
                } else {
                    out += c;
                }
        }
    }
    return out;
}

// Opens the segment, retrying until `deadline` when one is given.
tokenshm::Expected<tokenshm::Reader, tokenshm::Failure> open_reader(
    const std::string& segment, std::optional<std::int64_t> deadline) {
    for (;;) {
        auto r = tokenshm::Reader::open(segment);
        if (r || !deadline || r.error().code != Error::no_segment || now_ms() >= *deadline)
            return r;
        std::this_thread::sleep_for(50ms);
    }
}

// Reads "--opt VALUE" at args[i]; advances i.
std::optional<std::string_view> option_value(const std::vector<std::string_view>& args,
                                             std::size_t& i) {
    if (i + 1 >= args.size()) return std::nullopt;
    return args[++i];
}

std::optional<int> parse_duration_option(const std::vector<std::string_view>& args, std::size_t& i,
                                         std::chrono::milliseconds& out) {
    const std::string opt(args[i]);
    auto v = option_value(args, i);
    if (!v) return usage_error(opt + " needs a number of seconds");
    auto d = parse_seconds(*v);
    if (!d)
        return usage_error(opt + ": '" + std::string(*v) +
                           "' is not a number of seconds from 0 to 31536000");
    out = *d;
    return std::nullopt;
}

struct GetOptions {
    std::optional<std::string> name;
    std::chrono::milliseconds min_valid{0};
    std::chrono::milliseconds wait{-1};  // negative: do not wait
    bool header = false;
    std::string segment;
    std::optional<std::uint64_t> invalid;  // --invalid VERSION
};

// A version number: a whole number from 1.
std::optional<std::uint64_t> parse_version(std::string_view s) {
    std::uint64_t v = 0;
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc{} || p != s.data() + s.size() || v == 0) return std::nullopt;
    return v;
}

// Fills `o` from get's arguments; an exit code when they are wrong.
std::optional<int> parse_get_args(const std::vector<std::string_view>& args, GetOptions& o) {
    for (std::size_t i = 0; i < args.size(); ++i) {
        const std::string_view a = args[i];
        if (a == "--min-valid") {
            if (auto rc = parse_duration_option(args, i, o.min_valid)) return *rc;
        } else if (a == "--wait") {
            if (auto rc = parse_duration_option(args, i, o.wait)) return *rc;
        } else if (a == "--header") {
            o.header = true;
        } else if (a == "--invalid") {
            auto v = option_value(args, i);
            if (!v) return usage_error("--invalid needs the version that was rejected");
            o.invalid = parse_version(*v);
            if (!o.invalid)
                return usage_error("--invalid: '" + std::string(*v) +
                                   "' is not a version (1 or more)");
        } else if (a == "--segment") {
            auto v = option_value(args, i);
            if (!v) return usage_error("--segment needs a name");
            o.segment = std::string(*v);
        } else if (!a.empty() && a[0] == '-') {
            return usage_error("get: unknown option '" + std::string(a) + "'");
        } else if (!o.name) {
            o.name = std::string(a);
        } else {
            return usage_error("get: one credential name only ('" + std::string(a) + "' is extra)");
        }
    }
    if (!o.name) return usage_error("get: which credential? (tokenshm get NAME)");
    return std::nullopt;
}

// Looks the credential up, retrying until `deadline` when one is given (the
// refresher may not have claimed its slot yet).
tokenshm::Expected<tokenshm::Handle, tokenshm::Failure> lookup_handle(
    tokenshm::Reader& reader, const std::string& name, std::optional<std::int64_t> deadline) {
    auto handle = reader.lookup(name);
    while (!handle && deadline && handle.error().code == Error::no_such_credential &&
           now_ms() < *deadline) {
        std::this_thread::sleep_for(50ms);
        handle = reader.lookup(name);
    }
    return handle;
}

bool no_valid_token(Error e) {
    return e == Error::empty || e == Error::expired || e == Error::expiring || e == Error::reauth;
}

// get(), or while there is no valid token and `deadline` has not passed,
// wait() for the next record and try again.
tokenshm::Expected<tokenshm::Token, Error> get_token(tokenshm::Handle& handle,
                                                     std::chrono::milliseconds min_valid,
                                                     std::optional<std::int64_t> deadline) {
    auto tok = handle.get(min_valid);
    std::uint64_t seen = 0;
    while (!tok && deadline && no_valid_token(tok.error())) {
        const std::int64_t left = *deadline - now_ms();
        if (left <= 0) break;
        if (auto rec = handle.inspect()) seen = rec->version();
        tok = handle.wait(seen, std::chrono::milliseconds(left), min_valid);
        if (!tok && tok.error() == Error::timeout) return handle.get(min_valid);
    }
    return tok;
}

// "'NAME': expiring (expires in 1m, wanted 5m); last error: ...": never the token.
int fail_no_token(const std::string& name, tokenshm::Handle& handle, Error e,
                  std::chrono::milliseconds min_valid) {
    std::string msg = "'" + name + "': " + tokenshm::to_string(e);
    if (auto rec = handle.inspect(); rec) {
        if (e == Error::expiring)
            msg += " (expires in " + human_duration(ms_diff(rec->expires_at_ms(), now_ms())) +
                   ", wanted " + human_duration(min_valid.count()) + ")";
        // last_error came from a server: escaped, so it cannot drive the terminal.
        if (!rec->last_error().empty()) msg += "; last error: " + json_escape(rec->last_error());
    }
    return fail(tokenshm::exit_code(e), msg);
}

// The token (or "Authorization: <Type> <token>") and a newline on stdout; the
// buffer is wiped afterwards.
int print_token(const tokenshm::Token& tok, bool header) {
    std::string out;
    if (header) {
        out = "Authorization: ";
        out += tok.token_type().empty() ? std::string_view("Bearer") : tok.token_type();
        out += ' ';
    }
    out += tok.token();
    out += '\n';
    if (std::fwrite(out.data(), 1, out.size(), stdout) != out.size() || std::fflush(stdout) != 0)
        return fail(kExitSystem, std::string("writing to stdout: ") + std::strerror(errno));
    ::explicit_bzero(out.data(), out.size());
    return 0;
}

// --- The control socket: `refresh` and `get --invalid` ---------------------

constexpr auto kControlTimeout = 5s;
constexpr auto kDefaultInvalidWait = 30s;

int fail_control(const tokenshm::Handle& handle, const std::string& what, Error e) {
    std::string msg = "'" + handle.name() + "': " + what + ": " + tokenshm::to_string(e);
    if (e == Error::unreachable) {
        const std::string path = handle.control_socket();
        msg += path.empty() ? " (the segment names no control socket)" : " at " + path;
    }
    return fail(tokenshm::exit_code(e), msg);
}

// The issued_at of the token in the slot now (0 for none): a token issued
// later is a new one, whatever other publishes (a failure, a state change) did
// to the version meanwhile.
std::int64_t issued_now(tokenshm::Handle& handle) {
    auto rec = handle.inspect();
    return rec && rec->state() != tokenshm::State::empty ? rec->issued_at_ms() : 0;
}

// Waits until a token issued after `base_issued` is in the slot, or the
// refresh asked at `asked_ms` failed, or `deadline` passes. An exit code on failure.
std::optional<int> wait_new_token(tokenshm::Handle& handle, std::int64_t base_issued,
                                  std::int64_t asked_ms, std::int64_t deadline) {
    const std::string who = "'" + handle.name() + "': ";
    for (;;) {
        auto rec = handle.inspect();
        if (!rec)
            return fail(tokenshm::exit_code(rec.error()), who + tokenshm::to_string(rec.error()));
        if (rec->state() != tokenshm::State::empty && rec->issued_at_ms() > base_issued)
            return std::nullopt;
        if (rec->state() == tokenshm::State::reauth)
            return fail(5, who + tokenshm::to_string(Error::reauth));
        if (rec->failures() > 0 && rec->last_attempt_ms() >= asked_ms)
            return fail(5,
                        who + "the refresh failed; last error: " + json_escape(rec->last_error()));
        const std::int64_t left = deadline - now_ms();
        if (left <= 0) return fail(5, who + "no new token in time (the refresher is retrying)");
        auto next = handle.wait(rec->version(), std::chrono::milliseconds(left));
        if (!next && next.error() != Error::timeout && !no_valid_token(next.error()))
            return fail(tokenshm::exit_code(next.error()), who + tokenshm::to_string(next.error()));
    }
}

int get_after_invalid(tokenshm::Handle& handle, const GetOptions& o) {
    const std::int64_t deadline =
        now_ms() +
        (o.wait.count() >= 0 ? o.wait : std::chrono::milliseconds(kDefaultInvalidWait)).count();
    const std::int64_t base = issued_now(handle);
    const std::int64_t asked = now_ms();
    auto reply = handle.request_refresh(*o.invalid, kControlTimeout);
    if (!reply)
        return fail_control(handle, "reporting version " + std::to_string(*o.invalid),
                            reply.error());
    if (reply->action != tokenshm::RefreshReply::Action::newer)
        if (auto rc = wait_new_token(handle, base, asked, deadline)) return *rc;
    auto tok = handle.get(o.min_valid);
    if (!tok) return fail_no_token(handle.name(), handle, tok.error(), o.min_valid);
    return print_token(*tok, o.header);
}

struct RefreshOptions {
    std::optional<std::string> name;
    std::chrono::milliseconds wait{-1};  // negative: do not wait
    std::string segment;
};

std::optional<int> parse_refresh_args(const std::vector<std::string_view>& args,
                                      RefreshOptions& o) {
    for (std::size_t i = 0; i < args.size(); ++i) {
        const std::string_view a = args[i];
        if (a == "--wait") {
            if (auto rc = parse_duration_option(args, i, o.wait)) return *rc;
        } else if (a == "--segment") {
            auto v = option_value(args, i);
            if (!v) return usage_error("--segment needs a name");
            o.segment = std::string(*v);
        } else if (!a.empty() && a[0] == '-') {
            return usage_error("refresh: unknown option '" + std::string(a) + "'");
        } else if (!o.name) {
            o.name = std::string(a);
        } else {
            return usage_error("refresh: one credential name only ('" + std::string(a) +
                               "' is extra)");
        }
    }
    if (!o.name) return usage_error("refresh: which credential? (tokenshm refresh NAME)");
    return std::nullopt;
}

// "NAME: refreshing (version 7)" or "NAME: waiting 3s (min_interval_s), then refreshing".
std::string refresh_line(const std::string& name, const tokenshm::RefreshReply& r) {
    std::string line = name + ": " + tokenshm::to_string(r.action) + " (version " +
                       std::to_string(r.version) + ")";
    if (r.action == tokenshm::RefreshReply::Action::waiting)
        line += ", the token request goes out in " +
                human_duration(std::max<std::int64_t>(0, r.not_before_unix_ms - now_ms())) +
                " (min_interval_s)";
    return line;
}

int cmd_refresh(const std::vector<std::string_view>& args) {
    RefreshOptions o;
    if (auto rc = parse_refresh_args(args, o)) return *rc;
    auto reader = open_reader(o.segment, std::nullopt);
    if (!reader) return fail(tokenshm::exit_code(reader.error().code), reader.error().message);
    auto handle = reader->lookup(*o.name);
    if (!handle) return fail(tokenshm::exit_code(handle.error().code), handle.error().message);
    const std::int64_t base = issued_now(*handle);
    const std::int64_t asked = now_ms();
    auto reply = handle->request_refresh(0, kControlTimeout);
    if (!reply) return fail_control(*handle, "asking for a refresh", reply.error());
    std::printf("%s\n", refresh_line(*o.name, *reply).c_str());
    if (o.wait.count() < 0) return std::fflush(stdout) == 0 ? 0 : kExitSystem;
    if (auto rc = wait_new_token(*handle, base, asked, now_ms() + o.wait.count())) return *rc;
    auto rec = handle->inspect();
    if (!rec) return fail(tokenshm::exit_code(rec.error()), tokenshm::to_string(rec.error()));
    std::printf("%s: new token, version %llu, expires in %s\n", o.name->c_str(),
                static_cast<unsigned long long>(rec->version()),
                human_duration(ms_diff(rec->expires_at_ms(), now_ms())).c_str());
    return std::fflush(stdout) == 0 ? 0 : kExitSystem;
}

int cmd_get(const std::vector<std::string_view>& args) {
    GetOptions o;
    if (auto rc = parse_get_args(args, o)) return *rc;
    std::optional<std::int64_t> deadline;
    if (o.wait.count() >= 0) deadline = now_ms() + o.wait.count();
    auto reader = open_reader(o.segment, deadline);
    if (!reader) return fail(tokenshm::exit_code(reader.error().code), reader.error().message);
    auto handle = lookup_handle(*reader, *o.name, deadline);
    if (!handle) return fail(tokenshm::exit_code(handle.error().code), handle.error().message);
    if (o.invalid) return get_after_invalid(*handle, o);
    auto tok = get_token(*handle, o.min_valid, deadline);
    if (!tok) return fail_no_token(*o.name, *handle, tok.error(), o.min_valid);
    return print_token(*tok, o.header);
}

// The state a person should see: a token past its expiry is "expired"
// whatever the record says, except "reauth", which says more.
const char* shown_state(const tokenshm::Token& t, std::int64_t now) {
    const auto s = tokenshm::metrics::shown_state(
        static_cast<tokenshm::shm::RecordState>(t.state()), t.expires_at_ms(), now);
    return tokenshm::to_string(static_cast<tokenshm::State>(s));
}

struct Row {
    std::string name;
    tokenshm::Handle handle;  // owns the copy `rec` points into
    tokenshm::Expected<tokenshm::Token, Error> rec;
};

// What `status` shows, read once: the refresher's liveness and every slot.
struct StatusView {
    std::string segment;
    tokenshm::WriterStatus writer;
    std::int64_t now = 0;
    std::int64_t heartbeat_age = 0;
    bool alive = false;
    std::vector<Row> rows;
    // Asked of a live refresher coordinated on etcd; none when it runs alone.
    std::optional<tokenshm::Coordination> coordination;
};

StatusView read_status(tokenshm::Reader& reader) {
    StatusView v;
    v.segment = reader.segment_name();
    v.writer = reader.writer();
    v.now = now_ms();
    v.heartbeat_age = ms_diff(v.now, v.writer.heartbeat_ms);
    v.alive = v.writer.lock_held && v.heartbeat_age < tokenshm::Token::kWriterAliveWithinMs &&
              v.heartbeat_age > -tokenshm::Token::kWriterAliveWithinMs;
    if (v.alive && !reader.control_socket().empty())
        if (auto c = reader.coordination(std::chrono::milliseconds(1000)); c)
            v.coordination = std::move(*c);  // no answer: the table without it
    for (const std::string& n : reader.credentials()) {
        auto h = reader.lookup(n);
        if (!h) continue;  // removed between the listing and the lookup
        v.rows.push_back(Row{n, std::move(*h), tokenshm::Unexpected{Error::empty}});
        v.rows.back().rec = v.rows.back().handle.inspect();
    }
    return v;
}

std::string refresher_json(const StatusView& v) {
    const tokenshm::WriterStatus& w = v.writer;
    return "{\"pid\":" + std::to_string(w.pid) + ",\"alive\":" + (v.alive ? "true" : "false") +
           ",\"lock_held\":" + (w.lock_held ? "true" : "false") +
           ",\"heartbeat_age_ms\":" + std::to_string(v.heartbeat_age) +
           ",\"started_at_ms\":" + std::to_string(w.start_ms) +
           ",\"generation\":" + std::to_string(w.generation) + "}";
}

std::string row_json(const Row& r, std::int64_t now) {
    std::string o = "{\"name\":\"" + json_escape(r.name) + "\"";
    if (!r.rec)
        return o + ",\"error\":\"" + json_escape(tokenshm::to_string(r.rec.error())) + "\"}";
    const tokenshm::Token& t = *r.rec;
    o += ",\"state\":\"" + std::string(shown_state(t, now)) + "\"";
    o += ",\"version\":" + std::to_string(t.version());
    o += ",\"expires_at_ms\":" + std::to_string(t.expires_at_ms());
    o += ",\"expires_in_ms\":" +
         std::to_string(t.state() == tokenshm::State::empty ? 0 : ms_diff(t.expires_at_ms(), now));
    o += ",\"issued_at_ms\":" + std::to_string(t.issued_at_ms());
    o += ",\"next_refresh_ms\":" + std::to_string(t.next_refresh_ms());
    o += ",\"last_attempt_ms\":" + std::to_string(t.last_attempt_ms());
    o += ",\"failures\":" + std::to_string(t.failures());
    o += ",\"token_type\":\"" + json_escape(t.token_type()) + "\"";
    o += ",\"scope\":\"" + json_escape(t.scope()) + "\"";
    o += ",\"last_error\":\"" + json_escape(t.last_error()) + "\"}";
    return o;
}

void print_status_json(const StatusView& v) {
    std::string o = "{\"segment\":\"" + json_escape(v.segment) + "\"";
    o += ",\"refresher\":" + refresher_json(v);
    if (const auto& c = v.coordination) {
        o += ",\"coordination\":{\"role\":\"" + json_escape(c->role) + "\",\"leader_host\":\"" +
             json_escape(c->leader_host) + "\",\"leader_pid\":" + std::to_string(c->leader_pid) +
             ",\"lease_remaining_ms\":" + std::to_string(c->lease_remaining_ms) + ",\"etcd\":\"" +
             json_escape(c->etcd) + "\",\"seal\":\"" + json_escape(c->seal) + "\"}";
    }
    o += ",\"credentials\":[";
    bool first = true;
    for (const Row& r : v.rows) {
        if (!first) o += ',';
        first = false;
        o += row_json(r, v.now);
    }
    o += "]}\n";
    std::fputs(o.c_str(), stdout);
}

void print_status_row(const Row& r, std::int64_t now) {
    if (!r.rec) {
        std::printf("%-20s %s\n", r.name.c_str(), tokenshm::to_string(r.rec.error()));
        return;
    }
    const tokenshm::Token& t = *r.rec;
    const bool has_token = t.state() != tokenshm::State::empty;
    // A time the record never had is "-", not a duration since 1970.
    const std::string expires =
        has_token && t.expires_at_ms() > 0 ? human_duration(ms_diff(t.expires_at_ms(), now)) : "-";
    const std::string last =
        t.issued_at_ms() > 0 ? human_duration(ms_diff(now, t.issued_at_ms())) + " ago" : "-";
    const std::string next =
        t.next_refresh_ms() > 0 ? "in " + human_duration(ms_diff(t.next_refresh_ms(), now)) : "-";
    std::printf("%-20s %-8s %-10s %-8llu %-13s %-8u %-12s %s\n", r.name.c_str(),
                shown_state(t, now), expires.c_str(), static_cast<unsigned long long>(t.version()),
                last.c_str(), t.failures(), next.c_str(),
                t.last_error().empty() ? "-" : json_escape(t.last_error()).c_str());
}

void print_status_table(const StatusView& v) {
    const tokenshm::WriterStatus& w = v.writer;
    const char* liveness =
        v.alive ? "alive" : (w.lock_held ? "hung (no heartbeat)" : "not running");
    std::printf("segment %s: refresher pid %lld %s (heartbeat %s ago, generation %llu)\n",
                v.segment.c_str(), static_cast<long long>(w.pid), liveness,
                w.heartbeat_ms > 0 ? human_duration(v.heartbeat_age).c_str() : "never",
                static_cast<unsigned long long>(w.generation));
    if (const auto& c = v.coordination) {
        const std::string leader =
            c->leader_pid == 0 ? std::string("none known")
                               : "host " + c->leader_host + " pid " + std::to_string(c->leader_pid);
        std::printf("coordination: %s, leader %s, lease %s left, etcd %s, seal %s\n",
                    c->role.c_str(), leader.c_str(), human_duration(c->lease_remaining_ms).c_str(),
                    json_escape(c->etcd).c_str(), json_escape(c->seal).c_str());
    }
    std::printf("%-20s %-8s %-10s %-8s %-13s %-8s %-12s %s\n", "CREDENTIAL", "STATE", "EXPIRES IN",
                "VERSION", "LAST REFRESH", "FAILURES", "NEXT REFRESH", "LAST ERROR");
    for (const Row& r : v.rows)
        print_status_row(r, v.now);
}

// node_exporter's textfile format (prometheus_text.hpp); credentials whose
// record cannot be read are left out.
void print_status_prometheus(const StatusView& v) {
    tokenshm::metrics::SegmentSample s;
    s.now_ms = v.now;
    s.heartbeat_ms = v.writer.heartbeat_ms;
    s.refresher_up = v.alive;
    for (const Row& r : v.rows) {
        if (!r.rec) continue;
        s.credentials.push_back({r.name, static_cast<tokenshm::shm::RecordState>(r.rec->state()),
                                 r.rec->version(), r.rec->expires_at_ms(), r.rec->failures()});
    }
    tokenshm::metrics::MetricsText out;
    tokenshm::metrics::render_segment(out, s);
    std::fputs(out.text().c_str(), stdout);
}

int cmd_status(const std::vector<std::string_view>& args) {
    bool json = false;
    bool prometheus = false;
    std::string segment;
    for (std::size_t i = 0; i < args.size(); ++i) {
        const std::string_view a = args[i];
        if (a == "--json") {
            json = true;
        } else if (a == "--prometheus") {
            prometheus = true;
        } else if (a == "--segment") {
            auto v = option_value(args, i);
            if (!v) return usage_error("--segment needs a name");
            segment = std::string(*v);
        } else {
            return usage_error("status: unexpected argument '" + std::string(a) + "'");
        }
    }
    if (json && prometheus) return usage_error("status: --json or --prometheus, not both");
    auto reader = tokenshm::Reader::open(segment);
    if (!reader) return fail(tokenshm::exit_code(reader.error().code), reader.error().message);
    const StatusView view = read_status(*reader);
    if (prometheus)
        print_status_prometheus(view);
    else if (json)
        print_status_json(view);
    else
        print_status_table(view);
    return 0;
}

std::string utc_now() {
    const auto now = std::chrono::system_clock::now();
    const std::time_t t = std::chrono::system_clock::to_time_t(now);
    const auto ms = now_ms() % 1000;
    struct tm tm {};
    ::gmtime_r(&t, &tm);
    char buf[64];
    std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03lldZ", tm.tm_year + 1900,
                  tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                  static_cast<long long>(ms));
    return buf;
}

struct WatchOptions {
    std::optional<std::string> name;
    std::string segment;
    long long count = -1;  // negative: forever
};

// Fills `o` from watch's arguments; an exit code when they are wrong.
std::optional<int> parse_watch_args(const std::vector<std::string_view>& args, WatchOptions& o) {
    for (std::size_t i = 0; i < args.size(); ++i) {
        const std::string_view a = args[i];
        if (a == "--segment") {
            auto v = option_value(args, i);
            if (!v) return usage_error("--segment needs a name");
            o.segment = std::string(*v);
        } else if (a == "--count") {
            auto v = option_value(args, i);
            long long n = 0;
            if (!v ||
                std::from_chars(v->data(), v->data() + v->size(), n).ptr != v->data() + v->size() ||
                n < 1)
                return usage_error("--count needs a whole number of lines, at least 1");
            o.count = n;
        } else if (!a.empty() && a[0] == '-') {
            return usage_error("watch: unknown option '" + std::string(a) + "'");
        } else if (!o.name) {
            o.name = std::string(a);
        } else {
            return usage_error("watch: one credential name only");
        }
    }
    if (!o.name) return usage_error("watch: which credential? (tokenshm watch NAME)");
    return std::nullopt;
}

// "<time> NAME version=V state=S expires_in=D failures=N last_error=\"...\"\n"
std::string watch_line(const std::string& name, const tokenshm::Token& rec) {
    const std::int64_t now = now_ms();
    std::string line = utc_now() + " " + name + " version=" + std::to_string(rec.version()) +
                       " state=" + shown_state(rec, now);
    if (rec.state() != tokenshm::State::empty)
        line += " expires_in=" + human_duration(ms_diff(rec.expires_at_ms(), now));
    line += " failures=" + std::to_string(rec.failures());
    if (!rec.last_error().empty()) line += " last_error=\"" + json_escape(rec.last_error()) + "\"";
    line += '\n';
    return line;
}

// One line per change of the credential's record; never the token.
int cmd_watch(const std::vector<std::string_view>& args) {
    WatchOptions o;
    if (auto rc = parse_watch_args(args, o)) return *rc;
    auto reader = tokenshm::Reader::open(o.segment);
    if (!reader) return fail(tokenshm::exit_code(reader.error().code), reader.error().message);
    auto handle = reader->lookup(*o.name);
    if (!handle) return fail(tokenshm::exit_code(handle.error().code), handle.error().message);

    std::uint64_t seen = 0;
    bool first = true;
    for (long long printed = 0; o.count < 0 || printed < o.count;) {
        if (!first) {
            auto r = handle->wait(seen, std::chrono::milliseconds(-1));
            if (!r && r.error() == Error::no_such_credential)
                return fail(4, "'" + *o.name + "' was removed from the refresher's configuration");
            if (!r && !no_valid_token(r.error()))
                return fail(tokenshm::exit_code(r.error()), tokenshm::to_string(r.error()));
        }
        first = false;
        auto rec = handle->inspect();
        if (!rec) return fail(tokenshm::exit_code(rec.error()), tokenshm::to_string(rec.error()));
        if (rec->version() <= seen && printed > 0) continue;
        seen = rec->version();
        const std::string line = watch_line(*o.name, *rec);
        if (std::fputs(line.c_str(), stdout) < 0 || std::fflush(stdout) != 0)
            return fail(kExitSystem, std::string("writing to stdout: ") + std::strerror(errno));
        ++printed;
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    std::vector<std::string_view> args(argv + 1, argv + argc);
    if (args.empty()) return usage_error("which command?");
    const std::string_view cmd = args.front();
    args.erase(args.begin());
    if (cmd == "--help" || cmd == "-h" || (cmd == "help" && args.empty()))
        return print_help({kUsage});
    if (cmd == "help") return command_help(args.front());
    if (cmd == "--version") {
        std::puts("tokenshm " TOKENSHM_VERSION);
        return 0;
    }
    if (asks_for_help(args)) return command_help(cmd);
    if (cmd == "get") return cmd_get(args);
    if (cmd == "status") return cmd_status(args);
    if (cmd == "watch") return cmd_watch(args);
    if (cmd == "refresh") return cmd_refresh(args);
    if (cmd == "login") return tokenshm_cli::cmd_login(args);
    return usage_error("unknown command '" + std::string(cmd) + "'");
}
