// One time step of a cell as its own op (the cells, decoder loops and every T = 1 layer call):
// forward is two GEMMs into one gate buffer (one for each path where the cell needs them apart:
// GRU) and one fused pointwise pass; backward is one pass, then the GEMMs of dh, dx and the
// weight gradients. Unlike a layer (recurrence.h) nothing is packed, kept in scratch or laid
// out per time step: h_prev is the op's own argument, which autograd keeps anyway, so the
// workspace holds only the cell's columns (and a projected LSTM's unprojected h').
// Generic over the Device, like the driver; the cell math is csrc/cells'.
#pragma once
#include <string>

#include "recurrence.h"

namespace fused_rnn {

// Columns of a single step's workspace: Cell::kWorkspace * H, then a projected LSTM's h' (H),
// then a layer-normalized cell's (norm_columns, from step_norm_column on).
inline int64_t step_norm_column(int cell_ws, int64_t hidden, bool proj) {
  return cell_ws * hidden + (proj ? hidden : 0);
}
inline int64_t step_workspace_width(int cell_ws, int64_t hidden, bool proj, int64_t norm_cols) {
  return step_norm_column(cell_ws, hidden, proj) + norm_cols;
}
template <class Cell>
int64_t step_workspace_width(int64_t hidden, bool proj, bool layer_norm) {
  return step_workspace_width(Cell::kWorkspace, hidden, proj,
                              norm_columns(Cell::kGates, hidden, Cell::kHasCellState, layer_norm));
}

// The name in a single-step op's messages: the cell's, e.g. "lstm_cell".
template <class Cell>
const char* step_op_name() {
  static const std::string name = std::string(Cell::kName) + "_cell";
  return name.c_str();
}

// What a single-step forward returns: the new states and, when asked for, the workspace
// (else an empty tensor, as the schemas return absent ones).
struct StepOutputs {
  Tensor h_n, c_n, workspace;
};

// zoneout (the cells' regularizer, layer_masks.h): masks [B, state] and the LSTM's [B, hidden]
// (its dropout_h is never set: a step has no sequence), or none.
inline MaskRows step_masks(const char* op, const LayerMasks& zoneout, const Tensor& input, const Sizes& s,
                           bool has_cell_state) {
  return MaskRows::of(op, zoneout, input, {s.batch, s.state}, s.batch, s.hidden, has_cell_state);
}

// A step block's zoneout pointers (one row per batch row); a projected LSTM's h is the op's.
template <class T>
void set_zoneout(const MaskRows& masks, bool proj, StepMasks<T>* m) {
  m->zoneout_c = MaskRows::from_row<T>(masks.zoneout_c, 0);
  m->zoneout_c_stride = masks.zoneout_c.defined() ? masks.zoneout_c.stride(0) : 0;
  if (!proj) {
    m->zoneout_h = MaskRows::from_row<T>(masks.zoneout_h, 0);
    m->zoneout_h_stride = masks.zoneout_h.defined() ? masks.zoneout_h.stride(0) : 0;
  }
}

template <class Cell, class Device>
StepOutputs step_forward(const Tensor& input, const Tensor& h, const OptTensor& c, const LayerWeights& w,
                         const LayerMasks& zoneout, bool need_workspace) {
  const OpScope scope(input);
  const Sizes s = check_step_args(step_op_name<Cell>(), Cell::kGates, Cell::kHasCellState, input, h, c, w);
  const MaskRows masks = step_masks(step_op_name<Cell>(), zoneout, input, s, Cell::kHasCellState);
  const auto opts = input.options();
  const int64_t B = s.batch, H = s.hidden, GH = Cell::kGates * H;
  const bool proj = w.w_hr.has_value();
  const Tensor x = input.contiguous(), b_ih = contiguous_or_empty(w.b_ih), b_hh = contiguous_or_empty(w.b_hh);
  const Tensor w_ch = contiguous_or_empty(w.w_ch);
  const NormWeights norm = NormWeights::of(w);
  // The recurrent GEMM adds into the input's where the cell only sums the two paths (and
  // neither is normalized on its own).
  const bool two_buffers = Cell::kSplitGateGrads || norm.active();
  Tensor x_gates = new_buffer({B, GH}, opts);
  Tensor h_gates = two_buffers ? new_buffer({B, GH}, opts) : x_gates;
  const Tensor h_prev = h.contiguous();

  StepOutputs r;
  const int64_t width = step_workspace_width<Cell>(H, proj, norm.active());
  const NormColumns norm_cols(step_norm_column(Cell::kWorkspace, H, proj), GH);
  r.workspace = need_workspace ? new_buffer({B, width}, opts) : at::empty({0}, opts);
  // h' goes to h_state, which starts as h_prev where the step reads it there (GRU, zoneout).
  Tensor h_new = proj ? (need_workspace ? r.workspace.narrow(1, Cell::kWorkspace * H, H) : new_buffer({B, H}, opts))
                 : Cell::kReadsHiddenState || masks.zoneout_h.defined() ? h_prev.clone()
                                                                        : new_buffer({B, H}, opts);
  r.c_n = Cell::kHasCellState ? c->contiguous().clone() : at::empty({0}, opts);
  const Tensor c_candidate = norm.active() && masks.zoneout_c.defined() ? new_buffer({B, H}, opts) : Tensor();
  // A layer-normalized LSTM's pass keeps o in h_out until its row's statistics of c' are known,
  // and zoneout then reads h_prev from h_state: under zoneout they are two buffers.
  const bool o_apart = Cell::kHasCellState && norm.active() && masks.zoneout_h.defined() && !proj;
  const Tensor h_out = o_apart ? new_buffer({B, H}, opts) : h_new;
  Device::dispatch(x.scalar_type(), Cell::kName, [&](auto tag) {
    using T = decltype(tag);
    ForwardStep<T> a;
    a.rows = B;
    a.hidden = H;
    a.x_gates = ptr<T>(x_gates);
    a.x_stride = GH;
    a.h_gates = two_buffers ? ptr<T>(h_gates) : nullptr;
    a.h_stride = GH;
    a.bias_ih = ptr<T>(b_ih);
    a.bias_hh = ptr<T>(b_hh);
    a.peephole = ptr<T>(w_ch);
    a.h_out = ptr<T>(h_out);
    a.h_out_stride = h_out.stride(0);
    a.h_state = proj ? nullptr : ptr<T>(h_new);
    a.h_state_stride = h_new.stride(0);
    a.c_state = ptr<T>(r.c_n);
    a.ws = need_workspace ? ptr<T>(r.workspace) : nullptr;
    a.ws_stride = width;
    a.norm = norm.forward<T>(a.ws, norm_cols);
    a.norm.c_candidate = ptr<T>(c_candidate);
    set_zoneout(masks, proj, &a.masks);
    if (norm.active()) {  // the input path's LN between the GEMM and the pass
      Device::gemm(x_gates, x, w.w_ih.t(), /*accumulate=*/false);
      norm.normalize_input_path<Device, T>(x_gates, a.ws, width, norm_cols);
      Device::gemm(h_gates, h_prev, w.w_hh.t(), /*accumulate=*/false);
      Device::template forward_step<Cell, T>(a, Units::whole(H));
    } else {
      Device::template single_step<Cell, T>(a, x, w.w_ih.t(), h_prev, w.w_hh.t(), x_gates, h_gates,
                                            /*accumulate=*/!Cell::kSplitGateGrads);
    }
  });
  r.h_n = proj ? matmul<Device>(h_new, w.w_hr->t()) : h_new;
  // On the projected h: m * h_prev + (1 - m) * h~ (lerp: exact at m = 0 and m = 1).
  if (proj && masks.zoneout_h.defined()) r.h_n.lerp_(h_prev, masks.zoneout_h);
  if (!Cell::kHasCellState) r.c_n = Tensor();
  return r;
}

// Checks what only backward takes: the workspace and the gradients of the new states.
template <class Cell>
void check_step_backward_args(const Sizes& s, const Tensor& input, const Tensor& grad_h_n, const OptTensor& grad_c_n,
                              const Tensor& ws, bool proj, bool layer_norm) {
  const char* op = step_op_name<Cell>();
  const int64_t width = step_workspace_width<Cell>(s.hidden, proj, layer_norm);
  const auto check = [&](const char* name, const Tensor& t, at::IntArrayRef shape) {
    TORCH_CHECK(t.sizes() == shape, op, "_backward: expected ", name, " of shape ", shape, ", but got ", t.sizes(),
                name == std::string("workspace")
                    ? "; was the forward run with need_workspace=True on the same arguments?"
                    : "");
    TORCH_CHECK(t.scalar_type() == input.scalar_type() && t.device() == input.device(), op, "_backward: expected ",
                name, " to have the dtype and device of input (", input.scalar_type(), ", ", input.device(),
                "), but got ", t.scalar_type(), " on ", t.device());
  };
  check("workspace", ws, {s.batch, width});
  check("grad_h_n", grad_h_n, {s.batch, s.state});
  if (Cell::kHasCellState) check("grad_c_n", *grad_c_n, {s.batch, s.hidden});
}

template <class Cell, class Device>
LayerGrads step_backward(const Tensor& grad_h_n, const OptTensor& grad_c_n, const Tensor& input, const Tensor& h,
                         const OptTensor& c, const LayerWeights& w, const LayerMasks& zoneout, const Tensor& workspace,
                         const GradMask& mask) {
  const OpScope scope(input);
  const Sizes s = check_step_args(step_op_name<Cell>(), Cell::kGates, Cell::kHasCellState, input, h, c, w);
  const MaskRows masks = step_masks(step_op_name<Cell>(), zoneout, input, s, Cell::kHasCellState);
  const bool proj = w.w_hr.has_value();
  const NormWeights norm = NormWeights::of(w);
  check_step_backward_args<Cell>(s, input, grad_h_n, grad_c_n, workspace, proj, norm.active());
  const auto opts = input.options();
  const int64_t B = s.batch, H = s.hidden, GH = Cell::kGates * H;
  const Tensor ws = workspace.contiguous(), h_prev = h.contiguous();
  const int64_t width = ws.size(1);

  GradSources src;
  src.x = input.contiguous();
  src.h_prev = h_prev;
  src.d_proj = grad_h_n.contiguous();
  // Zoneout of a projected h: the part m * dL/dh' that goes straight to h_prev, kept apart.
  const bool proj_zoneout = proj && masks.zoneout_h.defined();
  const Tensor h_direct = proj_zoneout ? src.d_proj * masks.zoneout_h : Tensor();
  if (proj_zoneout) src.d_proj = src.d_proj - h_direct;
  // dL/dh' before the projection: through W_hr.
  const Tensor dh = proj ? matmul<Device>(src.d_proj, *w.w_hr) : src.d_proj;
  if (proj) src.h_unprojected = ws.narrow(1, Cell::kWorkspace * H, H);
  src.cell_ws = ws.narrow(1, 0, Cell::kWorkspace * H);
  const Tensor w_ch = contiguous_or_empty(w.w_ch);
  const int64_t norm_col = step_norm_column(Cell::kWorkspace, H, proj);
  if (norm.active()) {
    src.norm_ws = ws.narrow(1, norm_col, width - norm_col);
    src.d_h_raw = new_buffer({B, GH}, opts);
    src.d_c_norm = Cell::kHasCellState ? new_buffer({B, H}, opts) : Tensor();
  }
  src.d_gates_x = new_buffer({B, GH}, opts);
  src.d_gates_h = Cell::kSplitGateGrads ? new_buffer({B, GH}, opts) : src.d_gates_x;
  // The pass writes the direct paths here (GRU's dh * z, zoneout's; adding what it finds:
  // nothing); dh_prev W_hh goes on top.
  const bool direct_paths = Cell::kSplitGateGrads || (masks.zoneout_h.defined() && !proj);
  Tensor dh_prev = direct_paths ? at::zeros({B, s.state}, opts) : Tensor();
  Tensor dc_prev = Cell::kHasCellState ? grad_c_n->contiguous().clone() : at::empty({0}, opts);
  const Tensor grad_c_direct = norm.active() && masks.zoneout_c.defined() ? new_buffer({B, H}, opts) : Tensor();
  Device::dispatch(input.scalar_type(), Cell::kName, [&](auto tag) {
    using T = decltype(tag);
    BackwardStep<T> a;
    a.rows = B;
    a.hidden = H;
    a.grad_h = ptr<T>(dh);
    a.grad_h_stride = H;
    a.grad_h_state = ptr<T>(dh_prev);
    a.grad_h_state_stride = s.state;
    a.grad_c_state = ptr<T>(dc_prev);
    a.peephole = ptr<T>(w_ch);
    a.ws = ptr<T>(ws);
    a.ws_stride = width;
    a.h_prev = ptr<T>(h_prev);
    a.h_prev_stride = s.state;
    a.d_gates_x = ptr<T>(src.d_gates_x);
    a.d_gates_h = ptr<T>(src.d_gates_h);
    a.d_gates_stride = GH;
    a.norm = norm.backward<T>(a.ws, NormColumns(norm_col, GH), ptr<T>(src.d_h_raw), ptr<T>(src.d_c_norm));
    set_zoneout(masks, proj, &a.masks);
    a.masks.grad_c_direct = ptr<T>(grad_c_direct);
    Device::template backward_step<Cell, T>(a);
  });
  const Tensor& d_gemm_h = norm.active() ? src.d_h_raw : src.d_gates_h;
  if (!mask.h0) {
    dh_prev = at::empty({0}, opts);
  } else if (direct_paths) {
    Device::gemm(dh_prev, d_gemm_h, w.w_hh, /*accumulate=*/true);
  } else {
    dh_prev = matmul<Device>(d_gemm_h, w.w_hh);
    if (proj_zoneout) dh_prev.add_(h_direct);
  }
  LayerGrads g = weight_and_input_grads<Cell, Device>(src, w, input.sizes(), mask);
  g.h0 = dh_prev;
  g.c0 = mask.c0 ? dc_prev : at::empty({0}, opts);
  return g;
}

}  // namespace fused_rnn
