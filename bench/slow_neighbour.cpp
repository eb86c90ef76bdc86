// slow_neighbour.cpp - what one slow handler costs everyone else (figure 14).
//
//   slow_neighbour PORT SECONDS SLOW
//
// FAST (63) keep-alive connections send GET /hello one after another (a closed loop, from
// one thread that waits on all of them with epoll) for SECONDS. With SLOW = 1 a 64th
// connection sends GET /slow, whose handler sleeps 100 ms, over and over from a thread of
// its own. Prints "fast_rps N" (the 63 connections' requests per second), "slow_done N"
// (the slow requests answered) and "errors N". Run it once with SLOW = 0 and once with
// SLOW = 1 against the same server: the ratio is the throughput the 63 keep.
#include "client.hpp"

#include <atomic>
#include <thread>

int main(int argc, char** argv) {
    if (argc != 4) {
        std::fprintf(stderr, "usage: slow_neighbour PORT SECONDS SLOW\n");
        return 2;
    }
    const auto port = static_cast<std::uint16_t>(std::atoi(argv[1]));
    const double seconds = std::atof(argv[2]);
    const bool slow = std::atoi(argv[3]) != 0;
    constexpr int fast = 63;
    const auto t0 = bench::clock::now();
    const auto end = t0 + std::chrono::microseconds(static_cast<long long>(seconds * 1e6));
    std::atomic<long> errors{0}, slow_done{0};

    std::thread slow_thread;
    if (slow) {
        slow_thread = std::thread([&] {
            const int fd = bench::connect_to(port);
            if (fd < 0) {
                ++errors;
                return;
            }
            const std::string req = bench::get_request(true, "/slow");
            bench::response_parser p;
            while (bench::clock::now() < end) {
                const auto deadline = bench::clock::now() + std::chrono::seconds(10);
                if (!bench::send_all(fd, req.data(), req.size(), deadline) || !bench::read_response(fd, p, deadline) ||
                    p.status != 200) {
                    ++errors;
                    break;
                }
                p.consume();
                ++slow_done;
            }
            ::close(fd);
        });
    }

    const std::string req = bench::get_request(true, "/hello");
    struct conn {
        int fd = -1;
        bench::response_parser p;
    };
    std::vector<conn> conns(fast);
    const int ep = ::epoll_create1(EPOLL_CLOEXEC);
    for (int i = 0; i < fast; ++i) {
        conns[i].fd = bench::connect_to(port);
        if (conns[i].fd < 0) {
            std::fprintf(stderr, "slow_neighbour: connect failed\n");
            return 1;
        }
        ::fcntl(conns[i].fd, F_SETFL, ::fcntl(conns[i].fd, F_GETFL) | O_NONBLOCK);
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.u32 = static_cast<std::uint32_t>(i);
        ::epoll_ctl(ep, EPOLL_CTL_ADD, conns[i].fd, &ev);
        if (::send(conns[i].fd, req.data(), req.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(req.size())) ++errors;
    }
    long done = 0;
    const auto measure_from = bench::clock::now();
    char buf[65536];
    epoll_event events[64];
    while (bench::clock::now() < end) {
        const int n = ::epoll_wait(ep, events, 64, 100);
        for (int k = 0; k < n; ++k) {
            conn& c = conns[events[k].data.u32];
            const ssize_t r = ::recv(c.fd, buf, sizeof buf, 0);
            if (r <= 0) {
                if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
                ++errors;
                ::epoll_ctl(ep, EPOLL_CTL_DEL, c.fd, nullptr);
                continue;
            }
            c.p.buf.append(buf, static_cast<std::size_t>(r));
            while (c.p.complete()) {
                if (c.p.status != 200) ++errors;
                c.p.consume();
                ++done;
                if (::send(c.fd, req.data(), req.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(req.size())) ++errors;
            }
        }
    }
    const double elapsed = std::chrono::duration<double>(bench::clock::now() - measure_from).count();
    if (slow_thread.joinable()) slow_thread.join();
    std::printf("fast_rps %.0f\nslow_done %ld\nerrors %ld\n", done / elapsed, slow_done.load(), errors.load());
    return 0;
}
