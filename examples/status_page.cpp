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
// stream of the old run ends at once (body_writer::wait_for_stop wakes it) and the page's
// EventSource reconnects by itself, to the new run. `curl -N http://127.0.0.1:8080/events`
// shows the raw stream. Ctrl-C stops the server.

#include "restartable_server.hpp"

#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

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

    srv.get("/events", [&](const rs::request&, rs::response& res) {
        requests.fetch_add(1);
        const int this_run = run.load();  // the run serving this stream
        res.set_header("Cache-Control", "no-cache");
        res.set_stream("text/event-stream", [&, this_run](rs::body_writer& out) {
            // "retry": reconnect 1 s after the stream ends (the browser's default is ~3 s).
            if (!out.write("retry: 1000\n\n")) return;
            do {
                auto uptime = std::chrono::duration_cast<std::chrono::seconds>(
                    std::chrono::steady_clock::now() - started);
                std::string event = "data: {\"run\":" + std::to_string(this_run) +
                                    ",\"uptime_s\":" + std::to_string(uptime.count()) +
                                    ",\"requests\":" + std::to_string(requests.load()) + "}\n\n";
                if (!out.write(event)) return;  // the browser went away
            } while (!out.wait_for_stop(1s));   // a tick, cut short by a stop or restart
        });
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

    int sig = 0;
    sigwait(&signals, &sig);
    srv.stop();
    std::printf("stopped\n");
    return 0;
}
