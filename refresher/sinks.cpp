#include "sinks.hpp"

#include "log.hpp"
#include "replace_file.hpp"

#include <algorithm>
#include <cstdio>

namespace tokenshm::refresher {

namespace {

// Tokens are VSCHARs (RFC 6749 A.12) and token types printable, but a JSON
// string needs " and \ escaped, and anything else below 0x20 spelled \u00XX.
void append_json_string(WipedString& out, std::string_view s) {
    out.append("\"", 1);
    for (char c : s) {
        if (c == '"' || c == '\\') {
            const char esc[2] = {'\\', c};
            out.append(esc, 2);
        } else if (static_cast<unsigned char>(c) < 0x20) {
            char esc[8];
            const int n = std::snprintf(esc, sizeof esc, "\\u%04x", static_cast<unsigned>(c));
            out.append(esc, static_cast<std::size_t>(n));
        } else {
            out.append(&c, 1);
        }
    }
    out.append("\"", 1);
}

void append(WipedString& out, std::string_view s) {
    out.append(s.data(), s.size());
}

bool configured(const std::vector<SinkConfig>& sinks, const std::string& path) {
    return std::any_of(sinks.begin(), sinks.end(),
                       [&](const SinkConfig& s) { return s.path == path; });
}

}  // namespace

WipedString sink_content(SinkFormat format, const Secret& token, std::string_view token_type,
                         std::int64_t expires_at_ms, std::uint64_t version) {
    WipedString out;
    out.reserve(token.reveal().size() + 128);
    const std::string_view type = token_type.empty() ? std::string_view("Bearer") : token_type;
    switch (format) {
        case SinkFormat::token:
            append(out, token.reveal());
            break;
        case SinkFormat::header:
            append(out, "Authorization: ");
            append(out, type);
            append(out, " ");
            append(out, token.reveal());
            break;
        case SinkFormat::json:
            append(out, "{\"access_token\":");
            append_json_string(out, token.reveal());
            append(out, ",\"token_type\":");
            append_json_string(out, type);
            append(out, ",\"expires_at\":" + std::to_string(expires_at_ms / 1000) +
                            ",\"version\":" + std::to_string(version) + "}");
            break;
    }
    append(out, "\n");
    return out;
}

void SinkWriter::published(const std::string& cred, const std::vector<SinkConfig>& sinks,
                           const Published& p, std::uint64_t version) {
    State& st = creds_[cred];
    for (const SinkConfig& old : st.sinks)
        if (!configured(sinks, old.path)) remove(cred, old);
    const bool token_changed = !p.access_token.empty() && !(p.access_token == st.token);
    const std::vector<SinkConfig> before = std::exchange(st.sinks, sinks);
    if (token_changed) {
        st.token = p.access_token;
        st.token_type = p.token_type;
        st.expires_at_ms = p.expires_at_ms;
        st.version = version;
    }
    if (st.token.empty()) return;
    for (const SinkConfig& s : st.sinks)
        // A new or changed sink (path, mode, group, format) is written with the token it missed.
        if (token_changed || st.failed.count(s.path) ||
            std::find(before.begin(), before.end(), s) == before.end())
            write(cred, st, s);
}

void SinkWriter::write(const std::string& cred, State& st, const SinkConfig& sink) {
    ReplaceOptions opt;
    opt.mode = sink.mode;
    opt.group = sink.group_id;
    const WipedString content =
        sink_content(sink.format, st.token, st.token_type, st.expires_at_ms, st.version);
    auto r = replace_file(fs_, sink.path, content.view(), opt);
    if (!r) {
        if (st.failed.insert(sink.path).second)
            log_event(Level::error, cred, "sink_write_failed",
                      describe(r.error()) + "; retried every " +
                          std::to_string(kRetryEveryMs / 1000) + "s");
        return;
    }
    if (st.failed.erase(sink.path) > 0)
        log_event(Level::info, cred, "sink_written", sink.path + " is written again");
}

void SinkWriter::remove(const std::string& cred, const SinkConfig& sink) {
    creds_[cred].failed.erase(sink.path);
    auto r = fs_.unlink(sink.path);
    if (!r && !r.error().is_not_found()) {
        log_event(Level::error, cred, "sink_remove_failed", describe(r.error()));
        return;
    }
    log_event(Level::info, cred, "sink_removed", sink.path);
}

void SinkWriter::removed(const std::string& cred) {
    auto it = creds_.find(cred);
    if (it == creds_.end()) return;
    for (const SinkConfig& s : it->second.sinks)
        remove(cred, s);
    creds_.erase(it);
}

void SinkWriter::retry_if_due(std::int64_t mono_ms) {
    if (mono_ms - last_retry_ms_ < kRetryEveryMs) return;
    last_retry_ms_ = mono_ms;
    for (auto& [cred, st] : creds_) {
        if (st.failed.empty() || st.token.empty()) continue;
        for (const SinkConfig& s : st.sinks)
            if (st.failed.count(s.path)) write(cred, st, s);
    }
}

}  // namespace tokenshm::refresher
