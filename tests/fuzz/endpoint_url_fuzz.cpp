// Fuzz target: EndpointUrl::parse (refresher/endpoint_url.cpp), the one
// check every URL the refresher may send credentials to passes through, on
// arbitrary bytes, in both roles.
//
// Promises checked (endpoint_url.hpp): an accepted URL is https or http to a
// loopback host, keeps its text exactly, has a lower-case host and a port
// other than 0, has no user info, fragment, space, control or non-ASCII
// byte, and as an issuer no query; parsing its text again gives the same
// URL. A refusal is one printable line.
#include "endpoint_url.hpp"
#include "fuzz_check.hpp"

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace {

using namespace tokenshm::refresher;
using tokenshm::fuzz::expect;
using tokenshm::fuzz::one_printable_line;

bool plain_ascii(std::string_view s) {
    for (const char c : s)
        if (c <= 0x20 || c > 0x7e) return false;
    return true;
}

void check(std::string_view text, EndpointUrl::Role role) {
    const auto url = EndpointUrl::parse(text, role);
    if (!url) {
        expect(one_printable_line(url.error().message), "a refusal is one printable line");
        return;
    }
    expect(url->text() == text, "the URL keeps its text");
    expect(url->scheme() == "https" || (url->scheme() == "http" && url->loopback()),
           "https, or http only to loopback");
    expect(url->loopback() == is_loopback_host(url->host()), "loopback() agrees with the host");
    expect(url->port() != 0, "a port is set");
    expect(plain_ascii(text), "no space, control or non-ASCII byte");
    expect(text.find('#') == std::string_view::npos, "no fragment");
    const auto authority_end = text.find_first_of("/?", text.find("//") + 2);
    expect(text.substr(0, authority_end).find('@') == std::string_view::npos, "no user info");
    for (const char c : url->host())
        expect(!(c >= 'A' && c <= 'Z'), "the host is lower case");
    if (role == EndpointUrl::Role::issuer)
        expect(text.find('?') == std::string_view::npos, "an issuer has no query");
    const auto again = EndpointUrl::parse(url->text(), role);
    expect(again && again->host() == url->host() && again->port() == url->port(),
           "an accepted URL parses again to the same");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    check(text, EndpointUrl::Role::endpoint);
    check(text, EndpointUrl::Role::issuer);
    return 0;
}
