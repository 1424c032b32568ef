// Secret and WipedString: the bytes they held are zeroed when they let go.
// (The buffer is inspected after clear(), which keeps the allocation, so the
// check reads memory the string still owns.)
#include "secret.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <string>

using tokenshm::refresher::WipedString;

namespace {

bool all_zero(const char* p, std::size_t n) {
    return std::all_of(p, p + n, [](char c) { return c == '\0'; });
}

}  // namespace

TEST_CASE("a WipedString zeroes its bytes when cleared", "[secret]") {
    WipedString body(std::string(100, 'k'));
    const char* bytes = body.data();
    REQUIRE_FALSE(all_zero(bytes, 100));
    body.clear();
    CHECK(body.empty());
    CHECK(all_zero(bytes, 100));
}

TEST_CASE("a WipedString keeps its content while it grows", "[secret]") {
    WipedString body;
    std::string expected;
    for (int i = 0; i < 200; ++i) {
        const std::string chunk = "chunk" + std::to_string(i) + ";";
        body.append(chunk.data(), chunk.size());
        expected += chunk;
    }
    CHECK(body == expected);
    CHECK(body.size() == expected.size());
}
