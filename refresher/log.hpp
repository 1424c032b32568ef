// One line per event on stderr: time, level, credential, event, detail.
//   2026-11-28T03:32:49.123Z info cred=storage event=refreshed expires_in=3600s version=7
// Never pass a token or secret here: they are Secret-typed and do not convert.
#pragma once

#include <functional>
#include <string>
#include <string_view>

namespace tokenshm::refresher {

enum class Level { debug, info, warn, error };
const char* to_string(Level l) noexcept;

// Writes one line. `cred` may be empty (daemon-wide events). Newlines and
// control characters in `detail` are escaped so every event stays one line.
void log_event(Level level, std::string_view cred, std::string_view event,
               std::string_view detail = {});

// Tests capture lines here; the default writes to stderr. Not thread-safe to
// change while other threads log.
using LogSink = std::function<void(std::string_view line)>;
void set_log_sink(LogSink sink);
void set_log_level(Level min_level);

}  // namespace tokenshm::refresher
