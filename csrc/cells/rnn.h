// Elman RNN cell: h' = act(W_ih x + b_ih + W_hh h + b_hh), act = tanh or relu.
// (Zoneout and recurrent dropout: common.h's store_hidden and hidden_grad.)
// The only place these equations are written.
#pragma once
#include "common.h"

namespace fused_rnn {

enum class Activation { kTanh, kRelu };

template <Activation kAct>
struct RnnCell {
  static constexpr int kGates = 1;
  // Workspace columns per row, in units of H: h' (its derivative needs only the output).
  static constexpr int kWorkspace = 1;
  static constexpr bool kHasCellState = false;
  static constexpr bool kSplitGateGrads = false;
  static constexpr bool kReadsHiddenState = false;
  static constexpr const char* kName = kAct == Activation::kTanh ? "rnn_tanh" : "rnn_relu";

  template <class V, class T, class IO>
  static FUSED_RNN_HD void forward(const ForwardStep<T>& a, int64_t b, int64_t j, const IO& io) {
    using M = CellMath<V, T>;
    const V p = summed_preactivation<V>(a, b, j, io);
    const V h = kAct == Activation::kTanh ? M::tanh(p) : M::relu(p);
    if (a.ws) io.store(a.ws + b * a.ws_stride + j, h);
    store_hidden<V>(a, b, j, h, io);
  }

  template <class V, class T, class IO>
  static FUSED_RNN_HD void backward(const BackwardStep<T>& a, int64_t b, int64_t j, const IO& io) {
    using M = CellMath<V, T>;
    const auto dh = hidden_grad<V>(a, b, j, io);
    const V h = io.load(a.ws + b * a.ws_stride + j);
    const V dp = kAct == Activation::kTanh ? dh.fresh * (V(1) - h * h) : M::relu_grad(h, dh.fresh);
    io.store(a.d_gates_x + b * a.d_gates_stride + j, dp);
    if (writes_direct_grad(a)) io.store(a.grad_h_state + b * a.grad_h_state_stride + j, dh.direct);
  }
};

using RnnTanhCell = RnnCell<Activation::kTanh>;
using RnnReluCell = RnnCell<Activation::kRelu>;

}  // namespace fused_rnn
