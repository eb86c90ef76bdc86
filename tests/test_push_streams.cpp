// Bodies that hold no thread, as a demanding user and an attacker use them: push streams
// (response::push_stream, stream_handle written from any thread), pulled bodies
// (response::set_pull) and files (response::set_file, static_files), over real sockets
// with raw clients, curl, Python's http.client and headless Chromium.
//
//   push_stream   the head at the handler's return; writes from other threads in order, as
//                 chunks (HTTP/1.1) or close-delimited (HTTP/1.0); close() and keep-alive;
//                 HEAD; on_close exactly once (client gone without a write, close(), stop,
//                 write_timeout); errc::closed after; a client that never reads
//                 (send_buffer_full at max_send_buffer, memory bounded, others unaffected);
//                 8 writer threads racing a disconnect and a stop; a handle that outlives
//                 its server; stop() and restart() end every stream cleanly; access log
//   set_pull      sized, unsized (chunked, HTTP/1.0), short, pull_failed, a throw; never two
//                 calls at once; slow readers hold no thread
//   set_file      20 MiB byte-exact (sha256), HEAD, ranges through static_files (206), a
//                 file truncated while sent; over TLS (the pread path)
//   the figure    64 push streams + 64 non-reading 20 MiB downloads: a fresh GET /hello
//                 still answers, threads stay <= worker_threads + 2; Chromium EventSources
//
// Deterministic on a loaded machine: every wait is on a read, a condition variable or a
// child's output, each bounded; nothing sleeps to synchronise, and no speed is asserted
// beyond bounds with a 10x margin.
#include "process.hpp"
#include "support.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace rs = restartable_server;
using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

namespace {

const char* const python = "/usr/bin/python3";

bool have_python() { return ::access(python, X_OK) == 0; }

/// hub: the push streams a test server opened (in order) and what became of them. It
/// outlives the server it serves (declare it first), so late on_close calls find it.
struct hub {
    struct entry {
        rs::stream_handle handle;
        int closes = 0;  // on_close calls: must end at exactly 1
    };
    std::mutex m;
    std::condition_variable cv;
    std::deque<entry> streams;
    int opened = 0, closed = 0;
    bool released = false;  // release(): waits return at once

    /// open: res becomes a push stream registered here, its first bytes written (if any);
    /// its on_close counts.
    rs::stream_handle open(rs::response& res, std::string_view first = {}, std::string_view type = "text/event-stream") {
        std::size_t i;
        {
            std::lock_guard<std::mutex> lock(m);
            i = streams.size();
            streams.emplace_back();
        }
        rs::stream_handle s = res.push_stream(type, [this, i] {
            std::lock_guard<std::mutex> lock(m);
            ++streams[i].closes;
            ++closed;
            cv.notify_all();
        });
        if (!first.empty()) s.write(first);  // before anyone else can see the stream
        std::lock_guard<std::mutex> lock(m);
        streams[i].handle = s;
        ++opened;
        cv.notify_all();
        return s;
    }
    bool wait_opened(int n, std::chrono::milliseconds timeout = 20s) {
        std::unique_lock<std::mutex> lock(m);
        return cv.wait_for(lock, timeout, [&] { return opened >= n || released; }) && opened >= n;
    }
    void release() {
        std::lock_guard<std::mutex> lock(m);
        released = true;
        cv.notify_all();
    }
    bool wait_closed(int n, std::chrono::milliseconds timeout = 20s) {
        std::unique_lock<std::mutex> lock(m);
        return cv.wait_for(lock, timeout, [&] { return closed >= n; });
    }
    rs::stream_handle at(std::size_t i) {
        std::lock_guard<std::mutex> lock(m);
        return streams.at(i).handle;
    }
    int closes_of(std::size_t i) {
        std::lock_guard<std::mutex> lock(m);
        return streams.at(i).closes;
    }
    int closed_count() {
        std::lock_guard<std::mutex> lock(m);
        return closed;
    }
    int opened_count() {
        std::lock_guard<std::mutex> lock(m);
        return opened;
    }
    std::vector<rs::stream_handle> all() {
        std::lock_guard<std::mutex> lock(m);
        std::vector<rs::stream_handle> v;
        for (const entry& e : streams) v.push_back(e.handle);
        return v;
    }
    /// every_close_once: each stream's on_close ran exactly once.
    bool every_close_once() {
        std::lock_guard<std::mutex> lock(m);
        for (const entry& e : streams)
            if (e.closes != 1) return false;
        return true;
    }
};

/// add_routes: /events (a push stream of the hub), /hello, /where ("old run" when served
/// by a run that a stop or restart is replacing, "this run" otherwise).
void add_routes(rs::server& srv, hub& h) {
    srv.get("/events", [&h](const rs::request&, rs::response& res) {
        res.set_header("Cache-Control", "no-cache");
        h.open(res);
    });
    srv.get("/hello", [](const rs::request&, rs::response& res) { res.set_content("Hello, World!", "text/plain"); });
    srv.get("/where", [](const rs::request& req, rs::response& res) {
        res.set_content(req.stop_requested() ? "old run" : "this run", "text/plain");
    });
}

/// read_chunk: the next chunk of a chunked body from c: its data, or last = true for the
/// last chunk (its empty trailer read too). False on EOF, a timeout or bad framing.
bool read_chunk(test::client& c, std::string& data, bool& last) {
    std::string line;
    if (!c.read_line(line) || line.empty() || line.find_first_not_of("0123456789abcdef") != std::string::npos)
        return false;
    const std::size_t n = std::stoul(line, nullptr, 16);
    last = n == 0;
    if (last) return c.read_line(line) && line.empty();
    while (c.rd.buf.size() < n + 2)
        if (!c.rd.fill()) return false;
    if (c.rd.buf.compare(n, 2, "\r\n") != 0) return false;
    data = c.rd.buf.substr(0, n);
    c.rd.buf.erase(0, n + 2);
    return true;
}

/// read_chunked: chunks from c until want bytes came (or, with want == npos, until the
/// last chunk); last tells whether the last chunk came. False on EOF, timeout, bad framing.
bool read_chunked(test::client& c, std::string& body, bool& last, std::size_t want = std::string::npos) {
    last = false;
    while (want == std::string::npos || body.size() < want) {
        std::string data;
        if (!read_chunk(c, data, last)) return false;
        if (last) return true;
        body += data;
    }
    return true;
}

/// read_to_eof: everything still sent on fd (after the bytes read ahead in buf) until the
/// peer closes; eof false when the read failed otherwise (a timeout, for one).
std::string read_to_eof(int fd, std::string& buf, bool& eof) {
    std::string out = std::move(buf);
    buf.clear();
    char tmp[65536];
    for (;;) {
        const ssize_t n = ::recv(fd, tmp, sizeof tmp, 0);
        if (n > 0) {
            out.append(tmp, static_cast<std::size_t>(n));
            continue;
        }
        eof = n == 0 || errno == ECONNRESET;
        return out;
    }
}
std::string read_to_eof(test::client& c, bool& eof) { return read_to_eof(c.fd, c.rd.buf, eof); }

/// thread_group: threads joined on destruction (also when a REQUIRE leaves the test case
/// early). Catch2's assertions are not thread-safe: threads count failures in atomics and
/// the test checks those.
struct thread_group {
    std::vector<std::thread> threads;
    template <class F>
    void spawn(F f) {
        threads.emplace_back(std::move(f));
    }
    void join() {
        for (std::thread& t : threads)
            if (t.joinable()) t.join();
    }
    ~thread_group() { join(); }
};

/// write_all: s.write(data), retried (yielding) while the buffer is full; the error that
/// ended it (none when queued).
std::error_code write_all(rs::stream_handle& s, std::string_view data) {
    for (;;) {
        const std::error_code ec = s.write(data);
        if (ec != rs::errc::send_buffer_full) return ec;
        std::this_thread::yield();
    }
}

/// pattern: n bytes of a known pattern from offset (a pulled body's content).
char pattern_at(std::uint64_t i) { return static_cast<char>('a' + (i * 7 + i / 251) % 26); }
std::string pattern(std::uint64_t from, std::size_t n) {
    std::string s(n, '\0');
    for (std::size_t k = 0; k < n; ++k) s[k] = pattern_at(from + k);
    return s;
}

std::size_t query_size(const rs::request& req, const char* name, std::size_t fallback) {
    const std::optional<std::string> v = req.query_param(name);
    return v ? static_cast<std::size_t>(std::stoull(*v)) : fallback;
}

/// temp_dir: a temporary directory, removed with what it holds.
struct temp_dir {
    std::string path;
    temp_dir() {
        char t[] = "/tmp/rs_push_streams_XXXXXX";
        REQUIRE(::mkdtemp(t) != nullptr);
        path = t;
    }
    ~temp_dir() {
        const int status = std::system(("rm -rf '" + path + "'").c_str());
        (void)status;
    }
    temp_dir(const temp_dir&) = delete;
    temp_dir& operator=(const temp_dir&) = delete;
    std::string operator/(const std::string& name) const { return path + "/" + name; }
};

/// random_file: writes n pseudo-random bytes (fixed seed) to path and returns them.
std::string random_file(const std::string& path, std::size_t n, unsigned seed = 1) {
    std::string data(n, '\0');
    std::mt19937_64 rng(seed);
    for (std::size_t i = 0; i + 8 <= n; i += 8) {
        const std::uint64_t v = rng();
        std::memcpy(&data[i], &v, 8);
    }
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(data.data(), static_cast<std::streamsize>(data.size()));
    f.close();
    REQUIRE(f.good());
    return data;
}

/// sha256_of: the sha256sum of a file ("" when the tool is missing or failed).
std::string sha256_of(const std::string& path) {
    const test::command_result r = test::run_command({"sha256sum", path}, 60s);
    if (!test::exited_0(r.status)) return {};
    return r.out.substr(0, r.out.find(' '));
}

/// open_file: a read-only descriptor of path for set_file.
rs::unique_fd open_file(const std::string& path) { return rs::unique_fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC)); }

/// curl_args: curl, silent but for errors, bounded in time.
std::vector<std::string> curl_args(std::initializer_list<std::string> more) {
    std::vector<std::string> a = {"curl", "-sS", "--max-time", "60"};
    a.insert(a.end(), more);
    return a;
}

std::string url(std::uint16_t port, const std::string& path, const std::string& scheme = "http") {
    return scheme + "://127.0.0.1:" + std::to_string(port) + path;
}

/// server_threads: threads of this process beyond baseline (the server's).
int server_threads(int baseline) { return test::thread_count() - baseline; }

}  // namespace

// ------------------------------------------------------------------ push streams --

TEST_CASE("push_stream: the head goes when the handler returns; writes from other threads arrive in order, "
          "as chunks; close() sends the last chunk and the connection serves the next request",
          "[push_streams][push]") {
    test::watchdog dog("push stream chunks", 120s);
    hub h;
    rs::server srv(test::local_options());
    add_routes(srv, h);
    const std::uint16_t port = test::start(srv);

    test::client c(port);
    REQUIRE(c.ok());
    REQUIRE(c.send("GET /events HTTP/1.1\r\nHost: x\r\n\r\n"));
    const test::http_response head = c.read();  // no write yet: the head alone came
    REQUIRE(head.status == 200);
    CHECK(head.header("Transfer-Encoding") == "chunked");
    CHECK(head.header("Content-Type") == "text/event-stream");
    CHECK(head.header("Cache-Control") == "no-cache");
    CHECK(head.header("Content-Length").empty());
    REQUIRE(h.wait_opened(1));
    rs::stream_handle s = h.at(0);
    CHECK(s.is_open());
    CHECK_FALSE(s.stopping());

    // Threads one after another: their writes arrive in the order made.
    std::string expected;
    std::atomic<int> failed_writes{0};
    for (int t = 0; t < 4; ++t) {
        std::string mine;
        for (int i = 0; i < 25; ++i) mine += "data: thread " + std::to_string(t) + " event " + std::to_string(i) + "\n\n";
        std::thread writer([&s, &failed_writes, t] {
            for (int i = 0; i < 25; ++i)
                if (write_all(s, "data: thread " + std::to_string(t) + " event " + std::to_string(i) + "\n\n"))
                    failed_writes.fetch_add(1);
        });
        writer.join();
        expected += mine;
    }
    CHECK(failed_writes.load() == 0);
    std::string body;
    bool last = false;
    REQUIRE(read_chunked(c, body, last, expected.size()));
    CHECK_FALSE(last);
    CHECK(body == expected);

    // Threads at once: each one's writes stay in its order, none is lost or torn.
    const int writers = 4, per_writer = 200;
    thread_group ts;
    for (int t = 0; t < writers; ++t)
        ts.spawn([&s, &failed_writes, t] {
            for (int i = 0; i < per_writer; ++i)
                if (write_all(s, "<" + std::to_string(t) + ":" + std::to_string(i) + ">")) failed_writes.fetch_add(1);
        });
    std::size_t total = 0;
    for (int t = 0; t < writers; ++t)
        for (int i = 0; i < per_writer; ++i) total += ("<" + std::to_string(t) + ":" + std::to_string(i) + ">").size();
    body.clear();
    REQUIRE(read_chunked(c, body, last, total));
    ts.join();
    CHECK(failed_writes.load() == 0);
    REQUIRE(body.size() == total);
    std::vector<int> next(writers, 0);
    for (std::size_t p = 0; p < body.size();) {
        const std::size_t colon = body.find(':', p), end = body.find('>', p);
        REQUIRE(body[p] == '<');
        REQUIRE(colon < end);
        const int t = std::stoi(body.substr(p + 1, colon - p - 1));
        const int i = std::stoi(body.substr(colon + 1, end - colon - 1));
        REQUIRE(t >= 0);
        REQUIRE(t < writers);
        CHECK(i == next[static_cast<std::size_t>(t)]);
        next[static_cast<std::size_t>(t)] = i + 1;
        p = end + 1;
    }
    for (int n : next) CHECK(n == per_writer);

    // close(): what was queued, then the last chunk; the connection serves the next request.
    REQUIRE_FALSE(s.write("data: the end\n\n"));
    s.close();
    s.close();  // idempotent
    CHECK_FALSE(s.is_open());
    CHECK(s.write("late") == rs::errc::closed);
    body.clear();
    REQUIRE(read_chunked(c, body, last));
    CHECK(last);
    CHECK(body == "data: the end\n\n");
    REQUIRE(h.wait_closed(1));
    REQUIRE(c.send("GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"));
    const test::http_response next_response = c.read();
    CHECK(next_response.status == 200);
    CHECK(next_response.body == "Hello, World!");
    CHECK(s.buffered_amount() == 0);
    const rs::stop_result r = srv.stop();
    CHECK(r.drained);
    CHECK(r.cut == 0);
    CHECK(h.closes_of(0) == 1);
}

TEST_CASE("push_stream to HTTP/1.0: raw bytes, no chunks, the body ends with the connection",
          "[push_streams][push]") {
    test::watchdog dog("push stream HTTP/1.0", 60s);
    hub h;
    rs::server srv(test::local_options());
    add_routes(srv, h);
    const std::uint16_t port = test::start(srv);
    test::client c(port);
    REQUIRE(c.send("GET /events HTTP/1.0\r\n\r\n"));
    const test::http_response head = c.read();
    REQUIRE(head.status == 200);
    CHECK(head.header("Transfer-Encoding").empty());
    CHECK(head.header("Content-Length").empty());
    REQUIRE(h.wait_opened(1));
    rs::stream_handle s = h.at(0);
    REQUIRE_FALSE(s.write("data: one\n\n"));
    std::error_code from_other;
    std::thread other([&s, &from_other] { from_other = s.write("data: two\n\n"); });
    other.join();
    REQUIRE_FALSE(from_other);
    while (c.rd.buf.size() < 22) REQUIRE(c.rd.fill());
    CHECK(c.rd.buf == "data: one\n\ndata: two\n\n");
    c.rd.buf.clear();
    REQUIRE_FALSE(s.write("data: three\n\n"));
    s.close();
    bool eof = false;
    CHECK(read_to_eof(c, eof) == "data: three\n\n");
    CHECK(eof);
    REQUIRE(h.wait_closed(1));
    CHECK(s.write("x") == rs::errc::closed);
    srv.stop();
    CHECK(h.every_close_once());
}

TEST_CASE("push_stream and HEAD: the head alone, on_close runs, the connection goes on", "[push_streams][push]") {
    test::watchdog dog("push stream HEAD", 60s);
    hub h;
    rs::server srv(test::local_options());
    add_routes(srv, h);
    const std::uint16_t port = test::start(srv);
    test::client c(port);
    REQUIRE(c.send("HEAD /events HTTP/1.1\r\nHost: x\r\n\r\n"));
    const test::http_response head = c.read(true);
    REQUIRE(head.status == 200);
    CHECK(head.header("Content-Type") == "text/event-stream");
    REQUIRE(h.wait_closed(1));
    rs::stream_handle s = h.at(0);
    CHECK_FALSE(s.is_open());
    CHECK(s.write("data: nobody\n\n") == rs::errc::closed);
    // Nothing followed the head (no chunk, no last chunk): the next response is next.
    REQUIRE(c.send("GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"));
    const test::http_response hello = c.read();
    CHECK(hello.status == 200);
    CHECK(hello.body == "Hello, World!");
    srv.stop();
    CHECK(h.every_close_once());
}

TEST_CASE("push_stream: on_close runs exactly once when the client goes away, noticed without a write",
          "[push_streams][push][disconnect]") {
    test::watchdog dog("push stream disconnect", 120s);
    hub h;
    rs::server srv(test::local_options());
    add_routes(srv, h);
    const std::uint16_t port = test::start(srv);

    SECTION("a raw client closes its socket after the head") {
        {
            test::client c(port);
            REQUIRE(c.send("GET /events HTTP/1.1\r\nHost: x\r\n\r\n"));
            REQUIRE(c.read().status == 200);
            REQUIRE(h.wait_opened(1));
        }  // closed here; the stream was never written to
        REQUIRE(h.wait_closed(1));
        CHECK(h.at(0).write("data: too late\n\n") == rs::errc::closed);
        CHECK_FALSE(h.at(0).is_open());
    }
    SECTION("a raw client shuts its socket down with unread events in its buffer (a reset)") {
        {
            test::client c(port);
            REQUIRE(c.send("GET /events HTTP/1.1\r\nHost: x\r\n\r\n"));
            REQUIRE(h.wait_opened(1));
            REQUIRE_FALSE(h.at(0).write("data: unread\n\n"));
            REQUIRE(c.readable_within(10s));
        }
        REQUIRE(h.wait_closed(1));
        CHECK(h.at(0).write("data: too late\n\n") == rs::errc::closed);
    }
    SECTION("curl -N, killed after the first event") {
        test::spawn_options so;
        so.err = test::stream::null;
        auto curl = std::make_unique<test::process>(curl_args({"-N", url(port, "/events")}), so);
        REQUIRE(curl->started());
        REQUIRE(h.wait_opened(1));
        REQUIRE_FALSE(h.at(0).write("data: first\n\n"));
        const std::optional<std::string> line = curl->read_line(20s);
        REQUIRE(line);
        CHECK(*line == "data: first");
        curl.reset();  // SIGKILL, reaped
        REQUIRE(h.wait_closed(1));
        CHECK(h.at(0).write("data: too late\n\n") == rs::errc::closed);
    }
    SECTION("Python's http.client reads two events and exits") {
        if (!have_python()) RS_SKIP("python3 is not installed");
        const std::string script =
            "import http.client, sys\n"
            "c = http.client.HTTPConnection('127.0.0.1', " + std::to_string(port) + ", timeout=20)\n"
            "c.request('GET', '/events')\n"
            "r = c.getresponse()\n"
            "print(r.status, r.getheader('Transfer-Encoding'), flush=True)\n"
            "print(r.readline().decode().strip(), flush=True)\n"
            "r.readline()\n"
            "print(r.readline().decode().strip(), flush=True)\n";
        test::process py({python, "-c", script});
        REQUIRE(py.started());
        const std::optional<std::string> status = py.read_line(20s);
        REQUIRE(status);
        CHECK(*status == "200 chunked");
        REQUIRE(h.wait_opened(1));
        rs::stream_handle s = h.at(0);
        REQUIRE_FALSE(s.write("data: 1\n\n"));
        REQUIRE_FALSE(s.write("data: 2\n\n"));
        CHECK(py.read_line(20s) == std::optional<std::string>("data: 1"));
        CHECK(py.read_line(20s) == std::optional<std::string>("data: 2"));
        CHECK(test::exited_0(py.wait_exit(20s)));
        REQUIRE(h.wait_closed(1));
        CHECK(s.write("data: 3\n\n") == rs::errc::closed);
    }
    // Exactly once: nothing later (more writes, close(), the stop) calls it again.
    for (rs::stream_handle s : h.all()) s.close();
    srv.stop();
    CHECK(h.closed_count() == 1);
    CHECK(h.every_close_once());
}

TEST_CASE("push_stream: a client that half-closes, or sends its next request while the stream is idle: the "
          "stream ends, or goes on without a spinning worker and the request is answered after it",
          "[push_streams][push][disconnect]") {
    test::watchdog dog("push stream client input", 120s);
    hub h;
    rs::server srv(test::local_options(2));
    add_routes(srv, h);
    const std::uint16_t port = test::start(srv);

    SECTION("a half-close (shutdown SHUT_WR) ends the stream, without a write") {
        test::client c(port);
        REQUIRE(c.send("GET /events HTTP/1.1\r\nHost: x\r\n\r\n"));
        REQUIRE(c.read().status == 200);
        REQUIRE(h.wait_opened(1));
        REQUIRE(::shutdown(c.fd, SHUT_WR) == 0);
        REQUIRE(h.wait_closed(1));
        CHECK(h.at(0).write("data: too late\n\n") == rs::errc::closed);
    }
    SECTION("the next request, sent while the stream is idle, waits for it and is answered after close()") {
        test::client c(port);
        REQUIRE(c.send("GET /events HTTP/1.1\r\nHost: x\r\n\r\n"));
        REQUIRE(c.read().status == 200);
        REQUIRE(h.wait_opened(1));
        rs::stream_handle s = h.at(0);
        REQUIRE(c.send("GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"));
        // The unread request must not make a worker spin (poll(2) reports unread input at
        // every re-arm): the process's CPU time while the stream idles for 2 s. Idle it is
        // near 0; a spinning worker would take most of a CPU. (The wait is a bounded wait
        // for an on_close that must not come.)
        rusage before{}, after{};
        ::getrusage(RUSAGE_SELF, &before);
        CHECK_FALSE(h.wait_closed(1, 2s));
        ::getrusage(RUSAGE_SELF, &after);
        const auto cpu_us = [](const rusage& r) {
            return (r.ru_utime.tv_sec + r.ru_stime.tv_sec) * 1000000L + r.ru_utime.tv_usec + r.ru_stime.tv_usec;
        };
        const long used = cpu_us(after) - cpu_us(before);
        WARN("an idle push stream with an unread request: " << used / 1000 << " ms of CPU in 2 s");
        CHECK(used < 700000);
        REQUIRE_FALSE(s.write("data: still here\n\n"));
        std::string body;
        bool last = false;
        REQUIRE(read_chunked(c, body, last, 18));
        CHECK(body == "data: still here\n\n");
        s.close();
        body.clear();
        REQUIRE(read_chunked(c, body, last));
        CHECK(last);
        const test::http_response hello = c.read();
        CHECK(hello.status == 200);
        CHECK(hello.body == "Hello, World!");
        REQUIRE(h.wait_closed(1));
    }
    srv.stop();
    CHECK(h.every_close_once());
}

TEST_CASE("push_stream with real clients: curl -N (HTTP/1.1 and 1.0) and Python's http.client on a kept "
          "connection", "[push_streams][push][clients]") {
    test::watchdog dog("push stream clients", 120s);
    hub h;
    rs::server srv(test::local_options());
    add_routes(srv, h);
    const std::uint16_t port = test::start(srv);

    SECTION("curl -N: each event as it is written, then the end of the body") {
        for (const char* version : {"--http1.1", "--http1.0"}) {
            INFO(version);
            const int before = h.opened_count();
            test::process curl(curl_args({"-N", version, url(port, "/events")}));
            REQUIRE(curl.started());
            REQUIRE(h.wait_opened(before + 1));
            rs::stream_handle s = h.at(static_cast<std::size_t>(before));
            for (int i = 1; i <= 3; ++i) {  // one at a time: each is read before the next is written
                REQUIRE_FALSE(s.write("data: event " + std::to_string(i) + "\n\n"));
                CHECK(curl.read_line(20s) == std::optional<std::string>("data: event " + std::to_string(i)));
                CHECK(curl.read_line(20s) == std::optional<std::string>(""));
            }
            s.close();
            CHECK(curl.read_all(20s) == std::optional<std::string>(""));
            CHECK(test::exited_0(curl.wait_exit(20s)));  // a complete body: exit 0
        }
    }
    SECTION("Python's http.client: the stream, then /hello on the same connection") {
        if (!have_python()) RS_SKIP("python3 is not installed");
        const std::string script =
            "import http.client\n"
            "c = http.client.HTTPConnection('127.0.0.1', " + std::to_string(port) + ", timeout=20)\n"
            "c.request('GET', '/events')\n"
            "r = c.getresponse()\n"
            "sock = c.sock\n"
            "print(r.status, r.getheader('Content-Type'), flush=True)\n"
            "body = r.read()\n"
            "print(len(body), body.count(b'data: '), body.endswith(b'data: 99\\n\\n'), flush=True)\n"
            "c.request('GET', '/hello')\n"
            "h = c.getresponse()\n"
            "print(h.status, h.read().decode(), c.sock is sock, flush=True)\n";
        test::process py({python, "-c", script});
        REQUIRE(py.started());
        CHECK(py.read_line(20s) == std::optional<std::string>("200 text/event-stream"));
        REQUIRE(h.wait_opened(1));
        rs::stream_handle s = h.at(0);
        std::size_t bytes = 0;
        int failed = 0;
        std::thread writer([&] {
            for (int i = 0; i < 100; ++i) {
                const std::string e = "data: " + std::to_string(i) + "\n\n";
                bytes += e.size();
                if (write_all(s, e)) ++failed;
            }
            s.close();
        });
        writer.join();
        CHECK(failed == 0);
        CHECK(py.read_line(20s) == std::optional<std::string>(std::to_string(bytes) + " 100 True"));
        CHECK(py.read_line(20s) == std::optional<std::string>("200 Hello, World! True"));
        CHECK(test::exited_0(py.wait_exit(20s)));
    }
    srv.stop();
    CHECK(h.every_close_once());
}

TEST_CASE("push_stream: writes queued before the handler returns go out after the head", "[push_streams][push]") {
    test::watchdog dog("push stream early writes", 60s);
    hub h;
    rs::server srv(test::local_options());
    std::atomic<int> failed{0};
    srv.get("/early", [&h, &failed](const rs::request& req, rs::response& res) {
        rs::stream_handle s = h.open(res);
        if (s.write("data: written in the handler\n\n")) failed.fetch_add(1);
        if (req.query_param("close")) s.close();
    });
    srv.get("/hello", [](const rs::request&, rs::response& res) { res.set_content("Hello, World!", "text/plain"); });
    const std::uint16_t port = test::start(srv);
    test::client c(port);
    REQUIRE(c.send("GET /early HTTP/1.1\r\nHost: x\r\n\r\n"));
    REQUIRE(c.read().status == 200);
    std::string body;
    bool last = false;
    REQUIRE(read_chunked(c, body, last, 30));
    CHECK(body == "data: written in the handler\n\n");
    h.at(0).close();
    REQUIRE(read_chunked(c, body, last));
    CHECK(last);
    // Closed in the handler: the event and the last chunk, then the next request.
    REQUIRE(c.send("GET /early?close HTTP/1.1\r\nHost: x\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\n\r\n"));
    REQUIRE(c.read().status == 200);
    body.clear();
    REQUIRE(read_chunked(c, body, last));
    CHECK(last);
    CHECK(body == "data: written in the handler\n\n");
    CHECK(c.read().body == "Hello, World!");
    srv.stop();
    CHECK(h.closed_count() == 2);
    CHECK(h.every_close_once());
    CHECK(failed.load() == 0);
}

TEST_CASE("push_stream: a stream that never starts (the handler throws, replaces the body, answers 204) runs "
          "on_close and reports closed; a request pipelined behind a stream waits for it",
          "[push_streams][push]") {
    test::watchdog dog("push stream never started", 60s);
    hub h;
    rs::server srv(test::local_options());
    add_routes(srv, h);
    srv.get("/throws", [&h](const rs::request&, rs::response& res) {
        h.open(res);
        throw std::runtime_error("after push_stream");
    });
    srv.get("/replaced", [&h](const rs::request&, rs::response& res) {
        h.open(res);
        res.set_content("plain after all", "text/plain");
    });
    srv.get("/no-content", [&h](const rs::request&, rs::response& res) {
        h.open(res);
        res.status = 204;
    });
    const std::uint16_t port = test::start(srv);
    test::client c(port);
    REQUIRE(c.send("GET /throws HTTP/1.1\r\nHost: x\r\n\r\n"));
    CHECK(c.read().status == 500);
    REQUIRE(c.send("GET /replaced HTTP/1.1\r\nHost: x\r\n\r\n"));
    const test::http_response replaced = c.read();
    CHECK(replaced.status == 200);
    CHECK(replaced.body == "plain after all");
    REQUIRE(c.send("GET /no-content HTTP/1.1\r\nHost: x\r\n\r\n"));
    const test::http_response none = c.read();
    CHECK(none.status == 204);
    CHECK(none.header("Transfer-Encoding").empty());
    REQUIRE(h.wait_closed(3));
    for (std::size_t i = 0; i < 3; ++i) {
        CHECK(h.at(i).write("x") == rs::errc::closed);
        CHECK_FALSE(h.at(i).is_open());
    }
    // Pipelined in one send: the stream, then /hello, answered once the stream ended.
    REQUIRE(c.send("GET /events HTTP/1.1\r\nHost: x\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\n\r\n"));
    REQUIRE(c.read().status == 200);
    REQUIRE(h.wait_opened(4));
    REQUIRE_FALSE(h.at(3).write("data: one\n\n"));
    std::string body;
    bool last = false;
    REQUIRE(read_chunked(c, body, last, 11));
    CHECK_FALSE(c.readable_within(0ms));  // nothing but the stream so far
    h.at(3).close();
    body.clear();
    REQUIRE(read_chunked(c, body, last));
    CHECK(last);
    CHECK(c.read().body == "Hello, World!");
    srv.stop();
    CHECK(h.closed_count() == 4);
    CHECK(h.every_close_once());
}

TEST_CASE("push_stream: max_send_buffer holds even before the handler returns", "[push_streams][push][limits]") {
    test::watchdog dog("push stream early limit", 60s);
    hub h;
    rs::options o = test::local_options();
    o.max_send_buffer = 64 * 1024;
    rs::server srv(o);
    std::vector<std::error_code> results;  // the handler's, read after the stop joined it
    std::size_t buffered = 0;
    srv.get("/early", [&](const rs::request&, rs::response& res) {
        rs::stream_handle s = h.open(res);
        const std::string piece(40 * 1024, 'x');
        results.push_back(s.write(piece));  // the buffer is empty: taken
        results.push_back(s.write(piece));  // would pass 64 KiB
        buffered = s.buffered_amount();
        s.close();
    });
    const std::uint16_t port = test::start(srv);
    test::client c(port);
    REQUIRE(c.send("GET /early HTTP/1.1\r\nHost: x\r\n\r\n"));
    REQUIRE(c.read().status == 200);
    std::string body;
    bool last = false;
    REQUIRE(read_chunked(c, body, last));
    CHECK(last);
    srv.stop();
    REQUIRE(results.size() == 2);
    CHECK_FALSE(results[0]);
    CHECK(results[1] == rs::errc::send_buffer_full);
    CHECK(buffered == 40 * 1024);  // the first write alone
    CHECK(body.size() == 40 * 1024);
}

TEST_CASE("push_stream: max_send_buffer 0 means the default (1 MiB), not unbounded", "[push_streams][push][limits]") {
    test::watchdog dog("push stream default limit", 60s);
    hub h;
    rs::options o = test::local_options();
    o.max_send_buffer = 0;
    rs::server srv(o);
    add_routes(srv, h);
    const std::uint16_t port = test::start(srv);
    const int c = test::connect_small_rcvbuf(port);
    REQUIRE(c >= 0);
    REQUIRE(test::send_all(c, "GET /events HTTP/1.1\r\nHost: x\r\n\r\n"));
    REQUIRE(h.wait_opened(1));
    rs::stream_handle s = h.at(0);
    const std::string piece(64 * 1024, 'x');
    std::size_t accepted = 0;
    std::error_code ec;
    while (!(ec = s.write(piece)) && accepted < 64u * 1024 * 1024) accepted += piece.size();
    CHECK(ec == rs::errc::send_buffer_full);
    CHECK(s.buffered_amount() <= rs::options().max_send_buffer);
    ::close(c);
    REQUIRE(h.wait_closed(1));
    srv.stop();
}

TEST_CASE("push_stream: a client that never reads: send_buffer_full at max_send_buffer, memory bounded, "
          "other clients unaffected; write_timeout then ends it", "[push_streams][push][limits]") {
    test::watchdog dog("push stream slow reader", 120s);
    hub h;
    rs::options o = test::local_options();
    o.max_send_buffer = 256 * 1024;
    rs::server srv(o);
    add_routes(srv, h);
    const std::uint16_t port = test::start(srv);

    // The budget of one stalled push stream: at most max_send_buffer queued in the
    // server (its channel and the chunk being sent, framing included: buffered_amount()),
    // plus what the kernel holds for the socket - its send buffer, at most tcp_wmem's
    // maximum, and what the loopback receiver queued - counted here as twice tcp_wmem's
    // maximum. Everything the program wrote beyond that is refused.
    long wmem_max = 4 * 1024 * 1024;
    {
        std::ifstream f("/proc/sys/net/ipv4/tcp_wmem");
        long lo = 0, def = 0, hi = 0;
        if (f >> lo >> def >> hi) wmem_max = hi;
    }
    const std::size_t budget = o.max_send_buffer + 2 * static_cast<std::size_t>(wmem_max) + 1024 * 1024;

    const int stalled = test::connect_small_rcvbuf(port);
    REQUIRE(stalled >= 0);
    REQUIRE(test::send_all(stalled, "GET /events HTTP/1.1\r\nHost: x\r\n\r\n"));
    REQUIRE(h.wait_opened(1));
    rs::stream_handle s = h.at(0);
    const std::string piece(16 * 1024, 'e');
    std::size_t accepted = 0;
    std::error_code ec;
    while (!(ec = s.write(piece))) {
        accepted += piece.size();
        REQUIRE(accepted <= budget);
    }
    CHECK(ec == rs::errc::send_buffer_full);
    const std::size_t at_full = s.buffered_amount();
    CHECK(at_full <= o.max_send_buffer);
    CHECK(at_full + piece.size() > o.max_send_buffer);  // the refusal was due
    for (int i = 0; i < 1000; ++i) {
        const std::error_code again = s.write(piece);
        if (!again) accepted += piece.size();
        REQUIRE(accepted <= budget);
        REQUIRE(s.buffered_amount() <= o.max_send_buffer);
    }
    WARN("a stalled push stream took " << accepted << " bytes before send_buffer_full (budget " << budget
                                       << "), " << at_full << " of them still in the server");

    // Others are served meanwhile: a second stream flows, /hello answers.
    test::client other(port);
    REQUIRE(other.send("GET /events HTTP/1.1\r\nHost: x\r\n\r\n"));
    REQUIRE(other.read().status == 200);
    REQUIRE(h.wait_opened(2));
    rs::stream_handle s2 = h.at(1);
    for (int i = 0; i < 10; ++i) {
        const std::string e = "data: " + std::to_string(i) + "\n\n";
        REQUIRE_FALSE(s2.write(e));
        std::string body;
        bool last = false;
        REQUIRE(read_chunked(other, body, last, e.size()));
        CHECK(body == e);
    }
    CHECK(test::get(port, "/hello").body == "Hello, World!");
    CHECK(s.is_open());

    ::close(stalled);  // unread bytes: a reset
    REQUIRE(h.wait_closed(1));
    CHECK(h.closes_of(0) == 1);
    CHECK(s.write("x") == rs::errc::closed);
    CHECK(s.buffered_amount() == 0);
    srv.stop();
}

TEST_CASE("push_stream: write_timeout ends a stream whose client stopped reading", "[push_streams][push][limits]") {
    test::watchdog dog("push stream write_timeout", 60s);
    hub h;
    rs::options o = test::local_options();
    o.max_send_buffer = 64 * 1024;
    o.write_timeout = 300ms;
    rs::server srv(o);
    add_routes(srv, h);
    const std::uint16_t port = test::start(srv);
    const int fd = test::connect_small_rcvbuf(port);
    REQUIRE(fd >= 0);
    REQUIRE(test::send_all(fd, "GET /events HTTP/1.1\r\nHost: x\r\n\r\n"));
    REQUIRE(h.wait_opened(1));
    rs::stream_handle t = h.at(0);
    // Written until the socket's buffers are full too (while the server holds nothing
    // unsent, the stream is idle and has no timeout): from then on the server's bytes wait,
    // and write_timeout closes the stream. Between refusals the loop waits for on_close.
    const std::string piece(16 * 1024, 'e');
    const auto give_up = steady::now() + 30s;  // the 300 ms write_timeout, with room
    std::error_code ec;
    while (ec != rs::errc::closed && steady::now() < give_up) {
        ec = t.write(piece);
        if (ec == rs::errc::send_buffer_full) h.wait_closed(1, 10ms);
    }
    REQUIRE(h.wait_closed(1, 0ms));
    CHECK(t.write("x") == rs::errc::closed);
    ::close(fd);
    srv.stop();
    CHECK(h.every_close_once());
}

TEST_CASE("push_stream: 8 threads write at once while the client disconnects and the server stops",
          "[push_streams][push][races]") {
    test::watchdog dog("push stream races", 120s);
    for (int round = 0; round < 5; ++round) {
        INFO("round " << round);
        hub h;
        std::atomic<long> writes{0};
        std::atomic<int> not_eof{0};
        thread_group threads;  // joined after the server below is gone (its stop ends every write loop)
        rs::options o = test::local_options();
        o.max_send_buffer = 64 * 1024;
        rs::server srv(o);
        add_routes(srv, h);
        const std::uint16_t port = test::start(srv);
        constexpr int streams = 3;
        std::vector<std::unique_ptr<test::client>> clients;
        for (int i = 0; i < streams; ++i) {
            clients.push_back(std::make_unique<test::client>(port));
            REQUIRE(clients.back()->send("GET /events HTTP/1.1\r\nHost: x\r\n\r\n"));
        }
        REQUIRE(h.wait_opened(streams));
        const std::vector<rs::stream_handle> handles = h.all();
        for (int t = 0; t < 8; ++t)
            threads.spawn([handles, &writes, t] {
                std::vector<rs::stream_handle> mine = handles;
                std::vector<bool> done(mine.size(), false);
                std::size_t left = mine.size();
                for (long i = 0; left != 0; ++i) {
                    for (std::size_t k = 0; k < mine.size(); ++k) {
                        if (done[k]) continue;
                        const std::error_code ec =
                            mine[k].write("data: " + std::to_string(t) + "/" + std::to_string(i) + "\n\n");
                        if (ec == rs::errc::closed) {
                            done[k] = true;
                            --left;
                        } else if (!ec) {
                            writes.fetch_add(1);
                        } else {
                            std::this_thread::yield();  // send_buffer_full: the client reads slower
                        }
                        (void)mine[k].buffered_amount();
                        (void)mine[k].is_open();
                        (void)mine[k].stopping();
                    }
                }
            });
        // Readers drain streams 1 and 2 to their end; stream 0's client vanishes.
        for (int i = 1; i < streams; ++i)
            threads.spawn([c = clients[static_cast<std::size_t>(i)].get(), &not_eof] {
                bool eof = false;
                read_to_eof(*c, eof);
                if (!eof) not_eof.fetch_add(1);
            });
        {  // the writers write: stream 0's client has a chunk of theirs
            REQUIRE(clients[0]->read().status == 200);
            std::string chunk;
            bool last = false;
            REQUIRE(read_chunk(*clients[0], chunk, last));
        }
        clients[0]->close();
        const rs::stop_result r = srv.stop();
        threads.join();
        CHECK(not_eof.load() == 0);
        CHECK(r.cut == 0);
        CHECK(h.closed_count() == streams);
        CHECK(h.every_close_once());
        for (rs::stream_handle s : handles) CHECK(s.write("x") == rs::errc::closed);
        CHECK(writes.load() > 0);
    }
}

TEST_CASE("push_stream: a handle outlives its server", "[push_streams][push]") {
    test::watchdog dog("push stream outlives server", 60s);
    hub h;
    rs::stream_handle kept;
    {
        auto srv = std::make_unique<rs::server>(test::local_options());
        add_routes(*srv, h);
        const std::uint16_t port = test::start(*srv);
        test::client c(port);
        REQUIRE(c.send("GET /events HTTP/1.1\r\nHost: x\r\n\r\n"));
        REQUIRE(c.read().status == 200);
        REQUIRE(h.wait_opened(1));
        kept = h.at(0);
        REQUIRE_FALSE(kept.write("data: before\n\n"));
        srv.reset();  // the destructor stops the run: the stream ends
        std::string body;
        bool last = false;
        REQUIRE(read_chunked(c, body, last));
        CHECK(last);
        CHECK(body == "data: before\n\n");
    }
    CHECK(kept.write("data: after\n\n") == rs::errc::closed);
    CHECK(kept.buffered_amount() == 0);
    CHECK_FALSE(kept.is_open());
    CHECK(kept.stopping());
    kept.close();
    CHECK(h.every_close_once());
    rs::stream_handle empty;
    CHECK(empty.write("x") == rs::errc::closed);
    CHECK_FALSE(empty.is_open());
    CHECK(empty.buffered_amount() == 0);
    empty.close();
}

TEST_CASE("push_stream: stop() ends every stream cleanly: what was queued, the last chunk; drained, nothing cut",
          "[push_streams][push][stop]") {
    test::watchdog dog("push streams at stop", 120s);
    hub h;
    rs::server srv(test::local_options(2));  // fewer workers than streams: none is held
    add_routes(srv, h);
    const std::uint16_t port = test::start(srv);
    constexpr int n = 8;
    std::vector<std::unique_ptr<test::client>> clients;
    for (int i = 0; i < n; ++i) {
        clients.push_back(std::make_unique<test::client>(port));
        REQUIRE(clients.back()->send(i % 2 ? "GET /events HTTP/1.1\r\nHost: x\r\n\r\n"
                                           : "GET /events HTTP/1.0\r\n\r\n"));
        REQUIRE(clients.back()->read().status == 200);
    }
    REQUIRE(h.wait_opened(n));
    const std::vector<rs::stream_handle> handles = h.all();
    for (rs::stream_handle s : handles) REQUIRE_FALSE(s.write("data: last words\n\n"));
    rs::stop_result result;
    thread_group stopper;
    stopper.spawn([&] { result = srv.stop(); });
    for (int i = 0; i < n; ++i) {
        INFO("client " << i);
        test::client& c = *clients[static_cast<std::size_t>(i)];
        bool eof = false;
        if (i % 2) {
            std::string body;
            bool last = false;
            REQUIRE(read_chunked(c, body, last));
            CHECK(last);
            CHECK(body == "data: last words\n\n");
            CHECK(read_to_eof(c, eof).empty());
        } else {
            CHECK(read_to_eof(c, eof) == "data: last words\n\n");
        }
        CHECK(eof);
    }
    stopper.join();
    CHECK(result.drained);
    CHECK(result.cut == 0);
    CHECK(!result.error);
    CHECK(h.closed_count() == n);
    CHECK(h.every_close_once());
    for (rs::stream_handle s : handles) {
        CHECK(s.stopping());
        CHECK(s.write("x") == rs::errc::closed);
    }
}

TEST_CASE("push_stream: restart() ends every stream; their connections move to the new run and serve the next "
          "request there", "[push_streams][push][restart]") {
    test::watchdog dog("push streams at restart", 120s);
    hub h;
    rs::server srv(test::local_options(2));
    add_routes(srv, h);
    const std::uint16_t port = test::start(srv);
    constexpr int n = 4;
    std::vector<std::unique_ptr<test::client>> clients;
    for (int i = 0; i < n; ++i) {
        clients.push_back(std::make_unique<test::client>(port));
        REQUIRE(clients.back()->send("GET /events HTTP/1.1\r\nHost: x\r\n\r\n"));
        REQUIRE(clients.back()->read().status == 200);
    }
    REQUIRE(h.wait_opened(n));
    for (rs::stream_handle s : h.all()) REQUIRE_FALSE(s.write("data: old run\n\n"));
    std::error_code ec;
    srv.restart(ec);
    REQUIRE_FALSE(ec);
    for (int i = 0; i < n; ++i) {
        INFO("client " << i);
        test::client& c = *clients[static_cast<std::size_t>(i)];
        std::string body;
        bool last = false;
        REQUIRE(read_chunked(c, body, last));
        CHECK(last);
        CHECK(body == "data: old run\n\n");
        REQUIRE(c.send("GET /where HTTP/1.1\r\nHost: x\r\n\r\n"));
        const test::http_response r = c.read();
        CHECK(r.status == 200);
        CHECK(r.body == "this run");  // served by the new run, on the same connection
        CHECK(r.header("Connection") != "close");
    }
    REQUIRE(h.wait_closed(n));
    for (std::size_t i = 0; i < n; ++i) CHECK(h.at(i).stopping());
    // A new stream on a moved connection, in the new run.
    REQUIRE(clients[0]->send("GET /events HTTP/1.1\r\nHost: x\r\n\r\n"));
    REQUIRE(clients[0]->read().status == 200);
    REQUIRE(h.wait_opened(n + 1));
    CHECK_FALSE(h.at(n).stopping());
    REQUIRE_FALSE(h.at(n).write("data: new run\n\n"));
    std::string body;
    bool last = false;
    REQUIRE(read_chunked(*clients[0], body, last, 15));
    CHECK(body == "data: new run\n\n");
    const rs::stop_result r = srv.stop();
    CHECK(r.drained);
    CHECK(r.cut == 0);
    CHECK(h.closed_count() == n + 1);
    CHECK(h.every_close_once());
}

TEST_CASE("push_stream: a handler that returns after the drain deadline: on_close runs, the handle is closed",
          "[push_streams][push][stop]") {
    test::watchdog dog("push stream past the deadline", 60s);
    hub h;
    std::mutex m;
    std::condition_variable cv;
    bool stopping = false, in_handler = false;
    rs::options o = test::local_options();
    o.drain_timeout = 0ms;  // the deadline is the stop request itself
    rs::server srv(o);
    srv.on_stop([&](rs::stop_reason) {
        std::lock_guard<std::mutex> lock(m);
        stopping = true;
        cv.notify_all();
    });
    srv.get("/late", [&](const rs::request&, rs::response& res) {
        h.open(res);
        std::unique_lock<std::mutex> lock(m);
        in_handler = true;
        cv.notify_all();
        cv.wait(lock, [&] { return stopping; });  // returns once the stop (and its deadline) began
    });
    const std::uint16_t port = test::start(srv);
    test::client c(port);
    REQUIRE(c.send("GET /late HTTP/1.1\r\nHost: x\r\n\r\n"));
    {
        std::unique_lock<std::mutex> lock(m);
        REQUIRE(cv.wait_for(lock, 20s, [&] { return in_handler; }));
    }
    const rs::stop_result r = srv.stop();
    CHECK(r.cut == 1);
    CHECK(h.closed_count() == 1);
    rs::stream_handle s = h.at(0);
    CHECK(s.write("data: into the void\n\n") == rs::errc::closed);
    CHECK_FALSE(s.is_open());
}

TEST_CASE("push_stream: the access log has one line per stream, however it ends", "[push_streams][push][log]") {
    test::watchdog dog("push stream access log", 60s);
    hub h;
    std::mutex m;
    std::condition_variable cv;
    std::vector<std::string> lines;
    rs::options o = test::local_options();
    o.access_log = [&](const rs::access_entry& e) {
        std::lock_guard<std::mutex> lock(m);
        lines.push_back(std::string(e.method) + " " + std::string(e.target) + " " + std::to_string(e.status) + " " +
                        std::to_string(e.bytes));
        cv.notify_all();
    };
    rs::server srv(o);
    add_routes(srv, h);
    srv.get("/broken", [](const rs::request&, rs::response& res) {
        res.set_pull("text/plain", [](char*, std::size_t) { return rs::pull_failed; });
    });
    const std::uint16_t port = test::start(srv);
    auto wait_lines = [&](std::size_t n) {
        std::unique_lock<std::mutex> lock(m);
        return cv.wait_for(lock, 20s, [&] { return lines.size() >= n; });
    };
    {
        test::client c(port);
        REQUIRE(c.send("GET /events?closed-by-server HTTP/1.1\r\nHost: x\r\n\r\n"));
        REQUIRE(c.read().status == 200);
        REQUIRE(h.wait_opened(1));
        REQUIRE_FALSE(h.at(0).write("data: 1\n\n"));
        h.at(0).close();
        std::string body;
        bool last = false;
        REQUIRE(read_chunked(c, body, last));
        REQUIRE(wait_lines(1));
    }
    {
        test::client c(port);
        REQUIRE(c.send("GET /events?client-left HTTP/1.1\r\nHost: x\r\n\r\n"));
        REQUIRE(c.read().status == 200);
        REQUIRE(h.wait_opened(2));
        REQUIRE_FALSE(h.at(1).write("data: 22\n\n"));
        std::string body;
        bool last = false;
        REQUIRE(read_chunked(c, body, last, 10));
    }  // the client leaves
    REQUIRE(h.wait_closed(2));
    CHECK(wait_lines(2));
    {
        test::client c(port);
        REQUIRE(c.send("GET /broken HTTP/1.1\r\nHost: x\r\n\r\n"));
        REQUIRE(c.read().status == 200);
        REQUIRE(c.closed());
        CHECK(wait_lines(3));
    }
    srv.stop();
    std::lock_guard<std::mutex> lock(m);
    INFO("access log:\n" << [&] {
        std::string all;
        for (const std::string& l : lines) all += l + "\n";
        return all;
    }());
    REQUIRE(lines.size() == 3);
    CHECK(lines[0] == "GET /events?closed-by-server 200 9");
    CHECK(lines[1] == "GET /events?client-left 200 10");
    CHECK(lines[2] == "GET /broken 200 0");
}

// ------------------------------------------------------------------ pulled bodies --

namespace {

/// pull_routes: pulled bodies of the known pattern, in pieces of odd sizes.
///   /pull?n=N[&sized]        N bytes, with Content-Length when sized
///   /pull/short?n=N          says N, ends at N/2
///   /pull/fail?n=N[&sized]   pull_failed after N/2
///   /pull/throw?n=N          throws after N/2
/// overlap counts calls made while another call for the same response ran.
struct pull_routes {
    std::atomic<int> overlap{0}, calls{0};
    void add(rs::server& srv) {
        srv.get("/pull", [this](const rs::request& req, rs::response& res) {
            const std::size_t n = query_size(req, "n", 1 << 20);
            if (req.query_param("sized"))
                res.set_pull("application/octet-stream", n, provider(n, n, 0));
            else
                res.set_pull("application/octet-stream", provider(n, n, 0));
        });
        srv.get("/pull/short", [this](const rs::request& req, rs::response& res) {
            const std::size_t n = query_size(req, "n", 1 << 20);
            res.set_pull("application/octet-stream", n, provider(n / 2, n / 2, 0));
        });
        srv.get("/pull/fail", [this](const rs::request& req, rs::response& res) {
            const std::size_t n = query_size(req, "n", 1 << 20);
            if (req.query_param("sized"))
                res.set_pull("application/octet-stream", n, provider(n, n / 2, 1));
            else
                res.set_pull("application/octet-stream", provider(n, n / 2, 1));
        });
        srv.get("/pull/throw", [this](const rs::request& req, rs::response& res) {
            const std::size_t n = query_size(req, "n", 1 << 20);
            res.set_pull("application/octet-stream", provider(n, n / 2, 2));
        });
    }
    /// provider: the pattern up to end; at stop_at, 0 (how == 0), pull_failed (1) or a throw (2).
    rs::pull_provider provider(std::size_t end, std::size_t stop_at, int how) {
        auto pos = std::make_shared<std::size_t>(0);
        auto busy = std::make_shared<std::atomic<int>>(0);
        return [this, end, stop_at, how, pos, busy](char* dst, std::size_t room) -> std::size_t {
            if (busy->fetch_add(1) != 0) overlap.fetch_add(1);
            calls.fetch_add(1);
            struct leave {
                std::atomic<int>& b;
                ~leave() { b.fetch_sub(1); }
            } guard{*busy};
            if (*pos >= stop_at && stop_at < end) {
                if (how == 1) return rs::pull_failed;
                if (how == 2) throw std::runtime_error("the source failed");
            }
            const std::size_t limit = std::min(end, stop_at < end ? stop_at : end);
            std::size_t n = std::min<std::size_t>({room, limit - *pos, 7001 + *pos % 5000});
            for (std::size_t k = 0; k < n; ++k) dst[k] = pattern_at(*pos + k);
            *pos += n;
            return n;
        };
    }
};

}  // namespace

TEST_CASE("set_pull: sized and unsized bodies, HTTP/1.1 and 1.0, keep-alive, HEAD", "[push_streams][pull]") {
    test::watchdog dog("set_pull bodies", 120s);
    pull_routes p;
    rs::server srv(test::local_options());
    p.add(srv);
    srv.get("/hello", [](const rs::request&, rs::response& res) { res.set_content("Hello, World!", "text/plain"); });
    const std::uint16_t port = test::start(srv);
    const std::size_t n = 3 * 1024 * 1024 + 17;
    const std::string expected = pattern(0, n);
    const std::string q = "?n=" + std::to_string(n);

    test::client c(port);
    REQUIRE(c.send("GET /pull" + q + "&sized HTTP/1.1\r\nHost: x\r\n\r\n"));
    test::http_response r = c.read();
    CHECK(r.status == 200);
    CHECK(r.header("Content-Length") == std::to_string(n));
    CHECK(r.header("Transfer-Encoding").empty());
    CHECK(r.body == expected);

    REQUIRE(c.send("GET /pull" + q + " HTTP/1.1\r\nHost: x\r\n\r\n"));  // the same connection
    r = c.read();
    CHECK(r.status == 200);
    CHECK(r.header("Transfer-Encoding") == "chunked");
    std::string body;
    bool last = false;
    REQUIRE(read_chunked(c, body, last));
    CHECK(last);
    CHECK(body == expected);

    REQUIRE(c.send("HEAD /pull" + q + "&sized HTTP/1.1\r\nHost: x\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\n\r\n"));
    r = c.read(true);
    CHECK(r.status == 200);
    CHECK(r.header("Content-Length") == std::to_string(n));
    CHECK(c.read().body == "Hello, World!");

    test::client old(port);
    REQUIRE(old.send("GET /pull" + q + " HTTP/1.0\r\n\r\n"));
    r = old.read();
    CHECK(r.status == 200);
    CHECK(r.header("Transfer-Encoding").empty());
    bool eof = false;
    CHECK(read_to_eof(old, eof) == expected);
    CHECK(eof);

    // curl and Python's http.client agree.
    const test::command_result cr = test::run_command(curl_args({url(port, "/pull" + q)}));
    CHECK(test::exited_0(cr.status));
    CHECK(cr.out == expected);
    if (have_python()) {
        const std::string script =
            "import http.client\n"
            "c = http.client.HTTPConnection('127.0.0.1', " + std::to_string(port) + ", timeout=20)\n"
            "for path in ['/pull" + q + "', '/pull" + q + "&sized']:\n"
            "    c.request('GET', path)\n"
            "    r = c.getresponse()\n"
            "    b = r.read()\n"
            "    print(len(b), r.getheader('Transfer-Encoding'), flush=True)\n";
        const test::command_result pr = test::run_command({python, "-c", script});
        CHECK(test::exited_0(pr.status));
        CHECK(pr.out == std::to_string(n) + " chunked\n" + std::to_string(n) + " None\n");
    }
    srv.stop();
    CHECK(p.overlap.load() == 0);
}

TEST_CASE("set_pull: a provider that ends short, returns pull_failed or throws: the client sees the body cut",
          "[push_streams][pull]") {
    test::watchdog dog("set_pull failures", 120s);
    pull_routes p;
    std::atomic<int> errors{0};
    rs::options o = test::local_options();
    o.error_log = [&errors](std::string_view) { errors.fetch_add(1); };
    rs::server srv(o);
    p.add(srv);
    srv.get("/hello", [](const rs::request&, rs::response& res) { res.set_content("Hello, World!", "text/plain"); });
    const std::uint16_t port = test::start(srv);
    const std::size_t n = 1024 * 1024;
    const std::string q = "?n=" + std::to_string(n);

    SECTION("sized, ends short: fewer bytes than Content-Length, then the close") {
        for (const std::string& path : {"/pull/short" + q, "/pull/fail" + q + "&sized"}) {
            INFO(path);
            test::client c(port);
            REQUIRE(c.send("GET " + path + " HTTP/1.1\r\nHost: x\r\n\r\n"));
            const test::http_response r = c.read(true);
            REQUIRE(r.status == 200);
            CHECK(r.header("Content-Length") == std::to_string(n));
            bool eof = false;
            const std::string body = read_to_eof(c, eof);
            CHECK(eof);
            CHECK(body.size() == n / 2);
            CHECK(body == pattern(0, n / 2));
        }
        const test::command_result cr = test::run_command(curl_args({url(port, "/pull/short" + q)}));
        CHECK(cr.status);
        CHECK_FALSE(test::exited_0(cr.status));  // curl: 18, partial file
    }
    SECTION("chunked, pull_failed or a throw: no last chunk, then the close") {
        for (const std::string& path : {"/pull/fail" + q, "/pull/throw" + q}) {
            INFO(path);
            test::client c(port);
            REQUIRE(c.send("GET " + path + " HTTP/1.1\r\nHost: x\r\n\r\n"));
            REQUIRE(c.read().status == 200);
            std::string body;
            bool last = false;
            CHECK_FALSE(read_chunked(c, body, last));
            CHECK_FALSE(last);
            CHECK(body == pattern(0, n / 2));
            bool eof = false;
            CHECK(read_to_eof(c, eof).empty());
            CHECK(eof);
            const test::command_result cr = test::run_command(curl_args({url(port, path)}));
            CHECK_FALSE(test::exited_0(cr.status));
        }
        CHECK(errors.load() >= 2);  // the throws were logged
    }
    CHECK(test::get(port, "/hello").body == "Hello, World!");
    srv.stop();
    CHECK(p.overlap.load() == 0);
}

TEST_CASE("set_pull: slow readers hold no thread", "[push_streams][pull][threads]") {
    test::watchdog dog("set_pull slow readers", 120s);
    pull_routes p;
    const int baseline = test::thread_count();
    constexpr std::size_t workers = 2;
    rs::server srv(test::local_options(workers));
    p.add(srv);
    srv.get("/hello", [](const rs::request&, rs::response& res) { res.set_content("Hello, World!", "text/plain"); });
    const std::uint16_t port = test::start(srv);
    std::vector<int> fds;
    for (int i = 0; i < 16; ++i) {
        const int fd = test::connect_small_rcvbuf(port);
        REQUIRE(fd >= 0);
        fds.push_back(fd);
        REQUIRE(test::send_all(fd, "GET /pull?n=67108864 HTTP/1.1\r\nHost: x\r\n\r\n"));
    }
    for (int fd : fds) {  // each has its head (and the body began): the server got to all
        pollfd pf{fd, POLLIN, 0};
        REQUIRE(::poll(&pf, 1, 20000) == 1);
    }
    const auto t0 = steady::now();
    const test::http_response hello = test::get(port, "/hello");
    const auto took = steady::now() - t0;
    CHECK(hello.body == "Hello, World!");
    CHECK(took < 10s);
    const int threads = server_threads(baseline);
    CHECK(threads <= static_cast<int>(workers) + 2);
    WARN("16 stalled pulled bodies on " << workers << " workers: GET /hello in "
                                         << std::chrono::duration_cast<std::chrono::milliseconds>(took).count()
                                         << " ms, " << threads << " server threads");
    for (int fd : fds) ::close(fd);
    srv.stop();
    CHECK(p.overlap.load() == 0);
}

// ------------------------------------------------------------------ files --

TEST_CASE("set_file: 20 MiB byte-exact, HEAD, a part; static_files ranges (206)", "[push_streams][file]") {
    test::watchdog dog("set_file", 180s);
    temp_dir dir;
    const std::size_t size = 20 * 1024 * 1024;
    const std::string path = dir / "big.bin";
    const std::string data = random_file(path, size);
    rs::server srv(test::local_options());
    srv.get("/file", [&](const rs::request& req, rs::response& res) {
        const std::size_t off = query_size(req, "off", 0), len = query_size(req, "len", size);
        res.set_file("application/octet-stream", open_file(path), off, len);
    });
    srv.get("/static/*", rs::static_files(dir.path));
    const std::uint16_t port = test::start(srv);

    const std::string want = sha256_of(path);
    if (want.empty()) WARN("sha256sum is missing: the bytes are compared directly");
    for (const char* route : {"/file", "/static/big.bin"}) {
        INFO(route);
        const std::string out = dir / "download.bin";
        const test::command_result r = test::run_command(
            curl_args({"-o", out, "-w", "%{http_code} %{size_download}", url(port, route)}));
        CHECK(test::exited_0(r.status));
        CHECK(r.out == "200 " + std::to_string(size));
        if (!want.empty()) CHECK(sha256_of(out) == want);
        CHECK(test::read_file(out) == data);
    }
    // HEAD: the length, no body; a part of the file; the connection is kept throughout.
    test::client c(port);
    REQUIRE(c.send("HEAD /file HTTP/1.1\r\nHost: x\r\n\r\n"));
    test::http_response r = c.read(true);
    CHECK(r.status == 200);
    CHECK(r.header("Content-Length") == std::to_string(size));
    REQUIRE(c.send("GET /file?off=12345&len=3000000 HTTP/1.1\r\nHost: x\r\n\r\n"));
    r = c.read();
    CHECK(r.status == 200);
    CHECK(r.body == data.substr(12345, 3000000));
    // Ranges through static_files: 206, Content-Range, the bytes of the range.
    REQUIRE(c.send("GET /static/big.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=1000000-5999999\r\n\r\n"));
    r = c.read();
    CHECK(r.status == 206);
    CHECK(r.header("Content-Range") == "bytes 1000000-5999999/" + std::to_string(size));
    CHECK(r.body == data.substr(1000000, 5000000));
    REQUIRE(c.send("GET /static/big.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=-100000\r\n\r\n"));
    r = c.read();
    CHECK(r.status == 206);
    CHECK(r.body == data.substr(size - 100000));
    const std::string part = dir / "part.bin";
    const test::command_result cr = test::run_command(
        curl_args({"-r", "7-9999999", "-o", part, "-w", "%{http_code}", url(port, "/static/big.bin")}));
    CHECK(test::exited_0(cr.status));
    CHECK(cr.out == "206");
    CHECK(test::read_file(part) == data.substr(7, 9999993));
    srv.stop();
}

TEST_CASE("set_file: clients that leave in the middle of a download raise no SIGPIPE", "[push_streams][file]") {
    // sendfile(2) has no MSG_NOSIGNAL: to a socket the client reset it may raise SIGPIPE,
    // whose default action ends the process. The library never touches signals: nothing
    // here ignores SIGPIPE, so the test process dies (exit 141) if the server raises one.
    test::watchdog dog("set_file SIGPIPE", 120s);
    temp_dir dir;
    const std::size_t size = 20 * 1024 * 1024;
    const std::string path = dir / "big.bin";
    random_file(path, size, 5);
    rs::server srv(test::local_options());
    srv.get("/file", [&](const rs::request&, rs::response& res) {
        res.set_file("application/octet-stream", open_file(path), 0, size);
    });
    srv.get("/hello", [](const rs::request&, rs::response& res) { res.set_content("Hello, World!", "text/plain"); });
    const std::uint16_t port = test::start(srv);
    for (int round = 0; round < 64; ++round) {
        std::vector<std::unique_ptr<test::client>> clients;
        for (int i = 0; i < 32; ++i) {
            clients.push_back(std::make_unique<test::client>(port));
            REQUIRE(clients.back()->send("GET /file HTTP/1.1\r\nHost: x\r\n\r\n"));
        }
        for (auto& c : clients) {  // each download flows, then its client resets it
            REQUIRE(c->read(true).status == 200);
            while (c->rd.buf.size() < 256 * 1024) REQUIRE(c->rd.fill());
            c->close();
        }
    }
    CHECK(test::get(port, "/hello").body == "Hello, World!");
    srv.stop();
}

TEST_CASE("set_file: a file truncated while it is sent ends the connection short of Content-Length",
          "[push_streams][file]") {
    test::watchdog dog("set_file truncated", 120s);
    temp_dir dir;
    const std::size_t size = 20 * 1024 * 1024, cut = 1024 * 1024;
    const std::string path = dir / "shrinks.bin";
    const std::string data = random_file(path, size, 2);
    rs::server srv(test::local_options());
    srv.get("/file", [&](const rs::request&, rs::response& res) {
        res.set_file("application/octet-stream", open_file(path), 0, size);
    });
    srv.get("/hello", [](const rs::request&, rs::response& res) { res.set_content("Hello, World!", "text/plain"); });
    const std::uint16_t port = test::start(srv);
    const rs::unique_fd fd(test::connect_small_rcvbuf(port, 64 * 1024));
    REQUIRE(fd);
    test::reader rd{fd.get(), {}};
    REQUIRE(test::send_all(fd.get(), "GET /file HTTP/1.1\r\nHost: x\r\n\r\n"));
    const test::http_response r = rd.read_response(true);
    REQUIRE(r.status == 200);
    REQUIRE(r.header("Content-Length") == std::to_string(size));
    while (rd.buf.size() < 64 * 1024) REQUIRE(rd.fill());
    REQUIRE(::truncate(path.c_str(), cut) == 0);
    bool eof = false;
    const std::string body = read_to_eof(fd.get(), rd.buf, eof);
    CHECK(eof);  // closed by the server, not a timeout
    CHECK(body.size() < size);
    // What the file still holds came as it is. (sendfile(2) sends from the page cache: bytes
    // past the cut that were in flight as it happened may arrive changed, as zeros.)
    std::size_t same = 0;
    while (same < std::min(body.size(), cut) && body[same] == data[same]) ++same;
    CHECK(same == std::min(body.size(), cut));  // (not the strings: megabytes of binary in a message)
    WARN("a 20 MiB file cut to 1 MiB while sent: the client got " << body.size() << " bytes, then the close");
    CHECK(test::get(port, "/hello").body == "Hello, World!");
    srv.stop();
}

#ifdef RESTARTABLE_SERVER_OPENSSL

namespace {

/// tls_pki: a test CA and a server certificate for 127.0.0.1, made once (openssl).
struct tls_pki {
    std::string dir, why;
    bool ok = false;
    tls_pki() {
        char d[] = "/tmp/rs_push_tls_XXXXXX";
        if (!::mkdtemp(d)) return;
        dir = d;
        const std::string key = " -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes ";
        int code = 0;
        why = test::run_command(
            "cd " + dir + " && printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > san.cnf && "
            "openssl req -x509" + key + "-keyout ca.key -out ca.pem -days 2 -sha256 -subj /CN=rs-push-ca && "
            "openssl req" + key + "-keyout server.key -out server.csr -subj /CN=127.0.0.1 && "
            "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -extfile san.cnf "
            "-out server.pem -days 2 -sha256 2>&1",
            code);
        ok = code == 0;
    }
    ~tls_pki() {
        if (!dir.empty()) {
            const int status = std::system(("rm -rf '" + dir + "'").c_str());
            (void)status;
        }
    }
    std::string path(const std::string& f) const { return dir + "/" + f; }
};

const tls_pki& the_pki() {
    static const tls_pki p;
    return p;
}

}  // namespace

TEST_CASE("over TLS: set_file by pread (byte-exact, a file shorter than said is cut), a push stream, a pulled "
          "body", "[push_streams][tls]") {
    if (!test::have_command("openssl")) RS_SKIP("the openssl command is not installed");
    INFO(the_pki().why);
    REQUIRE(the_pki().ok);
    test::watchdog dog("bodies over TLS", 240s);
    temp_dir dir;
    const std::size_t size = 20 * 1024 * 1024;
    const std::string path = dir / "big.bin";
    const std::string data = random_file(path, size, 3);
    hub h;
    pull_routes p;
    rs::options o = test::local_options();
    rs::tls_options t;
    t.cert_chain_file = the_pki().path("server.pem");
    t.key_file = the_pki().path("server.key");
    o.listener = rs::tls_listener(rs::tcp_listener("127.0.0.1", 0), std::move(t));
    rs::server srv(o);
    add_routes(srv, h);
    p.add(srv);
    srv.get("/file", [&](const rs::request&, rs::response& res) {
        res.set_file("application/octet-stream", open_file(path), 0, size);
    });
    srv.get("/liar", [&](const rs::request&, rs::response& res) {  // says more than the file holds
        res.set_file("application/octet-stream", open_file(path), 0, size + 4096);
    });
    srv.get("/static/*", rs::static_files(dir.path));
    const std::uint16_t port = test::start(srv);
    const std::string ca = the_pki().path("ca.pem");

    for (const char* route : {"/file", "/static/big.bin"}) {
        INFO(route);
        const std::string out = dir / "download.bin";
        const test::command_result r = test::run_command(
            curl_args({"--cacert", ca, "-o", out, "-w", "%{http_code} %{size_download}", url(port, route, "https")}));
        CHECK(test::exited_0(r.status));
        CHECK(r.out == "200 " + std::to_string(size));
        CHECK(test::read_file(out) == data);
    }
    {
        const std::string out = dir / "liar.bin";
        const test::command_result r = test::run_command(
            curl_args({"--cacert", ca, "-o", out, "-w", "%{size_download}", url(port, "/liar", "https")}));
        CHECK(r.status);
        CHECK_FALSE(test::exited_0(r.status));  // 18: the body ended short of Content-Length
        CHECK(r.out == std::to_string(size));
        CHECK(test::read_file(out) == data);
    }
    {
        const std::string range = dir / "range.bin";
        const test::command_result r = test::run_command(curl_args(
            {"--cacert", ca, "-r", "100-2000099", "-o", range, "-w", "%{http_code}", url(port, "/static/big.bin", "https")}));
        CHECK(r.out == "206");
        CHECK(test::read_file(range) == data.substr(100, 2000000));
    }
    {
        const test::command_result r =
            test::run_command(curl_args({"--cacert", ca, url(port, "/pull?n=1000000", "https")}));
        CHECK(test::exited_0(r.status));
        CHECK(r.out == pattern(0, 1000000));
    }
    {
        test::process curl(curl_args({"--cacert", ca, "-N", url(port, "/events", "https")}));
        REQUIRE(curl.started());
        REQUIRE(h.wait_opened(1));
        rs::stream_handle s = h.at(0);
        REQUIRE_FALSE(s.write("data: over TLS\n\n"));
        CHECK(curl.read_line(20s) == std::optional<std::string>("data: over TLS"));
        std::error_code from_other;
        std::thread other([&s, &from_other] { from_other = s.write("data: from another thread\n\n"); });
        other.join();
        REQUIRE_FALSE(from_other);
        CHECK(curl.read_line(20s) == std::optional<std::string>(""));
        CHECK(curl.read_line(20s) == std::optional<std::string>("data: from another thread"));
        s.close();
        CHECK(curl.read_all(20s) == std::optional<std::string>("\n"));
        CHECK(test::exited_0(curl.wait_exit(20s)));
    }
    srv.stop();
    CHECK(h.every_close_once());
}

#endif  // RESTARTABLE_SERVER_OPENSSL

TEST_CASE("worker_threads 0 (the control thread serves): a push stream written from another thread, a pulled "
          "body, a file", "[push_streams][inline]") {
    test::watchdog dog("streams served inline", 120s);
    temp_dir dir;
    const std::string data = random_file(dir / "f.bin", 3 * 1024 * 1024, 6);
    hub h;
    pull_routes p;
    rs::server srv(test::local_options(0));
    add_routes(srv, h);
    p.add(srv);
    srv.get("/static/*", rs::static_files(dir.path));
    const std::uint16_t port = test::start(srv);
    test::client c(port);
    REQUIRE(c.send("GET /events HTTP/1.1\r\nHost: x\r\n\r\n"));
    REQUIRE(c.read().status == 200);
    REQUIRE(h.wait_opened(1));
    rs::stream_handle s = h.at(0);
    std::error_code from_other;
    std::thread other([&] { from_other = s.write("data: from another thread\n\n"); });
    other.join();
    REQUIRE_FALSE(from_other);
    std::string body;
    bool last = false;
    REQUIRE(read_chunked(c, body, last, 27));
    CHECK(body == "data: from another thread\n\n");
    s.close();
    REQUIRE(read_chunked(c, body, last));
    CHECK(last);
    REQUIRE(c.send("GET /pull?n=2000000&sized HTTP/1.1\r\nHost: x\r\n\r\n"));
    const test::http_response pulled = c.read();
    CHECK(pulled.status == 200);
    CHECK(pulled.body == pattern(0, 2000000));
    REQUIRE(c.send("GET /static/f.bin HTTP/1.1\r\nHost: x\r\n\r\n"));
    const test::http_response file = c.read();
    CHECK(file.status == 200);
    CHECK(file.body.size() == data.size());
    CHECK((file.body == data));
    const rs::stop_result r = srv.stop();
    CHECK(r.drained);
    CHECK(h.every_close_once());
}

TEST_CASE("restart() while a file and a pulled body are being sent: both finish whole in the old run, then their "
          "connections serve the next request in the new one", "[push_streams][restart]") {
    test::watchdog dog("bodies across a restart", 120s);
    temp_dir dir;
    const std::size_t size = 20 * 1024 * 1024;
    const std::string data = random_file(dir / "big.bin", size, 7);
    pull_routes p;
    rs::server srv(test::local_options(2));
    p.add(srv);
    srv.get("/static/*", rs::static_files(dir.path));
    srv.get("/where", [](const rs::request& req, rs::response& res) {
        res.set_content(req.stop_requested() ? "old run" : "this run", "text/plain");
    });
    const std::uint16_t port = test::start(srv);
    test::client file(port), pulled(port);
    REQUIRE(file.send("GET /static/big.bin HTTP/1.1\r\nHost: x\r\n\r\n"));
    REQUIRE(pulled.send("GET /pull?n=8000000 HTTP/1.1\r\nHost: x\r\n\r\n"));
    REQUIRE(file.read(true).status == 200);
    REQUIRE(pulled.read(true).status == 200);
    std::error_code ec;
    srv.restart(ec);  // both are in flight (their clients have read nothing of the bodies)
    REQUIRE_FALSE(ec);
    while (file.rd.buf.size() < size) REQUIRE(file.rd.fill());
    CHECK(file.rd.buf.size() == size);
    CHECK((file.rd.buf == data));
    file.rd.buf.clear();
    std::string body;
    bool last = false;
    REQUIRE(read_chunked(pulled, body, last));
    CHECK(last);
    CHECK(body.size() == 8000000);
    CHECK((body == pattern(0, 8000000)));
    for (test::client* c : {&file, &pulled}) {
        REQUIRE(c->send("GET /where HTTP/1.1\r\nHost: x\r\n\r\n"));
        CHECK(c->read().body == "this run");
    }
    const rs::stop_result r = srv.stop();
    CHECK(r.drained);
    CHECK(r.cut == 0);
    CHECK(p.overlap.load() == 0);
}

// ------------------------------------------------------------------ the figure --

TEST_CASE("the figure: 64 push streams and 64 stalled 20 MiB downloads hold no thread; a fresh GET /hello answers",
          "[push_streams][figure][threads]") {
    test::watchdog dog("the figure", 240s);
    temp_dir dir;
    random_file(dir / "big.bin", 20 * 1024 * 1024, 4);
    hub h;
    const int baseline = test::thread_count();
    rs::options o = test::local_options(8);
    o.drain_timeout = 2s;
    rs::server srv(o);
    add_routes(srv, h);
    srv.get("/static/*", rs::static_files(dir.path));
    const std::uint16_t port = test::start(srv);
    int most_threads = server_threads(baseline);

    constexpr int streams = 64, downloads = 64;
    std::vector<std::unique_ptr<test::client>> listeners;
    for (int i = 0; i < streams; ++i) {
        listeners.push_back(std::make_unique<test::client>(port));
        REQUIRE(listeners.back()->ok());
        REQUIRE(listeners.back()->send("GET /events HTTP/1.1\r\nHost: x\r\n\r\n"));
    }
    REQUIRE(h.wait_opened(streams, 60s));
    most_threads = std::max(most_threads, server_threads(baseline));
    for (rs::stream_handle s : h.all()) REQUIRE_FALSE(s.write("data: tick\n\n"));
    for (auto& c : listeners) {
        REQUIRE(c->read().status == 200);
        std::string body;
        bool last = false;
        REQUIRE(read_chunked(*c, body, last, 12));
        CHECK(body == "data: tick\n\n");
    }
    std::vector<int> stalled;
    for (int i = 0; i < downloads; ++i) {
        const int fd = test::connect_to(port);
        REQUIRE(fd >= 0);
        stalled.push_back(fd);
        REQUIRE(test::send_all(fd, "GET /static/big.bin HTTP/1.1\r\nHost: x\r\n\r\n"));
    }
    for (int fd : stalled) {  // the server answers each (its head is there), and nobody reads
        pollfd pf{fd, POLLIN, 0};
        REQUIRE(::poll(&pf, 1, 60000) == 1);
    }
    most_threads = std::max(most_threads, server_threads(baseline));

    const auto t0 = steady::now();
    const test::http_response hello = test::get(port, "/hello");
    const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(steady::now() - t0);
    most_threads = std::max(most_threads, server_threads(baseline));
    CHECK(hello.status == 200);
    CHECK(hello.body == "Hello, World!");
    CHECK(took < 10s);  // the figure: well within 1 s; 10x for a loaded machine
    CHECK(most_threads <= static_cast<int>(o.worker_threads) + 2);
    // The streams still flow.
    for (rs::stream_handle s : h.all()) REQUIRE_FALSE(s.write("data: tock\n\n"));
    for (auto& c : listeners) {
        std::string body;
        bool last = false;
        REQUIRE(read_chunked(*c, body, last, 12));
        CHECK(body == "data: tock\n\n");
    }
    WARN("64 push streams + 64 stalled 20 MiB downloads, " << o.worker_threads << " workers: GET /hello in "
                                                           << took.count() << " ms, at most " << most_threads
                                                           << " server threads");
    for (int fd : stalled) ::close(fd);
    const rs::stop_result r = srv.stop();
    CHECK(r.error == std::error_code());
    for (auto& c : listeners) {
        std::string body;
        bool last = false;
        REQUIRE(read_chunked(*c, body, last));
        CHECK(last);
    }
    CHECK(h.closed_count() == streams);
    CHECK(h.every_close_once());
}

TEST_CASE("the figure in a browser: headless Chromium's EventSources, four at a time on two workers, receive "
          "their events", "[push_streams][figure][browser]") {
    std::string chromium;
    for (const char* name : {"chromium", "chromium-browser", "google-chrome"})
        if (test::have_command(name)) {
            chromium = name;
            break;
        }
    if (chromium.empty()) RS_SKIP("chromium is not installed");
    test::watchdog dog("EventSource in Chromium", 200s);
    hub h;
    thread_group feeder;
    rs::server srv(test::local_options(2));  // two workers; four streams at once must not need four
    srv.get("/sse", [&h](const rs::request&, rs::response& res) {
        res.set_header("Cache-Control", "no-cache");
        h.open(res, "retry: 60000\n\ndata: hello\n\n");  // before the handler returns: after the head
    });
    srv.get("/", [](const rs::request&, rs::response& res) {
        res.set_content(R"HTML(<!DOCTYPE html>
<html><head><title>waiting</title></head><body><pre id="log">none</pre><script>
var got = [];
function phase(first, done) {
  var left = 4, list = [];
  for (var i = first; i < first + 4; ++i) (function (i) {
    var es = new EventSource('/sse?tab=' + i);
    list.push(es);
    es.onmessage = function (e) {
      got.push(i + ':' + e.data);
      document.getElementById('log').textContent = 'events ' + got.length + ': ' + got.join('|');
      if (e.data === 'go' && --left === 0) {
        list.forEach(function (s) { s.close(); });
        done();
      }
    };
  })(i);
}
phase(0, function () { phase(4, function () { document.title = 'done'; }); });
</script></body></html>
)HTML",
                        "text/html; charset=utf-8");
    });
    // Each stream says hello at once; "go" only once four streams are open together.
    feeder.spawn([&h] {
        for (int phase = 1; phase <= 2; ++phase) {
            if (!h.wait_opened(4 * phase, 120s)) return;
            for (std::size_t i = 4 * static_cast<std::size_t>(phase - 1); i < 4 * static_cast<std::size_t>(phase); ++i)
                h.at(i).write("data: go\n\n");
        }
    });
    const std::uint16_t port = test::start(srv);
    char profile[] = "/tmp/rs_push_chromium_XXXXXX";
    REQUIRE(::mkdtemp(profile) != nullptr);
    std::vector<std::string> args = {chromium, "--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
                                     "--no-default-browser-check", "--disable-background-networking",
                                     "--disable-component-update", "--disable-sync", "--no-proxy-server",
                                     std::string("--user-data-dir=") + profile, "--virtual-time-budget=20000",
                                     "--dump-dom", url(port, "/")};
    if (::geteuid() == 0) args.insert(args.begin() + 1, "--no-sandbox");
    test::spawn_options so;
    so.in = test::stream::null;
    so.err = test::stream::null;
    so.new_group = true;
    std::string dom;
    {
        test::process browser(args, so);
        REQUIRE(browser.started());
        dom = browser.read_all(120s).value_or("(no DOM within 120 s)");
        CHECK(browser.wait_exit(60s));
    }
    const int rm = std::system((std::string("rm -rf '") + profile + "'").c_str());
    (void)rm;
    // Chromium's exit closed whatever it had open: every stream ends, each once.
    CHECK(h.wait_closed(8, 60s));
    h.release();
    srv.stop();
    feeder.join();
    INFO("DOM:\n" << dom);
    CHECK(dom.find("<title>done</title>") != std::string::npos);
    CHECK(dom.find("events 16: ") != std::string::npos);
    for (int i = 0; i < 8; ++i) {
        CHECK(dom.find(std::to_string(i) + ":hello") != std::string::npos);
        CHECK(dom.find(std::to_string(i) + ":go") != std::string::npos);
    }
    CHECK(h.every_close_once());
}

// ------------------------------------------------------------------ the examples --

namespace {

/// tick_numbers: the N of each "data: tick N" in body, in order; ok false when a line
/// of body is neither that, an empty line, nor the bye event.
std::vector<unsigned long> tick_numbers(const std::string& body, bool& ok) {
    std::vector<unsigned long> ticks;
    ok = true;
    std::size_t p = 0;
    while (p < body.size()) {
        std::size_t e = body.find('\n', p);
        if (e == std::string::npos) e = body.size();
        const std::string line = body.substr(p, e - p);
        if (line.rfind("data: tick ", 0) == 0)
            ticks.push_back(std::stoul(line.substr(11)));
        else if (!line.empty() && line != "event: bye" && line != "data: the server is stopping or restarting")
            ok = false;
        p = e + 1;
    }
    return ticks;
}

/// consecutive: 1, 2, 3, ... (each stream counts from 1; a slow reader may miss a tick,
/// which is not sent at all, so the numbers it gets are still consecutive).
bool consecutive(const std::vector<unsigned long>& ticks) {
    for (std::size_t i = 0; i < ticks.size(); ++i)
        if (ticks[i] != i + 1) return false;
    return !ticks.empty();
}

}  // namespace

TEST_CASE("echo_server's /events: push streams one ticker writes to; 64 listeners on 4 workers hold no thread; "
          "\"event: bye\" then the last chunk at a restart (SIGHUP) and at SIGTERM",
          "[push_streams][examples][echo_server]") {
    test::watchdog dog("echo_server /events", 200s);
    test::process server({RS_ECHO_SERVER, "--host", "127.0.0.1", "--port", "0", "--workers", "4", "--drain-ms", "5000"});
    REQUIRE(server.started());
    const std::optional<std::string> first = server.read_line(10s);
    INFO("echo_server: " << first.value_or("(nothing)"));
    const std::uint16_t port = test::listening_port(first);
    REQUIRE(port != 0);
    const std::string task_dir = "/proc/" + std::to_string(server.pid()) + "/task";
    auto threads = [&] { return test::count_entries(task_dir.c_str()); };

    constexpr int n = 64;
    std::vector<std::unique_ptr<test::client>> listeners;
    for (int i = 0; i < n; ++i) {
        listeners.push_back(std::make_unique<test::client>(port));
        REQUIRE(listeners.back()->send("GET /events HTTP/1.1\r\nHost: x\r\n\r\n"));
    }
    std::vector<std::string> bodies(n);
    for (int i = 0; i < n; ++i) {  // every stream ticks: tick 1 at once, tick 2 from the ticker
        INFO("listener " << i);
        test::client& c = *listeners[static_cast<std::size_t>(i)];
        const test::http_response head = c.read();
        REQUIRE(head.status == 200);
        CHECK(head.header("Content-Type") == "text/event-stream");
        std::string& body = bodies[static_cast<std::size_t>(i)];
        bool last = false;
        while (body.find("data: tick 2\n\n") == std::string::npos) REQUIRE(read_chunked(c, body, last, body.size() + 1));
    }
    const auto t0 = steady::now();
    const test::http_response hello = test::get(port, "/hello");
    const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(steady::now() - t0);
    CHECK(hello.body == "Hello, World!");
    CHECK(took < 10s);
    const int with_listeners = threads();
    // main, the run watcher, the ticker, the control thread and at most 4 workers.
    CHECK(with_listeners <= 4 + 4 + test::runtime_threads);
    WARN("echo_server, 64 /events listeners on 4 workers: " << with_listeners << " threads, GET /hello in "
                                                             << took.count() << " ms");

    // SIGHUP: a restart. Each stream: its ticks in order, "event: bye", the last chunk;
    // then the connection, moved to the new run, serves the next request.
    REQUIRE(server.signal(SIGHUP));
    CHECK(server.read_line(20s) == std::optional<std::string>("restarted 1"));
    for (int i = 0; i < n; ++i) {
        INFO("listener " << i);
        test::client& c = *listeners[static_cast<std::size_t>(i)];
        std::string& body = bodies[static_cast<std::size_t>(i)];
        bool last = false;
        REQUIRE(read_chunked(c, body, last));
        CHECK(last);
        bool ok = false;
        const std::vector<unsigned long> ticks = tick_numbers(body, ok);
        INFO(body);
        CHECK(ok);
        CHECK(consecutive(ticks));
        const std::string bye = "event: bye\ndata: the server is stopping or restarting\n\n";
        CHECK(body.size() >= bye.size());
        CHECK(body.compare(body.size() - std::min(bye.size(), body.size()), bye.size(), bye) == 0);
        if (i % 8 == 0) {  // some of them ask again, on the same connection
            REQUIRE(c.send("GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"));
            CHECK(c.read().body == "Hello, World!");
        }
    }
    CHECK(threads() <= 4 + 4 + test::runtime_threads);

    // SIGTERM with a stream open: "event: bye", the last chunk, exit 0.
    test::client& c = *listeners[0];
    REQUIRE(c.send("GET /events HTTP/1.1\r\nHost: x\r\n\r\n"));
    REQUIRE(c.read().status == 200);
    std::string body;
    bool last = false;
    while (body.find("data: tick 2\n\n") == std::string::npos) REQUIRE(read_chunked(c, body, last, body.size() + 1));
    REQUIRE(server.signal(SIGTERM));
    REQUIRE(read_chunked(c, body, last));
    CHECK(last);
    CHECK(body.find("event: bye\n") != std::string::npos);
    bool ok = false;
    CHECK(consecutive(tick_numbers(body, ok)));
    CHECK(ok);
    const std::optional<int> st = server.wait_exit(20s);
    INFO("echo_server: " << test::describe_status(st));
    CHECK(test::exited_0(st));
}
