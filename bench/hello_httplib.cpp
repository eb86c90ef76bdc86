// hello_httplib.cpp - the bench's hello server on cpp-httplib (header-only, no OpenSSL).
//   GET /hello -> 200 "Hello, World!" (text/plain). With -DBENCH_ECHO also POST /echo,
//   which answers the request body with its Content-Type, and GET /big -> 200 with 4 MiB
//   of 'x' (application/octet-stream).
// Listens on 127.0.0.1, on the port given as argv[1] (0, the default, picks a free one),
// prints "port N" once bound, and serves until killed.
#include "httplib.h"

#include <cstdio>
#include <cstdlib>
#include <string>

int main(int argc, char** argv) {
    const int port = argc > 1 ? std::atoi(argv[1]) : 0;
    httplib::Server svr;
    svr.Get("/hello", [](const httplib::Request&, httplib::Response& res) {
        res.set_content("Hello, World!", "text/plain");
    });
#ifdef BENCH_ECHO
    svr.Post("/echo", [](const httplib::Request& req, httplib::Response& res) {
        res.set_content(req.body, req.get_header_value("Content-Type"));
    });
    svr.Get("/big", [](const httplib::Request&, httplib::Response& res) {
        static const std::string big(4 << 20, 'x');
        res.set_content(big, "application/octet-stream");
    });
#endif
    int bound = port;
    if (port == 0)
        bound = svr.bind_to_any_port("127.0.0.1");
    else if (!svr.bind_to_port("127.0.0.1", port))
        bound = -1;
    if (bound <= 0) {
        std::fprintf(stderr, "hello_httplib: cannot bind\n");
        return 1;
    }
    std::printf("port %d\n", bound);
    std::fflush(stdout);
    return svr.listen_after_bind() ? 0 : 1;
}
