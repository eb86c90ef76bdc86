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
//   factory for a fresh listening socket, spawns the worker threads, and runs a loop that
//   poll(2)s the listener, a self-pipe and the idle connections. stop() ends the run
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
//   - Linux (uses accept4, pipe2, SOCK_CLOEXEC). Other POSIX systems are not tested.
//   - No TLS, no HTTP/2. Request bodies must carry Content-Length; a chunked request
//     body is answered with 501. Responses are always Content-Length framed.
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
/// owning fd, which must stay open while the server may start.
listener_factory inherited_listener(int fd);

// ----------------------------------------------------------------- HTTP --

/// header: one request header field; views into the request buffer.
struct header {
    std::string_view name;
    std::string_view value;
};

/// request: what a handler sees. Every string_view points into the connection's buffer
/// and is valid only until the handler returns: copy what you keep.
class request {
public:
    std::string_view method;      ///< "GET", "POST", ... (case-sensitive, as sent)
    std::string_view target;      ///< the request-target as sent, e.g. "/a%20b?x=1"
    std::string_view path;        ///< target up to '?', not percent-decoded
    std::string_view query;       ///< target after '?', raw ("" when none)
    int version_minor = 1;        ///< 1 for HTTP/1.1, 0 for HTTP/1.0
    std::vector<header> headers;  ///< in arrival order
    std::string_view body;        ///< the whole body (Content-Length bytes)

    /// get_header: the value of the first field called name (case-insensitive), or "".
    std::string_view get_header(std::string_view name) const noexcept;
    /// has_header: whether a field called name (case-insensitive) was sent.
    bool has_header(std::string_view name) const noexcept;
    /// param: the percent-decoded path parameter ":name" of the matched route, or "".
    std::string_view param(std::string_view name) const noexcept;
    /// query_param: the first query parameter called name, percent-decoded ('+' is a
    /// space), or std::nullopt when the query has no such parameter.
    std::optional<std::string> query_param(std::string_view name) const;

private:
    friend class server;
    std::vector<std::pair<std::string_view, std::string>> params_;
};

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

private:
    friend class server;
    void clear() noexcept;
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
    int error_status = 0;        ///< error: 400, 431 or 505
};
/// parse_request: parses the request line and header fields at the start of buf into out
/// (method, target, path, query, version_minor, headers; everything else untouched).
/// out.headers is cleared first. Lines end in CRLF; a bare LF is rejected (400). Pure: no
/// I/O, no allocation beyond out.headers, and the views in out point into buf.
parse_result parse_request(std::string_view buf, request& out, std::size_t max_headers,
                           std::size_t max_header_bytes) noexcept;
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
    /// worker_threads: threads that run handlers. Default 8. 0 runs every handler in the
    /// loop thread, for tiny targets: then one slow handler delays every connection.
    std::size_t worker_threads = 8;
    /// drain_timeout: how long stop() lets requests in flight finish before it shuts their
    /// connections down. Default 5 s. 0 shuts them down at once.
    std::chrono::milliseconds drain_timeout{5000};
    /// idle_timeout: a keep-alive connection with no request for this long is closed.
    /// Default 60 s. 0 means never.
    std::chrono::milliseconds idle_timeout{60000};
    /// write_timeout: a response that makes no progress for this long is abandoned and its
    /// connection closed. Default 30 s. 0 means never.
    std::chrono::milliseconds write_timeout{30000};
    /// max_header_bytes: the request line plus headers may not be longer (431 past it).
    /// Default 16 KiB. 0 means the default.
    std::size_t max_header_bytes = 16 * 1024;
    /// max_headers: at most this many header fields (431 past it). Default 100. 0 means
    /// the default.
    std::size_t max_headers = 100;
    /// max_body_bytes: a Content-Length above this is answered with 413. Default 64 MiB.
    /// 0 means the default.
    std::size_t max_body_bytes = 64 * 1024 * 1024;
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

    /// route: calls h for requests with this method (exact, case-sensitive) and pattern.
    server& route(std::string method, std::string pattern, handler h);
    /// get: route("GET", ...). A GET route also answers HEAD, without the body.
    server& get(std::string pattern, handler h) { return route("GET", std::move(pattern), std::move(h)); }
    /// post: route("POST", ...).
    server& post(std::string pattern, handler h) { return route("POST", std::move(pattern), std::move(h)); }
    /// put: route("PUT", ...).
    server& put(std::string pattern, handler h) { return route("PUT", std::move(pattern), std::move(h)); }
    /// patch: route("PATCH", ...).
    server& patch(std::string pattern, handler h) { return route("PATCH", std::move(pattern), std::move(h)); }
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
    /// joined; returns at once when stopped. Not from a server thread.
    void wait() noexcept;

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
    void dispatch(run_context& run, worker_context& w, connection& c, std::string_view head_buf);
    void worker_main(run_context& run) noexcept;
    void set_state(server_state s);

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

