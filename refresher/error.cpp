#include "error.hpp"

#include <cstdio>

namespace tokenshm::refresher {

std::string quote(std::string_view s, std::size_t limit) {
    std::string out = "\"";
    for (std::size_t i = 0; i < s.size() && i < limit; ++i) {
        const auto u = static_cast<unsigned char>(s[i]);
        if (s[i] == '"' || s[i] == '\\') {
            out += '\\';
            out += s[i];
        } else if (u < 0x20 || u == 0x7f) {
            char b[8];
            std::snprintf(b, sizeof b, "\\u%04x", u);
            out += b;
        } else if (u >= 0x80) {
            // Raw, a byte here could be a C1 control (U+009B is a terminal's
            // CSI) or half of a character the limit cut in two.
            char b[8];
            std::snprintf(b, sizeof b, "\\x%02x", u);
            out += b;
        } else {
            out += s[i];
        }
    }
    if (s.size() > limit) out += "...";
    out += '"';
    return out;
}

std::string printable_line(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    for (const char c : s) {
        const auto u = static_cast<unsigned char>(c);
        if (u >= 0x20 && u < 0x7f) {
            out += c;
        } else {
            char b[8];
            std::snprintf(b, sizeof b, "\\x%02x", u);
            out += b;
        }
    }
    return out;
}

}  // namespace tokenshm::refresher
