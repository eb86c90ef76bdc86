// Built with -fno-exceptions: the header must compile, and the non-throwing calls must
// serve a real request. (Catch2 needs exceptions, so this test is a plain program.)
#include "restartable_server.hpp"

#include <cstdio>
#include <cstring>
#include <string>

#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
#error "-fno-exceptions was not detected"
#endif

namespace rs = restartable_server;

static std::string fetch(std::uint16_t port) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    timeval tv{10, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    std::string out;
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
        const char req[] = "GET /hi HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        if (::send(fd, req, sizeof req - 1, MSG_NOSIGNAL) == static_cast<ssize_t>(sizeof req - 1)) {
            char buf[4096];
            ssize_t n;
            while ((n = ::recv(fd, buf, sizeof buf, 0)) > 0) out.append(buf, static_cast<std::size_t>(n));
        }
    }
    ::close(fd);
    return out;
}

int main() {
    rs::options o;
    o.listener = rs::tcp_listener("127.0.0.1", 0);
    rs::server srv(o);
    srv.get("/hi", [](const rs::request&, rs::response& res) { res.set_content("hi", "text/plain"); });
    for (int cycle = 0; cycle < 3; ++cycle) {
        std::error_code ec;
        srv.start(ec);
        if (ec) {
            std::fprintf(stderr, "start: %s\n", ec.message().c_str());
            return 1;
        }
        std::string got = fetch(srv.port());
        if (got.find("HTTP/1.1 200 OK\r\n") != 0 || got.substr(got.size() - 2) != "hi") {
            std::fprintf(stderr, "unexpected response: %s\n", got.c_str());
            return 1;
        }
        srv.stop();
    }
    std::puts("no exceptions: 3 start/serve/stop cycles ok");
    return 0;
}
