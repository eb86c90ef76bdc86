// client.hpp - the small blocking/non-blocking HTTP/1.1 client pieces the bench tools share.
// Linux only, loopback only. Not part of the library.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

namespace bench {

using clock = std::chrono::steady_clock;

inline double ms_since(clock::time_point t0) {
    return std::chrono::duration<double, std::milli>(clock::now() - t0).count();
}

/// raise_nofile: RLIMIT_NOFILE soft limit up to the hard limit; returns the new soft limit.
inline rlim_t raise_nofile() {
    rlimit rl{};
    if (::getrlimit(RLIMIT_NOFILE, &rl) != 0) return 0;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        ::setrlimit(RLIMIT_NOFILE, &rl);
        ::getrlimit(RLIMIT_NOFILE, &rl);
    }
    return rl.rlim_cur;
}

inline sockaddr_in loopback(std::uint16_t port) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

/// connect_to: a connected TCP socket (blocking unless nonblock), or -1. A non-blocking
/// connect may still be in progress (EINPROGRESS) when it returns.
inline int connect_to(std::uint16_t port, bool nonblock = false) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | (nonblock ? SOCK_NONBLOCK : 0), 0);
    if (fd < 0) return -1;
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    sockaddr_in a = loopback(port);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 && errno != EINPROGRESS) {
        ::close(fd);
        return -1;
    }
    return fd;
}

inline std::string get_request(bool keep_alive = true, std::string_view path = "/hello") {
    std::string r = "GET ";
    r += path;
    r += " HTTP/1.1\r\nHost: 127.0.0.1\r\n";
    if (!keep_alive) r += "Connection: close\r\n";
    r += "\r\n";
    return r;
}

/// response_parser: finds where one response ends in a byte stream (Content-Length framing).
struct response_parser {
    std::string buf;
    int status = 0;
    std::size_t total = 0;  // head + body once the head is complete, else 0
    bool close = false;     // the response said "Connection: close"

    void reset() {
        buf.clear();
        status = 0;
        total = 0;
        close = false;
    }
    /// feed: appends bytes; returns true once a whole response is in buf.
    bool feed(const char* p, std::size_t n) {
        buf.append(p, n);
        return complete();
    }
    bool complete() {
        if (total == 0) {
            std::size_t end = buf.find("\r\n\r\n");
            if (end == std::string::npos) return false;
            if (buf.size() < 12 || buf.compare(0, 5, "HTTP/") != 0) {
                status = -1;
                total = end + 4;
                return true;
            }
            status = std::atoi(buf.c_str() + 9);
            std::size_t len = 0;
            std::size_t pos = 0;
            while ((pos = buf.find('\n', pos)) != std::string::npos && pos < end) {
                ++pos;
                static constexpr char cl[] = "content-length:";
                static constexpr char conn[] = "connection:";
                if (end - pos >= sizeof cl - 1 && strncasecmp(buf.c_str() + pos, cl, sizeof cl - 1) == 0)
                    len = std::strtoull(buf.c_str() + pos + sizeof cl - 1, nullptr, 10);
                if (end - pos >= sizeof conn - 1 && strncasecmp(buf.c_str() + pos, conn, sizeof conn - 1) == 0) {
                    std::size_t eol = buf.find('\r', pos);
                    std::string v = buf.substr(pos + sizeof conn - 1, eol - pos - (sizeof conn - 1));
                    for (char& c : v) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
                    close = v.find("close") != std::string::npos;
                }
            }
            total = end + 4 + len;
        }
        return buf.size() >= total;
    }
    /// consume: drops the response just completed, keeping any bytes after it.
    void consume() {
        buf.erase(0, total);
        status = 0;
        total = 0;
        close = false;
    }
};

/// send_all_blocking: writes everything, waiting with poll up to deadline.
inline bool send_all(int fd, const char* p, std::size_t n, clock::time_point deadline) {
    while (n != 0) {
        ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
        if (w > 0) {
            p += w;
            n -= static_cast<std::size_t>(w);
            continue;
        }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            int ms = static_cast<int>(std::chrono::ceil<std::chrono::milliseconds>(deadline - clock::now()).count());
            if (ms <= 0) return false;
            pollfd pf{fd, POLLOUT, 0};
            if (::poll(&pf, 1, ms) <= 0) return false;
            continue;
        }
        return false;
    }
    return true;
}

/// read_response: reads until p holds one whole response, or until deadline / EOF / error.
/// Works on blocking and non-blocking sockets (it polls first).
inline bool read_response(int fd, response_parser& p, clock::time_point deadline) {
    char tmp[65536];
    while (!p.complete()) {
        int ms = static_cast<int>(std::chrono::ceil<std::chrono::milliseconds>(deadline - clock::now()).count());
        if (ms <= 0) return false;
        pollfd pf{fd, POLLIN, 0};
        int r = ::poll(&pf, 1, ms);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return false;
        ssize_t n = ::recv(fd, tmp, sizeof tmp, MSG_DONTWAIT);
        if (n > 0) {
            p.buf.append(tmp, static_cast<std::size_t>(n));
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
        return false;  // EOF or error before the response was complete
    }
    return true;
}

/// wait_eof: waits until the peer closes (recv returns 0) or deadline; true on EOF.
inline bool wait_eof(int fd, clock::time_point deadline) {
    char tmp[4096];
    for (;;) {
        int ms = static_cast<int>(std::chrono::ceil<std::chrono::milliseconds>(deadline - clock::now()).count());
        if (ms <= 0) return false;
        pollfd pf{fd, POLLIN, 0};
        int r = ::poll(&pf, 1, ms);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return false;
        ssize_t n = ::recv(fd, tmp, sizeof tmp, MSG_DONTWAIT);
        if (n == 0) return true;
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
        if (n < 0) return true;  // reset: closed too
    }
}

/// one_request: connect, GET path, read the whole response; the latency in ms or -1.
inline double one_request(std::uint16_t port, double timeout_ms, int* status = nullptr) {
    auto t0 = clock::now();
    auto deadline = t0 + std::chrono::microseconds(static_cast<long long>(timeout_ms * 1000));
    int fd = connect_to(port, true);
    if (fd < 0) return -1;
    std::string req = get_request(true);
    response_parser p;
    bool ok = send_all(fd, req.data(), req.size(), deadline) && read_response(fd, p, deadline);
    double ms = ms_since(t0);
    ::close(fd);
    if (status) *status = p.status;
    return ok && p.status == 200 ? ms : -1;
}

/// idle_set: connections that each made one keep-alive request (see open_idle).
struct idle_set {
    std::vector<int> fds;        // every socket opened (answered or not), -1 where it failed
    std::vector<char> answered;  // 1 where the first request got its 200 response
    std::size_t connected = 0;   // connects that succeeded
    std::size_t n_answered = 0;
    void close_all() {
        for (int& fd : fds)
            if (fd >= 0) ::close(fd), fd = -1;
    }
};

/// open_idle: opens n connections to 127.0.0.1:port (at most max_connecting handshakes in
/// flight), sends one keep-alive GET /hello on each, and reads the responses until every
/// connection has answered or failed, or until deadline. The sockets stay open.
inline idle_set open_idle(std::uint16_t port, std::size_t n, clock::time_point deadline,
                          std::size_t max_connecting = 128) {
    enum : char { connecting, sent, idle, failed };
    idle_set s;
    s.fds.assign(n, -1);
    s.answered.assign(n, 0);
    std::vector<char> state(n, failed);
    std::vector<response_parser> parsers(n);
    const std::string req = get_request(true);
    int ep = ::epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) return s;
    std::size_t next = 0, in_handshake = 0, pending = 0;  // pending: connecting or sent
    bool open_failed = false;
    std::vector<epoll_event> events(1024);
    char tmp[4096];
    auto settle = [&](std::size_t i, char st) {
        ::epoll_ctl(ep, EPOLL_CTL_DEL, s.fds[i], nullptr);
        if (st == failed) ::close(s.fds[i]), s.fds[i] = -1;
        state[i] = st;
        --pending;
    };
    for (;;) {
        while (!open_failed && next < n && in_handshake < max_connecting) {
            int fd = connect_to(port, true);
            if (fd < 0) {  // out of descriptors or ports: keep what we have
                open_failed = true;
                break;
            }
            s.fds[next] = fd;
            state[next] = connecting;
            epoll_event ev{};
            ev.events = EPOLLOUT;
            ev.data.u64 = next;
            ::epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
            ++next, ++in_handshake, ++pending;
        }
        if (pending == 0 && (next == n || open_failed)) break;
        int ms = static_cast<int>(std::chrono::ceil<std::chrono::milliseconds>(deadline - clock::now()).count());
        if (ms <= 0) break;
        int r = ::epoll_wait(ep, events.data(), static_cast<int>(events.size()), std::min(ms, 100));
        if (r < 0 && errno != EINTR) break;
        for (int k = 0; k < r; ++k) {
            const std::size_t i = events[k].data.u64;
            const int fd = s.fds[i];
            if (state[i] == connecting) {
                --in_handshake;
                int err = 0;
                socklen_t len = sizeof err;
                ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
                if (err != 0 || ::send(fd, req.data(), req.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(req.size())) {
                    settle(i, failed);
                    continue;
                }
                ++s.connected;
                state[i] = sent;
                epoll_event ev{};
                ev.events = EPOLLIN;
                ev.data.u64 = i;
                ::epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
            } else if (state[i] == sent) {
                ssize_t got = ::recv(fd, tmp, sizeof tmp, MSG_DONTWAIT);
                if (got < 0 && (errno == EAGAIN || errno == EINTR)) continue;
                if (got <= 0) {
                    settle(i, failed);
                    continue;
                }
                if (parsers[i].feed(tmp, static_cast<std::size_t>(got))) {
                    if (parsers[i].status == 200) {
                        s.answered[i] = 1;
                        ++s.n_answered;
                        settle(i, idle);
                    } else {
                        settle(i, failed);
                    }
                }
            }
        }
    }
    ::close(ep);
    return s;
}

/// proc_status_kb: a "VmRSS"-style field of /proc/PID/status in kB, or -1.
inline long proc_status_kb(long pid, const char* field) {
    std::ifstream f("/proc/" + std::to_string(pid) + "/status");
    std::string line;
    std::size_t n = std::strlen(field);
    while (std::getline(f, line))
        if (line.compare(0, n, field) == 0 && line.size() > n && line[n] == ':') return std::atol(line.c_str() + n + 1);
    return -1;
}

inline double percentile(std::vector<double> v, double q) {
    if (v.empty()) return -1;
    std::sort(v.begin(), v.end());
    std::size_t i = static_cast<std::size_t>(q * static_cast<double>(v.size() - 1) + 0.5);
    return v[std::min(i, v.size() - 1)];
}

}  // namespace bench
