// HandlerPool: the HTTP server's handler threads, started when requests
// arrive instead of at start (the idle agent runs none), never more than the
// limit, every posted handler run before join() returns.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>

#include <doctest/doctest.h>

#include "agent/api/handler_pool.hpp"

using quiesce::api::detail::HandlerPool;
using namespace std::chrono_literals;

namespace {

// Holds every handler until released, counting how many run at once.
struct Gate {
  std::mutex mutex;
  std::condition_variable changed;
  bool open = false;
  int running = 0;
  int most = 0;
  int done = 0;

  void enter_and_wait() {
    std::unique_lock lock(mutex);
    ++running;
    most = std::max(most, running);
    changed.notify_all();
    changed.wait(lock, [this] { return open; });
    --running;
    ++done;
    changed.notify_all();
  }
  bool wait_running(int count) {
    std::unique_lock lock(mutex);
    return changed.wait_for(lock, 5s, [&] { return running == count; });
  }
  void release() {
    std::lock_guard lock(mutex);
    open = true;
    changed.notify_all();
  }
};

}  // namespace

TEST_CASE("handler pool: no thread before the first handler") {
  HandlerPool pool(4);
  CHECK(pool.started_threads() == 0);
  std::atomic<bool> ran{false};
  pool.post([&ran] { ran = true; });
  pool.join();
  CHECK(ran);
}

TEST_CASE("handler pool: threads up to the limit, the rest wait their turn") {
  HandlerPool pool(2);
  Gate gate;
  for (int i = 0; i < 5; ++i) {
    pool.post([&gate] { gate.enter_and_wait(); });
  }
  REQUIRE(gate.wait_running(2));
  CHECK(pool.started_threads() == 2);
  gate.release();
  pool.join();
  CHECK(gate.done == 5);
  CHECK(gate.most == 2);
}

TEST_CASE("handler pool: an idle thread is reused rather than a new one started") {
  HandlerPool pool(4);
  for (int i = 0; i < 20; ++i) {
    std::atomic<bool> ran{false};
    pool.post([&ran] { ran = true; });
    // Until the thread has run it and waits again.
    for (int wait = 0; wait < 5000 && !(ran && pool.idle_threads() == 1); ++wait) {
      std::this_thread::sleep_for(1ms);
    }
    REQUIRE(ran);
    REQUIRE(pool.idle_threads() == 1);
  }
  CHECK(pool.started_threads() == 1);
}

TEST_CASE("handler pool: move-only handlers, and posts after join are dropped") {
  HandlerPool pool(1);
  auto value = std::make_unique<int>(7);
  std::atomic<int> seen{0};
  pool.post([value = std::move(value), &seen] { seen = *value; });
  pool.join();
  CHECK(seen == 7);
  pool.post([&seen] { seen = 8; });
  pool.join();
  CHECK(seen == 7);
}
