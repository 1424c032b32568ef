// tokenshm against what users would otherwise run to share a token between
// processes, each peer in its best light (issue 11).
//
//   peers_bench list
//   peers_bench run --method M --token-bytes B --writer W --readers R --seconds S [--pin]
//                   [--redis-port P] [--redis-socket PATH]
//   peers_bench serve --method M --token-bytes B --writer W --dir DIR [--redis-...]
//   peers_bench read --method M --token-bytes B --dir DIR (--seconds S | --reads N)
//                    [--pin-cpu K] [--redis-...]
//
// `run` sets a method up in a temporary directory, forks the writer and R
// reader processes, starts the readers together after the first publish and
// prints one JSON object merging their measures. `serve` and `read` split the
// same pieces into two commands so that a reader can be run under strace
// alone (`read --reads 0` is the attach baseline: the harness makes the same
// syscalls for any N, so the difference over N is the method's per read).
//
// Torn reads are checked on every latency-block read (the token must be one
// version's pattern, whole); throughput blocks count reads, errors and
// expiries only, so `torn` is out of `samples`, not of all reads. Where the
// time stamp counter advances in steps (10 ns on some VMs), medians below that
// are quantized; ns_per_read_cpu is then the finer figure.
//
// The methods and the JSON formats are those of issue 11's brief; the
// measuring loop is in peers_harness.hpp, the methods in peers_shm_methods.*
// (in memory) and peers_ipc_methods.* (through the kernel).
#include "bench_segment.hpp"
#include "peers_cli.hpp"
#include "peers_harness.hpp"
#include "peers_ipc_methods.hpp"
#include "peers_setup.hpp"
#include "peers_shm_methods.hpp"

#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <thread>

namespace peers {
namespace {

template <class S, class R, bool Legacy = false>
struct Kind {
    using Server = S;
    using Reader = R;
    static constexpr bool legacy = Legacy;
};

// Calls f(Kind<...>{}) for the method named in c.method (already validated).
template <class F>
void with_method(const std::string& m, F&& f) {
    if (m == "floor") return f(Kind<PlainServer, FloorReader>{});
    if (m == "memcpy") return f(Kind<PlainServer, MemcpyReader>{});
    if (m == "tokenshm") return f(Kind<TokenshmServer, TokenshmReader>{});
    if (m == "tokenshm_c") return f(Kind<TokenshmServer, TokenshmCReader>{});
    if (m == "mutex") return f(Kind<MutexServer, MutexReader>{});
    if (m == "rwlock") return f(Kind<RwlockServer, RwlockReader>{});
    if (m == "seqlock") return f(Kind<SeqlockServer, SeqlockReader>{});
    if (m == "unix_daemon") return f(Kind<DaemonServer, DaemonReader>{});
    if (m == "file") return f(Kind<FileServer, FileReader>{});
    if (m == "pread") return f(Kind<PreadServer, PreadReader>{});
    if (m == "redis_tcp" || m == "redis_unix") return f(Kind<RedisServer, RedisReader>{});
    if (m == "legacy") return f(Kind<SeqlockServer, LegacyReader, true>{});
    die("unknown method " + m);
}

void sleep_ns(std::int64_t ns) {
    struct timespec ts = {static_cast<time_t>(ns / 1'000'000'000),
                          static_cast<long>(ns % 1'000'000'000)};
    while (::nanosleep(&ts, &ts) != 0)
        if (errno != EINTR) die(sys_error("nanosleep"));
}

void sleep_until(std::int64_t mono_ns) {
    struct timespec ts = {static_cast<time_t>(mono_ns / 1'000'000'000),
                          static_cast<long>(mono_ns % 1'000'000'000)};
    while (int e = ::clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr))
        if (e != EINTR) die(std::string("clock_nanosleep: ") + std::strerror(e));
}

// legacy's refresh: once a second the flag is set for 100 ms, then a new
// token is published and the flag cleared, whatever the writer mode.
void refresh_cycle(SeqlockServer& s, std::atomic<std::uint64_t>& version,
                   const std::atomic<int>& stop, std::uint64_t& publishes) {
    std::int64_t next = clock_ns(CLOCK_MONOTONIC);
    auto& flag = s.head().refreshing;
    while (stop.load(std::memory_order_relaxed) == 0) {
        next += 1'000'000'000;
        while (stop.load(std::memory_order_relaxed) == 0 && clock_ns(CLOCK_MONOTONIC) < next)
            sleep_ns(10'000'000);
        if (stop.load(std::memory_order_relaxed) != 0) break;
        flag.store(1, std::memory_order_release);
        for (int i = 0; i < 10 && stop.load(std::memory_order_relaxed) == 0; ++i)
            sleep_ns(10'000'000);
        s.publish(version.fetch_add(1) + 1);
        ++publishes;
        flag.store(0, std::memory_order_release);
    }
}

// Publishes versions 2, 3, ... in mode `w` until `stop`; returns how many.
template <class S>
std::uint64_t write_until(S& s, WriterMode w, std::atomic<std::uint64_t>& version,
                          const std::atomic<int>& stop) {
    std::uint64_t n = 0;
    std::int64_t next = clock_ns(CLOCK_MONOTONIC);
    while (stop.load(std::memory_order_relaxed) == 0) {
        if (w == WriterMode::none) {
            sleep_ns(10'000'000);
            continue;
        }
        if (w == WriterMode::khz) {
            next += 1'000'000;
            sleep_until(next);
        } else if (w == WriterMode::us) {
            next += 1'000;
            while (clock_ns(CLOCK_MONOTONIC) < next) {
            }
        }
        if (stop.load(std::memory_order_relaxed) != 0) break;
        s.publish(version.fetch_add(1) + 1);
        ++n;
    }
    return n;
}

// The writer of serve and run: write_until, plus legacy's refresh thread.
template <class K>
std::uint64_t run_writer(typename K::Server& s, WriterMode w, const std::atomic<int>& stop) {
    std::atomic<std::uint64_t> version{1};  // 1 was published at setup
    std::uint64_t refreshes = 0;
    std::thread refresher;
    if constexpr (K::legacy)
        refresher = std::thread([&] { refresh_cycle(s, version, stop, refreshes); });
    const std::uint64_t n = write_until(s, w, version, stop);
    if (refresher.joinable()) refresher.join();
    return n + refreshes;
}

std::string reader_json(const Options& o, const Tally& t) {
    char head[512];
    std::snprintf(head, sizeof head,
                  "{\"method\":\"%s\",\"token_bytes\":%zu,\"reads\":%llu,\"tp_wall_s\":%.6f,"
                  "\"tp_cpu_s\":%.6f,\"lat_samples\":%llu,\"timer_ns\":%.2f,\"max_ns\":%.1f,"
                  "\"hist\":",
                  o.config.method.c_str(), o.config.token_bytes,
                  static_cast<unsigned long long>(t.reads), t.tp_wall_s, t.tp_cpu_s,
                  static_cast<unsigned long long>(t.lat_samples), t.timer_ns, t.max_ns);
    char tail[256];
    std::snprintf(
        tail, sizeof tail, ",\"torn\":%llu,\"expired\":%llu,\"errors\":%llu,\"changes\":%llu}",
        static_cast<unsigned long long>(t.torn), static_cast<unsigned long long>(t.expired),
        static_cast<unsigned long long>(t.errors), static_cast<unsigned long long>(t.changes));
    return head + t.hist.json() + tail;
}

// ---- read ----

template <class K>
void read_command(const Options& o) {
    if (o.pin_cpu >= 0 && !tokenshm::bench::pin_to(o.pin_cpu)) die(sys_error("sched_setaffinity"));
    typename K::Reader r(o.config);
    keep(r.read());  // the first read (a copy for the caching readers) is part of attaching
    const double tpn = calibrate_ticks_per_ns();
    Limit limit;
    limit.reads = o.reads;
    limit.deadline_ns = clock_ns(CLOCK_MONOTONIC) + static_cast<std::int64_t>(o.seconds * 1e9);
    auto* t = new Tally;  // 11 KiB of histogram: not on the stack
    measure(r, o.config.token_bytes, limit, tpn, *t);
    std::printf("%s\n", reader_json(o, *t).c_str());
    delete t;
}

// ---- serve ----

std::atomic<int> g_stop{0};
extern "C" void on_stop(int) {
    g_stop.store(1);
}

void install_stop_handler() {
    struct sigaction sa {};
    sa.sa_handler = on_stop;  // no SA_RESTART: clock_nanosleep returns EINTR
    sigemptyset(&sa.sa_mask);
    if (::sigaction(SIGTERM, &sa, nullptr) != 0 || ::sigaction(SIGINT, &sa, nullptr) != 0)
        die(sys_error("sigaction"));
}

template <class K>
void serve_command(const Options& o) {
    install_stop_handler();
    std::uint64_t n = 0;
    double seconds = 0;
    {
        typename K::Server s(o.config);
        s.publish(1);
        std::printf("{\"ready\":true}\n");
        std::fflush(stdout);
        const std::int64_t t0 = clock_ns(CLOCK_MONOTONIC);
        n = run_writer<K>(s, o.writer, g_stop);
        seconds = static_cast<double>(clock_ns(CLOCK_MONOTONIC) - t0) / 1e9;
    }
    cleanup::run();
    std::printf("{\"publishes\":%llu,\"seconds\":%.3f}\n", static_cast<unsigned long long>(n),
                seconds);
}

// ---- run ----

// What run's processes share, in one MAP_SHARED page set made before fork.
struct RunShared {
    std::atomic<int> ready{0};           // readers attached and waiting
    std::atomic<std::int64_t> go_ns{0};  // CLOCK_MONOTONIC start, 0 until set
    std::atomic<int> stop{0};            // the writer must return
    std::uint64_t publishes = 0;         // the writer's, from go to stop
    double writer_s = 0;
};

RunShared* map_shared(int readers, Tally** tallies) {
    const std::size_t bytes = sizeof(RunShared) + sizeof(Tally) * static_cast<std::size_t>(readers);
    void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) die(sys_error("mmap"));
    auto* rs = new (p) RunShared;
    *tallies = reinterpret_cast<Tally*>(static_cast<char*>(p) + sizeof(RunShared));
    for (int i = 0; i < readers; ++i)
        new (&(*tallies)[i]) Tally;
    return rs;
}

// Waits for the common start time, then sleeps until it.
void await_go(const RunShared& rs) {
    while (rs.go_ns.load(std::memory_order_acquire) == 0)
        sleep_ns(200'000);
    sleep_until(rs.go_ns.load());
}

template <class K>
[[noreturn]] void reader_process(const Options& o, RunShared& rs, Tally& t, int cpu, double tpn) {
    if (cpu >= 0 && !tokenshm::bench::pin_to(cpu)) die(sys_error("sched_setaffinity"));
    typename K::Reader r(o.config);
    keep(r.read());
    rs.ready.fetch_add(1);
    await_go(rs);
    Limit limit;
    limit.deadline_ns = rs.go_ns.load() + static_cast<std::int64_t>(o.seconds * 1e9);
    measure(r, o.config.token_bytes, limit, tpn, t);
    std::fflush(nullptr);
    ::_exit(0);
}

template <class K>
[[noreturn]] void writer_process(const Options& o, typename K::Server& s, RunShared& rs) {
    await_go(rs);
    const std::int64_t t0 = clock_ns(CLOCK_MONOTONIC);
    rs.publishes = run_writer<K>(s, o.writer, rs.stop);
    rs.writer_s = static_cast<double>(clock_ns(CLOCK_MONOTONIC) - t0) / 1e9;
    ::_exit(0);
}

template <class F>
pid_t fork_child(F&& body) {
    std::fflush(nullptr);
    const pid_t pid = ::fork();
    if (pid < 0) die(sys_error("fork"));
    if (pid == 0) {
        ::signal(SIGTERM, SIG_DFL);  // run's handler only sets a flag: children just die
        ::signal(SIGINT, SIG_DFL);
        body();
    }
    cleanup::add_child(pid);
    return pid;
}

// Reaps `pid`; dies (cleaning up) unless it exited with status 0.
void reap(pid_t pid, const char* who) {
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) die(sys_error("waitpid"));
        if (g_stop.load() != 0) die("interrupted");
    }
    cleanup::forget_child(pid);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) die(std::string(who) + " failed");
}

// Waits until every reader attached; dies when any child exits first.
void await_ready(const RunShared& rs, int readers) {
    while (rs.ready.load() < readers) {
        if (g_stop.load() != 0) die("interrupted");
        int status;
        const pid_t p = ::waitpid(-1, &status, WNOHANG);
        if (p > 0) {
            cleanup::forget_child(p);
            die("a reader, the writer or the daemon exited before the start");
        }
        sleep_ns(1'000'000);
    }
}

std::string run_json(const Options& o, const RunShared& rs, const Tally* ts);

template <class K>
void run_command(Options o) {
    if (K::legacy && o.seconds < 2) {
        std::fprintf(stderr, "peers_bench: legacy needs >= 2 s: --seconds %g raised to 2.5\n",
                     o.seconds);
        o.seconds = 2.5;
    }
    install_stop_handler();  // so that an interrupted run still cleans up
    char tmpl[] = "/tmp/peers-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) die(sys_error("mkdtemp"));
    cleanup::add_path(tmpl);
    o.config.dir = tmpl;
    Tally* tallies = nullptr;
    RunShared& rs = *map_shared(o.readers, &tallies);
    const std::vector<int> cpus = tokenshm::bench::allowed_cpus();
    const double tpn = calibrate_ticks_per_ns();
    {
        typename K::Server s(o.config);
        s.publish(1);
        const pid_t writer = fork_child([&] { writer_process<K>(o, s, rs); });
        std::vector<pid_t> readers;
        for (int i = 0; i < o.readers; ++i) {
            const int cpu = o.pin ? cpus[static_cast<std::size_t>(i) % cpus.size()] : -1;
            readers.push_back(fork_child([&] { reader_process<K>(o, rs, tallies[i], cpu, tpn); }));
        }
        await_ready(rs, o.readers);
        rs.go_ns.store(clock_ns(CLOCK_MONOTONIC) + 10'000'000, std::memory_order_release);
        for (pid_t p : readers)
            reap(p, "a reader");
        rs.stop.store(1);
        reap(writer, "the writer");
    }
    cleanup::run();
    std::printf("%s\n", run_json(o, rs, tallies).c_str());
}

std::string run_json(const Options& o, const RunShared& rs, const Tally* ts) {
    Tally m;
    double rate = 0, timer = 0;
    for (int i = 0; i < o.readers; ++i) {
        const Tally& t = ts[i];
        if (t.tp_wall_s > 0) rate += static_cast<double>(t.reads) / t.tp_wall_s;
        m.reads += t.reads;
        m.tp_cpu_s += t.tp_cpu_s;
        m.lat_samples += t.lat_samples;
        m.over_1ms += t.over_1ms;
        m.max_ns = std::max(m.max_ns, t.max_ns);
        m.torn += t.torn, m.expired += t.expired, m.errors += t.errors, m.changes += t.changes;
        m.hist.merge(t.hist);
        timer += t.timer_ns / o.readers;
    }
    auto net = [&](double v) { return std::max(0.0, v - timer); };
    char buf[1024];
    std::snprintf(
        buf, sizeof buf,
        "{\"method\":\"%s\",\"writer\":\"%s\",\"readers\":%d,\"token_bytes\":%zu,\"seconds\":%g,"
        "\"reads_per_s\":%.4g,\"ns_per_read_cpu\":%.2f,\"median_ns\":%.1f,\"p99_ns\":%.1f,"
        "\"p999_ns\":%.1f,\"max_ns\":%.1f,\"samples\":%llu,\"timer_ns\":%.2f,\"over_1ms\":%llu,"
        "\"hist\":",
        o.config.method.c_str(), to_string(o.writer), o.readers, o.config.token_bytes, o.seconds,
        rate, m.reads > 0 ? m.tp_cpu_s / static_cast<double>(m.reads) * 1e9 : 0.0,
        net(m.hist.quantile(0.5)), net(m.hist.quantile(0.99)), net(m.hist.quantile(0.999)),
        net(m.max_ns), static_cast<unsigned long long>(m.lat_samples), timer,
        static_cast<unsigned long long>(m.over_1ms));
    char tail[512];
    std::snprintf(
        tail, sizeof tail,
        ",\"torn\":%llu,\"expired\":%llu,\"errors\":%llu,\"changes\":%llu,"
        "\"publishes\":%llu,\"publishes_per_s\":%.4g}",
        static_cast<unsigned long long>(m.torn), static_cast<unsigned long long>(m.expired),
        static_cast<unsigned long long>(m.errors), static_cast<unsigned long long>(m.changes),
        static_cast<unsigned long long>(rs.publishes),
        rs.writer_s > 0 ? static_cast<double>(rs.publishes) / rs.writer_s : 0.0);
    return buf + m.hist.json() + tail;
}

}  // namespace
}  // namespace peers

int main(int argc, char** argv) {
    using namespace peers;
    const Options o = parse_options(argc, argv);
    if (o.command == Command::list) {
        for (const char* m : kMethods)
            std::printf("%s\n", m);
        return 0;
    }
    ::signal(SIGPIPE, SIG_IGN);
    with_method(o.config.method, [&](auto kind) {
        using K = decltype(kind);
        if (o.command == Command::read) read_command<K>(o);
        if (o.command == Command::serve) serve_command<K>(o);
        if (o.command == Command::run) run_command<K>(o);
    });
    return 0;
}
