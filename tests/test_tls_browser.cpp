// A real browser over HTTPS: headless Chromium loads a page from a tls_listener server at
// https://127.0.0.1:PORT/, and the page's script fetch()es /data from the same origin and
// writes the answer into the page; --dump-dom shows the test both. The test makes its
// own CA and a server certificate from it (openssl; subjectAltName IP:127.0.0.1), and
// Chromium trusts that CA for real: it is added to an NSS database under a HOME of the
// test's own ($HOME/.pki/nssdb, which Chromium on Linux reads), made with certutil
// (Debian: libnss3-tools). Where certutil is missing the test falls back to
// --ignore-certificate-errors-spki-list with the server key's SPKI hash - still one key
// trusted, never "ignore every certificate error" - and says so. Either way a second
// server, with a certificate from a CA Chromium does not trust, must be refused: the page
// never loads and its handlers never run.
//
// Deterministic: --virtual-time-budget holds the dump until the page is idle, and virtual
// time does not advance while a fetch is pending, so the DOM is dumped after the fetch
// answered; the test reads Chromium's stdout to EOF and waits for its exit, each with a
// timeout. Skipped without RESTARTABLE_SERVER_OPENSSL, openssl or Chromium.
#include "process.hpp"

#ifdef RESTARTABLE_SERVER_OPENSSL

#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace rs = restartable_server;
using namespace std::chrono_literals;

namespace {

using test::have_command;
using test::run_command;

/// find_chromium: the first of the usual names that is installed, or "".
std::string find_chromium() {
    for (const char* name : {"chromium", "chromium-browser", "google-chrome"})
        if (have_command(name)) return name;
    return {};
}

/// setup: a directory, made once per process, with
///   ca.pem                the test CA ("CN=rs-browser-test-ca")
///   server.pem/.key       a server certificate from it for IP:127.0.0.1 (and localhost)
///   rogue.pem/.key        the same names, from another CA that nobody trusts
///   home/.pki/nssdb       an NSS database trusting ca.pem for TLS servers (with certutil)
///   spki                  base64 SHA-256 of server.key's SubjectPublicKeyInfo
/// and profile directories for Chromium.
struct setup {
    std::string dir, why, spki;
    bool ok = false;
    bool nss = false;  // the CA is in home/.pki/nssdb; otherwise the SPKI fallback
    setup() {
        char d[] = "/tmp/rs_test_tls_browser_XXXXXX";
        if (!::mkdtemp(d)) return;
        dir = d;
        const std::string key = " -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes ";
        const std::string sign = " -days 2 -sha256 ";
        int code = 0;
        why = run_command(
            "cd " + dir + " && printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > san.cnf && " +
                "openssl req -x509" + key + "-keyout ca.key -out ca.pem" + sign + "-subj /CN=rs-browser-test-ca && " +
                "openssl req -x509" + key + "-keyout rogue-ca.key -out rogue-ca.pem" + sign + "-subj /CN=rogue-ca && " +
                leaf("server", "ca", key, sign) + " && " + leaf("rogue", "rogue-ca", key, sign) + " && " +
                "openssl pkey -in server.key -pubout -outform der | openssl dgst -sha256 -binary | openssl base64 -A"
                " > spki 2>&1",
            code);
        if (code != 0) return;
        spki = run_command("cat " + dir + "/spki", code);
        if (code != 0 || spki.size() != 44) {
            why = "no SPKI hash: " + spki;
            return;
        }
        if (have_command("certutil")) {
            why = run_command("cd " + dir + " && mkdir -p home/.pki/nssdb && "
                              "certutil -d sql:home/.pki/nssdb -N --empty-password && "
                              "certutil -d sql:home/.pki/nssdb -A -n rs-browser-test-ca -t C,, -i ca.pem 2>&1",
                              code);
            if (code != 0) return;
            nss = true;
        } else {
            run_command("mkdir -p " + dir + "/home", code);
        }
        ok = true;
    }
    ~setup() {
        if (!dir.empty()) {
            const int status = std::system(("rm -rf '" + dir + "'").c_str());
            (void)status;  // a leftover directory under /tmp fails nothing
        }
    }
    setup(const setup&) = delete;
    setup& operator=(const setup&) = delete;

    static std::string leaf(const std::string& name, const std::string& ca, const std::string& key,
                            const std::string& sign) {
        return "openssl req" + key + "-keyout " + name + ".key -out " + name + ".csr -subj /CN=127.0.0.1 && " +
               "openssl x509 -req -in " + name + ".csr -CA " + ca + ".pem -CAkey " + ca +
               ".key -CAcreateserial -extfile san.cnf -out " + name + ".pem" + sign + " 2>&1";
    }
    std::string path(const std::string& file) const { return dir + "/" + file; }
};

const setup& test_setup() {
    static const setup s;
    return s;
}

/// The page: its script fetch()es /data from the same origin and shows the answer.
const char* const page_html = R"HTML(<!doctype html>
<html><head><meta charset="utf-8"><title>restartable_server over TLS</title></head>
<body>
<p id="page">page served over TLS</p>
<p id="protocol"></p>
<p id="result">pending</p>
<script>
document.getElementById('protocol').textContent = 'protocol ' + location.protocol;
const result = document.getElementById('result');
fetch('/data', { cache: 'no-store' })
  .then((r) => r.ok ? r.text() : Promise.reject(new Error('HTTP ' + r.status)))
  .then((text) => { result.textContent = 'fetched: ' + text; })
  .catch((e) => { result.textContent = 'fetch failed: ' + e; });
</script>
</body></html>
)HTML";

/// page_server: a TLS server with the page at / and its data at /data, counting what its
/// handlers saw.
struct page_server {
    std::atomic<int> pages{0}, data{0}, insecure{0};
    rs::server srv;
    std::uint16_t port = 0;

    explicit page_server(const std::string& name) : srv(options(name)) {
        srv.get("/", [this](const rs::request& req, rs::response& res) {
            pages.fetch_add(1);
            if (!req.secure()) insecure.fetch_add(1);
            res.set_content(page_html, "text/html; charset=utf-8");
        });
        srv.get("/data", [this](const rs::request& req, rs::response& res) {
            const int n = data.fetch_add(1) + 1;
            if (!req.secure()) insecure.fetch_add(1);
            res.set_content(std::string("secure=") + (req.secure() ? "true" : "false") + " request=" +
                                std::to_string(n),
                            "text/plain");
        });
        port = test::start(srv);
    }
    static rs::options options(const std::string& name) {
        rs::tls_options t;
        t.cert_chain_file = test_setup().path(name + ".pem");
        t.key_file = test_setup().path(name + ".key");
        rs::options o = test::local_options();
        o.listener = rs::tls_listener(rs::tcp_listener("127.0.0.1", 0), std::move(t));
        return o;
    }
    std::string url() const { return "https://127.0.0.1:" + std::to_string(port) + "/"; }
};

/// dump_dom: the DOM of url after its load and every fetch it started, as headless
/// Chromium dumps it ("" when the page did not load); exited_0 whether Chromium exited 0.
std::string dump_dom(const std::string& chromium, const std::string& url, const std::string& profile,
                     bool& exited_0) {
    const setup& s = test_setup();
    std::vector<std::string> args = {chromium, "--headless", "--disable-gpu", "--no-first-run",
                                     "--no-default-browser-check", "--disable-background-networking",
                                     "--disable-component-update", "--disable-sync", "--no-proxy-server",
                                     "--user-data-dir=" + s.path(profile), "--virtual-time-budget=10000",
                                     "--dump-dom"};
    if (!s.nss) args.push_back("--ignore-certificate-errors-spki-list=" + s.spki);
    if (::geteuid() == 0) args.push_back("--no-sandbox");  // Chromium refuses root otherwise
    args.push_back(url);
    test::spawn_options opt;
    opt.in = test::stream::null;
    opt.out = test::stream::pipe;
    opt.err = test::stream::null;  // chatty; a full pipe nobody reads would stop it
    opt.env = {"HOME=" + s.path("home")};  // its NSS database: home/.pki/nssdb
    opt.new_group = true;                  // its helper processes go with it
    test::process browser(args, opt);
    REQUIRE(browser.started());
    const std::optional<std::string> dom = browser.out.read_all(60s);
    INFO("Chromium's output did not end within 60 s");
    REQUIRE(dom);
    const std::optional<int> st = browser.wait_exit(30s);
    INFO("Chromium: " << test::describe_status(st));
    REQUIRE(st);
    exited_0 = test::exited_0(st);
    return *dom;
}

#define REQUIRE_BROWSER_SETUP(chromium)                                                    \
    do {                                                                                   \
        if (!have_command("openssl")) RS_SKIP("the openssl command is not installed");     \
        if ((chromium).empty()) RS_SKIP("chromium is not installed");                      \
        INFO(test_setup().why);                                                            \
        REQUIRE(test_setup().ok);                                                          \
    } while (0)

const char* trust_path() {
    return test_setup().nss ? "the test CA in an NSS database (certutil)"
                            : "no certutil: the server key's SPKI hash (--ignore-certificate-errors-spki-list)";
}

}  // namespace

TEST_CASE("Chromium loads a page over HTTPS from a trusted test CA, and its fetch() reaches the same origin",
          "[tls][browser]") {
    const std::string chromium = find_chromium();
    REQUIRE_BROWSER_SETUP(chromium);
    test::watchdog dog("Chromium over HTTPS", 150s);
    page_server server("server");

    bool exited_0 = false;
    const std::string dom = dump_dom(chromium, server.url(), "profile-trusted", exited_0);
    INFO("trust: " << trust_path() << "\nthe DOM:\n" << dom);
    CHECK(exited_0);
    CHECK(dom.find("<p id=\"page\">page served over TLS</p>") != std::string::npos);
    CHECK(dom.find("<p id=\"protocol\">protocol https:</p>") != std::string::npos);
    CHECK(dom.find("<p id=\"result\">fetched: secure=true request=1</p>") != std::string::npos);
    CHECK(server.pages.load() == 1);
    CHECK(server.data.load() == 1);
    CHECK(server.insecure.load() == 0);  // req.secure() in every handler
    WARN("Chromium over HTTPS, trusting " << trust_path() << ": page " << server.pages.load() << ", fetch "
                                          << server.data.load() << ", all secure");
    server.srv.stop();
}

TEST_CASE("Chromium refuses a certificate from a CA it does not trust: no page, no handler runs",
          "[tls][browser]") {
    const std::string chromium = find_chromium();
    REQUIRE_BROWSER_SETUP(chromium);
    test::watchdog dog("Chromium over HTTPS, untrusted", 150s);
    page_server rogue("rogue");

    bool exited_0 = false;
    const std::string dom = dump_dom(chromium, rogue.url(), "profile-untrusted", exited_0);
    INFO("trust: " << trust_path() << "\nthe DOM:\n" << dom);
    CHECK(dom.find("page served over TLS") == std::string::npos);
    CHECK(dom.find("fetched:") == std::string::npos);
    CHECK(rogue.pages.load() == 0);  // no request got past the handshake
    CHECK(rogue.data.load() == 0);
    rogue.srv.stop();
}

#else  // no RESTARTABLE_SERVER_OPENSSL

TEST_CASE("TLS in Chromium", "[tls][browser]") {
    RS_SKIP("built without RESTARTABLE_SERVER_OPENSSL (configure with -DRESTARTABLE_SERVER_OPENSSL=ON)");
}

#endif  // RESTARTABLE_SERVER_OPENSSL
