// The transport seam (with_transport, transport, transport_layer) with a test-only second
// transport: one that counts the bytes it moves and, when asked, wants a 4-byte preamble
// before HTTP begins (a stand-in for a TLS handshake, so the engine's handshake path runs
// without OpenSSL). Real sockets, real requests: keep-alive, pipelining, large responses
// that wait for the socket, streamed request and response bodies, restarts that move
// connections with their transports, a layer that fails to build, handshakes that stall.
// Nothing sleeps to synchronise: waits are on reads with timeouts and on conditions.
#include "support.hpp"

#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace rs = restartable_server;
using namespace std::chrono_literals;

namespace {

/// counts: what every transport of one layer maker moved, and how many layers and
/// transports were made.
struct counts {
    std::atomic<std::size_t> read{0}, written{0}, layers{0}, transports{0}, alive{0}, handshakes{0}, shutdowns{0};
};

constexpr std::string_view preamble = "HELO";

/// counting_transport: the socket, counted. With a preamble, the handshake reads exactly
/// "HELO" first (a byte at a time, so a client that dribbles it works); anything else fails.
class counting_transport final : public rs::transport {
public:
    counting_transport(counts& c, bool needs_preamble) : c_(c), got_(needs_preamble ? 0 : preamble.size()) {
        c_.transports.fetch_add(1);
        c_.alive.fetch_add(1);
    }
    ~counting_transport() override { c_.alive.fetch_sub(1); }

    rs::io_result handshake(int fd) noexcept override {
        while (got_ < preamble.size()) {
            char b;
            const ssize_t n = ::recv(fd, &b, 1, 0);
            if (n == 0) return {0, rs::io_status::closed};
            if (n < 0) return {0, errno == EAGAIN ? rs::io_status::want_read : rs::io_status::failed};
            if (b != preamble[got_]) {  // its own words before it fails, as TLS's 400 to plain HTTP
                (void)::send(fd, "NO\n", 3, MSG_NOSIGNAL);
                return {0, rs::io_status::failed};
            }
            ++got_;
        }
        c_.handshakes.fetch_add(1);
        return {};
    }
    rs::io_result read(int fd, char* buf, std::size_t size) noexcept override {
        const ssize_t n = ::recv(fd, buf, size, 0);
        if (n > 0) {
            c_.read.fetch_add(static_cast<std::size_t>(n));
            return {static_cast<std::size_t>(n), rs::io_status::ok};
        }
        if (n == 0) return {0, rs::io_status::closed};
        return {0, errno == EAGAIN ? rs::io_status::want_read : rs::io_status::failed};
    }
    rs::io_result write(int fd, const iovec* iov, int count) noexcept override {
        msghdr msg{};
        msg.msg_iov = const_cast<iovec*>(iov);
        msg.msg_iovlen = static_cast<std::size_t>(count);
        const ssize_t n = ::sendmsg(fd, &msg, MSG_NOSIGNAL);
        if (n >= 0) {
            c_.written.fetch_add(static_cast<std::size_t>(n));
            return {static_cast<std::size_t>(n), rs::io_status::ok};
        }
        return {0, errno == EAGAIN ? rs::io_status::want_write : rs::io_status::failed};
    }
    void shutdown(int) noexcept override { c_.shutdowns.fetch_add(1); }
    std::string_view peer_identity() const noexcept override { return "counted"; }

private:
    counts& c_;
    std::size_t got_;
};

class counting_layer final : public rs::transport_layer {
public:
    counting_layer(counts& c, bool needs_preamble) : c_(c), preamble_(needs_preamble) { c_.layers.fetch_add(1); }
    std::unique_ptr<rs::transport> accept(int, std::error_code&) override {
        return std::make_unique<counting_transport>(c_, preamble_);
    }

private:
    counts& c_;
    bool preamble_;
};

/// counted: a factory for 127.0.0.1, port 0, whose connections go through counting
/// transports; while *fail is true, making the layer fails with EPERM.
rs::listener_factory counted(counts& c, bool needs_preamble = false, const std::atomic<bool>* fail = nullptr) {
    return rs::with_transport(rs::tcp_listener("127.0.0.1", 0),
                              [&c, needs_preamble, fail](std::error_code& ec) -> std::shared_ptr<rs::transport_layer> {
                                  if (fail && fail->load()) {
                                      ec = std::make_error_code(std::errc::operation_not_permitted);
                                      return nullptr;
                                  }
                                  return std::make_shared<counting_layer>(c, needs_preamble);
                              });
}

void add_routes(rs::server& srv) {
    srv.get("/hello", [](const rs::request& req, rs::response& res) {
        res.set_content(std::string("hello ") + std::string(req.peer_identity()), "text/plain");
    });
    srv.get("/big", [](const rs::request&, rs::response& res) { res.set_content(std::string(4 << 20, 'b'), "text/plain"); });
    srv.post(
        "/count",
        [](const rs::request& req, rs::response& res) {
            std::size_t n = 0;
            const std::error_code ec = req.read_body([&n](std::string_view p) {
                n += p.size();
                return true;
            });
            res.set_content(ec ? ec.message() : std::to_string(n), "text/plain");
        },
        rs::body_mode::streamed);
    srv.get("/stream", [](const rs::request&, rs::response& res) {
        res.set_stream("text/plain", 100000, [](rs::body_writer& out) {
            for (int i = 0; i < 100; ++i)
                if (!out.write(std::string(1000, static_cast<char>('a' + i % 26)))) return;
        });
    });
}

std::size_t raw_size(const test::http_response& r) { return r.head.size() + 2 + r.body.size(); }

rs::options options_with(rs::listener_factory f) {
    rs::options o = test::local_options();
    o.listener = std::move(f);
    return o;
}

}  // namespace

TEST_CASE("a transport carries every byte: keep-alive, pipelining, large and streamed bodies", "[transport]") {
    counts c;
    rs::server srv(options_with(counted(c)));
    add_routes(srv);
    const std::uint16_t port = test::start(srv);

    test::client cl(port);
    std::size_t sent = 0, received = 0;
    const std::string one = "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n";
    REQUIRE(cl.send(one + one));  // pipelined
    sent += 2 * one.size();
    for (int i = 0; i < 2; ++i) {
        const test::http_response r = cl.read();
        REQUIRE(r.status == 200);
        CHECK(r.body == "hello counted");  // the handler sees the transport's peer_identity()
        received += raw_size(r);
    }
    const std::string big = "GET /big HTTP/1.1\r\nHost: x\r\n\r\n";
    REQUIRE(cl.send(big));
    sent += big.size();
    test::http_response r = cl.read();
    REQUIRE(r.status == 200);
    CHECK(r.body.size() == (4u << 20));
    received += raw_size(r);
    const std::string body(300000, 'x');
    const std::string post = "POST /count HTTP/1.1\r\nHost: x\r\nContent-Length: 300000\r\n\r\n" + body;
    REQUIRE(cl.send(post));
    sent += post.size();
    r = cl.read();
    CHECK(r.body == "300000");
    received += raw_size(r);
    const std::string stream = "GET /stream HTTP/1.1\r\nHost: x\r\n\r\n";
    REQUIRE(cl.send(stream));
    sent += stream.size();
    r = cl.read();
    CHECK(r.body.size() == 100000u);
    received += raw_size(r);

    CHECK(c.read.load() == sent);  // the server read each request before it answered
    CHECK(c.layers.load() == 1);
    CHECK(c.transports.load() == 1);
    srv.stop();
    // After stop(), which joined every thread: a worker counts its last write after the
    // client may already have read it (CI's ASan run once saw 1,000 bytes not yet counted).
    CHECK(c.written.load() == received);
    CHECK(c.alive.load() == 0);        // every transport was destroyed with its connection
    CHECK(c.shutdowns.load() == 1);  // the idle connection's stream was ended before it closed
}

TEST_CASE("a restart makes a new layer, and connections keep their transports", "[transport][restart]") {
    counts c;
    rs::server srv(options_with(counted(c)));
    add_routes(srv);
    const std::uint16_t port = test::start(srv);
    test::client idle(port);
    REQUIRE(idle.send("GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"));
    REQUIRE(idle.read().status == 200);

    std::atomic<int> failed_restarts{0};  // counted here, checked on this thread (Catch2 is not thread-safe)
    std::vector<std::thread> restarters;
    for (int t = 0; t < 3; ++t)  // several threads restart one server at once
        restarters.emplace_back([&] {
            for (int i = 0; i < 5; ++i) {
                std::error_code ec;
                srv.restart(ec);
                if (ec) failed_restarts.fetch_add(1);
            }
        });
    for (int i = 0; i < 20; ++i) {  // the idle keep-alive connection goes on meanwhile
        REQUIRE(idle.send("GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"));
        const test::http_response r = idle.read();
        REQUIRE(r.status == 200);
        CHECK(r.body == "hello counted");
    }
    for (std::thread& t : restarters) t.join();
    CHECK(failed_restarts.load() == 0);
    CHECK(c.layers.load() == 16);     // the start's and one per restart
    CHECK(c.transports.load() == 1);  // the connection moved with its transport
    CHECK(srv.port() == port);
    srv.stop();
    CHECK(c.alive.load() == 0);
}

TEST_CASE("a layer that fails fails the start, and a restart's failure keeps the old run", "[transport][restart]") {
    counts c;
    std::atomic<bool> fail{true};
    rs::server srv(options_with(counted(c, false, &fail)));
    add_routes(srv);
    std::error_code ec;
    srv.start(ec);
    CHECK(ec == std::errc::operation_not_permitted);
    CHECK(srv.state() == rs::server_state::stopped);

    fail = false;
    const std::uint16_t port = test::start(srv);
    test::client kept(port);
    REQUIRE(kept.send("GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"));
    REQUIRE(kept.read().status == 200);
    fail = true;
    srv.restart(ec);
    CHECK(ec == std::errc::operation_not_permitted);
    CHECK(srv.state() == rs::server_state::running);
    REQUIRE(kept.send("GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"));
    CHECK(kept.read().status == 200);
    CHECK(test::get(port, "/hello").status == 200);  // new connections still come in
    srv.stop();
}

TEST_CASE("handshakes run in the engine: dribbled, stalled, failed", "[transport][handshake]") {
    const int threads_at_first = test::thread_count();
    counts c;
    rs::options o = options_with(counted(c, true));
    o.header_timeout = 300ms;
    o.worker_threads = 2;
    rs::server srv(o);
    add_routes(srv);
    const std::uint16_t port = test::start(srv);

    SECTION("a preamble a byte at a time, then a request") {
        test::client cl(port);
        for (char b : preamble) REQUIRE(cl.send(std::string(1, b)));
        REQUIRE(cl.send("GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"));
        CHECK(cl.read().status == 200);
        CHECK(c.handshakes.load() == 1);
    }
    SECTION("stalled handshakes hold no thread and do not delay a fresh client; header_timeout ends them") {
        std::vector<std::unique_ptr<test::client>> stalled;
        for (int i = 0; i < 200; ++i) {
            stalled.push_back(std::make_unique<test::client>(port));
            REQUIRE(stalled.back()->send("HE"));  // half a handshake, then nothing
        }
        test::client fresh(port);
        REQUIRE(fresh.send(std::string(preamble) + "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"));
        CHECK(fresh.read().status == 200);
        CHECK(test::thread_count() <= threads_at_first + 3);  // the control thread and 2 workers at most
        for (auto& s : stalled) CHECK(s->closed());  // at header_timeout
    }
    SECTION("a failed handshake ends the connection after what the transport sent") {
        test::client cl(port);
        REQUIRE(cl.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));  // no preamble
        REQUIRE(cl.rd.fill());
        CHECK(cl.rd.buf == "NO\n");
        cl.rd.buf.clear();
        CHECK(cl.closed());
        CHECK(test::get(port, "/hello").status == 0);  // a plain client gets no HTTP here either
    }
    srv.stop();
    CHECK(c.alive.load() == 0);
}
