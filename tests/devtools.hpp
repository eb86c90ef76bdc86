// Test support: headless Chromium driven through the DevTools protocol over
// --remote-debugging-pipe (JSON messages ended by NUL bytes on the browser's descriptors 3
// and 4: no WebSocket, no Python), and a tab of it to load a page in, inject a script
// into, evaluate JavaScript in (awaiting promises) and hand a file to an <input
// type="file">. The same protocol test_status_page.cpp speaks (it has its own copy). Every
// wait is bounded (poll(2) on the pipe); the browser leads a process group of its own,
// killed and reaped with its helpers if the test fails half-way.
#ifndef RESTARTABLE_SERVER_TESTS_DEVTOOLS_HPP
#define RESTARTABLE_SERVER_TESTS_DEVTOOLS_HPP

#include "process.hpp"

#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace test {

/// find_chromium: the first of the usual names that is installed, or "".
inline std::string find_chromium() {
    for (const char* name : {"chromium", "chromium-browser", "google-chrome"})
        if (have_command(name)) return name;
    return {};
}

/// json_string: the string value of the first "key":"..." in a JSON text, unescaped enough
/// for the ids and texts the tests read (\" and \\); nullopt when there is none.
inline std::optional<std::string> json_string(const std::string& json, const std::string& key) {
    const std::string start = "\"" + key + "\":\"";
    std::size_t p = json.find(start);
    if (p == std::string::npos) return std::nullopt;
    std::string value;
    for (p += start.size(); p < json.size() && json[p] != '"'; ++p) {
        if (json[p] == '\\' && p + 1 < json.size()) ++p;
        value += json[p];
    }
    return value;
}

/// json_quote: s as a JSON string literal.
inline std::string json_quote(const std::string& s) {
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

/// devtools: one headless Chromium, profile in profile_dir, driven over the pipe.
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
        spawn_options opt;
        opt.in = opt.out = opt.err = stream::null;  // chatty; a full pipe nobody reads would stop it
        opt.fds = {{its.get(), 3}, {its.get(), 4}};
        opt.new_group = true;  // its helper processes go with it
        browser_.emplace(args, opt);
    }
    ~devtools() {
        if (browser_ && browser_->started()) {
            call("Browser.close", "{}", {}, std::chrono::seconds(5));
            browser_->wait_exit(std::chrono::seconds(10));  // the process destructor kills the group
        }
    }
    devtools(const devtools&) = delete;
    devtools& operator=(const devtools&) = delete;

    bool started() const { return browser_ && browser_->started(); }

    /// call: sends a command (to a tab when session is set) and returns its reply, or ""
    /// when none came within timeout. Events that arrive meanwhile are kept.
    std::string call(const std::string& method, const std::string& params, const std::string& session,
                     std::chrono::milliseconds timeout) {
        const int id = ++last_id_;
        std::string msg = "{\"id\":" + std::to_string(id) + ",\"method\":\"" + method + "\",\"params\":" + params;
        if (!session.empty()) msg += ",\"sessionId\":\"" + session + "\"";
        msg += "}";
        msg.push_back('\0');
        if (!send_all(pipe_.get(), msg)) return {};
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
                if (!wait_readable(pipe_.get(), deadline)) return {};
                ssize_t n = ::read(pipe_.get(), tmp, sizeof tmp);
                if (n <= 0) return {};
                buf_.append(tmp, static_cast<std::size_t>(n));
            }
            kept_.push_back(buf_.substr(0, end));
            buf_.erase(0, end + 1);
        }
    }

    rs::unique_fd pipe_;  // our end of the browser's descriptors 3 and 4
    std::optional<process> browser_;
    std::string buf_;
    std::vector<std::string> kept_;
    int last_id_ = 0;
};

/// tab: a tab of browser of its own, attached in "flat" mode (its commands carry its
/// sessionId). Check ok() (and why) after making one.
class tab {
public:
    explicit tab(devtools& browser) : browser_(browser) {
        std::string reply = browser_.call("Target.createTarget", R"({"url":"about:blank"})", {}, std::chrono::seconds(30));
        std::optional<std::string> target = json_string(reply, "targetId");
        if (!target) {
            why = "Target.createTarget: " + reply;
            return;
        }
        reply = browser_.call("Target.attachToTarget", "{\"targetId\":\"" + *target + "\",\"flatten\":true}", {},
                              std::chrono::seconds(10));
        std::optional<std::string> session = json_string(reply, "sessionId");
        if (!session) {
            why = "Target.attachToTarget: " + reply;
            return;
        }
        session_ = *session;
        if (call("Page.enable", "{}").empty()) why = "Page.enable: no reply";
    }
    bool ok() const { return !session_.empty() && why.empty(); }
    std::string why;  // what failed, for the message

    /// call: a command to this tab; its reply, "" when none came within timeout.
    std::string call(const std::string& method, const std::string& params,
                     std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
        return browser_.call(method, params, session_, timeout);
    }
    /// inject: script runs in every document this tab loads from now on, before the page's own.
    bool inject(const std::string& script) {
        return call("Page.addScriptToEvaluateOnNewDocument", "{\"source\":" + json_quote(script) + "}")
                   .find("\"identifier\"") != std::string::npos;
    }
    /// load: navigates to url and waits for its load event; false when it did not come in time.
    bool load(const std::string& url, std::chrono::milliseconds timeout) {
        if (call("Page.navigate", "{\"url\":" + json_quote(url) + "}").empty()) return false;
        return !browser_.wait_event("Page.loadEventFired", timeout).empty();
    }
    /// evaluate: runs JavaScript in the page, awaiting a promise; its result as a string, or
    /// "(no result: REPLY)" when it threw or did not finish within timeout.
    std::string evaluate(const std::string& js, std::chrono::milliseconds timeout) {
        const std::string r =
            call("Runtime.evaluate",
                 "{\"expression\":" + json_quote(js) + ",\"awaitPromise\":true,\"returnByValue\":true}", timeout);
        if (r.find("\"exceptionDetails\"") != std::string::npos) return "(no result: " + r + ")";
        return json_string(r, "value").value_or("(no result: " + r + ")");
    }
    /// set_files: hands the file at path (on this machine) to the <input type="file"> that
    /// the expression selector evaluates to, as if the user had chosen it; "" or what failed.
    std::string set_files(const std::string& selector, const std::string& path) {
        const std::string r = call("Runtime.evaluate", "{\"expression\":" + json_quote(selector) + "}");
        const std::optional<std::string> object = json_string(r, "objectId");
        if (!object) return "no element: " + r;
        const std::string set = call("DOM.setFileInputFiles",
                                     "{\"files\":[" + json_quote(path) + "],\"objectId\":" + json_quote(*object) + "}");
        return set.find("\"result\"") != std::string::npos ? std::string() : "DOM.setFileInputFiles: " + set;
    }

private:
    devtools& browser_;
    std::string session_;
};

}  // namespace test

#endif  // RESTARTABLE_SERVER_TESTS_DEVTOOLS_HPP
