// The CUDA side of a time step: host functions that launch one fused pointwise pass over a
// step's [rows, hidden] elements on a stream. Raw pointers only (ForwardStep / BackwardStep
// from cells/common.h); no torch here, so the .cu files compile with plain nvcc.
//
// Storage types: float, double, __half, __nv_bfloat16. The math runs in double for double
// and in float for the other three (fp16/bf16 load, compute in fp32, round once on store).
//
// Each function returns the launch status (cudaGetLastError after the launch), or
// cudaErrorInvalidValue for sizes the kernel cannot index; cudaSuccess for an empty step,
// which launches nothing. The caller turns an error into an exception (ops_cuda.cpp uses
// C10_CUDA_CHECK). Defined and explicitly instantiated in pointwise.cu for
//   Cell in {LstmCell, GruCell, RnnTanhCell, RnnReluCell} x T in {float, double, __half, __nv_bfloat16}.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include "../cells/common.h"

namespace fused_rnn {

template <class Cell, class T>
cudaError_t launch_forward_step(const ForwardStep<T>& step, cudaStream_t stream);

template <class Cell, class T>
cudaError_t launch_backward_step(const BackwardStep<T>& step, cudaStream_t stream);

// The layer normalization of every row of v [rows, width] (row stride `stride`) in place to
// gamma * v̂, keeping v̂ and 1/σ (row stride hat_stride) where v_hat / rstd are set; and the
// gradient of it in place in d. One warp per row (cells/layer_norm.h). T as above.
template <class T>
cudaError_t launch_normalize_rows(T* v, int64_t rows, int64_t width, int64_t stride, const T* gamma, T* v_hat, T* rstd,
                                  int64_t hat_stride, cudaStream_t stream);
template <class T>
cudaError_t launch_normalize_rows_backward(T* d, int64_t rows, int64_t width, int64_t stride, const T* gamma,
                                           const T* v_hat, const T* rstd, int64_t hat_stride, cudaStream_t stream);

}  // namespace fused_rnn
