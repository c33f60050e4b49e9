// The CPU's StepWeight (device.h): the weight of a GEMM that every step repeats, packed once
// per op call.
#pragma once
#include <ATen/ATen.h>

#include <optional>

#include "../device.h"
#include "gemm.h"
#include "onednn_weight.h"
#include "packed_gemm.h"

namespace fused_rnn::cpu {

// out (+)= a @ b, a = a step's rows. Steps multiply a copy of b packed once per op call:
// float and double in our panels (packed_gemm.h), bfloat16 by oneDNN where the CPU multiplies
// it and the call is long enough (onednn_weight.h). oneDNN and MKL re-read b in its own layout
// on every call, which costs more than the arithmetic at a few rows and, measured at B = 64,
// H = 512, still 10% at many. A sequence shorter than kMinPackedSteps does not repay the
// packing and calls gemm(). `groups`: b's columns are that many equal groups (the gates of
// W_hh^T), packed so that a thread of a split step multiplies the columns of its units in
// every group (Units).
class StepWeight {
 public:
  static constexpr int64_t kMinPackedSteps = 4;

  explicit StepWeight(const at::Tensor& b, int64_t steps, int64_t groups = 1) : b_(b) {
    if (steps < kMinPackedSteps) return;
    if (b.scalar_type() == at::kFloat) f32_.emplace(b, groups);
    if (b.scalar_type() == at::kDouble) f64_.emplace(b, groups);
    if (OneDnnWeight::pays(b, steps)) bf16_.emplace(b);
  }

  void gemm(at::Tensor& out, const at::Tensor& a, bool accumulate, const Units& units = {}) const {
    const bool rows_contiguous = a.stride(1) == 1 && out.stride(1) == 1;
    if (units.split) {  // for_each_step splits only packed float/double steps
      TORCH_INTERNAL_ASSERT((f32_ || f64_) && rows_contiguous);
      if (f32_) f32_->multiply_units(out, a, accumulate, units.begin, units.end);
      if (f64_) f64_->multiply_units(out, a, accumulate, units.begin, units.end);
    } else if (f32_ && rows_contiguous) {
      f32_->multiply(out, a, accumulate);
    } else if (f64_ && rows_contiguous) {
      f64_->multiply(out, a, accumulate);
    } else if (bf16_ && a.is_contiguous()) {
      const at::Tensor result = bf16_->multiply(a);
      accumulate ? out.add_(result) : out.copy_(result);
    } else {
      cpu::gemm(out, a, b_, accumulate);
    }
  }

  // a @ b: oneDNN's own result for a bf16 weight (no copy into out), else out, filled.
  at::Tensor product(at::Tensor& out, const at::Tensor& a, const Units& units = {}) const {
    if (bf16_ && a.is_contiguous() && !units.split) return bf16_->multiply(a);
    gemm(out, a, false, units);
    return out;
  }

 private:
  at::Tensor b_;
  std::optional<PackedWeight<float>> f32_;
  std::optional<PackedWeight<double>> f64_;
  std::optional<OneDnnWeight> bf16_;
};

}  // namespace fused_rnn::cpu
