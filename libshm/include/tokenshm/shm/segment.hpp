// Creating, attaching to and opening the shared segment, with every check a
// process must make before trusting it.
//
// Errors in libshm: a call that can fail returns Expected<T, typed error>:
// SegmentError (a code and one line) from the segment, SysError from a
// syscall (errno wrapped once; callers ask its named predicates, never
// compare errno), EncodeError for a record that does not fit. Success is a
// value (Done when there is nothing to return), never an empty error. Nothing
// throws but allocation. libshm reads no environment: callers pass values.
#pragma once

#include <tokenshm/expected.hpp>
#include <tokenshm/shm/layout.hpp>
#include <tokenshm/shm/names.hpp>
#include <tokenshm/shm/posix.hpp>
#include <tokenshm/shm/record.hpp>

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace tokenshm::shm {

enum class SegmentErrc {
    no_segment,    // absent, or not initialised yet
    incompatible,  // wrong magic, unknown major, sizes that do not add up, corrupt
    untrusted,     // wrong owner or mode
    locked,        // another writer holds the segment
    no_space,      // /dev/shm cannot hold it
    invalid,       // bad name or configuration
    system,        // any other syscall failure
};

struct SegmentError {
    SegmentErrc code;
    std::string message;  // one line, names the segment and what is wrong
};

template <class T>
using SegResult = Expected<T, SegmentError>;

// Checks a mapped header: magic, major, sizes against each other and against
// the mapped length. Reads geometry only; never trusts a field before checking it.
SegResult<Done> validate_header(const Header& h, std::size_t mapped_len, const std::string& name);

struct WriterInfo {
    std::int64_t pid = 0;
    std::int64_t start_ms = 0;
    std::uint64_t generation = 0;
    std::int64_t heartbeat_ms = 0;
};

// A read-only mapping of a validated segment. There is no way to write
// through it: the pages are PROT_READ and the type hands out const pointers.
class ReadOnlySegment {
  public:
    struct Options {
        // Trusted in addition to self, root and user "tokenshm". libshm reads
        // no environment: the reader resolves $TOKENSHM_TRUSTED_UID.
        std::optional<uid_t> trusted_uid;
    };
    static SegResult<ReadOnlySegment> open(std::string_view name, const Options& opts);

    const std::string& name() const noexcept { return name_; }
    const Header& header() const noexcept { return *static_cast<const Header*>(map_.addr()); }
    Geometry geometry() const noexcept { return geo_; }
    const SlotControl* slot(std::uint32_t i) const noexcept {
        return slot_at(map_.addr(), geo_.slot_size(), i);
    }
    // Index of the active slot called `name`.
    std::optional<std::uint32_t> find(std::string_view name) const noexcept;
    WriterInfo writer() const noexcept;
    // True once the writer replaced this segment by a new one at the same name
    // (WriterSegment::recreate): readers reopen by name on their slow path.
    bool retired() const noexcept { return header().retired.load(std::memory_order_acquire) != 0; }
    // The control socket the header names (layout 1.2); empty when it names
    // none, or holds no NUL-terminated absolute path (a corrupt header).
    std::string control_socket() const;
    // Whether a refresher holds the segment's lock now (a syscall: slow path only).
    SysResult<bool> writer_holds_lock() const;
    // True when `other` maps the same file (device and inode) as this one.
    bool same_file(const ReadOnlySegment& other) const noexcept {
        return dev_ == other.dev_ && ino_ == other.ino_;
    }

  private:
    std::string name_;
    Fd fd_;
    Mapping map_;
    Geometry geo_{};
    dev_t dev_ = 0;
    ino_t ino_ = 0;
};

// Steps of the writer's work at which a test can stop or kill it, to show
// that readers and the next writer survive a writer dying there.
enum class WriterStep {
    header_init,  // creating: geometry written, writer and magic not yet
    slot_claim,   // claiming a free slot: name written, status not yet active
    mid_copy,     // publishing: half of the new copy written, seq not yet moved
    retire,       // retiring: status says removed, waiters not yet woken
};
// Called at each WriterStep when set. Production leaves it empty.
using WriterStepHook = std::function<void(WriterStep)>;

struct SegmentSpec {
    std::string name = "tokenshm";
    mode_t mode = 0600;
    std::optional<gid_t> group;
    std::uint32_t max_token_bytes = 8192;
    std::uint32_t slot_count = 16;  // capacity, fixed at creation
    // The refresher's control socket, named in the header (layout 1.2) so
    // readers find it from the segment alone; empty for none. An absolute
    // path shorter than TOKENSHM_CONTROL_SOCKET_CAP.
    std::string control_socket;
    WriterStepHook step_hook;       // tests only
};

// How the segment at the writer's name compares with the one it maps.
enum class Integrity {
    intact,
    truncated,  // the file is shorter than the layout: touching the rest would SIGBUS
    unlinked,   // nothing at the name any more (systemd RemoveIPC, a person)
    replaced,   // another file at the name
};
const char* to_string(Integrity i) noexcept;

// The last record published in each slot, in the writer's private memory, so
// that a recreated segment gets every record back even when the old one was
// truncated to nothing. Wiped when dropped: records hold access tokens.
class PublishedImages {
  public:
    PublishedImages() = default;
    PublishedImages(PublishedImages&&) noexcept = default;
    PublishedImages& operator=(PublishedImages&& o) noexcept;
    ~PublishedImages();
    void keep(std::uint32_t slot, const std::vector<std::uint64_t>& image);
    // Empty when nothing was published in `slot`.
    const std::vector<std::uint64_t>& of(std::uint32_t slot) const;

  private:
    void wipe() noexcept;
    std::vector<std::vector<std::uint64_t>> images_;
};

// The refresher's read-write handle. Holds the segment's exclusive lock for
// its whole life.
class WriterSegment {
  public:
    // Attaches to the segment a previous writer left (validating owner, mode,
    // header and every active slot) or creates it exclusively. `repaired`
    // receives one line per slot that had to be reset.
    static SegResult<WriterSegment> create_or_attach(const SegmentSpec& spec,
                                                     std::vector<std::string>* repaired = nullptr);

    const std::string& name() const noexcept { return name_; }
    Geometry geometry() const noexcept { return geo_; }
    bool created() const noexcept { return created_; }

    // The slot for `name`: its existing slot (active or removed, reactivated),
    // else a free one. Fails when every slot is taken.
    SegResult<std::uint32_t> claim(std::string_view name);
    // Marks a slot removed: readers get no_such_credential; its name stays reserved.
    void retire(std::uint32_t slot);
    std::vector<std::pair<std::string, std::uint32_t>> active_slots() const;

    // Publishes a record and wakes waiters. Fails for a record that does not
    // fit; nothing is published then.
    Expected<Done, EncodeError> publish(std::uint32_t slot, const SlotRecord& rec);
    // The slot's current record (decoded into `scratch`), or nullopt when it is
    // corrupt (lengths or state no honest writer produces).
    std::optional<RecordView> current(std::uint32_t slot,
                                      std::vector<std::uint64_t>& scratch) const;

    // Stores the heartbeat, unless the file was truncated under us.
    void heartbeat(std::int64_t now_ms) noexcept;

    // Compares our mapping with the file at the name: fstat of our descriptor
    // (size, link count) and lstat of /dev/shm/<name> (device and inode).
    // Two syscalls; the refresher calls it on every heartbeat and before it
    // publishes.
    SegResult<Integrity> check_intact() const;
    // Makes a new segment at the name with this one's slots (same indexes,
    // names and statuses) and the last record published in each, publishes
    // its magic, then retires this one (header flag, every slot retired,
    // waiters woken) so readers move over, and becomes the new one. A name
    // held by another file is left alone: that is an error, and this segment
    // stays as it was.
    SegResult<Done> recreate(Integrity why);
    // check_intact(), and recreate() when it is not intact. Returns what was found.
    SegResult<Integrity> ensure_intact();
    // Replaces the spec's step hook (tests arm it after setting a slot up).
    void set_step_hook(WriterStepHook hook) { step_hook_ = std::move(hook); }
    // True when the segment was unlinked under us (e.g. systemd RemoveIPC).
    bool unlinked() const;
    // Removes the name (tests and `--remove` only); the mapping stays valid.
    void unlink() const;

  private:
    SlotControl* slot_ptr(std::uint32_t i) const noexcept {
        return slot_at(map_.addr(), geo_.slot_size(), i);
    }
    Header& header() const noexcept { return *static_cast<Header*>(map_.addr()); }
    // The steps of create_or_attach, in order.
    SegResult<Done> initialise(const SegmentSpec& spec);  // a new (or unfinished) segment
    SegResult<Done> adopt(const SegmentSpec& spec, const struct stat& st);  // a previous writer's
    void repair_slots(std::vector<std::string>* repaired);
    void stamp_writer() noexcept;
    // create_or_attach up to (not including) stamp_writer.
    static SegResult<WriterSegment> open_unstamped(const SegmentSpec& spec,
                                                   std::vector<std::string>* repaired);
    // recreate()'s steps: the old file made whole again (so old mappings do
    // not fault) and its name freed; the new one filled; the old one retired.
    void free_truncated_name();
    void refill_from(const WriterSegment& old);
    void retire_segment() noexcept;
    bool mapping_usable() const noexcept;

    std::string name_;
    Fd fd_;
    Mapping map_;
    Geometry geo_{};
    bool created_ = false;
    std::vector<std::uint64_t> image_;
    PublishedImages published_;
    // Each slot's name and status as this writer set them (a truncated file
    // loses them): what recreate() claims in the new segment.
    struct SlotName {
        std::string name;
        std::uint32_t status = TOKENSHM_SLOT_FREE;
    };
    std::vector<SlotName> slot_names_;
    void remember_slots();
    SegmentSpec spec_;  // to recreate the segment as it was made
    WriterStepHook step_hook_;
    void step(WriterStep at) const {
        if (step_hook_) step_hook_(at);
    }
};

}  // namespace tokenshm::shm
