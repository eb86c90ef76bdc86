// HTTP behaviour over real sockets: routing, parameters, framing, keep-alive, pipelining,
// limits, concurrency, and two real clients (Python's http.client and curl). Every test
// case starts its own server on 127.0.0.1, port 0, and stops it.
#include "support.hpp"

#include <netinet/tcp.h>
#include <sys/wait.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <future>
#include <iterator>
#include <tuple>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace rs = restartable_server;
using namespace std::chrono_literals;

namespace {

using test::have_command;
using test::run_command;

using test::client;
using test::start;

std::string lower(std::string_view s) {
    std::string out;
    for (char ch : s) out += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    return out;
}

/// split_list: a comma-separated header value as trimmed items.
std::set<std::string> split_list(const std::string& v) {
    std::set<std::string> out;
    std::size_t pos = 0;
    while (pos <= v.size()) {
        std::size_t comma = v.find(',', pos);
        if (comma == std::string::npos) comma = v.size();
        std::string item = v.substr(pos, comma - pos);
        while (!item.empty() && (item.front() == ' ' || item.front() == '\t')) item.erase(0, 1);
        while (!item.empty() && (item.back() == ' ' || item.back() == '\t')) item.pop_back();
        if (!item.empty()) out.insert(item);
        pos = comma + 1;
    }
    return out;
}

std::string get_req(const std::string& path, const std::string& extra = "") {
    return "GET " + path + " HTTP/1.1\r\nHost: localhost\r\n" + extra + "\r\n";
}

std::string post_req(const std::string& path, const std::string& body, const std::string& extra = "") {
    return "POST " + path + " HTTP/1.1\r\nHost: localhost\r\nContent-Length: " + std::to_string(body.size()) +
           "\r\n" + extra + "\r\n" + body;
}

/// echo_routes: GET /hello, POST /echo (body back, as is), GET /path (path and query).
void add_echo_routes(rs::server& srv) {
    srv.get("/hello", [](const rs::request&, rs::response& res) { res.set_content("hello", "text/plain"); });
    srv.post("/echo", [](const rs::request& req, rs::response& res) {
        res.set_content(req.body, "application/octet-stream");
    });
    srv.get("/path", [](const rs::request& req, rs::response& res) {
        res.set_content(std::string(req.path) + "|" + std::string(req.query), "text/plain");
    });
}

/// is_imf_fixdate: the shape of an IMF-fixdate, "Wed, 25 Nov 2026 12:00:00 GMT" (a
/// hand-written check: std::regex trips -Wmaybe-uninitialized in GCC 12 at -O2).
bool is_imf_fixdate(const std::string& d) {
    static const char* const days[] = {"Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"};
    static const char* const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                         "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    static const char shape[] = "www, 99 mmm 9999 99:99:99 GMT";  // 9: a digit
    if (d.size() != sizeof shape - 1) return false;
    for (std::size_t i = 0; i < d.size(); ++i) {
        const char s = shape[i];
        const bool digit = d[i] >= '0' && d[i] <= '9';
        if (s == '9') {
            if (!digit) return false;
        } else if (s != 'w' && s != 'm' && d[i] != s) {
            return false;
        }
    }
    auto one_of = [](std::string_view v, const char* const* list, std::size_t n) {
        for (std::size_t i = 0; i < n; ++i)
            if (v == list[i]) return true;
        return false;
    };
    const int day = std::stoi(d.substr(5, 2)), hour = std::stoi(d.substr(17, 2)),
              minute = std::stoi(d.substr(20, 2)), second = std::stoi(d.substr(23, 2));
    return one_of(std::string_view(d).substr(0, 3), days, 7) && one_of(std::string_view(d).substr(8, 3), months, 12) &&
           day >= 1 && day <= 31 && hour <= 23 && minute <= 59 && second <= 60;
}

}  // namespace

TEST_CASE("routing by method and path", "[http][routing]") {
    rs::server srv(test::local_options());
    auto tag = [](std::string t) {
        return [t](const rs::request& req, rs::response& res) {
            res.set_content(t + " " + std::string(req.method) + " " + std::string(req.path), "text/plain");
        };
    };
    srv.get("/a", tag("get-a"));
    srv.post("/a", tag("post-a"));
    srv.put("/a", tag("put-a"));
    srv.patch("/a", tag("patch-a"));
    srv.del("/a", tag("del-a"));
    srv.get("/b", tag("get-b"));
    srv.get("/a/b", tag("get-a-b"));
    srv.route("PURGE", "/cache", tag("purge-cache"));
    const auto port = start(srv);

    struct want {
        std::string method, path, body;
    };
    const std::vector<want> cases = {
        {"GET", "/a", "get-a GET /a"},          {"POST", "/a", "post-a POST /a"},
        {"PUT", "/a", "put-a PUT /a"},          {"PATCH", "/a", "patch-a PATCH /a"},
        {"DELETE", "/a", "del-a DELETE /a"},    {"GET", "/b", "get-b GET /b"},
        {"GET", "/a/b", "get-a-b GET /a/b"},    {"PURGE", "/cache", "purge-cache PURGE /cache"},
        {"GET", "/b?x=1", "get-b GET /b"},
    };
    client c(port);
    REQUIRE(c.ok());
    for (const want& w : cases) {
        INFO(w.method << " " << w.path);
        const bool has_body = w.method != "GET";
        REQUIRE(c.send(w.method + " " + w.path + " HTTP/1.1\r\nHost: x\r\n" +
                       (has_body ? "Content-Length: 0\r\n" : "") + "\r\n"));
        auto r = c.read();
        CHECK(r.status == 200);
        CHECK(r.body == w.body);
    }
    // Method names are case-sensitive; paths are matched exactly.
    CHECK(test::get(port, "/A").status == 404);
    CHECK(test::get(port, "/a/b/c").status == 404);
    srv.stop();
}

TEST_CASE("request fields reach the handler", "[http]") {
    rs::server srv(test::local_options());
    srv.get("/fields", [](const rs::request& req, rs::response& res) {
        std::string s = std::string(req.method) + "|" + std::string(req.target) + "|" + std::string(req.path) +
                        "|" + std::string(req.query) + "|" + std::to_string(req.version_minor) + "|" +
                        std::string(req.get_header("x-custom")) + "|" +
                        (req.has_header("X-CUSTOM") ? "yes" : "no") + "|" + (req.has_header("X-Nope") ? "yes" : "no") +
                        "|" + std::to_string(req.headers.size());
        res.set_content(s, "text/plain");
    });
    const auto port = start(srv);
    auto r = test::request(port,
                           "GET /fields?a=%41 HTTP/1.1\r\nHost: h\r\nX-Custom:  value 1 \r\nConnection: close\r\n\r\n");
    CHECK(r.status == 200);
    CHECK(r.body == "GET|/fields?a=%41|/fields|a=%41|1|value 1|yes|no|3");
    srv.stop();
}

TEST_CASE("path parameters are matched and percent-decoded", "[http][routing]") {
    rs::server srv(test::local_options());
    srv.get("/users/:id", [](const rs::request& req, rs::response& res) {
        res.set_content("user=[" + std::string(req.param("id")) + "] missing=[" + std::string(req.param("nope")) + "]",
                        "text/plain");
    });
    srv.get("/users/:id/posts/:post", [](const rs::request& req, rs::response& res) {
        res.set_content(std::string(req.param("id")) + "/" + std::string(req.param("post")), "text/plain");
    });
    srv.get("/users/me", [](const rs::request&, rs::response& res) { res.set_content("me", "text/plain"); });
    const auto port = start(srv);

    CHECK(test::get(port, "/users/42").body == "user=[42] missing=[]");
    CHECK(test::get(port, "/users/a%20b").body == "user=[a b] missing=[]");
    CHECK(test::get(port, "/users/%41%62c%2f").body == "user=[Abc/] missing=[]");
    CHECK(test::get(port, "/users/x?id=query").body == "user=[x] missing=[]");
    CHECK(test::get(port, "/users/7/posts/hello%21").body == "7/hello!");
    CHECK(test::get(port, "/users/7/posts").status == 404);
    CHECK(test::get(port, "/users/7/extra/9").status == 404);
    CHECK(test::get(port, "/users").status == 404);
    // A literal route is found next to a parameter route (which one wins for "me" is the
    // library's choice; both must answer 200).
    CHECK(test::get(port, "/users/me").status == 200);
    srv.stop();
}

TEST_CASE("a trailing star segment matches the rest of the path, raw", "[http][routing]") {
    rs::server srv(test::local_options());
    srv.get("/files/*", [](const rs::request& req, rs::response& res) {
        res.set_content("[" + std::string(req.param("*")) + "]", "text/plain");
    });
    srv.get("/a/*/b", [](const rs::request& req, rs::response& res) {  // "*" inside: a literal segment
        res.set_content("literal " + std::string(req.param("*")), "text/plain");
    });
    const auto port = start(srv);
    CHECK(test::get(port, "/files/a/b/c.css").body == "[a/b/c.css]");
    CHECK(test::get(port, "/files/").body == "[]");
    CHECK(test::get(port, "/files/..%2Fsecret?x=1").body == "[..%2Fsecret]");  // not decoded, no query
    CHECK(test::get(port, "/files").status == 404);
    CHECK(test::get(port, "/a/*/b").body == "literal ");
    CHECK(test::get(port, "/a/x/b").status == 404);
    srv.stop();
}

TEST_CASE("query_param decodes percent escapes and '+'", "[http]") {
    rs::server srv(test::local_options());
    srv.get("/q", [](const rs::request& req, rs::response& res) {
        std::string out;
        for (const char* name : {"name", "x", "empty", "dup", "missing", "plus", "amp"}) {
            auto v = req.query_param(name);
            out += std::string(name) + "=" + (v ? "[" + *v + "]" : std::string("none")) + ";";
        }
        res.set_content(out, "text/plain");
    });
    const auto port = start(srv);
    auto r = test::get(port, "/q?name=John+Doe&x=%41%42%2b&empty=&dup=1&dup=2&plus=a%2Bb+c&amp=%26%3D");
    CHECK(r.status == 200);
    CHECK(r.body ==
          "name=[John Doe];x=[AB+];empty=[];dup=[1];missing=none;plus=[a+b c];amp=[&=];");
    auto none = test::get(port, "/q");
    CHECK(none.body == "name=none;x=none;empty=none;dup=none;missing=none;plus=none;amp=none;");
    srv.stop();
}

TEST_CASE("unknown path is 404", "[http][routing]") {
    rs::server srv(test::local_options());
    add_echo_routes(srv);
    const auto port = start(srv);
    auto r = test::get(port, "/nowhere");
    CHECK(r.status == 404);
    CHECK(r.head.rfind("HTTP/1.1 404", 0) == 0);
    CHECK(r.header("Content-Length") == std::to_string(r.body.size()));
    auto p = test::request(port, "POST /nowhere HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi");
    CHECK(p.status == 404);
    // On a kept-alive connection the body of an unrouted request is skipped, not taken
    // for the next request.
    client c(port);
    REQUIRE(c.ok());
    REQUIRE(c.send(post_req("/nowhere", "GET /hello HTTP/1.1\r\n\r\n") + post_req("/hello", "xyz") +
                   get_req("/hello")));
    auto r1 = c.read();
    auto r2 = c.read();
    auto r3 = c.read();
    CHECK(r1.status == 404);
    CHECK(r2.status == 405);
    CHECK(r3.status == 200);
    CHECK(r3.body == "hello");
    srv.stop();
}

TEST_CASE("wrong method is 405 with an Allow header", "[http][routing]") {
    rs::server srv(test::local_options());
    auto ok = [](const rs::request&, rs::response& res) { res.set_content("ok", "text/plain"); };
    srv.get("/r", ok);
    srv.post("/r", ok);
    srv.put("/items/:id", ok);
    srv.post("/only-post", ok);
    const auto port = start(srv);

    auto r = test::request(port, "DELETE /r HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    CHECK(r.status == 405);
    auto allow = split_list(r.header("Allow"));
    INFO("Allow: " << r.header("Allow"));
    CHECK(allow.count("GET") == 1);
    CHECK(allow.count("HEAD") == 1);  // a GET route implies HEAD
    CHECK(allow.count("POST") == 1);
    CHECK(allow.count("DELETE") == 0);
    CHECK(allow.count("PUT") == 0);

    auto r2 = test::get(port, "/items/5");
    CHECK(r2.status == 405);
    auto allow2 = split_list(r2.header("Allow"));
    INFO("Allow: " << r2.header("Allow"));
    CHECK(allow2.count("PUT") == 1);
    CHECK(allow2.count("GET") == 0);
    CHECK(allow2.count("HEAD") == 0);

    auto r3 = test::request(port, "HEAD /only-post HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    CHECK(r3.status == 405);
    CHECK(split_list(r3.header("Allow")) == std::set<std::string>{"POST"});
    srv.stop();
}

TEST_CASE("HEAD on a GET route: same headers, no body", "[http]") {
    rs::server srv(test::local_options());
    srv.get("/h", [](const rs::request&, rs::response& res) {
        res.set_content("hello world, this is the body", "text/x-test");
        res.set_header("X-Custom", "yes");
    });
    const auto port = start(srv);
    client c(port);
    REQUIRE(c.ok());

    REQUIRE(c.send(get_req("/h")));
    auto g = c.read();
    REQUIRE(g.status == 200);
    CHECK(g.body == "hello world, this is the body");

    REQUIRE(c.send("HEAD /h HTTP/1.1\r\nHost: x\r\n\r\n"));
    auto h = c.read(/*head_only=*/true);
    REQUIRE(h.status == 200);
    CHECK(h.header("Content-Length") == "29");
    CHECK(h.header("Content-Type") == "text/x-test");
    CHECK(h.header("X-Custom") == "yes");
    CHECK(!h.header("Date").empty());

    // HEAD on an unknown path: 404, again without a body.
    REQUIRE(c.send("HEAD /missing HTTP/1.1\r\nHost: x\r\n\r\n"));
    auto h404 = c.read(true);
    CHECK(h404.status == 404);

    // Had the server sent body bytes after a HEAD response, this response would not parse.
    REQUIRE(c.send(get_req("/h")));
    auto g2 = c.read();
    INFO("head of the follow-up response: " << g2.head);
    CHECK(g2.head.rfind("HTTP/1.1 200", 0) == 0);
    CHECK(g2.status == 200);
    CHECK(g2.body == "hello world, this is the body");
    srv.stop();
}

TEST_CASE("Content-Length and Date are added automatically", "[http]") {
    rs::server srv(test::local_options());
    srv.get("/abc", [](const rs::request&, rs::response& res) { res.set_content("abc", "text/plain"); });
    srv.get("/empty", [](const rs::request&, rs::response&) {});
    srv.get("/status", [](const rs::request&, rs::response& res) {
        res.status = 201;
        res.body = std::string(1000, 'z');
    });
    const auto port = start(srv);

    auto r = test::get(port, "/abc");
    REQUIRE(r.status == 200);
    CHECK(r.header("Content-Length") == "3");
    CHECK(r.header("Content-Type") == "text/plain");
    CHECK(r.head.rfind("HTTP/1.1 200 OK\r\n", 0) == 0);

    const std::string date = r.header("Date");
    INFO("Date: " << date);
    CHECK(is_imf_fixdate(date));
    // ... and it is the current time (within a generous margin).
    std::tm tm{};
    const char* end = ::strptime(date.c_str(), "%a, %d %b %Y %H:%M:%S GMT", &tm);
    REQUIRE(end != nullptr);
    const std::time_t when = ::timegm(&tm);
    const std::time_t now = std::time(nullptr);
    CHECK(std::abs(static_cast<long long>(now) - static_cast<long long>(when)) < 600);

    auto e = test::get(port, "/empty");
    CHECK(e.status == 200);
    CHECK(e.header("Content-Length") == "0");
    CHECK(e.body.empty());

    auto s = test::get(port, "/status");
    CHECK(s.status == 201);
    CHECK(s.header("Content-Length") == "1000");
    CHECK(s.body == std::string(1000, 'z'));
    CHECK(s.head.rfind("HTTP/1.1 201 Created\r\n", 0) == 0);
    srv.stop();
}

TEST_CASE("a throwing handler gives 500 and the server keeps serving", "[http]") {
    rs::server srv(test::local_options());
    srv.get("/throw", [](const rs::request&, rs::response&) { throw std::runtime_error("boom"); });
    srv.get("/throw-int", [](const rs::request&, rs::response&) { throw 42; });
    srv.get("/ok", [](const rs::request&, rs::response& res) { res.set_content("fine", "text/plain"); });
    const auto port = start(srv);
    auto r = test::get(port, "/throw");
    CHECK(r.status == 500);
    CHECK(r.header("Content-Length") == std::to_string(r.body.size()));
    CHECK(test::get(port, "/throw-int").status == 500);
    auto ok = test::get(port, "/ok");
    CHECK(ok.status == 200);
    CHECK(ok.body == "fine");
    srv.stop();
}

TEST_CASE("header limits are enforced over the wire (431)", "[http][limits]") {
    auto o = test::local_options();
    o.max_header_bytes = 1024;
    o.max_headers = 10;
    rs::server srv(o);
    add_echo_routes(srv);
    const auto port = start(srv);

    auto big = test::request(port, get_req("/hello", "X-Big: " + std::string(2000, 'b') + "\r\n"));
    CHECK(big.status == 431);
    std::string many;
    for (int i = 0; i < 11; ++i) many += "X-" + std::to_string(i) + ": v\r\n";
    CHECK(test::request(port, get_req("/hello", many)).status == 431);
    std::string ten;
    for (int i = 0; i < 9; ++i) ten += "X-" + std::to_string(i) + ": v\r\n";  // + Host = 10
    CHECK(test::request(port, get_req("/hello", ten + "Connection: close\r\n")).status == 431);
    CHECK(test::request(port, get_req("/hello", ten)).status == 200);
    srv.stop();
}

TEST_CASE("HTTP/1.1 keep-alive: several requests on one connection", "[http][keepalive]") {
    rs::server srv(test::local_options());
    add_echo_routes(srv);
    const auto port = start(srv);
    client c(port);
    REQUIRE(c.ok());
    for (int i = 0; i < 10; ++i) {
        INFO("request " << i);
        const std::string body = "body #" + std::to_string(i);
        REQUIRE(c.send(i % 2 ? post_req("/echo", body) : get_req("/path?i=" + std::to_string(i))));
        auto r = c.read();
        REQUIRE(r.status == 200);
        CHECK(r.body == (i % 2 ? body : "/path|i=" + std::to_string(i)));
        CHECK(lower(r.header("Connection")) != "close");
    }
    srv.stop();
}

TEST_CASE("Connection: close is honoured", "[http][keepalive]") {
    rs::server srv(test::local_options());
    add_echo_routes(srv);
    const auto port = start(srv);
    client c(port);
    REQUIRE(c.ok());
    REQUIRE(c.send(get_req("/hello")));
    REQUIRE(c.read().status == 200);
    REQUIRE(c.send(get_req("/hello", "Connection: close\r\n")));
    auto r = c.read();
    CHECK(r.status == 200);
    CHECK(r.body == "hello");
    CHECK(lower(r.header("Connection")) == "close");
    CHECK(c.closed());
    srv.stop();
}

TEST_CASE("HTTP/1.0 without keep-alive is closed after the response", "[http][keepalive]") {
    rs::server srv(test::local_options());
    add_echo_routes(srv);
    const auto port = start(srv);
    client c(port);
    REQUIRE(c.ok());
    REQUIRE(c.send("GET /hello HTTP/1.0\r\nHost: x\r\n\r\n"));
    auto r = c.read();
    CHECK(r.status == 200);
    CHECK(r.body == "hello");
    CHECK(lower(r.header("Connection")) != "keep-alive");
    CHECK(c.closed());
    srv.stop();
}

TEST_CASE("HTTP/1.0 with Connection: keep-alive stays open", "[http][keepalive]") {
    rs::server srv(test::local_options());
    add_echo_routes(srv);
    const auto port = start(srv);
    client c(port);
    REQUIRE(c.ok());
    for (int i = 0; i < 3; ++i) {
        INFO("request " << i);
        REQUIRE(c.send("GET /hello HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n"));
        auto r = c.read();
        REQUIRE(r.status == 200);
        CHECK(r.body == "hello");
        CHECK(lower(r.header("Connection")) == "keep-alive");
    }
    // A last HTTP/1.0 request without the token closes it.
    REQUIRE(c.send("GET /hello HTTP/1.0\r\nHost: x\r\n\r\n"));
    CHECK(c.read().status == 200);
    CHECK(c.closed());
    srv.stop();
}

namespace {

void check_pipelined(std::uint16_t port) {
    client c(port);
    REQUIRE(c.ok());
    const std::string batch = get_req("/path?n=1") + post_req("/echo", "hello\r\n\r\nGET / HTTP/1.1\r\n") +
                              get_req("/path?n=3");
    // One send() call for all three requests.
    REQUIRE(::send(c.fd, batch.data(), batch.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(batch.size()));
    auto r1 = c.read();
    auto r2 = c.read();
    auto r3 = c.read();
    CHECK(r1.status == 200);
    CHECK(r1.body == "/path|n=1");
    CHECK(r2.status == 200);
    CHECK(r2.body == "hello\r\n\r\nGET / HTTP/1.1\r\n");
    CHECK(r3.status == 200);
    CHECK(r3.body == "/path|n=3");
    // The connection is still usable afterwards.
    REQUIRE(c.send(get_req("/hello")));
    CHECK(c.read().body == "hello");
}

void check_keepalive(std::uint16_t port) {
    client c(port);
    REQUIRE(c.ok());
    for (int i = 0; i < 5; ++i) {
        REQUIRE(c.send(post_req("/echo", "round " + std::to_string(i))));
        auto r = c.read();
        REQUIRE(r.status == 200);
        CHECK(r.body == "round " + std::to_string(i));
    }
}

}  // namespace

TEST_CASE("pipelining: three requests in one send are answered in order", "[http][pipelining]") {
    rs::server srv(test::local_options());
    add_echo_routes(srv);
    const auto port = start(srv);
    check_pipelined(port);
    srv.stop();
}

TEST_CASE("a request sent byte by byte is still answered", "[http]") {
    rs::server srv(test::local_options());
    add_echo_routes(srv);
    const auto port = start(srv);
    client c(port);
    REQUIRE(c.ok());
    c.nodelay();
    const std::string raw = post_req("/echo", "tiny pieces", "X-Filler: abc\r\n") + get_req("/hello");
    for (char ch : raw) REQUIRE(::send(c.fd, &ch, 1, MSG_NOSIGNAL) == 1);
    auto r = c.read();
    CHECK(r.status == 200);
    CHECK(r.body == "tiny pieces");
    auto r2 = c.read();
    CHECK(r2.status == 200);
    CHECK(r2.body == "hello");
    srv.stop();
}

TEST_CASE("a Content-Length body is echoed back exactly", "[http][body]") {
    rs::server srv(test::local_options());
    add_echo_routes(srv);
    const auto port = start(srv);
    client c(port);
    REQUIRE(c.ok());

    SECTION("small, empty and binary bodies") {
        for (const std::string& body : {std::string("x"), std::string(), std::string("a\0b\r\n\r\nc", 8)}) {
            REQUIRE(c.send(post_req("/echo", body)));
            auto r = c.read();
            CHECK(r.status == 200);
            CHECK(r.body == body);
            CHECK(r.header("Content-Length") == std::to_string(body.size()));
        }
    }
    SECTION("1 MiB") {
        std::string body(1024 * 1024, '\0');
        std::uint32_t x = 0x12345678u;
        for (char& ch : body) {
            x = x * 1664525u + 1013904223u;
            ch = static_cast<char>(x >> 24);
        }
        REQUIRE(c.send(post_req("/echo", body)));
        auto r = c.read();
        REQUIRE(r.status == 200);
        CHECK(r.header("Content-Length") == std::to_string(body.size()));
        CHECK(r.body.size() == body.size());
        CHECK((r.body == body));
        // and the connection goes on
        REQUIRE(c.send(get_req("/hello")));
        CHECK(c.read().body == "hello");
    }
    srv.stop();
}

TEST_CASE("Expect: 100-continue gets an interim response before the body", "[http][body]") {
    rs::server srv(test::local_options());
    add_echo_routes(srv);
    const auto port = start(srv);
    client c(port);
    REQUIRE(c.ok());
    const std::string body = "the body after continue";
    REQUIRE(c.send("POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: " +
                   std::to_string(body.size()) + "\r\n\r\n"));
    // Nothing of the body is sent yet: the server must answer 100 first (or this times out).
    auto interim = c.read();
    INFO("interim: " << interim.head);
    REQUIRE(interim.status == 100);
    CHECK(interim.head.rfind("HTTP/1.1 100 Continue\r\n", 0) == 0);
    REQUIRE(c.send(body));
    auto r = c.read();
    CHECK(r.status == 200);
    CHECK(r.body == body);
    srv.stop();
}

TEST_CASE("a body above max_body_bytes is 413", "[http][body][limits]") {
    auto o = test::local_options();
    o.max_body_bytes = 1024;
    rs::server srv(o);
    add_echo_routes(srv);
    const auto port = start(srv);

    SECTION("at the limit passes") {
        const std::string body(1024, 'k');
        auto r = test::request(port, post_req("/echo", body, "Connection: close\r\n"));
        CHECK(r.status == 200);
        CHECK(r.body == body);
    }
    SECTION("over the limit is refused on the head alone") {
        client c(port);
        REQUIRE(c.ok());
        // Only the head: the server decides on Content-Length, without reading the body.
        REQUIRE(c.send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2048\r\n\r\n"));
        auto r = c.read();
        CHECK(r.status == 413);
    }
    SECTION("over the limit with Expect: 100-continue gets 413, not 100") {
        client c(port);
        REQUIRE(c.ok());
        REQUIRE(c.send("POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1025\r\n\r\n"));
        auto r = c.read();
        CHECK(r.status == 413);
    }
    srv.stop();
}

TEST_CASE("worker_threads = 0 serves keep-alive and pipelined requests", "[http][pipelining]") {
    rs::server srv(test::local_options(0));
    add_echo_routes(srv);
    const auto port = start(srv);
    check_keepalive(port);
    check_pipelined(port);
    // HEAD framing in this mode too.
    client c(port);
    REQUIRE(c.ok());
    REQUIRE(c.send("HEAD /hello HTTP/1.1\r\nHost: x\r\n\r\n" + get_req("/hello")));
    auto h = c.read(true);
    CHECK(h.status == 200);
    CHECK(h.header("Content-Length") == "5");
    auto g = c.read();
    CHECK(g.status == 200);
    CHECK(g.body == "hello");
    srv.stop();
}

TEST_CASE("a slow handler does not delay a request on another connection", "[http][concurrency]") {
    std::mutex m;
    std::condition_variable cv;
    bool entered = false, release = false;
    // Declared before the server, destroyed after it; the releaser runs first, so a failed
    // REQUIRE never leaves the handler blocked while the server's destructor waits.
    struct releaser {
        std::mutex& m;
        std::condition_variable& cv;
        bool& release;
        ~releaser() {
            std::lock_guard<std::mutex> lk(m);
            release = true;
            cv.notify_all();
        }
    };
    rs::server srv(test::local_options(2));
    releaser rel{m, cv, release};
    srv.get("/slow", [&](const rs::request&, rs::response& res) {
        std::unique_lock<std::mutex> lk(m);
        entered = true;
        cv.notify_all();
        cv.wait_for(lk, 60s, [&] { return release; });
        res.set_content(release ? "released" : "timed out", "text/plain");
    });
    srv.get("/fast", [](const rs::request&, rs::response& res) { res.set_content("fast", "text/plain"); });
    const auto port = start(srv);

    client slow(port, 30s);
    REQUIRE(slow.ok());
    REQUIRE(slow.send(get_req("/slow")));
    {
        std::unique_lock<std::mutex> lk(m);
        REQUIRE(cv.wait_for(lk, 20s, [&] { return entered; }));
    }
    // The slow handler holds a worker; another connection is still answered.
    client fast(port);
    REQUIRE(fast.ok());
    REQUIRE(fast.send(get_req("/fast") + get_req("/fast")));
    auto f1 = fast.read();
    auto f2 = fast.read();
    CHECK(f1.status == 200);
    CHECK(f1.body == "fast");
    CHECK(f2.body == "fast");
    {
        std::lock_guard<std::mutex> lk(m);
        CHECK_FALSE(release);  // the fast answers came while the slow one was still blocked
        release = true;
        cv.notify_all();
    }
    auto s = slow.read();
    CHECK(s.status == 200);
    CHECK(s.body == "released");
    srv.stop();
}

TEST_CASE("many idle keep-alive connections do not block a fresh client", "[http][concurrency]") {
    auto o = test::local_options(2);
    o.header_timeout = std::chrono::minutes(5);  // the silent connections must outlive the test
    o.idle_timeout = std::chrono::minutes(5);
    rs::server srv(o);
    add_echo_routes(srv);
    const auto port = start(srv);

    std::vector<std::unique_ptr<client>> idle;
    for (int i = 0; i < 200; ++i) {
        auto c = std::make_unique<client>(port);
        REQUIRE(c->ok());
        if (i % 2 == 0) {  // half of them had a request and are now idle in keep-alive
            REQUIRE(c->send(get_req("/hello")));
            REQUIRE(c->read().status == 200);
        } else if (i % 10 == 1) {  // a few sent an unfinished head
            REQUIRE(c->send("GET /hello HTTP/1.1\r\nHost: x\r\n"));
        }  // the rest never sent anything
        idle.push_back(std::move(c));
    }
    for (int round = 0; round < 3; ++round) {
        auto r = test::get(port, "/hello");
        CHECK(r.status == 200);
        CHECK(r.body == "hello");
    }
    // The idle connections are still alive and served.
    for (std::size_t i : {0u, 2u, 198u}) {
        REQUIRE(idle[i]->send(get_req("/hello")));
        CHECK(idle[i]->read().body == "hello");
    }
    REQUIRE(idle[1]->send("\r\n"));  // finishes the unfinished head
    CHECK(idle[1]->read().body == "hello");
    idle.clear();
    srv.stop();
}

TEST_CASE("a real client: Python http.client reuses one connection", "[http][clients]") {
    if (!have_command("python3")) {
        RS_SKIP("python3 not found");
    }
    rs::server srv(test::local_options());
    add_echo_routes(srv);
    srv.get("/greet", [](const rs::request& req, rs::response& res) {
        res.set_content("hi " + req.query_param("i").value_or("?"), "text/plain");
    });
    const auto port = start(srv);

    char path[] = "/tmp/rs_test_http_XXXXXX";
    int fd = ::mkstemp(path);
    REQUIRE(fd >= 0);
    ::close(fd);
    struct remover {
        const char* p;
        ~remover() { std::remove(p); }
    } rm{path};
    {
        std::ofstream f(path);
        f << R"PY(
import http.client, sys
port = int(sys.argv[1])
c = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
socks = []
for i in range(3):
    c.request("GET", "/greet?i=%d" % i)
    r = c.getresponse()
    body = r.read().decode()
    print("GET", r.status, body, r.getheader("Content-Length"))
    socks.append(c.sock.getsockname() if c.sock else None)
payload = b"python body \x00\xff\r\n\r\nend"
c.request("POST", "/echo", body=payload, headers={"Content-Type": "application/octet-stream"})
r = c.getresponse()
got = r.read()
print("POST", r.status, got == payload, len(got))
socks.append(c.sock.getsockname() if c.sock else None)
print("connections", len(set(socks)), None in socks)
c.close()
)PY";
    }
    int code = 0;
    const std::string out =
        run_command("timeout 60 python3 " + std::string(path) + " " + std::to_string(port) + " 2>&1", code);
    INFO("python output:\n" << out);
    CHECK(code == 0);
    CHECK(out ==
          "GET 200 hi 0 4\n"
          "GET 200 hi 1 4\n"
          "GET 200 hi 2 4\n"
          "POST 200 True 21\n"
          "connections 1 False\n");
    srv.stop();
}

TEST_CASE("a real client: curl makes two requests over one connection", "[http][clients]") {
    if (!have_command("curl")) {
        RS_SKIP("curl not found");
    }
    rs::server srv(test::local_options());
    add_echo_routes(srv);
    const auto port = start(srv);
    const std::string url = "http://127.0.0.1:" + std::to_string(port) + "/hello";
    int code = 0;
    const std::string out = run_command("curl -s --max-time 30 --noproxy '*' -o - -w ' %{http_code} %{num_connects}\\n' " +
                                            url + " " + url + " 2>&1",
                                        code);
    INFO("curl output:\n" << out);
    CHECK(code == 0);
    CHECK(out == "hello 200 1\nhello 200 0\n");

    // And a POST with a body.
    const std::string echo = "http://127.0.0.1:" + std::to_string(port) + "/echo";
    const std::string out2 =
        run_command("curl -s --max-time 30 --noproxy '*' --data-binary 'curl body' " + echo + " 2>&1", code);
    CHECK(code == 0);
    CHECK(out2 == "curl body");
    srv.stop();
}

// ------------------------------------------------------ RFC 9112 details --

namespace {

/// read_to_eof: every byte the server sends on c (after what c already buffered) until it
/// closes the connection; eof is false when the receive timed out or failed instead.
std::string read_to_eof(client& c, bool& eof) {
    std::string all = c.rd.buf;
    c.rd.buf.clear();
    eof = false;
    for (;;) {
        char tmp[16384];
        const ssize_t n = ::recv(c.fd, tmp, sizeof tmp, 0);
        if (n > 0) {
            all.append(tmp, static_cast<std::size_t>(n));
            continue;
        }
        eof = n == 0 || errno == ECONNRESET;
        return all;
    }
}

}  // namespace

TEST_CASE("empty lines before a request line are ignored (RFC 9112 2.2)", "[http][rfc9112]") {
    for (std::size_t workers : {std::size_t{4}, std::size_t{0}}) {
        DYNAMIC_SECTION("worker_threads = " << workers) {
            rs::server srv(test::local_options(workers));
            add_echo_routes(srv);
            const auto port = start(srv);

            SECTION("before the first request of a connection") {
                client c(port);
                REQUIRE(c.ok());
                REQUIRE(c.send("\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\n\r\n"));
                auto r = c.read();
                CHECK(r.status == 200);
                CHECK(r.body == "hello");
                // and the connection goes on
                REQUIRE(c.send(get_req("/path?n=2")));
                auto r2 = c.read();
                CHECK(r2.status == 200);
                CHECK(r2.body == "/path|n=2");
            }
            SECTION("between pipelined requests, sent in one piece") {
                client c(port);
                REQUIRE(c.ok());
                const std::string batch = get_req("/path?n=1") + "\r\n" + post_req("/echo", "abc") + "\r\n" +
                                          get_req("/path?n=3");
                REQUIRE(c.send(batch));
                auto r1 = c.read();
                auto r2 = c.read();
                auto r3 = c.read();
                CHECK(r1.status == 200);
                CHECK(r1.body == "/path|n=1");
                CHECK(r2.status == 200);
                CHECK(r2.body == "abc");
                CHECK(r3.status == 200);
                CHECK(r3.body == "/path|n=3");
                REQUIRE(c.send(get_req("/hello")));
                CHECK(c.read().body == "hello");
            }
            SECTION("an empty line sent on its own between two requests") {
                client c(port);
                REQUIRE(c.ok());
                REQUIRE(c.send(get_req("/hello")));
                REQUIRE(c.read().status == 200);
                REQUIRE(c.send("\r\n"));
                REQUIRE(c.send(get_req("/path?n=2")));
                auto r = c.read();
                CHECK(r.status == 200);
                CHECK(r.body == "/path|n=2");
            }
            SECTION("empty lines and the head sent byte by byte") {
                client c(port);
                REQUIRE(c.ok());
                c.nodelay();
                const std::string raw = "\r\n\r\n" + get_req("/path?n=1") + "\r\n" + get_req("/hello");
                for (char ch : raw) REQUIRE(::send(c.fd, &ch, 1, MSG_NOSIGNAL) == 1);
                auto r1 = c.read();
                CHECK(r1.status == 200);
                CHECK(r1.body == "/path|n=1");
                auto r2 = c.read();
                CHECK(r2.status == 200);
                CHECK(r2.body == "hello");
            }
            srv.stop();
        }
    }
}

TEST_CASE("a Host value must be uri-host [\":\" port], else 400", "[http][host]") {
    rs::server srv(test::local_options());
    add_echo_routes(srv);
    const auto port = start(srv);
    for (const char* v : {"a b", "a/b", "user@host", "a, b", "a,b", "host:8x"}) {
        INFO("Host: [" << v << "]");
        auto r = test::request(port, "GET /hello HTTP/1.1\r\nHost: " + std::string(v) + "\r\nConnection: close\r\n\r\n");
        CHECK(r.status == 400);
    }
    for (const char* v : {"example.com", "example.com:8080", "127.0.0.1:80", "[::1]:8080", "[::1]", "",
                          "xn--bcher-kva.example", "a_b-c.d~e"}) {
        INFO("Host: [" << v << "]");
        auto r = test::request(port, "GET /hello HTTP/1.1\r\nHost: " + std::string(v) + "\r\nConnection: close\r\n\r\n");
        CHECK(r.status == 200);
        CHECK(r.body == "hello");
    }
    // Two Host fields stay 400.
    CHECK(test::request(port, "GET /hello HTTP/1.1\r\nHost: a\r\nHost: a\r\nConnection: close\r\n\r\n").status == 400);
    // A bad Host on a kept-alive connection: 400, and the connection is closed after it.
    client c(port);
    REQUIRE(c.ok());
    REQUIRE(c.send(get_req("/hello")));
    REQUIRE(c.read().status == 200);
    REQUIRE(c.send("GET /hello HTTP/1.1\r\nHost: user@host\r\n\r\n"));
    auto bad = c.read();
    CHECK(bad.status == 400);
    if (bad.status == 400) CHECK(c.closed());  // else it would wait 10 s
    srv.stop();
}

TEST_CASE("Connection is one list across all its field lines", "[http][keepalive]") {
    rs::server srv(test::local_options());
    add_echo_routes(srv);
    const auto port = start(srv);

    SECTION("HTTP/1.1: close in any field line closes the connection") {
        for (const char* fields : {"Connection: keep-alive\r\nConnection: close\r\n", "Connection: foo, close\r\n",
                                   "Connection: foo\r\nConnection: bar, close\r\n",
                                   "Connection: foo\r\nX-Other: 1\r\nConnection: Close\r\n"}) {
            INFO("fields: " << test::printable(fields));
            client c(port);
            REQUIRE(c.ok());
            REQUIRE(c.send(get_req("/hello", fields)));
            auto r = c.read();
            CHECK(r.status == 200);
            CHECK(r.body == "hello");
            CHECK(lower(r.header("Connection")) == "close");
            if (lower(r.header("Connection")) == "close") CHECK(c.closed());  // else it would wait 10 s
        }
    }
    SECTION("HTTP/1.1: field lines without close keep the connection") {
        client c(port);
        REQUIRE(c.ok());
        REQUIRE(c.send(get_req("/hello", "Connection: foo\r\nConnection: bar\r\n")));
        auto r = c.read();
        CHECK(r.status == 200);
        CHECK(lower(r.header("Connection")) != "close");
        REQUIRE(c.send(get_req("/hello")));
        CHECK(c.read().body == "hello");
    }
    SECTION("HTTP/1.0: keep-alive in a later field line keeps the connection") {
        client c(port);
        REQUIRE(c.ok());
        REQUIRE(c.send("GET /hello HTTP/1.0\r\nHost: x\r\nConnection: x\r\nConnection: keep-alive\r\n\r\n"));
        auto r = c.read();
        CHECK(r.status == 200);
        CHECK(r.body == "hello");
        CHECK(lower(r.header("Connection")) == "keep-alive");
        REQUIRE(c.send("GET /path?n=2 HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n"));
        auto r2 = c.read();
        CHECK(r2.status == 200);
        CHECK(r2.body == "/path|n=2");
    }
    SECTION("HTTP/1.0: keep-alive and close in different field lines: close wins") {
        client c(port);
        REQUIRE(c.ok());
        REQUIRE(c.send("GET /hello HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n"));
        auto r = c.read();
        CHECK(r.status == 200);
        CHECK(lower(r.header("Connection")) != "keep-alive");
        if (lower(r.header("Connection")) != "keep-alive") CHECK(c.closed());  // else it would wait 10 s
    }
    SECTION("HTTP/1.0: keep-alive and close in one field line: close wins") {
        client c(port);
        REQUIRE(c.ok());
        REQUIRE(c.send("GET /hello HTTP/1.0\r\nHost: x\r\nConnection: keep-alive, close\r\n\r\n"));
        auto r = c.read();
        CHECK(r.status == 200);
        CHECK(lower(r.header("Connection")) != "keep-alive");
        if (lower(r.header("Connection")) != "keep-alive") CHECK(c.closed());  // else it would wait 10 s
    }
    srv.stop();
}

TEST_CASE("error responses to HEAD carry no body", "[http][head]") {
    auto o = test::local_options();
    o.max_header_bytes = 1024;
    o.max_headers = 10;
    rs::server srv(o);
    add_echo_routes(srv);
    srv.get("/", [](const rs::request&, rs::response& res) { res.set_content("root", "text/plain"); });
    const auto port = start(srv);

    SECTION("404 and 405 from routing: the next pipelined response follows the head directly") {
        client c(port);
        REQUIRE(c.ok());
        REQUIRE(c.send("HEAD /nope HTTP/1.1\r\nHost: x\r\n\r\n"
                       "HEAD /echo HTTP/1.1\r\nHost: x\r\n\r\n" +
                       get_req("/hello")));
        auto h404 = c.read(/*head_only=*/true);
        CHECK(h404.status == 404);
        auto h405 = c.read(true);
        CHECK(h405.status == 405);
        auto g = c.read();
        INFO("head of the follow-up response: " << test::printable(g.head));
        CHECK(g.head.rfind("HTTP/1.1 200", 0) == 0);
        CHECK(g.body == "hello");
    }
    SECTION("errors found in the head: nothing follows the head before the close") {
        struct head_case {
            const char* name;
            std::string raw;
            int status;
        };
        std::string many;
        for (int i = 0; i < 11; ++i) many += "X-" + std::to_string(i) + ": v\r\n";
        const std::vector<head_case> cases = {
            {"413: Content-Length past max_body_bytes",
             "HEAD / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n", 413},
            {"431: a field past max_header_bytes",
             "HEAD /hello HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(2000, 'b') + "\r\n\r\n", 431},
            {"431: more fields than max_headers", "HEAD /hello HTTP/1.1\r\nHost: x\r\n" + many + "\r\n", 431},
            {"400: two Host fields", "HEAD /hello HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400},
            {"400: space before a colon", "HEAD /hello HTTP/1.1\r\nHost : x\r\n\r\n", 400},
            {"400: a bad Content-Length", "HEAD /hello HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400},
            {"417: an unknown expectation", "HEAD /hello HTTP/1.1\r\nHost: x\r\nExpect: x\r\n\r\n", 417},
            {"501: a transfer coding other than chunked",
             "HEAD /hello HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501},
        };
        for (const head_case& hc : cases) {
            DYNAMIC_SECTION(hc.name) {
                client c(port);
                REQUIRE(c.ok());
                // A GET behind it, with Connection: close: should the server go on after
                // the error, its answer ends the connection too, so the read below is bounded.
                REQUIRE(c.send(hc.raw + get_req("/hello", "Connection: close\r\n")));
                bool eof = false;
                const std::string all = read_to_eof(c, eof);
                INFO("received: " << test::printable(all, 400));
                CHECK(eof);
                CHECK(all.rfind("HTTP/1.1 " + std::to_string(hc.status) + " ", 0) == 0);
                const std::size_t end = all.find("\r\n\r\n");
                REQUIRE(end != std::string::npos);
                const std::string after = all.substr(end + 4);
                INFO("after the head: " << test::printable(after));
                // Nothing, or the next response: never a body.
                CHECK((after.empty() || after.rfind("HTTP/1.1 200 ", 0) == 0));
            }
        }
    }
    srv.stop();
}

TEST_CASE("access_log sees every response; error_log what the server handled itself", "[http][log]") {
    struct entry {
        std::string method, target;
        int status;
        std::size_t bytes;
        std::chrono::microseconds duration;
    };
    std::mutex m;
    std::vector<entry> log;
    std::vector<std::string> errors;
    rs::options o = test::local_options();
    o.access_log = [&](const rs::access_entry& e) {
        std::lock_guard<std::mutex> lock(m);
        log.push_back({std::string(e.method), std::string(e.target), e.status, e.bytes, e.duration});
    };  // no CHECK in here: Catch2's assertions are not for server threads
    o.error_log = [&](std::string_view line) {
        std::lock_guard<std::mutex> lock(m);
        errors.emplace_back(line);
    };
    rs::server srv(o);
    srv.get("/hello", [](const rs::request&, rs::response& res) { res.set_content("Hello, World!", "text/plain"); });
    srv.get("/throw", [](const rs::request&, rs::response&) { throw std::runtime_error("boom"); });
    srv.get("/stream", [](const rs::request&, rs::response& res) {
        res.set_stream("text/plain", [](rs::body_writer& out) {
            out.write("abc");
            out.write("de");
        });
    });
    const auto port = start(srv);
    CHECK(test::get(port, "/hello?x=1").status == 200);
    CHECK(test::get(port, "/nowhere").status == 404);
    CHECK(test::get(port, "/throw").status == 500);
    {  // read the stream to its end: a client that left early would cut what it wrote
        test::client c(port);
        REQUIRE(c.send("GET /stream HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"));
        while (c.rd.fill()) {
        }
        CHECK(c.rd.buf.find("0\r\n\r\n") != std::string::npos);
    }
    CHECK(test::request(port, "BAD\r\n\r\n").status == 400);
    srv.stop();

    // Each entry is written after its response went out, so the client may be on to its
    // next request first: look entries up by target, not by position.
    std::lock_guard<std::mutex> lock(m);
    REQUIRE(log.size() == 5);
    auto find = [&](const std::string& target) {
        const auto it = std::find_if(log.begin(), log.end(), [&](const entry& x) { return x.target == target; });
        REQUIRE(it != log.end());
        return *it;
    };
    const entry hello = find("/hello?x=1"), missing = find("/nowhere"), thrown = find("/throw"),
                stream = find("/stream"), bad = find("");
    CHECK((hello.method == "GET" && hello.status == 200 && hello.bytes == 13));
    CHECK(missing.status == 404);
    CHECK(thrown.status == 500);
    CHECK((stream.status == 200 && stream.bytes == 5));  // what the stream wrote
    CHECK((bad.status == 400 && bad.method.empty()));
    for (const entry& x : log) CHECK(x.duration.count() >= 0);
    REQUIRE(errors.size() == 1);
    CHECK(errors[0].find("a handler threw") != std::string::npos);
    CHECK(errors[0].find("boom") != std::string::npos);
}

TEST_CASE("access_log: exactly one entry per response attempted, also those that failed", "[http][log]") {
    struct entry {
        std::string method, target;
        int status;
        std::size_t bytes;
    };
    std::mutex m;
    std::vector<entry> log;
    rs::options o = test::local_options();
    o.access_log = [&](const rs::access_entry& e) {
        std::lock_guard<std::mutex> lock(m);
        log.push_back({std::string(e.method), std::string(e.target), e.status, e.bytes});
    };
    rs::server srv(o);
    const auto stream = [](rs::body_writer& out) {
        out.write("abc");
        out.write("de");
    };
    srv.get("/stream", [&](const rs::request&, rs::response& res) { res.set_stream("text/plain", stream); });
    srv.get("/sized", [&](const rs::request&, rs::response& res) { res.set_stream("text/plain", 5, stream); });
    srv.get("/throws", [](const rs::request&, rs::response& res) {
        res.set_stream("text/plain", [](rs::body_writer& out) {
            out.write("abc");
            throw std::runtime_error("provider failed");
        });
    });
    // /gate and /gate_stream hold their handler until the client has reset the connection,
    // so the head cannot be sent.
    std::promise<void> entered_p, entered_stream_p, reset_p, reset_stream_p;
    std::shared_future<void> reset = reset_p.get_future().share(), reset_stream = reset_stream_p.get_future().share();
    srv.get("/gate", [&](const rs::request&, rs::response& res) {
        entered_p.set_value();
        reset.wait_for(30s);
        res.set_content(std::string(100000, 'x'), "text/plain");
    });
    srv.get("/gate_stream", [&](const rs::request&, rs::response& res) {
        entered_stream_p.set_value();
        reset_stream.wait_for(30s);
        res.set_stream("text/plain", [](rs::body_writer& out) { out.write("never"); });
    });
    const auto port = start(srv);

    // HEAD of streamed bodies, with and without a length.
    for (const char* target : {"/stream", "/sized"}) {
        const auto r = test::request(port, std::string("HEAD ") + target + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        CHECK(r.status == 200);
    }
    {  // a provider that throws: the connection ends, cut
        client c(port);
        REQUIRE(c.send("GET /throws HTTP/1.1\r\nHost: x\r\n\r\n"));
        while (c.rd.fill()) {
        }
        CHECK(c.rd.buf.find("abc") != std::string::npos);
    }
    // A head that cannot be sent: the client resets the connection while the handler runs.
    for (auto [target, entered, release] :
         {std::tuple<const char*, std::promise<void>*, std::promise<void>*>{"/gate", &entered_p, &reset_p},
          {"/gate_stream", &entered_stream_p, &reset_stream_p}}) {
        INFO(target);
        client c(port);
        REQUIRE(c.send(std::string("GET ") + target + " HTTP/1.1\r\nHost: x\r\n\r\n"));
        REQUIRE(entered->get_future().wait_for(30s) == std::future_status::ready);
        linger hard{1, 0};  // close() sends RST at once
        REQUIRE(::setsockopt(c.fd, SOL_SOCKET, SO_LINGER, &hard, sizeof hard) == 0);
        c.close();
        release->set_value();
    }
    srv.stop();  // every entry is written by now

    std::lock_guard<std::mutex> lock(m);
    auto entries_of = [&](const std::string& target) {
        std::vector<entry> out;
        for (const entry& e : log)
            if (e.target == target) out.push_back(e);
        return out;
    };
    const struct {
        const char* target;
        const char* method;
        std::size_t bytes;
    } expected[] = {{"/stream", "HEAD", 0}, {"/sized", "HEAD", 0}, {"/throws", "GET", 3},
                    {"/gate", "GET", 0},    {"/gate_stream", "GET", 0}};
    for (const auto& x : expected) {
        INFO(x.target);
        const std::vector<entry> got = entries_of(x.target);
        CHECK(got.size() == 1);
        if (got.size() != 1) continue;
        CHECK(got[0].method == x.method);
        CHECK(got[0].status == 200);
        CHECK(got[0].bytes == x.bytes);
    }
    CHECK(log.size() == std::size(expected));
}

TEST_CASE("log_escape: control bytes, quotes and backslashes escaped; the rest kept", "[http][log]") {
    CHECK(rs::log_escape("") == "");
    CHECK(rs::log_escape("/plain?a=1&b=%20") == "/plain?a=1&b=%20");
    CHECK(rs::log_escape("boom\r\nInjected: x") == "boom\\r\\nInjected: x");
    CHECK(rs::log_escape("tab\there") == "tab\\there");
    CHECK(rs::log_escape(std::string("nul\0one\x01\x1f\x7f", 10)) == "nul\\x00one\\x01\\x1f\\x7f");
    CHECK(rs::log_escape("say \"hi\" \\ bye") == "say \\\"hi\\\" \\\\ bye");
    CHECK(rs::log_escape("<>{}|^`") == "<>{}|^`");
    CHECK(rs::log_escape("caf\xc3\xa9") == "caf\xc3\xa9");  // UTF-8 kept
    // No byte of the result is a control byte, whatever the input.
    std::string every;
    for (int b = 0; b < 256; ++b) every += static_cast<char>(b);
    for (char ch : rs::log_escape(every)) {
        const auto u = static_cast<unsigned char>(ch);
        CHECK((u >= 0x20 && u != 0x7f));
    }
}

TEST_CASE("error_log lines carry no control byte of a handler's exception text", "[http][log]") {
    std::mutex m;
    std::vector<std::string> errors;
    rs::options o = test::local_options();
    o.error_log = [&](std::string_view line) {
        std::lock_guard<std::mutex> lock(m);
        errors.emplace_back(line);
    };
    rs::server srv(o);
    srv.get("/throw", [](const rs::request&, rs::response&) {
        throw std::runtime_error("boom\r\nInjected: x\x1b[2J\x7f");
    });
    srv.get("/stream", [](const rs::request&, rs::response& res) {
        res.set_stream("text/plain", [](rs::body_writer&) { throw std::runtime_error("bad\nline"); });
    });
    const auto port = start(srv);
    CHECK(test::get(port, "/throw").status == 500);
    CHECK(test::get(port, "/stream").status == 200);
    srv.stop();
    std::lock_guard<std::mutex> lock(m);
    REQUIRE(errors.size() == 2);
    for (const std::string& line : errors) {
        INFO(test::printable(line));
        for (char ch : line) {
            const auto u = static_cast<unsigned char>(ch);
            CHECK((u >= 0x20 && u != 0x7f));
        }
    }
    std::sort(errors.begin(), errors.end());
    CHECK(errors[0] == "restartable_server: a handler threw (answered 500): boom\\r\\nInjected: x\\x1b[2J\\x7f");
    CHECK(errors[1] == "restartable_server: a stream provider threw: bad\\nline");
}

TEST_CASE("access_log: the README's line format cannot be broken by a target", "[http][log]") {
    // The README's example, letter for letter but for the output: method, the target quoted
    // and escaped with log_escape, status, bytes, duration.
    std::mutex m;
    std::vector<std::string> lines;
    rs::options o = test::local_options();
    o.access_log = [&](const rs::access_entry& e) {
        char line[10000];
        std::snprintf(line, sizeof line, "%s \"%s\" %d %zu %lldus\n",
                      std::string(e.method.empty() ? "-" : e.method).c_str(), rs::log_escape(e.target).c_str(),
                      e.status, e.bytes, static_cast<long long>(e.duration.count()));
        std::lock_guard<std::mutex> lock(m);
        lines.emplace_back(line);
    };
    rs::server srv(o);
    srv.get("/*", [](const rs::request&, rs::response& res) { res.set_content("ok", "text/plain"); });
    const auto port = start(srv);
    // Every byte a target may hold (visible ASCII), and the ones that break quoted formats.
    std::string all_visible = "/";
    for (char ch = 0x21; ch < 0x7f; ++ch) all_visible += ch;
    const std::vector<std::string> targets = {
        "/a\"b", "/x\\y", "/<>{}|^`", "/end\"\\", "/q?v=\"\\\"\"", all_visible, "/plain"};
    for (const std::string& t : targets) {
        INFO(t);
        CHECK(test::request(port, "GET " + t + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").status != 0);
    }
    srv.stop();
    std::lock_guard<std::mutex> lock(m);
    REQUIRE(lines.size() == targets.size());
    std::vector<std::string> parsed;
    for (const std::string& line : lines) {
        INFO(line);
        // method SP '"' escaped '"' SP status SP bytes SP duration LF, read back strictly.
        CHECK(std::count(line.begin(), line.end(), '\n') == 1);
        const std::size_t open = line.find(" \"");
        REQUIRE(open != std::string::npos);
        std::string target;
        std::size_t i = open + 2;
        for (; i < line.size() && line[i] != '"'; ++i) {
            if (line[i] != '\\') {
                target += line[i];
                continue;
            }
            REQUIRE(i + 1 < line.size());
            const char e = line[++i];
            REQUIRE((e == '"' || e == '\\'));  // a target has no control byte to escape
            target += e;
        }
        REQUIRE(i < line.size());
        CHECK(line.substr(i + 1, 5) == " 200 ");
        parsed.push_back(target);
    }
    std::vector<std::string> want = targets;
    std::sort(want.begin(), want.end());
    std::sort(parsed.begin(), parsed.end());
    CHECK(parsed == want);
}

TEST_CASE("access_log: each duration lies within its request's span, on fresh and kept-alive connections",
          "[http][log]") {
    // The server's span (the whole head's arrival to the response handed over) begins
    // after the client began to send, and ends before access_log is called: it lies
    // inside [client's send, log call], with no margin needed. The client pauses before
    // and between its requests on a kept-alive connection (the scenario, not
    // synchronisation): a duration counted from an earlier moment (the connection's
    // opening, the previous request, no start at all) takes a pause in and passes it.
    using steady = std::chrono::steady_clock;
    std::mutex m;
    struct logged {
        std::chrono::microseconds duration;
        steady::time_point at;
    };
    std::map<std::string, logged> log;
    rs::options o = test::local_options();
    o.access_log = [&](const rs::access_entry& e) {
        const auto now = steady::now();
        std::lock_guard<std::mutex> lock(m);
        log[std::string(e.target)] = {e.duration, now};
    };
    rs::server srv(o);
    srv.get("/hello", [](const rs::request&, rs::response& res) { res.set_content("Hello, World!", "text/plain"); });
    const auto port = start(srv);
    std::map<std::string, steady::time_point> sent;
    const auto timed = [&](client& c, const std::string& target, const std::string& extra) {
        sent[target] = steady::now();
        REQUIRE(c.send("GET " + target + " HTTP/1.1\r\nHost: localhost\r\n" + extra + "\r\n"));
        REQUIRE(c.read().status == 200);
    };
    {
        client c(port);
        REQUIRE(c.ok());
        std::this_thread::sleep_for(100ms);  // connected, silent: the pause is the scenario
        for (int i = 0; i < 3; ++i) {
            if (i != 0) std::this_thread::sleep_for(100ms);  // idle between requests
            timed(c, "/hello?kept=" + std::to_string(i), "");
        }
    }
    for (int i = 0; i < 3; ++i) {
        client c(port);
        REQUIRE(c.ok());
        timed(c, "/hello?fresh=" + std::to_string(i), "Connection: close\r\n");
    }
    srv.stop();  // every entry is written by now
    std::lock_guard<std::mutex> lock(m);
    REQUIRE(log.size() == sent.size());
    for (const auto& s : sent) {
        const auto it = log.find(s.first);
        REQUIRE(it != log.end());
        const auto span = std::chrono::duration_cast<std::chrono::microseconds>(it->second.at - s.second);
        INFO(s.first << ": logged " << it->second.duration.count() << " us; from the send to the log call "
                     << span.count() << " us");
        CHECK(it->second.duration.count() >= 0);
        CHECK(it->second.duration <= span);
    }
}

namespace {
/// server_side_nodelay: TCP_NODELAY of the server's end of client (found in this process's
/// descriptors: the socket whose peer is the client's local address); -1 when none is open.
int server_side_nodelay(int client_fd) {
    sockaddr_storage local{};
    socklen_t len = sizeof local;
    if (::getsockname(client_fd, reinterpret_cast<sockaddr*>(&local), &len) != 0) return -1;
    for (int fd = 0; fd < 4096; ++fd) {
        if (fd == client_fd) continue;
        sockaddr_storage peer{};
        socklen_t plen = sizeof peer;
        if (::getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &plen) != 0 || plen != len ||
            std::memcmp(&peer, &local, len) != 0)
            continue;
        int on = 0;
        socklen_t olen = sizeof on;
        if (::getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, &olen) != 0) return -1;
        return on != 0 ? 1 : 0;
    }
    return -1;
}
}  // namespace

TEST_CASE("TCP_NODELAY: set before a kept-alive connection's second response, a stream or a partial write; "
          "not for a lone response that closes", "[http][tcp]") {
    // Without it a response written after another one (keep-alive), a stream's chunks or
    // the rest of a response the socket did not take at once may wait for the client's
    // delayed ACK (Nagle's algorithm, up to 40 ms on Linux). A connection that closes
    // after one write needs nothing: the half-close pushes what is queued.
    rs::server srv(test::local_options(2));
    srv.get("/hello", [](const rs::request&, rs::response& res) { res.set_content("hello", "text/plain"); });
    srv.get("/stream", [](const rs::request&, rs::response& res) {
        res.set_stream("text/plain", [](rs::body_writer& out) {
            for (int i = 0; i < 3; ++i) out.write("chunk\n");
        });
    });
    srv.get("/big", [](const rs::request&, rs::response& res) {
        res.set_content(std::string(32 << 20, 'x'), "application/octet-stream");
    });
    const std::uint16_t port = test::start(srv);
    SECTION("keep-alive") {
        test::client c(port);
        REQUIRE(c.send("GET /hello HTTP/1.1\r\nHost: t\r\n\r\n"));
        REQUIRE(c.read().status == 200);
        REQUIRE(c.send("GET /hello HTTP/1.1\r\nHost: t\r\n\r\n"));
        REQUIRE(c.read().status == 200);  // written after the option was set
        CHECK(server_side_nodelay(c.fd) == 1);
    }
    SECTION("Connection: close") {
        test::client c(port);
        REQUIRE(c.send("GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"));
        REQUIRE(c.read().status == 200);
        CHECK(server_side_nodelay(c.fd) == 0);  // lingering until this client closes
    }
    SECTION("a stream") {
        test::client c(port);
        REQUIRE(c.send("GET /stream HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"));
        REQUIRE(c.read().status == 200);
        CHECK(server_side_nodelay(c.fd) == 1);
    }
    SECTION("a response the socket did not take at once") {
        test::client c(port);
        REQUIRE(c.send("GET /big HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"));
        const test::http_response r = c.read();  // 32 MiB never fit the socket at once
        REQUIRE(r.status == 200);
        CHECK(r.body.size() == std::size_t(32) << 20);
        CHECK(server_side_nodelay(c.fd) == 1);
    }
    srv.stop();
}
