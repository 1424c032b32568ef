// What every fuzz target asserts besides "no crash, no hang, no sanitizer
// report": the promises a parser makes about its error messages. A broken
// promise aborts, which libFuzzer reports as a crash and saves the input.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string_view>

namespace tokenshm::fuzz {

// Aborts with one line naming the promise that broke. Never prints the input
// or a value derived from it: inputs may look like tokens.
[[noreturn]] inline void broken_promise(const char* what) {
    std::fprintf(stderr, "fuzz: broken promise: %s\n", what);
    std::abort();
}

inline void expect(bool ok, const char* what) {
    if (!ok) broken_promise(what);
}

// SPEC: "Every failure prints one clear line": non-empty, printable ASCII
// only (no newline, no escape sequence a terminal would act on).
inline bool one_printable_line(std::string_view s) {
    if (s.empty()) return false;
    for (const char c : s) {
        const auto u = static_cast<unsigned char>(c);
        if (u < 0x20 || u > 0x7e) return false;
    }
    return true;
}

}  // namespace tokenshm::fuzz
