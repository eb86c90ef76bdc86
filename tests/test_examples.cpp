// End-to-end tests of the teaching examples, run as the programs a user would run: the built
// binaries in RS_EXAMPLES_DIR, started as child processes, driven through their stdin,
// signals and real sockets, and read through their stdout.
//   signals      SIGHUP restarts on the same port with no refused connection and a
//                keep-alive connection kept; READY=1 reaches $NOTIFY_SOCKET; SIGTERM drains
//                a request that is still arriving, then exits 0; SIGINT exits 0
//   reconfigure  a new route and a new address applied by restart(): the same address keeps
//                its port, a new one gets a new port while the old refuses; connections
//                to the old port are kept; a restart onto a taken port fails harmlessly
//   unix_socket  HTTP over a Unix socket, with a raw AF_UNIX client and curl --unix-socket
// Every wait is bounded (poll on pipes and sockets, a pidfd, condition variables): no sleeps.

#include "process.hpp"

#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#ifndef RS_EXAMPLES_DIR
#error "RS_EXAMPLES_DIR (the directory of the built examples) must be defined"
#endif

namespace {

namespace rs = restartable_server;
using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;
using test::describe_status;
using test::exited_0;
using test::process;

std::string example(const char* name) { return std::string(RS_EXAMPLES_DIR) + "/" + name; }

/// started_example: name started with args; its first line must say on which port it
/// listens. with_stdin: its stdin is a socket written with proc.write(); env: "NAME=value"s.
struct started_example {
    process proc;
    std::uint16_t port = 0;
    started_example(const char* name, std::vector<std::string> args, bool with_stdin = false,
                    const std::vector<std::string>& env = {})
        : proc(with_args(name, std::move(args)), options(with_stdin, env)) {
        REQUIRE(proc.started());
        std::optional<std::string> line = proc.read_line(10s);
        INFO(name << ": first line: " << line.value_or("(none)"));
        port = test::listening_port(line);
        REQUIRE(port != 0);
    }
    static std::vector<std::string> with_args(const char* name, std::vector<std::string> args) {
        args.insert(args.begin(), example(name));
        return args;
    }
    static test::spawn_options options(bool with_stdin, const std::vector<std::string>& env) {
        test::spawn_options opt;
        if (with_stdin) opt.in = test::stream::pipe;
        opt.env = env;
        return opt;
    }
};

/// refused: a connect to 127.0.0.1:port is refused (nothing listens there).
bool refused(std::uint16_t port) {
    int fd = test::connect_to(port, 1s);
    if (fd >= 0) ::close(fd);
    return fd < 0 && errno == ECONNREFUSED;
}

/// wait_refused: connects until one is refused or deadline passes. For the moment a stop
/// has closed the listener; each connect that still succeeds is closed at once.
bool wait_refused(std::uint16_t port, steady::time_point deadline) {
    while (steady::now() < deadline)
        if (refused(port)) return true;
    return false;
}

const std::string get_hello = "GET /hello HTTP/1.1\r\nHost: localhost\r\n\r\n";

/// fresh_connections: a thread that sends GET /hello, each on a new connection, until
/// stopped, and counts: ok (200 with the expected prefix) and failed (refused, reset, no
/// or a wrong answer; the first failure is kept for the message).
class fresh_connections {
public:
    fresh_connections(std::uint16_t port, std::string body_prefix)
        : port_(port), prefix_(std::move(body_prefix)), thread_([this] { loop(); }) {}
    fresh_connections(const fresh_connections&) = delete;
    fresh_connections& operator=(const fresh_connections&) = delete;
    ~fresh_connections() { stop(); }

    void stop() {
        stop_.store(true);
        if (thread_.joinable()) thread_.join();
    }
    /// wait_for_ok: until n requests succeeded in all (condition variable), or timeout.
    bool wait_for_ok(long n, std::chrono::milliseconds timeout) {
        std::unique_lock<std::mutex> lock(m_);
        return cv_.wait_for(lock, timeout, [&] { return ok_ >= n; });
    }
    long ok() const { std::lock_guard<std::mutex> l(m_); return ok_; }
    long failed() const { std::lock_guard<std::mutex> l(m_); return failed_; }
    std::string first_failure() const { std::lock_guard<std::mutex> l(m_); return first_failure_; }

private:
    void loop() {
        while (!stop_.load()) {
            test::http_response r = test::get(port_, "/hello");  // Connection: close
            std::lock_guard<std::mutex> l(m_);
            if (r.status == 200 && r.body.compare(0, prefix_.size(), prefix_) == 0) {
                ++ok_;
            } else if (failed_++ == 0) {
                first_failure_ = "status " + std::to_string(r.status) + ", body '" + test::printable(r.body) + "'";
            }
            cv_.notify_all();
        }
    }

    const std::uint16_t port_;
    const std::string prefix_;
    mutable std::mutex m_;
    std::condition_variable cv_;
    long ok_ = 0, failed_ = 0;
    std::string first_failure_;
    std::atomic<bool> stop_{false};
    std::thread thread_;  // last: starts once the members above exist
};

/// temp_dir: a fresh directory under /tmp, removed (with the files we name) on destruction.
struct temp_dir {
    std::string path;
    std::vector<std::string> files;
    temp_dir() {
        char p[] = "/tmp/rs_test_examples_XXXXXX";
        REQUIRE(::mkdtemp(p) != nullptr);
        path = p;
    }
    ~temp_dir() {
        for (const std::string& f : files) ::unlink(f.c_str());
        ::rmdir(path.c_str());
    }
    std::string file(const std::string& name) {
        files.push_back(path + "/" + name);
        return files.back();
    }
};

/// notify_socket: what systemd listens on for Type=notify services: a datagram socket whose
/// path goes to the child as NOTIFY_SOCKET.
struct notify_socket {
    temp_dir dir;
    std::string path = dir.file("notify");
    rs::unique_fd fd{::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0)};
    notify_socket() {
        sockaddr_un a{};
        a.sun_family = AF_UNIX;
        std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
        REQUIRE(::bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    }
    /// receive: the next datagram, or nullopt when none comes within timeout.
    std::optional<std::string> receive(std::chrono::milliseconds timeout) {
        if (!test::wait_readable(fd.get(), steady::now() + timeout)) return std::nullopt;
        char buf[512];
        ssize_t n = ::recv(fd.get(), buf, sizeof buf, 0);
        if (n < 0) return std::nullopt;
        return std::string(buf, static_cast<std::size_t>(n));
    }
};

/// unix_request: one request over a Unix-domain socket at path; status 0 when it fails.
test::http_response unix_request(const std::string& path, const std::string& raw) {
    rs::unique_fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    timeval tv{10, 0};
    ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
    if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return {};
    if (!test::send_all(fd.get(), raw)) return {};
    test::reader rd{fd.get(), {}};
    return rd.read_response();
}

bool have_command(const char* name) {
    return std::system((std::string("command -v ") + name + " >/dev/null 2>&1").c_str()) == 0;
}

}  // namespace

// ------------------------------------------------------------------- signals --

TEST_CASE("signals: READY=1 after start; SIGHUP restarts on the same port, nothing refused, "
          "a keep-alive connection goes on", "[examples][signals]") {
    test::watchdog dog("signals: SIGHUP", 120s);
    notify_socket notify;
    started_example ex("signals", {"--port", "0"}, false, {"NOTIFY_SOCKET=" + notify.path});

    std::optional<std::string> ready = notify.receive(10s);
    CHECK(ready.value_or("(nothing within 10 s)") == "READY=1");

    // One connection that stays open across the restart, idle at the moment of the SIGHUP.
    test::client kept(ex.port);
    REQUIRE(kept.ok());
    REQUIRE(kept.send(get_hello));
    test::http_response before = kept.read();
    CHECK(before.status == 200);
    CHECK(before.body == "Hello from run 1\n");

    // Fresh connections all the time, before, during and after the restart.
    fresh_connections load(ex.port, "Hello from run ");
    REQUIRE(load.wait_for_ok(200, 20s));

    const long ok_at_signal = load.ok();
    REQUIRE(ex.proc.signal(SIGHUP));
    std::optional<std::string> line = ex.proc.read_line(10s);
    CHECK(line.value_or("(nothing within 10 s)") == "restarted 2");
    const long ok_at_restarted = load.ok();
    CHECK(load.wait_for_ok(ok_at_restarted + 200, 20s));
    load.stop();
    INFO("fresh connections: " << load.ok() << " answered, " << load.failed() << " failed (first: "
                               << load.first_failure() << ")");
    WARN("signals, SIGHUP under load: " << load.ok() << " fresh requests answered (" << ok_at_signal
                                        << " before the SIGHUP, " << ok_at_restarted - ok_at_signal
                                        << " between it and 'restarted 2'), " << load.failed() << " failed");
    CHECK(load.failed() == 0);

    // The kept connection was handed to the new run: same socket, answered by run 2.
    REQUIRE(kept.send(get_hello));
    test::http_response after = kept.read();
    CHECK(after.status == 200);
    CHECK(after.body == "Hello from run 2\n");
    CHECK(after.header("Connection") != "close");
    CHECK(test::get(ex.port, "/hello").body == "Hello from run 2\n");  // same port

    REQUIRE(ex.proc.signal(SIGTERM));
    CHECK(exited_0(ex.proc.wait_exit(20s)));
}

TEST_CASE("signals: SIGTERM closes the listener, answers a request still arriving, exits 0",
          "[examples][signals]") {
    test::watchdog dog("signals: SIGTERM", 120s);
    started_example ex("signals", {"--port", "0"});

    // An idle keep-alive connection, and one whose second request has begun to arrive:
    // sent in the same write as a whole first request, so once the first is answered the
    // server has read the start of the second too.
    test::client idle(ex.port), arriving(ex.port);
    REQUIRE((idle.ok() && arriving.ok()));
    REQUIRE(idle.send(get_hello));
    CHECK(idle.read().status == 200);
    REQUIRE(arriving.send(get_hello + "GET /hello HTTP/1.1\r\nHost: localhost\r\n"));
    CHECK(arriving.read().status == 200);

    REQUIRE(ex.proc.signal(SIGTERM));
    CHECK(ex.proc.read_line(10s).value_or("(nothing)") == "stopping");
    CHECK(wait_refused(ex.port, steady::now() + 10s));  // the stop has begun

    REQUIRE(arriving.send("\r\n"));  // the rest of the head, after the stop began
    test::http_response r = arriving.read();
    CHECK(r.status == 200);
    CHECK(r.body == "Hello from run 1\n");
    CHECK(r.header("Connection") == "close");
    CHECK(arriving.closed());
    CHECK(idle.closed());  // idle connections are closed by the stop

    std::optional<std::string> stopped = ex.proc.read_line(10s);
    CHECK(stopped.value_or("(nothing)") == "stopped (0 connection(s) cut at the drain deadline)");
    std::optional<int> st = ex.proc.wait_exit(10s);
    INFO("signals after SIGTERM: " << describe_status(st));
    CHECK(exited_0(st));
}

TEST_CASE("signals: SIGINT stops it with exit status 0; a bad argument exits 2", "[examples][signals]") {
    test::watchdog dog("signals: SIGINT", 60s);
    {
        started_example ex("signals", {"--port", "0"});
        CHECK(test::get(ex.port, "/hello").status == 200);
        REQUIRE(ex.proc.signal(SIGINT));
        std::optional<int> st = ex.proc.wait_exit(20s);
        INFO("signals after SIGINT: " << describe_status(st));
        CHECK(exited_0(st));
    }
    process bad({example("signals"), "--port", "http"});
    std::optional<int> st = bad.wait_exit(10s);
    INFO("signals --port http: " << describe_status(st));
    CHECK((st && WIFEXITED(*st) && WEXITSTATUS(*st) == 2));
}

// --------------------------------------------------------------- reconfigure --

TEST_CASE("reconfigure: a new route and a new address applied by restart(); the old port "
          "refuses, connections accepted on it are kept", "[examples][reconfigure]") {
    test::watchdog dog("reconfigure", 120s);
    started_example ex("reconfigure", {"--port", "0"}, true);
    const std::uint16_t old_port = ex.port;
    CHECK(test::get(old_port, "/hello").body == "hello\n");
    CHECK(test::get(old_port, "/new").status == 404);

    // Accepted on the old port before any change: one idle keep-alive connection, one with
    // a request half sent (see the SIGTERM test for why a whole request comes first).
    test::client idle(old_port), arriving(old_port);
    REQUIRE((idle.ok() && arriving.ok()));
    REQUIRE(idle.send(get_hello));
    CHECK(idle.read().status == 200);
    REQUIRE(arriving.send(get_hello + "GET /new HTTP/1.1\r\nHost: localhost\r\n"));
    CHECK(arriving.read().status == 200);

    // 1. A new route; the same address, so the restart hands the socket over: same port.
    REQUIRE(ex.proc.write("route /new a new route\n"));
    CHECK(ex.proc.read_line(10s).value_or("(nothing)") == "ok: GET /new from the next restart");
    CHECK(test::get(old_port, "/new").status == 404);  // not before the restart
    REQUIRE(ex.proc.write("restart\n"));
    CHECK(test::listening_port(ex.proc.read_line(10s)) == old_port);
    CHECK(test::get(old_port, "/new").body == "a new route\n");

    // 2. Every interface, port 0: a new address, so a new socket on a new port.
    REQUIRE(ex.proc.write("host 0.0.0.0\n"));
    CHECK(ex.proc.read_line(10s).value_or("(nothing)") == "ok: 0.0.0.0 port 0 from the next restart");
    REQUIRE(ex.proc.write("restart\n"));
    std::optional<std::string> line = ex.proc.read_line(10s);
    INFO("after the second restart: " << line.value_or("(nothing)"));
    const std::uint16_t new_port = test::listening_port(line, "0.0.0.0");
    REQUIRE(new_port != 0);
    CHECK(new_port != old_port);
    WARN("reconfigure: 127.0.0.1:" << old_port << " -> 0.0.0.0:" << new_port);
    CHECK(refused(old_port));
    CHECK(test::get(new_port, "/new").body == "a new route\n");
    CHECK(test::get(new_port, "/hello").body == "hello\n");

    // Nothing dropped: both connections made to the old port went through two restarts
    // and are served by the new run's routes.
    REQUIRE(arriving.send("\r\n"));
    test::http_response r = arriving.read();
    CHECK(r.status == 200);
    CHECK(r.body == "a new route\n");
    REQUIRE(idle.send("GET /new HTTP/1.1\r\nHost: localhost\r\n\r\n"));
    r = idle.read();
    CHECK(r.status == 200);
    CHECK(r.body == "a new route\n");

    // 3. A restart onto a port in use (our own, bound as a different address) fails, and
    // the current run goes on.
    REQUIRE(ex.proc.write("port " + std::to_string(new_port) + "\n"));
    CHECK(ex.proc.read_line(10s).value_or("(nothing)") ==
          "ok: 0.0.0.0 port " + std::to_string(new_port) + " from the next restart");
    REQUIRE(ex.proc.write("restart\n"));
    line = ex.proc.read_line(10s);
    INFO("restart onto the port in use: " << line.value_or("(nothing)"));
    CHECK(line.value_or("") == "error: restart failed: Address already in use");
    CHECK(test::get(new_port, "/new").body == "a new route\n");

    REQUIRE(ex.proc.write("bogus\nquit\n"));
    CHECK(ex.proc.read_line(10s).value_or("(nothing)").rfind("error: unknown command 'bogus'", 0) == 0);
    CHECK(ex.proc.read_line(10s).value_or("(nothing)") == "stopped");
    std::optional<int> st = ex.proc.wait_exit(10s);
    INFO("reconfigure after quit: " << describe_status(st));
    CHECK(exited_0(st));
}

// --------------------------------------------------------------- unix_socket --

TEST_CASE("unix_socket: HTTP over a Unix socket, a raw client and curl --unix-socket; "
          "SIGTERM removes the socket file", "[examples][unix_socket]") {
    test::watchdog dog("unix_socket", 120s);
    temp_dir dir;
    const std::string path = dir.file("http.sock");
    process ex({example("unix_socket"), path});
    REQUIRE(ex.started());
    CHECK(ex.read_line(10s).value_or("(nothing)") == "listening on unix:" + path);

    test::http_response r = unix_request(path, "GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    CHECK(r.status == 200);
    CHECK(r.body == "Hello over a Unix socket\n");
    r = unix_request(path, "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n"
                           "Connection: close\r\n\r\nsome text");
    CHECK(r.status == 200);
    CHECK(r.body == "some text");

    if (have_command("curl")) {
        process curl({"/bin/sh", "-c", "exec curl -sS --max-time 10 --unix-socket '" + path +
                                           "' http://localhost/hello"});
        std::optional<std::string> out = curl.read_all(20s);
        CHECK(out.value_or("(no output)") == "Hello over a Unix socket\n");
        CHECK(exited_0(curl.wait_exit(10s)));
    } else {
        WARN("curl not installed: the curl --unix-socket check did not run");
    }

    REQUIRE(ex.signal(SIGTERM));
    CHECK(ex.read_line(10s).value_or("(nothing)") == "stopped");
    std::optional<int> st = ex.wait_exit(10s);
    INFO("unix_socket after SIGTERM: " << describe_status(st));
    CHECK(exited_0(st));
    CHECK(::access(path.c_str(), F_OK) != 0);  // the example removed its socket file
}
