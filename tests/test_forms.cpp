// Forms: multipart/form-data read streamed (multipart_parser, read_multipart) and
// application/x-www-form-urlencoded (parse_form, read_form).
//
//   parser     the RFC examples, every split of a body into two pieces (and three, and byte
//              by byte), each piece in a heap block of its exact size (an over-read trips
//              AddressSanitizer), preamble and epilogue, padding, near-delimiters in data,
//              every error and both limits at and past their bounds; a throughput figure
//   boundary   multipart_boundary() on quoted, token, too long and wrong Content-Types
//   urlencoded parse_form(), form_value(), limits, bad escapes; error_status()
//   server     read_multipart()/read_form() on routes, with the raw client of support.hpp,
//              curl -F (several parts, a 20 MiB file with the server's RSS measured),
//              Python's urllib and http.client, several clients at once
//   echo       examples/echo_server POST /upload against sha256sum, and its SHA-256 against
//              the FIPS 180-4 vectors and every length 0..130
//   fuzz       tests/fuzz/fuzz_multipart.cpp's invariants on its seed corpus
//
// No sleeps: every wait is bounded (process exits, socket timeouts).

#define RS_FUZZ_THROW 1
#include "fuzz/fuzz_multipart.cpp"  // the fuzz target, replayed on its seed corpus below

#include "process.hpp"

#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#ifndef RS_ECHO_SERVER
#error "RS_ECHO_SERVER (the path of the built echo_server) must be defined"
#endif

namespace {

namespace rs = restartable_server;
using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

// ------------------------------------------------------------------ helpers --

/// parse_result: what a parser reported, as text, and how it ended.
struct parse_result {
    std::string log;  // "[name|filename or -|content type]" then data, then "<end>" per part
    std::error_code feed_error;
    std::error_code finish_error;
    std::size_t parts = 0;
};

/// parse: feeds body to a parser cut at the offsets cuts (ascending), each piece copied
/// into a heap block of its exact size; then finish().
parse_result parse(std::string_view body, std::string_view boundary, const std::vector<std::size_t>& cuts = {},
                   rs::multipart_limits limits = {}, int stop_at_part = -1) {
    parse_result r;
    bool in_part = false;
    rs::multipart_parser p(
        boundary,
        [&](const rs::form_part& part) {
            CHECK(!in_part);
            in_part = true;
            r.log += "[" + part.name + "|" + (part.has_filename ? part.filename : "-") + "|" + part.content_type + "]";
            return static_cast<int>(part.index) != stop_at_part;
        },
        [&](const rs::form_part&, std::string_view data) {
            CHECK(in_part);
            if (data.empty()) {
                r.log += "<end>";
                in_part = false;
            } else {
                r.log += data;
            }
            return true;
        },
        limits);
    std::size_t at = 0;
    std::vector<std::size_t> ends = cuts;
    ends.push_back(body.size());
    for (std::size_t end : ends) {
        const test::heap_buf piece(body.substr(at, end - at));
        std::error_code ec = p.feed(piece.view());
        if (ec && !r.feed_error) r.feed_error = ec;
        at = end;
    }
    r.finish_error = p.finish();
    r.parts = p.parts();
    return r;
}

/// same_at_every_split: the body parsed whole, and cut in two at every offset (and in
/// three, for bodies up to 300 bytes), gives the same result each time.
void same_at_every_split(std::string_view body, std::string_view boundary, rs::multipart_limits limits = {}) {
    const parse_result whole = parse(body, boundary, {}, limits);
    for (std::size_t i = 0; i <= body.size(); ++i) {
        const parse_result r = parse(body, boundary, {i}, limits);
        INFO("cut at " << i << " of " << test::printable(body));
        REQUIRE(r.log == whole.log);
        REQUIRE(r.feed_error == whole.feed_error);
        REQUIRE(r.finish_error == whole.finish_error);
    }
    if (body.size() <= 300)
        for (std::size_t i = 0; i <= body.size(); ++i)
            for (std::size_t j = i; j <= body.size(); ++j) {
                const parse_result r = parse(body, boundary, {i, j}, limits);
                INFO("cut at " << i << " and " << j << " of " << test::printable(body));
                REQUIRE(r.log == whole.log);
                REQUIRE(r.finish_error == whole.finish_error);
            }
    std::vector<std::size_t> bytes;
    for (std::size_t i = 1; i < body.size(); ++i) bytes.push_back(i);
    const parse_result r = parse(body, boundary, bytes, limits);
    INFO("byte by byte: " << test::printable(body));
    REQUIRE(r.log == whole.log);
    REQUIRE(r.finish_error == whole.finish_error);
}

std::string field_part(const std::string& boundary, const std::string& name, const std::string& value) {
    return "--" + boundary + "\r\nContent-Disposition: form-data; name=\"" + name + "\"\r\n\r\n" + value + "\r\n";
}

/// vm_kib: a VmRSS-style line of /proc/self/status (or /proc/PID/status), in KiB; 0 if none.
long vm_kib(const std::string& key, const std::string& status_file = "/proc/self/status") {
    std::ifstream in(status_file);
    std::string line;
    while (std::getline(in, line))
        if (line.compare(0, key.size() + 1, key + ":") == 0) return std::atol(line.c_str() + key.size() + 1);
    return 0;
}

using test::command_result;

/// run_bounded: test::run_command with this file's bound (60 s: 20 MiB uploads).
command_result run_bounded(const std::vector<std::string>& args) { return test::run_command(args, 60s); }

/// temp_dir: a fresh directory, removed with what it holds at the end of the scope.
struct temp_dir {
    std::string path;
    temp_dir() {
        char tmpl[] = "/tmp/rs_forms_XXXXXX";
        REQUIRE(::mkdtemp(tmpl) != nullptr);
        path = tmpl;
    }
    ~temp_dir() { std::system(("rm -rf '" + path + "'").c_str()); }
    std::string write(const std::string& name, const std::string& content) const {
        const std::string file = path + "/" + name;
        std::ofstream(file, std::ios::binary) << content;
        return file;
    }
};

std::string random_bytes(std::size_t n, unsigned seed) {
    std::mt19937 gen(seed);
    std::string s(n, '\0');
    for (char& c : s) c = static_cast<char>(gen() & 0xff);
    return s;
}

/// sha256sum: the digest of the file by coreutils' sha256sum, or "".
std::string sha256sum(const std::string& file) {
    command_result r = run_bounded({"sha256sum", file});
    return r.out.size() >= 64 ? r.out.substr(0, 64) : std::string();
}

}  // namespace

// ------------------------------------------------------------------- parser --

TEST_CASE("multipart: RFC 7578 4.2's example and RFC 2046 5.1.1's (preamble, epilogue, a quoted "
          "boundary with a space), at every split", "[forms][multipart]") {
    // RFC 7578 section 4.2, closed with the final delimiter.
    const std::string rfc7578 =
        "--AaB03x\r\n"
        "content-disposition: form-data; name=\"field1\"\r\n"
        "content-type: text/plain;charset=UTF-8\r\n"
        "content-transfer-encoding: quoted-printable\r\n"
        "\r\n"
        "Joe owes =E2=82=AC100.\r\n"
        "--AaB03x--\r\n";
    parse_result r = parse(rfc7578, "AaB03x");
    CHECK(!r.feed_error);
    CHECK(!r.finish_error);
    CHECK(r.log == "[field1|-|text/plain;charset=UTF-8]Joe owes =E2=82=AC100.<end>");
    same_at_every_split(rfc7578, "AaB03x");

    // RFC 2046 section 5.1.1's body, with the Content-Disposition form-data needs.
    std::string boundary;
    REQUIRE(!rs::multipart_boundary("multipart/form-data; boundary=\"simple boundary\"", boundary));
    REQUIRE(boundary == "simple boundary");
    const std::string rfc2046 =
        "This is the preamble.  It is to be ignored, though it\r\n"
        "is a handy place for composition agents to include an\r\n"
        "explanatory note to non-MIME conformant readers.\r\n"
        "\r\n"
        "--simple boundary\r\n"
        "Content-Disposition: form-data; name=\"a\"\r\n"
        "\r\n"
        "This is implicitly typed plain US-ASCII text.\r\n"
        "It does NOT end with a linebreak.\r\n"
        "--simple boundary\r\n"
        "Content-Disposition: form-data; name=\"b\"\r\n"
        "Content-type: text/plain; charset=us-ascii\r\n"
        "\r\n"
        "This is explicitly typed plain US-ASCII text.\r\n"
        "It DOES end with a linebreak.\r\n"
        "\r\n"
        "--simple boundary--\r\n"
        "\r\n"
        "This is the epilogue.  It is also to be ignored.\r\n";
    r = parse(rfc2046, boundary);
    CHECK(!r.finish_error);
    CHECK(r.log ==
          "[a|-|]This is implicitly typed plain US-ASCII text.\r\nIt does NOT end with a linebreak.<end>"
          "[b|-|text/plain; charset=us-ascii]This is explicitly typed plain US-ASCII text.\r\n"
          "It DOES end with a linebreak.\r\n<end>");
    same_at_every_split(rfc2046, boundary);
}

TEST_CASE("multipart: files, empty parts, padding, near-delimiters in data, at every split", "[forms][multipart]") {
    const std::string b = "----WebKitFormBoundary7MA4YWxkTrZu0gW";
    const std::string body =
        "--" + b + "  \t\r\n"  // transport padding after a delimiter
        "Content-Disposition: form-data; name=\"title\"\r\n\r\n"
        "hello world\r\n"
        "--" + b + "\r\n"
        "Content-Disposition: form-data; name=\"file\"; filename=\"a b.txt\"\r\n"
        "Content-Type: application/octet-stream\r\n\r\n"
        "line\r\n--" + b.substr(0, 10) + "x\r\n-" + "\r\n\r\n--" + b + "X-not-at-end\r" + "\r" + "\r\n\r\n\r\n"
        "\r\n"
        "--" + b + "\r\n"
        "Content-Disposition: form-data; name=\"empty\"; filename=\"\"\r\n\r\n"
        "\r\n"
        "--" + b + "\r\n"
        "content-disposition: FORM-DATA; filename=C:\\dir\\x.txt ; NAME=\"q\\\"uote\\\\d\"; filename*=UTF-8''x\r\n\r\n"
        "\r\n\r\n"
        "\r\n--" + b + "--";
    // "--b X-not-at-end" is a delimiter followed by garbage: strictly an error (RFC 2046
    // says the boundary must not appear in data), checked below; take it out here.
    std::string good = body;
    good.replace(good.find(b + "X-not-at-end"), b.size() + 12, "X-not-at-end");
    const parse_result r = parse(good, b);
    INFO(test::printable(r.log, 2000));
    CHECK(!r.feed_error);
    CHECK(!r.finish_error);
    CHECK(r.parts == 4);
    CHECK(r.log == "[title|-|]hello world<end>"
                   "[file|a b.txt|application/octet-stream]line\r\n--" + b.substr(0, 10) +
                   "x\r\n-\r\n\r\n--X-not-at-end\r\r\r\n\r\n\r\n<end>"
                   "[empty||]<end>"
                   "[q\"uote\\d|C:\\dir\\x.txt|]\r\n\r\n<end>");
    same_at_every_split(good, b);

    const parse_result bad = parse(body, b);
    CHECK(bad.feed_error == rs::errc::malformed_multipart);
    CHECK(bad.finish_error == rs::errc::malformed_multipart);
    same_at_every_split(body, b);
}

TEST_CASE("multipart: errors the handler sees", "[forms][multipart]") {
    const std::string ok_head = "Content-Disposition: form-data; name=\"a\"\r\n\r\n";
    struct bad_case {
        const char* what;
        std::string body;
        rs::errc feed, finish;
    };
    const std::vector<bad_case> cases = {
        {"no final delimiter", "--b\r\n" + ok_head + "data\r\n--b\r\n" + ok_head + "more", rs::errc{},
         rs::errc::multipart_incomplete},
        {"cut after the last delimiter", "--b\r\n" + ok_head + "data\r\n--b", rs::errc{}, rs::errc::multipart_incomplete},
        {"cut after the last delimiter and a dash", "--b\r\n" + ok_head + "data\r\n--b-", rs::errc{},
         rs::errc::multipart_incomplete},
        {"cut in a head", "--b\r\nContent-Disposition: form-da", rs::errc{}, rs::errc::multipart_incomplete},
        {"an empty body", "", rs::errc{}, rs::errc::multipart_incomplete},
        {"only a preamble", "hello\r\n-- b\r\n", rs::errc{}, rs::errc::multipart_incomplete},
        {"garbage after a delimiter", "--bx\r\n" + ok_head, rs::errc::malformed_multipart, rs::errc::malformed_multipart},
        {"a lone CR after a delimiter", "--b\rX", rs::errc::malformed_multipart, rs::errc::malformed_multipart},
        {"padding before --", "--b\r\n" + ok_head + "d\r\n--b --", rs::errc::malformed_multipart,
         rs::errc::malformed_multipart},
        {"a head line without a colon", "--b\r\nContent-Disposition form-data\r\n\r\nd\r\n--b--",
         rs::errc::malformed_multipart, rs::errc::malformed_multipart},
        {"obs-fold", "--b\r\nContent-Disposition: form-data;\r\n name=\"a\"\r\n\r\nd\r\n--b--",
         rs::errc::malformed_multipart, rs::errc::malformed_multipart},
        {"a bare LF in a head", "--b\r\nContent-Disposition: form-data; name=a\nX: y\r\n\r\nd\r\n--b--",
         rs::errc::malformed_multipart, rs::errc::malformed_multipart},
        {"no Content-Disposition", "--b\r\nContent-Type: text/plain\r\n\r\nd\r\n--b--", rs::errc::malformed_multipart,
         rs::errc::malformed_multipart},
        {"no head at all", "--b\r\n\r\nd\r\n--b--", rs::errc::malformed_multipart, rs::errc::malformed_multipart},
        {"not form-data", "--b\r\nContent-Disposition: attachment; name=a\r\n\r\nd\r\n--b--",
         rs::errc::malformed_multipart, rs::errc::malformed_multipart},
        {"no name", "--b\r\nContent-Disposition: form-data; filename=a\r\n\r\nd\r\n--b--",
         rs::errc::malformed_multipart, rs::errc::malformed_multipart},
        {"two names", "--b\r\nContent-Disposition: form-data; name=a; name=b\r\n\r\nd\r\n--b--",
         rs::errc::malformed_multipart, rs::errc::malformed_multipart},
        {"two Content-Dispositions",
         "--b\r\nContent-Disposition: form-data; name=a\r\nContent-Disposition: form-data; name=b\r\n\r\nd\r\n--b--",
         rs::errc::malformed_multipart, rs::errc::malformed_multipart},
        {"an unclosed quote", "--b\r\nContent-Disposition: form-data; name=\"a\r\n\r\nd\r\n--b--",
         rs::errc::malformed_multipart, rs::errc::malformed_multipart},
        {"a parameter without a value", "--b\r\nContent-Disposition: form-data; name\r\n\r\nd\r\n--b--",
         rs::errc::malformed_multipart, rs::errc::malformed_multipart},
        {"a NUL in a head", std::string("--b\r\nContent-Disposition: form-data; name=a\r\nX: \0\r\n\r\nd\r\n--b--", 57),
         rs::errc::malformed_multipart, rs::errc::malformed_multipart},
    };
    for (const bad_case& c : cases) {
        INFO(c.what << ": " << test::printable(c.body));
        const parse_result r = parse(c.body, "b");
        CHECK(r.feed_error == std::error_code(c.feed == rs::errc{} ? std::error_code() : make_error_code(c.feed)));
        CHECK(r.finish_error == make_error_code(c.finish));
        same_at_every_split(c.body, "b");
    }

    SECTION("\"--b\" not at a line's start is preamble, not a delimiter") {
        const parse_result r =
            parse("x--b\r\n" + ok_head + "d\r\n--b\r\n" + ok_head + "e\r\n--b--", "b");
        CHECK(!r.finish_error);
        CHECK(r.log == "[a|-|]e<end>");
        const parse_result none = parse("x--b\r\n" + ok_head + "d\r\n--b--", "b");
        CHECK(!none.finish_error);  // a body of no part: its first delimiter is the last
        CHECK(none.parts == 0);
    }
    SECTION("a part's data is what came before the error") {
        const parse_result r = parse("--b\r\n" + ok_head + "data\r\n--b\r\n" + ok_head + "more", "b");
        CHECK(r.log == "[a|-|]data<end>[a|-|]more");  // no <end>: the last part was cut short
    }
    SECTION("a handler that returns false stops the parse: errc::canceled, no handler called again") {
        const std::string body = field_part("b", "x", "1") + field_part("b", "y", "2") + "--b--";
        const parse_result r = parse(body, "b", {}, {}, 1);
        CHECK(r.feed_error == rs::errc::canceled);
        CHECK(r.finish_error == rs::errc::canceled);
        CHECK(r.log == "[x|-|]1<end>[y|-|]");
    }
    SECTION("an empty boundary") {
        rs::multipart_parser p("", {}, {});
        CHECK(p.feed("--\r\n") == rs::errc::invalid_boundary);
        CHECK(p.finish() == rs::errc::invalid_boundary);
    }
}

TEST_CASE("multipart: limits on parts and on a part's head, at and past their bounds", "[forms][multipart]") {
    std::string body;
    for (int i = 0; i < 5; ++i) body += field_part("b", "f" + std::to_string(i), "v");
    body += "--b--\r\n";
    rs::multipart_limits limits;
    limits.max_parts = 5;
    CHECK(!parse(body, "b", {}, limits).finish_error);
    limits.max_parts = 4;
    parse_result r = parse(body, "b", {}, limits);
    CHECK(r.feed_error == rs::errc::too_many_parts);
    CHECK(r.parts == 4);
    same_at_every_split(body, "b", limits);
    limits.max_parts = 0;  // the default, 1000
    std::string many;
    for (int i = 0; i < 1001; ++i) many += field_part("b", "f", "");
    CHECK(parse(many + "--b--", "b", {}, limits).feed_error == rs::errc::too_many_parts);
    many.erase(0, field_part("b", "f", "").size());
    CHECK(!parse(many + "--b--", "b", {}, limits).finish_error);

    // A head of exactly max_part_header_bytes (its fields and the empty line) passes.
    const std::string head = "Content-Disposition: form-data; name=\"a\"\r\nX-Pad: " + std::string(100, 'p') + "\r\n\r\n";
    const std::string one = "--b\r\n" + head + "v\r\n--b--";
    limits = {};
    limits.max_part_header_bytes = head.size();
    CHECK(!parse(one, "b", {}, limits).finish_error);
    same_at_every_split(one, "b", limits);
    limits.max_part_header_bytes = head.size() - 1;
    CHECK(parse(one, "b", {}, limits).feed_error == rs::errc::part_header_too_large);
    same_at_every_split(one, "b", limits);
    // A head that never ends fails once it passes the limit, not at the end of the body.
    limits.max_part_header_bytes = 1000;
    rs::multipart_parser p("b", {}, {}, limits);
    CHECK(!p.feed("--b\r\nX: "));
    std::error_code ec;
    std::size_t fed = 0;
    while (!ec && fed < 100000) {
        ec = p.feed(std::string(100, 'x'));
        fed += 100;
    }
    CHECK(ec == rs::errc::part_header_too_large);
    CHECK(fed <= 1100);
}

TEST_CASE("multipart: a large part goes through in pieces, never held whole; throughput", "[forms][multipart]") {
    const std::string data = random_bytes(4 << 20, 7);
    const std::string body = "preamble\r\n--xyz\r\nContent-Disposition: form-data; name=\"f\"; filename=\"r.bin\"\r\n\r\n" +
                             data + "\r\n--xyz--\r\n";
    std::string got;
    std::size_t largest_piece = 0, pieces = 0;
    rs::multipart_parser p(
        "xyz", [](const rs::form_part& part) { return part.filename == "r.bin"; },
        [&](const rs::form_part&, std::string_view d) {
            got += d;
            largest_piece = std::max(largest_piece, d.size());
            ++pieces;
            return true;
        });
    const std::size_t feed_size = 65536;
    for (std::size_t at = 0; at < body.size(); at += feed_size) REQUIRE(!p.feed(std::string_view(body).substr(at, feed_size)));
    REQUIRE(!p.finish());
    CHECK(got == data);
    CHECK(largest_piece <= feed_size);
    CHECK(pieces >= data.size() / feed_size);

    // Throughput: 64 MiB of data in 64 KiB pieces (printed, not checked).
    const std::string big = "--xyz\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\n" + random_bytes(64 << 20, 9) +
                            "\r\n--xyz--\r\n";
    std::size_t seen = 0;
    rs::multipart_parser q("xyz", {}, [&](const rs::form_part&, std::string_view d) {
        seen += d.size();
        return true;
    });
    const auto t0 = steady::now();
    for (std::size_t at = 0; at < big.size(); at += feed_size) REQUIRE(!q.feed(std::string_view(big).substr(at, feed_size)));
    REQUIRE(!q.finish());
    const double s = std::chrono::duration<double>(steady::now() - t0).count();
    CHECK(seen == (64u << 20));
    std::printf("multipart_parser: 64 MiB in 64 KiB pieces: %.0f MB/s\n", 64.0 * 1048576 / 1e6 / s);
}

TEST_CASE("multipart fuzz target: the seed corpus replays cleanly", "[forms][fuzz]") {
    const std::vector<std::string> files = test::files_in(RS_SOURCE_DIR "/tests/fuzz/corpus_multipart");
    REQUIRE(files.size() >= 10);  // the corpus is there (a missing one must fail)
    for (const std::string& path : files) {
        INFO("input: " << path);
        const std::string bytes = test::read_file(path);
        std::unique_ptr<std::uint8_t[]> data(new std::uint8_t[bytes.empty() ? 1 : bytes.size()]);
        std::copy(bytes.begin(), bytes.end(), data.get());
        int rc = -1;
        REQUIRE_NOTHROW(rc = LLVMFuzzerTestOneInput(data.get(), bytes.size()));
        CHECK(rc == 0);
    }
}

// ----------------------------------------------------------------- boundary --

TEST_CASE("multipart_boundary: quoted or token, 1 to 70 bchars, only multipart/form-data", "[forms][boundary]") {
    std::string b;
    CHECK(!rs::multipart_boundary("multipart/form-data; boundary=abc", b));
    CHECK(b == "abc");
    CHECK(!rs::multipart_boundary("Multipart/Form-Data ;charset=utf-8; BOUNDARY=\"a'()+_,-./:=? z\"", b));
    CHECK(b == "a'()+_,-./:=? z");
    CHECK(!rs::multipart_boundary("multipart/form-data; boundary===============123==", b));
    CHECK(b == "==============123==");
    CHECK(!rs::multipart_boundary("multipart/form-data; boundary=" + std::string(70, 'x'), b));
    CHECK(b.size() == 70);

    CHECK(rs::multipart_boundary("multipart/form-data; boundary=" + std::string(71, 'x'), b) == rs::errc::invalid_boundary);
    CHECK(b.empty());
    CHECK(rs::multipart_boundary("multipart/form-data", b) == rs::errc::invalid_boundary);
    CHECK(rs::multipart_boundary("multipart/form-data; charset=x", b) == rs::errc::invalid_boundary);
    CHECK(rs::multipart_boundary("multipart/form-data; boundary=", b) == rs::errc::invalid_boundary);
    CHECK(rs::multipart_boundary("multipart/form-data; boundary=\"\"", b) == rs::errc::invalid_boundary);
    CHECK(rs::multipart_boundary("multipart/form-data; boundary=\"ends \"", b) == rs::errc::invalid_boundary);
    CHECK(rs::multipart_boundary("multipart/form-data; boundary=a@b", b) == rs::errc::invalid_boundary);
    CHECK(rs::multipart_boundary("multipart/form-data; boundary=a; boundary=b", b) == rs::errc::invalid_boundary);
    CHECK(rs::multipart_boundary("multipart/form-data; boundary=\"abc", b) == rs::errc::invalid_boundary);
    CHECK(rs::multipart_boundary("multipart/form-data boundary=abc", b) == rs::errc::wrong_content_type);
    CHECK(rs::multipart_boundary("multipart/mixed; boundary=abc", b) == rs::errc::wrong_content_type);
    CHECK(rs::multipart_boundary("", b) == rs::errc::wrong_content_type);
}

// --------------------------------------------------------------- urlencoded --

TEST_CASE("parse_form: fields decoded, '+' a space, bad escapes and limits are errors", "[forms][urlencoded]") {
    rs::form_fields f;
    REQUIRE(!rs::parse_form("a=1&b=x+y%21&c&&=e&a=2&%41%2b=%e2%82%AC&", f));
    const rs::form_fields want = {{"a", "1"}, {"b", "x y!"}, {"c", ""}, {"", "e"}, {"a", "2"}, {"A+", "\xe2\x82\xac"}};
    CHECK(f == want);
    CHECK(rs::form_value(f, "a") == std::optional<std::string_view>("1"));
    CHECK(rs::form_value(f, "A+") == std::optional<std::string_view>("\xe2\x82\xac"));
    CHECK(rs::form_value(f, "c") == std::optional<std::string_view>(""));
    CHECK(!rs::form_value(f, "B"));
    REQUIRE(!rs::parse_form("", f));
    CHECK(f.empty());

    for (const char* bad : {"a=%", "a=%4", "a=%zz", "%G1=x", "a=1&b=%4g", "a=100%"}) {
        INFO(bad);
        f = {{"left", "over"}};
        CHECK(rs::parse_form(bad, f) == rs::errc::malformed_form);
        CHECK(f.empty());
    }

    rs::form_limits limits;
    limits.max_fields = 3;
    CHECK(!rs::parse_form("a=1&b=2&c=3", f, limits));
    CHECK(rs::parse_form("a=1&b=2&c=3&d=4", f, limits) == rs::errc::form_too_large);
    CHECK(f.empty());
    limits = {};
    limits.max_bytes = 11;
    CHECK(!rs::parse_form("a=1&b=2&c=3", f, limits));
    CHECK(rs::parse_form("a=1&b=2&c=33", f, limits) == rs::errc::form_too_large);
    limits.max_bytes = 0;  // the default, 1 MiB
    CHECK(!rs::parse_form("a=" + std::string(1024 * 1024 - 2, 'x'), f, limits));
    CHECK(rs::parse_form("a=" + std::string(1024 * 1024 - 1, 'x'), f, limits) == rs::errc::form_too_large);
}

TEST_CASE("error_status: the status that answers each error", "[forms]") {
    CHECK(rs::error_status(rs::errc::body_too_large) == 413);
    CHECK(rs::error_status(rs::errc::too_many_parts) == 413);
    CHECK(rs::error_status(rs::errc::part_header_too_large) == 413);
    CHECK(rs::error_status(rs::errc::form_too_large) == 413);
    CHECK(rs::error_status(rs::errc::wrong_content_type) == 415);
    CHECK(rs::error_status(make_error_code(std::errc::timed_out)) == 408);
    for (rs::errc e : {rs::errc::malformed_body, rs::errc::body_incomplete, rs::errc::invalid_boundary,
                       rs::errc::malformed_multipart, rs::errc::multipart_incomplete, rs::errc::malformed_form,
                       rs::errc::canceled})
        CHECK(rs::error_status(e) == 400);
    CHECK(rs::error_status(rs::errc::already_running) == 500);
    CHECK(rs::error_status(make_error_code(std::errc::no_such_file_or_directory)) == 500);
    CHECK(rs::make_error_code(rs::errc::multipart_incomplete).message() ==
          "the multipart body ended before its final delimiter");
}

// ------------------------------------------------------------------- server --

namespace {

/// forms_server: a server with /multipart (streamed: one line per part "name filename
/// bytes"; the largest VmRSS seen while parts arrived is kept), /multipart-buffered (the
/// same on a buffered route) and /form (read_form: "name=value" lines).
struct forms_server {
    rs::server srv{test::local_options(8)};
    std::atomic<long> max_rss_kib{0};
    std::uint16_t port = 0;

    forms_server() {
        auto multipart = [this](const rs::request& req, rs::response& res) {
            std::string out;
            std::size_t bytes = 0, since_sample = 0;
            const std::error_code ec = rs::read_multipart(
                req, [&](const rs::form_part&) { return bytes = 0, true; },
                [&](const rs::form_part& part, std::string_view data) {
                    bytes += data.size();
                    since_sample += data.size();
                    if (since_sample >= 256 * 1024) {  // the RSS now and then, as the data flows
                        since_sample = 0;
                        const long rss = vm_kib("VmRSS");
                        long seen = max_rss_kib.load();
                        while (rss > seen && !max_rss_kib.compare_exchange_weak(seen, rss)) {
                        }
                    }
                    if (data.empty())
                        out += part.name + " " + (part.has_filename ? part.filename : "-") + " " + std::to_string(bytes) +
                               " " + (part.content_type.empty() ? "-" : part.content_type) + "\n";
                    return true;
                });
            if (ec) {
                res.status = rs::error_status(ec);
                res.set_content(ec.message(), "text/plain");
                return;
            }
            res.set_content(out, "text/plain");
        };
        srv.post("/multipart", multipart, rs::body_mode::streamed);
        srv.post("/multipart-buffered", multipart);
        auto form = [](const rs::request& req, rs::response& res) {
            rs::form_fields fields;
            rs::form_limits limits;
            limits.max_bytes = 4096;
            if (const std::error_code ec = rs::read_form(req, fields, limits)) {
                res.status = rs::error_status(ec);
                res.set_content(ec.message(), "text/plain");
                return;
            }
            std::string out;
            for (const auto& [name, value] : fields) out += name + "=" + value + "\n";
            res.set_content(out, "text/plain");
        };
        srv.post("/form", form, rs::body_mode::streamed);
        srv.post("/form-buffered", form);
        port = test::start(srv);
    }
};

std::string post(const std::string& path, const std::string& type, const std::string& body) {
    return "POST " + path + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: " + type +
           "\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}

}  // namespace

TEST_CASE("read_multipart, read_form on routes: answers, errors and their statuses", "[forms][server]") {
    forms_server s;
    const std::string body = field_part("bb", "a", "hello") +
                             "--bb\r\nContent-Disposition: form-data; name=\"f\"; filename=\"x.bin\"\r\n"
                             "Content-Type: image/png\r\n\r\n" + std::string(100000, 'z') + "\r\n--bb--\r\n";
    for (const char* path : {"/multipart", "/multipart-buffered"}) {
        INFO(path);
        test::http_response r = test::request(s.port, post(path, "multipart/form-data; boundary=bb", body));
        CHECK(r.status == 200);
        CHECK(r.body == "a - 5 -\nf x.bin 100000 image/png\n");

        // Chunked, in small chunks: the delimiters fall across chunks.
        std::string chunked = "POST " + std::string(path) +
                              " HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n"
                              "Content-Type: multipart/form-data; boundary=bb\r\n\r\n";
        for (std::size_t at = 0; at < body.size(); at += 7) {
            const std::string piece = body.substr(at, 7);
            char size[16];
            std::snprintf(size, sizeof size, "%zx\r\n", piece.size());
            chunked += size + piece + "\r\n";
        }
        chunked += "0\r\n\r\n";
        r = test::request(s.port, chunked);
        CHECK(r.status == 200);
        CHECK(r.body == "a - 5 -\nf x.bin 100000 image/png\n");

        r = test::request(s.port, post(path, "text/plain", body));
        CHECK(r.status == 415);
        r = test::request(s.port, post(path, "multipart/form-data", body));
        CHECK(r.status == 400);
        CHECK(r.body == "the multipart Content-Type has no valid boundary parameter");
        r = test::request(s.port, post(path, "multipart/form-data; boundary=bb", body.substr(0, body.size() - 8)));
        CHECK(r.status == 400);
        CHECK(r.body == "the multipart body ended before its final delimiter");
        r = test::request(s.port, post(path, "multipart/form-data; boundary=bb", "--bb\r\nX: y\r\n\r\n\r\n--bb--"));
        CHECK(r.status == 400);
        CHECK(r.body == "the multipart body is malformed");
        std::string many;
        for (int i = 0; i < 1001; ++i) many += field_part("bb", "x", "");
        r = test::request(s.port, post(path, "multipart/form-data; boundary=bb", many + "--bb--"));
        CHECK(r.status == 413);
        r = test::request(s.port, post(path, "multipart/form-data; boundary=bb",
                                       "--bb\r\nX: " + std::string(20000, 'h') + "\r\n\r\n--bb--"));
        CHECK(r.status == 413);
    }

    SECTION("a connection whose multipart body was read whole stays open; one cut short closes") {
        test::client c(s.port);
        const std::string keep = "POST /multipart HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=bb"
                                 "\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
        REQUIRE(c.send(keep + keep));
        CHECK(c.read().status == 200);
        CHECK(c.read().status == 200);
        const std::string bad = "--bb\r\n\r\n" + std::string(1000, 'x');
        REQUIRE(c.send("POST /multipart HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=bb\r\n"
                       "Content-Length: 5000\r\n\r\n" + bad));
        test::http_response r = c.read();
        CHECK(r.status == 400);
        CHECK(r.header("Connection") == "close");
    }

    for (const char* path : {"/form", "/form-buffered"}) {
        INFO(path);
        test::http_response r =
            test::request(s.port, post(path, "application/x-www-form-urlencoded; charset=UTF-8", "a=1&b=x+y%26"));
        CHECK(r.status == 200);
        CHECK(r.body == "a=1\nb=x y&\n");
        r = test::request(s.port, post(path, "application/x-www-form-urlencoded", "a=%zz"));
        CHECK(r.status == 400);
        r = test::request(s.port, post(path, "application/x-www-form-urlencoded", "a=" + std::string(5000, 'x')));
        CHECK(r.status == 413);
        r = test::request(s.port, post(path, "text/plain", "a=1"));
        CHECK(r.status == 415);
    }
}

TEST_CASE("curl -F: several parts and a 20 MiB file, streamed: the server's RSS does not grow with it",
          "[forms][server][curl]") {
    if (!test::have_command("curl")) RS_SKIP("curl not installed");
    temp_dir dir;
    const std::string big = dir.write("big.bin", random_bytes(20 << 20, 1));
    const std::string small = dir.write("small.txt", "small file\n");
    forms_server s;
    const long before = vm_kib("VmRSS");
    s.max_rss_kib = before;
    const command_result r =
        run_bounded({"curl", "-sS", "--max-time", "60", "-F", "title=a title", "-F", "big=@" + big, "-F",
                     "small=@" + small + ";type=text/plain", "-F", "empty=", "http://127.0.0.1:" + std::to_string(s.port) +
                     "/multipart"});
    INFO("curl: " << test::describe_status(r.status) << "\n" << r.out);
    REQUIRE(test::exited_0(r.status));
    CHECK(r.out == "title - 7 -\nbig big.bin 20971520 application/octet-stream\nsmall small.txt 11 text/plain\nempty - 0 -\n");
    const long growth = s.max_rss_kib.load() - before;
    std::printf("20 MiB multipart upload (curl -F): server VmRSS %ld KiB before, growth %ld KiB at most while it flowed\n",
                before, growth);
    CHECK(growth < 4 * 1024);  // a 64 KiB read buffer per thread, not the 20 MiB body
}

TEST_CASE("Python urllib (urlencoded) and http.client (multipart) against read_form and read_multipart",
          "[forms][server][python]") {
    if (!test::have_command("python3")) RS_SKIP("python3 not installed");
    forms_server s;
    const std::string script = R"PY(
import sys, urllib.request, urllib.parse, http.client
port = int(sys.argv[1])
data = urllib.parse.urlencode([("name", "Jörg & Co"), ("q", "a+b=c"), ("empty", ""), ("name", "2")]).encode()
with urllib.request.urlopen(urllib.request.Request("http://127.0.0.1:%d/form" % port, data=data), timeout=20) as r:
    sys.stdout.write(r.read().decode("utf-8"))
b = "py-boundary-123"
body = ("--%s\r\nContent-Disposition: form-data; name=\"text\"\r\n\r\nhello\r\n" % b).encode()
body += ("--%s\r\nContent-Disposition: form-data; name=\"file\"; filename=\"d.bin\"\r\nContent-Type: application/x-raw\r\n\r\n" % b).encode()
body += bytes(range(256)) * 1000 + ("\r\n--%s--\r\n" % b).encode()
c = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
c.request("POST", "/multipart", body=body, headers={"Content-Type": "multipart/form-data; boundary=\"%s\"" % b})
r = c.getresponse()
sys.stdout.write("%d\n%s" % (r.status, r.read().decode()))
)PY";
    temp_dir dir;
    const std::string file = dir.write("client.py", script);
    const command_result r = run_bounded({"python3", file, std::to_string(s.port)});
    INFO(test::describe_status(r.status) << "\n" << r.out);
    REQUIRE(test::exited_0(r.status));
    CHECK(r.out == "name=Jörg & Co\nq=a+b=c\nempty=\nname=2\n200\ntext - 5 -\nfile d.bin 256000 application/x-raw\n");
}

TEST_CASE("several clients uploading at once to one server", "[forms][server][curl]") {
    if (!test::have_command("curl")) RS_SKIP("curl not installed");
    temp_dir dir;
    forms_server s;
    constexpr int clients = 6;
    std::vector<std::unique_ptr<test::process>> procs;
    for (int i = 0; i < clients; ++i) {
        const std::string f = dir.write("f" + std::to_string(i), random_bytes((2u << 20) + static_cast<unsigned>(i), i + 10u));
        procs.push_back(std::make_unique<test::process>(std::vector<std::string>{
            "curl", "-sS", "--max-time", "60", "-F", "n=" + std::to_string(i), "-F", "file=@" + f,
            "http://127.0.0.1:" + std::to_string(s.port) + "/multipart"}));
    }
    for (int i = 0; i < clients; ++i) {
        std::optional<std::string> out = procs[i]->read_all(60s);
        INFO("client " << i);
        REQUIRE(out);
        CHECK(test::exited_0(procs[i]->wait_exit(10s)));
        CHECK(*out == "n - 1 -\nfile f" + std::to_string(i) + " " + std::to_string((2u << 20) + static_cast<unsigned>(i)) +
                          " application/octet-stream\n");
    }
}

// --------------------------------------------------------------- echo_server --

TEST_CASE("echo_server POST /upload: NAME FILENAME BYTES SHA256HEX per part, checked with sha256sum",
          "[forms][echo_server]") {
    if (!test::have_command("curl") || !test::have_command("sha256sum")) RS_SKIP("curl or sha256sum not installed");
    test::process proc({RS_ECHO_SERVER, "--host", "127.0.0.1", "--port", "0", "--workers", "4"});
    REQUIRE(proc.started());
    const std::uint16_t port = test::listening_port(proc.read_line(10s));
    REQUIRE(port != 0);
    const std::string url = "http://127.0.0.1:" + std::to_string(port) + "/upload";
    temp_dir dir;

    SECTION("the FIPS 180-4 vectors and every length 0..130 (the padding's edges), one part each") {
        std::vector<std::pair<std::string, std::string>> vectors = {
            {"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
            {"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
            {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
             "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
            {std::string(1000000, 'a'), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"},
        };
        std::string body;
        std::string want;
        for (std::size_t i = 0; i < vectors.size(); ++i) {
            body += field_part("vv", "v" + std::to_string(i), vectors[i].first);
            want += "v" + std::to_string(i) + " - " + std::to_string(vectors[i].first.size()) + " " + vectors[i].second + "\n";
        }
        const std::string all = random_bytes(131, 3);
        for (std::size_t n = 0; n <= 130; ++n) {
            const std::string name = "len" + std::to_string(n);
            const std::string file = dir.write(name, all.substr(0, n));
            body += "--vv\r\nContent-Disposition: form-data; name=\"" + name + "\"; filename=\"" + name + ".bin\"\r\n\r\n" +
                    all.substr(0, n) + "\r\n";
            want += name + " " + name + ".bin " + std::to_string(n) + " " + sha256sum(file) + "\n";
        }
        body += "--vv--\r\n";
        test::http_response r = test::request(port, post("/upload", "multipart/form-data; boundary=vv", body));
        CHECK(r.status == 200);
        CHECK(r.header("Content-Type") == "text/plain");
        CHECK(r.body == want);
    }

    SECTION("curl -F with files of 0 B, 1 B, 1 MiB + 1 and 20 MiB and a plain field") {
        std::vector<std::string> args = {"curl", "-sS", "--max-time", "60", "-F", "note=hi there"};
        std::string want = "note - 8 " + sha256sum(dir.write("note", "hi there")) + "\n";
        const std::vector<std::pair<std::string, std::size_t>> files = {
            {"zero.bin", 0}, {"one.bin", 1}, {"mib.bin", (1u << 20) + 1}, {"big.bin", 20u << 20}};
        for (std::size_t i = 0; i < files.size(); ++i) {
            const std::string path = dir.write(files[i].first, random_bytes(files[i].second, 100 + static_cast<unsigned>(i)));
            args.push_back("-F");
            args.push_back("f" + std::to_string(i) + "=@" + path);
            want += "f" + std::to_string(i) + " " + files[i].first + " " + std::to_string(files[i].second) + " " +
                    sha256sum(path) + "\n";
        }
        args.push_back(url);
        const command_result r = run_bounded(args);
        INFO(test::describe_status(r.status));
        REQUIRE(test::exited_0(r.status));
        CHECK(r.out == want);
    }

    SECTION("a malformed body gets its error status and message") {
        const command_result r = run_bounded({"curl", "-sS", "--max-time", "20", "-w", "|%{http_code}", "-H",
                                              "Content-Type: multipart/form-data; boundary=zz", "--data-binary",
                                              "--zz\r\nContent-Disposition: form-data; name=a\r\n\r\ncut", url});
        CHECK(r.out == "the multipart body ended before its final delimiter\n|400");
        const command_result t = run_bounded({"curl", "-sS", "--max-time", "20", "-w", "|%{http_code}", "-d", "a=1", url});
        CHECK(t.out == "the request's Content-Type is not the one expected\n|415");
    }
    CHECK(proc.signal(SIGTERM));
    CHECK(test::exited_0(proc.wait_exit(10s)));
}
