// A bfloat16 weight packed once per op call by oneDNN, for the GEMM every step repeats.
//
// ATen's bf16 mm hands each call to oneDNN as a new problem, which re-lays W out for AMX or
// avx512_bf16 on every step. Measured on the project's Xeon (AMX, 2 threads), one step of
// h W_hh^T at B = 64, H = 512 (LSTM): 163 us through at::mm_out, 98 us with W packed once;
// backward's dG W_hh 147 against 84 us; at B = 8, 91 against 41 us; at B = 1, H = 256, 36
// against 22 us. The packing itself costs 0.14 ms at H = 64, 0.4 ms at H = 256 and 1.5 ms at
// H = 512 (plus 0.7 ms to transpose W_hh for backward's product), so it pays from about 30
// steps on (kMinSteps); a weight of fewer than kMinElements elements (where ATen's own small
// GEMM takes 4 us a step, against oneDNN's 16) never does. float16 has no such gain on CPUs
// without AMX-FP16 (500 against 461 us) and keeps ATen's mm.
//
// The packing and the product are oneDNN's own, reached through the ops torch registers for
// inductor's frozen linears (csrc/torch_private.h).
#pragma once
#include <ATen/ATen.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include "../torch_private.h"

namespace fused_rnn::cpu {

// Whether the CPU multiplies bf16 in hardware (avx512_bf16 or AMX-BF16), where oneDNN's packed
// bf16 product is the fast one; elsewhere oneDNN emulates bf16 or refuses it.
inline bool bf16_hardware() {
#if defined(__x86_64__) || defined(__i386__)
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (__get_cpuid_max(0, nullptr) < 7) return false;
  __cpuid_count(7, 0, eax, ebx, ecx, edx);
  const bool amx_bf16 = (edx >> 22) & 1;
  __cpuid_count(7, 1, eax, ebx, ecx, edx);
  const bool avx512_bf16 = (eax >> 5) & 1;
  return amx_bf16 || avx512_bf16;
#else
  return false;
#endif
}

class OneDnnWeight {
 public:
  static constexpr int64_t kMinSteps = 32;
  static constexpr int64_t kMinElements = 16384;

  // b: [k, n], the right factor of out = a @ b (W^T as a view of W included).
  explicit OneDnnWeight(const at::Tensor& b) : packed_(onednn_reorder_linear_weight(b.t().contiguous())) {}

  // Whether b is packed for `steps` steps: where it pays (above) and runs.
  static bool pays(const at::Tensor& b, int64_t steps) {
    return steps >= kMinSteps && b.numel() >= kMinElements && usable(b.scalar_type());
  }

  // Whether a weight of this dtype is packed here: bf16 on CPUs that multiply it in hardware,
  // when this torch's oneDNN ops run (probed once with the smallest product).
  static bool usable(at::ScalarType dtype) {
    static const bool ok = [] {
      if (!at::hasMKLDNN() || !bf16_hardware()) return false;
      try {
        const at::Tensor b = at::ones({1, 1}, at::kBFloat16);
        return OneDnnWeight(b).multiply(at::ones({1, 1}, at::kBFloat16)).item<float>() == 1.0f;
      } catch (const c10::Error&) {
        return false;
      }
    }();
    return dtype == at::kBFloat16 && ok && enabled();
  }

  // Tests turn the route off (_C.testing.set_onednn_step_weights) to run the same bf16 call
  // through ATen's mm.
  static bool& enabled() {
    static bool on = true;
    return on;
  }

  // a @ b, a new [m, n] tensor; a's rows contiguous.
  at::Tensor multiply(const at::Tensor& a) const { return onednn_linear(a, packed_); }

 private:
  at::Tensor packed_;  // oneDNN's layout of W = b^T [n, k]
};

}  // namespace fused_rnn::cpu
