// ws_server.cpp - the server of figures 16-20: WebSocket, streams that hold no thread, and
// a streamed multipart upload, on restartable_server with default options except
// max_body_bytes (1 GiB, for figure 19's 100 MiB upload).
//
//   ws_server [PORT] [FILES_DIR] [WORKER_THREADS]
//
//   GET /hello        200 "Hello, World!" (text/plain)
//   WS  /echo         each message back as it came (text or binary): figures 16, 17
//   WS  /bcast        a message "go" from any client wakes the broadcast thread, which
//                     sends one text message to every WebSocket open on /bcast, one
//                     websocket::send_text() call each: "b SEQ T0" padded with '.' to 32
//                     bytes, T0 the steady clock (CLOCK_MONOTONIC, ns) just before the
//                     first send; then "sent SEQ N ERRORS US" on stdout (figure 18)
//   GET /events       a push stream (text/event-stream): a thread writes "data: tick N"
//                     to every open one every 50 ms (figure 20)
//   GET /files/*      static_files(FILES_DIR): set_file, sendfile(2) (figure 20)
//   POST /upload      body_mode::streamed; read_multipart(), every part's data summed
//                     (64-bit words, a checksum that touches every byte) and discarded;
//                     200 "bytes N parts P sum S" (figure 19)
// Listens on 127.0.0.1:PORT (0, the default: a free port); prints "port N" once accepting;
// serves until killed.
#include "restartable_server.hpp"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace rs = restartable_server;

namespace {

// /bcast: the open WebSockets, and the broadcast thread's trigger.
std::mutex bcast_mutex;
std::condition_variable bcast_cv;
std::vector<rs::websocket> bcast_sockets;
unsigned long bcast_requested = 0;

// /events: the open push streams.
std::mutex events_mutex;
std::vector<std::pair<std::uint64_t, rs::stream_handle>> events_streams;
std::uint64_t events_next_id = 0;

void broadcast_thread() {
    unsigned long done = 0;
    std::vector<rs::websocket> targets;
    for (;;) {
        {
            std::unique_lock<std::mutex> lock(bcast_mutex);
            bcast_cv.wait(lock, [&] { return bcast_requested > done; });
            done = bcast_requested;
            targets = bcast_sockets;  // the snapshot is taken before the clock starts
        }
        const auto t0 = std::chrono::steady_clock::now();
        std::string msg = "b " + std::to_string(done) + " " +
                          std::to_string(std::chrono::duration_cast<std::chrono::nanoseconds>(t0.time_since_epoch()).count());
        if (msg.size() < 32) msg.resize(32, '.');
        std::size_t errors = 0;
        for (rs::websocket& ws : targets)
            if (ws.send_text(msg)) ++errors;
        const double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
        std::printf("sent %lu %zu %zu %.0f\n", done, targets.size(), errors, us);
        std::fflush(stdout);
    }
}

void events_thread() {
    unsigned long tick = 0;
    for (;;) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        const std::string event = "data: tick " + std::to_string(++tick) + "\n\n";
        std::lock_guard<std::mutex> lock(events_mutex);
        for (auto& s : events_streams) s.second.write(event);  // send_buffer_full: this tick is skipped
    }
}

}  // namespace

int main(int argc, char** argv) {
    const int port = argc > 1 ? std::atoi(argv[1]) : 0;
    const std::string files = argc > 2 ? argv[2] : ".";
    rs::options opts;
    opts.listener = rs::tcp_listener("127.0.0.1", static_cast<std::uint16_t>(port));
    opts.max_body_bytes = std::size_t{1} << 30;
    if (argc > 3) opts.worker_threads = static_cast<std::size_t>(std::atoi(argv[3]));  // (by hand: default options)
    rs::server srv(std::move(opts));
    srv.get("/hello", [](const rs::request&, rs::response& res) { res.set_content("Hello, World!", "text/plain"); });

    rs::websocket_handlers echo;
    echo.on_message = [](rs::websocket& ws, std::string_view data, bool text) {
        if (text)
            ws.send_text(data);
        else
            ws.send_binary(data);
    };
    srv.websocket("/echo", std::move(echo));

    rs::websocket_handlers bcast;
    bcast.on_open = [](rs::websocket& ws, const rs::request&) {
        std::lock_guard<std::mutex> lock(bcast_mutex);
        bcast_sockets.push_back(ws);
    };
    bcast.on_message = [](rs::websocket&, std::string_view data, bool) {
        if (data != "go") return;
        {
            std::lock_guard<std::mutex> lock(bcast_mutex);
            ++bcast_requested;
        }
        bcast_cv.notify_one();
    };
    bcast.on_close = [](rs::websocket& ws, std::uint16_t, std::string_view) {
        std::lock_guard<std::mutex> lock(bcast_mutex);
        const std::uint64_t id = ws.id();
        bcast_sockets.erase(std::remove_if(bcast_sockets.begin(), bcast_sockets.end(),
                                           [id](const rs::websocket& w) { return w.id() == id; }),
                            bcast_sockets.end());
    };
    srv.websocket("/bcast", std::move(bcast));

    srv.get("/events", [](const rs::request&, rs::response& res) {
        std::lock_guard<std::mutex> lock(events_mutex);
        const std::uint64_t id = ++events_next_id;
        rs::stream_handle h = res.push_stream("text/event-stream", [id] {
            std::lock_guard<std::mutex> lock(events_mutex);
            events_streams.erase(std::remove_if(events_streams.begin(), events_streams.end(),
                                                [id](const auto& s) { return s.first == id; }),
                                 events_streams.end());
        });
        h.write("retry: 1000\n\n");
        events_streams.emplace_back(id, std::move(h));
    });

    srv.get("/files/*", rs::static_files(files));

    srv.post(
        "/upload",
        [](const rs::request& req, rs::response& res) {
            std::uint64_t bytes = 0, sum = 0;
            std::size_t parts = 0;
            const std::error_code ec = rs::read_multipart(
                req,
                [&](const rs::form_part&) {
                    ++parts;
                    return true;
                },
                [&](const rs::form_part&, std::string_view data) {
                    bytes += data.size();
                    std::size_t i = 0;
                    for (; i + 8 <= data.size(); i += 8) {
                        std::uint64_t w;
                        std::memcpy(&w, data.data() + i, 8);
                        sum += w;
                    }
                    for (; i < data.size(); ++i) sum += static_cast<unsigned char>(data[i]);
                    return true;
                });
            if (ec) {
                res.status = rs::error_status(ec);
                res.set_content(ec.message() + "\n", "text/plain");
                return;
            }
            res.set_content("bytes " + std::to_string(bytes) + " parts " + std::to_string(parts) + " sum " +
                                std::to_string(sum) + "\n",
                            "text/plain");
        },
        rs::body_mode::streamed);

    std::thread(broadcast_thread).detach();
    std::thread(events_thread).detach();
    std::error_code ec;
    srv.start(ec);
    if (ec) {
        std::fprintf(stderr, "ws_server: %s\n", ec.message().c_str());
        return 1;
    }
    std::printf("port %u\n", static_cast<unsigned>(srv.port()));
    std::fflush(stdout);
    srv.wait();
    return 0;
}
