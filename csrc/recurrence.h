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

namespace fused_rnn {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

struct LayerWeights {
  Tensor w_ih, w_hh;
  OptTensor b_ih, b_hh, w_hr;
};

// One time step's rows: [offset, offset + rows) of the [N, ...] input/output matrices.
struct StepRows {
  int64_t offset, rows;
};

struct Sizes {
  int64_t steps, batch, input, hidden, state;  // state = proj_size or hidden
};

// Workspace columns: the cell's own (Cell::kWorkspace * H), then for a projected LSTM the
// unprojected h (H), then the recurrent input of the step, h_prev (state size).
struct WorkspaceLayout {
  int64_t cell_cols, h_col, h_prev_col, width;
  static WorkspaceLayout make(int cell_ws, int64_t hidden, int64_t state, bool proj) {
    WorkspaceLayout l;
    l.cell_cols = cell_ws * hidden;
    l.h_col = l.cell_cols;
    l.h_prev_col = l.cell_cols + (proj ? hidden : 0);
    l.width = l.h_prev_col + state;
    return l;
  }
};

// Validates the arguments of a layer (shared by forward and backward) and returns sizes and
// the rows of every step in time order. Messages name the argument, expectation and value.
Sizes check_layer_args(const char* op, int gates, bool has_cell_state, const Tensor& input,
                       const OptTensor& batch_sizes, const Tensor& h0, const OptTensor& c0, const LayerWeights& w,
                       std::vector<StepRows>* steps);

// Tests set this (through _C.set_poison) so every buffer the driver allocates starts as NaN:
// an element a kernel forgets to write then fails the comparison with the reference.
bool& poison_new_buffers();

inline Tensor new_buffer(at::IntArrayRef shape, const at::TensorOptions& opts) {
  Tensor t = at::empty(shape, opts);
  if (poison_new_buffers()) t.fill_(std::numeric_limits<double>::quiet_NaN());
  return t;
}

// A buffer that never leaves the op (the input projection, the gate gradients). On the CPU
// it is carved from memory this thread keeps from one call to the next, one block per slot:
// a fresh block of tens of MB comes from mmap, and first touching it page by page cost
// 13 ms of a 90 ms forward at T100 B64 H512 (52 MB), as much again in backward. Other
// devices get new_buffer (CUDA's caching allocator already reuses). Poisoned like it.
enum class Scratch { kGates, kHiddenGates, kCount };
Tensor scratch_buffer(Scratch slot, at::IntArrayRef shape, const at::TensorOptions& opts);
// The calling thread's kept scratch memory: its size, and releasing it.
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
  bool proj;
  WorkspaceLayout layout;
};

template <class Cell>
LayerSetup setup_layer(const Tensor& input, const OptTensor& batch_sizes, const Tensor& h0, const OptTensor& c0,
                       const LayerWeights& w) {
  LayerSetup l;
  l.s = check_layer_args(Cell::kName, Cell::kGates, Cell::kHasCellState, input, batch_sizes, h0, c0, w, &l.steps);
  l.input = input.contiguous();
  l.rows = l.input.numel() / l.s.input;
  l.proj = w.w_hr.has_value();
  l.layout = WorkspaceLayout::make(Cell::kWorkspace, l.s.hidden, l.s.state, l.proj);
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
  Tensor input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr;
};

template <class Cell, class Device>
LayerOutputs layer_forward(const Tensor& input_, const OptTensor& batch_sizes, const Tensor& h0, const OptTensor& c0,
                           const LayerWeights& w, bool reverse, bool need_workspace) {
  const OpScope scope(input_);
  const auto [steps, s, input, N, proj, layout] = setup_layer<Cell>(input_, batch_sizes, h0, c0, w);
  const int64_t H = s.hidden, P = s.state, G = Cell::kGates;
  const Tensor x2d = input.view({N, s.input});
  const int64_t n_steps = static_cast<int64_t>(steps.size());
  const typename Device::StepWeight w_hh_step(w.w_hh.t(), n_steps, /*groups=*/G);
  const Tensor b_ih = contiguous_or_empty(w.b_ih);
  const Tensor b_hh = contiguous_or_empty(w.b_hh);

  // All steps' input projections at once (the biases are added in the pointwise pass).
  Tensor x_gates = scratch_buffer(Scratch::kGates, {N, G * H}, input.options());
  Device::gemm(x_gates, x2d, w.w_ih.t(), /*accumulate=*/false);

  std::vector<int64_t> out_shape = input.sizes().vec();
  out_shape.back() = P;
  Tensor output = new_buffer(out_shape, input.options());
  Tensor out2d = output.view({N, P});
  Tensor h_state = h0.contiguous().clone();
  Tensor c_state = Cell::kHasCellState ? c0->contiguous().clone() : Tensor();
  Tensor h_gates = new_buffer({s.batch, G * H}, input.options());

  Tensor ws = need_workspace ? new_buffer({N, layout.width}, input.options()) : at::empty({0}, input.options());
  // A projected LSTM's unprojected h' goes to the workspace, or to scratch in inference.
  Tensor h_scratch = proj && !need_workspace ? new_buffer({s.batch, H}, input.options()) : Tensor();
  std::optional<typename Device::StepWeight> w_hr_step;
  if (proj) w_hr_step.emplace(w.w_hr->t(), n_steps);

  // A projected LSTM's step ends in a GEMM over all units: its steps are never split.
  const StepPlan plan{s.batch, P, G, H, /*splittable=*/!proj};
  Device::dispatch(input.scalar_type(), Cell::kName, [&](auto tag) {
    using T = decltype(tag);
    Device::template for_each_step<T>(n_steps, plan, [&](int64_t k, const Units& units, const auto& sync) {
      const StepRows& st = steps[reverse ? n_steps - 1 - k : k];
      const Tensor h_prev = first_rows(h_state, st.rows);
      Tensor h_gates_rows = first_rows(h_gates, st.rows);
      w_hh_step.gemm(h_gates_rows, h_prev, false, units);
      sync();  // the pass below overwrites h_state, which the GEMM of every split reads
      // h_prev is kept for backward's dW_hh: by the pointwise pass, which reads h_state
      // anyway, except for a projected LSTM, whose state has another width than the pass.
      if (need_workspace && proj) ws.narrow(0, st.offset, st.rows).narrow(1, layout.h_prev_col, P).copy_(h_prev);

      ForwardStep<T> a;
      a.rows = st.rows;
      a.hidden = H;
      a.x_gates = ptr<T>(x_gates) + st.offset * G * H;
      a.x_stride = G * H;
      a.h_gates = ptr<T>(h_gates);
      a.h_stride = G * H;
      a.bias_ih = ptr<T>(b_ih);
      a.bias_hh = ptr<T>(b_hh);
      a.c_state = ptr<T>(c_state);
      a.ws = need_workspace ? ptr<T>(ws) + st.offset * layout.width : nullptr;
      a.ws_stride = layout.width;
      if (proj) {
        a.h_out = need_workspace ? a.ws + layout.h_col : ptr<T>(h_scratch);
        a.h_out_stride = need_workspace ? layout.width : H;
      } else {
        a.h_out = ptr<T>(out2d) + st.offset * P;
        a.h_out_stride = P;
        a.h_state = ptr<T>(h_state);
        a.h_state_stride = P;
        if (need_workspace) a.h_prev_save = a.ws + layout.h_prev_col;
      }
      Device::template forward_step<Cell, T>(a, units);

      if (proj) {
        const Tensor h_unprojected = need_workspace ? ws.narrow(0, st.offset, st.rows).narrow(1, layout.h_col, H)
                                                    : first_rows(h_scratch, st.rows);
        Tensor out_rows = out2d.narrow(0, st.offset, st.rows);
        w_hr_step->gemm(out_rows, h_unprojected, false);
        first_rows(h_state, st.rows).copy_(out_rows);
      }
    });
  });
  return {output, h_state, Cell::kHasCellState ? c_state : at::empty({0}, input.options()), ws};
}

template <class Cell, class Device>
LayerGrads layer_backward(const Tensor& grad_output, const Tensor& grad_h_n, const OptTensor& grad_c_n,
                          const Tensor& input_, const OptTensor& batch_sizes, const Tensor& h0, const OptTensor& c0,
                          const LayerWeights& w, const Tensor& ws, bool reverse) {
  const OpScope scope(input_);
  const auto [steps, s, input, N, proj, layout] = setup_layer<Cell>(input_, batch_sizes, h0, c0, w);
  const int64_t H = s.hidden, P = s.state, G = Cell::kGates;
  TORCH_CHECK(ws.dim() == 2 && ws.size(0) == N && ws.size(1) == layout.width, Cell::kName,
              "_backward: workspace has shape ", ws.sizes(), " but [", N, ", ", layout.width,
              "] was expected; was the forward run with need_workspace=True on the same arguments?");
  TORCH_CHECK(grad_output.numel() == N * P, Cell::kName, "_backward: grad_output has ", grad_output.numel(),
              " elements, expected ", N * P);
  const Tensor ws_c = ws.contiguous();
  const Tensor go2d = grad_output.contiguous().view({N, P});
  const auto opts = input.options();

  Tensor d_gates_x = scratch_buffer(Scratch::kGates, {N, G * H}, opts);
  Tensor d_gates_h = Cell::kSplitGateGrads ? scratch_buffer(Scratch::kHiddenGates, {N, G * H}, opts) : d_gates_x;
  Tensor dh_state = grad_h_n.contiguous().clone();
  Tensor dc_state = Cell::kHasCellState ? grad_c_n->contiguous().clone() : Tensor();
  Tensor d_proj = proj ? new_buffer({N, P}, opts) : Tensor();        // dL/d(projected h) per row
  Tensor dh_buf = proj ? new_buffer({s.batch, H}, opts) : Tensor();  // that times W_hr
  const Tensor h_prev_all = ws_c.narrow(1, layout.h_prev_col, P);
  const int64_t n_steps = static_cast<int64_t>(steps.size());
  const typename Device::StepWeight w_hh_step(w.w_hh, n_steps);
  std::optional<typename Device::StepWeight> w_hr_step;
  if (proj) w_hr_step.emplace(*w.w_hr, n_steps);

  Device::dispatch(input.scalar_type(), Cell::kName, [&](auto tag) {
    using T = decltype(tag);
    for (int64_t k = 0; k < n_steps; ++k) {  // the forward order, reversed
      const StepRows& st = steps[reverse ? k : n_steps - 1 - k];
      Tensor dh_rows = first_rows(dh_state, st.rows);
      BackwardStep<T> a;
      a.rows = st.rows;
      a.hidden = H;
      if (proj) {
        Tensor dp = d_proj.narrow(0, st.offset, st.rows);
        at::add_out(dp, go2d.narrow(0, st.offset, st.rows), dh_rows);
        Tensor dh_buf_rows = first_rows(dh_buf, st.rows);
        w_hr_step->gemm(dh_buf_rows, dp, false);
        a.grad_h = ptr<T>(dh_buf);
        a.grad_h_stride = H;
      } else {
        a.grad_h = ptr<T>(go2d) + st.offset * P;
        a.grad_h_stride = P;
        a.grad_h_state = ptr<T>(dh_state);
        a.grad_h_state_stride = P;
      }
      a.grad_c_state = ptr<T>(dc_state);
      a.ws = ptr<T>(ws_c) + st.offset * layout.width;
      a.ws_stride = layout.width;
      a.h_prev = a.ws + layout.h_prev_col;
      a.h_prev_stride = layout.width;
      a.d_gates_x = ptr<T>(d_gates_x) + st.offset * G * H;
      a.d_gates_h = ptr<T>(d_gates_h) + st.offset * G * H;
      a.d_gates_stride = G * H;
      Device::template backward_step<Cell, T>(a);

      const Tensor dg_h = d_gates_h.narrow(0, st.offset, st.rows);
      // GRU: on top of the direct path dh * z that the step wrote.
      w_hh_step.gemm(dh_rows, dg_h, /*accumulate=*/Cell::kSplitGateGrads);
    }
  });

  const Tensor x2d = input.view({N, s.input});
  Tensor dx = matmul<Device>(d_gates_x, w.w_ih).view(input.sizes());
  Tensor dw_ih = matmul<Device>(d_gates_x.t(), x2d);
  Tensor dw_hh = matmul<Device>(d_gates_h.t(), h_prev_all);
  // Sums over rows are deterministic reductions (no atomics) on both devices.
  Tensor db_ih = w.b_ih.has_value() ? d_gates_x.sum(0) : at::empty({0}, opts);
  // Where both paths share the gate grads (all but GRU), both biases get the same sum.
  const bool same_sum = !Cell::kSplitGateGrads && w.b_ih.has_value();
  Tensor db_hh = !w.b_hh.has_value() ? at::empty({0}, opts) : same_sum ? db_ih.clone() : d_gates_h.sum(0);
  Tensor dw_hr = proj ? matmul<Device>(d_proj.t(), ws_c.narrow(1, layout.h_col, H)) : at::empty({0}, opts);
  Tensor dc0 = Cell::kHasCellState ? dc_state : at::empty({0}, opts);
  LayerGrads g;
  g.input = dx;
  g.h0 = dh_state;
  g.c0 = dc0;
  g.weight_ih = dw_ih;
  g.weight_hh = dw_hh;
  g.bias_ih = db_ih;
  g.bias_hh = db_hh;
  g.weight_hr = dw_hr;
  return g;
}

}  // namespace fused_rnn
