// EndpointUrl: a URL the refresher may send credentials to, checked once
// where it enters (the config's issuer and token_endpoint, a discovery
// document's token_endpoint) and carried as this type from then on, so the
// config, discovery and the transport cannot disagree on what is allowed.
//
// The rule (SPEC.md: "HTTPS verifies certificates ... Plain http:// only for
// loopback addresses"):
//  - absolute https://host[:port][/path][?query], or http:// only when the
//    host is a loopback address (see is_loopback_host); anything else would
//    send secrets in clear text;
//  - no user info (it would carry a password into logs; RFC 6749 §3.2 also
//    forbids it for endpoints), no fragment, no space, control or non-ASCII
//    byte;
//  - host: [A-Za-z0-9._-]+, or a bracketed IPv6 literal; port 1..65535;
//  - for an issuer (RFC 8414 §2) no query either.
#pragma once

#include <tokenshm/expected.hpp>

#include <cstdint>
#include <string>
#include <string_view>

namespace tokenshm::refresher {

// Why a URL was refused: one line that quotes the URL only without its user
// info and query (either may carry a key).
struct UrlError {
    std::string message;
};

class EndpointUrl {
  public:
    enum class Role {
        endpoint,  // a token or discovery endpoint: a query is allowed
        issuer,    // an issuer identifier (RFC 8414 §2): no query
    };

    static Expected<EndpointUrl, UrlError> parse(std::string_view text, Role role = Role::endpoint);

    // The URL exactly as given.
    const std::string& text() const noexcept { return text_; }
    // "https" or "http", lower case.
    const std::string& scheme() const noexcept { return scheme_; }
    // Lower case; an IPv6 literal keeps its brackets ("[::1]").
    const std::string& host() const noexcept { return host_; }
    // The port given, else the scheme's (443, 80).
    std::uint16_t port() const noexcept { return port_; }
    bool loopback() const noexcept { return loopback_; }

    friend bool operator==(const EndpointUrl& a, const EndpointUrl& b) noexcept {
        return a.text_ == b.text_;
    }

  private:
    EndpointUrl() = default;

    std::string text_;
    std::string scheme_;
    std::string host_;
    std::uint16_t port_ = 0;
    bool loopback_ = false;
};

// True for the hosts plain http:// may go to: an IPv4 address in 127.0.0.0/8
// (dotted quad), "localhost" (any case), and the IPv6 loopback or an
// IPv4-mapped 127.x address, bracketed as in a URL ("[::1]").
bool is_loopback_host(std::string_view host);

}  // namespace tokenshm::refresher
