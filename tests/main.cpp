// The main of every test executable (compiled once, Catch2 2 or 3): Catch2's own session,
// plus one rule for CTest. A run in which some test case ended in RS_SKIP (support.hpp)
// and none failed exits 77, which CTest (SKIP_RETURN_CODE 77) reports as "Skipped";
// a plain 0 would report a test whose client was missing as "Passed".
#if __has_include(<catch2/catch_session.hpp>)
#include <catch2/catch_session.hpp>  // Catch2 3
#else
#define CATCH_CONFIG_RUNNER  // Catch2 2: the implementation goes here, without its main
#include <catch2/catch.hpp>
#endif

#include "support.hpp"

namespace {
constexpr int exit_skipped = 77;  // the Automake convention that CTest's SKIP_RETURN_CODE uses here
}

#if __has_include(<catch2/catch_session.hpp>)
namespace cli = Catch::Clara;
#else
namespace cli = Catch::clara;
#endif

int main(int argc, char* argv[]) {
    // Options of our own, for the tests that take them (test_lifecycle_model): --seed N
    // replays a run's random choices, --seconds S makes a stress run longer.
    Catch::Session session;
    session.cli(session.cli() |
                cli::Opt(test::option_seed(), "seed")["--seed"]("random choices' seed (0: a new one, printed)") |
                cli::Opt(test::option_seconds(), "seconds")["--seconds"]("how long a stress test runs"));
    if (const int rc = session.applyCommandLine(argc, argv)) return rc;
    const int failed = session.run();
    if (failed == 0) return test::skip_count() > 0 ? exit_skipped : 0;
    // Catch2 returns the number of failed assertions (at most 255): exactly 77 of them
    // must still be a failure.
    return failed == exit_skipped ? 1 : failed;
}
