// restartable_server.hpp v0.1.0 - an HTTP/1.1 server you can start, stop and start again.
// Single header, C++17, standard library + POSIX sockets. MIT licence (end of file).
//
// QUICK START
//
//     #include "restartable_server.hpp"
//     namespace rs = restartable_server;
//     int main() {
//         rs::server srv;
//         srv.get("/hello", [](const rs::request&, rs::response& res) {
//             res.set_content("Hello, World!", "text/plain");
//         });
//         srv.set_listener(rs::tcp_listener("127.0.0.1", 8080));
//         srv.run();  // blocks until srv.stop() or srv.request_stop()
//     }
//
// LIFECYCLE
//
//   A server object holds options and routes. Each start() or run() asks the listener
//   factory for a fresh listening socket and runs a loop that waits (epoll(7), Linux's
//   scalable poll) on the listener, a self-pipe and the idle connections; a connection is
//   lent to a worker thread only when it has bytes to read. stop() ends the run
//   gracefully; the same object can then be started again, any number of times, with
//   changed options or routes.
//
//   call              blocks?                       thread                  signal-safe
//   ----------------  ----------------------------  ----------------------  -----------
//   start()           until accepting (not the run)  any but a server thread no
//   run()             until the run ends            any but a server thread no
//   request_stop()    no                            any, handlers too       yes
//   stop()            until drained and joined (*)  any                     no
//   wait()            until the run ends            any but a server thread no
//   state(), port()   no                            any                     yes
//   wait_until_running(timeout)  up to timeout      any                     no
//   get/post/route/set_options   no                 any; next start sees it no
//
//   (*) Called from a handler (a server thread), stop() cannot wait for the handler
//       that called it: it requests the stop and returns at once with waited == false.
//       The run ends after that handler's response is sent.
//
//   stop(): closes the listener, closes idle keep-alive connections at once, lets requests
//   in flight finish (their responses carry "Connection: close"), waits up to
//   options::drain_timeout, then shuts the remaining connections down. It returns once
//   every thread of the run is joined and every descriptor of the run is closed.
//
// LIMITATIONS
//
//   - Linux (uses epoll, accept4, pipe2, SOCK_CLOEXEC). Other POSIX systems: not yet.
//   - No TLS, no HTTP/2, no transfer codings but chunked (gzip request bodies get 501).
//   - Lines must end in CRLF: a bare LF anywhere in a head is answered 400.
//   - A streamed request or response body holds a worker thread while it flows (buffered
//     bodies and idle connections hold none).
//   - A handler that never returns keeps stop() from returning: threads cannot be killed.
//     After the drain deadline its connection is shut down, so the client is released.
//   - The unix_listener() socket file is left on disk after a stop; the next start
//     finds it stale (nobody accepts on it) and replaces it.
//
// CONFIGURATION MACROS
//
//   RESTARTABLE_SERVER_NO_EXCEPTIONS  Define to drop the throwing overloads. Detected
//                                     automatically under -fno-exceptions.

#ifndef RESTARTABLE_SERVER_HPP
#define RESTARTABLE_SERVER_HPP

// ================================================================== version ==

#define RESTARTABLE_SERVER_VERSION_MAJOR 0
#define RESTARTABLE_SERVER_VERSION_MINOR 1
#define RESTARTABLE_SERVER_VERSION_PATCH 0
#define RESTARTABLE_SERVER_VERSION                                                    \
    (RESTARTABLE_SERVER_VERSION_MAJOR * 10000 + RESTARTABLE_SERVER_VERSION_MINOR * 100 + \
     RESTARTABLE_SERVER_VERSION_PATCH)

// ================================================================== config ==

#if !defined(RESTARTABLE_SERVER_NO_EXCEPTIONS) && !defined(__cpp_exceptions) && \
    !defined(__EXCEPTIONS)
#define RESTARTABLE_SERVER_NO_EXCEPTIONS
#endif  // no exception support

// ================================================================ includes ==

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <arpa/inet.h>
#include <cerrno>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

namespace restartable_server {

// ============================================================== public API ==

// ---------------------------------------------------------------- errors --

/// errc: the library's own error conditions. System-call failures are reported with
/// std::system_category() and their errno instead.
enum class errc {
    already_running = 1,  ///< start() or run() while a run is in progress
    invalid_address,      ///< the host could not be parsed or resolved
    path_too_long,        ///< a Unix socket path longer than sockaddr_un allows
    no_listener,          ///< the listener factory returned no socket and no error
    body_too_large,       ///< a streamed request body grew past options::max_body_bytes
    malformed_body,       ///< a chunked request body broke RFC 9112 framing
    body_incomplete,      ///< the client closed the connection before the body ended
    not_listening,        ///< the listener factory's socket is not a listening socket
    listener_threw,       ///< the listener factory threw something other than std::system_error
};

/// error_category: the category of errc; its name() is "restartable_server".
const std::error_category& error_category() noexcept;

/// make_error_code: wraps an errc in a std::error_code of error_category().
std::error_code make_error_code(errc e) noexcept;

}  // namespace restartable_server

namespace std {
template <>
struct is_error_code_enum<restartable_server::errc> : true_type {};
}  // namespace std

namespace restartable_server {

// --------------------------------------------------------------- sockets --

/// unique_fd: owns one file descriptor and closes it on destruction. Move-only.
class unique_fd {
public:
    unique_fd() noexcept = default;
    /// unique_fd(fd): takes ownership of fd (-1 for none).
    explicit unique_fd(int fd) noexcept : fd_(fd) {}
    unique_fd(unique_fd&& other) noexcept : fd_(other.release()) {}
    unique_fd& operator=(unique_fd&& other) noexcept;
    unique_fd(const unique_fd&) = delete;
    unique_fd& operator=(const unique_fd&) = delete;
    ~unique_fd() { reset(); }

    /// get: the descriptor, or -1.
    int get() const noexcept { return fd_; }
    /// valid: whether a descriptor is owned.
    explicit operator bool() const noexcept { return fd_ >= 0; }
    /// release: gives up ownership and returns the descriptor.
    int release() noexcept;
    /// reset: closes the owned descriptor (if any) and takes fd.
    void reset(int fd = -1) noexcept;

private:
    int fd_ = -1;
};

/// listener_factory: builds a bound, listening socket for one run. Called once per
/// start() / run(), in the starting thread. On failure it sets ec and returns an empty
/// unique_fd. The server makes the socket non-blocking and close-on-exec.
using listener_factory = std::function<unique_fd(std::error_code& ec)>;

/// tcp_listener: a factory for a TCP socket bound to host:port with SO_REUSEADDR (so a
/// restart on the same port never fails on TIME_WAIT), not SO_REUSEPORT. host is an IPv4
/// or IPv6 literal or a name ("" means every IPv4 address); port 0 picks an ephemeral port,
/// which server::port() then reports.
listener_factory tcp_listener(std::string host, std::uint16_t port, int backlog = SOMAXCONN);

/// unix_listener: a factory for a Unix-domain stream socket at path. A socket file left
/// by an earlier run that nobody accepts on is replaced; one that is in use gives
/// EADDRINUSE; any other file there gives EADDRINUSE as well.
listener_factory unix_listener(std::string path, int backlog = SOMAXCONN);

/// inherited_listener: a factory that hands out a duplicate of an already listening
/// descriptor (e.g. one inherited from a parent process) on each start. The caller keeps
/// owning fd, which must stay open while the server may start. A duplicate shares the
/// socket's file status flags, so fd becomes non-blocking too.
listener_factory inherited_listener(int fd);

// ----------------------------------------------------------------- HTTP --

/// header: one request header field; views into the request buffer.
struct header {
    std::string_view name;
    std::string_view value;
};

namespace detail {
class body_reader;
}  // namespace detail

/// body_sink: receives a request body piece by piece; returns false to stop reading.
using body_sink = std::function<bool(std::string_view piece)>;

/// request: what a handler sees. Every string_view points into the connection's buffer
/// and is valid only until the handler returns: copy what you keep.
class request {
public:
    std::string_view method;      ///< "GET", "POST", ... (case-sensitive, as sent)
    std::string_view target;      ///< the request-target as sent, e.g. "/a%20b?x=1"
    std::string_view path;        ///< target up to '?' (for "http://host/p?q": "/p"), not percent-decoded
    std::string_view query;       ///< target after '?', raw ("" when none)
    int version_minor = 1;        ///< 1 for HTTP/1.1, 0 for HTTP/1.0
    std::vector<header> headers;  ///< in arrival order
    std::string_view body;        ///< the whole body, de-chunked ("" on a streamed route)

    /// get_header: the value of the first field called name (case-insensitive), or "".
    std::string_view get_header(std::string_view name) const noexcept;
    /// has_header: whether a field called name (case-insensitive) was sent.
    bool has_header(std::string_view name) const noexcept;
    /// param: the percent-decoded path parameter ":name" of the matched route, or "".
    std::string_view param(std::string_view name) const noexcept;
    /// query_param: the first query parameter called name, percent-decoded ('+' is a
    /// space), or std::nullopt when the query has no such parameter.
    std::optional<std::string> query_param(std::string_view name) const;
    /// read_body: on a route registered with body_mode::streamed, calls sink with each
    /// piece of the body (de-chunked) as it arrives, until the body ends or sink returns
    /// false; the whole body is never held in memory. Sends "100 Continue" first when the
    /// client asked for it. Blocks the handler's thread while the client is slow, up to
    /// options::body_timeout between pieces. Returns no error once the whole body was
    /// read; errc::body_too_large past options::max_body_bytes (the response becomes 413),
    /// errc::malformed_body (400), std::errc::timed_out (408), errc::body_incomplete
    /// when the client went away. On a buffered route, calls sink once with body.
    std::error_code read_body(const body_sink& sink) const;

private:
    friend class server;
    std::vector<std::pair<std::string_view, std::string>> params_;
    detail::body_reader* reader_ = nullptr;
};

/// body_writer: where a streamed response's provider writes its body.
class body_writer {
public:
    /// write: sends data now: one chunk to an HTTP/1.1 client, raw bytes to HTTP/1.0
    /// (whose body then ends when the connection closes). Empty data is ignored. Returns
    /// false once the client is gone, a write timed out, or the drain deadline of a stop
    /// cut the connection: the provider should return then.
    bool write(std::string_view data);

private:
    friend class server;
    body_writer(int fd, bool chunked, std::chrono::milliseconds timeout) noexcept
        : fd_(fd), chunked_(chunked), timeout_(timeout) {}
    int fd_;
    bool chunked_;
    bool failed_ = false;
    std::chrono::milliseconds timeout_;
};

/// body_provider: produces a streamed response body by calling body_writer::write.
using body_provider = std::function<void(body_writer& out)>;


/// response: what a handler fills in. Status 200 and an empty body by default.
/// Content-Length, Date and Connection are added by the server; do not set them.
class response {
public:
    int status = 200;
    std::vector<std::pair<std::string, std::string>> headers;
    std::string body;

    /// set_header: replaces the field called name (case-insensitive), or adds it.
    void set_header(std::string_view name, std::string_view value);
    /// set_content: sets the body and its Content-Type.
    void set_content(std::string_view content, std::string_view content_type);
    /// get_header: the value of the field called name (case-insensitive), or "".
    std::string_view get_header(std::string_view name) const noexcept;
    /// set_stream: the body is produced after the head is sent, by provider, on the same
    /// thread, once the handler has returned: chunked to HTTP/1.1 clients, ended by
    /// closing the connection for HTTP/1.0 ones. Each write is sent at once, so
    /// server-sent events (Content-Type text/event-stream) work. Replaces body.
    void set_stream(std::string_view content_type, body_provider provider);

private:
    friend class server;
    void clear() noexcept;
    body_provider provider_;
};

/// handler: called on a worker thread (or on the loop thread when worker_threads is 0)
/// for each request its route matches. Several handlers may run at once. A handler that
/// throws gets a 500 response.
using handler = std::function<void(const request&, response&)>;

namespace detail {
/// parse_status: the outcome of parse_request().
enum class parse_status {
    complete,  ///< a whole request head is at the start of the buffer
    partial,   ///< no error so far, but more bytes are needed
    error,     ///< malformed or over a limit: answer error_status and close
};
/// parse_result: what parse_request() found.
struct parse_result {
    parse_status status = parse_status::partial;
    std::size_t head_bytes = 0;  ///< complete: bytes of the request line and headers,
                                 ///< including the empty line that ends them
    int error_status = 0;        ///< error: 400, 414, 431 or 505
};
/// parse_limits: the sizes parse_request() enforces.
struct parse_limits {
    std::size_t max_request_line = 8 * 1024;  ///< request line without CRLF (414 past it)
    std::size_t max_header_bytes = 16 * 1024; ///< request line and fields (431 past it)
    std::size_t max_headers = 100;            ///< header fields (431 past it)
};
/// parse_request: parses the request line and header fields at the start of buf into out
/// (method, target, path, query, version_minor, headers; everything else untouched).
/// out.headers is cleared first. Strict RFC 9112: lines end in CRLF (a bare LF is 400),
/// no whitespace before a field's colon, no obs-fold, no control bytes in values, "*"
/// only for OPTIONS. Pure: no I/O, no allocation beyond out.headers; the views in out
/// point into buf.
parse_result parse_request(std::string_view buf, request& out, const parse_limits& limits) noexcept;

/// chunked_decoder: decodes a chunked request body (RFC 9112 7.1) incrementally, with
/// chunk extensions and trailer fields (both checked, then dropped).
class chunked_decoder {
public:
    /// step_result: what one step() did. data is a piece of the body inside the input
    /// (possibly empty); status is complete after the last chunk and trailers, error
    /// with error_status 400 on malformed framing, partial otherwise.
    struct step_result {
        parse_status status = parse_status::partial;
        std::size_t consumed = 0;
        std::string_view data;
        int error_status = 0;
    };
    /// step: decodes from the start of in and returns after one piece of data, at the
    /// end of the body, on an error, or when in is used up. Call again with the rest.
    step_result step(std::string_view in) noexcept;

private:
    enum class state : unsigned char {
        size, size_space, extension, size_lf, data, data_cr, data_lf, trailer_start, trailer_name,
        trailer_value, trailer_lf, end_lf
    };
    state state_ = state::size;
    std::uint64_t remaining_ = 0;  // chunk bytes still to come (the size, while parsing it)
    unsigned digits_ = 0;
    std::size_t line_bytes_ = 0;   // bytes of the current extension or trailer section
};
}  // namespace detail

/// status_text: the reason phrase of an HTTP status code ("Not Found"), or "Unknown".
std::string_view status_text(int status) noexcept;

// --------------------------------------------------------------- server --

/// options: the settings of a run. Every field has a working default. A change made with
/// server::set_options() takes effect at the next start.
struct options {
    /// listener: builds the listening socket at each start. Empty (the default) means
    /// tcp_listener("127.0.0.1", 8080).
    listener_factory listener;
    /// worker_threads: at most this many threads run handlers; the loop starts them as
    /// requests find every worker busy, and they last until the run ends. Default 8. 0 runs
    /// every handler in the loop thread, for tiny targets: then one slow handler delays all.
    std::size_t worker_threads = 8;
    /// drain_timeout: how long stop() lets requests in flight finish before it shuts their
    /// connections down. Default 5 s. 0 shuts them down at once.
    std::chrono::milliseconds drain_timeout{5000};
    /// idle_timeout: a keep-alive connection with no request for this long is closed.
    /// Default 60 s. 0 means never.
    std::chrono::milliseconds idle_timeout{60000};
    /// header_timeout: a request head must arrive whole within this time of the
    /// connection's opening or the request's first byte (slowloris); past it the client
    /// gets 408 (if it sent anything) and the connection closes. Default 10 s. 0: never.
    std::chrono::milliseconds header_timeout{10000};
    /// body_timeout: a request body that makes no progress for this long gets 408 and the
    /// connection closes. Default 30 s. 0 means never.
    std::chrono::milliseconds body_timeout{30000};
    /// write_timeout: a response that makes no progress for this long is abandoned and its
    /// connection closed. Default 30 s. 0 means never.
    std::chrono::milliseconds write_timeout{30000};
    /// max_request_line_bytes: the request line may not be longer (414 past it).
    /// Default 8 KiB. 0 means the default.
    std::size_t max_request_line_bytes = 8 * 1024;
    /// max_header_bytes: the request line plus headers may not be longer (431 past it).
    /// Default 16 KiB. 0 means the default.
    std::size_t max_header_bytes = 16 * 1024;
    /// max_headers: at most this many header fields (431 past it). Default 100. 0 means
    /// the default.
    std::size_t max_headers = 100;
    /// max_body_bytes: a larger request body is answered with 413. Default 64 MiB.
    /// 0 means the default.
    std::size_t max_body_bytes = 64 * 1024 * 1024;
    /// max_connections: with this many connections open, a new one is answered 503 and
    /// closed at once (the listener keeps accepting, so the backlog never fills).
    /// Default 20000. 0 means the default.
    std::size_t max_connections = 20000;
    /// max_buffered_bytes: request heads and buffered request bodies held by all the
    /// connections of a run together may not exceed this; a request that would pass it is
    /// answered 503 and its connection closed. Default 256 MiB. 0 means the default.
    std::size_t max_buffered_bytes = 256 * 1024 * 1024;
};

/// body_mode: how a route receives request bodies.
enum class body_mode {
    buffered,  ///< the whole body is read before the handler runs: request::body
    streamed,  ///< the handler runs after the head; it reads with request::read_body()
};

/// server_state: where a server is in its lifecycle.
enum class server_state { stopped, starting, running, stopping };

/// to_string: "stopped", "starting", "running" or "stopping".
std::string_view to_string(server_state s) noexcept;

/// stop_result: what a stop() found.
struct stop_result {
    /// waited: false only when stop() was called from a server thread and so returned
    /// without waiting for the run to end.
    bool waited = true;
    /// drained: every request in flight finished before the drain deadline.
    bool drained = true;
    /// cut: connections shut down at the drain deadline with a request still in flight.
    std::size_t cut = 0;
    /// error: why the run ended when nobody asked it to (e.g. its listener failed);
    /// empty after a requested stop.
    std::error_code error;
};

/// server: an HTTP/1.1 server that can be started, stopped and started again.
/// Neither copyable nor movable. The destructor calls stop(); do not destroy a server
/// from one of its own handlers.
class server {
public:
    /// server: a stopped server with default options. Does not open anything but its
    /// self-pipe; no thread is started.
    server() : server(options{}) {}
    explicit server(options opts);
    ~server();
    server(const server&) = delete;
    server& operator=(const server&) = delete;
    server(server&&) = delete;
    server& operator=(server&&) = delete;

    // Routes. pattern is a path whose segments may be ":name" parameters ("/users/:id").
    // Routes added while running take effect at the next start. Any thread.

    /// route: calls h for requests with this method (exact, case-sensitive) and pattern;
    /// mode says whether h gets the whole body or reads it as a stream.
    server& route(std::string method, std::string pattern, handler h, body_mode mode = body_mode::buffered);
    /// get: route("GET", ...). A GET route also answers HEAD, without the body.
    server& get(std::string pattern, handler h) { return route("GET", std::move(pattern), std::move(h)); }
    /// post: route("POST", ...).
    server& post(std::string pattern, handler h, body_mode mode = body_mode::buffered) {
        return route("POST", std::move(pattern), std::move(h), mode);
    }
    /// put: route("PUT", ...).
    server& put(std::string pattern, handler h, body_mode mode = body_mode::buffered) {
        return route("PUT", std::move(pattern), std::move(h), mode);
    }
    /// patch: route("PATCH", ...).
    server& patch(std::string pattern, handler h, body_mode mode = body_mode::buffered) {
        return route("PATCH", std::move(pattern), std::move(h), mode);
    }
    /// del: route("DELETE", ...).
    server& del(std::string pattern, handler h) { return route("DELETE", std::move(pattern), std::move(h)); }

    /// set_options: replaces the options; the next start uses them. Any thread.
    void set_options(options opts);
    /// get_options: a copy of the current options. Any thread.
    options get_options() const;
    /// set_listener: replaces options::listener; the next start uses it. Any thread.
    void set_listener(listener_factory f);

    /// start: builds a fresh listener, starts the run's threads and returns once the
    /// listener accepts connections, so port() is valid. On failure (the port is in use,
    /// a bad address, no permission, already running) sets ec and leaves no thread and no
    /// descriptor behind. A stop requested while start() runs ends the run right after it
    /// began. Not from a server thread.
    void start(std::error_code& ec) noexcept;
    /// run: like start(), but the loop runs in the calling thread and run() returns when
    /// the run has ended and every thread and descriptor of it is gone.
    void run(std::error_code& ec) noexcept;
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
    /// start: as start(ec), throwing std::system_error on failure.
    void start();
    /// run: as run(ec), throwing std::system_error on failure.
    void run();
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS

    /// request_stop: asks the current run to stop gracefully and returns at once. Only an
    /// atomic store and a write(2): async-signal-safe, callable from any thread, a handler
    /// or a signal handler. No effect when stopped; a stop requested while start() is
    /// running is kept.
    void request_stop() noexcept;
    /// stop: a graceful stop (see LIFECYCLE above) that returns once the run is over.
    /// Idempotent; safe before the first start. From a handler it only requests the stop
    /// (waited == false), so it never deadlocks.
    stop_result stop() noexcept;
    /// wait: blocks until the current run ends (for whatever reason) and its threads are
    /// joined; returns at once when stopped. Returns what the run's stop found (the last
    /// run's, when stopped). Not from a server thread.
    stop_result wait() noexcept;

    /// state: the lifecycle state. Async-signal-safe.
    server_state state() const noexcept { return state_.load(); }
    /// wait_until_running: blocks until the state is running or timeout passes; true if
    /// running. Waits on a condition variable, never a sleep loop.
    bool wait_until_running(std::chrono::milliseconds timeout) const;
    /// port: the local TCP port of the current run (0 when stopped or not TCP).
    std::uint16_t port() const noexcept { return port_.load(); }

private:
    struct route_entry;
    struct run_context;
    struct connection;
    struct worker_context;

    void start_impl(std::error_code& ec, bool in_caller_thread) noexcept;
    void loop(run_context& run) noexcept;
    bool on_server_thread() const;
    void register_server_thread();
    void process(run_context& run, worker_context& w, connection& c) noexcept;
    const route_entry* find_route(const run_context& run, request& req, int& status) const;
    bool respond(run_context& run, worker_context& w, connection& c, const route_entry* r, int route_status) noexcept;
    bool write_response(run_context& run, worker_context& w, connection& c, bool& keep_alive) noexcept;
    void start_worker(run_context& run) noexcept;
    void worker_main(run_context& run) noexcept;
    void set_state(server_state s);
    void wake() noexcept;
    void drain_wake() noexcept;

    mutable std::mutex mutex_;            // guards options_, routes_, server_threads_, state changes
    mutable std::condition_variable cv_;  // signalled on every state change
    std::mutex lifecycle_;                // serialises start/run/stop/wait
    options options_;
    std::vector<std::shared_ptr<const route_entry>> routes_;
    std::vector<std::thread::id> server_threads_;
    std::thread loop_thread_;
    unique_fd wake_read_, wake_write_;   // the self-pipe, for the server's whole life
    std::error_code wake_error_;         // why the self-pipe could not be made, if it could not
    std::atomic<bool> stop_requested_{false};
    std::atomic<server_state> state_{server_state::stopped};
    std::atomic<std::uint16_t> port_{0};
    stop_result last_stop_;
};

}  // namespace restartable_server

// ========================================================= implementation ==

namespace restartable_server {
namespace detail {

// ----------------------------------------------------------- small tools --

/// retry_eintr: calls f until it does not fail with EINTR; returns its last result.
template <class F>
auto retry_eintr(F f) -> decltype(f()) {
    decltype(f()) r;
    do {
        r = f();
    } while (r == -1 && errno == EINTR);
    return r;
}

inline std::error_code last_error() noexcept { return {errno, std::system_category()}; }

inline char ascii_lower(char c) noexcept {
    return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
}

inline bool iequals(std::string_view a, std::string_view b) noexcept {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i)
        if (ascii_lower(a[i]) != ascii_lower(b[i])) return false;
    return true;
}

/// has_token: whether the comma-separated list (a Connection or Expect value) contains
/// token, case-insensitively.
inline bool has_token(std::string_view list, std::string_view token) noexcept {
    while (!list.empty()) {
        std::size_t comma = list.find(',');
        std::string_view item = list.substr(0, comma);
        while (!item.empty() && (item.front() == ' ' || item.front() == '\t')) item.remove_prefix(1);
        while (!item.empty() && (item.back() == ' ' || item.back() == '\t')) item.remove_suffix(1);
        if (iequals(item, token)) return true;
        if (comma == std::string_view::npos) break;
        list.remove_prefix(comma + 1);
    }
    return false;
}

/// is_tchar: whether c may appear in an RFC 9110 token (methods, field names).
inline bool is_tchar(unsigned char c) noexcept {
    // One bit per byte value: DIGIT, ALPHA and !#$%&'*+-.^_`|~ (a table: the parser's hot loop).
    static constexpr std::uint64_t bits[4] = {0x03ff6cfa00000000, 0x57ffffffc7fffffe, 0, 0};
    return (bits[c >> 6] >> (c & 63)) & 1;
}

/// is_token: whether s is a non-empty token (a valid field name).
inline bool is_token(std::string_view s) noexcept {
    for (char c : s)
        if (!is_tchar(static_cast<unsigned char>(c))) return false;
    return !s.empty();
}

/// is_field_value: whether s holds no CR, LF or NUL, which would split a response.
inline bool is_field_value(std::string_view s) noexcept {
    for (char c : s)
        if (c == '\r' || c == '\n' || c == '\0') return false;
    return true;
}

inline int hex_value(char c) noexcept {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/// percent_decode: in with %XX decoded (and '+' as space when plus_as_space). A '%' not
/// followed by two hex digits is kept as it is.
inline std::string percent_decode(std::string_view in, bool plus_as_space) {
    std::string out;
    out.reserve(in.size());
    for (std::size_t i = 0; i < in.size(); ++i) {
        char c = in[i];
        if (c == '%' && i + 2 < in.size()) {
            int hi = hex_value(in[i + 1]), lo = hex_value(in[i + 2]);
            if (hi >= 0 && lo >= 0) {
                out += static_cast<char>(hi * 16 + lo);
                i += 2;
                continue;
            }
        }
        out += (plus_as_space && c == '+') ? ' ' : c;
    }
    return out;
}

/// append_number: appends the decimal form of n.
inline void append_number(std::string& out, std::size_t n) {
    char tmp[24];
    char* p = tmp + sizeof tmp;
    do {
        *--p = static_cast<char>('0' + n % 10);
        n /= 10;
    } while (n != 0);
    out.append(p, static_cast<std::size_t>(tmp + sizeof tmp - p));
}

/// parse_content_length: a Content-Length value, which must be plain digits that fit.
inline bool parse_content_length(std::string_view v, std::size_t& out) noexcept {
    if (v.empty() || v.size() > 18) return false;
    std::size_t n = 0;
    for (char c : v) {
        if (c < '0' || c > '9') return false;
        n = n * 10 + static_cast<std::size_t>(c - '0');
    }
    out = n;
    return true;
}

/// date_cache: the IMF-fixdate of the current second (RFC 9110 5.6.7), formatted once a
/// second. Independent of the C locale. One per thread that writes responses.
class date_cache {
public:
    std::string_view now() noexcept {
        std::time_t t = std::time(nullptr);
        if (t != last_) {
            last_ = t;
            std::tm tm{};
            ::gmtime_r(&t, &tm);
            static constexpr char days[] = "SunMonTueWedThuFriSat";
            static constexpr char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
            char* p = buf_;
            auto two = [&p](int v) {
                *p++ = static_cast<char>('0' + v / 10);
                *p++ = static_cast<char>('0' + v % 10);
            };
            std::memcpy(p, days + 3 * tm.tm_wday, 3), p += 3;
            *p++ = ',', *p++ = ' ';
            two(tm.tm_mday);
            *p++ = ' ';
            std::memcpy(p, months + 3 * tm.tm_mon, 3), p += 3;
            *p++ = ' ';
            int year = tm.tm_year + 1900;
            two(year / 100), two(year % 100);
            *p++ = ' ';
            two(tm.tm_hour), *p++ = ':', two(tm.tm_min), *p++ = ':', two(tm.tm_sec);
            std::memcpy(p, " GMT", 4);
        }
        return {buf_, sizeof buf_};
    }

private:
    std::time_t last_ = -1;
    char buf_[29] = {};
};

/// byte_buffer: a growable byte array whose unused tail is not initialised, so reading
/// from a socket into it costs no memset.
class byte_buffer {
public:
    char* data() noexcept { return data_.get(); }
    std::size_t size() const noexcept { return size_; }
    std::size_t capacity() const noexcept { return capacity_; }
    std::string_view view() const noexcept { return {data_.get(), size_}; }
    /// reserve: capacity for at least n bytes, keeping the content.
    void reserve(std::size_t n) {
        if (n <= capacity_) return;
        std::unique_ptr<char[]> bigger(new char[n]);
        if (size_ != 0) std::memcpy(bigger.get(), data_.get(), size_);
        data_ = std::move(bigger);
        capacity_ = n;
    }
    void grow_by(std::size_t n) noexcept { size_ += n; }
    /// consume: drops the first n bytes.
    void consume(std::size_t n) noexcept {
        if (n < size_) std::memmove(data_.get(), data_.get() + n, size_ - n);
        size_ = n < size_ ? size_ - n : 0;
    }
    void assign(std::string_view bytes) {
        reserve(bytes.size());
        if (!bytes.empty()) std::memcpy(data_.get(), bytes.data(), bytes.size());
        size_ = bytes.size();
    }
    void clear() noexcept { size_ = 0; }
    /// shrink: gives back memory past max_capacity when the content fits in it.
    void shrink(std::size_t max_capacity) {
        if (capacity_ <= max_capacity || size_ > max_capacity) return;
        std::unique_ptr<char[]> smaller(new char[max_capacity]);
        if (size_ != 0) std::memcpy(smaller.get(), data_.get(), size_);
        data_ = std::move(smaller);
        capacity_ = max_capacity;
    }
    void release() noexcept {
        data_.reset();
        size_ = capacity_ = 0;
    }

private:
    std::unique_ptr<char[]> data_;
    std::size_t size_ = 0;
    std::size_t capacity_ = 0;
};

/// send_all: sends every byte of iov[0..count) with MSG_NOSIGNAL, waiting in poll(2) up
/// to timeout (0: forever) whenever the socket buffer is full. False on error or timeout.
inline bool send_all(int fd, iovec* iov, std::size_t count, std::chrono::milliseconds timeout) noexcept {
    while (count != 0 && iov->iov_len == 0) ++iov, --count;
    while (count != 0) {
        msghdr msg{};
        msg.msg_iov = iov;
        msg.msg_iovlen = count;
        ssize_t n = retry_eintr([&] { return ::sendmsg(fd, &msg, MSG_NOSIGNAL); });
        if (n < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK) return false;
            pollfd p{fd, POLLOUT, 0};
            int ms = timeout.count() > 0 ? static_cast<int>(timeout.count()) : -1;
            int r = retry_eintr([&] { return ::poll(&p, 1, ms); });
            if (r <= 0 || (p.revents & (POLLERR | POLLHUP | POLLNVAL))) return false;
            continue;
        }
        auto left = static_cast<std::size_t>(n);
        while (count != 0 && left >= iov->iov_len) left -= iov->iov_len, ++iov, --count;
        if (count != 0) {
            iov->iov_base = static_cast<char*>(iov->iov_base) + left;
            iov->iov_len -= left;
        }
    }
    return true;
}

/// send_now: a minimal error response for a connection about to be closed, without
/// waiting: if the socket buffer is full the client gets no answer, only the close.
inline void send_now(int fd, int status) noexcept {
    char buf[96];
    int n = std::snprintf(buf, sizeof buf, "HTTP/1.1 %d %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                          status, status == 408 ? "Request Timeout" : "Service Unavailable");
    if (n > 0) (void)::send(fd, buf, static_cast<std::size_t>(n), MSG_NOSIGNAL | MSG_DONTWAIT);
}

/// send_continue: the interim "100 Continue" response (RFC 9110 15.2.1).
inline bool send_continue(int fd, std::chrono::milliseconds timeout) noexcept {
    static constexpr std::string_view text = "HTTP/1.1 100 Continue\r\n\r\n";
    iovec iov{const_cast<char*>(text.data()), text.size()};
    return send_all(fd, &iov, 1, timeout);
}

inline bool set_nonblocking_cloexec(int fd) noexcept {
    int fl = ::fcntl(fd, F_GETFL);
    int fdfl = ::fcntl(fd, F_GETFD);
    return fl >= 0 && fdfl >= 0 && ::fcntl(fd, F_SETFL, fl | O_NONBLOCK) == 0 &&
           ::fcntl(fd, F_SETFD, fdfl | FD_CLOEXEC) == 0;
}

inline std::uint16_t local_port(int fd) noexcept {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return 0;
    if (ss.ss_family == AF_INET) return ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
    if (ss.ss_family == AF_INET6) return ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
    return 0;
}

class error_category_impl final : public std::error_category {
public:
    const char* name() const noexcept override { return "restartable_server"; }
    std::string message(int code) const override {
        switch (static_cast<errc>(code)) {
            case errc::already_running: return "the server is already running";
            case errc::invalid_address: return "the address could not be parsed or resolved";
            case errc::path_too_long: return "the Unix socket path is too long";
            case errc::no_listener: return "the listener factory returned no socket";
            case errc::body_too_large: return "the request body is larger than max_body_bytes";
            case errc::malformed_body: return "the chunked request body is malformed";
            case errc::body_incomplete: return "the client closed the connection before the body ended";
            case errc::not_listening: return "the listener is not a listening socket";
            case errc::listener_threw: return "the listener factory threw an exception";
        }
        return "unknown restartable_server error";
    }
};

// ---------------------------------------------------------------- parser --

inline parse_result parse_request(std::string_view buf, request& out, const parse_limits& limits) noexcept {
    out.headers.clear();
    const std::string_view in = buf.substr(0, limits.max_header_bytes);
    // Out of bytes: "partial", unless the head already runs past a limit.
    const parse_result more{buf.size() > in.size() ? parse_status::error : parse_status::partial, 0,
                            buf.size() > in.size() ? 431 : 0};
    const parse_result line_too_long{parse_status::error, 0, 414};
    const bool line_over = buf.size() >= limits.max_request_line + 2;  // no room left for its CRLF
    const parse_result more_line = line_over ? line_too_long : more;
    const parse_result bad{parse_status::error, 0, 400};
    const std::size_t n = in.size();
    std::size_t pos = 0;

    // request-line = method SP request-target SP HTTP-version CRLF
    while (pos < n && is_tchar(static_cast<unsigned char>(in[pos]))) ++pos;
    if (pos == n) return more_line;
    if (pos == 0 || in[pos] != ' ') return bad;
    out.method = in.substr(0, pos);
    const std::size_t target_start = ++pos;
    while (pos < n && static_cast<unsigned char>(in[pos]) > 0x20 && static_cast<unsigned char>(in[pos]) < 0x7f) ++pos;
    if (pos == n) return more_line;
    if (pos == target_start || in[pos] != ' ') return bad;
    out.target = in.substr(target_start, pos - target_start);
    ++pos;
    static constexpr std::string_view http = "HTTP/";
    for (char expected : http) {
        if (pos == n) return more_line;
        if (in[pos++] != expected) return bad;
    }
    // DIGIT "." DIGIT CRLF
    for (std::size_t i = 0; i < 5; ++i) {
        if (pos + i == n) return more_line;
        const char c = in[pos + i];
        const bool ok = (i == 0 || i == 2) ? (c >= '0' && c <= '9') : c == ".\r\n"[i == 1 ? 0 : i - 2];
        if (!ok) return bad;
    }
    if (pos + 3 > limits.max_request_line) return line_too_long;
    if (in[pos] != '1') return {parse_status::error, 0, 505};
    out.version_minor = in[pos + 2] == '0' ? 0 : 1;  // HTTP/1.2 and later are served as 1.1
    pos += 5;

    // origin-form "/path?query", absolute-form "http://host/path?query", or "*".
    std::string_view target = out.target;
    const std::size_t scheme_end = iequals(target.substr(0, 7), "http://")    ? 7
                                   : iequals(target.substr(0, 8), "https://") ? 8
                                                                              : 0;
    if (scheme_end != 0) {
        const std::size_t slash = std::min(target.find_first_of("/?", scheme_end), target.size());
        if (slash == scheme_end) return bad;  // no authority
        target = target.substr(slash);
    } else if (target == "*") {
        if (out.method != "OPTIONS") return bad;
    } else if (target.front() != '/') {
        return bad;
    }
    const std::size_t q = target.find('?');
    out.path = target.empty() || q == 0 ? std::string_view("/") : target.substr(0, q);
    out.query = q == std::string_view::npos ? std::string_view() : target.substr(q + 1);

    // *( field-name ":" OWS field-value OWS CRLF ) CRLF
    for (;;) {
        if (pos == n) return more;
        if (in[pos] == '\r') {
            if (pos + 1 == n) return more;
            if (in[pos + 1] != '\n') return bad;
            return {parse_status::complete, pos + 2, 0};
        }
        const std::size_t name_start = pos;
        while (pos < n && is_tchar(static_cast<unsigned char>(in[pos]))) ++pos;
        if (pos == n) return more;
        if (pos == name_start || in[pos] != ':') return bad;  // also obs-fold, bare LF, "name :"
        std::string_view name = in.substr(name_start, pos - name_start);
        ++pos;
        while (pos < n && (in[pos] == ' ' || in[pos] == '\t')) ++pos;
        const std::size_t value_start = pos;
        for (; pos < n; ++pos) {
            auto c = static_cast<unsigned char>(in[pos]);
            if (c == '\r') break;
            if ((c < 0x20 && c != '\t') || c == 0x7f) return bad;  // NUL, bare LF, controls
        }
        if (pos + 1 >= n) return more;
        if (in[pos + 1] != '\n') return bad;
        std::size_t value_end = pos;
        while (value_end > value_start && (in[value_end - 1] == ' ' || in[value_end - 1] == '\t')) --value_end;
        if (out.headers.size() >= limits.max_headers) return {parse_status::error, 0, 431};
        out.headers.push_back({name, in.substr(value_start, value_end - value_start)});
        pos += 2;
    }
}


inline chunked_decoder::step_result chunked_decoder::step(std::string_view in) noexcept {
    constexpr std::size_t max_line = 4096;  // one chunk extension, or all trailer fields
    const step_result bad{parse_status::error, 0, {}, 400};
    std::size_t i = 0;
    for (; i < in.size(); ++i) {
        const auto c = static_cast<unsigned char>(in[i]);
        const bool ctl = (c < 0x20 && c != '\t') || c == 0x7f;
        switch (state_) {
            case state::size: {
                const int v = hex_value(static_cast<char>(c));
                if (v >= 0) {
                    if (remaining_ >> 56) return bad;  // past 2^60: no real chunk is that big
                    remaining_ = remaining_ * 16 + static_cast<unsigned>(v);
                    ++digits_;
                } else if (digits_ == 0) {
                    return bad;
                } else if (c == ' ' || c == '\t') {
                    state_ = state::size_space;  // BWS, which only a ';' may follow
                } else if (c == ';') {
                    state_ = state::extension;
                    line_bytes_ = 0;
                } else if (c == '\r') {
                    state_ = state::size_lf;
                } else {
                    return bad;
                }
                break;
            }
            case state::size_space:
                if (c == ';') {
                    state_ = state::extension;
                    line_bytes_ = 0;
                } else if (c != ' ' && c != '\t') {
                    return bad;
                }
                break;
            case state::extension:
                if (c == '\r')
                    state_ = state::size_lf;
                else if (ctl || ++line_bytes_ > max_line)
                    return bad;
                break;
            case state::size_lf:
                if (c != '\n') return bad;
                digits_ = 0;
                line_bytes_ = 0;
                state_ = remaining_ == 0 ? state::trailer_start : state::data;
                break;
            case state::data: {
                const std::size_t n =
                    static_cast<std::size_t>(std::min<std::uint64_t>(remaining_, in.size() - i));
                remaining_ -= n;
                if (remaining_ == 0) state_ = state::data_cr;
                return {parse_status::partial, i + n, in.substr(i, n), 0};
            }
            case state::data_cr:
                if (c != '\r') return bad;
                state_ = state::data_lf;
                break;
            case state::data_lf:
                if (c != '\n') return bad;
                state_ = state::size;
                break;
            case state::trailer_start:
                if (c == '\r') {
                    state_ = state::end_lf;
                    break;
                }
                if (!is_tchar(c)) return bad;  // also obs-fold
                state_ = state::trailer_name;
                break;
            case state::trailer_name:
                if (c == ':')
                    state_ = state::trailer_value;
                else if (!is_tchar(c))
                    return bad;
                break;
            case state::trailer_value:
                if (c == '\r')
                    state_ = state::trailer_lf;
                else if (ctl)
                    return bad;
                break;
            case state::trailer_lf:
                if (c != '\n') return bad;
                state_ = state::trailer_start;
                break;
            case state::end_lf:
                if (c != '\n') return bad;
                return {parse_status::complete, i + 1, {}, 0};
        }
        if (state_ >= state::trailer_start && ++line_bytes_ > max_line) return bad;
    }
    return {parse_status::partial, i, {}, 0};
}

/// request_framing: how a request's body is delimited, and whether it expects "100 Continue".
struct request_framing {
    enum kind_t : unsigned char { none, content_length, chunked } kind = none;
    std::size_t length = 0;
    bool expect_continue = false;
};

/// frame_request: checks Host, Content-Length, Transfer-Encoding and Expect of a parsed
/// head (RFC 9112 3.2, 6; RFC 9110 10.1.1). Returns 0, or the status to answer before
/// closing: 400 (bad or ambiguous framing, no or several Host), 417, 501.
inline int frame_request(const request& req, request_framing& out) noexcept {
    out = request_framing();
    std::size_t hosts = 0;
    bool has_length = false, has_te = false, chunked_last = false, other_coding = false, chunked_twice = false;
    for (const header& h : req.headers) {
        if (iequals(h.name, "Host")) {
            ++hosts;
        } else if (iequals(h.name, "Content-Length")) {
            std::size_t len = 0;
            if (!parse_content_length(h.value, len) || (has_length && len != out.length)) return 400;
            has_length = true;
            out.length = len;
        } else if (iequals(h.name, "Transfer-Encoding")) {
            has_te = true;
            std::string_view list = h.value;
            while (!list.empty()) {
                const std::size_t comma = list.find(',');
                std::string_view coding = list.substr(0, comma);
                while (!coding.empty() && (coding.front() == ' ' || coding.front() == '\t')) coding.remove_prefix(1);
                while (!coding.empty() && (coding.back() == ' ' || coding.back() == '\t')) coding.remove_suffix(1);
                if (!coding.empty()) {
                    if (chunked_last) chunked_twice = true;  // chunked must be the last coding
                    chunked_last = iequals(coding, "chunked");
                    other_coding |= !chunked_last;
                }
                if (comma == std::string_view::npos) break;
                list.remove_prefix(comma + 1);
            }
        } else if (iequals(h.name, "Expect")) {
            if (!iequals(h.value, "100-continue")) return 417;
            out.expect_continue = req.version_minor == 1;
        }
    }
    if (hosts > 1 || (hosts == 0 && req.version_minor == 1)) return 400;
    if (has_te) {
        // Both framings at once is how requests are smuggled; HTTP/1.0 has no chunked.
        if (has_length || req.version_minor == 0 || !chunked_last || chunked_twice) return 400;
        if (other_coding) return 501;  // gzip and friends: not decoded here
        out.kind = request_framing::chunked;
    } else if (has_length && out.length != 0) {
        out.kind = request_framing::content_length;
    }
    if (out.kind == request_framing::none) out.expect_continue = false;
    return 0;
}

/// body_reader: the body of a request on a streamed route, read as the handler asks for
/// it: first the bytes already buffered behind the head, then from the socket.
class body_reader {
public:
    body_reader(int fd, const request_framing& framing, std::string_view buffered, byte_buffer& scratch,
                const options& opts, bool send_continue) noexcept
        : fd_(fd), framing_(framing), remaining_(framing.length), current_(buffered), scratch_(scratch),
          opts_(opts), send_continue_(send_continue), done_(framing.kind == request_framing::none) {}

    std::error_code read(const body_sink& sink) {
        if (send_continue_) {
            send_continue_ = false;
            if (!send_continue(fd_, opts_.write_timeout)) error_ = make_error_code(errc::body_incomplete);
        }
        while (!done_ && !error_) {
            while (!current_.empty() && !done_) {
                std::string_view piece;
                if (framing_.kind == request_framing::content_length) {
                    const std::size_t n = std::min(remaining_, current_.size());
                    piece = current_.substr(0, n);
                    current_.remove_prefix(n);
                    remaining_ -= n;
                    done_ = remaining_ == 0;
                } else {
                    const chunked_decoder::step_result r = decoder_.step(current_);
                    current_.remove_prefix(r.consumed);
                    piece = r.data;
                    if (r.status == parse_status::error) return error_ = make_error_code(errc::malformed_body);
                    done_ = r.status == parse_status::complete;
                }
                if (piece.empty()) continue;
                total_ += piece.size();
                if (total_ > opts_.max_body_bytes) return error_ = make_error_code(errc::body_too_large);
                if (!sink(piece)) return {};
            }
            if (!done_) fill();
        }
        return error_;
    }
    bool done() const noexcept { return done_; }
    std::error_code error() const noexcept { return error_; }
    /// rest: bytes read past the end of the body: the start of the next request.
    std::string_view rest() const noexcept { return current_; }
    /// rest_in_scratch: whether rest() lies in the scratch buffer (else in the head's).
    bool rest_in_scratch() const noexcept { return in_scratch_; }

private:
    void fill() {
        scratch_.reserve(64 * 1024);
        for (;;) {
            ssize_t n = retry_eintr([&] { return ::recv(fd_, scratch_.data(), scratch_.capacity(), 0); });
            if (n > 0) {
                current_ = std::string_view(scratch_.data(), static_cast<std::size_t>(n));
                in_scratch_ = true;
                return;
            }
            if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
                error_ = make_error_code(errc::body_incomplete);
                return;
            }
            pollfd p{fd_, POLLIN, 0};
            const int ms = opts_.body_timeout.count() > 0 ? static_cast<int>(opts_.body_timeout.count()) : -1;
            if (retry_eintr([&] { return ::poll(&p, 1, ms); }) == 0) {
                error_ = std::make_error_code(std::errc::timed_out);
                return;
            }
        }
    }

    int fd_;
    request_framing framing_;
    std::size_t remaining_;  // of a Content-Length body
    chunked_decoder decoder_;
    std::string_view current_;  // bytes read and not yet decoded
    byte_buffer& scratch_;
    const options& opts_;
    bool send_continue_;
    bool done_;
    bool in_scratch_ = false;
    std::size_t total_ = 0;
    std::error_code error_;
};
}  // namespace detail

// -------------------------------------------------------------- errors --

inline const std::error_category& error_category() noexcept {
    static const detail::error_category_impl category;
    return category;
}

inline std::error_code make_error_code(errc e) noexcept { return {static_cast<int>(e), error_category()}; }

// ------------------------------------------------------------- sockets --

inline unique_fd& unique_fd::operator=(unique_fd&& other) noexcept {
    if (this != &other) reset(other.release());
    return *this;
}

inline int unique_fd::release() noexcept {
    int fd = fd_;
    fd_ = -1;
    return fd;
}

inline void unique_fd::reset(int fd) noexcept {
    if (fd_ >= 0) ::close(fd_);  // not retried on EINTR: on Linux the descriptor is gone
    fd_ = fd;
}

inline listener_factory tcp_listener(std::string host, std::uint16_t port, int backlog) {
    return [host = std::move(host), port, backlog](std::error_code& ec) -> unique_fd {
        ec.clear();
        addrinfo hints{};
        hints.ai_family = host.empty() ? AF_INET : AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
        std::string service;
        detail::append_number(service, port);
        addrinfo* found = nullptr;
        int rc = ::getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(), &hints, &found);
        if (rc != 0) {
            ec = rc == EAI_SYSTEM ? detail::last_error() : make_error_code(errc::invalid_address);
            return unique_fd();
        }
        std::unique_ptr<addrinfo, void (*)(addrinfo*)> guard(found, ::freeaddrinfo);
        for (addrinfo* ai = found; ai != nullptr; ai = ai->ai_next) {
            unique_fd fd(::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol));
            int one = 1;
            if (!fd || ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
                ::bind(fd.get(), ai->ai_addr, ai->ai_addrlen) != 0 || ::listen(fd.get(), backlog) != 0) {
                ec = detail::last_error();
                continue;
            }
            ec.clear();
            return fd;
        }
        return unique_fd();
    };
}

inline listener_factory unix_listener(std::string path, int backlog) {
    return [path = std::move(path), backlog](std::error_code& ec) -> unique_fd {
        ec.clear();
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        if (path.empty() || path.size() >= sizeof addr.sun_path) {
            ec = make_error_code(errc::path_too_long);
            return unique_fd();
        }
        std::memcpy(addr.sun_path, path.data(), path.size());
        const auto* sa = reinterpret_cast<const sockaddr*>(&addr);
        for (int attempt = 0; attempt < 2; ++attempt) {
            unique_fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
            if (!fd) break;
            if (::bind(fd.get(), sa, sizeof addr) == 0) {
                if (::listen(fd.get(), backlog) == 0) return fd;
                break;
            }
            if (errno != EADDRINUSE || attempt != 0) break;
            // A socket file is there. Stale (nobody accepts: ECONNREFUSED) → replace it.
            struct stat st {};
            if (::lstat(path.c_str(), &st) != 0 || !S_ISSOCK(st.st_mode)) break;
            unique_fd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
            if (!probe || ::connect(probe.get(), sa, sizeof addr) == 0 || errno != ECONNREFUSED) {
                errno = EADDRINUSE;
                break;
            }
            ::unlink(path.c_str());
        }
        ec = detail::last_error();
        return unique_fd();
    };
}

inline listener_factory inherited_listener(int fd) {
    return [fd](std::error_code& ec) -> unique_fd {
        ec.clear();
        unique_fd dup(::fcntl(fd, F_DUPFD_CLOEXEC, 0));
        if (!dup) ec = detail::last_error();
        return dup;
    };
}

// ----------------------------------------------------------------- HTTP --

inline std::string_view request::get_header(std::string_view name) const noexcept {
    for (const auto& h : headers)
        if (detail::iequals(h.name, name)) return h.value;
    return {};
}

inline bool request::has_header(std::string_view name) const noexcept {
    for (const auto& h : headers)
        if (detail::iequals(h.name, name)) return true;
    return false;
}

inline std::string_view request::param(std::string_view name) const noexcept {
    for (const auto& p : params_)
        if (p.first == name) return p.second;
    return {};
}

inline std::optional<std::string> request::query_param(std::string_view name) const {
    std::string_view rest = query;
    while (!rest.empty()) {
        std::size_t amp = rest.find('&');
        std::string_view pair = rest.substr(0, amp);
        std::size_t eq = pair.find('=');
        if (detail::percent_decode(pair.substr(0, eq), true) == name)
            return eq == std::string_view::npos ? std::string() : detail::percent_decode(pair.substr(eq + 1), true);
        if (amp == std::string_view::npos) break;
        rest.remove_prefix(amp + 1);
    }
    return std::nullopt;
}

inline std::error_code request::read_body(const body_sink& sink) const {
    if (reader_) return reader_->read(sink);
    if (!body.empty()) sink(body);
    return {};
}

inline bool body_writer::write(std::string_view data) {
    if (failed_ || data.empty()) return !failed_;
    char size_line[20];
    std::size_t len = 0;
    for (std::size_t n = data.size(); n != 0; n >>= 4) ++len;
    for (std::size_t i = 0, n = data.size(); i < len; ++i, n >>= 4) size_line[len - 1 - i] = "0123456789abcdef"[n & 15];
    size_line[len++] = '\r';
    size_line[len++] = '\n';
    char crlf[] = {'\r', '\n'};
    iovec iov[3] = {{size_line, len}, {const_cast<char*>(data.data()), data.size()}, {crlf, 2}};
    failed_ = chunked_ ? !detail::send_all(fd_, iov, 3, timeout_) : !detail::send_all(fd_, iov + 1, 1, timeout_);
    return !failed_;
}

inline void response::set_stream(std::string_view content_type, body_provider provider) {
    body.clear();
    provider_ = std::move(provider);
    set_header("Content-Type", content_type);
}

inline void response::set_header(std::string_view name, std::string_view value) {
    for (auto& h : headers)
        if (detail::iequals(h.first, name)) {
            h.second.assign(value);
            return;
        }
    headers.emplace_back(std::string(name), std::string(value));
}

inline void response::set_content(std::string_view content, std::string_view content_type) {
    body.assign(content);
    set_header("Content-Type", content_type);
}

inline std::string_view response::get_header(std::string_view name) const noexcept {
    for (const auto& h : headers)
        if (detail::iequals(h.first, name)) return h.second;
    return {};
}

inline void response::clear() noexcept {
    status = 200;
    headers.clear();
    body.clear();
    provider_ = nullptr;
}

inline std::string_view status_text(int status) noexcept {
    switch (status) {
        case 100: return "Continue";
        case 101: return "Switching Protocols";
        case 200: return "OK";
        case 201: return "Created";
        case 202: return "Accepted";
        case 204: return "No Content";
        case 206: return "Partial Content";
        case 301: return "Moved Permanently";
        case 302: return "Found";
        case 303: return "See Other";
        case 304: return "Not Modified";
        case 307: return "Temporary Redirect";
        case 308: return "Permanent Redirect";
        case 400: return "Bad Request";
        case 401: return "Unauthorized";
        case 403: return "Forbidden";
        case 404: return "Not Found";
        case 405: return "Method Not Allowed";
        case 408: return "Request Timeout";
        case 409: return "Conflict";
        case 411: return "Length Required";
        case 413: return "Content Too Large";
        case 414: return "URI Too Long";
        case 415: return "Unsupported Media Type";
        case 417: return "Expectation Failed";
        case 429: return "Too Many Requests";
        case 431: return "Request Header Fields Too Large";
        case 500: return "Internal Server Error";
        case 501: return "Not Implemented";
        case 502: return "Bad Gateway";
        case 503: return "Service Unavailable";
        case 505: return "HTTP Version Not Supported";
        default: return "Unknown";
    }
}

inline std::string_view to_string(server_state s) noexcept {
    switch (s) {
        case server_state::stopped: return "stopped";
        case server_state::starting: return "starting";
        case server_state::running: return "running";
        case server_state::stopping: return "stopping";
    }
    return "unknown";
}

// --------------------------------------------------------------- server --

/// route_entry: one registered route. Shared (immutable) between the server and its runs.
struct server::route_entry {
    std::string method;
    std::vector<std::string> segments;  // the pattern split at '/'; ":name" is a parameter
    handler fn;
    body_mode mode;

    /// match: whether path fits the pattern; fills params with the decoded parameters.
    bool match(std::string_view path, std::vector<std::pair<std::string_view, std::string>>& params) const {
        params.clear();
        if (path.empty() || path.front() != '/') return false;
        std::size_t pos = 1;
        for (const std::string& seg : segments) {
            if (pos > path.size()) return false;
            std::size_t end = std::min(path.find('/', pos), path.size());
            std::string_view part = path.substr(pos, end - pos);
            if (!seg.empty() && seg.front() == ':') {
                if (part.empty()) return false;
                params.emplace_back(std::string_view(seg).substr(1), detail::percent_decode(part, false));
            } else if (seg != part) {
                return false;
            }
            pos = end + 1;
        }
        return pos == path.size() + 1;
    }
};

/// connection: one accepted connection. Owned by the loop; lent to one worker at a time.
struct server::connection {
    static constexpr std::size_t npos = static_cast<std::size_t>(-1);
    /// phase_t: what the connection waits for, which says which timeout applies.
    /// closing: the response is out and our side shut down; the client's unread bytes are
    /// read and dropped until it closes (a close with unread data would reset the
    /// connection, and the client could lose the response), for at most linger_time.
    enum class phase_t : unsigned char { head, body, idle, closing };
    static constexpr std::chrono::milliseconds linger_time{1000};
    unique_fd fd;
    detail::byte_buffer pending;  // bytes of an unfinished request, kept while in the loop
    std::chrono::steady_clock::time_point request_started;  // accept, or a request's first byte
    std::chrono::steady_clock::time_point deadline;  // while polled: when its timeout strikes
    std::size_t slot = 0;          // index in run_context::conns
    std::size_t poll_slot = npos;  // index in run_context::polled; npos while lent out
    bool in_epoll = false;         // added to the run's epoll set (armed or not)
    phase_t phase = phase_t::head;
    bool close = false;            // verdict of the last process(): close, don't poll again
    bool continue_sent = false;    // "100 Continue" already sent for the current request
    detail::chunked_decoder decoder;  // a buffered chunked body being decoded in place:
    std::size_t body_read = 0;        // offset of the next byte to decode,
    std::size_t body_write = 0;       // and of the end of the decoded body
};

/// worker_context: what one serving thread reuses from request to request.
struct server::worker_context {
    static constexpr std::size_t base_buffer = 64 * 1024;
    detail::byte_buffer in;       // the bytes being parsed; request views point here
    detail::byte_buffer scratch;  // what a streamed request body is read into
    request req;
    response res;
    std::string head;  // the response head being written
    detail::date_cache date;
};

/// run_context: everything one run owns: a snapshot of options and routes, the listener,
/// the connections and the workers. Made by start(), destroyed when the run ends.
struct server::run_context {
    options opts;
    detail::parse_limits limits;
    std::vector<std::shared_ptr<const route_entry>> routes;
    unique_fd listener;

    // Hand-offs between the loop and the workers.
    std::mutex mutex;
    std::condition_variable cv;
    std::deque<connection*> queue;      // readable connections for the workers
    std::vector<connection*> returned;  // connections the workers are done with
    bool closing = false;               // workers exit when the queue is empty
    std::size_t idle_workers = 0;       // workers waiting for the queue
    std::vector<std::thread> workers;   // started by the loop as the queue needs them

    // Owned by the loop thread alone.
    unique_fd epoll;  // the self-pipe, the listener and every connection in polled
    std::vector<std::unique_ptr<connection>> conns;
    std::vector<connection*> polled;  // connections the loop waits on (armed in epoll)
    worker_context inline_worker;  // serves in the loop when there are no workers
};

inline server::server(options opts) : options_(std::move(opts)) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC | O_NONBLOCK) == 0) {
        wake_read_.reset(fds[0]);
        wake_write_.reset(fds[1]);
    } else {
        wake_error_ = detail::last_error();
    }
}

inline server::~server() { stop(); }

inline server& server::route(std::string method, std::string pattern, handler h, body_mode mode) {
    auto r = std::make_shared<route_entry>();
    r->method = std::move(method);
    r->mode = mode;
    std::string_view p = pattern;
    if (!p.empty() && p.front() == '/') p.remove_prefix(1);
    for (;;) {
        std::size_t slash = p.find('/');
        r->segments.emplace_back(p.substr(0, slash));
        if (slash == std::string_view::npos) break;
        p.remove_prefix(slash + 1);
    }
    r->fn = std::move(h);
    std::lock_guard<std::mutex> lock(mutex_);
    routes_.push_back(std::move(r));
    return *this;
}

inline void server::set_options(options opts) {
    std::lock_guard<std::mutex> lock(mutex_);
    options_ = std::move(opts);
}

inline options server::get_options() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return options_;
}

inline void server::set_listener(listener_factory f) {
    std::lock_guard<std::mutex> lock(mutex_);
    options_.listener = std::move(f);
}

inline void server::set_state(server_state s) {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        state_.store(s);
    }
    cv_.notify_all();
}

inline bool server::on_server_thread() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return std::find(server_threads_.begin(), server_threads_.end(), std::this_thread::get_id()) !=
           server_threads_.end();
}

inline void server::register_server_thread() {
    std::lock_guard<std::mutex> lock(mutex_);
    server_threads_.push_back(std::this_thread::get_id());
}

inline void server::wake() noexcept {
    const char byte = 1;
    ssize_t r = ::write(wake_write_.get(), &byte, 1);  // EAGAIN: a wake-up is pending anyway
    (void)r;
}

inline void server::drain_wake() noexcept {
    char buf[256];
    while (detail::retry_eintr([&] { return ::read(wake_read_.get(), buf, sizeof buf); }) > 0) {
    }
}

inline void server::request_stop() noexcept {
    const int saved_errno = errno;  // a signal handler must leave errno as it found it
    stop_requested_.store(true);
    if (wake_write_) wake();
    errno = saved_errno;
}

inline void server::start(std::error_code& ec) noexcept { start_impl(ec, false); }
inline void server::run(std::error_code& ec) noexcept { start_impl(ec, true); }

#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
inline void server::start() {
    std::error_code ec;
    start(ec);
    if (ec) throw std::system_error(ec, "restartable_server: start");
}

inline void server::run() {
    std::error_code ec;
    run(ec);
    if (ec) throw std::system_error(ec, "restartable_server: run");
}
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS

inline void server::start_impl(std::error_code& ec, bool in_caller_thread) noexcept {
    ec.clear();
    if (wake_error_) {
        ec = wake_error_;
        return;
    }
    if (on_server_thread()) {
        ec = make_error_code(errc::already_running);
        return;
    }
    std::unique_lock<std::mutex> lifecycle(lifecycle_);
    if (state_.load() != server_state::stopped) {
        ec = make_error_code(errc::already_running);
        return;
    }
    if (loop_thread_.joinable()) loop_thread_.join();  // a run that ended by request_stop()

    auto run = std::make_unique<run_context>();
    {
        std::lock_guard<std::mutex> lock(mutex_);
        run->opts = options_;
        run->routes = routes_;
    }
    options& o = run->opts;
    const options defaults;
    if (o.max_header_bytes == 0) o.max_header_bytes = defaults.max_header_bytes;
    if (o.max_headers == 0) o.max_headers = defaults.max_headers;
    if (o.max_body_bytes == 0) o.max_body_bytes = defaults.max_body_bytes;
    if (o.max_request_line_bytes == 0) o.max_request_line_bytes = defaults.max_request_line_bytes;
    if (o.max_connections == 0) o.max_connections = defaults.max_connections;
    run->limits = {o.max_request_line_bytes, o.max_header_bytes, o.max_headers};
    if (!o.listener) o.listener = tcp_listener("127.0.0.1", 8080);

    stop_requested_.store(false);
    drain_wake();
    set_state(server_state::starting);
    run->listener = o.listener(ec);
    if (run->listener && !detail::set_nonblocking_cloexec(run->listener.get())) ec = detail::last_error();
    if (!run->listener && !ec) ec = make_error_code(errc::no_listener);
    if (ec) {
        run.reset();  // closes the listener
        set_state(server_state::stopped);
        return;
    }
    port_.store(detail::local_port(run->listener.get()));
    // The wake-up pipe is marked by a null pointer, the listener by its own address.
    run->epoll.reset(::epoll_create1(EPOLL_CLOEXEC));
    epoll_event pipe_event{EPOLLIN, {nullptr}}, listener_event{EPOLLIN, {&run->listener}};
    if (!run->epoll || ::epoll_ctl(run->epoll.get(), EPOLL_CTL_ADD, wake_read_.get(), &pipe_event) != 0 ||
        ::epoll_ctl(run->epoll.get(), EPOLL_CTL_ADD, run->listener.get(), &listener_event) != 0) {
        ec = detail::last_error();
        run.reset();
        port_.store(0);
        set_state(server_state::stopped);
        return;
    }

    set_state(server_state::running);
    if (in_caller_thread) {
        register_server_thread();
        lifecycle.unlock();
        loop(*run);
        return;
    }
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
    try {
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
        loop_thread_ = std::thread([this, owned = std::move(run)] {
            register_server_thread();
            loop(*owned);
        });
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
    } catch (const std::system_error& e) {  // no thread: the run (and its listener) is gone
        ec = e.code();
        port_.store(0);
        set_state(server_state::stopped);
    }
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
}

inline stop_result server::stop() noexcept {
    if (on_server_thread()) {  // a handler: waiting for ourselves would deadlock
        request_stop();
        return {false, false, 0, {}};
    }
    std::lock_guard<std::mutex> lifecycle(lifecycle_);
    if (state_.load() == server_state::stopped && !loop_thread_.joinable()) return {};
    request_stop();
    std::unique_lock<std::mutex> lock(mutex_);
    cv_.wait(lock, [this] { return state_.load() == server_state::stopped; });
    stop_result result = last_stop_;
    lock.unlock();
    if (loop_thread_.joinable()) loop_thread_.join();
    return result;
}

inline stop_result server::wait() noexcept {
    if (on_server_thread()) return {false, false, 0, {}};
    {
        std::unique_lock<std::mutex> lock(mutex_);
        cv_.wait(lock, [this] { return state_.load() == server_state::stopped; });
    }
    std::lock_guard<std::mutex> lifecycle(lifecycle_);
    if (state_.load() == server_state::stopped && loop_thread_.joinable()) loop_thread_.join();
    std::lock_guard<std::mutex> lock(mutex_);
    return last_stop_;
}

inline bool server::wait_until_running(std::chrono::milliseconds timeout) const {
    std::unique_lock<std::mutex> lock(mutex_);
    return cv_.wait_for(lock, timeout, [this] { return state_.load() == server_state::running; });
}

inline void server::start_worker(run_context& run) noexcept {
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
    try {
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
        run.workers.emplace_back([this, &run] { worker_main(run); });
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
    } catch (const std::system_error&) {  // out of threads: the ones there are carry on
    }
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
}

inline void server::worker_main(run_context& run) noexcept {
    register_server_thread();
    worker_context w;
    for (;;) {
        connection* c;
        {
            std::unique_lock<std::mutex> lock(run.mutex);
            ++run.idle_workers;
            run.cv.wait(lock, [&run] { return !run.queue.empty() || run.closing; });
            --run.idle_workers;
            if (run.queue.empty()) break;
            c = run.queue.front();
            run.queue.pop_front();
        }
        process(run, w, *c);
        bool first;
        {
            std::lock_guard<std::mutex> lock(run.mutex);
            first = run.returned.empty();
            run.returned.push_back(c);
        }
        if (first) wake();  // later hand-backs ride on the same wake-up
    }
    // Forget this thread's id before it ends: a thread created later may get the same id.
    std::lock_guard<std::mutex> lock(mutex_);
    server_threads_.erase(std::find(server_threads_.begin(), server_threads_.end(), std::this_thread::get_id()));
}

inline void server::process(run_context& run, worker_context& w, connection& c) noexcept {
    const options& o = run.opts;
    detail::byte_buffer& in = w.in;
    if (c.pending.size() > worker_context::base_buffer / 4) {
        std::swap(in, c.pending);  // a large partial body: move it, don't copy it
    } else {
        in.reserve(worker_context::base_buffer);
        in.assign(c.pending.view());
    }
    c.pending.release();
    c.close = false;

    auto linger = [&] {  // the request was not read to its end: see phase_t::closing
        ::shutdown(c.fd.get(), SHUT_WR);
        c.phase = connection::phase_t::closing;
        c.request_started = std::chrono::steady_clock::now();  // the lingering starts now
        in.clear();
    };
    auto fail = [&](int status) {
        w.req.method = std::string_view();  // may be stale: the response has a body
        w.res.clear();
        w.res.status = status;
        w.res.set_content(status_text(status), "text/plain");
        bool keep_alive = false;
        if (write_response(run, w, c, keep_alive))
            linger();
        else
            c.close = true;
    };
    auto finish_request = [&](std::size_t consumed) {  // the response went out; what's next
        c.continue_sent = false;
        c.decoder = detail::chunked_decoder();
        c.body_read = c.body_write = 0;
        c.phase = connection::phase_t::idle;
        in.consume(consumed);
        in.shrink(worker_context::base_buffer);
    };
    for (;;) {
        if (in.size() != 0) {
            if (c.phase == connection::phase_t::idle) {
                c.phase = connection::phase_t::head;
                c.request_started = std::chrono::steady_clock::now();
            }
            const detail::parse_result pr = detail::parse_request(in.view(), w.req, run.limits);
            if (pr.status == detail::parse_status::error) return fail(pr.error_status);
            if (pr.status == detail::parse_status::complete) {
                detail::request_framing f;
                if (int status = detail::frame_request(w.req, f)) return fail(status);
                if (f.kind == detail::request_framing::content_length && f.length > o.max_body_bytes) return fail(413);
                int route_status = 200;
                const route_entry* r = find_route(run, w.req, route_status);
                c.phase = connection::phase_t::body;

                if (r && r->mode == body_mode::streamed && f.kind != detail::request_framing::none) {
                    detail::body_reader reader(c.fd.get(), f, in.view().substr(pr.head_bytes), w.scratch, o,
                                               f.expect_continue && !c.continue_sent);
                    w.req.body = std::string_view();
                    w.req.reader_ = &reader;
                    bool keep_alive = respond(run, w, c, r, route_status);
                    w.req.reader_ = nullptr;
                    if (!keep_alive) {
                        if (reader.done() || reader.error() == errc::body_incomplete)
                            c.close = true;
                        else
                            linger();
                        return;
                    }
                    std::string_view rest = reader.rest();  // the next request's first bytes
                    if (reader.rest_in_scratch()) {
                        in.assign(rest);
                        finish_request(0);
                    } else {
                        finish_request(static_cast<std::size_t>(rest.data() - in.data()));
                    }
                    continue;
                }

                // A buffered body: wait until it is all here. Chunked bodies are decoded
                // in place, behind the head; the progress is kept in the connection.
                std::size_t consumed = 0;
                if (f.kind == detail::request_framing::none) {
                    w.req.body = std::string_view();
                    consumed = pr.head_bytes;
                } else if (f.kind == detail::request_framing::content_length) {
                    if (in.size() >= pr.head_bytes + f.length) {
                        w.req.body = std::string_view(in.data() + pr.head_bytes, f.length);
                        consumed = pr.head_bytes + f.length;
                    } else {
                        in.reserve(pr.head_bytes + f.length);
                    }
                } else {
                    if (c.body_read == 0) c.body_read = c.body_write = pr.head_bytes;
                    while (c.body_read < in.size()) {
                        auto step = c.decoder.step(in.view().substr(c.body_read));
                        c.body_read += step.consumed;
                        if (!step.data.empty()) {
                            std::memmove(in.data() + c.body_write, step.data.data(), step.data.size());
                            c.body_write += step.data.size();
                            if (c.body_write - pr.head_bytes > o.max_body_bytes) return fail(413);
                        }
                        if (step.status == detail::parse_status::error) return fail(step.error_status);
                        if (step.status == detail::parse_status::complete) {
                            w.req.body = std::string_view(in.data() + pr.head_bytes, c.body_write - pr.head_bytes);
                            consumed = c.body_read;
                            break;
                        }
                    }
                }
                if (consumed != 0) {
                    if (!respond(run, w, c, r, route_status)) {
                        c.close = true;
                        return;
                    }
                    finish_request(consumed);
                    continue;
                }
                if (f.expect_continue && !c.continue_sent) {
                    if (!r) return fail(route_status);  // not going to read it: say so now
                    if (!detail::send_continue(c.fd.get(), o.write_timeout)) {
                        c.close = true;
                        return;
                    }
                    c.continue_sent = true;
                }
            }
        }
        if (in.size() == in.capacity()) in.reserve(std::max(in.capacity() * 2, worker_context::base_buffer));
        ssize_t n = detail::retry_eintr(
            [&] { return ::recv(c.fd.get(), in.data() + in.size(), in.capacity() - in.size(), 0); });
        if (n > 0) {
            in.grow_by(static_cast<std::size_t>(n));
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {  // back to the loop to wait
            if (in.size() > worker_context::base_buffer / 4) {
                std::swap(in, c.pending);
            } else {
                c.pending.assign(in.view());
                in.clear();
            }
            return;
        }
        c.close = true;  // the peer closed, or an error
        return;
    }
}

inline const server::route_entry* server::find_route(const run_context& run, request& req, int& status) const {
    const bool is_head = req.method == "HEAD";
    const route_entry* get_for_head = nullptr;
    bool path_known = false;
    for (const auto& r : run.routes) {
        if (!r->match(req.path, req.params_)) continue;
        path_known = true;
        if (r->method == req.method) return r.get();
        if (is_head && !get_for_head && r->method == "GET") get_for_head = r.get();
    }
    if (get_for_head) {
        get_for_head->match(req.path, req.params_);
        return get_for_head;
    }
    status = path_known ? 405 : 404;
    return nullptr;
}

inline bool server::respond(run_context& run, worker_context& w, connection& c, const route_entry* r,
                            int route_status) noexcept {
    request& req = w.req;
    response& res = w.res;
    res.clear();
    std::string_view connection_field = req.get_header("Connection");
    bool keep_alive = req.version_minor == 1 ? !detail::has_token(connection_field, "close")
                                             : detail::has_token(connection_field, "keep-alive");
    if (r) {
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
        try {
            r->fn(req, res);
        } catch (...) {
            res.clear();
            res.status = 500;
            res.set_content(status_text(500), "text/plain");
        }
#else
        r->fn(req, res);
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
    } else {
        res.status = route_status;
        res.set_content(status_text(route_status), "text/plain");
        if (route_status == 405) {
            std::vector<std::string_view> methods;
            for (const auto& other : run.routes)
                if (std::find(methods.begin(), methods.end(), other->method) == methods.end() &&
                    other->match(req.path, req.params_))
                    methods.push_back(other->method);
            auto listed = [&methods](std::string_view m) {
                return std::find(methods.begin(), methods.end(), m) != methods.end();
            };
            if (listed("GET") && !listed("HEAD")) methods.push_back("HEAD");
            std::string allow;
            for (std::string_view m : methods) {
                if (!allow.empty()) allow += ", ";
                allow += m;
            }
            res.set_header("Allow", allow);
        }
    }
    if (req.reader_) {  // a streamed body: did the handler read it all, and was it sound?
        std::error_code ec = req.reader_->error();
        if (ec) {
            int status = ec == errc::body_too_large ? 413
                         : ec == std::errc::timed_out ? 408
                                                      : 400;
            res.clear();
            res.status = status;
            res.set_content(status_text(status), "text/plain");
        }
        if (ec || !req.reader_->done()) keep_alive = false;
    }
    if (stop_requested_.load()) keep_alive = false;  // a stop began: this is the last response
    return write_response(run, w, c, keep_alive) && keep_alive;
}

inline bool server::write_response(run_context& run, worker_context& w, connection& c, bool& keep_alive) noexcept {
    const response& res = w.res;
    const bool bodiless = res.status < 200 || res.status == 204 || res.status == 304;
    const bool is_head = w.req.method == "HEAD";
    const bool streamed = static_cast<bool>(res.provider_) && !bodiless;
    const bool chunked = streamed && w.req.version_minor == 1;
    if (streamed && !chunked) keep_alive = false;  // HTTP/1.0: the close ends the body

    std::string& h = w.head;
    h.clear();
    h += "HTTP/1.1 ";
    detail::append_number(h, static_cast<std::size_t>(res.status));
    h += ' ';
    h += status_text(res.status);
    h += "\r\n";
    bool has_date = false;
    for (const auto& f : res.headers) {
        const std::string& name = f.first;
        if (detail::iequals(name, "Content-Length") || detail::iequals(name, "Connection") ||
            detail::iequals(name, "Transfer-Encoding") || !detail::is_token(name) || !detail::is_field_value(f.second))
            continue;  // framing is the server's; CR/LF would split the response
        has_date |= detail::iequals(name, "Date");
        h += name;
        h += ": ";
        h += f.second;
        h += "\r\n";
    }
    if (chunked) {
        h += "Transfer-Encoding: chunked\r\n";
    } else if (!bodiless && !streamed) {
        h += "Content-Length: ";
        detail::append_number(h, res.body.size());
        h += "\r\n";
    }
    if (!has_date) {
        h += "Date: ";
        h += w.date.now();
        h += "\r\n";
    }
    if (!keep_alive)
        h += "Connection: close\r\n";
    else if (w.req.version_minor == 0)
        h += "Connection: keep-alive\r\n";
    h += "\r\n";
    const bool send_body = !bodiless && !is_head && !streamed;
    iovec iov[2] = {{h.data(), h.size()},
                    {const_cast<char*>(res.body.data()), send_body ? res.body.size() : 0}};
    if (!detail::send_all(c.fd.get(), iov, 2, run.opts.write_timeout)) return false;
    if (!streamed || is_head) return true;

    body_writer out(c.fd.get(), chunked, run.opts.write_timeout);
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
    try {
        res.provider_(out);
    } catch (...) {
        return false;  // no last chunk: the client sees the body is incomplete
    }
#else
    res.provider_(out);
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
    if (out.failed_) return false;
    if (!chunked) return true;
    static constexpr std::string_view last_chunk = "0\r\n\r\n";
    iovec end{const_cast<char*>(last_chunk.data()), last_chunk.size()};
    return detail::send_all(c.fd.get(), &end, 1, run.opts.write_timeout);
}

inline void server::loop(run_context& run) noexcept {
    using clock = std::chrono::steady_clock;
    const options& o = run.opts;
    auto& polled = run.polled;
    auto& conns = run.conns;
    const int epfd = run.epoll.get();
    const bool inline_serving = o.worker_threads == 0;
    bool stopping = false, cut_done = false, accept_paused = false;
    clock::time_point drain_deadline{}, accept_resume{}, next_sweep = clock::time_point::max();
    std::size_t cut = 0;
    std::vector<connection*> returned;
    std::vector<epoll_event> events(256);

    auto close_connection = [&](connection* c) {  // closing the descriptor leaves epoll too
        if (c->poll_slot != connection::npos) {
            const std::size_t i = c->poll_slot;
            polled[i] = polled.back();
            polled[i]->poll_slot = i;
            polled.pop_back();
        }
        const std::size_t i = c->slot;
        std::swap(conns[i], conns.back());
        conns[i]->slot = i;
        conns.pop_back();  // destroys c, closing its descriptor
    };
    auto add_polled = [&](connection* c, clock::time_point now) {  // wait for c's next bytes
        using phase = connection::phase_t;
        const std::chrono::milliseconds limit = c->phase == phase::idle      ? o.idle_timeout
                                                : c->phase == phase::head    ? o.header_timeout
                                                : c->phase == phase::closing ? connection::linger_time
                                                                             : o.body_timeout;
        const clock::time_point from = c->phase == phase::head || c->phase == phase::closing ? c->request_started : now;
        c->deadline = limit.count() > 0 ? from + limit : clock::time_point::max();
        next_sweep = std::min(next_sweep, c->deadline);
        c->poll_slot = polled.size();
        polled.push_back(c);
        // One-shot: a readiness event disarms the connection until the loop re-arms it.
        epoll_event ev{EPOLLIN | EPOLLONESHOT, {c}};
        if (::epoll_ctl(epfd, c->in_epoll ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, c->fd.get(), &ev) != 0)
            return close_connection(c);
        c->in_epoll = true;
    };
    auto settle = [&](connection* c, clock::time_point now) {  // a connection back from serving
        if (c->close || stopping)
            close_connection(c);
        else
            add_polled(c, now);
    };
    auto serve = [&](connection* c, clock::time_point now) {  // c has bytes (or an EOF) to read
        const std::size_t i = c->poll_slot;
        polled[i] = polled.back();
        polled[i]->poll_slot = i;
        polled.pop_back();
        c->poll_slot = connection::npos;
        if (c->phase == connection::phase_t::closing) {  // drop what the client still sends
            char sink[16384];
            ssize_t n = 1;
            for (int reads = 0; reads < 16 && n > 0; ++reads)  // a fast sender can't hold the loop
                n = ::recv(c->fd.get(), sink, sizeof sink, 0);
            c->close = n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
            settle(c, now);
            return;
        }
        if (!inline_serving) {
            bool more_workers;  // every worker busy: start another, up to worker_threads
            {
                std::lock_guard<std::mutex> lock(run.mutex);
                more_workers = run.queue.size() >= run.idle_workers && run.workers.size() < o.worker_threads;
            }
            if (more_workers) start_worker(run);
            if (!run.workers.empty()) {
                {
                    std::lock_guard<std::mutex> lock(run.mutex);
                    run.queue.push_back(c);
                }
                run.cv.notify_one();
                return;
            }
        }
        process(run, run.inline_worker, *c);  // no workers wanted, or none could be started
        settle(c, now);
    };
    auto watch_listener = [&](bool on) {
        epoll_event ev{on ? static_cast<std::uint32_t>(EPOLLIN) : 0u, {&run.listener}};
        ::epoll_ctl(epfd, EPOLL_CTL_MOD, run.listener.get(), &ev);
    };
    auto ms_until = [](clock::time_point t, clock::time_point now) {
        if (t <= now) return 0;
        auto ms = std::chrono::ceil<std::chrono::milliseconds>(t - now).count();
        return static_cast<int>(std::min<decltype(ms)>(ms, 1 << 30));
    };

    for (;;) {
        clock::time_point now = clock::now();
        int timeout = -1;
        if (stopping && !cut_done) timeout = ms_until(drain_deadline, now);
        if (!stopping && next_sweep != clock::time_point::max()) timeout = ms_until(next_sweep, now);
        if (accept_paused) {
            int t = ms_until(accept_resume, now);
            timeout = timeout < 0 ? t : std::min(timeout, t);
        }
        if (!stopping && stop_requested_.load()) timeout = 0;  // its wake-up may predate the run
        int ready = ::epoll_wait(epfd, events.data(), static_cast<int>(events.size()), timeout);
        if (ready < 0) {
            if (errno != EINTR) stop_requested_.store(true);  // cannot happen with a valid epfd
            ready = 0;
        }
        now = clock::now();

        bool woken = false, acceptable = false;
        for (int i = 0; i < ready; ++i) {
            woken |= events[i].data.ptr == nullptr;
            acceptable |= events[i].data.ptr == &run.listener;
        }
        if (woken) drain_wake();
        if (!inline_serving) {  // after draining the pipe: a later hand-back writes again
            {
                std::lock_guard<std::mutex> lock(run.mutex);
                returned.swap(run.returned);
            }
            for (connection* c : returned) settle(c, now);
            returned.clear();
        }
        // Connections with bytes to read. Before anything below may close a connection: an
        // event in this batch must not outlive its connection.
        for (int i = 0; i < ready; ++i) {
            void* p = events[i].data.ptr;
            if (p != nullptr && p != &run.listener) serve(static_cast<connection*>(p), now);
        }

        if (!stopping && stop_requested_.load()) {
            stopping = true;
            set_state(server_state::stopping);
            run.listener.reset();
            accept_paused = false;
            drain_deadline = now + o.drain_timeout;
            // Idle connections close now; one with bytes waiting or a partial request is in
            // flight: epoll reports it next, and its response says "Connection: close".
            std::vector<pollfd> probe;
            probe.reserve(polled.size());
            for (connection* c : polled) probe.push_back({c->fd.get(), POLLIN, 0});
            if (!probe.empty()) ::poll(probe.data(), static_cast<nfds_t>(probe.size()), 0);
            for (std::size_t i = polled.size(); i-- > 0;)
                if (probe[i].revents == 0 && polled[i]->pending.size() == 0) close_connection(polled[i]);
        }

        if (accept_paused && now >= accept_resume) {
            accept_paused = false;
            watch_listener(true);
        }
        if (!stopping && acceptable) {
            for (int i = 0; i < 64; ++i) {
                int fd = ::accept4(run.listener.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (fd < 0) {
                    if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO) continue;
                    if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                        accept_paused = true;  // out of descriptors or memory: back off, don't spin
                        accept_resume = now + std::chrono::milliseconds(100);
                        watch_listener(false);
                    }
                    break;
                }
                if (conns.size() >= o.max_connections) {
                    detail::send_now(fd, 503);
                    ::close(fd);
                    continue;
                }
                int one = 1;
                ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);  // fails harmlessly on Unix sockets
                auto c = std::make_unique<connection>();
                c->fd.reset(fd);
                c->request_started = now;
                c->slot = conns.size();
                conns.push_back(std::move(c));
                add_polled(conns.back().get(), now);
            }
        }

        if (!stopping && now >= next_sweep) {  // idle, header and body timeouts
            next_sweep = clock::time_point::max();
            for (std::size_t i = polled.size(); i-- > 0;) {
                connection* c = polled[i];
                if (c->deadline > now) {
                    next_sweep = std::min(next_sweep, c->deadline);
                    continue;
                }
                if ((c->phase == connection::phase_t::head || c->phase == connection::phase_t::body) &&
                    c->pending.size() != 0)
                    detail::send_now(c->fd.get(), 408);
                close_connection(c);
            }
        }

        if (stopping) {
            if (conns.empty()) break;
            if (!cut_done && now >= drain_deadline) {  // the deadline: cut what is left
                cut_done = true;
                for (auto& c : conns) {
                    ++cut;
                    if (c->poll_slot == connection::npos) ::shutdown(c->fd.get(), SHUT_RDWR);
                }
                for (std::size_t i = polled.size(); i-- > 0;) close_connection(polled[i]);
                if (conns.empty()) break;  // workers still hold the rest: wait for them
            }
        }
    }

    {
        std::lock_guard<std::mutex> lock(run.mutex);
        run.closing = true;
    }
    run.cv.notify_all();
    for (auto& t : run.workers) t.join();
    run.listener.reset();
    port_.store(0);
    {
        std::lock_guard<std::mutex> lock(mutex_);
        last_stop_ = {true, cut == 0, cut, {}};
        server_threads_.clear();
        state_.store(server_state::stopped);
    }
    cv_.notify_all();
}

}  // namespace restartable_server

#endif  // RESTARTABLE_SERVER_HPP

// Copyright (c) 2026 the restartable_server authors
//
// Permission is hereby granted, free of charge, to any person obtaining a copy of this
// software and associated documentation files (the "Software"), to deal in the Software
// without restriction, including without limitation the rights to use, copy, modify,
// merge, publish, distribute, sublicense, and/or sell copies of the Software, and to
// permit persons to whom the Software is furnished to do so, subject to the following
// conditions:
//
// The above copyright notice and this permission notice shall be included in all copies
// or substantial portions of the Software.
//
// THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED,
// INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A
// PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT
// HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF
// CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE
// OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
