// slow_readers.cpp - figure 9 (and 10), fresh requests while clients refuse to read.
//
//   slow_readers PORT MODE ATTACKERS PROBES PROBE_TIMEOUT_MS [SETUP_MS] [INTERVAL_MS]
//                [BODY_MIB] [SERVER_PID] [PATH] [EVENTS]
//
// 1. The attack (a thread of its own): ATTACKERS connections to 127.0.0.1:PORT, each with
//    SO_RCVBUF 4 KiB (set before connect, so the advertised window stays small), that never
//    read a byte:
//      echo      each sends one POST /echo with a BODY_MIB MiB body (default 4), so the
//                server has a BODY_MIB MiB response to write to a client that takes none
//      download  each sends one GET PATH (default /big: the bench servers answer 4 MiB;
//                figure 20: a 20 MiB static file), and takes none
//      pipeline  each sends GET /hello requests back to back, without end, as fast as the
//                server takes them (a flood: the server has as much work as it accepts)
//    No attacker reconnects: a connection the server closes or resets stays closed (counted
//    in attack_closed). The attack keeps pumping until the probes are done.
// 2. Once the attack holds (every attacker connected or refused, and none made progress for
//    300 ms; or SETUP_MS passed, default 5000), PROBES fresh requests, open loop: one every INTERVAL_MS (default 10),
//    each on a new connection (connect + GET /hello + the whole response), each given
//    PROBE_TIMEOUT_MS. So the whole run is bounded: SETUP_MS + PROBES * INTERVAL_MS +
//    PROBE_TIMEOUT_MS, whatever the server does.
// Prints "key value" lines: the attack's state, then answered / timeouts / errors (of
// PROBES), p50_ms and p99_ms over all probes (one not answered counts as slower than any,
// printed "timeout:PROBE_TIMEOUT_MS" when it decides the percentile), max_answered_ms.
// With SERVER_PID: the server's VmRSS, VmHWM and thread count while the attack holds.
// With EVENTS (figure 20): before the attack, EVENTS clients GET /events (a push stream of
// bench/ws_server.cpp) and read it all along, as live subscribers do; events_connected and
// events_received (the "data:" lines all of them read until the probes ended) say they
// were served. ATTACKERS 0 and EVENTS 0 measure the same server idle.
#include "client.hpp"

#include <dirent.h>

#include <atomic>
#include <csignal>
#include <thread>

using namespace bench;

namespace {

enum class mode { echo, download, pipeline };

struct attack_stats {
    std::atomic<bool> ready{false};
    std::atomic<bool> stop{false};
    std::atomic<std::size_t> connected{0}, closed{0}, finished{0};
    std::atomic<unsigned long long> bytes{0};
    double ready_ms = 0;
    bool stalled = false;  // ready because progress stopped (not because SETUP_MS ran out)
};

/// attack: runs in its own thread until stats.stop.
void attack(std::uint16_t port, mode m, std::size_t n, std::size_t body_bytes, double setup_ms, const std::string& path,
            attack_stats& st) {
    struct conn {
        int fd = -1;
        bool connecting = true;
        std::size_t off = 0;  // echo: bytes of head + body sent; pipeline: offset in the ring
    };
    const std::string head = "POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
                             "Content-Length: " + std::to_string(body_bytes) + "\r\n\r\n";
    std::string payload;  // echo: head + body; pipeline: whole requests back to back
    if (m == mode::echo) {
        payload.reserve(head.size() + body_bytes);
        payload = head;
        payload.resize(head.size() + body_bytes, 'x');
    } else if (m == mode::download) {
        payload = get_request(true, path);
    } else {
        const std::string req = get_request(true);
        while (payload.size() < 64 * 1024) payload += req;
    }
    const int ep = ::epoll_create1(EPOLL_CLOEXEC);
    std::vector<conn> cs(n);
    for (std::size_t i = 0; i < n; ++i) {
        int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0) continue;
        int rcv = 4096;
        ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv);
        int one = 1;
        ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        sockaddr_in a = loopback(port);
        if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 && errno != EINPROGRESS) {
            ::close(fd);
            ++st.closed;
            continue;
        }
        cs[i].fd = fd;
        epoll_event ev{};
        ev.events = EPOLLOUT | EPOLLRDHUP;
        ev.data.u64 = i;
        ::epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    }
    std::size_t connecting = 0;
    for (const conn& c : cs) connecting += c.fd >= 0;
    auto t0 = clock::now();
    auto last_progress = t0;
    auto drop = [&](conn& c) {
        if (c.connecting) --connecting;
        ::epoll_ctl(ep, EPOLL_CTL_DEL, c.fd, nullptr);
        ::close(c.fd);
        c.fd = -1;
        ++st.closed;
    };
    std::vector<epoll_event> events(n + 1);
    while (!st.stop.load(std::memory_order_relaxed)) {
        int r = ::epoll_wait(ep, events.data(), static_cast<int>(events.size()), 20);
        if (r < 0 && errno != EINTR) break;
        for (int k = 0; k < r; ++k) {
            conn& c = cs[events[k].data.u64];
            if (c.fd < 0) continue;
            if (c.connecting) {
                int err = 0;
                socklen_t len = sizeof err;
                ::getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len);
                if (err != 0) {
                    drop(c);
                    continue;
                }
                c.connecting = false;
                --connecting;
                ++st.connected;
                last_progress = clock::now();
            }
            if (events[k].events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {  // the server closed it
                drop(c);
                continue;
            }
            if (!(events[k].events & EPOLLOUT)) continue;
            // At most 64 KiB per wake-up, so every attacker keeps pace.
            std::size_t want = std::min<std::size_t>(payload.size() - c.off, 64 * 1024);
            ssize_t w = ::send(c.fd, payload.data() + c.off, want, MSG_NOSIGNAL);
            if (w < 0) {
                if (errno != EAGAIN && errno != EINTR) drop(c);
                continue;
            }
            st.bytes += static_cast<unsigned long long>(w);
            if (w > 0) last_progress = clock::now();
            c.off += static_cast<std::size_t>(w);
            if (m == mode::pipeline) {
                if (c.off == payload.size()) c.off = 0;
            } else if (c.off == payload.size()) {  // sent whole: from now on only watch for a close
                ++st.finished;
                epoll_event ev{};
                ev.events = EPOLLRDHUP;
                ev.data.u64 = events[k].data.u64;
                ::epoll_ctl(ep, EPOLL_CTL_MOD, c.fd, &ev);
            }
        }
        if (!st.ready.load(std::memory_order_relaxed)) {
            auto now = clock::now();
            double since = std::chrono::duration<double, std::milli>(now - last_progress).count();
            const bool stalled = connecting == 0 && since >= 300;
            if (stalled || ms_since(t0) >= setup_ms) {
                st.stalled = stalled;
                st.ready_ms = ms_since(t0);
                st.ready.store(true);
            }
        }
    }
    for (conn& c : cs)
        if (c.fd >= 0) ::close(c.fd);
    ::close(ep);
}

struct events_stats {
    std::atomic<bool> ready{false};
    std::atomic<bool> stop{false};
    std::atomic<std::size_t> connected{0};     // answered 200 with the stream's head
    std::atomic<unsigned long long> events{0};  // "data:" lines read
};

/// events_readers: n clients of GET /events that read everything, until stats.stop; ready
/// once every one has its response head (or 5 s passed).
void events_readers(std::uint16_t port, std::size_t n, events_stats& st) {
    struct reader {
        int fd = -1;
        bool head = false;
        std::string buf;
    };
    const int ep = ::epoll_create1(EPOLL_CLOEXEC);
    std::vector<reader> rs(n);
    const std::string req = get_request(true, "/events");
    for (std::size_t i = 0; i < n; ++i) {
        rs[i].fd = connect_to(port);  // blocking: a connect on loopback is immediate
        if (rs[i].fd < 0 || ::send(rs[i].fd, req.data(), req.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(req.size())) {
            if (rs[i].fd >= 0) ::close(rs[i].fd);
            rs[i].fd = -1;
            continue;
        }
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.u64 = i;
        ::epoll_ctl(ep, EPOLL_CTL_ADD, rs[i].fd, &ev);
    }
    const auto t0 = clock::now();
    std::vector<epoll_event> events(n + 1);
    char tmp[65536];
    while (!st.stop.load(std::memory_order_relaxed)) {
        if (!st.ready.load(std::memory_order_relaxed) && (st.connected.load() == n || ms_since(t0) > 5000))
            st.ready.store(true);
        const int r = ::epoll_wait(ep, events.data(), static_cast<int>(events.size()), 20);
        for (int k = 0; k < r; ++k) {
            reader& rd = rs[events[k].data.u64];
            if (rd.fd < 0) continue;
            const ssize_t got = ::recv(rd.fd, tmp, sizeof tmp, MSG_DONTWAIT);
            if (got < 0 && (errno == EAGAIN || errno == EINTR)) continue;
            if (got <= 0) {
                ::epoll_ctl(ep, EPOLL_CTL_DEL, rd.fd, nullptr);
                ::close(rd.fd);
                rd.fd = -1;
                continue;
            }
            rd.buf.append(tmp, static_cast<std::size_t>(got));
            if (!rd.head) {
                const std::size_t end = rd.buf.find("\r\n\r\n");
                if (end == std::string::npos) continue;
                rd.head = true;
                if (rd.buf.compare(0, 12, "HTTP/1.1 200") == 0) ++st.connected;
                rd.buf.erase(0, end + 4);
            }
            std::size_t pos = 0, at;
            while ((at = rd.buf.find("data:", pos)) != std::string::npos) {
                ++st.events;
                pos = at + 5;
            }
            // Keep at most 4 bytes not yet searched: a "data:" split between two reads.
            rd.buf.erase(0, std::max(pos, rd.buf.size() > 4 ? rd.buf.size() - 4 : 0));
        }
    }
    for (reader& rd : rs)
        if (rd.fd >= 0) ::close(rd.fd);
    ::close(ep);
}

long count_threads(long pid) {
    std::string dir = "/proc/" + std::to_string(pid) + "/task";
    DIR* d = ::opendir(dir.c_str());
    if (!d) return -1;
    long n = 0;
    while (dirent* e = ::readdir(d))
        if (e->d_name[0] != '.') ++n;
    ::closedir(d);
    return n;
}

/// probe_all: PROBES fresh GET /hello requests, one started every interval_ms, each with
/// timeout_ms; their latencies in ms, -1 for a timeout, -2 for an error (refused, reset,
/// closed early, not 200).
std::vector<double> probe_all(std::uint16_t port, std::size_t probes, double interval_ms, double timeout_ms) {
    struct probe {
        int fd = -1;
        clock::time_point start;
        bool sent = false;
        response_parser p;
    };
    std::vector<double> result(probes, -1);
    std::vector<probe> ps(probes);
    const std::string req = get_request(true);
    const int ep = ::epoll_create1(EPOLL_CLOEXEC);
    const auto t0 = clock::now();
    const auto timeout = std::chrono::microseconds(static_cast<long long>(timeout_ms * 1000));
    std::size_t started = 0, pending = 0;
    std::vector<epoll_event> events(256);
    char tmp[16384];
    auto finish = [&](std::size_t i, double v) {
        ::epoll_ctl(ep, EPOLL_CTL_DEL, ps[i].fd, nullptr);
        ::close(ps[i].fd);
        ps[i].fd = -1;
        result[i] = v;
        --pending;
    };
    while (started < probes || pending > 0) {
        auto now = clock::now();
        while (started < probes && now >= t0 + std::chrono::microseconds(static_cast<long long>(
                                                    static_cast<double>(started) * interval_ms * 1000))) {
            probe& pr = ps[started];
            pr.start = clock::now();
            pr.fd = connect_to(port, true);
            if (pr.fd < 0) {
                result[started] = -2;
            } else {
                epoll_event ev{};
                ev.events = EPOLLOUT;
                ev.data.u64 = started;
                ::epoll_ctl(ep, EPOLL_CTL_ADD, pr.fd, &ev);
                ++pending;
            }
            ++started;
        }
        for (std::size_t i = 0; i < started; ++i)  // timeouts
            if (ps[i].fd >= 0 && now - ps[i].start >= timeout) finish(i, -1);
        if (started == probes && pending == 0) break;
        // Sleep until the next start or the first timeout, at most 10 ms.
        int wait_ms = 10;
        if (started < probes) {
            auto next = t0 + std::chrono::microseconds(static_cast<long long>(static_cast<double>(started) * interval_ms * 1000));
            wait_ms = std::min<int>(wait_ms, static_cast<int>(std::chrono::ceil<std::chrono::milliseconds>(next - now).count()));
        }
        int r = ::epoll_wait(ep, events.data(), static_cast<int>(events.size()), std::max(wait_ms, 0));
        if (r < 0 && errno != EINTR) break;
        for (int k = 0; k < r; ++k) {
            const std::size_t i = events[k].data.u64;
            probe& pr = ps[i];
            if (pr.fd < 0) continue;
            if (!pr.sent) {
                int err = 0;
                socklen_t len = sizeof err;
                ::getsockopt(pr.fd, SOL_SOCKET, SO_ERROR, &err, &len);
                if (err != 0 || ::send(pr.fd, req.data(), req.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(req.size())) {
                    finish(i, -2);
                    continue;
                }
                pr.sent = true;
                epoll_event ev{};
                ev.events = EPOLLIN;
                ev.data.u64 = i;
                ::epoll_ctl(ep, EPOLL_CTL_MOD, pr.fd, &ev);
                continue;
            }
            ssize_t got = ::recv(pr.fd, tmp, sizeof tmp, MSG_DONTWAIT);
            if (got < 0 && (errno == EAGAIN || errno == EINTR)) continue;
            if (got <= 0) {
                finish(i, -2);
                continue;
            }
            if (pr.p.feed(tmp, static_cast<std::size_t>(got))) {
                if (pr.p.status == 200)
                    finish(i, ms_since(pr.start));
                else
                    finish(i, -2);
            }
        }
    }
    ::close(ep);
    return result;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 6) {
        std::fprintf(stderr,
                     "usage: slow_readers PORT echo|download|pipeline ATTACKERS PROBES PROBE_TIMEOUT_MS [SETUP_MS] "
                     "[INTERVAL_MS] [BODY_MIB] [SERVER_PID] [PATH] [EVENTS]\n");
        return 2;
    }
    std::signal(SIGPIPE, SIG_IGN);
    const auto port = static_cast<std::uint16_t>(std::atoi(argv[1]));
    const std::string mode_name = argv[2];
    if (mode_name != "echo" && mode_name != "download" && mode_name != "pipeline") {
        std::fprintf(stderr, "slow_readers: MODE is echo, download or pipeline\n");
        return 2;
    }
    const mode m = mode_name == "echo" ? mode::echo : mode_name == "download" ? mode::download : mode::pipeline;
    const std::size_t attackers = std::strtoul(argv[3], nullptr, 10);
    const std::size_t probes = std::strtoul(argv[4], nullptr, 10);
    const double timeout_ms = std::atof(argv[5]);
    const double setup_ms = argc > 6 ? std::atof(argv[6]) : 5000;
    const double interval_ms = argc > 7 ? std::atof(argv[7]) : 10;
    const std::size_t body_bytes = (argc > 8 ? std::strtoul(argv[8], nullptr, 10) : 4) << 20;
    const long pid = argc > 9 ? std::atol(argv[9]) : 0;
    const std::string path = argc > 10 ? argv[10] : "/big";
    const std::size_t n_events = argc > 11 ? std::strtoul(argv[11], nullptr, 10) : 0;
    raise_nofile();
    // Whatever happens, the process ends: the bound above plus a margin.
    ::alarm(static_cast<unsigned>((setup_ms + static_cast<double>(probes) * interval_ms + timeout_ms) / 1000) + 30);

    events_stats ev;
    std::thread subscribers;
    if (n_events > 0) {
        subscribers = std::thread([&] { events_readers(port, n_events, ev); });
        while (!ev.ready.load()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    attack_stats st;
    std::thread attacker([&] { attack(port, m, attackers, body_bytes, setup_ms, path, st); });
    while (!st.ready.load()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    std::printf("mode %s\nattackers %zu\nattack_connected %zu\nattack_ready_ms %.0f\nattack_stalled %d\n",
                mode_name.c_str(), attackers, st.connected.load(), st.ready_ms, st.stalled ? 1 : 0);
    std::printf("attack_sent_mib_at_ready %.1f\n", static_cast<double>(st.bytes.load()) / 1048576.0);
    if (m != mode::pipeline) std::printf("attack_requests_sent_at_ready %zu\n", st.finished.load());
    if (pid > 0)
        std::printf("server_rss_kb %ld\nserver_hwm_kb %ld\nserver_threads %ld\n", proc_status_kb(pid, "VmRSS"),
                    proc_status_kb(pid, "VmHWM"), count_threads(pid));
    std::fflush(stdout);

    const auto t_probe = clock::now();
    std::vector<double> lat = probe_all(port, probes, interval_ms, timeout_ms);
    const double probe_ms = ms_since(t_probe);
    st.stop.store(true);
    attacker.join();
    ev.stop.store(true);
    if (subscribers.joinable()) subscribers.join();
    if (n_events > 0) std::printf("events_clients %zu\nevents_connected %zu\nevents_received %llu\n", n_events,
                                  ev.connected.load(), ev.events.load());

    std::size_t answered = 0, timeouts = 0, errors = 0;
    std::vector<double> all, ok;
    double max_ok = 0;
    for (double v : lat) {
        if (v >= 0) {
            ++answered;
            ok.push_back(v);
            max_ok = std::max(max_ok, v);
            all.push_back(v);
        } else {
            (v == -1 ? timeouts : errors) += 1;
            all.push_back(1e300);
        }
    }
    std::printf("attack_sent_mib %.1f\nattack_closed %zu\n", static_cast<double>(st.bytes.load()) / 1048576.0,
                st.closed.load());
    std::printf("probes %zu\nprobe_phase_ms %.0f\nanswered %zu\ntimeouts %zu\nerrors %zu\nunanswered %zu\n", probes,
                probe_ms, answered, timeouts, errors, timeouts + errors);
    for (auto [name, q] : {std::pair<const char*, double>{"p50_ms", 0.5}, {"p99_ms", 0.99}}) {
        double v = percentile(all, q);
        if (v >= 1e299)
            std::printf("%s timeout:%.0f\n", name, timeout_ms);
        else
            std::printf("%s %.3f\n", name, v);
    }
    if (!ok.empty()) std::printf("max_answered_ms %.3f\n", max_ok);
    return 0;
}
