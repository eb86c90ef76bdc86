// detail's engine-independent WebSocket pieces (RFC 6455): the handshake's key and
// accept value, close codes, the server frame header, UTF-8 and the client frame decoder.
//
//   handshake  sha1() on the RFC 3174 / FIPS 180 vectors and every length 0..130 (the
//              padding's edges), base64_encode() on RFC 4648 10, websocket_accept() on the
//              RFC 6455 1.3 example, websocket_key_valid() on good and bad keys
//   close      ws_close_code_valid() at the edges of every range
//   utf8       utf8_validator on valid and invalid sequences, every split of them, and every
//              sequence of up to three bytes against fuzz_websocket.cpp's utf8_status()
//   decoder    ws_decoder: the RFC 6455 5.7 examples, every rule with its close code (each
//              stream fed whole, cut in two at every point and one byte at a time, each
//              arrival in a heap block of exactly the bytes buffered, so an over-read trips
//              AddressSanitizer), control frames between fragments, UTF-8 across fragments
//              and its early failure, max_message at and past the limit, errors that stay
//   head       ws_frame_head() at the length encodings' edges, round-tripped through the
//              decoder; unmasking at every length and alignment, and its throughput
//   fuzz       tests/fuzz/fuzz_websocket.cpp's invariants on its seed corpus
#define RS_FUZZ_THROW 1
#include "fuzz/fuzz_websocket.cpp"  // the fuzz target, replayed on its seed corpus below

#include "support.hpp"

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace {

namespace rs = restartable_server;
using rs::detail::utf8_validator;
using rs::detail::ws_decoder;
using kind = ws_decoder::kind;
using namespace std::string_literals;
using steady = std::chrono::steady_clock;

// ------------------------------------------------------------------ helpers --

/// hex: bytes as lower-case hex digits.
std::string hex(const unsigned char* p, std::size_t n) {
    std::string out;
    for (std::size_t i = 0; i < n; ++i) {
        out += "0123456789abcdef"[p[i] >> 4];
        out += "0123456789abcdef"[p[i] & 15];
    }
    return out;
}

std::string sha1_hex(std::string_view data) {
    const std::array<unsigned char, 20> d = rs::detail::sha1(data);
    return hex(d.data(), d.size());
}

std::string base64(std::string_view s) {
    return rs::detail::base64_encode(reinterpret_cast<const unsigned char*>(s.data()), s.size());
}

/// The RFC 6455 1.3 / 5.7 masking key, and one of zeros (the payload stays as it is).
constexpr std::uint32_t rfc_key = 0x37fa213d;
constexpr std::uint32_t zero_key = 0;

/// masked: head (the first byte, then the second without MASK, then any extended
/// length), with MASK set, the key, and payload masked with it (RFC 6455 5.2, 5.3).
std::string masked(std::string head, std::string_view payload, std::uint32_t key = rfc_key) {
    head[1] = static_cast<char>(head[1] | 0x80);
    const char k[4] = {static_cast<char>(key >> 24), static_cast<char>(key >> 16), static_cast<char>(key >> 8),
                       static_cast<char>(key)};
    head.append(k, 4);
    for (std::size_t i = 0; i < payload.size(); ++i) head += static_cast<char>(payload[i] ^ k[i % 4]);
    return head;
}

/// length_bytes: n as count big-endian bytes.
std::string length_bytes(std::uint64_t n, std::size_t count) {
    std::string out;
    for (std::size_t i = count; i-- > 0;) out += static_cast<char>(n >> (8 * i));
    return out;
}

/// frame: a client frame: first byte (FIN, RSV1-3, opcode) as given, the length in its
/// minimal encoding, masked with key.
std::string frame(unsigned first, std::string_view payload, std::uint32_t key = rfc_key) {
    std::string head(1, static_cast<char>(first));
    if (payload.size() < 126) {
        head += static_cast<char>(payload.size());
    } else if (payload.size() < 65536) {
        head += '\x7e' + length_bytes(payload.size(), 2);
    } else {
        head += '\x7f' + length_bytes(payload.size(), 8);
    }
    return masked(head, payload, key);
}

/// op: first bytes of frames: FIN and the opcode (RFC 6455 5.2).
namespace op {
constexpr unsigned text = 0x81, binary = 0x82, first_text = 0x01, first_binary = 0x02, more = 0x00, last = 0x80,
                   ping = 0x89, pong = 0x8a, close = 0x88;
}  // namespace op

/// close_payload: a close frame's payload: code, big-endian, then reason.
std::string close_payload(unsigned code, std::string_view reason = {}) {
    return length_bytes(code, 2) + std::string(reason);
}

/// describe: an event as text, for comparisons and failure messages; "" for need_more.
std::string describe(const ws_decoder::result& r) {
    switch (r.what) {
        case kind::need_more: return "";
        case kind::message: return (r.text ? "text:" : "binary:") + std::string(r.data);
        case kind::ping: return "ping:" + std::string(r.data);
        case kind::pong: return "pong:" + std::string(r.data);
        case kind::close: return "close " + std::to_string(r.code) + ":" + std::string(r.data);
        case kind::error: return "error " + std::to_string(r.code);
    }
    return "?";
}

std::string err(unsigned code) { return "error " + std::to_string(code); }

/// decoded: the events of a stream, and what went against the decoder's contract.
struct decoded {
    std::vector<std::string> events;
    std::size_t kept = 0;
    bool in_message = false;
    std::vector<std::string> problems;
};

/// caller: the engine's side of a decoder: a buffer (a heap block of exactly the bytes
/// it holds, made anew at each arrival) and the decode()/compact() loop.
struct caller {
    explicit caller(std::uint64_t max_message) : d(max_message) {}

    /// arrive: appends bytes, then decodes until need_more (or the error, repeated once).
    void arrive(std::string_view bytes, decoded& out) {
        std::unique_ptr<char[]> grown(new char[size + bytes.size() == 0 ? 1 : size + bytes.size()]);
        if (size != 0) std::memcpy(grown.get(), buf.get(), size);
        if (!bytes.empty()) std::memcpy(grown.get() + size, bytes.data(), bytes.size());
        buf = std::move(grown);
        size += bytes.size();
        for (;;) {
            const ws_decoder::result r = d.decode(buf.get(), size);
            if (!test::inside(r.data, std::string_view(buf.get(), size)))
                out.problems.push_back("a view outside the buffer: " + describe(r));
            const std::string e = describe(r);
            size = d.compact(buf.get(), size);
            if (d.kept() > size) out.problems.push_back("kept() past the buffer");
            if (r.what == kind::need_more) return;
            if (failed) {
                if (e != out.events.back()) out.problems.push_back("after " + out.events.back() + ": " + e);
                return;
            }
            out.events.push_back(e);
            failed = r.what == kind::error;
        }
    }
    ws_decoder d;
    std::unique_ptr<char[]> buf;
    std::size_t size = 0;
    bool failed = false;
};

/// decode: the events of stream, its bytes arriving in pieces that end at cuts (ascending).
decoded decode(std::string_view stream, std::uint64_t max_message, const std::vector<std::size_t>& cuts = {}) {
    caller c(max_message);
    decoded out;
    std::size_t at = 0;
    for (const std::size_t cut : cuts) {
        c.arrive(stream.substr(at, cut - at), out);
        at = cut;
    }
    c.arrive(stream.substr(at), out);
    out.kept = c.d.kept();
    out.in_message = c.d.in_message();
    return out;
}

constexpr std::uint64_t no_limit = ~std::uint64_t{0};

/// check_events: stream gives events (and ends inside a message or not) fed whole, cut in
/// two at every point, and one byte at a time.
void check_events(std::string_view stream, const std::vector<std::string>& events, std::uint64_t max_message = no_limit,
                  bool in_message = false) {
    INFO("stream: " << test::printable(stream));
    const decoded whole = decode(stream, max_message);
    CHECK(whole.problems.empty());
    CHECK(whole.events == events);
    CHECK(whole.in_message == in_message);
    for (std::size_t at = 0; at <= stream.size(); ++at) {
        const decoded two = decode(stream, max_message, {at});
        if (!two.problems.empty() || two.events != events || two.kept != whole.kept) {
            INFO("cut at " << at);
            CHECK(two.problems.empty());
            CHECK(two.events == events);
            CHECK(two.kept == whole.kept);
            break;  // one report per stream
        }
    }
    std::vector<std::size_t> bytes;
    for (std::size_t i = 1; i < stream.size(); ++i) bytes.push_back(i);
    const decoded one = decode(stream, max_message, bytes);
    INFO("one byte at a time");
    CHECK(one.problems.empty());
    CHECK(one.events == events);
    CHECK(one.kept == whole.kept);
    CHECK(one.in_message == in_message);
}

}  // namespace

// ---------------------------------------------------------------- handshake --

TEST_CASE("sha1: the RFC 3174 and FIPS 180 vectors, and every length 0..130", "[websocket][handshake]") {
    CHECK(sha1_hex("abc") == "a9993e364706816aba3e25717850c26c9cd0d89d");
    CHECK(sha1_hex("") == "da39a3ee5e6b4b0d3255bfef95601890afd80709");
    CHECK(sha1_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq") ==
          "84983e441c3bd26ebaae4aa1f95129e5e54670f1");  // 448 bits
    CHECK(sha1_hex("abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsm"
                   "nopqrstnopqrstu") == "a49b2446a02c645bf419f995b67091253a04a259");  // 896 bits
    CHECK(sha1_hex(std::string(1000000, 'a')) == "34aa973cd4c4daa4f61eeb2bdbad27316534016f");
    std::string test4;  // RFC 3174 7.3, TEST4
    for (int i = 0; i < 20; ++i) test4 += "01234567012345670123456701234567";
    CHECK(sha1_hex(test4) == "dea356a2cddd90c7a7ecedc5ebb563934f460452");

    // Lengths 0..130 cross one and two padding blocks at 55/56 and 119/120 bytes: the
    // digest of their 131 digests, from Python's hashlib.
    std::string digests;
    for (std::size_t n = 0; n <= 130; ++n) {
        std::string m;
        for (std::size_t i = 0; i < n; ++i) m += static_cast<char>((i * 7 + n) & 0xff);
        const std::array<unsigned char, 20> d = rs::detail::sha1(m);
        digests.append(reinterpret_cast<const char*>(d.data()), d.size());
    }
    CHECK(sha1_hex(digests) == "3124829d302c0b62b2f8c1e5edf440a668284db0");
}

TEST_CASE("base64_encode: the RFC 4648 10 vectors, and the last two digits", "[websocket][handshake]") {
    CHECK(base64("") == "");
    CHECK(base64("f") == "Zg==");
    CHECK(base64("fo") == "Zm8=");
    CHECK(base64("foo") == "Zm9v");
    CHECK(base64("foob") == "Zm9vYg==");
    CHECK(base64("fooba") == "Zm9vYmE=");
    CHECK(base64("foobar") == "Zm9vYmFy");
    CHECK(base64("\xfb\xff\xbf") == "+/+/");
    CHECK(base64("\0\0\0"s) == "AAAA");
    CHECK(base64("\xff\xff") == "//8=");
}

TEST_CASE("websocket_accept: the RFC 6455 1.3 example", "[websocket][handshake]") {
    CHECK(rs::detail::websocket_accept("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    CHECK(rs::detail::websocket_accept("AAECAwQFBgcICQoLDA0ODw==") == "Bz3qJYTGdOe8gUSpLosEdiLKDrk=");  // hashlib
}

TEST_CASE("websocket_key_valid: the base64 of 16 bytes, nothing else", "[websocket][handshake]") {
    using rs::detail::websocket_key_valid;
    CHECK(websocket_key_valid("dGhlIHNhbXBsZSBub25jZQ=="));
    CHECK(websocket_key_valid("AAAAAAAAAAAAAAAAAAAAAA=="));
    CHECK(websocket_key_valid("////////////////////AA=="));
    CHECK(websocket_key_valid("+/+/+/+/+/+/+/+/+/+/+w=="));
    // The 22nd digit holds the last byte's 2 low bits and 4 zero bits: A, Q, g or w only.
    std::string accepted;
    for (const char c : rs::detail::base64_alphabet)
        if (websocket_key_valid("dGhlIHNhbXBsZSBub25jZ"s + c + "==")) accepted += c;
    CHECK(accepted == "AQgw");

    CHECK(!websocket_key_valid(""));
    CHECK(!websocket_key_valid("dGhlIHNhbXBsZSBub25jZQ="));     // 23 characters
    CHECK(!websocket_key_valid("dGhlIHNhbXBsZSBub25jZQ==="));   // 25
    CHECK(!websocket_key_valid("dGhlIHNhbXBsZSBub25jZQ== "));   // 25, a space
    CHECK(!websocket_key_valid("dGhlIHNhbXBsZSBub25jZQAA"));    // no "=="
    CHECK(!websocket_key_valid("dGhlIHNhbXBsZSBub25jZQA="));
    CHECK(!websocket_key_valid("dGhlIHNhbXBsZSBub25jZR=="));    // wrong last digit
    CHECK(!websocket_key_valid("dGhlIHNhbXBsZSBub25jZ==="));
    CHECK(!websocket_key_valid("-GhlIHNhbXBsZSBub25jZQ=="));    // base64url's digits
    CHECK(!websocket_key_valid("dGhl_HNhbXBsZSBub25jZQ=="));
    CHECK(!websocket_key_valid("dGhl HNhbXBsZSBub25jZQ=="));
    CHECK(!websocket_key_valid("dGhl=HNhbXBsZSBub25jZQ=="));
    CHECK(!websocket_key_valid("dGhlIHNhbXBsZSBub25j\0Q=="s));
    CHECK(!websocket_key_valid("dGhlIHNhbXBsZSBub25jZQ==dGhlIHNhbXBsZSBub25jZQ=="));
}

// -------------------------------------------------------------------- close --

TEST_CASE("ws_close_code_valid: 1000-1003, 1007-1014, 3000-4999", "[websocket][close]") {
    using rs::detail::ws_close_code_valid;
    for (unsigned code : {1000u, 1001u, 1002u, 1003u, 1007u, 1008u, 1009u, 1010u, 1011u, 1012u, 1013u, 1014u, 3000u,
                          3999u, 4000u, 4999u}) {
        INFO(code);
        CHECK(ws_close_code_valid(code));
    }
    for (unsigned code : {0u, 1u, 999u, 1004u, 1005u, 1006u, 1015u, 1016u, 2000u, 2999u, 5000u, 65535u, 65536u + 1000}) {
        INFO(code);
        CHECK(!ws_close_code_valid(code));
    }
}

// --------------------------------------------------------------------- utf8 --

namespace {

/// utf8: whether v, fed s whole, every split in two and byte by byte, says (feed, complete).
void check_utf8(std::string_view s, bool feed_ok, bool complete) {
    INFO("bytes: " << test::printable(s));
    utf8_validator v;
    CHECK(v.feed(s) == feed_ok);
    CHECK(v.complete() == complete);
    for (std::size_t at = 0; at <= s.size(); ++at) {
        utf8_validator w;
        const bool first = w.feed(s.substr(0, at));
        const bool second = w.feed(s.substr(at));
        INFO("cut at " << at);
        CHECK(second == feed_ok);
        CHECK((first || !feed_ok));
        CHECK(w.complete() == complete);
    }
    utf8_validator b;
    bool ok = true;
    for (const char c : s) ok = b.feed(std::string_view(&c, 1));
    CHECK(ok == feed_ok);
    CHECK(b.complete() == complete);
}

}  // namespace

TEST_CASE("utf8_validator: RFC 3629 sequences, split anywhere", "[websocket][utf8]") {
    for (const char* valid : {"", "plain ASCII", "h\xc3\xa9llo", "\xe2\x82\xac", "\xf0\x9d\x84\x9e", "\xc2\x80",
                              "\xdf\xbf", "\xe0\xa0\x80", "\xed\x9f\xbf", "\xee\x80\x80", "\xef\xbf\xbf",
                              "\xf0\x90\x80\x80", "\xf4\x8f\xbf\xbf", "\xf3\xbf\xbf\xbf"})
        check_utf8(valid, true, true);
    check_utf8("\0"s, true, true);
    for (const char* cut_short : {"\xc2", "\xe2\x82", "\xf0\x9d\x84", "ok\xf4", "\xe0\xa0", "\xed\x9f"})
        check_utf8(cut_short, true, false);
    for (const char* invalid : {"\x80", "a\xbf", "\xc0\x80", "\xc1\xbf", "\xe0\x80\x80", "\xe0\x9f\xbf",
                                "\xf0\x80\x80\x80", "\xf0\x8f\xbf\xbf",  // overlong
                                "\xed\xa0\x80", "\xed\xbf\xbf",          // surrogates
                                "\xf4\x90\x80\x80", "\xf5\x80\x80\x80", "\xf8\x88\x80\x80\x80", "\xfe", "\xff",
                                "\xc2\x41", "\xe2\x82\x41", "\xf0\x9d\x84\x41", "\xc2\xc2\x80"})
        check_utf8(invalid, false, false);
    // A bad byte fails at once, before the character's end: ED A0, F4 90, E0 80.
    for (const char* early : {"\xed\xa0", "\xf4\x90", "\xe0\x80", "\xf0\x8f"}) check_utf8(early, false, false);

    // The ASCII fast path: runs of every length around a character and a bad byte.
    for (std::size_t n = 0; n <= 40; ++n) {
        const std::string run(n, 'a');
        check_utf8(run + "\xe2\x82\xac" + run, true, true);
        check_utf8(run + "\xff" + run, false, false);
        check_utf8(run + "\xe2\x82", true, false);
    }

    utf8_validator v;
    CHECK(!v.feed("\xff"));
    CHECK(!v.feed("a"));  // stays false
    CHECK(!v.complete());
    v.reset();
    CHECK(v.feed("a"));
    CHECK(v.complete());
}

TEST_CASE("utf8_validator: every sequence of 1 to 3 bytes agrees with a code-point decoder", "[websocket][utf8]") {
    // utf8_status (tests/fuzz/fuzz_websocket.cpp) decodes code points and knows nothing of
    // RFC 3629's byte ranges: the two must agree on every input of 1 and 2 bytes, and on
    // every 3 bytes that begin a character of 3 or 4 (2.2 million inputs).
    std::size_t disagree = 0;
    std::string first;
    char s[3];
    for (unsigned n = 1; n <= 3; ++n) {
        const std::uint32_t count = 1u << (8 * n);
        for (std::uint32_t x = 0; x < count; ++x) {
            for (unsigned i = 0; i < n; ++i) s[i] = static_cast<char>(x >> (8 * (n - 1 - i)));
            // Most 3-byte inputs start with ASCII or a 2-byte character, seen already as
            // shorter inputs: only those that start with a lead of 3 or 4 bytes are new.
            if (n == 3 && static_cast<unsigned char>(s[0]) < 0xe0) continue;
            const std::string_view in(s, n);
            utf8_validator v;
            const bool ok = v.feed(in);
            const int status = rs_fuzz_websocket::utf8_status(in);
            if (ok != (status != 2) || v.complete() != (status == 0)) {
                if (disagree++ == 0) first = test::printable(in);
            }
        }
    }
    INFO("first disagreement: " << first);
    CHECK(disagree == 0);
}

// ------------------------------------------------------------------ decoder --

TEST_CASE("ws_decoder: the RFC 6455 5.7 examples", "[websocket][decoder]") {
    SECTION("a single-frame masked text message") {
        const std::string hello = "\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58";
        CHECK(frame(op::text, "Hello") == hello);
        check_events(hello, {"text:Hello"});
    }
    SECTION("the single-frame unmasked text message: a client's frames are masked (5.1)") {
        check_events("\x81\x05\x48\x65\x6c\x6c\x6f", {err(1002)});
    }
    SECTION("a fragmented text message, Hel and lo, masked") {
        check_events(frame(op::first_text, "Hel") + frame(op::last, "lo"), {"text:Hello"});
        check_events(frame(op::first_text, "Hel"), {}, no_limit, true);
    }
    SECTION("a masked ping, and the RFC's masked pong") {
        check_events(frame(op::ping, "Hello") + "\x8a\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58", {"ping:Hello", "pong:Hello"});
    }
    SECTION("256 bytes and 64 KiB of binary: the 16-bit and 64-bit lengths") {
        std::string b256, b64k;
        for (int i = 0; i < 256; ++i) b256 += static_cast<char>(i);
        for (int i = 0; i < 65536; ++i) b64k += static_cast<char>(i * 31 + 7);
        const std::string f256 = frame(op::binary, b256);
        CHECK(f256.substr(0, 4) == "\x82\xfe\x01\x00"s);
        const std::string f64k = frame(op::binary, b64k);
        CHECK(f64k.substr(0, 10) == "\x82\xff\x00\x00\x00\x00\x00\x01\x00\x00"s);
        check_events(f256, {"binary:" + b256});
        // 64 KiB: whole, in two at a few points, and one byte at a time.
        CHECK(decode(f64k, no_limit).events == std::vector<std::string>{"binary:" + b64k});
        for (std::size_t at : {1u, 2u, 9u, 10u, 13u, 14u, 15u, 40000u})
            CHECK(decode(f64k, no_limit, {at}).events == std::vector<std::string>{"binary:" + b64k});
        std::vector<std::size_t> bytes;
        for (std::size_t i = 1; i < f64k.size(); ++i) bytes.push_back(i);
        CHECK(decode(f64k, no_limit, bytes).events == std::vector<std::string>{"binary:" + b64k});
    }
}

TEST_CASE("ws_decoder: each framing rule, with its close code", "[websocket][decoder]") {
    SECTION("frames are masked (5.1): 1002") {
        check_events("\x82\x00"s, {err(1002)});
        check_events(frame(op::text, "ok") + "\x81\x02hi", {"text:ok", err(1002)});
    }
    SECTION("RSV1, RSV2, RSV3 are 0, no extension being negotiated (5.2): 1002") {
        check_events(frame(0xc1, "x"), {err(1002)});
        check_events(frame(0xa1, "x"), {err(1002)});
        check_events(frame(0x91, "x"), {err(1002)});
        check_events(frame(0xc9, ""), {err(1002)});
    }
    SECTION("opcodes 0, 1, 2, 8, 9, 10 only (5.2): 1002") {
        for (unsigned op : {3u, 4u, 5u, 6u, 7u, 11u, 12u, 13u, 14u, 15u}) {
            INFO("opcode " << op);
            check_events(frame(0x80 | op, ""), {err(1002)});
        }
    }
    SECTION("a control frame has FIN (5.5): 1002") {
        check_events(frame(0x09, ""), {err(1002)});
        check_events(frame(0x0a, "x"), {err(1002)});
        check_events(frame(0x08, close_payload(1000)), {err(1002)});
    }
    SECTION("a control frame has at most 125 bytes (5.5): 1002, from its header") {
        check_events(frame(op::ping, std::string(125, 'p')), {"ping:" + std::string(125, 'p')});
        check_events(frame(op::ping, std::string(126, 'p')), {err(1002)});
        check_events(frame(op::pong, std::string(300, 'p')), {err(1002)});
        check_events(frame(op::close, close_payload(1000, std::string(124, 'r'))), {err(1002)});
        check_events("\x89\xfe"s, {err(1002)});  // the second byte alone decides
        check_events("\x89\xff"s, {err(1002)});
    }
    SECTION("lengths in their minimal encoding (5.2): 1002") {
        check_events(masked("\x82\x7e\x00\x7d"s, std::string(125, 'x')), {err(1002)});
        check_events(masked("\x82\x7e\x00\x00"s, ""), {err(1002)});
        check_events(masked("\x82\x7e\x00\x7e"s, std::string(126, 'x')), {"binary:" + std::string(126, 'x')});
        check_events(masked("\x82\x7f"s + length_bytes(65535, 8), std::string(65535, 'x')).substr(0, 14), {err(1002)});
        check_events(masked("\x82\x7f"s + length_bytes(5, 8), "short"), {err(1002)});
        check_events(masked("\x82\x7f"s + length_bytes(0, 8), ""), {err(1002)});
        // Decided before the masking key and payload come.
        check_events("\x82\xfe\x00\x05"s, {err(1002)});
        check_events("\x82\xff"s + length_bytes(65535, 8), {err(1002)});
    }
    SECTION("a 64-bit length has its most significant bit clear (5.2): 1002") {
        check_events("\x82\xff"s + length_bytes(std::uint64_t{1} << 63, 8), {err(1002)});
        check_events("\x82\xff"s + length_bytes(~std::uint64_t{0}, 8), {err(1002)});
        check_events("\x80\xff\x80"s + std::string(7, '\0') + "kkkk", {err(1002)});  // no message either: 1002 first
    }
    SECTION("a continuation continues a message (5.4): 1002") {
        check_events(frame(op::last, "x"), {err(1002)});
        check_events(frame(op::more, "x"), {err(1002)});
        check_events(frame(op::text, "a") + frame(op::last, "b"), {"text:a", err(1002)});
    }
    SECTION("no text or binary frame inside a fragmented message (5.4): 1002") {
        check_events(frame(op::first_text, "a") + frame(op::text, "b"), {err(1002)});
        check_events(frame(op::first_binary, "a") + frame(op::first_binary, "b"), {err(1002)});
        check_events(frame(op::first_text, "a") + frame(op::binary, "b"), {err(1002)});
    }
    SECTION("a message past max_message: 1009, from the header, before the payload") {
        check_events(frame(op::binary, std::string(11, 'x')), {err(1009)}, 10);
        check_events(frame(op::binary, std::string(11, 'x')).substr(0, 2), {err(1009)}, 10);
        // 2^62 bytes announced: the error comes at once, no byte of it is waited for.
        check_events("\x82\xff"s + length_bytes(std::uint64_t{1} << 62, 8), {err(1009)}, 1 << 20);
        check_events("\x82\xff"s + length_bytes(std::uint64_t{1} << 62, 8), {}, no_limit);  // waits
        check_events(frame(op::text, ""), {"text:"}, 0);
        check_events(frame(op::text, "x"), {err(1009)}, 0);
        // Control frames are no message: they pass under any limit.
        check_events(frame(op::ping, "12345"), {"ping:12345"}, 0);
    }
    SECTION("text is UTF-8 (8.1): 1007") {
        check_events(frame(op::text, "a\xed\xa0\x80"), {err(1007)});        // a surrogate
        check_events(frame(op::text, "\xf4\x90\x80\x80"), {err(1007)});     // past U+10FFFF
        check_events(frame(op::text, "\xc0\x80"), {err(1007)});             // overlong
        check_events(frame(op::text, "\xe0\x80\x80"), {err(1007)});
        check_events(frame(op::text, "\xf0\x80\x80\x80"), {err(1007)});
        check_events(frame(op::text, "ok\xe2\x82"), {err(1007)});           // cut short at the end
        check_events(frame(op::binary, "\xff\xed\xa0\x80"), {"binary:\xff\xed\xa0\x80"});  // binary is not text
    }
    SECTION("close: no payload is code 1005; 1 byte is 1002; a bad code 1002; a bad reason 1007") {
        check_events(frame(op::close, ""), {"close 1005:"});
        check_events(frame(op::close, close_payload(1000)), {"close 1000:"});
        check_events(frame(op::close, close_payload(1001, "going")), {"close 1001:going"});
        check_events(frame(op::close, close_payload(4999, "\xc3\xa9t\xc3\xa9")), {"close 4999:\xc3\xa9t\xc3\xa9"});
        check_events(frame(op::close, close_payload(3000, std::string(123, 'r'))), {"close 3000:" + std::string(123, 'r')});
        check_events(frame(op::close, "\x03"), {err(1002)});
        for (unsigned code : {0u, 999u, 1004u, 1005u, 1006u, 1015u, 1016u, 2999u, 5000u, 65535u}) {
            INFO("code " << code);
            check_events(frame(op::close, close_payload(code)), {err(1002)});
        }
        check_events(frame(op::close, close_payload(1000, "\xed\xa0\x80")), {err(1007)});
        check_events(frame(op::close, close_payload(1000, "ok\xe2\x82")), {err(1007)});  // cut short
    }
    SECTION("empty frames of every kind") {
        check_events(frame(op::text, "") + frame(op::binary, "") + frame(op::ping, "") + frame(op::pong, "") +
                         frame(op::first_binary, "") + frame(op::more, "") + frame(op::last, ""),
                     {"text:", "binary:", "ping:", "pong:", "binary:"});
    }
}

TEST_CASE("ws_decoder: after an error, every decode returns it again", "[websocket][decoder]") {
    ws_decoder d(no_limit);
    std::string buf = frame(op::text, "ok") + frame(0xc1, "rsv") + frame(op::text, "after");
    ws_decoder::result r = d.decode(buf.data(), buf.size());
    CHECK(describe(r) == "text:ok");
    std::size_t size = d.compact(buf.data(), buf.size());
    r = d.decode(buf.data(), size);
    CHECK(describe(r) == err(1002));
    size = d.compact(buf.data(), size);
    CHECK(size == 0);  // nothing is needed any more
    for (int i = 0; i < 3; ++i) {
        buf = frame(op::text, "valid") + frame(op::ping, "");
        r = d.decode(buf.data(), buf.size());
        CHECK(r.what == kind::error);
        CHECK(r.code == 1002);
        CHECK(r.data.empty());
        CHECK(d.compact(buf.data(), buf.size()) == 0);
    }
    CHECK(d.kept() == 0);
    CHECK(!d.in_message());
}

TEST_CASE("ws_decoder: control frames between fragments, the message kept at the buffer's start",
          "[websocket][decoder]") {
    SECTION("step by step, as the contract says") {
        ws_decoder d(no_limit);
        std::string buf = frame(op::first_text, "Hel") + frame(op::ping, "p1") + frame(op::more, "l");
        ws_decoder::result r = d.decode(buf.data(), buf.size());
        CHECK(describe(r) == "ping:p1");
        CHECK(d.in_message());
        CHECK(d.kept() == 3);
        std::size_t size = d.compact(buf.data(), buf.size());
        CHECK(buf.substr(0, 3) == "Hel");
        CHECK(size == 3 + frame(op::more, "l").size());  // the ping and the first header dropped
        r = d.decode(buf.data(), size);             // "l" joins the message: no event yet
        CHECK(r.what == kind::need_more);
        size = d.compact(buf.data(), size);
        CHECK(size == 4);
        CHECK(d.kept() == 4);
        buf.resize(size);
        buf += frame(op::pong, "") + frame(op::last, "o") + frame(op::text, "next");
        r = d.decode(buf.data(), buf.size());
        CHECK(describe(r) == "pong:");
        size = d.compact(buf.data(), buf.size());
        r = d.decode(buf.data(), size);
        CHECK(describe(r) == "text:Hello");
        CHECK(r.data.data() == buf.data());  // contiguous, at the buffer's start
        CHECK(!d.in_message());
        CHECK(d.kept() == 0);
        size = d.compact(buf.data(), size);
        CHECK(size == frame(op::text, "next").size());
        r = d.decode(buf.data(), size);
        CHECK(describe(r) == "text:next");
        CHECK(d.compact(buf.data(), size) == 0);
    }
    SECTION("fed whole, cut anywhere, one byte at a time") {
        check_events(frame(op::first_text, "Hel") + frame(op::ping, "1") + frame(op::more, "") + frame(op::pong, "2") +
                         frame(op::more, "l") + frame(op::close, close_payload(1000, "bye")) + frame(op::last, "o"),
                     {"ping:1", "pong:2", "close 1000:bye", "text:Hello"});
        check_events(frame(op::first_binary, "\x01\x02") + frame(op::ping, "") + frame(op::last, "\x03"),
                     {"ping:", "binary:\x01\x02\x03"});
    }
    SECTION("a close's reason is checked apart from the text message it interrupts") {
        // The message has a character cut short when the close comes, and goes on after it.
        check_events(frame(op::first_text, "\xe2\x82") + frame(op::close, close_payload(1000, "\xc3\xa9")) +
                         frame(op::last, "\xac"),
                     {"close 1000:\xc3\xa9", "text:\xe2\x82\xac"});
    }
}

TEST_CASE("ws_decoder: UTF-8 across fragments, and its early failure", "[websocket][decoder]") {
    const std::string clef = "\xf0\x9d\x84\x9e";  // U+1D11E, 4 bytes
    SECTION("a 4-byte character split at every offset across two and three fragments") {
        for (std::size_t a = 0; a <= 4; ++a) {
            INFO("first cut " << a);
            check_events(frame(op::first_text, "x" + clef.substr(0, a)) + frame(op::last, clef.substr(a) + "y"),
                         {"text:x" + clef + "y"});
            for (std::size_t b = a; b <= 4; ++b)
                check_events(frame(op::first_text, clef.substr(0, a)) + frame(op::more, clef.substr(a, b - a)) +
                                 frame(op::last, clef.substr(b)),
                             {"text:" + clef});
        }
    }
    SECTION("invalid across fragments: 1007 at the fragment that makes it so") {
        check_events(frame(op::first_text, "\xed") + frame(op::last, "\xa0\x80"), {err(1007)});
        check_events(frame(op::first_text, "\xf0\x9d") + frame(op::last, "\x84\x41"), {err(1007)});
        check_events(frame(op::first_text, "\xf4") + frame(op::more, "\x90") + frame(op::last, "\x80\x80"), {err(1007)});
        check_events(frame(op::first_text, "\xe2\x82") + frame(op::last, ""), {err(1007)});  // cut short at the end
    }
    SECTION("an invalid byte in the first fragment fails before the last arrives") {
        check_events(frame(op::first_text, "ok\xff"), {err(1007)});
        check_events(frame(op::first_text, "\xc0\x80"), {err(1007)});
        check_events(frame(op::first_text, "a") + frame(op::more, "\xed\xa0\x80"), {err(1007)});
        // The next fragment's header is there already; its payload is not.
        check_events(frame(op::first_text, "\xf4\x90\x80\x80") + frame(op::last, "tail").substr(0, 7), {err(1007)});
    }
    SECTION("a fragment's valid prefix is no error yet") {
        check_events(frame(op::first_text, "ok\xe2\x82"), {}, no_limit, true);
    }
}

TEST_CASE("ws_decoder: max_message at and one past the limit, across fragments", "[websocket][decoder]") {
    const std::uint64_t max = 10;
    check_events(frame(op::text, std::string(10, 'a')), {"text:" + std::string(10, 'a')}, max);
    check_events(frame(op::first_text, "abcd") + frame(op::last, "efghij"), {"text:abcdefghij"}, max);
    check_events(frame(op::first_text, "abcd") + frame(op::ping, "not counted") + frame(op::more, "ef") + frame(op::last, "ghij"),
                 {"ping:not counted", "text:abcdefghij"}, max);
    check_events(frame(op::first_text, "abcd") + frame(op::last, "efghijk"), {err(1009)}, max);
    check_events(frame(op::first_binary, "abcd") + frame(op::more, "efghij") + frame(op::last, "k"), {err(1009)}, max);
    // One past, decided from the last fragment's header: its payload never comes.
    check_events(frame(op::first_text, "abcd") + frame(op::last, "efghijk").substr(0, 2), {err(1009)}, max);
    // Each message starts from zero.
    check_events(frame(op::text, std::string(10, 'a')) + frame(op::first_binary, "0123456789") + frame(op::last, ""),
                 {"text:" + std::string(10, 'a'), "binary:0123456789"}, max);
}

TEST_CASE("ws_decoder: a stream of frames gives the same events however it is cut", "[websocket][decoder]") {
    std::string big(300, '\0');
    for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 13);
    const std::string stream = frame(op::text, "Hello") + frame(op::binary, big, 0x01020304) + frame(op::first_text, "fr", zero_key) +
                               frame(op::ping, "p") + frame(op::more, "ag\xc3") + frame(op::last, "\xa9", 0xffffffff) +
                               frame(op::pong, "") + frame(op::text, "") + frame(op::binary, "") +
                               frame(op::first_binary, "", 0xdeadbeef) + frame(op::more, "\x00\x01"s) + frame(op::last, "") +
                               frame(op::close, close_payload(1000, "done"));
    check_events(stream, {"text:Hello", "binary:" + big, "ping:p", "text:frag\xc3\xa9", "pong:", "text:", "binary:",
                          "binary:\x00\x01"s, "close 1000:done"});
    // And in three pieces, at every pair of points of a shorter stream.
    const std::string small = frame(op::first_text, "ab") + frame(op::ping, "") + frame(op::last, "c") + frame(op::binary, "d");
    const std::vector<std::string> want = {"ping:", "text:abc", "binary:d"};
    std::size_t bad = 0;
    for (std::size_t a = 0; a <= small.size(); ++a)
        for (std::size_t b = a; b <= small.size(); ++b) {
            const decoded d = decode(small, no_limit, {a, b});
            if (d.events != want || !d.problems.empty()) ++bad;
        }
    CHECK(bad == 0);
}

// --------------------------------------------------------------------- head --

TEST_CASE("ws_frame_head: minimal lengths, round-tripped through the decoder", "[websocket][head]") {
    struct expected {
        std::uint64_t length;
        std::string head;
    };
    const std::vector<expected> cases = {
        {0, "\x82\x00"s},
        {125, "\x82\x7d"s},
        {126, "\x82\x7e\x00\x7e"s},
        {65535, "\x82\x7e\xff\xff"s},
        {65536, "\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00"s},
        {std::uint64_t{1} << 32, "\x82\x7f\x00\x00\x00\x01\x00\x00\x00\x00"s},
    };
    for (const expected& c : cases) {
        INFO("length " << c.length);
        char out[10];
        const std::size_t n = rs::detail::ws_frame_head(2, true, c.length, out);
        CHECK(std::string(out, n) == c.head);
        if (c.length <= 65536) {
            // A client's copy: the same header with MASK set, a key, the payload masked.
            std::string payload(static_cast<std::size_t>(c.length), '\0');
            for (std::size_t i = 0; i < payload.size(); ++i) payload[i] = static_cast<char>(i * 7);
            const std::string copy = masked(std::string(out, n), payload, 0xa1b2c3d4);
            CHECK(decode(copy, no_limit).events == std::vector<std::string>{"binary:" + payload});
        } else {
            // 4 GiB is not sent: the decoder reads the length from the header at the limit's edge.
            const std::string copy = masked(std::string(out, n), "");
            CHECK(decode(copy, c.length).events.empty());                  // waits for the payload
            CHECK(decode(copy, c.length - 1).events == std::vector<std::string>{err(1009)});
        }
    }
    // FIN and the opcode.
    char out[10];
    CHECK(rs::detail::ws_frame_head(1, false, 3, out) == 2);
    CHECK(std::string(out, 2) == "\x01\x03");
    CHECK(rs::detail::ws_frame_head(0, true, 3, out) == 2);
    CHECK(std::string(out, 2) == "\x80\x03"s);
    CHECK(rs::detail::ws_frame_head(8, true, 2, out) == 2);
    CHECK(std::string(out, 2) == "\x88\x02");
    CHECK(rs::detail::ws_frame_head(10, true, 0, out) == 2);
    CHECK(std::string(out, 2) == "\x8a\x00"s);
    // Every opcode, FIN or not, and lengths at the encodings' edges, back through the decoder.
    for (const std::uint64_t length : {0u, 1u, 124u, 125u, 126u, 127u, 65534u, 65535u, 65536u, 65537u}) {
        const std::string payload(static_cast<std::size_t>(length), 'z');
        const std::size_t n = rs::detail::ws_frame_head(1, false, length, out);
        char tail[10];
        const std::size_t m = rs::detail::ws_frame_head(0, true, 1, tail);
        INFO("length " << length);
        CHECK(decode(masked(std::string(out, n), payload) + masked(std::string(tail, m), "!"), no_limit).events ==
              std::vector<std::string>{"text:" + payload + "!"});
    }
}

// ------------------------------------------------------------------- unmask --

namespace {

/// unmask_bytes: the reference: byte i XOR key[i % 4], one byte at a time (RFC 6455 5.3).
void unmask_bytes(char* p, std::size_t n, const char* key) {
    for (std::size_t i = 0; i < n; ++i) p[i] = static_cast<char>(p[i] ^ key[i % 4]);
}

}  // namespace

TEST_CASE("ws_decoder: unmasking at every length and alignment", "[websocket][unmask]") {
    // A ping of 0 to 7 bytes before the frame moves its payload through all 8 alignments.
    for (std::size_t shift = 0; shift < 8; ++shift)
        for (std::size_t n = 0; n <= 70; ++n) {
            std::string payload(n, '\0');
            for (std::size_t i = 0; i < n; ++i) payload[i] = static_cast<char>(i * 37 + shift);
            const std::string stream = frame(op::ping, std::string(shift, 'p'), 0x55aa00ff) + frame(op::binary, payload, 0x9c3e7b01);
            const decoded d = decode(stream, no_limit);
            if (d.events != std::vector<std::string>{"ping:" + std::string(shift, 'p'), "binary:" + payload}) {
                INFO("shift " << shift << ", length " << n);
                CHECK(d.events == std::vector<std::string>{"ping:" + std::string(shift, 'p'), "binary:" + payload});
            }
        }
}

TEST_CASE("ws_decoder: unmask throughput, 16 MiB in one frame", "[websocket][unmask]") {
    const std::size_t n = 16u << 20;
    std::string payload(n, '\0');
    for (std::size_t i = 0; i < n; ++i) payload[i] = static_cast<char>(i * 2654435761u >> 24);
    std::string buf = frame(op::binary, payload, 0x12345678);
    const std::size_t head = buf.size() - n;
    const std::string original = buf;
    const int rounds = 8;
    // Decoding the same bytes again unmasks them back (XOR): each round decodes afresh.
    const auto t0 = steady::now();
    for (int i = 0; i < rounds; ++i) {
        ws_decoder d(no_limit);
        const ws_decoder::result r = d.decode(buf.data(), buf.size());
        REQUIRE(r.what == kind::message);
        REQUIRE(r.data.size() == n);
    }
    const double decoder_s = std::chrono::duration<double>(steady::now() - t0).count();
    CHECK(buf == original);  // an even number of rounds: masked again
    ws_decoder d(no_limit);
    CHECK(d.decode(buf.data(), buf.size()).data == payload);
    const auto t1 = steady::now();
    for (int i = 0; i < rounds; ++i) unmask_bytes(buf.data() + head, n, buf.data() + head - 4);
    const double bytes_s = std::chrono::duration<double>(steady::now() - t1).count();
    CHECK(buf.compare(head, n, payload) == 0);
    std::printf("ws_decoder: unmask 16 MiB: %.0f MB/s (byte by byte: %.0f MB/s)\n",
                rounds * static_cast<double>(n) / 1e6 / decoder_s, rounds * static_cast<double>(n) / 1e6 / bytes_s);
}

// --------------------------------------------------------------------- fuzz --

TEST_CASE("websocket fuzz target: the seed corpus replays cleanly", "[websocket][fuzz]") {
    const std::vector<std::string> files = test::files_in(RS_SOURCE_DIR "/tests/fuzz/corpus_websocket");
    REQUIRE(files.size() >= 12);  // the corpus is there (a missing one must fail)
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
