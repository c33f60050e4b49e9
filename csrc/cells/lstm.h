// LSTM cell, torch.nn gate order i|f|g|o:
//   i = s(p_i)  f = s(p_f)  g = tanh(p_g)  o = s(p_o)   (p = W_ih x + b_ih + W_hh h + b_hh)
//   c' = f * c + i * g      h' = o * tanh(c')
// The only place these equations are written. Projection (h' W_hr^T) is a GEMM in the driver.
#pragma once
#include "common.h"

namespace fused_rnn {

struct LstmCell {
  static constexpr int kGates = 4;
  // Workspace columns per row, in units of H: i f g o (activated), c_prev, c'.
  static constexpr int kWorkspace = 6;
  static constexpr bool kHasCellState = true;
  // Backward's gate grads are the same on the input and the hidden path.
  static constexpr bool kSplitGateGrads = false;
  // h_state is only written (h_prev reaches the step through the GEMM).
  static constexpr bool kReadsHiddenState = false;
  static constexpr const char* kName = "lstm";

  template <class V, class T, class IO>
  static FUSED_RNN_HD void forward(const ForwardStep<T>& a, int64_t b, int64_t j, const IO& io) {
    using M = Math<V>;
    const int64_t H = a.hidden;
    V p[4];
    for (int k = 0; k < 4; ++k) p[k] = summed_preactivation<V>(a, b, k * H + j, io);
    const V i = M::sigmoid(p[0]), f = M::sigmoid(p[1]), g = M::tanh(p[2]), o = M::sigmoid(p[3]);
    T* c_ptr = a.c_state + b * H + j;
    const V c_prev = io.load(c_ptr);
    const V c = f * c_prev + i * g;
    const V h = o * M::tanh(c);
    io.store(c_ptr, c);
    io.store(a.h_out + b * a.h_out_stride + j, h);
    if (a.h_state) io.store(a.h_state + b * a.h_state_stride + j, h);
    if (a.ws) {
      T* w = a.ws + b * a.ws_stride + j;
      io.store(w, i);
      io.store(w + H, f);
      io.store(w + 2 * H, g);
      io.store(w + 3 * H, o);
      io.store(w + 4 * H, c_prev);
      io.store(w + 5 * H, c);
    }
  }

  template <class V, class T, class IO>
  static FUSED_RNN_HD void backward(const BackwardStep<T>& a, int64_t b, int64_t j, const IO& io) {
    using M = Math<V>;
    const int64_t H = a.hidden;
    const V one(1);
    V dh = io.load(a.grad_h + b * a.grad_h_stride + j);
    if (a.grad_h_state) dh = dh + io.load(a.grad_h_state + b * a.grad_h_state_stride + j);
    const T* w = a.ws + b * a.ws_stride + j;
    const V i = io.load(w), f = io.load(w + H), g = io.load(w + 2 * H), o = io.load(w + 3 * H);
    const V c_prev = io.load(w + 4 * H), c = io.load(w + 5 * H);
    T* dc_ptr = a.grad_c_state + b * H + j;
    const V tc = M::tanh(c);
    const V dc = io.load(dc_ptr) + dh * o * (one - tc * tc);
    T* d = a.d_gates_x + b * a.d_gates_stride + j;
    io.store(d, dc * g * i * (one - i));
    io.store(d + H, dc * c_prev * f * (one - f));
    io.store(d + 2 * H, dc * i * (one - g * g));
    io.store(d + 3 * H, dh * tc * o * (one - o));
    io.store(dc_ptr, dc * f);
  }
};

}  // namespace fused_rnn
