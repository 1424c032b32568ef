// `tokenshm`: the command-line reader. Only `get` prints a token, to stdout.
// Every failure prints one line on stderr and exits with SPEC's code:
// 0 ok, 2 usage, 3 no segment, 4 no such credential, 5 no valid token,
// 6 incompatible or untrusted, 7 refresher unreachable.
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

constexpr int kExitUsage = 2;

const char* const kUsage =
    "usage: tokenshm get NAME [--min-valid S] [--wait S] [--header] [--segment SEG]\n"
    "       tokenshm status [--json] [--segment SEG]\n"
    "       tokenshm watch NAME [--count N] [--segment SEG]\n"
    "       tokenshm --help | --version\n";

int usage_error(const std::string& msg) {
    std::fprintf(stderr, "tokenshm: %s\n%s", msg.c_str(), kUsage);
    return kExitUsage;
}

int fail(int code, const std::string& msg) {
    std::fprintf(stderr, "tokenshm: %s\n", msg.c_str());
    return code;
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

// "3m12s", "1h02m", "45s", "-" for none.
// a - b for times read from the segment, which may hold anything: clamped to
// the int64 range instead of overflowing.
std::int64_t ms_diff(std::int64_t a, std::int64_t b) {
    std::int64_t d;
    if (!__builtin_sub_overflow(a, b, &d)) return d;
    return b < 0 ? std::numeric_limits<std::int64_t>::max()
                 : std::numeric_limits<std::int64_t>::min();
}

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
                if (static_cast<unsigned char>(c) < 0x20) {
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

int cmd_get(const std::vector<std::string_view>& args) {
    std::optional<std::string> name;
    std::chrono::milliseconds min_valid{0};
    std::chrono::milliseconds wait{-1};
    bool header = false;
    std::string segment;
    for (std::size_t i = 0; i < args.size(); ++i) {
        const std::string_view a = args[i];
        if (a == "--min-valid") {
            if (auto rc = parse_duration_option(args, i, min_valid)) return *rc;
        } else if (a == "--wait") {
            if (auto rc = parse_duration_option(args, i, wait)) return *rc;
        } else if (a == "--header") {
            header = true;
        } else if (a == "--segment") {
            auto v = option_value(args, i);
            if (!v) return usage_error("--segment needs a name");
            segment = std::string(*v);
        } else if (!a.empty() && a[0] == '-') {
            return usage_error("get: unknown option '" + std::string(a) + "'");
        } else if (!name) {
            name = std::string(a);
        } else {
            return usage_error("get: one credential name only ('" + std::string(a) + "' is extra)");
        }
    }
    if (!name) return usage_error("get: which credential? (tokenshm get NAME)");

    std::optional<std::int64_t> deadline;
    if (wait.count() >= 0) deadline = now_ms() + wait.count();
    auto reader = open_reader(segment, deadline);
    if (!reader) return fail(tokenshm::exit_code(reader.error().code), reader.error().message);

    auto handle = reader->lookup(*name);
    while (!handle && deadline && handle.error().code == Error::no_such_credential &&
           now_ms() < *deadline) {
        std::this_thread::sleep_for(50ms);
        handle = reader->lookup(*name);
    }
    if (!handle) return fail(tokenshm::exit_code(handle.error().code), handle.error().message);

    auto tok = handle->get(min_valid);
    std::uint64_t seen = 0;
    while (!tok && deadline) {
        if (tok.error() != Error::empty && tok.error() != Error::expired &&
            tok.error() != Error::expiring && tok.error() != Error::reauth)
            break;
        const std::int64_t left = *deadline - now_ms();
        if (left <= 0) break;
        if (auto rec = handle->inspect()) seen = rec->version();
        tok = handle->wait(seen, std::chrono::milliseconds(left), min_valid);
        if (!tok && tok.error() == Error::timeout) {
            tok = handle->get(min_valid);
            break;
        }
    }
    if (!tok) {
        std::string msg = "'" + *name + "': " + tokenshm::to_string(tok.error());
        if (auto rec = handle->inspect(); rec) {
            if (tok.error() == Error::expiring)
                msg += " (expires in " + human_duration(ms_diff(rec->expires_at_ms(), now_ms())) +
                       ", wanted " + human_duration(min_valid.count()) + ")";
            if (!rec->last_error().empty())
                msg += "; last error: " + std::string(rec->last_error());
        }
        return fail(tokenshm::exit_code(tok.error()), msg);
    }
    std::string out;
    if (header) {
        out = "Authorization: ";
        out += tok->token_type().empty() ? std::string_view("Bearer") : tok->token_type();
        out += ' ';
    }
    out += tok->token();
    out += '\n';
    if (std::fwrite(out.data(), 1, out.size(), stdout) != out.size() || std::fflush(stdout) != 0)
        return fail(1, std::string("writing to stdout: ") + std::strerror(errno));
    ::explicit_bzero(out.data(), out.size());
    return 0;
}

struct Row {
    std::string name;
    tokenshm::Handle handle;  // owns the copy `rec` points into
    tokenshm::Expected<tokenshm::Token, Error> rec;
};

int cmd_status(const std::vector<std::string_view>& args) {
    bool json = false;
    std::string segment;
    for (std::size_t i = 0; i < args.size(); ++i) {
        const std::string_view a = args[i];
        if (a == "--json") {
            json = true;
        } else if (a == "--segment") {
            auto v = option_value(args, i);
            if (!v) return usage_error("--segment needs a name");
            segment = std::string(*v);
        } else {
            return usage_error("status: unexpected argument '" + std::string(a) + "'");
        }
    }
    auto reader = tokenshm::Reader::open(segment);
    if (!reader) return fail(tokenshm::exit_code(reader.error().code), reader.error().message);
    const tokenshm::WriterStatus w = reader->writer();
    const std::int64_t now = now_ms();
    const std::int64_t hb_age = ms_diff(now, w.heartbeat_ms);
    const bool alive = w.lock_held && hb_age < tokenshm::Token::kWriterAliveWithinMs &&
                       hb_age > -tokenshm::Token::kWriterAliveWithinMs;
    const char* liveness = alive ? "alive" : (w.lock_held ? "hung (no heartbeat)" : "not running");

    std::vector<Row> rows;
    for (const std::string& n : reader->credentials()) {
        auto h = reader->lookup(n);
        if (!h) continue;  // removed between the listing and the lookup
        rows.push_back(Row{n, std::move(*h), tokenshm::Unexpected{Error::empty}});
        rows.back().rec = rows.back().handle.inspect();
    }

    if (json) {
        std::string o = "{\"segment\":\"" + json_escape(reader->segment_name()) + "\"";
        o += ",\"refresher\":{\"pid\":" + std::to_string(w.pid) +
             ",\"alive\":" + (alive ? "true" : "false") +
             ",\"lock_held\":" + (w.lock_held ? "true" : "false") +
             ",\"heartbeat_age_ms\":" + std::to_string(hb_age) +
             ",\"started_at_ms\":" + std::to_string(w.start_ms) +
             ",\"generation\":" + std::to_string(w.generation) + "}";
        o += ",\"credentials\":[";
        bool first = true;
        for (const Row& r : rows) {
            if (!first) o += ',';
            first = false;
            o += "{\"name\":\"" + json_escape(r.name) + "\"";
            if (!r.rec) {
                o += ",\"error\":\"" + json_escape(tokenshm::to_string(r.rec.error())) + "\"}";
                continue;
            }
            const tokenshm::Token& t = *r.rec;
            const char* state = tokenshm::to_string(t.state());
            if (t.state() != tokenshm::State::empty && t.expires_at_ms() <= now &&
                t.state() != tokenshm::State::reauth)
                state = "expired";
            o += ",\"state\":\"" + std::string(state) + "\"";
            o += ",\"version\":" + std::to_string(t.version());
            o += ",\"expires_at_ms\":" + std::to_string(t.expires_at_ms());
            o += ",\"expires_in_ms\":" + std::to_string(t.state() == tokenshm::State::empty
                                                            ? 0
                                                            : ms_diff(t.expires_at_ms(), now));
            o += ",\"issued_at_ms\":" + std::to_string(t.issued_at_ms());
            o += ",\"next_refresh_ms\":" + std::to_string(t.next_refresh_ms());
            o += ",\"last_attempt_ms\":" + std::to_string(t.last_attempt_ms());
            o += ",\"failures\":" + std::to_string(t.failures());
            o += ",\"token_type\":\"" + json_escape(t.token_type()) + "\"";
            o += ",\"scope\":\"" + json_escape(t.scope()) + "\"";
            o += ",\"last_error\":\"" + json_escape(t.last_error()) + "\"}";
        }
        o += "]}\n";
        std::fputs(o.c_str(), stdout);
        return 0;
    }

    std::printf("segment %s: refresher pid %lld %s (heartbeat %s ago, generation %llu)\n",
                reader->segment_name().c_str(), static_cast<long long>(w.pid), liveness,
                w.heartbeat_ms > 0 ? human_duration(hb_age).c_str() : "never",
                static_cast<unsigned long long>(w.generation));
    std::printf("%-20s %-8s %-10s %-8s %-13s %-8s %-12s %s\n", "CREDENTIAL", "STATE", "EXPIRES IN",
                "VERSION", "LAST REFRESH", "FAILURES", "NEXT REFRESH", "LAST ERROR");
    for (const Row& r : rows) {
        if (!r.rec) {
            std::printf("%-20s %s\n", r.name.c_str(), tokenshm::to_string(r.rec.error()));
            continue;
        }
        const tokenshm::Token& t = *r.rec;
        const bool has_token = t.state() != tokenshm::State::empty;
        const char* state = tokenshm::to_string(t.state());
        if (has_token && t.expires_at_ms() <= now && t.state() != tokenshm::State::reauth)
            state = "expired";
        const std::string expires =
            has_token ? human_duration(ms_diff(t.expires_at_ms(), now)) : "-";
        const std::string last =
            t.issued_at_ms() > 0 ? human_duration(ms_diff(now, t.issued_at_ms())) + " ago" : "-";
        const std::string next = t.next_refresh_ms() > 0
                                     ? "in " + human_duration(ms_diff(t.next_refresh_ms(), now))
                                     : "-";
        std::printf("%-20s %-8s %-10s %-8llu %-13s %-8u %-12s %s\n", r.name.c_str(), state,
                    expires.c_str(), static_cast<unsigned long long>(t.version()), last.c_str(),
                    t.failures(), next.c_str(),
                    t.last_error().empty() ? "-" : std::string(t.last_error()).c_str());
    }
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

// One line per change of the credential's record; never the token.
int cmd_watch(const std::vector<std::string_view>& args) {
    std::optional<std::string> name;
    std::string segment;
    long long count = -1;
    for (std::size_t i = 0; i < args.size(); ++i) {
        const std::string_view a = args[i];
        if (a == "--segment") {
            auto v = option_value(args, i);
            if (!v) return usage_error("--segment needs a name");
            segment = std::string(*v);
        } else if (a == "--count") {
            auto v = option_value(args, i);
            long long n = 0;
            if (!v ||
                std::from_chars(v->data(), v->data() + v->size(), n).ptr != v->data() + v->size() ||
                n < 1)
                return usage_error("--count needs a whole number of lines, at least 1");
            count = n;
        } else if (!a.empty() && a[0] == '-') {
            return usage_error("watch: unknown option '" + std::string(a) + "'");
        } else if (!name) {
            name = std::string(a);
        } else {
            return usage_error("watch: one credential name only");
        }
    }
    if (!name) return usage_error("watch: which credential? (tokenshm watch NAME)");
    auto reader = tokenshm::Reader::open(segment);
    if (!reader) return fail(tokenshm::exit_code(reader.error().code), reader.error().message);
    auto handle = reader->lookup(*name);
    if (!handle) return fail(tokenshm::exit_code(handle.error().code), handle.error().message);

    std::uint64_t seen = 0;
    bool first = true;
    for (long long printed = 0; count < 0 || printed < count;) {
        if (!first) {
            auto r = handle->wait(seen, std::chrono::milliseconds(-1));
            if (!r && r.error() == Error::no_such_credential)
                return fail(4, "'" + *name + "' was removed from the refresher's configuration");
            if (!r && r.error() != Error::empty && r.error() != Error::expired &&
                r.error() != Error::expiring && r.error() != Error::reauth)
                return fail(tokenshm::exit_code(r.error()), tokenshm::to_string(r.error()));
        }
        first = false;
        auto rec = handle->inspect();
        if (!rec) return fail(tokenshm::exit_code(rec.error()), tokenshm::to_string(rec.error()));
        if (rec->version() <= seen && printed > 0) continue;
        seen = rec->version();
        const std::int64_t now = now_ms();
        const char* state = tokenshm::to_string(rec->state());
        if (rec->state() != tokenshm::State::empty && rec->expires_at_ms() <= now &&
            rec->state() != tokenshm::State::reauth)
            state = "expired";
        std::string line = utc_now() + " " + *name + " version=" + std::to_string(rec->version()) +
                           " state=" + state;
        if (rec->state() != tokenshm::State::empty)
            line += " expires_in=" + human_duration(ms_diff(rec->expires_at_ms(), now));
        line += " failures=" + std::to_string(rec->failures());
        if (!rec->last_error().empty())
            line += " last_error=\"" + json_escape(rec->last_error()) + "\"";
        line += '\n';
        if (std::fputs(line.c_str(), stdout) < 0 || std::fflush(stdout) != 0)
            return fail(1, std::string("writing to stdout: ") + std::strerror(errno));
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
    if (cmd == "--help" || cmd == "-h" || cmd == "help") {
        std::fputs(kUsage, stdout);
        return 0;
    }
    if (cmd == "--version") {
        std::puts("tokenshm " TOKENSHM_VERSION);
        return 0;
    }
    if (cmd == "get") return cmd_get(args);
    if (cmd == "status") return cmd_status(args);
    if (cmd == "watch") return cmd_watch(args);
    return usage_error("unknown command '" + std::string(cmd) + "'");
}
