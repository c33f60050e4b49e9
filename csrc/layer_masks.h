// The regularizers inside the recurrence, on the driver's side (the cells' side is StepMasks
// in cells/common.h; the modules draw the masks, fused_rnn/regularizers.py): the mask tensors
// a layer op takes, checked and viewed as rows, the buffers they need, and the projected
// LSTM's h-side, which runs here in ATen ops because that h is the projection's output.
//
// Recurrent dropout needs a second copy of h: the next step's GEMM reads h * d (h_dropped,
// written by the pass), the GRU's direct path and zoneout read h itself (h_state). Backward
// keeps the GEMM's dL/d(h * d) apart (grad_h_dropped), so that the next pass can multiply it
// by d before adding the direct paths; dL/dh0 gets the same after the loop.
#pragma once
#include <ATen/ATen.h>

#include <optional>

#include "cells/common.h"

namespace fused_rnn {

// As the layer ops take them (None: off): zoneout_h [*, state] and zoneout_c [*, hidden] (the
// output's leading shape: a value per row and unit of every step), dropout_h [batch, state].
// The single-step ops take the zoneout masks of their one step, [batch, state] and [batch, hidden].
struct LayerMasks {
  std::optional<at::Tensor> zoneout_h, zoneout_c, dropout_h;
};

// A layer's masks, checked against the layer and viewed as [N, width] rows.
struct MaskRows {
  at::Tensor zoneout_h, zoneout_c;  // [N, state], [N, hidden]; row stride 0 allowed; or undefined
  at::Tensor dropout_h;             // [batch, state] contiguous, or undefined

  bool dropout() const { return dropout_h.defined(); }

  // out_shape: the layer output's shape ([T, B, state] or [N, state]).
  static MaskRows of(const char* op, const LayerMasks& m, const at::Tensor& input, at::IntArrayRef out_shape,
                     int64_t batch, int64_t hidden, bool has_cell_state) {
    MaskRows r;
    const int64_t state = out_shape.back(), rows = out_shape.size() == 3 ? out_shape[0] * out_shape[1] : out_shape[0];
    std::vector<int64_t> c_shape = out_shape.vec();
    c_shape.back() = hidden;
    if (m.zoneout_h) r.zoneout_h = rows_of(op, "zoneout_h", *m.zoneout_h, input, out_shape, rows, state);
    if (m.zoneout_c) {
      TORCH_CHECK(has_cell_state, op, ": zoneout_c is the LSTM's; this cell has no cell state");
      r.zoneout_c = rows_of(op, "zoneout_c", *m.zoneout_c, input, c_shape, rows, hidden);
    }
    if (m.dropout_h) {
      check_like(op, "dropout_h", *m.dropout_h, input, {batch, state});
      r.dropout_h = m.dropout_h->contiguous();
    }
    return r;
  }

  // The rows of a zoneout mask from row `offset` on (null when off).
  template <class T>
  static const T* from_row(const at::Tensor& mask, int64_t offset) {
    return mask.defined() ? mask.data_ptr<T>() + offset * mask.stride(0) : nullptr;
  }

 private:
  static void check_like(const char* op, const char* name, const at::Tensor& t, const at::Tensor& input,
                         at::IntArrayRef shape) {
    TORCH_CHECK(t.sizes() == shape, op, ": expected ", name, " of shape ", shape, ", but got ", t.sizes());
    TORCH_CHECK(t.scalar_type() == input.scalar_type() && t.device() == input.device(), op, ": expected ", name,
                " to have the dtype and device of input (", input.scalar_type(), ", ", input.device(), "), but got ",
                t.scalar_type(), " on ", t.device());
  }

  // [N, width] with unit stride: a view where the mask allows one (an eval mask expanded from
  // one row keeps row stride 0), else a copy.
  static at::Tensor rows_of(const char* op, const char* name, const at::Tensor& t, const at::Tensor& input,
                            at::IntArrayRef shape, int64_t rows, int64_t width) {
    check_like(op, name, t, input, shape);
    at::Tensor v = t.reshape({rows, width});
    return v.stride(1) == 1 || width <= 1 ? v : v.contiguous();
  }
};

}  // namespace fused_rnn
