// The CPU's for_each_step (device.h): a forward of a few rows runs all its steps in one
// OpenMP region, each thread the same hidden units every step, spin barriers between.
#pragma once
#include <ATen/Config.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/ParallelGuard.h>

#include <algorithm>
#include <atomic>
#include <exception>
#include <type_traits>
#if AT_PARALLEL_OPENMP
#include <omp.h>
#endif

#include "../device.h"
#include "spin_barrier.h"
#include "step_weight.h"
#include "usable_cpus.h"

namespace fused_rnn::cpu {

// Splitting pays while a step is small: up to kMaxSplitRows rows, at least kMinSplitFmas
// multiply-adds of GEMM per thread, a whole number of SIMD vectors of units each.
constexpr int64_t kMaxSplitRows = 8;
constexpr int64_t kMinSplitFmas = 16384;

// Tests turn splitting off (_C.testing.set_split_steps) to compare a split forward with the
// same call run whole on the same number of threads: MKL's sgemm (the input projection) gives
// other bits on another thread count, so only that comparison can ask for equal bits.
inline bool& split_steps_enabled() {
  static bool enabled = true;
  return enabled;
}

// The threads a forward of `n_steps` such steps is split over (1: run whole steps).
inline int64_t split_workers(int64_t n_steps, const StepPlan& plan, int64_t lanes) {
#if AT_PARALLEL_OPENMP
  if (!split_steps_enabled() || !plan.splittable || plan.rows > kMaxSplitRows ||
      n_steps < StepWeight::kMinPackedSteps || at::in_parallel_region()) {
    return 1;
  }
  const int64_t fmas = plan.rows * plan.depth * plan.gates * plan.hidden;
  const int64_t panels = (plan.hidden + lanes - 1) / lanes;
  // Never more workers than CPUs to run them: more threads than that (set_num_threads(8) on two
  // cores, a container's CPU quota) would leave the barrier waiting on threads that are not running.
  return std::min({int64_t(at::get_num_threads()), usable_cpus(), panels, std::max<int64_t>(1, fmas / kMinSplitFmas)});
#else
  return 1;  // the barrier needs every worker running at once, which only OpenMP's team promises
#endif
}

#if AT_PARALLEL_OPENMP
// The split loop: thread `id` of `team` takes whole SIMD panels of units; sync() is the
// barrier. A throwing thread aborts the barrier (releasing the others) and its exception is
// rethrown after the region.
template <class Body>
void run_split_steps(int64_t n_steps, int64_t hidden, int64_t lanes, int64_t workers, Body&& body) {
  SpinBarrier barrier;
  std::exception_ptr error;
  std::atomic_flag failed = ATOMIC_FLAG_INIT;
  // No num_threads clause (see ATen's ParallelOpenMP.h): threads past `team` sit it out.
#pragma omp parallel
  {
    const int64_t team = std::min<int64_t>(workers, omp_get_num_threads());
    const int64_t id = omp_get_thread_num();
    if (id < team) {
      const c10::ParallelGuard guard(true);  // at::parallel_for inside runs inline
      const int64_t panels = (hidden + lanes - 1) / lanes;
      const int64_t begin = std::min(hidden, id * panels / team * lanes);
      const int64_t end = std::min(hidden, (id + 1) * panels / team * lanes);
      const Units units{begin, end, true};
      const auto sync = [&] { barrier.wait(team); };
      try {
        for (int64_t k = 0; k < n_steps && !barrier.aborted(); ++k) {
          body(k, units, sync);
          sync();
        }
      } catch (...) {
        if (!failed.test_and_set()) error = std::current_exception();
        barrier.abort();
      }
    }
  }
  if (error) std::rethrow_exception(error);
}
#endif

// Runs body(k, units, sync) for the steps k = 0 .. n_steps - 1 in order.
//
// A step of a few rows is split over the threads by hidden units (when plan.splittable),
// inside ONE parallel region for the whole sequence: every step, each thread runs the GEMM
// columns of the same units in every gate, then the pass over those units, and sync() is
// a barrier among the threads (the body calls it between the GEMM and the pass, which
// overwrites the h that every thread's GEMM reads; the loop calls it after each step).
// Each thread's share of W_hh stays in its own L2. Whole steps instead fork and join the
// threads twice a step and, at a few rows, run the pass on one thread. Measured at B = 1,
// H = 256, T = 100 on 2 threads, whole -> split: LSTM 0.95 -> 0.78 ms, GRU 1.29 -> 0.59 ms,
// RNN 0.47 -> 0.23 ms; at B = 8 (LSTM) 3.1 -> 2.6 ms; at B = 16 no gain, hence kMaxSplitRows.
// Other steps run whole on this thread, their GEMM and pass parallel inside.
template <class T, class Body>
void for_each_step(int64_t n_steps, const StepPlan& plan, Body&& body) {
  at::internal::lazy_init_num_threads();  // this thread's OpenMP team size, as ATen sets it
  if constexpr (!std::is_same_v<T, float> && !std::is_same_v<T, double>) {
    return for_each_whole_step(n_steps, plan.hidden, body);  // no packed weight to split
  }
  const int64_t lanes = at::vec::Vectorized<T>::size();
  const int64_t workers = split_workers(n_steps, plan, lanes);
  if (workers <= 1) return for_each_whole_step(n_steps, plan.hidden, body);
#if AT_PARALLEL_OPENMP
  run_split_steps(n_steps, plan.hidden, lanes, workers, body);
#endif
}

}  // namespace fused_rnn::cpu
