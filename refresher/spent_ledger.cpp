#include "spent_ledger.hpp"

#include "log.hpp"

#include <tokenshm/shm/names.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <map>
#include <set>
#include <tuple>
#include <utility>

namespace tokenshm::refresher {

namespace {

constexpr std::size_t check_hex = 8;
constexpr std::size_t fingerprint_hex = 64;

Unexpected<RefresherError> ledger_error(std::string message) {
    return Unexpected{RefresherError::runtime_error(std::move(message))};
}

std::string_view kind_name(SpentLedger::Kind k) {
    return k == SpentLedger::Kind::configured ? "configured" : "rotated";
}

std::string line_body(const SpentLedger::Record& r) {
    return r.credential + " " + std::string(kind_name(r.kind)) + " " + r.fingerprint;
}

std::string line_check(std::string_view body) {
    return refresh_token_fingerprint(body).substr(0, check_hex);
}

bool lower_hex(std::string_view s) {
    return std::all_of(s.begin(), s.end(),
                       [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

// Splits `s` at single spaces.
std::vector<std::string_view> fields_of(std::string_view s) {
    std::vector<std::string_view> out;
    for (std::size_t at = 0;;) {
        const auto sp = s.find(' ', at);
        out.push_back(s.substr(at, sp == std::string_view::npos ? sp : sp - at));
        if (sp == std::string_view::npos) return out;
        at = sp + 1;
    }
}

bool same_key(const SpentLedger::Record& a, const SpentLedger::Record& b) {
    return a.credential == b.credential && a.kind == b.kind;
}

// Whether adding `records` makes a credential reach twice its bound.
bool needs_compaction(const std::vector<SpentLedger::Record>& all,
                      const std::vector<SpentLedger::Record>& records) {
    for (const auto& r : records) {
        const auto n = static_cast<std::size_t>(std::count_if(
            all.begin(), all.end(), [&](const SpentLedger::Record& x) { return same_key(x, r); }));
        const std::size_t bound = r.kind == SpentLedger::Kind::configured
                                      ? SpentLedger::keep_configured
                                      : SpentLedger::keep_rotated;
        if (n >= 2 * bound) return true;
    }
    return false;
}

}  // namespace

std::string encode_ledger_line(const SpentLedger::Record& r) {
    const std::string body = line_body(r);
    return body + " " + line_check(body) + "\n";
}

std::optional<SpentLedger::Record> decode_ledger_line(std::string_view line) {
    const auto f = fields_of(line);
    if (f.size() != 4) return std::nullopt;
    if (!shm::valid_credential_name(f[0])) return std::nullopt;
    SpentLedger::Record r;
    if (f[1] == "configured") {
        r.kind = SpentLedger::Kind::configured;
    } else if (f[1] != "rotated") {
        return std::nullopt;
    }
    if (f[2].size() != fingerprint_hex || !lower_hex(f[2])) return std::nullopt;
    if (f[3].size() != check_hex || !lower_hex(f[3])) return std::nullopt;
    r.credential = std::string(f[0]);
    r.fingerprint = std::string(f[2]);
    if (line_check(line_body(r)) != f[3]) return std::nullopt;
    return r;
}

std::vector<SpentLedger::Record> compact_ledger(const std::vector<SpentLedger::Record>& records) {
    // From the newest back: count per (credential, kind), skip what is over
    // the bound or seen already, then restore the file order.
    std::map<std::pair<std::string, SpentLedger::Kind>, std::size_t> kept;
    std::set<std::tuple<std::string, SpentLedger::Kind, std::string>> seen;
    std::vector<SpentLedger::Record> out;
    for (auto it = records.rbegin(); it != records.rend(); ++it) {
        if (!seen.emplace(it->credential, it->kind, it->fingerprint).second) continue;
        std::size_t& n = kept[{it->credential, it->kind}];
        const std::size_t bound = it->kind == SpentLedger::Kind::configured
                                      ? SpentLedger::keep_configured
                                      : SpentLedger::keep_rotated;
        if (n == bound) continue;
        ++n;
        out.push_back(*it);
    }
    std::reverse(out.begin(), out.end());
    return out;
}

SpentLedger::SpentLedger(FileSystem& fs, std::string dir, StateWarningSink warn)
    : fs_(fs), dir_(std::move(dir)), warn_(std::move(warn)) {}

std::string SpentLedger::path() const {
    return (dir_ == "/" ? dir_ : dir_ + "/") + std::string(file_name);
}

Expected<SpentLedger::Contents, RefresherError> SpentLedger::read() {
    const std::string p = path();
    auto read = detail::read_checked_file(fs_, p, O_NOFOLLOW, max_file_bytes, warn_, {});
    if (!read) return Unexpected{std::move(read).error()};
    Contents c;
    if (!*read) return c;
    c.exists = true;
    std::string_view bytes = (*read)->bytes.reveal();
    while (!bytes.empty()) {
        const auto nl = bytes.find('\n');
        // A last line without its "\n" was cut short by a crash: damaged.
        auto r =
            nl == std::string_view::npos ? std::nullopt : decode_ledger_line(bytes.substr(0, nl));
        if (r) {
            c.records.push_back(std::move(*r));
        } else {
            ++c.damaged;
        }
        bytes.remove_prefix(nl == std::string_view::npos ? bytes.size() : nl + 1);
    }
    return c;
}

Expected<std::optional<std::string>, RefresherError> SpentLedger::spent_by(
    std::string_view fingerprint) {
    auto c = read();
    if (!c) return Unexpected{std::move(c).error()};
    for (const auto* list : {&c->records, &unwritten_})
        for (const Record& r : *list)
            if (r.fingerprint == fingerprint) return std::optional<std::string>{r.credential};
    return std::optional<std::string>{};
}

Expected<Done, RefresherError> SpentLedger::append(const std::vector<Record>& records) {
    std::vector<Record> adding = unwritten_;
    adding.insert(adding.end(), records.begin(), records.end());
    auto written = [&]() -> Expected<Done, RefresherError> {
        auto now = read();
        if (!now) return Unexpected{std::move(now).error()};
        std::vector<Record> all = now->records;
        if (now->damaged == 0 && !needs_compaction(all, adding)) return append_lines(*now, adding);
        if (now->damaged > 0) warn_ledger(now->damaged);
        all.insert(all.end(), adding.begin(), adding.end());
        return rewrite(compact_ledger(all));
    }();
    if (!written) {
        unwritten_ = std::move(adding);
        return written;
    }
    unwritten_.clear();
    return Done{};
}

void SpentLedger::warn_ledger(std::size_t damaged) const {
    const std::string msg = path() + ": " + std::to_string(damaged) +
                            " damaged line(s) skipped (a write cut short by a crash?); "
                            "rewriting it without them";
    if (warn_) {
        warn_({}, msg);
    } else {
        log_event(Level::warn, "", "spent_ledger", msg);
    }
}

Expected<Done, RefresherError> SpentLedger::append_lines(const Contents& now,
                                                         const std::vector<Record>& records) {
    const std::string p = path();
    // A line a crash cut short is damage, and damage means rewrite(): here
    // the file ends with a complete line.
    std::string lines;
    for (const Record& r : records)
        lines += encode_ledger_line(r);
    auto opened =
        fs_.open(p, O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0600);
    if (!opened) return ledger_error("spent ledger: " + opened.error().message());
    const int fd = *opened;
    auto fail = [&](const FsError& e) {
        (void)fs_.close(fd, p);
        return ledger_error("spent ledger: " + e.message());
    };
    auto st = fs_.fstat(fd, p);
    if (!st) return fail(st.error());
    if (!S_ISREG(st->st_mode)) return fail(FsError{"open", EINVAL, p + " (not a regular file)"});
    if (auto r = fs_.write_all(fd, lines, p); !r) return fail(r.error());
    if (auto r = fs_.fsync(fd, p); !r) return fail(r.error());
    if (auto r = fs_.close(fd, p); !r) return ledger_error("spent ledger: " + r.error().message());
    if (!now.exists)
        if (auto r = detail::sync_directory(fs_, dir_, warn_, {}); !r)
            return ledger_error("spent ledger: " + r.error().message());
    return Done{};
}

Expected<Done, RefresherError> SpentLedger::rewrite(std::vector<Record> records) {
    const std::string p = path();
    const std::string temp = p + ".tmp";
    std::string lines;
    for (const Record& r : records)
        lines += encode_ledger_line(r);
    auto opened = detail::create_exclusive(fs_, temp);
    if (!opened) return ledger_error("spent ledger: " + opened.error().message());
    const int fd = *opened;
    auto fail = [&](const FsError& e, bool close) {
        if (close) (void)fs_.close(fd, temp);
        (void)fs_.unlink(temp);
        return ledger_error("spent ledger: " + e.message() + "; " + p + " is unchanged");
    };
    if (auto r = fs_.fchmod(fd, 0600, temp); !r) return fail(r.error(), true);
    if (auto r = fs_.write_all(fd, lines, temp); !r) return fail(r.error(), true);
    // Here the fsync comes before the rename: nothing waits on a compaction,
    // and a power loss must not leave a torn ledger in place of a good one.
    if (auto r = fs_.fsync(fd, temp); !r) return fail(r.error(), true);
    if (auto r = fs_.close(fd, temp); !r) return fail(r.error(), false);
    if (auto r = fs_.rename(temp, p); !r) return fail(r.error(), false);
    if (auto r = detail::sync_directory(fs_, dir_, warn_, {}); !r)
        return ledger_error("spent ledger: " + r.error().message());
    return Done{};
}

}  // namespace tokenshm::refresher
