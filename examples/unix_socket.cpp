// unix_socket.cpp - serve HTTP on a Unix-domain socket instead of a TCP port.
//
// A Unix socket is a file: only processes on this machine can reach it, no port is taken,
// and who may connect is decided by file permissions (the socket's mode and its
// directory's), not by a firewall. Docker's API and many local agents work this way.
// Nothing else changes: the same routes, the same HTTP, the same stop and restart.
//
//   build:  g++ -std=c++17 -O2 -I. examples/unix_socket.cpp -o unix_socket -pthread
//   run:    ./unix_socket [/tmp/unix_socket_example.sock]
//           prints "listening on unix:/tmp/unix_socket_example.sock"
//   try:    curl --unix-socket /tmp/unix_socket_example.sock http://localhost/hello
//           curl --unix-socket /tmp/unix_socket_example.sock -d 'some text' http://localhost/echo
//           (the host in the URL is only the Host header: any name will do)
//           Ctrl-C or kill -TERM <pid>: a graceful stop; the socket file is removed; exit 0.
//
// The library leaves the socket file behind after a stop (the next start replaces a stale
// one), so a program that is done with it removes it, as below. Signals are taken with
// sigwait in main; examples/signals.cpp explains why.

#include "restartable_server.hpp"

#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <string>

namespace rs = restartable_server;

int main(int argc, char** argv) {
    const std::string path = argc > 1 ? argv[1] : "/tmp/unix_socket_example.sock";

    sigset_t signals;  // taken by sigwait below; blocked before any server thread exists
    sigemptyset(&signals);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &signals, nullptr);

    rs::server srv;
    srv.set_listener(rs::unix_listener(path));  // the one line that differs from TCP
    srv.get("/hello", [](const rs::request&, rs::response& res) {
        res.set_content("Hello over a Unix socket\n", "text/plain");
    });
    srv.post("/echo", [](const rs::request& req, rs::response& res) {
        res.set_content(req.body, "text/plain");
    });

    std::error_code ec;
    srv.start(ec);  // EADDRINUSE when another server accepts on path; path_too_long past ~107 bytes
    if (ec) {
        std::fprintf(stderr, "cannot listen on %s: %s\n", path.c_str(), ec.message().c_str());
        return 1;
    }
    std::printf("listening on unix:%s\n", path.c_str());
    std::fflush(stdout);

    int sig = 0;
    sigwait(&signals, &sig);
    srv.stop();             // graceful: requests in flight finish first
    ::unlink(path.c_str());  // the file is ours: nobody accepts on it any more
    std::printf("stopped\n");
    return 0;
}
