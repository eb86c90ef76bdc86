// echo_server.cpp - a small server that restarts without losing a request: in-process
// (hand-over restart) or into a new binary (upgrade), on request or on a signal.
//
//   echo_server [--host 127.0.0.1] [--port 8080] [--workers N] [--drain-ms N]
//               [--tls-cert FILE --tls-key FILE]
//
// Prints "listening on http://HOST:PORT" (the real port for --port 0) when it starts,
// "listening on https://HOST:PORT" with --tls-cert and --tls-key (PEM files; built with
// RESTARTABLE_SERVER_OPENSSL), which it reads again at every restart: replace the files,
// then restart, and new connections get the new certificate while none is refused.
// "restarted N" after the N-th in-process restart and "upgraded to pid N" when a new
// process took over. With LISTEN_FDS/LISTEN_PID set (systemd socket activation, or an
// upgrade) it serves the socket it was given instead of --host/--port, and it tells
// $NOTIFY_SOCKET "READY=1" once it serves (systemd Type=notify).
//
//   GET  /hello        200 "Hello, World!" (text/plain)
//   GET|HEAD|POST|PUT|PATCH|DELETE /echo
//                      200 with the request body and its Content-Type
//   GET  /slow?ms=N    waits N ms (capped at 10000), then 200
//   GET  /pid          this process's id
//   GET  /events       server-sent events: "data: tick N" (N = 1, 2, ...) every 100 ms until a
//                      stop or restart begins, then "event: bye" and the stream ends cleanly
//                      (the last chunk). The streams hold no thread (push_stream): one
//                      ticker thread writes to all of them, skipping a tick for a client
//                      that reads too slowly (send_buffer_full)
//   GET  /ws           a WebSocket (RFC 6455) that echoes every message back as it came:
//                      text as text, binary as binary, whole (fragments joined), up to
//                      16 MiB. No echo is dropped: a client that leaves more than 1 MiB
//                      of echoes unread has its WebSocket closed with 1008. A stop
//                      (SIGINT, SIGTERM) sends it close 1001 (Going Away), a restart
//                      (SIGHUP, POST /restart) close 1012 (Service Restart), and the
//                      server waits for the client's answer (within --drain-ms)
//   POST /restart      an in-process restart (202): nothing refused, nothing dropped
//   POST /upload       multipart/form-data, read streamed (never held whole): 200
//                      text/plain, one line per part "NAME FILENAME BYTES SHA256HEX"
//                      ("-" for a part without a filename); a malformed body gets the
//                      status of rs::error_status() and the error's message
//
//   SIGHUP             the same restart
//   SIGUSR2            binary upgrade: a new process of this executable (same arguments)
//                      takes the listening socket over; once it is ready this one drains
//                      and exits 0
//   SIGINT, SIGTERM    a graceful stop; exit status 0
//
// The library never touches signals. Here main() blocks them in every thread and takes
// them one at a time with sigwait(), so nothing runs in a signal handler.
// Exit status: 0 after a stop by signal or an upgrade, 1 when a start fails or the run
// fails, 2 on bad arguments.

#include "restartable_server.hpp"
#include "sha256.hpp"

#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace rs = restartable_server;

namespace {

int usage(const char* argv0) {
    std::fprintf(stderr,
                 "usage: %s [--host 127.0.0.1] [--port 8080] [--workers N] [--drain-ms N]\n"
                 "          [--tls-cert FILE --tls-key FILE]   (built with RESTARTABLE_SERVER_OPENSSL)\n",
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

// self_path: this executable's path, for an upgrade (resolved now: the file may be
// replaced by a new build before the upgrade, which is the point of one).
std::string self_path(const char* argv0) {
    char buf[4096];
    const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
    return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string(argv0);
}

using examples::sha256;  // (examples/sha256.hpp)

// socket_name: "unix:PATH" or "" (TCP: the port is printed) for an inherited socket.
std::string socket_name(int fd) {
    sockaddr_un addr{};
    socklen_t len = sizeof addr;
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0 || addr.sun_family != AF_UNIX) return {};
    return std::string("unix:") + addr.sun_path;
}

}  // namespace

int main(int argc, char** argv) {
    // ------------------------------------------------------------ arguments --
    std::string host = "127.0.0.1";
    std::string tls_cert, tls_key;
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
        else if (arg == "--tls-cert")
            tls_cert = value;
        else if (arg == "--tls-key")
            tls_key = value;
        else
            ok = false;
        if (!ok) return usage(argv[0]);
    }
    const bool tls = !tls_cert.empty() || !tls_key.empty();
    if (tls && (tls_cert.empty() || tls_key.empty())) return usage(argv[0]);
#ifndef RESTARTABLE_SERVER_OPENSSL
    if (tls) {
        std::fprintf(stderr, "echo_server: built without TLS (configure with -DRESTARTABLE_SERVER_OPENSSL=ON)\n");
        return 2;
    }
#endif  // RESTARTABLE_SERVER_OPENSSL

    // ---------------------------------------------------------------- server --
    // Signals are blocked before any thread starts, so every thread inherits the mask and
    // only sigwait() below takes them.
    sigset_t signals;
    sigemptyset(&signals);
    for (int sig : {SIGHUP, SIGINT, SIGTERM, SIGUSR2}) sigaddset(&signals, sig);
    if (::pthread_sigmask(SIG_BLOCK, &signals, nullptr) != 0) return 1;

    rs::options opts;
    std::string inherited;  // how to show an inherited Unix socket
    const bool activated = std::getenv("LISTEN_FDS") != nullptr;
    if (activated) {
        inherited = socket_name(3);  // before systemd_listener() takes the variables away
        opts.listener = rs::systemd_listener();
    } else {
        opts.listener = rs::tcp_listener(host, static_cast<std::uint16_t>(port));
    }
#ifdef RESTARTABLE_SERVER_OPENSSL
    if (tls) {  // the files are read at every start and restart: a restart rotates them
        rs::tls_options t;
        t.cert_chain_file = tls_cert;
        t.key_file = tls_key;
        opts.listener = rs::tls_listener(std::move(opts.listener), std::move(t));
    }
#endif  // RESTARTABLE_SERVER_OPENSSL
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

    srv.get("/pid", [](const rs::request&, rs::response& res) {
        res.set_content(std::to_string(::getpid()) + "\n", "text/plain");
    });

    // /events: push streams (no thread each) that one ticker thread writes to. A stop or
    // restart ends every stream after what is queued: the on_stop hook, which runs first,
    // queues "event: bye" on each.
    struct listener {
        rs::stream_handle stream;
        unsigned long ticks = 0;
    };
    std::mutex events_mutex;
    std::condition_variable events_cv;
    std::vector<listener> listeners;  // under events_mutex
    bool quit = false;                // under events_mutex: the ticker ends
    srv.get("/events", [&](const rs::request&, rs::response& res) {
        res.set_header("Cache-Control", "no-cache");
        listener l{res.push_stream("text/event-stream"), 1};
        l.stream.write("data: tick 1\n\n");  // the first at once; it goes out after the head
        std::lock_guard<std::mutex> lock(events_mutex);
        listeners.push_back(std::move(l));
    });
    srv.on_stop([&](rs::stop_reason) {
        std::lock_guard<std::mutex> lock(events_mutex);
        for (listener& l : listeners) l.stream.write("event: bye\ndata: the server is stopping or restarting\n\n");
        listeners.clear();  // their streams end now; new ones come to the next run
    });

    // Each message back as it came. The engine joins fragments, checks text is UTF-8,
    // answers pings and closes, and sends 1001 at a stop and 1012 at a restart.
    rs::websocket_handlers echo_ws;
    echo_ws.on_message = [](rs::websocket& ws, std::string_view data, bool text) {
        const std::error_code ec = text ? ws.send_text(data) : ws.send_binary(data);
        if (ec == rs::errc::send_buffer_full) ws.close(1008, "echoes left unread");  // never a silent drop
    };
    srv.websocket("/ws", std::move(echo_ws));

    // The parts' lines; nothing of a part but its running hash is kept. A malformed body
    // is answered with the error (the connection then closes if the body was not read whole).
    srv.post(
        "/upload",
        [](const rs::request& req, rs::response& res) {
            std::string lines;
            sha256 hash;
            std::uint64_t bytes = 0;
            const std::error_code ec = rs::read_multipart(
                req,
                [&](const rs::form_part&) {
                    hash = sha256();
                    bytes = 0;
                    return true;
                },
                [&](const rs::form_part& part, std::string_view data) {
                    if (!data.empty()) {
                        hash.update(data);
                        bytes += data.size();
                        return true;
                    }
                    // An empty piece: the part ended. Spaces and line breaks in names would
                    // break the line format, so they are shown as '_'.
                    auto field = [](std::string_view s) {
                        std::string out(s.empty() ? "-" : s);
                        for (char& c : out)
                            if (static_cast<unsigned char>(c) <= ' ' || c == 0x7f) c = '_';
                        return out;
                    };
                    lines += field(part.name) + " " + (part.has_filename ? field(part.filename) : "-") + " " +
                             std::to_string(bytes) + " " + hash.hex() + "\n";
                    return true;
                });
            if (ec) {
                res.status = rs::error_status(ec);
                res.set_content(ec.message() + "\n", "text/plain");
                return;
            }
            res.set_content(lines, "text/plain");
        },
        rs::body_mode::streamed);

    std::atomic<unsigned long> restarts{0};
    auto restart = [&srv, &restarts] {
        std::error_code ec;
        srv.restart(ec);
        if (ec)
            std::fprintf(stderr, "echo_server: restart failed: %s\n", ec.message().c_str());
        else
            std::printf("restarted %lu\n", ++restarts);
        std::fflush(stdout);
        return !ec;
    };
    srv.post("/restart", [&restart](const rs::request&, rs::response& res) {
        // This response is sent by the run being replaced, on a connection that then
        // moves to the new run like every idle one.
        const bool ok = restart();
        res.status = ok ? 202 : 503;
        res.set_content(ok ? "restarted\n" : "restart failed\n", "text/plain");
    });

    // ------------------------------------------------------------------ run --
    std::error_code ec;
    srv.start(ec);
    if (ec) {
        if (activated)  // the message says what was wrong with the passed descriptor
            std::fprintf(stderr, "echo_server: cannot start on the socket passed in LISTEN_FDS: %s\n",
                         ec.message().c_str());
        else
            std::fprintf(stderr, "echo_server: cannot start on %s:%lu: %s\n", host.c_str(), port,
                         ec.message().c_str());
        return 1;
    }
    std::thread ticker([&] {  // the /events ticks (see the route)
        std::unique_lock<std::mutex> lock(events_mutex);
        while (!events_cv.wait_for(lock, std::chrono::milliseconds(100), [&] { return quit; })) {
            for (auto it = listeners.begin(); it != listeners.end();) {
                const std::error_code e = it->stream.write("data: tick " + std::to_string(it->ticks + 1) + "\n\n");
                if (e == rs::errc::closed) {  // the client left (or its run ended)
                    it = listeners.erase(it);
                    continue;
                }
                if (!e) ++it->ticks;  // send_buffer_full: this client misses the tick
                ++it;
            }
        }
    });
    if (!inherited.empty())
        std::printf("listening on %s\n", inherited.c_str());
    else
        std::printf("listening on %s://%s:%u\n", tls ? "https" : "http",
                    host.find(':') != std::string::npos ? ("[" + host + "]").c_str() : host.c_str(), srv.port());
    std::fflush(stdout);
    rs::notify_ready();

    // A run that ends by itself (its listener failed) wakes main() like a SIGTERM would.
    std::atomic<bool> failed{false};
    std::thread watcher([&srv, &failed] {
        if (srv.wait().error) {
            failed.store(true);
            ::kill(::getpid(), SIGTERM);
        }
    });

    const std::vector<std::string> upgrade_argv = [&] {
        std::vector<std::string> v{self_path(argv[0])};
        for (int i = 1; i < argc; ++i) v.emplace_back(argv[i]);
        return v;
    }();
    for (;;) {
        int sig = 0;
        if (::sigwait(&signals, &sig) != 0) continue;
        if (sig == SIGHUP) {
            restart();
        } else if (sig == SIGUSR2) {
            const pid_t child = srv.upgrade(upgrade_argv, ec);
            if (ec) {
                std::fprintf(stderr, "echo_server: upgrade failed: %s\n", ec.message().c_str());
                continue;
            }
            std::printf("upgraded to pid %ld\n", static_cast<long>(child));
            std::fflush(stdout);
            break;  // upgrade() asked this server to stop: it drains below
        } else {
            break;  // SIGINT, SIGTERM
        }
    }
    srv.stop();  // graceful: requests in flight finish (up to --drain-ms)
    watcher.join();
    {
        std::lock_guard<std::mutex> lock(events_mutex);
        quit = true;
    }
    events_cv.notify_all();
    ticker.join();
    if (failed.load()) {
        std::fprintf(stderr, "echo_server: the run failed\n");
        return 1;
    }
    return 0;
}
