// Read throughput of whole processes, under a writer.
//
//   read_scaling_bench --writer=none|1khz|b2b --readers=N --token-bytes=B
//                      [--seconds=S] [--loop=get|floor] [--pin]
//
// Creates a segment with one slot holding a B-byte token, forks an optional
// writer process (WriterSegment::publish, the refresher's own call: every
// 1 ms with --writer=1khz, back to back with --writer=b2b) and N reader
// processes. Each reader opens the segment itself, waits for a common start
// time, runs its loop for S seconds and reports through a pipe:
//
//   get    Handle::get() in a loop, counting versions seen change;
//   floor  one relaxed load of the slot's seq plus the coarse clock: the same
//          floor as read_bench's BM_floor_load_clock, under the same writer.
//
// With --pin reader i runs on allowed CPU i mod n (sched_setaffinity); the
// writer is left to the scheduler. Prints one JSON object on stdout.
#include "bench_segment.hpp"

#include <tokenshm/reader.hpp>

#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <new>
#include <string>
#include <string_view>
#include <vector>

namespace {

namespace shm = tokenshm::shm;
namespace tb = tokenshm::bench;

enum class WriterMode { none, khz, b2b };
enum class Loop { get, floor };

struct Options {
    WriterMode writer = WriterMode::none;
    int readers = 1;
    std::size_t token_bytes = 1024;
    double seconds = 0.5;
    Loop loop = Loop::get;
    bool pin = false;
};

// What one reader sends back through the result pipe (well under PIPE_BUF,
// so each write arrives whole).
struct ReaderResult {
    std::uint64_t gets;
    std::uint64_t changes;             // times the version (or seq) seen differed from the last
    std::uint64_t errors;              // get() returned an error
    std::uint64_t errors_by_code[16];  // indexed by tokenshm::Error
    std::int64_t elapsed_ns;
    std::int64_t cpu_ns;  // CPU time the reader got during its run
    std::int32_t cpu;     // the CPU it was pinned to, -1 when not pinned
    std::int32_t index;
};

struct WriterResult {
    std::uint64_t publishes;  // inside the readers' window
    std::int64_t window_ns;
};

constexpr int kBatch = 256;  // gets between two looks at the clock

std::int64_t clock_ns(clockid_t id) noexcept {
    struct timespec ts;
    ::clock_gettime(id, &ts);
    return std::int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

void write_all(int fd, const void* p, std::size_t n) {
    const char* c = static_cast<const char*>(p);
    while (n > 0) {
        const ssize_t w = ::write(fd, c, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) tb::die(std::string("write: ") + std::strerror(errno));
        c += w;
        n -= static_cast<std::size_t>(w);
    }
}

// Reads exactly n bytes; false at end of file (a child died).
bool read_all(int fd, void* p, std::size_t n) {
    char* c = static_cast<char*>(p);
    while (n > 0) {
        const ssize_t r = ::read(fd, c, n);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return false;
        c += r;
        n -= static_cast<std::size_t>(r);
    }
    return true;
}

struct Pipe {
    int rd = -1, wr = -1;
    Pipe() {
        int fds[2];
        if (::pipe(fds) != 0) tb::die(std::string("pipe: ") + std::strerror(errno));
        rd = fds[0];
        wr = fds[1];
    }
};

void spin_until(std::int64_t t_ns) {
    while (clock_ns(CLOCK_MONOTONIC) < t_ns) {
    }
}

// The measured loop of Handle::get(), until end_ns; fills gets, changes, errors.
// Returns the clock's last reading.
std::int64_t loop_get(tokenshm::Handle& handle, std::int64_t end_ns, ReaderResult& r) {
    std::uint64_t last = 0;
    std::int64_t now = 0;
    do {
        for (int k = 0; k < kBatch; ++k) {
            const auto t = handle.get();
            if (t) [[likely]] {
                if (t->version() != last) {
                    ++r.changes;
                    last = t->version();
                }
            } else {
                ++r.errors;
                ++r.errors_by_code[static_cast<unsigned>(t.error()) & 15];
            }
        }
        r.gets += kBatch;
        now = clock_ns(CLOCK_MONOTONIC);
    } while (now < end_ns);
    return now;
}

// The floor: one relaxed load of the slot's seq plus the coarse clock, until end_ns.
std::int64_t loop_floor(const std::atomic<std::uint64_t>& seq, std::int64_t end_ns,
                        ReaderResult& r) {
    std::uint64_t last = 0;
    std::int64_t now = 0;
    do {
        for (int k = 0; k < kBatch; ++k) {
            const std::uint64_t s = seq.load(std::memory_order_relaxed);
            struct timespec ts;
            ::clock_gettime(CLOCK_REALTIME_COARSE, &ts);
            asm volatile("" : : "r"(ts.tv_nsec) : "memory");
            if (s != last) {
                ++r.changes;
                last = s;
            }
        }
        r.gets += kBatch;
        now = clock_ns(CLOCK_MONOTONIC);
    } while (now < end_ns);
    return now;
}

// The reader process: returns its exit status.
int run_reader(const Options& o, const std::string& segment, int index, int cpu, int ready_fd,
               int go_fd, int result_fd) {
    if (cpu >= 0 && !tokenshm::bench::pin_to(cpu)) cpu = -1;
    auto reader = tokenshm::Reader::open(segment);
    if (!reader) tb::die(reader.error().message);
    auto handle = reader->lookup(tb::slot_name(o.token_bytes));
    if (!handle) tb::die(handle.error().message);
    auto ro = shm::ReadOnlySegment::open(segment, {});
    if (!ro) tb::die(ro.error().message);
    const std::atomic<std::uint64_t>& seq = ro->slot(*ro->find(tb::slot_name(o.token_bytes)))->seq;
    if (!handle->get()) tb::die("reader: no valid token before the run");

    const char ready = 'r';
    write_all(ready_fd, &ready, 1);
    std::int64_t start_ns = 0;
    if (!read_all(go_fd, &start_ns, sizeof start_ns)) return 1;
    const std::int64_t end_ns = start_ns + static_cast<std::int64_t>(o.seconds * 1e9);

    ReaderResult r{};
    r.cpu = cpu;
    r.index = index;
    spin_until(start_ns);
    const std::int64_t cpu0 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
    const std::int64_t now =
        o.loop == Loop::get ? loop_get(*handle, end_ns, r) : loop_floor(seq, end_ns, r);
    r.cpu_ns = clock_ns(CLOCK_THREAD_CPUTIME_ID) - cpu0;
    r.elapsed_ns = now - start_ns;
    write_all(result_fd, &r, sizeof r);
    return 0;
}

// The writer process: publishes until `stop` is set, then reports how many
// publishes fell inside the readers' window.
int run_writer(const Options& o, tb::BenchSegment& seg, const std::atomic<int>& stop, int go_fd,
               int result_fd) {
    const std::uint32_t slot = seg.slot(o.token_bytes);
    const std::string tokens[2] = {tb::token_text(o.token_bytes, 3),
                                   tb::token_text(o.token_bytes, 4)};
    std::int64_t start_ns = 0;
    if (!read_all(go_fd, &start_ns, sizeof start_ns)) return 1;
    const std::int64_t end_ns = start_ns + static_cast<std::int64_t>(o.seconds * 1e9);
    WriterResult w{};
    w.window_ns = end_ns - start_ns;
    std::uint64_t version = 3;
    std::int64_t next = clock_ns(CLOCK_MONOTONIC);
    while (stop.load(std::memory_order_relaxed) == 0) {
        const auto e = seg.writer().publish(slot, tb::bench_record(version, tokens[version & 1]));
        if (!e) tb::die(shm::to_string(e.error()));
        ++version;
        const std::int64_t now = clock_ns(CLOCK_MONOTONIC);
        if (now >= start_ns && now < end_ns) ++w.publishes;
        if (o.writer == WriterMode::khz) {
            next += 1'000'000;
            struct timespec ts {
                static_cast<time_t>(next / 1'000'000'000), static_cast<long>(next % 1'000'000'000)
            };
            while (::clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr) == EINTR) {
            }
        }
    }
    write_all(result_fd, &w, sizeof w);
    return 0;
}

Options parse(int argc, char** argv) {
    Options o;
    auto usage = [] {
        std::fprintf(stderr,
                     "usage: read_scaling_bench --writer=none|1khz|b2b --readers=N "
                     "--token-bytes=B [--seconds=S] [--loop=get|floor] [--pin]\n");
        std::exit(2);
    };
    for (int i = 1; i < argc; ++i) {
        const std::string_view a = argv[i];
        const auto eq = a.find('=');
        const std::string_view key = a.substr(0, eq);
        const std::string val = eq == std::string_view::npos ? "" : std::string(a.substr(eq + 1));
        try {
            if (key == "--writer") {
                if (val == "none")
                    o.writer = WriterMode::none;
                else if (val == "1khz")
                    o.writer = WriterMode::khz;
                else if (val == "b2b")
                    o.writer = WriterMode::b2b;
                else
                    usage();
            } else if (key == "--readers") {
                o.readers = std::stoi(val);
            } else if (key == "--token-bytes") {
                o.token_bytes = std::stoul(val);
            } else if (key == "--seconds") {
                o.seconds = std::stod(val);
            } else if (key == "--loop") {
                if (val == "get")
                    o.loop = Loop::get;
                else if (val == "floor")
                    o.loop = Loop::floor;
                else
                    usage();
            } else if (key == "--pin") {
                o.pin = true;
            } else {
                usage();
            }
        } catch (const std::exception&) {
            usage();
        }
    }
    if (o.readers < 1 || o.readers > 64 || o.seconds <= 0 || o.seconds > 60 || o.token_bytes < 1 ||
        o.token_bytes > 8192)
        usage();
    return o;
}

const char* to_string(WriterMode m) {
    switch (m) {
        case WriterMode::none:
            return "none";
        case WriterMode::khz:
            return "1khz";
        case WriterMode::b2b:
            return "b2b";
    }
    return "?";
}

// The pipes between the parent, the readers and the writer.
struct Pipes {
    Pipe ready, go, results, writer_go, writer_result;
};

// Forks the writer (unless --writer=none) and the readers; returns the
// writer's pid (-1 for none) and appends every child to `children`.
pid_t fork_children(const Options& o, tb::BenchSegment& seg, const std::atomic<int>& stop, Pipes& p,
                    std::vector<pid_t>& children) {
    const std::vector<int> cpus = tokenshm::bench::allowed_cpus();
    pid_t writer = -1;
    if (o.writer != WriterMode::none) {
        writer = ::fork();
        if (writer < 0) tb::die(std::string("fork: ") + std::strerror(errno));
        if (writer == 0) ::_exit(run_writer(o, seg, stop, p.writer_go.rd, p.writer_result.wr));
        children.push_back(writer);
    }
    for (int i = 0; i < o.readers; ++i) {
        const int cpu =
            o.pin && !cpus.empty() ? cpus[static_cast<std::size_t>(i) % cpus.size()] : -1;
        const pid_t c = ::fork();
        if (c < 0) tb::die(std::string("fork: ") + std::strerror(errno));
        if (c == 0) ::_exit(run_reader(o, seg.name(), i, cpu, p.ready.wr, p.go.rd, p.results.wr));
        children.push_back(c);
    }
    ::close(p.ready.wr);
    ::close(p.results.wr);
    ::close(p.writer_result.wr);
    return writer;
}

// Waits until every reader is ready, then gives all a common start time 20 ms
// ahead. False when a reader died first.
bool start_run(const Options& o, tb::BenchSegment& seg, pid_t writer, Pipes& p) {
    bool ok = true;
    for (int i = 0; i < o.readers && ok; ++i) {
        char c;
        ok = read_all(p.ready.rd, &c, 1);
    }
    seg.unlink();  // every process has mapped it now
    const std::int64_t start_ns = clock_ns(CLOCK_MONOTONIC) + 20'000'000;
    for (int i = 0; i < o.readers && ok; ++i)
        write_all(p.go.wr, &start_ns, sizeof start_ns);
    if (writer > 0 && ok) write_all(p.writer_go.wr, &start_ns, sizeof start_ns);
    return ok;
}

// Reads every reader's result, stops the writer, reads its result and reaps
// every child. False when any of them failed.
bool collect_results(const Options& o, pid_t writer, std::atomic<int>& stop, Pipes& p,
                     const std::vector<pid_t>& children, std::vector<ReaderResult>& rs,
                     WriterResult& wr, bool ok) {
    rs.resize(static_cast<std::size_t>(o.readers));
    for (int i = 0; i < o.readers && ok; ++i)
        ok = read_all(p.results.rd, &rs[static_cast<std::size_t>(i)], sizeof rs[0]);
    stop.store(1, std::memory_order_relaxed);
    ::close(p.go.wr);
    ::close(p.writer_go.wr);
    if (writer > 0 && ok) ok = read_all(p.writer_result.rd, &wr, sizeof wr);
    for (pid_t c : children) {
        int status = 0;
        while (::waitpid(c, &status, 0) < 0 && errno == EINTR) {
        }
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) ok = false;
    }
    return ok;
}

// {"busy":3,...}: which errors get() returned, by name.
std::string errors_by_code_json(const ReaderResult& r) {
    std::string by_code;
    for (unsigned c = 0; c < 16; ++c) {
        if (r.errors_by_code[c] == 0) continue;
        by_code += by_code.empty() ? "\"" : ",\"";
        by_code += tokenshm::bench::error_name(static_cast<tokenshm::Error>(c));
        by_code += "\":";
        by_code += std::to_string(r.errors_by_code[c]);
    }
    return by_code;
}

double reads_per_s(const ReaderResult& r) {
    return static_cast<double>(r.gets) * 1e9 / static_cast<double>(r.elapsed_ns);
}

std::string reader_json(const ReaderResult& r) {
    char buf[512];
    std::snprintf(
        buf, sizeof buf,
        "{\"index\":%d,\"cpu\":%d,\"gets\":%llu,\"changes\":%llu,\"errors\":%llu,"
        "\"errors_by_code\":{%s},\"elapsed_ns\":%lld,\"cpu_ns\":%lld,\"reads_per_s\":%.0f}",
        r.index, r.cpu, static_cast<unsigned long long>(r.gets),
        static_cast<unsigned long long>(r.changes), static_cast<unsigned long long>(r.errors),
        errors_by_code_json(r).c_str(), static_cast<long long>(r.elapsed_ns),
        static_cast<long long>(r.cpu_ns), reads_per_s(r));
    return buf;
}

void print_report(const Options& o, const std::vector<ReaderResult>& rs, const WriterResult& wr) {
    double total_rate = 0;
    std::string per_reader;
    for (const ReaderResult& r : rs) {
        total_rate += reads_per_s(r);
        if (!per_reader.empty()) per_reader += ',';
        per_reader += reader_json(r);
    }
    std::printf(
        "{\"writer\":\"%s\",\"readers\":%d,\"token_bytes\":%zu,\"loop\":\"%s\",\"seconds\":%g,"
        "\"pinned\":%s,\"publishes\":%llu,\"reads_per_s\":%.0f,\"per_reader\":[%s]}\n",
        to_string(o.writer), o.readers, o.token_bytes, o.loop == Loop::get ? "get" : "floor",
        o.seconds, o.pin ? "true" : "false", static_cast<unsigned long long>(wr.publishes),
        total_rate, per_reader.c_str());
}

}  // namespace

int main(int argc, char** argv) {
    const Options o = parse(argc, argv);
    ::signal(SIGPIPE, SIG_IGN);
    tb::BenchSegment seg(tb::unique_segment("scale"), {o.token_bytes});

    // The stop flag is shared with the forked writer.
    void* page = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (page == MAP_FAILED) tb::die(std::string("mmap: ") + std::strerror(errno));
    auto* stop = new (page) std::atomic<int>(0);

    Pipes pipes;
    std::vector<pid_t> children;
    const pid_t writer = fork_children(o, seg, *stop, pipes, children);
    const bool started = start_run(o, seg, writer, pipes);
    std::vector<ReaderResult> rs;
    WriterResult wr{};
    if (!collect_results(o, writer, *stop, pipes, children, rs, wr, started))
        tb::die("a reader or the writer failed");
    print_report(o, rs, wr);
    return 0;
}
