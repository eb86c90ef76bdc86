// Replays the seed corpora through the connection fuzz target (tests/fuzz/fuzz_connection.cpp),
// inside the normal test run, so the target, its model of the server and its invariants
// cannot rot. The target is compiled in here: with RS_FUZZ_THROW a broken invariant throws
// (and names itself) instead of aborting.
//
// The seed files (tests/fuzz/corpus: the parser's seeds; tests/fuzz/corpus_connection:
// pipelining, bodies, 100-continue, streams, HEAD, limits) are plain request streams; each
// is replayed behind several pairs of control bytes (see the top of fuzz_connection.cpp),
// so it reaches every server kind and is cut in several ways. Saved fuzzer inputs in
// tests/fuzz/crashes_connection (if present) already hold their control bytes and are
// replayed as they are.
#define RS_FUZZ_THROW 1
#include "fuzz/fuzz_connection.cpp"

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

/// run_input: the fuzz target on bytes, from an exact-size heap copy as libFuzzer passes them.
void run_input(const std::string& bytes) {
    std::unique_ptr<std::uint8_t[]> data(new std::uint8_t[bytes.empty() ? 1 : bytes.size()]);
    std::copy(bytes.begin(), bytes.end(), data.get());
    int rc = -1;
    REQUIRE_NOTHROW(rc = LLVMFuzzerTestOneInput(data.get(), bytes.size()));
    REQUIRE(rc == 0);
}

/// control: the control-byte pairs each seed is replayed behind (.ci/fuzz seeds with these too).
struct control {
    const char* bytes;  // two of them
    const char* what;
};
const control controls[] = {
    {"\x00\x00", "Unix socket, 0 workers, one send"},
    {"\x15\x00", "Unix socket, 2 workers, 1-byte sends (63, then the rest), each read before the next"},
    {"\x3a\x05", "TCP, 0 workers, a send per line cut between CR and LF, reading only after sending"},
    {"\x4f\x2a", "TCP, 2 workers, 11 input-derived cuts, a small receive buffer"},
    {"\x81\x00", "Unix socket, 2 workers, one send, then a reset instead of an end"},
};

/// replay: every file behind every control pair.
void replay_seeds(const std::vector<std::string>& files) {
    for (const std::string& path : files) {
        const std::string seed = read_file(path);
        for (const control& c : controls) {
            INFO("seed: " << path << "; control: " << c.what);
            run_input(std::string(c.bytes, 2) + seed);
        }
    }
}

const std::string date = "Date: Thu, 01 Jan 2026 00:00:00 GMT\r\n";

std::string ok(std::string_view body, std::string_view extra = "") {
    return "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " + std::to_string(body.size()) +
           "\r\n" + date + std::string(extra) + "\r\n" + std::string(body);
}

/// broken: what check_exchange throws for stream and got ("" when it passes).
std::string broken(std::string_view stream, std::string_view got) {
    try {
        rs_fuzz_conn::check_exchange(stream, got);
    } catch (const std::runtime_error& e) {
        return e.what();
    }
    return {};
}

}  // namespace

TEST_CASE("connection fuzz target: the seed corpora replay cleanly", "[fuzz]") {
    const std::vector<std::string> parser_seeds = files_in(RS_SOURCE_DIR "/tests/fuzz/corpus");
    const std::vector<std::string> connection_seeds = files_in(RS_SOURCE_DIR "/tests/fuzz/corpus_connection");
    REQUIRE(parser_seeds.size() >= 30);  // the corpora are there (a missing one must fail)
    REQUIRE(connection_seeds.size() >= 15);
    replay_seeds(parser_seeds);
    replay_seeds(connection_seeds);
    // Every connection of the replay ended: no descriptor is left behind in the servers.
    REQUIRE_NOTHROW(rs_fuzz_conn::check_fds());
}

TEST_CASE("connection fuzz target: saved crash inputs stay fixed", "[fuzz]") {
    // Regressions: inputs the fuzzer once failed on (control bytes included), copied here
    // from .ci/fuzz's output.
    const std::vector<std::string> files = files_in(RS_SOURCE_DIR "/tests/fuzz/crashes_connection");
    for (const std::string& path : files) {
        INFO("input: " << path);
        run_input(read_file(path));
    }
    SUCCEED(files.size() << " crash input(s) replayed");
}

TEST_CASE("connection fuzz target: its model and invariants do fire", "[fuzz]") {
    const std::string get = "GET /hello HTTP/1.1\r\nHost: h\r\n\r\n";
    const std::string hello = rs_fuzz_conn::hello_body();
    CHECK(broken(get, ok(hello)) == "");
    CHECK(broken(get + get, ok(hello) + ok(hello)) == "");
    CHECK(broken(get, ok("Hello, fuzzer?\n")).find("expected the body") != std::string::npos);
    CHECK(broken(get, ok(hello) + ok(hello)).find("none was due") != std::string::npos);
    CHECK(broken(get + get, ok(hello)).find("the connection ended") != std::string::npos);
    CHECK(broken(get, ok(hello, "Connection: close\r\n")).find("Connection") != std::string::npos);
    CHECK(broken(get, "HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\n" + hello).find("no Date") != std::string::npos);
    CHECK(broken(get, "HTTP/1.1 200 Fine\r\n" + date + "\r\n").find("reason phrase") != std::string::npos);
    CHECK(broken(get, "HTTP/1.1 408 Request Timeout\r\n").find("never ends") != std::string::npos);

    // Nothing is due for a head that never ends, or one with no line end at all.
    CHECK(broken("GET /hello HTTP/1.1\r\nHost: h\r\n", "") == "");
    CHECK(broken("\x05", "") == "");
    CHECK(broken("GET /hello HTTP/1.1\r\nHost: h\r\n", ok(hello)).find("none was due") != std::string::npos);

    // A parse error: its answer closes; it may be missed when the last line ended before it.
    const std::string bad = "GET /hello HTTP/1.1\r\nHost: h\r\nBad Name: v\r\n\r\n";
    const std::string answer400 = "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n" +
                                  date + "Connection: close\r\n\r\nBad Request";
    CHECK(broken(bad, answer400) == "");
    CHECK(broken(bad, "").find("400 was due") != std::string::npos);
    CHECK(broken("GET /hello HTTP/1.1\r\nHost\x01", answer400) == "");
    CHECK(broken("GET /hello HTTP/1.1\r\nHost\x01", "") == "");
    CHECK(broken(bad + get, answer400 + ok(hello)).find("after Connection: close") != std::string::npos);

    // HEAD: no body, but the Content-Length of the one GET would get.
    const std::string head = "HEAD /hello HTTP/1.1\r\nHost: h\r\n\r\n";
    const std::string head_answer = ok(hello).substr(0, ok(hello).size() - hello.size());
    CHECK(broken(head + get, head_answer + ok(hello)) == "");
    CHECK(broken(head + get, ok(hello) + ok(hello)) != "");

    // 100 Continue: allowed before the answer to a request that asked for it, nowhere else.
    const std::string expect = "POST /echo HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok";
    const std::string echo = "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 2\r\n" +
                             date + "\r\nok";
    CHECK(broken(expect, echo) == "");
    CHECK(broken(expect, "HTTP/1.1 100 Continue\r\n\r\n" + echo) == "");
    CHECK(broken(get, "HTTP/1.1 100 Continue\r\n\r\n" + ok(hello)) != "");

    // The streamed /count and the SSE stream, as predicted.
    const std::string count = "POST /count HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    CHECK(broken(count, ok("3")) == "");
    CHECK(broken(count, ok("4")).find("expected the body") != std::string::npos);
    const std::string sse = "GET /sse HTTP/1.1\r\nHost: h\r\n\r\n";
    const std::string stream_head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n" + date + "\r\n";
    CHECK(broken(sse, stream_head + "b\r\ndata: one\n\n\r\nb\r\ndata: two\n\n\r\n0\r\n\r\n") == "");
    CHECK(broken(sse, stream_head + "b\r\ndata: one\n\n\r\nb\r\ndata: two\n\n\r\n").find("chunk") != std::string::npos);

    // The predictions for a pipeline: where each request begins.
    const rs_fuzz_conn::expected first = rs_fuzz_conn::predict("\r\n" + get + count, 0);
    CHECK(first.status == 200);
    CHECK(first.next == 2 + get.size());
    CHECK(rs_fuzz_conn::predict("\r\n" + get + count, first.next).body == "3");

    std::string what;
    try {
        rs_fuzz_conn::fail("example", 1);
    } catch (const std::runtime_error& e) {
        what = e.what();
    }
    CHECK(what.find("invariant broken: example") != std::string::npos);
}
