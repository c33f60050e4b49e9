// The CPU's single-step forward (CpuDevice::single_step): the step's two products, then its
// pointwise pass. A step of a few rows (a decoder at B = 1) runs in one parallel region: each
// thread takes a range of hidden units, computes the GEMM columns of its units in every gate
// for both products as dot products of rows (row_dot_gemm.h), then the pass over those units,
// which read only what the same thread wrote. One fork and join instead of three: measured on
// the Xeon (2 threads), an LSTM step at B = 1, H = 256 (float32) went from 28.2 to 26.1 us, an
// RNN step from 16.6 to 16.0 us; the rest is streaming the weights from L2.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>

#include "../cells/common.h"
#include "gemm.h"
#include "pointwise.h"
#include "row_dot_gemm.h"
#include "vec_math.h"

namespace fused_rnn::cpu {

template <class T>
bool small_step_fits(const at::Tensor& x_gates, const at::Tensor& x, const at::Tensor& w_ih_t, const at::Tensor& h,
                     const at::Tensor& w_hh_t) {
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
    return x.size(1) > 0 && RowDotGemm<T>::fits(x_gates, x, w_ih_t) && RowDotGemm<T>::fits(x_gates, h, w_hh_t);
  } else {
    return false;
  }
}

// x_gates = x W_ih^T; h_gates (+)= h W_hh^T (accumulate: h_gates is x_gates); then the pass.
template <class Cell, class T>
void single_step(const ForwardStep<T>& a, const at::Tensor& x, const at::Tensor& w_ih_t, const at::Tensor& h,
                 const at::Tensor& w_hh_t, at::Tensor& x_gates, at::Tensor& h_gates, bool accumulate) {
  if (!small_step_fits<T>(x_gates, x, w_ih_t, h, w_hh_t)) {
    gemm(x_gates, x, w_ih_t, /*accumulate=*/false);
    gemm(h_gates, h, w_hh_t, accumulate);
    run_step<Cell, T>(a, Units::whole(a.hidden));
    return;
  }
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
    using V = typename VecIO<T>::V;
    const int64_t H = a.hidden, lanes = V::size(), vectors = (H + lanes - 1) / lanes;
    // About 16k multiply-adds a task, as RowDotGemm splits.
    const int64_t per_vector = Cell::kGates * lanes * (x.size(1) + h.size(1)) * std::max<int64_t>(1, x.size(0));
    at::parallel_for(0, vectors, std::max<int64_t>(1, 16384 / per_vector), [&](int64_t v0, int64_t v1) {
      const int64_t u0 = v0 * lanes, u1 = std::min(H, v1 * lanes);
      for (int64_t k = 0; k < Cell::kGates; ++k) {
        RowDotGemm<T>::multiply_columns(x_gates, x, w_ih_t, false, k * H + u0, k * H + u1);
        RowDotGemm<T>::multiply_columns(h_gates, h, w_hh_t, accumulate, k * H + u0, k * H + u1);
      }
      for (int64_t b = 0; b < a.rows; ++b) {
        for (int64_t j = u0; j < u1; j += lanes) step_element<Cell, V>(a, b, j, VecIO<T>{std::min(lanes, u1 - j)});
      }
    });
  }
}

}  // namespace fused_rnn::cpu
