// Sealing: a refresh token made safe to store in etcd, where every host (and
// whoever reads etcd's disk or backups) can see it, but only a holder of the
// seal key can use it (issue 12, design point 4).
//
// AES-256-GCM from OpenSSL's libcrypto (already linked), an AEAD: a sealed
// string that was changed in any bit, sealed under another key, or moved to
// another credential or counter does not open; none of these is told apart
// from the others, and none crashes.
//
// Sealed form, printable ASCII, one word:
//     "tks1." base64url( nonce[12] || ciphertext || tag[16] )      (no padding)
// "tks1." is the version: a later format gets another prefix, and this code
// refuses what it does not know as `malformed` rather than trying it.
// The nonce is 12 fresh bytes from OpenSSL's CSPRNG for every seal: with
// random 96-bit nonces one key seals far more than a refresher ever will
// (NIST SP 800-38D §8.3 bounds it at 2^32 seals per key).
//
// Associated data binds the plaintext to where it belongs, unambiguously:
//     "tokenshm-seal-v1" || u32be(len(credential)) || credential || u64be(counter)
// The length prefix means no two (credential, counter) pairs encode alike.
//
// The key is never in etcd: it comes from `seal_key_file` (load_seal_key).
// Wiped: the key (SealKey), the opened plaintext (a Secret) and every buffer
// that held either; OpenSSL's cipher context clears its key schedule when freed.
#pragma once

#include "secret.hpp"

#include <tokenshm/expected.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace tokenshm::refresher {

// 32 bytes of AES-256 key. Cannot be printed or copied; wiped when destroyed.
class SealKey {
  public:
    static constexpr std::size_t kBytes = 32;
    explicit SealKey(const std::array<unsigned char, kBytes>& bytes) noexcept : k_(bytes) {}
    SealKey(const SealKey&) = delete;
    SealKey& operator=(const SealKey&) = delete;
    SealKey(SealKey&& o) noexcept : k_(o.k_) { o.wipe(); }
    SealKey& operator=(SealKey&& o) noexcept {
        if (this != &o) {
            k_ = o.k_;
            o.wipe();
        }
        return *this;
    }
    ~SealKey() { wipe(); }

    // The only way to the bytes: for the cipher, nowhere else.
    const unsigned char* reveal() const noexcept { return k_.data(); }

  private:
    void wipe() noexcept { ::explicit_bzero(k_.data(), k_.size()); }
    std::array<unsigned char, kBytes> k_;
};

struct SealError {
    enum class Kind {
        malformed,      // not a sealed string of this version (prefix, base64url, length)
        does_not_open,  // wrong key, changed bytes, other credential or counter
        key_file,       // load_seal_key: the file is missing, unsafe or not a key
        crypto,         // OpenSSL failed (out of memory, no randomness)
    };
    Kind kind;
    std::string message;  // one line, never the key, plaintext or sealed bytes
};

inline constexpr std::string_view kSealPrefix = "tks1.";

// The sealed form of `plaintext` for (credential, counter).
Expected<std::string, SealError> seal(const SealKey& key, std::string_view credential,
                                      std::uint64_t counter, std::string_view plaintext);

// The plaintext, only when `sealed` was made by seal() with this key, this
// credential and this counter, and not changed since.
Expected<Secret, SealError> open_sealed(const SealKey& key, std::string_view credential,
                                        std::uint64_t counter, std::string_view sealed);

// Reads the seal key from `path`, which must be a regular file (symbolic
// links are followed, as for every secret file: regular_file.hpp) owned by
// this process's uid or root, with no access for group or others (0600 or
// stricter), holding exactly one of:
//  - 32 bytes, the key itself (`head -c 32 /dev/urandom`);
//  - 64 hexadecimal digits, either case, optionally followed by one "\n" or
//    "\r\n" (`openssl rand -hex 32`).
// The size tells them apart: a file of 32 bytes is raw, any other is hex.
// Errors are one line naming the path, never a byte of the file.
Expected<SealKey, SealError> load_seal_key(const std::string& path);

}  // namespace tokenshm::refresher
