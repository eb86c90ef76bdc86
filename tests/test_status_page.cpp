// examples/status_page in a real browser: headless Chromium loads the page from the
// example (started as a child process on port 0), and the test drives the browser through
// the DevTools protocol over --remote-debugging-pipe (JSON messages ended by NUL bytes on
// descriptors 3 and 4: no WebSocket, no Python). It proves, from inside the page:
//   - the values arrive live over server-sent events: run 1, the uptime ticking;
//   - a click on the page's own "restart" button restarts the server (POST /restart);
//   - the page's EventSource reconnects by itself and keeps updating: run 2, the uptime
//     ticking on and not reset (one process), the run number never going back.
// A MutationObserver in the page records every value the page shows, and the test's waits
// are promises resolved by that observer: nothing polls, nothing sleeps. Skipped when no
// Chromium is installed.

#include "process.hpp"

#include <sys/socket.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#ifndef RS_EXAMPLES_DIR
#error "RS_EXAMPLES_DIR (the directory of the built examples) must be defined"
#endif

namespace {

namespace rs = restartable_server;
using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

/// quiet: spawn options with stdin, stdout and stderr on /dev/null (Chromium is chatty,
/// and a full pipe nobody reads would stop it).
test::spawn_options quiet() {
    test::spawn_options opt;
    opt.in = opt.out = opt.err = test::stream::null;
    return opt;
}

/// json_string: the string value of the first "key":"..." in a JSON text, unescaped
/// enough for the ids and texts this test reads; nullopt when there is none.
std::optional<std::string> json_string(const std::string& json, const std::string& key) {
    const std::string start = "\"" + key + "\":\"";
    std::size_t p = json.find(start);
    if (p == std::string::npos) return std::nullopt;
    std::string value;
    for (p += start.size(); p < json.size() && json[p] != '"'; ++p) {
        if (json[p] == '\\' && p + 1 < json.size()) ++p;  // \" and \\ (the test's texts have no others)
        value += json[p];
    }
    return value;
}

/// json_quote: s as a JSON string literal.
std::string json_quote(const std::string& s) {
    std::string out = "\"";
    for (char c : s) {
        if (c == '"' || c == '\\') out += '\\';
        if (c == '\n') {
            out += "\\n";
            continue;
        }
        out += c;
    }
    return out + "\"";
}

/// devtools: a headless Chromium driven through the DevTools protocol over
/// --remote-debugging-pipe: it reads commands on its descriptor 3 and writes replies and
/// events on its descriptor 4, each a JSON text followed by a NUL byte. Both are one end
/// of a socket pair here (a socket, so a send after the browser died fails with EPIPE
/// instead of raising SIGPIPE); we hold the other end.
class devtools {
public:
    devtools(const std::string& chromium, const std::string& profile_dir) {
        int sv[2];
        REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
        pipe_.reset(sv[0]);
        rs::unique_fd its(sv[1]);
        std::vector<std::string> args = {chromium, "--headless", "--disable-gpu", "--no-first-run",
                                         "--no-default-browser-check", "--disable-background-networking",
                                         "--disable-component-update", "--disable-sync", "--no-proxy-server",
                                         "--user-data-dir=" + profile_dir, "--remote-debugging-pipe"};
        if (::geteuid() == 0) args.push_back("--no-sandbox");  // Chromium refuses root otherwise
        args.push_back("about:blank");
        test::spawn_options opt = quiet();
        opt.fds = {{its.get(), 3}, {its.get(), 4}};
        browser_.emplace(args, opt);
    }
    ~devtools() {
        if (browser_ && browser_->started()) {
            call("Browser.close", "{}", {}, 5s);
            browser_->wait_exit(10s);  // the process destructor kills it if it did not exit
        }
    }
    devtools(const devtools&) = delete;
    devtools& operator=(const devtools&) = delete;

    bool started() const { return browser_ && browser_->started(); }

    /// call: sends a command (to a page when session is set) and returns its reply, or ""
    /// when none came within timeout. Events that arrive meanwhile are kept.
    std::string call(const std::string& method, const std::string& params, const std::string& session,
                     std::chrono::milliseconds timeout) {
        const int id = ++last_id_;
        std::string msg = "{\"id\":" + std::to_string(id) + ",\"method\":\"" + method + "\",\"params\":" + params;
        if (!session.empty()) msg += ",\"sessionId\":\"" + session + "\"";
        msg += "}";
        msg.push_back('\0');
        if (!test::send_all(pipe_.get(), msg)) return {};
        const std::string tag = "{\"id\":" + std::to_string(id) + ",";
        return next_message(steady::now() + timeout, [&](const std::string& m) { return m.rfind(tag, 0) == 0; });
    }

    /// wait_event: the first event called method (kept or still to come), or "" on timeout.
    std::string wait_event(const std::string& method, std::chrono::milliseconds timeout) {
        const std::string tag = "\"method\":\"" + method + "\"";
        return next_message(steady::now() + timeout,
                            [&](const std::string& m) { return m.find(tag) != std::string::npos; });
    }

private:
    template <class Match>
    std::string next_message(steady::time_point deadline, Match match) {
        for (;;) {
            for (auto it = kept_.begin(); it != kept_.end(); ++it)
                if (match(*it)) {
                    std::string m = std::move(*it);
                    kept_.erase(it);
                    return m;
                }
            std::size_t end;
            while ((end = buf_.find('\0')) == std::string::npos) {
                char tmp[65536];
                if (!test::wait_readable(pipe_.get(), deadline)) return {};
                ssize_t n = ::read(pipe_.get(), tmp, sizeof tmp);
                if (n <= 0) return {};
                buf_.append(tmp, static_cast<std::size_t>(n));
            }
            kept_.push_back(buf_.substr(0, end));
            buf_.erase(0, end + 1);
        }
    }

    rs::unique_fd pipe_;  // our end of the browser's descriptors 3 and 4
    std::optional<test::process> browser_;
    std::string buf_;
    std::vector<std::string> kept_;
    int last_id_ = 0;
};

/// profile_dir: a fresh directory for the browser's profile, removed with all it holds
/// on destruction (also when the test fails half-way).
struct profile_dir {
    std::string path;
    profile_dir() {
        char p[] = "/tmp/rs_test_status_page_XXXXXX";
        REQUIRE(::mkdtemp(p) != nullptr);
        path = p;
    }
    ~profile_dir() {
        const int status = std::system(("rm -rf '" + path + "'").c_str());
        (void)status;  // a leftover directory under /tmp fails nothing
    }
    profile_dir(const profile_dir&) = delete;
    profile_dir& operator=(const profile_dir&) = delete;
};

/// find_chromium: the first of the usual names that is installed, or "".
std::string find_chromium() {
    for (const char* name : {"chromium", "chromium-browser", "google-chrome"})
        if (std::system((std::string("command -v ") + name + " >/dev/null 2>&1").c_str()) == 0) return name;
    return {};
}

/// The test's JavaScript, evaluated in the page after it loaded. A MutationObserver keeps,
/// from the first event on, every run number and connection state the page shows
/// (history_of); until(pred) is a promise resolved, with a snapshot of the page, when
/// pred() first holds (checked at each change of the page).
const char* const page_helpers = R"JS(
  window.shown = (id) => document.getElementById(id).textContent;
  window.snapshot = () => ['run', 'uptime', 'requests', 'link'].map((id) => id + '=' + shown(id)).join(' ');
  window.history_of = { run: [], link: [] };
  window.note = () => {
    if (shown('run') === '-') return;  // no event yet
    for (const id of ['run', 'link']) {
      const h = history_of[id];
      if (h[h.length - 1] !== shown(id)) h.push(shown(id));
    }
  };
  window.until = (pred) => new Promise((resolve) => {
    if (pred()) return resolve(snapshot());
    const watch = new MutationObserver(() => { if (pred()) { watch.disconnect(); resolve(snapshot()); } });
    watch.observe(document.body, { subtree: true, childList: true, characterData: true });
  });
  note();
  new MutationObserver(note).observe(document.body, { subtree: true, childList: true, characterData: true });
  'ready';
)JS";

/// uptime_text: what a snapshot says the page shows as the uptime ("12 s"), or "".
std::string uptime_text(const std::string& snapshot) {
    std::size_t p = snapshot.find("uptime="), e = snapshot.find(" requests=");
    return p == std::string::npos || e == std::string::npos || e < p ? "" : snapshot.substr(p + 7, e - p - 7);
}

/// uptime_changes: JavaScript that waits until the page shows another uptime than snapshot.
std::string uptime_changes(const std::string& snapshot) {
    return "until(() => shown('uptime') !== " + json_quote(uptime_text(snapshot)) + ")";
}

/// uptime_s: the uptime in a snapshot, in seconds, or -1.
long uptime_s(const std::string& snapshot) {
    const std::string t = uptime_text(snapshot);
    return t.empty() ? -1 : std::atol(t.c_str());
}

}  // namespace

TEST_CASE("status_page: live values over server-sent events, the restart button, and the "
          "page's EventSource following the restart (headless Chromium)", "[examples][status_page][browser]") {
    const std::string chromium = find_chromium();
    if (chromium.empty()) RS_SKIP("chromium is not installed");
    test::watchdog dog("status_page in Chromium", 150s);

    // The example, on a free port; its stdout is a pipe we read its lines from.
    test::spawn_options opt = quiet();
    opt.out = test::stream::pipe;
    test::process example({std::string(RS_EXAMPLES_DIR) + "/status_page", "--port", "0"}, opt);
    REQUIRE(example.started());
    std::optional<std::string> first = example.read_line(10s);
    const std::string prefix = "listening on http://127.0.0.1:";
    INFO("status_page: " << first.value_or("(nothing)"));
    REQUIRE(first.value_or("").rfind(prefix, 0) == 0);
    const std::string url = "http://127.0.0.1:" + first->substr(prefix.size()) + "/";

    profile_dir profile;
    {
        devtools browser(chromium, profile.path);
        REQUIRE(browser.started());

        // A tab of our own, attached in "flat" mode: its commands carry its sessionId.
        std::string reply = browser.call("Target.createTarget", R"({"url":"about:blank"})", {}, 30s);
        INFO("createTarget: " << reply);
        std::optional<std::string> target = json_string(reply, "targetId");
        REQUIRE(target);
        reply = browser.call("Target.attachToTarget", "{\"targetId\":\"" + *target + "\",\"flatten\":true}", {}, 10s);
        std::optional<std::string> session = json_string(reply, "sessionId");
        REQUIRE(session);
        REQUIRE(!browser.call("Page.enable", "{}", *session, 10s).empty());
        REQUIRE(!browser.call("Page.navigate", "{\"url\":" + json_quote(url) + "}", *session, 10s).empty());
        REQUIRE(!browser.wait_event("Page.loadEventFired", 30s).empty());

        // evaluate: runs JavaScript in the page, awaiting a promise; its string result.
        auto evaluate = [&](const std::string& js, std::chrono::milliseconds timeout) {
            std::string r = browser.call(
                "Runtime.evaluate",
                "{\"expression\":" + json_quote(js) + ",\"awaitPromise\":true,\"returnByValue\":true}", *session,
                timeout);
            return json_string(r, "value").value_or("(no result: " + r + ")");
        };
        REQUIRE(evaluate(page_helpers, 10s) == "ready");

        // Run 1: values arrive and tick.
        const std::string run1 = evaluate("until(() => shown('run') === '1')", 20s);
        INFO("run 1: " << run1);
        REQUIRE(run1.find("run=1 ") == 0);
        const std::string run1_tick = evaluate(uptime_changes(run1), 20s);
        INFO("run 1, a tick later: " << run1_tick);
        CHECK(run1_tick.find("run=1 ") == 0);
        CHECK(uptime_s(run1_tick) > uptime_s(run1));

        // The page's own button: POST /restart.
        CHECK(evaluate("document.getElementById('restart').click(); 'clicked'", 10s) == "clicked");
        std::optional<std::string> restarted = example.read_line(20s);
        CHECK(restarted.value_or("(nothing)") == "restarted 2");

        // Run 2: the EventSource reconnected by itself, and the values tick on.
        const std::string run2 = evaluate("until(() => shown('run') === '2' && shown('link') === 'live')", 30s);
        INFO("run 2: " << run2);
        REQUIRE(run2.find("run=2 ") == 0);
        const std::string run2_tick = evaluate(uptime_changes(run2), 20s);
        INFO("run 2, a tick later: " << run2_tick);
        CHECK(run2_tick.find("run=2 ") == 0);
        CHECK(uptime_s(run2_tick) > uptime_s(run2));
        CHECK(uptime_s(run2) >= uptime_s(run1_tick));  // one process: the uptime went on

        const std::string history =
            evaluate("'run:' + history_of.run.join(',') + ' link:' + history_of.link.join(',')", 10s);
        INFO("what the page showed: " << history);
        CHECK(history == "run:1,2 link:live,reconnecting,live");  // never another value, never back
        WARN("status_page in Chromium: " << run1 << " | " << run1_tick << " | restart | " << run2 << " | "
                                         << run2_tick << " | " << history);
    }
    REQUIRE(example.signal(SIGTERM));
    std::optional<int> st = example.wait_exit(20s);
    CHECK(test::exited_0(st));
}
