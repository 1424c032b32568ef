#include "redirect_uri.hpp"

#include <algorithm>
#include <charconv>

namespace tokenshm::refresher {

namespace {

// RFC 3986 unreserved characters and "/": enough for a callback path, and
// nothing that needs escaping when the URI is sent or compared.
bool path_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_' || c == '~' || c == '/';
}

}  // namespace

std::string RedirectUri::text(std::uint16_t bound_port) const {
    return "http://127.0.0.1:" + std::to_string(bound_port) + path;
}

Expected<RedirectUri, std::string> RedirectUri::parse(std::string_view text) {
    constexpr std::string_view prefix = "http://127.0.0.1:";
    if (text.substr(0, prefix.size()) != prefix)
        return Unexpected{
            std::string("expected http://127.0.0.1:PORT/PATH (a loopback "
                        "redirect on 127.0.0.1, RFC 8252 §7.3)")};
    std::string_view rest = text.substr(prefix.size());
    const std::size_t slash = rest.find('/');
    if (slash == std::string_view::npos)
        return Unexpected{std::string("expected a path after the port")};
    const std::string_view digits = rest.substr(0, slash);
    unsigned port = 0;
    auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), port);
    if (digits.empty() || digits.size() > 5 || ec != std::errc{} ||
        p != digits.data() + digits.size() || port < 1 || port > 65535)
        return Unexpected{std::string("expected a port from 1 to 65535 after http://127.0.0.1:")};
    const std::string_view path = rest.substr(slash);
    if (path.size() > 200 || !std::all_of(path.begin(), path.end(), path_char))
        return Unexpected{std::string(
            "the path may hold only letters, digits, '-', '.', '_', '~' and '/' (at most "
            "200), no query or fragment")};
    RedirectUri r;
    r.port = static_cast<std::uint16_t>(port);
    r.path = std::string(path);
    return r;
}

}  // namespace tokenshm::refresher
