// static_files.cpp - serves a directory over HTTP, like `python3 -m http.server`:
//
//     static_files [DIR] [PORT]      DIR defaults to ".", PORT to 8080 (0: any free port)
//
// It prints the URL to open and serves until Ctrl-C (SIGINT) or SIGTERM, which stop it
// gracefully. Only 127.0.0.1 listens: nothing is shared with the network by accident.
//
// SECURITY NOTE - why not simply open(root + "/" + req.param("name"))?
//
//   Path parameters are percent-decoded. A route "/files/:name" asked for
//   "/files/..%2F..%2Fetc%2Fpasswd" gets param("name") == "../../etc/passwd": one segment
//   in the URL, two directories up on disk. Whatever turns a parameter into a file path
//   must check the decoded text before using it. rs::static_files() does that for you: it
//   decodes the rest of the path once, refuses "." and ".." segments (encoded too),
//   encoded slashes, backslashes, NUL and dot-files (.git, .env), then opens the file one
//   directory at a time from the root, following no symbolic link, so the file it opens
//   really is under the root even while someone renames entries there.
//
// What a browser or curl gets: index.html for a directory (never a listing), a
// Content-Type from the file's extension, 304 Not Modified when its copy is current,
// byte ranges (resumed downloads, video seeking), and large files streamed from disk.

#include "restartable_server.hpp"

#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>

#include <cstdio>
#include <cstdlib>
#include <string>

namespace rs = restartable_server;

int main(int argc, char* argv[]) {
    const std::string dir = argc > 1 ? argv[1] : ".";
    const long port = argc > 2 ? std::strtol(argv[2], nullptr, 10) : 8080;
    struct stat st {};
    if (argc > 3 || port < 0 || port > 65535 || ::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
        std::fprintf(stderr, "usage: static_files [DIR] [PORT]   (DIR must be a directory)\n");
        return 2;
    }

    // SIGINT and SIGTERM are blocked before the server starts its threads (they inherit
    // the mask), so only sigwait() below receives them: no signal handler, no global.
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

    rs::server srv;
    rs::static_options opts;
    opts.cache_control = "no-cache";  // browsers revalidate each time: edits show at once, unchanged files cost a 304
    srv.get("/*", rs::static_files(dir, opts));  // "/*": every path; routes added before it win
    srv.set_listener(rs::tcp_listener("127.0.0.1", static_cast<std::uint16_t>(port)));
    std::error_code ec;
    srv.start(ec);
    if (ec) {
        std::fprintf(stderr, "static_files: cannot listen on 127.0.0.1:%ld: %s\n", port, ec.message().c_str());
        return 1;
    }
    std::printf("serving %s at http://127.0.0.1:%u/\n", dir.c_str(), static_cast<unsigned>(srv.port()));
    std::fflush(stdout);

    int signal_number = 0;
    sigwait(&stop_signals, &signal_number);
    srv.stop();  // requests in flight finish first
    return 0;
}
