// probe.cpp - helpers for run.sh.
//   probe freeport             prints a TCP port on 127.0.0.1 that was free a moment ago
//   probe wait PORT TIMEOUT_MS  exit 0 once GET /hello on PORT answers 200, 1 after TIMEOUT_MS
#include "client.hpp"

#include <string>
#include <thread>

using namespace bench;

int main(int argc, char** argv) {
    std::string cmd = argc > 1 ? argv[1] : "";
    if (cmd == "freeport") {
        int fd = ::socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in a = loopback(0);
        socklen_t len = sizeof a;
        if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
            ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0)
            return 1;
        std::printf("%u\n", ntohs(a.sin_port));
        ::close(fd);
        return 0;
    }
    if (cmd == "wait" && argc > 3) {
        const auto port = static_cast<std::uint16_t>(std::atoi(argv[2]));
        auto deadline = clock::now() + std::chrono::milliseconds(std::atol(argv[3]));
        while (clock::now() < deadline) {
            if (one_request(port, 500) >= 0) return 0;
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
        return 1;
    }
    std::fprintf(stderr, "usage: probe freeport | probe wait PORT TIMEOUT_MS\n");
    return 2;
}
