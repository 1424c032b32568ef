// File sinks (SPEC.md, "Configuration": a credential's `sinks`): copies of
// the token for tools that can only read a file (`curl -H @file`), what Vault
// Agent and kubelet offer. The segment stays the fast path.
//
// Each sink is rewritten (replace_file: temp in the same directory created
// O_EXCL | O_NOFOLLOW at the sink's mode, its group, write, fsync, rename)
// after every publish that carries a different token, so a reader sees the
// old token or the new one, whole. Formats, each one line ending in "\n"
// (curl's -H @file reads header lines, and a shell's $(cat f) drops it):
//   token   <token>
//   header  Authorization: <Type> <token>        (Type "Bearer" when unknown)
//   json    {"access_token":"...","token_type":"...","expires_at":<Unix s>,"version":<V>}
// `version` is the slot version of the publish that brought the token.
//
// A failed write is logged (path and errno's name, never content) and
// retried at the next publish and every kRetryEveryMs; it is never fatal.
// Sink files are removed when their credential leaves the configuration
// (or a reload drops the sink), not when the refresher stops: the token in
// them stays valid for the tools that read them.
#pragma once

#include "config.hpp"
#include "credential.hpp"
#include "state_store.hpp"

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace tokenshm::refresher {

class SinkWriter {
  public:
    static constexpr std::int64_t kRetryEveryMs = 5'000;

    explicit SinkWriter(FileSystem& fs) : fs_(fs) {}

    // After a publish of `cred` (configured with `sinks`, as it is now): sinks
    // no longer configured are removed, new ones and changed tokens written.
    void published(const std::string& cred, const std::vector<SinkConfig>& sinks,
                   const Published& p, std::uint64_t version);
    // The credential is gone: so are its sink files.
    void removed(const std::string& cred);
    // Writes again the sinks whose last write failed.
    void retry_if_due(std::int64_t mono_ms);

  private:
    struct State {
        std::vector<SinkConfig> sinks;
        Secret token;
        std::string token_type;
        std::int64_t expires_at_ms = 0;
        std::uint64_t version = 0;
        std::set<std::string> failed;  // paths whose last write failed
    };
    void write(const std::string& cred, State& st, const SinkConfig& sink);
    void remove(const std::string& cred, const SinkConfig& sink);

    FileSystem& fs_;
    std::map<std::string, State> creds_;
    std::int64_t last_retry_ms_ = 0;
};

// A sink's content for `format`; it holds the token, so it is wiped when dropped.
WipedString sink_content(SinkFormat format, const Secret& token, std::string_view token_type,
                         std::int64_t expires_at_ms, std::uint64_t version);

}  // namespace tokenshm::refresher
