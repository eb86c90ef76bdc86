// libFuzzer target for the server's connection state machine (detail::run: serve, step,
// read_input, parse_head, collect_body, handle_streamed, respond, flush, linger), driven
// through real sockets: real servers in this process, one client connection per input
// (and two probes).
//
// Build (what .ci/fuzz does):
//   clang++ -std=c++17 -O1 -g -fsanitize=fuzzer,address,undefined
//           -fno-sanitize-recover=undefined -I. tests/fuzz/fuzz_connection.cpp -o fuzz_connection
// (or just: .ci/fuzz SECONDS, which runs this target and fuzz_request)
//
// The file defines LLVMFuzzerTestOneInput and no main, so it also compiles as a plain
// object: tests/test_fuzz_connection.cpp includes it and replays the seed corpora with it.
// A broken invariant prints what broke and aborts (libFuzzer then saves the input as a
// crash); with RS_FUZZ_THROW defined it throws std::runtime_error instead, for the replay.
//
// An input is two control bytes, then the bytes a client sends on one connection:
//   byte 0  bit 0    the server: 2 worker threads (else 0: the control thread serves)
//           bit 1    the transport: TCP on 127.0.0.1 (else a Unix socket)
//           bits 2-3 how the bytes are cut into send() calls: 0 one send; 1 pieces of
//                    (byte 1 % 16) + 1 bytes; 2 a piece per line, cut after each LF (byte 1
//                    even) or between CR and LF (odd); 3 1..16 cut points derived from byte 1.
//                    At most 64 pieces: the last one holds the rest.
//           bit 4    after each piece, wait until the server has read it (Unix: SIOCOUTQ
//                    is 0, at most 5 ms a piece, 100 ms an input; TCP: 200 us a piece), so
//                    each cut tends to be a read of its own
//           bit 5    the client reads nothing until it has sent everything
//           bit 6    a small receive buffer (SO_RCVBUF; on TCP the server's writes block)
//           bit 7    abort: after sending, close with a reset (SO_LINGER 0) and check only
//                    that the server goes on serving
//   byte 1  the cut parameter
// The client connects, sends the pieces, shuts its side down (SHUT_WR) and reads until EOF.
// Seed files (tests/fuzz/corpus, tests/fuzz/corpus_connection) are plain request streams;
// .ci/fuzz and the replay test put control bytes in front of them.
//
// Invariants:
//   - the server ends every connection once the client has ended its side: EOF within 3 s
//     (its own timeouts are 10 s, so one that waits for a timeout is caught; in the replay
//     test, which may share a loaded machine: 10 s and 30 s), never a reset
//     (ECONNRESET on recv, EPIPE on send) before its one-second linger could have run out;
//   - what arrives is exactly what a model of the server predicts for the stream. The model
//     walks the stream the way run::parse_head / collect_body / handle_streamed do, using
//     the parser and the framing rules of the header (parse_request, frame_request,
//     chunked_decoder, wants_keep_alive: those are fuzzed by fuzz_request), and says per
//     request: no response (the head or a buffered body never ends), or the status, the
//     body (exact: /echo gives the decoded body back, /count its length, errors their
//     reason phrase), no body for HEAD (with the Content-Length of the body it would have),
//     the framing (Content-Length; chunked with a last chunk for a stream; to EOF for a
//     stream to HTTP/1.0), Connection (close / keep-alive / absent), Allow on a 405, and
//     where the next request begins. So: well-formed HTTP/1.1 responses, one per request,
//     statuses from the set the server can produce (408 never: no timeout may strike),
//     nothing after a "Connection: close", nothing after the last request.
//     What depends on timing is accepted either way: an interim "100 Continue" before the
//     answer to a request with "Expect: 100-continue" on a known route; for such a request
//     on an unknown route, an early 404/405 with "Connection: close" (the server answers
//     before the body when it has not all arrived); for a head the parser rejects, 414 or
//     431 (limits seen on a prefix, see fuzz_request), or no answer at all when the error
//     comes after the last line end (the server parses a head once a line has ended).
//   - the server goes on serving: a GET /hello on a second connection, made from another
//     thread while the input's connection is served, and one on a fresh connection after
//     it, each get their 200; every 256 inputs no descriptor has leaked (within 5 s of
//     settling).
#include "restartable_server.hpp"

#include <fcntl.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <dirent.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace rs_fuzz_conn {

namespace rs = restartable_server;
using rs::detail::parse_status;
using steady = std::chrono::steady_clock;

[[noreturn]] inline void fail(const std::string& what, int line) {
#ifdef RS_FUZZ_THROW
    throw std::runtime_error("fuzz_connection.cpp:" + std::to_string(line) + ": invariant broken: " + what);
#else
    std::fprintf(stderr, "fuzz_connection.cpp:%d: invariant broken: %s\n", line, what.c_str());
    std::fflush(stderr);
    std::abort();
#endif
}

/// RS_CONN_CHECK: cond must hold; what (a std::string expression) is built only on failure.
#define RS_CONN_CHECK(cond, what) \
    ((cond) ? static_cast<void>(0) : ::rs_fuzz_conn::fail(std::string(#cond " -- ") + (what), __LINE__))

// ------------------------------------------------------------------ the servers --

inline constexpr std::size_t max_request_line = 512;
inline constexpr std::size_t max_header_bytes = 2048;
inline constexpr std::size_t max_headers = 20;
inline constexpr std::size_t max_body = 8192;

/// patience: how long the client waits for the server's EOF (or for it to take bytes).
/// The server's own timeouts are longer, so one it waits for is a finding, not a pass.
#ifdef RS_FUZZ_THROW
inline constexpr std::chrono::seconds patience{10};  // the replay test: maybe a loaded machine
inline constexpr std::chrono::seconds server_timeouts{30};
#else
inline constexpr std::chrono::seconds patience{3};
inline constexpr std::chrono::seconds server_timeouts{10};
#endif

inline const std::string& hello_body() {
    static const std::string s = "Hello, fuzzer!\n";
    return s;
}
inline constexpr std::string_view sse_pieces[] = {"data: one\n\n", "", "data: two\n\n"};
inline const std::string& sse_body() {
    static const std::string s = std::string(sse_pieces[0]) + std::string(sse_pieces[2]);
    return s;
}
/// big_body: larger than a socket buffer, so the response waits for EPOLLOUT (the
/// "writing" state); a pattern, so a byte sent twice or skipped shows.
inline const std::string& big_body() {
    static const std::string s = [] {
        std::string b(100000, '\0');
        for (std::size_t i = 0; i < b.size(); ++i) b[i] = static_cast<char>('!' + (i * 7 + i / 1000) % 90);
        return b;
    }();
    return s;
}

/// fixture: one running server and how to reach it.
struct fixture {
    rs::server srv;
    bool tcp;
    std::string dir, path;  // a Unix socket: its fresh directory and file

    fixture(bool use_tcp, std::size_t workers) : tcp(use_tcp) {
        rs::options o;
        o.worker_threads = workers;
        o.max_request_line_bytes = max_request_line;
        o.max_header_bytes = max_header_bytes;
        o.max_headers = max_headers;
        o.max_body_bytes = max_body;
        o.max_buffered_bytes = 1024 * 1024;
        // Longer than the client's patience: a connection the server ends only by a
        // timeout (although the client ended its side) is a finding, not a slow pass.
        o.idle_timeout = o.header_timeout = o.body_timeout = o.write_timeout = server_timeouts;
        o.drain_timeout = std::chrono::milliseconds(100);
        if (tcp) {
            o.listener = rs::tcp_listener("127.0.0.1", 0);
        } else {
            const char* tmp = std::getenv("TMPDIR");
            std::string base = tmp && *tmp && std::strlen(tmp) < 60 ? tmp : "/tmp";
            std::string tmpl = base + "/rs-fuzzconn.XXXXXX";
            std::vector<char> buf(tmpl.begin(), tmpl.end());
            buf.push_back('\0');
            if (!::mkdtemp(buf.data())) fail("mkdtemp " + tmpl + ": " + std::strerror(errno), __LINE__);
            dir = buf.data();
            path = dir + "/s";
            o.listener = rs::unix_listener(path);
        }
        srv.set_options(std::move(o));
        srv.get("/hello", [](const rs::request&, rs::response& res) { res.set_content(hello_body(), "text/plain"); });
        srv.post("/echo", [](const rs::request& req, rs::response& res) {
            res.set_content(req.body, "application/octet-stream");
        });
        srv.post(
            "/count",
            [](const rs::request& req, rs::response& res) {
                std::size_t n = 0;
                (void)req.read_body([&n](std::string_view piece) {
                    n += piece.size();
                    return true;
                });
                res.set_content(std::to_string(n), "text/plain");  // on an error the server answers instead
            },
            rs::body_mode::streamed);
        srv.get("/sse", [](const rs::request&, rs::response& res) {
            res.set_stream("text/event-stream", [](rs::body_writer& out) {
                for (std::string_view piece : sse_pieces)
                    if (!out.write(piece) && !piece.empty()) return;
            });
        });
        srv.get("/big", [](const rs::request&, rs::response& res) { res.set_content(big_body(), "text/plain"); });
        srv.get("/throw", [](const rs::request&, rs::response&) { throw std::runtime_error("boom"); });
        std::error_code ec;
        srv.start(ec);
        if (ec) fail("the server did not start: " + ec.message(), __LINE__);
    }
    ~fixture() {
        srv.stop();
        if (!tcp && !dir.empty()) {
            ::unlink(path.c_str());
            ::rmdir(dir.c_str());
        }
    }
    fixture(const fixture&) = delete;
    fixture& operator=(const fixture&) = delete;

    /// connect_client: a connected, non-blocking client socket.
    rs::unique_fd connect_client(bool small_rcvbuf) const {
        rs::unique_fd fd(::socket(tcp ? AF_INET : AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
        if (!fd) fail(std::string("socket: ") + std::strerror(errno), __LINE__);
        if (small_rcvbuf) {
            int size = 1024;  // before connect: the TCP window is set up from it
            ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
        }
        int rc;
        if (tcp) {
            sockaddr_in a{};
            a.sin_family = AF_INET;
            a.sin_port = htons(srv.port());
            a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            rc = rs::detail::retry_eintr([&] { return ::connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a); });
            int one = 1;
            ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        } else {
            sockaddr_un a{};
            a.sun_family = AF_UNIX;
            std::memcpy(a.sun_path, path.data(), path.size());
            rc = rs::detail::retry_eintr([&] { return ::connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a); });
        }
        if (rc != 0) fail(std::string("connect: ") + std::strerror(errno), __LINE__);
        ::fcntl(fd.get(), F_SETFL, ::fcntl(fd.get(), F_GETFL) | O_NONBLOCK);
        return fd;
    }
};

inline int open_fds() {
    DIR* d = ::opendir("/proc/self/fd");
    if (!d) return -1;
    int n = 0;
    while (dirent* e = ::readdir(d))
        if (e->d_name[0] != '.') ++n;
    ::closedir(d);
    return n - 1;  // opendir's own
}

/// fixtures: the four servers (0 or 2 workers; Unix socket or TCP), made at first use.
struct fixtures {
    fixture unix0{false, 0}, unix2{false, 2}, tcp2{true, 2}, tcp0{true, 0};
    int baseline_fds = open_fds();
    fixture& pick(unsigned server) {
        switch (server & 3) {
            case 0: return unix0;
            case 1: return unix2;
            case 2: return tcp0;
            default: return tcp2;
        }
    }
};
inline fixtures& servers() {
    static fixtures f;
    return f;
}

// ---------------------------------------------------------------------- the model --

/// show: bytes for a message, escaped, at most limit of them.
inline std::string show(std::string_view s, std::size_t limit = 160) {
    std::string out = "\"";
    for (std::size_t i = 0; i < s.size() && i < limit; ++i) {
        const auto c = static_cast<unsigned char>(s[i]);
        if (c == '\r') out += "\\r";
        else if (c == '\n') out += "\\n";
        else if (c == '"' || c == '\\') (out += '\\') += static_cast<char>(c);
        else if (c < 0x20 || c >= 0x7f) {
            char hex[8];
            std::snprintf(hex, sizeof hex, "\\x%02x", c);
            out += hex;
        } else out += static_cast<char>(c);
    }
    out += s.size() > limit ? "\"... (" + std::to_string(s.size()) + " bytes)" : "\"";
    return out;
}

enum class route_id { none, hello, echo, count, sse, big, thrower };

struct route_match {
    route_id id = route_id::none;
    int status = 0;          // 404 or 405 when id is none
    std::string_view allow;  // a 405's Allow
};

/// match: the server's routes, as registered in fixture (a GET route answers HEAD too).
inline route_match match(std::string_view method, std::string_view path) {
    struct entry {
        std::string_view path;
        bool get;
        route_id id;
    };
    static constexpr entry table[] = {{"/hello", true, route_id::hello}, {"/sse", true, route_id::sse},
                                      {"/big", true, route_id::big},     {"/throw", true, route_id::thrower},
                                      {"/echo", false, route_id::echo},  {"/count", false, route_id::count}};
    for (const entry& e : table) {
        if (path != e.path) continue;
        if (e.get ? (method == "GET" || method == "HEAD") : method == "POST") return {e.id, 0, {}};
        return {route_id::none, 405, e.get ? "GET, HEAD" : "POST"};
    }
    return {route_id::none, 404, {}};
}

/// expected: what the server answers to the request that begins at some offset.
struct expected {
    bool silent = false;       // no response: the connection ends (a head or body that never ends)
    bool continue_ok = false;  // a "100 Continue" may come first
    int status = 0;
    int alt_status = 0;        // also right: this status with "Connection: close", then the end
    bool parse_error = false;  // a 414 or 431 with "Connection: close" is right too
    bool silent_ok = false;    // no response at all is right too
    bool head = false;         // answers HEAD: no body
    bool keep_alive = false;
    bool http10 = false;
    bool chunked = false;  // a stream to HTTP/1.1
    bool to_eof = false;   // a stream to HTTP/1.0: no framing, the body ends with the connection
    std::string body;
    std::string_view allow;
    std::size_t next = 0;  // where the next request begins (when keep_alive)
};

/// predict: the answer to the request at pos of the stream, as run::parse_head,
/// collect_body and handle_streamed give it once the whole stream has arrived.
inline expected predict(std::string_view stream, std::size_t pos) {
    expected e;
    auto error = [&e](int status) {
        e.status = status;
        e.keep_alive = false;
        e.body = std::string(rs::status_text(status));
        return e;
    };
    while (pos + 1 < stream.size() && stream[pos] == '\r' && stream[pos + 1] == '\n') pos += 2;  // RFC 9112 2.2
    const std::string_view rest = stream.substr(std::min(pos, stream.size()));
    // The server looks at a head once a line has ended (or the limits are reached): bytes
    // with no LF, fewer than that, are never parsed, whatever they hold.
    if (rest.find('\n') == std::string_view::npos && rest.size() < max_request_line + 2 &&
        rest.size() <= max_header_bytes) {
        e.silent = true;
        return e;
    }
    rs::request req;
    const rs::detail::parse_limits limits{max_request_line, max_header_bytes, max_headers};
    const rs::detail::parse_result pr = rs::detail::parse_request(rest, req, limits);
    e.head = req.method == "HEAD";
    if (pr.status == parse_status::partial) {
        e.silent = true;
        return e;
    }
    if (pr.status == parse_status::error) {
        e.parse_error = true;
        // The shortest prefix that is an error already (parsing is incremental: a longer
        // one is too). The server sees the error for sure if a line ends at or after it
        // or the bytes reach a limit; else only if the read that brought the last LF
        // happened to bring the error too, and otherwise the connection just ends.
        std::size_t lo = 1, hi = rest.size();
        while (lo < hi) {
            const std::size_t mid = lo + (hi - lo) / 2;
            rs::request scratch;
            if (rs::detail::parse_request(rest.substr(0, mid), scratch, limits).status == parse_status::error)
                hi = mid;
            else
                lo = mid + 1;
        }
        e.silent_ok = rest.find('\n', hi - 1) == std::string_view::npos && rest.size() < max_request_line + 2 &&
                      rest.size() <= max_header_bytes;
        return error(pr.error_status);
    }
    e.http10 = req.version_minor == 0;
    const bool keep = rs::detail::wants_keep_alive(req);
    rs::detail::request_framing framing;
    if (const int status = rs::detail::frame_request(req, framing)) return error(status);
    if (framing.kind == rs::detail::request_framing::content_length && framing.length > max_body) return error(413);
    const route_match route = match(req.method, req.path);
    const std::size_t body_at = pos + pr.head_bytes;
    const std::string_view raw = stream.substr(body_at);
    const bool has_body = framing.kind != rs::detail::request_framing::none;
    const bool chunked = framing.kind == rs::detail::request_framing::chunked;

    if (route.id == route_id::count && has_body) {  // streamed: body_reader, driven by the handler
        e.continue_ok = framing.expect_continue;
        std::size_t total = 0, used = 0;
        if (!chunked) {
            if (raw.size() < framing.length) return error(400);  // body_incomplete
            total = used = framing.length;
        } else {
            rs::detail::chunked_decoder decoder;
            for (bool done = false; !done;) {
                if (used == raw.size()) return error(400);  // body_incomplete
                const auto r = decoder.step(raw.substr(used));
                used += r.consumed;
                if (r.status == parse_status::error) return error(400);  // malformed_body
                done = r.status == parse_status::complete;
                total += r.data.size();
                if (total > max_body) return error(413);  // body_too_large
            }
        }
        e.status = 200;
        e.body = std::to_string(total);
        e.keep_alive = keep;
        e.next = body_at + used;
        return e;
    }

    // Buffered: the body is collected whole (run::collect_body), then the handler runs.
    e.continue_ok = framing.expect_continue && route.id != route_id::none;
    // Not going to read it: when the body has not all arrived as the head is looked at, the
    // route's 404/405 comes at once, with "Connection: close".
    if (framing.expect_continue && route.id == route_id::none) e.alt_status = route.status;
    std::string body;
    std::size_t end = 0;
    bool whole = true;
    if (!has_body) {
        end = body_at;
    } else if (!chunked) {
        if (raw.size() >= framing.length) {
            body.assign(raw.substr(0, framing.length));
            end = body_at + framing.length;
        } else {
            whole = false;
        }
    } else {
        rs::detail::chunked_decoder decoder;
        std::size_t used = 0;
        for (;;) {
            if (used == raw.size()) {
                whole = false;
                break;
            }
            const auto r = decoder.step(raw.substr(used));
            used += r.consumed;
            body.append(r.data.data(), r.data.size());
            if (body.size() > max_body) return error(413);
            if (r.status == parse_status::error) return error(400);
            if (r.status == parse_status::complete) break;
        }
        end = body_at + used;
    }
    if (!whole) {
        if (e.alt_status != 0) {  // certain now: the body never came whole
            e.alt_status = 0;
            return error(route.status);
        }
        e.silent = true;
        return e;
    }
    e.keep_alive = keep;
    e.next = end;
    e.status = 200;
    switch (route.id) {
        case route_id::none:
            e.status = route.status;
            e.body = std::string(rs::status_text(route.status));
            e.allow = route.allow;
            break;
        case route_id::hello: e.body = hello_body(); break;
        case route_id::echo: e.body = body; break;
        case route_id::count: e.body = "0"; break;  // no body: the handler runs as on a buffered route
        case route_id::big: e.body = big_body(); break;
        case route_id::thrower:
            e.status = 500;
            e.body = std::string(rs::status_text(500));
            break;
        case route_id::sse:
            e.body = sse_body();
            if (e.http10) {
                e.keep_alive = false;
                e.to_eof = true;
            } else {
                e.chunked = true;
            }
            break;
    }
    return e;
}

/// seen: one response as received.
struct seen {
    int status = 0;
    std::string_view reason;
    std::vector<std::pair<std::string_view, std::string_view>> fields;
    std::string body;
    bool has_length = false, chunked = false;
    std::size_t length = 0;

    std::string_view field(std::string_view name) const {
        for (const auto& f : fields)
            if (rs::detail::iequals(f.first, name)) return f.second;
        return {};
    }
    int count(std::string_view name) const {
        int n = 0;
        for (const auto& f : fields) n += rs::detail::iequals(f.first, name) ? 1 : 0;
        return n;
    }
};

inline bool is_status(int s) {
    static constexpr int statuses[] = {100, 200, 400, 404, 405, 408, 413, 414, 417, 431, 500, 501, 503, 505};
    return std::find(std::begin(statuses), std::end(statuses), s) != std::end(statuses);
}

/// read_response: one response from the front of in, framed by its own fields (no body
/// when bodiless: the answer to HEAD). Everything not well-formed is a finding.
inline seen read_response(std::string_view& in, bool bodiless, const std::string& ctx) {
    seen r;
    const std::size_t end = in.find("\r\n\r\n");
    RS_CONN_CHECK(end != std::string_view::npos, ctx + ": a response head that never ends: " + show(in));
    std::string_view head = in.substr(0, end + 2);
    in.remove_prefix(end + 4);
    const std::size_t eol = head.find("\r\n");
    const std::string_view line = head.substr(0, eol);
    head.remove_prefix(eol + 2);
    RS_CONN_CHECK(line.size() > 13 && line.substr(0, 9) == "HTTP/1.1 " && line[12] == ' ',
                  ctx + ": status line " + show(line));
    for (std::size_t i = 9; i < 12; ++i) {
        RS_CONN_CHECK(line[i] >= '0' && line[i] <= '9', ctx + ": status line " + show(line));
        r.status = r.status * 10 + (line[i] - '0');
    }
    r.reason = line.substr(13);
    RS_CONN_CHECK(is_status(r.status), ctx + ": a status the server does not make: " + show(line));
    RS_CONN_CHECK(r.reason == rs::status_text(r.status), ctx + ": reason phrase " + show(line));
    while (!head.empty()) {
        const std::size_t e = head.find("\r\n");
        const std::string_view f = head.substr(0, e);
        head.remove_prefix(e + 2);
        const std::size_t colon = f.find(':');
        RS_CONN_CHECK(colon != std::string_view::npos && colon + 1 < f.size() && f[colon + 1] == ' ',
                      ctx + ": header field " + show(f));
        const std::string_view name = f.substr(0, colon), value = f.substr(colon + 2);
        RS_CONN_CHECK(rs::detail::is_token(name) && rs::detail::is_field_value(value) &&
                          (value.empty() || (value.front() != ' ' && value.back() != ' ')),
                      ctx + ": header field " + show(f));
        r.fields.emplace_back(name, value);
    }
    RS_CONN_CHECK(r.count("Content-Length") <= 1 && r.count("Transfer-Encoding") <= 1 && r.count("Connection") <= 1,
                  ctx + ": repeated framing fields");
    if (r.count("Content-Length") == 1) {
        const std::string_view v = r.field("Content-Length");
        RS_CONN_CHECK(!v.empty() && v.size() <= 9 && v.find_first_not_of("0123456789") == std::string_view::npos,
                      ctx + ": Content-Length " + show(v));
        r.has_length = true;
        for (char c : v) r.length = r.length * 10 + static_cast<std::size_t>(c - '0');
    }
    if (r.count("Transfer-Encoding") == 1) {
        RS_CONN_CHECK(r.field("Transfer-Encoding") == "chunked", ctx + ": Transfer-Encoding");
        r.chunked = true;
    }
    RS_CONN_CHECK(!(r.has_length && r.chunked), ctx + ": both Content-Length and Transfer-Encoding");
    if (r.status < 200) {
        RS_CONN_CHECK(r.fields.empty(), ctx + ": a 1xx response with fields");
        return r;
    }
    RS_CONN_CHECK(r.count("Date") == 1, ctx + ": no Date");
    if (bodiless) return r;
    if (r.chunked) {  // as body_writer writes it: lowercase hex, no leading zeros, no extensions
        for (;;) {
            const std::size_t e = in.find("\r\n");
            RS_CONN_CHECK(e != std::string_view::npos && e > 0 && e <= 8, ctx + ": chunk-size line " + show(in));
            const std::string_view size_line = in.substr(0, e);
            RS_CONN_CHECK(size_line.find_first_not_of("0123456789abcdef") == std::string_view::npos &&
                              (size_line == "0" || size_line.front() != '0'),
                          ctx + ": chunk-size line " + show(size_line));
            std::size_t size = 0;
            for (char c : size_line) size = size * 16 + static_cast<std::size_t>(rs::detail::hex_value(c));
            in.remove_prefix(e + 2);
            if (size == 0) {
                RS_CONN_CHECK(in.substr(0, 2) == "\r\n", ctx + ": no empty line after the last chunk: " + show(in));
                in.remove_prefix(2);
                break;
            }
            RS_CONN_CHECK(in.size() >= size + 2 && in.substr(size, 2) == "\r\n",
                          ctx + ": a chunk cut short: " + show(in));
            r.body.append(in.data(), size);
            in.remove_prefix(size + 2);
        }
    } else if (r.has_length) {
        RS_CONN_CHECK(in.size() >= r.length, ctx + ": a body shorter than its Content-Length " +
                                                 std::to_string(r.length) + ": " + show(in));
        r.body.assign(in.substr(0, r.length));
        in.remove_prefix(r.length);
    } else {  // ends with the connection
        r.body.assign(in);
        in.remove_prefix(in.size());
    }
    return r;
}

/// check_exchange: got (every byte the server sent, up to its EOF) is what the model
/// predicts for stream (every byte the client sent).
inline void check_exchange(std::string_view stream, std::string_view got) {
    std::size_t pos = 0;
    for (int index = 1;; ++index) {
        const expected e = predict(stream, pos);
        const std::string ctx = "response " + std::to_string(index) + " (to the request at byte " +
                                std::to_string(pos) + " of " + std::to_string(stream.size()) + ")";
        static constexpr std::string_view interim = "HTTP/1.1 100 Continue\r\n\r\n";
        if (e.continue_ok && got.substr(0, 12) == interim.substr(0, 12)) {
            RS_CONN_CHECK(got.substr(0, interim.size()) == interim, ctx + ": " + show(got));
            got.remove_prefix(interim.size());
        }
        if (e.silent) {
            RS_CONN_CHECK(got.empty(), ctx + ": none was due, but the server sent " + show(got));
            return;
        }
        if (e.silent_ok && got.empty()) return;
        RS_CONN_CHECK(!got.empty(), ctx + ": " + std::to_string(e.status) + " was due, but the connection ended");
        const std::string_view before = got;
        const seen r = read_response(got, e.head, ctx);
        const std::string where = ctx + ": " + show(before.substr(0, before.size() - got.size()));
        const std::string_view connection = r.field("Connection");
        RS_CONN_CHECK(connection.empty() || connection == "close" || connection == "keep-alive", where);
        const bool closes = connection == "close";
        if (e.alt_status != 0 && r.status == e.alt_status && closes) {  // the early answer
            RS_CONN_CHECK(e.head || r.body == rs::status_text(r.status), where);
            RS_CONN_CHECK(got.empty(), ctx + ": bytes after Connection: close: " + show(got));
            return;
        }
        if (e.parse_error && closes && (r.status == 414 || r.status == 431)) {  // a limit seen on a prefix
            RS_CONN_CHECK(e.head || r.body == rs::status_text(r.status), where);
            RS_CONN_CHECK(got.empty(), ctx + ": bytes after Connection: close: " + show(got));
            return;
        }
        RS_CONN_CHECK(r.status == e.status, ctx + ": expected " + std::to_string(e.status) + ", got " + where);
        if (e.head) {
            if (!e.chunked && !e.to_eof)
                RS_CONN_CHECK(r.has_length && r.length == e.body.size(),
                              ctx + ": HEAD: Content-Length should be " + std::to_string(e.body.size()) + ": " + where);
        } else {
            RS_CONN_CHECK(r.body == e.body, ctx + ": expected the body " + show(e.body) + ", got " + where);
        }
        if (e.chunked) RS_CONN_CHECK(r.chunked, ctx + ": a stream to HTTP/1.1 is chunked: " + where);
        if (e.to_eof) RS_CONN_CHECK(!r.chunked && !r.has_length, ctx + ": a stream to HTTP/1.0: " + where);
        if (!e.chunked && !e.to_eof) RS_CONN_CHECK(r.has_length, ctx + ": no Content-Length: " + where);
        if (!e.allow.empty()) RS_CONN_CHECK(r.field("Allow") == e.allow, ctx + ": Allow: " + where);
        if (!e.keep_alive) {
            RS_CONN_CHECK(closes, ctx + ": Connection: close was due: " + where);
            RS_CONN_CHECK(got.empty(), ctx + ": bytes after Connection: close: " + show(got));
            return;
        }
        RS_CONN_CHECK(connection == (e.http10 ? "keep-alive" : ""), ctx + ": Connection: " + where);
        pos = e.next;
    }
}

// -------------------------------------------------------------------- the client --

/// plan: how one input is sent (see the top of this file).
struct plan {
    unsigned server = 0;
    unsigned cut = 0;
    bool drain = false, read_after = false, small_rcvbuf = false, abort = false;
    unsigned param = 0;
};

inline plan decode_plan(std::uint8_t b0, std::uint8_t b1) {
    plan p;
    p.server = b0 & 3u;
    p.cut = (b0 >> 2) & 3u;
    p.drain = (b0 & 0x10) != 0;
    p.read_after = (b0 & 0x20) != 0;
    p.small_rcvbuf = (b0 & 0x40) != 0;
    p.abort = (b0 & 0x80) != 0;
    p.param = b1;
    return p;
}

/// cut: the stream as the pieces the client sends one by one.
inline std::vector<std::string_view> cut(std::string_view s, const plan& p) {
    constexpr std::size_t max_pieces = 64;
    std::vector<std::size_t> ends;  // where each piece ends
    switch (p.cut) {
        case 1:
            for (std::size_t at = p.param % 16 + 1; at < s.size(); at += p.param % 16 + 1) ends.push_back(at);
            break;
        case 2:
            for (std::size_t at = s.find('\n'); at != std::string_view::npos; at = s.find('\n', at + 1))
                ends.push_back(p.param % 2 == 0 ? at + 1 : at);
            break;
        case 3:
            if (s.size() > 1) {
                std::uint64_t x = (p.param + 1) * 0x9e3779b97f4a7c15ull ^ s.size();
                for (unsigned i = 0; i <= p.param % 16; ++i) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    ends.push_back(1 + static_cast<std::size_t>(x % (s.size() - 1)));
                }
                std::sort(ends.begin(), ends.end());
            }
            break;
        default: break;
    }
    std::vector<std::string_view> out;
    std::size_t from = 0;
    for (std::size_t at : ends) {
        if (out.size() + 1 == max_pieces) break;
        if (at <= from || at >= s.size()) continue;
        out.push_back(s.substr(from, at - from));
        from = at;
    }
    if (from < s.size()) out.push_back(s.substr(from));
    return out;
}

/// talked: how one connection went, as the client saw it.
struct talked {
    std::string got;
    bool eof = false;
    bool timed_out = false;  // no EOF within `patience` of the client's end
    bool stuck = false;      // the server took no bytes for `patience`
    int error = 0;           // errno of a failed recv or send (a reset)
    double error_ms = 0;     // when it was seen, after the connection opened
};

/// talk: one connection: the pieces, then shutdown(SHUT_WR) (or a reset, for abort),
/// then everything up to EOF.
inline talked talk(const fixture& fx, const std::vector<std::string_view>& pieces, const plan& p) {
    talked t;
    const steady::time_point t0 = steady::now();
    auto ms_since = [t0] { return std::chrono::duration<double, std::milli>(steady::now() - t0).count(); };
    const rs::unique_fd fd = fx.connect_client(p.small_rcvbuf);
    std::unique_ptr<char[]> buf(new char[65536]);
    bool done = false;     // EOF or an error was read
    auto take_in = [&] {   // reads what is there, without waiting
        while (!done) {
            const ssize_t n = ::recv(fd.get(), buf.get(), 65536, MSG_DONTWAIT);
            if (n > 0) {
                t.got.append(buf.get(), static_cast<std::size_t>(n));
                RS_CONN_CHECK(t.got.size() < (std::size_t(64) << 20), "the server sent more than 64 MiB");
            } else if (n == 0) {
                t.eof = done = true;
            } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
                return;
            } else if (errno != EINTR) {
                t.error = errno;
                t.error_ms = ms_since();
                done = true;
            }
        }
    };
    bool reading = !p.read_after;
    steady::duration drain_left = std::chrono::milliseconds(100);
    for (std::string_view piece : pieces) {
        while (!piece.empty() && t.error == 0 && !t.stuck) {
            const ssize_t n = ::send(fd.get(), piece.data(), piece.size(), MSG_NOSIGNAL);
            if (n > 0) {
                piece.remove_prefix(static_cast<std::size_t>(n));
            } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                // A client that reads is always right: after a second of waiting, it does.
                if (ms_since() > 1000) reading = true;
                if (steady::now() - t0 > patience) t.stuck = true;
                pollfd pf{fd.get(), static_cast<short>(POLLOUT | (reading && !done ? POLLIN : 0)), 0};
                ::poll(&pf, 1, 10);
                if (reading) take_in();
            } else if (n < 0 && errno != EINTR) {
                t.error = errno;
                t.error_ms = ms_since();
            }
        }
        if (t.error != 0 || t.stuck) break;
        if (reading) take_in();
        if (p.drain && drain_left.count() > 0) {  // until the server has read the piece
            // On a Unix socket SIOCOUTQ counts the bytes the peer has not read yet. On TCP
            // it counts unacknowledged ones (and loopback delays its ACKs): there the client
            // only gives the server 200 us.
            const steady::time_point began = steady::now();
            const steady::time_point until =
                began + (fx.tcp ? steady::duration(std::chrono::microseconds(200))
                                : std::min<steady::duration>(std::chrono::milliseconds(5), drain_left));
            for (int spins = 0;; ++spins) {
                int queued = 1;
                if (!fx.tcp && ::ioctl(fd.get(), SIOCOUTQ, &queued) != 0) break;
                if (queued <= 0 || steady::now() >= until) break;
                if (reading) take_in();
                if (spins < 64)
                    std::this_thread::yield();
                else
                    std::this_thread::sleep_for(std::chrono::microseconds(50));
            }
            drain_left -= steady::now() - began;
        }
    }
    if (p.abort) {
        linger l{1, 0};
        ::setsockopt(fd.get(), SOL_SOCKET, SO_LINGER, &l, sizeof l);
        return t;  // the descriptor closes with a reset
    }
    if (t.error == 0 && !t.stuck) ::shutdown(fd.get(), SHUT_WR);
    const steady::time_point deadline = steady::now() + patience;
    while (!done) {
        take_in();
        if (done) break;
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - steady::now()).count();
        if (left <= 0) {
            t.timed_out = true;
            break;
        }
        pollfd pf{fd.get(), POLLIN, 0};
        ::poll(&pf, 1, static_cast<int>(left));
    }
    return t;
}

/// check_ended: the server ended the connection cleanly. False when a reset came so late
/// that the server's linger time may have run out (a slow machine): then nothing is checked.
inline bool check_ended(const talked& t, const std::string& what) {
    RS_CONN_CHECK(!t.stuck, what + ": the server took no bytes for " + std::to_string(patience.count()) +
                                " s; got " + show(t.got));
    if (t.error != 0) {
        // The server lingers for a second before it closes; a reset before that is a bug.
        RS_CONN_CHECK(t.error_ms >= 900, what + ": the connection failed (" + std::strerror(t.error) + ") after " +
                                            std::to_string(static_cast<int>(t.error_ms)) + " ms; got " + show(t.got));
        return false;
    }
    RS_CONN_CHECK(!t.timed_out, what + ": no EOF within " + std::to_string(patience.count()) +
                                    " s of the client's end; got " + show(t.got));
    RS_CONN_CHECK(t.eof, what + ": no EOF");
    return true;
}

inline constexpr std::string_view probe_request = "GET /hello HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n";

/// probe: a fresh connection gets its GET /hello answered: the server still serves.
inline void probe(const fixture& fx) {
    const talked t = talk(fx, {probe_request}, plan{});
    if (check_ended(t, "probe")) check_exchange(probe_request, t.got);
}

/// side_probe: a GET /hello on a connection of its own, from another thread, while the
/// input's connection is served: two connections at once, so that one's events and its
/// pooled connection object can meet the other's (a stale event for a closed connection
/// whose object a new one took).
class side_probe {
public:
    explicit side_probe(const fixture& fx) : thread_([this, &fx] {
        try {
            result_ = talk(fx, {probe_request}, plan{});
        } catch (...) {
            error_ = std::current_exception();
        }
    }) {}
    ~side_probe() {
        if (thread_.joinable()) thread_.join();
    }
    side_probe(const side_probe&) = delete;
    side_probe& operator=(const side_probe&) = delete;
    /// check: waits for it, then checks it like probe().
    void check() {
        thread_.join();
        if (error_) std::rethrow_exception(error_);
        if (check_ended(result_, "the concurrent probe")) check_exchange(probe_request, result_.got);
    }

private:
    talked result_;
    std::exception_ptr error_;
    std::thread thread_;  // last: it starts once the rest is made
};

/// check_fds: no descriptor leaked: within 5 s (connections still lingering close), the
/// process holds no more than when the servers had started (a little slack for libFuzzer).
inline void check_fds() {
    fixtures& all = servers();
    const steady::time_point until = steady::now() + std::chrono::seconds(5);
    int now = open_fds();
    while (now > all.baseline_fds + 8 && steady::now() < until) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
        now = open_fds();
    }
    RS_CONN_CHECK(now <= all.baseline_fds + 8, std::to_string(now) + " descriptors open, " +
                                                   std::to_string(all.baseline_fds) + " after the servers started");
}

/// one_input: the whole check for one fuzz input (two control bytes, then the stream).
inline void one_input(std::string_view data) {
    const plan p = decode_plan(data.size() > 0 ? static_cast<std::uint8_t>(data[0]) : 0,
                               data.size() > 1 ? static_cast<std::uint8_t>(data[1]) : 0);
    const std::string_view stream = data.substr(std::min<std::size_t>(data.size(), 2));
    fixture& fx = servers().pick(p.server);
    side_probe side(fx);
    const talked t = talk(fx, cut(stream, p), p);
    side.check();
    if (!p.abort && check_ended(t, "the connection")) check_exchange(stream, t.got);
    probe(fx);
    static unsigned inputs = 0;
    if (++inputs % 256 == 0) check_fds();
}

}  // namespace rs_fuzz_conn

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    rs_fuzz_conn::one_input(std::string_view(reinterpret_cast<const char*>(data), size));
    return 0;
}
