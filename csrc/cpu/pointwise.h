// The CPU side of a time step: one pass over [rows, H], rows in parallel, H in SIMD vectors.
#pragma once
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>

namespace at::native {
// ATen's oneDNN matmul (exported by libtorch_cpu, declared in ATen/native/mkldnn/Matmul.h,
// which the wheels do not ship): result = beta * result + alpha * mat1 @ mat2.
TORCH_API void mkldnn_matmul(const Tensor& mat1, const Tensor& mat2, const Tensor& result, float beta, float alpha);
}  // namespace at::native

#include "small_batch_gemm.h"
#include "vec_math.h"

namespace fused_rnn {

struct CpuDevice {
  // CPU dtypes: float32 and float64 (the math runs on Vectorized<T>).
  template <class F>
  static void dispatch(at::ScalarType st, const char* /*op*/, F&& fn) {
    AT_DISPATCH_FLOATING_TYPES(st, "fused_rnn_cpu", [&] { fn(scalar_t{}); });
  }

  // out = a @ b (+ out when accumulate). float32 goes to oneDNN's matmul when the product has
  // a few rows: on this project's CPUs (AMD EPYC, AVX-512) it runs 2.2x faster than MKL's
  // sgemm, which picks an AVX2 path on AMD. Products with 1..4 rows times a transposed
  // weight (inference at small batch) take small_batch_gemm, which keeps W in L2.
  static void gemm(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate) {
    if (!accumulate && small_batch_gemm_applies(out, a, b)) {
      AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "fused_rnn_small_batch_gemm",
                                 [&] { small_batch_gemm<scalar_t>(out, a, b); });
    } else if (a.scalar_type() == at::kFloat && a.size(0) >= kMinOneDnnRows && at::hasMKLDNN()) {
      at::native::mkldnn_matmul(a, b, out, accumulate ? 1.0f : 0.0f, 1.0f);
    } else if (accumulate) {
      out.addmm_(a, b);
    } else {
      at::mm_out(out, a, b);
    }
  }
  static constexpr int64_t kMinOneDnnRows = kSmallBatchRows + 1;

  // Rows per task: small steps (B = 1 inference) stay on the calling thread.
  static int64_t grain(int64_t hidden) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(hidden, 1)); }

  // One pass of a step (ForwardStep or BackwardStep) over [rows, hidden].
  template <class Cell, class T, class Args>
  static void run_step(const Args& a) {
    using V = at::vec::Vectorized<T>;
    at::parallel_for(0, a.rows, grain(a.hidden), [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        for (int64_t j = 0; j < a.hidden; j += V::size()) {
          step_element<Cell, V>(a, b, j, VecIO<T>{std::min<int64_t>(V::size(), a.hidden - j)});
        }
      }
    });
  }

  template <class Cell, class T>
  static void forward_step(const ForwardStep<T>& a) {
    run_step<Cell, T>(a);
  }

  template <class Cell, class T>
  static void backward_step(const BackwardStep<T>& a) {
    run_step<Cell, T>(a);
  }
};

}  // namespace fused_rnn
