// server::upgrade() hands the connections waiting for a request to the new process (see
// "hand-over to a new process" in the header): driven from the test process itself, so
// the old run's stop_result can say what became of each connection. The new process is
// examples/echo_server (GET /pid answers its pid), a child of this test; the test server's
// GET /pid answers this process's pid, so every response names who sent it.
//
// Each test keeps its client connections open across the upgrade and never reconnects:
// what the new process answers on them, it can only have answered because it was handed
// the very socket. Waits are on events (a sync point, a pidfd, a socket), never sleeps.
#include "support.hpp"
#include "sync_gate.hpp"

#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#ifndef RS_ECHO_SERVER
#error "RS_ECHO_SERVER (the path of the built echo_server) must be defined"
#endif

namespace {

namespace rs = restartable_server;
using namespace std::chrono_literals;

const std::string get_pid = "GET /pid HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

/// exit_of: the wait status of child once it has exited, within timeout (a pidfd polled,
/// no sleep); nullopt when it did not.
std::optional<int> exit_of(pid_t child, std::chrono::milliseconds timeout) {
    rs::unique_fd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, child, 0)));
    if (!pidfd) return std::nullopt;
    pollfd p{pidfd.get(), POLLIN, 0};
    int n;
    do n = ::poll(&p, 1, static_cast<int>(timeout.count()));
    while (n < 0 && errno == EINTR);
    if (n <= 0) return std::nullopt;
    int st = 0;
    pid_t r;
    do r = ::waitpid(child, &st, 0);
    while (r < 0 && errno == EINTR);
    return r == child ? std::optional<int>(st) : std::nullopt;
}

/// child_process: the new process upgrade() started; the destructor kills (SIGKILL) and
/// reaps it if the test did not stop it.
struct child_process {
    pid_t pid = -1;
    ~child_process() {
        if (pid > 0 && ::kill(pid, SIGKILL) == 0) exit_of(pid, 10s);
    }
    /// stop: SIGTERM (echo_server drains and exits 0); true when it did so within 20 s.
    bool stop() {
        if (pid <= 0 || ::kill(pid, SIGTERM) != 0) return false;
        const std::optional<int> st = exit_of(pid, 20s);
        pid = -1;
        return st && WIFEXITED(*st) && WEXITSTATUS(*st) == 0;
    }
};

/// error_lines: what a server's error_log said, from any thread.
struct error_lines {
    std::mutex m;
    std::vector<std::string> lines;
    std::string all() {
        std::lock_guard<std::mutex> lock(m);
        std::string out;
        for (const std::string& l : lines) out += l + "\n";
        return out;
    }
};

/// old_server: the process's own server, the one upgrade() replaces.
rs::options old_options(const std::shared_ptr<error_lines>& log) {
    rs::options o = test::local_options(2);
    o.error_log = [log](std::string_view line) {
        std::lock_guard<std::mutex> lock(log->m);
        log->lines.emplace_back(line);
    };
    return o;
}

void add_pid_route(rs::server& srv) {
    srv.get("/pid", [](const rs::request&, rs::response& res) {
        res.set_content(std::to_string(::getpid()) + "\n", "text/plain");
    });
}

/// pid_of: the pid a GET /pid response names (0 if it is not one).
pid_t pid_of(const test::http_response& r) {
    return r.status == 200 ? static_cast<pid_t>(std::strtol(r.body.c_str(), nullptr, 10)) : 0;
}

/// kept_alive: a connection that got one response from the old server and stays open.
std::unique_ptr<test::client> kept_alive(std::uint16_t port) {
    auto c = std::make_unique<test::client>(port);
    if (!c->ok() || !c->send(get_pid)) return nullptr;
    const test::http_response r = c->read();
    if (pid_of(r) != ::getpid() || r.header("Connection") == "close") return nullptr;
    return c;
}

std::vector<std::string> echo_server_argv() {
    return {RS_ECHO_SERVER, "--host", "127.0.0.1", "--port", "0", "--workers", "2", "--drain-ms", "5000"};
}

std::string describe(const rs::stop_result& sr) {
    return "{handed_over " + std::to_string(sr.handed_over) + ", idle_closed " + std::to_string(sr.idle_closed) +
           ", cut " + std::to_string(sr.cut) + ", drained " + (sr.drained ? "true" : "false") + ", error " +
           (sr.error ? sr.error.message() : std::string("none")) + "}";
}

}  // namespace

TEST_CASE("upgrade(): an idle connection and one with half a request head read go to the new process",
          "[upgrade][handover]") {
    test::watchdog dog("hand-over of an idle and a half-read connection", 120s);
    auto log = std::make_shared<error_lines>();
    rs::server srv(old_options(log));
    add_pid_route(srv);
    srv.start();
    const std::uint16_t port = srv.port();

    std::unique_ptr<test::client> kept = kept_alive(port);
    REQUIRE(kept);

    // Half a head, read by the old server: a worker parks the connection a second time
    // (the first park is at its accept) once it has read the bytes and found no whole head.
    std::mutex m;
    std::condition_variable cv;
    int head_parks = 0;
    srv.set_sync_point("park.parked", [&](int state) {
        if (state != static_cast<int>(rs::detail::conn_state::head)) return;
        std::lock_guard<std::mutex> lock(m);
        ++head_parks;
        cv.notify_all();
    });
    test::client half(port);
    REQUIRE(half.ok());
    REQUIRE(half.send("GET /pid HTTP/1.1\r\nHo"));
    {
        std::unique_lock<std::mutex> lock(m);
        REQUIRE(cv.wait_for(lock, 30s, [&] { return head_parks >= 2; }));
    }
    srv.set_sync_point("park.parked", {});

    std::error_code ec;
    child_process child;
    child.pid = srv.upgrade(echo_server_argv(), ec);
    INFO("upgrade: " << ec.message() << "; error log:\n" << log->all());
    REQUIRE(!ec);
    REQUIRE(child.pid > 0);
    const rs::stop_result sr = srv.wait();  // upgrade() asked for the stop
    INFO("the old run's stop: " << describe(sr));
    CHECK(srv.state() == rs::server_state::stopped);
    CHECK(sr.handed_over == 2);
    CHECK(sr.idle_closed == 0);
    CHECK(sr.drained);
    CHECK(!sr.error);

    // The old server is stopped: whatever answers now is the new process, on the sockets
    // this process accepted.
    REQUIRE(kept->send(get_pid));
    test::http_response r = kept->read();
    INFO("on the kept-alive connection: " << test::printable(r.head + r.body));
    CHECK(pid_of(r) == child.pid);

    REQUIRE(half.send("st: 127.0.0.1\r\n\r\n"));  // the rest of the head: the start went along
    r = half.read();
    INFO("on the half-sent connection: " << test::printable(r.head + r.body));
    CHECK(pid_of(r) == child.pid);

    CHECK(child.stop());
    CHECK(log->all().empty());
}

TEST_CASE("upgrade(): more idle connections than one message carries all go to the new process",
          "[upgrade][handover]") {
    // 253 descriptors at most per SCM_RIGHTS message: 300 connections take two.
    test::watchdog dog("hand-over of 300 idle connections", 120s);
    auto log = std::make_shared<error_lines>();
    rs::server srv(old_options(log));
    add_pid_route(srv);
    srv.start();
    const std::uint16_t port = srv.port();
    constexpr std::size_t count = 300;
    std::vector<std::unique_ptr<test::client>> clients;
    for (std::size_t i = 0; i < count; ++i) {
        clients.push_back(kept_alive(port));
        REQUIRE(clients.back());
    }

    std::error_code ec;
    child_process child;
    child.pid = srv.upgrade(echo_server_argv(), ec);
    INFO("upgrade: " << ec.message() << "; error log:\n" << log->all());
    REQUIRE(!ec);
    REQUIRE(child.pid > 0);
    const rs::stop_result sr = srv.wait();
    INFO("the old run's stop: " << describe(sr));
    CHECK(sr.handed_over == count);
    CHECK(sr.idle_closed == 0);

    std::size_t served_by_new = 0;
    for (auto& c : clients) {
        if (c->send(get_pid) && pid_of(c->read()) == child.pid) ++served_by_new;
    }
    CHECK(served_by_new == count);
    CHECK(child.stop());
}

TEST_CASE("upgrade(): a new process that takes no connections: the old one closes its idle ones as before",
          "[upgrade][handover]") {
    // A program that does not take part in the hand-over (an older build, another server)
    // never greets: here echo_server itself, started without the variable that names the
    // socket. The old process waits for the greeting a bounded time, then stops as it
    // always did; the client sees its idle connection closed, which it may retry.
    test::watchdog dog("upgrade to a process that takes no connections", 120s);
    auto log = std::make_shared<error_lines>();
    rs::server srv(old_options(log));
    add_pid_route(srv);
    srv.start();
    const std::uint16_t port = srv.port();
    std::unique_ptr<test::client> kept = kept_alive(port);
    REQUIRE(kept);

    std::vector<std::string> argv = {"/usr/bin/env", "-u", "RESTARTABLE_SERVER_HANDOVER_FD"};
    for (const std::string& a : echo_server_argv()) argv.push_back(a);
    std::error_code ec;
    child_process child;
    child.pid = srv.upgrade(argv, ec);
    INFO("upgrade: " << ec.message());
    REQUIRE(!ec);
    REQUIRE(child.pid > 0);
    const rs::stop_result sr = srv.wait();
    INFO("the old run's stop: " << describe(sr) << "; error log:\n" << log->all());
    CHECK(sr.handed_over == 0);
    CHECK(sr.idle_closed == 1);
    CHECK(sr.drained);
    CHECK(!sr.error);
    CHECK(kept->closed());
    CHECK(log->all().find("does not take connections over") != std::string::npos);

    // The new process serves the listening socket all the same.
    CHECK(pid_of(test::get(port, "/pid")) == child.pid);
    CHECK(child.stop());
}

TEST_CASE("upgrade(): a new process that exits after its greeting: the old one closes its idle ones as before",
          "[upgrade][handover]") {
    // The new process greeted, then died before the connections went: the old process's
    // stop is held as it begins (the listener closed, nothing sent yet) while the child is
    // killed, so the message finds no one. The connection is not lost in between: the old
    // process closes it, as a stop without a hand-over does.
    test::watchdog dog("upgrade to a process that dies", 120s);
    auto log = std::make_shared<error_lines>();
    rs::server srv(old_options(log));
    add_pid_route(srv);
    srv.start();
    const std::uint16_t port = srv.port();
    std::unique_ptr<test::client> kept = kept_alive(port);
    REQUIRE(kept);

    test::gate stopping(srv, "transition", [](int to) { return to == static_cast<int>(rs::server_state::stopping); });
    std::error_code ec;
    child_process child;
    child.pid = srv.upgrade(echo_server_argv(), ec);
    INFO("upgrade: " << ec.message());
    REQUIRE(!ec);
    REQUIRE(child.pid > 0);
    REQUIRE(stopping.reached());
    REQUIRE(::kill(child.pid, SIGKILL) == 0);
    const std::optional<int> st = exit_of(child.pid, 20s);
    REQUIRE(st);
    child.pid = -1;
    stopping.release();

    const rs::stop_result sr = srv.wait();
    INFO("the old run's stop: " << describe(sr) << "; error log:\n" << log->all());
    CHECK(sr.handed_over == 0);
    CHECK(sr.idle_closed == 1);
    CHECK(sr.drained);
    CHECK(kept->closed());
    CHECK(log->all().find("the new process took no connection") != std::string::npos);
}
