// Catch2's main for every unit-test binary, with two rules Catch2 lacks:
// a run that executed no test case fails (a filter that matched nothing, or a
// file whose cases were all compiled out, is not a pass), and a check that
// could not run here (SKIP_OR_FAIL_UNDER_CI, tests/ci_skip.hpp) is counted and
// reported, and fails the run when TOKENSHM_CI=1.
#define CATCH_CONFIG_RUNNER
#include "ci_skip.hpp"

#include <catch2/catch.hpp>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace {

std::atomic<int> g_skips{0};
bool g_run_started = false;
std::uint64_t g_test_cases = 0;

// Counts the test cases that ran (passed or failed).
struct RunCounter : Catch::TestEventListenerBase {
    using TestEventListenerBase::TestEventListenerBase;
    void testRunStarting(Catch::TestRunInfo const& info) override {
        g_run_started = true;
        TestEventListenerBase::testRunStarting(info);
    }
    void testCaseEnded(Catch::TestCaseStats const& stats) override {
        ++g_test_cases;
        TestEventListenerBase::testCaseEnded(stats);
    }
};

}  // namespace

CATCH_REGISTER_LISTENER(RunCounter)

namespace tokenshm_test {

bool under_ci() noexcept {
    const char* v = std::getenv("TOKENSHM_CI");
    return v != nullptr && std::strcmp(v, "1") == 0;
}

void note_skip() noexcept {
    g_skips.fetch_add(1, std::memory_order_relaxed);
}

}  // namespace tokenshm_test

int main(int argc, char** argv) {
    Catch::Session session;
    int rc = session.run(argc, argv);
    if (!g_run_started) return rc;  // --help, --list-tests: nothing was meant to run
    if (rc == 0 && g_test_cases == 0) {
        std::fprintf(stderr, "catch_main: no test case ran: a run that tests nothing fails\n");
        rc = 1;
    }
    if (const int skips = g_skips.load(); skips > 0)
        std::fprintf(stderr,
                     "catch_main: %d check(s) could not run here and were skipped "
                     "(TOKENSHM_CI=1 makes that a failure)\n",
                     skips);
    return rc;
}
