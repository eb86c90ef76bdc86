// lifecycle.cpp - figures 4 (stop latency) and 5 (restart rate), in-process, through each
// library's own API. Built twice: as is for restartable_server, with -DBENCH_HTTPLIB for
// cpp-httplib (listen_after_bind in a thread, stop(), then join that thread).
//
//   lifecycle stop N [ANSWER_MS]
//       start; open N keep-alive connections that each make one GET /hello (waiting up to
//       ANSWER_MS, default 2000, for the answers); then time stop() until it returns (for
//       cpp-httplib: stop() plus joining the listening thread, since its stop() does not
//       wait). Prints "stop_ms X" and "answered K".
//   lifecycle restart plain|held SECONDS
//       cycles of start -> one GET /hello -> stop on one server object (the same port every
//       cycle) for at least SECONDS (and at least one cycle). plain: the client sends
//       "Connection: close" and waits for the server to close. held: a keep-alive client
//       keeps its connection open through the stop and reconnects after the restart.
//       Prints "cycles_per_s X" and "cycles K".
#include "client.hpp"

#include <csignal>
#include <thread>

#ifdef BENCH_HTTPLIB
#include "httplib.h"
#else
#include "restartable_server.hpp"
#endif

using namespace bench;

namespace {

#ifdef BENCH_HTTPLIB
template <class S>
auto wait_ready(S& s, int) -> decltype(s.wait_until_ready(), void()) {  // cpp-httplib >= 0.12
    s.wait_until_ready();
}
template <class S>
void wait_ready(S& s, long) {
    while (!s.is_running()) std::this_thread::sleep_for(std::chrono::microseconds(20));
}

struct server_under_test {
    httplib::Server svr;
    std::thread thread;
    int port = 0;
    server_under_test() {
        svr.Get("/hello", [](const httplib::Request&, httplib::Response& res) {
            res.set_content("Hello, World!", "text/plain");
        });
    }
    bool start() {
        if (port == 0) {
            port = svr.bind_to_any_port("127.0.0.1");
            if (port <= 0) return false;
        } else if (!svr.bind_to_port("127.0.0.1", port)) {
            return false;
        }
        thread = std::thread([this] { svr.listen_after_bind(); });
        wait_ready(svr, 0);
        return true;
    }
    void stop() {
        svr.stop();
        thread.join();
    }
};
#else
namespace rs = restartable_server;
struct server_under_test {
    rs::server srv;
    int port = 0;
    server_under_test() {
        srv.get("/hello", [](const rs::request&, rs::response& res) {
            res.set_content("Hello, World!", "text/plain");
        });
    }
    bool start() {
        srv.set_listener(rs::tcp_listener("127.0.0.1", static_cast<std::uint16_t>(port)));
        std::error_code ec;
        srv.start(ec);
        if (ec) return false;
        port = srv.port();
        return true;
    }
    void stop() { srv.stop(); }
};
#endif

int stop_latency(std::size_t n, long answer_ms) {
    server_under_test s;
    if (!s.start()) return 1;
    idle_set idle = open_idle(static_cast<std::uint16_t>(s.port), n,
                              clock::now() + std::chrono::milliseconds(answer_ms));
    auto t0 = clock::now();
    s.stop();
    double ms = ms_since(t0);
    idle.close_all();
    std::printf("stop_ms %.3f\nanswered %zu\nconnected %zu\n", ms, idle.n_answered, idle.connected);
    return 0;
}

int restart_rate(bool held, double seconds) {
    server_under_test s;
    const std::string req = get_request(/*keep_alive=*/held);
    long cycles = 0;
    auto t0 = clock::now();
    do {
        if (!s.start()) {
            std::fprintf(stderr, "lifecycle: start failed at cycle %ld\n", cycles);
            return 1;
        }
        auto deadline = clock::now() + std::chrono::seconds(10);
        int fd = connect_to(static_cast<std::uint16_t>(s.port));
        response_parser p;
        if (fd < 0 || !send_all(fd, req.data(), req.size(), deadline) || !read_response(fd, p, deadline) ||
            p.status != 200) {
            std::fprintf(stderr, "lifecycle: request failed at cycle %ld\n", cycles);
            return 1;
        }
        if (!held) wait_eof(fd, deadline);  // the server closes: no TIME_WAIT on our side
        if (!held) ::close(fd);
        s.stop();
        if (held) ::close(fd);
        ++cycles;
    } while (ms_since(t0) < seconds * 1000);
    double s_elapsed = ms_since(t0) / 1000;
    std::printf("cycles_per_s %.1f\ncycles %ld\n", static_cast<double>(cycles) / s_elapsed, cycles);
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    std::signal(SIGPIPE, SIG_IGN);
    raise_nofile();
    ::alarm(120);  // a hung stop must not hang the suite: SIGALRM ends the process
    std::string cmd = argc > 1 ? argv[1] : "";
    if (cmd == "stop" && argc > 2)
        return stop_latency(std::strtoul(argv[2], nullptr, 10), argc > 3 ? std::atol(argv[3]) : 2000);
    if (cmd == "restart" && argc > 3 && (std::string(argv[2]) == "plain" || std::string(argv[2]) == "held"))
        return restart_rate(std::string(argv[2]) == "held", std::atof(argv[3]));
    std::fprintf(stderr, "usage: lifecycle stop N [ANSWER_MS] | lifecycle restart plain|held SECONDS\n");
    return 2;
}
