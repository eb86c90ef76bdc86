// Black-box test of examples/echo_server under systemd socket activation, driven by
// systemd-socket-activate(1) (Debian package systemd), which plays systemd's part: it
// listens on a unix socket, and at the first connection execs echo_server in its own
// process with the socket as fd 3 and LISTEN_FDS=1, LISTEN_PID=<that process>
// (sd_listen_fds(3)). A unix socket path in a fresh directory needs no free port.
//
// Checked: requests are served over the activated socket and echo_server says so on
// stdout; READY=1 reaches $NOTIFY_SOCKET (what Type=notify waits for); SIGHUP restarts
// the server in the same process on the same socket while clients keep sending, with
// nothing refused, unanswered, cut short or wrong; a SIGUSR2 upgrade hands the socket to
// a new process whose environment holds exactly one LISTEN_FDS=1 and one LISTEN_PID,
// its own; SIGTERM ends the process with status 0.
//
// Whether echo_server removes LISTEN_FDS/LISTEN_PID from its own environment (so a child
// it starts does not take them for its own) is not visible from outside:
// /proc/PID/environ shows the environment the process started with, not what unsetenv(3)
// made of it. The upgrade check is the observable part: the one child echo_server starts
// must see its own values, once each.

#include "process.hpp"

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
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
using test::exited_0;

const char* const activate_tool = "/usr/bin/systemd-socket-activate";

/// temp_dir: a fresh directory under /tmp, removed (with the files named in it) at the end.
struct temp_dir {
    std::string path;
    temp_dir() {
        char t[] = "/tmp/rs_activate_XXXXXX";
        if (::mkdtemp(t)) path = t;
    }
    ~temp_dir() {
        for (const char* name : {"/http.sock", "/notify.sock"}) ::unlink((path + name).c_str());
        ::rmdir(path.c_str());
    }
};

/// activated: systemd-socket-activate, which becomes echo_server, in a new process group
/// (which a process it upgrades to inherits), stdout and stderr on pipes (out, err). The
/// destructor kills (SIGKILL) and reaps the group; with the test a subreaper, that
/// includes orphans. pid() is the process, which after the exec is echo_server's.
struct activated : test::process {
    activated(const std::string& socket_path, const std::vector<std::string>& extra_env)
        : test::process(arguments(socket_path, extra_env), options()) {}

    static std::vector<std::string> arguments(const std::string& socket_path,
                                              const std::vector<std::string>& extra_env) {
        std::vector<std::string> args = {activate_tool, "-l", socket_path, "-E", "RS_MARK=activation-test"};
        for (const std::string& e : extra_env) {
            args.push_back("-E");
            args.push_back(e);
        }
        for (const char* a : {RS_ECHO_SERVER, "--workers", "4", "--drain-ms", "3000"}) args.push_back(a);
        return args;
    }
    static test::spawn_options options() {
        test::spawn_options opt;
        opt.err = test::stream::pipe;
        opt.new_group = true;
        // The tool logs "Listening on ..." to stderr only when its log target is the
        // console; under a systemd that collects stderr it would pick the journal.
        opt.env = {"SYSTEMD_LOG_TARGET=console"};
        return opt;
    }
};

// ----------------------------------------------------------- unix clients --

/// connect_unix: a blocking connection to the unix socket at path, with 10 s send and
/// receive timeouts; -1 on failure (errno set).
int connect_unix(const std::string& path) {
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    timeval tv{10, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::snprintf(a.sun_path, sizeof a.sun_path, "%s", path.c_str());
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
        int saved = errno;
        ::close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}

/// get_unix: GET path on a fresh connection to the unix socket; status 0 on failure.
test::http_response get_unix(const std::string& socket_path, const std::string& path) {
    rs::unique_fd fd(connect_unix(socket_path));
    if (!fd) return {};
    if (!test::send_all(fd.get(), "GET " + path + " HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"))
        return {};
    test::reader rd{fd.get(), {}};
    return rd.read_response();
}

pid_t pid_serving(const std::string& socket_path) {
    test::http_response r = get_unix(socket_path, "/pid");
    return r.status == 200 ? static_cast<pid_t>(std::strtol(r.body.c_str(), nullptr, 10)) : 0;
}

/// unix_client: a thread sending GET /hello over and over to the unix socket, on a new
/// connection each time or on one kept alive. Counts:
///   ok          200 "Hello, World!"
///   refused     connect() failed: nobody listening on the socket
///   reuse_race  a kept-alive connection closed before any byte of a response
///   bad         anything else: no response on a new connection, a partial or wrong one
class unix_client {
public:
    unix_client(std::string path, bool keep_alive)
        : path_(std::move(path)), keep_alive_(keep_alive), thread_([this] { run(); }) {}
    unix_client(const unix_client&) = delete;
    unix_client& operator=(const unix_client&) = delete;
    ~unix_client() { stop(); }
    void stop() {
        stop_.store(true);
        if (thread_.joinable()) thread_.join();
    }
    bool wait_for_ok(long n, std::chrono::milliseconds timeout) {
        std::unique_lock<std::mutex> lock(m_);
        return cv_.wait_for(lock, timeout, [&] { return ok_ >= n; });
    }
    long ok() const { std::lock_guard<std::mutex> l(m_); return ok_; }
    std::string summary() const {
        std::lock_guard<std::mutex> l(m_);
        return std::string(keep_alive_ ? "kept-alive" : "new connections") + ": ok " + std::to_string(ok_) +
               ", refused " + std::to_string(refused_) + ", reuse races " + std::to_string(reuse_races_) +
               ", bad " + std::to_string(bad_) + (first_bad_.empty() ? "" : " (first: " + first_bad_ + ")");
    }
    long refused() const { std::lock_guard<std::mutex> l(m_); return refused_; }
    long reuse_races() const { std::lock_guard<std::mutex> l(m_); return reuse_races_; }
    long bad() const { std::lock_guard<std::mutex> l(m_); return bad_; }

private:
    void run() {
        const std::string req = keep_alive_ ? "GET /hello HTTP/1.1\r\nHost: localhost\r\n\r\n"
                                            : "GET /hello HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
        rs::unique_fd fd;
        test::reader rd{-1, {}};
        long answered = 0;  // on the current connection
        while (!stop_.load()) {
            if (!fd) {
                fd.reset(connect_unix(path_));
                if (!fd) {
                    count(refused_, std::string("connect: ") + std::strerror(errno));
                    continue;
                }
                rd = test::reader{fd.get(), {}};
                answered = 0;
            }
            errno = 0;
            test::http_response r;
            const bool sent = test::send_all(fd.get(), req);
            if (sent) r = rd.read_response();
            const bool nothing = r.status == 0 && r.head.empty() && rd.buf.empty();
            const bool timed_out = errno == EAGAIN || errno == EWOULDBLOCK;
            if (r.status == 200 && r.body == "Hello, World!") {
                ++answered;
                count(ok_, "");
                if (!keep_alive_ || r.header("Connection") == "close") fd.reset();
            } else if (nothing && !timed_out && answered > 0) {
                count(reuse_races_, "");
                fd.reset();
            } else {
                count(bad_, !sent ? "send failed" : timed_out ? "timed out" : nothing ? "no response" :
                                    "status " + std::to_string(r.status) + ": " + test::printable(r.head + r.body));
                fd.reset();
            }
        }
    }
    void count(long& counter, const std::string& failure) {
        {
            std::lock_guard<std::mutex> l(m_);
            ++counter;
            if (!failure.empty() && first_bad_.empty()) first_bad_ = failure;
        }
        cv_.notify_all();
    }

    const std::string path_;
    const bool keep_alive_;
    mutable std::mutex m_;
    std::condition_variable cv_;
    long ok_ = 0, refused_ = 0, reuse_races_ = 0, bad_ = 0;
    std::string first_bad_;
    std::atomic<bool> stop_{false};
    std::thread thread_;  // last: starts once everything above is built
};

/// notify_socket: a unix datagram socket standing in for systemd's $NOTIFY_SOCKET.
struct notify_socket {
    rs::unique_fd fd;
    explicit notify_socket(const std::string& path) {
        fd.reset(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
        sockaddr_un a{};
        a.sun_family = AF_UNIX;
        std::snprintf(a.sun_path, sizeof a.sun_path, "%s", path.c_str());
        if (fd && ::bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) fd.reset();
    }
    /// wait_for: reads datagrams until one holds the line `line`; false if none in time.
    bool wait_for(const std::string& line, std::chrono::milliseconds timeout, std::string& seen) {
        const auto deadline = steady::now() + timeout;
        while (fd && test::wait_readable(fd.get(), deadline)) {
            char buf[4096];
            ssize_t n = ::recv(fd.get(), buf, sizeof buf, 0);
            if (n < 0) return false;
            std::string msg(buf, static_cast<std::size_t>(n));
            seen += msg + "|";
            if (("\n" + msg + "\n").find("\n" + line + "\n") != std::string::npos) return true;
        }
        return false;
    }
};

/// environment_of: /proc/PID/environ as NAME -> every value given to NAME.
std::map<std::string, std::vector<std::string>> environment_of(pid_t pid) {
    std::map<std::string, std::vector<std::string>> env;
    std::string all = test::read_file("/proc/" + std::to_string(pid) + "/environ");
    std::size_t start = 0;
    while (start < all.size()) {
        std::size_t end = all.find('\0', start);
        if (end == std::string::npos) end = all.size();
        std::string entry = all.substr(start, end - start);
        std::size_t eq = entry.find('=');
        if (eq != std::string::npos) env[entry.substr(0, eq)].push_back(entry.substr(eq + 1));
        start = end + 1;
    }
    return env;
}

/// first_request: the first GET /hello, which makes the tool exec echo_server; then
/// echo_server's first line must name the socket.
void first_request(activated& proc, const std::string& socket_path) {
    std::string seen;
    std::optional<std::string> ready = proc.err.line_starting("Listening on ", 10s, seen);
    INFO(activate_tool << " stderr:\n" << seen);
    REQUIRE(ready);

    test::http_response r = get_unix(socket_path, "/hello");
    std::optional<std::string> line = proc.out.read_line(10s);
    CHECK(line.value_or("(none)") == "listening on unix:" + socket_path);
    REQUIRE(r.status == 200);
    CHECK(r.body == "Hello, World!");
    CHECK(pid_serving(socket_path) == proc.pid());  // the tool exec'd: same process
}

}  // namespace

TEST_CASE("socket activation: served on the inherited socket, SIGHUP restarts in place, SIGTERM exits 0",
          "[activation]") {
    if (::access(activate_tool, X_OK) != 0) RS_SKIP("systemd-socket-activate is not installed (package systemd)");
    test::watchdog dog("socket activation and SIGHUP", std::chrono::seconds(120));
    temp_dir dir;
    REQUIRE(!dir.path.empty());
    const std::string socket_path = dir.path + "/http.sock";
    notify_socket notify(dir.path + "/notify.sock");
    REQUIRE(notify.fd);

    activated proc(socket_path, {"NOTIFY_SOCKET=" + dir.path + "/notify.sock"});
    REQUIRE(proc.pid() > 0);
    first_request(proc, socket_path);
    {
        std::string seen;
        const bool ready = notify.wait_for("READY=1", 10s, seen);
        INFO("datagrams on $NOTIFY_SOCKET: " << seen);
        CHECK(ready);  // what a Type=notify unit waits for
    }

    unix_client fresh(socket_path, false);
    unix_client kept(socket_path, true);
    REQUIRE(fresh.wait_for_ok(20, 10s));
    REQUIRE(kept.wait_for_ok(20, 10s));

    for (int n = 1; n <= 3; ++n) {
        INFO("restart " << n);
        REQUIRE(::kill(proc.pid(), SIGHUP) == 0);
        std::string seen;
        std::optional<std::string> line = proc.out.line_starting("restarted ", 10s, seen);
        INFO("stdout after SIGHUP:\n" << seen);
        CHECK(line.value_or("(none)") == "restarted " + std::to_string(n));
        CHECK(pid_serving(socket_path) == proc.pid());  // same process, same socket
        CHECK(fresh.wait_for_ok(fresh.ok() + 20, 10s));
        CHECK(kept.wait_for_ok(kept.ok() + 20, 10s));
    }
    fresh.stop();
    kept.stop();
    std::printf("test_socket_activation: 3 restarts; %s; %s\n", fresh.summary().c_str(), kept.summary().c_str());
    std::fflush(stdout);
    for (unix_client* c : {&fresh, &kept}) {
        INFO(c->summary());
        CHECK(c->refused() == 0);
        CHECK(c->bad() == 0);
        // A hand-over restart moves idle kept-alive connections to the next run instead of
        // closing them, so not even a reuse race is expected.
        CHECK(c->reuse_races() == 0);
    }

    REQUIRE(::kill(proc.pid(), SIGTERM) == 0);
    std::optional<int> st = proc.wait_exit(proc.pid(), 10s);
    INFO("echo_server after SIGTERM: " << describe_status(st));
    CHECK(exited_0(st));
    CHECK(proc.out.at_eof_within(5s));
}

TEST_CASE("socket activation: a SIGUSR2 upgrade hands the socket to a process with its own LISTEN_PID",
          "[activation][upgrade]") {
    if (::access(activate_tool, X_OK) != 0) RS_SKIP("systemd-socket-activate is not installed (package systemd)");
    test::watchdog dog("socket activation and SIGUSR2", std::chrono::seconds(120));
    // The new process is echo_server's child; when echo_server exits it is re-parented
    // to this process, which can then reap it.
    REQUIRE(::prctl(PR_SET_CHILD_SUBREAPER, 1) == 0);
    temp_dir dir;
    REQUIRE(!dir.path.empty());
    const std::string socket_path = dir.path + "/http.sock";

    activated proc(socket_path, {});
    REQUIRE(proc.pid() > 0);
    first_request(proc, socket_path);

    REQUIRE(::kill(proc.pid(), SIGUSR2) == 0);
    std::string seen;
    std::optional<std::string> line = proc.out.line_starting("upgraded to pid ", 15s, seen);
    INFO("stdout after SIGUSR2:\n" << seen);
    if (!line) FAIL("no 'upgraded to pid N' line; echo_server: " << describe_status(proc.wait_exit(proc.pid(), 1s)));
    const auto next = static_cast<pid_t>(std::strtol(line->c_str() + 16, nullptr, 10));
    REQUIRE(next > 0);
    CHECK(next != proc.pid());
    CHECK(seen.find("listening on unix:" + socket_path + "\n") != std::string::npos);  // the new one's line

    // Read before anything else can happen to the new process.
    std::map<std::string, std::vector<std::string>> env = environment_of(next);
    std::optional<int> st = proc.wait_exit(proc.pid(), 15s);
    INFO("old echo_server after the upgrade: " << describe_status(st));
    CHECK(exited_0(st));
    CHECK(pid_serving(socket_path) == next);

    using values = std::vector<std::string>;
    CHECK(env["LISTEN_FDS"] == values{"1"});
    CHECK(env["LISTEN_PID"] == values{std::to_string(next)});
    CHECK(env["RS_MARK"] == values{"activation-test"});  // the rest of the environment passes on
    for (const auto& entry : env) {
        INFO("variable " << entry.first);
        CHECK(entry.second.size() == 1);  // no variable twice
    }

    REQUIRE(::kill(next, SIGTERM) == 0);
    st = proc.wait_exit(next, 10s);
    INFO("new echo_server after SIGTERM: " << describe_status(st));
    CHECK(exited_0(st));
    CHECK(proc.out.at_eof_within(5s));
}

// ------------------------------------------------- LISTEN_FDNAMES, in-process --

namespace {

/// bound_port: the local port of a TCP socket, 0 on failure.
std::uint16_t bound_port(int fd) {
    sockaddr_in a{};
    socklen_t len = sizeof a;
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) return 0;
    return ntohs(a.sin_port);
}

/// pick_by_name: in the calling process (a fork of the test), puts listening sockets at
/// descriptors 3 and 4 (copies of high and high + 1), says so in LISTEN_FDS, LISTEN_PID
/// and LISTEN_FDNAMES=names, calls systemd_listener(name) and describes what it chose:
/// "fd:N port P" (P the port of the socket the factory hands out), or "error: ...".
/// LISTEN_PID says pid (another process's: the sockets are not for this one).
std::string pick_by_name(int high, const std::string& names, const std::string& name, pid_t pid = ::getpid()) {
    if (::dup2(high, 3) != 3 || ::dup2(high + 1, 4) != 4) return "dup2 failed";
    ::setenv("LISTEN_FDS", "2", 1);
    ::setenv("LISTEN_PID", std::to_string(pid).c_str(), 1);
    ::setenv("LISTEN_FDNAMES", names.c_str(), 1);
    std::string out;
    {
        const rs::listener_factory f = rs::systemd_listener(name);
        std::error_code ec;
        rs::unique_fd fd = f(ec);
        out = ec ? "error: " + ec.message() : f.address() + " port " + std::to_string(bound_port(fd.get()));
        if (::getenv("LISTEN_FDS") || ::getenv("LISTEN_PID") || ::getenv("LISTEN_FDNAMES")) out += " (env left)";
    }  // the factory closes the descriptor it chose
    ::close(3);
    ::close(4);
    return out;
}

}  // namespace

TEST_CASE("socket activation: systemd_listener(name) picks the socket LISTEN_FDNAMES names",
          "[socket-activation]") {
    // Descriptors 3 and 4 of the test process are not ours to replace: a child does it.
    // It reports one line per case on a pipe and exits 0.
    int p[2];
    REQUIRE(::pipe(p) == 0);
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        ::close(p[0]);
        const int out = 102;  // the pipe may be at 3 or 4: out of the way too
        if (::dup2(p[1], out) != out) ::_exit(2);
        if (p[1] != out) ::close(p[1]);
        std::error_code ec1, ec2;
        rs::unique_fd first = rs::tcp_listener("127.0.0.1", 0)(ec1);
        rs::unique_fd second = rs::tcp_listener("127.0.0.1", 0)(ec2);
        // Out of the way of 3 and 4, side by side (whatever the fork has at 100 and 101
        // is the parent's, not needed here).
        const int high = 100;
        std::string report;
        if (ec1 || ec2 || ::dup2(first.get(), high) != high || ::dup2(second.get(), high + 1) != high + 1) {
            report = "setup failed\n";
        } else {
            first.reset();
            second.reset();
            const std::string p3 = std::to_string(bound_port(high)), p4 = std::to_string(bound_port(high + 1));
            report += "ports " + p3 + " " + p4 + "\n";
            report += "second|" + pick_by_name(high, "first:second", "second") + "\n";
            report += "first|" + pick_by_name(high, "first:second", "first") + "\n";
            report += "any|" + pick_by_name(high, "first:second", "") + "\n";
            report += "absent|" + pick_by_name(high, "first:second", "third") + "\n";
            report += "prefix|" + pick_by_name(high, "first:second", "sec") + "\n";
            report += "empty-first|" + pick_by_name(high, ":second", "second") + "\n";
            report += "other-pid|" + pick_by_name(high, "first:second", "second", ::getppid()) + "\n";
        }
        (void)!::write(out, report.data(), report.size());
        ::_exit(0);
    }
    ::close(p[1]);
    std::string report;
    char buf[512];
    for (ssize_t n; (n = ::read(p[0], buf, sizeof buf)) != 0;) {
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) break;
        report.append(buf, static_cast<std::size_t>(n));
    }
    ::close(p[0]);
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    INFO("child's report:\n" << report);
    REQUIRE((WIFEXITED(status) && WEXITSTATUS(status) == 0));
    std::map<std::string, std::string> got;
    std::string p3, p4;
    std::size_t pos = 0;
    while (pos < report.size()) {
        const std::size_t end = report.find('\n', pos);
        const std::string line = report.substr(pos, end - pos);
        pos = end == std::string::npos ? report.size() : end + 1;
        if (line.rfind("ports ", 0) == 0) {
            const std::size_t space = line.find(' ', 6);
            p3 = line.substr(6, space - 6);
            p4 = line.substr(space + 1);
        } else if (line.find('|') != std::string::npos) {
            got[line.substr(0, line.find('|'))] = line.substr(line.find('|') + 1);
        }
    }
    REQUIRE(!p3.empty());
    REQUIRE(p3 != p4);
    CHECK(got["second"] == "fd:4 port " + p4);  // "first:second", asked for "second"
    CHECK(got["first"] == "fd:3 port " + p3);
    CHECK(got["any"] == "fd:3 port " + p3);  // "" takes the first
    const std::string not_activated = "error: " + rs::make_error_code(rs::errc::not_activated).message();
    CHECK(got["absent"] == not_activated);
    CHECK(got["prefix"] == not_activated);  // names match whole, not by prefix
    CHECK(got["empty-first"] == "fd:4 port " + p4);
    // LISTEN_PID names another process: not ours, whatever the names say (and the
    // variables are left for the process they are for).
    CHECK(got["other-pid"] == not_activated + " (env left)");
}

namespace {

/// adopt_stale: in the calling process (a fork of the test), puts what make() opens at
/// descriptor 3 (make returns -1 to leave 3 closed), sets LISTEN_FDS=1 and LISTEN_PID to
/// this process, calls systemd_listener(), asks the factory for a socket and destroys it,
/// and describes what happened: "fd:3" or "error: ...", then what became of descriptor 3:
/// "closed", or "open" with " cloexec" if the flag appeared, and the first byte read from it
/// if it is the pipe the caller wrote "x" to.
std::string adopt_stale(const std::function<int()>& make) {
    ::close(3);
    const int fd = make();
    if (fd >= 0 && fd != 3) {
        if (::dup2(fd, 3) != 3) return "dup2 failed";
        ::close(fd);
    }
    ::setenv("LISTEN_FDS", "1", 1);
    ::setenv("LISTEN_PID", std::to_string(::getpid()).c_str(), 1);
    ::unsetenv("LISTEN_FDNAMES");
    std::string out;
    {
        const rs::listener_factory f = rs::systemd_listener();
        std::error_code ec;
        rs::unique_fd sock = f(ec);
        out = ec ? "error: " + ec.message() : f.address();
    }  // the factory is gone: whatever it owned is closed
    const int flags = ::fcntl(3, F_GETFD);
    if (flags < 0) return out + "|closed";
    out += "|open";
    if ((flags & FD_CLOEXEC) != 0) out += " cloexec";
    struct stat st {};
    char c = 0;
    if (::fstat(3, &st) == 0 && S_ISFIFO(st.st_mode) && ::read(3, &c, 1) == 1) out += std::string(" read ") + c;
    ::close(3);
    return out;
}

}  // namespace

TEST_CASE("socket activation: a stale LISTEN_FDS is refused with what is wrong, and descriptor 3 left alone",
          "[socket-activation]") {
    test::watchdog dog("stale LISTEN_FDS", std::chrono::seconds(120));
    int p[2];
    REQUIRE(::pipe(p) == 0);
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        ::close(p[0]);
        const int out = 102;
        if (::dup2(p[1], out) != out) ::_exit(2);
        if (p[1] != out) ::close(p[1]);
        ::alarm(60);  // a child that hangs ends (SIGALRM) and the parent sees its status
        std::string report;
        report += "closed|" + adopt_stale([] { return -1; }) + "\n";
        report += "pipe|" + adopt_stale([] {  // the program's own descriptor, e.g. a pipe it reads
            int q[2];
            if (::pipe(q) != 0 || ::write(q[1], "x", 1) != 1) return -1;
            ::close(q[1]);
            return q[0];
        }) + "\n";
        report += "udp|" + adopt_stale([] { return ::socket(AF_INET, SOCK_DGRAM, 0); }) + "\n";
        report += "tcp|" + adopt_stale([] { return ::socket(AF_INET, SOCK_STREAM, 0); }) + "\n";  // not listening
        report += "listening|" + adopt_stale([] {
            std::error_code ec;
            return rs::tcp_listener("127.0.0.1", 0)(ec).release();
        }) + "\n";
        (void)!::write(out, report.data(), report.size());
        ::_exit(0);
    }
    ::close(p[1]);
    std::string report;
    char buf[1024];
    for (ssize_t n; (n = ::read(p[0], buf, sizeof buf)) != 0;) {
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) break;
        report.append(buf, static_cast<std::size_t>(n));
    }
    ::close(p[0]);
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    INFO("child's report:\n" << report);
    REQUIRE((WIFEXITED(status) && WEXITSTATUS(status) == 0));
    std::map<std::string, std::string> got;
    std::size_t pos = 0;
    while (pos < report.size()) {
        const std::size_t end = report.find('\n', pos);
        const std::string line = report.substr(pos, end - pos);
        pos = end == std::string::npos ? report.size() : end + 1;
        if (line.find('|') != std::string::npos) got[line.substr(0, line.find('|'))] = line.substr(line.find('|') + 1);
    }
    const auto error = [](rs::errc e) { return "error: " + rs::make_error_code(e).message(); };
    CHECK(got["closed"] == error(rs::errc::activated_not_open) + "|closed");
    CHECK(got["pipe"] == error(rs::errc::activated_not_socket) + "|open read x");  // not closed, not marked
    CHECK(got["udp"] == error(rs::errc::activated_not_listening) + "|open");
    CHECK(got["tcp"] == error(rs::errc::activated_not_listening) + "|open");
    CHECK(got["listening"] == "fd:3|closed");  // adopted: ours, so closed with the factory
    // The messages say what is wrong.
    CHECK(rs::make_error_code(rs::errc::activated_not_open).message().find("not open") != std::string::npos);
    CHECK(rs::make_error_code(rs::errc::activated_not_socket).message().find("not a socket") != std::string::npos);
    CHECK(rs::make_error_code(rs::errc::activated_not_listening).message().find("not listening") != std::string::npos);
}

TEST_CASE("socket activation: echo_server says what is wrong with a stale LISTEN_FDS", "[socket-activation]") {
    const auto expect = [](const std::string& shell, const std::vector<std::pair<int, int>>& fds, rs::errc e) {
        INFO(shell);
        test::spawn_options opt;
        opt.out = test::stream::null;
        opt.err = test::stream::pipe;
        opt.fds = fds;
        // The shell exports its own pid and then execs: echo_server has that pid.
        test::process p({"/bin/sh", "-c", shell + " export LISTEN_PID=$$ LISTEN_FDS=1; exec \"$0\" --workers 2",
                         RS_ECHO_SERVER},
                        opt);
        REQUIRE(p.started());
        const std::optional<std::string> err = p.err.read_all(std::chrono::seconds(60));
        REQUIRE(err);
        INFO("stderr: " << *err);
        const std::optional<int> st = p.wait_exit(std::chrono::seconds(60));
        CHECK((st && WIFEXITED(*st) && WEXITSTATUS(*st) == 1));
        CHECK(err->find(rs::make_error_code(e).message()) != std::string::npos);
        CHECK(err->find("LISTEN_FDS") != std::string::npos);
    };
    expect("exec 3<&-;", {}, rs::errc::activated_not_open);
    int q[2];
    REQUIRE(::pipe2(q, O_CLOEXEC) == 0);
    expect("", {{q[0], 3}}, rs::errc::activated_not_socket);
    ::close(q[0]);
    ::close(q[1]);
    const int udp = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    REQUIRE(udp >= 0);
    expect("", {{udp, 3}}, rs::errc::activated_not_listening);
    ::close(udp);
}
