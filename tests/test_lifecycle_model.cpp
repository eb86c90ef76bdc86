// A model-based stress test of the lifecycle. Several threads call every public lifecycle
// call at random on ONE server - start, run, stop, stop(timeout), request_stop (also from
// a signal handler), restart, wait, wait_until_running, set_options, set_listener, route
// changes, state, port - while client threads send requests (keep-alive, one-shot, slow,
// streamed, and ones whose handler calls stop() or restart()) and check every response
// that arrives. Each return value is checked against a reference model of the documented
// state machine (the LIFECYCLE table at the top of the header):
//
//   stopped -> starting -> running -> stopping -> stopped;  starting -> stopped (failed)
//
// The server reports each transition through its "transition" TEST HOOK into a log, in
// the order it makes them (under its lock, before the new state is visible), so a call's
// result is judged against the states the server went through while the call ran:
//
//   call                  may return                     only if, during the call, ...
//   start(), run()        ok                             running was reached
//                         already_running                the server was running
//                         the failing factory's error    that factory was configured
//   run() (ok)            -                              stopped was reached after running
//   stop(), stop(t)       waited, error empty            stopped was reached
//   wait()                error empty                    stopped was reached
//   restart()             ok                             the server was running
//                         not_running                    it was not running at some point
//                         the failing factory's error    that factory was configured
//   wait_until_running()  true / false                   running / not running was seen
//   state()               s                              s was the state
//   port()                not 0                          the server was not stopped
//   stop() from a handler waited == false                (always: it only requests)
//
// Responses: every one whose head arrives is whole and right; a route added while the
// server runs answers 200 only from a run built after it was added (no run answers that
// should not exist). At each quiescent point (callers and clients paused, the server
// stopped) the thread and descriptor counts are back at their baseline, every run that
// began running has stopped, and the old port refuses. At the end a running server is
// destroyed with requests in flight. A call that does not return within 60 s (a lost stop,
// a deadlock) aborts with the seed and every thread's call.
//
// Seeded: --seed N replays the same random choices (the interleaving is the machine's);
// the seed is printed at the start and with any failure. --seconds S runs longer (the
// suite: 3 s; .ci/sanitizers: 60 s under ASan+UBSan and under TSan, both backends).
#include "support.hpp"

#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace {

namespace rs = restartable_server;
using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;
using state = rs::server_state;

constexpr int caller_threads = 4;
constexpr int client_threads = 2;
constexpr auto call_limit = 60s;  // no call may take longer (drain deadlines here are <= 2 s)
const std::error_code factory_error = std::make_error_code(std::errc::permission_denied);

// ------------------------------------------------------------------------- the log --

/// history: what the server and the callers did, in one order. Transitions come from the
/// server's "transition" hook; the test adds config changes, route additions and
/// restart() calls. A call's window is [log size before it, log size after it).
class history {
public:
    enum kind : char { transition = 't', made = 'm', config = 'o', route = 'k' };
    struct event {
        kind what;
        int value;  // transition: the new state; config: the listener kind; route: its number
    };

    std::size_t add(kind what, int value) {
        std::lock_guard<std::mutex> lock(m_);
        events_.push_back({what, value});
        if (what == transition && value == int(state::running)) running_at_.push_back(events_.size() - 1);
        if (what == transition) changed_.notify_all();
        return events_.size() - 1;
    }
    /// wait_for_after: waits up to timeout for a transition to s after position p.
    bool wait_for_after(std::size_t p, state s, std::chrono::milliseconds timeout) {
        std::unique_lock<std::mutex> lock(m_);
        std::size_t seen = p;
        return changed_.wait_for(lock, timeout, [&] {
            for (; seen < events_.size(); ++seen)
                if (events_[seen].what == transition && events_[seen].value == int(s)) return true;
            return false;
        });
    }
    /// add_route: logs route k, and whether a restart() was under way then.
    std::size_t add_route(int k, bool& restart_under_way) {
        std::lock_guard<std::mutex> lock(m_);
        events_.push_back({route, k});
        restart_under_way = restarts_under_way_ > 0;
        return events_.size() - 1;
    }
    std::size_t now() {
        std::lock_guard<std::mutex> lock(m_);
        return events_.size();
    }
    /// states_within: the states the server went into during [from, to).
    unsigned states_within(std::size_t from, std::size_t to) {
        std::lock_guard<std::mutex> lock(m_);
        return within(from, to);
    }
    /// states: the states the server may have been in during [from, to): the state at
    /// `from` (the last transition made before it, and one logged but not yet made) and
    /// every one it went into.
    unsigned states(std::size_t from, std::size_t to) {
        std::lock_guard<std::mutex> lock(m_);
        bool pending = false;
        return at(from, pending) | within(from, to);
    }
    /// running_at: whether the server was certainly running at position p.
    bool running_at(std::size_t p) {
        std::lock_guard<std::mutex> lock(m_);
        bool pending = false;
        return at(p, pending) == (1u << int(state::running)) && !pending;
    }
    /// stopping_between: whether a stop began in (after, before).
    bool stopping_between(std::size_t after, std::size_t before) {
        std::lock_guard<std::mutex> lock(m_);
        for (std::size_t i = after; i < before && i < events_.size(); ++i)
            if (events_[i].what == transition && events_[i].value == int(state::stopping)) return true;
        return false;
    }
    /// configs: the listener kinds that may have been configured during [from, to): the
    /// last two logged before it (the last one may not be applied yet) and those in it.
    unsigned configs(std::size_t from, std::size_t to) {
        std::lock_guard<std::mutex> lock(m_);
        unsigned set = 0;
        int before = 0;
        for (std::size_t i = from; i-- > 0 && before < 2;)
            if (events_[i].what == config && events_[i].value >= 0) {
                set |= 1u << events_[i].value;
                ++before;
            }
        if (before < 2) set |= 1u << initial_config_;
        for (std::size_t i = from; i < to && i < events_.size(); ++i)
            if (events_[i].what == config && events_[i].value >= 0) set |= 1u << events_[i].value;
        return set;
    }
    void set_initial_config(int listener) { initial_config_ = listener; }

    /// counts of each transition target, and the last state.
    std::array<int, 4> transitions_to(state& last) {
        std::lock_guard<std::mutex> lock(m_);
        std::array<int, 4> n{};
        last = state::stopped;
        for (const event& e : events_)
            if (e.what == transition) {
                ++n[static_cast<std::size_t>(e.value)];
                last = static_cast<state>(e.value);
            }
        return n;
    }
    /// built_after: whether a run may have read its routes after event `after` (a route
    /// added, with a restart() under way then or not) and before event `before`: a start
    /// that reached running in between (it reads them while starting), or a restart() under
    /// way in that span (one that began in it, or one under way when the route was added).
    bool built_after(std::size_t after, bool restart_under_way, std::size_t before) {
        if (restart_under_way) return true;
        std::lock_guard<std::mutex> lock(m_);
        auto first_after = [&](const std::vector<std::size_t>& v) {
            auto it = std::upper_bound(v.begin(), v.end(), after);
            return it != v.end() && *it < before;
        };
        return first_after(running_at_) || first_after(restart_began_at_);
    }
    void restart_began() {
        std::lock_guard<std::mutex> lock(m_);
        restart_began_at_.push_back(events_.size());
        events_.push_back({config, -1});  // a marker: restart_began_at_ stays strictly increasing
        ++restarts_under_way_;
    }
    void restart_ended() {
        std::lock_guard<std::mutex> lock(m_);
        --restarts_under_way_;
    }

private:
    // at: the state at position p (m_ held): the last one made, and one logged after it
    // but not made yet (pending).
    unsigned at(std::size_t p, bool& pending) const {
        unsigned set = 0;
        for (std::size_t i = std::min(p, events_.size()); i-- > 0;) {
            if (events_[i].what == made) return set | (1u << events_[i].value);
            if (events_[i].what == transition) {
                set |= 1u << events_[i].value;
                pending = true;
            }
        }
        return set | (1u << int(state::stopped));
    }
    unsigned within(std::size_t from, std::size_t to) const {
        unsigned set = 0;
        for (std::size_t i = from; i < to && i < events_.size(); ++i)
            if (events_[i].what == transition || events_[i].what == made) set |= 1u << events_[i].value;
        return set;
    }
    std::mutex m_;
    std::condition_variable changed_;
    std::vector<event> events_;
    std::vector<std::size_t> running_at_;        // positions of transitions to running
    std::vector<std::size_t> restart_began_at_;  // positions where restart() calls began
    int restarts_under_way_ = 0;
    int initial_config_ = 0;
};

bool has(unsigned set, state s) { return (set & (1u << int(s))) != 0; }

std::string names(unsigned set) {
    std::string out;
    for (state s : {state::stopped, state::starting, state::running, state::stopping})
        if (has(set, s)) out += std::string(out.empty() ? "" : "|") + std::string(rs::to_string(s));
    return out;
}

/// violations: what broke the model, kept for the main thread (Catch2 assertions are for
/// the main thread only).
class violations {
public:
    void add(std::string what) {
        std::lock_guard<std::mutex> lock(m_);
        if (list_.size() < 50) list_.push_back(std::move(what));
        ++count_;
    }
    std::size_t count() {
        std::lock_guard<std::mutex> lock(m_);
        return count_;
    }
    std::string first() {
        std::lock_guard<std::mutex> lock(m_);
        std::string out;
        for (std::size_t i = 0; i < list_.size() && i < 10; ++i) out += "\n  " + list_[i];
        return out;
    }

private:
    std::mutex m_;
    std::vector<std::string> list_;
    std::size_t count_ = 0;
};

// --------------------------------------------------------------- configurations --

// tcp and tcp_other: both 127.0.0.1 port 0, but with different addresses, so a restart
// between them binds a new socket and moves the old one's queue instead of handing it over.
enum listener_kind { tcp = 0, unix_socket = 1, failing = 2, tcp_other = 3 };

std::string unix_path() { return "/tmp/rs_model_" + std::to_string(::getpid()) + ".sock"; }

rs::listener_factory make_factory(listener_kind k) {
    switch (k) {
        case tcp: return rs::tcp_listener("127.0.0.1", 0);
        case unix_socket: return rs::unix_listener(unix_path());
        case tcp_other:
            return rs::listener_factory([f = rs::tcp_listener("127.0.0.1", 0)](std::error_code& e) { return f(e); },
                                        "tcp:127.0.0.1:0 (other)");
        case failing: break;
    }
    return rs::listener_factory([](std::error_code& ec) {
        ec = factory_error;
        return rs::unique_fd();
    });
}

rs::options make_options(listener_kind k, std::mt19937_64& rng) {
    rs::options o;
    o.listener = make_factory(k);
    static const std::size_t workers[] = {0, 1, 2, 4};
    o.worker_threads = workers[rng() % 4];
    static const int drains[] = {0, 50, 500, 2000};
    o.drain_timeout = std::chrono::milliseconds(drains[rng() % 4]);
    return o;
}

// -------------------------------------------------------------------- signals --

std::atomic<rs::server*> signalled_server{nullptr};
extern "C" void on_sigusr1(int) {
    if (rs::server* s = signalled_server.load()) s->request_stop();
}

// -------------------------------------------------------------------- clients --

/// raw_response: what a client saw: nothing (refused, closed, reset), or a head with the
/// body whole, or a head whose body ended early.
struct raw_response {
    enum { none, whole, truncated } got = none;
    int status = 0;
    std::string body;
    bool chunked_end = false;  // a chunked body that ended with its last chunk
};

int connect_kind(listener_kind k, std::uint16_t port) {
    int fd = -1;
    if (k == tcp) {
        fd = test::connect_loopback(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), port);  // closes on failure
        if (fd < 0) return -1;
    } else {
        fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) return -1;
        sockaddr_un a{};
        a.sun_family = AF_UNIX;
        const std::string p = unix_path();
        std::memcpy(a.sun_path, p.c_str(), p.size() + 1);
        if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
            ::close(fd);
            return -1;
        }
    }
    test::socket_timeout(fd, SO_RCVTIMEO, 30s);
    test::socket_timeout(fd, SO_SNDTIMEO, 30s);
    return fd;
}

/// read_response: one response from fd (buffered bytes in buf): Content-Length or chunked.
raw_response read_response(int fd, std::string& buf) {
    raw_response r;
    auto fill = [&] {
        char tmp[8192];
        const ssize_t n = ::recv(fd, tmp, sizeof tmp, 0);
        if (n <= 0) return false;
        buf.append(tmp, static_cast<std::size_t>(n));
        return true;
    };
    std::size_t end;
    while ((end = buf.find("\r\n\r\n")) == std::string::npos)
        if (!fill()) return r;
    test::http_response h;
    h.head = buf.substr(0, end + 2);
    buf.erase(0, end + 4);
    r.got = raw_response::truncated;
    r.status = h.head.size() >= 12 ? std::atoi(h.head.c_str() + 9) : -1;
    if (h.header("Transfer-Encoding") == "chunked") {
        for (;;) {
            std::size_t eol;
            while ((eol = buf.find("\r\n")) == std::string::npos)
                if (!fill()) return r;
            const std::size_t size = std::strtoul(buf.c_str(), nullptr, 16);
            buf.erase(0, eol + 2);
            while (buf.size() < size + 2)
                if (!fill()) return r;
            if (size == 0) {
                buf.erase(0, 2);
                r.chunked_end = true;
                r.got = raw_response::whole;
                return r;
            }
            r.body += buf.substr(0, size);
            buf.erase(0, size + 2);
        }
    }
    const std::string cl = h.header("Content-Length");
    const std::size_t len = cl.empty() ? 0 : std::stoul(cl);
    while (buf.size() < len)
        if (!fill()) return r;
    r.body = buf.substr(0, len);
    buf.erase(0, len);
    r.got = raw_response::whole;
    return r;
}

// ------------------------------------------------------------------------ the test --

struct model_test {
    explicit model_test(std::uint64_t seed_, double seconds_) : seed(seed_), seconds(seconds_) {}

    const std::uint64_t seed;
    const double seconds;
    history log;
    violations bad;
    std::unique_ptr<rs::server> srv;
    std::atomic<int> current_kind{tcp};  // what the last config said (the clients' hint)
    std::atomic<int> routes_added{0};
    std::mutex routes_mutex;
    std::map<int, std::pair<std::size_t, bool>> route_logged;  // route -> log position, restart under way

    // Pausing: callers and clients stop at the next call boundary; the main thread then
    // stops the server and checks the quiescent state.
    std::mutex pause_mutex;
    std::condition_variable pause_cv;
    bool pause = true, finished = false;
    bool first_caller_paused = false;  // caller 0 (the lone stopper) is paused
    int paused = 0;

    // The watchdog: each caller's call and when it began.
    struct slot {
        std::atomic<const char*> call{nullptr};
        std::atomic<std::int64_t> since{0};
    };
    std::array<slot, caller_threads + client_threads> slots;

    std::map<std::string, int> counts;  // call: how many; results too
    std::mutex counts_mutex;
    void count(const std::string& what) {
        std::lock_guard<std::mutex> lock(counts_mutex);
        ++counts[what];
    }

    void fail(const std::string& what) { bad.add(what); }

    /// wait_resume: a paused thread waits here; false when the test is over.
    bool wait_resume(int who = -1) {
        std::unique_lock<std::mutex> lock(pause_mutex);
        if (!pause) return !finished;
        if (who == 0) first_caller_paused = true;
        ++paused;
        pause_cv.notify_all();
        pause_cv.wait(lock, [&] { return !pause || finished; });
        --paused;
        return !finished;
    }

    void begin(int who, const char* call) {
        slots[static_cast<std::size_t>(who)].since.store(steady::now().time_since_epoch().count());
        slots[static_cast<std::size_t>(who)].call.store(call);
    }
    void end(int who) { slots[static_cast<std::size_t>(who)].call.store(nullptr); }

    void set_route(int k) {
        const std::string body = "r" + std::to_string(k);
        {
            std::lock_guard<std::mutex> lock(routes_mutex);
            bool under_way = false;
            const std::size_t pos = log.add_route(k, under_way);  // before it exists: any run after may have it
            route_logged[k] = {pos, under_way};
        }
        srv->get("/r" + std::to_string(k), [body](const rs::request&, rs::response& res) {
            res.set_content(body, "text/plain");
        });
        routes_added.store(k);
    }

    void add_routes(rs::server& s) {
        s.get("/echo/:n", [](const rs::request& req, rs::response& res) {
            res.set_content(std::string(req.param("n")), "text/plain");
        });
        s.get("/slow/:ms", [](const rs::request& req, rs::response& res) {
            // a slow handler (not synchronisation): what a stop has to drain
            std::this_thread::sleep_for(std::chrono::milliseconds(std::atoi(std::string(req.param("ms")).c_str())));
            res.set_content("slow", "text/plain");
        });
        s.get("/stream/:n", [](const rs::request& req, rs::response& res) {
            const int n = std::atoi(std::string(req.param("n")).c_str());
            res.set_stream("text/plain", [n](rs::body_writer& out) {
                for (int i = 0; i < n; ++i) {
                    if (!out.write(std::to_string(i) + "\n")) return;
                    std::this_thread::sleep_for(5ms);
                }
            });
        });
        s.get("/stop", [this](const rs::request&, rs::response& res) {
            const rs::stop_result sr = srv->stop();  // from a handler: only requests
            if (sr.waited) fail("stop() from a handler said waited == true");
            res.set_content("stopping", "text/plain");
        });
        s.get("/restart", [this](const rs::request&, rs::response& res) {
            std::error_code ec;
            log.restart_began();
            srv->restart(ec);  // from a handler: works (with 0 workers, before the hand-over)
            log.restart_ended();
            if (ec && ec != rs::errc::not_running && ec != std::errc::operation_in_progress &&
                !(ec == factory_error))
                fail("restart() from a handler: " + ec.message());
            res.set_content("restarted", "text/plain");
        });
    }

    // ------------------------------------------------------------------ callers --

    void caller(int who) {
        std::mt19937_64 rng(seed * 1000003 + static_cast<std::uint64_t>(who));
        while (wait_resume(who)) {
            int op = static_cast<int>(rng() % 100);
            if (lone_stopper.load()) {  // a round where only caller 0 stops the server
                if (who == 0) {
                    lone_stop(who, rng);
                    continue;
                }
                if (op >= first_stop_op && op < end_stop_ops) op = end_stop_ops + static_cast<int>(rng() % (100 - end_stop_ops));
            }
            call(who, op, rng);
        }
    }

    /// lone_stop: in a lone-stopper round, caller 0 starts the server, or asks a running
    /// one to stop and waits. Nobody else stops it in that round, so a stop request lost
    /// (e.g. erased by a start() that failed with already_running) shows: no stop begins.
    void lone_stop(int who, std::mt19937_64& rng) {
        const std::size_t p = log.now();
        if (!log.running_at(p)) {
            call(who, 0, rng);  // start()
            if (srv->state() == state::stopped) {  // e.g. the failing factory: a working one
                std::lock_guard<std::mutex> lock(config_mutex);
                log.add(history::config, tcp);
                srv->set_listener(make_factory(tcp));
                current_kind.store(tcp);
            }
            return;
        }
        begin(who, "request_stop (lone)");
        srv->request_stop();
        end(who);
        count("lone request_stop");
        // Half the time at once a start() (a "restart" by stop and start, without a wait):
        // it returns already_running, or waits for the stop and starts; either way the
        // stop requested must happen.
        if (rng() % 2 == 0) call(who, 0, rng);
        begin(who, "lone request_stop: a stop begins");
        if (!log.wait_for_after(p, state::stopping, 10s)) {  // healthy: microseconds
            fail("request_stop() while running: no stop began in 10 s (a lost stop request)");
            srv->request_stop();  // let the test go on
        }
        end(who);
        // Not wait(): another caller's start() may begin the next run before this thread
        // would call it, and then it would wait for that run, which nobody else stops.
        begin(who, "lone request_stop: the run ends");
        if (!log.wait_for_after(p, state::stopped, call_limit)) fail("a stop that began did not end");
        end(who);
    }

    void call(int who, int op, std::mt19937_64& rng) {
        rs::server& s = *srv;
        std::error_code ec;
        const std::size_t from = log.now();
        auto window = [&] { return log.states(from, log.now()); };
        auto judge_start = [&](const char* name, bool ran_to_end) {
            const unsigned seen = window();
            const unsigned cfg = log.configs(from, log.now());
            if (!ec) {
                count(std::string(name) + " ok");
                const unsigned made = log.states_within(from, log.now());
                if (!has(made, state::running))
                    fail(std::string(name) + " ok but never running: " + names(made));
                if (ran_to_end && !has(made, state::stopped))
                    fail(std::string(name) + " returned ok before the run stopped: " + names(made));
            } else if (ec == rs::errc::already_running) {
                count(std::string(name) + " already_running");
                if (!has(seen, state::running))
                    fail(std::string(name) + " already_running but never running: " + names(seen));
            } else if (ec == factory_error) {
                count(std::string(name) + " factory error");
                if (!(cfg & (1u << failing))) fail(std::string(name) + ": factory error without the failing factory");
            } else {
                fail(std::string(name) + ": unexpected " + ec.message() + " (states " + names(seen) + ")");
            }
        };
        if (op < 14) {
            begin(who, "start");
            s.start(ec);
            end(who);
            judge_start("start", false);
        } else if (op < 19) {
            begin(who, "run");
            s.run(ec);
            end(who);
            judge_start("run", !ec);
        } else if (op < 22) {
            begin(who, "stop");
            const rs::stop_result sr = s.stop();
            end(who);
            judge_stop("stop", sr, window());
        } else if (op < 24) {
            const auto t = std::chrono::milliseconds(rng() % 300);
            begin(who, "stop(timeout)");
            const rs::stop_result sr = s.stop(t);
            end(who);
            judge_stop("stop(timeout)", sr, window());
        } else if (op < 26) {
            begin(who, "request_stop");
            s.request_stop();
            end(who);
            count("request_stop");
        } else if (op < 27) {
            begin(who, "request_stop (signal)");
            ::pthread_kill(::pthread_self(), SIGUSR1);  // delivered to this thread before it returns
            end(who);
            count("request_stop from a signal handler");
        } else if (op < 45) {
            log.restart_began();
            begin(who, "restart");
            s.restart(ec);
            end(who);
            log.restart_ended();
            const unsigned seen = window();
            const unsigned cfg = log.configs(from, log.now());
            if (!ec) {
                count("restart ok");
                if (!has(seen, state::running)) fail("restart ok but never running: " + names(seen));
            } else if (ec == rs::errc::not_running) {
                count("restart not_running");
                if (seen == (1u << int(state::running)))
                    fail("restart not_running but running throughout");
            } else if (ec == factory_error) {
                count("restart factory error");
                if (!(cfg & (1u << failing))) fail("restart: factory error without the failing factory");
            } else {
                fail("restart: unexpected " + ec.message() + " (states " + names(seen) + ")");
            }
        } else if (op < 49) {
            begin(who, "wait");
            const rs::stop_result sr = s.wait();
            end(who);
            const unsigned seen = window();
            count("wait");
            if (!has(seen, state::stopped)) fail("wait() returned but never stopped: " + names(seen));
            if (!sr.waited) fail("wait() from a caller thread said waited == false");
            if (sr.error) fail("wait(): error " + sr.error.message() + " though no run fails by itself");
        } else if (op < 57) {
            const auto t = std::chrono::milliseconds(rng() % 50);
            begin(who, "wait_until_running");
            const bool running = s.wait_until_running(t);
            end(who);
            const unsigned seen = window();
            count(running ? "wait_until_running true" : "wait_until_running false");
            if (running && !has(seen, state::running)) fail("wait_until_running true but never running");
            if (!running && seen == (1u << int(state::running))) fail("wait_until_running false but running throughout");
        } else if (op < 65) {
            static const listener_kind kinds[] = {tcp, tcp, tcp, tcp_other, tcp_other, unix_socket, unix_socket, failing};
            const listener_kind k = kinds[rng() % 8];
            std::lock_guard<std::mutex> lock(config_mutex);  // logged in the order applied
            log.add(history::config, k);  // before: the new one may apply from here on
            begin(who, "set_options");
            s.set_options(make_options(k, rng));
            end(who);
            current_kind.store(k);
            count("set_options");
        } else if (op < 69) {
            const auto k = static_cast<listener_kind>(rng() % 4);
            std::lock_guard<std::mutex> lock(config_mutex);
            log.add(history::config, k);
            begin(who, "set_listener");
            s.set_listener(make_factory(k));
            end(who);
            current_kind.store(k);
            count("set_listener");
        } else if (op < 72) {
            begin(who, "route");
            std::lock_guard<std::mutex> lock(route_add_mutex);  // numbers in order
            set_route(routes_added.load() + 1);
            end(who);
            count("route added");
        } else if (op < 86) {
            begin(who, "state");
            const state st = s.state();
            end(who);
            count("state");
            if (!has(window(), st)) fail("state() said " + std::string(rs::to_string(st)) + ", not among " + names(window()));
        } else {
            begin(who, "port");
            const std::uint16_t port = s.port();
            end(who);
            count("port");
            if (port != 0 && window() == (1u << int(state::stopped))) fail("port() not 0 while stopped throughout");
        }
    }
    std::mutex route_add_mutex;
    std::mutex config_mutex;
    std::atomic<bool> lone_stopper{false};
    static constexpr int first_stop_op = 19, end_stop_ops = 27;  // stop, stop(t), request_stop, signal

    void judge_stop(const char* name, const rs::stop_result& sr, unsigned seen) {
        count(name);
        if (!has(seen, state::stopped)) fail(std::string(name) + " returned but never stopped: " + names(seen));
        if (!sr.waited) fail(std::string(name) + " from a caller thread said waited == false");
        if (sr.error) fail(std::string(name) + ": error " + sr.error.message() + " though no run fails by itself");
        if (sr.drained != (sr.cut == 0)) fail(std::string(name) + ": drained and cut disagree");
    }

    // ------------------------------------------------------------------ clients --

    void client(int who) {
        std::mt19937_64 rng(seed * 1000003 + 500 + static_cast<std::uint64_t>(who));
        int fd = -1;
        std::string buf;
        auto drop = [&] {
            if (fd >= 0) ::close(fd);
            fd = -1;
            buf.clear();
        };
        for (;;) {
            {
                std::unique_lock<std::mutex> lock(pause_mutex);
                if (lone_stopper.load() && !pause && !finished) {
                    // A lone-stopper round is about stop requests racing start(): clients
                    // would only slow each stop down (lingering closes), so they sit it out.
                    lock.unlock();
                    drop();
                    lock.lock();
                    pause_cv.wait(lock, [&] { return pause || finished; });
                }
                if (pause || finished) {
                    lock.unlock();
                    drop();  // nothing of the clients' stays open at a quiescent point
                    if (!wait_resume()) return;
                }
            }
            const auto kind = static_cast<listener_kind>(current_kind.load() == unix_socket ? unix_socket : tcp);
            const std::uint16_t port = srv->port();
            if (fd < 0 || rng() % 4 == 0) {  // a new connection now and then; keep-alive otherwise
                drop();
                if ((kind == tcp && port == 0) || (fd = connect_kind(kind, port)) < 0) {
                    std::this_thread::sleep_for(1ms);  // stopped: try again soon (a pace, not synchronisation)
                    continue;
                }
            }
            begin(caller_threads + who, "client request");
            request_once(rng, fd, buf);
            end(caller_threads + who);
            if (fd >= 0 && rng() % 3 == 0) drop();
        }
    }

    void request_once(std::mt19937_64& rng, int& fd, std::string& buf) {
        const int what = static_cast<int>(rng() % 100);
        std::string path, expect;
        bool stream = false, route = false;
        int route_k = 0;
        std::pair<std::size_t, bool> route_pos{0, false};
        if (what < 50) {
            const std::string n = std::to_string(rng() % 1000000);
            path = "/echo/" + n;
            expect = n;
        } else if (what < 62) {
            path = "/slow/" + std::to_string(20 + rng() % 80);
            expect = "slow";
        } else if (what < 74) {
            const int n = 1 + static_cast<int>(rng() % 8);
            path = "/stream/" + std::to_string(n);
            for (int i = 0; i < n; ++i) expect += std::to_string(i) + "\n";
            stream = true;
        } else if (what < 94) {
            route_k = routes_added.load();
            if (route_k == 0) return;
            {
                std::lock_guard<std::mutex> lock(routes_mutex);
                route_pos = route_logged[route_k];
            }
            path = "/r" + std::to_string(route_k);
            expect = "r" + std::to_string(route_k);
            route = true;
        } else if (what < 95) {
            path = "/stop";
            expect = "stopping";
        } else {
            path = "/restart";
            expect = "restarted";
        }
        const std::string req = "GET " + path + " HTTP/1.1\r\nHost: model\r\n\r\n";
        if (!test::send_all(fd, req)) {
            ::close(fd);
            fd = -1;
            buf.clear();
            return;
        }
        const raw_response r = read_response(fd, buf);
        const std::size_t at = log.now();
        if (r.got == raw_response::none) {  // closed or reset unanswered: a stop, a restart's cut
            ::close(fd);
            fd = -1;
            buf.clear();
            count("client: unanswered");
            return;
        }
        if (r.got == raw_response::truncated) {
            ::close(fd);
            fd = -1;
            buf.clear();
            // Only a stream may end early (a drain deadline cut it); what came must be right.
            if (!stream || expect.compare(0, r.body.size(), r.body) != 0)
                fail("truncated response to " + path + ": " + test::printable(r.body));
            count("client: stream cut");
            return;
        }
        count("client: answered");
        if (route && r.status == 404) return;  // a run built before the route was added
        if (r.status != 200 || r.body != expect) {
            fail("wrong response to " + path + ": " + std::to_string(r.status) + " " + test::printable(r.body) +
                 " (expected " + test::printable(expect) + ")");
            return;
        }
        if (route && !log.built_after(route_pos.first, route_pos.second, at))
            fail("route /r" + std::to_string(route_k) + " answered 200 by a run built before it was added");
    }

    // ---------------------------------------------------------------- quiescence --

    /// quiesce: pauses every caller and client, stops the server, checks the counts.
    void quiesce(int baseline_threads, int baseline_fds, std::uint16_t& last_port) {
        {
            std::unique_lock<std::mutex> lock(pause_mutex);
            pause = true;
            first_caller_paused = false;
            // A lone stopper finishes its step first (its check of its own stop request
            // would otherwise see this stop): it takes at most its 10 s check.
            if (lone_stopper.load()) pause_cv.wait_for(lock, 2 * call_limit, [&] { return first_caller_paused; });
        }
        for (;;) {  // a caller in run() or wait() returns once the server stops
            srv->stop();
            std::unique_lock<std::mutex> lock(pause_mutex);
            if (pause_cv.wait_for(lock, 100ms, [&] { return paused == caller_threads + client_threads; })) break;
        }
        const rs::stop_result sr = srv->stop();
        CHECK(sr.waited);
        CHECK(srv->state() == state::stopped);
        CHECK(srv->port() == 0);
        state last;
        const auto n = log.transitions_to(last);
        INFO("transitions to stopped/starting/running/stopping: " << n[0] << "/" << n[1] << "/" << n[2] << "/" << n[3]);
        CHECK(last == state::stopped);
        CHECK(n[2] == n[3]);         // every run that ran began to stop
        CHECK(n[1] == n[0]);         // every start ended stopped (failed, or ran and stopped)
        CHECK(test::settled(test::thread_count, baseline_threads) == baseline_threads);
        CHECK(test::settled(test::open_fds, baseline_fds) == baseline_fds);
        if (last_port != 0) {  // the last run's port refuses now
            const int fd = test::connect_loopback(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), last_port);
            CHECK(fd < 0);
            if (fd >= 0) ::close(fd);
        }
    }

    void resume() {
        std::lock_guard<std::mutex> lock(pause_mutex);
        pause = false;
        pause_cv.notify_all();
    }
};

}  // namespace

TEST_CASE("lifecycle model: random concurrent calls on one server keep the documented contract",
          "[lifecycle][model]") {
    std::uint64_t seed = test::option_seed();
    if (seed == 0) seed = std::random_device{}() | 1;
    const double seconds = test::option_seconds() > 0 ? test::option_seconds() : 3.0;
    std::fprintf(stderr, "lifecycle model: --seed %llu --seconds %g\n", static_cast<unsigned long long>(seed), seconds);
    INFO("replay with: test_lifecycle_model --seed " << seed << " --seconds " << seconds);
    test::watchdog wd("lifecycle model", std::chrono::seconds(static_cast<long long>(seconds) + 600));

    model_test m(seed, seconds);
    m.log.set_initial_config(tcp);
    std::mt19937_64 rng(seed);
    m.srv = std::make_unique<rs::server>(make_options(tcp, rng));
    rs::server& srv = *m.srv;
    srv.set_sync_point("transition", [&m](int to) { m.log.add(history::transition, to); });
    srv.set_sync_point("transition.made", [&m](int to) { m.log.add(history::made, to); });
    m.add_routes(srv);

    struct sigaction sa {}, old_sa{};
    sa.sa_handler = on_sigusr1;
    sigemptyset(&sa.sa_mask);
    ::sigaction(SIGUSR1, &sa, &old_sa);
    signalled_server.store(&srv);

    std::vector<std::thread> threads;
    for (int i = 0; i < caller_threads; ++i) threads.emplace_back([&m, i] { m.caller(i); });
    for (int i = 0; i < client_threads; ++i) threads.emplace_back([&m, i] { m.client(i); });
    std::atomic<bool> over{false};
    std::thread dog([&] {  // a call that never returns: say which, with the seed
        while (!over.load()) {
            std::this_thread::sleep_for(100ms);  // a watchdog's tick, not synchronisation
            const auto now = steady::now().time_since_epoch().count();
            for (std::size_t i = 0; i < m.slots.size(); ++i) {
                const char* call = m.slots[i].call.load();
                if (call && now - m.slots[i].since.load() > std::chrono::nanoseconds(call_limit).count()) {
                    std::fprintf(stderr, "lifecycle model: --seed %llu: thread %zu's %s has not returned in %lld s; "
                                 "state %s\n", static_cast<unsigned long long>(seed), i, call,
                                 static_cast<long long>(call_limit.count()),
                                 std::string(rs::to_string(m.srv->state())).c_str());
                    for (std::size_t j = 0; j < m.slots.size(); ++j)
                        if (const char* c = m.slots[j].call.load()) std::fprintf(stderr, "  thread %zu in %s\n", j, c);
                    std::fflush(stderr);
                    std::abort();
                }
            }
        }
    });
    {  // everyone paused: the baseline
        std::unique_lock<std::mutex> lock(m.pause_mutex);
        m.pause_cv.wait(lock, [&] { return m.paused == caller_threads + client_threads; });
    }
    const int threads0 = test::thread_count();
    const int fds0 = test::open_fds();

    const auto end = steady::now() + std::chrono::milliseconds(static_cast<long long>(seconds * 1000));
    std::uint16_t last_port = 0;
    int rounds = 0;
    while (steady::now() < end) {
        m.lone_stopper.store(rounds % 2 == 1);  // every other round: only caller 0 stops
        m.resume();
        // A quiescent point about every second: wait for the time (or a violation).
        const auto until = std::min(end, steady::now() + 1s);
        while (steady::now() < until && m.bad.count() == 0) {
            if (srv.port() != 0) last_port = srv.port();
            std::this_thread::sleep_for(10ms);  // the test's clock, not synchronisation
        }
        INFO("quiescent point " << rounds << ", seed " << seed);
        m.quiesce(threads0, fds0, last_port);
        last_port = 0;
        ++rounds;
        if (m.bad.count() != 0) break;
    }

    // The end: a running server with requests in flight is destroyed.
    {
        std::lock_guard<std::mutex> lock(m.pause_mutex);
        m.finished = true;
        m.pause_cv.notify_all();
    }
    for (std::thread& t : threads) t.join();
    over.store(true);
    dog.join();
    rs::options last = make_options(tcp, rng);
    last.drain_timeout = 30s;  // the slow request finishes
    m.srv->set_options(last);
    std::error_code ec;
    m.srv->start(ec);
    REQUIRE(!ec);
    const std::uint16_t port = m.srv->port();
    test::client slow(port), idle(port);
    REQUIRE(slow.send("GET /slow/100 HTTP/1.1\r\nHost: x\r\n\r\n"));
    REQUIRE(idle.send("GET /echo/1 HTTP/1.1\r\nHost: x\r\n\r\n"));
    CHECK(idle.read().status == 200);
    signalled_server.store(nullptr);
    ::sigaction(SIGUSR1, &old_sa, nullptr);
    std::thread destroyer([&] { m.srv.reset(); });  // the destructor drains: the slow one is answered
    const test::http_response r = slow.read();
    CHECK(r.status == 200);
    CHECK(r.body == "slow");
    destroyer.join();
    CHECK(idle.closed());
    slow.close();
    idle.close();
    const int test_threads = caller_threads + client_threads + 1;  // and the call watchdog
    CHECK(test::settled(test::thread_count, threads0 - test_threads) == threads0 - test_threads);
    ::unlink(unix_path().c_str());

    std::string summary;
    for (const auto& c : m.counts) summary += "\n  " + c.first + ": " + std::to_string(c.second);
    std::fprintf(stderr, "lifecycle model: --seed %llu, %d quiescent points, %zu violations;%s\n",
                 static_cast<unsigned long long>(seed), rounds, m.bad.count(), summary.c_str());
    INFO("violations (first 10):" << m.bad.first());
    CHECK(m.bad.count() == 0);
}
