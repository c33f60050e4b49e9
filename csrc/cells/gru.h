// GRU cell, torch.nn gate order r|z|n:
//   r = s(x_r + h_r)  z = s(x_z + h_z)      (x_* = W_i* x + b_i*, h_* = W_h* h + b_h*)
//   n = tanh(x_n + r * h_n)                  h' = (1 - z) * n + z * h
// The only place these equations are written. (Zoneout and recurrent dropout: common.h's
// store_hidden and hidden_grad.)
#pragma once
#include "common.h"

namespace fused_rnn {

struct GruCell {
  static constexpr int kGates = 3;
  // Workspace columns per row, in units of H: r z n (activated), h_n = W_hn h + b_hn.
  static constexpr int kWorkspace = 4;
  static constexpr bool kHasCellState = false;
  // d/dh_n = d/dn_pre * r differs from the input path's d/dx_n = d/dn_pre.
  static constexpr bool kSplitGateGrads = true;
  // The step reads h_prev from h_state (h' = ... + z * h) before writing h' there.
  static constexpr bool kReadsHiddenState = true;
  static constexpr const char* kName = "gru";

  template <class V, class T, class IO>
  static FUSED_RNN_HD void forward(const ForwardStep<T>& a, int64_t b, int64_t j, const IO& io) {
    using M = CellMath<V, T>;
    const int64_t H = a.hidden;
    const T* xg = a.x_gates + b * a.x_stride;
    const T* hg = a.h_gates + b * a.h_stride;
    const V hn = gemm_plus_bias<V>(io, hg, a.bias_hh, 2 * H + j);
    const V r = M::sigmoid(gemm_plus_bias<V>(io, xg, a.bias_ih, j) + gemm_plus_bias<V>(io, hg, a.bias_hh, j));
    const V z = M::sigmoid(gemm_plus_bias<V>(io, xg, a.bias_ih, H + j) + gemm_plus_bias<V>(io, hg, a.bias_hh, H + j));
    const V n = M::tanh(gemm_plus_bias<V>(io, xg, a.bias_ih, 2 * H + j) + r * hn);
    const V h = n + z * (io.load(a.h_state + b * a.h_state_stride + j) - n);
    store_hidden<V>(a, b, j, h, io);
    if (a.ws) {
      T* w = a.ws + b * a.ws_stride + j;
      io.store(w, r);
      io.store(w + H, z);
      io.store(w + 2 * H, n);
      io.store(w + 3 * H, hn);
    }
  }

  template <class V, class T, class IO>
  static FUSED_RNN_HD void backward(const BackwardStep<T>& a, int64_t b, int64_t j, const IO& io) {
    const int64_t H = a.hidden;
    const V one(1);
    const auto g = hidden_grad<V>(a, b, j, io);
    const V dh = g.fresh;
    const T* w = a.ws + b * a.ws_stride + j;
    const V r = io.load(w), z = io.load(w + H), n = io.load(w + 2 * H), hn = io.load(w + 3 * H);
    const V h_prev = io.load(a.h_prev + b * a.h_prev_stride + j);
    const V dn = dh * (one - z) * (one - n * n);
    const V dz = dh * (h_prev - n) * z * (one - z);
    const V dr = dn * hn * r * (one - r);
    T* dx = a.d_gates_x + b * a.d_gates_stride + j;
    T* dhg = a.d_gates_h + b * a.d_gates_stride + j;
    io.store(dx, dr);
    io.store(dx + H, dz);
    io.store(dx + 2 * H, dn);
    io.store(dhg, dr);
    io.store(dhg + H, dz);
    io.store(dhg + 2 * H, dn * r);
    // The direct paths h' = ... + z * h_prev (and zoneout's); the driver's GEMM adds
    // d_gates_h W_hh on top, or keeps it apart under recurrent dropout.
    io.store(a.grad_h_state + b * a.grad_h_state_stride + j, g.direct + dh * z);
  }
};

}  // namespace fused_rnn
