// echo_server.cpp - a small server that restarts in-process, on request or on SIGHUP.
//
//   echo_server [--host 127.0.0.1] [--port 8080] [--workers N] [--drain-ms N]
//
// Prints "listening on http://HOST:PORT" (the real port when --port 0) at every start.
//
//   GET  /hello        200 "Hello, World!" (text/plain)
//   ANY  /echo         200 with the request body and its Content-Type
//                      (GET, HEAD, POST, PUT, PATCH, DELETE)
//   GET  /slow?ms=N    waits N ms (at most 10000), then 200
//   POST /restart      202, then a graceful restart on the same port
//
//   SIGHUP             the same restart
//   SIGINT, SIGTERM    a graceful stop; exit status 0
//
// The library never touches signals. Here the handlers only store into lock-free atomics
// and call server::request_stop(), which is async-signal-safe; main() does the rest.
// Exit status: 0 after a signal-requested stop, 1 when a start fails, 2 on bad arguments.

#include "restartable_server.hpp"

#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <thread>

namespace rs = restartable_server;

namespace {

static_assert(std::atomic<int>::is_always_lock_free, "signal handlers need a lock-free atomic");

rs::server* g_server = nullptr;     // set before the handlers are installed
std::atomic<int> g_restart{0};      // 1: restart after the current run ends
std::atomic<int> g_terminate{0};    // 1: exit after the current run ends

extern "C" void on_signal(int sig) {
    if (sig == SIGHUP)
        g_restart.store(1);
    else
        g_terminate.store(1);
    if (g_server) g_server->request_stop();  // an atomic store and a write(2)
}

bool install_handlers() {
    struct sigaction sa {};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    for (int sig : {SIGHUP, SIGINT, SIGTERM})
        if (::sigaction(sig, &sa, nullptr) != 0) return false;
    // The handlers must be able to run even if our parent left these signals blocked.
    sigset_t set;
    sigemptyset(&set);
    for (int sig : {SIGHUP, SIGINT, SIGTERM}) sigaddset(&set, sig);
    return ::pthread_sigmask(SIG_UNBLOCK, &set, nullptr) == 0;
}

int usage(const char* argv0) {
    std::fprintf(stderr,
                 "usage: %s [--host 127.0.0.1] [--port 8080] [--workers N] [--drain-ms N]\n",
                 argv0);
    return 2;
}

// parse_number: the whole of s as a decimal number in [0, max], or false.
bool parse_number(const char* s, unsigned long max, unsigned long& out) {
    if (*s < '0' || *s > '9') return false;  // no sign, no space, not empty
    char* end = nullptr;
    errno = 0;
    unsigned long v = std::strtoul(s, &end, 10);
    if (errno != 0 || *end != '\0' || v > max) return false;
    out = v;
    return true;
}

}  // namespace

int main(int argc, char** argv) {
    // ------------------------------------------------------------ arguments --
    std::string host = "127.0.0.1";
    unsigned long port = 8080, workers = 8, drain_ms = 5000;
    for (int i = 1; i < argc; ++i) {
        std::string arg = argv[i];
        if (i + 1 >= argc) return usage(argv[0]);  // every option takes a value
        const char* value = argv[++i];
        bool ok = true;
        if (arg == "--host")
            host = value;
        else if (arg == "--port")
            ok = parse_number(value, 65535, port);
        else if (arg == "--workers")
            ok = parse_number(value, 1024, workers);
        else if (arg == "--drain-ms")
            ok = parse_number(value, 3600000, drain_ms);
        else
            ok = false;
        if (!ok) return usage(argv[0]);
    }

    // ---------------------------------------------------------------- server --
    rs::options opts;
    opts.listener = rs::tcp_listener(host, static_cast<std::uint16_t>(port));
    opts.worker_threads = workers;
    opts.drain_timeout = std::chrono::milliseconds(drain_ms);
    rs::server srv(std::move(opts));

    srv.get("/hello", [](const rs::request&, rs::response& res) {
        res.set_content("Hello, World!", "text/plain");
    });

    auto echo = [](const rs::request& req, rs::response& res) {
        res.body = std::string(req.body);
        std::string_view type = req.get_header("Content-Type");
        if (!type.empty()) res.set_header("Content-Type", type);
    };
    for (const char* method : {"GET", "POST", "PUT", "PATCH", "DELETE"})  // GET answers HEAD too
        srv.route(method, "/echo", echo);

    srv.get("/slow", [](const rs::request& req, rs::response& res) {
        unsigned long ms = 0;
        std::optional<std::string> q = req.query_param("ms");
        if (q && !parse_number(q->c_str(), 1000000000UL, ms)) {
            res.status = 400;
            res.set_content("ms must be a number of milliseconds\n", "text/plain");
            return;
        }
        ms = std::min(ms, 10000UL);
        std::this_thread::sleep_for(std::chrono::milliseconds(ms));
        res.set_content("slept " + std::to_string(ms) + " ms\n", "text/plain");
    });

    srv.post("/restart", [&srv](const rs::request&, rs::response& res) {
        // The stop is graceful: this response is still sent (with Connection: close),
        // then the run ends and main() starts the next one.
        g_restart.store(1);
        srv.request_stop();
        res.status = 202;
        res.set_content("restarting\n", "text/plain");
    });

    g_server = &srv;
    if (!install_handlers()) {
        std::perror("sigaction");
        return 1;
    }

    // ------------------------------------------------------------------ runs --
    const std::string shown_host = host.find(':') != std::string::npos ? "[" + host + "]" : host;
    for (;;) {
        std::error_code ec;
        srv.start(ec);
        if (ec) {
            std::fprintf(stderr, "echo_server: cannot start on %s:%lu: %s\n", host.c_str(), port,
                         ec.message().c_str());
            return 1;
        }
        port = srv.port();  // with --port 0, every restart reuses the port first obtained
        std::printf("listening on http://%s:%lu\n", shown_host.c_str(), port);
        std::fflush(stdout);

        // A signal that arrived while no run was in progress found nothing to stop; its
        // flag is still set, so honour it now.
        if (g_terminate.load() || g_restart.load()) srv.request_stop();

        srv.wait();  // until POST /restart, SIGHUP, SIGINT or SIGTERM
        if (g_terminate.load()) break;
        if (!g_restart.exchange(0)) {
            std::fprintf(stderr, "echo_server: the run ended without a stop request\n");
            return 1;
        }
        srv.set_listener(rs::tcp_listener(host, static_cast<std::uint16_t>(port)));
    }
    srv.stop();  // already stopped; joins nothing, returns at once
    return 0;
}
