// Static files over real sockets: rs::static_files() serving a temporary tree (mkdtemp) with
// a server on 127.0.0.1, port 0. Covers every refused path (dot segments raw and encoded,
// encoded slash and backslash, NUL, empty segments, bad escapes, dot-files, symbolic links
// out of the root, FIFOs, directories without index), MIME types, 304 and 412 from each
// validator, 206 and 416, If-Range, HEAD, a 5 MiB file streamed byte-exact, descriptors
// (close-on-exec, none left open) and curl as a real client. Responses are read to EOF
// (every request says Connection: close), so a 304 or HEAD that sent body bytes fails.
#include "process.hpp"
#include "support.hpp"

#include <functional>
#include <memory>


#include <fcntl.h>
#include <ftw.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

namespace rs = restartable_server;

namespace {

constexpr std::time_t old_mtime = 784111777;  // the example date of RFC 9110 5.6.7
constexpr const char* old_date = "Sun, 06 Nov 1994 08:49:37 GMT";
constexpr std::size_t big_size = 5 * 1024 * 1024;
constexpr off_t sparse_size = 64 * 1024 * 1024;  // more than any socket buffers hold
const std::string hello = "Hello, static!\n";

void write_file(const std::string& path, const std::string& content) {
    std::ofstream f(path, std::ios::binary);
    f << content;
    REQUIRE(f.good());
}

void set_mtime(const std::string& path, std::time_t t) {
    timespec times[2] = {{t, 0}, {t, 0}};
    REQUIRE(::utimensat(AT_FDCWD, path.c_str(), times, 0) == 0);
}

/// site: a temporary directory holding "www", the served root, and files outside it that
/// must never be served. Removed with everything in it on destruction.
struct site {
    std::string dir, root, big;

    site() {
        char tmpl[] = "/tmp/rs_static_XXXXXX";
        REQUIRE(::mkdtemp(tmpl) != nullptr);
        dir = tmpl;
        root = dir + "/www";
        for (const char* d : {"/www", "/www/sub", "/www/empty_dir", "/www/.git", "/www/%2e%2e", "/www2"})
            REQUIRE(::mkdir((dir + d).c_str(), 0755) == 0);
        write_file(dir + "/outside.txt", "outside secret");
        write_file(dir + "/www2/sibling.txt", "sibling secret");
        write_file(root + "/index.html", "<h1>home</h1>\n");
        write_file(root + "/hello.txt", hello);
        write_file(root + "/empty.txt", "");
        write_file(root + "/old.txt", "old file");
        set_mtime(root + "/old.txt", old_mtime);
        write_file(root + "/future.txt", "from the future");
        set_mtime(root + "/future.txt", std::time(nullptr) + 365 * 86400);
        write_file(root + "/sub/index.html", "<p>sub</p>\n");
        write_file(root + "/sub/page.html", "<p>page</p>\n");
        write_file(root + "/.secret", "dot secret");
        write_file(root + "/.git/config", "[core]");
        write_file(root + "/a b%.txt", "space and percent");
        write_file(root + "/%2e%2e/x.txt", "literal percent name");
        REQUIRE(::symlink("../outside.txt", (root + "/link_out").c_str()) == 0);
        REQUIRE(::symlink((dir + "/outside.txt").c_str(), (root + "/link_abs_out").c_str()) == 0);
        REQUIRE(::symlink("..", (root + "/link_dir_out").c_str()) == 0);
        REQUIRE(::symlink("../www2/sibling.txt", (root + "/link_sibling").c_str()) == 0);
        REQUIRE(::symlink("hello.txt", (root + "/link_in").c_str()) == 0);
        REQUIRE(::symlink("www", (dir + "/www_link").c_str()) == 0);
        REQUIRE(::mkfifo((root + "/fifo").c_str(), 0644) == 0);
        // big.bin: 5 MiB of a pseudo-random sequence, so a lost or repeated chunk shows.
        big.resize(big_size);
        std::uint32_t x = 12345;
        for (char& c : big) {
            x = x * 1103515245u + 12345u;
            c = static_cast<char>(x >> 24);
        }
        write_file(root + "/big.bin", big);
        int fd = ::open((root + "/sparse.bin").c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
        REQUIRE(fd >= 0);
        REQUIRE(::ftruncate(fd, sparse_size) == 0);
        ::close(fd);
    }
    ~site() {
        ::nftw(dir.c_str(), [](const char* path, const struct stat*, int, FTW*) { return ::remove(path); }, 16,
               FTW_DEPTH | FTW_PHYS);
    }
    site(const site&) = delete;
    site& operator=(const site&) = delete;
};

/// reply: one response read to EOF. body is decoded (chunked or Content-Length or
/// close-delimited); raw is every byte after the head, as sent.
struct reply {
    int status = 0;
    test::http_response parsed;  // head (and header()) of the response
    std::string raw, body;
    bool framing_ok = true;  // the body matched its Content-Length or chunked framing
    std::string header(std::string_view name) const { return parsed.header(name); }
};

/// decode_chunked: the body of a chunked message, or false when the framing is broken.
bool decode_chunked(std::string_view in, std::string& out) {
    for (;;) {
        std::size_t eol = in.find("\r\n");
        if (eol == std::string_view::npos) return false;
        std::size_t size = std::stoul(std::string(in.substr(0, eol)), nullptr, 16);
        in.remove_prefix(eol + 2);
        if (size == 0) return in == "\r\n";
        if (in.size() < size + 2 || in.substr(size, 2) != "\r\n") return false;
        out.append(in.substr(0, size));
        in.remove_prefix(size + 2);
    }
}

/// roundtrip: sends raw on a new connection and reads until the server closes it.
reply roundtrip(std::uint16_t port, const std::string& raw_request) {
    reply r;
    int fd = test::connect_to(port);
    if (fd < 0 || !test::send_all(fd, raw_request)) {
        if (fd >= 0) ::close(fd);
        return r;
    }
    test::reader rd{fd, {}};
    while (rd.fill()) {
    }
    ::close(fd);
    std::size_t end = rd.buf.find("\r\n\r\n");
    if (end == std::string::npos) return r;
    r.parsed.head = rd.buf.substr(0, end + 2);
    r.raw = rd.buf.substr(end + 4);
    r.status = std::atoi(r.parsed.head.c_str() + 9);
    if (r.header("Transfer-Encoding") == "chunked") {
        r.framing_ok = decode_chunked(r.raw, r.body);
    } else {
        r.body = r.raw;
        std::string cl = r.header("Content-Length");
        if (!cl.empty()) r.framing_ok = std::stoul(cl) == r.raw.size();
    }
    return r;
}

/// get: a GET (or another method) of target with extra header lines ("Name: value\r\n").
reply get(std::uint16_t port, const std::string& target, const std::string& headers = "",
          const std::string& method = "GET", const std::string& version = "1.1") {
    return roundtrip(port, method + " " + target + " HTTP/" + version + "\r\nHost: localhost\r\n" + headers +
                              "Connection: close\r\n\r\n");
}

/// static_server: a server on port 0 with GET /static/* serving root.
struct static_server {
    rs::server srv{test::local_options()};
    std::uint16_t port = 0;
    explicit static_server(const std::string& root, const rs::static_options& opts = {}) {
        srv.get("/static/*", rs::static_files(root, opts));
        srv.route("POST", "/static/*", rs::static_files(root, opts));
        port = test::start(srv);
    }
};

std::string etag_of(const std::string& path) {
    struct stat st {};
    REQUIRE(::stat(path.c_str(), &st) == 0);
    char buf[64];
    std::snprintf(buf, sizeof buf, "W/\"%llx-%llx\"", static_cast<unsigned long long>(st.st_size),
                  static_cast<unsigned long long>(st.st_mtim.tv_sec) * 1000000000ull +
                      static_cast<unsigned long long>(st.st_mtim.tv_nsec));
    return buf;
}

/// exchange: swaps the directory entries a and b (either may be a directory, a symbolic
/// link, a FIFO): atomically with renameat2(RENAME_EXCHANGE) where the file system has it,
/// else through a third name (then for a moment neither name exists).
bool exchange(const std::string& a, const std::string& b) {
#ifdef RENAME_EXCHANGE
    if (::renameat2(AT_FDCWD, a.c_str(), AT_FDCWD, b.c_str(), RENAME_EXCHANGE) == 0) return true;
    if (errno != EINVAL && errno != ENOSYS) return false;
#endif
    const std::string tmp = a + ".swap";
    return ::rename(a.c_str(), tmp.c_str()) == 0 && ::rename(b.c_str(), a.c_str()) == 0 &&
           ::rename(tmp.c_str(), b.c_str()) == 0;
}

/// swap_tally: what the requests of a swapping test got.
struct swap_tally {
    long inside = 0;       // 200 with the file under the root
    long outside = 0;      // a body with the content that lives outside the root
    long refused = 0;      // 404
    long unanswered = 0;   // no response within the client's receive timeout (10 s)
    long other = 0;        // anything else
};

/// swapping_requests: sends requests GETs of target on keep-alive connections while
/// another thread exchanges the entries a and b in a loop; bounded by the count, not by
/// time. A request that gets no answer within the receive timeout counts as unanswered,
/// and release() (e.g. opening a FIFO for writing) runs so the server's thread goes on.
swap_tally swapping_requests(std::uint16_t port, const std::string& target, const std::string& a, const std::string& b,
                             const std::string& inside, long requests, const std::function<void()>& release = {}) {
    std::atomic<bool> done{false};
    std::atomic<long> swaps{0};
    std::thread swapper([&] {
        while (!done.load())
            if (exchange(a, b)) swaps.fetch_add(1);
    });
    swap_tally t;
    const std::string req = "GET " + target + " HTTP/1.1\r\nHost: localhost\r\n\r\n";
    std::unique_ptr<test::client> c;
    for (long i = 0; i < requests; ++i) {
        if (!c || !c->ok()) c = std::make_unique<test::client>(port);
        test::http_response r;
        if (c->send(req)) r = c->read();
        if (r.status == 0) {
            ++t.unanswered;
            if (release) release();
            c.reset();
            continue;
        }
        if (r.body.find("outside secret") != std::string::npos)
            ++t.outside;
        else if (r.status == 200 && r.body == inside)
            ++t.inside;
        else if (r.status == 404)
            ++t.refused;
        else
            ++t.other;
        if (r.header("Connection") == "close") c.reset();
    }
    done.store(true);
    swapper.join();
    INFO("swaps: " << swaps.load());
    CHECK(swaps.load() > 0);
    if ((swaps.load() & 1) != 0) exchange(a, b);  // back to where it started
    return t;
}

}  // namespace

TEST_CASE("static_files: the router gives a \"*\" segment the rest of the path, raw") {
    rs::server srv(test::local_options(1));
    srv.get("/probe/*", [](const rs::request& req, rs::response& res) {
        res.set_content(req.param("*"), "text/plain");
    });
    std::uint16_t port = test::start(srv);
    CHECK(get(port, "/probe/a%2Fb/c").body == "a%2Fb/c");  // not decoded: "%2F" is not "/"
    CHECK(get(port, "/probe/").body == "");
    CHECK(get(port, "/probe/x?q=1").body == "x");
    CHECK(get(port, "/probe").status == 404);
}

TEST_CASE("static_files: files, directories and their index, with the type of their extension") {
    site s;
    const std::pair<const char*, const char*> types[] = {
        {"page.html", "text/html; charset=utf-8"},   {"page.HTM", "text/html; charset=utf-8"},
        {"style.css", "text/css; charset=utf-8"},    {"app.js", "text/javascript; charset=utf-8"},
        {"mod.mjs", "text/javascript; charset=utf-8"}, {"data.json", "application/json"},
        {"pic.svg", "image/svg+xml"},                {"img.png", "image/png"},
        {"photo.jpg", "image/jpeg"},                 {"photo.JPEG", "image/jpeg"},
        {"anim.gif", "image/gif"},                   {"img.webp", "image/webp"},
        {"favicon.ico", "image/x-icon"},             {"notes.txt", "text/plain; charset=utf-8"},
        {"mod.wasm", "application/wasm"},            {"doc.pdf", "application/pdf"},
        {"font.woff2", "font/woff2"},                {"feed.xml", "application/xml"},
        {"blob.bin", "application/octet-stream"},    {"noext", "application/octet-stream"},
        {"archive.tar.gz", "application/gzip"},      {"trailing.", "application/octet-stream"},
    };
    for (const auto& t : types) write_file(s.root + "/" + t.first, std::string("content of ") + t.first);
    static_server server(s.root);

    for (const auto& t : types) {
        INFO(t.first);
        reply r = get(server.port, std::string("/static/") + t.first);
        CHECK(r.status == 200);
        CHECK(r.header("Content-Type") == t.second);
        CHECK(r.body == std::string("content of ") + t.first);
        CHECK(r.header("Content-Length") == std::to_string(r.body.size()));
        CHECK(r.header("Accept-Ranges") == "bytes");
        CHECK(r.header("X-Content-Type-Options") == "nosniff");
        CHECK(r.header("Cache-Control").empty());
    }
    CHECK(rs::mime_type("dir.css/file") == "application/octet-stream");  // the dot is not in the name

    const struct {
        const char* target;
        std::string body;
    } served[] = {
        {"/static/", "<h1>home</h1>\n"},
        {"/static/index.html", "<h1>home</h1>\n"},
        {"/static/sub/", "<p>sub</p>\n"},
        {"/static/sub/page.html", "<p>page</p>\n"},
        {"/static/hello.txt?v=3", hello},                    // the query is no part of the name
        {"/static/a%20b%25.txt", "space and percent"},       // decoded once
        {"/static/%252e%252e/x.txt", "literal percent name"},  // decoded once: the name "%2e%2e"
        {"/static/empty.txt", ""},
    };
    for (const auto& t : served) {
        INFO(t.target);
        reply r = get(server.port, t.target);
        CHECK(r.status == 200);
        CHECK(r.body == t.body);
        CHECK(r.framing_ok);
    }
    CHECK(get(server.port, "/static/").header("Content-Type") == "text/html; charset=utf-8");

    // A directory without its slash: redirected, so relative links in its index resolve.
    reply r = get(server.port, "/static/sub");
    CHECK(r.status == 301);
    CHECK(r.header("Location") == "/static/sub/");
    r = get(server.port, "/static/sub?lang=en");
    CHECK(r.status == 301);
    CHECK(r.header("Location") == "/static/sub/?lang=en");

    r = get(server.port, "/static/hello.txt", "", "POST");
    CHECK(r.status == 405);
    CHECK(r.header("Allow") == "GET, HEAD");
}

TEST_CASE("static_files: refuses paths that leave the root or that no file name gives") {
    test::watchdog dog("static_files refusals", std::chrono::seconds(120));  // opening the FIFO would block
    site s;
    static_server server(s.root);
    const struct {
        const char* target;
        int status;
    } cases[] = {
        // 400: dot segments, raw and encoded in any case
        {"/static/../outside.txt", 400},
        {"/static/sub/../../outside.txt", 400},
        {"/static/sub/../hello.txt", 400},
        {"/static/%2e%2e/outside.txt", 400},
        {"/static/%2E%2E/outside.txt", 400},
        {"/static/%2e%2E/outside.txt", 400},
        {"/static/.%2e/outside.txt", 400},
        {"/static/%2e./outside.txt", 400},
        {"/static/./hello.txt", 400},
        {"/static/%2e/hello.txt", 400},
        {"/static/sub/.", 400},
        {"/static/sub/..", 400},
        {"/static/sub/%2e%2e", 400},
        {"/static/.git/../hello.txt", 400},  // a dot-file first: still 400 for the ".."
        // 400: an encoded slash or a backslash, raw or encoded
        {"/static/..%2foutside.txt", 400},
        {"/static/..%2Foutside.txt", 400},
        {"/static/sub%2fpage.html", 400},
        {"/static/..%5coutside.txt", 400},
        {"/static/..%5Coutside.txt", 400},
        {"/static/..\\outside.txt", 400},
        // 400: NUL and other control bytes
        {"/static/hello.txt%00", 400},
        {"/static/hello.txt%00.png", 400},
        {"/static/%00", 400},
        {"/static/a%0ab", 400},
        {"/static/a%7fb", 400},
        // 400: empty segments
        {"/static//hello.txt", 400},
        {"/static/sub//page.html", 400},
        {"/static//", 400},
        // 400: bad escapes
        {"/static/%zz", 400},
        {"/static/abc%", 400},
        {"/static/abc%4", 400},
        {"/static/%%34%31", 400},
        // 404: symbolic links, out of the root (also to a sibling whose name starts the
        // same) and inside it: none is followed
        {"/static/link_in", 404},
        {"/static/link_out", 404},
        {"/static/link_abs_out", 404},
        {"/static/link_dir_out/outside.txt", 404},
        {"/static/link_sibling", 404},
        // 404: dot-files, encoded or not
        {"/static/.secret", 404},
        {"/static/%2esecret", 404},
        {"/static/.git/config", 404},
        {"/static/.git/", 404},
        // 404: no listing, no FIFO, no such file
        {"/static/empty_dir/", 404},
        {"/static/empty_dir", 404},
        {"/static/fifo", 404},
        {"/static/hello.txt/", 404},
        {"/static/missing.txt", 404},
        {"/static/%252e%252e/outside.txt", 404},  // decoded once: "%2e%2e" holds no such file
        {"/static", 404},                          // the router: "*" needs the slash before it
    };
    for (const auto& c : cases) {
        INFO(c.target);
        reply r = get(server.port, c.target);
        CHECK(r.status == c.status);
        CHECK(r.body.find("secret") == std::string::npos);
    }
}

TEST_CASE("static_files: a directory swapped for a symbolic link never serves what the link points to") {
    test::watchdog dog("static_files symlink swap", std::chrono::seconds(280));
    site s;
    REQUIRE(::mkdir((s.dir + "/outside_dir").c_str(), 0755) == 0);
    write_file(s.dir + "/outside_dir/f.txt", "outside secret");
    write_file(s.root + "/sub/f.txt", "inside");
    REQUIRE(::symlink("../outside_dir", (s.root + "/sub_link").c_str()) == 0);
    static_server server(s.root);
    CHECK(get(server.port, "/static/sub/f.txt").body == "inside");
    CHECK(get(server.port, "/static/sub_link/f.txt").status == 404);

    // www/sub and www/sub_link (-> ../outside_dir) change places in a loop.
    const swap_tally t = swapping_requests(server.port, "/static/sub/f.txt", s.root + "/sub", s.root + "/sub_link",
                                           "inside", 20000);
    INFO("inside " << t.inside << ", outside " << t.outside << ", 404 " << t.refused << ", unanswered "
                   << t.unanswered << ", other " << t.other);
    CHECK(t.outside == 0);
    CHECK(t.unanswered == 0);
    CHECK(t.other == 0);
    CHECK(get(server.port, "/static/sub/f.txt").body == "inside");
}

TEST_CASE("static_files: a FIFO swapped in for a file is refused and blocks nobody") {
    test::watchdog dog("static_files FIFO swap", std::chrono::seconds(280));
    site s;
    write_file(s.root + "/swap.txt", "regular");
    REQUIRE(::mkfifo((s.root + "/swap_fifo").c_str(), 0644) == 0);
    static_server server(s.root);
    CHECK(get(server.port, "/static/swap.txt").body == "regular");
    CHECK(get(server.port, "/static/swap_fifo").status == 404);

    // A server thread blocked in open() of the FIFO waits for a writer: the test plays it,
    // so an unfixed server fails the count instead of hanging the test.
    auto release = [&] {
        for (const char* name : {"/swap.txt", "/swap_fifo"}) {
            const int fd = ::open((s.root + name).c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
            if (fd >= 0) ::close(fd);
        }
    };
    const swap_tally t = swapping_requests(server.port, "/static/swap.txt", s.root + "/swap.txt",
                                           s.root + "/swap_fifo", "regular", 5000, release);
    INFO("regular " << t.inside << ", 404 " << t.refused << ", unanswered " << t.unanswered << ", other "
                    << t.other);
    CHECK(t.unanswered == 0);
    CHECK(t.other == 0);
    CHECK(t.outside == 0);
    for (int i = 0; i < 5; ++i) CHECK(get(server.port, "/static/hello.txt").body == hello);
}

TEST_CASE("static_files: options, another root and a root that is a symbolic link") {
    site s;
    rs::static_options opts;
    opts.dotfiles = true;
    opts.index = "";
    opts.cache_control = "no-cache";
    static_server open(s.root, opts);
    CHECK(get(open.port, "/static/.secret").body == "dot secret");
    CHECK(get(open.port, "/static/.git/config").body == "[core]");
    CHECK(get(open.port, "/static/..").status == 400);  // dotfiles never means dot segments
    CHECK(get(open.port, "/static/%2e%2e/outside.txt").status == 400);
    CHECK(get(open.port, "/static/sub/").status == 404);  // no index: no directory
    CHECK(get(open.port, "/static/sub").status == 404);
    CHECK(get(open.port, "/static/").status == 404);
    reply r = get(open.port, "/static/hello.txt");
    CHECK(r.header("Cache-Control") == "no-cache");
    r = get(open.port, "/static/hello.txt", "If-None-Match: " + r.header("ETag") + "\r\n");
    CHECK(r.status == 304);
    CHECK(r.header("Cache-Control") == "no-cache");

    rs::static_options page;
    page.index = "page.html";
    static_server other_index(s.root, page);
    CHECK(get(other_index.port, "/static/sub/").body == "<p>page</p>\n");
    CHECK(get(other_index.port, "/static/").status == 404);

    static_server through_link(s.dir + "/www_link");  // e.g. "current" switched by a deploy
    CHECK(get(through_link.port, "/static/hello.txt").body == hello);
    CHECK(get(through_link.port, "/static/link_out").status == 404);

    static_server missing(s.dir + "/no_such_dir");
    CHECK(get(missing.port, "/static/hello.txt").status == 404);

    rs::server at_top(test::local_options());
    at_top.get("/*", rs::static_files(s.root));
    std::uint16_t port = test::start(at_top);
    CHECK(get(port, "/").body == "<h1>home</h1>\n");
    CHECK(get(port, "/hello.txt").body == hello);
    CHECK(get(port, "//hello.txt").status == 400);
    CHECK(get(port, "/sub").header("Location") == "/sub/");
}

TEST_CASE("static_files: Last-Modified and ETag answer conditional requests") {
    site s;
    static_server server(s.root);
    const std::string etag = etag_of(s.root + "/old.txt");
    const std::string tag_only = etag.substr(2);  // the same opaque tag, not marked weak

    reply r = get(server.port, "/static/old.txt");
    CHECK(r.status == 200);
    CHECK(r.header("Last-Modified") == old_date);
    CHECK(r.header("ETag") == etag);

    const struct {
        std::string headers;
        int status;
    } cases[] = {
        {"If-None-Match: " + etag + "\r\n", 304},
        {"If-None-Match: " + tag_only + "\r\n", 304},  // weak comparison
        {"If-None-Match: \"other\"\r\n", 200},
        {"If-None-Match: \"a\", W/\"b\" ," + etag + "\r\n", 304},
        {"If-None-Match: \"a\"\r\nIf-None-Match: " + etag + "\r\n", 304},  // one list on two lines
        {"If-None-Match: *\r\n", 304},
        {"If-None-Match: " + etag.substr(0, etag.size() - 1) + "\r\n", 200},  // unterminated
        {"If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n", 304},
        {"If-Modified-Since: Sunday, 06-Nov-94 08:49:37 GMT\r\n", 304},  // rfc850-date
        {"If-Modified-Since: Sun Nov  6 08:49:37 1994\r\n", 304},        // asctime-date
        {"If-Modified-Since: Mon, 07 Nov 1994 00:00:00 GMT\r\n", 304},
        {"If-Modified-Since: Sun, 06 Nov 1994 08:49:36 GMT\r\n", 200},  // a second older
        {"If-Modified-Since: Sun, 06 Nov 1994 08:49:37 UTC\r\n", 200},  // not an HTTP-date
        {"If-Modified-Since: yesterday\r\n", 200},
        {"If-Modified-Since: " + std::string(old_date) + "\r\nIf-Modified-Since: " + old_date + "\r\n", 200},  // two
        // If-None-Match takes precedence over If-Modified-Since (RFC 9110 13.2.2)
        {"If-None-Match: \"other\"\r\nIf-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n", 200},
        {"If-None-Match: " + etag + "\r\nIf-Modified-Since: Sun, 06 Nov 1994 08:49:36 GMT\r\n", 304},
        // If-Match compares strongly: a weak ETag matches only "*"
        {"If-Match: *\r\n", 200},
        {"If-Match: " + etag + "\r\n", 412},
        {"If-Match: \"other\"\r\n", 412},
        {"If-Unmodified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n", 200},
        {"If-Unmodified-Since: Sun, 06 Nov 1994 08:49:36 GMT\r\n", 412},
        {"If-Match: *\r\nIf-Unmodified-Since: Sun, 06 Nov 1994 08:49:36 GMT\r\n", 200},  // If-Match wins
        {"If-None-Match: " + etag + "\r\nRange: bytes=0-1\r\n", 304},
    };
    for (const auto& c : cases) {
        INFO(c.headers);
        r = get(server.port, "/static/old.txt", c.headers);
        CHECK(r.status == c.status);
        if (c.status == 304) {
            CHECK(r.raw.empty());  // no body, not even with a Content-Length
            CHECK(r.header("Content-Length").empty());
            CHECK(r.header("ETag") == etag);
            CHECK(r.header("Last-Modified") == old_date);
        } else if (c.status == 200) {
            CHECK(r.body == "old file");
        }
    }
    r = get(server.port, "/static/old.txt", "If-None-Match: " + etag + "\r\n", "HEAD");
    CHECK(r.status == 304);
    CHECK(r.raw.empty());

    // A changed file: the old validators no longer match.
    write_file(s.root + "/old.txt", "new file");
    set_mtime(s.root + "/old.txt", old_mtime + 60);
    r = get(server.port, "/static/old.txt", "If-None-Match: " + etag + "\r\n");
    CHECK(r.status == 200);
    CHECK(r.body == "new file");
    CHECK(r.header("ETag") != etag);
    CHECK(get(server.port, "/static/old.txt", "If-Modified-Since: " + std::string(old_date) + "\r\n").status == 200);

    // A modification time in the future is reported as now (RFC 9110 8.8.2.1).
    r = get(server.port, "/static/future.txt");
    std::time_t last_modified = 0, date = 0;
    REQUIRE(rs::detail::parse_http_date(r.header("Last-Modified"), last_modified));
    REQUIRE(rs::detail::parse_http_date(r.header("Date"), date));
    CHECK(last_modified <= date);
    CHECK(date - last_modified < 60);
}

TEST_CASE("static_files: one byte range gives 206, an unsatisfiable one 416") {
    site s;
    static_server server(s.root);
    const struct {
        std::string range;
        std::uint64_t first, last;  // of hello.txt (15 bytes)
    } parts[] = {
        {"bytes=0-4", 0, 4},      {"bytes=7-", 7, 14},      {"bytes=-7", 8, 14},   {"bytes=-100", 0, 14},
        {"bytes=10-1000", 10, 14}, {"bytes=14-14", 14, 14}, {"BYTES=0-0", 0, 0},   {"bytes=0-4, ,", 0, 4},
        {"bytes=3-99999999999999999999999", 3, 14},
    };
    for (const auto& p : parts) {
        INFO(p.range);
        reply r = get(server.port, "/static/hello.txt", "Range: " + p.range + "\r\n");
        CHECK(r.status == 206);
        CHECK(r.body == hello.substr(p.first, p.last - p.first + 1));
        CHECK(r.header("Content-Range") ==
              "bytes " + std::to_string(p.first) + "-" + std::to_string(p.last) + "/15");
        CHECK(r.header("Content-Length") == std::to_string(r.body.size()));
        CHECK(r.header("Content-Type") == "text/plain; charset=utf-8");
    }

    const struct {
        const char* file;
        const char* range;
        const char* content_range;
    } unsatisfiable[] = {
        {"hello.txt", "bytes=15-", "bytes */15"},
        {"hello.txt", "bytes=100-200", "bytes */15"},
        {"hello.txt", "bytes=-0", "bytes */15"},
        {"hello.txt", "bytes=99999999999999999999999-", "bytes */15"},
        {"empty.txt", "bytes=0-", "bytes */0"},
        {"empty.txt", "bytes=-5", "bytes */0"},
    };
    for (const auto& u : unsatisfiable) {
        INFO(u.file << " " << u.range);
        reply r = get(server.port, std::string("/static/") + u.file, std::string("Range: ") + u.range + "\r\n");
        CHECK(r.status == 416);
        CHECK(r.header("Content-Range") == u.content_range);
    }

    // Ignored: several ranges, other units, malformed or invalid ranges; HEAD (range
    // handling is defined for GET only, RFC 9110 14.2).
    for (const char* ignored :
         {"Range: bytes=0-1,3-4\r\n", "Range: bytes=0-1, 5-\r\n", "Range: bytes=5-2\r\n", "Range: items=0-1\r\n",
          "Range: bytes=abc\r\n", "Range: bytes=-\r\n", "Range: bytes=1-2-3\r\n", "Range: bytes 0-1\r\n",
          "Range: bytes=0-1\r\nRange: bytes=2-3\r\n"}) {
        INFO(ignored);
        reply r = get(server.port, "/static/hello.txt", ignored);
        CHECK(r.status == 200);
        CHECK(r.body == hello);
    }
    reply r = get(server.port, "/static/hello.txt", "Range: bytes=0-4\r\n", "HEAD");
    CHECK(r.status == 200);
    CHECK(r.header("Content-Length") == "15");
    CHECK(r.raw.empty());

    // If-Range: the date form keeps the range; an entity tag never matches a weak ETag.
    const std::string etag = etag_of(s.root + "/old.txt");
    r = get(server.port, "/static/old.txt", "Range: bytes=0-2\r\nIf-Range: " + std::string(old_date) + "\r\n");
    CHECK(r.status == 206);
    CHECK(r.body == "old");
    r = get(server.port, "/static/old.txt", "Range: bytes=0-2\r\nIf-Range: Sun, 06 Nov 1994 08:49:38 GMT\r\n");
    CHECK(r.status == 200);
    CHECK(r.body == "old file");
    r = get(server.port, "/static/old.txt", "Range: bytes=0-2\r\nIf-Range: " + etag + "\r\n");
    CHECK(r.status == 200);
    r = get(server.port, "/static/old.txt", "Range: bytes=0-2\r\nIf-Range: " + etag.substr(2) + "\r\n");
    CHECK(r.status == 200);
    r = get(server.port, "/static/old.txt", "Range: bytes=0-2\r\nIf-Range: garbage\r\n");
    CHECK(r.status == 200);

    // Ranges of the 5 MiB file: up to 1 MiB read into the response, larger ones streamed.
    const struct {
        std::uint64_t first, last;
    } big_parts[] = {{1000000, 3999999}, {big_size - 10, big_size - 1}, {0, 1024 * 1024 - 1}, {0, 1024 * 1024}};
    for (const auto& p : big_parts) {
        std::string range = std::to_string(p.first) + "-" + std::to_string(p.last);
        INFO(range);
        r = get(server.port, "/static/big.bin", "Range: bytes=" + range + "\r\n");
        CHECK(r.status == 206);
        CHECK(r.framing_ok);
        CHECK(r.header("Content-Range") == "bytes " + range + "/" + std::to_string(big_size));
        CHECK(r.header("Content-Length") == std::to_string(p.last - p.first + 1));
        CHECK(r.body.size() == p.last - p.first + 1);
        CHECK(r.body == s.big.substr(p.first, p.last - p.first + 1));
    }
}

TEST_CASE("static_files: HEAD gives GET's header fields and no body") {
    site s;
    static_server server(s.root);
    for (const char* target : {"/static/hello.txt", "/static/", "/static/big.bin"}) {
        INFO(target);
        reply g = get(server.port, target);
        reply h = get(server.port, target, "", "HEAD");
        CHECK(h.status == 200);
        CHECK(h.raw.empty());
        for (const char* field : {"Content-Type", "ETag", "Last-Modified", "Accept-Ranges", "Content-Length",
                                  "Transfer-Encoding"})
            CHECK(h.header(field) == g.header(field));
        // Clients learn the size from HEAD, also of a file too large to be read into memory.
        CHECK(h.header("Content-Length") == std::to_string(g.body.size()));
        CHECK(h.header("Transfer-Encoding").empty());
    }
    CHECK(get(server.port, "/static/hello.txt", "", "HEAD").header("Content-Length") == "15");
    CHECK(get(server.port, "/static/big.bin", "", "HEAD").header("Content-Length") == std::to_string(big_size));
    CHECK(get(server.port, "/static/sparse.bin", "", "HEAD").header("Content-Length") == std::to_string(sparse_size));
    CHECK(get(server.port, "/static/missing", "", "HEAD").status == 404);
}

TEST_CASE("static_files: a 5 MiB file is streamed whole and byte-exact, with its Content-Length") {
    site s;
    static_server server(s.root);
    reply r = get(server.port, "/static/big.bin");
    CHECK(r.status == 200);
    CHECK(r.header("Content-Length") == std::to_string(big_size));  // the size is known: said, not chunked
    CHECK(r.header("Transfer-Encoding").empty());
    CHECK(r.framing_ok);
    CHECK(r.body.size() == big_size);
    CHECK(r.body == s.big);
    CHECK(r.header("Content-Type") == "application/octet-stream");

    r = get(server.port, "/static/big.bin", "", "GET", "1.0");
    CHECK(r.status == 200);
    CHECK(r.header("Content-Length") == std::to_string(big_size));
    CHECK(r.framing_ok);
    CHECK(r.body == s.big);

    // HTTP/1.0 with keep-alive: framed by Content-Length, the connection stays for the next.
    test::client c(server.port);
    REQUIRE(c.ok());
    REQUIRE(c.send("GET /static/big.bin HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
                   "GET /static/hello.txt HTTP/1.0\r\n\r\n"));
    test::http_response first = c.read();
    CHECK(first.status == 200);
    CHECK(first.header("Connection") == "keep-alive");
    CHECK(first.body == s.big);
    CHECK(c.read().body == hello);
}

TEST_CASE("static_files: a file that shrinks while it is sent ends the connection short of its length") {
    if (std::system("python3 --version > /dev/null 2>&1") != 0) RS_SKIP("python3 is not installed");
    test::watchdog dog("static_files shrinking file", std::chrono::seconds(240));
    site s;
    constexpr off_t whole = 32 * 1024 * 1024, cut = 16 * 1024 * 1024;
    const std::string path = s.root + "/shrinks.bin";
    {
        std::string data(static_cast<std::size_t>(whole), 'x');
        write_file(path, data);
    }
    static_server server(s.root);
    // Python's http.client reads the head and 1 MiB, says so, waits for a line on stdin,
    // then reads the rest: a body that ends short of Content-Length raises IncompleteRead,
    // a chunked one must lack its last chunk to do so.
    const std::string script =
        "import http.client, sys\n"
        "c = http.client.HTTPConnection('127.0.0.1', " + std::to_string(server.port) + ", timeout=60)\n"
        "c.request('GET', '/static/shrinks.bin')\n"
        "r = c.getresponse()\n"
        "first = r.read(1 << 20)\n"
        "print('read', len(first), r.getheader('Content-Length'), r.getheader('Transfer-Encoding'), flush=True)\n"
        "sys.stdin.readline()\n"
        "try:\n"
        "    rest = r.read()\n"
        "    print('complete', len(first) + len(rest), flush=True)\n"
        "except http.client.IncompleteRead as e:\n"
        "    print('incomplete', len(first) + len(e.partial), flush=True)\n";
    test::spawn_options so;
    so.in = test::stream::pipe;
    test::process py({"python3", "-c", script}, so);
    REQUIRE(py.started());
    const std::optional<std::string> read = py.read_line(std::chrono::seconds(60));
    REQUIRE(read);
    INFO("python: " << *read);
    CHECK(read->rfind("read 1048576 ", 0) == 0);
    REQUIRE(::truncate(path.c_str(), cut) == 0);  // the server has read at most ~11 MiB of it by now
    REQUIRE(py.write("go\n"));
    const std::optional<std::string> end = py.read_line(std::chrono::seconds(120));
    REQUIRE(end);
    INFO("python then: " << *end);
    CHECK(*end == "incomplete " + std::to_string(cut));
    CHECK(test::exited_0(py.wait_exit(std::chrono::seconds(60))));
    CHECK(get(server.port, "/static/hello.txt").body == hello);  // the server goes on
}

TEST_CASE("static_files: descriptors are close-on-exec and none is left open") {
    site s;
    const int baseline = test::open_fds();
    {
        static_server server(s.root);
        for (const char* target : {"/static/hello.txt", "/static/", "/static/missing", "/static/fifo", "/static/sub",
                                   "/static/link_out", "/static/big.bin"})
            CHECK(get(server.port, target).status != 0);
        CHECK(get(server.port, "/static/big.bin", "", "HEAD").status == 200);  // its stream never runs

        // A client that reads nothing of a 64 MiB file: the stream blocks with the file open.
        test::client c(server.port);
        REQUIRE(c.ok());
        int small = 4096;
        ::setsockopt(c.fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
        REQUIRE(c.send("GET /static/sparse.bin HTTP/1.1\r\nHost: x\r\n\r\n"));
        std::string status_line;
        REQUIRE(c.read_line(status_line));  // the head is sent after the file was opened
        CHECK(status_line == "HTTP/1.1 200 OK");
        std::string real;
        REQUIRE(rs::detail::real_path(s.root + "/sparse.bin", real));
        int file_fd = -1;
        for (int fd = 0; fd < 1024 && file_fd < 0; ++fd) {
            char target[4096];
            ssize_t n = ::readlink(("/proc/self/fd/" + std::to_string(fd)).c_str(), target, sizeof target);
            if (n > 0 && std::string(target, static_cast<std::size_t>(n)) == real) file_fd = fd;
        }
        REQUIRE(file_fd >= 0);
        CHECK((::fcntl(file_fd, F_GETFD) & FD_CLOEXEC) != 0);
        c.close();  // the stream's next write fails and the file is closed
    }  // the server stops: every thread joined, so every stream has ended
    CHECK(test::open_fds() == baseline);
}

TEST_CASE("static_files: curl downloads, resumes, revalidates") {
    if (std::system("curl --version > /dev/null 2>&1") != 0) RS_SKIP("curl is not installed");
    site s;
    static_server server(s.root);
    const std::string base = "http://127.0.0.1:" + std::to_string(server.port) + "/static/";
    // curl: runs curl with args (no user input: the paths come from mkdtemp) and returns what
    // it printed, e.g. the status code from -w '%{http_code}'.
    auto curl = [](const std::string& args) {
        std::string out;
        FILE* p = ::popen(("curl -sS --max-time 60 " + args).c_str(), "r");
        if (!p) return out;
        char buf[4096];
        std::size_t n;
        while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
        ::pclose(p);
        return out;
    };
    const std::string out = s.dir + "/download";

    CHECK(curl("-o " + out + " -w '%{http_code}' " + base + "big.bin") == "200");
    CHECK(test::read_file(out) == s.big);

    CHECK(curl("-r 100-199 -o " + out + " -w '%{http_code}' " + base + "big.bin") == "206");
    CHECK(test::read_file(out) == s.big.substr(100, 100));

    write_file(out, s.big.substr(0, 1000000));  // an interrupted download, resumed
    CHECK(curl("-C - -o " + out + " -w '%{http_code}' " + base + "big.bin") == "206");
    CHECK(test::read_file(out) == s.big);

    CHECK(curl("-z '" + std::string(old_date) + "' -o /dev/null -w '%{http_code}' " + base + "old.txt") == "304");
    CHECK(curl("--path-as-is -o /dev/null -w '%{http_code}' " + base + "../outside.txt") == "400");
    CHECK(curl("--path-as-is -o /dev/null -w '%{http_code}' " + base + "%2e%2e/outside.txt") == "400");

    const std::string head = curl("-I " + base + "hello.txt");
    CHECK(head.find("Content-Type: text/plain; charset=utf-8") != std::string::npos);
    CHECK(head.find("Content-Length: 15") != std::string::npos);
}

TEST_CASE("static_files: HTTP-dates in all three forms") {
    std::time_t t = 0;
    CHECK(rs::detail::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT", t));
    CHECK(t == old_mtime);
    t = 0;
    CHECK(rs::detail::parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT", t));
    CHECK(t == old_mtime);
    t = 0;
    CHECK(rs::detail::parse_http_date("Sun Nov  6 08:49:37 1994", t));
    CHECK(t == old_mtime);
    CHECK(rs::detail::format_http_date(old_mtime) == old_date);
    CHECK(rs::detail::parse_http_date("Tue, 29 Feb 2000 00:00:00 GMT", t));
    CHECK(t == 951782400);
    CHECK(rs::detail::parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT", t));
    CHECK(t == 0);
    CHECK(rs::detail::parse_http_date("Fri, 31 Dec 9999 23:59:59 GMT", t));
    CHECK(t == 253402300799);
    for (std::time_t u : {std::time_t{0}, std::time_t{951782399}, std::time_t{1700000000}, std::time(nullptr)}) {
        INFO(u);
        CHECK(rs::detail::parse_http_date(rs::detail::format_http_date(u), t));
        CHECK(t == u);
    }
    for (const char* bad :
         {"", "Sun, 06 Nov 1994 08:49:37 UTC", "Sun, 06 Nov 1994 08:49:37 GMT ", " Sun, 06 Nov 1994 08:49:37 GMT",
          "sun, 06 Nov 1994 08:49:37 GMT", "Sun, 6 Nov 1994 08:49:37 GMT", "Sun, 06 Nov 94 08:49:37 GMT",
          "Sun, 31 Nov 1994 08:49:37 GMT", "Sun, 29 Feb 1900 00:00:00 GMT", "Sun, 06 Nov 1994 24:00:00 GMT",
          "Sun, 06 Nov 1994 08:60:00 GMT", "Sun, 00 Nov 1994 08:49:37 GMT", "Sunday, 06-Nov-1994 08:49:37 GMT",
          "Sun Nov 6 08:49:37 1994", "Sun Nov  6 08:49:37 1994 GMT", "Sun, 06 Nov 1994 08:49:37"}) {
        INFO(bad);
        CHECK_FALSE(rs::detail::parse_http_date(bad, t));
    }
}
