// libFuzzer target for the multipart/form-data parser: multipart_parser (and
// multipart_boundary on a Content-Type made from the input).
//
// Build (what .ci/fuzz does):
//   clang++ -std=c++17 -O1 -g -fsanitize=fuzzer,address,undefined
//           -fno-sanitize-recover=undefined -I. tests/fuzz/fuzz_multipart.cpp -o fuzz_multipart
// (or: FUZZ_TARGETS=multipart .ci/fuzz SECONDS)
//
// Like fuzz_request.cpp it defines LLVMFuzzerTestOneInput and no main: tests/test_forms.cpp
// includes it (with RS_FUZZ_THROW: a broken invariant throws instead of aborting) and
// replays tests/fuzz/corpus_multipart with it.
//
// Input: byte 0 picks the boundary (of four, 1 to 38 characters, one with a space) and
// where the body is cut in two; byte 1 the limits (0: the defaults; else 1 to 16 parts and
// a part head of 16 to 976 bytes); the rest is the body. Invariants:
//   - the body fed whole, cut in two, and one byte at a time (each piece in a heap block
//     of exactly its size, so ASan sees a read past the end) gives the same parts, data,
//     part ends and errors: where a read ends never matters;
//   - data pieces are never empty but at a part's end, which comes once per part, after
//     its head; heads come in order (index); parts() never passes max_parts;
//   - the data handed over is never more than the body;
//   - done() and finish() agree; after an error the handlers are not called again;
//   - a body that parsed cleanly, written out again from what was reported (its heads'
//     fields as "name: value", its data, the delimiters), parses to the same result.
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

namespace rs_fuzz_multipart {

namespace rs = restartable_server;

[[noreturn]] inline void fail(const char* what, int line) {
#ifdef RS_FUZZ_THROW
    throw std::runtime_error(std::string("fuzz_multipart.cpp:") + std::to_string(line) +
                             ": invariant broken: " + what);
#else
    std::fprintf(stderr, "fuzz_multipart.cpp:%d: invariant broken: %s\n", line, what);
    std::fflush(stderr);
    std::abort();
#endif
}
#define RS_CHECK(cond)                          \
    do {                                        \
        if (!(cond)) fail(#cond, __LINE__);     \
    } while (false)

struct part_seen {
    rs::form_part head;
    std::string data;
    bool ended = false;
};

struct outcome {
    std::vector<part_seen> parts;
    std::error_code feed_error, finish_error;
    bool done = false;
    bool operator==(const outcome& o) const {
        if (parts.size() != o.parts.size() || feed_error != o.feed_error || finish_error != o.finish_error ||
            done != o.done)
            return false;
        for (std::size_t i = 0; i < parts.size(); ++i) {
            const part_seen &a = parts[i], &b = o.parts[i];
            if (a.head.name != b.head.name || a.head.filename != b.head.filename ||
                a.head.has_filename != b.head.has_filename || a.head.content_type != b.head.content_type ||
                a.head.headers != b.head.headers || a.data != b.data || a.ended != b.ended)
                return false;
        }
        return true;
    }
};

/// run: parses body fed in pieces that end at cuts (ascending), checking the handlers' contract.
inline outcome run(std::string_view body, std::string_view boundary, const rs::multipart_limits& limits,
                   const std::vector<std::size_t>& cuts) {
    outcome out;
    bool stopped = false;  // an error was returned: no handler may run again
    std::size_t data_bytes = 0;
    rs::multipart_parser p(
        boundary,
        [&](const rs::form_part& head) {
            RS_CHECK(!stopped);
            RS_CHECK(out.parts.empty() || out.parts.back().ended);
            RS_CHECK(head.index == out.parts.size());
            out.parts.push_back({head, {}, false});
            return true;
        },
        [&](const rs::form_part& head, std::string_view data) {
            RS_CHECK(!stopped);
            RS_CHECK(!out.parts.empty() && !out.parts.back().ended);
            RS_CHECK(head.index + 1 == out.parts.size());
            if (data.empty()) {
                out.parts.back().ended = true;
            } else {
                out.parts.back().data += data;
                data_bytes += data.size();
                RS_CHECK(data_bytes <= body.size());
            }
            return true;
        },
        limits);
    std::size_t at = 0;
    std::vector<std::size_t> ends = cuts;
    ends.push_back(body.size());
    for (const std::size_t end : ends) {
        const std::size_t n = end - at;
        std::unique_ptr<char[]> piece(new char[n == 0 ? 1 : n]);
        if (n) std::memcpy(piece.get(), body.data() + at, n);
        const std::error_code ec = p.feed(std::string_view(piece.get(), n));
        if (ec) {
            RS_CHECK(!out.feed_error || out.feed_error == ec);
            out.feed_error = ec;
            stopped = true;
        } else {
            RS_CHECK(!out.feed_error);
        }
        const std::size_t max_parts = limits.max_parts != 0 ? limits.max_parts : rs::multipart_limits().max_parts;
        RS_CHECK(p.parts() <= max_parts);
        at = end;
    }
    out.done = p.done();
    out.finish_error = p.finish();
    stopped = true;
    RS_CHECK(p.finish() == out.finish_error);
    if (out.feed_error) RS_CHECK(out.finish_error == out.feed_error);
    RS_CHECK(out.done == !out.finish_error);
    if (out.done)
        for (const part_seen& s : out.parts) RS_CHECK(s.ended);
    RS_CHECK(p.parts() == out.parts.size());
    return out;
}

inline int one_input(const std::uint8_t* data, std::size_t size) {
    static const char* const boundaries[4] = {"b", "AaB03x", "simple boundary", "----WebKitFormBoundary7MA4YWxkTrZu"};
    if (size < 2) return 0;
    const std::string_view boundary = boundaries[data[0] & 3];
    rs::multipart_limits limits;
    if (data[1] != 0) {
        limits.max_parts = 1 + (data[1] & 15);
        limits.max_part_header_bytes = 16 + 64 * (data[1] >> 4);
    }
    const std::string_view body(reinterpret_cast<const char*>(data) + 2, size - 2);

    // The boundary, as multipart_boundary() reads it from a Content-Type.
    std::string parsed;
    RS_CHECK(!rs::multipart_boundary("multipart/form-data; boundary=\"" + std::string(boundary) + "\"", parsed));
    RS_CHECK(parsed == boundary);

    const outcome whole = run(body, boundary, limits, {});
    const std::size_t cut = body.empty() ? 0 : (static_cast<std::size_t>(data[0] >> 2) * 977) % (body.size() + 1);
    RS_CHECK(run(body, boundary, limits, {cut}) == whole);
    std::vector<std::size_t> bytes;
    for (std::size_t i = 1; i < body.size(); ++i) bytes.push_back(i);
    RS_CHECK(run(body, boundary, limits, bytes) == whole);

    if (whole.done) {  // written out again, it parses the same
        std::string again;
        for (const part_seen& s : whole.parts) {
            again += "--" + std::string(boundary) + "\r\n";
            for (const auto& [name, value] : s.head.headers) again += name + ":" + value + "\r\n";  // never longer
            again += "\r\n" + s.data + "\r\n";
        }
        again += "--" + std::string(boundary) + "--";
        const outcome rewritten = run(again, boundary, limits, {});
        RS_CHECK(rewritten == whole);
    }
    return 0;
}

}  // namespace rs_fuzz_multipart

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    return rs_fuzz_multipart::one_input(data, size);
}
