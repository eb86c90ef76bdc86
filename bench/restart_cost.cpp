// restart_cost.cpp - figure 12: how long one restart() call takes, and that idle keep-alive
// connections survive it.
//
//   restart_cost IDLE REPEATS [ANSWER_MS]
//
// Starts a restartable_server (default options, GET /hello) on 127.0.0.1:0, opens IDLE
// keep-alive connections that each make one GET /hello (waiting up to ANSWER_MS, default
// 5000, for the answers), then calls restart() REPEATS times, timing each call; after each,
// one fresh GET /hello (fresh_failed counts those not answered), which also keeps restarts
// from piling up on a run still handing over. Then a second GET /hello on every idle connection that had
// answered, one after the other (each given 2 s): a connection that does not answer it was
// lost by a restart.
// Prints "key value" lines: restart_us_p50 and restart_us_max (µs), restart_errors,
// fresh_failed, idle_opened, idle_answered, idle_lost, and idle_not_served (IDLE minus the
// connections that answered both requests: the figure). Exit status 1 when the server does
// not start, a restart fails or a fresh request after one is not answered; 2 on bad usage.
#include "client.hpp"
#include "restartable_server.hpp"

#include <signal.h>

using namespace bench;
namespace rs = restartable_server;

namespace {

/// count_lost: a GET /hello on each idle connection that answered before; how many got no 200.
std::size_t count_lost(idle_set& idle) {
    const std::string req = get_request(true);
    std::size_t lost = 0;
    for (std::size_t i = 0; i < idle.fds.size(); ++i) {
        if (!idle.answered[i]) continue;
        const auto deadline = clock::now() + std::chrono::seconds(2);
        response_parser p;
        if (!send_all(idle.fds[i], req.data(), req.size(), deadline) || !read_response(idle.fds[i], p, deadline) ||
            p.status != 200)
            ++lost;
    }
    return lost;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 3) {
        std::fprintf(stderr, "usage: restart_cost IDLE REPEATS [ANSWER_MS]\n");
        return 2;
    }
    ::signal(SIGPIPE, SIG_IGN);
    raise_nofile();
    ::alarm(300);  // a hung restart must not hang the suite: SIGALRM ends the process
    const std::size_t n_idle = std::strtoul(argv[1], nullptr, 10);
    const long repeats = std::atol(argv[2]);
    const long answer_ms = argc > 3 ? std::atol(argv[3]) : 5000;

    rs::server srv;
    srv.get("/hello", [](const rs::request&, rs::response& res) { res.set_content("Hello, World!", "text/plain"); });
    srv.set_listener(rs::tcp_listener("127.0.0.1", 0));
    std::error_code ec;
    srv.start(ec);
    if (ec) {
        std::fprintf(stderr, "restart_cost: start: %s\n", ec.message().c_str());
        return 1;
    }
    const std::uint16_t port = srv.port();
    idle_set idle = open_idle(port, n_idle, clock::now() + std::chrono::milliseconds(answer_ms));

    std::vector<double> us;
    long errors = 0, fresh_failed = 0;
    for (long i = 0; i < repeats; ++i) {
        const auto t0 = clock::now();
        srv.restart(ec);
        us.push_back(ms_since(t0) * 1000);
        if (ec) {
            std::fprintf(stderr, "restart_cost: restart: %s\n", ec.message().c_str());
            ++errors;
        }
        if (one_request(port, 5000) < 0) ++fresh_failed;
    }
    const std::size_t lost = count_lost(idle);
    idle.close_all();
    srv.stop();
    std::printf("restart_us_p50 %.0f\nrestart_us_max %.0f\nrestart_errors %ld\nfresh_failed %ld\n", percentile(us, 0.5),
                us.empty() ? -1.0 : *std::max_element(us.begin(), us.end()), errors, fresh_failed);
    std::printf("idle_opened %zu\nidle_answered %zu\nidle_lost %zu\nidle_not_served %zu\n", idle.connected,
                idle.n_answered, lost, n_idle - idle.n_answered + lost);
    return errors == 0 && fresh_failed == 0 ? 0 : 1;
}
