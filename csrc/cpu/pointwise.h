// The CPU side of a time step: one pass over [rows, H], rows in parallel, H in SIMD vectors.
#pragma once
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>

#include "vec_math.h"

namespace fused_rnn {

struct CpuDevice {
  // CPU dtypes: float32 and float64 (the math runs on Vectorized<T>).
  template <class F>
  static void dispatch(at::ScalarType st, const char* /*op*/, F&& fn) {
    AT_DISPATCH_FLOATING_TYPES(st, "fused_rnn_cpu", [&] { fn(scalar_t{}); });
  }

  // Rows per task: small steps (B = 1 inference) stay on the calling thread.
  static int64_t grain(int64_t hidden) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(hidden, 1)); }

  template <class Cell, class T, class Args, class Fn>
  static void for_each_vector(const Args& a, Fn fn) {
    using V = at::vec::Vectorized<T>;
    at::parallel_for(0, a.rows, grain(a.hidden), [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        for (int64_t j = 0; j < a.hidden; j += V::size()) {
          fn(b, j, VecIO<T>{std::min<int64_t>(V::size(), a.hidden - j)});
        }
      }
    });
  }

  template <class Cell, class T>
  static void forward_step(const ForwardStep<T>& a) {
    for_each_vector<Cell, T>(a, [&](int64_t b, int64_t j, const VecIO<T>& io) {
      Cell::template forward<at::vec::Vectorized<T>>(a, b, j, io);
    });
  }

  template <class Cell, class T>
  static void backward_step(const BackwardStep<T>& a) {
    for_each_vector<Cell, T>(a, [&](int64_t b, int64_t j, const VecIO<T>& io) {
      Cell::template backward<at::vec::Vectorized<T>>(a, b, j, io);
    });
  }
};

}  // namespace fused_rnn
