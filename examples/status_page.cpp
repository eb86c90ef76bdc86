// status_page.cpp - the live status page of an embedded tool: one HTML page with live values
// pushed by server-sent events, and a button that restarts the server in-process.
//
//   build:  g++ -std=c++17 -O2 -I. examples/status_page.cpp -o status_page -pthread
//   run:    ./status_page [--port 8080]      prints "listening on http://127.0.0.1:8080"
//   open:   http://127.0.0.1:8080/ in a browser
//
//   GET  /         the page: HTML, CSS and JavaScript inline (a device has no CDN)
//   GET  /events   text/event-stream: {"run":R,"uptime_s":U,"requests":N} every second
//   POST /restart  server::restart(): a new run, same port, nothing refused
//
// What to watch: the values tick every second. Press "restart": the run number goes up
// while the uptime does not start over - the server restarted, the process did not. The
// streams of the old run end at once (a restart ends every push stream, after what is
// queued) and the page's EventSource reconnects by itself, to the new run.
// `curl -N http://127.0.0.1:8080/events` shows the raw stream. Ctrl-C stops the server.
//
// The streams hold no thread: each is a push stream (response::push_stream) that one
// ticker thread writes to, so a hundred open pages cost what one does.

#include "restartable_server.hpp"

#include <signal.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace rs = restartable_server;
using namespace std::chrono_literals;

namespace {

const char* const page = R"HTML(<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>status</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
  body { font: 16px system-ui, sans-serif; margin: 2em; }
  dl { display: grid; grid-template-columns: max-content auto; gap: .4em 1.5em; }
  dd { margin: 0; font-weight: bold; font-variant-numeric: tabular-nums; }
  #link.down { color: #b00; }
</style></head>
<body>
<h1>status</h1>
<dl>
  <dt>run</dt><dd id="run">-</dd>
  <dt>uptime</dt><dd id="uptime">-</dd>
  <dt>requests served</dt><dd id="requests">-</dd>
  <dt>events</dt><dd id="link">connecting</dd>
</dl>
<button id="restart">restart</button>
<script>
  function show(id, text) { document.getElementById(id).textContent = text; }
  const events = new EventSource('/events');
  events.onopen = () => { show('link', 'live'); document.getElementById('link').className = ''; };
  events.onerror = () => {  // the stream ended or broke: EventSource reconnects by itself
    show('link', 'reconnecting'); document.getElementById('link').className = 'down';
  };
  events.onmessage = (e) => {
    const s = JSON.parse(e.data);
    show('run', s.run); show('uptime', s.uptime_s + ' s'); show('requests', s.requests);
  };
  document.getElementById('restart').onclick = () => fetch('/restart', { method: 'POST' });
</script>
</body></html>
)HTML";

}  // namespace

int main(int argc, char** argv) {
    unsigned long port = 8080;
    char* end = nullptr;
    if (argc == 3 && std::string(argv[1]) == "--port") port = std::strtoul(argv[2], &end, 10);
    if ((argc != 1 && (argc != 3 || !end || *end != '\0')) || port > 65535) {
        std::fprintf(stderr, "usage: %s [--port 8080]\n", argv[0]);
        return 2;
    }
    sigset_t signals;  // see examples/signals.cpp
    sigemptyset(&signals);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &signals, nullptr);

    const auto started = std::chrono::steady_clock::now();
    std::atomic<int> run{1};
    std::atomic<long> requests{0};

    rs::server srv;
    srv.set_listener(rs::tcp_listener("127.0.0.1", static_cast<std::uint16_t>(port)));
    // A restart begins: whatever is served from now on belongs to the next run.
    srv.on_stop([&run](rs::stop_reason why) {
        if (why == rs::stop_reason::restart) run.fetch_add(1);
    });

    srv.get("/", [&](const rs::request&, rs::response& res) {
        requests.fetch_add(1);
        res.set_content(page, "text/html; charset=utf-8");
    });

    // /events: the values as server-sent events, now and then every second (the ticker
    // below writes to every open stream).
    auto status_event = [&](int this_run) {
        auto uptime = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() - started);
        return "data: {\"run\":" + std::to_string(this_run) + ",\"uptime_s\":" + std::to_string(uptime.count()) +
               ",\"requests\":" + std::to_string(requests.load()) + "}\n\n";
    };
    struct subscriber {
        rs::stream_handle stream;
        int run;  // the run serving this stream
    };
    std::mutex subscribers_mutex;
    std::condition_variable ticker_cv;
    std::vector<subscriber> subscribers;  // under subscribers_mutex
    bool quit = false;                    // under subscribers_mutex: the ticker ends
    srv.get("/events", [&](const rs::request&, rs::response& res) {
        requests.fetch_add(1);
        const int this_run = run.load();
        res.set_header("Cache-Control", "no-cache");
        rs::stream_handle stream = res.push_stream("text/event-stream");
        // "retry": reconnect 1 s after the stream ends (the browser's default is ~3 s).
        stream.write("retry: 1000\n\n" + status_event(this_run));
        std::lock_guard<std::mutex> lock(subscribers_mutex);
        subscribers.push_back({stream, this_run});
    });

    srv.post("/restart", [&](const rs::request&, rs::response& res) {
        requests.fetch_add(1);
        std::error_code ec;
        srv.restart(ec);  // from a handler too: this response is sent by the old run
        if (ec) {
            res.status = 500;
            res.set_content("restart failed: " + ec.message() + "\n", "text/plain");
            return;
        }
        std::printf("restarted %d\n", run.load());
        std::fflush(stdout);
        res.status = 202;
        res.set_content("restarted\n", "text/plain");
    });

    std::error_code ec;
    srv.start(ec);
    if (ec) {
        std::fprintf(stderr, "cannot listen on port %lu: %s\n", port, ec.message().c_str());
        return 1;
    }
    std::printf("listening on http://127.0.0.1:%u\n", static_cast<unsigned>(srv.port()));
    std::fflush(stdout);

    std::thread ticker([&] {  // one tick a second for every open stream
        std::unique_lock<std::mutex> lock(subscribers_mutex);
        while (!ticker_cv.wait_for(lock, 1s, [&] { return quit; })) {
            for (auto it = subscribers.begin(); it != subscribers.end();) {
                if (it->stream.write(status_event(it->run)) == rs::errc::closed)  // the page went away, or its run ended
                    it = subscribers.erase(it);
                else
                    ++it;  // (or send_buffer_full: that page misses a tick)
            }
        }
    });

    int sig = 0;
    sigwait(&signals, &sig);
    srv.stop();
    {
        std::lock_guard<std::mutex> lock(subscribers_mutex);
        quit = true;
    }
    ticker_cv.notify_all();
    ticker.join();
    std::printf("stopped\n");
    return 0;
}
