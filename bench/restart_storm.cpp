// restart_storm.cpp - figure 11: what clients see while the server restarts over and over.
//
//   restart_storm rs SECONDS INTERVAL_MS [options]
//       a restartable_server on 127.0.0.1:0 in this process (default options, GET /hello and
//       POST /echo); the main thread calls restart() every INTERVAL_MS.
//   restart_storm rs-cold SECONDS INTERVAL_MS [options]
//       the same, restarting with stop() and start() on the same port: what a restart that
//       closes its listener looks like to the counters (a check that they count).
//   restart_storm nginx SECONDS INTERVAL_MS --port PORT --pid MASTER_PID [options]
//       an nginx already serving GET /hello and POST /echo (echo module) on PORT; the main
//       thread sends SIGHUP to its master every INTERVAL_MS, which is what `nginx -s reload`
//       does (without starting a process each time).
//   options: --server-cpus LIST (rs: the CPUs of the server's threads, "N" or "N-M" as for
//       taskset; they inherit them from the main thread), --client-cpus LIST (the client
//       threads'; nginx mode: the main thread's too), --timeout-ms N (per request, default
//       5000), --clients N (default 8).
//
// Meanwhile N client threads (default 8) send requests as fast as they get answers. Each
// keeps 4 keep-alive connections and uses them in turn, so each sits idle between its
// requests as real keep-alive connections do, and every fifth request goes on a fresh
// connection ("Connection: close"). Requests alternate between GET /hello and POST /echo
// with a body of 16 B to 32 KiB that names the thread and the request, so a response meant
// for another request shows as a wrong body. Each request ends in exactly one outcome:
//   ok           status 200 and the expected body
//   refused      connect() failed (ECONNREFUSED, or any other connect error)
//   unanswered   the request (or part of it) was written, then EOF or reset before any
//                response byte, on a fresh connection or the first request of one
//   reuse_race   the same on a connection that had answered before: the server closed a
//                connection it considered idle as the request arrived (RFC 9112 9.3.1
//                lets a client retry only idempotent requests then)
//   truncated    EOF or reset after part of a response
//   timeout      no whole response within --timeout-ms
//   wrong        a whole response with another status or another body
// Prints "key value" lines: requests (every attempt, refused ones too), one line per
// outcome (reuse_races, timeouts: plural), fresh and kept (requests of each kind),
// reconnects (kept-alive slots that had to connect again), req_per_s, restarts and
// restart_errors, restart_call_us_p50 and _max (how long the restart call took), and
// final_check (a GET /hello after the storm). Exit status 0 when the load ran (whatever the
// counts), 1 when the server could not be started or the final check failed, 2 on bad usage.
#include "client.hpp"
#include "restartable_server.hpp"

#include <sched.h>
#include <signal.h>

#include <atomic>
#include <functional>
#include <thread>

using namespace bench;
namespace rs = restartable_server;

namespace {

// ----------------------------------------------------------------- responses --

/// response_reader: one response read incrementally, framed by Content-Length or chunked
/// (nginx's echo module answers chunked). Knows whether any byte arrived at all.
struct response_reader {
    enum class state { partial, complete, bad };
    std::string buf;          // everything received for this response
    std::size_t body_at = 0;  // where the body starts in buf; 0 until the head is complete
    int status = 0;
    bool chunked = false, close = false;
    std::size_t length = 0;   // Content-Length
    std::size_t next = 0;     // chunked: where the next chunk-size line starts in buf
    std::string body;         // chunked: the decoded body so far

    state feed(const char* p, std::size_t n) {
        buf.append(p, n);
        if (body_at == 0 && !parse_head()) return buf.size() > 65536 ? state::bad : state::partial;
        if (status < 0) return state::bad;
        if (!chunked) return buf.size() >= body_at + length ? state::complete : state::partial;
        return decode_chunks();
    }
    /// body_view: the response body, once complete.
    std::string_view body_view() const {
        return chunked ? std::string_view(body) : std::string_view(buf).substr(body_at, length);
    }

private:
    bool parse_head() {
        const std::size_t end = buf.find("\r\n\r\n");
        if (end == std::string::npos) return false;
        body_at = end + 4;
        next = body_at;
        if (buf.compare(0, 5, "HTTP/") != 0 || end < 12) {
            status = -1;
            return true;
        }
        status = std::atoi(buf.c_str() + 9);
        for (std::size_t pos = buf.find("\r\n"); pos < end; pos = buf.find("\r\n", pos + 2)) {
            std::string line = buf.substr(pos + 2, buf.find("\r\n", pos + 2) - pos - 2);
            for (char& c : line) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
            if (line.compare(0, 15, "content-length:") == 0) length = std::strtoull(line.c_str() + 15, nullptr, 10);
            if (line.compare(0, 18, "transfer-encoding:") == 0) chunked = line.find("chunked") != std::string::npos;
            if (line.compare(0, 11, "connection:") == 0) close = line.find("close") != std::string::npos;
        }
        return true;
    }
    /// decode_chunks: takes whole chunks from buf; complete after the last chunk and the
    /// empty line that ends the (here always empty) trailer section.
    state decode_chunks() {
        for (;;) {
            const std::size_t eol = buf.find("\r\n", next);
            if (eol == std::string::npos) return state::partial;
            char* end = nullptr;
            const unsigned long long size = std::strtoull(buf.c_str() + next, &end, 16);
            if (end == buf.c_str() + next) return state::bad;
            if (size == 0) return buf.size() >= eol + 4 ? state::complete : state::partial;
            if (buf.size() < eol + 2 + size + 2) return state::partial;
            body.append(buf, eol + 2, size);
            next = eol + 2 + size + 2;
        }
    }
};

// ------------------------------------------------------------------- clients --

enum outcome { ok, refused, unanswered, reuse_race, truncated, timeout, wrong, n_outcomes };
const char* const outcome_name[n_outcomes] = {"ok", "refused", "unanswered", "reuse_races", "truncated", "timeouts",
                                              "wrong"};

struct counts {
    long n[n_outcomes] = {};
    long fresh = 0, kept = 0, reconnects = 0;  // reconnects: kept-alive slots opened anew
    void add(const counts& o) {
        for (int i = 0; i < n_outcomes; ++i) n[i] += o.n[i];
        fresh += o.fresh, kept += o.kept, reconnects += o.reconnects;
    }
};

/// connection: a client socket and whether it has answered a request before.
struct connection {
    int fd = -1;
    bool used = false;
    void close() {
        if (fd >= 0) ::close(fd);
        fd = -1;
        used = false;
    }
};

/// open_connection: a connected socket, or -1 (refused, or no handshake before deadline).
int open_connection(std::uint16_t port, clock::time_point deadline) {
    int fd = connect_to(port, /*nonblock=*/true);
    if (fd < 0) return -1;
    pollfd pf{fd, POLLOUT, 0};
    int ms = static_cast<int>(std::chrono::ceil<std::chrono::milliseconds>(deadline - clock::now()).count());
    int err = 0;
    socklen_t len = sizeof err;
    if (::poll(&pf, 1, std::max(ms, 0)) != 1 || ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
        ::close(fd);
        return -1;
    }
    return fd;
}

/// exchange: sends req on c and reads one response; the outcome (see the top of the file).
/// Closes c unless the connection can carry another request.
outcome exchange(connection& c, const std::string& req, std::string_view want_body, clock::time_point deadline) {
    const bool reused = c.used;
    auto lost = [&](bool any_byte) {
        c.close();
        return any_byte ? truncated : reused ? reuse_race : unanswered;
    };
    if (!send_all(c.fd, req.data(), req.size(), deadline)) {
        if (clock::now() >= deadline) return c.close(), timeout;
        return lost(false);
    }
    response_reader r;
    char tmp[65536];
    for (;;) {
        int ms = static_cast<int>(std::chrono::ceil<std::chrono::milliseconds>(deadline - clock::now()).count());
        pollfd pf{c.fd, POLLIN, 0};
        int p = ms > 0 ? ::poll(&pf, 1, ms) : 0;
        if (p < 0 && errno == EINTR) continue;
        if (p <= 0) return c.close(), timeout;
        ssize_t n = ::recv(c.fd, tmp, sizeof tmp, MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
        if (n <= 0) return lost(!r.buf.empty());
        const auto st = r.feed(tmp, static_cast<std::size_t>(n));
        if (st == response_reader::state::partial) continue;
        if (st == response_reader::state::bad || r.status != 200 || r.body_view() != want_body) return c.close(), wrong;
        break;
    }
    c.used = true;
    if (r.close || req.find("Connection: close") != std::string::npos) {
        wait_eof(c.fd, std::min(deadline, clock::now() + std::chrono::seconds(1)));  // server closes first
        c.close();
    }
    return ok;
}

std::string make_request(bool post, bool keep_alive, const std::string& body) {
    std::string r = post ? "POST /echo HTTP/1.1\r\n" : "GET /hello HTTP/1.1\r\n";
    r += "Host: 127.0.0.1\r\n";
    if (!keep_alive) r += "Connection: close\r\n";
    if (post) r += "Content-Type: application/octet-stream\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
    r += "\r\n";
    if (post) r += body;
    return r;
}

/// body_for: a body that names thread t and request i, 16 B to 32 KiB long.
std::string body_for(int t, long i) {
    static constexpr std::size_t sizes[] = {16, 200, 1500, 8000, 32768};
    std::string b = "t" + std::to_string(t) + "-" + std::to_string(i) + ":";
    // A multiplicative hash of i picks the size, so that it does not follow the connection
    // slot, which is i modulo a small number too.
    const std::size_t n = sizes[(static_cast<std::uint64_t>(i) * 2654435761u >> 8) % (sizeof sizes / sizeof sizes[0])];
    for (std::size_t j = 0; b.size() < n; ++j) b += static_cast<char>('a' + (static_cast<std::size_t>(i) + j) % 26);
    return b;
}

/// cpus: a CPU range "N" or "N-M" as taskset takes it; empty: not pinned.
struct cpus {
    int first = -1, last = -1;
    static cpus parse(const char* s) {
        cpus c;
        char* end = nullptr;
        c.first = c.last = static_cast<int>(std::strtol(s, &end, 10));
        if (*end == '-') c.last = static_cast<int>(std::strtol(end + 1, &end, 10));
        if (end == s || *end != '\0' || c.first < 0 || c.last < c.first) c.first = c.last = -2;  // invalid
        return c;
    }
};

void pin_this_thread(cpus c) {
    if (c.first < 0) return;
    cpu_set_t set;
    CPU_ZERO(&set);
    for (int i = c.first; i <= c.last; ++i) CPU_SET(i, &set);
    ::sched_setaffinity(0, sizeof set, &set);  // 0: the calling thread
}

struct load {
    std::uint16_t port = 0;
    int clients = 8;
    cpus client_cpus;
    std::chrono::milliseconds timeout{5000};
    std::atomic<bool> done{false};
    std::vector<counts> per_thread;
};

/// client: one load thread; see the top of the file for its pattern.
void client(load& l, int t) {
    pin_this_thread(l.client_cpus);
    constexpr int kept_slots = 4;
    connection kept[kept_slots];
    counts& k = l.per_thread[static_cast<std::size_t>(t)];
    const std::string hello = "Hello, World!";
    for (long i = 0; !l.done.load(std::memory_order_relaxed); ++i) {
        const int slot = static_cast<int>(i % (kept_slots + 1));  // kept_slots: a fresh connection
        const bool fresh = slot == kept_slots;
        const bool post = (i / (kept_slots + 1) + slot) % 2 == 1;
        const std::string body = post ? body_for(t, i) : std::string();
        const std::string req = make_request(post, !fresh, body);
        const auto deadline = clock::now() + l.timeout;
        connection one_off;
        connection& c = fresh ? one_off : kept[slot];
        ++(fresh ? k.fresh : k.kept);
        if (c.fd < 0) {
            c.fd = open_connection(l.port, deadline);
            if (c.fd < 0) {
                ++k.n[refused];
                continue;
            }
            if (!fresh && i >= kept_slots) ++k.reconnects;
        }
        ++k.n[exchange(c, req, post ? std::string_view(body) : std::string_view(hello), deadline)];
        one_off.close();
    }
    for (connection& c : kept) c.close();
}

// ------------------------------------------------------------------- servers --

/// the restartable_server under test: GET /hello and POST /echo, default options.
void add_routes(rs::server& srv) {
    srv.get("/hello", [](const rs::request&, rs::response& res) { res.set_content("Hello, World!", "text/plain"); });
    srv.post("/echo", [](const rs::request& req, rs::response& res) {
        res.set_content(req.body, "application/octet-stream");
    });
}

struct args {
    std::string mode;
    double seconds = 0;
    long interval_ms = 0;
    long nginx_port = 0, nginx_pid = 0;
    cpus server_cpus;
};

/// storm: runs the clients for a.seconds while restart() is called every a.interval_ms;
/// prints restarts, restart_errors and the restart call's duration (median, max, µs).
void storm(const args& a, load& l, const std::function<bool()>& restart) {
    std::vector<std::thread> threads;
    l.per_thread.assign(static_cast<std::size_t>(l.clients), counts{});
    for (int t = 0; t < l.clients; ++t) threads.emplace_back(client, std::ref(l), t);
    const auto t0 = clock::now();
    const auto end = t0 + std::chrono::milliseconds(static_cast<long long>(a.seconds * 1000));
    const auto interval = std::chrono::milliseconds(a.interval_ms);
    long restarts = 0, errors = 0;
    std::vector<double> us;
    for (auto next = t0 + interval; next <= end; next += interval) {
        std::this_thread::sleep_until(next);
        const auto r0 = clock::now();
        const bool ok = restart();
        us.push_back(ms_since(r0) * 1000);
        ++(ok ? restarts : errors);
    }
    std::this_thread::sleep_until(end);
    l.done = true;
    for (std::thread& th : threads) th.join();
    const double elapsed_s = ms_since(t0) / 1000;
    counts sum;
    for (const counts& c : l.per_thread) sum.add(c);
    long requests = 0;
    for (long n : sum.n) requests += n;
    std::printf("requests %ld\n", requests);
    for (int i = 0; i < n_outcomes; ++i) std::printf("%s %ld\n", outcome_name[i], sum.n[i]);
    std::printf("fresh %ld\nkept %ld\nreconnects %ld\nreq_per_s %.0f\n", sum.fresh, sum.kept, sum.reconnects,
                static_cast<double>(requests) / elapsed_s);
    std::printf("restarts %ld\nrestart_errors %ld\nrestart_call_us_p50 %.0f\nrestart_call_us_max %.0f\n", restarts,
                errors, percentile(us, 0.5), us.empty() ? -1.0 : *std::max_element(us.begin(), us.end()));
}

/// final_check: one GET /hello on a fresh connection after the storm.
bool final_check(std::uint16_t port) {
    const bool ok = one_request(port, 5000) >= 0;
    std::printf("final_check %s\n", ok ? "ok" : "failed");
    return ok;
}

int storm_rs(const args& a, load& l) {
    pin_this_thread(a.server_cpus);  // before start(): the server's threads inherit it
    rs::server srv;
    add_routes(srv);
    srv.set_listener(rs::tcp_listener("127.0.0.1", 0));
    std::error_code ec;
    srv.start(ec);
    if (ec) {
        std::fprintf(stderr, "restart_storm: start: %s\n", ec.message().c_str());
        return 1;
    }
    l.port = srv.port();
    if (a.mode == "rs-cold") srv.set_listener(rs::tcp_listener("127.0.0.1", l.port));  // the same port each start
    storm(a, l, [&] {
        std::error_code e;
        if (a.mode == "rs") {
            srv.restart(e);
        } else {
            srv.stop();
            srv.start(e);
        }
        if (e) std::fprintf(stderr, "restart_storm: restart: %s\n", e.message().c_str());
        return !e;
    });
    const bool ok = final_check(l.port);
    const rs::stop_result r = srv.stop();
    std::printf("stop_cut %zu\nstop_drained %d\n", r.cut, r.drained ? 1 : 0);
    return ok ? 0 : 1;
}

int storm_nginx(const args& a, load& l) {
    pin_this_thread(l.client_cpus);
    l.port = static_cast<std::uint16_t>(a.nginx_port);
    const auto master = static_cast<pid_t>(a.nginx_pid);
    storm(a, l, [&] { return ::kill(master, SIGHUP) == 0; });
    return final_check(l.port) ? 0 : 1;
}

int usage() {
    std::fprintf(stderr,
                 "usage: restart_storm rs|rs-cold SECONDS INTERVAL_MS [--server-cpus LIST] [--client-cpus LIST]\n"
                 "                     [--timeout-ms N] [--clients N]\n"
                 "       restart_storm nginx SECONDS INTERVAL_MS --port PORT --pid MASTER_PID [--client-cpus LIST]\n"
                 "                     [--timeout-ms N] [--clients N]\n");
    return 2;
}

}  // namespace

int main(int argc, char** argv) {
    ::signal(SIGPIPE, SIG_IGN);
    raise_nofile();
    ::alarm(600);  // a hung server must not hang the suite: SIGALRM ends the process
    if (argc < 4 || (argc - 4) % 2 != 0) return usage();
    args a;
    load l;
    a.mode = argv[1];
    a.seconds = std::atof(argv[2]);
    a.interval_ms = std::atol(argv[3]);
    for (int i = 4; i < argc; i += 2) {
        const std::string opt = argv[i];
        const long v = std::atol(argv[i + 1]);
        if (opt == "--port") a.nginx_port = v;
        else if (opt == "--pid") a.nginx_pid = v;
        else if (opt == "--server-cpus") a.server_cpus = cpus::parse(argv[i + 1]);
        else if (opt == "--client-cpus") l.client_cpus = cpus::parse(argv[i + 1]);
        else if (opt == "--timeout-ms") l.timeout = std::chrono::milliseconds(v);
        else if (opt == "--clients") l.clients = static_cast<int>(v);
        else return usage();
    }
    if (a.seconds <= 0 || a.interval_ms <= 0 || l.clients <= 0 || a.server_cpus.first == -2 ||
        l.client_cpus.first == -2)
        return usage();
    if (a.mode == "rs" || a.mode == "rs-cold") return storm_rs(a, l);
    if (a.mode == "nginx" && a.nginx_port > 0 && a.nginx_pid > 0) return storm_nginx(a, l);
    return usage();
}
