#include "daemon.hpp"

#include "fault_point.hpp"
#include "log.hpp"
#include "regular_file.hpp"

#include <malloc.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <set>

namespace tokenshm::refresher {

namespace {
// Readers call a writer alive within TOKENSHM_WRITER_ALIVE_WITHIN_MS of its
// last beat; beating every TOKENSHM_HEARTBEAT_PERIOD_MS leaves them margin.
constexpr std::int64_t kHeartbeatEveryMs = TOKENSHM_HEARTBEAT_PERIOD_MS;
constexpr std::int64_t kMaxWaitMs = 250;
// A held credential (coordination) that is due is looked at again this
// often: sleeping until its due time, past already, would spin.
constexpr std::int64_t kHoldRecheckMs = 250;
// The wall-clock step a credential follows (credential.cpp's kWallStepMs).
constexpr std::int64_t kWallStepMs = 1000;
// Answers after which an idle moment returns the heap's free memory.
constexpr std::size_t kTrimAfterAnswers = 64;
// --once: how long a successor that cannot be saved (state_dir full, read-only)
// is retried before the process exits and loses it, and how often. Long
// enough to ride out a brief fault (a log rotation freeing space, a remount),
// short enough not to hold up the timer or script that runs --once; the
// access token is published already, so waiting costs readers nothing.
constexpr std::int64_t kOnceSaveRetryMs = 10'000;
constexpr std::int64_t kSaveRetryEveryMs = 1'000;

shm::SegmentSpec segment_spec(const Config& c, bool control_socket) {
    shm::SegmentSpec s;
    if (control_socket) s.control_socket = c.control_socket;
    s.name = c.segment;
    s.mode = c.mode;
    s.group = c.group_id;
    s.max_token_bytes = c.max_token_bytes;
    s.step_hook = fault_step_hook();
    // Room for credentials added by a reload without a restart.
    s.slot_count = static_cast<std::uint32_t>(
        std::clamp<std::size_t>(c.credentials.size() * 4, 64, TOKENSHM_MAX_SLOTS));
    return s;
}

// Whether the state directory or refresh_token_file holds a refresh token
// for `c` (or may: an unreadable one is left to obtain_refresh_token to name).
bool has_local_refresh_token(StateStore& store, const CredentialConfig& c) {
    auto stored = store.read_state(c.name);
    if (!stored || *stored) return true;
    if (!c.refresh_token_file) return false;
    auto ok = check_regular_file(*c.refresh_token_file);
    return ok || ok.error().err != ENOENT;
}

// The control socket's directory (/run/tokenshm by default), made when
// missing, one level and mode 0755, as systemd's RuntimeDirectory= would:
// without it a refresher started by hand (the quick start) could not listen.
Expected<Done, RefresherError> make_socket_dir(const std::string& socket_path) {
    const auto slash = socket_path.rfind('/');
    if (slash == std::string::npos || slash == 0) return Done{};
    const std::string dir = socket_path.substr(0, slash);
    if (::mkdir(dir.c_str(), 0755) == 0) {
        log_event(Level::info, "", "control_dir_created", dir);
        return Done{};
    }
    if (errno == EEXIST) return Done{};
    const int err = errno;
    return Unexpected{RefresherError::runtime_error(
        "control_socket " + socket_path + ": cannot create its directory " + dir + ": " +
        std::strerror(err) +
        (err == EACCES ? "; set control_socket to a directory this user may write" : ""))};
}
}  // namespace

Daemon::Daemon(Config cfg, DaemonDeps deps)
    : cfg_(std::move(cfg)),
      deps_(std::move(deps)),
      metrics_(*deps_.fs, cfg_.metrics_textfile),
      sinks_(*deps_.fs) {}

Expected<std::unique_ptr<Daemon>, RefresherError> Daemon::start(Config cfg, DaemonDeps deps) {
    const auto failed = [](std::string m) {
        return Unexpected{RefresherError::runtime_error(std::move(m))};
    };
    std::unique_ptr<Daemon> d(new Daemon(std::move(cfg), std::move(deps)));
    d->store_ = std::make_unique<StateStore>(*d->deps_.fs, d->cfg_.state_dir,
                                             [](std::string_view cred, std::string_view msg) {
                                                 log_event(Level::warn, cred, "state_dir", msg);
                                             });
    if (auto r = d->store_->prepare(); !r) return Unexpected{r.error()};
    if (auto r = d->start_fleet(); !r) return Unexpected{r.error()};

    std::vector<std::string> repaired;
    auto seg = shm::WriterSegment::create_or_attach(segment_spec(d->cfg_, d->deps_.control_socket),
                                                    &repaired);
    if (!seg) return failed(seg.error().message);
    d->seg_.emplace(std::move(*seg));
    log_event(Level::info, "", d->seg_->created() ? "segment_created" : "segment_attached",
              "segment=" + d->cfg_.segment + " pid=" + std::to_string(::getpid()));
    for (const std::string& line : repaired)
        log_event(Level::warn, "", "segment_repaired", line);
    // Under the segment's lock: a socket there is no other live refresher's.
    if (d->deps_.control_socket) {
        if (auto ok = make_socket_dir(d->cfg_.control_socket); !ok) return Unexpected{ok.error()};
        auto ctl = ControlServer::open(d->cfg_.control_socket, d->cfg_.mode, d->cfg_.group_id);
        if (!ctl) return Unexpected{ctl.error()};
        d->control_ = std::move(*ctl);
    }

    // Slots of credentials no longer configured: readers must not be served them.
    std::set<std::string> names;
    for (const auto& c : d->cfg_.credentials)
        names.insert(c.name);
    for (const auto& [name, slot] : d->seg_->active_slots()) {
        if (!names.count(name)) {
            d->seg_->retire(slot);
            log_event(Level::info, name, "removed", "not in the configuration any more");
        }
    }

    for (const auto& c : d->cfg_.credentials) {
        auto cred = d->make_credential(c, std::nullopt);
        if (!cred) return Unexpected{std::move(cred).error()};
        Entry& e = d->entries_[c.name];
        e.cred = std::move(*cred);
        if (auto ok = d->attach_entry(e, c.name, true); !ok) return Unexpected{ok.error()};
    }
    d->publish_changed();
    return d;
}

Expected<std::unique_ptr<CredentialRefresher>, RefresherError> Daemon::make_credential(
    const CredentialConfig& c, const std::optional<Secret>& carried) {
    std::optional<Secret> rt = carried;
    std::string no_token_reason;  // the token it would use is spent
    std::string waits_for_etcd;   // coordinated, none here yet: the grant's comes from etcd
    if (!rt && c.grant == Grant::refresh_token && cfg_.coordination &&
        !has_local_refresh_token(*store_, c)) {
        waits_for_etcd =
            "no refresh token on this host yet: it takes the grant's from etcd when the leader "
            "publishes, or run tokenshm login --config FILE " +
            c.name + " on one host";
    } else if (!rt && c.grant == Grant::refresh_token) {
        auto loaded = obtain_refresh_token(*store_, c.name, c.refresh_token_file);
        if (!loaded) return Unexpected{std::move(loaded).error()};
        rt = std::move(loaded->token);
        no_token_reason = std::move(loaded->reauth_reason);
    }
    StateStore* store = store_.get();
    auto cred = std::make_unique<CredentialRefresher>(
        c, cfg_.max_token_bytes, std::move(rt),
        [store](std::string_view name, const Secret& t, const Rotation& r) {
            return store->save(name, t, r);
        },
        deps_.random01,
        [this, name = c.name] {
            changed_.insert(name);
            if (fleet_ && !applying_) etcd_dirty_.insert(name);  // a leader's own change
        });
    if (!no_token_reason.empty()) {
        metrics_.replay_refused(c.name);  // the ledger kept a spent token from being sent
        cred->set_no_refresh_token_reason(std::move(no_token_reason));
    } else if (!waits_for_etcd.empty()) {
        cred->set_no_refresh_token_reason(std::move(waits_for_etcd));  // no replay refused
    }
    return cred;
}

Expected<Done, RefresherError> Daemon::attach_entry(Entry& e, const std::string& name,
                                                    bool resume) {
    auto slot = seg_->claim(name);
    if (!slot)
        return Unexpected{RefresherError::runtime_error(
            slot.error().message + " (remove the segment and restart to make it larger)")};
    e.slot = *slot;
    std::vector<std::uint64_t> scratch;
    if (auto cur = seg_->current(e.slot, scratch)) {
        e.version = cur->version;
        if (resume && e.cred->resume(Published::from(*cur), deps_.now()))
            log_event(Level::info, name, "resumed",
                      "serving the token left in the segment (version " +
                          std::to_string(e.version) + ")");
    }
    changed_.insert(name);  // a claimed slot always gets this writer's record
    return Done{};
}

bool Daemon::publish(Entry& e) {
    shm::SlotRecord r = e.cred->published().record();
    r.version = e.version + 1;
    if (auto ok = seg_->publish(e.slot, r); !ok) {
        log_event(Level::error, e.cred->name(), "publish_failed", shm::to_string(ok.error()));
        return false;
    }
    e.version = r.version;
    metrics_.published(e.cred->name(), e.cred->published(), e.version);
    sinks_.published(e.cred->name(), e.cred->config().sinks, e.cred->published(), e.version);
    note_token(e, r);
    return true;
}

void Daemon::publish_changed() {
    for (auto it = changed_.begin(); it != changed_.end();) {
        auto e = entries_.find(*it);
        const bool gone = e == entries_.end() || !e->second.cred;
        // A record that does not fit stays marked, and is tried again next time.
        if (gone || publish(e->second))
            it = changed_.erase(it);
        else
            ++it;
    }
}

void Daemon::check_segment(Now now) {
    // Unlinked, truncated or replaced under us: libshm makes a new segment
    // with every record and retires the old one; we publish everything again
    // so versions move on.
    auto intact = seg_->ensure_intact();
    if (!intact) {
        log_event(Level::error, "", "segment_recreate_failed", intact.error().message);
        failed_ = stop_ = true;
        return;
    }
    if (*intact != shm::Integrity::intact) {
        log_event(Level::warn, "", "segment_recreated",
                  "segment " + cfg_.segment + " was " + shm::to_string(*intact));
        for (const auto& [name, e] : entries_)
            changed_.insert(name);
        publish_changed();
        walk_all_ = true;
    }
    if (now.mono_ms - last_heartbeat_ms_ >= kHeartbeatEveryMs) {
        seg_->heartbeat(now.unix_ms);  // readers compare it with their wall clock
        last_heartbeat_ms_ = now.mono_ms;
    }
    metrics_.write_if_due(now);
    sinks_.retry_if_due(now.mono_ms);
}

void Daemon::step(std::chrono::milliseconds max_wait, int wake_fd) {
    Now now = deps_.now();
    check_segment(now);
    if (stop_) return;
    drive_fleet(now);
    std::int64_t next = now.mono_ms + std::min<std::int64_t>(max_wait.count(), kMaxWaitMs);
    next = std::min(next, poll_credentials(now));
    publish_changed();

    const auto wait = std::chrono::milliseconds(std::max<std::int64_t>(0, next - now.mono_ms));
    auto done = deps_.transport->poll(wait, wake_fd);
    now = deps_.now();
    if (!done.empty()) walk_all_ = true;  // answers move schedules
    answers_since_trim_ += done.size();
    for (auto& [id, resp] : done) {
        auto it = requests_.find(id);
        if (it == requests_.end()) continue;
        const std::string name = it->second;
        requests_.erase(it);
        auto e = entries_.find(name);
        if (e == entries_.end() || !e->second.cred) {  // removed while in flight
            metrics_.request_dropped(id);
            continue;
        }
        e->second.cred->on_response(resp, now);
        metrics_.request_finished(id, token_request_outcome(resp, *e->second.cred), now.mono_ms);
        if (!e->second.cred->in_flight()) e->second.refresh_asked = false;
        if (e->second.cred->take_refresh_token_rejected()) set_aside_rejected(name);
        if (e->second.remove_when_idle) {
            remove_entry(name, e->second);
            entries_.erase(e);
            continue;
        }
        apply_pending(e->second);
    }
    publish_changed();
    publish_to_etcd(now);
    trim_heap_after_burst();
    seg_->heartbeat(now.unix_ms);
    last_heartbeat_ms_ = now.mono_ms;
    if (deps_.notifier && deps_.notifier->enabled())
        deps_.notifier->heartbeat(now.mono_ms, service_status(now));
}

// After a burst of requests (the first tokens of many credentials, a mass
// refresh) glibc keeps the transfers' freed buffers in the heap: 1000
// credentials left 34 MiB resident for good (bench/system_bench.py), 10 MiB
// once trimmed. Trimmed when the burst is over, so at most once per burst.
void Daemon::trim_heap_after_burst() {
    if (answers_since_trim_ < kTrimAfterAnswers || deps_.transport->in_flight() > 0) return;
    answers_since_trim_ = 0;
    ::malloc_trim(0);
}

// Polls the credentials that have something to do and returns the earliest
// next action of any. Idle, the walk itself is skipped until that moment:
// with a thousand credentials, walking them on every pass (4 a second) was
// most of the refresher's idle CPU. Whatever can move a schedule sooner (an
// answer, a control request, a reload, a recreated segment, a wall-clock
// step) sets walk_all_.
std::int64_t Daemon::poll_credentials(Now now) {
    const bool wall_moved = wall_clock_moved(now);
    if (!walk_all_ && !wall_moved && now.mono_ms < quiet_until_ms_) return quiet_until_ms_;
    walk_all_ = false;
    std::int64_t next = std::numeric_limits<std::int64_t>::max();
    for (auto& [name, e] : entries_) {
        if (!e.cred || draining_) continue;
        const std::optional<std::string> held = fleet_hold(name, e, now);
        if (e.pending || wall_moved || now.mono_ms >= e.cred->next_action_ms()) {
            apply_pending(e);
            const CredentialRefresher::Hold hold{held ? std::string_view(*held) : "",
                                                 2 * fleet_lease_ms()};
            auto req = e.cred->poll(now, held ? &hold : nullptr);
            if (req && mark_before_send(name, e, now)) {
                const std::uint64_t id = next_request_id_++;
                requests_[id] = name;
                metrics_.request_started(id, name, *req, now.mono_ms);
                deps_.transport->start(id, std::move(*req));
            }
        }
        if (e.pending) walk_all_ = true;  // waits for its answer to land
        // Held, a due credential is looked at again soon, not in a spin.
        next =
            std::min(next, held ? std::max(e.cred->next_action_ms(), now.mono_ms + kHoldRecheckMs)
                                : e.cred->next_action_ms());
    }
    quiet_until_ms_ = next;
    return next;
}

// True when the wall clock moved against the monotonic one by half the step a
// credential follows (CredentialRefresher::follow_wall_clock) since the last
// pass that polled every credential: then every credential is polled, so each
// follows a step within one pass, as when all were polled every pass.
bool Daemon::wall_clock_moved(Now now) {
    const std::int64_t offset = now.wall_offset_ms();
    const std::int64_t moved = offset - swept_wall_offset_ms_;
    if (swept_ && moved > -kWallStepMs / 2 && moved < kWallStepMs / 2) return false;
    swept_ = true;
    swept_wall_offset_ms_ = offset;
    return true;
}

std::string Daemon::service_status(Now now) const {
    std::vector<CredentialBrief> briefs;
    for (const auto& [name, e] : entries_)
        if (e.cred)
            briefs.push_back({e.cred->published().state, e.cred->published().next_refresh_ms});
    return status_summary(briefs, now.unix_ms);
}

bool Daemon::all_attempted() const {
    for (const auto& [name, e] : entries_)
        if (e.cred && (e.cred->in_flight() || !e.cred->last_attempt_ok())) return false;
    return true;
}

bool Daemon::read_signals(int signal_fd) {
    struct signalfd_siginfo si {};
    for (;;) {
        const ssize_t n = ::read(signal_fd, &si, sizeof si);
        if (n != static_cast<ssize_t>(sizeof si)) {
            if (n < 0 && errno != EAGAIN && errno != EINTR)
                log_event(Level::error, "", "signalfd",
                          std::string("read: ") + std::strerror(errno));
            return false;
        }
        if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT) {
            log_event(Level::info, "", draining_ ? "stopping_now" : "stopping",
                      std::string("signal ") + ::strsignal(static_cast<int>(si.ssi_signo)) +
                          (draining_ ? "" : "; the segment and its tokens stay for readers"));
            return true;  // what follows is for the drain to read
        } else if (si.ssi_signo == SIGHUP && !draining_) {
            reload_requested_ = true;
        }
    }
}

// Lets requests in flight answer (bounded by their timeout): an answer may
// carry a rotated refresh token, and the old one is spent once sent. A
// second SIGTERM/SIGINT cuts the wait short: the operator asked twice.
// False when requests were abandoned that way.
bool Daemon::drain_in_flight(int wake_fd, int signal_fd) {
    if (failed_ || deps_.transport->in_flight() == 0) return true;
    std::int64_t longest = 0;
    for (const auto& [name, e] : entries_)
        if (e.cred) longest = std::max<std::int64_t>(longest, e.cred->config().timeout.count());
    const std::int64_t until = deps_.now().mono_ms + longest * 1000 + 1000;
    draining_ = true;
    stop_ = false;
    log_event(Level::info, "", "draining",
              std::to_string(deps_.transport->in_flight()) +
                  " request(s) in flight; a second SIGTERM stops at once");
    bool abandoned = false;
    while (deps_.transport->in_flight() > 0 && deps_.now().mono_ms < until && !failed_) {
        step(std::chrono::milliseconds(kMaxWaitMs), wake_fd);
        service_control();
        if (signal_fd >= 0 && read_signals(signal_fd)) {
            abandoned = true;
            log_event(Level::warn, "", "abandoned",
                      std::to_string(deps_.transport->in_flight()) +
                          " request(s) left unanswered; a refresh token the server "
                          "rotated in one of them is lost");
            break;
        }
    }
    stop_ = true;
    return !abandoned;
}

int Daemon::run(int signal_fd, bool once) {
    if (once)
        for (auto& [name, e] : entries_)
            e.cred->refresh_soon(deps_.now());
    walk_all_ = true;
    if (control_ && signal_fd >= 0)
        if (auto ok = control_->add_wake_fd(signal_fd); !ok)
            log_event(Level::error, "", "control_socket", ok.error().message);
    // The loop sleeps in the transport's poll; the control socket's epoll fd
    // (which holds the signalfd too) wakes it for clients and signals.
    const int wake_fd = control_ ? control_->wait_fd() : signal_fd;
    if (deps_.notifier) deps_.notifier->ready(service_status(deps_.now()));
    while (!stop_) {
        step(std::chrono::milliseconds(kMaxWaitMs), wake_fd);
        service_control();
        if (once && all_attempted()) break;
        if (signal_fd < 0) continue;
        if (read_signals(signal_fd)) stop_ = true;
        if (reload_requested_) {
            reload_requested_ = false;
            if (deps_.notifier) deps_.notifier->reloading();
            if (reload_) reload_();
            if (deps_.notifier) deps_.notifier->ready(service_status(deps_.now()));
        }
    }
    if (deps_.notifier) deps_.notifier->stopping();
    const bool abandoned = !drain_in_flight(wake_fd, signal_fd);
    bool ok = !failed_ && !abandoned;
    if (!save_unsaved_before_exit(once && ok ? kOnceSaveRetryMs : 0, signal_fd)) ok = false;
    stop_fleet(deps_.now());
    for (auto& [name, e] : entries_)
        if (e.cred && once && e.cred->last_attempt_ok() != true) ok = false;
    // How long successors waited between their response and the rename (a
    // SIGKILL in that window loses one): the distribution, for the figures.
    if (store_->persist_times().count > 0)
        log_event(Level::info, "", "persist_times", store_->persist_times().summary());
    metrics_.flush(deps_.now());
    control_.reset();  // removes the socket: nobody answers on it any more
    return ok ? 0 : 1;
}

bool Daemon::save_unsaved_before_exit(std::int64_t budget_ms, int signal_fd) {
    const std::int64_t until = deps_.now().mono_ms + budget_ms;
    std::map<std::string, std::string> unsaved;  // name -> the last save error
    for (;;) {
        unsaved.clear();
        for (auto& [name, e] : entries_)
            if (e.cred)
                if (auto r = e.cred->flush_refresh_token(); !r) unsaved[name] = r.error().message;
        if (unsaved.empty()) return true;
        // Nothing may be in flight: an answer would be dropped here.
        if (deps_.now().mono_ms >= until || deps_.transport->in_flight() > 0) break;
        (void)deps_.transport->poll(std::chrono::milliseconds(kSaveRetryEveryMs), signal_fd);
        if (signal_fd >= 0 && read_signals(signal_fd)) break;
    }
    const std::string tried =
        budget_ms > 0 ? " after retrying for " + std::to_string(budget_ms / 1000) + "s" : "";
    for (const auto& [name, error] : unsaved) {
        // The successor dies with this process, so the token it replaced is
        // spent for good: ledgered, the next run refuses it instead of
        // sending it (a strict server would revoke the grant). The ledger may
        // be as unwritable as the state file, though.
        const auto ledgered = store_->record_spent(name, entries_[name].cred->spent_unledgered());
        log_event(Level::error, name, "successor_lost",
                  "the rotated refresh token could not be saved" + tried + " (" + error +
                      "); it is lost when this process exits, and the refresh token on disk is "
                      "spent: " +
                      (ledgered ? "the next run will not send it and stays in reauth"
                                : "the next run will send it and be refused (reauth; a server "
                                  "that detects reuse revokes the grant)") +
                      ". Make " + cfg_.state_dir + " writable, remove " + store_->token_path(name) +
                      " and run tokenshm login --config FILE " + name +
                      " (or put a fresh refresh token from the authorization server in "
                      "refresh_token_file)");
    }
    return false;
}

void Daemon::remove_entry(const std::string& name, Entry& e) {
    seg_->retire(e.slot);
    metrics_.removed(name);
    sinks_.removed(name);
    log_event(Level::info, name, "removed", "not in the configuration any more");
}

void Daemon::set_aside_rejected(const std::string& name) {
    auto moved = store_->set_aside(name);
    if (!moved) {
        log_event(Level::error, name, "set_aside_failed", moved.error().message);
        return;
    }
    log_event(Level::error, name, "action_needed",
              std::string(*moved ? "the rejected refresh token was moved to " +
                                       store_->token_path(name) + ".rejected; "
                                 : "") +
                  "run tokenshm login --config FILE " + name +
                  ", or put a new refresh token in refresh_token_file and send SIGHUP");
}

void Daemon::apply_pending(Entry& e) {
    if (!e.pending || (e.cred && e.cred->in_flight())) return;
    CredentialConfig c = std::move(*e.pending);
    e.pending.reset();
    const bool token_reload = std::exchange(e.reload_tokens, false);
    // Keep the refresh token in use when the client and server are the same:
    // it may be newer than any file, and the old one may already be spent.
    std::optional<Secret> carried;
    if (!token_reload && e.cred && e.cred->refresh_token() &&
        e.cred->config().client_id == c.client_id && e.cred->config().issuer == c.issuer &&
        e.cred->config().token_endpoint == c.token_endpoint &&
        e.cred->config().refresh_token_file == c.refresh_token_file)
        carried = e.cred->refresh_token();
    auto cred = make_credential(c, carried);
    if (!cred) {
        log_event(Level::error, c.name, "reload_failed",
                  cred.error().message + "; keeping the old settings");
        return;
    }
    if (token_reload && e.cred && (*cred)->refresh_token() == e.cred->refresh_token()) {
        // Nothing a person changed: the credential stays exactly as it is, in reauth.
        log_event(Level::warn, c.name, "reauth",
                  "reloaded with the same settings and refresh token; no request until one of "
                  "them changes");
        return;
    }
    const Now now = deps_.now();
    if (e.cred) {
        (*cred)->inherit_unsaved(*e.cred, now.mono_ms);
        (*cred)->continue_after_reload(*e.cred, now);
    }
    e.cred = std::move(*cred);
    log_event(Level::info, c.name, "changed",
              token_reload ? "a new refresh token is in place; trying it"
                           : "settings changed; refreshing with the new ones");
}

void Daemon::reload(Config cfg) {
    walk_all_ = true;  // settings and credentials may change below
    keep_restart_only_settings(cfg);
    std::set<std::string> keep;
    for (auto& c : cfg.credentials) {
        keep.insert(c.name);
        auto it = entries_.find(c.name);
        if (it == entries_.end())
            add_credential(c);
        else
            update_credential(it->second, c);
    }
    fault_point(FaultPoint::during_reload);
    remove_unlisted(keep);
    metrics_.set_textfile(cfg.metrics_textfile);
    cfg_ = std::move(cfg);
    publish_changed();
}

void Daemon::keep_restart_only_settings(Config& cfg) const {
    if (cfg.segment != cfg_.segment || cfg.mode != cfg_.mode || cfg.group_id != cfg_.group_id ||
        cfg.max_token_bytes != cfg_.max_token_bytes || cfg.state_dir != cfg_.state_dir ||
        cfg.control_socket != cfg_.control_socket || cfg.coordination != cfg_.coordination)
        log_event(Level::warn, "", "reload",
                  "segment, mode, group, max_token_bytes, state_dir, control_socket and "
                  "coordination take effect only after a restart; applying the credentials");
    cfg.segment = cfg_.segment;
    cfg.mode = cfg_.mode;
    cfg.group_id = cfg_.group_id;
    cfg.max_token_bytes = cfg_.max_token_bytes;
    cfg.state_dir = cfg_.state_dir;
    cfg.control_socket = cfg_.control_socket;
    cfg.coordination = cfg_.coordination;
}

void Daemon::add_credential(const CredentialConfig& c) {
    auto cred = make_credential(c, std::nullopt);
    if (!cred) {
        log_event(Level::error, c.name, "reload_failed", cred.error().message);
        return;
    }
    Entry& e = entries_[c.name];
    e.cred = std::move(*cred);
    if (auto ok = attach_entry(e, c.name, true); !ok) {
        log_event(Level::error, c.name, "no_slot", ok.error().message);
        entries_.erase(c.name);
        return;
    }
    // A slot it had before may still hold a token made with other settings.
    e.cred->refresh_soon(deps_.now());
    log_event(Level::info, c.name, "added", "new credential");
}

void Daemon::update_credential(Entry& e, const CredentialConfig& c) {
    if (!(e.cred->config() == c)) {
        e.pending = c;
        apply_pending(e);
    } else if (e.pending) {
        // Reverted to the running settings before a pending change applied.
        e.pending.reset();
        e.reload_tokens = false;
    } else if (e.cred->in_reauth() && !e.cred->in_flight()) {
        // Same settings, but a person may have put a new refresh token in
        // place: read it again; only a different one is tried (apply_pending).
        e.pending = c;
        e.reload_tokens = true;
        apply_pending(e);
    }
}

void Daemon::remove_unlisted(const std::set<std::string>& keep) {
    for (auto it = entries_.begin(); it != entries_.end();) {
        Entry& e = it->second;
        e.remove_when_idle = !keep.count(it->first);
        if (e.remove_when_idle && (!e.cred || !e.cred->in_flight())) {
            remove_entry(it->first, e);
            it = entries_.erase(it);
        } else {
            // In flight: the answer may carry a rotated refresh token, which
            // must reach the disk before the credential goes.
            ++it;
        }
    }
}

const CredentialRefresher* Daemon::credential(const std::string& name) const {
    auto it = entries_.find(name);
    return it == entries_.end() ? nullptr : it->second.cred.get();
}

}  // namespace tokenshm::refresher
