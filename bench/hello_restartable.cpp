// hello_restartable.cpp - the bench's hello server on restartable_server.
//   GET /hello -> 200 "Hello, World!" (text/plain). With -DBENCH_ECHO also POST /echo,
//   which answers the request body with its Content-Type, and GET /big -> 200 with 4 MiB
//   of 'x' (application/octet-stream). With -DBENCH_SLOW also GET /slow, whose handler
//   sleeps 100 ms (a handler that blocks: figure 14). With -DBENCH_TLS (and
//   -DRESTARTABLE_SERVER_OPENSSL -lssl -lcrypto) every connection is TLS, with the
//   certificate chain and key named by the environment variables BENCH_TLS_CERT and
//   BENCH_TLS_KEY and the library's TLS defaults (figure 15).
// Listens on 127.0.0.1, on the port given as argv[1] (0, the default, picks a free one),
// with default options unless argv[2] sets worker_threads; prints "worker_threads N" (the
// option's value) and, once accepting, "port N"; serves until killed.
#include "restartable_server.hpp"

#include <cstdio>
#include <cstdlib>
#include <string>
#ifdef BENCH_SLOW
#include <chrono>
#include <thread>
#endif

namespace rs = restartable_server;

int main(int argc, char** argv) {
    const int port = argc > 1 ? std::atoi(argv[1]) : 0;
    rs::options opts;
    opts.listener = rs::tcp_listener("127.0.0.1", static_cast<std::uint16_t>(port));
#ifdef BENCH_TLS
    const char* cert = std::getenv("BENCH_TLS_CERT");
    const char* key = std::getenv("BENCH_TLS_KEY");
    if (cert == nullptr || key == nullptr) {
        std::fprintf(stderr, "hello_restartable: BENCH_TLS_CERT and BENCH_TLS_KEY must name PEM files\n");
        return 2;
    }
    rs::tls_options tls;
    tls.cert_chain_file = cert;
    tls.key_file = key;
    opts.listener = rs::tls_listener(std::move(opts.listener), tls);
#endif
    if (argc > 2) opts.worker_threads = static_cast<std::size_t>(std::atoi(argv[2]));
    std::printf("worker_threads %lu\n", static_cast<unsigned long>(opts.worker_threads));
    rs::server srv(std::move(opts));
    srv.get("/hello", [](const rs::request&, rs::response& res) {
        res.set_content("Hello, World!", "text/plain");
    });
#ifdef BENCH_ECHO
    srv.post("/echo", [](const rs::request& req, rs::response& res) {
        res.set_content(req.body, req.get_header("Content-Type"));
    });
    srv.get("/big", [](const rs::request&, rs::response& res) {
        static const std::string big(4 << 20, 'x');
        res.set_content(big, "application/octet-stream");
    });
#endif
#ifdef BENCH_SLOW
    srv.get("/slow", [](const rs::request&, rs::response& res) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        res.set_content("slept", "text/plain");
    });
#endif
    std::error_code ec;
    srv.start(ec);
    if (ec) {
        std::fprintf(stderr, "hello_restartable: %s\n", ec.message().c_str());
        return 1;
    }
    std::printf("port %u\n", static_cast<unsigned>(srv.port()));
    std::fflush(stdout);
    srv.wait();
    return 0;
}
