// upload.cpp - figure 19: one multipart/form-data upload, as a browser's form (or curl -F)
// sends it, to POST /upload of bench/ws_server.cpp (read_multipart, the data summed and
// discarded).
//
//   upload PORT MIB [SERVER_PID]
//
// One file part of MIB MiB (pseudo-random bytes, made once in a 1 MiB block and sent
// MIB times: no disk, and the client's cost stays small) and a small text field, with
// Content-Length. Times from the connect to the whole response, and checks that the server
// counted every byte of the file and both parts. Prints mib, seconds, mb_per_s (10^6 bytes
// of the body per second), the server's answer, and with SERVER_PID its VmHWM and VmRSS
// after the upload (the peak: what read_multipart needed to take MIB MiB).
#include "client.hpp"

#include <csignal>
#include <random>

using namespace bench;

int main(int argc, char** argv) {
    if (argc < 3) {
        std::fprintf(stderr, "usage: upload PORT MIB [SERVER_PID]\n");
        return 2;
    }
    std::signal(SIGPIPE, SIG_IGN);
    ::alarm(300);
    const auto port = static_cast<std::uint16_t>(std::atoi(argv[1]));
    const std::size_t mib = std::strtoul(argv[2], nullptr, 10);
    const long pid = argc > 3 ? std::atol(argv[3]) : 0;
    const std::string boundary = "----restartableBench7MA4YWxkTrZu0gW";
    std::string block(1 << 20, '\0');
    std::mt19937_64 rng(42);
    for (std::size_t i = 0; i < block.size(); i += 8) {
        const std::uint64_t v = rng();
        std::memcpy(&block[i], &v, 8);
    }
    const std::string head_part = "--" + boundary +
                                  "\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nfigure 19\r\n--" + boundary +
                                  "\r\nContent-Disposition: form-data; name=\"file\"; filename=\"data.bin\"\r\n"
                                  "Content-Type: application/octet-stream\r\n\r\n";
    const std::string tail = "\r\n--" + boundary + "--\r\n";
    const std::uint64_t file_bytes = static_cast<std::uint64_t>(mib) << 20;
    const std::uint64_t length = head_part.size() + file_bytes + tail.size();
    const std::string head = "POST /upload HTTP/1.1\r\nHost: 127.0.0.1:" + std::to_string(port) +
                             "\r\nContent-Type: multipart/form-data; boundary=" + boundary +
                             "\r\nContent-Length: " + std::to_string(length) + "\r\n\r\n";

    const auto t0 = clock::now();
    const auto deadline = t0 + std::chrono::seconds(240);
    const int fd = connect_to(port);
    if (fd < 0) {
        std::perror("upload: connect");
        return 1;
    }
    bool ok = send_all(fd, head.data(), head.size(), deadline) && send_all(fd, head_part.data(), head_part.size(), deadline);
    for (std::size_t i = 0; ok && i < mib; ++i) ok = send_all(fd, block.data(), block.size(), deadline);
    ok = ok && send_all(fd, tail.data(), tail.size(), deadline);
    response_parser p;
    ok = ok && read_response(fd, p, deadline);
    const double s = std::chrono::duration<double>(clock::now() - t0).count();
    ::close(fd);
    if (!ok) {
        std::fprintf(stderr, "upload: no whole response (status %d)\n", p.status);
        return 1;
    }
    std::string answer = p.buf.substr(p.buf.find("\r\n\r\n") + 4);
    while (!answer.empty() && (answer.back() == '\n' || answer.back() == '\r')) answer.pop_back();
    std::printf("mib %zu\nseconds %.3f\nmb_per_s %.0f\nstatus %d\nanswer %s\n", mib, s,
                static_cast<double>(length) / 1e6 / s, p.status, answer.c_str());
    if (pid > 0)
        std::printf("server_hwm_kb %ld\nserver_rss_kb %ld\n", proc_status_kb(pid, "VmHWM"), proc_status_kb(pid, "VmRSS"));
    const std::string want = "bytes " + std::to_string(file_bytes + 9) + " parts 2 ";
    if (p.status != 200 || answer.compare(0, want.size(), want) != 0) {
        std::fprintf(stderr, "upload: expected \"%s...\", got status %d \"%s\"\n", want.c_str(), p.status, answer.c_str());
        return 1;
    }
    return 0;
}
