// WebSocket in the engine (server::websocket), tested as a demanding user and an attacker
// would, with real sockets on 127.0.0.1: the opening handshake rule by rule (RFC 6455
// 4.2.1) with a raw socket; real clients (Python's websockets, Node's ws) for echo,
// fragments, empty and 16 MiB messages, ping/pong and close codes; hand-written hostile
// frames, each protocol error with its close code; back-pressure (a client that never
// reads, one that sends without reading); handles used from many threads as the
// connection ends and the server stops; stop (1001), restart (1012), a handler that
// throws (1011); many half handshakes and many idle WebSockets against the thread count.
//
// Every wait is on an event or a read with a timeout (never a sleep to synchronise); time
// bounds are only upper bounds with a wide margin, or lower bounds the server must keep.

#include "process.hpp"
#include "ws_client.hpp"

#include <sys/resource.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#ifndef RS_NODE_DIR
#error "RS_NODE_DIR (where npm installs the ws package for the Node client) must be defined"
#endif

namespace {

namespace rs = restartable_server;
using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;
using test::ws_client;
using test::ws_frame;
using test::ws_message;

/// ws_state: what the test server's handlers saw, under one mutex, with a condition
/// variable to wait on. The handlers (echo_handlers) echo every message as it came, but:
///   "close-me"   ws.close(4001, "x")
///   "throw"      throws (the engine closes with 1011)
///   "big:N"      sends a binary message of N bytes
/// and record every open, message and close.
struct ws_state {
    struct closed {
        std::uint64_t id;
        std::uint16_t code;
        std::string reason;
        bool stopping;
    };
    std::mutex m;
    std::condition_variable cv;
    std::vector<rs::websocket> handles;  // in the order of on_open
    std::vector<std::string> paths;      // the handshake's path, same order
    std::vector<closed> closes;
    std::map<std::uint64_t, int> close_count;  // on_close calls per WebSocket id
    std::vector<std::string> after_close;      // messages delivered after close() was called
    std::map<std::uint64_t, bool> close_called;
    long messages = 0;
    long refused = 0;  // echo sends that failed with send_buffer_full

    template <class Pred>
    bool wait(Pred pred, std::chrono::milliseconds timeout = 20s) {
        std::unique_lock<std::mutex> lock(m);
        return cv.wait_for(lock, timeout, [&] { return pred(); });
    }
    bool wait_opens(std::size_t n, std::chrono::milliseconds timeout = 20s) {
        return wait([&] { return handles.size() >= n; }, timeout);
    }
    bool wait_closes(std::size_t n, std::chrono::milliseconds timeout = 20s) {
        return wait([&] { return closes.size() >= n; }, timeout);
    }
    rs::websocket handle(std::size_t i) {
        std::lock_guard<std::mutex> lock(m);
        return handles.at(i);
    }
    /// close_of: the on_close record of WebSocket id (code 0 when none yet).
    closed close_of(std::uint64_t id) {
        std::lock_guard<std::mutex> lock(m);
        for (const closed& c : closes)
            if (c.id == id) return c;
        return {id, 0, "", false};
    }
};

rs::websocket_handlers echo_handlers(ws_state& s) {
    rs::websocket_handlers h;
    h.on_open = [&s](rs::websocket& ws, const rs::request& req) {
        {
            std::lock_guard<std::mutex> lock(s.m);
            s.handles.push_back(ws);
            s.paths.emplace_back(req.path);
        }
        s.cv.notify_all();
    };
    h.on_message = [&s](rs::websocket& ws, std::string_view data, bool text) {
        {
            std::lock_guard<std::mutex> lock(s.m);
            ++s.messages;
            if (s.close_called[ws.id()]) s.after_close.emplace_back(data);
        }
        s.cv.notify_all();
        if (text && data == "close-me") {
            {
                std::lock_guard<std::mutex> lock(s.m);
                s.close_called[ws.id()] = true;
            }
            ws.close(4001, "x");
            return;
        }
        if (text && data == "throw") throw std::runtime_error("the handler threw");
        if (text && data.substr(0, 4) == "big:") {
            ws.send_binary(std::string(std::stoul(std::string(data.substr(4))), 'b'));
            return;
        }
        const std::error_code ec = text ? ws.send_text(data) : ws.send_binary(data);
        if (ec == rs::errc::send_buffer_full) {
            std::lock_guard<std::mutex> lock(s.m);
            ++s.refused;
        }
    };
    h.on_close = [&s](rs::websocket& ws, std::uint16_t code, std::string_view reason) {
        {
            std::lock_guard<std::mutex> lock(s.m);
            s.closes.push_back({ws.id(), code, std::string(reason), ws.stopping()});
            ++s.close_count[ws.id()];
        }
        s.cv.notify_all();
    };
    return h;
}

/// ws_options: a test server's options: 127.0.0.1 port 0, short drain.
rs::options ws_options(std::size_t workers = 4) {
    rs::options o = test::local_options(workers);
    o.drain_timeout = 10s;
    return o;
}

/// iequals: ASCII case-insensitive equality.
bool iequals(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i)
        if (std::tolower(static_cast<unsigned char>(a[i])) != std::tolower(static_cast<unsigned char>(b[i]))) return false;
    return true;
}

/// has_token: whether the comma-separated list holds token (case-insensitive).
bool has_token(std::string_view list, std::string_view token) {
    while (!list.empty()) {
        const std::size_t comma = std::min(list.find(','), list.size());
        std::string_view item = list.substr(0, comma);
        while (!item.empty() && item.front() == ' ') item.remove_prefix(1);
        while (!item.empty() && item.back() == ' ') item.remove_suffix(1);
        if (iequals(item, token)) return true;
        list.remove_prefix(std::min(comma + 1, list.size()));
    }
    return false;
}

/// status_kib: a field of /proc/self/status in KiB ("VmRSS"), or -1.
long status_kib(const char* field) {
    std::ifstream f("/proc/self/status");
    std::string line;
    const std::string key = std::string(field) + ":";
    while (std::getline(f, line))
        if (line.rfind(key, 0) == 0) return std::atol(line.c_str() + key.size());
    return -1;
}

/// sysctl_number: the i-th number of a /proc/sys file (tcp_wmem's max is the third).
long sysctl_number(const char* path, int i) {
    std::ifstream f(path);
    long v = -1;
    for (int k = 0; k <= i && (f >> v); ++k) {
    }
    return v;
}

/// raise_fd_limit: the soft RLIMIT_NOFILE raised to at least want (up to the hard limit);
/// false when the hard limit is lower.
bool raise_fd_limit(rlim_t want) {
    rlimit l{};
    if (::getrlimit(RLIMIT_NOFILE, &l) != 0) return false;
    if (l.rlim_cur >= want) return true;
    if (l.rlim_max != RLIM_INFINITY && l.rlim_max < want) return false;
    l.rlim_cur = want;
    return ::setrlimit(RLIMIT_NOFILE, &l) == 0;
}

/// raw_handshake: the response to raw (a whole request) on a fresh connection.
test::http_response raw_handshake(std::uint16_t port, const std::string& raw) {
    ws_client c(port);
    REQUIRE(c.ok());
    REQUIRE(c.send(raw));
    return c.read_head(10s, raw.compare(0, 5, "HEAD ") == 0);
}

/// handshake_with: a handshake for /ws on port whose header lines are exactly lines
/// (each ending in CRLF), Host first.
std::string handshake_with(std::uint16_t port, const std::string& lines, const std::string& method = "GET",
                           const std::string& version = "HTTP/1.1") {
    return method + " /ws " + version + "\r\nHost: 127.0.0.1:" + std::to_string(port) + "\r\n" + lines + "\r\n";
}

const std::string upgrade_lines = "Upgrade: websocket\r\nConnection: Upgrade\r\n";
const std::string key_line = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
const std::string version_line = "Sec-WebSocket-Version: 13\r\n";

/// expect_close: reads frames (pings and pongs skipped) until a close frame, which must
/// carry code; then the server must end the connection.
void expect_close(ws_client& c, std::uint16_t code, bool then_eof = true) {
    ws_message m = c.read_data();
    INFO("frame opcode " << m.opcode << ", payload " << test::printable(m.payload));
    REQUIRE(m.opcode == 8);
    CHECK(m.fin);
    CHECK(!m.masked);
    CHECK(m.close_code() == code);
    if (then_eof) CHECK(c.eof_within(10s));
}

/// script_file: a file under /tmp holding text, removed on destruction.
struct script_file {
    std::string path;
    script_file(const std::string& text, const char* suffix) {
        path = std::string("/tmp/rs_ws_client_") + std::to_string(::getpid()) + "_" +
               std::to_string(reinterpret_cast<std::uintptr_t>(this)) + suffix;
        std::ofstream f(path);
        f << text;
    }
    ~script_file() { std::remove(path.c_str()); }
};

}  // namespace

// ------------------------------------------------------------------ handshake --

TEST_CASE("handshake: each rule of RFC 6455 4.2.1, one check each", "[websocket][handshake]") {
    test::watchdog dog("handshake rules", 120s);
    ws_state s;
    rs::server srv(ws_options());
    srv.websocket("/ws", echo_handlers(s));
    srv.get("/plain", [](const rs::request&, rs::response& res) { res.set_content("plain", "text/plain"); });
    const std::uint16_t port = test::start(srv);
    const std::string all = upgrade_lines + key_line + version_line;

    SECTION("the complete handshake: 101 with the RFC's Sec-WebSocket-Accept") {
        test::http_response r = raw_handshake(port, handshake_with(port, all));
        INFO(r.head);
        CHECK(r.status == 101);
        CHECK(r.header("Sec-WebSocket-Accept") == test::ws_key_accept);
        CHECK(iequals(r.header("Upgrade"), "websocket"));
        CHECK(iequals(r.header("Connection"), "Upgrade"));
        CHECK(r.header("Sec-WebSocket-Protocol").empty());
        CHECK(r.header("Sec-WebSocket-Extensions").empty());
    }
    SECTION("GET only: another method is refused") {
        for (const char* method : {"POST", "PUT", "DELETE"}) {
            INFO(method);
            test::http_response r = raw_handshake(port, handshake_with(port, all + "Content-Length: 0\r\n", method));
            CHECK(r.status == 405);
        }
        // HEAD reaches the GET route, but is no handshake.
        test::http_response r = raw_handshake(port, handshake_with(port, all, "HEAD"));
        CHECK(r.status == 400);
    }
    SECTION("HTTP/1.1 only: HTTP/1.0 is 400") {
        CHECK(raw_handshake(port, handshake_with(port, all, "GET", "HTTP/1.0")).status == 400);
    }
    SECTION("Upgrade: websocket, case-insensitive; another protocol is 426") {
        CHECK(raw_handshake(port, handshake_with(port, "Upgrade: WebSocket\r\nConnection: Upgrade\r\n" + key_line +
                                                           version_line))
                  .status == 101);
        CHECK(raw_handshake(port, handshake_with(port, "Upgrade: WEBSOCKET\r\nConnection: upgrade\r\n" + key_line +
                                                           version_line))
                  .status == 101);
        test::http_response r =
            raw_handshake(port, handshake_with(port, "Upgrade: h2c\r\nConnection: Upgrade\r\n" + key_line + version_line));
        CHECK(r.status == 426);
        CHECK(iequals(r.header("Upgrade"), "websocket"));
    }
    SECTION("Connection: a list that contains upgrade, else 400") {
        CHECK(raw_handshake(port, handshake_with(port, "Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n" +
                                                           key_line + version_line))
                  .status == 101);
        CHECK(raw_handshake(port, handshake_with(port, "Upgrade: websocket\r\nConnection: keep-alive\r\nConnection: "
                                                       "UPGRADE\r\n" + key_line + version_line))
                  .status == 101);
        CHECK(raw_handshake(port, handshake_with(port, "Upgrade: websocket\r\nConnection: keep-alive\r\n" + key_line +
                                                           version_line))
                  .status == 400);
        CHECK(raw_handshake(port, handshake_with(port, "Upgrade: websocket\r\n" + key_line + version_line)).status ==
              400);
    }
    SECTION("Sec-WebSocket-Key: the base64 of 16 bytes, else 400") {
        for (const char* key : {"", "dGhlIHNhbXBsZSBub25jZQ=", "dGhlIHNhbXBsZSBub25jZQ", "dGhlIHNhbXBsZSBub25jZXg=",
                                "dGhlIHNhbXBsZSBub25jZR==", "dGhlIHNhbXBsZSBub25j*Q==", "AAAAAAAAAAAAAAAAAAAAAAAA",
                                "dGhlIHNhbXBsZSBub25jZQ==dGhl"}) {
            INFO("key '" << key << "'");
            CHECK(raw_handshake(port, handshake_with(port, upgrade_lines + "Sec-WebSocket-Key: " + key + "\r\n" +
                                                               version_line))
                      .status == 400);
        }
        CHECK(raw_handshake(port, handshake_with(port, upgrade_lines + version_line)).status == 400);  // none
        CHECK(raw_handshake(port, handshake_with(port, upgrade_lines + key_line + key_line + version_line)).status ==
              400);  // two
        // Another valid key: 16 zero bytes.
        CHECK(raw_handshake(port, handshake_with(port, upgrade_lines + "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n" +
                                                           version_line))
                  .status == 101);
    }
    SECTION("Sec-WebSocket-Version: 13, else 426 with Sec-WebSocket-Version: 13") {
        for (const std::string v : {"8", "12", "14", "13, 8", ""}) {
            INFO("version '" << v << "'");
            test::http_response r =
                raw_handshake(port, handshake_with(port, upgrade_lines + key_line + "Sec-WebSocket-Version: " + v + "\r\n"));
            CHECK(r.status == 426);
            CHECK(r.header("Sec-WebSocket-Version") == "13");
        }
        test::http_response r = raw_handshake(port, handshake_with(port, upgrade_lines + key_line));  // none
        CHECK(r.status == 426);
        CHECK(r.header("Sec-WebSocket-Version") == "13");
    }
    SECTION("a plain GET of the endpoint: 426 with Upgrade: websocket") {
        test::http_response r = raw_handshake(port, handshake_with(port, ""));
        INFO(r.head);
        CHECK(r.status == 426);
        CHECK(iequals(r.header("Upgrade"), "websocket"));
        // RFC 9110 7.8: a sender of Upgrade also sends the "upgrade" connection option.
        CHECK(has_token(r.header("Connection"), "upgrade"));
        // The other routes are plain HTTP.
        CHECK(test::get(port, "/plain").body == "plain");
    }
    SECTION("a handshake with a body is 400") {
        CHECK(raw_handshake(port, handshake_with(port, all + "Content-Length: 2\r\n") + "ab").status == 400);
        CHECK(raw_handshake(port, handshake_with(port, all + "Content-Length: 0\r\n")).status == 101);
    }
    CHECK(srv.stop().drained);
}

TEST_CASE("handshake: Origin, on_upgrade (refuse, subprotocols), extensions declined", "[websocket][handshake]") {
    test::watchdog dog("handshake origin", 120s);
    ws_state s;
    rs::server srv(ws_options());
    srv.websocket("/ws", echo_handlers(s));
    rs::websocket_handlers listed = echo_handlers(s);
    listed.allowed_origins = {"https://ui.example:8443"};
    srv.websocket("/listed", listed);
    rs::websocket_handlers any = echo_handlers(s);
    any.allowed_origins = {"*"};
    srv.websocket("/any", any);
    rs::websocket_handlers chooser = echo_handlers(s);
    chooser.on_upgrade = [](const rs::request& req, rs::websocket_upgrade& up) {
        const std::string_view want = req.get_header("X-Choose");
        if (want == "refuse") {
            up.refuse = 401;
            return;
        }
        up.subprotocol = std::string(want);
    };
    srv.websocket("/choose", chooser);
    const std::uint16_t port = test::start(srv);
    const std::string self = "http://127.0.0.1:" + std::to_string(port);

    auto status_of = [&](const char* path, const std::string& extra) {
        ws_client c(port);
        c.upgrade(path, extra);
        return c.response;
    };
    SECTION("Origin: same-origin accepted, foreign 403, allowed_origins and *") {
        CHECK(status_of("/ws", "Origin: " + self + "\r\n").status == 101);
        CHECK(status_of("/ws", "").status == 101);  // no Origin: not a browser
        CHECK(status_of("/ws", "Origin: http://evil.example\r\n").status == 403);
        CHECK(status_of("/ws", "Origin: http://127.0.0.1:1\r\n").status == 403);  // another port
        CHECK(status_of("/ws", "Origin: null\r\n").status == 403);
        CHECK(status_of("/listed", "Origin: https://ui.example:8443\r\n").status == 101);
        CHECK(status_of("/listed", "Origin: " + self + "\r\n").status == 101);  // its own still is
        CHECK(status_of("/listed", "Origin: https://ui.example\r\n").status == 403);
        CHECK(status_of("/any", "Origin: http://evil.example\r\n").status == 101);
        CHECK(status_of("/any", "Origin: null\r\n").status == 101);
    }
    SECTION("on_upgrade: refuse (401), choose an offered subprotocol, one not offered is 500") {
        CHECK(status_of("/choose", "X-Choose: refuse\r\n").status == 401);
        test::http_response r = status_of("/choose", "X-Choose: superchat\r\nSec-WebSocket-Protocol: chat, superchat\r\n");
        CHECK(r.status == 101);
        CHECK(r.header("Sec-WebSocket-Protocol") == "superchat");
        r = status_of("/choose", "X-Choose: \r\nSec-WebSocket-Protocol: chat\r\n");
        CHECK(r.status == 101);
        CHECK(r.header("Sec-WebSocket-Protocol").empty());
        CHECK(status_of("/choose", "X-Choose: mqtt\r\nSec-WebSocket-Protocol: chat, superchat\r\n").status == 500);
        CHECK(status_of("/choose", "X-Choose: chat\r\n").status == 500);  // nothing offered
        // The handle tells the choice.
        ws_client c(port);
        REQUIRE(c.upgrade("/choose", "X-Choose: chat\r\nSec-WebSocket-Protocol: superchat\r\nSec-WebSocket-Protocol: "
                                     "chat\r\n"));
        REQUIRE(s.wait_opens(1));
        CHECK(s.handle(s.handles.size() - 1).subprotocol() == "chat");
    }
    SECTION("permessage-deflate offered: declined, no Sec-WebSocket-Extensions in the 101") {
        ws_client c(port);
        REQUIRE(c.upgrade("/ws", "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"));
        CHECK(c.response.header("Sec-WebSocket-Extensions").empty());
        // An uncompressed message is served; one with RSV1 (a compressed one) fails 1002.
        REQUIRE(c.send_text("plain"));
        ws_message m = c.read_data();
        CHECK(m.opcode == 1);
        CHECK(m.payload == "plain");
        REQUIRE(c.send(ws_frame(1, "x", true, true, 4)));
        expect_close(c, 1002);
    }
    CHECK(srv.stop().drained);
}

TEST_CASE("frames sent right behind the handshake, in the same packet, are served", "[websocket][handshake]") {
    test::watchdog dog("frames behind handshake", 60s);
    ws_state s;
    rs::server srv(ws_options());
    srv.websocket("/ws", echo_handlers(s));
    const std::uint16_t port = test::start(srv);
    ws_client c(port);
    REQUIRE(c.upgrade("/ws", "", ws_frame(1, "first") + ws_frame(2, std::string("\0\1", 2)) + ws_frame(9, "p")));
    ws_message a = c.read();
    CHECK(a.opcode == 1);
    CHECK(a.payload == "first");
    ws_message b = c.read();
    CHECK(b.opcode == 2);
    CHECK(b.payload == std::string("\0\1", 2));
    ws_message p = c.read();
    CHECK(p.opcode == 10);
    CHECK(p.payload == "p");
    REQUIRE(c.send_close(1000));
    expect_close(c, 1000);
    REQUIRE(s.wait_closes(1));
    CHECK(s.closes[0].code == 1000);
}

// --------------------------------------------------------------- real clients --

namespace {

// The same conversation for both clients: text and binary echo, fragmented messages sent
// by the client, an empty message, 16 MiB (websocket_max_message, the default) echoed,
// 16 MiB + 1 refused with 1009, ping/pong, the client closing with 4000 "bye", and the
// server closing with 4001 "x" (the client asks with "close-me").
const char* const python_client = R"PY(
import asyncio, sys, websockets
port = int(sys.argv[1])
uri = "ws://127.0.0.1:%d/ws" % port
BIG = 16 * 1024 * 1024

async def main():
    async with websockets.connect(uri, max_size=None, compression=None, ping_interval=None) as ws:
        await ws.send("h\u00e9llo \u03bb")
        assert await ws.recv() == "h\u00e9llo \u03bb"
        await ws.send(b"\x00\x01\xff")
        r = await ws.recv()
        assert isinstance(r, bytes) and r == b"\x00\x01\xff", r
        await ws.send(["frag", "men", "ted \u03bb"])     # a fragmented text message
        assert await ws.recv() == "fragmented \u03bb"
        await ws.send([b"\x01", b"", b"\x02\x03"])      # a fragmented binary one
        r = await ws.recv()
        assert isinstance(r, bytes) and r == b"\x01\x02\x03", r
        await ws.send("")
        assert await ws.recv() == ""
        await ws.send(b"")
        assert await ws.recv() == b""
        big = bytes(range(256)) * (BIG // 256)
        await ws.send(big)
        r = await ws.recv()
        assert r == big, len(r)
        pong = await ws.ping(b"are you there")
        await asyncio.wait_for(pong, 10)
        await ws.close(4000, "bye")
    assert ws.close_code == 4000, ws.close_code
    async with websockets.connect(uri, compression=None) as ws:
        await ws.send("close-me")
        try:
            await asyncio.wait_for(ws.recv(), 10)
            raise AssertionError("a message instead of the close")
        except websockets.ConnectionClosed:
            pass
        assert ws.close_code == 4001 and ws.close_reason == "x", (ws.close_code, ws.close_reason)
    async with websockets.connect(uri, max_size=None, compression=None, ping_interval=None) as ws:
        try:
            await ws.send(b"\0" * (BIG + 1))  # may fail already: the server closes at the header
            await asyncio.wait_for(ws.recv(), 10)
            raise AssertionError("a message instead of the close")
        except websockets.ConnectionClosed:
            pass
        assert ws.close_code == 1009, ws.close_code
    print("ok")

asyncio.run(main())
)PY";

const char* const node_client = R"JS(
const path = require("path");
const WebSocket = require(path.join(process.argv[2], "node_modules", "ws"));
const port = process.argv[3];
const uri = "ws://127.0.0.1:" + port + "/ws";
const BIG = 16 * 1024 * 1024;
const fail = (m) => { console.error("FAIL: " + m); process.exit(1); };
setTimeout(() => fail("timed out"), 60000).unref();

function open(options) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(uri, options || { perMessageDeflate: false, maxPayload: 64 * 1024 * 1024 });
    const queue = [], waiters = [];
    ws.on("message", (data, isBinary) => {
      const m = { data, isBinary };
      if (waiters.length) waiters.shift()(m); else queue.push(m);
    });
    ws.next = () => new Promise((r) => { if (queue.length) r(queue.shift()); else waiters.push(r); });
    ws.closed = new Promise((r) => ws.on("close", (code, reason) => r({ code, reason: reason.toString() })));
    ws.on("open", () => resolve(ws));
    ws.on("error", reject);
  });
}
const send = (ws, data, opts) => new Promise((r, j) => ws.send(data, opts || {}, (e) => (e ? j(e) : r())));

(async () => {
  let ws = await open({ perMessageDeflate: true });  // offered, and declined by the server
  if (ws.extensions !== "") fail("extensions negotiated: " + ws.extensions);
  await send(ws, "h\u00e9llo \u03bb");
  let m = await ws.next();
  if (m.isBinary || m.data.toString() !== "h\u00e9llo \u03bb") fail("text echo");
  await send(ws, Buffer.from([0, 1, 255]));
  m = await ws.next();
  if (!m.isBinary || !m.data.equals(Buffer.from([0, 1, 255]))) fail("binary echo");
  // Fragments: fin false, then the last one.
  await send(ws, "frag", { fin: false });
  await send(ws, "men", { fin: false });
  await send(ws, "ted \u03bb", { fin: true });
  m = await ws.next();
  if (m.isBinary || m.data.toString() !== "fragmented \u03bb") fail("fragmented text: " + m.data);
  await send(ws, Buffer.from([1]), { fin: false, binary: true });
  await send(ws, Buffer.from([2, 3]), { fin: true, binary: true });
  m = await ws.next();
  if (!m.isBinary || !m.data.equals(Buffer.from([1, 2, 3]))) fail("fragmented binary");
  await send(ws, "");
  m = await ws.next();
  if (m.isBinary || m.data.length !== 0) fail("empty text");
  await send(ws, Buffer.alloc(0));
  m = await ws.next();
  if (!m.isBinary || m.data.length !== 0) fail("empty binary");
  const big = Buffer.alloc(BIG);
  for (let i = 0; i < BIG; ++i) big[i] = (i * 7 + (i >> 12)) & 255;
  await send(ws, big);
  m = await ws.next();
  if (!m.isBinary || !m.data.equals(big)) fail("16 MiB echo");
  const pong = new Promise((r) => ws.once("pong", (d) => r(d.toString())));
  ws.ping("are you there");
  if ((await pong) !== "are you there") fail("pong payload");
  ws.close(4000, "bye");
  let c = await ws.closed;
  if (c.code !== 4000) fail("close code seen " + c.code);

  ws = await open();
  await send(ws, "close-me");
  c = await ws.closed;
  if (c.code !== 4001 || c.reason !== "x") fail("server close: " + c.code + " " + c.reason);

  ws = await open();
  ws.send(Buffer.alloc(BIG + 1), () => {});  // may fail: the server closes at the header
  c = await ws.closed;
  if (c.code !== 1009) fail("too big: " + c.code);
  console.log("ok");
})().catch((e) => fail(e && e.stack ? e.stack : String(e)));
)JS";

/// client_closes_ok: what on_close saw after a real client's conversation: 4000 "bye"
/// (the client's close), 4001 (the server's close, answered), 1009 (too big).
void check_client_closes(ws_state& s) {
    REQUIRE(s.wait_closes(3));
    std::lock_guard<std::mutex> lock(s.m);
    REQUIRE(s.closes.size() == 3);
    CHECK(s.closes[0].code == 4000);
    CHECK(s.closes[0].reason == "bye");
    CHECK(s.closes[1].code == 4001);
    CHECK(s.closes[2].code == 1009);
    for (const auto& [id, n] : s.close_count) CHECK(n == 1);
}

/// node_ws_dir: where the ws package is (RS_NODE_DIR, installed by CMake at configure);
/// installed now if it is missing and npm is there. Empty when it cannot be had.
std::string node_ws_dir() {
    const std::string dir = RS_NODE_DIR;
    const auto have = [&] { return ::access((dir + "/node_modules/ws/package.json").c_str(), R_OK) == 0; };
    if (!have() && test::have_command("npm"))
        test::run_command({"npm", "install", "--prefix", dir, "--no-audit", "--no-fund", "--silent", "ws@8"}, 180s);
    return have() ? dir : std::string();
}

}  // namespace

TEST_CASE("Python websockets: echo, fragments, empty and 16 MiB messages, ping, close codes both ways",
          "[websocket][clients][python]") {
    test::watchdog dog("python client", 240s);
    const std::string python = "/usr/bin/python3";
    if (::access(python.c_str(), X_OK) != 0 ||
        test::run_command({python, "-c", "import websockets"}, 30s).status != std::optional<int>(0)) {
        RS_SKIP("/usr/bin/python3 with the websockets module is not installed (Debian: python3-websockets)");
    }
    ws_state s;
    rs::server srv(ws_options());
    srv.websocket("/ws", echo_handlers(s));
    const std::uint16_t port = test::start(srv);
    script_file script(python_client, ".py");
    test::command_result r = test::run_command({python, script.path, std::to_string(port)}, 180s, true);
    INFO("python: " << test::describe_status(r.status) << "\n" << r.out << r.err);
    REQUIRE(r.status);
    CHECK(WEXITSTATUS(*r.status) == 0);
    CHECK(r.out == "ok\n");
    check_client_closes(s);
    CHECK(srv.stop().drained);
}

TEST_CASE("Node ws: echo, fragments, empty and 16 MiB messages, ping, close codes both ways",
          "[websocket][clients][node]") {
    test::watchdog dog("node client", 300s);
    const std::string node = "/usr/bin/node";
    if (::access(node.c_str(), X_OK) != 0) {
        RS_SKIP("/usr/bin/node is not installed");
    }
    const std::string dir = node_ws_dir();
    if (dir.empty()) {
        RS_SKIP("the ws package is not installed in " << RS_NODE_DIR << " (npm install --prefix " << RS_NODE_DIR
                                                      << " ws@8)");
    }
    ws_state s;
    rs::server srv(ws_options());
    srv.websocket("/ws", echo_handlers(s));
    const std::uint16_t port = test::start(srv);
    script_file script(node_client, ".js");
    test::command_result r = test::run_command({node, script.path, dir, std::to_string(port)}, 180s, true);
    INFO("node: " << test::describe_status(r.status) << "\n" << r.out << r.err);
    REQUIRE(r.status);
    CHECK(WEXITSTATUS(*r.status) == 0);
    CHECK(r.out == "ok\n");
    check_client_closes(s);
    CHECK(srv.stop().drained);
}

// ------------------------------------------------------------ hostile frames --

TEST_CASE("hostile frames: each protocol error closes the connection with its code", "[websocket][hostile]") {
    test::watchdog dog("hostile frames", 120s);
    ws_state s;
    rs::options o = ws_options();
    o.websocket_max_message = 1024;
    rs::server srv(o);
    srv.websocket("/ws", echo_handlers(s));
    const std::uint16_t port = test::start(srv);
    const std::string key = "\x37\xfa\x21\x3d";

    struct hostile {
        const char* what;
        std::string bytes;
        std::uint16_t code;
    };
    const std::vector<hostile> cases = {
        {"an unmasked frame", ws_frame(1, "hi", true, false), 1002},
        {"RSV1 (no extension was agreed)", ws_frame(1, "hi", true, true, 4), 1002},
        {"RSV2", ws_frame(2, "hi", true, true, 2), 1002},
        {"RSV3", ws_frame(2, "hi", true, true, 1), 1002},
        {"reserved data opcode 3", ws_frame(3, "hi"), 1002},
        {"reserved data opcode 7", ws_frame(7, "hi"), 1002},
        {"reserved control opcode 0xB", ws_frame(0xb, "hi"), 1002},
        {"reserved control opcode 0xF", ws_frame(0xf, ""), 1002},
        {"a fragmented ping", ws_frame(9, "p", false), 1002},
        {"a ping of 126 bytes", ws_frame(9, std::string(126, 'p')), 1002},
        {"a close of 126 bytes", ws_frame(8, test::ws_close_payload(1000, std::string(124, 'r'))), 1002},
        {"a length of 2^63", std::string("\x82\xff\x80\0\0\0\0\0\0\0", 10) + key, 1002},
        {"a 16-bit length under 126", std::string("\x82\xfe\x00\x05", 4) + key + "hello", 1002},
        {"a 64-bit length under 65536", std::string("\x82\xff\0\0\0\0\0\0\x01\x00", 10) + key + std::string(256, 'x'),
         1002},
        {"a continuation that continues nothing", ws_frame(0, "x"), 1002},
        {"a text frame inside a fragmented message", ws_frame(1, "a", false) + ws_frame(1, "b"), 1002},
        {"invalid UTF-8 split across fragments", ws_frame(1, "\xce", false) + ws_frame(0, "A"), 1007},
        {"invalid UTF-8 in one frame", ws_frame(1, "ok \xff"), 1007},
        {"a text message ending inside a character", ws_frame(1, "\xe2\x82"), 1007},
        {"a UTF-16 surrogate in text", ws_frame(1, "\xed\xa0\x80"), 1007},
        {"an overlong encoding in text", ws_frame(1, "\xc0\xaf"), 1007},
        {"a close code below 1000", ws_frame(8, test::ws_close_payload(999)), 1002},
        {"close code 1004 (reserved)", ws_frame(8, test::ws_close_payload(1004)), 1002},
        {"close code 1005 (never on the wire)", ws_frame(8, test::ws_close_payload(1005)), 1002},
        {"close code 1006 (never on the wire)", ws_frame(8, test::ws_close_payload(1006)), 1002},
        {"close code 1015 (never on the wire)", ws_frame(8, test::ws_close_payload(1015)), 1002},
        {"close code 2999 (unassigned)", ws_frame(8, test::ws_close_payload(2999)), 1002},
        {"close code 5000", ws_frame(8, test::ws_close_payload(5000)), 1002},
        {"a close payload of one byte", ws_frame(8, std::string(1, '\x03')), 1002},
        {"a close reason that is not UTF-8", ws_frame(8, test::ws_close_payload(1000, "\xff")), 1007},
        // websocket_max_message (1024): decided from the header alone, no payload sent.
        {"a message over websocket_max_message (header only)", std::string("\x82\xfe\x04\x01", 4) + key, 1009},
        {"fragments that add up past websocket_max_message",
         ws_frame(2, std::string(1000, 'a'), false) + std::string("\x80\x99", 2) + key, 1009},
    };
    for (const hostile& h : cases) {
        INFO(h.what);
        const std::size_t before = s.closes.size();
        ws_client c(port);
        REQUIRE(c.upgrade());
        REQUIRE(c.send(h.bytes));
        expect_close(c, h.code);
        REQUIRE(s.wait_closes(before + 1));
        std::lock_guard<std::mutex> lock(s.m);
        CHECK(s.closes.back().code == h.code);
        CHECK(s.messages == 0);  // nothing of it reached on_message
    }

    SECTION("what is allowed: UTF-8 split across fragments, a control frame between fragments, 1024 bytes") {
        ws_client c(port);
        REQUIRE(c.upgrade());
        REQUIRE(c.send(ws_frame(1, "\xce", false) + ws_frame(0, "\xbb")));
        ws_message m = c.read();
        CHECK(m.opcode == 1);
        CHECK(m.payload == "\xce\xbb");
        REQUIRE(c.send(ws_frame(1, "ab", false) + ws_frame(9, "between") + ws_frame(0, "cd", false) +
                       ws_frame(10, "unsolicited") + ws_frame(0, "ef")));
        m = c.read();
        CHECK(m.opcode == 10);
        CHECK(m.payload == "between");
        m = c.read();
        CHECK(m.opcode == 1);
        CHECK(m.payload == "abcdef");
        REQUIRE(c.send(ws_frame(2, std::string(1024, 'z'))));  // exactly websocket_max_message
        m = c.read();
        CHECK(m.opcode == 2);
        CHECK(m.payload.size() == 1024);
        REQUIRE(c.send(ws_frame(2, std::string(1000, 'a'), false) + ws_frame(0, std::string(24, 'b'))));
        m = c.read();
        CHECK(m.payload.size() == 1024);
        REQUIRE(c.send(ws_frame(8, "")));  // a close without a code: answered without one
        m = c.read();
        CHECK(m.opcode == 8);
        CHECK(m.payload.empty());
        CHECK(c.eof_within(10s));
        REQUIRE(s.wait_closes(cases.size() + 1));
        CHECK(s.closes.back().code == 1005);
    }
    SECTION("a frame's bytes one at a time") {
        ws_client c(port);
        REQUIRE(c.upgrade());
        int one = 1;
        ::setsockopt(c.fd(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        const std::string f = ws_frame(1, std::string(300, 'q'));
        for (char ch : f) REQUIRE(c.send(std::string_view(&ch, 1)));
        ws_message m = c.read();
        CHECK(m.payload == std::string(300, 'q'));
    }
    CHECK(srv.stop().drained);
}

TEST_CASE("a message that would pass the run's max_buffered_bytes closes its WebSocket with 1013",
          "[websocket][hostile]") {
    test::watchdog dog("max_buffered_bytes", 60s);
    ws_state s;
    rs::options o = ws_options();
    o.max_buffered_bytes = 512 * 1024;
    o.websocket_max_message = 4 * 1024 * 1024;
    rs::server srv(o);
    srv.websocket("/ws", echo_handlers(s));
    const std::uint16_t port = test::start(srv);
    ws_client c(port);
    REQUIRE(c.upgrade());
    REQUIRE(c.send_binary(std::string(100 * 1024, 'a')));  // within the budget
    CHECK(c.read_data().payload.size() == 100 * 1024);
    REQUIRE(c.send_binary(std::string(1024 * 1024, 'a')));  // not
    expect_close(c, 1013);
    REQUIRE(s.wait_closes(1));
    CHECK(s.closes[0].code == 1013);
    CHECK(srv.stop().drained);
}

TEST_CASE("the closing handshake: a client that never answers the server's close is closed at "
          "websocket_close_timeout",
          "[websocket][close]") {
    test::watchdog dog("close timeout", 60s);
    ws_state s;
    rs::options o = ws_options();
    o.websocket_close_timeout = 300ms;
    rs::server srv(o);
    srv.websocket("/ws", echo_handlers(s));
    const std::uint16_t port = test::start(srv);
    ws_client c(port);
    REQUIRE(c.upgrade());
    const auto t0 = steady::now();
    REQUIRE(c.send_text("close-me"));
    expect_close(c, 4001, false);
    CHECK(c.eof_within(10s));  // not answered: closed anyway
    const auto took = steady::now() - t0;
    CHECK(took >= 300ms);      // it waited for the answer
    CHECK(took < 3000ms);      // and not much longer (10x)
    REQUIRE(s.wait_closes(1));
    CHECK(s.closes[0].code == 1006);
}

TEST_CASE("keep-alive: the server pings an idle WebSocket; one that answers stays, one that does not is closed",
          "[websocket][keepalive]") {
    test::watchdog dog("keep-alive", 60s);
    ws_state s;
    rs::options o = ws_options();
    o.websocket_ping_interval = 300ms;
    rs::server srv(o);
    srv.websocket("/ws", echo_handlers(s));
    const std::uint16_t port = test::start(srv);

    ws_client answers(port), silent(port);
    REQUIRE(answers.upgrade());
    REQUIRE(s.wait_opens(1));
    const std::uint64_t answers_id = s.handle(0).id();
    REQUIRE(silent.upgrade());
    REQUIRE(s.wait_opens(2));
    const std::uint64_t silent_id = s.handle(1).id();

    // The one that answers, on its own thread: three pings, each answered at once.
    int pings = 0;
    bool served = false;
    std::thread answering([&] {
        while (pings < 3) {
            ws_message m = answers.read(5s);
            if (m.opcode != 9 || !answers.send_frame(10, m.payload)) return;
            ++pings;
        }
        served = answers.send_text("still here") && answers.read_data(5s).payload == "still here";
    });
    // The silent client gets a ping too, and is closed without a close frame (1006)
    // within two intervals; 10x margin.
    ws_message p = silent.read(6s);
    INFO("silent client's first frame: opcode " << p.opcode);
    CHECK(p.opcode == 9);
    CHECK(silent.eof_within(10s));
    answering.join();
    CHECK(pings == 3);
    CHECK(served);
    REQUIRE(s.wait_closes(1));
    CHECK(s.close_of(silent_id).code == 1006);
    CHECK(s.close_of(answers_id).code == 0);  // not closed
}

// ------------------------------------------------------------- back-pressure --

TEST_CASE("back-pressure: a thread broadcasting to a client that never reads is refused at max_send_buffer, "
          "memory stays bounded, and another WebSocket keeps echoing",
          "[websocket][backpressure]") {
    test::watchdog dog("broadcast back-pressure", 120s);
    ws_state s;
    rs::options o = ws_options();
    o.max_send_buffer = 256 * 1024;
    rs::server srv(o);
    srv.websocket("/ws", echo_handlers(s));
    const std::uint16_t port = test::start(srv);

    ws_client slow(port, 4096);  // never reads; a small window
    REQUIRE(slow.upgrade());
    REQUIRE(s.wait_opens(1));
    rs::websocket target = s.handle(0);
    ws_client other(port);
    REQUIRE(other.upgrade());
    REQUIRE(s.wait_opens(2));

    // The budget: what the broadcaster may make the server hold is max_send_buffer (the
    // queue) - the kernel's socket buffers are not in RSS. An unbounded queue would grow
    // by what is offered: 64 MiB. Margin: 16 MiB (the test's own allocations, thread
    // stacks, the allocator's slack).
    const std::size_t piece = 4096;
    const std::size_t offered_total = 64u * 1024 * 1024;
    const long rss_before = status_kib("VmRSS");
    std::atomic<bool> echo_done{false};
    std::atomic<long> max_rss{rss_before};
    std::size_t accepted = 0, refused = 0, at_first_refusal = 0, max_buffered = 0;
    std::thread broadcaster([&] {
        const std::string message(piece, 'm');
        std::size_t offered = 0;
        while (offered < offered_total || !echo_done.load()) {
            const std::error_code ec = target.send_text(message);
            offered += piece;
            if (!ec) {
                ++accepted;
            } else {
                if (refused++ == 0) at_first_refusal = target.buffered_amount();
                if (ec != rs::errc::send_buffer_full) break;
                std::this_thread::yield();
            }
            max_buffered = std::max(max_buffered, target.buffered_amount());
            if (offered % (4 * 1024 * 1024) == 0) max_rss.store(std::max(max_rss.load(), status_kib("VmRSS")));
            if (offered > 16 * offered_total) break;  // the echo client is stuck: its check fails
        }
    });
    // Meanwhile the other WebSocket is served.
    for (int i = 0; i < 200; ++i) {
        const std::string text = "echo " + std::to_string(i);
        REQUIRE(other.send_text(text));
        ws_message m = other.read_data(10s);
        REQUIRE(m.payload == text);
    }
    echo_done.store(true);
    broadcaster.join();
    max_rss.store(std::max(max_rss.load(), status_kib("VmRSS")));

    const long tcp_wmem_max = sysctl_number("/proc/sys/net/ipv4/tcp_wmem", 2);
    INFO("accepted " << accepted << ", refused " << refused << ", buffered at the first refusal "
                     << at_first_refusal << ", max buffered " << max_buffered << ", VmRSS " << rss_before
                     << " -> " << max_rss.load() << " KiB, tcp_wmem max " << tcp_wmem_max);
    CHECK(refused > 0);
    // Refused when the next message would pass the bound, not long before.
    CHECK(at_first_refusal <= o.max_send_buffer);
    CHECK(at_first_refusal + piece + 10 > o.max_send_buffer);
    CHECK(max_buffered <= o.max_send_buffer);
    // What was accepted went to the queue or the kernel's buffers (the server's send
    // buffer, at most tcp_wmem's max, and the client's small receive buffer).
    CHECK(accepted * (piece + 4) <= o.max_send_buffer + static_cast<std::size_t>(tcp_wmem_max) + 1024 * 1024);
    if (!test::sanitized) CHECK(max_rss.load() - rss_before < static_cast<long>(o.max_send_buffer / 1024) + 16 * 1024);

    // The slow client leaves without reading: its WebSocket ends (1006), the other's does not.
    const std::uint64_t slow_id = target.id();
    slow.close();
    REQUIRE(s.wait_closes(1));
    CHECK(s.close_of(slow_id).code == 1006);
    CHECK(target.send_text("gone") == rs::errc::closed);
    CHECK(target.buffered_amount() == 0);
    REQUIRE(other.send_close(1000));
    expect_close(other, 1000);
    other.close();
    CHECK(srv.stop().drained);
}

TEST_CASE("back-pressure: a client that sends without reading is held - no frames are read while its buffer "
          "is at max_send_buffer",
          "[websocket][backpressure]") {
    test::watchdog dog("read back-pressure", 120s);
    ws_state s;
    rs::options o = ws_options();
    o.max_send_buffer = 64 * 1024;
    rs::server srv(o);
    srv.websocket("/ws", echo_handlers(s));
    const std::uint16_t port = test::start(srv);

    ws_client c(port, 4096);  // sends, never reads
    REQUIRE(c.upgrade());
    const int flags = ::fcntl(c.fd(), F_GETFL);
    REQUIRE(::fcntl(c.fd(), F_SETFL, flags | O_NONBLOCK) == 0);
    // 4 KiB messages, 64 MiB in all, for as long as the server takes them: once the
    // server stops reading, the kernel's buffers fill (the server's receive buffer grows
    // up to tcp_rmem's max, 32 MiB here) and the sends block (1 s without progress ends
    // the attempt).
    const std::string frame = ws_frame(2, std::string(4096, 'e'));
    const std::size_t total = 64u * 1024 * 1024 / 4096;
    std::size_t sent_frames = 0, offset = 0;
    bool held = false;
    while (sent_frames < total) {
        const ssize_t n = ::send(c.fd(), frame.data() + offset, frame.size() - offset, MSG_NOSIGNAL);
        if (n > 0) {
            offset += static_cast<std::size_t>(n);
            if (offset == frame.size()) {
                offset = 0;
                ++sent_frames;
            }
            continue;
        }
        REQUIRE((n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)));
        pollfd p{c.fd(), POLLOUT, 0};
        if (::poll(&p, 1, 1000) == 0) {
            held = true;
            break;
        }
    }
    // The server read at most what the bound lets it echo: the queue (max_send_buffer),
    // the kernel's send buffer (tcp_wmem's max) and the client's receive buffer, plus the
    // message read before each refusal stopped the reading (the reading resumes when the
    // socket took all there was, as the kernel's send buffer grows).
    const long tcp_wmem_max = sysctl_number("/proc/sys/net/ipv4/tcp_wmem", 2);
    long messages, refused;
    {
        std::lock_guard<std::mutex> lock(s.m);
        messages = s.messages;
        refused = s.refused;
    }
    INFO("frames sent " << sent_frames << " of " << total << ", held " << held << "; the server read " << messages
                        << " messages and refused " << refused << " echoes; tcp_wmem max " << tcp_wmem_max);
    CHECK(held);
    CHECK(static_cast<std::size_t>(messages) * 4096 <=
          o.max_send_buffer + static_cast<std::size_t>(tcp_wmem_max) + 1024 * 1024);
    c.close();
    REQUIRE(s.wait_closes(1));
    CHECK(srv.stop().drained);
}

TEST_CASE("back-pressure: a ping flood from a client that never reads is held; the pongs stay within "
          "max_send_buffer",
          "[websocket][backpressure][hostile]") {
    test::watchdog dog("ping flood", 120s);
    ws_state s;
    rs::options o = ws_options();
    o.max_send_buffer = 64 * 1024;
    rs::server srv(o);
    srv.websocket("/ws", echo_handlers(s));
    const std::uint16_t port = test::start(srv);
    ws_client c(port, 4096);
    REQUIRE(c.upgrade());
    REQUIRE(s.wait_opens(1));
    rs::websocket ws = s.handle(0);
    const int flags = ::fcntl(c.fd(), F_GETFL);
    REQUIRE(::fcntl(c.fd(), F_SETFL, flags | O_NONBLOCK) == 0);
    // 125-byte pings, 64 MiB of them at most (each would be a 127-byte pong), sent for as
    // long as the server reads them. The budget: the pongs the engine queues may pass
    // max_send_buffer by what one read brings (64 KiB of pings), never grow with the flood.
    std::string burst;
    for (int i = 0; i < 256; ++i) burst += ws_frame(9, std::string(125, 'p'));
    const long rss_before = status_kib("VmRSS");
    std::size_t sent = 0, offset = 0, max_buffered = 0;
    bool held = false;
    while (sent < 64u * 1024 * 1024) {
        const ssize_t n = ::send(c.fd(), burst.data() + offset, burst.size() - offset, MSG_NOSIGNAL);
        if (n > 0) {
            offset += static_cast<std::size_t>(n);
            sent += static_cast<std::size_t>(n);
            if (offset == burst.size()) offset = 0;
            if (sent % (1024 * 1024) < static_cast<std::size_t>(n)) max_buffered = std::max(max_buffered, ws.buffered_amount());
            continue;
        }
        REQUIRE((n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)));
        pollfd p{c.fd(), POLLOUT, 0};
        if (::poll(&p, 1, 1000) == 0) {
            held = true;
            break;
        }
    }
    max_buffered = std::max(max_buffered, ws.buffered_amount());
    const long rss_after = status_kib("VmRSS");
    INFO("sent " << sent << " bytes of pings, held " << held << ", buffered up to " << max_buffered << ", VmRSS "
                 << rss_before << " -> " << rss_after << " KiB");
    CHECK(held);
    CHECK(max_buffered <= o.max_send_buffer + 128 * 1024);
    if (!test::sanitized) CHECK(rss_after - rss_before < 16 * 1024);  // (CI's ASan run: +22 MiB of quarantine)
    c.close();
    REQUIRE(s.wait_closes(1));
    CHECK(srv.stop().drained);
}

// ------------------------------------------------------------------- closing --

TEST_CASE("close(): one close frame only, and no message is delivered after it, while a large message is still "
          "going out",
          "[websocket][close]") {
    test::watchdog dog("one close frame", 60s);
    ws_state s;
    rs::options o = ws_options();
    o.max_send_buffer = 32 * 1024 * 1024;  // the reads go on under the large message
    rs::server srv(o);
    srv.websocket("/ws", echo_handlers(s));
    const std::uint16_t port = test::start(srv);

    ws_client c(port, 4096);
    REQUIRE(c.upgrade());
    // "big:" makes the server send 8 MiB that the socket cannot take at once; then
    // close-me makes it call close() (queued behind the 8 MiB), "after" comes after that
    // call, and the client's own close crosses the server's.
    REQUIRE(c.send(ws_frame(1, "big:8388608") + ws_frame(1, "close-me") + ws_frame(1, "after") +
                   ws_frame(8, test::ws_close_payload(4000, "bye"))));
    REQUIRE(s.wait([&] { return s.close_called.size() == 1; }));
    ws_message big = c.read(20s);
    CHECK(big.opcode == 2);
    CHECK(big.payload.size() == 8388608);
    ws_message first = c.read();
    CHECK(first.opcode == 8);
    CHECK(first.close_code() == 4001);
    ws_message next = c.read(5s);
    INFO("after the close frame: opcode " << next.opcode << ", payload " << test::printable(next.payload));
    CHECK(next.opcode == -1);  // nothing after the close frame: not a second close
    CHECK(next.eof);
    REQUIRE(s.wait_closes(1));
    std::lock_guard<std::mutex> lock(s.m);
    CHECK(s.after_close.empty());
    CHECK(s.closes[0].code == 4000);
    CHECK(s.closes[0].reason == "bye");
}

// ------------------------------------------------------------------- threads --

TEST_CASE("handles used from 8 threads at once while the clients close and the server stops", "[websocket][threads]") {
    test::watchdog dog("handles from threads", 120s);
    ws_state s;
    rs::options o = ws_options();
    o.websocket_close_timeout = 500ms;
    o.max_send_buffer = 64 * 1024;
    rs::server srv(o);
    srv.websocket("/ws", echo_handlers(s));
    const std::uint16_t port = test::start(srv);

    constexpr int sockets = 4;
    std::vector<std::unique_ptr<ws_client>> clients;
    for (int i = 0; i < sockets; ++i) {
        clients.push_back(std::make_unique<ws_client>(port));
        REQUIRE(clients.back()->upgrade());
    }
    REQUIRE(s.wait_opens(sockets));
    std::vector<rs::websocket> handles;
    for (int i = 0; i < sockets; ++i) handles.push_back(s.handle(static_cast<std::size_t>(i)));

    // Every call any thread may make, over and over, until every handle says closed.
    std::atomic<bool> go{false};
    std::atomic<long> calls{0}, unexpected{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t) {
        threads.emplace_back([&, t] {
            while (!go.load()) std::this_thread::yield();
            for (long i = 0;; ++i) {
                bool all_closed = true;
                for (int k = 0; k < sockets; ++k) {
                    rs::websocket& ws = handles[static_cast<std::size_t>((k + t) % sockets)];
                    std::error_code ec;
                    switch ((i + t) % 6) {
                        case 0: ec = ws.send_text("t" + std::to_string(t)); break;
                        case 1: ec = ws.send_binary(std::string(100, 'b')); break;
                        case 2: ec = ws.ping("p"); break;
                        case 3: (void)ws.buffered_amount(); (void)ws.stopping(); (void)ws.subprotocol(); break;
                        case 4: (void)ws.is_open(); break;
                        case 5: if (t == k && i > 2000) ec = ws.close(1000, "enough"); break;
                    }
                    calls.fetch_add(1);
                    if (ec && ec != rs::errc::closed && ec != rs::errc::send_buffer_full) unexpected.fetch_add(1);
                    all_closed = all_closed && !ws.is_open() && ws.send_text("x") == rs::errc::closed;
                }
                if (all_closed) return;
            }
        });
    }
    // The clients: two read everything and answer what comes; one closes its side
    // at once; one leaves without a word. Meanwhile the server stops.
    std::vector<std::thread> readers;
    for (int i = 0; i < 2; ++i)
        readers.emplace_back([&, i] {
            ws_client& c = *clients[static_cast<std::size_t>(i)];
            for (;;) {
                ws_message m = c.read(20s);
                if (!m.ok()) return;
                if (m.opcode == 8) {
                    c.send_close(m.close_code() == 1005 ? 1000 : m.close_code());
                    c.eof_within(20s);
                    return;
                }
            }
        });
    go.store(true);
    REQUIRE(clients[2]->send_close(4002, "leaving"));
    clients[3]->close();
    const rs::stop_result r = srv.stop();
    for (std::thread& t : threads) t.join();
    for (std::thread& t : readers) t.join();
    INFO("calls " << calls.load());
    CHECK(unexpected.load() == 0);
    CHECK(r.waited);
    for (rs::websocket& ws : handles) {
        CHECK(ws.send_text("late") == rs::errc::closed);
        CHECK(ws.send_binary("late") == rs::errc::closed);
        CHECK(ws.ping() == rs::errc::closed);
        CHECK(ws.close() == rs::errc::closed);
        CHECK(ws.buffered_amount() == 0);
        CHECK(!ws.is_open());
    }
    REQUIRE(s.wait_closes(sockets));
    std::lock_guard<std::mutex> lock(s.m);
    CHECK(s.closes.size() == static_cast<std::size_t>(sockets));  // on_close once per socket
    for (const auto& [id, n] : s.close_count) CHECK(n == 1);
}

TEST_CASE("a handle kept after the server object is destroyed reports closed", "[websocket][threads]") {
    test::watchdog dog("handle outlives server", 60s);
    rs::websocket kept;
    std::uint64_t id = 0;
    {
        ws_state s;
        std::unique_ptr<ws_client> c;  // outlives the server: the stop closes the WebSocket
        rs::options o = ws_options();
        o.websocket_close_timeout = 200ms;
        rs::server srv(o);
        srv.websocket("/ws", echo_handlers(s));
        const std::uint16_t port = test::start(srv);
        c = std::make_unique<ws_client>(port);
        REQUIRE(c->upgrade());
        REQUIRE(s.wait_opens(1));
        kept = s.handle(0);
        id = kept.id();
        CHECK(kept.send_text("while open").value() == 0);
        CHECK(kept.is_open());
    }  // the server's destructor stops it (close 1001, not answered: the close timeout)
    CHECK(id != 0);
    CHECK(kept.id() == id);
    CHECK(!kept.is_open());
    CHECK(kept.stopping());
    CHECK(kept.send_text("after") == rs::errc::closed);
    CHECK(kept.ping("after") == rs::errc::closed);
    CHECK(kept.close() == rs::errc::closed);
    CHECK(kept.buffered_amount() == 0);
    rs::websocket empty;
    CHECK(empty.send_text("x") == rs::errc::closed);
    CHECK(empty.id() == 0);
}

// ----------------------------------------------------------------- lifecycle --

namespace {

/// answering_client: a WebSocket client on its own thread that answers a close frame with
/// the same code and records it, then waits for the server's TCP close.
struct answering_client {
    ws_client c;
    std::thread t;
    std::mutex m;
    std::condition_variable cv;
    bool done = false;
    std::uint16_t code = 0;
    std::string reason;
    explicit answering_client(std::uint16_t port) : c(port) {}
    void start() {
        t = std::thread([this] {
            std::uint16_t got = 0;
            std::string why;
            for (;;) {
                ws_message f = c.read(30s);
                if (!f.ok()) break;
                if (f.opcode == 8) {
                    got = f.close_code();
                    why = f.close_reason();
                    c.send_close(got);
                    c.eof_within(20s);
                    break;
                }
            }
            {
                std::lock_guard<std::mutex> lock(m);
                c.close();  // so the server's lingering close ends at once
                done = true;
                code = got;
                reason = why;
            }
            cv.notify_all();
        });
    }
    bool wait(std::chrono::milliseconds timeout) {
        std::unique_lock<std::mutex> lock(m);
        return cv.wait_for(lock, timeout, [this] { return done; });
    }
    ~answering_client() {
        if (!t.joinable()) return;
        {
            std::lock_guard<std::mutex> lock(m);
            if (!done) ::shutdown(c.fd(), SHUT_RDWR);  // a thread still reading (a failed test) returns
        }
        t.join();
    }
};

}  // namespace

TEST_CASE("stop(): close 1001 to every open WebSocket, the closing handshake awaited, drained",
          "[websocket][lifecycle]") {
    test::watchdog dog("stop 1001", 60s);
    ws_state s;
    rs::options o = ws_options();
    o.drain_timeout = 20s;  // the handshakes end the drain long before
    rs::server srv(o);
    srv.websocket("/ws", echo_handlers(s));
    const std::uint16_t port = test::start(srv);
    std::vector<std::unique_ptr<answering_client>> clients;
    for (int i = 0; i < 3; ++i) {
        clients.push_back(std::make_unique<answering_client>(port));
        REQUIRE(clients.back()->c.upgrade());
        clients.back()->start();
    }
    REQUIRE(s.wait_opens(3));
    const auto t0 = steady::now();
    const rs::stop_result r = srv.stop();
    CHECK(steady::now() - t0 < 10s);  // not the drain deadline
    CHECK(r.waited);
    CHECK(r.drained);
    CHECK(r.cut == 0);
    CHECK(!r.error);
    for (auto& c : clients) {
        REQUIRE(c->wait(10s));
        CHECK(c->code == 1001);
    }
    REQUIRE(s.wait_closes(3));
    std::lock_guard<std::mutex> lock(s.m);
    for (const auto& c : s.closes) {
        CHECK(c.code == 1001);  // the client's answer
        CHECK(c.stopping);      // stopping() in on_close, after the stop began
    }
}

TEST_CASE("restart(): close 1012, the client reconnects to the new run at once and is served",
          "[websocket][lifecycle]") {
    test::watchdog dog("restart 1012", 60s);
    ws_state s;
    rs::server srv(ws_options());
    srv.websocket("/ws", echo_handlers(s));
    const std::uint16_t port = test::start(srv);
    std::vector<std::unique_ptr<answering_client>> clients;
    for (int i = 0; i < 3; ++i) {
        clients.push_back(std::make_unique<answering_client>(port));
        REQUIRE(clients.back()->c.upgrade());
        clients.back()->start();
    }
    REQUIRE(s.wait_opens(3));
    std::error_code ec;
    srv.restart(ec);
    REQUIRE(!ec);
    for (auto& c : clients) {
        REQUIRE(c->wait(10s));
        CHECK(c->code == 1012);
        // At once: the listener is the same socket, never closed.
        ws_client again(port);
        REQUIRE(again.ok());
        REQUIRE(again.upgrade());
        REQUIRE(again.send_text("back"));
        CHECK(again.read_data().payload == "back");
        REQUIRE(again.send_close(1000));
        expect_close(again, 1000);
    }
    REQUIRE(s.wait_closes(6));
    {
        std::lock_guard<std::mutex> lock(s.m);
        int restarted = 0;
        for (const auto& c : s.closes)
            if (c.code == 1012) {
                ++restarted;
                CHECK(c.stopping);
            }
        CHECK(restarted == 3);
    }
    CHECK(srv.stop().drained);
}

TEST_CASE("a handler that throws closes its WebSocket with 1011", "[websocket][lifecycle]") {
    test::watchdog dog("handler throws", 60s);
    ws_state s;
    std::atomic<int> logged{0};
    rs::options o = ws_options();
    o.error_log = [&](std::string_view line) {
        if (line.find("1011") != std::string_view::npos) logged.fetch_add(1);
    };
    rs::server srv(o);
    srv.websocket("/ws", echo_handlers(s));
    rs::websocket_handlers opener = echo_handlers(s);
    opener.on_open = [](rs::websocket&, const rs::request&) { throw std::runtime_error("on_open threw"); };
    srv.websocket("/open-throws", opener);
    const std::uint16_t port = test::start(srv);
    ws_client c(port);
    REQUIRE(c.upgrade());
    REQUIRE(c.send_text("throw"));
    expect_close(c, 1011);
    c.close();
    ws_client d(port);
    REQUIRE(d.upgrade("/open-throws"));
    expect_close(d, 1011);
    d.close();
    REQUIRE(s.wait_closes(2));
    CHECK(s.closes[0].code == 1011);
    CHECK(s.closes[1].code == 1011);
    CHECK(logged.load() == 2);
    CHECK(srv.stop().drained);
}

// ------------------------------------------------------ threads and many sockets --

TEST_CASE("1,000 handshakes that stop half way hold no thread and are cut at header_timeout",
          "[websocket][slowloris]") {
    test::watchdog dog("half handshakes", 120s);
    REQUIRE(raise_fd_limit(4096));
    ws_state s;
    rs::options o = ws_options(4);
    o.header_timeout = 500ms;
    rs::server srv(o);
    srv.websocket("/ws", echo_handlers(s));
    const std::uint16_t port = test::start(srv);
    {  // warm up: the workers that serve handshakes are there
        ws_client c(port);
        REQUIRE(c.upgrade());
    }
    const int baseline = test::thread_count();
    const std::string half = test::ws_handshake(port).substr(0, 60);
    std::vector<std::unique_ptr<ws_client>> clients;
    const auto t0 = steady::now();
    for (int i = 0; i < 1000; ++i) {
        clients.push_back(std::make_unique<ws_client>(port));
        REQUIRE(clients.back()->ok());
        REQUIRE(clients.back()->send(half));
    }
    const int during = test::thread_count();
    INFO("threads: " << baseline << " before, " << during << " with 1000 half handshakes");
    CHECK(during <= baseline + static_cast<int>(o.worker_threads));
    // Each is answered 408 and closed, not before header_timeout; all within 10x + the
    // time to open them.
    for (auto& c : clients) {
        test::http_response r = c->read_head(20s);
        CHECK(r.status == 408);
        CHECK(c->eof_within(20s));
    }
    const auto took = steady::now() - t0;
    CHECK(took >= 500ms);
    CHECK(took < 20s);
    CHECK(s.handles.size() == 1);  // the warm-up's only
    CHECK(srv.stop().drained);
}

TEST_CASE("an idle WebSocket holds no thread: 1,000 open ones, the thread count of none", "[websocket][idle]") {
    test::watchdog dog("idle websockets", 120s);
    REQUIRE(raise_fd_limit(4096));
    ws_state s;
    rs::options o = ws_options(4);
    o.websocket_close_timeout = 2s;
    rs::server srv(o);
    srv.websocket("/ws", echo_handlers(s));
    const std::uint16_t port = test::start(srv);
    {
        ws_client c(port);
        REQUIRE(c.upgrade());
        REQUIRE(c.send_close(1000));
        expect_close(c, 1000);
    }
    const int baseline = test::thread_count();
    std::vector<std::unique_ptr<ws_client>> clients;
    for (int i = 0; i < 1000; ++i) {
        clients.push_back(std::make_unique<ws_client>(port));
        REQUIRE(clients.back()->upgrade());
    }
    REQUIRE(s.wait_opens(1001));
    const int open = test::thread_count();
    INFO("threads: " << baseline << " with none, " << open << " with 1000 idle WebSockets");
    CHECK(open <= baseline + static_cast<int>(o.worker_threads));
    // They are all still served.
    for (std::size_t i = 0; i < clients.size(); i += 97) {
        REQUIRE(clients[i]->send_text("idle " + std::to_string(i)));
        CHECK(clients[i]->read_data().payload == "idle " + std::to_string(i));
    }
    // A stop closes them all (1001); they answer by closing their sockets.
    std::thread stopper([&] { srv.stop(); });
    for (auto& c : clients) {
        ws_message m = c->read_data(20s);
        CHECK(m.close_code() == 1001);
        c->close();
    }
    stopper.join();
    CHECK(s.wait_closes(1001));
}

TEST_CASE("worker_threads = 0: the control thread serves WebSockets - echo, sends from another thread, "
          "keep-alive ping, stop 1001",
          "[websocket][inline]") {
    test::watchdog dog("inline", 60s);
    ws_state s;
    rs::options o = ws_options(0);
    o.websocket_ping_interval = 300ms;
    rs::server srv(o);
    srv.websocket("/ws", echo_handlers(s));
    const std::uint16_t port = test::start(srv);
    ws_client c(port);
    REQUIRE(c.upgrade());
    REQUIRE(s.wait_opens(1));
    REQUIRE(c.send_text("inline"));
    CHECK(c.read_data().payload == "inline");
    rs::websocket ws = s.handle(0);
    std::thread([&] { CHECK(!ws.send_binary("from a thread")); }).join();
    ws_message m = c.read_data();
    CHECK(m.opcode == 2);
    CHECK(m.payload == "from a thread");
    m = c.read(6s);  // idle: the keep-alive ping
    CHECK(m.opcode == 9);
    REQUIRE(c.send_frame(10, m.payload));
    answering_client a(port);
    REQUIRE(a.c.upgrade());
    REQUIRE(s.wait_opens(2));
    a.start();
    c.close();
    REQUIRE(s.wait_closes(1));
    CHECK(s.closes[0].code == 1006);
    const rs::stop_result r = srv.stop();
    CHECK(r.drained);
    REQUIRE(a.wait(10s));
    CHECK(a.code == 1001);
}

// ----------------------------------------------------------------------- TLS --

#ifdef RESTARTABLE_SERVER_OPENSSL
TEST_CASE("wss: Python websockets over tls_listener: echo, 3 MiB, ping, keep-alive ping, close codes",
          "[websocket][clients][python][tls]") {
    test::watchdog dog("wss", 120s);
    const std::string python = "/usr/bin/python3";
    if (::access(python.c_str(), X_OK) != 0 ||
        test::run_command({python, "-c", "import websockets"}, 30s).status != std::optional<int>(0)) {
        RS_SKIP("/usr/bin/python3 with the websockets module is not installed (Debian: python3-websockets)");
    }
    if (!test::have_command("openssl")) {
        RS_SKIP("the openssl command is not installed");
    }
    char dir_template[] = "/tmp/rs_wss_XXXXXX";
    REQUIRE(::mkdtemp(dir_template) != nullptr);
    const std::string dir = dir_template, cert = dir + "/cert.pem", key = dir + "/key.pem";
    test::command_result made =
        test::run_command({"openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                           "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=127.0.0.1", "-addext",
                           "subjectAltName=IP:127.0.0.1"},
                          60s, true);
    INFO("openssl: " << test::describe_status(made.status) << " " << made.err);
    REQUIRE(test::exited_0(made.status));

    ws_state s;
    rs::options o = ws_options();
    o.websocket_ping_interval = 300ms;  // the server's own pings go over TLS too
    rs::tls_options t;
    t.cert_chain_file = cert;
    t.key_file = key;
    o.listener = rs::tls_listener(rs::tcp_listener("127.0.0.1", 0), std::move(t));
    rs::server srv(o);
    srv.websocket("/ws", echo_handlers(s));
    const std::uint16_t port = test::start(srv);
    const char* const script = R"PY(
import asyncio, ssl, sys, websockets
port, cafile = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=cafile)
async def main():
    uri = "wss://127.0.0.1:%d/ws" % port
    async with websockets.connect(uri, ssl=ctx, max_size=None, compression=None, ping_interval=None) as ws:
        await ws.send("over tls \u03bb")
        assert await ws.recv() == "over tls \u03bb"
        big = bytes(range(256)) * (3 * 1024 * 1024 // 256 + 1)
        await ws.send(big)
        assert await ws.recv() == big
        await asyncio.sleep(1.0)  # idle for over three ping intervals: the server's pings are answered
        await ws.send(["frag", "ment"])
        assert await ws.recv() == "fragment"
        pong = await ws.ping(b"tls")
        await asyncio.wait_for(pong, 10)
        await ws.close(4000, "bye")
    assert ws.close_code == 4000, ws.close_code
    async with websockets.connect(uri, ssl=ctx, compression=None) as ws:
        await ws.send("close-me")
        try:
            await asyncio.wait_for(ws.recv(), 10)
            raise AssertionError("a message instead of the close")
        except websockets.ConnectionClosed:
            pass
        assert ws.close_code == 4001 and ws.close_reason == "x", (ws.close_code, ws.close_reason)
    print("ok")
asyncio.run(main())
)PY";
    script_file file(script, ".py");
    test::command_result r = test::run_command({python, file.path, std::to_string(port), cert}, 60s, true);
    INFO("python: " << test::describe_status(r.status) << "\n" << r.out << r.err);
    CHECK(test::exited_0(r.status));
    CHECK(r.out == "ok\n");
    REQUIRE(s.wait_closes(2));
    CHECK(s.closes[0].code == 4000);
    CHECK(s.closes[1].code == 4001);
    CHECK(srv.stop().drained);
    std::remove(cert.c_str());
    std::remove(key.c_str());
    ::rmdir(dir.c_str());
}
#endif  // RESTARTABLE_SERVER_OPENSSL
