// The CPU's pointwise pass of a step (forward_step / backward_step of device.h): one pass
// over [rows, H], rows in parallel, H in SIMD vectors, the cell math of csrc/cells per vector.
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>

#include "../device.h"
#include "vec_math.h"

namespace fused_rnn::cpu {

// Rows per task: about 2048 elements, a few microseconds of transcendentals, so a step
// of a few rows stays on the calling thread and B = 64, H = 512 uses every thread.
inline int64_t grain(int64_t hidden) { return std::max<int64_t>(1, 2048 / std::max<int64_t>(hidden, 1)); }

// The rows a step reads that were written long before it (forward: the input projection;
// backward: the workspace) come from memory, not cache: at B = 64, H = 256 the pass
// stalled on those loads for most of its time. Rows kPrefetchRows ahead are prefetched.
constexpr int64_t kPrefetchRows = 2;
inline void prefetch(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(c + o, 0, 3);
}
template <class Cell, class T>
void prefetch_row(const ForwardStep<T>& a, int64_t b) {
  prefetch(a.x_gates + b * a.x_stride, Cell::kGates * a.hidden * int64_t(sizeof(T)));
}
template <class Cell, class T>
void prefetch_row(const BackwardStep<T>& a, int64_t b) {
  prefetch(a.ws + b * a.ws_stride, Cell::kWorkspace * a.hidden * int64_t(sizeof(T)));
}

// One pass of a step (ForwardStep or BackwardStep): over [rows, hidden], rows in parallel,
// or, when the step is split, over all rows of this thread's units (a few rows, from cache:
// nothing to prefetch).
template <class Cell, class T, class Args>
void run_step(const Args& a, const Units& units) {
  using V = typename VecIO<T>::V;
  const int64_t u0 = units.split ? units.begin : 0, u1 = units.split ? units.end : a.hidden;
  at::parallel_for(0, a.rows, grain(a.hidden), [&](int64_t begin, int64_t end) {
    const bool prefetching = !units.split;
    for (int64_t b = begin; prefetching && b < std::min(end, begin + kPrefetchRows); ++b) prefetch_row<Cell>(a, b);
    for (int64_t b = begin; b < end; ++b) {
      if (prefetching && b + kPrefetchRows < end) prefetch_row<Cell>(a, b + kPrefetchRows);
      for (int64_t j = u0; j < u1; j += V::size()) {
        step_element<Cell, V>(a, b, j, VecIO<T>{std::min<int64_t>(V::size(), u1 - j)});
      }
    }
  });
}

}  // namespace fused_rnn::cpu
