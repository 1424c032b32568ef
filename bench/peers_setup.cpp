#include "peers_setup.hpp"

#include "peers_harness.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <vector>

namespace peers {

void write_note(const std::string& dir, const char* name, const std::string& text) {
    const std::string path = dir + "/" + name;
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) die(sys_error("open " + path));
    cleanup::add_path(path);
    if (::write(fd, text.data(), text.size()) != static_cast<ssize_t>(text.size()))
        die(sys_error("write " + path));
    if (::close(fd) != 0) die(sys_error("close " + path));
}

std::string read_note(const std::string& dir, const char* name) {
    const std::string path = dir + "/" + name;
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) die(sys_error("open " + path));
    char buf[512];
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) die(sys_error("read " + path));
    if (::close(fd) != 0) die(sys_error("close " + path));
    return std::string(buf, static_cast<std::size_t>(n));
}

namespace cleanup {
namespace {
struct List {
    pid_t owner = ::getpid();
    std::vector<std::string> shm, paths;  // paths removed last first
    std::vector<pid_t> children;
    bool registered = false;
};
List& list() {
    static List* l = new List;  // never destroyed: atexit may run after statics die
    if (!l->registered) {
        l->registered = true;
        std::atexit(run);
    }
    return *l;
}
}  // namespace

void add_shm(const std::string& name) {
    list().shm.push_back(name);
}
void add_path(const std::string& path) {
    list().paths.push_back(path);
}
void add_child(pid_t pid) {
    list().children.push_back(pid);
}
void forget_child(pid_t pid) {
    auto& c = list().children;
    c.erase(std::remove(c.begin(), c.end(), pid), c.end());
}

void run() noexcept {
    List& l = list();
    if (l.owner != ::getpid()) return;
    for (pid_t p : l.children)
        ::kill(p, SIGTERM);
    for (pid_t p : l.children) {
        int status;
        while (::waitpid(p, &status, 0) < 0 && errno == EINTR) {
        }
    }
    l.children.clear();
    for (const auto& n : l.shm)
        ::shm_unlink(n.c_str());
    l.shm.clear();
    for (auto it = l.paths.rbegin(); it != l.paths.rend(); ++it)
        if (::unlink(it->c_str()) != 0 && errno == EISDIR) ::rmdir(it->c_str());
    l.paths.clear();
}
}  // namespace cleanup

SharedRegion SharedRegion::create(const Config& c, std::size_t bytes) {
    const std::string name = "/peers-" + c.method + "-" + std::to_string(::getpid());
    const int fd = ::shm_open(name.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) die(sys_error("shm_open " + name));
    cleanup::add_shm(name);
    if (::ftruncate(fd, static_cast<off_t>(bytes)) != 0) die(sys_error("ftruncate " + name));
    void* a = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (a == MAP_FAILED) die(sys_error("mmap " + name));
    if (::close(fd) != 0) die(sys_error("close " + name));
    write_note(c.dir, "shm", name);
    return SharedRegion(a, bytes);
}

SharedRegion SharedRegion::open(const Config& c, std::size_t bytes) {
    const std::string name = read_note(c.dir, "shm");
    const int fd = ::shm_open(name.c_str(), O_RDWR | O_CLOEXEC, 0);
    if (fd < 0) die(sys_error("shm_open " + name));
    struct stat st;
    if (::fstat(fd, &st) != 0) die(sys_error("fstat " + name));
    if (static_cast<std::size_t>(st.st_size) < bytes)
        die("shm " + name + ": smaller than expected");
    void* a = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (a == MAP_FAILED) die(sys_error("mmap " + name));
    if (::close(fd) != 0) die(sys_error("close " + name));
    return SharedRegion(a, bytes);
}

SharedRegion::~SharedRegion() {
    if (addr_ != nullptr) ::munmap(addr_, bytes_);
}

}  // namespace peers
