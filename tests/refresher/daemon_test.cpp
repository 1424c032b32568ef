// The daemon loop with a fake transport and a fake clock, against a real
// segment and a real state directory.
#include "daemon.hpp"
#include "fake_transport.hpp"
#include "log.hpp"

#include <tokenshm/reader.hpp>

#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>

using namespace tokenshm::refresher;
namespace fs = std::filesystem;

namespace {

using tokenshm::test::FakeTransport;

HttpResponse error_response(long status, const std::string& body,
                            std::optional<std::string> retry_after = std::nullopt) {
    HttpResponse r;
    r.outcome = HttpResponse::Outcome::response;
    r.status = status;
    r.content_type = "application/json";
    r.body = body;
    r.retry_after = std::move(retry_after);
    return r;
}

HttpResponse token(const std::string& at, int expires_in, const std::string& rt = {}) {
    return tokenshm::test::token_response(at, expires_in, rt);
}

struct TempDir {
    fs::path path;
    TempDir() {
        std::string t = (fs::temp_directory_path() / "tokenshm-daemon-XXXXXX").string();
        REQUIRE(::mkdtemp(t.data()) != nullptr);
        path = t;
    }
    ~TempDir() { fs::remove_all(path); }
};

CredentialConfig cred(const std::string& name) {
    CredentialConfig c;
    c.name = name;
    c.token_endpoint = EndpointUrl::parse("https://" + name + ".example.test/token").value();
    c.client_id = name + "-client";
    c.client_secret = Secret("secret-" + name);
    return c;
}

struct World {
    TempDir dir;
    std::string segment = "tokenshm-test-daemon-" + std::to_string(::getpid());
    FakeTransport transport;
    PosixFileSystem posix;
    FileSystem* fsys = &posix;
    // The fake clock: CLOCK_MONOTONIC (two hours after boot) and the wall
    // clock as an offset from it, which a test steps on its own.
    std::int64_t now = 7'200'000;
    std::int64_t wall = 1'700'000'000'000 - 7'200'000;
    Config cfg;

    World() {
        set_log_sink([](std::string_view) {});
        cfg.segment = segment;
        cfg.state_dir = (dir.path / "state").string();
        for (const char* n : {"alpha", "beta"}) {
            const std::string rt_file = (dir.path / (std::string(n) + ".rt")).string();
            std::ofstream(rt_file) << "rt-" << n << "-1\n";
            fs::permissions(rt_file, fs::perms::owner_read | fs::perms::owner_write);
            CredentialConfig c = cred(n);
            c.refresh_token_file = rt_file;
            cfg.credentials.push_back(c);
        }
    }
    ~World() {
        (void)tokenshm::shm::sys::shm_unlink("/" + segment);
        set_log_sink({});
    }
    DaemonDeps deps() {
        return DaemonDeps{&transport, fsys,
                          [this] {
                              return Now{now, now + wall};
                          },
                          [] { return 0.5; }};
    }
    // The monotonic instant a published (Unix) time stands for, as of now.
    std::int64_t mono_of(std::int64_t unix_ms) const { return unix_ms - wall; }
    // The refresh token the state directory holds for `name` ("" when none).
    std::string saved_refresh_token(const std::string& name) {
        auto t = StateStore(posix, cfg.state_dir).load(name);
        REQUIRE(t);
        return *t ? std::string((*t)->reveal()) : std::string();
    }
    // An owned copy of what the slot's Token shows: the handle that read it
    // is gone when read() returns, and a Token is a view into its handle.
    struct Snap {
        std::string token_;
        std::int64_t issued_at_ms_, next_refresh_ms_, expires_at_ms_;
        std::uint64_t version_;
        tokenshm::State state_;
        std::string_view token() const { return token_; }
        std::int64_t issued_at_ms() const { return issued_at_ms_; }
        std::int64_t next_refresh_ms() const { return next_refresh_ms_; }
        std::int64_t expires_at_ms() const { return expires_at_ms_; }
        std::uint64_t version() const { return version_; }
        tokenshm::State state() const { return state_; }
    };
    tokenshm::Expected<Snap, tokenshm::Error> read(const std::string& name) {
        auto r = tokenshm::Reader::open(segment);
        REQUIRE(r);
        auto h = r->lookup(name);
        if (!h) return tokenshm::Unexpected{h.error().code};
        auto t = h->inspect();
        if (!t) return tokenshm::Unexpected{t.error()};
        return Snap{std::string(t->token()), t->issued_at_ms(), t->next_refresh_ms(),
                    t->expires_at_ms(),      t->version(),      t->state()};
    }
};

}  // namespace

TEST_CASE("credentials refresh concurrently: a slow server never delays another") {
    World w;
    auto d = Daemon::start(w.cfg, w.deps());
    REQUIRE(d);
    (*d)->step(std::chrono::milliseconds(0));
    CHECK(w.transport.pending.size() == 2);  // both in flight at once
    REQUIRE(w.transport.answer("beta", token("at-beta-1", 60)));
    (*d)->step(std::chrono::milliseconds(0));
    auto beta = w.read("beta");
    REQUIRE(beta);
    CHECK(beta->token() == "at-beta-1");
    CHECK(beta->state() == tokenshm::State::valid);
    CHECK(w.read("alpha")->state() == tokenshm::State::empty);  // alpha's server is still silent
}

TEST_CASE("a rotated refresh token is on disk before the access token is published") {
    World w;
    // Watch the rename that commits the new refresh token: at that moment the
    // segment must still show the old access token.
    struct Spy : PosixFileSystem {
        World* w = nullptr;
        std::vector<std::string> seen_at_rename;
        FsResult<Done> rename(const std::string& from, const std::string& to) override {
            auto t = w->read("alpha");
            seen_at_rename.push_back(t ? std::string(t->token()) : "<none>");
            return PosixFileSystem::rename(from, to);
        }
    } spy;
    spy.w = &w;
    w.fsys = &spy;
    auto d = Daemon::start(w.cfg, w.deps());
    REQUIRE(d);
    (*d)->step(std::chrono::milliseconds(0));
    CHECK(w.transport.body_for("alpha").find("refresh_token=rt-alpha-1") != std::string::npos);
    REQUIRE(w.transport.answer("alpha", token("at-alpha-1", 60, "rt-alpha-2")));
    (*d)->step(std::chrono::milliseconds(0));
    REQUIRE(spy.seen_at_rename.size() == 1);
    CHECK(spy.seen_at_rename[0] == "");  // nothing published yet when the token hit the disk
    CHECK(w.read("alpha")->token() == "at-alpha-1");

    CHECK(w.saved_refresh_token("alpha") == "rt-alpha-2");
    CHECK((fs::status(fs::path(w.cfg.state_dir) / "alpha.refresh_token").permissions() &
           fs::perms::all) == (fs::perms::owner_read | fs::perms::owner_write));
}

TEST_CASE(
    "a restarted refresher serves the old token, uses the persisted refresh token, and continues "
    "versions") {
    World w;
    std::uint64_t version = 0;
    {
        auto d = Daemon::start(w.cfg, w.deps());
        REQUIRE(d);
        (*d)->step(std::chrono::milliseconds(0));
        REQUIRE(w.transport.answer("alpha", token("at-alpha-1", 600, "rt-alpha-2")));
        REQUIRE(w.transport.answer("beta", token("at-beta-1", 600)));
        (*d)->step(std::chrono::milliseconds(0));
        version = w.read("alpha")->version();
        CHECK(version >= 2);
    }  // the first refresher dies; the segment stays
    w.transport.pending.clear();
    w.transport.started = 0;
    w.now += 10'000;

    auto d = Daemon::start(w.cfg, w.deps());
    REQUIRE(d);
    auto alpha = w.read("alpha");
    REQUIRE(alpha);
    CHECK(alpha->token() == "at-alpha-1");  // served at once, no request needed
    CHECK(alpha->version() > version);
    (*d)->step(std::chrono::milliseconds(0));
    CHECK(w.transport.started == 0);  // nothing is due yet

    w.now = w.mono_of(alpha->next_refresh_ms());
    (*d)->step(std::chrono::milliseconds(0));
    const std::string body = w.transport.body_for("alpha");
    CHECK(body.find("refresh_token=rt-alpha-2") != std::string::npos);  // the persisted successor
    CHECK(body.find("rt-alpha-1") == std::string::npos);
}

TEST_CASE("reload: added credentials get slots, removed ones go, unchanged ones are untouched") {
    World w;
    auto d = Daemon::start(w.cfg, w.deps());
    REQUIRE(d);
    (*d)->step(std::chrono::milliseconds(0));
    REQUIRE(w.transport.answer("alpha", token("at-alpha-1", 600)));
    REQUIRE(w.transport.answer("beta", token("at-beta-1", 600)));
    (*d)->step(std::chrono::milliseconds(0));
    const auto beta_before = *w.read("beta");

    Config next = w.cfg;
    next.credentials.erase(next.credentials.begin());  // alpha goes
    CredentialConfig gamma = cred("gamma");
    gamma.grant = Grant::client_credentials;
    next.credentials.push_back(gamma);
    (*d)->reload(next);
    (*d)->step(std::chrono::milliseconds(0));

    CHECK_FALSE(w.read("alpha"));
    CHECK(w.read("alpha").error() == tokenshm::Error::no_such_credential);
    const auto beta_after = *w.read("beta");
    CHECK(beta_after.version() == beta_before.version());
    CHECK(beta_after.issued_at_ms() == beta_before.issued_at_ms());
    CHECK(w.transport.body_for("beta").empty());  // no request for the unchanged one
    CHECK(w.transport.body_for("gamma").find("grant_type=client_credentials") != std::string::npos);
    REQUIRE(w.transport.answer("gamma", token("at-gamma-1", 600)));
    (*d)->step(std::chrono::milliseconds(0));
    CHECK(w.read("gamma")->token() == "at-gamma-1");
}

TEST_CASE("a segment unlinked under the refresher is recreated, versions continuing") {
    World w;
    auto d = Daemon::start(w.cfg, w.deps());
    REQUIRE(d);
    (*d)->step(std::chrono::milliseconds(0));
    REQUIRE(w.transport.answer("alpha", token("at-alpha-1", 600)));
    (*d)->step(std::chrono::milliseconds(0));
    const auto before = *w.read("alpha");
    REQUIRE(tokenshm::shm::sys::shm_unlink("/" + w.segment));
    CHECK(tokenshm::Reader::open(w.segment).error().code == tokenshm::Error::no_segment);
    w.now += 2'000;
    (*d)->step(std::chrono::milliseconds(0));
    auto after = w.read("alpha");
    REQUIRE(after);
    CHECK(after->token() == "at-alpha-1");
    CHECK(after->version() > before.version());
}

TEST_CASE("a second daemon on the same segment is refused, naming the first one's pid") {
    World w;
    auto d = Daemon::start(w.cfg, w.deps());
    REQUIRE(d);
    auto d2 = Daemon::start(w.cfg, w.deps());
    REQUIRE_FALSE(d2);
    CHECK_THAT(d2.error().message, Catch::Contains("pid " + std::to_string(::getpid())));
}

TEST_CASE(
    "a rejected refresh token is set aside; a reload picks up the new one a person put in place") {
    World w;
    auto d = Daemon::start(w.cfg, w.deps());
    REQUIRE(d);
    (*d)->step(std::chrono::milliseconds(0));
    REQUIRE(w.transport.answer("alpha", token("at-alpha-1", 600, "rt-alpha-2")));
    (*d)->step(std::chrono::milliseconds(0));
    const fs::path state = fs::path(w.cfg.state_dir) / "alpha.refresh_token";
    REQUIRE(fs::exists(state));

    w.now = w.mono_of(w.read("alpha")->next_refresh_ms());
    (*d)->step(std::chrono::milliseconds(0));
    HttpResponse rejected;
    rejected.outcome = HttpResponse::Outcome::response;
    rejected.status = 400;
    rejected.body = R"({"error":"invalid_grant","error_description":"grant request is invalid"})";
    REQUIRE(w.transport.answer("alpha", rejected));
    (*d)->step(std::chrono::milliseconds(0));
    CHECK(w.read("alpha")->state() == tokenshm::State::reauth);
    CHECK_FALSE(fs::exists(state));
    CHECK(fs::exists(state.string() + ".rejected"));
    w.now += 60'000;
    (*d)->step(std::chrono::milliseconds(0));
    CHECK(w.transport.body_for("alpha").empty());  // no retries while waiting for a person

    // The person writes a new refresh token into refresh_token_file and reloads.
    std::ofstream(*w.cfg.credentials[0].refresh_token_file) << "rt-alpha-fixed\n";
    (*d)->reload(w.cfg);
    (*d)->step(std::chrono::milliseconds(0));
    CHECK(w.transport.body_for("alpha").find("refresh_token=rt-alpha-fixed") != std::string::npos);
}

TEST_CASE("killed between persisting a rotated refresh token and publishing: nothing is lost") {
    World w;
    const pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
        // The refresher: one good refresh, then a second one whose rotated
        // token reaches the disk, and SIGKILL before the access token is published.
        struct KillAfterSecondRename : PosixFileSystem {
            int renames = 0;
            FsResult<Done> rename(const std::string& from, const std::string& to) override {
                auto r = PosixFileSystem::rename(from, to);
                if (++renames == 2) ::raise(SIGKILL);
                return r;
            }
        } killer;
        w.fsys = &killer;
        auto d = Daemon::start(w.cfg, w.deps());
        if (!d) ::_exit(3);
        (*d)->step(std::chrono::milliseconds(0));
        w.transport.answer("alpha", token("at-alpha-1", 600, "rt-alpha-2"));
        (*d)->step(std::chrono::milliseconds(0));
        w.now = w.mono_of(w.read("alpha")->next_refresh_ms());
        (*d)->step(std::chrono::milliseconds(0));
        w.transport.answer("alpha", token("at-alpha-2", 600, "rt-alpha-3"));
        (*d)->step(std::chrono::milliseconds(0));
        ::_exit(4);  // not reached
    }
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    REQUIRE(WIFSIGNALED(status));
    CHECK(WTERMSIG(status) == SIGKILL);

    // Readers still have the last complete record.
    auto before = w.read("alpha");
    REQUIRE(before);
    CHECK(before->token() == "at-alpha-1");
    CHECK(before->state() == tokenshm::State::valid);

    // A new refresher serves it and refreshes with the successor that reached the disk.
    auto d = Daemon::start(w.cfg, w.deps());
    REQUIRE(d);
    CHECK(w.read("alpha")->token() == "at-alpha-1");
    w.now = w.mono_of(w.read("alpha")->next_refresh_ms());
    (*d)->step(std::chrono::milliseconds(0));
    const std::string body = w.transport.body_for("alpha");
    CHECK(body.find("refresh_token=rt-alpha-3") != std::string::npos);
    CHECK(body.find("rt-alpha-2") == std::string::npos);
}

TEST_CASE(
    "a credential removed while its request is in flight still saves the rotated refresh token") {
    World w;
    auto d = Daemon::start(w.cfg, w.deps());
    REQUIRE(d);
    (*d)->step(std::chrono::milliseconds(0));
    REQUIRE_FALSE(w.transport.body_for("alpha").empty());  // alpha's request is in flight

    Config next = w.cfg;
    next.credentials.erase(next.credentials.begin());
    (*d)->reload(next);
    REQUIRE(w.transport.answer("alpha", token("at-alpha-1", 600, "rt-alpha-2")));
    (*d)->step(std::chrono::milliseconds(0));

    CHECK(w.saved_refresh_token("alpha") == "rt-alpha-2");
    CHECK(w.read("alpha").error() == tokenshm::Error::no_such_credential);
    CHECK((*d)->credential("alpha") == nullptr);
}

TEST_CASE("a segment with no slot left is an error at start, never another credential's slot") {
    World w;
    {
        tokenshm::shm::SegmentSpec small;
        small.name = w.segment;
        small.slot_count = 1;
        REQUIRE(tokenshm::shm::WriterSegment::create_or_attach(small));
    }  // a previous refresher made it with room for one credential
    auto d = Daemon::start(w.cfg, w.deps());
    REQUIRE_FALSE(d);
    CHECK_THAT(d.error().message, Catch::Contains("no free slot"));
}

TEST_CASE("a second SIGTERM while answers are awaited stops at once, exit 1") {
    World w;
    auto d = Daemon::start(w.cfg, w.deps());
    REQUIRE(d);
    (*d)->step(std::chrono::milliseconds(0));
    REQUIRE(w.transport.in_flight() == 2);  // alpha's and beta's requests, never answered
    // A pipe stands in for the signalfd: run() reads signalfd_siginfo records.
    int fds[2];
    REQUIRE(::pipe2(fds, O_NONBLOCK | O_CLOEXEC) == 0);
    struct signalfd_siginfo si {};
    si.ssi_signo = SIGTERM;
    REQUIRE(::write(fds[1], &si, sizeof si) == static_cast<ssize_t>(sizeof si));  // the first
    REQUIRE(::write(fds[1], &si, sizeof si) == static_cast<ssize_t>(sizeof si));  // the second
    // Each wait for answers moves the clock a second: unheard, the second
    // signal would leave run() waiting out the drain's deadline and exit 0.
    w.transport.on_poll = [&w] { w.now += 1000; };
    const std::int64_t before = w.now;
    CHECK((*d)->run(fds[0], false) == 1);
    CHECK(w.now - before < 5'000);  // not the drain's deadline: timeout_s plus a second
    CHECK(w.transport.in_flight() == 2);
    ::close(fds[0]);
    ::close(fds[1]);
}

TEST_CASE("stopping waits for the answer in flight and saves its rotated refresh token") {
    World w;
    auto d = Daemon::start(w.cfg, w.deps());
    REQUIRE(d);
    (*d)->step(std::chrono::milliseconds(0));
    REQUIRE(w.transport.answer("alpha", token("at-alpha-1", 600, "rt-alpha-2")));
    REQUIRE(w.transport.answer("beta", token("at-beta-1", 600)));
    (*d)->request_stop();  // SIGTERM arrives while the answers are on their way
    CHECK((*d)->run(-1, false) == 0);
    CHECK(w.saved_refresh_token("alpha") == "rt-alpha-2");
}

namespace {

// alpha refreshed once (no rotation), then its refresh token rejected: reauth,
// with refresh_token_file still holding the rejected token. beta is valid.
void put_alpha_in_reauth(World& w, Daemon& d) {
    d.step(std::chrono::milliseconds(0));
    REQUIRE(w.transport.answer("alpha", token("at-alpha-1", 600)));
    REQUIRE(w.transport.answer("beta", token("at-beta-1", 600)));
    d.step(std::chrono::milliseconds(0));
    w.now = w.mono_of(w.read("alpha")->next_refresh_ms());
    d.step(std::chrono::milliseconds(0));
    REQUIRE(w.transport.answer(
        "alpha",
        error_response(400, R"({"error":"invalid_grant","error_description":"revoked"})")));
    d.step(std::chrono::milliseconds(0));
    REQUIRE(w.read("alpha")->state() == tokenshm::State::reauth);
}

}  // namespace

TEST_CASE("twenty reloads of a credential in reauth send no token request") {
    World w;
    auto d = Daemon::start(w.cfg, w.deps());
    REQUIRE(d);
    put_alpha_in_reauth(w, **d);
    const int started = w.transport.started;
    const CredentialRefresher* alpha = (*d)->credential("alpha");
    for (int i = 0; i < 20; ++i) {
        w.now += 100;
        (*d)->reload(w.cfg);  // a SIGHUP; the rejected token is still in refresh_token_file
        (*d)->step(std::chrono::milliseconds(0));
    }
    CHECK(w.transport.started == started);
    CHECK(w.transport.body_for("alpha").empty());
    CHECK((*d)->credential("alpha") == alpha);  // kept as it was, not rebuilt
    CHECK(w.read("alpha")->state() == tokenshm::State::reauth);

    // A changed setting does not make the rejected token worth sending either.
    Config scoped = w.cfg;
    scoped.credentials[0].scope = "files.read";
    for (int i = 0; i < 20; ++i) {
        w.now += 100;
        (*d)->reload(i % 2 ? w.cfg : scoped);
        (*d)->step(std::chrono::milliseconds(0));
    }
    CHECK(w.transport.started == started);
    CHECK(w.read("alpha")->state() == tokenshm::State::reauth);
}

TEST_CASE("a new refresh token put in place in reauth is tried once, after min_interval_s") {
    World w;
    auto d = Daemon::start(w.cfg, w.deps());
    REQUIRE(d);
    put_alpha_in_reauth(w, **d);  // the rejected request went out at w.now
    const std::int64_t rejected_at = w.now;
    const int started = w.transport.started;
    std::ofstream(*w.cfg.credentials[0].refresh_token_file) << "rt-alpha-fixed\n";
    for (int i = 0; i < 20; ++i) {
        w.now += 100;
        (*d)->reload(w.cfg);
        (*d)->step(std::chrono::milliseconds(0));
    }
    REQUIRE(w.now - rejected_at < 5'000);
    CHECK(w.transport.started == started);  // min_interval_s (5 s) has not passed
    w.now = rejected_at + 5'000;
    (*d)->step(std::chrono::milliseconds(0));
    CHECK(w.transport.started == started + 1);
    CHECK(w.transport.body_for("alpha").find("refresh_token=rt-alpha-fixed") != std::string::npos);
    for (int i = 0; i < 20; ++i) {  // more SIGHUPs while it is in flight
        w.now += 100;
        (*d)->reload(w.cfg);
        (*d)->step(std::chrono::milliseconds(0));
    }
    CHECK(w.transport.started == started + 1);
}

TEST_CASE("reloads of a failing credential keep its backoff and min_interval_s") {
    World w;
    w.cfg.credentials[0].min_interval = std::chrono::seconds(5);
    w.cfg.credentials[0].min_backoff = std::chrono::seconds(2);
    w.cfg.credentials[0].max_backoff = std::chrono::seconds(60);
    auto d = Daemon::start(w.cfg, w.deps());
    REQUIRE(d);
    Config scoped = w.cfg;
    scoped.credentials[0].scope = "files.read";
    std::vector<std::int64_t> sent_at;  // monotonic
    // Every 100 ms a SIGHUP (the same config for 10 s, then alternating with a
    // changed one for 20 s); every alpha request fails with 503.
    for (int i = 0; i < 300; ++i) {
        if (i > 0) (*d)->reload(i < 100 || i % 2 ? w.cfg : scoped);
        (*d)->step(std::chrono::milliseconds(0));
        if (!w.transport.body_for("alpha").empty()) {
            sent_at.push_back(w.now);
            REQUIRE(w.transport.answer("alpha", error_response(503, "")));
        }
        w.transport.answer("beta", token("at-beta", 3600));
        w.now += 100;
    }
    // Unchanged, the credential keeps its backoff: 2 s, then 3 s (dice at 0.5),
    // each counted from the answer, which comes 100 ms after the request.
    REQUIRE(sent_at.size() >= 3);
    CHECK(sent_at[1] - sent_at[0] == 2'100);
    CHECK(sent_at[2] - sent_at[1] == 3'100);
    // Changed every 200 ms, it is rebuilt each time, and still sends no more
    // than once per min_interval_s (5 s): four or five in those 20 s, not 100.
    std::size_t changed_phase = 0;
    for (std::size_t k = 3; k < sent_at.size(); ++k) {
        CHECK(sent_at[k] - sent_at[k - 1] >= 5'000);
        ++changed_phase;
    }
    CHECK(changed_phase >= 3);
    CHECK(changed_phase <= 5);
}

TEST_CASE("a reload does not cut a server's Retry-After short") {
    World w;
    auto d = Daemon::start(w.cfg, w.deps());
    REQUIRE(d);
    (*d)->step(std::chrono::milliseconds(0));
    const std::int64_t sent = w.now;
    REQUIRE(w.transport.answer("alpha", error_response(429, "", "60")));
    (*d)->step(std::chrono::milliseconds(0));
    const int started = w.transport.started;
    Config scoped = w.cfg;
    scoped.credentials[0].scope = "files.read";
    while (w.now < sent + 59'900) {
        w.now += 1'000;
        (*d)->reload(w.now % 2'000 ? scoped : w.cfg);  // changed every time
        (*d)->step(std::chrono::milliseconds(0));
        if (w.now < sent + 60'000) REQUIRE(w.transport.body_for("alpha").empty());
    }
    w.now = sent + 60'000;
    (*d)->step(std::chrono::milliseconds(0));
    CHECK(w.transport.started == started + 1);
}

TEST_CASE("the wall clock stepped an hour either way: no storm, no missed refresh") {
    for (const std::int64_t step : {std::int64_t{3'600'000}, std::int64_t{-3'600'000}}) {
        INFO("wall clock stepped by " << step << " ms");
        World w;
        auto d = Daemon::start(w.cfg, w.deps());
        REQUIRE(d);
        (*d)->step(std::chrono::milliseconds(0));
        REQUIRE(w.transport.answer("alpha", token("at-alpha-1", 600)));
        REQUIRE(w.transport.answer("beta", token("at-beta-1", 600)));
        (*d)->step(std::chrono::milliseconds(0));
        const auto before = *w.read("alpha");
        const std::int64_t due = w.mono_of(before.next_refresh_ms());
        const int started = w.transport.started;

        // Ten seconds on, the wall clock jumps; the loop goes on every 250 ms.
        w.now += 10'000;
        w.wall += step;
        (*d)->step(std::chrono::milliseconds(0));
        const auto after = *w.read("alpha");
        CHECK(after.version() > before.version());  // republished in the new wall time
        CHECK(after.expires_at_ms() == before.expires_at_ms() + step);
        CHECK(after.expires_at_ms() - (w.now + w.wall) == 590'000);  // what a reader has left
        CHECK(after.state() == tokenshm::State::valid);
        while (w.now + 250 < due) {
            w.now += 250;
            (*d)->step(std::chrono::milliseconds(0));
        }
        CHECK(w.transport.started == started);                 // nothing early
        CHECK(w.read("alpha")->version() == after.version());  // and republished only once
        w.now = due;
        (*d)->step(std::chrono::milliseconds(0));
        CHECK(w.transport.started == started + 2);  // alpha and beta, on time
        REQUIRE(w.transport.answer("alpha", token("at-alpha-2", 600)));
        (*d)->step(std::chrono::milliseconds(0));
        CHECK(w.read("alpha")->token() == "at-alpha-2");
        CHECK(w.read("alpha")->expires_at_ms() == due + w.wall + 600'000);
    }
}

TEST_CASE("a wall clock drifting in small steps is followed once the steps add up to a second") {
    // Idle credentials are polled only when due or when the wall clock moved
    // by half a second since the last full pass: drift below that is not lost.
    World w;
    auto d = Daemon::start(w.cfg, w.deps());
    REQUIRE(d);
    (*d)->step(std::chrono::milliseconds(0));
    REQUIRE(w.transport.answer("alpha", token("at-alpha-1", 600)));
    REQUIRE(w.transport.answer("beta", token("at-beta-1", 600)));
    (*d)->step(std::chrono::milliseconds(0));
    const auto before = *w.read("alpha");
    std::int64_t drift = 0;
    for (int i = 0; i < 4; ++i) {
        w.now += 250;
        w.wall += 400;
        drift += 400;
        (*d)->step(std::chrono::milliseconds(0));
    }
    (*d)->step(std::chrono::milliseconds(0));
    const auto after = *w.read("alpha");
    CHECK(after.version() > before.version());
    CHECK(after.expires_at_ms() == before.expires_at_ms() + drift);
    CHECK(after.expires_at_ms() - (w.now + w.wall) == 600'000 - 1'000);  // what a reader has left
}

TEST_CASE("reloads after a rotated refresh token was rejected send the file's token once at most") {
    // The issue's case: the state directory's token is set aside, and
    // refresh_token_file still holds the first token, rotated away long ago.
    // Reloads may try it once (the ledger of spent tokens makes that none);
    // rejected too, it is not sent again however many SIGHUPs follow.
    World w;
    auto d = Daemon::start(w.cfg, w.deps());
    REQUIRE(d);
    (*d)->step(std::chrono::milliseconds(0));
    REQUIRE(w.transport.answer("alpha", token("at-alpha-1", 600, "rt-alpha-2")));
    REQUIRE(w.transport.answer("beta", token("at-beta-1", 600)));
    (*d)->step(std::chrono::milliseconds(0));
    w.now = w.mono_of(w.read("alpha")->next_refresh_ms());
    const HttpResponse rejected =
        error_response(400, R"({"error":"invalid_grant","error_description":"revoked"})");
    int alpha_requests = 0;
    for (int i = 0; i < 200; ++i) {  // 20 s of SIGHUPs, 100 ms apart
        if (i > 0) (*d)->reload(w.cfg);
        (*d)->step(std::chrono::milliseconds(0));
        if (!w.transport.body_for("alpha").empty()) {
            ++alpha_requests;
            REQUIRE(w.transport.answer("alpha", rejected));
        }
        w.transport.answer("beta", token("at-beta", 600));
        w.now += 100;
    }
    CHECK(alpha_requests <= 2);  // the rejected rt-alpha-2 once, rt-alpha-1 at most once
    CHECK(w.read("alpha")->state() == tokenshm::State::reauth);
}

static std::string slurp(const std::string& path) {
    std::ifstream f(path);
    return std::string(std::istreambuf_iterator<char>(f), {});
}

TEST_CASE("the daemon counts token requests by outcome and keeps sinks with the token",
          "[metrics][sinks]") {
    World w;
    const std::string prom = (w.dir.path / "tokenshm.prom").string();
    const std::string sink = (w.dir.path / "alpha.token").string();
    w.cfg.metrics_textfile = prom;
    SinkConfig s;
    s.path = sink;
    w.cfg.credentials[0].sinks = {s};
    auto d = Daemon::start(w.cfg, w.deps());
    REQUIRE(d);
    const auto answer_beta = [&](HttpResponse r) {
        w.now += 60'000;  // past any backoff
        (*d)->step(std::chrono::milliseconds(0));
        REQUIRE(w.transport.answer("beta", std::move(r)));
        (*d)->step(std::chrono::milliseconds(0));
    };
    (*d)->step(std::chrono::milliseconds(0));
    REQUIRE(w.transport.answer("alpha", token("at-alpha-1", 600)));
    (*d)->step(std::chrono::milliseconds(0));
    CHECK(slurp(sink) == "at-alpha-1\n");
    answer_beta(error_response(503, R"({"error":"temporarily_unavailable"})"));
    HttpResponse lost;
    lost.outcome = HttpResponse::Outcome::sent_no_response;
    lost.transport_error = "timed out";
    answer_beta(lost);
    answer_beta(error_response(400, R"({"error":"invalid_grant"})"));
    w.now += 60'000;
    (*d)->step(std::chrono::milliseconds(0));

    const std::string text = slurp(prom);
    INFO(text);
    const auto has = [&](const std::string& line) {
        return text.find("\n" + line + "\n") != std::string::npos;
    };
    const std::string a = "{credential=\"alpha\",outcome=", b = "{credential=\"beta\",outcome=";
    CHECK(has("tokenshm_token_requests_total" + a + "\"success\"} 1"));
    CHECK(has("tokenshm_token_requests_total" + b + "\"success\"} 0"));
    CHECK(has("tokenshm_token_requests_total" + b + "\"transient_error\"} 1"));
    CHECK(has("tokenshm_token_requests_total" + b + "\"network_error\"} 1"));
    CHECK(has("tokenshm_token_requests_total" + b + "\"rejected\"} 1"));
    CHECK(has("tokenshm_token_request_duration_seconds_count{credential=\"beta\"} 3"));
    CHECK(has("tokenshm_credential_state{credential=\"beta\",state=\"reauth\"} 1"));

    Config next = w.cfg;
    next.credentials.erase(next.credentials.begin());  // alpha goes, and its sink
    (*d)->reload(next);
    CHECK_FALSE(fs::exists(sink));
    w.now += 60'000;
    (*d)->step(std::chrono::milliseconds(0));
    CHECK(slurp(prom).find("credential=\"alpha\"") == std::string::npos);
}
