// The event-set seam under the engine (detail::event_set): the contract both backends keep,
// epoll and poll(2) (this file is compiled into both builds). On socket pairs:
//   - an ev_edge registration reports once per readiness: not again while nothing new
//     arrives, and again (after rearm) when something does;
//   - modify() reports what is present, output and the peer's close included;
//   - many threads waiting on one set get each report once;
//   - a change made while another thread waits reaches it (poll(2): its leader is woken);
//   - a nested set is reported by the outer one; remove_set() leaves no stale report;
//   - a descriptor removed and registered again reports with its new pointer only.
// Waits that must see nothing use a short timeout; everything else waits on the event.
#include "support.hpp"

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

namespace {

namespace detail = restartable_server::detail;
using detail::ev_edge;
using detail::ev_hup;
using detail::ev_in;
using detail::ev_out;
using detail::event_set;
using detail::ready_event;

constexpr int quiet_ms = 50;      // "nothing is reported": looked for this long
constexpr int patient_ms = 5000;  // "it is reported": waited for at most this long

struct socket_pair {
    int a = -1, b = -1;  // write to a, b becomes readable
    socket_pair() {
        int sv[2];
        REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) == 0);
        a = sv[0];
        b = sv[1];
    }
    ~socket_pair() {
        ::close(a);
        if (b >= 0) ::close(b);
    }
    socket_pair(const socket_pair&) = delete;
    socket_pair& operator=(const socket_pair&) = delete;
    void send_byte() const { REQUIRE(::send(a, "x", 1, MSG_NOSIGNAL) == 1); }
    void drain() const {
        char buf[64];
        while (::recv(b, buf, sizeof buf, 0) > 0) {
        }
    }
};

/// wait_one: one report, waited for up to timeout_ms; ptr null when none came.
ready_event wait_one(event_set& set, int timeout_ms) {
    ready_event ev{nullptr, 0};
    const int n = set.wait(&ev, 1, timeout_ms);
    REQUIRE(n >= 0);
    if (n == 0) ev.ptr = nullptr;
    return ev;
}

constexpr std::uint32_t conn_interest = ev_in | ev_hup | ev_edge;

}  // namespace

TEST_CASE("event_set: an edge registration reports once per readiness", "[event_set]") {
    event_set set;
    REQUIRE(set.open());
    socket_pair p;
    int tag = 0;
    REQUIRE(set.add(p.b, &tag, conn_interest));
    CHECK(wait_one(set, quiet_ms).ptr == nullptr);  // nothing to read yet

    p.send_byte();
    ready_event ev = wait_one(set, patient_ms);
    CHECK(ev.ptr == &tag);
    CHECK((ev.events & ev_in) != 0);
    CHECK(wait_one(set, quiet_ms).ptr == nullptr);  // reported; nothing new since

    p.drain();  // what the engine does: read until empty, then park (rearm)
    set.rearm(p.b, &tag, conn_interest);
    CHECK(wait_one(set, quiet_ms).ptr == nullptr);
    p.send_byte();
    CHECK(wait_one(set, patient_ms).ptr == &tag);  // new bytes: reported again
}

TEST_CASE("event_set: modify() reports what is present, and the peer's close", "[event_set]") {
    event_set set;
    REQUIRE(set.open());
    socket_pair p;
    int tag = 0, other = 0;
    REQUIRE(set.add(p.b, &tag, conn_interest));
    p.send_byte();
    CHECK(wait_one(set, patient_ms).ptr == &tag);
    REQUIRE(set.modify(p.b, &other, conn_interest));  // not drained: still readable
    CHECK(wait_one(set, patient_ms).ptr == &other);

    p.drain();
    REQUIRE(set.modify(p.b, &tag, conn_interest | ev_out));  // a socket with room is writable
    ready_event ev = wait_one(set, patient_ms);
    CHECK(ev.ptr == &tag);
    CHECK((ev.events & ev_out) != 0);

    // The peer's half-close is a readiness to read (the EOF); epoll also says ev_hup
    // (EPOLLRDHUP), which poll(2) cannot: its level report brings the reader to the EOF.
    REQUIRE(set.modify(p.b, &tag, conn_interest));
    ::shutdown(p.a, SHUT_WR);
    ev = wait_one(set, patient_ms);
    CHECK(ev.ptr == &tag);
    CHECK((ev.events & ev_in) != 0);
#ifndef RESTARTABLE_SERVER_USE_POLL
    CHECK((ev.events & ev_hup) != 0);
#endif
    char byte;
    CHECK(::recv(p.b, &byte, 1, 0) == 0);
}

TEST_CASE("event_set: many waiting threads get each report once", "[event_set]") {
    constexpr int n_pairs = 40, n_threads = 4, rounds = 25;
    event_set set;
    REQUIRE(set.open());
    std::vector<std::unique_ptr<socket_pair>> pairs;
    for (int i = 0; i < n_pairs; ++i) {
        pairs.push_back(std::make_unique<socket_pair>());
        REQUIRE(set.add(pairs.back()->b, pairs.back().get(), conn_interest));
    }
    std::mutex m;
    std::condition_variable cv;
    std::vector<int> seen(static_cast<std::size_t>(n_pairs), 0);
    int total = 0;
    int exit_tag = 0;
    std::vector<std::thread> threads;
    for (int t = 0; t < n_threads; ++t) {
        threads.emplace_back([&] {
            for (;;) {
                ready_event ev{nullptr, 0};
                if (set.wait(&ev, 1, -1) != 1) continue;
                if (ev.ptr == &exit_tag) return;  // level-triggered: every thread sees it
                auto* p = static_cast<socket_pair*>(ev.ptr);
                p->drain();  // the holder's work, then it parks the connection again
                set.rearm(p->b, p, conn_interest);
                std::lock_guard<std::mutex> lock(m);
                for (std::size_t i = 0; i < pairs.size(); ++i)
                    if (pairs[i].get() == p) ++seen[i];
                ++total;
                cv.notify_all();
            }
        });
    }
    for (int r = 0; r < rounds; ++r) {
        // A round begins when every pair was served in the last one (read to empty and
        // re-armed): then its byte makes each ready exactly once.
        for (auto& p : pairs) p->send_byte();
        std::unique_lock<std::mutex> lock(m);
        REQUIRE(cv.wait_for(lock, std::chrono::milliseconds(patient_ms),
                            [&] { return std::all_of(seen.begin(), seen.end(), [&](int s) { return s >= r + 1; }); }));
    }
    {
        std::lock_guard<std::mutex> lock(m);
        for (int s : seen) CHECK(s == rounds);  // none lost, none twice
        CHECK(total == rounds * n_pairs);
    }
    socket_pair stop;
    REQUIRE(set.add(stop.b, &exit_tag, ev_in));
    stop.send_byte();
    for (std::thread& t : threads) t.join();
}

TEST_CASE("event_set: a change while another thread waits reaches it", "[event_set]") {
    event_set set;
    REQUIRE(set.open());
    socket_pair p;
    int tag = 0;
    std::atomic<void*> got{nullptr};
    std::thread waiter([&] {  // no Catch2 assertion off the main thread
        ready_event ev{nullptr, 0};
        if (set.wait(&ev, 1, patient_ms) == 1) got.store(ev.ptr);
    });
    // The waiter may be in its wait already or not yet: either way the registration below
    // (of a socket that is readable already) must reach it.
    p.send_byte();
    REQUIRE(set.add(p.b, &tag, conn_interest));
    waiter.join();
    CHECK(got.load() == &tag);
}

TEST_CASE("event_set: nested sets, and no stale report after remove_set", "[event_set]") {
    event_set outer, inner;
    REQUIRE(outer.open());
    REQUIRE(inner.open());
    socket_pair p;
    int tag = 0, inner_tag = 0;
    REQUIRE(inner.add(p.b, &tag, conn_interest));
    REQUIRE(outer.add_set(inner, &inner_tag));
    CHECK(wait_one(outer, quiet_ms).ptr == nullptr);
    p.send_byte();
    CHECK(wait_one(outer, patient_ms).ptr == &inner_tag);
    CHECK(wait_one(inner, 0).ptr == &tag);  // what the control thread does next

    p.drain();
    inner.rearm(p.b, &tag, conn_interest);
    p.send_byte();
    outer.remove_set(inner, &inner_tag);
    CHECK(wait_one(outer, quiet_ms).ptr == nullptr);  // inner is no longer outer's
    CHECK(wait_one(inner, patient_ms).ptr == &tag);
}

TEST_CASE("event_set: a descriptor registered again reports its new pointer", "[event_set]") {
    event_set set;
    REQUIRE(set.open());
    socket_pair p;
    int first = 0, second = 0;
    REQUIRE(set.add(p.b, &first, conn_interest));
    p.send_byte();
    set.remove(p.b);
    REQUIRE(set.add(p.b, &second, conn_interest));
    std::set<void*> reported;
    for (ready_event ev = wait_one(set, patient_ms); ev.ptr != nullptr; ev = wait_one(set, quiet_ms))
        reported.insert(ev.ptr);
    CHECK(reported == std::set<void*>{&second});
}
