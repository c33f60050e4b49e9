// LSTM cell, torch.nn gate order i|f|g|o (p = W_ih x + b_ih + W_hh h + b_hh):
//   i = s(p_i)  f = s(p_f)  g = tanh(p_g)  o = s(p_o)
//   c' = f * c + i * g      h' = o * tanh(c')
// Peephole LSTM (Gers et al. 2002), with the weights w_ci|w_cf|w_co of ForwardStep::peephole:
//   i = s(p_i + w_ci * c)   f = s(p_f + w_cf * c)   o = s(p_o + w_co * c')
// Layer-normalized LSTM (layer_norm.h; p's two GEMM parts normalized before the cell):
//   h' = o * tanh(LN(c'; γ_c) + β_c)
// Zoneout (common.h's StepMasks) mixes c_prev into the c' above and h_prev into the h': the
// state carries c = m_c * c_prev + (1 - m_c) * c', the gates and h' see c' itself.
// The only place these equations are written. Projection (h' W_hr^T) is a GEMM in the driver,
// the peephole weights' gradients are sums over rows in the driver (kPeepholeGrads).
#pragma once
#include "layer_norm.h"

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
  // dL/dw_ci, dL/dw_cf, dL/dw_co: the sum over rows of the gate's pre-activation gradient
  // (column block `gate` of d_gates) times the cell state it looks at (workspace column block
  // `state`: c_prev for i and f, c' for o).
  struct PeepholeGrad {
    int gate, state;
  };
  static constexpr PeepholeGrad kPeepholeGrads[3] = {{0, 4}, {1, 4}, {3, 5}};
  static constexpr int kCellStateColumn = 5;  // c' in the workspace, in units of H

  template <class V, class T, class IO>
  static FUSED_RNN_HD void forward(const ForwardStep<T>& a, int64_t b, int64_t j, const IO& io) {
    using M = CellMath<V, T>;
    const int64_t H = a.hidden;
    V p[4];
    for (int k = 0; k < 4; ++k) p[k] = summed_preactivation<V>(a, b, k * H + j, io);
    T* c_ptr = a.c_state + b * H + j;
    const V c_prev = io.load(c_ptr);
    if (a.peephole) {
      p[0] = p[0] + io.load(a.peephole + j) * c_prev;
      p[1] = p[1] + io.load(a.peephole + H + j) * c_prev;
    }
    const V i = M::sigmoid(p[0]), f = M::sigmoid(p[1]), g = M::tanh(p[2]);
    const V c = f * c_prev + i * g;  // c~ below zoneout: what o, h~ and backward see
    if (a.peephole) p[3] = p[3] + io.load(a.peephole + 2 * H + j) * c;
    const V o = M::sigmoid(p[3]);
    const T* zc = a.masks.zoneout_c;
    io.store(c_ptr, zone_out<V>(io, zc ? zc + b * a.masks.zoneout_c_stride + j : nullptr, c_prev, c));
    if (a.norm.gamma_c) {  // h' needs the row's statistics of c': normalize_c_row; o waits in h_out
      if (a.norm.c_candidate) io.store(a.norm.c_candidate + b * H + j, c);
      io.store(a.h_out + b * a.h_out_stride + j, o);
    } else {
      store_hidden<V>(a, b, j, o * M::tanh(c), io);
    }
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
    using M = CellMath<V, T>;
    const int64_t H = a.hidden;
    const V one(1);
    const auto dh_parts = hidden_grad<V>(a, b, j, io);
    const V dh = dh_parts.fresh;
    if (writes_direct_grad(a)) io.store(a.grad_h_state + b * a.grad_h_state_stride + j, dh_parts.direct);
    const T* w = a.ws + b * a.ws_stride + j;
    const V i = io.load(w), f = io.load(w + H), g = io.load(w + 2 * H), o = io.load(w + 3 * H);
    const V c_prev = io.load(w + 4 * H), c = io.load(w + 5 * H);
    T* dc_ptr = a.grad_c_state + b * H + j;
    V tc, dc = io.load(dc_ptr), dc_direct(0);  // dL/dc~, and what zoneout passes to c_prev
    if (a.norm.gamma_c) {                      // normalize_c_row_backward has made dc dL/dc~ (and set dc_direct aside)
      const T* st = a.norm.c_stats + b * a.ws_stride;
      const V c_hat = (c - V(static_cast<double>(st[0]))) * V(static_cast<double>(st[1]));
      tc = M::tanh(c_hat * io.load(a.norm.gamma_c + j) + io.load(a.norm.beta_c + j));
      if (a.masks.zoneout_c) dc_direct = io.load(a.masks.grad_c_direct + b * H + j);
    } else {
      if (a.masks.zoneout_c) {
        dc_direct = io.load(a.masks.zoneout_c + b * a.masks.zoneout_c_stride + j) * dc;
        dc = dc - dc_direct;
      }
      tc = M::tanh(c);
      dc = dc + dh * o * (one - tc * tc);
    }
    const V d_o = dh * tc * o * (one - o);
    if (a.peephole) dc = dc + d_o * io.load(a.peephole + 2 * H + j);  // o looks at c'
    const V d_i = dc * g * i * (one - i), d_f = dc * c_prev * f * (one - f);
    T* d = a.d_gates_x + b * a.d_gates_stride + j;
    io.store(d, d_i);
    io.store(d + H, d_f);
    io.store(d + 2 * H, dc * i * (one - g * g));
    io.store(d + 3 * H, d_o);
    V dc_prev = dc_direct + dc * f;
    if (a.peephole) dc_prev = dc_prev + d_i * io.load(a.peephole + j) + d_f * io.load(a.peephole + H + j);
    io.store(dc_ptr, dc_prev);
  }

  // The end of a layer-normalized forward row (layer_norm.h's step_row): every unit's c' is
  // in c_state and its o in h_out; h' = o * tanh(γ_c * ĉ' + β_c).
  template <class V, class T, class Row>
  static FUSED_RNN_HD void normalize_c_row(const ForwardStep<T>& a, int64_t b, const Row& row) {
    using M = CellMath<V, T>;
    const int64_t H = a.hidden;
    const T* c = (a.norm.c_candidate ? a.norm.c_candidate : a.c_state) + b * H;
    const T* o = a.h_out + b * a.h_out_stride;
    const auto st = row_stats<V>(row, c, H);
    row.for_each(H, [&](int64_t j, const auto& io) {
      const V c_hat = (io.load(c + j) - V(st.mean)) * V(st.rstd);
      const V h = io.load(o + j) * M::tanh(c_hat * io.load(a.norm.gamma_c + j) + io.load(a.norm.beta_c + j));
      store_hidden<V>(a, b, j, h, io);
    });
    if (a.norm.c_stats && row.leader()) {
      a.norm.c_stats[b * a.ws_stride] = static_cast<T>(st.mean);
      a.norm.c_stats[b * a.ws_stride + 1] = static_cast<T>(st.rstd);
    }
  }

  // The start of its backward row: dL/dy for y = γ_c * ĉ' + β_c (kept in d_c_norm), and the
  // path through ĉ' to c' added to grad_c_state: (g - mean(g) - ĉ' mean(g ĉ')) / σ, g = γ_c dL/dy.
  template <class V, class T, class Row>
  static FUSED_RNN_HD void normalize_c_row_backward(const BackwardStep<T>& a, int64_t b, const Row& row) {
    using M = CellMath<V, T>;
    using S = typename Row::Scalar;
    const int64_t H = a.hidden;
    const T* w = a.ws + b * a.ws_stride;
    const T* st = a.norm.c_stats + b * a.ws_stride;
    const S mean = static_cast<S>(st[0]), rstd = static_cast<S>(st[1]);
    T* dy_row = a.norm.d_c_norm + b * H;
    V sum_g(0), sum_gc(0);
    row.for_each(H, [&](int64_t j, const auto& io) {
      const V dh = hidden_grad<V>(a, b, j, io).fresh;
      const V c_hat = (io.load(w + 5 * H + j) - V(mean)) * V(rstd), gamma = io.load(a.norm.gamma_c + j);
      const V th = M::tanh(c_hat * gamma + io.load(a.norm.beta_c + j));
      const V dy = dh * io.load(w + 3 * H + j) * (V(S(1)) - th * th);
      io.store(dy_row + j, dy);
      sum_g = sum_g + row.masked(io, dy * gamma);
      sum_gc = sum_gc + row.masked(io, dy * gamma * c_hat);
    });
    const S mean_g = row.sum(sum_g) / S(H), mean_gc = row.sum(sum_gc) / S(H);
    T* dc = a.grad_c_state + b * H;
    const T* zc = a.masks.zoneout_c ? a.masks.zoneout_c + b * a.masks.zoneout_c_stride : nullptr;
    row.for_each(H, [&](int64_t j, const auto& io) {
      const V c_hat = (io.load(w + 5 * H + j) - V(mean)) * V(rstd);
      const V g = io.load(dy_row + j) * io.load(a.norm.gamma_c + j);
      V dc_next = io.load(dc + j);  // dL/dc' of the next step: zoneout sends part of it to c_prev
      if (zc) {
        const V direct = io.load(zc + j) * dc_next;
        io.store(a.masks.grad_c_direct + b * H + j, direct);
        dc_next = dc_next - direct;
      }
      io.store(dc + j, dc_next + (g - V(mean_g) - c_hat * V(mean_gc)) * V(rstd));
    });
  }
};

}  // namespace fused_rnn
