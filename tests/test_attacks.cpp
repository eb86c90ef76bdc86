// Attacks on the engine (issue 7), over real sockets on 127.0.0.1: clients that never read
// their responses must not hold the server (a fresh client is still answered at once);
// chunk-framing floods must be refused early and must not grow memory; an announced body
// size must not reserve memory up front (an address-space limit in a forked child); a
// close after a response must never reset it; a head dribbled byte by byte is served, and
// an endless stream of empty lines is cut by header_timeout. Every test case starts its
// own server on port 0 and stops it. Nothing sleeps to synchronise: clients wait on
// poll(2), receive timeouts and condition variables, all bounded.
//
// Memory is measured as this process's resident set (/proc/self/statm): the server runs
// in-process. Under ASan or TSan the allocator's quarantine and the shadow memory distort
// it, so there the growth is reported (WARN) but not asserted.
//
// The address-space case (tag [fork]) forks, which is sound only while this process is
// single-threaded; under a sanitizer (TSan's runtime has a thread of its own, and neither
// runtime lives under RLIMIT_AS) it is skipped with a WARN. It uses "Expect: 100-continue"
// as its synchronisation point: the server answers a head it has taken in with 100 (or a
// final status).
#include "support.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace rs = restartable_server;
using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;

namespace {

using test::client;
using test::start;
using test::connect_small_rcvbuf;
using test::socket_timeout;

using test::sanitized;

long long ms_between(clk::time_point from, clk::time_point to) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(to - from).count();
}

int ms_until(clk::time_point deadline) {
    const long long ms = ms_between(clk::now(), deadline);
    return ms <= 0 ? 0 : static_cast<int>(std::min<long long>(ms, 1 << 30));
}

std::string get_req(const std::string& path, const std::string& extra = "") {
    return "GET " + path + " HTTP/1.1\r\nHost: x\r\n" + extra + "\r\n";
}

bool set_nonblocking(int fd) {
    const int fl = ::fcntl(fd, F_GETFL);
    return fl >= 0 && ::fcntl(fd, F_SETFL, fl | O_NONBLOCK) == 0;
}

/// fd_list: descriptors closed on scope exit (a failed REQUIRE included).
struct fd_list {
    std::vector<int> fds;
    fd_list() = default;
    fd_list(const fd_list&) = delete;
    fd_list& operator=(const fd_list&) = delete;
    ~fd_list() { close_all(); }
    void close_all() {
        for (int fd : fds) ::close(fd);
        fds.clear();
    }
};

/// counter: handler calls, waited for with a bounded wait.
struct counter {
    std::mutex m;
    std::condition_variable cv;
    std::size_t n = 0;
    void bump() {
        {
            std::lock_guard<std::mutex> lock(m);
            ++n;
        }
        cv.notify_all();
    }
    bool wait_for(std::size_t target, clk::time_point deadline) {
        std::unique_lock<std::mutex> lock(m);
        return cv.wait_until(lock, deadline, [&] { return n >= target; });
    }
    std::size_t get() {
        std::lock_guard<std::mutex> lock(m);
        return n;
    }
};

/// add_routes: GET /hello ("hello"), POST /echo (buffered; the body back as is, counted in
/// echoed when given), GET /count (the number of header fields, a space, and the length of
/// the X-Last field).
void add_routes(rs::server& srv, counter* echoed = nullptr) {
    srv.get("/hello", [](const rs::request&, rs::response& res) { res.set_content("hello", "text/plain"); });
    srv.post("/echo", [echoed](const rs::request& req, rs::response& res) {
        res.set_content(req.body, "application/octet-stream");
        if (echoed) echoed->bump();
    });
    srv.get("/count", [](const rs::request& req, rs::response& res) {
        res.set_content(std::to_string(req.headers.size()) + " " + std::to_string(req.get_header("X-Last").size()),
                        "text/plain");
    });
}

// ------------------------------------------------------------------ memory --

/// rss_bytes: this process's resident set size.
std::size_t rss_bytes() {
    unsigned long size = 0, resident = 0;
    if (std::FILE* f = std::fopen("/proc/self/statm", "r")) {
        if (std::fscanf(f, "%lu %lu", &size, &resident) != 2) resident = 0;
        std::fclose(f);
    }
    return static_cast<std::size_t>(resident) * static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
}

/// rss_watch: the peak of the resident set over a baseline taken at construction. The free
/// heap is handed back to the kernel first, so that memory freed by an earlier test case
/// cannot be reused unseen.
struct rss_watch {
    std::size_t base = 0, peak = 0;
    rss_watch() {
#if defined(__GLIBC__)
        ::malloc_trim(0);
#endif
        base = peak = rss_bytes();
    }
    void sample() { peak = std::max(peak, rss_bytes()); }
    std::size_t growth() {
        sample();
        return peak > base ? peak - base : 0;
    }
};

constexpr std::size_t rss_budget = 16u << 20;

double mib(std::size_t bytes) { return static_cast<double>(bytes) / (1 << 20); }

/// check_rss: the peak resident set grew by less than rss_budget (reported only under a
/// sanitizer, whose allocator keeps freed memory resident).
void check_rss(rss_watch& rss) {
    const std::size_t grown = rss.growth();
    if (sanitized) {
        WARN("RSS grew by " << mib(grown) << " MiB (not asserted under a sanitizer)");
        return;
    }
    INFO("RSS grew by " << mib(grown) << " MiB (budget " << mib(rss_budget) << " MiB)");
    CHECK(grown < rss_budget);
}

// -------------------------------------------------------------- clients --

/// probe: a GET /hello on a fresh connection, timed from before the connect to the whole
/// response; the probe gives up after timeout.
struct probe_result {
    test::http_response r;
    long long ms = 0;
};
probe_result probe(std::uint16_t port, std::chrono::milliseconds timeout) {
    probe_result out;
    const auto t0 = clk::now();
    client c(port, timeout);
    if (c.ok() && c.send(get_req("/hello", "Connection: close\r\n"))) out.r = c.read();
    out.ms = ms_between(t0, clk::now());
    return out;
}

/// slowdown: how much slower a sanitizer build runs the server (ThreadSanitizer: 5-15x);
/// the time bounds below are scaled by it, never dropped.
constexpr int slowdown = sanitized ? 10 : 1;

/// check_fresh_client_served: a fresh client's GET /hello is answered within 1 s (a
/// correctness bound: the old engine made it wait about write_timeout, 3 s here, or
/// forever; healthy it takes a few ms, 179 ms seen on a loaded 2-core machine).
void check_fresh_client_served(std::uint16_t port) {
    const probe_result p = probe(port, 4s);
    INFO("fresh GET /hello: status " << p.r.status << " after " << p.ms << " ms");
    CHECK(p.r.status == 200);
    CHECK(p.r.body == "hello");
    CHECK(p.ms < 1000 * slowdown);
}

/// pump: sends data on every (non-blocking) descriptor, waiting in poll(2) for room, until
/// each has sent it all or failed, or deadline. Returns how many sent it all; failed
/// counts those whose send failed (the server closed or reset them).
std::size_t pump(const std::vector<int>& fds, std::string_view data, clk::time_point deadline,
                 std::size_t& failed) {
    std::vector<std::size_t> sent(fds.size(), 0);
    std::vector<bool> dead(fds.size(), false);
    for (;;) {
        std::vector<pollfd> p;
        std::vector<std::size_t> who;
        for (std::size_t i = 0; i < fds.size(); ++i)
            if (!dead[i] && sent[i] < data.size()) {
                p.push_back({fds[i], POLLOUT, 0});
                who.push_back(i);
            }
        if (p.empty()) break;
        const int timeout = ms_until(deadline);
        if (timeout == 0) break;
        const int r = ::poll(p.data(), static_cast<nfds_t>(p.size()), timeout);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        for (std::size_t k = 0; k < p.size(); ++k) {
            if (p[k].revents == 0) continue;
            const std::size_t i = who[k];
            const std::size_t len = std::min<std::size_t>(data.size() - sent[i], 1 << 20);
            const ssize_t n = ::send(fds[i], data.data() + sent[i], len, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (n > 0)
                sent[i] += static_cast<std::size_t>(n);
            else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                dead[i] = true;
        }
    }
    std::size_t done = 0;
    failed = 0;
    for (std::size_t i = 0; i < fds.size(); ++i) {
        done += sent[i] == data.size() ? 1 : 0;
        failed += dead[i] ? 1 : 0;
    }
    return done;
}

/// flood_result: what flood() did.
struct flood_result {
    std::size_t sent = 0;      // bytes of the flood sent
    bool answered = false;     // the server said something (or closed) before the flood ended
    bool send_failed = false;  // a send failed (the server closed or reset, or 3 s without room)
    int send_errno = 0;
};

/// flood: sends unit over and over on the blocking descriptor fd (the pattern continues
/// across partial sends) until total bytes went, the server answers or closes, or a send
/// fails. The resident set is sampled every MiB.
flood_result flood(int fd, std::string_view unit, std::size_t total, rss_watch& rss) {
    flood_result out;
    std::size_t since_sample = 0;
    while (out.sent < total) {
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, 0) > 0) {
            out.answered = true;
            break;
        }
        const std::size_t off = out.sent % unit.size();
        const std::size_t len = std::min(unit.size() - off, total - out.sent);
        const ssize_t n = ::send(fd, unit.data() + off, len, MSG_NOSIGNAL);
        if (n <= 0) {
            if (n < 0 && errno == EINTR) continue;
            out.send_failed = true;
            out.send_errno = n < 0 ? errno : 0;
            break;
        }
        out.sent += static_cast<std::size_t>(n);
        since_sample += static_cast<std::size_t>(n);
        if (since_sample >= (1u << 20)) {
            rss.sample();
            since_sample = 0;
        }
    }
    rss.sample();
    return out;
}

/// closed_read: what a connection received until it ended.
struct closed_read {
    std::string data;
    bool eof = false;    // ended by the server's FIN
    int error = 0;       // or by this errno (ECONNRESET: a reset; EAGAIN: the receive timeout)
};

/// read_until_close: reads until EOF, an error or the receive timeout, after `already`.
closed_read read_until_close(int fd, std::string already = {}) {
    closed_read out;
    out.data = std::move(already);
    std::vector<char> buf(1 << 16);
    for (;;) {
        const ssize_t n = ::recv(fd, buf.data(), buf.size(), 0);
        if (n > 0) {
            out.data.append(buf.data(), static_cast<std::size_t>(n));
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        out.eof = n == 0;
        out.error = n < 0 ? errno : 0;
        return out;
    }
}

/// parsed: one response with a Content-Length body at the start of data, and what follows.
struct parsed {
    int status = 0;
    std::string head;
    std::string body;
    std::size_t declared = 0;  // its Content-Length
    std::size_t after = 0;     // bytes received after the declared body
};
parsed parse_response(const std::string& data) {
    parsed out;
    const std::size_t end = data.find("\r\n\r\n");
    if (end == std::string::npos || data.size() < 12 || data.compare(0, 5, "HTTP/") != 0) return out;
    out.head = data.substr(0, end + 2);
    out.status = std::atoi(data.c_str() + 9);
    test::http_response h;
    h.head = out.head;
    const std::string cl = h.header("Content-Length");
    out.declared = cl.empty() ? 0 : std::stoul(cl);
    out.body = data.substr(end + 4, out.declared);
    const std::size_t total = end + 4 + out.declared;
    out.after = data.size() > total ? data.size() - total : 0;
    return out;
}

std::string describe_end(const closed_read& c) {
    if (c.eof) return "EOF";
    if (c.error == EAGAIN || c.error == EWOULDBLOCK) return "receive timeout (no close)";
    return std::string("error: ") + std::strerror(c.error);
}

}  // namespace

// ================================================== clients that never read ==

namespace {

/// non_reading_posts: `conns` clients, each with a 4 KiB receive buffer, POST 4 MiB to
/// /echo and never read the echo; once every handler has run (the 4 MiB responses cannot
/// go out), a fresh client must be answered at once.
void non_reading_posts(std::size_t conns) {
    rs::options o = test::local_options(8);  // the default worker_threads
    o.write_timeout = 3s;  // today a stuck response holds its worker this long: keep it short
    o.drain_timeout = 1s;
    o.max_buffered_bytes = std::size_t(1) << 30;  // 64 bodies of 4 MiB: none refused for memory
    rs::server srv(o);
    counter echoed;
    add_routes(srv, &echoed);
    const auto port = start(srv);

    const std::size_t body = 4u << 20;
    const std::string post =
        "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: " + std::to_string(body) + "\r\n\r\n" +
        std::string(body, 'b');
    fd_list floods;
    for (std::size_t i = 0; i < conns; ++i) {
        const int fd = connect_small_rcvbuf(port);
        REQUIRE(fd >= 0);
        floods.fds.push_back(fd);
        REQUIRE(set_nonblocking(fd));
    }
    const auto deadline = clk::now() + 4s * slowdown;  // 256 MiB under TSan takes a while
    std::size_t failed = 0;
    const std::size_t sent = pump(floods.fds, post, deadline, failed);
    const bool all_handled = echoed.wait_for(conns, deadline);
    INFO(conns << " non-reading clients: " << sent << " sent their whole request, " << failed << " failed; "
               << echoed.get() << " handlers ran");
    CHECK(sent == conns);
    CHECK(all_handled);
    check_fresh_client_served(port);

    floods.close_all();
    srv.stop();
}

}  // namespace

TEST_CASE("attack: 8 clients that never read a 4 MiB echo do not delay a fresh client", "[attack][slow-reader]") {
    non_reading_posts(8);
}

TEST_CASE("attack: 64 clients that never read a 4 MiB echo do not delay a fresh client", "[attack][slow-reader]") {
    non_reading_posts(64);
}

TEST_CASE("attack: 8 clients pipelining GETs until their sockets block, never reading, do not delay a fresh "
          "client",
          "[attack][slow-reader][pipelining]") {
    rs::options o = test::local_options(8);
    o.write_timeout = 3s;
    o.drain_timeout = 1s;
    rs::server srv(o);
    add_routes(srv);
    const auto port = start(srv);

    // Up to 200,000 requests (6.6 MB) per connection: enough that the socket blocks (the
    // server's socket buffers take about 20,000 responses before a non-reader stops it).
    const int max_requests = 200000;
    const std::string one = get_req("/hello");
    std::string requests;
    requests.reserve(static_cast<std::size_t>(max_requests) * one.size());
    for (int i = 0; i < max_requests; ++i) requests += one;

    fd_list floods;
    std::size_t blocked = 0, cut = 0;
    for (int i = 0; i < 8; ++i) {
        const int fd = connect_small_rcvbuf(port);
        REQUIRE(fd >= 0);
        floods.fds.push_back(fd);
        REQUIRE(set_nonblocking(fd));
        // Non-blocking sends until the socket blocks (or every request went, or the server
        // cut the connection, which is its right).
        std::size_t off = 0;
        while (off < requests.size()) {
            const ssize_t n = ::send(fd, requests.data() + off, requests.size() - off, MSG_NOSIGNAL);
            if (n > 0) {
                off += static_cast<std::size_t>(n);
                continue;
            }
            if (n < 0 && errno == EINTR) continue;
            ++(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) ? blocked : cut);
            break;
        }
    }
    // Every flood has been taken up: its first response bytes (or its close) have arrived.
    for (int fd : floods.fds) {
        pollfd p{fd, POLLIN, 0};
        REQUIRE(::poll(&p, 1, 5000) == 1);
    }
    INFO("of 8 floods of up to " << max_requests << " requests, " << blocked << " blocked, " << cut
                                 << " were cut by the server");
    check_fresh_client_served(port);

    floods.close_all();
    srv.stop();
}

// ===================================================== chunk-framing floods ==

namespace {

const std::string chunked_post = "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";

/// chunk_flood_refused: a chunked POST to a buffered route whose framing is `prefix`
/// followed by `unit` repeated up to `total` bytes must be answered 400 (and closed) long
/// before the flood ends, and the resident set must not grow by the flood.
void chunk_flood_refused(const std::string& prefix, const std::string& unit, std::size_t total) {
    rs::server srv(test::local_options(4));
    add_routes(srv);
    const auto port = start(srv);
    REQUIRE(test::get(port, "/hello").status == 200);  // threads and buffers exist before the baseline

    rss_watch rss;
    client c(port, 2s);
    REQUIRE(c.ok());
    socket_timeout(c.fd, SO_SNDTIMEO, 3s);
    REQUIRE(c.send(chunked_post + prefix));
    const flood_result f = flood(c.fd, unit, total, rss);
    const test::http_response r = c.read();
    rss.sample();
    INFO("sent " << f.sent << " of " << total << " bytes; the server answered during the flood: " << f.answered
                 << "; a send failed: " << f.send_failed << " (" << std::strerror(f.send_errno)
                 << "); response status " << r.status);
    CHECK(r.status == 400);
    CHECK(f.sent < total);  // refused early, not after the whole flood
    if (r.status == 400) CHECK(c.closed());
    check_rss(rss);
    c.close();
    srv.stop();
}

/// chunks_with_extension: `count` chunks of one byte 'a', each with a chunk extension of
/// exactly ext_len bytes (";x=vvv...").
std::string chunks_with_extension(std::size_t count, std::size_t ext_len) {
    const std::string chunk = "1;x=" + std::string(ext_len - 3, 'v') + "\r\na\r\n";
    std::string out;
    out.reserve(count * chunk.size());
    for (std::size_t i = 0; i < count; ++i) out += chunk;
    return out;
}

}  // namespace

TEST_CASE("attack: a chunk-size line of endless zeros is 400, early, without memory growth",
          "[attack][chunked][memory]") {
    chunk_flood_refused("", std::string(64 * 1024, '0'), 50'000'000);
}

TEST_CASE("attack: a chunk size followed by endless spaces is 400, early, without memory growth",
          "[attack][chunked][memory]") {
    chunk_flood_refused("1", std::string(64 * 1024, ' '), 50'000'000);
}

TEST_CASE("attack: 1-byte chunks with 4000-byte extensions (past the 1024-byte line limit) are 400, early",
          "[attack][chunked][memory]") {
    chunk_flood_refused("", chunks_with_extension(16, 4000), 32u << 20);
}

TEST_CASE("attack: 1-byte chunks with 900-byte extensions: the framing is dropped as decoded",
          "[attack][chunked][memory]") {
    rs::server srv(test::local_options(4));
    add_routes(srv);
    const auto port = start(srv);
    REQUIRE(test::get(port, "/hello").status == 200);

    // "1;x=vvv...\r\na\r\n": a chunk-size line of 901 bytes, under the 1024-byte limit.
    const std::size_t per_unit = 72;
    const std::string unit = chunks_with_extension(per_unit, 900);
    const std::size_t units = (30'000'000 + unit.size() - 1) / unit.size();
    const std::size_t total = units * unit.size();  // about 30 MB of framing for 33 KB of body

    rss_watch rss;
    client c(port, 5s);
    REQUIRE(c.ok());
    socket_timeout(c.fd, SO_SNDTIMEO, 5s);
    REQUIRE(c.send(chunked_post));
    const flood_result f = flood(c.fd, unit, total, rss);
    INFO("sent " << f.sent << " of " << total << " bytes; answered during the flood: " << f.answered
                 << "; a send failed: " << f.send_failed << " (" << std::strerror(f.send_errno) << ")");
    CHECK(!f.answered);
    REQUIRE(f.sent == total);
    REQUIRE(c.send("0\r\n\r\n"));
    const test::http_response r = c.read();
    rss.sample();
    CHECK(r.status == 200);
    CHECK(r.body.size() == units * per_unit);
    const bool all_a = r.body == std::string(units * per_unit, 'a');  // not printed: 33 KB
    CHECK(all_a);
    check_rss(rss);
    c.close();
    srv.stop();
}

// ================================================== address-space limit (fork) ==

namespace {

/// vm_size_kib: this process's virtual memory size (VmSize), in KiB; 0 when unknown.
std::size_t vm_size_kib() {
    std::size_t kib = 0;
    if (std::FILE* f = std::fopen("/proc/self/status", "r")) {
        char line[256];
        while (std::fgets(line, sizeof line, f))
            if (std::sscanf(line, "VmSize: %zu kB", &kib) == 1) break;
        std::fclose(f);
    }
    return kib;
}

/// as_limit_child: the forked child's side. Limits its address space to what it has plus
/// 512 MiB, starts a server with the default worker_threads (GET /hello, POST /echo, GET
/// /quit, which asks the run to stop), reports its port, and exits 0 when the run ended
/// after /quit. Any failure exits with a code of its own.
[[noreturn]] void as_limit_child(int to_parent) {
    // A crash is a plain crash here: not Catch2's handlers (inherited), which would report
    // from inside the child.
    for (int sig : {SIGABRT, SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTERM, SIGINT}) ::signal(sig, SIG_DFL);
    ::alarm(30);  // a backstop: never outlive a parent that lost track of us
#if defined(__GLIBC__)
    // One malloc arena: glibc's per-thread arenas reserve 64 MiB of address space each,
    // which would eat the headroom; the limit is meant for the server's own reservations.
    ::mallopt(M_ARENA_MAX, 1);
#endif
    const std::size_t vm = vm_size_kib();
    if (vm == 0) ::_exit(10);
    rlimit lim{};
    if (::getrlimit(RLIMIT_AS, &lim) != 0) ::_exit(11);
    lim.rlim_cur = static_cast<rlim_t>(vm * 1024 + (std::size_t(512) << 20));
    if (::setrlimit(RLIMIT_AS, &lim) != 0) ::_exit(12);

    rs::server srv(test::local_options(8));
    add_routes(srv);
    srv.get("/quit", [&srv](const rs::request&, rs::response& res) {
        res.set_content("bye", "text/plain");
        srv.request_stop();
    });
    std::error_code ec;
    srv.start(ec);
    if (ec) ::_exit(13);
    const std::uint16_t port = srv.port();
    if (::write(to_parent, &port, sizeof port) != static_cast<ssize_t>(sizeof port)) ::_exit(14);
    const rs::stop_result res = srv.wait();
    ::_exit(res.error ? 15 : 0);
}

/// read_byte: one byte from fd within timeout; -1 on EOF, error or timeout.
int read_byte(int fd, std::chrono::milliseconds timeout) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(timeout.count())) != 1) return -1;
    unsigned char b;
    return ::read(fd, &b, 1) == 1 ? b : -1;
}

/// child_guard: on scope exit (a failed REQUIRE included), closes the pipe and makes sure
/// the child is gone and reaped.
struct child_guard {
    pid_t pid;
    int from_child;
    bool reaped = false;
    int wait_status = 0;
    /// alive: the child has not exited (waitpid WNOHANG).
    bool alive() {
        if (reaped) return false;
        const pid_t r = ::waitpid(pid, &wait_status, WNOHANG);
        if (r == pid) reaped = true;
        return r == 0;
    }
    /// how: how the child ended, for failure messages.
    std::string how() const {
        if (!reaped) return "still running";
        if (WIFEXITED(wait_status)) return "exited with " + std::to_string(WEXITSTATUS(wait_status));
        if (WIFSIGNALED(wait_status)) return "killed by signal " + std::to_string(WTERMSIG(wait_status));
        return "ended somehow";
    }
    /// reap_within: waits for the child's exit (its end of the pipe closing), then reaps.
    bool reap_within(std::chrono::milliseconds timeout) {
        if (reaped) return true;
        pollfd p{from_child, POLLIN, 0};
        const auto deadline = clk::now() + timeout;
        char b;
        ssize_t n = -1;
        while (::poll(&p, 1, ms_until(deadline)) == 1 && (n = ::read(from_child, &b, 1)) == 1) {
        }
        // EOF: every descriptor of the child is closed, so it is exiting: waiting is short.
        if (n == 0 && ::waitpid(pid, &wait_status, 0) == pid) reaped = true;
        return reaped;
    }
    ~child_guard() {
        ::close(from_child);
        if (!reaped) {
            ::kill(pid, SIGKILL);
            ::waitpid(pid, &wait_status, 0);
        }
    }
};

}  // namespace

TEST_CASE("attack: bodies announced at max_body_bytes reserve no memory: under an address-space limit the "
          "server lives on", "[attack][memory][fork]") {
    if (sanitized) {  // a sanitizer's shadow memory and allocator do not live under RLIMIT_AS
        RS_SKIP("under a sanitizer: the address-space limit case");
    }
    // Fork only while single-threaded: every earlier server of this process is stopped.
    REQUIRE(test::thread_count() == 1);
    int c2p[2];
    REQUIRE(::pipe2(c2p, O_CLOEXEC) == 0);
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        ::close(c2p[0]);
        as_limit_child(c2p[1]);
    }
    ::close(c2p[1]);
    child_guard child{pid, c2p[0]};

    std::uint16_t port = 0;
    {
        const int lo = read_byte(child.from_child, 10s);
        const int hi = read_byte(child.from_child, 10s);
        if (lo < 0 || hi < 0) {
            child.reap_within(5s);
            FAIL("the child did not report its port: " << child.how());
        }
        const unsigned char bytes[2] = {static_cast<unsigned char>(lo), static_cast<unsigned char>(hi)};
        std::memcpy(&port, bytes, sizeof port);
    }
    {
        INFO("before the attack: the server serves under the limit");
        const test::http_response r = test::get(port, "/hello");
        REQUIRE(r.status == 200);
    }

    // 40 heads each announcing a body of max_body_bytes (64 MiB), with a few bytes of it.
    // They ask for 100 Continue: its arrival shows the server has taken in the head (today's
    // engine reserves the announced size before it answers), so the check below comes
    // after that, not at a moment chosen by a race. A final status instead of the 100 (a
    // refusal) is fine too; no answer at all is not.
    const std::size_t announced = rs::options{}.max_body_bytes;
    REQUIRE(announced == 67108864);
    std::vector<std::unique_ptr<client>> heavy;
    for (int i = 0; i < 40; ++i) {
        heavy.push_back(std::make_unique<client>(port, 5s));
        REQUIRE(heavy.back()->ok());
        REQUIRE(heavy.back()->send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: " +
                                   std::to_string(announced) + "\r\nExpect: 100-continue\r\n\r\n"));
    }
    int continued = 0, refused = 0, silent = 0;
    const auto answers_by = clk::now() + 5s;  // for all 40 together
    for (auto& h : heavy) {
        socket_timeout(h->fd, SO_RCVTIMEO, std::chrono::milliseconds(std::max(1, ms_until(answers_by))));
        std::string line, empty;
        if (!h->read_line(line) || line.rfind("HTTP/1.1 ", 0) != 0) {
            ++silent;  // EOF, a reset or 5 s without an answer
        } else if (line.rfind("HTTP/1.1 100 ", 0) == 0 && h->read_line(empty) && empty.empty()) {
            ++continued;
            h->send("abcdef");  // a few bytes of the body, and no more
        } else {
            ++refused;
        }
    }
    {
        client c(port, 5s);
        const bool connected = c.ok();
        test::http_response r;
        if (connected && c.send(get_req("/hello", "Connection: close\r\n"))) r = c.read();
        const bool alive = child.alive();
        INFO("40 heads announcing 64 MiB each: " << continued << " got 100 Continue, " << refused
                                                 << " a final status, " << silent << " no answer; then a fresh GET "
                                                 << "/hello: connected " << connected << ", status " << r.status
                                                 << "; the child is " << child.how());
        CHECK(silent == 0);
        CHECK(r.status == 200);
        CHECK(r.body == "hello");
        CHECK(alive);
    }
    heavy.clear();

    if (child.alive()) {
        const test::http_response r = test::get(port, "/quit");
        CHECK(r.status == 200);
    }
    const bool ended = child.reap_within(10s);
    INFO("the child " << child.how());
    CHECK(ended);
    CHECK((child.reaped && WIFEXITED(child.wait_status) && WEXITSTATUS(child.wait_status) == 0));
}

// ===================================================== reset-free close ==

namespace {

/// patterned: n bytes that are not all alike, so a lost or shifted piece shows.
std::string patterned(std::size_t n) {
    std::string s(n, '\0');
    for (std::size_t i = 0; i < n; ++i) s[i] = static_cast<char>('a' + (i * 7 + i / 4093) % 26);
    return s;
}

/// check_whole_then_eof: what was read until the close is exactly one response with status
/// 200 and the body `expected`, ended by the server's FIN, never a reset.
void check_whole_then_eof(const closed_read& got, const std::string& expected) {
    const parsed p = parse_response(got.data);
    INFO("received " << got.data.size() << " bytes, ended by " << describe_end(got) << "; status " << p.status
                     << ", Content-Length " << p.declared << ", body bytes " << p.body.size() << ", bytes after it "
                     << p.after);
    CHECK(p.status == 200);
    CHECK(p.declared == expected.size());
    CHECK(p.body.size() == expected.size());
    const bool same = p.body == expected;  // not printed: megabytes
    CHECK(same);
    CHECK(p.after == 0);
    CHECK(got.eof);
    CHECK(got.error == 0);
}

}  // namespace

TEST_CASE("attack: a response that ends the connection arrives whole, then EOF, never a reset",
          "[attack][close]") {
    rs::options o = test::local_options(4);
    o.max_body_bytes = 4u << 20;
    rs::server srv(o);
    add_routes(srv);
    const auto port = start(srv);
    const std::string body = patterned(2u << 20);

    SECTION("HTTP/1.1 POST with Connection: close, pipelined requests behind it") {
        std::string more;
        for (int i = 0; i < 10; ++i) more += get_req("/hello");
        for (int round = 0; round < 5; ++round) {
            INFO("round " << round);
            client c(port, 5s);
            REQUIRE(c.ok());
            REQUIRE(c.send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: " + std::to_string(body.size()) +
                           "\r\nConnection: close\r\n\r\n" + body + more));
            check_whole_then_eof(read_until_close(c.fd), body);
        }
    }
    SECTION("HTTP/1.0 POST (closes after the response), pipelined requests behind it") {
        std::string more;
        for (int i = 0; i < 10; ++i) more += "GET /hello HTTP/1.0\r\n\r\n";
        for (int round = 0; round < 5; ++round) {
            INFO("round " << round);
            client c(port, 5s);
            REQUIRE(c.ok());
            REQUIRE(c.send("POST /echo HTTP/1.0\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" +
                           body + more));
            check_whole_then_eof(read_until_close(c.fd), body);
        }
    }
    SECTION("413 for an over-limit Content-Length while the body keeps flowing") {
        const std::size_t announced = 16u << 20;
        const std::string piece(1u << 20, 'y');
        for (int round = 0; round < 5; ++round) {
            INFO("round " << round);
            client c(port, 5s);
            REQUIRE(c.ok());
            socket_timeout(c.fd, SO_SNDTIMEO, 5s);
            // The head and a first MiB of the body in one send; the 413 comes on the head.
            REQUIRE(c.send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: " + std::to_string(announced) +
                           "\r\n\r\n" + piece));
            const test::http_response r = c.read();
            INFO("status " << r.status << " (0: nothing could be read: a reset or a timeout, errno "
                           << std::strerror(errno) << ")");
            CHECK(r.status == 413);
            // The client goes on with its body, then reads: the server's FIN, not a reset.
            bool sent = true;
            for (int i = 0; i < 4 && sent; ++i) sent = c.send(piece);
            CHECK(sent);
            std::string already;
            already.swap(c.rd.buf);
            const closed_read rest = read_until_close(c.fd, std::move(already));
            INFO("after the 413: " << rest.data.size() << " more bytes, ended by " << describe_end(rest));
            CHECK(rest.data.empty());
            CHECK(rest.eof);
            CHECK(rest.error == 0);
        }
    }
    srv.stop();
}

// ======================================================== dribbling clients ==

TEST_CASE("attack: a 12 KiB head sent one byte per send is served correctly", "[attack][dribble]") {
    rs::server srv(test::local_options(4));
    add_routes(srv);
    const auto port = start(srv);

    std::string head = "GET /count HTTP/1.1\r\nHost: x\r\n";
    char name[32];
    for (int i = 0; i < 95; ++i) {
        std::snprintf(name, sizeof name, "X-Field-%02d: ", i);
        head += name + std::string(110, static_cast<char>('a' + i % 26)) + "\r\n";
    }
    const std::size_t head_size = 12 * 1024;
    const std::size_t last_prefix = std::strlen("X-Last: ") + 4;  // and "\r\n\r\n"
    REQUIRE(head.size() + last_prefix < head_size);
    const std::size_t last_len = head_size - head.size() - last_prefix;
    head += "X-Last: " + std::string(last_len, 'z') + "\r\n\r\n";
    REQUIRE(head.size() == head_size);

    client c(port, 10s);
    REQUIRE(c.ok());
    c.nodelay();
    const auto t0 = clk::now();
    std::size_t sent = 0;
    for (char ch : head) {
        ssize_t n;
        do n = ::send(c.fd, &ch, 1, MSG_NOSIGNAL);
        while (n < 0 && errno == EINTR);
        if (n != 1) break;
        ++sent;
    }
    REQUIRE(sent == head.size());
    const test::http_response r = c.read();
    INFO("answered " << ms_between(t0, clk::now()) << " ms after the first byte");
    CHECK(r.status == 200);
    CHECK(r.body == "97 " + std::to_string(last_len));
    // The connection is still usable.
    REQUIRE(c.send(get_req("/hello")));
    CHECK(c.read().body == "hello");
    c.close();
    srv.stop();
}

TEST_CASE("attack: an endless stream of empty lines before a request line is cut by header_timeout, "
          "without memory growth", "[attack][dribble][memory]") {
    rs::options o = test::local_options(4);
    o.header_timeout = 300ms;
    rs::server srv(o);
    add_routes(srv);
    const auto port = start(srv);
    REQUIRE(test::get(port, "/hello").status == 200);

    rss_watch rss;
    client c(port, 5s);
    REQUIRE(c.ok());
    REQUIRE(set_nonblocking(c.fd));
    std::string crlfs;
    for (int i = 0; i < 8192; ++i) crlfs += "\r\n";
    const std::size_t cap = 32u << 20;  // then stop sending, and only wait for the close
    std::size_t sent = 0, since_sample = 0;
    std::string received;
    bool closed = false;
    std::string how = "deadline (no close)";
    const auto t0 = clk::now();
    const auto deadline = t0 + 4s;
    while (!closed) {
        pollfd p{c.fd, static_cast<short>(POLLIN | (sent < cap ? POLLOUT : 0)), 0};
        const int timeout = ms_until(deadline);
        if (timeout == 0) break;
        const int pr = ::poll(&p, 1, timeout);
        if (pr < 0 && errno == EINTR) continue;
        if (pr <= 0) break;
        if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
            char buf[4096];
            const ssize_t n = ::recv(c.fd, buf, sizeof buf, 0);
            if (n > 0) {
                received.append(buf, static_cast<std::size_t>(n));
            } else if (n == 0) {
                closed = true;
                how = "EOF";
            } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                closed = true;
                how = std::string("recv: ") + std::strerror(errno);
            }
            continue;
        }
        if ((p.revents & POLLOUT) && sent < cap) {
            const std::size_t off = sent % crlfs.size();
            const ssize_t n = ::send(c.fd, crlfs.data() + off, crlfs.size() - off, MSG_NOSIGNAL);
            if (n > 0) {
                sent += static_cast<std::size_t>(n);
                since_sample += static_cast<std::size_t>(n);
                if (since_sample >= (1u << 20)) {
                    rss.sample();
                    since_sample = 0;
                }
            } else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                closed = true;
                how = std::string("send: ") + std::strerror(errno);
            }
        }
    }
    const long long ended_ms = ms_between(t0, clk::now());
    const int status = received.compare(0, 9, "HTTP/1.1 ") == 0 ? std::atoi(received.c_str() + 9) : 0;
    INFO("sent " << sent << " bytes of CRLF; ended by " << how << " after " << ended_ms << " ms; received "
                 << test::printable(received));
    CHECK(closed);
    CHECK(ended_ms < 2500);  // header_timeout (300 ms) plus a lingering close's allowance
    CHECK((received.empty() || status == 408 || status == 400 || status == 431));
    check_rss(rss);
    c.close();
    srv.stop();
}
