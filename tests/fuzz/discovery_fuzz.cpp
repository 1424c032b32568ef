// Fuzz target: the discovery document parser (parse_discovery in
// refresher/oauth.cpp) on arbitrary bytes. The input is the body of a 200
// answer to a discovery request, judged against two configured issuers: a
// host-only https issuer and a loopback http issuer with a path and a
// trailing slash (the seeds speak for one or the other).
//
// Promises checked: a token_endpoint that comes out passes EndpointUrl's
// checks again (https, or http to loopback) and is the same URL when parsed
// again; an error is a runtime error of one printable line.
#include "fuzz_check.hpp"
#include "oauth.hpp"

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace {

using namespace tokenshm::refresher;
using tokenshm::fuzz::expect;
using tokenshm::fuzz::one_printable_line;

const EndpointUrl& issuer(std::size_t i) {
    static const std::array<EndpointUrl, 2> issuers{
        *EndpointUrl::parse("https://id.example.com", EndpointUrl::Role::issuer),
        *EndpointUrl::parse("http://127.0.0.1:8080/realms/main/", EndpointUrl::Role::issuer),
    };
    return issuers[i];
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view body(reinterpret_cast<const char*>(data), size);
    for (std::size_t i = 0; i < 2; ++i) {
        HttpResponse r;
        r.outcome = HttpResponse::Outcome::response;
        r.status = 200;
        r.content_type = "application/json";
        r.body = std::string(body);
        const auto endpoint = parse_discovery(r, issuer(i));
        if (endpoint) {
            expect(endpoint->scheme() == "https" || endpoint->loopback(),
                   "a discovered token_endpoint is https or loopback");
            const auto again = EndpointUrl::parse(endpoint->text());
            expect(again && *again == *endpoint, "a discovered token_endpoint parses again");
        } else {
            expect(endpoint.error().kind == RefresherError::Kind::runtime,
                   "a discovery error is a runtime error");
            expect(one_printable_line(endpoint.error().message),
                   "a discovery error is one printable line");
        }
    }
    return 0;
}
