// device_ui.cpp - the web UI of a device: a live status view over a WebSocket, a firmware
// upload with progress, and a button that restarts the server in-process.
//
//   build:  g++ -std=c++17 -O2 -I. examples/device_ui/device_ui.cpp -o device_ui -pthread
//   run:    ./device_ui [--port 8080] FIRMWARE_DIR   prints "listening on http://127.0.0.1:8080"
//   open:   http://127.0.0.1:8080/ in a browser
//
//   GET  /          the page (page.hpp: HTML and plain JavaScript, compiled in)
//   GET  /ws        WebSocket: the server pushes JSON, one object per message:
//                     {"type":"status","run":R,"uptime_s":U,"requests":N}  at once, then every second
//                     {"type":"progress","bytes":B,"total":T}   an upload, as its bytes are stored
//                     {"type":"stored","bytes":B,"sha256":"HEX"} or {"type":"failed","error":"..."}
//   POST /firmware  multipart/form-data with a file in the field "firmware", streamed to
//                   FIRMWARE_DIR/firmware.bin (via firmware.bin.part, renamed once whole):
//                   200 "stored B bytes sha256 HEX"; 409 while another upload runs
//   POST /restart   server::restart(): a new run, same port, nothing refused (202)
//
// Stdout: "listening on http://HOST:PORT", then "stored B bytes sha256 HEX" after each
// upload, "restarted, run R" after each restart, "stopped" after SIGINT or SIGTERM (exit 0).
// `curl -F firmware=@image.bin http://127.0.0.1:8080/firmware` uploads from a shell.
//
// What to watch: the uptime ticks; the run number is the restart count plus one. Upload a
// file: the bar moves as the server stores it. Press "restart": the page's WebSocket is
// closed with 1012 (Service Restart) and the page reconnects, within a quarter second, to
// the new run - same process (the uptime goes on), same port, run number + 1. An upload in
// flight is not cut by a restart: it finishes on the old run (see drain_timeout below),
// and its progress reaches the reconnected page, because the list of sockets is the
// program's, not a run's.

#include "restartable_server.hpp"
#include "../sha256.hpp"
#include "page.hpp"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace rs = restartable_server;
using namespace std::chrono_literals;

namespace {

int usage(const char* argv0) {
    std::fprintf(stderr, "usage: %s [--host 127.0.0.1] [--port 8080] FIRMWARE_DIR\n", argv0);
    return 2;
}

// json_text: s as a JSON string literal (for an error message, which could hold anything).
std::string json_text(std::string_view s) {
    std::string out = "\"";
    for (const char c : s) {
        if (c == '"' || c == '\\') {
            out += '\\';
            out += c;
        } else if (static_cast<unsigned char>(c) < 0x20) {
            char esc[8];
            std::snprintf(esc, sizeof esc, "\\u%04x", static_cast<unsigned>(c));
            out += esc;
        } else {
            out += c;
        }
    }
    return out + "\"";
}

// same_origin: a browser says which page sent a request in Origin ("http://host:port");
// a state-changing POST from another site's page (a form aimed at the device) is refused.
// No Origin: not a browser (curl), or not cross-site. The WebSocket route does the same
// check itself (see websocket_handlers::allowed_origins below).
bool same_origin(const rs::request& req) {
    if (!req.has_header("Origin")) return true;
    std::string_view origin = req.get_header("Origin");
    for (std::string_view scheme : {"http://", "https://"})
        if (origin.substr(0, scheme.size()) == scheme) return origin.substr(scheme.size()) == req.get_header("Host");
    return false;
}

// sockets: the open WebSockets, each with the run that opened it. The program's, not a
// run's: a restart closes the old run's sockets (on_close removes them) and the pages
// reconnect into the same list.
class sockets {
public:
    void add(const rs::websocket& ws, int run) {
        std::lock_guard<std::mutex> lock(mutex_);
        list_.push_back({ws, run});
    }
    void remove(std::uint64_t id) {
        std::lock_guard<std::mutex> lock(mutex_);
        list_.erase(std::remove_if(list_.begin(), list_.end(), [id](const entry& e) { return e.ws.id() == id; }),
                    list_.end());
    }
    // broadcast: sends message(run of the socket) to every socket, from any thread, and
    // never blocks: send_text() only queues the frame (the engine's workers write it as
    // each socket takes it), and it refuses, at once, to queue more for a socket that
    // already holds options::max_send_buffer unsent - a tab in the background, a phone on a
    // bad link. That socket just misses this update: the next one carries the whole state.
    // A socket that has closed is dropped here (on_close drops it too: whichever is first).
    // The list is copied under the lock and sent to outside it, so this never holds our
    // lock while calling the library, which may be calling on_close (our lock) meanwhile.
    template <class Message>
    void broadcast(const Message& message) {
        std::vector<entry> now;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            now = list_;
        }
        for (entry& e : now) {
            const std::error_code ec = e.ws.send_text(message(e.run));
            if (ec == rs::errc::send_buffer_full) {
                skipped_.fetch_add(1);  // a slow reader: skip it this time
            } else if (ec == rs::errc::closed) {
                remove(e.ws.id());  // it went away
            }
        }
    }
    unsigned long skipped() const { return skipped_.load(); }

private:
    struct entry {
        rs::websocket ws;  // a handle: copies are the same socket
        int run;
    };
    std::mutex mutex_;
    std::vector<entry> list_;
    std::atomic<unsigned long> skipped_{0};
};

// upload_file: FIRMWARE_DIR/firmware.bin.part while an upload runs. Each piece of the file
// is written as it arrives: the body is never whole in memory (the server reads it in
// 64 KiB pieces, the form parser keeps at most a part's head). Renamed to firmware.bin
// once whole and on disk; removed when the upload fails, so firmware.bin is always a
// complete image.
class upload_file {
public:
    explicit upload_file(std::string dir) : part_(dir + "/firmware.bin.part"), final_(dir + "/firmware.bin") {}
    ~upload_file() {
        if (fd_ >= 0) ::close(fd_);
        if (!kept_) ::unlink(part_.c_str());
    }
    upload_file(const upload_file&) = delete;
    upload_file& operator=(const upload_file&) = delete;

    bool open() {
        fd_ = ::open(part_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        return remember(fd_ >= 0);
    }
    bool write(std::string_view data) {
        while (!data.empty()) {
            const ssize_t n = ::write(fd_, data.data(), data.size());
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) return remember(false);
            data.remove_prefix(static_cast<std::size_t>(n));
        }
        return true;
    }
    // keep: on disk (fsync) under its final name; false if that failed.
    bool keep() {
        if (!remember(::fsync(fd_) == 0) || !remember(::close(std::exchange(fd_, -1)) == 0) ||
            !remember(::rename(part_.c_str(), final_.c_str()) == 0))
            return false;
        kept_ = true;
        return true;
    }
    // error: what failed, as strerror says it.
    std::string error() const { return std::strerror(errno_); }

private:
    bool remember(bool ok) {
        if (!ok) errno_ = errno;
        return ok;
    }
    std::string part_, final_;
    int fd_ = -1;
    int errno_ = 0;
    bool kept_ = false;
};

}  // namespace

int main(int argc, char** argv) {
    // ------------------------------------------------------------ arguments --
    std::string host = "127.0.0.1", dir;
    unsigned long port = 8080;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if ((arg == "--port" || arg == "--host") && i + 1 < argc) {
            const char* value = argv[++i];
            char* end = nullptr;
            if (arg == "--host") host = value;
            else if ((port = std::strtoul(value, &end, 10)) > 65535 || *value < '0' || *value > '9' || *end != '\0')
                return usage(argv[0]);
        } else if (dir.empty() && arg.rfind("--", 0) != 0) {
            dir = arg;
        } else {
            return usage(argv[0]);
        }
    }
    if (dir.empty()) return usage(argv[0]);

    // Signals: blocked in every thread, taken by sigwait() at the end (see signals.cpp).
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &signals, nullptr);

    const auto started = std::chrono::steady_clock::now();
    std::atomic<int> run{1};              // the restart count plus one
    std::atomic<unsigned long> requests{0};
    sockets clients;

    // -------------------------------------------------------------- options --
    // The budget. What the UI may cost the device, whatever the browsers do:
    //   - per WebSocket, at most max_send_buffer bytes queued for a tab that does not read.
    //     A status message is ~80 bytes, so 64 KiB is minutes of updates; past it a send is
    //     refused (errc::send_buffer_full) and that tab skips updates until it reads again.
    //   - per upload, one worker thread (read_multipart() blocks on the socket while the
    //     body flows; the engine lets another worker stand in for it), its 64 KiB read
    //     buffer and the form parser's part head (16 KiB at most): never the file. At most
    //     one upload at a time (409 for a second), at most max_body_bytes long (413 past it).
    //   - a restart or stop gives an upload in flight drain_timeout to finish on the old
    //     run; one that needs longer is cut (the client sees its connection close, the
    //     .part file is removed). 30 s is a firmware image over a slow link.
    rs::options opts;
    opts.listener = rs::tcp_listener(host, static_cast<std::uint16_t>(port));
    opts.max_send_buffer = 64 * 1024;
    opts.max_body_bytes = 64 * 1024 * 1024;  // the largest firmware image taken
    opts.drain_timeout = 30s;
    opts.worker_threads = 4;  // threads that serve at most (an upload holds one while it flows)
    // requests served: every response, whichever route (404s and WebSocket handshakes too).
    opts.access_log = [&requests](const rs::access_entry&) { requests.fetch_add(1); };
    rs::server srv(std::move(opts));

    // A restart begins (on the control thread, before any connection of the new run is
    // served): sockets opened from now on belong to the next run.
    srv.on_stop([&run](rs::stop_reason why) {
        if (why == rs::stop_reason::restart) run.fetch_add(1);
    });

    auto status = [&](int socket_run) {
        const auto uptime = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() - started);
        return "{\"type\":\"status\",\"run\":" + std::to_string(socket_run) +
               ",\"uptime_s\":" + std::to_string(uptime.count()) + ",\"requests\":" + std::to_string(requests.load()) +
               "}";
    };

    // ----------------------------------------------------------------- routes --
    srv.get("/", [](const rs::request&, rs::response& res) {
        res.set_header("Cache-Control", "no-cache");
        res.set_content(device_ui::page, "text/html; charset=utf-8");
    });

    rs::websocket_handlers ws;
    // The origin check is on by default: allowed_origins is empty, so a browser handshake
    // whose Origin is not this page's own (scheme-less, equal to Host) is refused with 403
    // - another web site's script cannot open /ws from its visitors' browsers (cross-site
    // WebSocket hijacking). A UI served from elsewhere would be listed:
    //     ws.allowed_origins = {"https://ui.example:8443"};
    // Clients that send no Origin (curl, Python) are not browsers and are not checked.
    ws.on_open = [&](rs::websocket& sock, const rs::request&) {
        const int this_run = run.load();  // the run serving this socket
        clients.add(sock, this_run);
        sock.send_text(status(this_run));  // at once: the page has values before the next tick
    };
    ws.on_close = [&](rs::websocket& sock, std::uint16_t, std::string_view) {
        clients.remove(sock.id());  // may run on the control thread: short
    };
    srv.websocket("/ws", std::move(ws));

    std::atomic<bool> uploading{false};
    srv.post(
        "/firmware",
        [&](const rs::request& req, rs::response& res) {
            if (!same_origin(req)) {
                res.status = 403;
                res.set_content("cross-site request refused\n", "text/plain");
                return;
            }
            if (uploading.exchange(true)) {
                res.status = 409;
                res.set_content("another upload is in progress\n", "text/plain");
                return;
            }
            struct done_uploading {
                std::atomic<bool>& flag;
                ~done_uploading() { flag.store(false); }
            } guard{uploading};

            // total: the whole body as sent (the file plus the form's framing), for the
            // progress bar; 0 for a chunked upload (browsers send a length).
            const std::string_view length = req.get_header("Content-Length");
            const unsigned long long total = length.empty() ? 0 : std::strtoull(std::string(length).c_str(), nullptr, 10);
            upload_file file(dir);
            examples::sha256 hash;
            unsigned long long stored = 0, reported = 0;
            auto last_report = std::chrono::steady_clock::now();
            bool have_file = false, second_file = false, write_failed = false;
            auto failed = [&](int status_code, const std::string& why) {
                res.status = status_code;
                res.set_content(why + "\n", "text/plain");
                const std::string msg = "{\"type\":\"failed\",\"error\":" + json_text(why) + "}";
                clients.broadcast([&msg](int) { return msg; });
            };
            if (!file.open()) return failed(500, "cannot create the file: " + file.error());

            const std::error_code ec = rs::read_multipart(
                req,
                [&](const rs::form_part& part) {
                    if (part.name != "firmware" || !part.has_filename) return true;  // other fields: read past
                    if (have_file) {  // one image per upload
                        second_file = true;
                        return false;  // stops reading: read_multipart() returns errc::canceled
                    }
                    have_file = true;
                    return true;
                },
                [&](const rs::form_part& part, std::string_view data) {
                    if (part.name != "firmware" || !part.has_filename || data.empty()) return true;
                    if (!file.write(data)) {
                        write_failed = true;
                        return false;  // stops reading: read_multipart() returns errc::canceled
                    }
                    hash.update(data);
                    stored += data.size();
                    // Progress: every MiB, or every half second on a slow link, whichever
                    // comes first. The same broadcast as the status thread's: it never
                    // blocks this upload on a slow tab.
                    const auto now = std::chrono::steady_clock::now();
                    if (stored - reported >= 1024 * 1024 || now - last_report >= 500ms) {
                        reported = stored;
                        last_report = now;
                        const std::string msg = "{\"type\":\"progress\",\"bytes\":" + std::to_string(stored) +
                                                ",\"total\":" + std::to_string(total) + "}";
                        clients.broadcast([&msg](int) { return msg; });
                    }
                    return true;
                });
            // Our own reasons to stop first: error_status() answers errc::canceled (a
            // handler returned false) with 400, which would blame the client for our disk.
            if (write_failed) return failed(500, "cannot write the file: " + file.error());
            if (second_file) return failed(400, "more than one file in the form field \"firmware\"");
            if (ec) return failed(rs::error_status(ec), "upload failed: " + ec.message());
            if (!have_file) return failed(400, "no file in the form field \"firmware\"");
            if (!file.keep()) return failed(500, "cannot store the file: " + file.error());

            const std::string sha = hash.hex();
            const std::string msg =
                "{\"type\":\"stored\",\"bytes\":" + std::to_string(stored) + ",\"sha256\":\"" + sha + "\"}";
            clients.broadcast([&msg](int) { return msg; });
            const std::string line = "stored " + std::to_string(stored) + " bytes sha256 " + sha;
            std::printf("%s\n", line.c_str());
            std::fflush(stdout);
            res.set_content(line + "\n", "text/plain");
        },
        rs::body_mode::streamed);

    // A restart from the page. What it does to the page: restart() builds the next run and
    // hands it the listening socket (never closed: nothing is refused); the old run sends
    // its WebSockets close 1012 (Service Restart), and each page reconnects after its short
    // pause - to the new run, already accepting. This response is sent by the old run.
    srv.post("/restart", [&](const rs::request& req, rs::response& res) {
        if (!same_origin(req)) {
            res.status = 403;
            res.set_content("cross-site request refused\n", "text/plain");
            return;
        }
        std::error_code ec;
        srv.restart(ec);  // from a handler too: returns once the new run serves
        if (ec) {
            res.status = 500;
            res.set_content("restart failed: " + ec.message() + "\n", "text/plain");
            return;
        }
        std::printf("restarted, run %d\n", run.load());
        std::fflush(stdout);
        res.status = 202;
        res.set_content("restarted\n", "text/plain");
    });

    // ------------------------------------------------------------------ run --
    std::error_code ec;
    srv.start(ec);
    if (ec) {
        std::fprintf(stderr, "device_ui: cannot listen on %s:%lu: %s\n", host.c_str(), port, ec.message().c_str());
        return 1;
    }
    std::printf("listening on http://%s:%u\n", host.c_str(), static_cast<unsigned>(srv.port()));
    std::fflush(stdout);

    // The status thread: once a second, the status to every open WebSocket. It never
    // waits for a browser - broadcast() only queues - so one frozen tab cannot delay the
    // others' updates, nor this thread's stop.
    std::mutex tick_mutex;
    std::condition_variable tick;
    bool quit = false;
    std::thread status_thread([&] {
        std::unique_lock<std::mutex> lock(tick_mutex);
        while (!tick.wait_for(lock, 1s, [&quit] { return quit; })) {
            lock.unlock();
            clients.broadcast(status);
            lock.lock();
        }
    });

    int sig = 0;
    sigwait(&signals, &sig);
    srv.stop();  // WebSockets get close 1001 (Going Away); an upload in flight may finish
    {
        std::lock_guard<std::mutex> lock(tick_mutex);
        quit = true;
    }
    tick.notify_all();
    status_thread.join();
    std::printf("stopped\n");
    return 0;
}
