// Shared by g++ and nvcc: the qualifier for cell math, the scalar math functions, the
// raw-pointer argument blocks of one time step that the CPU passes and the CUDA kernels read,
// and step_element, the body of a pass that every device's loop runs per element.
#pragma once

#include <cmath>
#include <cstdint>

// Inlined on both devices: on the CPU a call per SIMD vector (store_hidden, at -fPIC through
// the PLT) spilled every live vector register around it, a quarter of a bf16 LSTM pass's samples.
#if defined(__CUDACC__)
#define FUSED_RNN_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
#define FUSED_RNN_HD inline __attribute__((always_inline))
#else
#define FUSED_RNN_HD inline
#endif

namespace fused_rnn {

// Math<V>: the nonlinearities for a value type V. Scalars are defined here; the CPU adds
// specializations for at::vec::Vectorized (csrc/cpu/vec_math.h), so one cell definition
// runs on 1 lane on the GPU and on 8/16 lanes on the CPU.
template <class V>
struct Math;

template <>
struct Math<float> {
  static FUSED_RNN_HD float sigmoid(float x) { return 1.0f / (1.0f + ::expf(-x)); }
  static FUSED_RNN_HD float tanh(float x) { return ::tanhf(x); }
  static FUSED_RNN_HD float sqrt(float x) { return ::sqrtf(x); }
  // Written as "<= 0 gives 0" so that NaN passes through, as torch.relu and its backward
  // (threshold_backward: grad where not result <= 0) do: once NaN enters, it stays visible.
  static FUSED_RNN_HD float relu(float x) { return x <= 0.0f ? 0.0f : x; }
  // d relu(p) = dy where the output y = relu(p) is positive (p == 0 gives 0, as torch does).
  static FUSED_RNN_HD float relu_grad(float y, float dy) { return y <= 0.0f ? 0.0f : dy; }
};

template <>
struct Math<double> {
  static FUSED_RNN_HD double sigmoid(double x) { return 1.0 / (1.0 + ::exp(-x)); }
  static FUSED_RNN_HD double tanh(double x) { return ::tanh(x); }
  static FUSED_RNN_HD double sqrt(double x) { return ::sqrt(x); }
  static FUSED_RNN_HD double relu(double x) { return x <= 0.0 ? 0.0 : x; }
  static FUSED_RNN_HD double relu_grad(double y, double dy) { return y <= 0.0 ? 0.0 : dy; }
};

// The nonlinearities a cell applies to values V stored as T: Math<V>, unless the device picks
// others for a storage type (the CPU: a faster tanh for bfloat16 and float16 storage, whose
// rounding is 10^4 times its error; cpu/vec_math.h).
template <class V, class T>
struct CellMathFor {
  using type = Math<V>;
};
template <class V, class T>
using CellMath = typename CellMathFor<V, T>::type;

// Layer normalization inside a step (layer-normalized cells, cells/layer_norm.h): all null
// for the others. Per-row scalars live in the workspace row (stride ForwardStep::ws_stride).
template <class T>
struct ForwardNorm {
  const T* gamma_hh = nullptr;  // [G*H] γ_hh; set: a layer-normalized step, which first turns
                                //   each row of h_gates into γ_hh * ĥ (ĥ: the row normalized)
  T* h_hat = nullptr;           // [rows, G*H] where to keep ĥ for backward, or null
  T* h_rstd = nullptr;          // [rows] where to keep 1/σ of each h_gates row, or null
  const T* gamma_c = nullptr;   // LSTM: [H] γ_c and β_c: h' = o * tanh(γ_c * ĉ' + β_c)
  const T* beta_c = nullptr;
  T* c_stats = nullptr;      // LSTM: [rows, 2] where to keep mean and 1/σ of each c' row, or null
  T* c_candidate = nullptr;  // LSTM with zoneout on c: [rows, H] where the unit pass keeps c'
                             //   before zoneout for normalize_c_row (null: c_state holds it)
};

// Its backward: d_gates_h (dL/d(γ_hh ĥ + b_hh)) becomes d_h_raw (dL/d(h_prev W_hh^T)).
template <class T>
struct BackwardNorm {
  const T* gamma_hh = nullptr;  // [G*H]; set: a layer-normalized step
  const T* h_hat = nullptr;     // [rows, G*H] (stride ws_stride) ĥ, and [rows] its 1/σ
  const T* h_rstd = nullptr;
  T* d_h_raw = nullptr;  // [rows, G*H] (stride d_gates_stride)
  const T* gamma_c = nullptr;
  const T* beta_c = nullptr;
  const T* c_stats = nullptr;  // LSTM: [rows, 2] (stride ws_stride) mean and 1/σ of c'
  T* d_c_norm = nullptr;       // LSTM: [rows, H] dL/d(γ_c ĉ' + β_c), kept for γ_c's and β_c's gradients
};

// The regularizers inside the recurrence (fused_rnn/regularizers.py), all null when off.
//   zoneout:           h = m * h_prev + (1 - m) * h~ per row and unit, m the weight of h_prev
//                      (Bernoulli(p) in training, p in eval); the LSTM's c likewise, own m.
//   recurrent dropout: the next step's GEMM reads h * d (d: 0 or 1 / (1 - p), one per
//                      sequence and unit); the GRU's direct path z * h keeps h itself.
// Per-row buffers here are [rows, state] with the row stride of h_state (grad_h_state in
// backward), but zoneout masks, whose row stride is their own (0: one row for all, eval).
// A projected LSTM's h-side regularizers are the driver's (its h is the projection's output).
template <class T>
struct StepMasks {
  const T* zoneout_h = nullptr;  // [rows, state] this step's m for h
  int64_t zoneout_h_stride = 0;
  const T* zoneout_c = nullptr;  // LSTM: [rows, H] this step's m for c
  int64_t zoneout_c_stride = 0;
  const T* dropout_h = nullptr;  // [rows, state] d
  T* h_dropped = nullptr;        // forward: h' * d for the next step's GEMM (in: h_prev * d, this
                                 //   step's GEMM input, which h_dropped_save keeps for backward)
  T* h_dropped_save = nullptr;   // [rows, state] (stride ws_stride), or null
  T* grad_h_dropped = nullptr;   // backward: dL/d(h' * d), from the next step's GEMM
  T* grad_c_direct = nullptr;    // layer-normalized LSTM with zoneout on c: [rows, H] m * dL/dc'
                                 //   of the next step, set aside by normalize_c_row_backward
};

// One forward step over `rows` rows of `hidden` units. Pointers are already offset to the
// step's first row; strides are in elements. Nullable pointers are marked.
template <class T>
struct ForwardStep {
  int64_t rows = 0, hidden = 0;
  const T* x_gates = nullptr;  // [rows, G*H] x W_ih^T (all steps projected up front)
  int64_t x_stride = 0;
  const T* bias_ih = nullptr;  // [G*H] or null
  T* h_gates = nullptr;        // [rows, G*H] h_prev W_hh^T (this step's GEMM); null where a
                               //   cell that sums both paths has it added into x_gates
  int64_t h_stride = 0;
  const T* bias_hh = nullptr;   // [G*H] or null
  const T* peephole = nullptr;  // peephole LSTM: [3*H] w_ci|w_cf|w_co, else null
  T* h_state = nullptr;         // [rows, H] recurrent state: GRU reads h_prev here; the step
  int64_t h_state_stride = 0;   //   writes h' here (null for projected LSTM: driver copies)
  T* c_state = nullptr;         // LSTM: [rows, H] c_prev in, c' out
  T* h_out = nullptr;           // [rows, H] h' (the output rows, or the workspace's h column)
  int64_t h_out_stride = 0;
  T* ws = nullptr;  // [rows, Cell::kWorkspace*H] what backward needs, or null
  int64_t ws_stride = 0;
  T* h_prev_save = nullptr;  // [rows, H] (stride ws_stride): where to keep h_prev for
                             //   backward, read from h_state before the step overwrites it
  ForwardNorm<T> norm;
  StepMasks<T> masks;
};

// One backward step: the mirror image of ForwardStep.
template <class T>
struct BackwardStep {
  int64_t rows = 0, hidden = 0;
  const T* grad_h = nullptr;  // [rows, H] dL/dh' from this step's output (or via W_hr)
  int64_t grad_h_stride = 0;
  T* grad_h_state = nullptr;        // [rows, H] dL/dh' from the next step, nullable; GRU
  int64_t grad_h_state_stride = 0;  // overwrites it with the direct path dL/dh_prev = dh*z
  T* grad_c_state = nullptr;        // LSTM: [rows, H] dL/dc' in, dL/dc_prev out
  const T* peephole = nullptr;      // peephole LSTM: [3*H] w_ci|w_cf|w_co, else null
  const T* ws = nullptr;            // [rows, ...] saved by forward
  int64_t ws_stride = 0;
  const T* h_prev = nullptr;  // GRU: [rows, H] h_prev
  int64_t h_prev_stride = 0;
  T* d_gates_x = nullptr;  // [rows, G*H] dL/d(pre-activation) along the input path
  T* d_gates_h = nullptr;  // GRU: [rows, G*H] along the hidden path (n differs by r)
  int64_t d_gates_stride = 0;
  BackwardNorm<T> norm;
  StepMasks<T> masks;
};

// Element `col` of a GEMM result row plus its bias (when there is one).
template <class V, class T, class IO>
FUSED_RNN_HD V gemm_plus_bias(const IO& io, const T* row, const T* bias, int64_t col) {
  V v = io.load(row + col);
  if (bias) v = v + io.load(bias + col);
  return v;
}

// Pre-activation column `col` of a cell that sums both paths (LSTM, RNN):
// (x W_ih^T + b_ih) + (h W_hh^T + b_hh). With a.h_gates null, x_gates already holds both GEMMs
// (the single-step ops accumulate them into one buffer) and only b_hh is added.
template <class V, class T, class IO>
FUSED_RNN_HD V summed_preactivation(const ForwardStep<T>& a, int64_t b, int64_t col, const IO& io) {
  const V x_part = gemm_plus_bias<V>(io, a.x_gates + b * a.x_stride, a.bias_ih, col);
  if (a.h_gates) return x_part + gemm_plus_bias<V>(io, a.h_gates + b * a.h_stride, a.bias_hh, col);
  return a.bias_hh ? x_part + io.load(a.bias_hh + col) : x_part;
}

// Zoneout of one value: m * prev + (1 - m) * fresh, m from `mask` (null: fresh itself);
// written so, not as fresh + m * (prev - fresh), so that m = 1 keeps prev exactly.
template <class V, class T, class IO>
FUSED_RNN_HD V zone_out(const IO& io, const T* mask, V prev, V fresh) {
  if (!mask) return fresh;
  const V m = io.load(mask);
  return m * prev + (V(1) - m) * fresh;
}

// Unit j's new hidden value h~ as the step's outputs hold it: zoned out (h_prev read from
// h_state before this overwrites it), and times the dropout mask for the next step's GEMM.
template <class V, class T, class IO>
FUSED_RNN_HD void store_hidden(const ForwardStep<T>& a, int64_t b, int64_t j, V h, const IO& io) {
  const auto& m = a.masks;
  T* state = a.h_state ? a.h_state + b * a.h_state_stride + j : nullptr;
  if (m.zoneout_h) h = zone_out<V>(io, m.zoneout_h + b * m.zoneout_h_stride + j, io.load(state), h);
  io.store(a.h_out + b * a.h_out_stride + j, h);
  if (state) io.store(state, h);
  if (m.h_dropped) {
    const int64_t k = b * a.h_state_stride + j;
    io.store(m.h_dropped + k, h * io.load(m.dropout_h + k));
  }
}

// dL/dh' of unit j, split by zoneout: `fresh` reaches the cell's h~, `direct` goes straight to
// h_prev. dL/dh' sums the output's gradient and the next step's: its direct paths (in
// grad_h_state) and its GEMM's (grad_h_dropped), through the dropout mask.
template <class V>
struct HiddenGrad {
  V fresh, direct;
};
template <class V, class T, class IO>
FUSED_RNN_HD HiddenGrad<V> hidden_grad(const BackwardStep<T>& a, int64_t b, int64_t j, const IO& io) {
  const auto& m = a.masks;
  V dh = io.load(a.grad_h + b * a.grad_h_stride + j);
  if (a.grad_h_state) dh = dh + io.load(a.grad_h_state + b * a.grad_h_state_stride + j);
  if (m.grad_h_dropped) {
    const int64_t k = b * a.grad_h_state_stride + j;
    dh = dh + io.load(m.grad_h_dropped + k) * io.load(m.dropout_h + k);
  }
  if (!m.zoneout_h) return {dh, V(0)};
  const V direct = io.load(m.zoneout_h + b * m.zoneout_h_stride + j) * dh;
  return {dh - direct, direct};
}

// Whether an LSTM or RNN backward step writes the gradient of h_prev's direct paths (zoneout's)
// to grad_h_state, which the driver's GEMM otherwise overwrites: under a regularizer. (The GRU
// always writes its direct path z * dh.)
template <class T>
FUSED_RNN_HD bool writes_direct_grad(const BackwardStep<T>& a) {
  return a.grad_h_state && (a.masks.zoneout_h || a.masks.grad_h_dropped);
}

// Element (row b, unit j) of a step as every device's loop runs it. Forward: keep h_prev
// for backward, then the cell's own math. Backward: the cell's math.
template <class Cell, class V, class T, class IO>
FUSED_RNN_HD void step_element(const ForwardStep<T>& a, int64_t b, int64_t j, const IO& io) {
  if (a.h_prev_save) {
    io.store(a.h_prev_save + b * a.ws_stride + j, io.load(a.h_state + b * a.h_state_stride + j));
  }
  if (a.masks.h_dropped_save) {
    io.store(a.masks.h_dropped_save + b * a.ws_stride + j, io.load(a.masks.h_dropped + b * a.h_state_stride + j));
  }
  Cell::template forward<V>(a, b, j, io);
}

template <class Cell, class V, class T, class IO>
FUSED_RNN_HD void step_element(const BackwardStep<T>& a, int64_t b, int64_t j, const IO& io) {
  Cell::template backward<V>(a, b, j, io);
}

}  // namespace fused_rnn
