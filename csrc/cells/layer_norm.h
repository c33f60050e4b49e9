// Layer normalization inside a step (Ba et al. 2016, as haste's LayerNormLSTM):
//   LN(v; γ) = γ * (v - mean(v)) / sqrt(var(v) + 1e-5), over a whole row, biased variance.
// A layer-normalized LSTM or GRU normalizes each row of both GEMM results, over all G*H gate
// columns: the input path's once for all steps before the loop (the driver, normalize_row
// over every row), the hidden path's here, in the step's own pass, before the cell math. The
// LSTM also normalizes c' (over H) on its way to h' (LstmCell::normalize_c_row).
//
// A row is visited by a Row policy, so the same code runs on the CPU (one thread, SIMD
// vectors) and on CUDA (one warp per row):
//   Row::Scalar                 the type sums are kept in (float, or double for double)
//   row.for_each(width, f)      f(j, io) for each group of units starting at j that this worker owns
//   row.masked(io, v)           v with the lanes past the row's end zeroed (a CPU row's tail)
//   row.sum(v)                  the total over the row of every worker's partial sums v
//   row.leader()                whether this worker writes the row's scalars
//   row.sync()                  makes this worker's stores visible to the row's other workers
#pragma once
#include "common.h"

namespace fused_rnn {

template <class S>
FUSED_RNN_HD S layer_norm_eps() {
  return S(1e-5);
}

// Mean and 1/σ of a row of `width` values.
template <class S>
struct RowStats {
  S mean, rstd;
};

template <class V, class T, class Row>
FUSED_RNN_HD RowStats<typename Row::Scalar> row_stats(const Row& row, const T* v, int64_t width) {
  using S = typename Row::Scalar;
  V sum(0);
  row.for_each(width, [&](int64_t j, const auto& io) { sum = sum + row.masked(io, io.load(v + j)); });
  const S mean = row.sum(sum) / S(width);
  V squares(0);  // two passes: the row is in cache, and var = E[(v - mean)^2] does not cancel
  row.for_each(width, [&](int64_t j, const auto& io) {
    const V d = io.load(v + j) - V(mean);
    squares = squares + row.masked(io, d * d);
  });
  return {mean, S(1) / Math<S>::sqrt(row.sum(squares) / S(width) + layer_norm_eps<S>())};
}

// v <- γ * v̂ in place, v̂ = (v - mean) / σ; keeps v̂ and 1/σ where v_hat / rstd are set.
template <class V, class T, class Row>
FUSED_RNN_HD void normalize_row(const Row& row, T* v, int64_t width, const T* gamma, T* v_hat, T* rstd) {
  const auto st = row_stats<V>(row, v, width);
  row.for_each(width, [&](int64_t j, const auto& io) {
    const V hat = (io.load(v + j) - V(st.mean)) * V(st.rstd);
    if (v_hat) io.store(v_hat + j, hat);
    io.store(v + j, hat * io.load(gamma + j));
  });
  if (rstd && row.leader()) *rstd = static_cast<T>(st.rstd);
}

// The gradient through v -> γ * v̂: from d = dL/d(γ v̂) to dL/dv = (g - mean(g) - v̂ mean(g v̂)) / σ
// with g = γ * d. out may be d itself.
template <class V, class T, class Row>
FUSED_RNN_HD void normalize_row_backward(const Row& row, const T* d, int64_t width, const T* gamma, const T* v_hat,
                                         const T* rstd, T* out) {
  using S = typename Row::Scalar;
  V sum_g(0), sum_gv(0);
  row.for_each(width, [&](int64_t j, const auto& io) {
    const V g = io.load(d + j) * io.load(gamma + j);
    sum_g = sum_g + row.masked(io, g);
    sum_gv = sum_gv + row.masked(io, g * io.load(v_hat + j));
  });
  const S mean_g = row.sum(sum_g) / S(width), mean_gv = row.sum(sum_gv) / S(width);
  const S r = static_cast<S>(*rstd);
  row.sync();  // every worker has read d before any writes out (they may alias)
  row.for_each(width, [&](int64_t j, const auto& io) {
    const V g = io.load(d + j) * io.load(gamma + j);
    io.store(out + j, (g - V(mean_g) - io.load(v_hat + j) * V(mean_gv)) * V(r));
  });
}

// step_row: one row of a layer-normalized step, as every device's loop runs it (the row
// counterpart of step_element). Forward: the hidden path's LN, the cell math of each
// unit, then (LSTM) h' from the normalized c'.
template <class Cell, class V, class T, class Row>
FUSED_RNN_HD void step_row(const ForwardStep<T>& a, int64_t b, const Row& row) {
  const auto& n = a.norm;
  const int64_t gh = Cell::kGates * a.hidden;
  normalize_row<V>(row, a.h_gates + b * a.h_stride, gh, n.gamma_hh, n.h_hat ? n.h_hat + b * a.ws_stride : nullptr,
                   n.h_rstd ? n.h_rstd + b * a.ws_stride : nullptr);
  row.sync();
  row.for_each(a.hidden, [&](int64_t j, const auto& io) { step_element<Cell, V>(a, b, j, io); });
  if constexpr (Cell::kHasCellState) {
    if (n.gamma_c) Cell::template normalize_c_row<V>(a, b, row);
  }
}

// Backward: (LSTM) dL/dc' through the LN of c', the cell math of each unit, then
// the hidden path's gate gradients through its LN.
template <class Cell, class V, class T, class Row>
FUSED_RNN_HD void step_row(const BackwardStep<T>& a, int64_t b, const Row& row) {
  const auto& n = a.norm;
  if constexpr (Cell::kHasCellState) {
    if (n.gamma_c) Cell::template normalize_c_row_backward<V>(a, b, row);
  }
  row.for_each(a.hidden, [&](int64_t j, const auto& io) { step_element<Cell, V>(a, b, j, io); });
  row.sync();
  const int64_t gh = Cell::kGates * a.hidden;
  normalize_row_backward<V>(row, a.d_gates_h + b * a.d_gates_stride, gh, n.gamma_hh, n.h_hat + b * a.ws_stride,
                            n.h_rstd + b * a.ws_stride, n.d_h_raw + b * a.d_gates_stride);
}

}  // namespace fused_rnn
