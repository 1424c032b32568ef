// The ledger of spent refresh tokens (SPEC.md, "Rotation"): the SHA-256
// fingerprints of the refresh tokens whose successor was received and saved,
// so that none is ever sent again, whichever file it comes back from (the
// state directory, or refresh_token_file after the state file was set aside
// or lost). A strict server revokes the whole grant when it sees a spent
// token again; a token that was sent but whose answer never arrived is not
// spent and never gets here (its successor, if any, never reached us).
//
// `<state_dir>/spent.ledger`, mode 0600, one record per line:
//   <credential> <kind> <fingerprint> <check>
// kind: `configured` (the token came from refresh_token_file) or `rotated`
// (a successor the state directory held); check: the first 8 hex digits of
// the SHA-256 of "<credential> <kind> <fingerprint>", so a line torn by a
// crash mid-append (or otherwise damaged) is recognised and skipped, never
// misread. Never the token itself.
//
// Bounded: per credential the last keep_rotated rotated and the last
// keep_configured configured records stay. A rotated token existed only in
// the state file, which a successor replaced; it comes back only with an old
// backup of the state directory, so the recent ones cover the realistic
// cases (64 rotations are 2 days of hourly tokens). A configured token sits in
// refresh_token_file until a person replaces it, and the fallback to that
// file re-reads it however long ago it was spent: those records are kept
// apart, so that no number of rotations pushes them out. When a credential's
// records reach twice the bound, or a damaged line is found, the file is
// rewritten with what is kept (temp file, fsync, rename, fsync of the
// directory): appends stay cheap and the file stays a few KB per credential.
#pragma once

#include "error.hpp"
#include "state_store.hpp"

#include <tokenshm/expected.hpp>

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace tokenshm::refresher {

class SpentLedger {
  public:
    enum class Kind { configured, rotated };
    struct Record {
        std::string credential;
        Kind kind = Kind::rotated;
        std::string fingerprint;  // refresh_token_fingerprint(), 64 hex digits
        friend bool operator==(const Record&, const Record&) = default;
    };
    // What read() found: the good records in file order and how many lines were damaged.
    struct Contents {
        std::vector<Record> records;
        std::size_t damaged = 0;
        bool exists = false;
    };

    static constexpr std::string_view file_name = "spent.ledger";
    static constexpr std::size_t keep_rotated = 64;
    static constexpr std::size_t keep_configured = 16;
    // Far above what the bounds allow for the 4096 slots a segment may hold;
    // a larger file is not one this code wrote.
    static constexpr std::size_t max_file_bytes = 16 << 20;

    SpentLedger(FileSystem& fs, std::string dir, StateWarningSink warn);

    std::string path() const;
    // The credential whose record holds `fingerprint`, or nullopt.
    Expected<std::optional<std::string>, RefresherError> spent_by(std::string_view fingerprint);
    // Adds records durably: fsync of the file (and of the directory when the
    // file is new or rewritten). On error they are kept in memory, still
    // count for spent_by(), and are written with the next append.
    Expected<Done, RefresherError> append(const std::vector<Record>& records);
    Expected<Contents, RefresherError> read();
    // Records a failed append left in memory.
    const std::vector<Record>& unwritten() const noexcept { return unwritten_; }

  private:
    Expected<Done, RefresherError> append_lines(const Contents& now,
                                                const std::vector<Record>& records);
    Expected<Done, RefresherError> rewrite(std::vector<Record> records);
    void warn_ledger(std::size_t damaged) const;

    FileSystem& fs_;
    std::string dir_;
    StateWarningSink warn_;
    std::vector<Record> unwritten_;
};

// One record as a line (with its "\n"), and back (without it); nullopt for a
// damaged line. Pure: a fuzzing target.
std::string encode_ledger_line(const SpentLedger::Record& r);
std::optional<SpentLedger::Record> decode_ledger_line(std::string_view line);
// Which records compaction keeps, in their order: per credential the last
// keep_rotated rotated and keep_configured configured ones, duplicates once.
std::vector<SpentLedger::Record> compact_ledger(const std::vector<SpentLedger::Record>& records);

}  // namespace tokenshm::refresher
