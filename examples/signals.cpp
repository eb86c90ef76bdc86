// signals.cpp - SIGTERM/SIGINT stop gracefully, SIGHUP restarts in-process, with no signal
// handler at all.
//
// The library never touches signals: what they mean is the program's choice. This is the
// simplest correct way to give them meaning. main() blocks SIGHUP, SIGINT and SIGTERM before
// any thread exists, so every thread the server starts inherits the mask and none of them is
// ever interrupted. The signals wait, pending, until main() takes them one at a time with
// sigwait(3) - an ordinary function call in an ordinary thread, so anything may follow it
// (printing, locking, stop(), restart()), with none of a signal handler's restrictions. A
// signal that comes while the server is starting is not lost either: it waits for sigwait.
// (Children inherit the blocked mask: a program that starts processes unblocks it in them,
// e.g. with posix_spawnattr_setsigmask.)
//
//   build:  g++ -std=c++17 -O2 -I. examples/signals.cpp -o signals -pthread
//           (or: cmake --build build --target signals)
//   run:    ./signals [--port 8080]          prints "listening on http://127.0.0.1:8080"
//   try:    curl http://127.0.0.1:8080/hello   -> "Hello from run 1"
//           kill -HUP <pid>                    -> prints "restarted 2"; curl again: "run 2".
//               A hand-over restart: the listening socket is handed to the new run, never
//               closed, so no client is refused; idle keep-alive connections move over.
//               Try it under load: `wrk -d10s http://127.0.0.1:8080/hello` while you send
//               SIGHUPs reports no socket errors.
//           kill -TERM <pid>, or Ctrl-C         -> prints "stopping", drains requests in
//               flight (up to 10 s), prints "stopped" and exits with status 0.
//
// Under systemd (examples/signals.service, Type=notify) notify_ready() tells systemd that
// the port is open; `systemctl reload` sends SIGHUP and `systemctl stop` SIGTERM.
// Exit status: 0 after SIGTERM/SIGINT, 1 when the server cannot start, 2 on bad arguments.

#include "restartable_server.hpp"

#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace rs = restartable_server;

int main(int argc, char** argv) {
    unsigned long port = 8080;
    char* end = nullptr;
    if (argc == 3 && std::string(argv[1]) == "--port") port = std::strtoul(argv[2], &end, 10);
    if ((argc != 1 && (argc != 3 || !end || *end != '\0')) || port > 65535) {
        std::fprintf(stderr, "usage: %s [--port 8080]\n", argv[0]);
        return 2;
    }

    // 1. Block the signals first: the server's threads, started below, inherit this mask.
    sigset_t signals;
    sigemptyset(&signals);
    for (int sig : {SIGHUP, SIGINT, SIGTERM}) sigaddset(&signals, sig);
    pthread_sigmask(SIG_BLOCK, &signals, nullptr);

    // 2. An ordinary server. The run counter shows which run answered.
    rs::options opts;
    opts.listener = rs::tcp_listener("127.0.0.1", static_cast<std::uint16_t>(port));
    opts.drain_timeout = std::chrono::seconds(10);  // keep below the unit's TimeoutStopSec
    rs::server srv(opts);
    std::atomic<int> run{1};
    srv.get("/hello", [&run](const rs::request&, rs::response& res) {
        res.set_content("Hello from run " + std::to_string(run.load()) + "\n", "text/plain");
    });

    std::error_code ec;
    srv.start(ec);  // returns once the port accepts connections
    if (ec) {
        std::fprintf(stderr, "cannot listen on port %lu: %s\n", port, ec.message().c_str());
        return 1;
    }
    std::printf("listening on http://127.0.0.1:%u\n", static_cast<unsigned>(srv.port()));
    std::fflush(stdout);
    rs::notify_ready();  // READY=1 to systemd; does nothing when NOTIFY_SOCKET is not set

    // 3. Take the signals, one at a time, in this thread.
    for (;;) {
        int sig = 0;
        if (sigwait(&signals, &sig) != 0) continue;  // cannot fail with a valid set
        if (sig != SIGHUP) break;                    // SIGINT or SIGTERM: stop
        srv.restart(ec);  // routes or options changed since the start would apply now
        if (ec)
            std::fprintf(stderr, "restart failed: %s\n", ec.message().c_str());
        else
            std::printf("restarted %d\n", run.fetch_add(1) + 1);
        std::fflush(stdout);
    }

    std::printf("stopping\n");
    std::fflush(stdout);
    rs::stop_result r = srv.stop();  // listener closed now; requests in flight finish
    std::printf("stopped (%zu connection(s) cut at the drain deadline)\n", r.cut);
    return 0;
}
