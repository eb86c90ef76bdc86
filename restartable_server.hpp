// restartable_server.hpp v0.1.0 - an HTTP/1.1 server you can start, stop and start again.
// Single header, C++17, standard library + POSIX sockets. MIT licence (end of file).
//
// CONTENTS
//
//   This manual     QUICK START, LIFECYCLE (states, calls, calls that race), ENGINE,
//                   LIMITATIONS, PORTABILITY, CONFIGURATION MACROS, TEST HOOKS
//   Public API      errors, sockets (unique_fd, listener factories), transport (the
//                   seam under connections), TLS (with RESTARTABLE_SERVER_OPENSSL),
//                   HTTP (request, response, body_writer, stream_handle, pull_provider),
//                   WebSocket (websocket, websocket_handlers), server (options,
//                   stop_result, server), static files, forms (multipart/form-data
//                   read streamed, urlencoded forms)
//   Implementation  (namespace detail; search for "// ---- name --") tuning, small
//                   tools (and CPU counting), parser, errors, sockets, TLS (OpenSSL),
//                   HTTP, websocket frames, engine, event sets, hand-over to a new
//                   process, control thread, workers (and the worker policy),
//                   connection, streams and WebSocket, server, static files, forms
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
//   factory for a fresh listening socket and begins a run: a control thread (run()'s
//   caller, or one start() makes) that keeps time and begins the stop, and up to
//   options::worker_threads workers that accept, wait for ready connections and serve
//   them (see ENGINE below). stop() ends the run gracefully; the same object can then be
//   started again, any number of times, with changed options or routes.
//
//   restart() replaces the run without stopping: the next run, built from the current
//   options and routes, takes the listening socket as it is (same factory address) and
//   every connection waiting for a request; the old run finishes its requests in flight
//   (their connections then move too) while the control thread, now the new run's, keeps
//   its time; its workers are joined when its last connection has gone. Nothing is
//   refused or dropped. upgrade() hands the socket to a new process instead, and as this
//   process's run stops, every connection waiting for a request too (idle keep-alive
//   ones, and those whose request is still arriving, with the bytes read so far) over a
//   Unix socket (SCM_RIGHTS); requests in flight finish here with "Connection: close".
//   See server::upgrade() and "hand-over to a new process" in the implementation.
//
//   state      what is going on                              next
//   ---------  --------------------------------------------  ---------------------------
//   stopped    nothing open but the self-pipe; no thread     starting (start/run)
//   starting   the listener is being made                    running, or stopped + error
//   running    accepting and serving                         stopping (a stop request, or
//                                                            the run failed: see error)
//   stopping   listener closed, requests in flight drain     stopped (every thread joined,
//                                                            every descriptor closed)
//
//   call              blocks?                       thread                  signal-safe
//   ----------------  ----------------------------  ----------------------  -----------
//   start()           until accepting (not the run)  any but a server thread no
//   run()             until the run ends            any but a server thread no
//   request_stop()    no                            any, handlers too       yes
//   stop()            until drained and joined (*)  any                     no
//   restart()         until the new run serves      any, handlers too       no
//   upgrade()         until the new process is ready any but a server thread no
//   wait()            until the run ends            any but a server thread no
//   state(), port()   no                            any                     yes
//   wait_until_running(timeout)  up to timeout      any                     no
//   get/post/route/set_options   no                 any; next start sees it no
//
//   (*) Called from a handler (a server thread), stop() cannot wait for the handler
//       that called it: it requests the stop and returns at once with waited == false.
//       The run ends after that handler's response is sent.
//
//   Calls that race (any of them from several threads at once on one server): start()
//   or run() while a run is stopping waits until it is stopped, then starts; while one
//   runs it returns already_running and leaves a pending stop request alone. A stop
//   requested while starting is kept; while stopped it does nothing. restart() when not
//   running, or when a stop begins during it, returns not_running (the stop wins).
//   Concurrent stop()s all return the same stop_result. The README's "When calls race"
//   has the whole table.
//
//   stop(): closes the listener at once (a new connection is refused, so a load balancer
//   moves on), closes idle keep-alive connections (after upgrade(): hands them, and heads
//   still arriving, to the new process), lets requests in flight finish - a head
//   still arriving too - with "Connection: close" on their responses, and at
//   options::drain_timeout after the stop request shuts down what is left (counted in
//   stop_result::cut). It returns once every thread of the run is joined and every
//   descriptor of the run is closed, and reports what the run's stop found; every later
//   stop() or wait() reports the same until the next run. Push streams end (what was
//   written goes out, then the last chunk) and WebSockets are sent close 1001, closing
//   when the client answers; a restart() sends 1012 instead and the streams' connections
//   move on. See "streams and WebSocket" in the implementation.
//
// ENGINE
//
//   No thread waits on one client. Sockets are non-blocking; connections wait in one
//   epoll set (edge-triggered; or poll(2), see PORTABILITY), and the worker that sees one
//   ready reads, parses, runs the handler and writes the response itself - no hand-off
//   between threads (before it serves, it starts another worker if none is left
//   waiting). A response the socket does not take at once waits in its connection until
//   the socket is writable, under write_timeout; a client that pipelines without reading
//   gets no more of its requests read until it reads. New connections are accepted by the
//   worker the listener's event reaches, in the same event set, so a connection costs no
//   thread switch either. One worker starts with the run, the others as load needs them;
//   all last until it ends.
//   Each thread learns of a stop through the stop flag and the self-pipe.
//
//   Worker policy: as many workers serve at once as the process may use CPUs
//   (usable_cpus(): its affinity mask and cgroup CPU quota), so no worker is preempted in
//   the middle of a request by another that woke for the next one. A worker that stays in
//   one handler call or stream for blocked_after (2 ms) is taken to block - on a sleep, a
//   lock, a database, a slow client - and another thread takes its place, up to
//   options::worker_threads in all; when the call returns, that worker serves again if a
//   CPU's place is free, or else waits as a spare until another worker blocks. A slow
//   handler thus holds its own connection only, and fast requests keep one thread per CPU.
//   With one CPU the one worker takes up to 16 ready connections per wait and serves them
//   in turn (a wait per request saved); if it is counted out, those it has not served go
//   back to the event set for the worker that takes its place.
//   The control thread looks at the workers every 2 ms while handlers run, and sleeps when
//   none has run for 100 ms (the first handler call after that wakes it).
//
//   Streams and WebSockets hold no thread either. A push stream (response::push_stream:
//   server-sent events; the program writes from any thread), a pulled body (set_pull)
//   and a file (set_file, sendfile(2)) go out as the socket takes them; a WebSocket
//   (server::websocket) is a connection whose frames are decoded like requests and whose
//   handlers run on the workers like HTTP handlers. Their sends, from any thread, queue
//   framed bytes on the connection and wake it; a worker writes them. Only set_stream()
//   and request::read_body() keep a thread while their body flows (for code that must
//   block).
//
//   Transports: a listener may carry a transport layer (with_transport(); tls_listener()
//   is one), and then every read, write and shutdown of its connections goes through the
//   connection's transport, which says "would block on read" or "on write" whatever the
//   call; a handshake runs first, in the engine like a request head (no thread waits for
//   it, header_timeout covers it). Without a layer the engine calls the socket itself.
//
//   Memory per connection: an idle connection holds no buffer (~0.5 KiB in all); a head
//   at most max_header_bytes; a buffered body grows with the bytes that arrived (never
//   with the declared Content-Length) up to max_body_bytes, chunk framing dropped as it
//   is decoded; one unsent response. All request buffers of a run together: at most
//   max_buffered_bytes (then 503). Each serving thread keeps a 64 KiB read buffer. A
//   failed allocation answers that one connection 503 and closes it.
//
//   A connection the server closes while its client may still be sending is shut down for
//   writing first and its late bytes are dropped for up to a second (lingering close,
//   RFC 9112 9.6), so a reset never destroys a response the client has not read.
//
// LIMITATIONS
//
//   - Tested on Linux only (both backends). Other POSIX systems get the poll(2) backend,
//     written to POSIX but not yet built or run there by this project's CI.
//   - upgrade() under systemd: the main PID changes, which systemd does not follow; use
//     socket activation and a unit restart there (or restart(), which stays in-process).
//   - TLS with OpenSSL 3 only (RESTARTABLE_SERVER_OPENSSL); no HTTP/2, no transfer
//     codings but chunked (gzip request bodies get 501).
//   - Lines must end in CRLF: a bare LF anywhere in a head is answered 400.
//   - WebSocket: no extensions (permessage-deflate is declined), messages are sent as
//     one frame each, and on_close may run on the control thread (a timeout, a cut).
//   - Forms: a part's Content-Transfer-Encoding is not decoded (RFC 7578 4.7 deprecates
//     it), filename* is ignored, a nested multipart/mixed part is handed over as data.
//   - A streamed request body (read_body) or a set_stream() response holds a worker thread
//     while it flows, blocking on the socket with back-pressure; so does a slow handler
//     (push_stream, set_pull, set_file and WebSockets do not).
//     Another worker stands in for it (worker policy, under ENGINE); when
//     options::worker_threads are held, ready connections wait for one to come free.
//   - A handler that never returns keeps stop() from returning: threads cannot be killed.
//     At the drain deadline its connection is shut down, so the client is released.
//   - The unix_listener() socket file is left on disk after a stop; the next start
//     finds it stale (nobody accepts on it) and replaces it.
//   - Compiled with -fno-exceptions, a failed allocation ends the process as usual, and
//     the throwing forms (start(), run(), restart() without an error_code) print the
//     error and abort instead of throwing (as fmt does).
//
// PORTABILITY
//
//   On Linux connections wait in epoll(7), edge-triggered, and descriptors are made with
//   accept4/pipe2/SOCK_CLOEXEC. Everywhere else (macOS, the BSDs), or on Linux with
//   RESTARTABLE_SERVER_USE_POLL, the poll(2) backend is used: POSIX calls only (socket,
//   accept, pipe, then fcntl for FD_CLOEXEC and O_NONBLOCK; SO_NOSIGPIPE where sends have
//   no MSG_NOSIGNAL). Behaviour is the same - the whole test suite runs on both - but a
//   poll(2) that watches the idle connections passes every one of them to the kernel, so
//   a request arriving on an idle (or new) connection costs time in proportion to the
//   open connections; busy connections are watched on a short list and do not. Measured
//   in bench/RESULTS.md (figure 13). upgrade() needs Linux (abstract socket for the
//   child's readiness; pidfd when the kernel has it).
//
// CONFIGURATION MACROS
//
//   RESTARTABLE_SERVER_NO_EXCEPTIONS  Define to build without exceptions. Detected
//                                     automatically under -fno-exceptions.
//   RESTARTABLE_SERVER_SPLIT          Define in every translation unit to compile the
//                                     implementation once (stb style): then define
//                                     RESTARTABLE_SERVER_IMPLEMENTATION too in exactly one
//                                     of them. Without it the header is the whole library.
//   RESTARTABLE_SERVER_OPENSSL        Define (in every translation unit; link libssl and
//                                     libcrypto) for tls_listener(), OpenSSL 3. Without
//                                     it the header has no TLS code and no dependency.
//   RESTARTABLE_SERVER_USE_POLL       Define (in every translation unit) to wait with
//                                     poll(2) instead of epoll(7) on Linux. Chosen
//                                     automatically on every other system. See PORTABILITY.
//   RESTARTABLE_SERVER_TEST_HOOKS     Define (in every translation unit) for
//                                     server::set_sync_point(), see TEST HOOKS. Without
//                                     it the points compile to nothing.
//
// TEST HOOKS
//
//   With RESTARTABLE_SERVER_TEST_HOOKS, a test can run a function of its own on a server
//   thread at a named point (RocksDB's TEST_SYNC_POINT idea) and block there until it lets
//   the thread go on, so a race between two threads happens the same way every run. The
//   points, and the argument each passes:
//
//   point                          where                                         arg
//   -----------------------------  --------------------------------------------  -------
//   transition                     a legal state change, before it is made       new state
//                                  (mutex held: call nothing of the server but
//                                  state() and port() from it)
//   transition.made                the same, just after it is made (mutex held)  new state
//   start.starting                 start()/run(): state starting, no listener    0
//   request_stop.flag_set          the stop flag is set, the self-pipe not yet   0
//                                  written
//   control.woken                  the control thread woke, before it looks at   0
//                                  the stop and restart flags
//   hand_over.listener_moved       a restart: the next run has the listener,     0
//                                  no connection has moved yet
//   park.parked                    a worker parked a connection (another thread  conn state
//                                  may take it from here), before it looks for
//                                  what came meanwhile
//   run_to_end.before_stopped      the run is over (threads joined, descriptors  0
//                                  closed), the state still stopping
//   wait.waiting                   wait() is about to wait for the run's end      0
//                                  (mutex held: signal, never block, from it)
#ifndef RESTARTABLE_SERVER_HPP
#define RESTARTABLE_SERVER_HPP

// ================================================================== version ==

#define RESTARTABLE_SERVER_VERSION_MAJOR 0
#define RESTARTABLE_SERVER_VERSION_MINOR 1
#define RESTARTABLE_SERVER_VERSION_PATCH 0
#define RESTARTABLE_SERVER_VERSION                                                    \
    (RESTARTABLE_SERVER_VERSION_MAJOR * 10000 + RESTARTABLE_SERVER_VERSION_MINOR * 100 + \
     RESTARTABLE_SERVER_VERSION_PATCH)
#define RESTARTABLE_SERVER_STRINGIZE_(x) #x
#define RESTARTABLE_SERVER_STRINGIZE(x) RESTARTABLE_SERVER_STRINGIZE_(x)
/// RESTARTABLE_SERVER_VERSION_STRING: "MAJOR.MINOR.PATCH", e.g. "0.1.0".
#define RESTARTABLE_SERVER_VERSION_STRING                                   \
    RESTARTABLE_SERVER_STRINGIZE(RESTARTABLE_SERVER_VERSION_MAJOR) "."     \
    RESTARTABLE_SERVER_STRINGIZE(RESTARTABLE_SERVER_VERSION_MINOR) "."     \
    RESTARTABLE_SERVER_STRINGIZE(RESTARTABLE_SERVER_VERSION_PATCH)

// ================================================================== config ==

#if __cplusplus < 201703L && (!defined(_MSVC_LANG) || _MSVC_LANG < 201703L)
#error "restartable_server.hpp needs C++17 or later (e.g. -std=c++17)"
#else  // C++17: the whole library, to the end of the file
#if !defined(RESTARTABLE_SERVER_NO_EXCEPTIONS) && !defined(__cpp_exceptions) && \
    !defined(__EXCEPTIONS)
#define RESTARTABLE_SERVER_NO_EXCEPTIONS
#endif  // no exception support
#if !defined(RESTARTABLE_SERVER_USE_POLL) && !defined(__linux__)
#define RESTARTABLE_SERVER_USE_POLL  // epoll is Linux's: elsewhere poll(2)
#endif  // not Linux
// ================================================================ includes ==

#include <algorithm>
#include <array>
#include <atomic>
#include <cassert>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
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
#include <type_traits>
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
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#ifndef RESTARTABLE_SERVER_USE_POLL
#include <sys/epoll.h>
#endif  // epoll
#ifdef __linux__
#include <sys/sendfile.h>
#endif  // Linux
#ifdef RESTARTABLE_SERVER_OPENSSL
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#if OPENSSL_VERSION_NUMBER < 0x30000000L
#error "RESTARTABLE_SERVER_OPENSSL needs OpenSSL 3"
#endif  // OpenSSL < 3
#endif  // RESTARTABLE_SERVER_OPENSSL
#ifdef __linux__
#include <sched.h>        // sched_getaffinity, for usable_cpus()
#include <sys/syscall.h>  // pidfd_open, for upgrade()
#endif  // Linux
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
    not_running,          ///< restart() or upgrade() while no run is in progress (or it is stopping)
    not_activated,        ///< systemd_listener(): no socket was passed (LISTEN_FDS, LISTEN_PID)
    activated_not_open,       ///< systemd_listener(): the descriptor LISTEN_FDS names is not open
    activated_not_socket,     ///< systemd_listener(): the descriptor LISTEN_FDS names is not a socket
    activated_not_listening,  ///< systemd_listener(): the socket LISTEN_FDS names is not listening
    no_transport,             ///< with_transport(): the layer maker returned no layer and no error
    wrong_content_type,     ///< read_multipart(), read_form(): the request's Content-Type is another (415)
    invalid_boundary,       ///< multipart_boundary(): no valid boundary parameter (400)
    malformed_multipart,    ///< a multipart body broke RFC 2046/7578: a bad delimiter line or part head (400)
    multipart_incomplete,   ///< a multipart body ended before its final delimiter (400)
    part_header_too_large,  ///< a multipart part's head passed multipart_limits::max_part_header_bytes (413)
    too_many_parts,         ///< a multipart body passed multipart_limits::max_parts (413)
    malformed_form,         ///< a urlencoded form had a '%' not followed by two hex digits (400)
    form_too_large,         ///< a urlencoded form passed form_limits (413)
    canceled,               ///< a handler given to read_multipart() or multipart_parser returned false
    closed,                 ///< a push stream or WebSocket is closed: its client went away, it was closed, or its run ended
    send_buffer_full,       ///< a send would pass options::max_send_buffer: the client reads too slowly (nothing was queued)
    invalid_utf8,           ///< websocket::send_text() or close() with text that is not UTF-8
    too_long,               ///< a WebSocket ping payload over 125 bytes, or a close reason over 123
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

class transport_layer;
namespace detail {
struct handover_inbox;
struct factory_access;
}  // namespace detail

/// layer_maker: builds the transport layer of one run (see "transport" below), or sets
/// ec and returns null.
using layer_maker = std::function<std::shared_ptr<transport_layer>(std::error_code& ec)>;

/// listener_factory: builds a bound, listening socket for one run. Called once per
/// start() / run() (and per restart() that changes the address), in the starting thread.
/// On failure it sets ec and returns an empty unique_fd. The server makes the socket
/// non-blocking and close-on-exec.
///
/// A factory may carry an address ("tcp:127.0.0.1:8080"; the library's factories all do):
/// restart() hands the listening socket of the current run over to the next one, never
/// closing it, when the next run's factory has the same non-empty address. A factory
/// without one is called at each restart while the old socket still listens, so it must
/// bind something else (or restart() fails with EADDRINUSE and the old run goes on).
class listener_factory {
public:
    listener_factory() = default;
    /// listener_factory(make, address): make is called as make(ec) -> unique_fd.
    template <class F, class = std::enable_if_t<!std::is_same_v<std::decay_t<F>, listener_factory> &&
                                                std::is_invocable_r_v<unique_fd, F&, std::error_code&>>>
    listener_factory(F make, std::string address = {})  // NOLINT: implicit, like std::function
        : make_(std::move(make)), address_(std::move(address)) {}

    /// operator(): makes a listening socket, or sets ec.
    unique_fd operator()(std::error_code& ec) const { return make_(ec); }
    /// valid: whether there is a factory.
    explicit operator bool() const noexcept { return static_cast<bool>(make_); }
    /// address: what the sockets are bound to, as "tcp:HOST:PORT", "unix:PATH" or "fd:N";
    /// "" when unknown.
    const std::string& address() const noexcept { return address_; }

private:
    friend struct detail::factory_access;
    std::function<unique_fd(std::error_code&)> make_;
    std::string address_;
    std::shared_ptr<detail::handover_inbox> handover_;  // systemd_listener(): from upgrade()
    layer_maker layer_;  // with_transport(), tls_listener(): what connections go through
};

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

/// systemd_listener: adopts a listening socket passed by systemd socket activation (or by
/// server::upgrade()): LISTEN_PID must be this process and LISTEN_FDS count the sockets
/// from descriptor 3 on (sd_listen_fds(3) semantics). name picks the socket whose
/// LISTEN_FDNAMES entry matches ("" takes the first). Reads the environment once, here:
/// marks the passed descriptors close-on-exec and unsets LISTEN_PID, LISTEN_FDS and
/// LISTEN_FDNAMES so children do not inherit them (call it before starting threads that
/// read the environment). The socket stays open for the life of the factory and is handed
/// to every run, so restarts keep it. Without one, each start fails with
/// errc::not_activated. A descriptor that is not open, not a socket or not listening
/// (LISTEN_FDS left over from another program, with LISTEN_PID reused) is not adopted,
/// marked or ever closed: each start fails with errc::activated_not_open,
/// activated_not_socket or activated_not_listening, which says so. In a process started
/// by server::upgrade() it also adopts the hand-over socket (RESTARTABLE_SERVER_HANDOVER_FD,
/// then unset): the first run started with this factory takes the old process's idle
/// connections through it.
listener_factory systemd_listener(std::string name = {});

/// notify_ready: tells a service manager the server is ready: sends "READY=1" to the
/// datagram socket named by $NOTIFY_SOCKET (systemd's Type=notify; also how a child
/// started by server::upgrade() says it has taken over). No error and nothing sent
/// when NOTIFY_SOCKET is not set.
std::error_code notify_ready() noexcept;

// ------------------------------------------------------------- transport --

/// io_status: how a transport call ended. ok: bytes moved (a handshake: it is done);
/// want_read / want_write: nothing more can happen until the socket is readable /
/// writable - either direction, whatever the call (a TLS read may have to write);
/// closed: the peer ended the stream; failed: an error. After closed or failed the
/// server closes the connection (lingering, so a response sent is not reset).
enum class io_status : unsigned char { ok, want_read, want_write, closed, failed };

/// io_result: the bytes a read or write moved (0 unless ok), and how it ended.
struct io_result {
    std::size_t bytes = 0;
    io_status status = io_status::ok;
};

/// transport: how the server reads and writes one connection whose listener carries a
/// transport layer (with_transport(), tls_listener()); without one the server uses the
/// socket directly, and nothing of this is called. The socket is non-blocking and no
/// call may block; one thread at a time calls (the connection's holder), not always the
/// same one. A write may take fewer bytes than offered only when the next byte would
/// block; after want_write (or want_read) the same bytes are offered again.
class transport {
public:
    virtual ~transport() = default;
    /// handshake: called until it returns ok, before the first read (default: ok).
    /// header_timeout covers it. failed ends the connection: a transport may send its
    /// own words on fd first (TLS answers plain HTTP with a 400 this way).
    virtual io_result handshake(int fd) noexcept {
        (void)fd;
        return {};
    }
    /// read: up to size bytes into buf; ok with at least one byte, or another status.
    virtual io_result read(int fd, char* buf, std::size_t size) noexcept = 0;
    /// write: bytes of iov[0..count) in order, as many as the socket takes.
    virtual io_result write(int fd, const iovec* iov, int count) noexcept = 0;
    /// shutdown: ends this side of the stream (TLS: close_notify), once, without waiting,
    /// before the server shuts the socket down for writing or closes it.
    virtual void shutdown(int fd) noexcept { (void)fd; }
    /// secure: whether the connection is encrypted and its server authenticated (TLS).
    virtual bool secure() const noexcept { return false; }
    /// peer_identity: what the handshake proved about the client (TLS: the subject of a
    /// verified client certificate, RFC 2253 form), or "".
    virtual std::string_view peer_identity() const noexcept { return {}; }
};

/// transport_layer: what one run's connections share (a TLS context): it makes each
/// accepted connection's transport. A restart builds the next run's layer anew (a TLS
/// certificate is read again), while connections that move to the next run keep their
/// transports - and, through them, the layer that made them.
class transport_layer {
public:
    virtual ~transport_layer() = default;
    /// accept: the transport of a connection just accepted on fd, or null with ec set,
    /// which closes it. Called on the thread that accepted (a worker, or the control
    /// thread), one call at a time per run.
    virtual std::unique_ptr<transport> accept(int fd, std::error_code& ec) = 0;
};

/// with_transport: inner's sockets, whose connections go through a transport layer
/// made by make at every start() and restart(), in the thread that starts; a make that
/// sets ec (or throws) fails that start, and a restart's failure leaves the old run
/// serving. The address stays inner's, so a restart keeps the listening socket.
listener_factory with_transport(listener_factory inner, layer_maker make);

#ifdef RESTARTABLE_SERVER_OPENSSL
// ------------------------------------------------------------------- TLS --

/// tls_options: what a TLS listener serves with. Files are read at every start() and
/// restart() - so a restart after the files changed rotates the certificate - and PEM
/// in memory is used when the file name is "".
struct tls_options {
    std::string cert_chain_file;  ///< PEM: the server's certificate, then its intermediates
    std::string key_file;         ///< PEM: its private key, not encrypted
    std::string cert_chain_pem;   ///< the same in memory, when cert_chain_file is ""
    std::string key_pem;          ///< the same in memory, when key_file is ""
    /// Mutual TLS: ask every client for a certificate issued by a CA in this PEM file;
    /// request::peer_identity() then names a verified client. "" (default): none asked.
    std::string client_ca_file;
    /// With client_ca_file: a client without a valid certificate fails the handshake
    /// (true), or is served with an empty peer_identity() (false). An invalid
    /// certificate always fails it.
    bool require_client_cert = true;
    /// The TLS 1.2 cipher suites, as an OpenSSL cipher list. The default takes only
    /// ECDHE key exchange with an AEAD cipher (Mozilla's "intermediate" profile without
    /// its finite-field DHE): no static-RSA suite (no forward secrecy) and no CBC suite,
    /// both of which OpenSSL's own default list offers. "" keeps OpenSSL's default list.
    /// TLS 1.3's suites are all AEAD with forward secrecy and are OpenSSL's.
    std::string tls12_ciphers = "ECDHE+AESGCM:ECDHE+CHACHA20";
};

/// tls_listener: inner's sockets, every connection over TLS (OpenSSL 3; compiled with
/// RESTARTABLE_SERVER_OPENSSL). The handshake runs in the engine like a request head -
/// no thread waits for it; header_timeout covers it - and plain HTTP sent to the port is
/// answered "400 Bad Request" in plain text. Defaults: TLS 1.2 and 1.3 only, security
/// level 2 (or the system's, if higher), TLS 1.2 suites with forward secrecy and AEAD
/// only (tls_options::tls12_ciphers), no renegotiation,
/// no compression, ALPN "http/1.1" (a client offering only other protocols gets the
/// no_application_protocol alert, RFC 7301 3.2), no server-side session cache, and
/// session tickets whose keys are made at random once per tls_listener() and kept in
/// memory across restarts, so a client resumes its session after a certificate
/// rotation; a new process makes new keys. An idle connection holds no TLS buffers
/// (SSL_MODE_RELEASE_BUFFERS). A start or restart whose certificate or key fails to
/// load returns the error (OpenSSL's reason, in openssl_category()), and a restart's
/// failure leaves the old run serving with the old certificate. upgrade() hands no TLS
/// connection to the new process: a TLS session lives in this process's memory.
listener_factory tls_listener(listener_factory inner, tls_options options);

/// openssl_category: the category of errors from OpenSSL's error queue; value() is
/// ERR_get_error()'s code, message() OpenSSL's text.
const std::error_category& openssl_category() noexcept;
#endif  // RESTARTABLE_SERVER_OPENSSL

// ----------------------------------------------------------------- HTTP --

/// header: one request header field; views into the request buffer.
struct header {
    std::string_view name;
    std::string_view value;
};

namespace detail {
class body_reader;
class run;
struct route;
struct stop_signal;
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
    /// param: the percent-decoded path parameter ":name" of the matched route, or "";
    /// param("*") is what a trailing "*" matched, NOT decoded (so "%2F" stays apart from
    /// "/"). Decoded parameters may hold "/" and "..": check them before using them as
    /// paths (static_files() does).
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
    /// stop_requested: a stop or a restart began while this request was being served: a
    /// long-running handler should finish soon (its run shuts it down at the drain deadline).
    bool stop_requested() const noexcept;
    /// secure: whether the request came over an encrypted, server-authenticated
    /// connection (TLS: tls_listener()).
    bool secure() const noexcept { return transport_ != nullptr && transport_->secure(); }
    /// peer_identity: what the connection's handshake proved about the client: with
    /// mutual TLS, the subject of its verified certificate ("CN=device-7,O=Acme", RFC 2253
    /// order); "" when nothing was proved.
    std::string_view peer_identity() const noexcept {
        return transport_ != nullptr ? transport_->peer_identity() : std::string_view();
    }

private:
    friend class detail::run;
    std::vector<std::pair<std::string_view, std::string>> params_;
    const transport* transport_ = nullptr;
    detail::body_reader* reader_ = nullptr;
    const detail::stop_signal* stop_ = nullptr;
};

/// body_writer: where a streamed response's provider writes its body.
class body_writer {
public:
    /// write: sends data now: one chunk to an HTTP/1.1 client, raw bytes to HTTP/1.0
    /// (whose body then ends when the connection closes) and for a body of known length.
    /// Empty data is ignored. Returns false once the client is gone, a write timed out, the
    /// drain deadline of a stop cut the connection, abort() was called, or data would pass
    /// the known length (then nothing of it is sent): the provider should return then.
    bool write(std::string_view data);
    /// abort: the body cannot be finished (the file being sent shrank, a source failed):
    /// once the provider returns, the connection is closed without the last chunk, or short
    /// of Content-Length, so the client sees an incomplete response rather than a complete
    /// wrong one. Later writes send nothing and return false. (A body of known length that
    /// already has every byte is complete for the client whatever follows; an HTTP/1.0
    /// client of a body without length cannot tell.) Call it on the provider's thread.
    void abort() noexcept { failed_ = true; }
    /// stopping: a stop or restart of the run began: an endless stream (server-sent
    /// events, a long poll) should end now, cleanly, instead of being cut at the drain
    /// deadline. Its connection then closes (stop) or moves to the next run (restart).
    bool stopping() const noexcept;
    /// wait_for_stop: sleeps up to timeout, or less if a stop or restart begins; returns
    /// stopping(). The tick of a stream: `while (!out.wait_for_stop(1s)) out.write(...)`.
    bool wait_for_stop(std::chrono::milliseconds timeout) const;

private:
    friend class detail::run;
    body_writer(int fd, transport* tp, bool chunked, std::uint64_t left, std::chrono::milliseconds timeout,
                const detail::stop_signal* stop) noexcept
        : fd_(fd), tp_(tp), chunked_(chunked), left_(left), timeout_(timeout), stop_(stop) {}
    int fd_;
    transport* tp_;
    bool chunked_;
    bool failed_ = false;
    std::uint64_t left_;  // bytes the known length still allows (UINT64_MAX without one)
    std::chrono::milliseconds timeout_;
    const detail::stop_signal* stop_;
    std::size_t written_ = 0;  // body bytes sent, for the access log
};

/// body_provider: produces a streamed response body by calling body_writer::write.
using body_provider = std::function<void(body_writer& out)>;

namespace detail {
struct channel;
}  // namespace detail

/// stream_handle: the sending end of a push stream (response::push_stream()): a body the
/// program writes whenever it has something, from any thread - server-sent events, a live
/// log. It holds no thread: between writes its connection waits in the engine like an idle
/// one. Copies are the same stream. Every call is safe from any thread at any time, also
/// after the client went away or the run ended (then it reports errc::closed).
class stream_handle {
public:
    /// stream_handle: an empty handle, whose writes fail with errc::closed.
    stream_handle() = default;
    /// write: queues data for the client and returns at once; never blocks. Errors:
    /// errc::closed (the client went away, close() was called, or a stop or restart of the
    /// run ended the stream); errc::send_buffer_full when buffered_amount() plus data would
    /// pass options::max_send_buffer and the buffer is not empty - nothing is queued then:
    /// the client reads too slowly, and the caller decides (skip an update, retry, close).
    /// Empty data is ignored.
    std::error_code write(std::string_view data);
    /// buffered_amount: bytes written and not yet taken by the socket.
    std::size_t buffered_amount() const noexcept;
    /// close: ends the body once what is queued has gone out (the last chunk); the
    /// connection then serves the client's next request. Later writes fail. Idempotent.
    void close() noexcept;
    /// is_open: whether writes are still accepted.
    bool is_open() const noexcept;
    /// stopping: a stop or restart of the run began: the stream is being ended (what is
    /// queued still goes out first).
    bool stopping() const noexcept;

private:
    friend class response;
    friend class detail::run;
    explicit stream_handle(std::shared_ptr<detail::channel> ch) noexcept : ch_(std::move(ch)) {}
    std::shared_ptr<detail::channel> ch_;
};

/// pull_provider: produces the next piece of a response body into dst (room bytes, room >
/// 0) and returns how many bytes it wrote; 0 ends the body; pull_failed (or a throw) ends
/// the connection short, as body_writer::abort() does. The engine calls it on a worker
/// whenever the socket can take more, never two calls at once for one response, so a
/// client that reads slowly holds no thread - only the one piece not yet sent.
using pull_provider = std::function<std::size_t(char* dst, std::size_t room)>;

/// pull_failed: what a pull_provider returns when the body cannot be finished.
inline constexpr std::size_t pull_failed = static_cast<std::size_t>(-1);


/// response: what a handler fills in. Status 200 and an empty body by default.
/// Content-Length, Date and Connection are added by the server; do not set them.
class response {
public:
    int status = 200;
    std::vector<std::pair<std::string, std::string>> headers;
    std::string body;

    /// set_header: replaces the field called name (case-insensitive), or adds it.
    void set_header(std::string_view name, std::string_view value);
    /// set_content: sets the body and its Content-Type. A stream or file set before is
    /// dropped (a push stream's handle closes and its on_close runs).
    void set_content(std::string_view content, std::string_view content_type);
    /// get_header: the value of the field called name (case-insensitive), or "".
    std::string_view get_header(std::string_view name) const noexcept;
    /// set_stream: the body is produced after the head is sent, by provider, on the same
    /// thread, once the handler has returned: chunked to HTTP/1.1 clients, ended by
    /// closing the connection for HTTP/1.0 ones. Each write is sent at once, so
    /// server-sent events (Content-Type text/event-stream) work. Replaces body. A provider
    /// that throws or calls body_writer::abort() ends the connection without the last
    /// chunk. Not called for HEAD.
    void set_stream(std::string_view content_type, body_provider provider);
    /// set_stream(content_type, length, provider): a streamed body of exactly length bytes,
    /// known before it is produced (a file): the head carries "Content-Length: length", so
    /// HEAD tells the size and progress bars can show it, the writes go out unchunked, and
    /// HTTP/1.0 clients may keep the connection. A provider that writes fewer bytes (or
    /// aborts, or throws) ends the connection short of length, so the client sees the body
    /// incomplete; a write that would pass length sends nothing and returns false.
    void set_stream(std::string_view content_type, std::uint64_t length, body_provider provider);

    // Bodies that hold no thread while they flow. set_stream() keeps a worker for as long
    // as its provider runs (for a provider that must block); these do not.

    /// push_stream: the body is written later, from any thread, through the handle returned
    /// (see stream_handle): chunked to HTTP/1.1 clients, ended by closing the connection for
    /// HTTP/1.0 ones. The head goes out when the handler returns; until the handle is
    /// closed the connection costs no thread. on_close, if given, is called once when the
    /// stream ends for any reason (closed, the client went away, a stop), on a server
    /// thread: keep it short (drop the handle from a subscriber list). Replaces body. For
    /// HEAD, the head alone is sent and the handle is closed at once.
    stream_handle push_stream(std::string_view content_type, std::function<void()> on_close = {});
    /// set_pull: the body is pulled from provider (see pull_provider) whenever the socket
    /// can take more: chunked to HTTP/1.1 clients, ended by closing for HTTP/1.0 ones.
    void set_pull(std::string_view content_type, pull_provider provider);
    /// set_pull(content_type, length, provider): a pulled body of exactly length bytes,
    /// sent with Content-Length; a provider that ends early ends the connection short.
    void set_pull(std::string_view content_type, std::uint64_t length, pull_provider provider);
    /// set_file: the body is length bytes of file from offset, sent with Content-Length by
    /// sendfile(2) (Linux, no transport) or read in pieces (TLS, elsewhere) as the socket
    /// takes them, holding no thread. The response owns file and closes it. A file that
    /// turns out shorter ends the connection short. Replaces body. (sendfile(2) sends from
    /// the page cache: bytes of a file changed while in flight may reach the client
    /// changed - a truncated part as zeros - before the connection ends short.)
    void set_file(std::string_view content_type, unique_fd file, std::uint64_t offset, std::uint64_t length);

private:
    friend class detail::run;
    void clear() noexcept;
    void release_body() noexcept;
    /// kind_: where the body comes from.
    enum class body_kind : unsigned char { plain, blocking_stream, push, pull, file };
    body_kind kind_ = body_kind::plain;
    body_provider provider_;
    bool stream_sized_ = false;      // a stream or pull with a length: Content-Length, not chunked
    std::uint64_t stream_length_ = 0;
    std::shared_ptr<detail::channel> push_;  // push_stream()
    std::size_t send_limit_ = 0;              // options::max_send_buffer of the run calling the handler
    pull_provider pull_;                      // set_pull()
    unique_fd file_;                          // set_file()
    std::uint64_t file_offset_ = 0;
};

/// handler: called on a worker thread (or on the loop thread when worker_threads is 0)
/// for each request its route matches. Several handlers may run at once. A handler that
/// throws gets a 500 response.
using handler = std::function<void(const request&, response&)>;


/// status_text: the reason phrase of an HTTP status code ("Not Found"), or "Unknown".
std::string_view status_text(int status) noexcept;

// ------------------------------------------------------------ WebSocket --

/// websocket: one WebSocket connection (RFC 6455), as its handlers and the program see
/// it. Copies are the same connection; keep one to send from any thread (a status thread
/// that pushes updates). Every call is safe from any thread at any time, also after the
/// connection has gone (then it reports errc::closed). A send queues a frame and returns at
/// once: it never blocks and holds no thread; the connection's worker sends it when the
/// socket can take it. Messages are sent whole, as one frame each.
class websocket {
public:
    /// websocket: an empty handle, whose sends fail with errc::closed.
    websocket() = default;
    /// send_text: queues a text message (text must be UTF-8: errc::invalid_utf8 if not).
    /// errc::send_buffer_full when buffered_amount() plus the message would pass
    /// options::max_send_buffer and the buffer is not empty: nothing is queued, and the
    /// caller decides (skip an update, retry later, close) - a slow reader never grows the
    /// server's memory past that bound. errc::closed once a close was sent or received.
    std::error_code send_text(std::string_view text);
    /// send_binary: queues a binary message; errors as send_text().
    std::error_code send_binary(std::string_view data);
    /// ping: queues a ping with payload (at most 125 bytes: errc::too_long). The engine
    /// answers the client's pings and sends its own keep-alive pings by itself.
    std::error_code ping(std::string_view payload = {});
    /// close: begins the closing handshake with code (1000 normal; 3000-4999 the
    /// program's own) and reason (UTF-8, at most 123 bytes): the frame goes after what is
    /// queued, no message is delivered after it, and the connection closes when the
    /// client answers (or options::websocket_close_timeout passes). Idempotent: a second
    /// close, or one after the client's, reports errc::closed.
    std::error_code close(std::uint16_t code = 1000, std::string_view reason = {});
    /// buffered_amount: bytes queued and not yet taken by the socket (the browser API's
    /// bufferedAmount).
    std::size_t buffered_amount() const noexcept;
    /// is_open: open (the handshake done, no close sent or received).
    bool is_open() const noexcept;
    /// stopping: a stop or restart of the run began; it has sent (or is about to send)
    /// close 1001 (stop) or 1012 (restart) to the client.
    bool stopping() const noexcept;
    /// subprotocol: the subprotocol chosen at the handshake ("" for none).
    std::string subprotocol() const;
    /// id: a number unique among the WebSockets of this process; 0 for an empty handle.
    std::uint64_t id() const noexcept;

private:
    friend class detail::run;
    explicit websocket(std::shared_ptr<detail::channel> ch) noexcept : ch_(std::move(ch)) {}
    std::error_code send(unsigned opcode, std::string_view data);
    std::shared_ptr<detail::channel> ch_;
};

/// websocket_upgrade: what on_upgrade sees of a handshake and decides about it.
struct websocket_upgrade {
    /// offered: the subprotocols the client offered (Sec-WebSocket-Protocol), in order.
    std::vector<std::string_view> offered;
    /// subprotocol: set to one of offered to choose it; "" (the default) chooses none.
    /// A value not offered fails the handshake with 500 (a program error).
    std::string subprotocol;
    /// refuse: set to an HTTP status (401, 403, 404, ...) to refuse the handshake; 0 (the
    /// default) accepts it.
    int refuse = 0;
};

/// websocket_handlers: what a WebSocket route does. Each handler runs on a worker, like
/// an HTTP handler, one at a time for one connection and in the order of the frames;
/// handlers of different connections run at once. A handler that throws closes its
/// connection with 1011.
struct websocket_handlers {
    /// on_upgrade: called with the handshake request once it passed the checks of RFC
    /// 6455 4.2.1 (and the origin check), before the 101 is sent: may refuse it or choose
    /// a subprotocol. Empty: accepted, no subprotocol.
    std::function<void(const request& req, websocket_upgrade& upgrade)> on_upgrade;
    /// on_open: the handshake is done (the 101 is queued); req is the handshake request,
    /// valid during the call. Sends from here go out right after the 101.
    std::function<void(websocket& ws, const request& req)> on_open;
    /// on_message: a whole message from the client (fragments joined); data is valid
    /// during the call only. text: it came as a text message (valid UTF-8: checked).
    std::function<void(websocket& ws, std::string_view data, bool text)> on_message;
    /// on_close: once per connection that opened, whatever ended it: the code and reason
    /// of the client's close frame (1005 when it had no code), the code the server failed
    /// the connection with (1002 protocol error, 1007 invalid UTF-8, 1009 too big, 1011 a
    /// handler threw, 1013 the run's max_buffered_bytes reached), or 1006 when the
    /// connection went without a close frame (the client vanished, a timeout, the drain
    /// deadline). On a server thread - the control thread for a timeout or a cut at the
    /// drain deadline: keep it short.
    std::function<void(websocket& ws, std::uint16_t code, std::string_view reason)> on_close;
    /// allowed_origins: browsers send Origin; a handshake whose Origin is not the
    /// request's own (scheme-less host[:port] equal to Host) is refused with 403 unless
    /// listed here exactly ("https://ui.example:8443"), or "*" is listed. A handshake
    /// without Origin (not from a browser) is not checked. This stops another web site
    /// from driving the device from its visitors' browsers (cross-site WebSocket
    /// hijacking).
    std::vector<std::string> allowed_origins;
};

// --------------------------------------------------------------- server --

/// access_entry: one response, as options::access_log sees it. The views are valid only
/// during the call. What the fields may hold, for a log format that must not break: method
/// is a token (letters, digits and !#$%&'*+-.^_`|~) or ""; target is visible ASCII only
/// (0x21 to 0x7e: no space, no control byte, nothing above 0x7e), up to
/// max_request_line_bytes, or "", and so may hold '"', '\', '<', '>', '{', '}', '|', '^'
/// and '`': write it through log_escape() between quotes (README, Logs).
struct access_entry {
    std::string_view method;  ///< as sent; "" for an error the server answered itself (400, 408, 413, ...)
    std::string_view target;  ///< as sent; "" likewise
    int status = 0;
    std::size_t bytes = 0;    ///< body bytes: the body handed to the socket, or those a stream wrote (0 when the head could not be sent)
    std::chrono::microseconds duration{0};  ///< from the whole head's arrival to the response handed over
};

/// log_escape: s made safe for one line of a log, also between double quotes: '"' and '\'
/// get a backslash before them; CR, LF and TAB become \r, \n and \t; every other byte
/// below 0x20, and 0x7f, becomes \xHH (lower-case hex); other bytes (UTF-8 text) are kept.
/// error_log lines have the text that comes from outside (an exception's what()) escaped
/// so. Any thread; does not block.
std::string log_escape(std::string_view s);

/// options: the settings of a run. Every field has a working default. A change made with
/// server::set_options() takes effect at the next start.
struct options {
    /// listener: builds the listening socket at each start. Empty (the default) means
    /// tcp_listener("127.0.0.1", 8080).
    listener_factory listener;
    /// worker_threads: at most this many threads serve connections (read, run handlers,
    /// write). As many as usable_cpus() serve at once; the others up to this bound start
    /// only to stand in for workers held by a handler or a stream that blocks (see ENGINE:
    /// worker policy). One worker starts with the run (it accepts), the others as load
    /// needs them; all last until the run ends.
    /// Default 8. 0 serves everything in the run's control thread, for tiny targets: then
    /// one slow handler delays all, and a stop's drain deadline is checked when it returns.
    std::size_t worker_threads = 8;
    /// drain_timeout: how long after the stop request stop() lets requests in flight
    /// finish before it shuts their connections down. Default 5 s. 0 shuts them down at once.
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
    /// write_timeout: a response that makes no progress for this long (the client does
    /// not read) is abandoned and its connection closed. Default 30 s. 0 means never.
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
    /// answered 503 and its connection closed (a WebSocket message: closed with 1013, Try
    /// Again Later). Default 256 MiB. 0 means the default.
    std::size_t max_buffered_bytes = 256 * 1024 * 1024;
    /// max_send_buffer: the bytes one push stream or WebSocket may hold queued for a
    /// client that reads slowly; a send that would pass it is refused with
    /// errc::send_buffer_full (the caller decides), unless the buffer is empty (so any one
    /// message can be sent: the bound is then that message). While a WebSocket's buffer
    /// is at the bound - what is queued reaches it, or a send was refused since the socket
    /// last took all there was - no more of its frames are read (its client must read
    /// first). Default 1 MiB. 0 means the default.
    std::size_t max_send_buffer = 1024 * 1024;
    /// websocket_max_message: a WebSocket message (all its fragments) may not be larger;
    /// a longer one closes the connection with 1009, known from the frame's header alone.
    /// Counted in max_buffered_bytes while it arrives. Default 16 MiB. 0 means the default.
    std::size_t websocket_max_message = 16 * 1024 * 1024;
    /// websocket_ping_interval: a WebSocket from which nothing came for this long is sent
    /// a ping; if nothing comes for another interval, it is closed (on_close sees 1006).
    /// Default 30 s. 0 means never (then idle_timeout does not apply either).
    std::chrono::milliseconds websocket_ping_interval{30000};
    /// websocket_close_timeout: how long a WebSocket waits for the client's answer to a
    /// close frame the server sent (also at a stop, where the drain deadline bounds it
    /// too). Default 5 s. 0 means no bound but the drain deadline.
    std::chrono::milliseconds websocket_close_timeout{5000};
    /// access_log: called once per response the server tries to send, on the thread that
    /// sent it (keep it quick: it delays that connection): also for HEAD, a stream whose
    /// provider threw or aborted, and a response whose head the client did not take
    /// (bytes tells how far each got). Not for a request cut at a stop's drain deadline
    /// before its response began (stop_result::cut counts those), nor for the 503 that
    /// max_connections answers at accept. Empty (the default): no log.
    std::function<void(const access_entry&)> access_log;
    /// error_log: called with one line for each problem the server handles on its own (a
    /// handler or hook that threw, a failed accept, an allocation failure answered 503).
    /// The line has no newline and no control byte: the text of an exception in it went
    /// through log_escape(). Any thread. Empty (the default): nothing is reported.
    std::function<void(std::string_view message)> error_log;
};

/// usable_cpus: how many CPUs this process may run on: the CPUs of its affinity mask
/// (sched_getaffinity; the online CPUs where there is none), fewer when its cgroup has a
/// CPU quota (cgroup v2 cpu.max, or v1 cpu.cfs_quota_us, rounded up). At least 1. A run
/// lets this many workers serve at once (at most options::worker_threads); it is read at
/// each start and restart, so a changed affinity or quota counts from the next one.
std::size_t usable_cpus() noexcept;

/// body_mode: how a route receives request bodies.
enum class body_mode {
    buffered,  ///< the whole body is read before the handler runs: request::body
    streamed,  ///< the handler runs after the head; it reads with request::read_body()
};

/// server_state: where a server is in its lifecycle; the table under LIFECYCLE at the top
/// of this file lists each state's transitions, which the server checks as it makes them.
enum class server_state { stopped, starting, running, stopping };

/// to_string: "stopped", "starting", "running" or "stopping".
std::string_view to_string(server_state s) noexcept;

/// stop_reason: what an on_stop hook is told began.
enum class stop_reason {
    stop,     ///< the run is stopping (stop(), request_stop(), or it failed)
    restart,  ///< restart(): the run hands its listener and idle connections to the next
};

/// stop_hook: called on the run's control thread when a stop or restart begins, before
/// the drain; keep it short (wake your own waiters, turn readiness off).
using stop_hook = std::function<void(stop_reason)>;

/// stop_result: what a stop() found. The counts include the runs that restart() replaced
/// since the start.
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
    /// idle_closed: keep-alive connections with no request in flight, closed by the stop.
    std::size_t idle_closed = 0;
    /// finished: responses completed after the stop or a restart began (requests that
    /// were in flight, or arriving, then).
    std::size_t finished = 0;
    /// handed_over: connections waiting for a request (idle keep-alive ones, and those
    /// whose next request was still arriving) that upgrade() passed to the new process
    /// instead of closing them. 0 after any other stop.
    std::size_t handed_over = 0;
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

    // Routes. pattern is a path whose segments may be ":name" parameters ("/users/:id");
    // a last segment "*" matches the rest of the path ("/static/*": "/static/a/b.css").
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
    /// websocket: a WebSocket endpoint (RFC 6455) at pattern, for GET handshakes: checks
    /// the handshake strictly (426 with "Sec-WebSocket-Version: 13" for another version,
    /// 400 for a malformed one, 403 for a foreign Origin), declines every extension (no
    /// compression), then serves frames in the engine: an idle WebSocket is an idle
    /// connection, no thread waits on it. A stop sends close 1001 (Going Away), a
    /// restart 1012 (Service Restart), and both wait for the client's answer within the
    /// drain deadline. See websocket and websocket_handlers.
    server& websocket(std::string pattern, websocket_handlers handlers);

    /// set_options: replaces the options; the next start uses them. Any thread.
    void set_options(options opts);
    /// get_options: a copy of the current options. Any thread.
    options get_options() const;
    /// set_listener: replaces options::listener; the next start uses it. Any thread.
    void set_listener(listener_factory f);
    /// on_stop: adds a hook called when a stop or a restart begins (Go's
    /// RegisterOnShutdown), on the control thread. Like routes, hooks added while running
    /// take effect at the next start or restart. Any thread.
    server& on_stop(stop_hook hook);

    /// start: builds a fresh listener, starts the run's threads and returns once the
    /// listener accepts connections, so port() is valid (state() says running before the
    /// first request is answered). On failure (the port is in use, a bad address, no
    /// permission, already running) sets ec and leaves no thread and no descriptor behind.
    /// A stop requested while start() runs ends the run right after it began. Not from a
    /// server thread.
    void start(std::error_code& ec) noexcept;
    /// run: like start(), but the loop runs in the calling thread and run() returns when
    /// the run has ended and every thread and descriptor of it is gone.
    void run(std::error_code& ec) noexcept;
    /// start: as start(ec), throwing std::system_error on failure (without exceptions:
    /// printing it to stderr and aborting).
    void start();
    /// run: as run(ec), throwing std::system_error on failure (or aborting, as start()).
    void run();

    /// request_stop: asks the current run to stop gracefully and returns at once. Only an
    /// atomic store and a write(2): async-signal-safe, callable from any thread, a handler
    /// or a signal handler. No effect when stopped; a stop requested while start() is
    /// running is kept.
    void request_stop() noexcept;
    /// stop: a graceful stop (see LIFECYCLE above) that returns once the run is over.
    /// Idempotent; safe before the first start. From a handler it only requests the stop
    /// (waited == false), so it never deadlocks.
    stop_result stop() noexcept;
    /// stop: as stop(), with drain_timeout instead of options::drain_timeout for this stop
    /// (Go's Shutdown(ctx)). A stop already under way gets the earlier of the two deadlines,
    /// so stop(0ms) after a plain stop cuts at once.
    stop_result stop(std::chrono::milliseconds drain_timeout) noexcept;

    /// restart: replaces the current run by a new one built from the current options,
    /// routes and hooks, without refusing a connection or dropping a request. What moves:
    ///   - the listening socket is handed over as is when the factory's address is the
    ///     same (see listener_factory); otherwise the new one is bound first, and the
    ///     connections the old one had queued are moved before it closes;
    ///   - idle keep-alive connections, and those whose next request is still arriving,
    ///     move to the new run and are served by its routes and options;
    ///   - requests in flight finish on the old run, under its drain_timeout counted from
    ///     the restart (streams see body_writer::stopping()); their connections then move
    ///     too; the old run's threads are joined once its last connection is gone.
    /// Returns once the new run serves. On failure (errc::not_running, the new address is
    /// in use, ...) sets ec and the current run goes on unchanged. From a handler it works
    /// too; with worker_threads == 0 it returns before the hand-over (which happens when the
    /// handler returns). Not async-signal-safe: from a signal, wake a thread that calls it.
    void restart(std::error_code& ec) noexcept;
    /// restart: as restart(ec), throwing std::system_error on failure (or aborting, as start()).
    void restart();

    /// upgrade: a binary upgrade without a refused connection or a closed idle one (nginx's
    /// USR2, plus HAProxy's socket passing): starts argv[0] (a path; argv[1..] its
    /// arguments) with the current listening socket as descriptor 3 and LISTEN_FDS=1,
    /// LISTEN_PID=<its pid>, NOTIFY_SOCKET set, and a Unix socket for the hand-over as
    /// descriptor 4 (RESTARTABLE_SERVER_HANDOVER_FD=4), so a systemd_listener() in it
    /// adopts both; waits up to ready_timeout until it calls notify_ready(), then requests
    /// a graceful stop of this server (the caller's run() or wait() returns after the
    /// drain; then exit). Both processes accept on the socket in between. What moves:
    ///   - the listening socket, never closed;
    ///   - as the stop begins, every connection waiting for a request - idle keep-alive
    ///     ones, and those whose request head is arriving, with the bytes read so far (up
    ///     to 64 KiB) - is passed to the new process (SCM_RIGHTS), which serves it as its
    ///     own; stop_result::handed_over counts them;
    ///   - requests in flight are not: they finish here with "Connection: close".
    /// A new process that does not greet (not this library, or an older one; waited for
    /// up to 1 s after its READY=1), or that exits, stops or does not take a message
    /// within 1 s, gets no more connections: those stay here and the stop treats them as
    /// it always did (idle ones closed, counted in idle_closed; arriving requests
    /// answered), with a line in error_log. Returns the child's pid; on failure (not
    /// running, exec failed, not ready in time: the child is killed) sets ec and this
    /// server goes on. Not from a server thread. Linux only (elsewhere ec is
    /// std::errc::function_not_supported).
    pid_t upgrade(const std::vector<std::string>& argv, std::error_code& ec,
                  std::chrono::milliseconds ready_timeout = std::chrono::seconds(10)) noexcept;

    /// wait: blocks until the current run ends (for whatever reason) and its threads are
    /// joined; returns at once when stopped. A start after that run's end does not make it
    /// wait longer. Returns what the run's stop found (the last run's, when stopped; a
    /// later one's if it began and ended before this thread woke). Not from a server thread.
    stop_result wait() noexcept;

    /// state: the lifecycle state. Async-signal-safe.
    server_state state() const noexcept { return state_.load(); }
    /// wait_until_running: blocks until the state is running or timeout passes; true if
    /// running. Waits on a condition variable, never a sleep loop.
    bool wait_until_running(std::chrono::milliseconds timeout) const;
    /// port: the local TCP port of the current run (0 when stopped or not TCP).
    std::uint16_t port() const noexcept { return port_.load(); }

#ifdef RESTARTABLE_SERVER_TEST_HOOKS
    /// set_sync_point: (tests only; see TEST HOOKS) calls fn(arg) on the server's own
    /// thread each time it passes the point named; an empty fn removes it. A test holds
    /// that thread there by blocking in fn, so a race has a deterministic test.
    void set_sync_point(std::string name, std::function<void(int arg)> fn);
#endif  // RESTARTABLE_SERVER_TEST_HOOKS

private:
    friend class detail::run;

    void start_impl(std::error_code& ec, bool in_caller_thread) noexcept;
    std::unique_ptr<detail::run> make_run(std::error_code& ec, bool for_restart) noexcept;
    void abandon(std::unique_ptr<detail::run> run) noexcept;
    unique_fd make_listener(const options& o, std::error_code& ec) noexcept;
    stop_result run_to_end(std::unique_ptr<detail::run> run) noexcept;
    std::unique_ptr<detail::run> take_next_run(std::uint64_t generation) noexcept;
    void end_restart(bool done) noexcept;
    void set_listener_fd(int fd) noexcept;
    bool transition(server_state from, server_state to) noexcept;
    bool transition_locked(server_state from, server_state to) noexcept;
    bool on_server_thread() const;
    void add_server_thread();
    void remove_server_thread() noexcept;
    stop_result stop_impl(std::int64_t drain_limit) noexcept;
    void wake() noexcept;
    void drain_wake() noexcept;
#ifdef RESTARTABLE_SERVER_TEST_HOOKS
    void sync_point(const char* name, int arg = 0) noexcept;
    std::mutex sync_mutex_;
    std::vector<std::pair<std::string, std::shared_ptr<std::function<void(int)>>>> sync_points_;
    std::atomic<bool> any_sync_point_{false};
#endif  // RESTARTABLE_SERVER_TEST_HOOKS

    mutable std::mutex mutex_;            // guards options_, routes_, server_threads_, last_stop_, state changes
    mutable std::condition_variable cv_;  // notified (under mutex_) on every state change
    std::mutex lifecycle_;                // serialises start/run/stop/wait
    options options_;
    std::vector<std::shared_ptr<const detail::route>> routes_;
    std::vector<stop_hook> hooks_;
    std::vector<std::thread::id> server_threads_;
    std::thread loop_thread_;             // the run's control thread, in start() mode
    unique_fd wake_read_, wake_write_;    // the self-pipe, for the server's whole life
    std::error_code wake_error_;          // why the self-pipe could not be made, if it could not
    std::atomic<bool> stop_requested_{false};           // the one source of truth for "stop"
    std::atomic<std::int64_t> stop_requested_at_{0};    // steady_clock ns of the request
    std::atomic<server_state> state_{server_state::stopped};
    std::atomic<std::uint16_t> port_{0};
    stop_result last_stop_;               // what the last run's stop found

    // Restarts. restart() builds the next run and leaves it in next_run_ for the control
    // thread, which hands over and says so in restart_outcome_ (all under mutex_).
    std::mutex restart_mutex_;            // one restart() or upgrade() at a time
    std::unique_ptr<detail::run> next_run_;
    int restart_outcome_ = 0;             // 0 pending, 1 done, -1 cancelled (the run stopped)
    std::atomic<bool> restart_requested_{false};
    std::uint64_t generation_ = 0;        // counts starts; a next run belongs to one
    std::string listener_address_;        // the current listener factory's address
    int listener_fd_ = -1;                // the current listening socket (for upgrade)
    std::atomic<std::thread::id> control_thread_{};
    std::atomic<detail::run*> current_{nullptr};       // where handed-over connections go
    std::mutex current_mutex_;            // held by a transfer into current_, and to change it
    std::atomic<std::int64_t> drain_limit_{INT64_MAX};  // stop(timeout)'s deadline, steady ns
    unique_fd handover_out_;              // upgrade(): the socket to the new process (under mutex_)
    std::atomic<int> handover_fd_{-1};    // its descriptor while connections may go there; else -1
};

// --------------------------------------------------------- static files --

/// static_options: how static_files() serves a directory. Every field has a working default.
struct static_options {
    /// index: the file served for a directory ("index.html"); "" serves no directory. A
    /// directory is never listed. Asked for without its trailing slash ("/docs"), a directory
    /// with an index is redirected (301) to "/docs/", so relative links in the index resolve.
    std::string index = "index.html";
    /// cache_control: the Cache-Control value sent with every file and 304, e.g. "no-cache"
    /// (clients revalidate each time; unchanged files cost a 304) or "public, max-age=31536000,
    /// immutable" (for names that change with the content). "" (the default) sends none.
    std::string cache_control;
    /// dotfiles: whether names starting with '.' (.git, .env, .well-known) are served. Default
    /// false: they are 404, so a checkout or secrets next to the site do not leak.
    bool dotfiles = false;
};

/// static_files: a handler that serves the files under the directory root, for a route
/// whose last segment is "*". For example:
///
///     srv.get("/static/*", rs::static_files("/var/www"));  // /static/a/b.css: /var/www/a/b.css
///
/// The rest of the path (request::param("*")) is percent-decoded once, segment by segment,
/// and checked before any file is touched. Answers:
///   400  a "." or ".." segment (raw or %2e%2e in any case), an empty segment ("a//b"), an
///        encoded slash (%2F), a backslash, NUL or another control byte, a bad %-escape;
///   404  no such file; a name starting with '.' (see static_options::dotfiles); a directory
///        without index; a FIFO, device or socket; a symbolic link anywhere under root,
///        whether it points inside or out (root itself may be one, e.g. a "current" link a
///        deploy switches: it is opened afresh at each request);
///   405  a method other than GET and HEAD;
///   301  a directory without its trailing slash (see static_options::index);
///   200  the file, with Content-Type from mime_type(), Last-Modified, a weak ETag
///        (W/"size-mtime_ns" in hex), Accept-Ranges: bytes, X-Content-Type-Options: nosniff;
///   304  If-None-Match (weak comparison; it takes precedence) or If-Modified-Since says the
///        client's copy is current; no body (RFC 9110 13.1.2, 13.1.3);
///   412  If-Match (strong comparison, so only "*" can match the weak ETag) or
///        If-Unmodified-Since fails (RFC 9110 13.1.1, 13.1.4);
///   206  a GET with one range "bytes=a-b", "a-" or "-n": that part, with Content-Range;
///        several ranges or a malformed Range are ignored (200, allowed by RFC 9110 14.2);
///   416  the one range starts past the end, with "Content-Range: bytes */size".
/// If-Range: an HTTP-date equal to Last-Modified keeps the range (for a file at least a
/// second old); an entity tag never strongly matches the weak ETag, so it sends the whole
/// file (200), which RFC 9110 13.1.5 allows. HEAD gets the header fields of GET, no body.
/// Files are opened beneath a descriptor of root, one name at a time with O_NOFOLLOW and
/// O_NONBLOCK, and their type and size are taken with fstat() of the descriptor that is
/// then read: whoever can rename entries under root while requests run (an upload
/// directory, another service) cannot make it serve a file outside root, nor hold a thread
/// with a FIFO. What it can do is serve, or replace, any regular file under root: that is
/// the content. A file (or range) up to 32 KiB is read into the response; a larger one is
/// sent with response::set_file (sendfile(2); over TLS 16 KiB per pread()), with its
/// Content-Length, holding no thread and never held in memory; if the file shrinks
/// meanwhile, the connection ends short of that length, so the client sees the download
/// incomplete.
/// Descriptors are O_CLOEXEC and closed once the response is sent. The handler keeps
/// copies of root, opts.
handler static_files(std::string root, static_options opts = {});

/// mime_type: the Content-Type for a file name by its extension, case-insensitively
/// ("app.JS": "text/javascript; charset=utf-8"). Text types carry charset=utf-8; an unknown
/// or missing extension gives "application/octet-stream".
std::string_view mime_type(std::string_view filename) noexcept;

// ----------------------------------------------------------------- forms --

/// form_part: the head of one part of a multipart/form-data body (RFC 7578), handed to
/// read_multipart()'s on_part before the part's data.
struct form_part {
    /// name: the form field's name, Content-Disposition's "name" parameter (every part has one).
    std::string name;
    /// filename: Content-Disposition's "filename" parameter as sent, "" without one (see
    /// has_filename). A name the client chose: it may hold "/", "..", anything; never use it
    /// as a path unchecked. The extended "filename*" (RFC 8187) is ignored, as RFC 7578 4.2
    /// tells senders not to use it (browsers send UTF-8 in "filename").
    std::string filename;
    /// has_filename: whether the part had a "filename" parameter (a file input; it may be "").
    bool has_filename = false;
    /// content_type: the part's Content-Type as sent; "" when it sent none, which RFC 7578
    /// 4.4 says means "text/plain".
    std::string content_type;
    /// headers: every header field of the part, in arrival order: {name as sent, value
    /// without surrounding spaces}.
    std::vector<std::pair<std::string, std::string>> headers;
    /// index: the part's place in the body, 0 for the first.
    std::size_t index = 0;
};

/// multipart_limits: what a multipart/form-data body may hold, besides the request body's
/// own limit (options::max_body_bytes). Every field has a working default; 0 means the default.
struct multipart_limits {
    /// max_parts: more parts than this are errc::too_many_parts. Default 1000.
    std::size_t max_parts = 1000;
    /// max_part_header_bytes: a part's head (its header fields and the empty line after
    /// them) may not be longer: errc::part_header_too_large. It is the only part of a body
    /// the parser holds whole. Default 16 KiB.
    std::size_t max_part_header_bytes = 16 * 1024;
};

/// part_handler: called with each part's head before its data; returns false to stop.
using part_handler = std::function<bool(const form_part& part)>;

/// part_data_handler: called with each piece of a part's data as it arrives (any size,
/// never empty), then once with an empty piece when the part has ended; returns false to stop.
using part_data_handler = std::function<bool(const form_part& part, std::string_view data)>;

/// multipart_parser: reads a multipart/form-data body (RFC 7578; delimiters as RFC 2046
/// 5.1) fed to it in pieces of any size, calling on_part with each part's head and on_data
/// with its data as soon as they are known. It holds at most one part's head and the
/// delimiter's length of data (a delimiter split between two pieces is found): never the
/// body. A preamble before the first delimiter and an epilogue after the last are skipped;
/// transport padding (spaces, tabs) after a delimiter is allowed. Every part must have a
/// Content-Disposition "form-data" with a "name"; a nested multipart/mixed part (RFC 7578
/// 4.3, deprecated) is handed over as data. Strict where RFC 2046 says a sender MUST: the
/// delimiter followed by anything but "--", padding or CRLF is errc::malformed_multipart,
/// never taken as data. read_multipart() is this fed by request::read_body(); use the
/// parser itself for a body from elsewhere. One thread at a time; neither copyable nor
/// movable.
class multipart_parser {
public:
    /// multipart_parser: a parser for a body whose parts are separated by "--" boundary
    /// (the Content-Type's boundary parameter: see multipart_boundary()). Empty handlers
    /// skip what they would be given.
    multipart_parser(std::string_view boundary, part_handler on_part, part_data_handler on_data,
                     multipart_limits limits = {});
    multipart_parser(const multipart_parser&) = delete;
    multipart_parser& operator=(const multipart_parser&) = delete;

    /// feed: parses the next bytes of the body, calling the handlers for what they complete.
    /// Returns no error while the body is well formed so far (a piece that ends in the
    /// middle of a head or a delimiter is kept for the next feed); errc::malformed_multipart,
    /// errc::part_header_too_large, errc::too_many_parts, or errc::canceled when a handler
    /// returned false. After an error it calls no handler again and returns that error.
    std::error_code feed(std::string_view bytes);
    /// finish: the body has ended. Returns no error when the final delimiter
    /// ("--boundary--") was read, errc::multipart_incomplete when it was not (the body was
    /// cut short: the last part's data may be incomplete, and its end was not reported), or
    /// the error a feed returned.
    std::error_code finish();
    /// done: whether the final delimiter was read; whatever follows it is ignored.
    bool done() const noexcept { return state_ == state::epilogue; }
    /// parts: how many part heads have been read (and handed to on_part) so far.
    std::size_t parts() const noexcept { return parts_; }

private:
    enum class state : unsigned char { preamble, after_delimiter, head, data, epilogue, failed };
    std::size_t step(std::string_view in);
    std::size_t fail(std::error_code ec, std::size_t pos);
    std::string delimiter_;  // CRLF "--" boundary
    part_handler on_part_;
    part_data_handler on_data_;
    multipart_limits limits_;
    std::string carry_;  // bytes not yet consumed: a head, a partial delimiter (CRLF at first)
    form_part part_;
    std::size_t parts_ = 0;
    state state_ = state::preamble;
    bool padded_ = false;  // transport padding seen after the last delimiter
    std::size_t head_scanned_ = 0;  // bytes of the head arriving searched for its end so far
    std::error_code error_;
};

/// multipart_boundary: sets boundary to the boundary parameter of a Content-Type value
/// "multipart/form-data; boundary=..." (quoted or not; 1 to 70 characters of RFC 2046's
/// bchars, not ending in a space). Returns errc::wrong_content_type when the media type is
/// not multipart/form-data, errc::invalid_boundary when the parameter is missing, repeated
/// or not a valid boundary (boundary is then "").
std::error_code multipart_boundary(std::string_view content_type, std::string& boundary);

/// read_multipart: reads the body of req, a multipart/form-data request, part by part:
/// on_part gets each part's head, on_data the part's data in pieces as they arrive and an
/// empty piece at its end (see multipart_parser). On a body_mode::streamed route the body
/// is never held in memory; on a buffered one request::body is parsed. Blocks as
/// request::read_body() does. Returns no error once the final delimiter was read and the
/// body ended; the errors of multipart_boundary() (before any byte of the body is read),
/// of read_body() (the server answers those itself: 413, 400, 408), of
/// multipart_parser::feed() and finish(). A handler answers an error with error_status();
/// the connection closes after that response when the body was not read to its end.
std::error_code read_multipart(const request& req, const part_handler& on_part, const part_data_handler& on_data,
                               const multipart_limits& limits = {});

/// form_fields: the fields of a form in their order: {name, value}, both decoded. A name
/// may come more than once.
using form_fields = std::vector<std::pair<std::string, std::string>>;

/// form_limits: what an application/x-www-form-urlencoded body may hold. Every field has a
/// working default; 0 means the default.
struct form_limits {
    /// max_fields: more fields than this are errc::form_too_large. Default 1000.
    std::size_t max_fields = 1000;
    /// max_bytes: a longer body (as sent, encoded) is errc::form_too_large. Default 1 MiB.
    std::size_t max_bytes = 1024 * 1024;
};

/// parse_form: parses body, application/x-www-form-urlencoded ("a=1&b=x+y%21"), into
/// fields (cleared first): fields split on '&' (empty ones skipped), name and value on the
/// first '=' (none: the value is ""), '+' decoded as a space and %XX as that byte (no
/// UTF-8 check). Returns errc::malformed_form for a '%' not followed by two hex digits,
/// errc::form_too_large past limits; fields is empty after an error.
std::error_code parse_form(std::string_view body, form_fields& fields, const form_limits& limits = {});

/// read_form: reads the body of req, an application/x-www-form-urlencoded request, and
/// parses it into fields with parse_form(): the body buffered up to limits.max_bytes on a
/// body_mode::streamed route (a longer body stops being read: errc::form_too_large).
/// Returns errc::wrong_content_type for another Content-Type, the errors of
/// request::read_body() and of parse_form(). Blocks as read_body() does.
std::error_code read_form(const request& req, form_fields& fields, const form_limits& limits = {});

/// form_value: the value of the first field called name (case-sensitive), or std::nullopt.
std::optional<std::string_view> form_value(const form_fields& fields, std::string_view name) noexcept;

/// error_status: the HTTP status that answers an error of read_body(), read_multipart(),
/// read_form() or parse_form(): 413 for a limit (errc::body_too_large, too_many_parts,
/// part_header_too_large, form_too_large), 415 for errc::wrong_content_type, 408 for
/// std::errc::timed_out, 400 for the other errors of the request's body, 500 for any other.
/// errc::canceled (a handler of yours returned false) is 400 too, as a handler refusing
/// the content is the common case: when it stopped for a failure of its own (a full disk),
/// answer 500 yourself.
int error_status(const std::error_code& ec) noexcept;

}  // namespace restartable_server

// ========================================================= implementation ==
//
// By default every function below is inline and this file is the whole library. With
// RESTARTABLE_SERVER_SPLIT defined in every translation unit (stb style), the part below
// is compiled only where RESTARTABLE_SERVER_IMPLEMENTATION is defined too - in one
// translation unit - and the others see the declarations above only, so a program of many
// files compiles the implementation once.

#if !defined(RESTARTABLE_SERVER_SPLIT) || defined(RESTARTABLE_SERVER_IMPLEMENTATION)

#ifdef RESTARTABLE_SERVER_SPLIT
#define RESTARTABLE_SERVER_FN  // defined once, in this translation unit
#else
#define RESTARTABLE_SERVER_FN inline
#endif  // RESTARTABLE_SERVER_SPLIT

// RESTARTABLE_SERVER_COLD: on a function that runs once per run, or on an error only:
// optimised for size, and the paths that call it taken as unlikely (less code to compile,
// and none of it in the way of the request path).
#if defined(__GNUC__) || defined(__clang__)
#define RESTARTABLE_SERVER_COLD __attribute__((cold))
#else
#define RESTARTABLE_SERVER_COLD
#endif  // GCC, clang

// RESTARTABLE_SERVER_SYNC_POINT(srv, name, arg): a TEST HOOKS point; nothing without them.
#ifdef RESTARTABLE_SERVER_TEST_HOOKS
#define RESTARTABLE_SERVER_SYNC_POINT(srv, name, arg) (srv).sync_point(name, arg)
#else
#define RESTARTABLE_SERVER_SYNC_POINT(srv, name, arg) ((void)0)
#endif  // RESTARTABLE_SERVER_TEST_HOOKS

namespace restartable_server {
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
/// chunk extensions and trailer fields (both checked, then dropped). A chunk-size line
/// (digits, whitespace and extensions) may be max_chunk_line bytes long, the trailer
/// section max_trailer_bytes; past either the body is malformed (400).
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
        trailer_value, trailer_lf, end_lf, done
    };
    bool trailer_byte(unsigned char c) noexcept;
    state state_ = state::size;
    std::uint64_t remaining_ = 0;  // chunk bytes still to come (the size, while parsing it)
    unsigned digits_ = 0;
    std::size_t line_bytes_ = 0;   // bytes of the current chunk-size line or trailer section
};
}  // namespace detail

namespace detail {

// The calls that bring a feature's code into the program (see "feature entries" under
// engine), made by the public functions that need the feature.
void use_streams() noexcept;
void use_websocket() noexcept;
void use_restart() noexcept;
void use_handover() noexcept;

// ---------------------------------------------------------------- tuning --
// The engine's fixed sizes and times, with why each is what it is.

/// read_size: one recv() per serving thread: room for a burst of pipelined requests or a
/// good piece of a body. Lent to the connection being served, so idle ones hold nothing.
inline constexpr std::size_t read_size = 64 * 1024;
/// min_read: the least room worth a recv() call.
inline constexpr std::size_t min_read = 4 * 1024;
/// keep_capacity: a partial request up to this size is copied into a buffer of the
/// connection's own between events; a larger one (a body) keeps the thread's buffer.
inline constexpr std::size_t keep_capacity = 16 * 1024;
/// max_chunk_line: a chunk-size line (hex digits, whitespace, extensions). curl sends
/// 4-6 bytes; 1 KiB leaves room for real extensions and stops framing floods.
inline constexpr std::size_t max_chunk_line = 1024;
/// max_trailer_bytes: all trailer fields of a chunked body together.
inline constexpr std::size_t max_trailer_bytes = 4096;
/// accept_batch: accepts per event of the listener, so a connection flood cannot hold the
/// worker that accepts (the listener is then reported again, for the next one).
inline constexpr int accept_batch = 64;
/// accept_backoff: out of descriptors (EMFILE): accept again after this, not in a spin.
inline constexpr std::chrono::milliseconds accept_backoff{100};
/// linger_time: how long a closing connection's late bytes are dropped before the close
/// (nginx's lingering_time is 30 s; a client that read its response closes far sooner).
inline constexpr std::chrono::milliseconds linger_time{1000};
/// first_request_grace: a connection that has sent nothing when a stop begins may still
/// send its first request this long after its accept (it was likely accepted just before
/// its request arrived: closing it would lose that request, and after an upgrade() the
/// client would not even be refused); a silent one (a browser's preconnect) goes then.
inline constexpr std::chrono::milliseconds first_request_grace{1000};
/// blocked_after: a worker in one handler or stream call for this long is taken to block
/// (on a sleep, a lock, a slow client) and another thread serves in its place. Short
/// enough that a handler sleeping 100 ms costs the other connections ~2 % of their time,
/// long enough that a handler's ordinary work (~1-100 us) never looks blocked.
inline constexpr std::chrono::milliseconds blocked_after{2};
/// monitor_quiet: the control thread looks at the workers every blocked_after while a
/// handler ran in the last monitor_quiet; after that it sleeps until a handler begins.
inline constexpr std::chrono::milliseconds monitor_quiet{100};
/// linger_reads: reads per wake-up while lingering, so a fast sender cannot hold a thread.
inline constexpr int linger_reads = 16;
/// control_events: events per wait of the control thread.
inline constexpr int control_events = 64;
/// worker_batch: events a worker takes per wait when one CPU serves (a budget of one
/// worker): one epoll_wait then serves up to this many ready connections - a system call
/// less per request, 0.9x the CPU per keep-alive request. With more CPUs a worker takes one
/// event per wait, so that ready connections spread over the workers that wait.
inline constexpr int worker_batch = 16;
/// handover_max_fds: descriptors per hand-over message of an upgrade(): Linux's
/// SCM_MAX_FD, the most one SCM_RIGHTS message may carry.
inline constexpr std::size_t handover_max_fds = 253;
/// handover_message_bytes: the data of one hand-over message at most (record headers and
/// bytes read ahead); fits the default socket buffer of a Unix socket (~208 KiB) with room.
/// A connection whose unserved bytes do not fit alone is not handed over (see upgrade()).
inline constexpr std::size_t handover_message_bytes = 64 * 1024;
/// handover_hello_wait: how long upgrade() waits, after READY=1, for the new process's
/// hand-over greeting. The library sends it before its start() returns, so it is there
/// already; this bounds only a program that does not speak the hand-over (an older build).
inline constexpr std::chrono::milliseconds handover_hello_wait{1000};
/// handover_send_timeout: a hand-over message the new process does not take within this
/// is not sent (its connections stay in the old process, which closes them as before).
inline constexpr std::chrono::milliseconds handover_send_timeout{1000};

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

RESTARTABLE_SERVER_FN std::error_code last_error() noexcept { return {errno, std::system_category()}; }

RESTARTABLE_SERVER_FN char ascii_lower(char c) noexcept {
    return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
}

RESTARTABLE_SERVER_FN bool iequals(std::string_view a, std::string_view b) noexcept {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i)
        if (ascii_lower(a[i]) != ascii_lower(b[i])) return false;
    return true;
}

/// for_each_item: f(item) for each item of a comma-separated field value, spaces and tabs
/// around it trimmed, until f returns true (then true).
template <class F>
bool for_each_item(std::string_view list, F f) {
    while (!list.empty()) {
        const std::size_t comma = list.find(',');
        std::string_view item = list.substr(0, comma);
        while (!item.empty() && (item.front() == ' ' || item.front() == '\t')) item.remove_prefix(1);
        while (!item.empty() && (item.back() == ' ' || item.back() == '\t')) item.remove_suffix(1);
        if (f(item)) return true;
        if (comma == std::string_view::npos) break;
        list.remove_prefix(comma + 1);
    }
    return false;
}

/// has_token: whether the comma-separated list (a Connection or Expect value) contains
/// token, case-insensitively.
RESTARTABLE_SERVER_FN bool has_token(std::string_view list, std::string_view token) noexcept {
    return for_each_item(list, [token](std::string_view item) { return iequals(item, token); });
}

/// is_tchar: whether c may appear in an RFC 9110 token (methods, field names).
RESTARTABLE_SERVER_FN bool is_tchar(unsigned char c) noexcept {
    // One bit per byte value: DIGIT, ALPHA and !#$%&'*+-.^_`|~ (a table: the parser's hot loop).
    static constexpr std::uint64_t bits[4] = {0x03ff6cfa00000000, 0x57ffffffc7fffffe, 0, 0};
    return (bits[c >> 6] >> (c & 63)) & 1;
}

/// is_token: whether s is a non-empty token (a valid field name).
RESTARTABLE_SERVER_FN bool is_token(std::string_view s) noexcept {
    for (char c : s)
        if (!is_tchar(static_cast<unsigned char>(c))) return false;
    return !s.empty();
}

/// is_field_value: whether s holds no CR, LF or NUL, which would split a response.
RESTARTABLE_SERVER_FN bool is_field_value(std::string_view s) noexcept {
    for (char c : s)
        if (c == '\r' || c == '\n' || c == '\0') return false;
    return true;
}

RESTARTABLE_SERVER_FN int hex_value(char c) noexcept {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/// percent_decode: in with %XX decoded (and '+' as space when plus_as_space). A '%' not
/// followed by two hex digits is kept as it is.
RESTARTABLE_SERVER_FN std::string percent_decode(std::string_view in, bool plus_as_space) {
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
RESTARTABLE_SERVER_FN void append_number(std::string& out, std::uint64_t n) {
    char tmp[24];
    char* p = tmp + sizeof tmp;
    do {
        *--p = static_cast<char>('0' + n % 10);
        n /= 10;
    } while (n != 0);
    out.append(p, static_cast<std::size_t>(tmp + sizeof tmp - p));
}

/// parse_content_length: a Content-Length value, which must be plain digits that fit.
RESTARTABLE_SERVER_FN bool parse_content_length(std::string_view v, std::size_t& out) noexcept {
    if (v.empty() || v.size() > 18) return false;
    std::size_t n = 0;
    for (char c : v) {
        if (c < '0' || c > '9') return false;
        n = n * 10 + static_cast<std::size_t>(c - '0');
    }
    out = n;
    return true;
}

/// stop_signal: one run's "a stop or restart began", as handlers and streams see it:
/// a flag to look at and a condition to sleep on.
struct stop_signal {
    std::atomic<bool> raised{false};
    mutable std::mutex mutex;
    mutable std::condition_variable cv;

    void raise() noexcept {
        {
            std::lock_guard<std::mutex> lock(mutex);
            raised.store(true);
        }
        cv.notify_all();
    }
    bool wait_for(std::chrono::milliseconds timeout) const {
        std::unique_lock<std::mutex> lock(mutex);
        return cv.wait_for(lock, timeout, [this] { return raised.load(); });
    }
};

/// http_date_size: the length of an IMF-fixdate, "Sun, 06 Nov 1994 08:49:37 GMT".
inline constexpr std::size_t http_date_size = 29;

/// write_http_date: t as an IMF-fixdate (RFC 9110 5.6.7) into out, independent of the C
/// locale. False when t cannot be written so (its year is not four digits).
RESTARTABLE_SERVER_FN bool write_http_date(std::time_t t, char (&out)[http_date_size]) noexcept {
    std::tm tm{};
    if (!::gmtime_r(&t, &tm) || tm.tm_year + 1900 > 9999 || tm.tm_year + 1900 < 0) return false;
    static constexpr char days[] = "SunMonTueWedThuFriSat";
    static constexpr char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
    char* p = out;
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
    const int year = tm.tm_year + 1900;
    two(year / 100), two(year % 100);
    *p++ = ' ';
    two(tm.tm_hour), *p++ = ':', two(tm.tm_min), *p++ = ':', two(tm.tm_sec);
    std::memcpy(p, " GMT", 4);
    return true;
}

/// date_cache: the IMF-fixdate of the current second, written once a second. One per
/// thread that writes responses.
class date_cache {
public:
    std::string_view now() noexcept {
        const std::time_t t = std::time(nullptr);
        if (t != last_ && write_http_date(t, buf_)) last_ = t;
        return {buf_, sizeof buf_};
    }

private:
    std::time_t last_ = -1;
    char buf_[http_date_size] = {};
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
    /// truncate: keeps the first n bytes (n <= size()).
    void truncate(std::size_t n) noexcept { size_ = n; }
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

/// no_sigpipe: the send flag that keeps a send to a closed peer from raising SIGPIPE
/// (MSG_NOSIGNAL; where there is none, own_descriptor sets SO_NOSIGPIPE on the socket).
#ifdef MSG_NOSIGNAL
inline constexpr int no_sigpipe = MSG_NOSIGNAL;
#else
inline constexpr int no_sigpipe = 0;
#endif  // MSG_NOSIGNAL

/// conn_io: one connection's socket, and the transport it goes through (null: none, the
/// socket is read and written directly).
struct conn_io {
    int fd;
    transport* tp;
};

/// io_read: up to size bytes from c into buf, as transport::read reports them.
RESTARTABLE_SERVER_FN io_result io_read(conn_io c, char* buf, std::size_t size) noexcept {
    if (c.tp) return c.tp->read(c.fd, buf, size);
    const ssize_t n = retry_eintr([&] { return ::recv(c.fd, buf, size, 0); });
    if (n > 0) return {static_cast<std::size_t>(n), io_status::ok};
    if (n == 0) return {0, io_status::closed};
    return {0, errno == EAGAIN || errno == EWOULDBLOCK ? io_status::want_read : io_status::failed};
}

/// io_write: what the socket takes of iov[0..count) (never SIGPIPE), as transport::write
/// reports it.
RESTARTABLE_SERVER_FN io_result io_write(conn_io c, const iovec* iov, std::size_t count) noexcept {
    if (c.tp) return c.tp->write(c.fd, iov, static_cast<int>(count));
    msghdr msg{};
    msg.msg_iov = const_cast<iovec*>(iov);
    msg.msg_iovlen = count;
    const ssize_t n = retry_eintr([&] { return ::sendmsg(c.fd, &msg, no_sigpipe); });
    if (n >= 0) return {static_cast<std::size_t>(n), io_status::ok};
    return {0, errno == EAGAIN || errno == EWOULDBLOCK ? io_status::want_write : io_status::failed};
}

/// wait_io: blocks in poll(2) until fd is ready for what status wants (want_read or
/// want_write), up to timeout (0: forever). False on timeout, or when a write cannot go on.
RESTARTABLE_SERVER_FN bool wait_io(int fd, io_status status, std::chrono::milliseconds timeout) noexcept {
    const bool out = status == io_status::want_write;
    pollfd p{fd, static_cast<short>(out ? POLLOUT : POLLIN), 0};
    const int ms = timeout.count() > 0 ? static_cast<int>(timeout.count()) : -1;
    const int r = retry_eintr([&] { return ::poll(&p, 1, ms); });
    // A read after POLLHUP or POLLERR says what happened; a write cannot go on.
    return r > 0 && !(p.revents & POLLNVAL) && !(out && (p.revents & (POLLERR | POLLHUP)));
}

/// send_all: sends every byte of iov[0..count), waiting up to timeout (0: forever) each
/// time the socket (or the transport) cannot take more. False on error or timeout.
RESTARTABLE_SERVER_FN bool send_all(conn_io c, iovec* iov, std::size_t count, std::chrono::milliseconds timeout) noexcept {
    while (count != 0 && iov->iov_len == 0) ++iov, --count;
    while (count != 0) {
        const io_result r = io_write(c, iov, count);
        if (r.status != io_status::ok) {
            if (r.status != io_status::want_read && r.status != io_status::want_write) return false;
            if (!wait_io(c.fd, r.status, timeout)) return false;
            continue;
        }
        std::size_t left = r.bytes;
        while (count != 0 && left >= iov->iov_len) left -= iov->iov_len, ++iov, --count;
        if (count != 0) {
            iov->iov_base = static_cast<char*>(iov->iov_base) + left;
            iov->iov_len -= left;
        }
    }
    return true;
}

/// send_unavailable: a 503 for a connection about to be closed, without waiting or
/// allocating (too many connections, or out of memory).
RESTARTABLE_SERVER_FN RESTARTABLE_SERVER_COLD void send_unavailable(int fd) noexcept {
    static constexpr std::string_view text =
        "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    (void)::send(fd, text.data(), text.size(), no_sigpipe | MSG_DONTWAIT);
}

/// send_continue: the interim "100 Continue" response (RFC 9110 15.2.1).
RESTARTABLE_SERVER_FN bool send_continue(conn_io c, std::chrono::milliseconds timeout) noexcept {
    static constexpr std::string_view text = "HTTP/1.1 100 Continue\r\n\r\n";
    iovec iov{const_cast<char*>(text.data()), text.size()};
    return send_all(c, &iov, 1, timeout);
}

/// own_descriptor: makes fd close-on-exec, non-blocking when asked, and (where sends have
/// no MSG_NOSIGNAL) a socket that never raises SIGPIPE. False, with errno, on failure.
RESTARTABLE_SERVER_FN bool own_descriptor(int fd, bool nonblocking) noexcept {
    const int fl = ::fcntl(fd, F_GETFL);
    const int fdfl = ::fcntl(fd, F_GETFD);
    if (fl < 0 || fdfl < 0 || ::fcntl(fd, F_SETFD, fdfl | FD_CLOEXEC) != 0) return false;
    if (nonblocking && ::fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0) return false;
#if !defined(MSG_NOSIGNAL) && defined(SO_NOSIGPIPE)
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_NOSIGPIPE, &one, sizeof one);  // fails harmlessly on a pipe
#endif  // no MSG_NOSIGNAL
    return true;
}

// Descriptors are made close-on-exec (and non-blocking) by the call that makes them on
// Linux's epoll path. The poll(2) path uses only POSIX calls, and sets the flags right
// after: a fork() and exec() in another thread in between would inherit that descriptor,
// as on any system without SOCK_CLOEXEC.

#ifdef RESTARTABLE_SERVER_USE_POLL
/// owned: fd (-1 passes through) made ours by own_descriptor, or closed: -1 with errno.
RESTARTABLE_SERVER_FN int owned(int fd, bool nonblocking) noexcept {
    if (fd < 0 || own_descriptor(fd, nonblocking)) return fd;
    const int e = errno;
    ::close(fd);
    errno = e;
    return -1;
}
#endif  // RESTARTABLE_SERVER_USE_POLL

/// new_socket: socket(2), close-on-exec, and non-blocking when asked; -1 with errno.
RESTARTABLE_SERVER_FN int new_socket(int domain, int type, int protocol, bool nonblocking) noexcept {
#ifndef RESTARTABLE_SERVER_USE_POLL
    return ::socket(domain, type | SOCK_CLOEXEC | (nonblocking ? SOCK_NONBLOCK : 0), protocol);
#else
    return owned(::socket(domain, type, protocol), nonblocking);
#endif  // RESTARTABLE_SERVER_USE_POLL
}

/// accept_connection: the next connection queued on listener, close-on-exec and
/// non-blocking; -1 with errno (EAGAIN: none is queued).
RESTARTABLE_SERVER_FN int accept_connection(int listener) noexcept {
#ifndef RESTARTABLE_SERVER_USE_POLL
    return ::accept4(listener, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
#else
    return owned(::accept(listener, nullptr, nullptr), true);
#endif  // RESTARTABLE_SERVER_USE_POLL
}

/// make_pipe: a pipe with both ends close-on-exec and non-blocking. False with errno.
RESTARTABLE_SERVER_FN bool make_pipe(int (&fds)[2]) noexcept {
#ifndef RESTARTABLE_SERVER_USE_POLL
    return ::pipe2(fds, O_CLOEXEC | O_NONBLOCK) == 0;
#else
    if (::pipe(fds) != 0) return false;
    if (own_descriptor(fds[0], true) && own_descriptor(fds[1], true)) return true;
    const int e = errno;
    ::close(fds[0]);
    ::close(fds[1]);
    errno = e;
    return false;
#endif  // RESTARTABLE_SERVER_USE_POLL
}
RESTARTABLE_SERVER_FN std::uint16_t local_port(int fd) noexcept {
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
            case errc::not_running: return "the server is not running";
            case errc::not_activated: return "no listening socket was passed (LISTEN_FDS, LISTEN_PID)";
            case errc::activated_not_open:
                return "the descriptor LISTEN_FDS names is not open (LISTEN_FDS and LISTEN_PID are stale?)";
            case errc::activated_not_socket:
                return "the descriptor LISTEN_FDS names is not a socket (LISTEN_FDS and LISTEN_PID are stale?)";
            case errc::activated_not_listening:
                return "the socket LISTEN_FDS names is not listening (not a socket-activation socket?)";
            case errc::no_transport: return "the transport layer maker returned no layer";
            case errc::wrong_content_type: return "the request's Content-Type is not the one expected";
            case errc::invalid_boundary: return "the multipart Content-Type has no valid boundary parameter";
            case errc::malformed_multipart: return "the multipart body is malformed";
            case errc::multipart_incomplete: return "the multipart body ended before its final delimiter";
            case errc::part_header_too_large: return "a multipart part's head is larger than max_part_header_bytes";
            case errc::too_many_parts: return "the multipart body has more parts than max_parts";
            case errc::malformed_form: return "the form has an invalid percent-escape";
            case errc::form_too_large: return "the form is larger than its limits";
            case errc::canceled: return "a form handler stopped the reading";
            case errc::closed: return "the stream or WebSocket is closed";
            case errc::send_buffer_full: return "the send buffer is full: the client reads too slowly";
            case errc::invalid_utf8: return "the text is not valid UTF-8";
            case errc::too_long: return "a WebSocket control payload is longer than 125 bytes";
        }
        return "unknown restartable_server error";
    }
};

/// quota_cpus: the CPUs a cgroup CPU quota allows, rounded up ("150000" of "100000" us per
/// period: 2); 0 for no limit ("max", "-1") or text that is not a quota.
RESTARTABLE_SERVER_FN std::size_t quota_cpus(std::string_view quota, std::string_view period) noexcept {
    const auto number = [](std::string_view t) -> std::uint64_t {
        while (!t.empty() && (t.back() == '\n' || t.back() == ' ')) t.remove_suffix(1);
        if (t.empty() || t.size() > 18) return 0;
        std::uint64_t n = 0;
        for (const char ch : t) {
            if (ch < '0' || ch > '9') return 0;
            n = n * 10 + static_cast<std::uint64_t>(ch - '0');
        }
        return n;
    };
    const std::uint64_t q = number(quota), p = number(period);
    if (q == 0 || p == 0) return 0;
    return static_cast<std::size_t>(std::max<std::uint64_t>(1, (q + p - 1) / p));
}

/// read_text: a small file's first bytes, into buf ("" when it cannot be read).
RESTARTABLE_SERVER_FN std::string_view read_text(const char* path, char* buf, std::size_t size) noexcept {
    const unique_fd fd(::open(path, O_RDONLY | O_CLOEXEC));
    if (!fd) return {};
    const ssize_t n = retry_eintr([&] { return ::read(fd.get(), buf, size); });
    return n > 0 ? std::string_view(buf, static_cast<std::size_t>(n)) : std::string_view();
}

/// read_cgroup_file: read_text of mount + dir + name ("" when the path is too long).
RESTARTABLE_SERVER_FN std::string_view read_cgroup_file(std::string_view mount, std::string_view dir,
                                                        std::string_view name, char* buf, std::size_t size) noexcept {
    char path[4352];
    if (mount.size() + dir.size() + name.size() >= sizeof path) return {};
    char* p = path;
    for (const std::string_view part : {mount, dir, name}) {
        std::memcpy(p, part.data(), part.size());
        p += part.size();
    }
    *p = '\0';
    return read_text(path, buf, size);
}

/// cgroup_cpus: the tightest CPU quota on this process's cgroup or any parent (0: none).
/// cgroup v2 at /sys/fs/cgroup, or v1's cpu controller at /sys/fs/cgroup/cpu,cpuacct or
/// /sys/fs/cgroup/cpu (where Debian, systemd and Docker mount them). Read once per run,
/// in fixed buffers (no allocation).
RESTARTABLE_SERVER_FN RESTARTABLE_SERVER_COLD std::size_t cgroup_cpus() noexcept {
    std::size_t tightest = 0;
    char cgroups[4096];
    std::string_view rest = read_text("/proc/self/cgroup", cgroups, sizeof cgroups);
    while (!rest.empty()) {
        const std::size_t eol = std::min(rest.find('\n'), rest.size());
        const std::string_view line = rest.substr(0, eol);
        rest.remove_prefix(std::min(eol + 1, rest.size()));
        const std::size_t a = line.find(':'), b = a == std::string_view::npos ? a : line.find(':', a + 1);
        if (b == std::string_view::npos) continue;
        const std::string_view controllers = line.substr(a + 1, b - a - 1);
        const std::string_view path = line.substr(b + 1);
        const bool v2 = line.substr(0, a) == "0" && controllers.empty();
        if (!v2 && !has_token(controllers, "cpu")) continue;
        const char* const mounts[] = {"/sys/fs/cgroup", "/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/cpu"};
        for (std::size_t m = v2 ? 0 : 1; m < (v2 ? 1 : 3); ++m) {  // v2's, or v1's two usual places
            for (std::string_view dir = path;;) {  // this cgroup, then each parent up to the root
                char quota[64], period[64];
                std::size_t cpus = 0;
                if (v2) {
                    const std::string_view max = read_cgroup_file(mounts[m], dir, "/cpu.max", quota, sizeof quota);
                    const std::size_t space = max.find(' ');
                    if (space != std::string_view::npos) cpus = quota_cpus(max.substr(0, space), max.substr(space + 1));
                } else {
                    cpus = quota_cpus(read_cgroup_file(mounts[m], dir, "/cpu.cfs_quota_us", quota, sizeof quota),
                                      read_cgroup_file(mounts[m], dir, "/cpu.cfs_period_us", period, sizeof period));
                }
                if (cpus != 0 && (tightest == 0 || cpus < tightest)) tightest = cpus;
                const std::size_t slash = dir.rfind('/');
                if (dir.empty() || dir == "/" || slash == std::string_view::npos) break;
                dir = dir.substr(0, slash);
            }
        }
    }
    return tightest;
}

// ---------------------------------------------------------------- parser --

/// split_target: out.path and out.query from out.target, which is in origin-form
/// "/path?query", absolute-form "http://host/path?query", or "*" (OPTIONS only). False
/// for any other form.
RESTARTABLE_SERVER_FN bool split_target(request& out) noexcept {
    std::string_view target = out.target;
    const std::size_t scheme_end = iequals(target.substr(0, 7), "http://")    ? 7
                                   : iequals(target.substr(0, 8), "https://") ? 8
                                                                              : 0;
    if (scheme_end != 0) {
        const std::size_t slash = std::min(target.find_first_of("/?", scheme_end), target.size());
        if (slash == scheme_end) return false;  // no authority
        target = target.substr(slash);
    } else if (target == "*") {
        if (out.method != "OPTIONS") return false;
    } else if (target.front() != '/') {
        return false;
    }
    const std::size_t q = target.find('?');
    out.path = target.empty() || q == 0 ? std::string_view("/") : target.substr(0, q);
    out.query = q == std::string_view::npos ? std::string_view() : target.substr(q + 1);
    return true;
}

RESTARTABLE_SERVER_FN parse_result parse_request(std::string_view buf, request& out, const parse_limits& limits) noexcept {
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

    if (!split_target(out)) return bad;

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


RESTARTABLE_SERVER_FN chunked_decoder::step_result chunked_decoder::step(std::string_view in) noexcept {
    const step_result bad{parse_status::error, 0, {}, 400};
    std::size_t i = 0;
    for (; i < in.size(); ++i) {
        const auto c = static_cast<unsigned char>(in[i]);
        const bool ctl = (c < 0x20 && c != '\t') || c == 0x7f;
        // The chunk-size line (digits, whitespace, extensions) and the trailer section are
        // bounded, so framing bytes cannot be sent without end.
        if (state_ <= state::extension && ++line_bytes_ > max_chunk_line) return bad;
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
                } else if (c != ' ' && c != '\t') {
                    return bad;
                }
                break;
            case state::extension:
                if (c == '\r')
                    state_ = state::size_lf;
                else if (ctl)
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
            case state::trailer_name:
            case state::trailer_value:
            case state::trailer_lf:
            case state::end_lf:
                if (!trailer_byte(c)) return bad;
                if (state_ == state::done) return {parse_status::complete, i + 1, {}, 0};
                break;
            case state::done: return bad;
        }
        if (state_ >= state::trailer_start && ++line_bytes_ > max_trailer_bytes) return bad;
    }
    return {parse_status::partial, i, {}, 0};
}

/// trailer_byte: one byte of the trailer section (fields, then the empty line that ends
/// the body; RFC 9112 7.1.2), checked and dropped. False when it is malformed.
RESTARTABLE_SERVER_FN bool chunked_decoder::trailer_byte(unsigned char c) noexcept {
    switch (state_) {
        case state::trailer_start:
            if (c == '\r') {
                state_ = state::end_lf;
                return true;
            }
            state_ = state::trailer_name;
            return is_tchar(c);  // also refuses obs-fold
        case state::trailer_name:
            if (c == ':') state_ = state::trailer_value;
            return c == ':' || is_tchar(c);
        case state::trailer_value:
            if (c == '\r') state_ = state::trailer_lf;
            return c == '\r' || !((c < 0x20 && c != '\t') || c == 0x7f);
        case state::trailer_lf:
            state_ = state::trailer_start;
            return c == '\n';
        case state::end_lf:
            state_ = state::done;
            return c == '\n';
        default: return false;
    }
}

/// request_framing: how a request's body is delimited, and whether it expects "100 Continue".
struct request_framing {
    enum kind_t : unsigned char { none, content_length, chunked } kind = none;
    std::size_t length = 0;
    bool expect_continue = false;
};

/// valid_host: whether v is a Host value, uri-host [ ":" port ] (RFC 9110 7.2, RFC 3986
/// 3.2.2): an IP literal in brackets or a reg-name, and digits after a colon. Empty is
/// valid (a target without authority). Refused: spaces, '/', '@' (userinfo), and ','
/// (which reg-name allows, but which makes a list: two hosts in one field).
RESTARTABLE_SERVER_FN bool valid_host(std::string_view v) noexcept {
    std::size_t port_at = v.size();
    if (!v.empty() && v.front() == '[') {
        const std::size_t close = v.find(']');
        if (close == std::string_view::npos || close == 1) return false;
        for (char c : v.substr(1, close - 1))
            if (hex_value(c) < 0 && c != ':' && c != '.') return false;
        port_at = close + 1;
        if (port_at != v.size() && v[port_at] != ':') return false;
    } else {
        port_at = std::min(v.find(':'), v.size());
        for (char c : v.substr(0, port_at)) {
            const bool unreserved = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                                    c == '-' || c == '.' || c == '_' || c == '~';
            if (!unreserved && std::string_view("%!$&'()*+;=").find(c) == std::string_view::npos) return false;
        }
    }
    for (std::size_t i = port_at + 1; i < v.size(); ++i)
        if (v[i] < '0' || v[i] > '9') return false;
    return true;
}

/// frame_request: checks Host, Content-Length, Transfer-Encoding and Expect of a parsed
/// head (RFC 9112 3.2, 6; RFC 9110 10.1.1). Returns 0, or the status to answer before
/// closing: 400 (bad or ambiguous framing, no or several Host), 417, 501.
RESTARTABLE_SERVER_FN int frame_request(const request& req, request_framing& out) noexcept {
    out = request_framing();
    std::size_t hosts = 0;
    bool has_length = false, has_te = false, chunked_last = false, other_coding = false, chunked_twice = false;
    for (const header& h : req.headers) {
        if (iequals(h.name, "Host")) {
            if (!valid_host(h.value)) return 400;
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
    body_reader(conn_io io, const request_framing& framing, std::string_view buffered, byte_buffer& scratch,
                const options& opts, bool send_continue) noexcept
        : io_(io), framing_(framing), remaining_(framing.length), current_(buffered), scratch_(scratch),
          opts_(opts), send_continue_(send_continue), done_(framing.kind == request_framing::none) {}

    std::error_code read(const body_sink& sink) {
        if (send_continue_) {
            send_continue_ = false;
            if (!send_continue(io_, opts_.write_timeout)) error_ = make_error_code(errc::body_incomplete);
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
            const io_result r = io_read(io_, scratch_.data(), scratch_.capacity());
            if (r.status == io_status::ok) {
                current_ = std::string_view(scratch_.data(), r.bytes);
                in_scratch_ = true;
                return;
            }
            if (r.status != io_status::want_read && r.status != io_status::want_write) {
                error_ = make_error_code(errc::body_incomplete);
                return;
            }
            if (!wait_io(io_.fd, r.status, opts_.body_timeout)) {
                error_ = std::make_error_code(std::errc::timed_out);
                return;
            }
        }
    }

    conn_io io_;
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

RESTARTABLE_SERVER_FN const std::error_category& error_category() noexcept {
    static const detail::error_category_impl category;
    return category;
}

RESTARTABLE_SERVER_FN std::error_code make_error_code(errc e) noexcept { return {static_cast<int>(e), error_category()}; }

// ------------------------------------------------------------- sockets --

RESTARTABLE_SERVER_FN unique_fd& unique_fd::operator=(unique_fd&& other) noexcept {
    if (this != &other) reset(other.release());
    return *this;
}

RESTARTABLE_SERVER_FN int unique_fd::release() noexcept {
    int fd = fd_;
    fd_ = -1;
    return fd;
}

RESTARTABLE_SERVER_FN void unique_fd::reset(int fd) noexcept {
    if (fd_ >= 0) ::close(fd_);  // not retried on EINTR: on Linux the descriptor is gone
    fd_ = fd;
}

RESTARTABLE_SERVER_FN RESTARTABLE_SERVER_COLD listener_factory tcp_listener(std::string host, std::uint16_t port, int backlog) {
    std::string address = "tcp:" + host + ":";
    detail::append_number(address, port);
    auto make = [host = std::move(host), port, backlog](std::error_code& ec) -> unique_fd {
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
            unique_fd fd(detail::new_socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol, true));
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
    return listener_factory(std::move(make), std::move(address));
}

RESTARTABLE_SERVER_FN listener_factory unix_listener(std::string path, int backlog) {
    std::string address = "unix:" + path;
    auto make = [path = std::move(path), backlog](std::error_code& ec) -> unique_fd {
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
            unique_fd fd(detail::new_socket(AF_UNIX, SOCK_STREAM, 0, true));
            if (!fd) break;
            if (::bind(fd.get(), sa, sizeof addr) == 0) {
                if (::listen(fd.get(), backlog) == 0) return fd;
                break;
            }
            if (errno != EADDRINUSE || attempt != 0) break;
            // A socket file is there. Stale (nobody accepts: ECONNREFUSED) → replace it.
            struct stat st {};
            if (::lstat(path.c_str(), &st) != 0 || !S_ISSOCK(st.st_mode)) break;
            unique_fd probe(detail::new_socket(AF_UNIX, SOCK_STREAM, 0, true));
            if (!probe || ::connect(probe.get(), sa, sizeof addr) == 0 || errno != ECONNREFUSED) {
                errno = EADDRINUSE;
                break;
            }
            ::unlink(path.c_str());
        }
        ec = detail::last_error();
        return unique_fd();
    };
    return listener_factory(std::move(make), std::move(address));
}

RESTARTABLE_SERVER_FN listener_factory inherited_listener(int fd) {
    std::string address = "fd:";
    detail::append_number(address, static_cast<unsigned>(fd));
    auto make = [fd](std::error_code& ec) -> unique_fd {
        ec.clear();
        unique_fd dup(::fcntl(fd, F_DUPFD_CLOEXEC, 0));
        if (!dup) ec = detail::last_error();
        return dup;
    };
    return listener_factory(std::move(make), std::move(address));
}

namespace detail {
/// env_number: the environment variable name as a decimal number, or -1.
RESTARTABLE_SERVER_FN long env_number(const char* name) noexcept {
    const char* v = std::getenv(name);
    if (v == nullptr || *v < '0' || *v > '9') return -1;
    char* end = nullptr;
    errno = 0;
    const long n = std::strtol(v, &end, 10);
    return errno == 0 && *end == '\0' ? n : -1;
}

/// handover_env: the variable that names the hand-over socket server::upgrade() passes
/// to the new process (beside LISTEN_FDS; see "hand-over to a new process" below).
inline constexpr char handover_env[] = "RESTARTABLE_SERVER_HANDOVER_FD";

/// handover_inbox: that socket, in the new process, until a run takes it: the first run
/// started with the factory that adopted it (so the connections go to that server).
struct handover_inbox {
    explicit handover_inbox(int s) noexcept : fd(s) {}
    handover_inbox(const handover_inbox&) = delete;
    handover_inbox& operator=(const handover_inbox&) = delete;
    ~handover_inbox() { take(); }
    /// take: the socket, to the first caller; an empty unique_fd after that.
    unique_fd take() noexcept { return unique_fd(fd.exchange(-1)); }
    std::atomic<int> fd;
};

/// factory_access: the library's own view of a listener_factory's hand-over socket.
struct factory_access {
    static std::shared_ptr<handover_inbox>& handover(listener_factory& f) noexcept { return f.handover_; }
    static layer_maker& layer(listener_factory& f) noexcept { return f.layer_; }
};

/// inherited_handover: the hand-over socket named by handover_env (then unset), made
/// close-on-exec; -1 when there is none. A descriptor that is not a Unix SOCK_SEQPACKET
/// socket, or is one of the count listening sockets from 3 on, was not passed by upgrade()
/// and is left alone (not ours to take, nor to close).
RESTARTABLE_SERVER_FN int inherited_handover(long count) noexcept {
    const long fd = env_number(handover_env);
    ::unsetenv(handover_env);
    if (fd < 3 || fd > 65535 || fd < 3 + count) return -1;
    const int s = static_cast<int>(fd);
    int type = 0;
    socklen_t len = sizeof type;
    sockaddr_un addr{};
    socklen_t addr_len = sizeof addr;
    if (::getsockopt(s, SOL_SOCKET, SO_TYPE, &type, &len) != 0 || type != SOCK_SEQPACKET ||
        ::getsockname(s, reinterpret_cast<sockaddr*>(&addr), &addr_len) != 0 || addr.sun_family != AF_UNIX)
        return -1;
    ::fcntl(s, F_SETFD, FD_CLOEXEC);
    return s;
}

/// passed_socket_error: why fd is not a listening socket to adopt (not open, not a socket,
/// not listening), or no error. Looks only: a descriptor that fails is not ours to touch.
RESTARTABLE_SERVER_FN std::error_code passed_socket_error(int fd) noexcept {
    struct stat st {};
    if (::fstat(fd, &st) != 0) return make_error_code(errc::activated_not_open);
    if (!S_ISSOCK(st.st_mode)) return make_error_code(errc::activated_not_socket);
    int listening = 0;
    socklen_t len = sizeof listening;
    if (::getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) != 0 || listening == 0)
        return make_error_code(errc::activated_not_listening);
    return {};
}
}  // namespace detail

RESTARTABLE_SERVER_FN listener_factory systemd_listener(std::string name) {
    constexpr int first_fd = 3;  // SD_LISTEN_FDS_START
    int chosen = -1;
    int handover = -1;  // server::upgrade()'s hand-over socket, when it started this process
    std::error_code why = make_error_code(errc::not_activated);  // when nothing is chosen
    const long count = detail::env_number("LISTEN_FDS");
    if (detail::env_number("LISTEN_PID") == static_cast<long>(::getpid()) && count > 0) {
        handover = detail::inherited_handover(count);
        const char* names_env = std::getenv("LISTEN_FDNAMES");
        std::string_view names = names_env ? names_env : "";
        bool picked = false;
        for (long i = 0; i < count && i < 1024; ++i) {
            const int fd = first_fd + static_cast<int>(i);
            // Only a listening socket was passed to us; anything else at fd (a stale
            // LISTEN_FDS) is the program's own, or nothing: left as it is.
            const std::error_code bad = detail::passed_socket_error(fd);
            if (!bad) ::fcntl(fd, F_SETFD, FD_CLOEXEC);  // ours now: not for children
            const std::string_view this_name = names.substr(0, names.find(':'));
            names.remove_prefix(std::min(names.size(), this_name.size() + 1));
            if (!picked && (name.empty() || this_name == name)) {
                picked = true;
                if (bad)
                    why = bad;
                else
                    chosen = fd;
            }
        }
        ::unsetenv("LISTEN_PID");
        ::unsetenv("LISTEN_FDS");
        ::unsetenv("LISTEN_FDNAMES");
    }
    std::string address;
    if (chosen >= 0) {
        address = "fd:";
        detail::append_number(address, static_cast<unsigned>(chosen));
    }
    auto owned = std::make_shared<unique_fd>(chosen);  // open as long as a copy of the factory lives
    auto make = [owned, why](std::error_code& ec) -> unique_fd {
        ec.clear();
        if (!*owned) {
            ec = why;
            return unique_fd();
        }
        unique_fd dup(::fcntl(owned->get(), F_DUPFD_CLOEXEC, 0));
        if (!dup) ec = detail::last_error();
        return dup;
    };
    listener_factory factory(std::move(make), std::move(address));
    if (handover >= 0) {
        detail::use_handover();  // a run's receive_handover() is in it
        detail::factory_access::handover(factory) = std::make_shared<detail::handover_inbox>(handover);
    }
    return factory;
}

RESTARTABLE_SERVER_FN listener_factory with_transport(listener_factory inner, layer_maker make) {
    detail::factory_access::layer(inner) = std::move(make);
    return inner;
}

RESTARTABLE_SERVER_FN std::error_code notify_ready() noexcept {
    const char* path = std::getenv("NOTIFY_SOCKET");
    if (path == nullptr || *path == '\0') return {};
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    const std::size_t len = std::strlen(path);
    if (len >= sizeof addr.sun_path || (path[0] != '/' && path[0] != '@'))
        return make_error_code(errc::invalid_address);
    std::memcpy(addr.sun_path, path, len);
    if (path[0] == '@') addr.sun_path[0] = '\0';  // an abstract socket
    const unique_fd fd(detail::new_socket(AF_UNIX, SOCK_DGRAM, 0, false));
    static constexpr char ready[] = "READY=1";
    const auto addr_len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + len);
    if (!fd || ::sendto(fd.get(), ready, sizeof ready - 1, detail::no_sigpipe, reinterpret_cast<const sockaddr*>(&addr),
                        addr_len) < 0)
        return detail::last_error();
    return {};
}

#ifdef RESTARTABLE_SERVER_OPENSSL
// --------------------------------------------------------- TLS (OpenSSL) --
//
// The transport for tls_listener(). OpenSSL reads and writes the socket through a BIO
// of our own: OpenSSL's socket BIO writes with write(2), which raises SIGPIPE when the
// client is gone, and this library has no process-wide side effects (no signal()). Each
// run gets a new SSL_CTX (the certificate read again); a connection's SSL holds its
// context, and its transport the layer, so connections that move to the next run keep
// theirs. The ticket keys and the BIO method are made once per tls_listener().

namespace detail {

class openssl_error_category final : public std::error_category {
public:
    const char* name() const noexcept override { return "openssl"; }
    std::string message(int code) const override {
        char text[256];
        ERR_error_string_n(static_cast<unsigned long>(static_cast<unsigned>(code)), text, sizeof text);
        return text;
    }
};

/// clear_errors: empties this thread's OpenSSL error queue, as OpenSSL asks before a call
/// whose outcome SSL_get_error() reads. Peeked first: clearing an empty queue walks all
/// its slots, 2.6 % of a TLS keep-alive request's CPU when done unconditionally (perf).
RESTARTABLE_SERVER_FN void clear_errors() noexcept {
    if (ERR_peek_error() != 0) ERR_clear_error();
}

/// openssl_error: the first error in this thread's OpenSSL queue (then cleared), or
/// fallback when the queue is empty.
RESTARTABLE_SERVER_FN std::error_code openssl_error(std::errc fallback = std::errc::invalid_argument) noexcept {
    const unsigned long e = ERR_get_error();
    ERR_clear_error();
    if (e == 0) return std::make_error_code(fallback);
    return {static_cast<int>(static_cast<unsigned>(e)), openssl_category()};
}

/// The socket BIO. Its data is the descriptor.
RESTARTABLE_SERVER_FN int tls_bio_socket(BIO* b) noexcept {
    return static_cast<int>(reinterpret_cast<std::intptr_t>(BIO_get_data(b)));
}
extern "C" inline int rs_tls_bio_write(BIO* b, const char* data, std::size_t size, std::size_t* written) {
    BIO_clear_retry_flags(b);
    const ssize_t n = retry_eintr([&] { return ::send(tls_bio_socket(b), data, size, no_sigpipe); });
    if (n >= 0) {
        *written = static_cast<std::size_t>(n);
        return 1;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK) BIO_set_retry_write(b);
    return 0;
}
extern "C" inline int rs_tls_bio_read(BIO* b, char* data, std::size_t size, std::size_t* got) {
    BIO_clear_retry_flags(b);
    const ssize_t n = retry_eintr([&] { return ::recv(tls_bio_socket(b), data, size, 0); });
    if (n > 0) {
        *got = static_cast<std::size_t>(n);
        return 1;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) BIO_set_retry_read(b);
    return 0;  // n == 0: the end of the stream
}
extern "C" inline long rs_tls_bio_ctrl(BIO*, int cmd, long, void*) { return cmd == BIO_CTRL_FLUSH ? 1 : 0; }
extern "C" inline int rs_tls_bio_create(BIO* b) {
    BIO_set_init(b, 1);
    return 1;
}

/// tls_shared: what every run of one tls_listener() shares: the BIO method, and the
/// session ticket keys (made by OpenSSL for the first context, given to the later ones).
struct tls_shared {
    tls_shared() noexcept {
        // The type only matters to BIO_find_type(), which nothing calls on these BIOs;
        // BIO_get_new_index() would draw from a pool of 127 for the whole process.
        method = BIO_meth_new(BIO_TYPE_SOURCE_SINK, "restartable_server socket");
        if (method && (!BIO_meth_set_write_ex(method, rs_tls_bio_write) || !BIO_meth_set_read_ex(method, rs_tls_bio_read) ||
                       !BIO_meth_set_ctrl(method, rs_tls_bio_ctrl) || !BIO_meth_set_create(method, rs_tls_bio_create))) {
            BIO_meth_free(method);
            method = nullptr;
        }
    }
    tls_shared(const tls_shared&) = delete;
    tls_shared& operator=(const tls_shared&) = delete;
    ~tls_shared() {
        OPENSSL_cleanse(ticket_keys, sizeof ticket_keys);
        BIO_meth_free(method);
    }
    BIO_METHOD* method = nullptr;
    std::mutex mutex;  // for the keys: one factory may start several servers at once
    bool have_keys = false;
    unsigned char ticket_keys[80];  // OpenSSL 3: name (16), HMAC key (32), AES key (32)
};

/// tls_plain_http_answer: what a plain HTTP request to the TLS port gets (nginx answers
/// the same case with a 400 too).
inline constexpr std::string_view tls_plain_http_answer =
    "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 50\r\nConnection: close\r\n\r\n"
    "This is an HTTPS port: the request was plain HTTP\n";

class tls_layer;

/// tls_transport: one connection's TLS session.
class tls_transport final : public transport {
public:
    tls_transport(std::shared_ptr<const tls_layer> layer, SSL* ssl) noexcept : layer_(std::move(layer)), ssl_(ssl) {}
    tls_transport(const tls_transport&) = delete;
    tls_transport& operator=(const tls_transport&) = delete;
    ~tls_transport() override { SSL_free(ssl_); }

    io_result handshake(int fd) noexcept override {
        if (!began_) {  // the first byte says whether a TLS client is there (RFC 8446 5.1)
            char first;
            const ssize_t n = retry_eintr([&] { return ::recv(fd, &first, 1, MSG_PEEK | MSG_DONTWAIT); });
            if (n == 0) return {0, io_status::closed};
            if (n < 0) return {0, errno == EAGAIN || errno == EWOULDBLOCK ? io_status::want_read : io_status::failed};
            if (first != 22) {  // not a handshake record
                if (first >= 'A' && first <= 'Z')  // a request line: a client that speaks plain HTTP
                    (void)::send(fd, tls_plain_http_answer.data(), tls_plain_http_answer.size(),
                                 no_sigpipe | MSG_DONTWAIT);
                return {0, io_status::failed};
            }
            began_ = true;
        }
        clear_errors();
        const int r = SSL_do_handshake(ssl_);
        if (r != 1) return {0, status(r)};
        note_peer();
        return {};
    }
    io_result read(int, char* buf, std::size_t size) noexcept override {
        clear_errors();
        std::size_t n = 0;
        if (SSL_read_ex(ssl_, buf, size, &n) == 1) return {n, io_status::ok};
        return {0, status(0)};
    }
    /// write: a record (up to 16 KiB) at a time, gathered from the pieces when the first
    /// is shorter, so the same bytes offered again make the same record (OpenSSL's rule
    /// for a write retried after want_write).
    io_result write(int, const iovec* iov, int count) noexcept override {
        std::size_t total = 0, skip = 0;  // skip: bytes of iov[0] already written
        while (count > 0) {
            if (iov->iov_len == skip) {
                ++iov, --count, skip = 0;
                continue;
            }
            const char* data = static_cast<const char*>(iov->iov_base) + skip;
            std::size_t size = std::min(iov->iov_len - skip, record_size);
            char gathered[record_size];
            if (size < record_size && count > 1) {
                std::memcpy(gathered, data, size);
                for (int i = 1; i < count && size < record_size; ++i) {
                    const std::size_t more = std::min(iov[i].iov_len, record_size - size);
                    std::memcpy(gathered + size, iov[i].iov_base, more);
                    size += more;
                }
                data = gathered;
            }
            clear_errors();
            std::size_t n = 0;
            if (SSL_write_ex(ssl_, data, size, &n) != 1) return total != 0 ? io_result{total, io_status::ok} : io_result{0, status(0)};
            total += n;
            for (skip += n; count > 0 && skip >= iov->iov_len;) skip -= iov->iov_len, ++iov, --count;
        }
        return {total, io_status::ok};
    }
    void shutdown(int) noexcept override {
        if (shut_) return;
        shut_ = true;
        clear_errors();
        (void)SSL_shutdown(ssl_);  // close_notify if the socket takes it now; no waiting for the client's
        clear_errors();
    }
    bool secure() const noexcept override { return true; }
    std::string_view peer_identity() const noexcept override { return peer_; }

private:
    static constexpr std::size_t record_size = 16384;  // TLS's largest plaintext record (RFC 8446 5.1)

    io_status status(int r) noexcept {
        const int e = SSL_get_error(ssl_, r);
        clear_errors();  // what is left would confuse the next call on this thread
        switch (e) {
            case SSL_ERROR_WANT_READ: return io_status::want_read;
            case SSL_ERROR_WANT_WRITE: return io_status::want_write;
            case SSL_ERROR_ZERO_RETURN: return io_status::closed;
            default: return io_status::failed;
        }
    }
    /// note_peer: the subject of a verified client certificate (mutual TLS).
    void note_peer() noexcept {
        X509* cert = SSL_get0_peer_certificate(ssl_);
        if (cert == nullptr || SSL_get_verify_result(ssl_) != X509_V_OK) return;
        BIO* mem = BIO_new(BIO_s_mem());
        if (mem == nullptr) return;
        if (X509_NAME_print_ex(mem, X509_get_subject_name(cert), 0, XN_FLAG_RFC2253) >= 0) {
            char* text = nullptr;
            const long len = BIO_get_mem_data(mem, &text);
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
            try {
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
                if (len > 0) peer_.assign(text, static_cast<std::size_t>(len));
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
            } catch (const std::bad_alloc&) {  // no identity is proved then
            }
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
        }
        BIO_free(mem);
    }

    std::shared_ptr<const tls_layer> layer_;  // keeps the BIO method
    SSL* ssl_;
    bool began_ = false;  // the first byte was a TLS record
    bool shut_ = false;
    std::string peer_;
};

/// tls_alpn: picks "http/1.1" among the client's ALPN protocols; without it there, the
/// handshake fails with no_application_protocol (RFC 7301 3.2).
extern "C" inline int rs_tls_alpn(SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in,
                                  unsigned int inlen, void*) {
    static constexpr unsigned char http11[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
    unsigned char* chosen = nullptr;
    if (SSL_select_next_proto(&chosen, outlen, http11, sizeof http11, in, inlen) != OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    *out = chosen;
    return SSL_TLSEXT_ERR_OK;
}

/// tls_layer: one run's SSL_CTX.
class tls_layer final : public transport_layer, public std::enable_shared_from_this<tls_layer> {
public:
    tls_layer(std::shared_ptr<tls_shared> shared, SSL_CTX* ctx) noexcept : shared_(std::move(shared)), ctx_(ctx) {}
    tls_layer(const tls_layer&) = delete;
    tls_layer& operator=(const tls_layer&) = delete;
    ~tls_layer() override { SSL_CTX_free(ctx_); }

    /// make: a layer with the certificate, key and settings of o; null with ec set.
    static std::shared_ptr<tls_layer> make(const tls_options& o, const std::shared_ptr<tls_shared>& shared,
                                           std::error_code& ec) {
        ERR_clear_error();
        if (shared->method == nullptr) {
            ec = std::make_error_code(std::errc::not_enough_memory);
            return nullptr;
        }
        SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
        if (ctx == nullptr) {
            ec = openssl_error(std::errc::not_enough_memory);
            return nullptr;
        }
        auto layer = std::make_shared<tls_layer>(shared, ctx);  // frees ctx from here on
        ec = layer->configure(o);
        if (ec) return nullptr;
        return layer;
    }

    std::unique_ptr<transport> accept(int fd, std::error_code& ec) override {
        ERR_clear_error();
        SSL* ssl = SSL_new(ctx_);
        BIO* bio = ssl ? BIO_new(shared_->method) : nullptr;
        if (bio == nullptr) {
            SSL_free(ssl);
            ec = openssl_error(std::errc::not_enough_memory);
            return nullptr;
        }
        BIO_set_data(bio, reinterpret_cast<void*>(static_cast<std::intptr_t>(fd)));
        SSL_set_bio(ssl, bio, bio);
        SSL_set_accept_state(ssl);
        return std::make_unique<tls_transport>(shared_from_this(), ssl);
    }

private:
    std::error_code configure(const tls_options& o) {
        SSL_CTX_set_min_proto_version(ctx_, TLS1_2_VERSION);
        if (SSL_CTX_get_security_level(ctx_) < 2) SSL_CTX_set_security_level(ctx_, 2);
        SSL_CTX_set_options(ctx_, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION | SSL_OP_CIPHER_SERVER_PREFERENCE);
        if (!o.tls12_ciphers.empty() && SSL_CTX_set_cipher_list(ctx_, o.tls12_ciphers.c_str()) != 1)
            return openssl_error();
        SSL_CTX_set_mode(ctx_, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                                   SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
        SSL_CTX_set_session_cache_mode(ctx_, SSL_SESS_CACHE_OFF);  // stateless tickets only
        static constexpr unsigned char context[] = "restartable_server";
        SSL_CTX_set_session_id_context(ctx_, context, sizeof context - 1);
        SSL_CTX_set_alpn_select_cb(ctx_, rs_tls_alpn, nullptr);
        if (std::error_code ec = load_identity(o)) return ec;
        if (!o.client_ca_file.empty()) {
            STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(o.client_ca_file.c_str());
            if (names == nullptr || SSL_CTX_load_verify_locations(ctx_, o.client_ca_file.c_str(), nullptr) != 1) {
                sk_X509_NAME_pop_free(names, X509_NAME_free);
                return openssl_error();
            }
            SSL_CTX_set_client_CA_list(ctx_, names);
            SSL_CTX_set_verify(ctx_, SSL_VERIFY_PEER | (o.require_client_cert ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0),
                               nullptr);
        }
        std::lock_guard<std::mutex> lock(shared_->mutex);
        const long keys = sizeof shared_->ticket_keys;
        if (shared_->have_keys) {
            if (SSL_CTX_set_tlsext_ticket_keys(ctx_, shared_->ticket_keys, keys) != 1) return openssl_error();
        } else if (SSL_CTX_get_tlsext_ticket_keys(ctx_, shared_->ticket_keys, keys) == 1) {
            shared_->have_keys = true;
        }
        ERR_clear_error();
        return {};
    }

    /// load_identity: the certificate chain and key, from files or PEM in memory.
    std::error_code load_identity(const tls_options& o) {
        if (!o.cert_chain_file.empty()) {
            if (SSL_CTX_use_certificate_chain_file(ctx_, o.cert_chain_file.c_str()) != 1) return openssl_error();
        } else {
            BIO* in = BIO_new_mem_buf(o.cert_chain_pem.data(), static_cast<int>(o.cert_chain_pem.size()));
            X509* leaf = in ? PEM_read_bio_X509(in, nullptr, nullptr, nullptr) : nullptr;
            bool ok = leaf != nullptr && SSL_CTX_use_certificate(ctx_, leaf) == 1;
            X509_free(leaf);
            while (ok) {  // the intermediates
                X509* next = PEM_read_bio_X509(in, nullptr, nullptr, nullptr);
                if (next == nullptr) break;
                ok = SSL_CTX_add0_chain_cert(ctx_, next) == 1;
                if (!ok) X509_free(next);
            }
            BIO_free(in);
            if (!ok) return openssl_error();
            ERR_clear_error();  // the end of the PEM text
        }
        if (!o.key_file.empty()) {
            if (SSL_CTX_use_PrivateKey_file(ctx_, o.key_file.c_str(), SSL_FILETYPE_PEM) != 1) return openssl_error();
        } else {
            BIO* in = BIO_new_mem_buf(o.key_pem.data(), static_cast<int>(o.key_pem.size()));
            EVP_PKEY* key = in ? PEM_read_bio_PrivateKey(in, nullptr, nullptr, nullptr) : nullptr;
            const bool ok = key != nullptr && SSL_CTX_use_PrivateKey(ctx_, key) == 1;
            EVP_PKEY_free(key);
            BIO_free(in);
            if (!ok) return openssl_error();
        }
        if (SSL_CTX_check_private_key(ctx_) != 1) return openssl_error();
        return {};
    }

    std::shared_ptr<tls_shared> shared_;
    SSL_CTX* ctx_;
};

}  // namespace detail

RESTARTABLE_SERVER_FN const std::error_category& openssl_category() noexcept {
    static const detail::openssl_error_category category;
    return category;
}

RESTARTABLE_SERVER_FN listener_factory tls_listener(listener_factory inner, tls_options options) {
    auto shared = std::make_shared<detail::tls_shared>();
    return with_transport(std::move(inner),
                          [options = std::move(options), shared](std::error_code& ec) -> std::shared_ptr<transport_layer> {
                              ec.clear();
                              return detail::tls_layer::make(options, shared, ec);
                          });
}
#endif  // RESTARTABLE_SERVER_OPENSSL

// ----------------------------------------------------------------- HTTP --

RESTARTABLE_SERVER_FN std::string_view request::get_header(std::string_view name) const noexcept {
    for (const auto& h : headers)
        if (detail::iequals(h.name, name)) return h.value;
    return {};
}

RESTARTABLE_SERVER_FN bool request::has_header(std::string_view name) const noexcept {
    for (const auto& h : headers)
        if (detail::iequals(h.name, name)) return true;
    return false;
}

RESTARTABLE_SERVER_FN std::string_view request::param(std::string_view name) const noexcept {
    for (const auto& p : params_)
        if (p.first == name) return p.second;
    return {};
}

RESTARTABLE_SERVER_FN std::optional<std::string> request::query_param(std::string_view name) const {
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

RESTARTABLE_SERVER_FN bool request::stop_requested() const noexcept { return stop_ != nullptr && stop_->raised.load(); }

// A body_writer is made only by its run, with the run's stop signal: stop_ is never null.
RESTARTABLE_SERVER_FN bool body_writer::stopping() const noexcept { return stop_->raised.load(); }

RESTARTABLE_SERVER_FN bool body_writer::wait_for_stop(std::chrono::milliseconds timeout) const {
    return stop_->wait_for(timeout);
}

RESTARTABLE_SERVER_FN std::error_code request::read_body(const body_sink& sink) const {
    if (reader_) return reader_->read(sink);
    if (!body.empty()) sink(body);
    return {};
}

RESTARTABLE_SERVER_FN bool body_writer::write(std::string_view data) {
    if (failed_ || data.empty()) return !failed_;
    if (data.size() > left_) {  // past the known length: the response can only be cut
        failed_ = true;
        return false;
    }
    char size_line[20];
    std::size_t len = 0;
    for (std::size_t n = data.size(); n != 0; n >>= 4) ++len;
    for (std::size_t i = 0, n = data.size(); i < len; ++i, n >>= 4) size_line[len - 1 - i] = "0123456789abcdef"[n & 15];
    size_line[len++] = '\r';
    size_line[len++] = '\n';
    char crlf[] = {'\r', '\n'};
    iovec iov[3] = {{size_line, len}, {const_cast<char*>(data.data()), data.size()}, {crlf, 2}};
    const detail::conn_io io{fd_, tp_};
    failed_ = chunked_ ? !detail::send_all(io, iov, 3, timeout_) : !detail::send_all(io, iov + 1, 1, timeout_);
    if (!failed_) written_ += data.size();
    if (!failed_ && left_ != UINT64_MAX) left_ -= data.size();
    return !failed_;
}

RESTARTABLE_SERVER_FN void response::set_stream(std::string_view content_type, body_provider provider) {
    detail::use_streams();
    release_body();
    provider_ = std::move(provider);
    kind_ = body_kind::blocking_stream;
    set_header("Content-Type", content_type);
}

RESTARTABLE_SERVER_FN void response::set_stream(std::string_view content_type, std::uint64_t length,
                                                body_provider provider) {
    detail::use_streams();
    release_body();
    provider_ = std::move(provider);
    kind_ = body_kind::blocking_stream;
    stream_sized_ = true;
    stream_length_ = length;
    set_header("Content-Type", content_type);
}

RESTARTABLE_SERVER_FN void response::set_header(std::string_view name, std::string_view value) {
    for (auto& h : headers)
        if (detail::iequals(h.first, name)) {
            h.second.assign(value);
            return;
        }
    headers.emplace_back(std::string(name), std::string(value));
}

RESTARTABLE_SERVER_FN void response::set_content(std::string_view content, std::string_view content_type) {
    if (kind_ != body_kind::plain) release_body();  // a stream or file set before: this replaces it
    body.assign(content);
    set_header("Content-Type", content_type);
}

RESTARTABLE_SERVER_FN std::string_view response::get_header(std::string_view name) const noexcept {
    for (const auto& h : headers)
        if (detail::iequals(h.first, name)) return h.second;
    return {};
}


RESTARTABLE_SERVER_FN std::string log_escape(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    for (const char ch : s) {
        const auto u = static_cast<unsigned char>(ch);
        if (ch == '"' || ch == '\\') {
            out += '\\';
            out += ch;
        } else if (u >= 0x20 && u != 0x7f) {
            out += ch;
        } else if (ch == '\r' || ch == '\n' || ch == '\t') {
            out += '\\';
            out += ch == '\r' ? 'r' : ch == '\n' ? 'n' : 't';
        } else {
            out += "\\x";
            out += "0123456789abcdef"[u >> 4];
            out += "0123456789abcdef"[u & 15];
        }
    }
    return out;
}

RESTARTABLE_SERVER_FN std::string_view status_text(int status) noexcept {
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
        case 412: return "Precondition Failed";
        case 413: return "Content Too Large";
        case 414: return "URI Too Long";
        case 415: return "Unsupported Media Type";
        case 416: return "Range Not Satisfiable";
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

RESTARTABLE_SERVER_FN RESTARTABLE_SERVER_COLD std::size_t usable_cpus() noexcept {
    long n = 0;
#ifdef __linux__
    cpu_set_t set;
    CPU_ZERO(&set);
    if (::sched_getaffinity(0, sizeof set, &set) == 0) n = CPU_COUNT(&set);
#endif  // Linux
    if (n <= 0) n = ::sysconf(_SC_NPROCESSORS_ONLN);
    std::size_t cpus = n > 0 ? static_cast<std::size_t>(n) : 1;
    const std::size_t quota = detail::cgroup_cpus();
    if (quota != 0) cpus = std::min(cpus, quota);
    return cpus;
}

RESTARTABLE_SERVER_FN std::string_view to_string(server_state s) noexcept {
    switch (s) {
        case server_state::stopped: return "stopped";
        case server_state::starting: return "starting";
        case server_state::running: return "running";
        case server_state::stopping: return "stopping";
    }
    return "unknown";
}

// ------------------------------------------------------ websocket frames --
// The engine-independent pieces of WebSocket (RFC 6455): the opening handshake's
// Sec-WebSocket-Key check and Sec-WebSocket-Accept (4.2.2; SHA-1 and base64), the close
// codes a peer may send (7.4), the header of a server frame, and a decoder of a client's
// frames (5) into messages and control frames, with text checked as UTF-8 (8.1, RFC
// 3629). Pure: no I/O, no buffer of their own; only the strings returned allocate.

namespace detail {

/// sha1_block: adds one 64-byte block to the SHA-1 state h (RFC 3174 6.1, method 1).
RESTARTABLE_SERVER_FN void sha1_block(std::uint32_t (&h)[5], const unsigned char* block) noexcept {
    const auto rotl = [](std::uint32_t x, int bits) { return x << bits | x >> (32 - bits); };
    std::uint32_t w[80];
    for (std::size_t t = 0; t < 16; ++t)
        w[t] = std::uint32_t{block[4 * t]} << 24 | std::uint32_t{block[4 * t + 1]} << 16 |
               std::uint32_t{block[4 * t + 2]} << 8 | std::uint32_t{block[4 * t + 3]};
    for (std::size_t t = 16; t < 80; ++t) w[t] = rotl(w[t - 3] ^ w[t - 8] ^ w[t - 14] ^ w[t - 16], 1);
    std::uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
    for (std::size_t t = 0; t < 80; ++t) {
        std::uint32_t f, k;
        if (t < 20) {
            f = (b & c) | (~b & d);
            k = 0x5a827999;
        } else if (t < 40) {
            f = b ^ c ^ d;
            k = 0x6ed9eba1;
        } else if (t < 60) {
            f = (b & c) | (b & d) | (c & d);
            k = 0x8f1bbcdc;
        } else {
            f = b ^ c ^ d;
            k = 0xca62c1d6;
        }
        const std::uint32_t temp = rotl(a, 5) + f + e + w[t] + k;
        e = d;
        d = c;
        c = rotl(b, 30);
        b = a;
        a = temp;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
}

/// sha1: the SHA-1 digest of data (RFC 3174), for Sec-WebSocket-Accept only.
RESTARTABLE_SERVER_FN std::array<unsigned char, 20> sha1(std::string_view data) noexcept {
    std::uint32_t h[5] = {0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476, 0xc3d2e1f0};
    const auto* p = reinterpret_cast<const unsigned char*>(data.data());
    std::size_t n = data.size();
    for (; n >= 64; n -= 64, p += 64) sha1_block(h, p);
    // Padding (RFC 3174 4): the bit 1, zeros, then the message's length in bits as 64 bits,
    // big-endian, at the end of the last block: one block, or two when fewer than 9 bytes
    // are left in the first.
    unsigned char tail[128] = {};
    if (n != 0) std::memcpy(tail, p, n);
    tail[n] = 0x80;
    const std::size_t end = n < 56 ? 64 : 128;
    const std::uint64_t bits = std::uint64_t{data.size()} * 8;
    for (std::size_t i = 0; i < 8; ++i) tail[end - 1 - i] = static_cast<unsigned char>(bits >> (8 * i));
    sha1_block(h, tail);
    if (end == 128) sha1_block(h, tail + 64);
    std::array<unsigned char, 20> digest{};
    for (std::size_t i = 0; i < 20; ++i) digest[i] = static_cast<unsigned char>(h[i / 4] >> (24 - 8 * (i % 4)));
    return digest;
}

/// base64_alphabet: the 64 digits of base64, in order (RFC 4648 4).
inline constexpr std::string_view base64_alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// base64_encode: standard alphabet with '=' padding (RFC 4648 4).
RESTARTABLE_SERVER_FN std::string base64_encode(const unsigned char* data, std::size_t n) {
    std::string out;
    out.reserve((n + 2) / 3 * 4);
    for (std::size_t i = 0; i < n; i += 3) {
        // Three bytes (or what is left: then zero bits, and '=' for each missing byte) as
        // four 6-bit digits.
        const std::size_t left = std::min<std::size_t>(n - i, 3);
        std::uint32_t group = std::uint32_t{data[i]} << 16;
        if (left > 1) group |= std::uint32_t{data[i + 1]} << 8;
        if (left > 2) group |= data[i + 2];
        out += base64_alphabet[group >> 18];
        out += base64_alphabet[group >> 12 & 63];
        out += left > 1 ? base64_alphabet[group >> 6 & 63] : '=';
        out += left > 2 ? base64_alphabet[group & 63] : '=';
    }
    return out;
}

/// websocket_key_valid: whether a Sec-WebSocket-Key is the base64 of exactly 16 bytes
/// (24 characters of the standard alphabet, ending "==", the last data char one of AQgw).
RESTARTABLE_SERVER_FN bool websocket_key_valid(std::string_view key) noexcept {
    // 16 bytes are 128 bits: 21 digits of 6 bits, a 22nd that carries the last 2 bits (its
    // other 4 bits zero: A, Q, g or w), and "==" for the 2 bytes missing from the last group.
    if (key.size() != 24 || key.substr(22) != "==") return false;
    for (std::size_t i = 0; i < 21; ++i)
        if (base64_alphabet.find(key[i]) == std::string_view::npos) return false;
    return std::string_view("AQgw").find(key[21]) != std::string_view::npos;
}

/// websocket_accept: the Sec-WebSocket-Accept for key: base64(sha1(key + GUID)) (4.2.2).
RESTARTABLE_SERVER_FN std::string websocket_accept(std::string_view key) {
    static constexpr std::string_view guid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";  // RFC 6455 1.3
    std::string keyed;
    keyed.reserve(key.size() + guid.size());
    keyed.append(key).append(guid);
    const std::array<unsigned char, 20> digest = sha1(keyed);
    return base64_encode(digest.data(), digest.size());
}

/// ws_close_code_valid: whether a peer may send code in a close frame (7.4.1, 7.4.2 and
/// the IANA registry): 1000-1003, 1007-1011, 1012-1014 (registered since), 3000-4999. Not
/// 1004, 1005, 1006, 1015, nor <1000, nor 1016-2999, nor >= 5000.
RESTARTABLE_SERVER_FN bool ws_close_code_valid(unsigned code) noexcept {
    return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) || (code >= 3000 && code <= 4999);
}

/// ws_frame_head: writes the header of an unmasked server frame (FIN set when fin, the
/// opcode, the payload length in its minimal encoding) to out (room for 10 bytes);
/// returns its size (2, 4 or 10). length must be below 2^63 (5.2).
RESTARTABLE_SERVER_FN std::size_t ws_frame_head(unsigned opcode, bool fin, std::uint64_t length, char* out) noexcept {
    out[0] = static_cast<char>((fin ? 0x80u : 0u) | (opcode & 0x0fu));
    std::size_t extended = 0;  // bytes of the length after the 7-bit field: 0, 2 or 8
    if (length < 126) {
        out[1] = static_cast<char>(length);
    } else if (length <= 0xffff) {
        out[1] = 126;
        extended = 2;
    } else {
        out[1] = 127;
        extended = 8;
    }
    for (std::size_t i = 0; i < extended; ++i) out[2 + i] = static_cast<char>(length >> (8 * (extended - 1 - i)));
    return 2 + extended;
}

/// utf8_validator: checks UTF-8 (RFC 3629: no overlongs, no surrogates, nothing above
/// U+10FFFF) fed in pieces that may split a character anywhere.
class utf8_validator {
public:
    /// feed: false as soon as the bytes fed so far cannot begin valid UTF-8 (then stays false).
    bool feed(std::string_view bytes) noexcept;
    /// complete: the bytes fed so far are valid and end on a character boundary.
    bool complete() const noexcept { return state_ == 0; }
    /// reset: forgets the bytes fed, as a new validator.
    void reset() noexcept { state_ = 0; }

private:
    // state_: 0 between characters; 1, 2, 3: that many continuation bytes (80-BF) still to
    // come; 4, 5, 6, 7: after the lead byte E0, ED, F0, F4, whose next byte has a narrower
    // range (RFC 3629 4); reject: not UTF-8.
    static constexpr unsigned char reject = 8;
    unsigned char state_ = 0;
};

RESTARTABLE_SERVER_FN bool utf8_validator::feed(std::string_view bytes) noexcept {
    // The states that wait for a continuation byte: the range it must be in (RFC 3629 4,
    // UTF8-2 to UTF8-4), and the state after it.
    static constexpr unsigned char low[8] = {0, 0x80, 0x80, 0x80, 0xa0, 0x80, 0x90, 0x80};
    static constexpr unsigned char high[8] = {0, 0xbf, 0xbf, 0xbf, 0xbf, 0x9f, 0xbf, 0x8f};
    static constexpr unsigned char next[8] = {0, 0, 1, 2, 1, 1, 2, 2};
    const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
    const auto* const end = p + bytes.size();
    unsigned s = state_;
    while (p != end && s != reject) {
        const unsigned c = *p++;
        if (s != 0) {
            s = c >= low[s] && c <= high[s] ? next[s] : reject;
        } else if (c < 0x80) {
            // ASCII: the run that follows is skipped 8 bytes at a time.
            for (std::uint64_t word; end - p >= 8; p += 8) {
                std::memcpy(&word, p, 8);
                if ((word & 0x8080808080808080u) != 0) break;
            }
        } else if (c >= 0xc2 && c <= 0xdf) {
            s = 1;
        } else if (c >= 0xe0 && c <= 0xef) {
            s = c == 0xe0 ? 4 : c == 0xed ? 5 : 2;
        } else if (c >= 0xf0 && c <= 0xf4) {
            s = c == 0xf0 ? 6 : c == 0xf4 ? 7 : 3;
        } else {
            s = reject;  // a continuation byte first, C0 and C1 (overlong), F5-FF (past U+10FFFF)
        }
    }
    state_ = static_cast<unsigned char>(s);
    return s != reject;
}

/// ws_decoder: a client's frames (RFC 6455 5) turned into messages and control frames,
/// in place in the caller's buffer, the way chunked_decoder decodes a body. Enforced, with
/// the close code of each (after an error every decode() returns the same error): frames
/// are masked, RSV1-3 are 0 (no extension is negotiated), opcodes are 0-2 and 8-10
/// (1002); a control frame has FIN and at most 125 bytes (1002); a length is in its
/// minimal encoding, below 2^63 (1002); a message stays within max_message (1009, decided
/// from a frame's header, before its payload); a continuation continues a message and a
/// text or binary frame begins one (1002); text is UTF-8, checked as each frame arrives
/// (1007); a close frame has no payload (code 1005) or a valid code (1002) and a UTF-8
/// reason (1007).
class ws_decoder {
public:
    enum class kind { need_more, message, ping, pong, close, error };
    /// result: what decode() found.
    struct result {
        kind what = kind::need_more;
        std::string_view data;    // message: the whole payload, unmasked, contiguous;
                                  // ping / pong: the payload; close: the reason
        bool text = false;        // message: it began with a text frame
        std::uint16_t code = 0;   // close: the status code (1005 when the frame had none);
                                  // error: the code to close with (1002, 1007 or 1009)
    };
    explicit ws_decoder(std::uint64_t max_message) noexcept : max_message_(max_message) {}
    /// decode: decodes whole frames from buf[0, size) up to the first event (a message, a
    /// control frame, an error) and returns it; need_more when no whole frame is left (so
    /// need_more always means: read more). The caller's buffer holds, in order: what the
    /// decoder kept (the payload of the message assembled so far) and then raw bytes from
    /// the socket; between calls the caller only appends bytes at the end and calls
    /// compact(). A frame is decoded only when it is whole (header and payload), but
    /// checked as soon as its header is; its payload is unmasked in place, and a fragment
    /// of an unfinished message moved down to join kept(). Views in the result point into
    /// buf and are valid until compact().
    result decode(char* buf, std::size_t size) noexcept;
    /// compact: drops from buf what the decoder no longer needs (frame headers, the last
    /// event's payload - a finished message, a control frame; everything after an error),
    /// moving the rest down; returns the new size. The caller calls it after every
    /// decode(), before the next.
    std::size_t compact(char* buf, std::size_t size) noexcept;
    /// in_message: a fragmented message has begun and not ended.
    bool in_message() const noexcept { return in_message_; }
    /// kept: bytes at buf's start that are the assembled payload of an unfinished message.
    std::size_t kept() const noexcept { return kept_; }

private:
    result control_frame(unsigned opcode, const char* payload, std::size_t n) noexcept;
    result fail(std::uint16_t code) noexcept;
    static void unmask(char* data, std::size_t n, const char* key) noexcept;

    std::uint64_t max_message_;
    std::size_t kept_ = 0;     // the unfinished message's payload, at buf's start
    std::size_t pos_ = 0;      // the first byte not decoded; compact() drops [kept_, pos_)
    utf8_validator utf8_;      // the text message's payload so far
    bool in_message_ = false;  // a first fragment came, and not yet the last
    bool text_ = false;        // the message in progress began with a text frame
    std::uint16_t error_ = 0;  // the close code of the error found; 0 before one
};

RESTARTABLE_SERVER_FN ws_decoder::result ws_decoder::decode(char* buf, std::size_t size) noexcept {
    if (error_ != 0) return fail(error_);
    for (;;) {
        // Base framing (RFC 6455 5.2): FIN, RSV1-3, opcode; MASK, a 7-bit length (126: 16
        // bits follow, 127: 64 bits); the masking key; the payload. Each rule is checked
        // as soon as its bytes are there, so where the bytes were cut never matters.
        const auto* p = reinterpret_cast<const unsigned char*>(buf + pos_);
        const std::size_t avail = size - pos_;
        if (avail < 2) return {};
        const bool fin = (p[0] & 0x80) != 0, control = (p[0] & 0x08) != 0;
        const unsigned opcode = p[0] & 0x0fu;
        if ((p[0] & 0x70) != 0 || (p[1] & 0x80) == 0) return fail(1002);  // an extension's bits; unmasked
        if (control ? opcode > 10 || !fin || (p[1] & 0x7f) > 125 : opcode > 2) return fail(1002);  // 5.5
        if (!control && (opcode == 0) != in_message_) return fail(1002);  // 5.4: continues nothing, or interleaves
        std::uint64_t length = p[1] & 0x7fu;
        std::size_t head = 6;  // bytes before the payload, with the masking key
        if (length == 126) {
            if (avail < 4) return {};
            length = std::uint64_t{p[2]} << 8 | p[3];
            if (length < 126) return fail(1002);
            head = 8;
        } else if (length == 127) {
            if (avail < 10) return {};
            length = 0;
            for (std::size_t i = 2; i < 10; ++i) length = length << 8 | p[i];
            if (length >> 63 != 0 || length <= 0xffff) return fail(1002);
            head = 14;
        }
        if (!control && length > max_message_ - kept_) return fail(1009);
        if (avail < head || avail - head < length) return {};

        char* const payload = buf + pos_ + head;
        const auto n = static_cast<std::size_t>(length);
        unmask(payload, n, payload - 4);
        pos_ += head + n;
        if (control) return control_frame(opcode, payload, n);
        if (opcode != 0) {
            in_message_ = true;
            text_ = opcode == 1;
            utf8_.reset();
        }
        // Text is checked frame by frame (8.1), so a bad byte fails before the message ends.
        if (text_ && (!utf8_.feed(std::string_view(payload, n)) || (fin && !utf8_.complete()))) return fail(1007);
        if (!fin) {
            std::memmove(buf + kept_, payload, n);
            kept_ += n;
            continue;
        }
        result r;
        r.what = kind::message;
        r.text = text_;
        in_message_ = false;
        if (kept_ == 0) {
            r.data = std::string_view(payload, n);  // one frame: the payload stays where it is
        } else {
            std::memmove(buf + kept_, payload, n);
            r.data = std::string_view(buf, kept_ + n);
            kept_ = 0;
        }
        return r;
    }
}

RESTARTABLE_SERVER_FN std::size_t ws_decoder::compact(char* buf, std::size_t size) noexcept {
    if (error_ != 0) {  // nothing more is decoded
        kept_ = pos_ = 0;
        in_message_ = false;
        return 0;
    }
    if (pos_ != kept_) std::memmove(buf + kept_, buf + pos_, size - pos_);
    size -= pos_ - kept_;
    pos_ = kept_;
    return size;
}

/// control_frame: the event of a whole, unmasked ping, pong or close frame (5.5), or the
/// error of a bad close frame.
RESTARTABLE_SERVER_FN ws_decoder::result ws_decoder::control_frame(unsigned opcode, const char* payload,
                                                                   std::size_t n) noexcept {
    result r;
    r.data = std::string_view(payload, n);
    if (opcode != 8) {
        r.what = opcode == 9 ? kind::ping : kind::pong;
        return r;
    }
    // Close (5.5.1, 7.1.5): no payload (the code is then 1005, "no status received"), or a
    // 2-byte code, big-endian, and a UTF-8 reason.
    r.what = kind::close;
    if (n == 0) {
        r.code = 1005;
        return r;
    }
    if (n == 1) return fail(1002);
    const unsigned code = static_cast<unsigned char>(payload[0]) << 8 | static_cast<unsigned char>(payload[1]);
    if (!ws_close_code_valid(code)) return fail(1002);
    r.code = static_cast<std::uint16_t>(code);
    r.data.remove_prefix(2);
    utf8_validator reason;  // not utf8_: a close may come between a text message's fragments
    if (!reason.feed(r.data) || !reason.complete()) return fail(1007);
    return r;
}

/// fail: the error result for code, which every later decode() returns too.
RESTARTABLE_SERVER_FN ws_decoder::result ws_decoder::fail(std::uint16_t code) noexcept {
    error_ = code;
    result r;
    r.what = kind::error;
    r.code = code;
    return r;
}

/// unmask: XORs data[i] with key[i % 4] (5.3), in place: 8 bytes at a time with the key
/// twice in a word (memcpy in and out: no alignment or aliasing assumed; 8 is a multiple
/// of 4, so the key stays in phase), the rest byte by byte.
RESTARTABLE_SERVER_FN void ws_decoder::unmask(char* data, std::size_t n, const char* key) noexcept {
    char twice[8];
    std::memcpy(twice, key, 4);
    std::memcpy(twice + 4, key, 4);
    std::uint64_t mask;
    std::memcpy(&mask, twice, 8);
    std::size_t i = 0;
    for (std::uint64_t word; n - i >= 8; i += 8) {
        std::memcpy(&word, data + i, 8);
        word ^= mask;
        std::memcpy(data + i, &word, 8);
    }
    for (; i < n; ++i) data[i] = static_cast<char>(data[i] ^ key[i % 4]);
}
}  // namespace detail

// ---------------------------------------------------------------- engine --
//
// How a run works (the design notes; figures from bench/run.sh, bench/RESULTS.md):
//
//   Why this shape. Measured keep-alive, default options, wrk -c64, one pinned CPU, against
//   nginx (1 worker) in the same run: the 0.1 loop handed every ready connection to a
//   worker and back (two thread wake-ups per request): 0.65-0.91x nginx. Workers waiting
//   in one shared set, re-armed one-shot after each request: 0.93x, 7.9 us of CPU per
//   request. Registered once, edge-triggered (below): 1.01x, 6.3 us (nginx: 6.4 us).
//   One loop per thread was not taken: a slow handler or a stream would stall every
//   connection of its loop, while here it holds one worker and the others go on.
//
//   One control thread (run() or start()'s thread) waits in its own event set on the
//   self-pipe and a timer: it enforces timeouts, watches for workers that block (see
//   "Worker policy" under workers), begins the stop, cuts at the drain deadline and ends
//   the run. Up to options::worker_threads workers wait together in a second event set
//   that holds the listener and every connection, registered once, edge-triggered (for
//   output too once a response had to wait): the worker that sees the listener ready
//   accepts (accept_ready), the one that sees a connection ready reads, parses, runs the
//   handler and writes the response itself, with no hand-off (leader/follower: before it
//   serves, a worker starts another when none is left waiting); parking it again costs no
//   system call. Accepting in the control thread instead, as before 2026-12-07, cost a
//   thread switch per connection on one CPU (52 against 38 us of CPU per Connection:
//   close request; nginx 30). The listener leaves the set under accept_mutex_ before it
//   closes or moves to the next run, so no worker accepts on a socket that is gone.
//   Sockets are non-blocking: a response that does not fit the socket buffer waits in the
//   connection until the socket is writable, so a client that does not read holds no
//   thread. With worker_threads == 0 the control thread serves connections itself (the
//   connection set is nested in its own).
//
//   An event set (event_set, below) is an epoll set, or with RESTARTABLE_SERVER_USE_POLL a
//   table polled with poll(2): the same calls, and edge-triggered registrations become
//   one-shot ones that park() re-arms (there, parking costs a lock and a wake-up of the
//   polling thread).
//
//   A connection is held by one thread at a time (connection::hold): "parked" while it
//   waits in the set, "held" while a thread works on it. Only its holder changes it or
//   closes it; the control thread takes parked ones (compare-and-swap) to time them out.
//   An event for a held connection is left in connection::pending, which the holder
//   checks right after parking it, so an edge is never lost.
//   Connection objects live until the run ends (a pool), so a late event never
//   points at freed memory; it is checked against hold and ignored when stale.
//
//   Feature entries. The engine reaches the code of the features a program may not use
//   through tables of member function pointers (run::features_), one per feature, null
//   until the public call that brings the feature in sets it (run::use_streams() and the
//   others): response::push_stream, set_pull, set_file and set_stream (streams:
//   start_stream, stream_step, send_streamed), server::websocket (upgrade_websocket,
//   ws_step, ws_fail, ws_deadline, ws_timeout), either of those (channels: end_channel,
//   stop_channels), server::restart (hand_over, transfer) and server::upgrade, or
//   systemd_listener() in the process it started (send_away, receive_handover). The engine
//   calls an entry only in a state that call leads to (a push body, a WebSocket route or
//   connection, a channel, a restart request, a hand-over socket), so it is never null
//   there; stop_channels and send_away have nothing to do before (no channel, n == 0).
//   An inline function nobody odr-uses is not compiled: a program that never makes those
//   calls (a hello server) compiles and carries none of that code (about a quarter of its
//   text). The dispatchers keep the old names (run::stream_step calls stream_step_impl
//   through the table); a plain request's path takes none of them.
//
// MEMORY BUDGET (per connection, and per run)
//
//   idle connection          ~0.4 KiB (the object; no buffer)
//   idle TLS connection      ~15 KiB more: OpenSSL's connection and session state; its
//                            record buffers are released while idle (tested: < 24 KiB;
//                            kept, they would add ~33 KiB)
//   request head             <= max_header_bytes, in a buffer that grows as bytes arrive
//   buffered request body    <= max_body_bytes; grows with the bytes that arrived, never
//                            with the declared Content-Length; chunk framing is dropped
//                            as it is decoded (a chunk-size line <= max_chunk_line bytes)
//   pipelined requests       read only while no response is waiting to be written
//   unsent response          the rest of one response (the handler's body, moved)
//   push stream, WebSocket   what the program queued and the socket has not taken:
//                            <= options::max_send_buffer (or one larger message);
//                            idle WebSocket: ~1.0 KiB in all (figure 17: 0.34 KiB for an
//                            idle HTTP connection; the channel and stream state)
//   pulled body, TLS file    one piece (16 KiB) not yet taken; a plain file: none
//   WebSocket message        <= websocket_max_message, counted in max_buffered_bytes
//   per serving thread       read_size (64 KiB) read buffer + a streaming buffer
//   all request buffers      <= options::max_buffered_bytes per run (503 past it)
//   A failed allocation answers that one connection 503 and closes it.

namespace detail {

using clock = std::chrono::steady_clock;

RESTARTABLE_SERVER_FN std::int64_t to_ns(clock::time_point t) noexcept {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}
RESTARTABLE_SERVER_FN clock::time_point from_ns(std::int64_t ns) noexcept {
    return clock::time_point(std::chrono::duration_cast<clock::duration>(std::chrono::nanoseconds(ns)));
}
constexpr std::int64_t never = INT64_MAX;

// ------------------------------------------------------------ event sets --

/// Interest and readiness bits of an event_set registration (our own, so both backends
/// read the same): ev_in and ev_out as in poll(2); ev_hup: the peer hung up (asked for:
/// epoll tells of a half-close too, poll(2) cannot - there the level report of ev_in
/// brings the reader to the EOF); ev_edge: report once, then not again until the
/// descriptor changes (epoll) or is re-armed (poll(2)).
enum event_bits : std::uint32_t { ev_in = 1, ev_out = 2, ev_hup = 4, ev_edge = 8 };

/// ready_event: one report of an event_set: the pointer registered with the descriptor
/// (or with a nested set) and what it is ready for (ev_in, ev_out, ev_hup).
struct ready_event {
    void* ptr;
    std::uint32_t events;
};

#ifndef RESTARTABLE_SERVER_USE_POLL
/// event_set: descriptors one or more threads wait on: an epoll(7) set. Edge-triggered
/// registrations (ev_edge) report a readiness once when it comes, and EPOLL_CTL_MOD
/// (modify) reports what is present again; rearm() has nothing to do. A set can be
/// nested in another, which then reports it while any of its descriptors is ready.
class event_set {
public:
    bool open() noexcept {
        fd_.reset(::epoll_create1(EPOLL_CLOEXEC));
        return static_cast<bool>(fd_);
    }
    bool add(int fd, void* ptr, std::uint32_t interest) noexcept { return control(EPOLL_CTL_ADD, fd, ptr, interest); }
    bool modify(int fd, void* ptr, std::uint32_t interest) noexcept {
        return control(EPOLL_CTL_MOD, fd, ptr, interest);
    }
    void rearm(int, void*, std::uint32_t) noexcept {}
    void remove(int fd) noexcept { ::epoll_ctl(fd_.get(), EPOLL_CTL_DEL, fd, nullptr); }
    /// remove_now: remove(), and no wait under way holds fd after it returns (a waiting
    /// epoll_wait never does), so closing fd then closes its socket at once.
    void remove_now(int fd) noexcept { remove(fd); }
    /// forget: fd is about to be closed. Closing it takes it out of the set (epoll drops a
    /// registration with the last descriptor of its file; the engine never duplicates a
    /// connection's), so no system call: one epoll_ctl less per connection. (A fork's
    /// child holds copies until its exec; an event meanwhile is a late event, which points
    /// at a pooled connection object and is ignored or finds nothing to read.)
    void forget(int) noexcept {}
    bool add_set(event_set& inner, void* ptr) noexcept { return add(inner.fd_.get(), ptr, ev_in); }
    void remove_set(event_set& inner, void*) noexcept { remove(inner.fd_.get()); }
    /// wait: up to max (<= control_events) reports into out, waiting up to timeout_ms
    /// (-1: for ever); the number of reports, or -1 with errno.
    int wait(ready_event* out, int max, int timeout_ms) noexcept {
        epoll_event events[control_events];
        const int n = ::epoll_wait(fd_.get(), events, std::min(max, control_events), timeout_ms);
        for (int i = 0; i < n; ++i) {
            const std::uint32_t e = events[i].events;
            out[i] = {events[i].data.ptr, ((e & EPOLLIN) ? ev_in : 0u) | ((e & EPOLLOUT) ? ev_out : 0u) |
                                              ((e & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) ? ev_hup : 0u)};
        }
        return n;
    }

private:
    bool control(int op, int fd, void* ptr, std::uint32_t interest) noexcept {
        epoll_event ev{};
        ev.events = ((interest & ev_in) ? EPOLLIN : 0u) | ((interest & ev_out) ? EPOLLOUT : 0u) |
                    ((interest & ev_hup) ? EPOLLRDHUP : 0u) | ((interest & ev_edge) ? EPOLLET : 0u);
        ev.data.ptr = ptr;
        return ::epoll_ctl(fd_.get(), op, fd, &ev) == 0;
    }
    unique_fd fd_;
};
#else
/// event_set: descriptors one or more threads wait on, with poll(2) (POSIX; no epoll).
/// Registrations live in a table indexed by descriptor. One waiting thread at a time
/// calls poll(2) on every armed one (the leader); the others wait on a condition for what
/// it finds. A change to the table while the leader polls wakes it through the set's own
/// pipe, so it polls again with the table as it is now - except a re-arm (see below).
///
/// poll(2) reports a level, not an edge: an ev_edge registration is one-shot instead -
/// reported once, then disarmed until rearm() or modify(); the connection code re-arms a
/// connection each time it parks it, after reading until the socket was empty, which
/// gives the same guarantee (one report per wait, none lost). Registrations without
/// ev_edge (the listener, the self-pipe, nested sets) report for as long as they are ready.
///
/// Cost: each poll(2) passes its descriptors to the kernel: O(connections). So that a
/// busy connection does not pay that on every request, a descriptor re-armed while the
/// leader polls goes on a short list (delta_) that a second waiting thread polls (the
/// sub-leader), woken through a pipe of its own; the leader is woken only when no thread
/// is left to do that. A descriptor on both lists is reported once: the report disarms it.
class event_set {
public:
    event_set() = default;
    event_set(const event_set&) = delete;
    event_set& operator=(const event_set&) = delete;

    bool open() noexcept {
        int fds[2], sub[2];
        if (!make_pipe(fds)) return false;
        wake_read_.reset(fds[0]);
        wake_write_.reset(fds[1]);
        if (!make_pipe(sub)) return false;
        sub_wake_read_.reset(sub[0]);
        sub_wake_write_.reset(sub[1]);
        return true;
    }
    bool add(int fd, void* ptr, std::uint32_t interest) noexcept {
        std::lock_guard<std::mutex> lock(mutex_);
        if (fd < 0) return errno = EBADF, false;
        if (static_cast<std::size_t>(fd) >= table_.size()) {
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
            try {
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
                table_.resize(static_cast<std::size_t>(fd) + 1);
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
            } catch (const std::bad_alloc&) {
                return errno = ENOMEM, false;
            }
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
        }
        entry& e = table_[static_cast<std::size_t>(fd)];
        if (e.used) return errno = EEXIST, false;
        e = {ptr, interest, ++serial_, true, true};
        wake_watchers();
        return true;
    }
    /// modify: changes what fd is watched for, and arms it (epoll's EPOLL_CTL_MOD).
    bool modify(int fd, void* ptr, std::uint32_t interest) noexcept {
        std::lock_guard<std::mutex> lock(mutex_);
        entry* e = find(fd);
        if (e == nullptr) return errno = ENOENT, false;
        e->ptr = ptr;
        e->interest = interest;
        e->armed = true;
        e->serial = ++serial_;
        wake_watchers();
        return true;
    }
    /// rearm: arms fd again after its one-shot report, if it is still ptr's.
    void rearm(int fd, void* ptr, std::uint32_t interest) noexcept {
        std::lock_guard<std::mutex> lock(mutex_);
        entry* e = find(fd);
        if (e == nullptr || e->ptr != ptr || (e->armed && e->interest == interest)) return;
        e->interest = interest;
        e->armed = true;
        e->serial = ++serial_;  // a poll(2) begun before sees an older arming: dropped
        if (!polling_.load() || !add_to_delta(fd, *e)) return wake_watchers();
        if (sub_polling_) {
            wake_sub();  // it polls the list as it was: again, with fd
        } else if (followers_ > 0) {
            cv_.notify_one();  // one of them polls the list
        } else {
            interrupt();  // nobody else waits: the leader polls again, with fd
        }
    }
    void remove(int fd) noexcept {
        std::lock_guard<std::mutex> lock(mutex_);
        if (entry* e = find(fd)) *e = entry();
        wake_watchers();
    }
    /// remove_now: remove(), then waits until no poll(2) that began before holds fd (it
    /// is woken and polls again without it), so closing fd then closes its socket at once:
    /// a listener that a stop closes refuses the next connect. Not from a thread that waits
    /// in this set (or one it is nested in).
    void remove_now(int fd) noexcept {
        std::unique_lock<std::mutex> lock(mutex_);
        if (entry* e = find(fd)) *e = entry();
        const std::uint64_t before = polls_begun_;
        wake_watchers();
        released_.wait(lock, [&] {
            return (leader_poll_ == 0 || leader_poll_ > before) && (sub_poll_ == 0 || sub_poll_ > before);
        });
    }
    /// forget: fd is about to be closed: its entry goes.
    void forget(int fd) noexcept { remove(fd); }
    /// add_set: nests inner: this set reports ptr while any descriptor of inner is ready.
    /// A set is nested in one set at a time: it leaves the one it was in (a retiree's
    /// connections, served inline, move to the next run's control set).
    bool add_set(event_set& inner, void* ptr) noexcept {
        event_set* const before = inner.outer_.load();
        if (before != nullptr && before != this) before->remove_set(inner, ptr);
        {
            std::lock_guard<std::mutex> lock(mutex_);
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
            try {
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
                inner_.push_back({&inner, ptr});
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
            } catch (const std::bad_alloc&) {
                return errno = ENOMEM, false;
            }
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
        }
        inner.outer_.store(this);
        interrupt();
        return true;
    }
    /// remove_set: takes inner out again (before inner is destroyed).
    void remove_set(event_set& inner, void* ptr) noexcept {
        inner.outer_.store(nullptr);
        std::lock_guard<std::mutex> lock(mutex_);
        inner_.erase(std::remove_if(inner_.begin(), inner_.end(), [&](const nested& n) { return n.set == &inner; }),
                     inner_.end());
        ready_.erase(std::remove_if(ready_.begin(), ready_.end(), [&](const ready_event& r) { return r.ptr == ptr; }),
                     ready_.end());  // ptr may not outlive inner
    }
    int wait(ready_event* out, int max, int timeout_ms) noexcept {
        std::unique_lock<std::mutex> lock(mutex_);
        const clock::time_point until =
            timeout_ms < 0 ? clock::time_point::max() : clock::now() + std::chrono::milliseconds(timeout_ms);
        for (;;) {
            if (!ready_.empty()) return take_ready(out, max);
            if (!polling_.load()) {
                if (!poll_once(lock, until)) return -1;
                if (!ready_.empty()) return take_ready(out, max);
                if (timeout_ms >= 0 && clock::now() >= until) return 0;
                continue;
            }
            if (!delta_.empty() && !sub_polling_) {  // re-armed since the leader began
                if (!poll_delta(lock, until)) return -1;
                if (!ready_.empty()) return take_ready(out, max);
                if (timeout_ms >= 0 && clock::now() >= until) return 0;
                continue;
            }
            if (timeout_ms == 0) return 0;  // another thread polls: nothing here yet
            ++followers_;
            const bool timed_out = timeout_ms < 0 ? (cv_.wait(lock), false)
                                                  : cv_.wait_until(lock, until) == std::cv_status::timeout;
            --followers_;
            if (timed_out && ready_.empty()) return 0;
        }
    }

private:
    struct entry {
        void* ptr = nullptr;
        std::uint32_t interest = 0;
        std::uint64_t serial = 0;  // which arming: a report for an earlier one is stale
        bool used = false;
        bool armed = false;
        bool in_delta = false;  // on delta_
    };
    struct nested {
        event_set* set;
        void* ptr;
    };

    entry* find(int fd) noexcept {
        if (fd < 0 || static_cast<std::size_t>(fd) >= table_.size()) return nullptr;
        entry& e = table_[static_cast<std::size_t>(fd)];
        return e.used ? &e : nullptr;
    }
    /// interrupt: makes a poll(2) under way (here, or in a set this one is nested in)
    /// return, so the next one sees the change. Lock-free: a nested set calls it on its
    /// outer set while holding its own lock.
    void interrupt() noexcept {
        if (polling_.load() && !wake_sent_.exchange(true)) {
            const char byte = 0;
            (void)::write(wake_write_.get(), &byte, 1);
        }
        if (event_set* outer = outer_.load()) outer->interrupt();
    }
    /// add_armed: appends this set's armed descriptors to fds (serials beside them).
    void add_armed(std::vector<pollfd>& fds, std::vector<std::uint64_t>& serials) const {
        for (std::size_t fd = 0; fd < table_.size(); ++fd) {
            const entry& e = table_[fd];
            if (!e.used || !e.armed || (e.interest & (ev_in | ev_out)) == 0) continue;
            fds.push_back({static_cast<int>(fd), poll_events(e.interest), 0});
            serials.push_back(e.serial);
        }
    }
    /// poll_once: one poll(2) as the leader, the lock released meanwhile; what it finds
    /// goes to ready_. False (errno set) when poll(2) failed.
    bool poll_once(std::unique_lock<std::mutex>& lock, clock::time_point until) noexcept {
        polling_.store(true);  // before the table is read: a change from now on interrupts
        fds_.clear();
        serials_.clear();
        polled_inner_.clear();
        bool inner_ready = false;  // a nested set has reports left from its own wait
        for (const int fd : delta_) table_[static_cast<std::size_t>(fd)].in_delta = false;
        delta_.clear();  // this poll watches them all
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
        try {
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
            fds_.push_back({wake_read_.get(), POLLIN, 0});
            serials_.push_back(0);
            add_armed(fds_, serials_);
            for (const nested& n : inner_) {
                std::lock_guard<std::mutex> inner_lock(n.set->mutex_);
                inner_ready = inner_ready || !n.set->ready_.empty();
                polled_inner_.push_back({n, fds_.size()});
                n.set->add_armed(fds_, serials_);
            }
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
        } catch (const std::bad_alloc&) {
            polling_.store(false);
            errno = ENOMEM;
            return false;
        }
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
        const int timeout = inner_ready ? 0 : poll_timeout(until);
        leader_poll_ = ++polls_begun_;
        lock.unlock();
        const int n = ::poll(fds_.data(), static_cast<nfds_t>(fds_.size()), timeout);
        const int poll_errno = errno;
        lock.lock();
        polling_.store(false);
        leader_poll_ = 0;
        released_.notify_all();
        if (followers_ > 0) {
            cv_.notify_one();  // a follower leads now
        } else if (sub_polling_) {
            wake_sub();  // nobody else waits: the sub-leader must lead, or no one watches all
        }
        if (n < 0 && poll_errno != EINTR) return errno = poll_errno, false;
        if (fds_[0].revents != 0) {  // a change came: the next poll sees it
            wake_sent_.store(false);
            drain(wake_read_.get());
        }
        if (n > 0 || inner_ready) collect(fds_, serials_, polled_inner_.empty() ? fds_.size() : polled_inner_.front().begin);
        if (n > 0 || inner_ready) collect_inner(inner_ready);
        return true;
    }
    /// wake_watchers: after a change (under the lock), every poll(2) under way is redone
    /// with the table as it is now - also so that it lets go of a descriptor just closed:
    /// a socket stays open (no FIN to the client) while a poll(2) still holds it. With no
    /// poll under way, a follower takes the lead.
    void wake_watchers() noexcept {
        interrupt();
        if (sub_polling_) wake_sub();
        if (!polling_.load() && !sub_polling_ && followers_ > 0) cv_.notify_one();
    }
    /// add_to_delta: puts fd on the list of descriptors armed since the leader began.
    bool add_to_delta(int fd, entry& e) noexcept {
        if (e.in_delta) return true;
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
        try {
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
            delta_.push_back(fd);
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
        } catch (const std::bad_alloc&) {
            return false;
        }
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
        e.in_delta = true;
        return true;
    }
    /// poll_delta: one poll(2) as the sub-leader, on what delta_ holds (the leader's
    /// poll does not have those), the lock released meanwhile. False when poll(2) failed.
    bool poll_delta(std::unique_lock<std::mutex>& lock, clock::time_point until) noexcept {
        sub_polling_ = true;
        sub_fds_.clear();
        sub_serials_.clear();
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
        try {
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
            sub_fds_.push_back({sub_wake_read_.get(), POLLIN, 0});
            sub_serials_.push_back(0);
            for (const int fd : delta_) {
                const entry& e = table_[static_cast<std::size_t>(fd)];
                if (!e.used || !e.armed || (e.interest & (ev_in | ev_out)) == 0) continue;
                sub_fds_.push_back({fd, poll_events(e.interest), 0});
                sub_serials_.push_back(e.serial);
            }
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
        } catch (const std::bad_alloc&) {
            sub_polling_ = false;
            errno = ENOMEM;
            return false;
        }
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
        sub_poll_ = ++polls_begun_;
        lock.unlock();
        const int n = ::poll(sub_fds_.data(), static_cast<nfds_t>(sub_fds_.size()), poll_timeout(until));
        const int poll_errno = errno;
        lock.lock();
        sub_polling_ = false;
        sub_poll_ = 0;
        released_.notify_all();
        cv_.notify_one();  // another follower may poll the list now
        if (n < 0 && poll_errno != EINTR) return errno = poll_errno, false;
        if (sub_fds_[0].revents != 0) {
            sub_wake_sent_ = false;
            drain(sub_wake_read_.get());
        }
        if (n > 0) collect(sub_fds_, sub_serials_, sub_fds_.size());
        return true;
    }
    /// wake_sub: makes the sub-leader's poll(2) return (it looks at the lists again).
    void wake_sub() noexcept {
        if (sub_wake_sent_) return;
        sub_wake_sent_ = true;
        const char byte = 0;
        (void)::write(sub_wake_write_.get(), &byte, 1);
    }
    static void drain(int fd) noexcept {
        char bytes[64];
        while (::read(fd, bytes, sizeof bytes) > 0) {
        }
    }
    static short poll_events(std::uint32_t interest) noexcept {
        return static_cast<short>(((interest & ev_in) ? POLLIN : 0) | ((interest & ev_out) ? POLLOUT : 0));
    }
    static int poll_timeout(clock::time_point until) noexcept {
        if (until == clock::time_point::max()) return -1;
        const auto left = std::chrono::ceil<std::chrono::milliseconds>(until - clock::now()).count();
        return static_cast<int>(std::clamp<long long>(left, 0, 1 << 30));
    }
    /// collect: what a poll(2) found in fds[1, end) (this set's own), into ready_. A
    /// one-shot registration is disarmed as it is reported (so the leader and the
    /// sub-leader never both report it); a report for a registration that changed
    /// meanwhile (another serial) is dropped.
    void collect(const std::vector<pollfd>& fds, const std::vector<std::uint64_t>& serials, std::size_t end) noexcept {
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
        try {
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
            for (std::size_t i = 1; i < end; ++i) {
                const short r = fds[i].revents;
                entry* e = r != 0 ? find(fds[i].fd) : nullptr;
                if (e == nullptr || e->serial != serials[i] || !e->armed) continue;
                if (r & POLLNVAL) {  // closed without remove(): never report it again
                    e->armed = false;
                    continue;
                }
                const std::uint32_t events = ((r & POLLIN) ? ev_in : 0u) | ((r & POLLOUT) ? ev_out : 0u) |
                                             ((r & (POLLHUP | POLLERR)) ? ev_hup | ev_in : 0u);
                if (e->interest & ev_edge) e->armed = false;
                ready_.push_back({e->ptr, events});
            }
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
        } catch (const std::bad_alloc&) {  // the rest stay ready: the next poll finds them
        }
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
    }
    /// collect_inner: the nested sets the leader's poll(2) found ready report their
    /// pointer, once each.
    void collect_inner(bool inner_ready) noexcept {
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
        try {
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
            for (std::size_t k = 0; k < polled_inner_.size(); ++k) {
                const std::size_t end = k + 1 < polled_inner_.size() ? polled_inner_[k + 1].begin : fds_.size();
                bool ready = inner_ready;
                for (std::size_t i = polled_inner_[k].begin; i < end && !ready; ++i) ready = fds_[i].revents != 0;
                if (ready) ready_.push_back({polled_inner_[k].set.ptr, ev_in});
            }
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
        } catch (const std::bad_alloc&) {  // the rest stay ready: the next poll finds them
        }
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
    }
    /// take_ready: up to max reports from ready_; a follower is woken for any left - or,
    /// with none waiting on cv_, the sub-leader (it waits in poll(2), not on cv_).
    int take_ready(ready_event* out, int max) noexcept {
        int n = 0;
        for (; n < max && !ready_.empty(); ++n) {
            out[n] = ready_.front();
            ready_.pop_front();
        }
        if (!ready_.empty()) {
            cv_.notify_one();
            if (followers_ == 0 && sub_polling_) wake_sub();
        }
        return n;
    }

    std::mutex mutex_;  // guards all but the atomics
    std::condition_variable cv_;
    std::vector<entry> table_;  // by descriptor
    std::vector<nested> inner_;
    std::deque<ready_event> ready_;  // found by the leader, not yet taken
    std::vector<pollfd> fds_;        // the leader's poll(2) array, kept for reuse
    std::vector<std::uint64_t> serials_;  // beside fds_: the registration each was
    struct polled {
        nested set;
        std::size_t begin;  // where its descriptors begin in fds_
    };
    std::vector<polled> polled_inner_;
    std::uint64_t serial_ = 0;
    std::atomic<bool> polling_{false};  // a leader is in poll(2)
    std::atomic<bool> wake_sent_{false};
    std::atomic<event_set*> outer_{nullptr};
    unique_fd wake_read_, wake_write_;
    // The sub-leader's (under mutex_ all).
    std::vector<int> delta_;  // descriptors armed since the leader's poll(2) began
    std::vector<pollfd> sub_fds_;
    std::vector<std::uint64_t> sub_serials_;
    bool sub_polling_ = false;
    bool sub_wake_sent_ = false;
    int followers_ = 0;  // threads waiting on cv_
    // For remove_now(): polls begun so far, and which of them the leader's and the
    // sub-leader's poll(2) under way are (0: none); released_ is told when one ends.
    std::uint64_t polls_begun_ = 0;
    std::uint64_t leader_poll_ = 0;
    std::uint64_t sub_poll_ = 0;
    std::condition_variable released_;
    unique_fd sub_wake_read_, sub_wake_write_;
};
#endif  // RESTARTABLE_SERVER_USE_POLL
/// route: one registered route. Immutable; shared between the server and its runs.
struct route {
    std::string method;
    std::vector<std::string> segments;  // the pattern split at '/'; ":name" is a parameter, a last "*" the rest
    handler fn;
    body_mode mode;
    std::shared_ptr<const websocket_handlers> ws;  // a WebSocket endpoint (GET): fn is empty

    /// match: whether path fits the pattern; fills params with the decoded parameters.
    bool match(std::string_view path, std::vector<std::pair<std::string_view, std::string>>& params) const {
        params.clear();
        if (path.empty() || path.front() != '/') return false;
        std::size_t pos = 1;
        for (const std::string& seg : segments) {
            if (pos > path.size()) return false;
            if (seg == "*" && &seg == &segments.back()) {  // the rest of the path, raw
                params.emplace_back(std::string_view(seg), std::string(path.substr(pos)));
                return true;
            }
            std::size_t end = std::min(path.find('/', pos), path.size());
            std::string_view part = path.substr(pos, end - pos);
            if (!seg.empty() && seg.front() == ':') {
                if (part.empty()) return false;
                params.emplace_back(std::string_view(seg).substr(1), percent_decode(part, false));
            } else if (seg != part) {
                return false;
            }
            pos = end + 1;
        }
        return pos == path.size() + 1;
    }
};
using route_list = std::vector<std::shared_ptr<const route>>;

/// match_route: the route for method and path (a GET route also answers HEAD), with the
/// path parameters in params; or null and status 404 (no such path) or 405.
using params_t = std::vector<std::pair<std::string_view, std::string>>;
RESTARTABLE_SERVER_FN const route* match_route(const route_list& routes, std::string_view method, std::string_view path,
                                params_t& params, int& status) {
    const route* get_for_head = nullptr;
    bool path_known = false;
    for (const auto& r : routes) {
        if (!r->match(path, params)) continue;
        path_known = true;
        if (r->method == method) return r.get();
        if (!get_for_head && r->method == "GET" && method == "HEAD") get_for_head = r.get();
    }
    if (get_for_head) {
        get_for_head->match(path, params);
        return get_for_head;
    }
    status = path_known ? 405 : 404;
    return nullptr;
}

/// allowed_methods: the Allow value of a 405: the methods whose routes match path.
RESTARTABLE_SERVER_FN RESTARTABLE_SERVER_COLD std::string allowed_methods(const route_list& routes, std::string_view path, params_t& scratch) {
    std::vector<std::string_view> methods;
    for (const auto& r : routes)
        if (std::find(methods.begin(), methods.end(), r->method) == methods.end() && r->match(path, scratch))
            methods.push_back(r->method);
    auto listed = [&methods](std::string_view m) { return std::find(methods.begin(), methods.end(), m) != methods.end(); };
    if (listed("GET") && !listed("HEAD")) methods.push_back("HEAD");
    std::string allow;
    for (std::string_view m : methods) {
        if (!allow.empty()) allow += ", ";
        allow += m;
    }
    return allow;
}

/// error_response: the body of every response the server makes up itself.
RESTARTABLE_SERVER_FN void error_response(response& res, int status) {
    res.status = status;
    res.set_content(status_text(status), "text/plain");
}

/// wants_keep_alive: whether the client lets the connection stay open. Connection is one
/// list across all its field lines (RFC 9110 7.6.1).
RESTARTABLE_SERVER_FN bool wants_keep_alive(const request& req) noexcept {
    bool close = false, keep_alive = false;
    for (const header& h : req.headers) {
        if (!iequals(h.name, "Connection")) continue;
        close |= has_token(h.value, "close");
        keep_alive |= has_token(h.value, "keep-alive");
    }
    return !close && (req.version_minor == 1 || keep_alive);
}

/// conn_state: where one connection is (Go's ConnState, finer). Only the thread that
/// holds the connection changes it, through connection::set(), which checks this table:
///
///   from \ to    idle  head  body  handling  writing  lingering  closed  streaming  websocket
///   (accepted)         x
///   idle               x                                           x
///   head                     x     x         x        x            x
///   body                           x         x                     x
///   handling     x                           x        x            x       x          x
///   writing      x                                    x            x
///   lingering                                                      x
///   streaming                                x                     x
///   websocket                                         x            x
///
///   idle: between requests, no byte of the next one yet (idle_timeout)
///   head: a request head is arriving (header_timeout, from accept or its first byte);
///     on a connection with a transport, its handshake first (connection::handshaking).
///     A failed handshake lingers, as its transport may have sent an answer
///   body: a buffered body is arriving (body_timeout between reads)
///   handling: a handler runs; a streamed body flows (the thread is busy)
///   writing: a response waits for the socket (write_timeout between writes)
///   lingering: our side is shut down; the client's late bytes are dropped (linger_time),
///     so closing never resets a response the client has not read (RFC 9112 9.6)
///   streaming: a push stream, pulled body or file flows, holding no thread: it waits for
///     the socket, or (a push stream) for the program's next write (write_timeout while
///     bytes wait for the socket; nothing while the stream is idle)
///   websocket: after a 101, frames both ways (see "WebSocket" below)
enum class conn_state : unsigned char { idle, head, body, handling, writing, lingering, closed, streaming, websocket };

constexpr bool allowed(conn_state from, conn_state to) noexcept {
    using s = conn_state;
    switch (from) {
        case s::idle: return to == s::head || to == s::closed;
        case s::head:
            return to == s::body || to == s::handling || to == s::writing || to == s::lingering || to == s::closed;
        case s::body: return to == s::handling || to == s::writing || to == s::closed;
        case s::handling:
            return to == s::idle || to == s::writing || to == s::lingering || to == s::closed || to == s::streaming ||
                   to == s::websocket;
        case s::streaming: return to == s::writing || to == s::closed;
        case s::websocket: return to == s::lingering || to == s::closed;
        case s::writing: return to == s::idle || to == s::lingering || to == s::closed;
        case s::lingering: return to == s::closed;
        case s::closed:  // a pooled object taking a new connection, or one handed over
            return to == s::head || to == s::idle;
    }
    return false;
}

struct connection;

/// channel: what a stream_handle or websocket handle shares with the connection it
/// sends on. Senders (any thread) append framed bytes to queued under mutex and wake the
/// connection's holder (poke: the connection is re-registered for output, so the set
/// reports it writable); only the holder writes to the socket. When the connection ends,
/// conn becomes null under mutex, so a handle outlives it safely: while conn is set, the
/// connection and its run are alive (a run ends only when its last connection has).
struct channel {
    enum class kind_t : unsigned char { push, websocket };
    explicit channel(kind_t k) noexcept : kind(k) {}
    const kind_t kind;
    std::mutex mutex;
    // Under mutex.
    run* owner = nullptr;        // conn's run; null before the stream starts and after it ended
    connection* conn = nullptr;
    std::string queued;          // bytes to send, framed (chunks, WebSocket frames)
    bool poked = false;          // a wake-up is on its way to conn's holder
    bool open = true;            // sends accepted
    bool end_requested = false;  // push: close(); WebSocket: a close frame is queued
    bool refused = false;        // WebSocket: a send was refused since the holder last took queued
    std::size_t limit = 0;       // options::max_send_buffer (0: no bound, a handle not made by a handler)
    bool chunked = false;        // push: each write is one chunk
    std::size_t registry_index = 0;  // (under the run's channels_mutex_) where its run lists it
    // Set once before the handle is shared, or atomic.
    std::atomic<std::size_t> unsent{0};  // bytes the holder took from queued, not yet sent
    std::atomic<bool> send_waiting{false};  // queued has bytes the holder has not taken
    std::atomic<bool> stopping{false};
    std::atomic<std::thread::id> serving{};  // the thread running one of its handlers (no poke needed)
    std::uint64_t id = 0;
    std::string subprotocol;
    std::function<void()> on_close;  // push
    std::shared_ptr<const websocket_handlers> handlers;  // websocket

    std::size_t buffered() const noexcept { return queued.size() + unsent.load(); }
    /// admits: whether n more bytes may be queued (under mutex).
    bool admits(std::size_t n) const noexcept {
        const std::size_t b = buffered();
        return b == 0 || limit == 0 || (b <= limit && n <= limit - b);
    }
};

/// next_channel_id: ids for websocket::id(), unique in the process.
RESTARTABLE_SERVER_FN std::uint64_t next_channel_id() noexcept {
    static std::atomic<std::uint64_t> last{0};
    return last.fetch_add(1) + 1;
}

/// stream_state: what a connection in state streaming or websocket keeps (its holder's
/// alone), allocated only for those.
struct stream_state {
    // streaming
    enum class source_t : unsigned char { push, pull, file } source = source_t::push;
    bool chunked = false;                  // chunk framing (pull; a push stream frames at write)
    bool sized = false;                    // Content-Length: left counts down
    std::uint64_t left = 0;
    pull_provider pull;
    unique_fd file;
    std::uint64_t file_offset = 0;
    std::size_t written = 0;               // body bytes sent, for the access log
    bool ending = false;                   // the body is complete: the last chunk follows
    std::size_t data_begin = 0, data_end = 0;  // push: where the program's bytes lie in the output (no framing)
    std::string method, target;            // for the access log (only with one)
    int status = 200;
    // websocket
    ws_decoder decoder{0};
    websocket handle;
    bool close_sent = false, close_received = false, failed = false, ping_outstanding = false;
    std::uint16_t close_code = 1006;       // what on_close will be told
    std::string close_reason;
    clock::time_point last_in;             // when the client last sent anything
};

/// connection: one accepted connection, and what it keeps between events.
struct connection {
    enum hold_t : int { free_slot, parked, held };
    std::atomic<int> hold{free_slot};          // see the design notes above
    std::atomic<std::uint32_t> pending{0};     // events that came while a thread held it
    std::atomic<std::int64_t> deadline{never};  // while parked: when its timeout strikes
    std::atomic<bool> in_flight{false};         // a request has begun and is not answered
    std::atomic<bool> cut{false};               // counted in stop_result::cut

    unique_fd fd;  // changed only under the pool's lock (the cut reads it there)
    std::unique_ptr<transport> tp;  // what it goes through (with_transport()); null: the socket
    conn_state state = conn_state::closed;
    bool handshaking = false;  // tp's handshake is not done yet (state head)
    bool wants_write = false;  // tp's last call wants the socket writable (a TLS read may)
    bool in_set = false;  // registered in its run's connection set
    clock::time_point since;  // when the current timeout started counting
    clock::time_point began;  // when the current request's head was whole (access log)

    byte_buffer in;                // bytes of requests not yet answered
    bool borrowed = false;         // in is the serving thread's read buffer, lent for now
    std::size_t charged = 0;       // in's capacity counted in run::buffered_
    std::size_t start = 0;         // where the current request begins in `in`
    std::size_t scanned = 0;       // bytes after start searched for a line end in vain

    // The current request, once its head is parsed.
    std::size_t head_bytes = 0;
    request_framing framing;
    const route* matched = nullptr;
    int route_status = 0;  // 404 or 405 when matched is null
    int version_minor = 1;
    bool is_head = false, keep_alive = true, continue_sent = false;
    chunked_decoder decoder;                     // a buffered chunked body, decoded in place:
    std::size_t body_read = 0, body_write = 0;   // next raw byte, end of the decoded body

    // The part of a response the socket did not take yet.
    std::string out_head, out_body;
    std::size_t out_sent = 0;
    bool read_short = false;  // the last read did not fill the buffer: the socket is likely empty
    bool peer_closed = false;  // the client shut down its side: read until the EOF
    bool watch_output = false;  // registered for EPOLLOUT too (once a response had to wait)
    bool input_waits = false;   // (poll(2)) a stream left input unread: input is not watched until it ends
    bool nodelay = false;       // TCP_NODELAY is set (see no_delay)
    std::shared_ptr<channel> ch;        // a push stream's or WebSocket's (states streaming, websocket)
    std::unique_ptr<stream_state> st;   // states streaming and websocket

    void set(conn_state to) noexcept {
        assert(allowed(state, to));
        state = to;
    }
    bool output_pending() const noexcept { return out_sent < out_head.size() + out_body.size(); }
    /// needs_output: whether c waits for its socket to be writable.
    /// needs_output: whether c waits for its socket to be writable: output not all taken
    /// (or a TLS record), a pulled body or file with more to send, a push stream with bytes
    /// queued. (poll(2) watches output only then: a stream that must go on says so here.)
    bool needs_output() const noexcept {
        if (wants_write || output_pending()) return true;
        if (!st || state != conn_state::streaming) return false;
        return st->source != stream_state::source_t::push || (ch && ch->send_waiting.load());
    }
    conn_io io() noexcept { return {fd.get(), tp.get()}; }
    void reset_request() noexcept {
        head_bytes = scanned = body_read = body_write = 0;
        matched = nullptr;
        continue_sent = false;
        decoder = chunked_decoder();
    }
};

/// worker_slot: what the control thread sees of one worker. busy_since: when its handler
/// or stream call began (steady ns), 0 while it is in none, blocked_mark once the control
/// thread took it to block and counted it out of the rotation. calls: handler calls so
/// far, so the control thread can tell an active run from a quiet one. Written by its
/// worker, read by the control thread (the compare-and-swap to blocked_mark is the one
/// write from there), on a cache line of its own. batch[next, end): the events of the
/// worker's last wait that it has not served yet (see worker_batch), under batch_mutex:
/// the worker takes them one by one, and whoever counts it out hands the rest back to
/// the connection set, so a handler that blocks holds no other connection's request.
struct alignas(64) worker_slot {
    static constexpr std::int64_t blocked_mark = -1;
    std::atomic<std::int64_t> busy_since{0};
    std::atomic<std::uint32_t> calls{0};
    std::uint32_t calls_seen = 0;  // the control thread's, at its last look
    std::mutex batch_mutex;
    int batch_next = 0;
    int batch_end = 0;
    ready_event batch[worker_batch];
};

/// worker: what one serving thread reuses from request to request.
struct worker {
    worker_slot* slot = nullptr;  // null for the control thread's
    bool counted_out = false;     // its last handler blocked: it rejoins or waits as a spare
    byte_buffer scratch;  // the read buffer, lent to the connection being served
    byte_buffer stream;   // what a streamed request body is read into
    request req;
    response res;
    std::string head;  // the response head being written
    date_cache date;
};

/// connection_pool: every connection object of a run. Objects are reused, never freed
/// before the run ends, so a pointer from a late event stays valid.
class connection_pool {
public:
    connection* acquire(int fd) {
        std::lock_guard<std::mutex> lock(mutex_);
        connection* c;
        if (free_.empty()) {
            all_.emplace_back();
            c = &all_.back();
        } else {
            c = free_.back();
            free_.pop_back();
        }
        c->fd.reset(fd);
        c->pending.store(0);  // an event for the connection it was before means nothing now
        c->peer_closed = false;
        c->watch_output = false;
        c->input_waits = false;
        c->nodelay = false;
        c->cut.store(false);
        c->deadline.store(never);
        c->hold.store(connection::held);
        return c;
    }
    /// release: closes c's descriptor (leaving set first: a duplicate of it elsewhere
    /// would keep it registered in an epoll set) and returns the object.
    void release(connection& c, event_set& set) noexcept {
        std::lock_guard<std::mutex> lock(mutex_);
        if (c.in_set) set.forget(c.fd.get());
        c.in_set = false;
        c.fd.reset();
        c.hold.store(connection::free_slot);
        free_.push_back(&c);
    }
    /// detach: like release, but gives the descriptor to the caller instead of closing it.
    int detach(connection& c, event_set& set) noexcept {
        std::lock_guard<std::mutex> lock(mutex_);
        if (c.in_set) set.remove(c.fd.get());
        c.in_set = false;
        const int fd = c.fd.release();
        c.hold.store(connection::free_slot);
        free_.push_back(&c);
        return fd;
    }
    /// locked: calls f() under the pool's lock (no descriptor is closed meanwhile).
    template <class F>
    void locked(F f) {
        std::lock_guard<std::mutex> lock(mutex_);
        f();
    }
    /// for_each_live: calls f(c) for every connection in use, under the pool's lock (no
    /// descriptor is closed meanwhile). f must not acquire or release.
    template <class F>
    void for_each_live(F f) {
        std::lock_guard<std::mutex> lock(mutex_);
        for (connection& c : all_)
            if (c.hold.load() != connection::free_slot) f(c);
    }

private:
    std::mutex mutex_;
    std::deque<connection> all_;
    std::vector<connection*> free_;
};

/// note_events: what an event says that a read might not: the client has shut down its
/// side (its EOF may sit behind the bytes already read).
RESTARTABLE_SERVER_FN void note_events(connection& c, std::uint32_t events) noexcept {
    if (events & ev_hup) c.peer_closed = true;
}

/// take: makes the calling thread the holder of a parked connection, with the events that
/// came while another thread held it. False when another thread holds it or it is free.
RESTARTABLE_SERVER_FN bool take(connection& c) noexcept {
    int expected = connection::parked;
    if (!c.hold.compare_exchange_strong(expected, connection::held)) return false;
    note_events(c, c.pending.exchange(0));  // what they signalled, the new holder is about to see
    return true;
}

/// take_for_event: take() for an event of the connection set. When another thread holds c,
/// the event is left in c.pending, which that holder checks right after parking c
/// (edge-triggered events come once, so none may be dropped). False: someone else serves
/// c, or c is free (a stale event for a closed connection).
RESTARTABLE_SERVER_FN bool take_for_event(connection& c, std::uint32_t events) noexcept {
    for (;;) {
        if (take(c)) {
            note_events(c, events);
            return true;
        }
        const int hold = c.hold.load();
        if (hold == connection::free_slot) return false;
        if (hold == connection::parked) continue;  // parked between the two looks: take it
        // Held: leave the event to the holder, who looks at pending after parking. If it
        // parked before this store, the take below sees "parked" (both are seq_cst).
        c.pending.fetch_or(events);
        return take(c);
    }
}

/// request_arriving: whether bytes of a request wait in the socket of c (idle, or a head
/// with nothing read yet) as a stop begins. If so, c counts as receiving a head from now:
/// the stop answers it instead of closing it as idle (the client could not know).
RESTARTABLE_SERVER_FN bool request_arriving(connection& c) noexcept {
    char byte;
    if (::recv(c.fd.get(), &byte, 1, MSG_PEEK | MSG_DONTWAIT) != 1) return false;
    if (c.state == conn_state::idle) c.set(conn_state::head);
    c.since = clock::now();
    return true;
}

/// watched_events: what c is registered for: input always; with epoll, output once a
/// response had to wait for the socket (then for good: edges come only when a full buffer
/// drains); with poll(2), output while a response waits (a level would report at once).
RESTARTABLE_SERVER_FN std::uint32_t watched_events(const connection& c) noexcept {
#ifndef RESTARTABLE_SERVER_USE_POLL
    const bool output = c.watch_output;
    const bool input = true;
#else
    const bool output = c.needs_output();
    const bool input = !c.input_waits;  // a level report of input nobody reads now would spin
#endif  // RESTARTABLE_SERVER_USE_POLL
    return (input ? ev_in : 0u) | ev_hup | ev_edge | (output ? ev_out : 0u);
}

// ------------------------------------------- hand-over to a new process --
//
// server::upgrade() passes the new process, beside the listening socket (descriptor 3,
// LISTEN_FDS=1), one end of a Unix SOCK_SEQPACKET socket pair, as the descriptor that
// RESTARTABLE_SERVER_HANDOVER_FD names; systemd_listener() adopts it with the listener.
// What goes over it, in order (HAProxy passes its listeners so; here connections go too):
//
//   1. new -> old, once: the greeting handover_hello, sent by the first run started with
//      that factory (in start(), so before the program's notify_ready()). A program that
//      never sends it (not this library, or an older one) gets no connection: after
//      READY=1 the old process waits up to handover_hello_wait, then stops as it always
//      did (idle connections closed).
//   2. old -> new, as the old run stops: each connection waiting for a request - idle
//      between requests, or the next request arriving - in messages of at most
//      handover_max_fds descriptors (SCM_RIGHTS) and handover_message_bytes of data. For
//      each descriptor, in order, a handover_record and the bytes the old process read
//      from it but did not serve. The old process takes each out of its event set before
//      the message goes and closes its own descriptor once it went: from then on only the
//      new process reads that socket, and the bytes still in the kernel wait for it. A
//      message that cannot go (the new process exited, stopped or closed the socket, or
//      did not take it within handover_send_timeout) leaves its connections where they
//      were, treated as before (an idle one closed, an arriving request answered), and
//      nothing more is sent. A connection with a request in flight is not handed over: it
//      finishes in the old process with "Connection: close", as in any stop.
//   3. The old process closes its end when its run is over; the new one closes its end at
//      that EOF, or when its own run stops (a message still queued then is closed by the
//      kernel with its descriptors: those clients see their connection close, as they
//      would have from the old process, never a hang).
//
// Both ends are on one machine: records are in native byte order, and hold ages (not
// time points) so that the two processes' clocks need not agree.

/// handover_hello: the new process's greeting, the whole of message 1.
inline constexpr char handover_hello[] = "restartable_server hand-over 1";

/// handover_record: what follows each handed-over descriptor in a message's data.
struct handover_record {
    std::uint8_t state;        // 0: idle (between requests), 1: head (a request arriving)
    std::uint8_t peer_closed;  // the client had shut down its side
    std::uint8_t unused[2];
    std::uint32_t bytes;   // bytes read ahead of the response that follow this record
    std::int64_t age_ns;   // a head begun: how long its header_timeout has run; else 0
};
static_assert(sizeof(handover_record) == 16, "a record is 16 bytes");

/// handover_control: room for the SCM_RIGHTS control message of one hand-over message.
union handover_control {
    cmsghdr align;
    char bytes[CMSG_SPACE(sizeof(int) * handover_max_fds)];
};

/// send_handover: sends data with the descriptors fds[0..n) (SCM_RIGHTS) as one message.
/// True when it went whole; blocks up to the socket's send timeout.
RESTARTABLE_SERVER_FN bool send_handover(int channel, const std::string& data, const int* fds,
                                         std::size_t n) noexcept {
    handover_control control;
    std::memset(&control, 0, sizeof control);
    iovec iov{const_cast<char*>(data.data()), data.size()};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.bytes;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * n);
    cmsghdr* cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int) * n);
    std::memcpy(CMSG_DATA(cm), fds, sizeof(int) * n);
    for (;;) {
        const ssize_t sent = ::sendmsg(channel, &msg, no_sigpipe);
        if (sent >= 0) return static_cast<std::size_t>(sent) == data.size();
        if (errno != EINTR) return false;
    }
}

/// receive_handover_message: one message from channel without waiting: its data into
/// buf (resized to what came) and its descriptors into fds (n of them), close-on-exec.
/// 1: a message (one cut short - too long, or more descriptors than fit - comes with buf
/// empty: close its descriptors); 0: the other end closed; -1 with errno: none (EAGAIN)
/// or an error.
RESTARTABLE_SERVER_FN int receive_handover_message(int channel, std::string& buf, int* fds, std::size_t& n) noexcept {
    n = 0;
    handover_control control;
    std::memset(&control, 0, sizeof control);
    buf.resize(buf.capacity());
    iovec iov{&buf[0], buf.size()};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.bytes;
    msg.msg_controllen = sizeof control.bytes;
#ifdef MSG_CMSG_CLOEXEC
    const int flags = MSG_DONTWAIT | MSG_CMSG_CLOEXEC;
#else
    const int flags = MSG_DONTWAIT;
#endif  // MSG_CMSG_CLOEXEC
    const ssize_t got = ::recvmsg(channel, &msg, flags);
    if (got < 0) {
        buf.clear();
        return -1;
    }
    for (cmsghdr* cm = CMSG_FIRSTHDR(&msg); cm != nullptr; cm = CMSG_NXTHDR(&msg, cm)) {
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) continue;
        const std::size_t count = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (std::size_t i = 0; i < count && n < handover_max_fds; ++i) {
            int fd;
            std::memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof fd);
#ifndef MSG_CMSG_CLOEXEC
            ::fcntl(fd, F_SETFD, FD_CLOEXEC);
#endif  // no MSG_CMSG_CLOEXEC
            fds[n++] = fd;
        }
    }
    if (got == 0 && n == 0) {
        buf.clear();
        return 0;
    }
    buf.resize((msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) ? 0 : static_cast<std::size_t>(got));
    return 1;
}

/// handover_fits: whether upgrade() could hand c over: it waits for a request (idle, or a
/// head arriving), owes the client nothing, what it read ahead fits in one hand-over
/// message, and it has no transport (a TLS session lives in this process's memory: such
/// a connection is closed or answered here, as a stop does).
RESTARTABLE_SERVER_FN bool handover_fits(const connection& c) noexcept {
    return !c.tp && (c.state == conn_state::idle || c.state == conn_state::head) && !c.output_pending() &&
           c.in.size() - c.start <= handover_message_bytes - sizeof(handover_record);
}

/// run: one run of a server, from a started listener to the last joined thread. A
/// restart() hands a run's listener and waiting connections to the next run; the old
/// one, a retiree, finishes its requests in flight while the next run's control thread
/// keeps its time, and goes when its last connection has.
class run {
public:
    run(server& srv, options opts, route_list routes, std::vector<stop_hook> hooks, unique_fd listener,
        std::shared_ptr<transport_layer> layer, std::uint64_t generation);
    run(const run&) = delete;
    run& operator=(const run&) = delete;
    ~run();

    /// init: makes the event sets. Before loop(), in the starting thread.
    std::error_code init() noexcept;
    /// begin_accepting: the listener joins the workers' event set and the first worker
    /// starts, so that the run accepts before start() returns. In the starting thread,
    /// once the state says running (so no handler sees starting); false (errno) when it
    /// cannot. loop() does it for a restart's run.
    bool begin_accepting() noexcept { return watch_listener(); }
    /// abandon_run: a run that could not begin accepting, or whose control thread could not
    /// start: its workers are joined (its connections close with it).
    void abandon_run() noexcept { teardown(); }
    /// loop: the control thread's loop; returns when the run is over and every worker is
    /// joined, or right after a restart handed it over (then take_next() has the next
    /// run). Steps: watch the listener (a restart's run), wait, serve_inline, begin_stop,
    /// hand_over, accept again after a pause, sweep, tend the retirees, cut, teardown.
    void loop() noexcept;
    /// take_next: the run this one handed over to, once; null when it ended instead.
    std::unique_ptr<run> take_next() noexcept { return std::move(next_); }
    /// adopt_retiree: makes this run's control thread finish old's drain (and the
    /// drains old was finishing).
    void adopt_retiree(std::unique_ptr<run> old) noexcept;
    /// adopt: takes a connection another run handed over (any thread), with its transport.
    void adopt(int fd, conn_state state, std::string bytes, clock::time_point since, bool peer_closed,
               std::unique_ptr<transport> tp = nullptr, bool handshaking = false) noexcept;
    stop_result result() const noexcept {
        return {true, cut_.load() == 0, cut_.load(), error_, idle_closed_.load(), finished_.load(),
                handed_over_.load()};
    }
    std::uint64_t generation() const noexcept { return generation_; }
    const std::string& address() const noexcept { return opts_.listener.address(); }
    int listener_fd() const noexcept { return listener_.get(); }

private:
    /// outcome: what a step on a connection leaves to do. progress: take another step;
    /// need_input: the request needs more bytes; wait: park it; close: close it.
    enum class outcome { progress, need_input, wait, close };

    // The control thread's steps.
    int wait_timeout(clock::time_point now) const noexcept;
    void serve_inline() noexcept;
    void begin_stop(clock::time_point now) noexcept;
    bool hand_over(clock::time_point now) noexcept { return (this->*entry(features_.restart).hand_over)(now); }
    void move_backlog(run& to, clock::time_point now) noexcept;
    void tend_retirees(clock::time_point now) noexcept;
    void run_hooks(stop_reason why) noexcept;
    std::vector<connection*> take_parked() noexcept;
    void receive_handover(clock::time_point now) noexcept {
        (this->*entry(features_.handover).receive)(now);
    }
    void close_handover() noexcept;
    bool watch_listener() noexcept;
    void unwatch_listener() noexcept;
    void raise_listener() noexcept;
    void accept_ready() noexcept;
    void register_connection(connection* c, int fd) noexcept;
    std::unique_ptr<transport> make_transport(int fd) noexcept;
    void sweep(clock::time_point now) noexcept;
    void cut_at_deadline() noexcept;
    void teardown() noexcept;
    void fail(std::error_code ec) noexcept;

    // Workers.
    bool add_follower() noexcept;
    bool add_follower_locked() noexcept;
    bool rejoin(worker& w) noexcept;
    bool next_in_batch(worker_slot& slot, ready_event& ev) noexcept;
    void hand_back_batch(worker_slot& slot) noexcept;
    void worker_main(worker_slot* slot) noexcept;
    void watch_workers(clock::time_point now) noexcept;
    void begin_call(worker& w) noexcept;
    void end_call(worker& w) noexcept;
    /// call_span: begin_call() to end_call(), however the call ends.
    struct call_span {
        call_span(run& r, worker& w) noexcept : r_(r), w_(w) { r_.begin_call(w_); }
        call_span(const call_span&) = delete;
        call_span& operator=(const call_span&) = delete;
        ~call_span() { r_.end_call(w_); }
        run& r_;
        worker& w_;
    };

    // One connection, by its holder.
    void serve(worker& w, connection& c) noexcept;
    outcome step(worker& w, connection& c);
    outcome read_input(worker& w, connection& c);
    outcome handshake(connection& c) noexcept;
    outcome process_input(worker& w, connection& c);
    outcome parse_head(worker& w, connection& c, bool& req_valid);
    outcome collect_body(worker& w, connection& c, bool req_valid);
    outcome handle_buffered(worker& w, connection& c, std::string_view body, std::size_t end);
    outcome handle_streamed(worker& w, connection& c);
    outcome respond(worker& w, connection& c, bool keep_alive);
    outcome send_streamed(worker& w, connection& c, bool keep_alive) {
        return (this->*entry(features_.streams).send_blocking)(w, c, keep_alive);
    }
    outcome answer_error(worker& w, connection& c, int status);
    outcome flush(connection& c) noexcept;
    outcome after_response(connection& c);
    outcome linger(connection& c) noexcept;
    void no_delay(connection& c) noexcept;

    // Streams that hold no thread, and WebSockets (see "streams and WebSocket").
public:
    /// poke: wakes the holder of c, or a worker for it, to send what its channel queued
    /// (any thread, with the channel's mutex held: c is open); timed: a push stream, whose
    /// queued bytes are under write_timeout.
    void poke(connection& c, bool timed) noexcept;

private:
    outcome start_stream(worker& w, connection& c, bool keep_alive) {
        return (this->*entry(features_.streams).start)(w, c, keep_alive);
    }
    outcome stream_step(worker& w, connection& c) { return (this->*entry(features_.streams).step)(w, c); }
    outcome produce(worker& w, connection& c, std::size_t& turn);
    outcome produce_pulled(worker& w, connection& c);
    outcome produce_file(connection& c, std::size_t& turn);
    void log_stream(const connection& c) noexcept;
    bool take_queued(connection& c);
    void attach(connection& c, const std::shared_ptr<channel>& ch);
    void end_channel(connection& c) noexcept {
        if (c.ch) (this->*entry(features_.channels).end)(c);  // a channel: streams or WebSocket in use
    }
    void stop_channel(channel& ch, std::uint16_t code) noexcept;
    void stop_channels(std::uint16_t code) noexcept {
        // Sequentially consistent, as is bring_in()'s store: a stream attached as a stop begins
        // is listed here, or its attach() sees stopping_ (set before this) and stops it.
        if (const channel_code* t = features_.channels.load()) (this->*t->stop_all)(code);
    }
    outcome upgrade_websocket(worker& w, connection& c, std::size_t end) {
        return (this->*entry(features_.websocket).upgrade)(w, c, end);
    }
    int check_handshake(const request& req, const websocket_handlers& h) const noexcept;
    outcome ws_step(worker& w, connection& c) { return (this->*entry(features_.websocket).step)(w, c); }
    void ws_event(worker& w, connection& c, const ws_decoder::result& r);
    void ws_queue(connection& c, unsigned opcode, std::string_view payload);
    void ws_fail(connection& c, std::uint16_t code) { (this->*entry(features_.websocket).fail)(c, code); }
    bool ws_full(connection& c);
    bool ws_closing(connection& c);
    template <class F>
    void ws_call(worker& w, connection& c, F&& f);
    std::int64_t ws_deadline(const connection& c) const noexcept {
        return (this->*entry(features_.websocket).deadline)(c);
    }
    void ws_timeout(connection& c) noexcept { (this->*entry(features_.websocket).timeout)(c); }
    void on_timeout(worker& w, connection& c, clock::time_point now) noexcept;
    void call_handler(worker& w, const route* r, int route_status);
    void build_head(worker& w, const connection& c, bool keep_alive, bool chunked, bool streamed);
    bool head_overdue(const connection& c) const noexcept;
    void log_access(const worker& w, const connection& c, std::size_t bytes) noexcept;
    void log_error(const char* what, const char* detail) noexcept;
    bool grow_input(connection& c, std::size_t want);
    void charge(connection& c) noexcept;
    void lend_buffer(worker& w, connection& c);
    void return_buffer(worker& w, connection& c);
    bool park(connection& c) noexcept;
    bool watch(connection* c, int fd, std::uint32_t events) noexcept;
    void hand_back(connection& c) noexcept;
    void close(connection& c) noexcept;
    void transfer(connection& c) noexcept { (this->*entry(features_.restart).transfer)(c); }
    bool leaves_by_upgrade(const connection& c) const noexcept;
    void send_away(connection* const* cs, std::size_t n) noexcept {
        if (n != 0) (this->*entry(features_.handover).send_away)(cs, n);  // n == 0 unless upgrade() ran
    }
    void clear(connection& c) noexcept;
    void left() noexcept;
    std::int64_t drain_deadline() const noexcept;
    bool past_deadline() const noexcept;
    void lower_next_sweep(std::int64_t ns) noexcept;

    // Feature entries (see "feature entries" under engine): each feature's code, reached
    // from the engine only through its table (the dispatchers above).
    outcome start_stream_impl(worker& w, connection& c, bool keep_alive);
    outcome stream_step_impl(worker& w, connection& c);
    outcome send_streamed_impl(worker& w, connection& c, bool keep_alive);
    outcome upgrade_websocket_impl(worker& w, connection& c, std::size_t end);
    int call_on_upgrade(worker& w, const websocket_handlers& h, websocket_upgrade& up);
    outcome ws_step_impl(worker& w, connection& c);
    void ws_fail_impl(connection& c, std::uint16_t code);
    std::int64_t ws_deadline_impl(const connection& c) const noexcept;
    void ws_timeout_impl(connection& c) noexcept;
    bool hand_over_impl(clock::time_point now) noexcept;
    void transfer_impl(connection& c) noexcept;
    void send_away_impl(connection* const* cs, std::size_t n) noexcept;
    void receive_handover_impl(clock::time_point now) noexcept;
    void end_channel_impl(connection& c) noexcept;
    void stop_channels_impl(std::uint16_t code) noexcept;
    struct stream_code {  // response::push_stream, set_pull, set_file, set_stream
        outcome (run::*start)(worker&, connection&, bool);
        outcome (run::*step)(worker&, connection&);
        outcome (run::*send_blocking)(worker&, connection&, bool);
    };
    struct channel_code {  // the channels of both (see "streams and WebSocket")
        void (run::*end)(connection&) noexcept;
        void (run::*stop_all)(std::uint16_t) noexcept;
    };
    struct websocket_code {  // server::websocket
        outcome (run::*upgrade)(worker&, connection&, std::size_t);
        outcome (run::*step)(worker&, connection&);
        void (run::*fail)(connection&, std::uint16_t);
        std::int64_t (run::*deadline)(const connection&) const noexcept;
        void (run::*timeout)(connection&) noexcept;
    };
    struct restart_code {  // server::restart
        bool (run::*hand_over)(clock::time_point) noexcept;
        void (run::*transfer)(connection&) noexcept;
    };
    struct handover_code {  // server::upgrade, and systemd_listener() in the process it started
        void (run::*send_away)(connection* const*, std::size_t) noexcept;
        void (run::*receive)(clock::time_point) noexcept;
    };
    /// feature_entries: the tables set so far in this process (null: never brought in).
    struct feature_entries {
        std::atomic<const stream_code*> streams;
        std::atomic<const channel_code*> channels;  // set with streams or websocket
        std::atomic<const websocket_code*> websocket;
        std::atomic<const restart_code*> restart;
        std::atomic<const handover_code*> handover;
    };
    static inline feature_entries features_{};  // all null until a use_*() call
    /// entry: a table the engine reaches only after the call that sets it (see above).
    template <class T>
    static const T& entry(const std::atomic<const T*>& table) noexcept {
        return *table.load(std::memory_order_acquire);
    }
    /// bring_in: sets table to code (once: later calls only read it). Sequentially
    /// consistent: stop_channels() relies on it.
    template <class T>
    static void bring_in(std::atomic<const T*>& table, const T& code) noexcept {
        if (table.load() != &code) table.store(&code);
    }

public:
    /// use_streams ... use_handover: bring a feature's code in (see "feature entries").
    static void use_streams() noexcept {
        static constexpr stream_code code{&run::start_stream_impl, &run::stream_step_impl, &run::send_streamed_impl};
        bring_in(features_.streams, code);
        use_channels();
    }
    static void use_websocket() noexcept {
        static constexpr websocket_code code{&run::upgrade_websocket_impl, &run::ws_step_impl, &run::ws_fail_impl,
                                             &run::ws_deadline_impl, &run::ws_timeout_impl};
        bring_in(features_.websocket, code);
        use_channels();
    }
    static void use_channels() noexcept {
        static constexpr channel_code code{&run::end_channel_impl, &run::stop_channels_impl};
        bring_in(features_.channels, code);
    }
    static void use_restart() noexcept {
        static constexpr restart_code code{&run::hand_over_impl, &run::transfer_impl};
        bring_in(features_.restart, code);
    }
    static void use_handover() noexcept {
        static constexpr handover_code code{&run::send_away_impl, &run::receive_handover_impl};
        bring_in(features_.handover, code);
    }

private:
    server& srv_;
    options opts_;
    parse_limits limits_;
    route_list routes_;
    std::vector<stop_hook> hooks_;
    std::uint64_t generation_;  // the start this run belongs to (restarts keep it)
    unique_fd listener_;
    std::shared_ptr<transport_layer> layer_;  // what new connections go through (null: none)
    event_set control_set_;  // the self-pipe, the listener (and connection sets served inline)
    event_set conns_;        // every connection, edge-triggered (poll(2): one-shot)
    unique_fd handover_in_;  // upgrade() started this process: connections come this way
    std::string handover_buf_;  // (control thread) a hand-over message's data
    std::atomic<bool> inline_{false};  // the control thread serves connections itself
    connection_pool pool_;
    worker control_worker_;
    stop_signal stop_signal_;  // what handlers and streams see of a stop or restart

    std::atomic<bool> stopping_{false};  // no more accepts; the drain is on
    std::atomic<bool> retiring_{false};  // stopping for a restart: connections move on
    std::unique_ptr<run> next_;          // the run this one handed over to (until taken)
    std::vector<std::unique_ptr<run>> retirees_;  // replaced runs still draining (control thread)
    std::atomic<std::size_t> idle_closed_{0};
    std::atomic<std::size_t> finished_{0};
    std::atomic<std::size_t> handed_over_{0};  // passed to a new process (upgrade())
    std::atomic<std::int64_t> drain_deadline_{never};
    std::atomic<std::int64_t> next_sweep_{never};
    std::atomic<std::size_t> live_{0};
    std::atomic<std::size_t> buffered_{0};
    std::atomic<std::size_t> cut_{0};
    std::atomic<int> waiting_{0};  // workers waiting in conns_
    std::mutex channels_mutex_;             // guards channels_ (and each channel's registry_index)
    std::vector<channel*> channels_;        // the open push streams and WebSockets, for a stop
    bool cut_done_ = false;
    std::error_code error_;

    // The listener, watched in conns_: the worker its event reaches accepts (accept_ready).
    std::mutex accept_mutex_;        // held while accepting, and to stop watching the listener
    bool listener_watched_ = false;  // under accept_mutex_
    std::atomic<std::int64_t> accept_resume_{never};  // out of descriptors: not watched until then
    std::atomic<int> accept_error_{0};  // an accept failed for good (errno): the control thread ends the run

    // Workers (see "worker policy" above). Under workers_mutex_ but where atomic.
    std::mutex workers_mutex_;
    std::vector<std::thread> workers_;
    std::deque<worker_slot> slots_;  // one per worker, same order
    std::size_t budget_ = 1;         // workers in the rotation at most: usable_cpus(), bounded
    std::atomic<std::size_t> rotation_{0};  // workers waiting in conns_ or serving, not counted out
    std::condition_variable spare_cv_;     // where counted-out workers wait to be called back
    std::size_t spares_ = 0;               // workers waiting there
    std::size_t spare_calls_ = 0;          // calls not yet taken by a spare
    bool over_ = false;  // no worker may be started any more; spares end
    std::atomic<bool> workers_exit_{false};
    std::atomic<std::int64_t> monitor_due_{never};  // the control thread's next look (never: asleep)
    clock::time_point last_call_{};        // control thread: the last time it saw a handler call
};

RESTARTABLE_SERVER_FN void use_streams() noexcept { run::use_streams(); }
RESTARTABLE_SERVER_FN void use_websocket() noexcept { run::use_websocket(); }
RESTARTABLE_SERVER_FN void use_restart() noexcept { run::use_restart(); }
RESTARTABLE_SERVER_FN void use_handover() noexcept { run::use_handover(); }

RESTARTABLE_SERVER_FN RESTARTABLE_SERVER_COLD run::run(server& srv, options opts, route_list routes, std::vector<stop_hook> hooks, unique_fd listener,
                std::shared_ptr<transport_layer> layer, std::uint64_t generation)
    : srv_(srv),
      opts_(std::move(opts)),
      routes_(std::move(routes)),
      hooks_(std::move(hooks)),
      generation_(generation),
      listener_(std::move(listener)),
      layer_(std::move(layer)) {
    limits_ = {opts_.max_request_line_bytes, opts_.max_header_bytes, opts_.max_headers};
    inline_ = opts_.worker_threads == 0;
    budget_ = std::max<std::size_t>(1, std::min(opts_.worker_threads, usable_cpus()));
}

RESTARTABLE_SERVER_FN run::~run() = default;

RESTARTABLE_SERVER_FN RESTARTABLE_SERVER_COLD std::error_code run::init() noexcept {
    // The self-pipe is marked by a null pointer, a connection set served inline by its
    // run's address (the listener, by its own address, joins conns_ as the loop begins:
    // watch_listener). A run made by restart() to take the current listener over gets it
    // at the hand-over.
    if (!control_set_.open() || !conns_.open() || !control_set_.add(srv_.wake_read_.get(), nullptr, ev_in) ||
        (inline_ && !control_set_.add_set(conns_, this)))
        return last_error();
    // Started by upgrade(): the old process's waiting connections come through this socket
    // once it has the greeting. Without memory for them, or a registration, none come.
    if (const auto& inbox = factory_access::handover(opts_.listener)) {
        handover_in_ = inbox->take();
        if (handover_in_) {
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
            try {
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
                handover_buf_.reserve(handover_message_bytes + 1);  // one byte more: a longer one is cut
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
            } catch (const std::bad_alloc&) {
                handover_in_.reset();
            }
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
            if (!handover_in_ || !control_set_.add(handover_in_.get(), &handover_in_, ev_in) ||
                ::send(handover_in_.get(), handover_hello, sizeof handover_hello - 1, no_sigpipe | MSG_DONTWAIT) < 0)
                close_handover();
        }
    }
    return {};
}

// ------------------------------------------------------- control thread --

RESTARTABLE_SERVER_FN void run::loop() noexcept {
    ready_event events[control_events];
    if (!stopping_.load() && !watch_listener()) fail(last_error());
    for (;;) {
        clock::time_point now = clock::now();
        const int ready = control_set_.wait(events, control_events, wait_timeout(now));
        if (ready < 0 && errno != EINTR) fail(last_error());
        now = clock::now();
        for (int i = 0; i < ready; ++i) {
            void* const p = events[i].ptr;
            if (p == nullptr)
                srv_.drain_wake();
            else if (p == &handover_in_)
                receive_handover(now);
            else  // a connection set served inline: this run's, or a retiree's
                static_cast<run*>(p)->serve_inline();
        }
        RESTARTABLE_SERVER_SYNC_POINT(srv_, "control.woken", 0);
        if (!stopping_.load() && srv_.stop_requested_.load()) begin_stop(now);
        if (!stopping_.load() && srv_.restart_requested_.load() && hand_over(now)) return;
        if (const int e = accept_error_.exchange(0); e != 0) {
            log_error("accept failed, the run ends: ", std::strerror(e));
            fail({e, std::system_category()});  // the listener itself is broken
        }
        if (to_ns(now) >= accept_resume_.load()) {  // out of descriptors a while ago: accept again
            accept_resume_.store(never);
            raise_listener();
        }
        if (to_ns(now) >= next_sweep_.load()) sweep(now);
        if (to_ns(now) >= monitor_due_.load()) watch_workers(now);
        tend_retirees(now);  // before live_ is read: a retiree's last hand-over counts here first
        if (stopping_.load()) {
            if (!cut_done_ && to_ns(now) >= drain_deadline()) cut_at_deadline();
            if (retirees_.empty() && live_.load() == 0) break;
        }
    }
    teardown();
}

RESTARTABLE_SERVER_FN int run::wait_timeout(clock::time_point now) const noexcept {
    std::int64_t until = std::min(next_sweep_.load(), monitor_due_.load());
    if (stopping_.load() && !cut_done_) until = std::min(until, drain_deadline());
    until = std::min(until, accept_resume_.load());
    for (const auto& r : retirees_) {
        if (r->live_.load() == 0) return 0;  // it went (perhaps before it retired): join it now
        until = std::min({until, r->next_sweep_.load(), r->monitor_due_.load()});
        if (!r->cut_done_) until = std::min(until, r->drain_deadline());
    }
    // A request's wake-up may predate this run (drained at its start): look now.
    if (!stopping_.load() && (srv_.stop_requested_.load() || srv_.restart_requested_.load())) return 0;
    if (until == never) return -1;
    const std::int64_t ms = (until - to_ns(now) + 999999) / 1000000;
    return static_cast<int>(std::clamp<std::int64_t>(ms, 0, 1 << 30));
}

/// serve_inline: with no workers, the control thread serves the connections that are ready.
RESTARTABLE_SERVER_FN void run::serve_inline() noexcept {
    ready_event events[control_events];
    const int ready = conns_.wait(events, control_events, 0);
    for (int i = 0; i < ready; ++i) {
        if (events[i].ptr == &listener_) {
            accept_ready();
            continue;
        }
        auto* c = static_cast<connection*>(events[i].ptr);
        if (take_for_event(*c, events[i].events)) serve(control_worker_, *c);
    }
}

/// begin_stop: the listener closes (a new client is refused at once, so a load balancer
/// moves on), idle connections close - or, after an upgrade(), go to the new process with
/// those whose request is arriving - and requests in flight go on until the drain deadline.
RESTARTABLE_SERVER_FN RESTARTABLE_SERVER_COLD void run::begin_stop(clock::time_point now) noexcept {
    stopping_.store(true);
    close_handover();  // a process that upgrade() started takes no connection once it stops
    if (listener_) {  // before the state says "stopping": from then on a connect is refused
        unwatch_listener();
        srv_.set_listener_fd(-1);  // upgrade() dups it under the same lock
        listener_.reset();
    }
    srv_.transition(server_state::running, server_state::stopping);
    srv_.end_restart(false);  // a restart not handed over yet will not be
    const std::int64_t requested = srv_.stop_requested_at_.load();
    const std::int64_t from = requested != 0 && !error_ ? requested : to_ns(now);
    drain_deadline_.store(error_ ? from : from + std::chrono::nanoseconds(opts_.drain_timeout).count());
    stop_signal_.raise();
    run_hooks(stop_reason::stop);
    stop_channels(1001);  // push streams end, WebSockets get close 1001 (Going Away)
    std::vector<connection*> parked = take_parked();
    // After upgrade(): those waiting for a request go to the new process, all at once (the
    // rest are kept in place, at the front, and dealt with below).
    const auto leaving = std::partition(parked.begin(), parked.end(),
                                        [this](const connection* c) { return !leaves_by_upgrade(*c); });
    send_away(parked.data() + (leaving - parked.begin()), static_cast<std::size_t>(parked.end() - leaving));
    parked.erase(leaving, parked.end());
    for (connection* c : parked) {
        const bool waiting = c->state == conn_state::idle || (c->state == conn_state::head && c->in.size() == 0);
        if (!waiting) {
            hand_back(*c);
            continue;
        }
        if (request_arriving(*c)) {  // it gets its answer
            hand_back(*c);
        } else if (c->state == conn_state::idle) {
            idle_closed_.fetch_add(1);
            close(*c);
        } else {
            hand_back(*c);  // accepted, silent so far: it gets first_request_grace
        }
    }
}

/// hand_over: a restart: the next run (built by restart()) takes the listener and every
/// connection waiting for a request; this run becomes a retiree that finishes what is in
/// flight, its connections moving on as their responses end. False when the next run
/// is not for this run (the request came from an earlier start).
RESTARTABLE_SERVER_FN bool run::hand_over_impl(clock::time_point now) noexcept {
    std::unique_ptr<run> next = srv_.take_next_run(generation_);
    if (!next) return false;
    run& to = *next;
    unwatch_listener();  // the next run watches it when its loop begins, on this thread
    if (!to.listener_) {
        to.listener_ = std::move(listener_);  // the same socket: never closed, nothing refused
    } else {
        move_backlog(to, now);  // the new address listens already; the old one's queue moves
    }
    if (handover_in_ && !to.handover_in_) {  // an upgrade's connections may still come: to the next run
        control_set_.remove(handover_in_.get());
        to.handover_in_ = std::move(handover_in_);
        to.handover_buf_ = std::move(handover_buf_);
        if (!to.control_set_.add(to.handover_in_.get(), &to.handover_in_, ev_in)) to.handover_in_.reset();
    }
    srv_.set_listener_fd(to.listener_.get());  // before the old one closes (upgrade dups it)
    listener_.reset();
    srv_.port_.store(local_port(to.listener_.get()));
    RESTARTABLE_SERVER_SYNC_POINT(srv_, "hand_over.listener_moved", 0);
    {
        std::lock_guard<std::mutex> current(srv_.current_mutex_);  // no transfer into this run under way
        srv_.current_.store(&to);  // where connections go from now on...
    }
    retiring_.store(true);     // ...before anything can see stopping_ and close an idle one
    stopping_.store(true);
    drain_deadline_.store(to_ns(now) + std::chrono::nanoseconds(opts_.drain_timeout).count());
    stop_signal_.raise();
    run_hooks(stop_reason::restart);
    stop_channels(1012);  // push streams end (their connections move), WebSockets get 1012
    for (connection* c : take_parked()) {
        if (c->state == conn_state::idle || c->state == conn_state::head)
            transfer(*c);
        else
            hand_back(*c);  // its request finishes here
    }
    next_ = std::move(next);
    srv_.end_restart(true);
    return true;
}

/// move_backlog: the connections the old listener has queued, accepted now and handed to
/// the next run, so closing the old listener resets none.
RESTARTABLE_SERVER_FN void run::move_backlog(run& to, clock::time_point now) noexcept {
    for (;;) {
        const int fd = accept_connection(listener_.get());
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            return;
        }
        std::unique_ptr<transport> tp;
        if (layer_ && !(tp = make_transport(fd))) {
            ::close(fd);
            continue;
        }
        to.adopt(fd, conn_state::head, std::string(), now, false, std::move(tp), layer_ != nullptr);
    }
}

/// make_transport: the transport of a connection just accepted on fd, from this run's
/// layer; null when the layer refuses it (logged; the caller closes fd).
RESTARTABLE_SERVER_FN std::unique_ptr<transport> run::make_transport(int fd) noexcept {
    std::error_code ec;
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
    try {
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
        std::unique_ptr<transport> tp = layer_->accept(fd, ec);
        if (tp && !ec) return tp;
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
    } catch (...) {
        ec = std::make_error_code(std::errc::not_enough_memory);
    }
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
    log_error("a connection was closed: its transport failed: ", ec ? ec.message().c_str() : "no transport");
    return nullptr;
}

/// tend_retirees: the control duties of the runs restarts replaced: their timeouts and
/// drain deadlines; once one has no connection left, its workers are joined and it goes.
RESTARTABLE_SERVER_FN void run::tend_retirees(clock::time_point now) noexcept {
    for (auto it = retirees_.begin(); it != retirees_.end();) {
        run& r = **it;
        if (to_ns(now) >= r.next_sweep_.load()) r.sweep(now);
        if (to_ns(now) >= r.monitor_due_.load()) r.watch_workers(now);  // its requests in flight
        if (!r.cut_done_ && to_ns(now) >= r.drain_deadline()) r.cut_at_deadline();
        if (r.live_.load() != 0) {
            ++it;
            continue;
        }
        if (r.inline_.load()) control_set_.remove_set(r.conns_, &r);
        r.teardown();
        cut_.fetch_add(r.cut_.load());
        idle_closed_.fetch_add(r.idle_closed_.load());
        finished_.fetch_add(r.finished_.load());
        handed_over_.fetch_add(r.handed_over_.load());
        it = retirees_.erase(it);
    }
}

RESTARTABLE_SERVER_FN void run::adopt_retiree(std::unique_ptr<run> old) noexcept {
    std::vector<std::unique_ptr<run>> drains = std::move(old->retirees_);
    drains.push_back(std::move(old));
    for (auto& r : drains) {
        if (r->inline_.load()) control_set_.add_set(r->conns_, r.get());  // served by this thread now
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
        try {
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
            retirees_.push_back(std::move(r));
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
        } catch (const std::bad_alloc&) {  // cannot keep it: finish its drain here and now
            r->loop();
        }
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
    }
}

/// take_parked: takes every parked connection for the control thread (a stop or a
/// restart then decides each one's fate; those held by a thread are left to it).
RESTARTABLE_SERVER_FN std::vector<connection*> run::take_parked() noexcept {
    std::vector<connection*> taken;
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
    try {
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
        pool_.for_each_live([&taken](connection& c) {
            if (c.hold.load() == connection::parked && take(c)) taken.push_back(&c);
        });
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
    } catch (const std::bad_alloc&) {  // those taken are handled; the rest time out as usual
    }
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
    return taken;
}

/// run_hooks: the server's on_stop hooks, as this run was started with them.
RESTARTABLE_SERVER_FN RESTARTABLE_SERVER_COLD void run::run_hooks(stop_reason why) noexcept {
    for (const stop_hook& hook : hooks_) {
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
        try {
            hook(why);
        } catch (...) {  // a hook's failure must not stop the stop
            log_error("an on_stop hook threw", "");
        }
#else
        hook(why);
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
    }
}

/// watch_listener: the listener joins the connection set, where the workers wait: the
/// one its event reaches accepts (accept_ready), with no hand-off to another thread. A
/// first worker starts to wait there (none with worker_threads == 0: the control thread
/// serves the set inline). In start()'s thread once the state says running
/// (begin_accepting), or for a restart's run on its control thread as the loop begins.
/// False (errno) if it cannot join.
RESTARTABLE_SERVER_FN bool run::watch_listener() noexcept {
    if (!listener_) return true;
    {
        std::lock_guard<std::mutex> lock(accept_mutex_);
        if (listener_watched_) return true;  // by start() already: its worker may not wait yet
    }
    if (!inline_.load() && waiting_.load() == 0 && !add_follower()) inline_ = control_set_.add_set(conns_, this);
    std::lock_guard<std::mutex> lock(accept_mutex_);
    listener_watched_ = conns_.add(listener_.get(), &listener_, ev_in | ev_edge);
    return listener_watched_;
}

/// unwatch_listener: the listener leaves the connection set, before it closes or moves to
/// the next run. Under accept_mutex_: once it returns no worker accepts on it, and a
/// report of it that a worker still holds finds it unwatched.
RESTARTABLE_SERVER_FN void run::unwatch_listener() noexcept {
    std::lock_guard<std::mutex> lock(accept_mutex_);
    if (listener_watched_) conns_.remove_now(listener_.get());
    listener_watched_ = false;
}

/// raise_listener: the listener is reported again if connections wait (a modify gives
/// epoll a new edge): for a report a counted-out worker handed back, or after a pause.
RESTARTABLE_SERVER_FN void run::raise_listener() noexcept {
    std::lock_guard<std::mutex> lock(accept_mutex_);
    if (listener_watched_ && accept_resume_.load() == never)
        conns_.modify(listener_.get(), &listener_, ev_in | ev_edge);
}

/// accept_ready: accepts what the listener has queued, on the worker its event reached (or
/// the control thread serving inline), under accept_mutex_: up to accept_batch, then the
/// listener is raised again for the next worker. Out of descriptors (EMFILE), the listener
/// is not watched for accept_backoff, which the control thread keeps; an accept that fails
/// for good ends the run through the control thread.
RESTARTABLE_SERVER_FN void run::accept_ready() noexcept {
    std::lock_guard<std::mutex> lock(accept_mutex_);
    if (!listener_watched_ || stopping_.load()) return;  // (a stop or hand-over unwatches it next)
    const int listening = listener_.get();
    const clock::time_point now = clock::now();
    for (int i = 0; i < accept_batch; ++i) {
        const int fd = accept_connection(listening);
        if (fd < 0) {
            const int e = errno;
            if (e == EINTR || e == ECONNABORTED || e == EPROTO) continue;
            if (e == EAGAIN || e == EWOULDBLOCK) {
                conns_.rearm(listening, &listener_, ev_in | ev_edge);  // poll(2): one-shot until now
                return;
            }
            conns_.modify(listening, &listener_, 0);  // not reported until the control thread says
            if (e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM) {
                accept_resume_.store(to_ns(now + accept_backoff));  // back off, don't spin
            } else {
                accept_error_.store(e);
            }
            srv_.wake();
            return;
        }
        if (live_.load() >= opts_.max_connections) {
            send_unavailable(fd);
            ::close(fd);
            continue;
        }
        connection* c = nullptr;
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
        try {
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
            c = pool_.acquire(fd);
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
        } catch (const std::bad_alloc&) {
            send_unavailable(fd);
            ::close(fd);
            continue;
        }
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
        live_.fetch_add(1);
        c->set(conn_state::head);
        c->since = now;
        if (layer_) {
            c->tp = make_transport(fd);
            if (!c->tp) {
                close(*c);
                continue;
            }
            c->handshaking = true;
        }
        register_connection(c, fd);
    }
    conns_.modify(listening, &listener_, ev_in | ev_edge);  // more may wait: reported again
}

/// register_connection: parks a new (or handed-over) connection, then adds it to the
/// connection set, so its first event finds it parked. Until then no other thread can
/// reach it: it is in no event set, and pointers to it come only from there. One handed
/// over with bytes of a request is watched for output too, so it is reported at once.
RESTARTABLE_SERVER_FN void run::register_connection(connection* c, int fd) noexcept {
    const std::uint32_t events = watched_events(*c) | (c->watch_output ? ev_out : 0u);
    c->in_set = true;
    while (park(*c)) {  // not watched yet: what is pending is a late event of the
    }                   // connection this object was before, so park it again
    bool watched = false;
    pool_.locked([&] {  // a late event may have let a worker close it: then fd is not its
        watched = c->hold.load() == connection::free_slot || watch(c, fd, events);
    });
    if (!watched && take(*c)) {
        c->in_set = false;
        close(*c);
    }
}

/// adopt: a connection the run this one replaced hands over, waiting for a request (state
/// idle or head). The bytes of a request that began to arrive come along; then it is
/// watched for output too, so its first event comes at once (a writable socket is ready)
/// even if no more input does.
RESTARTABLE_SERVER_FN void run::adopt(int fd, conn_state state, std::string bytes, clock::time_point since,
                       bool peer_closed, std::unique_ptr<transport> tp, bool handshaking) noexcept {
    connection* c = nullptr;
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
    try {
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
        c = pool_.acquire(fd);
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
    } catch (const std::bad_alloc&) {
        ::close(fd);
        return;
    }
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
    live_.fetch_add(1);
    c->set(state);
    c->since = since;
    c->peer_closed = peer_closed;
    // A transport may hold input it has read from the socket already (a TLS record, or
    // more of one): watched for output too, the connection is looked at once.
    c->watch_output = tp != nullptr;
    c->tp = std::move(tp);
    c->handshaking = handshaking;
    if (!bytes.empty()) {
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
        try {
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
            c->in.reserve(std::max(bytes.size() * 2, min_read));
            c->in.assign(bytes);
            charge(*c);
            c->watch_output = true;
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
        } catch (const std::bad_alloc&) {
            send_unavailable(fd);
            return close(*c);
        }
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
    }
    if (!inline_.load() && waiting_.load() == 0) add_follower();
    register_connection(c, fd);
}

/// receive_handover: the process that started this one with upgrade() hands over its
/// connections waiting for a request (see "hand-over to a new process"); each is adopted
/// as a restart's would be, with the bytes read ahead. At the other end's EOF (that
/// process is done), or an error, the socket is closed.
RESTARTABLE_SERVER_FN void run::receive_handover_impl(clock::time_point now) noexcept {
    for (int m = 0; m < 16 && handover_in_; ++m) {  // registered level-triggered: more wake the loop again
        int fds[handover_max_fds];
        std::size_t n = 0;
        const int got = receive_handover_message(handover_in_.get(), handover_buf_, fds, n);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        if (got <= 0) return close_handover();
        std::string_view data = handover_buf_;
        std::size_t k = 0;
        while (k < n && data.size() >= sizeof(handover_record)) {
            handover_record r;
            std::memcpy(&r, data.data(), sizeof r);
            if (r.state > 1 || r.age_ns < 0 || r.bytes > data.size() - sizeof r) break;
            const std::string_view ahead = data.substr(sizeof r, r.bytes);
            data.remove_prefix(sizeof r + r.bytes);
            const conn_state state = r.state == 1 ? conn_state::head : conn_state::idle;
            const clock::time_point since = now - std::chrono::nanoseconds(r.age_ns);
            std::string bytes;
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
            try {
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
                bytes.assign(ahead);
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
            } catch (const std::bad_alloc&) {
                send_unavailable(fds[k]);
                ::close(fds[k++]);
                continue;
            }
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
            adopt(fds[k++], state, std::move(bytes), since, r.peer_closed != 0);
        }
        if (k < n || !data.empty())
            log_error("a hand-over message of upgrade() was malformed: its connections were closed", "");
        for (; k < n; ++k) ::close(fds[k]);
    }
}

/// close_handover: no more connections come from the process that started this one.
RESTARTABLE_SERVER_FN void run::close_handover() noexcept {
    if (!handover_in_) return;
    control_set_.remove(handover_in_.get());
    handover_in_.reset();
}

/// sweep: closes or answers (408) the parked connections whose timeout struck.
RESTARTABLE_SERVER_FN void run::sweep(clock::time_point now) noexcept {
    next_sweep_.store(never);
    const std::int64_t now_ns = to_ns(now);
    std::vector<connection*> due;
    pool_.for_each_live([&](connection& c) {
        const std::int64_t d = c.deadline.load();
        if (c.hold.load() != connection::parked) return;  // its holder re-arms its timer
        if (d > now_ns) {
            lower_next_sweep(d);
        } else if (take(c)) {
            due.push_back(&c);
        }
    });
    for (connection* c : due) on_timeout(control_worker_, *c, now);
}

RESTARTABLE_SERVER_FN RESTARTABLE_SERVER_COLD void run::on_timeout(worker& w, connection& c, clock::time_point now) noexcept {
    if (c.deadline.load() > to_ns(now)) return hand_back(c);  // re-armed meanwhile: not due
    if (c.state == conn_state::websocket) return ws_timeout(c);
    const bool has_request = c.in.size() > c.start;
    if ((c.state == conn_state::head && has_request) || c.state == conn_state::body) {
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
        try {
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
            if (answer_error(w, c, 408) == outcome::close) return close(c);
            return serve(w, c);  // writes what it can, then lingers
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
        } catch (const std::bad_alloc&) {
        }
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
    }
    close(c);
}

/// cut_at_deadline: the drain deadline passed: every connection still open is shut down;
/// those with a request in flight are counted in stop_result::cut.
RESTARTABLE_SERVER_FN RESTARTABLE_SERVER_COLD void run::cut_at_deadline() noexcept {
    cut_done_ = true;
    std::vector<connection*> taken;
    pool_.for_each_live([&](connection& c) {
        if (c.hold.load() == connection::parked && take(c)) {
            taken.push_back(&c);
        } else {  // a thread holds it (a handler, a stream): its next read or write fails
            if (c.in_flight.load() && !c.cut.exchange(true)) cut_.fetch_add(1);
            ::shutdown(c.fd.get(), SHUT_RDWR);
        }
    });
    for (connection* c : taken) {
        if (c->in_flight.load() && !c->cut.exchange(true)) cut_.fetch_add(1);
        close(*c);
    }
}

/// fail: the run cannot go on (its listener or event set failed): stop it at once, and say why.
RESTARTABLE_SERVER_FN RESTARTABLE_SERVER_COLD void run::fail(std::error_code ec) noexcept {
    if (!error_) error_ = ec;
    if (!stopping_.load()) begin_stop(clock::now());
}

/// teardown: every worker learns the run is over through the self-pipe, which is now
/// added to their event set with a byte in it; then they are joined.
RESTARTABLE_SERVER_FN RESTARTABLE_SERVER_COLD void run::teardown() noexcept {
    std::vector<std::thread> joining;
    {
        std::lock_guard<std::mutex> lock(workers_mutex_);
        over_ = true;
        joining.swap(workers_);
    }
    spare_cv_.notify_all();
    if (!joining.empty()) {
        workers_exit_.store(true);
        srv_.wake();
        conns_.add(srv_.wake_read_.get(), nullptr, ev_in);
        for (std::thread& t : joining) t.join();
    }
    listener_.reset();
}

// --------------------------------------------------------------- workers --

// Worker policy. budget_ workers (usable_cpus(), at most options::worker_threads) are in the
// rotation: waiting in conns_ or serving. Measured with 8 workers on one CPU (wrk -c8, one
// pinned CPU): a worker was preempted in the middle of a request whenever another one woke
// for the next event, and p99 latency was 2.8-4.7x nginx's; one worker per CPU does not
// pay that. A worker in one handler or stream call for blocked_after is taken to block and
// counted out (watch_workers, on the control thread), so another can take its place: a
// spare one called back, or a new thread up to worker_threads. When its call returns it
// rejoins if there is room, or waits as a spare. So no more than budget_ workers compete
// for the CPUs, and a handler that blocks still holds only its own connection.

/// add_follower: one more worker into the rotation, while fewer than budget_ are in it: a
/// spare called back, or a new thread (up to options::worker_threads). False when there is
/// no worker at all (none could be started).
RESTARTABLE_SERVER_FN bool run::add_follower() noexcept {
    if (rotation_.load() >= budget_) return true;  // the common case, without the lock
    std::lock_guard<std::mutex> lock(workers_mutex_);
    return add_follower_locked();
}

RESTARTABLE_SERVER_FN bool run::add_follower_locked() noexcept {
    if (over_ || rotation_.load() >= budget_) return !workers_.empty();
    if (spares_ > spare_calls_) {
        ++spare_calls_;
        rotation_.fetch_add(1);
        spare_cv_.notify_one();
        RESTARTABLE_SERVER_SYNC_POINT(srv_, "worker.called_back", 0);
        return true;
    }
    if (workers_.size() >= opts_.worker_threads) return !workers_.empty();
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
    try {
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
        worker_slot* slot = &slots_.emplace_back();
        workers_.emplace_back([this, slot] { worker_main(slot); });
        rotation_.fetch_add(1);
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
    } catch (const std::exception&) {  // out of threads or memory: the ones there are carry on
        if (slots_.size() > workers_.size()) slots_.pop_back();
    }
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
    return !workers_.empty();
}

/// rejoin: a worker whose handler was taken to block comes back into the rotation if
/// there is room, or else waits as a spare until add_follower() calls it (true) or the run
/// ends (false).
RESTARTABLE_SERVER_FN bool run::rejoin(worker& w) noexcept {
    w.counted_out = false;
    std::unique_lock<std::mutex> lock(workers_mutex_);
    if (over_) return false;
    if (rotation_.load() < budget_) {
        rotation_.fetch_add(1);
        return true;
    }
    ++spares_;
    RESTARTABLE_SERVER_SYNC_POINT(srv_, "worker.spare", static_cast<int>(spares_));
    spare_cv_.wait(lock, [this] { return spare_calls_ > 0 || over_; });
    --spares_;
    if (spare_calls_ == 0) return false;  // the run is over
    --spare_calls_;
    return true;
}

RESTARTABLE_SERVER_FN void run::worker_main(worker_slot* slot) noexcept {
    srv_.add_server_thread();  // before it serves: a handler's stop() must know its thread
    worker w;
    w.slot = slot;
    const int batch = budget_ == 1 ? worker_batch : 1;
    ready_event events[worker_batch];
    bool serving = true;
    while (serving) {
        RESTARTABLE_SERVER_SYNC_POINT(srv_, "worker.wait", batch);
        waiting_.fetch_add(1);
        const int ready = conns_.wait(events, batch, -1);
        const int still_waiting = waiting_.fetch_sub(1) - 1;
        if (workers_exit_.load()) break;
        if (ready < 1) continue;
        if (still_waiting == 0) add_follower();  // a follower waits while this one serves
        if (ready > 1) {  // the rest, taken one by one below (or handed back if this one blocks)
            std::lock_guard<std::mutex> lock(slot->batch_mutex);
            std::copy(events + 1, events + ready, slot->batch);
            slot->batch_next = 0;
            slot->batch_end = ready - 1;
        }
        ready_event ev = events[0];
        do {
            if (ev.ptr == &listener_) {
                accept_ready();
            } else if (ev.ptr != nullptr) {  // (null: the wake-up of the run's end)
                auto* c = static_cast<connection*>(ev.ptr);
                if (take_for_event(*c, ev.events)) serve(w, *c);
            }
            if (w.counted_out) {
                hand_back_batch(*slot);
                if (!rejoin(w)) serving = false;
            }
        } while (serving && ready > 1 && next_in_batch(*slot, ev));
    }
    srv_.remove_server_thread();  // ids are reused: forget this one before it ends
}

/// next_in_batch: the next event of the worker's batch into ev; false when none is left.
RESTARTABLE_SERVER_FN bool run::next_in_batch(worker_slot& slot, ready_event& ev) noexcept {
    std::lock_guard<std::mutex> lock(slot.batch_mutex);
    if (slot.batch_next == slot.batch_end) return false;
    ev = slot.batch[slot.batch_next++];
    return true;
}

/// hand_back_batch: the events of a worker's batch that it has not served go back to the
/// connection set (its worker was counted out: it blocks in a handler). Each connection is
/// taken and handed back with its event pending, which raises the event again for a
/// worker that waits (one held elsewhere keeps the event in its pending events, as always).
RESTARTABLE_SERVER_FN void run::hand_back_batch(worker_slot& slot) noexcept {
    ready_event rest[worker_batch];
    int n = 0;
    {
        std::lock_guard<std::mutex> lock(slot.batch_mutex);
        for (; slot.batch_next < slot.batch_end; ++slot.batch_next) rest[n++] = slot.batch[slot.batch_next];
    }
    for (int i = 0; i < n; ++i) {
        if (rest[i].ptr == nullptr) continue;
        if (rest[i].ptr == &listener_) {  // edge-triggered: raised again for another worker
            raise_listener();
            continue;
        }
        auto* c = static_cast<connection*>(rest[i].ptr);
        if (!take_for_event(*c, rest[i].events)) continue;
        c->pending.fetch_or(rest[i].events | ev_in);  // so hand_back() raises it again
        hand_back(*c);
    }
}

/// begin_call, end_call: around each handler call and each stream, on a worker: its slot
/// says since when it has been in one. The first call after a quiet spell wakes the
/// control thread, which then looks every blocked_after (watch_workers).
RESTARTABLE_SERVER_FN void run::begin_call(worker& w) noexcept {
    worker_slot* const slot = w.slot;
    if (!slot) return;
    slot->calls.store(slot->calls.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    // Counted out already (a pipelined request after a call that blocked): it is out of the
    // rotation until it rejoins, so this call is not watched - counting it out again would
    // take a second worker out of the count.
    if (w.counted_out) return;
    const std::int64_t now = to_ns(clock::now());
    slot->busy_since.store(now);  // then monitor_due_ is read: see watch_workers
    if (monitor_due_.load() == never && monitor_due_.exchange(now) == never) srv_.wake();
}

RESTARTABLE_SERVER_FN void run::end_call(worker& w) noexcept {
    if (w.slot && w.slot->busy_since.exchange(0) == worker_slot::blocked_mark) w.counted_out = true;
}

/// watch_workers: the control thread's look at the workers. One in a call for
/// blocked_after is counted out of the rotation (its CPU is free: it sleeps, waits on a
/// lock or a slow client), and if no worker is left waiting for connections another is
/// added, so a blocking handler holds one thread, never the others' requests. Sets
/// monitor_due_ to the next look: a call's blocked_after, every blocked_after while calls
/// are made, never after monitor_quiet without one.
RESTARTABLE_SERVER_FN void run::watch_workers(clock::time_point now) noexcept {
    if (inline_.load()) return;
    // Before the slots are read: a call that begins after this store sees never and wakes
    // this thread; one that began before is seen below (both orders are sequentially
    // consistent, so one of the two happens).
    monitor_due_.store(never);
    const std::int64_t now_ns = to_ns(now);
    const std::int64_t after = std::chrono::nanoseconds(blocked_after).count();
    std::int64_t next = never;
    bool called = false;
    // Counted out now: their batches go back once the lock is released. Only a budget of
    // one takes batches, so one slot at most has one; past 8, a worker hands its own batch
    // back when its call returns.
    worker_slot* out[8];
    std::size_t outs = 0;
    {
        std::lock_guard<std::mutex> lock(workers_mutex_);
        bool counted_out = false;
        for (worker_slot& slot : slots_) {
            const std::uint32_t calls = slot.calls.load(std::memory_order_relaxed);
            if (calls != slot.calls_seen) {
                slot.calls_seen = calls;
                called = true;
            }
            std::int64_t since = slot.busy_since.load();
            if (since <= 0) continue;
            called = true;
            if (now_ns - since < after) {
                next = std::min(next, since + after);
            } else if (slot.busy_since.compare_exchange_strong(since, worker_slot::blocked_mark)) {
                rotation_.fetch_sub(1);
                counted_out = true;
                if (outs < std::size(out)) out[outs++] = &slot;
                RESTARTABLE_SERVER_SYNC_POINT(srv_, "worker.counted_out", 0);
            }
        }
        if (counted_out && waiting_.load() == 0) add_follower_locked();
    }
    for (std::size_t i = 0; i < outs; ++i) hand_back_batch(*out[i]);
    if (called) last_call_ = now;
    if (next == never && now - last_call_ < monitor_quiet) next = now_ns + after;
    if (next != never) monitor_due_.store(next);
}

// ------------------------------------------------------------ connection --

/// serve: the holder's work on c after it became ready: read, parse, handle and write
/// until c must wait again (then it is parked) or is closed.
RESTARTABLE_SERVER_FN void run::serve(worker& w, connection& c) noexcept {
    do {
        outcome o = outcome::close;
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
        try {
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
            lend_buffer(w, c);
            c.read_short = false;
            do {
                o = step(w, c);
            } while (o == outcome::progress);
            return_buffer(w, c);
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
        } catch (const std::bad_alloc&) {  // this connection fails, the others go on
            log_error("out of memory: a connection was answered 503 and closed", "");
            if (!c.tp) send_unavailable(c.fd.get());
            o = outcome::close;
        }
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
        if (o != outcome::wait) return close(c);
    } while (park(c));
}

/// step: one move of c's state machine. progress: call again; wait: park; close: close.
RESTARTABLE_SERVER_FN run::outcome run::step(worker& w, connection& c) {
    switch (c.state) {
        case conn_state::lingering: return linger(c);
        case conn_state::writing: {
            const outcome o = flush(c);
            return o == outcome::progress ? after_response(c) : o;
        }
        case conn_state::idle:
        case conn_state::head:
        case conn_state::body: {
            if (c.handshaking) {
                const outcome o = handshake(c);
                if (o != outcome::progress) return o;
            }
            if (c.output_pending()) {  // a "100 Continue" the socket did not take at once
                const outcome o = flush(c);
                if (o != outcome::progress) return o;
            }
            const outcome o = process_input(w, c);
            if (o != outcome::need_input) return o;
            if (c.read_short) return outcome::wait;  // the socket is most likely empty: park
            return read_input(w, c);
        }
        case conn_state::streaming: return stream_step(w, c);
        case conn_state::websocket: return ws_step(w, c);
        case conn_state::handling:
        case conn_state::closed: break;
    }
    return outcome::close;
}

/// read_input: reads what the socket has into c.in, growing it as bytes arrive (a body's
/// declared length reserves nothing), within options::max_buffered_bytes.
RESTARTABLE_SERVER_FN run::outcome run::read_input(worker& w, connection& c) {
    if (c.start != 0 && (c.start == c.in.size() || c.in.capacity() - c.in.size() < min_read)) {
        c.in.consume(c.start);  // offsets are kept relative to start
        c.start = 0;
    }
    std::size_t wanted_room = min_read;
    if (c.state == conn_state::body && c.framing.kind == request_framing::content_length)
        wanted_room = std::min(wanted_room, c.head_bytes + c.framing.length - (c.in.size() - c.start));
    if (c.in.capacity() - c.in.size() < wanted_room) {
        std::size_t want = std::max(c.in.capacity() * 2, c.in.size() + read_size);
        if (c.state == conn_state::body && c.framing.kind == request_framing::content_length)
            want = std::min(want, c.start + c.head_bytes + c.framing.length);
        if (!grow_input(c, want)) {
            if (c.state != conn_state::websocket) return answer_error(w, c, 503);
            ws_fail(c, 1013);  // over max_buffered_bytes: "try again later"
            return outcome::progress;
        }
    }
    const std::size_t room = c.in.capacity() - c.in.size();
    const io_result r = io_read(c.io(), c.in.data() + c.in.size(), room);
    c.wants_write = r.status == io_status::want_write;
    if (r.status == io_status::ok) {
        c.in.grow_by(r.bytes);
        // A transport returns a record at a time: only its want_read says the socket is empty.
        c.read_short = r.bytes < room && !c.peer_closed && !c.tp;
        if (c.state == conn_state::body) c.since = clock::now();  // body_timeout counts from progress
        return outcome::progress;
    }
    if (r.status == io_status::want_read || r.status == io_status::want_write) return outcome::wait;
    return outcome::close;  // the client closed (mid-request or between requests), or failed
}

/// handshake: the transport's handshake, until it is done (progress). One that fails
/// lingers: its transport may have answered (TLS answers plain HTTP with a 400).
RESTARTABLE_SERVER_FN run::outcome run::handshake(connection& c) noexcept {
    const io_result r = c.tp->handshake(c.fd.get());
    c.wants_write = r.status == io_status::want_write;
    switch (r.status) {
        case io_status::ok: c.handshaking = false; return outcome::progress;
        case io_status::want_read:
        case io_status::want_write: return outcome::wait;
        case io_status::closed: return outcome::close;
        case io_status::failed: break;
    }
    ::shutdown(c.fd.get(), SHUT_WR);
    c.set(conn_state::lingering);
    c.in.clear();
    c.start = 0;
    return outcome::progress;
}

RESTARTABLE_SERVER_FN run::outcome run::process_input(worker& w, connection& c) {
    bool req_valid = false;  // w.req describes c's current request (else: parse its head again)
    if (c.state == conn_state::idle || c.state == conn_state::head) {
        const outcome o = parse_head(w, c, req_valid);
        if (c.state != conn_state::body) return o;
    }
    return collect_body(w, c, req_valid);
}

/// parse_head: drops empty lines before a request line (RFC 9112 2.2), then parses the
/// head once a line has ended since the last try: a head that arrives a byte at a time
/// costs a pass per line, not per byte (picohttpparser's last_len).
RESTARTABLE_SERVER_FN run::outcome run::parse_head(worker& w, connection& c, bool& req_valid) {
    std::string_view v = c.in.view().substr(c.start);
    if (v.empty()) return outcome::need_input;
    if (c.state == conn_state::idle) {
        c.set(conn_state::head);
        c.since = clock::now();  // header_timeout counts from the first byte
    }
    if (!c.in_flight.load(std::memory_order_relaxed)) c.in_flight.store(true);
    std::size_t skip = 0;
    while (skip + 1 < v.size() && v[skip] == '\r' && v[skip + 1] == '\n') skip += 2;
    if (skip != 0) {
        c.start += skip;
        c.scanned = 0;
        v.remove_prefix(skip);
        if (v.empty()) return head_overdue(c) ? answer_error(w, c, 408) : outcome::need_input;
    }
    if (v.size() < limits_.max_request_line + 2 && v.size() <= limits_.max_header_bytes &&
        std::memchr(v.data() + c.scanned, '\n', v.size() - c.scanned) == nullptr) {
        c.scanned = v.size();
        return head_overdue(c) ? answer_error(w, c, 408) : outcome::need_input;
    }
    w.req.method = std::string_view();
    const parse_result pr = parse_request(v, w.req, limits_);
    c.is_head = w.req.method == "HEAD";
    if (pr.status == parse_status::error) return answer_error(w, c, pr.error_status);
    if (pr.status == parse_status::partial) {
        c.scanned = v.size();
        return head_overdue(c) ? answer_error(w, c, 408) : outcome::need_input;
    }
    c.head_bytes = pr.head_bytes;
    if (opts_.access_log) c.began = clock::now();
    c.version_minor = w.req.version_minor;
    c.keep_alive = wants_keep_alive(w.req);
    if (const int status = frame_request(w.req, c.framing)) return answer_error(w, c, status);
    if (c.framing.kind == request_framing::content_length && c.framing.length > opts_.max_body_bytes)
        return answer_error(w, c, 413);
    c.matched = match_route(routes_, w.req.method, w.req.path, w.req.params_, c.route_status);
    req_valid = true;
    if (c.matched && c.matched->mode == body_mode::streamed && c.framing.kind != request_framing::none)
        return handle_streamed(w, c);
    c.set(conn_state::body);
    c.since = clock::now();
    return outcome::progress;
}

/// collect_body: waits until a buffered body is whole. A chunked one is decoded in place
/// behind the head, and the framing is dropped as it is decoded.
RESTARTABLE_SERVER_FN run::outcome run::collect_body(worker& w, connection& c, bool req_valid) {
    char* const base = c.in.data() + c.start;
    const std::size_t size = c.in.size() - c.start;
    std::string_view body;
    std::size_t end = 0;  // where the request ends, relative to start; 0: not yet whole
    if (c.framing.kind == request_framing::none) {
        end = c.head_bytes;
    } else if (c.framing.kind == request_framing::content_length) {
        if (size - c.head_bytes >= c.framing.length) {
            body = std::string_view(base + c.head_bytes, c.framing.length);
            end = c.head_bytes + c.framing.length;
        }
    } else {
        if (c.body_read == 0) c.body_read = c.body_write = c.head_bytes;
        while (c.body_read < size && end == 0) {
            const chunked_decoder::step_result r = c.decoder.step({base + c.body_read, size - c.body_read});
            c.body_read += r.consumed;
            if (!r.data.empty()) {
                std::memmove(base + c.body_write, r.data.data(), r.data.size());
                c.body_write += r.data.size();
                if (c.body_write - c.head_bytes > opts_.max_body_bytes) return answer_error(w, c, 413);
            }
            if (r.status == parse_status::error) return answer_error(w, c, r.error_status);
            if (r.status == parse_status::complete) {
                body = std::string_view(base + c.head_bytes, c.body_write - c.head_bytes);
                end = c.body_read;
            }
        }
        if (end == 0 && c.body_read != c.body_write) {  // keep the decoded body and the raw tail only
            std::memmove(base + c.body_write, base + c.body_read, size - c.body_read);
            c.in.truncate(c.start + c.body_write + (size - c.body_read));
            c.body_read = c.body_write;
        }
    }
    if (end == 0) {
        if (c.framing.expect_continue && !c.continue_sent) {
            if (!c.matched) return answer_error(w, c, c.route_status);  // not going to read it: say so now
            c.continue_sent = true;
            no_delay(c);  // the response follows the interim one
            static constexpr std::string_view text = "HTTP/1.1 100 Continue\r\n\r\n";
            c.out_head.assign(text);
            c.out_sent = 0;
            const outcome o = flush(c);
            if (o != outcome::progress) return o;
        }
        return outcome::need_input;
    }
    if (!req_valid) {  // the head was parsed during an earlier event, maybe by another thread
        parse_request(std::string_view(base, c.head_bytes), w.req, limits_);
        match_route(routes_, w.req.method, w.req.path, w.req.params_, c.route_status);
    }
    return handle_buffered(w, c, body, c.start + end);
}

RESTARTABLE_SERVER_FN run::outcome run::handle_buffered(worker& w, connection& c, std::string_view body, std::size_t end) {
    if (c.matched && c.matched->ws) return upgrade_websocket(w, c, end);
    c.set(conn_state::handling);
    w.req.body = body;
    w.req.transport_ = c.tp.get();
    call_handler(w, c.matched, c.route_status);
    c.start = end;  // the request's bytes are used up; what follows is the next request
    c.reset_request();
    return respond(w, c, c.keep_alive);
}

/// handle_streamed: runs a body_mode::streamed handler, which reads the body itself from
/// the socket (blocking this thread, with back-pressure) through request::read_body.
RESTARTABLE_SERVER_FN run::outcome run::handle_streamed(worker& w, connection& c) {
    c.set(conn_state::handling);
    body_reader reader(c.io(), c.framing, c.in.view().substr(c.start + c.head_bytes), w.stream, opts_,
                       c.framing.expect_continue && !c.continue_sent);
    w.req.body = std::string_view();
    w.req.reader_ = &reader;
    w.req.transport_ = c.tp.get();
    call_handler(w, c.matched, c.route_status);
    w.req.reader_ = nullptr;
    bool keep_alive = c.keep_alive && reader.done() && !reader.error();
    if (const std::error_code ec = reader.error()) {
        w.res.clear();
        error_response(w.res, ec == errc::body_too_large ? 413 : ec == std::errc::timed_out ? 408 : 400);
    }
    const std::string_view rest = reader.rest();  // the next request's first bytes, if any
    if (!keep_alive) {
        c.start = c.in.size();
    } else if (reader.rest_in_scratch()) {
        c.in.assign(rest);
        c.start = 0;
    } else {
        c.start = static_cast<std::size_t>(rest.data() - c.in.data());
    }
    c.reset_request();
    return respond(w, c, keep_alive);
}

RESTARTABLE_SERVER_FN void run::call_handler(worker& w, const route* r, int route_status) {
    response& res = w.res;
    res.clear();
    res.send_limit_ = opts_.max_send_buffer;
    w.req.stop_ = &stop_signal_;
    if (!r) {
        error_response(res, route_status);
        if (route_status == 405) res.set_header("Allow", allowed_methods(routes_, w.req.path, w.req.params_));
        return;
    }
    const call_span span(*this, w);
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
    try {
        r->fn(w.req, res);
    } catch (const std::exception& e) {
        log_error("a handler threw (answered 500): ", e.what());
        res.clear();
        error_response(res, 500);
    } catch (...) {
        log_error("a handler threw (answered 500)", "");
        res.clear();
        error_response(res, 500);
    }
#else
    r->fn(w.req, res);
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
}

/// answer_error: the one error path: answers status with "Connection: close" (no body
/// for HEAD) and drops the rest of the request; the connection then lingers.
RESTARTABLE_SERVER_FN run::outcome run::answer_error(worker& w, connection& c, int status) {
    w.res.clear();
    error_response(w.res, status);
    w.req.method = w.req.target = std::string_view();  // may point into bytes gone by now
    c.began = c.since;
    c.in_flight.store(true);
    c.start = c.in.size();
    c.reset_request();
    return respond(w, c, false);
}

/// respond: writes w.res without blocking; what the socket does not take waits in c for
/// EPOLLOUT. A stop that began makes this the connection's last response.
RESTARTABLE_SERVER_FN run::outcome run::respond(worker& w, connection& c, bool keep_alive) {
    if (srv_.stop_requested_.load()) keep_alive = false;
    if (past_deadline()) {  // the drain deadline passed while the handler ran
        if (!c.cut.exchange(true)) cut_.fetch_add(1);
        w.res.release_body();  // a push stream that will not start: on_close, handle closed
        return outcome::close;
    }
    response& res = w.res;
    const bool bodiless = res.status < 200 || res.status == 204 || res.status == 304;
    if (res.kind_ == response::body_kind::push || res.kind_ == response::body_kind::pull ||
        res.kind_ == response::body_kind::file) {
        if (!bodiless) return start_stream(w, c, keep_alive);
        res.release_body();
    }
    if (res.provider_ && !bodiless) {
        no_delay(c);  // many writes: none may wait for the ACK of the one before
        const call_span span(*this, w);  // it may block on the client, as a handler may
        return send_streamed(w, c, keep_alive);
    }
    build_head(w, c, keep_alive, false, false);
    const std::size_t body_size = bodiless || c.is_head ? 0 : res.body.size();
    const iovec iov[2] = {{w.head.data(), w.head.size()}, {res.body.data(), body_size}};
    const io_result r = io_write(c.io(), iov, 2);
    c.wants_write = false;
    const bool failed = r.status != io_status::ok && r.status != io_status::want_read &&
                        r.status != io_status::want_write;  // the client is gone
    if (opts_.access_log) log_access(w, c, failed ? 0 : body_size);
    if (failed) return outcome::close;
    c.keep_alive = keep_alive;
    c.set(conn_state::writing);
    const std::size_t sent = r.bytes;
    if (sent == w.head.size() + body_size) return after_response(c);
    no_delay(c);                // more writes follow: none may wait for an ACK
    c.out_head.assign(w.head);  // the rest waits for EPOLLOUT; the body is moved, not copied
    if (body_size != 0) c.out_body = std::move(res.body);
    c.out_sent = sent;
    c.since = clock::now();
    return outcome::wait;
}

/// send_streamed: a set_stream() response: the head, then the provider's writes, each
/// sent before write() returns (blocking this thread up to write_timeout per write). A body
/// that did not end as promised (the provider threw or aborted, or a known length was not
/// reached) ends the connection without the last chunk or short of Content-Length.
RESTARTABLE_SERVER_FN run::outcome run::send_streamed_impl(worker& w, connection& c, bool keep_alive) {
    const bool sized = w.res.stream_sized_;
    const bool chunked = !sized && c.version_minor == 1;
    if (!sized && !chunked) keep_alive = false;  // HTTP/1.0 without a length: closing ends the body
    build_head(w, c, keep_alive, chunked, true);
    iovec head{w.head.data(), w.head.size()};
    if (!send_all(c.io(), &head, 1, opts_.write_timeout)) {
        if (opts_.access_log) log_access(w, c, 0);
        return outcome::close;
    }
    body_provider provider = std::move(w.res.provider_);
    if (!c.is_head) {
        body_writer out(c.fd.get(), c.tp.get(), chunked, sized ? w.res.stream_length_ : UINT64_MAX, opts_.write_timeout,
                        &stop_signal_);
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
        try {
            provider(out);
        } catch (const std::exception& e) {
            log_error("a stream provider threw: ", e.what());
            out.abort();  // no last chunk: the client sees the body is incomplete
        } catch (...) {
            log_error("a stream provider threw", "");
            out.abort();
        }
#else
        provider(out);
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
        if (opts_.access_log) log_access(w, c, out.written_);
        if (out.failed_ || (sized && out.left_ != 0)) return outcome::close;  // the client sees it cut
        static constexpr std::string_view last_chunk = "0\r\n\r\n";
        iovec end{const_cast<char*>(last_chunk.data()), last_chunk.size()};
        if (chunked && !send_all(c.io(), &end, 1, opts_.write_timeout)) return outcome::close;
    } else if (opts_.access_log) {
        log_access(w, c, 0);  // HEAD: the head alone
    }
    c.keep_alive = keep_alive;
    c.set(conn_state::writing);
    return after_response(c);
}

RESTARTABLE_SERVER_FN void run::build_head(worker& w, const connection& c, bool keep_alive, bool chunked, bool streamed) {
    const response& res = w.res;
    const bool bodiless = res.status < 200 || res.status == 204 || res.status == 304;
    std::string& h = w.head;
    h.clear();
    h += "HTTP/1.1 ";
    append_number(h, static_cast<std::size_t>(res.status));
    h += ' ';
    h += status_text(res.status);
    h += "\r\n";
    bool has_date = false, has_upgrade = false;
    for (const auto& f : res.headers) {
        const std::string& name = f.first;
        if (iequals(name, "Content-Length") || iequals(name, "Connection") || iequals(name, "Transfer-Encoding") ||
            !is_token(name) || !is_field_value(f.second))
            continue;  // framing is the server's; CR/LF would split the response
        has_date |= iequals(name, "Date");
        has_upgrade |= iequals(name, "Upgrade");
        h += name;
        h += ": ";
        h += f.second;
        h += "\r\n";
    }
    if (chunked) {
        h += "Transfer-Encoding: chunked\r\n";
    } else if (!bodiless && (!streamed || res.stream_sized_)) {
        h += "Content-Length: ";
        append_number(h, streamed ? res.stream_length_ : res.body.size());
        h += "\r\n";
    }
    if (!has_date) {
        h += "Date: ";
        h += w.date.now();
        h += "\r\n";
    }
    // Connection is the server's; with an Upgrade field (a 426) it names "upgrade" too
    // (RFC 9110 7.8: a sender of Upgrade sends that connection option).
    const char* const option = !keep_alive ? "close" : c.version_minor == 0 ? "keep-alive" : nullptr;
    if (option || has_upgrade) {
        h += "Connection: ";
        if (has_upgrade) h += option ? "upgrade, " : "upgrade";
        if (option) h += option;
        h += "\r\n";
    }
    h += "\r\n";
}

/// flush: sends what waits in c.out_*; progress once all of it is out.
RESTARTABLE_SERVER_FN run::outcome run::flush(connection& c) noexcept {
    const std::size_t head_left = c.out_sent < c.out_head.size() ? c.out_head.size() - c.out_sent : 0;
    const std::size_t body_from = c.out_sent - (c.out_head.size() - head_left);
    const iovec iov[2] = {{c.out_head.data() + (c.out_head.size() - head_left), head_left},
                          {c.out_body.data() + body_from, c.out_body.size() - body_from}};
    const io_result r = head_left != 0 ? io_write(c.io(), iov, 2) : io_write(c.io(), iov + 1, 1);
    if (r.status == io_status::want_read || r.status == io_status::want_write) return outcome::wait;
    if (r.status != io_status::ok) return outcome::close;
    c.out_sent += r.bytes;
    c.since = clock::now();  // write_timeout counts from progress
    if (c.output_pending()) return outcome::wait;
    c.out_head.clear();
    std::string().swap(c.out_body);
    c.out_sent = 0;
    return outcome::progress;
}

/// after_response: the response is out: wait for the next request, or linger and close.
RESTARTABLE_SERVER_FN run::outcome run::after_response(connection& c) {
    c.in_flight.store(false);
    if (stopping_.load()) finished_.fetch_add(1);
    c.since = clock::now();
    if (c.keep_alive) {
        no_delay(c);  // its next response must not wait for this one's ACK
        c.set(conn_state::idle);
        // A retiree reads no more requests: the connection moves to the next run, with
        // whatever of the next request is here already.
        return retiring_.load() ? outcome::wait : outcome::progress;
    }
    // Always linger, even when the client asked for the close and nothing more of it is
    // here yet (nginx closes then): bytes it still sends would be answered with a reset,
    // which can destroy the response before the client reads it (the connection fuzzer
    // catches exactly that). It costs one more wake-up per closed connection.
    if (c.tp) c.tp->shutdown(c.fd.get());
    ::shutdown(c.fd.get(), SHUT_WR);  // the client sees the end of the response at once
    c.set(conn_state::lingering);
    c.in.clear();
    c.start = 0;
    // The last read left the socket empty, its client not closed: a read now would find
    // nothing, so the connection waits for the client's close (or late bytes) at once.
    return c.read_short ? outcome::wait : outcome::progress;
}

/// no_delay: sets TCP_NODELAY on c, once: from its second write on, or before a stream,
/// no write may wait for the ACK of the one before (Nagle's algorithm). A connection that
/// closes after one response never needs it - a single write, and the half-close pushes
/// what is queued - so Connection: close saves the call (nginx sets it at keep-alive too).
/// Fails harmlessly on Unix sockets.
RESTARTABLE_SERVER_FN void run::no_delay(connection& c) noexcept {
    if (c.nodelay) return;
    c.nodelay = true;
    int one = 1;
    ::setsockopt(c.fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/// linger: drops what a closing client still sends until it closes too (or linger_time
/// passes): closing with unread bytes would reset the connection and lose the response.
RESTARTABLE_SERVER_FN run::outcome run::linger(connection& c) noexcept {
    for (int i = 0; i < linger_reads; ++i) {
        const ssize_t n = ::recv(c.fd.get(), c.in.data(), c.in.capacity(), 0);
        if (n > 0) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return outcome::wait;
        if (n < 0 && errno == EINTR) continue;
        return outcome::close;
    }
    return outcome::wait;  // a fast sender: it waits its turn in the connection set
}

RESTARTABLE_SERVER_FN void run::log_access(const worker& w, const connection& c, std::size_t bytes) noexcept {
    const access_entry entry{w.req.method, w.req.target, w.res.status, bytes,
                             std::chrono::duration_cast<std::chrono::microseconds>(clock::now() - c.began)};
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
    try {
        opts_.access_log(entry);
    } catch (...) {  // a failing log must not fail the response
    }
#else
    opts_.access_log(entry);
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
}

RESTARTABLE_SERVER_FN RESTARTABLE_SERVER_COLD void run::log_error(const char* what, const char* detail) noexcept {
    if (!opts_.error_log) return;
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
    try {
        opts_.error_log(std::string("restartable_server: ") + what + log_escape(detail));
    } catch (...) {
    }
#else
    opts_.error_log(std::string("restartable_server: ") + what + log_escape(detail));
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
}

/// head_overdue: header_timeout passed while the head was still arriving. The sweep
/// enforces it on a waiting connection; this, on one whose client sends so fast (an
/// endless run of empty lines) that its worker never has to wait.
RESTARTABLE_SERVER_FN bool run::head_overdue(const connection& c) const noexcept {
    return opts_.header_timeout.count() > 0 && clock::now() - c.since >= opts_.header_timeout;
}

/// grow_input: makes c.in's capacity want, if the run's budget allows.
RESTARTABLE_SERVER_FN bool run::grow_input(connection& c, std::size_t want) {
    if (c.in.capacity() >= want) return true;
    if (buffered_.load() + (want - c.charged) > opts_.max_buffered_bytes) return false;
    c.in.reserve(want);
    charge(c);
    return true;
}

RESTARTABLE_SERVER_FN void run::charge(connection& c) noexcept {
    const std::size_t cap = c.in.capacity();
    if (cap >= c.charged)
        buffered_.fetch_add(cap - c.charged);
    else
        buffered_.fetch_sub(c.charged - cap);
    c.charged = cap;
}

/// lend_buffer: a connection with nothing kept reads into the thread's buffer, so idle
/// connections hold no memory.
RESTARTABLE_SERVER_FN void run::lend_buffer(worker& w, connection& c) {
    if (c.borrowed || c.in.size() != 0) return;
    if (w.scratch.capacity() < read_size) w.scratch.reserve(read_size);
    std::swap(c.in, w.scratch);
    c.borrowed = true;
    charge(c);
}

/// return_buffer: gives the thread its buffer back, copying what the connection keeps
/// (a partial request) into one of its own when that is small.
RESTARTABLE_SERVER_FN void run::return_buffer(worker& w, connection& c) {
    if (c.borrowed) {
        const std::size_t kept = c.in.size() - c.start;
        if (kept == 0) {
            std::swap(c.in, w.scratch);
            c.in.release();
            w.scratch.clear();
        } else if (kept <= keep_capacity) {
            byte_buffer own;
            own.reserve(std::max(kept * 2, min_read));
            own.assign(c.in.view().substr(c.start));
            std::swap(c.in, w.scratch);
            c.in = std::move(own);
            w.scratch.clear();
        } else if (c.start != 0) {  // a large body keeps the buffer; the thread makes another
            c.in.consume(c.start);
        }
        c.start = 0;
        c.borrowed = false;
    } else if (c.in.size() == c.start) {
        c.in.release();
        c.start = 0;
    }
    charge(c);
}


/// park: lets c wait for what its state needs, under its timeout. c is registered once,
/// edge-triggered, so parking costs no system call (but the first time a response has
/// to wait for the socket: then output is added). True when an
/// event came in while this thread held c: the caller holds it again and serves it.
RESTARTABLE_SERVER_FN bool run::park(connection& c) noexcept {
    const conn_state s = c.state;
    const bool waits_for_request = s == conn_state::idle || s == conn_state::head;
    if (waits_for_request && retiring_.load()) {  // read retiring_ first: it is set first
        transfer(c);
        return false;
    }
    const bool may_leave = handover_fits(c);  // (read while this thread holds c)
    if (may_leave && stopping_.load() && leaves_by_upgrade(c)) {  // upgrade(): to the new process
        connection* const one = &c;
        send_away(&one, 1);
        return false;
    }
    if (s == conn_state::idle && stopping_.load()) {
        if (request_arriving(c)) return true;  // it came as this thread finished the last one
        idle_closed_.fetch_add(1);
        close(c);
        return false;
    }
    std::chrono::milliseconds limit{0};
    switch (s) {
        case conn_state::idle: limit = opts_.idle_timeout; break;
        case conn_state::head:
            limit = opts_.header_timeout;
            if (stopping_.load() && c.in.size() == c.start && (limit.count() == 0 || limit > first_request_grace))
                limit = first_request_grace;  // silent since its accept: see first_request_grace
            break;
        case conn_state::body: limit = opts_.body_timeout; break;
        case conn_state::writing: limit = opts_.write_timeout; break;
        case conn_state::lingering: limit = linger_time; break;
        case conn_state::streaming:  // an idle push stream waits for the program, unbounded
            if (c.needs_output()) limit = opts_.write_timeout;
            break;
        case conn_state::websocket: break;  // ws_deadline()
        case conn_state::handling:
        case conn_state::closed: close(c); return false;
    }
    if (c.needs_output() && !c.watch_output) {  // the first response (or TLS record) that has to wait
        c.watch_output = true;
        if (!conns_.modify(c.fd.get(), &c, watched_events(c))) {
            close(c);
            return false;
        }
    }
    conns_.rearm(c.fd.get(), &c, watched_events(c));  // poll(2): reported again from now on
    const std::int64_t deadline =
        s == conn_state::websocket ? ws_deadline(c) : limit.count() > 0 ? to_ns(c.since + limit) : never;
    c.deadline.store(deadline);
    if (deadline != never) lower_next_sweep(deadline);
    // Read now, while this thread holds c: once parked, another thread may take c and
    // change it (a stop's sweep, a restart's transfer, a timeout), even close it. The copy
    // keeps the channel alive for the look below.
    const std::shared_ptr<channel> ch = c.ch && !c.output_pending() ? c.ch : nullptr;
    c.hold.store(connection::parked);  // from here on another thread may hold c
    RESTARTABLE_SERVER_SYNC_POINT(srv_, "park.parked", static_cast<int>(s));
    if (c.pending.load() != 0 && take(c)) return true;  // an event came while this thread held it
    // A sender queued bytes as this thread parked c (its poke may have come before the
    // registration above, which poll(2) would then have overwritten).
    if (ch && ch->send_waiting.load() && take(c)) return true;
    // A connection parked just as a stop or restart began may have been missed by its
    // sweep of parked connections.
    if (stopping_.load() &&
        (s == conn_state::idle || (waits_for_request && retiring_.load()) || (may_leave && srv_.handover_fd_.load() >= 0)) &&
        take(c)) {
        if (retiring_.load()) {
            transfer(c);
        } else if (leaves_by_upgrade(c)) {  // another thread may have served it meanwhile: ask again
            connection* const one = &c;
            send_away(&one, 1);
        } else if (c.state != conn_state::idle || request_arriving(c)) {
            return true;  // (a head whose hand-over failed: parked again, as before)
        } else {
            idle_closed_.fetch_add(1);
            close(c);
        }
    }
    return false;
}

/// hand_back: parks a connection the control thread took. An event that came meanwhile
/// is raised again (modify() reports present readiness) for a worker to serve.
RESTARTABLE_SERVER_FN void run::hand_back(connection& c) noexcept {
    if (!park(c)) return;
    if (inline_) return serve(control_worker_, c);
    const int fd = c.fd.get();
    // Bytes a sender (or a stop: its close frame) queued on c's channel need output too:
    // poll(2) watches output only while c's own output waits (watched_events).
    const std::uint32_t events = watched_events(c) | (c.ch && c.ch->send_waiting.load() ? ev_out : 0u);
    c.hold.store(connection::parked);
    pool_.locked([&] {  // no descriptor is closed meanwhile: if c is still open, fd is its
        if (c.hold.load() == connection::free_slot) return;
        conns_.modify(fd, &c, events);
    });
}

/// watch: registers a new connection (c, on descriptor fd) in the connection set, once
/// for its whole life. Touches nothing of c: c is parked already.
RESTARTABLE_SERVER_FN bool run::watch(connection* c, int fd, std::uint32_t events) noexcept {
    return conns_.add(fd, c, events);
}

/// close: closes c for good (by its holder) and returns the object to the pool.
RESTARTABLE_SERVER_FN void run::close(connection& c) noexcept {
    if (c.tp && !c.handshaking && c.state != conn_state::lingering) c.tp->shutdown(c.fd.get());
    if (c.state == conn_state::streaming) log_stream(c);  // cut short, whatever cut it: its line
    end_channel(c);  // a stream's or WebSocket's on_close, on the thread that closes it
    clear(c);
    pool_.release(c, conns_);
    left();
}

/// transfer: moves c (held, waiting for a request) to the run that replaced this one:
/// its socket, never closed, and the bytes of a request that began to arrive.
RESTARTABLE_SERVER_FN void run::transfer_impl(connection& c) noexcept {
    // The run named current_ may retire and, once empty, be destroyed by the control
    // thread: holding current_mutex_ from the read to the adoption keeps it (a hand-over
    // changes current_ under it, and the connection adopted is counted before).
    std::lock_guard<std::mutex> current(srv_.current_mutex_);
    run* const to = srv_.current_.load();
    std::string bytes;
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
    try {
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
        bytes.assign(c.in.view().substr(c.start));
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
    } catch (const std::bad_alloc&) {
        if (!c.tp) send_unavailable(c.fd.get());
        return close(c);
    }
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
    if (to == nullptr || to == this) return close(c);  // cannot happen while retiring
    const conn_state state = c.state;
    const bool begun = state == conn_state::head && !bytes.empty();
    const clock::time_point since = begun ? c.since : clock::now();  // header_timeout goes on
    const bool peer_closed = c.peer_closed, handshaking = c.handshaking;
    std::unique_ptr<transport> tp = std::move(c.tp);
    clear(c);
    const int fd = pool_.detach(c, conns_);
    to->adopt(fd, state, std::move(bytes), since, peer_closed, std::move(tp), handshaking);
    left();  // after the next run counted it: its drain cannot end in between
}

/// leaves_by_upgrade: whether c (held) goes to a new process: upgrade() had its greeting,
/// no hand-over failed since, and c can go (handover_fits).
RESTARTABLE_SERVER_FN bool run::leaves_by_upgrade(const connection& c) const noexcept {
    return srv_.handover_fd_.load() >= 0 && handover_fits(c);
}

/// send_away: passes cs[0..n) (held by this thread, each handover_fits) to the process
/// upgrade() started, in as few messages as the limits allow (see "hand-over to a new
/// process"). What a message cannot take stays in this run and fares as it would have
/// without a hand-over (an idle connection is closed, a request arriving is answered);
/// then no more are sent.
RESTARTABLE_SERVER_FN void run::send_away_impl(connection* const* cs, std::size_t n) noexcept {
    std::size_t i = 0;
    while (i < n) {
        const int channel = srv_.handover_fd_.load();
        std::size_t end = i, size = 0;
        while (channel >= 0 && end < n && end - i < handover_max_fds) {
            const std::size_t more = sizeof(handover_record) + (cs[end]->in.size() - cs[end]->start);
            if (size + more > handover_message_bytes) break;
            size += more;
            ++end;
        }
        std::string data;
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
        try {
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
            data.reserve(size);
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
        } catch (const std::bad_alloc&) {
            end = i;
        }
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
        if (end == i) {  // the hand-over is off, or failed now: each as before
            srv_.handover_fd_.store(-1);
            for (; i < n; ++i) hand_back(*cs[i]);
            return;
        }
        int fds[handover_max_fds];
        const clock::time_point now = clock::now();
        for (std::size_t k = i; k < end; ++k) {
            connection& c = *cs[k];
            const std::string_view ahead = c.in.view().substr(c.start);
            handover_record r{};
            r.state = c.state == conn_state::head ? 1 : 0;
            r.peer_closed = c.peer_closed ? 1 : 0;
            r.bytes = static_cast<std::uint32_t>(ahead.size());
            if (c.state == conn_state::head && !ahead.empty())  // its header_timeout goes on
                r.age_ns = std::max<std::int64_t>(0, std::chrono::nanoseconds(now - c.since).count());
            data.append(reinterpret_cast<const char*>(&r), sizeof r);
            data.append(ahead);
            clear(c);
            fds[k - i] = pool_.detach(c, conns_);  // out of the event set: no thread here reads it again
        }
        const std::size_t count = end - i;
        if (send_handover(channel, data, fds, count)) {
            for (std::size_t k = 0; k < count; ++k) ::close(fds[k]);  // the new process has them
            handed_over_.fetch_add(count);
        } else {
            const int e = errno;
            if (srv_.handover_fd_.exchange(-1) >= 0)
                log_error("upgrade: the new process took no connection; this one closes them as a stop does: ",
                          std::strerror(e));
            // Back into this run, as they were (a stop with no hand-over then decides).
            std::string_view rest = data;
            for (std::size_t k = 0; k < count; ++k) {
                handover_record r;
                std::memcpy(&r, rest.data(), sizeof r);
                const std::string_view ahead = rest.substr(sizeof r, r.bytes);
                rest.remove_prefix(sizeof r + r.bytes);
                std::string bytes;
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
                try {
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
                    bytes.assign(ahead);
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
                } catch (const std::bad_alloc&) {
                    send_unavailable(fds[k]);
                    ::close(fds[k]);
                    continue;
                }
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
                adopt(fds[k], r.state == 1 ? conn_state::head : conn_state::idle, std::move(bytes),
                      now - std::chrono::nanoseconds(r.age_ns), r.peer_closed != 0);
            }
        }
        for (std::size_t k = 0; k < count; ++k) left();  // after any adoption: the drain cannot end in between
        i = end;
    }
}

/// clear: what closing or handing over does to the connection object.
RESTARTABLE_SERVER_FN void run::clear(connection& c) noexcept {
    c.state = conn_state::closed;
    c.ch.reset();
    c.st.reset();
    c.tp.reset();
    c.handshaking = c.wants_write = false;
    c.in_flight.store(false);
    c.in.release();
    c.borrowed = false;
    charge(c);
    c.start = 0;
    c.reset_request();
    c.keep_alive = true;
    c.out_head.clear();
    std::string().swap(c.out_body);
    c.out_sent = 0;
}

/// left: one connection fewer; the last one of a draining run wakes the control thread.
RESTARTABLE_SERVER_FN void run::left() noexcept {
    if (live_.fetch_sub(1) == 1 && stopping_.load()) srv_.wake();
}

/// drain_deadline: when what is left of this run is cut: its stop's (or restart's)
/// deadline, or a stop(timeout)'s if that is earlier; never while it serves.
RESTARTABLE_SERVER_FN std::int64_t run::drain_deadline() const noexcept {
    std::int64_t d = drain_deadline_.load();
    if (d == never && srv_.stop_requested_.load())  // the stop has not begun in the control thread yet
        d = srv_.stop_requested_at_.load() + std::chrono::nanoseconds(opts_.drain_timeout).count();
    return std::min(d, srv_.drain_limit_.load());
}

RESTARTABLE_SERVER_FN bool run::past_deadline() const noexcept { return to_ns(clock::now()) >= drain_deadline(); }

/// lower_next_sweep: makes the control thread sweep by ns at the latest; wakes it when a
/// worker moved the sweep earlier than what it sleeps for.
RESTARTABLE_SERVER_FN void run::lower_next_sweep(std::int64_t ns) noexcept {
    std::int64_t current = next_sweep_.load();
    while (ns < current) {
        if (next_sweep_.compare_exchange_weak(current, ns)) {
            if (std::this_thread::get_id() != srv_.control_thread_.load()) srv_.wake();
            return;
        }
    }
}

// ------------------------------------------------- streams and WebSocket --
//
// A push stream, a pulled body, a file and a WebSocket are connections in the states
// streaming and websocket: they hold no thread. Their holder - a worker that took the
// connection for an event - sends what waits, reads what came, runs the WebSocket
// handlers, and parks the connection again. A sender on another thread (stream_handle,
// websocket) appends framed bytes to the connection's channel and pokes it:
// re-registering it for output makes the set report it writable, so a worker takes it
// (or, when a thread holds it, the event waits in pending for that holder, who also
// looks at the channel's send flag after parking). A handler answering a message on the
// holder's own thread needs no poke: the holder sends the queue before it parks.
//
// WebSocket (RFC 6455): frames are decoded in place in the connection's input buffer
// (ws_decoder) and each message goes to on_message on the holder's thread, in order.
// The engine answers control frames: a ping with a pong, a close with a close, after
// which the server closes the TCP connection first (7.1.1), lingering as after an HTTP
// response. A protocol error fails the connection (7.1.7): a close frame with the code
// (1002, 1007, 1009), then the TCP close, without waiting for an answer. While a
// connection's unsent bytes are at options::max_send_buffer none of its frames are read,
// so a client that sends without reading is held at that bound.

/// ws_opcode: the frame opcodes (RFC 6455 5.2).
enum ws_opcode : unsigned { ws_continuation = 0, ws_text = 1, ws_binary = 2, ws_close = 8, ws_ping = 9, ws_pong = 10 };

/// append_hex: appends n in lower-case hexadecimal (a chunk-size line).
RESTARTABLE_SERVER_FN void append_hex(std::string& out, std::size_t n) {
    char tmp[2 * sizeof n];
    char* p = tmp + sizeof tmp;
    do {
        *--p = "0123456789abcdef"[n & 15];
        n >>= 4;
    } while (n != 0);
    out.append(p, static_cast<std::size_t>(tmp + sizeof tmp - p));
}

/// stream_piece: what one pull of a body or one read of a file for a TLS connection
/// asks for: what a slow reader of such a body holds.
inline constexpr std::size_t stream_piece = 16 * 1024;
/// stream_turn: bytes a stream sends in one turn before its worker serves others (the
/// connection is then reported again at once).
inline constexpr std::size_t stream_turn = 1024 * 1024;

/// wake_channel: a sender queued bytes on ch (mutex held): its connection's holder must
/// send them.
RESTARTABLE_SERVER_FN void wake_channel(channel& ch) noexcept {
    ch.send_waiting.store(true);
    if (ch.conn == nullptr || ch.poked || ch.serving.load() == std::this_thread::get_id()) return;
    ch.poked = true;
    ch.owner->poke(*ch.conn, ch.kind == channel::kind_t::push);
}

/// append_ws_frame: a whole unmasked frame (server to client) at the end of out.
RESTARTABLE_SERVER_FN void append_ws_frame(std::string& out, unsigned opcode, std::string_view payload) {
    char head[10];
    const std::size_t n = ws_frame_head(opcode, true, payload.size(), head);
    out.append(head, n);
    out.append(payload);
}

/// close_payload: the payload of a close frame: code, big-endian, then reason.
RESTARTABLE_SERVER_FN std::string close_payload(std::uint16_t code, std::string_view reason) {
    std::string p;
    p.reserve(2 + reason.size());
    p += static_cast<char>(code >> 8);
    p += static_cast<char>(code & 0xff);
    p.append(reason);
    return p;
}

/// utf8_valid: whether text is whole, valid UTF-8.
RESTARTABLE_SERVER_FN bool utf8_valid(std::string_view text) noexcept {
    utf8_validator v;
    return v.feed(text) && v.complete();
}

/// abandon: a push stream that will never start (the handler threw, the response has
/// no body, HEAD): its handle reports closed, and its on_close runs.
RESTARTABLE_SERVER_FN void abandon(channel& ch) noexcept {
    {
        std::lock_guard<std::mutex> lock(ch.mutex);
        ch.open = false;
        std::string().swap(ch.queued);
    }
    if (!ch.on_close) return;
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
    try {
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
        ch.on_close();
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
    } catch (...) {  // nothing to tell: the stream never began
    }
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
}

/// origin_allowed: whether a handshake's Origin may drive the endpoint: listed (or "*"),
/// or the request's own - host[:port] equal to Host, a scheme's default port ignored.
RESTARTABLE_SERVER_FN bool origin_allowed(std::string_view origin, std::string_view host,
                                          const std::vector<std::string>& allowed) noexcept {
    for (const std::string& a : allowed)
        if (a == "*" || iequals(a, origin)) return true;
    const std::size_t sep = origin.find("://");
    if (sep == std::string_view::npos || host.empty()) return false;  // "null" (a file, a sandbox)
    const std::string_view scheme = origin.substr(0, sep);
    std::string_view authority = origin.substr(sep + 3);
    if (authority.find('/') != std::string_view::npos) return false;
    const bool secure = iequals(scheme, "https") || iequals(scheme, "wss");
    const std::string_view default_port = secure ? ":443" : ":80";
    auto strip = [default_port](std::string_view hp) {
        if (hp.size() > default_port.size() && hp.substr(hp.size() - default_port.size()) == default_port &&
            hp.back() != ']')
            hp.remove_suffix(default_port.size());
        return hp;
    };
    return iequals(strip(authority), strip(host));
}

/// poke: a sender queued bytes for c: re-registered for output, the set reports c once
/// its socket can take them. While it cannot, nothing is reported, so for a push stream
/// (timed) write_timeout counts from now: c's deadline is lowered first, and its holder
/// sets it anew whenever it parks c after this.
RESTARTABLE_SERVER_FN void run::poke(connection& c, bool timed) noexcept {
    if (timed && opts_.write_timeout.count() > 0) {
        const std::int64_t d = to_ns(clock::now() + opts_.write_timeout);
        std::int64_t current = c.deadline.load();
        while (d < current) {
            if (c.deadline.compare_exchange_weak(current, d)) {
                lower_next_sweep(d);
                break;
            }
        }
    }
    conns_.modify(c.fd.get(), &c, ev_in | ev_hup | ev_edge | ev_out);
}

/// attach: makes ch the channel of c (held, about to stream or speak WebSocket) and lists
/// it for a stop. A stop or restart that began already ends it at once.
RESTARTABLE_SERVER_FN void run::attach(connection& c, const std::shared_ptr<channel>& ch) {
    {
        std::lock_guard<std::mutex> lock(channels_mutex_);
        channels_.push_back(ch.get());
        ch->registry_index = channels_.size() - 1;
    }
    {
        std::lock_guard<std::mutex> lock(ch->mutex);
        ch->owner = this;
        ch->conn = &c;
        ch->limit = opts_.max_send_buffer;
    }
    c.ch = ch;
    if (!c.watch_output) {  // its senders' pokes ask for output: epoll keeps that registration
        c.watch_output = true;
        conns_.modify(c.fd.get(), &c, watched_events(c));
    }
    if (stopping_.load()) stop_channel(*ch, retiring_.load() ? 1012 : 1001);  // after it was listed
}

/// stop_channel: a stop (1001) or restart (1012) ends ch: a push stream after what is
/// queued, a WebSocket with a close frame.
RESTARTABLE_SERVER_FN void run::stop_channel(channel& ch, std::uint16_t code) noexcept {
    std::lock_guard<std::mutex> lock(ch.mutex);
    ch.stopping.store(true);
    if (!ch.open) return;
    ch.open = false;
    ch.end_requested = true;
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
    try {
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
        if (ch.kind == channel::kind_t::websocket)
            append_ws_frame(ch.queued, ws_close, close_payload(code, code == 1012 ? "restarting" : "stopping"));
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
    } catch (const std::bad_alloc&) {  // no close frame: the TCP close says it
    }
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
    wake_channel(ch);
}

/// stop_channels: stop_channel() for every push stream and WebSocket of the run.
RESTARTABLE_SERVER_FN void run::stop_channels_impl(std::uint16_t code) noexcept {
    std::lock_guard<std::mutex> lock(channels_mutex_);
    for (channel* ch : channels_) stop_channel(*ch, code);
}

/// end_channel: c's stream or WebSocket is over: its handles report closed from now on,
/// and its on_close runs (once: c.ch is gone after).
RESTARTABLE_SERVER_FN void run::end_channel_impl(connection& c) noexcept {
    const std::shared_ptr<channel> ch = std::move(c.ch);
    if (!ch) return;
    {
        std::lock_guard<std::mutex> lock(ch->mutex);
        ch->owner = nullptr;
        ch->conn = nullptr;
        ch->open = false;
        std::string().swap(ch->queued);
        ch->unsent.store(0);
    }
    {
        std::lock_guard<std::mutex> lock(channels_mutex_);
        channel* const last = channels_.back();
        channels_[ch->registry_index] = last;
        last->registry_index = ch->registry_index;
        channels_.pop_back();
    }
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
    try {
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
        if (ch->kind == channel::kind_t::push) {
            if (ch->on_close) ch->on_close();
        } else if (ch->handlers->on_close && c.st) {
            websocket ws(ch);
            ch->handlers->on_close(ws, c.st->close_code, c.st->close_reason);
        }
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
    } catch (const std::exception& e) {
        log_error("an on_close handler threw: ", e.what());
    } catch (...) {
        log_error("an on_close handler threw", "");
    }
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
}

/// take_queued: moves what c's channel queued into c's output (a push stream's bytes
/// become one chunk), once c's output is all sent; notes a close the program queued.
/// True when something was moved.
RESTARTABLE_SERVER_FN bool run::take_queued(connection& c) {
    channel& ch = *c.ch;
    stream_state& st = *c.st;
    std::lock_guard<std::mutex> lock(ch.mutex);
    ch.poked = false;
    if (c.output_pending()) return false;
    ch.refused = false;  // the socket took all there was: a sender may try again
    if (ch.end_requested && ch.kind == channel::kind_t::websocket && !st.close_sent) {
        st.close_sent = true;
        c.since = clock::now();  // websocket_close_timeout counts from here
    }
    ch.send_waiting.store(false);
    if (ch.queued.empty()) {
        if (ch.end_requested && ch.kind == channel::kind_t::push) st.ending = true;
        return false;
    }
    c.out_head.clear();
    c.out_sent = 0;
    std::swap(c.out_body, ch.queued);
    ch.queued.clear();
    if (ch.kind == channel::kind_t::push) {
        const std::size_t data = c.out_body.size();
        st.written += data;
        if (st.chunked) {
            append_hex(c.out_head, data);
            c.out_head += "\r\n";
            c.out_body += "\r\n";
        }
        st.data_begin = c.out_head.size();
        st.data_end = st.data_begin + data;
        ch.unsent.store(data);  // buffered_amount() counts written bytes, not the chunk framing
    } else {
        ch.unsent.store(c.out_head.size() + c.out_body.size());
    }
    c.since = clock::now();  // write_timeout counts from here
    return true;
}

/// unsent: the bytes of c's output not yet taken by the socket.
RESTARTABLE_SERVER_FN std::size_t unsent(const connection& c) noexcept {
    return c.out_head.size() + c.out_body.size() - c.out_sent;
}

/// unsent_data: of a push stream's output, the program's bytes not yet taken by the
/// socket (without the response head and the chunk framing): its buffered_amount().
RESTARTABLE_SERVER_FN std::size_t unsent_data(const connection& c) noexcept {
    if (!c.output_pending()) return 0;
    const std::size_t from = std::max(c.out_sent, c.st->data_begin);
    return c.st->data_end > from ? c.st->data_end - from : 0;
}

// ---- streams

#ifdef __linux__
/// send_file_piece: sendfile(2) from file at *offset to the socket, which has no
/// MSG_NOSIGNAL: to a connection the client reset it raises SIGPIPE (also when it returns
/// a short count), whose default action ends the process. SIGPIPE is blocked on this
/// thread for the call, and one the call raised is taken back before the mask is restored
/// (unless the program blocks SIGPIPE itself: then it stays pending, as it would have).
/// Dispositions are left alone.
RESTARTABLE_SERVER_FN ssize_t send_file_piece(int sock, int file, off_t* offset, std::size_t n) noexcept {
    sigset_t pipe_only, old;
    sigemptyset(&pipe_only);
    sigaddset(&pipe_only, SIGPIPE);
    if (::pthread_sigmask(SIG_BLOCK, &pipe_only, &old) != 0) return ::sendfile(sock, file, offset, n);
    const ssize_t r = ::sendfile(sock, file, offset, n);
    const int e = errno;
    if ((r < 0 || static_cast<std::size_t>(r) < n) && sigismember(&old, SIGPIPE) != 1) {
        const timespec now{0, 0};
        while (::sigtimedwait(&pipe_only, nullptr, &now) < 0 && errno == EINTR) {
        }
    }
    ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
    errno = e;
    return r;
}
#endif  // __linux__

#ifdef RESTARTABLE_SERVER_USE_POLL
/// look_at_input: what came from the client of a streaming connection, which reads
/// nothing until its body ends. poll(2) tells no half-close apart from input (epoll's
/// EPOLLRDHUP does), and reports unread input at every re-arm: a stream whose client
/// left would never end, and one whose client sent more (its next request) would spin a
/// worker. So the holder looks (a peek): at EOF or an error the client has gone
/// (peer_closed: a push stream ends); either way, or with bytes waiting, input is not
/// watched until the stream ends (input_waits).
RESTARTABLE_SERVER_FN void look_at_input(connection& c) noexcept {
    char byte;
    const ssize_t n = ::recv(c.fd.get(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
    if (n <= 0) c.peer_closed = true;
    c.input_waits = true;
}
#endif  // RESTARTABLE_SERVER_USE_POLL

/// start_stream: a push stream, pulled body or file response: its head goes out, then
/// the body as the socket takes it (stream_step), holding no thread.
RESTARTABLE_SERVER_FN run::outcome run::start_stream_impl(worker& w, connection& c, bool keep_alive) {
    response& res = w.res;
    using kind = response::body_kind;
    auto st = std::make_unique<stream_state>();  // (if it throws, the response still owns the stream)
    std::shared_ptr<channel> ch = std::move(res.push_);
    st->status = res.status;
    if (res.kind_ == kind::file) {
        st->source = stream_state::source_t::file;
        st->file = std::move(res.file_);
        st->file_offset = res.file_offset_;
    } else if (res.kind_ == kind::pull) {
        st->source = stream_state::source_t::pull;
        st->pull = std::move(res.pull_);
    }
    st->sized = res.stream_sized_;
    st->left = res.stream_length_;
    const bool chunked = !st->sized && c.version_minor == 1;
    if (!st->sized && !chunked) keep_alive = false;  // HTTP/1.0 without a length: closing ends the body
    st->chunked = chunked;
    build_head(w, c, keep_alive, chunked, true);
    c.out_head.assign(w.head);
    c.out_body.clear();
    c.out_sent = 0;
    c.keep_alive = keep_alive;
    c.since = clock::now();
    no_delay(c);  // many writes: none may wait for the ACK of the one before
    if (c.is_head) {  // the head alone
        if (ch) abandon(*ch);
        if (opts_.access_log) log_access(w, c, 0);
        c.set(conn_state::writing);
        return outcome::progress;
    }
    if (opts_.access_log) {
        st->method.assign(w.req.method);
        st->target.assign(w.req.target);
    }
    c.st = std::move(st);
    c.set(conn_state::streaming);
    if (ch) attach(c, ch);
    return outcome::progress;
}

/// stream_step: sends what waits, then the next piece of the body, until the socket is
/// full, a push stream has nothing more for now, or the body has ended.
RESTARTABLE_SERVER_FN run::outcome run::stream_step_impl(worker& w, connection& c) {
    stream_state& st = *c.st;
#ifdef RESTARTABLE_SERVER_USE_POLL
    if (!c.input_waits) look_at_input(c);
#endif  // RESTARTABLE_SERVER_USE_POLL
    std::size_t turn = 0;
    for (;;) {
        if (c.output_pending()) {
            const std::size_t before = unsent(c);
            const outcome o = flush(c);
            turn += before - unsent(c);
            if (c.ch) c.ch->unsent.store(unsent_data(c));
            if (o != outcome::progress) return o;
        }
        if (c.peer_closed && st.source == stream_state::source_t::push) return outcome::close;  // the client left
        if (turn >= stream_turn) {  // others wait for this worker: come back after them
            conns_.modify(c.fd.get(), &c, ev_in | ev_hup | ev_edge | ev_out);  // (epoll: an edge now)
            return outcome::wait;
        }
        if (!st.ending) {
            const outcome o = produce(w, c, turn);
            if (o != outcome::progress) return o;
            if (!st.ending) continue;
        }
        // The body has ended: the last chunk, then as any response.
        if (st.sized && st.left != 0) return outcome::close;  // the source ended short: the client must see it cut
        if (st.chunked) {
            c.out_head.assign("0\r\n\r\n");
            c.out_body.clear();
            c.out_sent = 0;
        }
        log_stream(c);
        end_channel(c);
        c.st.reset();
        c.input_waits = false;  // the next request is read as usual
        if (srv_.stop_requested_.load()) c.keep_alive = false;
        c.set(conn_state::writing);
        return outcome::progress;
    }
}

/// produce: the next piece of c's body into its output (or, with sendfile, straight to
/// the socket). progress: something moved, or the body ended (st.ending); wait: nothing
/// now (a push stream with nothing queued, a full socket); close: the source failed.
RESTARTABLE_SERVER_FN run::outcome run::produce(worker& w, connection& c, std::size_t& turn) {
    switch (c.st->source) {
        case stream_state::source_t::push:
            if (take_queued(c) || c.st->ending) return outcome::progress;
            return outcome::wait;
        case stream_state::source_t::pull: return produce_pulled(w, c);
        case stream_state::source_t::file: return produce_file(c, turn);
    }
    return outcome::close;
}

/// produce_pulled: the next piece of a pulled body (set_pull), from its provider.
RESTARTABLE_SERVER_FN run::outcome run::produce_pulled(worker& w, connection& c) {
    stream_state& st = *c.st;
    const std::size_t room = st.sized ? static_cast<std::size_t>(std::min<std::uint64_t>(stream_piece, st.left))
                                      : stream_piece;
    if (room == 0) {
        st.ending = true;
        return outcome::progress;
    }
    c.out_body.resize(room);
    std::size_t n = pull_failed;
    {
        const call_span span(*this, w);  // it may block, as a handler may
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
        try {
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
            n = st.pull(&c.out_body[0], room);
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
        } catch (const std::exception& e) {
            log_error("a pull provider threw: ", e.what());
        } catch (...) {
            log_error("a pull provider threw", "");
        }
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
    }
    if (n == pull_failed || n > room) return outcome::close;
    c.out_body.resize(n);
    c.out_head.clear();
    c.out_sent = 0;
    if (n == 0) {
        st.ending = true;
        return outcome::progress;
    }
    if (st.chunked) {
        append_hex(c.out_head, n);
        c.out_head += "\r\n";
        c.out_body += "\r\n";
    }
    st.left -= n;
    st.written += n;
    return outcome::progress;
}

/// produce_file: the next piece of a file (set_file): sendfile(2) on a plain socket,
/// else read into the connection's output (a transport encrypts it).
RESTARTABLE_SERVER_FN run::outcome run::produce_file(connection& c, [[maybe_unused]] std::size_t& turn) {
    stream_state& st = *c.st;
    if (st.left == 0) {
        st.ending = true;
        return outcome::progress;
    }
#ifdef __linux__
    if (!c.tp) {
        off_t offset = static_cast<off_t>(st.file_offset);
        const std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(st.left, stream_turn));
        const ssize_t n = send_file_piece(c.fd.get(), st.file.get(), &offset, want);
        if (n > 0) {
            const auto sent = static_cast<std::size_t>(n);
            st.file_offset += sent;
            st.left -= sent;
            st.written += sent;
            turn += sent;
            c.since = clock::now();
            return outcome::progress;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return outcome::wait;  // until writable
        if (n < 0 && errno == EINTR) return outcome::progress;
        return outcome::close;  // the file is shorter than said, or failed
    }
#endif  // __linux__
    const std::size_t room = static_cast<std::size_t>(std::min<std::uint64_t>(stream_piece, st.left));
    c.out_body.resize(room);
    ssize_t n;
    do {
        n = ::pread(st.file.get(), &c.out_body[0], room, static_cast<off_t>(st.file_offset));
    } while (n < 0 && errno == EINTR);
    if (n <= 0) return outcome::close;
    const auto got = static_cast<std::size_t>(n);
    c.out_body.resize(got);
    c.out_head.clear();
    c.out_sent = 0;
    st.file_offset += got;
    st.left -= got;
    st.written += got;
    return outcome::progress;
}

/// log_stream: the access log line of a stream, at its end (stream_step) or when its
/// connection closes before (close): once either way.
RESTARTABLE_SERVER_FN void run::log_stream(const connection& c) noexcept {
    if (!opts_.access_log || !c.st) return;
    const stream_state& st = *c.st;
    const access_entry entry{st.method, st.target, st.status, st.written,
                             std::chrono::duration_cast<std::chrono::microseconds>(clock::now() - c.began)};
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
    try {
        opts_.access_log(entry);
    } catch (...) {  // a failing log must not fail the response
    }
#else
    opts_.access_log(entry);
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
}

// ---- WebSocket

/// check_handshake: 0 when req is a WebSocket handshake this endpoint takes (RFC 6455
/// 4.2.1, and the origin check); else the status that refuses it: 426 for a plain
/// request or another version (the caller adds Upgrade and Sec-WebSocket-Version), 400
/// for a malformed one, 403 for a foreign Origin.
RESTARTABLE_SERVER_FN int run::check_handshake(const request& req, const websocket_handlers& h) const noexcept {
    if (req.method != "GET" || req.version_minor != 1) return 400;
    bool upgrade = false, connection_upgrade = false;
    int keys = 0, versions = 0;
    std::string_view key, version;
    for (const header& f : req.headers) {
        if (iequals(f.name, "Upgrade")) {
            upgrade |= has_token(f.value, "websocket");
        } else if (iequals(f.name, "Connection")) {
            connection_upgrade |= has_token(f.value, "upgrade");
        } else if (iequals(f.name, "Sec-WebSocket-Key")) {
            ++keys;
            key = f.value;
        } else if (iequals(f.name, "Sec-WebSocket-Version")) {
            ++versions;
            version = f.value;
        }
    }
    if (!upgrade) return 426;
    if (!connection_upgrade) return 400;
    if (versions != 1 || version != "13") return 426;
    if (keys != 1 || !websocket_key_valid(key)) return 400;
    const std::string_view origin = req.get_header("Origin");
    if (req.has_header("Origin") && !origin_allowed(origin, req.get_header("Host"), h.allowed_origins)) return 403;
    return 0;
}

/// call_on_upgrade: the endpoint's on_upgrade on this worker; 0, or 500 if it threw.
RESTARTABLE_SERVER_FN int run::call_on_upgrade(worker& w, const websocket_handlers& h, websocket_upgrade& up) {
    const call_span span(*this, w);
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
    try {
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
        h.on_upgrade(w.req, up);
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
    } catch (const std::exception& e) {
        log_error("an on_upgrade handler threw (answered 500): ", e.what());
        return 500;
    } catch (...) {
        log_error("an on_upgrade handler threw (answered 500)", "");
        return 500;
    }
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
    return 0;
}

/// upgrade_websocket: a request on a WebSocket route: checked, offered to on_upgrade,
/// then answered 101 (the connection speaks WebSocket from the next byte) or refused.
RESTARTABLE_SERVER_FN run::outcome run::upgrade_websocket_impl(worker& w, connection& c, std::size_t end) {
    const std::shared_ptr<const websocket_handlers> handlers = c.matched->ws;
    const websocket_handlers& h = *handlers;
    c.set(conn_state::handling);
    w.req.transport_ = c.tp.get();
    w.req.stop_ = &stop_signal_;
    response& res = w.res;
    res.clear();
    int status = c.framing.kind != request_framing::none && !(c.framing.kind == request_framing::content_length &&
                                                              c.framing.length == 0)
                     ? 400  // a handshake has no body
                     : check_handshake(w.req, h);
    websocket_upgrade up;
    if (status == 0) {
        for (const header& f : w.req.headers) {
            if (!iequals(f.name, "Sec-WebSocket-Protocol")) continue;
            for_each_item(f.value, [&up](std::string_view item) {
                if (!item.empty()) up.offered.push_back(item);
                return false;
            });
        }
        if (h.on_upgrade) status = call_on_upgrade(w, h, up);
        if (status == 0 && up.refuse != 0) status = up.refuse >= 400 && up.refuse <= 599 ? up.refuse : 500;
        if (status == 0 && !up.subprotocol.empty() &&
            std::find(up.offered.begin(), up.offered.end(), up.subprotocol) == up.offered.end()) {
            log_error("on_upgrade chose a subprotocol the client did not offer (answered 500)", "");
            status = 500;
        }
    }
    c.start = end;  // after a 101, what follows the request is frames
    c.reset_request();
    if (status != 0) {
        error_response(res, status);
        if (status == 426) {
            res.set_header("Upgrade", "websocket");
            res.set_header("Sec-WebSocket-Version", "13");
        }
        return respond(w, c, c.keep_alive);
    }
    res.status = 101;
    std::string& head = w.head;
    head.assign("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ");
    head += websocket_accept(w.req.get_header("Sec-WebSocket-Key"));
    if (!up.subprotocol.empty()) {
        head += "\r\nSec-WebSocket-Protocol: ";
        head += up.subprotocol;
    }
    head += "\r\n\r\n";
    if (opts_.access_log) log_access(w, c, 0);
    c.out_head.assign(head);
    c.out_body.clear();
    c.out_sent = 0;
    auto ch = std::make_shared<channel>(channel::kind_t::websocket);
    ch->id = next_channel_id();
    ch->subprotocol = std::move(up.subprotocol);
    ch->handlers = handlers;
    auto st = std::make_unique<stream_state>();
    st->decoder = ws_decoder(opts_.websocket_max_message);
    st->handle = websocket(ch);
    st->last_in = c.since = clock::now();
    c.st = std::move(st);
    c.in_flight.store(false);
    if (stopping_.load()) finished_.fetch_add(1);
    c.keep_alive = false;
    c.set(conn_state::websocket);
    no_delay(c);
    attach(c, ch);
    if (h.on_open) ws_call(w, c, [&] { h.on_open(c.st->handle, w.req); });
    return outcome::progress;
}

/// ws_call: runs one of c's WebSocket handlers on this worker; sends it makes need no
/// poke (this thread sends them before parking). One that throws fails c with 1011.
template <class F>
void run::ws_call(worker& w, connection& c, F&& f) {
    c.ch->serving.store(std::this_thread::get_id());
    {
        const call_span span(*this, w);
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
        try {
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
            f();
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
        } catch (const std::exception& e) {
            log_error("a WebSocket handler threw (closed with 1011): ", e.what());
            ws_fail(c, 1011);
        } catch (...) {
            log_error("a WebSocket handler threw (closed with 1011)", "");
            ws_fail(c, 1011);
        }
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
    }
    c.ch->serving.store(std::thread::id());
}

/// ws_queue: a frame of the engine's own (pong, close, keep-alive ping) on c's queue,
/// past max_send_buffer if need be. A close ends sending; after a close the program or a
/// stop queued, nothing is added.
RESTARTABLE_SERVER_FN void run::ws_queue(connection& c, unsigned opcode, std::string_view payload) {
    channel& ch = *c.ch;
    std::lock_guard<std::mutex> lock(ch.mutex);
    // A close frame is queued already (the program's close(), a stop's), not yet taken:
    // nothing goes after it, not a second close (take_queued() notes it as sent).
    if (ch.end_requested) return;
    append_ws_frame(ch.queued, opcode, payload);
    ch.send_waiting.store(true);
    if (opcode == ws_close) {
        ch.open = false;
        ch.end_requested = true;
        c.st->close_sent = true;
        c.since = clock::now();
    }
}

/// ws_fail: fails c (RFC 6455 7.1.7): a close frame with code if none was sent, then the
/// TCP close once it is out, without waiting for the client's.
RESTARTABLE_SERVER_FN void run::ws_fail_impl(connection& c, std::uint16_t code) {
    stream_state& st = *c.st;
    if (st.failed) return;
    st.failed = true;
    if (!st.close_received) {
        st.close_code = code;
        st.close_reason.clear();
    }
    if (!st.close_sent) ws_queue(c, ws_close, close_payload(code, ""));
}

/// ws_closing: a close frame was sent or queued (by the engine, the program's close() or
/// a stop): no message is delivered from then on.
RESTARTABLE_SERVER_FN bool run::ws_closing(connection& c) {
    if (c.st->close_sent) return true;
    std::lock_guard<std::mutex> lock(c.ch->mutex);
    return c.ch->end_requested;
}

/// ws_event: one decoded frame of c.
RESTARTABLE_SERVER_FN void run::ws_event(worker& w, connection& c, const ws_decoder::result& r) {
    stream_state& st = *c.st;
    switch (r.what) {
        case ws_decoder::kind::message: {
            if (ws_closing(c)) return;  // after a close, data is dropped (RFC 6455 1.4)
            const websocket_handlers& h = *c.ch->handlers;
            if (h.on_message) ws_call(w, c, [&] { h.on_message(st.handle, r.data, r.text); });
            return;
        }
        case ws_decoder::kind::ping:
            if (!st.close_sent) ws_queue(c, ws_pong, r.data);
            return;
        case ws_decoder::kind::pong:
        case ws_decoder::kind::need_more: return;
        case ws_decoder::kind::close:
            st.close_received = true;
            st.close_code = r.code;
            st.close_reason.assign(r.data);
            if (!st.close_sent) ws_queue(c, ws_close, r.code == 1005 ? std::string() : close_payload(r.code, ""));
            return;
        case ws_decoder::kind::error: ws_fail(c, r.code); return;
    }
}

/// ws_step: c speaks WebSocket: sends what waits, decodes and hands over what came, reads
/// more - while its unsent bytes are under max_send_buffer - and closes once the closing
/// handshake is over.
RESTARTABLE_SERVER_FN run::outcome run::ws_step_impl(worker& w, connection& c) {
    stream_state& st = *c.st;
    for (;;) {
        if (!c.output_pending()) take_queued(c);
        if (c.output_pending()) {
            const outcome o = flush(c);
            c.ch->unsent.store(unsent(c));
            if (o == outcome::close) return o;
            if (o == outcome::progress) continue;
            if (st.close_received || st.failed || ws_full(c)) return outcome::wait;
        } else if (st.close_sent && (st.close_received || st.failed)) {
            // The closing handshake is over (or the connection failed): the server closes
            // the TCP connection first (RFC 6455 7.1.1), lingering as after a response.
            end_channel(c);
            c.st.reset();
            if (c.tp) c.tp->shutdown(c.fd.get());
            ::shutdown(c.fd.get(), SHUT_WR);
            c.set(conn_state::lingering);
            c.in.clear();
            c.start = 0;
            return outcome::progress;
        }
        if (st.close_received || st.failed) return outcome::wait;  // (output waits)
        char* const base = c.in.data() + c.start;
        const std::size_t size = c.in.size() - c.start;
        const ws_decoder::result r = st.decoder.decode(base, size);
        if (r.what != ws_decoder::kind::need_more) ws_event(w, c, r);
        c.in.truncate(c.start + st.decoder.compact(base, size));
        if (r.what != ws_decoder::kind::need_more) continue;
        if (c.read_short) return outcome::wait;
        const outcome o = read_input(w, c);
        if (o != outcome::progress) return o;
        st.last_in = clock::now();
        st.ping_outstanding = false;
    }
}

/// ws_full: c's send buffer is at options::max_send_buffer: its bytes queued and unsent
/// reach it, or a send was refused since the socket last took all there was. Then no more
/// of c's frames are read: an echo that had to drop would read on for ever, and a client
/// that sends without reading must be held at the bound.
RESTARTABLE_SERVER_FN bool run::ws_full(connection& c) {
    channel& ch = *c.ch;
    std::lock_guard<std::mutex> lock(ch.mutex);
    return ch.refused || ch.queued.size() + unsent(c) >= opts_.max_send_buffer;
}

/// ws_deadline: when c's timeout strikes: write_timeout while output waits, the close
/// timeout after a close was sent, else the keep-alive ping (and a ping interval later,
/// the close).
RESTARTABLE_SERVER_FN std::int64_t run::ws_deadline_impl(const connection& c) const noexcept {
    const auto at = [](clock::time_point from, std::chrono::milliseconds limit) {
        return limit.count() > 0 ? to_ns(from + limit) : never;
    };
    if (c.needs_output()) return at(c.since, opts_.write_timeout);
    if (c.st->close_sent) return at(c.since, opts_.websocket_close_timeout);
    const std::chrono::milliseconds interval = opts_.websocket_ping_interval;
    return at(c.st->last_in, c.st->ping_outstanding ? interval * 2 : interval);
}

/// ws_timeout: c's timeout struck (control thread, c taken): a keep-alive ping, or the end.
RESTARTABLE_SERVER_FN void run::ws_timeout_impl(connection& c) noexcept {
    stream_state& st = *c.st;
    if (!c.needs_output() && !st.close_sent && !st.ping_outstanding) {
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
        try {
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
            ws_queue(c, ws_ping, {});
            take_queued(c);
            st.ping_outstanding = true;
            // The socket is writable already, so an edge-triggered set reports no new
            // edge for the ping: poked, as a sender would, a worker sends it.
            poke(c, false);
            return hand_back(c);
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
        } catch (const std::bad_alloc&) {
        }
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
    }
    close(c);  // on_close sees what st says: 1006 unless a close came
}

// ---- the public handles

}  // namespace detail

RESTARTABLE_SERVER_FN std::error_code stream_handle::write(std::string_view data) {
    if (!ch_) return errc::closed;
    if (data.empty()) return {};
    std::lock_guard<std::mutex> lock(ch_->mutex);
    if (!ch_->open) return errc::closed;
    if (!ch_->admits(data.size())) return errc::send_buffer_full;
    ch_->queued.append(data);
    detail::wake_channel(*ch_);
    return {};
}

RESTARTABLE_SERVER_FN std::size_t stream_handle::buffered_amount() const noexcept {
    if (!ch_) return 0;
    std::lock_guard<std::mutex> lock(ch_->mutex);
    return ch_->buffered();
}

RESTARTABLE_SERVER_FN void stream_handle::close() noexcept {
    if (!ch_) return;
    std::lock_guard<std::mutex> lock(ch_->mutex);
    if (!ch_->open) return;
    ch_->open = false;
    ch_->end_requested = true;
    detail::wake_channel(*ch_);
}

RESTARTABLE_SERVER_FN bool stream_handle::is_open() const noexcept {
    if (!ch_) return false;
    std::lock_guard<std::mutex> lock(ch_->mutex);
    return ch_->open;
}

RESTARTABLE_SERVER_FN bool stream_handle::stopping() const noexcept { return ch_ && ch_->stopping.load(); }

RESTARTABLE_SERVER_FN std::error_code websocket::send(unsigned opcode, std::string_view data) {
    if (!ch_) return errc::closed;
    if (opcode == detail::ws_text && !detail::utf8_valid(data)) return errc::invalid_utf8;
    std::lock_guard<std::mutex> lock(ch_->mutex);
    if (!ch_->open) return errc::closed;
    if (!ch_->admits(data.size() + 10)) {
        ch_->refused = true;  // the buffer is at its bound: its frames are not read (ws_full)
        return errc::send_buffer_full;
    }
    detail::append_ws_frame(ch_->queued, opcode, data);
    detail::wake_channel(*ch_);
    return {};
}

RESTARTABLE_SERVER_FN std::error_code websocket::send_text(std::string_view text) { return send(detail::ws_text, text); }

RESTARTABLE_SERVER_FN std::error_code websocket::send_binary(std::string_view data) {
    return send(detail::ws_binary, data);
}

RESTARTABLE_SERVER_FN std::error_code websocket::ping(std::string_view payload) {
    if (payload.size() > 125) return errc::too_long;
    return send(detail::ws_ping, payload);
}

RESTARTABLE_SERVER_FN std::error_code websocket::close(std::uint16_t code, std::string_view reason) {
    if (!ch_) return errc::closed;
    if (reason.size() > 123) return errc::too_long;
    if (!detail::utf8_valid(reason)) return errc::invalid_utf8;
    if (!detail::ws_close_code_valid(code)) return std::make_error_code(std::errc::invalid_argument);
    std::lock_guard<std::mutex> lock(ch_->mutex);
    if (!ch_->open) return errc::closed;
    detail::append_ws_frame(ch_->queued, detail::ws_close, detail::close_payload(code, reason));
    ch_->open = false;
    ch_->end_requested = true;
    detail::wake_channel(*ch_);
    return {};
}

RESTARTABLE_SERVER_FN std::size_t websocket::buffered_amount() const noexcept {
    if (!ch_) return 0;
    std::lock_guard<std::mutex> lock(ch_->mutex);
    return ch_->buffered();
}

RESTARTABLE_SERVER_FN bool websocket::is_open() const noexcept {
    if (!ch_) return false;
    std::lock_guard<std::mutex> lock(ch_->mutex);
    return ch_->open;
}

RESTARTABLE_SERVER_FN bool websocket::stopping() const noexcept { return ch_ && ch_->stopping.load(); }

RESTARTABLE_SERVER_FN std::string websocket::subprotocol() const { return ch_ ? ch_->subprotocol : std::string(); }

RESTARTABLE_SERVER_FN std::uint64_t websocket::id() const noexcept { return ch_ ? ch_->id : 0; }

RESTARTABLE_SERVER_FN stream_handle response::push_stream(std::string_view content_type, std::function<void()> on_close) {
    detail::use_streams();
    auto ch = std::make_shared<detail::channel>(detail::channel::kind_t::push);
    ch->id = detail::next_channel_id();
    ch->on_close = std::move(on_close);
    ch->limit = send_limit_;  // writes before the handler returns are bounded too
    release_body();
    push_ = ch;
    kind_ = body_kind::push;
    set_header("Content-Type", content_type);
    return stream_handle(std::move(ch));
}

RESTARTABLE_SERVER_FN void response::set_pull(std::string_view content_type, pull_provider provider) {
    detail::use_streams();
    release_body();
    pull_ = std::move(provider);
    kind_ = body_kind::pull;
    set_header("Content-Type", content_type);
}

RESTARTABLE_SERVER_FN void response::set_pull(std::string_view content_type, std::uint64_t length,
                                              pull_provider provider) {
    set_pull(content_type, std::move(provider));
    stream_sized_ = true;
    stream_length_ = length;
}

RESTARTABLE_SERVER_FN void response::set_file(std::string_view content_type, unique_fd file, std::uint64_t offset,
                                              std::uint64_t length) {
    detail::use_streams();
    release_body();
    file_ = std::move(file);
    file_offset_ = offset;
    stream_sized_ = true;
    stream_length_ = length;
    kind_ = body_kind::file;
    set_header("Content-Type", content_type);
}

/// release_body: drops whatever body was set (a push stream that never began is closed).
RESTARTABLE_SERVER_FN void response::release_body() noexcept {
    body.clear();
    provider_ = nullptr;
    pull_ = nullptr;
    file_.reset();
    if (push_) detail::abandon(*push_);
    push_.reset();
    kind_ = body_kind::plain;
    stream_sized_ = false;
    stream_length_ = 0;
}

RESTARTABLE_SERVER_FN void response::clear() noexcept {
    status = 200;
    headers.clear();
    release_body();
}

namespace detail {

/// notify_listener: a private datagram socket for a child's "READY=1", bound to a unique
/// abstract name (so nothing is left on disk); name gets "@name" for NOTIFY_SOCKET.
RESTARTABLE_SERVER_FN unique_fd notify_listener(std::string& name) {
    unique_fd fd(detail::new_socket(AF_UNIX, SOCK_DGRAM, 0, false));
    if (!fd) return fd;
    name = "restartable_server/";
    append_number(name, static_cast<std::size_t>(::getpid()));
    name += '/';
    append_number(name, static_cast<std::size_t>(to_ns(clock::now())));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path + 1, name.data(), name.size());  // sun_path[0] == 0: abstract
    const auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
    if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), len) != 0) fd.reset();
    name.insert(0, "@");
    return fd;
}

/// wait_ready: waits until notify receives "READY=1" (true), the child exits or time runs out.
RESTARTABLE_SERVER_FN bool wait_ready(int notify, pid_t child, std::chrono::milliseconds timeout, std::error_code& ec) {
#ifdef SYS_pidfd_open
    const unique_fd exited(static_cast<int>(::syscall(SYS_pidfd_open, child, 0)));  // -1 on old kernels: time only
#else
    (void)child;
    const unique_fd exited;
#endif
    const clock::time_point until = clock::now() + timeout;
    for (;;) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - clock::now()).count();
        if (left <= 0) {
            ec = std::make_error_code(std::errc::timed_out);
            return false;
        }
        pollfd fds[2] = {{notify, POLLIN, 0}, {exited.get(), POLLIN, 0}};
        if (::poll(fds, exited ? 2 : 1, static_cast<int>(std::min<long long>(left, 1 << 30))) < 0 && errno != EINTR) {
            ec = last_error();
            return false;
        }
        if (fds[0].revents & POLLIN) {
            char buf[512];
            const ssize_t n = ::recv(notify, buf, sizeof buf, MSG_DONTWAIT);
            const std::string_view msg(buf, n > 0 ? static_cast<std::size_t>(n) : 0);
            for (std::string_view rest = msg; !rest.empty();) {  // newline-separated assignments
                const std::string_view line = rest.substr(0, rest.find('\n'));
                if (line == "READY=1") return true;
                rest.remove_prefix(std::min(rest.size(), line.size() + 1));
            }
        } else if (exited && (fds[1].revents & POLLIN)) {
            ec = std::make_error_code(std::errc::no_child_process);  // it exited before it was ready
            return false;
        }
    }
}

/// handover_pair: the hand-over socket pair of an upgrade(), both ends close-on-exec:
/// ours, whose sends give up after handover_send_timeout, and theirs, at descriptor 5 or
/// above (so that putting the listener at 3 and it at 4 in the child overwrites neither).
RESTARTABLE_SERVER_FN bool handover_pair(unique_fd& ours, unique_fd& theirs) noexcept {
    int sv[2];
#ifndef RESTARTABLE_SERVER_USE_POLL
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) return false;
    ours.reset(sv[0]);
    theirs.reset(sv[1]);
#else
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv) != 0) return false;
    ours.reset(sv[0]);
    theirs.reset(sv[1]);
    if (!own_descriptor(sv[0], false) || !own_descriptor(sv[1], false)) return false;
#endif  // RESTARTABLE_SERVER_USE_POLL
    theirs.reset(::fcntl(theirs.get(), F_DUPFD_CLOEXEC, 5));
    const auto us = std::chrono::duration_cast<std::chrono::microseconds>(handover_send_timeout).count();
    timeval tv{};
    tv.tv_sec = static_cast<decltype(tv.tv_sec)>(us / 1000000);
    tv.tv_usec = static_cast<decltype(tv.tv_usec)>(us % 1000000);
    return theirs && ::setsockopt(ours.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) == 0;
}

/// await_hello: whether the new process's hand-over greeting comes on channel within
/// timeout (false at once when it closed its end: it exited, or does not take part).
RESTARTABLE_SERVER_FN bool await_hello(int channel, std::chrono::milliseconds timeout) noexcept {
    const clock::time_point until = clock::now() + timeout;
    for (;;) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - clock::now()).count();
        pollfd p{channel, POLLIN, 0};
        const int ready = ::poll(&p, 1, static_cast<int>(std::clamp<long long>(left, 0, 1 << 30)));
        if (ready < 0 && errno == EINTR) continue;
        if (ready <= 0) return false;
        char buf[sizeof handover_hello];
        const ssize_t n = ::recv(channel, buf, sizeof buf, MSG_DONTWAIT);
        if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) continue;
        return n == static_cast<ssize_t>(sizeof handover_hello - 1) &&
               std::memcmp(buf, handover_hello, sizeof handover_hello - 1) == 0;
    }
}

/// spawn_inheriting: starts argv with listener as descriptor 3, LISTEN_FDS=1,
/// LISTEN_PID=<child> and NOTIFY_SOCKET set, and channel (the hand-over socket; above 4)
/// as descriptor 4 named by handover_env, and waits until it reports ready. On failure
/// the child (if any) is killed and reaped, and -1 returned with ec set.
RESTARTABLE_SERVER_FN pid_t spawn_inheriting(const std::vector<std::string>& argv, int listener, int channel,
                              std::chrono::milliseconds ready_timeout, std::error_code& ec) noexcept {
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
    try {
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
        std::string notify_name;
        const unique_fd notify = notify_listener(notify_name);
        if (!notify) {
            ec = last_error();
            return -1;
        }
        // Everything is allocated before fork(): the child may only make async-signal-safe calls.
        std::vector<std::string> env;
        for (char** e = environ; *e != nullptr; ++e) {
            const std::string_view var = *e;
            if (var.rfind("LISTEN_", 0) != 0 && var.rfind("NOTIFY_SOCKET=", 0) != 0 &&
                (var.rfind(handover_env, 0) != 0 || var.substr(0, var.find('=')) != handover_env))
                env.emplace_back(var);
        }
        env.emplace_back("LISTEN_FDS=1");
        env.push_back(std::string(handover_env) + "=4");
        env.push_back("NOTIFY_SOCKET=" + notify_name);
        env.emplace_back("LISTEN_PID=" + std::string(20, '\0'));  // the child writes its pid in
        std::vector<char*> envp, args;
        for (std::string& v : env) envp.push_back(v.data());
        envp.push_back(nullptr);
        for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
        args.push_back(nullptr);
        char* const pid_digits = env.back().data() + std::strlen("LISTEN_PID=");

        const pid_t child = ::fork();
        if (child == 0) {
            if (listener == 3 ? ::fcntl(3, F_SETFD, 0) != 0 : ::dup2(listener, 3) != 3) ::_exit(127);
            if (::dup2(channel, 4) != 4) ::_exit(127);  // channel > 4: neither is overwritten
            char digits[20];
            int n = 0;
            for (pid_t p = ::getpid(); p > 0; p /= 10) digits[n++] = static_cast<char>('0' + p % 10);
            for (int i = 0; i < n; ++i) pid_digits[i] = digits[n - 1 - i];
            sigset_t none;  // the new program starts with no signal blocked
            sigemptyset(&none);
            ::sigprocmask(SIG_SETMASK, &none, nullptr);  // async-signal-safe, unlike pthread_sigmask
            ::execve(args[0], args.data(), envp.data());
            ::_exit(127);
        }
        if (child < 0) {
            ec = last_error();
            return -1;
        }
        if (wait_ready(notify.get(), child, ready_timeout, ec)) return child;
        ::kill(child, SIGKILL);
        ::waitpid(child, nullptr, 0);
        return -1;
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
    } catch (const std::bad_alloc&) {
        ec = std::make_error_code(std::errc::not_enough_memory);
        return -1;
    }
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
}

}  // namespace detail

// --------------------------------------------------------------- server --
RESTARTABLE_SERVER_FN RESTARTABLE_SERVER_COLD server::server(options opts) : options_(std::move(opts)) {
    int fds[2];
    if (detail::make_pipe(fds)) {
        wake_read_.reset(fds[0]);
        wake_write_.reset(fds[1]);
    } else {
        wake_error_ = detail::last_error();
    }
}

RESTARTABLE_SERVER_FN server::~server() { stop(); }

namespace detail {
/// make_route: a route for method and pattern (split into segments).
RESTARTABLE_SERVER_FN std::shared_ptr<route> make_route(std::string method, std::string_view pattern, handler h,
                                                        body_mode mode) {
    auto r = std::make_shared<route>();
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
    return r;
}
}  // namespace detail

RESTARTABLE_SERVER_FN server& server::route(std::string method, std::string pattern, handler h, body_mode mode) {
    auto r = detail::make_route(std::move(method), pattern, std::move(h), mode);
    std::lock_guard<std::mutex> lock(mutex_);
    routes_.push_back(std::move(r));
    return *this;
}

RESTARTABLE_SERVER_FN server& server::websocket(std::string pattern, websocket_handlers handlers) {
    detail::use_websocket();
    auto r = detail::make_route("GET", pattern, handler(), body_mode::buffered);
    r->ws = std::make_shared<const websocket_handlers>(std::move(handlers));
    std::lock_guard<std::mutex> lock(mutex_);
    routes_.push_back(std::move(r));
    return *this;
}

RESTARTABLE_SERVER_FN void server::set_options(options opts) {
    std::lock_guard<std::mutex> lock(mutex_);
    options_ = std::move(opts);
}

RESTARTABLE_SERVER_FN options server::get_options() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return options_;
}

RESTARTABLE_SERVER_FN void server::set_listener(listener_factory f) {
    std::lock_guard<std::mutex> lock(mutex_);
    options_.listener = std::move(f);
}

RESTARTABLE_SERVER_FN server& server::on_stop(stop_hook hook) {
    std::lock_guard<std::mutex> lock(mutex_);
    hooks_.push_back(std::move(hook));
    return *this;
}

/// transition_locked: the one place the state changes (mutex_ held). It checks the
/// table under server_state, and notifies under the lock, so a waiter that returns and
/// destroys the server cannot race with the notification.
RESTARTABLE_SERVER_FN bool server::transition_locked(server_state from, server_state to) noexcept {
    using s = server_state;
    const bool legal = (from == s::stopped && to == s::starting) || (from == s::starting && to == s::running) ||
                       (from == s::starting && to == s::stopped) || (from == s::running && to == s::stopping) ||
                       (from == s::stopping && to == s::stopped);
    if (!legal || state_.load() != from) return false;
    RESTARTABLE_SERVER_SYNC_POINT(*this, "transition", static_cast<int>(to));
    state_.store(to);
    RESTARTABLE_SERVER_SYNC_POINT(*this, "transition.made", static_cast<int>(to));
    cv_.notify_all();
    return true;
}

RESTARTABLE_SERVER_FN bool server::transition(server_state from, server_state to) noexcept {
    std::lock_guard<std::mutex> lock(mutex_);
    return transition_locked(from, to);
}

RESTARTABLE_SERVER_FN bool server::on_server_thread() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return std::find(server_threads_.begin(), server_threads_.end(), std::this_thread::get_id()) !=
           server_threads_.end();
}

RESTARTABLE_SERVER_FN void server::add_server_thread() {
    std::lock_guard<std::mutex> lock(mutex_);
    server_threads_.push_back(std::this_thread::get_id());
}

RESTARTABLE_SERVER_FN void server::remove_server_thread() noexcept {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = std::find(server_threads_.begin(), server_threads_.end(), std::this_thread::get_id());
    if (it != server_threads_.end()) server_threads_.erase(it);
}

RESTARTABLE_SERVER_FN void server::wake() noexcept {
    const char byte = 1;
    ssize_t r = ::write(wake_write_.get(), &byte, 1);  // EAGAIN: a wake-up is pending anyway
    (void)r;
}

RESTARTABLE_SERVER_FN void server::drain_wake() noexcept {
    char buf[256];
    while (detail::retry_eintr([&] { return ::read(wake_read_.get(), buf, sizeof buf); }) > 0) {
    }
}

RESTARTABLE_SERVER_FN void server::request_stop() noexcept {
    const int saved_errno = errno;  // a signal handler must leave errno as it found it
    if (!stop_requested_.load())    // clock_gettime is async-signal-safe
        stop_requested_at_.store(detail::to_ns(detail::clock::now()));
    stop_requested_.store(true);
    RESTARTABLE_SERVER_SYNC_POINT(*this, "request_stop.flag_set", 0);
    if (wake_write_) wake();
    errno = saved_errno;
}

RESTARTABLE_SERVER_FN void server::start(std::error_code& ec) noexcept { start_impl(ec, false); }
RESTARTABLE_SERVER_FN void server::run(std::error_code& ec) noexcept { start_impl(ec, true); }

namespace detail {
/// throw_error: throws std::system_error(ec, what); without exceptions, says so on stderr
/// and aborts.
[[noreturn]] RESTARTABLE_SERVER_FN void throw_error(std::error_code ec, const char* what) {
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
    throw std::system_error(ec, what);
#else
    std::fprintf(stderr, "%s: %s\n", what, ec.message().c_str());
    std::abort();
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
}
}  // namespace detail

RESTARTABLE_SERVER_FN void server::start() {
    std::error_code ec;
    start(ec);
    if (ec) detail::throw_error(ec, "restartable_server: start");
}

RESTARTABLE_SERVER_FN void server::run() {
    std::error_code ec;
    run(ec);
    if (ec) detail::throw_error(ec, "restartable_server: run");
}

RESTARTABLE_SERVER_FN RESTARTABLE_SERVER_COLD void server::start_impl(std::error_code& ec, bool in_caller_thread) noexcept {
    ec.clear();
    if (wake_error_) {
        ec = wake_error_;
        return;
    }
    if (on_server_thread()) {
        ec = make_error_code(errc::already_running);
        return;
    }
    std::unique_lock<std::mutex> lifecycle(lifecycle_);  // no other start, stop or wait
    {
        std::unique_lock<std::mutex> lock(mutex_);
        // A run that is ending (a request_stop() nobody waits for) is waited for; one that
        // runs is left alone - its pending stop request too.
        cv_.wait(lock, [this] { return state_.load() != server_state::stopping; });
        if (!transition_locked(server_state::stopped, server_state::starting)) {
            ec = make_error_code(errc::already_running);
            return;
        }
        ++generation_;
        drain_wake();  // before the flag is cleared: a request's byte from here on stays
        stop_requested_.store(false);  // a request from here on is kept
        stop_requested_at_.store(0);
        drain_limit_.store(detail::never);
    }
    if (loop_thread_.joinable()) loop_thread_.join();  // a run that ended by itself: stopped, gone
    {  // a restart() of the run that ended may still be building its next run, with a
       // listener that could hold this start's address: it gives up (not_running) first
        std::lock_guard<std::mutex> barrier(restart_mutex_);
    }
    RESTARTABLE_SERVER_SYNC_POINT(*this, "start.starting", 0);
    std::unique_ptr<detail::run> run = make_run(ec, false);
    if (!run) {
        transition(server_state::starting, server_state::stopped);
        return;
    }
    // Running, then accepting: no request is answered before the state says running.
    transition(server_state::starting, server_state::running);
    if (!run->begin_accepting()) {
        ec = detail::last_error();
        abandon(std::move(run));
        return;
    }
    RESTARTABLE_SERVER_SYNC_POINT(*this, "start.accepting", 0);
    if (in_caller_thread) {
        add_server_thread();
        lifecycle.unlock();
        ec = run_to_end(std::move(run)).error;  // `this` may be gone once the run ended
        return;
    }
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
    try {
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
        loop_thread_ = std::thread([this, r = run.get()] {
            add_server_thread();
            run_to_end(std::unique_ptr<detail::run>(r));
        });
        run.release();  // the thread owns it now
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
    } catch (const std::system_error& e) {  // no thread: the run (and its listener) goes
        ec = e.code();
        abandon(std::move(run));
    }
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
}

/// abandon: a run that start() made running but could not get accepting or give a thread:
/// its workers are joined and its listener closes; the state goes back to stopped.
RESTARTABLE_SERVER_FN RESTARTABLE_SERVER_COLD void server::abandon(std::unique_ptr<detail::run> run) noexcept {
    run->abandon_run();
    run.reset();
    std::lock_guard<std::mutex> lock(mutex_);
    port_.store(0);
    transition_locked(server_state::running, server_state::stopping);
    transition_locked(server_state::stopping, server_state::stopped);
}

/// make_run: a run built from a snapshot of the options, routes and hooks, and a fresh
/// listener from the factory - or, for a restart to the same address, none: it takes the
/// current one at the hand-over. Null with ec set when that fails (nothing is left open).
RESTARTABLE_SERVER_FN RESTARTABLE_SERVER_COLD std::unique_ptr<detail::run> server::make_run(std::error_code& ec, bool for_restart) noexcept {
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
    try {
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
        options o;
        detail::route_list routes;
        std::vector<stop_hook> hooks;
        std::uint64_t generation = 0;
        bool same_address = false;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            o = options_;
            routes = routes_;
            hooks = hooks_;
            generation = generation_;
            same_address = for_restart && !o.listener.address().empty() && o.listener.address() == listener_address_;
        }
        const options defaults;
        if (o.max_header_bytes == 0) o.max_header_bytes = defaults.max_header_bytes;
        if (o.max_headers == 0) o.max_headers = defaults.max_headers;
        if (o.max_body_bytes == 0) o.max_body_bytes = defaults.max_body_bytes;
        if (o.max_request_line_bytes == 0) o.max_request_line_bytes = defaults.max_request_line_bytes;
        if (o.max_connections == 0) o.max_connections = defaults.max_connections;
        if (o.max_buffered_bytes == 0) o.max_buffered_bytes = defaults.max_buffered_bytes;
        if (o.max_send_buffer == 0) o.max_send_buffer = defaults.max_send_buffer;
        if (o.websocket_max_message == 0) o.websocket_max_message = defaults.websocket_max_message;
        if (!o.listener) o.listener = tcp_listener("127.0.0.1", 8080);
        unique_fd listener;
        if (!same_address) {
            listener = make_listener(o, ec);
            if (ec) return nullptr;
        }
        // The transport layer is made anew for every run, a restart's too: a TLS
        // certificate is read again, and one that fails keeps the old run serving.
        std::shared_ptr<transport_layer> layer;
        if (const layer_maker& make_layer = detail::factory_access::layer(o.listener)) {
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
            try {
                layer = make_layer(ec);
            } catch (const std::system_error& e) {
                ec = e.code();
            } catch (...) {
                ec = make_error_code(errc::listener_threw);
            }
#else
            layer = make_layer(ec);
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
            if (!ec && !layer) ec = make_error_code(errc::no_transport);
            if (ec) return nullptr;
        }
        auto run = std::make_unique<detail::run>(*this, std::move(o), std::move(routes), std::move(hooks),
                                                 std::move(listener), std::move(layer), generation);
        ec = run->init();
        if (ec) return nullptr;
        if (!for_restart) {  // a restart's run becomes the current one at the hand-over
            std::lock_guard<std::mutex> lock(mutex_);
            port_.store(detail::local_port(run->listener_fd()));
            listener_address_ = run->address();
            listener_fd_ = run->listener_fd();
        }
        return run;
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
    } catch (const std::bad_alloc&) {
        ec = std::make_error_code(std::errc::not_enough_memory);
        return nullptr;
    }
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
}

/// make_listener: a listening socket from o's factory, non-blocking and close-on-exec.
RESTARTABLE_SERVER_FN RESTARTABLE_SERVER_COLD unique_fd server::make_listener(const options& o, std::error_code& ec) noexcept {
    unique_fd listener;
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
    try {
        listener = o.listener(ec);
    } catch (const std::system_error& e) {
        ec = e.code();
    } catch (...) {
        ec = make_error_code(errc::listener_threw);
    }
#else
    listener = o.listener(ec);
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
    if (!ec && !listener) ec = make_error_code(errc::no_listener);
    if (!ec && !detail::own_descriptor(listener.get(), true)) ec = detail::last_error();
    if (!ec) {  // an unlistened socket would be "readable" forever and accept nothing
        int listening = 0;
        socklen_t len = sizeof listening;
        if (::getsockopt(listener.get(), SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) != 0)
            ec = detail::last_error();
        else if (!listening)
            ec = make_error_code(errc::not_listening);
    }
    if (ec) listener.reset();
    return listener;
}

/// run_to_end: runs the control loop, then closes everything of the run and only then
/// says "stopped". Touches nothing of the server after that: it may be destroyed at once.
/// A restart makes the loop return with a next run, which takes over the old one's drain
/// and this thread.
RESTARTABLE_SERVER_FN RESTARTABLE_SERVER_COLD stop_result server::run_to_end(std::unique_ptr<detail::run> run) noexcept {
    control_thread_.store(std::this_thread::get_id());
    current_.store(run.get());
    for (;;) {
        run->loop();
        std::unique_ptr<detail::run> next = run->take_next();
        if (!next) break;
        next->adopt_retiree(std::move(run));
        run = std::move(next);
    }
    const stop_result result = run->result();
    end_restart(false);
    current_.store(nullptr);
    control_thread_.store(std::thread::id());
    run.reset();  // its workers are joined; this closes its event sets and listener
    RESTARTABLE_SERVER_SYNC_POINT(*this, "run_to_end.before_stopped", 0);
    std::lock_guard<std::mutex> lock(mutex_);
    last_stop_ = result;
    port_.store(0);
    listener_fd_ = -1;
    handover_fd_.store(-1);  // every thread that could send is joined
    handover_out_.reset();   // the new process reads EOF: nothing more comes
    listener_address_.clear();
    auto self = std::find(server_threads_.begin(), server_threads_.end(), std::this_thread::get_id());
    if (self != server_threads_.end()) server_threads_.erase(self);
    transition_locked(server_state::stopping, server_state::stopped);
    return result;
}

RESTARTABLE_SERVER_FN stop_result server::stop() noexcept { return stop_impl(detail::never); }

RESTARTABLE_SERVER_FN stop_result server::stop(std::chrono::milliseconds drain_timeout) noexcept {
    return stop_impl(detail::to_ns(detail::clock::now()) +
                     std::chrono::nanoseconds(std::max(drain_timeout, std::chrono::milliseconds(0))).count());
}

/// stop_impl: stop() with an earlier drain deadline (steady ns) unless it is never. The
/// deadline is lowered before the lifecycle lock (a stop under way on another thread
/// gets it) and again once this stop holds it (a start() in between cleared it).
RESTARTABLE_SERVER_FN stop_result server::stop_impl(std::int64_t drain_limit) noexcept {
    const auto lower_limit = [this, drain_limit] {
        std::int64_t current = drain_limit_.load();
        while (drain_limit < current && !drain_limit_.compare_exchange_weak(current, drain_limit)) {
        }
    };
    lower_limit();
    if (on_server_thread()) {  // a handler: waiting for ourselves would deadlock
        request_stop();
        return {false, false, 0, {}};
    }
    std::lock_guard<std::mutex> lifecycle(lifecycle_);
    if (state_.load() != server_state::stopped) {
        lower_limit();
        request_stop();
    }
    std::unique_lock<std::mutex> lock(mutex_);
    cv_.wait(lock, [this] { return state_.load() == server_state::stopped; });
    const stop_result result = last_stop_;
    lock.unlock();
    if (loop_thread_.joinable()) loop_thread_.join();
    return result;
}

RESTARTABLE_SERVER_FN void server::restart(std::error_code& ec) noexcept {
    ec.clear();
    // On the control thread (a handler with worker_threads == 0) the hand-over cannot
    // happen before this returns, so it does not wait for it - nor for another restart().
    const bool on_control_thread = std::this_thread::get_id() == control_thread_.load();
    std::unique_lock<std::mutex> serial(restart_mutex_, std::defer_lock);
    if (on_control_thread && !serial.try_lock()) {
        ec = std::make_error_code(std::errc::operation_in_progress);
        return;
    }
    if (!on_control_thread) serial.lock();
    // A start() waits for this call to end (see start_impl), so the run it builds for is
    // the current one until it returns.
    if (state_.load() != server_state::running) {
        ec = make_error_code(errc::not_running);
        return;
    }
    {  // A restart from a handler (worker_threads == 0) not handed over yet is replaced by
       // this one: its run goes first, so its listener does not hold the address this binds.
        std::unique_ptr<detail::run> replaced;
        std::lock_guard<std::mutex> lock(mutex_);
        replaced.swap(next_run_);
    }
    std::unique_ptr<detail::run> next = make_run(ec, true);
    if (!next) return;
    std::unique_lock<std::mutex> lock(mutex_);
    if (state_.load() != server_state::running) {  // a stop began meanwhile
        ec = make_error_code(errc::not_running);
        return;
    }
    next_run_ = std::move(next);  // empty before: replaced above, and a handler's restart() fails while this holds serial
    restart_outcome_ = 0;
    detail::use_restart();  // before the request: the control thread's hand_over() is in it
    restart_requested_.store(true);
    wake();
    if (on_control_thread) return;
    cv_.wait(lock, [this] { return restart_outcome_ != 0; });
    if (restart_outcome_ < 0) ec = make_error_code(errc::not_running);
}

RESTARTABLE_SERVER_FN void server::restart() {
    std::error_code ec;
    restart(ec);
    if (ec) detail::throw_error(ec, "restartable_server: restart");
}

/// take_next_run: the control thread takes the run restart() left for it, if it is for
/// the control thread's start.
RESTARTABLE_SERVER_FN std::unique_ptr<detail::run> server::take_next_run(std::uint64_t generation) noexcept {
    std::lock_guard<std::mutex> lock(mutex_);
    restart_requested_.store(false);
    if (!next_run_ || next_run_->generation() != generation) return nullptr;
    listener_address_ = next_run_->address();
    return std::move(next_run_);
}

/// end_restart: tells a waiting restart() its run was handed over (done) or will not be.
RESTARTABLE_SERVER_FN void server::end_restart(bool done) noexcept {
    std::unique_ptr<detail::run> dropped;
    std::lock_guard<std::mutex> lock(mutex_);
    if (!done) {
        dropped = std::move(next_run_);  // closed after the lock is released
        restart_requested_.store(false);
    }
    if (restart_outcome_ == 0) {
        restart_outcome_ = done ? 1 : -1;
        cv_.notify_all();
    }
}

RESTARTABLE_SERVER_FN pid_t server::upgrade(const std::vector<std::string>& argv, std::error_code& ec,
                             std::chrono::milliseconds ready_timeout) noexcept {
    ec.clear();
#ifndef __linux__  // the child's readiness comes through an abstract Unix socket
    (void)ready_timeout;
    ec = std::make_error_code(std::errc::function_not_supported);
    return -1;
#endif  // not Linux
    if (argv.empty()) {
        ec = std::make_error_code(std::errc::invalid_argument);
        return -1;
    }
    if (on_server_thread()) {  // it waits for the child, and then the run must end
        ec = std::make_error_code(std::errc::resource_deadlock_would_occur);
        return -1;
    }
    std::lock_guard<std::mutex> serial(restart_mutex_);  // the listener stays the same meanwhile
    unique_fd inherited;
    {
        std::lock_guard<std::mutex> lock(mutex_);  // a stop closes the listener under it
        if (state_.load() != server_state::running || listener_fd_ < 0) {
            ec = make_error_code(errc::not_running);
            return -1;
        }
        inherited.reset(::fcntl(listener_fd_, F_DUPFD_CLOEXEC, 3));
    }
    if (!inherited) {
        ec = detail::last_error();
        return -1;
    }
    unique_fd ours, theirs;  // the hand-over socket (see "hand-over to a new process")
    if (!detail::handover_pair(ours, theirs)) {
        ec = detail::last_error();
        return -1;
    }
    const pid_t child = detail::spawn_inheriting(argv, inherited.get(), theirs.get(), ready_timeout, ec);
    theirs.reset();  // the child holds the only copy: when it goes, this end reads EOF
    if (child <= 0) return child;
    // The greeting was sent before the child's start() returned, so before READY=1: it is
    // here, unless the program does not take part in the hand-over.
    const bool greeted = detail::await_hello(ours.get(), detail::handover_hello_wait);
    std::function<void(std::string_view)> error_log;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        if (greeted && state_.load() == server_state::running) {  // a stop under way has closed its idle ones
            detail::use_handover();  // before handover_fd_: the engine's send_away() is in it
            handover_fd_.store(ours.get());  // before the stop request: the stop sees it
            handover_out_ = std::move(ours);
        }
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
        try {
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
            if (!greeted) error_log = options_.error_log;
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
        } catch (...) {
        }
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
    }
    if (error_log) {
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
        try {
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
            error_log("restartable_server: upgrade: the new process does not take connections over (no "
                      "hand-over greeting): idle ones are closed as the stop begins");
#ifndef RESTARTABLE_SERVER_NO_EXCEPTIONS
        } catch (...) {
        }
#endif  // RESTARTABLE_SERVER_NO_EXCEPTIONS
    }
    request_stop();
    return child;
}

RESTARTABLE_SERVER_FN void server::set_listener_fd(int fd) noexcept {
    std::lock_guard<std::mutex> lock(mutex_);
    listener_fd_ = fd;
}

RESTARTABLE_SERVER_FN stop_result server::wait() noexcept {
    if (on_server_thread()) return {false, false, 0, {}};
    {
        // The run of this start: its end may be followed at once by another start (one
        // that waited while it was stopping), which this thread must not wait for too.
        std::unique_lock<std::mutex> lock(mutex_);
        const std::uint64_t generation = generation_;
        RESTARTABLE_SERVER_SYNC_POINT(*this, "wait.waiting", 0);
        cv_.wait(lock, [&] { return state_.load() == server_state::stopped || generation_ != generation; });
        if (generation_ != generation) return last_stop_;  // that start joined the run's thread
    }
    std::lock_guard<std::mutex> lifecycle(lifecycle_);
    if (state_.load() == server_state::stopped && loop_thread_.joinable()) loop_thread_.join();
    std::lock_guard<std::mutex> lock(mutex_);
    return last_stop_;
}

RESTARTABLE_SERVER_FN bool server::wait_until_running(std::chrono::milliseconds timeout) const {
    std::unique_lock<std::mutex> lock(mutex_);
    return cv_.wait_for(lock, timeout, [this] { return state_.load() == server_state::running; });
}

#ifdef RESTARTABLE_SERVER_TEST_HOOKS
RESTARTABLE_SERVER_FN void server::set_sync_point(std::string name, std::function<void(int)> fn) {
    std::lock_guard<std::mutex> lock(sync_mutex_);
    auto it = std::find_if(sync_points_.begin(), sync_points_.end(), [&](const auto& p) { return p.first == name; });
    if (it != sync_points_.end()) sync_points_.erase(it);
    if (fn) sync_points_.emplace_back(std::move(name), std::make_shared<std::function<void(int)>>(std::move(fn)));
    any_sync_point_.store(!sync_points_.empty());
}

/// sync_point: runs the function set for name, if any, outside sync_mutex_ (it may block).
RESTARTABLE_SERVER_FN void server::sync_point(const char* name, int arg) noexcept {
    if (!any_sync_point_.load()) return;  // request_stop() from a signal handler locks nothing
    std::shared_ptr<std::function<void(int)>> fn;
    {
        std::lock_guard<std::mutex> lock(sync_mutex_);
        for (const auto& p : sync_points_)
            if (p.first == name) fn = p.second;
    }
    if (fn) (*fn)(arg);
}
#endif  // RESTARTABLE_SERVER_TEST_HOOKS

namespace detail {

// --------------------------------------------------------- static files --

/// static_buffer_limit: a file or range up to this size is read into the response body,
/// to go out with its head in one write; a larger one is sent from the file as the socket
/// takes it (response::set_file: sendfile(2)), never in memory.
inline constexpr std::uint64_t static_buffer_limit = 32 * 1024;

struct mime_entry {
    std::string_view extension;
    std::string_view type;
};
/// mime_types: extension (lower case) to Content-Type; javascript per RFC 9239.
inline constexpr mime_entry mime_types[] = {
    {"html", "text/html; charset=utf-8"},      {"htm", "text/html; charset=utf-8"},
    {"css", "text/css; charset=utf-8"},        {"js", "text/javascript; charset=utf-8"},
    {"mjs", "text/javascript; charset=utf-8"}, {"txt", "text/plain; charset=utf-8"},
    {"csv", "text/csv; charset=utf-8"},        {"md", "text/markdown; charset=utf-8"},
    {"json", "application/json"},              {"map", "application/json"},
    {"xml", "application/xml"},                {"svg", "image/svg+xml"},
    {"png", "image/png"},                      {"jpg", "image/jpeg"},
    {"jpeg", "image/jpeg"},                    {"gif", "image/gif"},
    {"webp", "image/webp"},                    {"avif", "image/avif"},
    {"ico", "image/x-icon"},                   {"wasm", "application/wasm"},
    {"pdf", "application/pdf"},                {"woff", "font/woff"},
    {"woff2", "font/woff2"},                   {"mp4", "video/mp4"},
    {"webm", "video/webm"},                    {"mp3", "audio/mpeg"},
    {"zip", "application/zip"},                {"gz", "application/gzip"},
};

/// append_u64: appends n in decimal, or in lower-case hex with base 16.
RESTARTABLE_SERVER_FN void append_u64(std::string& out, std::uint64_t n, unsigned base = 10) {
    char tmp[24];
    char* p = tmp + sizeof tmp;
    do {
        *--p = "0123456789abcdef"[n % base];
        n /= base;
    } while (n != 0);
    out.append(p, static_cast<std::size_t>(tmp + sizeof tmp - p));
}

RESTARTABLE_SERVER_FN std::string_view trim_ows(std::string_view s) noexcept {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
}

// --- the path --

/// decode_segment: appends raw percent-decoded to out. False for a bad %-escape, or a
/// decoded byte no file name in a URL path may have: '/' (it would split the segment, so
/// "..%2F" could climb), '\' (a separator elsewhere), NUL and other control bytes.
RESTARTABLE_SERVER_FN bool decode_segment(std::string_view raw, std::string& out) {
    for (std::size_t i = 0; i < raw.size(); ++i) {
        char c = raw[i];
        if (c == '%') {
            if (i + 2 >= raw.size()) return false;
            const int hi = hex_value(raw[i + 1]), lo = hex_value(raw[i + 2]);
            if (hi < 0 || lo < 0) return false;
            c = static_cast<char>(hi * 16 + lo);
            i += 2;
        }
        auto u = static_cast<unsigned char>(c);
        if (c == '/' || c == '\\' || u < 0x20 || u == 0x7f) return false;
        out += c;
    }
    return true;
}

/// decode_static_path: checks the raw rest of a path (request::param("*")) and decodes it
/// into rel: segments joined by '/', "" for root itself; dir_slash tells whether it ended
/// in '/'. Returns 0 when rel may name a file, 400 when no file name gives such a path, 404
/// for a dot-file that is not served. Every check is on the decoded bytes that will be used.
RESTARTABLE_SERVER_FN int decode_static_path(std::string_view raw, bool dotfiles, std::string& rel, bool& dir_slash) {
    rel.clear();
    dir_slash = !raw.empty() && raw.back() == '/';
    if (dir_slash) raw.remove_suffix(1);
    if (raw.empty()) return dir_slash ? 400 : 0;  // "/" alone is an empty segment
    int status = 0;
    for (;;) {
        const std::size_t slash = raw.find('/');
        if (!rel.empty()) rel += '/';
        const std::size_t start = rel.size();
        if (!decode_segment(raw.substr(0, slash), rel)) return 400;
        const std::string_view name = std::string_view(rel).substr(start);
        if (name.empty() || name == "." || name == "..") return 400;
        if (name.front() == '.' && !dotfiles) status = 404;  // go on: a later ".." is still 400
        if (slash == std::string_view::npos) return status;
        raw.remove_prefix(slash + 1);
    }
}

/// static_file: an open file or directory and what fstat() said about it.
struct static_file {
    unique_fd fd;
    struct stat st {};
};

/// open_root: the directory root as a descriptor, opened afresh for each request (root
/// itself may be a symbolic link, which a deploy switches: it is the operator's to set).
RESTARTABLE_SERVER_FN unique_fd open_root(const std::string& root) {
    return unique_fd(retry_eintr([&] { return ::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOCTTY); }));
}

/// open_entry: opens the entry name of the directory dir for reading; a directory only when
/// dir_only. O_NOFOLLOW: a symbolic link is never followed (ELOOP), whoever put it there
/// and whenever. O_NONBLOCK: a FIFO swapped in does not hold the thread in open(). The type
/// is looked at first (fstatat, no link followed), so a device is not even opened unless it
/// is swapped in between; the caller checks the type again with fstat() on the descriptor.
RESTARTABLE_SERVER_FN unique_fd open_entry(int dir, const std::string& name, bool dir_only) {
    struct stat st {};
    if (::fstatat(dir, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0 ||
        !(S_ISDIR(st.st_mode) || (!dir_only && S_ISREG(st.st_mode))))
        return unique_fd();
    const int flags = O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | (dir_only ? O_DIRECTORY : 0);
    return unique_fd(retry_eintr([&] { return ::openat(dir, name.c_str(), flags); }));
}

/// open_beneath: opens rel ('/'-separated names, none "", "." or ".."; "" is dir itself)
/// under the directory dir, one name at a time, each relative to the descriptor of the one
/// before: no path string is resolved again after a check, so renaming entries under the
/// root (a directory swapped for a link to "../outside") cannot lead out of it. True when
/// the descriptor, by fstat(), is a regular file or a directory.
RESTARTABLE_SERVER_FN bool open_beneath(int dir, std::string_view rel, static_file& f) {
    unique_fd here;  // the directory the next name is in, once it is not dir
    std::string name;
    if (rel.empty()) {
        f.fd.reset(retry_eintr([&] { return ::openat(dir, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOCTTY); }));
    } else {
        for (;;) {
            const std::size_t slash = rel.find('/');
            name.assign(rel.substr(0, slash));
            if (name.empty() || name == "." || name == "..") return false;  // e.g. a bad static_options::index
            if (slash == std::string_view::npos) {
                f.fd = open_entry(here ? here.get() : dir, name, false);
                break;
            }
            unique_fd next = open_entry(here ? here.get() : dir, name, true);
            if (!next) return false;
            here = std::move(next);
            rel.remove_prefix(slash + 1);
        }
    }
    return f.fd && ::fstat(f.fd.get(), &f.st) == 0 && (S_ISREG(f.st.st_mode) || S_ISDIR(f.st.st_mode));
}

struct free_deleter {
    void operator()(char* p) const noexcept { std::free(p); }
};
/// real_path: path with every symbolic link, "." and ".." resolved; false when it does not
/// exist (or cannot be resolved).
RESTARTABLE_SERVER_FN bool real_path(const std::string& path, std::string& out) {
    std::unique_ptr<char, free_deleter> p(::realpath(path.c_str(), nullptr));
    if (!p) return false;
    out.assign(p.get());
    return true;
}

// --- dates --

/// format_http_date: t as an IMF-fixdate (write_http_date); "" when it cannot be.
RESTARTABLE_SERVER_FN std::string format_http_date(std::time_t t) {
    char buf[http_date_size];
    return write_http_date(t, buf) ? std::string(buf, sizeof buf) : std::string();
}

/// date_reader: reads an HTTP-date from left to right; once a step does not fit, ok stays
/// false and every later step fails too.
struct date_reader {
    std::string_view s;
    bool ok = true;

    void literal(std::string_view lit) {
        ok = ok && s.substr(0, lit.size()) == lit;
        if (ok) s.remove_prefix(lit.size());
    }
    int number(std::size_t digits) {
        int v = 0;
        for (std::size_t i = 0; i < digits && ok; ++i) {
            ok = !s.empty() && s.front() >= '0' && s.front() <= '9';
            if (ok) v = v * 10 + (s.front() - '0'), s.remove_prefix(1);
        }
        return v;
    }
    /// one_of: the index of the name at the front (names are case-sensitive, RFC 9110 5.6.7).
    template <std::size_t N>
    int one_of(const std::string_view (&names)[N]) {
        for (std::size_t i = 0; ok && i < N; ++i)
            if (s.substr(0, names[i].size()) == names[i]) {
                s.remove_prefix(names[i].size());
                return static_cast<int>(i);
            }
        ok = false;
        return 0;
    }
    void clock(int& h, int& m, int& sec) {
        h = number(2), literal(":"), m = number(2), literal(":"), sec = number(2);
    }
};

/// days_from_epoch: days from 1970-01-01 to the proleptic Gregorian date y-m-d (y >= 1).
RESTARTABLE_SERVER_FN std::int64_t days_from_epoch(std::int64_t y, int m, int d) noexcept {
    static constexpr int before_month[12] = {0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334};
    auto leap_years_through = [](std::int64_t year) { return year / 4 - year / 100 + year / 400; };
    const bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return 365 * (y - 1970) + leap_years_through(y - 1) - leap_years_through(1969) + before_month[m - 1] +
           (leap && m > 2 ? 1 : 0) + (d - 1);
}

/// parse_http_date: an HTTP-date in any of its three forms (RFC 9110 5.6.7: a recipient
/// must accept all three): IMF-fixdate "Sun, 06 Nov 1994 08:49:37 GMT", rfc850-date
/// "Sunday, 06-Nov-94 08:49:37 GMT" (a two-digit year more than 50 years ahead is in the
/// last century) and asctime "Sun Nov  6 08:49:37 1994". False for anything else or an
/// impossible date. The day name is not checked against the date.
RESTARTABLE_SERVER_FN bool parse_http_date(std::string_view s, std::time_t& out) noexcept {
    static constexpr std::string_view short_days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static constexpr std::string_view long_days[] = {"Sunday",   "Monday", "Tuesday", "Wednesday",
                                                     "Thursday", "Friday", "Saturday"};
    static constexpr std::string_view months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                                  "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    date_reader r{s};
    int year = 0, month = 0, day = 0, h = 0, m = 0, sec = 0;
    if (s.size() > 3 && s[3] == ',') {  // IMF-fixdate
        r.one_of(short_days), r.literal(", "), day = r.number(2), r.literal(" ");
        month = r.one_of(months), r.literal(" "), year = r.number(4), r.literal(" ");
        r.clock(h, m, sec), r.literal(" GMT");
    } else if (s.size() > 3 && s[3] == ' ') {  // asctime: the day is space-padded
        r.one_of(short_days), r.literal(" "), month = r.one_of(months), r.literal(" ");
        if (!r.s.empty() && r.s.front() == ' ') r.literal(" "), day = r.number(1);
        else day = r.number(2);
        r.literal(" "), r.clock(h, m, sec), r.literal(" "), year = r.number(4);
    } else {  // rfc850-date
        r.one_of(long_days), r.literal(", "), day = r.number(2), r.literal("-");
        month = r.one_of(months), r.literal("-"), year = r.number(2), r.literal(" ");
        r.clock(h, m, sec), r.literal(" GMT");
        std::time_t now = std::time(nullptr);
        std::tm tm{};
        ::gmtime_r(&now, &tm);
        const int this_year = tm.tm_year + 1900;
        year += this_year / 100 * 100;
        if (year > this_year + 50) year -= 100;
    }
    static constexpr int month_days[12] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (!r.ok || !r.s.empty() || year < 1 || day < 1 || day > month_days[month] || h > 23 || m > 59 || sec > 60)
        return false;
    const bool leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    if (month == 1 && day == 29 && !leap) return false;
    const std::int64_t t = days_from_epoch(year, month + 1, day) * 86400 + h * 3600 + m * 60 + sec;
    out = static_cast<std::time_t>(t);
    return true;
}

// --- conditional requests --

/// file_validators: what conditional requests compare with (RFC 9110 8.8).
struct file_validators {
    std::string etag;                 ///< W/"size-mtime_ns", hex
    std::time_t last_modified = 0;    ///< seconds; never later than now (RFC 9110 8.8.2.1)
    bool date_is_strong = false;      ///< the file's last second is over (for If-Range)
};

RESTARTABLE_SERVER_FN file_validators validators_of(const struct stat& st) {
    const std::time_t now = std::time(nullptr);
    file_validators v;
    v.etag = "W/\"";
    append_u64(v.etag, static_cast<std::uint64_t>(st.st_size), 16);
    v.etag += '-';
    const std::uint64_t mtime_ns =
        static_cast<std::uint64_t>(st.st_mtim.tv_sec) * 1000000000u + static_cast<std::uint64_t>(st.st_mtim.tv_nsec);
    append_u64(v.etag, mtime_ns, 16);
    v.etag += '"';
    v.last_modified = std::min(st.st_mtim.tv_sec, now);
    v.date_is_strong = st.st_mtim.tv_sec < now;
    return v;
}

/// etag_list_matches: whether list ("*", or entity-tags separated by commas) holds etag.
/// Weak comparison ignores W/; strong comparison needs both tags strong (RFC 9110 8.8.3.2).
/// The list is read up to its first malformed member.
RESTARTABLE_SERVER_FN bool etag_list_matches(std::string_view list, std::string_view etag, bool strong) noexcept {
    if (trim_ows(list) == "*") return true;
    const bool ours_weak = etag.substr(0, 2) == "W/";
    if (ours_weak) etag.remove_prefix(2);
    for (;;) {
        while (!list.empty() && (list.front() == ' ' || list.front() == '\t' || list.front() == ','))
            list.remove_prefix(1);
        if (list.empty()) return false;
        const bool weak = list.substr(0, 2) == "W/";
        if (weak) list.remove_prefix(2);
        if (list.empty() || list.front() != '"') return false;
        const std::size_t close = list.find('"', 1);
        if (close == std::string_view::npos) return false;
        if (list.substr(0, close + 1) == etag && !(strong && (weak || ours_weak))) return true;
        list.remove_prefix(close + 1);
    }
}

/// any_field_matches: etag_list_matches over every field line called name (a list may be
/// split across lines, RFC 9110 5.3).
RESTARTABLE_SERVER_FN bool any_field_matches(const request& req, std::string_view name, std::string_view etag, bool strong) {
    for (const header& h : req.headers)
        if (iequals(h.name, name) && etag_list_matches(h.value, etag, strong)) return true;
    return false;
}

/// single_field: the value of the only field line called name; false when there is none or
/// several (a date field with more than one member is ignored, RFC 9110 13.1.3).
RESTARTABLE_SERVER_FN bool single_field(const request& req, std::string_view name, std::string_view& value) noexcept {
    int found = 0;
    for (const header& h : req.headers)
        if (iequals(h.name, name)) value = h.value, ++found;
    return found == 1;
}

RESTARTABLE_SERVER_FN bool date_field(const request& req, std::string_view name, std::time_t& t) noexcept {
    std::string_view value;
    return single_field(req, name, value) && parse_http_date(value, t);
}

/// precondition_status: RFC 9110 13.2.2 steps 1 to 4 for a GET or HEAD of an existing
/// file: 412 when If-Match or If-Unmodified-Since fails, 304 when If-None-Match or
/// If-Modified-Since finds the client's copy current, 0 to go on.
RESTARTABLE_SERVER_FN int precondition_status(const request& req, const file_validators& v) {
    std::time_t t = 0;
    if (req.has_header("If-Match")) {
        if (!any_field_matches(req, "If-Match", v.etag, true)) return 412;
    } else if (date_field(req, "If-Unmodified-Since", t) && v.last_modified > t) {
        return 412;
    }
    if (req.has_header("If-None-Match")) {
        if (any_field_matches(req, "If-None-Match", v.etag, false)) return 304;
    } else if (date_field(req, "If-Modified-Since", t) && v.last_modified <= t) {
        return 304;
    }
    return 0;
}

/// if_range_holds: whether a Range may be served (RFC 9110 13.1.5): true without If-Range;
/// with an entity tag, a strong match (never, against a weak ETag); with a date, equal to
/// Last-Modified and strong.
RESTARTABLE_SERVER_FN bool if_range_holds(const request& req, const file_validators& v) {
    if (!req.has_header("If-Range")) return true;
    std::string_view value;
    if (!single_field(req, "If-Range", value)) return false;
    value = trim_ows(value);
    if (value.substr(0, 1) == "\"" || value.substr(0, 2) == "W/") return etag_list_matches(value, v.etag, true);
    std::time_t t = 0;
    return parse_http_date(value, t) && v.date_is_strong && t == v.last_modified;
}

// --- ranges --

/// byte_range: the first and last (inclusive) byte of a part of a file.
struct byte_range {
    std::uint64_t first = 0;
    std::uint64_t last = 0;
};

/// range_kind: what parse_range() found.
enum class range_kind {
    whole,          ///< no usable Range: send the whole file (200)
    part,           ///< one satisfiable range: send it (206)
    unsatisfiable,  ///< one range that selects nothing: 416
};

/// parse_digits: a non-empty run of decimal digits, saturated at UINT64_MAX (a range
/// beyond any file is then still unsatisfiable, not wrapped around).
RESTARTABLE_SERVER_FN bool parse_digits(std::string_view s, std::uint64_t& out) noexcept {
    if (s.empty()) return false;
    std::uint64_t n = 0;
    for (char c : s) {
        if (c < '0' || c > '9') return false;
        const auto d = static_cast<std::uint64_t>(c - '0');
        n = n > (UINT64_MAX - d) / 10 ? UINT64_MAX : n * 10 + d;
    }
    out = n;
    return true;
}

/// parse_range: a Range value against a file of size bytes (RFC 9110 14.1.1, 14.1.2):
/// "bytes=a-b" (b clamped to the end), "bytes=a-", "bytes=-n" (the last n bytes). A range
/// starting at or past the end, or "-0", is unsatisfiable. Another unit, several ranges, a
/// malformed range or one with b < a give whole: the server may ignore them (14.2).
RESTARTABLE_SERVER_FN range_kind parse_range(std::string_view value, std::uint64_t size, byte_range& out) noexcept {
    const std::size_t eq = value.find('=');
    if (eq == std::string_view::npos || !iequals(value.substr(0, eq), "bytes")) return range_kind::whole;
    std::string_view set = value.substr(eq + 1), spec;
    int specs = 0;
    while (!set.empty()) {  // a list: empty elements are allowed and skipped (RFC 9110 5.6.1.2)
        const std::size_t comma = set.find(',');
        const std::string_view item = trim_ows(set.substr(0, comma));
        if (!item.empty()) spec = item, ++specs;
        set.remove_prefix(comma == std::string_view::npos ? set.size() : comma + 1);
    }
    const std::size_t dash = spec.find('-');
    if (specs != 1 || dash == std::string_view::npos) return range_kind::whole;
    std::uint64_t first = 0, last = UINT64_MAX;
    if (dash == 0) {  // suffix: the last n bytes
        if (!parse_digits(spec.substr(1), last)) return range_kind::whole;
        if (last == 0 || size == 0) return range_kind::unsatisfiable;
        out.first = size - std::min(last, size);
        out.last = size - 1;
        return range_kind::part;
    }
    if (!parse_digits(spec.substr(0, dash), first)) return range_kind::whole;
    if (dash + 1 < spec.size() && !parse_digits(spec.substr(dash + 1), last)) return range_kind::whole;
    if (last < first) return range_kind::whole;
    if (first >= size) return range_kind::unsatisfiable;
    out.first = first;
    out.last = std::min(last, size - 1);
    return range_kind::part;
}

// --- sending --

/// read_at: n bytes of fd at offset into out; false on an error or when the file ended
/// first (it shrank since fstat()).
RESTARTABLE_SERVER_FN bool read_at(int fd, std::uint64_t offset, std::size_t n, std::string& out) {
    out.resize(n);
    std::size_t got = 0;
    while (got < n) {
        const ssize_t r =
            retry_eintr([&] { return ::pread(fd, &out[got], n - got, static_cast<off_t>(offset + got)); });
        if (r <= 0) return false;
        got += static_cast<std::size_t>(r);
    }
    return true;
}

/// send_file: answers a GET or HEAD for the open regular file f: preconditions, range,
/// then the body, read into the response or streamed.
RESTARTABLE_SERVER_FN void send_file(const request& req, response& res, static_file& f, std::string_view type,
                      const static_options& opts) {
    const file_validators v = validators_of(f.st);
    res.set_header("ETag", v.etag);
    const std::string last_modified = format_http_date(v.last_modified);
    if (!last_modified.empty()) res.set_header("Last-Modified", last_modified);
    if (!opts.cache_control.empty()) res.set_header("Cache-Control", opts.cache_control);
    if (const int status = precondition_status(req, v)) {
        if (status == 304) res.status = 304;  // no body; ETag, Last-Modified, Cache-Control stay (RFC 9110 15.4.5)
        else error_response(res, status);
        return;
    }
    const auto size = static_cast<std::uint64_t>(f.st.st_size);
    byte_range r;
    std::string_view range;
    range_kind kind = range_kind::whole;
    // Range is defined for GET only (RFC 9110 14.2): HEAD reports the whole file.
    if (req.method == "GET" && single_field(req, "Range", range) && if_range_holds(req, v))
        kind = parse_range(range, size, r);
    res.set_header("Accept-Ranges", "bytes");
    if (kind == range_kind::unsatisfiable) {
        error_response(res, 416);
        std::string content_range = "bytes */";
        append_u64(content_range, size);
        res.set_header("Content-Range", content_range);
        return;
    }
    res.set_header("Content-Type", type);
    res.set_header("X-Content-Type-Options", "nosniff");  // browsers must not sniff HTML into a .txt
    std::uint64_t offset = 0, length = size;
    if (kind == range_kind::part) {
        res.status = 206;
        std::string content_range = "bytes ";
        append_u64(content_range, r.first), content_range += '-', append_u64(content_range, r.last);
        content_range += '/', append_u64(content_range, size);
        res.set_header("Content-Range", content_range);
        offset = r.first;
        length = r.last - r.first + 1;
    }
    if (length <= static_buffer_limit) {
        if (!read_at(f.fd.get(), offset, static_cast<std::size_t>(length), res.body)) {
            res.headers.clear();
            error_response(res, 500);
        }
        return;
    }
    // Sent as the socket takes it (sendfile(2) without TLS), holding no thread: a client
    // that reads slowly holds nothing but its socket. A file that shrank meanwhile ends
    // the connection short of Content-Length, so the client sees the truncation.
    const std::string content_type(type);
    res.set_file(content_type, std::move(f.fd), offset, length);
}

/// redirect_to_slash: 301 to the directory's URL with a trailing slash, the query kept.
RESTARTABLE_SERVER_FN void redirect_to_slash(const request& req, response& res) {
    // "//host/" or "/\host/" in Location would send a browser to another host.
    if (req.path.size() < 2 || req.path[1] == '/' || req.path[1] == '\\') return error_response(res, 404);
    std::string location(req.path);
    location += '/';
    if (!req.query.empty()) location += '?', location += req.query;
    error_response(res, 301);
    res.set_header("Location", location);
}

/// serve_static: the body of the handler static_files() returns.
RESTARTABLE_SERVER_FN void serve_static(const std::string& root, const static_options& opts, const request& req, response& res) {
    if (req.method != "GET" && req.method != "HEAD") {
        error_response(res, 405);
        res.set_header("Allow", "GET, HEAD");
        return;
    }
    std::string rel;
    bool dir_slash = false;
    if (const int status = decode_static_path(req.param("*"), opts.dotfiles, rel, dir_slash))
        return error_response(res, status);
    const unique_fd root_fd = open_root(root);
    static_file f;
    if (!root_fd || !open_beneath(root_fd.get(), rel, f)) return error_response(res, 404);
    std::string_view name = rel;  // what the Content-Type goes by
    if (S_ISDIR(f.st.st_mode)) {
        static_file index;
        if (opts.index.empty() || !open_beneath(f.fd.get(), opts.index, index) || !S_ISREG(index.st.st_mode))
            return error_response(res, 404);
        f = std::move(index);
        if (req.path.empty() || req.path.back() != '/') return redirect_to_slash(req, res);
        name = opts.index;
    } else if (dir_slash) {
        return error_response(res, 404);  // "file.txt/"
    }
    send_file(req, res, f, mime_type(name), opts);
}

}  // namespace detail

RESTARTABLE_SERVER_FN std::string_view mime_type(std::string_view filename) noexcept {
    const std::size_t dot = filename.rfind('.');
    const std::size_t slash = filename.rfind('/');
    if (dot == std::string_view::npos || (slash != std::string_view::npos && dot < slash))
        return "application/octet-stream";
    const std::string_view ext = filename.substr(dot + 1);
    for (const detail::mime_entry& m : detail::mime_types)
        if (detail::iequals(m.extension, ext)) return m.type;
    return "application/octet-stream";
}

RESTARTABLE_SERVER_FN handler static_files(std::string root, static_options opts) {
    return [root = std::move(root), opts = std::move(opts)](const request& req, response& res) {
        detail::serve_static(root, opts, req, res);
    };
}

// ----------------------------------------------------------------- forms --

namespace detail {

/// skip_ows: rest without its leading spaces and tabs.
RESTARTABLE_SERVER_FN void skip_ows(std::string_view& rest) noexcept {
    while (!rest.empty() && (rest.front() == ' ' || rest.front() == '\t')) rest.remove_prefix(1);
}

/// next_parameter: reads "; name=value" from the front of rest (a Content-Type or
/// Content-Disposition after its first item). value is a quoted-string (where a backslash
/// escapes only '"' and '\\', so a Windows path "C:\dir\a.txt" stays as sent) or a run of
/// bytes up to ';' or a space. Returns 1 with a parameter, 0 at the end, -1 when malformed.
RESTARTABLE_SERVER_FN int next_parameter(std::string_view& rest, std::string_view& name, std::string& value) {
    skip_ows(rest);
    if (rest.empty()) return 0;
    if (rest.front() != ';') return -1;
    rest.remove_prefix(1);
    skip_ows(rest);
    if (rest.empty()) return 0;  // a trailing ';'
    std::size_t n = 0;
    while (n < rest.size() && is_tchar(static_cast<unsigned char>(rest[n]))) ++n;
    name = rest.substr(0, n);
    rest.remove_prefix(n);
    skip_ows(rest);
    if (name.empty() || rest.empty() || rest.front() != '=') return -1;
    rest.remove_prefix(1);
    skip_ows(rest);
    value.clear();
    if (!rest.empty() && rest.front() == '"') {
        std::size_t i = 1;
        for (;; ++i) {
            if (i >= rest.size()) return -1;  // no closing quote
            const char c = rest[i];
            if (c == '"') break;
            if (c == '\\' && i + 1 < rest.size() && (rest[i + 1] == '"' || rest[i + 1] == '\\')) {
                value += rest[++i];
                continue;
            }
            if ((static_cast<unsigned char>(c) < 0x20 && c != '\t') || c == 0x7f) return -1;
            value += c;
        }
        rest.remove_prefix(i + 1);
        return 1;
    }
    n = 0;
    while (n < rest.size() && rest[n] != ';' && rest[n] != ' ' && rest[n] != '\t') {
        const unsigned char c = static_cast<unsigned char>(rest[n]);
        if (c < 0x20 || c == 0x7f || c == '"') return -1;
        ++n;
    }
    if (n == 0) return -1;
    value.assign(rest.substr(0, n));
    rest.remove_prefix(n);
    return 1;
}

/// is_bchar: whether c may appear in a multipart boundary (RFC 2046 5.1.1 bcharsnospace,
/// and the space).
RESTARTABLE_SERVER_FN bool is_bchar(char c) noexcept {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           std::string_view("'()+_,-./:=? ").find(c) != std::string_view::npos;
}

/// media_type_is: whether the Content-Type value's media type (before any ';') is type,
/// case-insensitively.
RESTARTABLE_SERVER_FN bool media_type_is(std::string_view content_type, std::string_view type) noexcept {
    return iequals(trim_ows(content_type.substr(0, content_type.find(';'))), type);
}

/// parse_part_head: the header fields of a part's head (each line ending in CRLF, the
/// empty line not included) into part. False when a line is not "name: value" (obs-fold,
/// a control byte), when Content-Disposition or Content-Type is repeated, or when
/// Content-Disposition is missing, not "form-data", or has no (or a repeated) name.
RESTARTABLE_SERVER_FN bool parse_part_head(std::string_view head, form_part& part) {
    bool disposition = false, has_name = false, has_type = false;
    while (!head.empty()) {
        const std::size_t eol = head.find("\r\n");
        const std::string_view line = head.substr(0, eol);
        head.remove_prefix(eol + 2);  // every line ends in CRLF
        const std::size_t colon = line.find(':');
        if (colon == std::string_view::npos || !is_token(line.substr(0, colon))) return false;
        const std::string_view name = line.substr(0, colon), value = trim_ows(line.substr(colon + 1));
        for (const char c : value)
            if ((static_cast<unsigned char>(c) < 0x20 && c != '\t') || c == 0x7f) return false;
        part.headers.emplace_back(std::string(name), std::string(value));
        if (iequals(name, "Content-Type")) {
            if (has_type) return false;
            has_type = true;
            part.content_type.assign(value);
        } else if (iequals(name, "Content-Disposition")) {
            if (disposition) return false;
            disposition = true;
            std::string_view rest = value;
            const std::string_view type = trim_ows(rest.substr(0, rest.find(';')));
            if (!iequals(type, "form-data")) return false;
            rest.remove_prefix(std::min(rest.size(), rest.find(';')));
            std::string_view pname;
            std::string pvalue;
            int r;
            while ((r = next_parameter(rest, pname, pvalue)) == 1) {
                if (iequals(pname, "name")) {
                    if (has_name) return false;
                    has_name = true;
                    part.name = std::move(pvalue);
                } else if (iequals(pname, "filename")) {
                    if (part.has_filename) return false;
                    part.has_filename = true;
                    part.filename = std::move(pvalue);
                }  // filename* and others: ignored
            }
            if (r < 0) return false;
        }
    }
    return disposition && has_name;
}

/// partial_delimiter: the length of the longest end of in that is the start of delimiter
/// (shorter than delimiter): bytes that may be a delimiter split between two pieces.
RESTARTABLE_SERVER_FN std::size_t partial_delimiter(std::string_view in, std::string_view delimiter) noexcept {
    // delimiter starts with CR, which it holds only there: only the last CR in reach can start it.
    const std::size_t reach = std::min(in.size(), delimiter.size() - 1);
    const std::size_t cr = in.substr(in.size() - reach).rfind('\r');
    if (cr == std::string_view::npos) return 0;
    const std::string_view tail = in.substr(in.size() - reach + cr);
    return delimiter.compare(0, tail.size(), tail) == 0 ? tail.size() : 0;
}

/// decode_form_part: a urlencoded name or value decoded into out; false for a bad %-escape.
RESTARTABLE_SERVER_FN bool decode_form_part(std::string_view in, std::string& out) {
    out.clear();
    out.reserve(in.size());
    for (std::size_t i = 0; i < in.size(); ++i) {
        const char c = in[i];
        if (c == '%') {
            if (i + 2 >= in.size()) return false;
            const int hi = hex_value(in[i + 1]), lo = hex_value(in[i + 2]);
            if (hi < 0 || lo < 0) return false;
            out += static_cast<char>(hi * 16 + lo);
            i += 2;
        } else {
            out += c == '+' ? ' ' : c;
        }
    }
    return true;
}

}  // namespace detail

RESTARTABLE_SERVER_FN multipart_parser::multipart_parser(std::string_view boundary, part_handler on_part,
                                                         part_data_handler on_data, multipart_limits limits)
    : delimiter_("\r\n--"), on_part_(std::move(on_part)), on_data_(std::move(on_data)), limits_(limits),
      carry_("\r\n") {  // a CRLF before the body: the first delimiter may open it
    delimiter_ += boundary;
    const multipart_limits defaults;
    if (limits_.max_parts == 0) limits_.max_parts = defaults.max_parts;
    if (limits_.max_part_header_bytes == 0) limits_.max_part_header_bytes = defaults.max_part_header_bytes;
    if (boundary.empty()) fail(make_error_code(errc::invalid_boundary), 0);
}

/// fail: the parse ends with ec; returns pos (for step()).
RESTARTABLE_SERVER_FN std::size_t multipart_parser::fail(std::error_code ec, std::size_t pos) {
    error_ = ec;
    state_ = state::failed;
    carry_.clear();
    carry_.shrink_to_fit();
    return pos;
}

/// step: runs the states over in; returns how many bytes it consumed (the rest must come
/// again, with more after it). On an error the state is failed.
RESTARTABLE_SERVER_FN std::size_t multipart_parser::step(std::string_view in) {
    std::size_t pos = 0;
    for (;;) {
        const std::string_view v = in.substr(pos);
        switch (state_) {
            case state::preamble:
            case state::data: {
                const std::size_t at = v.find(delimiter_);
                const std::size_t n = at != std::string_view::npos ? at : v.size() - detail::partial_delimiter(v, delimiter_);
                if (state_ == state::data && n > 0 && on_data_ && !on_data_(part_, v.substr(0, n)))
                    return fail(make_error_code(errc::canceled), pos);
                pos += n;
                if (at == std::string_view::npos) return pos;
                if (state_ == state::data && on_data_ && !on_data_(part_, std::string_view()))
                    return fail(make_error_code(errc::canceled), pos);
                pos += delimiter_.size();
                state_ = state::after_delimiter;
                padded_ = false;
                break;
            }
            case state::after_delimiter: {
                if (v.empty()) return pos;
                if (v[0] == ' ' || v[0] == '\t') {
                    padded_ = true;
                    ++pos;
                    break;
                }
                if (v.size() < 2) return pos;
                if (v[0] == '-' && v[1] == '-' && !padded_) {
                    pos += 2;
                    state_ = state::epilogue;
                    break;
                }
                if (v[0] != '\r' || v[1] != '\n') return fail(make_error_code(errc::malformed_multipart), pos);
                pos += 2;
                if (parts_ == limits_.max_parts) return fail(make_error_code(errc::too_many_parts), pos);
                state_ = state::head;
                head_scanned_ = 0;
                break;
            }
            case state::head: {
                std::size_t head_end;  // the head's fields, each with its CRLF
                if (v.size() >= 2 && v[0] == '\r' && v[1] == '\n') {
                    head_end = 0;  // no field at all
                } else {
                    // Searched from where the last look ended (less the 3 bytes an end may
                    // have begun with): a head arriving a byte at a time costs linear work.
                    const std::size_t blank = v.find("\r\n\r\n", head_scanned_ > 3 ? head_scanned_ - 3 : 0);
                    if (blank == std::string_view::npos) {
                        if (v.size() > limits_.max_part_header_bytes)
                            return fail(make_error_code(errc::part_header_too_large), pos);
                        head_scanned_ = v.size();
                        return pos;
                    }
                    head_end = blank + 2;
                }
                if (head_end + 2 > limits_.max_part_header_bytes)
                    return fail(make_error_code(errc::part_header_too_large), pos);
                part_ = form_part();
                part_.index = parts_;
                if (!detail::parse_part_head(v.substr(0, head_end), part_))
                    return fail(make_error_code(errc::malformed_multipart), pos);
                ++parts_;
                if (on_part_ && !on_part_(part_)) return fail(make_error_code(errc::canceled), pos);
                pos += head_end + 2;
                state_ = state::data;
                break;
            }
            case state::epilogue: return in.size();
            case state::failed: return pos;
        }
    }
}

RESTARTABLE_SERVER_FN std::error_code multipart_parser::feed(std::string_view bytes) {
    // Bytes are parsed where they lie; only what a piece leaves unconsumed (a partial
    // delimiter, a head still arriving) is copied, into carry_, and parsed with the start
    // of the next piece until the parse has consumed every byte carried; then the rest of
    // that piece is parsed where it lies again.
    constexpr std::size_t join_bytes = 4096;  // appended to carry_ at a time
    while (state_ != state::failed) {
        if (carry_.empty()) {
            const std::size_t n = step(bytes);
            if (state_ != state::failed) carry_.assign(bytes.substr(n));
            break;
        }
        const std::size_t old = carry_.size();
        const std::string_view join = bytes.substr(0, std::max(join_bytes, delimiter_.size()));
        carry_.append(join);
        const std::size_t n = step(carry_);
        if (state_ == state::failed) break;
        if (n >= old) {  // every carried byte consumed: go on with the piece itself
            carry_.clear();
            bytes.remove_prefix(n - old);
        } else {
            carry_.erase(0, n);
            bytes.remove_prefix(join.size());
        }
        if (bytes.empty()) break;
    }
    return error_;
}

RESTARTABLE_SERVER_FN std::error_code multipart_parser::finish() {
    if (state_ != state::failed && state_ != state::epilogue) fail(make_error_code(errc::multipart_incomplete), 0);
    return error_;
}

RESTARTABLE_SERVER_FN std::error_code multipart_boundary(std::string_view content_type, std::string& boundary) {
    boundary.clear();
    if (!detail::media_type_is(content_type, "multipart/form-data")) return make_error_code(errc::wrong_content_type);
    std::string_view rest = content_type.substr(std::min(content_type.size(), content_type.find(';')));
    std::string_view name;
    std::string value;
    int found = 0, r;
    while ((r = detail::next_parameter(rest, name, value)) == 1) {
        if (!detail::iequals(name, "boundary")) continue;
        if (++found == 1) boundary = value;
    }
    bool ok = r == 0 && found == 1 && !boundary.empty() && boundary.size() <= 70 && boundary.back() != ' ';
    for (const char c : boundary) ok = ok && detail::is_bchar(c);
    if (!ok) {
        boundary.clear();
        return make_error_code(errc::invalid_boundary);
    }
    return {};
}

RESTARTABLE_SERVER_FN std::error_code read_multipart(const request& req, const part_handler& on_part,
                                                     const part_data_handler& on_data, const multipart_limits& limits) {
    std::string boundary;
    if (const std::error_code ec = multipart_boundary(req.get_header("Content-Type"), boundary)) return ec;
    multipart_parser parser(boundary, on_part, on_data, limits);
    std::error_code parse_error;
    const std::error_code ec = req.read_body([&](std::string_view piece) {
        parse_error = parser.feed(piece);
        return !parse_error;
    });
    if (parse_error) return parse_error;
    if (ec) return ec;
    return parser.finish();
}

RESTARTABLE_SERVER_FN std::error_code parse_form(std::string_view body, form_fields& fields, const form_limits& limits) {
    fields.clear();
    const form_limits defaults;
    const std::size_t max_fields = limits.max_fields != 0 ? limits.max_fields : defaults.max_fields;
    const std::size_t max_bytes = limits.max_bytes != 0 ? limits.max_bytes : defaults.max_bytes;
    if (body.size() > max_bytes) return make_error_code(errc::form_too_large);
    while (!body.empty()) {
        const std::size_t amp = body.find('&');
        const std::string_view field = body.substr(0, amp);
        body.remove_prefix(amp == std::string_view::npos ? body.size() : amp + 1);
        if (field.empty()) continue;
        if (fields.size() == max_fields) {
            fields.clear();
            return make_error_code(errc::form_too_large);
        }
        const std::size_t eq = field.find('=');
        fields.emplace_back();
        if (!detail::decode_form_part(field.substr(0, eq), fields.back().first) ||
            (eq != std::string_view::npos && !detail::decode_form_part(field.substr(eq + 1), fields.back().second))) {
            fields.clear();
            return make_error_code(errc::malformed_form);
        }
    }
    return {};
}

RESTARTABLE_SERVER_FN std::error_code read_form(const request& req, form_fields& fields, const form_limits& limits) {
    fields.clear();
    if (!detail::media_type_is(req.get_header("Content-Type"), "application/x-www-form-urlencoded"))
        return make_error_code(errc::wrong_content_type);
    if (!req.body.empty()) return parse_form(req.body, fields, limits);  // a buffered route
    const std::size_t max_bytes = limits.max_bytes != 0 ? limits.max_bytes : form_limits().max_bytes;
    std::string body;
    bool too_large = false;
    const std::error_code ec = req.read_body([&](std::string_view piece) {
        too_large = piece.size() > max_bytes - body.size();
        if (!too_large) body.append(piece);
        return !too_large;
    });
    if (too_large) return make_error_code(errc::form_too_large);
    if (ec) return ec;
    return parse_form(body, fields, limits);
}

RESTARTABLE_SERVER_FN std::optional<std::string_view> form_value(const form_fields& fields,
                                                                 std::string_view name) noexcept {
    for (const auto& field : fields)
        if (field.first == name) return std::string_view(field.second);
    return std::nullopt;
}

RESTARTABLE_SERVER_FN int error_status(const std::error_code& ec) noexcept {
    if (ec == std::errc::timed_out) return 408;
    if (ec.category() != error_category()) return 500;
    switch (static_cast<errc>(ec.value())) {
        case errc::body_too_large:
        case errc::part_header_too_large:
        case errc::too_many_parts:
        case errc::form_too_large: return 413;
        case errc::wrong_content_type: return 415;
        case errc::malformed_body:
        case errc::body_incomplete:
        case errc::invalid_boundary:
        case errc::malformed_multipart:
        case errc::multipart_incomplete:
        case errc::malformed_form:
        case errc::canceled: return 400;
        default: return 500;
    }
}

}  // namespace restartable_server

#undef RESTARTABLE_SERVER_FN
#endif  // the implementation

#endif  // C++17
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
