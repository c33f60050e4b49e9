// The CPU's one-off GEMMs (CpuDevice::gemm): out = a @ b (+ out when accumulate), routed to
// the library that is fastest for the shape on this project's CPUs.
#pragma once
#include <ATen/ATen.h>

#include "../torch_private.h"
#include "row_dot_gemm.h"

namespace fused_rnn::cpu {

// float32 products of kMinOneDnnRows+ rows go to oneDNN's matmul where it runs on this CPU
// (mkldnn_matmul_usable: not on AVX2-only CPUs): on AMD EPYC (AVX-512) it
// runs 2.2x faster than MKL's sgemm, which picks an AVX2 path on AMD. Products of a few rows
// by a transposed weight (x W^T, h W^T) are dot products of contiguous rows (row_dot_gemm.h),
// where MKL's sgemv is slow on AMD and oneDNN is slow too; MKL keeps the rest.
constexpr int64_t kMinOneDnnRows = 5;

inline void gemm(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate) {
  if (a.size(1) == 0) {  // an empty sum (B = 0: dW = dG^T x over no rows); oneDNN writes nothing
    if (!accumulate) out.zero_();
    return;
  }
  if (a.scalar_type() == at::kFloat && a.size(0) >= kMinOneDnnRows && a.size(1) >= kMinOneDnnRows &&
      mkldnn_matmul_usable()) {
    at::native::mkldnn_matmul(a, b, out, accumulate ? 1.0f : 0.0f, 1.0f);
  } else if (a.scalar_type() == at::kFloat && RowDotGemm<float>::fits(out, a, b)) {
    RowDotGemm<float>::multiply(out, a, b, accumulate);
  } else if (a.scalar_type() == at::kDouble && RowDotGemm<double>::fits(out, a, b)) {
    RowDotGemm<double>::multiply(out, a, b, accumulate);
  } else if (accumulate) {
    out.addmm_(a, b);
  } else {
    at::mm_out(out, a, b);
  }
}

}  // namespace fused_rnn::cpu
