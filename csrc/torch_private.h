// The private torch C++ functions fused_rnn calls: declared here once each, with the torch
// versions they were checked against. A torch upgrade checks this file first (pyproject.toml's
// torch range agrees with it). The private Python APIs are listed in fused_rnn/_torch_private.py.
#pragma once
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>

#include <optional>
#include <string_view>

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

// oneDNN's packed linear, as torch registers it for inductor's frozen linears (not a public
// API; schemas checked against torch 2.13, not yet 2.11): mkldnn::_reorder_linear_weight packs
// W [n, k] into oneDNN's layout (an opaque MKLDNN tensor), mkldnn::_linear_pointwise computes
// a @ W^T with it into a new tensor. A torch without them, or with other schemas, throws
// c10::Error here, which cpu::OneDnnWeight::usable's probe turns into "not usable".
inline at::Tensor onednn_reorder_linear_weight(const at::Tensor& w) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("mkldnn::_reorder_linear_weight", "")
                             .typed<at::Tensor(const at::Tensor&, std::optional<int64_t>)>();
  return op.call(w, std::nullopt);
}
inline at::Tensor onednn_linear(const at::Tensor& a, const at::Tensor& packed) {
  using Signature = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, std::string_view,
                               c10::List<std::optional<at::Scalar>>, std::optional<std::string_view>);
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "").typed<Signature>();
  return op.call(a, packed, std::nullopt, "none", c10::List<std::optional<at::Scalar>>(), std::nullopt);
}

}  // namespace fused_rnn
