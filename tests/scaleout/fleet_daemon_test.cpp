// Daemons as hosts of one fleet (issue 12) against a real etcd member, each
// with its own segment, state directory and fake token endpoint (a scripted
// transport): only the leader sends token requests; a follower serves the
// leader's token from its own segment and keeps the grant's refresh token;
// a new leader continues from the sealed refresh token in etcd; a refresh
// token another leadership sent without publishing the answer is held, never
// sent again. Real time: etcd's leases run on etcd's clock.
// Skipped, saying why, only when /usr/bin/etcd is absent; under
// TOKENSHM_CI=1 that skip fails.
#include "ci_skip.hpp"
#include "daemon.hpp"
#include "etcd_member.hpp"
#include "log.hpp"
#include "refresher/fake_transport.hpp"

#include <tokenshm/reader.hpp>

#include <catch2/catch.hpp>

#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

using namespace tokenshm::refresher;
using namespace tokenshm::refresher::testing;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

using tokenshm::test::FakeTransport;

constexpr const char* kEndpoint = "https://auth.example.test/token";

// A host's etcd connection that a test can cut (every call: not sent).
struct CuttableGateway : EtcdGateway {
    std::unique_ptr<CurlEtcdGateway> real;
    std::shared_ptr<bool> cut;
    GatewayAnswer post(std::string_view path, const WipedString& body,
                       const Secret& token) override {
        if (!*cut) return real->post(path, body, token);
        GatewayAnswer a;
        a.outcome = GatewayAnswer::Outcome::not_sent;
        a.transport_error = "cut off by the test";
        return a;
    }
};

struct Host {
    std::string name;
    std::shared_ptr<bool> cut = std::make_shared<bool>(false);
    std::string etcd_url;
    fs::path dir;
    std::string segment;
    FakeTransport transport;
    PosixFileSystem posix;
    Config cfg;
    std::unique_ptr<Daemon> daemon;

    Host(std::string host, const fs::path& root, const EtcdMember& etcd, const std::string& prefix,
         const std::string& key_file, std::optional<std::string> refresh_token)
        : name(std::move(host)), etcd_url(etcd.client_url), dir(root / name) {
        fs::create_directories(dir);
        segment = "tokenshm-test-fleet-" + name + "-" + std::to_string(::getpid());
        cfg.segment = segment;
        cfg.state_dir = (dir / "state").string();
        CredentialConfig c;
        c.name = "alpha";
        c.token_endpoint = EndpointUrl::parse(kEndpoint).value();
        c.client_id = "alpha-client";
        c.client_secret = Secret("secret-alpha");
        c.min_interval = 1s;
        c.timeout = 3s;  // what the config makes of it with a 5 s lease
        if (refresh_token) {
            const std::string file = (dir / "alpha.rt").string();
            std::ofstream(file) << *refresh_token << "\n";
            fs::permissions(file, fs::perms::owner_read | fs::perms::owner_write);
            c.refresh_token_file = file;
        }
        cfg.credentials.push_back(c);
        CoordinationConfig co;
        co.etcd.endpoints.push_back(EndpointUrl::parse(etcd.client_url).value());
        co.etcd.prefix = prefix;
        co.etcd.lease_ttl = 5s;
        co.seal_key_file = key_file;
        cfg.coordination = co;
    }
    ~Host() {
        daemon.reset();
        (void)tokenshm::shm::sys::shm_unlink("/" + segment);
    }
    void start() {
        DaemonDeps deps{&transport, &posix, system_now, [] { return 0.5; }};
        deps.host = name;
        deps.etcd_gateway = [this]() -> std::unique_ptr<EtcdGateway> {
            auto g = std::make_unique<CuttableGateway>();
            g->real = gateway({EndpointUrl::parse(etcd_url).value()}, 2s);
            g->cut = cut;
            return g;
        };
        auto d = Daemon::start(cfg, deps);
        INFO(name << ": " << (d ? std::string() : d.error().message));
        REQUIRE(d.has_value());
        daemon = std::move(*d);
    }
    // A crash: no resign, no drain; the lease stays until its TTL.
    void crash() { daemon.reset(); }
    void step() {
        if (daemon) daemon->step(0ms);
    }
    std::string token() const {
        auto r = tokenshm::Reader::open(segment);
        if (!r) return {};
        auto h = r->lookup("alpha");
        if (!h) return {};
        auto t = h->inspect();
        return t ? std::string(t->token()) : std::string();
    }
    std::string saved_refresh_token() {
        auto t = StateStore(posix, cfg.state_dir).load("alpha");
        REQUIRE(t);
        return *t ? std::string((*t)->reveal()) : std::string();
    }
    std::string status() { return daemon->control_answer(R"({"op":"status"})"); }
    std::string ask(const std::string& op) {
        return daemon->control_answer(R"({"op":")" + op + R"(","name":"alpha"})");
    }
    bool leads() { return daemon && status().find(R"("role":"leader")") != std::string::npos; }
    bool sending() const { return !transport.body_for("auth.example.test").empty(); }
    // Answers the token request in flight: access token `at`, refresh token `rt`.
    void answer(const std::string& at, const std::string& rt) {
        REQUIRE(
            transport.answer("auth.example.test", tokenshm::test::token_response(at, 3600, rt)));
    }
    bool sent_refresh_token(const std::string& rt) const {
        return transport.body_for("auth.example.test").find("refresh_token=" + rt) !=
               std::string::npos;
    }
};

struct Fleet3 {
    EtcdMember etcd;
    fs::path root;
    std::string key_file;
    std::string prefix = "/tokenshm/fleet-" + std::to_string(::getpid());
    std::vector<std::unique_ptr<Host>> hosts;

    Fleet3() {
        // TOKENSHM_TEST_LOG=1 shows the daemons' log lines (never a token).
        if (!::getenv("TOKENSHM_TEST_LOG")) set_log_sink([](std::string_view) {});
        std::string t = (fs::temp_directory_path() / "tokenshm-fleet-XXXXXX").string();
        REQUIRE(::mkdtemp(t.data()) != nullptr);
        root = t;
        key_file = (root / "seal.key").string();
        std::ofstream(key_file) << std::string(32, 'K');
        fs::permissions(key_file, fs::perms::owner_read | fs::perms::owner_write);
    }
    ~Fleet3() {
        hosts.clear();
        fs::remove_all(root);
        set_log_sink({});
    }
    bool ready() {
        auto g = gateway({EndpointUrl::parse(etcd.client_url).value()});
        EtcdClient c(*g);
        return etcd.wait_ready(c);
    }
    Host& add(const std::string& name, std::optional<std::string> refresh_token,
              const std::function<void(Config&)>& tune = {}) {
        hosts.push_back(std::make_unique<Host>(name, root, etcd, prefix, key_file, refresh_token));
        if (tune) tune(hosts.back()->cfg);
        hosts.back()->start();
        return *hosts.back();
    }
    // host-a, alone with refresh token rt-0: it leads and sends it.
    Host& first_leader() {
        Host& a = add("host-a", "rt-0");
        REQUIRE(pump([&] { return a.sending(); }));
        return a;
    }
    // Steps every host until `done` (at most `limit` of real time).
    bool pump(const std::function<bool()>& done, std::chrono::seconds limit = 20s) {
        const auto until = std::chrono::steady_clock::now() + limit;
        while (std::chrono::steady_clock::now() < until) {
            for (auto& h : hosts)
                h->step();
            if (done()) return true;
            std::this_thread::sleep_for(20ms);
        }
        return false;
    }
};

}  // namespace

TEST_CASE("one leader refreshes; followers serve its token, keep its refresh token, never send",
          "[scaleout][fleet]") {
    if (::access(kEtcd, X_OK) != 0)
        SKIP_OR_FAIL_UNDER_CI(kEtcd << " is absent: install Debian's etcd-server (scripts/setup)");
    Fleet3 f;
    REQUIRE(f.ready());
    Host& a = f.first_leader();
    CHECK(a.sent_refresh_token("rt-0"));
    Host& b = f.add("host-b", std::nullopt);
    Host& c = f.add("host-c", std::nullopt);
    a.answer("at-1", "rt-1");
    REQUIRE(f.pump([&] { return b.token() == "at-1" && c.token() == "at-1"; }));
    CHECK(a.token() == "at-1");
    CHECK(a.leads());
    CHECK_FALSE(b.leads());
    CHECK(b.status().find(R"("role":"follower")") != std::string::npos);
    CHECK(b.transport.started == 0);
    CHECK(c.transport.started == 0);
    CHECK(a.saved_refresh_token() == "rt-1");
    REQUIRE(f.pump([&] { return b.saved_refresh_token() == "rt-1"; }));
    CHECK(c.saved_refresh_token() == "rt-1");
    // Versions only grow on a follower: a second refresh is a newer version.
    (void)a.daemon->control_answer(R"({"op":"refresh","name":"alpha"})");
    REQUIRE(f.pump([&] { return a.sending(); }));
    CHECK(a.sent_refresh_token("rt-1"));
    a.answer("at-2", "rt-2");
    REQUIRE(f.pump([&] { return b.token() == "at-2" && c.token() == "at-2"; }));
    CHECK(b.transport.started == 0);
    CHECK(c.transport.started == 0);
}

TEST_CASE("the leader crashes: another host leads within the lease and continues the grant",
          "[scaleout][fleet]") {
    if (::access(kEtcd, X_OK) != 0)
        SKIP_OR_FAIL_UNDER_CI(kEtcd << " is absent: install Debian's etcd-server (scripts/setup)");
    Fleet3 f;
    REQUIRE(f.ready());
    Host& a = f.first_leader();
    Host& b = f.add("host-b", std::nullopt);
    a.answer("at-1", "rt-1");
    REQUIRE(f.pump([&] { return b.token() == "at-1"; }));
    a.crash();
    const auto crashed = std::chrono::steady_clock::now();
    REQUIRE(f.pump([&] { return b.leads(); }));
    // Within the lease (5 s) and the follower's next look at the leader key.
    CHECK(std::chrono::steady_clock::now() - crashed < 5s + 3s);
    (void)b.daemon->control_answer(R"({"op":"refresh","name":"alpha"})");
    REQUIRE(f.pump([&] { return b.sending(); }));
    CHECK(b.sent_refresh_token("rt-1"));
    b.answer("at-2", "rt-2");
    REQUIRE(f.pump([&] { return b.token() == "at-2" && b.saved_refresh_token() == "rt-2"; }));
}

TEST_CASE("a refresh token a crashed leader sent is held by its successor, never sent again",
          "[scaleout][fleet]") {
    if (::access(kEtcd, X_OK) != 0)
        SKIP_OR_FAIL_UNDER_CI(kEtcd << " is absent: install Debian's etcd-server (scripts/setup)");
    Fleet3 f;
    REQUIRE(f.ready());
    // The same refresh token deployed on both hosts: the danger case.
    Host& a = f.first_leader();
    Host& b = f.add("host-b", "rt-0");
    a.crash();  // rt-0 was sent; its answer (and successor) died with host-a
    REQUIRE(f.pump([&] { return b.leads(); }));
    REQUIRE(f.pump([&] { return b.status().find(R"("held":"held: )") != std::string::npos; }));
    (void)b.daemon->control_answer(R"({"op":"refresh","name":"alpha"})");
    f.pump([] { return false; }, 2s);
    CHECK(b.transport.started == 0);
    CHECK(b.status().find("host-a") != std::string::npos);  // says who sent it

    // A person runs tokenshm login on a third host: its refresher offers the
    // new grant's refresh token to the held leader through etcd.
    Host& c = f.add("host-c", std::nullopt);
    REQUIRE(f.pump([&] { return c.status().find(R"("role":"follower")") != std::string::npos; }));
    REQUIRE(StateStore(c.posix, c.cfg.state_dir).save("alpha", Secret("rt-new")));
    CHECK(c.ask("token_stored").find(R"("action":"offered")") != std::string::npos);
    REQUIRE(f.pump([&] { return b.status().find(R"("held":"")") != std::string::npos; }));
    CHECK(b.saved_refresh_token() == "rt-new");
    (void)b.ask("refresh");
    REQUIRE(f.pump([&] { return b.sending(); }));
    CHECK(b.sent_refresh_token("rt-new"));
    CHECK(c.transport.started == 0);
}

TEST_CASE(
    "a follower's refresh is asked of the leader through etcd; status and metrics say who leads",
    "[scaleout][fleet]") {
    if (::access(kEtcd, X_OK) != 0)
        SKIP_OR_FAIL_UNDER_CI(kEtcd << " is absent: install Debian's etcd-server (scripts/setup)");
    Fleet3 f;
    REQUIRE(f.ready());
    Host& a = f.first_leader();
    const std::string metrics = (f.root / "b.prom").string();
    Host& b = f.add("host-b", std::nullopt, [&](Config& c) { c.metrics_textfile = metrics; });
    a.answer("at-1", "rt-1");
    REQUIRE(f.pump([&] { return b.token() == "at-1"; }));

    const std::string asked = b.ask("refresh");
    CHECK(asked.find(R"("action":"refreshing")") != std::string::npos);
    CHECK(b.ask("refresh").find(R"("action":"joined")") != std::string::npos);
    REQUIRE(f.pump([&] { return a.sending(); }));  // the leader took it up
    a.answer("at-2", "rt-2");
    REQUIRE(f.pump([&] { return b.token() == "at-2"; }));
    CHECK(b.transport.started == 0);

    const std::string co = b.daemon->control_answer(R"({"op":"coordination"})");
    CHECK(co.find(R"("role":"follower")") != std::string::npos);
    CHECK(co.find(R"("leader_host":"host-a")") != std::string::npos);
    CHECK(co.find(R"("etcd":"ok")") != std::string::npos);
    CHECK(a.daemon->control_answer(R"({"op":"coordination"})").find(R"("role":"leader")") !=
          std::string::npos);
    const auto prom = [&] {
        std::ifstream in(metrics);
        return std::string(std::istreambuf_iterator<char>(in), {});
    };
    REQUIRE(f.pump([&] {
        return prom().find(R"(tokenshm_coordination_role{role="follower"} 1)") != std::string::npos;
    }));
    CHECK(prom().find(R"(tokenshm_coordination_leader{host="host-a",)") != std::string::npos);
    CHECK(prom().find("tokenshm_coordination_etcd_up 1") != std::string::npos);
    // Starting without a refresh token of its own is no replay refused.
    CHECK(prom().find(R"(tokenshm_replays_refused_total{credential="alpha"} 0)") !=
          std::string::npos);
    CHECK(prom().find("at-2") == std::string::npos);
}

TEST_CASE("a leader cut off after saving a successor: once it restarts, the held leader is rescued",
          "[scaleout][fleet]") {
    if (::access(kEtcd, X_OK) != 0)
        SKIP_OR_FAIL_UNDER_CI(kEtcd << " is absent: install Debian's etcd-server (scripts/setup)");
    Fleet3 f;
    REQUIRE(f.ready());
    Host& a = f.first_leader();
    Host& b = f.add("host-b", std::nullopt);
    a.answer("at-1", "rt-1");
    REQUIRE(f.pump([&] { return b.token() == "at-1" && b.saved_refresh_token() == "rt-1"; }));
    (void)a.ask("refresh");
    REQUIRE(f.pump([&] { return a.sending(); }));  // rt-1 is marked sent in etcd
    *a.cut = true;                                 // etcd unreachable from host-a from now on
    a.answer("at-2", "rt-2");
    REQUIRE(f.pump([&] { return a.saved_refresh_token() == "rt-2"; }));
    a.crash();  // rt-2 is only in host-a's state directory
    REQUIRE(f.pump([&] { return b.leads(); }));
    REQUIRE(f.pump([&] { return b.status().find(R"("held":"held: )") != std::string::npos; }));
    CHECK(b.transport.started == 0);  // rt-1 is never sent again

    *a.cut = false;
    const int sent_before = a.transport.started;
    a.start();  // host-a comes back: a follower that holds the successor
    REQUIRE(f.pump([&] { return b.token() == "at-2" && b.saved_refresh_token() == "rt-2"; }));
    CHECK(b.status().find(R"("held":"")") != std::string::npos);
    (void)b.ask("refresh");
    REQUIRE(f.pump([&] { return b.sending(); }));
    CHECK(b.sent_refresh_token("rt-2"));
    CHECK(a.transport.started == sent_before);  // the restarted host-a follows
}

TEST_CASE(
    "a host with another seal key never sends and stands aside so that a host with the key leads",
    "[scaleout][fleet]") {
    if (::access(kEtcd, X_OK) != 0)
        SKIP_OR_FAIL_UNDER_CI(kEtcd << " is absent: install Debian's etcd-server (scripts/setup)");
    Fleet3 f;
    REQUIRE(f.ready());
    const std::string other_key = (f.root / "other.key").string();
    std::ofstream(other_key) << std::string(32, 'O');
    fs::permissions(other_key, fs::perms::owner_read | fs::perms::owner_write);
    std::vector<std::string> lines;
    set_log_sink([&](std::string_view l) { lines.emplace_back(l); });

    Host& a = f.first_leader();
    a.answer("at-1", "rt-1");
    Host& wrong =
        f.add("host-wrong", "rt-0", [&](Config& c) { c.coordination->seal_key_file = other_key; });
    REQUIRE(f.pump([&] {
        for (const auto& l : lines)
            if (l.find("event=seal_refused") != std::string::npos) return true;
        return false;
    }));
    Host& c = f.add("host-c", std::nullopt);
    REQUIRE(f.pump([&] { return c.token() == "at-1"; }));
    a.crash();
    REQUIRE(f.pump([&] { return c.leads(); }, 40s));
    (void)c.ask("refresh");
    REQUIRE(f.pump([&] { return c.sending(); }));
    CHECK(c.sent_refresh_token("rt-1"));
    CHECK(wrong.transport.started == 0);
    CHECK(wrong.token().empty());  // it never could open a publication
    const std::string said = wrong.daemon->control_answer(R"({"op":"coordination"})");
    CHECK(said.find(R"("seal":"ok")") == std::string::npos);  // status says why
    CHECK(said.find(other_key) != std::string::npos);
    CHECK(c.daemon->control_answer(R"({"op":"coordination"})").find(R"("seal":"ok")") !=
          std::string::npos);
    // Said once, and once per stand-aside (30 s), not once a pass.
    std::size_t refused_lines = 0;
    for (const auto& l : lines)
        if (l.find("event=seal_refused") != std::string::npos) ++refused_lines;
    CHECK(refused_lines <= 4);
    for (const auto& l : lines) {
        if (l.find("seal_refused") == std::string::npos) continue;
        CHECK(l.find(other_key) != std::string::npos);  // names the file
        CHECK(l.find("rt-") == std::string::npos);      // never a value
        CHECK(l.find("at-1") == std::string::npos);
    }
    set_log_sink([](std::string_view) {});
}
