// libFuzzer target for the WebSocket frame decoder: detail::ws_decoder (and
// detail::utf8_validator).
//
// Build (what .ci/fuzz does):
//   clang++ -std=c++17 -O1 -g -fsanitize=fuzzer,address,undefined
//           -fno-sanitize-recover=undefined -I. tests/fuzz/fuzz_websocket.cpp -o fuzz_websocket
// (or: FUZZ_TARGETS=websocket .ci/fuzz SECONDS)
//
// Like fuzz_multipart.cpp it defines LLVMFuzzerTestOneInput and no main:
// tests/test_websocket_frames.cpp includes it (with RS_FUZZ_THROW: a broken invariant
// throws instead of aborting), replays tests/fuzz/corpus_websocket with it and checks
// utf8_status() below.
//
// Input: byte 0 picks max_message (of four: 2^64-1, 0, 100, 1000) and where the stream is
// cut in two; the rest is what a client sends on one connection. Invariants:
//   - the stream fed whole, cut in two, and one byte at a time gives the same events, and
//     the same kept() and in_message() at the end. At every decode() the caller's buffer
//     (what the decoder kept, then the bytes that arrived) is a heap block of exactly its
//     size, so ASan sees a read past the end;
//   - the views of an event lie inside the buffer; the payloads of all events together are
//     never more than the stream; need_more means that no whole frame is left (a second
//     decode() says need_more again, and compact() then drops nothing);
//   - after an error every decode() returns the same error, and nothing else comes;
//   - a text message is valid UTF-8, by a code-point decoder of its own (utf8_status),
//     which utf8_validator agrees with on the raw stream too, fed whole and cut in two;
//   - no message is longer than max_message, and kept() never is; control payloads are at
//     most 125 bytes, close codes valid;
//   - the events, kept() and in_message() are those of a plain model that reads the
//     stream frame by frame (RFC 6455 5.2-5.5), unmasking a copy and assembling each
//     message in a string of its own.
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

namespace rs_fuzz_websocket {

namespace rs = restartable_server;
using rs::detail::ws_decoder;
using kind = ws_decoder::kind;

[[noreturn]] inline void fail(const char* what, int line) {
#ifdef RS_FUZZ_THROW
    throw std::runtime_error(std::string("fuzz_websocket.cpp:") + std::to_string(line) +
                             ": invariant broken: " + what);
#else
    std::fprintf(stderr, "fuzz_websocket.cpp:%d: invariant broken: %s\n", line, what);
    std::fflush(stderr);
    std::abort();
#endif
}
#define RS_CHECK(cond)                          \
    do {                                        \
        if (!(cond)) fail(#cond, __LINE__);     \
    } while (false)

/// utf8_status: 0 when s is valid UTF-8, 1 when it is valid but for a character that the
/// end cuts short (some bytes could still complete it), 2 when no bytes can make it valid.
/// By code points (RFC 3629 3): each sequence decoded, then refused when overlong, a
/// surrogate or past U+10FFFF; a sequence cut short is tried with the continuations that
/// could follow.
inline int utf8_status(std::string_view s) {
    static constexpr std::uint32_t least[4] = {0, 0x80, 0x800, 0x10000};  // by continuation bytes
    std::size_t i = 0;
    while (i < s.size()) {
        const unsigned lead = static_cast<unsigned char>(s[i]);
        const std::size_t more = lead < 0x80 ? 0 : lead < 0xc0 ? 4 : lead < 0xe0 ? 1 : lead < 0xf0 ? 2 : lead < 0xf8 ? 3 : 4;
        if (more == 4) return 2;  // a continuation byte first, or F8-FF
        if (s.size() - i <= more) {
            // Cut short. Only the first two bytes of a sequence decide whether it can be valid
            // (its range of code points); the rest need only be continuation bytes.
            const std::string cut(s.substr(i));
            for (unsigned second = 0x80; second <= 0xbf; ++second) {
                std::string whole = cut;
                if (whole.size() == 1) whole += static_cast<char>(second);
                whole.resize(more + 1, '\x80');
                if (utf8_status(whole) == 0) return 1;
                if (cut.size() > 1) break;  // its second byte is given
            }
            return 2;
        }
        std::uint32_t cp = lead & (0x7fu >> more);
        for (std::size_t k = 1; k <= more; ++k) {
            const unsigned b = static_cast<unsigned char>(s[i + k]);
            if ((b & 0xc0) != 0x80) return 2;
            cp = cp << 6 | (b & 0x3f);
        }
        if (cp < least[more] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 2;
        i += more + 1;
    }
    return 0;
}

/// event: one result of decode() other than need_more, with its data copied.
struct event {
    kind what = kind::need_more;
    std::string data;
    bool text = false;
    unsigned code = 0;
    bool operator==(const event& o) const {
        return what == o.what && data == o.data && text == o.text && code == o.code;
    }
};

/// outcome: the events of a stream, and the decoder's state after it.
struct outcome {
    std::vector<event> events;
    std::size_t kept = 0;
    bool in_message = false;
    bool operator==(const outcome& o) const {
        return events == o.events && kept == o.kept && in_message == o.in_message;
    }
};

/// inside: whether the view v lies within buf (an empty view anywhere counts).
inline bool inside(std::string_view v, std::string_view buf) {
    return v.empty() || (v.data() >= buf.data() && v.data() + v.size() <= buf.data() + buf.size());
}

/// model: the outcome of a stream read frame by frame as RFC 6455 5.2-5.5 says, the checks
/// in the order the header's bytes come in (so a frame cut short fails as early as the
/// decoder says it may): no buffer management, a copy of each payload unmasked, the
/// message assembled in a string.
inline outcome model(std::string_view in, std::uint64_t max_message) {
    outcome out;
    std::string message;
    bool open = false, text = false;
    std::size_t at = 0;
    const auto error = [&](unsigned code) {
        out.events.push_back({kind::error, {}, false, code});
        out.kept = 0;
        out.in_message = false;
        return out;
    };
    const auto byte = [&](std::size_t i) -> std::uint64_t { return static_cast<unsigned char>(in[at + i]); };
    for (;;) {
        out.kept = message.size();
        out.in_message = open;
        const std::size_t avail = in.size() - at;
        if (avail < 2) return out;
        const bool fin = byte(0) & 0x80, masked = byte(1) & 0x80;
        const unsigned rsv = (byte(0) >> 4) & 7, opcode = byte(0) & 15;
        const bool control = opcode >= 8;
        if (rsv != 0 || !masked) return error(1002);
        if (control && (opcode > 10 || !fin || (byte(1) & 0x7f) > 125)) return error(1002);
        if (!control && opcode > 2) return error(1002);
        if (!control && opcode == 0 && !open) return error(1002);
        if (!control && opcode != 0 && open) return error(1002);
        std::uint64_t length = byte(1) & 0x7f;
        std::size_t length_bytes = 0;
        if (length == 126) length_bytes = 2;
        if (length == 127) length_bytes = 8;
        if (avail < 2 + length_bytes) return out;
        if (length_bytes != 0) {
            length = 0;
            for (std::size_t i = 0; i < length_bytes; ++i) length = length * 256 + byte(2 + i);
            if (length_bytes == 2 && length < 126) return error(1002);
            if (length_bytes == 8 && (length < 65536 || length >= (std::uint64_t{1} << 63))) return error(1002);
        }
        if (!control && message.size() + length > max_message) return error(1009);
        const std::size_t head = 2 + length_bytes + 4;
        if (avail < head || avail - head < length) return out;
        std::string payload(in.substr(at + head, static_cast<std::size_t>(length)));
        for (std::size_t i = 0; i < payload.size(); ++i)
            payload[i] = static_cast<char>(payload[i] ^ in[at + head - 4 + i % 4]);
        at += head + payload.size();
        if (opcode == 8) {
            if (payload.empty()) {
                out.events.push_back({kind::close, {}, false, 1005});
                continue;
            }
            if (payload.size() == 1) return error(1002);
            const unsigned code = static_cast<unsigned char>(payload[0]) * 256u + static_cast<unsigned char>(payload[1]);
            if (!rs::detail::ws_close_code_valid(code)) return error(1002);
            if (utf8_status(payload.substr(2)) != 0) return error(1007);
            out.events.push_back({kind::close, payload.substr(2), false, code});
        } else if (control) {
            out.events.push_back({opcode == 9 ? kind::ping : kind::pong, payload, false, 0});
        } else {
            if (!open) text = opcode == 1;
            open = true;
            message += payload;
            if (text && utf8_status(message) == 2) return error(1007);
            if (!fin) continue;
            if (text && utf8_status(message) != 0) return error(1007);
            out.events.push_back({kind::message, message, text, 0});
            message.clear();
            open = false;
        }
    }
}

/// run: feeds stream to a decoder the way the engine does, in pieces that end at cuts
/// (ascending), checking the decoder's contract on the way.
inline outcome run(std::string_view stream, std::uint64_t max_message, const std::vector<std::size_t>& cuts) {
    ws_decoder d(max_message);
    outcome out;
    std::unique_ptr<char[]> buf;
    std::size_t size = 0, at = 0, payload = 0;
    bool failed = false;
    std::vector<std::size_t> ends = cuts;
    ends.push_back(stream.size());
    for (const std::size_t end : ends) {
        // What arrived joins the buffer: a new block of exactly the bytes it now holds.
        const std::size_t grown = size + (end - at);
        std::unique_ptr<char[]> block(new char[grown == 0 ? 1 : grown]);
        if (size != 0) std::memcpy(block.get(), buf.get(), size);
        if (end != at) std::memcpy(block.get() + size, stream.data() + at, end - at);
        buf = std::move(block);
        size = grown;
        at = end;
        for (;;) {
            const ws_decoder::result r = d.decode(buf.get(), size);
            RS_CHECK(inside(r.data, std::string_view(buf.get(), size)));
            if (failed) {  // the same error again, and nothing else
                RS_CHECK(r.what == kind::error && r.code == out.events.back().code);
                size = d.compact(buf.get(), size);
                RS_CHECK(size == 0);
                break;
            }
            if (r.what == kind::need_more) {
                RS_CHECK(r.data.empty() && !r.text && r.code == 0);
                size = d.compact(buf.get(), size);
                RS_CHECK(d.kept() <= size);
                RS_CHECK(d.decode(buf.get(), size).what == kind::need_more);  // no whole frame is left
                RS_CHECK(d.compact(buf.get(), size) == size);
                break;
            }
            payload += r.data.size();
            RS_CHECK(payload <= stream.size());
            RS_CHECK(!r.text || r.what == kind::message);
            RS_CHECK(r.code == 0 || r.what == kind::close || r.what == kind::error);
            switch (r.what) {
                case kind::message:
                    RS_CHECK(r.data.size() <= max_message);
                    RS_CHECK(!r.text || utf8_status(r.data) == 0);
                    RS_CHECK(!d.in_message() && d.kept() == 0);
                    break;
                case kind::ping:
                case kind::pong: RS_CHECK(r.data.size() <= 125); break;
                case kind::close:
                    RS_CHECK(r.code == 1005 ? r.data.empty() : rs::detail::ws_close_code_valid(r.code));
                    RS_CHECK(r.data.size() <= 123 && utf8_status(r.data) == 0);
                    break;
                case kind::error:
                    RS_CHECK(r.code == 1002 || r.code == 1007 || r.code == 1009);
                    RS_CHECK(r.data.empty());
                    failed = true;
                    break;
                case kind::need_more: break;
            }
            out.events.push_back({r.what, std::string(r.data), r.text, r.code});
            size = d.compact(buf.get(), size);
            RS_CHECK(d.kept() <= size && d.kept() <= max_message);
            RS_CHECK(d.kept() == 0 || d.in_message());
        }
    }
    out.kept = d.kept();
    out.in_message = d.in_message();
    return out;
}

inline int one_input(const std::uint8_t* data, std::size_t size) {
    static constexpr std::uint64_t max_messages[4] = {~std::uint64_t{0}, 0, 100, 1000};
    if (size < 1) return 0;
    const std::uint64_t max_message = max_messages[data[0] & 3];
    const std::string_view stream(reinterpret_cast<const char*>(data) + 1, size - 1);

    const outcome whole = run(stream, max_message, {});
    RS_CHECK(whole == model(stream, max_message));
    const std::size_t cut = (static_cast<std::size_t>(data[0] >> 2) * 977) % (stream.size() + 1);
    RS_CHECK(run(stream, max_message, {cut}) == whole);
    std::vector<std::size_t> bytes;
    for (std::size_t i = 1; i < stream.size(); ++i) bytes.push_back(i);
    RS_CHECK(run(stream, max_message, bytes) == whole);

    // The validator against utf8_status on the raw stream, fed whole and cut in two.
    const int status = utf8_status(stream);
    rs::detail::utf8_validator v;
    RS_CHECK(v.feed(stream) == (status != 2));
    RS_CHECK(v.complete() == (status == 0));
    v.reset();
    const bool first = v.feed(stream.substr(0, cut));
    RS_CHECK(v.feed(stream.substr(cut)) == (status != 2));
    RS_CHECK(first || status == 2);
    RS_CHECK(v.complete() == (status == 0));
    return 0;
}

}  // namespace rs_fuzz_websocket

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    return rs_fuzz_websocket::one_input(data, size);
}
