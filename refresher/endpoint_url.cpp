#include "endpoint_url.hpp"

#include "error.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>
#include <cstdio>

namespace tokenshm::refresher {

namespace {

std::string lower(std::string_view s) {
    std::string out(s);
    std::transform(out.begin(), out.end(), out.begin(), [](char c) {
        return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
    });
    return out;
}

bool is_digit(char c) {
    return c >= '0' && c <= '9';
}

bool is_host_char(char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || is_digit(c) || c == '.' ||
           c == '_' || c == '-';
}

bool is_ipv6_char(char c) {
    return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') || c == ':' || c == '.';
}

// What a message may show of a URL: never user info, never a query (some
// endpoints carry a key there, e.g. ?code=).
std::string shown(std::string_view url) {
    if (url.find('@') != std::string_view::npos) return "a URL with '@' (not shown)";
    const auto q = url.find('?');
    return q == std::string_view::npos ? quote(url)
                                       : quote(url.substr(0, q)) + " (query not shown)";
}

Unexpected<UrlError> refuse(std::string message) {
    return Unexpected<UrlError>{UrlError{std::move(message)}};
}

// The parts of the authority (host[:port]) once its syntax is checked.
struct HostPort {
    std::string_view host;
    std::string_view port;
    bool has_port = false;
};

Expected<HostPort, UrlError> split_bracketed(std::string_view authority) {
    const auto close = authority.find(']');
    if (close == std::string_view::npos) return refuse("URL has an unterminated [IPv6] host");
    HostPort hp;
    hp.host = authority.substr(0, close + 1);
    const auto inner = hp.host.substr(1, hp.host.size() - 2);
    if (inner.empty() || !std::all_of(inner.begin(), inner.end(), is_ipv6_char))
        return refuse("URL has an invalid [IPv6] host");
    const auto after = authority.substr(close + 1);
    if (!after.empty()) {
        if (after.front() != ':') return refuse("URL has junk after the [IPv6] host");
        hp.port = after.substr(1);
        hp.has_port = true;
    }
    return hp;
}

Expected<HostPort, UrlError> split_authority(std::string_view authority, std::string_view url) {
    Expected<HostPort, UrlError> hp = HostPort{authority, {}, false};
    if (!authority.empty() && authority.front() == '[') {
        hp = split_bracketed(authority);
        if (!hp) return hp;
    } else {
        const auto colon = authority.find(':');
        if (colon != std::string_view::npos)
            hp = HostPort{authority.substr(0, colon), authority.substr(colon + 1), true};
        if (!std::all_of(hp->host.begin(), hp->host.end(), is_host_char))
            return refuse("URL has an invalid host name");
    }
    if (hp->host.empty()) return refuse("URL has no host, found " + shown(url));
    return hp;
}

// The port number, or the scheme's when none is given.
Expected<std::uint16_t, UrlError> port_number(const HostPort& hp, bool https,
                                              std::string_view url) {
    if (!hp.has_port) return static_cast<std::uint16_t>(https ? 443 : 80);
    if (hp.port.empty()) return refuse("URL has an empty port, found " + shown(url));
    const bool digits =
        hp.port.size() <= 5 && std::all_of(hp.port.begin(), hp.port.end(), is_digit);
    unsigned n = 0;
    for (char c : digits ? hp.port : std::string_view{})
        n = n * 10 + static_cast<unsigned>(c - '0');
    if (n < 1 || n > 65535) return refuse("URL has an invalid port, found " + shown(url));
    return static_cast<std::uint16_t>(n);
}

// The scheme, lower case, when it is http or https.
Expected<std::string, UrlError> scheme_of(std::string_view url) {
    if (url.empty()) return refuse("expected an https:// URL, found an empty string");
    const auto end = url.find("://");
    if (end == std::string_view::npos)
        return refuse("expected an https:// URL, found " + shown(url) + " (not absolute)");
    std::string scheme = lower(url.substr(0, end));
    if (scheme != "https" && scheme != "http")
        return refuse("expected an https:// URL, found " + shown(url));
    return scheme;
}

// The authority (host[:port]) of a URL whose scheme ends at `scheme_size`,
// after the rules that need no parsing: characters, user info, fragment and
// query.
Expected<std::string_view, UrlError> authority_of(std::string_view url, std::size_t scheme_size,
                                                  EndpointUrl::Role role) {
    if (std::any_of(url.begin(), url.end(), [](char c) {
            const auto u = static_cast<unsigned char>(c);
            return u <= 0x20 || u >= 0x7f;
        }))
        return refuse("URL contains spaces, control or non-ASCII characters");
    const auto rest = url.substr(scheme_size + 3);
    const auto authority = rest.substr(0, rest.find_first_of("/?#"));
    if (authority.find('@') != std::string_view::npos)
        return refuse("URL must not contain user info (user:password@)");
    if (url.find('#') != std::string_view::npos)
        return refuse("URL must not have a fragment (#...)");
    if (role == EndpointUrl::Role::issuer && url.find('?') != std::string_view::npos)
        return refuse("an issuer URL must not have a query (?...), found " + shown(url));
    return authority;
}

}  // namespace

bool is_loopback_host(std::string_view host) {
    const std::string h = lower(host);
    if (h == "localhost") return true;
    if (h.size() >= 2 && h.front() == '[' && h.back() == ']') {
        const std::string inner = h.substr(1, h.size() - 2);
        in6_addr a6{};
        if (::inet_pton(AF_INET6, inner.c_str(), &a6) != 1) return false;
        if (IN6_IS_ADDR_LOOPBACK(&a6)) return true;
        return IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127;
    }
    in_addr a4{};
    if (::inet_pton(AF_INET, h.c_str(), &a4) != 1) return false;
    return (ntohl(a4.s_addr) >> 24) == 127;
}

Expected<EndpointUrl, UrlError> EndpointUrl::parse(std::string_view text, Role role) {
    auto scheme = scheme_of(text);
    if (!scheme) return Unexpected{scheme.error()};
    const auto authority = authority_of(text, scheme->size(), role);
    if (!authority) return Unexpected{authority.error()};
    const auto hp = split_authority(*authority, text);
    if (!hp) return Unexpected{hp.error()};
    const bool https = *scheme == "https";
    const auto port = port_number(*hp, https, text);
    if (!port) return Unexpected{port.error()};
    EndpointUrl u;
    u.host_ = lower(hp->host);
    u.loopback_ = is_loopback_host(u.host_);
    if (!https && !u.loopback_)
        return refuse(
            "plain http:// is allowed only for a loopback host (127.0.0.0/8, localhost, "
            "[::1]); use https://, found " +
            shown(text));
    u.text_ = std::string(text);
    u.scheme_ = std::move(*scheme);
    u.port_ = *port;
    return u;
}

}  // namespace tokenshm::refresher
