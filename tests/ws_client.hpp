// Test support: a raw WebSocket client (RFC 6455) over a blocking socket, for the tests
// that must write frames by hand - well-formed ones, and the broken ones an attacker would
// send. It does no checking of its own: it writes exactly the bytes asked for and reads
// frames as the server sent them. Every read is bounded by a timeout (poll), never a sleep.
#ifndef RESTARTABLE_SERVER_TESTS_WS_CLIENT_HPP
#define RESTARTABLE_SERVER_TESTS_WS_CLIENT_HPP

#include "support.hpp"

#include <poll.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace test {

/// ws_key: the RFC 6455 1.3 example key, and its Sec-WebSocket-Accept.
inline constexpr std::string_view ws_key = "dGhlIHNhbXBsZSBub25jZQ==";
inline constexpr std::string_view ws_key_accept = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// ws_handshake: a valid opening handshake for path on 127.0.0.1:port, with extra header
/// lines (each ending in CRLF) before the empty line.
inline std::string ws_handshake(std::uint16_t port, std::string_view path = "/ws", std::string_view extra = "") {
    std::string h = "GET ";
    h.append(path);
    h += " HTTP/1.1\r\nHost: 127.0.0.1:" + std::to_string(port) +
         "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ";
    h.append(ws_key);
    h += "\r\nSec-WebSocket-Version: 13\r\n";
    h.append(extra);
    h += "\r\n";
    return h;
}

/// ws_frame: one client frame: FIN as fin, RSV bits rsv (0-7), the opcode, the payload
/// length in its minimal encoding, masked with a fixed key unless mask is false.
inline std::string ws_frame(unsigned opcode, std::string_view payload, bool fin = true, bool mask = true,
                            unsigned rsv = 0) {
    std::string f;
    f += static_cast<char>((fin ? 0x80u : 0u) | (rsv & 7u) << 4 | (opcode & 0x0fu));
    const unsigned char m = mask ? 0x80 : 0;
    const std::uint64_t n = payload.size();
    if (n < 126) {
        f += static_cast<char>(m | n);
    } else if (n <= 0xffff) {
        f += static_cast<char>(m | 126);
        f += static_cast<char>(n >> 8);
        f += static_cast<char>(n & 0xff);
    } else {
        f += static_cast<char>(m | 127);
        for (int i = 7; i >= 0; --i) f += static_cast<char>(n >> (8 * i));
    }
    static constexpr unsigned char key[4] = {0x37, 0xfa, 0x21, 0x3d};
    if (mask) f.append(reinterpret_cast<const char*>(key), 4);
    const std::size_t at = f.size();
    f.append(payload);
    if (mask)
        for (std::size_t i = 0; i < payload.size(); ++i) f[at + i] = static_cast<char>(f[at + i] ^ key[i % 4]);
    return f;
}

/// ws_close_payload: a close frame's payload: code (big-endian), then reason.
inline std::string ws_close_payload(std::uint16_t code, std::string_view reason = "") {
    std::string p;
    p += static_cast<char>(code >> 8);
    p += static_cast<char>(code & 0xff);
    p.append(reason);
    return p;
}

/// ws_message: one frame as received: opcode -1 when none came (EOF, error, timeout).
struct ws_message {
    int opcode = -1;
    bool fin = false;
    bool masked = false;
    unsigned rsv = 0;
    std::string payload;
    bool eof = false;  // the connection ended (EOF or reset) instead
    bool ok() const { return opcode >= 0; }
    /// close_code: a close frame's code (1005 when it has none).
    std::uint16_t close_code() const {
        return payload.size() < 2 ? 1005
                                  : static_cast<std::uint16_t>(static_cast<unsigned char>(payload[0]) << 8 |
                                                               static_cast<unsigned char>(payload[1]));
    }
    std::string close_reason() const { return payload.size() < 2 ? std::string() : payload.substr(2); }
};

/// ws_client: one connection to 127.0.0.1:port. Closed on destruction.
class ws_client {
public:
    explicit ws_client(std::uint16_t port, int rcvbuf = 0) {
        int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd >= 0 && rcvbuf > 0) ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
        if (fd >= 0) socket_timeout(fd, SO_SNDTIMEO, std::chrono::seconds(20));
        fd_ = connect_loopback(fd, port);
        port_ = port;
    }
    ~ws_client() { close(); }
    ws_client(const ws_client&) = delete;
    ws_client& operator=(const ws_client&) = delete;

    bool ok() const { return fd_ >= 0; }
    int fd() const { return fd_; }
    void close() {
        if (fd_ >= 0) ::close(fd_);
        fd_ = -1;
    }

    /// upgrade: sends a valid handshake (plus extra, and then trailing bytes in the same
    /// write) and reads the response head; true when it is a 101.
    bool upgrade(std::string_view path = "/ws", std::string_view extra = "", std::string_view trailing = "") {
        std::string req = ws_handshake(port_, path, extra);
        req.append(trailing);
        if (!send(req)) return false;
        response = read_head();
        return response.status == 101;
    }
    /// read_head: the response to a handshake, its body read by Content-Length unless
    /// head_only (after HEAD); what follows stays buffered.
    http_response read_head(std::chrono::milliseconds timeout = std::chrono::seconds(10), bool head_only = false) {
        http_response r;
        std::size_t end;
        while ((end = buf_.find("\r\n\r\n")) == std::string::npos)
            if (!fill(timeout)) return r;
        r.head = buf_.substr(0, end + 2);
        buf_.erase(0, end + 4);
        if (r.head.size() >= 12) r.status = std::atoi(r.head.c_str() + 9);
        const std::string cl = r.header("Content-Length");
        const std::size_t len = cl.empty() || head_only ? 0 : std::stoul(cl);
        while (buf_.size() < len)
            if (!fill(timeout)) return r;
        r.body = buf_.substr(0, len);
        buf_.erase(0, len);
        return r;
    }

    bool send(std::string_view bytes) { return fd_ >= 0 && send_all(fd_, bytes); }
    bool send_frame(unsigned opcode, std::string_view payload, bool fin = true) {
        return send(ws_frame(opcode, payload, fin));
    }
    bool send_text(std::string_view s) { return send_frame(1, s); }
    bool send_binary(std::string_view s) { return send_frame(2, s); }
    bool send_close(std::uint16_t code, std::string_view reason = "") {
        return send_frame(8, ws_close_payload(code, reason));
    }

    /// read: the next frame within timeout.
    ws_message read(std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
        ws_message m;
        if (!need(2, timeout, m)) return m;
        const auto b0 = static_cast<unsigned char>(buf_[0]), b1 = static_cast<unsigned char>(buf_[1]);
        std::uint64_t n = b1 & 0x7fu;
        std::size_t head = 2;
        if (n == 126) {
            if (!need(4, timeout, m)) return m;
            n = static_cast<std::uint64_t>(static_cast<unsigned char>(buf_[2])) << 8 |
                static_cast<unsigned char>(buf_[3]);
            head = 4;
        } else if (n == 127) {
            if (!need(10, timeout, m)) return m;
            n = 0;
            for (int i = 2; i < 10; ++i) n = n << 8 | static_cast<unsigned char>(buf_[static_cast<std::size_t>(i)]);
            head = 10;
        }
        const bool masked = (b1 & 0x80) != 0;
        if (masked) head += 4;
        if (!need(head + static_cast<std::size_t>(n), timeout, m)) return m;
        m.opcode = b0 & 0x0f;
        m.fin = (b0 & 0x80) != 0;
        m.rsv = (b0 >> 4) & 7u;
        m.masked = masked;
        m.payload = buf_.substr(head, static_cast<std::size_t>(n));
        buf_.erase(0, head + static_cast<std::size_t>(n));
        return m;
    }
    /// read_data: the next frame that is not a ping or pong (those are skipped).
    ws_message read_data(std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
        for (;;) {
            ws_message m = read(timeout);
            if (m.opcode != 9 && m.opcode != 10) return m;
        }
    }
    /// eof_within: whether the server ends the connection (after any frames, which are
    /// dropped) within timeout.
    bool eof_within(std::chrono::milliseconds timeout) {
        buf_.clear();
        ws_message m;
        return !need(1, timeout, m) && m.eof;
    }
    /// buffered: bytes read and not yet handed out.
    std::size_t buffered() const { return buf_.size(); }

    http_response response;  // upgrade()'s

private:
    bool need(std::size_t n, std::chrono::milliseconds timeout, ws_message& m) {
        while (buf_.size() < n)
            if (!fill(timeout, &m.eof)) return false;
        return true;
    }
    bool fill(std::chrono::milliseconds timeout, bool* eof = nullptr) {
        if (fd_ < 0) return false;
        pollfd p{fd_, POLLIN, 0};
        int r;
        do r = ::poll(&p, 1, static_cast<int>(timeout.count()));
        while (r < 0 && errno == EINTR);
        if (r <= 0) return false;
        char tmp[65536];
        const ssize_t got = ::recv(fd_, tmp, sizeof tmp, 0);
        if (got <= 0) {
            if (eof && (got == 0 || errno == ECONNRESET)) *eof = true;
            return false;
        }
        buf_.append(tmp, static_cast<std::size_t>(got));
        return true;
    }

    int fd_ = -1;
    std::uint16_t port_ = 0;
    std::string buf_;
};

}  // namespace test

#endif  // RESTARTABLE_SERVER_TESTS_WS_CLIENT_HPP
