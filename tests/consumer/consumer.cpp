// A program that uses restartable_server the way a user's program would, built three ways
// by run.sh (find_package, pkg-config, FetchContent): it starts a server on a port the
// system picks, makes one GET /hello over a plain socket, and stops the server.
// Exit status: 0 only when the response was "200" with the body "Hello, World!".
// Built with RESTARTABLE_SERVER_OPENSSL (the package passes it on when it was configured
// with it), it also serves TLS with the certificate and key named by RS_TLS_CERT and
// RS_TLS_KEY, which answers a plain GET "400" with its own words: OpenSSL is linked and
// the listener works.
#include <restartable_server.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <cstdio>
#include <cstdlib>
#include <string>

namespace rs = restartable_server;

namespace {

// get: the whole response to "GET path" on 127.0.0.1:port ("Connection: close", so the
// server ends it), or "" on any error. A receive timeout keeps a broken server from
// hanging the test.
std::string get(std::uint16_t port, const std::string& path) {
    rs::unique_fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd) return {};
    timeval timeout{10, 0};
    ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) return {};
    const std::string request = "GET " + path + " HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    if (::send(fd.get(), request.data(), request.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(request.size()))
        return {};
    std::string response;
    char buf[4096];
    ssize_t n;
    while ((n = ::recv(fd.get(), buf, sizeof buf, 0)) > 0) response.append(buf, static_cast<std::size_t>(n));
    return n == 0 ? response : std::string{};
}

}  // namespace

int main() {
    rs::server srv;
    srv.get("/hello", [](const rs::request&, rs::response& res) {
        res.set_content("Hello, World!", "text/plain");
    });
    srv.set_listener(rs::tcp_listener("127.0.0.1", 0));
    std::error_code ec;
    srv.start(ec);
    if (ec) {
        std::fprintf(stderr, "start failed: %s\n", ec.message().c_str());
        return 1;
    }
    const std::string response = get(srv.port(), "/hello");
    srv.stop();

    const std::size_t head_end = response.find("\r\n\r\n");
    const bool ok = response.rfind("HTTP/1.1 200 ", 0) == 0 && head_end != std::string::npos &&
                    response.substr(head_end + 4) == "Hello, World!";
    std::printf("restartable_server %s: GET /hello -> %s\n", RESTARTABLE_SERVER_VERSION_STRING,
                ok ? "\"Hello, World!\"" : "WRONG RESPONSE");
    if (!ok) std::fprintf(stderr, "response:\n%s\n", response.c_str());
#ifdef RESTARTABLE_SERVER_OPENSSL
    if (!ok) return 1;
    const char* cert = std::getenv("RS_TLS_CERT");
    const char* key = std::getenv("RS_TLS_KEY");
    if (!cert || !key) {
        std::fprintf(stderr, "built with RESTARTABLE_SERVER_OPENSSL: set RS_TLS_CERT and RS_TLS_KEY\n");
        return 1;
    }
    rs::tls_options tls;
    tls.cert_chain_file = cert;
    tls.key_file = key;
    srv.set_listener(rs::tls_listener(rs::tcp_listener("127.0.0.1", 0), tls));
    srv.start(ec);
    if (ec) {
        std::fprintf(stderr, "TLS start failed: %s\n", ec.message().c_str());
        return 1;
    }
    const std::string plain = get(srv.port(), "/hello");
    srv.stop();
    const bool tls_ok = plain.rfind("HTTP/1.1 400 ", 0) == 0 && plain.find("HTTPS port") != std::string::npos;
    std::printf("TLS listener: plain GET /hello -> %s\n", tls_ok ? "400 (an HTTPS port)" : "WRONG RESPONSE");
    if (!tls_ok) std::fprintf(stderr, "response:\n%s\n", plain.c_str());
    return tls_ok ? 0 : 1;
#else
    return ok ? 0 : 1;
#endif  // RESTARTABLE_SERVER_OPENSSL
}
