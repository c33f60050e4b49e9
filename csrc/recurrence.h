// The time-loop driver, written once for every cell and both devices.
//
// Forward: the input projection of all steps is ONE GEMM; each step is one recurrent GEMM
// into a preallocated buffer and one fused pointwise pass (Device::forward_step).
// Backward: the mirror image per step (one pointwise pass, one GEMM for dh); the weight
// gradients, dx and the bias gradients are single GEMMs / reductions over all steps after
// the loop. How a step runs is the Device's (the contract: device.h); nothing here knows
// about layers, directions or modules.
#pragma once
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <limits>
#include <optional>
#include <vector>

#include "cells/common.h"
#include "device.h"
#include "layer_masks.h"

namespace fused_rnn {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

struct LayerWeights {
  Tensor w_ih, w_hh;
  OptTensor b_ih, b_hh, w_hr;
  OptTensor w_ch;  // peephole LSTM: [3 * hidden] w_ci|w_cf|w_co (cells/lstm.h)
  // Layer-normalized cells (cells/layer_norm.h): γ_ih, γ_hh [G * hidden]; LSTM γ_c, β_c [hidden].
  OptTensor ln_ih, ln_hh, ln_c, ln_bias_c;
  bool layer_norm() const { return ln_hh.has_value(); }
};

// One time step's rows: [offset, offset + rows) of the [N, ...] input/output matrices.
struct StepRows {
  int64_t offset, rows;
};

struct Sizes {
  int64_t steps, batch, input, hidden, state;  // state = proj_size or hidden
};

// The workspace columns a layer-normalized cell adds after the others (0 for the other
// cells): the input path's x̂ and the hidden path's ĥ (G*H each), their rows' 1/σ, and for
// the LSTM the mean and 1/σ of c'. NormColumns gives each one's column from where they start.
inline int64_t norm_columns(int gates, int64_t hidden, bool has_cell_state, bool layer_norm) {
  return layer_norm ? 2 * gates * hidden + 2 + (has_cell_state ? 2 : 0) : 0;
}
struct NormColumns {
  int64_t x_hat, h_hat, x_rstd, h_rstd, c_stats;
  NormColumns(int64_t start, int64_t gate_cols)
      : x_hat(start),
        h_hat(start + gate_cols),
        x_rstd(start + 2 * gate_cols),
        h_rstd(x_rstd + 1),
        c_stats(x_rstd + 2) {}
};

// Workspace columns: the cell's own (Cell::kWorkspace * H), then for a projected LSTM the
// unprojected h (H), then the recurrent input of the step, h_prev (state size), then a
// layer-normalized cell's (norm_columns), then under recurrent dropout the GEMM's input
// h_prev * d (state size).
struct WorkspaceLayout {
  int64_t cell_cols, h_col, h_prev_col, norm_col, dropped_col, width;
  static WorkspaceLayout make(int cell_ws, int64_t hidden, int64_t state, bool proj, int64_t norm_cols, bool dropout) {
    WorkspaceLayout l;
    l.cell_cols = cell_ws * hidden;
    l.h_col = l.cell_cols;
    l.h_prev_col = l.cell_cols + (proj ? hidden : 0);
    l.norm_col = l.h_prev_col + state;
    l.dropped_col = l.norm_col + norm_cols;
    l.width = l.dropped_col + (dropout ? state : 0);
    return l;
  }
};

// Validates the arguments of a layer (shared by forward and backward) and returns sizes and
// the rows of every step in time order. Messages name the argument, expectation and value.
Sizes check_layer_args(const char* op, int gates, bool has_cell_state, const Tensor& input,
                       const OptTensor& batch_sizes, const Tensor& h0, const OptTensor& c0, const LayerWeights& w,
                       std::vector<StepRows>* steps);

// The same for one step of a cell (the single-step ops, single_step.h): input [batch, input_size].
Sizes check_step_args(const char* op, int gates, bool has_cell_state, const Tensor& input, const Tensor& h,
                      const OptTensor& c, const LayerWeights& w);

// Tests set this (through _C.set_poison) so every buffer the driver allocates starts as NaN:
// an element a kernel forgets to write then fails the comparison with the reference.
bool& poison_new_buffers();

// A tensor the op allocates: its results and the buffers of its steps. On the CPU, buffers
// of kMinPooledBytes or more come from blocks kept after earlier tensors died (recurrence.cpp):
// glibc gives such sizes fresh pages on every call in a training loop (mmap, or a heap top
// that free() trims again), and touching them page by page cost 400 of the 700 us of an
// LSTMCell forward+backward at B = 1, H = 256 (its two 1 MB weight gradients).
Tensor new_buffer(at::IntArrayRef shape, const at::TensorOptions& opts);

// A buffer that never leaves the op (the input projection, the gate gradients). On the CPU
// it is carved from memory this thread keeps from one call to the next, one block per slot:
// a fresh block of tens of MB comes from mmap, and first touching it page by page cost
// 13 ms of a 90 ms forward at T100 B64 H512 (52 MB), as much again in backward. Other
// devices get new_buffer (CUDA's caching allocator already reuses). Poisoned like it.
enum class Scratch { kGates, kHiddenGates, kNormGates, kNormCell, kCount };
Tensor scratch_buffer(Scratch slot, at::IntArrayRef shape, const at::TensorOptions& opts);
// The calling thread's kept scratch memory (and the process's kept blocks of new_buffer):
// its size, and releasing it.
int64_t scratch_bytes();
void release_scratch();

// a @ b into a new buffer through the Device's GEMM.
template <class Device>
Tensor matmul(const Tensor& a, const Tensor& b) {
  Tensor out = new_buffer({a.size(0), b.size(1)}, a.options());
  Device::gemm(out, a, b, /*accumulate=*/false);
  return out;
}

template <class T>
T* ptr(const Tensor& t) {
  return t.defined() && t.numel() > 0 ? t.data_ptr<T>() : nullptr;
}
template <class T>
T* ptr(const OptTensor& t) {
  return t.has_value() ? ptr<T>(*t) : nullptr;
}

inline Tensor contiguous_or_empty(const OptTensor& t) { return t.has_value() ? t->contiguous() : Tensor(); }

// The first `rows` rows of t; t itself when that is all of it (no view to make per step).
inline Tensor first_rows(const Tensor& t, int64_t rows) { return rows == t.size(0) ? t : t.narrow(0, 0, rows); }

// What every op body holds while it runs: the input's device is current (so a CUDA Device
// launches on that device's current stream), and autocast is off, so the GEMMs run in the
// op's dtype even inside an autocast region.
struct OpScope {
  explicit OpScope(const Tensor& input) : device(input.device()) {}
  const at::OptionalDeviceGuard device;
  const c10::impl::ExcludeDispatchKeyGuard no_autocast{c10::autocast_dispatch_keyset};
};

// What forward and backward both derive from a layer's (checked) arguments.
struct LayerSetup {
  std::vector<StepRows> steps;  // in time order
  Sizes s;
  Tensor input;  // contiguous
  int64_t rows;  // N: rows of the [N, ...] input/output matrices
  bool proj, norm;
  WorkspaceLayout layout;
  MaskRows masks;
};

template <class Cell>
LayerSetup setup_layer(const Tensor& input, const OptTensor& batch_sizes, const Tensor& h0, const OptTensor& c0,
                       const LayerWeights& w, const LayerMasks& masks) {
  LayerSetup l;
  l.s = check_layer_args(Cell::kName, Cell::kGates, Cell::kHasCellState, input, batch_sizes, h0, c0, w, &l.steps);
  l.input = input.contiguous();
  // Not numel / input_size: input_size may be 0 (torch.nn accepts it; the output comes from the biases).
  l.rows = l.input.dim() == 2 ? l.input.size(0) : l.input.size(0) * l.input.size(1);
  l.proj = w.w_hr.has_value();
  l.norm = w.layer_norm();
  std::vector<int64_t> out_shape = l.input.sizes().vec();
  out_shape.back() = l.s.state;
  l.masks = MaskRows::of(Cell::kName, masks, l.input, out_shape, l.s.batch, l.s.hidden, Cell::kHasCellState);
  l.layout =
      WorkspaceLayout::make(Cell::kWorkspace, l.s.hidden, l.s.state, l.proj,
                            norm_columns(Cell::kGates, l.s.hidden, Cell::kHasCellState, l.norm), l.masks.dropout());
  return l;
}

// What a layer's forward returns. Absent ones are empty tensors (shape [0]), as the op
// schemas return them.
struct LayerOutputs {
  Tensor output;     // [T, B, state] or packed [N, state]
  Tensor h_n;        // [B, state]
  Tensor c_n;        // LSTM: [B, hidden]
  Tensor workspace;  // [N, WorkspaceLayout::width] when need_workspace
};

// What a layer's backward returns: the gradient of each argument, by the argument's name.
struct LayerGrads {
  Tensor input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, weight_ch;
  Tensor ln_weight_ih, ln_weight_hh, ln_weight_c, ln_bias_c;
};

// A layer-normalized cell's weights, contiguous (undefined for the other cells), and the step
// blocks' pointers into them and into the workspace (cells/layer_norm.h).
struct NormWeights {
  Tensor ih, hh, c, bias_c;

  static NormWeights of(const LayerWeights& w) {
    return {contiguous_or_empty(w.ln_ih), contiguous_or_empty(w.ln_hh), contiguous_or_empty(w.ln_c),
            contiguous_or_empty(w.ln_bias_c)};
  }
  bool active() const { return hh.defined(); }

  // ws_row: the step's first workspace row, or null in inference (nothing kept).
  template <class T>
  ForwardNorm<T> forward(T* ws_row, const NormColumns& nc) const {
    ForwardNorm<T> n;
    if (!active()) return n;
    n.gamma_hh = ptr<T>(hh);
    n.gamma_c = ptr<T>(c);
    n.beta_c = ptr<T>(bias_c);
    if (ws_row) {
      n.h_hat = ws_row + nc.h_hat;
      n.h_rstd = ws_row + nc.h_rstd;
      if (n.gamma_c) n.c_stats = ws_row + nc.c_stats;
    }
    return n;
  }

  // d_h_raw, d_c_norm: the step's first rows of those buffers.
  template <class T>
  BackwardNorm<T> backward(const T* ws_row, const NormColumns& nc, T* d_h_raw, T* d_c_norm) const {
    BackwardNorm<T> n;
    if (!active()) return n;
    n.gamma_hh = ptr<T>(hh);
    n.h_hat = ws_row + nc.h_hat;
    n.h_rstd = ws_row + nc.h_rstd;
    n.d_h_raw = d_h_raw;
    n.gamma_c = ptr<T>(c);
    n.beta_c = ptr<T>(bias_c);
    if (n.gamma_c) n.c_stats = ws_row + nc.c_stats;
    n.d_c_norm = d_c_norm;
    return n;
  }

  // The input path's LN for all rows of x_gates [N, G*H] at once, in place, keeping x̂ and 1/σ
  // in the workspace (ws: its first row, or null).
  template <class Device, class T>
  void normalize_input_path(const Tensor& x_gates, T* ws, int64_t ws_stride, const NormColumns& nc) const {
    const int64_t gh = x_gates.size(1);
    Device::template normalize_rows<T>(ptr<T>(x_gates), x_gates.size(0), gh, gh, ptr<T>(ih),
                                       ws ? ws + nc.x_hat : nullptr, ws ? ws + nc.x_rstd : nullptr, ws_stride);
  }
};

// The tensors a layer's forward works on, and the pointer block of one step over them.
struct ForwardBuffers {
  Tensor x_gates;     // [N, G*H] all steps' x W_ih^T (scratch; biases are added by the pass)
  Tensor h_gates;     // [B, G*H] this step's h_prev W_hh^T, unless the GEMM returns its own
  Tensor b_ih, b_hh;  // contiguous, or undefined
  Tensor w_ch;        // peephole LSTM: contiguous, or undefined
  NormWeights norm;   // layer-normalized cells
  Tensor output;      // [T, B, P] or [N, P]; out2d is its [N, P] view
  Tensor out2d;
  Tensor h_state;      // [B, P] h_prev in, h' out
  Tensor c_state;      // LSTM: [B, H]
  Tensor ws;           // [N, layout.width], or [0] in inference
  Tensor h_scratch;    // projected LSTM in inference: [B, H] the unprojected h'
  MaskRows masks;      // the regularizers (layer_masks.h), and their buffers:
  Tensor h_dropped;    //   recurrent dropout: [B, P] the GEMM's input h * d
  Tensor c_candidate;  // layer-normalized LSTM with zoneout on c: [B, H] c' before zoneout
  int64_t hidden, state, gates;
  WorkspaceLayout layout;
  bool proj, need_workspace;

  // The rows of a step of a projected LSTM whose unprojected h' the pass wrote.
  Tensor h_unprojected(const StepRows& st) const {
    return need_workspace ? ws.narrow(0, st.offset, st.rows).narrow(1, layout.h_col, hidden)
                          : first_rows(h_scratch, st.rows);
  }

  // The end of a projected LSTM's step, once `projected` holds its rows' h' W_hr^T: zoneout
  // (h_state still holds h_prev), the new state, and the next GEMM's input under dropout.
  void finish_projected_step(const StepRows& st, Tensor& projected) {
    Tensor h_rows = first_rows(h_state, st.rows);
    // m * h_prev + (1 - m) * h~ in place, no buffer per step; lerp is exact at m = 0 and m = 1
    if (masks.zoneout_h.defined()) projected.lerp_(h_rows, masks.zoneout_h.narrow(0, st.offset, st.rows));
    h_rows.copy_(projected);
    if (masks.dropout()) {
      Tensor dropped = first_rows(h_dropped, st.rows);
      at::mul_out(dropped, projected, first_rows(masks.dropout_h, st.rows));
    }
  }

  // h_gates_rows: the step's h_prev W_hh^T ([rows, G*H], contiguous).
  template <class T>
  ForwardStep<T> step(const StepRows& st, const Tensor& h_gates_rows) const {
    const int64_t H = hidden, P = state, GH = gates * hidden;
    ForwardStep<T> a;
    a.rows = st.rows;
    a.hidden = H;
    a.x_gates = ptr<T>(x_gates) + st.offset * GH;
    a.x_stride = GH;
    a.h_gates = ptr<T>(h_gates_rows);
    a.h_stride = GH;
    a.bias_ih = ptr<T>(b_ih);
    a.bias_hh = ptr<T>(b_hh);
    a.peephole = ptr<T>(w_ch);
    a.c_state = ptr<T>(c_state);
    a.ws = need_workspace ? ptr<T>(ws) + st.offset * layout.width : nullptr;
    a.ws_stride = layout.width;
    a.norm = norm.forward<T>(a.ws, NormColumns(layout.norm_col, GH));
    a.norm.c_candidate = ptr<T>(c_candidate);
    a.masks.zoneout_c = MaskRows::from_row<T>(masks.zoneout_c, st.offset);
    a.masks.zoneout_c_stride = masks.zoneout_c.defined() ? masks.zoneout_c.stride(0) : 0;
    if (proj) {  // h' goes to the workspace (or scratch), and the driver projects it
      a.h_out = need_workspace ? a.ws + layout.h_col : ptr<T>(h_scratch);
      a.h_out_stride = need_workspace ? layout.width : H;
    } else {
      a.h_out = ptr<T>(out2d) + st.offset * P;
      a.h_out_stride = P;
      a.h_state = ptr<T>(h_state);
      a.h_state_stride = P;
      if (need_workspace) a.h_prev_save = a.ws + layout.h_prev_col;
      a.masks.zoneout_h = MaskRows::from_row<T>(masks.zoneout_h, st.offset);
      a.masks.zoneout_h_stride = masks.zoneout_h.defined() ? masks.zoneout_h.stride(0) : 0;
      a.masks.dropout_h = ptr<T>(masks.dropout_h);
      a.masks.h_dropped = ptr<T>(h_dropped);
      if (need_workspace && masks.dropout()) a.masks.h_dropped_save = a.ws + layout.dropped_col;
    }
    return a;
  }
};

// Allocates a forward's buffers and runs all steps' input projection (ONE GEMM).
template <class Cell, class Device>
ForwardBuffers forward_buffers(const LayerSetup& l, const LayerWeights& w, const Tensor& h0, const OptTensor& c0,
                               bool need_workspace) {
  const auto opts = l.input.options();
  const int64_t H = l.s.hidden, P = l.s.state, G = Cell::kGates;
  ForwardBuffers b;
  b.hidden = H, b.state = P, b.gates = G, b.layout = l.layout, b.proj = l.proj, b.need_workspace = need_workspace;
  b.x_gates = scratch_buffer(Scratch::kGates, {l.rows, G * H}, opts);
  Device::gemm(b.x_gates, l.input.view({l.rows, l.s.input}), w.w_ih.t(), /*accumulate=*/false);
  b.h_gates = new_buffer({l.s.batch, G * H}, opts);
  b.b_ih = contiguous_or_empty(w.b_ih);
  b.b_hh = contiguous_or_empty(w.b_hh);
  b.w_ch = contiguous_or_empty(w.w_ch);
  b.norm = NormWeights::of(w);
  std::vector<int64_t> out_shape = l.input.sizes().vec();
  out_shape.back() = P;
  b.output = new_buffer(out_shape, opts);
  b.out2d = b.output.view({l.rows, P});
  b.h_state = h0.contiguous().clone();
  b.c_state = Cell::kHasCellState ? c0->contiguous().clone() : Tensor();
  b.ws = need_workspace ? new_buffer({l.rows, l.layout.width}, opts) : at::empty({0}, opts);
  b.h_scratch = l.proj && !need_workspace ? new_buffer({l.s.batch, H}, opts) : Tensor();
  b.masks = l.masks;
  b.h_dropped = l.masks.dropout() ? b.h_state * l.masks.dropout_h : Tensor();
  b.c_candidate = l.norm && l.masks.zoneout_c.defined() ? new_buffer({l.s.batch, H}, opts) : Tensor();
  return b;
}

template <class Cell, class Device>
LayerOutputs layer_forward(const Tensor& input, const OptTensor& batch_sizes, const Tensor& h0, const OptTensor& c0,
                           const LayerWeights& w, const LayerMasks& masks, bool reverse, bool need_workspace) {
  const OpScope scope(input);
  const LayerSetup l = setup_layer<Cell>(input, batch_sizes, h0, c0, w, masks);
  ForwardBuffers b = forward_buffers<Cell, Device>(l, w, h0, c0, need_workspace);
  const int64_t n_steps = static_cast<int64_t>(l.steps.size());
  const typename Device::StepWeight w_hh_step(w.w_hh.t(), n_steps, /*groups=*/Cell::kGates);
  std::optional<typename Device::StepWeight> w_hr_step;
  if (l.proj) w_hr_step.emplace(w.w_hr->t(), n_steps);

  // A projected LSTM's step ends in a GEMM over all units, a layer-normalized step's statistics
  // span all units: their steps are never split.
  const StepPlan plan{l.s.batch, l.s.state, Cell::kGates, l.s.hidden, /*splittable=*/!l.proj && !l.norm};
  Device::dispatch(l.input.scalar_type(), Cell::kName, [&](auto tag) {
    using T = decltype(tag);
    if (l.norm) {
      b.norm.normalize_input_path<Device, T>(b.x_gates, need_workspace ? ptr<T>(b.ws) : nullptr, l.layout.width,
                                             NormColumns(l.layout.norm_col, Cell::kGates * l.s.hidden));
    }
    Device::template for_each_step<T>(n_steps, plan, [&](int64_t k, const Units& units, const auto& sync) {
      const StepRows& st = l.steps[reverse ? n_steps - 1 - k : k];
      const Tensor h_prev = first_rows(b.h_state, st.rows);
      const Tensor gemm_input = l.masks.dropout() ? first_rows(b.h_dropped, st.rows) : h_prev;
      Tensor h_gates_rows = first_rows(b.h_gates, st.rows);
      const Tensor h_gates = w_hh_step.product(h_gates_rows, gemm_input, units);
      sync();  // the pass below overwrites h_state (h_dropped), which the GEMM of every split reads
      // h_prev (and the GEMM's input) is kept for backward: by the pointwise pass, which reads
      // h_state anyway, except for a projected LSTM, whose state has another width than the pass.
      if (need_workspace && l.proj) {
        const Tensor ws_rows = b.ws.narrow(0, st.offset, st.rows);
        ws_rows.narrow(1, l.layout.h_prev_col, l.s.state).copy_(h_prev);
        if (l.masks.dropout()) ws_rows.narrow(1, l.layout.dropped_col, l.s.state).copy_(gemm_input);
      }
      Device::template forward_step<Cell, T>(b.step<T>(st, h_gates), units);
      if (l.proj) {
        Tensor out_rows = b.out2d.narrow(0, st.offset, st.rows);
        w_hr_step->gemm(out_rows, b.h_unprojected(st), false);
        b.finish_projected_step(st, out_rows);
      }
    });
  });
  return {b.output, b.h_state, Cell::kHasCellState ? b.c_state : at::empty({0}, l.input.options()), b.ws};
}

// The tensors a layer's backward works on, and the pointer block of one step over them.
struct BackwardBuffers {
  Tensor grad_out;        // [N, P] grad_output
  Tensor ws;              // [N, layout.width] the forward's workspace
  Tensor d_gates_x;       // [N, G*H] dL/d(pre-activation) along the input path (scratch)
  Tensor d_gates_h;       // [N, G*H] along the hidden path: d_gates_x itself but for GRU
  Tensor dh_state;        // [B, P] dL/dh' from the next step
  Tensor dc_state;        // LSTM: [B, H]
  Tensor d_proj;          // projected LSTM: [N, P] dL/d(projected h) per row
  Tensor dh_buf;          // projected LSTM: [B, H] that times W_hr
  Tensor w_ch;            // peephole LSTM: contiguous, or undefined
  NormWeights norm;       // layer-normalized cells, and their scratch:
  Tensor d_h_raw;         //   [N, G*H] dL/d(h_prev W_hh^T): what the recurrent GEMMs multiply
  Tensor d_c_norm;        //   LSTM: [N, H] dL/d(γ_c ĉ' + β_c)
  MaskRows masks;         // the regularizers (layer_masks.h), and their buffers:
  Tensor grad_h_dropped;  //   recurrent dropout: [B, P] dL/d(h * d), zero where no GEMM wrote yet
  Tensor grad_c_direct;   //   layer-normalized LSTM with zoneout on c: [B, H]
  int64_t hidden, state, gates;
  WorkspaceLayout layout;
  bool proj;

  template <class T>
  BackwardStep<T> step(const StepRows& st) const {
    const int64_t H = hidden, P = state, GH = gates * hidden;
    BackwardStep<T> a;
    a.rows = st.rows;
    a.hidden = H;
    if (proj) {  // the driver has put dL/dh' (through W_hr) into dh_buf
      a.grad_h = ptr<T>(dh_buf);
      a.grad_h_stride = H;
    } else {
      a.grad_h = ptr<T>(grad_out) + st.offset * P;
      a.grad_h_stride = P;
      a.grad_h_state = ptr<T>(dh_state);
      a.grad_h_state_stride = P;
    }
    a.grad_c_state = ptr<T>(dc_state);
    a.peephole = ptr<T>(w_ch);
    a.ws = ptr<T>(ws) + st.offset * layout.width;
    a.ws_stride = layout.width;
    a.h_prev = a.ws + layout.h_prev_col;
    a.h_prev_stride = layout.width;
    a.d_gates_x = ptr<T>(d_gates_x) + st.offset * GH;
    a.d_gates_h = ptr<T>(d_gates_h) + st.offset * GH;
    a.d_gates_stride = GH;
    if (norm.active()) {
      a.norm = norm.backward<T>(a.ws, NormColumns(layout.norm_col, GH), ptr<T>(d_h_raw) + st.offset * GH,
                                d_c_norm.defined() ? ptr<T>(d_c_norm) + st.offset * H : nullptr);
    }
    a.masks.zoneout_c = MaskRows::from_row<T>(masks.zoneout_c, st.offset);
    a.masks.zoneout_c_stride = masks.zoneout_c.defined() ? masks.zoneout_c.stride(0) : 0;
    a.masks.grad_c_direct = ptr<T>(grad_c_direct);
    if (!proj) {  // a projected LSTM's h-side is the driver's (layer_backward)
      a.masks.zoneout_h = MaskRows::from_row<T>(masks.zoneout_h, st.offset);
      a.masks.zoneout_h_stride = masks.zoneout_h.defined() ? masks.zoneout_h.stride(0) : 0;
      a.masks.dropout_h = ptr<T>(masks.dropout_h);
      a.masks.grad_h_dropped = ptr<T>(grad_h_dropped);
    }
    return a;
  }

  // The gradient each step's recurrent GEMM multiplies by W_hh.
  const Tensor& d_gemm_h() const { return norm.active() ? d_h_raw : d_gates_h; }
};

// Checks what only backward takes (workspace, grad_output) and allocates its buffers.
template <class Cell>
BackwardBuffers backward_buffers(const LayerSetup& l, const LayerWeights& w, const Tensor& grad_output,
                                 const Tensor& grad_h_n, const OptTensor& grad_c_n, const Tensor& ws) {
  const int64_t N = l.rows, H = l.s.hidden, P = l.s.state, G = Cell::kGates;
  TORCH_CHECK(ws.dim() == 2 && ws.size(0) == N && ws.size(1) == l.layout.width, Cell::kName,
              "_backward: workspace has shape ", ws.sizes(), " but [", N, ", ", l.layout.width,
              "] was expected; was the forward run with need_workspace=True on the same arguments?");
  TORCH_CHECK(ws.scalar_type() == l.input.scalar_type() && ws.device() == l.input.device(), Cell::kName,
              "_backward: expected workspace to have the dtype and device of input (", l.input.scalar_type(), ", ",
              l.input.device(), "), but got ", ws.scalar_type(), " on ", ws.device());
  // The step blocks index these with the full row stride: a wrong shape would be a wrong address.
  const auto check_grad = [&](const char* name, const Tensor& t, at::IntArrayRef shape) {
    TORCH_CHECK(t.sizes() == shape, Cell::kName, "_backward: expected ", name, " of shape ", shape, ", but got ",
                t.sizes());
    TORCH_CHECK(t.scalar_type() == l.input.scalar_type() && t.device() == l.input.device(), Cell::kName,
                "_backward: expected ", name, " to have the dtype and device of input (", l.input.scalar_type(), ", ",
                l.input.device(), "), but got ", t.scalar_type(), " on ", t.device());
  };
  std::vector<int64_t> output_shape = l.input.sizes().vec();
  output_shape.back() = P;
  check_grad("grad_output", grad_output, output_shape);
  check_grad("grad_h_n", grad_h_n, {l.s.batch, P});
  if (Cell::kHasCellState) check_grad("grad_c_n", *grad_c_n, {l.s.batch, H});
  const auto opts = l.input.options();
  BackwardBuffers b;
  b.hidden = H, b.state = P, b.gates = G, b.layout = l.layout, b.proj = l.proj;
  b.grad_out = grad_output.contiguous().view({N, P});
  b.ws = ws.contiguous();
  b.d_gates_x = scratch_buffer(Scratch::kGates, {N, G * H}, opts);
  b.d_gates_h = Cell::kSplitGateGrads ? scratch_buffer(Scratch::kHiddenGates, {N, G * H}, opts) : b.d_gates_x;
  b.dh_state = grad_h_n.contiguous().clone();
  b.dc_state = Cell::kHasCellState ? grad_c_n->contiguous().clone() : Tensor();
  b.d_proj = l.proj ? new_buffer({N, P}, opts) : Tensor();
  b.dh_buf = l.proj ? new_buffer({l.s.batch, H}, opts) : Tensor();
  b.w_ch = contiguous_or_empty(w.w_ch);
  b.norm = NormWeights::of(w);
  if (l.norm) {
    b.d_h_raw = scratch_buffer(Scratch::kNormGates, {N, G * H}, opts);
    b.d_c_norm = Cell::kHasCellState ? scratch_buffer(Scratch::kNormCell, {N, H}, opts) : Tensor();
  }
  b.masks = l.masks;
  b.grad_h_dropped = l.masks.dropout() ? at::zeros({l.s.batch, P}, opts) : Tensor();
  b.grad_c_direct = l.norm && l.masks.zoneout_c.defined() ? new_buffer({l.s.batch, H}, opts) : Tensor();
  return b;
}

// What the weight and input gradients are computed from: [N, ...] matrices over all rows of
// a call (every step of a layer here, the one step of a single-step op in single_step.h).
struct GradSources {
  Tensor x;                     // [N, I]
  Tensor h_prev;                // [N, P] each row's recurrent input
  Tensor h_unprojected;         // projected LSTM: [N, H] h' before W_hr
  Tensor d_gates_x, d_gates_h;  // [N, G*H] dL/d(pre-activation), input and hidden path
  Tensor d_proj;                // projected LSTM: [N, P] dL/d(projected h')
  Tensor cell_ws;               // peephole LSTM: [N, kWorkspace*H] the cell's workspace columns
  // Layer-normalized cells: d_gates_x / d_gates_h above are the gradients of the normalized
  // paths (γ x̂, γ ĥ); the GEMMs' are d_gates_x after normalize_rows_backward (in place) and
  // d_h_raw. x̂, ĥ [N, G*H] and x_rstd [N, 1] as forward kept them (workspace columns).
  Tensor norm_ws;   // [N, norm_columns] the workspace's layer-norm columns
  Tensor d_h_raw;   // [N, G*H]
  Tensor d_c_norm;  // LSTM: [N, H] dL/d(γ_c ĉ' + β_c)
};

// Which gradients a backward computes (the others come back as empty tensors): all of them
// for a layer; a single step leaves out those autograd does not ask for (an input or a state
// that needs no gradient, frozen weights), most of them a GEMM as large as the step's own.
struct GradMask {
  bool input = true, h0 = true, c0 = true, weight_ih = true, weight_hh = true, bias_ih = true, bias_hh = true,
       weight_hr = true, weight_ch = true, ln_weight_ih = true, ln_weight_hh = true, ln_weight_c = true,
       ln_bias_c = true;
};

// A peephole LSTM's dL/d[w_ci|w_cf|w_co] [3H]: per weight, the sum over rows of a gate's
// pre-activation gradient times the cell state it looks at (LstmCell::kPeepholeGrads).
template <class Cell, class Device>
Tensor peephole_grad(const Tensor& d_gates, const Tensor& cell_ws, int64_t hidden) {
  std::vector<Tensor> parts;
  for (const auto& pg : Cell::kPeepholeGrads) {
    parts.push_back(Device::sum_of_products(d_gates.narrow(1, pg.gate * hidden, hidden),
                                            cell_ws.narrow(1, pg.state * hidden, hidden)));
  }
  return at::cat(parts);
}

// A layer-normalized cell's γ and β gradients (sums over rows, from the gradients of the
// normalized paths), then the input path's gradient through its LN, in place in s.d_gates_x.
template <class Cell, class Device>
void layer_norm_grads(const GradSources& s, const NormWeights& w, const GradMask& mask, LayerGrads* g) {
  const auto opts = s.x.options();
  const int64_t gh = s.d_gates_x.size(1), hidden = gh / Cell::kGates;
  const NormColumns nc(0, gh);
  const Tensor x_hat = s.norm_ws.narrow(1, nc.x_hat, gh), h_hat = s.norm_ws.narrow(1, nc.h_hat, gh);
  g->ln_weight_ih = mask.ln_weight_ih ? Device::sum_of_products(s.d_gates_x, x_hat) : at::empty({0}, opts);
  g->ln_weight_hh = mask.ln_weight_hh ? Device::sum_of_products(s.d_gates_h, h_hat) : at::empty({0}, opts);
  g->ln_weight_c = at::empty({0}, opts);  // one empty tensor each: results must not alias
  g->ln_bias_c = at::empty({0}, opts);
  if constexpr (Cell::kHasCellState) {
    const Tensor stats = s.norm_ws.narrow(1, nc.c_stats, 2);
    const Tensor c_new = s.cell_ws.narrow(1, Cell::kCellStateColumn * hidden, hidden);
    const Tensor c_hat = (c_new - stats.narrow(1, 0, 1)) * stats.narrow(1, 1, 1);
    if (mask.ln_weight_c) g->ln_weight_c = Device::sum_of_products(s.d_c_norm, c_hat);
    if (mask.ln_bias_c) g->ln_bias_c = s.d_c_norm.sum(0);
  }
  Device::dispatch(s.x.scalar_type(), Cell::kName, [&](auto tag) {
    using T = decltype(tag);
    const int64_t ws_stride = s.norm_ws.stride(0);
    Device::template normalize_rows_backward<T>(ptr<T>(s.d_gates_x), s.d_gates_x.size(0), gh, gh, ptr<T>(w.ih),
                                                ptr<T>(s.norm_ws) + nc.x_hat, ptr<T>(s.norm_ws) + nc.x_rstd, ws_stride);
  });
}

// dx, the weight gradients (one GEMM each over all rows) and the sums over rows (biases,
// peephole and layer-norm weights); the state gradients are the caller's. Sums over rows are
// deterministic reductions (no atomics) on both devices. They come first: a layer-normalized
// cell then turns s.d_gates_x into its GEMM's gradient in place.
template <class Cell, class Device>
LayerGrads weight_and_input_grads(const GradSources& s, const LayerWeights& w, at::IntArrayRef input_shape,
                                  const GradMask& mask = {}) {
  const auto opts = s.x.options();
  const auto unless = [&](bool wanted, auto&& compute) { return wanted ? compute() : at::empty({0}, opts); };
  LayerGrads g;
  g.bias_ih = unless(w.b_ih.has_value() && mask.bias_ih, [&] { return s.d_gates_x.sum(0); });
  // Where both paths share the gate grads (all but GRU), both biases get the same sum.
  const bool same_sum = !Cell::kSplitGateGrads && g.bias_ih.numel() > 0;
  g.bias_hh =
      unless(w.b_hh.has_value() && mask.bias_hh, [&] { return same_sum ? g.bias_ih.clone() : s.d_gates_h.sum(0); });
  g.weight_hr =
      unless(w.w_hr.has_value() && mask.weight_hr, [&] { return matmul<Device>(s.d_proj.t(), s.h_unprojected); });
  if constexpr (Cell::kHasCellState) {
    const int64_t hidden = w.w_hh.size(0) / Cell::kGates;
    g.weight_ch = unless(w.w_ch.has_value() && mask.weight_ch,
                         [&] { return peephole_grad<Cell, Device>(s.d_gates_x, s.cell_ws, hidden); });
  } else {
    g.weight_ch = at::empty({0}, opts);
  }
  const NormWeights norm = NormWeights::of(w);
  if (norm.active()) {
    layer_norm_grads<Cell, Device>(s, norm, mask, &g);
  } else {
    for (Tensor* t : {&g.ln_weight_ih, &g.ln_weight_hh, &g.ln_weight_c, &g.ln_bias_c}) *t = at::empty({0}, opts);
  }
  const Tensor& d_h = norm.active() ? s.d_h_raw : s.d_gates_h;  // of the GEMM h_prev W_hh^T
  g.input = unless(mask.input, [&] { return matmul<Device>(s.d_gates_x, w.w_ih).view(input_shape); });
  g.weight_ih = unless(mask.weight_ih, [&] { return matmul<Device>(s.d_gates_x.t(), s.x); });
  g.weight_hh = unless(mask.weight_hh, [&] { return matmul<Device>(d_h.t(), s.h_prev); });
  return g;
}

// After the loop: the gradients of weights and input over all steps, and of the initial states.
template <class Cell, class Device>
LayerGrads gradients_after_loop(const LayerSetup& l, const LayerWeights& w, const BackwardBuffers& b) {
  GradSources s;
  s.x = l.input.view({l.rows, l.s.input});
  s.h_prev = b.ws.narrow(1, l.masks.dropout() ? l.layout.dropped_col : l.layout.h_prev_col, l.s.state);
  s.h_unprojected = l.proj ? b.ws.narrow(1, l.layout.h_col, l.s.hidden) : Tensor();
  s.d_gates_x = b.d_gates_x;
  s.d_gates_h = b.d_gates_h;
  s.d_proj = b.d_proj;
  s.cell_ws = b.ws.narrow(1, 0, l.layout.cell_cols);
  if (l.norm) {
    s.norm_ws = b.ws.narrow(1, l.layout.norm_col, l.layout.width - l.layout.norm_col);
    s.d_h_raw = b.d_h_raw;
    s.d_c_norm = b.d_c_norm;
  }
  LayerGrads g = weight_and_input_grads<Cell, Device>(s, w, l.input.sizes());
  g.h0 = b.dh_state;
  g.c0 = Cell::kHasCellState ? b.dc_state : at::empty({0}, l.input.options());
  return g;
}

template <class Cell, class Device>
LayerGrads layer_backward(const Tensor& grad_output, const Tensor& grad_h_n, const OptTensor& grad_c_n,
                          const Tensor& input, const OptTensor& batch_sizes, const Tensor& h0, const OptTensor& c0,
                          const LayerWeights& w, const LayerMasks& masks, const Tensor& ws, bool reverse) {
  const OpScope scope(input);
  const LayerSetup l = setup_layer<Cell>(input, batch_sizes, h0, c0, w, masks);
  BackwardBuffers b = backward_buffers<Cell>(l, w, grad_output, grad_h_n, grad_c_n, ws);
  const int64_t n_steps = static_cast<int64_t>(l.steps.size());
  const typename Device::StepWeight w_hh_step(w.w_hh, n_steps);
  std::optional<typename Device::StepWeight> w_hr_step;
  if (l.proj) w_hr_step.emplace(*w.w_hr, n_steps);
  const bool zoneout_h = l.masks.zoneout_h.defined();

  Device::dispatch(l.input.scalar_type(), Cell::kName, [&](auto tag) {
    using T = decltype(tag);
    for (int64_t k = 0; k < n_steps; ++k) {  // the forward order, reversed
      const StepRows& st = l.steps[reverse ? k : n_steps - 1 - k];
      Tensor dh_rows = first_rows(b.dh_state, st.rows);
      if (l.proj) {  // dL/d(projected h) = grad_output + the next step's; through W_hr to h'
        Tensor dp = b.d_proj.narrow(0, st.offset, st.rows);
        at::add_out(dp, b.grad_out.narrow(0, st.offset, st.rows), dh_rows);
        if (zoneout_h) {  // the part that goes straight to h_prev waits in dh_rows
          at::mul_out(dh_rows, dp, l.masks.zoneout_h.narrow(0, st.offset, st.rows));
          dp.sub_(dh_rows);
        }
        Tensor dh_buf_rows = first_rows(b.dh_buf, st.rows);
        w_hr_step->gemm(dh_buf_rows, dp, false);
      }
      Device::template backward_step<Cell, T>(b.step<T>(st));
      const Tensor d_gemm = b.d_gemm_h().narrow(0, st.offset, st.rows);
      if (l.masks.dropout()) {  // kept apart: the next pass multiplies it by d (here, if projected)
        Tensor grad_dropped = first_rows(b.grad_h_dropped, st.rows);
        w_hh_step.gemm(grad_dropped, d_gemm, false);
        if (l.proj) {
          const Tensor d = first_rows(l.masks.dropout_h, st.rows);
          zoneout_h ? dh_rows.addcmul_(grad_dropped, d) : at::mul_out(dh_rows, grad_dropped, d);
        }
      } else {  // on top of the direct paths the step wrote (GRU's dh * z, zoneout's)
        w_hh_step.gemm(dh_rows, d_gemm, /*accumulate=*/Cell::kSplitGateGrads || zoneout_h);
      }
    }
  });
  if (l.masks.dropout() && !l.proj) b.dh_state.addcmul_(b.grad_h_dropped, l.masks.dropout_h);
  return gradients_after_loop<Cell, Device>(l, w, b);
}

}  // namespace fused_rnn
