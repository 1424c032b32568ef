#include "seal.hpp"

#include "base64.hpp"
#include "regular_file.hpp"

#include <openssl/evp.h>
#include <openssl/rand.h>

#include <string.h>
#include <sys/stat.h>

#include <climits>
#include <memory>

namespace tokenshm::refresher {

namespace {

constexpr std::size_t kNonceBytes = 12;
constexpr std::size_t kTagBytes = 16;
constexpr std::string_view kAadLabel = "tokenshm-seal-v1";
// What a refresh token can be, with room: a sealed string stays far below
// etcd's default request limit (1.5 MiB).
constexpr std::size_t kMaxPlaintext = 256 * 1024;

Unexpected<SealError> error(SealError::Kind kind, std::string message) {
    return Unexpected{SealError{kind, std::move(message)}};
}

using CipherCtx = std::unique_ptr<EVP_CIPHER_CTX, decltype(&EVP_CIPHER_CTX_free)>;

CipherCtx new_ctx() {
    return CipherCtx(EVP_CIPHER_CTX_new(), &EVP_CIPHER_CTX_free);
}

void append_be(std::string& out, std::uint64_t v, int bytes) {
    for (int i = bytes - 1; i >= 0; --i)
        out.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}

// label || u32be(len(credential)) || credential || u64be(counter): the length
// prefix keeps ("ab", n) and ("a", m) from ever encoding alike.
std::string associated_data(std::string_view credential, std::uint64_t counter) {
    std::string aad(kAadLabel);
    append_be(aad, credential.size(), 4);
    aad.append(credential);
    append_be(aad, counter, 8);
    return aad;
}

// Key, nonce and associated data into a fresh AES-256-GCM context.
bool start(EVP_CIPHER_CTX* ctx, bool encrypt, const SealKey& key, const unsigned char* nonce,
           const std::string& aad) {
    const EVP_CIPHER* gcm = EVP_aes_256_gcm();
    int len = 0;
    const auto init = encrypt ? EVP_EncryptInit_ex : EVP_DecryptInit_ex;
    const auto update = encrypt ? EVP_EncryptUpdate : EVP_DecryptUpdate;
    return init(ctx, gcm, nullptr, nullptr, nullptr) == 1 &&
           EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, kNonceBytes, nullptr) == 1 &&
           init(ctx, nullptr, nullptr, key.reveal(), nonce) == 1 &&
           update(ctx, nullptr, &len, reinterpret_cast<const unsigned char*>(aad.data()),
                  static_cast<int>(aad.size())) == 1;
}

bool is_hex(char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return c - 'A' + 10;
}

}  // namespace

Expected<std::string, SealError> seal(const SealKey& key, std::string_view credential,
                                      std::uint64_t counter, std::string_view plaintext) {
    if (plaintext.size() > kMaxPlaintext)
        return error(SealError::Kind::crypto,
                     "seal: plaintext larger than " + std::to_string(kMaxPlaintext) + " bytes");
    // nonce || ciphertext || tag; GCM's ciphertext is as long as the plaintext.
    // Only ciphertext ever lands here, so a plain string is fine.
    std::string raw(kNonceBytes + plaintext.size() + kTagBytes, '\0');
    auto* out = reinterpret_cast<unsigned char*>(raw.data());
    if (RAND_bytes(out, kNonceBytes) != 1)
        return error(SealError::Kind::crypto, "seal: RAND_bytes failed");
    const CipherCtx ctx = new_ctx();
    int len = 0;
    int tail = 0;
    const bool ok = ctx && start(ctx.get(), true, key, out, associated_data(credential, counter)) &&
                    EVP_EncryptUpdate(ctx.get(), out + kNonceBytes, &len,
                                      reinterpret_cast<const unsigned char*>(plaintext.data()),
                                      static_cast<int>(plaintext.size())) == 1 &&
                    EVP_EncryptFinal_ex(ctx.get(), out + kNonceBytes + len, &tail) == 1 &&
                    static_cast<std::size_t>(len + tail) == plaintext.size() &&
                    EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, kTagBytes,
                                        out + kNonceBytes + plaintext.size()) == 1;
    if (!ok) return error(SealError::Kind::crypto, "seal: OpenSSL's AES-256-GCM failed");
    return std::string(kSealPrefix) + base64url_encode(raw);
}

Expected<Secret, SealError> open_sealed(const SealKey& key, std::string_view credential,
                                        std::uint64_t counter, std::string_view sealed) {
    if (!sealed.starts_with(kSealPrefix))
        return error(SealError::Kind::malformed, "not a sealed value (no \"tks1.\" prefix)");
    const auto raw = base64url_decode(sealed.substr(kSealPrefix.size()));
    if (!raw) return error(SealError::Kind::malformed, "sealed value is not base64url");
    if (raw->size() < kNonceBytes + kTagBytes ||
        raw->size() > kNonceBytes + kMaxPlaintext + kTagBytes)
        return error(SealError::Kind::malformed, "sealed value has an impossible length");
    const auto* in = reinterpret_cast<const unsigned char*>(raw->data());
    const std::size_t n = raw->size() - kNonceBytes - kTagBytes;
    std::string plain(n, '\0');
    auto* out = reinterpret_cast<unsigned char*>(plain.data());
    const CipherCtx ctx = new_ctx();
    std::array<unsigned char, kTagBytes> tag{};
    ::memcpy(tag.data(), in + kNonceBytes + n, kTagBytes);
    int len = 0;
    int tail = 0;
    const bool ok =
        ctx && start(ctx.get(), false, key, in, associated_data(credential, counter)) &&
        EVP_DecryptUpdate(ctx.get(), out, &len, in + kNonceBytes, static_cast<int>(n)) == 1 &&
        EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, kTagBytes, tag.data()) == 1 &&
        EVP_DecryptFinal_ex(ctx.get(), out + len, &tail) == 1;
    if (!ok) {
        ::explicit_bzero(plain.data(), plain.capacity());
        return error(SealError::Kind::does_not_open,
                     "sealed value does not open: another seal key, changed bytes, or another "
                     "credential or counter");
    }
    Secret opened(std::move(plain));
    ::explicit_bzero(plain.data(), plain.capacity());  // a short one stays in the moved-from buffer
    return opened;
}

Expected<SealKey, SealError> load_seal_key(const std::string& path) {
    FileFacts facts;
    auto content =
        read_regular_file(path, FileRules{.follow_symlinks = true, .max_bytes = 66}, &facts);
    if (!content) return error(SealError::Kind::key_file, content.error().message);
    if (facts.loose()) {
        char mode[8];
        std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(facts.mode & 07777));
        return error(SealError::Kind::key_file,
                     path + ": mode " + mode +
                         " lets group or others at the seal key; it must be 0600 or stricter "
                         "(chmod 600 " +
                         path + ")");
    }
    std::array<unsigned char, SealKey::kBytes> bytes{};
    if (content->size() == SealKey::kBytes) {
        ::memcpy(bytes.data(), content->data(), SealKey::kBytes);
    } else {
        const std::string_view hex = without_line_end(content->view());
        bool ok = hex.size() == 2 * SealKey::kBytes;
        for (std::size_t i = 0; ok && i < hex.size(); ++i)
            ok = is_hex(hex[i]);
        if (!ok)
            return error(SealError::Kind::key_file,
                         path +
                             ": not a seal key: expected 32 bytes, or 64 hexadecimal digits "
                             "and an optional line end (openssl rand -hex 32)");
        for (std::size_t i = 0; i < SealKey::kBytes; ++i)
            bytes[i] =
                static_cast<unsigned char>(hex_value(hex[2 * i]) << 4 | hex_value(hex[2 * i + 1]));
    }
    SealKey key(bytes);
    ::explicit_bzero(bytes.data(), bytes.size());
    return key;
}

}  // namespace tokenshm::refresher
