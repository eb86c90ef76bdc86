// ws_load.cpp - the WebSocket load generator of figures 16-18: one thread, epoll, its own
// RFC 6455 client (the opening handshake with a random Sec-WebSocket-Key, whose
// Sec-WebSocket-Accept it checks; masked frames with a fresh random mask each, as a
// browser sends them). Linux, 127.0.0.1 only. Not part of the library.
//
//   ws_load echo PORT PATH CONNS SECONDS [SERVER_PID] [MSG_BYTES]
//       CONNS WebSockets to PATH; once all are open, each sends a text message of
//       MSG_BYTES (default 32), waits for its echo (checked byte for byte), sends the next:
//       one message in flight per connection, for SECONDS. Prints messages, msgs_per_s,
//       p50_us, p99_us (send to whole echo), errors, and with SERVER_PID the server's CPU
//       time per message (server_cpu_us: utime + stime of /proc/PID/stat over the timed
//       window) and this process's own CPU use over it (client_cpu_pct, of one CPU).
//   ws_load idle ws|http PORT N SERVER_PID [PATH]
//       VmRSS and threads of SERVER_PID, then N connections, each a WebSocket to PATH
//       (default /echo) or a keep-alive GET /hello answered 200, left open; 500 ms later
//       VmRSS and threads again: kib_per_conn = (after - before) / N. Then one message (ws)
//       or request (http) on each of them: answered_again counts those that still answer.
//       Source addresses 127.0.0.1, .2, ... one per 20,000 connections (ports run short).
//   ws_load wait PORT TIMEOUT_MS [PATH]
//       exit 0 once a WebSocket to PATH (default /echo) opens and echoes one message, 1
//       after TIMEOUT_MS (run.sh's readiness check for the three echo servers).
//   ws_load broadcast PORT N ROUNDS
//       N WebSockets to /bcast (bench/ws_server.cpp); each round sends "go" on the first,
//       and waits (5 s at most) until every one of the N has the message it triggers. The
//       server puts into the message its steady clock just before its first send_text()
//       (CLOCK_MONOTONIC: one clock for every process of the machine), so
//       last_ms = the last socket's arrival - that time, first_ms likewise. Prints per
//       round, then the medians over rounds (last_ms_p50, first_ms_p50) and received_min
//       (the fewest sockets that had a round's message).
// server_runq_wait_ms_per_s (echo, with SERVER_PID): how long the server's threads were
// runnable but waited for a CPU, per second of the window (/proc/PID/task/*/schedstat; not
// every kernel has it): near 0 when the server's CPU is its own.
// Output: "key value" lines. Exit status 0 when the figure was measured (see each mode).
#include "client.hpp"

#include <dirent.h>
#include <sys/resource.h>

#include <array>
#include <climits>
#include <csignal>
#include <iterator>
#include <map>
#include <random>
#include <sstream>
#include <thread>

using namespace bench;

namespace {

// -------------------------------------------------------------- sha1/base64 --

std::array<unsigned char, 20> sha1(const std::string& msg) {
    std::uint32_t h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
    std::string m = msg;
    const std::uint64_t bits = static_cast<std::uint64_t>(msg.size()) * 8;
    m += static_cast<char>(0x80);
    while (m.size() % 64 != 56) m += '\0';
    for (int i = 7; i >= 0; --i) m += static_cast<char>((bits >> (i * 8)) & 0xff);
    auto rol = [](std::uint32_t x, int n) { return (x << n) | (x >> (32 - n)); };
    for (std::size_t off = 0; off < m.size(); off += 64) {
        std::uint32_t w[80];
        for (int i = 0; i < 16; ++i)
            w[i] = static_cast<std::uint32_t>(static_cast<unsigned char>(m[off + 4 * i])) << 24 |
                   static_cast<std::uint32_t>(static_cast<unsigned char>(m[off + 4 * i + 1])) << 16 |
                   static_cast<std::uint32_t>(static_cast<unsigned char>(m[off + 4 * i + 2])) << 8 |
                   static_cast<std::uint32_t>(static_cast<unsigned char>(m[off + 4 * i + 3]));
        for (int i = 16; i < 80; ++i) w[i] = rol(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
        std::uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
        for (int i = 0; i < 80; ++i) {
            std::uint32_t f, k;
            if (i < 20) f = (b & c) | (~b & d), k = 0x5A827999;
            else if (i < 40) f = b ^ c ^ d, k = 0x6ED9EBA1;
            else if (i < 60) f = (b & c) | (b & d) | (c & d), k = 0x8F1BBCDC;
            else f = b ^ c ^ d, k = 0xCA62C1D6;
            const std::uint32_t t = rol(a, 5) + f + e + k + w[i];
            e = d, d = c, c = rol(b, 30), b = a, a = t;
        }
        h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e;
    }
    std::array<unsigned char, 20> out{};
    for (int i = 0; i < 20; ++i) out[i] = static_cast<unsigned char>(h[i / 4] >> (24 - 8 * (i % 4)));
    return out;
}

std::string base64(const unsigned char* p, std::size_t n) {
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    for (std::size_t i = 0; i < n; i += 3) {
        std::uint32_t v = static_cast<std::uint32_t>(p[i]) << 16;
        if (i + 1 < n) v |= static_cast<std::uint32_t>(p[i + 1]) << 8;
        if (i + 2 < n) v |= p[i + 2];
        out += tab[(v >> 18) & 63];
        out += tab[(v >> 12) & 63];
        out += i + 1 < n ? tab[(v >> 6) & 63] : '=';
        out += i + 2 < n ? tab[v & 63] : '=';
    }
    return out;
}

std::mt19937_64 rng{std::random_device{}()};

// ------------------------------------------------------------------- frames --

/// append_frame: a masked client frame (FIN set) with a fresh random mask.
void append_frame(std::string& out, unsigned opcode, std::string_view payload) {
    out += static_cast<char>(0x80 | opcode);
    const std::size_t n = payload.size();
    if (n < 126) {
        out += static_cast<char>(0x80 | n);
    } else if (n <= 0xffff) {
        out += static_cast<char>(0x80 | 126);
        out += static_cast<char>(n >> 8);
        out += static_cast<char>(n & 0xff);
    } else {
        out += static_cast<char>(0x80 | 127);
        for (int i = 7; i >= 0; --i) out += static_cast<char>((static_cast<std::uint64_t>(n) >> (8 * i)) & 0xff);
    }
    const std::uint32_t mask = static_cast<std::uint32_t>(rng());
    char m[4];
    std::memcpy(m, &mask, 4);
    out.append(m, 4);
    const std::size_t at = out.size();
    out.append(payload);
    for (std::size_t i = 0; i < n; ++i) out[at + i] = static_cast<char>(out[at + i] ^ m[i & 3]);
}

struct frame {
    unsigned opcode = 0;
    bool fin = false;
    std::string_view payload;
    std::size_t size = 0;  // of the whole frame in the buffer; 0: incomplete
    bool bad = false;      // masked or reserved bits from the server
};

/// parse_frame: the first server frame in buf (unmasked, as RFC 6455 5.1 requires).
frame parse_frame(const std::string& buf, std::size_t from) {
    frame f;
    const std::size_t avail = buf.size() - from;
    if (avail < 2) return f;
    const auto* p = reinterpret_cast<const unsigned char*>(buf.data() + from);
    f.fin = (p[0] & 0x80) != 0;
    f.opcode = p[0] & 0x0f;
    if ((p[0] & 0x70) != 0 || (p[1] & 0x80) != 0) {
        f.bad = true;
        f.size = avail;
        return f;
    }
    std::uint64_t n = p[1] & 0x7f;
    std::size_t head = 2;
    if (n == 126) {
        if (avail < 4) return f;
        n = static_cast<std::uint64_t>(p[2]) << 8 | p[3];
        head = 4;
    } else if (n == 127) {
        if (avail < 10) return f;
        n = 0;
        for (int i = 0; i < 8; ++i) n = n << 8 | p[2 + i];
        head = 10;
    }
    if (avail < head + n) return f;
    f.payload = std::string_view(buf.data() + from + head, static_cast<std::size_t>(n));
    f.size = head + static_cast<std::size_t>(n);
    return f;
}

// -------------------------------------------------------------- connections --

enum class kind { ws, http };

struct conn {
    int fd = -1;
    enum state_t : unsigned char { connecting, handshaking, open, failed } state = connecting;
    std::string in, out;
    std::size_t in_off = 0;        // parsed up to here
    std::string accept;            // the Sec-WebSocket-Accept expected
    std::string expect;            // echo: the message in flight
    clock::time_point sent_at;
    bool waiting = false;          // a message or request is in flight
    bool want_out = false;         // registered for EPOLLOUT
    response_parser http;          // http idle connections
    clock::time_point got_at;      // broadcast: when this round's message came
    bool got = false;
    std::size_t echoes = 0;        // echo: echoes counted in the window
};

struct client {
    int ep = -1;
    std::uint16_t port = 0;
    std::string path = "/echo";
    kind k = kind::ws;
    std::vector<conn> cs;
    std::size_t sources = 1;
    std::size_t n_open = 0, n_failed = 0;
    std::size_t frame_errors = 0;

    client() { ep = ::epoll_create1(EPOLL_CLOEXEC); }
    ~client() {
        for (conn& c : cs)
            if (c.fd >= 0) ::close(c.fd);
        ::close(ep);
    }

    void fail(conn& c) {
        if (c.state == conn::open) --n_open;
        c.state = conn::failed;
        ++n_failed;
        if (c.fd >= 0) {
            ::epoll_ctl(ep, EPOLL_CTL_DEL, c.fd, nullptr);
            ::close(c.fd);
        }
        c.fd = -1;
    }

    void arm(conn& c, std::size_t i, bool out) {
        epoll_event ev{};
        ev.events = EPOLLIN | (out ? EPOLLOUT : 0u);
        ev.data.u64 = i;
        ::epoll_ctl(ep, EPOLL_CTL_MOD, c.fd, &ev);
        c.want_out = out;
    }

    /// flush: sends c.out; arms EPOLLOUT for what the socket did not take.
    bool flush(conn& c, std::size_t i) {
        while (!c.out.empty()) {
            const ssize_t w = ::send(c.fd, c.out.data(), c.out.size(), MSG_NOSIGNAL);
            if (w > 0) {
                c.out.erase(0, static_cast<std::size_t>(w));
                continue;
            }
            if (w < 0 && errno == EINTR) continue;
            if (w < 0 && errno == EAGAIN) {
                if (!c.want_out) arm(c, i, true);
                return true;
            }
            fail(c);
            return false;
        }
        if (c.want_out) arm(c, i, false);
        return true;
    }

    int open_socket(std::size_t i) {
        const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0) return -1;
        int one = 1;
        ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (sources > 1) {  // 127.0.0.(1 + i % sources): 28k ephemeral ports per address
            ::setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
            sockaddr_in src{};
            src.sin_family = AF_INET;
            src.sin_addr.s_addr = htonl(INADDR_LOOPBACK + static_cast<std::uint32_t>(i % sources));
            if (::bind(fd, reinterpret_cast<sockaddr*>(&src), sizeof src) != 0) {
                ::close(fd);
                return -1;
            }
        }
        sockaddr_in a = loopback(port);
        if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 && errno != EINPROGRESS) {
            ::close(fd);
            return -1;
        }
        return fd;
    }

    /// on_writable_connecting: the connect finished: send the handshake (or the GET).
    void connected(conn& c, std::size_t i) {
        int err = 0;
        socklen_t len = sizeof err;
        ::getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0) return fail(c);
        c.state = conn::handshaking;
        if (k == kind::ws) {
            unsigned char key[16];
            for (unsigned char& b : key) b = static_cast<unsigned char>(rng());
            const std::string k64 = base64(key, sizeof key);
            const auto digest = sha1(k64 + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
            c.accept = base64(digest.data(), digest.size());
            c.out = "GET " + path + " HTTP/1.1\r\nHost: 127.0.0.1:" + std::to_string(port) +
                    "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + k64 +
                    "\r\nSec-WebSocket-Version: 13\r\nOrigin: http://127.0.0.1:" + std::to_string(port) + "\r\n\r\n";
        } else {
            c.out = get_request(true);
        }
        arm(c, i, false);
        flush(c, i);
    }

    /// handshake_read: bytes of the 101 (or the 200) came.
    void handshake_read(conn& c) {
        if (k == kind::http) {
            if (!c.http.complete()) return;
            if (c.http.status != 200) return fail(c);
            c.http.consume();
            c.state = conn::open;
            ++n_open;
            return;
        }
        const std::size_t end = c.in.find("\r\n\r\n");
        if (end == std::string::npos) return;
        const std::string head = c.in.substr(0, end + 2);
        bool ok = head.compare(0, 12, "HTTP/1.1 101") == 0;
        std::string lower = head;
        for (char& ch : lower) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
        const std::size_t at = lower.find("\r\nsec-websocket-accept:");
        if (!ok || at == std::string::npos) return fail(c);
        std::size_t v = at + 23;
        while (v < head.size() && head[v] == ' ') ++v;
        const std::size_t eol = head.find("\r\n", v);
        if (head.substr(v, eol - v) != c.accept) return fail(c);
        c.in.erase(0, end + 4);
        c.state = conn::open;
        ++n_open;
    }

    /// read_some: reads what is there into c.in (or c.http.buf); false on EOF or error.
    bool read_some(conn& c) {
        char tmp[65536];
        for (;;) {
            const ssize_t r = ::recv(c.fd, tmp, sizeof tmp, MSG_DONTWAIT);
            if (r > 0) {
                if (k == kind::http)
                    c.http.buf.append(tmp, static_cast<std::size_t>(r));
                else
                    c.in.append(tmp, static_cast<std::size_t>(r));
                if (static_cast<std::size_t>(r) < sizeof tmp) return true;
                continue;
            }
            if (r < 0 && errno == EINTR) continue;
            if (r < 0 && errno == EAGAIN) return true;
            return false;
        }
    }

    /// open_all: n connections, at most 256 connecting at once, until all are open or
    /// failed, or until deadline. Returns how many are open.
    std::size_t open_all(std::size_t n, clock::time_point deadline) {
        cs.resize(n);
        std::size_t next = 0, pending = 0;
        std::vector<epoll_event> evs(1024);
        for (;;) {
            while (next < n && pending < 256) {
                conn& c = cs[next];
                c.fd = open_socket(next);
                if (c.fd < 0) {
                    c.state = conn::failed;
                    ++n_failed;
                } else {
                    epoll_event ev{};
                    ev.events = EPOLLOUT;
                    ev.data.u64 = next;
                    ::epoll_ctl(ep, EPOLL_CTL_ADD, c.fd, &ev);
                    c.want_out = true;
                    ++pending;
                }
                ++next;
            }
            if (pending == 0 && next == n) break;
            const int ms = static_cast<int>(std::chrono::ceil<std::chrono::milliseconds>(deadline - clock::now()).count());
            if (ms <= 0) break;
            const int r = ::epoll_wait(ep, evs.data(), static_cast<int>(evs.size()), std::min(ms, 100));
            for (int e = 0; e < r; ++e) {
                const std::size_t i = evs[e].data.u64;
                conn& c = cs[i];
                if (c.state == conn::failed || c.state == conn::open) continue;
                const conn::state_t before = c.state;
                if (c.state == conn::connecting) {
                    connected(c, i);
                } else if (evs[e].events & EPOLLOUT) {
                    flush(c, i);
                }
                if (c.state == conn::handshaking && (evs[e].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) {
                    if (!read_some(c))
                        fail(c);
                    else
                        handshake_read(c);
                }
                if (before != c.state && (c.state == conn::open || c.state == conn::failed)) --pending;
            }
        }
        return n_open;
    }

    /// take_frame: the next whole frame of c, answering pings; false when none is whole.
    /// A close or a bad frame fails c (f.bad set).
    bool take_frame(conn& c, std::size_t i, frame& f) {
        for (;;) {
            f = parse_frame(c.in, c.in_off);
            if (f.size == 0) {
                if (c.in_off > 0) {
                    c.in.erase(0, c.in_off);
                    c.in_off = 0;
                }
                return false;
            }
            c.in_off += f.size;
            if (f.bad || f.opcode == 8) {
                ++frame_errors;
                f.bad = true;
                fail(c);
                return false;
            }
            if (f.opcode == 9) {  // ping: pong
                append_frame(c.out, 10, f.payload);
                if (!flush(c, i)) return false;
                continue;
            }
            if (f.opcode == 10) continue;
            if (!f.fin) {  // fragmented: the servers measured here never fragment
                ++frame_errors;
                fail(c);
                return false;
            }
            return true;
        }
    }
};

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

/// cpu_ticks: utime + stime of a process (all its threads), in clock ticks; -1 if unknown.
long long cpu_ticks(long pid) {
    std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
    std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    const std::size_t rp = s.rfind(')');
    if (rp == std::string::npos) return -1;
    std::istringstream in(s.substr(rp + 2));
    std::string field;
    long long ut = 0, st = 0;
    for (int i = 3; i <= 15 && in >> field; ++i) {  // field 3 is the state
        if (i == 14) ut = std::atoll(field.c_str());
        if (i == 15) st = std::atoll(field.c_str());
    }
    return ut + st;
}

/// runq_wait_ns: the time the threads of a process spent runnable but not running (waiting
/// for a CPU), by thread id, from /proc/PID/task/*/schedstat (its second field).
std::map<long, long long> runq_wait_ns(long pid) {
    std::map<long, long long> out;
    const std::string dir = "/proc/" + std::to_string(pid) + "/task";
    DIR* d = ::opendir(dir.c_str());
    if (!d) return out;
    while (dirent* e = ::readdir(d)) {
        if (e->d_name[0] == '.') continue;
        std::ifstream f(dir + "/" + e->d_name + "/schedstat");
        long long run = 0, wait = 0;
        if (f >> run >> wait) out[std::atol(e->d_name)] = wait;
    }
    ::closedir(d);
    return out;
}

double self_cpu_s() {
    rusage ru{};
    ::getrusage(RUSAGE_SELF, &ru);
    return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

std::string message(std::size_t bytes, std::uint64_t seq) {
    std::string m = "m" + std::to_string(seq) + " ";
    while (m.size() < bytes) m += static_cast<char>('a' + rng() % 26);
    m.resize(bytes);
    return m;
}

// --------------------------------------------------------------------- echo --

int run_echo(std::uint16_t port, const std::string& path, std::size_t n, double seconds, long pid, std::size_t bytes) {
    client cl;
    cl.port = port;
    cl.path = path;
    const std::size_t opened = cl.open_all(n, clock::now() + std::chrono::seconds(10));
    std::printf("conns %zu\nopened %zu\n", n, opened);
    if (opened != n) {
        std::fflush(stdout);
        std::fprintf(stderr, "ws_load: only %zu of %zu WebSockets opened\n", opened, n);
        return 1;
    }
    std::vector<std::uint32_t> lat_ns;
    lat_ns.reserve(1 << 20);
    std::uint64_t seq = 0, wrong = 0;
    const long hz = ::sysconf(_SC_CLK_TCK);
    const long long cpu0 = pid > 0 ? cpu_ticks(pid) : -1;
    const auto wait0 = pid > 0 ? runq_wait_ns(pid) : std::map<long, long long>{};
    const double self0 = self_cpu_s();
    const auto t0 = clock::now();
    const auto end = t0 + std::chrono::microseconds(static_cast<long long>(seconds * 1e6));
    auto send_next = [&](conn& c, std::size_t i) {
        c.expect = message(bytes, ++seq);
        append_frame(c.out, 1, c.expect);
        c.sent_at = clock::now();
        c.waiting = true;
        cl.flush(c, i);
    };
    for (std::size_t i = 0; i < n; ++i) send_next(cl.cs[i], i);
    std::vector<epoll_event> evs(256);
    clock::time_point t_end = end;
    bool ended = false;
    auto any_waiting = [&] {
        for (const conn& c : cl.cs)
            if (c.state == conn::open && c.waiting) return true;
        return false;
    };
    for (;;) {
        const auto now = clock::now();
        if (!ended && now >= end) {
            ended = true;
            t_end = now;
        }
        if (ended && (!any_waiting() || now >= end + std::chrono::seconds(1))) break;
        const int r = ::epoll_wait(cl.ep, evs.data(), static_cast<int>(evs.size()), 10);
        for (int e = 0; e < r; ++e) {
            const std::size_t i = evs[e].data.u64;
            conn& c = cl.cs[i];
            if (c.state != conn::open) continue;
            if ((evs[e].events & EPOLLOUT) && !cl.flush(c, i)) continue;
            if (!(evs[e].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) continue;
            if (!cl.read_some(c)) {
                cl.fail(c);
                continue;
            }
            frame f;
            while (c.state == conn::open && cl.take_frame(c, i, f)) {
                const auto got = clock::now();
                if (!c.waiting || f.opcode != 1 || f.payload != c.expect) {
                    ++wrong;
                    continue;
                }
                c.waiting = false;
                if (got <= end) {  // an echo that came after the window is not counted
                    ++c.echoes;
                    lat_ns.push_back(static_cast<std::uint32_t>(
                        std::min<long long>(std::chrono::duration_cast<std::chrono::nanoseconds>(got - c.sent_at).count(),
                                            UINT32_MAX)));
                    send_next(c, i);
                }
            }
        }
    }
    const double window_s = std::chrono::duration<double>(t_end - t0).count();
    const long long cpu1 = pid > 0 ? cpu_ticks(pid) : -1;
    const auto wait1 = pid > 0 ? runq_wait_ns(pid) : std::map<long, long long>{};
    const double self1 = self_cpu_s();
    long long waited = 0;  // threads that ended meanwhile are not counted
    for (const auto& [tid, w] : wait1) {
        const auto it = wait0.find(tid);
        waited += w - (it == wait0.end() ? 0 : it->second);
    }
    std::vector<double> lat(lat_ns.begin(), lat_ns.end());
    const std::size_t msgs = lat.size();
    std::printf("seconds %.3f\nmessages %zu\nmsgs_per_s %.0f\n", window_s, msgs, static_cast<double>(msgs) / window_s);
    std::printf("p50_us %.1f\np90_us %.1f\np99_us %.1f\np999_us %.1f\nmax_us %.1f\n", percentile(lat, 0.5) / 1000,
                percentile(lat, 0.9) / 1000, percentile(lat, 0.99) / 1000, percentile(lat, 0.999) / 1000,
                percentile(lat, 1.0) / 1000);
    // Fairness: the fewest and the most echoes one connection had in the window.
    std::size_t fewest = SIZE_MAX, most = 0;
    for (const conn& c : cl.cs) fewest = std::min(fewest, c.echoes), most = std::max(most, c.echoes);
    std::printf("conn_messages_min %zu\nconn_messages_max %zu\n", fewest, most);
    const std::size_t errors = cl.n_failed + wrong + cl.frame_errors;
    std::printf("errors %zu\n", errors);
    if (cpu0 >= 0 && cpu1 >= 0 && msgs > 0)
        std::printf("server_cpu_us %.2f\n", static_cast<double>(cpu1 - cpu0) * 1e6 / static_cast<double>(hz) /
                                                static_cast<double>(msgs));
    std::printf("client_cpu_pct %.0f\n", (self1 - self0) * 100 / window_s);
    // How long the server's threads waited for a CPU while runnable, per second: near 0 on
    // a CPU of its own; on a shared one it says how much the others took.
    if (!wait1.empty()) std::printf("server_runq_wait_ms_per_s %.1f\n", static_cast<double>(waited) / 1e6 / window_s);
    return errors == 0 && msgs > 0 ? 0 : 1;
}

// --------------------------------------------------------------------- idle --

int run_idle(kind k, std::uint16_t port, std::size_t n, long pid, const std::string& path) {
    client cl;
    cl.port = port;
    cl.k = k;
    cl.path = path;
    cl.sources = 1 + n / 20000;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    const long rss0 = proc_status_kb(pid, "VmRSS");
    const long thr0 = count_threads(pid);
    const auto t0 = clock::now();
    const std::size_t opened = cl.open_all(n, t0 + std::chrono::seconds(60));
    const double open_ms = ms_since(t0);
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    const long rss1 = proc_status_kb(pid, "VmRSS");
    const long thr1 = count_threads(pid);
    std::printf("kind %s\nconns %zu\nopened %zu\nopen_ms %.0f\nsources %zu\n", k == kind::ws ? "ws" : "http", n, opened,
                open_ms, cl.sources);
    std::printf("rss_before_kb %ld\nrss_after_kb %ld\nthreads_before %ld\nthreads %ld\n", rss0, rss1, thr0, thr1);
    std::printf("kib_per_conn %.3f\n", static_cast<double>(rss1 - rss0) / static_cast<double>(n));
    std::fflush(stdout);
    // Each of them once more, 256 at a time.
    std::size_t answered = 0, next = 0;
    std::vector<epoll_event> evs(256);
    const auto deadline = clock::now() + std::chrono::seconds(30);
    auto in_flight = [&] {
        std::size_t w = 0;
        for (std::size_t i = 0; i < next; ++i) w += cl.cs[i].state == conn::open && cl.cs[i].waiting;
        return w;
    };
    std::size_t flying = 0;
    while (clock::now() < deadline) {
        flying = in_flight();
        if (next == n && flying == 0) break;
        for (; next < n && flying < 256; ++next) {
            conn& c = cl.cs[next];
            if (c.state != conn::open) continue;
            if (k == kind::ws) {
                c.expect = message(32, next);
                append_frame(c.out, 1, c.expect);
            } else {
                c.out = get_request(true);
            }
            c.waiting = true;
            ++flying;
            cl.flush(c, next);
        }
        const int r = ::epoll_wait(cl.ep, evs.data(), static_cast<int>(evs.size()), 10);
        for (int e = 0; e < r; ++e) {
            const std::size_t i = evs[e].data.u64;
            conn& c = cl.cs[i];
            if (c.state != conn::open || !c.waiting) continue;
            if ((evs[e].events & EPOLLOUT) && !cl.flush(c, i)) continue;
            if (!(evs[e].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) continue;
            if (!cl.read_some(c)) {
                cl.fail(c);
                continue;
            }
            bool done = false;
            if (k == kind::http) {
                done = c.http.complete() && c.http.status == 200;
                if (done) c.http.consume();
            } else {
                frame f;
                while (c.state == conn::open && cl.take_frame(c, i, f))
                    if (f.opcode == 1 && f.payload == c.expect) done = true;
            }
            if (done && c.state == conn::open) {
                c.waiting = false;
                ++answered;
            }
        }
    }
    std::printf("answered_again %zu\n", answered);
    return opened == n && answered == n && rss0 > 0 && rss1 > 0 ? 0 : 1;
}

// ---------------------------------------------------------------- broadcast --

int run_broadcast(std::uint16_t port, std::size_t n, std::size_t rounds) {
    client cl;
    cl.port = port;
    cl.path = "/bcast";
    const std::size_t opened = cl.open_all(n, clock::now() + std::chrono::seconds(30));
    std::printf("conns %zu\nopened %zu\n", n, opened);
    if (opened != n) {
        std::fprintf(stderr, "ws_load: only %zu of %zu WebSockets opened\n", opened, n);
        return 1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));  // every on_open has run
    std::vector<double> lasts, firsts;
    std::size_t received_min = n;
    std::vector<epoll_event> evs(1024);
    for (std::size_t round = 1; round <= rounds; ++round) {
        for (conn& c : cl.cs) c.got = false;
        append_frame(cl.cs[0].out, 1, "go");
        cl.flush(cl.cs[0], 0);
        std::size_t got = 0;
        long long t0_ns = -1;
        const auto deadline = clock::now() + std::chrono::seconds(5);
        while (got < n && clock::now() < deadline) {
            const int r = ::epoll_wait(cl.ep, evs.data(), static_cast<int>(evs.size()), 10);
            const auto now = clock::now();
            for (int e = 0; e < r; ++e) {
                const std::size_t i = evs[e].data.u64;
                conn& c = cl.cs[i];
                if (c.state != conn::open) continue;
                if ((evs[e].events & EPOLLOUT) && !cl.flush(c, i)) continue;
                if (!(evs[e].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) continue;
                if (!cl.read_some(c)) {
                    cl.fail(c);
                    continue;
                }
                frame f;
                while (c.state == conn::open && cl.take_frame(c, i, f)) {
                    // "b SEQ T0...."
                    if (f.opcode != 1 || f.payload.size() < 4 || f.payload[0] != 'b') continue;
                    const std::string s(f.payload);
                    char* p = nullptr;
                    const unsigned long seq = std::strtoul(s.c_str() + 2, &p, 10);
                    if (seq != round || c.got) continue;
                    t0_ns = std::strtoll(p, nullptr, 10);
                    c.got = true;
                    c.got_at = now;
                    ++got;
                }
            }
        }
        received_min = std::min(received_min, got);
        if (got == 0 || t0_ns < 0) {
            std::printf("round %zu received 0\n", round);
            continue;
        }
        long long first = LLONG_MAX, last = 0;
        for (const conn& c : cl.cs) {
            if (!c.got) continue;
            const long long at = std::chrono::duration_cast<std::chrono::nanoseconds>(c.got_at.time_since_epoch()).count();
            first = std::min(first, at);
            last = std::max(last, at);
        }
        const double last_ms = static_cast<double>(last - t0_ns) / 1e6, first_ms = static_cast<double>(first - t0_ns) / 1e6;
        std::printf("round %zu received %zu first_ms %.3f last_ms %.3f\n", round, got, first_ms, last_ms);
        if (got == n) lasts.push_back(last_ms);
        firsts.push_back(first_ms);
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    std::printf("received_min %zu\n", received_min);
    if (!lasts.empty()) std::printf("last_ms_p50 %.3f\nlast_ms_max %.3f\n", percentile(lasts, 0.5), percentile(lasts, 1.0));
    if (!firsts.empty()) std::printf("first_ms_p50 %.3f\n", percentile(firsts, 0.5));
    std::printf("errors %zu\n", cl.n_failed + cl.frame_errors);
    return received_min == n && cl.n_failed == 0 ? 0 : 1;
}

/// echo_once: one WebSocket to path opens and echoes one message within deadline.
bool echo_once(std::uint16_t port, const std::string& path, clock::time_point deadline) {
    client cl;
    cl.port = port;
    cl.path = path;
    if (cl.open_all(1, deadline) != 1) return false;
    conn& c = cl.cs[0];
    c.expect = message(32, 1);
    append_frame(c.out, 1, c.expect);
    if (!cl.flush(c, 0)) return false;
    std::vector<epoll_event> evs(4);
    while (clock::now() < deadline && c.state == conn::open) {
        if (::epoll_wait(cl.ep, evs.data(), 4, 10) <= 0) continue;
        if ((evs[0].events & EPOLLOUT) && !cl.flush(c, 0)) return false;
        if (!cl.read_some(c)) return false;
        frame f;
        while (c.state == conn::open && cl.take_frame(c, 0, f))
            if (f.opcode == 1 && f.payload == c.expect) return true;
    }
    return false;
}

}  // namespace

int main(int argc, char** argv) {
    std::signal(SIGPIPE, SIG_IGN);
    const std::string mode = argc > 1 ? argv[1] : "";
    raise_nofile();
    ::alarm(300);  // whatever the server does, the bench goes on
    if (mode == "echo" && argc >= 6) {
        return run_echo(static_cast<std::uint16_t>(std::atoi(argv[2])), argv[3], std::strtoul(argv[4], nullptr, 10),
                        std::atof(argv[5]), argc > 6 ? std::atol(argv[6]) : 0,
                        argc > 7 ? std::strtoul(argv[7], nullptr, 10) : 32);
    }
    if (mode == "idle" && argc >= 6) {
        const std::string k = argv[2];
        if (k != "ws" && k != "http") return 2;
        const std::size_t n = std::strtoul(argv[4], nullptr, 10);
        const rlim_t lim = raise_nofile();
        if (lim < n + 64) {
            std::fprintf(stderr, "ws_load: RLIMIT_NOFILE %llu is too low for %zu connections\n",
                         static_cast<unsigned long long>(lim), n);
            return 1;
        }
        return run_idle(k == "ws" ? kind::ws : kind::http, static_cast<std::uint16_t>(std::atoi(argv[3])), n,
                        std::atol(argv[5]), argc > 6 ? argv[6] : "/echo");
    }
    if (mode == "wait" && argc >= 4) {
        const auto port = static_cast<std::uint16_t>(std::atoi(argv[2]));
        const auto deadline = clock::now() + std::chrono::milliseconds(std::atol(argv[3]));
        const std::string path = argc > 4 ? argv[4] : "/echo";
        while (clock::now() < deadline) {
            if (echo_once(port, path, std::min(deadline, clock::now() + std::chrono::milliseconds(500)))) return 0;
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
        return 1;
    }
    if (mode == "broadcast" && argc >= 5) {
        return run_broadcast(static_cast<std::uint16_t>(std::atoi(argv[2])), std::strtoul(argv[3], nullptr, 10),
                             std::strtoul(argv[4], nullptr, 10));
    }
    std::fprintf(stderr,
                 "usage: ws_load echo PORT PATH CONNS SECONDS [SERVER_PID] [MSG_BYTES]\n"
                 "       ws_load idle ws|http PORT N SERVER_PID [PATH]\n"
                 "       ws_load wait PORT TIMEOUT_MS [PATH]\n"
                 "       ws_load broadcast PORT N ROUNDS\n");
    return 2;
}
