// Test support: a Catch2 2/3 shim, RS_SKIP, a tiny blocking HTTP client over real sockets,
// and counters for open descriptors and threads. Shared by every test file; keep it small.
#ifndef RESTARTABLE_SERVER_TESTS_SUPPORT_HPP
#define RESTARTABLE_SERVER_TESTS_SUPPORT_HPP

#if __has_include(<catch2/catch_test_macros.hpp>)
#include <catch2/catch_test_macros.hpp>
#else
#include <catch2/catch.hpp>
#endif

#include "restartable_server.hpp"

#include <dirent.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <netinet/tcp.h>
#include <poll.h>

#include <chrono>
#include <vector>
#include <iterator>
#include <fstream>
#include <algorithm>
#include <cstdlib>
#include <thread>
#include <mutex>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <cstdio>
#include <string>
#include <atomic>
#include <sstream>

/// RS_SKIP(reason): the test case cannot run here (a missing tool, no IPv6, a sanitizer):
/// prints "SKIPPED: reason" to stderr, records the skip and returns from the test case, so
/// call it in the test case's body (or a SECTION's), not in a helper function. With a skip
/// and no failure the test executable exits 77 and CTest shows the test as skipped, not
/// passed. The reason may be streamed, as in Catch2's INFO: RS_SKIP("no " << path).
#define RS_SKIP(reason)                                                      \
    do {                                                                     \
        std::ostringstream rs_skip_reason_;                                  \
        rs_skip_reason_ << reason;                                           \
        ::test::record_skip(rs_skip_reason_.str(), __FILE__, __LINE__);      \
        return;                                                              \
    } while (false)

namespace test {

/// run_command: runs cmd with /bin/sh; returns its stdout (stderr too when the command
/// says 2>&1) and sets exit_code (-1 when it did not exit normally). Bound its time in
/// the command itself (timeout, curl --max-time).
inline std::string run_command(const std::string& cmd, int& exit_code) {
    std::string out;
    FILE* p = ::popen(cmd.c_str(), "r");
    if (!p) {
        exit_code = -1;
        return out;
    }
    char buf[4096];
    std::size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
    const int st = ::pclose(p);
    exit_code = (st != -1 && WIFEXITED(st)) ? WEXITSTATUS(st) : -1;
    return out;
}

/// have_command: whether name is a command in PATH.
inline bool have_command(const std::string& name) {
    return std::system(("command -v " + name + " >/dev/null 2>&1").c_str()) == 0;
}

namespace rs = restartable_server;

/// option_seed, option_seconds: main.cpp's --seed and --seconds (0: the test's default).
inline unsigned long long& option_seed() {
    static unsigned long long seed = 0;
    return seed;
}
inline double& option_seconds() {
    static double seconds = 0;
    return seconds;
}

/// skip_count: how many RS_SKIPs this run went through. main.cpp exits 77 when it is not 0
/// and nothing failed, and every CTest test has SKIP_RETURN_CODE 77.
inline std::atomic<int>& skip_count() {
    static std::atomic<int> count{0};
    return count;
}

inline void record_skip(const std::string& reason, const char* file, int line) {
    std::fprintf(stderr, "SKIPPED: %s (%s:%d)\n", reason.c_str(), file, line);
    std::fflush(stderr);
    ++skip_count();
}

/// count_entries: entries in a /proc directory (minus . and ..), e.g. "/proc/self/fd".
inline int count_entries(const char* dir) {
    DIR* d = ::opendir(dir);
    if (!d) return -1;
    int n = 0;
    while (dirent* e = ::readdir(d))
        if (e->d_name[0] != '.') ++n;
    ::closedir(d);
    return n - (std::string(dir) == "/proc/self/fd" ? 1 : 0);  // opendir's own descriptor
}
inline int open_fds() { return count_entries("/proc/self/fd"); }

/// io_fds: this process's descriptors of the kinds a server opens (sockets, pipes, epoll
/// and other anon inodes), not files: glibc's malloc opens /proc/sys/vm/overcommit_memory
/// for a moment the first time it shrinks a thread's heap, which a test that counts
/// descriptors while another thread is still returning can catch (seen once in 8,000 rounds).
inline int io_fds() {
    int n = 0;
    DIR* d = ::opendir("/proc/self/fd");
    if (!d) return -1;
    const int own = ::dirfd(d);
    while (dirent* e = ::readdir(d)) {
        if (e->d_name[0] == '.' || std::atoi(e->d_name) == own) continue;
        char target[64] = {};
        const std::string link = std::string("/proc/self/fd/") + e->d_name;
        if (::readlink(link.c_str(), target, sizeof target - 1) <= 0) continue;
        const std::string_view t(target);
        if (t.rfind("socket:", 0) == 0 || t.rfind("pipe:", 0) == 0 || t.rfind("anon_inode:", 0) == 0) ++n;
    }
    ::closedir(d);
    return n;
}

/// fd_listing: this process's descriptors as "fd -> what", one per line (socket:[inode],
/// pipe:[inode], anon_inode:[eventpoll], a path), to name a descriptor a test finds open.
inline std::string fd_listing() {
    std::string out;
    DIR* d = ::opendir("/proc/self/fd");
    if (!d) return out;
    const int own = ::dirfd(d);
    while (dirent* e = ::readdir(d)) {
        if (e->d_name[0] == '.' || std::atoi(e->d_name) == own) continue;
        char target[256] = {};
        const std::string link = std::string("/proc/self/fd/") + e->d_name;
        const ssize_t n = ::readlink(link.c_str(), target, sizeof target - 1);
        out += std::string(e->d_name) + " -> " + (n > 0 ? std::string(target, static_cast<std::size_t>(n)) : "?") + "\n";
    }
    ::closedir(d);
    return out;
}
inline int thread_count() { return count_entries("/proc/self/task"); }

/// sanitized: built with ASan or TSan, whose allocators keep freed memory (ASan's
/// quarantine holds up to 256 MiB of it by default): a bound on a process's RSS measures
/// them, not the server, and is checked only without them. The engine's own counts
/// (buffered_amount(), max_send_buffer) are checked either way.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
inline constexpr bool sanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
inline constexpr bool sanitized = true;
#else
inline constexpr bool sanitized = false;
#endif
#else
inline constexpr bool sanitized = false;
#endif

/// runtime_threads: threads a sanitizer's runtime adds to a process that starts one of its
/// own (TSan's background thread, started with the first pthread_create): bounds on a
/// server's thread count add it. CI's TSan run once counted 9 threads in an echo_server
/// whose bound is 8 (4 workers, the control thread, main, the watcher and the ticker).
#if defined(__SANITIZE_THREAD__)
inline constexpr int runtime_threads = 1;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
inline constexpr int runtime_threads = 1;
#else
inline constexpr int runtime_threads = 0;
#endif
#else
inline constexpr int runtime_threads = 0;
#endif

/// settled: count(), re-read for up to 2 s while it differs from expected: a joined
/// thread leaves /proc/self/task, and a run's descriptors close, a moment after what a
/// test can wait on (no event marks that last step). A real leak still fails (after 2 s).
inline int settled(int (*count)(), int expected) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    int n = count();
    while (n != expected && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
        n = count();
    }
    return n;
}

/// watchdog: aborts the process (Catch2 reports the running test) if a test case is
/// still running after limit, so a deadlock fails with a message instead of a CTest
/// timeout. Its thread exists for the whole test case, so it is part of every baseline.
class watchdog {
public:
    watchdog(const char* name, std::chrono::seconds limit)
        : thread_([this, name, limit] {
              std::unique_lock<std::mutex> lock(m_);
              if (!cv_.wait_for(lock, limit, [this] { return done_; })) {
                  std::fprintf(stderr, "watchdog: '%s' still running after %lld s (deadlock?)\n", name,
                               static_cast<long long>(limit.count()));
                  std::fflush(stderr);
                  std::abort();
              }
          }) {}
    ~watchdog() {
        {
            std::lock_guard<std::mutex> lock(m_);
            done_ = true;
        }
        cv_.notify_all();
        thread_.join();
    }
    watchdog(const watchdog&) = delete;
    watchdog& operator=(const watchdog&) = delete;

private:
    std::mutex m_;
    std::condition_variable cv_;
    bool done_ = false;
    std::thread thread_;  // last: starts once the members above exist
};

/// run_in_thread: calls srv.run() in a thread of its own. If the test fails early, the
/// destructor keeps requesting a stop until run() has returned, then joins.
class run_in_thread {
public:
    explicit run_in_thread(rs::server& s)
        : srv_(s), t_([this] {
              std::error_code e;
              srv_.run(e);
              {
                  std::lock_guard<std::mutex> lock(m_);
                  ec_ = e;
                  done_ = true;
              }
              cv_.notify_all();
          }) {}
    ~run_in_thread() {
        if (!t_.joinable()) return;
        while (!wait_done(std::chrono::milliseconds(0))) {  // failure path only
            srv_.request_stop();
            if (wait_done(std::chrono::milliseconds(50))) break;
        }
        t_.join();
    }
    run_in_thread(const run_in_thread&) = delete;
    run_in_thread& operator=(const run_in_thread&) = delete;

    /// wait_done: whether run() returned within timeout.
    bool wait_done(std::chrono::milliseconds timeout) {
        std::unique_lock<std::mutex> lock(m_);
        return cv_.wait_for(lock, timeout, [this] { return done_; });
    }
    /// join: joins the thread (run() must have returned) and gives run()'s error code.
    std::error_code join() {
        t_.join();
        return ec_;
    }
    pthread_t native_handle() { return t_.native_handle(); }

private:
    rs::server& srv_;
    std::mutex m_;
    std::condition_variable cv_;
    bool done_ = false;
    std::error_code ec_;
    std::thread t_;  // last: starts once the members above exist
};

/// files_in: the regular files in dir, sorted; empty when dir does not exist.
inline std::vector<std::string> files_in(const std::string& dir) {
    std::vector<std::string> out;
    DIR* d = ::opendir(dir.c_str());
    if (!d) return out;
    while (dirent* e = ::readdir(d)) {
        if (e->d_name[0] == '.') continue;
        std::string path = dir + "/" + e->d_name;
        struct stat st {};
        if (::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode)) out.push_back(path);
    }
    ::closedir(d);
    std::sort(out.begin(), out.end());
    return out;
}

/// read_file: the whole file's bytes.
inline std::string read_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

/// socket_timeout: sets which (SO_RCVTIMEO or SO_SNDTIMEO) on fd to t.
inline void socket_timeout(int fd, int which, std::chrono::milliseconds t) {
    timeval tv{};
    tv.tv_sec = static_cast<time_t>(t.count() / 1000);
    tv.tv_usec = static_cast<suseconds_t>((t.count() % 1000) * 1000);
    ::setsockopt(fd, SOL_SOCKET, which, &tv, sizeof tv);
}

/// connect_loopback: connects the TCP socket fd to 127.0.0.1:port and returns it; on
/// failure closes it and returns -1 (errno kept). -1 in: -1 out.
inline int connect_loopback(int fd, std::uint16_t port) {
    if (fd < 0) return -1;
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
        const int saved = errno;
        ::close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}

/// connect_to: a blocking TCP connection to 127.0.0.1:port with a receive timeout, so a
/// broken server fails the test instead of hanging it. Returns -1 on failure.
inline int connect_to(std::uint16_t port, std::chrono::milliseconds rcv_timeout = std::chrono::seconds(10)) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0) socket_timeout(fd, SO_RCVTIMEO, rcv_timeout);
    return connect_loopback(fd, port);
}

/// connect_small_rcvbuf: a blocking connection to 127.0.0.1:port whose receive buffer is
/// set to rcvbuf bytes before connect (so the window the server sees stays small, and a
/// client that never reads stops the server's writes early), with receive and send
/// timeouts of 5 s. -1 on failure.
inline int connect_small_rcvbuf(std::uint16_t port, int rcvbuf = 4096) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0) {
        ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
        socket_timeout(fd, SO_RCVTIMEO, std::chrono::seconds(5));
        socket_timeout(fd, SO_SNDTIMEO, std::chrono::seconds(5));
    }
    return connect_loopback(fd, port);
}

inline bool send_all(int fd, std::string_view data) {
    while (!data.empty()) {
        ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
        if (n <= 0) return false;
        data.remove_prefix(static_cast<std::size_t>(n));
    }
    return true;
}

/// http_response: one parsed response; status 0 when none could be read.
struct http_response {
    int status = 0;
    std::string head;  // status line and header fields, as received
    std::string body;
    std::string header(std::string_view name) const {
        std::string lower_head;
        for (char ch : head) lower_head += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
        std::string key = "\r\n";
        for (char ch : name) key += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
        key += ":";
        auto p = lower_head.find(key);
        if (p == std::string::npos) return {};
        p += key.size();
        auto e = head.find("\r\n", p);
        std::string v = head.substr(p, e - p);
        while (!v.empty() && v.front() == ' ') v.erase(0, 1);
        return v;
    }
};

/// reader: reads responses from one connection, keeping bytes read ahead.
struct reader {
    int fd;
    std::string buf;
    /// read_response: the next response (body framed by Content-Length; no body when
    /// head_only, as after HEAD). status 0 on EOF, error or timeout.
    http_response read_response(bool head_only = false) {
        http_response r;
        std::size_t end;
        while ((end = buf.find("\r\n\r\n")) == std::string::npos)
            if (!fill()) return r;
        r.head = buf.substr(0, end + 2);
        buf.erase(0, end + 4);
        if (r.head.size() < 12) return r;
        r.status = std::atoi(r.head.c_str() + 9);
        std::string cl = r.header("Content-Length");
        std::size_t len = (head_only || cl.empty()) ? 0 : std::stoul(cl);
        while (buf.size() < len)
            if (!fill()) { r.status = 0; return r; }
        r.body = buf.substr(0, len);
        buf.erase(0, len);
        return r;
    }
    /// at_eof: true when the peer closed the connection (after any buffered bytes).
    bool at_eof() {
        if (!buf.empty()) return false;
        char c;
        ssize_t n = ::recv(fd, &c, 1, 0);
        if (n == 1) { buf.push_back(c); return false; }
        return n == 0 || (n < 0 && errno == ECONNRESET);
    }
    bool fill() {
        char tmp[16384];
        ssize_t n = ::recv(fd, tmp, sizeof tmp, 0);
        if (n <= 0) return false;
        buf.append(tmp, static_cast<std::size_t>(n));
        return true;
    }
};

/// get: one request on a fresh connection to 127.0.0.1:port ("GET /path").
inline http_response request(std::uint16_t port, std::string_view raw) {
    int fd = connect_to(port);
    if (fd < 0) return {};
    http_response r;
    if (send_all(fd, raw)) {
        reader rd{fd, {}};
        r = rd.read_response(raw.substr(0, 5) == "HEAD ");
    }
    ::close(fd);
    return r;
}
inline http_response get(std::uint16_t port, const std::string& path) {
    return request(port, "GET " + path + " HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
}

/// free_options: options for a test server on 127.0.0.1, port 0.
inline rs::options local_options(std::size_t workers = 4) {
    rs::options o;
    o.listener = rs::tcp_listener("127.0.0.1", 0);
    o.worker_threads = workers;
    return o;
}


/// start: starts srv and returns its port; the test fails when it cannot start.
inline std::uint16_t start(rs::server& srv) {
    std::error_code ec;
    srv.start(ec);
    INFO("start: " << ec.message());
    REQUIRE(!ec);
    REQUIRE(srv.state() == rs::server_state::running);
    REQUIRE(srv.port() != 0);
    return srv.port();
}

/// client: one connection with a response reader; closed on destruction. Sends time out
/// after 10 s, so a stuck send fails the test instead of hanging it.
struct client {
    int fd;
    reader rd;
    explicit client(std::uint16_t port, std::chrono::milliseconds timeout = std::chrono::seconds(10))
        : fd(connect_to(port, timeout)), rd{fd, {}} {
        if (fd >= 0) {
            timeval tv{};
            tv.tv_sec = 10;
            ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        }
    }
    ~client() { close(); }
    client(const client&) = delete;
    client& operator=(const client&) = delete;
    bool ok() const { return fd >= 0; }
    bool send(std::string_view s) { return send_all(fd, s); }
    http_response read(bool head_only = false) { return rd.read_response(head_only); }
    /// closed: the server closed the connection and sent nothing more (waits up to the
    /// receive timeout).
    bool closed() { return rd.at_eof(); }
    void close() {
        if (fd >= 0) ::close(fd);
        fd = -1;
    }
    void nodelay() {
        int one = 1;
        ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    /// readable_within: whether any byte (or EOF) arrives within timeout, without consuming it.
    bool readable_within(std::chrono::milliseconds timeout) {
        if (!rd.buf.empty()) return true;
        pollfd p{fd, POLLIN, 0};
        return ::poll(&p, 1, static_cast<int>(timeout.count())) > 0;
    }
    /// read_line: the next CRLF-terminated line, without its CRLF.
    bool read_line(std::string& line) {
        std::size_t p;
        while ((p = rd.buf.find("\r\n")) == std::string::npos)
            if (!rd.fill()) return false;
        line = rd.buf.substr(0, p);
        rd.buf.erase(0, p + 2);
        return true;
    }
};

#if !defined(RESTARTABLE_SERVER_SPLIT) || defined(RESTARTABLE_SERVER_IMPLEMENTATION)
/// status_name: a parse_status as text, for failure messages (the tests that reach into
/// detail are compiled with the whole header: see tests/CMakeLists.txt).
inline std::string status_name(rs::detail::parse_status s) {
    switch (s) {
        case rs::detail::parse_status::complete: return "complete";
        case rs::detail::parse_status::partial: return "partial";
        case rs::detail::parse_status::error: return "error";
    }
    return "invalid parse_status " + std::to_string(static_cast<int>(s));
}
#endif

/// printable: s with control and non-ASCII bytes escaped, for failure messages.
inline std::string printable(std::string_view s, std::size_t max = 200) {
    static const char hex[] = "0123456789abcdef";
    std::string out;
    for (char ch : s.substr(0, max)) {
        auto c = static_cast<unsigned char>(ch);
        if (c == '\r') out += "\\r";
        else if (c == '\n') out += "\\n";
        else if (c == '\t') out += "\\t";
        else if (c < 0x20 || c >= 0x7f) {
            out += "\\x";
            out += hex[c >> 4];
            out += hex[c & 15];
        } else out += ch;
    }
    if (s.size() > max) out += "...(" + std::to_string(s.size()) + " bytes)";
    return out;
}


/// heap_buf: a copy of s in a heap block of exactly s.size() bytes, so that a parser that
/// reads past the end of its input trips AddressSanitizer.
struct heap_buf {
    std::unique_ptr<char[]> p;
    std::size_t n;
    explicit heap_buf(std::string_view s) : p(new char[s.size()]), n(s.size()) {
        if (n) std::memcpy(p.get(), s.data(), n);
    }
    std::string_view view() const { return {p.get(), n}; }
};

/// inside: whether the view sv lies within buf (an empty view anywhere in or at the end
/// of buf counts, as does an empty view with no data).
inline bool inside(std::string_view sv, std::string_view buf) {
    if (sv.empty()) return true;
    auto b = reinterpret_cast<std::uintptr_t>(buf.data());
    auto s = reinterpret_cast<std::uintptr_t>(sv.data());
    return s >= b && s + sv.size() <= b + buf.size();
}

}  // namespace test

#endif  // RESTARTABLE_SERVER_TESTS_SUPPORT_HPP
