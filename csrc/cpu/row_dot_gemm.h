// out (+)= a @ W^T for a few rows of `a`, with W [n, k] in its own row-major layout: every
// element of out is the dot product of a row of `a` with a row of W, both contiguous.
//
// This is the GEMM of a single step (a decoder's T = 1 call: x W_ih^T and h W_hh^T at B = 1)
// and of sequences too short to pack W (packed_gemm.h). MKL runs it as sgemv on a generic,
// single-threaded code path on AMD CPUs: 17 us for 1 x 256 @ 256 x 1024 on the project's EPYC.
// Here the rows of W are split over the threads, four at a time against every row of `a`,
// in SIMD vectors along k, with one horizontal sum per element of out.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>

namespace fused_rnn {

template <class T>
class RowDotGemm {
 public:
  using V = at::vec::Vectorized<T>;
  static constexpr int64_t kMaxRows = 4;

  // Whether out (+)= a @ b can run here: b = W^T of a row-major W, a of at most kMaxRows rows,
  // rows of a and out contiguous.
  static bool fits(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
    return a.size(0) <= kMaxRows && b.stride(0) == 1 && b.stride(1) >= b.size(0) && a.stride(1) == 1 &&
           out.stride(1) == 1;
  }

  static void multiply(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate) {
    const Args x = args(out, a, b, accumulate);
    const int64_t n = b.size(1);
    // Split W's rows over the threads when each gets about 16k multiply-adds or more.
    const int64_t grain = std::max<int64_t>(kWRows, 16384 / std::max<int64_t>(1, x.m * x.k));
    switch (x.m) {
      case 0: return;
      case 1: return at::parallel_for(0, n, grain, [&](int64_t j0, int64_t j1) { columns<1>(x, j0, j1); });
      case 2: return at::parallel_for(0, n, grain, [&](int64_t j0, int64_t j1) { columns<2>(x, j0, j1); });
      case 3: return at::parallel_for(0, n, grain, [&](int64_t j0, int64_t j1) { columns<3>(x, j0, j1); });
      default: return at::parallel_for(0, n, grain, [&](int64_t j0, int64_t j1) { columns<4>(x, j0, j1); });
    }
  }

  // Columns [j0, j1) of out (rows [j0, j1) of W) on the calling thread: multiply() for a caller
  // that divides the columns among its threads itself (small_step.h).
  static void multiply_columns(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate,
                               int64_t j0, int64_t j1) {
    const Args x = args(out, a, b, accumulate);
    switch (x.m) {
      case 0: return;
      case 1: return columns<1>(x, j0, j1);
      case 2: return columns<2>(x, j0, j1);
      case 3: return columns<3>(x, j0, j1);
      default: return columns<4>(x, j0, j1);
    }
  }

 private:
  static constexpr int64_t kWRows = 4;  // rows of W per register block
  struct Args {
    int64_t m, k;
    const T* a;
    int64_t lda;
    const T* w;
    int64_t ldw;
    T* out;
    int64_t ldo;
    bool accumulate;
  };

  static Args args(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate) {
    return {a.size(0),   b.size(0),         a.data_ptr<T>(), a.stride(0), b.data_ptr<T>(),
            b.stride(1), out.data_ptr<T>(), out.stride(0),   accumulate};
  }

  // Columns [j0, j1) of out, i.e. rows [j0, j1) of W.
  template <int M>
  static void columns(const Args& x, int64_t j0, int64_t j1) {
    int64_t j = j0;
    for (; j + kWRows <= j1; j += kWRows) block<M, kWRows>(x, j);
    for (; j < j1; ++j) block<M, 1>(x, j);
  }

  template <int M, int NW>
  static void block(const Args& x, int64_t j) {
    V acc[M][NW];
    for (int r = 0; r < M; ++r) {
      for (int q = 0; q < NW; ++q) acc[r][q] = V(T(0));
    }
    for (int64_t kk = 0; kk < x.k; kk += V::size()) {
      const int64_t count = std::min<int64_t>(V::size(), x.k - kk);  // loadu zero-fills the rest
      V w[NW];
      for (int q = 0; q < NW; ++q) w[q] = V::loadu(x.w + (j + q) * x.ldw + kk, count);
      for (int r = 0; r < M; ++r) {
        const V av = V::loadu(x.a + r * x.lda + kk, count);
        for (int q = 0; q < NW; ++q) acc[r][q] = at::vec::fmadd(av, w[q], acc[r][q]);
      }
    }
    for (int r = 0; r < M; ++r) {
      for (int q = 0; q < NW; ++q) {
        const T sum = at::vec::vec_reduce_all<T>([](V& u, V& v) { return u + v; }, acc[r][q]);
        T& dst = x.out[r * x.ldo + j + q];
        dst = x.accumulate ? dst + sum : sum;
      }
    }
  }
};

}  // namespace fused_rnn
