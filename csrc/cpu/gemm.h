// The CPU's one-off GEMMs (CpuDevice::gemm): out = a @ b (+ out when accumulate), routed to
// the library that is fastest for the shape on this project's CPUs.
#pragma once
#include <ATen/ATen.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include "../torch_private.h"
#include "row_dot_gemm.h"

namespace fused_rnn::cpu {

// float32 products of kMinOneDnnRows+ rows go to oneDNN's matmul on AMD CPUs where it runs
// (mkldnn_matmul_usable: not on AVX2-only CPUs): on AMD EPYC (AVX-512) it runs 2.2x faster
// than MKL's sgemm, which picks an AVX2 path on AMD. On Intel MKL is the faster: measured on a
// Xeon (AVX-512, AMX, 2 threads), an RNNCell step at B = 64, H = 512 took 360/615 us
// forward/backward through oneDNN and 300/505 us through MKL, a T = 100 LSTM forward+backward
// 302 and 282 ms. Products of a few rows by a transposed weight (x W^T, h W^T) are dot
// products of contiguous rows (row_dot_gemm.h), where MKL's sgemv is slow on AMD and oneDNN
// is slow too; MKL keeps the rest.
constexpr int64_t kMinOneDnnRows = 5;

// Whether the CPU is Intel's (cpuid's vendor string); false off x86.
inline bool intel_cpu() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool intel = [] {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (!__get_cpuid(0, &eax, &ebx, &ecx, &edx)) return false;
    return ebx == 0x756e6547 && edx == 0x49656e69 && ecx == 0x6c65746e;  // "Genu" "ineI" "ntel"
  }();
  return intel;
#else
  return false;
#endif
}

inline bool onednn_gemm(const at::Tensor& a) {
  return a.scalar_type() == at::kFloat && a.size(0) >= kMinOneDnnRows && !intel_cpu() && mkldnn_matmul_usable();
}

inline void gemm(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate) {
  if (a.size(1) == 0) {  // an empty sum (B = 0: dW = dG^T x over no rows); oneDNN writes nothing
    if (!accumulate) out.zero_();
    return;
  }
  if (onednn_gemm(a)) {
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
