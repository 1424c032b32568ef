// The grant survives the daemon's life: a spent refresh token is never sent
// again across restarts and reloads, a token whose answer never came is not
// spent, and --once never drops a successor without saying so. The daemon
// runs with a fake transport and a fake clock against a real segment and a
// real state directory (or one whose writes are made to fail).
#include "daemon.hpp"
#include "fake_transport.hpp"
#include "log.hpp"
#include "spent_ledger.hpp"

#include <tokenshm/reader.hpp>

#include <unistd.h>

#include <catch2/catch.hpp>

#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <vector>

using namespace tokenshm::refresher;
namespace stdfs = std::filesystem;

namespace {

using tokenshm::test::FakeTransport;

HttpResponse token(const std::string& at, int expires_in, const std::string& rt = {}) {
    return tokenshm::test::token_response(at, expires_in, rt);
}

HttpResponse invalid_grant() {
    HttpResponse r;
    r.outcome = HttpResponse::Outcome::response;
    r.status = 400;
    r.content_type = "application/json";
    r.body = R"({"error":"invalid_grant","error_description":"grant request is invalid"})";
    return r;
}

// Makes the rename of a state file fail (read-only or full state directory)
// while `failing` is set, and the ledger's open while `fail_ledger` is;
// counts the attempts.
struct FailingRenames : PosixFileSystem {
    bool failing = false;
    bool fail_ledger = false;
    int attempts = 0;
    FsResult<int> open(const std::string& path, int flags, mode_t mode) override {
        if (fail_ledger && path.find("spent.ledger") != std::string::npos)
            return tokenshm::Unexpected<FsError>{FsError{"open", EROFS, path}};
        return PosixFileSystem::open(path, flags, mode);
    }
    FsResult<Done> rename(const std::string& from, const std::string& to) override {
        if (to.ends_with(".refresh_token")) {
            ++attempts;
            if (failing) return tokenshm::Unexpected<FsError>{FsError{"rename", EROFS, to}};
        }
        return PosixFileSystem::rename(from, to);
    }
};

struct World {
    std::string dir;
    std::string segment = "tokenshm-test-grant-" + std::to_string(::getpid());
    FakeTransport transport;
    FailingRenames fs;
    std::int64_t now = 1'700'000'000'000;
    Config cfg;
    std::vector<std::string> log;

    World() {
        std::string t = (stdfs::temp_directory_path() / "tokenshm-grant-XXXXXX").string();
        REQUIRE(::mkdtemp(t.data()) != nullptr);
        dir = t;
        set_log_sink([this](std::string_view line) { log.emplace_back(line); });
        cfg.segment = segment;
        cfg.state_dir = dir + "/state";
        CredentialConfig c;
        c.name = "alpha";
        c.token_endpoint = EndpointUrl::parse("https://alpha.example.test/token").value();
        c.client_id = "alpha-client";
        c.client_secret = Secret("secret-alpha");
        c.refresh_token_file = dir + "/alpha.rt";
        std::ofstream(*c.refresh_token_file) << "rt-alpha-1\n";
        stdfs::permissions(*c.refresh_token_file,
                           stdfs::perms::owner_read | stdfs::perms::owner_write);
        cfg.credentials.push_back(c);
    }
    ~World() {
        (void)tokenshm::shm::sys::shm_unlink("/" + segment);
        set_log_sink({});
        std::error_code ec;
        stdfs::remove_all(dir, ec);
    }
    DaemonDeps deps() {
        return DaemonDeps{&transport, &fs, [this] { return Now{now, now}; }, [] { return 0.5; }};
    }
    tokenshm::Expected<std::pair<tokenshm::State, std::string>, tokenshm::Error> slot() {
        auto r = tokenshm::Reader::open(segment);
        REQUIRE(r);
        auto h = r->lookup("alpha");
        if (!h) return tokenshm::Unexpected{h.error().code};
        auto t = h->inspect();
        if (!t) return tokenshm::Unexpected{t.error()};
        return std::pair{t->state(), std::string(t->last_error())};
    }
    bool logged(const std::string& part) const {
        for (const auto& l : log)
            if (l.find(part) != std::string::npos) return true;
        return false;
    }
    // One rotation (rt-alpha-1 -> rt-alpha-2) and then invalid_grant on
    // rt-alpha-2: the state file is set aside, the credential in reauth.
    void rotate_then_reject(Daemon& d) {
        d.step(std::chrono::milliseconds(0));
        REQUIRE(transport.answer("alpha", token("at-alpha-1", 600, "rt-alpha-2")));
        d.step(std::chrono::milliseconds(0));
        now += 500'000;
        d.step(std::chrono::milliseconds(0));
        REQUIRE(transport.answer("alpha", invalid_grant()));
        d.step(std::chrono::milliseconds(0));
        REQUIRE(slot()->first == tokenshm::State::reauth);
        REQUIRE(stdfs::exists(cfg.state_dir + "/alpha.refresh_token.rejected"));
    }
};

const std::string kSpentMessage = " holds a spent refresh token (it was already rotated";

}  // namespace

TEST_CASE("after reauth, neither a restart nor a reload sends the spent original token") {
    World w;
    {
        auto d = Daemon::start(w.cfg, w.deps());
        REQUIRE(d);
        w.rotate_then_reject(**d);
        CHECK(w.transport.sent_with("rt-alpha-1") == 1);
        CHECK(w.transport.sent_with("rt-alpha-2") == 1);

        // SIGHUP with the same configuration: refresh_token_file still holds
        // the original, which is spent.
        (*d)->reload(w.cfg);
        w.now += 10'000;  // past min_interval_s, which a reload does not reset
        (*d)->step(std::chrono::milliseconds(0));
        CHECK(w.transport.pending.empty());
        CHECK(w.transport.sent_with("rt-alpha-1") == 1);
        CHECK(w.slot()->second.find("refresh_token_file " +
                                    *w.cfg.credentials[0].refresh_token_file + kSpentMessage) == 0);
    }  // the refresher stops

    w.now += 60'000;
    auto d = Daemon::start(w.cfg, w.deps());
    REQUIRE(d);  // the other credentials would go on: only this one waits
    (*d)->step(std::chrono::milliseconds(0));
    w.now += 3'600'000;
    (*d)->step(std::chrono::milliseconds(0));
    CHECK(w.transport.pending.empty());
    CHECK(w.transport.sent_with("rt-alpha-1") == 1);  // still only the first, legitimate use
    const auto slot = w.slot();
    REQUIRE(slot);
    CHECK(slot->first == tokenshm::State::reauth);
    // The slot shows the start of the reason (its last_error is short); the log has it whole.
    CHECK(slot->second.find("refresh_token_file " + *w.cfg.credentials[0].refresh_token_file +
                            kSpentMessage) == 0);
    CHECK(w.logged("event=reauth refresh_token_file " + *w.cfg.credentials[0].refresh_token_file +
                   kSpentMessage));
    CHECK(
        w.logged("Run tokenshm login --config FILE NAME, or put a fresh refresh token from the "
                 "authorization server in " +
                 *w.cfg.credentials[0].refresh_token_file + " and send SIGHUP"));

    // A person puts a fresh token in the file and reloads: it is used.
    std::ofstream(*w.cfg.credentials[0].refresh_token_file) << "rt-alpha-fresh\n";
    (*d)->reload(w.cfg);
    (*d)->step(std::chrono::milliseconds(0));
    CHECK(w.transport.sent_with("rt-alpha-fresh") == 1);
}

TEST_CASE("a token whose answer never arrived is not spent: the next run sends it again") {
    World w;
    {
        auto d = Daemon::start(w.cfg, w.deps());
        REQUIRE(d);
        (*d)->step(std::chrono::milliseconds(0));
        HttpResponse lost;
        lost.outcome = HttpResponse::Outcome::sent_no_response;
        lost.transport_error = "Operation timed out";
        REQUIRE(w.transport.answer("alpha", lost));
        (*d)->step(std::chrono::milliseconds(0));
    }
    auto d = Daemon::start(w.cfg, w.deps());
    REQUIRE(d);
    (*d)->step(std::chrono::milliseconds(0));
    CHECK(w.transport.sent_with("rt-alpha-1") == 2);
    CHECK_FALSE(stdfs::exists(w.cfg.state_dir + "/" + std::string(SpentLedger::file_name)));
}

TEST_CASE("--once retries a successor it cannot save for a bounded time, then exits 1 saying so") {
    World w;
    auto d = Daemon::start(w.cfg, w.deps());
    REQUIRE(d);
    w.fs.failing = true;
    // The server answers at once; every wait moves the clock a second.
    w.transport.on_poll = [&w] {
        w.transport.answer("alpha", token("at-alpha-1", 600, "rt-alpha-2"));
        w.now += 1000;
    };
    const std::int64_t before = w.now;
    CHECK((*d)->run(-1, true) == 1);
    // About ten seconds of tries, one a second, then the end.
    CHECK(w.now - before >= 10'000);
    CHECK(w.now - before <= 13'000);
    CHECK(w.fs.attempts >= 10);
    CHECK(w.fs.attempts <= 13);
    CHECK(
        w.logged("event=successor_lost the rotated refresh token could not be saved after "
                 "retrying for 10s (saving the refresh token of alpha: rename("));
    CHECK_FALSE(w.logged("rt-alpha-2"));  // never the token itself
    CHECK_FALSE(stdfs::exists(w.cfg.state_dir + "/alpha.refresh_token"));
    // Only renames fail here, so the ledger could take the spent original:
    // the next run does not send it.
    CHECK(w.logged("the next run will not send it and stays in reauth"));
    d->reset();
    w.fs.failing = false;
    w.transport.on_poll = {};
    w.transport.bodies.clear();
    auto next = Daemon::start(w.cfg, w.deps());
    REQUIRE(next);
    w.now += 3'600'000;
    (*next)->step(std::chrono::milliseconds(0));
    CHECK(w.transport.bodies.empty());
    CHECK(w.slot()->first == tokenshm::State::reauth);
}

TEST_CASE(
    "--once with a ledger as unwritable as the state file says the next run sends the "
    "spent token") {
    World w;
    auto d = Daemon::start(w.cfg, w.deps());
    REQUIRE(d);
    w.fs.failing = true;
    w.fs.fail_ledger = true;
    w.transport.on_poll = [&w] {
        w.transport.answer("alpha", token("at-alpha-1", 600, "rt-alpha-2"));
        w.now += 1000;
    };
    CHECK((*d)->run(-1, true) == 1);
    CHECK(
        w.logged("the next run will send it and be refused (reauth; a server that detects "
                 "reuse revokes the grant)"));
}

TEST_CASE("--once saves the successor when the state directory recovers within the bound") {
    World w;
    auto d = Daemon::start(w.cfg, w.deps());
    REQUIRE(d);
    w.fs.failing = true;
    int polls = 0;
    w.transport.on_poll = [&] {
        w.transport.answer("alpha", token("at-alpha-1", 600, "rt-alpha-2"));
        w.now += 1000;
        if (++polls == 4) w.fs.failing = false;  // space was freed
    };
    CHECK((*d)->run(-1, true) == 0);
    CHECK_FALSE(w.logged("successor_lost"));
    // The response-to-rename time, retries included, is reported at exit.
    CHECK(w.logged("event=persist_times count=1 max_ms="));
    PosixFileSystem posix;
    StateStore store(posix, w.cfg.state_dir);
    auto saved = store.load("alpha");
    REQUIRE(saved);
    REQUIRE(*saved);
    CHECK((*saved)->reveal() == "rt-alpha-2");
    // Saved, so the token it replaced is ledgered as spent.
    CHECK(*store.spent_by(refresh_token_fingerprint("rt-alpha-1")) ==
          std::optional<std::string>("alpha"));
}
