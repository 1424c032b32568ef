// A check that cannot run here (not root, a tool missing, /proc not telling)
// is skipped with a warning on a developer's machine and FAILS under
// TOKENSHM_CI=1 (.ci/run sets it): in CI a skip must not pass silently.
// tests/catch_main.cpp defines these and reports how many checks skipped.
#pragma once

#include <catch2/catch.hpp>

namespace tokenshm_test {

// True when TOKENSHM_CI is "1".
bool under_ci() noexcept;
// Counts one skipped check, for catch_main's summary.
void note_skip() noexcept;

}  // namespace tokenshm_test

// Ends the current test case (it `return`s): fails it under TOKENSHM_CI=1,
// else warns and counts a skip. `why` is streamed like INFO's argument.
#define SKIP_OR_FAIL_UNDER_CI(why)                                                         \
    do {                                                                                   \
        if (::tokenshm_test::under_ci()) FAIL("cannot run here (TOKENSHM_CI=1): " << why); \
        ::tokenshm_test::note_skip();                                                      \
        WARN("skipped: " << why);                                                          \
        return;                                                                            \
    } while (false)

// For a check inside a test case that goes on afterwards: fails under
// TOKENSHM_CI=1, else warns and counts a skip, and the test case continues.
#define WARN_OR_FAIL_UNDER_CI(why)                                                           \
    do {                                                                                     \
        if (::tokenshm_test::under_ci()) FAIL("cannot check here (TOKENSHM_CI=1): " << why); \
        ::tokenshm_test::note_skip();                                                        \
        WARN("not checked: " << why);                                                        \
    } while (false)
