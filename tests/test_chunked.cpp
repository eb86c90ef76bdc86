// detail::chunked_decoder and detail::frame_request, tested in the picohttpparser manner:
// each valid chunked body is decoded fed whole, byte by byte and split at every position
// into two feeds; every strict prefix of it must stay "partial"; each malformed body must
// be an error 400. Every feed lives in a heap buffer of exactly its size, so a sanitizer
// catches a decoder that reads one byte too far. The bytes behind a body (a pipelined next
// request) must never be consumed. At the end, the chunk-size line limit over real sockets.
#include "support.hpp"

#include <cstdint>
#include <cstdio>
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

using rs::detail::chunked_decoder;
using rs::detail::parse_status;
using rs::detail::request_framing;

/// decoded: the outcome of feeding a decoder a sequence of buffers.
struct decoded {
    parse_status status = parse_status::partial;
    int error_status = 0;
    std::string body;            // the data pieces, concatenated
    std::size_t consumed = 0;    // input bytes consumed, over all feeds, up to the end or error
    std::vector<std::string> problems;  // protocol violations of the decoder itself
};

/// feed: runs d over each feed in turn (each copied into an exact-size heap buffer),
/// calling step() until the feed is used up, the body is complete or an error is found.
decoded feed(chunked_decoder& d, const std::vector<std::string_view>& feeds) {
    decoded out;
    for (std::size_t f = 0; f < feeds.size(); ++f) {
        heap_buf buf(feeds[f]);
        std::string_view rest = buf.view();
        while (!rest.empty()) {
            const chunked_decoder::step_result r = d.step(rest);
            if (r.consumed > rest.size()) {
                out.problems.push_back("consumed " + std::to_string(r.consumed) + " of " +
                                       std::to_string(rest.size()) + " bytes");
                out.status = parse_status::error;
                return out;
            }
            if (!inside(r.data, rest.substr(0, r.consumed)))
                out.problems.push_back("a data piece outside the consumed input");
            if (r.status == parse_status::error) {
                out.status = r.status;
                out.error_status = r.error_status;
                return out;
            }
            out.body.append(r.data.data(), r.data.size());
            out.consumed += r.consumed;
            rest.remove_prefix(r.consumed);
            if (r.status == parse_status::complete) {
                out.status = r.status;
                return out;
            }
            if (r.consumed == 0) {
                out.problems.push_back("partial without progress on " + std::to_string(rest.size()) + " bytes");
                return out;
            }
        }
    }
    return out;
}

decoded feed_whole(std::string_view in) {
    chunked_decoder d;
    return feed(d, {in});
}

decoded feed_bytes(std::string_view in) {
    chunked_decoder d;
    std::vector<std::string_view> feeds;
    for (std::size_t i = 0; i < in.size(); ++i) feeds.push_back(in.substr(i, 1));
    return feed(d, feeds);
}

decoded feed_split(std::string_view in, std::size_t at) {
    chunked_decoder d;
    return feed(d, {in.substr(0, at), in.substr(at)});
}

struct valid_case {
    std::string name;
    std::string encoded;  // the chunked body, up to and including the final CRLF
    std::string body;     // what it decodes to
};

std::vector<valid_case> valid_cases() {
    using namespace std::string_literals;
    std::vector<valid_case> v = {
        {"zero-length body", "0\r\n\r\n", ""},
        {"one chunk", "5\r\nhello\r\n0\r\n\r\n", "hello"},
        {"multiple chunks", "5\r\nhello\r\n1\r\n,\r\n6\r\n world\r\n0\r\n\r\n", "hello, world"},
        {"lower-case hex", "a\r\n0123456789\r\n1f\r\n" + std::string(31, 'x') + "\r\n0\r\n\r\n",
         "0123456789" + std::string(31, 'x')},
        {"upper-case hex", "A\r\n0123456789\r\n1F\r\n" + std::string(31, 'y') + "\r\n0\r\n\r\n",
         "0123456789" + std::string(31, 'y')},
        {"mixed-case hex, multi-digit", "aB\r\n" + std::string(0xab, 'z') + "\r\n0\r\n\r\n", std::string(0xab, 'z')},
        {"leading zeros", "00000005\r\nhello\r\n000\r\n\r\n", "hello"},
        {"leading zeros past 16 digits: the value counts", "0000000000000000005\r\nhello\r\n0\r\n\r\n", "hello"},
        {"extension name=value", "5;name=value\r\nhello\r\n0\r\n\r\n", "hello"},
        {"extension with spaces", "5 ; a\r\nhello\r\n0 ; b\r\n\r\n", "hello"},
        {"extension with tab and quoted value", "5\t;a=\"x y\";b\r\nhello\r\n0;last=1\r\n\r\n", "hello"},
        {"several extensions", "3;a=1;b=2;c\r\nabc\r\n0\r\n\r\n", "abc"},
        {"one trailer", "5\r\nhello\r\n0\r\nChecksum: abc\r\n\r\n", "hello"},
        {"several trailers", "5\r\nhello\r\n0\r\nX-A: 1\r\nX-B:two words\r\nX-Empty:\r\n\r\n", "hello"},
        {"trailer after an empty body", "0\r\nX-T: v\r\n\r\n", ""},
        {"binary data with CRLFs and NULs", "9\r\n\0\r\n0\r\n\r\n\xff\r\n0\r\n\r\n"s, "\0\r\n0\r\n\r\n\xff"s},
        {"data that looks like a chunk header", "5\r\n0\r\n\r\n\r\n0\r\n\r\n", "0\r\n\r\n"},
        {"one-byte chunks", "1\r\na\r\n1\r\nb\r\n1\r\nc\r\n0\r\n\r\n", "abc"},
        // A chunk-size line (size, whitespace and extensions, without its CRLF) may be up to
        // 1024 bytes long; these stay well within that.
        {"extension of 900 bytes", "5;" + std::string(900, 'e') + "\r\nhello\r\n0\r\n\r\n", "hello"},
        {"1000 leading zeros", std::string(1000, '0') + "5\r\nhello\r\n0\r\n\r\n", "hello"},
        {"1000 zeros in the last chunk", "5\r\nhello\r\n" + std::string(1000, '0') + "\r\n\r\n", "hello"},
        {"a size line of 1020 bytes", "5;" + std::string(1018, 'e') + "\r\nhello\r\n0\r\n\r\n", "hello"},
        {"zeros, whitespace and an extension: 902 bytes together",
         std::string(300, '0') + "5" + std::string(300, ' ') + ";" + std::string(300, 'e') + "\r\nhello\r\n0\r\n\r\n",
         "hello"},
        {"900-byte size lines on every chunk", [] {
             std::string s;
             for (int i = 0; i < 6; ++i) s += "1;" + std::string(898, 'e') + "\r\nx\r\n";
             return s + "0;" + std::string(898, 'e') + "\r\n\r\n";
         }(),
         "xxxxxx"},
    };
    // A body of several KiB in uneven chunks.
    std::string enc, body;
    for (std::size_t n : {1000u, 4096u, 17u, 2000u}) {
        std::string piece;
        for (std::size_t i = 0; i < n; ++i) piece += static_cast<char>('a' + (i * 7 + n) % 26);
        char hex[16];
        std::snprintf(hex, sizeof hex, "%zx", n);
        enc += std::string(hex) + "\r\n" + piece + "\r\n";
        body += piece;
    }
    enc += "0\r\n\r\n";
    v.push_back({"several KiB in uneven chunks", enc, body});
    return v;
}

}  // namespace

TEST_CASE("chunked_decoder: valid bodies, whole, byte by byte, and split at every position", "[chunked]") {
    const std::string next = "GET /next HTTP/1.1\r\nHost: x\r\n\r\n";  // a pipelined request behind the body
    for (const valid_case& c : valid_cases()) {
        DYNAMIC_SECTION(c.name) {
            INFO("input: " << printable(c.encoded));
            for (const std::string& tail : {std::string(), next}) {
                const std::string in = c.encoded + tail;
                INFO("followed by: " << printable(tail));
                {
                    const decoded d = feed_whole(in);
                    INFO("whole: " << status_name(d.status));
                    CHECK(d.problems.empty());
                    CHECK(d.status == parse_status::complete);
                    CHECK(d.consumed == c.encoded.size());
                    CHECK(d.body == c.body);
                }
                {
                    const decoded d = feed_bytes(in);
                    INFO("byte by byte: " << status_name(d.status));
                    CHECK(d.problems.empty());
                    CHECK(d.status == parse_status::complete);
                    CHECK(d.consumed == c.encoded.size());
                    CHECK(d.body == c.body);
                }
                for (std::size_t at = 0; at <= in.size(); ++at) {
                    const decoded d = feed_split(in, at);
                    if (!d.problems.empty() || d.status != parse_status::complete || d.consumed != c.encoded.size() ||
                        d.body != c.body) {
                        INFO("split at " << at << ": " << status_name(d.status) << ", consumed " << d.consumed
                                         << ", body " << printable(d.body));
                        CHECK(d.problems.empty());
                        CHECK(d.status == parse_status::complete);
                        CHECK(d.consumed == c.encoded.size());
                        CHECK(d.body == c.body);
                        break;  // one failure report per case is enough
                    }
                }
            }
        }
    }
}

TEST_CASE("chunked_decoder: every strict prefix of a valid body is partial, never complete or error",
          "[chunked]") {
    for (const valid_case& c : valid_cases()) {
        DYNAMIC_SECTION(c.name) {
            INFO("input: " << printable(c.encoded));
            for (std::size_t len = 0; len < c.encoded.size(); ++len) {
                const std::string_view prefix = std::string_view(c.encoded).substr(0, len);
                const decoded d = feed_whole(prefix);
                if (d.status != parse_status::partial || !d.problems.empty() || d.consumed != len ||
                    !(c.body.rfind(d.body, 0) == 0)) {
                    INFO("prefix of " << len << " bytes: " << status_name(d.status) << ", consumed " << d.consumed);
                    CHECK(d.problems.empty());
                    CHECK(d.status == parse_status::partial);
                    CHECK(d.consumed == len);             // nothing is held back: it is all decoder state
                    CHECK(c.body.rfind(d.body, 0) == 0);  // what came out so far is a prefix of the body
                    break;
                }
            }
            // Byte by byte, one decoder: partial after every byte but the last, complete on it.
            chunked_decoder d;
            std::size_t ended_at = 0;
            parse_status last = parse_status::partial;
            for (std::size_t i = 0; i < c.encoded.size() && last == parse_status::partial; ++i) {
                heap_buf one(std::string_view(c.encoded).substr(i, 1));
                const auto r = d.step(one.view());
                last = r.status;
                ended_at = i;
                if (r.consumed != 1 && r.status != parse_status::error) {
                    INFO("byte " << i << " consumed " << r.consumed);
                    CHECK(r.consumed == 1);
                    break;
                }
            }
            INFO("byte by byte: " << status_name(last) << " at byte " << ended_at);
            CHECK(last == parse_status::complete);
            CHECK(ended_at == c.encoded.size() - 1);
        }
    }
}

TEST_CASE("chunked_decoder: data is handed out as it arrives, in place", "[chunked]") {
    // "hel" of an 11-byte chunk: the three bytes come out now, as a view into the input.
    chunked_decoder d;
    heap_buf first("b\r\nhel");
    std::string got;
    std::string_view in1 = first.view();
    for (int guard = 0; guard < 10 && !in1.empty(); ++guard) {
        auto r = d.step(in1);
        REQUIRE(r.status == parse_status::partial);
        CHECK(inside(r.data, in1));
        got.append(r.data.data(), r.data.size());
        in1.remove_prefix(r.consumed);
    }
    CHECK(in1.empty());
    CHECK(got == "hel");
    chunked_decoder d2;
    decoded part = feed(d2, {"b\r\nhel"});
    CHECK(part.status == parse_status::partial);
    CHECK(part.body == "hel");
    decoded rest = feed(d2, {"lo worl", "d\r\n0\r\n\r\n"});
    CHECK(rest.status == parse_status::complete);
    CHECK(rest.body == "lo world");
    CHECK(rest.consumed == 7 + 8);
    decoded more = feed(d, {"lo worl", "d\r\n0\r\n\r\nGET"});
    CHECK(more.status == parse_status::complete);
    CHECK(more.body == "lo world");
    CHECK(more.consumed == 7 + 8);  // "GET" is left for the next request

    // A piece never runs past its chunk, even when more data follows in the same input.
    chunked_decoder d3;
    heap_buf two("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n");
    std::vector<std::string> pieces;
    std::string_view in = two.view();
    for (int guard = 0; guard < 100 && !in.empty(); ++guard) {
        auto s = d3.step(in);
        REQUIRE(s.status != parse_status::error);
        if (!s.data.empty()) pieces.emplace_back(s.data);
        in.remove_prefix(s.consumed);
        if (s.status == parse_status::complete) break;
    }
    CHECK(in.empty());
    CHECK(pieces == std::vector<std::string>{"abc", "de"});
}

TEST_CASE("chunked_decoder: malformed bodies are errors 400", "[chunked]") {
    using namespace std::string_literals;
    struct bad_case {
        const char* name;
        std::string in;
    };
    const std::vector<bad_case> cases = {
        {"size overflow: 17 hex digits", "10000000000000000\r\nx\r\n0\r\n\r\n"},
        {"whitespace after the size without an extension", "5 \r\nhello\r\n0\r\n\r\n"},
        {"text after the size that is not an extension", "5 garbage\r\nhello\r\n0\r\n\r\n"},
        {"size overflow: 17 f's", "fffffffffffffffff\r\n"},
        {"size overflow: 32 hex digits", std::string(32, 'f') + "\r\n"},
        {"negative size", "-5\r\nhello\r\n0\r\n\r\n"},
        {"negative zero", "-0\r\n\r\n"},
        {"plus sign", "+5\r\nhello\r\n0\r\n\r\n"},
        {"non-hex size", "g\r\nhello\r\n0\r\n\r\n"},
        {"non-hex digit after hex", "5g\r\nhello\r\n0\r\n\r\n"},
        {"0x prefix", "0x5\r\nhello\r\n0\r\n\r\n"},
        {"empty size line", "\r\nhello\r\n0\r\n\r\n"},
        {"space before size", " 5\r\nhello\r\n0\r\n\r\n"},
        {"missing CRLF after data", "5\r\nhello0\r\n\r\n"},
        {"data longer than the size", "3\r\nhello\r\n0\r\n\r\n"},
        {"data shorter than the size", "6\r\nhello\r\n0\r\n\r\n\r\n"},
        {"CR without LF after data", "5\r\nhello\rX0\r\n\r\n"},
        {"bare LF after size", "5\nhello\r\n0\r\n\r\n"},
        {"bare LF after data", "5\r\nhello\n0\r\n\r\n"},
        {"bare LF after last chunk", "5\r\nhello\r\n0\n\r\n"},
        {"bare LF ending the body", "5\r\nhello\r\n0\r\n\n"},
        {"bare LF after a trailer", "0\r\nX-T: v\n\r\n"},
        {"bare LF after an extension", "5;a=b\nhello\r\n0\r\n\r\n"},
        {"CR followed by another byte after size", "5\rXhello\r\n0\r\n\r\n"},
        {"NUL in extension", "5;a\0b\r\nhello\r\n0\r\n\r\n"s},
        {"control byte in extension", "5;a=\x01\r\nhello\r\n0\r\n\r\n"},
        {"DEL in extension", "5;a=\x7f\r\nhello\r\n0\r\n\r\n"},
        {"bare LF in extension", "5;a\nb\r\nhello\r\n0\r\n\r\n"},
        {"ESC in last chunk's extension", "5\r\nhello\r\n0;\x1b\r\n\r\n"},
        {"overlong extension (8 KiB)", "5;" + std::string(8192, 'e') + "\r\nhello\r\n0\r\n\r\n"},
        {"overlong extension (64 KiB)", "5;" + std::string(65536, 'e') + "\r\nhello\r\n0\r\n\r\n"},
        // A chunk-size line over 1024 bytes, whatever it is made of.
        {"2000 leading zeros", std::string(2000, '0') + "5\r\nhello\r\n0\r\n\r\n"},
        {"2000 zeros as the last chunk", "5\r\nhello\r\n" + std::string(2000, '0') + "\r\n\r\n"},
        {"2000 spaces between the size and an extension", "5" + std::string(2000, ' ') + ";x\r\nhello\r\n0\r\n\r\n"},
        {"2000 tabs between the size and an extension", "5" + std::string(2000, '\t') + ";x\r\nhello\r\n0\r\n\r\n"},
        {"extension of 4000 bytes", "5;" + std::string(4000, 'e') + "\r\nhello\r\n0\r\n\r\n"},
        {"last chunk's extension of 4000 bytes", "5\r\nhello\r\n0;" + std::string(4000, 'e') + "\r\n\r\n"},
        {"a size line of 1030 bytes", "5;" + std::string(1028, 'e') + "\r\nhello\r\n0\r\n\r\n"},
        {"zeros, whitespace and an extension: 1102 bytes together",
         std::string(500, '0') + "5" + std::string(300, ' ') + ";" + std::string(300, 'e') + "\r\nhello\r\n0\r\n\r\n"},
        {"a long line on a later chunk", "1\r\nx\r\n1;" + std::string(2000, 'e') + "\r\ny\r\n0\r\n\r\n"},
        {"overlong trailer section", "0\r\nX-Big: " + std::string(8192, 'v') + "\r\n\r\n"},
        {"many trailers past the limit", [] {
             std::string s = "0\r\n";
             for (int i = 0; i < 1000; ++i) s += "X-T" + std::to_string(i) + ": value\r\n";
             return s + "\r\n";
         }()},
        {"obs-fold in trailers (space)", "0\r\nX-T: a\r\n b\r\n\r\n"},
        {"obs-fold in trailers (tab)", "0\r\nX-T: a\r\n\tb\r\n\r\n"},
        {"trailer without a colon", "0\r\nX-T\r\n\r\n"},
        {"space before a trailer's colon", "0\r\nX-T : v\r\n\r\n"},
        {"empty trailer name", "0\r\n: v\r\n\r\n"},
        {"control byte in a trailer value", "0\r\nX-T: a\x01\r\n\r\n"},
        {"NUL in a trailer value", "0\r\nX-T: a\0b\r\n\r\n"s},
        {"CR without LF ending the body", "0\r\n\rX"},
        {"a non-token byte instead of the final CRLF", "5\r\nhello\r\n0\r\n@"},
    };
    for (const bad_case& c : cases) {
        DYNAMIC_SECTION(c.name) {
            INFO("input: " << printable(c.in));
            const decoded w = feed_whole(c.in);
            INFO("whole: " << status_name(w.status) << " " << w.error_status);
            CHECK(w.problems.empty());
            CHECK(w.status == parse_status::error);
            CHECK(w.error_status == 400);
            const decoded b = feed_bytes(c.in);
            INFO("byte by byte: " << status_name(b.status) << " " << b.error_status);
            CHECK(b.status == parse_status::error);
            CHECK(b.error_status == 400);
            // Split anywhere, the verdict is the same.
            for (std::size_t at = 0; at <= c.in.size(); at += (c.in.size() > 512 ? 97 : 1)) {
                const decoded s = feed_split(c.in, at);
                if (s.status != parse_status::error || s.error_status != 400) {
                    INFO("split at " << at << ": " << status_name(s.status));
                    CHECK(s.status == parse_status::error);
                    break;
                }
            }
        }
    }
}

TEST_CASE("chunked_decoder: a chunk-size line up to 1024 bytes is fine, a longer one is 400 before it ends",
          "[chunked]") {
    // A chunk-size line (the size, whitespace and extensions together, without its CRLF) may
    // be up to 1024 bytes long. Past that the line is an error at once, before its CRLF
    // comes: no unbounded buffering of one line, whichever part of it is long.
    const decoded ok_ext = feed_whole("5;" + std::string(900, 'e') + "\r\nhello\r\n0\r\n\r\n");
    CHECK(ok_ext.status == parse_status::complete);
    CHECK(ok_ext.body == "hello");
    const decoded ok_zeros = feed_whole(std::string(1000, '0') + "5\r\nhello\r\n0\r\n\r\n");
    CHECK(ok_zeros.status == parse_status::complete);
    CHECK(ok_zeros.body == "hello");
    struct unended {
        const char* name;
        std::string in;
    };
    const std::vector<unended> cases = {
        {"extension", "5;" + std::string(5000, 'e')},
        {"extension just past the limit", "5;" + std::string(1100, 'e')},
        {"leading zeros", std::string(2000, '0')},
        {"leading zeros before a digit", std::string(2000, '0') + "5"},
        {"whitespace after the size", "5" + std::string(2000, ' ')},
        {"zeros, whitespace and an extension", std::string(400, '0') + "5" + std::string(400, ' ') + ";" +
                                                   std::string(400, 'e')},
        {"on a later chunk", "1\r\nx\r\n" + std::string(2000, '0')},
    };
    for (const unended& c : cases) {
        DYNAMIC_SECTION(c.name) {
            INFO("input: " << printable(c.in));
            const decoded w = feed_whole(c.in);
            CHECK(status_name(w.status) == "error");
            CHECK(w.error_status == 400);
            const decoded b = feed_bytes(c.in);
            CHECK(status_name(b.status) == "error");
            CHECK(b.error_status == 400);
        }
    }
    // Each chunk's size line is counted on its own.
    std::string many;
    for (int i = 0; i < 10; ++i) many += "1;" + std::string(900, 'e') + "\r\nx\r\n";
    many += "0\r\n\r\n";
    const decoded m = feed_whole(many);
    CHECK(m.status == parse_status::complete);
    CHECK(m.body == std::string(10, 'x'));
}

TEST_CASE("chunked_decoder: a trailer section within its limit is fine, one far past it is 400", "[chunked]") {
    // The trailer section keeps its own limit (4096 bytes for all trailer fields today): a
    // few KiB of trailers pass, a longer section is an error before it ends.
    const decoded ok_trailer = feed_whole("0\r\nX-T: " + std::string(3000, 'v') + "\r\n\r\n");
    CHECK(ok_trailer.status == parse_status::complete);
    const decoded long_trailer = feed_whole("0\r\nX-T: " + std::string(5000, 'v'));
    CHECK(long_trailer.status == parse_status::error);
    CHECK(long_trailer.error_status == 400);
    const decoded bytes = feed_bytes("0\r\nX-T: " + std::string(5000, 'v'));
    CHECK(bytes.status == parse_status::error);
}

TEST_CASE("chunked_decoder: the largest sizes that fit are not errors (they only need more data)",
          "[chunked]") {
    // 15 hex digits: a size that fits; the decoder must wait for the data, not fail.
    const decoded d = feed_whole("fffffffffffffff\r\nsome data");
    CHECK(d.status == parse_status::partial);
    CHECK(d.body == "some data");
    const decoded z = feed_whole("000000000000001\r\nx\r\n0\r\n\r\n");
    CHECK(z.status == parse_status::complete);
    CHECK(z.body == "x");
}

// ------------------------------------------------------------ frame_request --

namespace {

/// framed: the outcome of frame_request() on a head; keeps the head's buffer alive.
struct framed {
    int status = -1;  // -1: the head did not even parse
    request_framing f;
};

framed frame(const std::string& head) {
    auto buf = std::make_shared<heap_buf>(head);
    rs::request req;
    rs::detail::parse_limits limits;
    const auto pr = rs::detail::parse_request(buf->view(), req, limits);
    framed out;
    if (pr.status != parse_status::complete) return out;
    out.status = rs::detail::frame_request(req, out.f);
    return out;
}

std::string post11(const std::string& fields) { return "POST /u HTTP/1.1\r\nHost: x\r\n" + fields + "\r\n"; }

}  // namespace

TEST_CASE("frame_request: requests without a body", "[framing]") {
    for (const std::string& head : {std::string("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
                                    std::string("GET / HTTP/1.0\r\n\r\n"),  // HTTP/1.0 needs no Host
                                    post11("Content-Length: 0\r\n"),
                                    post11("Content-Length: 000\r\n")}) {
        INFO(head);
        const framed r = frame(head);
        CHECK(r.status == 0);
        CHECK(r.f.kind == request_framing::none);
        CHECK(!r.f.expect_continue);
    }
}

TEST_CASE("frame_request: Content-Length", "[framing]") {
    SECTION("plain digits") {
        const framed r = frame(post11("Content-Length: 12345\r\n"));
        CHECK(r.status == 0);
        CHECK(r.f.kind == request_framing::content_length);
        CHECK(r.f.length == 12345);
    }
    SECTION("identical duplicates are accepted") {
        const framed r = frame(post11("Content-Length: 7\r\nX-Other: a\r\ncontent-length: 7\r\n"));
        CHECK(r.status == 0);
        CHECK(r.f.kind == request_framing::content_length);
        CHECK(r.f.length == 7);
        const framed z = frame(post11("Content-Length: 0\r\nContent-Length: 0\r\n"));
        CHECK(z.status == 0);
        CHECK(z.f.kind == request_framing::none);
    }
    SECTION("a large value that fits") {
        const framed r = frame(post11("Content-Length: 123456789012\r\n"));
        CHECK(r.status == 0);
        CHECK(r.f.length == 123456789012ull);
    }
    SECTION("bad values are 400") {
        for (const char* v : {"5, 6", "5,5", "-5", "+5", "-0", "5 5", "0x5", "a", "1e3", "5.0", "five", "",
                              "99999999999999999999", "18446744073709551616", "18446744073709551621",
                              "1234567890123456789012345"}) {
            INFO("Content-Length: [" << v << "]");
            CHECK(frame(post11(std::string("Content-Length: ") + v + "\r\n")).status == 400);
        }
    }
    SECTION("several that differ are 400") {
        CHECK(frame(post11("Content-Length: 5\r\nContent-Length: 6\r\n")).status == 400);
        CHECK(frame(post11("Content-Length: 6\r\nContent-Length: 5\r\n")).status == 400);
        CHECK(frame(post11("Content-Length: 5\r\nContent-Length: 5\r\nContent-Length: 50\r\n")).status == 400);
        CHECK(frame(post11("Content-Length: 0\r\nContent-Length: 1\r\n")).status == 400);
    }
}

TEST_CASE("frame_request: Transfer-Encoding", "[framing]") {
    SECTION("chunked") {
        for (const char* v : {"chunked", "Chunked", "CHUNKED"}) {
            INFO(v);
            const framed r = frame(post11(std::string("Transfer-Encoding: ") + v + "\r\n"));
            CHECK(r.status == 0);
            CHECK(r.f.kind == request_framing::chunked);
        }
    }
    SECTION("both Content-Length and Transfer-Encoding are 400, in either order") {
        CHECK(frame(post11("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n")).status == 400);
        CHECK(frame(post11("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n")).status == 400);
        CHECK(frame(post11("Transfer-Encoding: chunked\r\nContent-Length: 0\r\n")).status == 400);
    }
    SECTION("a last coding that is not chunked is 400") {
        for (const char* v : {"gzip", "chunked, gzip", "identity", "", "chunked,gzip", "x-custom"}) {
            INFO("Transfer-Encoding: [" << v << "]");
            CHECK(frame(post11(std::string("Transfer-Encoding: ") + v + "\r\n")).status == 400);
        }
        CHECK(frame(post11("Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n")).status == 400);
    }
    SECTION("an unknown coding before chunked is 501") {
        for (const char* v : {"gzip, chunked", "deflate, chunked", "gzip,chunked", "x-custom , chunked"}) {
            INFO("Transfer-Encoding: [" << v << "]");
            CHECK(frame(post11(std::string("Transfer-Encoding: ") + v + "\r\n")).status == 501);
        }
        // The same list spread over two fields.
        CHECK(frame(post11("Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n")).status == 501);
    }
    SECTION("chunked twice is 400") {
        CHECK(frame(post11("Transfer-Encoding: chunked, chunked\r\n")).status == 400);
        CHECK(frame(post11("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n")).status == 400);
        CHECK(frame(post11("Transfer-Encoding: chunked, gzip, chunked\r\n")).status == 400);
    }
    SECTION("Transfer-Encoding in HTTP/1.0 is 400") {
        CHECK(frame("POST /u HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n").status == 400);
        CHECK(frame("POST /u HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n").status == 400);
    }
}

TEST_CASE("frame_request: Host", "[framing]") {
    CHECK(frame("GET / HTTP/1.1\r\n\r\n").status == 400);
    CHECK(frame("GET / HTTP/1.1\r\nUser-Agent: x\r\n\r\n").status == 400);
    CHECK(frame("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n").status == 400);
    CHECK(frame("GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n").status == 400);
    CHECK(frame("GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n").status == 400);
    CHECK(frame("GET / HTTP/1.1\r\nhOsT: a\r\n\r\n").status == 0);
    CHECK(frame("GET / HTTP/1.1\r\nHost:\r\n\r\n").status == 0);  // empty Host is allowed (RFC 9112 3.2)
    CHECK(frame("GET / HTTP/1.0\r\n\r\n").status == 0);
}

TEST_CASE("frame_request: a Host value must be uri-host [\":\" port]", "[framing][host]") {
    // RFC 9112 3.2 / RFC 9110 7.2: Host = uri-host [ ":" port ]. Whitespace, '/', userinfo,
    // a list and a non-numeric port are not a host; an empty value is (no authority).
    for (const char* v : {"example.com", "example.com:8080", "127.0.0.1:80", "[::1]:8080", "[::1]", "",
                          "xn--bcher-kva.example", "a_b-c.d~e", "localhost", "EXAMPLE.com:1"}) {
        INFO("Host: [" << v << "]");
        CHECK(frame("GET / HTTP/1.1\r\nHost: " + std::string(v) + "\r\n\r\n").status == 0);
        CHECK(frame("GET / HTTP/1.0\r\nHost: " + std::string(v) + "\r\n\r\n").status == 0);
    }
    for (const char* v : {"a b", "a/b", "user@host", "user:pw@host", "a, b", "a,b", "host:8x", "host:x8", "/"}) {
        INFO("Host: [" << v << "]");
        CHECK(frame("GET / HTTP/1.1\r\nHost: " + std::string(v) + "\r\n\r\n").status == 400);
        CHECK(frame("GET / HTTP/1.0\r\nHost: " + std::string(v) + "\r\n\r\n").status == 400);
        CHECK(frame("POST /u HTTP/1.1\r\nHost: " + std::string(v) + "\r\nContent-Length: 5\r\n\r\n").status == 400);
    }
    // Two Host fields stay 400, even when both are valid and equal.
    CHECK(frame("GET / HTTP/1.1\r\nHost: example.com\r\nHost: example.com\r\n\r\n").status == 400);
}

TEST_CASE("frame_request: Expect", "[framing]") {
    SECTION("another expectation is 417") {
        for (const char* v : {"200-ok", "100-continue-please", "continue", "100-continue, foo", ""}) {
            INFO("Expect: [" << v << "]");
            CHECK(frame(post11(std::string("Expect: ") + v + "\r\nContent-Length: 5\r\n")).status == 417);
        }
        CHECK(frame("GET / HTTP/1.1\r\nHost: x\r\nExpect: something\r\n\r\n").status == 417);
    }
    SECTION("100-continue with a body sets expect_continue") {
        const framed cl = frame(post11("Expect: 100-continue\r\nContent-Length: 5\r\n"));
        CHECK(cl.status == 0);
        CHECK(cl.f.expect_continue);
        const framed ch = frame(post11("Transfer-Encoding: chunked\r\nExpect: 100-Continue\r\n"));
        CHECK(ch.status == 0);
        CHECK(ch.f.kind == request_framing::chunked);
        CHECK(ch.f.expect_continue);
    }
    SECTION("100-continue without a body does not") {
        const framed none = frame("GET / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n");
        CHECK(none.status == 0);
        CHECK(!none.f.expect_continue);
        const framed zero = frame(post11("Expect: 100-continue\r\nContent-Length: 0\r\n"));
        CHECK(zero.status == 0);
        CHECK(!zero.f.expect_continue);
    }
    SECTION("100-continue from an HTTP/1.0 client is ignored (RFC 9110 10.1.1)") {
        const framed r = frame("POST /u HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
        CHECK(r.status == 0);
        CHECK(r.f.kind == request_framing::content_length);
        CHECK(!r.f.expect_continue);
    }
    SECTION("a framing error wins over a valid expectation; the state is reset between calls") {
        CHECK(frame(post11("Expect: 100-continue\r\nContent-Length: 5\r\nContent-Length: 6\r\n")).status == 400);
        // frame_request resets its output: a stale expect_continue or length does not leak.
        auto buf = std::make_shared<heap_buf>(std::string("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
        rs::request req;
        REQUIRE(rs::detail::parse_request(buf->view(), req, rs::detail::parse_limits{}).status ==
                parse_status::complete);
        request_framing f;
        f.kind = request_framing::chunked;
        f.length = 99;
        f.expect_continue = true;
        CHECK(rs::detail::frame_request(req, f) == 0);
        CHECK(f.kind == request_framing::none);
        CHECK(!f.expect_continue);
    }
}

// ------------------------------------------------------------ over the wire --

TEST_CASE("a chunk-size line over 1024 bytes is answered 400 over the wire", "[chunked][server]") {
    rs::server srv(test::local_options());
    srv.post("/echo", [](const rs::request& req, rs::response& res) { res.set_content(req.body, "text/plain"); });
    srv.post(
        "/stream",
        [](const rs::request& req, rs::response& res) {
            std::string body;
            const std::error_code ec = req.read_body([&](std::string_view piece) {
                body.append(piece.data(), piece.size());
                return true;
            });
            res.set_content(ec ? "error: " + ec.message() : body, "text/plain");
        },
        rs::body_mode::streamed);
    const auto port = test::start(srv);

    struct wire_case {
        const char* name;
        std::string body;  // the chunked body after the head
        int status;
    };
    const std::vector<wire_case> cases = {
        {"1000 leading zeros", std::string(1000, '0') + "5\r\nhello\r\n0\r\n\r\n", 200},
        {"an extension of 900 bytes", "5;" + std::string(900, 'e') + "\r\nhello\r\n0\r\n\r\n", 200},
        {"2000 leading zeros", std::string(2000, '0') + "5\r\nhello\r\n0\r\n\r\n", 400},
        {"2000 spaces before an extension", "5" + std::string(2000, ' ') + ";x\r\nhello\r\n0\r\n\r\n", 400},
        {"an extension of 4000 bytes", "5;" + std::string(4000, 'e') + "\r\nhello\r\n0\r\n\r\n", 400},
        {"a trailer section of 8 KiB", "5\r\nhello\r\n0\r\nX-Big: " + std::string(8192, 'v') + "\r\n\r\n", 400},
    };
    for (const char* path : {"/echo", "/stream"}) {
        for (const wire_case& c : cases) {
            DYNAMIC_SECTION(path << ": " << c.name) {
                test::client cl(port);
                REQUIRE(cl.ok());
                REQUIRE(cl.send("POST " + std::string(path) +
                                " HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + c.body));
                const test::http_response r = cl.read();
                INFO("head: " << printable(r.head) << " body: " << printable(r.body));
                CHECK(r.status == c.status);
                if (c.status == 200)
                    CHECK(r.body == "hello");
                else if (r.status == c.status)
                    CHECK(cl.closed());  // a framing error ends the connection
            }
        }
    }
    srv.stop();
}
