// restart.cpp - the plan from the article that started this project, made to work:
//
//     srv := NewServer()
//     srv.Start(); srv.Stop(); srv.Start(); srv.Stop(); srv.Start()
//
// With Go's net/http that fails: "Once Shutdown has been called on a server, it may not be
// reused". Here it is ONE server object, started and stopped three times, and after each
// start a real HTTP request is made to prove it serves. Each start() asks the listener
// factory for a fresh socket, so nothing from the previous run is reused.
//
// Exit status: 0 when every request got "200 Hello, World!", 1 otherwise.

#include "restartable_server.hpp"

#include <cstdio>
#include <string>

namespace rs = restartable_server;

namespace {

// get_hello: a tiny HTTP client. Connects to 127.0.0.1:port, sends GET /hello, reads the
// whole response (the server closes the connection because we ask it to) and returns it,
// or "" when anything fails.
std::string get_hello(std::uint16_t port) {
    rs::unique_fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd) return {};

    timeval five_seconds{5, 0};  // never hang the example on a broken server
    ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &five_seconds, sizeof five_seconds);

    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) return {};

    const std::string req = "GET /hello HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    if (::send(fd.get(), req.data(), req.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(req.size()))
        return {};

    std::string reply;
    char buf[4096];
    ssize_t n;
    while ((n = ::recv(fd.get(), buf, sizeof buf, 0)) > 0) reply.append(buf, static_cast<std::size_t>(n));
    return n == 0 ? reply : std::string{};  // n < 0: an error or the timeout
}

// check: makes one request and prints what came back. true when it was the right answer.
bool check(rs::server& srv, int round) {
    std::string reply = get_hello(srv.port());
    bool ok = reply.rfind("HTTP/1.1 200 ", 0) == 0 &&
              reply.size() >= 13 && reply.compare(reply.size() - 13, 13, "Hello, World!") == 0;
    std::string status_line = reply.substr(0, reply.find("\r\n"));
    std::printf("run %d on port %u: GET /hello -> %s%s\n", round, static_cast<unsigned>(srv.port()),
                status_line.empty() ? "(no response)" : status_line.c_str(),
                ok ? ", \"Hello, World!\"" : "  FAILED");
    return ok;
}

}  // namespace

int main() {
    // One server object for the whole program.
    rs::server srv;
    srv.get("/hello", [](const rs::request&, rs::response& res) {
        res.set_content("Hello, World!", "text/plain");
    });
    // Port 0: the system picks a free port at each start; srv.port() reports it.
    srv.set_listener(rs::tcp_listener("127.0.0.1", 0));

    bool all_ok = true;
    std::error_code ec;

    // start(); stop(); start(); stop(); start(); ... and a final stop().
    for (int round = 1; round <= 3; ++round) {
        srv.start(ec);  // returns once the listener accepts connections
        if (ec) {
            std::fprintf(stderr, "start failed: %s\n", ec.message().c_str());
            return 1;
        }
        all_ok = check(srv, round) && all_ok;

        // stop() is graceful and returns once every thread and socket of the run is gone.
        // Afterwards the very same object can be started again.
        rs::stop_result r = srv.stop();
        std::printf("run %d stopped (state: %s, drained: %s)\n", round,
                    std::string(rs::to_string(srv.state())).c_str(), r.drained ? "yes" : "no");
    }

    std::puts(all_ok ? "all runs served" : "some request failed");
    return all_ok ? 0 : 1;
}
