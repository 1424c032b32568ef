// Sealing refresh tokens for etcd (seal.hpp): what seals opens only with the
// same key, credential and counter and unchanged bytes; everything else is
// "does not open" (never a crash, never the plaintext); the key file is
// refused unless it is exactly a key and 0600 or stricter. No error names a
// key byte or the plaintext.
#include "seal.hpp"
#include "base64.hpp"
#include "temp_dir.hpp"

#include <catch2/catch.hpp>

#include <unistd.h>

#include <array>
#include <set>
#include <string>

using namespace tokenshm::refresher;
using tokenshm::test::TempDir;

namespace {

constexpr const char* kToken = "rt-SECRET-refresh-token-0123456789";
constexpr const char* kHexKey = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";

SealKey key_of(unsigned char fill) {
    std::array<unsigned char, SealKey::kBytes> b{};
    b.fill(fill);
    return SealKey(b);
}

// The plaintext, compared as a Secret so a failing check never prints it.
bool opens_to(const tokenshm::Expected<Secret, SealError>& r, std::string_view plain) {
    return r.has_value() && *r == Secret(std::string(plain));
}

bool names_no_secret(const std::string& message) {
    return message.find(kToken) == std::string::npos &&
           message.find("0011223344") == std::string::npos &&
           message.find('\n') == std::string::npos;
}

}  // namespace

TEST_CASE("a sealed token opens with the same key, credential and counter", "[seal]") {
    const SealKey key = key_of(7);
    const auto sealed = seal(key, "storage", 42, kToken);
    REQUIRE(sealed.has_value());
    CHECK(sealed->starts_with("tks1."));
    CHECK(sealed->find(kToken) == std::string::npos);
    CHECK(std::all_of(sealed->begin(), sealed->end(), [](char c) { return c > 0x20 && c < 0x7f; }));
    CHECK(opens_to(open_sealed(key, "storage", 42, *sealed), kToken));
    // An empty plaintext and a large one seal too.
    CHECK(opens_to(open_sealed(key, "c", 0, *seal(key, "c", 0, "")), ""));
    const std::string big(100000, 'x');
    CHECK(opens_to(open_sealed(key, "c", ~0ULL, *seal(key, "c", ~0ULL, big)), big));
}

TEST_CASE("every seal has a fresh nonce", "[seal]") {
    const SealKey key = key_of(1);
    std::set<std::string> seen;
    for (int i = 0; i < 100; ++i)
        seen.insert(*seal(key, "storage", 1, kToken));
    CHECK(seen.size() == 100);
}

TEST_CASE("wrong key, credential or counter does not open", "[seal]") {
    const SealKey key = key_of(7);
    const std::string sealed = *seal(key, "storage", 42, kToken);
    const auto check_refused = [](const tokenshm::Expected<Secret, SealError>& r) {
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().kind == SealError::Kind::does_not_open);
        CHECK(names_no_secret(r.error().message));
    };
    check_refused(open_sealed(key_of(8), "storage", 42, sealed));
    check_refused(open_sealed(key, "storage2", 42, sealed));
    check_refused(open_sealed(key, "storag", 42, sealed));
    check_refused(open_sealed(key, "storage", 43, sealed));
    check_refused(open_sealed(key, "storage", 42ULL + (1ULL << 32), sealed));
}

TEST_CASE("the associated data cannot be shifted between credential and counter", "[seal]") {
    // Without the length prefix, ("a\0\0\0\0\0\0\0", x) and ("a", y) could
    // encode alike; with it they never do.
    const SealKey key = key_of(3);
    const std::string name_with_zeros("a\0\0\0\0\0\0\0", 8);
    const std::string sealed = *seal(key, name_with_zeros, 0, kToken);
    CHECK_FALSE(open_sealed(key, "a", 0, sealed).has_value());
}

TEST_CASE("every single-bit change of the sealed bytes does not open", "[seal]") {
    const SealKey key = key_of(9);
    const std::string sealed = *seal(key, "storage", 5, "short");
    const auto raw = base64url_decode(std::string_view(sealed).substr(5));
    REQUIRE(raw.has_value());
    for (std::size_t i = 0; i < raw->size(); ++i) {
        for (int bit = 0; bit < 8; ++bit) {
            std::string changed(raw->view());
            changed[i] = static_cast<char>(changed[i] ^ (1 << bit));
            const auto r = open_sealed(key, "storage", 5, "tks1." + base64url_encode(changed));
            REQUIRE_FALSE(r.has_value());
            CHECK(r.error().kind == SealError::Kind::does_not_open);
        }
    }
    // Cut short or lengthened by a byte.
    std::string shorter(raw->view());
    shorter.pop_back();
    CHECK_FALSE(open_sealed(key, "storage", 5, "tks1." + base64url_encode(shorter)).has_value());
    CHECK_FALSE(
        open_sealed(key, "storage", 5, "tks1." + base64url_encode(std::string(raw->view()) + "x"))
            .has_value());
}

TEST_CASE("what is not a sealed string is malformed, never a crash", "[seal]") {
    const SealKey key = key_of(9);
    const std::string good = *seal(key, "storage", 5, kToken);
    for (const std::string& bad :
         {std::string(), std::string("tks1."), std::string("tks2.") + good.substr(5),
          std::string("TKS1.") + good.substr(5), good.substr(5), good + "=", good + "!",
          std::string("tks1.") + std::string(10, 'A'), std::string("tks1.") + std::string(37, 'A'),
          std::string("tks1.") + base64url_encode(std::string(27, 'z')),
          good + std::string(1, '\0')}) {
        const auto r = open_sealed(key, "storage", 5, bad);
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().kind == SealError::Kind::malformed);
        CHECK(names_no_secret(r.error().message));
    }
}

TEST_CASE("strict base64 and base64url: one meaning per string", "[seal][base64]") {
    CHECK(base64url_encode("\xfb\xff") == "-_8");
    CHECK(base64_encode("\xfb\xff") == "+/8=");
    CHECK(base64url_decode("-_8")->view() == "\xfb\xff");
    CHECK(base64_decode("+/8=")->view() == "\xfb\xff");
    CHECK(base64_decode("Zm9vYmFy")->view() == "foobar");
    CHECK(base64_decode("Zm9vYg==")->view() == "foob");
    CHECK(base64_decode("")->view().empty());
    CHECK_FALSE(base64_decode("Zm9vYg").has_value());    // padding required
    CHECK_FALSE(base64_decode("Zm9vYh==").has_value());  // unused bits set
    CHECK_FALSE(base64_decode("Zm9v====").has_value());
    CHECK_FALSE(base64_decode("Zg=a").has_value());
    CHECK_FALSE(base64_decode("-_8=").has_value());  // url alphabet in standard
    CHECK_FALSE(base64url_decode("+/8").has_value());
    CHECK_FALSE(base64url_decode("Zg==").has_value());  // no padding in base64url
    CHECK_FALSE(base64url_decode("Z").has_value());
    CHECK_FALSE(base64url_decode("Zm9 v").has_value());
}

TEST_CASE("the seal key loads from 32 raw bytes or 64 hex digits, mode 0600 or stricter",
          "[seal][key]") {
    TempDir dir("seal_test");
    const std::string sealed = *seal(key_of(0x41), "c", 1, kToken);
    SECTION("32 raw bytes, 0600") {
        const auto key = load_seal_key(dir.write("k", std::string(32, 'A'), 0600));
        REQUIRE(key.has_value());
        CHECK(opens_to(open_sealed(*key, "c", 1, sealed), kToken));
    }
    SECTION("32 raw bytes, 0400") {
        CHECK(load_seal_key(dir.write("k", std::string(32, 'A'), 0400)).has_value());
    }
    SECTION("hex, with and without a line end, either case") {
        const SealKey a = *load_seal_key(dir.write("a", kHexKey, 0600));
        const SealKey b = *load_seal_key(dir.write("b", std::string(kHexKey) + "\n", 0600));
        const SealKey c = *load_seal_key(dir.write("c", std::string(kHexKey) + "\r\n", 0600));
        std::string lower(kHexKey);
        std::transform(lower.begin(), lower.end(), lower.begin(), ::tolower);
        const SealKey d = *load_seal_key(dir.write("d", lower, 0600));
        const std::string s = *seal(a, "c", 1, kToken);
        CHECK(opens_to(open_sealed(b, "c", 1, s), kToken));
        CHECK(opens_to(open_sealed(c, "c", 1, s), kToken));
        CHECK(opens_to(open_sealed(d, "c", 1, s), kToken));
        std::array<unsigned char, 32> expect{};
        for (int i = 0; i < 32; ++i)
            expect[i] = static_cast<unsigned char>(std::stoi(lower.substr(2 * i, 2), nullptr, 16));
        CHECK(opens_to(open_sealed(SealKey(expect), "c", 1, s), kToken));
    }
}

TEST_CASE("a seal key file that is not exactly a private key is one line naming the path",
          "[seal][key]") {
    TempDir dir("seal_test");
    struct Bad {
        std::string what, content;
        mode_t mode;
        std::string gist;
    };
    const std::vector<Bad> bads = {
        {"group-readable", std::string(32, 'A'), 0640, "0640"},
        {"world-readable hex", kHexKey, 0644, "must be 0600 or stricter"},
        {"31 bytes", std::string(31, 'A'), 0600, "not a seal key"},
        {"33 bytes", std::string(33, 'A'), 0600, "not a seal key"},
        {"63 hex digits", std::string(kHexKey).substr(1), 0600, "not a seal key"},
        {"hex with a stray g", "g" + std::string(kHexKey).substr(1), 0600, "not a seal key"},
        {"hex with two line ends", std::string(kHexKey) + "\n\n", 0600, "not a seal key"},
        {"hex with a space", std::string(kHexKey) + " ", 0600, "not a seal key"},
        {"empty", "", 0600, "not a seal key"},
        {"large", std::string(4096, 'A'), 0600, "larger than"},
    };
    for (const Bad& b : bads) {
        INFO(b.what);
        const std::string path = dir.write("k", b.content, b.mode);
        const auto r = load_seal_key(path);
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().kind == SealError::Kind::key_file);
        CHECK(r.error().message.starts_with(path + ": "));
        CHECK_THAT(r.error().message, Catch::Contains(b.gist));
        CHECK(names_no_secret(r.error().message));
        CHECK(r.error().message.find("AAAA") == std::string::npos);
        ::unlink(path.c_str());
    }
    const auto missing = load_seal_key(dir.path + "/none");
    REQUIRE_FALSE(missing.has_value());
    CHECK_THAT(missing.error().message, Catch::Contains("No such file"));
    const auto directory = load_seal_key(dir.path);
    REQUIRE_FALSE(directory.has_value());
    CHECK_THAT(directory.error().message, Catch::Contains("not a regular file"));
}
