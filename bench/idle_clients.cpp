// idle_clients.cpp - figure 3, idle capacity.
//
//   idle_clients PORT N SERVER_PID [OPEN_MS] [FRESH_TIMEOUT_MS] [SECOND_BUDGET_MS]
//
// 1. Opens N keep-alive connections to 127.0.0.1:PORT, each sending one GET /hello, and
//    waits up to OPEN_MS (default 10000) for the responses.
// 2. While they sit idle: the server's VmRSS and thread count (/proc/PID/status, /proc/PID/task).
// 3. A fresh client's request (connect + GET + whole response), 5 times or until one takes
//    longer than FRESH_TIMEOUT_MS (default 3000); the median.
//    Then one keep-alive client's requests per second, back to back for one second
//    (busy_rps): what a busy client gets while the N sit idle.
// 4. A second request on every idle connection that answered, one after the other (each
//    with a 1 s timeout, all within SECOND_BUDGET_MS, default 10000); p99 over all N
//    connections, counting one that never answered as a timeout.
// Prints "key value" lines; a timed-out figure is printed as "timeout:LIMIT_MS".
#include "client.hpp"

#include <dirent.h>

#include <thread>

using namespace bench;

static long count_threads(long pid) {
    std::string dir = "/proc/" + std::to_string(pid) + "/task";
    DIR* d = ::opendir(dir.c_str());
    if (!d) return -1;
    long n = 0;
    while (dirent* e = ::readdir(d))
        if (e->d_name[0] != '.') ++n;
    ::closedir(d);
    return n;
}

int main(int argc, char** argv) {
    if (argc < 4) {
        std::fprintf(stderr, "usage: idle_clients PORT N SERVER_PID [OPEN_MS] [FRESH_TIMEOUT_MS] [SECOND_BUDGET_MS]\n");
        return 2;
    }
    const auto port = static_cast<std::uint16_t>(std::atoi(argv[1]));
    std::size_t n = std::strtoul(argv[2], nullptr, 10);
    const long pid = std::atol(argv[3]);
    const double open_ms = argc > 4 ? std::atof(argv[4]) : 10000;
    const double fresh_timeout_ms = argc > 5 ? std::atof(argv[5]) : 3000;
    const double second_budget_ms = argc > 6 ? std::atof(argv[6]) : 10000;
    const double second_timeout_ms = 1000;

    rlim_t lim = raise_nofile();
    if (lim < n + 64) {
        std::fprintf(stderr, "idle_clients: RLIMIT_NOFILE %llu is too low for %zu connections\n",
                     static_cast<unsigned long long>(lim), n);
        return 1;
    }

    // 1. the idle connections
    auto t0 = clock::now();
    idle_set s = open_idle(port, n, t0 + std::chrono::milliseconds(static_cast<long long>(open_ms)));
    std::printf("opened %zu\nanswered %zu\nopen_ms %.1f\n", s.connected, s.n_answered, ms_since(t0));

    // 2. the server while they sit idle
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    std::printf("rss_kb %ld\nthreads %ld\n", proc_status_kb(pid, "VmRSS"), count_threads(pid));
    std::fflush(stdout);

    // 3. a fresh client
    std::vector<double> fresh;
    bool fresh_timeout = false;
    for (int i = 0; i < 5; ++i) {
        double ms = one_request(port, fresh_timeout_ms);
        if (ms < 0) {
            fresh_timeout = true;
            break;
        }
        fresh.push_back(ms);
    }
    if (fresh_timeout)
        std::printf("fresh_ms timeout:%.0f\n", fresh_timeout_ms);
    else
        std::printf("fresh_ms %.3f\n", percentile(fresh, 0.5));
    std::fflush(stdout);
    {
        const std::string req = get_request(true);
        const int fd = connect_to(port);
        std::size_t served = 0;
        const auto t = clock::now(), end = t + std::chrono::seconds(1);
        while (fd >= 0 && clock::now() < end) {
            response_parser p;
            const auto deadline = clock::now() + std::chrono::milliseconds(static_cast<long long>(fresh_timeout_ms));
            if (!send_all(fd, req.data(), req.size(), deadline) || !read_response(fd, p, deadline) || p.status != 200)
                break;
            ++served;
        }
        if (fd >= 0) ::close(fd);
        std::printf("busy_rps %.0f\n", static_cast<double>(served) * 1000.0 / ms_since(t));
        std::fflush(stdout);
    }
    // 4. a second request on every idle connection
    const std::string req = get_request(true);
    std::vector<double> lat;  // answered ones
    auto budget_end = clock::now() + std::chrono::milliseconds(static_cast<long long>(second_budget_ms));
    for (std::size_t i = 0; i < n; ++i) {
        if (!s.answered[i] || s.fds[i] < 0) continue;
        auto now = clock::now();
        if (now >= budget_end) break;
        auto deadline = std::min(budget_end, now + std::chrono::milliseconds(static_cast<long long>(second_timeout_ms)));
        response_parser p;
        auto t = clock::now();
        if (send_all(s.fds[i], req.data(), req.size(), deadline) && read_response(s.fds[i], p, deadline) &&
            p.status == 200)
            lat.push_back(ms_since(t));
    }
    std::printf("second_answered %zu\n", lat.size());
    std::vector<double> all = lat;
    all.resize(n, 1e300);  // never answered: a timeout
    double p99 = percentile(all, 0.99);
    if (p99 >= 1e299)
        std::printf("second_p99_ms timeout:%.0f\n", second_timeout_ms);
    else
        std::printf("second_p99_ms %.3f\n", p99);
    if (!lat.empty()) std::printf("second_p99_answered_ms %.3f\n", percentile(lat, 0.99));
    s.close_all();
    return 0;
}
