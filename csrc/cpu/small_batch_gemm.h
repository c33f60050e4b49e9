// out = a @ W^T for a few rows of `a` (batch 1..4 inference, one step's recurrent product).
// MKL's matrix-vector path streams all of W from L3 every step; here the rows of W are split
// between threads once and for all (at::parallel_for hands thread t the same chunk every
// call), so each core's share of W stays in its own L2 from one step to the next.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>

namespace fused_rnn {

constexpr int64_t kSmallBatchRows = 4;

// True when out = a @ b can take small_batch_gemm: b is the transpose of a contiguous W.
inline bool small_batch_gemm_applies(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  return a.size(0) <= kSmallBatchRows && a.stride(1) == 1 && b.stride(0) == 1 && b.stride(1) == b.size(0) &&
         out.stride(1) == 1 && (a.scalar_type() == at::kFloat || a.scalar_type() == at::kDouble);
}

template <class T>
void small_batch_gemm(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  using V = at::vec::Vectorized<T>;
  const int64_t m = a.size(0), k = a.size(1), n = b.size(1);
  const T* a_ptr = a.data_ptr<T>();
  const T* w = b.data_ptr<T>();  // W [n, k], row i is column i of b
  T* o = out.data_ptr<T>();
  const int64_t lda = a.stride(0), ldo = out.stride(0);
  constexpr int kRows = 4;  // rows of W per pass: each load of `a` feeds 4 FMAs
  const int64_t grain = std::max<int64_t>(kRows, (n + at::get_num_threads() - 1) / at::get_num_threads());
  at::parallel_for(0, n, grain, [&](int64_t n0, int64_t n1) {
    for (int64_t r = 0; r < m; ++r) {
      const T* x = a_ptr + r * lda;
      for (int64_t i = n0; i < n1; i += kRows) {
        const int64_t rows = std::min<int64_t>(kRows, n1 - i);
        V acc[kRows] = {V(T(0)), V(T(0)), V(T(0)), V(T(0))};
        int64_t j = 0;
        for (; j + V::size() <= k; j += V::size()) {
          const V xv = V::loadu(x + j);
          for (int q = 0; q < kRows; ++q) {
            if (q < rows) acc[q] = at::vec::fmadd(V::loadu(w + (i + q) * k + j), xv, acc[q]);
          }
        }
        for (int q = 0; q < rows; ++q) {
          T lanes[V::size()];
          acc[q].store(lanes);
          T sum = 0;
          for (int l = 0; l < V::size(); ++l) sum += lanes[l];
          for (int64_t jj = j; jj < k; ++jj) sum += w[(i + q) * k + jj] * x[jj];
          o[r * ldo + i + q] = sum;
        }
      }
    }
  });
}

}  // namespace fused_rnn
