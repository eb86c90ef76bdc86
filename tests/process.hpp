// Test support: a child process for the black-box tests (echo_server, the examples,
// systemd-socket-activate, Chromium). It is started with posix_spawnp, its stdout (and
// stderr, when asked) on a pipe read line by line, its stdin (when asked) on a socket.
// Every wait is bounded: poll(2) on the pipe or on a pidfd, never a sleep. The destructor
// kills (SIGKILL) and reaps whatever is still there, so a failing REQUIRE leaves no
// process and no zombie behind.
#ifndef RESTARTABLE_SERVER_TESTS_PROCESS_HPP
#define RESTARTABLE_SERVER_TESTS_PROCESS_HPP

#include "support.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

extern char** environ;

namespace test {

using steady = std::chrono::steady_clock;

/// ms_until: milliseconds left until deadline, 0 when it has passed (a poll(2) timeout).
inline int ms_until(steady::time_point deadline) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - steady::now()).count();
    return left <= 0 ? 0 : static_cast<int>(left);
}

/// wait_readable: polls fd until it is readable (or at EOF, or a pidfd's process exited)
/// or deadline passes; retries on EINTR. true when readable.
inline bool wait_readable(int fd, steady::time_point deadline) {
    for (;;) {
        pollfd p{fd, POLLIN, 0};
        int n = ::poll(&p, 1, ms_until(deadline));
        if (n > 0) return true;
        if (n == 0 || errno != EINTR) return false;
    }
}

/// describe_status: a wait status as "exit N", "signal N", or "still running" when there
/// is none, for failure messages.
inline std::string describe_status(const std::optional<int>& st) {
    if (!st) return "still running";
    if (WIFEXITED(*st)) return "exit " + std::to_string(WEXITSTATUS(*st));
    if (WIFSIGNALED(*st)) return "signal " + std::to_string(WTERMSIG(*st));
    return "status " + std::to_string(*st);
}

/// exited_0: the wait status says the process exited with status 0.
inline bool exited_0(const std::optional<int>& st) { return st && WIFEXITED(*st) && WEXITSTATUS(*st) == 0; }

/// listening_port: the port in a line "listening on SCHEME://HOST:PORT" (what echo_server
/// and the examples print first), or 0 when the line is missing or says something else.
inline std::uint16_t listening_port(const std::optional<std::string>& line, const std::string& host = "127.0.0.1",
                                    const std::string& scheme = "http") {
    const std::string prefix = "listening on " + scheme + "://" + host + ":";
    if (!line || line->compare(0, prefix.size(), prefix) != 0) return 0;
    const std::string digits = line->substr(prefix.size());
    if (digits.empty() || digits.size() > 5 || digits.find_first_not_of("0123456789") != std::string::npos)
        return 0;
    unsigned long p = std::stoul(digits);
    return p <= 65535 ? static_cast<std::uint16_t>(p) : 0;
}

/// line_pipe: the read end of a pipe (a child's stdout or stderr), read line by line.
class line_pipe {
public:
    line_pipe() = default;
    explicit line_pipe(int fd) : fd_(fd) {}

    /// read_line: the next line without its '\n'; nullopt on EOF or when none comes
    /// within timeout.
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

    /// line_starting: skips lines until one starts with prefix; nullopt if none comes in
    /// time. Every line read is appended to seen (with its '\n'), for messages.
    std::optional<std::string> line_starting(const std::string& prefix, std::chrono::milliseconds timeout,
                                             std::string& seen) {
        const auto deadline = steady::now() + timeout;
        while (std::optional<std::string> line = read_line(std::chrono::milliseconds(ms_until(deadline)))) {
            seen += *line + "\n";
            if (line->compare(0, prefix.size(), prefix) == 0) return line;
        }
        return std::nullopt;
    }

    /// read_all: the rest, up to EOF; nullopt when EOF does not come within timeout.
    std::optional<std::string> read_all(std::chrono::milliseconds timeout) {
        const auto deadline = steady::now() + timeout;
        while (fill(deadline)) {
        }
        if (!eof_) return std::nullopt;
        return std::exchange(buf_, {});
    }

    /// at_eof_within: whether EOF (every writer gone) comes within timeout; whatever is
    /// still written before it is discarded.
    bool at_eof_within(std::chrono::milliseconds timeout) {
        const auto deadline = steady::now() + timeout;
        while (fill(deadline)) buf_.clear();
        return eof_;
    }

private:
    bool fill(steady::time_point deadline) {
        if (eof_ || !fd_ || !wait_readable(fd_.get(), deadline)) return false;
        char tmp[4096];
        ssize_t n;
        do n = ::read(fd_.get(), tmp, sizeof tmp);
        while (n < 0 && errno == EINTR);
        if (n <= 0) {
            eof_ = true;
            return false;
        }
        buf_.append(tmp, static_cast<std::size_t>(n));
        return true;
    }

    rs::unique_fd fd_;
    std::string buf_;
    bool eof_ = false;
};

/// stream: what a child's stdin, stdout or stderr is connected to.
///   inherit  ours (the test's)
///   pipe     ours to use: stdout/stderr on a pipe (process::out, process::err); stdin on a
///            socket (process::write), so a write after the child died fails with EPIPE
///            instead of raising SIGPIPE in the test
///   null     /dev/null
enum class stream { inherit, pipe, null };

/// spawn_options: how process starts its child; the defaults suit a server under test.
struct spawn_options {
    stream in = stream::inherit;
    stream out = stream::pipe;
    stream err = stream::inherit;
    /// env: "NAME=value" entries added to our environment, each replacing an inherited NAME.
    std::vector<std::string> env;
    /// fds: more descriptors of ours given to the child, {ours, its number}.
    std::vector<std::pair<int, int>> fds;
    /// new_group: the child leads a new process group, which the processes it starts
    /// inherit; the destructor then kills and reaps the whole group.
    bool new_group = false;
};

/// process: a child started with posix_spawnp (args[0] a path, or a name looked up in
/// PATH), signals unblocked and at their default actions as a shell would leave them.
/// Descriptors are created O_CLOEXEC, so no other child inherits them. See the top of the
/// file for the waits and the clean-up.
class process {
public:
    line_pipe out, err;  // the child's stdout and stderr when spawn_options says pipe

    explicit process(const std::vector<std::string>& args, const spawn_options& opt = {}) : group_(opt.new_group) {
        rs::unique_fd in_theirs, out_theirs, err_theirs;
        if (!make_stdin(opt.in, in_theirs) || !make_pipe(opt.out, out, out_theirs) ||
            !make_pipe(opt.err, err, err_theirs))
            return;

        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        give(fa, opt.in, in_theirs, STDIN_FILENO, O_RDONLY);
        give(fa, opt.out, out_theirs, STDOUT_FILENO, O_WRONLY);
        give(fa, opt.err, err_theirs, STDERR_FILENO, O_WRONLY);
        for (auto [ours, its] : opt.fds) posix_spawn_file_actions_adddup2(&fa, ours, its);

        posix_spawnattr_t at;
        posix_spawnattr_init(&at);
        sigset_t none, dflt;
        sigemptyset(&none);
        sigemptyset(&dflt);
        for (int sig : {SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2, SIGPIPE}) sigaddset(&dflt, sig);
        posix_spawnattr_setsigmask(&at, &none);
        posix_spawnattr_setsigdefault(&at, &dflt);
        short flags = POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF;
        if (group_) {
            posix_spawnattr_setpgroup(&at, 0);  // a new group, numbered by the child's pid
            flags |= POSIX_SPAWN_SETPGROUP;
        }
        posix_spawnattr_setflags(&at, flags);

        std::vector<std::string> env = environment(opt.env);
        std::vector<char*> argv, envp;
        for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
        for (std::string& e : env) envp.push_back(e.data());
        argv.push_back(nullptr);
        envp.push_back(nullptr);
        pid_t pid = -1;
        if (!args.empty() && ::posix_spawnp(&pid, argv[0], &fa, &at, argv.data(), envp.data()) == 0) {
            pid_ = pid;
            live_.insert(pid);
        }
        posix_spawn_file_actions_destroy(&fa);
        posix_spawnattr_destroy(&at);
        // Our copies of the child's ends close here: EOF on out/err once it (and whatever
        // inherited them) is gone.
    }
    process(const process&) = delete;
    process& operator=(const process&) = delete;
    ~process() {
        if (pid_ <= 0) return;
        if (group_) ::kill(-pid_, SIGKILL);
        for (pid_t pid : live_) ::kill(pid, SIGKILL);  // also those that left the group
        if (group_) {
            // Reap the group; a member whose parent died meanwhile is re-parented to us
            // when we are a subreaper (prctl PR_SET_CHILD_SUBREAPER).
            while (::waitpid(-pid_, nullptr, 0) > 0 || errno == EINTR) {
            }
        }
        for (pid_t pid : live_)
            while (::waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
            }
    }

    bool started() const { return pid_ > 0; }
    /// pid: the child's (and with new_group, its group's) process id; -1 when not started.
    pid_t pid() const { return pid_; }

    /// signal: sends sig to the child; false once it has been reaped.
    bool signal(int sig) const { return live_.count(pid_) != 0 && ::kill(pid_, sig) == 0; }

    /// write: text to the child's stdin (spawn_options::in = pipe).
    bool write(std::string_view text) { return in_ && send_all(in_.get(), text); }

    /// read_line, read_all: out.read_line, out.read_all.
    std::optional<std::string> read_line(std::chrono::milliseconds timeout) { return out.read_line(timeout); }
    std::optional<std::string> read_all(std::chrono::milliseconds timeout) { return out.read_all(timeout); }

    /// adopt: a process the child started (as in a binary upgrade) that the destructor must
    /// kill and reap too, even outside the group. Needs us to be a subreaper.
    void adopt(pid_t pid) { live_.insert(pid); }

    /// wait_exit: the wait status once the child (or pid: an adopted process, or any the
    /// test has become the parent of) has exited; nullopt when it has not within timeout,
    /// or is not our child. Polls a pidfd: no sleep, no SIGCHLD handler.
    std::optional<int> wait_exit(std::chrono::milliseconds timeout) { return wait_exit(pid_, timeout); }
    std::optional<int> wait_exit(pid_t pid, std::chrono::milliseconds timeout) {
        if (pid <= 0) return std::nullopt;
        auto known = statuses_.find(pid);
        if (known != statuses_.end()) return known->second;
        rs::unique_fd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
        if (!pidfd || !wait_readable(pidfd.get(), steady::now() + timeout)) return std::nullopt;
        int st = 0;
        pid_t r;
        do r = ::waitpid(pid, &st, 0);
        while (r < 0 && errno == EINTR);
        if (r != pid) return std::nullopt;
        live_.erase(pid);
        statuses_[pid] = st;
        return st;
    }

private:
    /// make_pipe: for stream::pipe, a pipe whose read end goes to reader, write end to theirs.
    static bool make_pipe(stream s, line_pipe& reader, rs::unique_fd& theirs) {
        if (s != stream::pipe) return true;
        int p[2];
        if (::pipe2(p, O_CLOEXEC) != 0) return false;
        reader = line_pipe(p[0]);
        theirs.reset(p[1]);
        return true;
    }
    /// make_stdin: for stream::pipe, a socket pair: one end ours (write), one the child's.
    bool make_stdin(stream s, rs::unique_fd& theirs) {
        if (s != stream::pipe) return true;
        int sv[2];
        if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return false;
        in_.reset(sv[0]);
        theirs.reset(sv[1]);
        return true;
    }
    /// give: the file action that connects the child's descriptor target as s says.
    static void give(posix_spawn_file_actions_t& fa, stream s, const rs::unique_fd& theirs, int target, int mode) {
        if (s == stream::pipe) posix_spawn_file_actions_adddup2(&fa, theirs.get(), target);
        if (s == stream::null) posix_spawn_file_actions_addopen(&fa, target, "/dev/null", mode, 0);
    }
    /// environment: ours, with each of extra ("NAME=value") added or replacing NAME.
    static std::vector<std::string> environment(const std::vector<std::string>& extra) {
        std::vector<std::string> env = extra;
        for (char** e = environ; *e; ++e) {
            const std::string var = *e;
            bool replaced = false;
            for (const std::string& x : extra) {
                const std::size_t eq = x.find('=');
                replaced = replaced || (eq != std::string::npos && var.compare(0, eq + 1, x, 0, eq + 1) == 0);
            }
            if (!replaced) env.push_back(var);
        }
        return env;
    }

    const bool group_;
    pid_t pid_ = -1;
    std::set<pid_t> live_;             // started or adopted, not yet reaped
    std::map<pid_t, int> statuses_;    // reaped: their wait status
    rs::unique_fd in_;                 // our end of the child's stdin (stream::pipe)
};

}  // namespace test

namespace test {

/// command_result: the output and wait status of a finished command.
struct command_result {
    std::optional<int> status;  // nullopt: it did not finish in time
    std::string out;
    std::string err;  // only when asked for; at most a pipe buffer (64 KiB)
};

/// run_command: runs args (args[0] a path, or a name in PATH; no shell) to completion
/// within timeout: its stdout, its wait status, and its stderr when asked.
inline command_result run_command(const std::vector<std::string>& args,
                                  std::chrono::milliseconds timeout = std::chrono::seconds(20),
                                  bool capture_stderr = false) {
    const auto deadline = steady::now() + timeout;
    spawn_options opt;
    if (capture_stderr) opt.err = stream::pipe;
    process c(args, opt);
    command_result r;
    if (!c.started()) return r;
    std::optional<std::string> out = c.read_all(timeout);
    r.out = out.value_or("");
    if (out) r.status = c.wait_exit(std::chrono::milliseconds(ms_until(deadline) + 1));
    if (r.status && capture_stderr)  // it has exited: what it wrote to stderr is in the pipe
        r.err = c.err.read_all(std::chrono::milliseconds(ms_until(deadline) + 1)).value_or("");
    return r;
}

}  // namespace test

#endif  // RESTARTABLE_SERVER_TESTS_PROCESS_HPP
