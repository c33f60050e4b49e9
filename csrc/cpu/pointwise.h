// The CPU's pointwise pass of a step (forward_step / backward_step of device.h): one pass
// over [rows, H], rows in parallel, H in SIMD vectors, the cell math of csrc/cells per vector.
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>

#include "../cells/layer_norm.h"
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

// The CPU's Row policy (cells/layer_norm.h): one thread visits a whole row, a SIMD vector
// of units at a time.
template <class T>
struct CpuRow {
  using IO = VecIO<T>;
  using V = typename IO::V;
  using Scalar = typename V::value_type;

  template <class F>
  void for_each(int64_t width, F&& f) const {
    for (int64_t j = 0; j < width; j += V::size()) f(j, IO{std::min<int64_t>(V::size(), width - j)});
  }
  V masked(const IO& io, const V& v) const { return io.count == V::size() ? v : V::set(V(0), v, io.count); }
  Scalar sum(const V& v) const {
    Scalar lanes[V::size()];
    v.store(lanes);
    Scalar total = 0;
    for (int64_t i = 0; i < V::size(); ++i) total += lanes[i];
    return total;
  }
  bool leader() const { return true; }
  void sync() const {}
};

// A layer-normalized step (a.norm.gamma_hh set): rows in parallel, each whole on one thread
// (its statistics span all its units, so such steps are never split by units).
template <class Cell, class T, class Args>
void run_rows(const Args& a) {
  const CpuRow<T> row;
  at::parallel_for(0, a.rows, std::max<int64_t>(1, grain(a.hidden) / Cell::kGates), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      step_row<Cell, typename CpuRow<T>::V>(a, b, row);
    }
  });
}

// Each row of [rows, width] (stride `stride`) in place to gamma * v̂, keeping v̂ ([rows, width]
// at v_hat, stride hat_stride) and 1/σ (at rstd, stride hat_stride) where those are set.
template <class T>
void normalize_rows(T* v, int64_t rows, int64_t width, int64_t stride, const T* gamma, T* v_hat, T* rstd,
                    int64_t hat_stride) {
  const CpuRow<T> row;
  at::parallel_for(0, rows, std::max<int64_t>(1, 2048 / std::max<int64_t>(width, 1)), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      normalize_row<typename CpuRow<T>::V>(row, v + b * stride, width, gamma, v_hat ? v_hat + b * hat_stride : nullptr,
                                           rstd ? rstd + b * hat_stride : nullptr);
    }
  });
}

// Each row of d [rows, width] (stride `stride`) in place through its normalization: the
// gradient of the rows normalize_rows made, from v̂ and 1/σ (stride hat_stride).
template <class T>
void normalize_rows_backward(T* d, int64_t rows, int64_t width, int64_t stride, const T* gamma, const T* v_hat,
                             const T* rstd, int64_t hat_stride) {
  const CpuRow<T> row;
  at::parallel_for(0, rows, std::max<int64_t>(1, 2048 / std::max<int64_t>(width, 1)), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      normalize_row_backward<typename CpuRow<T>::V>(row, d + b * stride, width, gamma, v_hat + b * hat_stride,
                                                    rstd + b * hat_stride, d + b * stride);
    }
  });
}

// One pass of a step (ForwardStep or BackwardStep): over [rows, hidden], rows in parallel,
// or, when the step is split, over all rows of this thread's units (a few rows, from cache:
// nothing to prefetch). A layer-normalized step goes row by row (run_rows).
template <class Cell, class T, class Args>
void run_step(const Args& a, const Units& units) {
  using V = typename VecIO<T>::V;
  if (a.norm.gamma_hh) {
    TORCH_INTERNAL_ASSERT(!units.split, "a layer-normalized step is never split");
    return run_rows<Cell, T>(a);
  }
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
