#include <tokenshm/shm/latch.hpp>
#include <tokenshm/shm/segment.hpp>

#include <fcntl.h>
#include <pwd.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>

namespace tokenshm::shm {

namespace {

Unexpected<SegmentError> fail(SegmentErrc code, std::string msg) {
    return Unexpected<SegmentError>{SegmentError{code, std::move(msg)}};
}

Unexpected<SegmentError> fail_sys(const SysError& e) {
    return fail(e.is_no_space() ? SegmentErrc::no_space : SegmentErrc::system, e.message());
}

std::string path_of(const std::string& name) {
    return "/" + name;
}

std::optional<uid_t> uid_of_user(const char* user) {
    struct passwd pw {};
    struct passwd* out = nullptr;
    char buf[1024];
    if (::getpwnam_r(user, &pw, buf, sizeof buf, &out) == 0 && out != nullptr) return pw.pw_uid;
    return std::nullopt;
}

std::string octal(mode_t m) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "%04o", static_cast<unsigned>(m & 07777));
    return buf;
}

std::string range_text(std::uint64_t lo, std::uint64_t hi) {
    return std::to_string(lo) + ".." + std::to_string(hi);
}

const char* kind_of(mode_t m) {
    if (S_ISDIR(m)) return "a directory";
    if (S_ISFIFO(m)) return "a FIFO";
    if (S_ISCHR(m)) return "a character device";
    if (S_ISBLK(m)) return "a block device";
    if (S_ISSOCK(m)) return "a socket";
    if (S_ISLNK(m)) return "a symlink";
    return "of an unknown type";
}

// The one home of the rule that a segment is a regular file, for readers and
// the writer alike: a symlink, FIFO, directory or device planted at the name
// is refused before it is locked, mapped or read (SPEC exit 6, "untrusted").
SegResult<Done> check_regular_file(const struct stat& st, const std::string& name) {
    if (S_ISREG(st.st_mode)) return Done{};
    return fail(SegmentErrc::untrusted, "segment '" + name + "' is not a regular file (it is " +
                                            kind_of(st.st_mode) + "): refusing it");
}

// A failed shm_open of the segment. ENOENT is the caller's business.
Unexpected<SegmentError> open_failure(const SysError& e, const std::string& name) {
    if (e.is_symlink())
        return fail(SegmentErrc::untrusted,
                    "segment '" + name + "' is a symlink: refusing it (" + e.message() + ")");
    if (e.is_not_regular_file())
        return fail(
            SegmentErrc::untrusted,
            "segment '" + name + "' is not a regular file: refusing it (" + e.message() + ")");
    if (e.is_permission_denied())
        return fail(SegmentErrc::untrusted,
                    "segment '" + name + "': permission denied (" + e.message() + ")");
    return fail_sys(e);
}

}  // namespace

// Geometry first (magic, version, header size), then the sizes against each
// other and against the mapped length.
SegResult<Done> validate_header(const Header& h, std::size_t mapped_len, const std::string& name) {
    const std::string seg = "segment '" + name + "': ";
    const std::uint64_t magic = h.magic.load(std::memory_order_acquire);
    if (magic == 0)
        return fail(SegmentErrc::no_segment, seg + "not initialised yet (refresher starting?)");
    if (magic != kMagic)
        return fail(SegmentErrc::incompatible, seg + "bad magic: not a tokenshm segment");
    if (h.major != kMajor)
        return fail(SegmentErrc::incompatible,
                    seg + "layout major version " + std::to_string(h.major) +
                        ", this library reads " + std::to_string(kMajor));
    if (h.header_size != TOKENSHM_HEADER_SIZE)
        return fail(SegmentErrc::incompatible, seg + "header size " +
                                                   std::to_string(h.header_size) + ", expected " +
                                                   std::to_string(TOKENSHM_HEADER_SIZE));
    if (h.slot_count == 0 || h.slot_count > TOKENSHM_MAX_SLOTS)
        return fail(SegmentErrc::incompatible, seg + "slot count " + std::to_string(h.slot_count) +
                                                   " outside " + range_text(1, TOKENSHM_MAX_SLOTS));
    if (h.max_token_bytes < TOKENSHM_MIN_TOKEN_BYTES ||
        h.max_token_bytes > TOKENSHM_MAX_TOKEN_BYTES_LIMIT)
        return fail(SegmentErrc::incompatible,
                    seg + "max_token_bytes " + std::to_string(h.max_token_bytes) + " outside " +
                        range_text(TOKENSHM_MIN_TOKEN_BYTES, TOKENSHM_MAX_TOKEN_BYTES_LIMIT));
    const Geometry g{h.max_token_bytes, h.slot_count};
    if (h.record_size != g.record_size() || h.slot_size != g.slot_size())
        return fail(SegmentErrc::incompatible,
                    seg + "record size " + std::to_string(h.record_size) + " / slot size " +
                        std::to_string(h.slot_size) + " do not match max_token_bytes " +
                        std::to_string(h.max_token_bytes));
    if (h.total_size != g.total_size())
        return fail(SegmentErrc::incompatible, seg + "total size " + std::to_string(h.total_size) +
                                                   " does not add up (expected " +
                                                   std::to_string(g.total_size()) + ")");
    if (h.total_size > mapped_len)
        return fail(SegmentErrc::incompatible,
                    seg + "truncated: header says " + std::to_string(h.total_size) +
                        " bytes, file has " + std::to_string(mapped_len));
    return Done{};
}

// ---------------------------------------------------------------- reader side

namespace {

// What fstat says of the file before it is mapped: an owner the reader trusts
// (SPEC "The segment"), no group or other write bit, and a size that can hold
// the header (0 is a refresher still creating it).
SegResult<Done> check_file(const struct stat& st, const std::string& name,
                           std::optional<uid_t> trusted) {
    const uid_t owner = st.st_uid;
    const bool owner_ok = owner == ::geteuid() || owner == 0 || (trusted && owner == *trusted) ||
                          uid_of_user("tokenshm") == owner;
    if (!owner_ok)
        return fail(SegmentErrc::untrusted,
                    "segment '" + name + "' is owned by uid " + std::to_string(owner) +
                        ", which is not trusted (set TOKENSHM_TRUSTED_UID to accept it)");
    if ((st.st_mode & 022) != 0)
        return fail(SegmentErrc::untrusted, "segment '" + name + "' has mode " + octal(st.st_mode) +
                                                ": writable by group or others, refusing it");
    if (st.st_size == 0)  // created, not yet sized: the refresher is starting
        return fail(SegmentErrc::no_segment,
                    "segment '" + name + "' is not initialised yet (refresher starting?)");
    if (st.st_size < static_cast<off_t>(sizeof(Header)))
        return fail(SegmentErrc::incompatible, "segment '" + name +
                                                   "' is truncated: " + std::to_string(st.st_size) +
                                                   " bytes, smaller than the " +
                                                   std::to_string(sizeof(Header)) + "-byte header");
    return Done{};
}

}  // namespace

SegResult<ReadOnlySegment> ReadOnlySegment::open(std::string_view name_in, const Options& opts) {
    ReadOnlySegment seg;
    seg.name_ = std::string(name_in);
    const std::string& name = seg.name_;
    if (!valid_segment_name(name))
        return fail(SegmentErrc::invalid,
                    "segment name '" + name + "' is not " + std::string(kSegmentNameRule));

    auto fd = sys::shm_open(path_of(name), O_RDONLY, 0);
    if (!fd) {
        if (fd.error().is_not_found())
            return fail(SegmentErrc::no_segment,
                        "segment '" + name + "' does not exist (is tokenshm-refresher running?)");
        return open_failure(fd.error(), name);
    }
    auto st = sys::fstat(fd->get(), path_of(name));
    if (!st) return fail_sys(st.error());
    if (auto ok = check_regular_file(*st, name); !ok) return Unexpected{std::move(ok).error()};
    if (auto ok = check_file(*st, name, opts.trusted_uid); !ok)
        return Unexpected{std::move(ok).error()};

    auto map = sys::mmap(fd->get(), static_cast<std::size_t>(st->st_size), false, path_of(name));
    if (!map) return fail_sys(map.error());
    const auto& hdr = *static_cast<const Header*>(map->addr());
    if (auto ok = validate_header(hdr, map->size(), name); !ok)
        return Unexpected{std::move(ok).error()};

    seg.geo_ = Geometry{hdr.max_token_bytes, hdr.slot_count};
    seg.dev_ = st->st_dev;
    seg.ino_ = st->st_ino;
    seg.fd_ = std::move(*fd);
    seg.map_ = std::move(*map);
    return seg;
}

std::optional<std::uint32_t> ReadOnlySegment::find(std::string_view n) const noexcept {
    if (!valid_credential_name(n)) return std::nullopt;
    for (std::uint32_t i = 0; i < geo_.slot_count; ++i) {
        const SlotControl* s = slot(i);
        if (s->status.load(std::memory_order_acquire) != TOKENSHM_SLOT_ACTIVE) continue;
        // The name is written before status becomes active and never changes after.
        if (std::strncmp(s->name, n.data(), n.size()) == 0 &&
            (n.size() == TOKENSHM_SLOT_NAME_CAP || s->name[n.size()] == '\0'))
            return i;
    }
    return std::nullopt;
}

std::string ReadOnlySegment::control_socket() const {
    char buf[TOKENSHM_CONTROL_SOCKET_CAP];
    std::memcpy(buf, header().control_socket, sizeof buf);  // the writer's, once per attach
    const std::size_t n = ::strnlen(buf, sizeof buf);
    if (n == 0 || n == sizeof buf || buf[0] != '/') return {};
    return std::string(buf, n);
}

WriterInfo ReadOnlySegment::writer() const noexcept {
    const Header& h = header();
    return WriterInfo{h.writer_pid.load(std::memory_order_relaxed),
                      h.writer_start_ms.load(std::memory_order_relaxed),
                      h.writer_generation.load(std::memory_order_relaxed),
                      h.heartbeat_ms.load(std::memory_order_relaxed)};
}

SysResult<bool> ReadOnlySegment::writer_holds_lock() const {
    return sys::write_locked_by_other(fd_.get(), path_of(name_));
}

// ---------------------------------------------------------------- writer side

namespace {

struct OpenedSegment {
    Fd fd;
    bool created = false;
};

// Opens the segment, or creates it exclusively when it does not exist.
SegResult<OpenedSegment> open_or_create(const std::string& name, mode_t mode) {
    const std::string path = path_of(name);
    for (int attempt = 0; attempt < 3; ++attempt) {
        auto fd = sys::shm_open(path, O_RDWR, 0);
        if (fd) return OpenedSegment{std::move(*fd), false};
        if (!fd.error().is_not_found()) return open_failure(fd.error(), name);
        auto created = sys::shm_open(path, O_RDWR | O_CREAT | O_EXCL, mode);
        if (created) return OpenedSegment{std::move(*created), true};
        if (!created.error().is_already_exists()) return open_failure(created.error(), name);
        // Another process created it between our two calls; attach to it.
    }
    return fail(SegmentErrc::system, "segment '" + name + "': could not open or create it");
}

// Takes the writer's lock, or says which refresher holds it.
SegResult<Done> lock_writer(int fd, const std::string& path, const std::string& seg) {
    auto lk = sys::lock_exclusive(fd, path);
    if (lk) return Done{};
    if (!lk.error().is_lock_held()) return fail_sys(lk.error());
    std::string who = "another refresher";
    if (auto st = sys::fstat(fd, path); st && st->st_size >= static_cast<off_t>(sizeof(Header))) {
        if (auto m = sys::mmap(fd, sizeof(Header), false, path)) {
            const auto& h = *static_cast<const Header*>(m->addr());
            if (const auto pid = h.writer_pid.load(std::memory_order_relaxed); pid > 0)
                who = "tokenshm-refresher pid " + std::to_string(pid);
        }
    }
    return fail(SegmentErrc::locked, seg + " is held by " + who);
}

// What must hold before the file is locked or anything in it is read: a
// regular file of our own. A foreign file's header (its "writer pid", its
// geometry) is never read, not even for an error message.
SegResult<Done> check_before_lock(int fd, const std::string& name) {
    auto st = sys::fstat(fd, path_of(name));
    if (!st) return fail_sys(st.error());
    if (auto ok = check_regular_file(*st, name); !ok) return ok;
    if (st->st_uid != ::geteuid())
        return fail(SegmentErrc::untrusted, "segment '" + name + "' is owned by uid " +
                                                std::to_string(st->st_uid) +
                                                ", not by us: refusing to adopt it");
    return Done{};
}

// A creator killed between O_CREAT and publishing the magic leaves an empty or
// unpublished segment. We hold the lock, so nobody is still creating it: once
// owner and mode check out, the caller finishes the job.
bool unfinished_creation(int fd, const struct stat& st, mode_t mode, const std::string& path) {
    if (st.st_uid != ::geteuid() || (st.st_mode & 07777) != mode) return false;
    if (st.st_size == 0) return true;
    if (st.st_size < static_cast<off_t>(sizeof(Header))) return false;
    auto m = sys::mmap(fd, sizeof(Header), false, path);
    return m && static_cast<const Header*>(m->addr())->magic.load(std::memory_order_acquire) == 0;
}

SegResult<Done> check_spec(const SegmentSpec& spec, const std::string& seg) {
    if (!valid_segment_name(spec.name))
        return fail(SegmentErrc::invalid,
                    "segment name '" + spec.name + "' is not " + std::string(kSegmentNameRule));
    if (spec.max_token_bytes < TOKENSHM_MIN_TOKEN_BYTES ||
        spec.max_token_bytes > TOKENSHM_MAX_TOKEN_BYTES_LIMIT || spec.slot_count == 0 ||
        spec.slot_count > TOKENSHM_MAX_SLOTS)
        return fail(SegmentErrc::invalid, seg + ": max_token_bytes or slot count out of range");
    if ((spec.mode & ~mode_t{0640}) != 0)
        return fail(SegmentErrc::invalid,
                    seg + ": mode " + octal(spec.mode) + " must allow no more than 0640");
    if (!spec.control_socket.empty() &&
        (spec.control_socket.size() >= TOKENSHM_CONTROL_SOCKET_CAP ||
         spec.control_socket.front() != '/' || spec.control_socket.find('\0') != std::string::npos))
        return fail(SegmentErrc::invalid,
                    seg + ": control socket path must be absolute and under " +
                        std::to_string(TOKENSHM_CONTROL_SOCKET_CAP) + " bytes");
    return Done{};
}

}  // namespace

SegResult<WriterSegment> WriterSegment::create_or_attach(const SegmentSpec& spec,
                                                         std::vector<std::string>* repaired) {
    auto w = open_unstamped(spec, repaired);
    if (!w) return w;
    w->stamp_writer();
    return w;
}

SegResult<WriterSegment> WriterSegment::open_unstamped(const SegmentSpec& spec,
                                                       std::vector<std::string>* repaired) {
    const std::string path = path_of(spec.name);
    const std::string seg = "segment '" + spec.name + "'";
    if (auto ok = check_spec(spec, seg); !ok) return Unexpected{std::move(ok).error()};
    WriterSegment w;
    w.name_ = spec.name;
    w.geo_ = Geometry{spec.max_token_bytes, spec.slot_count};
    w.step_hook_ = spec.step_hook;
    w.spec_ = spec;

    auto opened = open_or_create(spec.name, spec.mode);
    if (!opened) return Unexpected{std::move(opened).error()};
    w.fd_ = std::move(opened->fd);
    w.created_ = opened->created;
    if (auto ok = check_before_lock(w.fd_.get(), spec.name); !ok)
        return Unexpected{std::move(ok).error()};
    if (auto lk = lock_writer(w.fd_.get(), path, seg); !lk)
        return Unexpected{std::move(lk).error()};

    auto st = sys::fstat(w.fd_.get(), path);
    if (!st) return fail_sys(st.error());
    if (!w.created_ && unfinished_creation(w.fd_.get(), *st, spec.mode, path)) w.created_ = true;

    auto ready = w.created_ ? w.initialise(spec) : w.adopt(spec, *st);
    if (!ready) return Unexpected{std::move(ready).error()};
    if (!w.created_) w.repair_slots(repaired);
    w.remember_slots();
    return w;
}

void WriterSegment::remember_slots() {
    slot_names_.assign(geo_.slot_count, SlotName{});
    for (std::uint32_t i = 0; i < geo_.slot_count; ++i) {
        const SlotControl* s = slot_ptr(i);
        slot_names_[i].status = s->status.load(std::memory_order_relaxed);
        if (slot_names_[i].status != TOKENSHM_SLOT_FREE)
            slot_names_[i].name.assign(s->name, ::strnlen(s->name, sizeof s->name));
    }
}

SegResult<Done> WriterSegment::initialise(const SegmentSpec& spec) {
    const std::string path = path_of(name_);
    const std::size_t total = geo_.total_size();
    // shm_open's mode passed through the umask; set exactly what was asked.
    if (auto r = sys::fchmod(fd_.get(), spec.mode, path); !r) return fail_sys(r.error());
    if (spec.group)
        if (auto r = sys::fchown(fd_.get(), static_cast<uid_t>(-1), *spec.group, path); !r)
            return fail_sys(r.error());
    // Reserve every page now: a full /dev/shm fails here, not as SIGBUS later.
    if (auto r = sys::posix_fallocate(fd_.get(), static_cast<off_t>(total), path); !r) {
        (void)sys::shm_unlink(path);
        if (r.error().is_no_space())
            return fail(SegmentErrc::no_space,
                        "segment '" + name_ + "': /dev/shm has no room for " +
                            std::to_string(total) +
                            " bytes (posix_fallocate: No space left on device)");
        return fail_sys(r.error());
    }
    auto map = sys::mmap(fd_.get(), total, true, path);
    if (!map) return fail_sys(map.error());
    map_ = std::move(*map);
    Header& h = header();
    h.major = kMajor;
    h.minor = kMinor;
    h.header_size = TOKENSHM_HEADER_SIZE;
    h.slot_count = geo_.slot_count;
    h.slot_size = static_cast<std::uint32_t>(geo_.slot_size());
    h.max_token_bytes = geo_.max_token_bytes;
    h.record_size = static_cast<std::uint32_t>(geo_.record_size());
    h.total_size = total;
    h.created_ms = sys::realtime_ms();
    step(WriterStep::header_init);
    return Done{};
}

SegResult<Done> WriterSegment::adopt(const SegmentSpec& spec, const struct stat& st) {
    const std::string seg = "segment '" + name_ + "'";
    const std::string remove_it = ": remove it (rm /dev/shm/" + name_ + ") and restart";
    // The owner was checked before the lock was taken (check_before_lock).
    if ((st.st_mode & 07777) != spec.mode)
        return fail(SegmentErrc::untrusted, seg + " has mode " + octal(st.st_mode) +
                                                ", configured " + octal(spec.mode) +
                                                ": refusing to adopt it");
    if (spec.group && st.st_gid != *spec.group)
        return fail(SegmentErrc::untrusted, seg + " has group " + std::to_string(st.st_gid) +
                                                ", configured " + std::to_string(*spec.group) +
                                                ": refusing to adopt it");
    if (st.st_size < static_cast<off_t>(sizeof(Header)))
        return fail(SegmentErrc::incompatible,
                    seg + " is truncated (" + std::to_string(st.st_size) + " bytes)" + remove_it);
    auto map = sys::mmap(fd_.get(), static_cast<std::size_t>(st.st_size), true, path_of(name_));
    if (!map) return fail_sys(map.error());
    map_ = std::move(*map);
    if (auto ok = validate_header(header(), map_.size(), name_); !ok) {
        SegmentError bad = std::move(ok).error();
        bad.message += remove_it;
        return Unexpected{std::move(bad)};
    }
    if (header().max_token_bytes != spec.max_token_bytes)
        return fail(SegmentErrc::incompatible,
                    seg + " was made with max_token_bytes " +
                        std::to_string(header().max_token_bytes) + ", configured " +
                        std::to_string(spec.max_token_bytes) + ": remove it (rm /dev/shm/" + name_ +
                        ") or keep the old value");
    geo_ = Geometry{header().max_token_bytes, header().slot_count};
    return Done{};
}

// Validates every slot a previous writer left. A slot whose status or current
// record no honest writer could have produced is reset to empty through the
// latch, so readers are never pointed at garbage.
void WriterSegment::repair_slots(std::vector<std::string>* repaired) {
    std::vector<std::uint64_t> scratch;
    auto note = [repaired](std::string line) {
        if (repaired) repaired->push_back(std::move(line));
    };
    for (std::uint32_t i = 0; i < geo_.slot_count; ++i) {
        SlotControl* s = slot_ptr(i);
        const std::uint32_t status = s->status.load(std::memory_order_relaxed);
        const bool name_ok =
            ::memchr(s->name, '\0', sizeof s->name) != nullptr && valid_credential_name(s->name);
        if (status == TOKENSHM_SLOT_FREE) continue;
        if (status > TOKENSHM_SLOT_REMOVED || !name_ok) {
            s->status.store(TOKENSHM_SLOT_FREE, std::memory_order_release);
            std::memset(s->name, 0, sizeof s->name);
            note("slot " + std::to_string(i) + ": bad status or name, freed");
            continue;
        }
        if (!current(i, scratch)) {
            // Versions only grow: continue from whatever the counter says.
            SlotRecord empty;
            empty.version = s->seq.load(std::memory_order_relaxed) + 1;
            (void)publish(i, empty);
            note(std::string("slot '") + s->name + "': corrupt record, reset to empty");
        }
    }
}

void WriterSegment::stamp_writer() noexcept {
    Header& h = header();
    h.writer_pid.store(::getpid(), std::memory_order_relaxed);
    h.writer_start_ms.store(sys::realtime_ms(), std::memory_order_relaxed);
    h.writer_generation.fetch_add(1, std::memory_order_relaxed);
    h.heartbeat_ms.store(sys::realtime_ms(), std::memory_order_relaxed);
    // Layout 1.2: name the control socket (an older segment adopted here
    // becomes 1.2, which its older readers accept: only minors differ).
    std::memset(h.control_socket, 0, sizeof h.control_socket);
    std::memcpy(h.control_socket, spec_.control_socket.data(),
                std::min(spec_.control_socket.size(), sizeof h.control_socket - 1));
    if (h.minor < kMinor) h.minor = kMinor;
    // Publishing the magic last makes the geometry above visible to any reader
    // that sees a valid magic (they load it with acquire).
    h.magic.store(kMagic, std::memory_order_release);
}

SegResult<std::uint32_t> WriterSegment::claim(std::string_view n) {
    if (!valid_credential_name(n))
        return fail(SegmentErrc::invalid, "credential name '" + std::string(n) + "' is not " +
                                              std::string(kCredentialNameRule));
    std::optional<std::uint32_t> free_slot;
    for (std::uint32_t i = 0; i < geo_.slot_count; ++i) {
        SlotControl* s = slot_ptr(i);
        const std::uint32_t status = s->status.load(std::memory_order_relaxed);
        if (status == TOKENSHM_SLOT_FREE) {
            if (!free_slot) free_slot = i;
            continue;
        }
        if (std::strncmp(s->name, n.data(), sizeof s->name) == 0 && s->name[n.size()] == '\0') {
            if (status != TOKENSHM_SLOT_ACTIVE)
                s->status.store(TOKENSHM_SLOT_ACTIVE, std::memory_order_release);
            slot_names_[i].status = TOKENSHM_SLOT_ACTIVE;
            return i;
        }
    }
    if (!free_slot)
        return fail(SegmentErrc::invalid, "segment '" + name_ + "' has no free slot for '" +
                                              std::string(n) + "' (" +
                                              std::to_string(geo_.slot_count) + " slots in use)");
    SlotControl* s = slot_ptr(*free_slot);
    std::memset(s->name, 0, sizeof s->name);
    std::memcpy(s->name, n.data(), n.size());
    step(WriterStep::slot_claim);
    // The name must be visible before any reader can find the slot active.
    s->status.store(TOKENSHM_SLOT_ACTIVE, std::memory_order_release);
    slot_names_[*free_slot] = SlotName{std::string(n), TOKENSHM_SLOT_ACTIVE};
    return *free_slot;
}

void WriterSegment::retire(std::uint32_t slot) {
    SlotControl* s = slot_ptr(slot);
    s->status.store(TOKENSHM_SLOT_REMOVED, std::memory_order_release);
    slot_names_[slot].status = TOKENSHM_SLOT_REMOVED;
    step(WriterStep::retire);
    s->futex.fetch_add(1, std::memory_order_release);
    sys::futex_wake_all(&s->futex);
}

std::vector<std::pair<std::string, std::uint32_t>> WriterSegment::active_slots() const {
    std::vector<std::pair<std::string, std::uint32_t>> out;
    for (std::uint32_t i = 0; i < geo_.slot_count; ++i) {
        const SlotControl* s = slot_ptr(i);
        if (s->status.load(std::memory_order_relaxed) == TOKENSHM_SLOT_ACTIVE)
            out.emplace_back(std::string(s->name, ::strnlen(s->name, sizeof s->name)), i);
    }
    return out;
}

Expected<Done, EncodeError> WriterSegment::publish(std::uint32_t slot, const SlotRecord& rec) {
    if (auto ok = encode(rec, geo_.max_token_bytes, image_); !ok) return ok;
    published_.keep(slot, image_);
    // A truncated file would SIGBUS the stores below; the record waits in
    // published_ for recreate() (ensure_intact()) to put it in a new segment.
    if (!mapping_usable()) return Done{};
    SlotControl* s = slot_ptr(slot);
    const LatchWriter latch{&s->seq,
                            {copy_at(s, geo_.record_size(), 0), copy_at(s, geo_.record_size(), 1)}};
    latch.publish(image_.data(), image_.size(), [this] { step(WriterStep::mid_copy); });
    s->futex.fetch_add(1, std::memory_order_release);
    sys::futex_wake_all(&s->futex);
    return Done{};
}

std::optional<RecordView> WriterSegment::current(std::uint32_t slot,
                                                 std::vector<std::uint64_t>& scratch) const {
    const SlotControl* s = slot_ptr(slot);
    const LatchReader latch{&s->seq,
                            {copy_at(s, geo_.record_size(), 0), copy_at(s, geo_.record_size(), 1)}};
    constexpr std::size_t kFixedWords = TOKENSHM_REC_FIXED_SIZE / 8;
    scratch.assign(geo_.record_size() / 8, 0);
    RecordLengths lengths;
    auto payload_words = [&](const std::uint64_t* head) {
        lengths = read_lengths(head);
        return clamped_payload_words(lengths, geo_.max_token_bytes);
    };
    // We are the only writer, so the first try always copies.
    const LatchCopy c = latch.try_read(latch.current(), geo_.record_size(), scratch.data(),
                                       kFixedWords, payload_words);
    RecordView v{};
    if (!c.copied || !decode(scratch.data(), c.words, lengths, geo_.max_token_bytes, v))
        return std::nullopt;
    return v;
}

void WriterSegment::heartbeat(std::int64_t now_ms) noexcept {
    if (mapping_usable()) header().heartbeat_ms.store(now_ms, std::memory_order_relaxed);
}

bool WriterSegment::unlinked() const {
    auto st = sys::fstat(fd_.get(), path_of(name_));
    return st && st->st_nlink == 0;
}

void WriterSegment::unlink() const {
    (void)sys::shm_unlink(path_of(name_));
}

// ------------------------------------------------------- a segment recreated

const char* to_string(Integrity i) noexcept {
    switch (i) {
        case Integrity::intact:
            return "intact";
        case Integrity::truncated:
            return "truncated";
        case Integrity::unlinked:
            return "unlinked";
        case Integrity::replaced:
            return "replaced by another file";
    }
    return "unknown";
}

PublishedImages& PublishedImages::operator=(PublishedImages&& o) noexcept {
    if (this != &o) {
        wipe();
        images_ = std::move(o.images_);
    }
    return *this;
}
PublishedImages::~PublishedImages() {
    wipe();
}
void PublishedImages::wipe() noexcept {
    for (auto& img : images_)
        if (!img.empty()) ::explicit_bzero(img.data(), img.size() * sizeof img[0]);
}
void PublishedImages::keep(std::uint32_t slot, const std::vector<std::uint64_t>& image) {
    if (images_.size() <= slot) images_.resize(std::size_t{slot} + 1);
    std::vector<std::uint64_t>& mine = images_[slot];
    // Same capacity every time (the slot's record size): no reallocation
    // leaves an unwiped copy behind.
    if (!mine.empty()) ::explicit_bzero(mine.data(), mine.size() * sizeof mine[0]);
    mine.assign(image.begin(), image.end());
}
const std::vector<std::uint64_t>& PublishedImages::of(std::uint32_t slot) const {
    static const std::vector<std::uint64_t> kNone;
    return slot < images_.size() ? images_[slot] : kNone;
}

bool WriterSegment::mapping_usable() const noexcept {
    auto st = sys::fstat(fd_.get(), {});
    return st && st->st_size >= static_cast<off_t>(geo_.total_size());
}

SegResult<Integrity> WriterSegment::check_intact() const {
    const std::string path = path_of(name_);
    auto mine = sys::fstat(fd_.get(), path);
    if (!mine) return fail_sys(mine.error());
    if (mine->st_size < static_cast<off_t>(geo_.total_size())) return Integrity::truncated;
    auto named = sys::lstat_shm(path);
    if (!named) {
        if (named.error().is_not_found()) return Integrity::unlinked;
        return fail_sys(named.error());
    }
    if (named->st_dev != mine->st_dev || named->st_ino != mine->st_ino) return Integrity::replaced;
    return mine->st_nlink == 0 ? Integrity::unlinked : Integrity::intact;
}

SegResult<Integrity> WriterSegment::ensure_intact() {
    auto found = check_intact();
    if (!found || *found == Integrity::intact) return found;
    if (auto made = recreate(*found); !made) return Unexpected{std::move(made).error()};
    return found;
}

SegResult<Done> WriterSegment::recreate(Integrity why) {
    if (why == Integrity::truncated) free_truncated_name();
    SegmentSpec spec = spec_;
    spec.step_hook = step_hook_;
    auto fresh = open_unstamped(spec, nullptr);
    if (!fresh) return Unexpected{std::move(fresh).error()};
    if (!fresh->created_)
        // The name holds a segment we did not make (a person's, another
        // refresher's): not ours to overwrite. Ours stays as it was.
        return fail(SegmentErrc::locked,
                    "segment '" + name_ + "' was " + to_string(why) +
                        " and the name now holds another segment: " + "not replacing it");
    fresh->refill_from(*this);
    fresh->stamp_writer();
    if (mapping_usable()) retire_segment();
    *this = std::move(*fresh);
    return Done{};
}

// A truncated file: grow it back, so that readers still mapping it read
// zeros (and then the retired marks) instead of faulting, and free its name
// for the new segment. Failures only cost those readers: they are not fatal.
void WriterSegment::free_truncated_name() {
    const std::string path = path_of(name_);
    (void)sys::posix_fallocate(fd_.get(), static_cast<off_t>(geo_.total_size()), path);
    auto named = sys::lstat_shm(path);
    auto mine = sys::fstat(fd_.get(), path);
    if (named && mine && named->st_dev == mine->st_dev && named->st_ino == mine->st_ino)
        (void)sys::shm_unlink(path);
}

// The same slots at the same indexes (the refresher keeps slot numbers) and
// the last record of each, latched in as the new segment's first publish.
void WriterSegment::refill_from(const WriterSegment& old) {
    const std::uint32_t n = std::min(geo_.slot_count, old.geo_.slot_count);
    for (std::uint32_t i = 0; i < n; ++i) {
        const SlotName& was = old.slot_names_[i];
        if (was.status != TOKENSHM_SLOT_ACTIVE && was.status != TOKENSHM_SLOT_REMOVED) continue;
        SlotControl* s = slot_ptr(i);
        std::memset(s->name, 0, sizeof s->name);
        std::memcpy(s->name, was.name.data(), std::min(was.name.size(), sizeof s->name - 1));
        s->status.store(was.status, std::memory_order_release);
        slot_names_[i] = was;
        const std::vector<std::uint64_t>& img = old.published_.of(i);
        if (img.empty()) continue;
        const LatchWriter latch{
            &s->seq, {copy_at(s, geo_.record_size(), 0), copy_at(s, geo_.record_size(), 1)}};
        latch.publish(img.data(), img.size(), [] {});
        published_.keep(i, img);
    }
}

// Tells readers of this (old) segment to reopen by name: the header flag,
// then every slot retired (their inline get() checks the status, so each
// falls to its slow path), then waiters woken.
void WriterSegment::retire_segment() noexcept {
    header().retired.store(1, std::memory_order_release);
    for (std::uint32_t i = 0; i < geo_.slot_count; ++i) {
        SlotControl* s = slot_ptr(i);
        if (s->status.load(std::memory_order_relaxed) == TOKENSHM_SLOT_FREE) continue;
        s->status.store(TOKENSHM_SLOT_RETIRED, std::memory_order_release);
        s->futex.fetch_add(1, std::memory_order_release);
        sys::futex_wake_all(&s->futex);
    }
}

}  // namespace tokenshm::shm
