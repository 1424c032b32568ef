#include "base64.hpp"

#include <array>
#include <cstdint>

namespace tokenshm::refresher {

namespace {

constexpr char kStandard[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
constexpr char kUrl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

// The encoder writes through append(), so the same code fills a std::string
// (public values) or a WipedString (secrets).
template <class Out>
void encode_into(Out& out, std::string_view bytes, const char* alphabet, bool pad) {
    const auto byte = [&](std::size_t k) {
        return static_cast<std::uint32_t>(static_cast<unsigned char>(bytes[k]));
    };
    std::size_t i = 0;
    for (; i + 3 <= bytes.size(); i += 3) {
        const std::uint32_t n = byte(i) << 16 | byte(i + 1) << 8 | byte(i + 2);
        const char quad[4] = {alphabet[(n >> 18) & 63], alphabet[(n >> 12) & 63],
                              alphabet[(n >> 6) & 63], alphabet[n & 63]};
        out.append(quad, 4);
    }
    const std::size_t left = bytes.size() - i;
    if (left == 0) return;
    const std::uint32_t n = byte(i) << 16 | (left == 2 ? byte(i + 1) << 8 : 0);
    const char quad[4] = {alphabet[(n >> 18) & 63], alphabet[(n >> 12) & 63],
                          left == 2 ? alphabet[(n >> 6) & 63] : '=', '='};
    out.append(quad, pad ? 4 : left + 1);
}

using Table = std::array<std::int8_t, 256>;

constexpr Table table_of(const char* alphabet) {
    Table t{};
    for (auto& v : t)
        v = -1;
    for (int i = 0; i < 64; ++i)
        t[static_cast<unsigned char>(alphabet[i])] = static_cast<std::int8_t>(i);
    return t;
}

constexpr Table kStandardTable = table_of(kStandard);
constexpr Table kUrlTable = table_of(kUrl);

// `text` without padding, decoded; nullopt on any character outside the
// alphabet, a length no encoder produces, or nonzero unused bits.
std::optional<WipedString> decode_bare(std::string_view text, const Table& table) {
    if (text.size() % 4 == 1) return std::nullopt;
    WipedString out;
    out.reserve(text.size() / 4 * 3 + 2);
    std::uint32_t acc = 0;
    int bits = 0;
    for (char ch : text) {
        const int v = table[static_cast<unsigned char>(ch)];
        if (v < 0) return std::nullopt;
        acc = (acc << 6) | static_cast<std::uint32_t>(v);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            const char b = static_cast<char>((acc >> bits) & 0xFF);
            out.append(&b, 1);
        }
    }
    if ((acc & ((1U << bits) - 1)) != 0) return std::nullopt;  // unused bits must be zero
    return out;
}

}  // namespace

std::string base64_encode(std::string_view bytes) {
    std::string out;
    out.reserve((bytes.size() + 2) / 3 * 4);
    encode_into(out, bytes, kStandard, true);
    return out;
}

void append_base64(WipedString& out, std::string_view bytes) {
    encode_into(out, bytes, kStandard, true);
}

std::string base64url_encode(std::string_view bytes) {
    std::string out;
    out.reserve((bytes.size() + 2) / 3 * 4);
    encode_into(out, bytes, kUrl, false);
    return out;
}

std::optional<WipedString> base64_decode(std::string_view text) {
    if (text.size() % 4 != 0) return std::nullopt;
    std::string_view bare = text;
    if (bare.ends_with("==")) {
        bare.remove_suffix(2);
    } else if (bare.ends_with('=')) {
        bare.remove_suffix(1);
    }
    return decode_bare(bare, kStandardTable);
}

std::optional<WipedString> base64url_decode(std::string_view text) {
    return decode_bare(text, kUrlTable);
}

}  // namespace tokenshm::refresher
