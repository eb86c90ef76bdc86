// Second translation unit (see two_units_a.cpp). Also starts and stops a server, so the
// linked program uses the whole implementation.
#include "restartable_server.hpp"

#include <cstdio>
#include <string>

std::string reason_from_a(int status);

int main() {
    namespace rs = restartable_server;
    rs::options o;
    o.listener = rs::tcp_listener("127.0.0.1", 0);
    rs::server srv(o);
    std::error_code ec;
    srv.start(ec);
    if (ec || srv.port() == 0) {
        std::fprintf(stderr, "start failed: %s\n", ec.message().c_str());
        return 1;
    }
    rs::stop_result r = srv.stop();
    if (!r.drained || srv.state() != rs::server_state::stopped || reason_from_a(404) != "Not Found") return 1;
    std::puts("two translation units: ok");
    return 0;
}
