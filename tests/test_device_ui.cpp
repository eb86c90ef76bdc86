// examples/device_ui, run as a user would run it (the built program, a child process on
// port 0 with a firmware directory of the test's), driven two ways:
//   browser  headless Chromium over the DevTools protocol (devtools.hpp) loads the page; a
//            script injected before the page's own records every WebSocket the page opens
//            (opens, messages, closes with their codes). The test hands a generated 20 MiB
//            file to the page's file input and presses the page's own buttons: the upload
//            goes out as multipart/form-data, progress arrives over the WebSocket as the
//            server stores it, then "restart": the socket closes with 1012, the page
//            reconnects to the new run, and status updates of run 2 come on the new socket;
//   clients  curl -F uploads the same way and gets the answer line; Python's websockets
//            (Debian's /usr/bin/python3) sees status, progress, the stored hash, close 1012
//            at a restart, and status of run 2 after it reconnects; a foreign Origin is
//            refused 403, on the WebSocket and on POST /restart;
//   restart  an upload sent by hand, half of it before a restart and half after: it
//            finishes on the old run, and its progress reaches the reconnected socket.
// Both compare the SHA-256 of the file stored with the one uploaded (sha256sum: not the
// example's own code). Every wait is on output, a socket, a pipe or a promise resolved by
// what the page sees: no sleeps. Times are bounded with a wide margin, never asserted as a
// speed. Skipped without Chromium (browser), curl (clients) or python3-websockets (clients,
// restart).

#include "devtools.hpp"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#ifndef RS_EXAMPLES_DIR
#error "RS_EXAMPLES_DIR (the directory of the built examples) must be defined"
#endif

namespace {

namespace rs = restartable_server;
using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

constexpr std::size_t upload_size = 20 * 1024 * 1024;

/// work_dir: a fresh directory under /tmp with fw/ (the example's firmware directory) and
/// upload.bin (upload_size bytes of a fixed pseudo-random sequence); removed, with all it
/// holds, on destruction (also when the test fails half-way).
struct work_dir {
    std::string path;
    work_dir() {
        char p[] = "/tmp/rs_test_device_ui_XXXXXX";
        REQUIRE(::mkdtemp(p) != nullptr);
        path = p;
        REQUIRE(::mkdir(firmware_dir().c_str(), 0700) == 0);
        std::string data(upload_size, '\0');
        std::uint64_t x = 0x9e3779b97f4a7c15ULL;  // xorshift64: any bytes, CRLF and "--" included
        for (char& c : data) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c = static_cast<char>(x >> 56);
        }
        rs::unique_fd fd(::open(upload().c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
        REQUIRE(fd);
        REQUIRE(::write(fd.get(), data.data(), data.size()) == static_cast<ssize_t>(data.size()));  // a regular file: whole
    }
    ~work_dir() {
        const int status = std::system(("rm -rf '" + path + "'").c_str());
        (void)status;  // a leftover directory under /tmp fails nothing
    }
    work_dir(const work_dir&) = delete;
    work_dir& operator=(const work_dir&) = delete;
    std::string firmware_dir() const { return path + "/fw"; }
    std::string upload() const { return path + "/upload.bin"; }
    std::string stored() const { return firmware_dir() + "/firmware.bin"; }
    std::string profile() const { return path + "/profile"; }
};

/// sha256sum: the SHA-256 of a file in hex, by coreutils' sha256sum; "" when it failed.
std::string sha256sum(const std::string& file) {
    const test::command_result r = test::run_command({"sha256sum", file}, 60s);
    return test::exited_0(r.status) && r.out.size() >= 64 ? r.out.substr(0, 64) : std::string();
}

/// device_ui: the example, started on port 0 with dir as its firmware directory; its
/// first line must say where it listens.
struct device_ui {
    test::process proc;
    std::uint16_t port = 0;
    explicit device_ui(const std::string& dir)
        : proc({std::string(RS_EXAMPLES_DIR) + "/device_ui", "--port", "0", dir}) {
        REQUIRE(proc.started());
        const std::optional<std::string> line = proc.read_line(10s);
        INFO("device_ui: first line: " << line.value_or("(none)"));
        port = test::listening_port(line);
        REQUIRE(port != 0);
    }
    std::string url(const std::string& path) const { return "http://127.0.0.1:" + std::to_string(port) + path; }
    /// stop: SIGTERM; it must say "stopped" and exit 0.
    void stop() {
        REQUIRE(proc.signal(SIGTERM));
        std::string seen;
        CHECK(proc.out.line_starting("stopped", 20s, seen).value_or("(nothing; saw: " + seen + ")") == "stopped");
        const std::optional<int> st = proc.wait_exit(20s);
        INFO("device_ui after SIGTERM: " << test::describe_status(st));
        CHECK(test::exited_0(st));
    }
};

/// The test's script, injected into the page before its own: every WebSocket the page
/// opens is a subclass that records, in ws_log, its opens, messages (parsed) and closes
/// (with the code), numbered 1, 2, ... in the order the page made them. until(pred) is a
/// promise resolved with pred()'s value when it is first truthy, checked after each
/// record (once the page's own handlers have run) and at each change of the page.
const char* const ws_recorder = R"JS(
(() => {
  const log = window.ws_log = [];
  let waiters = [];
  const check = () => { waiters = waiters.filter((w) => !w()); };
  window.until = (pred) => new Promise((resolve) => {
    const w = () => { const v = pred(); if (v) resolve(String(v)); return !!v; };
    if (!w()) waiters.push(w);
  });
  const note = (entry) => { log.push(entry); setTimeout(check, 0); };
  const Native = window.WebSocket;
  let made = 0;
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      const n = ++made;
      this.addEventListener('open', () => note({ n, ev: 'open' }));
      this.addEventListener('message', (e) => note({ n, ev: 'message', m: JSON.parse(e.data) }));
      this.addEventListener('close', (e) => note({ n, ev: 'close', code: e.code }));
    }
  };
  window.msgs = (n, type) => log.filter((e) => e.n === n && e.ev === 'message' && e.m.type === type).map((e) => e.m);
  window.shown = (id) => document.getElementById(id).textContent;
  new MutationObserver(check).observe(document, { subtree: true, childList: true, characterData: true });
})();
)JS";

/// The upload as the page's first socket saw it, once the fetch has answered.
const char* const upload_summary = R"JS(
(() => {
  const p = msgs(1, 'progress'), s = msgs(1, 'stored');
  return ['progress=' + p.length,
          'rising=' + p.every((m, i) => i === 0 || m.bytes > p[i - 1].bytes),
          'last=' + (p.length ? p[p.length - 1].bytes : -1),
          'total=' + (p.length ? p[0].total : -1),
          'stored=' + (s.length ? s[0].bytes : -1),
          'sha256=' + (s.length ? s[0].sha256 : '-')].join(' ');
})()
)JS";

/// field: the value of "name=VALUE" in a summary "a=1 b=2 ...", or "".
std::string field(const std::string& summary, const std::string& name) {
    const std::string padded = " " + summary + " ", key = " " + name + "=";
    const std::size_t p = padded.find(key);
    if (p == std::string::npos) return {};
    const std::size_t from = p + key.size();
    return padded.substr(from, padded.find(' ', from) - from);
}

bool have_python_websockets() {
    return std::system("/usr/bin/python3 -c 'import websockets' >/dev/null 2>&1") == 0;
}

/// The Python client: a handshake with a foreign Origin (must be refused), then socket 1
/// until the server closes it, then socket 2 until two status updates came (and, with a
/// second argument "stored", a stored message); one line per event, flushed.
const char* const python_client = R"PY(
import asyncio, json, sys
import websockets

async def main(uri, until_stored):
    try:
        async with websockets.connect(uri, origin='http://elsewhere.example'):
            print('foreign origin: accepted', flush=True)
    except websockets.InvalidStatusCode as e:
        print('foreign origin: refused %d' % e.status_code, flush=True)
    for n in (1, 2):
        async with websockets.connect(uri) as ws:
            print('open %d' % n, flush=True)
            statuses, stored = 0, False
            try:
                async for text in ws:
                    m = json.loads(text)
                    if m['type'] == 'status':
                        statuses += 1
                        print('status %d run=%d uptime=%d' % (n, m['run'], m['uptime_s']), flush=True)
                        if n == 2 and statuses >= 2 and (stored or not until_stored):
                            break
                    elif m['type'] == 'progress':
                        print('progress %d %d %d' % (n, m['bytes'], m['total']), flush=True)
                    elif m['type'] == 'stored':
                        print('stored %d %d %s' % (n, m['bytes'], m['sha256']), flush=True)
                        stored = True
                        if n == 2 and statuses >= 2:
                            break
                    else:
                        print('other %s' % text, flush=True)
            except websockets.ConnectionClosed:
                pass
        print('closed %d %s' % (n, ws.close_code), flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2:] == ['stored']))
)PY";

}  // namespace

TEST_CASE("device_ui in Chromium: live status over a WebSocket, a 20 MiB firmware upload with progress, "
          "the restart button (close 1012, reconnect, run 2)", "[examples][device_ui][browser]") {
    const std::string chromium = test::find_chromium();
    if (chromium.empty()) RS_SKIP("chromium is not installed");
    test::watchdog dog("device_ui in Chromium", 150s);
    work_dir work;
    const std::string uploaded_sha = sha256sum(work.upload());
    REQUIRE(uploaded_sha.size() == 64);
    device_ui ex(work.firmware_dir());

    const auto t0 = steady::now();
    std::string progress, closed, after;
    {
        test::devtools browser(chromium, work.profile());
        REQUIRE(browser.started());
        test::tab page(browser);
        INFO(page.why);
        REQUIRE(page.ok());
        REQUIRE(page.inject(ws_recorder));
        REQUIRE(page.load(ex.url("/"), 30s));

        // Run 1: the page's socket opens and the status arrives (sent at once on open).
        const std::string run1 =
            page.evaluate("until(() => msgs(1, 'status').length && shown('run') !== '-' && "
                          "'run=' + msgs(1, 'status')[0].run + ' link=' + shown('link'))",
                          20s);
        CHECK(run1 == "run=1 link=live");

        // The upload: the generated file handed to the page's file input, then its button.
        INFO("set_files");
        CHECK(page.set_files("document.getElementById('file')", work.upload()) == "");
        CHECK(page.evaluate("document.getElementById('send').click(); 'clicked'", 10s) == "clicked");
        const std::string answer = page.evaluate("until(() => shown('answer') !== '-' && shown('answer'))", 60s);
        INFO("the page's answer: " << answer);
        CHECK(answer == "200 stored " + std::to_string(upload_size) + " bytes sha256 " + uploaded_sha);
        // The stored message may come after the HTTP answer (two connections): wait for it.
        CHECK(page.evaluate("until(() => msgs(1, 'stored').length + msgs(1, 'failed').length && 'seen')", 20s) ==
              "seen");
        progress = page.evaluate(upload_summary, 10s);
        INFO("progress over the WebSocket: " << progress);
        CHECK(std::atol(field(progress, "progress").c_str()) >= 10);  // one every MiB (at least)
        CHECK(field(progress, "rising") == "true");
        CHECK(std::atoll(field(progress, "last").c_str()) <= static_cast<long long>(upload_size));
        CHECK(std::atoll(field(progress, "last").c_str()) >= static_cast<long long>(upload_size) - 1024 * 1024);
        CHECK(std::atoll(field(progress, "total").c_str()) > static_cast<long long>(upload_size));  // the form's framing
        CHECK(field(progress, "stored") == std::to_string(upload_size));
        CHECK(field(progress, "sha256") == uploaded_sha);
        CHECK(page.evaluate("shown('sha256')", 10s) == "sha256 " + uploaded_sha);
        std::string seen;
        CHECK(ex.proc.out.line_starting("stored ", 10s, seen).value_or("(nothing; saw: " + seen + ")") ==
              "stored " + std::to_string(upload_size) + " bytes sha256 " + uploaded_sha);

        // The restart button: socket 1 gets close 1012, the page opens socket 2 to run 2.
        CHECK(page.evaluate("document.getElementById('restart').click(); 'clicked'", 10s) == "clicked");
        CHECK(ex.proc.out.line_starting("restarted", 20s, seen).value_or("(nothing; saw: " + seen + ")") ==
              "restarted, run 2");
        closed = page.evaluate(
            "until(() => { const c = ws_log.find((e) => e.n === 1 && e.ev === 'close'); return c && 'close ' + c.code; })",
            20s);
        CHECK(closed == "close 1012");
        // Two status updates on socket 2: the one sent at its open, and one from the status
        // thread - the new run keeps working.
        after = page.evaluate(
            "until(() => msgs(2, 'status').length >= 2 && shown('link') === 'live' && "
            "'runs=' + msgs(2, 'status').map((m) => m.run).join(',') + ' link=' + shown('link') + "
            "' run=' + shown('run') + ' opens=' + ws_log.filter((e) => e.ev === 'open').map((e) => e.n).join(','))",
            30s);
        CHECK(after == "runs=2,2 link=live run=2 (1 restart) opens=1,2");
        // One process: the uptime went on across the restart.
        CHECK(page.evaluate("String(msgs(2, 'status')[0].uptime_s >= msgs(1, 'status')[0].uptime_s)", 10s) == "true");
    }
    const auto elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(steady::now() - t0);
    CHECK(elapsed < 60s);  // a bound with a wide margin, not a speed

    CHECK(sha256sum(work.stored()) == uploaded_sha);  // what is on the disk is what was sent
    WARN("device_ui in Chromium: " << elapsed.count() << " ms for load, 20 MiB upload, restart and reconnect | "
                                   << progress << " | " << closed << " | " << after);
    ex.stop();
}

TEST_CASE("device_ui with curl -F and Python's websockets: progress, the stored SHA-256, close 1012 at a "
          "restart, status from the new run; a foreign Origin refused", "[examples][device_ui]") {
    if (!test::have_command("curl")) RS_SKIP("curl is not installed");
    if (!have_python_websockets()) RS_SKIP("/usr/bin/python3 has no websockets module (python3-websockets)");
    test::watchdog dog("device_ui with curl and Python", 150s);
    const auto t0 = steady::now();
    work_dir work;
    const std::string uploaded_sha = sha256sum(work.upload());
    REQUIRE(uploaded_sha.size() == 64);
    device_ui ex(work.firmware_dir());

    test::process ws({"/usr/bin/python3", "-c", python_client, "ws://127.0.0.1:" + std::to_string(ex.port) + "/ws"});
    REQUIRE(ws.started());
    std::string seen;
    auto next = [&](const std::string& prefix) {
        return ws.out.line_starting(prefix, 20s, seen).value_or("(nothing; saw: " + seen + ")");
    };
    CHECK(next("foreign origin") == "foreign origin: refused 403");
    CHECK(next("open") == "open 1");
    CHECK(next("status 1").rfind("status 1 run=1 ", 0) == 0);

    // A foreign page's POST is refused too; no Origin (curl) is not a browser's request.
    test::http_response r = test::request(ex.port, "POST /restart HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                                   "Origin: http://elsewhere.example\r\nContent-Length: 0\r\n"
                                                   "Connection: close\r\n\r\n");
    CHECK(r.status == 403);

    const test::command_result curl = test::run_command(
        {"curl", "-sS", "--max-time", "60", "-F", "firmware=@" + work.upload(), ex.url("/firmware")}, 90s);
    INFO("curl: " << test::describe_status(curl.status));
    CHECK(test::exited_0(curl.status));
    CHECK(curl.out == "stored " + std::to_string(upload_size) + " bytes sha256 " + uploaded_sha + "\n");

    // The WebSocket saw the progress, rising, then the hash (status lines may come between).
    long progress = 0;
    unsigned long long last = 0;
    bool rising = true;
    std::string line;
    for (;;) {
        line = next("");
        if (line.rfind("status ", 0) == 0) continue;
        if (line.rfind("progress 1 ", 0) != 0) break;
        const unsigned long long bytes = std::strtoull(line.c_str() + 11, nullptr, 10);
        rising = rising && bytes > last;
        last = bytes;
        ++progress;
    }
    INFO("progress lines: " << progress << ", last " << last);
    CHECK(line == "stored 1 " + std::to_string(upload_size) + " " + uploaded_sha);
    CHECK(progress >= 10);
    CHECK(rising);
    CHECK(last <= upload_size);

    // A restart: socket 1 closes with 1012; socket 2 opens on run 2 and gets its updates.
    r = test::request(ex.port, "POST /restart HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n"
                               "Connection: close\r\n\r\n");
    CHECK(r.status == 202);
    CHECK(next("closed") == "closed 1 1012");
    CHECK(next("open") == "open 2");
    CHECK(next("status 2").rfind("status 2 run=2 ", 0) == 0);  // at its open
    CHECK(next("status 2").rfind("status 2 run=2 ", 0) == 0);  // from the status thread
    CHECK(next("closed") == "closed 2 1000");
    const std::optional<int> st = ws.wait_exit(20s);
    INFO("the Python client: " << test::describe_status(st));
    CHECK(test::exited_0(st));

    CHECK(ex.proc.out.line_starting("stored ", 10s, seen).value_or("(nothing)") ==
          "stored " + std::to_string(upload_size) + " bytes sha256 " + uploaded_sha);
    CHECK(ex.proc.out.line_starting("restarted", 10s, seen).value_or("(nothing)") == "restarted, run 2");
    CHECK(sha256sum(work.stored()) == uploaded_sha);
    ex.stop();
    WARN("device_ui with curl and Python: " << progress << " progress updates, "
                                            << std::chrono::duration_cast<std::chrono::milliseconds>(steady::now() - t0).count()
                                            << " ms in all");
}

TEST_CASE("device_ui: an upload in flight goes on across a restart, and its progress reaches the "
          "reconnected socket", "[examples][device_ui]") {
    if (!have_python_websockets()) RS_SKIP("/usr/bin/python3 has no websockets module (python3-websockets)");
    test::watchdog dog("device_ui: upload across a restart", 150s);
    work_dir work;
    const std::string uploaded_sha = sha256sum(work.upload());
    REQUIRE(uploaded_sha.size() == 64);
    device_ui ex(work.firmware_dir());

    test::process ws(
        {"/usr/bin/python3", "-c", python_client, "ws://127.0.0.1:" + std::to_string(ex.port) + "/ws", "stored"});
    REQUIRE(ws.started());
    std::string seen;
    auto next = [&](const std::string& prefix) {
        return ws.out.line_starting(prefix, 20s, seen).value_or("(nothing; saw: " + seen + ")");
    };
    CHECK(next("open") == "open 1");

    // The form by hand, so the test says when its bytes go: the first half...
    const std::string boundary = "rs-device-ui-test";
    const std::string file = test::read_file(work.upload());
    REQUIRE(file.size() == upload_size);
    const std::string body = "--" + boundary +
                             "\r\nContent-Disposition: form-data; name=\"firmware\"; filename=\"fw.bin\"\r\n"
                             "Content-Type: application/octet-stream\r\n\r\n" +
                             file + "\r\n--" + boundary + "--\r\n";
    const std::size_t first = body.size() / 2;
    test::client upload(ex.port, 30s);
    REQUIRE(upload.ok());
    REQUIRE(upload.send("POST /firmware HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=" +
                        boundary + "\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n"));
    REQUIRE(upload.send(std::string_view(body).substr(0, first)));
    CHECK(next("progress 1 ").rfind("progress 1 ", 0) == 0);  // stored as it arrives

    // ...then a restart, the upload half done: socket 1 gets 1012, socket 2 opens on run 2...
    const test::http_response r = test::request(ex.port, "POST /restart HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                                         "Content-Length: 0\r\nConnection: close\r\n\r\n");
    CHECK(r.status == 202);
    CHECK(next("closed") == "closed 1 1012");
    CHECK(next("open") == "open 2");
    CHECK(next("status 2").rfind("status 2 run=2 ", 0) == 0);

    // ...then the other half: the old run finishes the upload (a request in flight, under
    // its drain_timeout), and reports to the new socket: the list of sockets is the program's.
    REQUIRE(upload.send(std::string_view(body).substr(first)));
    const test::http_response answer = upload.read();
    CHECK(answer.status == 200);
    CHECK(answer.body == "stored " + std::to_string(upload_size) + " bytes sha256 " + uploaded_sha + "\n");
    CHECK(next("progress 2 ").rfind("progress 2 ", 0) == 0);
    CHECK(next("stored") == "stored 2 " + std::to_string(upload_size) + " " + uploaded_sha);
    CHECK(next("closed") == "closed 2 1000");
    CHECK(test::exited_0(ws.wait_exit(20s)));
    CHECK(sha256sum(work.stored()) == uploaded_sha);
    ex.stop();
}
