// Fuzz target: the state file, the file in the state directory that holds a
// credential's rotated refresh token (refresher/state_store.cpp), on
// arbitrary bytes. The bytes are the file's contents; they are read the way
// the refresher reads them at start, through StateStore::load, from an
// in-memory state directory (memory_file_system.hpp): no disk, and every run
// starts from the same state.
//
// load() decodes the bytes with decode_state_file (format v2 with its
// checksum) and falls back to the bare token of format v1, so going through
// it fuzzes both and the upgrade decision between them.
//
// Promises checked: a token that comes out is non-empty, within
// StateStore::max_token_bytes and free of NUL and control characters; an error is one
// printable line; no descriptor is left open; warnings are printable lines.
#include "fuzz_check.hpp"
#include "memory_file_system.hpp"
#include "state_store.hpp"

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace {

using namespace tokenshm::refresher;
using tokenshm::fuzz::expect;
using tokenshm::fuzz::one_printable_line;

constexpr std::string_view kDir = "/var/lib/tokenshm";
constexpr std::string_view kCredential = "storage";

// What StateStore::load makes of a state file holding `bytes`.
tokenshm::Expected<std::optional<Secret>, RefresherError> read_state_file(std::string_view bytes) {
    tokenshm::fuzz::MemoryFileSystem fs;
    std::vector<std::string> warnings;
    StateStore store(fs, std::string(kDir), [&](std::string_view, std::string_view message) {
        warnings.emplace_back(message);
    });
    fs.put(store.token_path(kCredential), bytes);
    auto loaded = store.load(kCredential);
    expect(fs.open_descriptors() == 0, "the state file's descriptor is closed");
    for (const auto& w : warnings)
        expect(one_printable_line(w), "a warning is one printable line");
    return loaded;
}

// The refresh token a decoded state file holds (nullopt: none).
std::optional<std::string_view> token_of(const std::optional<Secret>& s) {
    if (!s) return std::nullopt;
    return s->reveal();
}

template <class Decoded>
void check_decoded(const Decoded& decoded) {
    if (!decoded) {
        expect(one_printable_line(decoded.error().message),
               "a state file error is one printable line");
        return;
    }
    const std::optional<std::string_view> token = token_of(*decoded);
    expect(token.has_value(), "a state file that exists yields a token or an error");
    expect(!token->empty() && token->size() <= StateStore::max_token_bytes,
           "a refresh token is non-empty and within max_token_bytes");
    for (const char c : *token) {
        const auto u = static_cast<unsigned char>(c);
        expect(u >= 0x20 && u != 0x7f, "a refresh token has no NUL or control character");
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view bytes(reinterpret_cast<const char*>(data), size);
    check_decoded(read_state_file(bytes));
    return 0;
}
