// idle_tls.cpp - figure 15's TLS client (OpenSSL 3; build with -lssl -lcrypto).
//
//   idle_tls wait PORT TIMEOUT_MS CA_FILE
//       exit 0 once a TLS GET /hello on 127.0.0.1:PORT answers 200, 1 after TIMEOUT_MS
//   idle_tls resume PORT CA_FILE
//       two connections, the second offering the session (ticket) the first got; prints
//       "resumed 1|0", the protocol, cipher and ALPN protocol of the first
//   idle_tls idle PORT N SERVER_PIDS CA_FILE [OPEN_MS]
//       the server's VmRSS (summed over SERVER_PIDS, comma-separated), then N connections,
//       one after the other, each a full handshake (no session offered) and one keep-alive
//       GET /hello answered 200, left open and idle; 300 ms later the VmRSS again. Prints
//       rss_before_kb, rss_after_kb, opened, answered and
//       kib_per_conn = (rss_after_kb - rss_before_kb) / answered.
//   idle_tls handshakes PORT SECONDS THREADS
//       THREADS threads, each opening connection after connection for SECONDS: a full
//       handshake (no session offered, so none resumes), GET /hello with
//       "Connection: close", the response, close. Prints handshakes, per_s, errors and
//       resumed (should be 0).
//
// Every client offers ALPN "http/1.1" and TLS 1.2-1.3 with OpenSSL's defaults. wait,
// resume and idle verify the server's certificate against CA_FILE (the bench's
// self-signed one, its SAN IP 127.0.0.1); handshakes does not verify (a client's chain
// check is client CPU, not server work).
#include "client.hpp"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <atomic>
#include <sstream>
#include <thread>

using namespace bench;

namespace {

SSL_CTX* make_ctx(const char* ca_file) {
    SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == nullptr) return nullptr;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    static constexpr unsigned char alpn[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
    SSL_CTX_set_alpn_protos(ctx, alpn, sizeof alpn);
    if (ca_file != nullptr) {
        if (SSL_CTX_load_verify_locations(ctx, ca_file, nullptr) != 1) {
            ERR_print_errors_fp(stderr);
            SSL_CTX_free(ctx);
            return nullptr;
        }
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
        X509_VERIFY_PARAM_set1_ip_asc(SSL_CTX_get0_param(ctx), "127.0.0.1");
    }
    return ctx;
}

/// tls_conn: one client connection; fd and ssl stay open until close().
struct tls_conn {
    int fd = -1;
    SSL* ssl = nullptr;
    void close() {
        if (ssl != nullptr) SSL_free(ssl);
        if (fd >= 0) ::close(fd);
        ssl = nullptr;
        fd = -1;
    }
};

/// open_tls: a blocking TCP connection (2 s send/receive timeouts) with a completed
/// handshake, offering session when not null; false (and nothing open) on failure.
bool open_tls(SSL_CTX* ctx, std::uint16_t port, tls_conn& c, SSL_SESSION* session = nullptr) {
    c.fd = connect_to(port);
    if (c.fd < 0) return false;
    timeval tv{2, 0};
    ::setsockopt(c.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(c.fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    c.ssl = SSL_new(ctx);
    if (c.ssl == nullptr || SSL_set_fd(c.ssl, c.fd) != 1 || (session && SSL_set_session(c.ssl, session) != 1) ||
        SSL_connect(c.ssl) != 1) {
        ERR_clear_error();
        c.close();
        return false;
    }
    return true;
}

/// request: writes GET /hello and reads one whole response; true on 200.
bool request(tls_conn& c, bool keep_alive) {
    const std::string req = get_request(keep_alive);
    std::size_t n = 0;
    if (SSL_write_ex(c.ssl, req.data(), req.size(), &n) != 1 || n != req.size()) {
        ERR_clear_error();
        return false;
    }
    response_parser p;
    char buf[16384];
    while (!p.complete()) {
        if (SSL_read_ex(c.ssl, buf, sizeof buf, &n) != 1) {
            ERR_clear_error();
            return false;
        }
        p.buf.append(buf, n);
    }
    return p.status == 200;
}

long rss_kb(const std::string& pids) {
    long sum = 0;
    std::stringstream ss(pids);
    std::string pid;
    while (std::getline(ss, pid, ',')) {
        const long kb = proc_status_kb(std::atol(pid.c_str()), "VmRSS");
        if (kb < 0) return -1;
        sum += kb;
    }
    return sum;
}

int usage() {
    std::fprintf(stderr,
                 "usage: idle_tls wait PORT TIMEOUT_MS CA_FILE | resume PORT CA_FILE |\n"
                 "       idle PORT N SERVER_PIDS CA_FILE [OPEN_MS] | handshakes PORT SECONDS THREADS\n");
    return 2;
}

}  // namespace

int main(int argc, char** argv) {
    const std::string cmd = argc > 1 ? argv[1] : "";
    if (argc < 3) return usage();
    const auto port = static_cast<std::uint16_t>(std::atoi(argv[2]));

    if (cmd == "wait" && argc == 5) {
        SSL_CTX* ctx = make_ctx(argv[4]);
        if (ctx == nullptr) return 1;
        const auto deadline = clock::now() + std::chrono::milliseconds(std::atol(argv[3]));
        while (clock::now() < deadline) {
            tls_conn c;
            const bool ok = open_tls(ctx, port, c) && request(c, false);
            c.close();
            if (ok) return 0;
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
        return 1;
    }

    if (cmd == "resume" && argc == 4) {
        SSL_CTX* ctx = make_ctx(argv[3]);
        if (ctx == nullptr) return 1;
        tls_conn first;
        if (!open_tls(ctx, port, first) || !request(first, true)) {  // reading the response reads TLS 1.3's tickets
            std::fprintf(stderr, "idle_tls resume: the first connection failed\n");
            return 1;
        }
        const unsigned char* alpn = nullptr;
        unsigned alpn_len = 0;
        SSL_get0_alpn_selected(first.ssl, &alpn, &alpn_len);
        std::printf("protocol %s\ncipher %s\nalpn %.*s\n", SSL_get_version(first.ssl),
                    SSL_CIPHER_get_name(SSL_get_current_cipher(first.ssl)), static_cast<int>(alpn_len),
                    alpn ? reinterpret_cast<const char*>(alpn) : "");
        SSL_SESSION* session = SSL_get1_session(first.ssl);
        SSL_shutdown(first.ssl);  // SSL_free without it would mark the session not resumable
        first.close();
        tls_conn second;
        const bool ok = session != nullptr && open_tls(ctx, port, second, session) && request(second, false);
        std::printf("resumed %d\n", ok && SSL_session_reused(second.ssl) == 1 ? 1 : 0);
        second.close();
        SSL_SESSION_free(session);
        return ok ? 0 : 1;
    }

    if (cmd == "idle" && (argc == 6 || argc == 7)) {
        const std::size_t n = std::strtoul(argv[3], nullptr, 10);
        const std::string pids = argv[4];
        const double open_ms = argc > 6 ? std::atof(argv[6]) : 60000;
        if (raise_nofile() < n + 64) {
            std::fprintf(stderr, "idle_tls: RLIMIT_NOFILE is too low for %zu connections\n", n);
            return 1;
        }
        SSL_CTX* ctx = make_ctx(argv[5]);
        if (ctx == nullptr) return 1;
        const long before = rss_kb(pids);
        std::vector<tls_conn> conns;
        conns.reserve(n);
        std::size_t opened = 0, answered = 0;
        const auto t0 = clock::now(), deadline = t0 + std::chrono::milliseconds(static_cast<long long>(open_ms));
        for (std::size_t i = 0; i < n && clock::now() < deadline; ++i) {
            tls_conn c;
            if (!open_tls(ctx, port, c)) continue;
            ++opened;
            if (request(c, true)) {
                ++answered;
                conns.push_back(c);
            } else {
                c.close();
            }
        }
        const double took = ms_since(t0);
        std::this_thread::sleep_for(std::chrono::milliseconds(300));
        const long after = rss_kb(pids);
        std::printf("opened %zu\nanswered %zu\nopen_ms %.0f\nrss_before_kb %ld\nrss_after_kb %ld\n", opened, answered,
                    took, before, after);
        if (before >= 0 && after >= 0 && answered > 0)
            std::printf("kib_per_conn %.2f\n", static_cast<double>(after - before) / static_cast<double>(answered));
        std::fflush(stdout);
        for (auto& c : conns) c.close();
        return answered == n && before >= 0 && after >= 0 ? 0 : 1;
    }

    if (cmd == "handshakes" && argc == 5) {
        const double seconds = std::atof(argv[3]);
        const int threads = std::max(1, std::atoi(argv[4]));
        SSL_CTX* ctx = make_ctx(nullptr);
        if (ctx == nullptr) return 1;
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
        std::atomic<long> done{0}, errors{0}, resumed{0};
        const auto t0 = clock::now();
        const auto end = t0 + std::chrono::microseconds(static_cast<long long>(seconds * 1e6));
        std::vector<std::thread> pool;
        for (int t = 0; t < threads; ++t)
            pool.emplace_back([&] {
                while (clock::now() < end) {
                    tls_conn c;
                    if (open_tls(ctx, port, c) && request(c, false)) {
                        ++done;
                        if (SSL_session_reused(c.ssl) == 1) ++resumed;
                        SSL_shutdown(c.ssl);
                    } else {
                        ++errors;
                    }
                    c.close();
                }
            });
        for (auto& t : pool) t.join();
        const double s = ms_since(t0) / 1000.0;
        std::printf("handshakes %ld\nper_s %.0f\nerrors %ld\nresumed %ld\n", done.load(), static_cast<double>(done) / s,
                    errors.load(), resumed.load());
        return errors == 0 && done > 0 ? 0 : 1;
    }
    return usage();
}
