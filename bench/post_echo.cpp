// post_echo.cpp - figure 7, large bodies.
//
//   post_echo PORT MIB COUNT [TIMEOUT_MS]
//
// On one keep-alive connection, POSTs COUNT bodies of MIB MiB to /echo (Content-Type
// application/octet-stream) and checks each echoed body byte for byte. Prints
// "mb_per_s X": request-body megabytes (10^6 bytes) per second of round trip, i.e. each
// byte travels up and back down. Exit 1 on any error or when TIMEOUT_MS (default 60000)
// runs out. When the server answers "Connection: close", the next request uses a new
// connection (the time to reconnect counts).
#include "client.hpp"

using namespace bench;

int main(int argc, char** argv) {
    if (argc < 4) {
        std::fprintf(stderr, "usage: post_echo PORT MIB COUNT [TIMEOUT_MS]\n");
        return 2;
    }
    const auto port = static_cast<std::uint16_t>(std::atoi(argv[1]));
    const std::size_t size = std::strtoul(argv[2], nullptr, 10) << 20;
    const int count = std::atoi(argv[3]);
    const long timeout_ms = argc > 4 ? std::atol(argv[4]) : 60000;
    auto deadline = clock::now() + std::chrono::milliseconds(timeout_ms);

    std::string body(size, '\0');
    std::uint32_t x = 2463534242u;  // xorshift: bytes a server cannot compress or guess
    for (char& c : body) {
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;
        c = static_cast<char>(x);
    }
    std::string head = "POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
                       "Content-Length: " + std::to_string(size) + "\r\n\r\n";
    int fd = connect_to(port, true);
    if (fd < 0) {
        std::perror("connect");
        return 1;
    }
    response_parser p;
    p.buf.reserve(size + 4096);
    int reconnects = 0;
    auto t0 = clock::now();
    for (int i = 0; i < count; ++i) {
        // Both servers read the whole body before answering, so send, then read.
        if (!send_all(fd, head.data(), head.size(), deadline) || !send_all(fd, body.data(), body.size(), deadline) ||
            !read_response(fd, p, deadline)) {
            std::fprintf(stderr, "post_echo: request %d failed or timed out\n", i);
            return 1;
        }
        std::size_t head_len = p.total - size;
        if (p.status != 200 || p.total < size || p.buf.compare(head_len, size, body) != 0) {
            std::fprintf(stderr, "post_echo: bad echo (status %d)\n", p.status);
            return 1;
        }
        const bool closing = p.close;
        p.consume();
        if (closing) {  // cpp-httplib ends a keep-alive connection after 5 requests by default
            ::close(fd);
            fd = connect_to(port, true);
            if (fd < 0) {
                std::perror("connect");
                return 1;
            }
            ++reconnects;
        }
    }
    double s = ms_since(t0) / 1000;
    ::close(fd);
    std::printf("mb_per_s %.1f\nreconnects %d\n", static_cast<double>(size) * count / 1e6 / s, reconnects);
    return 0;
}
