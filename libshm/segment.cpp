#include <tokenshm/shm/latch.hpp>
#include <tokenshm/shm/segment.hpp>

#include <fcntl.h>
#include <pwd.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <cstring>

namespace tokenshm::shm {

namespace {

bool name_chars_ok(std::string_view n) noexcept {
    for (char c : n) {
        const bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                        (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
        if (!ok) return false;
    }
    return true;
}

Unexpected<SegmentError> fail(SegmentErrc code, std::string msg) {
    return Unexpected<SegmentError>{SegmentError{code, std::move(msg)}};
}

Unexpected<SegmentError> fail_sys(const SysError& e) {
    return fail(e.err == ENOSPC ? SegmentErrc::no_space : SegmentErrc::system, e.message());
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

}  // namespace

bool valid_segment_name(std::string_view n) noexcept {
    return !n.empty() && n.size() <= 200 && n != "." && n != ".." && name_chars_ok(n);
}

bool valid_slot_name(std::string_view n) noexcept {
    return !n.empty() && n.size() < TOKENSHM_SLOT_NAME_CAP && name_chars_ok(n);
}

std::string resolve_segment_name(std::string_view explicit_name) {
    if (!explicit_name.empty()) return std::string(explicit_name);
    if (const char* env = std::getenv("TOKENSHM_SEGMENT"); env != nullptr && *env != '\0')
        return env;
    return "tokenshm";
}

std::optional<SegmentError> validate_header(const Header& h, std::size_t mapped_len,
                                            const std::string& name) {
    const std::string seg = "segment '" + name + "': ";
    const std::uint64_t magic = h.magic.load(std::memory_order_acquire);
    if (magic == 0)
        return SegmentError{SegmentErrc::no_segment,
                            seg + "not initialised yet (refresher starting?)"};
    if (magic != kMagic)
        return SegmentError{SegmentErrc::incompatible, seg + "bad magic: not a tokenshm segment"};
    if (h.major != kMajor)
        return SegmentError{SegmentErrc::incompatible,
                            seg + "layout major version " + std::to_string(h.major) +
                                ", this library reads " + std::to_string(kMajor)};
    if (h.header_size != TOKENSHM_HEADER_SIZE)
        return SegmentError{SegmentErrc::incompatible,
                            seg + "header size " + std::to_string(h.header_size) + ", expected " +
                                std::to_string(TOKENSHM_HEADER_SIZE)};
    if (h.slot_count == 0 || h.slot_count > TOKENSHM_MAX_SLOTS)
        return SegmentError{SegmentErrc::incompatible,
                            seg + "slot count " + std::to_string(h.slot_count) + " outside 1.." +
                                std::to_string(TOKENSHM_MAX_SLOTS)};
    if (h.max_token_bytes < TOKENSHM_MIN_TOKEN_BYTES ||
        h.max_token_bytes > TOKENSHM_MAX_TOKEN_BYTES_LIMIT)
        return SegmentError{SegmentErrc::incompatible,
                            seg + "max_token_bytes " + std::to_string(h.max_token_bytes) +
                                " outside " + std::to_string(TOKENSHM_MIN_TOKEN_BYTES) + ".." +
                                std::to_string(TOKENSHM_MAX_TOKEN_BYTES_LIMIT)};
    const Geometry g{h.max_token_bytes, h.slot_count};
    if (h.record_size != g.record_size() || h.slot_size != g.slot_size())
        return SegmentError{SegmentErrc::incompatible,
                            seg + "record size " + std::to_string(h.record_size) + " / slot size " +
                                std::to_string(h.slot_size) + " do not match max_token_bytes " +
                                std::to_string(h.max_token_bytes)};
    if (h.total_size != g.total_size())
        return SegmentError{SegmentErrc::incompatible, seg + "total size " +
                                                           std::to_string(h.total_size) +
                                                           " does not add up (expected " +
                                                           std::to_string(g.total_size()) + ")"};
    if (h.total_size > mapped_len)
        return SegmentError{SegmentErrc::incompatible,
                            seg + "truncated: header says " + std::to_string(h.total_size) +
                                " bytes, file has " + std::to_string(mapped_len)};
    return std::nullopt;
}

// ---------------------------------------------------------------- reader side

SegResult<ReadOnlySegment> ReadOnlySegment::open(std::string_view name_in, const Options& opts) {
    ReadOnlySegment seg;
    seg.name_ = std::string(name_in);
    const std::string& name = seg.name_;
    if (!valid_segment_name(name))
        return fail(SegmentErrc::invalid,
                    "segment name '" + name + "' is not [A-Za-z0-9._-]{1,200}");

    auto fd = sys::shm_open(path_of(name), O_RDONLY, 0);
    if (!fd) {
        if (fd.error().err == ENOENT)
            return fail(SegmentErrc::no_segment,
                        "segment '" + name + "' does not exist (is tokenshm-refresher running?)");
        if (fd.error().err == EACCES)
            return fail(SegmentErrc::untrusted,
                        "segment '" + name + "': permission denied (" + fd.error().message() + ")");
        return fail_sys(fd.error());
    }
    auto st = sys::fstat(fd->get(), path_of(name));
    if (!st) return fail_sys(st.error());

    std::optional<uid_t> trusted = opts.trusted_uid;
    if (!trusted) {
        if (const char* env = std::getenv("TOKENSHM_TRUSTED_UID"); env != nullptr && *env) {
            unsigned long v = 0;
            const char* end = env + std::strlen(env);
            auto [p, ec] = std::from_chars(env, end, v);
            if (ec != std::errc{} || p != end || v > 0xFFFFFFFEul)
                return fail(SegmentErrc::invalid,
                            "TOKENSHM_TRUSTED_UID is not a uid: '" + std::string(env) + "'");
            trusted = static_cast<uid_t>(v);
        }
    }
    const uid_t owner = st->st_uid;
    const bool owner_ok = owner == ::geteuid() || owner == 0 || (trusted && owner == *trusted) ||
                          uid_of_user("tokenshm") == owner;
    if (!owner_ok)
        return fail(SegmentErrc::untrusted,
                    "segment '" + name + "' is owned by uid " + std::to_string(owner) +
                        ", which is not trusted (set TOKENSHM_TRUSTED_UID to accept it)");
    if ((st->st_mode & 022) != 0)
        return fail(SegmentErrc::untrusted, "segment '" + name + "' has mode " +
                                                octal(st->st_mode) +
                                                ": writable by group or others, refusing it");
    if (st->st_size == 0)  // created, not yet sized: the refresher is starting
        return fail(SegmentErrc::no_segment,
                    "segment '" + name + "' is not initialised yet (refresher starting?)");
    if (st->st_size < static_cast<off_t>(sizeof(Header)))
        return fail(SegmentErrc::incompatible,
                    "segment '" + name + "' is truncated: " + std::to_string(st->st_size) +
                        " bytes, smaller than the " + std::to_string(sizeof(Header)) +
                        "-byte header");

    auto map = sys::mmap(fd->get(), static_cast<std::size_t>(st->st_size), false, path_of(name));
    if (!map) return fail_sys(map.error());
    const auto& hdr = *static_cast<const Header*>(map->addr());
    if (auto bad = validate_header(hdr, map->size(), name)) return Unexpected{std::move(*bad)};

    seg.geo_ = Geometry{hdr.max_token_bytes, hdr.slot_count};
    seg.fd_ = std::move(*fd);
    seg.map_ = std::move(*map);
    return seg;
}

std::optional<std::uint32_t> ReadOnlySegment::find(std::string_view n) const noexcept {
    if (!valid_slot_name(n)) return std::nullopt;
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

SegResult<WriterSegment> WriterSegment::create_or_attach(const SegmentSpec& spec,
                                                         std::vector<std::string>* repaired) {
    WriterSegment w;
    w.name_ = spec.name;
    const std::string path = path_of(spec.name);
    const std::string seg = "segment '" + spec.name + "'";
    if (!valid_segment_name(spec.name))
        return fail(SegmentErrc::invalid,
                    "segment name '" + spec.name + "' is not [A-Za-z0-9._-]{1,200}");
    if (spec.max_token_bytes < TOKENSHM_MIN_TOKEN_BYTES ||
        spec.max_token_bytes > TOKENSHM_MAX_TOKEN_BYTES_LIMIT || spec.slot_count == 0 ||
        spec.slot_count > TOKENSHM_MAX_SLOTS)
        return fail(SegmentErrc::invalid, seg + ": max_token_bytes or slot count out of range");
    if ((spec.mode & ~mode_t{0640}) != 0)
        return fail(SegmentErrc::invalid,
                    seg + ": mode " + octal(spec.mode) + " must allow no more than 0640");
    w.geo_ = Geometry{spec.max_token_bytes, spec.slot_count};
    w.step_hook_ = spec.step_hook;

    for (int attempt = 0; attempt < 3; ++attempt) {
        auto fd = sys::shm_open(path, O_RDWR, 0);
        if (fd) {
            w.fd_ = std::move(*fd);
            w.created_ = false;
            break;
        }
        if (fd.error().err != ENOENT) return fail_sys(fd.error());
        auto created = sys::shm_open(path, O_RDWR | O_CREAT | O_EXCL, spec.mode);
        if (created) {
            w.fd_ = std::move(*created);
            w.created_ = true;
            break;
        }
        if (created.error().err != EEXIST) return fail_sys(created.error());
        // Another process created it between our two calls; attach to it.
    }
    if (!w.fd_.valid()) return fail(SegmentErrc::system, seg + ": could not open or create it");

    if (auto lk = sys::lock_exclusive(w.fd_.get(), path); !lk) {
        if (lk.error().err == EAGAIN || lk.error().err == EACCES) {
            std::string who = "another refresher";
            if (auto st = sys::fstat(w.fd_.get(), path);
                st && st->st_size >= static_cast<off_t>(sizeof(Header))) {
                if (auto m = sys::mmap(w.fd_.get(), sizeof(Header), false, path)) {
                    const auto& h = *static_cast<const Header*>(m->addr());
                    if (const auto pid = h.writer_pid.load(std::memory_order_relaxed); pid > 0)
                        who = "tokenshm-refresher pid " + std::to_string(pid);
                }
            }
            return fail(SegmentErrc::locked, seg + " is held by " + who);
        }
        return fail_sys(lk.error());
    }

    auto st = sys::fstat(w.fd_.get(), path);
    if (!st) return fail_sys(st.error());
    const std::size_t total = w.geo_.total_size();

    // A creator killed between O_CREAT and publishing the magic leaves an
    // empty or unpublished segment. We hold the lock, so nobody is still
    // creating it: once owner and mode check out, finish the job.
    if (!w.created_ && st->st_uid == ::geteuid() && (st->st_mode & 07777) == spec.mode) {
        bool unfinished = st->st_size == 0;
        if (st->st_size >= static_cast<off_t>(sizeof(Header)))
            if (auto m = sys::mmap(w.fd_.get(), sizeof(Header), false, path))
                unfinished = static_cast<const Header*>(m->addr())->magic.load(
                                 std::memory_order_acquire) == 0;
        if (unfinished) w.created_ = true;
    }

    if (w.created_) {
        // shm_open's mode passed through the umask; set exactly what was asked.
        if (auto r = sys::fchmod(w.fd_.get(), spec.mode, path); !r) return fail_sys(r.error());
        if (spec.group)
            if (auto r = sys::fchown(w.fd_.get(), static_cast<uid_t>(-1), *spec.group, path); !r)
                return fail_sys(r.error());
        // Reserve every page now: a full /dev/shm fails here, not as SIGBUS later.
        if (auto r = sys::posix_fallocate(w.fd_.get(), static_cast<off_t>(total), path); !r) {
            (void)sys::shm_unlink(path);
            if (r.error().err == ENOSPC)
                return fail(SegmentErrc::no_space,
                            seg + ": /dev/shm has no room for " + std::to_string(total) +
                                " bytes (posix_fallocate: No space left on device)");
            return fail_sys(r.error());
        }
        auto map = sys::mmap(w.fd_.get(), total, true, path);
        if (!map) return fail_sys(map.error());
        w.map_ = std::move(*map);
        Header& h = w.header();
        h.major = kMajor;
        h.minor = kMinor;
        h.header_size = TOKENSHM_HEADER_SIZE;
        h.slot_count = w.geo_.slot_count;
        h.slot_size = static_cast<std::uint32_t>(w.geo_.slot_size());
        h.max_token_bytes = w.geo_.max_token_bytes;
        h.record_size = static_cast<std::uint32_t>(w.geo_.record_size());
        h.total_size = total;
        h.created_ms = sys::realtime_ms();
        w.step(WriterStep::header_init);
    } else {
        if (st->st_uid != ::geteuid())
            return fail(SegmentErrc::untrusted, seg + " is owned by uid " +
                                                    std::to_string(st->st_uid) +
                                                    ", not by us: refusing to adopt it");
        if ((st->st_mode & 07777) != spec.mode)
            return fail(SegmentErrc::untrusted, seg + " has mode " + octal(st->st_mode) +
                                                    ", configured " + octal(spec.mode) +
                                                    ": refusing to adopt it");
        if (spec.group && st->st_gid != *spec.group)
            return fail(SegmentErrc::untrusted, seg + " has group " + std::to_string(st->st_gid) +
                                                    ", configured " + std::to_string(*spec.group) +
                                                    ": refusing to adopt it");
        if (st->st_size < static_cast<off_t>(sizeof(Header)))
            return fail(SegmentErrc::incompatible,
                        seg + " is truncated (" + std::to_string(st->st_size) +
                            " bytes): remove it (rm /dev/shm/" + spec.name + ") and restart");
        auto map = sys::mmap(w.fd_.get(), static_cast<std::size_t>(st->st_size), true, path);
        if (!map) return fail_sys(map.error());
        w.map_ = std::move(*map);
        if (auto bad = validate_header(w.header(), w.map_.size(), spec.name)) {
            bad->message += ": remove it (rm /dev/shm/" + spec.name + ") and restart";
            return Unexpected{std::move(*bad)};
        }
        if (w.header().max_token_bytes != spec.max_token_bytes)
            return fail(SegmentErrc::incompatible,
                        seg + " was made with max_token_bytes " +
                            std::to_string(w.header().max_token_bytes) + ", configured " +
                            std::to_string(spec.max_token_bytes) + ": remove it (rm /dev/shm/" +
                            spec.name + ") or keep the old value");
        w.geo_ = Geometry{w.header().max_token_bytes, w.header().slot_count};

        // Validate every slot a previous writer left. A slot whose status or
        // current record no honest writer could have produced is reset to empty
        // through the latch, so readers are never pointed at garbage.
        std::vector<std::uint64_t> scratch;
        for (std::uint32_t i = 0; i < w.geo_.slot_count; ++i) {
            SlotControl* s = w.slot_ptr(i);
            const std::uint32_t status = s->status.load(std::memory_order_relaxed);
            const bool name_ok =
                ::memchr(s->name, '\0', sizeof s->name) != nullptr && valid_slot_name(s->name);
            if (status == TOKENSHM_SLOT_FREE) continue;
            if (status > TOKENSHM_SLOT_REMOVED || !name_ok) {
                s->status.store(TOKENSHM_SLOT_FREE, std::memory_order_release);
                std::memset(s->name, 0, sizeof s->name);
                if (repaired)
                    repaired->push_back("slot " + std::to_string(i) +
                                        ": bad status or name, freed");
                continue;
            }
            if (!w.current(i, scratch)) {
                // Versions only grow: continue from whatever the counter says.
                SlotRecord empty;
                empty.version = s->seq.load(std::memory_order_relaxed) + 1;
                (void)w.publish(i, empty);
                if (repaired)
                    repaired->push_back(std::string("slot '") + s->name +
                                        "': corrupt record, reset to empty");
            }
        }
    }

    Header& h = w.header();
    h.writer_pid.store(::getpid(), std::memory_order_relaxed);
    h.writer_start_ms.store(sys::realtime_ms(), std::memory_order_relaxed);
    h.writer_generation.fetch_add(1, std::memory_order_relaxed);
    h.heartbeat_ms.store(sys::realtime_ms(), std::memory_order_relaxed);
    // Publishing the magic last makes the geometry above visible to any reader
    // that sees a valid magic (they load it with acquire).
    h.magic.store(kMagic, std::memory_order_release);
    return w;
}

SegResult<std::uint32_t> WriterSegment::claim(std::string_view n) {
    if (!valid_slot_name(n))
        return fail(SegmentErrc::invalid,
                    "credential name '" + std::string(n) + "' is not [A-Za-z0-9._-]{1,63}");
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
    return *free_slot;
}

void WriterSegment::retire(std::uint32_t slot) {
    SlotControl* s = slot_ptr(slot);
    s->status.store(TOKENSHM_SLOT_REMOVED, std::memory_order_release);
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

EncodeError WriterSegment::publish(std::uint32_t slot, const SlotRecord& rec) {
    if (const EncodeError e = encode(rec, geo_.max_token_bytes, image_); e != EncodeError::ok)
        return e;
    SlotControl* s = slot_ptr(slot);
    const LatchWriter latch{&s->seq,
                            {copy_at(s, geo_.record_size(), 0), copy_at(s, geo_.record_size(), 1)}};
    latch.publish(image_.data(), image_.size(), [this] { step(WriterStep::mid_copy); });
    s->futex.fetch_add(1, std::memory_order_release);
    sys::futex_wake_all(&s->futex);
    return EncodeError::ok;
}

std::optional<RecordView> WriterSegment::current(std::uint32_t slot,
                                                 std::vector<std::uint64_t>& scratch) const {
    const SlotControl* s = slot_ptr(slot);
    const std::size_t words = geo_.record_size() / 8;
    scratch.assign(words, 0);
    const std::uint64_t seq = s->seq.load(std::memory_order_relaxed);  // we are the writer
    load_words(scratch.data(), copy_at(s, geo_.record_size(), static_cast<unsigned>(seq & 1)),
               words);
    RecordView v{};
    if (!decode(scratch.data(), words, geo_.max_token_bytes, v)) return std::nullopt;
    return v;
}

void WriterSegment::heartbeat(std::int64_t now_ms) noexcept {
    header().heartbeat_ms.store(now_ms, std::memory_order_relaxed);
}

bool WriterSegment::unlinked() const {
    auto st = sys::fstat(fd_.get(), path_of(name_));
    return st && st->st_nlink == 0;
}

void WriterSegment::unlink() const {
    (void)sys::shm_unlink(path_of(name_));
}

}  // namespace tokenshm::shm
