// Streaming over real sockets: chunked request bodies (buffered and streamed routes),
// streamed request bodies read piece by piece with request::read_body (memory, limits,
// Expect: 100-continue, partial reads), streamed responses with response::set_stream
// (chunked to HTTP/1.1, close-delimited to HTTP/1.0, HEAD, flushing, server-sent events,
// a throwing provider, a client that goes away), bodiless and error framing, and real
// clients: curl, Python's http.client and (when installed) a headless Chromium EventSource.
// Every test case starts its own server on 127.0.0.1, port 0. Nothing sleeps to
// synchronise: handlers and clients meet on condition variables, reads have timeouts.
#include "support.hpp"

#include <netinet/tcp.h>
#include <poll.h>
#include <sys/wait.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <future>
#include <iterator>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace rs = restartable_server;
using namespace std::chrono_literals;

namespace {

using test::have_command;
using test::run_command;

using test::start;

std::string lower(std::string_view s) {
    std::string out;
    for (char ch : s) out += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    return out;
}

/// flag: a one-shot event between threads (a handler and a client), with a bounded wait.
struct flag {
    std::mutex m;
    std::condition_variable cv;
    bool raised = false;
    void raise() {
        {
            std::lock_guard<std::mutex> lock(m);
            raised = true;
        }
        cv.notify_all();
    }
    bool wait(std::chrono::milliseconds timeout = 10s) {
        std::unique_lock<std::mutex> lock(m);
        return cv.wait_for(lock, timeout, [this] { return raised; });
    }
};

/// chunk_status: what read_chunk() found.
enum class chunk_status { chunk, last, eof, malformed };

/// client: test::client plus the readers of streamed (chunked or close-delimited) bodies.
struct client : test::client {
    using test::client::client;
    bool read_exact(std::size_t n, std::string& out) {
        while (rd.buf.size() < n)
            if (!rd.fill()) return false;
        out = rd.buf.substr(0, n);
        rd.buf.erase(0, n);
        return true;
    }
    /// read_chunk: one chunk of a chunked response body, strictly framed: a size line of
    /// hex digits only (the server sends no extensions), the data, CRLF; the last chunk is
    /// "0" CRLF CRLF (the server sends no trailers). size_line gets the raw size line.
    chunk_status read_chunk(std::string& data, std::string* size_line = nullptr) {
        data.clear();
        std::string line;
        if (!read_line(line)) return chunk_status::eof;
        if (size_line) *size_line = line;
        if (line.empty() || line.size() > 15) return chunk_status::malformed;
        std::size_t n = 0;
        for (char ch : line) {
            int v = (ch >= '0' && ch <= '9') ? ch - '0'
                    : (ch >= 'a' && ch <= 'f') ? ch - 'a' + 10
                    : (ch >= 'A' && ch <= 'F') ? ch - 'A' + 10
                                               : -1;
            if (v < 0) return chunk_status::malformed;
            n = n * 16 + static_cast<std::size_t>(v);
        }
        if (n == 0) {
            std::string end;
            if (!read_line(end)) return chunk_status::eof;
            return end.empty() ? chunk_status::last : chunk_status::malformed;
        }
        std::string crlf;
        if (!read_exact(n, data) || !read_exact(2, crlf)) return chunk_status::eof;
        return crlf == "\r\n" ? chunk_status::chunk : chunk_status::malformed;
    }
    /// read_chunked_body: every chunk up to the last one; false (with what came) otherwise.
    bool read_chunked_body(std::vector<std::string>& chunks, chunk_status& end) {
        chunks.clear();
        std::string data;
        for (;;) {
            end = read_chunk(data);
            if (end != chunk_status::chunk) return end == chunk_status::last;
            chunks.push_back(data);
        }
    }
    /// read_to_eof: everything until the server closes; false on a timeout.
    bool read_to_eof(std::string& out) {
        out = rd.buf;
        rd.buf.clear();
        char tmp[16384];
        for (;;) {
            ssize_t n = ::recv(fd, tmp, sizeof tmp, 0);
            if (n > 0) {
                out.append(tmp, static_cast<std::size_t>(n));
                continue;
            }
            return n == 0 || errno == ECONNRESET;
        }
    }
};

const char* chunk_status_name(chunk_status s) {
    switch (s) {
        case chunk_status::chunk: return "chunk";
        case chunk_status::last: return "last";
        case chunk_status::eof: return "eof";
        case chunk_status::malformed: return "malformed";
    }
    return "?";
}

std::string get_req(const std::string& path, const std::string& extra = "") {
    return "GET " + path + " HTTP/1.1\r\nHost: localhost\r\n" + extra + "\r\n";
}

std::string post_req(const std::string& path, const std::string& body, const std::string& extra = "") {
    return "POST " + path + " HTTP/1.1\r\nHost: localhost\r\nContent-Length: " + std::to_string(body.size()) +
           "\r\n" + extra + "\r\n" + body;
}

std::string hex(std::size_t n) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%zx", n);
    return buf;
}

/// chunked: body encoded in chunks of the given sizes (cycled), with the last chunk.
std::string chunked(std::string_view body, const std::vector<std::size_t>& sizes = {7}, std::string_view ext = "",
                    std::string_view trailers = "") {
    std::string out;
    std::size_t k = 0;
    while (!body.empty()) {
        const std::size_t n = std::min(sizes[k++ % sizes.size()], body.size());
        out += hex(n);
        out += ext;
        out += "\r\n";
        out.append(body.data(), n);
        out += "\r\n";
        body.remove_prefix(n);
    }
    out += "0\r\n";
    out += trailers;
    out += "\r\n";
    return out;
}

std::string chunked_post(const std::string& path, const std::string& encoded, const std::string& extra = "") {
    return "POST " + path + " HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n" + extra + "\r\n" +
           encoded;
}

/// pseudo_random: n deterministic bytes of every value.
std::string pseudo_random(std::size_t n, std::uint32_t seed = 0x12345678u) {
    std::string s(n, '\0');
    std::uint32_t x = seed;
    for (char& ch : s) {
        x = x * 1664525u + 1013904223u;
        ch = static_cast<char>(x >> 24);
    }
    return s;
}

/// pattern_byte: byte i of the large uploads: a position-dependent pattern, so a lost,
/// repeated or reordered piece shows.
inline char pattern_byte(std::size_t i) {
    return static_cast<char>((i % 251) ^ ((i >> 16) * 7));
}

void fill_pattern(std::string& buf, std::size_t offset) {
    for (std::size_t j = 0; j < buf.size(); ++j) buf[j] = pattern_byte(offset + j);
}

/// status_kib: a field of /proc/self/status in KiB ("VmRSS", "VmHWM"), or -1.
long status_kib(const char* field) {
    std::ifstream f("/proc/self/status");
    std::string line;
    const std::string key = std::string(field) + ":";
    while (std::getline(f, line))
        if (line.rfind(key, 0) == 0) return std::atol(line.c_str() + key.size());
    return -1;
}

/// temp_file: a file under /tmp, removed on destruction.
struct temp_file {
    std::string path;
    explicit temp_file(const std::string& content = "") {
        char p[] = "/tmp/rs_test_streaming_XXXXXX";
        int fd = ::mkstemp(p);
        REQUIRE(fd >= 0);
        ::close(fd);
        path = p;
        write(content);
    }
    ~temp_file() { std::remove(path.c_str()); }
    temp_file(const temp_file&) = delete;
    temp_file& operator=(const temp_file&) = delete;
    void write(const std::string& content) const {
        std::ofstream f(path, std::ios::binary | std::ios::trunc);
        f.write(content.data(), static_cast<std::streamsize>(content.size()));
    }
    std::string read() const {
        std::ifstream f(path, std::ios::binary);
        return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
    }
};

void add_echo_routes(rs::server& srv) {
    srv.get("/hello", [](const rs::request&, rs::response& res) { res.set_content("hello", "text/plain"); });
    srv.post("/echo", [](const rs::request& req, rs::response& res) {
        res.set_content(req.body, "application/octet-stream");
    });
}

/// stream_parts: what GET /stream writes, an empty write among them.
const std::vector<std::string>& stream_parts() {
    static const std::vector<std::string> parts = {"part1", "", "second part", std::string(300, 'x'), "end"};
    return parts;
}

std::string stream_body() {
    std::string s;
    for (const auto& p : stream_parts()) s += p;
    return s;
}

std::vector<std::string> stream_chunks() {
    std::vector<std::string> v;
    for (const auto& p : stream_parts())
        if (!p.empty()) v.push_back(p);
    return v;
}

/// add_stream_route: GET /stream writes stream_parts(); counts its provider runs.
void add_stream_route(rs::server& srv, std::atomic<int>* provider_runs = nullptr) {
    srv.get("/stream", [provider_runs](const rs::request&, rs::response& res) {
        res.set_header("X-Stream", "yes");
        res.set_stream("text/plain", [provider_runs](rs::body_writer& out) {
            if (provider_runs) ++*provider_runs;
            for (const std::string& p : stream_parts())
                if (!out.write(p)) return;
        });
    });
}

}  // namespace

// ================================================= chunked request bodies ==

TEST_CASE("chunked request bodies on a buffered route are echoed exactly", "[streaming][chunked]") {
    rs::server srv(test::local_options());
    add_echo_routes(srv);
    std::atomic<int> handled{0};
    srv.post("/info", [&handled](const rs::request& req, rs::response& res) {
        ++handled;
        res.set_content(std::to_string(req.body.size()) + "|" + std::string(req.body), "text/plain");
    });
    const auto port = start(srv);

    SECTION("extensions, trailers, one-byte and empty bodies on one connection") {
        client c(port);
        REQUIRE(c.ok());
        struct body_case {
            const char* name;
            std::string encoded, body;
        };
        const std::vector<body_case> cases = {
            {"simple", "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", "hello world"},
            {"empty", "0\r\n\r\n", ""},
            {"extensions", "5;name=value\r\nhello\r\n1 ; a\r\n!\r\n0;x\r\n\r\n", "hello!"},
            {"trailers", "3\r\nabc\r\n0\r\nX-Checksum: 1\r\nX-More: two\r\n\r\n", "abc"},
            {"upper and lower hex", "A\r\n0123456789\r\na\r\nabcdefghij\r\n0\r\n\r\n", "0123456789abcdefghij"},
            {"binary", chunked(std::string("a\0b\r\n0\r\n\r\nc\xff", 12), {3}), std::string("a\0b\r\n0\r\n\r\nc\xff", 12)},
            {"data that looks like a request", chunked("GET /hello HTTP/1.1\r\nHost: x\r\n\r\n", {5}),
             "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"},
        };
        for (const body_case& b : cases) {
            INFO(b.name);
            REQUIRE(c.send(chunked_post("/echo", b.encoded)));
            auto r = c.read();
            CHECK(r.status == 200);
            CHECK(r.header("Content-Length") == std::to_string(b.body.size()));
            CHECK(r.header("Transfer-Encoding").empty());
            CHECK(r.body == b.body);
        }
        REQUIRE(c.send(get_req("/hello")));
        CHECK(c.read().body == "hello");
    }
    SECTION("sent byte by byte, then a request on the same connection") {
        client c(port);
        REQUIRE(c.ok());
        c.nodelay();
        const std::string raw =
            chunked_post("/echo", "4;e=1\r\nbyte\r\n3\r\n by\r\n5\r\n byte\r\n0\r\nX-T: v\r\n\r\n") + get_req("/hello");
        for (char ch : raw) REQUIRE(::send(c.fd, &ch, 1, MSG_NOSIGNAL) == 1);
        auto r = c.read();
        CHECK(r.status == 200);
        CHECK(r.body == "byte by byte");
        auto r2 = c.read();
        CHECK(r2.status == 200);
        CHECK(r2.body == "hello");
    }
    SECTION("1 MiB in uneven chunks") {
        client c(port);
        REQUIRE(c.ok());
        const std::string body = pseudo_random(1024 * 1024);
        REQUIRE(c.send(chunked_post("/echo", chunked(body, {1, 8191, 100, 65536, 3000, 17}))));
        auto r = c.read();
        REQUIRE(r.status == 200);
        CHECK(r.header("Content-Length") == std::to_string(body.size()));
        CHECK(r.body.size() == body.size());
        CHECK((r.body == body));
        REQUIRE(c.send(get_req("/hello")));
        CHECK(c.read().body == "hello");
    }
    SECTION("pipelined: a chunked POST and a GET in one send are answered in order") {
        client c(port);
        REQUIRE(c.ok());
        const std::string batch = chunked_post("/info", "3\r\none\r\n0\r\n\r\n") + get_req("/hello") +
                                  chunked_post("/info", "3;x=y\r\ntwo\r\n0\r\nT: 1\r\n\r\n") +
                                  post_req("/info", "three") + get_req("/hello", "Connection: close\r\n");
        REQUIRE(::send(c.fd, batch.data(), batch.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(batch.size()));
        auto r1 = c.read();
        auto r2 = c.read();
        auto r3 = c.read();
        auto r4 = c.read();
        auto r5 = c.read();
        CHECK(r1.status == 200);
        CHECK(r1.body == "3|one");
        CHECK(r2.status == 200);
        CHECK(r2.body == "hello");
        CHECK(r3.status == 200);
        CHECK(r3.body == "3|two");
        CHECK(r4.status == 200);
        CHECK(r4.body == "5|three");
        CHECK(r5.status == 200);
        CHECK(r5.body == "hello");
        CHECK(c.closed());
        CHECK(handled == 3);
    }
    srv.stop();
}

TEST_CASE("a malformed or oversized chunked body is answered and the connection closed", "[streaming][chunked]") {
    auto o = test::local_options();
    o.max_body_bytes = 64 * 1024;
    rs::server srv(o);
    add_echo_routes(srv);
    std::atomic<int> streamed_calls{0};
    srv.post(
        "/sink",
        [&streamed_calls](const rs::request& req, rs::response& res) {
            ++streamed_calls;
            std::size_t n = 0;
            auto ec = req.read_body([&n](std::string_view p) {
                n += p.size();
                return true;
            });
            res.set_content(ec ? ec.message() : std::to_string(n), "text/plain");
        },
        rs::body_mode::streamed);
    const auto port = start(srv);
    struct bad {
        const char* name;
        std::string raw;
        int status;
    };
    const std::vector<bad> cases = {
        {"missing CRLF after data", chunked_post("/echo", "5\r\nhelloXX0\r\n\r\n"), 400},
        {"size overflow", chunked_post("/echo", "fffffffffffffffff\r\n"), 400},
        {"bare LF", chunked_post("/echo", "5\nhello\r\n0\r\n\r\n"), 400},
        {"obs-fold trailer", chunked_post("/echo", "0\r\nX: a\r\n b\r\n\r\n"), 400},
        {"over max_body_bytes", chunked_post("/echo", chunked(std::string(65 * 1024, 'b'), {4096})), 413},
        {"streamed: malformed", chunked_post("/sink", "5\r\nhello!!"), 400},
        {"streamed: over max_body_bytes", chunked_post("/sink", chunked(std::string(65 * 1024, 'b'), {4096})), 413},
    };
    for (const bad& b : cases) {
        INFO(b.name);
        client c(port);
        REQUIRE(c.ok());
        REQUIRE(c.send(b.raw + get_req("/hello")));  // a request behind it must not be served
        auto r = c.read();
        CHECK(r.status == b.status);
        CHECK(lower(r.header("Connection")) == "close");
        CHECK(c.closed());
    }
    CHECK(streamed_calls == 2);
    srv.stop();
}

// ================================================== streamed request bodies ==

TEST_CASE("a streamed request body is read piece by piece and never held whole", "[streaming][body]") {
    constexpr std::size_t total = 32u * 1024 * 1024;
    auto o = test::local_options();
    o.max_body_bytes = 48u * 1024 * 1024;  // well above the upload: only the streaming keeps memory low
    rs::server srv(o);
    struct stats {
        std::mutex m;
        std::size_t count = 0, pieces = 0, max_piece = 0, first_bad = static_cast<std::size_t>(-1);
        long max_rss_kib = 0;
        std::error_code ec;
        bool handled = false;
    } st;
    srv.post(
        "/upload",
        [&st](const rs::request& req, rs::response& res) {
            std::size_t count = 0, pieces = 0, max_piece = 0, first_bad = static_cast<std::size_t>(-1);
            std::size_t next_sample = 0;
            long max_rss = 0;
            const std::error_code ec = req.read_body([&](std::string_view p) {
                for (std::size_t j = 0; j < p.size() && first_bad == static_cast<std::size_t>(-1); ++j)
                    if (p[j] != pattern_byte(count + j)) first_bad = count + j;
                count += p.size();
                ++pieces;
                max_piece = std::max(max_piece, p.size());
                if (count >= next_sample) {  // sample the resident size every MiB of body
                    max_rss = std::max(max_rss, status_kib("VmRSS"));
                    next_sample = count + 1024 * 1024;
                }
                return true;
            });
            max_rss = std::max(max_rss, status_kib("VmRSS"));
            {
                std::lock_guard<std::mutex> lock(st.m);
                st.count = count;
                st.pieces = pieces;
                st.max_piece = max_piece;
                st.first_bad = first_bad;
                st.max_rss_kib = max_rss;
                st.ec = ec;
                st.handled = true;
            }
            res.set_content("count=" + std::to_string(count), "text/plain");
        },
        rs::body_mode::streamed);
    srv.get("/hello", [](const rs::request&, rs::response& res) { res.set_content("hello", "text/plain"); });
    const auto port = start(srv);

    auto upload = [&](bool use_chunked) {
        client c(port, 30s);
        REQUIRE(c.ok());
        const long rss_before = status_kib("VmRSS");
        const long hwm_before = status_kib("VmHWM");
        REQUIRE(rss_before > 0);
        // A client thread sends the body in 64 KiB blocks (chunked: uneven chunks), never
        // holding more than one block.
        std::atomic<bool> sent_all{false};
        std::thread sender([&] {
            const std::string head = use_chunked
                                         ? "POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                                         : "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: " +
                                               std::to_string(total) + "\r\n\r\n";
            if (!test::send_all(c.fd, head)) return;
            std::string block;
            std::size_t off = 0, k = 0;
            while (off < total) {
                const std::size_t n = use_chunked ? std::min<std::size_t>(1000 + (k++ * 7919) % 60000, total - off)
                                                  : std::min<std::size_t>(64 * 1024, total - off);
                block.resize(n);
                fill_pattern(block, off);
                if (use_chunked && !test::send_all(c.fd, hex(n) + "\r\n")) return;
                if (!test::send_all(c.fd, block)) return;
                if (use_chunked && !test::send_all(c.fd, "\r\n")) return;
                off += n;
            }
            if (use_chunked && !test::send_all(c.fd, "0\r\n\r\n")) return;
            sent_all = true;
        });
        auto r = c.read();
        sender.join();
        CHECK(sent_all);
        CHECK(r.status == 200);
        CHECK(r.body == "count=" + std::to_string(total));
        const long hwm_after = status_kib("VmHWM");
        std::lock_guard<std::mutex> lock(st.m);
        REQUIRE(st.handled);
        CHECK(!st.ec);
        CHECK(st.count == total);
        CHECK(st.first_bad == static_cast<std::size_t>(-1));  // every byte in order
        INFO("pieces " << st.pieces << ", largest " << st.max_piece << " bytes; VmRSS before " << rss_before
                       << " KiB, max during the upload " << st.max_rss_kib << " KiB; VmHWM " << hwm_before << " -> "
                       << hwm_after << " KiB");
        // Pieces are bounded by the server's read buffer (64 KiB), whatever the body size.
        CHECK(st.max_piece <= 64 * 1024 + 4 * 1024);
        CHECK(st.pieces >= total / (68 * 1024));
        // The process never grew by anything near the body's size.
        CHECK(st.max_rss_kib - rss_before < 16 * 1024);
        CHECK(hwm_after - hwm_before < 16 * 1024);
        // And the connection goes on.
        REQUIRE(c.send(get_req("/hello")));
        CHECK(c.read().body == "hello");
    };
    SECTION("Content-Length, 32 MiB") { upload(false); }
    SECTION("chunked, 32 MiB") { upload(true); }
    srv.stop();
}

TEST_CASE("the body limit applies to streamed bodies", "[streaming][body][limits]") {
    constexpr std::size_t limit = 1024 * 1024;
    auto o = test::local_options();
    o.max_body_bytes = limit;
    rs::server srv(o);
    struct seen {
        std::mutex m;
        int calls = 0;
        std::size_t count = 0;
        std::error_code ec;
    } s;
    srv.post(
        "/upload",
        [&s](const rs::request& req, rs::response& res) {
            std::size_t count = 0;
            const std::error_code ec = req.read_body([&count](std::string_view p) {
                count += p.size();
                return true;
            });
            {
                std::lock_guard<std::mutex> lock(s.m);
                ++s.calls;
                s.count = count;
                s.ec = ec;
            }
            res.set_content("handler answered " + std::to_string(count), "text/plain");
        },
        rs::body_mode::streamed);
    const auto port = start(srv);

    auto send_in_thread = [](client& c, std::string data) {
        return std::thread([&c, data = std::move(data)] { (void)test::send_all(c.fd, data); });
    };
    SECTION("exactly at the limit passes") {
        client c(port);
        REQUIRE(c.ok());
        std::thread t = send_in_thread(c, chunked_post("/upload", chunked(std::string(limit, 'a'), {50000})));
        auto r = c.read();
        t.join();
        CHECK(r.status == 200);
        CHECK(r.body == "handler answered " + std::to_string(limit));
        std::lock_guard<std::mutex> lock(s.m);
        CHECK(!s.ec);
    }
    SECTION("a chunked body past the limit: read_body says body_too_large and the client gets 413") {
        client c(port);
        REQUIRE(c.ok());
        std::thread t = send_in_thread(c, chunked_post("/upload", chunked(std::string(2 * limit, 'a'), {50000})));
        auto r = c.read();
        CHECK(r.status == 413);
        CHECK(lower(r.header("Connection")) == "close");
        CHECK(r.body.find("handler answered") == std::string::npos);
        CHECK(c.closed());
        ::shutdown(c.fd, SHUT_RDWR);  // ends the sender if it is still blocked
        t.join();
        std::lock_guard<std::mutex> lock(s.m);
        CHECK(s.calls == 1);
        CHECK(s.ec == rs::errc::body_too_large);
        CHECK(s.count <= limit);  // nothing past the limit reached the handler
    }
    SECTION("a Content-Length past the limit is refused on the head: the handler never runs") {
        client c(port);
        REQUIRE(c.ok());
        REQUIRE(c.send("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: " + std::to_string(limit + 1) +
                       "\r\n\r\n"));
        auto r = c.read();
        CHECK(r.status == 413);
        CHECK(c.closed());
        std::lock_guard<std::mutex> lock(s.m);
        CHECK(s.calls == 0);
    }
    srv.stop();
}

TEST_CASE("Expect: 100-continue on a streamed route: 100 only when the handler reads", "[streaming][body]") {
    auto o = test::local_options(1);  // one worker: a stuck worker would block the next request
    rs::server srv(o);
    flag entered, go;
    srv.post(
        "/read",
        [&](const rs::request& req, rs::response& res) {
            entered.raise();
            if (!go.wait()) {
                res.status = 500;
                return;
            }
            std::string body;
            auto ec = req.read_body([&body](std::string_view p) {
                body.append(p.data(), p.size());
                return true;
            });
            res.set_content(ec ? "error " + ec.message() : "got " + body, "text/plain");
        },
        rs::body_mode::streamed);
    std::atomic<int> refused{0};
    srv.post(
        "/refuse",
        [&refused](const rs::request&, rs::response& res) {
            ++refused;
            res.status = 403;
            res.set_content("no uploads here", "text/plain");
        },
        rs::body_mode::streamed);
    srv.get("/hello", [](const rs::request&, rs::response& res) { res.set_content("hello", "text/plain"); });
    const auto port = start(srv);

    SECTION("the handler reads: 100 comes when it calls read_body, not before") {
        client c(port);
        REQUIRE(c.ok());
        const std::string body = "streamed after continue";
        REQUIRE(c.send("POST /read HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: " +
                       std::to_string(body.size()) + "\r\n\r\n"));
        REQUIRE(entered.wait());
        // The handler runs but has not read: nothing may have been sent yet.
        CHECK(!c.readable_within(200ms));
        go.raise();
        auto interim = c.read();
        INFO("interim: " << interim.head);
        REQUIRE(interim.status == 100);
        CHECK(interim.head.rfind("HTTP/1.1 100 Continue\r\n", 0) == 0);
        REQUIRE(c.send(body));
        auto r = c.read();
        CHECK(r.status == 200);
        CHECK(r.body == "got " + body);
        // Keep-alive: the body was read whole.
        REQUIRE(c.send(get_req("/hello")));
        CHECK(c.read().body == "hello");
    }
    SECTION("the handler answers without reading: no 100, its response, and a consistent connection") {
        client c(port);
        REQUIRE(c.ok());
        REQUIRE(c.send("POST /refuse HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 100000\r\n\r\n"));
        // The client never sends the body: the worker must not wait for it.
        auto r = c.read();
        INFO("head: " << r.head);
        CHECK(r.status == 403);
        CHECK(r.body == "no uploads here");
        const bool says_close = lower(r.header("Connection")) == "close";
        // The body was never read, so the connection cannot be reused: it says so and closes.
        CHECK(says_close);
        CHECK(c.closed() == says_close);
        CHECK(refused == 1);
        // The only worker is free: a new connection is served at once.
        auto h = test::get(port, "/hello");
        CHECK(h.status == 200);
        CHECK(h.body == "hello");
    }
    srv.stop();
}

TEST_CASE("a handler that reads only part of a streamed body: the connection closes, no desync",
          "[streaming][body]") {
    rs::server srv(test::local_options());
    std::atomic<int> smuggled{0}, partial_calls{0};
    srv.get("/smuggled", [&smuggled](const rs::request&, rs::response& res) {
        ++smuggled;
        res.set_content("smuggled", "text/plain");
    });
    srv.post(
        "/partial",
        [&partial_calls](const rs::request& req, rs::response& res) {
            ++partial_calls;
            std::size_t n = 0;
            auto ec = req.read_body([&n](std::string_view p) {
                n += p.size();
                return false;  // enough: stop after the first piece
            });
            res.set_content(ec ? "error" : "read some", "text/plain");
        },
        rs::body_mode::streamed);
    srv.post(
        "/ignore", [](const rs::request&, rs::response& res) { res.set_content("ignored the body", "text/plain"); },
        rs::body_mode::streamed);
    const auto port = start(srv);

    // A body of 1 MiB that is full of requests: were it parsed as requests after the
    // response, /smuggled would be answered.
    std::string body;
    const std::string smuggle = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    while (body.size() < 1024 * 1024) body += smuggle;

    auto check = [&](const std::string& raw, const char* expected_body) {
        client c(port);
        REQUIRE(c.ok());
        std::thread sender([&c, &raw] { (void)test::send_all(c.fd, raw); });
        auto r = c.read();
        INFO("head: " << r.head);
        CHECK(r.status == 200);
        CHECK(r.body == expected_body);
        CHECK(lower(r.header("Connection")) == "close");
        std::string after;
        CHECK(c.read_to_eof(after));
        CHECK(after.empty());  // no second response
        ::shutdown(c.fd, SHUT_RDWR);  // ends the sender if it is still blocked
        sender.join();
    };
    SECTION("Content-Length") {
        check(post_req("/partial", body), "read some");
        CHECK(partial_calls == 1);
    }
    SECTION("chunked") {
        check(chunked_post("/partial", chunked(body, {40000})), "read some");
        CHECK(partial_calls == 1);
    }
    SECTION("not read at all") { check(post_req("/ignore", body), "ignored the body"); }
    CHECK(smuggled == 0);
    // The server is fine and serves new connections.
    CHECK(test::get(port, "/smuggled").status == 200);
    srv.stop();
}

TEST_CASE("a streamed body followed by pipelined requests: nothing read ahead is lost", "[streaming][body]") {
    rs::server srv(test::local_options());
    srv.get("/hello", [](const rs::request& req, rs::response& res) {
        res.set_content("hello " + std::string(req.query), "text/plain");
    });
    srv.post(
        "/count",
        [](const rs::request& req, rs::response& res) {
            std::size_t n = 0;
            std::uint32_t sum = 0;
            auto ec = req.read_body([&](std::string_view p) {
                for (char ch : p) sum = sum * 31 + static_cast<unsigned char>(ch);
                n += p.size();
                return true;
            });
            res.set_content(ec ? ec.message() : std::to_string(n) + " " + std::to_string(sum), "text/plain");
        },
        rs::body_mode::streamed);
    const auto port = start(srv);
    auto expected = [](const std::string& body) {
        std::uint32_t sum = 0;
        for (char ch : body) sum = sum * 31 + static_cast<unsigned char>(ch);
        return std::to_string(body.size()) + " " + std::to_string(sum);
    };
    // Small bodies end inside the head's buffer, large ones in the body reader's own buffer.
    for (std::size_t size : {std::size_t{10}, std::size_t{100000}, std::size_t{1024 * 1024 + 3}}) {
        const std::string body = pseudo_random(size, static_cast<std::uint32_t>(size));
        for (bool use_chunked : {false, true}) {
            INFO("size " << size << (use_chunked ? ", chunked" : ", Content-Length"));
            client c(port);
            REQUIRE(c.ok());
            const std::string batch = get_req("/hello?a") +
                                      (use_chunked ? chunked_post("/count", chunked(body, {4000, 70000}))
                                                   : post_req("/count", body)) +
                                      get_req("/hello?b") + post_req("/count", "tail") + get_req("/hello?c");
            std::thread sender([&c, &batch] { (void)test::send_all(c.fd, batch); });
            auto r1 = c.read();
            auto r2 = c.read();
            auto r3 = c.read();
            auto r4 = c.read();
            auto r5 = c.read();
            sender.join();
            CHECK(r1.body == "hello a");
            CHECK(r2.status == 200);
            CHECK(r2.body == expected(body));
            CHECK(r3.body == "hello b");
            CHECK(r4.body == expected("tail"));
            CHECK(r5.body == "hello c");
        }
    }
    srv.stop();
}

// ====================================================== streamed responses ==

TEST_CASE("a streamed response to HTTP/1.1 is chunked and keeps the connection", "[streaming][response]") {
    rs::server srv(test::local_options());
    add_echo_routes(srv);
    std::atomic<int> runs{0};
    add_stream_route(srv, &runs);
    const auto port = start(srv);
    client c(port);
    REQUIRE(c.ok());
    for (int round = 0; round < 2; ++round) {
        INFO("round " << round);
        REQUIRE(c.send(get_req("/stream")));
        auto r = c.read();
        INFO("head: " << r.head);
        REQUIRE(r.status == 200);
        CHECK(lower(r.header("Transfer-Encoding")) == "chunked");
        CHECK(r.header("Content-Length").empty());
        CHECK(r.header("Connection").empty());
        CHECK(r.header("Content-Type") == "text/plain");
        CHECK(r.header("X-Stream") == "yes");
        // Each write is one chunk; the empty write is not a (premature) last chunk.
        std::vector<std::string> sizes;
        std::vector<std::string> chunks;
        std::string data, size_line;
        chunk_status s;
        while ((s = c.read_chunk(data, &size_line)) == chunk_status::chunk) {
            chunks.push_back(data);
            sizes.push_back(lower(size_line));
        }
        INFO("ended with " << chunk_status_name(s));
        CHECK(s == chunk_status::last);
        CHECK(chunks == stream_chunks());
        CHECK(sizes == std::vector<std::string>{"5", "b", "12c", "3"});
        CHECK(c.rd.buf.empty());  // nothing after the last chunk
    }
    // The connection is still usable.
    REQUIRE(c.send(post_req("/echo", "after the stream")));
    CHECK(c.read().body == "after the stream");
    CHECK(runs == 2);
    srv.stop();
}

TEST_CASE("a streamed response to HTTP/1.0 is not chunked and ends with the close", "[streaming][response]") {
    rs::server srv(test::local_options());
    add_stream_route(srv);
    const auto port = start(srv);
    for (const char* extra : {"", "Connection: keep-alive\r\n"}) {
        INFO("extra: " << extra);
        client c(port);
        REQUIRE(c.ok());
        REQUIRE(c.send(std::string("GET /stream HTTP/1.0\r\n") + extra + "\r\n"));
        auto r = c.read();
        INFO("head: " << r.head);
        REQUIRE(r.status == 200);
        CHECK(r.header("Transfer-Encoding").empty());
        CHECK(r.header("Content-Length").empty());
        CHECK(lower(r.header("Connection")) == "close");
        std::string body;
        CHECK(c.read_to_eof(body));
        CHECK(body == stream_body());
    }
    srv.stop();
}

TEST_CASE("HEAD on a streamed GET route: the head, no body", "[streaming][response]") {
    rs::server srv(test::local_options());
    add_echo_routes(srv);
    add_stream_route(srv);
    const auto port = start(srv);
    client c(port);
    REQUIRE(c.ok());
    // Pipelined behind it: if any body byte followed the HEAD response, this one would break.
    REQUIRE(c.send("HEAD /stream HTTP/1.1\r\nHost: x\r\n\r\n" + get_req("/hello") +
                   "HEAD /stream HTTP/1.0\r\n\r\n"));
    auto h = c.read(true);
    INFO("HEAD head: " << h.head);
    CHECK(h.status == 200);
    CHECK(h.header("Content-Type") == "text/plain");
    CHECK(h.header("X-Stream") == "yes");
    CHECK(h.header("Content-Length").empty());
    auto g = c.read();
    INFO("next: " << g.head);
    CHECK(g.status == 200);
    CHECK(g.body == "hello");
    auto h10 = c.read(true);
    CHECK(h10.status == 200);
    CHECK(h10.header("Transfer-Encoding").empty());  // never chunked to HTTP/1.0
    std::string rest;
    CHECK(c.read_to_eof(rest));
    CHECK(rest.empty());
    srv.stop();
}

TEST_CASE("each write of a streamed response is flushed before the provider goes on", "[streaming][response]") {
    rs::server srv(test::local_options());
    flag client_got_first;
    std::atomic<int> acked{-1};
    srv.get("/paced", [&](const rs::request&, rs::response& res) {
        res.set_stream("text/plain", [&](rs::body_writer& out) {
            out.write("first part");
            // The client signals once it has read the first part: this cannot happen unless
            // the part was sent while the provider still runs.
            acked = client_got_first.wait(5s) ? 1 : 0;
            out.write("second part");
        });
    });
    const auto port = start(srv);
    client c(port);
    REQUIRE(c.ok());
    REQUIRE(c.send(get_req("/paced")));
    auto r = c.read();
    REQUIRE(r.status == 200);
    std::string data;
    REQUIRE(c.read_chunk(data) == chunk_status::chunk);
    CHECK(data == "first part");
    client_got_first.raise();
    REQUIRE(c.read_chunk(data) == chunk_status::chunk);
    CHECK(data == "second part");
    CHECK(c.read_chunk(data) == chunk_status::last);
    CHECK(acked == 1);
    srv.stop();
}

TEST_CASE("server-sent events arrive one by one", "[streaming][response][sse]") {
    rs::server srv(test::local_options());
    std::mutex m;
    std::condition_variable cv;
    int client_has = 0;  // events the client has read
    std::atomic<bool> in_lockstep{true};
    srv.get("/events", [&](const rs::request&, rs::response& res) {
        res.set_header("Cache-Control", "no-cache");
        res.set_stream("text/event-stream", [&](rs::body_writer& out) {
            for (int i = 1; i <= 3; ++i) {
                if (!out.write("id: " + std::to_string(i) + "\ndata: event " + std::to_string(i) + "\n\n")) return;
                std::unique_lock<std::mutex> lock(m);
                if (!cv.wait_for(lock, 5s, [&] { return client_has >= i; })) in_lockstep = false;
            }
        });
    });
    const auto port = start(srv);
    client c(port);
    REQUIRE(c.ok());
    REQUIRE(c.send(get_req("/events", "Accept: text/event-stream\r\n")));
    auto r = c.read();
    REQUIRE(r.status == 200);
    CHECK(r.header("Content-Type") == "text/event-stream");
    CHECK(r.header("Cache-Control") == "no-cache");
    CHECK(lower(r.header("Transfer-Encoding")) == "chunked");
    for (int i = 1; i <= 3; ++i) {
        std::string data;
        REQUIRE(c.read_chunk(data) == chunk_status::chunk);
        CHECK(data == "id: " + std::to_string(i) + "\ndata: event " + std::to_string(i) + "\n\n");
        {
            std::lock_guard<std::mutex> lock(m);
            client_has = i;
        }
        cv.notify_all();
    }
    std::string data;
    CHECK(c.read_chunk(data) == chunk_status::last);
    CHECK(in_lockstep);
    srv.stop();
}

TEST_CASE("a provider that throws mid-stream: an incomplete body and a closed connection", "[streaming][response]") {
    rs::server srv(test::local_options());
    add_echo_routes(srv);
    srv.get("/throws", [](const rs::request&, rs::response& res) {
        res.set_stream("text/plain", [](rs::body_writer& out) {
            out.write("partial");
            throw std::runtime_error("provider failed");
        });
    });
    const auto port = start(srv);
    for (int version = 1; version >= 0; --version) {
        INFO("HTTP/1." << version);
        client c(port);
        REQUIRE(c.ok());
        REQUIRE(c.send("GET /throws HTTP/1." + std::to_string(version) + "\r\nHost: x\r\n\r\n" +
                       (version == 1 ? get_req("/hello") : std::string())));
        auto r = c.read();
        REQUIRE(r.status == 200);  // the head went out before the provider ran
        if (version == 1) {
            std::string data;
            REQUIRE(c.read_chunk(data) == chunk_status::chunk);
            CHECK(data == "partial");
            // No last chunk, no response to the pipelined GET: just the close.
            const chunk_status s = c.read_chunk(data);
            INFO("then " << chunk_status_name(s));
            CHECK(s == chunk_status::eof);
            CHECK(c.rd.buf.empty());
        } else {
            std::string body;
            CHECK(c.read_to_eof(body));
            CHECK(body == "partial");
        }
    }
    // The server goes on.
    auto h = test::get(port, "/hello");
    CHECK(h.status == 200);
    CHECK(h.body == "hello");
    srv.stop();
}

TEST_CASE("a streamed response of known length: Content-Length, unchunked, keep-alive, HEAD",
          "[streaming][response][length]") {
    rs::server srv(test::local_options());
    add_echo_routes(srv);
    std::atomic<int> runs{0};
    srv.get("/sized", [&](const rs::request&, rs::response& res) {
        res.set_stream("text/plain", 11, [&](rs::body_writer& out) {
            ++runs;
            out.write("hello");
            out.write(" world");
        });
    });
    const auto port = start(srv);

    client c(port);
    REQUIRE(c.ok());
    for (int round = 0; round < 2; ++round) {
        INFO("round " << round);
        REQUIRE(c.send(get_req("/sized")));
        auto r = c.read();  // framed by Content-Length
        INFO("head: " << r.head);
        CHECK(r.status == 200);
        CHECK(r.header("Content-Length") == "11");
        CHECK(r.header("Transfer-Encoding").empty());
        CHECK(r.header("Connection").empty());
        CHECK(r.body == "hello world");
    }
    REQUIRE(c.send("HEAD /sized HTTP/1.1\r\nHost: x\r\n\r\n" + get_req("/hello")));
    auto h = c.read(true);
    CHECK(h.status == 200);
    CHECK(h.header("Content-Length") == "11");  // HEAD tells the size, and sends no body
    CHECK(c.read().body == "hello");
    CHECK(runs == 2);  // not for HEAD

    // HTTP/1.0: the length frames the body, so the connection may stay.
    client old(port);
    REQUIRE(old.ok());
    REQUIRE(old.send("GET /sized HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /hello HTTP/1.0\r\n\r\n"));
    auto r10 = old.read();
    CHECK(r10.header("Content-Length") == "11");
    CHECK(lower(r10.header("Connection")) == "keep-alive");
    CHECK(r10.body == "hello world");
    CHECK(old.read().body == "hello");
    srv.stop();
}

TEST_CASE("a streamed body that ends early is cut: short of its length, without the last chunk",
          "[streaming][response][length]") {
    rs::server srv(test::local_options());
    add_echo_routes(srv);
    std::atomic<int> long_write{-1}, after_abort{-1};
    srv.get("/short", [](const rs::request&, rs::response& res) {
        res.set_stream("text/plain", 100, [](rs::body_writer& out) { out.write("only this"); });
    });
    srv.get("/long", [&](const rs::request&, rs::response& res) {
        res.set_stream("text/plain", 4, [&](rs::body_writer& out) {
            long_write = out.write("abc") ? 1 : 0;
            long_write = long_write * 10 + (out.write("too long") ? 1 : 0);  // past the length: nothing sent
        });
    });
    srv.get("/aborted", [&](const rs::request&, rs::response& res) {
        res.set_stream("text/plain", [&](rs::body_writer& out) {
            out.write("partial");
            out.abort();  // e.g. the file being sent shrank
            after_abort = out.write("more") ? 1 : 0;
        });
    });
    const auto port = start(srv);
    const struct {
        const char* target;
        std::string body;  // what arrives before the close
    } cases[] = {{"/short", "only this"}, {"/long", "abc"}};
    for (const auto& t : cases) {
        INFO(t.target);
        client c(port);
        REQUIRE(c.ok());
        REQUIRE(c.send(get_req(t.target) + get_req("/hello")));  // never answered: the connection ends
        auto r = c.read(true);
        REQUIRE(r.status == 200);
        CHECK(!r.header("Content-Length").empty());
        std::string body;
        CHECK(c.read_to_eof(body));
        CHECK(body == t.body);
        CHECK(body.size() < std::stoul(r.header("Content-Length")));
    }
    CHECK(long_write == 10);

    client c(port);
    REQUIRE(c.ok());
    REQUIRE(c.send(get_req("/aborted") + get_req("/hello")));
    auto r = c.read();
    REQUIRE(r.status == 200);
    CHECK(lower(r.header("Transfer-Encoding")) == "chunked");
    std::string data;
    REQUIRE(c.read_chunk(data) == chunk_status::chunk);
    CHECK(data == "partial");
    CHECK(c.read_chunk(data) == chunk_status::eof);  // no last chunk, no answer to /hello
    CHECK(after_abort == 0);
    CHECK(test::get(port, "/hello").body == "hello");
    srv.stop();
}

TEST_CASE("body_writer::write returns false once the client is gone", "[streaming][response]") {
    rs::server srv(test::local_options(2));
    add_echo_routes(srv);
    flag client_closed;
    struct outcome {
        bool failed = false;         // a write returned false
        bool stays_failed = false;   // and the next one too
        int writes = 0;              // writes after the close, up to the failure
    };
    std::promise<outcome> result;
    srv.get("/forever", [&](const rs::request&, rs::response& res) {
        res.set_stream("application/octet-stream", [&](rs::body_writer& out) {
            outcome o;
            out.write("hello");
            client_closed.wait();
            const std::string block(64 * 1024, 'z');
            while (o.writes < 10000) {  // 640 MiB: the socket buffers are far smaller
                ++o.writes;
                if (!out.write(block)) {
                    o.failed = true;
                    o.stays_failed = !out.write("more");
                    break;
                }
            }
            result.set_value(o);
        });
    });
    const auto port = start(srv);
    auto fut = result.get_future();
    {
        client c(port);
        REQUIRE(c.ok());
        REQUIRE(c.send(get_req("/forever")));
        auto r = c.read();
        REQUIRE(r.status == 200);
        std::string data;
        REQUIRE(c.read_chunk(data) == chunk_status::chunk);
        CHECK(data == "hello");
    }  // closed here
    client_closed.raise();
    REQUIRE(fut.wait_for(20s) == std::future_status::ready);
    const outcome o = fut.get();
    INFO("writes after the close: " << o.writes);
    CHECK(o.failed);
    CHECK(o.stays_failed);
    // Others are served, on new connections and on the same worker pool.
    for (int i = 0; i < 3; ++i) {
        auto h = test::get(port, "/hello");
        CHECK(h.status == 200);
        CHECK(h.body == "hello");
    }
    srv.stop();
}

// ================================================================= framing ==

TEST_CASE("204 and 304 responses have no body and no Content-Length", "[streaming][framing]") {
    rs::server srv(test::local_options());
    add_echo_routes(srv);
    std::atomic<int> provider_runs{0};
    srv.get("/nocontent", [](const rs::request&, rs::response& res) {
        res.status = 204;
        res.set_content("this must not be sent", "text/plain");
    });
    srv.get("/notmodified", [](const rs::request&, rs::response& res) {
        res.status = 304;
        res.set_header("ETag", "\"v1\"");
        res.set_content("this must not be sent either", "text/plain");
    });
    srv.get("/nocontent-stream", [&provider_runs](const rs::request&, rs::response& res) {
        res.status = 204;
        res.set_stream("text/plain", [&provider_runs](rs::body_writer& out) {
            ++provider_runs;
            out.write("nor this");
        });
    });
    srv.post("/nocontent", [](const rs::request&, rs::response& res) { res.status = 204; });
    const auto port = start(srv);
    client c(port);
    REQUIRE(c.ok());
    REQUIRE(c.send(get_req("/nocontent") + get_req("/notmodified") + get_req("/nocontent-stream") +
                   post_req("/nocontent", "some body") + get_req("/hello")));
    for (int expected : {204, 304, 204, 204}) {
        auto r = c.read();
        INFO("head: " << r.head);
        CHECK(r.status == expected);
        CHECK(r.header("Content-Length").empty());
        CHECK(r.header("Transfer-Encoding").empty());
        CHECK(r.header("Connection").empty());
        if (expected == 304) CHECK(r.header("ETag") == "\"v1\"");
    }
    auto h = c.read();
    INFO("after: " << h.head << "|" << h.body);
    CHECK(h.status == 200);  // the next response starts right where the bodiless ones ended
    CHECK(h.body == "hello");
    CHECK(provider_runs == 0);
    srv.stop();
}

TEST_CASE("every error response carries Connection: close and the connection closes", "[streaming][framing]") {
    auto o = test::local_options();
    o.max_body_bytes = 1024;
    o.max_request_line_bytes = 1024;
    o.max_header_bytes = 4096;
    rs::server srv(o);
    add_echo_routes(srv);
    const auto port = start(srv);
    struct bad {
        const char* name;
        std::string raw;
        int status;
    };
    const std::vector<bad> cases = {
        {"malformed request line", "GARBAGE\r\n\r\n", 400},
        {"two spaces", "GET  /hello HTTP/1.1\r\nHost: x\r\n\r\n", 400},
        {"bare LF", "GET /hello HTTP/1.1\nHost: x\n\n", 400},
        {"space before colon", "GET /hello HTTP/1.1\r\nHost : x\r\n\r\n", 400},
        {"obs-fold", "GET /hello HTTP/1.1\r\nHost: x\r\n y\r\n\r\n", 400},
        {"Content-Length not a number", "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400},
        {"negative Content-Length", "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400},
        {"bad header", "GET /hello HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n", 400},
        {"no Host", "GET /hello HTTP/1.1\r\n\r\n", 400},
        {"two Host", "GET /hello HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400},
        {"Content-Length and Transfer-Encoding",
         "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
        {"differing Content-Lengths", "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
         400},
        {"Content-Length with a sign", "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\na", 400},
        {"Transfer-Encoding not ending in chunked", "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
         400},
        {"chunked twice", "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 400},
        {"Transfer-Encoding in HTTP/1.0", "POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
        {"malformed chunk", chunked_post("/echo", "zz\r\n"), 400},
        {"unknown coding", "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501},
        {"unknown expectation", "POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\nContent-Length: 1\r\n\r\na", 417},
        {"body too large", post_req("/echo", std::string(2000, 'b')), 413},
        {"request line too long", get_req("/" + std::string(2000, 'u')), 414},
        {"header fields too large", get_req("/hello", "X-Big: " + std::string(5000, 'h') + "\r\n"), 431},
        {"HTTP/2.0", "GET /hello HTTP/2.0\r\nHost: x\r\n\r\n", 505},
    };
    for (const bad& b : cases) {
        INFO(b.name);
        client c(port);
        REQUIRE(c.ok());
        REQUIRE(c.send(b.raw + get_req("/hello")));  // a pipelined request is not answered
        auto r = c.read();
        INFO("head: " << r.head);
        CHECK(r.status == b.status);
        CHECK(lower(r.header("Connection")) == "close");
        std::string rest;
        CHECK(c.read_to_eof(rest));
        CHECK(rest.empty());
    }
    // After a good response on the same connection, too.
    client c(port);
    REQUIRE(c.ok());
    REQUIRE(c.send(get_req("/hello") + "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n"));
    CHECK(c.read().status == 200);
    auto r = c.read();
    CHECK(r.status == 400);
    CHECK(lower(r.header("Connection")) == "close");
    CHECK(c.closed());
    srv.stop();
}

TEST_CASE("a body that stops arriving gets 408 and the connection closes", "[streaming][framing][timeouts]") {
    auto o = test::local_options();
    o.body_timeout = 300ms;
    rs::server srv(o);
    add_echo_routes(srv);
    std::promise<std::error_code> streamed_ec;
    srv.post(
        "/sink",
        [&streamed_ec](const rs::request& req, rs::response& res) {
            auto ec = req.read_body([](std::string_view) { return true; });
            streamed_ec.set_value(ec);
            res.set_content("read", "text/plain");
        },
        rs::body_mode::streamed);
    const auto port = start(srv);
    SECTION("buffered route") {
        client c(port);
        REQUIRE(c.ok());
        REQUIRE(c.send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc"));
        auto r = c.read();
        CHECK(r.status == 408);
        CHECK(lower(r.header("Connection")) == "close");
        CHECK(c.closed());
    }
    SECTION("streamed route: read_body reports timed_out") {
        client c(port);
        REQUIRE(c.ok());
        REQUIRE(c.send(chunked_post("/sink", "5\r\nabc")));
        auto r = c.read();
        CHECK(r.status == 408);
        CHECK(lower(r.header("Connection")) == "close");
        CHECK(c.closed());
        auto fut = streamed_ec.get_future();
        REQUIRE(fut.wait_for(5s) == std::future_status::ready);
        CHECK(fut.get() == std::errc::timed_out);
    }
    srv.stop();
}

// ============================================================ real clients ==

TEST_CASE("curl: chunked upload, large upload with 100-continue, keep-alive, streamed download",
          "[streaming][clients][curl]") {
    if (!have_command("curl")) {
        RS_SKIP("curl not found");
    }
    rs::server srv(test::local_options());
    add_echo_routes(srv);
    add_stream_route(srv);
    std::mutex m;
    std::vector<std::string> te_seen, expect_seen;
    srv.post("/echo-te", [&](const rs::request& req, rs::response& res) {
        {
            std::lock_guard<std::mutex> lock(m);
            te_seen.emplace_back(req.get_header("Transfer-Encoding"));
            expect_seen.emplace_back(req.get_header("Expect"));
        }
        res.set_content(req.body, "application/octet-stream");
    });
    srv.post(
        "/count",
        [](const rs::request& req, rs::response& res) {
            std::size_t n = 0;
            auto ec = req.read_body([&n](std::string_view p) {
                n += p.size();
                return true;
            });
            res.set_content(ec ? ec.message() : std::to_string(n), "text/plain");
        },
        rs::body_mode::streamed);
    const auto port = start(srv);
    const std::string base = "http://127.0.0.1:" + std::to_string(port);
    const std::string opts = "-sS --max-time 30 --noproxy '*' ";  // again after each --next
    const std::string curl = "timeout 60 curl " + opts;
    int code = 0;

    SECTION("chunked upload echoed exactly") {
        temp_file in(pseudo_random(200 * 1024, 7)), out;
        const std::string res = run_command(curl + "-H 'Transfer-Encoding: chunked' --data-binary @" + in.path +
                                                " -o " + out.path + " -w '%{http_code}' " + base + "/echo-te 2>&1",
                                            code);
        INFO("curl: " << res);
        CHECK(code == 0);
        CHECK(res == "200");
        CHECK((out.read() == in.read()));
        std::lock_guard<std::mutex> lock(m);
        REQUIRE(te_seen.size() == 1);
        CHECK(lower(te_seen[0]) == "chunked");
    }
    SECTION("3 MiB with Expect: 100-continue, buffered and streamed routes") {
        temp_file in(pseudo_random(3 * 1024 * 1024, 11)), out, err;
        const std::string res = run_command(curl + "-v -H 'Expect: 100-continue' --data-binary @" + in.path + " -o " +
                                                out.path + " -w '%{http_code}' " + base + "/echo-te 2>" + err.path,
                                            code);
        const std::string verbose = err.read();
        INFO("curl: " << res << "\n" << verbose.substr(0, 4000));
        CHECK(code == 0);
        CHECK(res == "200");
        CHECK(verbose.find("HTTP/1.1 100 Continue") != std::string::npos);
        CHECK((out.read() == in.read()));
        {
            std::lock_guard<std::mutex> lock(m);
            REQUIRE(expect_seen.size() == 1);
            CHECK(lower(expect_seen[0]) == "100-continue");
        }
        // The same to a streamed route, chunked as well.
        const std::string res2 = run_command(curl + "-v -H 'Expect: 100-continue' -H 'Transfer-Encoding: chunked' "
                                                    "--data-binary @" + in.path + " " + base + "/count 2>" + err.path,
                                             code);
        const std::string verbose2 = err.read();
        INFO("curl: " << res2 << "\n" << verbose2.substr(0, 4000));
        CHECK(code == 0);
        CHECK(res2 == std::to_string(3 * 1024 * 1024));
        CHECK(verbose2.find("HTTP/1.1 100 Continue") != std::string::npos);
    }
    SECTION("keep-alive reuse across a chunked upload and a streamed download") {
        temp_file in(pseudo_random(10000, 3)), out;
        const std::string res = run_command(
            curl + "-H 'Transfer-Encoding: chunked' --data-binary @" + in.path + " -o " + out.path +
                " -w '%{http_code} %{num_connects}\\n' " + base + "/echo-te --next " + opts +
                "-w ' %{http_code} %{num_connects}\\n' " + base + "/stream --next " + opts +
                "-w ' %{http_code} %{num_connects}\\n' " + base + "/hello 2>&1",
            code);
        INFO("curl: " << res);
        CHECK(code == 0);
        CHECK(res == "200 1\n" + stream_body() + " 200 0\nhello 200 0\n");
        CHECK((out.read() == in.read()));
    }
    SECTION("a streamed response, HTTP/1.1 (chunked) and HTTP/1.0 (close-delimited)") {
        const std::string r11 = run_command(curl + base + "/stream 2>&1", code);
        CHECK(code == 0);
        CHECK(r11 == stream_body());
        const std::string r10 = run_command(curl + "--http1.0 " + base + "/stream 2>&1", code);
        CHECK(code == 0);
        CHECK(r10 == stream_body());
    }
    srv.stop();
}

TEST_CASE("Python http.client: pipelined requests on one socket, keep-alive with chunked bodies",
          "[streaming][clients][python]") {
    if (!have_command("python3")) {
        RS_SKIP("python3 not found");
    }
    rs::server srv(test::local_options());
    add_echo_routes(srv);
    add_stream_route(srv);
    srv.post(
        "/count",
        [](const rs::request& req, rs::response& res) {
            std::size_t n = 0;
            auto ec = req.read_body([&n](std::string_view p) {
                n += p.size();
                return true;
            });
            res.set_content(ec ? ec.message() : "count " + std::to_string(n), "text/plain");
        },
        rs::body_mode::streamed);
    const auto port = start(srv);

    SECTION("pipelined: several GETs and POSTs in one sendall, answered in order") {
        temp_file script(R"PY(
import http.client, socket, sys
port = int(sys.argv[1])
s = socket.create_connection(("127.0.0.1", port), timeout=20)
batch = (b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"
         b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n"
         b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world"
         b"GET /hello?second HTTP/1.1\r\nHost: x\r\n\r\n"
         b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"7;ext=1\r\nchunked\r\n5\r\n body\r\n0\r\nX-Trailer: t\r\n\r\n"
         b"POST /count HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n12345"
         b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
s.sendall(batch)
f = s.makefile("rb")
class Keep:  # one buffered reader shared by every response; closing one must not close it
    def __init__(self, f): self.f = f
    def __getattr__(self, n): return getattr(self.f, n)
    def close(self): pass
class Sock:
    def makefile(self, *a, **k): return Keep(f)
for method in ["GET", "GET", "POST", "GET", "POST", "POST", "GET"]:
    r = http.client.HTTPResponse(Sock(), method=method)
    r.begin()
    body = r.read()
    print(r.status, r.getheader("Transfer-Encoding"), body.decode())
print("eof", f.read() == b"")
)PY");
        int code = 0;
        const std::string out =
            run_command("timeout 60 python3 " + script.path + " " + std::to_string(port) + " 2>&1", code);
        INFO("python output:\n" << out);
        CHECK(code == 0);
        CHECK(out == "200 None hello\n"
                     "200 chunked " + stream_body() + "\n"
                     "200 None hello world\n"
                     "200 None hello\n"
                     "200 None chunked body\n"
                     "200 None count 5\n"
                     "200 None hello\n"
                     "eof True\n");
    }
    SECTION("keep-alive: HTTPConnection reuses one connection") {
        temp_file script(R"PY(
import http.client, sys
port = int(sys.argv[1])
c = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
socks = []
def note():
    socks.append(c.sock.getsockname() if c.sock else None)
c.request("GET", "/hello"); r = c.getresponse(); print("GET", r.status, r.read().decode()); note()
def parts():
    yield b"first,"
    yield b"second,"
    yield b"third"
c.request("POST", "/echo", body=parts(), encode_chunked=True)
r = c.getresponse(); print("POST chunked", r.status, r.read().decode()); note()
c.request("GET", "/stream"); r = c.getresponse(); b = r.read()
print("stream", r.status, r.getheader("Transfer-Encoding"), len(b)); note()
payload = bytes(range(256)) * 4096
c.request("POST", "/count", body=payload); r = c.getresponse(); print("count", r.status, r.read().decode()); note()
c.request("POST", "/count", body=iter([payload, payload]), encode_chunked=True)
r = c.getresponse(); print("count chunked", r.status, r.read().decode()); note()
c.request("GET", "/hello"); r = c.getresponse(); print("GET", r.status, r.read().decode()); note()
print("connections", len(set(socks)), None in socks)
c.close()
)PY");
        int code = 0;
        const std::string out =
            run_command("timeout 60 python3 " + script.path + " " + std::to_string(port) + " 2>&1", code);
        INFO("python output:\n" << out);
        CHECK(code == 0);
        CHECK(out == "GET 200 hello\n"
                     "POST chunked 200 first,second,third\n"
                     "stream 200 chunked " + std::to_string(stream_body().size()) + "\n"
                     "count 200 count 1048576\n"
                     "count chunked 200 count 2097152\n"
                     "GET 200 hello\n"
                     "connections 1 False\n");
    }
    srv.stop();
}

TEST_CASE("a browser's EventSource receives server-sent events (headless Chromium)",
          "[streaming][clients][browser]") {
    const char* chromium = "/usr/bin/chromium";
    if (::access(chromium, X_OK) != 0) {
        RS_SKIP("chromium not installed");
    }
    rs::server srv(test::local_options());
    std::atomic<int> event_requests{0};
    std::mutex m;
    std::string accept_seen;
    srv.get("/", [](const rs::request&, rs::response& res) {
        res.set_content(R"HTML(<!DOCTYPE html>
<html><head><title>waiting</title></head><body><pre id="log">none</pre><script>
var got = [];
var es = new EventSource('/events');
es.onmessage = function (e) {
  got.push(e.data + '@' + e.lastEventId);
  document.getElementById('log').textContent = 'events:' + got.join('|');
  if (got.length === 3) { es.close(); document.title = 'done'; }
};
es.onerror = function () { document.getElementById('log').textContent += ' error'; };
</script></body></html>
)HTML",
                        "text/html; charset=utf-8");
    });
    srv.get("/events", [&](const rs::request& req, rs::response& res) {
        ++event_requests;
        {
            std::lock_guard<std::mutex> lock(m);
            accept_seen = std::string(req.get_header("Accept"));
        }
        res.set_header("Cache-Control", "no-cache");
        res.set_stream("text/event-stream", [](rs::body_writer& out) {
            out.write("retry: 60000\n\n");
            for (int i = 1; i <= 3; ++i)
                if (!out.write("id: " + std::to_string(i) + "\ndata: event " + std::to_string(i) + "\n\n")) return;
        });
    });
    const auto port = start(srv);
    char dir[] = "/tmp/rs_test_chromium_XXXXXX";
    REQUIRE(::mkdtemp(dir) != nullptr);
    int code = 0;
    const std::string dom = run_command(
        std::string("timeout 60 ") + chromium +
            " --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking"
            " --disable-component-update --disable-sync --user-data-dir=" + dir +
            " --virtual-time-budget=5000 --dump-dom http://127.0.0.1:" + std::to_string(port) + "/ 2>/dev/null",
        code);
    int rm_code = 0;
    run_command(std::string("rm -rf ") + dir, rm_code);
    INFO("chromium exit " << code << ", DOM:\n" << dom);
    CHECK(code == 0);
    CHECK(dom.find("events:event 1@1|event 2@2|event 3@3") != std::string::npos);
    CHECK(dom.find("<title>done</title>") != std::string::npos);
    CHECK(event_requests >= 1);
    std::lock_guard<std::mutex> lock(m);
    CHECK(accept_seen.find("text/event-stream") != std::string::npos);
    srv.stop();
}
