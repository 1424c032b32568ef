// One etcd member for the scaleout tests (Debian's etcd-server): free
// 127.0.0.1 ports, data in a temporary directory, stopped by its pid and
// removed when the test ends, also on failure.
#pragma once

#include "etcd_client.hpp"

#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace tokenshm::refresher::testing {

using namespace std::chrono_literals;

inline constexpr const char* kEtcd = "/usr/bin/etcd";

// A TCP port on 127.0.0.1 that was free a moment ago.
inline int free_port() {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd >= 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    socklen_t len = sizeof a;
    REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0);
    ::close(fd);
    return ntohs(a.sin_port);
}

inline EndpointUrl url(const std::string& text) {
    auto u = EndpointUrl::parse(text);
    REQUIRE(u.has_value());
    return *u;
}

// One etcd member in a temporary directory; stopped (SIGTERM, then SIGKILL)
// and its directory removed when the test ends, also on failure.
struct EtcdMember {
    std::string dir;
    std::string client_url;
    std::vector<std::string> args;
    pid_t pid = -1;

    // `extra`: more etcd flags (--experimental-watch-progress-notify-interval=1s).
    explicit EtcdMember(std::vector<std::string> extra = {}) {
        std::string tmpl = (std::filesystem::temp_directory_path() / "etcd_test.XXXXXX").string();
        REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
        dir = tmpl;
        const std::string client = "http://127.0.0.1:" + std::to_string(free_port());
        const std::string peer = "http://127.0.0.1:" + std::to_string(free_port());
        client_url = client;
        args = {kEtcd,         "--name",
                "m0",          "--data-dir",
                dir + "/data", "--listen-client-urls",
                client,        "--advertise-client-urls",
                client,        "--listen-peer-urls",
                peer,          "--initial-advertise-peer-urls",
                peer,          "--initial-cluster",
                "m0=" + peer,  "--initial-cluster-state",
                "new"};
        args.insert(args.end(), extra.begin(), extra.end());
        start();
    }
    // Starts the member (again, after stop(): same ports, same data).
    void start() { pid = spawn(args, dir + "/etcd.log"); }
    ~EtcdMember() {
        stop();
        std::filesystem::remove_all(dir);
    }
    EtcdMember(const EtcdMember&) = delete;
    EtcdMember& operator=(const EtcdMember&) = delete;

    static pid_t spawn(const std::vector<std::string>& args, const std::string& log) {
        std::vector<char*> argv;
        for (const auto& a : args)
            argv.push_back(const_cast<char*>(a.c_str()));
        argv.push_back(nullptr);
        const pid_t p = ::fork();
        REQUIRE(p >= 0);
        if (p == 0) {
            ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlives a test killed by its timeout
            const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
            if (fd < 0 || ::dup2(fd, 1) < 0 || ::dup2(fd, 2) < 0) ::_exit(126);
            ::execv(args[0].c_str(), argv.data());
            ::_exit(127);
        }
        return p;
    }

    // SIGSTOP, returning once every thread has stopped (waitpid reports the
    // group stop): kill() alone returns while etcd may still answer a request.
    void pause() {
        REQUIRE(::kill(pid, SIGSTOP) == 0);
        int status = 0;
        REQUIRE(::waitpid(pid, &status, WUNTRACED) == pid);
        REQUIRE(WIFSTOPPED(status));
    }
    void resume() { ::kill(pid, SIGCONT); }

    void stop() {
        if (pid <= 0) return;
        ::kill(pid, SIGCONT);
        ::kill(pid, SIGTERM);
        int status = 0;
        for (int i = 0; i < 100 && ::waitpid(pid, &status, WNOHANG) == 0; ++i)
            std::this_thread::sleep_for(50ms);
        if (::waitpid(pid, &status, WNOHANG) == 0) {
            ::kill(pid, SIGKILL);
            ::waitpid(pid, &status, 0);
        }
        pid = -1;
    }

    std::string log_tail() const {
        std::ifstream in(dir + "/etcd.log");
        std::stringstream ss;
        ss << in.rdbuf();
        const std::string all = ss.str();
        return all.size() > 2000 ? all.substr(all.size() - 2000) : all;
    }

    // Waits until the member answers a range (at most 30 s); false if it exited or never did.
    bool wait_ready(EtcdClient& client) {
        const auto deadline = std::chrono::steady_clock::now() + 30s;
        while (std::chrono::steady_clock::now() < deadline) {
            int status = 0;
            if (::waitpid(pid, &status, WNOHANG) == pid) {
                pid = -1;
                return false;
            }
            if (client.range("/ready").has_value()) return true;
            std::this_thread::sleep_for(100ms);
        }
        return false;
    }
};

inline std::unique_ptr<CurlEtcdGateway> gateway(std::vector<EndpointUrl> endpoints,
                                                std::chrono::milliseconds timeout = 5s) {
    CurlEtcdGateway::Options o;
    o.endpoints = std::move(endpoints);
    o.timeout = timeout;
    auto g = CurlEtcdGateway::create(std::move(o));
    REQUIRE(g.has_value());
    return std::move(*g);
}

// A raw gateway call for what EtcdClient does not do (setting up auth).
inline void admin(EtcdGateway& g, const std::string& path, const std::string& json,
                  const Secret& token = Secret()) {
    const GatewayAnswer a = g.post(path, WipedString(json), token);
    INFO(path << " -> " << a.status << " " << a.body.view());
    REQUIRE(a.outcome == GatewayAnswer::Outcome::answer);
    REQUIRE(a.status == 200);
}

}  // namespace tokenshm::refresher::testing
