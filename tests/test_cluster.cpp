// Runs examples/cluster/rolling_restart.sh: three echo_server backends behind nginx, wrk
// against nginx, and every backend restarted in turn while the load runs - once with
// SIGHUP (a hand-over restart in the same process), once with SIGUSR2 (a binary upgrade
// to a new process). Each run lasts a few seconds. The script decides pass or fail (no
// non-2xx response, no socket error, every restart done under load); this test checks its
// exit status, reads its summary line, and makes sure it left no process behind.
//
// The upgraded backends are not the script's children once their parent has exited;
// the test makes itself a child subreaper (prctl(2), PR_SET_CHILD_SUBREAPER), so they are
// re-parented to it rather than to init, and any the script failed to stop is found here.

#include "support.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#ifndef RS_ECHO_SERVER
#error "RS_ECHO_SERVER (the path of the built echo_server) must be defined"
#endif
#ifndef RS_SOURCE_DIR
#error "RS_SOURCE_DIR (the repository) must be defined"
#endif

extern char** environ;

namespace {

namespace rs = restartable_server;
using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

const std::string script = std::string(RS_SOURCE_DIR) + "/examples/cluster/rolling_restart.sh";

/// search_path: the directories the script will search for nginx and wrk: $PATH, plus the
/// sbin directories where Debian puts nginx and which a user's PATH may lack.
std::string search_path() {
    const char* p = std::getenv("PATH");
    return std::string(p ? p : "/usr/local/bin:/usr/bin:/bin") + ":/usr/local/sbin:/usr/sbin:/sbin";
}

/// find_tool: whether name is an executable in one of the directories of search_path().
bool find_tool(const std::string& name) {
    std::istringstream dirs(search_path());
    std::string dir;
    while (std::getline(dirs, dir, ':'))
        if (!dir.empty() && ::access((dir + "/" + name).c_str(), X_OK) == 0) return true;
    return false;
}

std::string describe_status(std::optional<int> st) {
    if (!st) return "did not finish in time";
    if (WIFEXITED(*st)) return "exit " + std::to_string(WEXITSTATUS(*st));
    if (WIFSIGNALED(*st)) return "signal " + std::to_string(WTERMSIG(*st));
    return "status " + std::to_string(*st);
}

struct script_result {
    std::optional<int> status;  // nullopt: killed after the time limit
    std::string output;         // stdout and stderr, interleaved
};

/// run_script: runs args in a process group of its own, its stdout and stderr on one
/// pipe, until the pipe reaches EOF; kills the group (SIGKILL) after limit.
script_result run_script(const std::vector<std::string>& args, std::chrono::seconds limit) {
    script_result r;
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) return r;
    rs::unique_fd out(p[0]), w(p[1]);

    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, w.get(), STDOUT_FILENO);
    posix_spawn_file_actions_adddup2(&fa, w.get(), STDERR_FILENO);
    posix_spawnattr_t at;
    posix_spawnattr_init(&at);
    sigset_t none, dflt;
    sigemptyset(&none);
    sigemptyset(&dflt);
    for (int sig : {SIGHUP, SIGINT, SIGTERM, SIGUSR2, SIGPIPE}) sigaddset(&dflt, sig);
    posix_spawnattr_setsigmask(&at, &none);
    posix_spawnattr_setsigdefault(&at, &dflt);
    posix_spawnattr_setpgroup(&at, 0);
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP);

    std::vector<std::string> env_strings = {"PATH=" + search_path()};
    for (char** e = environ; *e; ++e)
        if (std::strncmp(*e, "PATH=", 5) != 0) env_strings.push_back(*e);
    std::vector<char*> envp, argv;
    for (std::string& s : env_strings) envp.push_back(&s[0]);
    envp.push_back(nullptr);
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    pid_t pid = -1;
    const int spawned = ::posix_spawn(&pid, argv[0], &fa, &at, argv.data(), envp.data());
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&at);
    w.reset();  // the script's processes hold the only write ends: EOF when all are gone
    if (spawned != 0) return r;

    // Read until EOF or the deadline. The backends' stdout goes to files, not this pipe,
    // so EOF comes when the script and its nginx and wrk are gone.
    const auto deadline = steady::now() + limit;
    bool eof = false;
    while (!eof) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - steady::now()).count();
        pollfd pfd{out.get(), POLLIN, 0};
        int n = left > 0 ? ::poll(&pfd, 1, static_cast<int>(left)) : 0;
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        char buf[4096];
        ssize_t got = ::read(out.get(), buf, sizeof buf);
        if (got <= 0) eof = true;
        else r.output.append(buf, static_cast<std::size_t>(got));
    }
    if (!eof) ::kill(-pid, SIGKILL);
    int st = 0;
    if (::waitpid(pid, &st, 0) == pid && eof) r.status = st;
    return r;
}

/// parent_of: the parent pid in /proc/PID/stat, or -1 (the process is gone).
pid_t parent_of(pid_t pid) {
    std::string stat = test::read_file("/proc/" + std::to_string(pid) + "/stat");
    std::size_t close = stat.rfind(')');  // the command name may contain anything
    if (close == std::string::npos) return -1;
    std::istringstream rest(stat.substr(close + 1));
    std::string state;
    pid_t ppid = -1;
    rest >> state >> ppid;
    return ppid;
}

/// reap_leftovers: reaps every exited child; then kills (SIGKILL) and reaps every child
/// still running - processes the script left behind - and returns their command lines.
std::vector<std::string> reap_leftovers() {
    while (::waitpid(-1, nullptr, WNOHANG) > 0) {
    }
    std::vector<std::string> left;
    std::vector<pid_t> pids;
    if (DIR* d = ::opendir("/proc")) {
        while (dirent* e = ::readdir(d)) {
            pid_t pid = static_cast<pid_t>(std::atoi(e->d_name));
            if (pid > 0 && parent_of(pid) == ::getpid()) pids.push_back(pid);
        }
        ::closedir(d);
    }
    for (pid_t pid : pids) {
        std::string cmd = test::read_file("/proc/" + std::to_string(pid) + "/cmdline");
        for (char& c : cmd)
            if (c == '\0') c = ' ';
        left.push_back(std::to_string(pid) + ": " + cmd);
        ::kill(pid, SIGKILL);
        ::waitpid(pid, nullptr, 0);
    }
    return left;
}

/// summary_of: the fields of the "summary: key=value ..." line, empty when there is none.
std::map<std::string, std::string> summary_of(const std::string& output) {
    std::map<std::string, std::string> fields;
    std::istringstream lines(output);
    std::string line;
    while (std::getline(lines, line)) {
        if (line.rfind("summary: ", 0) != 0) continue;
        std::istringstream words(line.substr(9));
        std::string word;
        while (words >> word) {
            std::size_t eq = word.find('=');
            if (eq != std::string::npos) fields[word.substr(0, eq)] = word.substr(eq + 1);
        }
    }
    return fields;
}

long number(const std::map<std::string, std::string>& fields, const std::string& key) {
    auto it = fields.find(key);
    return it == fields.end() ? -1 : std::strtol(it->second.c_str(), nullptr, 10);
}

/// rolling_restart: one run of the script in mode; checks its verdict and its summary.
void rolling_restart(const std::string& mode) {
    // An upgrade starts a process and waits for it (~0.1 s; 0.5-1 s each under ASan on a
    // loaded machine, when 6 of them outran a 6 s wrk run): its run is long enough for 4x that.
    // A restart takes ~0.15 s with its checks, but 0.2-1.2 s each on a machine loaded with
    // ctest -j2 and compilers (5 of 6 fitted in a 6 s run once): 12 s.
    const std::string duration = mode == "upgrade" ? "20" : "12";
    const std::vector<std::string> args = {"/bin/bash", script, "--mode", mode, "--duration", duration,
                                           "--restarts", "6", "--echo-server", RS_ECHO_SERVER};
    script_result r = run_script(args, 60s);
    const std::vector<std::string> leftovers = reap_leftovers();

    std::map<std::string, std::string> fields = summary_of(r.output);
    std::printf("test_cluster: %s: %s\n", mode.c_str(),
                fields.empty() ? "no summary line" : r.output.substr(r.output.find("summary: ")).c_str());
    std::fflush(stdout);

    INFO("rolling_restart.sh --mode " << mode << ": " << describe_status(r.status) << "\n" << r.output);
    std::string left;
    for (const std::string& p : leftovers) left += "\n  " + p;
    INFO("processes left running (killed now):" << (left.empty() ? " none" : left));
    CHECK(leftovers.empty());
    REQUIRE(r.status);
    CHECK(WIFEXITED(*r.status));
    CHECK(WEXITSTATUS(*r.status) == 0);
    CHECK(r.output.find("\nresult: PASS\n") != std::string::npos);
    REQUIRE(!fields.empty());
    CHECK(fields["mode"] == mode);
    CHECK(number(fields, "restarts") == 6);
    CHECK(number(fields, "requests") > 0);
    CHECK(number(fields, "non2xx") == 0);
    CHECK(number(fields, "socket_errors") == 0);
    CHECK(number(fields, "log_other") == 0);
    CHECK(number(fields, "log_2xx") > 0);
    CHECK(number(fields, "upstream_retries") == 0);  // upgrade too: its idle connections move
}

}  // namespace

TEST_CASE("cluster: rolling restarts of three backends behind nginx under wrk load", "[cluster]") {
    for (const char* tool : {"nginx", "wrk"})
        if (!find_tool(tool)) RS_SKIP(tool << " is not installed: the rolling restart behind nginx is not tested");
    test::watchdog dog("rolling restarts behind nginx", std::chrono::seconds(180));
    REQUIRE(::prctl(PR_SET_CHILD_SUBREAPER, 1) == 0);

    SECTION("SIGHUP: hand-over restarts") { rolling_restart("restart"); }
    SECTION("SIGUSR2: binary upgrades") { rolling_restart("upgrade"); }
}
