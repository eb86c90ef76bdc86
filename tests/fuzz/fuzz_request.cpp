// libFuzzer target for the request parser and the body framing:
//   detail::parse_request, detail::frame_request and detail::chunked_decoder.
//
// Build (what .ci/fuzz does):
//   clang++ -std=c++17 -O1 -g -fsanitize=fuzzer,address,undefined
//           -fno-sanitize-recover=undefined -I. tests/fuzz/fuzz_request.cpp -o fuzz_request
// (or just: .ci/fuzz SECONDS)
//
// The file defines LLVMFuzzerTestOneInput and no main, so it also compiles as a plain
// object: tests/test_fuzz_corpus.cpp includes it and replays the seed corpus with it.
// A broken invariant prints what broke and aborts (libFuzzer then saves the input as a
// crash); with RS_FUZZ_THROW defined it throws std::runtime_error instead, for the replay.
//
// Each input is treated as bytes read from one connection, as the server sees them:
//   - the head is parsed with the default limits, with small limits and with limits
//     derived from the input; every result is checked for sanity (views inside the
//     buffer, head_bytes <= size and ending in CRLF CRLF, statuses from the documented
//     set, fields that obey the grammar);
//   - limits only ever add a 414/431: whatever tighter limits accept, the defaults accept
//     with the very same result;
//   - parsing is incremental: each byte-prefix (copied to a heap block of exactly its
//     size, so ASan sees a read past the end) is "partial" or the same result as the
//     whole; every strict prefix of a complete head is "partial";
//   - a complete head goes through frame_request, checked against an independent
//     reading of Host (its value too) / Content-Length / Transfer-Encoding / Expect
//     (smuggling rules);
//   - a chunked body is decoded the way the server does (a step loop over what is
//     buffered; data moved down in place), whole, in two pieces split at an
//     input-derived point, and one byte at a time: same status, same bytes, same end;
//   - what follows a complete body is the next pipelined request, and gets the same.
#include "restartable_server.hpp"

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#ifdef RS_FUZZ_THROW
#include <stdexcept>
#endif

namespace rs_fuzz {

namespace rs = restartable_server;
using rs::detail::parse_limits;
using rs::detail::parse_result;
using rs::detail::parse_status;

[[noreturn]] inline void fail(const char* what, int line) {
#ifdef RS_FUZZ_THROW
    throw std::runtime_error(std::string("fuzz_request.cpp:") + std::to_string(line) +
                             ": invariant broken: " + what);
#else
    std::fprintf(stderr, "fuzz_request.cpp:%d: invariant broken: %s\n", line, what);
    std::fflush(stderr);
    std::abort();
#endif
}

#define RS_FUZZ_CHECK(cond) ((cond) ? static_cast<void>(0) : ::rs_fuzz::fail(#cond, __LINE__))

/// exact_copy: the bytes of a view in a heap block of exactly their size, so that ASan
/// reports a read one byte past the end.
struct exact_copy {
    std::unique_ptr<char[]> p;
    std::size_t n;
    explicit exact_copy(std::string_view s) : p(new char[s.size() == 0 ? 1 : s.size()]), n(s.size()) {
        if (n != 0) std::memcpy(p.get(), s.data(), n);
    }
    std::string_view view() const { return {p.get(), n}; }
};

inline std::uintptr_t addr(const char* p) { return reinterpret_cast<std::uintptr_t>(p); }

/// inside: whether v lies within [lo, lo + n); an empty view counts anywhere.
inline bool inside(std::string_view v, const char* lo, std::size_t n) {
    if (v.empty()) return true;
    return addr(v.data()) >= addr(lo) && addr(v.data()) + v.size() <= addr(lo) + n;
}

inline bool is_tchar(unsigned char c) { return rs::detail::is_tchar(c); }
inline bool is_ctl(unsigned char c) { return (c < 0x20 && c != '\t') || c == 0x7f; }

inline bool iequals(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i) {
        auto x = static_cast<unsigned char>(a[i]), y = static_cast<unsigned char>(b[i]);
        if (x >= 'A' && x <= 'Z') x = static_cast<unsigned char>(x + 32);
        if (y >= 'A' && y <= 'Z') y = static_cast<unsigned char>(y + 32);
        if (x != y) return false;
    }
    return true;
}

inline std::string_view trim_ows(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
}

/// hash: FNV-1a of the bytes, to derive split points and limits from the input itself.
inline std::uint64_t hash(std::string_view s) {
    std::uint64_t h = 1469598103934665603ull;
    for (char c : s) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
    return h;
}

/// the path of a target without a path ("*", "http://host?q") is this literal: the only
/// view of a request that may lie outside the buffer.
inline bool view_ok(std::string_view v, const char* lo, std::size_t n) {
    return inside(v, lo, n) || v == "/";
}

/// check_views: every view of out lies in [buf, buf + n).
inline void check_views(const rs::request& out, const char* buf, std::size_t n) {
    RS_FUZZ_CHECK(inside(out.method, buf, n));
    RS_FUZZ_CHECK(inside(out.target, buf, n));
    RS_FUZZ_CHECK(view_ok(out.path, buf, n));
    RS_FUZZ_CHECK(inside(out.query, buf, n));
    for (const rs::header& h : out.headers) {
        RS_FUZZ_CHECK(inside(h.name, buf, n));
        RS_FUZZ_CHECK(inside(h.value, buf, n));
    }
}

/// check_result: one parse_request outcome on buf, on its own.
inline void check_result(std::string_view buf, const rs::request& out, const parse_result& r,
                         const parse_limits& l) {
    switch (r.status) {
        case parse_status::partial:
            RS_FUZZ_CHECK(r.head_bytes == 0 && r.error_status == 0);
            check_views(out, buf.data(), buf.size());
            return;
        case parse_status::error:
            RS_FUZZ_CHECK(r.head_bytes == 0);
            RS_FUZZ_CHECK(r.error_status == 400 || r.error_status == 414 || r.error_status == 431 ||
                          r.error_status == 505);
            check_views(out, buf.data(), buf.size());
            return;
        case parse_status::complete:
            break;
        default:
            RS_FUZZ_CHECK(!"parse_status out of range");
    }
    const std::size_t h = r.head_bytes;
    RS_FUZZ_CHECK(r.error_status == 0);
    RS_FUZZ_CHECK(h <= buf.size());
    RS_FUZZ_CHECK(h <= l.max_header_bytes);
    RS_FUZZ_CHECK(h >= 16);  // "A / HTTP/1.1\r\n\r\n"
    RS_FUZZ_CHECK(buf.substr(h - 4, 4) == "\r\n\r\n");
    const std::string_view head = buf.substr(0, h);
    check_views(out, head.data(), head.size());

    // The request line: method SP target SP "HTTP/1." DIGIT CRLF, within its limit.
    const std::size_t line_end = head.find("\r\n");
    RS_FUZZ_CHECK(line_end != std::string_view::npos && line_end <= l.max_request_line);
    RS_FUZZ_CHECK(!out.method.empty() && out.method.data() == head.data());
    for (char c : out.method) RS_FUZZ_CHECK(is_tchar(static_cast<unsigned char>(c)));
    RS_FUZZ_CHECK(!out.target.empty() && out.target.data() == head.data() + out.method.size() + 1);
    RS_FUZZ_CHECK(head[out.method.size()] == ' ');
    for (char c : out.target) {
        auto u = static_cast<unsigned char>(c);
        RS_FUZZ_CHECK(u > 0x20 && u < 0x7f);
    }
    const std::size_t version_at = out.method.size() + 1 + out.target.size();
    RS_FUZZ_CHECK(line_end == version_at + 9);
    RS_FUZZ_CHECK(head.substr(version_at, 8) == " HTTP/1.");
    const char minor = head[version_at + 8];
    RS_FUZZ_CHECK(minor >= '0' && minor <= '9');
    RS_FUZZ_CHECK(out.version_minor == (minor == '0' ? 0 : 1));

    // path and query: path starts with '/' (is "*" for "OPTIONS *"), has no '?', and is
    // the target's (or "/").
    RS_FUZZ_CHECK(!out.path.empty() && (out.path.front() == '/' || (out.target == "*" && out.path == "*")));
    RS_FUZZ_CHECK(out.path.find('?') == std::string_view::npos);
    RS_FUZZ_CHECK(inside(out.path, out.target.data(), out.target.size()) || out.path == "/");
    RS_FUZZ_CHECK(inside(out.query, out.target.data(), out.target.size()));
    if (out.target == "*") RS_FUZZ_CHECK(out.method == "OPTIONS");

    // Fields: token names, values trimmed and free of controls, all inside the head.
    RS_FUZZ_CHECK(out.headers.size() <= l.max_headers);
    for (const rs::header& f : out.headers) {
        RS_FUZZ_CHECK(!f.name.empty());
        for (char c : f.name) RS_FUZZ_CHECK(is_tchar(static_cast<unsigned char>(c)));
        RS_FUZZ_CHECK(f.name.data() + f.name.size() < head.data() + h);
        RS_FUZZ_CHECK(f.name.data()[f.name.size()] == ':');
        RS_FUZZ_CHECK(f.name.data()[-2] == '\r' && f.name.data()[-1] == '\n');
        RS_FUZZ_CHECK(trim_ows(f.value) == f.value);
        for (char c : f.value) RS_FUZZ_CHECK(!is_ctl(static_cast<unsigned char>(c)));
    }
}

/// same: two complete parses (of buffers a and b) found the same head at the same offsets.
inline bool same(const char* a, const rs::request& ra, const parse_result& pa, const char* b,
                 const rs::request& rb, const parse_result& pb) {
    auto same_view = [&](std::string_view x, std::string_view y) {
        if (x != y) return false;
        if (x.empty()) return true;
        const bool xin = addr(x.data()) >= addr(a) && addr(x.data()) < addr(a) + pa.head_bytes;
        const bool yin = addr(y.data()) >= addr(b) && addr(y.data()) < addr(b) + pb.head_bytes;
        if (xin != yin) return false;
        return !xin || addr(x.data()) - addr(a) == addr(y.data()) - addr(b);
    };
    if (pa.status != pb.status || pa.head_bytes != pb.head_bytes || pa.error_status != pb.error_status)
        return false;
    if (pa.status != parse_status::complete) return true;
    if (!same_view(ra.method, rb.method) || !same_view(ra.target, rb.target) || !same_view(ra.path, rb.path) ||
        !same_view(ra.query, rb.query) || ra.version_minor != rb.version_minor ||
        ra.headers.size() != rb.headers.size())
        return false;
    for (std::size_t i = 0; i < ra.headers.size(); ++i)
        if (!same_view(ra.headers[i].name, rb.headers[i].name) || !same_view(ra.headers[i].value, rb.headers[i].value))
            return false;
    return true;
}

inline bool limit_status(int s) { return s == 414 || s == 431; }

/// check_prefixes: parsing is incremental. Each byte-prefix of buf, alone in a heap block
/// of its size, is "partial" or gives what the whole gave: every strict prefix of a
/// complete head is partial, a prefix that holds the head is the same complete parse,
/// and an error seen early is an error of the whole too (of the same status, unless
/// the early one was a limit that depends on how many bytes were there: 414, 431).
inline void check_prefix(std::string_view buf, const rs::request& whole_req, const parse_result& whole,
                         const parse_limits& l, std::size_t k) {
    exact_copy p(buf.substr(0, k));
    rs::request req;
    const parse_result r = rs::detail::parse_request(p.view(), req, l);
    check_result(p.view(), req, r, l);
    switch (whole.status) {
        case parse_status::complete:
            if (k < whole.head_bytes)
                RS_FUZZ_CHECK(r.status == parse_status::partial);
            else
                RS_FUZZ_CHECK(same(buf.data(), whole_req, whole, p.view().data(), req, r));
            break;
        case parse_status::partial:
            RS_FUZZ_CHECK(r.status == parse_status::partial);
            break;
        case parse_status::error:
            RS_FUZZ_CHECK(r.status != parse_status::complete);
            if (r.status == parse_status::error && !limit_status(r.error_status))
                RS_FUZZ_CHECK(r.error_status == whole.error_status);
            break;
    }
}

inline void check_prefixes(std::string_view buf, const rs::request& whole_req, const parse_result& whole,
                           const parse_limits& l) {
    const std::size_t n = buf.size();
    if (n <= 128) {  // every prefix
        for (std::size_t k = 0; k < n; ++k) check_prefix(buf, whole_req, whole, l, k);
        return;
    }
    // Too long for all of them (quadratic): the edges that matter, and a spread.
    std::vector<std::size_t> ks = {0, 1, 2, n - 1, n - 2, l.max_request_line, l.max_request_line + 1,
                                   l.max_request_line + 2, l.max_header_bytes - 1, l.max_header_bytes,
                                   l.max_header_bytes + 1};
    if (whole.status == parse_status::complete) {
        ks.push_back(whole.head_bytes - 1);
        ks.push_back(whole.head_bytes);
        ks.push_back(whole.head_bytes - 2);
    }
    const std::size_t line_end = buf.find('\n');
    if (line_end != std::string_view::npos) {
        ks.push_back(line_end);
        ks.push_back(line_end + 1);
    }
    std::uint64_t h = hash(buf);
    for (int i = 0; i < 24; ++i) {
        ks.push_back(static_cast<std::size_t>(h % n));
        h = h * 6364136223846793005ull + 1442695040888963407ull;
    }
    for (std::size_t k : ks)
        if (k < n) check_prefix(buf, whole_req, whole, l, k);
}

/// host_ok: an independent reading of RFC 9110 7.2's Host = uri-host [ ":" port ], minus
/// the comma (a list of hosts is refused).
inline bool host_ok(std::string_view v) {
    auto is_digit = [](char c) { return c >= '0' && c <= '9'; };
    auto is_hex = [&](char c) { return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); };
    std::string_view port;
    if (!v.empty() && v[0] == '[') {
        const std::size_t end = v.find(']');
        if (end == std::string_view::npos || end == 1) return false;
        for (char c : v.substr(1, end - 1))
            if (!is_hex(c) && c != ':' && c != '.') return false;
        const std::string_view rest = v.substr(end + 1);
        if (!rest.empty() && rest[0] != ':') return false;
        port = rest.empty() ? rest : rest.substr(1);
    } else {
        const std::size_t colon = v.find(':');
        for (char c : v.substr(0, colon)) {
            const bool alnum = is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
            if (!alnum && (c == '\0' || std::strchr("-._~%!$&'()*+;=", c) == nullptr)) return false;
        }
        port = colon == std::string_view::npos ? std::string_view() : v.substr(colon + 1);
    }
    for (char c : port)
        if (!is_digit(c)) return false;
    return true;
}

/// frame_check: frame_request against an independent reading of the framing fields.
inline int frame_check(const rs::request& req, rs::detail::request_framing& f) {
    const int status = rs::detail::frame_request(req, f);
    RS_FUZZ_CHECK(status == 0 || status == 400 || status == 417 || status == 501);

    std::size_t hosts = 0, lengths = 0, tes = 0;
    bool length_ok = true, expect_other = false, expect_continue = false, host_bad = false;
    std::uint64_t length = 0;
    std::vector<std::string_view> codings;
    for (const rs::header& h : req.headers) {
        if (iequals(h.name, "host")) {
            ++hosts;
            host_bad |= !host_ok(h.value);
        } else if (iequals(h.name, "content-length")) {
            std::uint64_t v = 0;
            bool ok = !h.value.empty() && h.value.size() <= 18;
            for (char c : h.value) {
                if (c < '0' || c > '9') ok = false;
                else v = v * 10 + static_cast<std::uint64_t>(c - '0');
            }
            if (!ok || (lengths != 0 && v != length)) length_ok = false;
            length = v;
            ++lengths;
        } else if (iequals(h.name, "transfer-encoding")) {
            ++tes;
            std::string_view list = h.value;
            for (;;) {
                const std::size_t comma = list.find(',');
                const std::string_view c = trim_ows(list.substr(0, comma));
                if (!c.empty()) codings.push_back(c);
                if (comma == std::string_view::npos) break;
                list.remove_prefix(comma + 1);
            }
        } else if (iequals(h.name, "expect")) {
            if (iequals(h.value, "100-continue")) expect_continue = true;
            else expect_other = true;
        }
    }
    const bool v11 = req.version_minor == 1;
    std::size_t chunked = 0;
    for (std::string_view c : codings) chunked += iequals(c, "chunked");
    const bool chunked_last = !codings.empty() && iequals(codings.back(), "chunked");

    if (status == 0) {
        // The smuggling defences: one Host (none only for 1.0), never both framings, one
        // plain length, and chunked exactly once, last, only for HTTP/1.1.
        RS_FUZZ_CHECK(hosts == 1 || (hosts == 0 && !v11));
        RS_FUZZ_CHECK(!host_bad);
        RS_FUZZ_CHECK(!(lengths != 0 && tes != 0));
        RS_FUZZ_CHECK(length_ok);
        RS_FUZZ_CHECK(!expect_other);
        if (tes != 0) {
            RS_FUZZ_CHECK(v11 && chunked_last && chunked == 1 && codings.size() == 1);
            RS_FUZZ_CHECK(f.kind == rs::detail::request_framing::chunked);
        } else if (lengths != 0 && length != 0) {
            RS_FUZZ_CHECK(f.kind == rs::detail::request_framing::content_length);
            RS_FUZZ_CHECK(f.length == length);
        } else {
            RS_FUZZ_CHECK(f.kind == rs::detail::request_framing::none);
        }
        RS_FUZZ_CHECK(f.expect_continue ==
                      (expect_continue && v11 && f.kind != rs::detail::request_framing::none));
    } else if (status == 417) {
        RS_FUZZ_CHECK(expect_other);
    } else if (status == 501) {
        RS_FUZZ_CHECK(tes != 0 && chunked_last && codings.size() > 1 && lengths == 0 && v11 && !host_bad);
    } else {  // 400: some rule was broken
        RS_FUZZ_CHECK(hosts > 1 || (hosts == 0 && v11) || host_bad || !length_ok ||
                      (tes != 0 && (lengths != 0 || !v11 || !chunked_last || chunked != 1)));
    }
    return status;
}

/// decoded: what a chunked body decoding came to.
struct decoded {
    parse_status status = parse_status::partial;
    std::size_t consumed = 0;  // input bytes used up to the end of the body (or so far)
    std::string body;
};

/// check_step: one chunked_decoder::step() on in, on its own.
inline void check_step(std::string_view in, const rs::detail::chunked_decoder::step_result& s) {
    RS_FUZZ_CHECK(s.consumed <= in.size());
    RS_FUZZ_CHECK(inside(s.data, in.data(), s.consumed));
    // A piece of data is the last thing a step consumed.
    RS_FUZZ_CHECK(s.data.empty() || s.data.data() + s.data.size() == in.data() + s.consumed);
    switch (s.status) {
        case parse_status::partial:
            RS_FUZZ_CHECK(s.error_status == 0);
            RS_FUZZ_CHECK(in.empty() || s.consumed > 0);  // progress: the server loops on it
            break;
        case parse_status::complete:
            RS_FUZZ_CHECK(s.error_status == 0 && s.data.empty() && s.consumed > 0);
            break;
        case parse_status::error:
            RS_FUZZ_CHECK(s.error_status == 400 && s.data.empty());
            break;
        default:
            RS_FUZZ_CHECK(!"step status out of range");
    }
}

/// decode_whole: a step loop over in, collecting the data.
inline decoded decode_whole(std::string_view in) {
    rs::detail::chunked_decoder d;
    decoded out;
    while (out.consumed < in.size()) {
        const std::string_view rest = in.substr(out.consumed);
        const auto s = d.step(rest);
        check_step(rest, s);
        out.body.append(s.data.data(), s.data.size());
        out.consumed += s.consumed;
        if (s.status != parse_status::partial) {
            out.status = s.status;
            break;
        }
    }
    return out;
}

/// decode_in_place: as the server (run::collect_body) does with a buffered chunked body: the bytes
/// arrive in two reads (the first split bytes, then the rest); each time, a step loop
/// decodes from the read offset to the end of what is buffered, moving each piece of
/// data down to the write offset in the same buffer.
inline decoded decode_in_place(std::string_view in, std::size_t split) {
    std::vector<char> buf(in.begin(), in.end());
    rs::detail::chunked_decoder d;
    decoded out;
    std::size_t write = 0;
    for (std::size_t visible : {split, in.size()}) {
        while (out.consumed < visible) {
            const std::string_view rest(buf.data() + out.consumed, visible - out.consumed);
            const auto s = d.step(rest);
            check_step(rest, s);
            out.consumed += s.consumed;
            if (!s.data.empty()) {
                RS_FUZZ_CHECK(write + s.data.size() <= out.consumed);  // never over unread bytes
                std::memmove(buf.data() + write, s.data.data(), s.data.size());
                write += s.data.size();
            }
            if (s.status != parse_status::partial) {
                out.status = s.status;
                out.body.assign(buf.data(), write);
                return out;
            }
        }
    }
    out.body.assign(buf.data(), write);
    return out;
}

/// decode_bytewise: one byte at a time, each in a one-byte heap block.
inline decoded decode_bytewise(std::string_view in) {
    rs::detail::chunked_decoder d;
    decoded out;
    std::unique_ptr<char[]> cell(new char[1]);
    while (out.consumed < in.size()) {
        cell[0] = in[out.consumed];
        const std::string_view one(cell.get(), 1);
        const auto s = d.step(one);
        check_step(one, s);
        out.body.append(s.data.data(), s.data.size());
        out.consumed += s.consumed;
        if (s.status != parse_status::partial) {
            out.status = s.status;
            break;
        }
    }
    return out;
}

/// check_chunked: decodes in three ways and compares; returns the whole decoding.
inline decoded check_chunked(std::string_view in, std::uint64_t h) {
    const decoded whole = decode_whole(in);
    const decoded split = decode_in_place(in, in.empty() ? 0 : static_cast<std::size_t>(h % (in.size() + 1)));
    const decoded bytes = decode_bytewise(in);
    RS_FUZZ_CHECK(whole.status == split.status && whole.status == bytes.status);
    RS_FUZZ_CHECK(whole.body == split.body && whole.body == bytes.body);
    if (whole.status != parse_status::error) {
        RS_FUZZ_CHECK(whole.consumed == split.consumed && whole.consumed == bytes.consumed);
    }
    if (whole.status == parse_status::partial) RS_FUZZ_CHECK(whole.consumed == in.size());
    if (whole.status == parse_status::complete) {
        // The last chunk, any trailers and the empty line: always ends in CRLF CRLF.
        RS_FUZZ_CHECK(whole.consumed >= 5 && whole.consumed <= in.size());
        RS_FUZZ_CHECK(in.substr(whole.consumed - 4, 4) == "\r\n\r\n");
        RS_FUZZ_CHECK(whole.body.size() + 5 <= whole.consumed);

        // Round trip: the body, re-chunked plainly at input-derived sizes, decodes back.
        std::string enc;
        std::string_view body = whole.body;
        std::uint64_t g = h | 1;
        static const char hex[] = "0123456789abcdef";
        while (!body.empty()) {
            const std::size_t len = std::min<std::size_t>(body.size(), 1 + g % 37);
            g = g * 6364136223846793005ull + 1442695040888963407ull;
            std::string size_hex;
            for (std::size_t v = len; v != 0; v >>= 4) size_hex.insert(size_hex.begin(), hex[v & 15]);
            enc += size_hex + "\r\n";
            enc.append(body.data(), len);
            enc += "\r\n";
            body.remove_prefix(len);
        }
        enc += "0\r\n\r\n";
        const exact_copy e(enc);
        const decoded again = decode_whole(e.view());
        RS_FUZZ_CHECK(again.status == parse_status::complete && again.consumed == enc.size());
        RS_FUZZ_CHECK(again.body == whole.body);
    }
    return whole;
}

/// parse_checked: parses buf with the default (server) limits, and with small and
/// input-derived ones, checking each result, the prefixes, and that tighter limits only
/// add 414 or 431. Returns the default-limit result (in req).
inline parse_result parse_checked(std::string_view buf, rs::request& req, std::uint64_t h) {
    const parse_limits defaults;
    parse_limits small;
    small.max_request_line = 64;
    small.max_header_bytes = 256;
    small.max_headers = 4;
    parse_limits derived;
    derived.max_request_line = 1 + static_cast<std::size_t>(h % 128);
    derived.max_header_bytes = 1 + static_cast<std::size_t>((h >> 8) % 512);
    derived.max_headers = static_cast<std::size_t>((h >> 20) % 9);

    const parse_result r = rs::detail::parse_request(buf, req, defaults);
    check_result(buf, req, r, defaults);
    check_prefixes(buf, req, r, defaults);
    for (const parse_limits& l : {small, derived}) {
        rs::request tight_req;
        const parse_result t = rs::detail::parse_request(buf, tight_req, l);
        check_result(buf, tight_req, t, l);
        check_prefixes(buf, tight_req, t, l);
        switch (t.status) {
            case parse_status::complete:
                RS_FUZZ_CHECK(same(buf.data(), req, r, buf.data(), tight_req, t));
                break;
            case parse_status::partial:
                RS_FUZZ_CHECK(r.status == parse_status::partial);
                break;
            case parse_status::error:
                if (r.status == parse_status::error) {
                    RS_FUZZ_CHECK(t.error_status == r.error_status || limit_status(t.error_status));
                } else {
                    RS_FUZZ_CHECK(limit_status(t.error_status));
                }
                break;
        }
    }
    // The same buffer parsed again into a request that held another one: same result.
    rs::request reused = req;
    const parse_result again = rs::detail::parse_request(buf, reused, defaults);
    RS_FUZZ_CHECK(same(buf.data(), req, r, buf.data(), reused, again));
    return r;
}

/// one_input: the bytes of one connection, request after request, as the server reads them.
inline void one_input(std::string_view input) {
    const std::uint64_t h = hash(input);
    std::size_t offset = 0;
    for (int requests = 0; requests < 8 && offset < input.size(); ++requests) {
        const std::string_view buf = input.substr(offset);
        rs::request req;
        const parse_result r = parse_checked(buf, req, h + static_cast<std::uint64_t>(requests));
        if (r.status != parse_status::complete) return;

        rs::detail::request_framing f;
        if (frame_check(req, f) != 0) return;
        const std::string_view rest = buf.substr(r.head_bytes);
        std::size_t body_bytes = 0;
        switch (f.kind) {
            case rs::detail::request_framing::none:
                break;
            case rs::detail::request_framing::content_length:
                if (f.length > rest.size()) return;
                body_bytes = f.length;
                break;
            case rs::detail::request_framing::chunked: {
                const decoded d = check_chunked(rest, h >> 7);
                if (d.status != parse_status::complete) return;
                body_bytes = d.consumed;
                break;
            }
        }
        RS_FUZZ_CHECK(body_bytes <= rest.size());
        offset += r.head_bytes + body_bytes;
        RS_FUZZ_CHECK(offset <= input.size());
    }
}

}  // namespace rs_fuzz

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    rs_fuzz::one_input(std::string_view(reinterpret_cast<const char*>(data), size));
    return 0;
}
