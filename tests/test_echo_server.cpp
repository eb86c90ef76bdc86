// End-to-end test of examples/echo_server: runs the built binary (RS_ECHO_SERVER) as a
// child process with --port 0, learns its port from the "listening on" line on its stdout,
// and talks to it with curl, wrk and the socket client of support.hpp: keep-alive, echo,
// restarts (POST /restart and SIGHUP) while clients keep sending, and exit on SIGTERM /
// SIGINT. Every wait is bounded (poll on a pipe or a pidfd, condition variables): no sleeps.

#include "process.hpp"
#include "ws_client.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#ifndef RS_ECHO_SERVER
#error "RS_ECHO_SERVER (the path of the built echo_server) must be defined"
#endif

namespace {

namespace rs = restartable_server;
using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;
using test::describe_status;

using test::command_result;
using test::run_command;

/// echo_server: the example running as a child on 127.0.0.1, port 0.
struct echo_server {
    test::process proc{{RS_ECHO_SERVER, "--host", "127.0.0.1", "--port", "0", "--workers", "4",
                        "--drain-ms", "3000"}};
    std::uint16_t port = 0;

    echo_server() {
        REQUIRE(proc.started());
        std::optional<std::string> line = proc.read_line(10s);
        INFO("first line: " << line.value_or("(none)"));
        port = test::listening_port(line);
        REQUIRE(port != 0);
    }
    /// stop_with: sends sig and expects a clean exit (status 0) within 10 s.
    void stop_with(int sig) {
        REQUIRE(proc.signal(sig));
        std::optional<int> st = proc.wait_exit(10s);
        INFO("echo_server after signal " << sig << ": " << describe_status(st));
        REQUIRE(st);
        CHECK(WIFEXITED(*st));
        CHECK(WEXITSTATUS(*st) == 0);
    }
    std::string url(const std::string& path) const {
        return "http://127.0.0.1:" + std::to_string(port) + path;
    }
};

/// load_client: a thread that sends GET /hello over and over, on a keep-alive connection
/// (or a fresh one per request), reconnecting whenever the server closes it. It counts:
///   ok       - a complete, correct response (200, "Hello, World!")
///   dropped  - the request got no byte of response: the connection was closed (restart)
///   refused  - no connection could be made (between two runs)
///   bad      - anything else: a partial or wrong response, a timeout. Must stay 0.
class load_client {
public:
    load_client(std::uint16_t port, bool keep_alive)
        : port_(port), keep_alive_(keep_alive), thread_([this] { run(); }) {}
    load_client(const load_client&) = delete;
    load_client& operator=(const load_client&) = delete;
    ~load_client() { stop(); }

    void stop() {
        stop_.store(true);
        if (thread_.joinable()) thread_.join();
    }
    /// wait_for_ok: waits (condition variable) until at least n correct responses came.
    bool wait_for_ok(long n, std::chrono::milliseconds timeout) {
        std::unique_lock<std::mutex> lock(m_);
        return cv_.wait_for(lock, timeout, [&] { return ok_ >= n; });
    }
    long ok() const { std::lock_guard<std::mutex> l(m_); return ok_; }
    long dropped() const { std::lock_guard<std::mutex> l(m_); return dropped_; }
    long refused() const { std::lock_guard<std::mutex> l(m_); return refused_; }
    long bad() const { std::lock_guard<std::mutex> l(m_); return bad_; }
    std::string first_bad() const { std::lock_guard<std::mutex> l(m_); return first_bad_; }

private:
    void run() {
        const std::string req = keep_alive_
            ? "GET /hello HTTP/1.1\r\nHost: localhost\r\n\r\n"
            : "GET /hello HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
        rs::unique_fd fd;
        test::reader rd{-1, {}};
        while (!stop_.load()) {
            if (!fd) {
                fd.reset(test::connect_to(port_, 5s));
                if (!fd) {  // between two runs: try again (no listener for a few ms)
                    count(refused_);
                    std::this_thread::yield();
                    continue;
                }
                rd = test::reader{fd.get(), {}};
            }
            errno = 0;
            test::http_response r;
            if (test::send_all(fd.get(), req)) r = rd.read_response();
            const bool timed_out = errno == EAGAIN || errno == EWOULDBLOCK;
            if (r.status == 200 && r.body == "Hello, World!") {
                count(ok_);
                if (!keep_alive_ || r.header("Connection") == "close") fd.reset();
            } else if (r.status == 0 && r.head.empty() && rd.buf.empty() && !timed_out) {
                count(dropped_);
                fd.reset();
            } else {
                std::lock_guard<std::mutex> l(m_);
                if (bad_++ == 0)
                    first_bad_ = timed_out ? "timed out" : "status " + std::to_string(r.status) +
                                                               ", head: " + r.head + ", body: " + r.body;
                fd.reset();
            }
        }
    }
    void count(long& counter) {
        {
            std::lock_guard<std::mutex> l(m_);
            ++counter;
        }
        cv_.notify_all();
    }

    const std::uint16_t port_;
    const bool keep_alive_;
    mutable std::mutex m_;
    std::condition_variable cv_;
    long ok_ = 0, dropped_ = 0, refused_ = 0, bad_ = 0;
    std::string first_bad_;
    std::atomic<bool> stop_{false};
    std::thread thread_;  // last: starts once everything above is built
};

/// restart_under_load: three restarts made by trigger() while two clients keep sending.
/// After each: a "restarted N" line, the same port answers, and the clients make
/// progress; no client ever sees a refused connect, a dropped request, or a partial or
/// wrong response (the hand-over restart keeps the listener and moves idle connections).
template <typename Trigger>
void restart_under_load(Trigger trigger) {
    echo_server srv;
    load_client keep_alive(srv.port, true);
    load_client one_shot(srv.port, false);
    REQUIRE(keep_alive.wait_for_ok(20, 10s));
    REQUIRE(one_shot.wait_for_ok(20, 10s));

    for (int round = 1; round <= 3; ++round) {
        INFO("restart " << round);
        trigger(srv);

        std::optional<std::string> line = srv.proc.read_line(10s);
        INFO("line after the restart: " << line.value_or("(none)"));
        REQUIRE(line == "restarted " + std::to_string(round));
        test::http_response r = test::get(srv.port, "/hello");
        CHECK(r.status == 200);
        CHECK(r.body == "Hello, World!");

        // Progress after the restart: every response counted from now on came from the new run.
        CHECK(keep_alive.wait_for_ok(keep_alive.ok() + 20, 10s));
        CHECK(one_shot.wait_for_ok(one_shot.ok() + 20, 10s));
    }

    keep_alive.stop();
    one_shot.stop();
    for (load_client* c : {&keep_alive, &one_shot}) {
        INFO("ok " << c->ok() << ", dropped " << c->dropped() << ", refused " << c->refused()
                   << ", bad " << c->bad() << (c->bad() ? ", first bad: " + c->first_bad() : ""));
        CHECK(c->bad() == 0);
        CHECK(c->dropped() == 0);
        CHECK(c->refused() == 0);
        CHECK(c->ok() >= 80);
    }
    srv.stop_with(SIGTERM);
}

}  // namespace

TEST_CASE("echo_server: bad arguments print usage and exit 2", "[echo_server]") {
    const std::vector<std::vector<std::string>> bad = {
        {RS_ECHO_SERVER, "--port", "http"},
        {RS_ECHO_SERVER, "--port", "70000"},
        {RS_ECHO_SERVER, "--port"},
        {RS_ECHO_SERVER, "--workers", "-1"},
        {RS_ECHO_SERVER, "--drain-ms", "1s"},
        {RS_ECHO_SERVER, "--colour", "blue"},
    };
    for (const auto& args : bad) {
        INFO("arguments: " << args[1] << (args.size() > 2 ? " " + args[2] : ""));
        command_result r = run_command(args, 20s, true);
        INFO("result: " << describe_status(r.status) << ", stderr: " << r.err);
        REQUIRE(r.status);
        CHECK(WIFEXITED(*r.status));
        CHECK(WEXITSTATUS(*r.status) == 2);
        CHECK(r.out.empty());  // the usage goes to stderr
        CHECK(r.err.rfind("usage: ", 0) == 0);
    }
}

TEST_CASE("echo_server: keep-alive, echo and slow requests, checked with curl", "[echo_server]") {
    echo_server srv;
    const std::string curl = "/usr/bin/curl";

    SECTION("two GET /hello in one curl run share one connection") {
        command_result r = run_command({curl, "-sS", "--max-time", "10", "-w", "|%{http_code}|%{num_connects}\n",
                                        srv.url("/hello"), srv.url("/hello")});
        INFO("curl: " << describe_status(r.status) << ", output:\n" << r.out);
        REQUIRE(r.status);
        CHECK(WEXITSTATUS(*r.status) == 0);
        // num_connects is 1 for the first transfer and 0 for the second: the connection
        // was kept alive and reused.
        CHECK(r.out == "Hello, World!|200|1\nHello, World!|200|0\n");
    }

    SECTION("/echo returns the body and the Content-Type, for every method") {
        const std::string body = "ping & pong\n\xce\xbb \"quoted\" {\"json\": [1, 2]}";
        for (const char* method : {"POST", "PUT", "PATCH", "DELETE"}) {
            INFO("method " << method);
            command_result r = run_command({curl, "-sS", "--max-time", "10", "-X", method,
                                            "-H", "Content-Type: application/x-test; charset=utf-8",
                                            "--data-binary", body, "-w", "|%{http_code}|%{content_type}",
                                            srv.url("/echo")});
            INFO("curl: " << describe_status(r.status) << ", output:\n" << r.out);
            REQUIRE(r.status);
            CHECK(WEXITSTATUS(*r.status) == 0);
            CHECK(r.out == body + "|200|application/x-test; charset=utf-8");
        }
        // GET with no body: an empty echo, still 200.
        command_result r = run_command({curl, "-sS", "--max-time", "10", "-w", "|%{http_code}",
                                        srv.url("/echo")});
        REQUIRE(r.status);
        CHECK(WEXITSTATUS(*r.status) == 0);
        CHECK(r.out == "|200");
    }

    SECTION("a chunked upload and a 3 MiB upload with Expect: 100-continue are echoed exactly") {
        char dir_template[] = "/tmp/rs_echo_XXXXXX";
        REQUIRE(::mkdtemp(dir_template) != nullptr);
        const std::string dir = dir_template, in = dir + "/in.bin", out = dir + "/out.bin";
        std::string data(3 * 1024 * 1024, '\0');
        for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>((i * 7 + i / 251) & 0xff);
        {
            std::FILE* f = std::fopen(in.c_str(), "wb");
            REQUIRE(f != nullptr);
            REQUIRE(std::fwrite(data.data(), 1, data.size(), f) == data.size());
            std::fclose(f);
        }
        auto read_out = [&out] {
            std::string got;
            if (std::FILE* f = std::fopen(out.c_str(), "rb")) {
                char buf[65536];
                std::size_t n;
                while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) got.append(buf, n);
                std::fclose(f);
            }
            return got;
        };
        command_result r = run_command({curl, "-sS", "--max-time", "20", "-H", "Transfer-Encoding: chunked",
                                        "-H", "Content-Type: application/octet-stream", "--data-binary", "@" + in,
                                        "-o", out, "-w", "%{http_code}", srv.url("/echo")});
        REQUIRE(r.status);
        CHECK(WEXITSTATUS(*r.status) == 0);
        CHECK(r.out == "200");
        CHECK(read_out() == data);

        r = run_command({curl, "-sS", "-v", "--max-time", "20", "-H", "Expect: 100-continue", "--data-binary",
                         "@" + in, "-o", out, "-w", "%{http_code}", srv.url("/echo")},
                        20s, true);
        REQUIRE(r.status);
        CHECK(WEXITSTATUS(*r.status) == 0);
        CHECK(r.out == "200");
        CHECK(r.err.find("< HTTP/1.1 100 Continue") != std::string::npos);
        CHECK(read_out() == data);
        ::unlink(in.c_str());
        ::unlink(out.c_str());
        ::rmdir(dir.c_str());
    }

    SECTION("Python's http.client: keep-alive reuse and pipelined requests") {
        const std::string python = "/usr/bin/python3";
        if (::access(python.c_str(), X_OK) != 0) {
            RS_SKIP("python3 not installed");
        }
        const std::string script = R"PY(
import http.client, socket, sys
port = int(sys.argv[1])
# Keep-alive: three requests on one HTTPConnection, one socket.
c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
c.request("GET", "/hello"); r = c.getresponse(); a = r.read(); s1 = c.sock
c.request("POST", "/echo", body=b"abc", headers={"Content-Type": "text/x-a"}); r = c.getresponse(); b = r.read()
c.request("GET", "/hello"); r = c.getresponse(); d = r.read()
assert (a, b, d) == (b"Hello, World!", b"abc", b"Hello, World!"), (a, b, d)
assert c.sock is s1, "the connection was not reused"
# Pipelined: every request written before any response is read.
s = socket.create_connection(("127.0.0.1", port), timeout=10)
s.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"
          b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Type: text/x-b\r\n\r\nhello"
          b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
f = s.makefile("rb")  # one buffered reader for all three: it may read ahead
class Shared:        # hands http.client that reader, and ignores its close()
    def makefile(self, *args, **kwargs): return self
    def __getattr__(self, name): return getattr(f, name)
    def close(self): pass
bodies = []
for _ in range(3):
    r = http.client.HTTPResponse(Shared()); r.begin(); bodies.append((r.status, r.read()))
assert bodies == [(200, b"Hello, World!"), (200, b"hello"), (200, b"")], bodies
print("ok")
)PY";
        char path[] = "/tmp/rs_client_XXXXXX";
        int fd = ::mkstemp(path);
        REQUIRE(fd >= 0);
        REQUIRE(::write(fd, script.data(), script.size()) == static_cast<ssize_t>(script.size()));
        ::close(fd);
        command_result r = run_command({python, path, std::to_string(srv.port)}, 20s, true);
        ::unlink(path);
        INFO("python: " << describe_status(r.status) << "\n" << r.out << r.err);
        REQUIRE(r.status);
        CHECK(WEXITSTATUS(*r.status) == 0);
        CHECK(r.out == "ok\n");
    }

    SECTION("/slow waits, then answers; a bad ms is a 400") {
        test::http_response r = test::get(srv.port, "/slow?ms=50");
        CHECK(r.status == 200);
        CHECK(r.body == "slept 50 ms\n");
        CHECK(test::get(srv.port, "/slow?ms=soon").status == 400);
        CHECK(test::get(srv.port, "/nowhere").status == 404);
    }

    srv.stop_with(SIGTERM);
}

TEST_CASE("echo_server: POST /restart restarts on the same port under load", "[echo_server][restart]") {
    restart_under_load([](echo_server& srv) {
        test::http_response r =
            test::request(srv.port, "POST /restart HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n");
        // The handler's own response comes from the run being replaced, and its
        // connection stays open: it moves to the new run like every idle one.
        CHECK(r.status == 202);
        CHECK(r.body == "restarted\n");
        CHECK(r.header("Connection") != "close");
    });
}

TEST_CASE("echo_server: SIGHUP restarts on the same port under load", "[echo_server][restart]") {
    restart_under_load([](echo_server& srv) { REQUIRE(srv.proc.signal(SIGHUP)); });
}

TEST_CASE("echo_server: SIGTERM and SIGINT stop it with exit status 0", "[echo_server]") {
    for (int sig : {SIGTERM, SIGINT}) {
        INFO("signal " << sig);
        echo_server srv;
        CHECK(test::get(srv.port, "/hello").status == 200);
        // An open idle keep-alive connection must not hold the exit up.
        rs::unique_fd idle(test::connect_to(srv.port));
        REQUIRE(idle);
        REQUIRE(test::send_all(idle.get(), "GET /hello HTTP/1.1\r\nHost: localhost\r\n\r\n"));
        test::reader rd{idle.get(), {}};
        CHECK(rd.read_response().status == 200);

        // The idle connection is closed at once: the exit does not wait for the drain
        // deadline (3 s). The bound is generous; a stop that waited would take over 3 s.
        const auto t0 = steady::now();
        srv.stop_with(sig);
        CHECK(steady::now() - t0 < 2500ms);
        CHECK(rd.at_eof());
        CHECK(!srv.proc.read_line(1s));  // nothing more on stdout, and EOF
    }
}

TEST_CASE("echo_server: a short wrk run", "[echo_server][wrk]") {
    const std::string wrk = "/usr/bin/wrk";
    if (::access(wrk.c_str(), X_OK) != 0) {
        RS_SKIP("wrk is not installed at " << wrk);
    }
    echo_server srv;
    command_result r = run_command({wrk, "-t1", "-c4", "-d1s", "--timeout", "5s", srv.url("/hello")}, 30s);
    INFO("wrk: " << describe_status(r.status) << ", output:\n" << r.out);
    REQUIRE(r.status);
    CHECK(WEXITSTATUS(*r.status) == 0);

    auto rps_at = r.out.find("Requests/sec:");
    REQUIRE(rps_at != std::string::npos);
    double rps = std::strtod(r.out.c_str() + rps_at + 13, nullptr);
    CHECK(rps > 0);
    CHECK(r.out.find("Non-2xx") == std::string::npos);
    // wrk prints "Socket errors: connect A, read B, write C, timeout D" only when one is not 0.
    CHECK(r.out.find("Socket errors") == std::string::npos);

    srv.stop_with(SIGTERM);
}

// ------------------------------------------------------------------ WebSocket --

namespace {

/// ws_answer_close: reads until the server's close frame (answered with the same code),
/// then the server's TCP close; the code (0 when none came).
std::uint16_t ws_answer_close(test::ws_client& c) {
    for (;;) {
        test::ws_message m = c.read(10s);
        if (!m.ok()) return 0;
        if (m.opcode == 8) {
            c.send_close(m.close_code());
            CHECK(c.eof_within(10s));
            return m.close_code();
        }
    }
}

}  // namespace

TEST_CASE("echo_server: GET /ws echoes every message as it came, text as text, binary as binary",
          "[echo_server][websocket]") {
    echo_server srv;
    test::ws_client c(srv.port);
    REQUIRE(c.upgrade("/ws"));
    CHECK(c.response.header("Sec-WebSocket-Accept") == test::ws_key_accept);

    const std::string binary("\0\x01\xfe\xff", 4);
    REQUIRE(c.send_text("h\xc3\xa9llo"));
    test::ws_message m = c.read();
    CHECK(m.opcode == 1);
    CHECK(m.payload == "h\xc3\xa9llo");
    REQUIRE(c.send_binary(binary));
    m = c.read();
    CHECK(m.opcode == 2);
    CHECK(m.payload == binary);
    // Fragments come back as one message; a ping between them is answered.
    REQUIRE(c.send(test::ws_frame(1, "frag", false) + test::ws_frame(9, "p") + test::ws_frame(0, "ment")));
    m = c.read();
    CHECK(m.opcode == 10);
    CHECK(m.payload == "p");
    m = c.read();
    CHECK(m.opcode == 1);
    CHECK(m.fin);
    CHECK(m.payload == "fragment");
    REQUIRE(c.send_text(""));
    m = c.read();
    CHECK(m.opcode == 1);
    CHECK(m.payload.empty());
    const std::string big(3 * 1024 * 1024 + 7, 'B');
    REQUIRE(c.send_binary(big));
    m = c.read(20s);
    CHECK(m.opcode == 2);
    CHECK(m.payload == big);
    // A protocol error is answered with its close code: invalid UTF-8 in text is 1007.
    REQUIRE(c.send_text("\xff"));
    m = c.read();
    CHECK(m.opcode == 8);
    CHECK(m.close_code() == 1007);
    CHECK(c.eof_within(10s));

    // The client closes: the server answers with the same code.
    test::ws_client d(srv.port);
    REQUIRE(d.upgrade("/ws"));
    REQUIRE(d.send_close(4000, "bye"));
    m = d.read();
    CHECK(m.opcode == 8);
    CHECK(m.close_code() == 4000);
    CHECK(d.eof_within(10s));

    // A plain GET of the endpoint is told to upgrade.
    test::http_response r = test::get(srv.port, "/ws");
    CHECK(r.status == 426);
    CHECK(r.header("Upgrade") == "websocket");
    srv.stop_with(SIGTERM);
}

TEST_CASE("echo_server: a client that leaves its echoes unread is closed with 1008, none dropped silently",
          "[echo_server][websocket]") {
    echo_server srv;
    test::ws_client c(srv.port, 4096);  // a small window: the echoes pile up in the server
    REQUIRE(c.upgrade("/ws"));
    const int flags = ::fcntl(c.fd(), F_GETFL);
    REQUIRE(::fcntl(c.fd(), F_SETFL, flags | O_NONBLOCK) == 0);
    // 64 KiB messages, message i made of the byte i, sent without reading until the
    // server stops taking them (1 s without progress), at most 64 MiB. (Once its close
    // is out the server reads on, dropping what comes, until the client's answer.)
    const std::size_t size = 64 * 1024;
    std::size_t sent = 0, offset = 0;
    std::string frame = test::ws_frame(2, std::string(size, '\0'));
    bool held = false;
    while (sent < 1024) {
        if (offset == 0) frame = test::ws_frame(2, std::string(size, static_cast<char>(sent & 0xff)));
        const ssize_t n = ::send(c.fd(), frame.data() + offset, frame.size() - offset, MSG_NOSIGNAL);
        if (n > 0) {
            offset += static_cast<std::size_t>(n);
            if (offset == frame.size()) {
                offset = 0;
                ++sent;
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
    INFO("messages sent " << sent << (held ? ", then held" : ""));
    REQUIRE(::fcntl(c.fd(), F_SETFL, flags) == 0);
    // Echoes 0, 1, 2, ... whole and in order, then the close: none is missing.
    std::size_t echoed = 0;
    test::ws_message m;
    for (;;) {
        m = c.read(20s);
        if (m.opcode != 2) break;
        REQUIRE(m.payload == std::string(size, static_cast<char>(echoed & 0xff)));
        ++echoed;
    }
    INFO("echoes " << echoed);
    CHECK(m.opcode == 8);
    CHECK(m.close_code() == 1008);
    CHECK(echoed >= 1);
    CHECK(echoed < sent);
    // The rest of the frame under way, then the answer: the closing handshake ends.
    if (offset != 0) REQUIRE(c.send(std::string_view(frame).substr(offset)));
    REQUIRE(c.send_close(1008));
    CHECK(c.eof_within(10s));
    srv.stop_with(SIGTERM);
}

TEST_CASE("echo_server: a stop sends close 1001 to each WebSocket, and waits for its answer",
          "[echo_server][websocket]") {
    for (int sig : {SIGTERM, SIGINT}) {
        INFO("signal " << sig);
        echo_server srv;
        test::ws_client a(srv.port), b(srv.port);
        REQUIRE(a.upgrade("/ws"));
        REQUIRE(b.upgrade("/ws"));
        REQUIRE(a.send_text("before"));
        CHECK(a.read().payload == "before");
        REQUIRE(srv.proc.signal(sig));
        CHECK(ws_answer_close(a) == 1001);
        CHECK(ws_answer_close(b) == 1001);
        a.close();
        b.close();
        std::optional<int> st = srv.proc.wait_exit(10s);
        INFO("echo_server: " << describe_status(st));
        CHECK(test::exited_0(st));
    }
}

TEST_CASE("echo_server: a restart (SIGHUP, POST /restart) sends close 1012; the client reconnects at once",
          "[echo_server][websocket][restart]") {
    echo_server srv;
    for (int round = 1; round <= 2; ++round) {
        INFO("restart " << round << (round == 1 ? " (SIGHUP)" : " (POST /restart)"));
        test::ws_client c(srv.port);
        REQUIRE(c.upgrade("/ws"));
        REQUIRE(c.send_text("ping " + std::to_string(round)));
        CHECK(c.read().payload == "ping " + std::to_string(round));
        if (round == 1) {
            REQUIRE(srv.proc.signal(SIGHUP));
        } else {
            test::http_response r =
                test::request(srv.port, "POST /restart HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n");
            CHECK(r.status == 202);
        }
        CHECK(ws_answer_close(c) == 1012);
        c.close();
        std::optional<std::string> line = srv.proc.read_line(10s);
        CHECK(line == "restarted " + std::to_string(round));
        test::ws_client again(srv.port);  // the same listener: never refused
        REQUIRE(again.ok());
        REQUIRE(again.upgrade("/ws"));
        REQUIRE(again.send_binary("after"));
        test::ws_message m = again.read();
        CHECK(m.opcode == 2);
        CHECK(m.payload == "after");
    }
    srv.stop_with(SIGTERM);
}
