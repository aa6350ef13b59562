#pragma once
// The threads that run request handlers, started when work arrives rather
// than at start: an agent that nobody calls runs none of them (asio's
// thread_pool started all of them in its constructor: 6 threads, ~0.8 ms of
// the start and their stacks' resident pages). A thread, once started, stays
// and waits for the next handler on a condition variable with no timeout:
// no periodic wakeups while idle, no thread start in the way of a later
// request. At most `max_threads` handlers run at once; more wait in order.

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace quiesce::api::detail {

class HandlerPool {
 public:
  explicit HandlerPool(std::size_t max_threads);
  ~HandlerPool();
  HandlerPool(const HandlerPool&) = delete;
  HandlerPool& operator=(const HandlerPool&) = delete;

  // Runs `work` on a pool thread, starting one when none is idle and fewer
  // than max_threads run. `work` may be move-only.
  template <class Work>
  void post(Work&& work) {
    using Stored = std::decay_t<Work>;
    if constexpr (std::is_copy_constructible_v<Stored>) {
      enqueue(std::function<void()>(std::forward<Work>(work)));
    } else {
      enqueue([held = std::make_shared<Stored>(std::forward<Work>(work))] { (*held)(); });
    }
  }

  // Runs what was posted, then ends the threads; later posts are dropped.
  void join();

  // How many threads have been started, and how many of them wait for work
  // (for tests).
  [[nodiscard]] std::size_t started_threads() const;
  [[nodiscard]] std::size_t idle_threads() const;

 private:
  void enqueue(std::function<void()> work);
  void run();

  const std::size_t max_threads_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> queue_;
  std::vector<std::thread> threads_;
  std::size_t idle_ = 0;
  bool stopping_ = false;
};

}  // namespace quiesce::api::detail
