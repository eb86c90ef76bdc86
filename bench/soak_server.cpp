// soak_server.cpp - the server of `bench/run.sh --soak`: a restartable_server that
// restarts itself at a fixed interval for as long as it runs.
//
//   soak_server [PORT] [INTERVAL_MS]
//
// Listens on 127.0.0.1:PORT (default 0: a free port) with default options and serves
// GET /hello -> 200 "Hello, World!". Prints "port N" once serving, then "restarted N" after
// each restart() (every INTERVAL_MS, default 1000) and "restart failed: WHY" when one
// fails; every line is flushed at once, so a script can follow. SIGTERM or SIGINT: a
// graceful stop, then "restarts N errors M" and exit status 0 (1 if a restart failed).
#include "restartable_server.hpp"

#include <pthread.h>
#include <signal.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <ctime>

namespace rs = restartable_server;

int main(int argc, char** argv) {
    const int port = argc > 1 ? std::atoi(argv[1]) : 0;
    const long interval_ms = argc > 2 ? std::atol(argv[2]) : 1000;
    // Blocked before any server thread exists, so every thread inherits the mask and the
    // signals wait for sigtimedwait() below, which is also the restart timer.
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGTERM);
    sigaddset(&stop_signals, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

    rs::server srv;
    srv.set_listener(rs::tcp_listener("127.0.0.1", static_cast<std::uint16_t>(port)));
    srv.get("/hello", [](const rs::request&, rs::response& res) { res.set_content("Hello, World!", "text/plain"); });
    std::error_code ec;
    srv.start(ec);
    if (ec) {
        std::fprintf(stderr, "soak_server: %s\n", ec.message().c_str());
        return 1;
    }
    std::printf("port %u\n", static_cast<unsigned>(srv.port()));
    std::fflush(stdout);

    long restarts = 0, errors = 0;
    const timespec interval{interval_ms / 1000, (interval_ms % 1000) * 1000000L};
    for (;;) {
        const int sig = sigtimedwait(&stop_signals, nullptr, &interval);
        if (sig == SIGTERM || sig == SIGINT) break;
        if (sig < 0 && errno != EAGAIN) continue;  // EINTR: wait again
        srv.restart(ec);  // the interval passed
        if (ec) {
            ++errors;
            std::printf("restart failed: %s\n", ec.message().c_str());
        } else {
            std::printf("restarted %ld\n", ++restarts);
        }
        std::fflush(stdout);
    }
    srv.stop();
    std::printf("restarts %ld errors %ld\n", restarts, errors);
    return errors == 0 ? 0 : 1;
}
