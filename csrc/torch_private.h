// The private torch C++ functions fused_rnn calls: declared here once each, with the torch
// versions they were checked against. A torch upgrade checks this file first (pyproject.toml's
// torch range agrees with it). The private Python APIs are listed in fused_rnn/_torch_private.py.
#pragma once
#include <ATen/ATen.h>

namespace at::native {
// ATen's oneDNN matmul: result = beta * result + alpha * mat1 @ mat2. Exported by
// libtorch_cpu and declared in ATen/native/mkldnn/Matmul.h, which the wheels do not ship.
// Checked against torch 2.11 and 2.13 (same signature); call only when at::hasMKLDNN().
TORCH_API void mkldnn_matmul(const Tensor& mat1, const Tensor& mat2, const Tensor& result, float beta, float alpha);
}  // namespace at::native
