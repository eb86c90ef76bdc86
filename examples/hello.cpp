#include "restartable_server.hpp"
namespace rs = restartable_server;
int main() {
    rs::server srv;
    srv.get("/hello", [](const rs::request&, rs::response& res) {
        res.set_content("Hello, World!", "text/plain");
    });
    srv.set_listener(rs::tcp_listener("127.0.0.1", 8080));
    srv.run();  // blocks until srv.stop() or srv.request_stop()
}
