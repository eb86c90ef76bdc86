// End-to-end test of examples/echo_server: runs the built binary (RS_ECHO_SERVER) as a
// child process with --port 0, learns its port from the "listening on" line on its stdout,
// and talks to it with curl, wrk and the socket client of support.hpp: keep-alive, echo,
// restarts (POST /restart and SIGHUP) while clients keep sending, and exit on SIGTERM /
// SIGINT. Every wait is bounded (poll on a pipe or a pidfd, condition variables): no sleeps.

#include "support.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/syscall.h>
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

extern char** environ;

namespace {

namespace rs = restartable_server;
using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

int ms_until(steady::time_point deadline) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - steady::now()).count();
    return left <= 0 ? 0 : static_cast<int>(left);
}

/// poll_one: poll(2) one descriptor until deadline, retrying on EINTR. true if ready.
bool poll_one(int fd, steady::time_point deadline) {
    for (;;) {
        pollfd p{fd, POLLIN, 0};
        int n = ::poll(&p, 1, ms_until(deadline));
        if (n > 0) return true;
        if (n == 0) return false;
        if (errno != EINTR) return false;
    }
}

/// child: a process started with posix_spawn, its stdout on a pipe; its stderr is ours,
/// or stderr_fd when one is given.
/// The destructor kills (SIGKILL) and reaps it if it is still there, so no test leaves a
/// process behind, whichever way it ends.
class child {
public:
    explicit child(const std::vector<std::string>& args, int stderr_fd = -1) {
        int p[2];
        if (::pipe2(p, O_CLOEXEC) != 0) return;
        out_.reset(p[0]);
        rs::unique_fd w(p[1]);

        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_adddup2(&fa, w.get(), STDOUT_FILENO);
        if (stderr_fd >= 0) posix_spawn_file_actions_adddup2(&fa, stderr_fd, STDERR_FILENO);
        posix_spawnattr_t at;
        posix_spawnattr_init(&at);
        sigset_t none, dflt;
        sigemptyset(&none);
        sigemptyset(&dflt);
        for (int sig : {SIGHUP, SIGINT, SIGTERM, SIGPIPE}) sigaddset(&dflt, sig);
        posix_spawnattr_setsigmask(&at, &none);
        posix_spawnattr_setsigdefault(&at, &dflt);
        posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);

        std::vector<char*> argv;
        for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
        argv.push_back(nullptr);
        pid_t pid = -1;
        if (::posix_spawn(&pid, argv[0], &fa, &at, argv.data(), environ) == 0) pid_ = pid;
        posix_spawn_file_actions_destroy(&fa);
        posix_spawnattr_destroy(&at);
    }
    child(const child&) = delete;
    child& operator=(const child&) = delete;
    ~child() {
        if (pid_ > 0 && !reaped_) {
            ::kill(pid_, SIGKILL);
            ::waitpid(pid_, nullptr, 0);
        }
    }

    bool started() const { return pid_ > 0; }
    pid_t pid() const { return pid_; }
    bool signal(int sig) const { return pid_ > 0 && !reaped_ && ::kill(pid_, sig) == 0; }

    /// read_line: the next line of the child's stdout, without '\n'; nullopt on EOF or
    /// when none comes within timeout.
    std::optional<std::string> read_line(std::chrono::milliseconds timeout) {
        const auto deadline = steady::now() + timeout;
        for (;;) {
            auto nl = buf_.find('\n');
            if (nl != std::string::npos) {
                std::string line = buf_.substr(0, nl);
                buf_.erase(0, nl + 1);
                return line;
            }
            if (!fill(deadline)) return std::nullopt;
        }
    }

    /// read_all: everything the child writes to stdout until EOF; nullopt when EOF does not
    /// come within timeout.
    std::optional<std::string> read_all(std::chrono::milliseconds timeout) {
        const auto deadline = steady::now() + timeout;
        while (fill(deadline)) {
        }
        if (!eof_) return std::nullopt;
        std::string all;
        all.swap(buf_);
        return all;
    }

    /// wait_exit: the child's wait status once it has exited, or nullopt when it has not
    /// within timeout. Polls a pidfd: no sleeping, no signal handlers.
    std::optional<int> wait_exit(std::chrono::milliseconds timeout) {
        if (pid_ <= 0) return std::nullopt;
        if (reaped_) return status_;
        rs::unique_fd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid_, 0)));
        if (!pidfd) return std::nullopt;
        if (!poll_one(pidfd.get(), steady::now() + timeout)) return std::nullopt;
        int st = 0;
        if (::waitpid(pid_, &st, 0) != pid_) return std::nullopt;
        reaped_ = true;
        status_ = st;
        return st;
    }

private:
    bool fill(steady::time_point deadline) {
        if (eof_ || !out_ || !poll_one(out_.get(), deadline)) return false;
        char tmp[4096];
        ssize_t n;
        do n = ::read(out_.get(), tmp, sizeof tmp);
        while (n < 0 && errno == EINTR);
        if (n <= 0) {
            eof_ = true;
            return false;
        }
        buf_.append(tmp, static_cast<std::size_t>(n));
        return true;
    }

    pid_t pid_ = -1;
    rs::unique_fd out_;
    std::string buf_;
    bool eof_ = false;
    bool reaped_ = false;
    int status_ = 0;
};

/// describe_status: "exit N", "signal N" or "still running", for messages.
std::string describe_status(std::optional<int> st) {
    if (!st) return "still running";
    if (WIFEXITED(*st)) return "exit " + std::to_string(WEXITSTATUS(*st));
    if (WIFSIGNALED(*st)) return "signal " + std::to_string(WTERMSIG(*st));
    return "status " + std::to_string(*st);
}

/// command_result: the output and wait status of a finished command.
struct command_result {
    std::optional<int> status;  // nullopt: it did not finish in time
    std::string out;
    std::string err;  // only when asked for; at most a pipe buffer (64 KiB)
};

/// run_command: runs args (args[0] is a path) to completion with a bounded time.
command_result run_command(const std::vector<std::string>& args,
                           std::chrono::milliseconds timeout = 20s, bool capture_stderr = false) {
    const auto deadline = steady::now() + timeout;
    rs::unique_fd err_read, err_write;
    if (capture_stderr) {
        int p[2];
        if (::pipe2(p, O_CLOEXEC) != 0) return {};
        err_read.reset(p[0]);
        err_write.reset(p[1]);
        ::fcntl(err_read.get(), F_SETFL, O_NONBLOCK);  // read after the exit: never block
    }
    child c(args, err_write.get());
    err_write.reset();  // the child has its copy: EOF comes when it exits
    command_result r;
    if (!c.started()) return r;
    std::optional<std::string> out = c.read_all(timeout);
    r.out = out.value_or("");
    if (out) r.status = c.wait_exit(std::chrono::milliseconds(ms_until(deadline) + 1));
    if (r.status && err_read) {  // it has exited: whatever it wrote is in the pipe
        char tmp[4096];
        ssize_t n;
        while ((n = ::read(err_read.get(), tmp, sizeof tmp)) > 0) r.err.append(tmp, static_cast<std::size_t>(n));
    }
    return r;
}

const std::string listening_prefix = "listening on http://127.0.0.1:";

/// port_of: the port in a "listening on http://127.0.0.1:PORT" line, or 0.
std::uint16_t port_of(const std::optional<std::string>& line) {
    if (!line || line->compare(0, listening_prefix.size(), listening_prefix) != 0) return 0;
    std::string digits = line->substr(listening_prefix.size());
    if (digits.empty() || digits.size() > 5 ||
        digits.find_first_not_of("0123456789") != std::string::npos)
        return 0;
    unsigned long p = std::stoul(digits);
    return p <= 65535 ? static_cast<std::uint16_t>(p) : 0;
}

/// echo_server: the example running as a child on 127.0.0.1, port 0.
struct echo_server {
    child proc{{RS_ECHO_SERVER, "--host", "127.0.0.1", "--port", "0", "--workers", "4",
                "--drain-ms", "3000"}};
    std::uint16_t port = 0;

    echo_server() {
        REQUIRE(proc.started());
        std::optional<std::string> line = proc.read_line(10s);
        INFO("first line: " << line.value_or("(none)"));
        port = port_of(line);
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
