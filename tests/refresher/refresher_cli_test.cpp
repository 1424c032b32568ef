// The tokenshm-refresher binary itself: --check-config judges every file the
// configuration names without ever blocking on one, and a running refresher
// is not dumpable unless --allow-core-dumps says so. Every child is bounded
// in time and killed if it overstays.
#include "ci_skip.hpp"
#include "temp_dir.hpp"

#include <catch2/catch.hpp>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

std::string refresher_binary() {
    const char* build = std::getenv("TOKENSHM_BUILD_DIR");
    REQUIRE(build != nullptr);
    return std::string(build) + "/refresher/tokenshm-refresher";
}

using tokenshm::test::TempDir;

// A started refresher: its pid and a pipe carrying its stdout and stderr.
struct Child {
    pid_t pid = -1;
    int out = -1;
    std::string output;

    // Reads output until `want` appears or the deadline passes; true if it appeared.
    bool read_until(const std::string& want, std::chrono::milliseconds limit) {
        const auto deadline = Clock::now() + limit;
        while (output.find(want) == std::string::npos) {
            const auto left =
                std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
            if (left.count() <= 0) return false;
            pollfd p{out, POLLIN, 0};
            if (::poll(&p, 1, static_cast<int>(left.count())) != 1) return false;
            char buf[4096];
            const ssize_t n = ::read(out, buf, sizeof buf);
            if (n <= 0) return output.find(want) != std::string::npos;
            output.append(buf, static_cast<std::size_t>(n));
        }
        return true;
    }
    // Waits for the exit (killing the child after `limit`); the exit status, or
    // nullopt when it had to be killed.
    std::optional<int> wait(std::chrono::milliseconds limit) {
        const auto deadline = Clock::now() + limit;
        read_until("\x01never\x01", limit);  // drains the output until EOF or the limit
        int status = 0;
        pid_t r = 0;
        while ((r = ::waitpid(pid, &status, WNOHANG)) == 0 && Clock::now() < deadline)
            ::usleep(10'000);
        ::close(out);
        if (r == 0) {
            ::kill(pid, SIGKILL);
            REQUIRE(::waitpid(pid, &status, 0) == pid);
            return std::nullopt;
        }
        REQUIRE(r == pid);
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
};

Child start(const std::vector<std::string>& args, std::optional<uid_t> run_as = std::nullopt) {
    int fds[2];
    REQUIRE(::pipe2(fds, O_CLOEXEC) == 0);
    const std::string binary = refresher_binary();
    std::vector<char*> argv{const_cast<char*>(binary.c_str())};
    for (const auto& a : args)
        argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        ::dup2(fds[1], 1);
        ::dup2(fds[1], 2);
        if (run_as && (::setgid(*run_as) != 0 || ::setuid(*run_as) != 0)) ::_exit(126);
        ::execv(binary.c_str(), argv.data());
        ::_exit(127);
    }
    ::close(fds[1]);
    return Child{pid, fds[0], {}};
}

std::string credential_json(const std::string& fields) {
    return R"({"credentials": [{"name": "storage", "client_id": "uploader",
        "token_endpoint": "http://127.0.0.1:9/token", )" +
           fields + "}]}";
}

std::size_t lines(const std::string& s) {
    std::size_t n = 0;
    for (char c : s)
        n += c == '\n';
    return n;
}

}  // namespace

TEST_CASE("--check-config names a FIFO secret file at once, in one line, exit 2", "[cli]") {
    TempDir dir("cli_test", 0755);
    const std::string fifo = dir.path + "/secret.fifo";
    REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
    SECTION("client_secret_file") {
        const std::string config =
            dir.write("c.json",
                      credential_json(R"("grant": "client_credentials", "client_secret_file": ")" +
                                      fifo + "\""),
                      0600);
        Child c = start({"--config", config, "--check-config"});
        CHECK(c.wait(std::chrono::seconds(10)) == std::optional<int>(2));
        CHECK(c.output.find(fifo + ": not a regular file (a FIFO)") != std::string::npos);
        CHECK(lines(c.output) == 1);
    }
    SECTION("refresh_token_file") {
        const std::string secret = dir.write("s.secret", "client-secret-value\n", 0600);
        const std::string fixed =
            dir.write("rt.json",
                      R"({"state_dir": ")" + dir.path +
                          R"(/state", "credentials": [{"name": "storage", "client_id": "uploader",
                "token_endpoint": "http://127.0.0.1:9/token", "grant": "refresh_token",
                "client_secret_file": ")" +
                          secret + R"(", "refresh_token_file": ")" + fifo + R"("}]})",
                      0600);
        REQUIRE(::mkdir((dir.path + "/state").c_str(), 0700) == 0);
        Child c = start({"--config", fixed, "--check-config"});
        CHECK(c.wait(std::chrono::seconds(10)) == std::optional<int>(2));
        CHECK(c.output.find("refresh_token_file: " + fifo + ": not a regular file (a FIFO)") !=
              std::string::npos);
        CHECK(lines(c.output) == 1);
    }
}

TEST_CASE("--check-config checks ca_file: missing is exit 2, present is OK", "[cli]") {
    TempDir dir("cli_test", 0755);
    const std::string secret = dir.write("s.secret", "client-secret-value\n", 0600);
    const auto config_with_ca = [&](const std::string& ca) {
        return dir.write(
            "c.json",
            credential_json(R"("grant": "client_credentials", "client_secret_file": ")" + secret +
                            R"(", "ca_file": ")" + ca + "\""),
            0600);
    };
    {
        const std::string config = config_with_ca(dir.path + "/missing-ca.pem");
        Child c = start({"--config", config, "--check-config"});
        CHECK(c.wait(std::chrono::seconds(10)) == std::optional<int>(2));
        CHECK(c.output.find("credentials[0].ca_file: " + dir.path +
                            "/missing-ca.pem: No such file or directory") != std::string::npos);
        CHECK(lines(c.output) == 1);
    }
    {
        const std::string ca = dir.write("ca.pem", "-----BEGIN CERTIFICATE-----\n", 0644);
        const std::string config = config_with_ca(ca);
        Child c = start({"--config", config, "--check-config"});
        CHECK(c.wait(std::chrono::seconds(10)) == std::optional<int>(0));
        CHECK(c.output.find(": OK, 1 credential(s)") != std::string::npos);
    }
}

TEST_CASE("coordination: --check-config loads the seal key; --once is refused, exit 2",
          "[cli][coordination]") {
    TempDir dir("cli_test", 0755);
    const std::string secret = dir.write("s.secret", "client-secret-value\n", 0600);
    const std::string key = dir.write("seal.key", std::string(32, 'k'), 0600);
    const std::string short_key = dir.write("short.key", std::string(31, 'k'), 0600);
    const auto config_with = [&](const std::string& name, const std::string& key_file) {
        return dir.write(
            name,
            R"({"segment": "tokenshm-cli-coord-)" + std::to_string(::getpid()) +
                R"(", "state_dir": ")" + dir.path +
                R"(/state", "coordination": {"etcd": {"endpoints": ["http://127.0.0.1:9"],
            "prefix": "/tokenshm"}, "seal_key_file": ")" +
                key_file + R"("}, "credentials": [{"name": "storage", "client_id": "uploader",
            "token_endpoint": "http://127.0.0.1:9/token", "grant": "client_credentials",
            "timeout_s": 5, "client_secret_file": ")" +
                secret + R"("}]})",
            0600);
    };
    const std::string config = config_with("c.json", key);
    SECTION("--check-config: OK") {
        Child c = start({"--config", config, "--check-config"});
        CHECK(c.wait(std::chrono::seconds(10)) == std::optional<int>(0));
        CHECK(c.output.find(": OK, 1 credential(s)") != std::string::npos);
    }
    SECTION("--once: refused in one line") {
        Child c = start({"--config", config, "--once"});
        CHECK(c.wait(std::chrono::seconds(10)) == std::optional<int>(2));
        INFO(c.output);
        CHECK(c.output.find("--once does not go with coordination") != std::string::npos);
        CHECK(lines(c.output) == 1);
    }
    SECTION("a seal key that is not one: refused, checked or started, naming the file") {
        const std::string bad = config_with("bad.json", short_key);
        for (const bool check_only : {true, false}) {
            INFO((check_only ? "--check-config" : "daemon"));
            std::vector<std::string> args{"--config", bad};
            if (check_only) args.push_back("--check-config");
            Child c = start(args);
            CHECK(c.wait(std::chrono::seconds(10)) == std::optional<int>(2));
            INFO(c.output);
            CHECK(c.output.find(bad + ": coordination.seal_key_file: ") != std::string::npos);
            CHECK(c.output.find(short_key) != std::string::npos);
            CHECK(lines(c.output) == 1);
        }
    }
}

TEST_CASE("a running refresher is not dumpable unless --allow-core-dumps", "[cli]") {
    // The kernel shows it in /proc/<pid>: the files of a non-dumpable process
    // belong to root. So the refresher must run as a uid other than root.
    const bool root = ::geteuid() == 0;
    const uid_t uid = root ? 65534 : ::geteuid();
    TempDir dir("cli_test", 0755);
    const std::string state = dir.path + "/state";
    REQUIRE(::mkdir(state.c_str(), 0700) == 0);
    if (root) REQUIRE(::chown(state.c_str(), uid, uid) == 0);
    const std::string secret = dir.write("s.secret", "client-secret-value\n", 0644);
    const std::string segment = "tokenshm-cli-test-" + std::to_string(::getpid());
    const std::string config =
        dir.write("c.json",
                  R"({"segment": ")" + segment + R"(", "state_dir": ")" + state +
                      R"(", "control_socket": ")" + state + R"(/ctl.sock", )" +
                      R"("credentials": [{"name": "storage", "client_id": "uploader",
            "token_endpoint": "http://127.0.0.1:9/token", "grant": "client_credentials",
            "client_secret_file": ")" +
                      secret + R"("}]})",
                  0644);
    const auto owner_of_proc_status = [&](const std::vector<std::string>& extra) {
        std::vector<std::string> args{"--config", config};
        args.insert(args.end(), extra.begin(), extra.end());
        Child c = start(args, root ? std::optional<uid_t>(uid) : std::nullopt);
        const bool started = c.read_until("started", std::chrono::seconds(20));
        struct stat st {};
        const int rc = ::stat(("/proc/" + std::to_string(c.pid) + "/status").c_str(), &st);
        ::kill(c.pid, SIGTERM);
        const auto exit = c.wait(std::chrono::seconds(10));
        ::shm_unlink(("/" + segment).c_str());
        INFO(c.output);
        REQUIRE(started);
        REQUIRE(rc == 0);
        CHECK(exit == std::optional<int>(0));
        return st.st_uid;
    };
    CHECK(owner_of_proc_status({}) == 0);
    CHECK(owner_of_proc_status({"--allow-core-dumps"}) == uid);
}

TEST_CASE("a FIFO as client_secret_file cannot freeze a running refresher on SIGHUP", "[cli]") {
    TempDir dir("cli_test", 0755);
    const std::string state = dir.path + "/state";
    REQUIRE(::mkdir(state.c_str(), 0700) == 0);
    const std::string secret = dir.write("s.secret", "client-secret-value\n", 0600);
    const std::string segment = "tokenshm-cli-hup-" + std::to_string(::getpid());
    const std::string config =
        dir.write("c.json",
                  R"({"segment": ")" + segment + R"(", "state_dir": ")" + state +
                      R"(", "control_socket": ")" + state +
                      R"(/ctl.sock", "credentials": [{"name": "storage", "client_id": "uploader",
            "token_endpoint": "http://127.0.0.1:9/token", "grant": "client_credentials",
            "client_secret_file": ")" +
                      secret + R"("}]})",
                  0600);
    Child c = start({"--config", config});
    const bool started = c.read_until("event=started", std::chrono::seconds(20));
    // Planted while it runs: the next reload must not wait for a writer.
    REQUIRE(::unlink(secret.c_str()) == 0);
    REQUIRE(::mkfifo(secret.c_str(), 0600) == 0);
    ::kill(c.pid, SIGHUP);
    const bool refused =
        c.read_until(secret + ": not a regular file (a FIFO)", std::chrono::seconds(10));
    ::kill(c.pid, SIGTERM);  // still answering signals: it stops cleanly
    const auto exit = c.wait(std::chrono::seconds(10));
    ::shm_unlink(("/" + segment).c_str());
    INFO(c.output);
    CHECK(started);
    CHECK(refused);
    CHECK(c.output.find("keeping the running configuration") != std::string::npos);
    CHECK(exit == std::optional<int>(0));
}
