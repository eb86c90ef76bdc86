// detail::parse_request, tested in the picohttpparser manner: each valid request is fed
// whole and as every strict prefix; each malformed one must give the right error status.
// Every input lives in a heap buffer of exactly its size, so a sanitizer catches a parser
// that reads one byte too far.
#include "support.hpp"

#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace rs = restartable_server;

namespace {

using test::heap_buf;
using test::inside;
using test::printable;
using test::status_name;

using rs::detail::parse_result;
using rs::detail::parse_status;

using rs::detail::parse_limits;

/// limits: a parse_limits with the given sizes.
parse_limits limits(std::size_t max_request_line, std::size_t max_header_bytes, std::size_t max_headers) {
    parse_limits l;
    l.max_request_line = max_request_line;
    l.max_header_bytes = max_header_bytes;
    l.max_headers = max_headers;
    return l;
}

/// roomy: limits no valid case of this file comes near.
const parse_limits roomy = limits(32 * 1024, 64 * 1024, 100);

/// parsed: a parse_result that also keeps the parsed buffer alive (out's views point into it).
struct parsed : parse_result {
    std::shared_ptr<heap_buf> buf;
};

parsed parse(std::string_view input, rs::request& out, const parse_limits& l = roomy) {
    parsed p;
    p.buf = std::make_shared<heap_buf>(input);
    static_cast<parse_result&>(p) = rs::detail::parse_request(p.buf->view(), out, l);
    return p;
}

struct valid_case {
    const char* name;
    std::string head;      // the request head, ending in the empty line
    std::string trailing;  // bytes after the head (a body, the next request); not part of it
    std::string method, target, path, query;
    int version_minor;
    std::vector<std::pair<std::string, std::string>> headers;
};

std::vector<valid_case> valid_cases() {
    using namespace std::string_literals;
    return {
        {"minimal", "GET / HTTP/1.1\r\n\r\n", "", "GET", "/", "/", "", 1, {}},
        {"one header", "GET /index.html HTTP/1.1\r\nHost: example.com\r\n\r\n", "", "GET", "/index.html",
         "/index.html", "", 1, {{"Host", "example.com"}}},
        {"HTTP/1.0", "GET /old HTTP/1.0\r\nUser-Agent: legacy/1.0\r\n\r\n", "", "GET", "/old", "/old", "", 0,
         {{"User-Agent", "legacy/1.0"}}},
        {"query string", "GET /search?q=a%20b&x=1+2 HTTP/1.1\r\nHost: h\r\n\r\n", "", "GET",
         "/search?q=a%20b&x=1+2", "/search", "q=a%20b&x=1+2", 1, {{"Host", "h"}}},
        {"percent-encoded path is not decoded", "GET /a%20b/%2F HTTP/1.1\r\n\r\n", "", "GET", "/a%20b/%2F",
         "/a%20b/%2F", "", 1, {}},
        {"empty query after '?'", "GET /x? HTTP/1.1\r\n\r\n", "", "GET", "/x?", "/x", "", 1, {}},
        {"second '?' belongs to the query", "GET /x?a=?b HTTP/1.1\r\n\r\n", "", "GET", "/x?a=?b", "/x", "a=?b",
         1, {}},
        {"OWS trimmed around values",
         "GET / HTTP/1.1\r\nHost:   example.com  \r\nX-Tab:\tv1\t\r\nX-Mixed: \t a b \t \r\nX-None:nospace\r\n\r\n",
         "", "GET", "/", "/", "", 1,
         {{"Host", "example.com"}, {"X-Tab", "v1"}, {"X-Mixed", "a b"}, {"X-None", "nospace"}}},
        {"empty values", "GET / HTTP/1.1\r\nX-Empty:\r\nX-Blank:   \t \r\nHost: h\r\n\r\n", "", "GET", "/", "/",
         "", 1, {{"X-Empty", ""}, {"X-Blank", ""}, {"Host", "h"}}},
        {"arrival order and duplicates kept",
         "GET / HTTP/1.1\r\nAccept: a\r\nCookie: one=1\r\naccept: b\r\nCookie: two=2\r\n\r\n", "", "GET", "/",
         "/", "", 1, {{"Accept", "a"}, {"Cookie", "one=1"}, {"accept", "b"}, {"Cookie", "two=2"}}},
        {"inner spaces and colons in values",
         "GET / HTTP/1.1\r\nHost: localhost:8080\r\nUser-Agent: curl/8.0 (x86_64-pc-linux-gnu)  libcurl\r\n\r\n",
         "", "GET", "/", "/", "", 1,
         {{"Host", "localhost:8080"}, {"User-Agent", "curl/8.0 (x86_64-pc-linux-gnu)  libcurl"}}},
        {"token characters in names", "GET / HTTP/1.1\r\nX-Custom_Header.1!#$%&'*+^`|~: v\r\n\r\n", "", "GET",
         "/", "/", "", 1, {{"X-Custom_Header.1!#$%&'*+^`|~", "v"}}},
        {"obs-text in a value", "GET / HTTP/1.1\r\nX-Name: caf\xc3\xa9\r\n\r\n", "", "GET", "/", "/", "", 1,
         {{"X-Name", "caf\xc3\xa9"}}},
        {"POST with a body after the head",
         "POST /submit HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\nContent-Type: text/plain\r\n\r\n",
         "hello world", "POST", "/submit", "/submit", "", 1,
         {{"Host", "h"}, {"Content-Length", "11"}, {"Content-Type", "text/plain"}}},
        {"body that looks like a head", "PUT /r HTTP/1.1\r\nContent-Length: 24\r\n\r\n",
         "GET / HTTP/1.1\r\nX: y\r\n\r\n", "PUT", "/r", "/r", "", 1, {{"Content-Length", "24"}}},
        {"other methods", "DELETE /items/7 HTTP/1.1\r\n\r\n", "", "DELETE", "/items/7", "/items/7", "", 1, {}},
        {"extension method with '-'", "M-SEARCH /upnp HTTP/1.1\r\nMAN: \"ssdp:discover\"\r\n\r\n", "",
         "M-SEARCH", "/upnp", "/upnp", "", 1, {{"MAN", "\"ssdp:discover\""}}},
        {"asterisk-form", "OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", "", "OPTIONS", "*", "*", "", 1,
         {{"Host", "h"}}},
        // absolute-form (RFC 9112 3.2.2): the path and query come from the part after the
        // authority; the target stays as sent.
        {"absolute-form", "GET http://example.com:8080/a/b?x=1 HTTP/1.1\r\nHost: example.com\r\n\r\n", "",
         "GET", "http://example.com:8080/a/b?x=1", "/a/b", "x=1", 1, {{"Host", "example.com"}}},
        {"long target", "GET /" + std::string(2000, 'a') + "?" + std::string(500, 'b') + " HTTP/1.1\r\n\r\n", "",
         "GET", "/" + std::string(2000, 'a') + "?" + std::string(500, 'b'), "/" + std::string(2000, 'a'),
         std::string(500, 'b'), 1, {}},
        // Host and Connection are not the parser's business: any field value passes here.
        {"Host with an IPv6 literal and port", "GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n", "", "GET", "/", "/", "",
         1, {{"Host", "[::1]:8080"}}},
        {"Connection over two field lines", "GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n",
         "", "GET", "/", "/", "", 1, {{"Host", "h"}, {"Connection", "keep-alive"}, {"Connection", "close"}}},
        {"HEAD", "HEAD /h HTTP/1.1\r\nHost: h\r\n\r\n", "", "HEAD", "/h", "/h", "", 1, {{"Host", "h"}}},
        {"many headers", [] {
             std::string h = "GET /m HTTP/1.1\r\n";
             for (int i = 0; i < 50; ++i) h += "X-H" + std::to_string(i) + ": v" + std::to_string(i) + "\r\n";
             return h + "\r\n";
         }(),
         "", "GET", "/m", "/m", "", 1, [] {
             std::vector<std::pair<std::string, std::string>> v;
             for (int i = 0; i < 50; ++i) v.emplace_back("X-H" + std::to_string(i), "v" + std::to_string(i));
             return v;
         }()},
    };
}

void check_fields(const valid_case& c, const rs::request& req, std::string_view buf) {
    CHECK(req.method == c.method);
    CHECK(req.target == c.target);
    CHECK(req.path == c.path);
    CHECK(req.query == c.query);
    CHECK(req.version_minor == c.version_minor);
    REQUIRE(req.headers.size() == c.headers.size());
    for (std::size_t i = 0; i < c.headers.size(); ++i) {
        INFO("header #" << i);
        CHECK(std::string(req.headers[i].name) == c.headers[i].first);
        CHECK(printable(req.headers[i].value) == printable(c.headers[i].second));
        CHECK(inside(req.headers[i].name, buf));
        CHECK(inside(req.headers[i].value, buf));
    }
    // The views point into the parsed buffer, not into copies.
    CHECK(inside(req.method, buf));
    CHECK(inside(req.target, buf));
    CHECK(inside(req.path, buf));
    CHECK(inside(req.query, buf));
}

}  // namespace

TEST_CASE("parse_request: valid requests, whole and every strict prefix", "[parser]") {
    for (const valid_case& c : valid_cases()) {
        DYNAMIC_SECTION(c.name) {
            INFO("input: " << printable(c.head + c.trailing));
            // Whole (with whatever follows the head).
            {
                const std::string whole = c.head + c.trailing;
                heap_buf buf(whole);
                rs::request req;
                req.headers.push_back({"Stale", "left over"});  // must be cleared
                req.version_minor = 7;
                parse_result r = rs::detail::parse_request(buf.view(), req, roomy);
                REQUIRE(status_name(r.status) == "complete");
                CHECK(r.head_bytes == c.head.size());
                check_fields(c, req, buf.view());
            }
            // Just the head.
            {
                heap_buf buf(c.head);
                rs::request req;
                parse_result r = rs::detail::parse_request(buf.view(), req, roomy);
                REQUIRE(status_name(r.status) == "complete");
                CHECK(r.head_bytes == c.head.size());
                check_fields(c, req, buf.view());
            }
            // Every strict prefix of the head: more bytes needed, no error.
            for (std::size_t k = 0; k < c.head.size(); ++k) {
                heap_buf buf(std::string_view(c.head).substr(0, k));
                rs::request req;
                parse_result r = rs::detail::parse_request(buf.view(), req, roomy);
                if (r.status != parse_status::partial) {
                    INFO("prefix of " << k << " bytes: " << printable(buf.view()));
                    INFO("error_status " << r.error_status << ", head_bytes " << r.head_bytes);
                    REQUIRE(status_name(r.status) == "partial");
                }
            }
        }
    }
}

TEST_CASE("parse_request: a pipelined buffer reports the first head only", "[parser]") {
    const std::string first = "GET /first?a=1 HTTP/1.1\r\nHost: one\r\n\r\n";
    const std::string second = "POST /second HTTP/1.0\r\nHost: two\r\nX-Extra: 3\r\n\r\n";
    rs::request req;
    auto r = parse(first + second, req);
    REQUIRE(status_name(r.status) == "complete");
    CHECK(r.head_bytes == first.size());
    CHECK(req.method == "GET");
    CHECK(req.target == "/first?a=1");
    CHECK(req.path == "/first");
    CHECK(req.query == "a=1");
    CHECK(req.version_minor == 1);
    REQUIRE(req.headers.size() == 1);
    CHECK(req.headers[0].name == "Host");
    CHECK(req.headers[0].value == "one");

    // The rest of the buffer parses on its own once the caller consumes head_bytes.
    rs::request req2;
    auto r2 = parse((first + second).substr(r.head_bytes), req2);
    REQUIRE(status_name(r2.status) == "complete");
    CHECK(r2.head_bytes == second.size());
    CHECK(req2.method == "POST");
    CHECK(req2.version_minor == 0);
    CHECK(req2.headers.size() == 2);

    // The second request incomplete does not matter: the first is complete.
    for (std::size_t k = 0; k <= second.size(); ++k) {
        rs::request req3;
        auto r3 = parse(first + second.substr(0, k), req3);
        INFO("second request cut at " << k);
        REQUIRE(status_name(r3.status) == "complete");
        REQUIRE(r3.head_bytes == first.size());
    }
}

namespace {

struct bad_case {
    const char* name;
    std::string input;
    int status;
};

std::vector<bad_case> bad_cases() {
    using namespace std::string_literals;
    return {
        // Request line.
        {"two spaces after the method", "GET  / HTTP/1.1\r\nHost: h\r\n\r\n", 400},
        {"two spaces before the version", "GET /  HTTP/1.1\r\nHost: h\r\n\r\n", 400},
        {"leading space", " GET / HTTP/1.1\r\nHost: h\r\n\r\n", 400},
        {"tab as separator", "GET\t/ HTTP/1.1\r\nHost: h\r\n\r\n", 400},
        {"missing version", "GET /\r\nHost: h\r\n\r\n", 400},
        {"missing version after a space", "GET / \r\nHost: h\r\n\r\n", 400},
        {"missing target", "GET HTTP/1.1\r\nHost: h\r\n\r\n", 400},
        {"lowercase http", "GET / http/1.1\r\nHost: h\r\n\r\n", 400},
        {"version without minor", "GET / HTTP/1\r\nHost: h\r\n\r\n", 400},
        {"version with junk after it", "GET / HTTP/1.1x\r\nHost: h\r\n\r\n", 400},
        {"not HTTP at all", "GET / FTP/1.1\r\nHost: h\r\n\r\n", 400},
        {"'@' in the method", "G@T / HTTP/1.1\r\nHost: h\r\n\r\n", 400},
        {"'(' in the method", "GE(T / HTTP/1.1\r\nHost: h\r\n\r\n", 400},
        {"'\"' in the method", "GE\"T / HTTP/1.1\r\nHost: h\r\n\r\n", 400},
        {"NUL in the method", "GE\0T / HTTP/1.1\r\nHost: h\r\n\r\n"s, 400},
        {"empty method", " / HTTP/1.1\r\nHost: h\r\n\r\n", 400},
        {"control character in the target", "GET /a\x01z HTTP/1.1\r\nHost: h\r\n\r\n", 400},
        {"NUL in the target", "GET /a\0z HTTP/1.1\r\nHost: h\r\n\r\n"s, 400},
        {"asterisk-form with GET", "GET * HTTP/1.1\r\nHost: h\r\n\r\n", 400},
        {"target not starting with '/'", "GET index.html HTTP/1.1\r\nHost: h\r\n\r\n", 400},
        {"bare CR ends the request line", "GET / HTTP/1.1\rHost: h\r\n\r\n", 400},
        // Header fields.
        {"space before the colon", "GET / HTTP/1.1\r\nHost : h\r\n\r\n", 400},
        {"tab before the colon", "GET / HTTP/1.1\r\nHost\t: h\r\n\r\n", 400},
        {"no colon", "GET / HTTP/1.1\r\nHost: h\r\nNoColonHere\r\n\r\n", 400},
        {"empty name", "GET / HTTP/1.1\r\n: value\r\n\r\n", 400},
        {"'(' in the name", "GET / HTTP/1.1\r\nX(a): b\r\n\r\n", 400},
        {"obs-fold with a space", "GET / HTTP/1.1\r\nX-A: a\r\n b\r\n\r\n", 400},
        {"obs-fold with a tab", "GET / HTTP/1.1\r\nX-A: a\r\n\tb\r\n\r\n", 400},
        {"first field line starts with a space", "GET / HTTP/1.1\r\n Host: h\r\n\r\n", 400},
        {"NUL in a value", "GET / HTTP/1.1\r\nX-A: a\0b\r\n\r\n"s, 400},
        {"bare CR in a value", "GET / HTTP/1.1\r\nX-A: a\rb\r\n\r\n", 400},
        {"other control character in a value", "GET / HTTP/1.1\r\nX-A: a\x01z\r\n\r\n", 400},
        {"DEL in a value", "GET / HTTP/1.1\r\nX-A: a\x7fz\r\n\r\n", 400},
        {"NUL in a name", "GET / HTTP/1.1\r\nX-\0A: b\r\n\r\n"s, 400},
        // Bare LF line endings (documented as rejected).
        {"bare LF everywhere", "GET / HTTP/1.1\nHost: h\n\n", 400},
        {"bare LF after the request line", "GET / HTTP/1.1\nHost: h\r\n\r\n", 400},
        {"bare LF after a field", "GET / HTTP/1.1\r\nHost: h\n\r\n", 400},
        {"bare LF as the empty line", "GET / HTTP/1.1\r\nHost: h\r\n\n", 400},
        {"bare LF as the only empty line", "GET / HTTP/1.1\r\n\n", 400},
        {"CR CR LF", "GET / HTTP/1.1\r\r\n\r\n", 400},
        // Versions.
        {"HTTP/2.0", "GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505},
        {"HTTP/3.0", "GET / HTTP/3.0\r\nHost: h\r\n\r\n", 505},
    };
}

}  // namespace

TEST_CASE("parse_request: malformed requests are errors with the right status", "[parser]") {
    for (const bad_case& c : bad_cases()) {
        DYNAMIC_SECTION(c.name) {
            INFO("input: " << printable(c.input));
            rs::request req;
            auto r = parse(c.input, req);
            REQUIRE(status_name(r.status) == "error");
            CHECK(r.error_status == c.status);
            // No prefix of a malformed request is a complete request.
            for (std::size_t k = 0; k < c.input.size(); ++k) {
                rs::request preq;
                auto pr = parse(std::string_view(c.input).substr(0, k), preq);
                if (pr.status == parse_status::complete) {
                    INFO("prefix of " << k << " bytes");
                    REQUIRE(status_name(pr.status) != "complete");
                }
            }
        }
    }
}

TEST_CASE("parse_request: a malformed line is an error before the head is complete", "[parser]") {
    // Each input ends with a whole malformed line but not with the empty line that would end
    // the head: the parser can already tell, and must not wait for more bytes.
    struct early {
        const char* name;
        std::string input;
        int status;
    };
    const std::vector<early> cases = {
        {"GE T", "GE T / HTTP/1.1\r\n", 400},
        {"two spaces", "GET  / HTTP/1.1\r\n", 400},
        {"lowercase http", "GET / http/1.1\r\nHost: h\r\n", 400},
        {"missing version", "GET /\r\n", 400},
        {"HTTP/2.0", "GET / HTTP/2.0\r\n", 505},
        {"bare LF request line", "GET / HTTP/1.1\nHost: h\n", 400},
        {"space before colon", "GET / HTTP/1.1\r\nHost : h\r\n", 400},
        {"no colon", "GET / HTTP/1.1\r\nHost: h\r\nNoColon\r\n", 400},
        {"obs-fold", "GET / HTTP/1.1\r\nX-A: a\r\n b\r\n", 400},
        {"NUL in value", std::string("GET / HTTP/1.1\r\nX-A: a\0b\r\n", 26), 400},
        {"bare LF after a field", "GET / HTTP/1.1\r\nHost: h\nX-A: b\r\n", 400},
    };
    for (const early& c : cases) {
        DYNAMIC_SECTION(c.name) {
            INFO("input: " << printable(c.input));
            rs::request req;
            auto r = parse(c.input, req);
            REQUIRE(status_name(r.status) == "error");
            CHECK(r.error_status == c.status);
        }
    }
}

namespace {

/// padded_head: a request head of exactly size bytes (request line, one X-Pad field sized
/// to fit, empty line).
std::string padded_head(std::size_t size) {
    const std::string line = "GET /limit HTTP/1.1\r\n";
    const std::string field = "X-Pad: ";
    const std::size_t fixed = line.size() + field.size() + 2 + 2;
    REQUIRE(size > fixed);
    std::string h = line + field + std::string(size - fixed, 'p') + "\r\n\r\n";
    REQUIRE(h.size() == size);
    return h;
}

std::string head_with_fields(std::size_t n) {
    std::string h = "GET /fields HTTP/1.1\r\n";
    for (std::size_t i = 0; i < n; ++i) h += "X-F" + std::to_string(i) + ": " + std::to_string(i) + "\r\n";
    return h + "\r\n";
}

}  // namespace

TEST_CASE("parse_request: max_header_bytes", "[parser][limits]") {
    constexpr std::size_t limit = 512;

    SECTION("a head exactly at the limit passes") {
        const std::string head = padded_head(limit);
        rs::request req;
        auto r = parse(head, req, limits(32 * 1024, limit, 100));
        REQUIRE(status_name(r.status) == "complete");
        CHECK(r.head_bytes == limit);
        REQUIRE(req.headers.size() == 1);
        CHECK(req.headers[0].value == std::string(limit - 32, 'p'));
    }
    SECTION("a head at the limit followed by a body passes: the body does not count") {
        const std::string head = padded_head(limit);
        rs::request req;
        auto r = parse(head + std::string(4096, 'b'), req, limits(32 * 1024, limit, 100));
        REQUIRE(status_name(r.status) == "complete");
        CHECK(r.head_bytes == limit);
    }
    SECTION("one byte over the limit is 431") {
        const std::string head = padded_head(limit + 1);
        rs::request req;
        auto r = parse(head, req, limits(32 * 1024, limit, 100));
        REQUIRE(status_name(r.status) == "error");
        CHECK(r.error_status == 431);
    }
    SECTION("an unfinished head already past the limit is 431, not partial") {
        std::string head = padded_head(limit + 100);
        head.resize(limit + 50);  // no empty line yet
        rs::request req;
        auto r = parse(head, req, limits(32 * 1024, limit, 100));
        REQUIRE(status_name(r.status) == "error");
        CHECK(r.error_status == 431);
    }
    SECTION("a request line past max_header_bytes (within max_request_line) is 431") {
        std::string head = "GET /" + std::string(2 * limit, 'x') + " HTTP/1.1\r\n\r\n";
        rs::request req;
        auto r = parse(head, req, limits(32 * 1024, limit, 100));
        REQUIRE(status_name(r.status) == "error");
        CHECK(r.error_status == 431);
        // and without its end: the parser cannot wait for a line that is already too long
        rs::request req2;
        auto r2 = parse(std::string_view(head).substr(0, limit + 10), req2, limits(32 * 1024, limit, 100));
        REQUIRE(status_name(r2.status) == "error");
        CHECK(r2.error_status == 431);
    }
    SECTION("prefixes of a head within the limit stay partial") {
        const std::string head = padded_head(limit);
        for (std::size_t k = 0; k < head.size(); ++k) {
            rs::request req;
            auto r = parse(std::string_view(head).substr(0, k), req, limits(32 * 1024, limit, 100));
            if (r.status != parse_status::partial) {
                INFO("prefix of " << k << " bytes, error_status " << r.error_status);
                REQUIRE(status_name(r.status) == "partial");
            }
        }
    }
}

TEST_CASE("parse_request: max_headers", "[parser][limits]") {
    SECTION("exactly max_headers fields pass") {
        rs::request req;
        auto r = parse(head_with_fields(3), req, limits(32 * 1024, 64 * 1024, 3));
        REQUIRE(status_name(r.status) == "complete");
        CHECK(req.headers.size() == 3);
        CHECK(req.headers[2].name == "X-F2");
        CHECK(req.headers[2].value == "2");
    }
    SECTION("one more field is 431") {
        rs::request req;
        auto r = parse(head_with_fields(4), req, limits(32 * 1024, 64 * 1024, 3));
        REQUIRE(status_name(r.status) == "error");
        CHECK(r.error_status == 431);
    }
    SECTION("one more field is 431 before the head is complete") {
        std::string head = head_with_fields(4);
        head.resize(head.size() - 2);  // drop the empty line
        rs::request req;
        auto r = parse(head, req, limits(32 * 1024, 64 * 1024, 3));
        REQUIRE(status_name(r.status) == "error");
        CHECK(r.error_status == 431);
    }
    SECTION("the default-sized limit with many fields") {
        rs::request req;
        auto ok = parse(head_with_fields(100), req, limits(32 * 1024, 64 * 1024, 100));
        REQUIRE(status_name(ok.status) == "complete");
        CHECK(req.headers.size() == 100);
        rs::request req2;
        auto over = parse(head_with_fields(101), req2, limits(32 * 1024, 64 * 1024, 100));
        REQUIRE(status_name(over.status) == "error");
        CHECK(over.error_status == 431);
    }
}

TEST_CASE("parse_request: empty input and lone line ends are partial or errors, never complete",
          "[parser]") {
    rs::request req;
    CHECK(status_name(parse("", req).status) == "partial");
    CHECK(status_name(parse("\r", req).status) != "complete");
    CHECK(status_name(parse("\r\n", req).status) != "complete");
    CHECK(status_name(parse("\r\n\r\n", req).status) != "complete");
}

TEST_CASE("parse_request: max_request_line (414)", "[parser][limits]") {
    constexpr std::size_t line_limit = 256;
    const parse_limits l = limits(line_limit, 64 * 1024, 100);
    // line_of: "GET /aaa...a HTTP/1.1" of exactly len bytes (without its CRLF).
    auto line_of = [](std::size_t len) {
        std::string line = "GET /" + std::string(len - 14, 'a') + " HTTP/1.1";
        REQUIRE(line.size() == len);
        return line;
    };

    SECTION("a request line exactly at the limit passes") {
        const std::string head = line_of(line_limit) + "\r\nHost: h\r\n\r\n";
        rs::request req;
        auto r = parse(head, req, l);
        REQUIRE(status_name(r.status) == "complete");
        CHECK(r.head_bytes == head.size());
        CHECK(req.target.size() == line_limit - 13);
        // and each of its prefixes is partial
        for (std::size_t k = 0; k < head.size(); ++k) {
            rs::request preq;
            auto pr = parse(std::string_view(head).substr(0, k), preq, l);
            if (pr.status != parse_status::partial) {
                INFO("prefix of " << k << " bytes, error_status " << pr.error_status);
                REQUIRE(status_name(pr.status) == "partial");
            }
        }
    }
    SECTION("one byte over the limit is 414") {
        rs::request req;
        auto r = parse(line_of(line_limit + 1) + "\r\nHost: h\r\n\r\n", req, l);
        REQUIRE(status_name(r.status) == "error");
        CHECK(r.error_status == 414);
    }
    SECTION("an unfinished request line already past the limit is 414, not partial") {
        const std::string line = line_of(2 * line_limit);
        rs::request req;
        auto r = parse(std::string_view(line).substr(0, line_limit + 40), req, l);
        REQUIRE(status_name(r.status) == "error");
        CHECK(r.error_status == 414);
    }
    SECTION("the limit is on the request line only, not on the fields") {
        const std::string head = "GET / HTTP/1.1\r\nX-Long: " + std::string(4 * line_limit, 'v') + "\r\n\r\n";
        rs::request req;
        auto r = parse(head, req, l);
        REQUIRE(status_name(r.status) == "complete");
        CHECK(r.head_bytes == head.size());
    }
}
