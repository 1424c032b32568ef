// The systemd notify protocol (sd_notify(3)), spoken directly so the
// refresher needs no libsystemd: each message is one datagram of
// newline-separated VAR=value lines sent to the AF_UNIX socket named by
// $NOTIFY_SOCKET (a path, or an abstract name written with a leading '@').
//
// Under a unit with Type=notify the service manager waits for READY=1 (the
// segment is attached and every credential's first record published), kills
// the service when WATCHDOG=1 stops arriving for WatchdogSec, and shows the
// last STATUS= line in `systemctl status`. Without NOTIFY_SOCKET every call
// is a no-op. A message that cannot be sent is logged once and never ends
// the refresher: tokens matter more than the manager's view of them.
#pragma once

#include <tokenshm/shm/record.hpp>

#include <sys/socket.h>
#include <sys/un.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace tokenshm::refresher {

class ServiceNotifier {
  public:
    // From NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID. The watchdog is on
    // when WATCHDOG_USEC is a positive number and WATCHDOG_PID is unset or
    // this process. A value it cannot use is logged and that part stays off.
    static ServiceNotifier from_environment();
    ServiceNotifier() = default;
    ServiceNotifier(const ServiceNotifier&) = delete;
    ServiceNotifier& operator=(const ServiceNotifier&) = delete;
    ServiceNotifier(ServiceNotifier&& o) noexcept;
    ServiceNotifier& operator=(ServiceNotifier&&) = delete;
    ~ServiceNotifier();

    bool enabled() const noexcept { return fd_ >= 0; }
    // How often WATCHDOG=1 goes out, in ms (0: no watchdog): a quarter of
    // WATCHDOG_USEC, so a loop pass that waits its longest still beats twice
    // within each half period.
    std::int64_t watchdog_every_ms() const noexcept { return watchdog_every_ms_; }

    // READY=1 with the summary (also after a reload).
    void ready(const std::string& status);
    // RELOADING=1 with MONOTONIC_USEC, which Type=notify-reload (systemd 253+)
    // requires and older managers ignore. READY=1 must follow.
    void reloading();
    void stopping();
    // Called per loop pass (the heartbeat): WATCHDOG=1 when due, STATUS= when
    // the summary changed. `mono_ms` is CLOCK_MONOTONIC.
    void heartbeat(std::int64_t mono_ms, const std::string& status);

  private:
    void send(const std::string& message);

    int fd_ = -1;
    sockaddr_un addr_{};
    socklen_t addr_len_ = 0;
    std::int64_t watchdog_every_ms_ = 0;
    std::int64_t last_watchdog_ms_ = 0;
    bool watchdog_sent_ = false;
    std::string last_status_;
    bool failure_logged_ = false;
};

// One credential as the summary counts it: its published state and when its
// next refresh is planned (Unix ms, 0 for none).
struct CredentialBrief {
    shm::RecordState state = shm::RecordState::empty;
    std::int64_t next_refresh_ms = 0;
};

// The one-line STATUS=, e.g. "3 credentials: 2 valid, 1 stale; next refresh
// in 4m". Counts and times only: nothing secret can reach it. Coarse (whole
// minutes, "under 1m") so it changes at most about once a minute.
std::string status_summary(const std::vector<CredentialBrief>& creds, std::int64_t now_unix_ms);

}  // namespace tokenshm::refresher
