// A barrier for threads that all run at once (one OpenMP team) and meet every few
// microseconds, as the threads of a split time loop do twice a step. Waiting spins: putting a
// thread to sleep and waking it costs more than a step. abort() releases every waiter for
// good, so a thread that failed never leaves the others spinning.
#pragma once
#include <atomic>
#include <thread>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

namespace fused_rnn {

class SpinBarrier {
 public:
  // Blocks until `parties` threads (the same number in every thread) have called wait() in
  // this round, or until abort().
  void wait(int64_t parties) {
    const unsigned round = round_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) + 1 == parties) {
      arrived_.store(0, std::memory_order_relaxed);  // before the release below: next round
      round_.fetch_add(1, std::memory_order_release);
      return;
    }
    for (int64_t spins = 0; round_.load(std::memory_order_acquire) == round && !aborted(); ++spins) {
      // A thread the OS has taken off its core (more threads than cores) would keep us
      // spinning: after a while (tens of us, a step takes a few), give the core up between looks.
      if (spins < kSpinsBeforeYield) {
        pause();
      } else {
        std::this_thread::yield();
      }
    }
  }

  void abort() { aborted_.store(true, std::memory_order_release); }
  bool aborted() const { return aborted_.load(std::memory_order_acquire); }

 private:
  static constexpr int64_t kSpinsBeforeYield = 2048;
  static void pause() {
#if defined(__x86_64__) || defined(_M_X64)
    _mm_pause();
#endif
  }

  std::atomic<int64_t> arrived_{0};
  std::atomic<unsigned> round_{0};
  std::atomic<bool> aborted_{false};
};

}  // namespace fused_rnn
