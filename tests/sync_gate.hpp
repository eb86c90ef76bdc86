// Test support for the header's TEST HOOKS (RESTARTABLE_SERVER_TEST_HOOKS): a gate that
// holds the first server thread passing a named sync point until the test lets it go, so a
// race between two threads is played the same way on every run. Only for the test programs
// built with the hooks (tests/CMakeLists.txt: RS_HOOKED_TESTS).
#ifndef RESTARTABLE_SERVER_TESTS_SYNC_GATE_HPP
#define RESTARTABLE_SERVER_TESTS_SYNC_GATE_HPP

#ifndef RESTARTABLE_SERVER_TEST_HOOKS
#error "sync_gate.hpp needs RESTARTABLE_SERVER_TEST_HOOKS (see RS_HOOKED_TESTS in tests/CMakeLists.txt)"
#endif

#include "support.hpp"

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

namespace test {

/// gate: set on a sync point of srv, it holds the first thread that passes it (with an
/// argument `when` accepts) until release() or the gate's end; every later pass goes
/// through. The state is shared with the callback, so a thread still leaving the point
/// after the gate is gone touches nothing freed.
class gate {
public:
    gate(rs::server& srv, std::string point, std::function<bool(int)> when = {})
        : srv_(srv), point_(std::move(point)), s_(std::make_shared<shared>()) {
        std::shared_ptr<shared> s = s_;
        srv_.set_sync_point(point_, [s, when = std::move(when)](int arg) {
            std::unique_lock<std::mutex> lock(s->m);
            if (s->used || (when && !when(arg))) return;
            s->used = true;
            s->arg = arg;
            s->holder = std::this_thread::get_id();
            s->cv.notify_all();
            s->cv.wait(lock, [&] { return s->released; });
        });
    }
    ~gate() {
        srv_.set_sync_point(point_, {});
        release();
    }
    gate(const gate&) = delete;
    gate& operator=(const gate&) = delete;

    /// reached: whether a thread is (or was) held, waiting up to timeout for one.
    bool reached(std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
        std::unique_lock<std::mutex> lock(s_->m);
        return s_->cv.wait_for(lock, timeout, [&] { return s_->used; });
    }
    /// release: lets the held thread (and every later one) go on.
    void release() {
        std::lock_guard<std::mutex> lock(s_->m);
        s_->released = true;
        s_->cv.notify_all();
    }
    /// arg: what the held thread passed to the point.
    int arg() {
        std::lock_guard<std::mutex> lock(s_->m);
        return s_->arg;
    }

private:
    struct shared {
        std::mutex m;
        std::condition_variable cv;
        bool used = false, released = false;
        int arg = 0;
        std::thread::id holder;
    };
    rs::server& srv_;
    std::string point_;
    std::shared_ptr<shared> s_;
};

/// finishes_within: runs f in a thread and waits up to limit for it to return. On time,
/// joins and returns true. Late: calls unstick() (e.g. a request_stop() that releases a
/// hung wait()) until f returns, joins, and returns false - so a hang fails the test
/// instead of hanging it.
inline bool finishes_within(std::chrono::milliseconds limit, std::function<void()> f,
                            std::function<void()> unstick) {
    auto done = std::make_shared<std::pair<std::mutex, std::condition_variable>>();
    bool finished = false;
    std::thread t([&] {
        f();
        std::lock_guard<std::mutex> lock(done->first);
        finished = true;
        done->second.notify_all();
    });
    bool on_time;
    {
        std::unique_lock<std::mutex> lock(done->first);
        on_time = done->second.wait_for(lock, limit, [&] { return finished; });
        while (!finished) {
            lock.unlock();
            unstick();
            lock.lock();
            done->second.wait_for(lock, std::chrono::milliseconds(100), [&] { return finished; });
        }
    }
    t.join();
    return on_time;
}

}  // namespace test

#endif  // RESTARTABLE_SERVER_TESTS_SYNC_GATE_HPP
