// The private torch C++ functions fused_rnn calls: declared here once each, with the torch
// versions they were checked against. A torch upgrade checks this file first (pyproject.toml's
// torch range agrees with it). The private Python APIs are listed in fused_rnn/_torch_private.py.
#pragma once
#include <ATen/ATen.h>
#include <c10/util/Exception.h>

namespace at::native {
// ATen's oneDNN matmul: result = beta * result + alpha * mat1 @ mat2. Exported by
// libtorch_cpu and declared in ATen/native/mkldnn/Matmul.h, which the wheels do not ship.
// Checked against torch 2.11 and 2.13 (same signature); call only when at::hasMKLDNN().
TORCH_API void mkldnn_matmul(const Tensor& mat1, const Tensor& mat2, const Tensor& result, float beta, float alpha);
}  // namespace at::native

namespace fused_rnn {

// Whether at::native::mkldnn_matmul runs on this CPU. It refuses CPUs without AVX-512
// (BW, VL, DQ) or AVX-NE-CONVERT even for float32, because it checks for bf16 support first
// (torch 2.13: "mkldnn_matmul bf16 path needs the cpu support ..."), so an AVX2-only CPU (an
// AMD EPYC without AVX-512, Zen 2/3, most laptops) must not be routed there. Probed once with
// a product of the smallest size fused_rnn sends, rather than by re-deriving oneDNN's rule.
inline bool mkldnn_matmul_usable() {
  static const bool usable = [] {
    if (!at::hasMKLDNN()) return false;
    try {
      const at::Tensor a = at::ones({8, 1}), b = at::ones({1, 1});
      const at::Tensor out = at::empty({8, 1});
      at::native::mkldnn_matmul(a, b, out, 0.0f, 1.0f);
      return true;
    } catch (const c10::Error&) {
      return false;
    }
  }();
  return usable;
}

}  // namespace fused_rnn
