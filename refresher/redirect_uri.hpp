// RedirectUri: where the authorization server sends the browser back to
// `tokenshm login` (the credential's `redirect_uri`). Only a loopback
// redirect on the IPv4 literal is accepted, as RFC 8252 §7.3 recommends for
// native apps ("localhost" may resolve elsewhere, §8.3): the listener binds
// 127.0.0.1 only, so any other host could never receive the code.
#pragma once

#include <tokenshm/expected.hpp>

#include <cstdint>
#include <string>
#include <string_view>

namespace tokenshm::refresher {

struct RedirectUri {
    std::uint16_t port = 0;          // 1..65535; 0 = a free port, chosen when listening
    std::string path = "/callback";  // absolute path, no query or fragment

    // "http://127.0.0.1:<port><path>" for a bound port.
    std::string text(std::uint16_t bound_port) const;

    // "http://127.0.0.1:PORT/PATH". The error is one line saying what is wrong.
    static Expected<RedirectUri, std::string> parse(std::string_view text);

    friend bool operator==(const RedirectUri&, const RedirectUri&) = default;
};

}  // namespace tokenshm::refresher
