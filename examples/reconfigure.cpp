// reconfigure.cpp - change where a running server listens, and its routes, with nothing
// dropped.
//
// A server keeps its routes and options; changes made while it runs take effect at the next
// start - or at restart(), which replaces the run without stopping the process: requests in
// flight finish on the old run, and idle keep-alive connections (and those whose next
// request is still arriving) move to the new one and get its routes - even when the new
// run listens on another port. This program takes commands on stdin, one a line, as a
// device's console or a test script would, and answers each with one line:
//
//   host H             the next run listens on H: 127.0.0.1 (this machine only, the
//                      default), 0.0.0.0 (every IPv4 interface), ::1, ...
//   port N             the next run listens on port N (0: a free port, see below)
//   route PATH TEXT    the next run answers GET PATH with TEXT
//   restart            apply them; answers "listening on http://HOST:PORT"
//   quit (or EOF)      graceful stop; answers "stopped"; exit status 0
//
// How restart() treats the listening socket: when host and port are as asked for the
// current run, the socket itself is handed over, never closed, so no client is refused.
// Otherwise the new address is bound first - if that fails (the port is taken), the
// restart fails and the current run goes on unchanged - and the old socket closes once
// the new one serves. So "port 0" after a start on port 0 keeps the port it got (the same
// request), while moving to "host 0.0.0.0" with port 0 gets a new free port.
//
//   build:  g++ -std=c++17 -O2 -I. examples/reconfigure.cpp -o reconfigure -pthread
//   run:    ./reconfigure [--port 8080]        answers "listening on http://127.0.0.1:8080"
//   try:    curl http://127.0.0.1:8080/hello             -> "hello"
//           type:  route /new a new route                 -> ok (curl .../new: still 404)
//                  port 8081                              -> ok
//                  restart                                -> listening on ...:8081
//           curl http://127.0.0.1:8081/new               -> "a new route"
//           curl http://127.0.0.1:8080/hello             -> connection refused
//           Keep a connection to 8080 open across the restart (`nc 127.0.0.1 8080`, one
//           request before, one after): the new run serves it, new route included.

#include "restartable_server.hpp"

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <sstream>
#include <string>

namespace rs = restartable_server;

namespace {

// where: the address asked for, as set by the commands.
struct where {
    std::string host = "127.0.0.1";
    std::uint16_t port = 8080;
};

// say: one line on stdout, flushed at once (a script waits for it on a pipe).
void say(const std::string& line) {
    std::printf("%s\n", line.c_str());
    std::fflush(stdout);
}

std::string url(const where& at, std::uint16_t port) {
    const bool ipv6 = at.host.find(':') != std::string::npos;
    return "http://" + (ipv6 ? "[" + at.host + "]" : at.host) + ":" + std::to_string(port);
}

// execute: carries out one command line (not "quit") and returns the line to answer.
std::string execute(rs::server& srv, where& at, const std::string& line) {
    std::istringstream in(line);
    std::string command;
    in >> command;
    if (command == "host" || command == "port") {
        if (command == "host") {
            in >> at.host;
        } else {
            unsigned long port = 65536;
            if (!(in >> port) || port > 65535) return "error: usage: port N (0-65535)";
            at.port = static_cast<std::uint16_t>(port);
        }
        srv.set_listener(rs::tcp_listener(at.host, at.port));  // used by the next restart
        return "ok: " + at.host + " port " + std::to_string(at.port) + " from the next restart";
    }
    if (command == "route") {
        std::string path, text;
        in >> path;
        std::getline(in >> std::ws, text);
        if (path.empty() || path[0] != '/') return "error: usage: route /PATH TEXT";
        srv.get(path, [text](const rs::request&, rs::response& res) {
            res.set_content(text + "\n", "text/plain");
        });
        return "ok: GET " + path + " from the next restart";
    }
    if (command == "restart") {
        std::error_code ec;
        srv.restart(ec);  // returns once the new run serves
        if (ec) return "error: restart failed: " + ec.message();
        return "listening on " + url(at, srv.port());
    }
    return "error: unknown command '" + command + "' (host, port, route, restart, quit)";
}

}  // namespace

int main(int argc, char** argv) {
    where at;
    unsigned long port = 8080;
    char* end = nullptr;
    if (argc == 3 && std::string(argv[1]) == "--port") port = std::strtoul(argv[2], &end, 10);
    if ((argc != 1 && (argc != 3 || !end || *end != '\0')) || port > 65535) {
        std::fprintf(stderr, "usage: %s [--port 8080]\n", argv[0]);
        return 2;
    }
    at.port = static_cast<std::uint16_t>(port);

    rs::server srv;
    srv.set_listener(rs::tcp_listener(at.host, at.port));
    srv.get("/hello", [](const rs::request&, rs::response& res) {
        res.set_content("hello\n", "text/plain");
    });
    std::error_code ec;
    srv.start(ec);
    if (ec) {
        std::fprintf(stderr, "cannot listen on port %lu: %s\n", port, ec.message().c_str());
        return 1;
    }
    say("listening on " + url(at, srv.port()));

    std::string line;
    while (std::getline(std::cin, line) && line != "quit")
        if (!line.empty()) say(execute(srv, at, line));
    srv.stop();
    say("stopped");
    return 0;
}
