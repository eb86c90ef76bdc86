// Replays the fuzzer's seed corpus (tests/fuzz/corpus) and any saved crash inputs
// (tests/fuzz/crashes, if present) through the fuzz target, inside the normal test run,
// so the target and its invariants cannot rot. The target is compiled in here: with
// RS_FUZZ_THROW a broken invariant throws (and names itself) instead of aborting.
#define RS_FUZZ_THROW 1
#include "fuzz/fuzz_request.cpp"

#include "support.hpp"

#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <iterator>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using test::files_in;
using test::read_file;

/// replay: runs the fuzz target on each file; each must pass every invariant.
void replay(const std::vector<std::string>& files) {
    for (const std::string& path : files) {
        INFO("input: " << path);
        const std::string bytes = read_file(path);
        // An exact-size heap copy, as libFuzzer passes it (a sanitizer build sees overreads).
        std::unique_ptr<std::uint8_t[]> data(new std::uint8_t[bytes.empty() ? 1 : bytes.size()]);
        std::copy(bytes.begin(), bytes.end(), data.get());
        int rc = -1;
        REQUIRE_NOTHROW(rc = LLVMFuzzerTestOneInput(data.get(), bytes.size()));
        REQUIRE(rc == 0);
    }
}

}  // namespace

TEST_CASE("fuzz target: the seed corpus replays cleanly", "[fuzz]") {
    const std::vector<std::string> files = files_in(RS_SOURCE_DIR "/tests/fuzz/corpus");
    INFO("corpus: " RS_SOURCE_DIR "/tests/fuzz/corpus");
    REQUIRE(files.size() >= 30);  // the corpus is there (a missing one must fail)
    replay(files);
}

TEST_CASE("fuzz target: saved crash inputs stay fixed", "[fuzz]") {
    // Regressions: inputs the fuzzer once failed on, copied here from .ci/fuzz's output.
    const std::vector<std::string> files = files_in(RS_SOURCE_DIR "/tests/fuzz/crashes");
    replay(files);
    SUCCEED(files.size() << " crash input(s) replayed");
}

TEST_CASE("fuzz target: its invariants do fire", "[fuzz]") {
    // The target itself is checked: on well-formed inputs it runs every stage and passes,
    // and an invariant broken by hand throws in this build.
    const std::string pipelined =
        "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nT: v\r\n\r\n"
        "GET /b HTTP/1.1\r\nHost: h\r\n\r\n";
    REQUIRE_NOTHROW(rs_fuzz::one_input(pipelined));
    std::string what;
    try {
        rs_fuzz::fail("example", 1);
    } catch (const std::runtime_error& e) {
        what = e.what();
    }
    CHECK(what.find("invariant broken: example") != std::string::npos);

    const rs_fuzz::decoded d = rs_fuzz::check_chunked("3;x=y\r\nabc\r\n0\r\nT: v\r\n\r\nrest", 12345);
    CHECK(d.status == rs_fuzz::parse_status::complete);
    CHECK(d.body == "abc");
    CHECK(d.consumed == std::string("3;x=y\r\nabc\r\n0\r\nT: v\r\n\r\n").size());
}
