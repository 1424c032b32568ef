#include "log.hpp"

#include <time.h>
#include <unistd.h>

#include <cstdio>
#include <mutex>

namespace tokenshm::refresher {

namespace {
std::mutex g_mu;
LogSink g_sink;
Level g_min = Level::info;

std::string timestamp() {
    struct timespec ts {};
    ::clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm {};
    ::gmtime_r(&ts.tv_sec, &tm);
    char buf[96];
    std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
                  tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                  ts.tv_nsec / 1'000'000);
    return buf;
}

void append_escaped(std::string& out, std::string_view s) {
    for (char c : s) {
        const auto u = static_cast<unsigned char>(c);
        if (c == '\n') {
            out += "\\n";
        } else if (c == '\r') {
            out += "\\r";
        } else if (u < 0x20 || u >= 0x7f) {  // above 0x7f: C1 controls (U+009B is CSI)
            char b[8];
            std::snprintf(b, sizeof b, "\\x%02x", u);
            out += b;
        } else {
            out += c;
        }
    }
}
}  // namespace

const char* to_string(Level l) noexcept {
    switch (l) {
        case Level::debug:
            return "debug";
        case Level::info:
            return "info";
        case Level::warn:
            return "warn";
        case Level::error:
            return "error";
    }
    return "?";
}

void log_event(Level level, std::string_view cred, std::string_view event,
               std::string_view detail) {
    if (level < g_min) return;
    std::string line = timestamp();
    line += ' ';
    line += to_string(level);
    if (!cred.empty()) {
        line += " cred=";
        append_escaped(line, cred);
    }
    line += " event=";
    append_escaped(line, event);
    if (!detail.empty()) {
        line += ' ';
        append_escaped(line, detail);
    }
    std::lock_guard lk(g_mu);
    if (g_sink) {
        g_sink(line);
        return;
    }
    line += '\n';
    // One write per line so lines from several threads never interleave.
    (void)!::write(STDERR_FILENO, line.data(), line.size());
}

void set_log_sink(LogSink sink) {
    std::lock_guard lk(g_mu);
    g_sink = std::move(sink);
}

void set_log_level(Level min_level) {
    g_min = min_level;
}

}  // namespace tokenshm::refresher
