// The CPU side of a time step: one pass over [rows, H], rows in parallel, H in SIMD vectors.
#pragma once
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <optional>

namespace at::native {
// ATen's oneDNN matmul (exported by libtorch_cpu, declared in ATen/native/mkldnn/Matmul.h,
// which the wheels do not ship): result = beta * result + alpha * mat1 @ mat2.
TORCH_API void mkldnn_matmul(const Tensor& mat1, const Tensor& mat2, const Tensor& result, float beta, float alpha);
}  // namespace at::native

#include "packed_gemm.h"
#include "vec_math.h"

namespace fused_rnn {

struct CpuDevice {
  // CPU dtypes: float32 and float64 (the math runs on Vectorized<T>).
  template <class F>
  static void dispatch(at::ScalarType st, const char* /*op*/, F&& fn) {
    AT_DISPATCH_FLOATING_TYPES(st, "fused_rnn_cpu", [&] { fn(scalar_t{}); });
  }

  // out = a @ b (+ out when accumulate). float32 products of 5+ rows go to oneDNN's matmul:
  // on this project's CPUs (AMD EPYC, AVX-512) it runs 2.2x faster than MKL's sgemm, which
  // picks an AVX2 path on AMD; MKL keeps matrix-vector products, where oneDNN is slow.
  static void gemm(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate) {
    if (a.scalar_type() == at::kFloat && a.size(0) >= kMinOneDnnRows && at::hasMKLDNN()) {
      at::native::mkldnn_matmul(a, b, out, accumulate ? 1.0f : 0.0f, 1.0f);
    } else if (accumulate) {
      out.addmm_(a, b);
    } else {
      at::mm_out(out, a, b);
    }
  }
  static constexpr int64_t kMinOneDnnRows = 5;

  // The weight b of a GEMM that every step repeats (out (+)= a @ b, a = that step's rows).
  // Steps multiply a copy of b packed once per op call (packed_gemm.h): oneDNN and MKL
  // re-read b in its own layout on every call, which costs more than the arithmetic at a
  // few rows and, measured at B = 64, H = 512, still 10% at many. A sequence shorter than
  // kMinPackedSteps does not repay the packing and calls gemm().
  class StepWeight {
   public:
    static constexpr int64_t kMinPackedSteps = 4;

    explicit StepWeight(const at::Tensor& b, int64_t steps) : b_(b) {
      if (steps < kMinPackedSteps) return;
      if (b.scalar_type() == at::kFloat) f32_.emplace(b);
      if (b.scalar_type() == at::kDouble) f64_.emplace(b);
    }

    void gemm(at::Tensor& out, const at::Tensor& a, bool accumulate) const {
      const bool rows_contiguous = a.stride(1) == 1 && out.stride(1) == 1;
      if (f32_ && rows_contiguous) {
        f32_->multiply(out, a, accumulate);
      } else if (f64_ && rows_contiguous) {
        f64_->multiply(out, a, accumulate);
      } else {
        CpuDevice::gemm(out, a, b_, accumulate);
      }
    }

   private:
    at::Tensor b_;
    std::optional<PackedWeight<float>> f32_;
    std::optional<PackedWeight<double>> f64_;
  };

  // Rows per task: about 2048 elements, a few microseconds of transcendentals, so a step
  // of a few rows stays on the calling thread and B = 64, H = 512 uses every thread.
  static int64_t grain(int64_t hidden) { return std::max<int64_t>(1, 2048 / std::max<int64_t>(hidden, 1)); }

  // The rows a step reads that were written long before it (forward: the input projection;
  // backward: the workspace) come from memory, not cache: at B = 64, H = 256 the pass
  // stalled on those loads for most of its time. Rows kPrefetchRows ahead are prefetched.
  static constexpr int64_t kPrefetchRows = 2;
  static void prefetch(const void* p, int64_t bytes) {
    const char* c = static_cast<const char*>(p);
    for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(c + o, 0, 3);
  }
  template <class Cell, class T>
  static void prefetch_row(const ForwardStep<T>& a, int64_t b) {
    prefetch(a.x_gates + b * a.x_stride, Cell::kGates * a.hidden * int64_t(sizeof(T)));
  }
  template <class Cell, class T>
  static void prefetch_row(const BackwardStep<T>& a, int64_t b) {
    prefetch(a.ws + b * a.ws_stride, Cell::kWorkspace * a.hidden * int64_t(sizeof(T)));
  }

  // One pass of a step (ForwardStep or BackwardStep) over [rows, hidden].
  template <class Cell, class T, class Args>
  static void run_step(const Args& a) {
    using V = at::vec::Vectorized<T>;
    at::parallel_for(0, a.rows, grain(a.hidden), [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < std::min(end, begin + kPrefetchRows); ++b) prefetch_row<Cell>(a, b);
      for (int64_t b = begin; b < end; ++b) {
        if (b + kPrefetchRows < end) prefetch_row<Cell>(a, b + kPrefetchRows);
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
