// Black-box test of examples/echo_server's binary upgrade: on SIGUSR2 the running process
// starts a new process of the same binary that inherits the listening socket (LISTEN_FDS),
// waits until it is ready, prints "upgraded to pid N", drains and exits 0.
//
// Twenty upgrades in a row while client threads keep sending GET /hello and POST /echo, on
// fresh connections and on kept-alive ones. Not one request may be refused, go unanswered,
// be cut short or get a wrong body, and no kept-alive connection may be closed under a
// request on its way ("reuse race", RFC 9112 9.3.1): the old process hands its idle
// connections to the new one instead of closing them. Were one to happen, the client
// counts it and retries the request once, on a fresh connection, so the other counts
// stay meaningful. A second test pins down, without load, the two kinds of connection
// the old process hands over: one kept alive after a response, and a new one it accepted
// whose request has not arrived yet when the drain begins; the new process answers both,
// on the same connections. tests/test_upgrade_handover.cpp drives server::upgrade() from
// the test process itself, where it can look at what the old run's stop found.
//
// The upgraded processes are children of the process they replace, not of this test. The
// test makes itself a child subreaper (prctl(2), PR_SET_CHILD_SUBREAPER), so every orphan
// is re-parented to it: it can waitpid() each generation for its exit status. The first
// process is started in a process group of its own, which every generation inherits, so
// one kill(-pgid) reaches whatever is left however the test ends.

#include "process.hpp"

#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
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
using test::describe_status;
using test::exited_0;

/// echo_family: the first echo_server, started in a new process group with its stdout on
/// a pipe, and every process that later replaces it (process::adopt each one). Needs the
/// caller to be a subreaper. The destructor kills (SIGKILL) and reaps every member still
/// there; EOF on stdout means every member is gone.
struct echo_family : test::process {
    explicit echo_family(const std::vector<std::string>& args) : test::process(args, options()) {}
    static test::spawn_options options() {
        test::spawn_options opt;
        opt.new_group = true;
        return opt;
    }
};

/// number_after: the decimal number that makes up the rest of line after prefix, or 0.
unsigned long number_after(const std::optional<std::string>& line, const std::string& prefix) {
    if (!line || line->compare(0, prefix.size(), prefix) != 0) return 0;
    std::string digits = line->substr(prefix.size());
    if (digits.empty() || digits.size() > 9 || digits.find_first_not_of("0123456789") != std::string::npos)
        return 0;
    return std::stoul(digits);
}

/// pid_serving: what GET /pid answers on a fresh connection (0 when it does not).
pid_t pid_serving(std::uint16_t port) {
    test::http_response r = test::get(port, "/pid");
    if (r.status != 200) return 0;
    return static_cast<pid_t>(std::strtol(r.body.c_str(), nullptr, 10));
}

// ------------------------------------------------------------------ clients --

/// tally: what the clients saw, over all threads. Every field but ok and the informational
/// server_closes must stay 0.
struct tally {
    long ok = 0;
    long refused = 0;        // connect() failed
    long unanswered = 0;     // no byte of response: EOF, reset or 10 s of silence
    long truncated = 0;      // part of a response, then EOF, reset or silence
    long wrong = 0;          // a complete response, but not 200 with the expected body
    long reuse_races = 0;    // a kept-alive connection closed under a request (then retried)
    long server_closes = 0;  // informational: "Connection: close" on a kept-alive connection
    std::string first_failure;

    long failures() const { return refused + unanswered + truncated + wrong; }
    std::string summary() const {
        return "ok " + std::to_string(ok) + ", refused " + std::to_string(refused) + ", unanswered " +
               std::to_string(unanswered) + ", truncated " + std::to_string(truncated) + ", wrong " +
               std::to_string(wrong) + ", reuse races " + std::to_string(reuse_races) +
               " (retried), server closes " + std::to_string(server_closes);
    }
};

/// reply: one attempt at a request on one connection.
struct reply {
    enum kind { complete, nothing, partial } what = nothing;
    test::http_response response;
    std::string why;  // for nothing/partial: "EOF", "timeout", "send failed", ...
};

/// attempt: sends request on fd and reads its response (framed by Content-Length).
reply attempt(int fd, test::reader& rd, const std::string& request) {
    reply out;
    if (!test::send_all(fd, request)) {
        out.why = std::string("send failed: ") + std::strerror(errno);
        return out;
    }
    errno = 0;
    out.response = rd.read_response();
    if (out.response.status != 0) {
        out.what = reply::complete;
        return out;
    }
    const bool timed_out = errno == EAGAIN || errno == EWOULDBLOCK;
    out.why = timed_out ? "no byte for 10 s" : errno ? std::strerror(errno) : "EOF";
    out.what = out.response.head.empty() && rd.buf.empty() ? reply::nothing : reply::partial;
    return out;
}

/// client_thread: one thread sending GET /hello and POST /echo in turn (a body unique to
/// each request), on a new connection per request or on one kept alive until the server
/// closes it. Counts every request in the shared tally.
class client_thread {
public:
    client_thread(std::uint16_t port, int id, bool keep_alive, tally& t, std::mutex& m, std::condition_variable& cv)
        : port_(port), id_(id), keep_alive_(keep_alive), tally_(t), m_(m), cv_(cv), thread_([this] { run(); }) {}
    client_thread(const client_thread&) = delete;
    client_thread& operator=(const client_thread&) = delete;
    ~client_thread() { stop(); }
    void stop() {
        stop_.store(true);
        if (thread_.joinable()) thread_.join();
    }

private:
    void run() {
        for (long n = 0; !stop_.load(); ++n) {
            const bool post = n % 2 == 1;
            const std::string body = "client " + std::to_string(id_) + " request " + std::to_string(n);
            std::string req = post ? "POST /echo HTTP/1.1\r\n" : "GET /hello HTTP/1.1\r\n";
            req += "Host: 127.0.0.1\r\n";
            if (!keep_alive_) req += "Connection: close\r\n";
            if (post) req += "Content-Type: text/plain\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
            req += "\r\n";
            if (post) req += body;
            one_request(req, post ? body : "Hello, World!");
        }
    }

    /// one_request: sends req (reconnecting if needed) and counts what came back.
    void one_request(const std::string& req, const std::string& expected) {
        const bool reused = fd_ && answered_ > 0;
        if (!fd_ && !connect()) return;
        reply r = attempt(fd_.get(), rd_, req);
        std::string retry;
        if (r.what == reply::nothing && reused) {  // closed while the request was on its way
            count(&tally::reuse_races, "");
            fd_.reset();
            if (!connect()) return;
            r = attempt(fd_.get(), rd_, req);
            retry = " (the retry after a reuse race)";
        }
        if (r.what == reply::nothing) {
            count(&tally::unanswered, "no response (" + r.why + ") on a new connection" + retry + " to: " +
                                          test::printable(req));
        } else if (r.what == reply::partial) {
            count(&tally::truncated, "cut short (" + r.why + "): " + test::printable(r.response.head + rd_.buf));
        } else if (r.response.status != 200 || r.response.body != expected) {
            count(&tally::wrong, "status " + std::to_string(r.response.status) + ", body '" +
                                     test::printable(r.response.body) + "', expected '" + expected + "'");
        } else {
            ++answered_;
            const bool server_closes = r.response.header("Connection") == "close";
            if (keep_alive_ && server_closes) count(&tally::server_closes, "");
            count(&tally::ok, "");
            if (!keep_alive_ || server_closes) fd_.reset();
            return;
        }
        fd_.reset();  // after any failure: start over on a new connection
    }

    bool connect() {
        fd_.reset(test::connect_to(port_, 10s));
        rd_ = test::reader{fd_.get(), {}};
        answered_ = 0;
        if (fd_) {
            timeval tv{10, 0};
            ::setsockopt(fd_.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
            return true;
        }
        count(&tally::refused, std::string("connect: ") + std::strerror(errno));
        return false;
    }

    void count(long tally::*field, const std::string& failure) {
        {
            std::lock_guard<std::mutex> lock(m_);
            ++(tally_.*field);
            if (!failure.empty() && tally_.first_failure.empty()) tally_.first_failure = failure;
        }
        cv_.notify_all();
    }

    const std::uint16_t port_;
    const int id_;
    const bool keep_alive_;
    tally& tally_;
    std::mutex& m_;
    std::condition_variable& cv_;
    rs::unique_fd fd_;
    test::reader rd_{-1, {}};
    long answered_ = 0;  // responses read on the current connection
    std::atomic<bool> stop_{false};
    std::thread thread_;  // last: starts once everything above is built
};

/// load: n client threads, half on fresh connections, half on kept-alive ones.
class load {
public:
    load(std::uint16_t port, int n) {
        for (int i = 0; i < n; ++i)
            clients_.push_back(std::make_unique<client_thread>(port, i, i % 2 == 1, tally_, m_, cv_));
    }
    ~load() { stop(); }
    void stop() {
        for (auto& c : clients_) c->stop();
    }
    tally now() const {
        std::lock_guard<std::mutex> lock(m_);
        return tally_;
    }
    /// wait_for_ok: waits until at least n requests were answered correctly.
    bool wait_for_ok(long n, std::chrono::milliseconds timeout) {
        std::unique_lock<std::mutex> lock(m_);
        return cv_.wait_for(lock, timeout, [&] { return tally_.ok >= n; });
    }

private:
    mutable std::mutex m_;
    std::condition_variable cv_;
    tally tally_;
    std::vector<std::unique_ptr<client_thread>> clients_;  // last: they use the members above
};

// ----------------------------------------------------------------- upgrades --

/// upgrade: SIGUSR2 to old; returns the pid it announces once it has exited with status 0
/// and the new process answers GET /pid. 0 after a failure (already reported).
pid_t upgrade(echo_family& family, pid_t old, std::uint16_t port) {
    if (::kill(old, SIGUSR2) != 0) {
        FAIL_CHECK("kill(" << old << ", SIGUSR2): " << std::strerror(errno));
        return 0;
    }
    // Lines the new process prints at its start may come first.
    const std::string prefix = "upgraded to pid ";
    std::string seen;
    pid_t next = 0;
    while (std::optional<std::string> line = family.read_line(20s)) {
        seen += *line + "\n";
        if (line->compare(0, prefix.size(), prefix) == 0) {
            next = static_cast<pid_t>(number_after(line, prefix));
            break;
        }
    }
    INFO("stdout after SIGUSR2 to " << old << ":\n" << seen);
    if (next <= 0) {
        FAIL_CHECK("no 'upgraded to pid N' line; the old process: " << describe_status(family.wait_exit(old, 1s)));
        return 0;
    }
    family.adopt(next);
    CHECK(next != old);

    std::optional<int> st = family.wait_exit(old, 20s);  // the drain deadline is 5 s
    INFO("old process " << old << " after the upgrade: " << describe_status(st));
    CHECK(exited_0(st));
    if (!st) return 0;
    const pid_t serving = pid_serving(port);
    CHECK(serving == next);
    return serving == next ? next : 0;
}

}  // namespace

TEST_CASE("echo_server: 20 binary upgrades (SIGUSR2) under load", "[upgrade]") {
    test::watchdog dog("20 binary upgrades under load", std::chrono::seconds(280));
    // Orphaned generations are re-parented to this process, so it can reap them.
    REQUIRE(::prctl(PR_SET_CHILD_SUBREAPER, 1) == 0);

    echo_family family({RS_ECHO_SERVER, "--host", "127.0.0.1", "--port", "0", "--workers", "4", "--drain-ms", "5000"});
    REQUIRE(family.pid() > 0);
    std::optional<std::string> first = family.read_line(10s);
    INFO("first line: " << first.value_or("(none)"));
    const auto port = test::listening_port(first);
    REQUIRE(port != 0);
    pid_t current = family.pid();
    REQUIRE(pid_serving(port) == current);

    load clients(port, 6);
    REQUIRE(clients.wait_for_ok(200, 20s));

    const int rounds = 20;
    int done = 0;
    for (int round = 1; round <= rounds; ++round) {
        INFO("upgrade " << round << " of " << rounds << " (from pid " << current << ")");
        pid_t next = upgrade(family, current, port);
        if (next == 0) break;
        current = next;
        ++done;
        // Traffic flows through the new process before the next upgrade.
        CHECK(clients.wait_for_ok(clients.now().ok + 100, 20s));
    }
    clients.stop();

    const tally t = clients.now();
    std::printf("test_upgrade: %d of %d upgrades; %s\n", done, rounds, t.summary().c_str());
    std::fflush(stdout);
    INFO(t.summary() << (t.first_failure.empty() ? "" : "; first failure: " + t.first_failure));
    CHECK(done == rounds);
    CHECK(t.refused == 0);
    CHECK(t.reuse_races == 0);
    CHECK(t.unanswered == 0);
    CHECK(t.truncated == 0);
    CHECK(t.wrong == 0);

    // The last generation stops on SIGTERM with status 0, and then nobody holds stdout.
    if (pid_serving(port) == current) {
        REQUIRE(::kill(current, SIGTERM) == 0);
        std::optional<int> st = family.wait_exit(current, 20s);
        INFO("last process " << current << " after SIGTERM: " << describe_status(st));
        CHECK(exited_0(st));
    }
    CHECK(family.out.at_eof_within(10s));  // no process of the family is left
}

TEST_CASE("echo_server: connections waiting for a request when an upgrade begins move to the new process",
          "[upgrade]") {
    // Two connections wait for a request as the old process begins to drain: one kept
    // alive after a response (idle), one accepted but silent so far (its client has not
    // sent yet and would not retry). Both are handed to the new process with the listening
    // socket: once the old process has exited, each is still open and the new process
    // answers on it - no reconnect, nothing for the client to retry.
    test::watchdog dog("waiting connections at an upgrade", std::chrono::seconds(60));
    REQUIRE(::prctl(PR_SET_CHILD_SUBREAPER, 1) == 0);
    echo_family family({RS_ECHO_SERVER, "--host", "127.0.0.1", "--port", "0", "--workers", "2", "--drain-ms", "5000"});
    REQUIRE(family.pid() > 0);
    std::optional<std::string> first = family.read_line(10s);
    INFO("first line: " << first.value_or("(none)"));
    const auto port = test::listening_port(first);
    REQUIRE(port != 0);
    const pid_t old = family.pid();

    // silent connects first; kept then gets an answer, so the old process has accepted
    // it, and silent before it (a listening socket's queue is first in, first out).
    test::client silent(port);
    test::client kept(port);
    REQUIRE(silent.ok());
    REQUIRE(kept.ok());
    REQUIRE(kept.send("GET /pid HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"));
    test::http_response r = kept.read();
    REQUIRE(r.status == 200);
    REQUIRE(std::strtol(r.body.c_str(), nullptr, 10) == old);
    REQUIRE(r.header("Connection") != "close");

    REQUIRE(::kill(old, SIGUSR2) == 0);
    std::string seen;
    pid_t next = 0;
    while (std::optional<std::string> line = family.read_line(20s)) {
        seen += *line + "\n";
        if ((next = static_cast<pid_t>(number_after(line, "upgraded to pid "))) != 0) break;
    }
    INFO("stdout after SIGUSR2:\n" << seen);
    REQUIRE(next > 0);
    family.adopt(next);
    // Once the old process is gone, nothing of it can answer.
    std::optional<int> st = family.wait_exit(old, 20s);
    INFO("old process after the upgrade: " << describe_status(st));
    REQUIRE(exited_0(st));

    REQUIRE(kept.send("GET /pid HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"));
    r = kept.read();
    INFO("response on the kept-alive connection: " << test::printable(r.head + r.body));
    CHECK(r.status == 200);
    CHECK(std::strtol(r.body.c_str(), nullptr, 10) == next);

    REQUIRE(silent.send("GET /pid HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"));
    r = silent.read();
    INFO("response on the silent connection: " << test::printable(r.head + r.body));
    CHECK(r.status == 200);
    CHECK(std::strtol(r.body.c_str(), nullptr, 10) == next);

    REQUIRE(::kill(next, SIGTERM) == 0);
    st = family.wait_exit(next, 20s);
    INFO("new process after SIGTERM: " << describe_status(st));
    CHECK(exited_0(st));
    CHECK(family.out.at_eof_within(10s));
}
